"""Merging cutout runs at survey scale: time ``merge_cutouts`` on millions of rows.

Two tracked cutout runs are written with a realistic sky layout: square mosaics of
``--mosaic-px`` pixels at 1.5"/px on a grid of pointings that overlap by
``--overlap-sky`` of a mosaic's width, each cut on its own pixel grid inside a
circular footprint (blank outside, as LoTSS mosaics), one run at window 64 and one
at 128 (stride half the window), about ``--rows / 2`` rows each. Sky
de-duplication is on, so the cutouts in the overlaps are matched and dropped.

Usage::

    python benchmarks/merge.py                           # 3M rows
    python benchmarks/merge.py --rows 300000             # quick look
    python benchmarks/merge.py --baseline ca012ff        # also time merge.py of a commit

With ``--baseline REV`` the ``merge.py`` of that git revision runs on the same inputs
in the same process, and the two merged manifests are compared.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

PIXEL_ARCSEC = 1.5


def _mosaic_centres(n_side: int, width_deg: float, overlap: float) -> tuple[np.ndarray, ...]:
    """Centres (deg) of an n_side x n_side grid of pointings around dec 50."""
    step = width_deg * (1 - overlap)
    dec = 50.0 + step * (np.arange(n_side) - (n_side - 1) / 2)
    ra_rows = [
        150.0 + step * (np.arange(n_side) - (n_side - 1) / 2) / np.cos(np.radians(d)) for d in dec
    ]
    ra = np.concatenate(ra_rows)
    return ra, np.repeat(dec, n_side)


def _cutout_grid(mosaic_px: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Origins of the windows of one mosaic that lie inside its circular footprint."""
    stride = window // 2
    starts = np.arange(0, mosaic_px - window + 1, stride)
    y0, x0 = (a.ravel() for a in np.meshgrid(starts, starts, indexing="ij"))
    half = (mosaic_px - 1) / 2
    corner = np.maximum(np.abs(x0 - half), np.abs(x0 + window - 1 - half)) ** 2
    corner += np.maximum(np.abs(y0 - half), np.abs(y0 + window - 1 - half)) ** 2
    inside = corner <= half**2
    return x0[inside], y0[inside]


def survey_manifest(rows: int, window: int, mosaic_px: int, overlap: float):
    """Return (manifest, mosaics) DataFrames of about ``rows`` cutouts of one window size."""
    import pandas as pd

    x0, y0 = _cutout_grid(mosaic_px, window)
    n_mosaics = max(2, round(rows / len(x0)))
    width_deg = mosaic_px * PIXEL_ARCSEC / 3600
    centre_ra, centre_dec = _mosaic_centres(math.ceil(math.sqrt(n_mosaics)), width_deg, overlap)
    centre_ra, centre_dec = centre_ra[:n_mosaics], centre_dec[:n_mosaics]
    paths = [f"/survey/P{i:04d}/mosaic-blanked.fits" for i in range(len(centre_ra))]
    half = (mosaic_px - 1) / 2
    dx = (x0 + (window - 1) / 2 - half) * PIXEL_ARCSEC / 3600
    dy = (y0 + (window - 1) / 2 - half) * PIXEL_ARCSEC / 3600
    n_each, n_mosaics = len(x0), len(centre_ra)
    mosaic = np.repeat(np.arange(n_mosaics), n_each)
    dec = np.repeat(centre_dec, n_each) + np.tile(dy, n_mosaics)
    ra = np.repeat(centre_ra, n_each) - np.tile(dx, n_mosaics) / np.cos(np.radians(dec))
    n = len(ra)
    rng = np.random.default_rng(window)
    manifest = pd.DataFrame(
        {
            "cutout_id": np.arange(n),
            "mosaic": pd.Categorical.from_codes(mosaic, [f"P{i:04d}" for i in range(n_mosaics)]),
            "mosaic_path": pd.Categorical.from_codes(mosaic, paths),
            "window_size": window,
            "x0": np.tile(x0, n_mosaics),
            "y0": np.tile(y0, n_mosaics),
            "ra": ra,
            "dec": dec,
            "pixel_scale_arcsec": PIXEL_ARCSEC,
            "nan_fraction": 0.0,
            "mean": rng.normal(size=n),
            "std": 1.0,
            "max": 5.0,
            "noise_mad": 1.0,
            "peak_snr": 5.0,
            "store": "copy",
            "array_file": pd.Categorical.from_codes(
                mosaic, [f"pixels/{i:05d}-P{i:04d}.npy" for i in range(n_mosaics)]
            ),
            "array_row": np.concatenate([np.arange(n_each)] * n_mosaics),
        }
    )
    mosaics = pd.DataFrame({"mosaic_path": paths, "centre_ra": centre_ra, "centre_dec": centre_dec})
    return manifest, mosaics


