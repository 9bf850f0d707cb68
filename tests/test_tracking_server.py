"""The pipeline in separate processes, all logging to one real ``mlflow server``.

One server for the module: ``mlflow server`` on 127.0.0.1 with a SQLite backend and
proxied artifacts (``--artifacts-destination``) in a temporary directory, in its own
process group, stopped as a group at the end. Every step is its own process with
``MLFLOW_TRACKING_URI=http://127.0.0.1:PORT``, as on a cluster where every node reaches
the server: two cutout shards at once, the merge, the features, a clustering prepared
with ``nprocs_per_node: 2`` whose ``run.sh`` starts two ranks (torchrun, gloo), and the
sampling. The checks go through the server's REST API (runs, metric histories,
artifacts) and through ``astrocurate verify`` and ``find_run``.

The processes reach the server through a recording proxy (:class:`RecordingProxy`, in
this process), so that what they write is observable, not only its result: every run
gets exactly one ``FINISHED`` (``runs/update``), and while ``run.sh`` runs every request
comes from rank 0's process (found from the connection's socket). A metric logged by
both ranks would also show as two entries for a step in its history, a second
``clustering`` run or a second line on ``run.sh``'s stdout.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from astrocurate import tracking
from astrocurate.synthetic.survey import make_survey
from astrocurate.tracking.lookup import verify_run
from test_mlflow_server import api, mlflow_process, params, runs_by_id, tags

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "clusters" / "demo_2lvl_64_8.yaml"
TIMEOUT = 300
#: The demo config made small for 42 cutouts, in two CPU processes of one thread each.
CLUSTERING = {
    "n_clusters": [8, 3],
    "n_iters": [5, 5],
    "n_resampling_steps": [2, 2],
    "sample_size": [2, 1],
    "nprocs_per_node": 2,
    "ncpus_per_gpu": 1,
}


# ----------------------------------------------------------------------------- a recording proxy


@dataclass
class Request:
    """One request that went through the :class:`RecordingProxy`."""

    method: str
    path: str
    body: dict
    pid: int | None  # the process that sent it, when asked for (``RecordingProxy.owners``)


@dataclass
class RecordingProxy:
    """An HTTP proxy in front of the tracking server that records what the clients send.

    Every process logs to the proxy's URL; each request is forwarded as it is and noted
    (method, path, JSON body). While :attr:`owners` is set, the sending process is found
    too, from the connection's socket (``/proc/net/tcp`` and ``/proc/*/fd``).
    """

    upstream: str
    requests: list[Request] = field(default_factory=list)
    owners: bool = False
    url: str = ""

    def updates(self, run_id: str) -> list[str]:
        """The statuses written to a run (``runs/update``), in order."""
        return [
            r.body.get("status", "")
            for r in self.requests
            if r.path.endswith("/runs/update") and r.body.get("run_id") == run_id
        ]

    @contextlib.contextmanager
    def serve(self) -> Iterator[RecordingProxy]:
        """Listen on a free loopback port (:attr:`url`) in a thread until the block ends."""
        proxy = self
        host, port = self.upstream.removeprefix("http://").split(":")

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                assert "chunked" not in self.headers.get("Transfer-Encoding", "")
                data = self.rfile.read(length) if length else b""
                pid = None
                if proxy.owners:
                    pid = _socket_owner(self.client_address[1], self.server.server_port)
                try:
                    body = json.loads(data) if data.startswith(b"{") else {}
                except ValueError:
                    body = {}
                proxy.requests.append(Request(self.command, self.path, body, pid))
                drop = {"host", "connection", "transfer-encoding", "content-length"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in drop}
                upstream = http.client.HTTPConnection(host, int(port), timeout=120)
                try:
                    upstream.request(self.command, self.path, body=data, headers=headers)
                    response = upstream.getresponse()
                    payload = response.read()
                finally:
                    upstream.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in drop:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward  # noqa: N815

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self.url = f"http://127.0.0.1:{server.server_port}"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()


def _socket_owner(client_port: int, server_port: int) -> int | None:
    """The PID of the process holding the loopback connection from ``client_port``."""
    wanted = f":{client_port:04X}"
    remote = f":{server_port:04X}"
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(wanted) and fields[2].endswith(remote):
            inode = fields[9]
            break
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == target:
                        return int(fd_dir.parent.name)
    return None


@dataclass
class ServerPipeline:
    """The tracking server and the runs the pipeline logged to it."""

    url: str
    proxy: RecordingProxy
    server_dir: Path
    work: Path
    env: dict[str, str]
    experiment: str
    cutouts: list[str]
    merged: str
    features: str
    clustering: str
    clustering_dir: Path
    run_sh_stdout: str
    sampling: str

    @property
    def chain(self) -> dict[str, list[str]]:
        """Each run's expected input runs."""
        return {
            **{run: [] for run in self.cutouts},
            self.merged: self.cutouts,
            self.features: [self.merged],
            self.clustering: [self.features],
            self.sampling: [self.clustering],
        }


