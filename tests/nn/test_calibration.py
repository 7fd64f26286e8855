"""Near-focus calibration of the DPN's patch predictions (the refocus controller's map)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_sparsefocus import Optics
from napari_sparsefocus.core.nn import (
    DefocusPredictionNetwork,
    DPNConfig,
    NearFocusCalibration,
    RegionImportanceNetwork,
    SparseFocusModel,
    fit_near_focus_calibration,
    load_model,
)

TINY_DPN = DPNConfig(dims=(8, 16, 16, 32), depths=(1, 1, 1, 1))


def test_fit_is_the_posterior_mean_and_undoes_a_known_bias():
    # predictions read 1 µm too negative below focus and are right above it
    rng = np.random.default_rng(0)
    truth = rng.uniform(-5, 5, 20_000)
    pred = np.where(truth < 0, truth - 1.0, truth) + rng.normal(0, 0.05, truth.size)
    cal = fit_near_focus_calibration(pred, truth, samples_per_knot=200, window_um=6.0)
    assert np.all(np.diff(cal.input_um) > 0) and np.all(np.diff(cal.output_um) >= 0)
    for d in (-4.0, -2.0, -0.5, 0.5, 2.0, 4.0):
        p = d - 1.0 if d < 0 else d
        assert cal.apply([p])[0] == pytest.approx(d, abs=0.12)
    # beyond the window and its taper the map is the identity again
    assert cal.input_um[0] == cal.output_um[0] and cal.input_um[-1] == cal.output_um[-1]
    assert cal.apply([-40.0, 40.0]) == pytest.approx([-40.0, 40.0])
    # only readings within the window are fitted
    narrow = fit_near_focus_calibration(pred, truth, samples_per_knot=200, window_um=2.0)
    assert max(abs(v) for v in narrow.input_um[1:-1]) <= 2.0
    assert narrow.apply([-4.5])[0] == pytest.approx(-4.5)


def test_a_reading_that_cannot_tell_the_side_maps_to_the_mean_of_both():
    # within 1 µm of focus the "network" reads -1 whatever the truth: its posterior mean
    # under a uniform prior is 0, not -1
    truth = np.linspace(-3, 3, 6001)
    pred = np.where(np.abs(truth) < 1, -1.0, truth)
    cal = fit_near_focus_calibration(pred, truth, samples_per_knot=100)
    assert cal.apply([-1.0])[0] == pytest.approx(0.0, abs=0.05)
    assert cal.apply([2.0])[0] == pytest.approx(2.0, abs=0.1)


def test_pool_adjacent_violators_makes_the_map_monotone():
    # bin means that go down in the middle are pooled to their weighted mean
    pred = np.repeat([0.0, 1.0, 2.0, 3.0], 10).astype(float)
    truth = np.repeat([0.0, 2.0, 1.0, 3.0], 10).astype(float)
    cal = fit_near_focus_calibration(pred, truth, samples_per_knot=10)
    assert cal.input_um[1:-1] == pytest.approx((0.0, 1.0, 2.0, 3.0))
    assert cal.output_um[1:-1] == pytest.approx((0.0, 1.5, 1.5, 3.0))
    assert cal.apply([0.5, 1.5, 2.5]) == pytest.approx([0.75, 1.5, 2.25])


@pytest.mark.parametrize(
    ("pred", "truth", "kw", "match"),
    [
        (np.zeros(5), np.zeros(4), {}, "differ in length"),
        (np.array([np.nan] * 40), np.zeros(40), {}, "finite"),
        (np.arange(30.0), np.arange(30.0), {"samples_per_knot": 20}, "fewer than two bins"),
        (np.arange(40.0), np.arange(40.0), {"samples_per_knot": 5}, ">= 10"),
        (np.ones(400), np.arange(400.0), {}, "constant"),
        (np.arange(400.0), np.arange(400.0), {"window_um": 0.0}, "window_um"),
        (np.arange(400.0), np.arange(400.0), {"taper_um": np.nan}, "taper_um"),
    ],
)
def test_bad_fit_inputs_raise(pred, truth, kw, match):
    with pytest.raises(ValueError, match=match):
        fit_near_focus_calibration(pred, truth, **kw)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"input_um": [0, 1]}, "input_um and output_um"),
        ({"input_um": [0, 1], "output_um": [1, 0]}, "non-decreasing"),
        ({"input_um": [1, 0], "output_um": [0, 1]}, "strictly increasing"),
        ({"input_um": [0, "x"], "output_um": [0, 1]}, "numbers"),
        ({"input_um": [0], "output_um": [0]}, ">= 2"),
    ],
)
def test_malformed_calibration_entries_are_refused(data, match):
    with pytest.raises(ValueError, match=match):
        NearFocusCalibration.from_dict(data)


def _fixed_model(defocus_um: float) -> SparseFocusModel:
    torch.manual_seed(0)
    rin = RegionImportanceNetwork()
    dpn = DefocusPredictionNetwork(TINY_DPN)
    with torch.no_grad():
        rin.head[-1].weight.zero_()
        rin.head[-1].bias.fill_(10.0)
        dpn.fc.weight.zero_()
        dpn.fc.bias.fill_(defocus_um)
    return SparseFocusModel(rin, dpn, {"optics": Optics().to_dict()})


def test_the_model_file_carries_the_calibration_and_predict_ignores_it(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, size=(700, 700, 3), dtype=np.uint8)
    raw = _fixed_model(-1.0)
    assert raw.near_focus_calibration is None
    cal = NearFocusCalibration((-2.0, -1.0, 1.0), (-1.5, -0.25, 1.0), "hand-made")
    m = raw.with_near_focus_calibration(cal)
    # one-shot predictions stay the DPN's own (the map's prior is "near focus")
    assert m.predict(img).defocus_um == pytest.approx(-1.0, abs=1e-5)
    m.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m.json").read_text())
    assert cfg["near_focus_calibration"]["fitted_on"] == "hand-made"
    loaded = load_model(tmp_path / "m").near_focus_calibration
    assert loaded is not None and loaded.apply([-1.0])[0] == pytest.approx(-0.25)
    assert m.with_near_focus_calibration(None).near_focus_calibration is None
    # a corrupt entry in the file: a clear error naming the file
    cfg["near_focus_calibration"]["output_um"] = [1.0, 0.0, -1.0]
    (tmp_path / "m.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"m.*non-decreasing"):
        load_model(tmp_path / "m")


def test_the_model_file_carries_a_first_move_calibration(tmp_path):
    img = np.random.default_rng(1).integers(0, 256, size=(700, 700, 3), dtype=np.uint8)
    raw = _fixed_model(8.0)
    assert raw.first_move_calibration is None
    cal = NearFocusCalibration((-20.0, -3.0, 3.0, 20.0), (-20.5, -3.0, 3.0, 20.5), "landings")
    near = NearFocusCalibration((-2.0, 2.0), (-1.5, 2.0))
    m = raw.with_first_move_calibration(cal).with_near_focus_calibration(near)
    # predict() stays the DPN's own; the two maps are separate and both kept
    assert m.predict(img).defocus_um == pytest.approx(8.0, abs=1e-5)
    assert m.near_focus_calibration is not None and m.first_move_calibration is not None
    m.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.first_move_calibration is not None
    assert loaded.first_move_calibration.fitted_on == "landings"
    assert loaded.first_move_calibration.apply([11.5])[0] == pytest.approx(11.75)
    assert loaded.near_focus_calibration.apply([0.0])[0] == pytest.approx(0.25)
    assert m.with_first_move_calibration(None).first_move_calibration is None
    with pytest.raises(TypeError, match="NearFocusCalibration"):
        raw.with_first_move_calibration({"input_um": [0, 1], "output_um": [0, 1]})
    cfg = json.loads((tmp_path / "m.json").read_text())
    cfg["first_move_calibration"] = {"input_um": [0.0, 1.0]}
    (tmp_path / "m.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="input_um and output_um"):
        load_model(tmp_path / "m")


def test_the_bundled_model_reads_focus_near_zero_through_its_calibration():
    m = load_model()
    cal = m.near_focus_calibration
    assert cal is not None and "train" in cal.fitted_on
    # a posterior mean of the defocus: non-decreasing in the reading, reaching past
    # DoF/2 on both sides and crossing 0 within the near-focus window (where the raw
    # DPN's in-focus readings lie: about -1 µm for rounds 2-4, -0.5 µm for round 5)
    grid = np.linspace(-1.5, 1.5, 301)
    out = cal.apply(grid)
    assert np.all(np.diff(out) >= -1e-9)
    assert out.min() < -m.optics.dof_um / 2 and out.max() > m.optics.dof_um / 2
    assert np.min(np.abs(out)) < 0.1
    # and leaves readings a few µm above focus nearly alone
    assert cal.apply([3.0])[0] == pytest.approx(3.0, abs=0.5)
