"""Tests of the procedural Pap-smear / H&E specimens."""

from __future__ import annotations

import dataclasses
from functools import cache, lru_cache

import numpy as np
import pytest

from napari_sparsefocus.core._phantoms import (
    IMPORTANCE_THRESHOLD,
    KIND_CODES,
    SPARSITY_CODES,
    SPARSITY_LEVELS,
    SPECIMEN_KINDS,
    SPLIT_CODES,
    Specimen,
    content_patch_range,
    grid_shape,
    make_specimen,
)

SEEDS = (0, 1, 2)
CHANNELS_UM = (0.61, 0.53, 0.46)


@dataclasses.dataclass(frozen=True)
class Summary:
    """What the tests need from a full-size specimen (the arrays are not kept)."""

    importance: np.ndarray
    content_fraction: np.ndarray
    n_content: int
    depths: tuple[float, ...]
    layer_max: tuple[float, ...]
    total_stain: float


@cache
def _summary(kind: str, sparsity: str, seed: int) -> Summary:
    sp = make_specimen(kind, sparsity, seed=seed)
    return Summary(
        importance=sp.importance,
        content_fraction=sp.content_fraction,
        n_content=sp.n_content_patches,
        depths=sp.depth_offsets_um,
        layer_max=tuple(float(lay.stains.max()) for lay in sp.layers),
        total_stain=sum(float(lay.stains.sum()) for lay in sp.layers),
    )


@lru_cache(maxsize=4)
def _small(kind: str, sparsity: str, seed: int = 0, split: str = "test") -> Specimen:
    """A 1120 px (5 × 5 patch) specimen, cheap enough to keep a few around."""
    return make_specimen(kind, sparsity, shape_px=(1120, 1120), seed=seed, split=split)


def _arrays(sp: Specimen) -> list[np.ndarray]:
    out: list[np.ndarray] = [sp.importance, sp.content_fraction]
    for lay in sp.layers:
        out += [lay.stains, lay.phase_rad]
    return out


# ----------------------------------------------------------------------------- grid


def test_grid_shape_is_anchored_top_left():
    assert grid_shape((2016, 2016)) == (9, 9)
    assert grid_shape((1120, 1120)) == (5, 5)
    assert grid_shape((2047, 2240), 224) == (9, 10)
    assert grid_shape((500, 230), 224) == (2, 1)
    with pytest.raises(ValueError, match="patch_px"):
        grid_shape((2016, 2016), 0)


def test_content_patch_ranges():
    assert content_patch_range("dense", (9, 9)) == (41, 81)
    assert content_patch_range("sparse", (9, 9)) == (5, 32)
    assert content_patch_range("extremely_sparse", (9, 9)) == (1, 4)
    assert content_patch_range("empty", (9, 9)) == (0, 0)
    # scaled to the training sampler's 5 × 5 regions
    assert content_patch_range("dense", (5, 5)) == (13, 25)
    assert content_patch_range("sparse", (5, 5)) == (2, 10)
    assert content_patch_range("extremely_sparse", (5, 5)) == (1, 1)
    for grid in ((9, 9), (5, 5), (11, 11), (3, 7)):
        ranges = [content_patch_range(s, grid) for s in SPARSITY_LEVELS]
        for lo, hi in ranges:
            assert 0 <= lo <= hi <= grid[0] * grid[1]
        # the levels are ordered and do not overlap
        (dl, _), (sl, sh), (_, eh), _ = ranges
        assert eh < sl and sh < dl
    with pytest.raises(ValueError, match="dense"):
        content_patch_range("medium", (9, 9))


# ----------------------------------------------------------------------------- sparsity


@pytest.mark.parametrize("kind", SPECIMEN_KINDS)
@pytest.mark.parametrize("sparsity", SPARSITY_LEVELS)
def test_content_count_lands_in_level_range(kind, sparsity):
    lo, hi = content_patch_range(sparsity, (9, 9))
    for seed in SEEDS:
        sm = _summary(kind, sparsity, seed)
        assert sm.importance.shape == (9, 9)
        assert lo <= sm.n_content <= hi, (seed, sm.n_content)
        if sparsity == "extremely_sparse":
            assert 1 <= sm.n_content <= 4
        if sparsity == "empty":
            assert sm.n_content == 0
            assert not sm.content_fraction.any()


@pytest.mark.parametrize("kind", SPECIMEN_KINDS)
@pytest.mark.parametrize("sparsity", SPARSITY_LEVELS)
def test_importance_follows_content_fraction(kind, sparsity):
    sm = _summary(kind, sparsity, 0)
    assert sm.importance.dtype == np.float32
    assert set(np.unique(sm.importance)) <= {0.0, 1.0}
    assert np.all((sm.content_fraction >= 0) & (sm.content_fraction <= 1))
    np.testing.assert_array_equal(
        sm.importance, (sm.content_fraction >= IMPORTANCE_THRESHOLD).astype(np.float32)
    )
    assert sm.n_content == int(sm.importance.sum())


