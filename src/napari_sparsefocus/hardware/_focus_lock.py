"""Focus lock: keep a live view in focus with small, rate-limited model corrections.

A :class:`FocusLock` looks at every Nth live frame, asks the SparseFocus
model for the defocus and nudges the focus stage towards focus: never by
more than ``max_step_um`` at a time, never within ``min_interval_s`` of the
previous correction, never outside its limits, and not at all when the
prediction is within the dead band, lacks content or is not confident. On an
empty field it pauses itself instead of wandering (no runaway) and resumes as
soon as content comes back.

The logic is in :meth:`FocusLock.process_frame`, which a widget (or a test)
calls with each frame; :meth:`FocusLock.connect` feeds it from the core's
``imageSnapped`` and MDA ``frameReady`` events instead.
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._camera import frame_to_rgb
from ._refocus import _default_model, _is_finite_number, _predict_refined, _weak_lone_patch

if TYPE_CHECKING:
    from collections.abc import Callable

    from pymmcore_plus import CMMCorePlus

__all__ = ["FocusLock", "FocusLockEvent", "FocusLockState"]

log = logging.getLogger(__name__)


class FocusLockState(str, enum.Enum):
    """What the focus lock is doing.

    Attributes
    ----------
    OFF
        Not started (or stopped): frames are ignored.
    LOCKED
        The last analysed frame was within the dead band.
    CORRECTING
        The last analysed frame moved the stage (by at most ``max_step_um``).
    HOLDING
        The last analysed frame moved nothing: low confidence, a first empty
        frame, or a correction refused by the rate limit.
    PAUSED_NO_CONTENT
        ``pause_after_empty`` analysed frames in a row had no usable content;
        the stage is left alone until content returns.
    AT_LIMIT
        A correction would leave the allowed range; the stage stays at its edge.
    ERROR
        A device or model error stopped the lock (``start()`` re-arms it).
    """

    OFF = "off"
    LOCKED = "locked"
    CORRECTING = "correcting"
    HOLDING = "holding"
    PAUSED_NO_CONTENT = "paused_no_content"
    AT_LIMIT = "at_limit"
    ERROR = "error"


@dataclass(frozen=True)
class FocusLockEvent:
    """Record of one analysed frame.

    Attributes
    ----------
    frame : int
        Index of the frame among those fed to the lock since ``start()`` (from 0).
    time_s : float
        Clock time of the analysis (the lock's ``clock``).
    state : FocusLockState
        State after the analysis.
    z_um : float
        Focus position before any correction.
    defocus_um : float or None
        The model's prediction (``None``: no usable content or an error).
    move_um : float
        Correction applied (0 when none).
    message : str
        Why.
    """

    frame: int
    time_s: float
    state: FocusLockState
    z_um: float
    defocus_um: float | None
    move_um: float
    message: str


class FocusLock:
    """Keep the focus on live frames with small model-driven corrections.

    Parameters
    ----------
    core : CMMCorePlus
        Any pymmcore-plus core with a focus stage.
    model : SparseFocusModel, optional
        ``None``: the bundled model (loaded once).
    every_n_frames : int
        Analyse one frame in this many (>= 1): the first one fed, then every Nth.
    deadband_um : float, optional
        No correction while ``|defocus|`` is at most this. ``None``: a quarter
        of the depth of field of the model's optics when frames are read with
        its near-focus refiner (``refined_reading``), else half of it.
    max_step_um : float
        Largest single correction (µm, > 0).
    min_interval_s : float
        Frames within this time of the last correction are not analysed, so
        corrections are at least this far apart (>= 0).
    z_min_um, z_max_um : float, optional
        Absolute soft limits of the focus stage (µm).
    max_drift_um : float, optional
        The lock never moves farther than this from where it was started
        (µm, > 0); ``None`` disables this bound.
    pause_after_empty : int
        Analysed frames in a row without content before the lock pauses (>= 1).
    min_direction_agreement : float
        Predictions whose patches agree less on the direction are not acted on.
    min_lone_importance : float
        A prediction resting on a single patch whose RIN importance is below
        this counts as a frame without content (a speck of debris on an
        empty field; see ``RefocusOptions.min_lone_importance``). 0 disables.
    pixel_size_um : float, optional
        Sample pixel size; ``None``: ``core.getPixelSizeUm()`` (the model's if
        unset), 0: the model's.
    focus_device : str, optional
        Focus stage; ``None``: ``core.getFocusDevice()`` at ``start()``.
    history_len : int
        Number of events kept in :attr:`history`.
    clock : callable
        Time source in seconds (default ``time.monotonic``; tests pass a fake).
    near_focus_calibration : bool
        Read every prediction through the model's ``near_focus_calibration``
        when it has one (default): a locked stage is near focus, where the raw
        reading has a floor (the bundled model reads about -1 µm in focus,
        outside the default dead band); the map is the identity beyond a few µm.
    refined_reading : bool
        Read a frame whose top-k reading lies within two depths of field of
        focus with the model's near-focus refiner (``model.read_near_focus``,
        when it has one; default), as the refocus controller reads its check
        snaps: uncalibrated, and not gated on the top-k patches' directions
        (near focus they scatter about zero). It costs a second pass of the
        networks over the analysed frame. ``False``: the calibrated top-k
        reading only.

    Notes
    -----
    Sign errors: if, right after a correction of size ``s``, the predicted
    ``|defocus|`` has grown by at least ``|s| / 2``, the model's sign is
    taken to be wrong at this place and the following corrections use the
    opposite sign, until another such growth flips it back. With the
    ``max_drift_um`` bound a consistently wrong model can at worst walk the
    stage to the edge of that range, never beyond.
    """

    def __init__(
        self,
        core: CMMCorePlus,
        model: Any = None,
        *,
        every_n_frames: int = 5,
        deadband_um: float | None = None,
        max_step_um: float = 1.0,
        min_interval_s: float = 1.0,
        z_min_um: float | None = None,
        z_max_um: float | None = None,
        max_drift_um: float | None = 10.0,
        pause_after_empty: int = 2,
        min_direction_agreement: float = 0.6,
        min_lone_importance: float = 0.9,
        pixel_size_um: float | None = None,
        focus_device: str | None = None,
        history_len: int = 1000,
        clock: Callable[[], float] = time.monotonic,
        near_focus_calibration: bool = True,
        refined_reading: bool = True,
    ) -> None:
        for name, n in (
            ("every_n_frames", every_n_frames),
            ("pause_after_empty", pause_after_empty),
            ("history_len", history_len),
        ):
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
        if not (_is_finite_number(max_step_um) and max_step_um > 0):
            raise ValueError(f"max_step_um must be a finite number > 0, got {max_step_um!r}")
        if not (_is_finite_number(min_interval_s) and min_interval_s >= 0):
            raise ValueError(f"min_interval_s must be a finite number >= 0, got {min_interval_s!r}")
        for name, v in (
            ("deadband_um", deadband_um),
            ("z_min_um", z_min_um),
            ("z_max_um", z_max_um),
            ("max_drift_um", max_drift_um),
            ("pixel_size_um", pixel_size_um),
        ):
            if v is not None and not _is_finite_number(v):
                raise ValueError(f"{name} must be a finite number or None, got {v!r}")
        if deadband_um is not None and deadband_um < 0:
            raise ValueError(f"deadband_um must be >= 0, got {deadband_um}")
        if max_drift_um is not None and max_drift_um <= 0:
            raise ValueError(f"max_drift_um must be > 0, got {max_drift_um}")
        if pixel_size_um is not None and pixel_size_um < 0:
            raise ValueError(f"pixel_size_um must be >= 0, got {pixel_size_um}")
        if z_min_um is not None and z_max_um is not None and not z_min_um < z_max_um:
            raise ValueError(f"z_min_um ({z_min_um}) must be smaller than z_max_um ({z_max_um})")
        if not (_is_finite_number(min_direction_agreement) and 0 <= min_direction_agreement <= 1):
            raise ValueError(
                f"min_direction_agreement must be in [0, 1], got {min_direction_agreement!r}"
            )
        if not (_is_finite_number(min_lone_importance) and 0 <= min_lone_importance <= 1):
            raise ValueError(f"min_lone_importance must be in [0, 1], got {min_lone_importance!r}")
        self.core = core
        self.model = _default_model() if model is None else model
        if not callable(getattr(self.model, "predict", None)):
            raise ValueError(f"model must have a predict() method, got {type(model).__name__}")
        self.every_n_frames = int(every_n_frames)
        dof: Any = getattr(getattr(self.model, "optics", None), "dof_um", None)
        self._dof_um = float(dof) if _is_finite_number(dof) and dof > 0 else None
        if not isinstance(refined_reading, (bool, np.bool_)):
            raise ValueError(f"refined_reading must be True or False, got {refined_reading!r}")
        self._refined = bool(refined_reading) and callable(
            getattr(self.model, "read_near_focus", None)
        )
        if deadband_um is None:
            if self._dof_um is None:
                raise ValueError("cannot tell the model's depth of field: pass deadband_um")
            # the refined reading is steady enough for a band half as wide (see refined_reading)
            deadband_um = self._dof_um / (4 if self._refined else 2)
        self.deadband_um = float(deadband_um)
        # the refiner's range: two depths of field (or of the dead band, without optics)
        self._refine_within_um = 2.0 * (self._dof_um or 2.0 * self.deadband_um)
        self.max_step_um = float(max_step_um)
        self.min_interval_s = float(min_interval_s)
        self.z_min_um = z_min_um
        self.z_max_um = z_max_um
        self.max_drift_um = max_drift_um
        self.pause_after_empty = int(pause_after_empty)
        self.min_direction_agreement = float(min_direction_agreement)
        self.min_lone_importance = float(min_lone_importance)
        self.pixel_size_um = pixel_size_um
        self.focus_device = focus_device
        self.clock = clock
        cal = getattr(self.model, "near_focus_calibration", None)
        self._calibration = cal if near_focus_calibration else None
        self._history: collections.deque[FocusLockEvent] = collections.deque(maxlen=history_len)
        self._corrections: collections.deque[FocusLockEvent] = collections.deque(maxlen=history_len)
        self._lock = threading.Lock()
        self._state = FocusLockState.OFF
        self._focus = ""
        self._z_ref = math.nan
        self._frame = -1
        self._empties = 0
        self._flip = False
        self._last_move_t = -math.inf
        self._last_move_um = 0.0
        self._last_abs_um: float | None = None
        self._connected = False

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> FocusLockState:
        """Current state."""
        return self._state

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop` (and not stopped by an error)."""
        return self._state not in (FocusLockState.OFF, FocusLockState.ERROR)

    @property
    def history(self) -> tuple[FocusLockEvent, ...]:
        """Every analysed frame's event, oldest first (at most ``history_len``)."""
        return tuple(self._history)

    @property
    def corrections(self) -> tuple[FocusLockEvent, ...]:
        """The events that moved the stage, oldest first."""
        return tuple(self._corrections)

    @property
    def reference_z_um(self) -> float:
        """Focus position when the lock was started (centre of the drift bound)."""
        return self._z_ref

    def start(self) -> None:
        """Arm the lock at the current focus position (clears the counters, not the history).

        Raises
        ------
        ValueError
            If the core has no focus device.
        """
        focus = self.focus_device or self.core.getFocusDevice()
        if not focus:
            raise ValueError("the core has no focus device: set one or pass focus_device=")
        with self._lock:
            self._focus = focus
            self._z_ref = float(self.core.getPosition(focus))
            self._frame = -1
            self._empties = 0
            self._flip = False
            self._last_move_t = -math.inf
            self._last_move_um = 0.0
            self._last_abs_um = None
            self._state = FocusLockState.LOCKED
        log.info("focus lock started at %.3f µm on %s", self._z_ref, focus)

    def stop(self) -> None:
        """Disarm the lock (frames are ignored until :meth:`start`)."""
        with self._lock:
            self._state = FocusLockState.OFF
        log.info("focus lock stopped")

    # ------------------------------------------------------------------ frames
    def process_frame(self, image: Any) -> FocusLockEvent | None:
        """Feed one live frame; maybe analyse it and correct the focus.

        Parameters
        ----------
        image : ndarray
            A camera frame in any layout :func:`frame_to_rgb` accepts.

        Returns
        -------
        FocusLockEvent or None
            The analysis record, or ``None`` when the frame was not analysed
            (lock off, not an Nth frame, within ``min_interval_s`` of the last
            correction, or another frame still being analysed).

        Notes
        -----
        Errors (camera frame, model, stage) do not raise: the lock goes to
        ``ERROR``, logs the exception and records it in the event.
        """
        if not self.running or not self._lock.acquire(blocking=False):
            return None
        try:
            if not self.running:
                return None
            self._frame += 1
            if self._frame % self.every_n_frames:
                return None
            now = self.clock()
            if now - self._last_move_t < self.min_interval_s:
                return None
            return self._analyse(image, now)
        finally:
            self._lock.release()

    def _analyse(self, image: Any, now: float) -> FocusLockEvent:
        z = math.nan
        try:
            z = float(self.core.getPosition(self._focus))
            rgb = frame_to_rgb(image)
            px = self._pixel_size()
            pred, refined, _ = _predict_refined(self.model, rgb, px, self._wants_refined)
            return self._decide(pred, z, now, refined)
        except Exception as exc:
            log.exception("focus lock stopped by an error")
            self._state = FocusLockState.ERROR
            return self._record(now, z, None, 0.0, f"error: {type(exc).__name__}: {exc}")

    def _wants_refined(self, pred: Any) -> bool:
        """Whether to read the frame with the refiner too (the costly part of a frame).

        Not for a frame :meth:`_decide` will hold on anyway (no finite reading,
        or a weak lone patch), nor beyond the refiner's range.
        """
        d: Any = getattr(pred, "defocus_um", None)
        return (
            self._refined
            and _is_finite_number(d)
            and abs(float(d)) <= self._refine_within_um
            and not _weak_lone_patch(pred, self.min_lone_importance)
        )

    def _pixel_size(self) -> float | None:
        px = self.pixel_size_um
        if px is None:
            px = float(self.core.getPixelSizeUm())
        return px if px and px > 0 else None

    def _decide(
        self, pred: Any, z: float, now: float, refined: float | None = None
    ) -> FocusLockEvent:
        d = getattr(pred, "defocus_um", None)
        weak = _weak_lone_patch(pred, self.min_lone_importance) if d is not None else ""
        if d is None or not _is_finite_number(d) or weak:
            self._empties += 1
            self._last_abs_um = None
            paused = self._empties >= self.pause_after_empty
            self._state = FocusLockState.PAUSED_NO_CONTENT if paused else FocusLockState.HOLDING
            if weak:
                what = f"no usable content ({weak})"
            else:
                what = "no usable content" if d is None else f"non-finite prediction {d!r}"
            return self._record(now, z, None, 0.0, f"{what}: holding still")
        d = float(d)
        if refined is not None:
            # near focus: the refiner's reading, as it is (see ``refined_reading``)
            d = refined
        elif self._calibration is not None:
            # a locked stage is near focus, where the raw reading has a floor of about
            # 1 µm; the model's near-focus map is the identity beyond a few µm
            d = float(self._calibration.apply([d])[0])
        self._empties = 0
        agree = getattr(pred, "direction_agreement", 1.0)
        if refined is None and _is_finite_number(agree) and agree < self.min_direction_agreement:
            self._state = FocusLockState.HOLDING
            self._last_abs_um = None
            return self._record(
                now, z, d, 0.0, f"low confidence ({agree:.0%} agree on the direction): holding"
            )
        # the sign-error rule: a correction that made |defocus| grow went the wrong way
        if (
            self._last_abs_um is not None
            and self._last_move_um
            and abs(d) >= self._last_abs_um + 0.5 * abs(self._last_move_um)
        ):
            self._flip = not self._flip
            log.info("focus lock: |defocus| grew after a correction; flipping the model's sign")
        self._last_abs_um = None
        self._last_move_um = 0.0
        if abs(d) <= self.deadband_um:
            self._state = FocusLockState.LOCKED
            return self._record(
                now, z, d, 0.0, f"in the dead band (|{d:.3g}| ≤ {self.deadband_um:.3g})"
            )
        step = -d if not self._flip else d
        step = max(-self.max_step_um, min(self.max_step_um, step))
        lo, hi = self._limits()
        target = min(max(z + step, lo), hi)
        if abs(target - z) < 1e-9:
            self._state = FocusLockState.AT_LIMIT
            return self._record(now, z, d, 0.0, f"at the limit of [{lo:g}, {hi:g}] µm: holding")
        self.core.setPosition(self._focus, target)
        self.core.waitForDevice(self._focus)
        move = target - z
        self._last_move_t = now
        self._last_move_um = move
        self._last_abs_um = abs(d)
        self._state = FocusLockState.CORRECTING
        event = self._record(now, z, d, move, f"corrected {move:+.3g} µm")
        self._corrections.append(event)
        log.debug("focus lock: defocus %+.3f µm, moved %+.3f µm", d, move)
        return event

    def _limits(self) -> tuple[float, float]:
        lo = -math.inf if self.z_min_um is None else float(self.z_min_um)
        hi = math.inf if self.z_max_um is None else float(self.z_max_um)
        if self.max_drift_um is not None:
            lo = max(lo, self._z_ref - self.max_drift_um)
            hi = min(hi, self._z_ref + self.max_drift_um)
        return lo, hi

    def _record(
        self, now: float, z: float, d: float | None, move: float, message: str
    ) -> FocusLockEvent:
        event = FocusLockEvent(self._frame, now, self._state, z, d, move, message)
        self._history.append(event)
        return event

    # ------------------------------------------------------------------ events
    def connect(self) -> None:
        """Feed the lock from the core: snapped images and MDA frames."""
        if self._connected:
            return
        self.core.events.imageSnapped.connect(self._on_image_snapped)
        self.core.mda.events.frameReady.connect(self._on_frame_ready)
        self._connected = True

    def disconnect(self) -> None:
        """Stop listening to the core's events."""
        if not self._connected:
            return
        self.core.events.imageSnapped.disconnect(self._on_image_snapped)
        self.core.mda.events.frameReady.disconnect(self._on_frame_ready)
        self._connected = False

    def _on_image_snapped(self, *_: Any) -> None:
        if self.running:
            self.process_frame(self.core.getImage())

    def _on_frame_ready(self, image: Any, *_: Any) -> None:
        self.process_frame(image)
