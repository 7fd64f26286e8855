from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymmcore_plus")

from pymmcore_plus.experimental.unicore import SimpleCameraDevice

from napari_sparsefocus.hardware import snap_image
from napari_sparsefocus.hardware._camera import frame_to_rgb

RNG = np.random.default_rng(0)
#: a hand-made (4, 5) RGB image and the same pixels as Micro-Manager's B, G, R, A bytes
RGB8 = RNG.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
BGRA8 = np.concatenate([RGB8[..., ::-1], np.full((4, 5, 1), 255, np.uint8)], axis=2)


def packed32(bgra: np.ndarray) -> np.ndarray:
    """One little-endian 32-bit word per pixel: B | G << 8 | R << 16 | A << 24."""
    b, g, r, a = (bgra[..., i].astype(np.uint32) for i in range(4))
    return b | (g << 8) | (r << 16) | (a << 24)


def test_packed_bgra32_to_rgb():
    words = packed32(BGRA8)
    assert words.shape == (4, 5) and words.dtype == np.uint32
    for ncomp in (None, 4):
        out = frame_to_rgb(words, ncomponents=ncomp)
        assert out.shape == (4, 5, 3) and out.dtype == np.uint8
        assert np.array_equal(out, RGB8)
        assert out.flags.c_contiguous
    # byte order of the array does not matter, only the values of the words
    assert np.array_equal(frame_to_rgb(words.astype(">u4")), RGB8)
    # pure colours land in the right channel
    red = packed32(np.array([[[0, 0, 200, 255]]], np.uint8))
    assert frame_to_rgb(red).tolist() == [[[200, 0, 0]]]


def test_packed_bgra64_to_rgb16():
    rgb16 = RNG.integers(0, 65536, size=(3, 2, 3), dtype=np.uint16)
    bgra16 = np.concatenate([rgb16[..., ::-1], np.zeros((3, 2, 1), np.uint16)], axis=2)
    words = np.ascontiguousarray(bgra16.astype("<u2")).view("<u8")[..., 0]
    assert words.shape == (3, 2)
    out = frame_to_rgb(words)
    assert out.dtype == np.uint16 and np.array_equal(out, rgb16)


def test_four_channel_bgra_and_other_layouts():
    assert np.array_equal(frame_to_rgb(BGRA8), RGB8)
    assert np.array_equal(frame_to_rgb(BGRA8, ncomponents=4), RGB8)
    # RGB passes through unchanged (a copy only when it is not contiguous)
    assert np.array_equal(frame_to_rgb(RGB8), RGB8)
    strided = np.zeros((4, 10, 3), np.uint8)[:, ::2]
    assert frame_to_rgb(strided).flags.c_contiguous
    # gray: (H, W) and (H, W, 1) keep their dtype
    gray16 = RNG.integers(0, 4096, size=(4, 5), dtype=np.uint16)
    assert np.array_equal(frame_to_rgb(gray16), gray16)
    assert frame_to_rgb(gray16).dtype == np.uint16
    assert np.array_equal(frame_to_rgb(gray16[..., None]), gray16)
    grayf = RNG.random((4, 5)).astype(np.float32)
    assert np.array_equal(frame_to_rgb(grayf), grayf)
    # a 32-bit gray camera says so with ncomponents=1
    gray32 = RNG.integers(0, 2**20, size=(4, 5), dtype=np.uint32)
    assert np.array_equal(frame_to_rgb(gray32, ncomponents=1), gray32)


@pytest.mark.parametrize(
    ("frame", "kw", "exc", "match"),
    [
        (np.zeros((4, 5), bool), {}, TypeError, "integer or float"),
        (np.zeros((4, 5), complex), {}, TypeError, "integer or float"),
        (np.array([["a"]]), {}, TypeError, "integer or float"),
        (np.zeros((0, 5), np.uint8), {}, ValueError, "empty"),
        (np.zeros(5, np.uint8), {}, ValueError, "shape"),
        (np.zeros((2, 4, 5, 3), np.uint8), {}, ValueError, "shape"),
        (np.zeros((4, 5, 2), np.uint8), {}, ValueError, "shape"),
        (np.zeros((4, 5), np.uint16), {"ncomponents": 4}, ValueError, "32-bit"),
        (np.zeros((4, 5), np.float32), {"ncomponents": 4}, ValueError, "32-bit"),
        (np.zeros((4, 5), np.uint8), {"ncomponents": 2}, ValueError, "ncomponents"),
    ],
)
def test_bad_frames(frame, kw, exc, match):
    with pytest.raises(exc, match=match):
        frame_to_rgb(frame, **kw)


class BGRACamera(SimpleCameraDevice):
    """A Python camera delivering (H, W, 4) B, G, R, A frames, as Micro-Manager RGB cameras do."""

    def sensor_shape(self):
        return BGRA8.shape

    def dtype(self):
        return np.uint8

    def get_exposure(self):
        return 10.0

    def set_exposure(self, exposure):
        pass

    def snap(self, buffer):
        buffer[...] = BGRA8
        return {}


def test_snap_image_through_a_core(sim_core):
    sim_core.loadPyDevice("Cam", BGRACamera())
    sim_core.initializeDevice("Cam")
    sim_core.setCameraDevice("Cam")
    assert sim_core.getNumberOfComponents() == 4
    out = snap_image(sim_core)
    assert out.shape == (4, 5, 3) and np.array_equal(out, RGB8)


def test_snap_image_on_the_simulated_microscope(microscope):
    out = snap_image(microscope.core)
    assert out.shape == (*microscope.sensor_shape_px, 3) and out.dtype == np.uint8
    assert np.array_equal(out, microscope.core.getImage())
    assert microscope.counts["snaps"] == 1
