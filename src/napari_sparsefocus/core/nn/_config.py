"""Frozen, validated configuration dataclasses, one per network.

Every config is JSON-friendly: :meth:`NetworkConfig.to_dict` returns plain
Python (tuples become lists) and :meth:`NetworkConfig.from_dict` accepts that
output back, turning lists into tuples and refusing unknown keys. The model
file format (``docs/learning-core.md``) stores ``to_dict()`` output next to
the weights, so a network is rebuilt from its config alone.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, NoReturn, TypeVar

__all__ = [
    "ACTIVATIONS",
    "DPNConfig",
    "DastidarConfig",
    "JiangConfig",
    "LiaoConfig",
    "NetworkConfig",
    "RINConfig",
]

_C = TypeVar("_C", bound="NetworkConfig")

#: Activation names accepted in MobileNetV3 block tables.
ACTIVATIONS = ("relu", "hardswish")

#: One MobileNetV3 block: (kernel, expanded channels, out channels, squeeze-excite,
#: activation, stride), as in Table 2 of Howard et al. 2019.
V3Block = tuple[int, int, int, bool, str, int]

#: One MobileNetV2 stage: (expansion t, out channels c, repeats n, first stride s),
#: as in Table 2 of Sandler et al. 2018.
V2Stage = tuple[int, int, int, int]

#: MobileNetV3-small block table (Howard et al. 2019, Table 2).
MOBILENET_V3_SMALL: tuple[V3Block, ...] = (
    (3, 16, 16, True, "relu", 2),
    (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hardswish", 2),
    (5, 240, 40, True, "hardswish", 1),
    (5, 240, 40, True, "hardswish", 1),
    (5, 120, 48, True, "hardswish", 1),
    (5, 144, 48, True, "hardswish", 1),
    (5, 288, 96, True, "hardswish", 2),
    (5, 576, 96, True, "hardswish", 1),
    (5, 576, 96, True, "hardswish", 1),
)

#: MobileNetV2 stage table (Sandler et al. 2018, Table 2).
MOBILENET_V2: tuple[V2Stage, ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _tuplify(value: Any) -> Any:
    """Turn lists (from JSON) into tuples, recursively."""
    if isinstance(value, (list, tuple)):
        return tuple(_tuplify(v) for v in value)
    return value


def _listify(value: Any) -> Any:
    """Turn tuples into lists, recursively (JSON-shaped output)."""
    if isinstance(value, (list, tuple)):
        return [_listify(v) for v in value]
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


@dataclass(frozen=True)
class NetworkConfig:
    """Base class of the network configs: validation helpers and dict round-trip."""

    def __post_init__(self) -> None:
        # JSON hands lists back; store tuples so configs stay hashable and comparable.
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, _tuplify(value))
        self._validate()

    def _validate(self) -> None:
        """Raise ``ValueError`` naming the offending field; overridden per config."""

    # ------------------------------------------------------------ checks
    def _fail(self, name: str, requirement: str) -> NoReturn:
        raise ValueError(
            f"{type(self).__name__}.{name} must be {requirement}, got {getattr(self, name)!r}"
        )

    def _int(self, name: str, lo: int = 1, hi: int | None = None) -> None:
        value = getattr(self, name)
        if not _is_int(value) or value < lo or (hi is not None and value > hi):
            bound = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
            self._fail(name, f"an integer {bound}")

    def _float(
        self, name: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
    ) -> None:
        value = getattr(self, name)
        ok = _is_number(value)
        if ok:
            v = float(value)
            ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        if not ok:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            self._fail(name, f"a finite number in {left}{lo}, {hi}{right}")

    def _int_tuple(self, name: str, lo: int = 1, length: int | None = None) -> None:
        value = getattr(self, name)
        ok = isinstance(value, tuple) and len(value) >= 1
        ok = ok and all(_is_int(v) and v >= lo for v in value)
        ok = ok and (length is None or len(value) == length)
        if not ok:
            n = f"{length} " if length is not None else "1 or more "
            self._fail(name, f"a tuple of {n}integers >= {lo}")

    def _v3_blocks(self, name: str) -> None:
        rows = getattr(self, name)
        need = (
            "a non-empty tuple of (kernel, expanded, out, use_se, activation, stride) rows "
            f"with odd kernel >= 1, channels >= 1, bool use_se, activation in {ACTIVATIONS} "
            "and stride 1 or 2"
        )
        if not isinstance(rows, tuple) or not rows:
            self._fail(name, need)
        for row in rows:
            ok = isinstance(row, tuple) and len(row) == 6
            if ok:
                k, exp, out, se, act, s = row
                ok = (
                    _is_int(k)
                    and k >= 1
                    and k % 2 == 1
                    and _is_int(exp)
                    and exp >= 1
                    and _is_int(out)
                    and out >= 1
                    and isinstance(se, bool)
                    and act in ACTIVATIONS
                    and s in (1, 2)
                    and not isinstance(s, bool)
                )
            if not ok:
                self._fail(name, need + f" (bad row {row!r})")

    def _v2_stages(self, name: str) -> None:
        rows = getattr(self, name)
        need = "a non-empty tuple of (t, c, n, s) rows with t, c, n >= 1 and s 1 or 2"
        if not isinstance(rows, tuple) or not rows:
            self._fail(name, need)
        for row in rows:
            ok = isinstance(row, tuple) and len(row) == 4 and all(_is_int(v) for v in row)
            ok = ok and row[0] >= 1 and row[1] >= 1 and row[2] >= 1 and row[3] in (1, 2)
            if not ok:
                self._fail(name, need + f" (bad row {row!r})")

    # ------------------------------------------------------------ I/O
    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-serialisable dict (tuples become lists).

        Returns
        -------
        dict
            Field name to value; ``from_dict(to_dict())`` gives an equal config.
        """
        return {k: _listify(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls: type[_C], data: dict[str, Any] | None) -> _C:
        """Build a config from :meth:`to_dict` output (or any subset of it).

        Parameters
        ----------
        data : dict or None
            Field values; missing fields take their defaults, lists are turned
            into tuples. ``None`` gives the default config.

        Returns
        -------
        NetworkConfig
            The validated config.

        Raises
        ------
        ValueError
            On unknown keys or invalid values (the message names the field).
        """
        data = {} if data is None else dict(data)
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(
                f"Unknown {cls.__name__} field(s): {sorted(unknown)}; valid fields are "
                f"{sorted(names)}"
            )
        return cls(**{k: _tuplify(v) for k, v in data.items()})

    def replace(self: _C, **changes: Any) -> _C:
        """Return a copy with ``changes`` applied (validated).

        Parameters
        ----------
        **changes
            Field values to change.

        Returns
        -------
        NetworkConfig
            The new config.
        """
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class RINConfig(NetworkConfig):
    """Configuration of :class:`RegionImportanceNetwork` (MobileNetV3-style, fully convolutional).

    Parameters
    ----------
    in_chans : int
        Input channels (3: RGB).
    grid : tuple of int
        Output grid ``(rows, cols)``; ``(9, 9)`` for the 2016 px crop in 224 px patches.
    width_mult : float
        Channel multiplier applied to the block table (MobileNetV3 ``α``).
    stem_channels : int
        Channels of the stride-2 3×3 stem (before ``width_mult``).
    blocks : tuple of tuple
        MobileNetV3 block table rows ``(kernel, expanded, out, use_se, activation,
        stride)``; the default is the MobileNetV3-small table.
    output_stride : int
        Total stride of the feature map (8, 16 or 32). Strides past it are turned
        into dilation (as in DeepLabV3 / LR-ASPP), so a 512 px input gives a
        32×32 map at the default 16 — about 3.6 feature pixels per grid cell.
    head_channels : int
        Hidden channels of the 1×1 convolutional head.
    dropout : float
        Dropout before the last 1×1 convolution, in [0, 1).
    """

    in_chans: int = 3
    grid: tuple[int, int] = (9, 9)
    width_mult: float = 1.0
    stem_channels: int = 16
    blocks: tuple[V3Block, ...] = MOBILENET_V3_SMALL
    output_stride: int = 16
    head_channels: int = 128
    dropout: float = 0.1

    def _validate(self) -> None:
        self._int("in_chans")
        self._int_tuple("grid", lo=1, length=2)
        self._float("width_mult", 0.0, 4.0, lo_open=True)
        self._int("stem_channels")
        self._v3_blocks("blocks")
        if self.output_stride not in (8, 16, 32) or not _is_int(self.output_stride):
            self._fail("output_stride", "one of 8, 16, 32")
        self._int("head_channels")
        self._float("dropout", 0.0, 1.0, hi_open=True)


@dataclass(frozen=True)
class DPNConfig(NetworkConfig):
    """Configuration of :class:`DefocusPredictionNetwork` (ConvNeXt-like DFENet stages).

    Parameters
    ----------
    in_chans : int
        Input channels (3: RGB).
    patch_size : int
        Kernel and stride of the stem convolution (4 in the paper).
    dims : tuple of int
        Channels of each stage; a 2×2 stride-2 downsampling sits between stages.
    depths : tuple of int
        DFENet blocks per stage (0 allowed), same length as ``dims``.
    kernel_size : int
        Depthwise kernel of the DFENet blocks (odd; 7 in the paper).
    mlp_ratio : float
        Expansion of the pointwise MLP (4 as in ConvNeXt).
    layer_scale_init : float or None
        Initial per-channel layer scale of each block's residual branch
        (ConvNeXt: 1e-6); ``None`` disables layer scale.
    drop_path_rate : float
        Stochastic-depth rate, increasing linearly over the blocks up to this value.
    head_dropout : float
        Dropout before the regression layer, in [0, 1).
    output_scale_um : float
        The linear head's output is multiplied by this (µm per output unit), so the
        head can work in unit scale; recorded here so checkpoints stay self-describing.
    colour_sharpness_scales : tuple of int
        Scales (px) of the chromatic-sharpness branch (empty: no branch, the
        paper's DPN). Per channel and scale it measures the log gradient
        energy of the patch (plus each channel's log variance); an MLP of
        ``colour_sharpness_hidden`` units turns them into features joined to
        the pooled DFENet features before the regression layer. With axial
        chromatic aberration the sharper channel tells the side of focus.
    colour_sharpness_hidden : int
        Width of that MLP.
    sign_magnitude_head : bool
        Regress ``softplus(a) · tanh(side_gain · b)`` from two outputs ``(a, b)``
        instead of one linear output: the magnitude and the side of focus
        (logit ``b``) are learned by separate units and multiplied, which a
        linear layer over summed features cannot express (False: the paper's
        linear head).
    side_gain : float
        ``0.5`` makes the output the posterior mean ``m (2σ(b) − 1)``; larger
        values commit each patch to its likelier side, so the median over the
        selected patches acts as a vote on the side (default 2: lower patch
        and frame errors than 0.5 on held-out patches beyond 1 µm).
    """

    in_chans: int = 3
    patch_size: int = 4
    dims: tuple[int, ...] = (24, 48, 96, 192)
    depths: tuple[int, ...] = (1, 1, 3, 1)
    kernel_size: int = 7
    mlp_ratio: float = 4.0
    layer_scale_init: float | None = 1e-6
    drop_path_rate: float = 0.0
    head_dropout: float = 0.0
    output_scale_um: float = 1.0
    colour_sharpness_scales: tuple[int, ...] = ()
    colour_sharpness_hidden: int = 64
    sign_magnitude_head: bool = False
    side_gain: float = 2.0

    def _validate(self) -> None:
        self._int("in_chans")
        self._int("patch_size")
        self._int_tuple("dims", lo=1)
        if self.colour_sharpness_scales:
            self._int_tuple("colour_sharpness_scales", lo=1)
        self._int("colour_sharpness_hidden")
        if not isinstance(self.sign_magnitude_head, bool):
            self._fail("sign_magnitude_head", "a bool")
        self._float("side_gain", 0.0, 100.0, lo_open=True)
        self._int_tuple("depths", lo=0)
        if len(self.dims) != len(self.depths):
            self._fail("depths", f"as long as dims ({len(self.dims)} stages)")
        self._int("kernel_size")
        if self.kernel_size % 2 != 1:
            self._fail("kernel_size", "odd")
        self._float("mlp_ratio", 0.0, 64.0, lo_open=True)
        if self.layer_scale_init is not None:
            self._float("layer_scale_init", 0.0, 10.0, lo_open=True)
        self._float("drop_path_rate", 0.0, 1.0, hi_open=True)
        self._float("head_dropout", 0.0, 1.0, hi_open=True)
        self._float("output_scale_um", 0.0, 1e6, lo_open=True)


@dataclass(frozen=True)
class LiaoConfig(NetworkConfig):
    """Configuration of :class:`LiaoNet` (MobileNetV3-small regression, Liao et al.).

    Parameters
    ----------
    in_chans : int
        Input channels (3: RGB).
    width_mult : float
        Channel multiplier (MobileNetV3 ``α``), also applied to ``last_channels``.
    stem_channels : int
        Channels of the stride-2 3×3 stem (before ``width_mult``).
    blocks : tuple of tuple
        Block table rows ``(kernel, expanded, out, use_se, activation, stride)``;
        default: the standard MobileNetV3-small table.
    last_channels : int
        Hidden width of the classifier-style head (1024 in MobileNetV3-small).
    dropout : float
        Dropout in the head, in [0, 1).
    output_scale_um : float
        Multiplier of the regression output (µm per output unit).
    """

    in_chans: int = 3
    width_mult: float = 1.0
    stem_channels: int = 16
    blocks: tuple[V3Block, ...] = MOBILENET_V3_SMALL
    last_channels: int = 1024
    dropout: float = 0.2
    output_scale_um: float = 1.0

    def _validate(self) -> None:
        self._int("in_chans")
        self._float("width_mult", 0.0, 4.0, lo_open=True)
        self._int("stem_channels")
        self._v3_blocks("blocks")
        self._int("last_channels")
        self._float("dropout", 0.0, 1.0, hi_open=True)
        self._float("output_scale_um", 0.0, 1e6, lo_open=True)


@dataclass(frozen=True)
class JiangConfig(NetworkConfig):
    """Configuration of :class:`JiangNet` (ResNet on a spatial + Fourier-magnitude input).

    The input has 2 channels (gray patch, normalised log-magnitude spectrum);
    see :meth:`JiangNet.prepare`.

    Parameters
    ----------
    stem_channels : int
        Channels of the 7×7 stride-2 stem (followed by a 3×3 stride-2 max pool).
    widths : tuple of int
        Channels of each residual stage (stride 2 from the second stage on).
    depths : tuple of int
        BasicBlocks per stage (ResNet-18: ``(2, 2, 2, 2)``; default ResNet-10).
    dropout : float
        Dropout before the regression layer, in [0, 1).
    output_scale_um : float
        Multiplier of the regression output (µm per output unit).
    """

    stem_channels: int = 32
    widths: tuple[int, ...] = (32, 64, 128, 256)
    depths: tuple[int, ...] = (1, 1, 1, 1)
    dropout: float = 0.0
    output_scale_um: float = 1.0

    def _validate(self) -> None:
        self._int("stem_channels")
        self._int_tuple("widths", lo=1)
        self._int_tuple("depths", lo=1)
        if len(self.widths) != len(self.depths):
            self._fail("depths", f"as long as widths ({len(self.widths)} stages)")
        self._float("dropout", 0.0, 1.0, hi_open=True)
        self._float("output_scale_um", 0.0, 1e6, lo_open=True)


@dataclass(frozen=True)
class DastidarConfig(NetworkConfig):
    """Configuration of :class:`DastidarNet` (MobileNetV2 on a two-shot difference image).

    Parameters
    ----------
    in_chans : int
        Input channels (1: the prepared difference image, see :meth:`DastidarNet.prepare`).
    width_mult : float
        MobileNetV2 width multiplier ``α`` (0.4 in Dastidar 2020).
    stem_channels : int
        Channels of the stride-2 3×3 stem (before ``width_mult``).
    stages : tuple of tuple
        MobileNetV2 stage rows ``(t, c, n, s)``; default: the standard table.
    last_channels : int
        Channels of the final 1×1 convolution (1280; scaled only when ``α > 1``).
    dropout : float
        Dropout before the regression layer, in [0, 1).
    output_scale_um : float
        Multiplier of the regression output (µm per output unit).
    """

    in_chans: int = 1
    width_mult: float = 0.4
    stem_channels: int = 32
    stages: tuple[V2Stage, ...] = MOBILENET_V2
    last_channels: int = 1280
    dropout: float = 0.2
    output_scale_um: float = 1.0

    def _validate(self) -> None:
        self._int("in_chans")
        self._float("width_mult", 0.0, 4.0, lo_open=True)
        self._int("stem_channels")
        self._v2_stages("stages")
        self._int("last_channels")
        self._float("dropout", 0.0, 1.0, hi_open=True)
        self._float("output_scale_um", 0.0, 1e6, lo_open=True)
