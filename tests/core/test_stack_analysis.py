from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import ndimage

from napari_sparsefocus.core import (
    FOCUS_MEASURES,
    Optics,
    find_focal_plane,
    simulate_stack,
)
from napari_sparsefocus.core._stack_analysis import (
    GroundTruth,
    asymmetry_score,
    evaluate_predictions,
    ground_truth_from_defocus,
    ground_truth_from_finder,
    ground_truth_from_focal_index,
    iter_evaluate_stack,
    iter_measure_curves,
    iter_stack_asymmetry,
    normalise_curve,
    psf_section,
    to_gray,
)
from napari_sparsefocus.evaluation import summarize

MATCHED = Optics(
    immersion_index=1.52,
    immersion_index_design=1.52,
    sample_index=1.52,
    coverslip_index=1.52,
    coverslip_index_design=1.52,
)


def run(gen):
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            return steps, stop.value


@dataclass
class FakePrediction:
    defocus_um: float | None
    verdict: str = "ok"


@pytest.fixture(scope="module")
def blur_stack():
    """A gray stack blurred symmetrically about plane 4 (sigma grows with |d|)."""
    rng = np.random.default_rng(0)
    base = ndimage.gaussian_filter(rng.random((96, 96)), 1.0) * 200 + 20
    planes = [ndimage.gaussian_filter(base, 0.3 + 1.2 * abs(i - 4)) for i in range(9)]
    return np.stack(planes)


# ----------------------------------------------------------------- ground truth


def test_ground_truth_from_focal_index_matches_label_convention():
    t = ground_truth_from_focal_index(3.5, 7, 0.5)
    np.testing.assert_allclose(t.defocus_um, (np.arange(7) - 3.5) * 0.5)
    assert t.source == "label file" and t.trustworthy
    with pytest.raises(ValueError, match="z_step_um"):
        ground_truth_from_focal_index(3, 7, 0.0)
    with pytest.raises(ValueError, match="source"):
        ground_truth_from_focal_index(3, 7, 1.0, source="oracle")


def test_ground_truth_from_defocus_interpolates_focal_index():
    t = ground_truth_from_defocus([-2.0, -1.0, 0.0, 1.0])
    assert t.focal_plane_index == pytest.approx(2.0)
    assert t.z_step_um == pytest.approx(1.0)
    with pytest.raises(ValueError, match="evenly"):
        ground_truth_from_defocus([0.0, 1.0, 3.0])


def test_ground_truth_from_finder_uses_subpixel_peak(blur_stack):
    res = find_focal_plane(blur_stack, z_um=np.arange(9) * 0.5)
    t = ground_truth_from_finder(res, 0.5)
    np.testing.assert_allclose(t.defocus_um, np.arange(9) * 0.5 - res.z_um)
    assert t.focal_plane_index == pytest.approx(res.z_um / 0.5)
    assert t.source == "finder" and t.trustworthy == res.trustworthy


# ----------------------------------------------------------------- measures


def test_measure_curves_equal_core_finder(blur_stack):
    names = list(FOCUS_MEASURES)
    steps, curves = run(iter_measure_curves(blur_stack, names, z_step_um=0.5))
    assert [s.done for s in steps] == list(range(1, 10))
    assert {s.phase for s in steps} == {"measures"}
    for name in names:
        ref = find_focal_plane(blur_stack, z_um=np.arange(9) * 0.5, measure=name)
        got = curves.results[name]
        np.testing.assert_allclose(got.curve, ref.curve)
        assert got.index == ref.index == 4
        assert got.z_um == pytest.approx(ref.z_um)
        assert got.trustworthy == ref.trustworthy
    norm = curves.normalised()["brenner"]
    assert norm.min() == 0.0 and norm.max() == 1.0


def test_normalise_curve_constant_is_zero():
    np.testing.assert_array_equal(normalise_curve([2.0, 2.0, 2.0]), [0.0, 0.0, 0.0])


def test_measure_curves_flag_flat_curve():
    flat = np.full((5, 32, 32), 100.0)
    flat += np.random.default_rng(1).normal(0, 1, flat.shape)
    _, curves = run(iter_measure_curves(flat, ["brenner"]))
    assert not curves.results["brenner"].trustworthy
    assert "flat" in curves.results["brenner"].reason


# ----------------------------------------------------------------- evaluation


def test_evaluate_stack_matches_summarize(blur_stack):
    preds = iter([FakePrediction(v) for v in (-2.1, -1.4, -1.2, None, 0.1, 0.4, 1.1, 1.3, 2.6)])
    truth = ground_truth_from_focal_index(4.2, 9, 0.5)
    steps, ev = run(
        iter_evaluate_stack(
            blur_stack, lambda _im: next(preds), z_step_um=0.5, dof_um=1.0, truth=truth
        )
    )
    phases = [s.phase for s in steps]
    assert phases == ["measures"] * 9 + ["truth"] + ["predict"] * 9
    assert steps[9].truth is truth
    assert [s.record.index for s in steps[10:]] == list(range(9))
    pred = ev.pred_um
    assert math.isnan(pred[3])
    ok = np.isfinite(pred)
    ref = summarize(pred[ok], truth.defocus_um[ok], 1.0)
    for key, value in ref.items():
        assert ev.metrics[key] == pytest.approx(value)
    assert ev.metrics["n_abstained"] == 1
    np.testing.assert_allclose(ev.true_um, truth.defocus_um)


