"""The batched scattering transform against kymatio's own (the reference), coefficient by
coefficient, and the backbone's features with either transform."""

from __future__ import annotations

import functools

import pytest
import torch

from astrocurate.algorithms.backbones.registry import create_backbone
from astrocurate.algorithms.backbones.scattering_spec import _filter_labels, _scattering_paths
from astrocurate.algorithms.backbones.scattering_transform import (
    Scattering2D,
    padded_shape,
    scattering_path_count,
)
from astrocurate.errors import InvalidArgumentError

#: Largest |ours - kymatio| allowed, as a fraction of the largest |coefficient| of the same
#: image and path: a few float32 roundings (2**-24 = 6e-8) summed over the FFT stages.
RTOL = 2e-6


@functools.cache
def kymatio_transform(J: int, shape: tuple[int, int], L: int = 8) -> torch.nn.Module:  # noqa: N803
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    return ScatteringTorch2D(J=J, shape=shape, L=L)


@functools.cache
def our_transform(J: int, shape: tuple[int, int], L: int = 8) -> Scattering2D:  # noqa: N803
    return Scattering2D(J, shape, L)


def noise_images(n: int, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def sky_images(n: int, shape: tuple[int, int], seed: int = 1) -> torch.Tensor:
    """Normalised cutouts: an elliptical galaxy, point sources and faint noise on a flat sky."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(
        torch.arange(shape[0], dtype=torch.float32),
        torch.arange(shape[1], dtype=torch.float32),
        indexing="ij",
    )
    images = 0.05 + 0.01 * torch.randn(n, *shape, generator=gen)
    for i in range(n):
        cy, cx = torch.rand(2, generator=gen) * torch.tensor(shape) * 0.5 + torch.tensor(shape) / 4
        angle = torch.rand(1, generator=gen) * torch.pi
        u = (xx - cx) * torch.cos(angle) + (yy - cy) * torch.sin(angle)
        v = -(xx - cx) * torch.sin(angle) + (yy - cy) * torch.cos(angle)
        images[i] += 0.8 * torch.exp(-torch.sqrt((u / 6) ** 2 + (v / 2.5) ** 2))
        for py, px in torch.rand(3, 2, generator=gen) * torch.tensor(shape):
            images[i] += 0.3 * torch.exp(-((yy - py) ** 2 + (xx - px) ** 2) / 2.0)
    return images.clamp(0, 1)


def assert_matches_kymatio(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert ours.shape == reference.shape and ours.dtype == torch.float32
    scale = reference.abs().amax(dim=(-2, -1), keepdim=True)
    worst = ((ours - reference).abs() / scale).max().item()
    assert worst <= RTOL, f"largest difference {worst:.2e} of the path's largest coefficient"


CASES = [(3, (64, 64)), (4, (64, 64)), (3, (128, 128)), (4, (128, 128)), (3, (48, 80))]


@pytest.mark.parametrize("images", [noise_images, sky_images], ids=["noise", "sky"])
@pytest.mark.parametrize(("J", "shape"), CASES, ids=lambda c: str(c).replace(", ", "x"))
def test_coefficients_equal_kymatio(J: int, shape: tuple[int, int], images) -> None:  # noqa: N803
    x = images(3, shape)
    with torch.inference_mode():
        assert_matches_kymatio(our_transform(J, shape)(x), kymatio_transform(J, shape)(x))


def test_coefficients_equal_kymatio_with_four_angles() -> None:
    x = sky_images(2, (64, 64))
    with torch.inference_mode():
        ours = Scattering2D(3, (64, 64), 4)(x)
        assert_matches_kymatio(ours, kymatio_transform(3, (64, 64), 4)(x))


@pytest.mark.parametrize(("J", "L"), [(3, 8), (4, 8), (2, 4)])
def test_channel_count_and_size(J: int, L: int) -> None:  # noqa: N803
    transform = our_transform(J, (64, 64), L)
    out = transform(torch.zeros(1, 64, 64))
    side = padded_shape((64, 64), J)[0] // 2**J - 2
    paths = _scattering_paths(_filter_labels(J, L))
    assert out.shape == (1, scattering_path_count(J, L), side, side) and len(paths) == out.shape[1]


def test_padded_shape_is_kymatios() -> None:
    from kymatio.scattering2d.utils import compute_padding

    for scales, shape in [(3, (64, 64)), (4, (64, 96)), (2, (30, 17))]:
        assert padded_shape(shape, scales) == compute_padding(*shape, scales)


def test_blank_images_give_zeros() -> None:
    out = our_transform(4, (64, 64))(torch.zeros(2, 64, 64))
    assert torch.count_nonzero(out) == 0


def test_an_image_does_not_depend_on_the_chunking() -> None:
    x = sky_images(5, (64, 64))
    transform = Scattering2D(3, (64, 64))
    whole = transform(x)
    transform.cpu_chunk = 2
    torch.testing.assert_close(transform(x), whole, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(transform(x[3:4]), whole[3:4], rtol=1e-6, atol=1e-7)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="expected \\(64, 64\\)"):
        our_transform(3, (64, 64))(torch.zeros(1, 32, 32))
    with pytest.raises(InvalidArgumentError, match="too small for J=3"):
        Scattering2D(3, (8, 64))


@pytest.mark.parametrize(
    "name", ["scattering-j4-rot-renorm-max", "scattering-spatial"], ids=["default", "spatial"]
)
def test_backbone_features_equal_those_with_kymatios_transform(name: str) -> None:
    ours, theirs = create_backbone(name), create_backbone(name)
    theirs.module.transform = kymatio_transform(theirs.module.spec.J, (64, 64))
    x = sky_images(4, (64, 64))[:, None]
    with torch.inference_mode():
        torch.testing.assert_close(ours.module(x), theirs.module(x), rtol=0, atol=5e-6)


def test_the_smallest_input_a_scattering_backbone_accepts_matches_kymatio() -> None:
    """J=4 at 32 px (2 * 2**J, the smallest side build_scattering accepts): padded to 64."""
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    from astrocurate.algorithms.backbones.scattering_transform import Scattering2D

    images = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(4))
    ours = Scattering2D(4, (32, 32), 8)(images)
    theirs = ScatteringTorch2D(J=4, shape=(32, 32), L=8)(images)
    assert ours.shape == theirs.shape
    scale = theirs.abs().amax(dim=(-2, -1), keepdim=True)
    assert ((ours - theirs).abs() / scale).max() < 2e-6