@pytest.mark.parametrize("kind", SPECIMEN_KINDS)
def test_debris_is_not_content(kind):
    sm = _summary(kind, "empty", 0)
    # an empty slide still carries dust and debris, which do not count
    assert sm.total_stain > 0
    assert sm.n_content == 0


@pytest.mark.parametrize("kind", SPECIMEN_KINDS)
def test_denser_levels_cover_more(kind):
    cover = {s: float(_summary(kind, s, 0).content_fraction.mean()) for s in SPARSITY_LEVELS}
    assert cover["dense"] > cover["sparse"] > cover["extremely_sparse"] > cover["empty"] == 0


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("kind", SPECIMEN_KINDS)
def test_same_arguments_give_identical_arrays(kind):
    a = make_specimen(kind, "sparse", shape_px=(1120, 1120), seed=5, split="train")
    b = make_specimen(kind, "sparse", shape_px=(1120, 1120), seed=5, split="train")
    assert a.depth_offsets_um == b.depth_offsets_um
    for x, y in zip(_arrays(a), _arrays(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("kind", SPECIMEN_KINDS)
def test_seed_and_split_change_the_specimen(kind):
    base = _small(kind, "sparse", 3, "test")
    other_seed = make_specimen(kind, "sparse", shape_px=(1120, 1120), seed=4, split="test")
    other_split = make_specimen(kind, "sparse", shape_px=(1120, 1120), seed=3, split="train")
    for other in (other_seed, other_split):
        assert not np.array_equal(base.layers[0].stains, other.layers[0].stains)
        assert not np.array_equal(base.layers[-1].phase_rad, other.layers[-1].phase_rad)


def test_seed_codes_are_distinct():
    assert len(set(SPLIT_CODES.values())) == len(SPLIT_CODES) == 2
    assert set(KIND_CODES) == set(SPECIMEN_KINDS)
    assert set(SPARSITY_CODES) == set(SPARSITY_LEVELS)
    assert len(set(SPARSITY_CODES.values())) == len(SPARSITY_LEVELS)


# ----------------------------------------------------------------------------- content_cells


@pytest.mark.parametrize("kind", SPECIMEN_KINDS)
@pytest.mark.parametrize("p", [0.2, 0.7])
def test_content_cells_are_honoured(kind, p):
    rng = np.random.default_rng(123)
    cells = rng.random((5, 5)) < p
    cells[2, 2] = True
    level = "dense" if cells.mean() > 0.5 else "sparse"
    sp = make_specimen(
        kind, level, shape_px=(1120, 1120), seed=7, split="train", content_cells=cells
    )
    np.testing.assert_array_equal(sp.importance > 0.5, cells)


@pytest.mark.parametrize("kind", SPECIMEN_KINDS)
def test_content_cells_on_a_partial_grid(kind):
    cells = np.array([[True, False, False], [False, False, True]])
    sp = make_specimen(kind, "sparse", shape_px=(500, 700), seed=1, content_cells=cells)
    assert sp.importance.shape == (2, 3)
    np.testing.assert_array_equal(sp.importance > 0.5, cells)
    assert sp.layers[0].stains.shape[1:] == (500, 700)


def test_empty_request_gives_no_content():
    sp = make_specimen("tissue", "dense", shape_px=(672, 672), content_cells=np.zeros((3, 3)))
    assert sp.n_content_patches == 0


# ----------------------------------------------------------------------------- layers


@pytest.mark.parametrize("kind", SPECIMEN_KINDS)
def test_layers_span_depth_and_carry_content(kind):
    for seed in SEEDS:
        sm = _summary(kind, "dense", seed)
        depths = np.array(sm.depths)
        assert 2 <= len(depths) <= 4
        assert np.all(np.diff(depths) > 0)  # distinct, ordered from the coverslip side
        assert depths.max() - depths.min() >= 2.0
        assert np.all(np.abs(depths) <= 3.0)
        assert sum(m > 0.2 for m in sm.layer_max) >= 2
        if kind == "tissue":
            assert len(depths) == 3
    if kind == "tissue":  # each slab has its own texture, not a copy of another
        sp = _small("tissue", "dense")
        eos = [lay.stains[sp.stain_names.index("eosin")] for lay in sp.layers]
        assert not np.array_equal(eos[0], eos[1])
        assert not np.array_equal(eos[1], eos[2])


@pytest.mark.parametrize("kind", SPECIMEN_KINDS)
@pytest.mark.parametrize("sparsity", ["dense", "extremely_sparse"])
def test_arrays_are_valid(kind, sparsity):
    sp = _small(kind, sparsity, 1)
    n_stains = len(sp.stain_names)
    assert len(sp.stain_peaks_um) == len(sp.stain_widths_um) == n_stains
    assert sp.shape_px == (1120, 1120)
    assert sp.patch_px == 224
    assert sp.grid_shape == (5, 5)
    for lay in sp.layers:
        assert lay.stains.dtype == np.float32
        assert lay.stains.shape == (n_stains, 1120, 1120)
        assert lay.phase_rad.dtype == np.float32
        assert lay.phase_rad.shape == (1120, 1120)
        assert np.isfinite(lay.stains).all()
        assert np.isfinite(lay.phase_rad).all()
        assert float(lay.stains.min()) >= 0.0


@pytest.mark.parametrize("kind", SPECIMEN_KINDS)
def test_optical_density_and_phase_are_physical(kind):
    sp = _small(kind, "dense")
    hem = sum(lay.stains[sp.stain_names.index("hematoxylin")] for lay in sp.layers)
    nuclear = hem[hem > 0.3]
    assert nuclear.size > 500
    # in-focus nuclei: OD ~0.5–1.2 at the hematoxylin peak (more where they overlap)
    assert 0.45 <= float(np.median(nuclear)) <= 1.2
    assert float(np.quantile(nuclear, 0.99)) <= 2.0
    # cytoplasm / stroma: the other stains stay faint
    others = [n for n in sp.stain_names if n != "hematoxylin"]
    body = sum(lay.stains[sp.stain_names.index(n)] for lay in sp.layers for n in others)
    body = body[(body > 0.02) & (hem < 0.05)]
    assert 0.05 <= float(np.median(body)) <= 0.4
    if kind == "cell":  # gaps between the cells are clear glass
        total = sum(lay.stains.sum(axis=0) for lay in sp.layers)
        assert float((total == 0).mean()) > 0.01
    phase = sum(lay.phase_rad for lay in sp.layers)
    assert float(phase.min()) >= -1e-6
    assert 0.1 <= float(phase.max()) <= 3.0
    assert float(np.quantile(phase[phase > 0.01], 0.99)) <= 1.0


def test_rendered_colours_look_like_stains():
    """Nuclei are blue-purple, eosin is pink, orange G orange, light green blue-green."""
    wl = (0.61, 0.53, 0.46)
    sp = _small("cell", "empty")
    ext = sp.extinction(wl)
    rgb = {name: 10.0 ** (-0.5 * ext[i]) for i, name in enumerate(sp.stain_names)}
    r, g, b = rgb["hematoxylin"]
    assert b > r and b > g  # blue
    r, g, b = rgb["eosin"]
    assert r > g and b > g  # pink / magenta
    r, g, b = rgb["orange_g"]
    assert r > g > b  # orange
    r, g, b = rgb["light_green"]
    assert g > r and b > r  # blue-green


# ----------------------------------------------------------------------------- extinction


def test_extinction_shape_and_peaks():
    sp = _small("cell", "empty")
    assert sp.stain_names == ("hematoxylin", "orange_g", "eosin", "light_green")
    ext = sp.extinction([0.46, 0.48, 0.53, 0.59, 0.61, 0.63])
    assert ext.shape == (4, 6)
    idx = {n: i for i, n in enumerate(sp.stain_names)}
    col = {wl: j for j, wl in enumerate([0.46, 0.48, 0.53, 0.59, 0.61, 0.63])}
    assert ext[idx["hematoxylin"], col[0.59]] > ext[idx["hematoxylin"], col[0.46]]
    assert ext[idx["eosin"], col[0.53]] > ext[idx["eosin"], col[0.61]]
    assert ext[idx["orange_g"], col[0.48]] > ext[idx["orange_g"], col[0.61]]
    assert ext[idx["light_green"], col[0.63]] > ext[idx["light_green"], col[0.53]]
    assert np.all(ext > 0)  # flat floor
    np.testing.assert_allclose(sp.extinction(sp.stain_peaks_um).diagonal(), 1.0)
    tissue = make_specimen("tissue", "empty", shape_px=(224, 224))
    assert tissue.stain_names == ("hematoxylin", "eosin")
    assert tissue.extinction((0.61, 0.53, 0.46)).shape == (2, 3)
    with pytest.raises(ValueError, match="wavelengths"):
        sp.extinction([0.5, -0.1])


def test_specimen_is_frozen():
    sp = _small("cell", "empty")
    with pytest.raises(dataclasses.FrozenInstanceError):
        sp.kind = "tissue"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        sp.layers[0].depth_offset_um = 1.0  # type: ignore[misc]


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "blood"}, "cell"),
        ({"sparsity": "medium"}, "extremely_sparse"),
        ({"split": "val"}, "train"),
        ({"shape_px": (200, 2016)}, "patch"),
        ({"shape_px": (2016, 100)}, "patch"),
        ({"pixel_size_um": 0.0}, "pixel_size_um"),
        ({"pixel_size_um": -0.2}, "pixel_size_um"),
        ({"pixel_size_um": float("nan")}, "pixel_size_um"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"content_cells": np.ones((9, 8), bool)}, "content_cells"),
        ({"content_cells": np.ones(81, bool)}, "content_cells"),
        ({"patch_px": 0}, "patch_px"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_specimen(**kwargs)
