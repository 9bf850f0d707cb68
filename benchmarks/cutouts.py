"""Cutting a survey: astrocurate (copied and virtual stores) against the original way.

The original way writes one ``np.save`` file per cutout plus a JSON list of them.
All variants run in this one invocation, on the same mosaics, one after another,
each in its own process so that peak memory is measured per variant.

Usage::

    python benchmarks/cutouts.py                       # 8 mosaics of 8192 px (~2.1 GB)
    python benchmarks/cutouts.py --mosaics 2 --size 2048 --workdir /tmp/bench   # quick look

Prints cutouts/s, MB/s, files written and peak memory per variant, the ratios
between them, the disk's synced sequential write bandwidth measured in the same
run, the merge time for ``--merge-rows`` rows and random reads/s by cutout_id.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def sequential_write_mb_s(directory: Path, megabytes: int = 1024) -> float:
    """Write ``megabytes`` with 8 MiB blocks and fsync; return MB/s."""
    block = np.random.default_rng(0).integers(0, 255, 8 << 20, dtype=np.uint8).tobytes()
    path = directory / "seqwrite.bin"
    start = time.perf_counter()
    with open(path, "wb") as handle:
        for _ in range(megabytes // 8):
            handle.write(block)
        handle.flush()
        os.fsync(handle.fileno())
    seconds = time.perf_counter() - start
    path.unlink()
    return megabytes * 1.048576 / seconds


def original_way(survey: Path, out: Path, window: int, overlap: float) -> dict:
    """One np.save per cutout and a JSON list, as the seed project did (same windows)."""
    from astrocurate import mosaics as mosaic_io
    from astrocurate import windows

    out.mkdir(parents=True, exist_ok=True)
    listing, n_bytes = [], 0
    for mosaic_file in mosaic_io.discover_mosaics(survey):
        with mosaic_io.open_mosaic(mosaic_file.path) as mosaic:
            data = mosaic.read_rows(0, mosaic.shape[0])
            x0, y0 = windows.window_origins(mosaic.shape, window, overlap)
            for x, y in zip(x0.tolist(), y0.tolist(), strict=True):
                cutout = data[y : y + window, x : x + window]
                if np.isnan(cutout).any():
                    continue
                path = out / f"{mosaic_file.name}_{x}_{y}.npy"
                np.save(path, cutout)
                listing.append(str(path))
                n_bytes += cutout.nbytes
    (out / "cutouts.json").write_text(json.dumps(listing))
    os.sync()
    return {"n_cutouts": len(listing), "bytes": n_bytes}


def astrocurate_way(survey: Path, out: Path, window: int, overlap: float, store: str) -> dict:
    from astrocurate.cutout_store import read_manifest
    from astrocurate.cutouts import CutoutOptions, make_cutouts

    run = make_cutouts(survey, out, CutoutOptions(window, overlap, 0.0, store), progress=False)
    os.sync()
    manifest = read_manifest(run.output_dir, ["cutout_id"])
    return {"n_cutouts": len(manifest), "bytes": len(manifest) * window * window * 4}


def run_variant(args: argparse.Namespace) -> None:
    """Child process: run one variant, print its figures as JSON."""
    out = Path(args.out)
    start = time.perf_counter()
    if args.variant == "original":
        result = original_way(Path(args.survey), out, args.window, args.overlap)
    else:
        result = astrocurate_way(Path(args.survey), out, args.window, args.overlap, args.variant)
    result["seconds"] = time.perf_counter() - start
    result["files"] = sum(1 for p in out.rglob("*") if p.is_file())
    result["written_bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["peak_rss_mb"] = max(self_kb, child_kb) / 1024
    print(json.dumps(result))


def measure(variant: str, survey: Path, out: Path, window: int, overlap: float, env: dict) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--survey",
        str(survey),
        "--out",
        str(out),
        "--window",
        str(window),
        "--overlap",
        str(overlap),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{variant} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def merge_benchmark(workdir: Path, rows: int, env_store: str) -> float:
    """Time merge_cutouts on two tracked cutout runs of rows/2 rows each (de-dup on)."""
    import pandas as pd

    from astrocurate.cutout_store import MANIFEST, MOSAICS, write_parquet_atomic
    from astrocurate.merge import merge_cutouts
    from astrocurate.tracking import tracked_step

    rng = np.random.default_rng(0)
    ids = []
    for k, size in enumerate((64, 128)):
        n = rows // 2
        mosaics = [f"/survey/P{i:03d}/mosaic-blanked.fits" for i in range(841)]
        mosaic_index = rng.integers(0, len(mosaics), n)
        table = pd.DataFrame(
            {
                "cutout_id": np.arange(n),
                "mosaic": pd.Categorical([f"P{i:03d}" for i in mosaic_index]),
                "mosaic_path": pd.Categorical([mosaics[i] for i in mosaic_index]),
                "window_size": size,
                "x0": rng.integers(0, 9000, n),
                "y0": rng.integers(0, 9000, n),
                "ra": rng.uniform(0, 360, n),
                "dec": rng.uniform(20, 70, n),
                "pixel_scale_arcsec": 1.5,
                "nan_fraction": 0.0,
                "mean": rng.normal(size=n),
                "std": 1.0,
                "max": 5.0,
                "noise_mad": 1.0,
                "peak_snr": 5.0,
                "store": "copy",
                "array_file": "pixels/x.npy",
                "array_row": np.arange(n),
            }
        )
        centres = pd.DataFrame(
            {
                "mosaic_path": mosaics,
                "centre_ra": rng.uniform(0, 360, len(mosaics)),
                "centre_dec": rng.uniform(20, 70, len(mosaics)),
            }
        )
        with tracked_step("cutting_out", {"window_size": size, "overlap": 0.5, "k": k}) as run:
            write_parquet_atomic(table, run.output_dir / MANIFEST)
            write_parquet_atomic(centres, run.output_dir / MOSAICS)
        ids.append(run.run_id)
    start = time.perf_counter()
    merge_cutouts(ids, output_path=workdir / "merge", force=True)
    return time.perf_counter() - start


def random_reads_per_s(run_dir: Path, n: int = 20000) -> float:
    from astrocurate.cutout_store import CutoutReader

    reader = CutoutReader.from_directory(run_dir)
    ids = np.random.default_rng(1).integers(0, len(reader), n)
    reader[int(ids[0])]  # open files
    start = time.perf_counter()
    for i in ids:
        reader[int(i)]
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="keeps the survey between runs")
    parser.add_argument("--mosaics", type=int, default=8)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--merge-rows", type=int, default=3_000_000)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--survey", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.variant = args.child
        run_variant(args)
        return

    from astrocurate.survey import make_survey

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="astrocurate-bench-")).resolve()
    survey = workdir / f"survey-{args.mosaics}x{args.size}"
    if not (survey / "truth_catalogue.parquet").is_file():
        print(f"generating {args.mosaics} mosaics of {args.size} px in {survey} ...", flush=True)
        make_survey(survey, n_mosaics=args.mosaics, mosaic_size=args.size, seed=0)
    survey_bytes = sum(p.stat().st_size for p in survey.rglob("*.fits"))
    store_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store_uri, "MLFLOW_EXPERIMENT_NAME": "benchmarks"}
    os.environ.update({"MLFLOW_TRACKING_URI": store_uri, "MLFLOW_EXPERIMENT_NAME": "benchmarks"})

    disk = sequential_write_mb_s(workdir)
    results = {}
    for variant in ("original", "copy", "virtual"):
        results[variant] = measure(
            variant, survey, workdir / f"out-{variant}", args.window, args.overlap, env
        )
    copy_dir = next((workdir / "out-copy" / "cutting_out").iterdir())
    virtual_dir = next((workdir / "out-virtual" / "cutting_out").iterdir())
    reads = {"copy": random_reads_per_s(copy_dir), "virtual": random_reads_per_s(virtual_dir)}
    merge_seconds = merge_benchmark(workdir, args.merge_rows, store_uri)

    print(
        f"\nsurvey: {args.mosaics} mosaics of {args.size} px, {survey_bytes / 1e9:.2f} GB; "
        f"window {args.window}, overlap {args.overlap}; {os.cpu_count()} cores"
    )
    print(f"disk sequential write (synced): {disk:.0f} MB/s\n")
    header = f"{'variant':<10}{'cutouts':>10}{'seconds':>9}{'cutouts/s':>11}{'MB/s':>8}"
    header += f"{'files':>9}{'peak MB':>9}"
    print(header)
    for name, r in results.items():
        rate = r["n_cutouts"] / r["seconds"]
        mb_s = r["bytes"] / 1e6 / r["seconds"]
        print(
            f"{name:<10}{r['n_cutouts']:>10}{r['seconds']:>9.1f}{rate:>11.0f}{mb_s:>8.0f}"
            f"{r['files']:>9}{r['peak_rss_mb']:>9.0f}"
        )
    speed = {k: r["n_cutouts"] / r["seconds"] for k, r in results.items()}
    copy_mb_s = results["copy"]["bytes"] / 1e6 / results["copy"]["seconds"]
    print(f"\ncopy / original speed:    {speed['copy'] / speed['original']:.1f}x")
    print(f"virtual / original speed: {speed['virtual'] / speed['original']:.1f}x")
    print(f"disk / copy bandwidth:    {disk / copy_mb_s:.2f}x (goal <= 1.5)")
    print(
        f"random reads by cutout_id: copy {reads['copy']:.0f}/s, virtual {reads['virtual']:.0f}/s"
    )
    print(f"merge of {args.merge_rows} rows (2 runs, sky de-dup on): {merge_seconds:.1f} s")


if __name__ == "__main__":
    main()
