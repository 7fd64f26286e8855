from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import math
import threading
import types

import numpy as np
import pytest

pytest.importorskip("pymmcore_plus")

from napari_sparsefocus.core.nn import DefocusPrediction, NearFocusCalibration, PatchPrediction
from napari_sparsefocus.hardware import (
    RefocusOptions,
    RefocusResult,
    RefocusStep,
    iter_refocus,
    load_simulated_microscope,
    refocus,
)
from napari_sparsefocus.hardware._refocus import (
    POLISH_METHODS,
    VERDICTS,
    _content_boxes,
    _parabola_peak,
    _sharpness,
)

#: The bundled model sees a 1120 px field as 5 × 5 patches; the 672 px fixture
#: (3 × 3) is used with fake models, where only the controller is under test.
BIG = (1120, 1120)


@pytest.fixture(scope="module")
def model():
    import torch

    from napari_sparsefocus import load_model

    torch.set_num_threads(1)
    return load_model()


@pytest.fixture
def big_scope(sim_core):
    return load_simulated_microscope(sim_core, seed=0, sensor_shape_px=BIG)


class FakeModel:
    """A model whose prediction is a rule of the true defocus (or a fixed value).

    The microscope stays real: only the defocus "read" from each image is made up.
    """

    def __init__(self, scope, rule, dof_um=1.2):
        self.scope = scope
        self.rule = rule
        self.dof_um = dof_um
        self.calls = 0

    def predict(self, image, *, pixel_size_um=None):
        assert image.ndim == 3 and image.shape[2] == 3
        self.calls += 1
        d = self.rule(self.scope.true_defocus_um(), self.calls)
        return DefocusPrediction(
            defocus_um=d,
            spread_um=0.0,
            direction_agreement=1.0,
            sparsity="dense" if d is not None else "empty",
            verdict="ok" if d is not None else "no usable content",
            reason="fake",
            importance=np.zeros((3, 3), np.float32),
            patches=(),
            dof_um=self.dof_um,
        )


def record_commands(core):
    """Every Z the stage was told to go to (the simulated stage emits stagePositionChanged)."""
    seen: list[float] = []
    core.events.stagePositionChanged.connect(lambda label, z: seen.append(float(z)))
    return seen


# --------------------------------------------------------------------- real model
# The requirement: from random starts within ±25 µm the refocus ends
# within DoF/2 of the true focus on dense and sparse sites. Seeded sites and
# starts, default options (polish on). These six cases pass with the bundled
# model of round 5 (2026-11-30, late); over many sites the benchmark
# (benchmarks/bench_refocus.py) has 98 % of its 54 runs with content within DoF/2,
# so a retrained model may miss one of these: the strict form below says so, and
# the safety properties and a floor of the success rate are asserted separately.
REQUIREMENT_SEED = 0
REQUIREMENT_SITES = {"dense": 3, "sparse": 3}
START_RANGE_UM = 25.0


@pytest.fixture(scope="module")
def requirement_runs(model):
    """Refocus the seeded dense and sparse cases once; (case, error, result) per run."""
    from pymmcore_plus.experimental.unicore import UniMMCore

    core = UniMMCore()
    try:
        scope = load_simulated_microscope(core, seed=0, sensor_shape_px=BIG)
        rng = np.random.default_rng(REQUIREMENT_SEED)
        runs = []
        for sparsity, n in REQUIREMENT_SITES.items():
            for site in scope.slide.find_sites(sparsity, n=n, seed=rng, margin_sites=1):
                start_defocus_um = float(rng.uniform(-START_RANGE_UM, START_RANGE_UM))
                scope.move_to_site(site)
                z0 = scope.move_to_defocus(start_defocus_um)
                snaps_before = scope.counts["snaps"]
                result = refocus(core, model)
                case = (site.sparsity, site.kind, site.index, round(start_defocus_um, 2))
                # every run: no error, the stage where the result says, counts consistent
                assert result.error is None, (case, result.message)
                assert result.start_z_um == pytest.approx(z0)
                assert result.final_z_um == pytest.approx(core.getPosition())
                assert result.snaps == scope.counts["snaps"] - snaps_before
                polish_snaps = result.polish.snaps if result.polish else 0
                assert result.snaps == len(result.readings) + polish_snaps
                runs.append((case, scope.true_defocus_um(), result))
        del scope
        yield runs
    finally:
        core.unloadAllDevices()
        del core
        gc.collect()


@pytest.mark.slow
def test_refocus_from_random_starts_is_safe_and_mostly_in_focus(requirement_runs, model):
    dof = model.optics.dof_um
    for case, error_um, result in requirement_runs:
        assert result.tolerance_um == pytest.approx(dof / 2)
        # never farther from focus than the start (by more than one DoF)
        assert abs(error_um) <= abs(case[-1]) + dof, (case, error_um, result.message)
        assert result.snaps <= 1 + result.moves + 4, (case, result.snaps)  # + polish budget
    errors = [abs(e) for _, e, _ in requirement_runs]
    assert sum(e <= dof / 2 for e in errors) >= len(errors) // 2, errors


@pytest.mark.slow
def test_refocus_requirement_all_within_half_dof(requirement_runs, model):
    # The requirement on these seeded dense and sparse cases (bench_refocus:
    # 96 % of the runs with content, docs/refocus.md): a retrained model that breaks
    # this is what it is here to say.
    dof = model.optics.dof_um
    failures = [
        (*case, round(e, 2), r.verdict) for case, e, r in requirement_runs if abs(e) > dof / 2
    ]
    assert not failures, failures


@pytest.mark.parametrize("kind", ["cell", "tissue"])
def test_refocus_abstains_on_empty_fields(big_scope, model, kind):
    scope = big_scope
    site = scope.slide.find_sites("empty", n=1, seed=0, kind=kind, margin_sites=1)[0]
    scope.move_to_site(site)
    z0 = scope.move_to_defocus(-9.0)
    moves_before = scope.counts["z_moves"]
    result = refocus(scope.core, model)
    assert result.verdict == "abstained"
    assert "no usable content" in result.message
    assert result.moves == 0 and result.commanded_z_um == () and not result.moved
    assert result.snaps == 1
    assert scope.core.getPosition() == z0 == result.final_z_um
    assert scope.counts["z_moves"] == moves_before


# A speck of debris on an empty field of the seeded slide: out of focus the RIN
# scores it 0.84-0.89, just above its threshold, as a lone patch (bench_refocus's
# site [22, 45]; a lone cell scores >= 0.98). The lone-patch gate keeps the stage still.
DEBRIS_SITE = (22, 45)


def test_refocus_does_not_move_on_a_lone_speck_of_debris(big_scope, model):
    scope = big_scope
    scope.move_to_site(DEBRIS_SITE)
    z0 = scope.move_to_defocus(6.0)
    result = refocus(scope.core, model, polish=False)
    assert result.verdict == "abstained", result.message
    assert "too weak to move on alone" in result.message
    assert result.moves == 0 and scope.core.getPosition() == z0
    first = result.predictions[0]
    assert len(first.patches) == 1 and model.threshold <= first.patches[0].importance < 0.9
    # without the gate the same frame is acted on: the gate is what keeps it still
    result = refocus(scope.core, model, polish=False, min_lone_importance=0.0)
    assert result.moves >= 1


