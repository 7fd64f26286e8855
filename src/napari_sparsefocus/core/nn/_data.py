"""Training data: on-the-fly batches from the simulator and from labelled user z-stacks.

Every stream here is a :class:`torch.utils.data.IterableDataset` whose batch
for training step ``s`` is a pure function of ``(seed, rank, s)``
(:meth:`StepStream.batch`). That makes training resumable bit for bit (a
resumed run asks for the same steps and gets the same batches) and gives
every DDP rank a disjoint stream. DataLoader workers split the steps
round-robin (worker ``w`` of ``W`` makes steps ``start + w``,
``start + w + W``, …), so their streams are disjoint too and the loader,
which collects from the workers in turn, returns the batches in step order.
Use them with ``DataLoader(stream, batch_size=None, num_workers=W)``.

Batches are ``(inputs, targets)`` float32 tensors; images are RGB in
[0, 1] (camera counts divided by the dtype's maximum, as at inference).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset, get_worker_info

from napari_sparsefocus.core import SPECIMEN_KINDS, Optics, PatchSampler, simulate_field

if TYPE_CHECKING:
    import os
    from collections.abc import Iterator, Sequence

    from numpy.typing import NDArray

__all__ = [
    "RIN_FIELD_PX",
    "RIN_PATCH_PX",
    "SPARSITY_PROBABILITIES",
    "DPNPatchStream",
    "DefocusPairStream",
    "RINFieldStream",
    "StackLabelStream",
    "StepStream",
    "derive_seed",
    "images_to_tensor",
]

logger = logging.getLogger(__name__)

#: Grid cell of the coarse RIN-resolution field (224 px at 4x coarser pixels).
RIN_PATCH_PX = 56
#: Coarse field side: the 9 × 9 grid of the 2016 px crop at 4x coarser pixels.
RIN_FIELD_PX = 9 * RIN_PATCH_PX
#: Sparsity levels drawn for RIN fields and their probabilities. Empty
#: fields are rarer: they teach "no content" but carry no positives.
SPARSITY_PROBABILITIES: dict[str, float] = {
    "dense": 0.3,
    "sparse": 0.3,
    "extremely_sparse": 0.3,
    "empty": 0.1,
}
_PATCH_PX = 224
_FULL_GRID = 9
_SPLITS = ("train", "test")
# tags keep the seed streams of different stream types apart
_TAG_DPN, _TAG_RIN, _TAG_PAIR, _TAG_LABEL = 101, 102, 103, 104
_MAX_REGIONS_PER_BATCH = 256


def derive_seed(*entropy: int) -> int:
    """Return a 63-bit seed derived from integers (``numpy.random.SeedSequence``).

    Parameters
    ----------
    *entropy : int
        Non-negative integers, e.g. ``(seed, tag, rank, step)``.

    Returns
    -------
    int
        A seed in ``[0, 2**63)``; different inputs give unrelated seeds.
    """
    if any(int(e) < 0 for e in entropy):
        raise ValueError(f"seed entropy must be non-negative integers, got {entropy}")
    state = np.random.SeedSequence([int(e) for e in entropy]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def images_to_tensor(images: NDArray[Any]) -> torch.Tensor:
    """Convert camera images ``(N, H, W[, C])`` to float32 ``(N, 3, H, W)`` in [0, 1].

    Parameters
    ----------
    images : ndarray
        Integer counts (divided by the dtype's maximum, as
        :func:`~napari_sparsefocus.core.nn._preprocess.to_float_rgb` does at
        inference) or floats in [0, 1]. Gray and 1-channel images are
        repeated to 3 channels; a 4th (alpha) channel is dropped.

    Returns
    -------
    torch.Tensor
        ``(N, 3, H, W)`` float32.
    """
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4 or a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"images must be (N, H, W) or (N, H, W, C), got shape {a.shape}")
    a = a[..., :3]
    if np.issubdtype(a.dtype, np.integer):
        scale = 1.0 / float(np.iinfo(a.dtype).max)
        a = np.require(a, requirements=("C", "W"))  # memmaps are read-only
        t = torch.from_numpy(a).to(torch.float32) * scale
    else:
        t = torch.from_numpy(np.require(a, dtype=np.float32, requirements=("C", "W")))
    t = t.clamp_(0.0, 1.0).permute(0, 3, 1, 2)  # (N, C, H, W)
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    return t.contiguous()


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")


def _check_range(defocus_range_um: Sequence[float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in defocus_range_um)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(
            f"defocus_range_um must be finite (lo, hi) with lo < hi, got {tuple(defocus_range_um)}"
        )
    return lo, hi


def _centre_crop(t: torch.Tensor, size_px: int) -> torch.Tensor:
    h, w = t.shape[-2:]
    if size_px > min(h, w):
        raise ValueError(f"crop {size_px} px does not fit in {h} x {w}")
    y0, x0 = (h - size_px) // 2, (w - size_px) // 2
    return t[..., y0 : y0 + size_px, x0 : x0 + size_px].contiguous()


class StepStream(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """Base class: an endless stream of batches, one per training step.

    Subclasses implement :meth:`batch`; the batch for ``step`` depends only
    on ``(seed, rank, step)`` through :meth:`step_seed`.

    Parameters
    ----------
    batch_size : int
        Samples per batch (per rank).
    seed : int
        Base seed.
    rank : int
        DDP rank (each rank gets a disjoint stream).
    start_step : int
        First step produced by iteration (resume point).
    stop_step : int, optional
        Iteration ends before this step (default: endless).
    """

    _tag = 100

    def __init__(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        start_step: int = 0,
        stop_step: int | None = None,
    ) -> None:
        super().__init__()
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(seed) < 0 or int(rank) < 0 or int(start_step) < 0:
            raise ValueError("seed, rank and start_step must be >= 0")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.start_step = int(start_step)
        self.stop_step = None if stop_step is None else int(stop_step)

    def step_seed(self, step: int) -> int:
        """Return the seed of ``step``'s batch, derived from ``(seed, rank, step)``.

        Parameters
        ----------
        step : int
            Training step (>= 0).

        Returns
        -------
        int
            Seed.
        """
        return derive_seed(self.seed, self._tag, self.rank, int(step))

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the ``(inputs, targets)`` batch of ``step``.

        Parameters
        ----------
        step : int
            Training step.

        Returns
        -------
        tuple of torch.Tensor
            Inputs and targets.
        """
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        step = self.start_step + worker
        while self.stop_step is None or step < self.stop_step:
            yield self.batch(step)
            step += n_workers


