"""SparseFocus inference: RIN → top-k patches → DPN → median, with its evidence."""

from __future__ import annotations

import logging
import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._aggregate import aggregate, select_patches
from .._focus_measures import brenner
from .._optics import Optics
from ._calibration import NearFocusCalibration
from ._model_io import load_model_file, save_model_file
from ._preprocess import grid_patches, prepare_image, rin_input
from ._refiner import (
    NearFocusRefiner,
    patch_sharpness_descriptor,
    refiner_input_size,
    refiner_inputs,
)
from ._registry import build_network

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from numpy.typing import ArrayLike, NDArray
    from torch import nn

__all__ = [
    "BUNDLED_MODEL_DIR",
    "DefocusPrediction",
    "NearFocusReading",
    "PatchPrediction",
    "SparseFocusModel",
    "bundled_baseline_paths",
    "iter_predict_stack",
    "load_model",
    "predict_defocus",
]

log = logging.getLogger(__name__)

#: Folder of the bundled default model (``default.json`` + ``default.safetensors``).
BUNDLED_MODEL_DIR = Path(__file__).resolve().parents[2] / "models"
_BUNDLED_STEM = "default"
_FORMAT = "napari-sparsefocus-model"


@dataclass(frozen=True)
class PatchPrediction:
    """One selected grid patch and its own prediction.

    Attributes
    ----------
    row, col : int
        Grid cell.
    importance : float
        RIN score in [0, 1].
    defocus_um : float
        The DPN's defocus for this patch alone.
    box_px : tuple of float
        ``(y0, x0, y1, x1)`` in the input image's pixels.
    """

    row: int
    col: int
    importance: float
    defocus_um: float
    box_px: tuple[float, float, float, float]


