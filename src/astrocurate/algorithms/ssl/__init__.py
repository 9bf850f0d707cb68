"""Self-supervised pretraining of an encoder on radio cutouts (the evaluation step's model).

- :mod:`~astrocurate.algorithms.ssl.encoders`: the one-channel ResNet-18 and its files;
- :mod:`~astrocurate.algorithms.ssl.augment`: batched radio augmentations (rotation by
  any angle, flips, shifts, rescaling, noise at the cutout's rms, the asinh stretch);
- :mod:`~astrocurate.algorithms.ssl.training`: SimCLR or BYOL with lightly's losses and
  heads, a budget of images seen, deterministic resume from a checkpoint.
- :mod:`~astrocurate.algorithms.ssl.config`: what a pretraining is (no torch).

Names are imported on first use, so reading a configuration needs no torch.
"""

from __future__ import annotations

from astrocurate.lazy import lazy_exports

_EXPORTS = {
    "ENCODERS": "config",
    "FEATURE_DIM": "config",
    "METHODS": "config",
    "AugmentConfig": "config",
    "PretrainConfig": "config",
    "build_encoder": "encoders",
    "embed": "training",
    "encoder_checkpoint": "encoders",
    "eval_view": "augment",
    "load_encoder": "encoders",
    "pretrain": "training",
    "radio_views": "augment",
    "resize_raw": "augment",
    "robust_rms": "augment",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
