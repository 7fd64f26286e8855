"""Near-focus calibration of the SparseFocus reading (numpy only).

Near focus the DPN's sign-magnitude head has a floor: a patch within 1 µm of
focus reads a magnitude of about 1 µm and its side is close to a coin flip,
so an in-focus frame typically reads about -1 µm. A refocus controller that
trusts such a reading after its first move walks away from focus and back.

After a move to the predicted focus, though, the controller knows more than
the image: the stage is *probably* near focus. The calibration is the
posterior mean ``E[true defocus | reading]`` under that prior, fitted on
train-split frames rendered within a few µm of focus (isotonic regression on
bins of the reading, so the map is monotone), and it returns to the identity
outside that window. It belongs to the controller's verification readings,
not to one-shot predictions from an unknown start, where its prior is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray

__all__ = ["NearFocusCalibration", "fit_near_focus_calibration"]


@dataclass(frozen=True)
class NearFocusCalibration:
    """Piecewise-linear, non-decreasing map of predicted to calibrated defocus.

    Between the knots the map interpolates linearly; beyond the end knots it
    continues with slope 1 (the end knot's offset is kept).

    Parameters
    ----------
    input_um : tuple of float
        Strictly increasing predicted defocus at the knots (µm).
    output_um : tuple of float
        Non-decreasing calibrated defocus at the knots (µm).
    fitted_on : str
        Where the knots came from (bank, seed, split), for the record.
    """

    input_um: tuple[float, ...]
    output_um: tuple[float, ...]
    fitted_on: str = ""

    def __post_init__(self) -> None:
        x = np.asarray(self.input_um, dtype=np.float64)
        y = np.asarray(self.output_um, dtype=np.float64)
        if x.ndim != 1 or x.shape != y.shape or len(x) < 2:
            raise ValueError(
                "a near-focus calibration needs input_um and output_um of the same length "
                f"(>= 2), got {x.shape} and {y.shape}"
            )
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise ValueError("near-focus calibration knots must be finite")
        if np.any(np.diff(x) <= 0):
            raise ValueError("near-focus calibration input_um must be strictly increasing")
        if np.any(np.diff(y) < 0):
            raise ValueError("near-focus calibration output_um must be non-decreasing (monotone)")

    def apply(self, defocus_um: ArrayLike) -> NDArray[np.float64]:
        """Return the calibrated defocus of predictions.

        Parameters
        ----------
        defocus_um : array_like
            Predicted defocus (µm), any shape.

        Returns
        -------
        ndarray
            Calibrated defocus (µm), same shape, float64.
        """
        d = np.asarray(defocus_um, dtype=np.float64)
        x = np.asarray(self.input_um)
        y = np.asarray(self.output_um)
        out = np.asarray(np.interp(d, x, y), dtype=np.float64)
        lo, hi = d < x[0], d > x[-1]
        out[lo] = d[lo] + (y[0] - x[0])
        out[hi] = d[hi] + (y[-1] - x[-1])
        return out

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form stored in a model file's config."""
        return {
            "input_um": [round(float(v), 4) for v in self.input_um],
            "output_um": [round(float(v), 4) for v in self.output_um],
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_dict(cls, data: Any, name: str = "near_focus_calibration") -> NearFocusCalibration:
        """Build from :meth:`to_dict`'s form; a malformed entry raises, naming ``name``."""
        if not isinstance(data, dict) or "input_um" not in data or "output_um" not in data:
            raise ValueError(f"{name} must be an object with input_um and output_um lists")
        try:
            x = tuple(float(v) for v in data["input_um"])
            y = tuple(float(v) for v in data["output_um"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} knots must be numbers: {exc}") from None
        return cls(x, y, str(data.get("fitted_on", "")))


def _pav(values: NDArray[np.float64], weights: NDArray[np.float64]) -> NDArray[np.float64]:
    """Weighted isotonic (non-decreasing) least-squares fit: pool adjacent violators."""
    level: list[float] = []
    weight: list[float] = []
    count: list[int] = []
    for v, w in zip(values.tolist(), weights.tolist(), strict=True):
        level.append(v)
        weight.append(w)
        count.append(1)
        while len(level) > 1 and level[-2] > level[-1]:
            w2 = weight[-2] + weight[-1]
            level[-2] = (level[-2] * weight[-2] + level[-1] * weight[-1]) / w2
            weight[-2] = w2
            count[-2] += count[-1]
            del level[-1], weight[-1], count[-1]
    return np.repeat(np.asarray(level), count)


def fit_near_focus_calibration(
    predicted_um: ArrayLike,
    true_um: ArrayLike,
    *,
    samples_per_knot: int = 200,
    window_um: float = 3.0,
    taper_um: float = 2.0,
    fitted_on: str = "",
) -> NearFocusCalibration:
    """Fit ``E[true | predicted]`` near focus as a monotone piecewise-linear map.

    The pairs predicted within ``±window_um`` are sorted by prediction and cut
    into bins of about `samples_per_knot`; each bin gives a knot at (mean
    prediction, mean truth), and the knot values are made non-decreasing by
    weighted isotonic regression (pool adjacent violators). The map is a
    posterior mean: it depends on the defocus distribution of the pairs, which
    should be the one it is used under (mostly near focus, as after a first
    move). Beyond the window it returns to the identity over `taper_um` (one
    knot on the identity each side): outside the window the prior "near
    focus" does not hold.

    Parameters
    ----------
    predicted_um, true_um : array_like
        Readings (the pipeline's median defocus) and true defocus (µm), 1-D,
        same length.
    samples_per_knot : int
        Pairs per bin (at least 10).
    window_um : float
        Only pairs predicted within ``±window_um`` are fitted (> 0).
    taper_um : float
        Distance beyond the outermost knots at which the map is back on the
        identity (> 0; moved out further if the fit is offset by more).
    fitted_on : str
        Provenance recorded in the result.

    Returns
    -------
    NearFocusCalibration

    Raises
    ------
    ValueError
        Mismatched or non-finite inputs, fewer than two bins of data, or
        (nearly) constant predictions.
    """
    p = np.asarray(predicted_um, dtype=np.float64).reshape(-1)
    t = np.asarray(true_um, dtype=np.float64).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"predicted_um and true_um differ in length: {p.shape} vs {t.shape}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(t))):
        raise ValueError("predicted_um and true_um must be finite")
    n_per = int(samples_per_knot)
    if n_per < 10:
        raise ValueError(f"samples_per_knot must be >= 10, got {samples_per_knot}")
    if not (np.isfinite(window_um) and window_um > 0 and np.isfinite(taper_um) and taper_um > 0):
        raise ValueError(f"window_um and taper_um must be > 0, got {window_um}, {taper_um}")
    inside = np.abs(p) <= window_um
    p, t = p[inside], t[inside]
    n_bins = len(p) // n_per
    if n_bins < 2:
        raise ValueError(
            f"{len(p)} pairs within ±{window_um:g} µm give fewer than two bins of {n_per}: "
            f"need at least {2 * n_per}"
        )
    order = np.argsort(p, kind="stable")
    xs: list[float] = []
    ys: list[float] = []
    ws: list[float] = []
    for c in np.array_split(order, n_bins):
        xb, yb, wb = float(p[c].mean()), float(t[c].mean()), float(len(c))
        if xs and xb - xs[-1] <= 1e-9:
            # bins of (nearly) equal mean prediction are one knot at their pooled truth
            ys[-1] = (ys[-1] * ws[-1] + yb * wb) / (ws[-1] + wb)
            ws[-1] += wb
            continue
        xs.append(xb)
        ys.append(yb)
        ws.append(wb)
    if len(xs) < 2:
        raise ValueError("the predictions are (nearly) constant: nothing to calibrate")
    fitted = _pav(np.asarray(ys), np.asarray(ws)).tolist()
    # back to the identity beyond the window (monotone: the anchor never passes the knot)
    lo = min(xs[0], fitted[0]) - float(taper_um)
    hi = max(xs[-1], fitted[-1]) + float(taper_um)
    return NearFocusCalibration((lo, *xs, hi), (lo, *fitted, hi), fitted_on)
