"""A virtual slide far larger than one field: content regions, focal surface, lazy fields.

The slide is tiled into *sites* of exactly one camera field each. Every site
is rendered on demand with :func:`~napari_sparsefocus.core.simulate_field`
from a seed derived from the slide seed and the site index, so the same slide
seed always gives the same pixels, and only the few most recently visited
fields are kept in memory.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from ._optics import Optics
from ._phantoms import SPARSITY_LEVELS, SPECIMEN_KINDS
from ._simulate import SimulatedField, simulate_field

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from numpy.typing import ArrayLike, NDArray

__all__ = ["DEFAULT_SPARSITY_WEIGHTS", "SlideSite", "VirtualSlide"]

#: Share of the slide's regions given to each content class (by default).
DEFAULT_SPARSITY_WEIGHTS: Mapping[str, float] = {
    "dense": 0.35,
    "sparse": 0.30,
    "extremely_sparse": 0.15,
    "empty": 0.20,
}

# seed-stream tags (SeedSequence entropy words) of the slide's random draws
_TAG_REGIONS = 0x5E610
_TAG_SURFACE = 0x5E611
_TAG_JITTER = 0x5E612
_TAG_SITE = 0x5E613


@dataclass(frozen=True)
class SlideSite:
    """One camera field of the virtual slide.

    Attributes
    ----------
    row, col : int
        Site index: ``row`` grows with stage Y, ``col`` with stage X.
    x_um, y_um : float
        Stage position of the site centre (µm).
    kind : str
        Specimen kind of the site's region (``"cell"`` or ``"tissue"``).
    sparsity : str
        Content class of the site's region (one of ``SPARSITY_LEVELS``).
    seed : int
        Seed the site's field is rendered with (derived from the slide seed).
    """

    row: int
    col: int
    x_um: float
    y_um: float
    kind: str
    sparsity: str
    seed: int

    @property
    def index(self) -> tuple[int, int]:
        """``(row, col)``."""
        return (self.row, self.col)


def _counts(weights: Sequence[float], n: int) -> list[int]:
    """Split ``n`` items by ``weights`` (largest remainder), each class >= 1 when n allows."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    raw = w * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - int(counts.sum())]:
        counts[i] += 1
    # every class with a positive weight gets at least one region if there are enough
    positive = np.flatnonzero(w > 0)
    if n >= len(positive):
        for i in positive:
            if counts[i] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[i] = 1
    return [int(c) for c in counts]


