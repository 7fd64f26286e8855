"""Procedural brightfield specimens: Pap-stained cytology smears and H&E sections.

A specimen is a stack of thin depth layers. Each layer holds stain
*concentration* maps (optical density per unit extinction) and a phase map;
the renderer blurs every layer with the point-spread function of its depth
and forms the camera image by Beer–Lambert absorption. Nothing here is read
from disk: every specimen is drawn from a seeded random generator, so the same
arguments always give the same arrays and training and test specimens never
share a random stream.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import ArrayLike, NDArray

    F32 = NDArray[np.float32]

__all__ = [
    "EXTINCTION_FLOOR",
    "IMPORTANCE_THRESHOLD",
    "KIND_CODES",
    "SPARSITY_CODES",
    "SPARSITY_LEVELS",
    "SPECIMEN_KINDS",
    "SPLITS",
    "SPLIT_CODES",
    "STAIN_BANDS_UM",
    "Specimen",
    "SpecimenLayer",
    "content_patch_range",
    "grid_shape",
    "make_specimen",
]

SPARSITY_LEVELS: Final = ("dense", "sparse", "extremely_sparse", "empty")
SPECIMEN_KINDS: Final = ("cell", "tissue")
SPLITS: Final = ("train", "test")

#: Seed-stream codes: ``SeedSequence([seed, SPLIT_CODES[split], KIND_CODES[kind],
#: SPARSITY_CODES[sparsity]])`` makes train and test streams disjoint by construction.
SPLIT_CODES: Final = {"train": 1, "test": 2}
KIND_CODES: Final = {"cell": 1, "tissue": 2}
SPARSITY_CODES: Final = {"dense": 1, "sparse": 2, "extremely_sparse": 3, "empty": 4}

#: A grid cell is content-rich (``W*_ij = 1``) iff at least this fraction of its
#: area is covered by cells or tissue: 2 % of a 224 px patch is ≈ 1000 px², about
#: one small nucleus (6 µm across at 0.1725 µm/px).
IMPORTANCE_THRESHOLD: Final = 0.02

#: Absorption band of each stain: (peak wavelength, Gaussian sigma), in µm.
STAIN_BANDS_UM: Final = {
    "hematoxylin": (0.585, 0.075),
    "eosin": (0.525, 0.035),
    "orange_g": (0.480, 0.040),
    "light_green": (0.630, 0.045),
}
#: Flat absorption floor of every stain, as a fraction of its peak extinction.
EXTINCTION_FLOOR: Final = 0.02

_CELL_STAINS: Final = ("hematoxylin", "orange_g", "eosin", "light_green")
_TISSUE_STAINS: Final = ("hematoxylin", "eosin")
_HEM, _OG, _EOS, _LG = 0, 1, 2, 3  # stain indices of the Pap stack
_T_HEM, _T_EOS = 0, 1  # stain indices of the H&E stack

#: Non-chosen grid cells may receive at most this fraction of the importance
#: threshold as spill-over from objects placed in chosen neighbours.
_SPILL_FRACTION: Final = 0.4
_MAX_ATTEMPTS: Final = 6
_COARSE: Final = 8  # down-sampling factor of the smooth tissue fields
_CHUNK: Final = 64  # rows per chunk of the full-frame tissue pipeline (multiple of _COARSE)


@dataclass(frozen=True, eq=False)
class SpecimenLayer:
    """One thin depth layer of a specimen.

    Attributes
    ----------
    depth_offset_um : float
        Depth of the layer relative to the specimen mid-plane; positive is
        deeper, i.e. farther from the coverslip and the objective.
    stains : ndarray
        ``(S, Y, X)`` float32 ≥ 0: concentration of each stain (optical
        density per unit extinction; see :meth:`Specimen.extinction`).
    phase_rad : ndarray
        ``(Y, X)`` float32 phase delay in radians at 0.55 µm; the renderer
        scales it by ``0.55 / wavelength``.
    """

    depth_offset_um: float
    stains: NDArray[np.float32]
    phase_rad: NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class Specimen:
    """A procedural brightfield specimen: stain and phase maps in depth layers.

    Attributes
    ----------
    kind : str
        ``"cell"`` (Pap-stained cytology smear) or ``"tissue"`` (H&E section).
    sparsity : str
        Requested sparsity level (one of :data:`SPARSITY_LEVELS`).
    seed : int
        Seed within the split's stream.
    split : str
        ``"train"`` or ``"test"``.
    pixel_size_um : float
        Sample-plane pixel size.
    shape_px : tuple of int
        ``(Y, X)`` size of every map.
    patch_px : int
        Side of one grid patch (224 px).
    layers : tuple of SpecimenLayer
        2–4 depth layers, ordered from the coverslip side (most negative
        offset) to the deepest.
    stain_names : tuple of str
        Name of each stain, in the order of the ``stains`` axis.
    stain_peaks_um : tuple of float
        Absorption peak wavelength of each stain.
    stain_widths_um : tuple of float
        Gaussian width (sigma) of each stain's absorption band.
    content_fraction : ndarray
        ``(gy, gx)`` fraction of each grid patch covered by real content (cells
        or tissue; debris, dust and mucus are not content).
    importance : ndarray
        ``(gy, gx)`` float32 in {0, 1}: the content-richness matrix ``W*``,
        ``content_fraction >= IMPORTANCE_THRESHOLD``.

    Notes
    -----
    The renderer turns concentrations into optical density with
    :meth:`extinction`: ``OD_c = Σ_s extinction[s, c] · stains[s]`` per layer,
    blurs each layer with the PSF of its depth and images
    ``illumination · 10**(-Σ_layers OD_c)`` plus a weak phase term.
    """

    kind: str
    sparsity: str
    seed: int
    split: str
    pixel_size_um: float
    shape_px: tuple[int, int]
    patch_px: int
    layers: tuple[SpecimenLayer, ...]
    stain_names: tuple[str, ...]
    stain_peaks_um: tuple[float, ...]
    stain_widths_um: tuple[float, ...]
    content_fraction: NDArray[np.float64]
    importance: NDArray[np.float32]

    def extinction(self, wavelengths_um: Sequence[float]) -> NDArray[np.float64]:
        """Return optical density per unit concentration, ``(S, C)``.

        Parameters
        ----------
        wavelengths_um : sequence of float
            Wavelength of each colour channel (µm), e.g. ``(0.61, 0.53, 0.46)``.

        Returns
        -------
        ndarray
            ``extinction[s, c]``: Gaussian absorption band of stain ``s`` at
            wavelength ``c``, ``1.0`` at the peak, plus a flat floor of
            :data:`EXTINCTION_FLOOR` (scattering, residual absorption).

        Raises
        ------
        ValueError
            If a wavelength is not finite and positive.
        """
        wl = np.atleast_1d(np.asarray(wavelengths_um, dtype=np.float64))
        if wl.ndim != 1 or wl.size == 0 or not np.all(np.isfinite(wl) & (wl > 0)):
            raise ValueError(f"wavelengths_um must be positive and finite, got {wavelengths_um!r}")
        peaks = np.asarray(self.stain_peaks_um, dtype=np.float64)[:, None]
        widths = np.asarray(self.stain_widths_um, dtype=np.float64)[:, None]
        band = np.exp(-0.5 * ((wl[None, :] - peaks) / widths) ** 2)
        out: NDArray[np.float64] = EXTINCTION_FLOOR + (1.0 - EXTINCTION_FLOOR) * band
        return out

    @property
    def n_content_patches(self) -> int:
        """Number of grid patches that hold content (``importance == 1``)."""
        return int(np.count_nonzero(self.importance > 0.5))

    @property
    def depth_offsets_um(self) -> tuple[float, ...]:
        """Depth offset of every layer (µm)."""
        return tuple(lay.depth_offset_um for lay in self.layers)

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(gy, gx)`` shape of the patch grid."""
        return grid_shape(self.shape_px, self.patch_px)


# --------------------------------------------------------------------------- helpers


def grid_shape(shape_px: Sequence[int], patch_px: int = 224) -> tuple[int, int]:
    """Return the ``(gy, gx)`` patch grid of an image.

    Parameters
    ----------
    shape_px : sequence of int
        ``(Y, X)`` image size.
    patch_px : int
        Patch side.

    Returns
    -------
    tuple of int
        ``(Y // patch_px, X // patch_px)``: the grid is anchored at the
        top-left corner and partial patches at the bottom/right are dropped
        (a 2016 px crop gives exactly 9 × 9).

    Raises
    ------
    ValueError
        If ``patch_px`` is not positive or ``shape_px`` is not two sizes.
    """
    if int(patch_px) <= 0:
        raise ValueError(f"patch_px must be positive, got {patch_px}")
    if len(shape_px) != 2:
        raise ValueError(f"shape_px must be (Y, X), got {shape_px!r}")
    return int(shape_px[0]) // int(patch_px), int(shape_px[1]) // int(patch_px)


def content_patch_range(sparsity: str, grid: tuple[int, int] = (9, 9)) -> tuple[int, int]:
    """Return the inclusive range of content-patch counts of a sparsity level.

    Parameters
    ----------
    sparsity : str
        One of :data:`SPARSITY_LEVELS`.
    grid : tuple of int
        Patch grid shape.

    Returns
    -------
    tuple of int
        ``(lo, hi)`` with ``n = gy * gx``: dense ``(ceil(n/2), n)``; sparse
        from ``round(6 % n)`` (at least one above the extremely sparse range)
        to ``floor(40 % n)`` (5–32 of 81); extremely sparse
        ``(1, max(1, round(5 % n)))`` (1–4 of 81); empty ``(0, 0)``. On tiny
        grids (fewer than ~10 patches) neighbouring levels may share counts.

    Raises
    ------
    ValueError
        For an unknown level.
    """
    _check_choice("sparsity", sparsity, SPARSITY_LEVELS)
    n = int(grid[0]) * int(grid[1])
    if sparsity == "dense":
        return max(1, math.ceil(0.5 * n)), n
    if sparsity == "sparse":
        hi = max(1, math.floor(0.4 * n))
        lo = max(max(1, round(0.05 * n)) + 1, math.floor(0.06 * n + 0.5))
        return min(hi, lo), hi
    if sparsity == "extremely_sparse":
        return 1, max(1, round(0.05 * n))
    return 0, 0


