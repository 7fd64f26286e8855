"""Name → network registry: build any network from its name and config dict."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._baselines import DastidarNet, JiangNet, LiaoNet
from ._config import DastidarConfig, DPNConfig, JiangConfig, LiaoConfig, RINConfig
from ._dpn import DefocusPredictionNetwork
from ._rin import RegionImportanceNetwork

if TYPE_CHECKING:
    from torch import nn

    from ._config import NetworkConfig

__all__ = ["NETWORKS", "build_network"]

#: Registry key → (network class, config class). Every network's ``.name`` is its key.
NETWORKS: dict[str, tuple[type[nn.Module], type[NetworkConfig]]] = {
    "rin": (RegionImportanceNetwork, RINConfig),
    "dpn": (DefocusPredictionNetwork, DPNConfig),
    "liao": (LiaoNet, LiaoConfig),
    "jiang": (JiangNet, JiangConfig),
    "dastidar": (DastidarNet, DastidarConfig),
}


def build_network(name: str, config: dict[str, Any] | None = None) -> nn.Module:
    """Build a network from its registry name and a config dict.

    Parameters
    ----------
    name : str
        One of ``NETWORKS`` (``"rin"``, ``"dpn"``, ``"liao"``, ``"jiang"``, ``"dastidar"``).
    config : dict, optional
        ``to_dict()`` output of the network's config (or a subset; missing fields
        take defaults). ``None`` gives the default architecture.

    Returns
    -------
    torch.nn.Module
        The freshly initialised network, with ``.config`` and ``.name`` set.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid ones), unknown config
        keys or invalid config values.

    Examples
    --------
    >>> net = build_network("dpn", {"dims": [16, 32, 64, 128]})
    >>> net.config.dims
    (16, 32, 64, 128)
    """
    try:
        net_cls, cfg_cls = NETWORKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown network {name!r}; valid names are {sorted(NETWORKS)}") from None
    return net_cls(cfg_cls.from_dict(config))
