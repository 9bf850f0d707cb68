"""Augmentations for radio cutouts, batched: one affine resampling, noise, the asinh stretch.

A view of a cutout is the cutout rotated by any angle, flipped, shifted and rescaled a
little (all four in one ``affine_grid`` + ``grid_sample``, zero padding: the background
of a radio map), plus Gaussian noise of up to ``max_noise`` times the cutout's rms, then
stretched like step 3 (:func:`astrocurate.algorithms.normalization.normalize`). No colour
jitter: a radio map has one channel and its intensities mean something. Every random
number comes from the caller's generator (on a GPU the noise from a seed it draws), so a
training step is reproducible from its seed on one kind of device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812

from astrocurate.algorithms.normalization import normalize
from astrocurate.algorithms.ssl.config import AugmentConfig

_RMS_FLOOR = 1e-12


def robust_rms(images: torch.Tensor) -> torch.Tensor:
    """Return 1.4826 x the median absolute deviation of each image (NaN ignored), shape (N,)."""
    flat = images.reshape(len(images), -1).float()
    median = flat.nanmedian(dim=1, keepdim=True).values
    mad = (flat - median).abs().nanmedian(dim=1).values
    return torch.nan_to_num(1.4826 * mad, nan=_RMS_FLOOR).clamp_min(_RMS_FLOOR)


def resize_raw(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize raw pixels (N, H, W) to (N, size, size), area-averaged; NaN become 0."""
    images = torch.nan_to_num(images.float(), nan=0.0)
    if images.shape[-2:] == (size, size):
        return images
    mode = "area" if size < images.shape[-1] else "bilinear"
    return F.interpolate(images[:, None], size=(size, size), mode=mode)[:, 0]


def radio_views(
    images: torch.Tensor,
    rms: torch.Tensor,
    config: AugmentConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """Return one random view of each image, shape (B, 1, image_size, image_size).

    Parameters
    ----------
    images : Tensor, shape (B, S, S)
        Raw pixels (any device).
    rms : Tensor, shape (B,)
        Noise rms of each image, in its units.
    config : AugmentConfig
    generator : torch.Generator
        A CPU generator: the only source of randomness (off the CPU the noise is drawn on
        the device, seeded from it).
    """
    n = len(images)
    size = (n, 1, config.image_size, config.image_size)
    draw = torch.rand((n, 6), generator=generator, dtype=torch.float64)
    noise = _noise(size, images.device, generator)
    angle = draw[:, 0] * 2 * math.pi
    low, high = config.scale_range
    scale = low + (high - low) * draw[:, 1]
    mirror = torch.where(draw[:, 2] < 0.5, -1.0, 1.0) if config.flip else torch.ones(n)
    shift = (draw[:, 3:5] * 2 - 1) * config.max_shift * 2  # grid units span 2 per side
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * mirror, -sin, shift[:, 0]], dim=1),
            torch.stack([sin * mirror, cos, shift[:, 1]], dim=1),
        ],
        dim=1,
    ).to(images.device, torch.float32, non_blocking=True)
    grid = F.affine_grid(theta, size, align_corners=False)
    views = F.grid_sample(images[:, None].float(), grid, padding_mode="zeros", align_corners=False)
    sigma = (draw[:, 5] * config.max_noise).to(images.device, torch.float32, non_blocking=True)
    views = views + noise * (sigma * rms.float())[:, None, None, None]
    return normalize(views[:, 0], config.normalization)[:, None]


def _noise(size: tuple[int, ...], device: torch.device, generator: torch.Generator) -> torch.Tensor:
    """Return standard normal noise of ``size`` on ``device``, from ``generator`` or its seed.

    Off the CPU the noise is drawn on the device, by a generator that ``generator`` seeds:
    drawing it on the host (9 ms per view of 128 images of 128 px on two cores) and copying
    it over would take the host longer than the device takes its training step.
    """
    if device.type == "cpu":
        return torch.randn(size, generator=generator)
    seed = int(torch.randint(1 << 62, (1,), generator=generator))
    on_device = torch.Generator(device).manual_seed(seed)
    return torch.randn(size, generator=on_device, device=device)


def eval_view(images: torch.Tensor, config: AugmentConfig) -> torch.Tensor:
    """Return the unaugmented view of each image: resized and stretched, (B, 1, size, size)."""
    resized = resize_raw(images, config.image_size)
    return normalize(resized, config.normalization)[:, None]
