"""The user's guide, command for command, in bash from the project root.

All five steps and the find_run lookups between them, with the guide's
``source feat_extract_env/bin/activate`` and ``source clustering_env/bin/activate``. Two
deliberate departures: step 4a uses the small demo config instead of configuration A
(60k clusters need ~3M cutouts) and no SLURM flags (tests/test_slurm.py runs the guide's
SLURM path against a real cluster); the merge lookup writes ``$CUTOUTS_RUN_ID_64`` where
the guide forgot the ``$`` (tests/test_find_run.py covers the literal form).
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from astrocurate.synthetic.survey import make_survey
from astrocurate.tracking import get_run

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

GUIDE = textwrap.dedent(
    """\
    set -euo pipefail
    source feat_extract_env/bin/activate

    python scripts/cutouts.py \\
        --mosaics_path "$SURVEY" \\
        --output_path "$OUTPUTS" \\
        --window_size 64
    python scripts/cutouts.py \\
        --mosaics_path "$SURVEY" \\
        --output_path "$OUTPUTS" \\
        --window_size 128

    # Find the run ID for the 64x64 cutout run by filtering on the parameter
    CUTOUTS_RUN_ID_64=$(python scripts/find_run.py --run-name cutting_out --window_size 64)

    # Find the run ID for the 128x128 cutout run
    CUTOUTS_RUN_ID_128=$(python scripts/find_run.py --run-name cutting_out --window_size 128)

    # Run the merge script, providing both run IDs as a space-separated list
    python scripts/merge.py \\
        --cutouts-id "$CUTOUTS_RUN_ID_64" "$CUTOUTS_RUN_ID_128"

    MERGED_RUN_ID=$(python scripts/find_run.py --run-name merge_cutouts \\
        --cutout-ids "[$CUTOUTS_RUN_ID_64, $CUTOUTS_RUN_ID_128]")

    python scripts/feature_extraction.py \\
        --merged-cutouts-id "$MERGED_RUN_ID"
    deactivate

    source clustering_env/bin/activate
    FEATURE_RUN_ID=$(python scripts/find_run.py --run-name feature_extraction)

    python scripts/4_clustering.py \\
        --features-id "$FEATURE_RUN_ID" \\
        --config_file "configs/clusters/demo_2lvl_64_8.yaml"

    CLUSTERING_DIR_PATH=$(python scripts/find_run.py --run-name clustering --get-path)

    echo "Changing directory to: $CLUSTERING_DIR_PATH"
    cd "$CLUSTERING_DIR_PATH"

    ./run.sh

    cd -

    CLUSTERING_RUN_ID=$(python scripts/find_run.py --run-name clustering)

    python scripts/random_sampling.py \\
        --clustering-id "$CLUSTERING_RUN_ID" \\
        --num-samples 100
    SAMPLING_RUN_ID=$(python scripts/find_run.py --run-name curated_sampling)

    echo "FEATURES=$FEATURE_RUN_ID"
    echo "CLUSTERING=$CLUSTERING_RUN_ID"
    echo "SAMPLING=$SAMPLING_RUN_ID"
    echo "CUT64=$CUTOUTS_RUN_ID_64"
    echo "CUT128=$CUTOUTS_RUN_ID_128"
    echo "MERGED=$MERGED_RUN_ID"
    echo "PYTHON=$(command -v python)"
    """
)


def test_guide_all_five_steps(store: Path, tmp_path: Path) -> None:
    for env_name in ("feat_extract_env", "clustering_env"):
        if not (ROOT / env_name / "bin" / "activate").is_file():
            pytest.skip(f"{env_name} is created by `make setup` (make test does it)")
    survey = make_survey(tmp_path / "survey", n_mosaics=2, mosaic_size=384, seed=3)
    env = {
        **os.environ,
        "SURVEY": str(survey.output_dir),
        "OUTPUTS": str(tmp_path / "outputs"),
    }
    result = subprocess.run(
        ["bash", "-c", GUIDE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    cut64, cut128, merged = (
        get_run(values["CUT64"]),
        get_run(values["CUT128"]),
        get_run(values["MERGED"]),
    )
    assert (cut64.params["window_size"], cut128.params["window_size"]) == ("64", "128")
    assert merged.name == "merge_cutouts" and merged.finished
    assert set(merged.input_run_ids) == {cut64.run_id, cut128.run_id}
    assert Path(values["PYTHON"]).parent == ROOT / ".venv" / "bin"
    features, clustering, sampling = (
        get_run(values[k]) for k in ("FEATURES", "CLUSTERING", "SAMPLING")
    )
    assert features.finished and features.input_run_ids == [merged.run_id]
    assert clustering.finished and clustering.input_run_ids == [features.run_id]
    assert sampling.finished and sampling.input_run_ids == [clustering.run_id]
    assert (sampling.output_dir / "report" / "index.html").is_file()
