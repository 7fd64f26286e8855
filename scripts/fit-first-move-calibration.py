"""Fit a SparseFocus model's first-move calibration from refocus benchmark runs.

A refocus's first move goes by the top-k median of a snap at an unknown start.
Where it lands, ``landing = z_after_first_move - z_focus``, is recorded by
``benchmarks/bench_refocus.py`` runs that checked after one move: runs that
stopped there ("verified ... after 1 move(s)": the final error) and runs that
polished right after that check (the message's check height ``z=…`` minus the
true focus, ``polished to …`` minus the final error). The raw first reading is
``start_defocus - landing``. For each knot of the reading the calibration's
offset is the median landing error of the runs read within ±2.5 µm of it
(at least 10 runs, else none); it is the identity within ±3 µm (where the
controller reads the first snap with the near-focus refiner) and at ±30 µm.
Each start is counted once (configurations share starts).

The runs must come from a model *without* a first-move calibration (the
landing must follow the raw reading). The one measured in docs/refocus.md was
fitted on ``benchmarks/results/refocus.json``, ``refocus_heldout_slides.json`` and
``refocus_fresh_slides.json`` (slides 0-7 and 16-21); the bundled model does not
carry it (it costs about a point of refocus success for five of one-move share).

Run: ``.venv/bin/python scripts/fit-first-move-calibration.py MODEL.json OUT RESULTS.json ...``
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from napari_sparsefocus.core.nn import NearFocusCalibration, load_model

KNOTS_UM = (5.0, 7.5, 10.0, 12.5, 15.0, 20.0, 25.0)
IDENTITY_UM = (3.0, 30.0)
WINDOW_UM = 2.5
MIN_RUNS = 10
_CHECK = re.compile(r"\(z=([-0-9.]+) µm: predicted.*polished to ([-0-9.]+) µm")


def landings(paths: list[Path]) -> np.ndarray:
    """``(raw first reading, landing error)`` rows of every start that checked after one move."""
    rows: dict[tuple, tuple[float, float]] = {}
    for path in paths:
        data = json.loads(path.read_text())
        for per_config in data["runs"].values():
            for config, runs in per_config.items():
                if config == "hill_climb":
                    continue
                for r in runs:
                    start = float(r["start_defocus_um"])
                    landing = None
                    if r["moves"] == 1 and r["message"].startswith("verified"):
                        landing = float(r["error_um"])
                    elif r.get("polish") and r["snaps"] - r.get("polish_snaps", 0) == 2:
                        m = _CHECK.search(r["message"])
                        if m:
                            z_check, z_final = float(m.group(1)), float(m.group(2))
                            landing = z_check - (z_final - float(r["error_um"]))
                    if landing is None:
                        continue
                    key = (path.name, r["slide"], tuple(r["site"]), round(start, 4))
                    rows.setdefault(key, (start - landing, landing))
    return np.asarray(list(rows.values()), dtype=np.float64).reshape(-1, 2)


def fit(rows: np.ndarray) -> tuple[list[float], list[float], list[int]]:
    """Knots (reading, calibrated reading) and the runs behind each."""
    xs = sorted({s * k for k in (*KNOTS_UM, *IDENTITY_UM) for s in (-1.0, 1.0)})
    ys, counts = [], []
    for x in xs:
        near = np.abs(rows[:, 0] - x) <= WINDOW_UM
        fitted = abs(x) in KNOTS_UM and near.sum() >= MIN_RUNS
        ys.append(x + (float(np.median(rows[near, 1])) if fitted else 0.0))
        counts.append(int(near.sum()) if fitted else 0)
    return xs, ys, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("results", type=Path, nargs="+")
    args = ap.parse_args()
    rows = landings(args.results)
    xs, ys, counts = fit(rows)
    cal = NearFocusCalibration(
        tuple(xs),
        tuple(ys),
        fitted_on=(
            f"median landing error of {len(rows)} first moves by their raw top-k reading "
            f"(±{WINDOW_UM} µm windows; "
            + ", ".join(p.name for p in args.results)
            + "; scripts/fit-first-move-calibration.py)"
        ),
    )
    for x, y, n in zip(xs, ys, counts, strict=True):
        print(f"reading {x:+6.1f} µm -> {y:+7.2f} µm ({n} runs)")
    before = np.abs(rows[:, 1])
    after = np.abs(rows[:, 1] - (cal.apply(rows[:, 0]) - rows[:, 0]))
    print(
        f"{len(rows)} first moves: median |landing| {np.median(before):.3f} -> "
        f"{np.median(after):.3f} µm, within 0.44 µm {np.mean(before <= 0.44):.1%} -> "
        f"{np.mean(after <= 0.44):.1%} (in-sample)"
    )
    weights, config = load_model(args.model).with_first_move_calibration(cal).save(args.out)
    print(f"wrote {weights} and {config}")


if __name__ == "__main__":
    main()
