"""How well does one frame read its defocus: near focus, far away, and either side?

Renders held-out fields (test split, seeds 50 000 upwards; cells and tissue,
dense / sparse / extremely sparse in turn, 1120 px like the simulated
microscope's camera) and reads one frame of each at four defocus draws with the
model (default: the bundled one):

* ``near``: uniform within ±1.5 µm (what the refocus controller sees after its
  first move), read raw and through the model's near-focus calibration;
* ``far``: uniform within ±25 µm (the refocus's first snap);
* ``above``: +2…+4 µm and ``below``: −4…−2 µm (the focus map snaps 3 µm off).

Per set and group: MAE, median signed error ("bias", reading minus truth) and
the share within DoF/2; for the far set also the same by distance from focus
(and the median ratio of |reading| to |truth|). For the near set also the magnitude floor (median
|reading| by true |defocus| bin) and how a one-snap focus check would fare:
for thresholds on the calibrated |reading|, the share of frames it accepts,
the share of those truly more than DoF/2 off, and the share of truly in-focus
frames it catches — for the model's top-k median, for the "weighted"
verification reading (every content patch's DPN reading, weighted by its
Brenner sharpness, calibrated; ``weighted`` rows of the near set) and for the
refocus controller's default "refined" reading (the model's near-focus refiner,
``SparseFocusModel.read_near_focus``; ``refined`` rows). And
``label_vs_layers``: per kind, how far each field's focus label (the sharpest
plane of all its content) lies from the mean focus of its depth layers, and
how strongly the calibrated near-focus error follows that offset (correlation,
slope): an error the content makes, which no second frame at the same height
removes.

Run: ``nice -n 15 .venv/bin/python benchmarks/bench_near_focus.py [--fields 240]``
(about 10 min on one core). Writes benchmarks/results/near_focus.json.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from _results import write_results

from napari_sparsefocus import __version__
from napari_sparsefocus.core import sharpness_weighted_defocus, simulate_field
from napari_sparsefocus.hardware._refocus import _CONFIRM_FRACTION, _WEIGHTED_WITHIN_DOF

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("cell", "tissue")
LEVELS = ("dense", "sparse", "extremely_sparse")
SETS = {"near": (-1.5, 1.5), "far": (-25.0, 25.0), "above": (2.0, 4.0), "below": (-4.0, -2.0)}
BINS = ((0.0, 0.3), (0.3, 0.6), (0.6, 1.0), (1.0, 1.5))
#: |defocus| bins of the far set: how the first reading degrades with distance.
FAR_BINS = ((0.0, 5.0), (5.0, 10.0), (10.0, 15.0), (15.0, 20.0), (20.0, 25.0))
THRESHOLDS = (0.1, 0.2, 0.3, 0.4)


def _stats(err: np.ndarray, tol: float) -> dict[str, Any]:
    return {
        "n": int(err.size),
        "mae_um": round(float(np.mean(np.abs(err))), 3),
        "bias_um": round(float(np.median(err)), 3),
        "within_tol_pct": round(100.0 * float(np.mean(np.abs(err) <= tol)), 1),
    }


def _weighted(model: Any, image: np.ndarray, px: float, raw: float) -> float:
    """The refocus controller's "weighted" verification reading (raw, uncalibrated).

    As ``RefocusOptions(verification_reading="weighted")`` (the controller's
    ``_WEIGHTED_WITHIN_DOF``): within two DoF of focus by the top-k reading,
    the sharpness-weighted mean of every content patch's prediction; otherwise
    the top-k reading itself.
    """
    if abs(raw) > _WEIGHTED_WITHIN_DOF * float(model.optics.dof_um):
        return raw
    pred = model.predict(image, pixel_size_um=px, k_mode="all")
    w = sharpness_weighted_defocus(
        image, [p.defocus_um for p in pred.patches], [p.box_px for p in pred.patches]
    )
    return raw if w is None else w


def _refined(model: Any, image: np.ndarray, px: float, raw: float) -> float:
    """The refocus controller's default "refined" verification reading (final, calibrated).

    As ``RefocusOptions(verification_reading="refined")``: within two DoF of focus
    by the top-k reading, the model's near-focus refiner
    (``SparseFocusModel.read_near_focus``, no calibration on top); otherwise, or
    without a refiner, the weighted reading through the near-focus calibration.
    """
    cal = model.near_focus_calibration
    if abs(raw) <= _WEIGHTED_WITHIN_DOF * float(model.optics.dof_um):
        out = model.read_near_focus(image, pixel_size_um=px)
        if out is not None:
            return float(out.defocus_um)
    w = _weighted(model, image, px, raw)
    return float(cal.apply([w])[0]) if cal is not None else w


def _check(truth: np.ndarray, reading: np.ndarray, tol: float) -> dict[str, Any]:
    """How a one-snap focus check at several thresholds on ``|reading|`` would fare."""
    in_focus = np.abs(truth) <= tol
    out: dict[str, Any] = {}
    # ... and the controller's default bar (confirm_within_um) and the tolerance itself
    for thr in (*THRESHOLDS, round(_CONFIRM_FRACTION * tol, 3), round(tol, 3)):
        acc = np.abs(reading) <= thr
        out[f"{thr:g}"] = {
            "accepted_pct": round(100.0 * float(acc.mean()), 1),
            "accepted_but_off_pct": (
                round(100.0 * float(np.mean(~in_focus[acc])), 1) if acc.any() else None
            ),
            "in_focus_caught_pct": (
                round(100.0 * float(np.mean(acc[in_focus])), 1) if in_focus.any() else None
            ),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=240, help="held-out fields (6 groups in turn)")
    ap.add_argument("--sensor-px", type=int, default=1120)
    ap.add_argument("--model", default=None, help="model file (default: the bundled model)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "near_focus.json")
    args = ap.parse_args()

    import torch

    from napari_sparsefocus.core.nn import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    cal = model.near_focus_calibration
    tol = float(model.optics.dof_um) / 2.0
    t0 = time.perf_counter()
    # set, kind, level, truth, reading, weighted reading, field, refined reading
    rows: list[tuple[str, str, str, float, float, float, int, float]] = []
    offsets: dict[int, float] = {}
    abstained = dict.fromkeys(SETS, 0)
    for i in range(args.fields):
        rng = np.random.default_rng([777, i])
        kind, level = KINDS[i % 2], LEVELS[(i // 2) % 3]
        fld = simulate_field(
            kind,
            level,
            model.optics,
            seed=50_000 + i,
            shape_px=(args.sensor_px, args.sensor_px),
            split="test",
        )
        for name, (lo, hi) in SETS.items():
            d = float(rng.uniform(lo, hi))
            image = fld.snap_defocus(d, rng=rng)
            px = fld.optics.pixel_size_um
            pred = model.predict(image, pixel_size_um=px)
            if pred.defocus_um is None:
                abstained[name] += 1
                continue
            raw = float(pred.defocus_um)
            weighted = _weighted(model, image, px, raw) if name == "near" else raw
            refined = _refined(model, image, px, raw) if name == "near" else raw
            rows.append((name, kind, level, d, raw, weighted, i, refined))
        # how far the focus label (sharpest plane of all the content) lies from the
        # content-weighted mean focus of the specimen's depth layers
        offsets[i] = fld.z_focus_um - fld.layer_focus_um
        if (i + 1) % 20 == 0:
            print(f"{i + 1}/{args.fields} fields, {time.perf_counter() - t0:.0f} s", flush=True)

    def select(name: str, kind: str | None = None, level: str | None = None) -> np.ndarray:
        """``(truth, reading, weighted reading, refined reading)`` rows of a set (and group)."""
        return np.array(
            [
                (r[3], r[4], r[5], r[7])
                for r in rows
                if r[0] == name and kind in (None, r[1]) and level in (None, r[2])
            ],
            dtype=np.float64,
        ).reshape(-1, 4)

    sets: dict[str, Any] = {}
    for name in SETS:
        groups: dict[str, Any] = {}
        for kind in (*KINDS, None):
            for level in (*LEVELS, None):
                a = select(name, kind, level)
                if not len(a):
                    continue
                key = f"{kind or 'all'} {level or 'all'}"
                groups[key] = {"raw": _stats(a[:, 1] - a[:, 0], tol)}
                if name == "near" and cal is not None:
                    groups[key]["calibrated"] = _stats(cal.apply(a[:, 1]) - a[:, 0], tol)
                    groups[key]["weighted"] = _stats(cal.apply(a[:, 2]) - a[:, 0], tol)
                if name == "near" and model.near_focus_refiner is not None:
                    groups[key]["refined"] = _stats(a[:, 3] - a[:, 0], tol)
        sets[name] = {"range_um": SETS[name], "abstained": abstained[name], "groups": groups}

    near = select("near")
    floor: dict[str, Any] = {}
    for kind in KINDS:
        a = select("near", kind)
        for lo, hi in BINS:
            s = (np.abs(a[:, 0]) >= lo) & (np.abs(a[:, 0]) < hi)
            if s.any():
                m = np.abs(a[s, 1])
                floor[f"{kind} |d| {lo}-{hi}"] = {
                    "n": int(s.sum()),
                    "median_abs_reading_um": round(float(np.median(m)), 2),
                    "q10_um": round(float(np.quantile(m, 0.1)), 2),
                    "q90_um": round(float(np.quantile(m, 0.9)), 2),
                }
    far = select("far")
    by_distance: dict[str, Any] = {}
    for lo, hi in FAR_BINS:
        s = (np.abs(far[:, 0]) >= lo) & (np.abs(far[:, 0]) < hi)
        if s.any():
            err = far[s, 1] - far[s, 0]
            by_distance[f"|d| {lo:g}-{hi:g}"] = {
                **_stats(err, tol),
                # under-reading shows as |reading| < |truth|
                "median_ratio": round(float(np.median(np.abs(far[s, 1]) / np.abs(far[s, 0]))), 3),
            }
    # does the near-focus error follow the label's offset from the layers' focus?
    label_vs_layers: dict[str, Any] = {}
    if cal is not None:
        for kind in KINDS:
            nr = [r for r in rows if r[0] == "near" and r[1] == kind]
            if len(nr) < 3:
                continue
            off = np.array([offsets[r[6]] for r in nr])
            truth = np.array([r[3] for r in nr])
            entry: dict[str, Any] = {
                "n": len(nr),
                "offset_sd_um": round(float(np.std(off)), 2),
                "offset_range_um": [round(float(off.min()), 2), round(float(off.max()), 2)],
            }
            for how, col in (("calibrated", 4), ("weighted", 5), ("refined", 7)):
                vals = np.array([r[col] for r in nr])
                err = (vals if how == "refined" else cal.apply(vals)) - truth
                entry[f"{how}_error_corr"] = round(float(np.corrcoef(err, off)[0, 1]), 2)
                entry[f"{how}_error_slope"] = round(float(np.polyfit(off, err, 1)[0]), 2)
            label_vs_layers[kind] = entry

    check: dict[str, Any] = {}
    check_weighted: dict[str, Any] = {}
    check_refined: dict[str, Any] = {}
    if cal is not None and len(near):
        check = _check(near[:, 0], cal.apply(near[:, 1]), tol)
        check_weighted = _check(near[:, 0], cal.apply(near[:, 2]), tol)
    if model.near_focus_refiner is not None and len(near):
        check_refined = _check(near[:, 0], near[:, 3], tol)

    for name, s in sets.items():
        print(f"\n== {name} {s['range_um']} µm (abstained {s['abstained']})")
        for key, g in s["groups"].items():
            line = f"  {key:<24} " + " ".join(
                f"{how} MAE {v['mae_um']:.2f} bias {v['bias_um']:+.2f} "
                f"≤DoF/2 {v['within_tol_pct']:.0f}%"
                for how, v in g.items()
            )
            print(line)
    print("\nnear-focus magnitude floor (median |reading|, 10-90 %):")
    for key, v in floor.items():
        print(
            f"  {key:<22} n {v['n']:3d}  {v['median_abs_reading_um']:.2f} "
            f"({v['q10_um']:.2f}-{v['q90_um']:.2f})"
        )
    print("\nfar set by distance from focus:")
    for key, v in by_distance.items():
        print(
            f"  {key:<10} n {v['n']:3d}  MAE {v['mae_um']:.2f} bias {v['bias_um']:+.2f} "
            f"≤DoF/2 {v['within_tol_pct']:.0f}%  |reading|/|truth| {v['median_ratio']:.3f}"
        )
    print("\nnear-focus error against the label's offset from the layers' mean focus:")
    for kind, v in label_vs_layers.items():
        print(
            f"  {kind:<7} offset sd {v['offset_sd_um']:.2f} µm {v['offset_range_um']}; "
            f"corr / slope: top-k {v['calibrated_error_corr']:+.2f} / "
            f"{v['calibrated_error_slope']:+.2f}, weighted {v['weighted_error_corr']:+.2f} / "
            f"{v['weighted_error_slope']:+.2f}, refined {v['refined_error_corr']:+.2f} / "
            f"{v['refined_error_slope']:+.2f}"
        )
    share = 100 * np.mean(np.abs(near[:, 0]) <= tol)
    print(f"\none-snap focus check on the near set ({share:.0f} % truly within DoF/2):")
    for how, table in (
        ("top-k median", check),
        ("weighted", check_weighted),
        ("refined", check_refined),
    ):
        for thr, v in table.items():
            print(
                f"  {how:12s} |reading| ≤ {thr} µm: accepts {v['accepted_pct']}%, "
                f"of those {v['accepted_but_off_pct']}% > DoF/2 off, "
                f"catches {v['in_focus_caught_pct']}% of the in-focus"
            )

    result = {
        "benchmark": "near_focus",
        "command": f"python benchmarks/bench_near_focus.py --fields {args.fields} "
        f"--sensor-px {args.sensor_px}" + (f" --model {args.model}" if args.model else ""),
        "machine": f"{platform.platform()}, torch threads {args.threads}",
        "package_version": __version__,
        "model_training": model.config.get("training", {}).get("dpn", {}).get("command"),
        "dof_um": float(model.optics.dof_um),
        "tolerance_um": tol,
        "sets": sets,
        "far_by_distance": by_distance,
        "near_magnitude_floor": floor,
        "one_snap_check": check,
        "one_snap_check_weighted": check_weighted,
        "one_snap_check_refined": check_refined,
        "label_vs_layers": label_vs_layers,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_results(args.out, result)


if __name__ == "__main__":
    main()
