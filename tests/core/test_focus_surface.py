from __future__ import annotations

import numpy as np
import pytest

from napari_sparsefocus.core import (
    FocusSurface,
    fit_focus_surface,
    focus_error_map,
    interpolate_key_points,
    rms_um,
    surface_terms,
)


def _quadratic(x, y):
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    return 12.0 + 0.004 * x - 0.003 * y + 2e-6 * x**2 - 3e-6 * x * y + 1.5e-6 * y**2


def _grid(n=5, extent=2000.0, x0=-500.0, y0=300.0):
    g = np.linspace(0.0, extent, n)
    gx, gy = np.meshgrid(g + x0, g + y0)
    return gx.ravel(), gy.ravel()


def test_surface_terms():
    assert [surface_terms(d) for d in range(4)] == [1, 3, 6, 10]
    with pytest.raises(ValueError, match="degree"):
        surface_terms(-1)


@pytest.mark.parametrize("robust", [True, False])
def test_exact_recovery_of_a_quadratic(robust):
    x, y = _grid()
    z = _quadratic(x, y)
    s = fit_focus_surface(x, y, z, degree=2, robust=robust)
    assert isinstance(s, FocusSurface)
    assert s.coefficients.shape == (6,)
    np.testing.assert_allclose(s.residuals_um, 0.0, atol=1e-9)
    assert s.inliers.all()
    # the surface generalises: exact away from the fitted points too
    qx, qy = np.meshgrid(np.linspace(-600, 1600, 7), np.linspace(200, 2400, 9))
    np.testing.assert_allclose(s(qx, qy), _quadratic(qx, qy), atol=1e-8)
    assert s(qx, qy).shape == qx.shape
    assert float(s(0.0, 0.0)) == pytest.approx(float(_quadratic(0.0, 0.0)))


def test_gross_outliers_do_not_move_the_robust_fit():
    x, y = _grid()
    rng = np.random.default_rng(1)
    z = _quadratic(x, y) + rng.normal(0.0, 0.1, x.size)
    bad = np.array([3, 11, 17])
    z[bad] += np.array([25.0, -18.0, 30.0])
    truth_x, truth_y = np.meshgrid(np.linspace(-500, 1500, 21), np.linspace(300, 2300, 21))
    truth = _quadratic(truth_x, truth_y)

    robust = fit_focus_surface(x, y, z, degree=2)
    plain = fit_focus_surface(x, y, z, degree=2, robust=False)
    err_robust = rms_um(robust(truth_x, truth_y) - truth)
    err_plain = rms_um(plain(truth_x, truth_y) - truth)
    assert err_robust < 0.15
    assert err_plain > 10 * err_robust
    assert set(np.flatnonzero(robust.outliers)) == set(bad)
    assert robust.robust_weights[bad].max() == 0.0
    assert robust.n_inliers == x.size - bad.size
    assert robust.scale_estimate_um == pytest.approx(0.1, rel=0.5)

    huber = fit_focus_surface(x, y, z, degree=2, loss="huber")
    assert rms_um(huber(truth_x, truth_y) - truth) < err_plain


def test_weights_matter():
    x, y = _grid()
    z = _quadratic(x, y)
    z[[0, 6]] += 15.0
    w = np.ones_like(z)
    w[[0, 6]] = 0.0
    # zero weight removes the points even from a plain least-squares fit
    zero = fit_focus_surface(x, y, z, w, robust=False)
    np.testing.assert_allclose(zero.residuals_um[w > 0], 0.0, atol=1e-9)
    assert zero.residuals_um[0] == pytest.approx(15.0)
    assert not zero.inliers[[0, 6]].any()
    # low weight reduces their pull
    unweighted = fit_focus_surface(x, y, z, robust=False)
    w[[0, 6]] = 0.05
    low = fit_focus_surface(x, y, z, w, robust=False)
    truth = _quadratic(x, y)
    assert rms_um(low(x, y) - truth) < 0.3 * rms_um(unweighted(x, y) - truth)


