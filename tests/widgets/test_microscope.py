"""Microscope widget in a real napari viewer, driving the simulated microscope (pytest-xvfb)."""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest

pytest.importorskip("pymmcore_plus")

from napari_sparsefocus.core._overlay import heatmap_placement
from napari_sparsefocus.core.nn import SparseFocusModel, load_model
from napari_sparsefocus.hardware._refocus import VERDICTS
from napari_sparsefocus.widgets._microscope import (
    LIVE_HEATMAP_LAYER,
    LIVE_LAYER,
    LIVE_PATCHES_LAYER,
    REFOCUS_LOG_COLUMNS,
    MicroscopeWidget,
)

TIMEOUT_MS = 30_000
SENSOR_PX = (448, 448)


class SlowModel(SparseFocusModel):
    """The bundled model's answers, slowly (so Stop and close land mid-run)."""

    delay_s = 0.3

    def predict(self, image, **kwargs):
        time.sleep(self.delay_s)
        return super().predict(image, **kwargs)


@pytest.fixture(scope="module")
def bundled() -> SparseFocusModel:
    import torch

    torch.set_num_threads(1)
    return load_model()


@pytest.fixture
def setup(make_napari_viewer, bundled):
    """A docked widget connected to a simulated microscope, over dense content 5 µm above focus."""
    viewer = make_napari_viewer(show=True)
    widget = MicroscopeWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Microscope")
    widget.set_model(bundled)
    scope = widget.connect_simulated(3, sensor_shape_px=SENSOR_PX, realtime=False)
    site = scope.slide.find_sites("dense", 1, seed=0)[0]
    scope.move_to_site(site)
    scope.move_to_defocus(5.0)
    core = widget.core
    yield viewer, widget, scope, core
    widget.close_all()
    assert core.getLoadedDevices() == ("Core",)  # the widget unloaded the core it owns
    del scope, core
    gc.collect()


def _z_text(core) -> str:
    return f"Z: {core.getPosition():.3f} µm"


def test_connect_snap_shows_frame_and_overlay(setup, qtbot, bundled):
    viewer, widget, scope, core = setup
    assert widget.scope is scope and "simulated" in widget.connection_label.text()
    qtbot.waitUntil(lambda: widget.z_label.text() == _z_text(core), timeout=TIMEOUT_MS)
    widget.snap_button.click()
    qtbot.waitUntil(lambda: widget.prediction is not None and not widget.busy, timeout=TIMEOUT_MS)
    live = viewer.layers[LIVE_LAYER]
    assert live.data.shape == (*SENSOR_PX, 3) and live.rgb
    px = core.getPixelSizeUm()
    np.testing.assert_allclose(live.scale, [px, px])
    # the frame's centre sits at the stage position (µm)
    x, y = core.getXYPosition()
    centre = np.asarray(live.translate) + (np.asarray(SENSOR_PX) - 1) / 2 * px
    np.testing.assert_allclose(centre, [y, x], atol=1e-6)
    # the overlay is the model's answer for exactly the shown frame
    want = bundled.predict(np.asarray(live.data), pixel_size_um=px)
    pred = widget.prediction
    assert pred.defocus_um == pytest.approx(want.defocus_um)
    assert pred.k == want.k >= 1
    heat, shapes = viewer.layers[LIVE_HEATMAP_LAYER], viewer.layers[LIVE_PATCHES_LAYER]
    assert len(shapes.data) == pred.k
    np.testing.assert_allclose(heat.data, pred.importance, rtol=1e-6)
    place = heatmap_placement(
        pred.crop_box_px, pred.importance.shape, pixel_scale=live.scale, translate=live.translate
    )
    np.testing.assert_allclose(heat.scale, place.scale)
    np.testing.assert_allclose(heat.translate, place.translate)
    np.testing.assert_allclose(shapes.translate, live.translate)
    assert heat.colormap.name == "inferno"
    # the analysis widget's own layer names stay free
    assert "importance" not in viewer.layers and "top-k patches" not in viewer.layers
    assert "defocus" in widget.summary_label.text()


def test_live_mode_streams_frames_and_stops(setup, qtbot):
    viewer, widget, _, core = setup
    widget.overlay_interval.setValue(0.2)
    widget.live_button.click()
    assert widget.is_live and core.isSequenceRunning()
    n0 = widget.frames_shown
    qtbot.waitUntil(lambda: widget.frames_shown >= n0 + 3, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: widget.prediction is not None, timeout=TIMEOUT_MS)
    assert viewer.layers[LIVE_LAYER].data.shape == (*SENSOR_PX, 3)
    widget.live_button.click()
    assert not widget.live_button.isChecked()
    assert not core.isSequenceRunning() and not widget.is_live
    # a live acquisition started by another client of the core is picked up too
    core.startContinuousSequenceAcquisition(0)
    qtbot.waitUntil(lambda: widget.live_button.isChecked(), timeout=TIMEOUT_MS)
    n1 = widget.frames_shown
    qtbot.waitUntil(lambda: widget.frames_shown > n1, timeout=TIMEOUT_MS)
    core.stopSequenceAcquisition()
    qtbot.waitUntil(lambda: not widget.live_button.isChecked(), timeout=TIMEOUT_MS)


