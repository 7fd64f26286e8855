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
    from ._camera import (
        frame_to_rgb,
        snap_image,
    )
    from ._focus_lock import (
        FocusLock,
        FocusLockEvent,
        FocusLockState,
    )
    from ._focus_map import (
        FOCUS_MAP_METHODS,
        FocusMapResult,
        FocusMapStep,
        FocusMapTile,
        iter_scan_focus_map,
        scan_focus_map,
    )
    from ._mda import (
        DEFAULT_ACCEPTED_VERDICTS,
        AutofocusRecord,
        SparseFocusEngine,
    )
    from ._refocus import (
        FALLBACKS,
        POLISH_METHODS,
        VERDICTS,
        RefocusOptions,
        RefocusPolish,
        RefocusReading,
        RefocusResult,
        RefocusStep,
        iter_refocus,
        refocus,
    )
    from ._simulated import (
        SIMULATED_CONFIG,
        SimulatedMicroscope,
        StageLimitError,
        load_simulated_config,
        load_simulated_microscope,
    )

__all__ = [
    "DEFAULT_ACCEPTED_VERDICTS",
    "FALLBACKS",
    "FOCUS_MAP_METHODS",
    "POLISH_METHODS",
    "SIMULATED_CONFIG",
    "VERDICTS",
    "AutofocusRecord",
    "FocusLock",
    "FocusLockEvent",
    "FocusLockState",
    "FocusMapResult",
    "FocusMapStep",
    "FocusMapTile",
    "RefocusOptions",
    "RefocusPolish",
    "RefocusReading",
    "RefocusResult",
    "RefocusStep",
    "SimulatedMicroscope",
    "SparseFocusEngine",
    "StageLimitError",
    "frame_to_rgb",
    "iter_refocus",
    "iter_scan_focus_map",
    "load_simulated_config",
    "load_simulated_microscope",
    "refocus",
    "scan_focus_map",
    "snap_image",
]

_LAZY = {
    "frame_to_rgb": "._camera",
    "snap_image": "._camera",
    "FocusLock": "._focus_lock",
    "FocusLockEvent": "._focus_lock",
    "FocusLockState": "._focus_lock",
    "FOCUS_MAP_METHODS": "._focus_map",
    "FocusMapResult": "._focus_map",
    "FocusMapStep": "._focus_map",
    "FocusMapTile": "._focus_map",
    "iter_scan_focus_map": "._focus_map",
    "scan_focus_map": "._focus_map",
    "DEFAULT_ACCEPTED_VERDICTS": "._mda",
    "AutofocusRecord": "._mda",
    "SparseFocusEngine": "._mda",
    "FALLBACKS": "._refocus",
    "POLISH_METHODS": "._refocus",
    "RefocusPolish": "._refocus",
    "VERDICTS": "._refocus",
    "RefocusOptions": "._refocus",
    "RefocusReading": "._refocus",
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
