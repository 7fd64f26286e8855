"""Training loop: Adam, augmentation, resumable checkpoints, DDP (torchrun), progress.

:func:`iter_train` is a generator (yielding :class:`TrainProgress` every
``log_every`` steps and returning a :class:`TrainResult`), so napari's
``create_worker`` can run it and stop it between yields. The command line
(``python -m napari_sparsefocus.core.nn._train`` or ``sparsefocus train``)
wraps it with a progress bar.

Reproducibility: the batch of step ``s``, its augmentation and the global
torch RNG used by dropout are all derived from ``(seed, rank, s)``, and a
checkpoint holds the model, the Adam state and the step. A run killed and
resumed to the same number of steps therefore ends with the same weights as
an uninterrupted run (bit for bit on CPU with a fixed thread count).

Losses (SparseFocus, Section 4.3): the Region Importance Network is trained
with binary cross-entropy (on logits) against the content-richness matrix
W*; the Defocus Prediction Network and the single-shot baselines (Liao,
Jiang) with the L2 loss (mean squared error in µm²) on content patches; the
Dastidar baseline with the L2 loss on the prepared difference of two shots
``delta_um`` apart (default 2 µm, as in Dastidar & Ethirajan 2020).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import logging
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from napari_sparsefocus._version import __version__
from napari_sparsefocus.core import Optics

from ._augment import apply_augment, apply_dihedral, sample_augment_params
from ._bank import PatchBank, PatchBankStream, is_patch_bank
from ._data import (
    SPARSITY_PROBABILITIES,
    DefocusPairStream,
    DPNPatchStream,
    RINFieldStream,
    StackLabelStream,
    StepStream,
    derive_seed,
)
from ._registry import NETWORKS, build_network

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator, Sequence

__all__ = [
    "CHECKPOINT_FORMAT",
    "DEFAULT_LR",
    "LR_SCHEDULES",
    "CheckpointMismatchError",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "add_train_arguments",
    "combine_sparsefocus_model",
    "compute_loss",
    "config_from_args",
    "find_checkpoint",
    "iter_train",
    "main",
    "run_train_from_args",
    "train",
]

# a fixed name: under ``python -m`` / torchrun this module runs as ``__main__``
logger = logging.getLogger("napari_sparsefocus.core.nn._train")

#: Learning rates of the paper (Section 4.4): 5e-5 for the RIN, 1e-4 for the DPN
#: (also used for the baselines).
DEFAULT_LR: dict[str, float] = {
    "rin": 5e-5,
    "dpn": 1e-4,
    "liao": 1e-4,
    "jiang": 1e-4,
    "dastidar": 1e-4,
}
#: ``format`` entry of checkpoint sidecars.
CHECKPOINT_FORMAT = "napari-sparsefocus-checkpoint"
_CHECKPOINT_VERSION = 1
_MODEL_FORMAT = "napari-sparsefocus-model"
_CKPT_RE = re.compile(r"^ckpt_(\d{8,})\.json$")
_PATCH_PX = 224
_RIN_INPUT_PX = 512
# seed-stream tags (distinct from the data streams' tags)
_TAG_TORCH, _TAG_AUG = 201, 202
#: Weight (µm²) of the side-of-focus BCE of a sign-magnitude DPN.
SIDE_LOSS_WEIGHT = 10.0
#: Learning-rate schedules of :class:`TrainConfig`.
LR_SCHEDULES = ("constant", "cosine")
# fields that must agree between a checkpoint and the run resuming from it
_IDENTITY_FIELDS = (
    "network",
    "network_config",
    "batch_size",
    "lr",
    "weight_decay",
    "seed",
    "data",
    "defocus_range_um",
    "optics",
    "input_px",
    "delta_um",
    "augment",
    "init_from",
    "lr_schedule",
)


class CheckpointMismatchError(ValueError):
    """A checkpoint in the output folder belongs to another training configuration."""


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    Parameters
    ----------
    network : {"rin", "dpn", "liao", "jiang", "dastidar"}
        Network to train (registry name).
    network_config : dict
        Architecture overrides for :func:`build_network` (empty: defaults).
    steps : int
        Total optimisation steps.
    batch_size : int
        Samples per step and rank (the paper: 16 for the RIN, 128 for the DPN).
    lr : float, optional
        Adam learning rate (default :data:`DEFAULT_LR`, the paper's values).
        The paper gives only the initial rate; see ``lr_schedule``.
    weight_decay : float
        Adam L2 weight decay.
    checkpoint_every : int
        Steps between checkpoints (and one at the end).
    log_every : int
        Steps between progress records.
    seed : int
        Seed of the weights' initialisation, the data and the augmentation.
    out_dir : str
        Output folder: ``checkpoints/`` and the final model
        ``<network>.safetensors`` + ``<network>.json``.
    data : str
        ``"simulated"`` (on-the-fly simulator) or the path of a label file
        (user z-stacks, see :mod:`napari_sparsefocus.io._labels`).
    defocus_range_um : tuple of float
        Defocus range of the training data (µm).
    optics : dict
        :meth:`Optics.to_dict` fields overriding the defaults (the simulator's
        optics, recorded in the model file).
    num_threads : int, optional
        ``torch.set_num_threads`` for the run (process-wide).
    input_px : int, optional
        RIN: input side (default 512). Patch networks on simulated data:
        centre crop of the 224 px patches (default 224; smaller only for
        quick tests; label-file patches are always 224 px).
    delta_um : float
        Dastidar: stage move between the two shots (µm).
    augment : bool
        Colour jitter (the paper's ranges) and random quarter turns / mirrors.
    num_workers : int
        DataLoader worker processes producing batches (0: in the loop).
    keep_checkpoints : int
        Number of most recent checkpoints kept.
    dump_rank_state : bool
        After the last step every rank writes its replica's weights to
        ``out_dir/rank{R}.safetensors`` (checks DDP replicas agree).
    command : str
        The command line that started the run (recorded in the model file).
    init_from : str, optional
        Model file whose weights for this network start the run (fine-tuning,
        e.g. on label files written by annotators, or a curriculum stage).
        A SparseFocus pipeline file contributes its ``dpn.``/``rin.`` part.
    lr_schedule : {"constant", "cosine"}
        ``"constant"`` (the paper's, as far as it says) or ``"cosine"``: 3 %
        linear warm-up, then cosine decay to 2 % of ``lr`` at ``steps``. The
        rate is a function of the step, so resumed runs stay bit-identical.
    rin_grid_sizes : tuple of int, optional
        RIN on simulated data: patches per side of the training fields, one
        drawn per batch (default: the paper's 9 × 9 only). Smaller grids
        teach the RIN the fields of smaller cameras (1120 px = 5 × 5).
    rin_levels : tuple of str, optional
        RIN on simulated data: the sparsity levels of the training fields,
        drawn uniformly from this tuple (repeat a level to weight it; default
        dense, sparse and extremely sparse 0.3 each, empty 0.1).
    """

    network: str = "dpn"
    network_config: dict[str, Any] = field(default_factory=dict)
    steps: int = 10_000
    batch_size: int = 16
    lr: float | None = None
    weight_decay: float = 0.0
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0
    out_dir: str = "sparsefocus-run"
    data: str = "simulated"
    defocus_range_um: tuple[float, float] = (-25.0, 25.0)
    optics: dict[str, Any] = field(default_factory=dict)
    num_threads: int | None = None
    input_px: int | None = None
    delta_um: float = 2.0
    augment: bool = True
    num_workers: int = 0
    keep_checkpoints: int = 2
    dump_rank_state: bool = False
    command: str = ""
    init_from: str | None = None
    lr_schedule: str = "constant"
    rin_grid_sizes: tuple[int, ...] | None = None
    rin_levels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise ValueError(f"network must be one of {sorted(NETWORKS)}, got {self.network!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not isinstance(self.network_config, dict):
            raise ValueError("network_config must be a dict")
        NETWORKS[self.network][1].from_dict(self.network_config)  # validates keys and values
        object.__setattr__(self, "network_config", json.loads(json.dumps(self.network_config)))
        for name, least in (
            ("steps", 1),
            ("batch_size", 1),
            ("checkpoint_every", 1),
            ("log_every", 1),
            ("seed", 0),
            ("num_workers", 0),
            ("keep_checkpoints", 1),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {v!r}")
        for name in ("num_threads", "input_px"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        if self.rin_grid_sizes is not None:
            sizes = tuple(self.rin_grid_sizes)
            if self.network != "rin":
                raise ValueError("rin_grid_sizes applies to the RIN only")
            if not sizes or any(
                isinstance(g, bool) or not isinstance(g, int) or not 1 <= g <= 9 for g in sizes
            ):
                raise ValueError(
                    f"rin_grid_sizes must be integers 1…9, got {self.rin_grid_sizes!r}"
                )
            object.__setattr__(self, "rin_grid_sizes", sizes)
        if self.rin_levels is not None:
            levels = tuple(self.rin_levels)
            if self.network != "rin":
                raise ValueError("rin_levels applies to the RIN only")
            if not levels or any(lv not in SPARSITY_PROBABILITIES for lv in levels):
                raise ValueError(
                    f"rin_levels must be among {tuple(SPARSITY_PROBABILITIES)}, "
                    f"got {self.rin_levels!r}"
                )
            object.__setattr__(self, "rin_levels", levels)
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        lo, hi = (float(x) for x in self.defocus_range_um)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"defocus_range_um must be (lo, hi) with lo < hi, got {(lo, hi)}")
        object.__setattr__(self, "defocus_range_um", (lo, hi))
        Optics.from_dict(dict(self.optics))  # validates (unknown fields, values)
        object.__setattr__(self, "optics", json.loads(json.dumps(self.optics)))
        if not (math.isfinite(self.delta_um) and 0 < self.delta_um < hi - lo):
            raise ValueError(f"delta_um must be in (0, {hi - lo}), got {self.delta_um!r}")
        if self.data != "simulated" and not (Path(self.data).is_file() or is_patch_bank(self.data)):
            raise ValueError(
                "data must be 'simulated', an existing label file or a patch-bank folder, "
                f"got {self.data!r}"
            )
        if self.network == "rin" and is_patch_bank(self.data):
            raise ValueError("a patch bank holds patches, not fields: the RIN cannot use it")
        if self.network == "rin" and self.input_px is not None and self.input_px < 32:
            raise ValueError(f"the RIN needs input_px >= 32, got {self.input_px}")
        if self.network != "rin" and self.input_px is not None and self.input_px > _PATCH_PX:
            raise ValueError(f"input_px of a patch network must be <= {_PATCH_PX}")

    def lr_at(self, step: int) -> float:
        """Return the learning rate of ``step`` (0-based) under ``lr_schedule``.

        Parameters
        ----------
        step : int
            Optimisation step.

        Returns
        -------
        float
            Learning rate.
        """
        base = self.learning_rate
        if self.lr_schedule == "constant":
            return base
        warm = max(1, round(0.03 * self.steps))
        if step < warm:
            return base * (step + 1) / warm
        frac = min(1.0, (step - warm) / max(1, self.steps - warm))
        return base * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * frac)))

    @property
    def learning_rate(self) -> float:
        """The Adam learning rate (``lr`` or the paper's default for the network)."""
        return float(self.lr) if self.lr is not None else DEFAULT_LR[self.network]

    @property
    def resolved_input_px(self) -> int:
        """RIN input side or patch side actually used."""
        if self.input_px is not None:
            return self.input_px
        return _RIN_INPUT_PX if self.network == "rin" else _PATCH_PX

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of the fields."""
        d = asdict(self)
        d["defocus_range_um"] = list(self.defocus_range_um)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from :meth:`to_dict` output; unknown keys raise ``ValueError``.

        Parameters
        ----------
        data : dict
            Field values.

        Returns
        -------
        TrainConfig
        """
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {sorted(unknown)}")
        kw = dict(data)
        if "defocus_range_um" in kw:
            kw["defocus_range_um"] = tuple(kw["defocus_range_um"])
        for name in ("rin_grid_sizes", "rin_levels"):
            if kw.get(name) is not None:
                kw[name] = tuple(kw[name])
        return cls(**kw)

    def identity(self) -> dict[str, Any]:
        """Return the fields a resumed run must share with its checkpoint.

        ``steps``, logging, checkpointing, threads, workers and the output
        folder may change between runs; everything that changes the weights
        may not. Defaults are filled in (network config, optics, ``lr``,
        ``input_px``) and ``data`` is made absolute.

        Returns
        -------
        dict
            JSON-serialisable identity.
        """
        d = self.to_dict()
        out = {k: d[k] for k in _IDENTITY_FIELDS}
        # defaults spelled out or left implicit must compare equal
        out["network_config"] = NETWORKS[self.network][1].from_dict(self.network_config).to_dict()
        out["optics"] = Optics.from_dict(dict(self.optics)).to_dict()
        out["lr"] = self.learning_rate
        out["input_px"] = self.resolved_input_px
        # (absent from older checkpoints: 9 × 9 fields, the default level mix)
        if self.rin_grid_sizes is not None:
            out["rin_grid_sizes"] = list(self.rin_grid_sizes)
        if self.rin_levels is not None:
            out["rin_levels"] = list(self.rin_levels)
        if self.data != "simulated":
            out["data"] = str(Path(self.data).resolve())
        return out


