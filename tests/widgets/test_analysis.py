"""Focus analysis widget in a real napari viewer (pytest-xvfb)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_sparsefocus.core.nn import SparseFocusModel
from napari_sparsefocus.widgets._analysis import (
    HEATMAP_LAYER,
    PATCHES_LAYER,
    FocusAnalysisWidget,
)

TIMEOUT_MS = 60_000
TRANSLATE = (0.0, 10.0, -5.0)  # µm: the overlay must follow the layer's placement


class SlowModel(SparseFocusModel):
    """The same answers, but each plane takes a while (to catch stale work)."""

    delay_s = 0.4

    def predict(self, image, **kwargs):
        time.sleep(self.delay_s)
        return super().predict(image, **kwargs)


def _slow(model: SparseFocusModel) -> SlowModel:
    return SlowModel(model.rin, model.dpn, model.config)


@pytest.fixture
def setup(make_napari_viewer, tiny_model, sparse_stack):
    viewer = make_napari_viewer(show=True)
    px = sparse_stack.optics.pixel_size_um
    layer = viewer.add_image(
        sparse_stack.images, rgb=True, scale=(1.0, px, px), translate=TRANSLATE, name="stack"
    )
    widget = FocusAnalysisWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Focus analysis")
    widget.set_model(tiny_model)
    return viewer, layer, widget


def _wait_idle(qtbot, widget, plane):
    qtbot.waitUntil(
        lambda: widget.shown_plane == plane and not widget.busy,
        timeout=TIMEOUT_MS,
    )


def _assert_overlay_matches(viewer, layer, widget, expected):
    px = float(layer.scale[-1])
    ty, tx = (float(t) for t in layer.translate[-2:])
    y0, x0, y1, x1 = expected.crop_box_px
    gy, gx = expected.importance.shape

    heat = viewer.layers[HEATMAP_LAYER]
    assert heat.data.shape == expected.importance.shape
    np.testing.assert_allclose(heat.data, expected.importance, rtol=1e-6)
    # the heatmap's outer edges are the crop's edges in world units
    # (napari pixel i spans [i - 0.5, i + 0.5] in data coordinates)
    np.testing.assert_allclose(heat.scale, [(y1 - y0) / gy * px, (x1 - x0) / gx * px])
    top = heat.translate[0] - heat.scale[0] / 2
    left = heat.translate[1] - heat.scale[1] / 2
    bottom = top + gy * heat.scale[0]
    right = left + gx * heat.scale[1]
    np.testing.assert_allclose(
        [top, left, bottom, right],
        [ty + (y0 - 0.5) * px, tx + (x0 - 0.5) * px, ty + (y1 - 0.5) * px, tx + (x1 - 0.5) * px],
    )

    shapes = viewer.layers[PATCHES_LAYER]
    assert len(shapes.data) == expected.k
    np.testing.assert_allclose(shapes.scale, [px, px])
    np.testing.assert_allclose(shapes.translate, [ty, tx])
    labels = [f"{p.defocus_um:+.2f} µm" for p in expected.patches]
    assert list(shapes.features["label"]) == labels
    assert list(shapes.text.values) == labels
    np.testing.assert_allclose(
        shapes.features["defocus_um"], [p.defocus_um for p in expected.patches]
    )
    for rect, patch in zip(shapes.data, expected.patches, strict=True):
        by0, bx0, by1, bx1 = patch.box_px
        np.testing.assert_allclose(rect.min(axis=0), [by0 - 0.5, bx0 - 0.5])
        np.testing.assert_allclose(rect.max(axis=0), [by1 - 0.5, bx1 - 0.5])

    text = widget.summary_label.text()
    assert f"defocus {expected.defocus_um:+.2f} ± {expected.spread_um:.2f} µm" in text
    assert expected.sparsity.replace("_", " ") in text
    assert f"verdict: {expected.verdict}" in text


def test_analyse_plane_overlay(setup, qtbot, tiny_model, sparse_stack):
    viewer, layer, widget = setup
    viewer.dims.set_current_step(0, 2)
    widget.analyse_plane()
    _wait_idle(qtbot, widget, (2,))

    px = sparse_stack.optics.pixel_size_um
    expected = tiny_model.predict(sparse_stack.images[2], pixel_size_um=px)
    assert expected.k > 0 and expected.defocus_um is not None
    _assert_overlay_matches(viewer, layer, widget, expected)

    # re-running reuses the same layers (no duplicates) and keeps user styling
    viewer.layers[HEATMAP_LAYER].colormap = "viridis"
    viewer.layers[HEATMAP_LAYER].opacity = 0.8
    widget.set_k_mode("fixed", 2)
    _wait_idle(qtbot, widget, (2,))
    expected = tiny_model.predict(sparse_stack.images[2], pixel_size_um=px, k_mode="fixed", k=2)
    assert expected.k == 2
    _assert_overlay_matches(viewer, layer, widget, expected)
    names = [lay.name for lay in viewer.layers]
    assert names.count(HEATMAP_LAYER) == 1 and names.count(PATCHES_LAYER) == 1
    assert viewer.layers[HEATMAP_LAYER].colormap.name == "viridis"
    assert viewer.layers[HEATMAP_LAYER].opacity == pytest.approx(0.8)
    # the overlay layers are not offered as images to analyse
    items = [widget.layer_combo.itemText(i) for i in range(widget.layer_combo.count())]
    assert items == ["stack"]


def test_follows_dims_slider(setup, qtbot, tiny_model, sparse_stack):
    viewer, layer, widget = setup
    viewer.dims.set_current_step(0, 1)
    widget.analyse_plane()
    _wait_idle(qtbot, widget, (1,))
    # quick moves: only the last plane's answer may end up shown
    for z in (3, 4, 6):
        viewer.dims.set_current_step(0, z)
        qtbot.wait(20)
    _wait_idle(qtbot, widget, (6,))
    px = sparse_stack.optics.pixel_size_um
    expected = tiny_model.predict(sparse_stack.images[6], pixel_size_um=px)
    other = tiny_model.predict(sparse_stack.images[1], pixel_size_um=px)
    assert [p.defocus_um for p in expected.patches] != [p.defocus_um for p in other.patches]
    _assert_overlay_matches(viewer, layer, widget, expected)
    assert widget.summary_label.text().startswith("Plane 6:")


def test_stale_result_never_applied(setup, qtbot, tiny_model, sparse_stack, monkeypatch):
    viewer, layer, widget = setup
    widget.set_model(_slow(tiny_model))
    shown = []
    original = widget._show
    monkeypatch.setattr(
        widget, "_show", lambda lay, plane, pred: (shown.append(plane), original(lay, plane, pred))
    )
    viewer.dims.set_current_step(0, 2)
    widget.analyse_plane()  # plane 2 runs for a while ...
    qtbot.wait(50)
    viewer.dims.set_current_step(0, 5)  # ... while the user moves on
    _wait_idle(qtbot, widget, (5,))
    assert shown == [(5,)]
    px = sparse_stack.optics.pixel_size_um
    expected = tiny_model.predict(sparse_stack.images[5], pixel_size_um=px)
    _assert_overlay_matches(viewer, layer, widget, expected)
    # the dropped plane-2 result was still cached: going back shows it at once
    assert (2,) in widget.predictions()


def test_analyse_stack_streams_and_caches(setup, qtbot, tiny_model, sparse_stack):
    viewer, layer, widget = setup
    viewer.dims.set_current_step(0, 4)
    widget.analyse_stack()
    assert widget.stop_button.isEnabled()
    n = len(sparse_stack.images)
    qtbot.waitUntil(lambda: not widget.workers, timeout=TIMEOUT_MS)
    assert widget.progress.value() == n
    assert sorted(widget.predictions()) == [(i,) for i in range(n)]
    assert widget.shown_plane == (4,)
    px = sparse_stack.optics.pixel_size_um
    expected = tiny_model.predict(sparse_stack.images[4], pixel_size_um=px)
    _assert_overlay_matches(viewer, layer, widget, expected)
    assert "done" in widget.status_label.text()
    # moving the slider now uses the cache (no worker)
    viewer.dims.set_current_step(0, 7)
    qtbot.waitUntil(lambda: widget.shown_plane == (7,), timeout=TIMEOUT_MS)
    expected = tiny_model.predict(sparse_stack.images[7], pixel_size_um=px)
    _assert_overlay_matches(viewer, layer, widget, expected)


def test_stop_stack(setup, qtbot, tiny_model):
    _viewer, layer, widget = setup
    widget.set_model(_slow(tiny_model))
    widget.analyse_stack()
    qtbot.waitUntil(lambda: widget.progress.value() >= 1, timeout=TIMEOUT_MS)
    widget.stop()
    qtbot.waitUntil(lambda: not widget.workers, timeout=TIMEOUT_MS)
    assert widget.progress.value() < len(layer.data)
    assert "stopped" in widget.status_label.text()
    assert not widget.stop_button.isEnabled()


def test_no_usable_content(setup, qtbot, model_factory):
    viewer, _layer, widget = setup
    widget.set_model(model_factory(0, importance_logit=-10.0))
    widget.analyse_plane()
    plane = widget.current_plane()
    _wait_idle(qtbot, widget, plane)
    assert widget.prediction.verdict == "no usable content"
    text = widget.summary_label.text()
    assert "no usable content" in text and "µm (move" not in text
    assert len(viewer.layers[PATCHES_LAYER].data) == 0
    assert viewer.layers[HEATMAP_LAYER].data.max() < 0.01


def test_2d_gray_layer_and_model_file(make_napari_viewer, qtbot, tiny_model, tiny_model_file):
    viewer = make_napari_viewer(show=True)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 65535, size=(500, 700), dtype=np.uint16)
    layer = viewer.add_image(image, name="gray")
    widget = FocusAnalysisWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.set_model_path(tiny_model_file)
    assert not widget.stack_button.isEnabled()
    widget.analyse_plane()
    _wait_idle(qtbot, widget, ())
    # scale 1 in pixel units: unknown pixel size, the model's is assumed
    expected = tiny_model.predict(image)
    assert expected.crop_box_px == (26.0, 14.0, 474.0, 686.0)
    _assert_overlay_matches(viewer, layer, widget, expected)
    assert not widget.summary_label.text().startswith("Plane")


def test_errors_reach_the_label(make_napari_viewer, qtbot, tiny_model):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((100, 100), np.uint8), name="small")
    widget = FocusAnalysisWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.set_model(tiny_model)
    widget.analyse_plane()
    qtbot.waitUntil(lambda: "smaller than one" in widget.status_label.text(), timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: not widget.workers, timeout=TIMEOUT_MS)
    assert HEATMAP_LAYER not in viewer.layers
    # coarser pixels than the model's: refused with a clear message
    viewer.add_image(np.zeros((500, 500), np.uint8), name="coarse", scale=(2.0, 2.0))
    widget.set_layer("coarse")
    widget.analyse_plane()
    qtbot.waitUntil(lambda: "coarser" in widget.status_label.text(), timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: not widget.workers, timeout=TIMEOUT_MS)


def test_screenshot_shows_overlay(setup, qtbot):
    viewer, layer, widget = setup
    widget.analyse_plane()
    _wait_idle(qtbot, widget, widget.current_plane())
    viewer.reset_view()
    heat, shapes = viewer.layers[HEATMAP_LAYER], viewer.layers[PATCHES_LAYER]

    def shot():
        qtbot.wait(50)
        return viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)

    with_overlay = shot()
    heat.visible = shapes.visible = False
    without = shot()
    h, w = with_overlay.shape[:2]
    centre = (slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4))
    assert np.abs(with_overlay[centre] - without[centre]).mean() > 5
    # the overlay alone is drawn (not a blank canvas)
    layer.visible = False
    heat.visible = shapes.visible = True
    alone = shot()[centre]
    assert alone.std() > 1 and alone.mean() > 5


def test_closing_viewer_stops_workers(make_napari_viewer, qtbot, tiny_model, sparse_stack):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(sparse_stack.images, rgb=True, name="stack")
    widget = FocusAnalysisWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.set_model(_slow(tiny_model))
    widget.analyse_stack()
    qtbot.waitUntil(lambda: widget.progress.value() >= 1, timeout=TIMEOUT_MS)
    workers = list(widget.workers)
    assert workers
    viewer.close()
    qtbot.waitUntil(lambda: not any(w.is_running for w in workers), timeout=TIMEOUT_MS)
    assert all(w.abort_requested for w in workers)
    assert widget.closed
