from __future__ import annotations

import dataclasses
import itertools
import math
import types

import numpy as np
import pytest

pytest.importorskip("pymmcore_plus")

from napari_sparsefocus.core.nn import DefocusPrediction, NearFocusCalibration
from napari_sparsefocus.hardware import FocusLock, FocusLockState, load_simulated_microscope
from napari_sparsefocus.hardware._camera import snap_image
from napari_sparsefocus.hardware._focus_lock import FocusLockEvent

BIG = (1120, 1120)


@pytest.fixture(scope="module")
def model():
    import torch

    from napari_sparsefocus import load_model

    torch.set_num_threads(1)
    return load_model()


class FakeClock:
    def __init__(self, step_s: float) -> None:
        self.t = 0.0
        self.step_s = step_s

    def __call__(self) -> float:
        self.t += self.step_s
        return self.t


class FakeModel:
    """Reads the simulated microscope's true defocus through a rule (the microscope is real)."""

    def __init__(self, scope, rule, dof_um=1.2):
        self.scope = scope
        self.rule = rule
        self.optics = type("O", (), {"dof_um": dof_um})()

    def predict(self, image, *, pixel_size_um=None):
        d = self.rule(self.scope.true_defocus_um())
        if isinstance(d, Exception):
            raise d
        return DefocusPrediction(
            defocus_um=d,
            spread_um=0.0,
            direction_agreement=1.0,
            sparsity="dense" if d is not None else "empty",
            verdict="ok" if d is not None else "no usable content",
            reason="fake",
            importance=np.zeros((3, 3), np.float32),
            patches=(),
            dof_um=1.2,
        )


#: what the fake models are fed (they read the microscope's truth, not the image)
DUMMY = np.zeros((8, 8, 3), np.uint8)


def feed(lock, core, n, *, snap=False):
    """Feed ``n`` frames (snapped, or a dummy); return the analysed events and the Z path."""
    events, zs = [], []
    for _ in range(n):
        ev = lock.process_frame(snap_image(core) if snap else DUMMY)
        if ev is not None:
            events.append(ev)
        zs.append(core.getPosition())
    return events, zs


# --------------------------------------------------------------------- real model
def at_empty_site(core, site, defocus_um):
    """Load the seeded slide at 1120 px, go to an empty `site` at `defocus_um`; return Z."""
    scope = load_simulated_microscope(core, seed=0, sensor_shape_px=BIG)
    scope.move_to_site(site)
    assert scope.current_site().sparsity == "empty"
    return scope.move_to_defocus(defocus_um)


def test_no_runaway_on_an_empty_field(sim_core, model):
    z0 = at_empty_site(sim_core, (33, 14), 6.0)
    lock = FocusLock(sim_core, model, every_n_frames=1, min_interval_s=0.0, pause_after_empty=2)
    lock.start()
    events, zs = feed(lock, sim_core, 6, snap=True)
    assert len(events) == 6
    assert all(z == z0 for z in zs)
    assert lock.corrections == ()
    assert [e.state for e in events[:2]] == [
        FocusLockState.HOLDING,
        FocusLockState.PAUSED_NO_CONTENT,
    ]
    assert lock.state is FocusLockState.PAUSED_NO_CONTENT
    assert all(e.defocus_um is None and e.move_um == 0.0 for e in events)


def test_a_lone_speck_of_debris_does_not_steer_the_lock(sim_core, model):
    # the seeded slide's empty site (22, 45) holds a speck of debris that the RIN
    # scores just above its threshold when out of focus (see test_refocus.py)
    z0 = at_empty_site(sim_core, (22, 45), 6.0)
    lock = FocusLock(sim_core, model, every_n_frames=1, min_interval_s=0.0, pause_after_empty=2)
    lock.start()
    events, zs = feed(lock, sim_core, 3, snap=True)
    assert all(z == z0 for z in zs) and lock.corrections == ()
    assert "too weak to move on alone" in events[0].message
    assert lock.state is FocusLockState.PAUSED_NO_CONTENT
    # the same frames steer a lock without the gate
    lock = FocusLock(sim_core, model, every_n_frames=1, min_interval_s=0.0, min_lone_importance=0.0)
    lock.start()
    feed(lock, sim_core, 1, snap=True)
    assert len(lock.corrections) == 1 and sim_core.getPosition() != z0


