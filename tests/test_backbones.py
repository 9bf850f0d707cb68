"""Backbone registry and factory: every backbone builds, loads local weights and runs on CPU.

Weights are created here (random init saved to a file, or a fake Hugging Face cache) and
loaded through the same path as a user's download. The network is switched off.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from astrocurate.algorithms.backbones import (
    Backbone,
    ScatteringSpec,
    WeightsError,
    create_backbone,
    list_backbones,
    parse_scattering_name,
)
from astrocurate.errors import AstrocurateError, InvalidArgumentError

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

ATOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared CI machine run faster without intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty model caches, offline Hugging Face, and any socket connection an error."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def refuse(*args, **kwargs):
        raise AssertionError("a backbone tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return cache


def run(backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return backbone.module(x)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def reference(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(1)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def images(n: int, chans: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, chans, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------ registry


def test_list_backbones_names_and_descriptions():
    names = list_backbones(descriptions=False)
    assert names[0] == "scattering"
    assert {"scattering", "scattering-<options>", "timm:<model>", "ssl:<arch>"} <= set(names)
    assert any(n.startswith("hf:") for n in names)
    lines = list_backbones()
    assert len(lines) == len(names)
    for name, line in zip(names, lines, strict=True):
        assert line.startswith(name) and len(line.split()) > 2 and "\n" not in line


@pytest.mark.parametrize("name", ["foo", "scatering", "tim:resnet18", "resnet18"], ids=str)
def test_unknown_name_lists_the_known_ones(name):
    with pytest.raises(InvalidArgumentError, match="unknown backbone") as info:
        create_backbone(name)
    message = str(info.value)
    assert "scattering" in message and "timm:<model>" in message and "ssl:<arch>" in message
    if name == "scatering":
        assert "did you mean 'scattering'" in message


def test_unknown_timm_model_suggests_close_names():
    with pytest.raises(InvalidArgumentError, match=r"not a timm model.*resnet18"):
        create_backbone("timm:resnet181", pretrained=False)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("scattering", {"channels": "rgb"}, "channels='rgb'.*repeat, fold"),
        ("scattering", {"input_size": 4}, "input_size=4"),
        ("scattering", {"input_size": 60}, "multiple of 2\\*\\*J=8"),
        ("scattering", {"pooling": "cls"}, "pooling='cls'.*valid: mean"),
        ("scattering", {"arch": "resnet18"}, "arch=resnet18 does not apply"),
        ("timm:resnet18", {"arch": "resnet50"}, "arch=resnet50 does not apply"),
        ("timm:resnet18", {"pooling": "cls", "pretrained": False}, "valid: avg, max"),
        ("timm:", {}, "needs a model name"),
        ("ssl", {}, "need an architecture"),
        ("ssl:resnet18", {}, "needs weights=CHECKPOINT"),
        ("ssl:resnet18", {"arch": "resnet50"}, "contradicts"),
    ],
    ids=[
        "bad-channels",
        "tiny-input",
        "input-not-multiple",
        "scattering-pooling",
        "scattering-arch",
        "timm-arch",
        "cnn-cls-pooling",
        "timm-no-model",
        "ssl-no-arch",
        "ssl-no-weights",
        "ssl-arch-conflict",
    ],
)
def test_bad_options_are_clear_errors(name, kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        create_backbone(name, **kwargs)


def test_weights_file_must_exist(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        create_backbone("timm:resnet18", weights=tmp_path / "nope.pt")


def test_errors_are_astrocurate_and_value_errors():
    assert issubclass(WeightsError, AstrocurateError) and issubclass(WeightsError, ValueError)


# ---------------------------------------------------------------------- scattering


@pytest.fixture(scope="module")
def scattering() -> Backbone:
    return create_backbone("scattering")


def gaussian(size: int, centres: list[tuple[float, float]], sigma: float = 1.5) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    image = torch.zeros(size, size)
    for cy, cx in centres:
        image += torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return image


SCATTERING_NAMES = [n for n in list_backbones(descriptions=False) if n.startswith("scattering-")]


@pytest.mark.parametrize("name", ["scattering", *SCATTERING_NAMES[:-1]], ids=str)
def test_scattering_variants_build_and_run(name):
    backbone = create_backbone(name)
    pre = backbone.preprocessing
    assert (pre.input_size, pre.in_chans, pre.mean, pre.std) == (64, 1, (0.0,), (1.0,))
    assert backbone.weights_sha256 is None and backbone.layer.startswith("scattering")
    out = run(backbone, images(3, 1, 64))
    assert out.shape == (3, backbone.dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not backbone.module.training


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("scattering", ScatteringSpec()),
        ("scattering-j4", ScatteringSpec(J=4)),
        ("scattering-l4-rot", ScatteringSpec(L=4, rotation_invariant=True)),
        (
            "scattering-j4-rot-renorm-max-spatial",
            ScatteringSpec(
                J=4, rotation_invariant=True, renormalise=True, max_pool=True, spatial=True
            ),
        ),
    ],
    ids=["default", "j4", "l4-rot", "everything"],
)
def test_scattering_names(name, expected):
    assert parse_scattering_name(name) == expected


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("scattering-foo", "unknown scattering option 'foo'.*jN.*renorm"),
        ("scattering-j9", "J in \\[1, 6\\]"),
        ("scattering-rot-rot", "given twice"),
    ],
    ids=["unknown-option", "too-many-scales", "repeated"],
)
def test_scattering_bad_names(name, match):
    with pytest.raises(InvalidArgumentError, match=match):
        create_backbone(name)


def test_scattering_dimensions():
    # J=3, L=8: 1 + J*L + L*L*J*(J-1)/2 = 217 paths; rotation groups: 1 + J + L*J*(J-1)/2
    dims = {n: create_backbone(n).dim for n in ("scattering", "scattering-rot")}
    assert dims == {"scattering": 217, "scattering-rot": 1 + 3 + 8 * 3}


def test_scattering_separates_point_and_double(scattering):
    point = gaussian(64, [(32, 32)])
    double = gaussian(64, [(32, 22), (32, 42)])
    point_shifted = gaussian(64, [(36, 29)])
    out = run(scattering, torch.stack([point, double, point_shifted])[:, None])
    to_double = torch.dist(out[0], out[1])
    to_shifted = torch.dist(out[0], out[2])
    assert to_double > 5 * to_shifted  # morphology matters, position hardly


def test_scattering_rot_is_rotation_invariant():
    backbone = create_backbone("scattering-rot")
    double = gaussian(64, [(32, 22), (32, 42)])
    out = run(backbone, torch.stack([double, double.T.contiguous()])[:, None])
    plain = run(
        create_backbone("scattering"), torch.stack([double, double.T.contiguous()])[:, None]
    )
    assert torch.dist(out[0], out[1]) < 0.05 * torch.dist(plain[0], plain[1])


def test_scattering_renorm_is_brightness_invariant():
    backbone = create_backbone("scattering-renorm")
    double = 100 * gaussian(64, [(32, 22), (30, 44)])  # energies far above eps
    out = run(backbone, torch.stack([double, 3 * double])[:, None])
    torch.testing.assert_close(out[1, 1:], out[0, 1:], rtol=0, atol=0.01)
    assert out[1, 0] - out[0, 0] == pytest.approx(np.log(3), abs=0.01)  # order 0 keeps it


def test_scattering_max_and_spatial_dimensions():
    assert create_backbone("scattering-max").dim == 2 * 217
    assert create_backbone("scattering-spatial").dim == 5 * 217


def test_scattering_handles_blank_and_three_channels(scattering):
    blank = torch.zeros(1, 1, 64, 64)
    assert torch.isfinite(run(scattering, blank)).all()
    x = images(2, 1, 64)
    three = run(scattering, x.expand(-1, 3, -1, -1).contiguous())
    torch.testing.assert_close(three, run(scattering, x))


def test_scattering_does_not_depend_on_the_batch(scattering):
    x = images(6, 1, 64)
    whole = run(scattering, x)
    torch.testing.assert_close(run(scattering, x[2:3]), whole[2:3], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("size", "batch"), [(32, 5), (32, 6), (64, 7)])
def test_default_backbone_gives_the_same_bits_on_one_thread_or_two(size: int, batch: int):
    """Shards on nodes with other core counts than a single run write the same features:
    the group means of the default backbone are not a float32 GEMM whose blocking follows
    the thread count (these shapes differed in the last bit before)."""
    backbone = create_backbone("scattering-j4-rot-renorm-max", input_size=size)
    x = images(batch, 1, size)
    threads, outs = torch.get_num_threads(), []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            outs.append(run(backbone, x))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])


def test_scattering_runs_under_autocast(scattering):
    x = images(2, 1, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run(scattering, x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, run(scattering, x))


def test_scattering_input_size_override():
    backbone = create_backbone("scattering", input_size=32)
    assert backbone.preprocessing.input_size == 32
    assert run(backbone, images(1, 1, 32)).shape == (1, 217)


# ----------------------------------------------------------------------------- timm

VIT = "vit_small_patch14_reg4_dinov2"  # DINOv2 ViT-S/14 with registers, as the survey run
VIT_SIZE = 28  # 2 x 2 patches keeps it fast


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"], ids=["safetensors", "torch"])
@pytest.mark.parametrize(
    ("arch", "size", "kwargs", "layer"),
    [
        ("resnet18", 64, {}, "avg"),
        (VIT, VIT_SIZE, {"img_size": VIT_SIZE}, "cls"),
    ],
    ids=["resnet18", "dinov2-vits14-reg4"],
)
def test_timm_weights_file_roundtrip(tmp_path, suffix, arch, size, kwargs, layer):
    model = reference(arch, **kwargs)  # with its classifier head, as a user's file may be
    path = save(model.state_dict(), tmp_path / f"weights{suffix}")
    backbone = create_backbone(f"timm:{arch}", weights=path, input_size=size)
    assert backbone.weights_sha256 == sha256(path)
    assert backbone.layer == layer and path.name in backbone.description
    pre = backbone.preprocessing
    assert (pre.input_size, pre.in_chans, len(pre.mean), len(pre.std)) == (size, 3, 3, 3)
    x = images(2, 3, size)
    model.reset_classifier(0)
    with torch.inference_mode():
        expected = model(x)
    out = run(backbone, x)
    assert out.shape == (2, backbone.dim)
    torch.testing.assert_close(out, expected, rtol=0, atol=ATOL)


def test_timm_dinov2_preprocessing_from_pretrained_config(tmp_path):
    model = reference(VIT)
    path = save(model.state_dict(), tmp_path / "dinov2.safetensors")
    backbone = create_backbone(f"timm:{VIT}.lvd142m", weights=path)
    pre = backbone.preprocessing
    assert pre.input_size == 518 and pre.mean == (0.485, 0.456, 0.406)
    assert backbone.dim == 384


def test_timm_vit_position_embeddings_are_resampled(tmp_path):
    path = save(reference("vit_tiny_patch16_224").state_dict(), tmp_path / "w224.safetensors")
    backbone = create_backbone("timm:vit_tiny_patch16_224", weights=path, input_size=64)
    assert backbone.preprocessing.input_size == 64
    assert run(backbone, images(1, 3, 64)).shape == (1, 192)


@pytest.mark.parametrize(
    ("pooling", "dim"),
    [("cls", 384), ("token-mean", 384), ("cls+token-mean", 768)],
    ids=["cls", "token-mean", "cls+token-mean"],
)
def test_timm_vit_pooling(pooling, dim):
    backbone = create_backbone(
        f"timm:{VIT}", pretrained=False, pooling=pooling, input_size=VIT_SIZE
    )
    x = images(2, 3, VIT_SIZE)
    out = run(backbone, x)
    assert out.shape == (2, dim) and backbone.dim == dim and backbone.layer == pooling
    with torch.inference_mode():
        tokens = backbone.module.model.forward_features(x)  # cls, 4 registers, 4 patches
    if pooling == "token-mean":
        torch.testing.assert_close(out, tokens[:, 5:].mean(1))
    if pooling == "cls+token-mean":
        torch.testing.assert_close(out[:, :384], tokens[:, 0])


def test_timm_cnn_max_pooling():
    backbone = create_backbone("timm:resnet18", pretrained=False, pooling="max")
    x = images(2, 3, 64)
    with torch.inference_mode():
        fmap = backbone.module.model.forward_features(x)
    torch.testing.assert_close(run(backbone, x), fmap.amax(dim=(-2, -1)))


def test_timm_random_init_is_seeded():
    a = create_backbone("timm:resnet18", pretrained=False)
    b = create_backbone("timm:resnet18", pretrained=False)
    assert a.weights_sha256 is None and "random init" in a.description
    x = images(1, 3, 64)
    torch.testing.assert_close(run(a, x), run(b, x), rtol=0, atol=0)


def test_missing_pretrained_weights_fail_fast_and_say_how(offline):
    started = time.monotonic()
    with pytest.raises(WeightsError) as info:
        create_backbone("timm:resnet18")
    assert time.monotonic() - started < 10  # sanity bound, never a network wait
    message = str(info.value)
    assert "hf download timm/resnet18.a1_in1k" in message and "--weights FILE" in message
    assert str(offline) in message and "\n" not in message


@pytest.mark.parametrize(
    "name",
    [
        "timm:hf_hub:mwalmsley/zoobot-encoder-convnext_nano",
        "timm:hf-hub:mwalmsley/zoobot-encoder-convnext_nano",
    ],
    ids=["hf_hub", "hf-hub"],
)
def test_zoobot_hub_model_without_cache_fails_fast(name):
    with pytest.raises(WeightsError) as info:
        create_backbone(name)
    message = str(info.value)
    assert "hf download mwalmsley/zoobot-encoder-convnext_nano" in message
    assert "--weights FILE" in message and "HF_HUB_CACHE" in message


def fake_hub_repo(cache: Path, repo: str, files: dict[str, Path]) -> Path:
    """Lay out files as the Hugging Face cache does after ``hf download repo``."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0123abcd")
    for name, source in files.items():
        (snapshot / name).write_bytes(source.read_bytes())
    return snapshot


