"""npe2 reader and writer hooks for z-stacks (registered in ``napari.yaml``).

This module does not import napari: npe2 calls these functions with plain
paths, arrays and dicts.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._tiff import (
    _UM_PER_UNIT,
    StackData,
    _check_json,
    is_tiff_path,
    read_stack,
    write_stack,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["layer_data_from_stack", "napari_get_reader", "napari_write_image"]

logger = logging.getLogger(__name__)

#: A napari ``LayerDataTuple``: (data, layer keyword arguments, layer type).
LayerDataTuple = tuple[Any, dict[str, Any], str]
PathOrPaths = str | os.PathLike[str] | list[str] | tuple[str, ...]


@cache
def _napari_has_units() -> bool:
    """Whether the installed napari takes the ``units`` layer argument (>= 0.6)."""
    try:
        text = version("napari")
    except PackageNotFoundError:
        return False
    match = re.match(r"(\d+)\.(\d+)", text)
    return match is not None and (int(match[1]), int(match[2])) >= (0, 6)


def _layer_name(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def layer_data_from_stack(stack: StackData, name: str | None = None) -> LayerDataTuple:
    """Turn a :class:`StackData` into a napari image ``LayerDataTuple``.

    Parameters
    ----------
    stack : StackData
        The stack, e.g. from :func:`read_stack`.
    name : str, optional
        Layer name; defaults to the file name without its TIFF ending.

    Returns
    -------
    tuple
        ``(data, kwargs, "image")`` where ``kwargs`` holds ``name``,
        ``scale`` (µm per pixel, 1.0 where unknown), ``rgb``, ``metadata``
        (the project's metadata) and, with napari >= 0.6, ``units``
        (``"micrometer"``, or ``"pixel"`` for axes of unknown size).
    """
    kwargs: dict[str, Any] = {
        "name": name if name is not None else _layer_name(stack.path),
        "scale": stack.scale,
        "rgb": stack.rgb,
        "metadata": dict(stack.metadata),
    }
    if _napari_has_units():
        pixel_unit = "pixel" if stack.pixel_size_um is None else "micrometer"
        units = [pixel_unit, pixel_unit]
        if stack.axes.startswith("Z"):
            units.insert(0, "pixel" if stack.z_step_um is None else "micrometer")
        kwargs["units"] = tuple(units)
    return (stack.data, kwargs, "image")


def _read_layers(path: PathOrPaths) -> list[LayerDataTuple]:
    """Read one image layer per file (the reader returned by napari_get_reader)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    return [layer_data_from_stack(read_stack(p)) for p in paths]


def napari_get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerDataTuple]] | None:
    """Return a reader for TIFF z-stacks, or None if napari should try another plugin.

    Parameters
    ----------
    path : str or list of str
        A file path, or a list of paths (all must be readable TIFF files).

    Returns
    -------
    callable or None
        A function that takes the same path(s) and returns a list of
        ``(data, kwargs, "image")`` tuples, one per file; None for non-TIFF
        names, lists mixing TIFF and other files, and files that cannot be
        read. Never raises.
    """
    try:
        paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        if not paths or not all(is_tiff_path(p) for p in paths):
            return None
        for p in paths:
            with warnings.catch_warnings():  # the reader itself will warn
                warnings.simplefilter("ignore")
                read_stack(p)
    except Exception as exc:
        logger.debug("napari-sparsefocus cannot read %r: %s", path, exc)
        return None
    return _read_layers


def _to_um(value: float, unit: Any) -> float | None:
    """Convert one scale entry with its napari unit to µm; None if unknown.

    napari's default unit is ``pixel``: a pixel-unit scale of exactly 1 means
    "unknown" (what the reader shows for missing sizes); any other
    pixel-unit scale is taken as µm, the usual napari convention.
    """
    name = "" if unit is None else str(unit).strip()
    if name.lower() in {"pixel", "pixels", "px", ""}:
        return None if (unit is not None and float(value) == 1.0) else float(value)
    factor = _UM_PER_UNIT.get(name, _UM_PER_UNIT.get(name.lower()))
    if factor is not None:
        return float(value) * factor
    try:  # a pint unit napari did not spell like the table
        return float((value * unit).to("micrometer").magnitude)
    except Exception as exc:
        raise ValueError(f"cannot convert the layer's unit {name!r} to micrometres") from exc


def _jsonable(value: Any) -> Any:
    """Convert numpy containers and scalars to JSON types (others unchanged)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _metadata_to_write(meta: dict[str, Any]) -> dict[str, Any]:
    """Return the layer's metadata entries that JSON can store (warn about others)."""
    raw = meta.get("metadata") or {}
    if not isinstance(raw, dict):
        warnings.warn(
            f"layer metadata is a {type(raw).__name__}, not a dict; not saved",
            UserWarning,
            stacklevel=3,
        )
        return {}
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in raw.items():
        converted = _jsonable(value)
        try:
            _check_json({key: converted}, "metadata")
        except (TypeError, ValueError):
            dropped.append(str(key))
            continue
        kept[key] = converted
    if dropped:
        warnings.warn(
            f"layer metadata entries {dropped} are not JSON-serialisable; not saved",
            UserWarning,
            stacklevel=3,
        )
    return kept


def napari_write_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write an image layer as an OME-TIFF (npe2 single-layer writer).

    Parameters
    ----------
    path : str
        Target path; ``.ome.tif`` is appended when it has no TIFF ending.
    data : array-like
        The layer data: ``(Z, Y, X)``, ``(Y, X)``, or RGB with a trailing 3.
    meta : dict
        The layer's attributes. ``scale`` sets the z-step and pixel size:
        converted to µm with ``units`` when they are lengths; with napari's
        default ``pixel`` units a scale of 1 is stored as unknown and any
        other value as µm. ``rgb`` sets the colour mode and ``metadata``
        (its JSON-serialisable entries; numpy arrays become lists) is stored
        in the file.

    Returns
    -------
    list of str
        The written path.

    Raises
    ------
    ValueError
        If the layer has non-square pixels, or data :func:`write_stack` rejects.
    """
    target = Path(path)
    if not is_tiff_path(target):
        target = target.with_name(target.name + ".ome.tif")
    arr = np.asarray(data)
    rgb = bool(meta.get("rgb", False))
    n_spatial = arr.ndim - int(rgb)
    scale: Sequence[float] = meta.get("scale") or [1.0] * n_spatial
    units: Sequence[Any] = meta.get("units") or [None] * len(scale)
    if len(scale) != n_spatial or len(units) != len(scale):
        raise ValueError(
            f"layer scale {tuple(scale)} does not match data of shape {arr.shape} (rgb={rgb})"
        )
    sizes = [_to_um(s, u) for s, u in zip(scale, units, strict=True)]
    y_um, x_um = sizes[-2], sizes[-1]
    if (y_um is None) != (x_um is None) or (
        y_um is not None and x_um is not None and not math.isclose(y_um, x_um, rel_tol=1e-6)
    ):
        raise ValueError(f"non-square pixels are not supported (layer scale {tuple(scale)})")
    z_um = sizes[0] if n_spatial == 3 else None
    written = write_stack(
        target,
        arr,
        z_step_um=z_um,
        pixel_size_um=x_um,
        rgb=rgb,
        metadata=_metadata_to_write(meta),
    )
    return [os.fspath(written)]
