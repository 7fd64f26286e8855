"""Hardware layer: pymmcore-plus devices, refocus controller, MDA autofocus, focus maps.

Everything here talks to a microscope only through pymmcore-plus's public API
(``CMMCorePlus`` / ``UniMMCore``), so the simulated microscope and a real one
with real adapters behave the same. Importing this package imports neither
pymmcore-plus nor torch: public names load lazily on first access.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._camera import snap_image
    from ._focus_lock import FocusLock, FocusLockState
    from ._focus_map import FocusMapResult, iter_scan_focus_map, scan_focus_map
    from ._mda import SparseFocusEngine
    from ._refocus import RefocusOptions, RefocusResult, RefocusStep, iter_refocus, refocus
    from ._simulated import (
        SIMULATED_CONFIG,
        SimulatedMicroscope,
        StageLimitError,
        load_simulated_microscope,
        load_simulated_config,
    )

__all__ = [
    "SIMULATED_CONFIG",
    "FocusLock",
    "FocusLockState",
    "FocusMapResult",
    "RefocusOptions",
    "RefocusResult",
    "RefocusStep",
    "SimulatedMicroscope",
    "SparseFocusEngine",
    "StageLimitError",
    "iter_refocus",
    "iter_scan_focus_map",
    "load_simulated_config",
    "load_simulated_microscope",
    "refocus",
    "scan_focus_map",
    "snap_image",
]

_LAZY = {
    "snap_image": "._camera",
    "FocusLock": "._focus_lock",
    "FocusLockState": "._focus_lock",
    "FocusMapResult": "._focus_map",
    "iter_scan_focus_map": "._focus_map",
    "scan_focus_map": "._focus_map",
    "SparseFocusEngine": "._mda",
    "RefocusOptions": "._refocus",
    "RefocusResult": "._refocus",
    "RefocusStep": "._refocus",
    "iter_refocus": "._refocus",
    "refocus": "._refocus",
    "SIMULATED_CONFIG": "._simulated",
    "SimulatedMicroscope": "._simulated",
    "StageLimitError": "._simulated",
    "load_simulated_config": "._simulated",
    "load_simulated_microscope": "._simulated",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