def _check_choice(name: str, value: object, valid: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"{name} must be one of {tuple(valid)}, got {value!r}")


def _noise_tile(
    rng: np.random.Generator,
    size: int,
    *,
    sigma_px: float | None = None,
    period_px: float | None = None,
    rel_bandwidth: float = 0.45,
    angle_rad: float | None = None,
    angle_sigma_rad: float = 0.2,
    white_sigma_px: float | None = None,
    white_weight: float = 0.0,
    clip: float = 3.0,
) -> F32:
    """Periodic, unit-variance filtered noise: low-pass, band-pass or oriented band-pass.

    ``white_sigma_px`` / ``white_weight`` add an isotropic low-pass component
    (relative amplitude) to a band-pass spectrum.
    """
    white = rng.random((size, size), dtype=np.float32)
    spec = sfft.rfft2(white)
    fy = sfft.fftfreq(size).astype(np.float32)[:, None]
    fx = sfft.rfftfreq(size).astype(np.float32)[None, :]
    f2 = fy * fy + fx * fx
    if period_px is None:
        s = float(sigma_px if sigma_px is not None else 1.0)
        filt = np.exp(np.float32(-2.0 * (math.pi * s) ** 2) * f2)
    else:
        f0 = 1.0 / float(period_px)
        filt = np.exp(-0.5 * ((np.sqrt(f2) - f0) / (rel_bandwidth * f0)) ** 2)
        if angle_rad is not None:
            # frequency vectors perpendicular to the fibres: streaks run along angle_rad
            phi = np.arctan2(fy, fx) - np.float32(angle_rad + 0.5 * math.pi)
            dphi = (phi + np.float32(0.5 * math.pi)) % np.float32(math.pi) - np.float32(
                0.5 * math.pi
            )
            filt = filt * np.exp(-0.5 * (dphi / np.float32(angle_sigma_rad)) ** 2)
        if white_sigma_px is not None and white_weight > 0:
            lp = np.exp(np.float32(-2.0 * (math.pi * white_sigma_px) ** 2) * f2)
            # equalise the two components' variance before mixing
            e_band = float(np.sqrt((filt * filt).sum()))
            e_lp = float(np.sqrt((lp * lp).sum()))
            filt = filt + np.float32(white_weight * e_band / max(e_lp, 1e-12)) * lp
    filt[0, 0] = 0.0
    out: F32 = sfft.irfft2(spec * filt, s=(size, size)).astype(np.float32)
    out *= np.float32(1.0 / max(float(out.std()), 1e-12))
    np.clip(out, -clip, clip, out=out)
    return out


