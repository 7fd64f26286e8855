"""Focus analysis widget: importance heatmap, top-k patches and the defocus summary.

Thin over the core: one plane goes through ``SparseFocusModel.predict`` and a
stack through :func:`~napari_sparsefocus.core.nn.iter_predict_stack`, both in
napari thread workers; the geometry of the overlay comes from
:mod:`napari_sparsefocus.core._overlay`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_sparsefocus.core._overlay import (
    RequestTracker,
    image_pixel_size_um,
    plane_index,
    summary_text,
)

from ._overlay_layers import find_overlay_layer, show_prediction_layers

if TYPE_CHECKING:
    from collections.abc import Iterator

    import napari
    from napari.layers import Image

    from napari_sparsefocus.core._overlay import PlaneRequest
    from napari_sparsefocus.core.nn import DefocusPrediction, SparseFocusModel

__all__ = ["HEATMAP_LAYER", "PATCHES_LAYER", "FocusAnalysisWidget"]

log = logging.getLogger(__name__)

#: Name of the importance heatmap layer (reused on every run).
HEATMAP_LAYER = "importance"
#: Name of the top-k patches Shapes layer (reused on every run).
PATCHES_LAYER = "top-k patches"

_BUNDLED = "bundled default"
_FILE = "model file"
_OBJECT = "model set from Python"
_DEBOUNCE_MS = 150

Plane = tuple[int, ...]


def _predict_plane(
    model: SparseFocusModel | str | None, image: Any, kwargs: dict[str, Any]
) -> tuple[SparseFocusModel, DefocusPrediction]:
    """Worker body: load the model if needed, then predict one plane."""
    from napari_sparsefocus.core.nn import SparseFocusModel, load_model

    m = model if isinstance(model, SparseFocusModel) else load_model(model)
    return m, m.predict(np.asarray(image), **kwargs)


def _predict_stack(
    model: SparseFocusModel | str | None, stack: Any, prefix: Plane, kwargs: dict[str, Any]
) -> Iterator[tuple[Plane, DefocusPrediction, SparseFocusModel]]:
    """Worker body: stream ``(plane, prediction, model)`` over a stack's last leading axis."""
    from napari_sparsefocus.core.nn import SparseFocusModel, iter_predict_stack, load_model

    m = model if isinstance(model, SparseFocusModel) else load_model(model)
    for i, pred in iter_predict_stack(stack, m, **kwargs):
        yield (*prefix, i), pred, m