def test_timm_hub_model_from_local_cache(tmp_path, offline):
    # a Zoobot-like encoder (timm ConvNeXt, no classifier) as `hf download` leaves it
    model = reference("convnext_atto", num_classes=0)
    export = tmp_path / "export"
    timm.models.save_for_hf(model, export, safe_serialization=True)
    files = {
        "config.json": export / "config.json",
        "model.safetensors": export / "model.safetensors",
    }
    snapshot = fake_hub_repo(offline, "astro/zoobot-like-atto", files)
    backbone = create_backbone("timm:hf_hub:astro/zoobot-like-atto")
    assert backbone.weights_sha256 == sha256(snapshot / "model.safetensors")
    x = images(2, 3, 64)
    with torch.inference_mode():
        expected = model(x)
    torch.testing.assert_close(run(backbone, x), expected, rtol=0, atol=ATOL)
    assert backbone.dim == model.num_features and backbone.preprocessing.input_size == 224


def test_timm_registry_model_from_local_cache(tmp_path, offline):
    model = reference("resnet18")
    path = save(model.state_dict(), tmp_path / "model.safetensors")
    snapshot = fake_hub_repo(offline, "timm/resnet18.a1_in1k", {"model.safetensors": path})
    backbone = create_backbone("timm:resnet18.a1_in1k")
    assert backbone.weights_sha256 == sha256(snapshot / "model.safetensors")
    x = images(1, 3, 64)
    model.reset_classifier(0)
    with torch.inference_mode():
        torch.testing.assert_close(run(backbone, x), model(x), rtol=0, atol=ATOL)


