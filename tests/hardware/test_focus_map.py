from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("pymmcore_plus")

import useq

from napari_sparsefocus.core import FocusSurface, KeyPointInterpolator, focus_error_map, rms_um
from napari_sparsefocus.core.nn import DefocusPrediction
from napari_sparsefocus.hardware import (
    FocusMapResult,
    iter_scan_focus_map,
    scan_focus_map,
)
from napari_sparsefocus.hardware._focus_map import (
    FocusMapStep,
    FocusMapTile,
    _guess_z,
    _tile_confidence,
    grid_positions,
)

#: Centre of a 1 mm region of dense tissue on the seed-0 slide (672 px sites).
DENSE_CENTRE = (515.4, 515.4)
#: 3 x 3 tiles 300 µm apart: all inside that region.
GRID = useq.GridRowsColumns(rows=3, columns=3, fov_width=300.0, fov_height=300.0)


class OracleModel:
    """Predicts the true defocus of the simulated microscope (plus chosen errors).

    ``errors`` maps a tile number (order of predict calls) to an added error,
    or to None for an abstention; ``flip`` holds tiles whose sign is wrong. It
    tests the scan's bookkeeping and the
    robust fit without depending on the trained model's accuracy.
    """

    def __init__(self, scope, errors=None, flip=()):
        self.scope = scope
        self.errors = dict(errors or {})
        self.flip = set(flip)
        self.calls = 0
        self.optics = scope.optics
        self.threshold = 0.8

    def predict(self, image, **kwargs):
        err = self.errors.get(self.calls, 0.0)
        d = None if err is None else self.scope.true_defocus_um() + err
        if d is not None and self.calls in self.flip:
            d = -d  # the right magnitude with the wrong sign
        self.calls += 1
        return DefocusPrediction(
            defocus_um=d,
            spread_um=0.0,
            direction_agreement=0.0 if d is None else 1.0,
            sparsity="empty" if d is None else "dense",
            verdict="no usable content" if d is None else "ok",
            reason="oracle",
            importance=np.full((9, 9), 0.0 if d is None else 1.0, dtype=np.float32),
            patches=(),
            dof_um=self.optics.dof_um,
        )


def _start(scope, centre=DENSE_CENTRE, defocus_um=2.0):
    scope.core.setXYPosition(*centre)
    scope.core.setZPosition(scope.slide.z_focus_um(*centre) + defocus_um)


def _dense_grid_error(scope, result):
    xs = np.linspace(result.x_um.min(), result.x_um.max(), 15)
    ys = np.linspace(result.y_um.min(), result.y_um.max(), 15)
    return rms_um(focus_error_map(result.surface, scope.slide.z_focus_um, xs, ys))


def test_grid_positions(microscope):
    core = microscope.core
    core.setXYPosition(100.0, -50.0)
    pos = grid_positions(GRID, core)
    assert len(pos) == 9
    xs, ys = zip(*pos, strict=True)
    assert sorted(set(np.round(xs, 6))) == pytest.approx([-200.0, 100.0, 400.0])
    assert sorted(set(np.round(ys, 6))) == pytest.approx([-350.0, -50.0, 250.0])
    assert grid_positions(GRID, center_xy_um=(0.0, 0.0))[0] == pytest.approx((-300.0, 300.0))
    # without its own fov the plan takes the camera's field (672 px x pixel size)
    fov = 672 * microscope.pixel_size_um
    pos = grid_positions(useq.GridRowsColumns(rows=1, columns=2), core)
    assert pos[1][0] - pos[0][0] == pytest.approx(fov)
    # absolute plans ignore the centre
    edges = useq.GridFromEdges(top=400, left=0, bottom=0, right=400, fov_width=200, fov_height=200)
    expected = [(p.x, p.y) for p in edges.iter_grid_positions()]
    assert len(expected) > 1
    assert grid_positions(edges, core) == expected  # core at (100, -50): not added
    assert grid_positions([(1, 2), (3.5, 4)]) == [(1.0, 2.0), (3.5, 4.0)]
    with pytest.raises(ValueError, match="no positions"):
        grid_positions([])
    with pytest.raises(ValueError, match="pairs"):
        grid_positions([(1, 2, 3)])
    with pytest.raises(ValueError, match="center_xy_um or a core"):
        grid_positions(GRID)


