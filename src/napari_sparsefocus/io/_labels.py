"""The label file: the in-focus plane (and optional content mask) of each z-stack.

A label file is UTF-8 JSON with a schema name and version::

    {"schema": "napari-sparsefocus-labels", "version": 1,
     "stacks": [{"path": "stack_01.ome.tif", "focal_plane_index": 23.4,
                 "z_step_um": 0.5, "content_mask": [[0, 1, ...], ...],
                 "annotator": "jd", "source": "manual", "notes": ""}]}

``path`` is relative to the label file, ``focal_plane_index`` is fractional
(sub-step) and the defocus of plane ``i`` is
``(i - focal_plane_index) * z_step_um``. Files are written atomically and an
existing file that this version cannot read is backed up before it is
replaced, so a crash or a version mix-up never loses labels.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from numpy.typing import NDArray

__all__ = [
    "LABELS_SCHEMA",
    "LABELS_VERSION",
    "LABEL_SOURCES",
    "LabelFile",
    "LabelFileError",
    "StackLabel",
    "backup_label_file",
    "labels_from_simulated",
    "read_labels",
    "write_labels",
]

#: Schema name stored in every label file.
LABELS_SCHEMA = "napari-sparsefocus-labels"
#: Schema version written by this package (and the newest it reads).
LABELS_VERSION = 1
#: Valid values of :attr:`StackLabel.source`.
LABEL_SOURCES = ("manual", "finder", "model", "simulated")

_REQUIRED_FIELDS = ("path", "focal_plane_index")
_OPTIONAL_FIELDS = ("z_step_um", "content_mask", "annotator", "source", "notes")


class LabelFileError(ValueError):
    """A label file cannot be read: not JSON, wrong schema or version, invalid entries."""


def _check_mask(mask: Any, where: str) -> NDArray[np.uint8]:
    """Return ``mask`` as a read-only uint8 array of 0/1, or raise ``ValueError``."""
    if isinstance(mask, list):
        if not mask or not all(isinstance(row, list) for row in mask):
            raise ValueError(f"{where} must be a non-empty list of rows (lists of 0/1)")
        width = len(mask[0])
        if width == 0 or any(len(row) != width for row in mask):
            raise ValueError(
                f"{where} must be rectangular, got row lengths {sorted({len(r) for r in mask})}"
            )
        for row in mask:
            for v in row:
                # bool is an int subclass: true/false are accepted as 1/0
                if not isinstance(v, int) or v not in (0, 1):
                    raise ValueError(f"{where} must hold only 0 and 1, found {v!r}")
        arr = np.array(mask, dtype=np.uint8)
    else:
        a = np.asarray(mask)
        if a.ndim != 2 or a.size == 0:
            raise ValueError(f"{where} must be a non-empty 2-D grid, got shape {a.shape}")
        if a.dtype == object or not (
            np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.bool_)
        ):
            raise ValueError(f"{where} must be numeric 0/1, got dtype {a.dtype}")
        if not np.all((a == 0) | (a == 1)):
            raise ValueError(f"{where} must hold only 0 and 1")
        arr = a.astype(np.uint8)
    arr.setflags(write=False)
    return arr


def _check_number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where} must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{where} must be finite, got {value!r}")
    return x


@dataclass(frozen=True, eq=False)
class StackLabel:
    """The label of one z-stack.

    Parameters
    ----------
    path : str
        Stack file, relative to the label file (POSIX separators recommended).
    focal_plane_index : float
        Index of the in-focus plane; fractional for sub-step focus.
    z_step_um : float or None
        Plane spacing (µm, > 0), None if unknown.
    content_mask : array_like of 0/1, optional
        Grid (9×9 for a 2016 px crop) marking the patches that hold content;
        stored as a read-only ``uint8`` array.
    annotator : str
        Who (or what) made the label.
    source : {"manual", "finder", "model", "simulated"}
        How the focal plane was found.
    notes : str
        Free text.

    Raises
    ------
    ValueError
        If a field is invalid (the message names it).
    """

    path: str
    focal_plane_index: float
    z_step_um: float | None = None
    content_mask: NDArray[np.uint8] | None = None
    annotator: str = ""
    source: str = "manual"
    notes: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"path must be a non-empty string, got {self.path!r}")
        object.__setattr__(
            self,
            "focal_plane_index",
            _check_number(self.focal_plane_index, "focal_plane_index"),
        )
        if self.z_step_um is not None:
            z = _check_number(self.z_step_um, "z_step_um")
            if z <= 0:
                raise ValueError(f"z_step_um must be > 0, got {self.z_step_um!r}")
            object.__setattr__(self, "z_step_um", z)
        if self.content_mask is not None:
            object.__setattr__(self, "content_mask", _check_mask(self.content_mask, "content_mask"))
        for name in ("annotator", "notes"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        if self.source not in LABEL_SOURCES:
            raise ValueError(f"source must be one of {LABEL_SOURCES}, got {self.source!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StackLabel):
            return NotImplemented
        a, b = self.content_mask, other.content_mask
        same_mask = (a is None and b is None) or (
            a is not None and b is not None and np.array_equal(a, b)
        )
        return same_mask and (
            self.path,
            self.focal_plane_index,
            self.z_step_um,
            self.annotator,
            self.source,
            self.notes,
        ) == (
            other.path,
            other.focal_plane_index,
            other.z_step_um,
            other.annotator,
            other.source,
            other.notes,
        )

    def defocus_um(self, n_planes: int, z_step_um: float | None = None) -> NDArray[np.float64]:
        """Return the defocus of every plane, ``(i - focal_plane_index) * z_step``.

        Parameters
        ----------
        n_planes : int
            Number of planes in the stack (≥ 1).
        z_step_um : float, optional
            Plane spacing (µm, > 0); overrides :attr:`z_step_um`.

        Returns
        -------
        ndarray of float64
            ``(n_planes,)`` defocus in µm (``z_current - z_focus``).

        Raises
        ------
        ValueError
            If no z-step is known or the arguments are invalid.
        """
        if isinstance(n_planes, bool) or int(n_planes) != n_planes or n_planes < 1:
            raise ValueError(f"n_planes must be an integer >= 1, got {n_planes!r}")
        step = self.z_step_um if z_step_um is None else float(z_step_um)
        if step is None:
            raise ValueError(
                f"no z-step is known for {self.path!r}: pass z_step_um or store it in the label"
            )
        if not (math.isfinite(step) and step > 0):
            raise ValueError(f"z_step_um must be a finite number > 0, got {z_step_um!r}")
        return (np.arange(int(n_planes), dtype=np.float64) - self.focal_plane_index) * step

    def resolve(self, base_dir: str | os.PathLike[str]) -> Path:
        """Return the stack's location: :attr:`path` joined to the label file's folder."""
        return Path(base_dir) / self.path

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON entry of this stack (all fields, None as null)."""
        return {
            "path": self.path,
            "focal_plane_index": self.focal_plane_index,
            "z_step_um": self.z_step_um,
            "content_mask": None if self.content_mask is None else self.content_mask.tolist(),
            "annotator": self.annotator,
            "source": self.source,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StackLabel:
        """Build from a JSON entry (see :meth:`to_dict`); invalid entries raise ``ValueError``."""
        if not isinstance(data, dict):
            raise ValueError(f"a stack entry must be an object, got {type(data).__name__}")
        missing = [k for k in _REQUIRED_FIELDS if k not in data]
        if missing:
            raise ValueError(f"missing field(s) {missing}")
        unknown = sorted(set(data) - set(_REQUIRED_FIELDS) - set(_OPTIONAL_FIELDS))
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}")
        kw = dict(data)
        for name in ("annotator", "notes"):
            if kw.get(name) is None:
                kw.pop(name, None)
        if kw.get("source") is None:
            kw.pop("source", None)
        return cls(**kw)


