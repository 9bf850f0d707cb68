"""Step 3 on a small synthetic survey: outputs, invariance, resume, weights and bad input."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from astrocurate.cli import main
from astrocurate.stages.cutting_out.run import CutoutOptions, make_cutouts
from astrocurate.stages.feature_extraction.run import (
    DEFAULT_MODEL,
    FEATURES,
    SIDECAR,
    FeatureOptions,
    extract_features,
    load_features,
    plan_extraction,
)
from astrocurate.stages.merge_cutouts.run import merge_cutouts
from astrocurate.synthetic.survey import make_survey
from astrocurate.tracking import get_run, tracked_step
from script_imports import heavy_loaded, run_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory, tracking_db: str):
    """A merge run over 64-px cutouts of a 2-mosaic survey, in its own experiment."""
    work = tmp_path_factory.mktemp("features")
    experiment = f"features-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking_db)
        patch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
        patch.chdir(work)
        survey = make_survey(work / "survey", n_mosaics=2, mosaic_size=256, seed=5)
        cut = make_cutouts(survey.output_dir, work / "out", CutoutOptions(64), workers=1)
        run = merge_cutouts([cut.run_id])
    return work, run, experiment


@pytest.fixture
def env(merged, monkeypatch: pytest.MonkeyPatch, tracking_db: str):
    """Re-enter the module's experiment and directory for one test."""
    work, run, experiment = merged
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_db)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    monkeypatch.chdir(work)
    return work, run


def _bytes(run) -> bytes:
    return (run.output_dir / FEATURES).read_bytes()


def test_default_backbone_writes_matrix_and_sidecar(env) -> None:
    _, merged_run = env
    run = extract_features(merged_run.run_id, batch_size=16, workers=0)
    record = get_run(run.run_id)
    assert record.finished and record.input_run_ids == [merged_run.run_id]
    features = load_features(run.output_dir)
    n_rows = int(record.params["n_rows"])
    sidecar = json.loads((run.output_dir / SIDECAR).read_text())
    assert features.shape == (n_rows, sidecar["dim"]) and features.dtype == np.float32
    assert np.isfinite(features).all()
    assert sidecar["model"] == DEFAULT_MODEL and sidecar["weights_sha256"] is None
    assert record.params["norm_method"] == "asinh"
    assert not (run.output_dir / "progress").exists()
    assert "knn_balanced_accuracy" in tracking_metrics(run.run_id)


def tracking_metrics(run_id: str) -> dict[str, float]:
    from astrocurate.tracking import client

    return client().get_run(run_id).data.metrics


def test_workers_never_change_the_features_and_the_batch_size_only_at_rounding(env) -> None:
    _, merged_run = env
    small = FeatureOptions(resize=32)  # a quarter of the pixels: the test stays quick
    first = extract_features(merged_run.run_id, small, batch_size=5, workers=0, force=True)
    second = extract_features(merged_run.run_id, small, batch_size=5, workers=2, force=True)
    third = extract_features(merged_run.run_id, small, batch_size=64, workers=0, force=True)
    assert len({first.run_id, second.run_id, third.run_id}) == 3
    assert _bytes(first) == _bytes(second)
    a, c = (load_features(run.output_dir) for run in (first, third))
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)


def test_float16_output(env) -> None:
    _, merged_run = env
    run = extract_features(
        merged_run.run_id, FeatureOptions(output_dtype="float16"), batch_size=32, workers=0
    )
    assert load_features(run.output_dir).dtype == np.float16


