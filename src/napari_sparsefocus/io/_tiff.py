"""Read and write z-stacks as (OME-)TIFF files, with physical sizes and project metadata.

Reading understands OME-TIFF (``PhysicalSizeX/Y/Z`` and their units) and
ImageJ hyperstacks (``spacing`` + ``unit`` for the z-step, the
``XResolution`` tag + ``unit`` for the pixel size). Data are returned lazily:
a read-only :class:`numpy.memmap` when the image data are stored uncompressed
and contiguously, otherwise a :mod:`dask` array that decodes one TIFF page
per chunk (an in-memory array only when dask is not installed).

Writing produces an uncompressed OME-TIFF (so it reads back memory-mapped).
The project's own metadata (a JSON-serialisable dict, e.g. per-plane
``defocus_um``, the optics, the importance matrix) is stored losslessly as
UTF-8 JSON in the private TIFF tag :data:`METADATA_TAG` (65421, type
UNDEFINED) of the first page only, wrapped in an envelope::

    {"format": "napari-sparsefocus", "version": 1, "axes": "ZYX", "metadata": {...}}

Other TIFF readers ignore the tag. JSON has no tuples, so tuples in the
metadata come back as lists; everything else (str keys, str, int, finite
float, bool, None, nested lists/dicts) round-trips exactly.

Nothing here imports napari, Qt or torch.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import re
import threading
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

import numpy as np
import tifffile

if TYPE_CHECKING:
    from collections.abc import Iterator

    import numpy.typing as npt

__all__ = [
    "METADATA_FORMAT",
    "METADATA_TAG",
    "SUPPORTED_SUFFIXES",
    "MissingZStepWarning",
    "StackData",
    "is_tiff_path",
    "read_stack",
    "write_stack",
]

logger = logging.getLogger(__name__)

#: Private TIFF tag (>= 65000) holding the project's JSON metadata envelope.
METADATA_TAG = 65421
#: Value of the envelope's ``"format"`` key.
METADATA_FORMAT = "napari-sparsefocus"
_METADATA_VERSION = 1

#: File name endings this module reads and writes (lower case).
SUPPORTED_SUFFIXES: tuple[str, ...] = (".ome.tiff", ".ome.tif", ".tiff", ".tif")

# Relative tolerance when comparing physical sizes from two metadata sources.
_RTOL = 1e-6

# Length units (as written by OME, ImageJ, TIFF software and pint) -> micrometres.
_UM_PER_UNIT: dict[str, float] = {
    "µm": 1.0,  # MICRO SIGN
    "μm": 1.0,  # GREEK SMALL LETTER MU
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "micrometers": 1.0,
    "micrometres": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "nanometre": 1e-3,
    "nanometers": 1e-3,
    "pm": 1e-6,
    "picometer": 1e-6,
    "å": 1e-4,  # LATIN CAPITAL LETTER A WITH RING ABOVE, lower-cased
    "Å": 1e-4,  # ANGSTROM SIGN
    "angstrom": 1e-4,
    "mm": 1e3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "centimetre": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "metre": 1e6,
    "inch": 25_400.0,
    "in": 25_400.0,
}
# Units meaning "not calibrated".
_UNCALIBRATED_UNITS = frozenset({"", "pixel", "pixels", "px"})

# dtypes that OME-TIFF stores and napari displays.
_WRITABLE_DTYPES = frozenset(
    np.dtype(t)
    for t in (
        np.bool_,
        np.uint8,
        np.uint16,
        np.uint32,
        np.int8,
        np.int16,
        np.int32,
        np.float32,
        np.float64,
    )
)


class MissingZStepWarning(UserWarning):
    """A multi-plane stack has no usable z-step in its metadata."""


@dataclass(frozen=True)
class StackData:
    """A z-stack (or single image) read from a TIFF file.

    Parameters
    ----------
    data : array-like
        Image data with dimensions ``axes``: a read-only :class:`numpy.memmap`
        when the file allows it, otherwise a lazy :mod:`dask` array.
    axes : str
        One of ``"ZYX"``, ``"ZYXS"``, ``"YX"``, ``"YXS"`` (``S``: RGB(A) samples).
    z_step_um : float or None
        Distance between planes in micrometres, None when the file does not say.
    pixel_size_um : float or None
        Lateral pixel size in micrometres, None when the file does not say.
    rgb : bool
        Whether the last axis holds RGB(A) samples.
    metadata : dict
        The project's own metadata stored in the file, else an empty dict.
    path : Path
        The file that was read.
    """

    data: Any
    axes: str
    z_step_um: float | None
    pixel_size_um: float | None
    rgb: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path = field(default_factory=Path)

    @property
    def n_planes(self) -> int:
        """Number of z planes (1 for a single image)."""
        return int(self.data.shape[0]) if self.axes.startswith("Z") else 1

    @property
    def scale(self) -> tuple[float, ...]:
        """Spatial scale in µm per pixel for napari, 1.0 where unknown.

        Returns
        -------
        tuple of float
            ``(z, y, x)`` for a stack, ``(y, x)`` for a single image.
        """
        pixel = self.pixel_size_um if self.pixel_size_um is not None else 1.0
        if self.axes.startswith("Z"):
            z = self.z_step_um if self.z_step_um is not None else 1.0
            return (z, pixel, pixel)
        return (pixel, pixel)


def is_tiff_path(path: str | os.PathLike[str]) -> bool:
    """Return whether ``path`` has a TIFF file name ending (case-insensitive).

    Parameters
    ----------
    path : str or os.PathLike
        File name or path; the file need not exist.

    Returns
    -------
    bool
        True for ``.tif``, ``.tiff``, ``.ome.tif`` and ``.ome.tiff``.
    """
    name = os.fspath(path).lower()
    return name.endswith(SUPPORTED_SUFFIXES)


# --------------------------------------------------------------------------- reading


class _StackError(ValueError):
    """A problem that read_stack reports as is (not re-wrapped)."""


def read_stack(path: str | os.PathLike[str]) -> StackData:
    """Read a z-stack or single image from a TIFF / OME-TIFF / ImageJ TIFF file.

    Singleton dimensions are dropped; generic page axes (``I``, ``Q``) are
    read as z. Time series (``T`` > 1), multi-channel stacks (``C`` > 1) and
    other extra dimensions are rejected: save one channel / time point per file.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.tif``, ``.tiff``, ``.ome.tif`` or ``.ome.tiff`` file.

    Returns
    -------
    StackData
        Lazily loaded data, axes, z-step, pixel size and project metadata.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the name is not a TIFF name, the file is not a readable TIFF
        (corrupt or truncated: anything tifffile logs as an error while
        parsing, pages or image data missing), holds no image data
        (0 planes), has unsupported dimensions, or has inconsistent
        physical-size metadata (non-positive or non-finite sizes, unknown
        units, non-square pixels, OME and ImageJ values that disagree).

    Warns
    -----
    MissingZStepWarning
        If a stack of more than one plane carries no z-step
        (``z_step_um`` is then None and napari shows it with z scale 1).
    """
    p = Path(path)
    if not is_tiff_path(p):
        raise ValueError(
            f"{p}: not a TIFF file name; expected one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    try:
        stack = _read(p)
    except _StackError as exc:  # already names the file and the problem
        raise ValueError(str(exc)) from None
    except MemoryError:
        raise
    except Exception as exc:
        raise ValueError(f"{p}: cannot read as TIFF (corrupt or truncated?): {exc}") from exc
    if stack.n_planes > 1 and stack.z_step_um is None:
        warnings.warn(
            f"{p}: no z-step (plane spacing) in the file's metadata; "
            "z_step_um is None and the napari layer uses a z scale of 1",
            MissingZStepWarning,
            stacklevel=2,
        )
    return stack


class _ErrorCollector(logging.Handler):
    """Collect ERROR records that tifffile logs from the current thread."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


