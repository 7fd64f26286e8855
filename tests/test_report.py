from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from matplotlib.image import imread

from napari_sparsefocus._report import (
    DEFAULT_BINS_UM,
    KINDS,
    SPARSITIES,
    EvaluationResults,
    load_report,
    write_report,
)
from napari_sparsefocus.evaluation import per_interval_mae, summarize

if TYPE_CHECKING:
    from pathlib import Path

DOF_UM = 1.0
TRUE = np.linspace(-24.0, 24.0, 97)  # step 0.5, contains exactly one 0
CELL_SPARSITIES = ("dense", "sparse", "extremely_sparse")
C_ABSTAIN = np.zeros(TRUE.size, dtype=bool)
C_ABSTAIN[::4] = True  # 25 of 97


def _pred_c() -> np.ndarray:
    pred = TRUE + 0.2
    pred[C_ABSTAIN] = np.nan
    return pred


def _build() -> EvaluationResults:
    """Three methods whose metrics are known by construction.

    A = truth + 0.1 (MAE 0.1, DoF-Acc 100, DSS 100); B = -truth (DSS = only the
    single in-focus sample); C = truth + 0.2 with every 4th sample abstained,
    and no result on cell/sparse. Tissue has only the dense group.
    """
    res = EvaluationResults()
    groups = [("cell", s) for s in CELL_SPARSITIES] + [("tissue", "dense")]
    for kind, sp in groups:
        res.add("A", kind, sp, true_um=TRUE, pred_um=TRUE + 0.1, snaps=np.full(TRUE.size, 1.0))
        res.add("B", kind, sp, true_um=TRUE, pred_um=-TRUE, snaps=np.full(TRUE.size, 3.0))
        if (kind, sp) != ("cell", "sparse"):
            res.add("C", kind, sp, true_um=TRUE, pred_um=_pred_c())
    return res


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    md = write_report(
        _build(),
        out,
        dof_um=DOF_UM,
        title="Synthetic check",
        notes="These are *the notes*.",
        metadata={"seed": np.int64(7), "optics": {"na": 0.75}, "z_um": np.arange(3.0)},
    )
    assert md == out / "report.md"
    return out


def _table(md: str, heading: str) -> tuple[list[str], dict[str, list[str]]]:
    """Header and rows (method -> cells) of the first table after `heading`."""
    lines = md.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("#") and heading in ln)
    rows = []
    for ln in lines[start + 1 :]:
        if ln.startswith("#"):
            break
        if ln.startswith("|"):
            rows.append([c.strip() for c in ln.strip().strip("|").split("|")])
        elif rows:
            break
    header, sep, *body = rows
    assert set("".join(sep)) <= set("-:")
    return header, {r[0]: r[1:] for r in body}


