"""Render train-split frames near focus and record the bundled model's raw readings.

Writes ``OUT/part<I>.npz`` with ``reading_um`` (the model's median defocus, the
controller's raw reading), ``true_um``, ``kind`` and ``sparsity`` for frames of
``--frames`` fields drawn dense : sparse : extremely sparse = 1 : 2 : 2 over cells
and tissue, one frame each at a defocus uniform within ``±--range-um``
(train split, seeds ``--seed`` upwards: never the test split). Input of
``scripts/calibrate-near-focus.py --frames``.

Run: ``.venv/bin/python scripts/near-focus-frames.py runs/fcal --part 0 2``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from napari_sparsefocus.core import simulate_field
from napari_sparsefocus.core.nn import load_model

LEVELS = ("dense", "sparse", "sparse", "extremely_sparse", "extremely_sparse")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--frames", type=int, default=800)
    ap.add_argument("--range-um", type=float, default=3.0)
    ap.add_argument("--sensor-px", type=int, default=1120)
    ap.add_argument("--seed", type=int, default=20_000)
    ap.add_argument("--model", default=None)
    ap.add_argument("--part", type=int, nargs=2, default=(0, 1), metavar=("I", "N"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    i_part, n_part = args.part
    rows = []
    for i in range(i_part, args.frames, n_part):
        rng = np.random.default_rng([args.seed, i])
        kind = ("cell", "tissue")[int(rng.integers(2))]
        level = LEVELS[int(rng.integers(len(LEVELS)))]
        d = float(rng.uniform(-args.range_um, args.range_um))
        fld = simulate_field(
            kind,
            level,
            model.optics,
            seed=args.seed + i,
            shape_px=(args.sensor_px,) * 2,
            split="train",
        )
        pred = model.predict(fld.snap_defocus(d, rng=rng))
        if pred.defocus_um is None:
            continue
        rows.append((pred.defocus_um, d, kind, level))
        if len(rows) % 25 == 0:
            print(f"part {i_part}: {len(rows)} frames", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(
        args.out / f"part{i_part}.npz",
        reading_um=np.array([r[0] for r in rows]),
        true_um=np.array([r[1] for r in rows]),
        kind=np.array([r[2] for r in rows]),
        sparsity=np.array([r[3] for r in rows]),
    )
    print(f"part {i_part}: wrote {len(rows)} frames")


if __name__ == "__main__":
    main()