def test_one_shot_cost_is_counted_and_robust_to_bad_tiles(microscope):
    # tile 4 abstains (weight 0); tiles 2 and 6 get gross errors: the robust fit rejects them
    model = OracleModel(microscope, {2: 12.0, 4: None, 6: -9.0})
    _start(microscope)
    before = microscope.counts
    t0 = microscope.sim_time_s
    gen = iter_scan_focus_map(
        microscope.core, GRID, model, degree=1, clock=lambda: microscope.sim_time_s
    )
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    assert isinstance(result, FocusMapResult) and result.method == "one_shot"
    assert len(steps) == 9 and all(isinstance(s, FocusMapStep) for s in steps)
    assert [s.tiles_done for s in steps] == list(range(1, 10))
    # one snap per tile; the first tile is where the stage stands: 8 XY moves
    after = microscope.counts
    assert result.snaps == 9 == after["snaps"] - before["snaps"]
    assert result.xy_moves == 8 == after["xy_moves"] - before["xy_moves"]
    assert result.z_moves == after["z_moves"] - before["z_moves"]
    assert 1 <= result.z_moves <= 9
    assert result.moves == result.z_moves + result.xy_moves
    assert result.sim_time_s == pytest.approx(microscope.sim_time_s - t0)
    assert result.sim_time_s > 0 and result.wall_s > 0

    abstained = [t for t in result.tiles if t.verdict == "no usable content"]
    assert len(abstained) == 1 and abstained[0].confidence == 0.0
    assert math.isnan(abstained[0].z_focus_um)
    assert isinstance(result.surface, FocusSurface)
    assert result.surface.outliers.sum() == 2
    truth = microscope.slide.z_focus_um(result.x_um, result.y_um)
    good = result.surface.inliers
    assert np.abs(result.z_measured_um[good] - truth[good]).max() < 1e-6  # oracle tiles
    # the plane through the good tiles follows the true focus to the site jitter
    assert _dense_grid_error(microscope, result) < 0.6
    assert np.abs(result.z_map_um - truth).max() < 1.0
    d = result.to_dict()
    assert d["snaps"] == 9 and len(d["tiles"]) == 9


def test_wrong_signs_are_resolved_by_the_neighbours(microscope):
    # snaps aimed 3 µm above focus: a wrong sign puts a tile 6 µm off, its flip on the truth
    _start(microscope)
    result = scan_focus_map(microscope.core, GRID, OracleModel(microscope, flip={2, 5}), degree=1)
    truth = microscope.slide.z_focus_um(result.x_um, result.y_um)
    switched = [t for t in result.tiles if "sign from neighbours" in t.verdict]
    assert len(switched) == 2 and result.surface.switched.sum() == 2
    for t in switched:
        assert t.z_focus_um == pytest.approx(truth[t.index], abs=1e-6)
        assert t.defocus_um == pytest.approx(-t.predicted_um)
    assert not result.surface.outliers.any()
    # without resolving, the two are rejected as outliers instead
    _start(microscope)
    plain = scan_focus_map(
        microscope.core, GRID, OracleModel(microscope, flip={2, 5}), degree=1, resolve_sign=False
    )
    assert not plain.surface.switched.any() and plain.surface.outliers.sum() == 2


def test_one_shot_with_the_bundled_model_is_close_to_the_truth(microscope):
    _start(microscope)
    z_start = microscope.core.getZPosition()
    result = scan_focus_map(microscope.core, GRID, clock=lambda: microscope.sim_time_s)
    assert result.snaps == 9
    assert np.count_nonzero(result.confidence > 0) >= 6  # dense tissue: most tiles usable
    err = _dense_grid_error(microscope, result)
    # far better than imaging every tile at the start z (2 µm above focus)
    xs = np.linspace(result.x_um.min(), result.x_um.max(), 15)
    ys = np.linspace(result.y_um.min(), result.y_um.max(), 15)
    flat = rms_um(
        focus_error_map(
            lambda x, y: np.full(np.shape(x), z_start), microscope.slide.z_focus_um, xs, ys
        )
    )
    assert flat > 1.5
    assert err < microscope.optics.dof_um
    assert err < 0.5 * flat


def test_key_points_method(microscope):
    _start(microscope)
    before = microscope.counts
    result = scan_focus_map(
        microscope.core,
        GRID,
        method="key_points",
        n_key_points=3,
        clock=lambda: microscope.sim_time_s,
        search={"step_um": 2.0, "min_step_um": 0.25, "max_snaps": 25},
    )
    assert result.method == "key_points"
    assert isinstance(result.surface, KeyPointInterpolator)
    measured = [t for t in result.tiles if t.confidence > 0]
    assert len(measured) == 3
    truth = microscope.slide.z_focus_um(result.x_um, result.y_um)
    for t in measured:
        assert abs(t.z_focus_um - truth[t.index]) < 0.6
        assert float(result.surface(t.x_um, t.y_um)) == pytest.approx(t.z_focus_um)
    # iterative search: many snaps per key point, all counted
    assert (
        result.snaps
        == sum(t.snaps for t in result.tiles)
        == (microscope.counts["snaps"] - before["snaps"])
    )
    assert result.snaps >= 3 * 4
    assert result.xy_moves == microscope.counts["xy_moves"] - before["xy_moves"]
    assert result.z_moves == microscope.counts["z_moves"] - before["z_moves"]
    assert _dense_grid_error(microscope, result) < microscope.optics.dof_um