class _Tile:
    """A periodic texture with wrap-padding so random windows are plain views."""

    def __init__(self, tile: F32, max_h: int, max_w: int) -> None:
        self.period = int(tile.shape[0])
        t = self.period
        reps_y = -(-(t + max(0, int(max_h))) // t)
        reps_x = -(-(t + max(0, int(max_w))) // t)
        self.data: F32 = np.tile(tile, (reps_y, reps_x))
        self.base = tile

    def window(self, oy: int, ox: int, h: int, w: int) -> F32:
        """Return a ``(h, w)`` window at offset ``(oy, ox)`` modulo the period."""
        oy %= self.period
        ox %= self.period
        if oy + h <= self.data.shape[0] and ox + w <= self.data.shape[1]:
            return self.data[oy : oy + h, ox : ox + w]
        iy = (oy + np.arange(h)) % self.period
        ix = (ox + np.arange(w)) % self.period
        out: F32 = self.base[np.ix_(iy, ix)]
        return out


_TEXTURE_SEED: Final = 0x5F0C05
_TEXTURE_VARIANTS: Final = 3
_FIBRE_ANGLES: Final = 12
_FIBRE_PERIODS_UM: Final = (3.5, 5.0)


@functools.lru_cache(maxsize=16)
def _texture(name: str, pixel_size_um: float, variant: int) -> _Tile:
    """Return a cached periodic object texture, padded for windows up to ~80 µm.

    Textures come from a fixed seed bank (never from the specimen's stream),
    so caching cannot break determinism; specimens differ through the random
    windows they take.
    """
    code = ("smooth", "wobble", "chrom").index(name)
    rng = np.random.default_rng(np.random.SeedSequence([_TEXTURE_SEED, code, variant]))
    big = math.ceil(80.0 / pixel_size_um) + 8
    if name == "smooth":
        tile = _noise_tile(rng, 256, sigma_px=1.0 / pixel_size_um, clip=2.5)
    elif name == "wobble":
        tile = _noise_tile(rng, 256, sigma_px=5.0 / pixel_size_um, clip=2.5)
    else:  # chromatin granules, values in [0, 1]
        band = _noise_tile(rng, 256, period_px=max(1.1 / pixel_size_um, 2.6), rel_bandwidth=0.6)
        tile = np.clip(0.5 + 0.3 * band, 0.0, 1.0).astype(np.float32)
    out = _Tile(tile, big, big)
    out.data.setflags(write=False)
    return out


@functools.lru_cache(maxsize=2 * _FIBRE_ANGLES * len(_FIBRE_PERIODS_UM))
def _fibre_tile(pixel_size_um: float, angle_index: int, period_index: int) -> F32:
    """Return a cached 512 px oriented band-pass texture in [0, 1] (collagen fibres)."""
    rng = np.random.default_rng(
        np.random.SeedSequence([_TEXTURE_SEED, 7, angle_index, period_index])
    )
    t = _noise_tile(
        rng,
        512,
        period_px=_FIBRE_PERIODS_UM[period_index] / pixel_size_um,
        rel_bandwidth=0.6,
        angle_rad=math.pi * angle_index / _FIBRE_ANGLES,
        angle_sigma_rad=0.28,
        white_sigma_px=1.5 / pixel_size_um,
        white_weight=0.6,
    )
    out: F32 = np.clip(0.5 + 0.3 * t, 0.0, 1.0).astype(np.float32)
    out.setflags(write=False)
    return out


class _Upsampler:
    """Bilinear up-sampling of coarse fields by an even integer factor, by row chunks."""

    def __init__(self, shape_px: tuple[int, int], factor: int) -> None:
        self.f = int(factor)
        self.ny, self.nx = shape_px
        self.hc = -(-self.ny // self.f)
        self.wc = -(-self.nx // self.f)
        y = (np.arange(self.ny) + 0.5) / self.f - 0.5
        iy = np.floor(y).astype(np.intp)
        self.wy = (y - iy).astype(np.float32)
        self.iy0 = np.clip(iy, 0, self.hc - 1)
        self.iy1 = np.clip(iy + 1, 0, self.hc - 1)
        t = ((np.arange(self.f) + 0.5) / self.f).astype(np.float32)
        self.t_full = np.tile(t, self.wc + 1)

    @property
    def coarse_shape(self) -> tuple[int, int]:
        return self.hc, self.wc

    def _row_interp(self, coarse: F32, y0: int, y1: int) -> F32:
        wy = self.wy[y0:y1][None, :, None]
        r: F32 = coarse[:, self.iy0[y0:y1], :] * (1.0 - wy) + coarse[:, self.iy1[y0:y1], :] * wy
        return r

    def rows_coarse_x(self, coarse: F32, y0: int, y1: int) -> F32:
        """Like :meth:`rows` but piecewise constant along x (for very smooth fields)."""
        r = self._row_interp(coarse, y0, y1)
        out: F32 = np.repeat(r, self.f, axis=2)[:, :, : self.nx]
        return out

    def rows(self, coarse: F32, y0: int, y1: int) -> F32:
        """Up-sample ``coarse`` ``(K, hc, wc)`` to full-resolution rows ``y0:y1``."""
        r = self._row_interp(coarse, y0, y1)
        r = np.concatenate([r[:, :, :1], r, r[:, :, -1:]], axis=2)  # (K, ch, wc + 2)
        # segment k spans coarse samples k..k+1 (edge-padded), f fine pixels each
        out = np.repeat(r[:, :, :-1], self.f, axis=2)
        out += np.repeat(r[:, :, 1:] - r[:, :, :-1], self.f, axis=2) * self.t_full
        h = self.f // 2
        res: F32 = out[:, :, h : h + self.nx]
        return res


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, int], sigma_px: float
) -> NDArray[np.float64]:
    """Unit-variance Gaussian-filtered noise (periodic) on a small grid, via FFT."""
    h, w = shape
    white = rng.random((h, w)) - 0.5
    fy = sfft.fftfreq(h)[:, None]
    fx = sfft.rfftfreq(w)[None, :]
    filt = np.exp(-2.0 * (math.pi * sigma_px) ** 2 * (fy * fy + fx * fx))
    filt[0, 0] = 0.0
    out: NDArray[np.float64] = sfft.irfft2(sfft.rfft2(white) * filt, s=(h, w))
    sd = float(out.std())
    out /= sd if sd > 0 else 1.0
    return out


# --------------------------------------------------------------------------- canvas


def _add_into(dst: F32, y0: int, x0: int, val: F32) -> None:
    """``dst[y0:y0+h, x0:x0+w] += val`` without a temporary."""
    h, w = val.shape
    sl = dst[y0 : y0 + h, x0 : x0 + w]
    np.add(sl, val, out=sl)


def _pick(rng: np.random.Generator, options: Sequence[tuple[int, float]]) -> int:
    """Draw the first element of one ``(value, weight)`` pair with probability ∝ weight."""
    total = sum(p for _, p in options)
    u = float(rng.random()) * total
    for value, p in options:
        u -= p
        if u < 0:
            return value
    return options[-1][0]


_SCRATCH = threading.local()


def _scratch(name: str, h: int, w: int) -> F32:
    """Return a reusable per-thread ``(h, w)`` float32 work buffer (contents undefined).

    Re-using buffers avoids allocating (and page-faulting) fresh temporaries
    for every object; a buffer is only valid until the next request of the
    same name.
    """
    pool: dict[str, F32] | None = getattr(_SCRATCH, "pool", None)
    if pool is None:
        pool = {}
        _SCRATCH.pool = pool
    n = h * w
    buf = pool.get(name)
    if buf is None or buf.size < n:
        buf = np.empty(max(n, 1 << 16), np.float32)
        pool[name] = buf
    out: F32 = buf[:n].reshape(h, w)
    return out


class _Canvas:
    """Mutable state of one specimen draw: arrays, bookkeeping and rasterisers."""

    def __init__(
        self,
        rng: np.random.Generator,
        shape_px: tuple[int, int],
        pixel_size_um: float,
        patch_px: int,
        chosen: NDArray[np.bool_],
        depth_offsets_um: Sequence[float],
        n_stains: int,
    ) -> None:
        self.rng = rng
        self.ny, self.nx = shape_px
        self.px = float(pixel_size_um)
        self.patch = int(patch_px)
        self.chosen = chosen
        self.gy, self.gx = chosen.shape
        self.depths = np.asarray(depth_offsets_um, dtype=np.float64)
        self.stains: list[F32] = [
            np.zeros((n_stains, self.ny, self.nx), np.float32) for _ in self.depths
        ]
        self.phase: list[F32] = [np.zeros((self.ny, self.nx), np.float32) for _ in self.depths]
        self.content: F32 = np.zeros((self.ny, self.nx), np.float32)
        self.acc = np.zeros((self.gy, self.gx), np.float64)  # summed content area per cell
        self.spill_max_px2 = _SPILL_FRACTION * IMPORTANCE_THRESHOLD * self.patch**2
        # rectangles (y0, x0, y1, x1) of grid cells that must stay empty
        ii, jj = np.nonzero(~chosen)
        p = self.patch
        self.empty_rects = np.stack([ii * p, jj * p, (ii + 1) * p, (jj + 1) * p], 1).astype(
            np.float64
        )

    def um(self, v: float) -> float:
        """Convert micrometres to pixels."""
        return v / self.px

    def layer_of(self, depth_um: float) -> int:
        """Index of the layer nearest to ``depth_um``."""
        return int(np.argmin(np.abs(self.depths - depth_um)))

    def randint(self) -> int:
        """Return a random texture offset."""
        return int(self.rng.integers(1 << 30))

    def texture(self, name: str) -> _Tile:
        """Return a cached texture, one of a few variants chosen at random."""
        return _texture(name, self.px, int(self.rng.integers(_TEXTURE_VARIANTS)))

    def window(self, tile: _Tile, h: int, w: int) -> F32:
        """Random window of a texture tile."""
        return tile.window(self.randint(), self.randint(), h, w)

    # -- grid bookkeeping ------------------------------------------------------
    def free_radius_px(self, cy: float, cx: float) -> float:
        """Distance from a point to the nearest grid cell that must stay empty."""
        r = self.empty_rects
        if r.shape[0] == 0:
            return math.inf
        dy = np.maximum(np.maximum(r[:, 0] - cy, cy - r[:, 2]), 0.0)
        dx = np.maximum(np.maximum(r[:, 1] - cx, cx - r[:, 3]), 0.0)
        return float(np.sqrt(dy * dy + dx * dx).min())

    def cell_areas(self, y0: int, x0: int, cov: F32) -> tuple[slice, slice, NDArray[np.float64]]:
        """Per-grid-cell area of ``cov`` placed at ``(y0, x0)``, clipped to the grid."""
        h, w = cov.shape
        p = self.patch
        gi0, gi1 = y0 // p, min((y0 + h - 1) // p, self.gy - 1)
        gj0, gj1 = x0 // p, min((x0 + w - 1) // p, self.gx - 1)
        if gi1 < gi0 or gj1 < gj0:
            return slice(0, 0), slice(0, 0), np.zeros((0, 0))
        ys = [0] + [g * p - y0 for g in range(gi0 + 1, gi1 + 1)]
        xs = [0] + [g * p - x0 for g in range(gj0 + 1, gj1 + 1)]
        sub = cov[: min(h, (gi1 + 1) * p - y0), : min(w, (gj1 + 1) * p - x0)]
        rows = np.add.reduceat(sub, ys, axis=0)
        sums = np.add.reduceat(rows, xs, axis=1).astype(np.float64)
        return slice(gi0, gi1 + 1), slice(gj0, gj1 + 1), sums

    def try_content(self, y0: int, x0: int, cov: F32) -> bool:
        """Union ``cov`` into the content mask unless it leaks into empty cells."""
        si, sj, sums = self.cell_areas(y0, x0, cov)
        if sums.size:
            new = self.acc[si, sj] + sums
            if not bool(np.all(self.chosen[si, sj] | (new <= self.spill_max_px2))):
                return False
            self.acc[si, sj] = new
        h, w = cov.shape
        sl = self.content[y0 : y0 + h, x0 : x0 + w]
        np.maximum(sl, cov, out=sl)
        return True

    # -- rasterisation -------------------------------------------------------------
    def blob(
        self,
        cy: float,
        cx: float,
        a_px: float,
        b_px: float,
        angle: float,
        wobble: _Tile | None = None,
        wobble_px: float = 0.0,
        edge_px: float = 1.2,
        slot: str = "blob",
    ) -> tuple[int, int, F32, F32] | None:
        """Rasterise an irregular ellipse in its bounding box.

        Returns ``(y0, x0, coverage, signed_distance_px)`` (distance positive
        inside; the coverage ramps over ``edge_px``) or ``None`` when the box
        misses the frame. Both arrays are scratch buffers of ``slot``, valid
        until the next call with the same slot.
        """
        a_px = max(a_px, 0.7)
        b_px = max(b_px, 0.7)
        c, s = math.cos(angle), math.sin(angle)
        pad = 2.6 * wobble_px + edge_px + 1.0
        hx = math.sqrt((a_px * c) ** 2 + (b_px * s) ** 2) + pad
        hy = math.sqrt((a_px * s) ** 2 + (b_px * c) ** 2) + pad
        y0 = max(0, math.floor(cy - hy))
        y1 = min(self.ny, math.ceil(cy + hy) + 1)
        x0 = max(0, math.floor(cx - hx))
        x1 = min(self.nx, math.ceil(cx + hx) + 1)
        if y1 <= y0 or x1 <= x0:
            return None
        h, w = y1 - y0, x1 - x0
        yy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
        xx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
        d = _scratch(slot + ".d", h, w)
        v = _scratch(slot + ".v", h, w)
        cov = _scratch(slot + ".cov", h, w)
        np.add(xx * np.float32(c / a_px), yy * np.float32(s / a_px), out=d)
        np.subtract(yy * np.float32(c / b_px), xx * np.float32(s / b_px), out=v)
        np.multiply(d, d, out=d)
        np.multiply(v, v, out=v)
        np.add(d, v, out=d)
        np.sqrt(d, out=d)
        r_eff = math.sqrt(a_px * b_px)
        np.multiply(d, np.float32(-r_eff), out=d)
        np.add(d, np.float32(r_eff), out=d)
        if wobble is not None and wobble_px > 0:
            np.multiply(self.window(wobble, h, w), np.float32(wobble_px), out=v)
            np.add(d, v, out=d)
        np.multiply(d, np.float32(1.0 / edge_px), out=cov)
        np.add(cov, np.float32(0.5), out=cov)
        np.clip(cov, 0.0, 1.0, out=cov)
        return y0, x0, cov, d

    def finish(self) -> tuple[NDArray[np.float64], NDArray[np.float32]]:
        """Content fraction and importance of every grid cell."""
        p = self.patch
        sub = self.content[: self.gy * p, : self.gx * p]
        rows = sub.reshape(self.gy, p, self.gx * p).sum(axis=1, dtype=np.float64)
        frac = rows.reshape(self.gy, self.gx, p).sum(axis=2) / float(p * p)
        frac = np.clip(frac, 0.0, 1.0)
        imp = (frac >= IMPORTANCE_THRESHOLD).astype(np.float32)
        return frac, imp


# --------------------------------------------------------------------------- content choice


def _grow_clusters(
    rng: np.random.Generator,
    grid: tuple[int, int],
    n: int,
    n_clusters: int,
    max_extent: int | None = None,
) -> NDArray[np.bool_]:
    """Choose ``n`` cells as ``n_clusters`` 4-connected clusters grown at random."""
    gy, gx = grid
    chosen = np.zeros(grid, bool)
    n = min(n, gy * gx)
    clusters: list[list[tuple[int, int]]] = []
    boxes: list[tuple[int, int]] = []

    def new_cluster() -> bool:
        free = np.flatnonzero(~chosen)
        if free.size == 0:
            return False
        k = int(free[rng.integers(free.size)])
        i, j = divmod(k, gx)
        chosen[i, j] = True
        clusters.append([(i, j)])
        if max_extent is not None:
            boxes.append((i - int(rng.integers(max_extent)), j - int(rng.integers(max_extent))))
        return True

    while len(clusters) < max(1, n_clusters) and int(chosen.sum()) < n:
        new_cluster()
    while int(chosen.sum()) < n:
        order = rng.permutation(len(clusters))
        grown = False
        for ci in order:
            cand: list[tuple[int, int]] = []
            for i, j in clusters[ci]:
                for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                    a, b = i + di, j + dj
                    if not (0 <= a < gy and 0 <= b < gx) or chosen[a, b]:
                        continue
                    if max_extent is not None:
                        by, bx = boxes[ci]
                        if not (by <= a < by + max_extent and bx <= b < bx + max_extent):
                            continue
                    cand.append((a, b))
            if cand:
                a, b = cand[int(rng.integers(len(cand)))]
                chosen[a, b] = True
                clusters[ci].append((a, b))
                grown = True
                break
        if not grown and not new_cluster():
            break
    return chosen


def _choose_cells(
    rng: np.random.Generator, kind: str, sparsity: str, grid: tuple[int, int]
) -> NDArray[np.bool_]:
    """Seeded choice of the content cells for a sparsity level."""
    gy, gx = grid
    n_all = gy * gx
    lo, hi = content_patch_range(sparsity, grid)
    if hi == 0:
        return np.zeros(grid, bool)
    if sparsity == "dense":
        n = int(rng.integers(max(lo, math.ceil(0.6 * n_all)), n_all + 1))
        score = ndimage.gaussian_filter(rng.standard_normal(grid), 1.2, mode="reflect")
        chosen = np.zeros(n_all, bool)
        chosen[np.argsort(score, axis=None)[n_all - n :]] = True
        return chosen.reshape(grid)
    n = int(rng.integers(lo, hi + 1))
    if sparsity == "extremely_sparse":
        n_clusters = 1 + int(rng.binomial(n - 1, 0.35))
        return _grow_clusters(rng, grid, n, n_clusters, max_extent=2)
    p = 0.35 if kind == "cell" else 0.12
    n_clusters = 1 + int(rng.binomial(n - 1, p))
    return _grow_clusters(rng, grid, n, n_clusters)


# --------------------------------------------------------------------------- Pap smear


@dataclass(frozen=True)
class _CellType:
    name: str
    weight: float
    diam_um: tuple[float, float]
    aspect: tuple[float, float]
    nuc_diam_um: tuple[float, float]
    nuc_conc: tuple[float, float]
    pyknotic: bool
    cyto_stains: tuple[tuple[int, float], ...]  # (stain index, probability)
    cyto_conc: tuple[float, float]
    phase_rad: tuple[float, float]
    wobble: float  # outline irregularity, fraction of the radius
    nucleus_lift_um: tuple[float, float]  # nucleus centre above the cytoplasm mid-plane
    fold_probability: float


_SUPERFICIAL = _CellType(
    name="superficial",
    weight=0.36,
    diam_um=(40.0, 60.0),
    aspect=(0.6, 0.95),
    nuc_diam_um=(4.5, 6.0),
    nuc_conc=(0.8, 1.1),
    pyknotic=True,
    cyto_stains=((_OG, 0.45), (_EOS, 0.55)),
    cyto_conc=(0.08, 0.17),
    phase_rad=(0.10, 0.18),
    wobble=0.10,
    nucleus_lift_um=(0.2, 0.8),
    fold_probability=0.35,
)
_INTERMEDIATE = _CellType(
    name="intermediate",
    weight=0.38,
    diam_um=(35.0, 55.0),
    aspect=(0.55, 0.95),
    nuc_diam_um=(7.0, 9.0),
    nuc_conc=(0.45, 0.7),
    pyknotic=False,
    cyto_stains=((_LG, 0.8), (_EOS, 0.1), (_OG, 0.1)),
    cyto_conc=(0.07, 0.15),
    phase_rad=(0.10, 0.20),
    wobble=0.10,
    nucleus_lift_um=(0.3, 1.0),
    fold_probability=0.35,
)
_PARABASAL = _CellType(
    name="parabasal",
    weight=0.16,
    diam_um=(18.0, 30.0),
    aspect=(0.7, 1.0),
    nuc_diam_um=(8.0, 11.0),
    nuc_conc=(0.5, 0.8),
    pyknotic=False,
    cyto_stains=((_LG, 0.85), (_EOS, 0.15)),
    cyto_conc=(0.14, 0.26),
    phase_rad=(0.20, 0.35),
    wobble=0.06,
    nucleus_lift_um=(0.8, 2.0),
    fold_probability=0.0,
)
_SMALL_ROUND = _CellType(
    name="small_round",
    weight=0.10,
    diam_um=(15.0, 20.0),
    aspect=(0.8, 1.0),
    nuc_diam_um=(9.0, 12.0),
    nuc_conc=(0.6, 0.9),
    pyknotic=False,
    cyto_stains=((_LG, 0.5), (_EOS, 0.3), (_OG, 0.2)),
    cyto_conc=(0.12, 0.22),
    phase_rad=(0.30, 0.50),
    wobble=0.05,
    nucleus_lift_um=(1.0, 2.5),
    fold_probability=0.0,
)
_CELL_TYPES: Final = (_SUPERFICIAL, _INTERMEDIATE, _PARABASAL, _SMALL_ROUND)


class _SmearPainter:
    """Draws a Pap-stained cytology smear into a canvas."""

    def __init__(self, cv: _Canvas, sparsity: str) -> None:
        self.cv = cv
        self.sparsity = sparsity
        rng = cv.rng
        self.wobble_cell = cv.texture("wobble")
        self.smooth = cv.texture("smooth")
        self.chrom = cv.texture("chrom")
        # uneven smear: a tilt plus per-cell scatter, both within about ±2.5 µm
        self.tilt = rng.normal(0.0, 1.0, 2) * (1.2 / max(cv.ny, cv.nx))
        self.depth_jitter_um = float(rng.uniform(0.5, 1.0))
        self.type_options = [(k, t.weight) for k, t in enumerate(_CELL_TYPES)]

    def depth_at(self, cy: float, cx: float) -> float:
        t = self.tilt[0] * (cy - 0.5 * self.cv.ny) + self.tilt[1] * (cx - 0.5 * self.cv.nx)
        d = t + self.cv.rng.normal(0.0, self.depth_jitter_um)
        return float(np.clip(d, -2.6, 2.6))

    def free_radius(self, cy: float, cx: float) -> float:
        return self.cv.free_radius_px(cy, cx) + 0.5 * math.sqrt(self.cv.spill_max_px2)

    # -- one cell -------------------------------------------------------------
    def cell(
        self, cy: float, cx: float, max_radius_px: float, kind: _CellType | None = None
    ) -> bool:
        """Place one cell; returns False if it would leak content into empty cells."""
        cv = self.cv
        rng = cv.rng
        if kind is None:
            kind = _CELL_TYPES[_pick(rng, self.type_options)]
        if kind.diam_um[0] > 2.2 * cv.px * max_radius_px:  # too big for the space
            kind = _PARABASAL if max_radius_px > cv.um(10.0) else _SMALL_ROUND
        diam = cv.um(float(rng.uniform(*kind.diam_um)))
        ratio = float(rng.uniform(*kind.aspect))
        a = 0.5 * diam / math.sqrt(ratio)
        b = 0.5 * diam * math.sqrt(ratio)
        wob = kind.wobble * math.sqrt(a * b)
        reach = a + 2.6 * wob + 2.0
        if reach > max_radius_px:
            scale = max_radius_px / reach
            a, b, wob = a * scale, b * scale, wob * scale
            if b < cv.um(5.0):
                return False
        angle = float(rng.uniform(0.0, math.pi))
        res = cv.blob(cy, cx, a, b, angle, self.wobble_cell, wob, edge_px=1.3, slot="cyto")
        if res is None:
            return True
        y0, x0, cov, dist = res
        if not cv.try_content(y0, x0, cov):
            return False
        h, w = cov.shape
        depth = self.depth_at(cy, cx)
        layer = cv.layer_of(depth)
        stain = _pick(rng, kind.cyto_stains)
        conc = float(rng.uniform(*kind.cyto_conc))
        val = _scratch("cyto.val", h, w)
        np.multiply(cv.window(self.smooth, h, w), np.float32(0.15 * conc), out=val)
        np.add(val, np.float32(conc), out=val)
        if rng.random() < kind.fold_probability:  # a crease: a darker, gently bent ridge
            fa = float(rng.uniform(0, math.pi))
            cf, sf = np.float32(math.cos(fa)), np.float32(math.sin(fa))
            yy = np.arange(y0, y0 + h, dtype=np.float32)[:, None] - np.float32(cy)
            xx = np.arange(x0, x0 + w, dtype=np.float32)[None, :] - np.float32(cx)
            along = _scratch("cyto.t1", h, w)
            across = _scratch("cyto.t2", h, w)
            sa = np.float32(1.0 / (float(rng.uniform(0.3, 0.8)) * a))
            sc = np.float32(1.0 / cv.um(float(rng.uniform(0.6, 1.5))))
            np.add(yy * (sf * sa), (xx * cf - np.float32(rng.uniform(-0.4, 0.4) * a)) * sa,
                   out=along)  # fmt: skip
            np.subtract(yy * cf, xx * sf + np.float32(rng.uniform(-0.5, 0.5) * b), out=across)
            across *= sc
            bend = np.float32(rng.normal(0.0, 0.6) * a * float(sc) / float(sa) ** 2 / a**2)
            np.multiply(along, along, out=along)
            across += bend * along
            np.multiply(across, across, out=across)
            across += along
            np.negative(across, out=across)
            np.exp(across, out=across)
            across *= np.float32(rng.uniform(0.5, 1.0) * conc)
            val += across
        val *= cov
        _add_into(cv.stains[layer][stain], y0, x0, val)
        if rng.random() < 0.25:  # a little dye mixing (polychromasia)
            other = (_EOS, _LG, _OG)[int(rng.integers(3))]
            np.multiply(cov, np.float32(0.3 * conc), out=val)
            _add_into(cv.stains[layer][other], y0, x0, val)
        np.multiply(dist, np.float32(1.0 / cv.um(1.5)), out=val)
        np.clip(val, 0.0, 1.0, out=val)
        val *= np.float32(rng.uniform(*kind.phase_rad))
        _add_into(cv.phase[layer], y0, x0, val)
        # nucleus (occasionally two), lifted towards the coverslip
        n_nuc = 2 if (not kind.pyknotic and rng.random() < 0.04) else 1
        for _ in range(n_nuc):
            nd = cv.um(float(rng.uniform(*kind.nuc_diam_um)))
            nd = min(nd, 1.6 * b)
            off = max(0.0, min(a, b) - 0.6 * nd) * 0.5
            ny = cy + rng.uniform(-off, off)
            nx = cx + rng.uniform(-off, off)
            n_depth = depth - float(rng.uniform(*kind.nucleus_lift_um))
            self.nucleus(ny, nx, nd, kind, cv.layer_of(n_depth))
        return True

    def nucleus(self, cy: float, cx: float, diam_px: float, kind: _CellType, layer: int) -> None:
        cv = self.cv
        rng = cv.rng
        ratio = float(rng.uniform(0.72, 1.0))
        a = 0.5 * diam_px / math.sqrt(ratio)
        b = 0.5 * diam_px * math.sqrt(ratio)
        angle = float(rng.uniform(0, math.pi))
        res = cv.blob(cy, cx, a, b, angle, self.smooth, 0.05 * b, 1.1, slot="nuc")
        if res is None:
            return
        y0, x0, cov, dist = res
        h, w = cov.shape
        conc = float(rng.uniform(*kind.nuc_conc))
        val = _scratch("nuc.val", h, w)
        chrom = cv.window(self.chrom, h, w)
        if kind.pyknotic:
            np.multiply(chrom, np.float32(0.2 * conc), out=val)
            val += np.float32(0.9 * conc)
        else:
            # granular chromatin plus a darker rim (nuclear membrane)
            rim = _scratch("nuc.rim", h, w)
            np.multiply(dist, np.float32(-0.35 * conc / cv.um(0.6)), out=rim)
            np.clip(rim, np.float32(-0.35 * conc), 0.0, out=rim)
            np.multiply(chrom, np.float32(0.8 * conc), out=val)
            val += np.float32(0.9 * conc)
            val += rim
        val *= cov
        _add_into(cv.stains[layer][_HEM], y0, x0, val)
        np.multiply(dist, np.float32(1.0 / cv.um(1.0)), out=val)
        np.clip(val, 0.0, 1.0, out=val)
        val *= np.float32(rng.uniform(0.08, 0.2))
        _add_into(cv.phase[layer], y0, x0, val)
        if not kind.pyknotic:
            for _ in range(int(rng.integers(0, 3))):  # nucleoli
                r = 0.5 * cv.um(float(rng.uniform(0.7, 1.4)))
                oy = cy + rng.uniform(-0.45, 0.45) * b
                ox = cx + rng.uniform(-0.45, 0.45) * b
                rb = r * float(rng.uniform(0.8, 1.0))
                nres = cv.blob(oy, ox, r, rb, 0.0, None, 0.0, 1.0, slot="nucleolus")
                if nres is not None:
                    ny0, nx0, ncov, _ = nres
                    ncov *= np.float32(0.45 * conc)
                    _add_into(cv.stains[layer][_HEM], ny0, nx0, ncov)

    # -- filling -------------------------------------------------------------
    def place_in_cell(self, i: int, j: int, *, centred: bool = False) -> bool:
        cv = self.cv
        rng = cv.rng
        p = cv.patch
        for attempt in range(5):
            jitter = (0.0 if centred else 1.0) * 0.6**attempt
            cy = (i + 0.5 + jitter * rng.uniform(-0.5, 0.5)) * p
            cx = (j + 0.5 + jitter * rng.uniform(-0.5, 0.5)) * p
            if self.cell(cy, cx, self.free_radius(cy, cx)):
                return True
        return False

    def fill(self) -> None:
        cv = self.cv
        rng = cv.rng
        area = float(cv.patch**2)
        chosen = [(int(i), int(j)) for i, j in zip(*np.nonzero(cv.chosen), strict=True)]
        if not chosen:
            return
        if self.sparsity == "extremely_sparse":
            # one cell per connected group of chosen cells, centred on the group
            lab, n_lab = ndimage.label(cv.chosen)
            for k in range(1, n_lab + 1):
                ii, jj = np.nonzero(lab == k)
                cy = (0.5 * (ii.min() + ii.max() + 1) + rng.uniform(-0.1, 0.1)) * cv.patch
                cx = (0.5 * (jj.min() + jj.max() + 1) + rng.uniform(-0.1, 0.1)) * cv.patch
                self.cell(cy, cx, self.free_radius(cy, cx))
            targets = dict.fromkeys(chosen, 3.0 * IMPORTANCE_THRESHOLD)
        elif self.sparsity == "dense":
            mean = float(rng.uniform(0.45, 0.9))
            targets = {c: float(np.clip(rng.normal(mean, 0.15), 0.2, 1.2)) for c in chosen}
        else:
            targets = {c: float(rng.uniform(0.1, 0.45)) for c in chosen}
        failures = dict.fromkeys(chosen, 0)
        budget = 12 * len(chosen) + 20
        cluster_p = 0.0 if self.sparsity == "extremely_sparse" else 0.05

        def needs(c: tuple[int, int]) -> bool:
            if failures[c] >= 8:
                return False
            if failures[c] >= 4 and cv.acc[c] >= 3.0 * IMPORTANCE_THRESHOLD * area:
                return False
            return bool(cv.acc[c] < targets[c] * area)

        pending = [c for c in chosen if needs(c)]
        while pending and budget > 0:
            budget -= 1
            i, j = pending[int(rng.integers(len(pending)))]
            ok = rng.random() < cluster_p and self.cluster_in_cell(i, j)
            if not ok:
                ok = self.place_in_cell(i, j, centred=failures[(i, j)] >= 2)
            if not ok:
                failures[(i, j)] += 1
            pending = [c for c in chosen if needs(c)]

    def cluster_in_cell(self, i: int, j: int) -> bool:
        """Place a loose group of small round cells (endocervical / inflammatory)."""
        cv = self.cv
        rng = cv.rng
        p = cv.patch
        cy = (i + rng.uniform(0.2, 0.8)) * p
        cx = (j + rng.uniform(0.2, 0.8)) * p
        placed = 0
        spread = cv.um(float(rng.uniform(10.0, 18.0)))
        for _ in range(int(rng.integers(3, 7))):
            y = cy + rng.normal(0.0, spread)
            x = cx + rng.normal(0.0, spread)
            r = self.free_radius(y, x)
            if r > cv.um(8.0) and self.cell(y, x, r, _SMALL_ROUND):
                placed += 1
        return placed > 0

    # -- non-content -------------------------------------------------------------
    def mucus(self) -> None:
        """Draw a few faint mucus strands (light green / eosin), not counted as content."""
        cv = self.cv
        rng = cv.rng
        area_frac = cv.ny * cv.nx / 2016.0**2
        for _ in range(int(rng.poisson(1.2 * area_frac))):
            _strand(
                cv,
                length_px=cv.um(float(rng.uniform(80.0, 250.0))),
                width_px=cv.um(float(rng.uniform(2.0, 6.0))),
                conc={_LG: float(rng.uniform(0.03, 0.07)), _EOS: float(rng.uniform(0.0, 0.03))},
                phase_rad=0.05,
                texture=self.smooth,
            )


def _strand(
    cv: _Canvas,
    *,
    length_px: float,
    width_px: float,
    conc: dict[int, float],
    phase_rad: float,
    texture: _Tile,
) -> None:
    """Draw a smooth, gently curved strand as overlapping soft discs in a local canvas."""
    rng = cv.rng
    y, x = rng.uniform(0, cv.ny), rng.uniform(0, cv.nx)
    heading = rng.uniform(0, 2 * math.pi)
    step = max(0.25 * width_px, 1.0)
    n = max(2, int(length_px / step))
    # heading follows a smooth random walk: a few bends over the strand's length
    bends = np.cumsum(rng.normal(0.0, 1.0, n)) * (1.2 / math.sqrt(n))
    bends = ndimage.gaussian_filter1d(bends, max(n / 12.0, 1.0), mode="nearest")
    hy = np.sin(heading + bends) * step
    hx = np.cos(heading + bends) * step
    pts = np.stack([y + np.cumsum(hy), x + np.cumsum(hx)], 1)
    r = 0.5 * width_px
    y0 = max(0, math.floor(pts[:, 0].min() - r - 3))
    y1 = min(cv.ny, math.ceil(pts[:, 0].max() + r + 3))
    x0 = max(0, math.floor(pts[:, 1].min() - r - 3))
    x1 = min(cv.nx, math.ceil(pts[:, 1].max() + r + 3))
    if y1 <= y0 or x1 <= x0:
        return
    local = np.zeros((y1 - y0, x1 - x0), np.float32)
    k = math.ceil(r + 3)
    ky = np.arange(-k, k + 1, dtype=np.float32)
    for py, pxx in pts:
        iy, ix = round(py) - y0, round(pxx) - x0
        dy = ky + np.float32(round(py) - py)
        dx = ky + np.float32(round(pxx) - pxx)
        rr = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)
        disc = np.clip((r - rr) / 1.5 + 0.5, 0.0, 1.0).astype(np.float32)
        a0, a1 = max(0, iy - k), min(local.shape[0], iy + k + 1)
        b0, b1 = max(0, ix - k), min(local.shape[1], ix + k + 1)
        if a1 <= a0 or b1 <= b0:
            continue
        sub = disc[a0 - (iy - k) : a1 - (iy - k), b0 - (ix - k) : b1 - (ix - k)]
        np.maximum(local[a0:a1, b0:b1], sub, out=local[a0:a1, b0:b1])
    local *= np.clip(0.85 + 0.2 * cv.window(texture, y1 - y0, x1 - x0), 0.0, 2.0)
    layer = int(rng.integers(len(cv.depths)))
    for s, c in conc.items():
        if c > 0:
            cv.stains[layer][s, y0:y1, x0:x1] += np.float32(c) * local
    cv.phase[layer][y0:y1, x0:x1] += np.float32(phase_rad) * local


def _debris(cv: _Canvas, stain_mix: dict[int, tuple[float, float]], rate: float) -> None:
    """Scattered dust and debris specks (dark brown-grey), not counted as content."""
    rng = cv.rng
    area_frac = cv.ny * cv.nx / 2016.0**2
    for _ in range(int(rng.poisson(rate * area_frac))):
        cy, cx = rng.uniform(0, cv.ny), rng.uniform(0, cv.nx)
        d = cv.um(float(np.exp(rng.uniform(math.log(0.7), math.log(3.5)))))
        ratio = float(rng.uniform(0.4, 1.0))
        res = cv.blob(
            cy, cx, 0.5 * d / ratio, 0.5 * d, float(rng.uniform(0, math.pi)), None, 0.0, 1.2
        )
        if res is None:
            continue
        y0, x0, cov, _ = res
        h, w = cov.shape
        layer = int(rng.integers(len(cv.depths)))
        strength = float(rng.uniform(0.4, 1.2))
        for s, (lo, hi) in stain_mix.items():
            cv.stains[layer][s, y0 : y0 + h, x0 : x0 + w] += (
                np.float32(strength * rng.uniform(lo, hi)) * cov
            )
        cv.phase[layer][y0 : y0 + h, x0 : x0 + w] += np.float32(0.1) * cov


def _paint_smear(cv: _Canvas, sparsity: str) -> None:
    painter = _SmearPainter(cv, sparsity)
    painter.fill()
    painter.mucus()
    _debris(cv, {_HEM: (0.2, 0.6), _OG: (0.2, 0.6), _EOS: (0.1, 0.3), _LG: (0.1, 0.3)}, 60.0)


# --------------------------------------------------------------------------- H&E section


def _tissue_outline(cv: _Canvas, up: _Upsampler, sparsity: str) -> NDArray[np.float64]:
    """Signed distance (px, positive inside) to the section's edge, on the coarse grid.

    The section is where a smooth noise field exceeds a level (irregular
    holes and tears), cut back by a wavy margin at the border of the
    non-chosen grid cells (fragment edges that never reach into them), plus a
    round core of tissue in every chosen cell.
    """
    rng = cv.rng
    f = up.f
    hc, wc = up.coarse_shape
    cpx = cv.px * f  # µm per coarse pixel
    yc = (np.arange(hc) + 0.5) * f
    xc = (np.arange(wc) + 0.5) * f
    gi = np.minimum((yc // cv.patch).astype(np.intp), cv.gy)
    gj = np.minimum((xc // cv.patch).astype(np.intp), cv.gx)
    padded = np.zeros((cv.gy + 1, cv.gx + 1), bool)
    padded[: cv.gy, : cv.gx] = cv.chosen
    ind = padded[np.ix_(gi, gj)]
    field = _smooth_field(rng, (hc, wc), float(rng.uniform(8.0, 16.0)) / cpx)
    field += 0.6 * _smooth_field(rng, (hc, wc), float(rng.uniform(25.0, 50.0)) / cpx)
    field += float(rng.uniform(1.0, 2.0)) if sparsity == "dense" else float(rng.uniform(1.4, 2.6))
    gy_, gx_ = np.gradient(field)
    grad = np.sqrt(gy_**2 + gx_**2) / f
    outline = field / np.maximum(grad, 0.02 / f)
    if bool(np.all(ind)):
        dist = np.full((hc, wc), np.inf)
    else:
        dist = ndimage.distance_transform_edt(ind) * f - 1.5 * f
        wav = 0.7 * _smooth_field(rng, (hc, wc), 5.0 / cpx)
        wav += 0.7 * _smooth_field(rng, (hc, wc), 15.0 / cpx)
        wav = 0.5 + 0.5 * np.tanh(wav)
        wav *= cv.um(float(rng.uniform(6.0, 14.0)))
        np.minimum(outline, dist - wav, out=outline)
        # rounded, irregular fragments and holes: noisy level sets of the blurred
        # chosen region (a dense section keeps more of it)
        soft = ndimage.gaussian_filter(ind.astype(np.float64), 0.35 * cv.patch / f)
        soft -= float(rng.uniform(0.4, 0.5) if sparsity == "dense" else rng.uniform(0.55, 0.7))
        amp = float(rng.uniform(0.08, 0.14))
        soft += amp * _smooth_field(rng, (hc, wc), 5.0 / cpx)
        soft += amp * _smooth_field(rng, (hc, wc), 15.0 / cpx)
        sy_, sx_ = np.gradient(soft)
        soft /= np.maximum(np.sqrt(sy_**2 + sx_**2) / f, 0.02 / f)
        np.minimum(outline, soft, out=outline)
    # a core of tissue in every chosen cell guarantees its content
    for i, j in zip(*np.nonzero(cv.chosen), strict=True):
        cyc = (i + rng.uniform(0.35, 0.65)) * cv.patch / f - 0.5
        cxc = (j + rng.uniform(0.35, 0.65)) * cv.patch / f - 0.5
        rr = cv.um(float(rng.uniform(8.0, 14.0))) / f
        y0, y1 = max(0, int(cyc - rr - 2)), min(hc, int(cyc + rr + 3))
        x0, x1 = max(0, int(cxc - rr - 2)), min(wc, int(cxc + rr + 3))
        yy = np.arange(y0, y1)[:, None] - cyc
        xx = np.arange(x0, x1)[None, :] - cxc
        core = (rr - np.sqrt(yy**2 + xx**2)) * f
        np.minimum(core, dist[y0:y1, x0:x1], out=core)
        np.maximum(outline[y0:y1, x0:x1], core, out=outline[y0:y1, x0:x1])
    np.clip(outline, -60.0, 60.0, out=outline)
    res: NDArray[np.float64] = outline
    return res


def _paint_tissue(cv: _Canvas, sparsity: str) -> None:
    """Draw an H&E section: fibrous stroma, nuclei, glands, vessels and fragment edges."""
    rng = cv.rng
    if not cv.chosen.any():
        _debris(cv, {_T_HEM: (0.3, 0.8), _T_EOS: (0.2, 0.6)}, 30.0)
        return
    ny, nx = cv.ny, cv.nx
    up = _Upsampler((ny, nx), _COARSE)
    hc, wc = up.coarse_shape
    cpx = cv.px * _COARSE
    outline = _tissue_outline(cv, up, sparsity)
    w_orient = np.clip(
        0.5 + 0.9 * _smooth_field(rng, (hc, wc), rng.uniform(25.0, 50.0) / cpx), 0, 1
    )
    density = np.clip(
        1.0 + 0.3 * _smooth_field(rng, (hc, wc), rng.uniform(12.0, 25.0) / cpx), 0.45, 1.7
    )
    coarse_edge = outline[None].astype(np.float32)
    coarse_smooth = np.stack([w_orient, density]).astype(np.float32)
    # rows of chunks that hold any tissue
    row_max = outline.max(axis=1)

    # fibre textures: two orientations blended in space, independent windows per layer
    a0 = int(rng.integers(_FIBRE_ANGLES))
    a1 = (a0 + int(rng.integers(3, 6))) % _FIBRE_ANGLES
    thetas = (math.pi * a0 / _FIBRE_ANGLES, math.pi * a1 / _FIBRE_ANGLES)
    period_index = int(rng.integers(len(_FIBRE_PERIODS_UM)))
    tiles = [_Tile(_fibre_tile(cv.px, a, period_index), _CHUNK, nx) for a in (a0, a1)]
    ragged = _Tile(cv.texture("smooth").base, _CHUNK, nx)
    n_layers = len(cv.depths)
    offs = [(cv.randint(), cv.randint()) for _ in range(2 * n_layers)]
    eos_base = [float(rng.uniform(0.04, 0.08)) for _ in range(n_layers)]
    phase_base = [float(rng.uniform(0.06, 0.12)) for _ in range(n_layers)]
    edge_px = 1.4
    rag_amp = cv.um(float(rng.uniform(0.3, 0.8)))
    roy, rox = cv.randint(), cv.randint()
    for y0 in range(0, ny, _CHUNK):
        y1 = min(ny, y0 + _CHUNK)
        c0 = max(0, y0 // _COARSE - 1)
        c1 = min(hc, -(-y1 // _COARSE) + 1)
        if float(row_max[c0:c1].max()) < -(2.6 * rag_amp + edge_px):
            continue
        ch = y1 - y0
        mask = up.rows(coarse_edge, y0, y1)[0]
        mask += np.float32(rag_amp) * ragged.window(roy + y0, rox, ch, nx)
        mask *= np.float32(1.0 / edge_px)
        mask += 0.5
        np.clip(mask, 0.0, 1.0, out=mask)
        cv.content[y0:y1] = mask
        wgt, md = up.rows_coarse_x(coarse_smooth, y0, y1)
        md *= mask
        for layer in range(n_layers):
            (ay, ax), (by, bx) = offs[2 * layer], offs[2 * layer + 1]
            t2 = tiles[1].window(by + y0, bx, ch, nx)
            tex = tiles[0].window(ay + y0, ax, ch, nx) - t2
            tex *= wgt
            tex += t2
            eos = cv.stains[layer][_T_EOS, y0:y1]
            np.multiply(tex, np.float32(1.1 * eos_base[layer]), out=eos)
            eos += np.float32(0.4 * eos_base[layer])
            eos *= md
            ph = cv.phase[layer][y0:y1]
            np.multiply(tex, np.float32(0.6 * phase_base[layer]), out=ph)
            ph += np.float32(0.7 * phase_base[layer])
            ph *= mask

    gate = np.minimum(outline, 60.0)
    painter = _TissuePainter(cv, thetas, w_orient, gate)
    painter.lumens(sparsity)
    painter.stroma_nuclei()
    painter.lymphoid_clusters(sparsity)
    _debris(cv, {_T_HEM: (0.3, 0.8), _T_EOS: (0.2, 0.6)}, 30.0)


class _TissuePainter:
    """Nuclei, glands, vessels and inflammatory clusters on top of the stroma."""

    def __init__(
        self,
        cv: _Canvas,
        thetas: tuple[float, float],
        w_orient: NDArray[np.float64],
        outline_px: NDArray[np.float64],
    ) -> None:
        self.cv = cv
        self.thetas = thetas
        self.w_orient = w_orient
        # distance to the section edge (or to an empty cell) on the coarse grid
        self.edge_dist = ndimage.distance_transform_edt(outline_px > 0) * _COARSE
        self.chrom = cv.texture("chrom")
        self.smooth = cv.texture("smooth")
        self.wobble_big = cv.texture("wobble")

    def coarse_at(self, arr: NDArray[np.float64], y: float, x: float) -> float:
        i = min(max(int(y) // _COARSE, 0), arr.shape[0] - 1)
        j = min(max(int(x) // _COARSE, 0), arr.shape[1] - 1)
        return float(arr[i, j])

    def tissue_points(self, n: int, margin_px: float = 0.0) -> NDArray[np.float64]:
        """Up to ``n`` random points inside the tissue, ``margin_px`` from its edge."""
        cv = self.cv
        if n <= 0:
            return np.zeros((0, 2))
        cand = cv.rng.uniform(0, 1, (4 * n + 16, 2)) * (cv.ny - 1, cv.nx - 1)
        iy = cand[:, 0].astype(np.intp)
        ix = cand[:, 1].astype(np.intp)
        ok = cv.content[iy, ix] > 0.9
        if margin_px > 0:
            gy = np.minimum(iy // _COARSE, self.edge_dist.shape[0] - 1)
            gx = np.minimum(ix // _COARSE, self.edge_dist.shape[1] - 1)
            ok &= self.edge_dist[gy, gx] > margin_px
        pts: NDArray[np.float64] = cand[ok][:n]
        return pts

    def nucleus(
        self,
        cy: float,
        cx: float,
        a: float,
        b: float,
        angle: float,
        conc: float,
        texture: float,
        layer: int,
    ) -> None:
        cv = self.cv
        res = cv.blob(cy, cx, a, b, angle, self.smooth, 0.06 * b, 1.1, slot="nuc")
        if res is None:
            return
        y0, x0, cov, dist = res
        h, w = cov.shape
        val = _scratch("nuc.val", h, w)
        np.multiply(cv.window(self.chrom, h, w), np.float32(texture * conc), out=val)
        val += np.float32((1.0 - 0.5 * texture) * conc)
        val *= cov
        _add_into(cv.stains[layer][_T_HEM], y0, x0, val)
        np.multiply(cov, np.float32(0.12), out=val)  # nuclei take up a little eosin too
        _add_into(cv.stains[layer][_T_EOS], y0, x0, val)
        np.multiply(dist, np.float32(1.0 / cv.um(0.8)), out=val)
        np.clip(val, 0.0, 1.0, out=val)
        val *= np.float32(0.08)
        _add_into(cv.phase[layer], y0, x0, val)

    def stroma_nuclei(self) -> None:
        cv = self.cv
        rng = cv.rng
        tissue_um2 = float(cv.content.sum(dtype=np.float64)) * cv.px**2
        n = int(rng.poisson(tissue_um2 / float(rng.uniform(350.0, 900.0))))
        n_layers = len(cv.depths)
        for cy, cx in self.tissue_points(n):
            layer = int(rng.integers(n_layers))
            r = rng.random()
            if r < 0.6:  # fibroblast: spindle, along the fibres
                wy = self.coarse_at(self.w_orient, cy, cx)
                ang = (self.thetas[0] if wy > 0.5 else self.thetas[1]) + rng.normal(0.0, 0.15)
                a = cv.um(float(rng.uniform(4.0, 7.0)))
                b = cv.um(float(rng.uniform(1.2, 2.0)))
                self.nucleus(cy, cx, a, b, ang, float(rng.uniform(0.45, 0.7)), 0.3, layer)
            elif r < 0.85:  # lymphocyte / inflammatory cell
                d = cv.um(float(rng.uniform(2.5, 3.5)))
                self.nucleus(
                    cy,
                    cx,
                    d,
                    d * rng.uniform(0.85, 1.0),
                    0.0,
                    float(rng.uniform(0.6, 0.85)),
                    0.25,
                    layer,
                )
            else:  # larger oval nucleus (endothelial / histiocyte)
                a = cv.um(float(rng.uniform(3.5, 5.5)))
                b = a * float(rng.uniform(0.55, 0.85))
                self.nucleus(
                    cy,
                    cx,
                    a,
                    b,
                    float(rng.uniform(0, math.pi)),
                    float(rng.uniform(0.45, 0.6)),
                    0.7,
                    layer,
                )

    def lymphoid_clusters(self, sparsity: str) -> None:
        cv = self.cv
        rng = cv.rng
        area_frac = cv.ny * cv.nx / 2016.0**2
        lam = {"dense": 1.0, "sparse": 0.3}.get(sparsity, 0.0) * area_frac
        n_layers = len(cv.depths)
        for cy, cx in self.tissue_points(int(rng.poisson(lam))):
            spread_um = float(rng.uniform(10.0, 20.0))
            spread = cv.um(spread_um)
            # about one lymphocyte (~28 µm²) per 70–100 µm² of the cloud: crowded,
            # not stacked
            n = int(rng.uniform(0.3, 0.45) * 2 * math.pi * spread_um**2 / 28.0)
            for _ in range(n):
                y = cy + rng.normal(0.0, spread)
                x = cx + rng.normal(0.0, spread)
                iy, ix = int(np.clip(y, 0, cv.ny - 1)), int(np.clip(x, 0, cv.nx - 1))
                if cv.content[iy, ix] < 0.9:
                    continue
                d = cv.um(float(rng.uniform(2.5, 3.5)))
                self.nucleus(
                    y,
                    x,
                    d,
                    d * rng.uniform(0.85, 1.0),
                    0.0,
                    float(rng.uniform(0.65, 0.9)),
                    0.25,
                    int(rng.integers(n_layers)),
                )

    def lumens(self, sparsity: str) -> None:
        """Glands (lumen lined by epithelium) and small vessels (with red blood cells)."""
        cv = self.cv
        rng = cv.rng
        if sparsity not in ("dense", "sparse"):
            return
        tissue_um2 = float(cv.content.sum(dtype=np.float64)) * cv.px**2
        n_gland = int(rng.poisson(tissue_um2 / float(rng.uniform(10000.0, 30000.0))))
        n_vessel = int(rng.poisson(tissue_um2 / float(rng.uniform(8000.0, 20000.0))))
        for cy, cx in self.tissue_points(n_gland, margin_px=cv.um(30.0)):
            la = cv.um(float(rng.uniform(6.0, 25.0)))
            self.lumen(
                cy,
                cx,
                la,
                la * float(rng.uniform(0.35, 0.9)),
                cv.um(float(rng.uniform(10.0, 16.0))),
                gland=True,
            )
        for cy, cx in self.tissue_points(n_vessel, margin_px=cv.um(15.0)):
            la = cv.um(float(rng.uniform(3.0, 12.0)))
            self.lumen(
                cy,
                cx,
                la,
                la * float(rng.uniform(0.4, 0.9)),
                cv.um(float(rng.uniform(1.5, 3.0))),
                gland=False,
            )

    def lumen(
        self, cy: float, cx: float, la: float, lb: float, thick: float, *, gland: bool
    ) -> None:
        cv = self.cv
        rng = cv.rng
        if self.coarse_at(self.edge_dist, cy, cx) < la + thick + 6:
            return
        ang = float(rng.uniform(0, math.pi))
        outer = cv.blob(
            cy,
            cx,
            la + thick,
            lb + thick,
            ang,
            self.wobble_big,
            0.04 * (la + thick),
            1.3,
            slot="outer",
        )
        lum = cv.blob(cy, cx, la, lb, ang, self.smooth, 0.06 * lb, 1.3, slot="lumen")
        if outer is None or lum is None:
            return
        y0, x0, ocov, _ = outer
        h, w = ocov.shape
        ly0, lx0, lsmall, _ = lum
        lcov = np.zeros_like(ocov)
        sy, sx = ly0 - y0, lx0 - x0
        lh, lw = lsmall.shape
        lcov[sy : sy + lh, sx : sx + lw] = lsmall[: h - sy, : w - sx]
        ring = np.clip(ocov - lcov, 0.0, 1.0)
        keep = 1.0 - ocov
        tex = 0.95 + 0.08 * cv.window(self.smooth, h, w)
        n_layers = len(cv.depths)
        eos_c = (0.06, 0.085) if gland else (0.07, 0.1)
        hem_c = (0.012, 0.02) if gland else (0.0, 0.008)
        for layer in range(n_layers):
            st = cv.stains[layer][:, y0 : y0 + h, x0 : x0 + w]
            st[_T_EOS] *= keep
            st[_T_EOS] += np.float32(rng.uniform(*eos_c)) * ring * tex
            st[_T_HEM] *= keep
            st[_T_HEM] += np.float32(rng.uniform(*hem_c)) * ring
            ph = cv.phase[layer][y0 : y0 + h, x0 : x0 + w]
            ph *= keep
            ph += np.float32(0.12) * ring
        cont = cv.content[y0 : y0 + h, x0 : x0 + w]
        cont *= 1.0 - lcov
        circ = math.pi * (3 * (la + lb) - math.sqrt((3 * la + lb) * (la + 3 * lb)))
        c, s = math.cos(ang), math.sin(ang)
        if gland:  # basal nuclei, long axis radial
            n_nuc = int(circ / cv.um(float(rng.uniform(4.5, 6.5))))
            frac_r, size_a, size_b, conc = (0.55, 0.75), (3.5, 5.5), (1.8, 2.6), (0.45, 0.65)
        else:  # a few flat endothelial nuclei along the wall
            n_nuc = int(rng.integers(1, 4))
            frac_r, size_a, size_b, conc = (0.3, 0.6), (3.5, 5.0), (0.8, 1.2), (0.5, 0.75)
        for k in range(n_nuc):
            t = 2 * math.pi * (k + rng.uniform(-0.2, 0.2)) / max(n_nuc, 1)
            fr = float(rng.uniform(*frac_r))
            ux = (la + fr * thick) * math.cos(t)
            uy = (lb + fr * thick) * math.sin(t)
            ny_ = cy + ux * s + uy * c
            nx_ = cx + ux * c - uy * s
            radial = math.atan2(ny_ - cy, nx_ - cx) + (0.0 if gland else 0.5 * math.pi)
            self.nucleus(
                ny_,
                nx_,
                cv.um(float(rng.uniform(*size_a))),
                cv.um(float(rng.uniform(*size_b))),
                radial,
                float(rng.uniform(*conc)),
                0.6,
                int(rng.integers(n_layers)),
            )
        if not gland:  # red blood cells: bright eosin discs with a pale centre
            r_rbc = cv.um(3.6)
            n_rbc = int(rng.integers(0, 2 + int(la * lb / r_rbc**2)))
            for _ in range(n_rbc):
                t = rng.uniform(0, 2 * math.pi)
                rad = math.sqrt(rng.uniform(0, 1)) * max(min(la, lb) - r_rbc, 0.0)
                ux, uy = rad * math.cos(t) * la / max(la, lb), rad * math.sin(t) * lb / max(la, lb)
                res = cv.blob(
                    cy + ux * s + uy * c,
                    cx + ux * c - uy * s,
                    r_rbc,
                    r_rbc * float(rng.uniform(0.8, 1.0)),
                    float(rng.uniform(0, math.pi)),
                    None,
                    0.0,
                    1.2,
                )
                if res is None:
                    continue
                ry0, rx0, rcov, rdist = res
                rh, rw = rcov.shape
                pallor = rdist * np.float32(1.0 / r_rbc)
                np.clip(pallor, 0.0, 1.0, out=pallor)
                val = rcov * (np.float32(1.0) - np.float32(0.45) * pallor)
                val *= np.float32(rng.uniform(0.3, 0.45))
                lay = int(rng.integers(n_layers))
                cv.stains[lay][_T_EOS, ry0 : ry0 + rh, rx0 : rx0 + rw] += val
                cv.phase[lay][ry0 : ry0 + rh, rx0 : rx0 + rw] += np.float32(0.15) * rcov


# --------------------------------------------------------------------------- entry point


def _depth_offsets(rng: np.random.Generator, kind: str) -> tuple[float, ...]:
    if kind == "tissue":
        half = float(rng.uniform(3.5, 5.0)) / 3.0  # section 3.5–5 µm in three slabs
        return (-half, 0.0, half)
    n = int(rng.integers(2, 5))
    lim = 1.5 if n == 2 else 2.0
    return tuple(float(v) for v in np.linspace(-lim, lim, n))


def make_specimen(
    kind: str = "cell",
    sparsity: str = "sparse",
    *,
    shape_px: tuple[int, int] = (2016, 2016),
    pixel_size_um: float = 0.1725,
    patch_px: int = 224,
    seed: int = 0,
    split: str = "test",
    content_cells: ArrayLike | None = None,
) -> Specimen:
    """Draw a procedural Pap smear or H&E section.

    Parameters
    ----------
    kind : {"cell", "tissue"}
        Cytology smear (Papanicolaou stain) or histology section (H&E).
    sparsity : {"dense", "sparse", "extremely_sparse", "empty"}
        How many grid patches hold content; see Notes.
    shape_px : tuple of int
        ``(Y, X)`` size; at least one patch each way.
    pixel_size_um : float
        Sample-plane pixel size (µm); all object sizes are physical.
    patch_px : int
        Side of a grid patch.
    seed : int
        Non-negative seed within the split's stream.
    split : {"train", "test"}
        Seed stream; train and test specimens never share a random stream.
    content_cells : array_like of bool, optional
        ``(gy, gx)`` grid cells that must hold content, overriding the seeded
        choice (used by the training patch sampler). ``sparsity`` then only
        sets the style (how full each chosen cell is).

    Returns
    -------
    Specimen

    Raises
    ------
    ValueError
        For an unknown kind, sparsity or split, a shape smaller than one
        patch, a non-positive pixel size, a negative seed, or
        ``content_cells`` of the wrong shape.

    Notes
    -----
    **Stain model.** Each stain has a Gaussian absorption band (peak, sigma
    in :data:`STAIN_BANDS_UM`) plus a flat floor; concentrations are optical
    densities at the peak. Pap smears use hematoxylin (nuclei, 0.585 µm,
    blue-purple), Orange G (keratinised cytoplasm, 0.48 µm), eosin (pink
    cytoplasm, 0.525 µm) and light green SF (blue-green cytoplasm, 0.63 µm);
    H&E sections use hematoxylin and eosin. In focus a nucleus reaches an
    optical density of about 0.5–1.2 at its stain's peak, cytoplasm and stroma
    about 0.1–0.4, background 0. Edges are anti-aliased over about one pixel
    and textures are band-limited, so nothing aliases; camera noise is the
    renderer's job. Phase maps (radians at 0.55 µm) give cell bodies
    0.1–0.5 rad with smooth edges, nuclei a little more.

    **Sparsity rule.** The content cells are chosen first (seeded, or from
    ``content_cells``); objects are then placed inside them and may spill
    into chosen neighbours. Spill into non-chosen cells is kept below 40 % of
    the threshold (smear cells that would exceed it are shrunk, moved or
    dropped; a tissue outline is cut back by a wavy margin before the border
    of a non-chosen cell). ``content_fraction`` is measured afterwards from the
    actual union of cell / tissue masks (debris, dust and mucus excluded),
    and ``W*_ij = 1`` iff ``content_fraction_ij >= IMPORTANCE_THRESHOLD``
    (2 % of the patch). For a random choice the realised count must fall in
    :func:`content_patch_range` (9 × 9: dense 41–81, sparse 5–32, extremely
    sparse 1–4, empty 0); a draw that misses is redrawn from the next child
    seed (deterministically). With ``content_cells`` the draw that best
    matches the request is kept (normally an exact match).

    **Depth model.** Smear cells lie at depths within about ±2.5 µm (a random
    tilt of the smear plus per-cell scatter) and are snapped to the nearest
    of 2–4 discrete layers; each nucleus sits 0.2–2.5 µm nearer the coverslip
    than its cytoplasm. A tissue section (3.5–5 µm thick) is split into three
    layers at about −1.5, 0 and +1.5 µm with independent fibre texture and
    nuclei in each, sharing the section outline and lumens. Layers are
    ordered from the coverslip side; positive offsets are deeper.

    **Seeds.** The generator is
    ``default_rng(SeedSequence([seed, SPLIT_CODES[split], KIND_CODES[kind],
    SPARSITY_CODES[sparsity]]))`` (redraws use its spawned children).
    """
    _check_choice("kind", kind, SPECIMEN_KINDS)
    _check_choice("sparsity", sparsity, SPARSITY_LEVELS)
    _check_choice("split", split, SPLITS)
    try:
        ny, nx = (int(v) for v in shape_px)
        patch = int(patch_px)
        seed_int = int(seed)
    except (TypeError, ValueError):
        raise ValueError(
            f"shape_px must be two integers and patch_px, seed integers; got "
            f"shape_px={shape_px!r}, patch_px={patch_px!r}, seed={seed!r}"
        ) from None
    if patch <= 0:
        raise ValueError(f"patch_px must be positive, got {patch_px}")
    if ny < patch or nx < patch:
        raise ValueError(
            f"shape_px must be at least one patch ({patch} px) each way, got {shape_px}"
        )
    px = float(pixel_size_um)
    if not (math.isfinite(px) and px > 0):
        raise ValueError(f"pixel_size_um must be positive and finite, got {pixel_size_um}")
    if isinstance(seed, bool) or seed_int != seed or seed_int < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    grid = grid_shape((ny, nx), patch)
    requested: NDArray[np.bool_] | None = None
    if content_cells is not None:
        requested = np.asarray(content_cells).astype(bool)
        if requested.shape != grid:
            raise ValueError(
                f"content_cells must have the grid shape {grid}, got {requested.shape}"
            )

    ss = np.random.SeedSequence(
        [seed_int, SPLIT_CODES[split], KIND_CODES[kind], SPARSITY_CODES[sparsity]]
    )
    children = ss.spawn(_MAX_ATTEMPTS - 1)
    lo, hi = content_patch_range(sparsity, grid)
    best: tuple[float, _Canvas, NDArray[np.float64], NDArray[np.float32]] | None = None
    for attempt in range(_MAX_ATTEMPTS):
        rng = np.random.default_rng(ss if attempt == 0 else children[attempt - 1])
        chosen = requested if requested is not None else _choose_cells(rng, kind, sparsity, grid)
        cv = _Canvas(
            rng,
            (ny, nx),
            px,
            patch,
            chosen,
            _depth_offsets(rng, kind),
            len(_CELL_STAINS if kind == "cell" else _TISSUE_STAINS),
        )
        if kind == "cell":
            _paint_smear(cv, sparsity)
        else:
            _paint_tissue(cv, sparsity)
        frac, imp = cv.finish()
        if requested is not None:
            miss = float(np.count_nonzero((imp > 0.5) != requested))
        else:
            count = int(np.count_nonzero(imp > 0.5))
            miss = float(max(lo - count, count - hi, 0))
        if best is None or miss < best[0]:
            best = (miss, cv, frac, imp)
        if miss == 0:
            break
    assert best is not None
    _, cv, frac, imp = best
    names = _CELL_STAINS if kind == "cell" else _TISSUE_STAINS
    layers = tuple(
        SpecimenLayer(float(depth), st, ph)
        for depth, st, ph in zip(cv.depths, cv.stains, cv.phase, strict=True)
    )
    return Specimen(
        kind=kind,
        sparsity=sparsity,
        seed=seed_int,
        split=split,
        pixel_size_um=px,
        shape_px=(ny, nx),
        patch_px=patch,
        layers=layers,
        stain_names=tuple(names),
        stain_peaks_um=tuple(STAIN_BANDS_UM[n][0] for n in names),
        stain_widths_um=tuple(STAIN_BANDS_UM[n][1] for n in names),
        content_fraction=frac,
        importance=imp,
    )