def test_refocus_button_logs_and_moves(setup, qtbot):
    _, widget, scope, core = setup
    z0 = core.getPosition()
    widget.live_button.click()  # the refocus pauses live mode and resumes it afterwards
    widget.refocus_button.click()
    assert widget.busy and not widget.refocus_button.isEnabled()
    assert not core.isSequenceRunning()
    qtbot.waitUntil(
        lambda: widget.log_table.rowCount() == 1 and not widget.busy, timeout=TIMEOUT_MS
    )
    [result] = widget.refocus_results
    cells = [widget.log_table.item(0, c).text() for c in range(len(REFOCUS_LOG_COLUMNS))]
    assert cells[1] == f"{z0:.3f}"
    assert cells[2] == f"{core.getPosition():.3f}" == f"{result.final_z_um:.3f}"
    assert cells[3:6] == [str(result.moves), str(result.snaps), result.verdict]
    assert cells[6] == result.message
    assert result.verdict in VERDICTS and result.snaps >= 1
    if result.verdict == "abstained":
        assert core.getPosition() == pytest.approx(z0)
    else:
        assert result.moved and abs(scope.true_defocus_um()) < 5.0 - 1.0
    qtbot.waitUntil(lambda: widget.z_label.text() == _z_text(core), timeout=TIMEOUT_MS)
    assert widget.is_live  # resumed
    widget.set_live(False)


def test_polish_choice_reaches_the_controller(setup, qtbot):
    _, widget, _, _ = setup
    assert widget.refocus_options().polish is True  # the controller's default
    widget.set_polish("auto")
    assert widget.polish_combo.currentText() == "when unconfirmed"
    assert widget.refocus_options().polish == "auto"
    with pytest.raises(ValueError):
        widget.set_polish("sometimes")
    widget.polish_combo.setCurrentText("never")
    assert widget.refocus_options().polish is False
    widget.refocus_button.click()
    qtbot.waitUntil(
        lambda: widget.log_table.rowCount() == 1 and not widget.busy, timeout=TIMEOUT_MS
    )
    [result] = widget.refocus_results
    assert result.polish is None and "polished" not in result.message


def test_confirm_bar_reaches_the_controller(setup, qtbot):
    _, widget, _, _ = setup
    assert widget.confirm_within_um is None  # the controller's default
    assert widget.refocus_options().confirm_within_um is None
    assert widget.confirm_spin.text() == "default (0.75 × DoF/2)"
    for bad in (0.0, -0.2, 0.004, float("nan"), 11.0):
        with pytest.raises(ValueError, match="confirm_within_um"):
            widget.set_confirm_within_um(bad)
    assert widget.confirm_within_um is None
    widget.set_confirm_within_um(0.3)
    assert widget.refocus_options().confirm_within_um == pytest.approx(0.3)
    widget.set_polish(False)
    widget.refocus_button.click()
    qtbot.waitUntil(
        lambda: widget.log_table.rowCount() == 1 and not widget.busy, timeout=TIMEOUT_MS
    )
    [result] = widget.refocus_results
    # every check before the last read more than the bar; a verified focus, at most it
    checks = [r.defocus_um for r in result.readings[1:] if r.defocus_um is not None]
    assert all(abs(d) > 0.3 for d in checks[:-1])
    if result.verdict == "in_focus" and result.moves:
        assert abs(checks[-1]) <= 0.3 and "≤ 0.3 µm" in result.message
    widget.set_confirm_within_um(None)
    assert widget.refocus_options().confirm_within_um is None


def test_refocus_stop_cancels(setup, qtbot, bundled):
    widget = setup[1]
    widget.set_model(SlowModel(bundled.rin, bundled.dpn, bundled.config))
    widget.set_fallback("hill_climb")
    widget.refocus_button.click()
    qtbot.wait(100)
    widget.stop_button.click()
    qtbot.waitUntil(
        lambda: widget.log_table.rowCount() == 1 and not widget.busy, timeout=TIMEOUT_MS
    )
    assert widget.refocus_results[-1].verdict == "cancelled"
    assert widget.log_table.item(0, 5).text() == "cancelled"
    assert widget.refocus_button.isEnabled() and not widget.stop_button.isEnabled()


def test_focus_lock_toggle_shows_state(setup, qtbot):
    widget = setup[1]
    assert widget.lock_label.text() == "focus lock: off"
    widget.lock_button.click()
    assert widget.lock_button.isChecked()
    qtbot.waitUntil(lambda: widget.focus_lock_event is not None, timeout=TIMEOUT_MS)
    assert widget.is_live  # the lock feeds on live frames
    state = widget.focus_lock_state
    assert state in ("locked", "correcting", "holding", "at_limit", "paused_no_content")
    assert widget.lock_label.text().startswith(f"focus lock: {state.replace('_', ' ')}")
    widget.lock_button.click()
    assert widget.lock_label.text() == "focus lock: off" and widget.focus_lock_state == "off"
    assert not widget.focus_lock.running
    widget.set_live(False)


