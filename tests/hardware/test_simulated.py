from __future__ import annotations

import gc
import time

import numpy as np
import pytest

pytest.importorskip("pymmcore_plus")

from pymmcore_plus import CMMCorePlus
from useq import MDASequence

from napari_sparsefocus.core import Optics, brenner
from napari_sparsefocus.hardware import (
    SIMULATED_CONFIG,
    SimulatedMicroscope,
    load_simulated_config,
    load_simulated_microscope,
)
from napari_sparsefocus.hardware._simulated import StageLimitError

SMALL = (448, 448)


def small_scope(core, **kw):
    return load_simulated_microscope(core, seed=0, sensor_shape_px=SMALL, **kw)


def test_devices_load_and_are_current(microscope):
    core = microscope.core
    assert set(core.getLoadedDevices()) >= {"Camera", "Z", "XY", "Shutter"}
    assert core.getCameraDevice() == "Camera"
    assert core.getFocusDevice() == "Z"
    assert core.getXYStageDevice() == "XY"
    assert core.getShutterDevice() == "Shutter"
    assert core.getPixelSizeUm() == pytest.approx(Optics().pixel_size_um)
    assert core.getPixelSizeUm() == pytest.approx(microscope.pixel_size_um)
    assert core.getExposure() == pytest.approx(10.0)
    assert (core.getImageHeight(), core.getImageWidth()) == (672, 672)
    assert core.getNumberOfComponents() == 3
    assert core.getBytesPerPixel() == 1
    assert core.getXYPosition() == pytest.approx((0.0, 0.0))
    assert core.getPosition() == pytest.approx(microscope.slide.z_nominal_um)
    assert microscope.sim_time_s == 0.0
    assert SimulatedMicroscope.from_core(core).state is microscope.state


def test_refuses_other_cores_and_taken_labels(sim_core):
    plain = CMMCorePlus()
    with pytest.raises(TypeError, match="UniMMCore"):
        load_simulated_microscope(plain)  # type: ignore[arg-type]
    del plain
    with pytest.raises(LookupError, match="no simulated microscope"):
        SimulatedMicroscope.from_core(sim_core)
    small_scope(sim_core)
    with pytest.raises(ValueError, match="already in use"):
        small_scope(sim_core)
    other = load_simulated_microscope(
        sim_core,
        sensor_shape_px=SMALL,
        labels={"camera": "Cam2", "z": "Z2", "xy": "XY2", "shutter": "Sh2"},
    )
    assert sim_core.getCameraDevice() == "Cam2" and other.z_label == "Z2"


def test_snap_is_rgb_uint8_in_rgb_order(sim_core):
    scope = small_scope(sim_core, noise=False)
    site = scope.move_to_site(scope.slide.find_sites("dense", 1, seed=0)[0], z_um=1.0)
    sim_core.snapImage()
    img = sim_core.getImage()
    assert img.shape == (*SMALL, 3) and img.dtype == np.uint8
    # exactly the simulator's rendering: channels in R, G, B order, not packed or reordered
    expected = scope.slide.render(site.x_um, site.y_um, 1.0, noise=False)
    assert np.array_equal(img, expected)
    # stained content absorbs unevenly: the channels really differ
    means = img.reshape(-1, 3).mean(axis=0)
    assert np.ptp(means) > 1.0
    # with noise, consecutive frames differ but stay close
    scope.noise = True
    sim_core.snapImage()
    a = sim_core.getImage().astype(float)
    sim_core.snapImage()
    b = sim_core.getImage().astype(float)
    assert not np.array_equal(a, b)
    assert np.abs(a - expected).mean() < 5


def test_image_changes_with_z_and_xy(sim_core):
    scope = small_scope(sim_core, noise=False)
    dense = scope.slide.find_sites("dense", 2, seed=1)
    scope.move_to_site(dense[0], z_um=0.0)
    sim_core.snapImage()
    a = sim_core.getImage().copy()
    sim_core.setPosition(4.0)
    sim_core.snapImage()
    b = sim_core.getImage().copy()
    scope.move_to_site(dense[1])
    sim_core.snapImage()
    c = sim_core.getImage().copy()
    assert np.abs(a.astype(int) - b).mean() > 1
    assert np.abs(b.astype(int) - c).mean() > 1
    # snap to site: a small XY offset inside the site shows the same field
    fw = scope.slide.field_size_um[1]
    sim_core.setXYPosition(dense[1].x_um + 0.3 * fw, dense[1].y_um)
    assert scope.current_site() == dense[1]