@contextmanager
def _tifffile_errors() -> Iterator[list[str]]:
    """Yield the list of errors tifffile logs (corrupt structures it skipped)."""
    handler = _ErrorCollector()
    tif_logger = logging.getLogger("tifffile")
    tif_logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        tif_logger.removeHandler(handler)


def _read(p: Path) -> StackData:
    with _tifffile_errors() as errors:
        stack = _parse(p)
    if errors:
        # tifffile skips what it cannot parse (pages past a cut, tag values
        # beyond the end of the file) and carries on; we refuse such files.
        raise _StackError(
            f"{p}: corrupt or truncated TIFF file: {errors[0]}"
            + (f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else "")
        )
    return stack


def _parse(p: Path) -> StackData:
    filesize = p.stat().st_size
    with tifffile.TiffFile(p) as tf:
        len(tf.pages)  # index every page now, so a broken page chain is logged
        if not tf.series:
            raise _StackError(f"{p}: the TIFF file contains no images (0 planes)")
        series = tf.series[0]
        shape = tuple(int(n) for n in series.shape)
        raw_axes = str(series.axes)
        if len(shape) != len(raw_axes):
            raise _StackError(f"{p}: axes {raw_axes!r} do not match the data shape {shape}")
        if any(n == 0 for n in shape):
            raise _StackError(f"{p}: empty stack (shape {shape}, 0 planes)")
        envelope_axes, metadata = _read_project_metadata(tf, p)
        z_step_um, pixel_size_um = _physical_sizes(tf, p)
        squeezed_axes, squeezed_shape, order = _normalise_axes(raw_axes, shape, p)
        dtype = np.dtype(series.dtype)
        keyshape = tuple(int(n) for n in series.keyframe.shape)
        dataoffset = series.dataoffset
        contiguous = dataoffset is not None
        if dataoffset is not None:
            end = int(dataoffset) + int(series.nbytes)
            if end > filesize:
                raise _StackError(
                    f"{p}: the file is truncated: image data end at byte {end} "
                    f"but the file has {filesize} bytes"
                )
            n_pages = 0
        else:
            n_pages = _check_pages(series, shape, keyshape, filesize, p)

    if contiguous:  # uncompressed, contiguous: memory-map
        data: Any = tifffile.memmap(p, series=0, mode="r")
    else:
        data = _lazy_pages(p, shape, keyshape, n_pages, dtype)

    data = data.reshape(squeezed_shape)
    if order != tuple(range(len(order))):
        data = data.transpose(order)
    axes = "".join(squeezed_axes[i] for i in order)
    if envelope_axes == "Z" + axes:  # a single plane written as a (1, Y, X) stack
        data = data[np.newaxis]
        axes = envelope_axes
    rgb = axes.endswith("S")
    return StackData(
        data=data,
        axes=axes,
        z_step_um=z_step_um,
        pixel_size_um=pixel_size_um,
        rgb=rgb,
        metadata=metadata,
        path=p,
    )


