"""find_run as the guide uses it: in-process through the CLI and as the real script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from astrocurate.cli import main
from astrocurate.tracking import tracked_step
from script_imports import run_script

ROOT = Path(__file__).resolve().parents[1]


def _step(name: str, params: dict, inputs: tuple[str, ...] = ()) -> str:
    with tracked_step(name, params, input_run_ids=inputs, force=True) as run:
        (run.output_dir / "x").write_text(name)
    return run.run_id


@pytest.fixture
def guide_runs(store: Path) -> dict[str, str]:
    """Two cutout runs (64, 128), a merge of both, a merge of one, a failed cutout run."""
    ids = {
        "cut64_old": _step("cutting_out", {"window_size": 64}),
        "cut64": _step("cutting_out", {"window_size": 64}),
        "cut128": _step("cutting_out", {"window_size": 128}),
    }
    ids["merge_both"] = _step("merge_cutouts", {"dedup_sky": True}, (ids["cut64"], ids["cut128"]))
    ids["merge_one"] = _step("merge_cutouts", {"dedup_sky": True}, (ids["cut64"],))
    with pytest.raises(RuntimeError), tracked_step("cutting_out", {"window_size": 32}) as run:
        ids["cut32_failed"] = run.run_id
        raise RuntimeError("killed by the test")
    return ids


def find(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    status = main(["find-run", *argv], prog="find_run.py")
    out, err = capsys.readouterr()
    return status, out, err


def test_latest_run_by_name(guide_runs, capsys) -> None:
    assert find(capsys, "--run-name", "merge_cutouts")[:2] == (0, guide_runs["merge_one"] + "\n")


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["--window_size", "64"], "cut64"),
        (["--window_size=128"], "cut128"),
        (["--param", "window_size=128"], "cut128"),
        (["--param", "window_size=64.0"], "cut64"),
    ],
    ids=["guide-flag", "flag-equals", "param-option", "numeric-equal"],
)
def test_parameter_filters(guide_runs, capsys, argv, key) -> None:
    status, out, _ = find(capsys, "--run-name", "cutting_out", *argv)
    assert (status, out.strip()) == (0, guide_runs[key])


@pytest.mark.parametrize(
    "form",
    ["brackets", "comma", "words", "reversed"],
)
def test_cutout_ids_match_exact_input_set(guide_runs, capsys, form) -> None:
    a, b = guide_runs["cut64"], guide_runs["cut128"]
    argv = {
        "brackets": [f"[{a}, {b}]"],
        "comma": [f"{a},{b}"],
        "words": [a, b],
        "reversed": [f"[{b}, {a}]"],
    }[form]
    status, out, _ = find(capsys, "--run-name", "merge_cutouts", "--cutout-ids", *argv)
    assert (status, out.strip()) == (0, guide_runs["merge_both"])


def test_get_path_prints_output_directory(guide_runs, capsys, store) -> None:
    status, out, _ = find(capsys, "--run-name", "cutting_out", "--window_size", "128", "--get-path")
    assert status == 0
    assert out.strip() == str(store / "outputs" / "cutting_out" / guide_runs["cut128"])
    assert Path(out.strip()).is_dir()


def test_unfinished_runs_skipped_unless_asked(guide_runs, capsys) -> None:
    status, out, err = find(capsys, "--run-name", "cutting_out", "--window_size", "32")
    assert status == 1 and out == ""
    assert "1 failed" in err and "--include-unfinished" in err
    status, out, _ = find(
        capsys, "--run-name", "cutting_out", "--window_size", "32", "--include-unfinished"
    )
    assert (status, out.strip()) == (0, guide_runs["cut32_failed"])


def test_no_match_names_filters_and_counts(guide_runs, capsys) -> None:
    status, out, err = find(capsys, "--run-name", "cutting_out", "--window_size", "256")
    assert status == 1 and out == ""
    assert err.count("\n") == 1
    assert "window_size=256" in err
    assert "4 'cutting_out' runs exist (1 failed, 3 finished)" in err
    assert "window_size values seen: 128, 32, 64" in err


def test_unknown_run_name_lists_known(guide_runs, capsys) -> None:
    status, out, err = find(capsys, "--run-name", "cutouts")
    assert status == 1 and out == ""
    assert "unknown run name 'cutouts'" in err and "cutting_out, merge_cutouts" in err


def test_known_step_without_runs(store, capsys) -> None:
    status, _, err = find(capsys, "--run-name", "clustering")
    assert status == 1 and "0 'clustering' runs exist" in err


def test_guide_literal_placeholder_is_explained(guide_runs, capsys) -> None:
    """The guide writes ``[CUTOUTS_RUN_ID_64, CUTOUTS_RUN_ID_128]`` without ``$``."""
    status, out, err = find(
        capsys,
        "--run-name",
        "merge_cutouts",
        "--cutout-ids",
        "[CUTOUTS_RUN_ID_64, CUTOUTS_RUN_ID_128]",
    )
    assert status == 1 and out == ""
    assert "'CUTOUTS_RUN_ID_64' is not an MLflow run ID" in err
    assert "$CUTOUTS_RUN_ID_64" in err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--run-name", "cutting_out", "--window_size"], "expected a value"),
        (["--run-name", "cutting_out", "stray"], "unexpected argument 'stray'"),
        (["--run-name", "cutting_out", "--param", "window_size"], "expected KEY=VALUE"),
    ],
    ids=["flag-without-value", "stray-word", "param-without-equals"],
)
def test_malformed_filters(store, capsys, argv, fragment) -> None:
    status, out, err = find(capsys, *argv)
    assert status == 1 and out == "" and fragment in err


def test_missing_run_name_is_usage_error(store, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["find-run"], prog="find_run.py")
    assert exc.value.code == 2
    assert "--run-name" in capsys.readouterr().err


def test_script_as_in_the_guide(guide_runs, store) -> None:
    """``FEATURE_RUN_ID=$(python scripts/find_run.py ...)``: stdout is only the answer."""
    env = dict(os.environ)
    script = str(ROOT / "scripts" / "find_run.py")
    ok = subprocess.run(
        [sys.executable, script, "--run-name", "cutting_out", "--window_size", "64"],
        capture_output=True,
        text=True,
        env=env,
        cwd=store,
    )
    assert ok.returncode == 0 and ok.stdout == guide_runs["cut64"] + "\n"
    bad = subprocess.run(
        [sys.executable, script, "--run-name", "feature_extraction"],
        capture_output=True,
        text=True,
        env=env,
        cwd=store,
    )
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("find_run.py: error: no finished 'feature_extraction' run")


def test_script_imports_no_heavy_library(guide_runs, store) -> None:
    """The script answers from a local store without MLflow, pandas, numpy or astropy."""
    heavy = ("mlflow", "sqlalchemy", "pandas", "numpy", "astropy", "torch")
    done = run_script("find_run.py", ["--run-name", "merge_cutouts"], heavy, cwd=store)
    assert done.returncode == 0, done.stderr
    assert done.stdout == guide_runs["merge_one"] + "\n"
    assert done.stderr.strip() == "[]"


def test_python_dash_m_is_the_astrocurate_command(store: Path, guide_runs) -> None:
    """``python -m astrocurate`` parses and answers like the console script."""
    argv = ["find-run", "--run-name", "cutting_out", "--param", "window_size=64"]
    by_module = subprocess.run(
        [sys.executable, "-m", "astrocurate", *argv], capture_output=True, text=True, check=False
    )
    script = Path(sys.executable).with_name("astrocurate")
    by_script = subprocess.run([script, *argv], capture_output=True, text=True, check=False)
    assert by_module.returncode == by_script.returncode == 0, by_module.stderr
    assert by_module.stdout == by_script.stdout
    assert by_module.stdout.strip() == guide_runs["cut64"]
    wrong = subprocess.run(
        [sys.executable, "-m", "astrocurate", "find-run"], capture_output=True, text=True
    )
    assert wrong.returncode == 2 and "astrocurate find-run: error:" in wrong.stderr
