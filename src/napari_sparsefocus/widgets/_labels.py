"""Label correction for annotators: set the focal plane and content mask of z-stacks.

A thin view over :class:`~napari_sparsefocus.io._label_session.LabelSession`,
which holds every rule (undo/redo, autosave, backups, flags). The widget
shows the stacks (flagged ones first), the focus curve of the selected stack
with the finder's suggestion and the current label, and a clickable grid
layer over the image for the content mask.

Shortcuts while the widget is open: ``F`` sets the focal plane to the shown
plane, ``Control-Z`` / ``Control-Shift-Z`` undo and redo.
"""

from __future__ import annotations

import math
import os
import warnings
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from superqt.utils import signals_blocked

from ..io._label_session import GRID_PATCH_PX, LabelSession, LabelSessionError
from ..io._tiff import MissingZStepWarning
from ._mpl import MplCanvasWidget

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterable

    import napari.viewer
    from matplotlib.axes import Axes
    from napari.layers import Image, Shapes

    from ..core import FocalPlaneResult

__all__ = ["LabelCorrectionWidget", "plot_label_curve"]

#: Fraction of a z-step moved by the fine-adjust buttons.
NUDGE_STEPS = 0.1
_CONTENT_RGBA = (0.15, 0.9, 0.35, 0.35)
_EMPTY_RGBA = (0.0, 0.0, 0.0, 0.0)
_EDGE_RGBA = (1.0, 1.0, 1.0, 0.7)
_KEY_SET = "F"
_KEY_UNDO = "Control-Z"
_KEY_REDO = "Control-Shift-Z"

#: What the model worker yields: session, planes done, stack (None: progress only),
#: its per-plane defocus and the model's depth of field.
_PredictionRecord = tuple["LabelSession", int, "str | None", "list[float | None]", float]


def plot_label_curve(
    ax: Axes,
    focus: FocalPlaneResult | None,
    *,
    label_index: float | None = None,
    current_index: int | None = None,
    model_index: float | None = None,
) -> None:
    """Draw a stack's focus curve with the suggested plane, the label and the shown plane.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Target axes (not cleared).
    focus : FocalPlaneResult or None
        The focus curve and the finder's suggestion (``z_um`` in plane
        indices); None while it is being computed.
    label_index : float, optional
        The label's focal plane (fractional index).
    current_index : int, optional
        The plane shown in the viewer.
    model_index : float, optional
        The focal plane the model's predictions imply.
    """
    ax.set_xlabel("plane")
    if focus is not None:
        curve = np.asarray(focus.curve, dtype=np.float64)
        top = float(np.max(np.abs(curve))) or 1.0
        ax.plot(
            np.arange(curve.size), curve / top, "o-", color="#9ecae1", ms=3, label=focus.measure
        )
        style = "--" if focus.trustworthy else ":"
        ax.axvline(focus.z_um, color="#fdae6b", ls=style, label=f"suggested {focus.z_um:.2f}")
        ax.set_ylabel("focus measure (norm.)")
    if label_index is not None:
        ax.axvline(label_index, color="#e6550d", lw=2, label=f"label {label_index:.2f}")
    if model_index is not None:
        ax.axvline(model_index, color="#a1d99b", ls="-.", label=f"model {model_index:.2f}")
    if current_index is not None:
        ax.axvline(current_index, color="#f0f1f2", lw=0.8, alpha=0.6, label="shown")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="lower right")


def _grid_rectangles(
    grid: tuple[int, int], origin: tuple[int, int]
) -> list[np.ndarray[Any, np.dtype[np.float64]]]:
    """Rectangle corners of every grid cell in pixel coordinates (row-major order)."""
    y0, x0 = origin
    p = GRID_PATCH_PX
    rects = []
    for i in range(grid[0]):
        for j in range(grid[1]):
            top, left = y0 + i * p - 0.5, x0 + j * p - 0.5  # pixel edges, not centres
            rects.append(np.array([[top, left], [top + p, left + p]], dtype=np.float64))
    return rects


def _release_viewer(
    viewer: napari.viewer.Viewer,
    bindings: dict[str, Any],
    callbacks: Iterable[tuple[Any, Callable[..., Any]]],
    workers: list[Any],
) -> None:
    """Undo what the widget attached to the viewer (runs when the widget is destroyed)."""
    for worker in workers:
        worker.quit()
    for key, previous in bindings.items():
        viewer.bind_key(key, previous, overwrite=True)
    for emitter, cb in callbacks:
        emitter.disconnect(cb)


