# ruff: noqa: B023  (lambdas are called inside the loop iteration that defines them)
"""Render-speed benchmark: one 2016×2016 RGB plane and one 224×224 training patch.

Targets (issue: foundation): a full plane ≤ 1 s, a patch ≤ 10 ms, so training
can generate data on the fly. Prints medians over repeats and writes them to
benchmarks/results/render.json.

Run: ``.venv/bin/python benchmarks/bench_render.py [--repeats N]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from _results import write_results

from napari_sparsefocus.core import Optics
from napari_sparsefocus.core._simulate import PatchSampler, simulate_field


def _median_ms(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "render.json")
    args = ap.parse_args()
    optics = Optics()
    rng = np.random.default_rng(0)
    results: dict[str, object] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "repeats": args.repeats,
    }

    for kind, sparsity in (("tissue", "dense"), ("cell", "sparse")):
        # a new field each time: specimen generation + spectra + first plane (cold)
        seeds = iter(range(1000))
        cold, _ = _median_ms(
            lambda: simulate_field(kind, sparsity, optics, next(seeds)).snap_defocus(
                float(rng.uniform(-25, 25))
            ),
            args.repeats,
        )
        fld = simulate_field(kind, sparsity, optics, 123)
        fld.snap_defocus(0.0)
        warm, _ = _median_ms(lambda: fld.snap_defocus(float(rng.uniform(-25, 25))), args.repeats)
        results[f"plane_2016_{kind}_{sparsity}_new_field_ms"] = round(cold, 1)
        results[f"plane_2016_{kind}_{sparsity}_same_field_new_z_ms"] = round(warm, 1)
        print(
            f"2016x2016 RGB plane, {kind}/{sparsity}: new field {cold:.0f} ms, "
            f"same field at a new z {warm:.0f} ms (median of {args.repeats})"
        )

    sampler = PatchSampler(optics, seed=1)
    sampler.sample(36)  # warm caches
    n = 9 * sampler.planes_per_region * 4
    med, _ = _median_ms(lambda: sampler.sample(n), max(3, args.repeats // 2))
    per_patch = med / n
    results["patch_224_ms_per_patch"] = round(per_patch, 2)
    results["patch_sampler_setting"] = "5x5-patch regions, inner 3x3 kept, 8 defocus values each"
    print(
        f"224x224 RGB training patch: {per_patch:.2f} ms per patch "
        f"(PatchSampler, {n} patches per draw, median)"
    )
    write_results(args.out, results, indent=2)


if __name__ == "__main__":
    main()
