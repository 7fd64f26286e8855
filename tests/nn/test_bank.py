"""Patch banks: shared, resumable, reproducible training patches for the patch networks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from napari_sparsefocus.core import Optics
from napari_sparsefocus.core.nn._bank import (
    PatchBank,
    PatchBankStream,
    is_patch_bank,
    iter_write_patch_bank,
    write_patch_bank,
)
from napari_sparsefocus.core.nn._data import images_to_tensor
from napari_sparsefocus.core.nn._train import TrainConfig, train

KW = {"shard_pairs": 4, "planes_per_region": 1, "seed": 3, "defocus_range_um": (-8.0, 8.0)}


@pytest.fixture(scope="module")
def bank_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bank")
    write_patch_bank(out, 10, **KW)
    return out


def _arrays(path):
    return {
        f"{d.name}/{f.name}": np.load(f, allow_pickle=False)
        for d in sorted(path.glob("shard_*"))
        for f in sorted(d.glob("*.npy"))
    }


def test_bank_holds_labelled_pairs_in_range(bank_dir):
    bank = PatchBank(bank_dir)
    assert is_patch_bank(bank_dir) and len(bank) == 10
    assert bank.optics == Optics() and bank.delta_um == 2.0
    d = bank.defocus_um
    # the first shot lies in [lo, hi - delta] so the second stays inside the range
    assert d.min() >= -8.0 and d.max() <= 6.0
    a, b = bank.pairs(np.arange(10))
    assert a.shape == b.shape == (10, 224, 224, 3) and a.dtype == np.uint8
    # two shots 2 µm apart of the same patch differ, but are the same content
    assert not np.array_equal(a, b)
    assert np.corrcoef(a.astype(float).ravel(), b.astype(float).ravel())[0, 1] > 0.3
    meta = json.loads((bank_dir / "bank.json").read_text())
    assert meta["n_shards"] == 3
    # default levels and no cap are not recorded: banks written before those options stay valid
    assert "levels" not in meta and "max_patches_per_plane" not in meta


def test_parts_and_resume_give_the_same_bank(bank_dir, tmp_path):
    # two processes' parts
    split = tmp_path / "split"
    for i in (1, 0):
        write_patch_bank(split, 10, part=(i, 2), **KW)
    want = _arrays(bank_dir)
    got = _arrays(split)
    assert want.keys() == got.keys()
    assert all(np.array_equal(want[k], got[k]) for k in want)
    # an interrupted run: a shard lost is rendered again, identically
    shutil.rmtree(split / "shard_00001")
    with pytest.raises(ValueError, match="incomplete"):
        PatchBank(split)
    records = list(iter_write_patch_bank(split, 10, **KW))
    assert [r.shards_done for r in records] == [1, 2, 3] and records[-1].pairs == 10
    got = _arrays(split)
    assert all(np.array_equal(want[k], got[k]) for k in want)


def test_other_settings_in_the_same_folder_are_refused(bank_dir):
    with pytest.raises(ValueError, match="other settings"):
        write_patch_bank(bank_dir, 10, **{**KW, "seed": 4})
    with pytest.raises(ValueError, match="delta_um"):
        write_patch_bank(bank_dir / "x", 10, delta_um=100.0)
    with pytest.raises(ValueError, match="not a patch bank"):
        PatchBank(bank_dir / "nowhere")


def test_stream_batches_match_the_bank_and_repeat_per_step(bank_dir):
    bank = PatchBank(bank_dir)
    s = PatchBankStream(bank, 6, seed=1)
    x, y = s.batch(5)
    x2, y2 = s.batch(5)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (6, 3, 224, 224)
    a, b = bank.pairs(np.arange(len(bank)))
    ta, tb = images_to_tensor(a), images_to_tensor(b)
    for xi, yi in zip(x, y, strict=True):
        # every sample is one of the bank's shots with that shot's own defocus
        hits = [i for i in range(len(bank)) if torch.equal(xi, ta[i])]
        hits_b = [i for i in range(len(bank)) if torch.equal(xi, tb[i])]
        if hits:
            assert yi.item() == pytest.approx(bank.defocus_um[hits[0]])
        else:
            assert hits_b
            assert yi.item() == pytest.approx(bank.defocus_um[hits_b[0]] + 2.0)
    p = PatchBankStream(bank, 4, mode="pairs", patch_px=32, seed=1)
    xp, yp = p.batch(0)
    assert xp.shape == (4, 2, 3, 32, 32)
    # the pair's target is the second shot's defocus
    assert np.all(np.isin(np.round(yp.numpy() - 2.0, 4), np.round(bank.defocus_um, 4)))
    with pytest.raises(ValueError, match="mode"):
        PatchBankStream(bank, 4, mode="triples")


def test_training_reads_a_bank_and_refuses_it_for_the_rin(bank_dir, tmp_path):
    torch.set_num_threads(1)
    cfg = TrainConfig(
        network="dpn",
        network_config={"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]},
        steps=2,
        batch_size=4,
        data=str(bank_dir),
        input_px=32,
        out_dir=str(tmp_path / "run"),
        augment=False,
    )
    result = train(cfg)
    assert result.model_path.exists()
    with pytest.raises(ValueError, match="RIN"):
        TrainConfig(network="rin", data=str(bank_dir), out_dir=str(tmp_path / "r"))
    other = TrainConfig(
        network="dpn",
        steps=1,
        batch_size=2,
        data=str(bank_dir),
        input_px=32,
        optics={"na": 0.5, "condenser_na": 0.4},
        out_dir=str(tmp_path / "o"),
    )
    with pytest.raises(ValueError, match="other optics"):
        train(other)


def test_levels_and_cap_balance_what_a_bank_holds(tmp_path):
    kw = {**KW, "shard_pairs": 6}
    # a dense 3 x 3 field gives nine content patches per rendered plane: pairs share a defocus
    dense = PatchBank(write_patch_bank(tmp_path / "dense", 6, levels=("dense",), **kw))
    assert len(np.unique(dense.defocus_um)) < 6
    # capped at one patch per plane, every pair comes from its own plane
    capped = PatchBank(
        write_patch_bank(tmp_path / "capped", 6, levels=("dense",), max_patches_per_plane=1, **kw)
    )
    assert len(np.unique(capped.defocus_um)) == 6
    meta = json.loads((tmp_path / "capped" / "bank.json").read_text())
    assert meta["levels"] == ["dense"] and meta["max_patches_per_plane"] == 1
    with pytest.raises(ValueError, match="level must be one of"):
        write_patch_bank(tmp_path / "bad", 6, levels=("thick",), **kw)
    with pytest.raises(ValueError, match="max_patches_per_plane"):
        write_patch_bank(tmp_path / "bad2", 6, max_patches_per_plane=0, **kw)
