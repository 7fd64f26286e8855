"""Scan a focus map over a grid of tiles: one-shot per tile, or key focus points.

Two ways to build the focus map a whole-slide scan images its tiles with
(SparseFocus paper, Section 5 and Fig. 6-7):

``"one_shot"``
    Visit every tile once: move XY, snap **one** image at the current z
    guess, predict its signed defocus with the SparseFocus model, and take
    ``z_focus = z_snap - defocus`` as the tile's focus. A robust, confidence
    weighted polynomial surface (:func:`~napari_sparsefocus.core.fit_focus_surface`)
    through all tiles is the map; tiles the model abstains on (empty) get
    weight 0, and wrong predictions are rejected as outliers.
``"key_points"``
    The classical key-focus-point (KFP) method: at a few tiles spread over
    the grid, find focus with the iterative hill climb
    (:func:`~napari_sparsefocus.core.iter_hill_climb`, many snaps each),
    skip tiles whose focus curve is flat (no content), and interpolate
    between the points (:func:`~napari_sparsefocus.core.interpolate_key_points`).

Both count their cost the same way: every snap, every stage move (Z and XY),
the simulated time when a ``clock`` is given, and the wall time.
:func:`iter_scan_focus_map` is a generator (yields a :class:`FocusMapStep`
after every snap, so a GUI can show progress and stop between snaps) that
returns a :class:`FocusMapResult`; :func:`scan_focus_map` runs it through.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..core import (
    fit_focus_surface,
    interpolate_key_points,
    iter_hill_climb,
    surface_terms,
)
from ._camera import snap_image

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Sequence

    from numpy.typing import NDArray
    from pymmcore_plus import CMMCorePlus

    from ..core import SearchResult, SearchStep
    from ..core.nn import DefocusPrediction, SparseFocusModel

__all__ = [
    "FOCUS_MAP_METHODS",
    "FocusMapResult",
    "FocusMapStep",
    "FocusMapTile",
    "iter_scan_focus_map",
    "scan_focus_map",
]

logger = logging.getLogger(__name__)

#: Methods of :func:`iter_scan_focus_map`.
FOCUS_MAP_METHODS = ("one_shot", "key_points")
#: A z guess extrapolated from neighbouring tiles stays within this of their focus range.
_GUESS_CLAMP_UM = 3.0
#: Nearest tiles needed before the z guess extrapolates a robust plane.
_GUESS_MIN_PLANE = 5
#: Tiles needed before the z guess extrapolates a robust quadratic through all of them.
_GUESS_MIN_QUADRATIC = 7
#: Patches of content (RIN importance at or above the model's threshold) at which a
#: one-shot tile gets its full weight; a tile with fewer gets the fraction it has.
_FULL_EVIDENCE_PATCHES = 12


@dataclass(frozen=True)
class FocusMapTile:
    """The focus measurement of one tile.

    Attributes
    ----------
    index : int
        Position of the tile in the grid order.
    x_um, y_um : float
        Tile centre (stage µm).
    measured : bool
        Whether the tile was visited (one-shot: every tile; key points: the
        tiles searched, including skipped empty ones).
    z_snap_um : float
        Z of the (first) snap at the tile (NaN when not visited).
    z_focus_um : float
        Measured in-focus z (NaN when not measured or no estimate).
    defocus_um : float
        Defocus at ``z_snap_um`` the focus was computed from (one-shot: the
        prediction, sign flipped when ``resolve_sign`` switched the tile;
        key points: ``z_snap_um - z_focus_um``); NaN when none.
    predicted_um : float
        One-shot: the model's signed prediction (NaN when it abstained, and
        for key points).
    confidence : float
        Weight in ``[0, 1]`` the map gives the tile (0: ignored).
    verdict : str
        The model's verdict (one-shot), "converged" / "not converged" /
        "no content" (key points), or "" for unvisited tiles.
    snaps : int
        Snaps taken at this tile.
    """

    index: int
    x_um: float
    y_um: float
    measured: bool = False
    z_snap_um: float = math.nan
    z_focus_um: float = math.nan
    defocus_um: float = math.nan
    predicted_um: float = math.nan
    confidence: float = 0.0
    verdict: str = ""
    snaps: int = 0


@dataclass(frozen=True)
class FocusMapStep:
    """Progress record yielded after every snap of a focus-map scan.

    Attributes
    ----------
    method : str
        "one_shot" or "key_points".
    tile : FocusMapTile
        The tile being measured (for a key-point search in progress, its
        fields so far).
    n_tiles : int
        Tiles in the grid.
    tiles_done : int
        Tiles (one-shot) or key points (key points) finished so far.
    snaps : int
        Snaps so far in the whole scan.
    moves : int
        Stage moves (Z and XY) so far.
    message : str
        One line for a status bar.
    """

    method: str
    tile: FocusMapTile
    n_tiles: int
    tiles_done: int
    snaps: int
    moves: int
    message: str


@dataclass(frozen=True, eq=False)
class FocusMapResult:
    """A scanned focus map and what it cost.

    Attributes
    ----------
    method : str
        "one_shot" or "key_points".
    tiles : tuple of FocusMapTile
        Every tile of the grid, in grid order.
    surface : callable
        The map, ``surface(x_um, y_um) -> z_um`` (a
        :class:`~napari_sparsefocus.core.FocusSurface` for one-shot, a
        :class:`~napari_sparsefocus.core.KeyPointInterpolator` for key points).
    snaps : int
        Images snapped.
    z_moves, xy_moves : int
        Focus and XY stage moves commanded (a move to where the stage already
        is does not count).
    sim_time_s : float or None
        Time the scan took on the ``clock`` given to the scan (e.g. a
        simulated microscope's clock: exposures, readouts and moves); None
        without a clock.
    wall_s : float
        Wall-clock duration of the scan, inference and fitting included.
    message : str
        Summary (fit degree, rejected tiles, skipped key points, ...).
    """

    method: str
    tiles: tuple[FocusMapTile, ...]
    surface: Callable[[Any, Any], Any]
    snaps: int
    z_moves: int
    xy_moves: int
    sim_time_s: float | None
    wall_s: float
    message: str = ""
    _arrays: dict[str, NDArray[Any]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def _column(self, name: str) -> NDArray[Any]:
        if name not in self._arrays:
            self._arrays[name] = np.array([getattr(t, name) for t in self.tiles])
        return self._arrays[name]

    @property
    def moves(self) -> int:
        """All stage moves, ``z_moves + xy_moves``."""
        return self.z_moves + self.xy_moves

    @property
    def x_um(self) -> NDArray[np.float64]:
        """Tile centres X (µm), grid order."""
        return self._column("x_um")

    @property
    def y_um(self) -> NDArray[np.float64]:
        """Tile centres Y (µm), grid order."""
        return self._column("y_um")

    @property
    def z_measured_um(self) -> NDArray[np.float64]:
        """Measured in-focus z per tile (NaN where none)."""
        return self._column("z_focus_um")

    @property
    def confidence(self) -> NDArray[np.float64]:
        """Weight per tile (0: ignored by the map)."""
        return self._column("confidence")

    @property
    def z_map_um(self) -> NDArray[np.float64]:
        """The map's z at every tile centre: where to image each tile."""
        return np.asarray(self.surface(self.x_um, self.y_um), dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary (tiles and cost; not the surface)."""
        return {
            "method": self.method,
            "snaps": self.snaps,
            "z_moves": self.z_moves,
            "xy_moves": self.xy_moves,
            "sim_time_s": self.sim_time_s,
            "wall_s": self.wall_s,
            "message": self.message,
            "tiles": [
                {
                    k: (None if isinstance(v, float) and math.isnan(v) else v)
                    for k, v in vars(t).items()
                }
                for t in self.tiles
            ],
        }


# ---------------------------------------------------------------------- grid
def _fov_um(core: CMMCorePlus) -> tuple[float | None, float | None]:
    px = float(core.getPixelSizeUm() or 0.0)
    if px <= 0:
        return None, None
    try:
        _, _, w, h = core.getROI()
    except Exception:  # no camera: fall back to the plan's own FOV
        return None, None
    return float(w) * px, float(h) * px


def grid_positions(
    grid: Any,
    core: CMMCorePlus | None = None,
    *,
    center_xy_um: tuple[float, float] | None = None,
) -> list[tuple[float, float]]:
    """Return the absolute ``(x_um, y_um)`` tile centres of a grid.

    Parameters
    ----------
    grid : useq grid plan or sequence of (x, y)
        A useq-schema grid (``GridRowsColumns``, ``GridWidthHeight``,
        ``GridFromEdges``, ``GridFromPolygon``, ...) or explicit positions.
        Plans without ``fov_width`` / ``fov_height`` take the camera's field
        of view from `core` (ROI × pixel size). Relative plans are centred on
        `center_xy_um`.
    core : CMMCorePlus, optional
        Gives the field of view and, for relative plans without
        `center_xy_um`, the current XY position.
    center_xy_um : tuple of float, optional
        Origin of a relative plan.

    Returns
    -------
    list of tuple of float
        Positions in the plan's own order (useq's ``iter_grid_positions``).

    Raises
    ------
    ValueError
        For an empty grid, non-finite positions, or a relative plan with
        neither `center_xy_um` nor a core.
    """
    if hasattr(grid, "iter_grid_positions"):
        fw = getattr(grid, "fov_width", None)
        fh = getattr(grid, "fov_height", None)
        if (fw is None or fh is None) and core is not None:
            cw, ch = _fov_um(core)
            fw = fw if fw is not None else cw
            fh = fh if fh is not None else ch
        positions = list(grid.iter_grid_positions(fw, fh))
        if getattr(grid, "is_relative", True):
            if center_xy_um is None:
                if core is None:
                    raise ValueError("a relative grid plan needs center_xy_um or a core")
                cx, cy = (float(v) for v in core.getXYPosition())
            else:
                cx, cy = (float(v) for v in center_xy_um)
        else:
            cx = cy = 0.0
        out = [(cx + float(p.x), cy + float(p.y)) for p in positions]
    else:
        if not isinstance(grid, Iterable):
            raise ValueError(f"grid must be a useq grid plan or (x, y) positions, got {grid!r}")
        out = []
        for p in grid:
            try:
                x, y = p
            except (TypeError, ValueError):
                raise ValueError(f"grid positions must be (x_um, y_um) pairs, got {p!r}") from None
            out.append((float(x), float(y)))
    if not out:
        raise ValueError("the grid has no positions")
    if not all(math.isfinite(x) and math.isfinite(y) for x, y in out):
        raise ValueError("grid positions must be finite")
    return out


# ---------------------------------------------------------------------- stage bookkeeping
class _Stage:
    """Moves and snaps through the core, counting them."""

    def __init__(self, core: CMMCorePlus) -> None:
        self.core = core
        self.snaps = 0
        self.z_moves = 0
        self.xy_moves = 0
        self.z_um = float(core.getZPosition())
        self.xy_um = tuple(float(v) for v in core.getXYPosition())

    def move_xy(self, x_um: float, y_um: float) -> None:
        if (x_um, y_um) == self.xy_um:
            return
        self.core.setXYPosition(x_um, y_um)
        self.core.waitForDevice(self.core.getXYStageDevice())
        self.xy_moves += 1
        self.xy_um = (x_um, y_um)

    def move_z(self, z_um: float) -> None:
        if z_um == self.z_um:
            return
        self.core.setZPosition(z_um)
        self.core.waitForDevice(self.core.getFocusDevice())
        self.z_moves += 1
        self.z_um = z_um

    def snap(self) -> NDArray[Any]:
        image = snap_image(self.core)
        self.snaps += 1
        return image

    def snap_at(self, z_um: float) -> NDArray[Any]:
        self.move_z(z_um)
        return self.snap()


def _check_pos(name: str, value: float, *, allow_zero: bool = False) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(
            f"{name} must be finite and {'>=' if allow_zero else '>'} 0, got {value!r}"
        )
    return v


def _tile_confidence(
    pred: DefocusPrediction,
    *,
    dof_um: float,
    low_confidence_weight: float,
    threshold: float,
) -> float:
    """Weight of a one-shot prediction: 0 when abstaining, else from evidence and agreement.

    The product of three factors in ``[0, 1]``:

    - agreement: ``0.25 + 0.75 ×`` how far the patches' sign agreement is above
      chance;
    - spread: ``1 / (1 + (spread / DoF)²)``;
    - evidence: the share of :data:`_FULL_EVIDENCE_PATCHES` patches of content
      the tile holds. A tile read from one or two patches has no (or almost no)
      spread to show its error, and those are the tiles a one-shot reading is
      worst on (a lone cell or tissue fragment), so a spread of 0 must not
      mean full confidence.

    × `low_confidence_weight` for a "low confidence" verdict.
    """
    if pred.defocus_um is None or pred.verdict == "no usable content":
        return 0.0
    agreement = min(max((float(pred.direction_agreement) - 0.5) / 0.5, 0.0), 1.0)
    spread = float(pred.spread_um) / dof_um
    n_content = int(np.count_nonzero(np.asarray(pred.importance) >= threshold))
    evidence = min(max(n_content, 1) / _FULL_EVIDENCE_PATCHES, 1.0)
    w = (0.25 + 0.75 * agreement) / (1.0 + spread**2) * evidence
    if pred.verdict != "ok":
        w *= low_confidence_weight
    return float(min(max(w, 0.0), 1.0))


# ---------------------------------------------------------------------- one-shot
def _visit_order(positions: list[tuple[float, float]], start: tuple[float, float]) -> list[int]:
    """Tile indices from the start outwards: rings of growing distance, each swept by angle.

    Every tile after the first then has measured neighbours on its inner side
    to extrapolate its z guess from, and the z the user focused at (at the
    start position) is used where it is valid.
    """
    xy = np.asarray(positions, dtype=np.float64)
    if len(xy) < 2:
        return list(range(len(xy)))
    rel = xy - np.asarray(start, dtype=np.float64)
    dist = np.hypot(rel[:, 0], rel[:, 1])
    gaps = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(gaps, np.inf)
    width = float(np.median(gaps.min(axis=1)))
    ring = np.round(dist / width) if width > 0 else np.zeros(len(xy))
    angle = np.arctan2(rel[:, 1], rel[:, 0])
    order: list[int] = []
    last = 0.0
    for r in np.unique(ring):
        idx = np.flatnonzero(ring == r)
        idx = idx[np.argsort((angle[idx] - last) % (2 * math.pi), kind="stable")]
        order.extend(int(i) for i in idx)
        last = float(angle[idx[-1]])
    return order


def _guess_z(
    done: list[FocusMapTile],
    x: float,
    y: float,
    z_start: float,
    n_nearest: int,
    plausible: Callable[[FocusMapTile], bool],
    min_scale_um: float,
    resolve_sign: bool,
    offset_um: float,
) -> tuple[float, int]:
    """Extrapolate the focus at ``(x, y)`` from the plausible tiles measured so far.

    From seven confident, plausible tiles on: a robust quadratic
    (:func:`~napari_sparsefocus.core.fit_focus_surface`, degree 2, with the
    sign-flipped alternatives when `resolve_sign`) through all of them. A
    slide's focal surface bows (a dome or a saddle of several µm over a
    scan), which a plane through the nearest tiles extrapolates into the
    outer rings with the wrong curvature, and a one-shot reading is the
    less accurate the farther the snap lands from the aimed offset. Before
    that (or when the quadratic is degenerate): a robust plane through the
    `n_nearest` nearest such tiles. Either is clamped to within a few µm of
    the focus range of the tiles it used. With fewer than five (or
    collinear) tiles, the median focus of the nearest three (with
    `resolve_sign`, of those whose defocus has the sign of `offset_um`, if
    any); `z_start` before any. Also returns the number of tiles used.
    """
    good = [t for t in done if t.confidence > 0 and math.isfinite(t.z_focus_um) and plausible(t)]
    if not good:
        return z_start, 0
    if len(good) >= _GUESS_MIN_QUADRATIC:
        try:
            quad = fit_focus_surface(
                [t.x_um for t in good],
                [t.y_um for t in good],
                [t.z_focus_um for t in good],
                [t.confidence for t in good],
                degree=2,
                min_scale_um=min_scale_um,
                z_alt_um=[_alt_z(t) for t in good] if resolve_sign else None,
            )
        except ValueError:  # degenerate for a quadratic (e.g. all on a line): a plane
            pass
        else:
            zq = quad.z_um
            guess = float(quad(x, y))
            guess = float(np.clip(guess, zq.min() - _GUESS_CLAMP_UM, zq.max() + _GUESS_CLAMP_UM))
            return guess, len(good)
    d = np.array([math.hypot(t.x_um - x, t.y_um - y) for t in good])
    near = [good[i] for i in np.argsort(d, kind="stable")[:n_nearest]]
    zs = np.array([t.z_focus_um for t in near])
    if len(near) < _GUESS_MIN_PLANE:
        # too few tiles for a robust plane: the median focus of the nearest ones (with
        # `resolve_sign`, of those whose defocus has the sign aimed at, if any)
        use = near
        if resolve_sign and offset_um != 0:
            use = [t for t in near if t.defocus_um * offset_um > 0] or near
        guess = float(np.median([t.z_focus_um for t in use[:3]]))
    else:
        try:
            plane = fit_focus_surface(
                [t.x_um for t in near],
                [t.y_um for t in near],
                zs,
                [t.confidence for t in near],
                degree=1,
                min_scale_um=min_scale_um,
                z_alt_um=[_alt_z(t) for t in near] if resolve_sign else None,
            )
        except ValueError:  # collinear tiles: no plane
            guess = float(np.median(zs[:3]))
        else:
            guess = float(plane(x, y))
    guess = float(np.clip(guess, zs.min() - _GUESS_CLAMP_UM, zs.max() + _GUESS_CLAMP_UM))
    return guess, len(near)


def _alt_z(t: FocusMapTile) -> float:
    """Return the tile's focus with the sign of its defocus flipped."""
    return t.z_snap_um + t.defocus_um


