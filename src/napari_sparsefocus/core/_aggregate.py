"""Top-k patch selection and robust aggregation of per-patch defocus predictions.

SparseFocus scores every 224 px patch of the field with the region importance
network (RIN), keeps the most content-rich patches, predicts a defocus for
each with the defocus prediction network (DPN) and combines them with a
median. How many patches are kept depends on how sparse the field is: the
paper uses k = 31 for dense, 9 for sparse and 3 for extremely sparse fields.
This module holds that rule and the aggregation, in numpy only, so that it can
be tested, plotted and explained without torch.

References
----------
.. [1] Y. Zhai et al., "SparseFocus: Learning-based one-shot autofocus for
   microscopy with sparse content", arXiv:2502.06452 (2025).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ._focus_measures import brenner
from ._simulate import sparsity_from_count

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray

__all__ = [
    "DEFAULT_IMPORTANCE_THRESHOLD",
    "K_MODES",
    "K_PER_SPARSITY",
    "VERDICTS",
    "Aggregate",
    "Selection",
    "aggregate",
    "select_patches",
    "sharpness_weighted_defocus",
]

#: The paper's importance threshold p: a patch with ``importance >= p`` holds content.
DEFAULT_IMPORTANCE_THRESHOLD = 0.8
#: The paper's k for each sparsity class on the 9×9 grid (k_d, k_s, k_es).
K_PER_SPARSITY: dict[str, int] = {"dense": 31, "sparse": 9, "extremely_sparse": 3}
#: Valid ``k_mode`` values of :func:`select_patches`.
K_MODES = ("auto", "fixed", "all")
#: Possible :attr:`Aggregate.verdict` values.
VERDICTS = ("ok", "low confidence", "no usable content")

#: Scale factor from the median absolute deviation to a normal standard deviation.
_MAD_TO_SIGMA = 1.4826
_REFERENCE_CELLS = 81


@dataclass(frozen=True, eq=False)
class Selection:
    """The patches chosen for defocus prediction, and why.

    Attributes
    ----------
    indices : ndarray of int
        ``(k, 2)`` grid positions ``(row, col)`` of the selected patches, by
        decreasing importance (ties in row-major order).
    scores : ndarray of float
        ``(k,)`` importance of each selected patch, in the same order.
    n_positive : int
        Number of patches with ``importance >= threshold``.
    sparsity : str
        Sparsity class from :func:`napari_sparsefocus.core.sparsity_from_count`:
        "empty", "extremely_sparse", "sparse" or "dense".
    k : int
        Number of selected patches (0 when no patch is positive).
    rule : str
        Human-readable account of how ``k`` was chosen, e.g.
        ``"sparse: 12 of 81 patches ≥ 0.8 → k = 9"``.
    grid_shape : tuple of int
        Shape ``(rows, cols)`` of the importance grid.
    threshold : float
        Importance threshold used.
    """

    indices: NDArray[np.intp]
    scores: NDArray[np.float64]
    n_positive: int
    sparsity: str
    k: int
    rule: str
    grid_shape: tuple[int, int]
    threshold: float

    @property
    def n_cells(self) -> int:
        """Number of patches in the grid."""
        return self.grid_shape[0] * self.grid_shape[1]

    @property
    def mask(self) -> NDArray[np.bool_]:
        """Boolean grid of ``grid_shape``, True at the selected patches."""
        m = np.zeros(self.grid_shape, dtype=bool)
        if self.k:
            m[self.indices[:, 0], self.indices[:, 1]] = True
        return m


@dataclass(frozen=True)
class Aggregate:
    """One defocus estimate combined from several patch predictions.

    Attributes
    ----------
    defocus_um : float or None
        Median of the patch predictions (µm, ``z_current - z_focus``); None
        when there was nothing to aggregate.
    spread_um : float
        Robust spread ``1.4826 · MAD`` of the predictions (µm); 0 for one patch.
    direction_agreement : float
        Fraction of patches whose sign equals the sign of the median (a zero
        on either side counts as agreeing); 1.0 for one patch.
    n_patches : int
        Number of patch predictions aggregated.
    verdict : str
        "ok", "low confidence" or "no usable content".
    reason : str
        One sentence explaining the verdict.
    """

    defocus_um: float | None
    spread_um: float
    direction_agreement: float
    n_patches: int
    verdict: str
    reason: str


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _k_for_class(sparsity: str, n_cells: int) -> tuple[int, str]:
    """Return the class k scaled to the grid size and a note on the scaling."""
    base = K_PER_SPARSITY[sparsity]
    if n_cells == _REFERENCE_CELLS:
        return base, ""
    # round half up (Python's round() rounds half to even)
    scaled = max(1, math.floor(base * n_cells / _REFERENCE_CELLS + 0.5))
    return scaled, f" ({base} scaled by {n_cells}/{_REFERENCE_CELLS})"


def _check_importance(importance: ArrayLike) -> NDArray[np.float64]:
    w = np.asarray(importance)
    if w.dtype == object or not (
        np.issubdtype(w.dtype, np.number) or np.issubdtype(w.dtype, np.bool_)
    ):
        raise ValueError(f"importance must be a numeric array, got dtype {w.dtype}")
    if np.iscomplexobj(w):
        raise ValueError("importance must be real, got a complex array")
    w = w.astype(np.float64)
    if w.ndim != 2 or w.size == 0:
        raise ValueError(f"importance must be a non-empty 2-D grid, got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("importance holds NaN or infinite values")
    if w.min() < 0.0 or w.max() > 1.0:
        raise ValueError(
            f"importance values must lie in [0, 1] (apply a sigmoid to logits), "
            f"got range [{w.min():g}, {w.max():g}]"
        )
    return w


def select_patches(
    importance: ArrayLike,
    *,
    threshold: float = DEFAULT_IMPORTANCE_THRESHOLD,
    k_mode: str = "auto",
    k: int | None = None,
) -> Selection:
    """Choose the patches whose defocus predictions will be aggregated.

    Parameters
    ----------
    importance : array_like
        ``(rows, cols)`` importance grid W in [0, 1] (the sigmoid of the RIN
        output; 9×9 for a 2016 px crop).
    threshold : float
        Importance threshold p in (0, 1]; a patch is *positive* when
        ``importance >= threshold``.
    k_mode : {"auto", "fixed", "all"}
        "auto": the paper's rule — k from the sparsity class (dense 31,
        sparse 9, extremely sparse 3), scaled by ``n_cells / 81`` for other
        grid sizes (rounded half up, at least 1). "fixed": ``k`` as given.
        "all": every positive patch. In every mode k is at most the number
        of positive patches.
    k : int, optional
        Number of patches for ``k_mode="fixed"`` (required there, ≥ 1);
        must be None in the other modes.

    Returns
    -------
    Selection
        The top-k positive patches by decreasing importance (ties broken in
        row-major order), the sparsity class and a readable ``rule``. With no
        positive patch, ``k`` is 0 and ``indices`` is empty.

    Raises
    ------
    ValueError
        If ``importance`` is not a finite 2-D grid in [0, 1], ``threshold``
        is outside (0, 1], ``k_mode`` is unknown or ``k`` does not fit the mode.

    Notes
    -----
    The class comes from the number of positive patches n through
    :func:`napari_sparsefocus.core.sparsity_from_count`: on 81 patches,
    empty (0), extremely sparse (1–4), sparse (5–32) and dense (> 32).

    Examples
    --------
    >>> import numpy as np
    >>> w = np.zeros((9, 9))
    >>> w[4, 2:5] = [0.9, 0.95, 0.85]
    >>> sel = select_patches(w)
    >>> sel.k, sel.sparsity, sel.indices.tolist()
    (3, 'extremely_sparse', [[4, 3], [4, 2], [4, 4]])
    """
    w = _check_importance(importance)
    threshold = float(threshold)
    if not (0.0 < threshold <= 1.0):
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    if k_mode not in K_MODES:
        raise ValueError(f"k_mode must be one of {K_MODES}, got {k_mode!r}")
    fixed_k = 0
    if k_mode == "fixed":
        if k is None or isinstance(k, bool) or int(k) != k or k < 1:
            raise ValueError(f"k_mode='fixed' needs an integer k >= 1, got k={k!r}")
        fixed_k = int(k)
    elif k is not None:
        raise ValueError(f"k is only used with k_mode='fixed', got k={k!r} with {k_mode=!r}")

    rows, cols = w.shape
    n_cells = rows * cols
    flat = w.ravel()
    positive = np.flatnonzero(flat >= threshold)  # row-major order
    n_pos = int(positive.size)
    sparsity = sparsity_from_count(n_pos, n_cells)
    head = f"{sparsity.replace('_', ' ')}: {n_pos} of {n_cells} patches ≥ {threshold:g}"

    if n_pos == 0:
        chosen, note = 0, " → k = 0, no usable content"
    else:
        if k_mode == "auto":
            wanted, why = _k_for_class(sparsity, n_cells)
        elif k_mode == "fixed":
            wanted, why = fixed_k, " (fixed)"
        else:
            wanted, why = n_pos, " (all positive patches)"
        chosen = min(wanted, n_pos)
        if chosen < wanted:
            why += f", capped at the {n_pos} positive patches"
        note = f" → k = {chosen}{why}"

    # stable sort on -importance keeps row-major order among equal scores
    order = positive[np.argsort(-flat[positive], kind="stable")][:chosen]
    indices = np.stack(np.unravel_index(order, w.shape), axis=1).astype(np.intp)
    indices = indices.reshape(chosen, 2)
    scores = flat[order].copy()
    indices.setflags(write=False)
    scores.setflags(write=False)
    return Selection(
        indices=indices,
        scores=scores,
        n_positive=n_pos,
        sparsity=sparsity,
        k=chosen,
        rule=head + note,
        grid_shape=(rows, cols),
        threshold=threshold,
    )


def aggregate(
    patch_defocus_um: ArrayLike,
    *,
    dof_um: float,
    min_agreement: float = 0.7,
    max_spread_dof: float = 1.0,
) -> Aggregate:
    """Combine per-patch defocus predictions into one estimate with a verdict.

    Parameters
    ----------
    patch_defocus_um : array_like
        ``(k,)`` defocus predicted for each selected patch (µm); may be empty.
    dof_um : float
        Depth of field of the optics (µm, > 0), e.g. ``Optics().dof_um``.
    min_agreement : float
        Direction agreement in [0, 1] below which the verdict is
        "low confidence".
    max_spread_dof : float
        Spread, in depths of field (> 0), above which the verdict is
        "low confidence".

    Returns
    -------
    Aggregate
        ``defocus_um = median(d)``, ``spread_um = 1.4826 · median(|d - median(d)|)``,
        the direction agreement and a verdict: "no usable content" when
        ``patch_defocus_um`` is empty, "low confidence" when the agreement is
        below ``min_agreement`` or the spread exceeds ``max_spread_dof · dof_um``,
        "ok" otherwise.

    Raises
    ------
    ValueError
        If the predictions are not a finite 1-D array or a parameter is out
        of range.

    Notes
    -----
    A patch agrees with the median when both have the same sign or either is
    exactly 0 (a patch or median at focus contradicts no direction).
    """
    dof_um = float(dof_um)
    if not (math.isfinite(dof_um) and dof_um > 0):
        raise ValueError(f"dof_um must be a finite number > 0, got {dof_um!r}")
    min_agreement = float(min_agreement)
    if not (0.0 <= min_agreement <= 1.0):
        raise ValueError(f"min_agreement must be in [0, 1], got {min_agreement!r}")
    max_spread_dof = float(max_spread_dof)
    if not (math.isfinite(max_spread_dof) and max_spread_dof > 0):
        raise ValueError(f"max_spread_dof must be a finite number > 0, got {max_spread_dof!r}")
    d = np.asarray(patch_defocus_um, dtype=np.float64)
    if d.ndim != 1:
        raise ValueError(f"patch_defocus_um must be 1-D, got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError("patch_defocus_um holds NaN or infinite values")

    n = int(d.size)
    if n == 0:
        return Aggregate(
            defocus_um=None,
            spread_um=0.0,
            direction_agreement=0.0,
            n_patches=0,
            verdict="no usable content",
            reason="no patch holds content above the importance threshold",
        )

    med = float(np.median(d))
    spread = float(_MAD_TO_SIGMA * np.median(np.abs(d - med)))
    sign = np.sign(med)
    agree = (np.sign(d) == sign) | (d == 0.0) | (sign == 0.0)
    agreement = float(np.count_nonzero(agree)) / n

    max_spread_um = max_spread_dof * dof_um
    problems = []
    if agreement < min_agreement:
        problems.append(
            f"only {agreement:.0%} of {n} patches agree on the direction (< {min_agreement:.0%})"
        )
    if spread > max_spread_um:
        problems.append(
            f"spread {_fmt(spread)} µm exceeds {max_spread_dof:g} DoF ({_fmt(max_spread_um)} µm)"
        )
    if problems:
        verdict, reason = "low confidence", "; ".join(problems)
    else:
        verdict = "ok"
        reason = (
            f"{n} patch{'es' if n != 1 else ''}: spread {_fmt(spread)} µm ≤ "
            f"{max_spread_dof:g} DoF ({_fmt(max_spread_um)} µm), "
            f"{agreement:.0%} agree on the direction"
        )
    return Aggregate(
        defocus_um=med,
        spread_um=spread,
        direction_agreement=agreement,
        n_patches=n,
        verdict=verdict,
        reason=reason,
    )


def sharpness_weighted_defocus(
    image: ArrayLike,
    defocus_um: ArrayLike,
    boxes_px: ArrayLike,
) -> float | None:
    """Mean of per-patch defocus predictions, each weighted by its patch's sharpness.

    Near focus the content of one field can be sharpest at different heights
    (cells at several depths, a thick section). Its sharpest plane — the
    focus a z-stack labeller picks, the peak of the summed Brenner curves —
    lies where the sharpest patches are in focus, so weighting each patch's
    own reading by its Brenner gradient follows that plane more closely than
    the median of a few patches. Far from focus the weights flatten and it
    tends to the plain mean.

    Parameters
    ----------
    image : array_like
        ``(H, W)`` gray or ``(H, W, C)`` image the predictions were made on.
    defocus_um : array_like
        ``(n,)`` predictions of the patches (µm).
    boxes_px : array_like
        ``(n, 4)`` patch boxes ``(y0, x0, y1, x1)`` in the image's pixels
        (rounded, clipped to the image).

    Returns
    -------
    float or None
        The weighted mean (µm); None when no patch has a finite prediction,
        a box of at least 3 × 3 px inside the image and a positive sharpness.

    Raises
    ------
    ValueError
        If the image is not 2-D or 3-D, or the shapes of `defocus_um` and
        `boxes_px` do not match.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((8, 16))
    >>> img[:, 8:] = np.tile([0.0, 0.0, 1.0, 1.0], (8, 2))  # only the right half has detail
    >>> sharpness_weighted_defocus(img, [3.0, -1.0], [[0, 0, 8, 8], [0, 8, 8, 16]])
    -1.0
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {img.shape}")
    d = np.asarray(defocus_um, dtype=np.float64).reshape(-1)
    boxes = np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4) if d.size else np.zeros((0, 4))
    if boxes.shape[0] != d.size:
        raise ValueError(f"{d.size} predictions but {boxes.shape[0]} boxes")
    h, w = img.shape[:2]
    axis = -1 if img.ndim == 3 else None
    values, weights = [], []
    for v, box in zip(d, boxes, strict=True):
        if not (math.isfinite(v) and np.all(np.isfinite(box))):
            continue
        y0, x0, y1, x1 = (round(float(b)) for b in box)
        y0, x0, y1, x1 = max(0, y0), max(0, x0), min(h, y1), min(w, x1)
        if y1 - y0 < 3 or x1 - x0 < 3:
            continue
        g = brenner(img[y0:y1, x0:x1], channel_axis=axis)
        if math.isfinite(g) and g > 0:
            values.append(float(v))
            weights.append(g)
    if not values:
        return None
    wts = np.asarray(weights)
    return float(np.dot(wts, values) / wts.sum())
