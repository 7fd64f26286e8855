"""When does a single patch carry a prediction: a lone cell, or a speck of debris?

The refocus controller and the focus lock do not act on a first reading that
rests on one patch whose RIN importance is below ``min_lone_importance`` (0.9).
This measures the rule on the simulated microscope (1120 px camera, bundled
model): random extremely sparse and empty sites of several slide seeds, each
snapped at nine defocus values from -20 to +20 µm. For every frame it records
how many patches pass the model's threshold and the top importance; for the
frames that rest on one patch it reports how many the rule would block, by
class (extremely sparse: lone cells or fragments, blocking them costs an
abstention; empty: debris or a neighbour's edge, blocking them is the point).

Run: ``nice -n 15 .venv/bin/python benchmarks/bench_lone_patch.py [--seeds 0 1 --sites 12]``
(about 2–3 min on one core). Writes benchmarks/results/lone_patch.json.
"""

from __future__ import annotations

import argparse
import gc
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from _results import write_results

from napari_sparsefocus import __version__, load_model

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("extremely_sparse", "empty")
DEFOCUS_UM = (-20.0, -12.0, -6.0, -3.0, 0.0, 3.0, 6.0, 12.0, 20.0)
THRESHOLDS = (0.85, 0.9, 0.95)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="slide seeds")
    ap.add_argument("--sites", type=int, default=12, help="sites per class and seed")
    ap.add_argument("--sensor-px", type=int, default=1120)
    ap.add_argument("--model", default=None, help="model file (default: the bundled model)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lone_patch.json")
    args = ap.parse_args()

    import torch
    from pymmcore_plus.experimental.unicore import UniMMCore

    from napari_sparsefocus.hardware import load_simulated_microscope
    from napari_sparsefocus.hardware._camera import frame_to_rgb, snap_image

    torch.set_num_threads(1)
    model = load_model(args.model)
    frames: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for seed in args.seeds:
        core = UniMMCore()
        try:
            scope = load_simulated_microscope(
                core, seed=seed, sensor_shape_px=(args.sensor_px, args.sensor_px)
            )
            rng = np.random.default_rng(seed)
            for cls in CLASSES:
                for site in scope.slide.find_sites(cls, n=args.sites, seed=rng, margin_sites=1):
                    scope.move_to_site(site)
                    for d in DEFOCUS_UM:
                        scope.move_to_defocus(d)
                        rgb = frame_to_rgb(snap_image(core))
                        pred = model.predict(rgb, pixel_size_um=core.getPixelSizeUm())
                        imp = np.sort(np.asarray(pred.importance, dtype=float).ravel())[::-1]
                        n = int(np.count_nonzero(imp >= model.threshold))
                        frames.append(
                            {
                                "seed": seed,
                                "class": cls,
                                "kind": site.kind,
                                "site": list(site.index),
                                "defocus_um": d,
                                "n_content_patches": n,
                                "top_importance": round(float(imp[0]), 4),
                            }
                        )
                    print(f"seed {seed} {cls:16s} {site.kind:6s} {site.index}", flush=True)
        finally:
            core.unloadAllDevices()
            del core
            gc.collect()

    summary: dict[str, Any] = {}
    for cls in CLASSES:
        fr = [f for f in frames if f["class"] == cls]
        lone = [f for f in fr if f["n_content_patches"] == 1]
        summary[cls] = {
            "frames": len(fr),
            "no_content_frames": sum(f["n_content_patches"] == 0 for f in fr),
            "lone_patch_frames": len(lone),
            "lone_patch_importance": sorted(f["top_importance"] for f in lone),
            "blocked_lone_frames": {
                f"{t:g}": sum(f["top_importance"] < t for f in lone) for t in THRESHOLDS
            },
            "sites_with_a_lone_patch": len({(f["seed"], tuple(f["site"])) for f in lone}),
        }
        print(
            f"{cls:16s} {len(fr)} frames, {len(lone)} rest on one patch; "
            + ", ".join(f"below {t}: {n}" for t, n in summary[cls]["blocked_lone_frames"].items())
        )
    results = {
        "benchmark": "lone_patch",
        "command": "python benchmarks/bench_lone_patch.py "
        f"--seeds {' '.join(map(str, args.seeds))} --sites {args.sites}",
        "machine": f"{platform.machine()}, torch {torch.__version__}",
        "package_version": __version__,
        "model_threshold": model.threshold,
        "defocus_um": list(DEFOCUS_UM),
        "summary": summary,
        "frames": frames,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_results(args.out, results)


if __name__ == "__main__":
    main()
