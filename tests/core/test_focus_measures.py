from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from napari_sparsefocus.core._focus_measures import (
    FOCUS_MEASURES,
    brenner,
    focus_curve,
    get_focus_measure,
    normalized_variance,
    spectral_energy,
    tenengrad,
    variance_of_laplacian,
    vollath_f4,
    vollath_f5,
)

if TYPE_CHECKING:
    from pathlib import Path

    from numpy.typing import ArrayLike

NAMES = [
    "brenner",
    "tenengrad",
    "variance_of_laplacian",
    "normalized_variance",
    "vollath_f4",
    "vollath_f5",
    "spectral_energy",
]


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    rng = np.random.default_rng(12345)
    return rng.uniform(0.0, 255.0, size=(96, 96))


def test_registry_has_exactly_the_documented_names() -> None:
    assert sorted(FOCUS_MEASURES) == sorted(NAMES)
    for name in NAMES:
        assert get_focus_measure(name) is FOCUS_MEASURES[name]


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="brenner") as info:
        get_focus_measure("sharpness")
    assert "sharpness" in str(info.value)
    assert "vollath_f5" in str(info.value)
    with pytest.raises(TypeError):
        get_focus_measure(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", NAMES)
def test_more_blur_gives_strictly_lower_value(name: str, texture: np.ndarray) -> None:
    f = FOCUS_MEASURES[name]
    # sigma >= 1: for white noise the autocorrelation measures (Vollath) only
    # become monotonic once the blur exceeds about half a pixel.
    values = [f(gaussian_filter(texture, s)) for s in (1.0, 1.5, 2.0, 3.0, 4.0)]
    assert all(np.isfinite(values))
    assert np.all(np.diff(values) < 0), values


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("level", [0.0, 37.5, 1e6])
def test_uniform_image_scores_zero(name: str, level: float) -> None:
    image = np.full((16, 20), level)
    assert FOCUS_MEASURES[name](image) == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_rgb_with_equal_channels_equals_gray(name: str, texture: np.ndarray) -> None:
    f = FOCUS_MEASURES[name]
    gray = gaussian_filter(texture, 1.0)
    expected = f(gray)
    rgb_last = np.stack([gray, gray, gray], axis=-1)
    rgb_first = np.stack([gray, gray, gray], axis=0)
    rgba = np.concatenate([rgb_last, np.full((*gray.shape, 1), 255.0)], axis=-1)
    one = gray[..., None]
    assert f(rgb_last, channel_axis=-1) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert f(rgb_first, channel_axis=0) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert f(rgba, channel_axis=2) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert f(one, channel_axis=-1) == expected


def test_rgb_uses_bt601_luma() -> None:
    rng = np.random.default_rng(3)
    rgb = rng.uniform(0, 1, size=(12, 13, 3))
    luma = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    assert brenner(rgb, channel_axis=-1) == pytest.approx(brenner(luma), rel=1e-12)
    # A change in the blue channel only matters with weight 0.114.
    only_blue = np.zeros_like(rgb)
    only_blue[..., 2] = rgb[..., 0]
    assert brenner(only_blue, channel_axis=-1) == pytest.approx(
        0.114**2 * brenner(rgb[..., 0]), rel=1e-12
    )


@pytest.mark.parametrize("name", NAMES)
def test_integer_and_float_dtypes_give_the_same_value(name: str) -> None:
    rng = np.random.default_rng(7)
    u8 = rng.integers(0, 256, size=(24, 31), dtype=np.uint8)
    f = FOCUS_MEASURES[name]
    ref = f(u8.astype(np.float64))
    assert f(u8) == ref
    assert f(u8.astype(np.uint16)) == ref
    assert f(u8.astype(np.int32)) == ref
    assert f(u8.astype(np.float32)) == ref
    if name != "spectral_energy":  # a power ratio: invariant to intensity scale
        # No rescaling of integer images to [0, 1].
        assert f(u8) != pytest.approx(f(u8 / 255.0))


def test_bool_image_is_accepted_as_zero_one() -> None:
    checker = (np.add.outer(np.arange(6), np.arange(6)) % 2).astype(bool)
    assert brenner(checker) == brenner(checker.astype(np.uint8)) == 0.0
    stripes = np.zeros((6, 6), dtype=bool)
    stripes[:, ::4] = True
    assert brenner(stripes) == brenner(stripes.astype(float)) > 0


def test_brenner_hand_computed() -> None:
    image = np.array([[0, 1, 2, 3], [4, 5, 6, 8], [1, 0, 0, 0]], dtype=np.uint8)
    # x: pairs two apart per row: (2-0, 3-1), (6-4, 8-5), (0-1, 0-0)
    mean_dx2 = (4 + 4 + 4 + 9 + 1 + 0) / 6
    # y: row 2 minus row 0: (1, -1, -2, -3)
    mean_dy2 = (1 + 1 + 4 + 9) / 4
    assert brenner(image) == pytest.approx(mean_dx2 + mean_dy2, rel=1e-15)


def test_tenengrad_of_a_ramp() -> None:
    # Slope 1 along x: the Sobel x kernel gives (1+2+1) * (x+1 - (x-1)) = 8.
    ramp = np.tile(np.arange(7.0), (5, 1))
    assert tenengrad(ramp) == pytest.approx(64.0)
    assert tenengrad(ramp.T) == pytest.approx(64.0)


def test_variance_of_laplacian_hand_computed() -> None:
    # A quadratic has a constant Laplacian, hence zero variance.
    x = np.arange(8.0)
    assert variance_of_laplacian(np.add.outer(x**2, x)) == pytest.approx(0.0, abs=1e-12)
    # A single bright pixel in a 3x3 image: only the centre is interior.
    spot = np.zeros((3, 3))
    spot[1, 1] = 1.0
    assert variance_of_laplacian(spot) == 0.0
    spot5 = np.zeros((5, 5))
    spot5[2, 2] = 1.0
    # Interior 3x3 Laplacian: centre -4, 4 edge-neighbours +1, 4 corners 0.
    lap = np.array([-4, 1, 1, 1, 1, 0, 0, 0, 0], dtype=float)
    assert variance_of_laplacian(spot5) == pytest.approx(np.var(lap))


def test_normalized_variance_hand_computed() -> None:
    image = np.zeros((3, 3))
    image[1, 1] = 9.0
    # mean 1, variance 81/9 - 1 = 8
    assert normalized_variance(image) == pytest.approx(8.0)
    # Invariant to a brightness gain in the numerator/denominator ratio sense:
    assert normalized_variance(2 * image) == pytest.approx(16.0)


def test_vollath_hand_computed() -> None:
    checker = (np.add.outer(np.arange(4), np.arange(4)) % 2).astype(float)
    # F4: I(x) (I(x+1) - I(x+2)) is -1 on ones and 0 on zeros; half the base
    # pixels are ones, per axis -> -0.5 - 0.5.
    assert vollath_f4(checker) == pytest.approx(-1.0)
    # F5: neighbours always differ so mean(I I1) = 0; mean(I)^2 = 0.25 per axis.
    assert vollath_f5(checker) == pytest.approx(-0.5)


def test_spectral_energy_separates_low_and_high_frequencies() -> None:
    x = np.arange(128)
    low = np.tile(100 + 50 * np.cos(2 * np.pi * 0.03 * x), (128, 1))
    high = np.tile(100 + 50 * np.cos(2 * np.pi * 0.3 * x), (128, 1))
    assert 0.0 <= spectral_energy(low) < 0.01
    assert 0.99 < spectral_energy(high) <= 1.0


def test_measures_are_roughly_size_independent(texture: np.ndarray) -> None:
    big = gaussian_filter(np.random.default_rng(5).uniform(0, 255, size=(192, 192)), 1.5)
    small = big[:96, :96]
    for name in ["brenner", "tenengrad", "variance_of_laplacian", "vollath_f5"]:
        f = FOCUS_MEASURES[name]
        assert f(small) == pytest.approx(f(big), rel=0.2), name


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise(name: str) -> None:
    f = FOCUS_MEASURES[name]
    good = np.ones((8, 8))
    with pytest.raises(TypeError, match="dtype"):
        f(np.array([["a"] * 4] * 4))
    with pytest.raises(TypeError, match="dtype"):
        f(good.astype(complex))
    with pytest.raises(ValueError, match=r"\(8,\)"):
        f(np.ones(8))
    with pytest.raises(ValueError, match=r"\(8, 8, 3\)"):
        f(np.ones((8, 8, 3)))
    with pytest.raises(ValueError, match="3-D"):
        f(good, channel_axis=-1)
    with pytest.raises(ValueError, match="channels"):
        f(np.ones((8, 8, 2)), channel_axis=-1)
    with pytest.raises(ValueError, match="out of range"):
        f(np.ones((8, 8, 3)), channel_axis=3)
    with pytest.raises(TypeError, match="channel_axis"):
        f(np.ones((8, 8, 3)), channel_axis=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="3x3"):
        f(np.ones((2, 8)))
    bad = good.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        f(bad)
    bad[3, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        f(bad)


def test_focus_curve_matches_per_plane_values(texture: np.ndarray) -> None:
    stack = np.stack([gaussian_filter(texture, s) for s in (3.0, 1.0, 2.0)])
    for name in NAMES:
        curve = focus_curve(stack, name)
        assert curve.shape == (3,)
        assert curve.dtype == np.float64
        expected = [FOCUS_MEASURES[name](p) for p in stack]
        np.testing.assert_array_equal(curve, expected)
        assert int(np.argmax(curve)) == 1
    np.testing.assert_array_equal(focus_curve(stack), focus_curve(stack, brenner))


def test_focus_curve_rgb_stack_uses_plane_channel_axis(texture: np.ndarray) -> None:
    gray = np.stack([gaussian_filter(texture, s) for s in (1.0, 2.0)])
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    np.testing.assert_allclose(
        focus_curve(rgb, "tenengrad", channel_axis=-1), focus_curve(gray, "tenengrad"), rtol=1e-9
    )


def test_focus_curve_passes_raw_planes_one_at_a_time(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, size=(5, 16, 16), dtype=np.uint8)
    mm = np.memmap(tmp_path / "stack.raw", dtype=np.uint8, mode="w+", shape=data.shape)
    mm[:] = data
    mm.flush()
    seen: list[tuple[np.dtype, tuple[int, ...]]] = []

    def spy(image: ArrayLike, *, channel_axis: int | None = None) -> float:
        assert isinstance(image, np.ndarray)
        seen.append((image.dtype, image.shape))
        return brenner(image, channel_axis=channel_axis)

    curve = focus_curve(mm, spy)
    # Each call gets one plane in its original dtype: the stack is never cast.
    assert seen == [(np.dtype(np.uint8), (16, 16))] * 5
    np.testing.assert_array_equal(curve, [brenner(p) for p in data])
    del mm


def test_focus_curve_bad_inputs() -> None:
    with pytest.raises(ValueError, match="empty"):
        focus_curve(np.zeros((0, 8, 8)))
    with pytest.raises(ValueError, match="empty"):
        focus_curve([])
    with pytest.raises(ValueError, match="shape"):
        focus_curve(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="unknown focus measure"):
        focus_curve(np.zeros((2, 8, 8)), "nope")
    with pytest.raises(TypeError, match="measure"):
        focus_curve(np.zeros((2, 8, 8)), 3)  # type: ignore[arg-type]
