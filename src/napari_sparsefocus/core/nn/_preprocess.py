"""Image preparation shared by training and inference: dtype, crop, pixel size, grid."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray

__all__ = [
    "PIXEL_SIZE_RTOL",
    "PreparedImage",
    "grid_patches",
    "prepare_image",
    "rin_input",
    "to_float_rgb",
]

#: Relative pixel-size difference accepted without rescaling.
PIXEL_SIZE_RTOL = 0.02
#: Finest image (relative to the model's pixel size) that is down-sampled to fit.
_MIN_RATIO = 0.25


def to_float_rgb(image: ArrayLike) -> NDArray[np.float32]:
    """Return an ``(H, W, 3)`` float32 image in [0, 1].

    Parameters
    ----------
    image : array_like
        ``(H, W)`` gray, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA (alpha dropped).
        Unsigned/signed integers are scaled by their dtype's maximum; floats
        must already lie in [0, 1]; bool is rejected.

    Returns
    -------
    ndarray
        ``(H, W, 3)`` float32.

    Raises
    ------
    ValueError
        Wrong dimensionality or channel count, non-finite values, floats
        outside [0, 1].
    TypeError
        Non-numeric or boolean dtype.
    """
    a = np.asarray(image)
    if a.dtype == bool or not (
        np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)
    ):
        raise TypeError(f"image dtype must be an integer or float type, got {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"image must be (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA, got shape {a.shape}"
        )
    if a.shape[2] == 4:
        a = a[:, :, :3]
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        out = a.astype(np.float32) / np.float32(info.max)
        np.clip(out, 0.0, 1.0, out=out)
    else:
        out = a.astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise ValueError("image holds NaN or infinite values")
        lo, hi = float(out.min()), float(out.max())
        if lo < -1e-6 or hi > 1.0 + 1e-6:
            raise ValueError(
                f"float images must lie in [0, 1]; this one spans [{lo:g}, {hi:g}] "
                "(divide by the camera's maximum first)"
            )
        np.clip(out, 0.0, 1.0, out=out)
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out)


@dataclass(frozen=True)
class PreparedImage:
    """An image cropped and scaled to the model's pixel grid.

    Attributes
    ----------
    crop : ndarray
        ``(gy·P, gx·P, 3)`` float32 crop at the model's pixel size.
    grid : tuple of int
        ``(gy, gx)`` patch grid.
    patch_px : int
        Patch size P at the model's pixel size.
    origin_px : tuple of float
        Top-left corner of the crop in the ORIGINAL image's pixels.
    scale : float
        Original pixels per model pixel (1 when no rescaling happened).
    """

    crop: NDArray[np.float32]
    grid: tuple[int, int]
    patch_px: int
    origin_px: tuple[float, float]
    scale: float

    def patch_box_px(self, row: int, col: int) -> tuple[float, float, float, float]:
        """Return ``(y0, x0, y1, x1)`` of a grid patch in the original image's pixels."""
        p = self.patch_px * self.scale
        y0 = self.origin_px[0] + row * p
        x0 = self.origin_px[1] + col * p
        return (y0, x0, y0 + p, x0 + p)


