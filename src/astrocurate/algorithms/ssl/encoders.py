"""The encoder an evaluation pretrains: a one-channel ResNet-18 from timm, and its files.

An encoder maps ``(B, 1, S, S)`` images to ``(B, 512)`` features (global average
pooling). Its file is ``{"architecture": name, "encoder": state_dict}``; weights trained
elsewhere load too, strictly (prefixes such as ``backbone.`` and SSL heads are handled
by :func:`~astrocurate.algorithms.backbones.weights.load_strict`), and an RGB first layer
is folded to one channel by summing over its input channels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from astrocurate.algorithms.backbones.weights import load_strict, read_state_dict
from astrocurate.algorithms.ssl.config import ENCODERS
from astrocurate.validation import check_choice

_FIRST_CONV = {"resnet18": "conv1.weight"}


def build_encoder(name: str = "resnet18", *, seed: int = 0) -> nn.Module:
    """Return a randomly initialised one-channel encoder, the same for the same ``seed``."""
    import timm

    check_choice("encoder", name, ENCODERS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(name, pretrained=False, num_classes=0, in_chans=1)


def load_encoder(path: Path | str, name: str = "resnet18") -> nn.Module:
    """Return the encoder held by a weights file, in eval mode on the CPU.

    Raises
    ------
    WeightsError
        One line naming the file when it cannot be read or does not fit ``name``.
    """
    path = Path(path)
    state = read_state_dict(path)
    encoder = build_encoder(name)
    first = _FIRST_CONV[name]
    for key, value in list(state.items()):
        if key.endswith(first) and value.ndim == 4 and value.shape[1] == 3:
            state[key] = value.sum(dim=1, keepdim=True)  # RGB weights fed one channel
    load_strict(encoder, state, path, f"a one-channel {name} encoder")
    return encoder.eval()


def encoder_checkpoint(encoder: nn.Module, name: str = "resnet18") -> dict[str, Any]:
    """Return what an encoder file holds: ``{"architecture": name, "encoder": state_dict}``.

    The stage writes it with :func:`astrocurate.io.atomic.save_torch`; :func:`load_encoder`
    reads it back.
    """
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    return {"architecture": name, "encoder": state}
