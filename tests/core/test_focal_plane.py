from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from napari_sparsefocus.core._focal_plane import (
    FocalPlaneResult,
    find_focal_plane,
    focal_plane_from_curve,
)
from napari_sparsefocus.core._focus_measures import brenner

# tests/core/<this file> -> parents[2] is the repository root; shared data
# lives next to it.
BEADS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "beads_confocal_imagej.tif"


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    return np.random.default_rng(2024).uniform(0.0, 200.0, size=(64, 64))


def blurred_stack(texture: np.ndarray, z_um: np.ndarray, z0_um: float) -> np.ndarray:
    return np.stack([gaussian_filter(texture, 0.6 + 0.5 * abs(z - z0_um)) for z in z_um])


@pytest.mark.parametrize("z0", [0.13, 0.31, -1.2, 2.4, 1.0])
@pytest.mark.parametrize("measure", ["brenner", "tenengrad", "vollath_f5"])
def test_synthetic_stack_peak(texture: np.ndarray, z0: float, measure: str) -> None:
    step = 0.5
    z = np.arange(-5.0, 5.0 + 1e-9, step)
    result = find_focal_plane(blurred_stack(texture, z, z0), z_um=z, measure=measure)
    assert result.index == int(np.argmin(np.abs(z - z0)))
    assert abs(result.z_um - z0) < step / 2
    assert result.trustworthy
    assert result.reason == ""
    assert result.measure == measure
    np.testing.assert_array_equal(result.z_values_um, z)
    assert result.curve.shape == z.shape


def test_decreasing_z_and_default_plane_indices(texture: np.ndarray) -> None:
    z = np.arange(-3.0, 3.0 + 1e-9, 0.5)
    z0 = 0.8
    stack = blurred_stack(texture, z, z0)
    up = find_focal_plane(stack, z_um=z)
    down = find_focal_plane(stack[::-1], z_um=z[::-1])
    assert down.index == len(z) - 1 - up.index
    assert down.z_um == pytest.approx(up.z_um, abs=1e-9)
    by_index = find_focal_plane(stack)
    np.testing.assert_array_equal(by_index.z_values_um, np.arange(len(z)))
    # Plane indices are z in units of the step, offset by the first plane.
    assert by_index.z_um == pytest.approx((up.z_um - z[0]) / 0.5, abs=1e-9)


def test_log_parabola_is_exact_for_a_gaussian_curve() -> None:
    z = np.array([0.0, 0.7, 1.5, 2.0, 3.1, 4.0])  # uneven spacing
    z0 = 1.83
    curve = 5.0 * np.exp(-((z - z0) ** 2) / (2 * 0.9**2)) + 0.0
    result = focal_plane_from_curve(curve, z_um=z, min_relative_contrast=0.0)
    assert result.index == 3
    assert result.z_um == pytest.approx(z0, abs=1e-9)


def test_peak_stays_between_neighbours() -> None:
    # A nearly tied neighbour pulls the vertex towards it, but not beyond it;
    # with a tie the vertex is half-way between the tied planes.
    z = np.array([0.0, 1.0, 2.0, 3.0])
    result = focal_plane_from_curve([1.0, 2.0, 10.0, 9.999999], z_um=z)
    assert result.index == 2
    assert 2.0 < result.z_um < 3.0
    assert result.z_um == pytest.approx(2.5, abs=1e-3)
    uneven = focal_plane_from_curve([1.0, 2.0, 1.999], z_um=[0.0, 1.0, 10.0])
    assert 1.0 < uneven.z_um < 10.0


def test_non_positive_curve_uses_plain_parabola() -> None:
    # y = -(z - 1.25)^2 sampled at 0, 1, 2: the raw parabola is exact.
    z = np.array([0.0, 1.0, 2.0])
    curve = -((z - 1.25) ** 2)
    result = focal_plane_from_curve(curve, z_um=z, min_relative_contrast=0.0)
    assert result.z_um == pytest.approx(1.25)


def test_relative_contrast_hand_computed() -> None:
    result = focal_plane_from_curve([1.0, 4.0, 2.0])
    assert result.relative_contrast == pytest.approx(0.75)
    assert result.index == 1
    assert result.trustworthy