def _md(report: Path) -> str:
    return (report / "report.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- markdown


def test_table1_mae(report: Path) -> None:
    header, rows = _table(_md(report), "Table 1")
    assert header == [
        "Method",
        "Cell dense",
        "Cell sparse",
        "Cell extremely sparse",
        "Tissue dense",
    ]
    assert list(rows) == ["A", "B", "C"]
    assert rows["A"] == ["0.10 ± 0.00"] * 4
    m, s = np.mean(2 * np.abs(TRUE)), np.std(2 * np.abs(TRUE))
    assert rows["B"] == [f"{m:.2f} ± {s:.2f}"] * 4
    assert rows["C"] == ["0.20 ± 0.00", "—", "0.20 ± 0.00", "0.20 ± 0.00"]


def test_table2_dof_accuracy(report: Path) -> None:
    md = _md(report)
    header, rows = _table(md, "### Cell")
    assert header[:4] == ["Method", "Dense n=1", "Dense n=2", "Dense n=3"]
    assert header[-1] == "Extremely sparse n=3"
    assert len(header) == 1 + 3 * 3
    assert rows["A"] == ["100.00"] * 9
    b = summarize(-TRUE, TRUE, DOF_UM)
    expected_b = [f"{b[f'dof_acc_{n}']:.2f}" for n in (1, 2, 3)]
    assert expected_b == ["1.03", "1.03", "1.03"]  # only the in-focus sample
    assert rows["B"] == expected_b * 3
    # C: |error| = 0.2 < DoF/3 on every answered sample
    assert rows["C"] == ["100.00"] * 3 + ["—"] * 3 + ["100.00"] * 3

    header_t, rows_t = _table(md, "### Tissue")
    assert header_t == ["Method", "Dense n=1", "Dense n=2", "Dense n=3"]
    assert rows_t["A"] == ["100.00"] * 3


def test_table3_dss(report: Path) -> None:
    _, rows = _table(_md(report), "Table 3")
    assert rows["A"] == ["100.00"] * 4
    assert rows["B"] == [f"{100 / 97:.2f}"] * 4
    assert rows["C"] == ["100.00", "—", "100.00", "100.00"]


def test_abstain_table(report: Path) -> None:
    header, rows = _table(_md(report), "Abstain rate")
    assert header[-1] == "All"
    assert rows["A"] == ["0.00 (0/97)"] * 4 + ["0.00 (0/388)"]
    rate = 100 * 25 / 97
    c = f"{rate:.2f} (25/97)"
    assert rows["C"] == [c, "—", c, c, f"{rate:.2f} (75/291)"]


def test_extras_notes_and_figure_links(report: Path) -> None:
    md = _md(report)
    _, rows = _table(md, "Mean snaps")
    assert rows["A"] == ["1.00"] * 5
    assert rows["B"] == ["3.00"] * 5
    assert rows["C"] == ["—"] * 5
    assert md.startswith("# Synthetic check\n")
    assert "These are *the notes*." in md
    for name in (
        "fig2_regression_cell.png",
        "fig2_regression_tissue.png",
        "fig3_interval_mae_cell.png",
        "fig3_interval_mae_tissue.png",
    ):
        assert f"]({name})" in md
    assert "**seed**" in md


# --------------------------------------------------------------------------- json


def test_json_matches_summarize(report: Path) -> None:
    data = load_report(report)
    assert data["methods"] == ["A", "B", "C"]
    assert data["kinds"] == ["cell", "tissue"]
    assert data["sparsities"] == {"cell": list(CELL_SPARSITIES), "tissue": ["dense"]}
    assert data["dof_um"] == DOF_UM
    assert data["bins_um"] == list(DEFAULT_BINS_UM)
    assert data["bins_absolute"] is True
    res = data["results"]
    keep = ~C_ABSTAIN
    for sp in CELL_SPARSITIES:
        assert res["A"]["cell"][sp]["metrics"] == summarize(TRUE + 0.1, TRUE, DOF_UM)
        assert res["B"]["cell"][sp]["metrics"] == summarize(-TRUE, TRUE, DOF_UM)
    c = res["C"]["tissue"]["dense"]
    assert c["metrics"] == summarize(_pred_c()[keep], TRUE[keep], DOF_UM)
    assert c["n_total"] == 97
    assert c["n_abstained"] == 25
    assert c["n_answered"] == 72
    assert c["abstain_rate_pct"] == pytest.approx(100 * 25 / 97)
    assert "sparse" not in res["C"]["cell"]
    assert "tissue" in res["A"] and set(res["A"]["tissue"]) == {"dense"}
    assert data["overall"]["C"]["n_abstained"] == 75
    assert data["overall"]["A"]["extras"]["snaps"]["mean"] == 1.0


def test_json_interval_mae(report: Path) -> None:
    data = load_report(report / "report.json")
    rec = data["results"]["B"]["cell"]["dense"]["interval_mae"]
    ref = per_interval_mae(-TRUE, TRUE, DEFAULT_BINS_UM, absolute=True)
    assert rec["edges_um"] == list(DEFAULT_BINS_UM)
    assert rec["counts"] == ref.counts.tolist()
    np.testing.assert_allclose(rec["mae_um"], ref.mae_um)
    assert rec["n_outside"] == 0
    assert sum(rec["counts"]) == TRUE.size


def test_json_metadata_and_strict_json(report: Path) -> None:
    text = (report / "report.json").read_text(encoding="utf-8")
    assert "NaN" not in text  # strict JSON
    data = json.loads(text)
    assert data["metadata"] == {"seed": 7, "optics": {"na": 0.75}, "z_um": [0.0, 1.0, 2.0]}
    assert data["title"] == "Synthetic check"
    assert data["notes"] == "These are *the notes*."
    assert data["figures"]["fig2_regression"] == {
        "cell": "fig2_regression_cell.png",
        "tissue": "fig2_regression_tissue.png",
    }


# --------------------------------------------------------------------------- figures


@pytest.mark.parametrize(
    "name",
    [
        "fig2_regression_cell.png",
        "fig2_regression_tissue.png",
        "fig3_interval_mae_cell.png",
        "fig3_interval_mae_tissue.png",
    ],
)
def test_figures_are_nontrivial_images(report: Path, name: str) -> None:
    img = imread(report / name)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
    rgb = np.round(img[..., :3].reshape(-1, 3) * 255).astype(np.int64)
    assert np.ptp(rgb, axis=0).max() > 128  # not a single colour
    packed = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    assert np.unique(packed).size > 20


def test_fig2_grid_shape_follows_methods_and_sparsities(report: Path) -> None:
    cell = imread(report / "fig2_regression_cell.png")
    tissue = imread(report / "fig2_regression_tissue.png")
    # cell: 3 methods x 3 sparsities; tissue: 3 methods x 1 sparsity
    assert cell.shape[0] == pytest.approx(tissue.shape[0], rel=0.01)
    assert cell.shape[1] > 2 * tissue.shape[1]


# --------------------------------------------------------------------------- edge cases


def test_all_abstained_group_and_signed_bins(tmp_path: Path) -> None:
    res = EvaluationResults()
    res.add("X", "tissue", "sparse", true_um=[-3.0, 1.0, 4.0], pred_um=[np.nan] * 3)
    res.add("Y", "tissue", "sparse", true_um=[-3.0, 1.0, 4.0], pred_um=[-3.0, 1.0, 4.0])
    write_report(res, tmp_path, dof_um=2, title="t", bins_um=[-5.0, 0.0, 5.0])
    data = load_report(tmp_path)
    x = data["results"]["X"]["tissue"]["sparse"]
    assert x["metrics"] is None and x["interval_mae"] is None
    assert x["abstain_rate_pct"] == 100.0
    assert data["bins_absolute"] is False
    assert data["results"]["Y"]["tissue"]["sparse"]["interval_mae"]["counts"] == [1, 2]
    _, rows = _table((tmp_path / "report.md").read_text(encoding="utf-8"), "Table 1")
    assert rows == {"X": ["—"], "Y": ["0.00 ± 0.00"]}
    assert (tmp_path / "fig2_regression_tissue.png").is_file()
    assert not (tmp_path / "fig2_regression_cell.png").exists()


def test_results_container() -> None:
    res = _build()
    assert res.methods == ("A", "B", "C")
    assert res.groups == (
        ("cell", "dense"),
        ("cell", "sparse"),
        ("cell", "extremely_sparse"),
        ("tissue", "dense"),
    )
    assert res.sparsities("tissue") == ("dense",)
    assert res.extra_names == ("snaps",)
    assert len(res) == 11
    assert res.get("C", "cell", "sparse") is None
    g = res.get("C", "cell", "dense")
    assert g is not None
    assert (g.n_total, g.n_abstained) == (97, 25)
    t, p = g.answered()
    assert t.size == 72 and not np.any(np.isnan(p))
    with pytest.raises(ValueError, match="read-only"):
        g.true_um[0] = 1.0
    assert KINDS == ("cell", "tissue")
    assert SPARSITIES == ("dense", "sparse", "extremely_sparse")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "bone"}, "unknown kind"),
        ({"sparsity": "extremely sparse"}, "unknown sparsity"),
        ({"method": ""}, "method"),
        ({"pred_um": [1.0]}, "same length"),
        ({"true_um": [], "pred_um": []}, "empty"),
        ({"true_um": [np.nan, 1.0]}, "true_um"),
        ({"pred_um": [np.inf, 1.0]}, "infinite"),
        ({"snaps": [1.0]}, "snaps"),
    ],
)
def test_add_rejects_bad_input(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {
        "method": "A",
        "kind": "cell",
        "sparsity": "dense",
        "true_um": [0.0, 1.0],
        "pred_um": [0.0, 1.0],
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        EvaluationResults().add(args.pop("method"), args.pop("kind"), args.pop("sparsity"), **args)


def test_add_rejects_duplicate_group() -> None:
    res = EvaluationResults()
    res.add("A", "cell", "dense", true_um=[1.0], pred_um=[1.0])
    with pytest.raises(ValueError, match="already"):
        res.add("A", "cell", "dense", true_um=[1.0], pred_um=[1.0])


def test_write_report_rejects_bad_input(tmp_path: Path) -> None:
    res = EvaluationResults()
    res.add("A", "cell", "dense", true_um=[1.0], pred_um=[1.0])
    with pytest.raises(ValueError, match="empty"):
        write_report(EvaluationResults(), tmp_path, dof_um=1.0, title="t")
    with pytest.raises(ValueError, match="dof_um"):
        write_report(res, tmp_path, dof_um=0.0, title="t")
    with pytest.raises(ValueError, match="bins_um"):
        write_report(res, tmp_path, dof_um=1.0, title="t", bins_um=[5.0, 0.0])
    with pytest.raises(ValueError, match="metadata"):
        write_report(res, tmp_path, dof_um=1.0, title="t", metadata={"f": object()})
    assert not (tmp_path / "report.json").exists()


def test_load_report_rejects_foreign_json(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text('{"a": 1}', encoding="utf-8")
    with pytest.raises(ValueError, match="not a napari-sparsefocus"):
        load_report(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_report(tmp_path / "missing")