def test_evaluate_stack_uses_finder_without_truth(blur_stack):
    _, ev = run(
        iter_evaluate_stack(
            blur_stack,
            lambda _im: FakePrediction(0.0),
            z_step_um=1.0,
            dof_um=1.0,
            measures=("tenengrad",),
        )
    )
    ref = find_focal_plane(blur_stack, z_um=np.arange(9.0))
    assert ev.truth.source == "finder"
    np.testing.assert_allclose(ev.true_um, np.arange(9.0) - ref.z_um)
    assert set(ev.curves.results) == {"tenengrad", "brenner"}


def test_evaluate_stack_rejects_wrong_truth_length(blur_stack):
    truth = GroundTruth(np.zeros(3), 1.0, 1.0, "label file")
    with pytest.raises(ValueError, match="planes"):
        run(
            iter_evaluate_stack(
                blur_stack, lambda _im: FakePrediction(0.0), z_step_um=1, dof_um=1, truth=truth
            )
        )


def test_evaluate_predictions_all_abstained():
    m = evaluate_predictions([np.nan, np.nan], [1.0, 2.0], 1.0)
    assert m["n"] == 0 and m["n_abstained"] == 2 and math.isnan(m["mae_um"])


# ----------------------------------------------------------------- asymmetry


def test_asymmetry_score_properties():
    rng = np.random.default_rng(0)
    a = rng.random((20, 20))
    assert asymmetry_score(a, a) == 0.0
    assert asymmetry_score(a, 2 * a.mean() - a) == pytest.approx(1.0)  # inverted contrast
    b = rng.random((20, 20))
    assert 0.0 < asymmetry_score(a, b) <= 1.0
    assert asymmetry_score(np.ones((4, 4)), np.ones((4, 4))) == 0.0
    with pytest.raises(ValueError, match="shape"):
        asymmetry_score(a, a[:5])


def test_stack_asymmetry_is_zero_for_symmetric_stack(blur_stack):
    steps, res = run(iter_stack_asymmetry(blur_stack, 4.0, z_step_um=0.5))
    assert len(steps) == res.offsets.size == 4
    np.testing.assert_array_equal(res.offsets, [1, 2, 3, 4])
    np.testing.assert_allclose(res.offsets_um, [0.5, 1.0, 1.5, 2.0])
    assert res.score < 1e-12
    np.testing.assert_allclose(res.correlations, 1.0)
    for a, b in zip(res.samples_plus, res.samples_minus, strict=True):
        np.testing.assert_array_equal(a, b)


def test_stack_asymmetry_positive_for_default_optics():
    z = np.arange(-4.0, 4.01, 1.0)
    tissue = simulate_stack("tissue", "dense", z_um=z, shape_px=(448, 448), seed=5)
    empty = simulate_stack("cell", "empty", z_um=z, shape_px=(448, 448), seed=5)
    _, res = run(iter_stack_asymmetry(tissue.images, 4, channel_axis=-1))
    _, floor = run(iter_stack_asymmetry(empty.images, 4, channel_axis=-1))
    assert res.center_index == 4
    assert res.score > 0.05
    assert res.score > 2 * floor.score  # content asymmetry well above the noise floor
    # the gray conversion is the focus measures' luma
    np.testing.assert_allclose(
        to_gray(tissue.images[0], -1), tissue.images[0].astype(float) @ [0.299, 0.587, 0.114]
    )


def test_stack_asymmetry_needs_focus_inside(blur_stack):
    with pytest.raises(ValueError, match="both sides"):
        run(iter_stack_asymmetry(blur_stack, 0.0))
    _, res = run(iter_stack_asymmetry(np.repeat(blur_stack, 3, axis=0), 13, max_offsets=3))
    assert res.offsets.size <= 3 and res.offsets.max() == 13


def test_psf_section_asymmetric_only_with_index_mismatch():
    default = psf_section(half_range_um=4.0, n_z=17, size_px=33)
    matched = psf_section(MATCHED, half_range_um=4.0, n_z=17, size_px=33)
    assert default.intensity.shape == (17, 33)
    np.testing.assert_allclose(default.defocus_um, -default.defocus_um[::-1])
    assert default.asymmetry.max() > 0.1
    assert matched.asymmetry.max() < 1e-6
    d, plus, minus = default.profiles(2.0)
    assert d == pytest.approx(2.0)
    assert plus.shape == minus.shape == (33,)


def test_module_imports_no_torch_or_qt():
    code = (
        "import sys, napari_sparsefocus.core._stack_analysis;"
        "bad = [m for m in ('torch', 'qtpy', 'napari', 'PyQt6') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