def test_timm_weights_from_torch_hub_cache(tmp_path):
    model = reference("resnet18")
    url = model.pretrained_cfg["url"]  # where timm would download the a1_in1k weights
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    path = save(model.state_dict(), checkpoints / url.rsplit("/", 1)[-1])
    backbone = create_backbone("timm:resnet18")
    assert backbone.weights_sha256 == sha256(path)


@pytest.mark.parametrize(
    ("source", "target"),
    [("resnet18", "timm:resnet34"), (VIT, "timm:resnet18"), ("resnet18", "ssl:resnet50")],
    ids=["resnet18-into-resnet34", "vit-into-resnet18", "resnet18-into-ssl-resnet50"],
)
def test_wrong_architecture_weights_are_a_clear_error(tmp_path, source, target):
    kwargs = {"img_size": VIT_SIZE} if source == VIT else {}
    path = save(reference(source, **kwargs).state_dict(), tmp_path / f"{source}.safetensors")
    with pytest.raises(WeightsError) as info:
        create_backbone(target, weights=path)
    message = str(info.value)
    assert path.name in message and "another architecture" in message and "\n" not in message
    assert "missing (" in message or "of another shape" in message
    assert message.count(",") < 40  # a few keys, not the whole state dict


def test_unreadable_weights_file(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match=r"cannot read weights file .*garbage"):
        create_backbone("timm:resnet18", weights=path)


