"""Make the user-guide screenshots in docs/images/ (napari under Xvfb, bundled model).

Run: ``xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/make-screenshots.py``
(it re-runs itself under xvfb-run when no display is set). ``--microscope`` makes only the
Microscope widget's screenshots.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from napari_sparsefocus._demo import rerun_under_xvfb

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"


def _waiters(app):
    def wait(cond, timeout_s=600.0):
        t0 = time.perf_counter()
        while not cond():
            app.processEvents()
            time.sleep(0.01)
            if time.perf_counter() - t0 > timeout_s:
                raise TimeoutError

    def settle(seconds=1.0):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            app.processEvents()
            time.sleep(0.01)

    return wait, settle


def microscope_shots(app) -> None:
    """The Microscope widget on the simulated microscope: live + overlay + refocus, focus map."""
    import napari

    from napari_sparsefocus.widgets._microscope import MicroscopeWidget

    wait, settle = _waiters(app)
    viewer = napari.Viewer(title="napari-sparsefocus microscope", show=True)
    viewer.window.resize(1500, 950)
    widget = MicroscopeWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Microscope", area="right")
    scope = widget.connect_simulated(0)
    site = min(scope.slide.sites("sparse"), key=lambda s: s.x_um**2 + s.y_um**2)
    scope.move_to_site(site, z_um=scope.slide.z_focus_um(site.x_um, site.y_um) + 6.0)
    widget.snap()
    wait(lambda: widget.prediction is not None and not widget.busy)
    widget.refocus()
    wait(lambda: widget.refocus_results and not widget.busy)
    wait(lambda: not widget.busy)  # the overlay of the refocused frame
    widget.tabs.setCurrentIndex(1)
    viewer.reset_view()
    settle()
    viewer.screenshot(str(OUT / "microscope-refocus.png"), canvas_only=False)
    print("wrote", OUT / "microscope-refocus.png")
    widget.set_focus_map_method("both")
    widget.tabs.setCurrentIndex(2)
    widget.run_focus_map()
    wait(lambda: len(widget.focus_map_results) == 2 and not widget.busy)
    for layer in viewer.layers:
        layer.visible = layer.name in ("focus error (one-shot)", "focus-map tiles (one-shot)")
    viewer.reset_view()
    settle()
    viewer.screenshot(str(OUT / "microscope-focus-map.png"), canvas_only=False)
    print("wrote", OUT / "microscope-focus-map.png")
    viewer.close()


def main() -> None:
    rerun_under_xvfb()
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_sparsefocus._demo import build_demo_viewer
    from napari_sparsefocus.io import write_stack

    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance() or QApplication([])
    if "--microscope" in sys.argv:
        microscope_shots(app)
        return
    wait, settle = _waiters(app)

    viewer, widgets = build_demo_viewer(microscope=False)
    viewer.window.resize(1500, 950)
    analysis = widgets["Focus analysis"]
    wait(lambda: analysis.prediction is not None and not analysis.busy)
    settle()
    viewer.screenshot(str(OUT / "focus-analysis.png"), canvas_only=False)
    shots = {
        "Focus curves": "focus-curves.png",
        "Focus measures": "focus-measures.png",
        "PSF asymmetry": "psf-asymmetry.png",
    }
    for name, file in shots.items():
        w = widgets[name]
        w.run()
        settle(0.5)
        wait(lambda w=w: not getattr(w, "is_running", lambda: False)())
        w.parentWidget().raise_()
        settle()
        w.grab().save(str(OUT / file))
        print("wrote", OUT / file)

    # label correction on a stack written to a real OME-TIFF
    layer = viewer.layers[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sparse_cells.ome.tif"
        px = float(layer.scale[-1])
        write_stack(path, layer.data, z_step_um=float(layer.scale[0]), pixel_size_um=px, rgb=True)
        labels = widgets["Label correction"]
        labels.open(path)
        wait(lambda: not labels.busy)
        labels.set_focal_plane_here()
        settle()
        labels.parentWidget().raise_()
        settle()
        viewer.screenshot(str(OUT / "label-correction.png"), canvas_only=False)
    print("wrote", OUT)
    viewer.close()
    microscope_shots(app)


if __name__ == "__main__":
    main()