def _fit_surface(
    tiles: Sequence[FocusMapTile],
    degree: int,
    min_scale_um: float,
    resolve_sign: bool,
    spline_smoothing: float | None = None,
) -> tuple[Any, list[FocusMapTile], str]:
    x = np.array([t.x_um for t in tiles])
    y = np.array([t.y_um for t in tiles])
    z = np.array([t.z_focus_um for t in tiles])
    z_alt = np.array([_alt_z(t) for t in tiles])
    w = np.array([t.confidence for t in tiles])
    ok = np.isfinite(z) & np.isfinite(z_alt) & (w > 0)
    n_ok = int(np.count_nonzero(ok))
    if n_ok == 0:
        raise RuntimeError(
            "no tile gave a usable focus estimate (the model abstained everywhere): "
            "the focus map needs tiles with content"
        )
    z = np.where(ok, z, 0.0)
    z_alt = np.where(ok, z_alt, 0.0)
    w = np.where(ok, w, 0.0)
    d = degree
    while surface_terms(d) > n_ok:
        d -= 1
    while True:
        try:
            surface = fit_focus_surface(
                x,
                y,
                z,
                w,
                degree=d,
                min_scale_um=min_scale_um,
                z_alt_um=z_alt if resolve_sign else None,
                spline_smoothing=spline_smoothing,
            )
        except ValueError:
            if d == 0:  # pragma: no cover - a constant always fits
                raise
            d -= 1
            continue
        break
    out = list(tiles)
    for i in np.flatnonzero(surface.switched):
        t = out[i]
        out[i] = dataclasses.replace(
            t,
            z_focus_um=_alt_z(t),
            defocus_um=-t.defocus_um,
            verdict=t.verdict + " (sign from neighbours)",
        )
    rejected = int(np.count_nonzero(surface.outliers))
    msg = f"degree-{d} surface"
    if surface.spline_smoothing is not None:
        msg += f" + smoothing spline ({surface.spline_smoothing:g})"
    msg += f" through {n_ok} of {len(tiles)} tiles"
    if d < degree:
        msg += f" (degree lowered from {degree}: too few or collinear confident tiles)"
    msg += (
        f", {int(surface.switched.sum())} signs corrected from the neighbours, {rejected} "
        f"rejected as outliers, residual scale {surface.scale_estimate_um:.2f} µm"
    )
    return surface, out, msg