@dataclass(frozen=True)
class TrainProgress:
    """A progress record yielded every ``log_every`` steps.

    Attributes
    ----------
    step : int
        Steps completed.
    steps : int
        Total steps of the run.
    loss : float
        Mean training loss over the steps since the last record (all ranks).
    lr : float
        Current learning rate.
    samples_per_s : float
        Training throughput since the last record (all ranks).
    elapsed_s : float
        Wall time since the run (or its resumption) started.
    """

    step: int
    steps: int
    loss: float
    lr: float
    samples_per_s: float
    elapsed_s: float


@dataclass(frozen=True)
class TrainResult:
    """The outcome of :func:`iter_train`.

    Attributes
    ----------
    step : int
        Final step.
    loss : float
        Loss of the final step (rank 0's batch).
    model_path : Path
        The model weights (``<out_dir>/<network>.safetensors``; its JSON
        config sits next to it).
    checkpoint_path : Path or None
        The last checkpoint's sidecar.
    out_dir : Path
        Output folder.
    resumed_from : int or None
        Step the run resumed from (None: started fresh).
    """

    step: int
    loss: float
    model_path: Path
    checkpoint_path: Path | None
    out_dir: Path
    resumed_from: int | None


# --------------------------------------------------------------------------- losses
def compute_loss(
    network: str, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Return the training loss of one batch.

    Parameters
    ----------
    network : str
        Registry name of the network (selects the loss).
    model : torch.nn.Module
        The network (possibly DDP-wrapped).
    inputs : torch.Tensor
        RIN: ``(N, 3, H, W)``; patch networks: ``(N, 3, P, P)`` (Jiang
        prepares its two-domain input itself); Dastidar: the prepared
        difference ``(N, 1, P, P)`` (see :func:`_prepare_inputs`).
    targets : torch.Tensor
        RIN: W* ``(N, rows, cols)`` in {0, 1}; others: defocus ``(N,)`` µm.

    Returns
    -------
    torch.Tensor
        Scalar loss: BCE-with-logits for the RIN, mean squared error in µm²
        for the others; for a DPN with the sign-magnitude head, the L2 of its
        magnitude against ``|defocus|`` plus :data:`SIDE_LOSS_WEIGHT` × the
        BCE of its side-of-focus logit against ``defocus > 0``.
    """
    if network == "rin":
        out = model(inputs, grid=(int(targets.shape[-2]), int(targets.shape[-1])))
        if out.shape != targets.shape:
            raise ValueError(
                f"RIN output {tuple(out.shape)} does not match the targets {tuple(targets.shape)}"
            )
        return F.binary_cross_entropy_with_logits(out, targets)
    out = model(inputs)
    parts = getattr(_unwrap(model), "last_head_parts", None)
    if parts is None:
        return F.mse_loss(out.reshape(targets.shape), targets)
    # sign-magnitude head: the signed L2 has a saddle at "predict 0" while the side of
    # focus is unknown, and its gradient on the side is dominated by far-from-focus
    # patches whose side is barely visible. The magnitude gets its own L2 and the side
    # a BCE, every patch weighing alike (the output m·tanh(side_gain·b) combines them).
    magnitude, side_logit = parts
    side = (targets > 0).to(side_logit.dtype)
    return F.mse_loss(magnitude.reshape(targets.shape), targets.abs()) + (
        SIDE_LOSS_WEIGHT
        * F.binary_cross_entropy_with_logits(side_logit.reshape(targets.shape), side)
    )


def _unwrap(model: nn.Module) -> nn.Module:
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    if not isinstance(inner, nn.Module):  # pragma: no cover - DDP always wraps a module
        raise TypeError("not a module")
    return inner


def _prepare_inputs(
    network: str,
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch (if ``generator``) and build the network's input."""
    if network == "dastidar":
        # (N, 2, 3, P, P): both shots get the same augmentation
        a, b = inputs[:, 0], inputs[:, 1]
        if generator is not None:
            params = sample_augment_params(a.shape[0], generator)
            a, b = apply_augment(a, params), apply_augment(b, params)
        prepare = getattr(_unwrap(model), "prepare", None)
        if prepare is None:
            raise TypeError("the Dastidar network needs a prepare(shot_a, shot_b) method")
        return prepare(a, b), targets
    if generator is not None:
        params = sample_augment_params(inputs.shape[0], generator)
        inputs = apply_augment(inputs, params)
        if network == "rin":
            targets = apply_dihedral(targets, params)  # W* turns with the field
    return inputs, targets


# --------------------------------------------------------------------------- distributed
@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized: bool = False

    @classmethod
    def from_env(cls) -> _Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        cuda = torch.cuda.is_available()
        if world <= 1:
            return cls(device=torch.device("cuda" if cuda else "cpu"))
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if cuda:
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        else:
            device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if cuda else "gloo")
            initialized = True
        else:  # someone else owns the group
            initialized = False
        return cls(rank, world, local, device, initialized)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def close(self) -> None:
        if self.initialized and dist.is_initialized():
            dist.destroy_process_group()
            self.initialized = False