def test_sharpest_at_true_focus(microscope):
    core = microscope.core
    microscope.move_to_site(microscope.slide.find_sites("dense", 1, seed=4, kind="tissue")[0])
    zf = microscope.true_focus_um()
    assert zf == pytest.approx(microscope.slide.z_focus_um(*core.getXYPosition()))
    offsets = (-3.0, -1.5, 0.0, 1.5, 3.0)
    sharp = []
    for d in offsets:
        core.setPosition(zf + d)
        assert microscope.true_defocus_um() == pytest.approx(d)
        core.snapImage()
        sharp.append(brenner(core.getImage(), channel_axis=-1))
    assert int(np.argmax(sharp)) == 2
    assert sharp[0] < sharp[2] > sharp[4]


def test_true_focus_varies_across_slide(sim_core):
    scope = small_scope(sim_core)
    (x0, x1), (y0, y1) = scope.slide.bounds_um
    focus = []
    for x, y in ((x0, y0), (x1, y0), (x0, y1), (x1, y1), (0.0, 0.0)):
        sim_core.setXYPosition(x, y)
        focus.append(scope.true_focus_um())
    assert np.ptp(focus) > 2.0
    assert scope.move_to_defocus(-2.5) == pytest.approx(focus[-1] - 2.5)
    assert scope.true_defocus_um() == pytest.approx(-2.5)


def test_empty_site_has_no_content(sim_core):
    scope = small_scope(sim_core, noise=False)
    imgs = {}
    for level in ("empty", "dense"):
        site = scope.move_to_site(scope.slide.find_sites(level, 1, seed=2)[0])
        scope.move_to_defocus(0.0)
        assert scope.slide.sparsity_at(*sim_core.getXYPosition()) == level
        sim_core.snapImage()
        imgs[level] = sim_core.getImage().astype(float)
        fld = scope.slide.field(site)
        assert (fld.importance.sum() == 0) == (level == "empty")
    # an empty field is nearly flat (illumination, debris); a dense one is not
    assert imgs["empty"].std() * 2 < imgs["dense"].std()


def test_soft_limits_refuse_and_stay(sim_core):
    scope = small_scope(sim_core, z_limits_um=(-50.0, 50.0))
    sim_core.setPosition(10.0)
    t = scope.sim_time_s
    with pytest.raises(StageLimitError, match="soft limits"):
        sim_core.setPosition(50.5)
    with pytest.raises(RuntimeError, match="soft limits"):  # a RuntimeError, like a C++ device
        sim_core.setPosition(-60.0)
    assert sim_core.getPosition() == pytest.approx(10.0)
    assert scope.z_mechanical_um == pytest.approx(10.0)
    (_, x1), _ = scope.slide.bounds_um
    sim_core.setXYPosition(100.0, -200.0)
    t = scope.sim_time_s
    with pytest.raises(StageLimitError, match="outside the slide"):
        sim_core.setXYPosition(x1 + 1.0, 0.0)
    assert sim_core.getXYPosition() == pytest.approx((100.0, -200.0))
    assert scope.sim_time_s == t
    sim_core.setPosition(50.0)  # the limits themselves are allowed
    with pytest.raises(ValueError, match="finite"):
        sim_core.setPosition(float("nan"))


def test_default_z_limits(microscope):
    lo, hi = microscope.z_limits_um
    assert (lo, hi) == pytest.approx((-200.0, 200.0))
    with pytest.raises(StageLimitError):
        microscope.core.setPosition(200.1)


def test_backlash_lags_on_reversal(sim_core):
    scope = small_scope(sim_core, backlash_um=2.0, noise=False)
    core = sim_core
    steps = [  # (commanded, mechanical)
        (5.0, 5.0),  # up: exact
        (4.0, 5.0),  # reversal: play not yet taken up
        (1.0, 3.0),  # down: lags by the backlash
        (2.0, 3.0),  # reversal again: inside the play
        (4.0, 4.0),  # up: exact again
    ]
    for commanded, mechanical in steps:
        core.setPosition(commanded)
        assert core.getPosition() == pytest.approx(commanded)  # reports the commanded value
        assert scope.z_um == pytest.approx(commanded)
        assert scope.z_mechanical_um == pytest.approx(mechanical)
    core.setPosition(1.0)
    assert scope.z_mechanical_um == pytest.approx(3.0)
    assert scope.true_defocus_um() == pytest.approx(3.0 - scope.true_focus_um())
    # the camera sees the mechanical position
    x, y = core.getXYPosition()
    core.snapImage()
    assert np.array_equal(core.getImage(), scope.slide.render(x, y, 3.0, noise=False))