def prepare_image(
    image: ArrayLike,
    *,
    model_pixel_size_um: float,
    pixel_size_um: float | None = None,
    patch_px: int = 224,
    max_grid: int = 9,
) -> PreparedImage:
    """Crop (and if needed down-sample) an image onto the model's patch grid.

    Parameters
    ----------
    image : array_like
        Gray, RGB or RGBA image (see :func:`to_float_rgb`).
    model_pixel_size_um : float
        Sample pixel size the model was trained for.
    pixel_size_um : float, optional
        The image's sample pixel size; ``None`` assumes the model's.
    patch_px : int
        Patch size at the model's pixel size (224).
    max_grid : int
        Largest grid each way (9: the paper's 2016 px crop).

    Returns
    -------
    PreparedImage

    Raises
    ------
    ValueError
        Images coarser than the model's pixel size (beyond 2 %) are refused —
        up-sampling cannot restore the detail the model relies on; images
        more than 4x finer are refused too; images smaller than one patch.

    Notes
    -----
    Crop rule: the grid is ``min(max_grid, floor(H / P))`` by
    ``min(max_grid, floor(W / P))`` patches, centred in the image (for the
    paper's 2448 × 2048 camera: the central 2016 × 2016). Images finer than
    the model (e.g. a 40x objective for a 20x model) are area-averaged by
    the pixel-size ratio first.
    """
    rgb = to_float_rgb(image)
    if not (math.isfinite(model_pixel_size_um) and model_pixel_size_um > 0):
        raise ValueError(f"model_pixel_size_um must be > 0, got {model_pixel_size_um}")
    scale = 1.0
    if pixel_size_um is not None:
        if not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
            raise ValueError(f"pixel_size_um must be a finite number > 0, got {pixel_size_um}")
        ratio = pixel_size_um / model_pixel_size_um
        if ratio > 1.0 + PIXEL_SIZE_RTOL:
            raise ValueError(
                f"the model was trained for {model_pixel_size_um:.4g} µm pixels but the image has "
                f"{pixel_size_um:.4g} µm pixels (coarser): refusing to up-sample; use a model "
                "trained for this optics"
            )
        if ratio < _MIN_RATIO:
            raise ValueError(
                f"the image's pixels ({pixel_size_um:.4g} µm) are more than 4x finer than the "
                f"model's ({model_pixel_size_um:.4g} µm): use a model trained for this optics"
            )
        if ratio < 1.0 - PIXEL_SIZE_RTOL:
            scale = model_pixel_size_um / pixel_size_um  # original px per model px (> 1)
    h, w = rgb.shape[:2]
    if scale != 1.0:
        out_h, out_w = int(h / scale), int(w / scale)
        t = torch.from_numpy(rgb).permute(2, 0, 1)[None]  # (1, 3, H, W)
        t = F.interpolate(t, size=(out_h, out_w), mode="area")
        rgb = t[0].permute(1, 2, 0).contiguous().numpy()
        h, w = out_h, out_w
    gy, gx = min(max_grid, h // patch_px), min(max_grid, w // patch_px)
    if gy < 1 or gx < 1:
        raise ValueError(
            f"image is smaller than one {patch_px} px patch at the model's pixel size "
            f"(got {h} x {w} px after scaling)"
        )
    ch, cw = gy * patch_px, gx * patch_px
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    crop = np.ascontiguousarray(rgb[y0 : y0 + ch, x0 : x0 + cw])
    return PreparedImage(
        crop=crop,
        grid=(gy, gx),
        patch_px=patch_px,
        origin_px=(y0 * scale, x0 * scale),
        scale=scale,
    )


#: Smallest RIN input side (its stem and stages need 32 px).
_MIN_RIN_PX = 32


def rin_input(prepared: PreparedImage, input_px: int = 512, full_grid: int = 9) -> torch.Tensor:
    """Return the RIN input ``(1, 3, S, S)`` for a prepared crop.

    The paper resizes the 2016 px crop (9 patches) to 512 px; smaller grids
    keep the same scale (``input_px · grid / full_grid`` pixels per side), but
    never less than 32 px per side (the RIN's smallest input): a one-patch
    side at a 256 px model input is slightly enlarged rather than refused.

    Parameters
    ----------
    prepared : PreparedImage
        Output of :func:`prepare_image`.
    input_px : int
        Input size for the full 9-patch grid.
    full_grid : int
        Patches per side of the full crop.

    Returns
    -------
    torch.Tensor
        Float32 in [0, 1], area-resized.
    """
    gy, gx = prepared.grid
    size = (
        max(_MIN_RIN_PX, round(input_px * gy / full_grid)),
        max(_MIN_RIN_PX, round(input_px * gx / full_grid)),
    )
    t = torch.from_numpy(prepared.crop).permute(2, 0, 1)[None]  # (1, 3, H, W)
    return F.interpolate(t, size=size, mode="area")


def grid_patches(prepared: PreparedImage, cells: NDArray[np.intp]) -> torch.Tensor:
    """Return the patches at ``cells`` ((k, 2) rows/cols) as ``(k, 3, P, P)``.

    Parameters
    ----------
    prepared : PreparedImage
        Output of :func:`prepare_image`.
    cells : ndarray
        ``(k, 2)`` integer (row, col) grid indices.

    Returns
    -------
    torch.Tensor
        Float32 patches in [0, 1].
    """
    p = prepared.patch_px
    cells = np.asarray(cells, dtype=np.intp).reshape(-1, 2)
    if len(cells) == 0:
        return torch.zeros((0, 3, p, p), dtype=torch.float32)
    tiles = np.stack([prepared.crop[r * p : (r + 1) * p, c * p : (c + 1) * p] for r, c in cells])
    return torch.from_numpy(tiles).permute(0, 3, 1, 2).contiguous()  # (k, 3, P, P)
