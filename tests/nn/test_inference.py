"""SparseFocus inference pipeline: crop rules, top-k, abstention, pixel size, model files."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from napari_sparsefocus import Optics
from napari_sparsefocus.core.nn import (
    DefocusPredictionNetwork,
    DPNConfig,
    ModelFileError,
    RegionImportanceNetwork,
    SparseFocusModel,
    iter_predict_stack,
    load_model,
)

TINY_DPN = DPNConfig(dims=(8, 16, 16, 32), depths=(1, 1, 1, 1))


def _model(
    importance_logit: float, defocus_um: float, *, per_row: bool = False
) -> SparseFocusModel:
    """A pipeline whose answers are fixed by construction.

    The RIN's last 1×1 conv gets zero weights and a bias, so every patch has
    importance sigmoid(importance_logit); the DPN's regression layer gets zero
    weights and a bias, so every patch predicts ``defocus_um``.
    """
    torch.manual_seed(0)
    rin = RegionImportanceNetwork()
    dpn = DefocusPredictionNetwork(TINY_DPN)
    with torch.no_grad():
        rin.head[-1].weight.zero_()
        rin.head[-1].bias.fill_(importance_logit)
        dpn.fc.weight.zero_()
        dpn.fc.bias.fill_(defocus_um)
    cfg = {
        "optics": Optics().to_dict(),
        "defocus_range_um": [-25, 25],
        "patch_px": 224,
        "rin_input_px": 512,
        "training": {"data": "none: fixed weights for tests"},
    }
    return SparseFocusModel(rin, dpn, cfg)


def _camera_frame(h: int = 2048, w: int = 2448, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_full_frame_dense_answer_and_evidence():
    m = _model(10.0, 3.0)
    p = m.predict(_camera_frame())
    assert p.importance.shape == (9, 9)
    assert p.sparsity == "dense"
    assert p.k == 31  # the paper's k_d
    assert p.defocus_um == pytest.approx(3.0, abs=1e-5)
    assert p.spread_um == pytest.approx(0.0, abs=1e-5)
    assert p.direction_agreement == 1.0
    assert p.verdict == "ok"
    # the central 2016 x 2016 of the 2448 x 2048 sensor, as in the paper
    assert p.crop_box_px == (16.0, 216.0, 2032.0, 2232.0)
    for patch in p.patches:
        y0, x0, y1, x1 = patch.box_px
        assert y1 - y0 == 224 and x1 - x0 == 224
        assert 16 <= y0 and y1 <= 2032 and 216 <= x0 and x1 <= 2232
        assert patch.defocus_um == pytest.approx(3.0, abs=1e-5)
    rec = p.to_dict()
    assert rec["k"] == 31 and len(rec["patches"]) == 31


def test_no_content_abstains_without_a_number():
    p = _model(-10.0, 3.0).predict(_camera_frame())
    assert p.defocus_um is None
    assert p.verdict == "no usable content"
    assert p.patches == ()
    assert p.sparsity == "empty"


def test_smaller_images_use_a_smaller_centred_grid_and_fixed_k():
    m = _model(10.0, -1.5)
    p = m.predict(_camera_frame(1200, 1130))
    assert p.importance.shape == (5, 5)
    assert p.k == 10  # 31 scaled by 25/81, rounded
    assert p.defocus_um == pytest.approx(-1.5, abs=1e-5)
    assert m.predict(_camera_frame(1200, 1130), k_mode="fixed", k=2).k == 2


def test_one_patch_sides_still_get_an_answer_at_the_bundled_rin_scale():
    # the bundled RIN reads a 256 px input for 9 patches: one patch is 28 px there,
    # below the RIN's 32 px minimum, so the input is enlarged rather than refused
    m = _model(10.0, 2.0)
    m.rin_input_px = 256
    for h, w, grid in ((224, 224, (1, 1)), (300, 800, (1, 3)), (460, 230, (2, 1))):
        p = m.predict(_camera_frame(h, w))
        assert p.importance.shape == grid
        assert p.defocus_um == pytest.approx(2.0, abs=1e-5)


def test_pixel_size_rules():
    m = _model(10.0, 1.0)
    px = m.optics.pixel_size_um
    # a twice finer image is area-averaged down to the model's pixel size
    p = m.predict(_camera_frame(4032, 4032), pixel_size_um=px / 2)
    assert p.importance.shape == (9, 9)
    assert p.crop_box_px == pytest.approx((0.0, 0.0, 4032.0, 4032.0))
    assert p.patches[0].box_px[2] - p.patches[0].box_px[0] == pytest.approx(448.0)
    with pytest.raises(ValueError, match="coarser"):
        m.predict(_camera_frame(), pixel_size_um=2 * px)
    with pytest.raises(ValueError, match="4x finer"):
        m.predict(_camera_frame(), pixel_size_um=px / 5)
    # within 2 %: used as is
    assert m.predict(_camera_frame(), pixel_size_um=px * 1.01).importance.shape == (9, 9)


@pytest.mark.parametrize(
    ("image", "exc", "match"),
    [
        (np.zeros((100, 100, 3), np.uint8), ValueError, "smaller than one"),
        (np.full((300, 300, 3), np.nan, np.float32), ValueError, "NaN"),
        (np.full((300, 300, 3), 7.0, np.float32), ValueError, r"\[0, 1\]"),
        (np.zeros((300, 300, 2), np.uint8), ValueError, "RGB"),
        (np.zeros((2, 300, 300, 3), np.uint8), ValueError, "RGB"),
        (np.zeros((300, 300), bool), TypeError, "dtype"),
    ],
)
def test_bad_images_raise_clear_errors(image, exc, match):
    with pytest.raises(exc, match=match):
        _model(10.0, 0.0).predict(image)


def test_gray_and_uint16_inputs_are_accepted():
    m = _model(10.0, 2.0)
    g = np.random.default_rng(1).integers(0, 65535, size=(700, 700), dtype=np.uint16)
    p = m.predict(g)
    assert p.importance.shape == (3, 3) and p.defocus_um == pytest.approx(2.0, abs=1e-5)


def test_stack_prediction_streams_plane_by_plane():
    m = _model(10.0, 0.5)
    stack = np.stack([_camera_frame(500, 500, seed=i) for i in range(3)])
    out = list(iter_predict_stack(stack, m))
    assert [i for i, _ in out] == [0, 1, 2]
    assert all(p.defocus_um == pytest.approx(0.5, abs=1e-5) for _, p in out)


def test_model_file_round_trip_and_refusals(tmp_path):
    torch.manual_seed(1)
    m = SparseFocusModel(
        RegionImportanceNetwork(),
        DefocusPredictionNetwork(TINY_DPN),
        {"optics": Optics().to_dict(), "training": {"data": "random init"}},
    )
    st, js = m.save(tmp_path / "m")  # (weights, config)
    assert js.exists() and st.exists()
    m2 = load_model(tmp_path / "m.json")
    img = _camera_frame(700, 700)
    a, b = m.predict(img, k_mode="all"), m2.predict(img, k_mode="all")
    np.testing.assert_allclose(a.importance, b.importance, atol=1e-6)
    assert a.defocus_um == pytest.approx(b.defocus_um) if a.defocus_um is not None else True
    assert m2.optics == Optics()
    # a torch.save checkpoint is a pickle: refused without being executed
    marker = tmp_path / "executed"
    bad = tmp_path / "evil.json"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelFileError):
        load_model(bad)
    assert not marker.exists()
    torch.save(m.dpn.state_dict(), tmp_path / "dpn.pt")
    with pytest.raises(ModelFileError, match="safetensors"):
        load_model(tmp_path / "dpn.pt")
    # a config for another architecture is refused
    import json

    cfg = json.loads(js.read_text())
    cfg["architecture"] = "liao"
    js.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not a SparseFocus"):
        load_model(tmp_path / "m")


def test_cli_predict_prints_one_json_record_per_plane(tmp_path, capsys):
    import json

    from napari_sparsefocus.cli import main

    _model(10.0, -2.0).save(tmp_path / "fixed")
    stack = tmp_path / "s.ome.tif"
    assert main(["simulate", str(stack), "--z", "-1", "0", "1", "--size", "448"]) == 0
    capsys.readouterr()
    assert main(["predict", str(stack), "--json", "--model", str(tmp_path / "fixed.json")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    recs = [json.loads(line) for line in lines]
    assert [r["plane"] for r in recs] == [0, 1, 2]
    assert [r["true_defocus_um"] for r in recs] == [-1.0, 0.0, 1.0]
    assert all(r["defocus_um"] == pytest.approx(-2.0, abs=1e-5) for r in recs)
    # a pickle "model" is refused with a message, not a traceback
    torch.save({"x": 1}, tmp_path / "bad.pt")
    assert main(["predict", str(stack), "--model", str(tmp_path / "bad.pt")]) == 2
    assert "safetensors" in capsys.readouterr().err


def test_cli_evaluate_writes_the_paper_tables(tmp_path, capsys):
    import json

    from napari_sparsefocus.cli import main

    _model(10.0, 0.0).save(tmp_path / "zero")  # always answers "in focus"
    out = tmp_path / "report"
    rc = main(
        [
            "evaluate",
            "--model",
            str(tmp_path / "zero.json"),
            "--out",
            str(out),
            "--fields",
            "1",
            "--shots",
            "2",
            "--classical-shots",
            "1",
            "--size",
            "448",
            "--baseline",
            f"Fixed={tmp_path / 'zero.json'}",
        ]
    )
    assert rc == 2  # a SparseFocus pipeline is not a single-network baseline
    assert "not a single-network defocus regressor" in capsys.readouterr().err
    rc = main(
        [
            "evaluate",
            "--model",
            str(tmp_path / "zero.json"),
            "--out",
            str(out),
            "--fields",
            "1",
            "--shots",
            "2",
            "--classical-shots",
            "1",
            "--size",
            "448",
        ]
    )
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    sf = rep["results"]["SparseFocus"]
    hc = rep["results"]["Hill-climb (brenner)"]
    assert set(sf) == {"cell", "tissue"}
    for kind in ("cell", "tissue"):
        for level in ("dense", "sparse", "extremely_sparse"):
            m = sf[kind][level]["metrics"]
            # a constant-zero predictor: MAE = mean |true|, DSS = 0 (no true value is exactly 0)
            assert m["mae_um"] > 0 and m["dss"] == 0.0
            assert hc[kind][level]["n_total"] == 1
    md = (out / "report.md").read_text()
    assert "SparseFocus" in md and "Hill-climb" in md
    assert list(out.glob("fig2_regression_*.png")) and list(out.glob("fig3_interval_mae_*.png"))


def test_stack_prediction_from_a_memory_mapped_file(tmp_path):
    from napari_sparsefocus.core.nn._inference import _file_mapping

    m = _model(10.0, 1.25)
    path = tmp_path / "s.npy"
    a = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(2, 500, 500, 3))
    a[:] = _camera_frame(500, 500)[None]
    a.flush()
    del a
    stack = np.load(path, mmap_mode="r")
    assert _file_mapping(stack) is not None
    assert _file_mapping(stack[1:]) is not None  # views keep their mapping
    assert _file_mapping(np.zeros(3)) is None
    out = list(iter_predict_stack(stack, m))
    assert [p.defocus_um for _, p in out] == pytest.approx([1.25, 1.25], abs=1e-5)
