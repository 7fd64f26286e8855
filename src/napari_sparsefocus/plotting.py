"""Pure-matplotlib drawing of the SparseFocus evaluation figures.

Every function draws onto a matplotlib :class:`~matplotlib.axes.Axes` given
by the caller and returns the artists it created. Nothing here imports Qt,
napari, torch or :mod:`matplotlib.pyplot`, and nothing calls ``show`` or
``savefig``: the same functions serve the Qt widgets (a
``FigureCanvasQTAgg``) and the offline report (a ``FigureCanvasAgg``).

References
----------
.. [1] Y. Zhai et al., "SparseFocus: Learning-based one-shot autofocus for
   microscopy with sparse content", arXiv:2502.06452 (2025), Figs. 2 and 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.patches import Rectangle

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from matplotlib.axes import Axes
    from matplotlib.collections import FillBetweenPolyCollection, PathCollection
    from matplotlib.container import BarContainer
    from matplotlib.image import AxesImage
    from matplotlib.lines import Line2D
    from numpy.typing import ArrayLike, NDArray

    from .evaluation import IntervalMAE

__all__ = [
    "DefocusCurveArtists",
    "MeasureComparisonArtists",
    "RegressionArtists",
    "format_bin_label",
    "plot_asymmetry_scatter",
    "plot_defocus_curve",
    "plot_focus_curves",
    "plot_interval_mae",
    "plot_measure_comparison",
    "plot_psf_profiles",
    "plot_psf_section",
    "plot_regression",
]

#: Light red used to shade the wrong-direction (opposite-sign) quadrants.
_WRONG_DIRECTION_COLOR = "tab:red"
_WRONG_DIRECTION_ALPHA = 0.08


@dataclass(frozen=True)
class RegressionArtists:
    """Artists created by :func:`plot_regression`.

    Attributes
    ----------
    scatter : matplotlib.collections.PathCollection
        The (predicted vs ground truth) points actually drawn.
    zero_error : matplotlib.lines.Line2D
        The ideal line ``pred = true`` spanning the axis range.
    dof_band : tuple of matplotlib.lines.Line2D
        The lines ``pred = true - dof_um / 2`` and ``pred = true + dof_um / 2``,
        in that order.
    wrong_direction : tuple of matplotlib.patches.Rectangle
        The shaded quadrants ``true > 0, pred < 0`` and ``true < 0, pred > 0``.
    limit_um : float
        Half-width of the (square, symmetric) axis range in µm.
    n_drawn : int
        Number of points drawn (after dropping non-finite pairs and
        subsampling to ``max_points``).
    n_total : int
        Number of finite (true, pred) pairs given.
    """

    scatter: PathCollection
    zero_error: Line2D
    dof_band: tuple[Line2D, Line2D]
    wrong_direction: tuple[Rectangle, Rectangle]
    limit_um: float
    n_drawn: int
    n_total: int


def _as_1d(values: ArrayLike, name: str) -> NDArray[np.float64]:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be an array of numbers") from exc
    if arr.ndim != 1:
        arr = arr.ravel()
    return arr


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    out = float(value)
    if not math.isfinite(out) or out <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return out


def plot_regression(
    ax: Axes,
    true_um: ArrayLike,
    pred_um: ArrayLike,
    *,
    dof_um: float,
    title: str | None = None,
    color: Any = None,
    max_points: int = 5000,
    limit_um: float | None = None,
    legend: bool = True,
) -> RegressionArtists:
    """Draw a regression plot of predicted against ground-truth defocus (Fig. 2).

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Axes to draw on.
    true_um : array_like
        Ground-truth signed defocus in µm.
    pred_um : array_like
        Predicted signed defocus in µm, same length. Pairs where either value
        is not finite (e.g. NaN for an abstained prediction) are not drawn.
    dof_um : float
        Depth of field in µm (finite, > 0); the DoF band is drawn as the two
        lines ``pred = true ± dof_um / 2``.
    title : str, optional
        Axes title.
    color : color, optional
        Colour of the points; matplotlib's next cycle colour by default.
    max_points : int, default 5000
        At most this many points are drawn, a reproducible random subset
        (fixed seed) when there are more; the lines are unaffected.
    limit_um : float, optional
        Half-width of the square axis range ``[-limit_um, limit_um]``. By
        default ``1.05 * max(|true|, |pred|)`` over the finite pairs (at least
        ``dof_um``), so that panels can share one range when the caller passes it.
    legend : bool, default True
        Add a legend naming the lines.

    Returns
    -------
    RegressionArtists
        The scatter, the zero-error line, the two DoF band lines and the two
        shaded wrong-direction quadrants.

    Raises
    ------
    ValueError
        For inputs of different lengths, non-numeric input, an invalid
        `dof_um`, `limit_um` or `max_points`.

    Notes
    -----
    Points in the shaded quadrants (``sgn(pred) = -sgn(true)``) would send
    the stage the wrong way; points between the two DoF lines are within
    half a depth of field of the truth. The aspect ratio is equal so that
    the zero-error line is at 45°.
    """
    true = _as_1d(true_um, "true_um")
    pred = _as_1d(pred_um, "pred_um")
    if true.shape != pred.shape:
        raise ValueError(
            f"true_um and pred_um must have the same length, got {true.size} and {pred.size}"
        )
    dof = _positive(dof_um, "dof_um")
    if isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer)):
        raise ValueError(f"max_points must be a positive integer, got {max_points!r}")
    if max_points < 1:
        raise ValueError(f"max_points must be a positive integer, got {max_points!r}")

    finite = np.isfinite(true) & np.isfinite(pred)
    true, pred = true[finite], pred[finite]
    n_total = int(true.size)
    if limit_um is None:
        extent = float(max(np.max(np.abs(true), initial=0.0), np.max(np.abs(pred), initial=0.0)))
        lim = 1.05 * max(extent, dof)
    else:
        lim = _positive(limit_um, "limit_um")

    if n_total > max_points:
        rng = np.random.default_rng(0)
        keep = np.sort(rng.choice(n_total, size=int(max_points), replace=False))
        true, pred = true[keep], pred[keep]

    lower_right, upper_left = (
        Rectangle(
            xy,
            lim,
            lim,
            facecolor=_WRONG_DIRECTION_COLOR,
            alpha=_WRONG_DIRECTION_ALPHA,
            edgecolor="none",
            zorder=0,
            label=label,
        )
        for xy, label in (((0.0, -lim), "wrong direction"), ((-lim, 0.0), None))
    )
    ax.add_patch(lower_right)
    ax.add_patch(upper_left)

    xs = np.array([-lim, lim])
    (zero_line,) = ax.plot(xs, xs, color="0.2", lw=1.0, label="zero error", zorder=3)
    half = dof / 2.0
    (band_lo,) = ax.plot(
        xs, xs - half, color="0.4", lw=0.8, ls="--", label=f"±DoF/2 ({half:g} µm)", zorder=3
    )
    (band_hi,) = ax.plot(xs, xs + half, color="0.4", lw=0.8, ls="--", zorder=3)

    scatter = ax.scatter(
        true, pred, s=4, alpha=0.5, color=color, linewidths=0, zorder=2, rasterized=True
    )

    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("ground-truth defocus (µm)")
    ax.set_ylabel("predicted defocus (µm)")
    if title is not None:
        ax.set_title(title)
    if legend:
        ax.legend(loc="upper left", fontsize="x-small", frameon=False)
    return RegressionArtists(
        scatter=scatter,
        zero_error=zero_line,
        dof_band=(band_lo, band_hi),
        wrong_direction=(lower_right, upper_left),
        limit_um=float(lim),
        n_drawn=int(true.size),
        n_total=n_total,
    )


def format_bin_label(lo_um: float, hi_um: float) -> str:
    """Format a defocus interval as an axis label, e.g. ``"0–5"``.

    Parameters
    ----------
    lo_um, hi_um : float
        Interval edges in µm.

    Returns
    -------
    str
        ``"lo–hi"`` with each edge in the shortest ``%g`` form.
    """
    return f"{lo_um:g}–{hi_um:g}"


def plot_interval_mae(
    ax: Axes,
    results: Mapping[str, IntervalMAE],
    *,
    title: str | None = None,
    colors: Mapping[str, Any] | None = None,
    legend: bool = True,
) -> list[BarContainer]:
    """Draw per-interval MAE as grouped bars, one bar per method (Fig. 3).

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Axes to draw on.
    results : mapping of str to IntervalMAE
        Method name to its :func:`~napari_sparsefocus.evaluation.per_interval_mae`
        result; all must share the same bin edges and binning mode.
    title : str, optional
        Axes title.
    colors : mapping of str to color, optional
        Bar colour per method name; methods not in it (or all, by default)
        take matplotlib's next cycle colour.
    legend : bool, default True
        Add a legend naming the methods.

    Returns
    -------
    list of matplotlib.container.BarContainer
        One container per method, in the mapping's order.

    Raises
    ------
    ValueError
        If `results` is empty or the methods were binned differently.

    Notes
    -----
    One group of bars per defocus bin, labelled by its range in µm; an empty
    bin (NaN MAE) gets no bar. The x axis reads ``|defocus|`` when the bins
    were applied to the absolute defocus.
    """
    if len(results) == 0:
        raise ValueError("results is empty: need at least one method")
    items = list(results.items())
    edges = np.asarray(items[0][1].edges_um, dtype=np.float64)
    absolute = bool(items[0][1].absolute)
    for name, res in items[1:]:
        other = np.asarray(res.edges_um, dtype=np.float64)
        if other.shape != edges.shape or not np.allclose(other, edges):
            raise ValueError(f"method {name!r} uses different bin edges from {items[0][0]!r}")
        if bool(res.absolute) != absolute:
            raise ValueError(f"method {name!r} uses a different binning mode (absolute)")

    k = edges.size - 1
    m = len(items)
    centers = np.arange(k, dtype=np.float64)
    width = 0.8 / m
    containers: list[BarContainer] = []
    for i, (name, res) in enumerate(items):
        heights = np.asarray(res.mae_um, dtype=np.float64)
        if heights.shape != (k,):
            raise ValueError(f"method {name!r}: mae_um has shape {heights.shape}, expected ({k},)")
        offsets = centers - 0.4 + width * (i + 0.5)
        color = None if colors is None else colors.get(name)
        containers.append(ax.bar(offsets, heights, width=width, label=name, color=color))

    ax.set_xticks(centers)
    ax.set_xticklabels([format_bin_label(edges[j], edges[j + 1]) for j in range(k)])
    ax.set_xlabel("|defocus| (µm)" if absolute else "defocus (µm)")
    ax.set_ylabel("MAE (µm)")
    ax.set_xlim(-0.5, k - 0.5)
    if title is not None:
        ax.set_title(title)
    if legend:
        ax.legend(fontsize="x-small", frameon=False)
    return containers


def plot_focus_curves(
    ax: Axes,
    z_um: ArrayLike,
    curves: Mapping[str, ArrayLike],
    *,
    normalise: bool = True,
    legend: bool = True,
) -> list[Line2D]:
    """Draw classical focus-measure curves against stage position.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Axes to draw on.
    z_um : array_like
        Stage positions (or defocus) in µm, 1-D, finite.
    curves : mapping of str to array_like
        Focus-measure name to its values at `z_um` (same length, finite).
    normalise : bool, default True
        Min–max scale each curve to [0, 1] so that measures with different
        units share one axis; a constant curve becomes all zeros.
    legend : bool, default True
        Add a legend naming the measures.

    Returns
    -------
    list of matplotlib.lines.Line2D
        One line per curve, in the mapping's order.

    Raises
    ------
    ValueError
        If `curves` is empty, or a curve's length differs from `z_um`, or
        any value is not finite.
    """
    z = _as_1d(z_um, "z_um")
    if not np.all(np.isfinite(z)):
        raise ValueError("z_um contains NaN or infinite values")
    if len(curves) == 0:
        raise ValueError("curves is empty: need at least one focus measure")
    lines: list[Line2D] = []
    for name, values in curves.items():
        y = _as_1d(values, f"curves[{name!r}]")
        if y.shape != z.shape:
            raise ValueError(f"curve {name!r} has {y.size} values but z_um has {z.size} positions")
        if not np.all(np.isfinite(y)):
            raise ValueError(f"curve {name!r} contains NaN or infinite values")
        if normalise:
            span = float(np.max(y) - np.min(y)) if y.size else 0.0
            y = (y - np.min(y)) / span if span > 0 else np.zeros_like(y)
        (line,) = ax.plot(z, y, label=name)
        lines.append(line)
    ax.set_xlabel("z (µm)")
    ax.set_ylabel("normalised focus measure" if normalise else "focus measure")
    if legend:
        ax.legend(fontsize="x-small", frameon=False)
    return lines


# --------------------------------------------------------------------------- stack views


@dataclass(frozen=True)
class DefocusCurveArtists:
    """Artists created by :func:`plot_defocus_curve`.

    Attributes
    ----------
    points : matplotlib.lines.Line2D
        Predicted against ground-truth defocus, one marker per plane in plane
        order (NaN predictions leave a gap); pickable.
    zero_error : matplotlib.lines.Line2D
        The ideal line ``pred = true``.
    dof_band : matplotlib.collections.FillBetweenPolyCollection
        The band ``true - dof_um <= pred <= true + dof_um``.
    current : matplotlib.lines.Line2D or None
        Vertical line at the current plane's ground truth, if one was given.
    """

    points: Line2D
    zero_error: Line2D
    dof_band: FillBetweenPolyCollection
    current: Line2D | None


def plot_defocus_curve(
    ax: Axes,
    true_um: ArrayLike,
    pred_um: ArrayLike,
    *,
    dof_um: float,
    current_um: float | None = None,
    picker: float = 5.0,
    color: Any = None,
    legend: bool = True,
) -> DefocusCurveArtists:
    """Draw predicted against ground-truth defocus along one z-stack.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Axes to draw on.
    true_um : array_like
        Ground-truth defocus of each plane (µm), finite, in plane order.
    pred_um : array_like
        Predicted defocus of each plane (µm), same length; NaN where the
        model gave no number (a gap in the curve).
    dof_um : float
        Depth of field (µm, finite, > 0): the shaded band is
        ``pred = true ± dof_um``, the DoF-Accuracy (n = 1) tolerance.
    current_um : float, optional
        Ground truth of the plane shown in the viewer (a vertical line).
    picker : float, default 5.0
        Pick radius of the points in display points.
    color : color, optional
        Colour of the points; matplotlib's next cycle colour by default.
    legend : bool, default True
        Add a legend naming the curve, the line and the band.

    Returns
    -------
    DefocusCurveArtists
        The points, the zero-error line, the DoF band and the current-plane line.

    Raises
    ------
    ValueError
        For inputs of different lengths, a non-finite ground truth, no plane,
        or an invalid `dof_um`.
    """
    true = _as_1d(true_um, "true_um")
    pred = _as_1d(pred_um, "pred_um")
    if true.shape != pred.shape:
        raise ValueError(
            f"true_um and pred_um must have the same length, got {true.size} and {pred.size}"
        )
    if true.size == 0:
        raise ValueError("true_um is empty: need at least one plane")
    if not np.all(np.isfinite(true)):
        raise ValueError("true_um contains NaN or infinite values")
    dof = _positive(dof_um, "dof_um")
    lo, hi = float(np.min(true)), float(np.max(true))
    pad = max(0.05 * (hi - lo), 0.5 * dof)
    xs = np.array([lo - pad, hi + pad])
    band = ax.fill_between(
        xs, xs - dof, xs + dof, color="0.6", alpha=0.25, lw=0, label=f"±DoF ({dof:.3g} µm)"
    )
    (zero_line,) = ax.plot(xs, xs, color="0.5", lw=1.0, ls="--", label="zero error")
    (points,) = ax.plot(
        true,
        pred,
        marker="o",
        ms=4,
        lw=1.0,
        color=color,
        label="predicted",
        picker=True,
        pickradius=float(picker),
        zorder=3,
    )
    current = None
    if current_um is not None:
        current = ax.axvline(float(current_um), color="tab:orange", lw=1.0, alpha=0.8)
    finite = pred[np.isfinite(pred)]
    ylo = min(float(xs[0] - dof), float(np.min(finite, initial=np.inf)))
    yhi = max(float(xs[1] + dof), float(np.max(finite, initial=-np.inf)))
    ax.set_xlim(float(xs[0]), float(xs[1]))
    ax.set_ylim(ylo, yhi)
    ax.set_xlabel("ground-truth defocus (µm)")
    ax.set_ylabel("predicted defocus (µm)")
    if legend:
        ax.legend(loc="upper left", fontsize="x-small", frameon=False)
    return DefocusCurveArtists(points=points, zero_error=zero_line, dof_band=band, current=current)


@dataclass(frozen=True)
class MeasureComparisonArtists:
    """Artists created by :func:`plot_measure_comparison`.

    Attributes
    ----------
    lines : dict of str to matplotlib.lines.Line2D
        The normalised curve of each measure.
    peaks : dict of str to matplotlib.lines.Line2D
        The focal plane each measure finds: a filled circle on its curve when
        trusted, a cross when its curve is too flat (or peaks at an edge).
    model : matplotlib.lines.Line2D or None
        Vertical line at the model's focal plane, if given.
    current : matplotlib.lines.Line2D or None
        Vertical line at the current plane, if given.
    """

    lines: dict[str, Line2D]
    peaks: dict[str, Line2D]
    model: Line2D | None
    current: Line2D | None


def plot_measure_comparison(
    ax: Axes,
    z_um: ArrayLike,
    curves: Mapping[str, ArrayLike],
    peaks_um: Mapping[str, float],
    trusted: Mapping[str, bool],
    *,
    model_focus_um: float | None = None,
    current_um: float | None = None,
    legend: bool = True,
) -> MeasureComparisonArtists:
    """Draw normalised focus-measure curves with the focal plane each one finds.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Axes to draw on.
    z_um : array_like
        Plane positions (µm).
    curves : mapping of str to array_like
        Measure name to its raw values (normalised here, as by
        :func:`plot_focus_curves`).
    peaks_um : mapping of str to float
        Measure name to its focal-plane position (µm), e.g. the finder's
        sub-step peak.
    trusted : mapping of str to bool
        Measure name to whether its answer can be trusted; untrusted ones are
        marked with a cross and "(untrusted)" in the legend.
    model_focus_um : float, optional
        Where the model puts the focal plane (``z_current - defocus``).
    current_um : float, optional
        Position of the plane shown in the viewer.
    legend : bool, default True
        Add a legend.

    Returns
    -------
    MeasureComparisonArtists
        Curves, peak markers and the optional vertical lines.

    Raises
    ------
    ValueError
        As :func:`plot_focus_curves`, or if a curve has no peak or trust entry.
    """
    missing = [n for n in curves if n not in peaks_um or n not in trusted]
    if missing:
        raise ValueError(f"no peak or trust flag for measure(s) {missing}")
    drawn = plot_focus_curves(ax, z_um, curves, normalise=True, legend=False)
    lines = dict(zip(curves, drawn, strict=True))
    z = _as_1d(z_um, "z_um")
    peaks: dict[str, Line2D] = {}
    for name, line in lines.items():
        ok = bool(trusted[name])
        if not ok:
            line.set_label(f"{name} (untrusted)")
            line.set_linestyle(":")
        zp = float(peaks_um[name])
        yp = float(np.interp(zp, z, line.get_ydata())) if z.size > 1 else 1.0  # type: ignore[arg-type]
        (mark,) = ax.plot(
            [zp],
            [yp],
            marker="o" if ok else "x",
            ms=7,
            mew=2,
            ls="none",
            color=line.get_color(),
            zorder=4,
        )
        peaks[name] = mark
    model = None
    if model_focus_um is not None:
        model = ax.axvline(
            float(model_focus_um), color="tab:red", lw=1.5, ls="-", label="model focus"
        )
    current = None
    if current_um is not None:
        current = ax.axvline(float(current_um), color="tab:orange", lw=1.0, alpha=0.8)
    if legend:
        ax.legend(fontsize="x-small", frameon=False)
    return MeasureComparisonArtists(lines=lines, peaks=peaks, model=model, current=current)


def plot_psf_section(
    ax: Axes,
    x_um: ArrayLike,
    defocus_um: ArrayLike,
    intensity: ArrayLike,
    *,
    gamma: float = 0.5,
    cmap: str = "magma",
) -> AxesImage:
    """Draw an XZ section of a PSF (defocus vertical, positive up).

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Axes to draw on.
    x_um : array_like
        Lateral positions of the columns (µm), evenly spaced.
    defocus_um : array_like
        Defocus of the rows (µm), evenly spaced and increasing.
    intensity : array_like
        ``(len(defocus_um), len(x_um))`` intensities.
    gamma : float, default 0.5
        Display ``(I / max I) ** gamma`` so the out-of-focus tails show.
    cmap : str, default "magma"
        Colormap.

    Returns
    -------
    matplotlib.image.AxesImage
        The image (data: the gamma-scaled section).
    """
    x = _as_1d(x_um, "x_um")
    d = _as_1d(defocus_um, "defocus_um")
    img = np.asarray(intensity, dtype=np.float64)
    if img.shape != (d.size, x.size):
        raise ValueError(f"intensity has shape {img.shape}, expected ({d.size}, {x.size})")
    g = _positive(gamma, "gamma")
    peak = float(np.max(img)) if img.size else 0.0
    shown = (np.clip(img, 0.0, None) / peak) ** g if peak > 0 else np.zeros_like(img)
    hx = 0.5 * (x[1] - x[0]) if x.size > 1 else 0.5
    hd = 0.5 * (d[1] - d[0]) if d.size > 1 else 0.5
    image = ax.imshow(
        shown,
        origin="lower",
        aspect="auto",
        cmap=cmap,
        extent=(x[0] - hx, x[-1] + hx, d[0] - hd, d[-1] + hd),
        interpolation="nearest",
    )
    ax.axhline(0.0, color="w", lw=0.6, ls=":")
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("defocus (µm)")
    return image


def plot_psf_profiles(
    ax: Axes,
    x_um: ArrayLike,
    plus: ArrayLike,
    minus: ArrayLike,
    *,
    d_um: float,
    legend: bool = True,
) -> tuple[Line2D, Line2D]:
    """Draw the lateral PSF profiles at ``+d`` (solid) and ``-d`` (dashed).

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Axes to draw on.
    x_um : array_like
        Lateral positions (µm).
    plus, minus : array_like
        Profiles at defocus ``+d`` and ``-d``, same length as `x_um`.
    d_um : float
        The defocus distance, for the legend.
    legend : bool, default True
        Add a legend.

    Returns
    -------
    tuple of matplotlib.lines.Line2D
        The ``+d`` and ``-d`` lines.
    """
    x = _as_1d(x_um, "x_um")
    a = _as_1d(plus, "plus")
    b = _as_1d(minus, "minus")
    if a.shape != x.shape or b.shape != x.shape:
        raise ValueError("plus and minus must have one value per x_um")
    d = abs(float(d_um))
    (lp,) = ax.plot(x, a, color="tab:blue", lw=1.5, label=f"+{d:.3g} µm")
    (lm,) = ax.plot(x, b, color="tab:orange", lw=1.5, ls="--", label=f"−{d:.3g} µm")
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("PSF intensity")
    if legend:
        ax.legend(fontsize="x-small", frameon=False)
    return lp, lm


def plot_asymmetry_scatter(
    ax: Axes,
    samples_plus: Sequence[ArrayLike],
    samples_minus: Sequence[ArrayLike],
    offsets_um: ArrayLike,
    *,
    scores: ArrayLike | None = None,
    legend: bool = True,
) -> list[PathCollection]:
    """Draw pixel values at ``+d`` against ``-d`` around focus (paper's Fig. 4d).

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Axes to draw on.
    samples_plus, samples_minus : sequence of array_like
        Per offset, the pixel values of the plane at ``+d`` and at ``-d``
        (same pixels, same length).
    offsets_um : array_like
        The offsets ``d`` (µm), one per pair of sample arrays.
    scores : array_like, optional
        Asymmetry score per offset, shown in the legend.
    legend : bool, default True
        Add a legend.

    Returns
    -------
    list of matplotlib.collections.PathCollection
        One scatter per offset. Points on the diagonal ``I(+d) = I(-d)``
        (drawn) mean a symmetric defocus.
    """
    d = _as_1d(offsets_um, "offsets_um")
    if not (len(samples_plus) == len(samples_minus) == d.size):
        raise ValueError("need one array of samples at +d and at -d per offset")
    sc = None if scores is None else _as_1d(scores, "scores")
    if sc is not None and sc.shape != d.shape:
        raise ValueError("scores must have one value per offset")
    cmap = _viridis()
    out: list[PathCollection] = []
    lo, hi = np.inf, -np.inf
    for k, (a_, b_) in enumerate(zip(samples_plus, samples_minus, strict=True)):
        a = _as_1d(a_, "samples_plus")
        b = _as_1d(b_, "samples_minus")
        if a.shape != b.shape:
            raise ValueError(f"offset {k}: samples at +d and -d differ in length")
        label = f"d = {d[k]:.3g} µm" + ("" if sc is None else f" (A = {sc[k]:.3f})")
        frac = k / max(d.size - 1, 1)
        out.append(ax.scatter(b, a, s=3, alpha=0.4, color=cmap(frac), linewidths=0, label=label))
        if a.size:
            lo = min(lo, float(a.min()), float(b.min()))
            hi = max(hi, float(a.max()), float(b.max()))
    if np.isfinite(lo) and np.isfinite(hi):
        ax.plot([lo, hi], [lo, hi], color="0.5", lw=1.0, ls="--")
    ax.set_xlabel("pixel value at −d")
    ax.set_ylabel("pixel value at +d")
    if legend and out:
        ax.legend(fontsize="x-small", frameon=False, markerscale=3)
    return out


def _viridis() -> Any:
    from matplotlib import colormaps

    return colormaps["viridis"]