class VirtualSlide:
    """A seeded virtual slide: content regions, an uneven focal surface and lazy fields.

    Parameters
    ----------
    seed : int
        Slide seed: region layout, focal surface and every field derive from it.
    optics : Optics, optional
        Optics the fields are rendered with (default ``Optics()``).
    field_shape_px : tuple of int
        ``(height, width)`` of one field in pixels (the camera's sensor), at
        least 224 px each way.
    size_um : tuple of float
        ``(width, height)`` of the slide area (µm); rounded down to whole sites.
    region_um : float
        Side of the square regions of the coarse content map (µm).
    sparsity_weights : mapping, optional
        Share of regions per content class (default
        :data:`DEFAULT_SPARSITY_WEIGHTS`); classes with weight 0 are absent.
    kinds : sequence of str
        Specimen kinds drawn per region (default both ``"cell"`` and ``"tissue"``).
    z_nominal_um : float
        Focus at the slide centre, before the per-site jitter (µm).
    tilt_um_per_mm : tuple of float
        Range the slide tilt (gradient magnitude) is drawn from (µm per mm).
    curvature_um : float
        Amplitude of the quadratic bow of the focal surface at the slide
        corners (µm).
    ripple_um : float
        Amplitude of a long-wavelength ripple added to the surface (µm).
    site_jitter_um : float
        Standard deviation of a per-site specimen-height offset (µm), clipped
        at three sigma; 0 gives a smooth surface.
    cache_size : int
        Number of rendered fields kept (least recently used are dropped). A
        field holds its specimen and spectra: about 115 MB at 672 × 672 px and
        200 MB at 1120 × 1120 px.
    split : {"train", "test"}
        Seed stream of the fields (default ``"test"``: disjoint from training data).

    Notes
    -----
    Coordinates are stage micrometres with the slide centre at ``(0, 0)``: X
    runs over ``[-W/2, W/2]`` and Y over ``[-H/2, H/2]``, where ``W`` and ``H``
    are whole multiples of the field size. Image rows follow +Y and columns +X.

    **Content.** A coarse grid of ``region_um`` squares gets one content class
    each (dense, sparse, extremely sparse, empty) in the proportions of
    ``sparsity_weights`` (largest-remainder rounding; every class present when
    there are at least as many regions as classes), shuffled by the seed, and
    one specimen kind each. A site takes the class and kind of the region that
    holds its centre and is rendered with ``simulate_field(kind, sparsity,
    optics, seed=site.seed, shape_px=field_shape_px, split=split)``.

    **Focal surface.** The stage Z of best focus is ::

        z_focus(x, y) = z_nominal + g·(x, y) + c (a u² + b v² + e u v)
                        + r (sin(2π(k·(u, v)) + φ) - sin φ) + jitter(site)

    with ``u = 2x/W`` and ``v = 2y/H`` in ``[-1, 1]``: a tilt ``g`` of random
    direction and a magnitude drawn from ``tilt_um_per_mm``, a bow of
    amplitude ``c = curvature_um`` (``a, b`` of random sign: bowl or saddle),
    a ripple of amplitude ``r = ripple_um`` and a per-site jitter. Without
    jitter the surface equals ``z_nominal`` at the centre.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        optics: Optics | None = None,
        field_shape_px: tuple[int, int] = (1120, 1120),
        size_um: tuple[float, float] = (10_000.0, 10_000.0),
        region_um: float = 1_000.0,
        sparsity_weights: Mapping[str, float] | None = None,
        kinds: Sequence[str] = SPECIMEN_KINDS,
        z_nominal_um: float = 0.0,
        tilt_um_per_mm: tuple[float, float] = (0.2, 0.8),
        curvature_um: float = 3.0,
        ripple_um: float = 0.5,
        site_jitter_um: float = 0.25,
        cache_size: int = 4,
        split: str = "test",
    ) -> None:
        optics = optics or Optics()
        if not isinstance(optics, Optics):
            raise TypeError(f"optics must be an Optics instance, got {type(optics).__name__}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        fh, fw = (int(v) for v in field_shape_px)
        if fh < 224 or fw < 224:
            raise ValueError(
                f"field_shape_px must be at least 224 px each way, got {field_shape_px}"
            )
        self.optics = optics
        self.seed = int(seed)
        self.field_shape_px = (fh, fw)
        self.field_size_um = (fh * optics.pixel_size_um, fw * optics.pixel_size_um)  # (h, w)
        sx, sy = (float(v) for v in size_um)
        if not (math.isfinite(sx) and math.isfinite(sy)):
            raise ValueError(f"size_um must be finite, got {size_um}")
        n_cols = int(sx // self.field_size_um[1])
        n_rows = int(sy // self.field_size_um[0])
        if n_cols < 1 or n_rows < 1:
            raise ValueError(
                f"size_um={size_um} is smaller than one field "
                f"({self.field_size_um[1]:.1f} x {self.field_size_um[0]:.1f} µm)"
            )
        self.n_sites = (n_rows, n_cols)
        self.size_um = (n_cols * self.field_size_um[1], n_rows * self.field_size_um[0])
        if not (math.isfinite(region_um) and region_um > 0):
            raise ValueError(f"region_um must be finite and > 0, got {region_um}")
        self.region_um = float(region_um)
        kinds = tuple(kinds)
        if not kinds or any(k not in SPECIMEN_KINDS for k in kinds):
            raise ValueError(f"kinds must be a non-empty subset of {SPECIMEN_KINDS}, got {kinds}")
        self.kinds = kinds
        weights = dict(DEFAULT_SPARSITY_WEIGHTS if sparsity_weights is None else sparsity_weights)
        unknown = set(weights) - set(SPARSITY_LEVELS)
        if unknown:
            raise ValueError(f"unknown sparsity level(s) {sorted(unknown)}; use {SPARSITY_LEVELS}")
        wvec = [float(weights.get(s, 0.0)) for s in SPARSITY_LEVELS]
        if any(not math.isfinite(w) or w < 0 for w in wvec) or sum(wvec) <= 0:
            raise ValueError(f"sparsity_weights must be >= 0 with a positive sum, got {weights}")
        self.sparsity_weights = dict(zip(SPARSITY_LEVELS, wvec, strict=True))
        lo, hi = (float(v) for v in tilt_um_per_mm)
        if not (0 <= lo <= hi and math.isfinite(hi)):
            raise ValueError(
                f"tilt_um_per_mm must be (lo, hi) with 0 <= lo <= hi, got {tilt_um_per_mm}"
            )
        for name, value in (
            ("curvature_um", curvature_um),
            ("ripple_um", ripple_um),
            ("site_jitter_um", site_jitter_um),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if not math.isfinite(z_nominal_um):
            raise ValueError(f"z_nominal_um must be finite, got {z_nominal_um}")
        if int(cache_size) < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.z_nominal_um = float(z_nominal_um)
        self.curvature_um = float(curvature_um)
        self.ripple_um = float(ripple_um)
        self.site_jitter_um = float(site_jitter_um)
        self.cache_size = int(cache_size)
        self.split = split

        # --- coarse content map
        w_um, h_um = self.size_um
        self.n_regions = (
            max(1, math.ceil(h_um / self.region_um)),
            max(1, math.ceil(w_um / self.region_um)),
        )
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _TAG_REGIONS]))
        n_reg = self.n_regions[0] * self.n_regions[1]
        codes = np.repeat(np.arange(len(SPARSITY_LEVELS)), _counts(wvec, n_reg))
        rng.shuffle(codes)
        self._region_sparsity = codes.reshape(self.n_regions)
        self._region_kind = rng.integers(len(self.kinds), size=self.n_regions)

        # --- focal surface
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _TAG_SURFACE]))
        tilt = rng.uniform(lo, hi) / 1000.0  # µm per µm
        angle = rng.uniform(0.0, 2 * math.pi)
        self._tilt = (tilt * math.cos(angle), tilt * math.sin(angle))  # (d/dx, d/dy)
        a, b = rng.uniform(0.5, 1.0, size=2) * rng.choice([-1.0, 1.0], size=2)
        e = rng.uniform(-0.3, 0.3)
        self._bow = (float(a), float(b), float(e))
        k_angle = rng.uniform(0.0, 2 * math.pi)
        k_mag = rng.uniform(0.4, 0.9)  # cycles per half slide
        self._ripple_k = (k_mag * math.cos(k_angle), k_mag * math.sin(k_angle))
        self._ripple_phase = float(rng.uniform(0.0, 2 * math.pi))
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _TAG_JITTER]))
        jitter = rng.standard_normal(self.n_sites) * self.site_jitter_um
        self._jitter = np.clip(jitter, -3 * self.site_jitter_um, 3 * self.site_jitter_um)

        self._cache: OrderedDict[tuple[int, int], SimulatedField] = OrderedDict()
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ geometry
    @property
    def pixel_size_um(self) -> float:
        """Sample pixel size of the fields (µm)."""
        return self.optics.pixel_size_um

    @property
    def bounds_um(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """``((x_min, x_max), (y_min, y_max))`` of the slide (µm)."""
        w, h = self.size_um
        return ((-w / 2, w / 2), (-h / 2, h / 2))

    def contains(self, x_um: float, y_um: float) -> bool:
        """Return whether ``(x_um, y_um)`` lies on the slide (bounds inclusive).

        Parameters
        ----------
        x_um, y_um : float
            Stage position (µm).

        Returns
        -------
        bool
        """
        (x0, x1), (y0, y1) = self.bounds_um
        return bool(x0 <= x_um <= x1 and y0 <= y_um <= y1)

    def _check_xy(self, x_um: float, y_um: float) -> None:
        if not (math.isfinite(x_um) and math.isfinite(y_um)):
            raise ValueError(f"position must be finite, got ({x_um}, {y_um})")
        if not self.contains(x_um, y_um):
            (x0, x1), (y0, y1) = self.bounds_um
            raise ValueError(
                f"position ({x_um:.1f}, {y_um:.1f}) µm is off the slide "
                f"(x {x0:.1f}…{x1:.1f}, y {y0:.1f}…{y1:.1f} µm)"
            )

    def site_index(self, x_um: float, y_um: float) -> tuple[int, int]:
        """Return the ``(row, col)`` of the site holding ``(x_um, y_um)``.

        Parameters
        ----------
        x_um, y_um : float
            Stage position (µm), on the slide.

        Returns
        -------
        tuple of int
            Site index; a position on a shared edge belongs to the site with
            the larger index (the last row/column keeps the slide edge).

        Raises
        ------
        ValueError
            If the position is off the slide or not finite.
        """
        self._check_xy(float(x_um), float(y_um))
        (x0, _), (y0, _) = self.bounds_um
        fh, fw = self.field_size_um
        col = min(int((x_um - x0) // fw), self.n_sites[1] - 1)
        row = min(int((y_um - y0) // fh), self.n_sites[0] - 1)
        return (row, col)

    def site(self, row: int, col: int) -> SlideSite:
        """Return the site ``(row, col)``.

        Parameters
        ----------
        row, col : int
            SlideSite index, ``0 <= row < n_sites[0]``, ``0 <= col < n_sites[1]``.

        Returns
        -------
        SlideSite
        """
        nr, nc = self.n_sites
        if not (0 <= row < nr and 0 <= col < nc):
            raise ValueError(f"site ({row}, {col}) is outside the {nr} x {nc} site grid")
        (x0, _), (y0, _) = self.bounds_um
        fh, fw = self.field_size_um
        x = x0 + (col + 0.5) * fw
        y = y0 + (row + 0.5) * fh
        rr, rc = self._region_index(x, y)
        seed = int(
            np.random.SeedSequence([self.seed, _TAG_SITE, int(row), int(col)]).generate_state(1)[0]
        )
        return SlideSite(
            row=int(row),
            col=int(col),
            x_um=float(x),
            y_um=float(y),
            kind=self.kinds[int(self._region_kind[rr, rc])],
            sparsity=SPARSITY_LEVELS[int(self._region_sparsity[rr, rc])],
            seed=seed,
        )

    def site_at(self, x_um: float, y_um: float) -> SlideSite:
        """Return the site whose field the camera shows at stage ``(x_um, y_um)``.

        Parameters
        ----------
        x_um, y_um : float
            Stage position (µm), on the slide.

        Returns
        -------
        SlideSite
        """
        return self.site(*self.site_index(x_um, y_um))

    def _region_index(self, x_um: float, y_um: float) -> tuple[int, int]:
        (x0, _), (y0, _) = self.bounds_um
        rr = min(int((y_um - y0) // self.region_um), self.n_regions[0] - 1)
        rc = min(int((x_um - x0) // self.region_um), self.n_regions[1] - 1)
        return (max(rr, 0), max(rc, 0))

    # ------------------------------------------------------------------ content
    def sparsity_at(self, x_um: float, y_um: float) -> str:
        """Return the content class of the field shown at ``(x_um, y_um)``.

        Parameters
        ----------
        x_um, y_um : float
            Stage position (µm), on the slide.

        Returns
        -------
        str
            One of ``"dense"``, ``"sparse"``, ``"extremely_sparse"``, ``"empty"``.
        """
        return self.site_at(x_um, y_um).sparsity

    def kind_at(self, x_um: float, y_um: float) -> str:
        """Return the specimen kind (``"cell"`` / ``"tissue"``) at ``(x_um, y_um)``.

        Parameters
        ----------
        x_um, y_um : float
            Stage position (µm), on the slide.

        Returns
        -------
        str
        """
        return self.site_at(x_um, y_um).kind

    def region_map(self) -> NDArray[np.str_]:
        """Return the coarse content map: ``(rows, cols)`` of sparsity names (row = +Y)."""
        out: NDArray[np.str_] = np.asarray(SPARSITY_LEVELS)[self._region_sparsity]
        return out

    def _site_mask(
        self, sparsity: str | None, kind: str | None, margin_sites: int = 0
    ) -> NDArray[np.bool_]:
        """``(rows, cols)`` mask of the sites of a class and kind, away from the edge."""
        if sparsity is not None and sparsity not in SPARSITY_LEVELS:
            raise ValueError(f"sparsity must be one of {SPARSITY_LEVELS}, got {sparsity!r}")
        if kind is not None and kind not in SPECIMEN_KINDS:
            raise ValueError(f"kind must be one of {SPECIMEN_KINDS}, got {kind!r}")
        nr, nc = self.n_sites
        fh, fw = self.field_size_um
        rr = np.minimum(
            ((np.arange(nr) + 0.5) * fh // self.region_um).astype(int), self.n_regions[0] - 1
        )
        rc = np.minimum(
            ((np.arange(nc) + 0.5) * fw // self.region_um).astype(int), self.n_regions[1] - 1
        )
        mask = np.ones((nr, nc), bool)
        if sparsity is not None:
            code = SPARSITY_LEVELS.index(sparsity)
            mask &= self._region_sparsity[np.ix_(rr, rc)] == code
        if kind is not None:
            if kind not in self.kinds:
                mask[:] = False
            else:
                mask &= self._region_kind[np.ix_(rr, rc)] == self.kinds.index(kind)
        if margin_sites:
            edge = np.zeros_like(mask)
            edge[margin_sites : nr - margin_sites, margin_sites : nc - margin_sites] = True
            mask &= edge
        return mask

    def sites(self, sparsity: str | None = None, *, kind: str | None = None) -> list[SlideSite]:
        """Return every site, optionally only those of one content class and/or kind.

        Parameters
        ----------
        sparsity : str, optional
            Keep sites of this content class.
        kind : str, optional
            Keep sites of this specimen kind.

        Returns
        -------
        list of SlideSite
            In row-major order.
        """
        rows, cols = np.nonzero(self._site_mask(sparsity, kind))
        return [self.site(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]

    def find_sites(
        self,
        sparsity: str | None = None,
        n: int = 1,
        seed: int | np.random.Generator = 0,
        *,
        kind: str | None = None,
        margin_sites: int = 0,
    ) -> list[SlideSite]:
        """Return ``n`` distinct random sites of a content class.

        Parameters
        ----------
        sparsity : str, optional
            Content class (any if ``None``).
        n : int
            Number of sites (>= 1).
        seed : int or numpy.random.Generator
            Random source of the choice (an int gives a reproducible choice).
        kind : str, optional
            Specimen kind (any if ``None``).
        margin_sites : int
            Skip sites within this many sites of the slide edge.

        Returns
        -------
        list of SlideSite
            ``n`` different sites in random order.

        Raises
        ------
        ValueError
            If fewer than ``n`` sites match.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if margin_sites < 0:
            raise ValueError(f"margin_sites must be >= 0, got {margin_sites}")
        rows, cols = np.nonzero(self._site_mask(sparsity, kind, margin_sites))
        if len(rows) < n:
            raise ValueError(
                f"only {len(rows)} site(s) with sparsity={sparsity!r}, kind={kind!r} "
                f"(margin {margin_sites}) on this slide; asked for {n}"
            )
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        idx = rng.choice(len(rows), size=n, replace=False)
        return [self.site(int(rows[i]), int(cols[i])) for i in idx]

    # ------------------------------------------------------------------ focus
    @overload
    def z_focus_um(self, x_um: float, y_um: float) -> float: ...
    @overload
    def z_focus_um(self, x_um: ArrayLike, y_um: ArrayLike) -> NDArray[np.float64] | float: ...
    def z_focus_um(self, x_um: Any, y_um: Any) -> Any:
        """Return the stage Z of best focus at ``(x_um, y_um)`` (ground truth).

        Parameters
        ----------
        x_um, y_um : float or array_like
            Stage position(s) (µm), on the slide.

        Returns
        -------
        float or ndarray
            Smooth surface plus the per-site jitter of the site at each position.
        """
        x = np.asarray(x_um, dtype=np.float64)
        y = np.asarray(y_um, dtype=np.float64)
        x, y = np.broadcast_arrays(x, y)
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise ValueError("positions must be finite")
        (x0, x1), (y0, y1) = self.bounds_um
        if np.any((x < x0) | (x > x1) | (y < y0) | (y > y1)):
            raise ValueError(
                f"position(s) off the slide (x {x0:.1f}…{x1:.1f}, y {y0:.1f}…{y1:.1f} µm)"
            )
        fh, fw = self.field_size_um
        cols = np.minimum(((x - x0) // fw).astype(int), self.n_sites[1] - 1)
        rows = np.minimum(((y - y0) // fh).astype(int), self.n_sites[0] - 1)
        z = self.surface_um(x, y) + self._jitter[rows, cols]
        return float(z) if z.ndim == 0 else z

    @overload
    def surface_um(self, x_um: float, y_um: float) -> float: ...
    @overload
    def surface_um(self, x_um: ArrayLike, y_um: ArrayLike) -> NDArray[np.float64] | float: ...
    def surface_um(self, x_um: Any, y_um: Any) -> Any:
        """Return the smooth focal surface (no per-site jitter) at ``(x_um, y_um)``.

        Parameters
        ----------
        x_um, y_um : float or array_like
            Stage position(s) (µm); off-slide positions extrapolate.

        Returns
        -------
        float or ndarray
        """
        x = np.asarray(x_um, dtype=np.float64)
        y = np.asarray(y_um, dtype=np.float64)
        w, h = self.size_um
        u, v = 2 * x / w, 2 * y / h
        a, b, e = self._bow
        kx, ky = self._ripple_k
        z = (
            self.z_nominal_um
            + self._tilt[0] * x
            + self._tilt[1] * y
            + self.curvature_um * (a * u * u + b * v * v + e * u * v)
            + self.ripple_um
            * (
                np.sin(2 * np.pi * (kx * u + ky * v) + self._ripple_phase)
                - math.sin(self._ripple_phase)
            )
        )
        return float(z) if np.ndim(z) == 0 else z

    # ------------------------------------------------------------------ rendering
    def field(self, site: SlideSite | tuple[int, int]) -> SimulatedField:
        """Return the rendered field of a site (cached, least recently used dropped).

        Parameters
        ----------
        site : SlideSite or tuple of int
            The site or its ``(row, col)``.

        Returns
        -------
        SimulatedField
            ``simulate_field(site.kind, site.sparsity, optics, seed=site.seed,
            shape_px=field_shape_px, split=split)``.
        """
        s = site if isinstance(site, SlideSite) else self.site(*site)
        key = (s.row, s.col)
        with self._lock:
            fld = self._cache.get(key)
            if fld is not None:
                self._cache.move_to_end(key)
                return fld
        fld = simulate_field(
            s.kind,
            s.sparsity,
            self.optics,
            seed=s.seed,
            shape_px=self.field_shape_px,
            split=self.split,
        )
        with self._lock:
            self._cache[key] = fld
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return fld

    def clear_cache(self) -> None:
        """Drop every cached field."""
        with self._lock:
            self._cache.clear()

    def render(
        self,
        x_um: float,
        y_um: float,
        z_um: float,
        *,
        rng: np.random.Generator | None = None,
        noise: bool = True,
    ) -> NDArray[Any]:
        """Render the camera image with the stage at ``(x_um, y_um, z_um)``.

        Parameters
        ----------
        x_um, y_um : float
            Stage XY (µm): the camera shows the field of the site holding it.
        z_um : float
            Focus-stage position (µm); the field is rendered at defocus
            ``z_um - z_focus_um(x_um, y_um)``.
        rng : numpy.random.Generator, optional
            Noise source (default: derived from the field seed and the defocus).
        noise : bool
            Add camera noise.

        Returns
        -------
        ndarray
            ``(H, W, C)`` camera counts (``(H, W)`` for a monochrome optics).
        """
        if not math.isfinite(z_um):
            raise ValueError(f"z_um must be finite, got {z_um}")
        defocus = float(z_um) - self.z_focus_um(float(x_um), float(y_um))
        return self.field(self.site_at(x_um, y_um)).snap_defocus(defocus, rng=rng, noise=noise)

    def __repr__(self) -> str:
        w, h = self.size_um
        return (
            f"VirtualSlide(seed={self.seed}, size_um=({w:.0f}, {h:.0f}), "
            f"n_sites={self.n_sites}, field_shape_px={self.field_shape_px})"
        )
