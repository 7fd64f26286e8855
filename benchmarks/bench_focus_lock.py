"""Focus lock steadiness: a drifting stage held by the lock, refined vs calibrated reading.

What a microscopist watching a live view wants from the focus lock: the field
stays in focus while the sample or stage drifts. On every simulated slide of
``--seeds`` (one process, one slide at a time), at ``--sites`` random sites
per sparsity class with content, the stage starts within ±0.3 µm of the true
focus; then, for ``--frames`` frames, it drifts by ``--drift-um`` in a fixed
random direction before each frame, and a :class:`FocusLock` (``every_n_frames=1``,
``min_interval_s=0``, everything else default) analyses every frame and
corrects. The same sites, starts and drifts are run twice:

- ``refined``: the default, ``refined_reading=True`` — frames whose top-k reading
  is within 2 DoF are read with the model's near-focus refiner; default dead band
  DoF/4;
- ``calibrated``: ``refined_reading=False`` — the calibrated top-k reading; default
  dead band DoF/2.

Figures per drift rate (after the first three frames): the share of frames
whose true ``|defocus|`` is within DoF/2, the mean and 95th percentile of
``|defocus|``, and corrections per frame. Slide seeds 10–12 are not used by any
other benchmark or by the controller's choices.

Run: ``nice -n 15 .venv/bin/python benchmarks/bench_focus_lock.py`` (about 12 min).
Writes benchmarks/results/focus_lock.json.
"""

from __future__ import annotations

import argparse
import gc
import platform
import time
from pathlib import Path

import numpy as np
import torch
from _results import write_results

from napari_sparsefocus import __version__
from napari_sparsefocus.core.nn import load_model
from napari_sparsefocus.hardware import FocusLock, load_simulated_microscope
from napari_sparsefocus.hardware._camera import snap_image

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("dense", "sparse", "extremely_sparse")
READINGS = {"refined": True, "calibrated": False}
SETTLE_FRAMES = 3


class _Clock:
    """One second per frame (the lock's rate limit is off anyway)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _hold(scope, model, start_um, drift_um, frames, refined) -> tuple[list[float], int, float]:
    """Run the lock on a drifting stage; (true defocus after each frame, corrections, band)."""
    core = scope.core
    scope.move_to_defocus(start_um)
    clock = _Clock()
    lock = FocusLock(
        core, model, every_n_frames=1, min_interval_s=0.0, clock=clock, refined_reading=refined
    )
    lock.start()
    errors = []
    try:
        for _ in range(frames):
            scope.move_to_defocus(scope.true_defocus_um() + drift_um)  # the drift
            image = snap_image(core)
            clock.t += 1.0
            lock.process_frame(image)
            errors.append(scope.true_defocus_um())
    finally:
        lock.stop()
    return errors, len(lock.corrections), lock.deadband_um


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[10, 11, 12])
    ap.add_argument("--sites", type=int, default=3, help="random sites per sparsity class")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument(
        "--drift-um", type=float, nargs="+", default=[0.05, 0.1, 0.2], help="drift per frame"
    )
    ap.add_argument("--sensor-px", type=int, default=1120)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "focus_lock.json")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from pymmcore_plus.experimental.unicore import UniMMCore

    model = load_model()
    tol = model.optics.dof_um / 2
    runs: dict[str, dict[str, list]] = {str(d): {r: [] for r in READINGS} for d in args.drift_um}
    bands: dict[str, float] = {}
    t0 = time.perf_counter()
    for seed in args.seeds:
        core = UniMMCore()
        scope = load_simulated_microscope(
            core, seed=seed, sensor_shape_px=(args.sensor_px, args.sensor_px)
        )
        rng = np.random.default_rng(seed)
        try:
            for cls in CLASSES:
                for site in scope.slide.find_sites(cls, n=args.sites, seed=rng, margin_sites=1):
                    scope.move_to_site(site)
                    start = float(rng.uniform(-0.3, 0.3))
                    sign = float(rng.choice([-1.0, 1.0]))
                    for drift in args.drift_um:
                        line = f"{seed:2d} {cls:16s} {site.index!s:10s} drift {drift:4.2f} µm/frame"
                        for name, refined in READINGS.items():
                            errors, n_corr, band = _hold(
                                scope, model, start, sign * drift, args.frames, refined
                            )
                            bands[name] = band
                            runs[str(drift)][name].append(
                                {"errors_um": errors, "corrections": n_corr}
                            )
                            late = np.abs(errors[SETTLE_FRAMES:])
                            line += (
                                f" | {name} {np.mean(late <= tol):4.0%} in focus, "
                                f"mean {late.mean():.2f} µm, {n_corr} corr"
                            )
                        print(line, flush=True)
        finally:
            core.unloadAllDevices()
            del scope, core
            gc.collect()

    figures: dict[str, dict[str, dict[str, float]]] = {}
    print(f"\nframes after the first {SETTLE_FRAMES}; DoF/2 = {tol:.3f} µm")
    print(
        f"{'drift µm/frame':>14s} {'reading':10s} {'in focus':>8s} "
        f"{'mean':>6s} {'p95':>6s} corr/frame"
    )
    for drift, by in runs.items():
        figures[drift] = {}
        for name, rs in by.items():
            late = np.abs(np.array([r["errors_um"][SETTLE_FRAMES:] for r in rs]))
            g = {
                "runs": len(rs),
                "in_focus_pct": 100.0 * float(np.mean(late <= tol)),
                "mean_abs_defocus_um": float(late.mean()),
                "p95_abs_defocus_um": float(np.percentile(late, 95)),
                "corrections_per_frame": float(
                    np.mean([r["corrections"] for r in rs]) / args.frames
                ),
                "deadband_um": bands[name],
            }
            figures[drift][name] = g
            print(
                f"{drift:>14s} {name:10s} {g['in_focus_pct']:7.0f}% "
                f"{g['mean_abs_defocus_um']:6.2f} {g['p95_abs_defocus_um']:6.2f} "
                f"{g['corrections_per_frame']:.2f}"
            )
    write_results(
        args.out,
        {
            "benchmark": "focus_lock",
            "command": (
                f"python benchmarks/bench_focus_lock.py --seeds {' '.join(map(str, args.seeds))} "
                f"--sites {args.sites} --frames {args.frames} "
                f"--drift-um {' '.join(map(str, args.drift_um))} --sensor-px {args.sensor_px}"
            ),
            "machine": {"platform": platform.platform(), "torch_threads": 1},
            "package_version": __version__,
            "dof_um": model.optics.dof_um,
            "settle_frames": SETTLE_FRAMES,
            "seconds": time.perf_counter() - t0,
            "figures": figures,
        },
    )


if __name__ == "__main__":
    main()
