"""Microscope widget: live view with the SparseFocus overlay, refocus, focus lock, focus maps.

The widget drives a microscope through pymmcore-plus only: the simulated one
(:func:`~napari_sparsefocus.hardware.load_simulated_microscope` on a
``UniMMCore`` the widget owns), an existing core (the ``mmcore`` argument or
``CMMCorePlus.instance()``), or a configuration file. All device and model
work runs in napari thread workers; core events reach the widget through
``ensure_main_thread`` slots.

Live frames come from a continuous sequence acquisition polled by a QTimer;
every snapped image (the Snap button, a refocus, a focus-map scan, or any other
client of the core) arrives through the core's ``imageSnapped`` event. Both
go to one Image layer placed at the stage position in µm. The importance
heatmap and top-k patches of the live frame use the same geometry
(:mod:`napari_sparsefocus.core._overlay`) and look as the focus-analysis
widget's layers do, under their own names so the two widgets never fight over
a layer.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)
from superqt.utils import ensure_main_thread

from napari_sparsefocus.core._overlay import (
    summary_text,
)
from napari_sparsefocus.hardware._camera import frame_to_rgb
from napari_sparsefocus.hardware._refocus import _CONFIRM_FRACTION

from ._analysis import HEATMAP_LAYER, PATCHES_LAYER
from ._overlay_layers import show_prediction_layers as _show_layers

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterator, Sequence

    import napari
    from napari.layers import Image, Points, Shapes
    from numpy.typing import NDArray
    from pymmcore_plus import CMMCorePlus

    from napari_sparsefocus.core.nn import DefocusPrediction, SparseFocusModel
    from napari_sparsefocus.hardware import (
        FocusLock,
        FocusLockState,
        FocusMapResult,
        RefocusOptions,
        RefocusResult,
        RefocusStep,
        SimulatedMicroscope,
    )
    from napari_sparsefocus.hardware._focus_lock import FocusLockEvent
    from napari_sparsefocus.hardware._focus_map import FocusMapStep

__all__ = [
    "FOCUS_MAP_METHODS",
    "LIVE_HEATMAP_LAYER",
    "LIVE_LAYER",
    "LIVE_PATCHES_LAYER",
    "REFOCUS_LOG_COLUMNS",
    "MapOutcome",
    "MicroscopeWidget",
    "focus_map_cost_text",
    "map_outcome",
    "refocus_log_row",
    "show_prediction_layers",
]

log = logging.getLogger(__name__)

#: Name of the live Image layer.
LIVE_LAYER = "live"
#: Names of the live overlay layers: the analysis widget's names, marked "live".
LIVE_HEATMAP_LAYER = f"{HEATMAP_LAYER} (live)"
LIVE_PATCHES_LAYER = f"{PATCHES_LAYER} (live)"
#: Columns of the refocus log table.
REFOCUS_LOG_COLUMNS = (
    "time",
    "start z (µm)",
    "final z (µm)",
    "moves",
    "snaps",
    "verdict",
    "message",
)
#: Focus-map choices of the method combo box → hardware method names.
FOCUS_MAP_METHODS = {
    "one-shot": ("one_shot",),
    "key points": ("key_points",),
    "both": ("one_shot", "key_points"),
}
_METHOD_LABEL = {"one_shot": "one-shot", "key_points": "key points"}

_SIMULATED = "simulated microscope"
_EXISTING = "existing core"
_CONFIG = "configuration file"
_SENSORS_PX = (1120, 672, 448)
_FALLBACKS = {"none": "none", "hill-climb": "hill_climb"}
#: The polish choices shown (RefocusOptions.polish values).
_POLISH: dict[str, bool | Literal["auto"]] = {
    "always": True,
    "when unconfirmed": "auto",
    "never": False,
}
_LIVE_POLL_MS = 100
_LIVE_ROLE = "live"
_HEAT_ROLE = "live importance"
_PATCH_ROLE = "live patches"
#: samples per axis of the focus-surface and error layers
_MAP_SAMPLES = 32
#: seconds to wait for the workers when the widget closes
_CLOSE_WAIT_S = 10.0


# ---------------------------------------------------------------------- pure helpers
@dataclass(frozen=True)
class _Failure:
    """A worker's error, returned instead of raised (superqt turns RuntimeErrors into warnings)."""

    message: str

    @classmethod
    def of(cls, exc: BaseException) -> _Failure:
        return cls(f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class _Frame:
    """A displayed frame and where it sits in the world (µm, ``(y, x)``)."""

    rgb: NDArray[Any]
    scale: tuple[float, float]
    translate: tuple[float, float]


@dataclass(frozen=True)
class MapOutcome:
    """A focus map sampled for display (computed in the worker).

    Attributes
    ----------
    method : str
        "one_shot" or "key_points".
    result : FocusMapResult or None
        The scan (``None`` on error).
    xs_um, ys_um : ndarray
        Sample coordinates of the layers.
    surface_um : ndarray
        The map's z on the ``(ys, xs)`` grid.
    pitch_um : float
        Distance between neighbouring tile centres.
    error_um : ndarray or None
        ``surface - truth`` on the grid (only with the simulated microscope).
    rms_um : float or None
        RMS of the error at the tile centres.
    error : str or None
        What went wrong.
    """

    method: str
    result: FocusMapResult | None
    xs_um: NDArray[np.float64]
    ys_um: NDArray[np.float64]
    surface_um: NDArray[np.float64]
    pitch_um: float = math.nan
    error_um: NDArray[np.float64] | None = None
    rms_um: float | None = None
    error: str | None = None


def refocus_log_row(result: RefocusResult, when: str) -> list[str]:
    """Return the refocus log table's cells for one result.

    Parameters
    ----------
    result : RefocusResult
        The outcome of a refocus.
    when : str
        Time of day (``HH:MM:SS``).

    Returns
    -------
    list of str
        One cell per :data:`REFOCUS_LOG_COLUMNS`.
    """
    return [
        when,
        f"{result.start_z_um:.3f}",
        f"{result.final_z_um:.3f}",
        str(result.moves),
        str(result.snaps),
        result.verdict,
        result.message,
    ]


def focus_map_cost_text(outcome: MapOutcome) -> str:
    """Describe what a focus-map scan cost (and, with the truth, how good it is).

    Parameters
    ----------
    outcome : MapOutcome
        The scan.

    Returns
    -------
    str
        One line: snaps, moves, simulated and wall seconds, RMS error.
    """
    label = _METHOD_LABEL.get(outcome.method, outcome.method)
    r = outcome.result
    if r is None:
        return f"{label}: failed ({outcome.error})"
    parts = [f"{r.snaps} snaps", f"{r.moves} moves ({r.z_moves} Z, {r.xy_moves} XY)"]
    if r.sim_time_s is not None:
        parts.append(f"{r.sim_time_s:.2f} s simulated")
    parts.append(f"{r.wall_s:.1f} s wall")
    text = f"{label}: " + ", ".join(parts)
    if outcome.rms_um is not None:
        text += f"; RMS error {outcome.rms_um:.2f} µm"
    return text


def _sample_axes(
    positions_um: NDArray[np.float64], pitch_um: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Sample coordinates covering the tiles (``positions_um`` is ``(n, 2)`` x, y)."""
    axes = []
    for col in (0, 1):
        v = positions_um[:, col]
        lo, hi = float(v.min()) - pitch_um / 2, float(v.max()) + pitch_um / 2
        axes.append(np.linspace(lo, hi, _MAP_SAMPLES))
    return axes[0], axes[1]


def map_outcome(
    method: str,
    result: FocusMapResult,
    *,
    pitch_um: float,
    truth: Callable[[Any, Any], Any] | None = None,
) -> MapOutcome:
    """Sample a scanned focus map (and its error against the truth) for display.

    Parameters
    ----------
    method : str
        "one_shot" or "key_points".
    result : FocusMapResult
        The scan.
    pitch_um : float
        Distance between tile centres (the layers extend half of it past the
        outer tiles).
    truth : callable, optional
        True in-focus z, ``truth(x_um, y_um)`` (the simulated slide's
        ``z_focus_um``).

    Returns
    -------
    MapOutcome
    """
    from napari_sparsefocus.core import focus_error_map, rms_um

    xy = np.column_stack([result.x_um, result.y_um])
    xs, ys = _sample_axes(xy, pitch_um)
    gx, gy = np.meshgrid(xs, ys)
    surface = np.asarray(result.surface(gx, gy), dtype=np.float64).reshape(gx.shape)
    error = rms = None
    if truth is not None:
        error = focus_error_map(result.surface, truth, xs, ys)
        at_tiles = np.asarray(result.z_map_um) - np.asarray(
            truth(result.x_um, result.y_um), dtype=np.float64
        )
        rms = rms_um(at_tiles)
    return MapOutcome(method, result, xs, ys, surface, float(pitch_um), error, rms)


# ---------------------------------------------------------------------- layers
def _set_or_add_image(viewer: napari.viewer.Viewer, name: str, data: Any, **kwargs: Any) -> Image:
    """Update the Image layer called ``name`` (data, scale, translate, ...) or add it."""
    if name in viewer.layers:
        layer: Image = viewer.layers[name]
        layer.data = data
        for key in ("scale", "translate", "contrast_limits"):
            if key in kwargs:
                setattr(layer, key, kwargs[key])
        layer.metadata.update(kwargs.get("metadata", {}))
        return layer
    return viewer.add_image(data, name=name, **kwargs)


def _find_role(viewer: napari.viewer.Viewer, role: str) -> Any:
    for lay in viewer.layers:
        if lay.metadata.get("sparsefocus_overlay") == role or (
            lay.metadata.get("sparsefocus_live") and role == _LIVE_ROLE
        ):
            return lay
    return None


def show_prediction_layers(
    viewer: napari.viewer.Viewer,
    pred: DefocusPrediction,
    *,
    scale_yx: Sequence[float] = (1.0, 1.0),
    translate_yx: Sequence[float] = (0.0, 0.0),
    metadata: dict[str, Any] | None = None,
) -> tuple[Image, Shapes]:
    """Show ``pred`` in the live overlay layers (shared builder: ``_overlay_layers``).

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer.
    pred : DefocusPrediction
        The model's answer for the live frame.
    scale_yx, translate_yx : sequence of float
        The live layer's ``(y, x)`` scale and translate.
    metadata : dict, optional
        More metadata for both layers.

    Returns
    -------
    heatmap : napari.layers.Image
    patches : napari.layers.Shapes
    """
    return _show_layers(
        viewer,
        pred,
        scale_yx=scale_yx,
        translate_yx=translate_yx,
        heatmap_name=LIVE_HEATMAP_LAYER,
        patches_name=LIVE_PATCHES_LAYER,
        roles=(_HEAT_ROLE, _PATCH_ROLE),
        metadata=metadata,
    )


# ---------------------------------------------------------------------- worker bodies
class _ModelSlot:
    """The model the widget's workers share: set from Python, or the bundled one on demand."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.model: SparseFocusModel | None = None

    def get(self) -> SparseFocusModel:
        """Return the model, loading the bundled one first if none is set (thread-safe)."""
        with self._lock:
            if self.model is None:
                from napari_sparsefocus.core.nn import load_model

                self.model = load_model()
            return self.model


def _new_unicore() -> Any:
    """Create a ``UniMMCore`` with psygnal events.

    With a Qt application running, pymmcore-plus would give a new core Qt
    signals, whose bound signals the simulated devices cannot use to find
    their shared state; the widget's slots are ``ensure_main_thread`` slots,
    so they work with either backend.
    """
    from pymmcore_plus.experimental.unicore import UniMMCore

    key = "PYMM_SIGNALS_BACKEND"
    old = os.environ.get(key)
    os.environ[key] = "psygnal"
    try:
        return UniMMCore()
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _snap(core: CMMCorePlus) -> None:
    """Worker body: snap one image (the core's ``imageSnapped`` event shows it)."""
    core.snapImage()


def _predict(slot: _ModelSlot, frame: _Frame, pixel_size_um: float | None) -> Any:
    """Worker body: ``(frame, prediction)`` or a :class:`_Failure`."""
    try:
        return frame, slot.get().predict(frame.rgb, pixel_size_um=pixel_size_um)
    except Exception as exc:
        return _Failure.of(exc)


def _make_lock(core: CMMCorePlus, slot: _ModelSlot, kwargs: dict[str, Any]) -> Any:
    """Worker body: build a :class:`FocusLock` (loading the model), or a :class:`_Failure`."""
    from napari_sparsefocus.hardware import FocusLock

    try:
        return FocusLock(core, slot.get(), **kwargs)
    except Exception as exc:
        return _Failure.of(exc)


def _lock_frame(lock: FocusLock, rgb: NDArray[Any]) -> Any:
    """Worker body: feed one live frame to the focus lock."""
    return lock.process_frame(rgb)


def _run_refocus(
    core: CMMCorePlus, slot: _ModelSlot, options: RefocusOptions, stop: threading.Event
) -> Generator[RefocusStep, None, Any]:
    """Worker body: the refocus generator (returns the result or a :class:`_Failure`)."""
    from napari_sparsefocus.hardware import iter_refocus

    try:
        gen = iter_refocus(core, slot.get(), options=options, stop=stop)
    except Exception as exc:
        return _Failure.of(exc)
    result = yield from gen
    return result


def _tagged(i: int, gen: Generator[Any, None, Any]) -> Generator[tuple[int, Any], None, Any]:
    """Yield ``(i, item)`` for every item of ``gen`` and return its value."""
    while True:
        try:
            item = next(gen)
        except StopIteration as done:
            return done.value
        yield i, item


def _go_to(core: CMMCorePlus, xy_um: tuple[float, float], z_um: float) -> None:
    core.setXYPosition(*xy_um)
    core.waitForDevice(core.getXYStageDevice())
    core.setPosition(z_um)
    core.waitForDevice(core.getFocusDevice())


def _run_focus_maps(
    core: CMMCorePlus,
    slot: _ModelSlot,
    *,
    rows: int,
    cols: int,
    spacing_um: float,
    methods: Sequence[str],
    clock: Callable[[], float] | None,
    truth: Callable[[Any, Any], Any] | None,
) -> Generator[tuple[int, FocusMapStep], None, list[MapOutcome]]:
    """Worker body: scan one focus map per method from the same start; return their samples."""
    import useq

    from napari_sparsefocus.hardware import iter_scan_focus_map
    from napari_sparsefocus.hardware._focus_map import grid_positions

    outcomes: list[MapOutcome] = []
    empty = np.zeros(0)
    try:
        model = slot.get() if "one_shot" in methods else None
        xy0 = tuple(float(v) for v in core.getXYPosition())
        z0 = float(core.getPosition())
        spacing = spacing_um if spacing_um > 0 else None
        grid = useq.GridRowsColumns(rows=rows, columns=cols, fov_width=spacing, fov_height=spacing)
        pos = np.asarray(grid_positions(grid, core, center_xy_um=(xy0[0], xy0[1])))
    except Exception as exc:
        return [
            MapOutcome(m, None, empty, empty, empty, error=_Failure.of(exc).message)
            for m in methods
        ]
    pitch = float(spacing) if spacing else _fov_um(core)
    try:
        for i, method in enumerate(methods):
            try:
                _go_to(core, (xy0[0], xy0[1]), z0)
                gen = iter_scan_focus_map(
                    core,
                    [tuple(p) for p in pos],
                    model,
                    method=method,  # type: ignore[arg-type]
                    z_start_um=z0,
                    clock=clock,
                )
                result = yield from _tagged(i, gen)
                outcomes.append(map_outcome(method, result, pitch_um=pitch, truth=truth))
            except Exception as exc:
                msg = _Failure.of(exc).message
                outcomes.append(MapOutcome(method, None, empty, empty, empty, error=msg))
    finally:
        with contextlib.suppress(Exception):
            _go_to(core, (xy0[0], xy0[1]), z0)  # back where the scan started
    return outcomes


def _fov_um(core: CMMCorePlus) -> float:
    px = float(core.getPixelSizeUm() or 1.0)
    _, _, w, h = core.getROI()
    return float(max(w, h)) * px


# ---------------------------------------------------------------------- the widget
class MicroscopeWidget(QWidget):
    """Drive a microscope from napari: live view, SparseFocus overlay, refocus, focus maps.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer (injected by napari).
    parent : QWidget, optional
        Parent widget.
    mmcore : CMMCorePlus, optional
        A core to use ("existing core"); the widget connects to it at once
        and never unloads its devices. Without it, "existing core" means
        ``CMMCorePlus.instance()``, and nothing is connected until Connect.

    Notes
    -----
    The simulated microscope (and a configuration file) is loaded on a
    ``UniMMCore`` the widget owns: closing the widget (or the viewer)
    stops live mode and the workers, unloads its devices and drops it.
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        *,
        parent: QWidget | None = None,
        mmcore: CMMCorePlus | None = None,
    ) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._given_core = mmcore
        self._core: CMMCorePlus | None = None
        self._owned = False
        self._scope: SimulatedMicroscope | None = None
        self._models = _ModelSlot()
        self._closed = False
        self._connections: list[tuple[Any, Any]] = []
        self._xy_um = (0.0, 0.0)
        self._pixel_size_um = 0.0
        self._ncomponents: int | None = None
        self._latest: _Frame | None = None
        self._last_predict_t = -math.inf
        self._predict_pending = False
        self._snap_worker: Any = None
        self._predict_worker: Any = None
        self._lock_worker: Any = None
        self._refocus_worker: Any = None
        self._map_worker: Any = None
        self._refocus_stop = threading.Event()
        self._resume_live = False
        self._pending_release: list[Any] = []
        #: Frames shown in the live layer since the widget was made.
        self.frames_shown = 0
        #: The prediction the live overlay shows.
        self.prediction: DefocusPrediction | None = None
        #: Every refocus outcome, oldest first (the log table's rows).
        self.refocus_results: list[RefocusResult] = []
        #: The last focus-map scans, by method.
        self.focus_map_results: dict[str, MapOutcome] = {}
        #: The focus lock (made when first switched on).
        self.focus_lock: FocusLock | None = None
        #: The last focus-lock record.
        self.focus_lock_event: FocusLockEvent | None = None

        self._build_ui()
        self._live_timer = QTimer(self)
        self._live_timer.setInterval(_LIVE_POLL_MS)
        self._live_timer.timeout.connect(self._on_live_timer)
        self.destroyed.connect(self._make_cleanup())
        if mmcore is not None:
            self.connect_core(mmcore)
        self._update_enabled()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        # connection
        self.source_combo = QComboBox()
        self.source_combo.addItems([_SIMULATED, _EXISTING, _CONFIG])
        if self._given_core is not None:
            self.source_combo.setCurrentText(_EXISTING)
        self.source_combo.currentIndexChanged.connect(self._on_source_changed)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 1_000_000)
        self.sensor_combo = QComboBox()
        self.sensor_combo.addItems([f"{n} × {n} px" for n in _SENSORS_PX])
        self.config_path = QLineEdit()
        self.config_path.setPlaceholderText("Micro-Manager .cfg")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._on_browse_config)
        cfg_row = QHBoxLayout()
        cfg_row.addWidget(self.config_path)
        cfg_row.addWidget(browse)
        self.connect_button = QPushButton("Connect")
        self.connect_button.clicked.connect(self._on_connect_clicked)
        self.disconnect_button = QPushButton("Disconnect")
        self.disconnect_button.clicked.connect(self.disconnect_microscope)
        conn_buttons = QHBoxLayout()
        conn_buttons.addWidget(self.connect_button)
        conn_buttons.addWidget(self.disconnect_button)
        self.connection_label = QLabel("not connected")
        self.connection_label.setWordWrap(True)
        conn_form = QFormLayout()
        conn_form.addRow("source", self.source_combo)
        conn_form.addRow("slide seed", self.seed_spin)
        conn_form.addRow("sensor", self.sensor_combo)
        conn_form.addRow("config file", cfg_row)
        conn_box = QGroupBox("Microscope")
        conn_layout = QVBoxLayout(conn_box)
        conn_layout.addLayout(conn_form)
        conn_layout.addLayout(conn_buttons)
        conn_layout.addWidget(self.connection_label)

        self.tabs = QTabWidget()
        self.tabs.addTab(self._build_live_tab(), "Live")
        self.tabs.addTab(self._build_refocus_tab(), "Refocus")
        self.tabs.addTab(self._build_map_tab(), "Focus map")

        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(conn_box)
        layout.addWidget(self.tabs)
        layout.addWidget(self.status_label)
        layout.addStretch(1)
        self._on_source_changed()

    def _build_live_tab(self) -> QWidget:
        self.snap_button = QPushButton("Snap")
        self.snap_button.clicked.connect(self.snap)
        self.live_button = QPushButton("Live")
        self.live_button.setCheckable(True)
        self.live_button.toggled.connect(self._on_live_toggled)
        buttons = QHBoxLayout()
        buttons.addWidget(self.snap_button)
        buttons.addWidget(self.live_button)
        self.exposure_spin = QDoubleSpinBox()
        self.exposure_spin.setRange(0.1, 10_000.0)
        self.exposure_spin.setDecimals(1)
        self.exposure_spin.setSuffix(" ms")
        self.exposure_spin.setKeyboardTracking(False)
        self.exposure_spin.valueChanged.connect(self._on_exposure_spin)
        self.overlay_check = QCheckBox("importance overlay + top-k")
        self.overlay_check.setChecked(True)
        self.overlay_check.toggled.connect(self._on_overlay_toggled)
        self.overlay_interval = QDoubleSpinBox()
        self.overlay_interval.setRange(0.2, 60.0)
        self.overlay_interval.setValue(2.0)
        self.overlay_interval.setSuffix(" s")
        self.summary_label = QLabel("")
        self.summary_label.setWordWrap(True)
        form = QFormLayout()
        form.addRow("exposure", self.exposure_spin)
        form.addRow(self.overlay_check)
        form.addRow("overlay every", self.overlay_interval)
        tab = QWidget()
        layout = QVBoxLayout(tab)
        layout.addLayout(buttons)
        layout.addLayout(form)
        layout.addWidget(self.summary_label)
        layout.addStretch(1)
        return tab

    def _build_refocus_tab(self) -> QWidget:
        self.z_label = QLabel("Z: –")
        self.xy_label = QLabel("XY: –")
        self.z_min_spin = self._z_spin(-50.0)
        self.z_max_spin = self._z_spin(50.0)
        self.max_move_spin = QDoubleSpinBox()
        self.max_move_spin.setRange(0.1, 1_000.0)
        self.max_move_spin.setValue(30.0)
        self.max_move_spin.setSuffix(" µm")
        self.fallback_combo = QComboBox()
        self.fallback_combo.addItems(list(_FALLBACKS))
        self.polish_combo = QComboBox()
        self.polish_combo.addItems(list(_POLISH))
        self.polish_combo.setToolTip(
            "finish with a 3-point Brenner parabola around the model's focus "
            "(about two more snaps, more precise): always, only when the model's "
            "check snap did not confirm focus, or never (the model alone)"
        )
        self.confirm_spin = QDoubleSpinBox()
        self.confirm_spin.setRange(0.0, 10.0)
        self.confirm_spin.setSingleStep(0.05)
        self.confirm_spin.setDecimals(2)
        self.confirm_spin.setSuffix(" µm")
        # the minimum (0) shows as, and stands for, the controller's default bar
        self.confirm_spin.setSpecialValueText(f"default ({_CONFIRM_FRACTION:g} × DoF/2)")
        self.confirm_spin.setValue(0.0)
        self.confirm_spin.setToolTip(
            "a check snap confirms focus when the model reads |defocus| within this: "
            "lower trusts the model less (more snaps, fewer false confirmations)"
        )
        self.refocus_button = QPushButton("Refocus")
        self.refocus_button.clicked.connect(self.refocus)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        buttons = QHBoxLayout()
        buttons.addWidget(self.refocus_button)
        buttons.addWidget(self.stop_button)
        self.refocus_progress = QProgressBar()
        self.refocus_progress.setRange(0, 1)
        self.refocus_progress.setValue(0)
        self.lock_button = QPushButton("Focus lock")
        self.lock_button.setCheckable(True)
        self.lock_button.toggled.connect(self._on_lock_toggled)
        self.lock_label = QLabel("focus lock: off")
        self.lock_label.setWordWrap(True)
        lock_row = QHBoxLayout()
        lock_row.addWidget(self.lock_button)
        lock_row.addWidget(self.lock_label, 1)
        self.log_table = QTableWidget(0, len(REFOCUS_LOG_COLUMNS))
        self.log_table.setHorizontalHeaderLabels(list(REFOCUS_LOG_COLUMNS))
        self.log_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        vheader, hheader = self.log_table.verticalHeader(), self.log_table.horizontalHeader()
        if vheader is not None:
            vheader.setVisible(False)
        if hheader is not None:
            hheader.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
            hheader.setStretchLastSection(True)
        form = QFormLayout()
        form.addRow(self.z_label, self.xy_label)
        form.addRow("z min", self.z_min_spin)
        form.addRow("z max", self.z_max_spin)
        form.addRow("max move", self.max_move_spin)
        form.addRow("fallback", self.fallback_combo)
        form.addRow("sharpness polish", self.polish_combo)
        form.addRow("confirm within", self.confirm_spin)
        tab = QWidget()
        layout = QVBoxLayout(tab)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.refocus_progress)
        layout.addLayout(lock_row)
        layout.addWidget(QLabel("refocus log"))
        layout.addWidget(self.log_table)
        return tab

    @staticmethod
    def _z_spin(value: float) -> QDoubleSpinBox:
        spin = QDoubleSpinBox()
        spin.setRange(-100_000.0, 100_000.0)
        spin.setDecimals(2)
        spin.setSuffix(" µm")
        spin.setValue(value)
        return spin

    def _build_map_tab(self) -> QWidget:
        self.rows_spin = QSpinBox()
        self.rows_spin.setRange(1, 15)
        self.rows_spin.setValue(3)
        self.cols_spin = QSpinBox()
        self.cols_spin.setRange(1, 15)
        self.cols_spin.setValue(3)
        self.spacing_spin = QDoubleSpinBox()
        self.spacing_spin.setRange(0.0, 5_000.0)
        self.spacing_spin.setValue(1_000.0)
        self.spacing_spin.setSingleStep(100.0)
        self.spacing_spin.setSuffix(" µm")
        self.spacing_spin.setSpecialValueText("adjacent fields")
        self.method_combo = QComboBox()
        self.method_combo.addItems(list(FOCUS_MAP_METHODS))
        self.map_button = QPushButton("Run")
        self.map_button.clicked.connect(self.run_focus_map)
        self.map_stop_button = QPushButton("Stop")
        self.map_stop_button.clicked.connect(self.stop)
        buttons = QHBoxLayout()
        buttons.addWidget(self.map_button)
        buttons.addWidget(self.map_stop_button)
        self.map_progress = QProgressBar()
        self.map_progress.setRange(0, 1000)
        self.map_progress.setValue(0)
        self.cost_label = QLabel("")
        self.cost_label.setWordWrap(True)
        form = QFormLayout()
        form.addRow("grid rows", self.rows_spin)
        form.addRow("grid columns", self.cols_spin)
        form.addRow("tile spacing", self.spacing_spin)
        form.addRow("method", self.method_combo)
        tab = QWidget()
        layout = QVBoxLayout(tab)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.map_progress)
        layout.addWidget(self.cost_label)
        layout.addStretch(1)
        return tab

    def _on_source_changed(self, *args: Any) -> None:
        source = self.source_combo.currentText()
        self.seed_spin.setEnabled(source == _SIMULATED)
        self.sensor_combo.setEnabled(source == _SIMULATED)
        self.config_path.setEnabled(source == _CONFIG)

    def _on_browse_config(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Micro-Manager configuration", "", "Micro-Manager config (*.cfg)"
        )
        if path:
            self.config_path.setText(path)
            self.source_combo.setCurrentText(_CONFIG)

    def _update_enabled(self) -> None:
        connected = self._core is not None
        op = self._operation_running
        self.connect_button.setEnabled(not op)
        self.disconnect_button.setEnabled(connected and not op)
        for w in (self.snap_button, self.live_button, self.exposure_spin):
            w.setEnabled(connected and not op)
        self.refocus_button.setEnabled(connected and not op)
        self.map_button.setEnabled(connected and not op)
        self.stop_button.setEnabled(self._refocus_worker is not None)
        self.map_stop_button.setEnabled(self._map_worker is not None)
        self.lock_button.setEnabled(connected and not op)

    # ------------------------------------------------------------------ connection
    @property
    def core(self) -> CMMCorePlus | None:
        """The connected core (``None``: not connected)."""
        return self._core

    @property
    def scope(self) -> SimulatedMicroscope | None:
        """The simulated microscope's ground-truth handle, when one is connected."""
        return self._scope

    def _on_connect_clicked(self) -> None:
        source = self.source_combo.currentText()
        try:
            if source == _SIMULATED:
                n = _SENSORS_PX[self.sensor_combo.currentIndex()]
                self.connect_simulated(self.seed_spin.value(), sensor_shape_px=(n, n))
            elif source == _CONFIG:
                self.connect_config(self.config_path.text())
            else:
                self.connect_core(self._given_core)
        except Exception as exc:
            self._error(f"cannot connect: {type(exc).__name__}: {exc}")

    def connect_simulated(
        self,
        seed: int = 0,
        *,
        sensor_shape_px: tuple[int, int] = (1120, 1120),
        realtime: bool = True,
        **kwargs: Any,
    ) -> SimulatedMicroscope:
        """Connect to a new simulated microscope (on a ``UniMMCore`` the widget owns).

        Parameters
        ----------
        seed : int
            Slide seed.
        sensor_shape_px : tuple of int
            ``(height, width)`` of a frame.
        realtime : bool
            Frames and moves take their simulated time on the wall clock too,
            so the exposure sets the live frame rate as on a real camera.
        **kwargs
            More :func:`~napari_sparsefocus.hardware.load_simulated_microscope`
            arguments.

        Returns
        -------
        SimulatedMicroscope
            The ground-truth handle (also :attr:`scope`).
        """
        from napari_sparsefocus.hardware import load_simulated_microscope

        self.disconnect_microscope()
        core = _new_unicore()
        try:
            scope = load_simulated_microscope(
                core, int(seed), sensor_shape_px=sensor_shape_px, realtime=realtime, **kwargs
            )
        except Exception:
            core.unloadAllDevices()
            raise
        with _blocked(self.seed_spin):
            self.seed_spin.setValue(int(seed))
        self.source_combo.setCurrentText(_SIMULATED)
        self._attach(core, owned=True, scope=scope)
        return scope

    def connect_config(self, path: str | Path) -> None:
        """Load a Micro-Manager configuration file on a new core the widget owns.

        Parameters
        ----------
        path : str or Path
            The ``.cfg`` file (``#py pyDevice`` lines load Python devices, e.g.
            the shipped ``SIMULATED_CONFIG``).
        """
        text = str(path).strip()
        if not text:
            raise ValueError("choose a configuration file (.cfg)")
        cfg = Path(text).expanduser()
        if not cfg.is_file():
            raise ValueError(f"no configuration file at {cfg}")
        self.disconnect_microscope()
        core = _new_unicore()
        try:
            core.loadSystemConfiguration(str(cfg))
        except Exception:
            core.unloadAllDevices()
            raise
        self.config_path.setText(str(cfg))
        self._attach(core, owned=True, scope=None)

    def connect_core(self, core: CMMCorePlus | None = None) -> None:
        """Connect to an existing core (default ``CMMCorePlus.instance()``); never unloaded here.

        Parameters
        ----------
        core : CMMCorePlus, optional
            The core.
        """
        if core is None:
            from pymmcore_plus import CMMCorePlus

            core = CMMCorePlus.instance()
        if core is self._core:
            return
        self.disconnect_microscope()
        self._attach(core, owned=False, scope=None)

    def _attach(self, core: CMMCorePlus, *, owned: bool, scope: SimulatedMicroscope | None) -> None:
        if scope is None:
            scope = _find_simulation(core)
        self._core, self._owned, self._scope = core, owned, scope
        ev = core.events
        for signal, slot in (
            (ev.stagePositionChanged, self._on_stage_position_changed),
            (ev.XYStagePositionChanged, self._on_xy_position_changed),
            (ev.imageSnapped, self._on_image_snapped),
            (ev.pixelSizeChanged, self._on_pixel_size_changed),
            (ev.exposureChanged, self._on_exposure_changed),
            (ev.systemConfigurationLoaded, self._on_system_configuration_loaded),
            (ev.continuousSequenceAcquisitionStarted, self._on_sequence_started),
            (ev.sequenceAcquisitionStopped, self._on_sequence_stopped),
        ):
            signal.connect(slot)
            self._connections.append((signal, slot))
        self._read_core_state(reset_limits=True)
        self._update_enabled()

    def _read_core_state(self, *, reset_limits: bool = False) -> None:
        core = self._core
        if core is None:
            return
        z = _safe(lambda: float(core.getPosition()), math.nan)
        self._show_z(z)
        xy = _safe(lambda: tuple(float(v) for v in core.getXYPosition()), None)
        if xy is not None:
            self._xy_um = (xy[0], xy[1])
            self.xy_label.setText(f"XY: {xy[0]:.1f}, {xy[1]:.1f} µm")
        else:
            self.xy_label.setText("XY: –")
        self._pixel_size_um = _safe(lambda: float(core.getPixelSizeUm()), 0.0)
        self._ncomponents = _safe(lambda: int(core.getNumberOfComponents()), None)
        with _blocked(self.exposure_spin):
            self.exposure_spin.setValue(_safe(lambda: float(core.getExposure()), 10.0))
        if reset_limits and math.isfinite(z):
            lo, hi = z - 50.0, z + 50.0
            if self._scope is not None:
                slo, shi = self._scope.z_limits_um
                lo, hi = max(lo, slo), min(hi, shi)
            self.z_min_spin.setValue(lo)
            self.z_max_spin.setValue(hi)
        cam = _safe(lambda: core.getCameraDevice(), "")
        focus = _safe(lambda: core.getFocusDevice(), "")
        what = "simulated microscope" if self._scope is not None else "core"
        if self._scope is not None:
            h, w = self._scope.sensor_shape_px
            what += f" (seed {self._scope.slide.seed}, {w} × {h} px)"
        self.connection_label.setText(
            f"connected: {what}; camera {cam or '–'}, focus {focus or '–'}, "
            f"pixel {self._pixel_size_um:.4g} µm"
        )

    def disconnect_microscope(self) -> None:
        """Stop live mode and the workers, leave the core (unloading it if the widget owns it)."""
        core = self._core
        if core is None:
            return
        self._stop_everything()
        for signal, slot in self._connections:
            with contextlib.suppress(TypeError, RuntimeError, ValueError):
                signal.disconnect(slot)
        self._connections.clear()
        if self.focus_lock is not None:
            self.focus_lock.stop()
        self.focus_lock = None
        self._core, self._scope = None, None
        owned, self._owned = self._owned, False
        if owned:
            self._release(core)
        del core
        if not self._closed:
            with _blocked(self.lock_button):
                self.lock_button.setChecked(False)
            with _blocked(self.live_button):
                self.live_button.setChecked(False)
            self.lock_label.setText("focus lock: off")
            self.connection_label.setText("not connected")
            self.z_label.setText("Z: –")
            self.xy_label.setText("XY: –")
            self._update_enabled()

    def _release(self, core: CMMCorePlus) -> None:
        """Unload an owned core once no worker uses it any more."""
        running = [w for w in self.workers if w.is_running]
        if not running:
            _unload(core)
            return
        # a worker still holds the core: unload when the last one finishes
        box = [core]
        self._pending_release.append(box)

        def maybe_unload(*args: Any) -> None:
            if box and not any(w.is_running for w in running):
                _unload(box.pop())

        for w in running:
            w.finished.connect(maybe_unload)

    def _stop_everything(self) -> None:
        """Stop live mode, the focus lock and every worker; wait (bounded) for the workers."""
        with contextlib.suppress(RuntimeError):  # (deleted with the widget)
            self._live_timer.stop()
        core = self._core
        if core is not None:
            with contextlib.suppress(Exception):
                if core.isSequenceRunning():
                    core.stopSequenceAcquisition()
        if self.focus_lock is not None:
            self.focus_lock.stop()
        self._refocus_stop.set()
        self._resume_live = False
        workers = self.workers
        for w in workers:
            w.quit()
        t0 = time.monotonic()
        while any(w.is_running for w in workers) and time.monotonic() - t0 < _CLOSE_WAIT_S:
            time.sleep(0.01)

    # ------------------------------------------------------------------ core events
    @ensure_main_thread
    def _on_stage_position_changed(self, label: str, pos: float) -> None:
        core = self._core
        if self._closed or core is None or label != core.getFocusDevice():
            return
        self._show_z(float(pos))

    def _show_z(self, z_um: float) -> None:
        self.z_label.setText("Z: –" if not math.isfinite(z_um) else f"Z: {z_um:.3f} µm")

    @ensure_main_thread
    def _on_xy_position_changed(self, label: str, x: float, y: float) -> None:
        if self._closed or self._core is None:
            return
        self._xy_um = (float(x), float(y))
        self.xy_label.setText(f"XY: {x:.1f}, {y:.1f} µm")

    @ensure_main_thread
    def _on_pixel_size_changed(self, *args: Any) -> None:
        core = self._core
        if not self._closed and core is not None:
            self._pixel_size_um = _safe(lambda: float(core.getPixelSizeUm()), 0.0)

    @ensure_main_thread
    def _on_exposure_changed(self, *args: Any) -> None:
        core = self._core
        if not self._closed and core is not None:
            with _blocked(self.exposure_spin):
                self.exposure_spin.setValue(_safe(lambda: float(core.getExposure()), 10.0))

    @ensure_main_thread
    def _on_system_configuration_loaded(self, *args: Any) -> None:
        if not self._closed and self._core is not None:
            self._read_core_state(reset_limits=True)

    @ensure_main_thread
    def _on_sequence_started(self, *args: Any) -> None:
        if self._closed or self._core is None:
            return
        with _blocked(self.live_button):
            self.live_button.setChecked(True)
        self._live_timer.start()

    @ensure_main_thread
    def _on_sequence_stopped(self, *args: Any) -> None:
        if self._closed:
            return
        self._live_timer.stop()
        with _blocked(self.live_button):
            self.live_button.setChecked(False)

    @ensure_main_thread
    def _on_image_snapped(self, *args: Any) -> None:
        core = self._core
        if self._closed or core is None:
            return
        try:
            image = core.getImage()
        except Exception as exc:  # no image (another client cleared it)
            log.debug("cannot read the snapped image: %s", exc)
            return
        self._show_frame(image, live=False)

    def _on_exposure_spin(self, value: float) -> None:
        core = self._core
        if core is None:
            return
        try:
            core.setExposure(float(value))
        except Exception as exc:
            self._error(f"cannot set the exposure: {exc}")

    # ------------------------------------------------------------------ live
    @property
    def is_live(self) -> bool:
        """Whether live mode runs."""
        core = self._core
        return (
            core is not None
            and self._live_timer.isActive()
            and _safe(core.isSequenceRunning, False)
        )

    def _on_live_toggled(self, on: bool) -> None:
        self.set_live(on)

    def set_live(self, on: bool) -> None:
        """Start or stop live mode (a continuous sequence acquisition)."""
        core = self._core
        if core is None:
            if on:
                self._error("connect a microscope first")
            on = False
        elif on and self._operation_running:
            self._error("a refocus or focus-map scan is running")
            on = False
        elif on:
            try:
                if not core.isSequenceRunning():
                    core.startContinuousSequenceAcquisition(0)
            except Exception as exc:
                self._error(f"cannot start live mode: {type(exc).__name__}: {exc}")
                on = False
            else:
                self._live_timer.start()
        else:
            self._live_timer.stop()
            with contextlib.suppress(Exception):
                if core.isSequenceRunning():
                    core.stopSequenceAcquisition()
        with _blocked(self.live_button):
            self.live_button.setChecked(on)

    def _on_live_timer(self) -> None:
        core = self._core
        if self._closed or core is None:
            self._live_timer.stop()
            return
        try:
            n = core.getRemainingImageCount()
            if n <= 0:
                if not core.isSequenceRunning():
                    self._on_sequence_stopped()
                return
            for _ in range(n - 1):  # keep only the newest frame
                core.popNextImage()
            image = np.array(core.popNextImage(), copy=True)
        except Exception as exc:
            self._error(f"live mode stopped: {type(exc).__name__}: {exc}")
            self.set_live(False)
            return
        self._show_frame(image, live=True)

    def snap(self) -> None:
        """Snap one image (in a worker; live mode stops first)."""
        core = self._core
        if core is None:
            self._error("connect a microscope first")
            return
        if self._operation_running or self._snap_worker is not None:
            return
        if self.is_live:
            self.set_live(False)
        worker = self._worker(_snap, core, finished=self._on_snap_finished)
        self._snap_worker = worker
        worker.start()

    def _on_snap_finished(self, worker: Any) -> None:
        if self._snap_worker is worker:
            self._snap_worker = None

    @property
    def live_layer(self) -> Image | None:
        """The live Image layer (``None`` before the first frame)."""
        layer = _find_role(self.viewer, _LIVE_ROLE)
        return layer  # type: ignore[no-any-return]

    def _frame_geometry(self, shape: tuple[int, ...]) -> tuple[tuple[float, float], ...]:
        px = self._pixel_size_um if self._pixel_size_um > 0 else 1.0
        h, w = shape[:2]
        x, y = self._xy_um if self._pixel_size_um > 0 else (0.0, 0.0)
        # the frame's centre sits at the stage position (pixel i's centre at translate + i·px)
        return (px, px), (y - (h - 1) / 2 * px, x - (w - 1) / 2 * px)

    def _show_frame(self, image: Any, *, live: bool) -> None:
        try:
            rgb = frame_to_rgb(image, ncomponents=self._ncomponents)
        except (TypeError, ValueError) as exc:
            self._error(f"cannot show the frame: {exc}")
            return
        scale, translate = self._frame_geometry(rgb.shape)
        layer = self.live_layer
        if layer is None or layer.rgb != (rgb.ndim == 3):
            if layer is not None:
                self.viewer.layers.remove(layer)
            self.viewer.add_image(
                rgb,
                name=LIVE_LAYER,
                rgb=rgb.ndim == 3,
                scale=scale,
                translate=translate,
                metadata={"sparsefocus_live": True},
            )
        else:
            layer.data = rgb
            if tuple(layer.scale) != scale:
                layer.scale = scale
            if tuple(layer.translate) != translate:
                layer.translate = translate
        self.frames_shown += 1
        self._latest = _Frame(rgb, scale, translate)
        if not self._operation_running:  # (the overlay catches up afterwards)
            self._maybe_predict(force=not live)  # snapped frames are always analysed
        if live:
            self._maybe_feed_lock(rgb)

    # ------------------------------------------------------------------ live overlay
    def set_model(self, model: SparseFocusModel) -> None:
        """Use a model object for the overlay, refocus, focus lock and focus maps."""
        self._models.model = model
        if self.focus_lock is not None:
            self.focus_lock.model = model

    def _on_overlay_toggled(self, on: bool) -> None:
        if on:
            self._maybe_predict(force=True)

    def _maybe_predict(self, *, force: bool = False) -> None:
        """Start a prediction of the newest frame if due (one at a time: others are dropped).

        Live frames are analysed every ``overlay every`` seconds; ``force``
        (snapped frames) analyses the newest frame as soon as the running
        prediction ends.
        """
        frame = self._latest
        if self._closed or frame is None or not self.overlay_check.isChecked():
            return
        self._predict_pending = self._predict_pending or force
        if self._predict_worker is not None:
            return  # dropped; a pending request is served when the running one ends
        now = time.monotonic()
        if not self._predict_pending and now - self._last_predict_t < self.overlay_interval.value():
            return
        self._predict_pending = False
        self._last_predict_t = now
        px = self._pixel_size_um if self._pixel_size_um > 0 else None
        worker = self._worker(
            _predict,
            self._models,
            frame,
            px,
            returned=self._on_prediction,
            finished=self._on_predict_finished,
        )
        self._predict_worker = worker
        worker.start()

    def _on_prediction(self, result: Any) -> None:
        if self._closed:
            return
        if isinstance(result, _Failure):
            self._error(f"overlay prediction failed: {result.message}")
            return
        frame, pred = result
        show_prediction_layers(
            self.viewer,
            pred,
            scale_yx=frame.scale,
            translate_yx=frame.translate,
            metadata={"source_layer": LIVE_LAYER},
        )
        self.prediction = pred
        self.summary_label.setText(summary_text(pred))

    def _on_predict_finished(self, worker: Any) -> None:
        if self._predict_worker is worker:
            self._predict_worker = None
        if not self._closed and self._predict_pending:
            self._maybe_predict()

    # ------------------------------------------------------------------ focus lock
    def _on_lock_toggled(self, on: bool) -> None:
        self.set_focus_lock(on)

    def set_focus_lock(self, on: bool) -> None:
        """Switch the focus lock on (live mode starts) or off."""
        core = self._core
        if not on or core is None:
            if self.focus_lock is not None:
                self.focus_lock.stop()
            self._show_lock_state("off", "")
            with _blocked(self.lock_button):
                self.lock_button.setChecked(False)
            if on:
                self._error("connect a microscope first")
            return
        with _blocked(self.lock_button):
            self.lock_button.setChecked(True)
        if self.focus_lock is not None and self.focus_lock.core is core:
            self._arm_lock(self.focus_lock)
            return
        self.lock_label.setText("focus lock: loading the model…")
        kwargs = {
            "every_n_frames": 1,  # frames arrive only while the previous one is done
            "z_min_um": self.z_min_spin.value(),
            "z_max_um": self.z_max_spin.value(),
        }
        worker = self._worker(
            _make_lock,
            core,
            self._models,
            kwargs,
            returned=self._on_lock_made,
            finished=self._on_lock_worker_finished,
        )
        self._lock_worker = worker
        worker.start()

    def _on_lock_made(self, result: Any) -> None:
        if self._closed:
            return
        if isinstance(result, _Failure):
            self._error(f"cannot start the focus lock: {result.message}")
            with _blocked(self.lock_button):
                self.lock_button.setChecked(False)
            self._show_lock_state("off", "")
            return
        self.focus_lock = result
        if self.lock_button.isChecked():
            self._arm_lock(result)

    def _arm_lock(self, lock: FocusLock) -> None:
        lock.z_min_um = self.z_min_spin.value()
        lock.z_max_um = self.z_max_spin.value()
        try:
            lock.start()
        except ValueError as exc:
            self._error(str(exc))
            self.set_focus_lock(False)
            return
        self._show_lock_state(lock.state, "armed")
        if not self.is_live and not self._operation_running:
            self.set_live(True)

    def _maybe_feed_lock(self, rgb: NDArray[Any]) -> None:
        lock = self.focus_lock
        if lock is None or not lock.running or self._lock_worker is not None:
            return  # dropped: the lock still works on an earlier frame
        if self._operation_running:
            return
        worker = self._worker(
            _lock_frame,
            lock,
            rgb,
            returned=self._on_lock_event,
            finished=self._on_lock_worker_finished,
        )
        self._lock_worker = worker
        worker.start()

    def _on_lock_event(self, event: FocusLockEvent | None) -> None:
        if self._closed or event is None:
            return
        self.focus_lock_event = event
        self._show_lock_state(event.state, event.message)

    def _on_lock_worker_finished(self, worker: Any) -> None:
        if self._lock_worker is worker:
            self._lock_worker = None

    def _show_lock_state(self, state: FocusLockState | str, message: str) -> None:
        name = str(getattr(state, "value", state)).replace("_", " ")
        self.lock_label.setText(f"focus lock: {name}" + (f" ({message})" if message else ""))

    @property
    def focus_lock_state(self) -> str:
        """The focus lock's state (``"off"`` without a running lock)."""
        lock = self.focus_lock
        if lock is None or not self.lock_button.isChecked():
            return "off"
        return str(lock.state.value)

    # ------------------------------------------------------------------ refocus
    def refocus_options(self) -> RefocusOptions:
        """Return the refocus settings chosen in the widget.

        Raises
        ------
        ValueError
            For inconsistent limits.
        """
        from napari_sparsefocus.hardware import RefocusOptions

        return RefocusOptions(
            z_min_um=self.z_min_spin.value(),
            z_max_um=self.z_max_spin.value(),
            max_move_um=self.max_move_spin.value(),
            fallback=_FALLBACKS[self.fallback_combo.currentText()],
            polish=_POLISH[self.polish_combo.currentText()],
            confirm_within_um=self.confirm_within_um,
        )

    @property
    def confirm_within_um(self) -> float | None:
        """The confirmation bar chosen (µm); ``None``: the controller's default."""
        v = self.confirm_spin.value()
        return None if v <= self.confirm_spin.minimum() else float(v)

    def set_confirm_within_um(self, value: float | None) -> None:
        """Set the bar a check snap's reading must be within to confirm focus.

        Parameters
        ----------
        value : float or None
            µm (at least 0.01, at most the box's maximum); ``None``: the controller's
            default, 0.75 × DoF/2.

        Raises
        ------
        ValueError
            For a value that is not a finite number in (0, maximum].
        """
        if value is None:
            self.confirm_spin.setValue(self.confirm_spin.minimum())
            return
        v = float(value)
        if not (math.isfinite(v) and 0.0 < round(v, 2) and v <= self.confirm_spin.maximum()):
            raise ValueError(
                f"confirm_within_um must be in (0, {self.confirm_spin.maximum():g}] µm "
                f"or None, got {value!r}"
            )
        self.confirm_spin.setValue(v)

    def set_fallback(self, fallback: str) -> None:
        """Choose the fallback: ``"none"`` or ``"hill_climb"`` (``"hill-climb"``)."""
        names = {v: k for k, v in _FALLBACKS.items()}
        text = names.get(fallback, fallback)
        if text not in _FALLBACKS:
            raise ValueError(
                f"fallback must be one of {list(_FALLBACKS.values())}, got {fallback!r}"
            )
        self.fallback_combo.setCurrentText(text)

    def set_polish(self, polish: bool | str) -> None:
        """Choose the polish: ``True`` (always), ``"auto"`` (when unconfirmed) or ``False``.

        The shown names ("always", "when unconfirmed", "never") are accepted too.
        """
        for text, value in _POLISH.items():
            if polish is value or (isinstance(polish, str) and polish in (text, value)):
                self.polish_combo.setCurrentText(text)
                return
        raise ValueError(f"polish must be True, False or 'auto', got {polish!r}")

    def refocus(self) -> None:
        """Refocus once (in a worker, with progress; Stop cancels)."""
        core = self._core
        if core is None:
            self._error("connect a microscope first")
            return
        if self._operation_running:
            self._error("a refocus or focus-map scan is already running")
            return
        try:
            options = self.refocus_options()
        except ValueError as exc:
            self._error(str(exc))
            return
        self._pause_live()
        self._refocus_stop.clear()
        worker = self._worker(
            _run_refocus,
            core,
            self._models,
            options,
            self._refocus_stop,
            yielded=self._on_refocus_step,
            returned=self._on_refocus_result,
            finished=self._on_refocus_finished,
        )
        self._refocus_worker = worker
        self.refocus_progress.setRange(0, 0)  # busy
        self.status_label.setText("refocusing…")
        self._update_enabled()
        worker.start()

    def _on_refocus_step(self, step: RefocusStep) -> None:
        if self._closed:
            return
        self.status_label.setText(
            f"refocus: {step.message} ({step.snaps} snaps, {step.moves} moves)"
        )

    def _on_refocus_result(self, result: Any) -> None:
        if self._closed:
            return
        if isinstance(result, _Failure):
            self._error(f"refocus failed: {result.message}")
            return
        self.refocus_results.append(result)
        row = self.log_table.rowCount()
        self.log_table.insertRow(row)
        for col, text in enumerate(refocus_log_row(result, time.strftime("%H:%M:%S"))):
            item = QTableWidgetItem(text)
            item.setToolTip(text)
            self.log_table.setItem(row, col, item)
        self.log_table.resizeColumnsToContents()
        self.log_table.scrollToBottom()
        self.status_label.setText(f"refocus {result.verdict}: {result.message}")
        if math.isfinite(result.final_z_um):
            self._show_z(result.final_z_um)

    def _on_refocus_finished(self, worker: Any) -> None:
        if self._refocus_worker is worker:
            self._refocus_worker = None
        if self._closed:
            return
        self.refocus_progress.setRange(0, 1)
        self.refocus_progress.setValue(1)
        self._after_operation()

    def stop(self) -> None:
        """Stop a running refocus (between snaps) or focus-map scan (between tiles)."""
        self._refocus_stop.set()
        if self._map_worker is not None:
            self._map_worker.quit()

    # ------------------------------------------------------------------ focus map
    def set_focus_map_method(self, method: str) -> None:
        """Choose "one-shot", "key points" or "both"."""
        if method not in FOCUS_MAP_METHODS:
            raise ValueError(f"method must be one of {list(FOCUS_MAP_METHODS)}, got {method!r}")
        self.method_combo.setCurrentText(method)

    def run_focus_map(self) -> None:
        """Scan the focus map(s) around the current position (in a worker)."""
        core = self._core
        if core is None:
            self._error("connect a microscope first")
            return
        if self._operation_running:
            self._error("a refocus or focus-map scan is already running")
            return
        if not _safe(core.getXYStageDevice, ""):
            self._error("the focus map needs an XY stage")
            return
        methods = FOCUS_MAP_METHODS[self.method_combo.currentText()]
        scope = self._scope
        clock = None if scope is None else (lambda: scope.sim_time_s)
        truth = None if scope is None else scope.slide.z_focus_um
        self._pause_live()
        n_methods = len(methods)
        worker = self._worker(
            _run_focus_maps,
            core,
            self._models,
            rows=self.rows_spin.value(),
            cols=self.cols_spin.value(),
            spacing_um=self.spacing_spin.value(),
            methods=methods,
            clock=clock,
            truth=truth,
            yielded=lambda item: self._on_map_step(item, n_methods),
            returned=self._on_map_result,
            finished=self._on_map_finished,
        )
        self._map_worker = worker
        self.map_progress.setValue(0)
        self.cost_label.setText("scanning…")
        self._update_enabled()
        worker.start()

    def _on_map_step(self, item: tuple[int, FocusMapStep], n_methods: int) -> None:
        if self._closed:
            return
        i, step = item
        total = step.n_tiles if step.method == "one_shot" else min(5, step.n_tiles)
        frac = (i + min(step.tiles_done / max(total, 1), 1.0)) / n_methods
        self.map_progress.setValue(round(1000 * frac))
        self.status_label.setText(f"{_METHOD_LABEL[step.method]}: {step.message}")

    def _on_map_result(self, outcomes: list[MapOutcome]) -> None:
        if self._closed:
            return
        lines = []
        for outcome in outcomes:
            lines.append(focus_map_cost_text(outcome))
            if outcome.result is None:
                continue
            self.focus_map_results[outcome.method] = outcome
            self._show_map(outcome)
        self.cost_label.setText("\n".join(lines))
        self.map_progress.setValue(1000)
        self.status_label.setText("focus map done")
        self.viewer.reset_view()

    def _show_map(self, outcome: MapOutcome) -> None:
        label = _METHOD_LABEL[outcome.method]
        xs, ys = outcome.xs_um, outcome.ys_um
        scale = (float(ys[1] - ys[0]), float(xs[1] - xs[0]))
        translate = (float(ys[0]), float(xs[0]))
        surface = outcome.surface_um.astype(np.float32)
        lo, hi = float(np.nanmin(surface)), float(np.nanmax(surface))
        if not hi > lo:
            lo, hi = lo - 0.5, hi + 0.5
        common = {"scale": scale, "translate": translate, "opacity": 0.8}
        _set_or_add_image(
            self.viewer,
            f"focus surface ({label})",
            surface,
            colormap="viridis",
            contrast_limits=(lo, hi),
            metadata={"sparsefocus_focus_map": outcome.method, "units": "µm"},
            **common,
        )
        if outcome.error_um is not None:
            err = outcome.error_um.astype(np.float32)
            m = max(float(np.nanmax(np.abs(err))), 0.5)
            _set_or_add_image(
                self.viewer,
                f"focus error ({label})",
                err,
                colormap="PiYG",
                contrast_limits=(-m, m),
                metadata={"sparsefocus_focus_error": outcome.method, "units": "µm"},
                **common,
            )
        r = outcome.result
        assert r is not None
        ok = np.isfinite(r.z_measured_um) & (r.confidence > 0)
        coords = np.column_stack([r.y_um[ok], r.x_um[ok]])
        name = f"focus-map tiles ({label})"
        size = 0.3 * outcome.pitch_um
        features = {"z_um": r.z_measured_um[ok], "confidence": r.confidence[ok]}
        if name in self.viewer.layers:
            pts: Points = self.viewer.layers[name]
            pts.data = coords
            pts.features = features
        else:
            self.viewer.add_points(
                coords,
                name=name,
                size=size,
                face_color="transparent",
                border_color="white",
                features=features,
                text={"string": "{z_um:.2f}", "color": "white", "size": 9},
                metadata={"sparsefocus_focus_map_tiles": outcome.method},
            )

    def _on_map_finished(self, worker: Any) -> None:
        if self._map_worker is worker:
            self._map_worker = None
        if self._closed:
            return
        if worker.abort_requested:
            self.cost_label.setText("focus-map scan stopped")
            self.status_label.setText("focus-map scan stopped")
        self._after_operation()

    # ------------------------------------------------------------------ operations
    @property
    def _operation_running(self) -> bool:
        return self._refocus_worker is not None or self._map_worker is not None

    def _pause_live(self) -> None:
        """Stop live mode for an operation (it snaps itself); resume it afterwards."""
        self._resume_live = self.is_live
        if self._resume_live:
            self.set_live(False)

    def _after_operation(self) -> None:
        self._update_enabled()
        core = self._core
        if core is None:
            return
        self._read_core_state()
        lock = self.focus_lock
        if lock is not None and self.lock_button.isChecked():
            self._arm_lock(lock)  # re-arm at the new position (live mode restarts)
        elif self._resume_live:
            self.set_live(True)
        else:
            self.snap()  # show (and analyse) the field where the stage ended
        self._resume_live = False

    @property
    def workers(self) -> list[Any]:
        """Thread workers that may still run."""
        return [
            w
            for w in (
                self._snap_worker,
                self._predict_worker,
                self._lock_worker,
                self._refocus_worker,
                self._map_worker,
            )
            if w is not None
        ]

    @property
    def busy(self) -> bool:
        """Whether any worker runs (or a requested overlay prediction waits)."""
        return bool(self.workers)

    @property
    def closed(self) -> bool:
        """Whether the widget has stopped and left its core."""
        return self._closed

    # ------------------------------------------------------------------ errors
    def _error(self, message: str) -> None:
        from napari.utils.notifications import show_error

        if self._closed:
            return
        self.status_label.setText(f"error: {message}")
        show_error(f"SparseFocus microscope: {message}")

    def _on_worker_error(self, exc: BaseException) -> None:
        if not self._closed:
            self.status_label.setText(f"error: {type(exc).__name__}: {exc}")
        log.error("microscope widget worker failed", exc_info=exc)

    def _worker(
        self,
        fn: Callable[..., Any],
        *args: Any,
        finished: Callable[[Any], None],
        returned: Callable[[Any], None] | None = None,
        yielded: Callable[[Any], None] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Return a napari thread worker (not started) running ``fn(*args, **kwargs)``.

        Its errors reach the status line; ``finished(worker)`` runs when it ends.
        """
        from napari.qt.threading import create_worker

        worker = create_worker(
            fn, *args, _start_thread=False, _connect={"errored": self._on_worker_error}, **kwargs
        )
        if yielded is not None:
            worker.yielded.connect(yielded)
        if returned is not None:
            worker.returned.connect(returned)
        worker.finished.connect(lambda: finished(worker))
        return worker

    # ------------------------------------------------------------------ teardown
    def close_all(self) -> None:
        """Stop live mode and all workers, and leave the core (idempotent).

        Safe after the Qt widget is deleted (the viewer closed): it touches no
        Qt widget then.
        """
        if self._closed:
            return
        self._closed = True
        self.disconnect_microscope()
        self._stop_everything()
        self._snap_worker = self._predict_worker = self._lock_worker = None
        self._refocus_worker = self._map_worker = None
        self._latest = None

    def _make_cleanup(self) -> Any:
        # a closure, not a bound slot: it runs after the C++ widget is gone
        def cleanup(*args: Any) -> None:
            self.close_all()

        return cleanup

    def closeEvent(self, event: Any) -> None:
        """Stop live mode and the workers when the widget is closed."""
        self.close_all()
        super().closeEvent(event)


# ---------------------------------------------------------------------- small helpers
@contextlib.contextmanager
def _blocked(widget: Any) -> Iterator[None]:
    old = widget.blockSignals(True)
    try:
        yield
    finally:
        widget.blockSignals(old)


def _safe(fn: Callable[[], Any], default: Any) -> Any:
    try:
        return fn()
    except Exception:
        return default


def _find_simulation(core: CMMCorePlus) -> SimulatedMicroscope | None:
    """Return the simulated microscope on ``core``, if its devices are loaded there."""
    try:
        from napari_sparsefocus.hardware import SimulatedMicroscope

        return SimulatedMicroscope.from_core(core)  # type: ignore[arg-type]
    except Exception:
        return None


def _unload(core: CMMCorePlus) -> None:
    """Stop and unload everything on a core the widget owns."""
    try:
        if core.isSequenceRunning():
            core.stopSequenceAcquisition()
    except Exception:
        log.debug("cannot stop the sequence acquisition", exc_info=True)
    try:
        core.unloadAllDevices()
    except Exception:
        log.warning("cannot unload the microscope's devices", exc_info=True)