@dataclass
class LabelFile:
    """The contents of a label file: one :class:`StackLabel` per stack.

    Parameters
    ----------
    stacks : list of StackLabel
        Labels, in file order.
    """

    schema: ClassVar[str] = LABELS_SCHEMA
    version: ClassVar[int] = LABELS_VERSION

    stacks: list[StackLabel] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON document (schema, version and stacks)."""
        for i, s in enumerate(self.stacks):
            if not isinstance(s, StackLabel):
                raise TypeError(f"stacks[{i}] must be a StackLabel, got {type(s).__name__}")
        return {
            "schema": LABELS_SCHEMA,
            "version": LABELS_VERSION,
            "stacks": [s.to_dict() for s in self.stacks],
        }

    @classmethod
    def from_dict(cls, data: Any) -> LabelFile:
        """Validate and migrate a parsed JSON document.

        Parameters
        ----------
        data : Any
            The parsed document.

        Returns
        -------
        LabelFile
            Its labels.

        Raises
        ------
        LabelFileError
            If the schema, version or an entry is invalid.
        """
        if not isinstance(data, dict):
            raise LabelFileError(f"a label file must hold a JSON object, got {type(data).__name__}")
        schema = data.get("schema")
        if schema != LABELS_SCHEMA:
            raise LabelFileError(
                f"not a napari-sparsefocus label file: schema is {schema!r}, "
                f"expected {LABELS_SCHEMA!r}"
            )
        version = data.get("version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise LabelFileError(f"label file version must be an integer, got {version!r}")
        if version > LABELS_VERSION:
            raise LabelFileError(
                f"label file version {version} was written by a newer napari-sparsefocus; "
                f"this version reads up to version {LABELS_VERSION}: upgrade napari-sparsefocus"
            )
        data = _migrate(data, version)
        unknown = sorted(set(data) - {"schema", "version", "stacks"})
        if unknown:
            raise LabelFileError(f"unknown top-level field(s) {unknown}")
        stacks = data.get("stacks")
        if not isinstance(stacks, list):
            raise LabelFileError(f"'stacks' must be a list, got {type(stacks).__name__}")
        out = []
        for i, entry in enumerate(stacks):
            name = entry.get("path") if isinstance(entry, dict) else None
            where = f"stacks[{i}]" + (f" ({name!r})" if isinstance(name, str) else "")
            try:
                out.append(StackLabel.from_dict(entry))
            except (ValueError, TypeError) as exc:
                raise LabelFileError(f"{where}: {exc}") from None
        return cls(stacks=out)


#: ``{version: function}`` upgrading a parsed document from ``version`` to
#: ``version + 1``. Empty: version 1 is the first version.
_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def _migrate(data: dict[str, Any], version: int) -> dict[str, Any]:
    """Upgrade a parsed label document from ``version`` to :data:`LABELS_VERSION`.

    To change the format, bump :data:`LABELS_VERSION` and register a function
    in ``_MIGRATIONS[old_version]`` that returns the document in the next
    version's layout; this applies them in turn.

    Parameters
    ----------
    data : dict
        The parsed document.
    version : int
        Its ``version`` field.

    Returns
    -------
    dict
        The document in the current layout (``data`` itself when current).

    Raises
    ------
    LabelFileError
        If no migration path exists (any version below 1).
    """
    while version < LABELS_VERSION:
        step = _MIGRATIONS.get(version)
        if step is None:
            raise LabelFileError(
                f"label file version {version} cannot be read: no migration from version "
                f"{version} exists (napari-sparsefocus label files start at version 1)"
            )
        data = step(data)
        version += 1
    return data


def _reject_constant(name: str) -> float:
    raise LabelFileError(f"label file holds a non-finite number ({name}); only finite numbers")


def read_labels(path: str | os.PathLike[str]) -> LabelFile:
    """Read a label file.

    Parameters
    ----------
    path : str or os.PathLike
        The label file (JSON).

    Returns
    -------
    LabelFile
        The labels; stack paths stay relative to ``path`` (see
        :meth:`StackLabel.resolve`).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    LabelFileError
        If the file is not UTF-8 JSON, has another schema, a newer or
        unsupported version, or an invalid entry (the message names the
        stack entry and field).
    """
    p = Path(path)
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelFileError(f"{p} is not a UTF-8 text file: {exc}") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise LabelFileError(f"{p} is not valid JSON: {exc}") from None
    except LabelFileError as exc:
        raise LabelFileError(f"{p}: {exc}") from None
    try:
        return LabelFile.from_dict(data)
    except LabelFileError as exc:
        raise LabelFileError(f"{p}: {exc}") from None


def _dumps(labels: LabelFile) -> str:
    """Serialise with two-space indents and one line per content-mask row."""
    doc = labels.to_dict()
    token = f"@@mask-{uuid.uuid4().hex}-"
    masks: dict[str, list[list[int]]] = {}
    for i, entry in enumerate(doc["stacks"]):
        if entry["content_mask"] is not None:
            key = f"{token}{i}"
            masks[key] = entry["content_mask"]
            entry["content_mask"] = key
    text = json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False)
    if masks:
        lines = []
        for line in text.split("\n"):
            start = line.find(f'"{token}')
            if start >= 0:
                end = line.index('"', start + 1)
                rows = masks[line[start + 1 : end]]
                pad = " " * (len(line) - len(line.lstrip(" ")))
                body = ",\n".join(f"{pad}  {json.dumps(r, separators=(', ', ': '))}" for r in rows)
                line = f"{line[:start]}[\n{body}\n{pad}]{line[end + 1 :]}"
            lines.append(line)
        text = "\n".join(lines)
    return text + "\n"


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_bytes(target: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``target``, fsync, then ``os.replace``."""
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    # O_EXCL with mode 0o666 honours the umask (unlike tempfile.mkstemp's 0o600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def _backup_path(target: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    candidate = target.with_name(f"{target.name}.bak-{stamp}")
    n = 1
    while candidate.exists():
        candidate = target.with_name(f"{target.name}.bak-{stamp}-{n}")
        n += 1
    return candidate


