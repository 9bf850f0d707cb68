"""Fixed start-up cost of a step and of ``find_run``: this tree against a baseline commit.

Every command runs in a fresh process, ``--repeat`` times, the variants interleaved
(baseline, current, baseline, ...) so that a change in the load of a shared machine
hits both alike. The baseline is ``git worktree add`` of ``--baseline`` in a temporary
directory; each variant runs its own ``scripts/*.py`` (which put their own ``src``
first on ``sys.path``) against its own copy of the same tracking store and survey.

Commands measured:

- ``find_run``: ``scripts/find_run.py --run-name cutting_out`` on a store holding a
  few runs;
- ``step, reused``: ``scripts/cutouts.py`` on a survey of 2 mosaics of 512 px whose
  finished run exists (the rerun of a finished step);
- ``step, new run``: the same with ``--force`` (a new run: the fixed cost and the cutting);
- ``<step>, reused``: the guide's command of every later step (merge, features, clustering
  4a, sampling, evaluation with a small budget) on the runs of that survey, each finished
  once beforehand by the variant's own code (the rerun of a finished step);
- ``empty step, new run``: ``tracked_step`` with ``force=True`` around writing one small
  file, in ``python -c`` (a new run's fixed cost alone: create the run, log its
  parameters and tags, hash, log ``outputs.json`` and ``metadata.json``, finish it);
- for reference, ``import mlflow`` and ``from mlflow.tracking import MlflowClient``
  alone (the same for both variants).

Reported per command and variant: median and minimum wall time, and median CPU time
(user + system of the process and the children it waited for, from ``getrusage``).

Usage::

    python benchmarks/startup.py                      # against 73d74bb, 5 repeats
    python benchmarks/startup.py --baseline HEAD~1 --repeat 9 --workdir /tmp/startup
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The last commit before the start-up work (MLflow imported and opened by every lookup).
DEFAULT_BASELINE = "73d74bb"
#: A step that creates a new run and writes one small file (``argv[1]``: the tree's src).
EMPTY_STEP = (
    "import sys; sys.path.insert(0, sys.argv[1]); from astrocurate import tracking\n"
    "with tracking.tracked_step('cutting_out', {'window_size': 8}, force=True) as run:\n"
    "    (run.output_dir / 'data.txt').write_text('payload')\n"
)


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run ``command`` to completion; return its wall and CPU seconds.

    Parameters
    ----------
    command : list of str
        The command line.
    cwd : Path
        Working directory (the variant's tracking store lives there).
    env : dict of str to str
        Environment of the process.

    Returns
    -------
    tuple of float
        Wall seconds and CPU seconds (user + system, waited-for children included).

    Raises
    ------
    RuntimeError
        If the command fails.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def prepare(tree: Path, workdir: Path, survey: Path, env: dict[str, str]) -> dict[str, list[str]]:
    """Finish every step once in ``workdir``; return the commands that rerun each of them.

    Two cutout runs of ``survey``, their merge, the features, the demo's clustering (4a and
    its ``run.sh``), a curated sample and a small evaluation, each by ``tree``'s scripts.
    """
    workdir.mkdir(parents=True)
    cutouts = [run_id(step_command(tree, survey, workdir, w), workdir, env) for w in (64, 128)]
    scripts = tree / "scripts"
    merge = [sys.executable, str(scripts / "merge.py"), "-q", "--cutouts-id", *cutouts]
    features = [sys.executable, str(scripts / "feature_extraction.py"), "-q"]
    features += ["--merged-cutouts-id", run_id(merge, workdir, env)]
    clustering = [sys.executable, str(scripts / "4_clustering.py"), "-q"]
    clustering += ["--features-id", run_id(features, workdir, env)]
    clustering += ["--config_file", str(tree / "configs" / "clusters" / "demo_2lvl_64_8.yaml")]
    experiment = Path(run_id(clustering, workdir, env))
    subprocess.run(["bash", str(experiment / "run.sh")], cwd=workdir, env=env, check=True,
                   capture_output=True)  # fmt: skip
    sampling = [sys.executable, str(scripts / "random_sampling.py"), "-q"]
    sampling += ["--clustering-id", experiment.name]
    sampling += ["--num-samples", "60", "--no-report"]
    evaluation = [sys.executable, str(scripts / "evaluate.py"), "-q"]
    evaluation += ["--sampling-id", run_id(sampling, workdir, env)]
    evaluation += ["--seeds", "1", "--images-seen", "64", "--batch-size", "16"]
    evaluation += ["--max-per-category", "20", "--folds", "2", "--no-report"]
    run_id(evaluation, workdir, env)
    return {
        "merge, reused": merge,
        "features, reused": features,
        "clustering 4a, reused": clustering,
        "sampling, reused": sampling,
        "evaluation, reused": evaluation,
    }


def run_id(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run ``command``; return the last line it prints (a run ID or directory)."""
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout.strip().splitlines()[-1]


