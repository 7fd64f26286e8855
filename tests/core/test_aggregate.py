from __future__ import annotations

import numpy as np
import pytest

from napari_sparsefocus.core._aggregate import (
    K_MODES,
    Aggregate,
    Selection,
    aggregate,
    select_patches,
    sharpness_weighted_defocus,
)


def grid_with_positives(n_pos: int, shape: tuple[int, int] = (9, 9)) -> np.ndarray:
    """Positives at the first ``n_pos`` cells (row-major), scores 0.8 … 1.0; the rest 0.5."""
    w = np.full(shape, 0.5)
    w.ravel()[:n_pos] = np.linspace(0.8, 1.0, n_pos) if n_pos else []
    return w


# ---------------------------------------------------------------- selection
@pytest.mark.parametrize(
    ("n_pos", "sparsity", "k"),
    [
        (0, "empty", 0),
        (1, "extremely_sparse", 1),  # k_es = 3 capped at 1
        (3, "extremely_sparse", 3),
        (4, "extremely_sparse", 3),
        (5, "sparse", 5),  # k_s = 9 capped at 5
        (9, "sparse", 9),
        (12, "sparse", 9),
        (32, "sparse", 9),
        (33, "dense", 31),
        (40, "dense", 31),
        (81, "dense", 31),
    ],
)
def test_auto_k_on_9x9(n_pos: int, sparsity: str, k: int) -> None:
    sel = select_patches(grid_with_positives(n_pos))
    assert isinstance(sel, Selection)
    assert sel.n_positive == n_pos
    assert sel.sparsity == sparsity
    assert sel.k == k
    assert sel.indices.shape == (k, 2)
    assert sel.scores.shape == (k,)
    assert sel.n_cells == 81
    assert sel.grid_shape == (9, 9)
    assert sel.mask.sum() == k
    assert f"{n_pos} of 81 patches ≥ 0.8" in sel.rule
    assert f"k = {k}" in sel.rule


def test_rule_text_is_readable() -> None:
    assert select_patches(grid_with_positives(12)).rule == "sparse: 12 of 81 patches ≥ 0.8 → k = 9"
    assert select_patches(grid_with_positives(5)).rule == (
        "sparse: 5 of 81 patches ≥ 0.8 → k = 5, capped at the 5 positive patches"
    )
    assert select_patches(grid_with_positives(0)).rule == (
        "empty: 0 of 81 patches ≥ 0.8 → k = 0, no usable content"
    )
    assert select_patches(grid_with_positives(2)).rule.startswith("extremely sparse: 2 of 81")


def test_empty_selection() -> None:
    sel = select_patches(np.zeros((9, 9)))
    assert sel.k == 0
    assert sel.indices.shape == (0, 2)
    assert sel.scores.shape == (0,)
    assert not sel.mask.any()


def test_order_by_decreasing_score() -> None:
    w = np.zeros((9, 9))
    w[0, 0] = 0.81
    w[8, 8] = 0.99
    w[3, 5] = 0.9
    w[2, 2] = 0.79  # below the threshold: never selected
    sel = select_patches(w)
    assert sel.indices.tolist() == [[8, 8], [3, 5], [0, 0]]
    np.testing.assert_array_equal(sel.scores, [0.99, 0.9, 0.81])
    assert sel.indices.dtype.kind == "i"


def test_ties_break_row_major() -> None:
    w = np.zeros((9, 9))
    for r, c in [(7, 1), (2, 6), (2, 3), (0, 8), (5, 0)]:
        w[r, c] = 0.9
    w[4, 4] = 0.95
    sel = select_patches(w)  # 6 positives: sparse, k = min(9, 6) = 6
    assert sel.indices.tolist() == [[4, 4], [0, 8], [2, 3], [2, 6], [5, 0], [7, 1]]
    # top-3 keeps the first tied ones in row-major order
    sel3 = select_patches(w, k_mode="fixed", k=3)
    assert sel3.indices.tolist() == [[4, 4], [0, 8], [2, 3]]


def test_top_k_keeps_the_highest() -> None:
    rng = np.random.default_rng(3)
    w = rng.uniform(0.8, 1.0, (9, 9))  # all positive: dense, k = 31
    sel = select_patches(w)
    assert sel.k == 31
    expected = np.sort(w.ravel())[::-1][:31]
    np.testing.assert_array_equal(sel.scores, expected)
    np.testing.assert_array_equal(w[sel.indices[:, 0], sel.indices[:, 1]], sel.scores)


