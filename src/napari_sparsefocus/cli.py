"""Command-line interface: ``sparsefocus <subcommand>``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]

log = logging.getLogger("napari_sparsefocus")


def _z_values(args: argparse.Namespace) -> np.ndarray | None:
    if args.z is not None:
        return np.asarray(args.z, dtype=float)
    if args.z_range is not None:
        start, stop, step = args.z_range
        if step <= 0 or stop < start:
            raise SystemExit("--z-range needs START STOP STEP with STEP > 0 and STOP >= START")
        n = int(np.floor((stop - start) / step + 1e-9)) + 1
        z: np.ndarray = np.round(start + step * np.arange(n), 6)
        return z
    return None


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .core import Optics, simulate_stack
    from .io import write_stack

    optics = Optics()
    stack = simulate_stack(
        args.kind,
        args.sparsity,
        z_um=_z_values(args),
        optics=optics,
        seed=args.seed,
        shape_px=(args.size, args.size),
        split=args.split,
        noise=not args.no_noise,
    )
    out = write_stack(
        args.output,
        stack.images,
        z_step_um=stack.z_step_um,
        pixel_size_um=stack.pixel_size_um,
        rgb=stack.images.ndim == 4,
        metadata=stack.to_metadata(),
    )
    print(
        f"wrote {out}: {stack.images.shape} {stack.images.dtype}, kind={stack.kind}, "
        f"sparsity={stack.sparsity} ({stack.n_content_patches} content patches), "
        f"z_focus={stack.z_focus_um:.3f} µm"
    )
    return 0


def _focus_report(images: Any, z_um: np.ndarray | None, measure: str, rgb: bool) -> dict[str, Any]:
    from .core import find_focal_plane

    res = find_focal_plane(images, z_um=z_um, measure=measure, channel_axis=-1 if rgb else None)
    curve = np.asarray(res.curve, dtype=float)
    peak = float(curve.max()) if curve.size else 1.0
    return {
        "measure": res.measure,
        "focal_plane_index": int(res.index),
        "focal_plane_z_um": float(res.z_um),
        "trustworthy": bool(res.trustworthy),
        "reason": res.reason,
        "relative_contrast": float(res.relative_contrast),
        "z_um": [float(v) for v in res.z_values_um],
        "curve": [float(v) for v in curve],
        "curve_normalised": [float(v / peak) if peak > 0 else 0.0 for v in curve],
    }


def _print_focus(report: dict[str, Any], title: str) -> None:
    print(title)
    print(f"  measure: {report['measure']}")
    width = 40
    for z, v in zip(report["z_um"], report["curve_normalised"], strict=True):
        bar = "#" * round(v * width)
        mark = " <- focal plane" if z == report["z_um"][report["focal_plane_index"]] else ""
        print(f"  {z:8.2f} µm  {v:6.3f} {bar}{mark}")
    verdict = "trustworthy" if report["trustworthy"] else f"NOT trustworthy: {report['reason']}"
    print(
        f"  focal plane: index {report['focal_plane_index']}, z = "
        f"{report['focal_plane_z_um']:.3f} µm (sub-step fit); curve contrast "
        f"{report['relative_contrast']:.3f}; {verdict}"
    )


def _cmd_focus(args: argparse.Namespace) -> int:
    from .io import read_stack

    try:
        st = read_stack(args.file)
    except ValueError as e:
        print(f"sparsefocus focus: {e}", file=sys.stderr)
        return 2
    n = st.data.shape[0] if st.axes.startswith("Z") else 1
    if n < 2:
        print(f"sparsefocus focus: {args.file} is not a z-stack (axes {st.axes})", file=sys.stderr)
        return 2
    labelled = st.metadata.get("defocus_um") if isinstance(st.metadata, dict) else None
    if isinstance(labelled, list) and len(labelled) == n:
        z = np.asarray(labelled, dtype=float)  # the project's own files: defocus per plane
        z_label = "defocus from the file's labels"
    elif st.z_step_um is not None:
        z = np.arange(n) * st.z_step_um
        z_label = f"z-step {st.z_step_um} µm"
    else:
        z = None
        z_label = "no z-step in the file: plane indices"
    report = _focus_report(st.data, z, args.measure, st.rgb)
    if args.json:
        print(json.dumps({"file": str(args.file), **report}))
    else:
        _print_focus(report, f"{args.file}: {n} planes, {z_label}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .core.nn import iter_predict_stack, load_model
    from .io import read_stack

    try:
        model = load_model(args.model)
    except (OSError, ValueError) as e:
        print(f"sparsefocus predict: cannot load the model: {e}", file=sys.stderr)
        return 2
    try:
        st = read_stack(args.file)
    except ValueError as e:
        print(f"sparsefocus predict: {e}", file=sys.stderr)
        return 2
    planes = st.data if st.axes.startswith("Z") else [st.data]
    px = args.pixel_size_um if args.pixel_size_um is not None else st.pixel_size_um
    labelled = st.metadata.get("defocus_um") if isinstance(st.metadata, dict) else None
    try:
        for i, pred in iter_predict_stack(
            planes, model, pixel_size_um=px, k_mode=args.k_mode, k=args.k
        ):
            rec: dict[str, Any] = {"file": str(args.file), "plane": i, **pred.to_dict()}
            if isinstance(labelled, list) and i < len(labelled):
                rec["true_defocus_um"] = labelled[i]
            if args.json:
                print(json.dumps(rec), flush=True)
            else:
                d = "—" if pred.defocus_um is None else f"{pred.defocus_um:+7.2f} µm"
                print(
                    f"plane {i:4d}: defocus {d}  ±{pred.spread_um:.2f}  "
                    f"agreement {pred.direction_agreement:.2f}  {pred.sparsity:16s} "
                    f"k={pred.k:2d}  {pred.verdict}",
                    flush=True,
                )
    except ValueError as e:
        print(f"sparsefocus predict: {args.file}: {e}", file=sys.stderr)
        return 2
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from . import __version__
    from ._report import write_report
    from .core.nn import load_model
    from .core.nn._evaluate import TestSetSpec, baseline_predictors, iter_evaluate
    from .core.nn._inference import bundled_baseline_paths

    try:
        model = load_model(args.model)
        paths: dict[str, str] = {}
        if args.bundled_baselines:
            paths.update(bundled_baseline_paths())
        for item in args.baseline or []:
            name, _, path = item.partition("=")
            if not path:
                raise ValueError(f"--baseline needs NAME=MODEL.json, got {item!r}")
            paths[name] = path
        baselines, two_shot = baseline_predictors(paths)
    except (OSError, ValueError) as e:
        print(f"sparsefocus evaluate: {e}", file=sys.stderr)
        return 2
    spec = TestSetSpec(
        fields_per_group=args.fields,
        shots_per_field=args.shots,
        classical_shots_per_field=args.classical_shots,
        shape_px=(args.size, args.size),
    )
    gen = iter_evaluate(model, spec, baselines=baselines, two_shot_baselines=two_shot)
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            results = stop.value
            break
        print(f"[{p.done}/{p.total}] {p.kind:6s} {p.sparsity:16s} {p.seconds:6.1f} s", flush=True)
    out = write_report(
        results,
        args.out,
        dof_um=model.optics.dof_um,
        title="SparseFocus on the simulated held-out test set",
        notes=(
            f"Test seeds {spec.seed0}…{spec.seed0 + spec.fields_per_group - 1} of the `test` "
            f"split (disjoint from training by construction); {spec.fields_per_group} fields × "
            f"{spec.shots_per_field} random defocus shots in ±25 µm per group; frames "
            f"{spec.shape_px[0]}×{spec.shape_px[1]} px. Reproduce: `sparsefocus evaluate "
            f"--model {args.model or 'bundled'} --out {args.out} --fields {args.fields} "
            f"--shots {args.shots} --classical-shots {args.classical_shots}`."
        ),
        metadata={
            "model": str(args.model or "bundled"),
            "model_training": model.config.get("training", {}),
            "package_version": __version__,
            "spec": spec.__dict__,
        },
    )
    print(f"wrote {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if not args.text:
        from ._demo import missing_display, run_demo

        why = missing_display()
        if why is not None:
            print(f"sparsefocus demo: {why}", file=sys.stderr)
            return 2
        run_demo(microscope=not args.no_microscope)
        return 0
    from .core import Optics, simulate_stack

    optics = Optics()
    z = np.arange(-10.0, 10.01, 1.0)
    print(
        f"Optics: NA {optics.na}, {optics.magnification:g}x, pixel {optics.pixel_size_um:.4f} µm, "
        f"DoF {optics.dof_um:.3f} µm"
    )
    for kind, sparsity in (("tissue", "dense"), ("cell", "extremely_sparse")):
        st = simulate_stack(
            kind, sparsity, z_um=z, optics=optics, seed=args.seed, shape_px=(args.size, args.size)
        )
        rep = _focus_report(st.images, st.defocus_um, "brenner", rgb=True)
        _print_focus(
            rep,
            f"\nSimulated {kind}, {sparsity}: {st.n_content_patches}/{st.importance.size} "
            f"patches hold content; true focus at defocus 0",
        )
        err = rep["focal_plane_z_um"]
        print(f"  classical (Brenner) focus error: {err:+.2f} µm = {err / optics.dof_um:+.2f} DoF")
    return 0


def _cmd_make_bank(args: argparse.Namespace) -> int:
    from .core import Optics
    from .core.nn._bank import iter_write_patch_bank

    optics = Optics.from_dict(_json_arg(args.optics)) if args.optics else Optics()
    gen = iter_write_patch_bank(
        args.out_dir,
        args.pairs,
        optics=optics,
        seed=args.seed,
        defocus_range_um=tuple(args.defocus_range_um),
        delta_um=args.delta_um,
        near_um=args.near_um,
        near_fraction=args.near_fraction,
        shard_pairs=args.shard_pairs,
        part=tuple(args.part),
        levels=tuple(args.levels),
        max_patches_per_plane=args.max_patches_per_plane,
        split=args.split,
    )
    for p in gen:
        log.info(
            "bank %s: shard %d/%d, %d pairs", args.out_dir, p.shards_done, p.shards_total, p.pairs
        )
    print(f"patch bank {args.out_dir}: part {args.part[0]}/{args.part[1]} complete")
    return 0


def _json_arg(text: str) -> dict[str, Any]:
    raw = Path(text[1:]).read_text(encoding="utf-8") if text.startswith("@") else text
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise SystemExit("--optics must be a JSON object")
    return value


def _cmd_combine(args: argparse.Namespace) -> int:
    from .core.nn._train import combine_sparsefocus_model

    out = combine_sparsefocus_model(args.rin, args.dpn, args.output)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser."""
    p = argparse.ArgumentParser(prog="sparsefocus", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="simulate a defocus z-stack to OME-TIFF")
    s.add_argument("output", type=Path, help="output .ome.tif")
    s.add_argument("--kind", choices=("cell", "tissue"), default="cell")
    s.add_argument(
        "--sparsity", choices=("dense", "sparse", "extremely_sparse", "empty"), default="sparse"
    )
    g = s.add_mutually_exclusive_group()
    g.add_argument("--z", type=float, nargs="+", help="defocus values (µm)")
    g.add_argument(
        "--z-range",
        type=float,
        nargs=3,
        metavar=("START", "STOP", "STEP"),
        help="defocus range (µm); default -25 25 0.5",
    )
    s.add_argument("--size", type=int, default=2016, help="field size in px (default 2016)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--split", choices=("train", "test"), default="test")
    s.add_argument("--no-noise", action="store_true")
    s.set_defaults(func=_cmd_simulate)

    f = sub.add_parser("focus", help="print a stack's focus curve and focal plane")
    f.add_argument("file", type=Path)
    f.add_argument("--measure", default="brenner")
    f.add_argument("--json", action="store_true", help="print one JSON record")
    f.set_defaults(func=_cmd_focus)

    pr = sub.add_parser("predict", help="predict the signed defocus of every plane of a stack")
    pr.add_argument("file", type=Path)
    pr.add_argument("--model", type=Path, default=None, help="model .json (default: bundled)")
    pr.add_argument("--json", action="store_true", help="one JSON record per plane")
    pr.add_argument("--k-mode", choices=("auto", "fixed", "all"), default="auto")
    pr.add_argument("--k", type=int, default=None, help="patches for --k-mode fixed")
    pr.add_argument(
        "--pixel-size-um", type=float, default=None, help="override the file's pixel size (µm)"
    )
    pr.set_defaults(func=_cmd_predict)

    # `sparsefocus train ...` is handed to the torch part whole (see main), so the
    # other subcommands never import torch; this entry only lists it in --help
    ev = sub.add_parser("evaluate", help="paper Tables 1-3 and Figs 2-3 on a held-out test set")
    ev.add_argument("--model", type=Path, default=None, help="SparseFocus model (default bundled)")
    ev.add_argument("--out", type=Path, required=True, help="output folder")
    ev.add_argument(
        "--baseline",
        action="append",
        metavar="NAME=MODEL.json",
        help="a learned baseline model (Liao/Jiang: grid median, Liao also grid mean; "
        "Dastidar: two-shot)",
    )
    ev.add_argument(
        "--bundled-baselines",
        action="store_true",
        help="also evaluate the baselines shipped with the package (Liao, Jiang, Dastidar)",
    )
    ev.add_argument("--fields", type=int, default=4, help="fields per kind × sparsity group")
    ev.add_argument("--shots", type=int, default=6, help="defocus shots per field")
    ev.add_argument(
        "--classical-shots",
        type=int,
        default=1,
        help="shots per field that also run the classical hill-climb",
    )
    ev.add_argument("--size", type=int, default=2016, help="frame size (px)")
    ev.set_defaults(func=_cmd_evaluate)

    sub.add_parser(
        "train",
        help="train a network (RIN, DPN or a baseline) on simulated data or labelled stacks; "
        "resumable, runs under torchrun (see `sparsefocus train --help`)",
        add_help=False,
    )

    c = sub.add_parser("combine-model", help="join a trained RIN and DPN into one model file")
    c.add_argument("rin", type=Path, help="RIN model .json")
    c.add_argument("dpn", type=Path, help="DPN model .json")
    c.add_argument("output", type=Path, help="output stem (writes .json + .safetensors)")
    c.set_defaults(func=_cmd_combine)

    mb = sub.add_parser(
        "make-bank", help="render a patch bank once, shared training data of the patch networks"
    )
    mb.add_argument("out_dir")
    mb.add_argument("--pairs", type=int, default=16384, help="shot pairs to render")
    mb.add_argument("--seed", type=int, default=0)
    mb.add_argument("--defocus-range-um", type=float, nargs=2, default=(-25.0, 25.0))
    mb.add_argument("--delta-um", type=float, default=2.0, help="step between a pair's shots")
    mb.add_argument("--near-um", type=float, default=6.0)
    mb.add_argument(
        "--near-fraction",
        type=float,
        default=0.4,
        help="share of pairs drawn within ±near-um of focus",
    )
    mb.add_argument("--shard-pairs", type=int, default=512)
    mb.add_argument(
        "--split",
        choices=("train", "test"),
        default="train",
        help="simulator seed stream (test: held-out banks for evaluation)",
    )
    mb.add_argument(
        "--levels",
        nargs="+",
        default=("dense", "sparse", "extremely_sparse"),
        help="sparsity levels of the fields, drawn uniformly (repeat one to weight it)",
    )
    mb.add_argument(
        "--max-patches-per-plane",
        type=int,
        default=None,
        help="keep at most this many content patches per rendered plane (balances sparsity)",
    )
    mb.add_argument("--optics", help="Optics fields as JSON, or @file.json")
    mb.add_argument(
        "--part",
        type=int,
        nargs=2,
        default=(0, 1),
        metavar=("I", "N"),
        help="this process writes shards I, I+N, … (run N processes)",
    )
    mb.set_defaults(func=_cmd_make_bank)

    d = sub.add_parser(
        "demo",
        help="open napari with the sample stack, the bundled model, the analysis widgets and "
        "the Microscope widget on the simulated microscope "
        "(--text: print a focus analysis of simulated stacks instead)",
    )
    d.add_argument("--text", action="store_true", help="no window: print the focus analysis")
    d.add_argument(
        "--no-microscope",
        action="store_true",
        help="do not dock the Microscope widget (no simulated microscope running)",
    )
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--size", type=int, default=2016)
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        from .core.nn._train import main as train_main

        return int(train_main(argv[1:], prog="sparsefocus train"))
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
