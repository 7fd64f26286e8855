"""Base widget for matplotlib plots docked in napari (napari-matplotlib style)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from matplotlib.backends.backend_qt import NavigationToolbar2QT
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtWidgets import QVBoxLayout, QWidget

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["MplCanvasWidget"]

# napari's dark theme colours
_BG = "#262930"
_FG = "#f0f1f2"


class MplCanvasWidget(QWidget):
    """A ``QWidget`` owning one matplotlib figure, its canvas and a toolbar.

    Subclasses draw with plain functions that take an ``Axes`` (see
    :mod:`napari_sparsefocus.plotting`), between :meth:`clear` and :meth:`draw`.

    Parameters
    ----------
    n_axes : int
        Axes created side by side (``self.axes``).
    parent : QWidget, optional
        Parent widget.
    """

    def __init__(self, n_axes: int = 1, *, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.figure = Figure(figsize=(5, 3.5), layout="constrained", facecolor=_BG)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.toolbar = NavigationToolbar2QT(self.canvas, self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.toolbar)
        layout.addWidget(self.canvas)
        self.n_axes = int(n_axes)
        self.axes: list[Axes] = []
        self.clear()

    def clear(self) -> None:
        """Remove everything and create fresh, themed axes."""
        self.figure.clear()
        self.axes = [self.figure.add_subplot(1, self.n_axes, i + 1) for i in range(self.n_axes)]
        for ax in self.axes:
            self._theme(ax)

    @staticmethod
    def _theme(ax: Axes) -> None:
        ax.set_facecolor(_BG)
        for spine in ax.spines.values():
            spine.set_color(_FG)
        ax.tick_params(colors=_FG)
        ax.xaxis.label.set_color(_FG)
        ax.yaxis.label.set_color(_FG)
        ax.title.set_color(_FG)

    def draw(self) -> None:
        """Re-theme the axes (labels set since :meth:`clear`) and redraw the canvas."""
        for ax in self.figure.axes:
            self._theme(ax)
            legend = ax.get_legend()
            if legend is not None:
                legend.get_frame().set_facecolor(_BG)
                for text in legend.get_texts():
                    text.set_color(_FG)
        self.canvas.draw_idle()
