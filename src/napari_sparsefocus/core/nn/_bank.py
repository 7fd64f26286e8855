"""Patch banks: simulated training patches rendered once, shared by every patch network.

On a CPU the simulator, not the network, limits training speed: a 1120 px
region costs ~0.25 s per plane and gives at most 9 patches. A *patch bank*
renders pairs of shots once and stores them as uint8 ``.npy`` shards that
training memory-maps, so the DPN and the single-shot baselines (Liao, Jiang)
see exactly the same images and labels, and the two-shot baseline (Dastidar)
sees the same patches as pairs ``delta_um`` apart — "trained on the same data
with the same budget".

Layout of a bank directory::

    bank.json            format, version, optics, defocus law, delta, seed, shard size
    shard_00000/a.npy    (N, 224, 224, 3) uint8, shot at defocus d
    shard_00000/b.npy    (N, 224, 224, 3) uint8, shot at d + delta_um
    shard_00000/d.npy    (N,) float32, d (µm, ``z_current - z_focus``)
    shard_00000/kind.npy (N,) uint8, 0 cell / 1 tissue

Shards are written to a temporary folder and renamed, and each is a pure
function of ``(seed, shard index)``: an interrupted :func:`iter_write_patch_bank`
picks up at the first missing shard and produces the same bank. ``.npy``
files are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from napari_sparsefocus.core import SPECIMEN_KINDS, Optics, simulate_field

from ._data import StepStream, derive_seed, images_to_tensor

if TYPE_CHECKING:
    from collections.abc import Generator, Sequence

    from numpy.typing import NDArray

__all__ = [
    "BANK_FORMAT",
    "BankProgress",
    "PatchBank",
    "PatchBankStream",
    "is_patch_bank",
    "iter_write_patch_bank",
    "write_patch_bank",
]

BANK_FORMAT = "napari-sparsefocus-patch-bank"
_BANK_VERSION = 1
_PATCH_PX = 224
_TAG_BANK, _TAG_BANK_STREAM = 105, 106
_LEVELS = ("dense", "sparse", "extremely_sparse")


@dataclass(frozen=True)
class BankProgress:
    """Progress of :func:`iter_write_patch_bank`: shards done of total, pairs so far."""

    shards_done: int
    shards_total: int
    pairs: int


def _draw_defocus(
    rng: np.random.Generator, lo: float, hi: float, near_um: float, near_fraction: float
) -> float:
    """Draw a first-shot defocus: uniform on ``[lo, hi]``, or near focus with some odds."""
    if near_fraction > 0 and rng.random() < near_fraction:
        return float(rng.uniform(max(lo, -near_um), min(hi, near_um)))
    return float(rng.uniform(lo, hi))


def _render_shard(
    index: int, n_pairs: int, meta: dict[str, Any], optics: Optics
) -> dict[str, NDArray[Any]]:
    """Render shard ``index`` of the bank described by ``meta`` (see :func:`_bank_meta`)."""
    seed, split = int(meta["seed"]), str(meta["split"])
    lo, hi = meta["defocus_range_um"]
    delta_um, near_um = float(meta["delta_um"]), float(meta["near_um"])
    near_fraction, planes_per_region = float(meta["near_fraction"]), int(meta["planes_per_region"])
    kinds = tuple(meta["kinds"])
    levels = tuple(meta.get("levels", _LEVELS))
    cap = meta.get("max_patches_per_plane")
    rng = np.random.default_rng(derive_seed(seed, _TAG_BANK, index))
    p = _PATCH_PX
    a_list: list[NDArray[Any]] = []
    b_list: list[NDArray[Any]] = []
    d_list: list[float] = []
    k_list: list[int] = []
    while len(d_list) < n_pairs:
        k = int(rng.integers(len(kinds)))
        level = levels[int(rng.integers(len(levels)))]
        fld = simulate_field(
            kinds[k],
            level,
            optics,
            int(rng.integers(2**31 - 1)),
            shape_px=(3 * p, 3 * p),
            split=split,
        )
        cells = np.argwhere(fld.importance > 0.5)
        if len(cells) == 0:
            continue
        if cap is not None and len(cells) > int(cap):
            cells = cells[np.sort(rng.choice(len(cells), size=int(cap), replace=False))]
        for _ in range(planes_per_region):
            d = _draw_defocus(rng, lo, hi - delta_um, near_um, near_fraction)
            a = fld.snap_defocus(d, rng=rng)
            b = fld.snap_defocus(d + delta_um, rng=rng)
            if a.ndim == 2:
                a, b = a[..., None], b[..., None]
            for i, j in cells:
                sl = (slice(i * p, (i + 1) * p), slice(j * p, (j + 1) * p))
                a_list.append(a[sl])
                b_list.append(b[sl])
                d_list.append(d)
                k_list.append(SPECIMEN_KINDS.index(kinds[k]))
    n = n_pairs
    return {
        "a": np.stack(a_list[:n]),
        "b": np.stack(b_list[:n]),
        "d": np.asarray(d_list[:n], np.float32),
        "kind": np.asarray(k_list[:n], np.uint8),
    }


def _bank_meta(
    optics: Optics,
    *,
    n_pairs: int,
    shard_pairs: int,
    seed: int,
    defocus_range_um: tuple[float, float],
    delta_um: float,
    near_um: float,
    near_fraction: float,
    kinds: Sequence[str],
    planes_per_region: int,
    split: str,
    levels: Sequence[str] = ("dense", "sparse", "extremely_sparse"),
    max_patches_per_plane: int | None = None,
) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    # recorded only when not the default, so banks written before these options stay valid
    if tuple(levels) != _LEVELS:
        extra["levels"] = list(levels)
    if max_patches_per_plane is not None:
        extra["max_patches_per_plane"] = int(max_patches_per_plane)
    return {
        "format": BANK_FORMAT,
        "version": _BANK_VERSION,
        "optics": optics.to_dict(),
        "n_pairs": int(n_pairs),
        "shard_pairs": int(shard_pairs),
        "n_shards": math.ceil(n_pairs / shard_pairs),
        "seed": int(seed),
        "split": split,
        "defocus_range_um": [float(v) for v in defocus_range_um],
        "delta_um": float(delta_um),
        "near_um": float(near_um),
        "near_fraction": float(near_fraction),
        "kinds": list(kinds),
        "planes_per_region": int(planes_per_region),
        "patch_px": _PATCH_PX,
        "content": "content patches only (W* = 1)",
        **extra,
    }


def iter_write_patch_bank(
    out_dir: str | os.PathLike[str],
    n_pairs: int,
    *,
    optics: Optics | None = None,
    seed: int = 0,
    defocus_range_um: tuple[float, float] = (-25.0, 25.0),
    delta_um: float = 2.0,
    near_um: float = 6.0,
    near_fraction: float = 0.4,
    kinds: Sequence[str] = SPECIMEN_KINDS,
    shard_pairs: int = 512,
    planes_per_region: int = 2,
    split: str = "train",
    part: tuple[int, int] = (0, 1),
    levels: Sequence[str] = ("dense", "sparse", "extremely_sparse"),
    max_patches_per_plane: int | None = None,
) -> Generator[BankProgress, None, Path]:
    """Render a patch bank shard by shard, yielding progress; resumable.

    Parameters
    ----------
    out_dir : path
        Bank directory (created). A bank already there with other settings
        raises ``ValueError``; one with the same settings is completed.
    n_pairs : int
        Number of shot pairs (each pair gives two single-shot samples).
    optics : Optics, optional
        Simulator optics (default ``Optics()``).
    seed : int
        Seed; the bank is a pure function of its settings.
    defocus_range_um : tuple of float
        Range of both shots' defocus (µm).
    delta_um : float
        Stage move between the two shots of a pair (µm, the Dastidar step).
    near_um, near_fraction : float
        With probability ``near_fraction`` the first shot is drawn from
        ``[-near_um, near_um]`` instead of the whole range: more examples
        where the sign is subtle and where refocusing ends.
    kinds : sequence of str
        Specimen kinds.
    shard_pairs : int
        Pairs per shard (the unit of resumption).
    planes_per_region : int
        Pairs rendered per simulated 3 × 3-patch field.
    split : {"train", "test"}
        Simulator seed stream.
    levels : sequence of str
        Sparsity levels of the simulated fields, drawn uniformly (repeat a
        level to weight it).
    max_patches_per_plane : int, optional
        Keep at most this many content patches of each rendered plane (chosen
        at random). A dense 3 × 3 field gives nine patches per plane and a
        sparse one one to three, so without a cap dense content dominates the
        bank; a cap of 2–3 balances what the networks see per sparsity level.
    part : tuple of int
        ``(i, n)``: write only shards ``s`` with ``s % n == i``, so ``n``
        processes can fill one bank together (same result as one process).

    Yields
    ------
    BankProgress
        After each shard.

    Returns
    -------
    pathlib.Path
        The bank directory.
    """
    optics = optics or Optics()
    lo, hi = (float(v) for v in defocus_range_um)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"defocus_range_um must be finite (lo, hi), lo < hi, got {(lo, hi)}")
    if not (math.isfinite(delta_um) and 0 < delta_um < hi - lo):
        raise ValueError(f"delta_um must be in (0, {hi - lo}), got {delta_um}")
    if n_pairs < 1 or shard_pairs < 1 or planes_per_region < 1:
        raise ValueError("n_pairs, shard_pairs and planes_per_region must be >= 1")
    if not 0.0 <= near_fraction <= 1.0 or near_um <= 0:
        raise ValueError("near_fraction must be in [0, 1] and near_um > 0")
    for k in kinds:
        if k not in SPECIMEN_KINDS:
            raise ValueError(f"kind must be one of {SPECIMEN_KINDS}, got {k!r}")
    for lv in levels:
        if lv not in _LEVELS:
            raise ValueError(f"level must be one of {_LEVELS}, got {lv!r}")
    if not levels:
        raise ValueError("levels must name at least one sparsity level")
    if max_patches_per_plane is not None and int(max_patches_per_plane) < 1:
        raise ValueError(f"max_patches_per_plane must be >= 1, got {max_patches_per_plane}")
    part_i, part_n = (int(v) for v in part)
    if not 0 <= part_i < part_n:
        raise ValueError(f"part must be (i, n) with 0 <= i < n, got {part}")
    meta = _bank_meta(
        optics,
        n_pairs=n_pairs,
        shard_pairs=shard_pairs,
        seed=seed,
        defocus_range_um=(lo, hi),
        delta_um=delta_um,
        near_um=near_um,
        near_fraction=near_fraction,
        kinds=kinds,
        planes_per_region=planes_per_region,
        split=split,
        levels=levels,
        max_patches_per_plane=max_patches_per_plane,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "bank.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        if old != json.loads(json.dumps(meta)):
            raise ValueError(
                f"{out} holds a patch bank with other settings; choose another folder or delete it"
            )
    else:
        tmp = meta_path.with_suffix(f".json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        os.replace(tmp, meta_path)
    n_shards = int(meta["n_shards"])
    done = 0
    mine = [s for s in range(n_shards) if s % part_n == part_i]
    for n_done, s in enumerate(mine, start=1):
        final = out / f"shard_{s:05d}"
        size = min(shard_pairs, n_pairs - s * shard_pairs)
        if not final.exists():
            arrays = _render_shard(s, size, meta, optics)
            tmp_dir = out / f".shard_{s:05d}.{os.getpid()}.tmp"
            shutil.rmtree(tmp_dir, ignore_errors=True)
            tmp_dir.mkdir()
            for name, arr in arrays.items():
                np.save(tmp_dir / f"{name}.npy", arr, allow_pickle=False)
            os.replace(tmp_dir, final)
        done += size
        yield BankProgress(n_done, len(mine), done)
    return out


def write_patch_bank(out_dir: str | os.PathLike[str], n_pairs: int, **kw: Any) -> Path:
    """Run :func:`iter_write_patch_bank` to the end (same parameters) and return the folder."""
    gen = iter_write_patch_bank(out_dir, n_pairs, **kw)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            result: Path = stop.value
            return result


def is_patch_bank(path: str | os.PathLike[str]) -> bool:
    """Return True if ``path`` is a folder holding a patch bank's ``bank.json``."""
    return (Path(path) / "bank.json").is_file()