class LabelCorrectionWidget(QWidget):
    """Correct the focal-plane labels and content masks of z-stacks.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer the stacks are shown in.
    parent : QWidget, optional
        Parent widget.

    Notes
    -----
    Open a stack, a folder of stacks or the current image layer's file; the
    label file defaults to ``labels.json`` next to the stacks. Every edit is
    saved at once (see :class:`~napari_sparsefocus.io._label_session.LabelSession`).
    """

    def __init__(self, viewer: napari.viewer.Viewer, *, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._session: LabelSession | None = None
        self._key: str | None = None
        self._image: Image | None = None
        self._mask_layer: Shapes | None = None
        self._message = ""
        self._workers: list[Any] = []
        self._focus_workers: dict[str, Any] = {}

        # ---- widgets
        self._open_stack_btn = QPushButton("Open stack…")
        self._open_folder_btn = QPushButton("Open folder…")
        self._use_layer_btn = QPushButton("Use image layer")
        self._stack_list = QListWidget()
        self._plot = MplCanvasWidget(1, parent=self)
        self._set_btn = QPushButton(f"Set focal plane here ({_KEY_SET})")
        self._minus_btn = QPushButton(f"−{NUDGE_STEPS:g} step")
        self._plus_btn = QPushButton(f"+{NUDGE_STEPS:g} step")
        self._suggest_btn = QPushButton("Use suggestion")
        self._clear_mask_btn = QPushButton("Clear mask")
        self._undo_btn = QPushButton("Undo")
        self._redo_btn = QPushButton("Redo")
        self._model_btn = QPushButton("Model opinion…")
        self._stop_btn = QPushButton("Stop")
        self._progress = QProgressBar()
        self._label_line = QLabel()
        self._status = QLabel()
        self._status.setWordWrap(True)
        self._label_line.setWordWrap(True)

        top = QHBoxLayout()
        for b in (self._open_stack_btn, self._open_folder_btn, self._use_layer_btn):
            top.addWidget(b)
        edit = QGridLayout()
        edit.addWidget(self._set_btn, 0, 0, 1, 2)
        edit.addWidget(self._minus_btn, 1, 0)
        edit.addWidget(self._plus_btn, 1, 1)
        edit.addWidget(self._suggest_btn, 2, 0)
        edit.addWidget(self._clear_mask_btn, 2, 1)
        edit.addWidget(self._undo_btn, 3, 0)
        edit.addWidget(self._redo_btn, 3, 1)
        model_row = QHBoxLayout()
        model_row.addWidget(self._model_btn)
        model_row.addWidget(self._progress)
        model_row.addWidget(self._stop_btn)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(QLabel("Stacks (model/label disagreement first):"))
        layout.addWidget(self._stack_list)
        layout.addWidget(self._plot)
        layout.addWidget(self._label_line)
        layout.addLayout(edit)
        layout.addLayout(model_row)
        layout.addWidget(self._status)
        self._progress.setVisible(False)
        self._stop_btn.setVisible(False)

        # ---- connections
        self._open_stack_btn.clicked.connect(self._on_open_stack)
        self._open_folder_btn.clicked.connect(self._on_open_folder)
        self._use_layer_btn.clicked.connect(self._on_use_layer)
        self._stack_list.currentItemChanged.connect(self._on_item_changed)
        self._set_btn.clicked.connect(self.set_focal_plane_here)
        self._minus_btn.clicked.connect(partial(self.nudge, -NUDGE_STEPS))
        self._plus_btn.clicked.connect(partial(self.nudge, NUDGE_STEPS))
        self._suggest_btn.clicked.connect(self.accept_suggestion)
        self._clear_mask_btn.clicked.connect(self.clear_mask)
        self._undo_btn.clicked.connect(self.undo)
        self._redo_btn.clicked.connect(self.redo)
        self._model_btn.clicked.connect(self._on_model)
        self._stop_btn.clicked.connect(self._on_stop)

        # ---- viewer hooks, released when the widget goes away
        bindings: dict[str, Any] = {}
        for key, func in (
            (_KEY_SET, self._key_set),
            (_KEY_UNDO, self._key_undo),
            (_KEY_REDO, self._key_redo),
        ):
            bindings[key] = viewer.bind_key(key, func, overwrite=True)
        step_events = viewer.dims.events.current_step
        step_events.connect(self._on_step)
        self.destroyed.connect(
            partial(
                _release_viewer, viewer, bindings, [(step_events, self._on_step)], self._workers
            )
        )
        self._refresh()

    # ------------------------------------------------------------------ state
    @property
    def session(self) -> LabelSession | None:
        """The open annotation session (None before a stack is opened)."""
        return self._session

    @property
    def current_key(self) -> str | None:
        """Key of the stack being annotated."""
        return self._key

    @property
    def image_layer(self) -> Image | None:
        """The image layer of the current stack."""
        return self._image

    @property
    def mask_layer(self) -> Shapes | None:
        """The clickable content-mask grid of the current stack."""
        return self._mask_layer

    # ------------------------------------------------------------------ opening
    def open(
        self,
        stacks: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        label_file: str | os.PathLike[str] | None = None,
        *,
        recover: bool = False,
    ) -> LabelSession:
        """Start a session on stacks (files or folders) and show the first one.

        Parameters
        ----------
        stacks : str, os.PathLike or iterable of them
            Stack files and folders of stacks.
        label_file : str or os.PathLike, optional
            Default ``labels.json`` in the (first) folder or the first stack's folder.
        recover : bool
            Back up an unreadable label file and start afresh (see
            :class:`~napari_sparsefocus.io._label_session.LabelSession`).

        Returns
        -------
        LabelSession
            The new session.

        Raises
        ------
        LabelSessionError
            If the label file cannot be read and ``recover`` is False.
        """
        items = [stacks] if isinstance(stacks, (str, os.PathLike)) else list(stacks)
        if label_file is None:
            first = Path(items[0]) if items else Path.cwd()
            label_file = (first if first.is_dir() else first.parent) / "labels.json"
        session = LabelSession(label_file, items, annotator=_annotator(), recover=recover)
        self._set_session(session)
        if session.backup_path is not None:
            self._show_message(f"unreadable label file backed up to {session.backup_path}")
        return session

    def _open_recovering(self, stacks: list[str]) -> None:
        """Open from a button: ask before backing up an unreadable label file."""
        try:
            self.open(stacks)
        except LabelSessionError as exc:
            answer = QMessageBox.question(
                self,
                "Label file cannot be read",
                f"{exc}\n\nBack it up and start with no labels?",
            )
            if answer != QMessageBox.StandardButton.Yes:
                self._show_message(f"not opened: {exc}")
                return
            try:
                self.open(stacks, recover=True)
            except (OSError, ValueError) as exc2:
                self._show_message(f"cannot open: {exc2}")
        except (OSError, ValueError) as exc:
            self._show_message(f"cannot open: {exc}")

    def _set_session(self, session: LabelSession) -> None:
        self._session = session
        self._key = None
        msgs = [f"skipped {p.name}: {why}" for p, why in session.skipped]
        self._message = "; ".join(msgs)
        self._rebuild_list()
        order = session.ordered_keys()
        if order:
            self.select(order[0])
        else:
            self._refresh()

    def _on_open_stack(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(
            self, "Open z-stacks", "", "TIFF stacks (*.tif *.tiff *.ome.tif *.ome.tiff)"
        )
        if files:
            self._open_recovering(list(files))

    def _on_open_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a folder of z-stacks")
        if folder:
            self._open_recovering([folder])

    def _on_use_layer(self) -> None:
        from napari.layers import Image

        layer = self.viewer.layers.selection.active
        path = getattr(getattr(layer, "source", None), "path", None)
        if not isinstance(layer, Image) or not path:
            self._show_message("select an image layer opened from a TIFF file first")
            return
        if self._session is not None:
            try:
                keys = self._session.add_stacks(path)
            except (OSError, ValueError) as exc:
                self._show_message(f"cannot open: {exc}")
                return
            self._rebuild_list()
            key = keys[0] if keys else self._session.key_for(path)
            if key in self._session.keys:
                self.select(key)
            return
        self._open_recovering([path])

    # ------------------------------------------------------------------ showing
    def select(self, key: str) -> None:
        """Show a stack: its image, its mask grid and its focus curve.

        Parameters
        ----------
        key : str
            The stack's key in the session.
        """
        session = self._require_session()
        info = session.info(key)
        self._key = key
        self._image = self._image_layer_for(info.path)
        self._make_mask_layer()
        with signals_blocked(self._stack_list):
            for row in range(self._stack_list.count()):
                item = self._stack_list.item(row)
                if item is not None and item.data(Qt.ItemDataRole.UserRole) == key:
                    self._stack_list.setCurrentRow(row)
        lab = session.label(key)
        target = lab.focal_plane_index if lab is not None else None
        cached = session.cached_focus(key)
        if target is None and cached is not None:
            target = cached.z_um
        if target is not None:
            self.show_plane(round(target))
        if cached is None:
            self._compute_focus(key)
        self._refresh()

    def show_plane(self, index: int) -> None:
        """Move the viewer to a plane of the current stack."""
        if self._image is None:
            return
        world = self._image.data_to_world([float(index), 0.0, 0.0])
        self.viewer.dims.set_point(0, float(world[0]))

    def current_plane(self) -> int | None:
        """Return the plane of the current stack shown in the viewer (None without one)."""
        if self._image is None or self._session is None or self._key is None:
            return None
        n = self._session.info(self._key).n_planes
        z = float(self._image.world_to_data(self.viewer.dims.point)[0])
        return int(min(max(round(z), 0), n - 1))

    def _image_layer_for(self, path: Path) -> Image:
        from napari.layers import Image

        for layer in self.viewer.layers:
            src = layer.source.path
            if isinstance(layer, Image) and src and Path(src).resolve() == path.resolve():
                return layer
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MissingZStepWarning)
            layers = self.viewer.open(os.fspath(path), plugin="napari-sparsefocus")
        image = layers[0]
        if not isinstance(image, Image):  # pragma: no cover - our reader returns images
            raise TypeError(f"{path}: expected an image layer, got {type(image).__name__}")
        return image

    def _make_mask_layer(self) -> None:
        session, key, image = self._require_session(), self._key, self._image
        if self._mask_layer is not None and self._mask_layer in self.viewer.layers:
            self.viewer.layers.remove(self._mask_layer)
        self._mask_layer = None
        if key is None or image is None:
            return
        info = session.info(key)
        if info.grid_shape is None:
            return
        layer = self.viewer.add_shapes(
            _grid_rectangles(info.grid_shape, info.grid_origin_px),
            shape_type="rectangle",
            edge_width=max(2.0, info.shape_yx[1] / 300),
            edge_color=[_EDGE_RGBA],
            face_color=[_EMPTY_RGBA],
            scale=tuple(image.scale[-2:]),
            translate=tuple(image.translate[-2:]),
            units=tuple(image.units[-2:]),
            name=f"{image.name} content mask",
        )
        layer.mouse_drag_callbacks.append(self._on_mask_drag)
        layer.bind_key(_KEY_SET, self._key_set, overwrite=True)  # before Shapes' own "F"
        self._mask_layer = layer
        self.viewer.layers.selection.active = layer
        self._update_mask_colours()

    def _update_mask_colours(self) -> None:
        if self._mask_layer is None or self._session is None or self._key is None:
            return
        mask = self._session.mask(self._key).ravel()
        colours = np.where(mask[:, None] > 0, _CONTENT_RGBA, _EMPTY_RGBA)
        self._mask_layer.face_color = colours

    def _rebuild_list(self) -> None:
        session = self._session
        with signals_blocked(self._stack_list):
            self._stack_list.clear()
            if session is None:
                return
            for key in session.ordered_keys():
                lab = session.label(key)
                if session.is_flagged(key):
                    text = f"⚠ {key}: model {session.disagreement_um(key):.2f} µm off"
                elif lab is None:
                    text = f"{key}: unlabelled"
                else:
                    text = f"{key}: plane {lab.focal_plane_index:.2f} ({lab.source})"
                item = QListWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, key)
                self._stack_list.addItem(item)
                if key == self._key:
                    self._stack_list.setCurrentItem(item)

    def _refresh(self) -> None:
        """Update everything shown from the session (after any change)."""
        session, key = self._session, self._key
        has = session is not None and key is not None
        for b in (
            self._set_btn,
            self._minus_btn,
            self._plus_btn,
            self._suggest_btn,
            self._clear_mask_btn,
            self._model_btn,
        ):
            b.setEnabled(has)
        self._undo_btn.setEnabled(session is not None and session.can_undo)
        self._redo_btn.setEnabled(session is not None and session.can_redo)
        self._update_mask_colours()
        self._redraw()
        if session is None or key is None:
            self._label_line.setText("Open a stack, a folder of stacks or an image layer.")
        else:
            lab = session.label(key)
            step = session.z_step_um(key)
            unit = f" × {step:g} µm" if step is not None else " (z-step unknown)"
            if lab is None:
                text = f"{key}: unlabelled"
            else:
                mask = "none" if lab.content_mask is None else f"{int(lab.content_mask.sum())}"
                text = (
                    f"{key}: focal plane {lab.focal_plane_index:.2f}{unit}, "
                    f"source {lab.source}, mask cells {mask}"
                )
            self._label_line.setText(text)
        status = session.status() if session is not None else ""
        self._status.setText(" — ".join(s for s in (status, self._message) if s))

    def _redraw(self) -> None:
        self._plot.clear()
        session, key = self._session, self._key
        if session is not None and key is not None:
            lab = session.label(key)
            plot_label_curve(
                self._plot.axes[0],
                session.cached_focus(key),
                label_index=None if lab is None else lab.focal_plane_index,
                current_index=self.current_plane(),
                model_index=session.model_focal_plane(key),
            )
            self._plot.axes[0].set_title(key, fontsize="small")
        self._plot.draw()

    def _show_message(self, text: str) -> None:
        self._message = text
        self._refresh()

    def _require_session(self) -> LabelSession:
        if self._session is None:
            raise ValueError("no stack is open: open a stack or a folder first")
        return self._session

    # ------------------------------------------------------------------ edits
    def _edit(self, func: Callable[[LabelSession, str], object]) -> None:
        session = self._require_session()
        if self._key is None:
            return
        try:
            func(session, self._key)
        except ValueError as exc:
            self._show_message(str(exc))
            return
        self._message = ""
        self._after_change()

    def _after_change(self) -> None:
        self._rebuild_list()
        self._refresh()

    def set_focal_plane_here(self) -> None:
        """Set the current stack's focal plane to the plane shown in the viewer."""
        plane = self.current_plane()
        if plane is not None:
            self._edit(lambda s, k: s.set_focal_plane(k, plane))

    def nudge(self, steps: float) -> None:
        """Move the current stack's focal plane by ``steps`` planes (e.g. ±0.1)."""
        self._edit(lambda s, k: s.nudge(k, steps))

    def accept_suggestion(self) -> None:
        """Set the focal plane to the finder's suggestion."""
        self._edit(lambda s, k: s.accept_suggestion(k))

    def clear_mask(self) -> None:
        """Remove the current stack's content mask."""
        self._edit(lambda s, k: s.set_mask(k, None))

    def toggle_cell(self, row: int, col: int) -> None:
        """Flip a cell of the current stack's content mask."""
        self._edit(lambda s, k: s.toggle_mask_cell(k, row, col))

    def undo(self) -> None:
        """Undo the last edit (and show its stack)."""
        self._history(self._require_session().undo)

    def redo(self) -> None:
        """Redo the last undone edit (and show its stack)."""
        self._history(self._require_session().redo)

    def _history(self, step: Callable[[], str | None]) -> None:
        key = step()
        if key is not None and key != self._key and key in self._require_session().keys:
            self._rebuild_list()
            self.select(key)
        else:
            self._after_change()

    # ------------------------------------------------------------------ events
    def _key_set(self, _: object) -> None:
        if self._session is not None:
            self.set_focal_plane_here()

    def _key_undo(self, _: object) -> None:
        if self._session is not None:
            self.undo()

    def _key_redo(self, _: object) -> None:
        if self._session is not None:
            self.redo()

    def _on_step(self, _: object = None) -> None:
        if self._session is not None and self._key is not None:
            self._redraw()

    def _on_item_changed(self, item: QListWidgetItem | None, _: object = None) -> None:
        if item is not None:
            key = item.data(Qt.ItemDataRole.UserRole)
            if isinstance(key, str) and key != self._key:
                self.select(key)

    def cell_at(self, world_position: Iterable[float]) -> tuple[int, int] | None:
        """Return the grid cell ``(row, col)`` under a world position, or None outside the grid.

        Parameters
        ----------
        world_position : iterable of float
            Viewer (world) coordinates, e.g. a mouse event's ``position``.

        Returns
        -------
        tuple of int or None
            The cell of the current stack's content-mask grid.
        """
        if self._mask_layer is None or self._session is None or self._key is None:
            return None
        info = self._session.info(self._key)
        if info.grid_shape is None:
            return None
        y, x = self._mask_layer.world_to_data(np.asarray(list(world_position)))[-2:]
        y0, x0 = info.grid_origin_px
        row = math.floor((float(y) + 0.5 - y0) / GRID_PATCH_PX)
        col = math.floor((float(x) + 0.5 - x0) / GRID_PATCH_PX)
        if 0 <= row < info.grid_shape[0] and 0 <= col < info.grid_shape[1]:
            return row, col
        return None

    def _on_mask_drag(self, layer: Shapes, event: Any) -> Generator[None, None, None]:
        """Toggle the clicked cell on release; a drag (pan) toggles nothing."""
        cell = self.cell_at(event.position)
        moved = False
        yield
        while event.type == "mouse_move":
            moved = True
            yield
        if cell is not None and not moved:
            self.toggle_cell(*cell)

    # ------------------------------------------------------------------ workers
    # Worker signals connect to bound methods only (Qt drops them with the widget);
    # results carry their session and stack, so late results are never misapplied.
    def _compute_focus(self, key: str) -> None:
        from napari.qt.threading import create_worker

        session = self._require_session()
        if key in self._focus_workers:
            return
        worker = create_worker(_focus_job, session, key)
        worker.returned.connect(self._on_focus_done)
        worker.errored.connect(self._on_worker_error)
        worker.finished.connect(self._prune_workers)
        self._focus_workers[key] = worker
        self._workers.append(worker)
        worker.start()

    def _prune_workers(self) -> None:
        self._workers[:] = [w for w in self._workers if w.is_running]
        for key, w in list(self._focus_workers.items()):
            if not w.is_running:
                del self._focus_workers[key]
        if not any(w not in self._focus_workers.values() for w in self._workers):
            self._progress.setVisible(False)
            self._stop_btn.setVisible(False)
            self._model_btn.setEnabled(self._key is not None)

    def _on_focus_done(self, record: tuple[LabelSession, str]) -> None:
        session, key = record
        if session is self._session and key == self._key:
            if session.label(key) is None:
                self.show_plane(round(session.suggested_focal_plane(key)))
            self._refresh()

    def _on_worker_error(self, exc: BaseException) -> None:
        self._show_message(f"failed: {exc}")

    @property
    def busy(self) -> bool:
        """Whether a background computation (focus curve, model) is running."""
        return bool(self._workers)

    def _on_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Model (.json) — cancel for the bundled one", "", "Model (*.json)"
        )
        self.predict(path or None)

    def predict(self, model: Any = None) -> None:
        """Ask the model for every plane of every open stack, in the background.

        Parameters
        ----------
        model : SparseFocusModel, str or None
            A loaded model, a model file, or None for the bundled default.
        """
        from napari.qt.threading import create_worker

        session = self._require_session()
        keys = session.ordered_keys()
        total = sum(session.info(k).n_planes for k in keys)
        worker = create_worker(_predict_stacks, session, keys, model)
        worker.yielded.connect(self._on_prediction)
        worker.errored.connect(self._on_worker_error)
        worker.finished.connect(self._prune_workers)
        self._workers.append(worker)
        self._progress.setRange(0, total)
        self._progress.setValue(0)
        self._progress.setVisible(True)
        self._stop_btn.setVisible(True)
        self._model_btn.setEnabled(False)
        worker.start()

    def _on_prediction(self, record: _PredictionRecord) -> None:
        session, done, key, values, dof = record
        if session is not self._session:
            return
        self._progress.setValue(int(done))
        if key is not None:
            session.set_predictions(key, values, dof_um=dof)
            self._after_change()

    def _on_stop(self) -> None:
        for worker in list(self._workers):
            worker.quit()


def _focus_job(session: LabelSession, key: str) -> tuple[LabelSession, str]:
    """Compute (and cache in the session) a stack's focus curve."""
    session.focus(key)
    return session, key


def _predict_stacks(
    session: LabelSession, keys: list[str], model: Any
) -> Generator[_PredictionRecord, None, None]:
    """Predict every plane of each stack; yield progress and each stack's predictions."""
    from ..core.nn import load_model
    from ..core.nn._inference import iter_predict_stack

    if model is None or isinstance(model, (str, os.PathLike)):
        model = load_model(None if model is None else os.fspath(model))
    done = 0
    for key in keys:
        info = session.info(key)
        values: list[float | None] = []
        dof = 0.0
        for _, pred in iter_predict_stack(
            session.stack(key).data, model, pixel_size_um=info.pixel_size_um
        ):
            values.append(pred.defocus_um)
            dof = pred.dof_um
            done += 1
            yield session, done, None, [], 0.0
        yield session, done, key, values, dof


def _annotator() -> str:
    """Return the annotator's name: the ``USER`` / ``USERNAME`` of the session."""
    return os.environ.get("USER") or os.environ.get("USERNAME") or ""
