"""Defocus Prediction Network (DPN) of SparseFocus.

SparseFocus, Section 4.2: a 4×4 stride-4 convolution with BatchNorm2d,
stages of DFENet blocks (ConvNeXt-like: 7×7 depthwise convolution,
LayerNorm, pointwise MLP with GELU, layer scale, residual) separated by
downsampling (LayerNorm + 2×2 stride-2 convolution), global max pooling and a
linear regression layer giving the signed defocus of a 224 px patch in µm.

Sizing: the paper gives no widths or depths. The default is sized for a
2-core CPU: widths (24, 48, 96, 192), depths (1, 1, 3, 1) — 0.67 M parameters
(670 393) and 0.11 GMACs (0.22 GFLOPs, multiply and add counted apart) per
224×224 patch. Measured forward time for a batch of 9 patches
(9 × 3 × 224 × 224), eval mode, ``torch.set_num_threads(2)``, torch 2.13 on a
2-core AMD EPYC VM: about 37 ms (mean of 20 runs; 100–170 ms while other jobs
loaded the machine).

Chromatic-sharpness branch (an addition to the paper, off by default, on in
the bundled model): per colour channel and scale, the log gradient energy of
the patch, plus each channel's log variance, go through BatchNorm; they and a
two-layer MLP of them join the pooled DFENet features before the regression
layer. With axial chromatic aberration the red channel is the
sharper one on one side of focus and the blue on the other; a CNN can learn
that comparison from pixels, but on a 2-core CPU budget the DFENet alone did
not (its sign accuracy stayed at chance after 16 k patches), while this
descriptor makes it learnable in minutes (docs/learning-core.md).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._blocks import DFENetBlock, LayerNorm2d, Regressor, check_image_batch, init_convnext_
from ._config import DPNConfig

__all__ = ["ChromaticSharpness", "DefocusPredictionNetwork"]


class ChromaticSharpness(nn.Module):
    """Per-channel multi-scale sharpness descriptor of a patch, through a small MLP.

    Parameters
    ----------
    in_chans : int
        Colour channels.
    scales : tuple of int
        Average-pooling factors at which the gradient energy is measured.
    hidden : int
        MLP width (the output size).

    Notes
    -----
    The descriptor has no weights: ``log(mean |∇ x_c|² + ε)`` at each scale
    and ``log(var x_c + ε)`` per channel ``c``, ``in_chans · (len(scales) + 1)``
    numbers. Brightness and contrast changes shift all channels' logs alike,
    so the cross-channel differences the sign depends on are unaffected.
    """

    def __init__(self, in_chans: int, scales: tuple[int, ...], hidden: int) -> None:
        super().__init__()
        self.scales = tuple(int(v) for v in scales)
        n = in_chans * (len(self.scales) + 1)
        self.norm = nn.BatchNorm1d(n)
        self.mlp = nn.Sequential(
            nn.Linear(n, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.num_features = hidden + n

    def reset_parameters(self) -> None:
        """PyTorch's default (Kaiming-uniform) initialisation of the MLP.

        The ConvNeXt scheme (std 0.02) suits the residual trunk, but makes
        this small side MLP start almost silent.
        """
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    def descriptor(self, x: Tensor) -> Tensor:
        """Return the ``(N, in_chans · (len(scales) + 1))`` log-sharpness descriptor."""
        feats = []
        for s in self.scales:
            xs = x if s == 1 else F.avg_pool2d(x, s)
            gy = xs[..., 1:, :] - xs[..., :-1, :]
            gx = xs[..., :, 1:] - xs[..., :, :-1]
            energy = gy.pow(2).mean(dim=(2, 3)) + gx.pow(2).mean(dim=(2, 3))  # (N, C)
            feats.append(torch.log(energy + 1e-10))
        feats.append(torch.log(x.var(dim=(2, 3)) + 1e-10))  # (N, C)
        return torch.cat(feats, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Return ``(N, hidden + n)`` features of ``x``: the MLP and the normalised descriptor."""
        d = self.norm(self.descriptor(x))  # (N, n)
        out: Tensor = torch.cat([self.mlp(d), d], dim=1)
        return out


