"""Simulator: labels, determinism, physics seen in rendered images, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sparsefocus import Optics, simulate_stack
from napari_sparsefocus.core import (
    DEFAULT_DEFOCUS_UM,
    PatchSampler,
    brenner,
    find_focal_plane,
    focus_curve,
    simulate_field,
    sparsity_from_count,
)

SMALL = (448, 448)


def test_default_z_grid_is_the_papers():
    assert len(DEFAULT_DEFOCUS_UM) == 101
    assert DEFAULT_DEFOCUS_UM[0] == -25 and DEFAULT_DEFOCUS_UM[-1] == 25
    np.testing.assert_allclose(np.diff(DEFAULT_DEFOCUS_UM), 0.5)


def test_stack_shapes_labels_and_metadata():
    s = simulate_stack("cell", "sparse", z_um=[-3.0, 0.0, 2.5], shape_px=(672, 448), seed=3)
    assert s.images.shape == (3, 672, 448, 3)
    assert s.images.dtype == np.uint8
    np.testing.assert_array_equal(s.defocus_um, [-3.0, 0.0, 2.5])
    np.testing.assert_allclose(s.stage_z_um - s.z_focus_um, s.defocus_um)
    assert s.importance.shape == (3, 2)
    assert set(np.unique(s.importance)) <= {0.0, 1.0}
    assert s.z_step_um is None  # uneven planes
    md = s.to_metadata()
    assert md["defocus_um"] == [-3.0, 0.0, 2.5]
    assert md["optics"] == Optics().to_dict()
    assert np.asarray(md["importance"]).shape == (3, 2)


def test_deterministic_by_seed_and_split():
    kw = {"z_um": [1.0], "shape_px": SMALL}
    a = simulate_stack("tissue", "sparse", seed=1, **kw)
    b = simulate_stack("tissue", "sparse", seed=1, **kw)
    np.testing.assert_array_equal(a.images, b.images)
    c = simulate_stack("tissue", "sparse", seed=2, **kw)
    d = simulate_stack("tissue", "sparse", seed=1, split="train", **kw)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.images, d.images)


def test_noise_free_render_is_smooth_and_noise_is_shot_limited():
    clean = simulate_stack("cell", "empty", z_um=[0.0], shape_px=SMALL, noise=False).images[0]
    noisy = simulate_stack("cell", "empty", z_um=[0.0], shape_px=SMALL).images[0]
    diff = noisy.astype(float) - clean.astype(float)
    o = Optics()
    # expected shot+read noise in ADU at the background level of each channel
    electrons = clean.astype(float).mean(axis=(0, 1)) * o.full_well_e / o.max_adu
    expected = np.sqrt(electrons + o.read_noise_e**2) * o.max_adu / o.full_well_e
    measured = diff.std(axis=(0, 1))
    np.testing.assert_allclose(measured, np.sqrt(expected**2 + 1 / 12), rtol=0.15)


def _brenner_curve(kind, sparsity, z, seed=0, shape=SMALL):
    s = simulate_stack(kind, sparsity, z_um=z, shape_px=shape, seed=seed)
    return s, focus_curve(s.images, "brenner", channel_axis=-1)


@pytest.mark.parametrize("kind", ["cell", "tissue"])
def test_sharpness_peaks_at_focus_and_falls_with_defocus_on_dense_content(kind):
    z = np.arange(-8.0, 8.01, 1.0)
    s, curve = _brenner_curve(kind, "dense", z)
    res = find_focal_plane(s.images, z_um=z, channel_axis=-1)
    assert res.trustworthy
    assert abs(res.z_um) <= 0.5 * Optics().dof_um + 0.25
    peak = int(np.argmax(curve))
    # falls monotonically away from the peak on both sides beyond one step
    assert np.all(np.diff(curve[:peak]) > 0)
    assert np.all(np.diff(curve[peak + 1 :]) < 0)


def _content_sharpness(fld, dz):
    """Mean Brenner of the noise-free grid cells holding content, at defocus `dz`."""
    img = fld.snap_defocus(dz, noise=False).astype(float)
    p = 224
    vals = [
        brenner(img[r * p : (r + 1) * p, c * p : (c + 1) * p], channel_axis=-1)
        for r, c in np.argwhere(fld.content_fraction > 0)
    ]
    return float(np.mean(vals))


@pytest.mark.parametrize(
    ("kind", "sparsity"),
    [("cell", "sparse"), ("tissue", "dense"), ("tissue", "extremely_sparse")],
)
def test_focus_label_is_the_sharpest_plane_of_the_content(kind, sparsity):
    """z_focus_um is the Brenner peak of the content cells (as a z-stack labeller picks it)."""
    fld = simulate_field(kind, sparsity, seed=4, shape_px=SMALL)
    at_label = _content_sharpness(fld, 0.0)
    for dz in (-0.6, -0.3, -0.15, 0.15, 0.3, 0.6):
        assert _content_sharpness(fld, dz) < at_label, dz
    # the search starts from the layers' mean focus; it is a real search, not a copy
    assert np.isfinite(fld.layer_focus_um)
    assert abs(fld.z_focus_um - fld.layer_focus_um) <= 3.0


def test_thick_tissue_is_sharpest_below_its_layers_mean_focus():
    """H&E tissue: the sharpest plane lies below the content-weighted layer focus."""
    fields = [simulate_field("tissue", "dense", seed=s, shape_px=SMALL) for s in (1, 2, 3)]
    offsets = [f.z_focus_um - f.layer_focus_um for f in fields]
    assert np.mean(offsets) < -0.1


def test_empty_field_keeps_the_layer_focus():
    fld = simulate_field("cell", "empty", seed=2, shape_px=SMALL)
    assert fld.z_focus_um == fld.layer_focus_um


@pytest.mark.slow
def test_focus_curve_is_flat_and_untrustworthy_on_extremely_sparse_content():
    """Full 2016 px fields: 1–3 content patches of 81 give a flat Brenner curve."""
    z = np.arange(-8.0, 8.01, 2.0)
    dense, dcurve = _brenner_curve("tissue", "dense", z, shape=(2016, 2016))
    sparse, scurve = _brenner_curve("tissue", "extremely_sparse", z, seed=1, shape=(2016, 2016))
    assert 1 <= sparse.n_content_patches <= 4
    rel = lambda c: (c.max() - c.min()) / c.max()  # noqa: E731
    assert rel(scurve) < 0.5 * rel(dcurve)
    assert find_focal_plane(dense.images, z_um=z, channel_axis=-1).trustworthy
    res = find_focal_plane(sparse.images, z_um=z, channel_axis=-1)
    assert not res.trustworthy
    assert "flat" in res.reason.lower()


def test_images_differ_on_the_two_sides_of_focus():
    """The asymmetric PSF shows up in images: ±d differ far beyond noise."""
    fld = simulate_field("tissue", "dense", seed=5, shape_px=SMALL)
    for d in (2.0, 5.0):
        plus = fld.snap_defocus(d, noise=False).astype(float)
        minus = fld.snap_defocus(-d, noise=False).astype(float)
        assert np.abs(plus - minus).mean() > 1.0  # ADU; noise-free


def test_more_defocus_means_less_sharpness_at_every_level_of_a_single_shot():
    fld = simulate_field("cell", "dense", seed=8, shape_px=SMALL)
    vals = [brenner(fld.snap_defocus(d, noise=False), channel_axis=-1) for d in (0, 3, 8, 20)]
    assert vals[0] > vals[1] > vals[2] > vals[3]


@pytest.mark.parametrize(
    ("level", "lo", "hi"),
    [("dense", 41, 81), ("sparse", 5, 32), ("extremely_sparse", 1, 4), ("empty", 0, 0)],
)
def test_full_field_sparsity_levels_on_the_9x9_grid(level, lo, hi):
    fld = simulate_field("cell", level, seed=11)
    assert fld.importance.shape == (9, 9)
    n = int(fld.importance.sum())
    assert lo <= n <= hi
    assert sparsity_from_count(n) == level


def test_patch_sampler_labels():
    sampler = PatchSampler(planes_per_region=2, seed=3, content_probability=0.5)
    b = sampler.sample(30)
    assert b.images.shape == (30, 224, 224, 3)
    assert b.images.dtype == np.uint8
    assert np.all(np.abs(b.defocus_um) <= 25)
    assert set(np.unique(b.importance)) <= {0.0, 1.0}
    # near focus, content patches carry more structure than empty ones
    near = PatchSampler(
        planes_per_region=1, seed=4, content_probability=0.5, defocus_range_um=(-1.0, 1.0)
    ).sample(36)
    g = np.array([brenner(im, channel_axis=-1) for im in near.images])
    assert 0 < near.importance.sum() < len(near.importance)
    assert np.median(g[near.importance == 1]) > 1.5 * np.median(g[near.importance == 0])
    # deterministic by seed
    b2 = PatchSampler(planes_per_region=2, seed=3, content_probability=0.5).sample(30)
    np.testing.assert_array_equal(b.images, b2.images)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "fluorescent"}, "kind"),
        ({"sparsity": "medium"}, "sparsity"),
        ({"split": "val"}, "split"),
        ({"shape_px": (100, 448)}, "shape_px"),
        ({"z_um": [0.0, float("nan")]}, "NaN"),
        ({"z_um": []}, "non-empty"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    kw = {"shape_px": SMALL, "z_um": [0.0]}
    kw.update(kwargs)
    with pytest.raises(ValueError, match=match):
        simulate_stack(**kw)


def test_optics_type_checked():
    with pytest.raises(TypeError, match="Optics"):
        simulate_stack(z_um=[0.0], optics={"na": 0.5}, shape_px=SMALL)


def test_streaming_planes_equal_the_stack():
    from napari_sparsefocus.core import iter_simulate_stack

    kw = {"z_um": [-1.0, 2.0], "shape_px": SMALL, "seed": 9}
    s = simulate_stack("tissue", "sparse", **kw)
    planes = list(iter_simulate_stack("tissue", "sparse", **kw))
    assert [p[0] for p in planes] == [0, 1]
    assert [p[1] for p in planes] == [-1.0, 2.0]
    for (_, _, img), ref in zip(planes, s.images, strict=True):
        np.testing.assert_array_equal(img, ref)