def _step(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run a guide script (or ``-m astrocurate.cli``) to the end; return its stdout."""
    result = subprocess.run(
        [sys.executable, *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, f"{argv}: {result.stderr[-4000:]}"
    return result.stdout


def _run_id(stdout: str) -> str:
    """The run ID a step printed: its whole stdout (nothing else goes there)."""
    assert len(stdout.split()) == 1, stdout
    return tracking.parse_run_id(stdout)


def _script(name: str) -> str:
    return str(ROOT / "scripts" / name)


@pytest.fixture(scope="module")
def server_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPipeline]:
    """Start the server, run every step against it in its own process, stop the server."""
    server_dir = tmp_path_factory.mktemp("server")
    (server_dir / "db").mkdir()
    work = tmp_path_factory.mktemp("pipeline")
    args = ["server", "--host", "127.0.0.1", "--workers", "1"]
    args += ["--backend-store-uri", f"sqlite:///{server_dir / 'db' / 'mlflow.db'}"]
    args += ["--artifacts-destination", str(server_dir / "artifacts")]
    with (
        mlflow_process(args, server_dir, "mlflow-server") as url,
        RecordingProxy(url).serve() as proxy,
    ):
        experiment = f"server-{uuid.uuid4().hex[:12]}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env |= {"MLFLOW_TRACKING_URI": proxy.url, "MLFLOW_EXPERIMENT_NAME": experiment}
        env |= {"OMP_NUM_THREADS": "1", "ASTROCURATE_DATA_DIR": str(work / "outputs")}
        survey = make_survey(work / "survey", n_mosaics=2, mosaic_size=256, seed=5)

        cut = [_script("cutouts.py"), "--mosaics_path", str(survey.output_dir)]
        cut += ["--output_path", str(work / "outputs"), "--window_size", "64", "--workers", "1"]
        shards = [
            subprocess.Popen(
                [sys.executable, *cut, "--shard", f"{k}/2"],
                env=env,
                cwd=work,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for k in range(2)
        ]
        cutouts = []
        for shard in shards:
            out, err = shard.communicate(timeout=TIMEOUT)
            assert shard.returncode == 0, err[-4000:]
            cutouts.append(_run_id(out))

        merged = _run_id(_step([_script("merge.py"), "--cutouts-id", *cutouts], env, work))
        extract = [_script("feature_extraction.py"), "--merged-cutouts-id", merged]
        extract += ["--device", "cpu", "--workers", "0", "--batch-size", "64"]
        features = _run_id(_step(extract, env, work))
        config = work / "two_processes.yaml"
        config.write_text(yaml.safe_dump({**yaml.safe_load(DEMO.read_text()), **CLUSTERING}))
        prepared = _step(
            [_script("4_clustering.py"), "--features-id", features, "--config_file", str(config)],
            env,
            work,
        )
        clustering_dir = Path(prepared.strip())
        proxy.owners = True  # note which process sends each request while run.sh runs
        run_sh = subprocess.run(
            ["./run.sh"],
            cwd=clustering_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        proxy.owners = False
        assert run_sh.returncode == 0, run_sh.stderr[-4000:]
        sample = [_script("random_sampling.py"), "--clustering-id", clustering_dir.name]
        sampling = _run_id(_step([*sample, "--num-samples", "20"], env, work))
        yield ServerPipeline(
            url=url,
            proxy=proxy,
            server_dir=server_dir,
            work=work,
            env=env,
            experiment=experiment,
            cutouts=cutouts,
            merged=merged,
            features=features,
            clustering=clustering_dir.name,
            clustering_dir=clustering_dir,
            run_sh_stdout=run_sh.stdout,
            sampling=sampling,
        )


@pytest.fixture
def on_server(server_pipeline: ServerPipeline, monkeypatch: pytest.MonkeyPatch) -> ServerPipeline:
    """This process on the pipeline's server and experiment, in a directory with a decoy
    ``mlflow.db`` (a local store that lookups must not read)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server_pipeline.url)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", server_pipeline.experiment)
    decoy = server_pipeline.work / "decoy"
    decoy.mkdir(exist_ok=True)
    (decoy / "mlflow.db").write_bytes(b"")
    monkeypatch.chdir(decoy)
    return server_pipeline


