"""A batched 2-D wavelet scattering transform (orders 0, 1, 2) with kymatio's filters.

It computes the same coefficients as kymatio's ``Scattering2D`` (same Morlet filter
bank, reflective padding, Fourier-domain subsampling, path order and unpadding; equal to
float32 rounding, see ``tests/test_scattering_transform.py``) but works on whole groups
of paths at once: every band-pass filter of a scale is applied by broadcasting, complex
numbers are complex tensors, and the final low-pass, a subsampled convolution with a
separable Gaussian, is two small matrix products in space instead of a forward FFT, a
Fourier-domain product and an inverse FFT per path.

For an image ``x`` padded to ``(Mp, Np)``, with wavelets ``psi_{j, theta}``, the
low-pass ``phi_J`` and ``|.|`` the complex modulus, the output channels are, in order::

    x * phi_J                                         order 0
    |x * psi_{j1, t1}| * phi_J                        order 1, by (j1, t1)
    ||x * psi_{j1, t1}| * psi_{j2, t2}| * phi_J       order 2, by (j1, t1, j2, t2), j2 > j1

each convolution followed by the largest subsampling that keeps its band (``2**j`` after
``psi_j``, ``2**J`` in all after ``phi_J``), and one coefficient of padding cut from every
side of the ``(Mp / 2**J, Np / 2**J)`` result.

On the CPU the images go through in chunks of :attr:`Scattering2D.cpu_chunk`, so that the
``(chunk, L, L, m, n)`` order-2 arrays stay in cache; an image's coefficients do not
depend on the other images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from astrocurate.errors import InvalidArgumentError

__all__ = ["NEGLIGIBLE", "Scattering2D", "padded_shape", "scattering_path_count"]

#: Fourier blocks of a wavelet below this fraction of its peak are skipped (float32's
#: unit roundoff: the rounding noise of kymatio's float32 filters is of this size).
NEGLIGIBLE = 2.0**-24


def padded_shape(shape: tuple[int, int], n_scales: int) -> tuple[int, int]:
    """Return the side lengths kymatio pads an image of ``shape`` to for ``J`` scales.

    The padded side is a multiple of ``2**J`` with at least ``2**J`` px more than the
    image, so the widest filters see reflected pixels rather than the opposite edge.
    """
    step = 2**n_scales
    return tuple(((side + step) // step + 1) * step for side in shape)  # type: ignore[return-value]


def scattering_path_count(n_scales: int, n_angles: int) -> int:
    """Return the number of output channels: ``1 + J L + L**2 J (J - 1) / 2``."""
    return 1 + n_scales * n_angles + n_angles**2 * n_scales * (n_scales - 1) // 2


def _aliased_blocks(filters: torch.Tensor, factor: int) -> tuple[torch.Tensor, list]:
    """Lay real Fourier filters out for :func:`_filter_periodise`.

    Subsampling by ``factor`` in space is, in Fourier, the average of the ``factor**2``
    aliased blocks of the spectrum (periodisation, as kymatio does): a filtered spectrum
    ``(m, n)`` becomes ``(m / factor, n / factor)``.

    Parameters
    ----------
    filters : torch.Tensor
        ``(F, m, n)`` real filters in Fourier.
    factor : int
        Subsampling step the filtered spectra get.

    Returns
    -------
    blocks : torch.Tensor
        ``(K, F, m / factor, n / factor, 2)``: the ``K`` aliased blocks that matter, each
        divided by ``factor**2`` (the average) and repeated for the real and imaginary
        parts.
    offsets : list of (int, int)
        Block ``(a, b)`` of ``blocks[k]``: frequencies ``(a m / factor + p, b n / factor +
        q)``. Blocks in which every filter stays below :data:`NEGLIGIBLE` times its peak
        (the float32 rounding of kymatio's filter construction) are left out.
    """
    count, m, n = filters.shape
    grid = filters.reshape(count, factor, m // factor, factor, n // factor)
    grid = grid.permute(1, 3, 0, 2, 4) / factor**2  # (a, b, F, p, q)
    peak = grid.abs().amax(dim=(0, 1, 3, 4))  # (F,)
    large = (grid.abs().amax(dim=(3, 4)) > NEGLIGIBLE * peak).any(dim=-1)  # (a, b)
    offsets = [(a, b) for a in range(factor) for b in range(factor) if large[a, b]]
    blocks = torch.stack([grid[a, b] for a, b in offsets])
    return blocks[..., None].expand(*blocks.shape, 2).contiguous(), offsets


def _filter_periodise(spectrum: torch.Tensor, blocks: torch.Tensor, offsets: list) -> torch.Tensor:
    """Multiply spectra by every filter and subsample the products through aliasing.

    The average of the aliased blocks of ``spectrum[:, :, None] * filters``, without
    storing the full products: the blocks are multiplied and summed one by one.

    Parameters
    ----------
    spectrum : torch.Tensor
        ``(B, C, m, n)`` complex spectra.
    blocks, offsets : torch.Tensor, list of (int, int)
        ``(K, F, m / factor, n / factor, 2)`` filters and where they lie, from
        :func:`_aliased_blocks`.

    Returns
    -------
    torch.Tensor
        ``(B, C, F, m / factor, n / factor)`` complex.
    """
    batch, channels, m, n = spectrum.shape
    rows, cols = blocks.shape[2:4]
    # block (a, b) of every spectrum, as a strided view (B, C, 1, rows, cols, 2)
    pairs = torch.view_as_real(spectrum).reshape(
        batch, channels, 1, m // rows, rows, n // cols, cols, 2
    )
    (a, b), *rest = offsets
    out = pairs[:, :, :, a, :, b] * blocks[0]
    for k, (a, b) in enumerate(rest, start=1):
        out.addcmul_(pairs[:, :, :, a, :, b], blocks[k])
    return torch.view_as_complex(out)


def _modulus(z: torch.Tensor) -> torch.Tensor:
    """Return ``|z| = sqrt(re**2 + im**2)`` (twice as fast as ``torch.abs`` on complex)."""
    return z.real.square().addcmul_(z.imag, z.imag).sqrt_()


def _lowpass_matrix(kernel: torch.Tensor, factor: int, keep: slice) -> torch.Tensor:
    """Return ``A`` with ``(A @ u)[p] = sum_x kernel[(factor p - x) mod m] u[x]``.

    Parameters
    ----------
    kernel : torch.Tensor
        ``(m,)`` one-dimensional factor of the spatial low-pass filter.
    factor : int
        Subsampling step.
    keep : slice
        Output rows kept (the unpadding).

    Returns
    -------
    torch.Tensor
        ``(rows, m)``, in the kernel's dtype.
    """
    m = kernel.shape[0]
    rows = torch.arange(0, m, factor)[keep]
    return kernel[(rows[:, None] - torch.arange(m)[None, :]) % m]


def _separable_lowpass(fourier: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a real, even low-pass filter given in Fourier as ``(m, n)`` into 1-D factors.

    kymatio's ``phi`` is an isotropic Gaussian (a product of a row and a column
    Gaussian), so its spatial form has rank one up to float32 rounding; the two
    factors, in float64, reproduce it.

    Raises
    ------
    ValueError
        If the filter is not separable (a filter bank other than kymatio's Gaussian).
    """
    spatial = torch.fft.ifft2(fourier.double()).real
    u, s, vh = torch.linalg.svd(spatial)
    if s[1] > 1e-5 * s[0]:
        raise ValueError(f"low-pass filter is not separable: singular values {s[:3].tolist()}")
    sign = torch.sign(u[0, 0])
    return sign * u[:, 0] * s[0].sqrt(), sign * vh[0] * s[0].sqrt()


class Scattering2D(nn.Module):
    """2-D scattering transform of order 2 of ``(B, M, N)`` images into ``(B, P, h, w)``.

    ``P = 1 + J L + L**2 J (J - 1) / 2`` channels in kymatio's order and
    ``(h, w) = (Mp / 2**J - 2, Np / 2**J - 2)`` with ``(Mp, Np)`` = :func:`padded_shape`;
    equal to kymatio's ``Scattering2D(J, shape, L)`` output to float32 rounding.

    Building it computes kymatio's filter bank (about a second); the filters are buffers,
    so ``.to(device)`` moves them.

    Attributes
    ----------
    cpu_chunk, device_chunk : int
        Images per pass on the CPU (small, for the caches) and on other devices.

    Parameters
    ----------
    n_scales : int
        ``J``: dyadic scales of the wavelets.
    shape : tuple of int
        ``(M, N)`` of the input images.
    n_angles : int
        ``L``: orientations of the wavelets over 180 degrees.
    """

    def __init__(self, n_scales: int, shape: tuple[int, int], n_angles: int = 8) -> None:
        super().__init__()
        self.J, self.L, self.shape = n_scales, n_angles, tuple(shape)
        self.padded = padded_shape(self.shape, n_scales)
        pads = [p - s for p, s in zip(self.padded, self.shape, strict=True)]
        if any((pad + 1) // 2 >= side for pad, side in zip(pads, self.shape, strict=True)):
            raise InvalidArgumentError(
                f"shape={self.shape} is too small for J={n_scales}: reflecting it into "
                f"{self.padded} needs more pixels on a side than it has"
            )
        # F.pad order: (left, right, top, bottom); the odd pixel goes to the end
        self.padding = (pads[1] // 2, (pads[1] + 1) // 2, pads[0] // 2, (pads[0] + 1) // 2)
        self.cpu_chunk, self.device_chunk = 16, 512
        self._offsets: dict[tuple[int, int], list] = {}
        self._register_filters()

    def _register_filters(self) -> None:
        from kymatio.scattering2d.filter_bank import filter_bank

        J, L = self.J, self.L  # noqa: N806
        bank = filter_bank(*self.padded, J, L)
        for j in range(J):
            levels = bank["psi"][j * L]["levels"]
            for level in range(len(levels)):
                stack = [bank["psi"][j * L + t]["levels"][level] for t in range(L)]
                filters = torch.from_numpy(np.stack(stack)).float()
                blocks, self._offsets[j, level] = _aliased_blocks(filters, 2 ** (j - level))
                self.register_buffer(f"psi_{j}_{level}", blocks)
        keep = slice(1, -1)
        for level, phi in enumerate(bank["phi"]["levels"]):
            rows, cols = _separable_lowpass(torch.as_tensor(phi))
            factor = 2 ** (J - level)
            self.register_buffer(f"rows_{level}", _lowpass_matrix(rows, factor, keep).float())
            self.register_buffer(f"cols_{level}", _lowpass_matrix(cols, factor, keep).float().T)

    def _psi(self, scale: int, level: int) -> tuple[torch.Tensor, list]:
        """Band-pass filters of ``scale`` at resolution ``level`` (:func:`_aliased_blocks`)."""
        return getattr(self, f"psi_{scale}_{level}"), self._offsets[scale, level]

    def _lowpass(self, images: torch.Tensor, level: int) -> torch.Tensor:
        """Convolve ``(..., m, n)`` real images at ``level`` with ``phi``, subsample, unpad."""
        return getattr(self, f"rows_{level}") @ images @ getattr(self, f"cols_{level}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the ``(B, P, h, w)`` float32 coefficients of ``(B, M, N)`` images."""
        if tuple(x.shape[-2:]) != self.shape:
            raise InvalidArgumentError(
                f"images of shape {tuple(x.shape[-2:])}, expected {self.shape}"
            )
        chunk = self.cpu_chunk if x.device.type == "cpu" else self.device_chunk
        chunks = [self._scatter(part) for part in x.float().split(chunk)]
        return torch.cat(chunks) if len(chunks) > 1 else chunks[0]

    def _scatter(self, x: torch.Tensor) -> torch.Tensor:
        """Return the coefficients of one chunk of images (see the module's docstring)."""
        padded = F.pad(x[:, None], self.padding, mode="reflect")[:, 0]
        spectrum = torch.fft.fft2(padded)
        order0 = [self._lowpass(padded, 0)[:, None]]
        order1, order2 = [], []
        for j1 in range(self.J):
            wave = _filter_periodise(spectrum[:, None], *self._psi(j1, 0))[:, 0]
            modulus = _modulus(torch.fft.ifft2(wave))  # (B, L, m1, n1)
            order1.append(self._lowpass(modulus, j1))
            if j1 == self.J - 1:
                continue
            spectrum1 = torch.fft.fft2(modulus)
            per_j1 = []
            for j2 in range(j1 + 1, self.J):
                wave = _filter_periodise(spectrum1, *self._psi(j2, j1))
                per_j1.append(self._lowpass(_modulus(torch.fft.ifft2(wave)), j2))
            order2.append(torch.cat(per_j1, dim=2).flatten(1, 2))
        return torch.cat(order0 + order1 + order2, dim=1)