def _normalise_axes(
    raw_axes: str, shape: tuple[int, ...], p: Path
) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    """Squeeze singletons, map page axes to Z and validate.

    Returns the squeezed axes, the squeezed shape and the permutation that
    brings the squeezed axes into ``[Z]YX[S]`` order.
    """
    axes = ""
    sq_shape: list[int] = []
    for ax, n in zip(raw_axes, shape, strict=True):
        if n == 1 and ax not in "YX":
            continue
        axes += "Z" if ax in "IQ" else ax
        sq_shape.append(n)
    sizes = dict(zip(axes, sq_shape, strict=False))
    if "T" in axes:
        raise _StackError(
            f"{p}: time series (T={sizes['T']}) are not supported; save one z-stack per file"
        )
    if "C" in axes:
        raise _StackError(
            f"{p}: multi-channel stacks (C={sizes['C']}) are not supported; "
            "save one channel per file (RGB images are supported)"
        )
    extra = [ax for ax in axes if ax not in "ZYXS"]
    if extra or len(set(axes)) != len(axes) or "Y" not in axes or "X" not in axes:
        raise _StackError(
            f"{p}: unsupported dimensions {raw_axes!r} with shape {shape}; "
            "expected a z-stack (Z, Y, X[, RGB]) or a single image (Y, X[, RGB])"
        )
    if "S" in axes and sizes["S"] not in (3, 4):
        raise _StackError(
            f"{p}: {sizes['S']} samples per pixel are not supported (only RGB or RGBA)"
        )
    target = "".join(ax for ax in "ZYXS" if ax in axes)
    order = tuple(axes.index(ax) for ax in target)
    return axes, tuple(sq_shape), order


def _check_pages(
    series: Any, shape: tuple[int, ...], keyshape: tuple[int, ...], filesize: int, p: Path
) -> int:
    """Check that every page of the series is present and inside the file.

    Returns the number of pages.
    """
    expected = math.prod(shape) // max(math.prod(keyshape), 1)
    pages = list(series.pages)
    if len(pages) != expected or any(page is None for page in pages):
        found = sum(page is not None for page in pages)
        raise _StackError(
            f"{p}: the file is truncated or corrupt: {found} of {expected} image pages found"
        )
    for page in pages:
        ends = [
            int(o) + int(c)
            for o, c in zip(page.dataoffsets, page.databytecounts, strict=False)
            if int(c) > 0
        ]
        if ends and max(ends) > filesize:
            raise _StackError(
                f"{p}: the file is truncated: image data end at byte {max(ends)} "
                f"but the file has {filesize} bytes"
            )
    return len(pages)


