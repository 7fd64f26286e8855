"""Near-focus refiner: each content patch's own defocus, read from its colour sharpness.

Within a couple of µm of focus the DPN reads a patch to about ±0.4–0.5 µm (median
error), too coarse to confirm focus to DoF/2 from one frame. Part of that is its
training target: every patch of a field carries the *field's* focus label, while
the cells of a smear lie in layers a few µm apart and a thick section is sharpest
at different heights, so near focus a patch's label is often not where the patch
itself is sharpest. Measured on held-out fields, the Brenner-weighted mean of the
patches' *own* defocus (each patch's sharpest plane) lands on the field's focus
label to 0.10 µm (MAE): the field's label is recoverable from the patches, if each
patch's own defocus is known.

The refiner learns exactly that, near focus only: a small MLP from a patch's
per-channel, multi-scale sharpness descriptor (with axial chromatic aberration the
red and blue channels are sharp on opposite sides of focus), the same descriptor
of the frame's content as a whole (context: how sharp this content can be), the
DPN's reading and the RIN's importance, to the patch's own defocus. The field
reading is the Brenner-weighted mean of the refined patches. It is a posterior
under the prior "near focus" (train frames within ``range_um`` of focus), like
:class:`~napari_sparsefocus.core.nn.NearFocusCalibration`: meant for a refocus
controller's verification snaps after a move, not for one-shot readings from an
unknown start.

Inference is numpy only (two matrix products per layer); fitting uses torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import torch
    from numpy.typing import ArrayLike, NDArray

__all__ = [
    "REFINER_FEATURES",
    "NearFocusRefiner",
    "fit_near_focus_refiner",
    "patch_sharpness_descriptor",
    "refiner_input_size",
    "refiner_inputs",
]

#: Name of the input layout (descriptor + context + DPN reading + importance + count).
REFINER_FEATURES = "colour-sharpness-v1"
#: Average-pooling factors of the gradient energies.
_GRAD_SCALES = (1, 2, 4, 8, 16)
#: Average-pooling factors of the Laplacian energies.
_LAPLACE_SCALES = (1, 2)
_EPS = 1e-10
_TENSOR_PREFIX = "near_focus_refiner."


def _pool(x: NDArray[np.float64], s: int) -> NDArray[np.float64]:
    """Average-pool ``(N, C, H, W)`` by ``s`` (the remainder rows/columns dropped)."""
    if s == 1:
        return x
    n, c, h, w = x.shape
    h, w = h // s * s, w // s * s
    out: NDArray[np.float64] = x[:, :, :h, :w].reshape(n, c, h // s, s, w // s, s).mean(axis=(3, 5))
    return out


def _halve(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Average-pool ``(N, C, H, W)`` by 2 (as ``_pool(x, 2)``, by strided sums: faster)."""
    h, w = x.shape[2] // 2 * 2, x.shape[3] // 2 * 2
    even, odd = x[:, :, 0:h:2], x[:, :, 1:h:2]
    out: NDArray[np.float64] = (
        even[..., 0:w:2] + odd[..., 0:w:2] + even[..., 1:w:2] + odd[..., 1:w:2]
    ) * 0.25
    return out


def _mean_square(a: NDArray[np.float64]) -> NDArray[np.float64]:
    """Mean of ``a**2`` over the last two axes of ``(N, C, H, W)`` (no squared copy)."""
    out: NDArray[np.float64] = np.einsum("ncij,ncij->nc", a, a) / (a.shape[2] * a.shape[3])
    return out


def _pyramid(x: NDArray[np.float64], scales: Sequence[int]) -> dict[int, NDArray[np.float64]]:
    """``{s: _pool(x, s)}`` for power-of-two ``scales``, each level halved from the last.

    Pooling by 2 ``j`` times keeps the same ``H // 2**j`` rows and columns as
    pooling once by ``2**j`` (the same pixels, averaged in another order), at
    about a third of the cost of pooling every scale from the full patches.
    """
    out = {1: x}
    level, s = x, 1
    while s < max(scales):
        level, s = _halve(level), 2 * s
        out[s] = level
    return {k: out[k] for k in scales}


