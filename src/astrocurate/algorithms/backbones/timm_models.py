"""timm backbones: registry models, Hub exports, local folders and SSL checkpoints."""

from __future__ import annotations

import difflib
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
    WEIGHT_FILES,
    WeightsError,
    hf_snapshot,
    load_strict,
    missing_hub_message,
    read_state_dict,
    sha256,
    weights_in_folder,
)
from astrocurate.errors import InvalidArgumentError

__all__ = ["TimmFeatures", "build_ssl", "build_timm"]


class TimmFeatures(nn.Module):
    """A timm model without classifier, with the pooling that gives the vector."""

    def __init__(self, model: nn.Module, pooling: str, native: bool) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.native = native  # the model's own pooled output is the requested vector
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``(B, D)`` features of ``(B, C, S, S)`` images."""
        if self.native:
            return self.model(x).flatten(1)
        return pool_tokens(self.model.forward_features(x), self.pooling, self.num_prefix_tokens)


def build_timm(name: str, spec: str, options: Options) -> Backbone:
    """Build ``timm:<model>``: a registry name, ``hf_hub:REPO`` or ``local-dir:PATH``."""
    reject(options, name, "arch")
    if not spec:
        raise InvalidArgumentError(
            "timm: needs a model name, e.g. 'timm:resnet18' or "
            "'timm:vit_small_patch14_reg4_dinov2.lvd142m'"
        )
    return _timm_backbone(name, spec, options)


def build_ssl(name: str, spec: str, options: Options) -> Backbone:
    """Build ``ssl:<arch>``: a self-supervised checkpoint loaded into a timm architecture."""
    arch = spec or options.arch
    if not arch:
        raise InvalidArgumentError(
            "ssl backbones need an architecture: 'ssl:resnet18' or arch='resnet18'"
        )
    if spec and options.arch and options.arch != spec:
        raise InvalidArgumentError(f"arch={options.arch!r} contradicts the name {name!r}")
    if options.weights is None:
        raise InvalidArgumentError(
            f"backbone {name!r} needs weights=CHECKPOINT (the self-supervised checkpoint)"
        )
    return _timm_backbone(f"ssl:{arch}", arch, options, kind="self-supervised checkpoint")


def _timm_backbone(name: str, model_name: str, options: Options, kind: str = "timm") -> Backbone:
    timm = import_optional("timm", "timm models")
    source, model_id = _parse_timm_name(model_name)
    weights = options.weights
    if source == "hf-hub":
        folder = hf_snapshot(model_id, "config.json")
        if folder is None:
            raise WeightsError(
                missing_hub_message(
                    name, model_id, "config.json", "pass --weights FILE with timm:<architecture>"
                )
            )
        create_name = f"local-dir:{folder}"
    elif source == "local-dir":
        folder = Path(model_id).expanduser()
        if not (folder / "config.json").is_file():
            raise WeightsError(f"{name}: no timm config.json in {str(folder)!r}")
        create_name = f"local-dir:{folder}"
    else:
        folder = None
        if not timm.is_model(model_name):
            close = difflib.get_close_matches(model_name, timm.list_models(), n=3, cutoff=0.7)
            hint = f"; close: {', '.join(close)}" if close else ""
            raise InvalidArgumentError(
                f"{name}: {model_name!r} is not a timm model{hint} (timm.list_models() lists them)"
            )
        create_name = model_name

    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0}
    if options.input_size and _timm_fixed_size(timm, create_name, folder):
        kwargs["img_size"] = options.input_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # a random-init baseline is the same every time
        try:
            model = timm.create_model(create_name, **kwargs)
        except (RuntimeError, ValueError, TypeError) as error:
            raise InvalidArgumentError(f"{name}: timm cannot build it: {error}") from error

    pooling, native = _timm_pooling(name, model, options.pooling)  # before reading weights
    if weights is None and options.pretrained:
        weights = _timm_local_weights(name, model, source, model_id, folder)
    sha = None
    if weights is not None:
        state = read_state_dict(weights, options.allow_pickle)
        load_strict(model, state, weights, f"{kind} {model_name}")
        sha = sha256(weights)
    if options.channels == "fold":
        fold_first_conv(model, name)
    module = finish(TimmFeatures(model, pooling, native))
    config = timm.data.resolve_data_config({}, model=model)
    size = options.input_size or int(config["input_size"][-1])
    dim = _timm_dim(model, pooling, native)
    origin = f"weights {weights.name}" if weights is not None else "random init (seed 0)"
    return Backbone(
        name=name,
        module=module,
        dim=dim,
        preprocessing=rgb_preprocessing(size, config["mean"], config["std"], options.channels),
        layer=pooling,
        weights_sha256=sha,
        description=(
            f"{kind} {model_name}, {pooling} pooling, {origin}, channels={options.channels}"
        ),
    )


def _parse_timm_name(model_name: str) -> tuple[str | None, str]:
    head, sep, rest = model_name.partition(":")
    if sep and head.lower() in ("hf_hub", "hf-hub"):
        return "hf-hub", rest
    if sep and head.lower() == "local-dir":
        return "local-dir", rest
    return None, model_name


def _timm_fixed_size(timm: Any, create_name: str, folder: Path | None) -> bool:
    """Whether the model is built for one input size (ViTs: position embeddings)."""
    if folder is not None:
        config = json.loads((folder / "config.json").read_text())
        cfg = config.get("pretrained_cfg", config)
        return bool(cfg.get("fixed_input_size", False))
    cfg = timm.models.get_pretrained_cfg(create_name)
    return bool(getattr(cfg, "fixed_input_size", False))


def _timm_pooling(name: str, model: nn.Module, pooling: str | None) -> tuple[str, bool]:
    """Resolve the pooling; return it and whether the model's own output gives it."""
    tokens = hasattr(model, "num_prefix_tokens") and hasattr(model, "forward_features")
    if tokens:
        global_pool = str(getattr(model, "global_pool", "") or "none")
        own = {"token": "cls", "avg": "token-mean"}.get(global_pool, global_pool)
        has_cls = getattr(model, "cls_token", None) is not None
        valid = dict.fromkeys(
            [own, "cls", "token-mean", "cls+token-mean"] if has_cls else [own, "token-mean"]
        )
        chosen = check_pooling(name, pooling or own, valid)
        return chosen, chosen == own
    chosen = check_pooling(name, pooling or "avg", ("avg", "max"))
    if chosen != "avg":
        model.reset_classifier(0, global_pool=chosen)
    return chosen, True


