"""Simulated defocus z-stacks, single shots and training patches with labels."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ._focus_measures import brenner
from ._optics import Optics
from ._phantoms import SPARSITY_LEVELS, SPECIMEN_KINDS, Specimen, make_specimen
from ._psf import best_focus_z_um
from ._render import Camera, Renderer, illumination_field

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from numpy.typing import ArrayLike, NDArray

__all__ = [
    "DEFAULT_DEFOCUS_UM",
    "FIELD_PX",
    "PATCH_PX",
    "PatchBatch",
    "PatchSampler",
    "SimulatedField",
    "SimulatedStack",
    "iter_simulate_stack",
    "simulate_field",
    "simulate_stack",
    "sparsity_from_count",
]

FIELD_PX = 2016
PATCH_PX = 224
#: The papers' z-stacks: -25…+25 µm in 0.5 µm steps (101 planes).
DEFAULT_DEFOCUS_UM: NDArray[np.float64] = np.round(np.linspace(-25.0, 25.0, 101), 6)
DEFAULT_DEFOCUS_UM.setflags(write=False)

_SPLITS = {"train": 1, "test": 2}
#: Focus-label search (:meth:`SimulatedField._sharpest_plane`): coarse step,
#: fine step and the farthest coarse plane from the layers' focus (µm).
_LABEL_COARSE_UM = 0.25
_LABEL_FINE_UM = 0.1
_LABEL_SEARCH_UM = 3.0
#: number of 9×9 grid cells holding content for each level (inclusive ranges)
_LEVEL_COUNTS = {
    "dense": (55, 81),
    "sparse": (6, 25),
    "extremely_sparse": (1, 3),
    "empty": (0, 0),
}


def _check_choice(name: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ValueError(f"{name} must be one of {tuple(valid)}, got {value!r}")


def sparsity_from_count(n_content: int, n_cells: int = 81) -> str:
    """Return the sparsity level for ``n_content`` content patches out of ``n_cells``.

    Parameters
    ----------
    n_content : int
        Number of grid patches that hold content.
    n_cells : int
        Number of patches in the grid (81 for the 9×9 grid).

    Returns
    -------
    str
        "empty" (0), "extremely_sparse" (1 … max(1, round(5 %)), i.e. 1–4
        of 81), "sparse" (up to 40 %, i.e. 5–32 of 81) or "dense".
    """
    if n_content <= 0:
        return "empty"
    if n_content <= max(1, round(0.05 * n_cells)):
        return "extremely_sparse"
    if n_content <= math.floor(0.4 * n_cells):
        return "sparse"
    return "dense"


def _rng(seed: int, split: str, *tags: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SPLITS[split], 7, *tags]))


def _content_cells(
    sparsity: str, grid: tuple[int, int], margin_cells: int, rng: np.random.Generator
) -> NDArray[np.bool_]:
    """Choose content cells: the central grid by level, the margin ring alike."""
    gy, gx = grid
    full = np.zeros((gy + 2 * margin_cells, gx + 2 * margin_cells), bool)
    lo, hi = _LEVEL_COUNTS[sparsity]
    n = gy * gx
    scale = n / 81.0
    lo_n = max(1, round(lo * scale)) if lo else 0
    hi_n = max(lo_n, round(hi * scale))
    count = int(rng.integers(lo_n, hi_n + 1)) if hi_n > 0 else 0
    centre = np.zeros(n, bool)
    centre[rng.choice(n, size=min(count, n), replace=False)] = True
    full[margin_cells : margin_cells + gy, margin_cells : margin_cells + gx] = centre.reshape(
        gy, gx
    )
    if sparsity in ("dense", "sparse") and margin_cells:
        ring = rng.random(full.shape) < (count / n)
        ring[margin_cells : margin_cells + gy, margin_cells : margin_cells + gx] = False
        full |= ring
    return full


@dataclass(frozen=True)
class SimulatedStack:
    """A simulated defocus z-stack with its labels.

    Attributes
    ----------
    images : ndarray
        ``(Z, Y, X, C)`` camera images (``(Z, Y, X)`` for one channel).
    defocus_um : ndarray
        ``(Z,)`` signed defocus of each plane, ``z_current - z_focus``.
    stage_z_um : ndarray
        ``(Z,)`` absolute focus-stage positions.
    z_focus_um : float
        Stage position of best focus.
    importance : ndarray
        ``(gy, gx)`` content-richness matrix W* (9×9 for a 2016 px field).
    content_fraction : ndarray
        ``(gy, gx)`` fraction of each patch covered by content.
    kind, sparsity, split : str
        Specimen kind, requested sparsity level and seed split.
    seed : int
        Seed.
    optics : Optics
        Optics used to render.
    """

    images: NDArray[Any]
    defocus_um: NDArray[np.float64]
    stage_z_um: NDArray[np.float64]
    z_focus_um: float
    importance: NDArray[np.float32]
    content_fraction: NDArray[np.float32]
    kind: str
    sparsity: str
    split: str
    seed: int
    optics: Optics = field(repr=False)

    @property
    def pixel_size_um(self) -> float:
        """Sample pixel size (µm)."""
        return self.optics.pixel_size_um

    @property
    def z_step_um(self) -> float | None:
        """Plane spacing (µm) if the planes are evenly spaced, else ``None``."""
        if len(self.defocus_um) < 2:
            return None
        d = np.diff(self.defocus_um)
        if np.allclose(d, d[0], rtol=1e-6, atol=1e-9) and d[0] > 0:
            return float(d[0])
        return None

    @property
    def n_content_patches(self) -> int:
        """Number of grid patches holding content."""
        return int(np.count_nonzero(self.importance > 0.5))

    def to_metadata(self) -> dict[str, Any]:
        """Return the labels as a JSON-serialisable dict."""
        return {
            "simulated": True,
            "kind": self.kind,
            "sparsity": self.sparsity,
            "split": self.split,
            "seed": self.seed,
            "defocus_um": [float(v) for v in self.defocus_um],
            "stage_z_um": [float(v) for v in self.stage_z_um],
            "z_focus_um": float(self.z_focus_um),
            "importance": self.importance.astype(float).tolist(),
            "pixel_size_um": self.pixel_size_um,
            "optics": self.optics.to_dict(),
        }


class SimulatedField:
    """One simulated field of view that can be imaged at any stage position.

    Build it with :func:`simulate_field`. ``z_focus_um`` is the stage position
    of best focus (the sharpest plane, see :attr:`z_focus_um`);
    :meth:`snap_defocus` renders at ``z_focus_um + defocus_um``.
    """

    def __init__(
        self,
        specimen: Specimen,
        optics: Optics,
        *,
        margin_px: int,
        seed: int,
        split: str,
        illumination_strength: float = 1.0,
    ) -> None:
        self.specimen = specimen
        self.optics = optics
        self.seed = int(seed)
        self.split = split
        self.margin_px = int(margin_px)
        sy, sx = specimen.shape_px
        m = self.margin_px
        self.shape_px = (sy - 2 * m, sx - 2 * m)
        crop = (slice(m, sy - m), slice(m, sx - m))
        self.renderer = Renderer(specimen, optics, crop=crop)
        self.camera = Camera(optics)
        mc = m // specimen.patch_px
        gy, gx = specimen.importance.shape
        self.importance = np.ascontiguousarray(
            specimen.importance[mc : gy - mc, mc : gx - mc], dtype=np.float32
        )
        self.content_fraction = np.ascontiguousarray(
            specimen.content_fraction[mc : gy - mc, mc : gx - mc], dtype=np.float32
        )
        self.illumination = illumination_field(
            self.shape_px, optics.n_channels, _rng(seed, split, 11), strength=illumination_strength
        )
        #: Content-weighted mean of the depth layers' best-focus planes (µm):
        #: where the sharpness search of :attr:`z_focus_um` starts.
        self.layer_focus_um = self._layer_focus(crop)

    @functools.cached_property
    def z_focus_um(self) -> float:
        """Stage position of best focus (µm): the focus label.

        The sharpest plane of the noise-free content (the peak of the mean
        Brenner gradient of the grid cells holding content, as a z-stack
        labeller would pick it), found once on first use by a search that
        starts at :attr:`layer_focus_um`. Thick tissue is sharpest a few
        tenths of a µm below its layers' mean focus.
        """
        return self._sharpest_plane(self.layer_focus_um)

    def _layer_focus(self, crop: tuple[slice, slice]) -> float:
        """Content-weighted best-focus stage position of the specimen's layers."""
        o = self.optics
        ext = self.specimen.extinction([o.reference_wavelength_um])[:, 0]
        weights, zs = [], []
        for lay in self.specimen.layers:
            mass = float(
                np.tensordot(
                    ext, np.asarray(lay.stains)[:, crop[0], crop[1]].sum(axis=(1, 2)), axes=(0, 0)
                )
            )
            weights.append(mass)
            zs.append(best_focus_z_um(o.specimen_depth_um + lay.depth_offset_um, o))
        w = np.asarray(weights)
        if w.sum() <= 0:
            # no content at all: the mid-plane's focus
            return best_focus_z_um(o.specimen_depth_um, o)
        return float(np.dot(w, zs) / w.sum())

    def _content_boxes(self) -> list[tuple[int, int, int, int]]:
        """``(y0, x0, y1, x1)`` of the grid cells holding content (in the crop)."""
        p = self.specimen.patch_px
        h, w = self.shape_px
        boxes = []
        for r, c in np.argwhere(self.content_fraction > 0):
            y0, x0 = int(r) * p, int(c) * p
            y1, x1 = min(y0 + p, h), min(x0 + p, w)
            if y1 - y0 >= 3 and x1 - x0 >= 3:
                boxes.append((y0, x0, y1, x1))
        return boxes

    def _sharpness(self, z_um: float, boxes: Sequence[tuple[int, int, int, int]]) -> float:
        """Mean Brenner gradient of the noise-free luma in `boxes` at stage position ``z_um``."""
        inten = self.renderer.intensity(z_um, self.illumination)
        return float(
            np.mean([brenner(inten[:, y0:y1, x0:x1], channel_axis=0) for y0, x0, y1, x1 in boxes])
        )

    def _sharpest_plane(self, start_um: float) -> float:
        """Stage position of the Brenner peak of the noise-free content (the focus label).

        A z-stack labeller takes the sharpest plane of the specimen as "in
        focus"; so does the simulator. The measure is the mean Brenner
        gradient of the grid cells that hold content, not of the whole
        field: on a sparse field the background's debris, at its own depth,
        would otherwise dominate it (the very failure of whole-field
        sharpness the SparseFocus paper starts from). The search walks from
        ``start_um`` (the layers' focus) in steps of ``_LABEL_COARSE_UM`` up
        the gradient (at most ``_LABEL_SEARCH_UM`` away), fits a parabola
        through the best coarse plane and its neighbours, then another
        through three samples ``_LABEL_FINE_UM`` apart around that vertex.
        Fields without content keep ``start_um``.
        """
        boxes = self._content_boxes()
        if not boxes:
            return start_um
        cache: dict[float, float] = {}

        def f(z: float) -> float:
            key = round(z, 6)
            if key not in cache:
                cache[key] = self._sharpness(key, boxes)
            return cache[key]

        c = _LABEL_COARSE_UM
        best = start_um
        for direction in (1.0, -1.0):
            z = best
            while abs(z + direction * c - start_um) <= _LABEL_SEARCH_UM and f(
                z + direction * c
            ) > f(z):
                z += direction * c
            if f(z) > f(best):
                best = z
        # parabola through the best coarse plane and its neighbours, then once more
        # through three fine samples around that vertex
        z = _vertex(best, c, f(best - c), f(best), f(best + c))
        return _vertex(z, _LABEL_FINE_UM, f(z - _LABEL_FINE_UM), f(z), f(z + _LABEL_FINE_UM))

    def snap(
        self, z_um: float, *, rng: np.random.Generator | None = None, noise: bool = True
    ) -> NDArray[Any]:
        """Render the camera image at absolute stage position ``z_um``.

        Parameters
        ----------
        z_um : float
            Stage position (µm).
        rng : numpy.random.Generator, optional
            Noise source (default: a fresh generator derived from the seed and z).
        noise : bool
            Add camera noise.

        Returns
        -------
        ndarray
            ``(Y, X, C)`` (``(Y, X)`` for one channel) camera counts.
        """
        if not math.isfinite(z_um):
            raise ValueError(f"z_um must be finite, got {z_um}")
        if rng is None and noise:
            rng = _rng(self.seed, self.split, 13, round(z_um * 1000) & 0x7FFFFFFF)
        inten = self.renderer.intensity(z_um, self.illumination)  # (C, Y, X)
        img = self.camera.expose(inten, rng, noise=noise)
        out: NDArray[Any] = (
            img[0] if img.shape[0] == 1 else np.ascontiguousarray(np.moveaxis(img, 0, -1))
        )
        return out

    def snap_defocus(self, defocus_um: float, **kw: Any) -> NDArray[Any]:
        """Render at ``z_focus_um + defocus_um`` (see :meth:`snap`)."""
        return self.snap(self.z_focus_um + float(defocus_um), **kw)