def test_pickled_objects_need_allow_pickle(tmp_path):
    model = reference("resnet18")
    checkpoint = {"state_dict": model.state_dict(), "args": argparse.Namespace(lr=0.1)}
    path = tmp_path / "trainer.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(WeightsError, match="Python objects besides tensors"):
        create_backbone("timm:resnet18", weights=path)
    backbone = create_backbone("timm:resnet18", weights=path, allow_pickle=True)
    assert backbone.weights_sha256 == sha256(path)


# ------------------------------------------------------------------------------ ssl


def test_ssl_solo_learn_checkpoint(tmp_path):
    model = reference("resnet18", num_classes=0)
    state = model.state_dict()
    checkpoint = {
        "epoch": 99,
        "state_dict": {
            **{f"backbone.{k}": v for k, v in state.items()},
            **{f"momentum_backbone.{k}": torch.zeros_like(v) for k, v in state.items()},
            "projector.0.weight": torch.randn(2048, 512),
            "projector.0.bias": torch.randn(2048),
            "classifier.weight": torch.randn(10, 512),
        },
    }
    path = tmp_path / "solo-learn.ckpt"
    torch.save(checkpoint, path)
    x = images(2, 3, 64)
    with torch.inference_mode():
        expected = model(x)
    for backbone in (
        create_backbone("ssl:resnet18", weights=path),
        create_backbone("ssl", arch="resnet18", weights=path),
    ):
        assert backbone.name == "ssl:resnet18" and backbone.layer == "avg"
        assert backbone.weights_sha256 == sha256(path)
        torch.testing.assert_close(run(backbone, x), expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"model": s},
        lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
        lambda s: {"model": {f"encoder.{k}": v for k, v in s.items()}, "optimizer": {}},
    ],
    ids=["plain", "model-container", "ddp-module-prefix", "encoder-prefix"],
)
def test_ssl_checkpoint_containers_and_prefixes(tmp_path, wrap):
    model = reference("resnet18", num_classes=0)
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(model.state_dict()), path)
    backbone = create_backbone("ssl:resnet18", weights=path)
    x = images(1, 3, 64)
    with torch.inference_mode():
        torch.testing.assert_close(run(backbone, x), model(x), rtol=0, atol=ATOL)