# --------------------------------------------------------------------------- checkpoints
def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _checkpoint_dir(out_dir: Path) -> Path:
    return out_dir / "checkpoints"


def _list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    d = _checkpoint_dir(out_dir)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _CKPT_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def _read_checkpoint(sidecar: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    meta = json.loads(sidecar.read_text(encoding="utf-8"))
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{sidecar}: not a {CHECKPOINT_FORMAT} sidecar")
    if int(meta.get("version", 0)) > _CHECKPOINT_VERSION:
        raise ValueError(f"{sidecar}: checkpoint version {meta.get('version')} is too new")
    blob = (sidecar.parent / str(meta["tensors_file"])).read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("tensors_sha256"):
        raise ValueError(f"{sidecar}: the tensors file does not match its checksum")
    return meta, st_load(blob)


def find_checkpoint(
    out_dir: str | os.PathLike[str],
) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """Return the newest complete, intact checkpoint in ``out_dir``.

    Parameters
    ----------
    out_dir : str or os.PathLike
        A training output folder.

    Returns
    -------
    tuple or None
        ``(sidecar dict, tensors)`` or ``None`` if there is none. Damaged
        checkpoints (missing tensors, checksum mismatch) are skipped with a
        warning.
    """
    for _, sidecar in reversed(_list_checkpoints(Path(out_dir))):
        try:
            return _read_checkpoint(sidecar)
        except (OSError, ValueError, KeyError) as e:
            logger.warning("skipping damaged checkpoint %s: %s", sidecar, e)
    return None


def _optimizer_tensors(
    opt: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if not isinstance(val, torch.Tensor):
                raise TypeError(f"optimizer state {key!r} is not a tensor")
            tensors[f"optim.{pid}.{key}"] = val.detach().cpu().contiguous()
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in sd["param_groups"]
    ]
    return tensors, groups


def _load_optimizer(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, val in tensors.items():
        if not name.startswith("optim."):
            continue
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = val
    pg = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    opt.load_state_dict({"state": state, "param_groups": pg})


def _save_checkpoint(
    out_dir: Path,
    step: int,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    world_size: int,
    loss: float,
) -> Path:
    d = _checkpoint_dir(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_tensors, groups = _optimizer_tensors(opt)
    tensors.update(opt_tensors)
    blob = st_save(tensors, metadata={"format": CHECKPOINT_FORMAT, "step": str(step)})
    name = f"ckpt_{step:08d}"
    _atomic_write(d / f"{name}.safetensors", blob)
    cuda_states = (
        [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []
    )
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": _CHECKPOINT_VERSION,
        "step": step,
        "loss": loss,
        "network": cfg.network,
        "network_config": _network_config_dict(model),
        "identity": cfg.identity(),
        "train_config": cfg.to_dict(),
        "world_size": world_size,
        "optimizer": {"type": type(opt).__name__, "param_groups": groups},
        "rng": {
            "note": "batches, augmentation and dropout are reseeded from (seed, rank, step)",
            "torch_cpu": torch.get_rng_state().tolist(),
            "torch_cuda": cuda_states,
        },
        "tensors_file": f"{name}.safetensors",
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
        "package_version": __version__,
    }
    sidecar = d / f"{name}.json"
    _atomic_write(sidecar, json.dumps(meta, indent=1).encode("utf-8"))
    for old_step, old in _list_checkpoints(out_dir)[: -cfg.keep_checkpoints]:
        if old_step >= step:  # never delete what was just written
            continue
        old.unlink(missing_ok=True)
        (d / f"ckpt_{old_step:08d}.safetensors").unlink(missing_ok=True)
    return sidecar


def _network_config_dict(model: nn.Module) -> dict[str, Any]:
    conf = getattr(model, "config", None)
    to_dict = getattr(conf, "to_dict", None)
    if to_dict is None:
        return {}
    out = to_dict()
    if not isinstance(out, dict):
        raise TypeError("network config to_dict() must return a dict")
    return out


def _check_identity(meta: dict[str, Any], cfg: TrainConfig, out_dir: Path) -> None:
    theirs = meta.get("identity", {})
    mine = json.loads(json.dumps(cfg.identity()))
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if diff:
        details = "; ".join(f"{k}: checkpoint {theirs.get(k)!r}, now {mine.get(k)!r}" for k in diff)
        raise CheckpointMismatchError(
            f"{_checkpoint_dir(out_dir)} holds a checkpoint (step {meta.get('step')}) of a "
            f"different training configuration ({details}). Resume with the same settings, "
            "choose another out_dir, or start over with resume=False (--no-resume), which "
            "deletes those checkpoints."
        )


# --------------------------------------------------------------------------- data
def _make_stream(cfg: TrainConfig, rank: int, start_step: int) -> StepStream:
    optics = Optics.from_dict(dict(cfg.optics))
    common: dict[str, Any] = {
        "seed": cfg.seed,
        "rank": rank,
        "start_step": start_step,
        "stop_step": cfg.steps,
    }
    px = cfg.resolved_input_px
    if is_patch_bank(cfg.data):
        bank = PatchBank(cfg.data)
        if bank.optics != optics:
            raise ValueError(
                f"the patch bank {cfg.data} was rendered for other optics than the run's "
                "(pass the bank's optics with --optics)"
            )
        if cfg.network == "dastidar" and not math.isclose(bank.delta_um, cfg.delta_um):
            raise ValueError(
                f"the patch bank's shot step is {bank.delta_um} µm, the run's delta_um "
                f"{cfg.delta_um}"
            )
        mode = "pairs" if cfg.network == "dastidar" else "single"
        return PatchBankStream(bank, cfg.batch_size, mode=mode, patch_px=px, **common)
    if cfg.data != "simulated":
        mode = {"rin": "fields", "dastidar": "pairs"}.get(cfg.network, "patches")
        size = {"input_px": px} if mode == "fields" else {}
        return StackLabelStream(
            cfg.data,
            cfg.batch_size,
            mode=mode,
            delta_um=cfg.delta_um,
            defocus_range_um=cfg.defocus_range_um,
            **size,
            **common,
        )
    if cfg.network == "rin":
        return RINFieldStream(
            cfg.batch_size,
            optics=optics,
            input_px=px,
            defocus_range_um=cfg.defocus_range_um,
            grid_sizes=cfg.rin_grid_sizes or (9,),
            sparsity_probabilities=(
                None
                if cfg.rin_levels is None
                else {lv: cfg.rin_levels.count(lv) for lv in dict.fromkeys(cfg.rin_levels)}
            ),
            **common,
        )
    if cfg.network == "dastidar":
        return DefocusPairStream(
            cfg.batch_size,
            optics=optics,
            defocus_range_um=cfg.defocus_range_um,
            delta_um=cfg.delta_um,
            patch_px=px,
            **common,
        )
    # two defocus values per rendered region and up to 8 positive patches per plane:
    # a batch of 16 costs ~1 region instead of 4 (the simulator, not the network,
    # limits training speed on a CPU)
    return DPNPatchStream(
        cfg.batch_size,
        optics=optics,
        defocus_range_um=cfg.defocus_range_um,
        patch_px=px,
        planes_per_region=2,
        max_patches_per_plane=8,
        **common,
    )


def _batches(stream: StepStream, num_workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if num_workers == 0:
        return iter(stream)
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=num_workers, pin_memory=torch.cuda.is_available()
    )
    return iter(loader)


# --------------------------------------------------------------------------- model file
def _model_file_config(cfg: TrainConfig, model: nn.Module, step: int) -> dict[str, Any]:
    optics = Optics.from_dict(dict(cfg.optics))
    name = cfg.network
    return {
        "format": _MODEL_FORMAT,
        "version": 1,
        "architecture": name,
        "networks": {
            name: {"name": getattr(model, "name", name), "config": _network_config_dict(model)}
        },
        "optics": optics.to_dict(),
        "defocus_range_um": list(cfg.defocus_range_um),
        "patch_px": _PATCH_PX,
        "rin_input_px": cfg.resolved_input_px if name == "rin" else _RIN_INPUT_PX,
        "training": {
            "data": cfg.data,
            "steps": step,
            "seed": cfg.seed,
            "batch_size": cfg.batch_size,
            "lr": cfg.learning_rate,
            "optimizer": "Adam",
            "loss": "bce_with_logits vs W*" if name == "rin" else "mse (µm²)",
            "augment": cfg.augment,
            "delta_um": cfg.delta_um if name == "dastidar" else None,
            "command": cfg.command,
            "config": cfg.to_dict(),
        },
        "package_version": __version__,
    }


def _save_model(out_dir: Path, cfg: TrainConfig, model: nn.Module, step: int) -> Path:
    from ._model_io import save_model_file

    tensors = {
        f"{cfg.network}.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()
    }
    weights, _ = save_model_file(
        out_dir / cfg.network, tensors, _model_file_config(cfg, model, step)
    )
    return Path(weights)


def _model_path(out_dir: Path, network: str) -> Path:
    return out_dir / f"{network}.safetensors"


def combine_sparsefocus_model(
    rin_path: str | os.PathLike[str],
    dpn_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
) -> tuple[Path, Path]:
    """Join a trained RIN and a trained DPN into one SparseFocus model file.

    Parameters
    ----------
    rin_path, dpn_path : str or os.PathLike
        Model files written by RIN and DPN training runs.
    out_path : str or os.PathLike
        Output stem (``.safetensors`` + ``.json`` are written).

    Returns
    -------
    tuple of Path
        The weights and config files.

    Raises
    ------
    ValueError
        If the inputs are not a RIN and a DPN, or were trained for
        different optics.
    """
    from ._model_io import load_model_file, save_model_file

    t_rin, c_rin = load_model_file(rin_path)
    t_dpn, c_dpn = load_model_file(dpn_path)
    if "rin" not in c_rin.get("networks", {}) or "dpn" not in c_dpn.get("networks", {}):
        raise ValueError("combine_sparsefocus_model needs a RIN model file and a DPN model file")
    if c_rin.get("optics") != c_dpn.get("optics"):
        raise ValueError("the RIN and the DPN were trained for different optics")
    tensors = {k: v for k, v in t_rin.items() if k.startswith("rin.")}
    tensors.update({k: v for k, v in t_dpn.items() if k.startswith("dpn.")})
    cfg = {
        "format": _MODEL_FORMAT,
        "version": 1,
        "architecture": "sparsefocus",
        "networks": {"rin": c_rin["networks"]["rin"], "dpn": c_dpn["networks"]["dpn"]},
        "optics": c_dpn["optics"],
        "defocus_range_um": c_dpn.get("defocus_range_um", [-25.0, 25.0]),
        "patch_px": c_dpn.get("patch_px", _PATCH_PX),
        "rin_input_px": c_rin.get("rin_input_px", _RIN_INPUT_PX),
        "training": {"rin": c_rin.get("training", {}), "dpn": c_dpn.get("training", {})},
        "package_version": __version__,
    }
    w, j = save_model_file(out_path, tensors, cfg)
    return Path(w), Path(j)


def _init_from(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """Load this network's weights from a model file (fine-tuning start)."""
    from ._model_io import load_model_file

    if cfg.init_from is None:
        return
    tensors, mcfg = load_model_file(cfg.init_from)
    prefix = cfg.network + "."
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not state:
        raise ValueError(
            f"{cfg.init_from} holds no '{cfg.network}' weights "
            f"(architecture {mcfg.get('architecture')!r})"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"{cfg.init_from}: its {cfg.network} weights do not fit --network-config: {e}"
        ) from None
    logger.info("initialised %s from %s", cfg.network, cfg.init_from)


# --------------------------------------------------------------------------- loop
def iter_train(
    cfg: TrainConfig, *, resume: bool = True
) -> Generator[TrainProgress, None, TrainResult]:
    """Train a network; yield progress every ``cfg.log_every`` steps.

    Parameters
    ----------
    cfg : TrainConfig
        The run.
    resume : bool
        Continue from the newest checkpoint in ``cfg.out_dir`` (if any);
        a checkpoint of a different configuration raises
        :class:`CheckpointMismatchError`. ``False`` starts over and deletes
        the folder's old checkpoints.

    Yields
    ------
    TrainProgress
        Step, mean loss, learning rate and throughput.

    Returns
    -------
    TrainResult
        Final step and loss, the model file and the last checkpoint.

    Notes
    -----
    Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is set up
    (gloo on CPU, NCCL with CUDA), the model wrapped in
    :class:`~torch.nn.parallel.DistributedDataParallel` and every rank
    draws its own batches (``batch_size`` is per rank); only rank 0 writes
    checkpoints and the model, with barriers around the writes. BatchNorm
    running statistics are broadcast from rank 0 at each forward pass (DDP's
    default) and once more after the last step, so all replicas end equal.

    Closing the generator early (``gen.close()``, napari's ``worker.quit()``)
    writes a checkpoint of the last completed step in a single-process run,
    so a stopped run resumes where it stopped.
    """
    ctx = _Dist.from_env()
    try:
        result = yield from _train(cfg, resume, ctx)
    finally:
        ctx.close()
    return result


def _train(
    cfg: TrainConfig, resume: bool, ctx: _Dist
) -> Generator[TrainProgress, None, TrainResult]:
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    out_dir = Path(cfg.out_dir)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    ctx.barrier()

    torch.manual_seed(cfg.seed)
    model = build_network(cfg.network, cfg.network_config).to(ctx.device)
    if cfg.init_from:
        _init_from(model, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    start, resumed_from, last_loss = 0, None, float("nan")
    checkpoint_path: Path | None = None
    found = find_checkpoint(out_dir) if resume else None
    if found is not None:
        meta, tensors = found
        _check_identity(meta, cfg, out_dir)
        if int(meta.get("world_size", 1)) != ctx.world_size:
            logger.warning(
                "resuming a %d-process run with %d processes: the data streams change",
                meta.get("world_size", 1),
                ctx.world_size,
            )
        state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        model.load_state_dict(state, strict=True)
        _load_optimizer(opt, tensors, meta["optimizer"]["param_groups"])
        torch.set_rng_state(torch.tensor(meta["rng"]["torch_cpu"], dtype=torch.uint8))
        start = resumed_from = int(meta["step"])
        last_loss = float(meta.get("loss", float("nan")))
        checkpoint_path = _checkpoint_dir(out_dir) / f"ckpt_{start:08d}.json"
        if ctx.is_main:
            logger.info("resuming %s training from step %d (%s)", cfg.network, start, out_dir)
    elif not resume and ctx.is_main:
        old = _list_checkpoints(out_dir)
        if old:
            logger.warning("resume=False: deleting %d old checkpoint(s) in %s", len(old), out_dir)
        for step_old, sidecar in old:
            sidecar.unlink(missing_ok=True)
            (sidecar.parent / f"ckpt_{step_old:08d}.safetensors").unlink(missing_ok=True)
    ctx.barrier()

    net: nn.Module = model
    if ctx.distributed:
        net = DistributedDataParallel(
            model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None
        )
    if ctx.is_main:
        logger.info(
            "training %s: steps %d..%d, batch %d x %d rank(s), lr %.3g, out %s",
            cfg.network,
            start,
            cfg.steps,
            cfg.batch_size,
            ctx.world_size,
            cfg.learning_rate,
            out_dir,
        )

    batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = iter(())
    if start < cfg.steps:
        batches = _batches(_make_stream(cfg, ctx.rank, start), cfg.num_workers)
    t0 = t_last = time.perf_counter()
    loss_sum, n_sum, samples = 0.0, 0, 0
    done = saved = start
    try:
        for step in range(start, cfg.steps):
            inputs, targets = next(batches)
            torch.manual_seed(derive_seed(cfg.seed, _TAG_TORCH, ctx.rank, step))  # dropout etc.
            aug = None
            if cfg.augment:
                aug = torch.Generator().manual_seed(derive_seed(cfg.seed, _TAG_AUG, ctx.rank, step))
            inputs, targets = _prepare_inputs(cfg.network, model, inputs, targets, aug)
            inputs = inputs.to(ctx.device, non_blocking=True)
            targets = targets.to(ctx.device, non_blocking=True)

            net.train()
            for group in opt.param_groups:
                group["lr"] = cfg.lr_at(step)
            opt.zero_grad(set_to_none=True)
            loss = compute_loss(cfg.network, net, inputs, targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss {float(loss.detach())} at step {step + 1}"
                )
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()

            done = step + 1
            last_loss = float(loss.detach())
            loss_sum += last_loss
            n_sum += 1
            samples += inputs.shape[0]
            if done % cfg.log_every == 0 or done == cfg.steps:
                now = time.perf_counter()
                mean_loss = ctx.mean(loss_sum / n_sum)
                rate = samples * ctx.world_size / max(now - t_last, 1e-9)
                progress = TrainProgress(
                    step=done,
                    steps=cfg.steps,
                    loss=mean_loss,
                    lr=float(opt.param_groups[0]["lr"]),
                    samples_per_s=rate,
                    elapsed_s=now - t0,
                )
                if ctx.is_main:
                    logger.debug(
                        "step %d/%d loss %.5g (%.1f samples/s)", done, cfg.steps, mean_loss, rate
                    )
                loss_sum, n_sum, samples, t_last = 0.0, 0, 0, now
                yield progress
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                ctx.barrier()
                if ctx.is_main:
                    checkpoint_path = _save_checkpoint(
                        out_dir, done, model, opt, cfg, ctx.world_size, last_loss
                    )
                    logger.info("checkpoint %s", checkpoint_path)
                else:
                    checkpoint_path = _checkpoint_dir(out_dir) / f"ckpt_{done:08d}.json"
                saved = done
                ctx.barrier()
    except GeneratorExit:
        # stopped between yields (napari's Stop button): keep the progress. Under DDP
        # the other ranks would wait at the next barrier, so only single-process.
        if not ctx.distributed and done > saved:
            path = _save_checkpoint(out_dir, done, model, opt, cfg, ctx.world_size, last_loss)
            logger.info("stopped at step %d; checkpoint %s", done, path)
        raise

    if ctx.distributed:
        for buf in model.buffers():  # BatchNorm statistics: rank 0's
            dist.broadcast(buf, src=0)
    final_step = max(start, cfg.steps)
    model_path = _model_path(out_dir, cfg.network)
    ctx.barrier()
    if ctx.is_main:
        model_path = _save_model(out_dir, cfg, model, final_step)
        logger.info("model written to %s", model_path)
    if cfg.dump_rank_state:
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        _atomic_write(out_dir / f"rank{ctx.rank}.safetensors", st_save(tensors))
    ctx.barrier()
    return TrainResult(
        step=final_step,
        loss=last_loss,
        model_path=model_path,
        checkpoint_path=checkpoint_path,
        out_dir=out_dir,
        resumed_from=resumed_from,
    )


def train(cfg: TrainConfig, *, resume: bool = True) -> TrainResult:
    """Run :func:`iter_train` to the end (progress goes to the log).

    Parameters
    ----------
    cfg : TrainConfig
        The run.
    resume : bool
        See :func:`iter_train`.

    Returns
    -------
    TrainResult
    """
    gen = iter_train(cfg, resume=resume)
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            result: TrainResult = stop.value
            return result
        logger.info("step %d/%d loss %.5g", p.step, p.steps, p.loss)


# --------------------------------------------------------------------------- command line
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the training options to ``parser`` (for ``sparsefocus train``).

    Parameters
    ----------
    parser : argparse.ArgumentParser
        Parser (or sub-parser) to extend.
    """
    d = TrainConfig()
    parser.add_argument(
        "--network", choices=sorted(NETWORKS), default=d.network, help="network to train"
    )
    parser.add_argument(
        "--network-config",
        default="{}",
        metavar="JSON",
        help="architecture overrides as JSON, or @file.json",
    )
    parser.add_argument("--steps", type=int, default=d.steps, help="total optimisation steps")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per rank")
    parser.add_argument(
        "--lr", type=float, default=None, help="Adam learning rate (default: paper's)"
    )
    parser.add_argument(
        "--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule, help="constant or cosine"
    )
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    parser.add_argument("--log-every", type=int, default=d.log_every)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--out-dir", default=d.out_dir, help="checkpoints and final model")
    parser.add_argument(
        "--data",
        default=d.data,
        help="'simulated', a label file of user z-stacks, or a patch-bank folder (make-bank)",
    )
    parser.add_argument(
        "--defocus-range-um",
        type=float,
        nargs=2,
        default=list(d.defocus_range_um),
        metavar=("LO", "HI"),
    )
    parser.add_argument(
        "--optics", default="{}", metavar="JSON", help="Optics fields as JSON, or @file.json"
    )
    parser.add_argument("--num-threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--input-px",
        type=int,
        default=None,
        help="RIN input side (512) or patch crop of patch networks (224)",
    )
    parser.add_argument("--delta-um", type=float, default=d.delta_um, help="Dastidar shot step")
    parser.add_argument(
        "--rin-grid-sizes",
        type=int,
        nargs="+",
        default=None,
        metavar="G",
        help="RIN: patches per side of the simulated training fields, one drawn per batch "
        "(default 9; e.g. 5 7 9 for cameras smaller than 2016 px)",
    )
    parser.add_argument(
        "--rin-levels",
        nargs="+",
        default=None,
        metavar="LEVEL",
        help="RIN: sparsity levels of the simulated fields, drawn uniformly (repeat one to "
        "weight it; default dense/sparse/extremely_sparse 0.3 each, empty 0.1)",
    )
    parser.add_argument(
        "--no-augment", action="store_true", help="no colour jitter / quarter turns"
    )
    parser.add_argument("--num-workers", type=int, default=d.num_workers, help="data workers")
    parser.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="MODEL.json",
        help="start from this model file's weights (fine-tuning)",
    )
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="start over (deletes the checkpoints in --out-dir)",
    )
    parser.add_argument(
        "--dump-rank-state",
        action="store_true",
        help="each rank writes out_dir/rank{R}.safetensors at the end (DDP check)",
    )
    parser.add_argument("--no-progress", action="store_true", help="log lines, no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _json_arg(value: str, name: str) -> dict[str, Any]:
    text = Path(value[1:]).read_text(encoding="utf-8") if value.startswith("@") else value
    try:
        out = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name} is not valid JSON: {e}") from None
    if not isinstance(out, dict):
        raise ValueError(f"{name} must be a JSON object")
    return out


def config_from_args(args: argparse.Namespace, command: Sequence[str] | None = None) -> TrainConfig:
    """Build a :class:`TrainConfig` from parsed :func:`add_train_arguments` options.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options.
    command : sequence of str, optional
        Command line to record (default ``sys.argv``).

    Returns
    -------
    TrainConfig
    """
    cmd = list(sys.argv if command is None else command)
    return TrainConfig(
        network=args.network,
        network_config=_json_arg(args.network_config, "--network-config"),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        weight_decay=args.weight_decay,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        seed=args.seed,
        out_dir=args.out_dir,
        data=args.data,
        defocus_range_um=(float(args.defocus_range_um[0]), float(args.defocus_range_um[1])),
        optics=_json_arg(args.optics, "--optics"),
        num_threads=args.num_threads,
        input_px=args.input_px,
        delta_um=args.delta_um,
        augment=not args.no_augment,
        num_workers=args.num_workers,
        keep_checkpoints=args.keep_checkpoints,
        dump_rank_state=args.dump_rank_state,
        command=" ".join(cmd),
        init_from=args.init_from,
        rin_grid_sizes=None if args.rin_grid_sizes is None else tuple(args.rin_grid_sizes),
        rin_levels=None if args.rin_levels is None else tuple(args.rin_levels),
    )


def run_train_from_args(args: argparse.Namespace) -> int:
    """Run training from parsed :func:`add_train_arguments` options.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options.

    Returns
    -------
    int
        Exit status (0: done, 2: invalid configuration or checkpoint mismatch).
    """
    rank = int(os.environ.get("RANK", "0"))
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
        )
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        logger.error("%s", e)
        return 2
    bar: Any = None
    with contextlib.ExitStack() as stack:
        if rank == 0 and not args.no_progress:
            try:
                tqdm_auto = importlib.import_module("tqdm.auto")
                tqdm_logging = importlib.import_module("tqdm.contrib.logging")
            except ImportError:  # pragma: no cover - napari installs tqdm
                logger.debug("tqdm is not installed: progress goes to the log")
            else:
                bar = stack.enter_context(
                    tqdm_auto.tqdm(total=cfg.steps, unit="step", dynamic_ncols=True)
                )
                stack.enter_context(tqdm_logging.logging_redirect_tqdm())
        gen = iter_train(cfg, resume=not args.no_resume)
        try:
            while True:
                try:
                    p = next(gen)
                except StopIteration as stop:
                    result: TrainResult = stop.value
                    break
                if bar is not None:
                    bar.update(p.step - bar.n)  # the first record jumps to a resumed step
                    bar.set_postfix(loss=f"{p.loss:.4g}", sps=f"{p.samples_per_s:.1f}")
                elif rank == 0:
                    logger.info(
                        "step %d/%d loss %.5g lr %.3g %.1f samples/s",
                        p.step,
                        p.steps,
                        p.loss,
                        p.lr,
                        p.samples_per_s,
                    )
        except CheckpointMismatchError as e:
            logger.error("%s", e)
            return 2
    if rank == 0:
        logger.info(
            "done: step %d, loss %.5g, model %s", result.step, result.loss, result.model_path
        )
    return 0


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Command-line entry point (``python -m napari_sparsefocus.core.nn._train``).

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default ``sys.argv[1:]``).
    prog : str, optional
        Program name shown in help (``sparsefocus train`` from the package CLI).

    Returns
    -------
    int
        Exit status.
    """
    parser = argparse.ArgumentParser(
        prog=prog or "python -m napari_sparsefocus.core.nn._train",
        description="Train a SparseFocus network (RIN, DPN) or a baseline; "
        "run under torchrun for DDP.",
    )
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    return run_train_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