def _read_page(path: str, index: int) -> np.ndarray[Any, Any]:
    """Decode page ``index`` of the first series (a dask chunk)."""
    return np.asarray(tifffile.imread(path, series=0, key=index))


def _lazy_pages(
    p: Path,
    shape: tuple[int, ...],
    keyshape: tuple[int, ...],
    n_pages: int,
    dtype: np.dtype[Any],
) -> Any:
    """Return a dask array reading one page per chunk (eager without dask)."""
    try:  # typed as Any: dask has no complete annotations
        da: Any = importlib.import_module("dask.array")
        delayed: Any = importlib.import_module("dask.delayed").delayed
    except ImportError:  # pragma: no cover - dask comes with napari
        logger.debug("dask not installed; reading %s into memory", p)
        return tifffile.imread(p, series=0)
    read = delayed(_read_page, pure=True)
    planes = [
        da.from_delayed(read(os.fspath(p), i), shape=keyshape, dtype=dtype) for i in range(n_pages)
    ]
    return da.stack(planes).reshape(shape)


def _read_project_metadata(tf: tifffile.TiffFile, p: Path) -> tuple[str | None, dict[str, Any]]:
    """Return (axes written, metadata dict) from the project's private tag."""
    tag = tf.pages.first.tags.get(METADATA_TAG)
    if tag is None:
        return None, {}
    value = tag.value
    try:
        text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        envelope = json.loads(text)
        if not isinstance(envelope, dict) or envelope.get("format") != METADATA_FORMAT:
            raise ValueError("not a napari-sparsefocus metadata envelope")
        metadata = envelope.get("metadata", {})
        axes = envelope.get("axes")
        if not isinstance(metadata, dict) or not (axes is None or isinstance(axes, str)):
            raise ValueError("malformed envelope")
    except (UnicodeDecodeError, ValueError) as exc:
        warnings.warn(
            f"{p}: ignoring unreadable metadata in private TIFF tag {METADATA_TAG}: {exc}",
            UserWarning,
            stacklevel=4,
        )
        return None, {}
    return axes, metadata


def _unit_to_um(unit: str, what: str, p: Path) -> float | None:
    """Micrometres per ``unit``; None for uncalibrated (pixel) units."""
    # ImageJ writes non-ASCII units escaped, e.g. "\\u00B5m".
    text = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), unit).strip()
    if text.lower() in _UNCALIBRATED_UNITS:
        return None
    factor = _UM_PER_UNIT.get(text, _UM_PER_UNIT.get(text.lower()))
    if factor is None:
        raise _StackError(f"{p}: unknown length unit {unit!r} for the {what}")
    return factor


def _positive_size(value: Any, what: str, p: Path) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _StackError(f"{p}: the {what} {value!r} is not a number") from None
    if not math.isfinite(number) or number <= 0:
        raise _StackError(f"{p}: the {what} must be positive and finite, got {value!r}")
    return number


def _ome_sizes(tf: tifffile.TiffFile, p: Path) -> tuple[float | None, float | None]:
    xml = tf.ome_metadata
    if not xml:
        return None, None
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise _StackError(f"{p}: invalid OME-XML metadata: {exc}") from exc
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None, None
    sizes: dict[str, float | None] = {}
    for ax in "XYZ":
        value = pixels.get(f"PhysicalSize{ax}")
        if value is None:
            sizes[ax] = None
            continue
        what = f"OME PhysicalSize{ax}"
        size = _positive_size(value, what, p)
        factor = _unit_to_um(pixels.get(f"PhysicalSize{ax}Unit", "µm"), what, p)
        sizes[ax] = None if factor is None else size * factor
    x, y = sizes["X"], sizes["Y"]
    if x is not None and y is not None and not math.isclose(x, y, rel_tol=_RTOL):
        raise _StackError(
            f"{p}: non-square pixels are not supported "
            f"(OME PhysicalSizeX {x} µm != PhysicalSizeY {y} µm)"
        )
    return sizes["Z"], x if x is not None else y


