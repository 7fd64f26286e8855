"""Classical iterative autofocus: search z for the maximum of a focus measure.

These are the "hill-climbing" baselines of the SparseFocus paper: they need
many snaps and moves, and on sparse content the focus measure is too flat
for them to work. The hardware layer supplies ``snap(z_um) -> image``, which
moves the focus stage to ``z_um`` and returns an image there.

Both searches exist as generators (``iter_*``), which yield a
:class:`SearchStep` after every snap so that a GUI can show progress or
cancel, and *return* a :class:`SearchResult`; the plain functions run the
generator to completion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._focus_measures import FocusMeasure, _resolve_measure

if TYPE_CHECKING:
    from collections.abc import Callable, Generator

    from numpy.typing import ArrayLike

__all__ = [
    "SearchResult",
    "SearchStep",
    "brent_search",
    "hill_climb",
    "iter_brent_search",
    "iter_hill_climb",
]

#: z positions are memoised after rounding to this many decimals (1e-6 µm).
_Z_DECIMALS = 6

#: Golden-section fraction (3 - sqrt(5)) / 2.
_GOLDEN = 0.5 * (3.0 - math.sqrt(5.0))
_SQRT_EPS = math.sqrt(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class SearchStep:
    """Progress record yielded after every snap of a focus search.

    Attributes
    ----------
    z_um : float
        Position of this snap.
    score : float
        Focus measure of the image snapped there.
    snaps : int
        Snaps so far (including this one).
    moves : int
        Stage moves so far (including the one to this snap, if any).
    z_best_um : float
        Best position found so far.
    score_best : float
        Focus measure at `z_best_um`.
    """

    z_um: float
    score: float
    snaps: int
    moves: int
    z_best_um: float
    score_best: float


@dataclass(frozen=True)
class SearchResult:
    """Outcome of a focus search.

    Attributes
    ----------
    z_best_um : float
        Position with the highest focus measure seen.
    score_best : float
        Focus measure at `z_best_um`.
    snaps : int
        Number of calls to ``snap``.
    moves : int
        Number of times the requested z differed from the previously
        requested z (the first snap counts if it differs from the start
        position).
    history : tuple of (float, float)
        ``(z_um, score)`` of every snap, in order.
    converged : bool
        True when the search met its tolerance. False when the snap budget
        ran out first, or the best position lies at a search bound (the
        focus may lie outside the range).
    reason : str
        Why the search stopped.
    final_move_needed : bool
        True when the last snap was not at `z_best_um`: the search leaves the
        stage at the last snapped position, and the caller must move it to
        `z_best_um` (without snapping) to end in focus.
    """

    z_best_um: float
    score_best: float
    snaps: int
    moves: int
    history: tuple[tuple[float, float], ...]
    converged: bool
    reason: str
    final_move_needed: bool


def _check_number(name: str, value: Any, *, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or (not allow_inf and math.isinf(v)):
        raise ValueError(f"{name} must be {'a number' if allow_inf else 'finite'}, got {v!r}")
    return v


def _check_budget(max_snaps: Any) -> int:
    if isinstance(max_snaps, bool) or not isinstance(max_snaps, (int, np.integer)):
        raise TypeError(f"max_snaps must be an int, got {type(max_snaps).__name__}")
    if max_snaps < 1:
        raise ValueError(f"max_snaps must be >= 1, got {max_snaps}")
    return int(max_snaps)


class _Session:
    """Snap bookkeeping shared by the searches: memo, counts, best, history."""

    def __init__(
        self,
        snap: Callable[[float], ArrayLike],
        measure: FocusMeasure,
        channel_axis: int | None,
        max_snaps: int,
        z_start_um: float | None,
        z_min_um: float,
        z_max_um: float,
    ) -> None:
        if not callable(snap):
            raise TypeError(f"snap must be callable, got {type(snap).__name__}")
        self.snap = snap
        self.measure = measure
        self.channel_axis = channel_axis
        self.max_snaps = max_snaps
        self.z_min_um = z_min_um
        self.z_max_um = z_max_um
        self.last_z: float | None = z_start_um
        self.memo: dict[float, float] = {}
        self.history: list[tuple[float, float]] = []
        self.snaps = 0
        self.moves = 0
        self.z_best = math.nan
        self.score_best = -math.inf

    def known(self, z_um: float) -> bool:
        return round(z_um, _Z_DECIMALS) in self.memo

    def exhausted(self, z_um: float) -> bool:
        """Tell whether scoring `z_um` would need a snap beyond the budget."""
        return not self.known(z_um) and self.snaps >= self.max_snaps

    def score(self, z_um: float) -> Generator[SearchStep, None, float]:
        """Score `z_um`, snapping (and yielding a step) only if not memoised."""
        key = round(z_um, _Z_DECIMALS)
        if key in self.memo:
            return self.memo[key]
        if not self.z_min_um <= z_um <= self.z_max_um:  # pragma: no cover - internal guard
            raise RuntimeError(f"internal error: z={z_um} outside the search bounds")
        if self.last_z is None or z_um != self.last_z:
            self.moves += 1
        self.last_z = z_um
        image = self.snap(z_um)
        self.snaps += 1
        value = float(self.measure(image, channel_axis=self.channel_axis))
        if not math.isfinite(value):
            raise ValueError(f"focus measure returned a non-finite value {value!r} at z={z_um}")
        self.memo[key] = value
        self.history.append((z_um, value))
        if value > self.score_best:
            self.z_best, self.score_best = z_um, value
        yield SearchStep(
            z_um=z_um,
            score=value,
            snaps=self.snaps,
            moves=self.moves,
            z_best_um=self.z_best,
            score_best=self.score_best,
        )
        return value

    def result(self, converged: bool, reason: str, tol_um: float) -> SearchResult:
        at_bound = min(abs(self.z_best - self.z_min_um), abs(self.z_best - self.z_max_um))
        if converged and at_bound <= tol_um:
            converged = False
            reason = (
                f"{reason}; best focus at a search bound ({self.z_best:g} µm in "
                f"[{self.z_min_um:g}, {self.z_max_um:g}] µm): the focus may lie outside"
            )
        return SearchResult(
            z_best_um=self.z_best,
            score_best=self.score_best,
            snaps=self.snaps,
            moves=self.moves,
            history=tuple(self.history),
            converged=converged,
            reason=reason,
            final_move_needed=self.last_z != self.z_best,
        )


def iter_hill_climb(
    snap: Callable[[float], ArrayLike],
    z_start_um: float,
    *,
    measure: str | FocusMeasure = "brenner",
    step_um: float = 4.0,
    min_step_um: float = 0.25,
    z_min_um: float = -math.inf,
    z_max_um: float = math.inf,
    max_snaps: int = 40,
    channel_axis: int | None = None,
) -> Generator[SearchStep, None, SearchResult]:
    """Coarse-to-fine hill climb on a focus measure, one snap at a time.

    Parameters
    ----------
    snap : callable
        ``snap(z_um) -> image``: move the focus stage to `z_um` and return
        an image (any shape the measure accepts).
    z_start_um : float
        Current stage position; the first snap is taken here. Must lie in
        ``[z_min_um, z_max_um]``.
    measure : str or callable, default "brenner"
        Focus measure name (see ``FOCUS_MEASURES``) or callable.
    step_um : float, default 4.0
        Initial step.
    min_step_um : float, default 0.25
        The search stops once the step has been halved below this value;
        it is the final resolution. Must satisfy
        ``0 < min_step_um <= step_um``.
    z_min_um, z_max_um : float, default -inf, inf
        Travel limits; no snap is ever requested outside them.
    max_snaps : int, default 40
        Snap budget.
    channel_axis : int, optional
        Colour axis of the snapped images.

    Yields
    ------
    SearchStep
        After every snap.

    Returns
    -------
    SearchResult
        Best position and bookkeeping (returned as ``StopIteration.value``).

    Raises
    ------
    ValueError
        For non-finite or inconsistent steps, bounds, budget or start.

    Notes
    -----
    1. Snap at the start and probe ``+step``; if it is not better, probe
       ``-step``; if neither is better the peak is within ``±step``, so the
       step is halved and both sides are probed again.
    2. Once a direction improves, climb with that step while the score
       increases; on a score that does not increase, reverse the direction
       and halve the step (the classic coarse-to-fine climb).
    3. Stop when the step falls below `min_step_um` (converged) or the
       budget is spent. A probe beyond a travel limit counts as "not
       better" without snapping.

    Scores are memoised by z rounded to 1e-6 µm, so no position is snapped
    twice. The stage is left at the last snapped position, which need not be
    the best one: ``SearchResult.final_move_needed`` says whether the caller
    must move to ``z_best_um``.

    References
    ----------
    .. [1] E. Krotkov, "Focusing", Int. J. Comput. Vision 1, 223-237 (1987).
    .. [2] Y. Zhai et al., "SparseFocus: Learning-based one-shot autofocus
       for microscopy with sparse content", arXiv:2502.06452 (2025).
    """
    func, _ = _resolve_measure(measure)
    z0 = _check_number("z_start_um", z_start_um)
    step = _check_number("step_um", step_um)
    min_step = _check_number("min_step_um", min_step_um)
    z_lo = _check_number("z_min_um", z_min_um, allow_inf=True)
    z_hi = _check_number("z_max_um", z_max_um, allow_inf=True)
    budget = _check_budget(max_snaps)
    if step <= 0 or min_step <= 0:
        raise ValueError(f"step_um and min_step_um must be > 0, got {step} and {min_step}")
    if min_step > step:
        raise ValueError(f"min_step_um ({min_step}) must not exceed step_um ({step})")
    if not z_lo < z_hi:
        raise ValueError(f"z_min_um ({z_lo}) must be smaller than z_max_um ({z_hi})")
    if not z_lo <= z0 <= z_hi:
        raise ValueError(f"z_start_um={z0} is outside [z_min_um, z_max_um] = [{z_lo}, {z_hi}]")

    session = _Session(snap, func, channel_axis, budget, z0, z_lo, z_hi)

    def clip(z: float) -> float:
        return min(max(z, z_lo), z_hi)

    yield from session.score(z0)
    direction = 1.0
    climbing = False  # False while probing both sides at the current step
    tried_other_side = False
    while step >= min_step:
        z_best = session.z_best
        cand = clip(z_best + direction * step)
        if cand == z_best:
            improved = False
        else:
            if session.exhausted(cand):
                return session.result(
                    False, f"snap budget of {budget} exhausted (step {step:g} µm)", min_step
                )
            before = session.score_best
            yield from session.score(cand)
            improved = session.score_best > before
        if improved:
            climbing = True
            continue
        if climbing:
            direction = -direction
            step *= 0.5
        elif not tried_other_side:
            direction = -direction
            tried_other_side = True
        else:
            # Neither side improved: the peak lies within ±step of the best.
            direction = 1.0
            tried_other_side = False
            step *= 0.5
    return session.result(
        True, f"step {step:g} µm fell below min_step_um {min_step:g} µm", min_step
    )


def hill_climb(
    snap: Callable[[float], ArrayLike], z_start_um: float, **kwargs: Any
) -> SearchResult:
    """Run :func:`iter_hill_climb` to completion.

    Parameters
    ----------
    snap : callable
        ``snap(z_um) -> image``.
    z_start_um : float
        Current stage position.
    **kwargs
        Keyword arguments of :func:`iter_hill_climb`.

    Returns
    -------
    SearchResult
        The search outcome.
    """
    return _run(iter_hill_climb(snap, z_start_um, **kwargs))


def _run(gen: Generator[SearchStep, None, SearchResult]) -> SearchResult:
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            result: SearchResult = stop.value
            return result


def iter_brent_search(
    snap: Callable[[float], ArrayLike],
    z_lo_um: float,
    z_hi_um: float,
    *,
    measure: str | FocusMeasure = "brenner",
    xtol_um: float = 0.1,
    max_snaps: int = 30,
    channel_axis: int | None = None,
    z_start_um: float | None = None,
) -> Generator[SearchStep, None, SearchResult]:
    """Bounded maximisation of a focus measure with Brent's method.

    Parameters
    ----------
    snap : callable
        ``snap(z_um) -> image``: move the focus stage to `z_um` and return
        an image.
    z_lo_um, z_hi_um : float
        Search interval (finite, ``z_lo_um < z_hi_um``); no snap is requested
        outside it.
    measure : str or callable, default "brenner"
        Focus measure name (see ``FOCUS_MEASURES``) or callable.
    xtol_um : float, default 0.1
        Absolute tolerance on the peak position (> 0).
    max_snaps : int, default 30
        Snap budget.
    channel_axis : int, optional
        Colour axis of the snapped images.
    z_start_um : float, optional
        Current stage position, used only to count moves: the first snap
        counts as a move unless it is at `z_start_um`. If omitted, the first
        snap always counts as a move.

    Yields
    ------
    SearchStep
        After every snap.

    Returns
    -------
    SearchResult
        Best position and bookkeeping (returned as ``StopIteration.value``).

    Raises
    ------
    ValueError
        For non-finite or inconsistent bounds, tolerance or budget.

    Notes
    -----
    This is Brent's ``localmin`` (golden-section search safeguarding
    successive parabolic interpolation) applied to minus the focus measure,
    written as a generator so that each snap can be reported; it follows the
    same termination rule as ``scipy.optimize.minimize_scalar(method=
    "bounded")``: stop when the bracket around the best point is within
    ``2 * (sqrt(eps) * |z| + xtol_um / 3)`` of it. It assumes the focus
    measure is unimodal on the interval. The stage is left at the last
    snapped position (see ``SearchResult.final_move_needed``).

    References
    ----------
    .. [1] R. P. Brent, "Algorithms for Minimization without Derivatives",
       Prentice-Hall (1973), chapter 5.
    .. [2] G. E. Forsythe, M. A. Malcolm and C. B. Moler, "Computer Methods
       for Mathematical Computations", Prentice-Hall (1977), routine FMIN.
    """
    func, _ = _resolve_measure(measure)
    lo = _check_number("z_lo_um", z_lo_um)
    hi = _check_number("z_hi_um", z_hi_um)
    xtol = _check_number("xtol_um", xtol_um)
    budget = _check_budget(max_snaps)
    start = None if z_start_um is None else _check_number("z_start_um", z_start_um)
    if not lo < hi:
        raise ValueError(f"z_lo_um ({lo}) must be smaller than z_hi_um ({hi})")
    if xtol <= 0:
        raise ValueError(f"xtol_um must be > 0, got {xtol}")

    session = _Session(snap, func, channel_axis, budget, start, lo, hi)

    def clip(z: float) -> float:
        return min(max(z, lo), hi)

    # Minimise f(z) = -score(z) on [a, b].
    a, b = lo, hi
    x = w = v = clip(a + _GOLDEN * (b - a))
    fx = -(yield from session.score(x))
    fw = fv = fx
    d = e = 0.0
    while True:
        m = 0.5 * (a + b)
        tol = _SQRT_EPS * abs(x) + xtol / 3.0
        tol2 = 2.0 * tol
        if abs(x - m) <= tol2 - 0.5 * (b - a):
            return session.result(
                True, f"bracket around the best point within tolerance ({xtol:g} µm)", tol2
            )
        use_golden = True
        if abs(e) > tol:
            # Parabola through (x, fx), (w, fw), (v, fv).
            r = (x - w) * (fx - fv)
            q = (x - v) * (fx - fw)
            p = (x - v) * q - (x - w) * r
            q = 2.0 * (q - r)
            if q > 0.0:
                p = -p
            else:
                q = -q
            r_prev = e
            e = d
            if abs(p) < abs(0.5 * q * r_prev) and q * (a - x) < p < q * (b - x):
                d = p / q
                u = x + d
                if (u - a) < tol2 or (b - u) < tol2:
                    d = tol if x < m else -tol
                use_golden = False
        if use_golden:
            e = (b - x) if x < m else (a - x)
            d = _GOLDEN * e
        if abs(d) >= tol:
            u = x + d
        else:
            u = x + (tol if d > 0 else -tol)
        u = clip(u)
        if session.exhausted(u):
            return session.result(False, f"snap budget of {budget} exhausted", tol2)
        fu = -(yield from session.score(u))
        if fu <= fx:
            if u < x:
                b = x
            else:
                a = x
            v, fv, w, fw, x, fx = w, fw, x, fx, u, fu
        else:
            if u < x:
                a = u
            else:
                b = u
            if fu <= fw or w == x:
                v, fv, w, fw = w, fw, u, fu
            elif fu <= fv or v in (x, w):
                v, fv = u, fu


def brent_search(
    snap: Callable[[float], ArrayLike],
    z_lo_um: float,
    z_hi_um: float,
    **kwargs: Any,
) -> SearchResult:
    """Run :func:`iter_brent_search` to completion.

    Parameters
    ----------
    snap : callable
        ``snap(z_um) -> image``.
    z_lo_um, z_hi_um : float
        Search interval.
    **kwargs
        Keyword arguments of :func:`iter_brent_search`.

    Returns
    -------
    SearchResult
        The search outcome.
    """
    return _run(iter_brent_search(snap, z_lo_um, z_hi_um, **kwargs))
