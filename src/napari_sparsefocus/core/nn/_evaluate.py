"""Held-out evaluation of SparseFocus, learned baselines and classical search.

The test set is simulated with the ``test`` seed split (disjoint from training
by construction): cells and tissue × dense / sparse / extremely sparse fields,
each imaged at random defocus values. Every method sees the same images.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._report import EvaluationResults
from .._search import hill_climb
from .._simulate import simulate_field

if TYPE_CHECKING:
    from collections.abc import Generator, Mapping

    from numpy.typing import NDArray

    from .._simulate import SimulatedField
    from ._inference import SparseFocusModel

__all__ = [
    "BASELINE_NAMES",
    "EvalProgress",
    "TestSetSpec",
    "baseline_predictors",
    "evaluate",
    "grid_median_predictor",
    "iter_evaluate",
    "two_shot_predictor",
]

log = logging.getLogger(__name__)

KINDS = ("cell", "tissue")
SPARSITIES = ("dense", "sparse", "extremely_sparse")


@dataclass(frozen=True)
class TestSetSpec:
    """Size of the simulated held-out test set.

    Attributes
    ----------
    fields_per_group : int
        Fields per (kind, sparsity) group (test seeds ``seed0 … seed0 + n - 1``).
    shots_per_field : int
        Random defocus values per field, uniform in ``defocus_range_um``.
    classical_shots_per_field : int
        How many of those shots also run the classical hill-climb (it costs
        ~20 full-frame snaps per shot).
    defocus_range_um : tuple of float
        Defocus range of the shots.
    shape_px : tuple of int
        Frame size (the paper's 2016 × 2016 crop).
    seed0 : int
        First test seed.
    """

    fields_per_group: int = 4
    shots_per_field: int = 6
    classical_shots_per_field: int = 1
    defocus_range_um: tuple[float, float] = (-25.0, 25.0)
    shape_px: tuple[int, int] = (2016, 2016)
    seed0: int = 1000


@dataclass(frozen=True)
class EvalProgress:
    """Progress record: one group of one kind and sparsity done."""

    done: int
    total: int
    kind: str
    sparsity: str
    seconds: float


def iter_evaluate(
    model: SparseFocusModel,
    spec: TestSetSpec | None = None,
    *,
    baselines: Mapping[str, Any] | None = None,
    two_shot_baselines: Mapping[str, tuple[Any, float]] | None = None,
    classical_measure: str = "brenner",
    kinds: tuple[str, ...] = KINDS,
    sparsities: tuple[str, ...] = SPARSITIES,
) -> Generator[EvalProgress, None, EvaluationResults]:
    """Evaluate on the simulated held-out set, one group at a time.

    Parameters
    ----------
    model : SparseFocusModel
        The SparseFocus pipeline; its optics render the test set.
    spec : TestSetSpec, optional
        Test-set size.
    baselines : mapping, optional
        Name → callable ``f(image) -> defocus_um or None`` for learned
        baselines evaluated on the same images (single-shot).
    two_shot_baselines : mapping, optional
        Name → ``(f(shot_a, shot_b) -> defocus_um, delta_um)`` for two-shot
        methods (Dastidar): the second shot is taken ``delta_um`` above the
        first, and the answer is scored against the second shot's defocus
        (where the stage then is).
    classical_measure : str
        Focus measure of the classical hill-climb baseline.
    kinds, sparsities : tuple of str
        Groups to evaluate.

    Yields
    ------
    EvalProgress
        After each group.

    Returns
    -------
    EvaluationResults
        Predictions per method and group; SparseFocus abstentions are NaN.
        Extras: ``latency_ms`` (SparseFocus), ``snaps`` (classical).

    Notes
    -----
    The classical baseline starts a Brenner hill-climb (4 µm initial step,
    0.25 µm final step, ±30 µm limits, 40-snap budget) at the shot's stage
    position; its "prediction" is ``z_start - z_best`` so it is scored with
    the same metrics as the one-shot methods.
    """
    spec = spec or TestSetSpec()
    baselines = dict(baselines or {})
    two_shot = dict(two_shot_baselines or {})
    results = EvaluationResults()
    optics = model.optics
    total = len(kinds) * len(sparsities)
    done = 0
    for kind in kinds:
        for sparsity in sparsities:
            t0 = time.perf_counter()
            true, pred, lat = [], [], []
            other: dict[str, list[float]] = {k: [] for k in baselines}
            pairs: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in two_shot}
            c_true, c_pred, c_snaps = [], [], []
            for f in range(spec.fields_per_group):
                seed = spec.seed0 + f
                fld = simulate_field(
                    kind, sparsity, optics, seed, shape_px=spec.shape_px, split="test"
                )
                rng = np.random.default_rng([seed, 99, KINDS.index(kind), len(sparsity)])
                shots = rng.uniform(*spec.defocus_range_um, size=spec.shots_per_field)
                for j, d in enumerate(shots):
                    img = fld.snap_defocus(float(d), rng=rng)
                    t = time.perf_counter()
                    p = model.predict(img)
                    lat.append((time.perf_counter() - t) * 1e3)
                    true.append(float(d))
                    pred.append(math.nan if p.defocus_um is None else float(p.defocus_um))
                    for name, fn in baselines.items():
                        v = fn(img)
                        other[name].append(math.nan if v is None else float(v))
                    for name, (fn2, delta) in two_shot.items():
                        img_b = fld.snap_defocus(float(d) + delta, rng=rng)
                        v = fn2(img, img_b)
                        pairs[name][0].append(float(d) + delta)
                        pairs[name][1].append(math.nan if v is None else float(v))
                    if j < spec.classical_shots_per_field:
                        z0 = fld.z_focus_um + float(d)
                        res = hill_climb(
                            _snapper(fld, rng),
                            z0,
                            measure=classical_measure,
                            step_um=4.0,
                            min_step_um=0.25,
                            z_min_um=fld.z_focus_um - 30.0,
                            z_max_um=fld.z_focus_um + 30.0,
                            max_snaps=40,
                            channel_axis=-1,
                        )
                        c_true.append(float(d))
                        c_pred.append(z0 - res.z_best_um)
                        c_snaps.append(float(res.snaps))
            results.add("SparseFocus", kind, sparsity, true_um=true, pred_um=pred, latency_ms=lat)
            for name, vals in other.items():
                results.add(name, kind, sparsity, true_um=true, pred_um=vals)
            for name, (t2, p2) in pairs.items():
                results.add(name, kind, sparsity, true_um=t2, pred_um=p2)
            if c_true:
                results.add(
                    f"Hill-climb ({classical_measure})",
                    kind,
                    sparsity,
                    true_um=c_true,
                    pred_um=c_pred,
                    snaps=c_snaps,
                )
            done += 1
            dt = time.perf_counter() - t0
            log.info("evaluated %s/%s in %.1f s", kind, sparsity, dt)
            yield EvalProgress(done, total, kind, sparsity, dt)
    return results


def _snapper(fld: SimulatedField, rng: np.random.Generator) -> Any:
    def snap(z_um: float) -> NDArray[Any]:
        return fld.snap(z_um, rng=rng)

    return snap


def evaluate(
    model: SparseFocusModel, spec: TestSetSpec | None = None, **kw: Any
) -> EvaluationResults:
    """Run :func:`iter_evaluate` to completion and return its results."""
    gen = iter_evaluate(model, spec, **kw)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            out: EvaluationResults = stop.value
            return out


def _load_single(path: str) -> tuple[Any, dict[str, Any], str]:
    from ._model_io import load_model_file
    from ._registry import build_network

    tensors, cfg = load_model_file(path)
    name = str(cfg.get("architecture"))
    nets = cfg.get("networks") or {}
    spec = nets.get(name) if isinstance(nets, dict) else None
    if spec is None or name in ("rin", "sparsefocus"):
        raise ValueError(f"{path}: not a single-network defocus regressor (architecture {name!r})")
    net = build_network(spec["name"], spec.get("config"))
    net.load_state_dict(
        {k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(name + ".")}
    )
    net.eval()
    return net, cfg, name


def two_shot_predictor(path: str) -> tuple[Any, float]:
    """Return ``(f(shot_a, shot_b) -> defocus_um, delta_um)`` for a Dastidar model file.

    Both shots are cut into the centred 224 px grid; each patch pair gives a
    prediction of the second shot's defocus and the median is the answer.

    Parameters
    ----------
    path : str
        Model file (``.json``) written by ``sparsefocus train --network dastidar``.

    Returns
    -------
    tuple
        The predictor and the shot step Δ (µm) it was trained with.
    """
    import torch

    from .._optics import Optics
    from ._preprocess import grid_patches, prepare_image

    net, cfg, name = _load_single(path)
    if name != "dastidar":
        raise ValueError(f"{path}: not a two-shot (dastidar) model (architecture {name!r})")
    delta = (cfg.get("training") or {}).get("delta_um") or 2.0
    optics = Optics.from_dict(cfg["optics"])

    @torch.no_grad()
    def predict(shot_a: Any, shot_b: Any) -> float:
        pa = prepare_image(shot_a, model_pixel_size_um=optics.pixel_size_um)
        pb = prepare_image(shot_b, model_pixel_size_um=optics.pixel_size_um)
        gy, gx = pa.grid
        cells = np.array([(r, c) for r in range(gy) for c in range(gx)])
        x = net.prepare(grid_patches(pa, cells), grid_patches(pb, cells))
        return float(np.median(net(x).reshape(-1).numpy()))

    return predict, float(delta)


def grid_median_predictor(path: str, *, reduce: str = "median") -> Any:
    """Return ``f(image) -> defocus_um`` for a single-network patch regressor.

    The network (a DPN, Liao or Jiang model file written by ``sparsefocus
    train``) predicts every patch of the centred 224 px grid and the median
    (or mean, as in Liao et al.'s ARM) is the answer — the paper's "grid
    mode" for the baselines.

    Parameters
    ----------
    path : str
        Model file (``.json``).
    reduce : {"median", "mean"}
        Aggregation over patches.

    Returns
    -------
    callable
    """
    import torch

    from .._optics import Optics
    from ._preprocess import grid_patches, prepare_image

    if reduce not in ("median", "mean"):
        raise ValueError(f"reduce must be 'median' or 'mean', got {reduce!r}")
    net, cfg, name = _load_single(path)
    if name == "dastidar":
        raise ValueError(f"{path}: a two-shot model; use two_shot_predictor")
    optics = Optics.from_dict(cfg["optics"])

    @torch.no_grad()
    def predict(image: Any) -> float:
        prep = prepare_image(image, model_pixel_size_um=optics.pixel_size_um)
        gy, gx = prep.grid
        cells = np.array([(r, c) for r in range(gy) for c in range(gx)])
        d = net(grid_patches(prep, cells)).reshape(-1).numpy()
        return float(np.median(d) if reduce == "median" else np.mean(d))

    return predict


#: Report names of the learned baselines, by architecture.
BASELINE_NAMES = {"liao": "Liao", "jiang": "Jiang", "dastidar": "Dastidar"}


def baseline_predictors(
    paths: Mapping[str, str],
) -> tuple[dict[str, Any], dict[str, tuple[Any, float]]]:
    """Build the evaluation predictors of learned baseline model files.

    Parameters
    ----------
    paths : mapping of str to str
        Report name → model file (``.json``). A Dastidar model becomes a
        two-shot predictor; a Liao model gives both its grid median and its
        grid mean (Liao et al.'s ARM averages the patches); others their grid
        median.

    Returns
    -------
    single, two_shot : dict
        Arguments ``baselines`` and ``two_shot_baselines`` of :func:`iter_evaluate`.
    """
    import json
    from pathlib import Path

    single: dict[str, Any] = {}
    two_shot: dict[str, tuple[Any, float]] = {}
    for name, path in paths.items():
        cfg_path = Path(path).with_suffix(".json")
        try:
            arch = json.loads(cfg_path.read_text(encoding="utf-8")).get("architecture")
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"baseline {name}: cannot read {cfg_path}: {exc}") from exc
        if arch == "dastidar":
            two_shot[f"{name} (two-shot, grid median)"] = two_shot_predictor(str(path))
            continue
        single[f"{name} (grid median)"] = grid_median_predictor(str(path))
        if arch == "liao":
            single[f"{name} (grid mean)"] = grid_median_predictor(str(path), reduce="mean")
    return single, two_shot
