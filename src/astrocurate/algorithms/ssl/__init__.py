"""Self-supervised pretraining of an encoder on radio cutouts (the evaluation step's model).

- :mod:`~astrocurate.algorithms.ssl.encoders`: the one-channel ResNet-18 and its files;
- :mod:`~astrocurate.algorithms.ssl.augment`: batched radio augmentations (rotation by
  any angle, flips, shifts, rescaling, noise at the cutout's rms, the asinh stretch);
- :mod:`~astrocurate.algorithms.ssl.pretrain`: SimCLR or BYOL with lightly's losses and
  heads, a budget of images seen, deterministic resume from a checkpoint.
"""

from astrocurate.algorithms.ssl.augment import (
    AugmentConfig,
    eval_view,
    radio_views,
    resize_raw,
    robust_rms,
)
from astrocurate.algorithms.ssl.encoders import (
    ENCODERS,
    FEATURE_DIM,
    build_encoder,
    encoder_checkpoint,
    load_encoder,
)
from astrocurate.algorithms.ssl.pretrain import METHODS, PretrainConfig, embed, pretrain

__all__ = [
    "ENCODERS",
    "FEATURE_DIM",
    "METHODS",
    "AugmentConfig",
    "PretrainConfig",
    "build_encoder",
    "embed",
    "encoder_checkpoint",
    "eval_view",
    "load_encoder",
    "pretrain",
    "radio_views",
    "resize_raw",
    "robust_rms",
]
