"""Image formation details: mean conservation, radial mirroring, camera model."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sparsefocus.core import Optics, Specimen, SpecimenLayer, transfer_function_radial
from napari_sparsefocus.core._render import Camera, Renderer, _mul_radial, _on_grid, _radial_index

OPT = Optics()


def _specimen(stains: np.ndarray, phase: np.ndarray | None = None) -> Specimen:
    shape = stains.shape[1:]
    layer = SpecimenLayer(
        depth_offset_um=0.0,
        stains=stains.astype(np.float32),
        phase_rad=np.zeros(shape, np.float32) if phase is None else phase.astype(np.float32),
    )
    return Specimen(
        kind="tissue",
        sparsity="dense",
        seed=0,
        split="test",
        pixel_size_um=OPT.pixel_size_um,
        shape_px=shape,
        patch_px=224,
        layers=(layer,),
        stain_names=("hematoxylin",),
        stain_peaks_um=(0.585,),
        stain_widths_um=(0.075,),
        content_fraction=np.ones((shape[0] // 224, shape[1] // 224), np.float32),
        importance=np.ones((shape[0] // 224, shape[1] // 224), np.float32),
    )


def test_uniform_absorber_obeys_beer_lambert_at_any_defocus():
    conc = np.full((1, 224, 224), 0.3)
    spec = _specimen(conc)
    r = Renderer(spec, OPT)
    expected = 10.0 ** (-0.3 * spec.extinction(OPT.wavelengths_um)[0])  # (C,)
    for z in (-20.0, -7.0, 0.0, 9.0):
        img = r.intensity(z)
        np.testing.assert_allclose(img.mean(axis=(1, 2)), expected, rtol=1e-4)
        np.testing.assert_allclose(img.std(axis=(1, 2)), 0.0, atol=1e-5)


def test_mean_absorption_is_conserved_by_defocus():
    rng = np.random.default_rng(0)
    conc = np.zeros((1, 448, 448))
    conc[0, 100:300, 150:260] = rng.uniform(0.01, 0.05, size=(200, 110))
    r = Renderer(_specimen(conc), OPT)
    means = [r.optical_density_exponent(z).mean(axis=(1, 2)) for z in (-15.0, -6.0, 3.0, 15.0)]
    for m in means[1:]:
        np.testing.assert_allclose(m, means[0], rtol=1e-3)


@pytest.mark.parametrize("shape", [(64, 50), (65, 51)])
def test_radial_mirroring_matches_a_full_grid_lookup(shape):
    f, ta, _ = transfer_function_radial(3.0, 10.0, 0.53, OPT)
    t_half = _on_grid(f, ta, _radial_index(shape, OPT.pixel_size_um, float(f[-1])))
    fy = np.fft.fftfreq(shape[0], d=OPT.pixel_size_um)
    fx = np.fft.rfftfreq(shape[1], d=OPT.pixel_size_um)
    fr = np.hypot(fy[:, None], fx[None, :])
    full = np.where(fr < f[-1], np.interp(fr, f, ta), 0.0)
    spec = np.ones((shape[0], shape[1] // 2 + 1), np.complex64)
    out = np.empty_like(spec)
    _mul_radial(spec, t_half, out, accumulate=False)
    np.testing.assert_allclose(out.real, full, atol=3e-3)


def test_camera_quantises_clips_and_keeps_a_fixed_pattern():
    cam = Camera(OPT, prnu=0.01, seed=3)
    flat = np.full((3, 64, 64), 1.0, np.float32)
    a = cam.expose(flat, None, noise=False)
    b = cam.expose(flat, None, noise=False)
    assert a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)  # fixed pattern, not noise
    assert 0 < a.std() < 5
    bright = cam.expose(np.full((3, 8, 8), 5.0, np.float32), None, noise=False)
    assert bright.max() == OPT.max_adu  # clipped, not wrapped
    with pytest.raises(ValueError, match="rng"):
        cam.expose(flat, None, noise=True)
    with pytest.raises(ValueError, match="prnu"):
        Camera(OPT, prnu=0.5)
    assert Camera(Optics(bit_depth=12)).expose(flat, None, noise=False).dtype == np.uint16