def test_blank_frames_never_move_the_stage(microscope, model):
    # many frames of a blank, noisy 1120 px field straight into the lock
    core = microscope.core
    z0 = core.getPosition()
    lock = FocusLock(core, model, every_n_frames=1, min_interval_s=0.0)
    lock.start()
    rng = np.random.default_rng(0)
    for _ in range(25):
        frame = np.clip(rng.normal(200, 4, size=(*BIG, 3)), 0, 255).astype(np.uint8)
        lock.process_frame(frame)
    assert core.getPosition() == z0 and lock.corrections == ()
    assert lock.state is FocusLockState.PAUSED_NO_CONTENT
    assert len(lock.history) == 25


@pytest.mark.slow
def test_locks_onto_content_with_bounded_steps(sim_core, model):
    scope = load_simulated_microscope(sim_core, seed=0, sensor_shape_px=BIG)
    scope.move_to_site((40, 42))  # dense cells
    scope.move_to_defocus(3.5)
    lock = FocusLock(
        sim_core, model, every_n_frames=2, max_step_um=1.0, min_interval_s=0.0, max_drift_um=5.0
    )
    lock.start()
    events, zs = feed(lock, sim_core, 14, snap=True)
    assert len(events) == 7
    moves = [e.move_um for e in lock.corrections]
    assert moves and all(abs(m) <= 1.0 + 1e-9 for m in moves)
    assert all(abs(e.defocus_um) > lock.deadband_um for e in lock.corrections)
    assert abs(scope.true_defocus_um()) <= 1.2  # from 3.5 µm, within about one DoF
    assert all(abs(z - lock.reference_z_um) <= 5.0 for z in zs)


# --------------------------------------------------------------------- fake models
def test_deadband_max_step_and_rate_limit(microscope):
    core = microscope.core
    microscope.move_to_defocus(-6.0)
    clock = FakeClock(0.5)  # one frame every 0.5 s
    lock = FocusLock(
        core,
        FakeModel(microscope, lambda d: d),
        every_n_frames=1,
        deadband_um=0.5,
        max_step_um=2.0,
        min_interval_s=1.0,
        clock=clock,
    )
    lock.start()
    events, _ = feed(lock, core, 16)
    corr = lock.corrections
    # 6 µm in steps of at most 2 µm, then locked
    assert [c.move_um for c in corr] == pytest.approx([2.0, 2.0, 2.0])
    assert all(b.time_s - a.time_s >= 1.0 for a, b in itertools.pairwise(corr))
    assert abs(microscope.true_defocus_um()) < 1e-6
    assert lock.state is FocusLockState.LOCKED
    assert events[-1].state is FocusLockState.LOCKED and events[-1].move_um == 0.0
    # frames within min_interval_s of a correction are not analysed
    assert len(events) < 16
    # small defocus inside the dead band: no correction
    microscope.move_to_defocus(0.4)
    n = len(lock.corrections)
    feed(lock, core, 5)
    assert len(lock.corrections) == n and lock.state is FocusLockState.LOCKED


class FlooredModel(FakeModel):
    """Reads -1 µm within 1 µm of focus (the bundled DPN's floor); its near-focus
    calibration sends -1 back to 0.1 µm."""

    near_focus_calibration = NearFocusCalibration((-3.0, -1.0, 1.0, 3.0), (-3.0, 0.1, 1.0, 3.0))


def _floor(d):
    return d if abs(d) >= 1.0 else -1.0


@pytest.mark.parametrize("calibrated", [True, False])
def test_a_reading_floor_at_focus_is_held_by_the_near_focus_calibration(microscope, calibrated):
    core = microscope.core
    microscope.move_to_defocus(0.2)
    lock = FocusLock(
        core,
        FlooredModel(microscope, _floor),
        every_n_frames=1,
        min_interval_s=0.0,
        clock=FakeClock(1.0),
        near_focus_calibration=calibrated,
    )
    lock.start()
    feed(lock, core, 6)
    if calibrated:
        # in focus stays in focus: no correction at all
        assert len(lock.corrections) == 0 and lock.state is FocusLockState.LOCKED
        assert microscope.true_defocus_um() == pytest.approx(0.2)
    else:
        # the raw floor (-1 µm, outside the 0.6 µm dead band) pushes the stage off focus
        assert len(lock.corrections) >= 1
        assert abs(microscope.true_defocus_um()) > 0.6 or len(lock.corrections) >= 2


