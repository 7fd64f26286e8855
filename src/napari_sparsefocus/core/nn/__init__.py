"""PyTorch networks of SparseFocus and its baselines (imports torch; import explicitly).

``napari_sparsefocus`` and ``napari_sparsefocus.core`` never import this
subpackage, so they stay free of torch.
"""

from __future__ import annotations

from ._baselines import DastidarNet, JiangNet, LiaoNet
from ._config import DastidarConfig, DPNConfig, JiangConfig, LiaoConfig, RINConfig
from ._dpn import DefocusPredictionNetwork
from ._registry import NETWORKS, build_network
from ._rin import RegionImportanceNetwork

__all__ = [
    "NETWORKS",
    "DPNConfig",
    "DastidarConfig",
    "DastidarNet",
    "DefocusPredictionNetwork",
    "JiangConfig",
    "JiangNet",
    "LiaoConfig",
    "LiaoNet",
    "RINConfig",
    "RegionImportanceNetwork",
    "build_network",
]
