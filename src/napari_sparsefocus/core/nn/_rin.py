"""Region Importance Network (RIN) of SparseFocus.

A fully convolutional MobileNetV3-small (inverted residuals with
squeeze-excite and hard-swish; Howard et al. 2019) that scores the content
importance of every 224 px patch of the 2016 px crop from the crop resized to
512 px (SparseFocus, Section 4.1).

The default runs at output stride 16 (the last stride-2 stage is dilated
instead, as in DeepLabV3 / LR-ASPP), so a 512 px image gives a 32×32 feature
map: about 3.6 feature pixels per grid cell, which adaptive average pooling
turns into the 9×9 grid before a 1×1 convolutional head. Any other input size
(e.g. 256) still gives the configured grid.

Size (default config): 1.00 M parameters (1 000 993), 0.55 GMACs for one
512×512 image. Measured forward time for one 512×512 image, eval mode,
``torch.set_num_threads(2)``, torch 2.13 on a 2-core AMD EPYC VM: about 23 ms
(mean of 20 runs; 70–90 ms while other jobs loaded the machine).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._blocks import check_image_batch, eval_mode, init_mobilenet_, mobilenet_v3_features
from ._config import RINConfig

__all__ = ["RegionImportanceNetwork"]


class RegionImportanceNetwork(nn.Module):
    """Fully convolutional MobileNetV3 mapping an image to a grid of importance logits.

    Parameters
    ----------
    cfg : RINConfig, optional
        Architecture (default ``RINConfig()``: MobileNetV3-small, 9×9 grid).

    Attributes
    ----------
    config : RINConfig
        The architecture config.
    name : str
        Registry key, ``"rin"``.
    features : torch.nn.Sequential
        Stem, inverted residual blocks and the last 1×1 conv.
    head : torch.nn.Sequential
        1×1 conv → hard-swish → dropout → 1×1 conv to one logit per cell.

    Notes
    -----
    Input: float ``(N, 3, H, W)`` in [0, 1], nominally the 2016 px crop resized
    to 512×512. Output: logits ``(N, rows, cols)``; ``sigmoid`` gives the
    importance ``W`` thresholded at p = 0.8 by the top-k rule.
    """

    name: ClassVar[str] = "rin"
    #: Smallest accepted input height / width.
    min_input_size: ClassVar[int] = 32

    def __init__(self, cfg: RINConfig | None = None) -> None:
        super().__init__()
        cfg = RINConfig() if cfg is None else cfg
        if not isinstance(cfg, RINConfig):
            raise ValueError(f"cfg must be a RINConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.features, chs = mobilenet_v3_features(
            cfg.in_chans, cfg.stem_channels, cfg.blocks, cfg.width_mult, cfg.output_stride
        )
        self.num_features = chs
        self.head = nn.Sequential(
            nn.Conv2d(chs, cfg.head_channels, 1),
            nn.Hardswish(inplace=True),
            nn.Dropout(cfg.dropout),
            nn.Conv2d(cfg.head_channels, 1, 1),
        )
        init_mobilenet_(self)
        # start near "unsure" (logits ≈ 0, BCE ≈ ln 2) instead of saturated scores
        last = self.head[-1]
        assert isinstance(last, nn.Conv2d)
        nn.init.normal_(last.weight, std=0.01)
        if last.bias is not None:
            nn.init.zeros_(last.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """Compute the feature map.

        Parameters
        ----------
        x : torch.Tensor
            Float ``(N, in_chans, H, W)`` in [0, 1].

        Returns
        -------
        torch.Tensor
            ``(N, C, H / s, W / s)`` with ``s = output_stride`` (rounded up).

        Raises
        ------
        ValueError
            If ``x`` is not a float ``(N, in_chans, H, W)`` batch with H, W >= 32.
        """
        check_image_batch(
            x,
            network="RegionImportanceNetwork",
            channels=(self.config.in_chans,),
            min_size=self.min_input_size,
        )
        out: Tensor = self.features(x)
        return out

    def forward_head(self, x: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """Pool the feature map to the grid and score each cell.

        Parameters
        ----------
        x : torch.Tensor
            Feature map ``(N, C, h, w)`` from :meth:`forward_features`.
        grid : tuple of int, optional
            ``(rows, cols)`` to pool to; default the config's grid. Inference
            on a crop of fewer patches (e.g. 5×5 of a 1120 px image resized at
            the same scale) passes that crop's grid.

        Returns
        -------
        torch.Tensor
            Logits ``(N, rows, cols)``.
        """
        x = F.adaptive_avg_pool2d(x, grid or self.config.grid)  # (N, C, rows, cols)
        x = self.head(x)  # (N, 1, rows, cols)
        return x.squeeze(1)  # (N, rows, cols)

    def forward(self, x: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """Return importance logits ``(N, rows, cols)`` for images ``(N, 3, H, W)``."""
        return self.forward_head(self.forward_features(x), grid)

    @torch.no_grad()
    def predict_importance(self, x: Tensor) -> Tensor:
        """Return importance probabilities in eval mode, without gradients.

        Parameters
        ----------
        x : torch.Tensor
            Float ``(N, 3, H, W)`` in [0, 1].

        Returns
        -------
        torch.Tensor
            ``sigmoid(logits)``, shape ``(N, rows, cols)``, values in [0, 1].
            The module's training/eval mode is restored afterwards.
        """
        with eval_mode(self):
            return torch.sigmoid(self.forward(x))