def test_plane_degree_and_constant():
    x, y = _grid(3)
    z = 5.0 + 0.01 * x - 0.02 * y
    s = fit_focus_surface(x, y, z, degree=1)
    np.testing.assert_allclose(s(x, y), z, atol=1e-9)
    c = fit_focus_surface([1.0], [2.0], [7.0], degree=0)
    assert float(c(100.0, -5.0)) == pytest.approx(7.0)


def test_bad_input():
    x, y = _grid(2)  # 4 points
    z = _quadratic(x, y)
    with pytest.raises(ValueError, match="at least 6 points"):
        fit_focus_surface(x, y, z, degree=2)
    x9, y9 = _grid(3)
    z9 = _quadratic(x9, y9)
    w = np.ones(9)
    w[:4] = 0
    with pytest.raises(ValueError, match="positive weight, got 5"):
        fit_focus_surface(x9, y9, z9, w, degree=2)
    z_nan = z9.copy()
    z_nan[2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        fit_focus_surface(x9, y9, z_nan)
    with pytest.raises(ValueError, match="same shape"):
        fit_focus_surface(x9, y9[:-1], z9)
    with pytest.raises(ValueError, match="weights must have the shape"):
        fit_focus_surface(x9, y9, z9, np.ones(8))
    with pytest.raises(ValueError, match=">= 0"):
        fit_focus_surface(x9, y9, z9, -w)
    with pytest.raises(ValueError, match="degenerate"):
        line = np.linspace(0, 100, 9)
        fit_focus_surface(line, 2 * line, z9, degree=1)
    with pytest.raises(ValueError, match="degree"):
        fit_focus_surface(x9, y9, z9, degree=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="loss"):
        fit_focus_surface(x9, y9, z9, loss="l1")  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["linear", "rbf", "nearest", "auto"])
def test_key_points_exact_at_their_points(method):
    x = np.array([0.0, 1000.0, 0.0, 1000.0, 500.0])
    y = np.array([0.0, 0.0, 1000.0, 1000.0, 500.0])
    z = _quadratic(x, y)
    interp = interpolate_key_points(x, y, z, method=method)
    np.testing.assert_allclose(interp(x, y), z, atol=1e-9)
    # finite everywhere, also outside the hull
    qx, qy = np.meshgrid(np.linspace(-300, 1300, 9), np.linspace(-300, 1300, 9))
    assert np.all(np.isfinite(interp(qx, qy)))


def test_key_points_linear_inside_and_fill_outside():
    x = np.array([0.0, 100.0, 0.0])
    y = np.array([0.0, 0.0, 100.0])
    z = np.array([1.0, 2.0, 3.0])
    lin = interpolate_key_points(x, y, z, method="linear")
    assert float(lin(25.0, 25.0)) == pytest.approx(1.0 + 0.25 + 0.5)
    assert float(lin(500.0, 0.0)) == pytest.approx(2.0)  # nearest outside
    lin_plane = interpolate_key_points(x, y, z, method="linear", fill="plane")
    assert float(lin_plane(500.0, 0.0)) == pytest.approx(6.0)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_key_points_plane_exact_for_up_to_three(n):
    x = np.array([0.0, 800.0, 100.0])[:n]
    y = np.array([0.0, 300.0, 900.0])[:n]
    z = np.array([4.0, -2.0, 7.5])[:n]
    interp = interpolate_key_points(x, y, z)  # auto -> plane
    assert interp.method == "plane"
    np.testing.assert_allclose(interp(x, y), z, atol=1e-9)


def test_key_points_bad_input():
    with pytest.raises(ValueError, match="method"):
        interpolate_key_points([0, 1, 2], [0, 1, 0], [1, 2, 3], method="spline")
    with pytest.raises(ValueError, match="not on one line"):
        interpolate_key_points([0, 1, 2], [0, 1, 2], [1, 2, 3], method="linear")
    with pytest.raises(ValueError, match="distinct"):
        interpolate_key_points([0, 0, 2], [0, 0, 1], [1, 2, 3])
    with pytest.raises(ValueError, match="finite"):
        interpolate_key_points([0, 1, 2], [0, 1, 0], [1, np.nan, 3])


