"""napari-sparsefocus: one-shot signed defocus prediction for sparse microscopy slides.

The core (``napari_sparsefocus.core``) is numpy-only; importing this package
imports neither torch, Qt, napari nor pymmcore-plus. Public names are loaded
lazily on first access.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("napari-sparsefocus")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    from ._version import __version__

if TYPE_CHECKING:
    from .core import Optics, SimulatedStack, simulate_stack
    from .core.nn import DefocusPrediction, SparseFocusModel, load_model, predict_defocus

__all__ = [
    "DefocusPrediction",
    "Optics",
    "SimulatedStack",
    "SparseFocusModel",
    "__version__",
    "load_model",
    "predict_defocus",
    "simulate_stack",
]

# torch is imported only when one of the nn names is first used
_LAZY = {
    "DefocusPrediction": "napari_sparsefocus.core.nn",
    "SparseFocusModel": "napari_sparsefocus.core.nn",
    "load_model": "napari_sparsefocus.core.nn",
    "predict_defocus": "napari_sparsefocus.core.nn",
    "Optics": "napari_sparsefocus.core",
    "SimulatedStack": "napari_sparsefocus.core",
    "simulate_stack": "napari_sparsefocus.core",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