def _timm_dim(model: nn.Module, pooling: str, native: bool) -> int:
    if native:
        return int(getattr(model, "head_hidden_size", None) or model.num_features)
    width = int(getattr(model, "embed_dim", None) or model.num_features)
    return 2 * width if pooling == "cls+token-mean" else width


def _timm_local_weights(
    name: str, model: nn.Module, source: str | None, model_id: str, folder: Path | None
) -> Path:
    """Find the published weights of a timm model in the local caches, or raise."""
    if folder is not None:
        found = weights_in_folder(folder)
        if found:
            return found[0]
        where = f"the Hub cache folder {folder}" if source == "hf-hub" else str(folder)
        raise WeightsError(f"{name}: no weights file ({', '.join(WEIGHT_FILES)}) in {where}")
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    repo = cfg.get("hf_hub_id")
    if repo:
        names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else list(WEIGHT_FILES)
        for filename in names:
            snapshot = hf_snapshot(repo, filename)
            if snapshot is not None:
                return snapshot / filename
    url = cfg.get("url")
    if url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        if cached.is_file():
            return cached
    if not repo and not url:
        raise WeightsError(
            f"{name}: timm publishes no pretrained weights for {model_id!r}; "
            "pass weights=FILE, or pretrained=False for a random initialisation"
        )
    return _raise_missing(name, repo, url)


def _raise_missing(name: str, repo: str | None, url: str | None) -> Path:
    if repo:
        raise WeightsError(missing_hub_message(name, repo, "weights", "pass --weights FILE"))
    raise WeightsError(
        f"{name}: pretrained weights are not in the local torch hub cache "
        f"({Path(torch.hub.get_dir()) / 'checkpoints'}) and astrocurate never downloads; "
        f"fetch {url} on a machine with internet into that folder (TORCH_HOME sets it), "
        "or pass --weights FILE"
    )
