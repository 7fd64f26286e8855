"""Inference latency and memory: SparseFocus vs the Liao grid baseline.

Issue targets (learning core): one 2016×2016 RGB frame with 2 CPU threads,
median ≤ 150 ms at k ≤ 9 and below the Liao grid baseline in the same run;
predicting a 101-plane 2016² stack keeps peak memory flat (peak RSS for 11 and
101 planes). Latency does not depend on the weights, so randomly initialised
networks of the default sizes are timed unless --model is given.

Run: ``.venv/bin/python benchmarks/bench_inference.py [--repeats N] [--model M.json]``
Writes benchmarks/results/inference.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _results import write_results


def _latency(fn, frame, repeats):
    fn(frame)  # warm-up
    t = []
    for _ in range(repeats):
        s = time.perf_counter()
        fn(frame)
        t.append((time.perf_counter() - s) * 1e3)
    return statistics.median(t)


def _stack_rss(n_planes: int, model_arg: str | None, tmp: Path) -> float:
    """Peak RSS (MiB) of a fresh process streaming predictions over an n-plane stack file.

    The stack is written by another process first, so the measuring process only
    reads it (memory-mapped, as the TIFF reader gives it).
    """
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    path = tmp / f"stack_{n_planes}.npy"
    write = f"""
import numpy as np
a = np.lib.format.open_memmap({str(path)!r}, mode="w+", dtype=np.uint8,
                              shape=({n_planes}, 2016, 2016, 3))
rng = np.random.default_rng(0)
for i in range({n_planes}):
    a[i] = rng.integers(0, 256, size=(2016, 2016, 3), dtype=np.uint8)
a.flush()
"""
    subprocess.run([sys.executable, "-c", write], check=True, env=env, cwd=root)
    measure = f"""
import numpy as np, torch
torch.set_num_threads(2)
from napari_sparsefocus.core.nn import iter_predict_stack
from benchmarks.bench_inference import _model
m = _model({model_arg!r})
stack = np.load({str(path)!r}, mmap_mode="r")
for i, p in iter_predict_stack(stack, m, k_mode="fixed", k=9):
    pass
# VmHWM is this process's own peak; ru_maxrss would include the parent's peak,
# which Linux carries across fork/exec
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(int(hwm) / 1024)
"""
    r = subprocess.run(
        [sys.executable, "-c", measure],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        check=True,
    )
    path.unlink()
    return float(r.stdout.strip().splitlines()[-1])


def _model(path: str | None):
    import torch

    from napari_sparsefocus import Optics
    from napari_sparsefocus.core.nn import (
        DefocusPredictionNetwork,
        RegionImportanceNetwork,
        SparseFocusModel,
        load_model,
    )

    if path:
        return load_model(path)
    torch.manual_seed(0)
    return SparseFocusModel(
        RegionImportanceNetwork(), DefocusPredictionNetwork(), {"optics": Optics().to_dict()}
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--model", default=None)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "inference.json"
    )
    args = ap.parse_args()

    import torch

    from napari_sparsefocus.core import simulate_field
    from napari_sparsefocus.core.nn import LiaoNet
    from napari_sparsefocus.core.nn._preprocess import grid_patches, prepare_image

    torch.set_num_threads(2)
    model = _model(args.model)
    frame = simulate_field("tissue", "dense", seed=3).snap_defocus(4.0)
    res: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        "2 threads",
        "model": args.model or "random init (default sizes)",
        "repeats": args.repeats,
    }
    for k in (3, 9, 31):
        ms = _latency(lambda f, k=k: model.predict(f, k_mode="fixed", k=k), frame, args.repeats)
        res[f"sparsefocus_k{k}_ms"] = round(ms, 1)
        print(f"SparseFocus, k={k:2d}: median {ms:.1f} ms per 2016² RGB frame")
    liao = LiaoNet().eval()
    cells = np.array([(r, c) for r in range(9) for c in range(9)])

    @torch.no_grad()
    def liao_grid(f):
        prep = prepare_image(f, model_pixel_size_um=model.optics.pixel_size_um)
        return float(np.median(liao(grid_patches(prep, cells)).numpy()))

    ms = _latency(liao_grid, frame, args.repeats)
    res["liao_grid81_ms"] = round(ms, 1)
    print(f"Liao grid baseline (81 patches): median {ms:.1f} ms")
    res["ratio_sparsefocus_k9_to_liao"] = round(res["sparsefocus_k9_ms"] / ms, 3)  # type: ignore[operator]
    if not args.skip_memory:
        import tempfile

        tmp = Path(tempfile.mkdtemp())
        for n in (11, 101):
            mib = _stack_rss(n, args.model, tmp)
            res[f"peak_rss_mib_{n}_planes"] = round(mib, 1)
            print(f"peak RSS streaming a {n}-plane 2016² stack: {mib:.0f} MiB")
    res["self_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    write_results(args.out, res, indent=2)


if __name__ == "__main__":
    main()
