"""Cutting a survey: astrocurate (copied and virtual stores) against the original way.

The original way writes one ``np.save`` file per cutout plus a JSON list of them.
All variants run in this one invocation, on the same mosaics, one after another,
each in its own process. Peak memory is sampled from ``/proc`` every 20 ms over the
variant's whole process tree (its worker processes included): the largest sum of
resident memory over the tree, and the largest single process (its ``VmHWM``). For
astrocurate the time is the whole ``make_cutouts`` call, i.e. until the manifest
(and, with ``copy``, the pixel files, fsynced) can be used.

Usage::

    python benchmarks/cutouts.py                       # 8 mosaics of 8192 px (~2.1 GB)
    python benchmarks/cutouts.py --mosaics 2 --size 2048 --workdir /tmp/bench   # quick look
    python benchmarks/cutouts.py --baseline ca012ff   # also astrocurate as of a commit
    python benchmarks/cutouts.py --cold --read-ratio 4   # the virtual run against one read
    python benchmarks/cutouts.py --zero-blanks --baseline 4f7dad0   # blank borders of zeros

Prints cutouts/s, MB/s, files written and peak memory per variant, the ratios
between them, the load average before and after, the disk's synced sequential write
bandwidth measured in the same run, the merge time for ``--merge-rows`` rows
(``benchmarks/merge.py``: overlapping mosaics, sky de-duplication on) and random reads/s
by cutout_id.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
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


def read_once_seconds(paths: list[Path]) -> float:
    """Seconds to read every byte of ``paths`` once, in 8 MiB reads (what a cut must read)."""
    buffer = bytearray(8 << 20)
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass
    return time.perf_counter() - start


def zero_blanks_copy(survey: Path) -> Path:
    """A copy of ``survey`` beside it whose mosaics (not rms maps) hold 0 where they held NaN."""
    from astropy.io import fits

    from astrocurate.io.mosaic_names import is_companion_name

    target = survey.with_name(survey.name + "-zeros")
    if (target / "survey.json").is_file():
        return target
    print(f"writing {target} (blank pixels as zeros) ...", flush=True)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(survey, partial)
    for path in sorted(partial.rglob("*.fits")):
        if is_companion_name(path.name):
            continue  # rms maps keep their NaN
        with fits.open(path, mode="update", memmap=False) as hdul:
            np.nan_to_num(hdul[0].data, copy=False, nan=0.0)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def drop_page_cache() -> bool:
    """Drop the kernel's page cache (root only) so the next reads come from the disk."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def original_way(survey: Path, out: Path, window: int, overlap: float) -> dict:
    """One np.save per cutout and a JSON list, as the seed project did (same windows)."""
    from astrocurate.algorithms import windows
    from astrocurate.io import mosaics as mosaic_io

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
    from astrocurate.io.cutout_store import read_manifest
    from astrocurate.stages.cutting_out.run import CutoutOptions, make_cutouts

    run = make_cutouts(survey, out, CutoutOptions(window, overlap, 0.0, store), progress=False)
    os.sync()
    manifest = read_manifest(run.output_dir, ["cutout_id"])
    return {"n_cutouts": len(manifest), "bytes": len(manifest) * window * window * 4}


def baseline_source(revision: str, workdir: Path) -> Path:
    """Extract ``src/`` of a git revision under ``workdir``; return that ``src``."""
    target = workdir / f"baseline-{revision}"
    if not (target / "src").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", revision, "src"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target / "src"


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
    print(json.dumps(result))


def _status_kb(pid: int, key: str) -> int:
    """Return a ``/proc/<pid>/status`` field in kB (0 if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _process_tree(pid: int) -> list[int]:
    """Return ``pid`` and all its descendants that are alive."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(c) for c in task.read_text().split())
            except OSError:
                continue
    return tree


class TreeMemory:
    """Sample the resident memory of a process tree in a thread until stopped."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid, self.interval = pid, interval
        self.total_kb = self.largest_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = _process_tree(self.pid)
            self.total_kb = max(self.total_kb, sum(_status_kb(p, "VmRSS") for p in pids))
            hwm = max((_status_kb(p, "VmHWM") for p in pids), default=0)
            self.largest_kb = max(self.largest_kb, hwm)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def measure(
    variant: str, survey: Path, out: Path, window: int, overlap: float, env: dict, src: Path
) -> dict:
    """Run one variant in a child process (package from ``src``); return its figures."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant.split("@")[0],
        "--src",
        str(src),
        "--survey",
        str(survey),
        "--out",
        str(out),
        "--window",
        str(window),
        "--overlap",
        str(overlap),
    ]
    # PYTHONPATH, not only sys.path: the fork server of the workers imports the package
    # with the interpreter's default path (Python 3.11 ignores the parent's sys.path there)
    env = {**env, "PYTHONPATH": os.pathsep.join([str(src), env.get("PYTHONPATH", "")])}
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        child = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr, text=True)
        memory = TreeMemory(child.pid)
        child.wait()
        memory.stop()
        stdout.seek(0)
        stderr.seek(0)
        if child.returncode:
            raise SystemExit(f"{variant} failed:\n{stderr.read()}")
        result = json.loads(stdout.read().strip().splitlines()[-1])
    result["peak_total_mb"] = memory.total_kb / 1024
    result["peak_process_mb"] = memory.largest_kb / 1024
    return result


