"""The k-means benchmark scripts run end to end on tiny inputs (their GPU calls reuse them).

A lent GPU's minutes are few: ``benchmarks/gpu_kmeans.sh`` must not be the first to find a
broken script. These runs take the same code paths on the CPU at a toy size; the figures
they print are not checked, only that they are printed and that the runs agree.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(
    script: str, *args: str, tmp_path: Path, status: int = 0, threads: bool = True
) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    one_thread = ["--threads", "1"] if threads else []
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *one_thread, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == status, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def test_seeding_benchmark_compares_both_seedings(tmp_path: Path) -> None:
    out = run_benchmark("seeding.py", "--case", "3000x16:150", "--tmp", str(tmp_path),
                        tmp_path=tmp_path)  # fmt: skip
    assert "greedy k-means++, 3,000 x 16, k=150" in out
    assert "no bounds" in out and "bounds, plain steps" in out and " wall, x" in out
    fused = [line for line in out.splitlines() if "bounds, fused kernels" in line]
    assert len(fused) == 1 and "not on cpu" in fused[0]  # float32 on CUDA only
    assert "the initial rows of no bounds: True" in out


def test_kmeans_benchmark_runs_config_a_scaled_down(tmp_path: Path) -> None:
    config = ROOT / "configs" / "clusters" / "A_3M_3lvl_60k_4k_300.yaml"
    out = run_benchmark(
        "kmeans.py", "--case", "2000x8:20", "--iters", "3", "--no-torch-loop",
        "--hierarchical-config", str(config), "--hierarchical-scale", "0.001",
        "--tmp", str(tmp_path), tmp_path=tmp_path,
    )  # fmt: skip
    assert "## 2,000 x 8, k=20: 3 Lloyd iterations" in out and "| astrocurate |" in out
    assert "## hierarchical, 3,000 x 384" in out
    for level in (1, 2, 3):
        assert f"level {level} done at" in out
    assert "peak RSS" in out


def test_kmeans_benchmark_stops_and_resumes_config_a_over_calls(tmp_path: Path) -> None:
    """A lent GPU's call lasts 10 minutes: config A is measured over calls, each going on
    from the last finished k-means run; the total counts finished work once."""
    config = ROOT / "configs" / "clusters" / "A_3M_3lvl_60k_4k_300.yaml"
    state = tmp_path / "state"
    args = ["kmeans.py", "--hierarchical-config", str(config), "--hierarchical-scale", "0.001",
            "--tmp", str(tmp_path), "--resume-dir", str(state)]  # fmt: skip
    first = run_benchmark(*args, "--stop-after", "0", tmp_path=tmp_path, status=3)
    assert "stopped after" in first and "level 1 done" not in first
    assert (state / "state.npz").is_file()
    last = run_benchmark(*args, tmp_path=tmp_path)
    assert "level 3 done at" in last and "s over calls (" in last
    assert not list(state.iterdir())  # a rerun measures afresh


def test_config_a_resumed_over_calls_ends_with_the_centroids_of_one_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped after every finished k-means run and resumed each time, the hierarchy ends
    where one uninterrupted call ends; ``--stop-after`` alone is refused."""
    import numpy as np
    import torch

    from astrocurate.algorithms.kmeans.hierarchical import HierarchicalKMeans

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import kmeans as benchmark

    ends: list[list[np.ndarray]] = []
    fit = HierarchicalKMeans.fit

    def kept(self, *args, **kwargs):
        fitted = fit(self, *args, **kwargs)
        ends.append([c.copy() for c in fitted.centroids_])
        return fitted

    monkeypatch.setattr(HierarchicalKMeans, "fit", kept)
    config = ROOT / "configs" / "clusters" / "A_3M_3lvl_60k_4k_300.yaml"
    args = ["--hierarchical-config", str(config), "--hierarchical-scale", "0.001",
            "--tmp", str(tmp_path), "--threads", str(torch.get_num_threads())]  # fmt: skip
    assert benchmark.main(args) == 0
    resumed = [*args, "--resume-dir", str(tmp_path / "state"), "--stop-after", "0"]
    calls = 1
    while benchmark.main(resumed) == 3:
        calls += 1
    assert calls > 10 and len(ends) == 2  # stopped after each run, fitted to the end twice
    for one, over_calls in zip(ends[0], ends[1], strict=True):
        np.testing.assert_array_equal(one, over_calls)
    with pytest.raises(SystemExit):
        benchmark.main([*args, "--stop-after", "5"])  # nowhere to keep the work