# --------------------------------------------------------------------- fake models
def test_one_shot_with_an_exact_model(microscope):
    fake = FakeModel(microscope, lambda d, n: d)
    microscope.move_to_defocus(7.3)
    gen = iter_refocus(microscope.core, fake, polish=False)
    steps = []
    with pytest.raises(StopIteration) as stop:
        while True:
            steps.append(next(gen))
    result = stop.value.value
    assert isinstance(result, RefocusResult)
    assert all(isinstance(s, RefocusStep) for s in steps)
    assert [s.phase for s in steps] == ["snap", "move", "snap"]
    assert steps[0].image is not None and steps[0].prediction.defocus_um == pytest.approx(7.3)
    assert result.verdict == "in_focus" and result.moves == 1 and result.snaps == 2
    assert abs(microscope.true_defocus_um()) < 1e-6
    assert result.tolerance_um == pytest.approx(0.6)  # half the fake model's DoF
    assert result.polish is None


class FlooredModel(FakeModel):
    """A fake model with a near-focus calibration that sends a reading of -1 µm
    (the bundled DPN's floor at focus) back to 0.1 µm."""

    near_focus_calibration = NearFocusCalibration((-3.0, -1.0, 1.0, 3.0), (-3.0, 0.1, 1.0, 3.0))


def _floored(d, n):
    if n == 1:
        return d - 0.3  # the first move lands 0.3 µm above focus
    return d if abs(d) >= 1.0 else -1.0


def test_verification_readings_go_through_the_near_focus_calibration(microscope):
    fake = FlooredModel(microscope, _floored)
    microscope.move_to_defocus(5.6)
    result = refocus(microscope.core, fake, polish=False)
    # the verification at +0.3 µm reads -1 raw, 0.1 calibrated: in focus, no second move
    assert result.verdict == "in_focus" and result.moves == 1 and result.snaps == 2
    assert microscope.true_defocus_um() == pytest.approx(0.3, abs=1e-6)
    # without the calibration the floor sends the stage 1 µm up and around
    microscope.move_to_defocus(5.6)
    fake.calls = 0
    raw = refocus(microscope.core, fake, polish=False, near_focus_calibration=False)
    assert raw.moves >= 2 and raw.snaps >= 3


def test_the_first_reading_is_never_calibrated(microscope):
    # from an unknown start the near-focus prior does not hold: -1 means "move 1 µm up"
    fake = FlooredModel(microscope, lambda d, n: d if abs(d) >= 1.0 else -1.0)
    z0 = microscope.move_to_defocus(0.4)
    steps = list(itertools.islice(iter_refocus(microscope.core, fake, polish=False), 2))
    assert [s.phase for s in steps] == ["snap", "move"]
    assert steps[0].prediction.defocus_um == pytest.approx(-1.0)
    assert steps[1].z_um == pytest.approx(z0 + 1.0)


class ShortFirstModel(FakeModel):
    """A fake model whose first-move calibration stretches readings beyond 3 µm by 0.4 µm."""

    first_move_calibration = NearFocusCalibration(
        (-30.0, -10.0, -3.0, 3.0, 10.0, 30.0), (-30.0, -10.4, -3.0, 3.0, 10.4, 30.0)
    )


def _short_first(d, n):
    # the first reading falls 4 % short (as the bundled DPN's does at 5-15 µm)
    return d * 0.96 if n == 1 else d


def test_the_first_move_goes_through_the_first_move_calibration(microscope):
    fake = ShortFirstModel(microscope, _short_first)
    z0 = microscope.move_to_defocus(10.0)
    steps = list(itertools.islice(iter_refocus(microscope.core, fake, polish=False), 2))
    # raw reading 9.6 µm, calibrated 9.6 + 0.4 × (6.6 / 7) = 9.977 µm
    assert steps[0].prediction.defocus_um == pytest.approx(9.6)
    assert steps[1].phase == "move"
    assert steps[1].z_um == pytest.approx(z0 - (9.6 + 0.4 * 6.6 / 7.0), abs=1e-3)
    assert abs(microscope.true_defocus_um()) < 0.05
    # switched off, the move follows the raw reading and lands 0.4 µm short
    z0 = microscope.move_to_defocus(10.0)
    fake.calls = 0
    raw = refocus(microscope.core, fake, polish=False, first_move_calibration=False, max_moves=1)
    assert raw.start_z_um == pytest.approx(z0)
    assert raw.readings[1].z_um == pytest.approx(z0 - 9.6, abs=1e-3)
    with pytest.raises(ValueError, match="first_move_calibration must be True or False"):
        refocus(microscope.core, fake, first_move_calibration="yes")


def test_the_first_move_calibration_leaves_later_readings_alone(microscope):
    # every reading falls 4 % short: only the first goes through the map; the
    # check after the move (0.02 µm below focus) is read raw
    fake = ShortFirstModel(microscope, lambda d, n: d * 0.96)
    microscope.move_to_defocus(-10.0)
    result = refocus(microscope.core, fake, polish=False)
    assert result.verdict == "in_focus" and result.moves == 1
    first, check = result.readings[0], result.readings[1]
    assert first.defocus_um == pytest.approx(-9.6 - 0.4 * 6.6 / 7.0, abs=1e-3)
    assert check.defocus_um == pytest.approx(0.96 * (check.z_um - (first.z_um + 10.0)), abs=1e-3)


def test_already_in_focus_does_not_move(microscope):
    fake = FakeModel(microscope, lambda d, n: d)
    z0 = microscope.move_to_defocus(0.2)
    result = refocus(microscope.core, fake, polish=False)
    assert result.verdict == "in_focus" and result.moves == 0 and result.snaps == 1
    assert microscope.core.getPosition() == z0


def test_unverified_single_move(microscope):
    fake = FakeModel(microscope, lambda d, n: 0.8 * d)
    microscope.move_to_defocus(10.0)
    result = refocus(microscope.core, fake, verify=False)
    assert result.verdict == "unverified" and result.moves == 1 and result.snaps == 1
    assert microscope.true_defocus_um() == pytest.approx(2.0)


def test_wrong_sign_is_caught_by_verification(microscope):
    # a model with the magnitude right and the sign always wrong: the first move
    # doubles the defocus, the rule sends the stage back past the start, onto focus
    fake = FakeModel(microscope, lambda d, n: -d)
    z0 = microscope.move_to_defocus(-8.0)
    focus = microscope.true_focus_um()
    result = refocus(microscope.core, fake, polish=False)
    assert result.verdict == "in_focus", result.message
    assert abs(microscope.true_defocus_um()) <= result.tolerance_um
    assert result.commanded_z_um[0] == pytest.approx(z0 - 8.0)  # the wrong way
    assert result.commanded_z_um[1] == pytest.approx(focus)  # mirrored back
    assert result.moves == 2 and result.snaps == 3


def test_wrong_sign_on_the_first_reading_only(microscope):
    # the sign is wrong far from focus and right near it (as on sparse content)
    fake = FakeModel(microscope, lambda d, n: -d if n == 1 else d)
    microscope.move_to_defocus(12.0)
    result = refocus(microscope.core, fake, polish=False)
    assert result.in_focus, result.message
    assert abs(microscope.true_defocus_um()) <= result.tolerance_um


def test_underestimating_model_converges_within_budget(microscope):
    fake = FakeModel(microscope, lambda d, n: 0.6 * d)
    microscope.move_to_defocus(-20.0)
    result = refocus(microscope.core, fake, max_moves=6, polish=False)
    assert result.verdict == "in_focus"
    assert abs(microscope.true_defocus_um()) <= result.tolerance_um
    assert result.moves <= 6


