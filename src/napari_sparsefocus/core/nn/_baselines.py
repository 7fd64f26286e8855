"""Baseline defocus regressors from the literature SparseFocus compares against.

- :class:`LiaoNet` — Liao et al.: MobileNetV3-small with a regression output on
  a single shot.
- :class:`JiangNet` — Jiang et al.: a ResNet on a multi-domain input (gray
  patch + log-magnitude Fourier spectrum).
- :class:`DastidarNet` — Dastidar: MobileNetV2 (width 0.4) on the
  median-filtered, normalised difference of two shots Δ apart.

All regress the signed defocus in µm, shape ``(N,)``, and share the
``forward_features`` / ``forward_head`` / ``forward`` / ``predict`` interface
of :class:`~napari_sparsefocus.core.nn.DefocusPredictionNetwork`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._blocks import (
    ConvBNAct,
    InvertedResidual,
    Regressor,
    check_image_batch,
    init_mobilenet_,
    make_divisible,
    mobilenet_v3_features,
)
from ._config import DastidarConfig, JiangConfig, LiaoConfig

__all__ = ["DastidarNet", "JiangNet", "LiaoNet"]

# ITU-R BT.601 luma weights (R, G, B).
_LUMA = (0.299, 0.587, 0.114)


def _to_gray(x: Tensor) -> Tensor:
    """Luma of an RGB batch ``(N, 3, H, W)`` → ``(N, 1, H, W)``."""
    w = x.new_tensor(_LUMA).view(1, 3, 1, 1)  # (1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)  # (N, 1, H, W)


def _median3x3(x: Tensor) -> Tensor:
    """3×3 median filter of ``(N, C, H, W)`` with edge replication."""
    n, c, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")  # (N, C, H + 2, W + 2)
    windows = padded.unfold(2, 3, 1).unfold(3, 3, 1)  # (N, C, H, W, 3, 3)
    windows = windows.reshape(n, c, h, w, 9)  # (N, C, H, W, 9)
    return windows.median(dim=-1).values  # (N, C, H, W)


# ---------------------------------------------------------------- Liao et al.
class LiaoNet(Regressor):
    """MobileNetV3-small defocus regressor (Liao et al., single shot).

    Parameters
    ----------
    cfg : LiaoConfig, optional
        Architecture (default ``LiaoConfig()``: width 1.0, standard table).

    Attributes
    ----------
    config : LiaoConfig
        The architecture config.
    name : str
        Registry key, ``"liao"``.

    Notes
    -----
    Input: float ``(N, 3, H, W)`` in [0, 1] (224×224 here; Liao et al. used
    672×672); output ``(N,)`` µm. The classifier of MobileNetV3-small
    (global average pool → Linear 1024 → hard-swish → dropout → Linear) ends in
    one output instead of 1000 classes. 1.52 M parameters at width 1.0.
    """

    name: ClassVar[str] = "liao"
    min_input_size: ClassVar[int] = 32

    def __init__(self, cfg: LiaoConfig | None = None) -> None:
        super().__init__()
        cfg = LiaoConfig() if cfg is None else cfg
        if not isinstance(cfg, LiaoConfig):
            raise ValueError(f"cfg must be a LiaoConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.features, chs = mobilenet_v3_features(
            cfg.in_chans, cfg.stem_channels, cfg.blocks, cfg.width_mult, output_stride=32
        )
        self.num_features = chs
        hidden = make_divisible(cfg.last_channels * cfg.width_mult)
        self.head = nn.Sequential(
            nn.Linear(chs, hidden),
            nn.Hardswish(inplace=True),
            nn.Dropout(cfg.dropout),
        )
        self.fc = nn.Linear(hidden, 1)
        init_mobilenet_(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """Return the feature map ``(N, C, H / 32, W / 32)`` of ``(N, 3, H, W)``.

        Parameters
        ----------
        x : torch.Tensor
            Float ``(N, in_chans, H, W)`` in [0, 1], H, W >= 32.

        Returns
        -------
        torch.Tensor
            The feature map.

        Raises
        ------
        ValueError
            For a wrongly shaped or non-float input.
        """
        check_image_batch(
            x, network="LiaoNet", channels=(self.config.in_chans,), min_size=self.min_input_size
        )
        out: Tensor = self.features(x)
        return out

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool, hidden linear layer and regression.

        Parameters
        ----------
        x : torch.Tensor
            Feature map ``(N, C, h, w)``.
        pre_logits : bool
            Return the hidden features ``(N, hidden)`` instead.

        Returns
        -------
        torch.Tensor
            Defocus ``(N,)`` in µm, or the hidden features.
        """
        x = x.mean(dim=(2, 3))  # (N, C)
        x = self.head(x)  # (N, hidden)
        if pre_logits:
            return x
        out: Tensor = self.fc(x).squeeze(-1) * self.config.output_scale_um  # (N,)
        return out


