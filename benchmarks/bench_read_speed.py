"""Cost of a near-focus reading: the prediction, the refined reading, and both in one pass.

A refocus controller's verification snap and a focus-lock frame near focus need
the top-k prediction *and* the near-focus refiner's reading of every content
patch. Asked separately (``predict`` then ``read_near_focus``) the frame is
prepared and scored by the RIN twice and the top-k patches go through the DPN
twice; ``predict_and_read_near_focus`` does each once (and reads the other content
patches only when the refined reading is wanted). This times, with the bundled
model and 2 CPU threads, on simulated frames 0.3 µm from focus (cells and tissue,
dense, sparse and extremely sparse, 1120² px as the simulated microscope's
benchmarks use and 2016² px), the median of ``--repeats`` calls of:

- ``predict``: the top-k prediction alone;
- ``read_near_focus``: the refined reading alone;
- ``separate``: ``predict`` then ``read_near_focus`` (what the controller did);
- ``shared``: ``predict_and_read_near_focus`` (what it does now);
- ``shared_not_wanted``: the same with ``near_focus=False`` (a frame far from
  focus: the prediction only).

It also checks that the shared pass gives the separate calls' readings.

Run: ``.venv/bin/python benchmarks/bench_read_speed.py [--repeats 7]``
(about 1 min). Writes benchmarks/results/read_speed.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _results import write_results

from napari_sparsefocus import __version__
from napari_sparsefocus.core import simulate_field
from napari_sparsefocus.core.nn import load_model

DEFOCUS_UM = 0.3
CASES = (
    ("cell", "dense"),
    ("tissue", "dense"),
    ("cell", "sparse"),
    ("tissue", "sparse"),
    ("cell", "extremely_sparse"),
)


def _median_s(fn, repeats: int) -> float:
    fn()  # warm-up
    t = []
    for _ in range(repeats):
        s = time.perf_counter()
        fn()
        t.append(time.perf_counter() - s)
    return statistics.median(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "read_speed.json"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model()
    rows = []
    for size in (1120, 2016):
        for i, (kind, sparsity) in enumerate(CASES):
            fld = simulate_field(kind, sparsity, seed=40 + i, shape_px=(size, size))
            frame = fld.snap_defocus(DEFOCUS_UM, rng=np.random.default_rng(i))
            pred, reading = model.predict_and_read_near_focus(frame)
            alone = model.read_near_focus(frame)
            if reading is None or alone is None:
                print(f"{size}² {kind} {sparsity}: no content patch, skipped")
                continue
            same = (
                abs(reading.defocus_um - alone.defocus_um) <= 1e-6
                and abs(pred.defocus_um - model.predict(frame).defocus_um) <= 1e-6
            )
            times = {
                "predict": _median_s(lambda f=frame: model.predict(f), args.repeats),
                "read_near_focus": _median_s(
                    lambda f=frame: model.read_near_focus(f), args.repeats
                ),
                "separate": _median_s(
                    lambda f=frame: (model.predict(f), model.read_near_focus(f)), args.repeats
                ),
                "shared": _median_s(
                    lambda f=frame: model.predict_and_read_near_focus(f), args.repeats
                ),
                "shared_not_wanted": _median_s(
                    lambda f=frame: model.predict_and_read_near_focus(f, near_focus=False),
                    args.repeats,
                ),
            }
            row = {
                "size_px": size,
                "kind": kind,
                "sparsity": sparsity,
                "k": pred.k,
                "content_patches": len(reading.weights),
                "same_readings": bool(same),
                **{f"{k}_s": round(v, 4) for k, v in times.items()},
                "speedup_shared_vs_separate": round(times["separate"] / times["shared"], 2),
            }
            rows.append(row)
            print(
                f"{size}² {kind:6s} {sparsity:16s} k={pred.k:2d} of {len(reading.weights):2d}: "
                + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in times.items())
                + f" (separate/shared {row['speedup_shared_vs_separate']:.2f}x, same: {same})"
            )
    by_size = {}
    for size in (1120, 2016):
        mine = [r for r in rows if r["size_px"] == size]
        by_size[str(size)] = {
            "median_separate_s": statistics.median(r["separate_s"] for r in mine),
            "median_shared_s": statistics.median(r["shared_s"] for r in mine),
            "median_predict_s": statistics.median(r["predict_s"] for r in mine),
            "median_speedup": statistics.median(r["speedup_shared_vs_separate"] for r in mine),
        }
        print(f"{size}²: median speedup shared vs separate {by_size[str(size)]['median_speedup']}x")
    write_results(
        args.out,
        {
            "benchmark": "read_speed",
            "command": f"python benchmarks/bench_read_speed.py --repeats {args.repeats}"
            + (f" --threads {args.threads}" if args.threads != 2 else ""),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{args.threads} threads",
            "package_version": __version__,
            "defocus_um": DEFOCUS_UM,
            "all_same_readings": all(r["same_readings"] for r in rows),
            "by_size": by_size,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