class DPNPatchStream(StepStream):
    """224 px patches with defocus labels for the DPN (and the single-shot baselines).

    Parameters
    ----------
    batch_size : int
        Patches per batch.
    optics : Optics, optional
        Default ``Optics()``.
    split : {"train", "test"}
        Simulator seed stream (use "train" for training).
    seed : int
        Base seed.
    defocus_range_um : tuple of float
        Uniform defocus range.
    positives_only : bool
        Keep only content patches (W* = 1), as the paper's L2 loss on
        positive patches; else all patches.
    kinds : sequence of str
        Specimen kinds.
    rank, start_step, stop_step
        See :class:`StepStream`.
    patch_px : int
        Centre crop of the 224 px patches (smaller only for quick tests).
    planes_per_region : int
        Defocus values rendered per simulated region (each gives 9 patches).
    max_patches_per_plane : int, optional
        Keep at most this many (randomly chosen) patches of each rendered
        plane, so a batch mixes several specimens and defocus values
        (``None``: keep all).
    content_probability : float
        Probability that a region cell holds content.

    Notes
    -----
    Each batch comes from fresh :class:`~napari_sparsefocus.core.PatchSampler`
    regions seeded by the step's seed, taking patches until the batch is
    full. With the defaults a batch of 16 holds 4 specimens at 4 defocus
    values and costs 4 regions (~0.2 s each on one CPU core): diversity is
    bought with rendering time; raise ``planes_per_region`` and
    ``max_patches_per_plane`` for cheaper, more correlated batches.
    Targets are ``(B,)`` defocus in µm.
    """

    _tag = _TAG_DPN

    def __init__(
        self,
        batch_size: int,
        *,
        optics: Optics | None = None,
        split: str = "train",
        seed: int = 0,
        defocus_range_um: tuple[float, float] = (-25.0, 25.0),
        positives_only: bool = True,
        kinds: Sequence[str] = ("cell", "tissue"),
        rank: int = 0,
        start_step: int = 0,
        stop_step: int | None = None,
        patch_px: int = _PATCH_PX,
        planes_per_region: int = 1,
        max_patches_per_plane: int | None = 4,
        content_probability: float = 0.6,
    ) -> None:
        super().__init__(
            batch_size, seed=seed, rank=rank, start_step=start_step, stop_step=stop_step
        )
        _check_split(split)
        for k in kinds:
            if k not in SPECIMEN_KINDS:
                raise ValueError(f"kind must be one of {SPECIMEN_KINDS}, got {k!r}")
        if not 8 <= int(patch_px) <= _PATCH_PX:
            raise ValueError(f"patch_px must be in [8, {_PATCH_PX}], got {patch_px}")
        if positives_only and content_probability <= 0:
            raise ValueError("positives_only needs content_probability > 0")
        self.optics = optics or Optics()
        self.split = split
        self.defocus_range_um = _check_range(defocus_range_um)
        self.positives_only = bool(positives_only)
        self.kinds = tuple(kinds)
        self.patch_px = int(patch_px)
        if int(planes_per_region) < 1:
            raise ValueError(f"planes_per_region must be >= 1, got {planes_per_region}")
        if max_patches_per_plane is not None and int(max_patches_per_plane) < 1:
            raise ValueError(f"max_patches_per_plane must be >= 1, got {max_patches_per_plane}")
        self.planes_per_region = int(planes_per_region)
        self.max_patches_per_plane = (
            None if max_patches_per_plane is None else int(max_patches_per_plane)
        )
        self.content_probability = float(content_probability)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(images (B, 3, P, P), defocus_um (B,))`` for ``step``.

        Parameters
        ----------
        step : int
            Training step.

        Returns
        -------
        tuple of torch.Tensor
            Images in [0, 1] and defocus targets (µm).
        """
        sampler = PatchSampler(
            self.optics,
            kinds=self.kinds,
            content_probability=self.content_probability,
            defocus_range_um=self.defocus_range_um,
            planes_per_region=self.planes_per_region,
            split=self.split,
            seed=self.step_seed(step),
        )
        pick = np.random.default_rng(derive_seed(self.step_seed(step), 1))
        cap = self.max_patches_per_plane
        imgs: list[NDArray[Any]] = []
        dfs: list[NDArray[np.float64]] = []
        have = 0
        for _ in range(_MAX_REGIONS_PER_BATCH):
            region = sampler._region()
            per_plane = 9  # the sampler keeps the inner 3 × 3 patches of each plane
            for q in range(len(region.defocus_um) // per_plane):
                idx = np.arange(q * per_plane, (q + 1) * per_plane)
                if self.positives_only:
                    idx = idx[region.importance[idx] > 0.5]
                if cap is not None and len(idx) > cap:
                    idx = np.sort(pick.choice(idx, size=cap, replace=False))
                imgs.append(region.images[idx])
                dfs.append(region.defocus_um[idx])
                have += len(idx)
            if have >= self.batch_size:
                break
        else:
            raise RuntimeError(
                f"no {self.batch_size} positive patches in {_MAX_REGIONS_PER_BATCH} regions"
            )
        n = self.batch_size
        x = images_to_tensor(np.concatenate(imgs)[:n])  # (B, 3, 224, 224)
        if self.patch_px != _PATCH_PX:
            x = _centre_crop(x, self.patch_px)
        y = torch.from_numpy(np.concatenate(dfs)[:n].astype(np.float32))
        return x, y


class DefocusPairStream(StepStream):
    """Two shots of the same patch ``delta_um`` apart, for the Dastidar baseline.

    Parameters
    ----------
    batch_size : int
        Pairs per batch.
    optics : Optics, optional
        Default ``Optics()``.
    split : {"train", "test"}
        Simulator seed stream.
    seed : int
        Base seed.
    defocus_range_um : tuple of float
        Range of both shots' defocus (the first shot is drawn from
        ``[lo, hi - delta_um]``).
    delta_um : float
        Stage move between the shots (Dastidar & Ethirajan 2020: 2 µm,
        more than the ~1 µm depth of field, not much more).
    kinds : sequence of str
        Specimen kinds.
    rank, start_step, stop_step
        See :class:`StepStream`.
    patch_px : int
        Centre crop of the 224 px patches.
    planes_per_region : int
        Pairs rendered per simulated region.

    Notes
    -----
    Inputs are ``(B, 2, 3, P, P)``: ``[:, 0]`` at defocus ``d``, ``[:, 1]``
    at ``d + delta_um``. The target is the second shot's defocus
    ``d + delta_um`` (the paper labels the difference image ``I2 - I1``
    with ``z2``). Only content patches are used. Each region is a 3 × 3
    patch field from :func:`~napari_sparsefocus.core.simulate_field` with a
    one-patch margin around it, "dense" or "sparse" with equal odds.
    """

    _tag = _TAG_PAIR

    def __init__(
        self,
        batch_size: int,
        *,
        optics: Optics | None = None,
        split: str = "train",
        seed: int = 0,
        defocus_range_um: tuple[float, float] = (-25.0, 25.0),
        delta_um: float = 2.0,
        kinds: Sequence[str] = ("cell", "tissue"),
        rank: int = 0,
        start_step: int = 0,
        stop_step: int | None = None,
        patch_px: int = _PATCH_PX,
        planes_per_region: int = 2,
    ) -> None:
        super().__init__(
            batch_size, seed=seed, rank=rank, start_step=start_step, stop_step=stop_step
        )
        _check_split(split)
        for k in kinds:
            if k not in SPECIMEN_KINDS:
                raise ValueError(f"kind must be one of {SPECIMEN_KINDS}, got {k!r}")
        lo, hi = _check_range(defocus_range_um)
        if not (math.isfinite(delta_um) and 0 < delta_um < hi - lo):
            raise ValueError(f"delta_um must be in (0, {hi - lo}), got {delta_um}")
        if not 8 <= int(patch_px) <= _PATCH_PX:
            raise ValueError(f"patch_px must be in [8, {_PATCH_PX}], got {patch_px}")
        self.optics = optics or Optics()
        self.split = split
        self.defocus_range_um = (lo, hi)
        self.delta_um = float(delta_um)
        self.kinds = tuple(kinds)
        self.patch_px = int(patch_px)
        self.planes_per_region = int(planes_per_region)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(pairs (B, 2, 3, P, P), defocus_um (B,))`` for ``step``.

        Parameters
        ----------
        step : int
            Training step.

        Returns
        -------
        tuple of torch.Tensor
            Shot pairs in [0, 1] and the second shot's defocus (µm).
        """
        rng = np.random.default_rng(self.step_seed(step))
        lo, hi = self.defocus_range_um
        p = _PATCH_PX
        firsts: list[NDArray[Any]] = []
        seconds: list[NDArray[Any]] = []
        targets: list[float] = []
        for _ in range(_MAX_REGIONS_PER_BATCH):
            kind = self.kinds[int(rng.integers(len(self.kinds)))]
            level = "dense" if rng.random() < 0.5 else "sparse"
            fld = simulate_field(
                kind,
                level,
                self.optics,
                int(rng.integers(2**31 - 1)),
                shape_px=(3 * p, 3 * p),
                split=self.split,
            )
            cells = np.argwhere(fld.importance > 0.5)
            for d in rng.uniform(lo, hi - self.delta_um, size=self.planes_per_region):
                a = fld.snap_defocus(float(d), rng=rng)
                b = fld.snap_defocus(float(d) + self.delta_um, rng=rng)
                for i, j in cells:
                    sl = (slice(i * p, (i + 1) * p), slice(j * p, (j + 1) * p))
                    firsts.append(a[sl])
                    seconds.append(b[sl])
                    targets.append(float(d) + self.delta_um)
            if len(targets) >= self.batch_size:
                break
        else:
            raise RuntimeError(f"no {self.batch_size} content pairs in the regions drawn")
        n = self.batch_size
        xa = images_to_tensor(np.stack(firsts[:n]))
        xb = images_to_tensor(np.stack(seconds[:n]))
        x = torch.stack([xa, xb], dim=1)  # (B, 2, 3, 224, 224)
        if self.patch_px != p:
            x = _centre_crop(x, self.patch_px)
        return x, torch.tensor(targets[:n], dtype=torch.float32)


