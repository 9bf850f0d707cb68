"""The clustering configs users bring from the original pipeline, read as they are written.

The original LoTSS-DR2 curation (and the Vo et al. 2024 reference configs) write per-level
lists for ``ngpus_per_node`` and ``nnodes``, integers as ``60_000``, block or flow lists and
comments, and ``high_precision: float32``. :data:`ORIGINAL` holds the values of the four
original configurations and of their small ``test`` one; ``configs/clusters/`` must ship
exactly these, and step 4a must accept any file of that format unchanged.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from astrocurate.stages.clustering.config import HIGH_PRECISION_NOTE, load_config
from test_clustering import CONFIGS, fake_feature_run, prepare_cli

#: name: (n_clusters, n_resampling_steps, sample_size), one entry per level.
ORIGINAL: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    "A_3M_3lvl_60k_4k_300": ((60_000, 4_000, 300), (10, 10, 10), (25, 8, 7)),
    "B_3M_3lvl_5000_500_50": ((5_000, 500, 50), (10, 10, 10), (300, 5, 5)),
    "C_3M_2lvl_9k_300": ((9_000, 300), (10, 10), (175, 15)),
    "D_3M_2lvl_5k_50": ((5_000, 50), (10, 10), (300, 50)),
    "test": ((15_000, 100), (5, 5), (25, 10)),
}
STYLES = ("block", "flow", "scalar")


def expected(name: str) -> dict[str, Any]:
    """Every key of the original config ``name``, per-level keys as tuples."""
    clusters, steps, sizes = ORIGINAL[name]
    n = len(clusters)
    small = name == "test"
    return {
        "n_levels": n,
        "n_clusters": clusters,
        "n_iters": (10 if small else 50,) * n,
        "n_splits": (1,) * n,
        "n_resampling_steps": steps,
        "sample_size": sizes,
        "sampling_strategy": ("r",) * n,
        "subset_indices_path": None,
        "checkpoint_period": 1_000,
        "dtype": "float64" if small else "float32",
        "high_precision": "float64" if small else "float32",
        "ngpus_per_node": (2,) * n,
        "nnodes": (1,) * n,
        "ncpus_per_gpu": 6,
        "slurm_partition": None,
    }


def original_text(name: str, style: str) -> str:
    """The config ``name`` in the original format: block or flow lists, or scalars.

    ``scalar`` writes one value for keys equal on every level (as the originals do for
    ``sampling_strategy``); integers of four digits or more are written ``60_000``.
    """

    def number(value: Any) -> str:
        return f"{value:_}" if isinstance(value, int) and value >= 1000 else str(value)

    lines = [f"# {name}: the original format, {style} lists", ""]
    for key, value in expected(name).items():
        if value is None:
            lines.append(f"{key}: null  # comment after a value")
        elif not isinstance(value, tuple):
            lines.append(f"{key}: {number(value)}")
        elif style == "scalar" and len(set(value)) == 1 and key != "n_clusters":
            lines.append(f"{key}: {number(value[0])}")
        elif style == "block":
            lines += [f"{key}:  # one entry per level"] + [f"  - {number(v)}" for v in value]
        else:
            lines.append(f"{key}: [{', '.join(number(v) for v in value)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", sorted(ORIGINAL))
def test_shipped_configs_hold_exactly_the_original_values(name: str) -> None:
    config = load_config(CONFIGS / f"{name}.yaml")
    assert {key: getattr(config, key) for key in expected(name)} == expected(name)
    assert config.seed == 0 and config.matmul_precision == "highest"  # not in the originals
    text = (CONFIGS / f"{name}.yaml").read_text()
    assert "_000" in text and text.startswith("# ")  # the original way of writing them


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("name", sorted(ORIGINAL))
def test_the_original_format_loads_as_written(tmp_path: Path, name: str, style: str) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(original_text(name, style))
    config = load_config(path)
    assert {key: getattr(config, key) for key in expected(name)} == expected(name)


def test_step_4a_prepares_every_original_config_verbatim(store, tmp_path, capsys, caplog) -> None:
    """The guide's step 4a, SLURM flags included, on each original file as written."""
    caplog.set_level(logging.INFO, logger="astrocurate")
    rows = np.random.default_rng(0).normal(size=(60_000, 2)).astype(np.float32)
    features_id = fake_feature_run(rows)
    slurm = ["--slurm_account", "astro", "--slurm_partition", "gpu", "--slurm_time", "01:00:00"]
    for i, name in enumerate(sorted(ORIGINAL)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(original_text(name, STYLES[i % len(STYLES)]))
        caplog.clear()
        status, out, err = prepare_cli(
            capsys, "--features-id", features_id, "--config_file", str(path), *slurm
        )
        assert status == 0, err
        directory = Path(out.strip())
        n_levels = expected(name)["n_levels"]
        for level in range(1, n_levels + 1):
            sbatch = (directory / "slurm" / f"level_{level}.sbatch").read_text()
            for option in ("--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=2"):
                assert f"#SBATCH {option}\n" in sbatch, (name, level)
            assert "#SBATCH --cpus-per-task=6\n" in sbatch
        assert (
            f"level_gpus=({' '.join(f'[{L}]=2' for L in range(1, n_levels + 1))})"
            in (directory / "run.sh").read_text()
        )
        # float32 is accepted, with the reason it is not used logged
        assert (HIGH_PRECISION_NOTE in caplog.text) == (
            expected(name)["high_precision"] == "float32"
        )
        resolved = (directory / "config.yaml").read_text()
        assert re.search(r"^ngpus_per_node: \[2(, 2)+\]$", resolved, re.MULTILINE)


def test_step_4a_script_refuses_a_bad_per_level_entry_in_one_line(store, tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(original_text("C_3M_2lvl_9k_300", "block").replace("  - 2\n", "  - two\n", 1))
    features_id = fake_feature_run(np.zeros((9_000, 2), dtype=np.float32))
    script = Path(__file__).resolve().parents[1] / "scripts" / "4_clustering.py"
    argv = [sys.executable, str(script), "--features-id", features_id, "--config_file", str(path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and result.stdout == ""
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith("config key ngpus_per_node: level 1 has 'two'; it must be an integer >= 0")
    )