def test_ssl_torchvision_resnet_keys(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(2)
    model = torchvision.models.resnet50().eval()
    path = save(model.state_dict(), tmp_path / "torchvision_resnet50.pth")
    backbone = create_backbone("ssl:resnet50", weights=path)
    model.fc = torch.nn.Identity()
    x = images(1, 3, 64)
    with torch.inference_mode():
        torch.testing.assert_close(run(backbone, x), model(x), rtol=1e-5, atol=ATOL)
    assert backbone.dim == 2048


# ---------------------------------------------------------------------------- hf


def tiny_hf_model(folder: Path, kind: str) -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    common = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "image_size": 28,
        "patch_size": 7,
    }
    torch.manual_seed(3)
    if kind == "dinov2":
        model = transformers.Dinov2Model(transformers.Dinov2Config(**common))
    elif kind == "dinov2-registers":
        config = transformers.Dinov2WithRegistersConfig(num_register_tokens=4, **common)
        model = transformers.Dinov2WithRegistersModel(config)
    else:
        model = transformers.ViTModel(transformers.ViTConfig(**common))
    model.eval().save_pretrained(folder)
    processor = transformers.BitImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 28, "width": 28},
        image_mean=[0.5, 0.4, 0.3],
        image_std=[0.2, 0.2, 0.25],
    )
    processor.save_pretrained(folder)
    return model


