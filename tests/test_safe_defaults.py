"""Safe by default: nothing a user was sent can run code, and nothing leaks.

- A static audit of the source (``src/``, ``scripts/``, ``benchmarks/``), read as Python
  syntax trees so that aliases (``import numpy as n``, ``from torch import load``) cannot
  hide a call: no unpickling loaders, no ``allow_pickle=True``, ``torch.load`` only with
  ``weights_only=True`` (one audited exception: the API's explicit ``allow_pickle``
  opt-in), YAML through the safe loader only, no ``shell=True``, no ``os.system``, no
  ``eval``/``exec``, and no server started by the tool.
- Behaviour: a weights file or a ``.npy`` holding a pickled object whose ``__reduce__``
  would create a marker file is refused with one line, and the marker never appears.
- Generated scripts (clustering ``run.sh`` and SLURM level scripts, one- and
  multi-process; the cutouts job array) in a directory named with a space, quotes,
  ``;``, ``$(...)`` and a backtick: bash parses them, runs them with every path intact,
  and nothing is executed from the name. The local ``run.sh`` runs end to end there.
- Secrets: values of secret-looking environment variables appear in no logged parameter,
  tag, metadata artifact or generated file; a tracking URI with credentials is redacted
  wherever it is written, and generated scripts never store it.
"""

from __future__ import annotations

import ast
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from astrocurate.algorithms.backbones import WeightsError
from astrocurate.errors import InvalidArgumentError
from astrocurate.io.cutout_store import read_manifest
from astrocurate.launch import SlurmOptions, tracking_environment
from astrocurate.stages.clustering.run import ClusteringConfig, prepare_clustering
from astrocurate.stages.cutting_out.run import CutoutOptions, make_cutouts, render_array_script
from astrocurate.stages.feature_extraction.run import FeatureOptions, extract_features
from astrocurate.stages.merge_cutouts.run import merge_cutouts
from astrocurate.synthetic.survey import make_survey
from astrocurate.tracking import client, get_run, redact_uri
from curation_pipeline import feature_run, features_from_manifest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"
ASTROCURATE = [sys.executable, "-m", "astrocurate.cli"]
CONFIGS = ROOT / "configs" / "clusters"

#: A directory name that breaks any script that does not quote it, and runs commands in
#: one that evaluates it (``touch PWNED``).
HOSTILE = "a b 'sq' \"dq\" ; $(touch PWNED) `touch PWNED` x"

#: Secret-looking environment values set while the steps run; none may be logged.
SECRETS = {
    "MLFLOW_TRACKING_PASSWORD": "pw-5f1c0a7e-mlflow",
    "MLFLOW_TRACKING_TOKEN": "tok-9b2e44d1-mlflow",
    "AWS_SECRET_ACCESS_KEY": "aws-77d3c0ffee-secret",
    "HF_TOKEN": "hf_a1b2c3d4e5f6secret",
    "GITHUB_TOKEN": "ghp_0123456789abcdefsecret",
}

SMALL = {
    "n_levels": 2,
    "n_clusters": [6, 2],
    "n_iters": [5, 5],
    "n_resampling_steps": [2, 1],
    "sample_size": [3, 2],
    "sampling_strategy": ["r", "r"],
    "checkpoint_period": 600,
    "ngpus_per_node": 0,
    "device": "cpu",
}


def pwned_files(*roots: Path) -> list[Path]:
    """Every file named PWNED under ``roots`` (the marker of an executed name)."""
    return [p for root in roots if root.exists() for p in root.rglob("PWNED*")]


# =========================================================================== static audit

AUDITED = [ROOT / "src" / "astrocurate", ROOT / "scripts", ROOT / "benchmarks"]

