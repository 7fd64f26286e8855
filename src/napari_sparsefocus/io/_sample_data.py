"""napari sample data: simulated brightfield defocus z-stacks (registered in ``napari.yaml``).

Each sample is a 21-plane RGB stack from −10 to +10 µm of defocus (1 µm
steps) over a 1120 × 1120 px field (a 5 × 5 grid of patches, about 80 MB),
rendered by :func:`napari_sparsefocus.core.simulate_stack` with a fixed seed.
The simulation labels travel in the layer's ``metadata``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["SAMPLE_SEED", "SAMPLE_SHAPE_PX", "sample_dense_tissue", "sample_sparse_cells"]

#: Field of view of the samples, pixels (a 5 × 5 grid of 224 px patches).
SAMPLE_SHAPE_PX: tuple[int, int] = (1120, 1120)
#: Seed of the samples (deterministic).
SAMPLE_SEED = 7

LayerDataTuple = tuple[Any, dict[str, Any], str]


def _sample_defocus_um() -> np.ndarray[Any, np.dtype[np.float64]]:
    """Defocus of the sample planes: −10 … +10 µm in 1 µm steps (21 planes)."""
    return np.arange(-10.0, 10.01, 1.0)


def _simulated_layer(kind: str, sparsity: str, name: str) -> list[LayerDataTuple]:
    from napari_sparsefocus.core import simulate_stack

    stack = simulate_stack(
        kind=kind,
        sparsity=sparsity,
        z_um=_sample_defocus_um(),
        seed=SAMPLE_SEED,
        shape_px=SAMPLE_SHAPE_PX,
    )
    images = stack.images
    rgb = images.ndim == 4 and images.shape[-1] in (3, 4)
    z_step_um = stack.z_step_um if stack.z_step_um is not None else 1.0
    pixel_um = float(stack.pixel_size_um)
    metadata: dict[str, Any] = dict(stack.to_metadata())
    # The labels the widgets rely on, whatever to_metadata() chooses to include.
    metadata.setdefault("kind", stack.kind)
    metadata.setdefault("sparsity", stack.sparsity)
    metadata.setdefault("seed", stack.seed)
    metadata.setdefault("defocus_um", [float(v) for v in stack.defocus_um])
    metadata.setdefault("importance", np.asarray(stack.importance, dtype=float).tolist())
    metadata.setdefault("optics", stack.optics.to_dict())
    kwargs: dict[str, Any] = {
        "name": name,
        "scale": (float(z_step_um), pixel_um, pixel_um),
        "rgb": rgb,
        "metadata": metadata,
    }
    return [(images, kwargs, "image")]


def sample_sparse_cells() -> list[LayerDataTuple]:
    """Return a simulated Pap-stained cytology slide, extremely sparse (a few cells).

    Returns
    -------
    list of tuple
        One ``(data, kwargs, "image")`` layer: ``(21, 1120, 1120, 3)`` uint8
        with ``scale`` (z-step, pixel, pixel) in µm, ``rgb=True`` and the
        simulation labels (``defocus_um``, ``importance``, ``kind``,
        ``sparsity``, ``optics``, ...) in ``kwargs["metadata"]``.
    """
    return _simulated_layer("cell", "extremely_sparse", "Sparse cells (simulated, ±10 µm)")


def sample_dense_tissue() -> list[LayerDataTuple]:
    """Return a simulated H&E histology section, densely covered.

    Returns
    -------
    list of tuple
        One ``(data, kwargs, "image")`` layer: ``(21, 1120, 1120, 3)`` uint8
        with ``scale`` (z-step, pixel, pixel) in µm, ``rgb=True`` and the
        simulation labels (``defocus_um``, ``importance``, ``kind``,
        ``sparsity``, ``optics``, ...) in ``kwargs["metadata"]``.
    """
    return _simulated_layer("tissue", "dense", "Dense tissue (simulated, ±10 µm)")