def _iter_one_shot(
    stage: _Stage,
    positions: list[tuple[float, float]],
    model: SparseFocusModel,
    *,
    z_start: float,
    degree: int,
    spline_smoothing: float | None,
    snap_offset_um: float,
    z_range_um: float,
    follow: bool,
    n_nearest: int,
    guess_gate_um: float,
    resolve_sign: bool,
    low_confidence_weight: float,
    min_scale_um: float,
) -> Generator[FocusMapStep, None, tuple[list[FocusMapTile], Any, str]]:
    px = float(stage.core.getPixelSizeUm() or 0.0) or None
    dof = float(model.optics.dof_um)
    done: list[FocusMapTile] = []

    def plausible(t: FocusMapTile) -> bool:
        # a prediction far from the defocus the snap was aimed at is suspect: it still
        # enters the robust fit, but does not steer the guesses of the next tiles
        return abs(t.defocus_um - snap_offset_um) <= guess_gate_um

    n = len(positions)
    order = _visit_order(positions, (stage.xy_um[0], stage.xy_um[1])) if follow else list(range(n))
    for k, i in enumerate(order):
        x, y = positions[i]
        stage.move_xy(x, y)
        guess, _ = (
            _guess_z(
                done,
                x,
                y,
                z_start,
                n_nearest,
                plausible,
                min_scale_um,
                resolve_sign,
                snap_offset_um,
            )
            if follow
            else (z_start, 0)
        )
        z_snap = guess + snap_offset_um
        image = stage.snap_at(z_snap)
        pred = model.predict(image, pixel_size_um=px)
        w = _tile_confidence(
            pred,
            dof_um=dof,
            low_confidence_weight=low_confidence_weight,
            threshold=model.threshold,
        )
        if pred.defocus_um is None:
            z_focus = defocus = math.nan
        else:
            defocus = float(pred.defocus_um)
            z_focus = z_snap - defocus
            if abs(z_focus - z_start) > z_range_um:
                w = 0.0  # implausible: outside the expected focus range
        tile = FocusMapTile(
            index=i,
            x_um=x,
            y_um=y,
            measured=True,
            z_snap_um=z_snap,
            z_focus_um=z_focus,
            defocus_um=defocus,
            predicted_um=defocus,
            confidence=w,
            verdict=pred.verdict,
            snaps=1,
        )
        done.append(tile)
        yield FocusMapStep(
            method="one_shot",
            tile=tile,
            n_tiles=n,
            tiles_done=k + 1,
            snaps=stage.snaps,
            moves=stage.z_moves + stage.xy_moves,
            message=(
                f"tile {k + 1}/{n} (#{i}): "
                + (
                    "no usable content"
                    if math.isnan(z_focus)
                    else f"focus {z_focus:.2f} µm (weight {w:.2f}, {pred.verdict})"
                )
            ),
        )
    done.sort(key=lambda t: t.index)
    surface, done, msg = _fit_surface(done, degree, min_scale_um, resolve_sign, spline_smoothing)
    return done, surface, msg


