"""Focus curves: predicted against ground-truth defocus along a z-stack.

The widget streams the model's answer for every plane of an Image layer
(napari thread worker), draws it against the ground truth (label file, the
simulator's metadata, or the focal-plane finder) with a zero-error line, a
±DoF band and the classical measure curves on a second axis, and shows MAE,
DoF-Accuracy and DSS of the stack. Clicking the plot moves the viewer to the
plane under the cursor.

The module also holds the small pieces the other plot widgets share: the
layer picker, the model picker and the worker life cycle
(:class:`StackPlotWidget`).
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core import FOCUS_MEASURES
from ..core._stack_analysis import (
    GroundTruth,
    PlaneRecord,
    StackEvaluation,
    StackProgress,
    evaluate_predictions,
    ground_truth_from_defocus,
    ground_truth_from_focal_index,
    iter_evaluate_stack,
)
from ..plotting import DefocusCurveArtists, plot_defocus_curve, plot_focus_curves
from ._mpl import MplCanvasWidget

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Sequence

    import napari
    from matplotlib.backend_bases import Event
    from napari.layers import Image
    from numpy.typing import NDArray

    from ..core.nn import SparseFocusModel
    from ..io import StackLabel

__all__ = [
    "FocusCurvesWidget",
    "MeasureChecks",
    "StackPlotWidget",
    "find_stack_label",
    "known_ground_truth",
    "stack_layers",
]

DEFAULT_CURVE_MEASURES = ("brenner", "tenengrad", "normalized_variance")


# --------------------------------------------------------------------- helpers
def stack_layers(viewer: napari.viewer.Viewer) -> list[Image]:
    """Return the viewer's Image layers that are z-stacks (at least 3 non-colour axes).

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer.

    Returns
    -------
    list of napari.layers.Image
        In layer-list order.
    """
    from napari.layers import Image

    return [
        layer
        for layer in viewer.layers
        if isinstance(layer, Image) and layer.ndim >= 3 and not layer.multiscale
    ]


def _stack_of(layer: Image) -> tuple[Any, int | None, float, float | None]:
    """Return ``(data, channel_axis, z_step_um, pixel_size_um)`` of a z-stack layer."""
    data = layer.data
    if layer.ndim > 3:
        raise ValueError(
            f"layer {layer.name!r} has {layer.ndim} axes: pick a (Z, Y, X) or RGB z-stack"
        )
    z_step = float(layer.scale[0])
    px = float(layer.scale[-1])
    return data, (-1 if layer.rgb else None), z_step, (None if px == 1.0 else px)


def find_stack_label(source: str | Path, label_file: str | Path | None = None) -> StackLabel | None:
    """Find the label of a stack file in a label file.

    Parameters
    ----------
    source : str or Path
        The stack file.
    label_file : str or Path, optional
        A label file to read. By default every ``*.json`` file next to
        `source` is tried (unreadable ones are skipped).

    Returns
    -------
    StackLabel or None
        The entry whose path resolves to `source`, or ``None``.

    Raises
    ------
    LabelFileError
        If an explicitly given `label_file` cannot be read.
    """
    from ..io import LabelFileError, read_labels

    target = Path(source).resolve()
    candidates = [Path(label_file)] if label_file else sorted(target.parent.glob("*.json"))
    for path in candidates:
        try:
            labels = read_labels(path)
        except (LabelFileError, OSError):
            if label_file:
                raise
            continue
        for entry in labels.stacks:
            if entry.resolve(path.parent).resolve() == target:
                return entry
    return None


def known_ground_truth(
    layer: Image, label_file: str | Path | None = None
) -> tuple[GroundTruth | None, str]:
    """Ground truth of a z-stack layer when one is known (else the finder is used).

    Parameters
    ----------
    layer : napari.layers.Image
        A z-stack layer; ``layer.scale[0]`` is its z-step (µm).
    label_file : str or Path, optional
        A label file naming the layer's source file.

    Returns
    -------
    tuple
        ``(truth, note)``: from the label file (given, or found next to the
        layer's source file), else from ``layer.metadata["defocus_um"]`` (the
        simulator's labels), else ``None`` (use the focal-plane finder);
        `note` says which.

    Raises
    ------
    ValueError
        If the given label file has no entry for the layer's source.
    """
    n = int(layer.data.shape[0])
    source = getattr(layer.source, "path", None)
    label = None
    if label_file:
        if source is None:
            raise ValueError(
                f"layer {layer.name!r} was not opened from a file: a label file cannot name it"
            )
        label = find_stack_label(source, label_file)
        if label is None:
            raise ValueError(f"{label_file} has no entry for {source}")
    elif source is not None:
        label = find_stack_label(source)
    if label is not None:
        step = label.z_step_um if label.z_step_um is not None else float(layer.scale[0])
        truth = ground_truth_from_focal_index(label.focal_plane_index, n, step)
        return truth, f"label file (focal plane {label.focal_plane_index:g})"
    meta = layer.metadata.get("defocus_um") if isinstance(layer.metadata, dict) else None
    if meta is not None and len(meta) == n:
        try:
            return ground_truth_from_defocus(meta), "simulation metadata"
        except ValueError:
            pass
    return None, "focal-plane finder"


def _drive(gen: Generator[Any, None, Any]) -> Generator[Any, None, Any]:
    """Run `gen` in a napari worker (a generator function, as create_worker needs)."""
    result = yield from gen
    return result


class _WorkerHandle:
    """Holds the running worker, so that a slot not bound to the widget can stop it."""

    def __init__(self) -> None:
        self.worker: Any = None

    def quit(self, *_: Any) -> None:
        if self.worker is not None:
            self.worker.quit()


# --------------------------------------------------------------------- base widget
class StackPlotWidget(MplCanvasWidget):
    """A plot widget over a z-stack layer, with a model picker and a Stop-able worker.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer.
    n_axes : int
        Axes side by side.
    model_optional : bool
        Whether "no model" is a valid choice (else the bundled default is used).
    parent : QWidget, optional
        Parent widget.
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        n_axes: int = 1,
        *,
        model_optional: bool = False,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(n_axes, parent=parent)
        # a docked canvas squeezed to nothing makes constrained layout warn on every draw
        self.canvas.setMinimumSize(280, 240)
        self._viewer = viewer
        self._model: SparseFocusModel | None = None
        self._model_optional = model_optional
        self._handle = _WorkerHandle()
        self.destroyed.connect(self._handle.quit)

        self.controls = QWidget(self)
        self.form = QFormLayout(self.controls)
        self.form.setContentsMargins(4, 4, 4, 4)
        self.layer_combo = QComboBox(self.controls)
        self.form.addRow("Image layer", self.layer_combo)
        self.model_label = QLabel("none" if model_optional else "bundled default", self.controls)
        self.model_button = QPushButton("Load model file…", self.controls)
        row = QHBoxLayout()
        row.addWidget(self.model_label, 1)
        row.addWidget(self.model_button)
        self.form.addRow("Model", row)
        self.run_button = QPushButton("Run", self.controls)
        self.stop_button = QPushButton("Stop", self.controls)
        self.stop_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.stop_button)
        self.form.addRow(buttons)
        self.status = QLabel("", self.controls)
        self.status.setWordWrap(True)
        self.form.addRow(self.status)
        layout = self.layout()
        assert isinstance(layout, QVBoxLayout)
        layout.insertWidget(0, self.controls)

        self.model_button.clicked.connect(self._on_model_button)
        self.run_button.clicked.connect(self.run)
        self.stop_button.clicked.connect(self.stop)
        viewer.layers.events.inserted.connect(self._refresh_layers)
        viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------ layers
    def _refresh_layers(self, _event: Any = None) -> None:
        current = self.layer_combo.currentText()
        names = [layer.name for layer in stack_layers(self._viewer)]
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)
        self.layer_combo.blockSignals(False)

    @property
    def layer(self) -> Image | None:
        """The selected z-stack layer, or ``None``."""
        name = self.layer_combo.currentText()
        for layer in stack_layers(self._viewer):
            if layer.name == name:
                return layer
        return None

    def set_layer(self, layer: Image | str) -> None:
        """Select a z-stack layer (object or name)."""
        self._refresh_layers()
        name = layer if isinstance(layer, str) else layer.name
        if self.layer_combo.findText(name) < 0:
            raise ValueError(f"{name!r} is not a z-stack Image layer of the viewer")
        self.layer_combo.setCurrentText(name)

    def _z_axis(self, layer: Image) -> int:
        """Return the viewer dims axis of the layer's z axis (napari right-aligns axes)."""
        return int(self._viewer.dims.ndim - layer.ndim)

    def _current_plane(self, layer: Image) -> int:
        """Index of the layer's plane shown in the viewer."""
        point = float(self._viewer.dims.point[self._z_axis(layer)])
        i = round((point - float(layer.translate[0])) / float(layer.scale[0]))
        return int(min(max(i, 0), layer.data.shape[0] - 1))

    def go_to_plane(self, index: int) -> None:
        """Move the viewer to plane `index` of the selected layer."""
        layer = self.layer
        if layer is None:
            return
        world = float(layer.translate[0]) + int(index) * float(layer.scale[0])
        self._viewer.dims.set_point(self._z_axis(layer), world)

    # ------------------------------------------------------------ model
    @property
    def model(self) -> SparseFocusModel | None:
        """The model set with :meth:`set_model` or loaded from a file (``None``: default)."""
        return self._model

    def set_model(self, model: SparseFocusModel | None, name: str = "custom") -> None:
        """Use `model` (``None``: the bundled default, or no model where optional)."""
        self._model = model
        if model is None:
            self.model_label.setText("none" if self._model_optional else "bundled default")
        else:
            self.model_label.setText(name)
        self._on_model_changed()

    def _on_model_changed(self) -> None:
        """React to a new model (subclasses redraw, e.g. the PSF of its optics)."""

    def _on_model_button(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Load a SparseFocus model", "", "Model config (*.json);;All files (*)"
        )
        if path:
            self.load_model_file(path)

    def load_model_file(self, path: str | Path) -> None:
        """Load a model file (``.json`` + ``.safetensors``) and use it."""
        from ..core.nn import load_model

        try:
            model = load_model(path)
        except (OSError, ValueError) as exc:
            self.status.setText(f"cannot load {path}: {exc}")
            return
        self.set_model(model, Path(path).name)

    def _resolve_model(self) -> SparseFocusModel | None:
        """Return the model to run (the bundled default when none was set and one is needed)."""
        if self._model is not None or self._model_optional:
            return self._model
        from ..core.nn import load_model

        self._model = load_model(None)
        return self._model

    # ------------------------------------------------------------ worker
    @property
    def worker(self) -> Any:
        """The running (or last) napari worker, or ``None``."""
        return self._handle.worker

    def is_running(self) -> bool:
        """Whether a worker is running."""
        w = self._handle.worker
        return bool(w is not None and w.is_running)

    def _start(
        self,
        gen: Generator[Any, None, Any],
        *,
        total: int,
        desc: str,
        on_yield: Callable[[Any], None],
        on_return: Callable[[Any], None],
    ) -> Any:
        from napari.qt.threading import create_worker

        self.stop()
        worker = create_worker(
            _drive,
            gen,
            _progress={"total": int(total), "desc": desc},
            _connect={
                "yielded": on_yield,
                "returned": on_return,
                "errored": self._on_error,
                "aborted": self._on_aborted,
                "finished": self._on_finished,
            },
        )
        self._handle.worker = worker
        self.run_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        return worker

    def stop(self) -> None:
        """Ask the running worker to stop (it stops between two planes)."""
        self._handle.quit()

    def run(self) -> None:
        """Start the analysis of the selected layer (subclasses implement)."""
        raise NotImplementedError

    def _on_error(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        self.status.setText(f"error: {exc}")
        show_error(f"{type(self).__name__}: {exc}")

    def _on_aborted(self) -> None:
        self.status.setText(self.status.text() + " — stopped")

    def _on_finished(self) -> None:
        self.run_button.setEnabled(True)
        self.stop_button.setEnabled(False)

    def closeEvent(self, event: Any) -> None:
        """Stop the worker when the widget is closed."""
        self.stop()
        super().closeEvent(event)


class MeasureChecks(QWidget):
    """A grid of check boxes, one per focus measure of the core.

    Parameters
    ----------
    checked : sequence of str
        Measures initially checked.
    parent : QWidget, optional
        Parent widget.
    """

    def __init__(self, checked: Sequence[str], *, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        self.boxes: dict[str, QCheckBox] = {}
        for i, name in enumerate(FOCUS_MEASURES):
            box = QCheckBox(name, self)
            box.setChecked(name in checked)
            grid.addWidget(box, i // 2, i % 2)
            self.boxes[name] = box

    def selected(self) -> list[str]:
        """Return the checked measure names, in the core's order."""
        return [name for name, box in self.boxes.items() if box.isChecked()]

    def set_selected(self, names: Sequence[str]) -> None:
        """Check exactly `names`."""
        unknown = set(names) - set(self.boxes)
        if unknown:
            raise ValueError(f"unknown focus measure(s) {sorted(unknown)}")
        for name, box in self.boxes.items():
            box.setChecked(name in names)


# --------------------------------------------------------------------- focus curves
class FocusCurvesWidget(StackPlotWidget):
    """Predicted against ground-truth defocus of every plane of a z-stack.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer.
    parent : QWidget, optional
        Parent widget.

    Attributes
    ----------
    records : list of PlaneRecord
        The planes predicted so far (plotted data), in plane order.
    truth : GroundTruth or None
        The ground truth in use.
    evaluation : StackEvaluation or None
        The finished run (``None`` while running or after a Stop).
    metrics : dict of str to float
        :func:`~napari_sparsefocus.core._stack_analysis.evaluate_predictions`
        of the planes predicted so far.
    """

    def __init__(self, viewer: napari.viewer.Viewer, *, parent: QWidget | None = None) -> None:
        super().__init__(viewer, 1, parent=parent)
        self.label_edit = QLineEdit(self.controls)
        self.label_edit.setPlaceholderText("auto: next to the stack, metadata, or finder")
        browse = QPushButton("…", self.controls)
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._on_browse_labels)
        row = QHBoxLayout()
        row.addWidget(self.label_edit, 1)
        row.addWidget(browse)
        self.form.insertRow(2, "Label file", row)
        self.measure_checks = MeasureChecks(DEFAULT_CURVE_MEASURES, parent=self.controls)
        self.form.insertRow(3, "Measures", self.measure_checks)
        self.metrics_label = QLabel("", self.controls)
        self.metrics_label.setWordWrap(True)
        self.form.addRow(self.metrics_label)

        self.records: list[PlaneRecord] = []
        self.truth: GroundTruth | None = None
        self.evaluation: StackEvaluation | None = None
        self.metrics: dict[str, float] = {}
        self._curves: dict[str, NDArray[np.float64]] = {}
        self._dof_um = math.nan
        self._n_planes = 0
        self._artists: DefocusCurveArtists | None = None
        self._layer_name: str | None = None
        self._note = ""

        self.canvas.mpl_connect("button_press_event", self._on_click)
        viewer.dims.events.current_step.connect(self._on_dims)

    # ------------------------------------------------------------ data
    @property
    def artists(self) -> DefocusCurveArtists | None:
        """The artists of the drawn curve (``None`` before the ground truth is known)."""
        return self._artists

    @property
    def true_um(self) -> NDArray[np.float64]:
        """Ground-truth defocus of every plane (µm), or an empty array."""
        if self.truth is None:
            return np.zeros(0)
        return np.asarray(self.truth.defocus_um, dtype=np.float64)

    @property
    def pred_um(self) -> NDArray[np.float64]:
        """Predicted defocus of every plane (µm, NaN where not yet or not predicted)."""
        out = np.full(self._n_planes, np.nan)
        for r in self.records:
            out[r.index] = r.pred_um
        return out

    def _on_browse_labels(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Label file", "", "Label files (*.json);;All files (*)"
        )
        if path:
            self.label_edit.setText(path)

    # ------------------------------------------------------------ run
    def run(self) -> None:
        """Predict every plane of the selected layer and compare with its ground truth."""
        layer = self.layer
        if layer is None:
            self.status.setText("no z-stack Image layer")
            return
        try:
            data, channel_axis, z_step, px = _stack_of(layer)
            truth, note = known_ground_truth(layer, self.label_edit.text().strip() or None)
            model = self._resolve_model()
        except (OSError, ValueError) as exc:
            self.status.setText(f"error: {exc}")
            return
        assert model is not None
        measures = self.measure_checks.selected()
        n = int(data.shape[0])
        self.records, self.truth, self.evaluation, self.metrics = [], None, None, {}
        self._curves = {}
        self._n_planes = n
        self._dof_um = float(model.optics.dof_um)
        self._layer_name = layer.name
        self.status.setText(f"{layer.name}: measuring {n} planes (ground truth: {note})")
        gen = iter_evaluate_stack(
            data,
            partial(model.predict, pixel_size_um=px),
            z_step_um=z_step,
            dof_um=self._dof_um,
            truth=truth,
            measures=measures,
            channel_axis=channel_axis,
        )
        self._note = note
        self._start(
            gen,
            total=2 * n + 1,
            desc="focus curves",
            on_yield=self._on_progress,
            on_return=self._on_done,
        )

    def _on_progress(self, step: StackProgress) -> None:
        if step.phase == "truth":
            assert step.truth is not None and step.curves is not None
            self.truth = step.truth
            self._curves = step.curves.normalised()
            flag = "" if step.truth.trustworthy else f" — untrusted: {step.truth.reason}"
            self.status.setText(
                f"{self._layer_name}: predicting (ground truth: {self._note}, focal plane "
                f"{step.truth.focal_plane_index:.2f}){flag}"
            )
            self.redraw()
        elif step.phase == "predict" and step.record is not None:
            self.records.append(step.record)
            self._update_points()

    def _on_done(self, evaluation: StackEvaluation) -> None:
        self.evaluation = evaluation
        self.metrics = dict(evaluation.metrics)
        self.status.setText(self.status.text().replace(": predicting", ": done"))
        self.redraw()

    # ------------------------------------------------------------ drawing
    def _update_metrics(self) -> None:
        if self.truth is None or not self.records:
            self.metrics_label.setText("")
            return
        idx = [r.index for r in self.records]
        self.metrics = evaluate_predictions(
            [r.pred_um for r in self.records], self.true_um[idx], self._dof_um
        )
        m = self.metrics
        if m["n"] == 0:
            self.metrics_label.setText(f"no prediction on {int(m['n_abstained'])} plane(s)")
            return
        self.metrics_label.setText(
            f"MAE {m['mae_um']:.2f} ± {m['mae_std_um']:.2f} µm · DoF-Acc (1, 1/2, 1/3) "
            f"{m['dof_acc_1']:.0f} / {m['dof_acc_2']:.0f} / {m['dof_acc_3']:.0f} % · "
            f"DSS {m['dss']:.0f} % · {int(m['n'])} planes"
            + (f", {int(m['n_abstained'])} without answer" if m["n_abstained"] else "")
            + f" · DoF {self._dof_um:.2f} µm"
        )

    def _update_points(self) -> None:
        if self._artists is None:
            self.redraw()
            return
        self._artists.points.set_ydata(self.pred_um)
        ax = self.axes[0]
        finite = self.pred_um[np.isfinite(self.pred_um)]
        if finite.size:
            lo, hi = ax.get_ylim()
            ax.set_ylim(min(lo, float(finite.min()) - 0.5), max(hi, float(finite.max()) + 0.5))
        self._update_metrics()
        self.canvas.draw_idle()

    def redraw(self) -> None:
        """Draw the curves from the current data."""
        self.clear()
        self._artists = None
        if self.truth is None:
            self.draw()
            return
        ax = self.axes[0]
        layer = self.layer
        current = None
        if layer is not None and layer.name == self._layer_name:
            current = float(self.true_um[self._current_plane(layer)])
        self._artists = plot_defocus_curve(
            ax,
            self.true_um,
            self.pred_um,
            dof_um=self._dof_um,
            current_um=current,
            legend=True,
        )
        if self._curves:
            twin = ax.twinx()
            plot_focus_curves(twin, self.true_um, self._curves, normalise=True, legend=False)
            for line in twin.get_lines():
                line.set_alpha(0.6)
                line.set_linewidth(1.0)
            twin.set_ylim(-0.05, 1.6)
            twin.legend(loc="lower right", fontsize="x-small", frameon=False)
        self._update_metrics()
        self.draw()

    # ------------------------------------------------------------ interaction
    def _on_click(self, event: Event) -> None:
        x = getattr(event, "xdata", None)
        if (
            x is None
            or getattr(event, "button", None) != 1
            or self.toolbar.mode
            or self.truth is None
        ):
            return
        index = int(np.argmin(np.abs(self.true_um - float(x))))
        self.go_to_plane(index)

    def _on_dims(self, _event: Any = None) -> None:
        if self._artists is None or self._artists.current is None or self.truth is None:
            return
        layer = self.layer
        if layer is None or layer.name != self._layer_name:
            return
        x = float(self.true_um[self._current_plane(layer)])
        self._artists.current.set_xdata([x, x])
        self.canvas.draw_idle()
