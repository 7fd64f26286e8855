"""Focus-curves widget in a real napari viewer (pytest-xvfb)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from matplotlib.backend_bases import MouseEvent

from napari_sparsefocus.core import find_focal_plane, focus_curve
from napari_sparsefocus.core._stack_analysis import (
    evaluate_predictions,
    ground_truth_from_finder,
    normalise_curve,
)
from napari_sparsefocus.core.nn import SparseFocusModel, iter_predict_stack
from napari_sparsefocus.evaluation import summarize
from napari_sparsefocus.io import LabelFile, StackLabel, write_labels, write_stack
from napari_sparsefocus.widgets._curves import FocusCurvesWidget, find_stack_label

TIMEOUT_MS = 60_000


class SlowModel(SparseFocusModel):
    delay_s = 0.3

    def predict(self, image, **kwargs):
        time.sleep(self.delay_s)
        return super().predict(image, **kwargs)


def _add(viewer, stack, **kw):
    px = stack.optics.pixel_size_um
    return viewer.add_image(
        stack.images, rgb=True, scale=(stack.z_step_um, px, px), name="stack", **kw
    )


def _widget(viewer, model):
    widget = FocusCurvesWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Focus curves")
    widget.set_model(model)
    return widget


def _run(qtbot, widget):
    widget.run()
    assert not widget.run_button.isEnabled()
    qtbot.waitUntil(lambda: widget.run_button.isEnabled(), timeout=TIMEOUT_MS)
    assert widget.evaluation is not None, widget.status.text()


def _click(widget, x, y):
    ax = widget.axes[0]
    px, py = ax.transData.transform((x, y))
    MouseEvent("button_press_event", widget.canvas, px, py, button=1)._process()


def test_plot_data_equal_core_evaluation(make_napari_viewer, qtbot, tiny_model, sparse_stack):
    viewer = make_napari_viewer(show=True)
    _add(viewer, sparse_stack)
    widget = _widget(viewer, tiny_model)
    widget.measure_checks.set_selected(["brenner", "tenengrad"])
    _run(qtbot, widget)

    images, step = sparse_stack.images, sparse_stack.z_step_um
    z = np.arange(images.shape[0]) * step
    finder = find_focal_plane(images, z_um=z, channel_axis=-1)
    truth = ground_truth_from_finder(finder, step)
    pred = np.array(
        [
            np.nan if p.defocus_um is None else p.defocus_um
            for _, p in iter_predict_stack(
                images, tiny_model, pixel_size_um=sparse_stack.pixel_size_um
            )
        ]
    )
    assert widget.truth.source == "finder"
    np.testing.assert_allclose(widget.true_um, truth.defocus_um)
    np.testing.assert_allclose(widget.pred_um, pred)
    x, y = (np.asarray(v, dtype=float) for v in widget.artists.points.get_data())
    np.testing.assert_allclose(x, truth.defocus_um)
    np.testing.assert_allclose(y, pred)
    ok = np.isfinite(pred)
    ref = summarize(pred[ok], truth.defocus_um[ok], tiny_model.optics.dof_um)
    for key, value in ref.items():
        assert widget.metrics[key] == pytest.approx(value)
        assert widget.evaluation.metrics[key] == pytest.approx(value)
    assert "MAE" in widget.metrics_label.text() and "DSS" in widget.metrics_label.text()

    # the twin axis holds the normalised classical curves against the same x
    twin = [a for a in widget.figure.axes if a is not widget.axes[0]]
    assert len(twin) == 1
    lines = {str(line.get_label()): line for line in twin[0].get_lines()}
    for name in ("brenner", "tenengrad"):
        expected = normalise_curve(focus_curve(images, name, channel_axis=-1))
        np.testing.assert_allclose(lines[name].get_ydata(), expected)
        np.testing.assert_allclose(lines[name].get_xdata(), truth.defocus_um)

    # clicking a point moves the viewer to its plane, and the marker follows
    for index in (6, 2):
        _click(widget, truth.defocus_um[index], pred[index])
        assert viewer.dims.current_step[0] == index
        qtbot.waitUntil(
            lambda i=index: (
                np.asarray(widget.artists.current.get_xdata(), dtype=float)[0]
                == pytest.approx(truth.defocus_um[i])
            )
        )


def test_metadata_and_label_file_ground_truth(
    make_napari_viewer, qtbot, tiny_model, sparse_stack, tmp_path
):
    viewer = make_napari_viewer(show=True)
    meta = {"defocus_um": [float(v) for v in sparse_stack.defocus_um]}
    _add(viewer, sparse_stack, metadata=meta)
    widget = _widget(viewer, tiny_model)
    widget.measure_checks.set_selected(["brenner"])
    _run(qtbot, widget)
    assert widget.truth.source == "metadata"
    np.testing.assert_allclose(widget.true_um, sparse_stack.defocus_um)
    m = evaluate_predictions(widget.pred_um, sparse_stack.defocus_um, tiny_model.optics.dof_um)
    assert widget.metrics == pytest.approx(m, nan_ok=True)

    # a stack opened from a file with a label file next to it
    path = write_stack(
        tmp_path / "stack.ome.tif",
        sparse_stack.images,
        z_step_um=sparse_stack.z_step_um,
        pixel_size_um=sparse_stack.pixel_size_um,
        rgb=True,
    )
    write_labels(
        tmp_path / "labels.json",
        LabelFile([StackLabel("stack.ome.tif", focal_plane_index=3.5, z_step_um=1.0)]),
    )
    assert find_stack_label(path).focal_plane_index == 3.5
    (layer,) = viewer.open(path, plugin="napari-sparsefocus")
    widget.set_layer(layer)
    _run(qtbot, widget)
    assert widget.truth.source == "label file"
    np.testing.assert_allclose(widget.true_um, (np.arange(9) - 3.5) * 1.0)

    # an explicit label file without an entry for the stack is an error, not a crash
    write_labels(tmp_path / "other.json", LabelFile([StackLabel("x.tif", 1.0)]))
    widget.label_edit.setText(str(tmp_path / "other.json"))
    widget.run()
    assert "no entry" in widget.status.text()
    assert widget.run_button.isEnabled()


def test_stop_and_close_stop_workers(make_napari_viewer, qtbot, tiny_model, sparse_stack):
    viewer = make_napari_viewer(show=True)
    _add(viewer, sparse_stack)
    widget = _widget(viewer, SlowModel(tiny_model.rin, tiny_model.dpn, tiny_model.config))
    widget.measure_checks.set_selected(["brenner"])

    widget.run()
    qtbot.waitUntil(lambda: len(widget.records) >= 1, timeout=TIMEOUT_MS)
    widget.stop_button.click()
    qtbot.waitUntil(lambda: widget.run_button.isEnabled(), timeout=TIMEOUT_MS)
    assert widget.evaluation is None
    assert 1 <= len(widget.records) < 9
    assert "stopped" in widget.status.text()

    widget.run()
    qtbot.waitUntil(lambda: len(widget.records) >= 1, timeout=TIMEOUT_MS)
    worker = widget.worker
    viewer.close()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=TIMEOUT_MS)
    assert worker.abort_requested


def test_widgets_work_through_napari_viewer_proxy(
    make_napari_viewer, qtbot, tiny_model, sparse_stack
):
    """napari hands plugin widgets a PublicOnlyProxy that warns on private access."""
    from napari.utils._proxies import PublicOnlyProxy

    from napari_sparsefocus.widgets._measures import FocusMeasuresWidget
    from napari_sparsefocus.widgets._psf_asymmetry import PsfAsymmetryWidget

    viewer = make_napari_viewer(show=True)
    _add(viewer, sparse_stack)
    proxy = PublicOnlyProxy(viewer)
    widgets = [cls(proxy) for cls in (FocusCurvesWidget, FocusMeasuresWidget, PsfAsymmetryWidget)]
    for w in widgets:
        viewer.window.add_dock_widget(w)
        assert w.layer_combo.currentText() == "stack"
    curves = widgets[0]
    curves.set_model(tiny_model)
    curves.measure_checks.set_selected(["brenner"])
    _run(qtbot, curves)
    _click(curves, curves.true_um[5], 0.0)
    assert viewer.dims.current_step[0] == 5
    for w in widgets[1:]:
        w.run()
        qtbot.waitUntil(lambda w=w: w.run_button.isEnabled(), timeout=TIMEOUT_MS)
    assert widgets[1].result is not None and widgets[2].asymmetry is not None
    viewer.layers.clear()
    assert all(w.layer_combo.count() == 0 for w in widgets)
