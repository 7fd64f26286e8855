"""Pure numpy core: optics, PSF, specimens, rendering, focus measures, metrics."""

from __future__ import annotations

from ._optics import Optics

__all__ = ["Optics"]
