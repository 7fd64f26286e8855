"""Live figures: frame-to-overlay latency on a 2016² frame, and the focus lock's rate.

Issue target (microscope): report the frame-to-overlay latency for a 2016×2016
frame and the correction rate the focus lock sustains on this machine.

1. **Frame-to-overlay latency.** The simulated microscope (2016² RGB sensor) snaps
   frames at random sites and defoci; for each frame the clock starts when the
   frame is in memory (``getImage`` returned) and stops when the napari overlay
   layers (importance heatmap + top-k rectangles, the Microscope widget's
   :func:`show_prediction_layers`) hold the new answer. Parts are timed too:
   model prediction, and the layer update on the GUI thread. The camera's own
   render time (the simulator, not part of the latency a real camera would add) is
   reported separately.
2. **Focus lock rate.** A :class:`~napari_sparsefocus.hardware.FocusLock` with
   ``every_n_frames=1`` and ``min_interval_s=0`` is fed snapped frames in a loop
   from 5 µm out of focus on a dense site: analysed frames per second, corrections
   per second, and the time until the true defocus is inside the deadband. With
   the default ``every_n_frames=5`` / ``min_interval_s=1`` the lock is rate-limited
   far below what the machine sustains, which is the point of those settings.

Needs a display for the napari part: without one it re-runs itself under
``xvfb-run``. Run: ``.venv/bin/python benchmarks/bench_live.py [--frames 15]``.
Writes benchmarks/results/live.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time
from pathlib import Path

from _results import write_results

from napari_sparsefocus._demo import rerun_under_xvfb

ROOT = Path(__file__).resolve().parents[1]


def _median_ms(values: list[float]) -> float:
    return round(1000 * statistics.median(values), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=15, help="frames for the latency figure")
    ap.add_argument("--lock-frames", type=int, default=20, help="frames fed to the focus lock")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "live.json")
    args = ap.parse_args()
    rerun_under_xvfb()

    import napari
    import numpy as np
    import torch
    from pymmcore_plus.experimental.unicore import UniMMCore
    from qtpy.QtWidgets import QApplication

    from napari_sparsefocus import load_model
    from napari_sparsefocus.hardware import FocusLock, load_simulated_microscope
    from napari_sparsefocus.widgets._microscope import show_prediction_layers

    torch.set_num_threads(args.threads)
    model = load_model()
    rng = np.random.default_rng(args.seed)
    core = UniMMCore()
    scope = load_simulated_microscope(core, seed=args.seed, sensor_shape_px=(2016, 2016))
    px = core.getPixelSizeUm()
    sites = [
        *scope.slide.find_sites("dense", 4, seed=args.seed),
        *scope.slide.find_sites("sparse", 4, seed=args.seed),
        *scope.slide.find_sites("extremely_sparse", 4, seed=args.seed),
    ]
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    layer = None
    render_s, predict_s, layers_s, latency_s = [], [], [], []
    model.predict(np.zeros((448, 448, 3), np.uint8))  # warm-up (lazy init)
    for i in range(args.frames):
        site = sites[i % len(sites)]
        scope.move_to_site(site)
        scope.move_to_defocus(float(rng.uniform(-10, 10)))
        t0 = time.perf_counter()
        core.snapImage()
        frame = core.getImage()
        t1 = time.perf_counter()  # the frame is in memory: the latency clock starts
        pred = model.predict(frame, pixel_size_um=px)
        t2 = time.perf_counter()
        if layer is None:
            layer = viewer.add_image(frame, rgb=True, name="live", scale=(px, px))
        else:
            layer.data = frame
        show_prediction_layers(viewer, pred, scale_yx=(px, px))
        app.processEvents()  # the layers are drawn
        t3 = time.perf_counter()
        render_s.append(t1 - t0)
        predict_s.append(t2 - t1)
        layers_s.append(t3 - t2)
        latency_s.append(t3 - t1)
        print(
            f"frame {i + 1:2d}/{args.frames} {pred.sparsity:16s} k={pred.k:2d} "
            f"latency {1000 * (t3 - t1):6.1f} ms (predict {1000 * (t2 - t1):6.1f}, "
            f"layers {1000 * (t3 - t2):5.1f}; camera render {1000 * (t1 - t0):6.1f})",
            flush=True,
        )
    viewer.close()

    # focus lock: how fast it can go on this machine, and how fast it closes 5 µm
    scope.move_to_site(sites[0])
    scope.move_to_defocus(5.0)
    lock = FocusLock(core, model, every_n_frames=1, min_interval_s=0.0, max_step_um=5.0)
    lock.start()
    t_start = time.perf_counter()
    analysed = corrections = 0
    t_in = None
    steps = []
    analysis_s: list[float] = []  # the lock's own work per frame (prediction + refined reading)
    for _ in range(args.lock_frames):
        core.snapImage()
        frame = core.getImage()
        t_frame = time.perf_counter()
        ev = lock.process_frame(frame)
        analysis_s.append(time.perf_counter() - t_frame)
        if ev is not None:
            analysed += 1
            if ev.move_um:
                corrections += 1
        d = scope.true_defocus_um()
        steps.append(round(d, 2))
        if t_in is None and abs(d) <= lock.deadband_um:
            t_in = time.perf_counter() - t_start
    wall = time.perf_counter() - t_start
    lock.stop()
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "torch_threads": args.threads,
        "frame_px": [2016, 2016],
        "frames": args.frames,
        "latency_ms_median": _median_ms(latency_s),
        "latency_ms_max": round(1000 * max(latency_s), 1),
        "predict_ms_median": _median_ms(predict_s),
        "layers_ms_median": _median_ms(layers_s),
        "camera_render_ms_median": _median_ms(render_s),
        "focus_lock": {
            "frames": args.lock_frames,
            "analysed_per_s": round(analysed / wall, 2),
            "corrections_per_s": round(corrections / wall, 2),
            "corrections": corrections,
            # without the simulator's render: what the lock itself costs per frame
            "analysis_ms_median": _median_ms(analysis_s),
            "analysis_only_per_s": round(1.0 / statistics.median(analysis_s), 2),
            "seconds_to_deadband_from_5um": None if t_in is None else round(t_in, 2),
            "deadband_um": lock.deadband_um,
            "true_defocus_um_per_frame": steps,
            "note": "every_n_frames=1, min_interval_s=0, max_step_um=5; snap + render + "
            "predict per frame on this CPU (the simulator's render is part of the loop)",
        },
    }
    print(json.dumps({k: v for k, v in result.items() if k != "focus_lock"}, indent=1))
    fl = result["focus_lock"]
    print(
        f"focus lock: {fl['analysed_per_s']} analysed frames/s ({fl['analysis_ms_median']} ms "
        f"of analysis per frame: {fl['analysis_only_per_s']}/s without the render), "
        f"{fl['corrections_per_s']} "
        f"corrections/s, in the deadband after {fl['seconds_to_deadband_from_5um']} s; "
        f"true defocus per frame {steps}"
    )
    write_results(args.out, result)
    core.unloadAllDevices()
    del core, scope, lock
    gc.collect()


if __name__ == "__main__":
    main()
