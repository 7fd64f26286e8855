"""Evaluation report in the layout of the SparseFocus paper (Tables 1–3, Figs. 2–3).

:class:`EvaluationResults` collects, per method and per (kind, sparsity)
group, the ground-truth and predicted signed defocus; :func:`write_report`
turns it into a Markdown report, a JSON file with every number, and the
regression (Fig. 2) and per-interval MAE (Fig. 3) figures; :func:`load_report`
reads the JSON back.

Abstentions
-----------
A prediction of NaN means the method *abstained* (gave no prediction, e.g.
no content found). Abstentions are counted per group and reported as the
"abstain rate" (percent of the group's samples); they are excluded from
every metric (MAE, DoF-Accuracy, DSS, per-interval MAE) and are not drawn.
A method that abstains on hard samples can therefore look better on the
metrics, which is why the abstain rate is always reported next to them.

The figures are rendered with matplotlib's Agg canvas on a bare
:class:`matplotlib.figure.Figure`; neither :mod:`matplotlib.pyplot` nor the
global backend is touched.

References
----------
.. [1] Y. Zhai et al., "SparseFocus: Learning-based one-shot autofocus for
   microscopy with sparse content", arXiv:2502.06452 (2025), Section 2.2,
   Section 2.3, Tables 1–3, Figs. 2–3.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .evaluation import per_interval_mae, summarize
from .plotting import plot_interval_mae, plot_regression

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from numpy.typing import ArrayLike, NDArray

    from .evaluation import IntervalMAE

__all__ = [
    "DEFAULT_BINS_UM",
    "KINDS",
    "REPORT_FORMAT",
    "SPARSITIES",
    "EvaluationResults",
    "GroupResult",
    "load_report",
    "write_report",
]

#: Sample kinds, in the paper's column order.
KINDS: tuple[str, ...] = ("cell", "tissue")
#: Content-sparsity levels, in the paper's column order.
SPARSITIES: tuple[str, ...] = ("dense", "sparse", "extremely_sparse")
#: Default Fig. 3 bin edges in µm, applied to ``|defocus|``: 0–5, 5–10, …, 20–25.
DEFAULT_BINS_UM: tuple[float, ...] = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
#: Value of the ``"format"`` key of ``report.json``.
REPORT_FORMAT = "napari_sparsefocus.report"
_FORMAT_VERSION = 1

_KIND_LABEL = {"cell": "Cell", "tissue": "Tissue"}
_SPARSITY_LABEL = {"dense": "dense", "sparse": "sparse", "extremely_sparse": "extremely sparse"}
_DASH = "—"
_DPI = 120
_PANEL_IN = 3.0


def _check_label(value: Any, allowed: tuple[str, ...], name: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"unknown {name} {value!r}: expected one of {', '.join(allowed)}")
    return value


@dataclass(frozen=True, eq=False)
class GroupResult:
    """Predictions of one method on one (kind, sparsity) group.

    Use :meth:`EvaluationResults.add` to create one; the arrays are
    validated there and stored read-only.

    Attributes
    ----------
    true_um : numpy.ndarray
        Ground-truth signed defocus in µm, 1-D, finite.
    pred_um : numpy.ndarray
        Predicted signed defocus in µm, same length; NaN marks an abstention.
    extras : dict of str to numpy.ndarray
        Optional per-sample quantities of the same length (e.g. ``snaps``,
        ``latency_ms``); NaN entries are ignored when averaging.
    """

    true_um: NDArray[np.float64]
    pred_um: NDArray[np.float64]
    extras: dict[str, NDArray[np.float64]] = field(default_factory=dict)

    @property
    def abstained(self) -> NDArray[np.bool_]:
        """Boolean mask of the abstained samples (NaN prediction)."""
        return np.isnan(self.pred_um)

    @property
    def n_total(self) -> int:
        """Number of samples, abstentions included."""
        return int(self.true_um.size)

    @property
    def n_abstained(self) -> int:
        """Number of abstained samples."""
        return int(np.count_nonzero(self.abstained))

    @property
    def abstain_rate_pct(self) -> float:
        """Percentage of abstained samples, in [0, 100]."""
        return 100.0 * self.n_abstained / self.n_total

    def answered(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Return the samples with a prediction.

        Returns
        -------
        tuple of numpy.ndarray
            ``(true_um, pred_um)`` restricted to the non-abstained samples.
        """
        keep = ~self.abstained
        return self.true_um[keep], self.pred_um[keep]