def test_focus_error_map_and_rms():
    x, y = _grid()
    s = fit_focus_surface(x, y, _quadratic(x, y) + 0.5)
    xs = np.linspace(-500, 1500, 11)
    ys = np.linspace(300, 2300, 7)
    err = focus_error_map(s, _quadratic, xs, ys)
    assert err.shape == (7, 11)
    np.testing.assert_allclose(err, 0.5, atol=1e-9)  # map above the truth: + defocus
    assert rms_um(err) == pytest.approx(0.5)

    # a scalar-only truth function is evaluated point by point
    def scalar_truth(xv, yv):
        return float(_quadratic(float(xv), float(yv)))

    np.testing.assert_allclose(focus_error_map(s, scalar_truth, xs, ys), err)
    assert rms_um([3.0, -4.0, np.nan]) == pytest.approx(np.sqrt(12.5))
    with pytest.raises(ValueError, match="finite"):
        rms_um([np.nan])
    with pytest.raises(ValueError, match="1-D"):
        focus_error_map(s, _quadratic, np.zeros((2, 2)), ys)


def test_alternative_z_resolves_wrong_signs():
    # one-shot measurements z = z_snap - d with z_snap = truth + 3: a wrong sign of d
    # puts the point at truth + 6, its alternative z_snap + d at the truth
    x, y = _grid()
    rng = np.random.default_rng(3)
    truth = _quadratic(x, y)
    snap = truth + 3.0
    d = 3.0 + rng.normal(0.0, 0.1, x.size)
    flipped = np.array([1, 7, 12, 18, 23])
    d[flipped] *= -1
    z, z_alt = snap - d, snap + d
    z[4] = z_alt[4] = truth[4] + 15.0  # garbage either way: stays an outlier
    s = fit_focus_surface(x, y, z, z_alt_um=z_alt)
    assert set(np.flatnonzero(s.switched)) == set(flipped)
    np.testing.assert_allclose(s.z_um[flipped], z_alt[flipped])
    assert s.outliers[4] and not s.switched[4]
    assert rms_um(s(x, y) - truth) < 0.1
    # without the alternatives the flipped points are merely rejected
    plain = fit_focus_surface(x, y, z)
    assert not plain.switched.any()
    assert set(np.flatnonzero(plain.outliers)) >= set(flipped)
    with pytest.raises(ValueError, match="z_alt_um must have the shape"):
        fit_focus_surface(x, y, z, z_alt_um=z_alt[:-1])


def _rippled(x, y):
    # a quadratic plus a ripple no quadratic can follow (period ~2 mm, 1.5 µm)
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    return _quadratic(x, y) + 1.5 * np.sin(2 * np.pi * (x + 0.5 * y) / 2200.0)


def test_smoothing_spline_follows_what_the_polynomial_cannot():
    x, y = _grid(n=7)
    z = _rippled(x, y)
    qx, qy = np.meshgrid(np.linspace(-500, 1500, 31), np.linspace(300, 2300, 31))
    truth = _rippled(qx, qy)
    poly = fit_focus_surface(x, y, z, degree=2, robust=False)
    spline = fit_focus_surface(x, y, z, degree=2, robust=False, spline_smoothing=0.0)
    assert poly.spline_smoothing is None and spline.spline_smoothing == 0.0
    assert rms_um(spline(qx, qy) - truth) < 0.5 * rms_um(poly(qx, qy) - truth)
    # smoothing 0 interpolates the inliers; its residuals are those of the sum
    np.testing.assert_allclose(spline.residuals_um, 0.0, atol=1e-6)
    assert spline.rms_residual_um < 1e-6 < poly.rms_residual_um
    # the polynomial part is the same fit; heavy smoothing approaches it
    np.testing.assert_allclose(spline.coefficients, poly.coefficients)
    stiff = fit_focus_surface(x, y, z, degree=2, robust=False, spline_smoothing=1e6)
    np.testing.assert_allclose(stiff(qx, qy), poly(qx, qy), atol=0.01)
    # scalar and broadcast evaluation as for the polynomial
    assert spline(qx, qy).shape == qx.shape
    assert float(spline(x[3], y[3])) == pytest.approx(z[3], abs=1e-6)


