"""Physics properties of the depth-dependent pupil model."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sparsefocus.core import Optics
from napari_sparsefocus.core._psf import (
    best_focus_z_um,
    psf_2d,
    psf_radial,
    psf_xz,
    transfer_function_radial,
)

DEFAULT = Optics()
# every index equal to the (dry) immersion index: no spherical aberration at any depth
MATCHED = Optics(sample_index=1.0, coverslip_index=1.0, coverslip_index_design=1.0)
WL = 0.53


def test_radial_psf_has_unit_energy_at_any_defocus():
    for dz in (-15.0, -2.0, 0.0, 3.0, 20.0):
        r, inten = psf_radial(best_focus_z_um(6.0, DEFAULT) + dz, 6.0, WL, DEFAULT)
        dr = r[1] - r[0]
        assert np.sum(inten * 2 * np.pi * r) * dr == pytest.approx(1.0, rel=1e-9)
        assert np.all(inten >= 0)


def test_psf_2d_normalised_centred_and_captures_energy():
    z0 = best_focus_z_um(6.0, DEFAULT)
    p = psf_2d(z0, 6.0, WL, DEFAULT, size_px=65)
    assert p.sum() == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(p), p.shape) == (32, 32)
    # the 11 µm window holds almost all energy in focus: the radial integral agrees
    r, inten = psf_radial(z0, 6.0, WL, DEFAULT)
    inside = r <= 32 * DEFAULT.pixel_size_um
    dr = r[1] - r[0]
    assert np.sum((inten * 2 * np.pi * r)[inside]) * dr > 0.9
    with pytest.raises(ValueError, match="odd"):
        psf_2d(z0, size_px=64)


def test_transfer_functions_conserve_mean_intensity():
    for dz in (-10.0, 0.0, 10.0):
        f, ta, tp = transfer_function_radial(dz - 4.0, 6.0, WL, DEFAULT)
        assert f[0] == 0
        assert ta[0] == pytest.approx(1.0, abs=1e-9)
        # Im C(0) is 0 analytically; the quadrature truncates the PSF tail at r_max
        assert tp[0] == pytest.approx(0.0, abs=5e-3)
        assert np.all(np.abs(ta) <= 1.0 + 5e-3)  # no frequency gains contrast


def test_matched_indices_symmetric_about_focus():
    depth = 6.0
    z0 = best_focus_z_um(depth, MATCHED)
    assert z0 == pytest.approx(-depth, abs=0.02)  # no focal shift without mismatch
    for d in (1.0, 3.0, 8.0):
        plus = psf_2d(z0 + d, depth, WL, MATCHED, size_px=65)
        minus = psf_2d(z0 - d, depth, WL, MATCHED, size_px=65)
        assert np.abs(plus - minus).sum() < 1e-3 * plus.sum()


def test_matched_phase_transfer_is_antisymmetric_and_zero_in_focus():
    depth = 6.0
    z0 = best_focus_z_um(depth, MATCHED)
    _, _, tp0 = transfer_function_radial(z0, depth, WL, MATCHED, z_quantum_um=1e-4)
    _, ta_p, tp_p = transfer_function_radial(z0 + 2, depth, WL, MATCHED, z_quantum_um=1e-4)
    _, ta_m, tp_m = transfer_function_radial(z0 - 2, depth, WL, MATCHED, z_quantum_um=1e-4)
    assert np.abs(tp0).max() < 0.02
    assert np.abs(tp_p).max() > 0.1  # defocus makes phase visible...
    np.testing.assert_allclose(tp_p, -tp_m, atol=0.02)  # ...with opposite contrast each side
    np.testing.assert_allclose(ta_p, ta_m, atol=0.02)


def test_default_mismatch_is_asymmetric_about_focus():
    depth = DEFAULT.specimen_depth_um
    z0 = best_focus_z_um(depth, DEFAULT)
    for d in (1.0, 3.0, 8.0):
        plus = psf_2d(z0 + d, depth, WL, DEFAULT, size_px=129)
        minus = psf_2d(z0 - d, depth, WL, DEFAULT, size_px=129)
        rel = np.abs(plus - minus).sum() / plus.sum()
        assert rel > 0.08, (d, rel)
    # and the phase transfer function is no longer antisymmetric
    _, _, tp_p = transfer_function_radial(z0 + 3, depth, WL, DEFAULT, z_quantum_um=1e-4)
    _, _, tp_m = transfer_function_radial(z0 - 3, depth, WL, DEFAULT, z_quantum_um=1e-4)
    assert np.abs(tp_p + tp_m).max() > 0.05


def test_focal_shift_grows_with_depth_under_mismatch():
    shifts = []
    for depth in (2.0, 6.0, 15.0):
        z0 = best_focus_z_um(depth, DEFAULT)
        # between the nominal plane (-depth) and beyond the paraxial apparent depth
        assert -depth < z0 < 0
        shifts.append(z0 + depth)
    assert shifts[0] < shifts[1] < shifts[2]


def test_psf_xz_rows_match_psf_2d():
    z = [-8.0, -3.0, 2.0]
    xz = psf_xz(z, 6.0, WL, DEFAULT, size_px=33)
    assert xz.shape == (3, 33)
    np.testing.assert_allclose(xz[1], psf_2d(-3.0, 6.0, WL, DEFAULT, size_px=33)[16])


# ------------------------------------------------------------ cross-check
def _psfmodels_axial(depth: float, zv: np.ndarray) -> np.ndarray:
    pm = pytest.importorskip("psfmodels")  # GPL-3.0: test-only dependency
    o = DEFAULT
    ps = pm.make_psf(
        zv,
        nx=33,
        dxy=0.05,
        pz=depth,
        NA=o.na,
        wvl=WL,
        ns=o.sample_index,
        ni=o.immersion_index,
        ni0=o.immersion_index_design,
        ng=o.coverslip_index,
        ng0=o.coverslip_index_design,
        tg=o.coverslip_thickness_um,
        tg0=o.coverslip_thickness_design_um,
        ti0=o.working_distance_um,
        model="scalar",
        normalize=False,
    )
    return ps[:, 16, 16] / ps[:, 16, 16].max()


@pytest.mark.parametrize("depth", [6.0, 15.0])
def test_axial_profile_agrees_with_gibson_lanni_psfmodels(depth):
    """Our Hankel-quadrature pupil model against psfmodels' scalar Gibson-Lanni.

    psfmodels' z axis points into the specimen (objective moving towards it),
    ours away from it, so the physical mapping is ``z_ours = -z_theirs + c``.
    Tolerance: both are scalar GL models of the same optics, differing only in
    quadrature and sampling, so the peak-normalised axial profiles must agree
    to within 1 % RMS over ±8 µm — and much worse (≥ 4x) if the asymmetry
    were mirrored, which is what makes this a test of its direction.
    """
    zv = np.arange(-15, 25.001, 0.05)
    theirs = _psfmodels_axial(depth, zv)
    zm = np.arange(-30, 10.001, 0.05)
    mine = np.array([psf_radial(z, depth, WL, DEFAULT)[1][0] for z in zm])
    mine /= mine.max()
    zt, zp = zv[np.argmax(theirs)], zm[np.argmax(mine)]
    u = np.arange(-8, 8.001, 0.05)
    t = np.interp(zt + u, zv, theirs)

    def best_rms(sign: int) -> float:
        return min(
            float(np.sqrt(np.mean((t - np.interp(zp + sign * u + s, zm, mine)) ** 2)))
            for s in np.arange(-0.3, 0.31, 0.01)
        )

    physical, mirrored = best_rms(-1), best_rms(+1)
    assert physical < 0.01
    assert mirrored > 4 * physical


def test_defocused_radial_profiles_agree_with_psfmodels():
    """±z radial profiles 3 µm either side of the axial peak (same mapping)."""
    pm = pytest.importorskip("psfmodels")
    o, depth, u = DEFAULT, 6.0, 3.0
    zv = np.arange(-10, 20.001, 0.02)
    zt = zv[np.argmax(_psfmodels_axial(depth, zv))]
    zm = np.arange(-8, 0.001, 0.02)
    zp = zm[np.argmax([psf_radial(z, depth, WL, o)[1][0] for z in zm])]
    dxy, nx = 0.1, 161
    kw = {
        "nx": nx,
        "dxy": dxy,
        "pz": depth,
        "NA": o.na,
        "wvl": WL,
        "ns": o.sample_index,
        "ni": 1.0,
        "ni0": 1.0,
        "ng": o.coverslip_index,
        "ng0": o.coverslip_index_design,
        "tg": 170,
        "tg0": 170,
        "ti0": o.working_distance_um,
        "model": "scalar",
        "normalize": False,
    }
    theirs = pm.make_psf([zt - u, zt + u], **kw)
    profiles_t = [p[nx // 2, nx // 2 :] / p.sum() for p in theirs]
    mine = [
        psf_2d(zp + u, depth, WL, o, size_px=nx, pixel_size_um=dxy),
        psf_2d(zp - u, depth, WL, o, size_px=nx, pixel_size_um=dxy),
    ]
    profiles_m = [p[nx // 2, nx // 2 :] for p in mine]
    for t, m in zip(profiles_t, profiles_m, strict=True):
        assert np.abs(t - m).max() < 0.1 * t.max()
    # the two sides differ, and in the same way in both models
    dt = profiles_t[0] - profiles_t[1]
    dm = profiles_m[0] - profiles_m[1]
    assert np.corrcoef(dt, dm)[0, 1] > 0.9


def test_thinner_coverslip_compensates_mount_depth_and_focus_is_found_far_away():
    """10 µm of mount (n 1.52) under a 160 µm coverslip (n 1.522) is optically
    almost the designed 170 µm of glass: the spherical aberration cancels and the
    PSF is symmetric again; a 150 µm coverslip over-compensates (opposite-sign SA).
    The best focus is found far from the default's (here ~+6 µm, not ~-6 µm)."""
    from napari_sparsefocus.core._psf import paraxial_focus_z_um

    comp = Optics(coverslip_thickness_um=160.0)
    over = Optics(coverslip_thickness_um=150.0)
    d = 10.0
    z_comp = best_focus_z_um(d, comp)
    assert z_comp == pytest.approx(paraxial_focus_z_um(d, comp), abs=0.1)
    plus = psf_2d(z_comp + 3, d, WL, comp, size_px=65)
    minus = psf_2d(z_comp - 3, d, WL, comp, size_px=65)
    assert np.abs(plus - minus).sum() < 0.01 * plus.sum()
    z_over = best_focus_z_um(d, over)
    assert z_over > 4.0  # the global peak, ~12 µm above the default's focus
    assert z_over == pytest.approx(-best_focus_z_um(d, DEFAULT), abs=0.2)  # mirror image


@pytest.mark.parametrize("channel", [0, 2])
def test_each_colour_comes_to_focus_at_its_axial_chromatic_shift(channel):
    # the sharpest plane of a colour sits Δz(λ) from the reference colour's
    wl = DEFAULT.wavelengths_um[channel]
    ref = best_focus_z_um(6.0, DEFAULT)
    shift = best_focus_z_um(6.0, DEFAULT, wavelength_um=wl) - ref
    assert shift == pytest.approx(DEFAULT.chromatic_focus_shift_um(wl), abs=0.1)
    # an apochromat brings every colour to (almost) the same focus
    apo = DEFAULT.replace(axial_chromatic_um=(0.0, 0.0))
    apo_shift = best_focus_z_um(6.0, apo, wavelength_um=wl) - best_focus_z_um(6.0, apo)
    assert abs(apo_shift) < 0.25 * abs(shift)
    assert best_focus_z_um(6.0, apo) == pytest.approx(ref, abs=1e-6)