def patch_sharpness_descriptor(patches: ArrayLike) -> NDArray[np.float64]:
    """Per-channel, multi-scale log sharpness of image patches.

    Parameters
    ----------
    patches : array_like
        ``(N, C, H, W)`` float patches in [0, 1] (as the DPN sees them), H and W
        at least 32.

    Returns
    -------
    ndarray
        ``(N, 14 · C)`` float64: for each pooling factor 1, 2, 4, 8, 16 the log
        mean squared vertical and horizontal difference per channel
        (``log(E + 1e-10)``), for factors 1 and 2 the log mean squared
        5-point Laplacian per channel, then each channel's log variance and
        mean. A brightness gain shifts every log alike, so cross-channel
        differences (the sign cue of axial chromatic aberration) keep their
        meaning.

    Raises
    ------
    ValueError
        If `patches` is not 4-D, too small, or not finite.
    """
    x = np.asarray(patches, dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f"patches must be (N, C, H, W), got shape {x.shape}")
    if x.shape[2] < 32 or x.shape[3] < 32:
        # the coarsest scale pools 16 px: at least two pooled rows and columns
        raise ValueError(f"patches must be at least 32 x 32 px, got {x.shape[2]} x {x.shape[3]}")
    if not np.all(np.isfinite(x)):
        raise ValueError("patches contain NaN or infinite values")
    feats: list[NDArray[np.float64]] = []
    levels = _pyramid(x, sorted({*_GRAD_SCALES, *_LAPLACE_SCALES}))
    for s in _GRAD_SCALES:
        xs = levels[s]
        gy = np.diff(xs, axis=2)
        gx = np.diff(xs, axis=3)
        feats.append(np.log(_mean_square(gy) + _EPS))
        feats.append(np.log(_mean_square(gx) + _EPS))
    for s in _LAPLACE_SCALES:
        xs = levels[s]
        lap = (
            4.0 * xs[:, :, 1:-1, 1:-1]
            - xs[:, :, :-2, 1:-1]
            - xs[:, :, 2:, 1:-1]
            - xs[:, :, 1:-1, :-2]
            - xs[:, :, 1:-1, 2:]
        )
        feats.append(np.log(_mean_square(lap) + _EPS))
    feats.append(np.log(np.var(x, axis=(2, 3)) + _EPS))
    feats.append(np.mean(x, axis=(2, 3)))
    return np.concatenate(feats, axis=1)


def refiner_input_size(n_channels: int) -> int:
    """Length of a :func:`refiner_inputs` row for patches of `n_channels` colour channels."""
    per_channel = 2 * len(_GRAD_SCALES) + len(_LAPLACE_SCALES) + 2  # + log variance, mean
    return 3 * per_channel * int(n_channels) + 3


def refiner_inputs(
    descriptor: ArrayLike,
    dpn_defocus_um: ArrayLike,
    importance: ArrayLike,
    weights: ArrayLike,
) -> NDArray[np.float64]:
    """Assemble the refiner's input rows for the content patches of one frame.

    Parameters
    ----------
    descriptor : array_like
        ``(N, D)`` :func:`patch_sharpness_descriptor` of the frame's content patches.
    dpn_defocus_um : array_like
        ``(N,)`` the DPN's reading of each patch (µm).
    importance : array_like
        ``(N,)`` the RIN's importance of each patch.
    weights : array_like
        ``(N,)`` each patch's sharpness (Brenner gradient), > 0 in sum: the
        frame's context is the weighted mean descriptor.

    Returns
    -------
    ndarray
        ``(N, 3 · D + 3)``: descriptor, descriptor minus context, context,
        DPN reading, importance, ``log N``.

    Raises
    ------
    ValueError
        On mismatched lengths, no patches, negative or all-zero weights.
    """
    d = np.asarray(descriptor, dtype=np.float64)
    p = np.asarray(dpn_defocus_um, dtype=np.float64).reshape(-1)
    imp = np.asarray(importance, dtype=np.float64).reshape(-1)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if d.ndim != 2 or not len(d):
        raise ValueError(f"descriptor must be (N, D) with N >= 1, got shape {d.shape}")
    n = len(d)
    if not (len(p) == len(imp) == len(w) == n):
        raise ValueError(
            f"descriptor ({n}), dpn_defocus_um ({len(p)}), importance ({len(imp)}) and "
            f"weights ({len(w)}) must have one entry per patch"
        )
    if not (np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() > 0):
        raise ValueError("weights must be finite, >= 0 and not all zero")
    ctx = (d * w[:, None]).sum(axis=0) / w.sum()
    tail = np.stack([p, imp, np.full(n, math.log(n))], axis=1)
    return np.concatenate([d, d - ctx, np.broadcast_to(ctx, d.shape), tail], axis=1)


