"""Reading and writing z-stacks (TIFF, OME-TIFF, ImageJ) and napari sample data.

Importing this package imports neither napari, Qt nor torch; the napari hooks
live in :mod:`napari_sparsefocus.io._napari` and
:mod:`napari_sparsefocus.io._sample_data` and are loaded by napari through the
plugin manifest.
"""

from __future__ import annotations

from ._labels import (
    LABEL_SOURCES,
    LABELS_SCHEMA,
    LABELS_VERSION,
    LabelFile,
    LabelFileError,
    StackLabel,
    labels_from_simulated,
    read_labels,
    write_labels,
)
from ._napari import layer_data_from_stack
from ._tiff import (
    METADATA_TAG,
    SUPPORTED_SUFFIXES,
    MissingZStepWarning,
    StackData,
    is_tiff_path,
    read_stack,
    write_stack,
)

__all__ = [
    "LABELS_SCHEMA",
    "LABELS_VERSION",
    "LABEL_SOURCES",
    "METADATA_TAG",
    "SUPPORTED_SUFFIXES",
    "LabelFile",
    "LabelFileError",
    "MissingZStepWarning",
    "StackData",
    "StackLabel",
    "is_tiff_path",
    "labels_from_simulated",
    "layer_data_from_stack",
    "read_labels",
    "read_stack",
    "write_labels",
    "write_stack",
]