class PatchBank:
    """A finished patch bank, memory-mapped.

    Parameters
    ----------
    path : path
        Bank directory written by :func:`iter_write_patch_bank`.

    Raises
    ------
    ValueError
        Not a bank, another format version, or missing / inconsistent shards.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        meta_path = self.path / "bank.json"
        if not meta_path.is_file():
            raise ValueError(f"{self.path} is not a patch bank (no bank.json)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{meta_path} is not valid JSON: {exc}") from exc
        if meta.get("format") != BANK_FORMAT or meta.get("version") != _BANK_VERSION:
            raise ValueError(f"{meta_path} is not a version-{_BANK_VERSION} {BANK_FORMAT} file")
        self.meta: dict[str, Any] = meta
        self.optics = Optics.from_dict(meta["optics"])
        self.delta_um = float(meta["delta_um"])
        self._a: list[NDArray[np.uint8]] = []
        self._b: list[NDArray[np.uint8]] = []
        ds: list[NDArray[np.float32]] = []
        for s in range(int(meta["n_shards"])):
            d = self.path / f"shard_{s:05d}"
            if not d.is_dir():
                raise ValueError(
                    f"patch bank {self.path} is incomplete: {d.name} is missing "
                    "(finish it with the same command that started it)"
                )
            a = np.load(d / "a.npy", mmap_mode="r", allow_pickle=False)
            b = np.load(d / "b.npy", mmap_mode="r", allow_pickle=False)
            dd = np.load(d / "d.npy", allow_pickle=False)
            if a.shape != b.shape or a.shape[0] != dd.shape[0] or a.dtype != np.uint8:
                raise ValueError(f"patch bank shard {d} has inconsistent arrays")
            self._a.append(a)
            self._b.append(b)
            ds.append(dd.astype(np.float32))
        self.defocus_um = np.concatenate(ds)
        self._offsets = np.cumsum([0] + [len(x) for x in ds])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _locate(self, index: NDArray[np.intp]) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
        shard = np.searchsorted(self._offsets, index, side="right") - 1
        return shard, index - self._offsets[shard]

    def pairs(self, index: NDArray[np.intp]) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
        """Return ``(first, second)`` shots ``(n, P, P, C)`` of the pairs ``index``."""
        shard, local = self._locate(np.asarray(index, dtype=np.intp))
        a = np.stack([self._a[s][i] for s, i in zip(shard, local, strict=True)])
        b = np.stack([self._b[s][i] for s, i in zip(shard, local, strict=True)])
        return a, b


class PatchBankStream(StepStream):
    """Training batches drawn from a :class:`PatchBank`, reproducible per step.

    Parameters
    ----------
    bank : PatchBank or path
        The bank.
    batch_size : int
        Samples per batch.
    mode : {"single", "pairs"}
        ``"single"``: ``(B, 3, P, P)`` shots with their defocus; either shot
        of a pair is used, so the whole range is covered. ``"pairs"``:
        ``(B, 2, 3, P, P)`` with the second shot's defocus as target, as
        :class:`~napari_sparsefocus.core.nn.DefocusPairStream`.
    seed, rank, start_step, stop_step
        See :class:`~napari_sparsefocus.core.nn.StepStream`.
    patch_px : int
        Centre crop (224: whole patches).
    """

    _tag = _TAG_BANK_STREAM

    def __init__(
        self,
        bank: PatchBank | str | os.PathLike[str],
        batch_size: int,
        *,
        mode: str = "single",
        seed: int = 0,
        rank: int = 0,
        start_step: int = 0,
        stop_step: int | None = None,
        patch_px: int = _PATCH_PX,
    ) -> None:
        super().__init__(
            batch_size, seed=seed, rank=rank, start_step=start_step, stop_step=stop_step
        )
        if mode not in ("single", "pairs"):
            raise ValueError(f"mode must be 'single' or 'pairs', got {mode!r}")
        if not 8 <= int(patch_px) <= _PATCH_PX:
            raise ValueError(f"patch_px must be in [8, {_PATCH_PX}], got {patch_px}")
        self.bank = bank if isinstance(bank, PatchBank) else PatchBank(bank)
        self.mode = mode
        self.patch_px = int(patch_px)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the batch of ``step`` (see the class docstring for shapes).

        Parameters
        ----------
        step : int
            Training step.

        Returns
        -------
        tuple of torch.Tensor
            Images in [0, 1] and defocus targets (µm).
        """
        rng = np.random.default_rng(self.step_seed(step))
        bank = self.bank
        idx = rng.integers(0, len(bank), size=self.batch_size)
        a, b = bank.pairs(idx)
        d = bank.defocus_um[idx]
        off = (_PATCH_PX - self.patch_px) // 2
        crop = (slice(None), slice(off, off + self.patch_px), slice(off, off + self.patch_px))
        if self.mode == "pairs":
            x = torch.stack(
                [images_to_tensor(a[crop]), images_to_tensor(b[crop])], dim=1
            )  # (B, 2, 3, P, P)
            return x, torch.from_numpy((d + bank.delta_um).astype(np.float32))
        second = rng.random(self.batch_size) < 0.5
        imgs = np.where(second[:, None, None, None], b, a)[crop]
        y = np.where(second, d + bank.delta_um, d).astype(np.float32)
        return images_to_tensor(np.ascontiguousarray(imgs)), torch.from_numpy(y)