def test_sim_clock_counts_exposure_and_moves(sim_core, monkeypatch):
    scope = small_scope(sim_core, readout_ms=5.0, z_settle_ms=20.0, xy_settle_ms=50.0)
    sim_core.setExposure(40.0)
    assert scope.state.exposure_ms == 40.0
    sim_core.snapImage()
    assert scope.sim_time_s == pytest.approx(0.045)
    sim_core.setPosition(10.0)  # 10 µm at 1000 µm/s + 20 ms
    assert scope.sim_time_s == pytest.approx(0.045 + 0.030)
    sim_core.setPosition(10.0)  # no move, no time
    assert scope.sim_time_s == pytest.approx(0.075)
    sim_core.setXYPosition(300.0, -1000.0)  # axes together: 1000 µm at 10 mm/s + 50 ms
    assert scope.sim_time_s == pytest.approx(0.075 + 0.150)
    assert scope.counts == {"snaps": 1, "z_moves": 2, "xy_moves": 1}
    scope.reset_clock()
    assert scope.sim_time_s == 0.0 and scope.counts["snaps"] == 0
    # realtime: the exposure is also slept (what is left of it after rendering)
    import napari_sparsefocus.hardware._simulated as simulated

    slept = []
    monkeypatch.setattr(simulated.time, "sleep", slept.append)
    scope.realtime = True
    # (an exposure far longer than a render, even on a loaded machine: sleep is patched)
    sim_core.setExposure(5000.0)
    sim_core.snapImage()
    assert len(slept) == 1 and 0.0 < slept[0] <= 5.005
    assert scope.sim_time_s == pytest.approx(5.005)
    scope.realtime = False
    sim_core.snapImage()
    assert len(slept) == 1  # not realtime: counted only


def test_fault_injection_raises_through_core(sim_core):
    scope = small_scope(sim_core)
    scope.inject_fault("camera", after=2)
    sim_core.snapImage()  # the first call still succeeds
    with pytest.raises(RuntimeError, match="simulated camera fault"):
        sim_core.snapImage()
    sim_core.snapImage()  # times=1: working again

    scope.inject_fault("z", exc=TimeoutError("Z drive timeout"))
    with pytest.raises(TimeoutError, match="Z drive timeout"):
        sim_core.setPosition(5.0)
    assert sim_core.getPosition() == pytest.approx(0.0)  # did not move
    sim_core.setPosition(5.0)

    scope.inject_fault("xy", times=None)
    for _ in range(3):
        with pytest.raises(RuntimeError, match="simulated xy fault"):
            sim_core.setXYPosition(10.0, 10.0)
    assert sim_core.getXYPosition() == pytest.approx((0.0, 0.0))
    scope.clear_faults()
    sim_core.setXYPosition(10.0, 10.0)

    scope.inject_fault("shutter", exc=OSError)
    with pytest.raises(OSError, match="simulated shutter fault"):
        sim_core.setShutterOpen(True)
    with pytest.raises(ValueError, match="device must be"):
        scope.inject_fault("laser")
    with pytest.raises(ValueError, match="after"):
        scope.inject_fault("camera", after=0)


def test_stage_events(microscope):
    core = microscope.core
    z_events, xy_events = [], []
    core.events.stagePositionChanged.connect(lambda *a: z_events.append(a))
    core.events.XYStagePositionChanged.connect(lambda *a: xy_events.append(a))
    core.setPosition(2.5)
    core.setXYPosition(120.0, -40.0)
    microscope.move_to_site((10, 11))
    assert z_events == [("Z", 2.5)]
    site = microscope.slide.site(10, 11)
    assert xy_events == [("XY", 120.0, -40.0), ("XY", site.x_um, site.y_um)]


def test_shutter(microscope):
    core = microscope.core
    core.setShutterOpen(True)
    assert core.getShutterOpen()
    core.setShutterOpen(False)
    assert not core.getShutterOpen()


def test_continuous_sequence_and_last_image(sim_core):
    scope = small_scope(sim_core)
    sim_core.startContinuousSequenceAcquisition(0)
    try:
        for _ in range(400):  # up to ~20 s
            if sim_core.getRemainingImageCount():
                break
            time.sleep(0.05)
        img = sim_core.getLastImage()
    finally:
        sim_core.stopSequenceAcquisition()
    assert img.shape == (*SMALL, 3) and img.dtype == np.uint8
    assert scope.counts["snaps"] >= 1
    assert scope.sim_time_s >= 0.02 * scope.counts["snaps"] - 1e-9


