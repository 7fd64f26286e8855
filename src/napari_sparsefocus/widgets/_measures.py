"""Classical focus measures side by side, with the focal plane each one finds.

Each checked measure of the core is evaluated on every plane of a z-stack in
a napari thread worker; the curves are drawn normalised with the focal plane
each one finds, crossed out when the finder does not trust it (flat curve,
peak on an edge). With a model set, its answer for the plane shown in the
viewer is drawn next to them (``z_current - defocus``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QDoubleSpinBox, QLabel

from ..core._focal_plane import DEFAULT_MIN_RELATIVE_CONTRAST
from ..core._stack_analysis import MeasureCurves, iter_measure_curves
from ..plotting import plot_measure_comparison
from ._curves import MeasureChecks, StackPlotWidget, _stack_of

if TYPE_CHECKING:
    from collections.abc import Generator

    import napari
    from qtpy.QtWidgets import QWidget

    from ..core.nn import DefocusPrediction, SparseFocusModel

__all__ = ["FocusMeasuresWidget", "MeasuresResult"]

DEFAULT_MEASURES = ("brenner", "tenengrad", "variance_of_laplacian", "normalized_variance")


@dataclass(frozen=True, eq=False)
class MeasuresResult:
    """What :class:`FocusMeasuresWidget` shows.

    Attributes
    ----------
    curves : MeasureCurves
        The measures' curves and focal planes.
    plane : int
        Plane shown in the viewer when the run started.
    prediction : DefocusPrediction or None
        The model's answer on that plane (``None`` without a model).
    model_focus_um : float or None
        Where the model puts the focal plane, ``z_plane - defocus`` (µm,
        relative to plane 0); ``None`` without a number.
    """

    curves: MeasureCurves
    plane: int
    prediction: DefocusPrediction | None
    model_focus_um: float | None


def _measures_and_model(
    data: Any,
    measures: list[str],
    *,
    z_step_um: float,
    channel_axis: int | None,
    min_relative_contrast: float,
    plane: int,
    model: SparseFocusModel | None,
    pixel_size_um: float | None,
) -> Generator[Any, None, MeasuresResult]:
    curves = yield from iter_measure_curves(
        data,
        measures,
        z_step_um=z_step_um,
        channel_axis=channel_axis,
        min_relative_contrast=min_relative_contrast,
    )
    prediction = None
    focus = None
    if model is not None:
        prediction = model.predict(np.asarray(data[plane]), pixel_size_um=pixel_size_um)
        if prediction.defocus_um is not None:
            focus = plane * z_step_um - float(prediction.defocus_um)
    return MeasuresResult(curves=curves, plane=plane, prediction=prediction, model_focus_um=focus)


class FocusMeasuresWidget(StackPlotWidget):
    """Classical focus measures over a z-stack, next to the model's answer.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer.
    parent : QWidget, optional
        Parent widget.

    Attributes
    ----------
    result : MeasuresResult or None
        The last finished run.
    """

    def __init__(self, viewer: napari.viewer.Viewer, *, parent: QWidget | None = None) -> None:
        super().__init__(viewer, 1, model_optional=True, parent=parent)
        self.measure_checks = MeasureChecks(DEFAULT_MEASURES, parent=self.controls)
        self.form.insertRow(2, "Measures", self.measure_checks)
        self.contrast_spin = QDoubleSpinBox(self.controls)
        self.contrast_spin.setRange(0.0, 1.0)
        self.contrast_spin.setSingleStep(0.05)
        self.contrast_spin.setDecimals(2)
        self.contrast_spin.setValue(DEFAULT_MIN_RELATIVE_CONTRAST)
        self.contrast_spin.setToolTip(
            "A curve whose (max - min) / max is below this is too flat to trust"
        )
        self.form.insertRow(3, "Min. relative contrast", self.contrast_spin)
        self.table = QLabel("", self.controls)
        self.table.setWordWrap(True)
        self.table.setTextFormat(Qt.TextFormat.PlainText)
        self.form.addRow(self.table)
        self.result: MeasuresResult | None = None

    @property
    def trusted(self) -> dict[str, bool]:
        """Measure name to whether its focal plane can be trusted (last run)."""
        if self.result is None:
            return {}
        return {n: bool(r.trustworthy) for n, r in self.result.curves.results.items()}

    def run(self) -> None:
        """Evaluate the checked measures on every plane of the selected layer."""
        layer = self.layer
        measures = self.measure_checks.selected()
        if layer is None or not measures:
            self.status.setText("pick a z-stack Image layer and at least one measure")
            return
        try:
            data, channel_axis, z_step, px = _stack_of(layer)
        except ValueError as exc:
            self.status.setText(f"error: {exc}")
            return
        n = int(data.shape[0])
        self.result = None
        plane = self._current_plane(layer)
        self.status.setText(f"{layer.name}: measuring {n} planes")
        gen = _measures_and_model(
            data,
            measures,
            z_step_um=z_step,
            channel_axis=channel_axis,
            min_relative_contrast=float(self.contrast_spin.value()),
            plane=plane,
            model=self._model,
            pixel_size_um=px,
        )
        self._start(
            gen, total=n, desc="focus measures", on_yield=lambda _: None, on_return=self._on_done
        )

    def _on_done(self, result: MeasuresResult) -> None:
        self.result = result
        self.status.setText(self.status.text().replace(": measuring", ": measured"))
        lines = []
        for name, r in result.curves.results.items():
            verdict = "trusted" if r.trustworthy else f"untrusted ({r.reason})"
            lines.append(
                f"{name}: plane {r.index} (z {r.z_um:.2f} µm), contrast "
                f"{r.relative_contrast:.2f}, {verdict}"
            )
        p = result.prediction
        if p is not None:
            d = "no number" if p.defocus_um is None else f"{p.defocus_um:+.2f} µm"
            focus = (
                ""
                if result.model_focus_um is None
                else f" → focus at z {result.model_focus_um:.2f} µm"
            )
            lines.append(f"model on plane {result.plane}: {d} ({p.verdict}){focus}")
        self.table.setText("\n".join(lines))
        self.redraw()

    def redraw(self) -> None:
        """Draw the last result."""
        self.clear()
        r = self.result
        if r is not None:
            res = r.curves.results
            z_current = float(r.curves.z_um[r.plane]) if r.prediction is not None else None
            plot_measure_comparison(
                self.axes[0],
                r.curves.z_um,
                {n: x.curve for n, x in res.items()},
                {n: x.z_um for n, x in res.items()},
                {n: x.trustworthy for n, x in res.items()},
                model_focus_um=r.model_focus_um,
                current_um=z_current,
            )
            if r.model_focus_um is not None and not math.isfinite(r.model_focus_um):
                self.status.setText("the model's answer is not finite")
        self.draw()