ADVERSARIAL = {
    "huge": lambda d, n: 1e9,
    "minus_huge": lambda d, n: -1e9,
    "nan_later": lambda d, n: 5.0 if n == 1 else math.nan,
    "inf_later": lambda d, n: -5.0 if n == 1 else math.inf,
    "wrong_sign": lambda d, n: -3.0 * d,
    "random": lambda d, n: float(np.random.default_rng(n).uniform(-1e4, 1e4)),
    "flip_flop": lambda d, n: 40.0 * (-1) ** n,
}


def test_limits_hold_for_adversarial_predictions(microscope):
    core = microscope.core
    seen = record_commands(core)
    for name, rule in sorted(ADVERSARIAL.items()):
        z0 = microscope.move_to_defocus(2.0)
        lo, hi, step = z0 - 7.0, z0 + 4.0, 3.0
        seen.clear()
        result = refocus(
            core,
            FakeModel(microscope, rule),
            z_min_um=lo,
            z_max_um=hi,
            max_move_um=step,
            max_moves=5,
            backlash_um=1.0,
        )
        assert result.verdict in VERDICTS and result.verdict != "error", (name, result.message)
        assert seen == pytest.approx(list(result.commanded_z_um)), name
        path = [z0, *seen]
        assert all(lo <= z <= hi for z in seen), (name, seen)
        assert all(abs(b - a) <= step + 1e-9 for a, b in itertools.pairwise(path)), (name, path)
        assert result.final_z_um == pytest.approx(core.getPosition())
        assert lo <= core.getPosition() <= hi


def test_an_under_read_first_reading_is_not_taken_for_a_sign_error(microscope):
    # A sparse field far from focus can read a few µm at 20 µm (seen on the
    # benchmark): the first move is then right but short, and the next reading,
    # on the same side, is much larger. The sign-error rule must not flip it.
    fake = FakeModel(microscope, lambda d, n: d / 10 if n == 1 else d)
    z0 = microscope.move_to_defocus(19.5)
    result = refocus(microscope.core, fake, polish=False)
    assert result.in_focus and abs(microscope.true_defocus_um()) < 1e-6
    assert all(z <= z0 + 1e-9 for z in result.commanded_z_um)  # never away from focus
    # a consistently wrong sign still is caught: |d| doubles after the first move
    fake = FakeModel(microscope, lambda d, n: -d)
    z0 = microscope.move_to_defocus(4.0)
    result = refocus(microscope.core, fake, polish=False, max_moves=3)
    assert result.commanded_z_um[0] == pytest.approx(z0 + 4.0)
    assert min(result.commanded_z_um[1:]) < z0


def test_budget_spent_goes_where_two_readings_agree(microscope):
    # The benchmark's one miss (sparse tissue, 19.5 µm above focus), replayed: the
    # first reading under-reads (7.5 µm), the second is right but grew too little to
    # be read as an under-read, so the direction is flipped; the stage goes 27 µm
    # off, which reads 20 µm, comes back to 6.7 µm, and the three moves are spent.
    # The second and fourth readings, 5 µm apart, put the focus at the same place:
    # the controller ends there, not back at the start.
    def rule(d, n):
        if n == 1:
            return 0.384 * d
        return d if abs(d) <= 15.0 else 0.75 * d

    microscope.move_to_defocus(19.5)
    result = refocus(microscope.core, FakeModel(microscope, rule), polish=False)
    assert result.verdict == "budget_spent", result.message
    assert "two readings from different heights" in result.message
    assert abs(microscope.true_defocus_um()) <= result.tolerance_um
    assert result.moves == 4 and result.snaps == 4
    # without the agreement (readings that never agree) it still goes back to the start
    microscope.move_to_defocus(19.5)
    z0 = microscope.core.getPosition()
    fake = FakeModel(microscope, lambda d, n: rule(d, n) + 3.0 * n)
    result = refocus(microscope.core, fake, polish=False)
    assert result.verdict == "budget_spent", result.message
    assert "two readings" not in result.message
    assert result.final_z_um == pytest.approx(z0) or "sharp" in result.message


def test_non_finite_first_prediction_abstains(microscope):
    for value in (math.nan, math.inf, -math.inf):
        z0 = microscope.move_to_defocus(3.0)
        result = refocus(microscope.core, FakeModel(microscope, lambda d, n, v=value: v))
        assert result.verdict == "abstained" and "not a finite number" in result.message
        assert result.commanded_z_um == () and microscope.core.getPosition() == z0


class LonePatchModel(FakeModel):
    """A fake model whose prediction rests on given patch importances."""

    def __init__(self, scope, importances):
        super().__init__(scope, lambda d, n: d)
        self.importances = importances

    def predict(self, image, *, pixel_size_um=None):
        p = super().predict(image, pixel_size_um=pixel_size_um)
        patches = tuple(
            PatchPrediction(0, i, w, p.defocus_um, (0.0, 0.0, 224.0, 224.0))
            for i, w in enumerate(self.importances)
        )
        return DefocusPrediction(**{**p.__dict__, "patches": patches})


@pytest.mark.parametrize(
    ("importances", "option", "moves"),
    [
        ((0.85,), {}, False),  # a lone weak patch: abstain
        ((0.95,), {}, True),  # a lone confident patch
        ((0.85, 0.82), {}, True),  # two weak patches agree: not alone
        ((0.85,), {"min_lone_importance": 0.8}, True),  # a lower bar
        ((0.85,), {"min_lone_importance": 0.0}, True),  # the gate off
    ],
)
def test_lone_weak_patch_gate(microscope, importances, option, moves):
    z0 = microscope.move_to_defocus(5.0)
    fake = LonePatchModel(microscope, importances)
    result = refocus(microscope.core, fake, polish=False, **option)
    if moves:
        assert result.in_focus and result.moves >= 1
    else:
        assert result.verdict == "abstained" and "too weak to move on alone" in result.message
        assert "0.85 < 0.9" in result.message
        assert result.moves == 0 and microscope.core.getPosition() == z0


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan, "0.9"])
def test_bad_min_lone_importance_is_refused(bad):
    with pytest.raises(ValueError, match="min_lone_importance"):
        RefocusOptions(min_lone_importance=bad)


def test_start_outside_soft_limits_is_refused(microscope):
    z0 = microscope.move_to_defocus(3.0)
    result = refocus(microscope.core, FakeModel(microscope, lambda d, n: d), z_min_um=z0 + 1)
    assert result.verdict == "abstained" and "outside the soft limits" in result.message
    assert result.snaps == 0 and microscope.core.getPosition() == z0


def test_limited_by_a_soft_limit(microscope):
    z0 = microscope.move_to_defocus(-10.0)
    result = refocus(microscope.core, FakeModel(microscope, lambda d, n: d), z_max_um=z0 + 4.0)
    assert result.verdict == "limited"
    assert max(result.commanded_z_um) == pytest.approx(z0 + 4.0)
    assert microscope.core.getPosition() <= z0 + 4.0


