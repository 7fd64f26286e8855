"""Classical-measures widget in a real napari viewer (pytest-xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sparsefocus import simulate_stack
from napari_sparsefocus.core import find_focal_plane
from napari_sparsefocus.widgets._measures import FocusMeasuresWidget

TIMEOUT_MS = 60_000
Z = np.arange(-4.0, 4.01, 1.0)


def _stack(kind, sparsity):
    return simulate_stack(kind, sparsity, z_um=Z, shape_px=(448, 448), seed=5)


def _setup(make_napari_viewer, stack, name="stack"):
    viewer = make_napari_viewer(show=True)
    px = stack.pixel_size_um
    viewer.add_image(stack.images, rgb=True, scale=(1.0, px, px), name=name)
    widget = FocusMeasuresWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Focus measures")
    return viewer, widget


def _run(qtbot, widget):
    widget.run()
    qtbot.waitUntil(lambda: widget.run_button.isEnabled(), timeout=TIMEOUT_MS)
    assert widget.result is not None, widget.status.text()


def test_flat_curve_untrusted_on_empty_field(make_napari_viewer, qtbot):
    stack = _stack("cell", "empty")
    _, widget = _setup(make_napari_viewer, stack)
    widget.measure_checks.set_selected(["brenner", "variance_of_laplacian"])
    _run(qtbot, widget)
    assert widget.trusted == {"brenner": False, "variance_of_laplacian": False}
    for name, res in widget.result.curves.results.items():
        ref = find_focal_plane(stack.images, z_um=np.arange(9.0), channel_axis=-1, measure=name)
        np.testing.assert_allclose(res.curve, ref.curve)
        assert res.index == ref.index
        assert "flat" in res.reason
    assert widget.table.text().count("untrusted") == 2
    # the plot marks both peaks with crosses and says so in the legend
    labels = [t.get_text() for t in widget.axes[0].get_legend().get_texts()]
    assert all("untrusted" in t for t in labels)
    assert widget.result.prediction is None


def test_dense_field_trusted_and_model_answer(make_napari_viewer, qtbot, tiny_model):
    stack = _stack("tissue", "dense")
    viewer, widget = _setup(make_napari_viewer, stack)
    widget.measure_checks.set_selected(["brenner", "tenengrad"])
    widget.set_model(tiny_model)
    viewer.dims.set_current_step(0, 2)
    _run(qtbot, widget)
    assert widget.trusted == {"brenner": True, "tenengrad": True}
    res = widget.result
    assert res.plane == 2
    ref = tiny_model.predict(stack.images[2], pixel_size_um=stack.pixel_size_um)
    assert res.prediction.defocus_um == pytest.approx(ref.defocus_um)
    assert res.model_focus_um == pytest.approx(2.0 - ref.defocus_um)
    vlines = [line for line in widget.axes[0].get_lines() if line.get_label() == "model focus"]
    assert len(vlines) == 1
    assert np.asarray(vlines[0].get_xdata(), dtype=float)[0] == pytest.approx(res.model_focus_um)
    assert "model on plane 2" in widget.table.text()


def test_closing_viewer_stops_worker(make_napari_viewer, qtbot):
    stack = simulate_stack("cell", "sparse", z_um=np.arange(-5.0, 5.01, 1.0), shape_px=(448, 448))
    viewer, widget = _setup(make_napari_viewer, stack)
    widget.measure_checks.set_selected(list(widget.measure_checks.boxes))
    widget.run()
    worker = widget.worker
    viewer.close()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=TIMEOUT_MS)
