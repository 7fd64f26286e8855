"""Evaluation metrics of one-shot defocus prediction (SparseFocus, Section 2.2).

All functions take predicted and ground-truth *signed* defocus distances in
micrometres, ``defocus_um = z_current - z_focus``, as array-likes of equal
shape. They are pure numpy.

References
----------
.. [1] Y. Zhai et al., "SparseFocus: Learning-based one-shot autofocus for
   microscopy with sparse content", arXiv:2502.06452 (2025), Section 2.2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray

__all__ = [
    "IntervalMAE",
    "absolute_error_std",
    "direction_success_score",
    "dof_accuracy",
    "mae",
    "mae_std",
    "per_interval_mae",
    "summarize",
]


def _as_finite(values: ArrayLike, name: str) -> NDArray[np.float64]:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be an array of numbers") from exc
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _pair(
    pred_um: ArrayLike, true_um: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Validate a prediction / ground-truth pair and return them flattened."""
    pred = _as_finite(pred_um, "pred_um")
    true = _as_finite(true_um, "true_um")
    if pred.shape != true.shape:
        raise ValueError(
            f"pred_um and true_um must have the same shape, got {pred.shape} and {true.shape}"
        )
    if pred.size == 0:
        raise ValueError("pred_um and true_um are empty: need at least one sample")
    return pred.ravel(), true.ravel()


def _check_dof(dof_um: Any) -> float:
    if isinstance(dof_um, bool) or not isinstance(dof_um, (int, float, np.integer, np.floating)):
        raise TypeError(f"dof_um must be a number, got {type(dof_um).__name__}")
    dof = float(dof_um)
    if not math.isfinite(dof) or dof <= 0:
        raise ValueError(f"dof_um must be finite and > 0, got {dof_um!r}")
    return dof


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return int(n)


def mae(pred_um: ArrayLike, true_um: ArrayLike) -> float:
    """Mean absolute error of the predicted defocus.

    Parameters
    ----------
    pred_um : array_like
        Predicted signed defocus in µm.
    true_um : array_like
        Ground-truth signed defocus in µm, same shape.

    Returns
    -------
    float
        ``mean(|pred - true|)`` in µm.

    Raises
    ------
    ValueError
        If the shapes differ, the inputs are empty, or contain NaN/inf.

    References
    ----------
    .. [1] Y. Zhai et al., "SparseFocus: Learning-based one-shot autofocus
       for microscopy with sparse content", arXiv:2502.06452 (2025).
    """
    pred, true = _pair(pred_um, true_um)
    return float(np.mean(np.abs(pred - true)))


def absolute_error_std(pred_um: ArrayLike, true_um: ArrayLike) -> float:
    """Compute the population standard deviation of the absolute error.

    Parameters
    ----------
    pred_um : array_like
        Predicted signed defocus in µm.
    true_um : array_like
        Ground-truth signed defocus in µm, same shape.

    Returns
    -------
    float
        ``std(|pred - true|)`` in µm (``ddof=0``): the "±" of the paper's
        "MAE ± std".

    Raises
    ------
    ValueError
        If the shapes differ, the inputs are empty, or contain NaN/inf.

    References
    ----------
    .. [1] Y. Zhai et al., "SparseFocus: Learning-based one-shot autofocus
       for microscopy with sparse content", arXiv:2502.06452 (2025).
    """
    pred, true = _pair(pred_um, true_um)
    return float(np.std(np.abs(pred - true)))


def mae_std(pred_um: ArrayLike, true_um: ArrayLike) -> tuple[float, float]:
    """Mean and population standard deviation of the absolute error.

    Parameters
    ----------
    pred_um : array_like
        Predicted signed defocus in µm.
    true_um : array_like
        Ground-truth signed defocus in µm, same shape.

    Returns
    -------
    tuple of float
        ``(mae, std)`` in µm, as reported "MAE ± std" in the paper.

    Raises
    ------
    ValueError
        If the shapes differ, the inputs are empty, or contain NaN/inf.

    References
    ----------
    .. [1] Y. Zhai et al., "SparseFocus: Learning-based one-shot autofocus
       for microscopy with sparse content", arXiv:2502.06452 (2025).
    """
    pred, true = _pair(pred_um, true_um)
    err = np.abs(pred - true)
    return float(np.mean(err)), float(np.std(err))