def test_low_confidence_abstains(microscope):
    class Disagreeing(FakeModel):
        def predict(self, image, *, pixel_size_um=None):
            p = super().predict(image, pixel_size_um=pixel_size_um)
            return DefocusPrediction(**{**p.__dict__, "direction_agreement": 0.5})

    z0 = microscope.move_to_defocus(5.0)
    result = refocus(microscope.core, Disagreeing(microscope, lambda d, n: d))
    assert result.verdict == "abstained" and "agree on the direction" in result.message
    assert microscope.core.getPosition() == z0
    # the gate can be switched off
    result = refocus(
        microscope.core, Disagreeing(microscope, lambda d, n: d), min_direction_agreement=0.0
    )
    assert result.in_focus


def test_backlash_compensation_approaches_from_below(sim_core):
    scope = load_simulated_microscope(sim_core, seed=0, sensor_shape_px=(448, 448), backlash_um=2.0)
    fake = FakeModel(scope, lambda d, n: d)
    scope.move_to_defocus(-6.0)
    scope.core.setPosition(scope.core.getPosition() + 9.0)  # now 3 µm above, play taken up
    assert scope.true_defocus_um() == pytest.approx(3.0)
    result = refocus(sim_core, fake, backlash_um=2.5, polish=False)
    assert result.verdict == "in_focus"
    # the downward correction went 2.5 µm below the target first, then up to it
    target = scope.true_focus_um()
    assert result.commanded_z_um == pytest.approx((target - 2.5, target))
    assert scope.z_mechanical_um == pytest.approx(scope.z_um)
    assert abs(scope.true_defocus_um()) < 1e-6
    # without compensation the play leaves the stage above focus
    scope.core.setPosition(target + 3.0)
    result = refocus(sim_core, fake, verify=False)
    assert scope.true_defocus_um() == pytest.approx(2.0)


# --------------------------------------------------------------------- faults
def test_device_errors_leave_a_known_position(microscope, caplog):
    core = microscope.core
    # after=n: the n-th call of the device raises (1: the first snap or move)
    for device, after, moves_done in [("camera", 1, 0), ("camera", 2, 1), ("z", 1, 0), ("z", 2, 1)]:
        fake = FakeModel(microscope, lambda d, n: 0.5 * d)
        z0 = microscope.move_to_defocus(8.0)
        microscope.inject_fault(device, after=after)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="napari_sparsefocus.hardware._refocus"):
            result = refocus(core, fake)
        microscope.clear_faults()
        assert result.verdict == "error"
        assert f"simulated {device} fault" in result.error
        assert "RuntimeError" in result.error and result.error in result.message
        assert result.final_z_um == pytest.approx(core.getPosition())
        # the stage is where the last successful command left it
        assert core.getPosition() == pytest.approx(z0 if moves_done == 0 else z0 - 4.0)
        assert result.moves == moves_done
        assert not core.deviceBusy(core.getFocusDevice())
        info = [r for r in caplog.records if r.levelno == logging.INFO]
        assert len(info) == 1 and "refocus error" in info[0].getMessage()
        assert any(r.levelno == logging.WARNING and r.exc_info for r in caplog.records)


def test_model_errors_are_reported(microscope):
    class Broken:
        def predict(self, image, *, pixel_size_um=None):
            raise ValueError("the model refuses")

    z0 = microscope.move_to_defocus(4.0)
    result = refocus(microscope.core, Broken())
    assert result.verdict == "error" and "the model refuses" in result.error
    assert microscope.core.getPosition() == z0


# --------------------------------------------------------------------- cancel
def test_close_leaves_the_stage_still(microscope, caplog):
    core = microscope.core
    fake = FakeModel(microscope, lambda d, n: 0.5 * d)
    microscope.move_to_defocus(10.0)
    seen = record_commands(core)
    gen = iter_refocus(core, fake)
    assert next(gen).phase == "snap"
    assert next(gen).phase == "move"
    z_after = core.getPosition()
    with caplog.at_level(logging.INFO, logger="napari_sparsefocus.hardware._refocus"):
        gen.close()
    assert core.getPosition() == z_after == seen[-1]
    assert not core.deviceBusy(core.getFocusDevice())
    assert any("refocus cancelled" in r.message for r in caplog.records)
    n_cmd = len(seen)
    core.snapImage()  # the core is still usable, nothing else moves
    assert len(seen) == n_cmd


def test_stop_flag_cancels(microscope):
    fake = FakeModel(microscope, lambda d, n: 0.5 * d)
    microscope.move_to_defocus(10.0)
    flag = threading.Event()
    gen = iter_refocus(microscope.core, fake, stop=flag)
    next(gen)
    flag.set()
    with pytest.raises(StopIteration) as stop:
        next(gen)
    result = stop.value.value
    assert result.verdict == "cancelled" and result.moves == 0
    assert result.final_z_um == microscope.core.getPosition() == result.start_z_um
    # a callable works too
    result = refocus(microscope.core, fake, stop=lambda: True)
    assert result.verdict == "cancelled" and result.snaps == 0


# --------------------------------------------------------------------- fallback
def test_fallback_hill_climb_when_the_model_abstains(microscope):
    scope = microscope
    scope.move_to_site(scope.slide.find_sites("dense", n=1, seed=0, margin_sites=1)[0])
    scope.move_to_defocus(3.0)
    blind = FakeModel(scope, lambda d, n: None)
    assert refocus(scope.core, blind).verdict == "abstained"
    result = refocus(scope.core, blind, fallback="hill_climb", fallback_max_snaps=25)
    assert result.verdict == "fallback_in_focus", result.message
    assert result.fallback is not None and result.fallback.converged
    assert abs(scope.true_defocus_um()) <= 1.0
    assert result.snaps == 1 + result.fallback.snaps <= 26


def test_fallback_on_an_empty_field_returns_to_the_start(big_scope):
    scope = big_scope
    scope.move_to_site((33, 14))
    assert scope.current_site().sparsity == "empty"
    z0 = scope.move_to_defocus(5.0)
    blind = FakeModel(scope, lambda d, n: None)
    result = refocus(scope.core, blind, fallback="hill_climb", fallback_max_snaps=8)
    assert result.verdict == "fallback_failed", result.message
    assert scope.core.getPosition() == pytest.approx(z0)


# --------------------------------------------------------------------- API
def test_logging_one_info_line(microscope, caplog):
    microscope.move_to_defocus(6.0)
    with caplog.at_level(logging.INFO, logger="napari_sparsefocus.hardware._refocus"):
        refocus(microscope.core, FakeModel(microscope, lambda d, n: d), polish=False)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(lines) == 1
    assert "refocus in_focus" in lines[0] and "1 moves, 2 snaps" in lines[0]


def test_options_validation(microscope):
    core = microscope.core
    fake = FakeModel(microscope, lambda d, n: d)
    with pytest.raises(ValueError, match="unknown refocus option"):
        refocus(core, fake, max_move=3)
    for bad in (
        {"max_move_um": 0},
        {"max_move_um": math.nan},
        {"max_moves": 0},
        {"z_min_um": 5.0, "z_max_um": 1.0},
        {"tolerance_um": -1},
        {"fallback": "brent"},
        {"backlash_um": 50.0},
        {"min_direction_agreement": 2},
        {"polish_step_um": 0},
        {"polish_within_um": -1.0},
        {"polish_max_snaps": 1},
        {"polish": "sometimes"},
        {"polish": 1},
    ):
        with pytest.raises(ValueError):
            RefocusOptions(**bad)
    opts = RefocusOptions(max_moves=2)
    assert opts.replace(verify=False).max_moves == 2
    with pytest.raises(ValueError, match="predict"):
        refocus(core, object())


