"""The main job: the demo viewer, and a clear failure without a display."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from napari_sparsefocus._demo import (
    DEMO_DEFOCUS_UM,
    DEMO_PLANE,
    build_demo_viewer,
    missing_display,
)


def test_demo_docks_the_widgets_and_analyses_the_shown_plane(make_napari_viewer, qtbot, tiny_model):
    viewer = make_napari_viewer(show=True)
    viewer, widgets = build_demo_viewer(viewer, model=tiny_model)
    assert {"Focus analysis", "Focus curves", "Focus measures", "PSF asymmetry"} <= set(widgets)
    assert viewer.dims.current_step[0] == DEMO_PLANE
    analysis = widgets["Focus analysis"]
    qtbot.waitUntil(lambda: analysis.prediction is not None and not analysis.busy, timeout=60_000)
    image = viewer.layers[0]
    want = tiny_model.predict(np.asarray(image.data[DEMO_PLANE]))
    assert analysis.prediction.defocus_um == want.defocus_um
    assert analysis.shown_plane[-1] == DEMO_PLANE
    assert "importance" in viewer.layers and "top-k patches" in viewer.layers
    assert len(viewer.layers["top-k patches"].data) == want.k

    # the Microscope dock: the simulated microscope, connected and live, beside the stack
    microscope = widgets["Microscope"]
    core = microscope.core
    assert microscope.scope is not None and microscope.is_live and core.isSequenceRunning()
    assert microscope.scope.true_defocus_um() == pytest.approx(DEMO_DEFOCUS_UM)
    assert microscope.scope.current_site().sparsity != "empty"
    qtbot.waitUntil(lambda: "live" in viewer.layers, timeout=60_000)
    assert viewer.layers["live"].extent.world[0][-1] > image.extent.world[1][-1]
    viewer.close()
    qtbot.waitUntil(lambda: microscope.closed and not core.isSequenceRunning(), timeout=60_000)
    assert core.getLoadedDevices() == ("Core",)  # released: no abort at exit


def test_missing_display_is_named():
    assert missing_display({"DISPLAY": ":99"}) is None
    msg = missing_display({})
    if sys.platform.startswith("linux"):
        assert "DISPLAY" in msg and "xvfb-run" in msg
    assert "offscreen" in missing_display({"DISPLAY": ":1", "QT_QPA_PLATFORM": "offscreen"})


def test_demo_command_without_display_fails_clearly():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    r = subprocess.run(
        [sys.executable, "-m", "napari_sparsefocus.cli", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if sys.platform.startswith("linux"):
        assert r.returncode == 2
        assert "no display" in r.stderr and "xvfb-run" in r.stderr