def dof_accuracy(pred_um: ArrayLike, true_um: ArrayLike, dof_um: float, n: int) -> float:
    """Percentage of predictions within a fraction of the depth of field.

    Parameters
    ----------
    pred_um : array_like
        Predicted signed defocus in µm.
    true_um : array_like
        Ground-truth signed defocus in µm, same shape.
    dof_um : float
        Depth of field of the objective in µm (finite, > 0).
    n : int
        Positive integer divisor; the threshold is ``dof_um / n`` (the paper
        reports n = 1, 2, 3).

    Returns
    -------
    float
        ``100 * mean(|pred - true| < dof_um / n)``, in [0, 100].

    Raises
    ------
    ValueError
        For mismatched, empty or non-finite inputs, ``dof_um <= 0`` or
        non-finite, or `n` not a positive integer.

    Notes
    -----
    The inequality is strict, as in the paper's Eq. (2): an error exactly
    equal to ``dof_um / n`` does not count as accurate.

    References
    ----------
    .. [1] Y. Zhai et al., "SparseFocus: Learning-based one-shot autofocus
       for microscopy with sparse content", arXiv:2502.06452 (2025), Eq. 2.
    """
    pred, true = _pair(pred_um, true_um)
    dof = _check_dof(dof_um)
    k = _check_n(n)
    hits = np.abs(pred - true) < dof / k
    return float(100.0 * np.count_nonzero(hits) / hits.size)


def direction_success_score(pred_um: ArrayLike, true_um: ArrayLike) -> float:
    """Percentage of predictions with the correct defocus direction (DSS).

    Parameters
    ----------
    pred_um : array_like
        Predicted signed defocus in µm.
    true_um : array_like
        Ground-truth signed defocus in µm, same shape.

    Returns
    -------
    float
        Percentage in [0, 100] of samples with ``sgn(pred) * sgn(true) > 0``
        (``sgn(0) = 0``), where a sample whose ground truth is exactly 0
        counts as correct whatever the prediction.

    Raises
    ------
    ValueError
        If the shapes differ, the inputs are empty, or contain NaN/inf.

    Notes
    -----
    The direction tells the stage which way to move. A sample already in
    focus (``true == 0``) has no wrong direction, so it always counts; a
    prediction of exactly 0 for a defocused sample gives no direction and
    counts as a failure.

    References
    ----------
    .. [1] Y. Zhai et al., "SparseFocus: Learning-based one-shot autofocus
       for microscopy with sparse content", arXiv:2502.06452 (2025).
    """
    pred, true = _pair(pred_um, true_um)
    ok = (np.sign(pred) * np.sign(true) > 0) | (true == 0)
    return float(100.0 * np.count_nonzero(ok) / ok.size)


@dataclass(frozen=True, eq=False)
class IntervalMAE:
    """Mean absolute error per ground-truth defocus interval.

    Attributes
    ----------
    edges_um : numpy.ndarray
        Bin edges in µm, strictly increasing, length ``k + 1``.
    mae_um : numpy.ndarray
        MAE in each of the ``k`` bins, NaN for an empty bin.
    counts : numpy.ndarray
        Number of samples in each bin (int64).
    absolute : bool
        Whether the bins were applied to ``|true|`` rather than ``true``.
    """

    edges_um: NDArray[np.float64]
    mae_um: NDArray[np.float64]
    counts: NDArray[np.int64]
    absolute: bool = False