def _vertex(z: float, h: float, y0: float, y1: float, y2: float) -> float:
    """Vertex of the parabola through ``(z - h, y0), (z, y1), (z + h, y2)``, within ±h."""
    denom = y0 - 2.0 * y1 + y2
    if not denom < 0:  # not a maximum (flat or convex): keep the best sample
        return float(z + h * (int(np.argmax([y0, y1, y2])) - 1))
    return float(z + h * float(np.clip(0.5 * (y0 - y2) / denom, -1.0, 1.0)))


def simulate_field(
    kind: str = "cell",
    sparsity: str = "sparse",
    optics: Optics | None = None,
    seed: int = 0,
    *,
    shape_px: tuple[int, int] = (FIELD_PX, FIELD_PX),
    split: str = "test",
    margin_px: int | None = None,
    content_cells: NDArray[np.bool_] | None = None,
    patch_px: int = PATCH_PX,
) -> SimulatedField:
    """Create a simulated field of view (specimen + optics + camera).

    Parameters
    ----------
    kind : {"cell", "tissue"}
        Cytology (Pap stain) or histology (H&E).
    sparsity : {"dense", "sparse", "extremely_sparse", "empty"}
        Content level: how many of the 224 px grid patches hold content
        (for 9×9: dense 55–81, sparse 6–25, extremely sparse 1–3, empty 0).
    optics : Optics, optional
        Default ``Optics()``.
    seed : int
        Seed; ``split`` makes train and test seeds disjoint by construction.
    shape_px : tuple of int
        Field shape, at least one patch (224 px) each way.
    split : {"train", "test"}
        Seed stream.
    margin_px : int, optional
        Specimen rendered around the field so out-of-field content blurs in
        (a multiple of ``patch_px``; default one patch).
    content_cells : ndarray of bool, optional
        Force which cells (field grid plus margin ring) hold content.
    patch_px : int
        Grid patch size (224 px at the optics' pixel size). A coarser camera
        (e.g. ``optics.replace(camera_pixel_size_um=4 * 3.45)``) with
        ``patch_px=56`` renders the same 348 µm field at 504 px, as the
        Region Importance Network sees it.

    Returns
    -------
    SimulatedField
    """
    _check_choice("kind", kind, SPECIMEN_KINDS)
    _check_choice("sparsity", sparsity, SPARSITY_LEVELS)
    _check_choice("split", split, tuple(_SPLITS))
    optics = optics or Optics()
    if not isinstance(optics, Optics):
        raise TypeError(f"optics must be an Optics instance, got {type(optics).__name__}")
    if int(patch_px) < 8:
        raise ValueError(f"patch_px must be >= 8, got {patch_px}")
    PATCH_PX = int(patch_px)  # shadows the module default within this function
    if margin_px is None:
        margin_px = PATCH_PX
    sy, sx = (int(v) for v in shape_px)
    if sy < PATCH_PX or sx < PATCH_PX:
        raise ValueError(f"shape_px must be at least {PATCH_PX} px each way, got {shape_px}")
    if margin_px < 0 or margin_px % PATCH_PX:
        raise ValueError(
            f"margin_px must be a non-negative multiple of {PATCH_PX}, got {margin_px}"
        )
    # pad the field to whole patches so the grid is anchored at its top-left corner
    gy, gx = sy // PATCH_PX, sx // PATCH_PX
    extra_y, extra_x = sy - gy * PATCH_PX, sx - gx * PATCH_PX
    mc = margin_px // PATCH_PX
    spec_shape = (
        (gy + 2 * mc + (1 if extra_y else 0)) * PATCH_PX,
        (gx + 2 * mc + (1 if extra_x else 0)) * PATCH_PX,
    )
    rng = _rng(seed, split, 3)
    if content_cells is None:
        cells = _content_cells(sparsity, (gy, gx), mc, rng)
        if extra_y or extra_x:
            cells = np.pad(cells, ((0, 1 if extra_y else 0), (0, 1 if extra_x else 0)))
    else:
        cells = np.asarray(content_cells, bool)
    spec = make_specimen(
        kind,
        sparsity,
        shape_px=spec_shape,
        pixel_size_um=optics.pixel_size_um,
        patch_px=PATCH_PX,
        seed=seed,
        split=split,
        content_cells=cells,
    )
    # crop to the requested field: margin on top/left, margin (+ padding) at bottom/right
    f = SimulatedField(spec, optics, margin_px=margin_px, seed=seed, split=split)
    if extra_y or extra_x:
        f.renderer.crop = (
            slice(margin_px, margin_px + sy),
            slice(margin_px, margin_px + sx),
        )
        f.shape_px = (sy, sx)
        f.importance = f.importance[:gy, :gx]
        f.content_fraction = f.content_fraction[:gy, :gx]
        f.illumination = illumination_field((sy, sx), optics.n_channels, _rng(seed, split, 11))
    return f


