"""Render frames near focus and record the near-focus refiner's inputs and targets.

For each simulated field (cells and tissue, dense / sparse / extremely sparse in
turn; train split from seed 1000, test split from seed 50 000) this renders the
noise-free Brenner curve of every grid cell from -3.5 to +3.5 µm around the
field's focus label (0.25 µm steps; a cell's *own* focus is the parabola vertex
at its sharpest step), then ``--frames-per-field`` noisy frames at a defocus
uniform within ``±--range-um`` and, through the model
(``SparseFocusModel.near_focus_inputs``), the refiner's input row of every
content patch (importance ≥ the threshold). Target: the patch's own defocus,
frame stage position minus the patch's own focus.

Writes ``OUT/<split>_<first>-<last>.npz`` per chunk of 10 fields (``inputs``,
``own_um``, ``field_um``, ``dpn_um``, ``weights``, ``field``, ``frame``,
``kind``, ``sparsity``); existing chunks are skipped, so an interrupted run
resumes. Input of ``scripts/fit-near-focus-refiner.py``.

Run (two processes, about 25 min for 400 fields on this 2-core machine):
``.venv/bin/python scripts/near-focus-patches.py runs/nfpatch --split train --fields 0 200``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from napari_sparsefocus.core import simulate_field
from napari_sparsefocus.core._focus_measures import brenner
from napari_sparsefocus.core.nn import load_model

KINDS = ("cell", "tissue")
LEVELS = ("dense", "sparse", "extremely_sparse")
SEED_BASE = {"train": 1000, "test": 50_000}
CURVE_UM = np.arange(-3.5, 3.51, 0.25)
CHUNK = 10


def own_focus_um(curve: np.ndarray) -> float:
    """Vertex of the parabola through the sharpest step of a Brenner curve and its neighbours."""
    j = int(np.argmax(curve))
    if 0 < j < len(curve) - 1:
        y0, y1, y2 = curve[j - 1], curve[j], curve[j + 1]
        den = y0 - 2 * y1 + y2
        if den < 0:
            return float(CURVE_UM[j] + 0.5 * (y0 - y2) / den * (CURVE_UM[1] - CURVE_UM[0]))
    return float(CURVE_UM[j])


def field_rows(model, split: str, i: int, frames: int, range_um: float, sensor_px: int) -> dict:
    """Refiner rows of every content patch of ``frames`` noisy frames of field ``i``."""
    rng = np.random.default_rng([999, i, split == "test"])
    kind, level = KINDS[i % 2], LEVELS[(i // 2) % 3]
    fld = simulate_field(
        kind,
        level,
        model.optics,
        seed=SEED_BASE[split] + i,
        shape_px=(sensor_px, sensor_px),
        split=split,
    )
    zf, px = fld.z_focus_um, fld.optics.pixel_size_um
    own: dict[tuple[int, ...], float] = {}
    out: dict[str, list] = {k: [] for k in ("inputs", "own_um", "field_um", "dpn_um", "weights")}
    out.update(field=[], frame=[], kind=[], sparsity=[])
    frames_read = []
    for fr in range(frames):
        d = float(rng.uniform(-range_um, range_um))
        rows, dpn, w, boxes = model.near_focus_inputs(
            fld.snap_defocus(d, rng=rng), pixel_size_um=px
        )
        frames_read.append((fr, d, rows, dpn, w, [tuple(int(v) for v in b) for b in boxes]))
    needed = sorted({b for *_, boxes in frames_read for b in boxes})
    if needed:
        curves = np.zeros((len(needed), len(CURVE_UM)))
        for j, dz in enumerate(CURVE_UM):
            inten = fld.renderer.intensity(zf + dz, fld.illumination)
            for k, (y0, x0, y1, x1) in enumerate(needed):
                curves[k, j] = brenner(inten[:, y0:y1, x0:x1], channel_axis=0)
        own = {b: own_focus_um(c) for b, c in zip(needed, curves, strict=True)}
    for fr, d, rows, dpn, w, boxes in frames_read:
        for row, p, wi, b in zip(rows, dpn, w, boxes, strict=True):
            out["inputs"].append(row)
            out["own_um"].append(d - own[b])
            out["field_um"].append(d)
            out["dpn_um"].append(p)
            out["weights"].append(wi)
            out["field"].append(i)
            out["frame"].append(fr)
            out["kind"].append(kind)
            out["sparsity"].append(level)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--split", choices=tuple(SEED_BASE), default="train")
    ap.add_argument("--fields", type=int, nargs=2, default=(0, 200), metavar=("FIRST", "STOP"))
    ap.add_argument("--frames-per-field", type=int, default=8)
    ap.add_argument("--range-um", type=float, default=2.5)
    ap.add_argument("--sensor-px", type=int, default=1120)
    ap.add_argument("--model", default=None, help="model file (default: the bundled one)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    first, stop = args.fields
    for a in range(first, stop, CHUNK):
        b = min(stop, a + CHUNK)
        path = args.out / f"{args.split}_{a:05d}-{b - 1:05d}.npz"
        if path.exists():
            continue
        acc: dict[str, list] = {}
        for i in range(a, b):
            for k, v in field_rows(
                model, args.split, i, args.frames_per_field, args.range_um, args.sensor_px
            ).items():
                acc.setdefault(k, []).extend(v)
        arrays = {k: np.asarray(v) for k, v in acc.items()}
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
        print(
            f"{path.name}: {len(arrays['own_um'])} patches, {time.perf_counter() - t0:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
