"""Single-channel cutouts meeting RGB networks: repeated channels or a folded first layer."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from astrocurate.algorithms.backbones.spec import CHANNEL_MODES, Preprocessing
from astrocurate.errors import InvalidArgumentError

__all__ = ["CHANNEL_MODES", "fold_first_conv", "rgb_preprocessing"]

"""Ways of feeding single-channel images to a 3-channel network."""


def rgb_preprocessing(
    size: int, mean: Iterable[float], std: Iterable[float], channels: str
) -> Preprocessing:
    """Preprocessing of an RGB network fed by one channel (``'fold'``) or three copies."""
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if channels == "fold":
        return Preprocessing(size, 1, (sum(mean) / len(mean),), (sum(std) / len(std),))
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    return Preprocessing(size, 3, mean, std)


def fold_first_conv(model: nn.Module, name: str) -> None:
    """Make ``model`` take one channel: sum its first convolution over input channels.

    The folded model on ``x`` equals the original on ``x`` repeated over the channels;
    this is checked numerically on the layer and is an error where it does not hold.
    """
    conv_name = _first_conv_name(model)
    if conv_name is None:
        raise InvalidArgumentError(
            f"channels='fold': {name} has no 3-channel first convolution; use channels='repeat'"
        )
    conv = model.get_submodule(conv_name)
    if conv.groups != 1:
        raise InvalidArgumentError(
            f"channels='fold': {name}'s first convolution {conv_name} is grouped; "
            "use channels='repeat'"
        )
    k = conv.kernel_size
    probe = torch.randn(2, 1, max(4 * k[0], 16), max(4 * k[1], 16), generator=_gen())
    with torch.no_grad():
        reference = conv(probe.expand(-1, conv.in_channels, -1, -1))
        conv.weight = nn.Parameter(conv.weight.sum(dim=1, keepdim=True), requires_grad=False)
        conv.in_channels = 1
        folded = conv(probe)
    if not torch.allclose(folded, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item()):
        raise InvalidArgumentError(
            f"channels='fold' is not exact for {name}'s first layer "
            f"({type(conv).__name__}); use channels='repeat'"
        )
    parts = conv_name.split(".")
    for depth in range(len(parts)):  # the conv's ancestors: transformers' input checks
        owner = model.get_submodule(".".join(parts[:depth]))
        if getattr(owner, "num_channels", None) == 3:
            owner.num_channels = 1
    config = getattr(model, "config", None)
    if getattr(config, "num_channels", None) == 3:
        config.num_channels = 1


def _first_conv_name(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv")
    if isinstance(first, (list, tuple)):
        first = first[0] if len(first) == 1 else None
    if isinstance(first, str):
        try:
            module = model.get_submodule(first)
        except AttributeError:
            module = None
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            return first
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            return module_name
    return None


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)