def test_core_without_focus_device(sim_core):
    with pytest.raises(ValueError, match="no focus device"):
        iter_refocus(sim_core, FakeModel(None, lambda d, n: d))


def test_result_to_dict_is_json(microscope):
    import json

    microscope.move_to_defocus(-4.0)
    result = refocus(microscope.core, FakeModel(microscope, lambda d, n: d))
    d = json.loads(json.dumps(result.to_dict()))
    assert d["verdict"] == "in_focus" and len(d["readings"]) == 2
    assert d["polish"]["method"] in POLISH_METHODS and d["polish"]["snaps"] == 2


# --------------------------------------------------------------------- polish
def test_parabola_peak():
    # a Gaussian focus curve is a parabola in log: the vertex is exact
    z = np.array([-1.0, 0.2, 1.4])
    s = 5.0 * np.exp(-0.5 * (z - 0.3) ** 2 / 1.5**2)
    assert _parabola_peak(z, s) == pytest.approx(0.3)
    assert _parabola_peak(z[::-1], s[::-1]) == pytest.approx(0.3)  # any order
    assert _parabola_peak(z, 1.0 / s) is None  # a minimum is no focus
    assert _parabola_peak(z, np.exp(z)) is None  # straight in log: no maximum
    assert _parabola_peak(z, [1.0, 0.0, 1.0]) is None  # not positive
    assert _parabola_peak(z, [1.0, math.nan, 1.0]) is None
    assert _parabola_peak([0.0, 0.0, 1.0], [1.0, 2.0, 1.0]) is None  # repeated position
    with pytest.raises(ValueError, match="three"):
        _parabola_peak([0.0, 1.0], [1.0, 2.0])


@pytest.fixture
def dense_scope(sim_core):
    """A small (448 px) simulated microscope on a dense cell site (fast frames)."""
    scope = load_simulated_microscope(sim_core, seed=0, sensor_shape_px=(448, 448))
    scope.move_to_site(scope.slide.find_sites("dense", n=1, seed=0, kind="cell")[0])
    return scope


def test_polish_corrects_a_biased_model(dense_scope):
    scope = dense_scope
    # the model reads "in focus" 1 µm below the focus: without polish the stage stays there
    biased = FakeModel(scope, lambda d, n: d + 1.0)
    scope.move_to_defocus(8.0)
    result = refocus(scope.core, biased, polish=False)
    assert result.verdict == "in_focus" and result.polish is None
    assert scope.true_defocus_um() == pytest.approx(-1.0)
    steps = []
    scope.move_to_defocus(8.0)
    gen = iter_refocus(scope.core, biased)
    with pytest.raises(StopIteration) as stop:
        while True:
            steps.append(next(gen))
    result = stop.value.value
    assert result.verdict == "in_focus" and "polished" in result.message
    p = result.polish
    assert p is not None and p.method == "parabola"
    # the verification snap is reused; one sample either side, one more step
    # outwards if the sharpest one is the outermost
    assert p.snaps in (2, 3) and result.snaps == 2 + p.snaps and len(p.samples) == p.snaps + 1
    assert p.center_z_um == pytest.approx(result.readings[-1].z_um)
    zs = [z for z, _ in p.samples]
    assert zs[:3] == pytest.approx([p.center_z_um - 1.2, p.center_z_um, p.center_z_um + 1.2])
    assert [s.phase for s in steps].count("polish") == p.snaps
    assert abs(scope.true_defocus_um()) <= result.tolerance_um
    assert result.final_z_um == pytest.approx(p.z_um)


def test_auto_polish_trusts_a_confirming_reading_and_polishes_the_rest(dense_scope):
    scope = dense_scope
    # a reading within tolerance after the move ends it: one move, two snaps, no polish
    biased = FakeModel(scope, lambda d, n: d + 0.4)
    scope.move_to_defocus(8.0)
    result = refocus(scope.core, biased, polish="auto")
    assert result.verdict == "in_focus" and result.polish is None, result.message
    assert result.moves == 1 and result.snaps == 2
    assert scope.true_defocus_um() == pytest.approx(-0.4)
    # the same start with polish=True measures the focus instead
    scope.move_to_defocus(8.0)
    result = refocus(scope.core, biased, polish=True)
    assert result.polish is not None and result.moves > 1
    # a reading outside tolerance but within 2 DoF is polished, as with polish=True
    # (the first move lands 1.5 µm below focus, which then reads -1.5 µm)
    far_biased = FakeModel(scope, lambda d, n: d + 1.5 if n == 1 else d)
    scope.move_to_defocus(8.0)
    result = refocus(scope.core, far_biased, polish="auto")
    assert result.polish is not None and result.polish.method == "parabola", result.message
    assert abs(scope.true_defocus_um()) <= result.tolerance_um
    # numpy booleans are plain booleans
    assert RefocusOptions(polish=np.bool_(True)).polish is True


def test_polish_finishes_when_the_model_loses_sharpening_content(dense_scope):
    """Small content can read as empty near focus: the sharpness of its boxes finishes."""
    scope = dense_scope

    # the first reading lands 1 µm below focus; after that the model sees no content
    def losing():
        return FakeModel(scope, lambda d, n: d + 1.0 if n == 1 else None)

    scope.move_to_defocus(8.0)
    result = refocus(scope.core, losing(), polish=False)
    assert result.verdict == "unconfirmed" and result.polish is None
    scope.move_to_defocus(8.0)
    result = refocus(scope.core, losing())
    assert result.verdict == "in_focus", result.message
    assert "got sharper" in result.message and result.polish.method == "parabola"
    assert abs(scope.true_defocus_um()) <= result.tolerance_um
    # without sharpening content (a model that loses it at once, before any move) no polish
    scope.move_to_defocus(8.0)
    result = refocus(scope.core, FakeModel(scope, lambda d, n: None))
    assert result.verdict == "abstained" and result.polish is None


def test_polish_steps_out_and_rejects_an_open_fit(dense_scope):
    scope = dense_scope
    biased = FakeModel(scope, lambda d, n: d + 2.0)  # "in focus" 2 µm below the focus
    # two snaps only: the sharpest sample is the upper one, no maximum enclosed
    scope.move_to_defocus(8.0)
    result = refocus(scope.core, biased, polish_max_snaps=2)
    p = result.polish
    assert p is not None and p.method == "best_sample" and p.snaps == 2
    best = max(p.samples, key=lambda zs: zs[1])
    assert best == p.samples[-1] and p.z_um == pytest.approx(best[0])
    assert scope.core.getPosition() == pytest.approx(best[0])
    # with the default budget it steps upwards until the peak is enclosed and fits it
    scope.move_to_defocus(8.0)
    result = refocus(scope.core, biased)
    p = result.polish
    assert p is not None and p.method == "parabola", p
    assert p.snaps in (3, 4) and len(p.samples) == p.snaps + 1
    zs = [z for z, _ in p.samples]
    assert zs[-1] > p.center_z_um + 1.2  # stepped out beyond the first pattern
    assert abs(scope.true_defocus_um()) <= result.tolerance_um