def write_runs(rows: int, mosaic_px: int, overlap: float) -> tuple[list[str], int]:
    """Record two finished cutout runs (windows 64 and 128); return their IDs and rows."""
    from astrocurate.io.cutout_store import MANIFEST, MANIFEST_TYPES, MOSAICS, write_parquet_atomic
    from astrocurate.tracking import tracked_step

    ids, total = [], 0
    for window in (64, 128):
        manifest, mosaics = survey_manifest(rows // 2, window, mosaic_px, overlap)
        params = {"window_size": window, "overlap": 0.5, "rows": rows, "px": mosaic_px}
        with tracked_step("cutting_out", params, force=True) as run:
            write_parquet_atomic(manifest, run.output_dir / MANIFEST, MANIFEST_TYPES)
            write_parquet_atomic(mosaics, run.output_dir / MOSAICS)
        ids.append(run.run_id)
        total += len(manifest)
    return ids, total


def load_baseline(revision: str) -> ModuleType:
    """Import ``src/astrocurate/stages/merge_cutouts/run.py`` as it was at a git revision."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{revision}:src/astrocurate/stages/merge_cutouts/run.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="merge-baseline-")) / "merge_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("merge_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_merge(merge_cutouts, ids: list[str], out: Path) -> tuple[float, Path]:
    """Run one merge (forced, sky de-dup on); return seconds and its run directory."""
    start = time.perf_counter()
    run = merge_cutouts(ids, dedup_sky=True, output_path=out, force=True)
    return time.perf_counter() - start, run.output_dir


def same_manifest(a: Path, b: Path) -> bool:
    """Whether two merged manifests hold the same rows, ignoring the run's own ID."""
    import pandas as pd

    left = pd.read_parquet(a / "manifest.parquet")
    right = pd.read_parquet(b / "manifest.parquet")
    return left.equals(right)


def run_benchmark(
    workdir: Path,
    rows: int,
    mosaic_px: int = 8192,
    overlap: float = 0.25,
    baseline: str = "",
    repeat: int = 2,
) -> dict:
    """Write the inputs, time the merge (and the baseline's, alternating); best of ``repeat``."""
    import pandas as pd

    from astrocurate.stages.merge_cutouts.run import merge_cutouts

    ids, total = write_runs(rows, mosaic_px, overlap)
    variants = {"seconds": merge_cutouts}
    if baseline:
        variants["baseline_seconds"] = load_baseline(baseline).merge_cutouts
    result: dict = {"rows": total}
    outputs = {}
    for _ in range(repeat):
        for key, merge in variants.items():
            seconds, outputs[key] = time_merge(merge, ids, workdir / key)
            result[key] = min(seconds, result.get(key, math.inf))
    result["kept"] = len(
        pd.read_parquet(outputs["seconds"] / "manifest.parquet", columns=["cutout_id"])
    )
    if baseline:
        result["identical"] = same_manifest(outputs["seconds"], outputs["baseline_seconds"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--mosaic-px", type=int, default=8192)
    parser.add_argument("--overlap-sky", type=float, default=0.25)
    parser.add_argument("--baseline", default="", help="git revision whose merge.py to time too")
    parser.add_argument("--repeat", type=int, default=2, help="best of this many merges")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="astrocurate-merge-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")
    os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "benchmarks")
    r = run_benchmark(
        workdir, args.rows, args.mosaic_px, args.overlap_sky, args.baseline, args.repeat
    )
    print(
        f"merge of {r['rows']} rows (windows 64 and 128, sky de-dup on): {r['seconds']:.1f} s, "
        f"{r['rows'] - r['kept']} sky duplicates dropped"
    )
    if args.baseline:
        print(
            f"baseline {args.baseline}: {r['baseline_seconds']:.1f} s "
            f"({r['baseline_seconds'] / r['seconds']:.1f}x slower); "
            f"identical manifests: {r['identical']}"
        )


if __name__ == "__main__":
    main()
