from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
from qtpy.QtCore import QPoint, Qt

from napari_sparsefocus.io import write_stack
from napari_sparsefocus.io._label_session import LabelSessionError
from napari_sparsefocus.io._labels import read_labels
from napari_sparsefocus.widgets._labels import LabelCorrectionWidget, plot_label_curve

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def stack_file(tmp_path: Path, sparse_stack) -> Path:
    path = tmp_path / "stacks" / "cells.ome.tif"
    path.parent.mkdir()
    write_stack(
        path,
        sparse_stack.images,
        z_step_um=sparse_stack.z_step_um,
        pixel_size_um=sparse_stack.pixel_size_um,
        metadata=sparse_stack.to_metadata(),
    )
    return path


@pytest.fixture
def widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    w = LabelCorrectionWidget(viewer)
    viewer.window.add_dock_widget(w, name="Label correction")
    return w


def _wait(qtbot, widget: LabelCorrectionWidget) -> None:
    qtbot.waitUntil(lambda: not widget.busy, timeout=30_000)


def _canvas_point(viewer, world_yx: np.ndarray) -> QPoint:
    """Canvas pixel of a world (y, x) position in the 2-D view."""
    canvas = viewer.window._qt_viewer.canvas.native
    camera = viewer.scene.camera  # napari >= 0.9
    cy, cx = camera.center[-2:]
    zoom = camera.zoom
    x = (world_yx[1] - cx) * zoom + canvas.width() / 2
    y = (world_yx[0] - cy) * zoom + canvas.height() / 2
    return QPoint(round(x), round(y))


def test_annotate_a_stack(widget: LabelCorrectionWidget, stack_file: Path, qtbot) -> None:
    viewer = widget.viewer
    session = widget.open(stack_file)
    label_file = stack_file.parent / "labels.json"
    assert session.label_file == label_file
    key = "cells.ome.tif"
    assert widget.current_key == key
    _wait(qtbot, widget)
    focus = session.cached_focus(key)
    assert focus is not None
    assert widget.current_plane() == round(focus.z_um)  # the viewer went to the suggestion

    # layers: the stack and its 3 x 3 mask grid, aligned with the image
    image, mask_layer = widget.image_layer, widget.mask_layer
    assert image is not None and mask_layer is not None
    assert image.data.shape[:3] == (9, 672, 672)
    assert image.source.path == str(stack_file)
    assert len(mask_layer.data) == 9
    np.testing.assert_allclose(mask_layer.scale, image.scale[-2:])
    first = mask_layer.data_to_world(mask_layer.data[0].min(axis=0))
    np.testing.assert_allclose(first, image.data_to_world([0, -0.5, -0.5])[-2:])
    assert not label_file.exists()  # nothing saved before an edit

    # keyboard shortcut "F" on the shown plane
    widget.show_plane(3)
    assert widget.current_plane() == 3
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, Qt.Key.Key_F)
    lab = session.label(key)
    assert lab is not None and lab.focal_plane_index == 3.0 and lab.source == "manual"
    # the button on another plane, then fine adjustment
    widget.show_plane(5)
    widget._set_btn.click()
    assert session.label(key).focal_plane_index == 5.0
    widget._plus_btn.click()
    widget._plus_btn.click()
    widget._minus_btn.click()
    assert session.label(key).focal_plane_index == 5.1
    assert read_labels(label_file) == session.labels  # autosaved
    assert "saved 1 label(s) to labels.json" in widget._status.text()

    # click grid cell (row 1, col 2) on the canvas
    viewer.reset_view()
    qtbot.wait(50)
    cell = mask_layer.data_to_world(mask_layer.data[5].mean(axis=0))  # row-major: (1, 2)
    assert widget.cell_at([0.0, *cell]) == (1, 2)
    assert viewer.layers.selection.active is mask_layer
    qtbot.mouseClick(
        viewer.window._qt_viewer.canvas.native,
        Qt.MouseButton.LeftButton,
        pos=_canvas_point(viewer, cell),
    )
    expected = np.zeros((3, 3), np.uint8)
    expected[1, 2] = 1
    np.testing.assert_array_equal(session.label(key).content_mask, expected)
    assert tuple(mask_layer.face_color[5]) == pytest.approx((0.15, 0.9, 0.35, 0.35))
    assert mask_layer.face_color[0][3] == 0
    widget.toggle_cell(0, 0)
    expected[0, 0] = 1
    np.testing.assert_array_equal(read_labels(label_file).stacks[0].content_mask, expected)

    # undo / redo: Ctrl+Z on the canvas, then the buttons
    qtbot.keyClick(
        viewer.window._qt_viewer.canvas.native, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier
    )
    expected[0, 0] = 0
    np.testing.assert_array_equal(session.label(key).content_mask, expected)
    widget._undo_btn.click()
    assert session.label(key).content_mask is None
    assert mask_layer.face_color[5][3] == 0
    widget._redo_btn.click()
    qtbot.keyClick(
        viewer.window._qt_viewer.canvas.native,
        Qt.Key.Key_Z,
        Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier,
    )
    expected[0, 0] = 1
    np.testing.assert_array_equal(session.label(key).content_mask, expected)
    for _ in range(5):  # the two mask edits and the three nudges
        widget._undo_btn.click()
    assert session.label(key).focal_plane_index == 5.0
    assert widget._redo_btn.isEnabled()

    # the file on disk is the state, and reopening restores it
    on_disk = read_labels(label_file)
    assert on_disk == session.labels
    state = session.labels
    again = widget.open(stack_file.parent)
    assert again is widget.session and again.labels == state
    assert widget.current_plane() == 5  # shows the label's plane