def test_polish_respects_limits_and_max_move(dense_scope):
    scope = dense_scope
    core = scope.core
    seen = record_commands(core)
    z0 = scope.move_to_defocus(0.2)  # already in focus: the polish samples around z0
    seen.clear()
    hi = z0 + 0.1
    result = refocus(core, FakeModel(scope, lambda d, n: d), z_max_um=hi, max_move_um=1.0)
    p = result.polish
    assert p is not None and result.verdict == "in_focus"
    assert all(z <= hi for z in seen) and all(z <= hi for z, _ in p.samples)
    path = [z0, *seen]
    assert all(abs(b - a) <= 1.0 + 1e-9 for a, b in itertools.pairwise(path)), path
    assert seen == pytest.approx(list(result.commanded_z_um))
    # no sample above z0 fits: the lower side is explored instead
    assert max(z for z, _ in p.samples) == pytest.approx(z0)
    assert core.getPosition() <= hi


def test_polish_approaches_from_below_with_backlash(sim_core):
    scope = load_simulated_microscope(sim_core, seed=0, sensor_shape_px=(448, 448), backlash_um=1.0)
    scope.move_to_site(scope.slide.find_sites("dense", n=1, seed=0, kind="cell")[0])
    scope.move_to_defocus(6.0)
    seen = record_commands(sim_core)
    result = refocus(sim_core, FakeModel(scope, lambda d, n: d + 0.3), backlash_um=1.5)
    assert result.polish is not None
    # every downward command is followed by an upward one: no position is reached from above
    path = [result.start_z_um, *seen]
    for a, b, c in zip(path, path[1:], path[2:], strict=False):
        if b < a:
            assert c > b
    assert seen[-1] > seen[-2]
    assert scope.z_mechanical_um == pytest.approx(scope.z_um)


def test_polish_on_a_flat_field_stays_at_the_center(big_scope):
    scope = big_scope
    scope.move_to_site((33, 14))
    assert scope.current_site().sparsity == "empty"
    z0 = scope.move_to_defocus(5.0)
    result = refocus(scope.core, FakeModel(scope, lambda d, n: 0.1), polish_max_snaps=2)
    p = result.polish
    assert p is not None and p.method == "flat", p
    assert scope.core.getPosition() == pytest.approx(z0) == pytest.approx(p.center_z_um)


def test_polish_can_be_cancelled(dense_scope):
    scope = dense_scope
    scope.move_to_defocus(0.2)
    gen = iter_refocus(scope.core, FakeModel(scope, lambda d, n: d))
    phases = []
    while True:
        step = next(gen)
        phases.append(step.phase)
        if step.phase == "polish":
            break
    z = scope.core.getPosition()
    gen.close()
    assert scope.core.getPosition() == z
    assert not scope.core.deviceBusy(scope.core.getFocusDevice())
    assert phases[0] == "snap"


def test_content_boxes_take_every_positive_cell_of_the_importance_grid():
    importance = np.array([[0.9, 0.1], [0.85, 0.3]], np.float32)
    top = (PatchPrediction(0, 0, 0.9, 1.0, (10.0, 20.0, 60.0, 70.0)),)
    pred = DefocusPrediction(
        defocus_um=1.0,
        spread_um=0.0,
        direction_agreement=1.0,
        sparsity="sparse",
        verdict="ok",
        reason="",
        importance=importance,
        patches=top,
        crop_box_px=(10.0, 20.0, 110.0, 120.0),
    )
    # the selected patch, then the other cell at or above the threshold
    assert _content_boxes(pred, (200, 200), 0.8) == [(10, 20, 60, 70), (60, 20, 110, 70)]
    assert _content_boxes(pred, (200, 200), 0.2) == [
        (10, 20, 60, 70),
        (60, 20, 110, 70),
        (60, 70, 110, 120),
    ]
    # no threshold (a model without one): the selected patches only
    assert _content_boxes(pred, (200, 200), None) == [(10, 20, 60, 70)]
    # boxes are clipped to the frame; nothing usable: the whole frame
    assert _content_boxes(pred, (40, 45), 0.8) == [(10, 20, 40, 45)]
    empty = DefocusPrediction(**{**pred.__dict__, "patches": ()})
    assert _content_boxes(empty, (40, 45), 0.8) == [(0, 0, 40, 45)]


class BoxModel(FakeModel):
    """A fake model whose first snap names one cell and every later snap another."""

    def __init__(self, scope, rule, first_cell, later_cell, patch_px=224):
        super().__init__(scope, rule)
        self.cells = (first_cell, later_cell)
        self.patch_px = patch_px

    def predict(self, image, *, pixel_size_um=None):
        p = super().predict(image, pixel_size_um=pixel_size_um)
        r, c = self.cells[0 if self.calls == 1 else 1]
        s = self.patch_px
        box = (float(r * s), float(c * s), float((r + 1) * s), float((c + 1) * s))
        patch = PatchPrediction(int(r), int(c), 1.0, p.defocus_um, box)
        return DefocusPrediction(**{**p.__dict__, "patches": (patch,)})


def test_polish_measures_the_content_seen_nearest_focus(sim_core):
    """Far off, the RIN can take an empty cell (debris) for content: the polish
    measures the boxes of the reading the model put nearest focus."""
    # noise-free frames: every sample can be measured again here
    scope = load_simulated_microscope(sim_core, seed=0, sensor_shape_px=(672, 672), noise=False)
    site = scope.slide.find_sites("sparse", n=1, seed=0, kind="cell")[0]
    scope.move_to_site(site)
    frac = scope.slide.field(site).content_fraction
    assert frac.shape == (3, 3) and frac.min() == 0.0 < frac.max()
    full = tuple(int(v) for v in np.unravel_index(np.argmax(frac), frac.shape))
    empty = tuple(int(v) for v in np.unravel_index(np.argmin(frac), frac.shape))

    def cell_sharpness(cell, z_um):
        x, y = scope.core.getXYPosition()
        image = scope.slide.render(x, y, z_um, noise=False)
        r, c = cell
        return _sharpness(image, [(224 * r, 224 * c, 224 * (r + 1), 224 * (c + 1))])

    # reads "in focus" 1 µm below the focus; the first snap names the empty cell
    for later in (full, empty):
        model = BoxModel(scope, lambda d, n: d + 1.0, empty, later)
        scope.move_to_defocus(8.0)
        result = refocus(scope.core, model)
        p = result.polish
        assert p is not None, result.message
        # every sample (the reused verification snap too) is the later cell's sharpness
        for z, value in p.samples:
            assert value == pytest.approx(cell_sharpness(later, z), rel=1e-9)
            if later != empty:
                assert value != pytest.approx(cell_sharpness(empty, z), rel=1e-3)
        if later == full:
            assert p.method == "parabola" and abs(scope.true_defocus_um()) <= result.tolerance_um


class AllPatchesModel(FakeModel):
    """A fake model that knows ``k_mode``: its top-k patch reads 1 µm high, its
    other content patches 1.5 µm low and right."""

    OFFSETS = ((0, 0, 1.0), (1, 1, -0.5), (2, 2, 0.0))

    def __init__(self, scope):
        super().__init__(scope, lambda d, n: d + 1.0)
        self.k_modes = []

    def predict(self, image, *, pixel_size_um=None, k_mode="auto"):
        p = super().predict(image, pixel_size_um=pixel_size_um)
        self.k_modes.append(k_mode)
        d = p.defocus_um - 1.0  # the truth
        rows = self.OFFSETS if k_mode == "all" else self.OFFSETS[:1]
        patches = tuple(
            PatchPrediction(
                r, c, 0.95, d + off, (224.0 * r, 224.0 * c, 224.0 * (r + 1), 224.0 * (c + 1))
            )
            for r, c, off in rows
        )
        return DefocusPrediction(**{**p.__dict__, "patches": patches})


