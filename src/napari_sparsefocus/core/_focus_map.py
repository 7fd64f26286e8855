"""Focus maps: a smooth z-of-xy surface from sparse focus measurements.

A whole-slide scanner images a grid of tiles at the z a *focus map* gives
for each tile. The map comes from a few measurements of the in-focus z:

* the classical *key focus point* (KFP) method measures a handful of points
  with an iterative search and interpolates between them
  (:func:`interpolate_key_points`);
* the one-shot method of the SparseFocus osa-WSI system predicts the defocus
  of every tile from a single snap and fits a smooth surface through all of
  them (:func:`fit_focus_surface`), robust to the odd wrong prediction and
  weighted by the predictor's confidence.

:func:`focus_error_map` and :func:`rms_um` compare a map with the true focus
surface, as the error maps of the paper's Fig. 7 do.

Everything here is plain numpy/scipy: positions and z in µm, any shape of
point arrays (they are flattened).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import ArrayLike, NDArray

__all__ = [
    "KEY_POINT_METHODS",
    "FocusSurface",
    "KeyPointInterpolator",
    "fit_focus_surface",
    "focus_error_map",
    "interpolate_key_points",
    "rms_um",
    "surface_terms",
]

#: Interpolation methods of :func:`interpolate_key_points`.
KEY_POINT_METHODS = ("auto", "plane", "linear", "nearest", "rbf")

#: Highest polynomial degree :func:`fit_focus_surface` accepts.
_MAX_DEGREE = 6
#: Tuning constants (in units of the robust residual scale) with 95 % efficiency
#: under Gaussian residuals.
_HUBER_C = 1.345
_TUKEY_C = 4.685
#: MAD -> standard deviation for Gaussian residuals.
_MAD_TO_SIGMA = 1.4826
#: Residuals beyond this many scale units are left out of the trimmed-RMS scale;
#: a Gaussian truncated at ±2.5 sigma has a standard deviation of 0.9546 sigma.
_TRIM_K = 2.5
_TRIM_CONSISTENCY = 0.9546
#: A point is switched to its alternative z when the alternative's residual is
#: smaller than its own by more than this many scale estimates.
_SWITCH_K = 1.0
_MAX_SWITCH_ROUNDS = 10
#: Random elemental subsets tried for the least-trimmed-squares start.
_N_SUBSETS = 300


def surface_terms(degree: int) -> int:
    """Return the number of coefficients of a full 2-D polynomial of `degree`.

    Parameters
    ----------
    degree : int
        Total degree (0 = constant, 1 = plane, 2 = quadratic, ...).

    Returns
    -------
    int
        ``(degree + 1) * (degree + 2) // 2``, the minimum number of points
        (with positive weight, not collinear) a fit of that degree needs.

    Raises
    ------
    ValueError
        If `degree` is not an integer in ``[0, 6]``.
    """
    d = _check_degree(degree)
    return (d + 1) * (d + 2) // 2


def _check_degree(degree: Any) -> int:
    if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)):
        raise ValueError(f"degree must be an integer, got {degree!r}")
    if not 0 <= int(degree) <= _MAX_DEGREE:
        raise ValueError(f"degree must be in [0, {_MAX_DEGREE}], got {degree}")
    return int(degree)


def _exponents(degree: int) -> tuple[tuple[int, int], ...]:
    return tuple((i - j, j) for i in range(degree + 1) for j in range(i + 1))


def _points(
    x_um: ArrayLike, y_um: ArrayLike, z_um: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    arrays = []
    for name, value in (("x_um", x_um), ("y_um", y_um), ("z_um", z_um)):
        try:
            a = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be numeric, got {value!r}") from exc
        arrays.append(a)
    x, y, z = arrays
    if not x.shape == y.shape == z.shape:
        raise ValueError(
            f"x_um, y_um and z_um must have the same shape, got {x.shape}, {y.shape}, {z.shape}"
        )
    if x.size == 0:
        raise ValueError("at least one point is needed, got none")
    for name, a in (("x_um", x), ("y_um", y), ("z_um", z)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} must be finite (no NaN or inf)")
    return x.ravel(), y.ravel(), z.ravel()


def _weights(weights: ArrayLike | None, n: int, shape: tuple[int, ...]) -> NDArray[np.float64]:
    if weights is None:
        return np.ones(n)
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"weights must be numeric, got {weights!r}") from exc
    if w.shape != shape:
        raise ValueError(f"weights must have the shape of the points {shape}, got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and >= 0")
    return w.ravel().copy()


def _weighted_median(values: NDArray[np.float64], weights: NDArray[np.float64]) -> float:
    order = np.argsort(values)
    v, w = values[order], weights[order]
    cum = np.cumsum(w)
    return float(v[np.searchsorted(cum, 0.5 * cum[-1])])


@dataclass(frozen=True, eq=False)
class FocusSurface:
    r"""A polynomial focus surface ``z = f(x, y)`` fitted to measured points.

    Call it with positions to get the in-focus z there:
    ``surface(x_um, y_um)`` broadcasts like numpy and returns an array
    (0-d for scalars: use ``float(surface(x, y))``).

    Attributes
    ----------
    degree : int
        Total degree of the polynomial.
    coefficients : numpy.ndarray
        One coefficient per term of `exponents`, in the normalised
        coordinates ``u = (x - cx) / s``, ``v = (y - cy) / s``:
        :math:`z = \sum_k c_k u^{i_k} v^{j_k}`.
    exponents : tuple of (int, int)
        ``(i, j)`` powers of ``u`` and ``v`` for each coefficient.
    center_um : tuple of float
        ``(cx, cy)``, centre of the fitted points' bounding box.
    scale_um : float
        ``s``, half the larger side of that box (1 when all points coincide).
    x_um, y_um, z_um : numpy.ndarray
        The fitted points (flattened).
    weights : numpy.ndarray
        Prior weights as given (confidence; 0 = ignored).
    robust_weights : numpy.ndarray
        Final robust (M-estimator) weights in ``[0, 1]``; all 1 for a plain
        least-squares fit; with a spline on a robust fit, those of its
        leave-one-out test.
    residuals_um : numpy.ndarray
        ``z_um - surface(x_um, y_um)`` at every point, including ignored and
        rejected ones.
    inliers : numpy.ndarray of bool
        Points that carry weight and whose leverage-adjusted residual
        ``r / sqrt(1 - h)`` is within ``4.685 * scale_estimate_um`` (robust
        fits); for plain least squares, every point with positive weight.
        With a spline on a robust fit: the points its leave-one-out test
        keeps (see :func:`fit_focus_surface`).
    scale_estimate_um : float
        Robust residual scale used to reject outliers (from the
        leverage-adjusted residuals, see :func:`fit_focus_surface`), floored
        at the fit's `min_scale_um`.
    rms_residual_um : float
        Weighted RMS residual of the inliers.
    robust : bool
        Whether outliers were down-weighted.
    n_iterations : int
        Reweighting iterations done (0 for plain least squares).
    switched : numpy.ndarray of bool
        Points fitted with their alternative z (``z_alt_um`` of
        :func:`fit_focus_surface`); `z_um` holds the values used.
    spline_smoothing : float or None
        Smoothing of the thin-plate spline through the inliers' residuals
        that the surface adds to the polynomial (``spline_smoothing`` of
        :func:`fit_focus_surface`); None for a polynomial only. With a spline,
        `residuals_um` and `rms_residual_um` are those of the sum.
    """

    degree: int
    coefficients: NDArray[np.float64]
    exponents: tuple[tuple[int, int], ...]
    center_um: tuple[float, float]
    scale_um: float
    x_um: NDArray[np.float64]
    y_um: NDArray[np.float64]
    z_um: NDArray[np.float64]
    weights: NDArray[np.float64]
    robust_weights: NDArray[np.float64]
    residuals_um: NDArray[np.float64]
    inliers: NDArray[np.bool_]
    scale_estimate_um: float
    rms_residual_um: float
    robust: bool
    n_iterations: int
    switched: NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    spline_smoothing: float | None = None
    _spline: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.switched.shape != self.z_um.shape:
            object.__setattr__(self, "switched", np.zeros(self.z_um.shape, dtype=bool))

    def __call__(self, x_um: ArrayLike, y_um: ArrayLike) -> NDArray[np.float64]:
        """Evaluate the surface.

        Parameters
        ----------
        x_um, y_um : array_like
            Positions; broadcast against each other.

        Returns
        -------
        numpy.ndarray
            In-focus z (µm) at each position, of the broadcast shape.
        """
        x, y = np.broadcast_arrays(
            np.asarray(x_um, dtype=np.float64), np.asarray(y_um, dtype=np.float64)
        )
        u = (x - self.center_um[0]) / self.scale_um
        v = (y - self.center_um[1]) / self.scale_um
        out = np.zeros(u.shape)
        for c, (i, j) in zip(self.coefficients, self.exponents, strict=True):
            out += c * u**i * v**j
        if self._spline is not None and out.size:
            out += self._spline(np.stack([u.ravel(), v.ravel()], axis=1)).reshape(u.shape)
        return out

    @property
    def n_inliers(self) -> int:
        """Number of inlier points."""
        return int(np.count_nonzero(self.inliers))

    @property
    def outliers(self) -> NDArray[np.bool_]:
        """Points with positive prior weight that the robust fit rejected."""
        return (self.weights > 0) & ~self.inliers


def _design(
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    exponents: tuple[tuple[int, int], ...],
    center: tuple[float, float],
    scale: float,
) -> NDArray[np.float64]:
    u = (x - center[0]) / scale
    v = (y - center[1]) / scale
    return np.stack([u**i * v**j for i, j in exponents], axis=-1)


def _wls(
    a: NDArray[np.float64], z: NDArray[np.float64], w: NDArray[np.float64]
) -> NDArray[np.float64] | None:
    """Weighted least squares; None when the weighted design is rank-deficient."""
    keep = w > 0
    sw = np.sqrt(w[keep])
    aw = a[keep] * sw[:, None]
    if aw.shape[0] < aw.shape[1]:
        return None
    beta, _, rank, _ = np.linalg.lstsq(aw, z[keep] * sw, rcond=None)
    if rank < a.shape[1]:
        return None
    return np.asarray(beta, dtype=np.float64)


def _standardizer(a: NDArray[np.float64], w: NDArray[np.float64]) -> NDArray[np.float64]:
    """``1 / sd`` of each residual of the fit weighted by `w`, in units of the noise sd.

    For ``r = z - A M^-1 A^T W z`` with ``M = A^T W A`` and homoscedastic noise,
    ``var(r_i) = 1 - 2 w_i q_ii + b_i^T (A^T W^2 A) b_i`` with ``b_i = M^-1 a_i``
    and ``q_ii = a_i^T b_i``: ``1 - h_i`` for a point in the fit (the fit
    bends towards high-leverage points) and ``1 + q_ii`` for a point left out.
    """
    m = a.T @ (a * w[:, None])
    b = a @ np.linalg.pinv(m)
    q = np.sum(b * a, axis=1)
    g = a.T @ (a * (w**2)[:, None])
    var = 1.0 - 2.0 * w * q + np.sum((b @ g) * b, axis=1)
    return np.asarray(1.0 / np.sqrt(np.maximum(var, 0.1)), dtype=np.float64)


def _robust_scale(
    r: NDArray[np.float64], w: NDArray[np.float64], n_params: int, floor: float
) -> float:
    """Weighted MAD scale, leaving out the `n_params` smallest residuals.

    A fit of ``p`` parameters can pass (nearly) through ``p`` points, so their
    residuals say nothing about the noise and would shrink the median.
    """
    keep = w > 0
    a, wk = np.abs(r[keep]), w[keep]
    if a.size > 2 * n_params:
        order = np.argsort(a)[n_params:]
        a, wk = a[order], wk[order]
    return max(_MAD_TO_SIGMA * _weighted_median(a, wk), floor)


def _lts_start(
    a: NDArray[np.float64], z: NDArray[np.float64], w: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
    """High-breakdown start: weighted least trimmed squares (FAST-LTS style).

    Returns the coefficients and the weights of the kept half (``w`` times
    0/1), or None when there are too few points to trim.
    """
    idx = np.flatnonzero(w > 0)
    n, p = idx.size, a.shape[1]
    h = (n + p + 1) // 2
    if h >= n:
        return None
    rng = np.random.default_rng(0)  # deterministic: same data, same fit

    def c_steps(beta: NDArray[np.float64], steps: int) -> tuple[float, NDArray[np.float64]]:
        obj = math.inf
        for _ in range(steps):
            r2 = w * (z - a @ beta) ** 2
            keep = idx[np.argsort(r2[idx])[:h]]
            new_obj = float(np.sum(r2[keep]))
            wk = np.zeros_like(w)
            wk[keep] = w[keep]
            refit = _wls(a, z, wk)
            if refit is None or new_obj >= obj:
                break
            beta, obj = refit, new_obj
        return obj, beta

    starts: list[tuple[float, NDArray[np.float64]]] = []
    n_subsets = min(_N_SUBSETS, math.comb(n, p))
    for _ in range(n_subsets):
        sub = rng.choice(idx, size=p, replace=False)
        beta, _, rank, _ = np.linalg.lstsq(a[sub], z[sub], rcond=None)
        if rank < p:
            continue
        starts.append(c_steps(np.asarray(beta, dtype=np.float64), 2))
    if not starts:
        return None
    starts.sort(key=lambda t: t[0])
    best = min((c_steps(beta, 100) for _, beta in starts[:10]), key=lambda t: t[0])[1]
    r2 = w * (z - a @ best) ** 2
    kept = np.zeros_like(w)
    keep = idx[np.argsort(r2[idx])[:h]]
    kept[keep] = w[keep]
    return best, kept


def _trimmed_rms_scale(
    r: NDArray[np.float64], w: NDArray[np.float64], s: float, floor: float
) -> float:
    """Gaussian-consistent RMS of the residuals within ``2.5 s`` (one reweighting step)."""
    keep = (w > 0) & (np.abs(r) <= _TRIM_K * s)
    if np.count_nonzero(keep) < 3:
        return s
    rms = math.sqrt(float(np.sum(w[keep] * r[keep] ** 2) / np.sum(w[keep])))
    return max(rms / _TRIM_CONSISTENCY, floor)


def _reweighted_start(
    a: NDArray[np.float64],
    z: NDArray[np.float64],
    w: NDArray[np.float64],
    beta: NDArray[np.float64],
    kept: NDArray[np.float64],
    floor: float,
) -> tuple[NDArray[np.float64], float, NDArray[np.float64]]:
    """Scale of a least-trimmed-squares fit, then reweighted least squares.

    The RMS of the ``h`` kept residuals underestimates the noise sd by the
    factor ``sqrt(1 - 2 q phi(q) / alpha)``, ``alpha = h / n``,
    ``q = Phi^-1((1 + alpha) / 2)`` (a Gaussian truncated to its central
    ``alpha``). Points within 2.5 of that scale are then refitted by least
    squares and the scale re-estimated from them (twice), as in FAST-LTS's
    reweighting step; the refit removes the extra shrinkage of residuals
    the trimmed fit chose to be small. The scale returned is the larger of
    that trimmed RMS and the (unbiased but noisier) MAD of the refit's
    residuals, which guards against a collapsed scale on an unlucky sample.
    Returns the refit's coefficients, the scale and the refit's weights.
    """
    from scipy.special import ndtri

    k = kept > 0
    alpha = float(np.count_nonzero(k)) / float(np.count_nonzero(w > 0))
    q = float(ndtri(0.5 * (1.0 + alpha)))
    c2 = 1.0 - 2.0 * q * math.exp(-0.5 * q * q) / math.sqrt(2.0 * math.pi) / alpha
    r = (z - a @ beta) * _standardizer(a, kept)
    s = max(math.sqrt(float(np.sum(w[k] * r[k] ** 2) / np.sum(w[k])) / max(c2, 1e-6)), floor)
    fit_w = w * k
    for _ in range(2):
        keep = (w > 0) & (np.abs(r) <= _TRIM_K * s)
        refit = _wls(a, z, w * keep)
        if refit is None:
            break
        beta, fit_w = refit, w * keep
        r = (z - a @ beta) * _standardizer(a, fit_w)
        rms = math.sqrt(float(np.sum(w[keep] * r[keep] ** 2) / np.sum(w[keep])))
        mad = _MAD_TO_SIGMA * _weighted_median(np.abs(r[w > 0]), w[w > 0])
        s = max(rms / _TRIM_CONSISTENCY, mad, floor)
    return beta, s, fit_w


def _psi_weights(u: NDArray[np.float64], loss: str) -> NDArray[np.float64]:
    au = np.abs(u)
    if loss == "huber":
        return np.where(au <= 1.0, 1.0, 1.0 / np.maximum(au, 1e-300))
    return np.where(au < 1.0, (1.0 - u**2) ** 2, 0.0)


def fit_focus_surface(
    x_um: ArrayLike,
    y_um: ArrayLike,
    z_um: ArrayLike,
    weights: ArrayLike | None = None,
    *,
    degree: int = 2,
    robust: bool = True,
    loss: Literal["tukey", "huber"] = "tukey",
    min_scale_um: float = 0.05,
    max_iter: int = 50,
    tol_um: float = 1e-6,
    z_alt_um: ArrayLike | None = None,
    spline_smoothing: float | None = None,
) -> FocusSurface:
    """Fit a polynomial focus surface to measured in-focus z, robustly.

    Parameters
    ----------
    x_um, y_um, z_um : array_like
        Positions and measured in-focus z of the points (same shape, finite).
    weights : array_like, optional
        Non-negative confidence of each point (same shape); 0 leaves a point
        out of the fit (its residual is still reported). Default: all 1.
    degree : int, default 2
        Total degree of the polynomial (0-6). A fit needs at least
        :func:`surface_terms` ``(degree)`` points with positive weight, in
        general position (e.g. not all on a line for ``degree >= 1``).
    robust : bool, default True
        Down-weight outliers with iteratively reweighted least squares.
        False gives a plain weighted least-squares fit.
    loss : {"tukey", "huber"}, default "tukey"
        Robust loss. "tukey" (biweight) rejects gross outliers completely
        (weight 0); "huber" only down-weights them. Both start from a
        least-trimmed-squares fit (see Notes).
    min_scale_um : float, default 0.05
        Floor on the robust residual scale, so that an (almost) exact fit
        does not reject points for residuals of numerical size. Set it near
        the measurement noise you consider harmless (a fraction of the
        depth of field).
    max_iter : int, default 50
        Reweighting iterations.
    tol_um : float, default 1e-6
        Convergence tolerance on the change of the fitted z at the points.
    z_alt_um : array_like, optional
        An alternative z for every point (same shape), e.g. ``z_snap +
        defocus`` where ``z_um = z_snap - defocus`` and the sign of the
        predicted defocus is uncertain. A point whose alternative lies closer
        to the fitted surface than its `z_um`, by more than one residual
        scale estimate, is switched to the alternative and the fit repeated,
        until no point changes (see :attr:`FocusSurface.switched`).
    spline_smoothing : float, optional
        Add a smoothing thin-plate spline through the residuals of the
        inliers to the polynomial, for focal surfaces a low-degree polynomial
        cannot follow (a ripple or a bow that is not quadratic). The spline
        works in the normalised coordinates of the polynomial (the points'
        box spans ``[-1, 1]``); each inlier's smoothing is
        ``spline_smoothing / sqrt(w)``, with ``w`` its prior times robust
        weight relative to the largest, so confident points are followed
        more closely. 0 interpolates the inliers exactly; larger values
        approach the polynomial. Needs at least four inliers not all on a
        line, else the surface stays a polynomial. With ``robust=True`` the
        outliers are then judged against the surface the spline makes (see
        Notes). Default: no spline.

    Returns
    -------
    FocusSurface
        The fitted surface, with residuals, inliers and weights.

    Raises
    ------
    ValueError
        If the arrays differ in shape, hold NaN/inf or negative weights,
        `degree` is out of range, there are fewer positive-weight points than
        terms, or the points are degenerate for the degree (collinear, all
        coincident).

    Notes
    -----
    Coordinates are centred and scaled to ``[-1, 1]`` before fitting, which
    keeps the least-squares problem well conditioned.

    The robust fit is an MM-type estimator:

    1. a high-breakdown start: weighted least trimmed squares over random
       elemental subsets with concentration steps (FAST-LTS; deterministic,
       seeded), which tolerates up to about half the points being wrong;
    2. a residual scale ``s`` from it, refined by refitting the points within
       2.5 ``s`` by least squares (FAST-LTS reweighting) and taking the larger
       of their Gaussian-consistent trimmed RMS and their MAD;
    3. iteratively reweighted least squares with that fixed scale: the
       effective weight of a point is its prior weight times ``psi(u) / u``,
       ``u = r / (c s sd_r)``, with Tukey's biweight (``c = 4.685``) or
       Huber's loss (``c = 1.345``, scale re-estimated by MAD each step).

    ``sd_r`` is each residual's own standard deviation (in units of the
    noise) under the current weights: the fit bends towards high-leverage
    points such as the corners of a grid, whose raw residuals understate
    their misfit, and away from points it leaves out. With a few gross
    outliers among many points (the typical failure of a one-shot predictor
    on an empty or ambiguous tile) the biweight gives them weight 0 and the
    fit equals the least-squares fit of the rest.

    With a spline, a polynomial that cannot follow the slide (a dome deeper
    than a quadratic) would reject good points at its edges. So the outliers
    are judged again against the surface the spline makes, each point left
    out of its own test: its residual from the polynomial minus the spline
    through the *other* inliers. Tukey's biweight of that residual over
    ``4.685`` scales (the MAD of the inliers' test residuals, floored at
    `min_scale_um`) gives the new robust weights, starting from the
    polynomial's and repeated until the inliers settle. The polynomial part
    stays the robust fit above; `inliers` and `robust_weights` are those of
    the spline.

    References
    ----------
    .. [1] P. J. Huber and E. M. Ronchetti, "Robust Statistics", 2nd ed.,
       Wiley (2009), chapter 7.
    .. [2] P. J. Rousseeuw and K. Van Driessen, "Computing LTS regression
       for large data sets", Data Min. Knowl. Discov. 12, 29-45 (2006).
    .. [3] Y. Zhai et al., "SparseFocus: Learning-based one-shot autofocus
       for microscopy with sparse content", arXiv:2502.06452 (2025),
       Section 5 (one-shot focus map of the osa-WSI system).
    """
    x, y, z = _points(x_um, y_um, z_um)
    shape = np.shape(np.asarray(x_um))
    w = _weights(weights, x.size, shape)
    deg = _check_degree(degree)
    if loss not in ("tukey", "huber"):
        raise ValueError(f"loss must be 'tukey' or 'huber', got {loss!r}")
    if not (math.isfinite(min_scale_um) and min_scale_um > 0):
        raise ValueError(f"min_scale_um must be finite and > 0, got {min_scale_um!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not (math.isfinite(tol_um) and tol_um > 0):
        raise ValueError(f"tol_um must be finite and > 0, got {tol_um!r}")

    z_alt = None
    if z_alt_um is not None:
        try:
            z_alt = np.asarray(z_alt_um, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"z_alt_um must be numeric, got {z_alt_um!r}") from exc
        if z_alt.shape != shape:
            raise ValueError(
                f"z_alt_um must have the shape of the points {shape}, got {z_alt.shape}"
            )
        z_alt = z_alt.ravel()
        if not np.all(np.isfinite(z_alt[w > 0])):
            raise ValueError("z_alt_um must be finite where the weight is positive")
    if spline_smoothing is not None and not (
        math.isfinite(spline_smoothing) and spline_smoothing >= 0
    ):
        raise ValueError(f"spline_smoothing must be finite and >= 0, got {spline_smoothing!r}")
    args = (x, y, w, deg, robust, loss, min_scale_um, max_iter, tol_um)
    fit = _fit(z, *args)
    if z_alt is None:
        return _with_spline(fit, spline_smoothing, min_scale_um)
    # Switch points whose own z the fit rejects but whose alternative it accepts,
    # refit, and repeat until no point changes side.
    switched = np.zeros(x.size, dtype=bool)
    for _ in range(_MAX_SWITCH_ROUNDS):
        z_used = np.where(switched, z_alt, z)
        z_other = np.where(switched, z, z_alt)
        fitted = fit(x, y)
        margin = _SWITCH_K * fit.scale_estimate_um
        r_used = np.abs(z_used - fitted)
        r_other = np.abs(z_other - fitted)
        flip = (w > 0) & (r_other < r_used - margin)
        if not np.any(flip):
            break
        switched ^= flip
        fit = _fit(np.where(switched, z_alt, z), *args)
    return _with_spline(dataclasses.replace(fit, switched=switched), spline_smoothing, min_scale_um)


def _spline_through(
    uv: NDArray[np.float64],
    r: NDArray[np.float64],
    w: NDArray[np.float64],
    smoothing: float,
) -> Any:
    """Thin-plate spline through residuals ``r`` at ``uv``, smoothing ``smoothing / sqrt(w)``."""
    from scipy.interpolate import RBFInterpolator

    w = np.maximum(w / w.max(), 1e-6)
    return RBFInterpolator(
        uv, r, kernel="thin_plate_spline", degree=1, smoothing=smoothing / np.sqrt(w)
    )


def _loo_reweight(
    uv: NDArray[np.float64],
    r: NDArray[np.float64],
    w: NDArray[np.float64],
    robust_w: NDArray[np.float64],
    smoothing: float,
    min_scale_um: float,
) -> NDArray[np.float64]:
    """Robust weights judged against the spline surface, each point left out of its own test.

    A point's test residual is its residual minus the spline through the
    *other* inliers (an outlier's: minus the spline through all inliers),
    weighted by prior times the current robust weight. The new robust weight
    is Tukey's biweight of the test residual over ``4.685`` scales, the scale
    being the MAD of the inliers' test residuals (floored at `min_scale_um`).
    Repeated until the inlier set settles (at most 10 rounds); `robust_w`
    unchanged if a spline cannot be fitted.
    """
    cand = w > 0
    rw = np.where(cand, robust_w, 0.0)
    for _ in range(10):
        idx = np.flatnonzero(rw > 0)
        if idx.size < 5:
            return rw
        ww = w * rw
        try:
            full = _spline_through(uv[idx], r[idx], ww[idx], smoothing)
            test = r - full(uv)
            for j, i in enumerate(idx):
                keep = np.delete(idx, j)
                f = _spline_through(uv[keep], r[keep], ww[keep], smoothing)
                test[i] = r[i] - float(f(uv[i : i + 1])[0])
        except (ValueError, np.linalg.LinAlgError):  # e.g. the rest all on a line
            return rw
        scale = max(_MAD_TO_SIGMA * float(np.median(np.abs(test[idx]))), min_scale_um)
        new = np.where(cand, _psi_weights(test / (_TUKEY_C * scale), "tukey"), 0.0)
        settled = np.array_equal(new > 0, rw > 0)
        rw = new
        if settled:
            break
    return rw


def _with_spline(fit: FocusSurface, smoothing: float | None, min_scale_um: float) -> FocusSurface:
    """Add the smoothing spline of ``fit_focus_surface`` through the inliers' residuals."""
    if smoothing is None:
        return fit
    inl = fit.inliers & (fit.weights > 0)
    if np.count_nonzero(inl) < 4:
        return fit
    uv = np.stack(
        [
            (fit.x_um - fit.center_um[0]) / fit.scale_um,
            (fit.y_um - fit.center_um[1]) / fit.scale_um,
        ],
        axis=1,
    )
    smoothing = float(smoothing)
    if fit.robust:
        # The polynomial's robust fit rejects points it cannot follow, good ones
        # too where the slide bows beyond it; judge them against the surface the
        # map uses (polynomial + spline), each point left out of its own test.
        rw = _loo_reweight(
            uv, fit.residuals_um, fit.weights, fit.robust_weights * inl, smoothing, min_scale_um
        )
        inl = rw > 0
    else:
        rw = fit.robust_weights
    if np.count_nonzero(inl) < 4:
        return fit
    w = fit.weights * rw
    try:
        spline = _spline_through(uv[inl], fit.residuals_um[inl], w[inl], smoothing)
    except (ValueError, np.linalg.LinAlgError):  # e.g. all inliers on a line
        return fit
    out = dataclasses.replace(
        fit, spline_smoothing=smoothing, _spline=spline, inliers=inl, robust_weights=rw
    )
    residuals = fit.z_um - out(fit.x_um, fit.y_um)
    wi = fit.weights[inl]
    rms = float(np.sqrt(np.sum(wi * residuals[inl] ** 2) / np.sum(wi)))
    return dataclasses.replace(out, residuals_um=residuals, rms_residual_um=rms)


def _fit(
    z: NDArray[np.float64],
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    w: NDArray[np.float64],
    deg: int,
    robust: bool,
    loss: str,
    min_scale_um: float,
    max_iter: int,
    tol_um: float,
) -> FocusSurface:
    exps = _exponents(deg)
    n_terms = len(exps)
    n_pos = int(np.count_nonzero(w > 0))
    if n_pos < n_terms:
        raise ValueError(
            f"a degree-{deg} surface needs at least {n_terms} points with positive weight, "
            f"got {n_pos}"
        )
    center = (0.5 * float(x.min() + x.max()), 0.5 * float(y.min() + y.max()))
    half = 0.5 * max(float(x.max() - x.min()), float(y.max() - y.min()))
    scale = half if half > 0 else 1.0
    a = _design(x, y, exps, center, scale)

    beta = _wls(a, z, w)
    if beta is None:
        raise ValueError(
            f"the {n_pos} weighted points are degenerate for a degree-{deg} surface "
            "(collinear or coincident positions): use a lower degree or more spread points"
        )
    n_iter = 0
    robust_w = np.ones_like(w)
    r = z - a @ beta
    # Residuals are standardised by their own sd under the current weights: the
    # fit bends towards high-leverage points (e.g. the corners of a grid), whose
    # raw residuals understate their misfit, and away from points it leaves out.
    std = _standardizer(a, w)
    s = _robust_scale(r * std, w, n_terms, min_scale_um)
    if robust:
        start = _lts_start(a, z, w)
        if start is not None:
            beta, s, fit_w = _reweighted_start(a, z, w, *start, min_scale_um)
            r = z - a @ beta
            std = _standardizer(a, fit_w)
        else:
            s = _trimmed_rms_scale(r * std, w, s, min_scale_um)
        c = _TUKEY_C if loss == "tukey" else _HUBER_C
        for _ in range(max_iter):
            if loss == "huber":
                s = _robust_scale(r * std, w, n_terms, min_scale_um)
            rw = _psi_weights(r * std / (c * s), loss)
            new = _wls(a, z, w * rw)
            if new is None:  # too many points rejected: keep the last good fit
                break
            n_iter += 1
            change = float(np.max(np.abs(a @ (new - beta))))
            beta, robust_w = new, rw
            r = z - a @ beta
            std = _standardizer(a, w * rw)
            if change < tol_um:
                break
        robust_w = _psi_weights(r * std / (c * s), loss)
        inliers = (w > 0) & (np.abs(r * std) <= _TUKEY_C * s)
    else:
        inliers = w > 0
    wi = w * inliers
    rms = math.sqrt(float(np.sum(wi * r**2) / np.sum(wi))) if np.sum(wi) > 0 else math.nan
    return FocusSurface(
        degree=deg,
        coefficients=beta,
        exponents=exps,
        center_um=center,
        scale_um=scale,
        x_um=x,
        y_um=y,
        z_um=z,
        weights=w,
        robust_weights=robust_w,
        residuals_um=r,
        inliers=inliers,
        scale_estimate_um=s,
        rms_residual_um=rms,
        robust=robust,
        n_iterations=n_iter,
    )


class KeyPointInterpolator:
    """Callable focus map interpolated from a few key focus points.

    Built by :func:`interpolate_key_points`; ``interp(x_um, y_um)`` returns the
    interpolated in-focus z, broadcasting like numpy.

    Attributes
    ----------
    method : str
        The interpolation actually used ("plane", "linear", "nearest", "rbf").
    fill : str
        How "linear" extrapolates outside the convex hull of the points.
    x_um, y_um, z_um : numpy.ndarray
        The key points.
    """

    def __init__(
        self,
        x_um: NDArray[np.float64],
        y_um: NDArray[np.float64],
        z_um: NDArray[np.float64],
        method: str,
        fill: str,
    ) -> None:
        self.x_um, self.y_um, self.z_um = x_um, y_um, z_um
        self.method = method
        self.fill = fill
        pts = np.column_stack([x_um, y_um])
        plane = _min_norm_plane(x_um, y_um, z_um)
        fn: Callable[[NDArray[np.float64]], NDArray[np.float64]] = plane
        if method in ("nearest", "linear"):
            from scipy.spatial import cKDTree

            tree = cKDTree(pts)

            def nearest(q: NDArray[np.float64]) -> NDArray[np.float64]:
                _, idx = tree.query(q)
                return np.asarray(z_um[idx], dtype=np.float64)

            fn = nearest
        if method == "linear":
            from scipy.interpolate import LinearNDInterpolator

            linear = LinearNDInterpolator(pts, z_um)
            outside = nearest if fill == "nearest" else plane

            def linear_filled(q: NDArray[np.float64]) -> NDArray[np.float64]:
                out = np.asarray(linear(q), dtype=np.float64).reshape(-1)
                bad = ~np.isfinite(out)
                if np.any(bad):
                    out[bad] = outside(q[bad])
                return out

            fn = linear_filled
        elif method == "rbf":
            from scipy.interpolate import RBFInterpolator

            rbf = RBFInterpolator(pts, z_um, kernel="thin_plate_spline", degree=1)

            def smooth(q: NDArray[np.float64]) -> NDArray[np.float64]:
                return np.asarray(rbf(q), dtype=np.float64)

            fn = smooth
        self._fn = fn

    def __call__(self, x_um: ArrayLike, y_um: ArrayLike) -> NDArray[np.float64]:
        """Evaluate the interpolated map.

        Parameters
        ----------
        x_um, y_um : array_like
            Positions; broadcast against each other.

        Returns
        -------
        numpy.ndarray
            Interpolated in-focus z (µm) of the broadcast shape.
        """
        x, y = np.broadcast_arrays(
            np.asarray(x_um, dtype=np.float64), np.asarray(y_um, dtype=np.float64)
        )
        q = np.column_stack([x.ravel(), y.ravel()])
        return self._fn(q).reshape(x.shape)

    def __repr__(self) -> str:
        return f"KeyPointInterpolator(method={self.method!r}, n_points={self.z_um.size})"


def _min_norm_plane(
    x: NDArray[np.float64], y: NDArray[np.float64], z: NDArray[np.float64]
) -> Callable[[NDArray[np.float64]], NDArray[np.float64]]:
    """Least-squares plane, minimum-norm slope when under-determined.

    Exact through 1 point (constant), 2 points (slope along their line) and
    3 non-collinear points; a least-squares plane beyond.
    """
    cx, cy, cz = float(x.mean()), float(y.mean()), float(z.mean())
    a = np.column_stack([x - cx, y - cy])
    slope, *_ = np.linalg.lstsq(a, z - cz, rcond=None)
    gx, gy = float(slope[0]), float(slope[1])

    def plane(q: NDArray[np.float64]) -> NDArray[np.float64]:
        return cz + gx * (q[:, 0] - cx) + gy * (q[:, 1] - cy)

    return plane


def interpolate_key_points(
    x_um: ArrayLike,
    y_um: ArrayLike,
    z_um: ArrayLike,
    *,
    method: str = "auto",
    fill: Literal["nearest", "plane"] = "nearest",
) -> KeyPointInterpolator:
    """Interpolate a focus map from a few key focus points (the KFP baseline).

    Parameters
    ----------
    x_um, y_um, z_um : array_like
        Positions and measured in-focus z of the key points (same shape,
        finite, no two at the same position).
    method : {"auto", "plane", "linear", "nearest", "rbf"}, default "auto"
        * "plane": least-squares plane; exact through up to 3 points (a
          constant for one point, a slope along the line for two);
        * "linear": piecewise-linear on the Delaunay triangulation, exact at
          the points, extrapolated by `fill` outside their convex hull;
        * "nearest": value of the nearest key point;
        * "rbf": thin-plate-spline radial basis function with a linear term,
          exact at the points and smooth everywhere;
        * "auto": "plane" for up to 3 points, else "linear".
    fill : {"nearest", "plane"}, default "nearest"
        Extrapolation of "linear" outside the hull: nearest key point, or
        the least-squares plane through all of them.

    Returns
    -------
    KeyPointInterpolator
        ``interp(x_um, y_um) -> z_um``.

    Raises
    ------
    ValueError
        For mismatched shapes, NaN/inf, duplicate positions, an unknown
        method, or too few / collinear points for "linear" and "rbf"
        (they need 3 points not on a line).

    Notes
    -----
    This is the traditional WSI focus map the SparseFocus paper compares
    against (its Fig. 6a and 7): key focus points, each found by a slow
    iterative search, then interpolated. Between and beyond the points it
    cannot follow an uneven sample surface.
    """
    x, y, z = _points(x_um, y_um, z_um)
    if method not in KEY_POINT_METHODS:
        raise ValueError(f"method must be one of {KEY_POINT_METHODS}, got {method!r}")
    if fill not in ("nearest", "plane"):
        raise ValueError(f"fill must be 'nearest' or 'plane', got {fill!r}")
    pts = np.column_stack([x, y])
    if np.unique(pts, axis=0).shape[0] != pts.shape[0]:
        raise ValueError("key points must have distinct (x, y) positions")
    if method == "auto":
        method = "plane" if x.size <= 3 else "linear"
    if method in ("linear", "rbf"):
        centred = pts - pts.mean(axis=0)
        if x.size < 3 or np.linalg.matrix_rank(centred, tol=1e-9 * (np.abs(centred).max() + 1)) < 2:
            raise ValueError(
                f"method {method!r} needs at least 3 key points not on one line, "
                f"got {x.size}: use method='plane'"
            )
    return KeyPointInterpolator(x, y, z, method, fill)


def focus_error_map(
    surface: Callable[[Any, Any], ArrayLike],
    truth_fn: Callable[[Any, Any], ArrayLike],
    xs_um: ArrayLike,
    ys_um: ArrayLike,
) -> NDArray[np.float64]:
    """Evaluate a focus map against the true focus on a grid.

    Parameters
    ----------
    surface : callable
        The focus map, ``surface(x_um, y_um) -> z_um`` (e.g. a
        :class:`FocusSurface` or :class:`KeyPointInterpolator`).
    truth_fn : callable
        True in-focus z, ``truth_fn(x_um, y_um) -> z_um`` (e.g. a virtual
        slide's ``z_focus_um``). Tried on the whole grid first; if it does
        not broadcast, it is called point by point.
    xs_um, ys_um : array_like
        1-D grid coordinates.

    Returns
    -------
    numpy.ndarray
        ``(len(ys_um), len(xs_um))`` array of ``surface - truth``: the
        defocus (``z_current - z_focus``) an image taken at the map's z
        would have.

    Raises
    ------
    ValueError
        If the coordinates are not finite 1-D arrays, or a function returns
        something of the wrong size.
    """
    xs = np.asarray(xs_um, dtype=np.float64)
    ys = np.asarray(ys_um, dtype=np.float64)
    if xs.ndim != 1 or ys.ndim != 1 or xs.size == 0 or ys.size == 0:
        raise ValueError("xs_um and ys_um must be non-empty 1-D arrays")
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        raise ValueError("xs_um and ys_um must be finite")
    gx, gy = np.meshgrid(xs, ys)
    return _on_grid(surface, gx, gy, "surface") - _on_grid(truth_fn, gx, gy, "truth_fn")


def _on_grid(
    fn: Callable[[Any, Any], ArrayLike],
    gx: NDArray[np.float64],
    gy: NDArray[np.float64],
    name: str,
) -> NDArray[np.float64]:
    try:
        out = np.asarray(fn(gx, gy), dtype=np.float64)
    except (TypeError, ValueError):
        out = np.empty(0)
    if out.shape != gx.shape:
        if out.size == gx.size:
            return out.reshape(gx.shape)
        out = np.array(
            [
                float(np.asarray(fn(float(a), float(b))))
                for a, b in zip(gx.flat, gy.flat, strict=True)
            ]
        ).reshape(gx.shape)
    return out


def rms_um(errors_um: ArrayLike) -> float:
    """Root-mean-square of focus errors, ignoring NaN.

    Parameters
    ----------
    errors_um : array_like
        Errors (any shape), e.g. from :func:`focus_error_map`.

    Returns
    -------
    float
        ``sqrt(mean(e**2))`` over the finite entries.

    Raises
    ------
    ValueError
        If there is no finite entry.
    """
    e = np.asarray(errors_um, dtype=np.float64)
    e = e[np.isfinite(e)]
    if e.size == 0:
        raise ValueError("no finite error to average")
    return math.sqrt(float(np.mean(e**2)))
