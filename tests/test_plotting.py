from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from napari_sparsefocus.evaluation import IntervalMAE, per_interval_mae
from napari_sparsefocus.plotting import (
    format_bin_label,
    plot_focus_curves,
    plot_interval_mae,
    plot_regression,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes


@pytest.fixture
def ax() -> Axes:
    fig = Figure(layout="constrained")
    FigureCanvasAgg(fig)
    return fig.add_subplot()


TRUE = np.linspace(-20.0, 20.0, 81)


# --------------------------------------------------------------------------- regression


def test_regression_lines_span_axis_range(ax: Axes) -> None:
    art = plot_regression(ax, TRUE, TRUE + 0.3, dof_um=2.0, title="A")
    lim = art.limit_um
    assert ax.get_xlim() == pytest.approx((-lim, lim))
    assert ax.get_ylim() == pytest.approx((-lim, lim))
    x, y = art.zero_error.get_data()
    np.testing.assert_allclose(x, ax.get_xlim())
    np.testing.assert_allclose(y, ax.get_xlim())
    assert ax.get_aspect() == 1.0
    assert ax.get_title() == "A"
    assert "µm" in ax.get_xlabel() and "µm" in ax.get_ylabel()


def test_regression_dof_band_at_half_dof(ax: Axes) -> None:
    art = plot_regression(ax, TRUE, TRUE, dof_um=2.0)
    lo, hi = art.dof_band
    for line, offset in ((lo, -1.0), (hi, 1.0)):
        x, y = (np.asarray(v, dtype=float) for v in line.get_data())
        np.testing.assert_allclose(y - x, offset)
        np.testing.assert_allclose(x, ax.get_xlim())


def test_regression_shades_opposite_sign_quadrants(ax: Axes) -> None:
    art = plot_regression(ax, TRUE, -TRUE, dof_um=1.0, limit_um=30.0)
    right, left = art.wrong_direction
    assert right.get_xy() == pytest.approx((0.0, -30.0))
    assert left.get_xy() == pytest.approx((-30.0, 0.0))
    for rect in (right, left):
        assert rect.get_width() == pytest.approx(30.0)
        assert rect.get_height() == pytest.approx(30.0)
        assert rect in ax.patches
        assert 0 < rect.get_alpha() < 0.3  # lightly shaded
    # every point of pred = -true (except 0) lies in a shaded quadrant
    pts = np.asarray(art.scatter.get_offsets())
    nonzero = pts[:, 0] != 0
    assert np.all(np.sign(pts[nonzero, 0]) == -np.sign(pts[nonzero, 1]))


def test_regression_drops_nan_and_subsamples(ax: Axes) -> None:
    pred = TRUE.copy()
    pred[::2] = np.nan
    art = plot_regression(ax, TRUE, pred, dof_um=1.0)
    assert art.n_total == np.count_nonzero(~np.isnan(pred))
    assert art.n_drawn == art.n_total
    assert len(np.asarray(art.scatter.get_offsets())) == art.n_total

    big = np.linspace(-10, 10, 1000)
    art2 = plot_regression(ax, big, big, dof_um=1.0, max_points=100)
    assert art2.n_total == 1000
    assert art2.n_drawn == 100
    assert len(np.asarray(art2.scatter.get_offsets())) == 100


def test_regression_default_limit_covers_data(ax: Axes) -> None:
    art = plot_regression(ax, [1.0, -2.0], [30.0, 0.0], dof_um=1.0)
    assert art.limit_um == pytest.approx(31.5)


def test_regression_rejects_bad_input(ax: Axes) -> None:
    with pytest.raises(ValueError, match="same length"):
        plot_regression(ax, [1.0, 2.0], [1.0], dof_um=1.0)
    with pytest.raises(ValueError, match="dof_um"):
        plot_regression(ax, [1.0], [1.0], dof_um=0.0)
    with pytest.raises(ValueError, match="max_points"):
        plot_regression(ax, [1.0], [1.0], dof_um=1.0, max_points=0)
    with pytest.raises(ValueError, match="limit_um"):
        plot_regression(ax, [1.0], [1.0], dof_um=1.0, limit_um=-1.0)


# --------------------------------------------------------------------------- interval MAE

EDGES = [0.0, 5.0, 10.0, 15.0]


def _interval(offset: float) -> IntervalMAE:
    t = np.array([1.0, 2.0, -6.0, 7.0])  # nothing in 10–15
    return per_interval_mae(t + offset, t, EDGES, absolute=True)


def test_interval_mae_one_container_per_method(ax: Axes) -> None:
    res = {"A": _interval(0.5), "B": _interval(1.0), "C": _interval(2.0)}
    bars = plot_interval_mae(ax, res, title="T", colors={"B": "red"})
    assert len(ax.containers) == 3
    assert all(isinstance(b, BarContainer) for b in bars)
    for b, (name, r) in zip(bars, res.items(), strict=True):
        assert len(b.patches) == 3
        heights = np.array([p.get_height() for p in b.patches])
        np.testing.assert_allclose(heights, r.mae_um)  # NaN for the empty bin
        assert b.get_label() == name
    np.testing.assert_allclose([p.get_height() for p in bars[2].patches][:2], [2.0, 2.0])
    assert bars[1].patches[0].get_facecolor()[:3] == pytest.approx((1.0, 0.0, 0.0))
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["0–5", "5–10", "10–15"]
    assert ax.get_xlabel() == "|defocus| (µm)"
    assert "µm" in ax.get_ylabel()
    # bars of one bin do not overlap and are centred on the tick
    xs = sorted(b.patches[0].get_x() for b in bars)
    widths = bars[0].patches[0].get_width()
    assert np.all(np.diff(xs) >= widths - 1e-12)
    assert (xs[0] + xs[-1] + widths) / 2 == pytest.approx(0.0)


def test_interval_mae_signed_label_and_errors(ax: Axes) -> None:
    t = np.array([-3.0, 3.0])
    signed = per_interval_mae(t, t, [-5.0, 0.0, 5.0])
    plot_interval_mae(ax, {"A": signed})
    assert ax.get_xlabel() == "defocus (µm)"
    with pytest.raises(ValueError, match="empty"):
        plot_interval_mae(ax, {})
    with pytest.raises(ValueError, match="bin edges"):
        plot_interval_mae(ax, {"A": _interval(0.0), "B": signed})


def test_format_bin_label() -> None:
    assert format_bin_label(0.0, 5.0) == "0–5"
    assert format_bin_label(2.5, 7.5) == "2.5–7.5"


# --------------------------------------------------------------------------- focus curves


def test_focus_curves_normalised(ax: Axes) -> None:
    z = np.linspace(-10, 10, 21)
    curves = {"var": 5.0 + 3.0 * np.exp(-(z**2) / 8), "flat": np.full(z.size, 2.0)}
    lines = plot_focus_curves(ax, z, curves)
    assert [ln.get_label() for ln in lines] == ["var", "flat"]
    y0 = np.asarray(lines[0].get_ydata(), dtype=float)
    assert y0.min() == pytest.approx(0.0) and y0.max() == pytest.approx(1.0)
    assert np.argmax(y0) == 10
    np.testing.assert_array_equal(np.asarray(lines[1].get_ydata(), dtype=float), 0.0)
    np.testing.assert_allclose(np.asarray(lines[0].get_xdata(), dtype=float), z)


def test_focus_curves_raw_and_errors(ax: Axes) -> None:
    z = np.arange(5.0)
    (line,) = plot_focus_curves(ax, z, {"m": z * 10}, normalise=False)
    np.testing.assert_allclose(np.asarray(line.get_ydata(), dtype=float), z * 10)
    with pytest.raises(ValueError, match="positions"):
        plot_focus_curves(ax, z, {"m": z[:3]})
    with pytest.raises(ValueError, match="empty"):
        plot_focus_curves(ax, z, {})
    with pytest.raises(ValueError, match="NaN"):
        plot_focus_curves(ax, z, {"m": [0, 1, np.nan, 1, 0]})


def test_plotting_imports_neither_pyplot_nor_qt() -> None:
    code = (
        "import sys, napari_sparsefocus.plotting, napari_sparsefocus._report\n"
        "bad = [m for m in ('matplotlib.pyplot', 'qtpy', 'PyQt6', 'napari', 'torch') "
        "if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


# --------------------------------------------------------------------------- stack views


def test_defocus_curve_lines_and_band(ax: Axes) -> None:
    from napari_sparsefocus.plotting import plot_defocus_curve

    true = np.linspace(-4.0, 4.0, 9)
    pred = true + 0.5
    pred[3] = np.nan
    art = plot_defocus_curve(ax, true, pred, dof_um=1.2, current_um=1.0)
    x, y = (np.asarray(v, dtype=float) for v in art.points.get_data())
    np.testing.assert_array_equal(x, true)
    np.testing.assert_array_equal(y, pred)
    zx, zy = (np.asarray(v, dtype=float) for v in art.zero_error.get_data())
    np.testing.assert_allclose(zx, zy)
    verts = art.dof_band.get_paths()[0].vertices
    assert verts[:, 1].max() - verts[:, 0].max() == pytest.approx(1.2)
    assert art.current is not None
    assert np.asarray(art.current.get_xdata(), dtype=float)[0] == 1.0
    assert art.points.pickable()
    with pytest.raises(ValueError, match="same length"):
        plot_defocus_curve(ax, true, pred[:3], dof_um=1.0)
    with pytest.raises(ValueError, match="NaN"):
        plot_defocus_curve(ax, pred, true, dof_um=1.0)


def test_measure_comparison_marks_untrusted(ax: Axes) -> None:
    from napari_sparsefocus.plotting import plot_measure_comparison

    z = np.arange(5.0)
    curves = {"a": [1, 2, 5, 2, 1], "b": [1.0, 1.01, 1.02, 1.01, 1.0]}
    art = plot_measure_comparison(
        ax, z, curves, {"a": 2.0, "b": 2.0}, {"a": True, "b": False}, model_focus_um=2.5
    )
    assert art.peaks["a"].get_marker() == "o"
    assert art.peaks["b"].get_marker() == "x"
    assert "untrusted" in str(art.lines["b"].get_label())
    np.testing.assert_allclose(art.lines["a"].get_ydata(), [0, 0.25, 1, 0.25, 0])
    assert art.model is not None
    with pytest.raises(ValueError, match="trust"):
        plot_measure_comparison(ax, z, curves, {"a": 2.0}, {"a": True})


def test_psf_plots(ax: Axes) -> None:
    from napari_sparsefocus.plotting import (
        plot_asymmetry_scatter,
        plot_psf_profiles,
        plot_psf_section,
    )

    x = np.linspace(-2, 2, 5)
    d = np.linspace(-1, 1, 3)
    img = plot_psf_section(ax, x, d, np.arange(15.0).reshape(3, 5), gamma=1.0)
    assert np.asarray(img.get_array()).max() == pytest.approx(1.0)
    lp, lm = plot_psf_profiles(ax, x, x**2, x**3, d_um=-1.0)
    assert "+1" in str(lp.get_label()) and "−1" in str(lm.get_label())
    sc = plot_asymmetry_scatter(ax, [x, x], [x, -x], [0.5, 1.0], scores=[0.0, 1.0])
    assert len(sc) == 2
    np.testing.assert_allclose(sc[1].get_offsets(), np.column_stack([-x, x]))
    with pytest.raises(ValueError, match="per offset"):
        plot_asymmetry_scatter(ax, [x], [x, x], [1.0])