#: Calls that unpickle, evaluate or start a shell, whatever their arguments.
FORBIDDEN = {
    "pickle.load": "unpickles",
    "pickle.loads": "unpickles",
    "pickle.Unpickler": "unpickles",
    "_pickle.load": "unpickles",
    "_pickle.loads": "unpickles",
    "cPickle.load": "unpickles",
    "cPickle.loads": "unpickles",
    "dill.load": "unpickles",
    "dill.loads": "unpickles",
    "cloudpickle.load": "unpickles",
    "cloudpickle.loads": "unpickles",
    "joblib.load": "unpickles",
    "shelve.open": "unpickles",
    "marshal.load": "unmarshals",
    "marshal.loads": "unmarshals",
    "pandas.read_pickle": "unpickles",
    "yaml.unsafe_load": "runs YAML tags",
    "yaml.unsafe_load_all": "runs YAML tags",
    "yaml.full_load": "builds Python objects from YAML",
    "yaml.full_load_all": "builds Python objects from YAML",
    "os.system": "runs a shell",
    "os.popen": "runs a shell",
    "subprocess.getoutput": "runs a shell",
    "subprocess.getstatusoutput": "runs a shell",
    "eval": "evaluates code",
    "exec": "evaluates code",
}

#: Anything that would start a server (the tool never does; see test_the_tool_starts_no_server).
SERVER_PREFIXES = (
    "http.server",
    "socketserver",
    "wsgiref.simple_server",
    "uvicorn",
    "gunicorn",
    "flask",
    "fastapi",
    "mlflow.server",
    "mlflow.ui",
    "mlflow.cli",
    "waitress",
)
SERVER_METHODS = {"listen", "serve_forever", "run_server", "start_server"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}

#: The one audited ``torch.load(..., weights_only=False)``: the API's explicit opt-in
#: ``create_backbone(..., allow_pickle=True)``, never reachable from the command line.
TRUSTED_TORCH_LOAD = {
    ("src/astrocurate/algorithms/backbones/weights.py", "_load_trusted_checkpoint"),
}


