"""Pure numpy core: optics, PSF, specimens, rendering, focus measures and search.

Never imports torch, Qt, napari or pymmcore-plus.
"""

from __future__ import annotations

from ._aggregate import (
    DEFAULT_IMPORTANCE_THRESHOLD,
    K_MODES,
    K_PER_SPARSITY,
    VERDICTS,
    Aggregate,
    Selection,
    aggregate,
    select_patches,
    sharpness_weighted_defocus,
)
from ._focal_plane import FocalPlaneResult, find_focal_plane, focal_plane_from_curve
from ._focus_map import (
    KEY_POINT_METHODS,
    FocusSurface,
    KeyPointInterpolator,
    fit_focus_surface,
    focus_error_map,
    interpolate_key_points,
    rms_um,
    surface_terms,
)
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
from ._slide import SlideSite, VirtualSlide

__all__ = [
    "DEFAULT_DEFOCUS_UM",
    "DEFAULT_IMPORTANCE_THRESHOLD",
    "FOCUS_MEASURES",
    "KEY_POINT_METHODS",
    "K_MODES",
    "K_PER_SPARSITY",
    "SPARSITY_LEVELS",
    "SPECIMEN_KINDS",
    "VERDICTS",
    "Aggregate",
    "FocalPlaneResult",
    "FocusSurface",
    "KeyPointInterpolator",
    "Optics",
    "PatchBatch",
    "PatchSampler",
    "SearchResult",
    "SearchStep",
    "Selection",
    "SimulatedField",
    "SimulatedStack",
    "SlideSite",
    "Specimen",
    "SpecimenLayer",
    "VirtualSlide",
    "aggregate",
    "best_focus_z_um",
    "brenner",
    "brent_search",
    "find_focal_plane",
    "fit_focus_surface",
    "focal_plane_from_curve",
    "focus_curve",
    "focus_error_map",
    "get_focus_measure",
    "hill_climb",
    "interpolate_key_points",
    "iter_brent_search",
    "iter_hill_climb",
    "iter_simulate_stack",
    "make_specimen",
    "normalized_variance",
    "psf_2d",
    "psf_radial",
    "psf_xz",
    "rms_um",
    "select_patches",
    "sharpness_weighted_defocus",
    "simulate_field",
    "simulate_stack",
    "sparsity_from_count",
    "spectral_energy",
    "surface_terms",
    "tenengrad",
    "transfer_function_radial",
    "variance_of_laplacian",
    "vollath_f4",
    "vollath_f5",
]