@dataclass(frozen=True)
class DefocusPrediction:
    """Defocus of one image with the evidence behind it.

    Attributes
    ----------
    defocus_um : float or None
        Median of the selected patches (``z_current - z_focus``); ``None``
        when there is no usable content.
    spread_um : float
        1.4826 × median absolute deviation of the patch predictions (µm).
    direction_agreement : float
        Fraction of selected patches that share the median's sign.
    sparsity : str
        Content class from the number of patches above the threshold.
    verdict : str
        "ok", "low confidence" or "no usable content".
    reason : str
        Why the verdict (and the top-k rule applied).
    importance : ndarray
        ``(gy, gx)`` RIN importance over the analysed crop.
    patches : tuple of PatchPrediction
        The selected top-k patches.
    crop_box_px : tuple of float
        ``(y0, x0, y1, x1)`` of the analysed crop in the input's pixels.
    dof_um : float
        Depth of field of the model's optics.
    """

    defocus_um: float | None
    spread_um: float
    direction_agreement: float
    sparsity: str
    verdict: str
    reason: str
    importance: NDArray[np.float32] = field(repr=False)
    patches: tuple[PatchPrediction, ...] = field(repr=False)
    crop_box_px: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    dof_um: float = 0.0

    @property
    def k(self) -> int:
        """Number of selected patches."""
        return len(self.patches)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable record."""
        return {
            "defocus_um": self.defocus_um,
            "spread_um": self.spread_um,
            "direction_agreement": self.direction_agreement,
            "sparsity": self.sparsity,
            "verdict": self.verdict,
            "reason": self.reason,
            "k": self.k,
            "dof_um": self.dof_um,
            "importance": np.asarray(self.importance, dtype=float).round(4).tolist(),
            "crop_box_px": list(self.crop_box_px),
            "patches": [
                {
                    "row": p.row,
                    "col": p.col,
                    "importance": p.importance,
                    "defocus_um": p.defocus_um,
                    "box_px": list(p.box_px),
                }
                for p in self.patches
            ],
        }


@dataclass(frozen=True)
class NearFocusReading:
    """A frame's defocus read near focus by the model's near-focus refiner.

    Attributes
    ----------
    defocus_um : float
        Sharpness-weighted mean of the patches' refined own defocus (µm,
        ``z_current - z_focus``): the reading of the whole field.
    patch_defocus_um : ndarray
        ``(N,)`` refined own defocus of every content patch (µm).
    dpn_defocus_um : ndarray
        ``(N,)`` the DPN's reading of the same patches (µm).
    weights : ndarray
        ``(N,)`` each patch's share of the mean (Brenner sharpness, sums to 1).
    boxes_px : tuple of tuple of float
        ``(y0, x0, y1, x1)`` of each patch in the input image's pixels.
    """

    defocus_um: float
    patch_defocus_um: NDArray[np.float64] = field(repr=False)
    dpn_defocus_um: NDArray[np.float64] = field(repr=False)
    weights: NDArray[np.float64] = field(repr=False)
    boxes_px: tuple[tuple[float, float, float, float], ...] = field(repr=False)


class SparseFocusModel:
    """A trained SparseFocus pipeline: Region Importance + Defocus Prediction networks.

    Parameters
    ----------
    rin, dpn : torch.nn.Module
        The two networks (put in eval mode).
    config : dict
        The model file's JSON config (optics, ranges, training description).
    """

    def __init__(self, rin: nn.Module, dpn: nn.Module, config: dict[str, Any]) -> None:
        self.rin = rin.eval()
        self.dpn = dpn.eval()
        self.config = dict(config)
        self.optics = Optics.from_dict(self.config["optics"])
        self.threshold = float(self.config.get("importance_threshold", 0.8))
        self.patch_px = int(self.config.get("patch_px", 224))
        self.rin_input_px = int(self.config.get("rin_input_px", 512))
        self._rin_takes_grid = _accepts_grid(self.rin)
        cal = self.config.get("near_focus_calibration")
        #: Posterior map for readings taken near focus (a refocus controller's
        #: verification snaps); ``None`` when the model file has none.
        self.near_focus_calibration = None if cal is None else NearFocusCalibration.from_dict(cal)
        first = self.config.get("first_move_calibration")
        #: Map of a first reading far from focus (the top-k median of an unknown
        #: start) to the defocus the first move should use; ``None`` when the
        #: model file has none. :meth:`predict` never applies it.
        self.first_move_calibration = (
            None
            if first is None
            else NearFocusCalibration.from_dict(first, name="first_move_calibration")
        )
        #: Near-focus refiner (see :meth:`read_near_focus`); ``None`` when the
        #: model file has none.
        self.near_focus_refiner: NearFocusRefiner | None = None

    def with_near_focus_calibration(
        self, calibration: NearFocusCalibration | None
    ) -> SparseFocusModel:
        """Return the same networks with a new near-focus calibration (or none).

        Parameters
        ----------
        calibration : NearFocusCalibration or None
            See :func:`~napari_sparsefocus.core.nn.fit_near_focus_calibration`.
            :meth:`predict` never applies it; the refocus controller does, to
            the readings it takes after a move.

        Returns
        -------
        SparseFocusModel
            A new model sharing the networks; its config records the calibration.
        """
        return self._with_calibration("near_focus_calibration", calibration)

    def with_first_move_calibration(
        self, calibration: NearFocusCalibration | None
    ) -> SparseFocusModel:
        """Return the same networks with a new first-move calibration (or none).

        Parameters
        ----------
        calibration : NearFocusCalibration or None
            Piecewise-linear map of the top-k reading of a frame far from focus
            to the defocus a refocus's first move should correct (see
            ``scripts/fit-first-move-calibration.py``). :meth:`predict` never
            applies it; the refocus controller does, to its first snap.

        Returns
        -------
        SparseFocusModel
            A new model sharing the networks; its config records the calibration.
        """
        return self._with_calibration("first_move_calibration", calibration)

    def _with_calibration(
        self, key: str, calibration: NearFocusCalibration | None
    ) -> SparseFocusModel:
        """Return a new model with the same networks and refiner and config entry ``key`` set."""
        if calibration is not None and not isinstance(calibration, NearFocusCalibration):
            raise TypeError(
                f"calibration must be a NearFocusCalibration, got {type(calibration).__name__}"
            )
        cfg = dict(self.config)
        cfg.pop(key, None)
        if calibration is not None:
            cfg[key] = calibration.to_dict()
        out = SparseFocusModel(self.rin, self.dpn, cfg)
        out.near_focus_refiner = self.near_focus_refiner
        return out

    def with_near_focus_refiner(self, refiner: NearFocusRefiner | None) -> SparseFocusModel:
        """Return the same networks with a new near-focus refiner (or none).

        Parameters
        ----------
        refiner : NearFocusRefiner or None
            See :func:`~napari_sparsefocus.core.nn.fit_near_focus_refiner`; it
            must take this model's input rows.

        Returns
        -------
        SparseFocusModel
            A new model sharing the networks; :meth:`save` writes the refiner.
        """
        cfg = dict(self.config)
        cfg.pop("near_focus_refiner", None)
        if refiner is not None:
            if not isinstance(refiner, NearFocusRefiner):
                raise TypeError(f"refiner must be a NearFocusRefiner, got {type(refiner).__name__}")
            self._check_refiner(refiner)
            cfg["near_focus_refiner"] = refiner.to_config()
        out = SparseFocusModel(self.rin, self.dpn, cfg)
        out.near_focus_refiner = refiner
        return out

    def _check_refiner(self, refiner: NearFocusRefiner) -> None:
        """Raise ValueError unless `refiner` takes this model's input rows."""
        n = refiner_input_size(self.optics.n_channels)
        if refiner.n_inputs != n:
            raise ValueError(
                f"the near-focus refiner takes {refiner.n_inputs} inputs, but this model's "
                f"{self.optics.n_channels}-channel patches give {n}"
            )

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``<path>.safetensors`` + ``<path>.json``; returns (weights, config) paths."""
        tensors = {f"rin.{k}": v for k, v in self.rin.state_dict().items()}
        tensors.update({f"dpn.{k}": v for k, v in self.dpn.state_dict().items()})
        cfg = dict(self.config)
        cfg.pop("near_focus_refiner", None)
        if self.near_focus_refiner is not None:
            tensors.update(self.near_focus_refiner.to_tensors())
            cfg["near_focus_refiner"] = self.near_focus_refiner.to_config()
        cfg["format"] = _FORMAT
        cfg["architecture"] = "sparsefocus"
        cfg["networks"] = {
            key: _network_spec(net) for key, net in (("rin", self.rin), ("dpn", self.dpn))
        }
        paths: tuple[Path, Path] = save_model_file(path, tensors, cfg)
        return paths

    # ------------------------------------------------------------ prediction
    def _score(
        self, image: ArrayLike, pixel_size_um: float | None
    ) -> tuple[Any, NDArray[np.float32]]:
        """Prepare a frame and score its grid with the RIN: ``(prepared, importance)``."""
        prep = prepare_image(
            image,
            model_pixel_size_um=self.optics.pixel_size_um,
            pixel_size_um=pixel_size_um,
            patch_px=self.patch_px,
        )
        x = rin_input(prep, self.rin_input_px)
        logits = self.rin(x, grid=prep.grid) if self._rin_takes_grid else self.rin(x)
        importance = torch.sigmoid(logits)[0].numpy().astype(np.float32)  # (gy, gx)
        if importance.shape != prep.grid:
            raise RuntimeError(f"RIN returned a {importance.shape} grid for a {prep.grid} crop")
        return prep, importance

    def _read_patches(self, prep: Any, indices: Any) -> tuple[torch.Tensor, NDArray[np.float64]]:
        """Cut the ``(row, col)`` grid cells out of a prepared frame and read them (DPN)."""
        patches = grid_patches(prep, indices)
        d = self.dpn(patches).reshape(-1).numpy().astype(float) if len(patches) else np.zeros(0)
        return patches, d

    def _forward(
        self,
        image: ArrayLike,
        *,
        pixel_size_um: float | None,
        k_mode: str,
        k: int | None,
        threshold: float | None,
    ) -> tuple[Any, NDArray[np.float32], Any, torch.Tensor, NDArray[np.float64]]:
        """Prepare, score (RIN), select and read (DPN): the steps every prediction shares."""
        prep, importance = self._score(image, pixel_size_um)
        sel = select_patches(
            importance,
            threshold=self.threshold if threshold is None else threshold,
            k_mode=k_mode,
            k=k,
        )
        patches, d = self._read_patches(prep, sel.indices)
        return prep, importance, sel, patches, d

    def _prediction(
        self, prep: Any, importance: NDArray[np.float32], sel: Any, d: NDArray[np.float64]
    ) -> DefocusPrediction:
        """Aggregate the selected patches' readings into a :class:`DefocusPrediction`."""
        agg = aggregate(d, dof_um=self.optics.dof_um)
        gy, gx = prep.grid
        y0, x0, _, _ = prep.patch_box_px(0, 0)
        _, _, y1, x1 = prep.patch_box_px(gy - 1, gx - 1)
        return DefocusPrediction(
            defocus_um=agg.defocus_um,
            spread_um=agg.spread_um,
            direction_agreement=agg.direction_agreement,
            sparsity=sel.sparsity,
            verdict=agg.verdict,
            reason="; ".join(r for r in (sel.rule, agg.reason) if r),
            importance=importance,
            patches=tuple(
                PatchPrediction(
                    row=int(r),
                    col=int(c),
                    importance=float(importance[r, c]),
                    defocus_um=float(v),
                    box_px=prep.patch_box_px(int(r), int(c)),
                )
                for (r, c), v in zip(sel.indices, d, strict=True)
            ),
            crop_box_px=(y0, x0, y1, x1),
            dof_um=self.optics.dof_um,
        )

    def _near_focus_rows(
        self,
        prep: Any,
        importance: NDArray[np.float32],
        sel: Any,
        patches: torch.Tensor,
        d: NDArray[np.float64],
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], tuple[Any, ...]]:
        """Build the refiner's input rows of read patches (see :meth:`near_focus_inputs`)."""
        if not len(patches):
            empty = np.zeros(0)
            return np.zeros((0, 0)), empty, empty, ()
        x = patches.double().numpy()
        w = np.array([brenner(p, channel_axis=0) for p in x])
        imp = np.array([importance[r, c] for r, c in sel.indices], dtype=np.float64)
        boxes = tuple(prep.patch_box_px(int(r), int(c)) for r, c in sel.indices)
        if not w.sum() > 0:  # flat patches: weigh them alike
            w = np.ones_like(w)
        rows = refiner_inputs(patch_sharpness_descriptor(x), d, imp, w)
        return rows, d, w, boxes

    def _near_focus_reading(
        self,
        rows: NDArray[np.float64],
        d: NDArray[np.float64],
        w: NDArray[np.float64],
        boxes: tuple[Any, ...],
    ) -> NearFocusReading | None:
        """Refine every content patch and average them (None: no refiner or no patch)."""
        if self.near_focus_refiner is None or not len(d):
            return None
        refined = self.near_focus_refiner.predict(rows)
        share = w / w.sum()
        return NearFocusReading(
            defocus_um=float(np.dot(share, refined)),
            patch_defocus_um=refined,
            dpn_defocus_um=d,
            weights=share,
            boxes_px=boxes,
        )

    @torch.no_grad()
    def near_focus_inputs(
        self, image: ArrayLike, *, pixel_size_um: float | None = None
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], tuple[Any, ...]]:
        """Return the near-focus refiner's input rows for every content patch of one frame.

        Parameters
        ----------
        image : array_like
            One camera frame (as :meth:`predict`).
        pixel_size_um : float, optional
            Its sample pixel size (µm); default: the model's.

        Returns
        -------
        inputs : ndarray
            ``(N, F)`` :func:`~napari_sparsefocus.core.nn.refiner_inputs` rows
            of the patches the RIN scores at or above the threshold (empty
            ``(0, 0)`` when there are none).
        dpn_defocus_um : ndarray
            ``(N,)`` the DPN's reading of each.
        weights : ndarray
            ``(N,)`` each patch's Brenner sharpness (luma of the [0, 1] patch).
        boxes_px : tuple
            ``(y0, x0, y1, x1)`` of each patch in the input image's pixels.
        """
        prep, importance, sel, patches, d = self._forward(
            image, pixel_size_um=pixel_size_um, k_mode="all", k=None, threshold=None
        )
        return self._near_focus_rows(prep, importance, sel, patches, d)

    def read_near_focus(
        self, image: ArrayLike, *, pixel_size_um: float | None = None
    ) -> NearFocusReading | None:
        """Read a frame taken near focus with the near-focus refiner.

        Every content patch's own defocus is refined from its colour sharpness
        and the frame's context, then averaged with the patches' Brenner
        sharpness as weights (see :mod:`napari_sparsefocus.core.nn._refiner`).
        The refiner's prior is "within ``refiner.range_um`` of focus": use it
        for a refocus controller's verification snaps, not for a first reading.

        Parameters
        ----------
        image : array_like
            One camera frame (as :meth:`predict`).
        pixel_size_um : float, optional
            Its sample pixel size (µm); default: the model's.

        Returns
        -------
        NearFocusReading or None
            None when the model has no refiner or the frame no content patch.
        """
        if self.near_focus_refiner is None:
            return None
        return self._near_focus_reading(*self.near_focus_inputs(image, pixel_size_um=pixel_size_um))

    @torch.no_grad()
    def predict_and_read_near_focus(
        self,
        image: ArrayLike,
        *,
        pixel_size_um: float | None = None,
        near_focus: bool | Callable[[DefocusPrediction], bool] = True,
    ) -> tuple[DefocusPrediction, NearFocusReading | None]:
        """:meth:`predict` and, where wanted, :meth:`read_near_focus` in one pass.

        The frame is prepared and scored by the RIN once, and the DPN reads
        each content patch once: the top-k patches for the prediction, then
        (only when the refined reading is wanted) the other content patches.
        The results are those of the two separate calls, for little more than
        the cost of the second.

        Parameters
        ----------
        image : array_like
            One camera frame (as :meth:`predict`).
        pixel_size_um : float, optional
            Its sample pixel size (µm); default: the model's.
        near_focus : bool or callable
            Whether to read the frame with the near-focus refiner too; a
            callable gets the prediction and decides (e.g. only when it says
            the frame is near focus, so a frame far off costs one prediction).

        Returns
        -------
        prediction : DefocusPrediction
            As :meth:`predict` with its defaults (``k_mode="auto"``).
        reading : NearFocusReading or None
            As :meth:`read_near_focus`; None when not wanted, without a
            refiner, or without a content patch.
        """
        prep, importance = self._score(image, pixel_size_um)
        sel = select_patches(importance, threshold=self.threshold, k_mode="auto")
        top, d_top = self._read_patches(prep, sel.indices)
        pred = self._prediction(prep, importance, sel, d_top)
        wanted = near_focus(pred) if callable(near_focus) else bool(near_focus)
        if not wanted or self.near_focus_refiner is None:
            return pred, None
        every = select_patches(importance, threshold=self.threshold, k_mode="all")
        # "auto" takes the first k of the same importance order as "all"
        # (so the top-k read ones come first; the rest are read now, and all put in that order)
        cells = [(int(r), int(c)) for r, c in every.indices]
        slot = {(int(r), int(c)): i for i, (r, c) in enumerate(sel.indices)}
        rest = [i for i, cell in enumerate(cells) if cell not in slot]
        slot.update({cells[i]: len(sel.indices) + j for j, i in enumerate(rest)})
        more, d_more = self._read_patches(prep, every.indices[rest])
        order = [slot[cell] for cell in cells]
        patches = torch.cat([top, more])[order] if len(more) else top[order]
        d = np.concatenate([d_top, d_more])[order]
        reading = self._near_focus_reading(
            *self._near_focus_rows(prep, importance, every, patches, d)
        )
        return pred, reading

    @torch.no_grad()
    def predict(
        self,
        image: ArrayLike,
        *,
        pixel_size_um: float | None = None,
        k_mode: str = "auto",
        k: int | None = None,
        threshold: float | None = None,
    ) -> DefocusPrediction:
        """Predict the signed defocus of one image (see :func:`predict_defocus`)."""
        prep, importance, sel, _, d = self._forward(
            image, pixel_size_um=pixel_size_um, k_mode=k_mode, k=k, threshold=threshold
        )
        return self._prediction(prep, importance, sel, d)


