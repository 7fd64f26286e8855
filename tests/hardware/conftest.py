"""Shared fixtures of the hardware tests: a fresh ``UniMMCore`` and a simulated microscope.

``sim_core`` is a new ``UniMMCore`` per test; ``microscope`` loads the
simulated microscope on it (seed 0, 672 × 672 RGB sensor, stage at the slide
centre, nominal focus). Teardown stops acquisitions, unloads the Python
devices and drops the core, because a core still holding Python camera/focus
devices at interpreter exit can abort the process.
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

import pytest

try:
    from pymmcore_plus.experimental.unicore import UniMMCore
except ImportError:  # pragma: no cover - pymmcore-plus is a test dependency
    UniMMCore = None
    collect_ignore_glob = ["test_*.py"]

if TYPE_CHECKING:
    from collections.abc import Iterator

    from napari_sparsefocus.hardware import SimulatedMicroscope

#: Sensor of the ``microscope`` fixture: 3 × 3 patches of 224 px (116 µm fields).
SENSOR_SHAPE_PX = (672, 672)


def _shutdown(core: UniMMCore) -> None:
    """Stop whatever runs on ``core`` and unload every device."""
    try:
        if core.mda.is_running():
            core.mda.cancel()
        if core.isSequenceRunning():
            core.stopSequenceAcquisition()
    finally:
        core.unloadAllDevices()


@pytest.fixture
def sim_core() -> Iterator[UniMMCore]:
    """A fresh ``UniMMCore`` per test, emptied and released afterwards."""
    core = UniMMCore()
    try:
        yield core
    finally:
        _shutdown(core)
        del core
        gc.collect()


@pytest.fixture
def microscope(sim_core: UniMMCore) -> Iterator[SimulatedMicroscope]:
    """The simulated microscope (seed 0, 672 × 672 px) loaded on ``sim_core``."""
    from napari_sparsefocus.hardware import load_simulated_microscope

    scope = load_simulated_microscope(sim_core, seed=0, sensor_shape_px=SENSOR_SHAPE_PX)
    try:
        yield scope
    finally:
        scope.clear_faults()
        del scope
        gc.collect()
