"""PSF-asymmetry widget in a real napari viewer (pytest-xvfb)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_sparsefocus import Optics, simulate_stack
from napari_sparsefocus.core._stack_analysis import iter_stack_asymmetry, psf_section
from napari_sparsefocus.widgets._psf_asymmetry import PsfAsymmetryWidget

TIMEOUT_MS = 60_000


def _symmetric_stack():
    rng = np.random.default_rng(0)
    base = ndimage.gaussian_filter(rng.random((128, 128)), 1.0) * 200 + 20
    return np.stack([ndimage.gaussian_filter(base, 0.3 + 1.2 * abs(i - 4)) for i in range(9)])


def _widget(viewer):
    widget = PsfAsymmetryWidget(viewer)
    viewer.window.add_dock_widget(widget, name="PSF asymmetry")
    return widget


def _run(qtbot, widget):
    widget.run()
    qtbot.waitUntil(lambda: widget.run_button.isEnabled(), timeout=TIMEOUT_MS)
    assert widget.asymmetry is not None, widget.status.text()


def test_psf_of_model_optics(make_napari_viewer, tiny_model):
    viewer = make_napari_viewer(show=True)
    widget = _widget(viewer)
    ref = psf_section(Optics())
    np.testing.assert_allclose(widget.psf.intensity, ref.intensity)
    image = widget.axes[0].get_images()[0]
    assert np.asarray(image.get_array()).shape == ref.intensity.shape
    widget.d_spin.setValue(3.0)
    plus, minus = widget.axes[1].get_lines()[:2]
    _, p_ref, m_ref = ref.profiles(3.0)
    np.testing.assert_allclose(plus.get_ydata(), p_ref)
    np.testing.assert_allclose(minus.get_ydata(), m_ref)
    assert not np.allclose(p_ref, m_ref)  # the default optics are asymmetric
    deeper = tiny_model.optics.replace(specimen_depth_um=20.0)
    tiny_model.optics = deeper
    widget.set_model(tiny_model)
    np.testing.assert_allclose(widget.psf.intensity, psf_section(deeper).intensity)


def test_symmetric_stack_scores_zero(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    stack = _symmetric_stack()
    viewer.add_image(stack, scale=(0.5, 1.0, 1.0), name="sym")
    widget = _widget(viewer)
    _run(qtbot, widget)  # focal plane from the Brenner finder
    assert widget.focal_plane_index == pytest.approx(4.0, abs=0.5)
    assert widget.asymmetry.center_index == 4
    assert widget.asymmetry.score < 1e-9
    widget.set_focal_plane(4)
    _run(qtbot, widget)
    assert widget.focal_plane_index == 4.0
    assert widget.asymmetry.score < 1e-9
    assert len(widget.axes[2].collections) == widget.asymmetry.offsets.size


def test_default_optics_stack_is_asymmetric(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    z = np.arange(-4.0, 4.01, 1.0)
    sim = simulate_stack("tissue", "dense", z_um=z, shape_px=(448, 448), seed=5)
    meta = {"defocus_um": [float(v) for v in sim.defocus_um]}
    px = sim.pixel_size_um
    viewer.add_image(sim.images, rgb=True, scale=(1.0, px, px), metadata=meta, name="sim")
    widget = _widget(viewer)
    _run(qtbot, widget)  # focal plane from the simulation metadata: plane 4
    assert widget.focal_plane_index == pytest.approx(4.0)
    gen = iter_stack_asymmetry(sim.images, 4.0, channel_axis=-1)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            ref = stop.value
            break
    np.testing.assert_allclose(widget.asymmetry.scores, ref.scores)
    assert widget.asymmetry.score > 0.05
    assert f"{ref.score:.3f}" in widget.score_label.text()
    # scatter: x = pixel values at -d, y = at +d
    offsets = widget.axes[2].collections[0].get_offsets()
    np.testing.assert_allclose(offsets[:, 0], ref.samples_minus[0])
    np.testing.assert_allclose(offsets[:, 1], ref.samples_plus[0])
