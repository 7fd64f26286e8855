"""napari layers of a SparseFocus answer: the importance heatmap and the top-k rectangles."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sparsefocus.core._overlay import heatmap_placement, patch_label, patch_rectangles

if TYPE_CHECKING:
    from collections.abc import Sequence

    import napari
    from napari.layers import Image, Shapes

    from napari_sparsefocus.core.nn import DefocusPrediction

__all__ = ["PATCH_COLOR", "find_overlay_layer", "show_prediction_layers"]

#: Edge and text colour of the top-k rectangles.
PATCH_COLOR = "cyan"


def find_overlay_layer(viewer: napari.viewer.Viewer, role: str) -> Any:
    """Return the 2D overlay layer whose ``metadata["sparsefocus_overlay"]`` is ``role``.

    Layers are found by role, not by name, so a user renaming them is harmless.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer.
    role : str
        The overlay role.

    Returns
    -------
    napari.layers.Layer or None
    """
    for lay in viewer.layers:
        if lay.metadata.get("sparsefocus_overlay") == role and lay.ndim == 2:
            return lay
    return None


def show_prediction_layers(
    viewer: napari.viewer.Viewer,
    pred: DefocusPrediction,
    *,
    scale_yx: Sequence[float] = (1.0, 1.0),
    translate_yx: Sequence[float] = (0.0, 0.0),
    heatmap_name: str,
    patches_name: str,
    roles: tuple[str, str],
    metadata: dict[str, Any] | None = None,
) -> tuple[Image, Shapes]:
    """Show a prediction as an importance heatmap and top-k rectangles over an image.

    Shared by the focus-analysis widget and the Microscope widget's live
    overlay, so both look alike (inferno heatmap at 50 % opacity over the
    analysed crop, cyan rectangles labelled with each patch's defocus); the
    geometry comes from the core
    (:func:`~napari_sparsefocus.core._overlay.heatmap_placement`,
    :func:`~napari_sparsefocus.core._overlay.patch_rectangles`).

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer.
    pred : DefocusPrediction
        The model's answer for the image.
    scale_yx, translate_yx : sequence of float
        The image layer's ``(y, x)`` scale and translate.
    heatmap_name, patches_name : str
        Names of the layers when they are created.
    roles : tuple of str
        ``metadata["sparsefocus_overlay"]`` of the two layers; layers are
        found again by role, so renaming them is harmless.
    metadata : dict, optional
        More metadata for both layers.

    Returns
    -------
    heatmap : napari.layers.Image
    patches : napari.layers.Shapes
    """
    scale = tuple(float(s) for s in scale_yx)
    translate = tuple(float(t) for t in translate_yx)
    meta = dict(metadata or {})
    importance = np.asarray(pred.importance, dtype=np.float32)
    place = heatmap_placement(
        pred.crop_box_px, importance.shape, pixel_scale=scale, translate=translate
    )
    heat: Image | None = find_overlay_layer(viewer, roles[0])
    if heat is None:
        heat = viewer.add_image(
            importance,
            name=heatmap_name,
            scale=place.scale,
            translate=place.translate,
            colormap="inferno",
            opacity=0.5,
            contrast_limits=(0.0, 1.0),
            metadata={"sparsefocus_overlay": roles[0], **meta},
        )
    else:
        heat.data = importance
        heat.scale = place.scale
        heat.translate = place.translate
        heat.metadata.update(meta)

    rects = patch_rectangles([p.box_px for p in pred.patches])
    features = {
        "label": [patch_label(p.defocus_um) for p in pred.patches],
        "defocus_um": [float(p.defocus_um) for p in pred.patches],
        "importance": [float(p.importance) for p in pred.patches],
        "row": [int(p.row) for p in pred.patches],
        "col": [int(p.col) for p in pred.patches],
    }
    edge = max(1.0, 0.03 * (pred.crop_box_px[2] - pred.crop_box_px[0]) / importance.shape[0])
    shapes: Shapes | None = find_overlay_layer(viewer, roles[1])
    if shapes is None:
        shapes = viewer.add_shapes(
            list(rects),
            shape_type="rectangle",
            name=patches_name,
            edge_color=PATCH_COLOR,
            face_color="transparent",
            edge_width=edge,
            features=features,
            text={"string": "{label}", "color": PATCH_COLOR, "size": 10, "anchor": "center"},
            scale=scale,
            translate=translate,
            metadata={"sparsefocus_overlay": roles[1], **meta},
        )
    else:
        shapes.selected_data = set()
        shapes.data = []
        if len(rects):
            shapes.add_rectangles(
                list(rects), edge_width=edge, edge_color=PATCH_COLOR, face_color="transparent"
            )
        shapes.features = features
        shapes.scale = scale
        shapes.translate = translate
        shapes.metadata.update(meta)
    return heat, shapes