def _defocus_array(z_um: ArrayLike | None) -> NDArray[np.float64]:
    if z_um is None:
        return DEFAULT_DEFOCUS_UM.copy()
    z = np.atleast_1d(np.asarray(z_um, dtype=np.float64))
    if z.ndim != 1 or z.size == 0:
        raise ValueError(
            f"z_um must be a non-empty 1-D sequence of defocus values, got shape {z.shape}"
        )
    if not np.all(np.isfinite(z)):
        raise ValueError("z_um holds NaN or infinite values")
    return z


def iter_simulate_stack(
    kind: str = "cell",
    sparsity: str = "sparse",
    z_um: ArrayLike | None = None,
    optics: Optics | None = None,
    seed: int = 0,
    *,
    shape_px: tuple[int, int] = (FIELD_PX, FIELD_PX),
    split: str = "test",
    noise: bool = True,
) -> Iterator[tuple[int, float, NDArray[Any]]]:
    """Yield ``(index, defocus_um, image)`` plane by plane (see :func:`simulate_stack`).

    Parameters
    ----------
    kind, sparsity, z_um, optics, seed, shape_px, split, noise
        As for :func:`simulate_stack`.

    Yields
    ------
    tuple
        Plane index, its defocus (µm) and the camera image.
    """
    d = _defocus_array(z_um)
    fld = simulate_field(kind, sparsity, optics, seed, shape_px=shape_px, split=split)
    yield from _planes(fld, d, noise=noise)


