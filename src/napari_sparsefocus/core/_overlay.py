"""Overlay geometry and bookkeeping for showing a defocus prediction over an image.

Pure numpy (no Qt, napari or torch): the focus-analysis widget turns a
:class:`~napari_sparsefocus.core.nn.DefocusPrediction` into layer data with
these functions, so the geometry is tested without a viewer.

Coordinate conventions
----------------------
A prediction's boxes (``crop_box_px``, ``box_px``) are ``(y0, x0, y1, x1)``
*edges* in the input image's pixels: pixel ``i`` spans ``[i, i + 1)``, so a
box ``(0, 0, 224, 224)`` covers pixels 0…223. napari puts pixel centres at
integer data coordinates: pixel ``i`` spans ``[i - 0.5, i + 0.5]``. An edge
``e`` therefore sits at napari data coordinate ``e - 0.5``, and at world
coordinate ``translate + (e - 0.5) · scale``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import NDArray

    from .nn import DefocusPrediction

__all__ = [
    "Placement",
    "PlaneRequest",
    "RequestTracker",
    "heatmap_placement",
    "image_pixel_size_um",
    "patch_label",
    "patch_rectangles",
    "plane_index",
    "summary_text",
]

#: Length units napari layers may carry, in micrometres.
_UM_PER_UNIT = {
    "nanometer": 1e-3,
    "nm": 1e-3,
    "micrometer": 1.0,
    "micron": 1.0,
    "um": 1.0,
    "µm": 1.0,
    "millimeter": 1e3,
    "mm": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
    "m": 1e6,
}
_PIXEL_UNITS = {"", "pixel", "pixels", "px"}


@dataclass(frozen=True)
class Placement:
    """Scale and translate of a 2D layer (``(y, x)`` order, world units).

    Attributes
    ----------
    scale : tuple of float
        World size of one layer pixel.
    translate : tuple of float
        World position of the layer's pixel ``(0, 0)`` centre.
    """

    scale: tuple[float, float]
    translate: tuple[float, float]


def heatmap_placement(
    crop_box_px: Sequence[float],
    grid: Sequence[int],
    *,
    pixel_scale: Sequence[float] = (1.0, 1.0),
    translate: Sequence[float] = (0.0, 0.0),
) -> Placement:
    """Place a ``(gy, gx)`` importance matrix exactly over the analysed crop.

    Parameters
    ----------
    crop_box_px : sequence of float
        ``(y0, x0, y1, x1)`` crop edges in the image's pixels.
    grid : sequence of int
        ``(gy, gx)``, the importance matrix shape.
    pixel_scale : sequence of float
        The image layer's ``(y, x)`` scale (world units per pixel).
    translate : sequence of float
        The image layer's ``(y, x)`` translate.

    Returns
    -------
    Placement
        ``scale = patch size × pixel_scale``; ``translate`` puts cell
        ``(0, 0)``'s centre half a patch inside the crop's corner, i.e.
        ``translate + (y0 - 0.5 + P / 2) · pixel_scale`` (see the module
        notes on napari's pixel centres).

    Raises
    ------
    ValueError
        An empty grid or crop.

    Examples
    --------
    >>> heatmap_placement((12, 0, 460, 448), (2, 2), pixel_scale=(0.5, 0.5))
    Placement(scale=(112.0, 112.0), translate=(61.75, 55.75))
    """
    y0, x0, y1, x1 = (float(v) for v in crop_box_px)
    gy, gx = (int(v) for v in grid)
    if gy < 1 or gx < 1 or y1 <= y0 or x1 <= x0:
        raise ValueError(f"empty grid {tuple(grid)} or crop {tuple(crop_box_px)}")
    py, px = (y1 - y0) / gy, (x1 - x0) / gx  # patch size in image pixels
    sy, sx = (float(v) for v in pixel_scale)
    ty, tx = (float(v) for v in translate)
    return Placement(
        scale=(py * sy, px * sx),
        translate=(ty + (y0 - 0.5 + py / 2) * sy, tx + (x0 - 0.5 + px / 2) * sx),
    )


def patch_rectangles(boxes_px: Sequence[Sequence[float]]) -> NDArray[np.float64]:
    """Return napari rectangle corners for boxes given as pixel edges.

    Parameters
    ----------
    boxes_px : sequence of (y0, x0, y1, x1)
        Box edges in the image's pixels (e.g. ``PatchPrediction.box_px``).

    Returns
    -------
    ndarray
        ``(n, 4, 2)`` corners ``(y, x)`` in the image layer's data
        coordinates (edges shifted by −0.5), clockwise from the top-left.
        A Shapes layer with the image layer's scale and translate shows them
        over the patches.

    Examples
    --------
    >>> patch_rectangles([(0, 224, 224, 448)])[0].tolist()
    [[-0.5, 223.5], [-0.5, 447.5], [223.5, 447.5], [223.5, 223.5]]
    """
    out = np.zeros((len(boxes_px), 4, 2), dtype=np.float64)
    for i, box in enumerate(boxes_px):
        y0, x0, y1, x1 = (float(v) - 0.5 for v in box)
        out[i] = [[y0, x0], [y0, x1], [y1, x1], [y1, x0]]
    return out


def patch_label(defocus_um: float) -> str:
    """Format one patch's defocus for its rectangle, e.g. ``"+1.23 µm"``.

    Parameters
    ----------
    defocus_um : float
        Signed defocus (``z_current - z_focus``).

    Returns
    -------
    str
        Signed, two decimals; a rounded zero is printed as ``"+0.00 µm"``.
    """
    value = round(float(defocus_um), 2) + 0.0  # no "-0.00"
    return f"{value:+.2f} µm"


def summary_text(prediction: DefocusPrediction, *, plane: Sequence[int] = ()) -> str:
    """Describe a prediction in a few lines for the widget's summary label.

    Parameters
    ----------
    prediction : DefocusPrediction
        The core's answer.
    plane : sequence of int
        Index of the analysed plane in the layer's leading axes (empty: 2D).

    Returns
    -------
    str
        Defocus ± spread (µm) with the focus move, direction agreement,
        sparsity class with k, and the verdict with its reason. With no
        usable content no number is shown.
    """
    head = f"Plane {', '.join(str(int(i)) for i in plane)}: " if len(plane) else ""
    sparsity = prediction.sparsity.replace("_", " ")
    if prediction.defocus_um is None or prediction.verdict == "no usable content":
        return (
            f"{head}no usable content — no defocus estimate\n"
            f"sparsity: {sparsity} · k = {prediction.k}\n"
            f"verdict: no usable content ({prediction.reason})"
        )
    d = round(float(prediction.defocus_um), 2) + 0.0
    move = -d + 0.0
    return (
        f"{head}defocus {d:+.2f} ± {prediction.spread_um:.2f} µm "
        f"(move focus by {move:+.2f} µm)\n"
        f"direction agreement: {100 * prediction.direction_agreement:.0f} %\n"
        f"sparsity: {sparsity} · k = {prediction.k}\n"
        f"verdict: {prediction.verdict} ({prediction.reason})"
    )


def plane_index(
    world_point: Sequence[float],
    *,
    scale: Sequence[float],
    translate: Sequence[float],
    shape: Sequence[int],
) -> tuple[int, ...]:
    """Index of the plane a layer shows at a viewer position.

    Parameters
    ----------
    world_point : sequence of float
        The viewer's ``dims.point`` (world coordinates, all viewer axes).
    scale, translate : sequence of float
        The layer's scale and translate along its leading (non-yx) axes.
    shape : sequence of int
        The layer's size along those axes.

    Returns
    -------
    tuple of int
        One index per leading axis, rounded and clipped into the layer;
        ``()`` for a 2D layer. Layers are aligned with the viewer's last
        axes, as napari does.

    Examples
    --------
    >>> plane_index((2.0, 0.0, 0.0), scale=(0.5,), translate=(-1.0,), shape=(11,))
    (6,)
    """
    n = len(shape)
    if n == 0:
        return ()
    if not (len(scale) == len(translate) == n):
        raise ValueError("scale, translate and shape must have one entry per leading axis")
    # the layer's leading axes are the viewer axes just before its last two
    pts = list(world_point)[:-2] if len(world_point) >= 2 else []
    pts = [0.0] * max(0, n - len(pts)) + pts
    pts = pts[len(pts) - n :]
    out = []
    for p, s, t, size in zip(pts, scale, translate, shape, strict=True):
        i = round((float(p) - float(t)) / float(s)) if float(s) != 0 else 0
        out.append(int(min(max(i, 0), int(size) - 1)))
    return tuple(out)


def image_pixel_size_um(scale: Sequence[float], units: Sequence[Any] | None = None) -> float | None:
    """Sample pixel size of an image layer from its ``(y, x)`` scale and units.

    Parameters
    ----------
    scale : sequence of float
        The layer's ``(y, x)`` scale.
    units : sequence, optional
        The layer's ``(y, x)`` units (strings or objects whose ``str`` is a
        unit name, e.g. pint units). napari's default unit is ``pixel``.

    Returns
    -------
    float or None
        µm per pixel; ``None`` (unknown: the model's pixel size is assumed)
        for a pixel-unit scale of exactly 1. Any other pixel-unit scale is
        taken as µm, napari's usual convention.

    Raises
    ------
    ValueError
        Non-square pixels, a non-positive scale or an unknown unit.
    """
    sizes: list[float | None] = []
    unit_list = list(units) if units is not None else [None, None]
    if len(scale) != 2 or len(unit_list) != 2:
        raise ValueError("need the (y, x) scale and units")
    for value, unit in zip(scale, unit_list, strict=True):
        v = float(value)
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"the layer's pixel scale must be > 0, got {v}")
        name = "" if unit is None else str(unit).strip()
        if name.lower() in _PIXEL_UNITS:
            sizes.append(None if v == 1.0 else v)
            continue
        factor = _UM_PER_UNIT.get(name, _UM_PER_UNIT.get(name.lower()))
        if factor is None:
            raise ValueError(f"cannot convert the layer's unit {name!r} to micrometres")
        sizes.append(v * factor)
    sy, sx = sizes
    if sy is None and sx is None:
        return None
    if sy is None or sx is None or not math.isclose(sy, sx, rel_tol=1e-6):
        raise ValueError(f"non-square pixels are not supported (scale {tuple(scale)})")
    return sx


@dataclass(frozen=True)
class PlaneRequest:
    """One request to analyse a plane.

    Attributes
    ----------
    serial : int
        Increasing number; the newest request has the largest.
    source : Any
        Identifies the image layer and its data version (compared with ``==``).
    plane : tuple of int
        Index in the layer's leading axes.
    settings : tuple
        Model and top-k settings the result depends on.
    """

    serial: int
    source: Any
    plane: tuple[int, ...]
    settings: tuple[Any, ...]

    def matches(self, source: Any, plane: Sequence[int], settings: Sequence[Any]) -> bool:
        """Whether a result of this request is valid for what is shown now."""
        return (
            self.source == source
            and self.plane == tuple(plane)
            and self.settings == tuple(settings)
        )


class RequestTracker:
    """Latest-wins bookkeeping for plane analyses (one runs, the newest waits).

    While an analysis runs, new requests do not start more work: the newest
    replaces any waiting one, and starts when the running one finishes.
    Results are applied only if :meth:`PlaneRequest.matches` what is shown
    when they arrive, so stale work is never applied to the wrong plane.
    """

    def __init__(self) -> None:
        self._serial = 0
        self.running: PlaneRequest | None = None
        self.pending: PlaneRequest | None = None

    def submit(
        self, source: Any, plane: Sequence[int], settings: Sequence[Any]
    ) -> PlaneRequest | None:
        """Register a request; return it if it should start now, else ``None`` (queued).

        Parameters
        ----------
        source : Any
            Layer identity (and data version).
        plane : sequence of int
            Plane index.
        settings : sequence
            Model and top-k settings.

        Returns
        -------
        PlaneRequest or None
            The request to start, or ``None`` when another runs (then it
            waits as :attr:`pending`, replacing an older waiting one).
        """
        self._serial += 1
        req = PlaneRequest(self._serial, source, tuple(int(i) for i in plane), tuple(settings))
        if self.running is None:
            self.running = req
            return req
        if self.running.matches(source, plane, settings):
            self.pending = None  # the running one already answers it
            return None
        self.pending = req
        return None

    def finish(self, request: PlaneRequest) -> PlaneRequest | None:
        """Mark a request finished; return the waiting request to start next, if any."""
        if self.running is not None and self.running.serial == request.serial:
            self.running = None
        if self.running is None and self.pending is not None:
            self.running, self.pending = self.pending, None
            return self.running
        return None

    def clear(self) -> None:
        """Forget running and waiting requests (e.g. when the widget closes)."""
        self.running = None
        self.pending = None
