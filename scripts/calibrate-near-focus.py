"""Fit a SparseFocus model's near-focus calibration on train-split frames near focus.

The refocus controller reads the snaps it takes after a move through
``model.near_focus_calibration``: the posterior mean of the true defocus given
the model's reading (its median defocus), for frames within a few µm of focus
(see ``napari_sparsefocus.core.nn.fit_near_focus_calibration``). The frames and
readings come from ``scripts/near-focus-frames.py`` (train split, seeds of its
own, never the test split); this fits the map and writes the model with it.

Run: ``.venv/bin/python scripts/calibrate-near-focus.py MODEL.json runs/fcal OUT_STEM``
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from napari_sparsefocus.core.nn import fit_near_focus_calibration, load_model


def main() -> None:
    model_path, frames, out = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    parts = sorted(frames.glob("part*.npz"))
    if not parts:
        raise SystemExit(f"no part*.npz in {frames}: run scripts/near-focus-frames.py first")
    data = [np.load(p) for p in parts]
    reading = np.concatenate([d["reading_um"] for d in data])
    truth = np.concatenate([d["true_um"] for d in data])
    model = load_model(model_path)
    cal = fit_near_focus_calibration(
        reading,
        truth,
        samples_per_knot=40,
        window_um=2.0,
        taper_um=2.0,
        fitted_on=(
            f"{len(reading)} train-split frames within ±{np.abs(truth).max():.1f} µm of focus "
            f"({frames}, scripts/near-focus-frames.py)"
        ),
    )
    near = np.abs(truth) <= 1.0
    tol = model.optics.dof_um / 2
    for name, r in (("raw", reading), ("calibrated", cal.apply(reading))):
        err = np.abs(r - truth)
        print(
            f"{name:10s}: frames within 1 µm of focus: MAE {err[near].mean():.2f} µm, "
            f"{np.mean(err[near] <= tol):.0%} within DoF/2; all: MAE {err.mean():.2f} µm"
        )
    weights, config = model.with_near_focus_calibration(cal).save(out)
    print(f"{len(cal.input_um)} knots; wrote {weights} and {config}")


if __name__ == "__main__":
    main()