def backup_label_file(path: str | os.PathLike[str]) -> Path:
    """Copy a file to ``<name>.bak-<YYYYmmddTHHMMSS>`` next to it, atomically.

    The same backup :func:`write_labels` makes of a file it cannot read;
    use it to keep an unreadable label file before starting afresh.

    Parameters
    ----------
    path : str or os.PathLike
        The file to back up.

    Returns
    -------
    Path
        The backup (an existing backup is never overwritten).

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a file.
    """
    target = Path(path)
    if not target.is_file():
        raise FileNotFoundError(f"{target}: no such file")
    backup = _backup_path(target)
    _atomic_write_bytes(backup, target.read_bytes())
    return backup


def write_labels(path: str | os.PathLike[str], labels: LabelFile, *, backup: bool = True) -> Path:
    """Write a label file atomically.

    The JSON goes to a temporary file in the target's folder, is flushed to
    disk and then moved over the target with :func:`os.replace`: readers see
    either the old or the new file, never a partial one.

    Parameters
    ----------
    path : str or os.PathLike
        Destination (conventionally ``*.json`` next to the stacks).
    labels : LabelFile
        The labels to write.
    backup : bool
        If True (default) and the existing file cannot be read by this
        version (corrupt, another schema, an older or newer version), it is
        first copied to ``<name>.bak-<YYYYmmddTHHMMSS>`` so nothing is lost.
        A readable current-version file is replaced without a copy.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    TypeError
        If ``labels`` is not a :class:`LabelFile` of :class:`StackLabel`.
    """
    if not isinstance(labels, LabelFile):
        raise TypeError(f"labels must be a LabelFile, got {type(labels).__name__}")
    target = Path(path)
    data = _dumps(labels).encode("utf-8")  # serialise before touching the disk
    if backup and target.is_file():
        try:
            read_labels(target)
        except LabelFileError:
            _atomic_write_bytes(_backup_path(target), target.read_bytes())
    _atomic_write_bytes(target, data)
    return target


