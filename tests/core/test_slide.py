from __future__ import annotations

import numpy as np
import pytest

from napari_sparsefocus.core import SPARSITY_LEVELS, Optics, SlideSite, VirtualSlide, brenner
from napari_sparsefocus.core._slide import DEFAULT_SPARSITY_WEIGHTS

SHAPE = (448, 448)  # 2 × 2 patches: 77 µm fields


@pytest.fixture(scope="module")
def slide() -> VirtualSlide:
    return VirtualSlide(0, field_shape_px=SHAPE)


def test_geometry_whole_sites_centred(slide):
    fh, fw = slide.field_size_um
    assert fh == pytest.approx(SHAPE[0] * Optics().pixel_size_um)
    w, h = slide.size_um
    assert w == pytest.approx(slide.n_sites[1] * fw)
    assert h == pytest.approx(slide.n_sites[0] * fh)
    assert 10_000 - fw < w <= 10_000
    (x0, x1), (y0, y1) = slide.bounds_um
    assert x0 == pytest.approx(-x1) and y0 == pytest.approx(-y1)
    # a site's centre maps back to the site, corners to the edge sites
    s = slide.site(3, 7)
    assert slide.site_at(s.x_um, s.y_um) == s
    assert slide.site_index(s.x_um + 0.49 * fw, s.y_um - 0.49 * fh) == (3, 7)
    assert slide.site_index(x0, y0) == (0, 0)
    assert slide.site_index(x1, y1) == (slide.n_sites[0] - 1, slide.n_sites[1] - 1)
    assert slide.contains(x1, y1) and not slide.contains(x1 + 1, 0.0)


def test_off_slide_raises(slide):
    (_, x1), _ = slide.bounds_um
    with pytest.raises(ValueError, match="off the slide"):
        slide.site_at(x1 + 1.0, 0.0)
    with pytest.raises(ValueError, match="off the slide"):
        slide.z_focus_um(0.0, 1e6)
    with pytest.raises(ValueError, match="outside"):
        slide.site(-1, 0)
    with pytest.raises(ValueError, match="finite"):
        slide.sparsity_at(float("nan"), 0.0)


def test_deterministic_by_seed():
    a = VirtualSlide(7, field_shape_px=SHAPE)
    b = VirtualSlide(7, field_shape_px=SHAPE)
    c = VirtualSlide(8, field_shape_px=SHAPE)
    assert np.array_equal(a.region_map(), b.region_map())
    xs = np.linspace(-4000, 4000, 7)
    za, zb, zc = (s.z_focus_um(xs[:, None], xs[None, :]) for s in (a, b, c))
    assert np.array_equal(za, zb)
    assert not np.allclose(za, zc, atol=0.1)
    assert a.site(5, 5) == b.site(5, 5)
    assert a.site(5, 5).seed != c.site(5, 5).seed
    assert a.site(5, 5).seed != a.site(5, 6).seed
    site = a.site(5, 5)
    assert np.array_equal(a.render(site.x_um, site.y_um, 1.0), b.render(site.x_um, site.y_um, 1.0))