class FocusAnalysisWidget(QWidget):
    """Predict the defocus of an image layer and show the evidence as layers.

    Adds (or updates) an Image layer ``"importance"`` (the RIN's grid over the
    analysed crop) and a Shapes layer ``"top-k patches"`` (the selected
    patches, each labelled with its own defocus), aligned with the image
    layer's ``(y, x)`` scale and translate, and a summary label. For a
    z-stack the overlay shows the current plane and follows the dims slider.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer (injected by napari).
    parent : QWidget, optional
        Parent widget.
    """

    def __init__(self, viewer: napari.viewer.Viewer, *, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._model_obj: SparseFocusModel | None = None
        self._models: dict[str, SparseFocusModel] = {}  # loaded files, by settings key
        self._cache: dict[tuple[Any, ...], DefocusPrediction] = {}
        self._tracker = RequestTracker()
        self._plane_workers: list[Any] = []
        self._stack_worker: Any = None
        self._data_version = 0
        self._watched: Image | None = None
        self._closed = False
        #: The image layer the overlay belongs to (set by the first analysis).
        self.active_layer: Image | None = None
        #: Plane index the overlay currently shows (``None``: nothing shown).
        self.shown_plane: Plane | None = None
        #: The prediction the overlay currently shows.
        self.prediction: DefocusPrediction | None = None

        self._build_ui()
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(_DEBOUNCE_MS)
        self._timer.timeout.connect(self._on_debounced_plane)

        viewer.dims.events.current_step.connect(self._on_current_step)
        viewer.layers.events.inserted.connect(self._refresh_layers)
        viewer.layers.events.removed.connect(self._refresh_layers)
        viewer.layers.events.moved.connect(self._refresh_layers)
        self.destroyed.connect(self._make_cleanup())
        self._refresh_layers()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        self.layer_combo = QComboBox()
        self.layer_combo.currentIndexChanged.connect(self._on_layer_changed)

        self.model_combo = QComboBox()
        self.model_combo.addItems([_BUNDLED, _FILE])
        self.model_combo.currentIndexChanged.connect(self._on_settings_changed)
        self.model_path = QLineEdit()
        self.model_path.setPlaceholderText("model .json")
        self.model_path.editingFinished.connect(self._on_settings_changed)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._on_browse)
        file_row = QHBoxLayout()
        file_row.addWidget(self.model_path)
        file_row.addWidget(browse)

        self.k_mode_combo = QComboBox()
        self.k_mode_combo.addItems(["auto", "fixed", "all"])
        self.k_mode_combo.currentIndexChanged.connect(self._on_settings_changed)
        self.k_spin = QSpinBox()
        self.k_spin.setRange(1, 81)
        self.k_spin.setValue(9)
        self.k_spin.setEnabled(False)
        self.k_spin.valueChanged.connect(self._on_settings_changed)

        self.follow_check = QCheckBox("follow the dims slider")
        self.follow_check.setChecked(True)

        self.plane_button = QPushButton("Analyse plane")
        self.plane_button.clicked.connect(self.analyse_plane)
        self.stack_button = QPushButton("Analyse stack")
        self.stack_button.clicked.connect(self.analyse_stack)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        buttons = QHBoxLayout()
        for b in (self.plane_button, self.stack_button, self.stop_button):
            buttons.addWidget(b)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.summary_label = QLabel("Pick an image layer and press “Analyse plane”.")
        self.summary_label.setWordWrap(True)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)

        form = QFormLayout()
        form.addRow("image layer", self.layer_combo)
        form.addRow("model", self.model_combo)
        form.addRow("model file", file_row)
        form.addRow("top-k", self.k_mode_combo)
        form.addRow("k", self.k_spin)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.follow_check)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.summary_label)
        layout.addWidget(self.status_label)
        layout.addStretch(1)

    def _refresh_layers(self, event: Any = None) -> None:
        """Refill the layer picker with the viewer's image layers (not our overlay)."""
        from napari.layers import Image

        current = self.selected_layer()
        layers = [
            lay
            for lay in self.viewer.layers
            if isinstance(lay, Image) and not lay.metadata.get("sparsefocus_overlay", False)
        ]
        self.layer_combo.blockSignals(True)
        try:
            self.layer_combo.clear()
            for lay in layers:
                self.layer_combo.addItem(lay.name, lay)
            if current in layers:
                self.layer_combo.setCurrentIndex(layers.index(current))
        finally:
            self.layer_combo.blockSignals(False)
        if self.selected_layer() is not current:
            self._on_layer_changed()

    def _on_browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "SparseFocus model", "", "SparseFocus model (*.json)"
        )
        if path:
            self.set_model_path(path)

    # ------------------------------------------------------------ settings
    def selected_layer(self) -> Image | None:
        """Return the image layer chosen in the picker."""
        layer = self.layer_combo.currentData()
        return layer if layer is not None and layer in self.viewer.layers else None

    def set_layer(self, layer: Image | str) -> None:
        """Choose the image layer to analyse (the layer or its name)."""
        name = layer if isinstance(layer, str) else layer.name
        index = self.layer_combo.findText(name)
        if index < 0:
            raise ValueError(f"no image layer named {name!r}")
        self.layer_combo.setCurrentIndex(index)

    def set_model(self, model: SparseFocusModel) -> None:
        """Use a model object (e.g. from :func:`~napari_sparsefocus.core.nn.load_model`)."""
        self._model_obj = model
        if self.model_combo.findText(_OBJECT) < 0:
            self.model_combo.addItem(_OBJECT)
        self.model_combo.setCurrentIndex(self.model_combo.findText(_OBJECT))
        self._on_settings_changed()

    def set_model_path(self, path: str | Path) -> None:
        """Use a model file (``.json`` + ``.safetensors``)."""
        self.model_path.setText(str(path))
        self.model_combo.setCurrentIndex(self.model_combo.findText(_FILE))
        self._on_settings_changed()

    def set_k_mode(self, k_mode: str, k: int | None = None) -> None:
        """Set the top-k rule: ``"auto"``, ``"fixed"`` (with ``k``) or ``"all"``."""
        index = self.k_mode_combo.findText(k_mode)
        if index < 0:
            raise ValueError(f"k_mode must be 'auto', 'fixed' or 'all', got {k_mode!r}")
        if k is not None:
            self.k_spin.setValue(int(k))
        self.k_mode_combo.setCurrentIndex(index)

    def _model_choice(self) -> tuple[str, SparseFocusModel | str | None]:
        """Return ``(settings key, what the worker loads)`` for the chosen model."""
        choice = self.model_combo.currentText()
        if choice == _OBJECT and self._model_obj is not None:
            return f"object:{id(self._model_obj)}", self._model_obj
        if choice == _FILE:
            text = self.model_path.text().strip()
            if not text:
                raise ValueError("choose a model file (.json) or the bundled default model")
            key = f"file:{Path(text).expanduser().resolve()}"
            return key, self._models.get(key, str(Path(text).expanduser()))
        return "bundled", self._models.get("bundled")

    def _predict_kwargs(self, layer: Image) -> dict[str, Any]:
        k_mode = self.k_mode_combo.currentText()
        scale = tuple(float(s) for s in layer.scale[-2:])
        units = tuple(str(u) for u in layer.units[-2:])
        return {
            "pixel_size_um": image_pixel_size_um(scale, units),
            "k_mode": k_mode,
            "k": self.k_spin.value() if k_mode == "fixed" else None,
        }

    def _settings(self) -> tuple[Any, ...]:
        k_mode = self.k_mode_combo.currentText()
        key, _ = self._model_choice()
        return (key, k_mode, self.k_spin.value() if k_mode == "fixed" else None)

    def _source(self, layer: Image) -> tuple[int, int]:
        return (id(layer), self._data_version)

    def _on_settings_changed(self, *args: Any) -> None:
        self.k_spin.setEnabled(self.k_mode_combo.currentText() == "fixed")
        if self.active_layer is not None and self.shown_plane is not None:
            self._schedule()

    def _on_layer_changed(self, *args: Any) -> None:
        layer = self.selected_layer()
        if self._watched is not None:
            self._disconnect_layer(self._watched)
            self._watched = None
        if layer is not None:
            layer.events.data.connect(self._on_layer_data)
            layer.events.scale.connect(self._on_layer_geometry)
            layer.events.translate.connect(self._on_layer_geometry)
            self._watched = layer
        self.stack_button.setEnabled(layer is not None and len(self._leading_shape(layer)) > 0)

    def _disconnect_layer(self, layer: Image) -> None:
        layer.events.data.disconnect(self._on_layer_data)
        layer.events.scale.disconnect(self._on_layer_geometry)
        layer.events.translate.disconnect(self._on_layer_geometry)

    def _on_layer_data(self, event: Any = None) -> None:
        self._data_version += 1  # invalidates cached and in-flight results
        self._cache.clear()
        if self.active_layer is not None:
            self._schedule()

    def _on_layer_geometry(self, event: Any = None) -> None:
        if self.prediction is not None and self.active_layer is not None:
            self._show(self.active_layer, self.shown_plane or (), self.prediction)

    # ------------------------------------------------------------ geometry
    @staticmethod
    def _data(layer: Image) -> Any:
        return layer.data[0] if layer.multiscale else layer.data

    def _leading_shape(self, layer: Image) -> tuple[int, ...]:
        data = self._data(layer)
        n_lead = data.ndim - 2 - int(bool(layer.rgb))
        return tuple(int(s) for s in data.shape[: max(n_lead, 0)])

    def current_plane(self, layer: Image | None = None) -> Plane:
        """Index of the plane of ``layer`` (default: the selected one) the viewer shows."""
        layer = layer or self.selected_layer()
        if layer is None:
            return ()
        shape = self._leading_shape(layer)
        n = len(shape)
        return plane_index(
            self.viewer.dims.point,
            scale=tuple(layer.scale[:n]),
            translate=tuple(layer.translate[:n]),
            shape=shape,
        )

    # ------------------------------------------------------------ analysis
    def analyse_plane(self) -> None:
        """Analyse the selected layer's current plane (in a thread worker)."""
        layer = self.selected_layer()
        if layer is None:
            self._error("no image layer to analyse")
            return
        self.active_layer = layer
        self._request(layer, self.current_plane(layer))

    def _on_current_step(self, event: Any = None) -> None:
        if self.follow_check.isChecked() and self.active_layer is not None:
            self._timer.start()  # restarts: debounced

    def _schedule(self) -> None:
        self._timer.start()

    def _on_debounced_plane(self) -> None:
        layer = self.active_layer
        if self._closed or layer is None or layer not in self.viewer.layers:
            return
        self._request(layer, self.current_plane(layer))

    def _request(self, layer: Image, plane: Plane) -> None:
        try:
            settings = self._settings()
        except ValueError as exc:
            self._error(str(exc))
            return
        cached = self._cache.get((self._source(layer), settings, plane))
        if cached is not None:
            self._tracker.pending = None  # whatever waited is superseded
            if cached is not self.prediction or plane != self.shown_plane:
                self._show(layer, plane, cached)
            return
        self.status_label.setText(f"analysing plane {self._plane_text(plane)}…")
        req = self._tracker.submit(self._source(layer), plane, settings)
        if req is not None:
            self._start_plane_worker(layer, req)

    def _start_plane_worker(self, layer: Image, req: PlaneRequest) -> None:
        from napari.qt.threading import create_worker

        try:
            _, model = self._model_choice()
            image = self._data(layer)[req.plane] if req.plane else self._data(layer)
            kwargs = self._predict_kwargs(layer)
        except (ValueError, IndexError) as exc:
            self._error(str(exc))
            self._after_plane(req)
            return
        worker = create_worker(
            _predict_plane,
            model,
            image,
            kwargs,
            _start_thread=False,
            _connect={"errored": self._on_worker_error},  # (replaces superqt's re-raise)
        )
        worker.returned.connect(lambda result: self._on_plane_result(req, result))
        worker.finished.connect(lambda: self._on_plane_finished(req, worker))
        self._plane_workers.append(worker)
        worker.start()

    def _on_plane_result(
        self, req: PlaneRequest, result: tuple[SparseFocusModel, DefocusPrediction]
    ) -> None:
        if self._closed:
            return
        model, pred = result
        self._store(req.settings, model)
        if req.source[1] == self._data_version:
            self._cache[(req.source, req.settings, req.plane)] = pred
        self._apply_if_current(req.source, req.settings, req.plane, pred)

    def _on_plane_finished(self, req: PlaneRequest, worker: Any) -> None:
        if worker in self._plane_workers:
            self._plane_workers.remove(worker)
        if not self._closed:
            self._after_plane(req)

    def _after_plane(self, req: PlaneRequest) -> None:
        nxt = self._tracker.finish(req)
        if nxt is None:
            return
        layer = self.active_layer
        if layer is None or layer not in self.viewer.layers:
            self._tracker.finish(nxt)
            return
        cached = self._cache.get((nxt.source, nxt.settings, nxt.plane))
        if cached is not None:
            self._apply_if_current(nxt.source, nxt.settings, nxt.plane, cached)
            self._after_plane(nxt)
        else:
            self._start_plane_worker(layer, nxt)

    def _store(self, settings: tuple[Any, ...], model: SparseFocusModel) -> None:
        key = str(settings[0])
        if not key.startswith("object:"):
            self._models[key] = model

    def _apply_if_current(
        self, source: Any, settings: tuple[Any, ...], plane: Plane, pred: DefocusPrediction
    ) -> bool:
        """Show ``pred`` only if it is for the layer, settings and plane shown now."""
        layer = self.active_layer
        if layer is None or layer not in self.viewer.layers:
            return False
        try:
            current = (self._source(layer), self._settings(), self.current_plane(layer))
        except ValueError:
            return False
        if (source, tuple(settings), tuple(plane)) != current:
            log.debug("dropping a stale result for plane %s", plane)
            return False
        self._show(layer, plane, pred)
        return True

    def analyse_stack(self) -> None:
        """Analyse every plane of the selected z-stack, streaming, with progress and Stop."""
        from napari.qt.threading import create_worker

        layer = self.selected_layer()
        if layer is None:
            self._error("no image layer to analyse")
            return
        shape = self._leading_shape(layer)
        if not shape:
            self._error(f"layer {layer.name!r} is a single plane: use “Analyse plane”")
            return
        if self._stack_worker is not None:
            self._error("a stack analysis is already running (press Stop first)")
            return
        self.active_layer = layer
        prefix = self.current_plane(layer)[:-1]
        try:
            settings = self._settings()
            _, model = self._model_choice()
            kwargs = self._predict_kwargs(layer)
        except ValueError as exc:
            self._error(str(exc))
            return
        stack = self._data(layer)[prefix] if prefix else self._data(layer)
        n = shape[-1]
        source = self._source(layer)
        worker = create_worker(
            _predict_stack,
            model,
            stack,
            prefix,
            kwargs,
            # progress shows in this widget's own bar: napari's activity-dock bar (the
            # `_progress` option) costs the GUI thread ~30 ms per plane and ~150 ms to
            # create under software OpenGL (benchmarks/bench_gui.py)
            _start_thread=False,
            _connect={"errored": self._on_worker_error},
        )
        worker.yielded.connect(lambda item: self._on_stack_item(source, settings, item))
        worker.finished.connect(lambda: self._on_stack_finished(worker))
        self._stack_worker = worker
        self.progress.setRange(0, n)
        self.progress.setValue(0)
        self.stop_button.setEnabled(True)
        self.stack_button.setEnabled(False)
        self.status_label.setText(f"analysing {n} planes…")
        worker.start()

    def _on_stack_item(
        self,
        source: Any,
        settings: tuple[Any, ...],
        item: tuple[Plane, DefocusPrediction, SparseFocusModel],
    ) -> None:
        if self._closed:
            return
        plane, pred, model = item
        self._store(settings, model)
        if source[1] == self._data_version:
            self._cache[(source, settings, plane)] = pred
        self.progress.setValue(self.progress.value() + 1)
        shown = self.prediction
        if (
            tuple(plane) == self.shown_plane
            and shown is not None
            and (shown.defocus_um, shown.patches) == (pred.defocus_um, pred.patches)
        ):
            return  # the overlay already shows this answer: no redundant layer update
        self._apply_if_current(source, settings, plane, pred)

    def _on_stack_finished(self, worker: Any) -> None:
        if self._stack_worker is worker:
            self._stack_worker = None
        if self._closed:
            return
        stopped = worker.abort_requested
        self.stop_button.setEnabled(False)
        layer = self.selected_layer()
        self.stack_button.setEnabled(layer is not None and bool(self._leading_shape(layer)))
        done = self.progress.value()
        self.status_label.setText(
            f"stack analysis {'stopped' if stopped else 'done'}: {done} planes analysed"
        )

    def stop(self) -> None:
        """Stop a running stack analysis (takes effect between planes)."""
        if self._stack_worker is not None:
            self._stack_worker.quit()

    @property
    def busy(self) -> bool:
        """Whether analysis work is running, waiting or about to start (debounce)."""
        return bool(self.workers) or self._timer.isActive() or self._tracker.pending is not None

    @property
    def closed(self) -> bool:
        """Whether the widget has stopped its workers and left the viewer."""
        return self._closed

    @property
    def workers(self) -> list[Any]:
        """Thread workers still running (plane and stack)."""
        workers = list(self._plane_workers)
        if self._stack_worker is not None:
            workers.append(self._stack_worker)
        return workers

    def predictions(self) -> dict[Plane, DefocusPrediction]:
        """Return the cached predictions of the active layer (present settings), by plane."""
        layer = self.active_layer
        if layer is None:
            return {}
        source, settings = self._source(layer), self._settings()
        return {
            plane: pred
            for (src, sett, plane), pred in self._cache.items()
            if src == source and sett == settings
        }

    # ------------------------------------------------------------ display
    @staticmethod
    def _plane_text(plane: Plane) -> str:
        return ", ".join(str(i) for i in plane) if plane else "(2D)"

    def _overlay_layer(self, role: str) -> Any:
        """Return this plugin's overlay layer with ``role`` (found by metadata, not name)."""
        return find_overlay_layer(self.viewer, role)

    def _show(self, layer: Image, plane: Plane, pred: DefocusPrediction) -> None:
        """Put ``pred`` into the heatmap and patch layers and the summary."""
        show_prediction_layers(
            self.viewer,
            pred,
            scale_yx=tuple(float(s) for s in layer.scale[-2:]),
            translate_yx=tuple(float(t) for t in layer.translate[-2:]),
            heatmap_name=HEATMAP_LAYER,
            patches_name=PATCHES_LAYER,
            roles=("importance", "patches"),
            metadata={"source_layer": layer.name, "plane": plane},
        )
        self.prediction = pred
        self.shown_plane = tuple(plane)
        self.summary_label.setText(summary_text(pred, plane=plane))
        self.status_label.setText("")

    # ------------------------------------------------------------ errors
    def _error(self, message: str) -> None:
        from napari.utils.notifications import show_error

        self.status_label.setText(f"error: {message}")
        show_error(f"SparseFocus: {message}")

    def _on_worker_error(self, exc: BaseException) -> None:
        # napari's worker already relays the exception to its notifications
        if not self._closed:
            self.status_label.setText(f"error: {exc}")

    # ------------------------------------------------------------ teardown
    def close_workers(self) -> None:
        """Stop all workers and disconnect from the viewer (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._tracker.clear()
        for worker in self.workers:
            worker.quit()
        dims = self.viewer.dims.events.current_step
        dims.disconnect(self._on_current_step)
        for ev in (
            self.viewer.layers.events.inserted,
            self.viewer.layers.events.removed,
            self.viewer.layers.events.moved,
        ):
            ev.disconnect(self._refresh_layers)
        if self._watched is not None:
            self._disconnect_layer(self._watched)
            self._watched = None

    def _make_cleanup(self) -> Any:
        # a closure, not a bound slot: it runs after the C++ widget is gone
        def cleanup(*args: Any) -> None:
            self.close_workers()

        return cleanup

    def closeEvent(self, event: Any) -> None:
        """Stop the workers when the widget is closed."""
        self.close_workers()
        super().closeEvent(event)
