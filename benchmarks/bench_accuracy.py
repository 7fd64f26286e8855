"""Accuracy of the bundled model and baselines on the simulated held-out test set.

Issue targets (learning core), every sparsity class, cells and tissue:
SparseFocus MAE ≤ 0.6 µm and ≤ 0.5 DoF, DSS ≥ 99 %, DoF-Accuracy (1 DoF) ≥ 70 %;
on extremely sparse content MAE ≤ 0.2 × the Liao grid-median baseline's.

Runs ``sparsefocus evaluate`` in-process (bundled SparseFocus model + bundled
baselines + the classical hill-climb), writes the full report (paper Tables 1–3,
Figs 2–3) into ``--out`` and the target check into
``benchmarks/results/accuracy.json``.

Run: ``.venv/bin/python benchmarks/bench_accuracy.py [--out docs/evaluation]
[--fields 4 --shots 6]``
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from napari_sparsefocus import __version__
from napari_sparsefocus._report import write_report
from napari_sparsefocus.core.nn import load_model
from napari_sparsefocus.core.nn._evaluate import TestSetSpec, baseline_predictors, iter_evaluate
from napari_sparsefocus.core.nn._inference import bundled_baseline_paths
from napari_sparsefocus.evaluation import summarize

ROOT = Path(__file__).resolve().parents[1]
LIAO = "Liao (grid median)"


def _targets(results, dof_um: float) -> dict:
    rows = {}
    ok_all = True
    for kind, sparsity in results.groups:
        g = results.get("SparseFocus", kind, sparsity)
        true, pred = g.answered()
        m = summarize(pred, true, dof_um) if len(true) else {}
        row = {
            "n": g.n_total,
            "abstained": g.n_abstained,
            "mae_um": m.get("mae_um"),
            "mae_dof": m["mae_um"] / dof_um if m else None,
            "dss_pct": m.get("dss"),
            "dof_acc_1_pct": m.get("dof_acc_1"),
        }
        checks = {
            "mae_le_0.6um": bool(m) and m["mae_um"] <= 0.6,
            "mae_le_0.5dof": bool(m) and m["mae_um"] <= 0.5 * dof_um,
            "dss_ge_99": bool(m) and m["dss"] >= 99.0,
            "dof_acc1_ge_70": bool(m) and m["dof_acc_1"] >= 70.0,
        }
        liao = results.get(LIAO, kind, sparsity)
        if liao is not None and sparsity == "extremely_sparse" and m:
            lt, lp = liao.answered()
            liao_mae = float(np.mean(np.abs(lp - lt)))
            row["liao_mae_um"] = liao_mae
            row["ratio_to_liao"] = m["mae_um"] / liao_mae
            checks["ratio_le_0.2_liao"] = m["mae_um"] <= 0.2 * liao_mae
        row["checks"] = checks
        ok_all &= all(checks.values())
        rows[f"{kind}/{sparsity}"] = row
    return {"groups": rows, "all_met": ok_all}


def _training_runs(model: object, paths: dict[str, Path]) -> str:
    """Name the last training run (its ``--out-dir``) of the DPN and of each baseline.

    The networks do not all get every fine-tuning round; the folders say which
    round each file comes from (``scripts/train-default-model.sh``).
    """
    found = {"SparseFocus DPN": model.config.get("training", {}).get("dpn", {})}
    for name, path in paths.items():
        try:
            found[name] = json.loads(Path(path).read_text(encoding="utf-8")).get("training", {})
        except (OSError, ValueError):
            found[name] = {}
    parts = []
    for name, rec in found.items():
        out_dir = rec.get("config", {}).get("out_dir") if isinstance(rec, dict) else None
        parts.append(f"{name} `{out_dir}`" if out_dir else f"{name} (unrecorded)")
    return ", ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "evaluation")
    ap.add_argument("--model", default=None, help="SparseFocus model (default: bundled)")
    ap.add_argument("--fields", type=int, default=4)
    ap.add_argument("--shots", type=int, default=6)
    ap.add_argument("--classical-shots", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-baselines", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model)
    paths = {} if args.no_baselines else bundled_baseline_paths()
    single, two_shot = baseline_predictors(paths)
    spec = TestSetSpec(
        fields_per_group=args.fields,
        shots_per_field=args.shots,
        classical_shots_per_field=args.classical_shots,
    )
    t0 = time.perf_counter()
    gen = iter_evaluate(model, spec, baselines=single, two_shot_baselines=two_shot)
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            results = stop.value
            break
        print(f"[{p.done}/{p.total}] {p.kind:6s} {p.sparsity:16s} {p.seconds:6.1f} s", flush=True)
    dof = model.optics.dof_um
    out_arg = args.out.resolve()
    if out_arg.is_relative_to(ROOT):
        out_arg = out_arg.relative_to(ROOT)
    runs = _training_runs(model, paths)
    command = (
        f"python benchmarks/bench_accuracy.py --out {out_arg} --fields {args.fields} "
        f"--shots {args.shots} --classical-shots {args.classical_shots}"
    )
    write_report(
        results,
        args.out,
        dof_um=dof,
        title="SparseFocus on the simulated held-out test set",
        notes=(
            f"Test seeds {spec.seed0}…{spec.seed0 + spec.fields_per_group - 1} of the `test` split "
            f"(disjoint from training by construction); {spec.fields_per_group} fields × "
            f"{spec.shots_per_field} random defocus shots, uniform in ±25 µm, per group; frames "
            f"{spec.shape_px[0]}×{spec.shape_px[1]} px; DoF {dof:.2f} µm. Models: the bundled "
            f"default and the bundled baselines (`scripts/train-default-model.sh`; last "
            f"training run of each: {runs}). Reproduce: `{command}`."
        ),
        metadata={
            "model": str(args.model or "bundled"),
            "model_training": model.config.get("training", {}),
            "baselines": paths,
            "package_version": __version__,
            "spec": spec.__dict__,
        },
    )
    summary = {
        "benchmark": "accuracy",
        "command": command,
        "machine": {"platform": platform.platform(), "torch_threads": args.threads},
        "dof_um": dof,
        "seconds": time.perf_counter() - t0,
        **_targets(results, dof),
    }
    for name, row in summary["groups"].items():
        mae = row["mae_um"]
        print(
            f"{name:26s} MAE {mae if mae is None else round(mae, 2)} µm "
            f"({row['mae_dof'] if row['mae_dof'] is None else round(row['mae_dof'], 2)} DoF) "
            f"DSS {row['dss_pct']} % DoF-acc1 {row['dof_acc_1_pct']} % "
            f"abstained {row['abstained']}/{row['n']}"
            + (
                f" Liao MAE {row['liao_mae_um']:.2f} (ratio {row['ratio_to_liao']:.2f})"
                if "liao_mae_um" in row
                else ""
            )
        )
    print("all targets met:", summary["all_met"])
    out = ROOT / "benchmarks" / "results" / "accuracy.json"
    out.write_text(json.dumps(summary, indent=1, default=float))
    print(f"wrote {out} and the report in {args.out}")


if __name__ == "__main__":
    main()