def test_threshold_boundary() -> None:
    w = np.zeros((9, 9))
    w[0, 0] = 0.8  # exactly p counts
    w[0, 1] = np.nextafter(0.8, 0.0)  # just below does not
    sel = select_patches(w)
    assert sel.n_positive == 1
    assert sel.indices.tolist() == [[0, 0]]
    # float32 (sigmoid output): 0.8 counts, the next float32 below does not
    w32 = np.zeros((9, 9), np.float32)
    w32[0, 0] = 0.8
    w32[0, 1] = np.nextafter(np.float32(0.8), np.float32(0.0))
    assert select_patches(w32).indices.tolist() == [[0, 0]]
    # a custom threshold
    assert select_patches(w, threshold=0.5).n_positive == 2
    assert select_patches(np.ones((9, 9)), threshold=1.0).n_positive == 81


@pytest.mark.parametrize(
    ("n_pos", "sparsity", "k"),
    [
        # 5×5: extremely sparse is 1 (max(1, round(1.25))), sparse 2–10, dense > 10
        (1, "extremely_sparse", 1),  # 3·25/81 = 0.93 → 1
        (2, "sparse", 2),  # 9·25/81 = 2.78 → 3, capped at 2
        (8, "sparse", 3),
        (11, "dense", 10),  # 31·25/81 = 9.57 → 10
        (25, "dense", 10),
    ],
)
def test_auto_k_scales_with_grid(n_pos: int, sparsity: str, k: int) -> None:
    sel = select_patches(grid_with_positives(n_pos, (5, 5)))
    assert (sel.sparsity, sel.k) == (sparsity, k)
    assert sel.n_cells == 25


def test_auto_k_other_grids() -> None:
    # 3×3 dense: 31·9/81 = 3.44 → 3; 1×1 with content: k = 1
    assert select_patches(np.ones((3, 3))).k == 3
    assert select_patches(np.ones((1, 1))).k == 1
    # 18×18 (324 cells) dense: 31·4 = 124
    assert select_patches(np.ones((18, 18))).k == 124
    assert "scaled by 324/81" in select_patches(np.ones((18, 18))).rule


def test_fixed_and_all_modes() -> None:
    w = grid_with_positives(40)
    assert select_patches(w, k_mode="fixed", k=1).k == 1
    assert select_patches(w, k_mode="fixed", k=35).k == 35
    capped = select_patches(w, k_mode="fixed", k=50)
    assert capped.k == 40
    assert "capped" in capped.rule
    everything = select_patches(w, k_mode="all")
    assert everything.k == 40
    assert everything.scores[0] == 1.0
    assert everything.scores[-1] == 0.8
    assert select_patches(np.zeros((9, 9)), k_mode="all").k == 0
    assert select_patches(np.zeros((9, 9)), k_mode="fixed", k=3).k == 0


def test_selection_arrays_are_read_only() -> None:
    sel = select_patches(grid_with_positives(5))
    with pytest.raises(ValueError, match="read-only"):
        sel.indices[0, 0] = 3


