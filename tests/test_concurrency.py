"""Two pipelines at once on one project directory, tracking store and output root.

What the tool guarantees (RELIABILITY.md, "Concurrency"):

- Pipelines on different surveys started together finish with distinct runs, all
  FINISHED, whose outputs verify and equal those of each pipeline run alone.
- The same command started twice at once succeeds twice. At each step the second
  process either reuses the first one's run (found FINISHED, or finished while it was
  getting the run's lock) or computes its own run in its own directory; two processes
  never write into one run directory, no run is left RUNNING, and every result is the
  one a single pipeline gives.
- ``run.sh`` started twice on one clustering experiment: the second waits for the
  first (the directory lock), then finds the run FINISHED; both exit 0.

The pipelines are the real command line (``astrocurate ...``) in concurrent bash
chains; the reference results come from the same steps run alone, in-process.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from astrocurate import tracking
from astrocurate.stages.clustering.run import load_config, prepare_clustering, run_clustering
from astrocurate.stages.curated_sampling.run import SamplingOptions, curated_sample
from astrocurate.stages.cutting_out.run import CutoutOptions, make_cutouts
from astrocurate.stages.feature_extraction.run import FeatureOptions, extract_features
from astrocurate.stages.merge_cutouts.run import merge_cutouts
from astrocurate.synthetic.survey import make_survey
from astrocurate.tracking import client, experiment_id, get_run, tracked_step
from astrocurate.tracking.lookup import verify_run

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "clusters" / "demo_2lvl_64_8.yaml"
OVERRIDES = {"n_clusters": [8, 2], "n_iters": [10, 10], "sample_size": [4, 2]}
NUM_SAMPLES = 20
STEPS = ("CUT", "MERGED", "FEATURES", "CLUSTERING", "SAMPLE")

pytestmark = pytest.mark.slow

CHAIN = """\
set -euo pipefail
A() { "$PYTHON" -m astrocurate.cli "$@"; }
CUT=$(A cutouts -q --mosaics_path "$SURVEY" --output_path "$OUTPUTS" --window_size 32 --workers 1)
MERGED=$(A merge -q --cutouts-id "$CUT")
FEATURES=$(A features -q --merged-cutouts-id "$MERGED" --workers 0 --device cpu)
DIR=$(A clustering-prepare -q --features-id "$FEATURES" --config_file "$CONFIG" $OVERRIDES)
(cd "$DIR" && ./run.sh)
CLUSTERING=$(basename "$DIR")
SAMPLE=$(A sample -q --clustering-id "$CLUSTERING" --num-samples "$NUM" --no-report)
echo "CUT=$CUT"
echo "MERGED=$MERGED"
echo "FEATURES=$FEATURES"
echo "CLUSTERING=$CLUSTERING"
echo "SAMPLE=$SAMPLE"
"""


def _overrides() -> str:
    return " ".join(f"{k}={v}".replace(" ", "") for k, v in OVERRIDES.items())


def _results(ids: dict[str, str]) -> dict[str, np.ndarray]:
    """The arrays a pipeline produces, by name (what must not depend on concurrency)."""
    features = get_run(ids["FEATURES"]).output_dir
    clustering = get_run(ids["CLUSTERING"]).output_dir
    sample = get_run(ids["SAMPLE"]).output_dir
    out = {"features": np.load(features / "features.npy")}
    for level in (1, 2):
        out[f"labels_{level}"] = np.load(clustering / f"level_{level}" / "point_labels.npy")
    out["selected"] = np.load(sample / "selected.npy")
    return out


def _alone(survey: Path, outputs: Path) -> dict[str, np.ndarray]:
    """The pipeline run alone, in-process, in its own experiment (the reference)."""
    cut = make_cutouts(survey, outputs, CutoutOptions(32), workers=1)
    merged = merge_cutouts([cut.run_id])
    features = extract_features(merged.run_id, FeatureOptions(), workers=0, device="cpu")
    prepared = prepare_clustering(features.run_id, load_config(CONFIG, OVERRIDES))
    run_clustering(prepared.directory)
    sample = curated_sample(prepared.run_id, SamplingOptions(NUM_SAMPLES), report=False)
    ids = {
        "CUT": cut.run_id,
        "MERGED": merged.run_id,
        "FEATURES": features.run_id,
        "CLUSTERING": prepared.run_id,
        "SAMPLE": sample.run_id,
    }
    return _results(ids)


def _start_chain(survey: Path, env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    chain_env = {
        **env,
        "SURVEY": str(survey),
        "PYTHON": sys.executable,
        "CONFIG": str(CONFIG),
        "OVERRIDES": _overrides(),
        "NUM": str(NUM_SAMPLES),
    }
    return subprocess.Popen(
        ["bash", "-c", CHAIN],
        cwd=cwd,
        env=chain_env,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )


def _finish_chain(process: subprocess.Popen, log: Path) -> dict[str, str]:
    stdout, _ = process.communicate(timeout=900)
    assert process.returncode == 0, log.read_text()[-4000:]
    ids = dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)
    assert set(STEPS) <= set(ids), stdout
    return ids


def _all_runs() -> list:
    mlflow_client = client()
    return mlflow_client.search_runs([experiment_id(mlflow_client)], max_results=1000)


@pytest.mark.timeout(1800)  # ~90 s idle; a 2-core machine shared with other work is far slower
def test_two_surveys_and_the_same_survey_twice_at_once(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    outputs = project / "outputs"
    surveys = [
        make_survey(tmp_path / f"survey{i}", n_mosaics=1, mosaic_size=160, seed=20 + i).output_dir
        for i in (1, 2)
    ]

    # The references: each pipeline alone, in its own experiment and output root.
    reference_experiment = f"alone-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", reference_experiment)
    alone = [_alone(s, tmp_path / "alone") for s in surveys]

    # Three chains at once, same cwd, store, experiment and --output_path: survey 1,
    # survey 2, and survey 1 again with the same parameters.
    experiment = f"together-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    # one torch thread per process: three chains share two cores (oversubscribed OpenMP
    # threads spin against each other and can slow a step down many times)
    env = {**os.environ, "OUTPUTS": str(outputs), "PYTHONWARNINGS": "ignore"}
    env["OMP_NUM_THREADS"] = "1"
    logs = [tmp_path / f"chain{i}.log" for i in range(3)]
    started = time.monotonic()
    chains = [
        _start_chain(survey, env, project, log)
        for survey, log in zip([surveys[0], surveys[1], surveys[0]], logs, strict=True)
    ]
    ids = [_finish_chain(p, log) for p, log in zip(chains, logs, strict=True)]
    wall = time.monotonic() - started
    print(f"three concurrent pipelines took {wall:.0f} s")

    # (a) different surveys: distinct runs at every step
    for step in STEPS:
        assert ids[0][step] != ids[1][step] and ids[2][step] != ids[1][step], step
    # (b) the same survey twice: the same run or two complete ones, per step
    for step in STEPS:
        for chain in ids:
            record = get_run(chain[step])
            assert record.finished, (step, record.run_id, record.status)
    # no run left RUNNING or half-prepared; every run of the experiment verifies
    runs = _all_runs()
    assert runs, "the chains recorded no run in the shared experiment"
    for run in runs:
        assert run.info.status == "FINISHED", (run.info.run_name, run.info.status)
        report = verify_run(run.info.run_id, parents=True, workers=1)
        assert not report.problems(), (run.info.run_name, report.problems())
    # the command line's verify on a last run (lineage included; the same code as above)
    for chain in ids[:1]:
        result = subprocess.run(
            [sys.executable, "-m", "astrocurate.cli", "verify", "-q", chain["SAMPLE"]],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    # every result equals its pipeline run alone
    for chain, reference in zip(ids, [alone[0], alone[1], alone[0]], strict=True):
        got = _results(chain)
        for name, expected in reference.items():
            np.testing.assert_array_equal(got[name], expected, err_msg=name)
    # every run directory belongs to exactly one run
    directories = [get_run(chain[s]).output_dir for chain in ids for s in STEPS]
    owners = {
        d: {c[s] for c in ids for s in STEPS if get_run(c[s]).output_dir == d} for d in directories
    }
    assert all(len(v) == 1 for v in owners.values())


def test_run_sh_twice_at_once_on_one_experiment(
    curation_pipeline, store: Path, tmp_path: Path
) -> None:
    """The second ``run.sh`` waits for the first, then finds the run FINISHED."""
    from astrocurate.stages.clustering.run import ClusteringConfig
    from curation_pipeline import CONFIG as SMALL

    prepared = prepare_clustering(
        curation_pipeline.features.run_id,
        ClusteringConfig.from_mapping({**SMALL, "seed": 7}),
        output_path=tmp_path / "out",
        force=True,
    )
    processes = [
        subprocess.Popen(
            ["./run.sh"],
            cwd=prepared.directory,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = [p.communicate(timeout=600) for p in processes]
    for process, (_, err) in zip(processes, outcomes, strict=True):
        assert process.returncode == 0, err
    record = get_run(prepared.run_id)
    assert record.finished
    assert not verify_run(prepared.run_id, parents=False, workers=1).problems()
    messages = "".join(err for _, err in outcomes)
    assert "finished" in messages  # one computed; the other found it done


def test_a_run_finished_while_waiting_for_its_lock_is_reused(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lookup saw the run unfinished; by the time of the lock it is FINISHED."""
    with tracked_step("merge_cutouts", {"x": 1}) as first:
        (first.output_dir / "out.txt").write_text("done\n")
    finished = get_run(first.run_id)
    stale = dataclasses.replace(finished, status="RUNNING")
    monkeypatch.setattr(tracking.lifecycle, "_previous_run", lambda step, key: stale)
    with tracked_step("merge_cutouts", {"x": 1}) as second:
        assert second.reused and second.run_id == first.run_id
    assert get_run(first.run_id).status == "FINISHED"
