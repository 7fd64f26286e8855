"""Model files: safetensors weights plus a JSON config, never pickles.

A model is a pair ``NAME.safetensors`` + ``NAME.json`` (or a folder holding
``model.safetensors`` + ``model.json``). The weights file holds flat tensors
(``rin.features.0.conv.weight``, ``dpn.stem.0.weight``, ...); the JSON holds
``{"format": "napari-sparsefocus-model", "version": 1, ...}`` with the
architecture, network configs and the optics the model was trained for.

Loading reads JSON and safetensors only. PyTorch's ``torch.save`` files
(``.pt``, ``.pth``, ``.ckpt``, ...) and plain pickles can run arbitrary code
when loaded, so they are refused by suffix and by their first bytes, before
anything is parsed.
"""

from __future__ import annotations

import json
import math
import os
import struct
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _st_load_bytes
from safetensors.torch import save as _st_save_bytes

from .._optics import Optics

__all__ = [
    "MODEL_FORMAT",
    "MODEL_VERSION",
    "REFUSED_SUFFIXES",
    "ModelFileError",
    "check_optics",
    "load_model_file",
    "save_model_file",
]

#: ``"format"`` of every model JSON.
MODEL_FORMAT = "napari-sparsefocus-model"
#: Model file version written by this package (and the newest it reads).
MODEL_VERSION = 1
#: File suffixes of pickle-based formats, refused without being opened.
REFUSED_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")

_DIR_STEM = "model"
_WEIGHTS_SUFFIX = ".safetensors"
_CONFIG_SUFFIX = ".json"
_ONLY = "only safetensors weights + a JSON config are accepted (pickled files are never loaded)"
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"
#: largest safetensors header the library accepts (100 MB)
_MAX_HEADER_BYTES = 100_000_000


class ModelFileError(ValueError):
    """A model file is missing, corrupt, unsafe (pickled) or does not fit."""


# --------------------------------------------------------------------------- paths
def _refuse_suffix(p: Path) -> None:
    if p.suffix.lower() in REFUSED_SUFFIXES:
        raise ModelFileError(f"{p}: refusing a {p.suffix} file; {_ONLY}")


def _pair(stem: Path) -> tuple[Path, Path]:
    return stem.with_name(stem.name + _WEIGHTS_SUFFIX), stem.with_name(stem.name + _CONFIG_SUFFIX)