@pytest.mark.parametrize(
    ("importance", "match"),
    [
        (np.zeros(81), "2-D"),
        (np.zeros((0, 9)), "2-D"),
        (np.zeros((9, 9, 1)), "2-D"),
        (np.full((9, 9), np.nan), "NaN"),
        (np.full((9, 9), np.inf), "NaN"),
        (np.full((9, 9), 1.5), r"\[0, 1\]"),
        (np.full((9, 9), -0.1), r"\[0, 1\]"),
        (np.full((2, 2), "a"), "numeric"),
        (np.ones((2, 2), complex), "real"),
    ],
)
def test_bad_importance(importance: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        select_patches(importance)


def test_bad_selection_arguments() -> None:
    w = grid_with_positives(5)
    for thr in (0.0, -0.1, 1.01, float("nan")):
        with pytest.raises(ValueError, match="threshold"):
            select_patches(w, threshold=thr)
    with pytest.raises(ValueError, match="'auto', 'fixed', 'all'") as info:
        select_patches(w, k_mode="top")
    assert all(m in str(info.value) for m in K_MODES)
    for bad_k in (None, 0, -2, 2.5, True):
        with pytest.raises(ValueError, match="k >= 1"):
            select_patches(w, k_mode="fixed", k=bad_k)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only used with k_mode='fixed'"):
        select_patches(w, k=3)


def test_bool_and_int_grids_accepted() -> None:
    assert select_patches(np.eye(9, dtype=bool)).n_positive == 9
    assert select_patches(np.eye(9, dtype=np.uint8)).k == 9


# ---------------------------------------------------------------- aggregation
def test_aggregate_odd_count() -> None:
    # median 3; |d - 3| = 2, 1, 0, 2, 7 → MAD 2; all positive
    a = aggregate([1.0, 2.0, 3.0, 5.0, 10.0], dof_um=3.0)
    assert isinstance(a, Aggregate)
    assert a.defocus_um == 3.0
    assert a.spread_um == pytest.approx(2 * 1.4826)
    assert a.direction_agreement == 1.0
    assert a.n_patches == 5
    assert a.verdict == "ok"
    assert "5 patches" in a.reason


def test_aggregate_even_count_median_of_middles() -> None:
    # sorted -1, 1, 2, 6 → median (1 + 2) / 2 = 1.5; |d - 1.5| = 2.5, 0.5, 0.5, 4.5 → MAD 1.5
    a = aggregate([6.0, 1.0, -1.0, 2.0], dof_um=3.0)
    assert a.defocus_um == 1.5
    assert a.spread_um == pytest.approx(1.4826 * 1.5)
    assert a.direction_agreement == 0.75  # -1 disagrees
    assert a.verdict == "ok"  # 2.22 µm ≤ 3 µm and 75 % ≥ 70 %


def test_aggregate_single_patch() -> None:
    a = aggregate([-4.25], dof_um=1.0)
    assert (a.defocus_um, a.spread_um, a.direction_agreement) == (-4.25, 0.0, 1.0)
    assert a.verdict == "ok"
    assert "1 patch:" in a.reason


def test_aggregate_zeros_agree() -> None:
    # sorted -2, -1, 0, 0, 0, 1 → median 0: a zero median contradicts nobody
    a = aggregate([-2.0, -1.0, 0.0, 0.0, 0.0, 1.0], dof_um=5.0)
    assert a.defocus_um == 0.0
    assert a.direction_agreement == 1.0
    # median (-1 + 0) / 2 = -0.5: -3, -1 agree, 0 agrees, 2 disagrees → 3/4
    b = aggregate([-3.0, -1.0, 0.0, 2.0], dof_um=10.0)
    assert b.defocus_um == -0.5
    assert b.direction_agreement == 0.75
    # median -1: four of five agree (the zero included)
    c = aggregate([-3.0, -1.0, -1.0, 0.0, 2.0], dof_um=10.0)
    assert c.defocus_um == -1.0
    assert c.direction_agreement == 0.8


def test_low_confidence_direction() -> None:
    # median 1; signs + + + - - → 3/5 = 0.6 < 0.7; |d - 1| = 0, 0, 0, 2, 2 → MAD 0
    a = aggregate([1.0, 1.0, 1.0, -1.0, -1.0], dof_um=1.0)
    assert a.defocus_um == 1.0
    assert a.spread_um == 0.0
    assert a.direction_agreement == pytest.approx(0.6)
    assert a.verdict == "low confidence"
    assert "60%" in a.reason
    assert "direction" in a.reason
    assert "spread" not in a.reason
    # a lower bar accepts it
    assert aggregate([1.0, 1.0, 1.0, -1.0, -1.0], dof_um=1.0, min_agreement=0.6).verdict == "ok"


def test_low_confidence_spread() -> None:
    # median 5; |d - 5| = 4, 2, 0, 2, 4 → MAD 2 → spread 2.9652 µm > 1 DoF of 2.5 µm
    d = [1.0, 3.0, 5.0, 7.0, 9.0]
    a = aggregate(d, dof_um=2.5)
    assert a.spread_um == pytest.approx(2.9652)
    assert a.direction_agreement == 1.0
    assert a.verdict == "low confidence"
    assert "spread 2.97 µm exceeds 1 DoF (2.5 µm)" in a.reason
    assert aggregate(d, dof_um=3.0).verdict == "ok"
    assert aggregate(d, dof_um=2.5, max_spread_dof=2.0).verdict == "ok"


def test_low_confidence_both_reasons() -> None:
    # median 4; signs + + - - + → 60 %; |d - 4| = 6, 0, 14, 12, 2 → MAD 6 → 8.9 µm
    a = aggregate([10.0, 4.0, -10.0, -8.0, 6.0], dof_um=1.0)
    assert a.defocus_um == 4.0
    assert a.spread_um == pytest.approx(6 * 1.4826)
    assert a.verdict == "low confidence"
    assert "direction" in a.reason
    assert "spread" in a.reason


def test_boundaries_are_ok() -> None:
    # exactly 70 % agreement is enough: 7 of 10
    a = aggregate([1.0] * 7 + [-1.0] * 3, dof_um=1.0)
    assert a.direction_agreement == pytest.approx(0.7)
    assert a.verdict == "ok"
    # spread exactly at 1 DoF is ok: MAD 1 → 1.4826 µm
    b = aggregate([0.0, 1.0, 2.0], dof_um=1.4826)
    assert b.spread_um == pytest.approx(1.4826)
    assert b.verdict == "ok"


def test_aggregate_empty() -> None:
    for empty in ([], np.zeros(0)):
        a = aggregate(empty, dof_um=1.0)
        assert a.defocus_um is None
        assert a.n_patches == 0
        assert a.verdict == "no usable content"
        assert a.reason


def test_aggregate_bad_inputs() -> None:
    with pytest.raises(ValueError, match="NaN"):
        aggregate([1.0, np.nan], dof_um=1.0)
    with pytest.raises(ValueError, match="NaN"):
        aggregate([np.inf], dof_um=1.0)
    with pytest.raises(ValueError, match="1-D"):
        aggregate([[1.0, 2.0]], dof_um=1.0)
    for dof in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="dof_um"):
            aggregate([1.0], dof_um=dof)
    with pytest.raises(ValueError, match="min_agreement"):
        aggregate([1.0], dof_um=1.0, min_agreement=1.5)
    with pytest.raises(ValueError, match="max_spread_dof"):
        aggregate([1.0], dof_um=1.0, max_spread_dof=0.0)