def merge_benchmark(workdir: Path, rows: int) -> dict:
    """Time merge_cutouts on ``rows`` rows of overlapping mosaics (``benchmarks/merge.py``)."""
    spec = importlib.util.spec_from_file_location("merge_bench", ROOT / "benchmarks" / "merge.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run_benchmark(workdir / "merge-bench", rows, repeat=1)


def random_reads_per_s(run_dir: Path, n: int = 20000) -> float:
    from astrocurate.io.cutout_store import CutoutReader

    reader = CutoutReader.from_directory(run_dir)
    ids = np.random.default_rng(1).integers(0, len(reader), n)
    reader[int(ids[0])]  # open files
    start = time.perf_counter()
    for i in ids:
        reader[int(i)]
    return n / (time.perf_counter() - start)


def _load(averages: tuple[float, float, float]) -> str:
    return " ".join(f"{a:.2f}" for a in averages)


def read_ratios(
    args: argparse.Namespace, survey: Path, workdir: Path, files: list[Path], env: dict
) -> None:
    """Time reading ``files`` once, then the virtual run, ``args.read_ratio`` times in turn.

    The goal (virtual run within 1.5x of one read) depends on the disk of the moment, so
    several turns show its spread; with ``--cold`` each read and each run starts from an
    empty page cache. With ``--baseline`` each turn also runs that revision's virtual
    store, right after this one's, and prints the ratio of their times.
    """
    print(f"load average before: {_load(os.getloadavg())}; {os.cpu_count()} cores")
    sources = {"": ROOT / "src"}
    if args.baseline:
        sources[args.baseline] = baseline_source(args.baseline, workdir)
    for turn in range(args.read_ratio):
        cold = args.cold and drop_page_cache()
        read_once = read_once_seconds(files)
        seconds = {}
        for revision, src in sources.items():
            if cold:
                drop_page_cache()
            out = workdir / f"out-virtual{'-' * bool(revision)}{revision}"
            run = measure("virtual", survey, out, args.window, args.overlap, env, src)
            seconds[revision] = run["seconds"]
        print(
            f"turn {turn + 1}: read {len(files)} files once {read_once:.2f} s "
            f"({'from the disk' if cold else 'page cache warm'}), virtual run "
            f"{seconds['']:.2f} s: {seconds[''] / read_once:.2f}x (goal <= 1.5)",
            flush=True,
        )
        if args.baseline:
            old = seconds[args.baseline]
            print(
                f"  virtual@{args.baseline} {old:.2f} s: {old / read_once:.2f}x; "
                f"this revision {old / seconds['']:.2f}x as fast",
                flush=True,
            )
    print(f"load average after: {_load(os.getloadavg())}")


def _turns(text: str) -> int:
    """``--read-ratio``'s value: a positive number of turns."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of turns, got {text!r}")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="keeps the survey between runs")
    parser.add_argument("--mosaics", type=int, default=8)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--merge-rows", type=int, default=3_000_000)
    parser.add_argument(
        "--cold",
        action="store_true",
        help="drop the page cache (root) before the read-once time and before every variant",
    )
    parser.add_argument(
        "--read-ratio",
        type=_turns,
        default=0,
        metavar="N",
        help="only the virtual store against reading its files once, N times in turn",
    )
    parser.add_argument(
        "--zero-blanks",
        action="store_true",
        help="a copy of the survey whose blank pixels are 0 instead of NaN (zero-padded mosaics)",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--survey", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--src", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--baseline", default="", help="git revision whose astrocurate to run too (copy, virtual)"
    )
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, args.src)
        args.variant = args.child
        run_variant(args)
        return

    from astrocurate.synthetic.survey import make_survey

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="astrocurate-bench-")).resolve()
    survey = workdir / f"survey-{args.mosaics}x{args.size}"
    if not (survey / "survey.json").is_file():
        print(f"generating {args.mosaics} mosaics of {args.size} px in {survey} ...", flush=True)
        make_survey(survey, n_mosaics=args.mosaics, mosaic_size=args.size, seed=0)
    if args.zero_blanks:
        survey = zero_blanks_copy(survey)
    from astrocurate.io.mosaic_names import is_companion_name

    read_by_a_cut = sorted(survey.rglob("*.fits"))  # the mosaics and their rms maps
    mosaics = [p for p in read_by_a_cut if not is_companion_name(p.name)]
    survey_bytes = sum(p.stat().st_size for p in mosaics)
    store_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store_uri, "MLFLOW_EXPERIMENT_NAME": "benchmarks"}
    os.environ.update({"MLFLOW_TRACKING_URI": store_uri, "MLFLOW_EXPERIMENT_NAME": "benchmarks"})

    if args.read_ratio:
        read_ratios(args, survey, workdir, read_by_a_cut, env)
        return
    load_before = os.getloadavg()
    disk = sequential_write_mb_s(workdir)
    sources = {"": ROOT / "src"}
    if args.baseline:
        sources[args.baseline] = baseline_source(args.baseline, workdir)
    variants = ["original", "copy", "virtual"]
    variants += [f"{v}@{args.baseline}" for v in ("copy", "virtual") if args.baseline]
    results = {}
    cold = args.cold and drop_page_cache()
    read_once = read_once_seconds(read_by_a_cut)
    for variant in variants:
        if cold:
            drop_page_cache()
        src = sources[variant.partition("@")[2]]
        out = workdir / f"out-{variant.replace('@', '-')}"
        results[variant] = measure(variant, survey, out, args.window, args.overlap, env, src)
    copy_dir = next((workdir / "out-copy" / "cutting_out").iterdir())
    virtual_dir = next((workdir / "out-virtual" / "cutting_out").iterdir())
    reads = {"copy": random_reads_per_s(copy_dir), "virtual": random_reads_per_s(virtual_dir)}
    merge = merge_benchmark(workdir, args.merge_rows)

    print(
        f"\nsurvey: {args.mosaics} mosaics of {args.size} px, {survey_bytes / 1e9:.2f} GB; "
        f"window {args.window}, overlap {args.overlap}; {os.cpu_count()} cores"
    )
    print(f"disk sequential write (synced): {disk:.0f} MB/s")
    load_after = _load(os.getloadavg())
    print(f"load average (1, 5, 15 min): before {_load(load_before)}, after {load_after}\n")
    header = f"{'variant':<18}{'cutouts':>10}{'seconds':>9}{'cutouts/s':>11}{'MB/s':>8}"
    header += f"{'files':>9}{'peak MB':>9}{'largest':>9}"
    print(header)
    for name, r in results.items():
        rate = r["n_cutouts"] / r["seconds"]
        mb_s = r["bytes"] / 1e6 / r["seconds"]
        print(
            f"{name:<18}{r['n_cutouts']:>10}{r['seconds']:>9.1f}{rate:>11.0f}{mb_s:>8.0f}"
            f"{r['files']:>9}{r['peak_total_mb']:>9.0f}{r['peak_process_mb']:>9.0f}"
        )
    print("(peak MB: all processes of the variant together; largest: one process)")
    speed = {k: r["n_cutouts"] / r["seconds"] for k, r in results.items()}
    copy_mb_s = results["copy"]["bytes"] / 1e6 / results["copy"]["seconds"]
    print(f"\ncopy / original speed:    {speed['copy'] / speed['original']:.1f}x")
    print(f"virtual / original speed: {speed['virtual'] / speed['original']:.1f}x")
    print(f"disk / copy bandwidth:    {disk / copy_mb_s:.2f}x (goal <= 1.5)")
    print(
        f"virtual run / reading its {len(read_by_a_cut)} files once "
        f"({sum(p.stat().st_size for p in read_by_a_cut) / 1e9:.2f} GB in {read_once:.2f} s, "
        f"{'from the disk' if cold else 'page cache warm'}): "
        f"{results['virtual']['seconds'] / read_once:.2f}x (goal <= 1.5)"
    )
    for store in ("copy", "virtual") if args.baseline else ():
        old = speed[f"{store}@{args.baseline}"]
        print(f"{store} / {store}@{args.baseline} speed: {speed[store] / old:.1f}x")
    print(
        f"random reads by cutout_id: copy {reads['copy']:.0f}/s, virtual {reads['virtual']:.0f}/s"
    )
    print(
        f"merge of {merge['rows']} rows (2 runs, sky de-dup on, "
        f"{merge['rows'] - merge['kept']} dropped): {merge['seconds']:.1f} s"
    )


if __name__ == "__main__":
    main()