def _planes(
    fld: SimulatedField, defocus_um: NDArray[np.float64], *, noise: bool
) -> Iterator[tuple[int, float, NDArray[Any]]]:
    """Render a field plane by plane; plane ``i`` has its own noise stream."""
    for i, dz in enumerate(defocus_um):
        rng = _rng(fld.seed, fld.split, 17, i) if noise else None
        yield i, float(dz), fld.snap(fld.z_focus_um + float(dz), rng=rng, noise=noise)


def simulate_stack(
    kind: str = "cell",
    sparsity: str = "sparse",
    z_um: ArrayLike | None = None,
    optics: Optics | None = None,
    seed: int = 0,
    *,
    shape_px: tuple[int, int] = (FIELD_PX, FIELD_PX),
    split: str = "test",
    noise: bool = True,
) -> SimulatedStack:
    """Simulate a brightfield defocus z-stack with its labels.

    Parameters
    ----------
    kind : {"cell", "tissue"}
        Cytology (Pap stain) or histology (H&E) specimen.
    sparsity : {"dense", "sparse", "extremely_sparse", "empty"}
        Content level (see :func:`simulate_field`).
    z_um : sequence of float, optional
        Defocus of each plane relative to the specimen's best focus (µm);
        default −25…+25 µm in 0.5 µm steps (101 planes, as in the paper).
    optics : Optics, optional
        Default ``Optics()``.
    seed : int
        Seed (deterministic output).
    shape_px : tuple of int
        Field shape (default 2016 × 2016, the paper's crop).
    split : {"train", "test"}
        Seed stream; the same seed gives unrelated specimens in each split.
    noise : bool
        Add camera noise.

    Returns
    -------
    SimulatedStack
        ``images`` ``(Z, Y, X, C)`` with ``defocus_um == z_um`` and labels.

    Examples
    --------
    >>> s = simulate_stack("cell", "extremely_sparse", z_um=[-2, 0, 2], shape_px=(448, 448))
    >>> s.images.shape
    (3, 448, 448, 3)
    """
    d = _defocus_array(z_um)
    optics = optics or Optics()
    fld = simulate_field(kind, sparsity, optics, seed, shape_px=shape_px, split=split)
    images: NDArray[Any] | None = None
    for i, _, img in _planes(fld, d, noise=noise):
        if images is None:
            images = np.empty((len(d), *img.shape), img.dtype)
        images[i] = img
    assert images is not None
    return SimulatedStack(
        images=images,
        defocus_um=d,
        stage_z_um=d + fld.z_focus_um,
        z_focus_um=fld.z_focus_um,
        importance=fld.importance,
        content_fraction=fld.content_fraction,
        kind=kind,
        sparsity=sparsity,
        split=split,
        seed=int(seed),
        optics=optics,
    )