@pytest.mark.parametrize("kind", ["dinov2", "dinov2-registers", "vit"], ids=str)
def test_hf_local_directory(tmp_path, kind):
    model = tiny_hf_model(tmp_path / "model", kind)
    backbone = create_backbone(f"hf:{tmp_path / 'model'}")
    pre = backbone.preprocessing
    assert (pre.input_size, pre.in_chans, pre.mean, pre.std) == (
        28,
        3,
        (0.5, 0.4, 0.3),
        (0.2, 0.2, 0.25),
    )
    assert backbone.weights_sha256 == sha256(tmp_path / "model" / "model.safetensors")
    assert backbone.layer == "cls" and backbone.dim == 32
    x = images(2, 3, 28)
    with torch.inference_mode():
        hidden = model(pixel_values=x).last_hidden_state
    torch.testing.assert_close(run(backbone, x), hidden[:, 0], rtol=0, atol=ATOL)
    prefix = 5 if kind == "dinov2-registers" else 1
    mean = create_backbone(f"hf:{tmp_path / 'model'}", pooling="token-mean")
    torch.testing.assert_close(run(mean, x), hidden[:, prefix:].mean(1), rtol=0, atol=ATOL)


def test_hf_cnn_model_avg_pooling_and_fold(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"
    )
    torch.manual_seed(4)
    model = transformers.ResNetModel(config).eval()
    model.to(torch.bfloat16).save_pretrained(tmp_path / "resnet")  # a bf16 checkpoint
    model.float()
    backbone = create_backbone(f"hf:{tmp_path / 'resnet'}")
    assert backbone.layer == "avg" and backbone.dim == 16
    assert backbone.preprocessing.input_size == 224  # no processor config: ImageNet defaults
    x = images(2, 3, 64)
    out = run(backbone, x)
    assert out.dtype == torch.float32
    with torch.inference_mode():
        expected = model(pixel_values=x).pooler_output.flatten(1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-2)  # bf16-rounded weights
    fold = create_backbone(f"hf:{tmp_path / 'resnet'}", channels="fold")
    gray = x[:, :1]
    torch.testing.assert_close(
        run(fold, gray), run(backbone, gray.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4
    )


def test_hf_model_id_from_local_cache(tmp_path, offline):
    tiny_hf_model(tmp_path / "model", "dinov2")
    files = {p.name: p for p in (tmp_path / "model").iterdir()}
    fake_hub_repo(offline, "astro/tiny-dinov2", files)
    backbone = create_backbone("hf:astro/tiny-dinov2")
    assert backbone.dim == 32 and run(backbone, images(1, 3, 28)).shape == (1, 32)


def test_hf_model_id_not_cached_fails_fast():
    with pytest.raises(WeightsError, match="hf download facebook/dinov2-small"):
        create_backbone("hf:facebook/dinov2-small")


def test_hf_missing_directory():
    with pytest.raises(WeightsError, match="does not exist"):
        create_backbone("hf:./no/such/model")


# ------------------------------------------------------------------- channel fold


@pytest.mark.parametrize(
    ("name", "size", "kwargs"),
    [
        ("timm:resnet18", 64, {}),
        (f"timm:{VIT}", VIT_SIZE, {"input_size": VIT_SIZE}),
        ("hf", 28, {}),
    ],
    ids=["resnet18-padded-conv", "vit-patch-embed", "hf-dinov2"],
)
def test_channel_fold_equals_repeat(tmp_path, name, size, kwargs):
    if name == "hf":
        tiny_hf_model(tmp_path / "model", "dinov2")
        name = f"hf:{tmp_path / 'model'}"
    else:
        kwargs["pretrained"] = False
    repeat = create_backbone(name, channels="repeat", **kwargs)
    fold = create_backbone(name, channels="fold", **kwargs)
    assert fold.preprocessing.in_chans == 1 and len(fold.preprocessing.mean) == 1
    assert fold.preprocessing.mean[0] == pytest.approx(np.mean(repeat.preprocessing.mean))
    assert fold.dim == repeat.dim
    x = images(3, 1, size)
    torch.testing.assert_close(
        run(fold, x), run(repeat, x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4
    )


def test_channel_fold_of_loaded_weights(tmp_path):
    model = reference("resnet18", num_classes=0)
    path = save(model.state_dict(), tmp_path / "w.safetensors")
    fold = create_backbone("timm:resnet18", weights=path, channels="fold")
    x = images(2, 1, 64)
    with torch.inference_mode():
        expected = model(x.expand(-1, 3, -1, -1))
    torch.testing.assert_close(run(fold, x), expected, rtol=1e-4, atol=1e-4)
    assert fold.weights_sha256 == sha256(path)


# ------------------------------------------------------------------------ metadata


def test_metadata_is_json_serialisable(scattering):
    meta = scattering.metadata()
    assert json.loads(json.dumps(meta)) == meta
    assert meta["backbone"] == "scattering" and meta["dim"] == 217
    assert meta["in_chans"] == 1 and meta["input_size"] == 64 and meta["weights_sha256"] is None
    assert "module" not in repr(scattering)


# --------------------------------------------------------------------------- cuda


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    ("name", "kwargs", "tol"),
    [("scattering", {}, 1e-3), ("timm:resnet18", {"pretrained": False}, 2e-2)],
    ids=["scattering", "resnet18"],
)
def test_cuda_matches_cpu(name, kwargs, tol):
    backbone = create_backbone(name, **kwargs)
    pre = backbone.preprocessing
    x = images(4, pre.in_chans, 64)
    expected = run(backbone, x)
    backbone.module.to("cuda")
    out = run(backbone, x.to("cuda")).cpu()
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half = run(backbone, x.to("cuda")).float().cpu()
    assert torch.isfinite(half).all() and half.shape == expected.shape


@pytest.mark.parametrize(("J", "L"), [(3, 8), (4, 8), (2, 4), (4, 6)])
def test_scattering_paths_known_before_the_filter_bank_is_built(J: int, L: int) -> None:  # noqa: N803
    """The channels come from kymatio's filter order without building its filters."""
    from kymatio.scattering2d.filter_bank import filter_bank

    from astrocurate.algorithms.backbones.scattering_spec import _filter_labels

    built = filter_bank(6 * 2**J, 6 * 2**J, J, L)
    assert [(f["j"], f["theta"]) for f in built["psi"]] == [
        (f["j"], f["theta"]) for f in _filter_labels(J, L)
    ]


def test_scattering_builds_its_filters_only_when_it_runs() -> None:
    backbone = create_backbone("scattering")
    assert backbone.module.transform is None and backbone.dim > 0
    features = backbone.module(torch.zeros(2, 1, 64, 64))
    assert backbone.module.transform is not None and features.shape == (2, backbone.dim)