def test_small_mda(sim_core):
    scope = small_scope(sim_core)
    p1, p2 = scope.slide.find_sites("dense", 2, seed=5)
    seq = MDASequence(
        z_plan={"range": 2.0, "step": 1.0},
        stage_positions=[(p1.x_um, p1.y_um, 0.0), (p2.x_um, p2.y_um, 1.0)],
    )
    frames, visited = [], []
    sim_core.events.XYStagePositionChanged.connect(lambda label, x, y: visited.append((x, y)))
    sim_core.mda.events.frameReady.connect(
        lambda img, event, meta: frames.append((img.shape, img.dtype, event.x_pos, event.z_pos))
    )
    sim_core.mda.run(seq)
    assert len(frames) == 6
    assert all(shape == (*SMALL, 3) and dtype == np.uint8 for shape, dtype, _, _ in frames)
    assert {x for _, _, x, _ in frames} == {p1.x_um, p2.x_um}
    assert sorted(z for _, _, x, z in frames if x == p2.x_um) == pytest.approx([0.0, 1.0, 2.0])
    assert {(p1.x_um, p1.y_um), (p2.x_um, p2.y_um)} <= set(visited)
    assert scope.counts["snaps"] == 6
    assert sim_core.getPixelSizeUm() == pytest.approx(scope.pixel_size_um)  # autoshutter restored


def test_config_file_loads_same_devices(sim_core):
    assert SIMULATED_CONFIG.is_file()
    assert SIMULATED_CONFIG.parent.name == "hardware"  # shipped inside the package
    sim_core.loadSystemConfiguration(str(SIMULATED_CONFIG))
    assert {"Camera", "Z", "XY", "Shutter"} <= set(sim_core.getLoadedDevices())
    assert sim_core.getCameraDevice() == "Camera" and sim_core.getFocusDevice() == "Z"
    assert sim_core.getXYStageDevice() == "XY" and sim_core.getShutterDevice() == "Shutter"
    assert sim_core.getPixelSizeUm() == pytest.approx(0.1725)
    sim_core.setAutoShutter(False)
    assert sim_core.getPixelSizeUm() == pytest.approx(0.1725)
    sim_core.setAutoShutter(True)
    scope = SimulatedMicroscope.from_core(sim_core)
    assert scope.sensor_shape_px == (1120, 1120) and scope.slide.seed == 0
    assert sim_core.getExposure() == pytest.approx(10.0)
    sim_core.setPosition(3.0)
    assert scope.z_um == 3.0

    # with settings: the handle's slide, the core's pixel size; frames render that slide
    scope = load_simulated_config(sim_core, seed=3, sensor_shape_px=SMALL, noise=False)
    assert scope.slide.seed == 3 and scope.sensor_shape_px == SMALL
    assert sim_core.getPixelSizeUm() == pytest.approx(scope.pixel_size_um)
    assert sim_core.getPosition() == pytest.approx(0.0)  # fresh devices
    site = scope.move_to_site(scope.slide.find_sites("sparse", 1, seed=0)[0], z_um=-1.0)
    sim_core.snapImage()
    assert np.array_equal(
        sim_core.getImage(), scope.slide.render(site.x_um, site.y_um, -1.0, noise=False)
    )
    assert type(sim_core.getImage()) is np.ndarray
    del scope
    gc.collect()


def test_bad_arguments(sim_core):
    with pytest.raises(ValueError, match="224"):
        load_simulated_microscope(sim_core, sensor_shape_px=(100, 100))
    with pytest.raises(ValueError, match="backlash_um"):
        load_simulated_microscope(sim_core, sensor_shape_px=SMALL, backlash_um=-1.0)
    with pytest.raises(ValueError, match="z_limits_um"):
        load_simulated_microscope(sim_core, sensor_shape_px=SMALL, z_limits_um=(10.0, 20.0))
    with pytest.raises(ValueError, match="labels"):
        load_simulated_microscope(sim_core, sensor_shape_px=SMALL, labels={"laser": "L"})
    assert "Camera" not in sim_core.getLoadedDevices()


def test_loads_on_a_core_with_qt_signals(qapp):
    # once a QApplication exists pymmcore-plus gives new cores Qt-backed signals,
    # whose bound signals do not name their owner (napari sessions are like this)
    import gc

    from pymmcore_plus.experimental.unicore import UniMMCore

    from napari_sparsefocus.hardware import SimulatedMicroscope, load_simulated_microscope

    core = UniMMCore()
    try:
        scope = load_simulated_microscope(core, seed=1, sensor_shape_px=(448, 448))
        assert SimulatedMicroscope.from_core(core).slide is scope.slide
        core.snapImage()
        assert core.getImage().shape == (448, 448, 3)
    finally:
        core.unloadAllDevices()
        del core
        gc.collect()