def test_unreadable_label_file(widget: LabelCorrectionWidget, stack_file: Path, qtbot) -> None:
    label_file = stack_file.parent / "labels.json"
    label_file.write_text('{"schema": "napari-sparsefocus-labels", "version": 0, "stacks": []}')
    with pytest.raises(LabelSessionError, match="version 0"):
        widget.open(stack_file)
    assert widget.session is None
    session = widget.open(stack_file, recover=True)
    assert session.backup_path is not None
    assert "backed up" in widget._status.text()
    _wait(qtbot, widget)
    widget.accept_suggestion()
    assert read_labels(label_file).stacks[0].source == "finder"
    assert len(list(label_file.parent.glob("labels.json.bak-*"))) == 1


def test_model_disagreement_is_listed_first(
    widget: LabelCorrectionWidget, stack_file: Path, sparse_stack, tiny_model, qtbot
) -> None:
    other = stack_file.parent / "a_first.ome.tif"
    write_stack(other, sparse_stack.images, z_step_um=sparse_stack.z_step_um)
    session = widget.open(stack_file.parent)
    assert session.keys == ["a_first.ome.tif", "cells.ome.tif"]
    _wait(qtbot, widget)
    for key in session.keys:
        widget.select(key)
        _wait(qtbot, widget)
        widget.show_plane(4)
        widget.set_focal_plane_here()
    widget.predict(tiny_model)
    assert widget.busy
    _wait(qtbot, widget)
    assert all(session.model(k) is not None for k in session.keys)
    # a random model: whichever disagrees is listed first, with a warning sign
    order = session.ordered_keys()
    texts = [widget._stack_list.item(i).text() for i in range(widget._stack_list.count())]
    assert [t.split(":")[0].lstrip("⚠ ") for t in texts] == order
    for key, text in zip(order, texts, strict=True):
        assert text.startswith("⚠") == session.is_flagged(key)


def test_plot_label_curve() -> None:
    from matplotlib.figure import Figure

    from napari_sparsefocus.core import focal_plane_from_curve

    ax = Figure().add_subplot()
    focus = focal_plane_from_curve([1.0, 2.0, 5.0, 2.0, 1.0])
    plot_label_curve(ax, focus, label_index=2.3, current_index=1, model_index=3.0)
    assert len(ax.lines) == 5
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.2, 0.4, 1.0, 0.4, 0.2])
    assert ax.lines[2].get_xdata()[0] == 2.3
    labels = ax.get_legend_handles_labels()[1]
    assert labels == [
        "brenner" if False else "custom",
        "suggested 2.00",
        "label 2.30",
        "model 3.00",
        "shown",
    ]


def test_deleting_the_widget_releases_the_viewer(make_napari_viewer, qtbot) -> None:
    viewer = make_napari_viewer(show=True)
    w = LabelCorrectionWidget(viewer)
    assert {str(k) for k in viewer.keymap} >= {"F", "Ctrl+Z", "Ctrl+Shift+Z"}
    n_callbacks = len(viewer.dims.events.current_step.callbacks)
    w.deleteLater()
    qtbot.waitUntil(lambda: not any(str(k) == "F" for k in viewer.keymap), timeout=5000)
    assert not {str(k) for k in viewer.keymap} & {"F", "Ctrl+Z", "Ctrl+Shift+Z"}
    assert len(viewer.dims.events.current_step.callbacks) == n_callbacks - 1


def test_napari_passes_the_viewer() -> None:
    import inspect

    # napari injects the viewer into a dock widget by this exact annotation
    params = inspect.signature(LabelCorrectionWidget.__init__).parameters
    assert params["viewer"].annotation == "napari.viewer.Viewer"