def test_flat_curve_is_not_trustworthy() -> None:
    rng = np.random.default_rng(1)
    noise = rng.normal(0.0, 1.0, size=(32, 32))
    # Brenner scales with gain^2: 1 - 0.99^2 ≈ 0.02 relative contrast, peak in the middle.
    gains = 1.0 - 0.01 * np.abs(np.arange(11) - 5) / 5
    stack = np.stack([100.0 + g * noise for g in gains])
    result = find_focal_plane(stack)
    assert result.index == 5
    assert result.relative_contrast < 0.05
    assert not result.trustworthy
    assert "flat" in result.reason
    assert "outside" not in result.reason
    # The threshold is the documented knob.
    assert find_focal_plane(stack, min_relative_contrast=0.01).trustworthy


def test_uniform_planes_are_flat() -> None:
    stack = np.full((7, 16, 16), 120, dtype=np.uint8)
    result = find_focal_plane(stack)
    assert result.relative_contrast == 0.0
    assert not result.trustworthy
    assert "flat" in result.reason


@pytest.mark.parametrize("z0", [-9.0, 9.0])
def test_peak_at_edge_is_not_trustworthy(texture: np.ndarray, z0: float) -> None:
    z = np.arange(-3.0, 3.0 + 1e-9, 1.0)
    result = find_focal_plane(blurred_stack(texture, z, z0), z_um=z)
    expected = 0 if z0 < 0 else len(z) - 1
    assert result.index == expected
    assert result.z_um == z[expected]
    assert not result.trustworthy
    assert "outside the stack" in result.reason


def test_fewer_than_three_planes(texture: np.ndarray) -> None:
    stack = np.stack([texture, gaussian_filter(texture, 2.0)])
    result = find_focal_plane(stack, z_um=[10.0, 11.0])
    assert result.index == 0
    assert result.z_um == 10.0
    assert not result.trustworthy
    assert "3" in result.reason
    single = find_focal_plane(texture[None])
    assert single.index == 0
    assert not single.trustworthy


def test_result_is_frozen_and_read_only(texture: np.ndarray) -> None:
    result = find_focal_plane(blurred_stack(texture, np.arange(5.0), 2.0))
    assert isinstance(result, FocalPlaneResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.index = 3  # type: ignore[misc]
    with pytest.raises(ValueError):
        result.curve[0] = 1.0


def test_callable_measure_name(texture: np.ndarray) -> None:
    result = find_focal_plane(blurred_stack(texture, np.arange(5.0), 2.0), measure=brenner)
    assert result.measure == "brenner"
    assert result.index == 2


def test_bad_arguments(texture: np.ndarray) -> None:
    stack = blurred_stack(texture[:16, :16], np.arange(5.0), 2.0)
    with pytest.raises(ValueError, match="5 planes"):
        find_focal_plane(stack, z_um=np.arange(4.0))
    with pytest.raises(ValueError, match="monotonic"):
        find_focal_plane(stack, z_um=[0.0, 1.0, 1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="monotonic"):
        find_focal_plane(stack, z_um=[0.0, 2.0, 1.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="NaN"):
        find_focal_plane(stack, z_um=[0.0, 1.0, np.nan, 3.0, 4.0])
    with pytest.raises(ValueError, match="1-D"):
        find_focal_plane(stack, z_um=np.zeros((5, 1)))
    with pytest.raises(ValueError, match="min_relative_contrast"):
        find_focal_plane(stack, min_relative_contrast=-0.1)
    with pytest.raises(ValueError, match="empty"):
        find_focal_plane(np.zeros((0, 8, 8)))
    with pytest.raises(ValueError, match="empty"):
        focal_plane_from_curve([])
    with pytest.raises(ValueError, match="NaN"):
        focal_plane_from_curve([1.0, np.nan, 2.0])


def test_real_bead_stack() -> None:
    if not BEADS.exists():
        pytest.skip(f"shared test data not found: {BEADS}")
    tifffile = pytest.importorskip("tifffile")
    stack = tifffile.imread(BEADS)
    assert stack.shape == (41, 150, 150)
    spacing_um = 0.125
    z = np.arange(stack.shape[0]) * spacing_um
    result = find_focal_plane(stack, z_um=z, measure="brenner")
    assert result.index in (23, 24)
    assert result.trustworthy
    assert abs(result.z_um - z[result.index]) <= spacing_um