def test_timm_weights_file_is_loaded_and_hashed(env, tmp_path) -> None:
    timm = pytest.importorskip("timm")
    _, merged_run = env
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    weights = tmp_path / "resnet18.pt"
    torch.save(model.state_dict(), weights)
    options = FeatureOptions(model="timm:resnet18", weights=str(weights), resize=64)
    run = extract_features(merged_run.run_id, options, batch_size=32, workers=0)
    sidecar = json.loads((run.output_dir / SIDECAR).read_text())
    assert sidecar["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert load_features(run.output_dir).shape[1] == 512


@pytest.mark.full  # tests/faults kills this step at seeded points too
def test_kill_and_resume_is_bitwise_identical(env, tmp_path) -> None:
    _, merged_run = env
    script = str(ROOT / "scripts" / "feature_extraction.py")
    common = [
        "--merged-cutouts-id",
        merged_run.run_id,
        "--shard-rows",
        "8",
        "--resize",
        "32",
        "--workers",
        "0",
        "--batch-size",
        "4",
    ]
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    proc = subprocess.Popen(
        [sys.executable, script, *common, "--output_path", str(out_a)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ),
    )
    deadline = time.monotonic() + 120
    while not list(out_a.glob("feature_extraction/*/progress/*.done")):
        assert proc.poll() is None, "finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(
        [sys.executable, script, *common, "--output_path", str(out_a)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    clean = subprocess.run(
        [sys.executable, script, *common, "--output_path", str(out_b), "--force"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )
    assert clean.returncode == 0, clean.stderr
    run_a, run_b = resumed.stdout.split()[-1], clean.stdout.split()[-1]
    assert run_a != run_b and get_run(run_a).finished
    a = next(out_a.glob(f"feature_extraction/{run_a}/{FEATURES}")).read_bytes()
    b = next(out_b.glob(f"feature_extraction/{run_b}/{FEATURES}")).read_bytes()
    assert a == b


#: The parameters a feature run was keyed on before its plan became torch-free (09f84e3's
#: ``_run_params``): changing them would stop finished runs from being found.
KEY_PARAMS_OF_09F84E3 = {
    "model", "weights", "arch", "pooling", "channels", "resize", "precision", "output_dtype",
    "shard_rows", "norm_method", "norm_low_percentile", "norm_high_percentile",
    "norm_asinh_softening", "norm_sigma", "norm_sigma_iters", "norm_mean", "norm_std",
    "input_size", "model_input_size", "in_chans", "model_mean", "model_std", "layer",
    "feature_dim", "weights_sha256", "n_rows",
}  # fmt: skip


def test_the_run_key_holds_the_parameters_it_always_held(env) -> None:
    from astrocurate.stages.feature_extraction.plan import VOLATILE_PARAMS

    _, merged_run = env
    plan = plan_extraction(merged_run.run_id)
    assert set(plan.key_params) - set(VOLATILE_PARAMS) == KEY_PARAMS_OF_09F84E3
    resolved = {"workers", "device", "device_type", "computed_precision"}
    assert set(plan.params) - set(plan.key_params) == resolved


@pytest.mark.parametrize(("model", "expected"), [("default", "fp32"), ("timm:resnet18", "bf16")])
def test_the_scattering_backbones_are_recorded_computing_in_fp32_whatever_is_asked(
    env, monkeypatch, tmp_path: Path, model: str, expected: str
) -> None:
    """Their FFTs do not autocast: bf16 and fp32 scattering rows may share a matrix."""
    import timm
    from safetensors.torch import save_file

    from astrocurate.algorithms import precision
    from astrocurate.stages.feature_extraction.plan import DEFAULT_MODEL, RESUME_PARAMS

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    _, merged_run = env
    name, weights = DEFAULT_MODEL, None
    if model != "default":
        name, weights = model, str(tmp_path / "resnet18.safetensors")
        module = timm.create_model("resnet18", pretrained=False, num_classes=0)
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, weights)
    options = FeatureOptions(model=name, weights=weights, precision="bf16", resize=32)
    plan = plan_extraction(merged_run.run_id, options, device="cpu")
    assert plan.device_params()["computed_precision"] == expected
    # runs started before it was recorded: bf16 on CUDA, except the scattering backbones
    older = {"device_type": "cuda", "precision": "bf16", "model": name}
    assert RESUME_PARAMS["computed_precision"].implied(older) == expected


def test_rerun_of_a_finished_run_imports_no_torch(env) -> None:
    """The script reuses the run computed in-process, without torch, pandas or MLflow."""
    _, merged_run = env
    first = extract_features(merged_run.run_id, batch_size=16, workers=0)
    assert get_run(first.run_id).params["device_type"] == "cpu"  # logged once resolved
    done = run_script(
        "feature_extraction.py",
        ["--merged-cutouts-id", merged_run.run_id],
        ("torch", "pandas", "mlflow", "kymatio", "timm"),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == first.run_id
    assert heavy_loaded(done) == "[]"


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--model", "nonsense"], "nonsense"),
        (["--normalization", "log"], "unknown method 'log'"),
        (
            ["--device", "cuda"] if not torch.cuda.is_available() else ["--batch-size", "0"],
            "CUDA" if not torch.cuda.is_available() else "--batch-size",
        ),
    ],
    ids=["unknown-model", "unknown-normalization", "bad-device"],
)
def test_bad_options(env, capsys, extra, fragment) -> None:
    _, merged_run = env
    status = main(["features", "--merged-cutouts-id", merged_run.run_id, *extra])
    err = capsys.readouterr().err
    assert status == 1 and fragment in err and err.count("\n") == 1


def test_refuses_unfinished_or_wrong_runs(env, capsys) -> None:
    _, merged_run = env
    with pytest.raises(RuntimeError), tracked_step("merge_cutouts", {"x": 1}) as broken:
        raise RuntimeError("simulated crash")
    cases = [
        (broken.run_id, "FAILED, not FINISHED"),
        ("0" * 32, "no run"),
        (get_run(merged_run.run_id).input_run_ids[0], "expected a 'merge_cutouts' run"),
    ]
    for run_id, fragment in cases:
        assert main(["features", "--merged-cutouts-id", run_id]) == 1
        assert fragment in capsys.readouterr().err


def test_wrong_architecture_weights(env, capsys, tmp_path) -> None:
    timm = pytest.importorskip("timm")
    _, merged_run = env
    weights = tmp_path / "resnet50.pt"
    torch.save(timm.create_model("resnet50", pretrained=False, num_classes=0).state_dict(), weights)
    status = main(
        [
            "features",
            "--merged-cutouts-id",
            merged_run.run_id,
            "--model",
            "timm:resnet18",
            "--weights",
            str(weights),
        ]
    )
    err = capsys.readouterr().err
    assert status == 1 and str(weights) in err


@pytest.mark.parametrize("memory", ["host", "gpu", "other error"])
def test_running_out_of_memory_ends_in_one_line(env, monkeypatch, capsys, memory) -> None:
    from astrocurate.stages.feature_extraction import run as feature_run

    _, merged_run = env
    error = {
        "host": MemoryError(),
        "gpu": torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has 79.1 GiB in all.\nMore"
        ),
        "other error": RuntimeError("not about memory"),
    }[memory]

    def fails(*args, **kwargs):
        raise error

    monkeypatch.setattr(feature_run, "extract_features", fails)
    if memory == "other error":  # a bug keeps its traceback
        with pytest.raises(RuntimeError, match="not about memory"):
            main(["features", "--merged-cutouts-id", merged_run.run_id])
        return
    assert main(["features", "--merged-cutouts-id", merged_run.run_id]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    which = "GPU memory (CUDA out of memory. Tried" if memory == "gpu" else "memory (MemoryError)"
    assert len(lines) == 1 and lines[0].startswith(f"astrocurate features: error: out of {which}")
    assert "rerun the same command to resume, with a smaller --batch-size" in lines[0]
