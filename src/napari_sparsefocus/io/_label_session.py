"""Annotation session: correcting the focus labels of z-stacks, with undo and autosave.

:class:`LabelSession` is the controller behind the label-correction widget.
It holds the labels of a label file (:mod:`napari_sparsefocus.io._labels`)
and the stacks being annotated, and applies the annotator's edits: set the
focal plane on a plane, nudge it by a fraction of a step, toggle cells of the
content mask. Every edit can be undone and redone and is saved at once
(atomically, through :func:`~napari_sparsefocus.io._labels.write_labels`), so
a crash loses nothing. For each stack it also offers the focal plane the
classical finder suggests and, given the model's per-plane predictions,
flags stacks where model and label disagree by more than one depth of field.

Nothing here imports napari, Qt or torch.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core import find_focal_plane
from ._labels import (
    LabelFile,
    LabelFileError,
    StackLabel,
    backup_label_file,
    read_labels,
    write_labels,
)
from ._tiff import MissingZStepWarning, StackData, is_tiff_path, read_stack

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from numpy.typing import ArrayLike, NDArray

    from ..core import FocalPlaneResult

__all__ = [
    "GRID_PATCH_PX",
    "LabelSession",
    "LabelSessionError",
    "ModelOpinion",
    "StackInfo",
    "grid_geometry",
]

#: Side of one content-mask cell in image pixels (the model's patch size).
GRID_PATCH_PX = 224
_MAX_GRID = 9
_MAX_HISTORY = 1000
_DIGITS = 6  # focal_plane_index is rounded to this many decimals (no float noise)

_Snapshot = tuple[tuple[str, StackLabel], ...]


class LabelSessionError(LabelFileError):
    """The label file cannot be opened for editing.

    Raised when the file exists but this version cannot read it: not JSON,
    another schema, an older or newer version, an invalid entry. The message
    says why and how to continue; :attr:`path` is the file.

    Parameters
    ----------
    message : str
        What is wrong and what to do.
    path : Path
        The label file.
    """

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class StackInfo:
    """A stack opened in a session (what the annotator sees, not what is saved).

    Attributes
    ----------
    key : str
        The label's ``path``: the stack file relative to the label file.
    path : Path
        The stack file (absolute).
    n_planes : int
        Number of z planes.
    shape_yx : tuple of int
        Plane height and width (px).
    z_step_um : float or None
        Plane spacing from the stack file's metadata.
    pixel_size_um : float or None
        Lateral pixel size from the file's metadata.
    grid_shape : tuple of int or None
        ``(rows, cols)`` of the content-mask grid: the centred crop cut in
        224 px patches, at most 9 × 9 (the rule inference and training use);
        None for images smaller than one patch.
    grid_origin_px : tuple of int
        ``(y0, x0)`` of the grid's top-left corner in the image (px).
    """

    key: str
    path: Path
    n_planes: int
    shape_yx: tuple[int, int]
    z_step_um: float | None
    pixel_size_um: float | None
    grid_shape: tuple[int, int] | None
    grid_origin_px: tuple[int, int]


@dataclass(frozen=True, eq=False)
class ModelOpinion:
    """The model's predictions for a stack.

    Attributes
    ----------
    defocus_um : ndarray
        Predicted defocus of every plane (µm, ``z_current - z_focus``); NaN
        where the model gave no answer (no usable content).
    dof_um : float
        Depth of field of the model's optics (µm): the disagreement unit.
    """

    defocus_um: NDArray[np.float64]
    dof_um: float


def grid_geometry(shape_yx: tuple[int, int]) -> tuple[tuple[int, int] | None, tuple[int, int]]:
    """Return the content-mask grid of an image: ``(rows, cols)`` (or None) and ``(y0, x0)``.

    Parameters
    ----------
    shape_yx : tuple of int
        Image height and width (px).

    Returns
    -------
    tuple
        Grid shape (None when the image is smaller than one patch) and the
        grid's top-left corner in pixels (the grid is centred).
    """
    h, w = int(shape_yx[0]), int(shape_yx[1])
    gy, gx = min(_MAX_GRID, h // GRID_PATCH_PX), min(_MAX_GRID, w // GRID_PATCH_PX)
    if gy < 1 or gx < 1:
        return None, (0, 0)
    return (gy, gx), ((h - gy * GRID_PATCH_PX) // 2, (w - gx * GRID_PATCH_PX) // 2)


def _stack_files(path: Path) -> list[Path]:
    """TIFF files in a folder (sorted, not recursive, hidden files skipped)."""
    return sorted(
        p for p in path.iterdir() if p.is_file() and is_tiff_path(p) and not p.name.startswith(".")
    )


class LabelSession:
    """Edit the focus labels of z-stacks in a label file, with undo/redo and autosave.

    Parameters
    ----------
    label_file : str or os.PathLike
        The label file (JSON). Created on the first save when it does not
        exist; its labels are loaded when it does. Labels of stacks not
        opened in this session are kept unchanged.
    stacks : str, os.PathLike or iterable of them, optional
        Stack files and folders of stacks (TIFF / OME-TIFF, not recursive) to
        annotate. Default: the stacks the label file lists (those that exist).
    annotator : str
        Stored in every label edited in this session ("" keeps the old one).
    measure : str
        Focus measure of the focus curve and the finder's suggestion.
    autosave : bool
        Save after every edit, undo and redo (default True). A failed
        autosave does not raise: :attr:`last_error` says why and
        :attr:`dirty` stays True.
    recover : bool
        If the label file exists but cannot be read (corrupt, another schema,
        older or newer version), back it up to ``<name>.bak-<time>`` and
        start with no labels instead of raising.

    Raises
    ------
    LabelSessionError
        If the label file exists, cannot be read and ``recover`` is False.
    FileNotFoundError
        If a given stack or folder does not exist.
    ValueError
        If a given stack file cannot be read as a z-stack.

    Notes
    -----
    Stacks are identified by their ``path`` in the label file (relative to
    the label file's folder). An unlabelled stack gets a label at its first
    edit; a mask edit on an unlabelled stack first takes the finder's
    suggested plane (``source="finder"``). The defocus of plane ``i`` is
    ``(i - focal_plane_index) * z_step_um``.
    """

    def __init__(
        self,
        label_file: str | os.PathLike[str],
        stacks: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
        *,
        annotator: str = "",
        measure: str = "brenner",
        autosave: bool = True,
        recover: bool = False,
    ) -> None:
        if not isinstance(annotator, str):
            raise ValueError(f"annotator must be a string, got {annotator!r}")
        self.label_file = Path(label_file).absolute()
        self.base_dir = self.label_file.parent
        self.annotator = annotator
        self.measure = measure
        self.autosave = bool(autosave)
        #: Backup made of an unreadable label file at opening (``recover=True``).
        self.backup_path: Path | None = None
        #: Why the last save failed (None after a successful save).
        self.last_error: str | None = None
        #: When the labels were last written.
        self.last_saved: datetime | None = None
        #: Folder entries that could not be read as stacks: ``(path, reason)``.
        self.skipped: list[tuple[Path, str]] = []
        self._labels: dict[str, StackLabel] = {}
        self._infos: dict[str, StackInfo] = {}
        self._data: dict[str, StackData] = {}
        self._focus: dict[str, FocalPlaneResult] = {}
        self._models: dict[str, ModelOpinion] = {}
        self._undo: list[tuple[_Snapshot, str | None]] = []
        self._redo: list[tuple[_Snapshot, str | None]] = []
        self._dirty = False
        self._load(recover)
        if stacks is None:
            listed = [lab.resolve(self.base_dir) for lab in self._labels.values()]
            self.add_stacks([p for p in listed if p.is_file()], skip_unreadable=True)
        else:
            self.add_stacks(stacks)

    # ------------------------------------------------------------------ opening
    def _load(self, recover: bool) -> None:
        if not self.label_file.exists():
            return
        try:
            labels = read_labels(self.label_file)
        except LabelFileError as exc:
            if not recover:
                raise LabelSessionError(
                    f"cannot edit {self.label_file.name}: {exc}. Nothing was changed; open it "
                    "with recovery to back it up (as "
                    f"{self.label_file.name}.bak-<time>) and start with no labels, "
                    "or choose another label file",
                    self.label_file,
                ) from None
            self.backup_path = backup_label_file(self.label_file)
            self.last_error = None
            # the unreadable file is safe in its backup: replace it with an empty one
            write_labels(self.label_file, LabelFile([]), backup=False)
            self.last_saved = datetime.now()
            return
        for lab in labels.stacks:
            self._labels[lab.path] = lab

    def key_for(self, path: str | os.PathLike[str]) -> str:
        """Return the label ``path`` of a stack file (an existing entry's spelling wins).

        Parameters
        ----------
        path : str or os.PathLike
            A stack file (it need not be open).

        Returns
        -------
        str
            Its key: the file relative to the label file's folder, POSIX style.
        """
        absolute = Path(path).absolute()
        resolved = absolute.resolve()
        for key in self._labels:
            if (self.base_dir / key).resolve() == resolved:
                return key
        return Path(os.path.relpath(absolute, self.base_dir)).as_posix()

    def add_stacks(
        self,
        paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        *,
        skip_unreadable: bool = False,
    ) -> list[str]:
        """Open stack files and folders of stacks for annotation.

        Parameters
        ----------
        paths : str, os.PathLike or iterable of them
            Stack files (TIFF / OME-TIFF) and folders (their TIFF files, not
            recursive). Already opened stacks are skipped.
        skip_unreadable : bool
            Record unreadable *files* in :attr:`skipped` instead of raising
            (unreadable files inside folders are always skipped).

        Returns
        -------
        list of str
            Keys of the stacks opened by this call.

        Raises
        ------
        FileNotFoundError
            If a path does not exist.
        ValueError
            If a named file is not a readable z-stack (and not ``skip_unreadable``).
        """
        items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        added: list[str] = []
        for item in items:
            p = Path(item)
            if p.is_dir():
                for f in _stack_files(p):
                    key = self._open_stack(f, skip=True)
                    if key is not None:
                        added.append(key)
            elif p.is_file():
                key = self._open_stack(p, skip=skip_unreadable)
                if key is not None:
                    added.append(key)
            else:
                raise FileNotFoundError(f"{p}: no such file or folder")
        return added

    def _open_stack(self, path: Path, *, skip: bool) -> str | None:
        key = self.key_for(path)
        if key in self._infos:
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MissingZStepWarning)
                data = read_stack(path)
            if not data.axes.startswith("Z") or data.n_planes < 2:
                raise ValueError(f"{path}: a z-stack of at least 2 planes is needed")
        except (ValueError, OSError) as exc:
            if skip:
                self.skipped.append((path, str(exc)))
                return None
            raise
        h, w = int(data.data.shape[1]), int(data.data.shape[2])
        grid, origin = grid_geometry((h, w))
        self._infos[key] = StackInfo(
            key=key,
            path=path.absolute(),
            n_planes=data.n_planes,
            shape_yx=(h, w),
            z_step_um=data.z_step_um,
            pixel_size_um=data.pixel_size_um,
            grid_shape=grid,
            grid_origin_px=origin,
        )
        self._data[key] = data
        return key

    # ------------------------------------------------------------------ queries
    @property
    def keys(self) -> list[str]:
        """Keys of the opened stacks, in opening order."""
        return list(self._infos)

    def info(self, key: str) -> StackInfo:
        """Return what is known about an opened stack.

        Parameters
        ----------
        key : str
            The stack's key (see :attr:`keys`).

        Returns
        -------
        StackInfo
            Its geometry and metadata.

        Raises
        ------
        KeyError
            If no such stack is open.
        """
        try:
            return self._infos[key]
        except KeyError:
            raise KeyError(f"no stack {key!r} is open in this session") from None

    def stack(self, key: str) -> StackData:
        """Return the (lazily loaded) data of an opened stack."""
        self.info(key)
        return self._data[key]

    def label(self, key: str) -> StackLabel | None:
        """Return the current label of a stack (None while unlabelled)."""
        return self._labels.get(key)

    @property
    def labels(self) -> LabelFile:
        """Every label of the file (opened stacks or not), in file order."""
        return LabelFile(list(self._labels.values()))

    def z_step_um(self, key: str) -> float | None:
        """Return the stack's z-step: the label's, else the stack file's (as training uses it)."""
        lab = self._labels.get(key)
        if lab is not None and lab.z_step_um is not None:
            return lab.z_step_um
        return self.info(key).z_step_um

    def focus(self, key: str) -> FocalPlaneResult:
        """Return the stack's focus curve and the finder's suggestion (computed once).

        Parameters
        ----------
        key : str
            The stack.

        Returns
        -------
        FocalPlaneResult
            ``z_um`` is the suggested focal plane as a fractional plane index.
        """
        result = self._focus.get(key)
        if result is None:
            data = self.stack(key)
            result = find_focal_plane(
                data.data, measure=self.measure, channel_axis=-1 if data.rgb else None
            )
            self._focus[key] = result
        return result

    def cached_focus(self, key: str) -> FocalPlaneResult | None:
        """Return the focus result if it was already computed, else None (never computes)."""
        return self._focus.get(key)

    def suggested_focal_plane(self, key: str) -> float:
        """Return the finder's focal plane (fractional index) of a stack."""
        return float(self.focus(key).z_um)

    def set_predictions(
        self, key: str, defocus_um: ArrayLike | Sequence[float | None], *, dof_um: float
    ) -> None:
        """Store the model's predictions for a stack (not saved; not an edit).

        Parameters
        ----------
        key : str
            The stack.
        defocus_um : array_like of float or None
            Predicted defocus of each plane (µm); None or NaN where the model
            gave no answer.
        dof_um : float
            Depth of field of the model's optics (µm, > 0).

        Raises
        ------
        ValueError
            If the number of values is not the number of planes, or
            ``dof_um`` is not a finite number > 0.
        """
        info = self.info(key)
        values = np.array(
            [np.nan if v is None else float(v) for v in np.asarray(defocus_um, dtype=object)],
            dtype=np.float64,
        )
        if values.shape != (info.n_planes,):
            raise ValueError(
                f"{key}: expected {info.n_planes} predictions (one per plane), got {values.shape}"
            )
        dof = float(dof_um)
        if not (math.isfinite(dof) and dof > 0):
            raise ValueError(f"dof_um must be a finite number > 0, got {dof_um!r}")
        values.setflags(write=False)
        self._models[key] = ModelOpinion(values, dof)

    def model(self, key: str) -> ModelOpinion | None:
        """Return the stored model predictions of a stack, or None."""
        return self._models.get(key)

    def model_focal_plane(self, key: str) -> float | None:
        """Return the focal plane the model's predictions imply (fractional index), or None.

        Each plane ``i`` with a prediction ``d_i`` implies the focal plane
        ``i - d_i / z_step``; the median over planes is returned. None without
        predictions, without any answer or without a known z-step.
        """
        opinion = self._models.get(key)
        step = self.z_step_um(key) if key in self._infos else None
        if opinion is None or step is None:
            return None
        d = opinion.defocus_um
        ok = np.isfinite(d)
        if not ok.any():
            return None
        implied = np.arange(d.size, dtype=np.float64)[ok] - d[ok] / step
        return float(np.median(implied))

    def disagreement_um(self, key: str) -> float | None:
        """``|model focal plane - label| * z_step`` (µm), None when either is missing."""
        lab = self._labels.get(key)
        f_model = self.model_focal_plane(key)
        step = self.z_step_um(key)
        if lab is None or f_model is None or step is None:
            return None
        return abs(f_model - lab.focal_plane_index) * step

    def is_flagged(self, key: str) -> bool:
        """Whether model and label disagree by more than one depth of field."""
        gap = self.disagreement_um(key)
        opinion = self._models.get(key)
        return gap is not None and opinion is not None and gap > opinion.dof_um

    def ordered_keys(self) -> list[str]:
        """Return the opened stacks, most in need of attention first.

        Returns
        -------
        list of str
            Flagged stacks (model and label disagree by more than 1 DoF,
            largest disagreement first), then unlabelled stacks, then the
            rest, each group in opening order.
        """
        keys = self.keys

        def rank(item: tuple[int, str]) -> tuple[int, float, int]:
            i, key = item
            if self.is_flagged(key):
                return (0, -(self.disagreement_um(key) or 0.0), i)
            return (1 if key not in self._labels else 2, 0.0, i)

        return [key for _, key in sorted(enumerate(keys), key=rank)]

    # ------------------------------------------------------------------ edits
    def _snapshot(self) -> _Snapshot:
        return tuple(self._labels.items())

    def _restore(self, snap: _Snapshot) -> None:
        self._labels = dict(snap)

    def _commit(self, key: str, new: StackLabel) -> StackLabel:
        if self._labels.get(key) == new:
            return new
        self._undo.append((self._snapshot(), key))
        del self._undo[:-_MAX_HISTORY]
        self._redo.clear()
        self._labels[key] = new
        self._changed()
        return new

    def _changed(self) -> None:
        self._dirty = True
        if self.autosave:
            try:
                self.save()
            except OSError as exc:
                self.last_error = f"autosave failed: {exc}"

    def _base_label(self, key: str, *, focal: float | None = None) -> StackLabel:
        """Return the current label, or a new one (focal plane ``focal`` or the finder's)."""
        info = self.info(key)
        lab = self._labels.get(key)
        if lab is not None:
            return lab
        source = "manual"
        if focal is None:
            focal, source = self.suggested_focal_plane(key), "finder"
        return StackLabel(
            path=key,
            focal_plane_index=round(float(focal), _DIGITS),
            z_step_um=info.z_step_um,
            annotator=self.annotator,
            source=source,
        )

    def _edited(self, lab: StackLabel, **changes: Any) -> StackLabel:
        if self.annotator:
            changes.setdefault("annotator", self.annotator)
        return replace(lab, **changes)

    def _check_plane(self, key: str, index: float) -> float:
        n = self.info(key).n_planes
        if isinstance(index, bool) or not isinstance(index, (int, float, np.integer, np.floating)):
            raise ValueError(f"plane index must be a number, got {index!r}")
        x = float(index)
        if not (math.isfinite(x) and 0.0 <= x <= n - 1):
            raise ValueError(f"plane index must lie in [0, {n - 1}] for {key}, got {index!r}")
        return round(x, _DIGITS)

    def set_focal_plane(self, key: str, index: float, *, source: str = "manual") -> StackLabel:
        """Set the in-focus plane of a stack.

        Parameters
        ----------
        key : str
            The stack.
        index : float
            Plane index (fractional for sub-step focus), within the stack.
        source : {"manual", "finder", "model"}
            How it was found.

        Returns
        -------
        StackLabel
            The new label.

        Raises
        ------
        ValueError
            If the index is outside the stack or the source is invalid.
        """
        x = self._check_plane(key, index)
        lab = self._base_label(key, focal=x)
        return self._commit(key, self._edited(lab, focal_plane_index=x, source=source))

    def nudge(self, key: str, steps: float) -> StackLabel:
        """Move the focal plane by a fraction of a z-step (clipped to the stack).

        Parameters
        ----------
        key : str
            The stack; unlabelled stacks start from the finder's suggestion.
        steps : float
            Planes to move, e.g. ``+0.1`` or ``-0.1``.

        Returns
        -------
        StackLabel
            The new label (``source="manual"``).
        """
        if isinstance(steps, bool) or not math.isfinite(float(steps)):
            raise ValueError(f"steps must be a finite number, got {steps!r}")
        lab = self._base_label(key)
        n = self.info(key).n_planes
        x = round(min(max(lab.focal_plane_index + float(steps), 0.0), n - 1.0), _DIGITS)
        return self._commit(key, self._edited(lab, focal_plane_index=x, source="manual"))

    def accept_suggestion(self, key: str) -> StackLabel:
        """Set the focal plane to the finder's suggestion (``source="finder"``)."""
        return self.set_focal_plane(key, self.suggested_focal_plane(key), source="finder")

    def accept_model(self, key: str) -> StackLabel:
        """Set the focal plane to the model's (``source="model"``).

        Raises
        ------
        ValueError
            If there are no model predictions with an answer for this stack.
        """
        f = self.model_focal_plane(key)
        if f is None:
            raise ValueError(f"{key}: no model prediction (or no z-step) for this stack")
        n = self.info(key).n_planes
        return self.set_focal_plane(key, min(max(f, 0.0), n - 1.0), source="model")

    def mask(self, key: str) -> NDArray[np.uint8]:
        """Return the stack's content mask as shown for editing (zeros when none is stored)."""
        grid = self.info(key).grid_shape
        if grid is None:
            raise ValueError(f"{key}: images smaller than {GRID_PATCH_PX} px have no grid")
        lab = self._labels.get(key)
        if lab is None or lab.content_mask is None:
            return np.zeros(grid, np.uint8)
        return np.array(lab.content_mask, dtype=np.uint8)

    def toggle_mask_cell(self, key: str, row: int, col: int) -> StackLabel:
        """Flip one cell of the content mask (1 = the patch holds content).

        Parameters
        ----------
        key : str
            The stack. Without a stored mask the edit starts from all zeros;
            an unlabelled stack first gets the finder's focal plane.
        row, col : int
            Grid cell.

        Returns
        -------
        StackLabel
            The new label.

        Raises
        ------
        ValueError
            If the cell is outside the grid.
        """
        mask = self.mask(key)
        gy, gx = mask.shape
        if not (0 <= int(row) < gy and 0 <= int(col) < gx):
            raise ValueError(f"cell ({row}, {col}) is outside the {gy} x {gx} grid")
        mask[int(row), int(col)] ^= 1
        return self._commit(key, self._edited(self._base_label(key), content_mask=mask))

    def set_mask(self, key: str, mask: ArrayLike | None) -> StackLabel:
        """Replace the content mask (None removes it).

        Parameters
        ----------
        key : str
            The stack.
        mask : array_like of 0/1 or None
            Grid-shaped mask.

        Returns
        -------
        StackLabel
            The new label.
        """
        value = None
        if mask is not None:
            value = np.asarray(mask)
            grid = self.info(key).grid_shape
            if value.shape != grid:
                raise ValueError(f"mask has shape {value.shape}, the stack's grid is {grid}")
        return self._commit(key, self._edited(self._base_label(key), content_mask=value))

    def set_z_step(self, key: str, z_step_um: float | None) -> StackLabel:
        """Store the plane spacing (µm) in the label (None: use the file's)."""
        return self._commit(key, self._edited(self._base_label(key), z_step_um=z_step_um))

    def set_notes(self, key: str, notes: str) -> StackLabel:
        """Replace the free-text notes of a stack's label."""
        return self._commit(key, self._edited(self._base_label(key), notes=notes))

    def remove_label(self, key: str) -> None:
        """Forget a stack's label (undoable); the stack stays open."""
        if key in self._labels:
            self._undo.append((self._snapshot(), key))
            self._redo.clear()
            del self._labels[key]
            self._changed()

    # ------------------------------------------------------------------ history
    @property
    def can_undo(self) -> bool:
        """Whether there is an edit to undo."""
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        """Whether there is an undone edit to redo."""
        return bool(self._redo)

    def undo(self) -> str | None:
        """Undo the last edit.

        Returns
        -------
        str or None
            Key of the stack the undone edit concerned; None if nothing to undo.
        """
        if not self._undo:
            return None
        snap, key = self._undo.pop()
        self._redo.append((self._snapshot(), key))
        self._restore(snap)
        self._changed()
        return key

    def redo(self) -> str | None:
        """Redo the last undone edit (returns its stack's key, or None)."""
        if not self._redo:
            return None
        snap, key = self._redo.pop()
        self._undo.append((self._snapshot(), key))
        self._restore(snap)
        self._changed()
        return key

    # ------------------------------------------------------------------ saving
    @property
    def dirty(self) -> bool:
        """Whether there are edits not yet written."""
        return self._dirty

    def save(self) -> Path:
        """Write every label to the label file, atomically.

        An existing file that cannot be read is first backed up by
        :func:`~napari_sparsefocus.io._labels.write_labels`.

        Returns
        -------
        Path
            The label file.

        Raises
        ------
        OSError
            If the file cannot be written (:attr:`last_error` says why).
        """
        try:
            write_labels(self.label_file, self.labels, backup=True)
        except OSError as exc:
            self.last_error = f"save failed: {exc}"
            raise
        self._dirty = False
        self.last_error = None
        self.last_saved = datetime.now()
        return self.label_file

    def status(self) -> str:
        """One line on the save state, for a status bar."""
        if self.last_error is not None:
            return f"NOT SAVED: {self.last_error}"
        if self._dirty:
            return "unsaved changes"
        n = len(self._labels)
        where = self.label_file.name
        if self.last_saved is None:
            return f"{n} label(s) in {where}" if self.label_file.exists() else f"new file {where}"
        return f"saved {n} label(s) to {where} at {self.last_saved:%H:%M:%S}"
