from __future__ import annotations

import pytest

from napari_sparsefocus import Optics


def test_default_is_the_paper_like_scanner():
    o = Optics()
    assert o.pixel_size_um == pytest.approx(3.45 / 20)
    # DoF = λn/NA² + n e/(M NA) by hand for λ=0.53, n=1, NA=0.75, e=3.45, M=20
    assert o.dof_um == pytest.approx(0.53 / 0.5625 + 3.45 / 15)
    assert o.n_channels == 3


def test_dof_scales_with_immersion_index_and_na():
    o = Optics()
    assert Optics(na=0.5, condenser_na=0.4).dof_um > o.dof_um
    wet = Optics(immersion_index=1.33, immersion_index_design=1.33, na=0.75)
    assert wet.dof_um == pytest.approx(1.33 * o.dof_um)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("na", 0.0),
        ("na", 1.2),  # NA above the dry immersion index
        ("magnification", -20),
        ("camera_pixel_size_um", float("nan")),
        ("sample_index", 0.9),
        ("coverslip_thickness_um", -1.0),
        ("condenser_na", 0.9),
        ("wavelengths_um", ()),
        ("wavelengths_um", (5.0,)),
        ("bit_depth", 0),
        ("axial_chromatic_um", (1.0,)),
        ("axial_chromatic_um", (float("inf"), 0.0)),
    ],
)
def test_impossible_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        Optics(**{field: value})


def test_round_trip_dict():
    o = Optics(na=0.5, condenser_na=0.4, wavelengths_um=(0.55,))
    assert Optics.from_dict(o.to_dict()) == o
    with pytest.raises(ValueError, match="Unknown"):
        Optics.from_dict({"nope": 1})


def test_axial_chromatic_shift_is_zero_at_the_reference_and_signed():
    o = Optics()
    assert o.chromatic_focus_shift_um(o.reference_wavelength_um) == 0.0
    red, green, blue = (o.chromatic_focus_shift_um(w) for w in o.wavelengths_um)
    # the default objective: red focuses lower, blue higher than green, ~1.5 µm apart
    assert red < green < blue
    assert 1.2 < blue - red < 2.0
    apo = Optics(axial_chromatic_um=(0.0, 0.0))
    assert all(apo.chromatic_focus_shift_um(w) == 0.0 for w in apo.wavelengths_um)
    # by hand: a (λ - λr)/0.1 + b((λ - .55)² - (λr - .55)²)/0.01 with λr = 0.53
    lin = Optics(axial_chromatic_um=(-2.0, 1.0))
    assert lin.chromatic_focus_shift_um(0.63) == pytest.approx(-2.0 + (0.0064 - 0.0004) / 0.01)
    rt = Optics.from_dict(lin.to_dict())
    assert rt == lin and rt.axial_chromatic_um == (-2.0, 1.0)
