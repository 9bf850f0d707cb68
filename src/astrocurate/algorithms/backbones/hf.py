"""Hugging Face transformers backbones: an ``AutoModel`` from the cache or a local folder."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from astrocurate.algorithms.backbones.base import (
    Backbone,
    Options,
    check_pooling,
    finish,
    import_optional,
    pool_tokens,
    reject,
)
from astrocurate.algorithms.backbones.channels import fold_first_conv, rgb_preprocessing
from astrocurate.algorithms.backbones.weights import (
    WeightsError,
    hf_snapshot,
    missing_hub_message,
    preview,
    sha256,
    weights_in_folder,
)
from astrocurate.errors import InvalidArgumentError

__all__ = ["HFFeatures", "build_hf"]

IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)


class HFFeatures(nn.Module):
    """A transformers ``AutoModel`` with the pooling that gives the vector."""

    def __init__(self, model: nn.Module, pooling: str, num_prefix: int) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.num_prefix = num_prefix
        params = inspect.signature(model.forward).parameters
        self._kwargs = (
            {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in params else {}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``(B, D)`` features of ``(B, C, S, S)`` images."""
        out = self.model(pixel_values=x, **self._kwargs)
        if self.pooling == "pooler":
            return out.pooler_output.flatten(1)
        hidden = out.last_hidden_state
        if hidden.ndim == 4:  # CNN feature map (B, C, H, W)
            return hidden.mean(dim=(-2, -1))
        return pool_tokens(hidden, self.pooling, self.num_prefix)


def build_hf(name: str, spec: str, options: Options) -> Backbone:
    """Build ``hf:<model id or directory>``: a transformers ``AutoModel``, local files only."""
    reject(options, name, "weights", "arch")
    if not spec:
        raise InvalidArgumentError("hf: needs a model id or directory, e.g. 'hf:./my_dinov2'")
    if not options.pretrained:
        raise InvalidArgumentError(f"{name}: hf backbones always load their folder's weights")
    transformers = import_optional("transformers", "hf: backbones")
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        if spec.startswith((".", "/", "~", "\\")) or spec.count("/") > 1:
            raise WeightsError(f"{name}: model directory {spec!r} does not exist")
        snapshot = hf_snapshot(spec, "config.json")
        if snapshot is None:
            raise WeightsError(
                missing_hub_message(name, spec, "model", "give a local folder: hf:/path/to/model")
            )
        folder = snapshot
    files = weights_in_folder(folder, sharded=True)
    if not files:
        raise WeightsError(f"{name}: no weights (*.safetensors or *.bin) in {folder}")
    try:
        model, info = transformers.AutoModel.from_pretrained(
            str(folder), local_files_only=True, output_loading_info=True, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError) as error:
        raise WeightsError(f"{name}: transformers cannot load {folder}: {error}") from error
    missing = list(info.get("missing_keys") or []) + [
        str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or []
    ]
    if missing:
        raise WeightsError(
            f"{name}: the weights in {folder} do not fit its config: {len(missing)} "
            f"entries missing or of another shape ({preview(missing)})"
        )
    pre = _hf_preprocessing(folder, model.config)
    num_prefix = _hf_prefix_tokens(model)
    if options.channels == "fold":
        fold_first_conv(model, name)
    pooling = check_pooling(
        name,
        options.pooling or ("cls" if num_prefix else "avg"),
        ("cls", "token-mean", "cls+token-mean", "pooler") if num_prefix else ("avg", "pooler"),
    )
    module = finish(HFFeatures(model, pooling, num_prefix))
    size = options.input_size or pre[0]
    with torch.inference_mode():
        probe = torch.zeros(1, 1 if options.channels == "fold" else 3, size, size)
        dim = int(module(probe).shape[1])
    return Backbone(
        name=name,
        module=module,
        dim=dim,
        preprocessing=rgb_preprocessing(size, pre[1], pre[2], options.channels),
        layer=pooling,
        weights_sha256=sha256(*files),
        description=(
            f"transformers {type(model).__name__} from {folder}, {pooling} pooling, "
            f"channels={options.channels}"
        ),
    )


def _hf_preprocessing(folder: Path, config: Any) -> tuple[int, tuple, tuple]:
    """Input side, mean and std from ``preprocessor_config.json`` (ImageNet, 224 if absent)."""
    path = folder / "preprocessor_config.json"
    cfg = json.loads(path.read_text()) if path.is_file() else {}
    size = None
    if cfg.get("do_center_crop", "crop_size" in cfg) and cfg.get("crop_size"):
        size = _side(cfg["crop_size"])
    if size is None and cfg.get("size"):
        size = _side(cfg["size"])
    if size is None:
        size = _side(getattr(config, "image_size", None)) or 224
    if cfg.get("do_normalize", True) is False:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    else:
        mean = tuple(cfg.get("image_mean") or IMAGENET_MEAN)
        std = tuple(cfg.get("image_std") or IMAGENET_STD)
    return int(size), mean, std


def _side(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and value:
        return int(value[0])
    if isinstance(value, dict):
        for key in ("height", "shortest_edge", "width"):
            if value.get(key):
                return int(value[key])
    return None


def _hf_prefix_tokens(model: nn.Module) -> int:
    """Count the class/distillation/register tokens in front of the patch tokens."""
    embeddings = getattr(model, "embeddings", None)
    count = 0
    for attr in ("cls_token", "distillation_token", "register_tokens"):
        token = getattr(embeddings, attr, None)
        if isinstance(token, torch.Tensor):
            count += token.shape[1]
    return count