class RINFieldStream(StepStream):
    """Whole fields at RIN resolution with their 9 × 9 content-richness labels W*.

    Parameters
    ----------
    batch_size : int
        Fields per batch.
    optics : Optics, optional
        Default ``Optics()`` (the full-resolution optics; fields are rendered
        with a 4x coarser camera pixel, see Notes).
    split : {"train", "test"}
        Simulator seed stream.
    seed : int
        Base seed.
    input_px : int
        RIN input side (512 as in the paper; smaller for quick tests).
    defocus_range_um : tuple of float
        Uniform defocus range.
    kinds : sequence of str
        Specimen kinds.
    sparsity_probabilities : dict, optional
        Probability of each sparsity level (default
        :data:`SPARSITY_PROBABILITIES`: dense, sparse and extremely sparse
        0.3 each, empty 0.1).
    planes_per_field : int
        Defocus values rendered per field (amortises building the field;
        a batch of 16 holds 16 / planes_per_field different fields).
    grid_sizes : sequence of int
        Patches per side of the fields, drawn per batch (default ``(9,)``,
        the paper's 2016 px fields). Smaller grids are rendered as smaller
        fields and resized at the same scale as :func:`rin_input` does at
        inference (``input_px · g / 9``), with ``(B, g, g)`` targets: a
        camera of 1120 px (5 × 5 patches) is then seen as in training.
    rank, start_step, stop_step
        See :class:`StepStream`.

    Notes
    -----
    The paper resizes the 2016 px crop to 512 px (area averaging). Rendering
    2016² fields is too slow for on-the-fly training, so each field is
    rendered directly at 504 px through a camera with 4x larger pixels
    (``patch_px=56``: the same 348 µm field and 9 × 9 grid) and then resized
    504 → ``input_px`` bilinearly (``antialias=False``). This stands in for
    the area resize of the 2016 crop; both low-pass the field to the same
    ~0.68 µm sampling. Inputs ``(B, 3, input_px, input_px)`` in [0, 1];
    targets ``(B, 9, 9)`` float32 0/1.
    """

    _tag = _TAG_RIN

    def __init__(
        self,
        batch_size: int,
        *,
        optics: Optics | None = None,
        split: str = "train",
        seed: int = 0,
        input_px: int = 512,
        defocus_range_um: tuple[float, float] = (-25.0, 25.0),
        kinds: Sequence[str] = ("cell", "tissue"),
        sparsity_probabilities: dict[str, float] | None = None,
        planes_per_field: int = 2,
        grid_sizes: Sequence[int] = (_FULL_GRID,),
        rank: int = 0,
        start_step: int = 0,
        stop_step: int | None = None,
    ) -> None:
        super().__init__(
            batch_size, seed=seed, rank=rank, start_step=start_step, stop_step=stop_step
        )
        _check_split(split)
        sizes = tuple(int(g) for g in grid_sizes)
        if not sizes or any(not 1 <= g <= _FULL_GRID for g in sizes):
            raise ValueError(f"grid_sizes must be 1…{_FULL_GRID} patches, got {tuple(grid_sizes)}")
        self.grid_sizes = sizes
        for k in kinds:
            if k not in SPECIMEN_KINDS:
                raise ValueError(f"kind must be one of {SPECIMEN_KINDS}, got {k!r}")
        probs = dict(sparsity_probabilities or SPARSITY_PROBABILITIES)
        unknown = set(probs) - set(SPARSITY_PROBABILITIES)
        if unknown or not probs:
            raise ValueError(
                f"sparsity_probabilities keys must be among {tuple(SPARSITY_PROBABILITIES)}"
            )
        total = sum(probs.values())
        if any(v < 0 for v in probs.values()) or total <= 0:
            raise ValueError("sparsity_probabilities must be >= 0 with a positive sum")
        if int(input_px) < 32:
            raise ValueError(f"input_px must be >= 32, got {input_px}")
        if int(planes_per_field) < 1:
            raise ValueError(f"planes_per_field must be >= 1, got {planes_per_field}")
        self.optics = optics or Optics()
        self.coarse_optics = self.optics.replace(
            camera_pixel_size_um=4 * self.optics.camera_pixel_size_um
        )
        self.split = split
        self.input_px = int(input_px)
        self.defocus_range_um = _check_range(defocus_range_um)
        self.kinds = tuple(kinds)
        self.levels = tuple(probs)
        self.level_p = np.asarray([probs[k] / total for k in self.levels])
        self.planes_per_field = int(planes_per_field)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(fields (B, 3, S, S), importance (B, g, g))`` for ``step``.

        Parameters
        ----------
        step : int
            Training step.

        Returns
        -------
        tuple of torch.Tensor
            RIN inputs in [0, 1] and W* targets (0/1).
        """
        rng = np.random.default_rng(self.step_seed(step))
        grid = _FULL_GRID
        if self.grid_sizes != (_FULL_GRID,):  # (the default draws nothing: old streams unchanged)
            grid = self.grid_sizes[int(rng.integers(len(self.grid_sizes)))]
        field_px = RIN_FIELD_PX * grid // _FULL_GRID
        input_px = max(32, round(self.input_px * grid / _FULL_GRID))  # as rin_input scales
        lo, hi = self.defocus_range_um
        imgs: list[NDArray[Any]] = []
        maps: list[NDArray[np.float32]] = []
        while len(imgs) < self.batch_size:
            kind = self.kinds[int(rng.integers(len(self.kinds)))]
            level = str(rng.choice(self.levels, p=self.level_p))
            fld = simulate_field(
                kind,
                level,
                self.coarse_optics,
                int(rng.integers(2**31 - 1)),
                shape_px=(field_px, field_px),
                split=self.split,
                patch_px=RIN_PATCH_PX,
            )
            n = min(self.planes_per_field, self.batch_size - len(imgs))
            for d in rng.uniform(lo, hi, size=n):
                imgs.append(fld.snap_defocus(float(d), rng=rng))
                maps.append(fld.importance)
        x = images_to_tensor(np.stack(imgs))  # (B, 3, 504, 504) for 9 × 9
        if input_px != field_px:
            x = F.interpolate(
                x,
                size=(input_px, input_px),
                mode="bilinear",
                align_corners=False,
                antialias=False,
            ).clamp_(0.0, 1.0)
        y = torch.from_numpy(np.stack(maps).astype(np.float32))  # (B, g, g)
        return x.contiguous(), y


def _grid_geometry(h: int, w: int, patch_px: int) -> tuple[int, int, int, int]:
    """Return ``(gy, gx, y0, x0)`` of the centred crop on the patch grid (at most 9 × 9)."""
    gy, gx = min(_FULL_GRID, h // patch_px), min(_FULL_GRID, w // patch_px)
    if gy < 1 or gx < 1:
        raise ValueError(f"images of {h} x {w} px are smaller than one {patch_px} px patch")
    return gy, gx, (h - gy * patch_px) // 2, (w - gx * patch_px) // 2


class _StackInfo:
    """Lazily opened stack with its labels, valid planes and positive cells."""

    def __init__(self, data: Any, defocus_um: NDArray[np.float64], focal_plane: float) -> None:
        self.data = data
        self.defocus_um = defocus_um
        self.focal_plane = focal_plane
        shape = tuple(data.shape)
        self.n_planes = int(shape[0])
        self.h, self.w = int(shape[1]), int(shape[2])
        self.cells: NDArray[np.intp] = np.zeros((0, 2), np.intp)
        self.mask: NDArray[np.float32] | None = None
        self.geometry = (0, 0, 0, 0)
        self.planes: NDArray[np.intp] = np.zeros(0, np.intp)
        self.pair_offset = 0


class StackLabelStream(StepStream):
    """Batches from user z-stacks labelled with a label file (``io._labels``).

    Parameters
    ----------
    label_file : str or os.PathLike
        Label file (JSON); stack paths in it are relative to its folder.
    batch_size : int
        Samples per batch.
    seed : int
        Base seed.
    mode : {"patches", "fields", "pairs"}
        ``"patches"``: ``(B, 3, P, P)`` patches and ``(B,)`` defocus (µm)
        for the DPN and single-shot baselines. ``"fields"``: the crop
        area-resized to ``(B, 3, input_px, input_px)`` and ``(B, 9, 9)``
        content masks for the RIN (every stack needs a 9 × 9
        ``content_mask``). ``"pairs"``: ``(B, 2, 3, P, P)`` shots
        ``round(delta_um / z_step)`` planes apart and the second shot's
        defocus, for the Dastidar baseline.
    patch_px : int
        Grid patch size (224).
    input_px : int
        RIN input side in ``"fields"`` mode.
    delta_um : float
        Shot separation in ``"pairs"`` mode.
    defocus_range_um : tuple of float, optional
        Only planes whose defocus lies in this range are drawn.
    min_energy_fraction : float
        Without a content mask, a patch is positive when its gradient energy
        in the plane nearest focus is at least this fraction of the stack's
        largest patch energy.
    rank, start_step, stop_step
        See :class:`StepStream`.

    Notes
    -----
    Each plane's defocus is ``StackLabel.defocus_um(n_planes)``
    (``(i - focal_plane_index) · z_step_um``). Patches come from the centred
    crop on the 224 px grid (at most 9 × 9, the same rule as inference).
    Each sample draws a stack, then a plane in the defocus range, then a
    positive patch, uniformly; planes are read lazily (one patch at a time
    from memory-mapped files). Pixel sizes are not checked: the stacks must
    be at the pixel size the model is meant for.
    """

    _tag = _TAG_LABEL

    def __init__(
        self,
        label_file: str | os.PathLike[str],
        batch_size: int,
        *,
        seed: int = 0,
        mode: str = "patches",
        patch_px: int = _PATCH_PX,
        input_px: int = 512,
        delta_um: float = 2.0,
        defocus_range_um: tuple[float, float] | None = (-25.0, 25.0),
        min_energy_fraction: float = 0.25,
        rank: int = 0,
        start_step: int = 0,
        stop_step: int | None = None,
    ) -> None:
        super().__init__(
            batch_size, seed=seed, rank=rank, start_step=start_step, stop_step=stop_step
        )
        if mode not in ("patches", "fields", "pairs"):
            raise ValueError(f"mode must be 'patches', 'fields' or 'pairs', got {mode!r}")
        if not 0.0 <= min_energy_fraction <= 1.0:
            raise ValueError(f"min_energy_fraction must be in [0, 1], got {min_energy_fraction}")
        self.label_file = Path(label_file)
        if not self.label_file.is_file():
            raise FileNotFoundError(self.label_file)
        self.mode = mode
        self.patch_px = int(patch_px)
        self.input_px = int(input_px)
        self.delta_um = float(delta_um)
        self.defocus_range_um = None if defocus_range_um is None else _check_range(defocus_range_um)
        self.min_energy_fraction = float(min_energy_fraction)
        self._stacks: list[_StackInfo] | None = None

    # ------------------------------------------------------------------ setup
    def _open(self) -> list[_StackInfo]:
        if self._stacks is not None:
            return self._stacks
        from napari_sparsefocus.io import read_stack
        from napari_sparsefocus.io._labels import read_labels

        labels = read_labels(self.label_file)
        stacks: list[_StackInfo] = []
        for st in labels.stacks:
            path = st.resolve(self.label_file.parent)
            sd = read_stack(path)
            if not sd.axes.startswith("Z"):
                raise ValueError(f"{path}: a z-stack is needed, got axes {sd.axes!r}")
            # the label's z-step wins; the file's is the fallback
            z_step = sd.z_step_um if st.z_step_um is None else None
            info = _StackInfo(
                sd.data,
                np.asarray(st.defocus_um(sd.n_planes, z_step_um=z_step), dtype=np.float64),
                float(st.focal_plane_index),
            )
            gy, gx, y0, x0 = _grid_geometry(info.h, info.w, self.patch_px)
            info.geometry = (gy, gx, y0, x0)
            if st.content_mask is not None:
                mask = np.asarray(st.content_mask, dtype=np.float32)
                if mask.shape != (gy, gx):
                    raise ValueError(
                        f"{path}: content_mask has shape {mask.shape}, the crop's grid is "
                        f"{(gy, gx)}"
                    )
                info.mask = mask
                info.cells = np.argwhere(mask > 0.5)
            elif self.mode == "fields":
                raise ValueError(f"{path}: mode 'fields' needs a content_mask for every stack")
            else:
                info.cells = self._energy_cells(info)
            if self.mode == "fields" and (gy, gx) != (_FULL_GRID, _FULL_GRID):
                raise ValueError(f"{path}: mode 'fields' needs the full 9 x 9 grid")
            if self.mode == "pairs":
                dz = np.diff(info.defocus_um)
                step_um = float(np.median(dz)) if len(dz) else 0.0
                info.pair_offset = max(1, round(self.delta_um / step_um)) if step_um > 0 else 0
                if info.pair_offset:
                    info.planes = self._planes(info, info.pair_offset)
            else:
                info.planes = self._planes(info)
            stacks.append(info)
        if not any(self._usable(s) for s in stacks):
            raise ValueError(
                f"{self.label_file}: no stack has positive patches and planes in "
                f"defocus_range_um={self.defocus_range_um}"
                + (f" {self.delta_um} µm apart" if self.mode == "pairs" else "")
            )
        self._stacks = stacks
        return stacks

    def _energy_cells(self, info: _StackInfo) -> NDArray[np.intp]:
        """Cells whose gradient energy near focus is a good fraction of the best one."""
        gy, gx, y0, x0 = info.geometry
        p = self.patch_px
        z = int(np.clip(round(info.focal_plane), 0, info.n_planes - 1))
        crop = self._plane_rgb(info, z, y0, x0, gy * p, gx * p)
        gray = crop.mean(axis=-1)
        gyy = np.diff(gray, axis=0, append=gray[-1:])
        gxx = np.diff(gray, axis=1, append=gray[:, -1:])
        energy = (gyy**2 + gxx**2).reshape(gy, p, gx, p).mean(axis=(1, 3))  # (gy, gx)
        top = float(energy.max())
        if top <= 0:
            return np.zeros((0, 2), np.intp)
        return np.argwhere(energy >= self.min_energy_fraction * top)

    @staticmethod
    def _plane_rgb(info: _StackInfo, z: int, y0: int, x0: int, h: int, w: int) -> NDArray[Any]:
        """``(h, w, 3)`` float32 region of plane z in [0, 1]."""
        region = np.asarray(info.data[z, y0 : y0 + h, x0 : x0 + w])
        return images_to_tensor(region[None])[0].permute(1, 2, 0).numpy()

    def _planes(self, info: _StackInfo, offset: int = 0) -> NDArray[np.intp]:
        """Planes i (and i + offset) whose defocus lies in ``defocus_range_um``."""
        idx = np.arange(max(0, info.n_planes - offset))
        if self.defocus_range_um is not None:
            lo, hi = self.defocus_range_um
            d0, d1 = info.defocus_um[idx], info.defocus_um[idx + offset]
            idx = idx[(d0 >= lo) & (d0 <= hi) & (d1 >= lo) & (d1 <= hi)]
        return idx

    # ------------------------------------------------------------------ batches
    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the batch of ``step`` (see the class docstring for shapes).

        Parameters
        ----------
        step : int
            Training step.

        Returns
        -------
        tuple of torch.Tensor
            Inputs in [0, 1] and targets.
        """
        stacks = self._open()
        usable = [s for s in stacks if self._usable(s)]
        rng = np.random.default_rng(self.step_seed(step))
        p = self.patch_px
        xs: list[torch.Tensor] = []
        ys: list[Any] = []
        for _ in range(self.batch_size):
            info = usable[int(rng.integers(len(usable)))]
            gy, gx, y0, x0 = info.geometry
            z = int(info.planes[int(rng.integers(len(info.planes)))])
            if self.mode == "fields":
                crop = self._plane_rgb(info, z, y0, x0, gy * p, gx * p)
                t = torch.from_numpy(crop).permute(2, 0, 1)[None]  # (1, 3, H, W)
                xs.append(F.interpolate(t, size=(self.input_px, self.input_px), mode="area")[0])
                ys.append(torch.from_numpy(np.asarray(info.mask, dtype=np.float32)))
                continue
            i, j = info.cells[int(rng.integers(len(info.cells)))]
            py, px = y0 + int(i) * p, x0 + int(j) * p
            a = torch.from_numpy(self._plane_rgb(info, z, py, px, p, p)).permute(2, 0, 1)
            if self.mode == "patches":
                xs.append(a)
                ys.append(float(info.defocus_um[z]))
            else:  # pairs: (2, 3, P, P), the second shot's defocus
                z2 = z + info.pair_offset
                b = torch.from_numpy(self._plane_rgb(info, z2, py, px, p, p)).permute(2, 0, 1)
                xs.append(torch.stack([a, b]))
                ys.append(float(info.defocus_um[z2]))
        x = torch.stack(xs).contiguous()
        if self.mode == "fields":
            return x, torch.stack(ys)
        return x, torch.tensor(ys, dtype=torch.float32)

    def _usable(self, info: _StackInfo) -> bool:
        return len(info.planes) > 0 and (self.mode == "fields" or len(info.cells) > 0)