# ---------------------------------------------------------------- Jiang et al.
class _BasicBlock(nn.Module):
    """ResNet BasicBlock: two 3×3 conv-BN with a (projected) shortcut."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_chs, out_chs, 3, stride, act="relu")
        self.conv2 = ConvBNAct(out_chs, out_chs, 3, act=None)
        self.shortcut: nn.Module = (
            ConvBNAct(in_chs, out_chs, 1, stride, act=None)
            if stride != 1 or in_chs != out_chs
            else nn.Identity()
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``(N, C, H, W)``."""
        out: Tensor = self.act(self.conv2(self.conv1(x)) + self.shortcut(x))
        return out


class JiangNet(Regressor):
    """ResNet defocus regressor on a spatial + Fourier-magnitude input (Jiang et al.).

    Parameters
    ----------
    cfg : JiangConfig, optional
        Architecture (default ``JiangConfig()``: ResNet-10 at half width).

    Attributes
    ----------
    config : JiangConfig
        The architecture config.
    name : str
        Registry key, ``"jiang"``.

    Notes
    -----
    :meth:`forward` accepts either RGB ``(N, 3, H, W)`` in [0, 1] — turned into
    the 2-channel input by :meth:`prepare` — or an already prepared
    ``(N, 2, H, W)`` batch. Output ``(N,)`` µm. Jiang et al. also fed the
    Fourier phase and used a deeper ResNet; this baseline keeps the magnitude
    and a CPU-sized ResNet-10.
    """

    name: ClassVar[str] = "jiang"
    min_input_size: ClassVar[int] = 32

    def __init__(self, cfg: JiangConfig | None = None) -> None:
        super().__init__()
        cfg = JiangConfig() if cfg is None else cfg
        if not isinstance(cfg, JiangConfig):
            raise ValueError(f"cfg must be a JiangConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.stem = nn.Sequential(
            ConvBNAct(2, cfg.stem_channels, 7, stride=2, act="relu"),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages: list[nn.Module] = []
        chs = cfg.stem_channels
        for i, (width, depth) in enumerate(zip(cfg.widths, cfg.depths, strict=True)):
            blocks = [_BasicBlock(chs, width, stride=1 if i == 0 else 2)]
            blocks += [_BasicBlock(width, width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            chs = width
        self.stages = nn.Sequential(*stages)
        self.num_features = chs
        self.head_drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(chs, 1)
        init_mobilenet_(self)

    @staticmethod
    def prepare(x_rgb: Tensor, eps: float = 1e-8) -> Tensor:
        """Build the 2-channel multi-domain input from RGB patches.

        Channel 0 is the gray (BT.601 luma) patch; channel 1 its
        log-magnitude spectrum ``log1p(|fftshift(fft2(gray))|)`` (orthonormal
        FFT, zero frequency at ``(H // 2, W // 2)``), divided by its per-image
        maximum so it lies in [0, 1].

        Parameters
        ----------
        x_rgb : torch.Tensor
            Float ``(N, 3, H, W)`` in [0, 1].
        eps : float
            Guards the division for an all-black patch.

        Returns
        -------
        torch.Tensor
            ``(N, 2, H, W)``, same dtype and device.

        Raises
        ------
        ValueError
            If ``x_rgb`` is not a float ``(N, 3, H, W)`` batch.
        """
        check_image_batch(x_rgb, network="JiangNet.prepare", channels=(3,))
        gray = _to_gray(x_rgb)  # (N, 1, H, W)
        spec = torch.fft.fftshift(torch.fft.fft2(gray, norm="ortho"), dim=(-2, -1))
        mag = torch.log1p(spec.abs()).to(gray.dtype)  # (N, 1, H, W)
        peak = mag.amax(dim=(2, 3), keepdim=True)  # (N, 1, 1, 1)
        return torch.cat([gray, mag / (peak + eps)], dim=1)  # (N, 2, H, W)

    def forward_features(self, x: Tensor) -> Tensor:
        """Return the feature map ``(N, C, H / 32, W / 32)``.

        Parameters
        ----------
        x : torch.Tensor
            RGB ``(N, 3, H, W)`` in [0, 1] or prepared ``(N, 2, H, W)``.

        Returns
        -------
        torch.Tensor
            The last stage's feature map.

        Raises
        ------
        ValueError
            For a wrongly shaped or non-float input.
        """
        check_image_batch(x, network="JiangNet", channels=(3, 2), min_size=self.min_input_size)
        if x.shape[1] == 3:
            x = self.prepare(x)  # (N, 2, H, W)
        out: Tensor = self.stages(self.stem(x))
        return out


# ---------------------------------------------------------------- Dastidar
class DastidarNet(Regressor):
    """MobileNetV2 (width 0.4) defocus regressor on a two-shot difference image (Dastidar).

    Parameters
    ----------
    cfg : DastidarConfig, optional
        Architecture (default ``DastidarConfig()``: α = 0.4, standard table).

    Attributes
    ----------
    config : DastidarConfig
        The architecture config.
    name : str
        Registry key, ``"dastidar"``.

    Notes
    -----
    Input: the prepared difference image ``(N, 1, H, W)`` from
    :meth:`prepare` (``shot_a`` at the current z, ``shot_b`` at z + Δ; the
    label is the defocus of ``shot_a``); output ``(N,)`` µm. The final
    feature map is global-average pooled (Dastidar flattened a fixed 7×7 map;
    pooling keeps any input size and the paper's ≈0.5 M parameters: 0.49 M here).
    """

    name: ClassVar[str] = "dastidar"
    min_input_size: ClassVar[int] = 32

    def __init__(self, cfg: DastidarConfig | None = None) -> None:
        super().__init__()
        cfg = DastidarConfig() if cfg is None else cfg
        if not isinstance(cfg, DastidarConfig):
            raise ValueError(f"cfg must be a DastidarConfig, got {type(cfg).__name__}")
        self.config = cfg
        chs = make_divisible(cfg.stem_channels * cfg.width_mult)
        layers: list[nn.Module] = [ConvBNAct(cfg.in_chans, chs, 3, stride=2, act="relu6")]
        for t, c, n, s in cfg.stages:
            out_chs = make_divisible(c * cfg.width_mult)
            for i in range(n):
                exp_chs = round(chs * t)
                stride = s if i == 0 else 1
                layers.append(InvertedResidual(chs, exp_chs, out_chs, 3, stride, act="relu6"))
                chs = out_chs
        last = make_divisible(cfg.last_channels * max(1.0, cfg.width_mult))
        layers.append(ConvBNAct(chs, last, 1, act="relu6"))
        self.features = nn.Sequential(*layers)
        self.num_features = last
        self.head_drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(last, 1)
        init_mobilenet_(self)

    @staticmethod
    def prepare(shot_a: Tensor, shot_b: Tensor, eps: float = 1e-3) -> Tensor:
        """Build the normalised difference image of two shots (Dastidar, Section 3.4).

        Each shot is converted to gray (BT.601 luma) and 3×3 median filtered;
        the difference ``b - a`` is median filtered again and standardised
        per image (zero mean, unit standard deviation).

        Parameters
        ----------
        shot_a, shot_b : torch.Tensor
            Float ``(N, 3, H, W)`` in [0, 1], the same field Δ apart in z.
        eps : float
            Added to the standard deviation, so a (nearly) flat difference is not
            blown up to unit variance; identical shots give exactly zero.

        Returns
        -------
        torch.Tensor
            ``(N, 1, H, W)``.

        Raises
        ------
        ValueError
            If the shots are not float ``(N, 3, H, W)`` batches of the same shape.
        """
        check_image_batch(shot_a, network="DastidarNet.prepare (shot_a)", channels=(3,))
        check_image_batch(shot_b, network="DastidarNet.prepare (shot_b)", channels=(3,))
        if shot_a.shape != shot_b.shape:
            raise ValueError(
                "DastidarNet.prepare expects two shots of the same shape (N, 3, H, W); got "
                f"{tuple(shot_a.shape)} and {tuple(shot_b.shape)}"
            )
        a = _median3x3(_to_gray(shot_a))  # (N, 1, H, W)
        b = _median3x3(_to_gray(shot_b))  # (N, 1, H, W)
        diff = _median3x3(b - a)  # (N, 1, H, W)
        mean = diff.mean(dim=(2, 3), keepdim=True)  # (N, 1, 1, 1)
        std = diff.std(dim=(2, 3), keepdim=True, correction=0)  # (N, 1, 1, 1)
        return (diff - mean) / (std + eps)

    def forward_features(self, x: Tensor) -> Tensor:
        """Return the feature map ``(N, C, H / 32, W / 32)``.

        Parameters
        ----------
        x : torch.Tensor
            Prepared difference image ``(N, 1, H, W)``.

        Returns
        -------
        torch.Tensor
            The feature map after the last 1×1 convolution.

        Raises
        ------
        ValueError
            For a wrongly shaped or non-float input (e.g. an RGB shot instead of
            :meth:`prepare` output).
        """
        check_image_batch(
            x,
            network="DastidarNet (use DastidarNet.prepare(shot_a, shot_b))",
            channels=(self.config.in_chans,),
            min_size=self.min_input_size,
        )
        out: Tensor = self.features(x)
        return out