# ---------------------------------------------------------------------- key points
def _key_point_order(positions: list[tuple[float, float]]) -> list[int]:
    """Tile indices in key-point preference: centre first, then farthest-point order."""
    xy = np.asarray(positions, dtype=np.float64)
    centre = xy.mean(axis=0)
    first = int(np.argmin(np.hypot(*(xy - centre).T)))
    order = [first]
    dist = np.hypot(*(xy - xy[first]).T)
    while len(order) < len(positions):
        dist_masked = dist.copy()
        dist_masked[order] = -1.0
        nxt = int(np.argmax(dist_masked))
        order.append(nxt)
        dist = np.minimum(dist, np.hypot(*(xy - xy[nxt]).T))
    return order


def _iter_key_points(
    stage: _Stage,
    positions: list[tuple[float, float]],
    *,
    z_start: float,
    n_key_points: int,
    interpolation: str,
    min_contrast: float,
    search: dict[str, Any],
) -> Generator[FocusMapStep, None, tuple[list[FocusMapTile], Any, str]]:
    n = len(positions)
    tiles: dict[int, FocusMapTile] = {}
    found: list[int] = []
    skipped = 0
    z_from = z_start
    for idx in _key_point_order(positions):
        if len(found) >= n_key_points:
            break
        x, y = positions[idx]
        stage.move_xy(x, y)
        snaps_before = stage.snaps
        z_first = z_from
        gen = iter_hill_climb(stage.snap_at, z_from, channel_axis=-1, **search)
        while True:
            try:
                step: SearchStep = next(gen)
            except StopIteration as stop:
                result: SearchResult = stop.value
                break
            partial = FocusMapTile(
                index=idx, x_um=x, y_um=y, measured=True, z_snap_um=z_first,
                snaps=stage.snaps - snaps_before,
            )  # fmt: skip
            yield FocusMapStep(
                method="key_points",
                tile=partial,
                n_tiles=n,
                tiles_done=len(found),
                snaps=stage.snaps,
                moves=stage.z_moves + stage.xy_moves,
                message=(
                    f"key point {len(found) + 1}/{n_key_points} (tile {idx + 1}): "
                    f"z {step.z_um:.2f} µm, best {step.z_best_um:.2f} µm"
                ),
            )
        scores = np.array([s for _, s in result.history])
        contrast = float((scores.max() - scores.min()) / max(abs(scores.max()), 1e-12))
        if contrast < min_contrast:
            verdict, conf = "no content", 0.0
            skipped += 1
        else:
            verdict = "converged" if result.converged else "not converged"
            conf = 1.0
            stage.move_z(result.z_best_um)  # end in focus, as a KFP system would
            z_from = result.z_best_um
            found.append(idx)
        tiles[idx] = FocusMapTile(
            index=idx,
            x_um=x,
            y_um=y,
            measured=True,
            z_snap_um=z_first,
            z_focus_um=result.z_best_um if conf > 0 else math.nan,
            defocus_um=z_first - result.z_best_um if conf > 0 else math.nan,
            confidence=conf,
            verdict=verdict,
            snaps=stage.snaps - snaps_before,
        )
        yield FocusMapStep(
            method="key_points",
            tile=tiles[idx],
            n_tiles=n,
            tiles_done=len(found),
            snaps=stage.snaps,
            moves=stage.z_moves + stage.xy_moves,
            message=(
                f"tile {idx + 1}: "
                + (
                    f"key point at {result.z_best_um:.2f} µm ({verdict})"
                    if conf > 0
                    else "flat focus curve, skipped"
                )
            ),
        )
    if not found:
        raise RuntimeError(
            "no key point found: every searched tile had a flat focus curve (no content)"
        )
    xs = [positions[i][0] for i in found]
    ys = [positions[i][1] for i in found]
    zs = [tiles[i].z_focus_um for i in found]
    method = interpolation
    if method in ("auto", "linear", "rbf") and len(found) < 3:
        method = "plane"
    try:
        interp = interpolate_key_points(xs, ys, zs, method=method)
    except ValueError:  # collinear key points
        interp = interpolate_key_points(xs, ys, zs, method="plane")
    all_tiles = [
        tiles.get(i, FocusMapTile(index=i, x_um=x, y_um=y)) for i, (x, y) in enumerate(positions)
    ]
    msg = f"{len(found)} key points ({interp.method} interpolation), {skipped} empty tiles skipped"
    return all_tiles, interp, msg


