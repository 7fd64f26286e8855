from __future__ import annotations

import numpy as np
import pytest

from napari_sparsefocus.core._overlay import (
    Placement,
    RequestTracker,
    heatmap_placement,
    image_pixel_size_um,
    patch_label,
    patch_rectangles,
    plane_index,
    summary_text,
)
from napari_sparsefocus.core.nn import DefocusPrediction, PatchPrediction


def _prediction(defocus=1.234, verdict="ok", patches=2):
    pp = tuple(
        PatchPrediction(row=0, col=i, importance=0.9, defocus_um=1.0 + i, box_px=(0, 0, 1, 1))
        for i in range(patches)
    )
    return DefocusPrediction(
        defocus_um=defocus,
        spread_um=0.456,
        direction_agreement=0.875,
        sparsity="extremely_sparse",
        verdict=verdict,
        reason="because",
        importance=np.zeros((3, 3), np.float32),
        patches=pp,
        crop_box_px=(0, 0, 672, 672),
    )


def test_heatmap_placement_unit_pixels():
    # a 3x3 grid of 224 px patches with its crop at the image's corner:
    # cell (0, 0) spans pixels 0..223, i.e. napari coords -0.5..223.5, centre 111.5
    p = heatmap_placement((0, 0, 672, 672), (3, 3))
    assert p == Placement(scale=(224.0, 224.0), translate=(111.5, 111.5))


def test_heatmap_placement_scale_translate_offset():
    # crop offset (12, 20) px, 0.5 µm pixels, layer translated by (100, -3) µm
    p = heatmap_placement(
        (12, 20, 12 + 448, 20 + 224), (2, 1), pixel_scale=(0.5, 0.5), translate=(100.0, -3.0)
    )
    assert p.scale == (112.0, 112.0)
    # y: 100 + (12 - 0.5 + 112) * 0.5 = 161.75 ; x: -3 + (20 - 0.5 + 112) * 0.5 = 62.75
    assert p.translate == pytest.approx((161.75, 62.75))
    # the heatmap's outer edges coincide with the crop's edges in world units
    top = p.translate[0] - p.scale[0] / 2
    bottom = p.translate[0] + (2 - 0.5) * p.scale[0]
    assert top == pytest.approx(100 + (12 - 0.5) * 0.5)
    assert bottom == pytest.approx(100 + (460 - 0.5) * 0.5)


def test_heatmap_placement_rescaled_patches():
    # an image 2x finer than the model: patches are 448 input pixels
    p = heatmap_placement((16, 16, 16 + 896, 16 + 1344), (2, 3), pixel_scale=(0.25, 0.25))
    assert p.scale == (112.0, 112.0)
    assert p.translate == pytest.approx(((16 - 0.5 + 224) * 0.25,) * 2)


def test_heatmap_placement_rejects_empty():
    with pytest.raises(ValueError):
        heatmap_placement((0, 0, 0, 10), (1, 1))
    with pytest.raises(ValueError):
        heatmap_placement((0, 0, 10, 10), (0, 1))


def test_patch_rectangles():
    r = patch_rectangles([(0, 224, 224, 448), (10.0, 20.0, 30.0, 50.0)])
    assert r.shape == (2, 4, 2)
    np.testing.assert_array_equal(r[1], [[9.5, 19.5], [9.5, 49.5], [29.5, 49.5], [29.5, 19.5]])
    assert patch_rectangles([]).shape == (0, 4, 2)


def test_patch_label():
    assert patch_label(1.234) == "+1.23 µm"
    assert patch_label(-0.5) == "-0.50 µm"
    assert patch_label(-0.001) == "+0.00 µm"


def test_summary_text_ok():
    text = summary_text(_prediction(), plane=(4,))
    assert text.startswith("Plane 4: defocus +1.23 ± 0.46 µm (move focus by -1.23 µm)")
    assert "direction agreement: 88 %" in text
    assert "extremely sparse" in text and "k = 2" in text
    assert "verdict: ok (because)" in text


def test_summary_text_no_content():
    pred = _prediction(defocus=None, verdict="no usable content", patches=0)
    text = summary_text(pred)
    assert text.startswith("no usable content")
    assert "µm (move" not in text and "k = 0" in text


def test_plane_index():
    # layer (z, y, x) with z scale 0.5, translate -1: world z = 2.0 -> index 6
    assert plane_index((2.0, 5.0, 5.0), scale=(0.5,), translate=(-1.0,), shape=(11,)) == (6,)
    # clipped into the layer
    assert plane_index((100.0, 0, 0), scale=(1.0,), translate=(0.0,), shape=(5,)) == (4,)
    assert plane_index((-3.0, 0, 0), scale=(1.0,), translate=(0.0,), shape=(5,)) == (0,)
    # a 4D viewer (t, z, y, x) with a 3D layer: the layer's z is the viewer's second axis
    assert plane_index((7.0, 3.0, 0, 0), scale=(1.0,), translate=(0.0,), shape=(9,)) == (3,)
    # two leading axes
    assert plane_index((2.0, 3.0, 0, 0), scale=(1, 1), translate=(0, 0), shape=(4, 9)) == (2, 3)
    assert plane_index((0.0, 0.0), scale=(), translate=(), shape=()) == ()


def test_image_pixel_size_um():
    assert image_pixel_size_um((1.0, 1.0), ("pixel", "pixel")) is None
    assert image_pixel_size_um((0.5, 0.5), ("pixel", "pixel")) == 0.5
    assert image_pixel_size_um((0.5, 0.5)) == 0.5
    assert image_pixel_size_um((500.0, 500.0), ("nanometer", "nanometer")) == pytest.approx(0.5)
    assert image_pixel_size_um((1.0, 1.0), ("micrometer", "micrometer")) == 1.0
    with pytest.raises(ValueError, match="non-square"):
        image_pixel_size_um((0.5, 0.6))
    with pytest.raises(ValueError, match="unit"):
        image_pixel_size_um((1.0, 1.0), ("parsec", "parsec"))
    with pytest.raises(ValueError):
        image_pixel_size_um((0.0, 0.0))


def test_request_tracker_latest_wins():
    t = RequestTracker()
    a = t.submit("L", (1,), ("m",))
    assert a is not None and t.running == a
    # while a runs, newer requests queue; only the newest is kept
    assert t.submit("L", (2,), ("m",)) is None
    assert t.submit("L", (3,), ("m",)) is None
    assert t.pending is not None and t.pending.plane == (3,)
    nxt = t.finish(a)
    assert nxt is not None and nxt.plane == (3,) and nxt.serial > a.serial
    assert t.running == nxt and t.pending is None
    assert t.finish(nxt) is None and t.running is None


def test_request_tracker_same_as_running_is_not_queued():
    t = RequestTracker()
    a = t.submit("L", (1,), ("m",))
    assert t.submit("L", (2,), ("m",)) is None
    # back to the running plane: the waiting request is dropped
    assert t.submit("L", (1,), ("m",)) is None
    assert t.pending is None
    assert t.finish(a) is None


def test_request_matches():
    t = RequestTracker()
    a = t.submit(("L", 0), (1,), ("m", "auto", None))
    assert a.matches(("L", 0), (1,), ("m", "auto", None))
    assert not a.matches(("L", 0), (2,), ("m", "auto", None))  # another plane
    assert not a.matches(("L", 1), (1,), ("m", "auto", None))  # data changed
    assert not a.matches(("L", 0), (1,), ("m", "fixed", 3))  # settings changed