class _Auditor(ast.NodeVisitor):
    """Resolve every call's dotted name through the module's imports and check it."""

    def __init__(self, relative: str) -> None:
        self.relative = relative
        self.aliases: dict[str, str] = {}
        self.functions: list[str] = []
        self.problems: list[str] = []
        self.seen: set[str] = set()

    # -- names
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:
                top = alias.name.split(".")[0]
                self.aliases[top] = top

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module is None or node.level:
            return
        for alias in node.names:
            self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def dotted(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self.dotted(node.value)
            return None if base is None else f"{base}.{node.attr}"
        return None

    # -- scopes
    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.functions.append(node.name)
        self.generic_visit(node)
        self.functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # noqa: N815

    # -- calls
    def problem(self, node: ast.AST, text: str) -> None:
        self.problems.append(f"{self.relative}:{node.lineno}: {text}")

    def visit_Call(self, node: ast.Call) -> None:
        name = self.dotted(node.func) or ""
        self.seen.add(name)
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if name in FORBIDDEN:
            self.problem(node, f"{name}() {FORBIDDEN[name]}")
        if name in ("torch.load", "torch.serialization.load"):
            self.check_torch_load(node, keywords)
        if name in ("numpy.load", "numpy.lib.npyio.load"):
            flag = keywords.get("allow_pickle")
            if len(node.args) > 2 or not (
                flag is None or (isinstance(flag, ast.Constant) and flag.value is False)
            ):
                self.problem(node, "numpy.load() must not allow pickles (allow_pickle=False)")
        if name in ("yaml.load", "yaml.load_all"):
            loader = keywords.get("Loader", node.args[1] if len(node.args) > 1 else None)
            loader_name = (self.dotted(loader) or "") if loader is not None else ""
            if loader_name.rsplit(".", 1)[-1] not in SAFE_YAML_LOADERS:
                self.problem(node, f"{name}() without a safe Loader (use yaml.safe_load)")
        shell = keywords.get("shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            self.problem(node, f"{name}(shell=...) runs a shell")
        if name.startswith(SERVER_PREFIXES) or (
            isinstance(node.func, ast.Attribute) and node.func.attr in SERVER_METHODS
        ):
            self.problem(node, f"{name}() starts a server")
        for arg in node.args:  # subprocess.run(["mlflow", "server", ...])
            if isinstance(arg, ast.List | ast.Tuple):
                words = [e.value for e in arg.elts if isinstance(e, ast.Constant)]
                if "mlflow" in words and ({"server", "ui"} & set(words)):
                    self.problem(node, "starts an MLflow server")
        self.generic_visit(node)

    def check_torch_load(self, node: ast.Call, keywords: dict[str, ast.expr]) -> None:
        flag = keywords.get("weights_only")
        if isinstance(flag, ast.Constant) and flag.value is True:
            return
        where = (self.relative, self.functions[-1] if self.functions else "")
        if where in TRUSTED_TORCH_LOAD:
            return
        self.problem(node, "torch.load() without weights_only=True")


def audit_source(path: Path, relative: str) -> _Auditor:
    auditor = _Auditor(relative)
    auditor.visit(ast.parse(path.read_text(), filename=str(path)))
    return auditor


def audited_files() -> list[Path]:
    return sorted(p for root in AUDITED for p in root.rglob("*.py"))


def test_static_audit_finds_no_unsafe_call() -> None:
    problems: list[str] = []
    seen: set[str] = set()
    files = audited_files()
    assert len(files) > 30  # the audit really reads the package, scripts and benchmarks
    for path in files:
        auditor = audit_source(path, str(path.relative_to(ROOT)))
        problems += auditor.problems
        seen |= auditor.seen
    assert not problems, "\n".join(problems)
    # The audit resolves the names the code really calls (it is not looking at nothing).
    assert {"numpy.load", "torch.load", "yaml.safe_load", "subprocess.run"} <= seen


@pytest.mark.parametrize(
    "source",
    [
        "import torch\ntorch.load(p)",
        "import torch\ntorch.load(p, weights_only=False)",
        "from torch import load as l\nl(p, map_location='cpu')",
        "import torch as t\nt.serialization.load(p, weights_only=flag)",
        "import numpy as n\nn.load(p, allow_pickle=True)",
        "from numpy import load\nload(p, 'r', True)",
        "import pickle\npickle.loads(b)",
        "from pickle import load\nload(f)",
        "import pandas as pd\npd.read_pickle(p)",
        "import yaml\nyaml.load(text)",
        "import yaml\nyaml.load(text, Loader=yaml.Loader)",
        "import yaml\nyaml.unsafe_load(text)",
        "import subprocess\nsubprocess.run(cmd, shell=True)",
        "import subprocess as sp\nsp.Popen(cmd, shell=flag)",
        "import os\nos.system('ls')",
        "eval(text)",
        "import subprocess\nsubprocess.Popen(['mlflow', 'server', '--port', '5000'])",
        "import http.server\nhttp.server.HTTPServer(('', 80), h)",
        "s.listen(5)",
    ],
    ids=lambda s: s.splitlines()[-1][:40],
)
def test_static_audit_catches(source: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.py"
    path.write_text(source + "\n")
    assert audit_source(path, "bad.py").problems, source


@pytest.mark.parametrize(
    "source",
    [
        "import torch\ntorch.load(p, map_location='cpu', weights_only=True)",
        "import numpy as np\nnp.load(p, mmap_mode='r')",
        "import numpy as np\nnp.load(p, allow_pickle=False)",
        "import yaml\nyaml.safe_load(text)",
        "import yaml\nyaml.load(text, Loader=yaml.CSafeLoader)",
        "import subprocess\nsubprocess.run(['ls'], shell=False, check=True)",
    ],
)
def test_static_audit_passes_safe_calls(source: str, tmp_path: Path) -> None:
    path = tmp_path / "good.py"
    path.write_text(source + "\n")
    assert audit_source(path, "good.py").problems == []


def test_the_tool_starts_no_server() -> None:
    """No module starts a server (checked by the audit); local multi-process k-means
    meets on loopback (``torchrun --standalone``, gloo pinned to the loopback device)."""
    text = (ROOT / "src" / "astrocurate" / "stages" / "clustering" / "scripts.py").read_text()
    assert '"--standalone"' in text
    for path in audited_files():
        for word in ("0.0.0.0", "INADDR_ANY"):
            assert word not in path.read_text(), f"{path} mentions {word}"


# =========================================================================== a small pipeline


@pytest.fixture(scope="module")
def secret_pipeline(
    tracking_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Cutouts, merge and real features of a tiny survey, run with secrets in the env.

    The output root has the hostile name. Returns the run IDs (and the paths used).
    """
    work = tmp_path_factory.mktemp("safe")
    outputs = work / HOSTILE / "outputs"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in SECRETS.items():
            patch.setenv(name, value)
        patch.setenv("MLFLOW_TRACKING_URI", tracking_db)
        patch.setenv("MLFLOW_EXPERIMENT_NAME", f"safe-{uuid.uuid4().hex[:12]}")
        patch.setenv("ASTROCURATE_DATA_DIR", str(outputs))
        patch.chdir(work)
        survey = make_survey(work / HOSTILE / "survey", n_mosaics=1, mosaic_size=192, seed=5)
        cut = make_cutouts(survey.output_dir, outputs, CutoutOptions(32), workers=1)
        merged = merge_cutouts([cut.run_id])
        features = extract_features(merged.run_id, FeatureOptions(), workers=0, device="cpu")
        yield {
            "work": str(work),
            "outputs": str(outputs),
            "survey": str(survey.output_dir),
            "cutouts": cut.run_id,
            "merged": merged.run_id,
            "features": features.run_id,
        }


@pytest.fixture
def hostile_store(store: Path, secret_pipeline, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The ``store`` fixture with the secrets set; returns the hostile output root."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return Path(secret_pipeline["outputs"])


# =========================================================================== pickles


class _Marker:
    """Unpickling this object creates the file ``path`` (what an attacker's payload does)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _evil_checkpoint(path: Path, marker: Path, kind: str) -> Path:
    import pickle

    import torch

    payload = _Marker(marker)
    if kind == "torch":
        torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": payload}, path)
    else:  # a bare pickle named like a checkpoint
        path.write_bytes(pickle.dumps({"state_dict": payload}))
    return path


@pytest.mark.parametrize(
    ("model", "filename", "kind"),
    [
        ("timm:resnet18", "model.pt", "torch"),
        ("timm:resnet18", "weights.bin", "pickle"),
        ("ssl:resnet18", "last.ckpt", "torch"),
        ("ssl:resnet18", "trainer.pth", "pickle"),
    ],
)
def test_a_pickled_checkpoint_is_refused_without_running_it(
    tmp_path: Path, model: str, filename: str, kind: str
) -> None:
    from astrocurate.algorithms.backbones.registry import create_backbone

    marker = tmp_path / "PWNED-by-weights"
    weights = _evil_checkpoint(tmp_path / filename, marker, kind)
    with pytest.raises(WeightsError) as info:
        create_backbone(model, weights=weights)
    message = str(info.value)
    assert "\n" not in message and filename in message
    assert "does not unpickle" in message
    assert not marker.exists()


def test_features_step_refuses_a_pickled_checkpoint(
    store: Path, secret_pipeline, tmp_path: Path
) -> None:
    marker = tmp_path / "PWNED-by-features"
    weights = _evil_checkpoint(tmp_path / "evil.pt", marker, "torch")
    result = subprocess.run(
        [
            *ASTROCURATE,
            "features",
            "--merged-cutouts-id",
            secret_pipeline["merged"],
            "--model",
            "timm:resnet18",
            "--weights",
            str(weights),
            "--workers",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    assert "evil.pt" in errors[0] and "does not unpickle" in errors[0]
    assert not marker.exists()


def test_an_object_npy_is_refused_without_unpickling(
    hostile_store: Path, secret_pipeline, tmp_path: Path
) -> None:
    marker = tmp_path / "PWNED-by-npy"
    subset = tmp_path / "subset.npy"
    np.save(subset, np.array([_Marker(marker), 1], dtype=object), allow_pickle=True)
    config = ClusteringConfig.from_mapping({**SMALL, "subset_indices_path": str(subset)})
    with pytest.raises(InvalidArgumentError) as info:
        prepare_clustering(secret_pipeline["features"], config, output_path=tmp_path / "out")
    assert "subset_indices_path" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_an_object_feature_matrix_is_refused_without_unpickling(
    hostile_store: Path, secret_pipeline, tmp_path: Path
) -> None:
    manifest = read_manifest(get_run(secret_pipeline["merged"]).output_dir)
    marker = tmp_path / "PWNED-by-features-npy"
    X = features_from_manifest(manifest).astype(object)  # noqa: N806
    X[0, 0] = _Marker(marker)
    evil = feature_run(secret_pipeline["merged"], X)  # np.save pickles the object array
    with pytest.raises(ValueError, match=r"allow_pickle|Python objects|memory-mapped"):
        prepare_clustering(evil.run_id, ClusteringConfig.from_mapping(SMALL))
    assert not marker.exists()


# =========================================================================== generated scripts


def _exec_arguments(script: Path, env: dict[str, str], *args: str) -> list[list[str]]:
    """Run ``script`` in bash with every ``exec CMD`` printing CMD's words instead.

    Bash itself does the quoting and expansion, so this shows exactly what the real
    script would run, without running it.
    """
    text = script.read_text().replace("\nexec ", "\nprintf '%s\\0' EXEC ")
    stub = script.with_name(f".{script.name}.printed")
    stub.write_text(text)
    result = subprocess.run(
        ["bash", str(stub), *args], capture_output=True, env=env, cwd=script.parent, timeout=60
    )
    stub.unlink()
    assert result.returncode == 0, result.stderr.decode()
    words = result.stdout.decode().split("\0")
    commands, current = [], None
    for word in words:
        if word == "EXEC":
            current = []
            commands.append(current)
        elif current is not None and word:
            current.append(word)
    return commands


def _bash_n(path: Path) -> None:
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, f"{path.name}: {result.stderr}"


def _sbatch_value(line: str) -> str:
    """Parse an ``#SBATCH --opt=VALUE`` line's value the way sbatch does (quotes, \\)."""
    text = line.split("=", 1)[1]
    out, quote, escape = [], "", False
    for char in text:
        if escape:
            out.append(char)
            escape = False
        elif char == "\\":
            escape = True
        elif quote:
            if char == quote:
                quote = ""
            else:
                out.append(char)
        elif char in "\"'":
            quote = char
        elif char.isspace() or char == "#":
            break
        else:
            out.append(char)
    return "".join(out)


def test_local_run_sh_runs_end_to_end_in_a_hostile_directory(
    hostile_store: Path, secret_pipeline
) -> None:
    prepared = prepare_clustering(
        secret_pipeline["features"], ClusteringConfig.from_mapping(SMALL), force=True
    )
    assert HOSTILE in str(prepared.directory)
    run_sh = prepared.directory / "run.sh"
    _bash_n(run_sh)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # run.sh sets it
    [command] = _exec_arguments(run_sh, env)
    assert command[-1] == str(prepared.directory)
    result = subprocess.run(
        ["./run.sh"], cwd=prepared.directory, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    record = get_run(prepared.run_id)
    assert record.finished and record.output_dir == prepared.directory
    assert (prepared.directory / "level_2" / "point_labels.npy").is_file()
    work = Path(secret_pipeline["work"])
    assert pwned_files(work, ROOT, Path.cwd()) == []
    _assert_no_secret_in_run(prepared.run_id)


def test_multiprocess_run_sh_quotes_every_path(hostile_store: Path, secret_pipeline) -> None:
    config = ClusteringConfig.from_mapping({**SMALL, "nprocs_per_node": 2})
    prepared = prepare_clustering(secret_pipeline["features"], config, force=True)
    run_sh = prepared.directory / "run.sh"
    _bash_n(run_sh)
    [command] = _exec_arguments(run_sh, dict(os.environ))
    assert Path(command[0]).name == "torchrun" and "--standalone" in command
    assert command[command.index("clustering-run") + 1] == str(prepared.directory)
    text = run_sh.read_text()
    if any(name.startswith("lo") for _, name in socket.if_nameindex()):
        assert "GLOO_SOCKET_IFNAME" in text  # the ranks listen on loopback only
    assert pwned_files(Path(secret_pipeline["work"]), ROOT) == []


@pytest.mark.parametrize("nprocs", [1, 2], ids=["one-process", "multi-process"])
def test_slurm_scripts_quote_every_path(
    hostile_store: Path, secret_pipeline, tmp_path: Path, nprocs: int
) -> None:
    config = ClusteringConfig.from_mapping({**SMALL, "nprocs_per_node": nprocs})
    slurm = SlurmOptions(account="astro", partition="cpu", time="00:10:00", qos="normal")
    prepared = prepare_clustering(secret_pipeline["features"], config, slurm=slurm, force=True)
    directory = prepared.directory
    scripts = [directory / "run.sh", *sorted((directory / "slurm").glob("*.sbatch"))]
    assert len(scripts) == 3
    for script in scripts:
        _bash_n(script)
    for level in (1, 2):
        sbatch = directory / "slurm" / f"level_{level}.sbatch"
        [command] = _exec_arguments(sbatch, dict(os.environ))
        assert command[command.index("clustering-run") + 1] == str(directory)
        assert command[-2:] == ["--level", str(level)]
        assert (command[0] == "srun") == (nprocs > 1)
    # run.sh submits from the experiment directory, with a fake sbatch that logs $PWD
    log = tmp_path / "sbatch.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        f'#!/usr/bin/env bash\nprintf "%s|%s\\n" "$PWD" "$*" >> {shlex.quote(str(log))}\n'
        "echo 4242\n"
    )
    (bin_dir / "sbatch").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["./run.sh", "--no-wait"], cwd=directory, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    submitted = log.read_text().splitlines()
    assert [line.split("|")[0] for line in submitted] == [str(directory)] * 2
    assert pwned_files(Path(secret_pipeline["work"]), ROOT, tmp_path) == []


def test_cutouts_job_array_script_quotes_every_path(
    store: Path, secret_pipeline, tmp_path: Path
) -> None:
    outputs = tmp_path / HOSTILE
    result = subprocess.run(
        [
            *ASTROCURATE,
            "cutouts",
            "--mosaics_path",
            secret_pipeline["survey"],
            "--output_path",
            str(outputs),
            "--window_size",
            "32",
            "--slurm-array",
            "2",
            "--slurm_account",
            "astro",
            "--slurm_partition",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    script = Path(result.stdout.strip().splitlines()[-1])
    assert script.is_file() and script.parent == outputs
    _bash_n(script)
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1", "SLURM_CPUS_PER_TASK": "3"}
    [command] = _exec_arguments(script, env)
    assert command[command.index("--mosaics_path") + 1] == secret_pipeline["survey"]
    assert command[command.index("--output_path") + 1] == str(outputs)
    assert command[-4:] == ["--shard", "1/2", "--workers", "3"]
    [output] = [line for line in script.read_text().splitlines() if "#SBATCH --output" in line]
    assert _sbatch_value(output) == f"{outputs}/logs/cutouts-w32-%A_%a.out"
    assert pwned_files(tmp_path, Path(secret_pipeline["work"]), ROOT) == []


def test_sbatch_output_pattern_escapes_percent_and_refuses_backslash(tmp_path: Path) -> None:
    slurm = SlurmOptions()
    text = render_array_script(["cutouts"], 2, 32, tmp_path / "50%x" / "logs", slurm)
    [output] = [line for line in text.splitlines() if "#SBATCH --output" in line]
    assert _sbatch_value(output) == f"{tmp_path}/50%%x/logs/cutouts-w32-%A_%a.out"
    with pytest.raises(InvalidArgumentError, match="newline or backslash"):
        render_array_script(["cutouts"], 2, 32, tmp_path / "a\\b", slurm)


BAD_NAMES = ["a b", "x;touch PWNED", "$(touch PWNED)", "`touch PWNED`", "p'q", 'p"q', "gpu\n"]


@pytest.mark.parametrize("value", BAD_NAMES, ids=range(len(BAD_NAMES)))
@pytest.mark.parametrize("flag", ["account", "partition", "qos", "time"])
def test_hostile_slurm_flag_values_are_refused(flag: str, value: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        SlurmOptions(**{flag: value}).validate()
    assert f"--slurm_{flag}=" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("value", BAD_NAMES, ids=range(len(BAD_NAMES)))
def test_hostile_slurm_partition_in_a_config_is_refused(value: str) -> None:
    with pytest.raises(InvalidArgumentError, match="slurm_partition"):
        ClusteringConfig.from_mapping({**SMALL, "slurm_partition": value})


def test_hostile_slurm_flag_through_the_command_line(store: Path, secret_pipeline) -> None:
    result = subprocess.run(
        [
            *ASTROCURATE,
            "clustering-prepare",
            "--features-id",
            secret_pipeline["features"],
            "--config_file",
            str(CONFIGS / "demo_2lvl_64_8.yaml"),
            "--slurm_account",
            "astro; touch PWNED",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--slurm_account" in lines[0], result.stderr
    assert pwned_files(store, ROOT) == []


# =========================================================================== secrets


def _assert_no_secret_in_run(run_id: str) -> None:
    """No secret value in the run's params, tags or metadata.json."""
    run = client().get_run(run_id)
    texts = [*run.data.params.values(), *run.data.tags.values()]
    texts += list(run.data.params) + list(run.data.tags)
    if run.info.status == "FINISHED":
        with tempfile.TemporaryDirectory() as folder:
            path = client().download_artifacts(run_id, "metadata.json", folder)
            texts.append(Path(path).read_text())
    for secret in SECRETS.values():
        leaked = [t for t in texts if secret in t]
        assert not leaked, f"run {run_id} logged a secret: {leaked}"


def test_no_secret_from_the_environment_is_logged(secret_pipeline) -> None:
    for step in ("cutouts", "merged", "features"):
        _assert_no_secret_in_run(secret_pipeline[step])
    for path in Path(secret_pipeline["outputs"]).rglob("*"):
        if path.is_file() and path.suffix in (".json", ".sh", ".sbatch", ".yaml", ".log"):
            text = path.read_text(errors="replace")
            assert not any(s in text for s in SECRETS.values()), path


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (
            "postgresql://alice:S3cr3t@db.example.org/mlflow",
            "postgresql://alice:***@db.example.org/mlflow",
        ),
        ("https://S3cr3t@mlflow.example.org", "https://***@mlflow.example.org"),
        (
            "mysql://u:p@ss:S3cr3t@h/db?sslmode=x&password=S3cr3t",
            "mysql://u:***@h/db?sslmode=x&password=***",
        ),
        (
            "http://mlflow.example.org:5000/?token=S3cr3t",
            "http://mlflow.example.org:5000/?token=***",
        ),
        ("http://mlflow.example.org:5000", "http://mlflow.example.org:5000"),
        ("sqlite:////data/mlflow.db", "sqlite:////data/mlflow.db"),
    ],
)
def test_redact_uri(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown
    assert "S3cr3t" not in redact_uri(uri)


CREDENTIAL_URI = "postgresql://alice:S3cr3t-pw@db.example.org:5432/mlflow"


def test_tracking_environment_never_writes_credentials() -> None:
    lines = tracking_environment(CREDENTIAL_URI, "exp", "run.sh")
    text = "\n".join(lines)
    assert "S3cr3t" not in text and "alice:***@db.example.org" in text
    assert "export MLFLOW_TRACKING_URI" not in text
    plain = tracking_environment("http://mlflow.example.org:5000", "exp", "run.sh")
    assert plain[0] == "export MLFLOW_TRACKING_URI=http://mlflow.example.org:5000"


def test_scripts_of_a_store_with_credentials_do_not_store_them(
    hostile_store: Path, secret_pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from astrocurate.tracking import PreparedRun, experiment_name
    from astrocurate.tracking.store import StoreAddress

    def store() -> StoreAddress:  # what the scripts are given, not the client's store
        return StoreAddress(CREDENTIAL_URI, experiment_name())

    monkeypatch.setattr(PreparedRun, "store", staticmethod(store))
    for slurm in (None, SlurmOptions(partition="cpu")):
        prepared = prepare_clustering(
            secret_pipeline["features"],
            ClusteringConfig.from_mapping(SMALL),
            slurm=slurm,
            force=True,
        )
        files = [p for p in prepared.directory.rglob("*") if p.is_file() and p.suffix != ".npy"]
        for path in files:
            assert "S3cr3t" not in path.read_text(errors="replace"), path
        info = json.loads((prepared.directory / "run.json").read_text())
        assert info["tracking_uri"] == redact_uri(CREDENTIAL_URI)
        _bash_n(prepared.directory / "run.sh")
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        result = subprocess.run(
            ["./run.sh"], cwd=prepared.directory, env=env, capture_output=True, text=True
        )
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1 and "set MLFLOW_TRACKING_URI" in result.stderr
        assert "alice:***@db.example.org" in result.stderr


def _rendered_scripts(tmp_path: Path) -> dict[str, str]:
    """Every kind of script astrocurate writes, rendered for this process's tracking store.

    Keys are ``module:function`` of the functions that describe a script for the one
    renderer, :func:`astrocurate.launch.render_script`; :func:`_script_renderers` lists
    them from the source, so a new one left out here fails the test below.
    """
    from astrocurate.launch import absolute_tracking_uri
    from astrocurate.stages.clustering import scripts as clustering_scripts
    from astrocurate.stages.clustering.config import ClusteringConfig as Config
    from astrocurate.stages.cutting_out import run as cutouts
    from astrocurate.stages.feature_extraction import job_array
    from astrocurate.tracking import experiment_name, tracking_uri

    launch = clustering_scripts._Launch(
        tmp_path, "0" * 32, sys.executable, "/src", absolute_tracking_uri(tracking_uri()),
        experiment_name(),
    )  # fmt: skip
    slurm = SlurmOptions(account="a", partition="p", time="01:00:00")
    one, two = Config.from_mapping(SMALL), Config.from_mapping({**SMALL, "nprocs_per_node": 2})
    gpus = SlurmOptions(account="a", partition="p", time="01:00:00", gres="gpu:1")
    features = job_array.ArrayScript(["features"], 2, tmp_path / "logs", gpus)
    return {
        "stages.clustering.scripts:_render_run_script": "\n".join(
            clustering_scripts._render_run_script(launch, config, options)
            for config in (one, two)
            for options in (None, slurm)
        ),
        "stages.clustering.scripts:_render_sbatch": "\n".join(
            clustering_scripts._render_sbatch(launch, config, slurm, 1) for config in (one, two)
        ),
        "stages.cutting_out.run:render_array_script": cutouts.render_array_script(
            ["cutouts"], 2, 32, tmp_path / "logs", slurm
        ),
        "stages.feature_extraction.job_array:render_array_script": job_array.render_array_script(
            features
        ),
    }


def _script_renderers() -> set[str]:
    """``module:function`` of every function in the package that calls ``render_script``.

    Only :func:`astrocurate.launch.sbatch.render_script` itself writes a ``#!`` line.
    """
    import astrocurate

    def calls_renderer(node: ast.AST) -> bool:
        target = node.func if isinstance(node, ast.Call) else None
        name = getattr(target, "attr", None) or getattr(target, "id", None)
        return name == "render_script"

    package = Path(astrocurate.__file__).parent
    callers, shebangs = set(), set()
    for path in package.rglob("*.py"):
        module = ".".join(path.relative_to(package).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            inside = list(ast.walk(node))
            if any(isinstance(c, ast.Constant) and "#!/" in str(c.value) for c in inside):
                shebangs.add(f"{module}:{node.name}")
            if any(calls_renderer(c) for c in inside):
                callers.add(f"{module}:{node.name}")
    assert shebangs == {"launch.sbatch:render_script"}
    return callers


def test_every_generated_script_keeps_credentials_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run.sh, clustering jobs, cutouts and features arrays, the finishing job: one path."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", CREDENTIAL_URI)
    scripts = _rendered_scripts(tmp_path)
    assert set(scripts) == _script_renderers()
    for name, text in scripts.items():
        assert "S3cr3t" not in text, name
        assert "export MLFLOW_TRACKING_URI" not in text, name
        assert 'if [[ -z "${MLFLOW_TRACKING_URI:-}" ]]; then' in text, name
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example.org:5000")
    for name, text in _rendered_scripts(tmp_path).items():
        assert "export MLFLOW_TRACKING_URI=http://mlflow.example.org:5000" in text, name


def test_only_the_launch_module_writes_a_tracking_uri_into_a_script() -> None:
    import astrocurate

    package = Path(astrocurate.__file__).parent
    writers = [
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if "export MLFLOW_TRACKING_URI=" in path.read_text()
    ]
    assert writers == ["launch/environment.py"]
