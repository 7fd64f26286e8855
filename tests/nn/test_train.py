"""Training: augmentation, data streams, loss/overfit, checkpoints + resume-after-kill, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

from napari_sparsefocus.core.nn import build_network
from napari_sparsefocus.core.nn._augment import (
    AugmentParams,
    apply_color_jitter,
    apply_dihedral,
    augment_batch,
    sample_augment_params,
)
from napari_sparsefocus.core.nn._data import (
    DefocusPairStream,
    DPNPatchStream,
    RINFieldStream,
    StackLabelStream,
    derive_seed,
    images_to_tensor,
)
from napari_sparsefocus.core.nn._train import (
    CheckpointMismatchError,
    TrainConfig,
    TrainProgress,
    combine_sparsefocus_model,
    compute_loss,
    find_checkpoint,
    iter_train,
    main,
)

# Tiny architectures so the tests stay fast.
TINY_RIN = {"width_mult": 0.5, "output_stride": 32, "head_channels": 16}
TINY_DPN = {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]}
SUB_ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _run_all(gen):
    records = []
    while True:
        try:
            records.append(next(gen))
        except StopIteration as stop:
            return records, stop.value


# --------------------------------------------------------------------------- augmentation
def test_augment_params_respect_the_paper_ranges():
    p = sample_augment_params(4000, torch.Generator().manual_seed(0))
    for vals, (lo, hi) in (
        (p.brightness, (0.9, 1.4)),
        (p.contrast, (0.8, 1.5)),
        (p.saturation, (0.8, 1.5)),
    ):
        assert float(vals.min()) >= lo and float(vals.max()) <= hi
        assert float(vals.min()) < lo + 0.01 and float(vals.max()) > hi - 0.01
    assert set(p.rot90_k.tolist()) == {0, 1, 2, 3}
    assert set(p.flip.tolist()) == {False, True}


def test_color_jitter_definitions_and_clamp():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 3, 16, 16, generator=g)
    ones = torch.ones(8)
    ident = AugmentParams(
        ones, ones, ones, torch.zeros(8, dtype=torch.int64), torch.zeros(8, dtype=torch.bool)
    )
    assert torch.allclose(apply_color_jitter(x, ident), x, atol=1e-6)
    # a uniform gray image: contrast and saturation leave it, brightness scales it
    gray = torch.full((3, 3, 4, 4), 0.5)
    p = AugmentParams(
        torch.tensor([0.9, 1.4, 1.2]),
        torch.tensor([0.8, 1.5, 1.0]),
        torch.tensor([1.5, 0.8, 1.0]),
        torch.zeros(3, dtype=torch.int64),
        torch.zeros(3, dtype=torch.bool),
    )
    out = apply_color_jitter(gray, p)
    assert torch.allclose(out[:, 0, 0, 0], torch.tensor([0.45, 0.7, 0.6]), atol=1e-6)
    # saturation 0.8 pulls colours toward gray, brightness may clip: always in [0, 1]
    y, _ = augment_batch(torch.rand(16, 3, 8, 8, generator=g), torch.Generator().manual_seed(2))
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_dihedral_turns_labels_with_the_image_and_is_seeded():
    g = torch.Generator().manual_seed(3)
    maps = torch.rand(6, 9, 9, generator=g)
    images = maps.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None].expand(-1, 3, -1, -1)
    x1, m1 = augment_batch(images, torch.Generator().manual_seed(7), label_maps=maps)
    x2, m2 = augment_batch(images, torch.Generator().manual_seed(7), label_maps=maps)
    assert torch.equal(x1, x2) and torch.equal(m1, m2)
    # geometry only (no colour change): the image is the up-sampled transformed map
    p = sample_augment_params(6, torch.Generator().manual_seed(7))
    ones = torch.ones(6)
    geo = AugmentParams(ones, ones, ones, p.rot90_k, p.flip)
    up = apply_dihedral(maps, geo).repeat_interleave(4, 1).repeat_interleave(4, 2)
    assert torch.equal(apply_dihedral(images, geo)[:, 0], up)
    assert not torch.equal(apply_dihedral(maps, geo), maps)  # something actually turned


# --------------------------------------------------------------------------- data streams
def test_derive_seed_and_images_to_tensor():
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
    with pytest.raises(ValueError, match="non-negative"):
        derive_seed(-1)
    t = images_to_tensor(np.full((2, 5, 5), 255, np.uint8))
    assert t.shape == (2, 3, 5, 5) and t.dtype == torch.float32 and float(t.min()) == 1.0
    t16 = images_to_tensor(np.full((1, 4, 4, 3), 65535, np.uint16))
    assert float(t16.max()) == 1.0


def test_dpn_stream_shapes_determinism_and_ranks():
    s = DPNPatchStream(3, seed=5, defocus_range_um=(-10, 10))
    x, y = s.batch(0)
    assert x.shape == (3, 3, 224, 224) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert y.shape == (3,) and y.dtype == torch.float32
    assert float(y.abs().max()) <= 10.0
    x2, y2 = s.batch(0)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    xr, _ = DPNPatchStream(3, seed=5, defocus_range_um=(-10, 10), rank=1).batch(0)
    assert not torch.equal(x, xr)
    with pytest.raises(ValueError, match="split"):
        DPNPatchStream(2, split="val")


def test_dataloader_workers_split_the_steps_in_order():
    s = RINFieldStream(2, seed=1, input_px=64, start_step=3, stop_step=7)
    loader = DataLoader(s, batch_size=None, num_workers=2)
    got = list(loader)
    assert len(got) == 4
    for k, (x, y) in enumerate(got):
        ex, ey = s.batch(3 + k)
        assert torch.equal(x, ex) and torch.equal(y, ey)
    assert not torch.equal(got[0][0], got[1][0])  # the two workers made different batches


def test_rin_stream_shapes_and_labels():
    s = RINFieldStream(4, seed=2, input_px=64, planes_per_field=2)
    x, y = s.batch(0)
    assert x.shape == (4, 3, 64, 64) and y.shape == (4, 9, 9)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}
    assert torch.equal(y[0], y[1])  # two defocus values of one field share W*
    assert not torch.equal(x[0], x[1])
    assert not torch.equal(x, RINFieldStream(4, seed=2, input_px=64, rank=1).batch(0)[0])
    with pytest.raises(ValueError, match="sparsity_probabilities"):
        RINFieldStream(2, sparsity_probabilities={"crowded": 1.0})


def test_rin_stream_draws_smaller_grids_at_the_inference_scale():
    """A 5 × 5 batch has the input side rin_input gives a 1120 px camera (256 · 5 / 9)."""
    s = RINFieldStream(2, seed=3, input_px=256, grid_sizes=(3, 5))
    seen = set()
    for step in range(6):
        x, y = s.batch(step)
        g = y.shape[-1]
        seen.add(g)
        assert y.shape == (2, g, g)
        assert x.shape == (2, 3, round(256 * g / 9), round(256 * g / 9))
    assert seen == {3, 5}
    with pytest.raises(ValueError, match="grid_sizes"):
        RINFieldStream(2, grid_sizes=(10,))


def test_rin_trains_on_mixed_grid_sizes(tmp_path):
    cfg = _tiny_cfg(
        tmp_path, steps=2, rin_grid_sizes=(3, 4), rin_levels=("sparse", "empty"), input_px=96
    )
    records, res = _run_all(iter_train(cfg))
    assert res.step == 2 and all(np.isfinite(r.loss) for r in records)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.identity()["rin_grid_sizes"] == [3, 4]
    assert cfg.identity()["rin_levels"] == ["sparse", "empty"]
    plain = _tiny_cfg(tmp_path).identity()
    assert "rin_grid_sizes" not in plain and "rin_levels" not in plain  # old checkpoints match
    with pytest.raises(ValueError, match="RIN only"):
        TrainConfig(network="dpn", rin_grid_sizes=(5,))
    with pytest.raises(ValueError, match="1…9"):
        TrainConfig(network="rin", rin_grid_sizes=(0,))
    with pytest.raises(ValueError, match="rin_levels"):
        TrainConfig(network="rin", rin_levels=("crowded",))


def test_pair_stream_is_delta_apart():
    s = DefocusPairStream(2, seed=0, patch_px=32, delta_um=2.0, defocus_range_um=(-5, 5))
    x, y = s.batch(0)
    assert x.shape == (2, 2, 3, 32, 32)
    assert float(y.min()) >= -3.0 and float(y.max()) <= 5.0
    assert not torch.equal(x[:, 0], x[:, 1])


@pytest.fixture(scope="module")
def label_file(tmp_path_factory):
    from napari_sparsefocus.core import simulate_stack
    from napari_sparsefocus.io import write_stack
    from napari_sparsefocus.io._labels import LabelFile, labels_from_simulated, write_labels

    d = tmp_path_factory.mktemp("labels")
    st = simulate_stack(
        "tissue", "dense", z_um=np.arange(-2.0, 2.01, 0.5), shape_px=(448, 448), seed=3
    )
    write_stack(d / "s.ome.tif", st.images, z_step_um=0.5)
    lab = labels_from_simulated(st.to_metadata(), "s.ome.tif")
    unmasked = type(lab)(path="s.ome.tif", focal_plane_index=lab.focal_plane_index, z_step_um=0.5)
    write_labels(d / "labels.json", LabelFile([lab]))
    write_labels(d / "nomask.json", LabelFile([unmasked]))
    return d


def test_stack_label_stream_patches_and_pairs(label_file):
    s = StackLabelStream(label_file / "labels.json", 4, seed=0)
    x, y = s.batch(0)
    assert x.shape == (4, 3, 224, 224) and y.shape == (4,)
    grid = np.round(np.arange(-2.0, 2.01, 0.5), 6)
    assert all(np.isclose(grid, v, atol=1e-6).any() for v in y.tolist())
    assert torch.equal(x, s.batch(0)[0])
    pairs = StackLabelStream(label_file / "labels.json", 2, mode="pairs", delta_um=1.0)
    xp, yp = pairs.batch(0)
    assert xp.shape == (2, 2, 3, 224, 224) and float(yp.min()) >= -1.0
    # without a content mask: patches with enough gradient energy
    xe, _ = StackLabelStream(label_file / "nomask.json", 2).batch(1)
    assert xe.shape == (2, 3, 224, 224)
    with pytest.raises(ValueError, match="9 x 9"):
        StackLabelStream(label_file / "labels.json", 2, mode="fields").batch(0)


# --------------------------------------------------------------------------- losses
def test_compute_loss_kinds():
    rin = build_network("rin", TINY_RIN)
    x = torch.rand(2, 3, 64, 64)
    w = torch.zeros(2, 9, 9)
    bce = compute_loss("rin", rin, x, w)
    assert bce.ndim == 0 and float(bce.detach()) > 0
    # the RIN pools to the targets' grid (smaller cameras): a 3 × 3 target is scored 3 × 3
    assert float(compute_loss("rin", rin, x, torch.zeros(2, 3, 3)).detach()) > 0
    with pytest.raises(ValueError, match="does not match"):
        compute_loss("rin", rin, x, torch.zeros(3, 9, 9))

    class Const(nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 1), 3.0)

    assert float(compute_loss("dpn", Const(), x, torch.tensor([1.0, 5.0]))) == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("network", "config", "stream"),
    [
        ("dpn", TINY_DPN, lambda: DPNPatchStream(4, seed=0, patch_px=64)),
        ("rin", TINY_RIN, lambda: RINFieldStream(4, seed=0, input_px=64)),
    ],
)
def test_a_few_steps_overfit_a_fixed_batch(network, config, stream):
    torch.manual_seed(0)
    model = build_network(network, config)
    x, y = stream().batch(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        model.train()
        opt.zero_grad()
        loss = compute_loss(network, model, x, y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


# --------------------------------------------------------------------------- loop + checkpoints
def _tiny_cfg(out_dir, **kw):
    base = {
        "network": "rin",
        "network_config": TINY_RIN,
        "steps": 4,
        "batch_size": 2,
        "checkpoint_every": 2,
        "log_every": 1,
        "input_px": 64,
        "out_dir": str(out_dir),
        "num_threads": 1,
    }
    base.update(kw)
    return TrainConfig(**base)


def test_iter_train_yields_progress_and_keeps_two_checkpoints(tmp_path):
    records, result = _run_all(iter_train(_tiny_cfg(tmp_path, steps=6, lr=1e-3)))
    assert [r.step for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(isinstance(r, TrainProgress) and r.samples_per_s > 0 for r in records)
    assert records[0].lr == 1e-3
    assert result.step == 6 and result.resumed_from is None
    assert result.model_path == tmp_path / "rin.safetensors" and result.model_path.exists()
    cfg = json.loads((tmp_path / "rin.json").read_text())
    assert cfg["networks"]["rin"]["name"] == "rin"
    assert cfg["training"]["steps"] == 6
    sidecars = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.json"))
    assert sidecars == ["ckpt_00000004.json", "ckpt_00000006.json"]
    meta, tensors = find_checkpoint(tmp_path)
    assert meta["step"] == 6 and isinstance(meta["rng"]["torch_cpu"], list)
    assert any(k.startswith("optim.") for k in tensors)
    # nothing left to do: a rerun returns at once, resumed at the end
    _, again = _run_all(iter_train(_tiny_cfg(tmp_path, steps=6, lr=1e-3)))
    assert again.resumed_from == 6 and again.step == 6


def test_trained_rin_and_dpn_combine_into_a_loadable_model(tmp_path):
    from napari_sparsefocus.core.nn._inference import load_model
    from napari_sparsefocus.core.nn._model_io import load_model_file

    _, rin = _run_all(iter_train(_tiny_cfg(tmp_path / "r", steps=1)))
    dpn_cfg = _tiny_cfg(tmp_path / "d", network="dpn", network_config=TINY_DPN, steps=1)
    _, dpn = _run_all(iter_train(dpn_cfg))
    tensors, cfg = load_model_file(dpn.model_path)
    assert cfg["architecture"] == "dpn" and all(k.startswith("dpn.") for k in tensors)
    assert cfg["training"]["config"]["network"] == "dpn"
    assert cfg["optics"]["na"] == 0.75 and cfg["defocus_range_um"] == [-25.0, 25.0]
    combine_sparsefocus_model(rin.model_path, dpn.model_path, tmp_path / "sf")
    model = load_model(tmp_path / "sf")
    assert model.rin_input_px == 64
    assert torch.equal(model.dpn.state_dict()["stem.0.weight"], tensors["dpn.stem.0.weight"])


def test_resume_refuses_a_different_configuration(tmp_path):
    _run_all(iter_train(_tiny_cfg(tmp_path, steps=2)))
    with pytest.raises(CheckpointMismatchError, match="network"):
        next(iter_train(_tiny_cfg(tmp_path, network="dpn", network_config=TINY_DPN)))
    with pytest.raises(CheckpointMismatchError, match="lr"):
        next(iter_train(_tiny_cfg(tmp_path, lr=1.0)))
    # the CLI reports it with exit status 2
    assert main(["--out-dir", str(tmp_path), "--network", "dpn", "--no-progress"]) == 2
    # more steps with the same settings is a valid resume
    _, res = _run_all(iter_train(_tiny_cfg(tmp_path, steps=3)))
    assert res.resumed_from == 2 and res.step == 3


def test_closing_the_generator_checkpoints_and_resumes(tmp_path):
    cfg = _tiny_cfg(tmp_path, steps=5, checkpoint_every=100)
    gen = iter_train(cfg)
    assert [next(gen).step for _ in range(3)] == [1, 2, 3]
    gen.close()  # napari's worker.quit()
    meta, _ = find_checkpoint(tmp_path)
    assert meta["step"] == 3
    records, res = _run_all(iter_train(cfg))
    assert res.resumed_from == 3 and [r.step for r in records] == [4, 5]


def test_damaged_checkpoint_is_skipped(tmp_path):
    _run_all(iter_train(_tiny_cfg(tmp_path, steps=4)))
    (tmp_path / "checkpoints" / "ckpt_00000004.safetensors").write_bytes(b"garbage")
    meta, _ = find_checkpoint(tmp_path)
    assert meta["step"] == 2


def test_train_config_validation():
    with pytest.raises(ValueError, match="network"):
        TrainConfig(network="resnet")
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="Optics"):
        TrainConfig(optics={"colour": 1})
    with pytest.raises(ValueError, match="label file"):
        TrainConfig(data="/nonexistent/labels.json")
    with pytest.raises(ValueError, match="layers"):
        TrainConfig(network="dpn", network_config={"layers": 3})
    # defaults spelled out or implicit are the same identity
    full = TrainConfig(network="dpn", network_config=build_network("dpn").config.to_dict())
    assert full.identity() == TrainConfig(network="dpn").identity()
    assert TrainConfig(network="rin").learning_rate == 5e-5
    assert TrainConfig(network="dpn").learning_rate == 1e-4
    cfg = TrainConfig(network="dpn", lr=3e-4, defocus_range_um=(-5, 5))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def _cli_args(out_dir, steps):
    return [
        "--network",
        "rin",
        "--network-config",
        json.dumps(TINY_RIN),
        "--input-px",
        "64",
        "--steps",
        str(steps),
        "--batch-size",
        "2",
        "--checkpoint-every",
        "2",
        "--log-every",
        "1",
        "--num-threads",
        "1",
        "--no-progress",
        "--out-dir",
        str(out_dir),
    ]


def _weights(path):
    return load_file(str(path))


def test_resume_after_kill_reaches_the_same_weights(tmp_path):
    exe = [sys.executable, "-m", "napari_sparsefocus.core.nn._train"]
    ref = subprocess.run(
        [*exe, *_cli_args(tmp_path / "ref", 6)],
        env=SUB_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [*exe, *_cli_args(out, 6)],
        env=SUB_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = out / "checkpoints" / "ckpt_00000002.json"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert first.exists() and not (out / "rin.safetensors").exists()

    res = subprocess.run(
        [*exe, *_cli_args(out, 6)], env=SUB_ENV, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert "resuming rin training from step" in res.stderr
    a, b = _weights(tmp_path / "ref" / "rin.safetensors"), _weights(out / "rin.safetensors")
    assert a.keys() == b.keys() and len(a) > 10
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_two_ranks_on_cpu_keep_identical_replicas(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this interpreter")
    cmd = [
        str(torchrun),
        "--nproc_per_node=2",
        "--standalone",
        "-m",
        "napari_sparsefocus.core.nn._train",
        *_cli_args(tmp_path, 3),
        "--dump-rank-state",
    ]
    r = subprocess.run(cmd, env=SUB_ENV, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    r0, r1 = _weights(tmp_path / "rank0.safetensors"), _weights(tmp_path / "rank1.safetensors")
    assert r0.keys() == r1.keys()
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    final = _weights(tmp_path / "rin.safetensors")
    assert all(torch.equal(final[f"rin.{k}"], r0[k]) for k in r0)
    meta, _ = find_checkpoint(tmp_path)
    assert meta["step"] == 3 and meta["world_size"] == 2


def test_init_from_starts_a_new_run_from_a_model_file(tmp_path):
    from napari_sparsefocus.core.nn._model_io import load_model_file

    first = tmp_path / "first"
    _run_all(iter_train(_tiny_cfg(first, steps=2, lr=1e-3)))
    # zero steps of training are not allowed, so compare after one step at lr ~ 0
    second = tmp_path / "second"
    _run_all(iter_train(_tiny_cfg(second, steps=1, lr=1e-12, init_from=str(first / "rin.json"))))
    a, _ = load_model_file(first / "rin.json")
    b, cfg = load_model_file(second / "rin.json")
    for k, v in a.items():
        if "running" in k or "num_batches" in k:
            continue  # BatchNorm statistics move with the one step's batch
        torch.testing.assert_close(v, b[k], atol=1e-6, rtol=0)
    assert cfg["training"]["config"]["init_from"] == str(first / "rin.json")
    # a file without this network's weights is refused
    with pytest.raises(ValueError, match="no 'dpn' weights"):
        _run_all(
            iter_train(
                _tiny_cfg(
                    tmp_path / "third",
                    network="dpn",
                    network_config=TINY_DPN,
                    input_px=64,
                    init_from=str(first / "rin.json"),
                )
            )
        )


def test_cosine_schedule_warms_up_decays_and_is_a_function_of_the_step():
    cfg = TrainConfig(network="dpn", steps=100, lr=1e-3, lr_schedule="cosine")
    lrs = [cfg.lr_at(s) for s in range(100)]
    assert lrs[0] < lrs[2] == pytest.approx(1e-3)  # 3-step warm-up
    assert np.all(np.diff(lrs[2:]) <= 0)  # then never rises
    assert lrs[-1] == pytest.approx(1e-3 * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * 96 / 97))))
    assert TrainConfig(network="dpn", steps=100, lr=1e-3).lr_at(99) == 1e-3
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")


def test_sign_magnitude_dpn_loss_is_magnitude_l2_plus_side_bce():
    net = build_network("dpn", {**TINY_DPN, "sign_magnitude_head": True, "output_scale_um": 5.0})
    x = torch.rand(4, 3, 64, 64)
    y = torch.tensor([-3.0, 2.0, 0.5, -8.0])
    loss = compute_loss("dpn", net, x, y)
    m, side = net.last_head_parts
    want = torch.mean((m - y.abs()) ** 2) + 10.0 * nn.functional.binary_cross_entropy_with_logits(
        side, (y > 0).float()
    )
    assert torch.allclose(loss, want)
    plain = build_network("dpn", TINY_DPN)
    assert torch.allclose(compute_loss("dpn", plain, x, y), torch.mean((plain(x) - y) ** 2))