def _network_spec(net: nn.Module) -> dict[str, Any]:
    """``{"name": registry key, "config": config dict}`` of a network."""
    config: Any = getattr(net, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise TypeError(f"{type(net).__name__} has no .config with to_dict()")
    return {"name": str(getattr(net, "name", type(net).__name__)), "config": config.to_dict()}


def _accepts_grid(module: nn.Module) -> bool:
    import inspect

    try:
        return "grid" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def bundled_baseline_paths() -> dict[str, str]:
    """Return report name → model file of the baselines shipped with the package.

    Returns
    -------
    dict of str to str
        ``{"Liao": ".../baselines/liao.json", ...}`` for those present.
    """
    from ._evaluate import BASELINE_NAMES

    folder = BUNDLED_MODEL_DIR / "baselines"
    return {
        label: str(folder / f"{arch}.json")
        for arch, label in BASELINE_NAMES.items()
        if (folder / f"{arch}.json").is_file()
    }


def load_model(path: str | Path | None = None) -> SparseFocusModel:
    """Load a SparseFocus model (safetensors weights + JSON config).

    Parameters
    ----------
    path : str or Path, optional
        The model's ``.json``, ``.safetensors``, common stem or folder.
        ``None`` loads the bundled default model.

    Returns
    -------
    SparseFocusModel

    Raises
    ------
    ValueError
        Missing, corrupt, pickled or foreign files (never unpickled), a
        config that is not a SparseFocus pipeline, or weights that do not
        fit the described networks.
    """
    if path is None:
        stem = BUNDLED_MODEL_DIR / _BUNDLED_STEM
        if not stem.with_suffix(".json").exists():
            raise FileNotFoundError(
                f"no bundled default model at {stem}.json: train one with "
                "`sparsefocus train` or pass a model path"
            )
        path = stem
    tensors, cfg = load_model_file(path)
    if cfg.get("architecture") != "sparsefocus":
        raise ValueError(
            f"{path}: architecture {cfg.get('architecture')!r} is not a SparseFocus pipeline"
        )
    nets = cfg.get("networks")
    if not isinstance(nets, dict) or "rin" not in nets or "dpn" not in nets:
        raise ValueError(f"{path}: config lacks the 'networks' entries 'rin' and 'dpn'")
    if "optics" not in cfg:
        raise ValueError(f"{path}: config lacks the 'optics' the model was trained for")
    modules = {}
    for key in ("rin", "dpn"):
        spec = nets[key]
        net = build_network(spec["name"], spec.get("config"))
        state = {k[len(key) + 1 :]: v for k, v in tensors.items() if k.startswith(key + ".")}
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{path}: {key} weights do not fit its config: {e}") from None
        modules[key] = net
    try:
        model = SparseFocusModel(modules["rin"], modules["dpn"], cfg)
        if cfg.get("near_focus_refiner") is not None:
            refiner = NearFocusRefiner.from_model_file(tensors, cfg["near_focus_refiner"])
            model._check_refiner(refiner)
            model.near_focus_refiner = refiner
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return model


def predict_defocus(
    image: ArrayLike,
    model: SparseFocusModel | None = None,
    *,
    pixel_size_um: float | None = None,
    k_mode: str = "auto",
    k: int | None = None,
) -> DefocusPrediction:
    """Predict the signed defocus (µm) of one microscope image.

    Parameters
    ----------
    image : array_like
        ``(H, W)`` gray or ``(H, W, 3)`` RGB; integer or [0, 1] float.
    model : SparseFocusModel, optional
        Default: the bundled model (loaded once).
    pixel_size_um : float, optional
        The image's sample pixel size; finer images are down-sampled to the
        model's, coarser ones refused. ``None`` assumes the model's.
    k_mode : {"auto", "fixed", "all"}
        Top-k rule (see ``docs/learning-core.md``).
    k : int, optional
        Number of patches for ``k_mode="fixed"``.

    Returns
    -------
    DefocusPrediction
        ``defocus_um = z_current - z_focus``: move the focus by
        ``-defocus_um`` to focus. ``None`` with verdict "no usable content"
        when no patch holds content.
    """
    model = model or _default_model()
    return model.predict(image, pixel_size_um=pixel_size_um, k_mode=k_mode, k=k)


def iter_predict_stack(
    stack: Iterable[ArrayLike],
    model: SparseFocusModel | None = None,
    *,
    pixel_size_um: float | None = None,
    k_mode: str = "auto",
    k: int | None = None,
) -> Iterator[tuple[int, DefocusPrediction]]:
    """Predict plane by plane, streaming (memory stays flat for any stack length).

    Parameters
    ----------
    stack : iterable of array_like
        Planes (a ``(Z, Y, X[, C])`` array, memmap or dask array iterates by plane).
    model, pixel_size_um, k_mode, k
        As for :func:`predict_defocus`.

    Yields
    ------
    tuple
        Plane index and its prediction.
    """
    model = model or _default_model()
    mapping = _file_mapping(stack)
    for i, plane in enumerate(stack):
        image = np.array(plane)  # one plane in RAM
        if mapping is not None:
            # drop the mapped pages already read, so a memory-mapped stack of any
            # length keeps the process's resident memory flat
            mapping.madvise(mmap.MADV_DONTNEED)
        yield i, model.predict(image, pixel_size_um=pixel_size_um, k_mode=k_mode, k=k)


def _file_mapping(array: Any) -> mmap.mmap | None:
    """Return the ``mmap`` behind a numpy memmap (or a view of one), else ``None``."""
    obj = array
    for _ in range(8):
        if isinstance(obj, mmap.mmap):
            return obj if hasattr(obj, "madvise") and hasattr(mmap, "MADV_DONTNEED") else None
        m = getattr(obj, "_mmap", None)
        if isinstance(m, mmap.mmap):
            obj = m
            continue
        obj = getattr(obj, "base", None)
        if obj is None:
            return None
    return None


_DEFAULT: list[SparseFocusModel] = []


def _default_model() -> SparseFocusModel:
    if not _DEFAULT:
        _DEFAULT.append(load_model(None))
    return _DEFAULT[0]