def test_every_nth_frame(microscope):
    core = microscope.core
    lock = FocusLock(core, FakeModel(microscope, lambda d: d), every_n_frames=3, deadband_um=0.5)
    assert lock.process_frame(np.zeros((8, 8, 3), np.uint8)) is None  # off
    lock.start()
    results = [lock.process_frame(DUMMY) for _ in range(7)]
    assert [r is not None for r in results] == [True, False, False, True, False, False, True]
    assert [r.frame for r in results if r is not None] == [0, 3, 6]
    assert all(isinstance(r, FocusLockEvent) for r in results if r is not None)


def test_pauses_and_resumes_with_content(microscope):
    core = microscope.core
    microscope.move_to_defocus(3.0)
    content = {"on": False}
    lock = FocusLock(
        core,
        FakeModel(microscope, lambda d: d if content["on"] else None),
        every_n_frames=1,
        deadband_um=0.5,
        max_step_um=1.0,
        min_interval_s=0.0,
        pause_after_empty=3,
    )
    lock.start()
    z0 = core.getPosition()
    events, zs = feed(lock, core, 8)
    assert all(z == z0 for z in zs)
    assert [e.state for e in events[:3]] == [FocusLockState.HOLDING] * 2 + [
        FocusLockState.PAUSED_NO_CONTENT
    ]
    content["on"] = True
    events, _ = feed(lock, core, 6)
    assert events[0].state is FocusLockState.CORRECTING and events[0].move_um == -1.0
    assert lock.state is FocusLockState.LOCKED
    assert abs(microscope.true_defocus_um()) < 1e-6


def test_wrong_sign_model_is_caught_and_bounded(microscope):
    core = microscope.core
    microscope.move_to_defocus(3.0)
    lock = FocusLock(
        core,
        FakeModel(microscope, lambda d: -d),  # always the wrong direction
        every_n_frames=1,
        deadband_um=0.5,
        max_step_um=1.0,
        min_interval_s=0.0,
        max_drift_um=4.0,
    )
    lock.start()
    z_ref = lock.reference_z_um
    _, zs = feed(lock, core, 12)
    assert all(abs(z - z_ref) <= 4.0 + 1e-9 for z in zs)
    # after one wrong step the sign is flipped and the lock walks to focus
    assert abs(microscope.true_defocus_um()) <= 0.5
    assert lock.corrections[0].move_um == pytest.approx(1.0)


def test_limits_and_drift_bound_hold(microscope):
    core = microscope.core
    z0 = microscope.move_to_defocus(0.0)
    lock = FocusLock(
        core,
        FakeModel(microscope, lambda d: 50.0),  # always "far above focus"
        every_n_frames=1,
        deadband_um=0.5,
        max_step_um=1.5,
        min_interval_s=0.0,
        z_min_um=z0 - 3.0,
        max_drift_um=10.0,
    )
    lock.start()
    _, zs = feed(lock, core, 6)
    assert min(zs) == pytest.approx(z0 - 3.0) and all(z >= z0 - 3.0 - 1e-9 for z in zs)
    assert all(abs(c.move_um) <= 1.5 + 1e-9 for c in lock.corrections)
    assert lock.state is FocusLockState.AT_LIMIT
    # non-finite predictions never move
    lock2 = FocusLock(core, FakeModel(microscope, lambda d: math.nan), every_n_frames=1)
    lock2.start()
    z = core.getPosition()
    feed(lock2, core, 3)
    assert core.getPosition() == z and lock2.corrections == ()


def test_errors_stop_the_lock(microscope):
    core = microscope.core
    lock = FocusLock(
        core,
        FakeModel(microscope, lambda d: RuntimeError("model broke")),
        every_n_frames=1,
        deadband_um=0.5,
    )
    lock.start()
    ev = lock.process_frame(snap_image(core))
    assert ev.state is FocusLockState.ERROR and "model broke" in ev.message
    assert not lock.running and lock.process_frame(snap_image(core)) is None
    # a stage fault during a correction: error state, stage where it was
    microscope.move_to_defocus(4.0)
    z = core.getPosition()
    lock = FocusLock(core, FakeModel(microscope, lambda d: d), every_n_frames=1, deadband_um=0.5)
    lock.start()
    microscope.inject_fault("z")
    ev = lock.process_frame(snap_image(core))
    assert ev.state is FocusLockState.ERROR and "simulated z fault" in ev.message
    assert core.getPosition() == z
    lock.start()  # re-armed
    assert lock.state is FocusLockState.LOCKED


