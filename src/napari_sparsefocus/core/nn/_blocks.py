"""Building blocks shared by the networks.

MobileNet parts (:class:`ConvBNAct`, :class:`SqueezeExcite`,
:class:`InvertedResidual`, :func:`mobilenet_v3_features`) follow Sandler et
al. 2018 (MobileNetV2) and Howard et al. 2019 (MobileNetV3); the ConvNeXt
parts (:class:`LayerNorm2d`, :class:`DropPath`, :class:`DFENetBlock`) follow
Liu et al. 2022 and are the DFENet blocks of the SparseFocus DPN.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from ._config import V3Block

__all__ = [
    "ConvBNAct",
    "DFENetBlock",
    "DropPath",
    "InvertedResidual",
    "LayerNorm2d",
    "Regressor",
    "SqueezeExcite",
    "check_image_batch",
    "eval_mode",
    "init_convnext_",
    "init_mobilenet_",
    "make_activation",
    "make_divisible",
    "mobilenet_v3_features",
]


# ---------------------------------------------------------------- helpers
def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` (MobileNet convention).

    Parameters
    ----------
    value : float
        Desired channel count (after a width multiplier).
    divisor : int
        The result is a multiple of this.
    min_value : int, optional
        Smallest result (default ``divisor``).

    Returns
    -------
    int
        The rounded count, never more than 10 % below ``value``.
    """
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def make_activation(name: str | None) -> nn.Module:
    """Return an activation module by name.

    Parameters
    ----------
    name : {"relu", "relu6", "hardswish", "gelu"} or None
        ``None`` gives :class:`torch.nn.Identity`.

    Returns
    -------
    torch.nn.Module
        The activation (in-place where that is safe).

    Raises
    ------
    ValueError
        For an unknown name.
    """
    if name is None:
        return nn.Identity()
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "relu6":
        return nn.ReLU6(inplace=True)
    if name == "hardswish":
        return nn.Hardswish(inplace=True)
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r}; use relu, relu6, hardswish or gelu")