def test_seeding_benchmark_counts_operators_per_centre(tmp_path: Path) -> None:
    out = run_benchmark("seeding.py", "--dispatch", "--case", "2000x8:40", tmp_path=tmp_path)
    assert "operators per centre, 2,000 x 8, k=40" in out
    counts = {}
    for line in out.splitlines():
        label, _, rest = line.strip().partition("  ")
        if "operators," in rest:
            ops, _, reads = rest.split()[:3]
            counts[label] = (float(ops), float(reads))
    assert set(counts) == {"no bounds", "bounds, plain steps", "bounds, fused kernels"}
    assert counts["bounds, plain steps"][1] >= 2  # the rows to score, then the winner
    fused_ops, fused_reads = counts["bounds, fused kernels"]
    assert fused_ops < counts["bounds, plain steps"][0] and fused_reads < 0.5  # one per batch


def test_features_benchmark_times_each_part_of_the_pipeline(tmp_path: Path) -> None:
    """The columns that tell, on a GPU, whether reading, preparing or the model limits."""
    out = run_benchmark(
        "features.py", "--speed", "--default-only", "--synthetic", "600", "--rows", "512",
        "--batch-size", "64", "--workers", "1", "--naive-rows", "4", "--shard-rows", "128",
        "--workdir", str(tmp_path / "work"), tmp_path=tmp_path,
    )  # fmt: skip
    header = next(line for line in out.splitlines() if line.startswith("model "))
    row = next(line for line in out.splitlines() if line.startswith("scattering-j4-rot"))
    columns = header.replace("start s", "start_s").replace("whole run", "whole_run")
    values = dict(
        zip(columns.replace("model only", "model_only").split(), row.split(), strict=True)
    )
    for column in ("pipeline", "loader", "prep+model", "model_only", "pipe/model"):
        assert float(values[column]) > 0, (column, row)


def test_features_benchmark_times_networks_in_fp32_and_bf16_side_by_side(tmp_path: Path) -> None:
    out = run_benchmark(
        "features.py", "--speed", "--precision", "both", "--synthetic", "300", "--rows", "128",
        "--batch-size", "64", "--naive-rows", "2", "--workdir", str(tmp_path / "work"),
        tmp_path=tmp_path,
    )  # fmt: skip
    cases = [line.split()[:3] for line in out.splitlines() if line.startswith(("timm", "scat"))]
    assert [case for case in cases if len(case) == 3 and case[2].isdigit()] == [
        ["scattering-j4-rot-renorm-max", "fp32", "64"],  # FFTs: in fp32 only
        ["timm:resnet18", "fp32", "64"], ["timm:resnet18", "bf16", "64"],
        ["timm:resnet18", "fp32", "128"], ["timm:resnet18", "bf16", "128"],
    ], out  # fmt: skip
    assert "timm:resnet18 64 px, bf16 / fp32: pipeline" in out and "lowest cosine" in out
    assert "timm:resnet18 128 px, bf16 / fp32: pipeline" in out
    from astrocurate.algorithms.precision import cpu_has_bf16

    layouts = [line for line in out.splitlines() if "channels-last / NCHW" in line]
    stage = "channels-last" if cpu_has_bf16() else "NCHW"  # the layout of bf16 on this CPU
    assert len(layouts) == 2 and all(f"computes in {stage} here" in x for x in layouts), out


def test_cutting_benchmark_times_the_virtual_run_against_one_read(tmp_path: Path) -> None:
    out = run_benchmark(
        "cutouts.py", "--mosaics", "1", "--size", "512", "--read-ratio", "2", "--baseline", "HEAD",
        "--workdir", str(tmp_path / "work"), tmp_path=tmp_path, threads=False,
    )  # fmt: skip
    turns = [line for line in out.splitlines() if line.startswith("turn ")]
    assert len(turns) == 2 and all("(goal <= 1.5)" in line for line in turns), out
    assert "read 2 files once" in turns[0]  # the mosaic and its rms map
    beside = [line for line in out.splitlines() if line.startswith("  virtual@HEAD ")]
    assert len(beside) == 2 and all("as fast" in line for line in beside), out
    for bad in ("0", "-1", "two"):
        result = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "cutouts.py"), "--read-ratio", bad],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2
        assert f"--read-ratio: expected a positive number of turns, got '{bad}'" in result.stderr


def test_cutting_benchmark_on_zero_padded_mosaics(tmp_path: Path) -> None:
    work = tmp_path / "work"
    out = run_benchmark(
        "cutouts.py", "--mosaics", "1", "--size", "512", "--read-ratio", "1", "--zero-blanks",
        "--workdir", str(work), tmp_path=tmp_path, threads=False,
    )  # fmt: skip
    assert "blank pixels as zeros" in out and "turn 1:" in out, out
    originals = sorted((work / "survey-1x512").rglob("*.fits"))
    copies = sorted((work / "survey-1x512-zeros").rglob("*.fits"))
    assert len(copies) == len(originals) == 2 and not (work / "survey-1x512-zeros.partial").exists()
    for original, copy in zip(originals, copies, strict=True):
        before, after = fits.getdata(original), fits.getdata(copy)
        assert np.isnan(before).any()
        if original.name == "mosaic-blanked.fits":
            np.testing.assert_array_equal(after, np.nan_to_num(before, nan=0.0))
        else:  # the rms map is left as it was
            np.testing.assert_array_equal(after, before)