def labels_from_simulated(metadata: Mapping[str, Any], path: str) -> StackLabel:
    """Build the label of a simulated stack from its metadata.

    Parameters
    ----------
    metadata : Mapping
        :meth:`napari_sparsefocus.core.SimulatedStack.to_metadata` output;
        uses ``"defocus_um"`` (one value per plane, strictly increasing),
        ``"importance"`` (the grid W*), ``"kind"`` and ``"sparsity"``.
    path : str
        Stack file, relative to the label file.

    Returns
    -------
    StackLabel
        ``focal_plane_index`` where the defocus is 0 (linearly interpolated
        between planes), ``z_step_um`` from the plane spacing (None for a
        single plane or uneven spacing), ``content_mask = importance >= 0.5``,
        ``source="simulated"`` and the kind and sparsity in ``notes``.

    Raises
    ------
    ValueError
        If a key is missing, the defocus values are not strictly increasing
        and finite, or 0 lies outside the stack.
    """
    missing = [k for k in ("defocus_um", "importance", "kind", "sparsity") if k not in metadata]
    if missing:
        raise ValueError(f"simulator metadata lacks {missing}")
    d = np.asarray(metadata["defocus_um"], dtype=np.float64)
    if d.ndim != 1 or d.size == 0 or not np.all(np.isfinite(d)):
        raise ValueError("metadata['defocus_um'] must be a non-empty list of finite numbers")
    if d.size > 1 and not np.all(np.diff(d) > 0):
        raise ValueError("metadata['defocus_um'] must be strictly increasing")
    if not (d[0] <= 0.0 <= d[-1]):
        raise ValueError(
            f"the focal plane (defocus 0) is outside the stack "
            f"({d[0]:g} … {d[-1]:g} µm): it cannot be labelled"
        )
    focal = float(np.interp(0.0, d, np.arange(d.size, dtype=np.float64)))
    z_step: float | None = None
    if d.size > 1:
        steps = np.diff(d)
        if np.allclose(steps, steps[0], rtol=1e-6, atol=1e-9):
            z_step = float(np.round(steps.mean(), 9))
    importance = np.asarray(metadata["importance"], dtype=np.float64)
    return StackLabel(
        path=path,
        focal_plane_index=focal,
        z_step_um=z_step,
        content_mask=(importance >= 0.5).astype(np.uint8),
        annotator="simulator",
        source="simulated",
        notes=f"kind={metadata['kind']}, sparsity={metadata['sparsity']}",
    )
