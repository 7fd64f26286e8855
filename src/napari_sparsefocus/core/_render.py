"""Brightfield image formation: specimen layers → camera image at a stage z."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from scipy import fft as sfft

from ._psf import transfer_function_radial

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from ._optics import Optics
    from ._phantoms import Specimen

__all__ = ["Camera", "Renderer", "illumination_field"]

_LN10 = math.log(10.0)
_PHASE_REF_UM = 0.55
_WORKERS = 2


_N_FINE = 4096


@lru_cache(maxsize=16)
def _radial_index(shape: tuple[int, int], pixel_size_um: float, f_max: float) -> NDArray[np.int32]:
    """Index of each rfft-grid frequency in a fine radial table over [0, f_max].

    Frequencies at or beyond ``f_max`` point at the last entry, which is 0.
    Only rows ``0 … ny // 2`` are returned: the table is radial, so the
    negative-frequency rows mirror them (see :func:`_mul_radial`).
    """
    fy = np.abs(np.fft.fftfreq(shape[0], d=pixel_size_um)[: shape[0] // 2 + 1]).astype(np.float32)
    fx = np.fft.rfftfreq(shape[1], d=pixel_size_um).astype(np.float32)
    fr = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    pos = np.rint(fr * np.float32((_N_FINE - 2) / f_max))
    out: NDArray[np.int32] = np.minimum(pos, _N_FINE - 1).astype(np.int32)
    return out


@lru_cache(maxsize=16)
def _fine_axis(f_max: float) -> NDArray[np.float64]:
    out: NDArray[np.float64] = np.arange(_N_FINE - 1, dtype=np.float64) * (f_max / (_N_FINE - 2))
    return out


def _on_grid(
    f: NDArray[np.float64], table: NDArray[np.float64], idx: NDArray[np.int32]
) -> NDArray[np.float32]:
    """Evaluate a radial table on the grid (linear resampling to a fine table, then a gather)."""
    fine = np.zeros(_N_FINE, np.float32)
    fine[:-1] = np.interp(_fine_axis(float(f[-1])), f, table)
    out: NDArray[np.float32] = np.take(fine, idx)
    return out


def illumination_field(
    shape: tuple[int, int], n_channels: int, rng: np.random.Generator, *, strength: float = 1.0
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Return a smooth uneven Köhler illumination field around 1.

    Parameters
    ----------
    shape : tuple of int
        Image shape.
    n_channels : int
        Number of colour channels.
    rng : numpy.random.Generator
        Random source (vignetting centre, tilt, colour balance).
    strength : float
        Scales the non-uniformity (0: flat field).

    Returns
    -------
    field : ndarray
        ``(Y, X)`` relative intensity: radial vignetting (≈8–15 % at the
        corners) and a slight linear tilt.
    balance : ndarray
        ``(C,)`` colour balance of a white LED per channel.
    """
    ny, nx = shape
    y = (np.arange(ny, dtype=np.float32) - ny / 2) / max(ny, nx)
    x = (np.arange(nx, dtype=np.float32) - nx / 2) / max(ny, nx)
    cy, cx = rng.uniform(-0.1, 0.1, size=2).astype(np.float32)
    r2 = (y[:, None] - cy) ** 2 + (x[None, :] - cx) ** 2
    vig = 1.0 - strength * rng.uniform(0.15, 0.3) * r2 * 2.0
    ty, tx = (strength * rng.uniform(-0.04, 0.04, size=2)).astype(np.float32)
    field = vig * (1.0 + ty * y[:, None] + tx * x[None, :])
    balance = (1.0 + strength * rng.uniform(-0.06, 0.06, size=n_channels)).astype(np.float32)
    return field.astype(np.float32), balance


@lru_cache(maxsize=8)
def _prnu_pattern(shape: tuple[int, ...], prnu: float, seed: int) -> NDArray[np.float32]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x50524E55]))
    g = rng.standard_normal(shape, dtype=np.float32)
    g *= np.float32(prnu)
    g += np.float32(1.0)
    g.setflags(write=False)
    return g


def _mul_radial(
    spec: NDArray[np.complex64],
    t_half: NDArray[np.float32],
    out: NDArray[np.complex64],
    *,
    accumulate: bool,
) -> None:
    """``out (+)= spec * T`` where T's rows below the middle mirror ``t_half``."""
    ny = spec.shape[0]
    h = ny // 2
    lo, hi = slice(0, h + 1), slice(h + 1, ny)
    mirror = t_half[1 : ny - h][::-1]
    if accumulate:
        out[lo] += spec[lo] * t_half
        out[hi] += spec[hi] * mirror
    else:
        np.multiply(spec[lo], t_half, out=out[lo])
        np.multiply(spec[hi], mirror, out=out[hi])