class DefocusPredictionNetwork(Regressor):
    """ConvNeXt-like regressor from an image patch to its signed defocus (µm).

    Parameters
    ----------
    cfg : DPNConfig, optional
        Architecture (default ``DPNConfig()``).

    Attributes
    ----------
    config : DPNConfig
        The architecture config.
    name : str
        Registry key, ``"dpn"``.
    stem : torch.nn.Sequential
        ``[Conv2d(k=patch_size, s=patch_size), BatchNorm2d]``.
    downsample : torch.nn.ModuleList
        ``[Identity, (LayerNorm2d, Conv2d 2×2 s2), ...]``, one per stage.
    stages : torch.nn.ModuleList
        DFENet blocks of each stage.
    norm : torch.nn.LayerNorm
        After global max pooling.
    fc : torch.nn.Linear
        Regression layer to one output (two with ``sign_magnitude_head``).

    Notes
    -----
    Input: float ``(N, 3, H, W)`` in [0, 1], nominally one 224×224 patch of
    the full-resolution crop; any size from ``patch_size · 2**(stages-1)``
    works (global pooling). Output: ``(N,)`` defocus in µm
    (``z_current - z_focus``), already multiplied by ``output_scale_um``.
    """

    name: ClassVar[str] = "dpn"

    def __init__(self, cfg: DPNConfig | None = None) -> None:
        super().__init__()
        cfg = DPNConfig() if cfg is None else cfg
        if not isinstance(cfg, DPNConfig):
            raise ValueError(f"cfg must be a DPNConfig, got {type(cfg).__name__}")
        self.config = cfg
        dims = cfg.dims
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_chans, dims[0], cfg.patch_size, stride=cfg.patch_size),
            nn.BatchNorm2d(dims[0]),
        )
        n_blocks = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]
        self.downsample = nn.ModuleList()
        self.stages = nn.ModuleList()
        k = 0
        for i, (dim, depth) in enumerate(zip(dims, cfg.depths, strict=True)):
            if i == 0:
                self.downsample.append(nn.Identity())
            else:
                self.downsample.append(
                    nn.Sequential(
                        LayerNorm2d(dims[i - 1], eps=1e-6),
                        nn.Conv2d(dims[i - 1], dim, 2, stride=2),
                    )
                )
            blocks = [
                DFENetBlock(dim, cfg.kernel_size, cfg.mlp_ratio, cfg.layer_scale_init, rates[k + j])
                for j in range(depth)
            ]
            k += depth
            self.stages.append(nn.Sequential(*blocks))
        self.num_features = dims[-1]
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head_drop = nn.Dropout(cfg.head_dropout)
        self.colour: ChromaticSharpness | None = None
        extra = 0
        if cfg.colour_sharpness_scales:
            self.colour = ChromaticSharpness(
                cfg.in_chans, cfg.colour_sharpness_scales, cfg.colour_sharpness_hidden
            )
            extra = self.colour.num_features
        self.fc = nn.Linear(dims[-1] + extra, 2 if cfg.sign_magnitude_head else 1)
        init_convnext_(self)
        if self.colour is not None:
            self.colour.reset_parameters()
        #: ``(|defocus| µm, side-of-focus logit)`` of the last forward pass with the
        #: sign-magnitude head, for the auxiliary training losses (see ``compute_loss``).
        self.last_head_parts: tuple[Tensor, Tensor] | None = None

    @property
    def min_input_size(self) -> int:
        """Smallest accepted input height / width (the total stride)."""
        return int(self.config.patch_size * 2 ** (len(self.config.dims) - 1))

    def forward_features(self, x: Tensor) -> Tensor:
        """Compute the last stage's feature map.

        Parameters
        ----------
        x : torch.Tensor
            Float ``(N, in_chans, H, W)`` in [0, 1].

        Returns
        -------
        torch.Tensor
            ``(N, dims[-1], H / 32, W / 32)`` for the default four stages.

        Raises
        ------
        ValueError
            If ``x`` is not a float ``(N, in_chans, H, W)`` batch large enough.
        """
        check_image_batch(
            x,
            network="DefocusPredictionNetwork",
            channels=(self.config.in_chans,),
            min_size=self.min_input_size,
        )
        x = self.stem(x)  # (N, C0, H / 4, W / 4)
        for down, stage in zip(self.downsample, self.stages, strict=True):
            x = stage(down(x))
        return x

    def forward(self, x: Tensor) -> Tensor:
        """Return the defocus ``(N,)`` in µm (the colour branch sees the input too)."""
        colour = self.colour(x) if self.colour is not None else None
        return self.forward_head(self.forward_features(x), colour=colour)

    def forward_head(
        self, x: Tensor, pre_logits: bool = False, *, colour: Tensor | None = None
    ) -> Tensor:
        """Global max pooling, LayerNorm and the regression layer.

        Parameters
        ----------
        x : torch.Tensor
            Feature map ``(N, C, h, w)``.
        pre_logits : bool
            Return the normalised pooled features ``(N, C)`` instead.
        colour : torch.Tensor, optional
            ``(N, hidden + n)`` chromatic-sharpness features, required when the
            network has that branch.

        Returns
        -------
        torch.Tensor
            Defocus ``(N,)`` in µm, or ``(N, C)`` features.
        """
        x = x.amax(dim=(2, 3))  # (N, C)
        x = self.norm(x)
        if self.colour is not None:
            if colour is None:
                raise ValueError("this DPN has a colour-sharpness branch: pass colour=")
            x = torch.cat([x, colour], dim=1)  # (N, C + hidden)
        x = self.head_drop(x)
        if pre_logits:
            return x
        y = self.fc(x)  # (N, 1) or (N, 2)
        if self.config.sign_magnitude_head:
            magnitude = F.softplus(y[:, 0])  # (N,)
            self.last_head_parts = (magnitude * self.config.output_scale_um, y[:, 1])
            y = magnitude * torch.tanh(self.config.side_gain * y[:, 1])  # (N,)
        else:
            y = y.squeeze(-1)
        out: Tensor = y * self.config.output_scale_um  # (N,)
        return out