def _gelu(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """GELU, tanh approximation (as ``torch.nn.GELU(approximate="tanh")``)."""
    out: NDArray[np.float64] = (
        0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    )
    return out


@dataclass(frozen=True, eq=False)
class NearFocusRefiner:
    """A fitted near-focus refiner: standardisation plus an MLP (numpy inference).

    Parameters
    ----------
    mean, std : ndarray
        ``(F,)`` input standardisation (``std > 0``).
    weights : tuple of ndarray
        ``(out, in)`` weight matrix of each linear layer, first to last; the
        last has one output (µm). GELU between layers.
    biases : tuple of ndarray
        ``(out,)`` bias of each layer.
    range_um : float
        Half-width of the defocus range it was fitted on (its prior).
    fitted_on : str
        Provenance (frames, seeds, split), for the record.
    features : str
        Input layout name (:data:`REFINER_FEATURES`).
    """

    mean: NDArray[np.float64]
    std: NDArray[np.float64]
    weights: tuple[NDArray[np.float64], ...]
    biases: tuple[NDArray[np.float64], ...]
    range_um: float
    fitted_on: str = ""
    features: str = REFINER_FEATURES
    _n_in: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=np.float64).reshape(-1)
        std = np.asarray(self.std, dtype=np.float64).reshape(-1)
        ws = tuple(np.asarray(w, dtype=np.float64) for w in self.weights)
        bs = tuple(np.asarray(b, dtype=np.float64).reshape(-1) for b in self.biases)
        if self.features != REFINER_FEATURES:
            raise ValueError(
                f"near-focus refiner features {self.features!r} are not supported "
                f"(this version reads {REFINER_FEATURES!r})"
            )
        if mean.shape != std.shape or not len(mean):
            raise ValueError(f"refiner mean and std differ in shape: {mean.shape}, {std.shape}")
        if not (np.all(np.isfinite(std)) and np.all(std > 0)):
            raise ValueError("refiner std must be finite and > 0")
        if not ws or len(ws) != len(bs):
            raise ValueError(
                f"refiner needs one bias per layer: {len(ws)} weights, {len(bs)} biases"
            )
        n = len(mean)
        for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
            if w.ndim != 2 or w.shape[1] != n or b.shape != (w.shape[0],):
                raise ValueError(
                    f"refiner layer {i}: weight {w.shape} and bias {b.shape} do not take {n} inputs"
                )
            n = w.shape[0]
        if n != 1:
            raise ValueError(f"refiner's last layer must have one output, has {n}")
        arrays = (mean, std, *ws, *bs)
        if not all(np.all(np.isfinite(a)) for a in arrays):
            raise ValueError("refiner parameters must be finite")
        if not (math.isfinite(self.range_um) and self.range_um > 0):
            raise ValueError(f"refiner range_um must be > 0, got {self.range_um!r}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "weights", ws)
        object.__setattr__(self, "biases", bs)
        object.__setattr__(self, "_n_in", len(mean))

    @property
    def n_inputs(self) -> int:
        """Length of an input row."""
        return self._n_in

    def predict(self, inputs: ArrayLike) -> NDArray[np.float64]:
        """Return each row's own defocus (µm) from :func:`refiner_inputs` rows.

        Parameters
        ----------
        inputs : array_like
            ``(N, n_inputs)``.

        Returns
        -------
        ndarray
            ``(N,)`` float64.
        """
        x = np.asarray(inputs, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self._n_in:
            raise ValueError(f"refiner inputs must be (N, {self._n_in}), got shape {x.shape}")
        h = (x - self.mean) / self.std
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w.T + b
            if i < last:
                h = _gelu(h)
        out: NDArray[np.float64] = h[:, 0]
        return out

    # ------------------------------------------------------------- model files
    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flat float32 tensors for a model's safetensors file (prefixed)."""
        import torch

        t = {
            f"{_TENSOR_PREFIX}mean": torch.tensor(self.mean, dtype=torch.float32),
            f"{_TENSOR_PREFIX}std": torch.tensor(self.std, dtype=torch.float32),
        }
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            t[f"{_TENSOR_PREFIX}{i}.weight"] = torch.tensor(w, dtype=torch.float32)
            t[f"{_TENSOR_PREFIX}{i}.bias"] = torch.tensor(b, dtype=torch.float32)
        return t

    def to_config(self) -> dict[str, Any]:
        """JSON part of the model file (the tensors hold the numbers)."""
        return {
            "features": self.features,
            "layers": len(self.weights),
            "range_um": float(self.range_um),
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_model_file(
        cls, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]
    ) -> NearFocusRefiner:
        """Rebuild from a model file's tensors and its ``near_focus_refiner`` config.

        Raises
        ------
        ValueError
            Missing or inconsistent tensors, or a config of another layout.
        """
        if not isinstance(config, dict):
            raise ValueError(f"near_focus_refiner config must be an object, got {config!r}")
        try:
            n = int(config["layers"])
            rng = float(config["range_um"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"near_focus_refiner config needs 'layers' and 'range_um', got {dict(config)}"
            ) from None

        def get(name: str) -> NDArray[np.float64]:
            key = _TENSOR_PREFIX + name
            if key not in tensors:
                raise ValueError(f"model file lacks the near-focus refiner tensor {key!r}")
            return tensors[key].detach().cpu().double().numpy()

        return cls(
            mean=get("mean"),
            std=get("std"),
            weights=tuple(get(f"{i}.weight") for i in range(n)),
            biases=tuple(get(f"{i}.bias") for i in range(n)),
            range_um=rng,
            fitted_on=str(config.get("fitted_on", "")),
            features=str(config.get("features", "")),
        )


def fit_near_focus_refiner(
    inputs: ArrayLike,
    own_defocus_um: ArrayLike,
    *,
    range_um: float,
    hidden: Sequence[int] = (128, 128),
    epochs: int = 60,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 1e-3,
    huber_beta_um: float = 0.2,
    seed: int = 0,
    fitted_on: str = "",
) -> NearFocusRefiner:
    """Fit a :class:`NearFocusRefiner` (AdamW, cosine schedule, smooth-L1 loss).

    Parameters
    ----------
    inputs : array_like
        ``(N, F)`` :func:`refiner_inputs` rows of train-split content patches.
    own_defocus_um : array_like
        ``(N,)`` each patch's own defocus: stage position minus the patch's
        sharpest plane (µm).
    range_um : float
        Half-width of the defocus range the frames were drawn from (recorded).
    hidden : sequence of int
        Widths of the hidden layers.
    epochs, batch_size, lr, weight_decay : int, int, float, float
        Optimiser settings.
    huber_beta_um : float
        Smooth-L1 transition (µm).
    seed : int
        Initialisation and shuffling seed.
    fitted_on : str
        Provenance recorded in the result.

    Returns
    -------
    NearFocusRefiner

    Raises
    ------
    ValueError
        Mismatched, non-finite or too few (< 2 · batch) samples.
    """
    import torch
    from torch import nn

    x = np.asarray(inputs, dtype=np.float64)
    y = np.asarray(own_defocus_um, dtype=np.float64).reshape(-1)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"inputs (N, F) and own_defocus_um (N,) disagree: {x.shape}, {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("inputs and own_defocus_um must be finite")
    if len(x) < 2 * batch_size:
        raise ValueError(f"{len(x)} samples are too few for batches of {batch_size}")
    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-6
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    sizes = [x.shape[1], *[int(h) for h in hidden], 1]
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.GELU(approximate="tanh"))
    net = nn.Sequential(*layers)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, int(epochs)))
    xt = torch.tensor((x - mean) / std, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32)
    net.train()
    for _ in range(int(epochs)):
        perm = torch.randperm(len(xt), generator=gen)
        for s in range(0, len(xt), batch_size):
            b = perm[s : s + batch_size]
            loss = nn.functional.smooth_l1_loss(net(xt[b])[:, 0], yt[b], beta=huber_beta_um)
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
        sched.step()
    linears = [m for m in net if isinstance(m, nn.Linear)]
    return NearFocusRefiner(
        mean=mean,
        std=std,
        weights=tuple(m.weight.detach().double().numpy() for m in linears),
        biases=tuple(m.bias.detach().double().numpy() for m in linears),
        range_um=float(range_um),
        fitted_on=fitted_on,
    )
