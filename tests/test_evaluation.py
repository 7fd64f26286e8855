from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from napari_sparsefocus.evaluation import (
    IntervalMAE,
    absolute_error_std,
    direction_success_score,
    dof_accuracy,
    mae,
    mae_std,
    per_interval_mae,
    summarize,
)

if TYPE_CHECKING:
    from collections.abc import Callable

PRED = [1.0, -1.0, 0.5, 2.0]
TRUE = [0.5, 0.5, 0.0, -2.0]
# |errors| = 0.5, 1.5, 0.5, 4.0


def test_mae_and_std_hand_computed() -> None:
    assert mae(PRED, TRUE) == pytest.approx(6.5 / 4)
    # deviations from 1.625: -1.125, -0.125, -1.125, 2.375
    var = (1.125**2 + 0.125**2 + 1.125**2 + 2.375**2) / 4
    assert absolute_error_std(PRED, TRUE) == pytest.approx(math.sqrt(var))
    mean, std = mae_std(PRED, TRUE)
    assert mean == pytest.approx(1.625)
    assert std == pytest.approx(math.sqrt(var))


def test_mae_is_symmetric_and_zero_for_perfect_prediction() -> None:
    assert mae(TRUE, PRED) == mae(PRED, TRUE)
    assert mae(TRUE, TRUE) == 0.0
    assert absolute_error_std([3.0, 3.0], [1.0, 5.0]) == 0.0


def test_dof_accuracy_hand_computed_with_strict_threshold() -> None:
    dof = 1.5
    # n=1: threshold 1.5 -> 0.5, 0.5 count; 1.5 (equal) and 4.0 do not.
    assert dof_accuracy(PRED, TRUE, dof, 1) == pytest.approx(50.0)
    # n=2: threshold 0.75 -> 0.5, 0.5.
    assert dof_accuracy(PRED, TRUE, dof, 2) == pytest.approx(50.0)
    # n=3: threshold 0.5 -> the two errors of exactly 0.5 do NOT count.
    assert dof_accuracy(PRED, TRUE, dof, 3) == 0.0
    assert dof_accuracy(PRED, TRUE, 100.0, 1) == 100.0
    assert dof_accuracy(PRED, TRUE, 1.6, 1) == pytest.approx(75.0)
    n_numpy: Any = np.int64(2)
    assert dof_accuracy(PRED, TRUE, dof, n_numpy) == pytest.approx(50.0)


def test_direction_success_score_hand_computed() -> None:
    # right sign, wrong sign, true == 0 (always right), wrong sign
    assert direction_success_score(PRED, TRUE) == pytest.approx(50.0)


def test_dss_boundary_rules() -> None:
    # true == 0 counts as correct for a positive, negative or zero prediction.
    assert direction_success_score([2.0, -3.0, 0.0], [0.0, 0.0, 0.0]) == 100.0
    # pred == 0 with true != 0 gives no direction: a failure.
    assert direction_success_score([0.0, 0.0], [1.0, -1.0]) == 0.0
    assert direction_success_score([0.0, -3.0, 0.0, 2.0], [1.0, 0.0, 0.0, 0.0]) == 75.0
    assert direction_success_score([-1e-9, 1e-9], [-5.0, 5.0]) == 100.0


def test_per_interval_mae_signed_bins() -> None:
    result = per_interval_mae(PRED, TRUE, [-3.0, -1.0, 0.0, 1.0, 3.0])
    assert isinstance(result, IntervalMAE)
    # true -2 -> bin 0 (err 4); true 0.5, 0.5, 0 -> bin 2 (errs 0.5, 1.5, 0.5)
    np.testing.assert_array_equal(result.counts, [1, 0, 3, 0])
    assert result.mae_um[0] == pytest.approx(4.0)
    assert np.isnan(result.mae_um[1])
    assert result.mae_um[2] == pytest.approx(2.5 / 3)
    assert np.isnan(result.mae_um[3])
    np.testing.assert_array_equal(result.edges_um, [-3.0, -1.0, 0.0, 1.0, 3.0])
    assert not result.absolute


