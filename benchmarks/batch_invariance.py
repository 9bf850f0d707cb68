"""Do a cutout's features depend on the batch it is computed in? Per backbone, on this device.

For each backbone the same 33 cutouts go through
:class:`astrocurate.stages.feature_extraction.extraction.FeatureModel`
three ways: one batch of 33, 33 batches of 1, and batches of 16 + 17. Printed: the largest
absolute difference of the features against the batch of 33, and whether the bytes are
equal. This is the measurement behind the README's reproducibility statement (the batch
size is kept within a run because these can differ at float rounding).

Usage::

    python benchmarks/batch_invariance.py                # CPU, 64-px cutouts
    python benchmarks/batch_invariance.py --device cuda --n 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from astrocurate.algorithms.backbones.registry import create_backbone  # noqa: E402
from astrocurate.algorithms.normalization import NormalizationConfig  # noqa: E402
from astrocurate.stages.feature_extraction.extraction import FeatureModel  # noqa: E402
from astrocurate.stages.feature_extraction.plan import DEFAULT_MODEL  # noqa: E402

#: (label, backbone name, create_backbone options); random init: no downloads.
BACKBONES = (
    (f"{DEFAULT_MODEL} (default)", DEFAULT_MODEL, {}),
    ("scattering-j4-renorm", "scattering-j4-renorm", {}),
    ("timm ResNet-18 (random init)", "timm:resnet18", {"pretrained": False}),
    ("timm ViT-S/16 (random init)", "timm:vit_small_patch16_224", {"pretrained": False}),
)


def compare(name: str, options: dict, raw: torch.Tensor, device: torch.device) -> tuple:
    """Return the max |difference| and byte equality of batch 1 and 16+17 against one batch."""
    size = raw.shape[-1]
    extra = {"input_size": size} if "vit" in name else {}
    backbone = create_backbone(name, **options, **extra)
    model = FeatureModel(backbone, size, NormalizationConfig()).to(device).eval()
    half = len(raw) // 2
    with torch.inference_mode():
        x = model.prepare(raw.to(device))
        whole = model(x)
        ones = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
        split = torch.cat([model(x[:half]), model(x[half:])])
    return tuple(
        (float((whole - other).abs().max()), bool(torch.equal(whole, other)))
        for other in (ones, split)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=33, help="cutouts")
    parser.add_argument("--size", type=int, default=64, help="cutout side in pixels")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    raw = torch.from_numpy(
        np.random.default_rng(0).normal(size=(args.n, args.size, args.size)).astype(np.float32)
    )
    half = args.n // 2
    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
        f"{args.n} cutouts of {args.size} px; max |difference| against one batch of {args.n}"
    )
    print(f"{'backbone':<42}{'batches of 1':>16}{f'{half} + {args.n - half}':>16}")
    for label, name, options in BACKBONES:
        (d1, same1), (d2, same2) = compare(name, options, raw, device)
        cells = [
            f"{d:.2g}" + (" (bytes)" if same else "") for d, same in ((d1, same1), (d2, same2))
        ]
        print(f"{label:<42}{cells[0]:>16}{cells[1]:>16}")


if __name__ == "__main__":
    main()