def _resolution_um(page: Any, factor: float, what: str, p: Path) -> float | None:
    """Pixel size from the XResolution/YResolution tags (pixels per unit)."""
    sizes = []
    for name in ("XResolution", "YResolution"):
        tag = page.tags.get(name)
        if tag is None:
            continue
        num, den = tag.value
        if num <= 0 or den <= 0:
            raise _StackError(f"{p}: invalid {name} tag {tag.value!r} for the {what}")
        sizes.append(float(den) / float(num) * factor)
    if not sizes:
        return None
    if len(sizes) == 2 and not math.isclose(sizes[0], sizes[1], rel_tol=_RTOL):
        raise _StackError(
            f"{p}: non-square pixels are not supported "
            f"(XResolution gives {sizes[0]} µm, YResolution {sizes[1]} µm)"
        )
    return _positive_size(sizes[0], what, p)


def _imagej_sizes(tf: tifffile.TiffFile, p: Path) -> tuple[float | None, float | None]:
    meta = tf.imagej_metadata
    if not meta:
        return None, None
    unit = meta.get("unit")
    if unit is None:  # uncalibrated: ImageJ spacing is then in pixels
        return None, None
    factor = _unit_to_um(str(unit), "ImageJ unit", p)
    z_step = None
    if "spacing" in meta:
        zunit = meta.get("zunit")
        zfactor = factor if zunit is None else _unit_to_um(str(zunit), "ImageJ zunit", p)
        spacing = _positive_size(meta["spacing"], "ImageJ z spacing", p)
        z_step = None if zfactor is None else spacing * zfactor
    pixel = None
    if factor is not None:
        pixel = _resolution_um(tf.pages.first, factor, "ImageJ pixel size", p)
    return z_step, pixel


def _tiff_resolution(tf: tifffile.TiffFile, p: Path) -> float | None:
    """Pixel size from a plain TIFF's resolution tags in metric units (not inches)."""
    page = tf.pages.first
    unit = page.tags.get("ResolutionUnit")
    factors = {
        int(tifffile.RESUNIT.CENTIMETER): 1e4,
        int(tifffile.RESUNIT.MILLIMETER): 1e3,
        int(tifffile.RESUNIT.MICROMETER): 1.0,
    }
    if unit is None or int(unit.value) not in factors:
        return None
    return _resolution_um(page, factors[int(unit.value)], "TIFF resolution", p)


def _agree(a: float | None, b: float | None, what: str, p: Path) -> float | None:
    if a is not None and b is not None and not math.isclose(a, b, rel_tol=_RTOL):
        raise _StackError(f"{p}: the {what} differs between OME ({a} µm) and ImageJ ({b} µm)")
    return a if a is not None else b


def _physical_sizes(tf: tifffile.TiffFile, p: Path) -> tuple[float | None, float | None]:
    ome_z, ome_px = _ome_sizes(tf, p) if tf.is_ome else (None, None)
    ij_z, ij_px = _imagej_sizes(tf, p) if tf.is_imagej else (None, None)
    z_step = _agree(ome_z, ij_z, "z-step", p)
    pixel = _agree(ome_px, ij_px, "pixel size", p)
    if pixel is None and not tf.is_ome and not tf.is_imagej:
        pixel = _tiff_resolution(tf, p)
    return z_step, pixel


# --------------------------------------------------------------------------- writing


def _check_size(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number or None, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return number


def _check_json(obj: Any, where: str) -> None:
    """Raise if ``obj`` does not survive a JSON round trip (tuples excepted)."""
    if obj is None or isinstance(obj, (str, bool, int)):
        return
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"{where} is {obj!r}; JSON metadata must hold finite numbers")
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a non-string key {key!r}; JSON keys must be str")
            _check_json(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_json(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__name__}, which is not JSON-serialisable "
        "(use lists, dicts, str, int, float, bool or None; e.g. array.tolist())"
    )


def _check_finite(arr: np.ndarray[Any, Any]) -> None:
    if not np.issubdtype(arr.dtype, np.floating):
        return
    planes = arr.reshape((-1, *arr.shape[-2:])) if arr.ndim > 2 else arr[np.newaxis]
    for i, plane in enumerate(planes):  # plane by plane: no full-size temporary
        if not np.isfinite(plane).all():
            raise ValueError(f"images contain NaN or infinite values (first in plane {i})")