def test_verification_near_focus_reads_every_content_patch_weighted_by_sharpness(microscope):
    scope = microscope
    model = AllPatchesModel(scope)
    scope.move_to_defocus(8.0)
    steps = []
    gen = iter_refocus(scope.core, model, polish=False, verification_reading="weighted")
    with pytest.raises(StopIteration) as stop:
        while True:
            steps.append(next(gen))
    result = stop.value.value
    snaps = [s for s in steps if s.phase == "snap"]
    # the first snap is read as the model says (top-k), the verification near focus
    # a second time with every content patch
    assert model.k_modes[:3] == ["auto", "auto", "all"]
    image = snaps[1].image
    boxes = [(224 * r, 224 * c, 224 * (r + 1), 224 * (c + 1)) for r, c, _ in model.OFFSETS]
    w = np.array([_sharpness(image, [b]) for b in boxes])
    truth = result.readings[1].z_um - scope.true_focus_um()
    expected = float(np.dot(w, [truth + off for _, _, off in model.OFFSETS]) / w.sum())
    assert result.readings[1].defocus_um == pytest.approx(expected)
    assert result.readings[1].defocus_um != pytest.approx(truth + 1.0, abs=0.05)
    # "median" keeps the model's own reading
    model = AllPatchesModel(scope)
    scope.move_to_defocus(8.0)
    result = refocus(scope.core, model, polish=False, verification_reading="median")
    assert "all" not in model.k_modes
    truth = result.readings[1].z_um - scope.true_focus_um()
    assert result.readings[1].defocus_um == pytest.approx(truth + 1.0)
    with pytest.raises(ValueError, match="verification_reading"):
        RefocusOptions(verification_reading="mean")


def test_a_first_snap_near_focus_without_a_refiner_keeps_the_top_k_reading(microscope):
    # the weighted near-focus reading is for snaps after a move, never for the first
    model = AllPatchesModel(microscope)
    microscope.move_to_defocus(1.0)
    result = refocus(microscope.core, model, polish=False, verification_reading="weighted")
    assert model.k_modes[:2] == ["auto", "auto"]
    assert result.readings[0].defocus_um == pytest.approx(2.0)


class RefinedModel(AllPatchesModel):
    """An :class:`AllPatchesModel` with a near-focus refiner reading 0.05 µm high, and a
    calibration that adds 0.3 µm (which a refined reading must not get)."""

    def __init__(self, scope):
        super().__init__(scope)
        self.near_focus_calibration = NearFocusCalibration((-50.0, 50.0), (-49.7, 50.3))
        self.refined_calls = 0

    def read_near_focus(self, image, *, pixel_size_um=None):
        self.refined_calls += 1
        return types.SimpleNamespace(defocus_um=self.scope.true_defocus_um() + 0.05)


def _run(gen):
    steps = []
    with pytest.raises(StopIteration) as stop:
        while True:
            steps.append(next(gen))
    return stop.value.value, [s for s in steps if s.phase == "snap"]


def test_verification_near_focus_takes_the_models_refined_reading_uncalibrated(microscope):
    scope = microscope
    model = RefinedModel(scope)
    scope.move_to_defocus(8.0)
    result = refocus(scope.core, model, polish=False)  # default: "refined"
    # the top-k reading after the first move (truth + 1 µm) is within 2 DoF: every
    # verification from there is the refiner's, as it is (truth + 0.05 µm)
    assert model.refined_calls == len(result.readings) - 1 >= 1
    for r in result.readings[1:]:
        assert r.defocus_um == pytest.approx(r.z_um - scope.true_focus_um() + 0.05)
    assert result.verdict == "in_focus"
    assert abs(result.final_z_um - scope.true_focus_um()) <= 0.1
    # "weighted" does not ask for it, and calibrates the sharpness-weighted mean
    for reading, m in (("weighted", RefinedModel(scope)), ("refined", AllPatchesModel(scope))):
        # (a model without a refiner falls back to "weighted" under "refined")
        scope.move_to_defocus(8.0)
        result, snaps = _run(
            iter_refocus(scope.core, m, polish=False, verification_reading=reading)
        )
        assert getattr(m, "refined_calls", 0) == 0 and m.k_modes[:3] == ["auto", "auto", "all"]
        boxes = [(224 * r, 224 * c, 224 * (r + 1), 224 * (c + 1)) for r, c, _ in m.OFFSETS]
        w = np.array([_sharpness(snaps[1].image, [b]) for b in boxes])
        truth = result.readings[1].z_um - scope.true_focus_um()
        weighted = float(np.dot(w, [truth + off for _, _, off in m.OFFSETS]) / w.sum())
        shift = 0.3 if reading == "weighted" else 0.0
        assert result.readings[1].defocus_um == pytest.approx(weighted + shift)


class FlooredFirstModel(FakeModel):
    """The first (top-k) reading is floored on the wrong side near focus (-1 µm); after a
    move the near-focus refiner reads 0.8 × the truth (an under-read, as far out)."""

    def __init__(self, scope):
        super().__init__(scope, lambda d, n: -1.0 if n == 1 else d)

    def read_near_focus(self, image, *, pixel_size_um=None):
        return types.SimpleNamespace(defocus_um=0.8 * self.scope.true_defocus_um())


def test_a_refined_reading_is_not_interpolated_towards_the_first_snaps(microscope):
    scope = microscope
    scope.move_to_defocus(0.5)
    # (the first snap read as the top-k median, as with a model whose refiner is only
    # used after a move)
    result = refocus(scope.core, FlooredFirstModel(scope), polish=False, refine_first_snap=False)
    # readings -1.0 (first snap, 0.5 µm up) and +1.2 (after the move, 1.5 µm up) point at
    # each other; the zero crossing of the line through them lies 0.95 µm up. The refined
    # reading is corrected on instead: 1.5 - 1.2 = 0.3 µm up, read 0.24: in focus.
    assert [r.refined for r in result.readings] == [False, True, True]
    assert result.verdict == "in_focus" and result.moves == 2
    assert abs(scope.true_defocus_um()) == pytest.approx(0.3, abs=0.02)


def test_a_verification_confirms_focus_only_within_confirm_within_um(microscope):
    scope = microscope

    # first reading: the truth; after the move every reading says 0.55 µm (inside the
    # 0.6 µm tolerance of a 1.2 µm DoF, outside the default bar 0.75 × 0.6 = 0.45 µm)
    def rule(d, n):
        return d if n == 1 else 0.55

    scope.move_to_defocus(6.0)
    strict = refocus(scope.core, FakeModel(scope, rule), polish=False, max_moves=2)
    assert strict.moves > 1 and strict.verdict != "in_focus"
    scope.move_to_defocus(6.0)
    loose = refocus(
        scope.core, FakeModel(scope, rule), polish=False, max_moves=2, confirm_within_um=0.6
    )
    assert loose.moves == 1 and loose.verdict == "in_focus"
    assert "0.55 ≤ 0.6 µm" in loose.message
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="confirm_within_um"):
            RefocusOptions(confirm_within_um=bad)


