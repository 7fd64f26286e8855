"""Near-focus refiner: descriptor, inputs, numpy inference, fitting, model files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from napari_sparsefocus import Optics
from napari_sparsefocus.core import brenner
from napari_sparsefocus.core.nn import (
    DefocusPredictionNetwork,
    DPNConfig,
    NearFocusRefiner,
    RegionImportanceNetwork,
    SparseFocusModel,
    fit_near_focus_refiner,
    load_model,
    patch_sharpness_descriptor,
    refiner_input_size,
    refiner_inputs,
)

TINY_DPN = DPNConfig(dims=(8, 16, 16, 32), depths=(1, 1, 1, 1))
N_DESC = 14 * 3


def _patches(n=2, size=32, seed=0):
    return np.random.default_rng(seed).uniform(0.2, 0.8, size=(n, 3, size, size))


def test_descriptor_is_log_energy_per_channel_and_scale():
    x = _patches()
    d = patch_sharpness_descriptor(x)
    assert d.shape == (2, N_DESC)
    assert refiner_input_size(3) == 3 * N_DESC + 3
    # first block: scale 1, vertical then horizontal squared differences, per channel
    gy = np.mean(np.diff(x, axis=2) ** 2, axis=(2, 3))
    gx = np.mean(np.diff(x, axis=3) ** 2, axis=(2, 3))
    assert d[:, 0:3] == pytest.approx(np.log(gy + 1e-10))
    assert d[:, 3:6] == pytest.approx(np.log(gx + 1e-10))
    # last blocks: log variance and mean of each channel
    assert d[:, -6:-3] == pytest.approx(np.log(x.var(axis=(2, 3)) + 1e-10))
    assert d[:, -3:] == pytest.approx(x.mean(axis=(2, 3)))
    # a gain g on the red channel shifts red's log energies by 2 log g, and nothing else
    y = x.copy()
    y[:, 0] *= 0.5
    e = patch_sharpness_descriptor(y)
    red = np.arange(0, 36, 3)  # the red entry of each energy block (10 gradient, 2 Laplacian)
    assert (e - d)[:, red] == pytest.approx(np.full((2, 12), 2 * math.log(0.5)), abs=1e-4)
    others = np.setdiff1d(np.arange(36), red)
    assert (e - d)[:, others] == pytest.approx(0.0, abs=1e-12)


def test_descriptor_sees_blur_most_at_fine_scales():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, size=(1, 1, 64, 64))
    blurred = (x + np.roll(x, 1, 2) + np.roll(x, 1, 3) + np.roll(np.roll(x, 1, 2), 1, 3)) / 4
    d, b = patch_sharpness_descriptor(x), patch_sharpness_descriptor(blurred)
    fine, coarse = d[0, 0] - b[0, 0], d[0, 8] - b[0, 8]  # vertical energy at scale 1 and 16
    assert fine > 1.0 and fine > coarse


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((2, 32, 32)), r"\(N, C, H, W\)"),
        (np.zeros((1, 3, 24, 32)), "at least 32"),
        (np.full((1, 3, 32, 32), np.nan), "NaN"),
    ],
)
def test_descriptor_refuses_bad_patches(bad, match):
    with pytest.raises(ValueError, match=match):
        patch_sharpness_descriptor(bad)


def test_inputs_hold_the_sharpness_weighted_context():
    desc = np.array([[1.0, 2.0], [5.0, 6.0]])
    rows = refiner_inputs(desc, [0.5, -1.0], [0.9, 0.8], [1.0, 3.0])
    ctx = np.array([4.0, 5.0])  # (1·[1, 2] + 3·[5, 6]) / 4
    assert rows.shape == (2, 3 * 2 + 3)
    assert rows[0] == pytest.approx([1, 2, -3, -3, *ctx, 0.5, 0.9, math.log(2)])
    assert rows[1] == pytest.approx([5, 6, 1, 1, *ctx, -1.0, 0.8, math.log(2)])
    with pytest.raises(ValueError, match="one entry per patch"):
        refiner_inputs(desc, [0.5], [0.9, 0.8], [1.0, 3.0])
    with pytest.raises(ValueError, match="not all zero"):
        refiner_inputs(desc, [0.5, 0.1], [0.9, 0.8], [0.0, 0.0])
    with pytest.raises(ValueError, match="N >= 1"):
        refiner_inputs(np.zeros((0, 2)), [], [], [])


def _random_refiner(n_in=5, hidden=(7, 4), seed=0):
    rng = np.random.default_rng(seed)
    sizes = [n_in, *hidden, 1]
    return NearFocusRefiner(
        mean=rng.normal(size=n_in),
        std=rng.uniform(0.5, 2.0, n_in),
        weights=tuple(rng.normal(size=(sizes[i + 1], sizes[i])) for i in range(len(sizes) - 1)),
        biases=tuple(rng.normal(size=sizes[i + 1]) for i in range(len(sizes) - 1)),
        range_um=2.5,
        fitted_on="random",
    )


def test_numpy_inference_equals_the_torch_network():
    ref = _random_refiner()
    x = np.random.default_rng(3).normal(size=(6, 5))
    net = torch.nn.Sequential(
        torch.nn.Linear(5, 7),
        torch.nn.GELU(approximate="tanh"),
        torch.nn.Linear(7, 4),
        torch.nn.GELU(approximate="tanh"),
        torch.nn.Linear(4, 1),
    ).double()
    with torch.no_grad():
        for lin, w, b in zip(net[::2], ref.weights, ref.biases, strict=True):
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
        want = net(torch.from_numpy((x - ref.mean) / ref.std))[:, 0].numpy()
    assert ref.predict(x) == pytest.approx(want, rel=1e-9, abs=1e-12)
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        ref.predict(np.zeros((2, 4)))


@pytest.mark.parametrize(
    "change, match",
    [
        ({"std": np.zeros(5)}, "std"),
        ({"features": "other-v9"}, "not supported"),
        ({"biases": (np.zeros(7),)}, "one bias per layer"),
        ({"range_um": 0.0}, "range_um"),
    ],
)
def test_malformed_refiners_are_refused(change, match):
    ref = _random_refiner()
    fields = {
        "mean": ref.mean,
        "std": ref.std,
        "weights": ref.weights,
        "biases": ref.biases,
        "range_um": ref.range_um,
    }
    fields.update(change)
    with pytest.raises(ValueError, match=match):
        NearFocusRefiner(**fields)


def test_fit_learns_a_known_map():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 4))
    y = 0.8 * x[:, 0] - 0.5 * np.tanh(x[:, 1])
    ref = fit_near_focus_refiner(
        x, y, range_um=2.0, hidden=(32,), epochs=40, batch_size=128, lr=3e-3, seed=1
    )
    xt = rng.normal(size=(500, 4))
    yt = 0.8 * xt[:, 0] - 0.5 * np.tanh(xt[:, 1])
    err = np.mean(np.abs(ref.predict(xt) - yt))
    assert err < 0.1 * np.mean(np.abs(yt))
    with pytest.raises(ValueError, match="too few"):
        fit_near_focus_refiner(x[:100], y[:100], range_um=2.0)


def _tiny_model():
    torch.manual_seed(0)
    rin = RegionImportanceNetwork()
    dpn = DefocusPredictionNetwork(TINY_DPN)
    with torch.no_grad():
        rin.head[-1].weight.zero_()
        rin.head[-1].bias.fill_(10.0)  # every patch is content
    return SparseFocusModel(rin, dpn, {"optics": Optics().to_dict()})


def test_read_near_focus_is_the_sharpness_weighted_mean_of_refined_patches(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(448, 448, 3), dtype=np.uint8)
    img[:224, :224] //= 4  # a low-contrast patch weighs less
    model = _tiny_model()
    assert model.near_focus_refiner is None and model.read_near_focus(img) is None
    rows, dpn, _, boxes = model.near_focus_inputs(img)
    assert rows.shape == (4, 3 * N_DESC + 3) and len(boxes) == 4
    ref = _random_refiner(n_in=rows.shape[1], seed=2)
    m = model.with_near_focus_refiner(ref)
    out = m.read_near_focus(img)
    assert out is not None
    # weights: the Brenner sharpness of each patch's luma (scale-free: counts or [0, 1])
    bw = np.array(
        [
            brenner(img[int(y0) : int(y1), int(x0) : int(x1)], channel_axis=-1)
            for y0, x0, y1, x1 in out.boxes_px
        ]
    )
    assert out.weights == pytest.approx(bw / bw.sum(), rel=1e-4)
    assert out.weights[0] < 0.1 * out.weights[1:].min()
    assert out.patch_defocus_um == pytest.approx(ref.predict(rows))
    assert out.defocus_um == pytest.approx(float(np.dot(out.weights, out.patch_defocus_um)))
    assert out.dpn_defocus_um == pytest.approx(dpn)
    assert dpn == pytest.approx([p.defocus_um for p in m.predict(img, k_mode="all").patches])
    # the model file carries it; loading rebuilds the same reading
    m.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m.json").read_text())
    assert cfg["near_focus_refiner"]["fitted_on"] == "random"
    loaded = load_model(tmp_path / "m")
    assert loaded.near_focus_refiner is not None
    assert loaded.read_near_focus(img).defocus_um == pytest.approx(out.defocus_um, abs=1e-4)
    # the calibration and the refiner travel together
    assert loaded.with_near_focus_calibration(None).near_focus_refiner is not None
    assert m.with_near_focus_refiner(None).near_focus_refiner is None
    with pytest.raises(ValueError, match="takes 5 inputs"):
        model.with_near_focus_refiner(_random_refiner())
    # a file whose refiner entry names tensors it lacks: a clear error naming the file
    cfg["near_focus_refiner"]["layers"] = 4
    (tmp_path / "m.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"m.*near_focus_refiner\.3\.weight"):
        load_model(tmp_path / "m")


def test_descriptor_pools_each_scale_from_the_last_as_pooling_it_directly():
    from napari_sparsefocus.core.nn._refiner import _pool, _pyramid

    x = np.random.default_rng(3).uniform(size=(2, 3, 37, 45))  # odd sizes: remainders dropped
    levels = _pyramid(x, (1, 2, 4, 8, 16))
    for s, level in levels.items():
        assert level.shape == (2, 3, 37 // s, 45 // s)
        np.testing.assert_allclose(level, _pool(x, s), rtol=1e-12, atol=1e-15)


def test_predict_and_read_near_focus_matches_the_two_calls_and_reads_patches_once():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(672, 672, 3), dtype=np.uint8)  # a 3 x 3 grid
    model = _tiny_model()
    rows, _, _, _ = model.near_focus_inputs(img)
    m = model.with_near_focus_refiner(_random_refiner(n_in=rows.shape[1], seed=4))
    read = []
    hook = m.dpn.register_forward_hook(lambda mod, args, out: read.append(len(args[0])))
    try:
        pred, reading = m.predict_and_read_near_focus(img)
        assert sum(read) == 9  # every content patch read once: the top k, then the rest
        read.clear()
        alone, alone_reading = m.predict(img), m.read_near_focus(img)
        assert sum(read) == pred.k + 9
        assert 0 < pred.k < 9  # the shared pass had patches left to read after the top k
        read.clear()
        seen = []
        far, none = m.predict_and_read_near_focus(img, near_focus=lambda p: seen.append(p) or False)
        assert none is None and sum(read) == pred.k  # not wanted: only the top k are read
        assert seen == [far]
    finally:
        hook.remove()
    assert pred.defocus_um == pytest.approx(alone.defocus_um, abs=1e-6)
    assert [(p.row, p.col) for p in pred.patches] == [(p.row, p.col) for p in alone.patches]
    assert far.defocus_um == pytest.approx(alone.defocus_um, abs=1e-6)
    assert reading is not None and alone_reading is not None
    assert reading.defocus_um == pytest.approx(alone_reading.defocus_um, abs=1e-6)
    assert reading.boxes_px == alone_reading.boxes_px
    np.testing.assert_allclose(reading.patch_defocus_um, alone_reading.patch_defocus_um, atol=1e-6)
    np.testing.assert_allclose(reading.weights, alone_reading.weights, rtol=1e-9)
    # without a refiner there is nothing to read
    assert model.predict_and_read_near_focus(img)[1] is None