@dataclass(frozen=True)
class PatchBatch:
    """Training patches with labels.

    Attributes
    ----------
    images : ndarray
        ``(N, P, P, C)`` camera patches.
    defocus_um : ndarray
        ``(N,)`` signed defocus of each patch.
    importance : ndarray
        ``(N,)`` W* label of each patch (1: content).
    kind, sparsity : ndarray of str
        ``(N,)`` specimen kind and region content level of each patch.
    """

    images: NDArray[Any]
    defocus_um: NDArray[np.float64]
    importance: NDArray[np.float32]
    kind: NDArray[np.str_]
    sparsity: NDArray[np.str_]


class PatchSampler:
    """Draw labelled 224 px training patches without rendering whole fields.

    Each draw renders a 5×5-patch region (1120 px) and keeps its inner 3×3
    patches, which have one full patch (38.6 µm at the default optics) of
    real specimen around them to blur in; the specimen spectra are reused
    for ``planes_per_region`` random defocus values.

    Parameters
    ----------
    optics : Optics, optional
        Default ``Optics()``.
    kinds : sequence of str
        Specimen kinds to draw from.
    content_probability : float
        Probability that a region cell holds content.
    defocus_range_um : tuple of float
        Uniform defocus range (µm).
    planes_per_region : int
        Defocus values rendered per region.
    split : {"train", "test"}
        Seed stream.
    seed : int
        Seed.
    noise : bool
        Add camera noise.
    """

    REGION_CELLS = 5

    def __init__(
        self,
        optics: Optics | None = None,
        *,
        kinds: Sequence[str] = SPECIMEN_KINDS,
        content_probability: float = 0.6,
        defocus_range_um: tuple[float, float] = (-25.0, 25.0),
        planes_per_region: int = 8,
        split: str = "train",
        seed: int = 0,
        noise: bool = True,
    ) -> None:
        for k in kinds:
            _check_choice("kind", k, SPECIMEN_KINDS)
        _check_choice("split", split, tuple(_SPLITS))
        if not 0.0 <= content_probability <= 1.0:
            raise ValueError(f"content_probability must be in [0, 1], got {content_probability}")
        lo, hi = (float(v) for v in defocus_range_um)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(
                f"defocus_range_um must be finite (lo, hi) with lo < hi, got {defocus_range_um}"
            )
        if planes_per_region < 1:
            raise ValueError(f"planes_per_region must be >= 1, got {planes_per_region}")
        self.optics = optics or Optics()
        self.kinds = tuple(kinds)
        self.content_probability = float(content_probability)
        self.defocus_range_um = (lo, hi)
        self.planes_per_region = int(planes_per_region)
        self.split = split
        self.seed = int(seed)
        self.noise = noise
        self._rng = _rng(seed, split, 23)

    def iter_regions(self) -> Iterator[PatchBatch]:
        """Yield batches of ``9 × planes_per_region`` patches, one region each."""
        while True:
            yield self._region()

    def _region(self) -> PatchBatch:
        n = self.REGION_CELLS
        rng = self._rng
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        cells = rng.random((n, n)) < self.content_probability
        frac = float(cells[1:-1, 1:-1].mean())
        level = "dense" if frac > 0.5 else ("sparse" if frac > 0.0 else "empty")
        region_seed = int(rng.integers(2**31 - 1))
        spec = make_specimen(
            kind,
            level,
            shape_px=(n * PATCH_PX, n * PATCH_PX),
            pixel_size_um=self.optics.pixel_size_um,
            patch_px=PATCH_PX,
            seed=region_seed,
            split=self.split,
            content_cells=cells,
        )
        fld = SimulatedField(
            spec, self.optics, margin_px=PATCH_PX, seed=region_seed, split=self.split
        )
        lo, hi = self.defocus_range_um
        imgs, dfs, imps = [], [], []
        for dz in rng.uniform(lo, hi, size=self.planes_per_region):
            img = fld.snap(fld.z_focus_um + float(dz), rng=rng, noise=self.noise)
            if img.ndim == 2:
                img = img[..., None]
            for i in range(3):
                for j in range(3):
                    imgs.append(
                        img[i * PATCH_PX : (i + 1) * PATCH_PX, j * PATCH_PX : (j + 1) * PATCH_PX]
                    )
                    dfs.append(float(dz))
                    imps.append(float(fld.importance[i, j]))
        m = len(imgs)
        return PatchBatch(
            images=np.stack(imgs),
            defocus_um=np.asarray(dfs),
            importance=np.asarray(imps, np.float32),
            kind=np.full(m, kind),
            sparsity=np.full(m, level),
        )

    def sample(self, n: int) -> PatchBatch:
        """Return ``n`` patches (from ``ceil(n / (9 · planes_per_region))`` regions).

        Parameters
        ----------
        n : int
            Number of patches (> 0).

        Returns
        -------
        PatchBatch
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        parts: list[PatchBatch] = []
        have = 0
        while have < n:
            b = self._region()
            parts.append(b)
            have += len(b.defocus_um)
        cat = {
            k: np.concatenate([getattr(p, k) for p in parts])[:n]
            for k in ("images", "defocus_um", "importance", "kind", "sparsity")
        }
        return PatchBatch(**cat)