def test_batch_invariance_benchmark_compares_every_backbone(tmp_path: Path) -> None:
    out = run_benchmark("batch_invariance.py", "--n", "5", tmp_path=tmp_path)
    assert "max |difference| against one batch of 5" in out
    for label in ("(default)", "scattering-j4-renorm", "timm ResNet-18", "timm ViT-S/16"):
        rows = [line for line in out.splitlines() if label in line]
        assert len(rows) == 1 and len(rows[0].split()) >= 3, out


def test_evaluation_benchmark_runs_the_pipeline_and_prints_both_arms(tmp_path: Path) -> None:
    out = run_benchmark(
        "evaluation.py", "--workdir", str(tmp_path / "work"), "--mosaics", "2",
        "--mosaic-size", "512", "--config", "demo_2lvl_64_8.yaml", "--num-samples", "60",
        "--images-seen", "32", "--batch-size", "16", "--seeds", "2",
        "--max-per-category", "20", "--device", "cpu", tmp_path=tmp_path,
    )  # fmt: skip
    rows = [line.split()[0] for line in out.splitlines() if line.startswith(("curated", "random"))]
    assert rows[:2] == ["curated", "random"], out
    assert "knn: curated - random =" in out and "linear: curated - random =" in out
    assert (tmp_path / "work" / "evaluation_benchmark.json").is_file()


def test_evaluation_throughput_benchmark_compares_pretrain_with_the_bare_step(
    tmp_path: Path,
) -> None:
    out = run_benchmark(
        "evaluation.py", "--throughput", "--steps", "1", "--batch-size", "4", "--device", "cpu",
        "--precision", "both", tmp_path=tmp_path,
    )  # fmt: skip
    lines = [line for line in out.splitlines() if line.startswith(("simclr", "byol"))]
    rows = [line.split() for line in lines if " px, " not in line]
    assert [(r[0], r[1]) for r in rows] == [
        (method, size) for method in ("simclr", "byol") for size in ("64", "128") for _ in "ab"
    ], out  # fmt: skip
    assert all(r[2] in ("fp32", "bf16") and float(r[3]) > 0 and float(r[4]) > 0 for r in rows)
    ratios = [line for line in lines if "bf16 / fp32: pretrain" in line]
    assert len(ratios) == 4, out
    from astrocurate.algorithms.precision import cpu_has_bf16

    layouts = [line for line in lines if "bf16 bare step, channels-last / NCHW" in line]
    stage = "channels-last" if cpu_has_bf16() else "NCHW"  # the layout of bf16 on this CPU
    assert len(layouts) == 4 and all(f"computes in {stage} here" in x for x in layouts), out
    assert "ms per step with a permutation per step" in out and "with one per epoch" in out
    assert "ms per step drawn on the host" in out, out


def test_duplicates_benchmark_compares_with_the_plain_way(tmp_path: Path) -> None:
    out = run_benchmark(
        "duplicates.py", "--rows", "3000", "--clusters", "60", "--dim", "16",
        "--compare-rows", "1000", tmp_path=tmp_path,
    )  # fmt: skip
    assert "near_duplicates:" in out and "same marking: True" in out and "peak RSS" in out


def test_quality_benchmark_prints_the_samples_side_by_side(tmp_path: Path) -> None:
    pytest.importorskip("bdsf")
    out = run_benchmark(
        "quality.py", "--workdir", str(tmp_path / "work"), "--mosaics", "2",
        "--mosaic-size", "512", "--config", "demo_2lvl_64_8.yaml", "--num-samples", "60",
        "--device", "cpu", tmp_path=tmp_path,
    )  # fmt: skip
    assert "pairs left at the threshold: with --dedup-threshold 0," in out
    header = next(line for line in out.splitlines() if line.startswith("class "))
    assert "plain" in header and "dedup" in header and "outliers excluded" in header
    assert "top-100 outliers (isolation forest) by class" in out
    assert "steer max_size_arcsec" in header and "steer s_code" in header and "all" in header
    assert "noisy (flagged by 'noise <= 1.5x'): pool" in out
    assert "entropy of the s_code bins" in out and "steer s_code" in out.splitlines()[-1]