class Camera:
    """Camera model: photo-electrons with shot and read noise, gain, ADC.

    Parameters
    ----------
    optics : Optics
        Supplies ``full_well_e``, ``read_noise_e`` and ``bit_depth``.
    exposure_level : float
        Fraction of the full well reached by the unobstructed background.
    prnu : float
        Photo-response non-uniformity: relative standard deviation of the
        fixed per-pixel gain pattern (CMOS sensors: 0.5–1.5 %).
    seed : int
        Seed of the camera's fixed pattern (the same camera gives the same
        pattern in every frame).

    Notes
    -----
    Shot noise is drawn from the Gaussian approximation of the Poisson
    distribution (variance = mean electrons), accurate for the thousands of
    electrons of a brightfield background and several times faster than
    Poisson sampling. Demosaicing of a Bayer sensor is not modelled: each
    channel is sampled at every pixel.
    """

    def __init__(
        self, optics: Optics, *, exposure_level: float = 0.8, prnu: float = 0.01, seed: int = 0
    ) -> None:
        if not 0.0 < exposure_level <= 1.0:
            raise ValueError(f"exposure_level must be in (0, 1], got {exposure_level}")
        if not 0.0 <= prnu < 0.2:
            raise ValueError(f"prnu must be in [0, 0.2), got {prnu}")
        self.optics = optics
        self.exposure_level = float(exposure_level)
        self.prnu = float(prnu)
        self.seed = int(seed)

    def gain_pattern(self, shape: tuple[int, ...]) -> NDArray[np.float32] | None:
        """Return the fixed per-pixel gain pattern for frames of ``shape`` (or None)."""
        if self.prnu == 0.0:
            return None
        return _prnu_pattern(tuple(int(v) for v in shape), self.prnu, self.seed)

    @property
    def dtype(self) -> type[np.unsignedinteger]:  # type: ignore[type-arg]
        """Output dtype: uint8 up to 8 bits, uint16 above."""
        return np.uint8 if self.optics.bit_depth <= 8 else np.uint16

    def expose(
        self, intensity: NDArray[np.float32], rng: np.random.Generator | None, *, noise: bool = True
    ) -> NDArray[np.unsignedinteger]:  # type: ignore[type-arg]
        """Turn relative intensity (1 = bright background) into camera counts.

        Parameters
        ----------
        intensity : ndarray
            Relative intensity, any shape.
        rng : numpy.random.Generator or None
            Noise source; required when ``noise`` is true.
        noise : bool
            Add shot and read noise.

        Returns
        -------
        ndarray
            Counts in ``[0, 2**bit_depth - 1]``.
        """
        o = self.optics
        e = np.multiply(
            intensity, np.float32(self.exposure_level * o.full_well_e), dtype=np.float32
        )
        pattern = self.gain_pattern(e.shape)
        if pattern is not None:
            e *= pattern
        if noise:
            if rng is None:
                raise ValueError("rng is required when noise=True")
            sigma = np.maximum(e, 0.0)
            sigma += np.float32(o.read_noise_e**2)
            np.sqrt(sigma, out=sigma)
            sigma *= rng.standard_normal(e.shape, dtype=np.float32)
            e += sigma
        e *= np.float32(o.max_adu / o.full_well_e)  # gain: ADU per electron
        np.rint(e, out=e)
        np.clip(e, 0, o.max_adu, out=e)
        return e.astype(self.dtype)