def test_every_process_logged_one_finished_chain_to_the_server(server_pipeline) -> None:
    p = server_pipeline
    listed = runs_by_id(p.url, p.experiment)
    assert set(listed) == set(p.chain)  # no other run: every process found the same one
    for run_id, inputs in p.chain.items():
        run = listed[run_id]
        assert run["info"]["status"] == "FINISHED", run["info"]
        assert sorted(json.loads(tags(run).get("astrocurate.input_run_ids", "[]"))) == sorted(
            inputs
        )
        statuses = p.proxy.updates(run_id)  # what the processes wrote (runs/update)
        assert statuses.count("FINISHED") == 1 and statuses[-1] == "FINISHED", statuses
    assert sorted(params(listed[r])["shard"] for r in p.cutouts) == ["0/2", "1/2"]
    names = sorted(listed[r]["info"]["run_name"] for r in listed)
    through_sampling = tracking.STEP_NAMES[1 : tracking.STEP_NAMES.index("curated_sampling") + 1]
    assert names == sorted(["cutting_out"] * 2 + [*through_sampling])
    assert not list(p.work.rglob("mlflow.db"))  # no process fell back to a local store


def test_artifacts_went_through_the_server(server_pipeline) -> None:
    p = server_pipeline
    for run_id in p.chain:
        info = api(p.url, "runs/get", query={"run_id": run_id})["run"]["info"]
        assert info["artifact_uri"].startswith("mlflow-artifacts:/"), info["artifact_uri"]
        listed = api(p.url, "artifacts/list", query={"run_id": run_id})
        assert {"metadata.json", "outputs.json"} <= {f["path"] for f in listed["files"]}
        stored = list(p.server_dir.glob(f"artifacts/*/{run_id}/artifacts/outputs.json"))
        assert len(stored) == 1, run_id  # uploaded over HTTP into the server's destination


def test_rank_zero_alone_wrote_the_clustering_run(server_pipeline) -> None:
    p = server_pipeline
    assert p.run_sh_stdout.split() == [p.clustering]  # rank 0 alone reaches the console
    logs = p.clustering_dir / "logs"
    assert "clustering in 2 processes (torch.distributed)" in (logs / "clustering.log").read_text()
    assert (logs / "clustering.rank1.log").is_file()

    run = api(p.url, "runs/get", query={"run_id": p.clustering})["run"]
    assert params(run)["nprocs_per_node"] == "[2, 2]"
    rank_0 = int(tags(run)["astrocurate.pid"])
    senders = [r.pid for r in p.proxy.requests if r.pid is not None]  # during run.sh
    assert len(senders) >= 5 and set(senders) == {rank_0}  # rank 1 never called the server
    assert tags(run)["astrocurate.progress"] == "finished"
    keys = {m["key"] for m in run["data"]["metrics"]}
    assert {"level_1/inertia", "level_2/inertia", "level_1/potential"} <= keys
    histories = {
        key: api(p.url, "metrics/get-history", query={"run_id": p.clustering, "metric_key": key})
        for key in sorted(keys)
    }
    for key, history in histories.items():
        steps = [m["step"] for m in history["metrics"]]
        assert len(steps) == len(set(steps)), f"{key} logged twice for a step: {history}"
    assert len(histories["level_1/inertia"]["metrics"]) == 1


def test_verify_passes_for_every_run_over_http(on_server) -> None:
    p = on_server
    for run_id in p.chain:
        report = verify_run(run_id, parents=False)
        assert not report.problems(), report.summary()
    out = _step(["-m", "astrocurate.cli", "verify", p.sampling], p.env, p.work)
    assert "OK" in out and "5 parent run(s) checked" in out, out


def test_lookups_read_the_server_never_a_local_sqlite_store(on_server, monkeypatch) -> None:
    p = on_server
    assert tracking.direct.local_store() is None

    def direct(*_args, **_kwargs):
        raise AssertionError("a lookup read a local sqlite store instead of the server")

    monkeypatch.setattr(tracking.direct, "read_run", direct)
    monkeypatch.setattr(tracking.direct, "search_runs", direct)
    assert {r.run_id for r in tracking.find_runs("cutting_out")} == set(p.cutouts)
    assert tracking.require_run(p.clustering, "clustering").output_dir == p.clustering_dir
    assert tracking.recorded_listing(p.sampling)  # outputs.json downloaded over HTTP

    shard = [_script("find_run.py"), "--run-name", "cutting_out", "--shard", "1/2"]
    assert _step(shard, p.env, p.work).split() == [p.cutouts[1]]