def test_per_interval_mae_absolute_bins() -> None:
    result = per_interval_mae(PRED, TRUE, [0.0, 1.0, 3.0], absolute=True)
    # |true| = 0.5, 0.5, 0, 2
    np.testing.assert_array_equal(result.counts, [3, 1])
    assert result.mae_um[0] == pytest.approx(2.5 / 3)
    assert result.mae_um[1] == pytest.approx(4.0)
    assert result.absolute


def test_per_interval_mae_edges_inclusion() -> None:
    # Left edges included, last right edge included, outside ignored.
    pred = [1.0, 2.0, 3.0, 4.0, 9.0]
    true = [0.0, 1.0, 2.0, -0.5, 2.5]
    result = per_interval_mae(pred, true, [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(result.counts, [1, 2])
    assert result.mae_um[0] == pytest.approx(1.0)
    assert result.mae_um[1] == pytest.approx(1.0)


def test_summarize_matches_hand_values() -> None:
    out = summarize(PRED, TRUE, 1.5)
    assert set(out) == {
        "n",
        "mae_um",
        "mae_std_um",
        "dof_acc_1",
        "dof_acc_2",
        "dof_acc_3",
        "dss",
    }
    assert out["n"] == 4
    assert out["mae_um"] == pytest.approx(1.625)
    assert out["mae_std_um"] == pytest.approx(math.sqrt(8.1875 / 4))
    assert out["dof_acc_1"] == pytest.approx(50.0)
    assert out["dof_acc_2"] == pytest.approx(50.0)
    assert out["dof_acc_3"] == 0.0
    assert out["dss"] == pytest.approx(50.0)
    assert all(isinstance(v, float) for v in out.values())


def test_multidimensional_inputs_are_flattened() -> None:
    pred = np.array(PRED).reshape(2, 2)
    true = np.array(TRUE).reshape(2, 2)
    assert mae(pred, true) == pytest.approx(1.625)


def test_interval_result_is_frozen() -> None:
    result = per_interval_mae(PRED, TRUE, [0.0, 1.0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.counts = np.zeros(1, dtype=np.int64)  # type: ignore[misc]


@pytest.mark.parametrize(
    "func",
    [mae, absolute_error_std, mae_std, direction_success_score],
)
def test_bad_pairs(func: Callable[..., Any]) -> None:
    f = func
    with pytest.raises(ValueError, match="shape"):
        f([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="empty"):
        f([], [])
    with pytest.raises(ValueError, match="pred_um"):
        f([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="true_um"):
        f([1.0, 2.0], [np.inf, 2.0])


@pytest.mark.parametrize("dof", [0.0, -1.0, math.nan, math.inf])
def test_bad_dof(dof: float) -> None:
    with pytest.raises(ValueError, match="dof_um"):
        dof_accuracy(PRED, TRUE, dof, 1)
    with pytest.raises(ValueError, match="dof_um"):
        summarize(PRED, TRUE, dof)


@pytest.mark.parametrize("n", [0, -1, 1.5, 2.0, True, "2", None])
def test_bad_n(n: object) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        dof_accuracy(PRED, TRUE, 1.5, n)  # type: ignore[arg-type]


def test_dof_accuracy_validates_pairs() -> None:
    with pytest.raises(ValueError, match="pred_um"):
        dof_accuracy([np.nan], [0.0], 1.0, 1)
    with pytest.raises(ValueError, match="shape"):
        dof_accuracy([0.0], [0.0, 1.0], 1.0, 1)


@pytest.mark.parametrize(
    "edges",
    [[0.0], [[0.0, 1.0]], [1.0, 0.0], [0.0, 0.0, 1.0], [0.0, np.nan]],
)
def test_bad_edges(edges: object) -> None:
    with pytest.raises(ValueError, match="edges_um"):
        per_interval_mae(PRED, TRUE, edges)  # type: ignore[arg-type]