def test_focus_map_tab_adds_layers_and_cost(setup, qtbot):
    viewer, widget, scope, core = setup
    xy0, z0 = core.getXYPosition(), core.getPosition()
    widget.rows_spin.setValue(1)
    widget.cols_spin.setValue(3)
    widget.spacing_spin.setValue(600.0)
    widget.set_focus_map_method("one-shot")
    widget.map_button.click()
    qtbot.waitUntil(
        lambda: "one_shot" in widget.focus_map_results and not widget.busy, timeout=TIMEOUT_MS
    )
    outcome = widget.focus_map_results["one_shot"]
    surface = viewer.layers["focus surface (one-shot)"]
    error = viewer.layers["focus error (one-shot)"]
    tiles = viewer.layers["focus-map tiles (one-shot)"]
    gx, gy = np.meshgrid(outcome.xs_um, outcome.ys_um)
    np.testing.assert_allclose(error.data, surface.data - scope.slide.z_focus_um(gx, gy), atol=1e-3)
    np.testing.assert_allclose(surface.translate, [outcome.ys_um[0], outcome.xs_um[0]])
    assert len(tiles.data) >= 1
    r = outcome.result
    assert r.snaps == 3 and r.xy_moves >= 2
    text = widget.cost_label.text()
    assert "3 snaps" in text and "s simulated" in text and "RMS error" in text
    # the stage is back where the scan started
    np.testing.assert_allclose(core.getXYPosition(), xy0)
    assert core.getPosition() == pytest.approx(z0)


def test_closing_viewer_stops_live_and_workers(make_napari_viewer, qtbot, bundled):
    viewer = make_napari_viewer(show=True)
    widget = MicroscopeWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Microscope")
    widget.set_model(SlowModel(bundled.rin, bundled.dpn, bundled.config))
    widget.connect_simulated(0, sensor_shape_px=SENSOR_PX, realtime=False)
    core = widget.core
    widget.set_live(True)
    qtbot.waitUntil(lambda: widget._predict_worker is not None, timeout=TIMEOUT_MS)
    workers = list(widget.workers)
    assert core.isSequenceRunning() and workers
    viewer.close()
    qtbot.waitUntil(lambda: not any(w.is_running for w in workers), timeout=TIMEOUT_MS)
    assert widget.closed
    assert not core.isSequenceRunning()
    assert core.getLoadedDevices() == ("Core",)
    del core
    gc.collect()


def test_existing_core_is_used_and_left_loaded(make_napari_viewer, qtbot):
    from napari_sparsefocus.hardware import load_simulated_microscope
    from napari_sparsefocus.widgets._microscope import _new_unicore

    core = _new_unicore()
    try:
        load_simulated_microscope(core, 1, sensor_shape_px=SENSOR_PX)
        viewer = make_napari_viewer(show=True)
        widget = MicroscopeWidget(viewer, mmcore=core)
        viewer.window.add_dock_widget(widget, name="Microscope")
        assert widget.core is core and widget.scope is not None
        assert widget.source_combo.currentText() == "existing core"
        core.setPosition(2.5)
        qtbot.waitUntil(lambda: widget.z_label.text() == "Z: 2.500 µm", timeout=TIMEOUT_MS)
        widget.close_all()
        assert "Camera" in core.getLoadedDevices()  # not the widget's to unload
    finally:
        core.unloadAllDevices()
        del core
        gc.collect()


def test_connect_button_loads_a_configuration_file(make_napari_viewer, qtbot):
    from napari_sparsefocus.hardware import SIMULATED_CONFIG

    viewer = make_napari_viewer(show=True)
    widget = MicroscopeWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Microscope")
    assert widget.core is None and not widget.snap_button.isEnabled()
    widget.source_combo.setCurrentText("configuration file")
    widget.config_path.setText(str(SIMULATED_CONFIG))
    widget.connect_button.click()
    core = widget.core
    assert core is not None and {"Camera", "Z", "XY"} <= set(core.getLoadedDevices())
    assert widget.scope is not None  # the shipped config's simulated devices give ground truth
    assert widget.snap_button.isEnabled() and widget.z_label.text() == _z_text(core)
    widget.disconnect_microscope()
    assert widget.core is None and core.getLoadedDevices() == ("Core",)
    assert widget.connection_label.text() == "not connected"
    # a missing file is reported, not raised
    widget.config_path.setText(str(SIMULATED_CONFIG) + ".missing")
    widget.connect_button.click()
    assert widget.core is None and "no configuration file" in widget.status_label.text()
    del core
    gc.collect()
