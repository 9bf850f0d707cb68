"""A real ``mlflow ui`` on loopback shows the demo's runs, and steps can log through it.

The demo runs with no tracking settings at all, so it writes the embedded default
store ``mlflow.db`` in its working directory; ``mlflow ui`` started there with no
store flags must find every run, its parameters and its parent links.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from astrocurate.demo import run_demo
from astrocurate.synthetic.survey import CLASS_NAMES

pytestmark = pytest.mark.slow

MLFLOW = Path(sys.executable).with_name("mlflow")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api(base: str, endpoint: str, body: dict | None = None, query: dict | None = None) -> dict:
    """Call the server's REST API (``/api/2.0/mlflow/ENDPOINT``): POST ``body``, else GET."""
    url = f"{base}/api/2.0/mlflow/{endpoint}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _wait_until_up(base: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise TimeoutError(f"mlflow did not answer on {base} within {timeout} s")


@pytest.fixture(scope="module")
def demo_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict]]:
    """Run the demo in a fresh directory with no tracking configuration."""
    workdir = tmp_path_factory.mktemp("project")
    saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
    old_cwd = Path.cwd()
    os.chdir(workdir)
    try:
        runs = run_demo(workdir / "demo")
    finally:
        os.chdir(old_cwd)
        for key, value in saved.items():
            if value is not None:
                os.environ[key] = value
    assert (workdir / "mlflow.db").is_file()
    yield workdir, runs


@contextlib.contextmanager
def mlflow_process(args: list[str], cwd: Path, name: str = "mlflow") -> Iterator[str]:
    """Run ``mlflow ARGS --port P`` on loopback in its own process group; yield its URL.

    The server is stopped as a group (``os.killpg``: the CLI, uvicorn and its workers)
    when the block ends. Its job runner is off (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION``:
    seven more Python processes that the pipeline does not use). Its output goes to
    ``cwd/<name>.log``, shown if it does not come up.
    """
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    log_path = cwd / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(MLFLOW), *args, "--port", str(port)],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            _wait_until_up(base, proc)
        except (RuntimeError, TimeoutError) as exc:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{exc}\n{tail}") from exc
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def mlflow_ui(demo_project) -> Iterator[str]:
    """``mlflow ui --port P`` from the demo's directory, in its own process group."""
    workdir, _ = demo_project
    with mlflow_process(["ui"], workdir, "mlflow-ui") as base:
        yield base


def runs_by_id(base: str, experiment_name: str = "astrocurate") -> dict[str, dict]:
    """Every run of an experiment on the server (REST ``runs/search``), by run ID."""
    experiment = api(base, "experiments/get-by-name", query={"experiment_name": experiment_name})
    found = api(
        base,
        "runs/search",
        {"experiment_ids": [experiment["experiment"]["experiment_id"]], "max_results": 100},
    )
    return {run["info"]["run_id"]: run for run in found["runs"]}


def params(run: dict) -> dict[str, str]:
    """A REST run's parameters."""
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def tags(run: dict) -> dict[str, str]:
    """A REST run's tags."""
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def test_ui_lists_demo_runs_with_params_and_parents(demo_project, mlflow_ui) -> None:
    _, runs = demo_project
    listed = runs_by_id(mlflow_ui)
    for run in runs.values():
        assert run.run_id in listed
        assert listed[run.run_id]["info"]["status"] == "FINISHED"
        assert listed[run.run_id]["info"]["run_name"] == run.step

    cut64 = listed[runs["cutouts_64"].run_id]
    assert params(cut64)["window_size"] == "64"
    assert params(cut64)["overlap"] == "0.5"
    merge = listed[runs["merge"].run_id]
    parents = {runs["cutouts_64"].run_id, runs["cutouts_128"].run_id}
    assert set(json.loads(params(merge)["input_run_ids"])) == parents
    assert set(json.loads(tags(merge)["astrocurate.input_run_ids"])) == parents
    assert tags(merge)["astrocurate.output_dir"] == str(runs["merge"].output_dir)
    assert len(tags(merge)["astrocurate.content_hash"]) == 64


def test_ui_serves_run_artifacts(demo_project, mlflow_ui) -> None:
    _, runs = demo_project
    run_id = runs["merge"].run_id
    url = f"{mlflow_ui}/get-artifact?" + urllib.parse.urlencode(
        {"path": "metadata.json", "run_uuid": run_id}
    )
    with urllib.request.urlopen(url, timeout=30) as response:
        metadata = json.loads(response.read())
    assert metadata["run_id"] == run_id
    assert metadata["step"] == "merge_cutouts"


def test_ui_serves_the_curation_report(demo_project, mlflow_ui) -> None:
    _, runs = demo_project
    url = f"{mlflow_ui}/get-artifact?" + urllib.parse.urlencode(
        {"path": "report/index.html", "run_uuid": runs["sampling"].run_id}
    )
    with urllib.request.urlopen(url, timeout=30) as response:
        page = response.read().decode()
    assert page.count('src="data:image/png;base64,') >= 4  # self-contained: images inline


def test_demo_curation_balances_the_truth_classes(demo_project) -> None:
    """Issue #6: curated class entropy clearly above random's, every rare class enriched."""
    _, runs = demo_project
    metrics = json.loads((runs["sampling"].output_dir / "metrics.json").read_text())
    assert metrics["class_entropy_curated"] > metrics["class_entropy_random"] + 0.05
    rare = [n for n in CLASS_NAMES if metrics.get(f"class_share_{n}_pool", 1.0) < 0.1]
    assert rare, "the demo survey has rare source classes"
    for name in rare:
        assert metrics[f"class_enrichment_{name}"] > 1.0, name


def test_steps_log_through_the_server(demo_project, mlflow_ui, tmp_path) -> None:
    """``MLFLOW_TRACKING_URI`` switches a step, its artifacts and find_run to the server."""
    workdir, _ = demo_project
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_ui, "MLFLOW_EXPERIMENT_NAME": "astrocurate"}
    cut = subprocess.run(
        [
            sys.executable,
            str(root / "scripts" / "cutouts.py"),
            "--mosaics_path",
            str(workdir / "demo" / "survey"),
            "--output_path",
            str(tmp_path),
            "--window_size",
            "256",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert cut.returncode == 0, cut.stderr
    run_id = cut.stdout.strip()  # the ID alone: no "View run ... at URL" from MLflow
    assert len(run_id) == 32, cut.stdout
    assert not (tmp_path / "mlflow.db").exists()
    listed = runs_by_id(mlflow_ui)
    assert listed[run_id]["info"]["status"] == "FINISHED"
    assert params(listed[run_id])["window_size"] == "256"
    found = subprocess.run(
        [
            sys.executable,
            str(root / "scripts" / "find_run.py"),
            "--run-name",
            "cutting_out",
            "--window_size",
            "256",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert (found.returncode, found.stdout.strip()) == (0, run_id)
    artifacts = api(mlflow_ui, "artifacts/list", query={"run_id": run_id})
    assert {"metadata.json", "outputs.json"} <= {f["path"] for f in artifacts.get("files", [])}