def check_image_batch(
    x: Tensor, *, network: str, channels: Sequence[int], min_size: int = 1
) -> None:
    """Raise ``ValueError`` unless ``x`` is a float ``(N, C, H, W)`` batch.

    Parameters
    ----------
    x : torch.Tensor
        The batch to check.
    network : str
        Network name used in the message.
    channels : sequence of int
        Accepted channel counts ``C``.
    min_size : int
        Smallest accepted ``H`` and ``W``.

    Raises
    ------
    ValueError
        With the expected shape in the message.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{network} expects a torch.Tensor, got {type(x).__name__}")
    expected = " or ".join(f"(N, {c}, H, W)" for c in channels)
    if x.ndim != 4 or x.shape[1] not in channels:
        raise ValueError(
            f"{network} expects a float batch of shape {expected}; got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(
            f"{network} expects floating-point input in [0, 1] (uint8 / 255); got {x.dtype}"
        )
    if x.shape[0] < 1 or x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(
            f"{network} expects a non-empty batch {expected} with H, W >= {min_size}; "
            f"got shape {tuple(x.shape)}"
        )


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode for the block, then restore its previous mode.

    Parameters
    ----------
    module : torch.nn.Module
        The module.

    Yields
    ------
    torch.nn.Module
        The same module, in eval mode.
    """
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def init_mobilenet_(module: nn.Module) -> None:
    """Initialise a MobileNet / ResNet in place (torchvision's scheme).

    Convolutions: Kaiming normal (fan-out); linears: normal(0, 0.01); all
    biases zero; batch-norm weight 1, bias 0.

    Parameters
    ----------
    module : torch.nn.Module
        Initialised recursively.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def init_convnext_(module: nn.Module) -> None:
    """Initialise a ConvNeXt-style network in place (timm's scheme).

    Convolutions and linears: truncated normal, std 0.02, cut at ±2 std; all
    biases zero; normalisation weight 1, bias 0. Layer-scale parameters are
    left as constructed.

    Parameters
    ----------
    module : torch.nn.Module
        Initialised recursively.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------- MobileNet parts
class ConvBNAct(nn.Module):
    """Convolution (no bias) → BatchNorm2d → activation.

    Parameters
    ----------
    in_chs, out_chs : int
        Channels.
    kernel_size : int
        Square kernel; "same" padding for stride 1.
    stride, groups, dilation : int
        As in :class:`torch.nn.Conv2d`.
    act : str or None
        Activation name (see :func:`make_activation`); ``None`` for a linear layer.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        act: str | None = "relu",
    ) -> None:
        super().__init__()
        padding = (kernel_size - 1) // 2 * dilation
        self.conv = nn.Conv2d(
            in_chs,
            out_chs,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = make_activation(act)

    def forward(self, x: Tensor) -> Tensor:
        """Apply conv, norm and activation to ``(N, C, H, W)``."""
        out: Tensor = self.act(self.bn(self.conv(x)))
        return out


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with a hard-sigmoid gate (MobileNetV3).

    Parameters
    ----------
    channels : int
        Channels of the gated tensor.
    squeeze_channels : int
        Bottleneck channels.
    """

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        """Gate the channels of ``(N, C, H, W)``."""
        s = x.mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
        gate: Tensor = self.gate(self.fc2(self.act(self.fc1(s))))  # (N, C, 1, 1)
        return x * gate


class InvertedResidual(nn.Module):
    """Inverted residual with linear bottleneck (MobileNetV2; MobileNetV3 with SE / hard-swish).

    1×1 expansion (skipped when ``exp_chs == in_chs``) → k×k depthwise →
    optional squeeze-excite → linear 1×1 projection, with an identity
    shortcut when the stride is 1 and the channels match.

    Parameters
    ----------
    in_chs, exp_chs, out_chs : int
        Input, expanded and output channels.
    kernel_size : int
        Depthwise kernel.
    stride, dilation : int
        Of the depthwise convolution.
    use_se : bool
        Add squeeze-excite (bottleneck ``make_divisible(exp_chs / 4)``).
    act : str
        Activation of the expansion and depthwise convolutions.
    """

    def __init__(
        self,
        in_chs: int,
        exp_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        use_se: bool = False,
        act: str = "relu",
    ) -> None:
        super().__init__()
        self.use_res = stride == 1 and in_chs == out_chs
        self.expand: nn.Module = (
            ConvBNAct(in_chs, exp_chs, 1, act=act) if exp_chs != in_chs else nn.Identity()
        )
        self.dw = ConvBNAct(
            exp_chs, exp_chs, kernel_size, stride, groups=exp_chs, dilation=dilation, act=act
        )
        self.se: nn.Module = (
            SqueezeExcite(exp_chs, make_divisible(exp_chs / 4)) if use_se else nn.Identity()
        )
        self.project = ConvBNAct(exp_chs, out_chs, 1, act=None)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``(N, C, H, W)``."""
        out: Tensor = self.project(self.se(self.dw(self.expand(x))))
        return x + out if self.use_res else out


def mobilenet_v3_features(
    in_chans: int,
    stem_channels: int,
    blocks: Sequence[V3Block],
    width_mult: float = 1.0,
    output_stride: int = 32,
) -> tuple[nn.Sequential, int]:
    """Build a MobileNetV3 feature extractor (stem, blocks, last 1×1 conv).

    Parameters
    ----------
    in_chans : int
        Input channels.
    stem_channels : int
        Stem channels before ``width_mult``.
    blocks : sequence of tuple
        Rows ``(kernel, expanded, out, use_se, activation, stride)``.
    width_mult : float
        Channel multiplier.
    output_stride : int
        Largest total stride; later strides become dilation.

    Returns
    -------
    features : torch.nn.Sequential
        ``[stem, *blocks, last_conv]``; the last conv has ``6 × out`` channels
        of the last block, with hard-swish.
    out_channels : int
        Channels of the feature map.
    """
    stem = make_divisible(stem_channels * width_mult)
    layers: list[nn.Module] = [ConvBNAct(in_chans, stem, 3, stride=2, act="hardswish")]
    stride, dilation, chs = 2, 1, stem
    for kernel, exp, out, use_se, act, s in blocks:
        if s > 1 and stride * s > output_stride:
            dilation *= s
            s = 1
        else:
            stride *= s
        exp_chs = make_divisible(exp * width_mult)
        out_chs = make_divisible(out * width_mult)
        layers.append(InvertedResidual(chs, exp_chs, out_chs, kernel, s, dilation, use_se, act))
        chs = out_chs
    last = 6 * chs
    layers.append(ConvBNAct(chs, last, 1, act="hardswish"))
    return nn.Sequential(*layers), last


# ---------------------------------------------------------------- ConvNeXt parts
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a channels-first ``(N, C, H, W)`` tensor."""

    def forward(self, x: Tensor) -> Tensor:
        """Normalise each pixel's channel vector."""
        x = x.permute(0, 2, 3, 1)  # (N, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # (N, C, H, W)


class DropPath(nn.Module):
    """Stochastic depth: drop whole residual branches per sample while training.

    Parameters
    ----------
    p : float
        Drop probability in [0, 1); kept branches are scaled by ``1 / (1 - p)``.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropPath probability must be in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x`` with whole samples zeroed (training) or unchanged (eval)."""
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (N, 1, 1, 1)
        return x * mask / keep

    def extra_repr(self) -> str:
        """Show the drop probability."""
        return f"p={self.p}"


class DFENetBlock(nn.Module):
    """DFENet block of the SparseFocus DPN (a ConvNeXt block).

    k×k depthwise conv → LayerNorm → Linear(C, r·C) → GELU → Linear(r·C, C)
    → layer scale → stochastic depth → residual add.

    Parameters
    ----------
    dim : int
        Channels.
    kernel_size : int
        Depthwise kernel (7: the large kernel of the paper).
    mlp_ratio : float
        MLP expansion.
    layer_scale_init : float or None
        Initial layer scale (``None``: no layer scale).
    drop_path : float
        Stochastic-depth probability of this block.
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 7,
        mlp_ratio: float = 4.0,
        layer_scale_init: float | None = 1e-6,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = max(1, round(mlp_ratio * dim))
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(hidden, dim)
        self.gamma = (
            nn.Parameter(torch.full((dim,), float(layer_scale_init)))
            if layer_scale_init is not None
            else None
        )
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``(N, C, H, W)``."""
        shortcut = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # (N, H, W, C)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))  # (N, H, W, C)
        if self.gamma is not None:
            x = x * self.gamma
        x = x.permute(0, 3, 1, 2)  # (N, C, H, W)
        out: Tensor = shortcut + self.drop_path(x)
        return out


class Regressor(nn.Module):
    """Shared ``forward`` / ``predict`` of the defocus regressors (DPN and baselines)."""

    def forward_features(self, x: Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    # set by subclasses that use the default head below
    head_drop: nn.Module
    fc: nn.Linear
    config: Any

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool and regression (Jiang, Dastidar; the DPN and Liao override it).

        Parameters
        ----------
        x : torch.Tensor
            Feature map ``(N, C, h, w)``.
        pre_logits : bool
            Return the pooled features ``(N, C)`` instead.

        Returns
        -------
        torch.Tensor
            Defocus ``(N,)`` in µm, or the pooled features.
        """
        x = self.head_drop(x.mean(dim=(2, 3)))  # (N, C)
        if pre_logits:
            return x
        out: Tensor = self.fc(x).squeeze(-1) * self.config.output_scale_um  # (N,)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Return the defocus ``(N,)`` in µm."""
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Return the defocus in eval mode, without gradients.

        Parameters
        ----------
        x : torch.Tensor
            The network's input batch.

        Returns
        -------
        torch.Tensor
            ``(N,)`` defocus in µm; the training/eval mode is restored afterwards.
        """
        with eval_mode(self):
            return self.forward(x)