def test_connect_to_core_events(microscope):
    core = microscope.core
    microscope.move_to_defocus(2.0)
    lock = FocusLock(core, FakeModel(microscope, lambda d: d), every_n_frames=1, deadband_um=0.5)
    lock.connect()
    lock.start()
    core.snapImage()
    assert len(lock.history) == 1 and len(lock.corrections) == 1
    lock.disconnect()
    core.snapImage()
    assert len(lock.history) == 1
    lock.stop()
    assert lock.state is FocusLockState.OFF


def test_bad_arguments(microscope):
    core = microscope.core
    fake = FakeModel(microscope, lambda d: d)
    for bad in (
        {"every_n_frames": 0},
        {"max_step_um": 0},
        {"min_interval_s": -1},
        {"deadband_um": math.nan},
        {"max_drift_um": 0},
        {"z_min_um": 2.0, "z_max_um": 1.0},
        {"pause_after_empty": 0},
        {"min_lone_importance": 1.5},
        {"min_lone_importance": math.nan},
    ):
        with pytest.raises(ValueError):
            FocusLock(core, fake, **bad)
    with pytest.raises(ValueError, match="predict"):
        FocusLock(core, object(), deadband_um=1.0)


class RefinedLockModel(FakeModel):
    """Top-k reads the truth + 0.8 µm with half the patches either side (as near focus),
    calibrated to + 1.0 µm; the near-focus refiner reads the truth + 0.05 µm."""

    near_focus_calibration = NearFocusCalibration((-50.0, 50.0), (-49.8, 50.2))

    def __init__(self, scope):
        super().__init__(scope, lambda d: d + 0.8)
        self.refined_calls = 0

    def predict(self, image, *, pixel_size_um=None):
        pred = super().predict(image, pixel_size_um=pixel_size_um)
        return dataclasses.replace(pred, direction_agreement=0.5)

    def read_near_focus(self, image, *, pixel_size_um=None):
        self.refined_calls += 1
        return types.SimpleNamespace(defocus_um=self.scope.true_defocus_um() + 0.05)


def test_the_lock_reads_frames_near_focus_with_the_refiner(microscope):
    core = microscope.core
    model = RefinedLockModel(microscope)
    lock = FocusLock(core, model, every_n_frames=1, min_interval_s=0.0, clock=FakeClock(1.0))
    # the refined reading is steady enough for a dead band of DoF/4 (DoF/2 without it)
    assert lock.deadband_um == pytest.approx(1.2 / 4)
    microscope.move_to_defocus(0.6)
    lock.start()
    events, _ = feed(lock, core, 3)
    # 0.6 µm up: top-k 1.4 µm (within 2 DoF) → refined 0.65, not calibrated, not gated on
    # the patches' split directions: one correction of -0.65 µm, then locked
    assert events[0].defocus_um == pytest.approx(0.65)
    assert events[0].move_um == pytest.approx(-0.65)
    assert microscope.true_defocus_um() == pytest.approx(-0.05)
    assert lock.state is FocusLockState.LOCKED and model.refined_calls == 3
    # beyond 2 DoF the calibrated top-k reading is used (and gated on the directions)
    microscope.move_to_defocus(5.0)
    events, _ = feed(lock, core, 1)
    assert events[0].defocus_um == pytest.approx(6.0) and events[0].move_um == 0.0
    assert "agree on the direction" in events[0].message and model.refined_calls == 3
    # refined_reading=False: the calibrated top-k reading everywhere, dead band DoF/2
    microscope.move_to_defocus(0.6)
    plain = FocusLock(core, model, every_n_frames=1, min_interval_s=0.0, refined_reading=False)
    assert plain.deadband_um == pytest.approx(0.6)
    plain.start()
    events, _ = feed(plain, core, 1)
    assert events[0].defocus_um == pytest.approx(1.6) and events[0].move_um == 0.0
    assert model.refined_calls == 3
    # a model without a refiner keeps the wider band
    assert FocusLock(core, FakeModel(microscope, lambda d: d)).deadband_um == pytest.approx(0.6)
    with pytest.raises(ValueError, match="refined_reading"):
        FocusLock(core, model, refined_reading="yes")