class SplitRefinedModel(FakeModel):
    """Top-k reads the truth; the refiner's weighted mean reads the truth + 0.3 µm while
    its patches read the truth + ``patch_offsets`` (their median: the truth + 0.7 µm by
    default: a few sharp patches near zero carry the mean against most of the content)."""

    def __init__(self, scope, patch_offsets=(-0.2, 0.7, 0.7, 0.8, 0.9)):
        super().__init__(scope, lambda d, n: d)
        self.patch_offsets = np.asarray(patch_offsets, dtype=float)

    def read_near_focus(self, image, *, pixel_size_um=None):
        d = self.scope.true_defocus_um()
        return types.SimpleNamespace(defocus_um=d + 0.3, patch_defocus_um=d + self.patch_offsets)


def test_auto_trusts_a_refined_check_only_when_its_patch_median_agrees(microscope):
    scope = microscope
    # after the move (exactly to focus) the check reads +0.3 µm, inside the bar (0.45 µm);
    # its patches' median, +0.7 µm, lies beyond 0.85 × 0.6 = 0.51 µm: "auto" polishes
    scope.move_to_defocus(6.0)
    disputed = refocus(scope.core, SplitRefinedModel(scope), polish="auto")
    assert disputed.readings[1].refined
    assert disputed.readings[1].defocus_um == pytest.approx(0.3, abs=0.02)
    assert disputed.readings[1].refined_median_um == pytest.approx(0.7, abs=0.02)
    assert disputed.polish is not None and disputed.moves > 1
    assert "patch median +0.7" in disputed.message
    assert disputed.verdict == "in_focus" and abs(scope.true_defocus_um()) <= 0.6
    # patches that agree with the mean: trusted after one move, as before
    scope.move_to_defocus(6.0)
    agreed = refocus(scope.core, SplitRefinedModel(scope, (0.1, 0.3, 0.3, 0.4)), polish="auto")
    assert agreed.polish is None and agreed.moves == 1 and agreed.verdict == "in_focus"
    assert agreed.readings[1].refined_median_um == pytest.approx(0.3, abs=0.02)
    # a looser median bar trusts the split check; polish=False has nothing better either
    for options in ({"polish": "auto", "confirm_median_within_um": 0.8}, {"polish": False}):
        scope.move_to_defocus(6.0)
        trusted = refocus(scope.core, SplitRefinedModel(scope), **options)
        assert trusted.polish is None and trusted.moves == 1, options
        assert trusted.verdict == "in_focus" and "patch median" not in trusted.message
    # the first (unrefined) reading carries no median
    assert disputed.readings[0].refined_median_um is None
    for bad in (0.0, -0.5, float("inf"), "0.5"):
        with pytest.raises(ValueError, match="confirm_median_within_um"):
            RefocusOptions(confirm_median_within_um=bad)


class NearStartModel(FakeModel):
    """Top-k reads the truth + 0.8 µm (a floor near focus); the refiner the truth + `bias`."""

    def __init__(self, scope, bias=0.0, agreement=1.0):
        super().__init__(scope, lambda d, n: d + 0.8)
        self.bias = bias
        self.agreement = agreement
        self.refined_calls = 0

    def predict(self, image, *, pixel_size_um=None):
        pred = super().predict(image, pixel_size_um=pixel_size_um)
        return dataclasses.replace(pred, direction_agreement=self.agreement)

    def read_near_focus(self, image, *, pixel_size_um=None):
        self.refined_calls += 1
        return types.SimpleNamespace(defocus_um=self.scope.true_defocus_um() + self.bias)


def test_a_first_snap_near_focus_is_read_by_the_refiner(microscope):
    scope = microscope
    # 0.1 µm up: the top-k median says 0.9 µm (outside the 0.6 µm tolerance), the refiner 0.1
    scope.move_to_defocus(0.1)
    model = NearStartModel(scope)
    result = refocus(scope.core, model, polish=False)
    assert result.moves == 0 and result.verdict == "in_focus"
    assert "(refined)" in result.message
    assert result.readings[0].refined and result.readings[0].defocus_um == pytest.approx(0.1)
    assert model.refined_calls == 1
    # without it the top-k reading sends the stage 0.9 µm down, to 0.8 µm below focus
    scope.move_to_defocus(0.1)
    model = NearStartModel(scope)
    old = refocus(scope.core, model, polish=False, max_moves=1, refine_first_snap=False)
    assert not old.readings[0].refined and old.readings[0].defocus_um == pytest.approx(0.9)
    assert old.commanded_z_um[0] == pytest.approx(old.start_z_um - 0.9)
    assert old.readings[1].z_um - scope.true_focus_um() == pytest.approx(-0.8)
    # a first snap whose top-k reading lies beyond two DoF is not refined
    scope.move_to_defocus(8.0)
    model = NearStartModel(scope)
    far = refocus(scope.core, model, polish=False)
    assert not far.readings[0].refined
    assert far.readings[0].defocus_um == pytest.approx(8.8)
    with pytest.raises(ValueError, match="refine_first_snap"):
        RefocusOptions(refine_first_snap="yes")


def test_a_refined_first_reading_stays_only_well_inside_the_bar(microscope):
    scope = microscope
    # refined 0.4 µm: inside the bar (0.75 × 0.6 = 0.45 µm) but not within half of it
    # (0.225 µm): one trim move of -0.4 µm, then a check reads 0: in focus after 1 move
    scope.move_to_defocus(0.4)
    result = refocus(scope.core, NearStartModel(scope), polish=False)
    assert result.moves == 1 and result.snaps == 2 and result.verdict == "in_focus"
    assert [r.refined for r in result.readings] == [True, True]
    assert abs(scope.true_defocus_um()) <= 0.02
    # 0.2 µm stays
    scope.move_to_defocus(0.2)
    result = refocus(scope.core, NearStartModel(scope), polish=False)
    assert result.moves == 0 and result.verdict == "in_focus"
    # a reading resting on one patch (a lone speck of debris near focus reads like
    # this) stays within the tolerance: an empty field does not trim
    scope.move_to_defocus(0.4)
    result = refocus(scope.core, LonePatchNearStartModel(scope), polish=False)
    assert result.moves == 0 and result.verdict == "in_focus" and result.readings[0].refined
    assert scope.true_defocus_um() == pytest.approx(0.4)


class LonePatchNearStartModel(NearStartModel):
    """A :class:`NearStartModel` whose prediction rests on one patch (importance 0.95)."""

    def predict(self, image, *, pixel_size_um=None):
        pred = super().predict(image, pixel_size_um=pixel_size_um)
        patch = PatchPrediction(0, 0, 0.95, pred.defocus_um, (0.0, 0.0, 224.0, 224.0))
        return dataclasses.replace(pred, patches=(patch,))


def test_a_refined_first_reading_is_not_gated_on_the_patches_directions(microscope):
    scope = microscope
    # near focus half the top-k patches read either side: the top-k gate abstains,
    # but the refined reading does not rest on their signs
    scope.move_to_defocus(-1.5)
    gated = refocus(
        scope.core, NearStartModel(scope, agreement=0.5), polish=False, refine_first_snap=False
    )
    assert gated.verdict == "abstained" and "agree on the direction" in gated.message
    assert scope.true_defocus_um() == pytest.approx(-1.5)
    result = refocus(scope.core, NearStartModel(scope, agreement=0.5), polish=False)
    assert result.verdict == "in_focus" and result.moves == 1
    assert abs(scope.true_defocus_um()) <= 0.02