def step_command(tree: Path, survey: Path, workdir: Path, window: int = 64) -> list[str]:
    """Return the cutouts command line of a variant (a virtual store, quiet)."""
    return [
        sys.executable,
        str(tree / "scripts" / "cutouts.py"),
        "--mosaics_path",
        str(survey),
        "--output_path",
        str(workdir / "outputs"),
        "--window_size",
        str(window),
        "--store",
        "virtual",
        "-q",
    ]


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision to compare")
    parser.add_argument("--repeat", type=int, default=5, help="runs per command and variant")
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a temp dir)")
    args = parser.parse_args(argv)

    scratch = Path(args.workdir or tempfile.mkdtemp(prefix="startup-bench-")).resolve()
    if scratch.exists() and any(scratch.iterdir()):
        parser.error(f"--workdir {scratch} is not empty")
    scratch.mkdir(parents=True, exist_ok=True)
    baseline_tree = scratch / "baseline-tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline_tree), args.baseline],
        check=True,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ASTROCURATE_"))}
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        survey = scratch / "survey"
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from astrocurate.cli import main; sys.exit(main(sys.argv[1:]))",
                "make-survey",
                str(survey),
                "--mosaics",
                "2",
                "--size",
                "512",
                "--seed",
                "0",
                "-q",
            ],
            check=True,
            env={**env, "PYTHONPATH": str(ROOT / "src")},
            capture_output=True,
        )
        variants = {"baseline": baseline_tree, "current": ROOT}
        workdirs = {name: scratch / name for name in variants}
        # the variant's package for the step's own worker processes too: a fork server
        # starts from the interpreter's path, where the installed package is this tree's
        envs = {n: {**env, "PYTHONPATH": str(tree / "src")} for n, tree in variants.items()}
        reruns = {n: prepare(tree, workdirs[n], survey, envs[n]) for n, tree in variants.items()}

        def commands(name: str) -> dict[str, list[str]]:
            tree, workdir = variants[name], workdirs[name]
            find = [sys.executable, str(tree / "scripts" / "find_run.py")]
            return {
                "find_run": [*find, "--run-name", "cutting_out"],
                "step, reused": step_command(tree, survey, workdir),
                "step, new run": [*step_command(tree, survey, workdir), "--force"],
                **reruns[name],
                "empty step, new run": [sys.executable, "-c", EMPTY_STEP, str(tree / "src")],
                "import mlflow": [sys.executable, "-c", "import mlflow"],
                "import MlflowClient": [
                    sys.executable,
                    "-c",
                    "from mlflow.tracking import MlflowClient",
                ],
            }

        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        load_start = os.getloadavg()[0]
        for _ in range(args.repeat):
            for label in commands("current"):
                for name in variants:
                    if label.startswith("import") and name == "baseline":
                        continue  # the same library either way
                    measured = timed(commands(name)[label], workdirs[name], envs[name])
                    results.setdefault((label, name), []).append(measured)
        load_end = os.getloadavg()[0]
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline_tree)],
            check=False,
            capture_output=True,
        )

    print(
        f"baseline {args.baseline}, {args.repeat} runs each, "
        f"load average {load_start:.1f} at the start, {load_end:.1f} at the end"
    )
    print("| command | variant | median wall s | min wall s | median CPU s | baseline CPU / CPU |")
    print("|---|---|---|---|---|---|")
    for (label, name), runs in results.items():
        wall = [w for w, _ in runs]
        cpu = statistics.median(c for _, c in runs)
        base = results.get((label, "baseline"))
        ratio = ""
        if name == "current" and base:
            ratio = f"{statistics.median(c for _, c in base) / cpu:.1f}x"
        print(
            f"| {label} | {name} | {statistics.median(wall):.2f} | {min(wall):.2f} "
            f"| {cpu:.2f} | {ratio} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
