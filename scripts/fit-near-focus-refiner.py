"""Fit a SparseFocus model's near-focus refiner and write the model with it.

Reads the train-split chunks that ``scripts/near-focus-patches.py`` wrote
(``train_*.npz``), fits ``fit_near_focus_refiner`` on every content patch's own
defocus, and, when test-split chunks are there too, prints how the refined
reading of held-out frames compares with the model's weighted and top-k
readings: per-patch MAE against each patch's own defocus, and per frame (the
Brenner-weighted mean) MAE against the field's label and the share within DoF/2.

Run:
``.venv/bin/python scripts/fit-near-focus-refiner.py MODEL.json runs/nfpatch2 OUT --hidden 256 256``
(MODEL.json: the model to extend, e.g. the bundled
``src/napari_sparsefocus/models/default.json``; under a minute. The bundled
refiner: 700 train-split fields, ``--fields 0 350`` and ``350 700`` in two
processes, and ``--hidden 256 256``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from napari_sparsefocus.core.nn import fit_near_focus_refiner, load_model


def _load(folder: Path, split: str) -> dict[str, np.ndarray] | None:
    parts = sorted(folder.glob(f"{split}_*.npz"))
    if not parts:
        return None
    data = [np.load(p) for p in parts]
    return {k: np.concatenate([d[k] for d in data]) for k in data[0].files}


def _frames(data: dict[str, np.ndarray], patch_um: np.ndarray) -> np.ndarray:
    """``(field defocus, weighted mean of patch_um)`` per frame."""
    key = data["field"].astype(np.int64) * 1000 + data["frame"].astype(np.int64)
    out = []
    for k in np.unique(key):
        s = key == k
        w = data["weights"][s]
        out.append((float(data["field_um"][s][0]), float(np.dot(w, patch_um[s]) / w.sum())))
    return np.asarray(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("patches", type=Path)
    ap.add_argument("out")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, nargs="+", default=[128, 128], help="hidden layer widths")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = load_model(args.model)
    train = _load(args.patches, "train")
    if train is None:
        raise SystemExit(f"no train_*.npz in {args.patches}: run scripts/near-focus-patches.py")
    n_frames = len(np.unique(train["field"].astype(np.int64) * 1000 + train["frame"]))
    rng_um = float(np.abs(train["field_um"]).max())
    refiner = fit_near_focus_refiner(
        train["inputs"],
        train["own_um"],
        range_um=round(rng_um, 2),
        hidden=args.hidden,
        epochs=args.epochs,
        seed=args.seed,
        fitted_on=(
            f"{len(train['own_um'])} content patches of {n_frames} train-split frames of "
            f"{len(np.unique(train['field']))} fields within ±{rng_um:.1f} µm of focus "
            f"({args.patches}, scripts/near-focus-patches.py; hidden {tuple(args.hidden)}, "
            f"seed {args.seed})"
        ),
    )
    test = _load(args.patches, "test")
    if test is not None:
        tol = model.optics.dof_um / 2
        refined = refiner.predict(test["inputs"])
        own = test["own_um"]
        print(
            f"held-out patches: MAE vs own defocus: refined {np.mean(np.abs(refined - own)):.3f} "
            f"µm, DPN {np.mean(np.abs(test['dpn_um'] - own)):.3f} µm"
        )
        cal = model.near_focus_calibration
        for name, per_patch, calibrate in (
            ("refined", refined, False),
            ("weighted (calibrated)", test["dpn_um"], cal is not None),
        ):
            f = _frames(test, per_patch)
            r = cal.apply(f[:, 1]) if calibrate else f[:, 1]
            err = r - f[:, 0]
            near = np.abs(f[:, 0]) <= 1.5
            print(
                f"held-out frames ({name}): MAE {np.mean(np.abs(err)):.3f} µm "
                f"({np.mean(np.abs(err[near])):.3f} within ±1.5 µm), "
                f"{np.mean(np.abs(err) <= tol):.0%} within DoF/2"
            )
    weights, config = model.with_near_focus_refiner(refiner).save(args.out)
    print(f"wrote {weights} and {config}")


if __name__ == "__main__":
    main()