# ---------------------------------------------------------------------- public API
def iter_scan_focus_map(
    core: CMMCorePlus,
    grid: Any,
    model: SparseFocusModel | None = None,
    *,
    method: Literal["one_shot", "key_points"] = "one_shot",
    center_xy_um: tuple[float, float] | None = None,
    z_start_um: float | None = None,
    clock: Callable[[], float] | None = None,
    degree: int = 2,
    spline_smoothing: float | None = 0.1,
    snap_offset_um: float = -3.0,
    z_range_um: float = 30.0,
    follow: bool = True,
    n_nearest: int = 6,
    guess_gate_um: float = 6.0,
    resolve_sign: bool = True,
    low_confidence_weight: float = 0.3,
    min_scale_um: float | None = None,
    n_key_points: int = 5,
    interpolation: str = "auto",
    min_contrast: float = 0.05,
    search: dict[str, Any] | None = None,
) -> Generator[FocusMapStep, None, FocusMapResult]:
    """Scan a focus map over a grid of tiles, one snap at a time.

    Parameters
    ----------
    core : CMMCorePlus
        Core with a camera, a focus stage and an XY stage.
    grid : useq grid plan or sequence of (x, y)
        The tiles (see :func:`grid_positions`); a relative plan such as
        ``useq.GridRowsColumns(rows=5, columns=5)`` is centred on
        `center_xy_um` or the current XY position, and takes the camera's
        field of view unless it sets ``fov_width`` / ``fov_height`` (set them
        larger than the field to spread tiles apart).
    model : SparseFocusModel, optional
        One-shot predictor (default: the bundled model); unused by
        "key_points".
    method : {"one_shot", "key_points"}
        See the module docstring.
    center_xy_um : tuple of float, optional
        Origin of a relative grid plan (default: current XY).
    z_start_um : float, optional
        First z guess (default: current Z). One-shot: estimates farther than
        `z_range_um` from it are ignored.
    clock : callable, optional
        ``clock() -> seconds``; the result reports its difference over the
        scan as ``sim_time_s`` (e.g. ``lambda: scope.sim_time_s`` for the
        simulated microscope).
    degree : int, default 2
        One-shot: polynomial degree of the surface (lowered automatically when
        fewer confident tiles than terms).
    spline_smoothing : float or None, default 0.1
        One-shot: smoothing of the thin-plate spline through the inlier
        tiles' residuals added to the polynomial (``spline_smoothing`` of
        :func:`~napari_sparsefocus.core.fit_focus_surface`), for slides whose
        focal surface bows or ripples beyond a quadratic. None: the
        polynomial alone.
    snap_offset_um : float, default -3.0
        One-shot: snap at ``guess + snap_offset_um``, deliberately a few µm
        off the expected focus. There the model's sign is more reliable than
        at focus, and the two candidate foci of a tile, ``z_snap -/+
        |defocus|``, lie far enough apart for `resolve_sign` to tell them
        apart. The default snaps 3 µm *below*, where the bundled model reads
        held-out frames best (MAE 0.33 µm at -4…-2 µm against 0.61 µm at
        +2…+4 µm, ``benchmarks/bench_near_focus.py``); rerun that benchmark
        for another model. 0 snaps at the guess itself (see
        ``docs/focus-map-and-mda.md`` for the measured effect).
    z_range_um : float, default 30.0
        One-shot: plausible distance of any tile's focus from `z_start_um`.
    follow : bool, default True
        One-shot: visit the tiles from the start position outwards (rings
        swept by angle) and guess each tile's z from a robust plane through
        the `n_nearest` nearest confident tiles measured so far (from seven
        such tiles on, a robust quadratic through all of them). False:
        visit in grid order, every snap at ``z_start_um + snap_offset_um``.
    n_nearest : int, default 6
        One-shot: tiles the guess is extrapolated from.
    guess_gate_um : float, default 6.0
        One-shot: a tile whose defocus differs from `snap_offset_um` (the
        defocus the snap was aimed at) by more than this does not steer the
        guesses of later tiles (it still enters the robust fit).
    resolve_sign : bool, default True
        One-shot: let the neighbours decide the sign. The model's magnitude
        is reliable but its sign is not (on sparse content, near focus), and
        a wrong sign puts a tile's focus at ``z_snap + |d|`` instead of
        ``z_snap - |d|``. Each tile enters the fit with both candidates; one
        whose flipped candidate lies clearly closer to the surface through
        the others is switched (``FocusSurface.switched``, tile verdict
        "... (sign from neighbours)"), and the same is done for the z guesses.
    low_confidence_weight : float, default 0.3
        One-shot: weight factor of "low confidence" predictions.
    min_scale_um : float, optional
        One-shot: floor of the robust residual scale (default: a quarter of
        the model's depth of field).
    n_key_points : int, default 5
        Key points: number of points with content to find. Candidates are
        the tile nearest the grid centre, then farthest-point order (towards
        the corners).
    interpolation : str, default "auto"
        Key points: method of :func:`~napari_sparsefocus.core.interpolate_key_points`.
    min_contrast : float, default 0.05
        Key points: a tile whose focus measure varied by less than this
        fraction over its search is taken as empty and skipped.
    search : dict, optional
        Key points: keyword arguments of
        :func:`~napari_sparsefocus.core.iter_hill_climb` (``step_um``,
        ``min_step_um``, ``max_snaps``, ``measure``, ``z_min_um``, ...).

    Yields
    ------
    FocusMapStep
        After every snap (one-shot: every tile; key points: every search
        step and every finished point).

    Returns
    -------
    FocusMapResult
        The map, the per-tile measurements and the cost.

    Raises
    ------
    ValueError
        For an unknown method, an empty or non-finite grid, or bad options.
    RuntimeError
        When no tile gives a focus estimate (all empty).

    Notes
    -----
    The stage is left at the last tile (key points: at its focus). Moves to
    the position the stage is already at are not commanded and not counted.
    """
    if method not in FOCUS_MAP_METHODS:
        raise ValueError(f"method must be one of {FOCUS_MAP_METHODS}, got {method!r}")
    positions = grid_positions(grid, core, center_xy_um=center_xy_um)
    if int(n_key_points) != n_key_points or n_key_points < 1:
        raise ValueError(f"n_key_points must be an integer >= 1, got {n_key_points!r}")
    if int(n_nearest) != n_nearest or n_nearest < 1:
        raise ValueError(f"n_nearest must be an integer >= 1, got {n_nearest!r}")
    _check_pos("z_range_um", z_range_um)
    _check_pos("min_contrast", min_contrast, allow_zero=True)
    if not 0.0 <= float(low_confidence_weight) <= 1.0:
        raise ValueError(f"low_confidence_weight must be in [0, 1], got {low_confidence_weight!r}")
    if not math.isfinite(float(snap_offset_um)):
        raise ValueError(f"snap_offset_um must be finite, got {snap_offset_um!r}")
    surface_terms(degree)  # validates the degree
    if spline_smoothing is not None:
        _check_pos("spline_smoothing", spline_smoothing, allow_zero=True)
    wall0 = time.perf_counter()
    t0 = clock() if clock is not None else None
    stage = _Stage(core)
    z_start = stage.z_um if z_start_um is None else float(z_start_um)
    if not math.isfinite(z_start):
        raise ValueError(f"z_start_um must be finite, got {z_start_um!r}")

    if method == "one_shot":
        if model is None:
            from ..core.nn import load_model

            model = load_model()
        floor = 0.25 * float(model.optics.dof_um) if min_scale_um is None else min_scale_um
        tiles, surface, msg = yield from _iter_one_shot(
            stage,
            positions,
            model,
            z_start=z_start,
            degree=degree,
            spline_smoothing=None if spline_smoothing is None else float(spline_smoothing),
            snap_offset_um=float(snap_offset_um),
            z_range_um=float(z_range_um),
            follow=follow,
            n_nearest=int(n_nearest),
            guess_gate_um=_check_pos("guess_gate_um", guess_gate_um),
            resolve_sign=bool(resolve_sign),
            low_confidence_weight=float(low_confidence_weight),
            min_scale_um=_check_pos("min_scale_um", floor),
        )
    else:
        tiles, surface, msg = yield from _iter_key_points(
            stage,
            positions,
            z_start=z_start,
            n_key_points=int(n_key_points),
            interpolation=interpolation,
            min_contrast=float(min_contrast),
            search=dict(search or {}),
        )
    return FocusMapResult(
        method=method,
        tiles=tuple(tiles),
        surface=surface,
        snaps=stage.snaps,
        z_moves=stage.z_moves,
        xy_moves=stage.xy_moves,
        sim_time_s=None if clock is None or t0 is None else float(clock() - t0),
        wall_s=time.perf_counter() - wall0,
        message=msg,
    )


def scan_focus_map(
    core: CMMCorePlus,
    grid: Any,
    model: SparseFocusModel | None = None,
    **kwargs: Any,
) -> FocusMapResult:
    """Run :func:`iter_scan_focus_map` to completion.

    Parameters
    ----------
    core : CMMCorePlus
        Core with a camera, a focus stage and an XY stage.
    grid : useq grid plan or sequence of (x, y)
        The tiles.
    model : SparseFocusModel, optional
        One-shot predictor (default: the bundled model).
    **kwargs
        Keyword arguments of :func:`iter_scan_focus_map`.

    Returns
    -------
    FocusMapResult
        The map and its cost.
    """
    gen = iter_scan_focus_map(core, grid, model, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            result: FocusMapResult = stop.value
            return result