def test_region_map_has_every_class_in_proportion(slide):
    rmap = slide.region_map()
    assert rmap.shape == slide.n_regions == (10, 10)
    values, counts = np.unique(rmap, return_counts=True)
    share = dict(zip(values.tolist(), (counts / counts.sum()).tolist(), strict=True))
    assert set(share) == set(SPARSITY_LEVELS)
    for level, weight in DEFAULT_SPARSITY_WEIGHTS.items():
        assert share[level] == pytest.approx(weight, abs=0.011)
    # the classes are shuffled, not in bands
    assert len(set(rmap[0].tolist())) > 1 and len(set(rmap[:, 0].tolist())) > 1
    # sites report the class and kind of their region
    for s in slide.find_sites(None, 20, seed=3):
        assert slide.sparsity_at(s.x_um, s.y_um) == s.sparsity
        assert slide.kind_at(s.x_um, s.y_um) == s.kind
        row = int((s.y_um - slide.bounds_um[1][0]) // slide.region_um)
        col = int((s.x_um - slide.bounds_um[0][0]) // slide.region_um)
        assert rmap[row, col] == s.sparsity
    assert {s.kind for s in slide.sites("dense")} == {"cell", "tissue"}


def test_weights_and_kinds_restrict_content():
    s = VirtualSlide(
        1,
        field_shape_px=SHAPE,
        size_um=(3000, 3000),
        sparsity_weights={"dense": 1, "empty": 1},
        kinds=("tissue",),
    )
    assert set(s.region_map().ravel().tolist()) == {"dense", "empty"}
    assert {site.kind for site in s.sites()} == {"tissue"}
    with pytest.raises(ValueError, match="only 0 site"):
        s.find_sites("sparse", 1)


def test_find_sites(slide):
    sites = slide.find_sites("extremely_sparse", 5, seed=11)
    assert len(sites) == 5 and len({s.index for s in sites}) == 5
    assert all(isinstance(s, SlideSite) and s.sparsity == "extremely_sparse" for s in sites)
    assert slide.find_sites("extremely_sparse", 5, seed=11) == sites
    assert slide.find_sites("extremely_sparse", 5, seed=12) != sites
    rng = np.random.default_rng(0)
    assert slide.find_sites("empty", 2, rng) != slide.find_sites("empty", 2, rng)
    nr, nc = slide.n_sites
    inner = slide.find_sites("dense", 50, seed=0, kind="cell", margin_sites=5)
    assert all(s.kind == "cell" and 5 <= s.row < nr - 5 and 5 <= s.col < nc - 5 for s in inner)
    with pytest.raises(ValueError, match="asked for"):
        slide.find_sites("dense", nr * nc)
    with pytest.raises(ValueError, match="n must be"):
        slide.find_sites("dense", 0)


def test_focal_surface_tilted_and_curved(slide):
    (x0, x1), (y0, y1) = slide.bounds_um
    xs = np.linspace(x0, x1, 41)
    ys = np.linspace(y0, y1, 41)
    gx, gy = np.meshgrid(xs, ys)
    z = slide.surface_um(gx, gy)
    span = float(z.max() - z.min())
    assert 2.0 < span < 30.0  # a few µm across the slide
    assert slide.surface_um(0.0, 0.0) == pytest.approx(slide.z_nominal_um)
    # not a plane: the residual of the best-fitting plane is the curvature
    a = np.column_stack([gx.ravel(), gy.ravel(), np.ones(gx.size)])
    coef, *_ = np.linalg.lstsq(a, z.ravel(), rcond=None)
    residual = z.ravel() - a @ coef
    assert np.ptp(residual) > 1.0
    assert np.hypot(coef[0], coef[1]) * 1000 > 0.1  # tilt in µm per mm
    # with the per-site jitter: within a site the offset is constant, neighbours differ a little
    s = slide.site(20, 20)
    fw = slide.field_size_um[1]
    j0 = slide.z_focus_um(s.x_um, s.y_um) - slide.surface_um(s.x_um, s.y_um)
    j1 = slide.z_focus_um(s.x_um + 0.4 * fw, s.y_um) - slide.surface_um(s.x_um + 0.4 * fw, s.y_um)
    assert j0 == pytest.approx(j1)
    jit = slide.z_focus_um(gx, gy) - z
    assert 0.05 < np.std(jit) < 0.5 and np.abs(jit).max() <= 3 * slide.site_jitter_um + 1e-9
    flat = VirtualSlide(0, field_shape_px=SHAPE, site_jitter_um=0.0)
    assert np.allclose(flat.z_focus_um(gx, gy), flat.surface_um(gx, gy))
    assert isinstance(slide.z_focus_um(1.0, 2.0), float)


def test_content_classes_render_as_labelled():
    slide = VirtualSlide(0, field_shape_px=SHAPE, cache_size=2)
    empty = slide.field(slide.find_sites("empty", 1, seed=0)[0])
    dense = slide.field(slide.find_sites("dense", 1, seed=0)[0])
    assert empty.importance.shape == (2, 2)
    assert empty.importance.sum() == 0
    assert float(empty.content_fraction.max()) < 0.02
    assert dense.importance.sum() >= 3
    # cached: same object again; least recently used dropped beyond cache_size
    assert slide.field(slide.find_sites("dense", 1, seed=0)[0]) is dense
    slide.field(slide.find_sites("sparse", 1, seed=0)[0])
    assert len(slide._cache) == 2
    slide.clear_cache()
    assert len(slide._cache) == 0


def test_render_sharpest_at_focus():
    slide = VirtualSlide(0, field_shape_px=SHAPE)
    site = slide.find_sites("dense", 1, seed=2)[0]
    zf = slide.z_focus_um(site.x_um, site.y_um)
    offsets = (-3.0, -1.5, 0.0, 1.5, 3.0)
    imgs = [slide.render(site.x_um, site.y_um, zf + d, noise=False) for d in offsets]
    assert imgs[0].shape == (*SHAPE, 3) and imgs[0].dtype == np.uint8
    sharp = [brenner(im, channel_axis=-1) for im in imgs]
    assert int(np.argmax(sharp)) == 2
    assert sharp[0] < sharp[1] < sharp[2] > sharp[3] > sharp[4]
    # rendering is the field at defocus z - z_focus
    fld = slide.field(site)
    assert np.array_equal(imgs[3], fld.snap_defocus(1.5, noise=False))
    with pytest.raises(ValueError, match="finite"):
        slide.render(site.x_um, site.y_um, float("inf"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seed": -1}, "seed"),
        ({"field_shape_px": (100, 448)}, "224"),
        ({"size_um": (10.0, 10.0)}, "smaller than one field"),
        ({"sparsity_weights": {"busy": 1.0}}, "unknown sparsity"),
        ({"sparsity_weights": {"dense": 0.0}}, "positive sum"),
        ({"kinds": ("blood",)}, "kinds"),
        ({"tilt_um_per_mm": (1.0, 0.5)}, "tilt_um_per_mm"),
        ({"curvature_um": -1.0}, "curvature_um"),
        ({"cache_size": 0}, "cache_size"),
        ({"split": "val"}, "split"),
        ({"region_um": 0.0}, "region_um"),
    ],
)
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VirtualSlide(**{"field_shape_px": SHAPE, **kwargs})