def write_stack(
    path: str | os.PathLike[str],
    images: npt.ArrayLike,
    *,
    z_step_um: float | None = None,
    pixel_size_um: float | None = None,
    rgb: bool | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a z-stack or single image as an uncompressed OME-TIFF, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Target file; must end in ``.tif``, ``.tiff``, ``.ome.tif`` or
        ``.ome.tiff`` (the content is OME-TIFF either way). Its folder must exist.
    images : array-like
        ``(Z, Y, X)``, ``(Z, Y, X, 3|4)`` (RGB/RGBA), ``(Y, X)`` or
        ``(Y, X, 3|4)``. dtype bool, (u)int8/16/32, float32 or float64;
        floats must be finite.
    z_step_um : float, optional
        Plane spacing in µm (OME ``PhysicalSizeZ``).
    pixel_size_um : float, optional
        Lateral pixel size in µm (OME ``PhysicalSizeX`` and ``PhysicalSizeY``).
    rgb : bool, optional
        Whether the last axis holds RGB(A) samples. By default, 4-D input is
        RGB, 3-D input is RGB when its last axis has length 3, 2-D input is not.
    metadata : dict, optional
        The project's JSON-serialisable metadata (str keys), stored in the
        private tag :data:`METADATA_TAG` and returned by
        ``read_stack(path).metadata`` (tuples come back as lists).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ValueError
        For an unsupported file name, shape, empty or non-finite data, a
        non-positive size, or non-finite numbers in ``metadata``.
    TypeError
        For a non-numeric dtype, non-numeric sizes, or non-JSON ``metadata``.

    Notes
    -----
    The file is first written to a temporary file in the target folder and
    then moved over the target with :func:`os.replace`, so a failed write
    never leaves a partial file at ``path``.
    """
    target = Path(path)
    if not is_tiff_path(target):
        raise ValueError(
            f"{target}: not a TIFF file name; expected one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    arr = np.asarray(images)
    if arr.dtype not in _WRITABLE_DTYPES:
        raise TypeError(
            f"images have dtype {arr.dtype}, which cannot be written; use bool, "
            "uint8, uint16, uint32, int8, int16, int32, float32 or float64"
        )
    if arr.ndim not in (2, 3, 4):
        raise ValueError(
            f"images must be (Z, Y, X), (Z, Y, X, 3), (Y, X) or (Y, X, 3); got shape {arr.shape}"
        )
    if rgb is None:
        rgb = arr.ndim == 4 or (arr.ndim == 3 and arr.shape[-1] == 3)
    if rgb and (arr.ndim == 2 or arr.shape[-1] not in (3, 4)):
        raise ValueError(
            "RGB images need a last axis of length 3 or 4, (Z, Y, X, 3) or (Y, X, 3); "
            f"got shape {arr.shape}"
        )
    if not rgb and arr.ndim == 4:
        raise ValueError(f"4-D images must be RGB (Z, Y, X, 3); got shape {arr.shape}, rgb=False")
    if arr.size == 0:
        raise ValueError(f"images are empty (shape {arr.shape})")
    if rgb and arr.dtype == np.bool_:
        raise TypeError("RGB images cannot have dtype bool")
    z_step = _check_size(z_step_um, "z_step_um")
    pixel = _check_size(pixel_size_um, "pixel_size_um")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    _check_json(metadata, "metadata")
    _check_finite(arr)

    axes = ("ZYX" if arr.ndim - int(rgb) == 3 else "YX") + ("S" if rgb else "")
    envelope = {
        "format": METADATA_FORMAT,
        "version": _METADATA_VERSION,
        "axes": axes,
        "metadata": metadata,
    }
    blob = json.dumps(envelope, ensure_ascii=False, allow_nan=False).encode("utf-8")
    ome: dict[str, Any] = {"axes": axes}
    if pixel is not None:
        ome.update(
            PhysicalSizeX=pixel,
            PhysicalSizeXUnit="µm",
            PhysicalSizeY=pixel,
            PhysicalSizeYUnit="µm",
        )
    if z_step is not None:
        ome.update(PhysicalSizeZ=z_step, PhysicalSizeZUnit="µm")

    # O_EXCL with mode 0o666 honours the umask (unlike tempfile.mkstemp's 0o600).
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        tifffile.imwrite(
            tmp,
            arr,
            ome=True,
            photometric="rgb" if rgb else "minisblack",
            metadata=ome,
            extratags=[(METADATA_TAG, 7, len(blob), blob, True)],
        )
        with open(tmp, "rb+") as fh:  # data on disk before the rename
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.debug("wrote %s %s %s to %s", axes, arr.shape, arr.dtype, target)
    return target