def test_select_then_aggregate() -> None:
    w = np.zeros((9, 9))
    w[1, 1], w[2, 7], w[6, 3], w[8, 0] = 0.9, 0.97, 0.85, 0.4
    pred = np.full((9, 9), 99.0)  # non-selected patches would ruin the median
    pred[1, 1], pred[2, 7], pred[6, 3] = 2.0, 2.5, 1.0
    sel = select_patches(w)
    a = aggregate(pred[sel.indices[:, 0], sel.indices[:, 1]], dof_um=1.0)
    assert sel.k == 3
    assert a.defocus_um == 2.0
    assert a.verdict == "ok"


def _two_halves(a: float, b: float, channels: int | None = None) -> np.ndarray:
    """8 × 16 image: the same stripes at amplitude `a` on the left, `b` on the right."""
    stripes = np.tile([0.0, 0.0, 1.0, 1.0], (8, 2))
    img = np.hstack([a * stripes, b * stripes])
    return img if channels is None else np.repeat(img[..., None], channels, axis=-1)


@pytest.mark.parametrize("channels", [None, 3])
def test_sharpness_weighted_defocus_weights_by_squared_contrast(channels):
    boxes = [[0, 0, 8, 8], [0, 8, 8, 16]]
    # Brenner grows with the square of the contrast: weights 1 : 4
    img = _two_halves(1.0, 2.0, channels)
    assert sharpness_weighted_defocus(img, [3.0, -1.0], boxes) == pytest.approx(-0.2)
    # equal contrast: the plain mean; a flat patch has no say
    assert sharpness_weighted_defocus(_two_halves(1.0, 1.0), [3.0, -1.0], boxes) == 1.0
    assert sharpness_weighted_defocus(_two_halves(0.0, 1.0), [3.0, -1.0], boxes) == -1.0


def test_sharpness_weighted_defocus_skips_unusable_patches():
    img = _two_halves(1.0, 2.0)
    # a non-finite prediction, a box off the image and a 2 px sliver are left out
    d = [3.0, np.nan, 5.0, 7.0, -1.0]
    boxes = [[0, 0, 8, 8], [0, 8, 8, 16], [20, 20, 30, 30], [0, 0, 8, 2], [0, 8, 8, 40]]
    assert sharpness_weighted_defocus(img, d, boxes) == pytest.approx(-0.2)
    assert sharpness_weighted_defocus(img, [], []) is None
    assert sharpness_weighted_defocus(np.zeros((8, 16)), [1.0], [[0, 0, 8, 8]]) is None
    with pytest.raises(ValueError, match="2 predictions but 1 boxes"):
        sharpness_weighted_defocus(img, [1.0, 2.0], [[0, 0, 8, 8]])
    with pytest.raises(ValueError, match="image must be"):
        sharpness_weighted_defocus(np.zeros(8), [1.0], [[0, 0, 8, 8]])
