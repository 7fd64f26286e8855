"""Pure numpy core: optics, PSF, specimens, rendering, focus measures and search.

Never imports torch, Qt, napari or pymmcore-plus.
"""

from __future__ import annotations

from ._focal_plane import FocalPlaneResult, find_focal_plane, focal_plane_from_curve
from ._focus_measures import (
    FOCUS_MEASURES,
    brenner,
    focus_curve,
    get_focus_measure,
    normalized_variance,
    spectral_energy,
    tenengrad,
    variance_of_laplacian,
    vollath_f4,
    vollath_f5,
)
from ._optics import Optics
from ._phantoms import SPARSITY_LEVELS, SPECIMEN_KINDS, Specimen, SpecimenLayer, make_specimen
from ._psf import best_focus_z_um, psf_2d, psf_radial, psf_xz, transfer_function_radial
from ._search import (
    SearchResult,
    SearchStep,
    brent_search,
    hill_climb,
    iter_brent_search,
    iter_hill_climb,
)
from ._simulate import (
    DEFAULT_DEFOCUS_UM,
    PatchBatch,
    PatchSampler,
    SimulatedField,
    SimulatedStack,
    iter_simulate_stack,
    simulate_field,
    simulate_stack,
    sparsity_from_count,
)

__all__ = [
    "DEFAULT_DEFOCUS_UM",
    "FOCUS_MEASURES",
    "SPARSITY_LEVELS",
    "SPECIMEN_KINDS",
    "FocalPlaneResult",
    "Optics",
    "PatchBatch",
    "PatchSampler",
    "SearchResult",
    "SearchStep",
    "SimulatedField",
    "SimulatedStack",
    "Specimen",
    "SpecimenLayer",
    "best_focus_z_um",
    "brenner",
    "brent_search",
    "find_focal_plane",
    "focal_plane_from_curve",
    "focus_curve",
    "get_focus_measure",
    "hill_climb",
    "iter_brent_search",
    "iter_hill_climb",
    "iter_simulate_stack",
    "make_specimen",
    "normalized_variance",
    "psf_2d",
    "psf_radial",
    "psf_xz",
    "simulate_field",
    "simulate_stack",
    "sparsity_from_count",
    "spectral_energy",
    "tenengrad",
    "transfer_function_radial",
    "variance_of_laplacian",
    "vollath_f4",
    "vollath_f5",
]
