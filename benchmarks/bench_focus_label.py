"""Where is the sharpest plane? The simulator's focus label vs whole-field focus measures.

The simulator's focus label (``SimulatedField.z_focus_um``: the label the model
learns and the refocus benchmark scores against) is the Brenner peak of the
noise-free *content* (the mean over the grid cells holding content), found by a
coarse-to-fine search that starts at the content-weighted mean of the depth
layers' best planes (``SimulatedField.layer_focus_um``, the label before
2026-11-30). This measures, per kind and sparsity, on noise-free renders
(0.25 µm grid over ±3 µm, then 0.05 µm around the best sample):

* where each focus measure of the *whole* field peaks relative to the label:
  where a whole-field sharpness autofocus would land (on sparse fields the
  background's debris, at its own depth, pulls it away);
* how far the old label (the layers' mean focus) lies from the new one.

Run: ``nice -n 15 .venv/bin/python benchmarks/bench_focus_label.py [--fields 6]``
Writes benchmarks/results/focus_label.json.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from _results import write_results

from napari_sparsefocus import __version__
from napari_sparsefocus.core import FOCUS_MEASURES, Optics, simulate_field

ROOT = Path(__file__).resolve().parents[1]
LEVELS = ("dense", "sparse", "extremely_sparse")
MEASURES = ("brenner", "tenengrad", "normalized_variance")


def _peaks(fld, measures) -> dict[str, float]:
    """Peak of every measure (renders shared between measures)."""
    cache: dict[float, np.ndarray] = {}

    def image(d: float) -> np.ndarray:
        key = round(d, 3)
        if key not in cache:
            img = fld.snap_defocus(key, noise=False).astype(np.float32)
            cache[key] = img.mean(axis=-1) if img.ndim == 3 else img
        return cache[key]

    out = {}
    coarse = np.arange(-3.0, 3.0001, 0.25)
    for name, fn in measures.items():
        best = coarse[int(np.argmax([float(fn(image(float(d)))) for d in coarse]))]
        fine = np.arange(best - 0.25, best + 0.2501, 0.05)
        out[name] = float(fine[int(np.argmax([float(fn(image(float(d)))) for d in fine]))])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=6, help="fields per kind and sparsity")
    ap.add_argument("--shape-px", type=int, default=672)
    ap.add_argument("--seed", type=int, default=500, help="first field seed (test split)")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "focus_label.json"
    )
    args = ap.parse_args()
    optics = Optics()
    tol = optics.dof_um / 2
    measures = {m: FOCUS_MEASURES[m] for m in MEASURES}
    t0 = time.perf_counter()
    groups: dict[str, dict] = {}
    for kind in ("cell", "tissue"):
        for level in LEVELS:
            offsets: dict[str, list[float]] = {m: [] for m in measures}
            layer: list[float] = []
            for i in range(args.fields):
                fld = simulate_field(
                    kind,
                    level,
                    optics,
                    seed=args.seed + i,
                    shape_px=(args.shape_px, args.shape_px),
                    split="test",
                )
                for name, v in _peaks(fld, measures).items():
                    offsets[name].append(v)
                layer.append(fld.layer_focus_um - fld.z_focus_um)
            groups[f"{kind} {level}"] = {
                name: {
                    "offsets_um": [round(v, 2) for v in vals],
                    "mean_um": round(statistics.fmean(vals), 3),
                    "within_half_dof_pct": round(100 * float(np.mean(np.abs(vals) <= tol)), 1),
                }
                for name, vals in offsets.items()
            }
            groups[f"{kind} {level}"]["layer_focus_minus_label_um"] = {
                "offsets_um": [round(v, 2) for v in layer],
                "mean_um": round(statistics.fmean(layer), 3),
            }
            b = groups[f"{kind} {level}"]["brenner"]
            print(
                f"{kind:6s} {level:16s} Brenner peak - label: mean {b['mean_um']:+.2f} µm, "
                f"{b['within_half_dof_pct']:.0f} % within DoF/2  {b['offsets_um']}; "
                f"layers' focus - label: mean {statistics.fmean(layer):+.2f} µm",
                flush=True,
            )
    overall = {
        name: round(
            100
            * float(
                np.mean([abs(v) <= tol for g in groups.values() for v in g[name]["offsets_um"]])
            ),
            1,
        )
        for name in measures
    }
    print(f"within DoF/2 ({tol:.2f} µm) over all fields: {overall}")
    result = {
        "benchmark": "focus_label",
        "command": "python benchmarks/bench_focus_label.py "
        f"--fields {args.fields} --shape-px {args.shape_px} --seed {args.seed}",
        "package_version": __version__,
        "machine": platform.platform(),
        "dof_um": optics.dof_um,
        "tolerance_um": tol,
        "groups": groups,
        "within_half_dof_pct": overall,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_results(args.out, result)


if __name__ == "__main__":
    main()