def _resolve_for_load(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    p = Path(path)
    if p.is_dir():
        return _pair(p / _DIR_STEM)
    _refuse_suffix(p)
    if p.suffix.lower() in (_WEIGHTS_SUFFIX, _CONFIG_SUFFIX):
        return _pair(p.with_suffix(""))
    return _pair(p)


def _resolve_for_save(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    text = os.fspath(path)
    p = Path(text)
    if p.is_dir() or text.endswith(("/", os.sep)):
        return _pair(p / _DIR_STEM)
    if p.suffix.lower() in REFUSED_SUFFIXES:
        raise ModelFileError(
            f"{p}: model files are written as NAME.safetensors + NAME.json, not {p.suffix}"
        )
    if p.suffix.lower() in (_WEIGHTS_SUFFIX, _CONFIG_SUFFIX):
        return _pair(p.with_suffix(""))
    return _pair(p)


# --------------------------------------------------------------------------- sniffing
def _safetensors_header_length(head: bytes) -> int | None:
    """Return the header length if ``head`` starts like a safetensors file, else None.

    A safetensors file starts with its JSON header's length (little-endian
    u64) followed by ``{``. A pickle stream or a zip archive never does.
    """
    if len(head) < 9 or head[8:9] != b"{":
        return None
    (n,) = struct.unpack("<Q", head[:8])
    return n if 2 <= n <= _MAX_HEADER_BYTES else None


def _check_weights_head(p: Path, head: bytes, size: int) -> None:
    """Raise unless ``p`` starts like a complete safetensors file."""
    n = _safetensors_header_length(head)
    if n is None:
        _refuse_unsafe_content(p, head, "weights")
        raise ModelFileError(f"{p}: not a safetensors file; {_ONLY}")
    if 8 + n > size:
        raise ModelFileError(
            f"{p}: truncated safetensors file ({size} bytes, its header alone needs {8 + n})"
        )


def _refuse_unsafe_content(p: Path, head: bytes, what: str) -> None:
    """Raise if ``head`` (the first bytes of ``p``) is a zip or pickle stream."""
    if head.startswith(_ZIP_MAGIC):
        raise ModelFileError(
            f"{p}: refusing a zip archive (the torch.save format) as {what}; {_ONLY}"
        )
    if head.startswith(_PICKLE_PROTO):
        raise ModelFileError(f"{p}: refusing what looks like a Python pickle as {what}; {_ONLY}")


def _read_weights(p: Path) -> dict[str, torch.Tensor]:
    data = p.read_bytes()
    _check_weights_head(p, data[:16], len(data))
    try:
        tensors = _st_load_bytes(data)
    except (SafetensorError, ValueError, RuntimeError, TypeError) as exc:
        raise ModelFileError(f"{p}: corrupt or truncated safetensors file: {exc}") from None
    return dict(tensors)


def _read_config(p: Path) -> dict[str, Any]:
    raw = p.read_bytes()
    _refuse_unsafe_content(p, raw[:8], "config")
    try:
        cfg = json.loads(raw.decode("utf-8-sig"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{p}: the model config is not valid UTF-8 JSON: {exc}") from None
    except ModelFileError as exc:
        raise ModelFileError(f"{p}: {exc}") from None
    if not isinstance(cfg, dict):
        raise ModelFileError(
            f"{p}: the model config must be a JSON object, got {type(cfg).__name__}"
        )
    _check_header(cfg, str(p))
    return cfg


def _reject_constant(name: str) -> float:
    raise ModelFileError(f"non-finite number {name} in the model config")


def _check_header(cfg: Mapping[str, Any], where: str) -> None:
    fmt = cfg.get("format")
    if fmt != MODEL_FORMAT:
        raise ModelFileError(
            f"{where}: not a napari-sparsefocus model (format {fmt!r}, expected {MODEL_FORMAT!r})"
        )
    version = cfg.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{where}: model version must be an integer >= 1, got {version!r}")
    if version > MODEL_VERSION:
        raise ModelFileError(
            f"{where}: model file version {version} was written by a newer napari-sparsefocus; "
            f"this version reads up to version {MODEL_VERSION}: upgrade napari-sparsefocus"
        )


def _non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    bad = []
    for name, t in tensors.items():
        if (t.is_floating_point() or t.is_complex()) and t.numel():
            n_bad = int((~torch.isfinite(t)).sum())
            if n_bad:
                bad.append(f"{name!r} ({n_bad} of {t.numel()} values)")
    return bad


# --------------------------------------------------------------------------- writing
def _atomic_write(target: Path, data: bytes) -> Path:
    """Write ``data`` to a fsynced temporary file next to ``target``; return its path."""
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def save_model_file(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
) -> tuple[Path, Path]:
    """Write a model as ``<stem>.safetensors`` + ``<stem>.json``, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The stem (``runs/dpn``), either file of the pair (``runs/dpn.json``)
        or a folder (an existing directory or a string ending in a path
        separator; the files are then ``model.safetensors`` and
        ``model.json`` inside, the folder is created if needed).
    tensors : Mapping of str to torch.Tensor
        Flat state dict (e.g. ``{"dpn." + k: v for k, v in net.state_dict().items()}``).
        Tensors are copied to CPU and made contiguous.
    config : Mapping
        JSON-serialisable config; ``"format"`` and ``"version"`` are added
        when absent.

    Returns
    -------
    tuple of Path
        The weights and config files.

    Raises
    ------
    ModelFileError
        If the path has a pickle suffix, the config names another format or
        version, a tensor holds NaN or infinite values, or the config is not
        JSON-serialisable with finite numbers.
    TypeError
        If ``tensors`` is not a mapping of names to tensors.

    Notes
    -----
    Both files are first written to fsynced temporary files in the target
    folder and then moved into place with :func:`os.replace`, weights first,
    so neither file is ever seen half written.
    """
    weights_path, config_path = _resolve_for_save(path)
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of str to Tensor, got {type(tensors).__name__}")
    flat: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise TypeError(
                f"tensors must map str to torch.Tensor, got {name!r}: {type(t).__name__}"
            )
        # clone: safetensors refuses tensors that share memory (views, tied weights)
        flat[name] = t.detach().to("cpu").contiguous().clone()
    bad = _non_finite(flat)
    if bad:
        raise ModelFileError(f"refusing to save non-finite weights in {', '.join(bad[:5])}")
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping, got {type(config).__name__}")
    cfg: dict[str, Any] = {"format": MODEL_FORMAT, "version": MODEL_VERSION}
    cfg.update(config)  # format and version first in the file
    _check_header(cfg, "config")
    if cfg["version"] != MODEL_VERSION:
        raise ModelFileError(
            f"config: this version writes model version {MODEL_VERSION}, got {cfg['version']!r}"
        )
    try:
        text = json.dumps(cfg, indent=2, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"the model config is not JSON-serialisable: {exc}") from None

    weights_path.parent.mkdir(parents=True, exist_ok=True)
    blob = _st_save_bytes(flat, metadata={"format": MODEL_FORMAT, "version": str(MODEL_VERSION)})
    tmp_w = _atomic_write(weights_path, blob)
    try:
        tmp_c = _atomic_write(config_path, (text + "\n").encode("utf-8"))
    except BaseException:
        tmp_w.unlink(missing_ok=True)
        raise
    try:
        os.replace(tmp_w, weights_path)
        os.replace(tmp_c, config_path)
    finally:
        tmp_w.unlink(missing_ok=True)
        tmp_c.unlink(missing_ok=True)
    return weights_path, config_path


# --------------------------------------------------------------------------- reading
def load_model_file(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a model's weights and config; never unpickles.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.json``, the ``.safetensors``, their common stem, or a folder
        holding ``model.safetensors`` + ``model.json``.

    Returns
    -------
    tensors : dict of str to torch.Tensor
        The weights, on CPU.
    config : dict
        The JSON config (``format`` and ``version`` checked).

    Raises
    ------
    ModelFileError
        If ``path`` has a pickle suffix (``.pt``, ``.pth``, ``.pkl``,
        ``.ckpt``, ``.bin``), either file is missing, starts like a pickle
        or a zip archive (``torch.save``), the safetensors file is corrupt or
        truncated, the JSON is invalid or names another format or a newer
        version, or a weight is NaN or infinite.
    """
    weights_path, config_path = _resolve_for_load(path)
    for p, what in ((config_path, "config"), (weights_path, "weights")):
        if not p.is_file():
            raise ModelFileError(
                f"model {what} file {p} is missing: a model is NAME.safetensors + NAME.json "
                f"(or a folder with model.safetensors + model.json)"
            )
    # sniff both before parsing either
    with open(weights_path, "rb") as fh:
        head = fh.read(16)
    _check_weights_head(weights_path, head, weights_path.stat().st_size)
    config = _read_config(config_path)
    tensors = _read_weights(weights_path)
    bad = _non_finite(tensors)
    if bad:
        raise ModelFileError(f"{weights_path}: non-finite weights in {', '.join(bad[:5])}")
    return tensors, config


# --------------------------------------------------------------------------- optics
def _pixel_size_um(optics: Mapping[str, Any]) -> float | None:
    if "pixel_size_um" in optics:
        return float(optics["pixel_size_um"])
    if "camera_pixel_size_um" in optics and "magnification" in optics:
        return float(optics["camera_pixel_size_um"]) / float(optics["magnification"])
    return None


def _close(a: float, b: float, rtol: float) -> bool:
    return math.isclose(a, b, rel_tol=rtol, abs_tol=0.0)


def _fmt_wl(wl: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{w:g}" for w in wl) + ") µm"


def check_optics(
    config: Mapping[str, Any],
    optics: Mapping[str, Any] | Optics,
    *,
    rtol: float = 0.02,
) -> None:
    """Raise if a model was trained for other optics than an image's.

    Compares the sample pixel size, the numerical aperture and the
    wavelengths of ``config["optics"]`` with ``optics``.

    Parameters
    ----------
    config : Mapping
        The model's JSON config (from :func:`load_model_file`).
    optics : Mapping or Optics
        The image's optics: an :class:`~napari_sparsefocus.core.Optics`, its
        :meth:`~napari_sparsefocus.core.Optics.to_dict`, or any mapping with
        some of ``pixel_size_um`` (or ``camera_pixel_size_um`` and
        ``magnification``), ``na`` and ``wavelengths_um``. Fields the image
        does not give are not compared.
    rtol : float
        Relative tolerance (default 2 %).

    Raises
    ------
    ModelFileError
        If the model records no optics or a compared field differs by more
        than ``rtol``; the message lists each difference, e.g.
        ``model trained for pixel size 0.1725 µm, image has 0.345 µm``.
    """
    rtol = float(rtol)
    if not (math.isfinite(rtol) and rtol >= 0):
        raise ValueError(f"rtol must be a finite number >= 0, got {rtol!r}")
    model = config.get("optics")
    if not isinstance(model, Mapping):
        raise ModelFileError("the model config records no 'optics': cannot check the optics")
    image: Mapping[str, Any] = optics.to_dict() if isinstance(optics, Optics) else optics
    diffs: list[str] = []
    try:
        px_m, px_i = _pixel_size_um(model), _pixel_size_um(image)
        if px_m is not None and px_i is not None and not _close(px_m, px_i, rtol):
            diffs.append(f"pixel size {px_m:g} µm, image has {px_i:g} µm")
        if "na" in model and "na" in image:
            na_m, na_i = float(model["na"]), float(image["na"])
            if not _close(na_m, na_i, rtol):
                diffs.append(f"NA {na_m:g}, image has NA {na_i:g}")
        if "wavelengths_um" in model and "wavelengths_um" in image:
            wl_m = tuple(float(w) for w in model["wavelengths_um"])
            wl_i = tuple(float(w) for w in image["wavelengths_um"])
            if len(wl_m) != len(wl_i) or not all(
                _close(a, b, rtol) for a, b in zip(wl_m, wl_i, strict=True)
            ):
                diffs.append(f"wavelengths {_fmt_wl(wl_m)}, image has {_fmt_wl(wl_i)}")
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"cannot compare the optics: {exc}") from None
    if diffs:
        raise ModelFileError(
            "model trained for "
            + "; ".join(diffs)
            + f" (tolerance {rtol:.0%}): retrain for these optics or use a matching model"
        )