def per_interval_mae(
    pred_um: ArrayLike,
    true_um: ArrayLike,
    edges_um: ArrayLike,
    *,
    absolute: bool = False,
) -> IntervalMAE:
    """MAE of the prediction binned by ground-truth defocus.

    Parameters
    ----------
    pred_um : array_like
        Predicted signed defocus in µm.
    true_um : array_like
        Ground-truth signed defocus in µm, same shape.
    edges_um : array_like
        Bin edges in µm: 1-D, finite, strictly increasing, at least two.
    absolute : bool, default False
        Bin the defocus distance ``|true|`` instead of the signed ``true``.

    Returns
    -------
    IntervalMAE
        Edges, per-bin MAE (NaN where a bin is empty) and per-bin counts.

    Raises
    ------
    ValueError
        For mismatched, empty or non-finite inputs, or invalid edges.

    Notes
    -----
    Bins are half-open ``[e_i, e_{i+1})`` except the last, which is closed
    ``[e_{k-1}, e_k]``, as in :func:`numpy.histogram`. Samples outside the
    edges are ignored. This reproduces the paper's plot of MAE against
    defocus distance (Fig. 3).

    References
    ----------
    .. [1] Y. Zhai et al., "SparseFocus: Learning-based one-shot autofocus
       for microscopy with sparse content", arXiv:2502.06452 (2025).
    """
    pred, true = _pair(pred_um, true_um)
    edges = _as_finite(edges_um, "edges_um")
    if edges.ndim != 1 or edges.size < 2:
        raise ValueError(f"edges_um must be 1-D with at least 2 values, got shape {edges.shape}")
    if not np.all(np.diff(edges) > 0):
        raise ValueError("edges_um must be strictly increasing")
    key = np.abs(true) if absolute else true
    err = np.abs(pred - true)
    k = edges.size - 1
    idx = np.searchsorted(edges, key, side="right") - 1
    idx[key == edges[-1]] = k - 1  # last bin is closed on the right
    inside = (idx >= 0) & (idx < k)
    counts = np.bincount(idx[inside], minlength=k).astype(np.int64)
    sums = np.bincount(idx[inside], weights=err[inside], minlength=k)
    mae_bins = np.full(k, np.nan)
    nonempty = counts > 0
    mae_bins[nonempty] = sums[nonempty] / counts[nonempty]
    edges = edges.copy()
    for arr in (edges, mae_bins, counts):
        arr.setflags(write=False)
    return IntervalMAE(edges_um=edges, mae_um=mae_bins, counts=counts, absolute=bool(absolute))


def summarize(pred_um: ArrayLike, true_um: ArrayLike, dof_um: float) -> dict[str, float]:
    """All scalar metrics of the paper at once.

    Parameters
    ----------
    pred_um : array_like
        Predicted signed defocus in µm.
    true_um : array_like
        Ground-truth signed defocus in µm, same shape.
    dof_um : float
        Depth of field in µm (finite, > 0).

    Returns
    -------
    dict of str to float
        Keys ``"n"`` (sample count), ``"mae_um"``, ``"mae_std_um"``,
        ``"dof_acc_1"``, ``"dof_acc_2"``, ``"dof_acc_3"`` (percent, strict
        ``|e| < dof_um / n``) and ``"dss"`` (percent).

    Raises
    ------
    ValueError
        For mismatched, empty or non-finite inputs, or an invalid `dof_um`.

    References
    ----------
    .. [1] Y. Zhai et al., "SparseFocus: Learning-based one-shot autofocus
       for microscopy with sparse content", arXiv:2502.06452 (2025).
    """
    pred, true = _pair(pred_um, true_um)
    dof = _check_dof(dof_um)
    mean, std = mae_std(pred, true)
    return {
        "n": float(pred.size),
        "mae_um": mean,
        "mae_std_um": std,
        "dof_acc_1": dof_accuracy(pred, true, dof, 1),
        "dof_acc_2": dof_accuracy(pred, true, dof, 2),
        "dof_acc_3": dof_accuracy(pred, true, dof, 3),
        "dss": direction_success_score(pred, true),
    }