class Renderer:
    """Render a specimen at any stage position.

    The specimen spectra are computed once; each plane then costs one
    transfer-function lookup per (layer, channel) and one inverse FFT per
    channel.

    Parameters
    ----------
    specimen : Specimen
        Depth layers of stain concentrations and phase.
    optics : Optics
        Optical parameters; the layer depths are
        ``optics.specimen_depth_um + layer.depth_offset_um``.
    crop : tuple of slice, optional
        Region of the specimen to return (the rest is context that blurs in).

    Notes
    -----
    Image formation is the partially coherent weak-object model of
    :func:`transfer_function_radial`, exponentiated so that the in-focus
    image of a thick stain obeys Beer–Lambert exactly::

        I_c = illum_c · exp(-Σ_l [T_A(z - ·, d_l, λ_c) ⊛ (ln 10 · OD_lc)
                                 + 2 T_P(z - ·, d_l, λ_c) ⊛ φ_l · 0.55/λ_c])

    with ``OD_lc = Σ_s ε_s(λ_c) c_ls`` (stain concentrations times
    extinction). Layers at different depths are blurred by different,
    depth-dependent PSFs; cross terms between layers are neglected.
    Convolutions are circular: give the specimen a margin beyond ``crop``
    at least as large as the widest PSF (the simulator uses one patch).
    """

    def __init__(
        self,
        specimen: Specimen,
        optics: Optics,
        *,
        crop: tuple[slice, slice] | None = None,
    ) -> None:
        self.specimen = specimen
        self.optics = optics
        self.crop = crop
        self.shape = specimen.shape_px
        wl = optics.wavelengths_um
        ext = specimen.extinction(wl).astype(np.float32)  # (S, C)
        self._depths = [optics.specimen_depth_um + lay.depth_offset_um for lay in specimen.layers]
        self._absorb: list[list[NDArray[np.complex64] | None]] = []
        self._phase: list[NDArray[np.complex64] | None] = []
        for lay in specimen.layers:
            stains = np.asarray(lay.stains, dtype=np.float32)
            per_ch: list[NDArray[np.complex64] | None] = []
            if float(stains.max(initial=0.0)) <= 0.0:
                per_ch = [None] * len(wl)
            else:
                w = ext * np.float32(_LN10)  # (S, C)
                if stains.shape[0] <= len(wl):
                    # fewer stains than channels: transform each stain, combine spectra
                    spectra = sfft.rfft2(stains, axes=(-2, -1), workers=_WORKERS)  # (S, Y, X//2+1)
                    for c in range(len(wl)):
                        acc = spectra[0] * w[0, c]
                        for k in range(1, len(w)):
                            acc += spectra[k] * w[k, c]
                        per_ch.append(acc.astype(np.complex64, copy=False))
                else:
                    # more stains than channels: combine optical density first (one FFT per channel)
                    for c in range(len(wl)):
                        od = stains[0] * w[0, c]
                        for k in range(1, len(w)):
                            od += stains[k] * w[k, c]
                        per_ch.append(
                            sfft.rfft2(od, workers=_WORKERS).astype(np.complex64, copy=False)
                        )
            self._absorb.append(per_ch)
            ph = np.asarray(lay.phase_rad, dtype=np.float32)
            if float(np.abs(ph).max(initial=0.0)) > 0.0:
                self._phase.append(
                    sfft.rfft2(ph, workers=_WORKERS).astype(np.complex64, copy=False)
                )
            else:
                self._phase.append(None)

    def optical_density_exponent(self, z_um: float) -> NDArray[np.float32]:
        """Return the exponent ``-ln(I / illum)`` per channel, ``(C, Y, X)``.

        Parameters
        ----------
        z_um : float
            Stage position (µm).

        Returns
        -------
        ndarray
            Non-negative where absorption dominates; cropped to ``crop``.
        """
        o = self.optics
        px = o.pixel_size_um
        ny, nx = self.shape
        if self.crop is not None:
            ny = len(range(*self.crop[0].indices(ny)))
            nx = len(range(*self.crop[1].indices(nx)))
        out = np.empty((o.n_channels, ny, nx), np.float32)
        spec_shape = (self.shape[0], self.shape[1] // 2 + 1)
        acc = np.empty(spec_shape, np.complex64)
        for c, wl in enumerate(o.wavelengths_um):
            started = False
            for l_i, depth in enumerate(self._depths):
                a = self._absorb[l_i][c]
                p = self._phase[l_i]
                if a is None and p is None:
                    continue
                f, ta, tp = transfer_function_radial(z_um, depth, wl, o)
                idx = _radial_index(self.shape, px, float(f[-1]))
                if a is not None:
                    _mul_radial(a, _on_grid(f, ta, idx), acc, accumulate=started)
                    started = True
                if p is not None:
                    t = _on_grid(f, tp, idx)
                    t *= np.float32(2.0 * _PHASE_REF_UM / wl)
                    _mul_radial(p, t, acc, accumulate=started)
                    started = True
            if not started:
                out[c] = 0.0
                continue
            img = sfft.irfft2(acc, s=self.shape, workers=_WORKERS)
            out[c] = img[self.crop] if self.crop is not None else img
        return out

    def intensity(
        self,
        z_um: float,
        illumination: tuple[NDArray[np.float32], NDArray[np.float32]] | None = None,
    ) -> NDArray[np.float32]:
        """Return the relative intensity ``(C, Y, X)`` (1 = bright background).

        Parameters
        ----------
        z_um : float
            Stage position (µm).
        illumination : tuple of ndarray, optional
            ``(field (Y, X), balance (C,))`` from :func:`illumination_field`
            (default flat).

        Returns
        -------
        ndarray
            Intensity in [0, ~1.2].
        """
        e = self.optical_density_exponent(z_um)
        np.negative(e, out=e)
        np.exp(e, out=e)
        if illumination is not None:
            fld, balance = illumination
            for c in range(e.shape[0]):
                e[c] *= fld * balance[c]
        return e
