"""What a pretraining is: its method, budget and augmentations (no torch: runs are keyed on it).

The code that pretrains is :mod:`.training`, the augmentations :mod:`.augment`, the
encoders :mod:`.encoders`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from astrocurate.algorithms.normalization_config import NormalizationConfig
from astrocurate.errors import InvalidArgumentError
from astrocurate.validation import check_choice, check_int, check_real

__all__ = ["ENCODERS", "FEATURE_DIM", "METHODS", "AugmentConfig", "PretrainConfig"]

#: The encoders a pretraining can train, and the length of their feature vectors.
ENCODERS: tuple[str, ...] = ("resnet18",)
FEATURE_DIM: dict[str, int] = {"resnet18": 512}
METHODS: tuple[str, ...] = ("simclr", "byol")
#: ``auto``: bf16 autocast on CUDA, float32 on the CPU.
PRETRAIN_PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class AugmentConfig:
    """How views are drawn and images prepared.

    Attributes
    ----------
    image_size : int
        Side of the views, in pixels.
    max_shift : float
        Largest shift, as a fraction of the side.
    scale_range : tuple of float
        Range of the zoom factor (above 1 zooms in).
    flip : bool
        Random horizontal flip (with any rotation, this gives every mirror image).
    max_noise : float
        Added noise sigma is drawn in ``[0, max_noise]`` times the cutout's rms.
    normalization : NormalizationConfig
        The stretch applied last (default the feature step's asinh).
    """

    image_size: int = 64
    max_shift: float = 0.0625
    scale_range: tuple[float, float] = (0.9, 1.1)
    flip: bool = True
    max_noise: float = 1.0
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)

    def validate(self) -> AugmentConfig:
        """Return ``self``; raise a one-line error naming a bad field."""
        check_int("--image-size", self.image_size, 16)  # ResNet-18 downsamples 32x
        check_real("max_shift", self.max_shift, 0.0, 0.5, low_open=False)
        low, high = (check_real("scale_range", s, 0.0) for s in self.scale_range)
        if low > high:
            raise InvalidArgumentError(
                f"scale_range={self.scale_range}: expected (low, high) with low <= high"
            )
        check_real("max_noise", self.max_noise, 0.0, low_open=False)
        self.normalization.validate()
        return self


@dataclass(frozen=True)
class PretrainConfig:
    """One pretraining: method, model, budget, optimiser, seed and augmentations.

    Attributes
    ----------
    method : {'simclr', 'byol'}
    encoder : str
        One of :data:`~astrocurate.algorithms.ssl.encoders.ENCODERS`.
    images_seen : int
        Budget in images; steps = ceil(images_seen / batch).
    batch_size : int
        Global batch (at most the number of images).
    learning_rate, weight_decay : float
        AdamW; linear warm-up over :data:`WARMUP_SHARE` of the steps, then cosine to 0.
    temperature : float
        SimCLR's NT-Xent temperature.
    momentum : tuple of float
        BYOL's momentum, from the first to the last step (cosine schedule).
    projection_dim : int
        Output of the projection head.
    seed : int
    augment : AugmentConfig
    precision : {'auto', 'fp32', 'bf16'}
        What the networks compute in: ``auto`` is bf16 autocast on CUDA and float32 on
        the CPU; ``bf16`` autocasts on the CPU too where it has bf16 instructions
        (:mod:`~astrocurate.algorithms.precision`).
    """

    method: str = "simclr"
    encoder: str = "resnet18"
    images_seen: int = 2048
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.5
    momentum: tuple[float, float] = (0.99, 1.0)
    projection_dim: int = 128
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    precision: str = "auto"

    def validate(self) -> PretrainConfig:
        """Return ``self``; raise a one-line error naming a bad option."""
        check_choice("--method", self.method, METHODS)
        check_choice("encoder", self.encoder, tuple(FEATURE_DIM))
        check_int("--images-seen", self.images_seen, 1)
        check_int("--batch-size", self.batch_size, 2)
        check_real("--learning-rate", self.learning_rate, 0.0)
        check_real("weight_decay", self.weight_decay, 0.0, low_open=False)
        check_real("temperature", self.temperature, 0.0)
        for value in self.momentum:
            check_real("momentum", value, 0.0, 1.0, low_open=False, high_open=False)
        check_int("projection_dim", self.projection_dim, 1)
        check_int("seed", self.seed, 0)
        check_choice("--precision", self.precision, PRETRAIN_PRECISIONS)
        self.augment.validate()
        return self

    def batch(self, n_images: int) -> int:
        """Return the batch size for ``n_images`` images (never more than there are)."""
        return min(self.batch_size, n_images)

    def total_steps(self, n_images: int) -> int:
        """Return the optimiser steps of the budget."""
        return math.ceil(self.images_seen / self.batch(n_images))

    def steps_per_epoch(self, n_images: int) -> int:
        """Return the steps of one pass over the images (a checkpoint follows each)."""
        return math.ceil(n_images / self.batch(n_images))
