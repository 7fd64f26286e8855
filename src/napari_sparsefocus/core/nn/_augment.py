"""Training-time augmentation: colour jitter (SparseFocus §4.4) and dihedral transforms.

Everything works on float ``(N, 3, H, W)`` batches in [0, 1] and draws its
random numbers from an explicit :class:`torch.Generator`, so a batch's
augmentation is a pure function of the generator's seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "BRIGHTNESS_RANGE",
    "CONTRAST_RANGE",
    "SATURATION_RANGE",
    "AugmentParams",
    "apply_augment",
    "apply_color_jitter",
    "apply_dihedral",
    "augment_batch",
    "sample_augment_params",
]

#: Multiplicative brightness factor range (SparseFocus §4.4).
BRIGHTNESS_RANGE: tuple[float, float] = (0.9, 1.4)
#: Contrast factor range (SparseFocus §4.4).
CONTRAST_RANGE: tuple[float, float] = (0.8, 1.5)
#: Saturation factor range (SparseFocus §4.4).
SATURATION_RANGE: tuple[float, float] = (0.8, 1.5)

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample augmentation parameters.

    Attributes
    ----------
    brightness, contrast, saturation : torch.Tensor
        ``(N,)`` float32 factors (1 leaves the image unchanged).
    rot90_k : torch.Tensor
        ``(N,)`` int64 number of counter-clockwise quarter turns (0–3).
    flip : torch.Tensor
        ``(N,)`` bool: mirror left-right after the rotation.
    """

    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    rot90_k: torch.Tensor
    flip: torch.Tensor

    def __len__(self) -> int:
        return int(self.brightness.shape[0])


def _check_range(name: str, value: Sequence[float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not (0.0 <= lo <= hi):
        raise ValueError(f"{name} must be (lo, hi) with 0 <= lo <= hi, got {tuple(value)}")
    return lo, hi


def _uniform(n: int, bounds: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float32)


def sample_augment_params(
    n: int,
    generator: torch.Generator,
    *,
    brightness: Sequence[float] = BRIGHTNESS_RANGE,
    contrast: Sequence[float] = CONTRAST_RANGE,
    saturation: Sequence[float] = SATURATION_RANGE,
    geometric: bool = True,
) -> AugmentParams:
    """Draw per-sample augmentation parameters.

    Parameters
    ----------
    n : int
        Batch size.
    generator : torch.Generator
        CPU random source (seed it for reproducible batches).
    brightness, contrast, saturation : tuple of float
        Uniform ranges of the factors (default: the paper's [0.9, 1.4],
        [0.8, 1.5], [0.8, 1.5]). ``(1, 1)`` disables one.
    geometric : bool
        Draw random quarter turns and mirrors (else identity).

    Returns
    -------
    AugmentParams
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    b = _uniform(n, _check_range("brightness", brightness), generator)
    c = _uniform(n, _check_range("contrast", contrast), generator)
    s = _uniform(n, _check_range("saturation", saturation), generator)
    if geometric:
        k = torch.randint(0, 4, (n,), generator=generator, dtype=torch.int64)
        flip = torch.randint(0, 2, (n,), generator=generator, dtype=torch.int64).bool()
    else:
        k = torch.zeros(n, dtype=torch.int64)
        flip = torch.zeros(n, dtype=torch.bool)
    return AugmentParams(brightness=b, contrast=c, saturation=s, rot90_k=k, flip=flip)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=-3)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(-3)  # (N, 1, H, W)


def apply_color_jitter(images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Apply brightness, then contrast, then saturation, clamping to [0, 1] after each.

    Parameters
    ----------
    images : torch.Tensor
        ``(N, 3, H, W)`` float in [0, 1] (1-channel input skips saturation).
    params : AugmentParams
        Factors for the N samples.

    Returns
    -------
    torch.Tensor
        A new ``(N, C, H, W)`` tensor in [0, 1].

    Notes
    -----
    The operations follow torchvision's ``ColorJitter`` definitions in a
    fixed order: brightness multiplies the image; contrast blends it with
    the mean of its gray version (``c·x + (1 − c)·mean``); saturation
    blends it with its gray version (``s·x + (1 − s)·gray``).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    n, ch = images.shape[:2]
    if len(params) != n:
        raise ValueError(f"params hold {len(params)} samples, images {n}")
    shape = (n, 1, 1, 1)
    dev, dt = images.device, images.dtype
    b = params.brightness.to(dev, dt).view(shape)
    c = params.contrast.to(dev, dt).view(shape)
    s = params.saturation.to(dev, dt).view(shape)
    x = (images * b).clamp_(0.0, 1.0)
    gray = _gray(x) if ch == 3 else x
    mean = gray.mean(dim=(-3, -2, -1), keepdim=True)  # (N, 1, 1, 1)
    x = (c * x + (1.0 - c) * mean).clamp_(0.0, 1.0)
    if ch == 3:
        x = (s * x + (1.0 - s) * _gray(x)).clamp_(0.0, 1.0)
    return x


def apply_dihedral(x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Rotate by ``rot90_k`` quarter turns, then mirror left-right where ``flip``.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, ..., H, W)``: images ``(N, C, H, W)`` or label maps
        ``(N, gy, gx)``; the same parameters give matching transforms of
        an image and its grid labels (square inputs only when rotating).
    params : AugmentParams
        Per-sample transform.

    Returns
    -------
    torch.Tensor
        Transformed copy.
    """
    if x.ndim < 3:
        raise ValueError(f"x must be (N, ..., H, W), got shape {tuple(x.shape)}")
    if len(params) != x.shape[0]:
        raise ValueError(f"params hold {len(params)} samples, x {x.shape[0]}")
    out = []
    for i in range(x.shape[0]):
        xi = x[i]
        k = int(params.rot90_k[i])
        if k:
            if xi.shape[-1] != xi.shape[-2]:
                raise ValueError(f"rotations need square inputs, got {tuple(xi.shape[-2:])}")
            xi = torch.rot90(xi, k, dims=(-2, -1))
        if bool(params.flip[i]):
            xi = torch.flip(xi, dims=(-1,))
        out.append(xi)
    return torch.stack(out).contiguous()


def apply_augment(images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Apply colour jitter and the dihedral transform (see the two functions).

    Parameters
    ----------
    images : torch.Tensor
        ``(N, 3, H, W)`` float in [0, 1].
    params : AugmentParams
        Per-sample parameters.

    Returns
    -------
    torch.Tensor
        Augmented copy in [0, 1].
    """
    return apply_dihedral(apply_color_jitter(images, params), params)


def augment_batch(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    label_maps: torch.Tensor | None = None,
    geometric: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Augment a batch with the paper's colour ranges and random dihedral transforms.

    Parameters
    ----------
    images : torch.Tensor
        ``(N, 3, H, W)`` float in [0, 1].
    generator : torch.Generator
        CPU random source.
    label_maps : torch.Tensor, optional
        ``(N, gy, gx)`` grid labels (the RIN's W*) that turn with the image.
        Scalar labels such as defocus are invariant and need no change.
    geometric : bool
        Apply quarter turns and mirrors.

    Returns
    -------
    images : torch.Tensor
        Augmented images.
    label_maps : torch.Tensor or None
        Transformed label maps (``None`` if none were given).
    """
    params = sample_augment_params(images.shape[0], generator, geometric=geometric)
    out = apply_augment(images, params)
    maps = apply_dihedral(label_maps, params) if label_maps is not None else None
    return out, maps
