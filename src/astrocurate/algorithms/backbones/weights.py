"""Weights from local files only: the caches, reading checkpoints, strict loading.

Nothing here touches the network. A checkpoint is read with ``torch.load(...,
weights_only=True)`` unless the caller of ``create_backbone`` opts in to unpickling a
file it trusts (:func:`_load_trusted_checkpoint`, the one audited exception).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from astrocurate.algorithms.backbones.spec import WeightsError, sha256

__all__ = [
    "WEIGHT_FILES",
    "WeightsError",
    "hf_cache_dir",
    "hf_snapshot",
    "load_strict",
    "missing_hub_message",
    "preview",
    "read_state_dict",
    "sha256",
    "weights_in_folder",
]

# Top-level names of checkpoint entries that are never part of a feature extractor
# (classifier heads, SSL projectors/predictors, momentum copies). Ignored when the
# model has no such key; every key the model has must still be in the file.
_HEAD_KEYS = frozenset(
    {
        "fc",
        "head",
        "heads",
        "head_dist",
        "classifier",
        "projector",
        "predictor",
        "prototypes",
        "momentum_backbone",
        "momentum_projector",
        "momentum_classifier",
    }
)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")
"""File names of a model folder's single weights file, in order of preference."""


def hf_cache_dir() -> Path:
    """Return the Hugging Face hub cache, read from the environment at call time."""
    env = os.environ
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(key):
            return Path(env[key]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    return Path(env.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "huggingface" / "hub"


def hf_snapshot(repo: str, filename: str) -> Path | None:
    """Snapshot folder of ``repo[@revision]`` holding ``filename`` in the local cache.

    Never touches the network.
    """
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = repo.partition("@")
    try:
        found = try_to_load_from_cache(
            repo_id, filename, cache_dir=hf_cache_dir(), revision=revision or None
        )
    except ValueError:  # malformed repo id
        return None
    if isinstance(found, str) and Path(found).is_file():
        return Path(found).parent
    return None


def missing_hub_message(name: str, repo: str, what: str, alternative: str) -> str:
    """Say that ``repo`` is not cached, how to provide it, and the ``alternative``."""
    return (
        f"{name}: {what} of {repo!r} not in the local Hugging Face cache ({hf_cache_dir()}); "
        f"astrocurate never downloads. On a machine with internet run `hf download {repo}` "
        f"(older clients: `huggingface-cli download {repo}`), copy the cache folder here and "
        f"point HF_HUB_CACHE or HF_HOME at it; or {alternative}"
    )


def weights_in_folder(folder: Path, sharded: bool = False) -> list[Path]:
    """Weights file(s) of a model folder, safetensors preferred."""
    for filename in WEIGHT_FILES:
        if (folder / filename).is_file():
            return [folder / filename]
    if sharded:
        for pattern in ("*.safetensors", "*.bin"):
            found = sorted(folder.glob(pattern))
            if found:
                return found
    return []


def read_state_dict(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a safetensors file or torch checkpoint and return its tensor dict."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        if allow_pickle:
            checkpoint = _load_trusted_checkpoint(path)
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        if "weights_only" in str(error):
            raise WeightsError(
                f"cannot read weights file {str(path)!r}: it holds Python objects besides "
                "tensors, which astrocurate does not unpickle (unpickling can run any code); "
                "re-save only its state dict (torch.save(model.state_dict(), ...)) or as "
                "safetensors"
            ) from error
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsError(f"cannot read weights file {str(path)!r}: {first}") from error
    return _unwrap_checkpoint(checkpoint, path)


def _load_trusted_checkpoint(path: Path) -> Any:
    """Unpickle a whole checkpoint: only for ``create_backbone(..., allow_pickle=True)``.

    The one place that calls ``torch.load`` with ``weights_only=False`` (the API's
    explicit opt-in for a file the caller trusts; the command line never sets it).
    """
    return torch.load(path, map_location="cpu", weights_only=False)


def _unwrap_checkpoint(checkpoint: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the tensor dict in a checkpoint container (``state_dict``, ``model``, ...)."""
    for _ in range(3):
        if isinstance(checkpoint, Mapping) and not _is_tensor_dict(checkpoint):
            for key in ("state_dict", "model", "model_state_dict", "module", "teacher", "encoder"):
                if isinstance(checkpoint.get(key), Mapping):
                    checkpoint = checkpoint[key]
                    break
            else:
                break
    if isinstance(checkpoint, nn.Module):
        checkpoint = checkpoint.state_dict()
    if not isinstance(checkpoint, Mapping):
        raise WeightsError(
            f"weights file {str(path)!r} holds a {type(checkpoint).__name__}, not a state dict"
        )
    tensors = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(
            f"weights file {str(path)!r} holds no tensors (top-level keys: "
            f"{preview(list(checkpoint))})"
        )
    return tensors


def _is_tensor_dict(mapping: Mapping) -> bool:
    values = list(mapping.values())
    return bool(values) and sum(isinstance(v, torch.Tensor) for v in values) * 2 > len(values)


def _strip_prefix(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Remove the key prefix (``backbone.``, ``module.``, ...) that best matches the model.

    Entries outside the chosen prefix (projectors, momentum copies) are dropped.
    """
    counts: Counter[str] = Counter()
    for key in state:
        parts = key.split(".")
        for cut in range(1, len(parts)):
            prefix = ".".join(parts[:cut]) + "."
            if key[len(prefix) :] in model_keys:
                counts[prefix] += 1
    direct = sum(key in model_keys for key in state)
    if not counts:
        return state
    prefix = min(counts, key=lambda p: (-counts[p], len(p), p))
    if counts[prefix] <= direct:
        return state
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Load ``state`` into ``model`` requiring every model entry; one-line error if not."""
    expected = model.state_dict()
    state = _strip_prefix(state, set(expected))
    converter = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if converter is not None:  # timm's own converter (foreign formats, position embeddings)
        with contextlib.suppress(Exception):  # the strict check below reports problems
            state = dict(converter(dict(state), model))
    heads = set(_HEAD_KEYS)
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    heads.update([classifier] if isinstance(classifier, str) else list(classifier or ()))
    unexpected = [k for k in state if k not in expected and not any(_under(k, h) for h in heads)]
    state = {k: v for k, v in state.items() if k in expected}
    missing = [k for k in expected if k not in state]
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in state.items()
        if v.shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing ({preview(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected ({preview(unexpected)})")
        if shapes:
            problems.append(f"{len(shapes)} of another shape (file vs model: {preview(shapes)})")
        raise WeightsError(
            f"weights file {str(path)!r} does not fit {what}: {'; '.join(problems)}. "
            "Is it for another architecture?"
        )
    model.load_state_dict(state, strict=True)


def _under(key: str, head: str) -> bool:
    return key == head or key.startswith(head + ".")


def preview(items: list[str], n: int = 3) -> str:
    """Join the first ``n`` items, with ``...`` when there are more."""
    shown = ", ".join(items[:n])
    return shown + (", ..." if len(items) > n else "")
