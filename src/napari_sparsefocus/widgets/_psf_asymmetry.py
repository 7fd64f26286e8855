"""PSF asymmetry: why the sign of defocus can be read from one image.

Left, the XZ section of the PSF of the model's optics (``Optics()`` without a
model); middle, its lateral profiles at ``+d`` and ``-d``; right, from the
data, the paper's Fig. 4d: pixel values of the plane ``d`` above focus
against the plane ``d`` below it, with the asymmetry score
(:func:`~napari_sparsefocus.core._stack_analysis.asymmetry_score`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QCheckBox, QDoubleSpinBox, QHBoxLayout, QLabel

from ..core import Optics
from ..core._stack_analysis import (
    GroundTruth,
    PsfSection,
    StackAsymmetry,
    ground_truth_from_finder,
    iter_measure_curves,
    iter_stack_asymmetry,
    psf_section,
)
from ..plotting import plot_asymmetry_scatter, plot_psf_profiles, plot_psf_section
from ._curves import StackPlotWidget, _stack_of, known_ground_truth

if TYPE_CHECKING:
    from collections.abc import Generator

    import napari
    from qtpy.QtWidgets import QWidget

__all__ = ["PsfAsymmetryWidget"]


def _asymmetry_of_stack(
    data: Any,
    *,
    focal_plane_index: float | None,
    truth: GroundTruth | None,
    z_step_um: float,
    channel_axis: int | None,
) -> Generator[Any, None, tuple[float, StackAsymmetry]]:
    """Find the focal plane if needed (Brenner finder), then compare ±d pairs."""
    if focal_plane_index is None:
        if truth is None:
            curves = yield from iter_measure_curves(
                data, ("brenner",), z_step_um=z_step_um, channel_axis=channel_axis
            )
            truth = ground_truth_from_finder(curves.results["brenner"], z_step_um)
        focal_plane_index = truth.focal_plane_index
    result = yield from iter_stack_asymmetry(
        data, focal_plane_index, z_step_um=z_step_um, channel_axis=channel_axis
    )
    return float(focal_plane_index), result


class PsfAsymmetryWidget(StackPlotWidget):
    """The PSF of the model's optics and the ±d asymmetry of a z-stack.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer.
    parent : QWidget, optional
        Parent widget.

    Attributes
    ----------
    psf : PsfSection
        The PSF section drawn (of :attr:`optics`).
    asymmetry : StackAsymmetry or None
        The last data comparison.
    focal_plane_index : float or None
        The focal plane it was taken around.
    """

    def __init__(self, viewer: napari.viewer.Viewer, *, parent: QWidget | None = None) -> None:
        super().__init__(viewer, 3, model_optional=True, parent=parent)
        self.figure.set_size_inches(5, 5)
        self.canvas.setMinimumSize(300, 380)
        self.d_spin = QDoubleSpinBox(self.controls)
        self.d_spin.setRange(0.25, 8.0)
        self.d_spin.setSingleStep(0.25)
        self.d_spin.setValue(2.0)
        self.d_spin.setSuffix(" µm")
        self.form.insertRow(2, "PSF profiles at ±d", self.d_spin)
        self.auto_focus = QCheckBox("auto", self.controls)
        self.auto_focus.setChecked(True)
        self.auto_focus.setToolTip("label file, simulation metadata, or the Brenner finder")
        self.focal_spin = QDoubleSpinBox(self.controls)
        self.focal_spin.setRange(0.0, 100000.0)
        self.focal_spin.setDecimals(2)
        self.focal_spin.setEnabled(False)
        row = QHBoxLayout()
        row.addWidget(self.auto_focus)
        row.addWidget(self.focal_spin, 1)
        self.form.insertRow(3, "Focal plane index", row)
        self.score_label = QLabel("", self.controls)
        self.score_label.setWordWrap(True)
        self.form.addRow(self.score_label)

        self.asymmetry: StackAsymmetry | None = None
        self.focal_plane_index: float | None = None
        self.psf: PsfSection = psf_section(self.optics)
        self.auto_focus.toggled.connect(lambda on: self.focal_spin.setEnabled(not on))
        self.d_spin.valueChanged.connect(self.redraw)
        self.redraw()

    def clear(self) -> None:
        """Create the PSF section and profile axes on top, the data scatter below."""
        self.figure.clear()
        self.axes = [
            self.figure.add_subplot(2, 2, 1),
            self.figure.add_subplot(2, 2, 2),
            self.figure.add_subplot(2, 1, 2),
        ]
        for ax in self.axes:
            self._theme(ax)

    @property
    def optics(self) -> Optics:
        """The model's optics, or the default ``Optics()`` without a model."""
        return self._model.optics if self._model is not None else Optics()

    def _on_model_changed(self) -> None:
        self.psf = psf_section(self.optics)
        self.redraw()

    def set_focal_plane(self, index: float | None) -> None:
        """Use a given focal plane index (``None``: find it automatically)."""
        self.auto_focus.setChecked(index is None)
        if index is not None:
            self.focal_spin.setValue(float(index))

    def run(self) -> None:
        """Compare the planes at ±d around the focal plane of the selected layer."""
        layer = self.layer
        if layer is None:
            self.status.setText("no z-stack Image layer")
            return
        try:
            data, channel_axis, z_step, _ = _stack_of(layer)
            truth, note = (
                (None, "given") if not self.auto_focus.isChecked() else (known_ground_truth(layer))
            )
        except (OSError, ValueError) as exc:
            self.status.setText(f"error: {exc}")
            return
        focal = None if self.auto_focus.isChecked() else float(self.focal_spin.value())
        self.asymmetry = None
        self.status.setText(f"{layer.name}: comparing planes at ±d (focal plane: {note})")
        gen = _asymmetry_of_stack(
            data,
            focal_plane_index=focal,
            truth=truth,
            z_step_um=z_step,
            channel_axis=channel_axis,
        )
        total = 6 + (int(data.shape[0]) if truth is None and focal is None else 0)
        self._start(
            gen, total=total, desc="asymmetry", on_yield=lambda _: None, on_return=self._on_done
        )

    def _on_done(self, result: tuple[float, StackAsymmetry]) -> None:
        self.focal_plane_index, self.asymmetry = result
        a = self.asymmetry
        self.score_label.setText(
            f"asymmetry A = {a.score:.3f} around plane {a.center_index} "
            "(0: images at +d and −d equal; 1: contrast inverted)"
        )
        self.status.setText(self.status.text() + " — done")
        self.redraw()

    def redraw(self, *_: Any) -> None:
        """Draw the PSF section, its ±d profiles and the data comparison."""
        self.clear()
        ax_xz, ax_prof, ax_data = self.axes
        p = self.psf
        plot_psf_section(ax_xz, p.x_um, p.defocus_um, p.intensity)
        ax_xz.set_title("PSF (XZ)", fontsize="small")
        d, plus, minus = p.profiles(float(self.d_spin.value()))
        plot_psf_profiles(ax_prof, p.x_um, plus, minus, d_um=d)
        ax_prof.set_title("PSF at ±d", fontsize="small")
        a = self.asymmetry
        if a is not None:
            plot_asymmetry_scatter(
                ax_data, a.samples_plus, a.samples_minus, a.offsets_um, scores=a.scores
            )
            ax_data.set_title(f"data: A = {a.score:.3f}", fontsize="small")
        else:
            ax_data.set_title("data: run on a z-stack", fontsize="small")
        self.draw()
