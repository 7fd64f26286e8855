"""The main job: napari with the sample stack, the bundled model, the widgets and a microscope.

``sparsefocus demo`` (``make demo``) opens a viewer with the simulated sparse
cytology z-stack, docks the focus-analysis widgets with the bundled default
model and analyses the shown plane. It also docks the Microscope widget,
connected to the simulated microscope and live on a sparse site beside the
stack, 6 µm out of focus (press Refocus). Without a display it stops with a
message naming what is missing (it works under ``xvfb-run``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import napari

__all__ = ["DEMO_DEFOCUS_UM", "DEMO_PLANE", "build_demo_viewer", "missing_display", "run_demo"]

#: Plane shown first: +4 µm on the sample's −10 … +10 µm stack.
DEMO_PLANE = 14
#: Defocus the simulated microscope starts at (µm, ``z - z_focus``).
DEMO_DEFOCUS_UM = 6.0


def missing_display(environ: dict[str, str] | None = None) -> str | None:
    """Return why no window can be shown here, or ``None`` when one can.

    Parameters
    ----------
    environ : dict, optional
        Environment to inspect (default ``os.environ``).

    Returns
    -------
    str or None
        A message naming what is missing.
    """
    env = os.environ if environ is None else environ
    if env.get("QT_QPA_PLATFORM", "") in ("offscreen", "minimal"):
        return (
            f"QT_QPA_PLATFORM={env['QT_QPA_PLATFORM']} cannot show napari's canvas; unset it and "
            "run under a display or `xvfb-run -a sparsefocus demo`"
        )
    if sys.platform.startswith("linux") and not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")):
        return (
            "no display: neither DISPLAY nor WAYLAND_DISPLAY is set. Run it on a desktop, over "
            "`ssh -X`, or headless under Xvfb: `xvfb-run -a sparsefocus demo` (Debian: "
            "apt-get install xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0). "
            "`sparsefocus demo --text` prints the focus analysis without a window."
        )
    return None


def rerun_under_xvfb(marker: str = "_SF_XVFB") -> None:
    """Re-run this Python command under ``xvfb-run`` when there is no display.

    For scripts that need napari's canvas (benchmarks, screenshots). Returns
    when a display is there (or this already is the re-run, flagged by the
    ``marker`` environment variable); otherwise exits with the re-run's status.
    ``QT_QPA_PLATFORM`` is dropped: napari's canvas renders only on an X server.

    Parameters
    ----------
    marker : str
        Environment variable set in the re-run.

    Raises
    ------
    SystemExit
        After the re-run, or when neither a display nor ``xvfb-run`` exists.
    """
    if os.environ.get("DISPLAY") or os.environ.get(marker):
        return
    exe = shutil.which("xvfb-run")
    if exe is None:
        raise SystemExit("no display and no xvfb-run (apt-get install xvfb xauth)")
    env = {**os.environ, marker: "1"}
    env.pop("QT_QPA_PLATFORM", None)
    cmd = [exe, "-a", "-s", "-screen 0 1600x1000x24", sys.executable, *sys.argv]
    raise SystemExit(subprocess.call(cmd, env=env))


def build_demo_viewer(
    viewer: napari.Viewer | None = None, *, model: Any = None, microscope: bool = True
) -> tuple[napari.Viewer, dict[str, Any]]:
    """Open the sample stack and dock the analysis widgets, analysis started.

    Parameters
    ----------
    viewer : napari.Viewer, optional
        Viewer to use (default: a new, shown one).
    model : SparseFocusModel, optional
        Model for the widgets (default: the bundled one).
    microscope : bool
        Also dock the Microscope widget, connected to the simulated
        microscope and live (see :func:`_dock_microscope`).

    Returns
    -------
    viewer : napari.Viewer
        The viewer.
    widgets : dict
        Docked widgets by name (``"Focus analysis"``, …, ``"Microscope"``).
    """
    import napari

    from napari_sparsefocus.core.nn import load_model
    from napari_sparsefocus.io._sample_data import sample_sparse_cells
    from napari_sparsefocus.widgets._analysis import FocusAnalysisWidget
    from napari_sparsefocus.widgets._curves import FocusCurvesWidget
    from napari_sparsefocus.widgets._labels import LabelCorrectionWidget
    from napari_sparsefocus.widgets._measures import FocusMeasuresWidget
    from napari_sparsefocus.widgets._psf_asymmetry import PsfAsymmetryWidget

    if viewer is None:
        viewer = napari.Viewer(title="napari-sparsefocus demo")
    data, kwargs, _ = sample_sparse_cells()[0]
    layer = viewer.add_image(data, **kwargs)
    viewer.dims.set_current_step(0, DEMO_PLANE)
    model = load_model() if model is None else model

    analysis = FocusAnalysisWidget(viewer)
    analysis.set_layer(layer)
    analysis.set_model(model)
    curves = FocusCurvesWidget(viewer)
    curves.set_layer(layer)
    curves.set_model(model, "bundled default")
    measures = FocusMeasuresWidget(viewer)
    measures.set_layer(layer)
    widgets: dict[str, Any] = {
        "Focus analysis": analysis,
        "Focus curves": curves,
        "Focus measures": measures,
        "PSF asymmetry": PsfAsymmetryWidget(viewer),
        "Label correction": LabelCorrectionWidget(viewer),
    }
    for i, (name, w) in enumerate(widgets.items()):
        viewer.window.add_dock_widget(w, name=name, area="right", tabify=i > 1)
    analysis.analyse_plane()
    if microscope:
        widgets["Microscope"] = _dock_microscope(viewer, model, layer)
    return viewer, widgets


def _dock_microscope(viewer: napari.Viewer, model: Any, stack: Any) -> Any:
    """Dock the Microscope widget on the simulated microscope, live beside ``stack``.

    The stage goes to the sparse site nearest to the right of the sample
    stack (live frames are placed at the stage position in µm), at
    :data:`DEMO_DEFOCUS_UM`; the view is reset once the first frame is shown.
    """
    import math

    from napari_sparsefocus.widgets._microscope import LIVE_LAYER, MicroscopeWidget

    widget = MicroscopeWidget(viewer)
    widget.set_model(model)
    scope = widget.connect_simulated(0)
    slide = scope.slide
    half = slide.field_shape_px[1] * slide.pixel_size_um / 2
    right = float(stack.extent.world[1][-1])  # the stack's right edge (µm)
    mid_y = float(stack.extent.world[:, -2].mean())
    target = (right + half, mid_y)
    beside = [s for s in slide.sites() if s.sparsity != "empty" and s.x_um - half >= right]

    def distance(s: Any) -> float:
        sparse = s.sparsity in ("sparse", "extremely_sparse")
        return math.hypot(s.x_um - target[0], s.y_um - target[1]) - (600.0 if sparse else 0.0)

    site = min(beside, key=distance)
    scope.move_to_site(site, z_um=slide.z_focus_um(site.x_um, site.y_um) + DEMO_DEFOCUS_UM)

    def on_inserted(event: Any) -> None:
        if event.value.name == LIVE_LAYER:
            viewer.layers.events.inserted.disconnect(on_inserted)
            viewer.reset_view()

    viewer.layers.events.inserted.connect(on_inserted)
    dock = viewer.window.add_dock_widget(widget, name="Microscope", area="right", tabify=True)
    dock.raise_()
    widget.set_live(True)
    return widget


def run_demo(*, microscope: bool = True) -> None:
    """Open the demo viewer and run napari's event loop (check :func:`missing_display` first).

    Parameters
    ----------
    microscope : bool
        Also dock the Microscope widget on the simulated microscope, live.
    """
    import napari

    build_demo_viewer(microscope=microscope)
    napari.run()