def test_smoothing_spline_ignores_outliers_and_heeds_weights():
    x, y = _grid(n=7)
    z = _rippled(x, y)
    bad = 24  # the centre point, 20 µm off: rejected, so the spline does not chase it
    z_bad = z.copy()
    z_bad[bad] += 20.0
    s = fit_focus_surface(x, y, z_bad, degree=2, spline_smoothing=0.01)
    assert s.outliers[bad]
    assert abs(float(s(x[bad], y[bad])) - z[bad]) < 0.5
    assert s.residuals_um[bad] == pytest.approx(20.0, abs=0.5)
    # a point off by 0.8 µm: followed closely at full weight, hardly at weight 0.01
    z_off = z.copy()
    z_off[bad] += 0.8
    w = np.ones(x.size)
    full = fit_focus_surface(x, y, z_off, w, degree=2, spline_smoothing=0.01)
    w[bad] = 0.01
    low = fit_focus_surface(x, y, z_off, w, degree=2, spline_smoothing=0.01)
    pull_full = float(full(x[bad], y[bad])) - z[bad]
    pull_low = float(low(x[bad], y[bad])) - z[bad]
    assert pull_full > 0.5
    assert pull_low < 0.5 * pull_full


def test_smoothing_spline_bad_input_and_degenerate_points():
    x, y = _grid()
    z = _quadratic(x, y)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="spline_smoothing"):
            fit_focus_surface(x, y, z, degree=2, spline_smoothing=bad)
    # all points on a line: a plane fit is degenerate, a constant is not; the spline
    # cannot be fitted either and the surface stays a polynomial
    line = fit_focus_surface([0, 1, 2, 3, 4], [0, 0, 0, 0, 0], [1, 2, 1, 2, 1], degree=0,
                             spline_smoothing=0.1)  # fmt: skip
    assert line.spline_smoothing is None


def test_smoothing_spline_judges_outliers_by_the_surface_it_makes():
    # A slide that bows beyond a quadratic (the simulated slide of seed 3: a dome
    # 12 µm deep over the 5 x 5 tile centres), readings with 0.4 µm noise and no
    # outlier at all: the polynomial's robust fit rejects good tiles where it
    # cannot follow the bow; the spline surface tests each tile against the spline
    # through the others (leave-one-out) and keeps them.
    from napari_sparsefocus.core import VirtualSlide

    slide = VirtualSlide(seed=3, curvature_um=12, ripple_um=2)
    g = np.linspace(-3000.0, 3000.0, 5)
    gx, gy = np.meshgrid(g, g)
    x, y = gx.ravel(), gy.ravel()
    z_true = slide.z_focus_um(x, y)
    assert np.ptp(z_true) > 10.0
    qx, qy = np.meshgrid(np.linspace(-3000, 3000, 41), np.linspace(-3000, 3000, 41))
    truth = slide.z_focus_um(qx, qy)
    poly_out = spline_out = caught = 0
    poly_rms, spline_rms = [], []
    for k in range(20):
        z = z_true + np.random.default_rng(k).normal(0.0, 0.4, x.size)
        poly = fit_focus_surface(x, y, z, degree=2, min_scale_um=0.293)
        spline = fit_focus_surface(x, y, z, degree=2, min_scale_um=0.293, spline_smoothing=0.1)
        poly_out += int(poly.outliers.sum())
        spline_out += int(spline.outliers.sum())
        poly_rms.append(rms_um(poly(qx, qy) - truth))
        spline_rms.append(rms_um(spline(qx, qy) - truth))
        assert np.all(spline.robust_weights[spline.inliers] > 0)
        assert np.all(spline.robust_weights[~spline.inliers] == 0)
        # a tile 8 µm off is still rejected by the leave-one-out test
        z[7] += 8.0
        bad = fit_focus_surface(x, y, z, degree=2, min_scale_um=0.293, spline_smoothing=0.1)
        caught += bool(bad.outliers[7])
    assert poly_out >= 5
    assert spline_out <= 1
    assert np.mean(spline_rms) < 0.8 * np.mean(poly_rms)
    assert caught == 20
