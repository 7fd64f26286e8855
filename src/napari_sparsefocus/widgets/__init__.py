"""napari widgets of napari-sparsefocus (Qt; never imported by the core).

Each widget lives in its own private module and is contributed through
``napari.yaml`` by its ``module:Class`` path, so enabling the plugin imports
neither torch nor Qt widgets until a widget is opened.
"""

from __future__ import annotations

__all__: list[str] = []
