"""The precision a network computes in: autocast on CUDA, and on CPUs with bf16 units.

``bf16`` pays on the CPU only where it has bf16 instructions (AVX512-BF16, AMX: Intel
Xeon since Sapphire Rapids, AMD since Zen 4). There the convolutions run channels-last
(:func:`channels_last_pays`), and on the 2-core Xeon of BENCHMARKS.md the feature pipeline
of a timm ResNet-18 runs 2.3-3.4x as fast as in float32, of a ViT-S/14 2.8x, and SimCLR or
BYOL pretraining 1.6-3.1x. Elsewhere torch emulates it, more slowly than float32, so there
the network computes in float32 and a warning says so. ``fp16`` autocasts on CUDA only.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: The precisions a step accepts (this module imports torch only when it computes).
PRECISIONS = ("fp32", "bf16", "fp16")
_HINTED: set[str] = set()  # what hint_bf16 has said in this process
#: Where ``--precision bf16`` computes in which: for the one line that refuses to mix them.
WHERE_COMPUTED = (
    "bf16: on a GPU, or on a CPU with AVX512-BF16 or AMX instructions; fp32: on a CPU without them"
)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), as torch sees it."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def computed_in(device: torch.device, wanted: str) -> str:
    """Return the precision ``wanted`` computes in on ``device``: fp32, bf16 or fp16.

    ``auto`` is bf16 on CUDA and fp32 elsewhere; bf16 and fp16 apply on CUDA, and bf16
    on a CPU with bf16 instructions; anything else computes in fp32.
    """
    if wanted == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if wanted == "fp32" or device.type == "cuda":
        return wanted
    return "bf16" if wanted == "bf16" and device.type == "cpu" and cpu_has_bf16() else "fp32"


def channels_last_pays(device: torch.device, wanted: str, module: torch.nn.Module) -> bool:
    """Whether ``module`` computes faster with channels-last (NHWC) activations.

    True for a network with convolutions (a ViT's patch embedding counts) computing in
    bf16 on a CPU: oneDNN's bf16 convolutions work in that layout, and on the 2-core Xeon
    of BENCHMARKS.md ResNets and ConvNeXts ran 1.1-2.3x as fast at 64-224 px, training
    1.2-1.4x, and a ViT-S/14 as fast (1.0x). In float32 the gain depends on the size
    (0.87x at 64 px), and on a GPU it is not measured, so there the layout stays as it is.
    """
    import torch

    if device.type != "cpu" or computed_in(device, wanted) != "bf16":
        return False
    return any(isinstance(m, torch.nn.Conv2d) for m in module.modules())


def hint_bf16(device: torch.device, wanted: str, module: torch.nn.Module) -> None:
    """Say once per process where ``--precision bf16`` would pay and was not asked for.

    That is a network with convolutions computing in float32 on a CPU with bf16
    instructions: there bf16 runs it 1.6-3.4x as fast (BENCHMARKS.md).
    """
    if wanted not in ("fp32", "auto") or computed_in(device, wanted) != "fp32":
        return
    if "bf16" in _HINTED or not channels_last_pays(device, "bf16", module):
        return
    _HINTED.add("bf16")
    log.info(
        "this CPU has bf16 instructions: --precision bf16 would run this network faster "
        "(1.6-3.4x at 64-224 px in BENCHMARKS.md), within bf16's rounding (a cutout's "
        "features within a cosine of 0.99999 of float32's)"
    )


def autocast(device: torch.device, wanted: str) -> Any:
    """Return the context a network computes in, for the precision ``wanted`` on ``device``.

    Parameters
    ----------
    device : torch.device
    wanted : {'auto', 'fp32', 'bf16', 'fp16'}
        The value of the step's ``--precision``.

    Returns
    -------
    context manager
        ``torch.autocast`` to :func:`computed_in`'s bf16 or fp16, or one that changes
        nothing (fp32), after a warning if ``wanted`` was not fp32 or auto. It can be
        entered again and again.
    """
    import torch

    used = computed_in(device, wanted)
    if used != wanted and wanted != "auto":
        reason = "it applies on a GPU only"
        if wanted == "bf16" and device.type == "cpu":
            reason = "this CPU has no bf16 instructions (AVX512-BF16 or AMX) and emulates it slowly"
        log.warning("--precision %s: %s; computing in fp32", wanted, reason)
    if used == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if used == "bf16" else torch.float16)