def _float_array(values: ArrayLike, name: str) -> NDArray[np.float64]:
    try:
        arr = np.array(values, dtype=np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be an array of numbers") from exc
    arr.setflags(write=False)
    return arr


class EvaluationResults:
    """Predictions of several methods on the paper's (kind, sparsity) groups.

    Groups are keyed by kind (``"cell"``, ``"tissue"``) and sparsity
    (``"dense"``, ``"sparse"``, ``"extremely_sparse"``). A method need not
    cover every group; missing cells are shown as "—" in the report.

    Notes
    -----
    A NaN prediction is an *abstention*: it is counted in the abstain rate
    and excluded from all metrics and plots (see the module docstring).

    Examples
    --------
    >>> import numpy as np
    >>> res = EvaluationResults()
    >>> true = np.linspace(-20, 20, 41)
    >>> _ = res.add("ours", "cell", "sparse", true_um=true, pred_um=true + 0.1)
    >>> res.methods
    ('ours',)
    """

    def __init__(self) -> None:
        self._data: dict[str, dict[tuple[str, str], GroupResult]] = {}

    def add(
        self,
        method: str,
        kind: str,
        sparsity: str,
        *,
        true_um: ArrayLike,
        pred_um: ArrayLike,
        **extras: ArrayLike,
    ) -> GroupResult:
        """Store the predictions of `method` on one group.

        Parameters
        ----------
        method : str
            Method name as shown in the report (non-empty).
        kind : {"cell", "tissue"}
            Sample kind.
        sparsity : {"dense", "sparse", "extremely_sparse"}
            Content sparsity.
        true_um : array_like
            Ground-truth signed defocus in µm; must be finite.
        pred_um : array_like
            Predicted signed defocus in µm, same length; NaN = abstained,
            infinite values are rejected.
        **extras : array_like
            Per-sample quantities of the same length, e.g. ``snaps`` (images
            taken) or ``latency_ms``; the report gives their mean.

        Returns
        -------
        GroupResult
            The stored, validated group.

        Raises
        ------
        ValueError
            For an empty or non-string method name, an unknown kind or
            sparsity, a group already stored for this method, empty or
            mismatched arrays, non-finite ground truth, infinite predictions.
        """
        if not isinstance(method, str) or not method.strip():
            raise ValueError(f"method must be a non-empty string, got {method!r}")
        _check_label(kind, KINDS, "kind")
        _check_label(sparsity, SPARSITIES, "sparsity")
        groups = self._data.get(method, {})
        if (kind, sparsity) in groups:
            raise ValueError(f"method {method!r} already has results for {kind}/{sparsity}")
        true = _float_array(true_um, "true_um")
        pred = _float_array(pred_um, "pred_um")
        if true.size == 0:
            raise ValueError("true_um is empty: need at least one sample")
        if true.shape != pred.shape:
            raise ValueError(
                f"true_um and pred_um must have the same length, got {true.size} and {pred.size}"
            )
        if not np.all(np.isfinite(true)):
            raise ValueError("true_um contains NaN or infinite values")
        if np.any(np.isinf(pred)):
            raise ValueError("pred_um contains infinite values (use NaN for an abstention)")
        checked: dict[str, NDArray[np.float64]] = {}
        for name, values in extras.items():
            arr = _float_array(values, name)
            if arr.shape != true.shape:
                raise ValueError(
                    f"extra {name!r} has {arr.size} values, expected {true.size} (one per sample)"
                )
            checked[name] = arr
        group = GroupResult(true_um=true, pred_um=pred, extras=checked)
        self._data.setdefault(method, {})[(kind, sparsity)] = group
        return group

    @property
    def methods(self) -> tuple[str, ...]:
        """Method names, in the order they were first added."""
        return tuple(self._data)

    @property
    def groups(self) -> tuple[tuple[str, str], ...]:
        """(kind, sparsity) pairs holding data for any method, in paper order."""
        present = {g for per in self._data.values() for g in per}
        return tuple((k, s) for k in KINDS for s in SPARSITIES if (k, s) in present)

    @property
    def kinds(self) -> tuple[str, ...]:
        """Kinds holding data for any method, in paper order."""
        present = {k for k, _ in self.groups}
        return tuple(k for k in KINDS if k in present)

    def sparsities(self, kind: str) -> tuple[str, ...]:
        """Sparsity levels of `kind` holding data for any method, in paper order.

        Parameters
        ----------
        kind : {"cell", "tissue"}
            Sample kind.

        Returns
        -------
        tuple of str
            The present sparsity labels.

        Raises
        ------
        ValueError
            For an unknown kind.
        """
        _check_label(kind, KINDS, "kind")
        return tuple(s for k, s in self.groups if k == kind)

    @property
    def extra_names(self) -> tuple[str, ...]:
        """Names of the per-sample extras, in first-seen order."""
        names: dict[str, None] = {}
        for per in self._data.values():
            for group in per.values():
                names.update(dict.fromkeys(group.extras))
        return tuple(names)

    def get(self, method: str, kind: str, sparsity: str) -> GroupResult | None:
        """Return the group of `method`, or None when it was not added.

        Parameters
        ----------
        method : str
            Method name.
        kind : {"cell", "tissue"}
            Sample kind.
        sparsity : {"dense", "sparse", "extremely_sparse"}
            Content sparsity.

        Returns
        -------
        GroupResult or None
            The stored group, if any.

        Raises
        ------
        ValueError
            For an unknown kind or sparsity.
        """
        _check_label(kind, KINDS, "kind")
        _check_label(sparsity, SPARSITIES, "sparsity")
        return self._data.get(method, {}).get((kind, sparsity))

    def __len__(self) -> int:
        return sum(len(per) for per in self._data.values())

    def __iter__(self) -> Iterator[tuple[str, str, str, GroupResult]]:
        """Iterate ``(method, kind, sparsity, group)`` in method then paper order."""
        for method, per in self._data.items():
            for kind, sparsity in self.groups:
                group = per.get((kind, sparsity))
                if group is not None:
                    yield method, kind, sparsity, group


# --------------------------------------------------------------------------- numbers


def _nan_to_none(values: NDArray[np.float64]) -> list[float | None]:
    return [None if not math.isfinite(v) else float(v) for v in values.tolist()]


def _check_bins(bins_um: ArrayLike | None) -> tuple[NDArray[np.float64], bool]:
    edges = np.asarray(DEFAULT_BINS_UM if bins_um is None else bins_um, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2:
        raise ValueError(f"bins_um must be 1-D with at least 2 edges, got shape {edges.shape}")
    if not np.all(np.isfinite(edges)) or not np.all(np.diff(edges) > 0):
        raise ValueError("bins_um must be finite and strictly increasing")
    return edges, bool(np.all(edges >= 0))


def _extra_stats(values: NDArray[np.float64]) -> dict[str, float | int | None]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"mean": None, "median": None, "n": 0}
    return {"mean": float(np.mean(finite)), "median": float(np.median(finite)), "n": finite.size}


def _group_record(
    group: GroupResult, dof_um: float, edges: NDArray[np.float64], absolute: bool
) -> tuple[dict[str, Any], IntervalMAE | None]:
    true, pred = group.answered()
    metrics: dict[str, float] | None = None
    interval: IntervalMAE | None = None
    interval_rec: dict[str, Any] | None = None
    if true.size > 0:
        metrics = summarize(pred, true, dof_um)
        interval = per_interval_mae(pred, true, edges, absolute=absolute)
        interval_rec = {
            "edges_um": edges.tolist(),
            "mae_um": _nan_to_none(interval.mae_um),
            "counts": [int(c) for c in interval.counts],
            "n_outside": int(true.size - int(np.sum(interval.counts))),
        }
    record: dict[str, Any] = {
        "n_total": group.n_total,
        "n_answered": int(true.size),
        "n_abstained": group.n_abstained,
        "abstain_rate_pct": group.abstain_rate_pct,
        "metrics": metrics,
        "interval_mae": interval_rec,
        "extras": {name: _extra_stats(vals) for name, vals in group.extras.items()},
    }
    return record, interval


def _overall_record(results: EvaluationResults, method: str) -> dict[str, Any]:
    groups = [g for m, _, _, g in results if m == method]
    n_total = sum(g.n_total for g in groups)
    n_abst = sum(g.n_abstained for g in groups)
    extras: dict[str, Any] = {}
    for name in results.extra_names:
        parts = [g.extras[name] for g in groups if name in g.extras]
        if parts:
            extras[name] = _extra_stats(np.concatenate(parts))
    return {
        "n_total": n_total,
        "n_abstained": n_abst,
        "abstain_rate_pct": 100.0 * n_abst / n_total if n_total else None,
        "extras": extras,
    }


# --------------------------------------------------------------------------- markdown


def _esc(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(_esc(h) for h in header) + " |"]
    out.append("| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |")
    out.extend("| " + " | ".join(_esc(c) for c in row) + " |" for row in rows)
    return out


def _group_header(kind: str, sparsity: str) -> str:
    return f"{_KIND_LABEL[kind]} {_SPARSITY_LABEL[sparsity]}"


def _metric(rec: dict[str, Any] | None, key: str) -> float | None:
    if rec is None or rec["metrics"] is None:
        return None
    value = rec["metrics"][key]
    return None if value is None else float(value)


def _fmt(value: float | None, digits: int = 2) -> str:
    return _DASH if value is None else f"{value:.{digits}f}"


def _markdown(
    data: dict[str, Any],
    results: EvaluationResults,
    figures: dict[str, dict[str, str]],
) -> str:
    res: dict[str, dict[str, dict[str, dict[str, Any]]]] = data["results"]
    methods: list[str] = data["methods"]
    groups = results.groups

    def rec(method: str, kind: str, sparsity: str) -> dict[str, Any] | None:
        return res[method].get(kind, {}).get(sparsity)

    dof = float(data["dof_um"])
    edges = data["bins_um"]
    lines: list[str] = [f"# {data['title']}", ""]
    if data["notes"]:
        lines += [str(data["notes"]).rstrip(), ""]
    lines += [
        f"Depth of field (DoF): {dof:g} µm. "
        f"Generated by napari-sparsefocus {data['generator']['version']}. "
        "All numbers are also in [report.json](report.json).",
        "",
        "Metrics follow Section 2.2 of the SparseFocus paper: MAE = mean |pred − true| "
        "(± population std of |pred − true|); DoF-Accuracy at n = % of samples with "
        "|pred − true| < DoF / n; DSS = % of samples with the right defocus sign "
        "(an in-focus ground truth counts as right). Abstentions (no prediction) are "
        "excluded from every metric and reported separately below.",
        "",
    ]
    if data["metadata"]:
        lines += ["## Metadata", ""]
        for key, value in data["metadata"].items():
            lines.append(f"- **{key}**: `{json.dumps(value, ensure_ascii=False)}`")
        lines.append("")

    group_headers = [_group_header(k, s) for k, s in groups]

    # Table 1: MAE ± std.
    rows = []
    for m in methods:
        row = [m]
        for k, s in groups:
            r = rec(m, k, s)
            mean, std = _metric(r, "mae_um"), _metric(r, "mae_std_um")
            row.append(_DASH if mean is None or std is None else f"{mean:.2f} ± {std:.2f}")
        rows.append(row)
    lines += ["## Table 1 – MAE (µm, lower is better)", ""]
    lines += [*_table(["Method", *group_headers], rows), ""]

    # Table 2: DoF-Accuracy, one sub-table per kind.
    lines += [
        "## Table 2 – DoF-Accuracy (%, higher is better)",
        "",
        "n = 1, 2, 3: percentage of samples with |pred − true| < DoF / n.",
        "",
    ]
    for kind in results.kinds:
        sps = results.sparsities(kind)
        header = ["Method"] + [
            f"{_SPARSITY_LABEL[s].capitalize()} n={n}" for s in sps for n in (1, 2, 3)
        ]
        rows = []
        for m in methods:
            row = [m]
            for s in sps:
                r = rec(m, kind, s)
                row += [_fmt(_metric(r, f"dof_acc_{n}")) for n in (1, 2, 3)]
            rows.append(row)
        lines += [f"### {_KIND_LABEL[kind]}", "", *_table(header, rows), ""]

    # Table 3: DSS.
    rows = [[m] + [_fmt(_metric(rec(m, k, s), "dss")) for k, s in groups] for m in methods]
    lines += ["## Table 3 – Direction Success Score (%, higher is better)", ""]
    lines += [*_table(["Method", *group_headers], rows), ""]

    # Abstentions.
    rows = []
    for m in methods:
        row = [m]
        for k, s in groups:
            r = rec(m, k, s)
            row.append(
                _DASH
                if r is None
                else f"{r['abstain_rate_pct']:.2f} ({r['n_abstained']}/{r['n_total']})"
            )
        o = data["overall"][m]
        row.append(f"{o['abstain_rate_pct']:.2f} ({o['n_abstained']}/{o['n_total']})")
        rows.append(row)
    lines += [
        "## Abstain rate (%)",
        "",
        "Percentage of samples for which the method gave no prediction (NaN), with "
        "(abstained/total). These samples are excluded from Tables 1–3 and the figures.",
        "",
    ]
    lines += [*_table(["Method", *group_headers, "All"], rows), ""]

    # Extras.
    for name in results.extra_names:
        rows = []
        for m in methods:
            row = [m]
            for k, s in groups:
                r = rec(m, k, s)
                stats = None if r is None else r["extras"].get(name)
                row.append(_fmt(None if stats is None else stats["mean"]))
            overall = data["overall"][m]["extras"].get(name)
            row.append(_fmt(None if overall is None else overall["mean"]))
            rows.append(row)
        lines += [f"## Mean {name}", "", f"Mean of `{name}` per sample (abstentions included).", ""]
        lines += [*_table(["Method", *group_headers, "All"], rows), ""]

    # Figures.
    lo, hi = edges[0], edges[-1]
    on = "|defocus|" if data["bins_absolute"] else "signed defocus"
    lines += ["## Figures", ""]
    for kind, path in figures["fig2_regression"].items():
        lines += [
            f"Fig. 2 ({_KIND_LABEL[kind]}): predicted vs ground-truth defocus; solid line = "
            f"zero error, dashed lines = ±DoF/2, shaded quadrants = wrong direction.",
            "",
            f"![Fig. 2 regression, {kind}]({path})",
            "",
        ]
    for kind, path in figures["fig3_interval_mae"].items():
        lines += [
            f"Fig. 3 ({_KIND_LABEL[kind]}): MAE per {on} interval from {lo:g} to {hi:g} µm.",
            "",
            f"![Fig. 3 interval MAE, {kind}]({path})",
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- figures


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=_DPI)


def _fig2(
    results: EvaluationResults,
    kind: str,
    data: dict[str, Any],
    dof_um: float,
    colors: dict[str, str],
    path: Path,
) -> None:
    methods = results.methods
    sps = results.sparsities(kind)
    extent = dof_um
    for _m, k, _s, g in results:
        if k == kind:
            true, pred = g.answered()
            extent = max(extent, float(np.max(np.abs(g.true_um))))
            if pred.size:
                extent = max(extent, float(np.max(np.abs(pred))))
    lim = 1.05 * extent
    fig = Figure(
        figsize=(_PANEL_IN * len(sps) + 0.4, _PANEL_IN * len(methods) + 0.4),
        layout="constrained",
    )
    axes = fig.subplots(len(methods), len(sps), squeeze=False)
    first = True
    for i, m in enumerate(methods):
        for j, s in enumerate(sps):
            ax = axes[i, j]
            group = results.get(m, kind, s)
            name = f"{m} · {_SPARSITY_LABEL[s]}"
            if group is None:
                ax.set_axis_off()
                ax.set_title(name, fontsize="small")
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
                continue
            r = data["results"][m][kind][s]
            true, pred = group.answered()
            if r["metrics"] is not None:
                name += f"\nMAE {r['metrics']['mae_um']:.2f} µm · DSS {r['metrics']['dss']:.1f} %"
            if group.n_abstained:
                name += f" · abstain {group.abstain_rate_pct:.1f} %"
            plot_regression(
                ax,
                true,
                pred,
                dof_um=dof_um,
                title=name,
                color=colors[m],
                limit_um=lim,
                legend=first,
            )
            ax.title.set_fontsize("small")
            first = False
    fig.suptitle(f"Regression plots – {_KIND_LABEL[kind]}")
    _save(fig, path)


def _fig3(
    results: EvaluationResults,
    kind: str,
    intervals: dict[tuple[str, str, str], IntervalMAE],
    colors: dict[str, str],
    path: Path,
) -> None:
    sps = results.sparsities(kind)
    fig = Figure(figsize=(4.5 * len(sps) + 0.4, 3.6), layout="constrained")
    axes = fig.subplots(1, len(sps), squeeze=False, sharey=True)
    for j, s in enumerate(sps):
        ax = axes[0, j]
        per = {m: intervals[(m, kind, s)] for m in results.methods if (m, kind, s) in intervals}
        title = f"{_KIND_LABEL[kind]} · {_SPARSITY_LABEL[s]}"
        if not per:
            ax.set_axis_off()
            ax.set_title(title)
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            continue
        plot_interval_mae(ax, per, title=title, colors=colors, legend=(j == 0))
    fig.suptitle(f"MAE per defocus interval – {_KIND_LABEL[kind]}")
    _save(fig, path)


# --------------------------------------------------------------------------- API


def _check_dof(dof_um: Any) -> float:
    if isinstance(dof_um, bool) or not isinstance(dof_um, (int, float, np.integer, np.floating)):
        raise ValueError(f"dof_um must be a number, got {type(dof_um).__name__}")
    dof = float(dof_um)
    if not math.isfinite(dof) or dof <= 0:
        raise ValueError(f"dof_um must be finite and > 0, got {dof_um!r}")
    return dof


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def _normalise_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if any(not isinstance(k, str) for k in metadata):
        raise ValueError("metadata keys must be strings")
    try:
        text = json.dumps(dict(metadata), default=_json_default, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata is not JSON-serialisable: {exc}") from exc
    out: dict[str, Any] = json.loads(text)
    return out


def write_report(
    results: EvaluationResults,
    out_dir: str | Path,
    *,
    dof_um: float,
    title: str,
    notes: str = "",
    bins_um: ArrayLike | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write the evaluation report (Markdown, JSON and figures) into `out_dir`.

    Parameters
    ----------
    results : EvaluationResults
        Predictions of every method on every (kind, sparsity) group.
    out_dir : str or pathlib.Path
        Output folder, created if needed; existing report files are replaced.
    dof_um : float
        Depth of field of the objective in µm (finite, > 0).
    title : str
        Report title (Markdown heading and JSON ``"title"``).
    notes : str, default ""
        Free text (Markdown) placed under the title.
    bins_um : array_like, optional
        Fig. 3 bin edges in µm, 1-D, strictly increasing. Default
        :data:`DEFAULT_BINS_UM` (0–5, 5–10, …, 20–25 µm). When every edge is
        ≥ 0 the bins apply to ``|defocus|``, as in the paper; edges with a
        negative value bin the signed defocus instead.
    metadata : mapping of str to Any, optional
        JSON-serialisable information about the run (optics, checkpoint,
        dataset...), stored as ``"metadata"`` in ``report.json`` and listed
        in ``report.md``. numpy scalars and arrays and paths are converted.

    Returns
    -------
    pathlib.Path
        Path of the written ``report.md``.

    Raises
    ------
    ValueError
        For empty `results`, an invalid `dof_um` or `bins_um`, a non-string
        title or notes, or metadata that cannot be stored as JSON.

    Notes
    -----
    Files written:

    - ``report.md``: Table 1 (MAE ± std in µm), Table 2 (DoF-Accuracy at
      n = 1, 2, 3, one sub-table per kind), Table 3 (DSS) with rows = methods
      and columns = kind × sparsity as in the paper; the abstain-rate table;
      one table per extra (its mean); the notes; links to the figures.
    - ``report.json``: every number (see :func:`load_report`); NaN is stored
      as ``null``.
    - ``fig2_regression_<kind>.png``: rows = methods, columns = sparsity.
    - ``fig3_interval_mae_<kind>.png``: one panel per sparsity, one bar per
      method and bin.

    Abstained samples (NaN predictions) are excluded from every metric and
    figure and counted in the abstain rate. Ground truths outside the bins
    are left out of Fig. 3 only (counted as ``"n_outside"`` in the JSON).
    Only kinds and sparsities with data appear.

    References
    ----------
    .. [1] Y. Zhai et al., "SparseFocus: Learning-based one-shot autofocus
       for microscopy with sparse content", arXiv:2502.06452 (2025).
    """
    if not isinstance(results, EvaluationResults):
        raise ValueError(f"results must be EvaluationResults, got {type(results).__name__}")
    if len(results) == 0:
        raise ValueError("results is empty: add at least one method and group")
    dof = _check_dof(dof_um)
    if not isinstance(title, str):
        raise ValueError(f"title must be a string, got {type(title).__name__}")
    if not isinstance(notes, str):
        raise ValueError(f"notes must be a string, got {type(notes).__name__}")
    edges, absolute = _check_bins(bins_um)
    meta = _normalise_metadata(metadata)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    from . import __version__

    per_method: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in results.methods}
    intervals: dict[tuple[str, str, str], IntervalMAE] = {}
    for method, kind, sparsity, group in results:
        record, interval = _group_record(group, dof, edges, absolute)
        per_method[method].setdefault(kind, {})[sparsity] = record
        if interval is not None:
            intervals[(method, kind, sparsity)] = interval

    figures: dict[str, dict[str, str]] = {
        "fig2_regression": {k: f"fig2_regression_{k}.png" for k in results.kinds},
        "fig3_interval_mae": {k: f"fig3_interval_mae_{k}.png" for k in results.kinds},
    }
    data: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "format_version": _FORMAT_VERSION,
        "generator": {"package": "napari-sparsefocus", "version": str(__version__)},
        "title": title,
        "notes": notes,
        "dof_um": dof,
        "bins_um": edges.tolist(),
        "bins_absolute": absolute,
        "methods": list(results.methods),
        "kinds": list(results.kinds),
        "sparsities": {k: list(results.sparsities(k)) for k in results.kinds},
        "extras": list(results.extra_names),
        "metadata": meta,
        "results": per_method,
        "overall": {m: _overall_record(results, m) for m in results.methods},
        "figures": figures,
    }

    colors = {m: f"C{i % 10}" for i, m in enumerate(results.methods)}
    for kind in results.kinds:
        _fig2(results, kind, data, dof, colors, out / figures["fig2_regression"][kind])
        _fig3(results, kind, intervals, colors, out / figures["fig3_interval_mae"][kind])

    (out / "report.json").write_text(
        json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8"
    )
    md_path = out / "report.md"
    md_path.write_text(_markdown(data, results, figures), encoding="utf-8")
    return md_path


def load_report(out_dir: str | Path) -> dict[str, Any]:
    """Read back the ``report.json`` written by :func:`write_report`.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        The report folder, or the path of ``report.json`` itself.

    Returns
    -------
    dict
        The JSON content. Per-group numbers are under
        ``["results"][method][kind][sparsity]`` with keys ``n_total``,
        ``n_answered``, ``n_abstained``, ``abstain_rate_pct``, ``metrics``
        (the :func:`~napari_sparsefocus.evaluation.summarize` dict, or None
        when every sample abstained), ``interval_mae`` and ``extras``;
        per-method totals under ``["overall"][method]``; the caller's
        metadata under ``["metadata"]``.

    Raises
    ------
    FileNotFoundError
        If there is no ``report.json``.
    ValueError
        If the file is not a report written by :func:`write_report`.
    """
    path = Path(out_dir)
    if path.is_dir():
        path = path / "report.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
        raise ValueError(f"{path} is not a napari-sparsefocus evaluation report")
    return data