def test_empty_tiles_get_weight_zero_and_all_empty_raises(microscope):
    model = OracleModel(microscope, dict.fromkeys(range(9)))
    _start(microscope)
    with pytest.raises(RuntimeError, match="no tile gave a usable focus"):
        scan_focus_map(microscope.core, GRID, model)
    # only two usable tiles: the degree is lowered to a plane... or a constant
    model = OracleModel(microscope, {i: None for i in range(9) if i not in (0, 1)})
    _start(microscope)
    result = scan_focus_map(microscope.core, GRID, model)
    assert np.count_nonzero(result.confidence > 0) == 2
    assert "degree-0" in result.message and "lowered" in result.message


def test_bad_arguments(microscope):
    core = microscope.core
    with pytest.raises(ValueError, match="method"):
        scan_focus_map(core, GRID, method="magic")
    with pytest.raises(ValueError, match="degree"):
        scan_focus_map(core, GRID, OracleModel(microscope), degree=9)
    with pytest.raises(ValueError, match="n_key_points"):
        scan_focus_map(core, GRID, method="key_points", n_key_points=0)
    xy, z = core.getXYPosition(), core.getZPosition()
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="spline_smoothing"):
            scan_focus_map(core, GRID, OracleModel(microscope), spline_smoothing=bad)
    assert core.getXYPosition() == pytest.approx(xy) and core.getZPosition() == z  # no move


def _pred(n_content, *, spread_um=0.0, agreement=1.0, verdict="ok", defocus_um=3.0):
    imp = np.zeros((9, 9), dtype=np.float32)
    imp.flat[:n_content] = 0.9
    return DefocusPrediction(
        defocus_um=defocus_um,
        spread_um=spread_um,
        direction_agreement=agreement,
        sparsity="dense",
        verdict=verdict,
        reason="test",
        importance=imp,
        patches=(),
        dof_um=1.0,
    )


def test_tile_confidence_grows_with_the_content_read():
    def w(pred):
        return _tile_confidence(pred, dof_um=1.0, low_confidence_weight=0.3, threshold=0.8)

    # a lone patch has spread 0 by construction: that is no evidence of a good reading
    assert w(_pred(1)) == pytest.approx(1 / 12)
    assert w(_pred(6)) == pytest.approx(0.5)
    assert w(_pred(12)) == w(_pred(40)) == 1.0
    # spread and agreement still count, and "low confidence" is scaled down
    assert w(_pred(12, spread_um=1.0)) == pytest.approx(0.5)
    assert w(_pred(12, agreement=0.5)) == pytest.approx(0.25)
    assert w(_pred(12, verdict="low confidence")) == pytest.approx(0.3)
    # importance just under the threshold is not content
    below = _pred(0)
    below.importance[:] = 0.79
    assert w(below) == pytest.approx(1 / 12)
    assert w(_pred(0, defocus_um=None, verdict="no usable content")) == 0.0


def test_z_guess_follows_a_bowed_surface_once_enough_tiles_are_in():
    # a dome: 4 µm down at 1500 µm from the centre, 16 µm at 3000 µm
    def dome(x, y):
        return -4.0 * (x * x + y * y) / 1500.0**2

    def tile(i, x, y):
        z = dome(x, y)
        return FocusMapTile(
            index=i, x_um=x, y_um=y, measured=True, z_snap_um=z + 3.0, z_focus_um=z,
            defocus_um=3.0, predicted_um=3.0, confidence=1.0, verdict="ok", snaps=1,
        )  # fmt: skip

    ring = [(0.0, 0.0), (1500.0, 0.0), (1500.0, 1500.0), (0.0, 1500.0), (-1500.0, 1500.0),
            (-1500.0, 0.0), (-1500.0, -1500.0), (0.0, -1500.0), (1500.0, -1500.0)]  # fmt: skip
    done = [tile(i, x, y) for i, (x, y) in enumerate(ring)]

    def guess(tiles):
        z, _ = _guess_z(tiles, 3000.0, 0.0, 0.0, 6, lambda t: True, 0.25, True, 3.0)
        return z

    truth = dome(3000.0, 0.0)  # -16 µm
    # all nine: the quadratic reaches the outer ring (clamped 3 µm below the lowest tile)
    assert guess(done) == pytest.approx(max(truth, -8.0 - 3.0), abs=0.05)
    # six tiles: a plane through the nearest, which cannot bend down
    plane = guess(done[:6])
    assert plane > guess(done) + 2.0
