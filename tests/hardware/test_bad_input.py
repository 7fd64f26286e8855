"""Bad input to the hardware layer: a clear message, and the stage does not move."""

from __future__ import annotations

import dataclasses

import pytest

from napari_sparsefocus import load_model
from napari_sparsefocus.core import Optics
from napari_sparsefocus.hardware import FocusLock, StageLimitError, refocus


@pytest.fixture(scope="module")
def model():
    return load_model()


def test_a_core_without_camera_or_focus_device_is_refused(sim_core, model):
    # nothing loaded: no focus device
    with pytest.raises(ValueError, match="focus device"):
        refocus(sim_core, model)


def test_no_camera_ends_in_an_error_and_the_stage_stays(microscope, model):
    core = microscope.core
    core.setPosition(4.0)
    core.setCameraDevice("")
    result = refocus(core, model)
    assert result.verdict == "error" and result.error
    assert result.moves == 0
    assert core.getPosition() == pytest.approx(4.0)


def test_a_stage_outside_the_soft_limits_is_not_moved(microscope, model):
    core = microscope.core
    core.setPosition(30.0)
    result = refocus(core, model, z_min_um=-20.0, z_max_um=20.0)
    assert result.verdict == "abstained" and result.moves == 0
    assert "outside the soft limits" in result.message
    assert core.getPosition() == pytest.approx(30.0)
    # and the device itself refuses a move past its own limits, staying put
    with pytest.raises(RuntimeError, match="soft limits"):
        core.setPosition(10_000.0)
    assert core.getPosition() == pytest.approx(30.0)
    assert issubclass(StageLimitError, RuntimeError)


def test_a_model_for_other_optics_than_the_camera_is_refused_without_moving(microscope, model):
    core = microscope.core
    core.setPosition(5.0)
    # a model for a 40x objective (pixels half the camera's) would have to up-sample
    other = dataclasses.replace(model.optics, magnification=40.0)
    assert other.pixel_size_um < core.getPixelSizeUm() / 1.5
    coarse = load_model()
    coarse.optics = other
    result = refocus(core, coarse)
    assert result.verdict == "error" and result.moves == 0
    assert "trained for" in (result.error or result.message)
    assert core.getPosition() == pytest.approx(5.0)


def test_focus_lock_rejects_bad_settings_with_clear_messages(microscope, model):
    with pytest.raises(ValueError, match="max_step_um"):
        FocusLock(microscope.core, model, max_step_um=0.0)
    with pytest.raises(ValueError, match="z_min_um"):
        FocusLock(microscope.core, model, z_min_um=5.0, z_max_um=-5.0)
    assert Optics().pixel_size_um == pytest.approx(model.optics.pixel_size_um)
