"""A simulated brightfield microscope as pymmcore-plus Python devices.

Four Python devices on a ``UniMMCore`` share one :class:`SimulationState`: an
RGB camera that renders the project's simulator (:class:`VirtualSlide`) at the
current stage position, a focus (Z) stage with soft limits and optional
backlash, an XY stage limited to the slide, and a shutter. Exposures and moves
advance a simulated clock; ``realtime=True`` also sleeps for them.

Load it with :func:`load_simulated_microscope` (Python) or the shipped
configuration file :data:`SIMULATED_CONFIG` (``core.loadSystemConfiguration``
or :func:`load_simulated_config`). See ``docs/simulated-microscope.md``.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from pymmcore_plus.core._constants import FocusDirection
from pymmcore_plus.experimental.unicore import (
    ShutterDevice,
    SimpleCameraDevice,
    StageDevice,
    UniMMCore,
    XYStageDevice,
)

from ..core import Optics, SlideSite, VirtualSlide

if TYPE_CHECKING:
    from collections.abc import Mapping

    from numpy.typing import DTypeLike

__all__ = [
    "DEFAULT_LABELS",
    "FAULT_DEVICES",
    "SIMULATED_CONFIG",
    "SimulatedCamera",
    "SimulatedFocusStage",
    "SimulatedMicroscope",
    "SimulatedShutter",
    "SimulatedXYStage",
    "SimulationState",
    "StageLimitError",
    "load_simulated_config",
    "load_simulated_microscope",
]

#: The shipped Micro-Manager configuration file (``#py pyDevice`` lines).
SIMULATED_CONFIG: Final = Path(__file__).with_name("simulated.cfg")
#: Device labels used by :func:`load_simulated_microscope` and the shipped config.
DEFAULT_LABELS: Final = {"camera": "Camera", "z": "Z", "xy": "XY", "shutter": "Shutter"}
#: Devices :meth:`SimulatedMicroscope.inject_fault` can break.
FAULT_DEVICES: Final = ("camera", "z", "xy", "shutter")
_PIXEL_CONFIG = "SimulatedObjective"
#: presets the shipped config defines (replaced by one unconditional preset when loading)
_CFG_PIXEL_CONFIGS = ("SimulatedObjective", "SimulatedObjectiveManualShutter")


class StageLimitError(RuntimeError):
    """A move beyond a simulated stage's soft limits (the stage does not move)."""


class _Fault:
    """A pending injected fault: ``passes`` calls succeed, then ``times`` calls raise."""

    __slots__ = ("exc", "passes", "times")

    def __init__(self, passes: int, exc: BaseException, times: int | None) -> None:
        self.passes = passes
        self.exc = exc
        self.times = times


class SimulationState:
    """State shared by the simulated devices: slide, positions, clock, faults.

    Parameters
    ----------
    slide : VirtualSlide
        The slide under the objective; its field shape is the sensor shape.
    exposure_ms : float
        Initial camera exposure (ms).
    readout_ms : float
        Camera readout time added to every frame (ms).
    z_speed_um_s, z_settle_ms : float
        Focus-stage speed (µm/s) and settling time after every move (ms).
    xy_speed_um_s, xy_settle_ms : float
        XY-stage speed per axis (µm/s; the axes move together) and settling
        time after every move (ms).
    z_limits_um : tuple of float, optional
        Soft limits of the focus stage (µm); default the slide's nominal focus
        ± 200 µm.
    backlash_um : float
        Play of the focus drive (µm, >= 0); see :class:`SimulatedFocusStage`.
    realtime : bool
        Sleep for simulated durations (exposures, moves) as well as counting them.
    noise : bool
        Add camera noise to frames (``False``: frames are exact renderings).
    noise_seed : int, optional
        Seed of the camera-noise stream (default: the slide seed).

    Notes
    -----
    All positions here are physical. The stage reports the *commanded*
    position; with backlash the *mechanical* position, which the camera
    images, can differ from it by up to ``backlash_um``.
    """

    def __init__(
        self,
        slide: VirtualSlide,
        *,
        exposure_ms: float = 10.0,
        readout_ms: float = 10.0,
        z_speed_um_s: float = 1_000.0,
        z_settle_ms: float = 20.0,
        xy_speed_um_s: float = 10_000.0,
        xy_settle_ms: float = 50.0,
        z_limits_um: tuple[float, float] | None = None,
        backlash_um: float = 0.0,
        realtime: bool = False,
        noise: bool = True,
        noise_seed: int | None = None,
    ) -> None:
        if not isinstance(slide, VirtualSlide):
            raise TypeError(f"slide must be a VirtualSlide, got {type(slide).__name__}")
        _check_nonneg("exposure_ms", exposure_ms)
        _check_nonneg("readout_ms", readout_ms)
        _check_nonneg("z_settle_ms", z_settle_ms)
        _check_nonneg("xy_settle_ms", xy_settle_ms)
        _check_nonneg("backlash_um", backlash_um)
        for name, v in (("z_speed_um_s", z_speed_um_s), ("xy_speed_um_s", xy_speed_um_s)):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be finite and > 0, got {v}")
        if z_limits_um is None:
            z_limits_um = (slide.z_nominal_um - 200.0, slide.z_nominal_um + 200.0)
        lo, hi = (float(v) for v in z_limits_um)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"z_limits_um must be finite (lo, hi) with lo < hi, got {z_limits_um}")
        if not lo <= slide.z_nominal_um <= hi:
            raise ValueError(
                f"z_limits_um={z_limits_um} must contain the nominal focus {slide.z_nominal_um}"
            )
        self.slide = slide
        self.exposure_ms = float(exposure_ms)
        self.readout_ms = float(readout_ms)
        self.z_speed_um_s = float(z_speed_um_s)
        self.z_settle_ms = float(z_settle_ms)
        self.xy_speed_um_s = float(xy_speed_um_s)
        self.xy_settle_ms = float(xy_settle_ms)
        self.z_limits_um = (lo, hi)
        self.backlash_um = float(backlash_um)
        self.realtime = bool(realtime)
        self.noise = bool(noise)
        self.lock = threading.RLock()
        self.sim_time_s = 0.0
        self.z_commanded_um = slide.z_nominal_um
        self.z_mechanical_um = slide.z_nominal_um
        self.xy_um = (0.0, 0.0)
        self.shutter_open = False
        self.counts = {"snaps": 0, "z_moves": 0, "xy_moves": 0}
        self.rng = np.random.default_rng(
            np.random.SeedSequence([slide.seed if noise_seed is None else int(noise_seed), 0xCA3])
        )
        self._faults: dict[str, _Fault] = {}

    # ------------------------------------------------------------------ faults
    def inject_fault(
        self,
        device: str,
        *,
        after: int = 1,
        exc: BaseException | type[BaseException] | None = None,
        times: int | None = 1,
    ) -> None:
        """Make a device raise (see :meth:`SimulatedMicroscope.inject_fault`)."""
        if device not in FAULT_DEVICES:
            raise ValueError(f"device must be one of {FAULT_DEVICES}, got {device!r}")
        if int(after) != after or after < 1:
            raise ValueError(
                f"after must be an integer >= 1 (1: the next call raises), got {after!r}"
            )
        if times is not None and (int(times) != times or times < 1):
            raise ValueError(f"times must be an integer >= 1 or None, got {times!r}")
        if exc is None:
            exc = RuntimeError(f"simulated {device} fault")
        elif isinstance(exc, type):
            if not issubclass(exc, BaseException):
                raise TypeError(f"exc must be an exception, got {exc!r}")
            exc = exc(f"simulated {device} fault")
        elif not isinstance(exc, BaseException):
            raise TypeError(f"exc must be an exception, got {exc!r}")
        with self.lock:
            self._faults[device] = _Fault(
                int(after) - 1, exc, None if times is None else int(times)
            )

    def clear_faults(self) -> None:
        """Remove every pending fault."""
        with self.lock:
            self._faults.clear()

    def check_fault(self, device: str) -> None:
        """Count one call of ``device`` and raise if a fault is due."""
        with self.lock:
            fault = self._faults.get(device)
            if fault is None:
                return
            if fault.passes > 0:
                fault.passes -= 1
                return
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self._faults[device]
            exc = fault.exc
        raise exc

    # ------------------------------------------------------------------ clock
    def advance(self, dt_s: float, wall_start: float | None = None) -> None:
        """Advance the simulated clock by ``dt_s`` (and sleep it off if realtime).

        Parameters
        ----------
        dt_s : float
            Simulated duration (s).
        wall_start : float, optional
            ``time.perf_counter()`` when the operation started; realtime mode
            sleeps only for what is left of ``dt_s`` after the computation.
        """
        with self.lock:
            self.sim_time_s += dt_s
            realtime = self.realtime
        if realtime and dt_s > 0:
            spent = 0.0 if wall_start is None else time.perf_counter() - wall_start
            if dt_s > spent:
                time.sleep(dt_s - spent)

    # ------------------------------------------------------------------ truth
    def true_focus_um(self) -> float:
        """Stage Z of best focus at the current XY (ground truth)."""
        with self.lock:
            x, y = self.xy_um
        return float(self.slide.z_focus_um(x, y))

    def true_defocus_um(self) -> float:
        """Defocus of the image the camera sees now: mechanical Z minus best focus."""
        with self.lock:
            z = self.z_mechanical_um
        return z - self.true_focus_um()


def _check_nonneg(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


# ---------------------------------------------------------------------- state lookup
# State of devices loaded from a configuration file, keyed by the core's event
# signaler (one per core; devices reach it through their restricted core proxy).
_REGISTRY: weakref.WeakKeyDictionary[Any, SimulationState] = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


# With Qt-backed core signals (pymmcore-plus picks them once a QApplication exists) a
# bound signal does not name its owner; the state of the core loaded last is used then.
_QT_FALLBACK: list[SimulationState] = []


def _signal_owner(events: Any) -> Any:
    # psygnal: the proxy exposes the core's real signal instances; ``.instance`` is the signaler
    return getattr(events.propertyChanged, "instance", None)


def _core_key_of_device(device: Any) -> Any:
    return _signal_owner(device.core.events)


def _core_key(core: UniMMCore) -> Any:
    return _signal_owner(core.events)


def _register_state(core: UniMMCore, state: SimulationState) -> None:
    with _REGISTRY_LOCK:
        _store_unlocked(_core_key(core), state)


def _lookup_unlocked(key: Any) -> SimulationState | None:
    if key is None:
        return _QT_FALLBACK[0] if _QT_FALLBACK else None
    return _REGISTRY.get(key)


def _store_unlocked(key: Any, state: SimulationState) -> None:
    if key is None:
        _QT_FALLBACK[:] = [state]
    else:
        _REGISTRY[key] = state


def _lookup_state(key: Any) -> SimulationState | None:
    with _REGISTRY_LOCK:
        return _lookup_unlocked(key)


class _SimDevice:
    """Mixin: find the shared :class:`SimulationState` (given, or the core's registered one)."""

    _state: SimulationState | None

    def __init__(self, state: SimulationState | None = None) -> None:
        super().__init__()
        self._state = state

    def initialize(self) -> None:
        """Resolve the shared state."""
        _ = self.state

    def shutdown(self) -> None:
        """Forget the shared state."""
        self._release_state()

    @property
    def state(self) -> SimulationState:
        """The shared simulation state."""
        if self._state is None:
            key = _core_key_of_device(self)
            with _REGISTRY_LOCK:  # get or create, atomically
                st = _lookup_unlocked(key)
                if st is None:
                    st = SimulationState(VirtualSlide(0))
                    _store_unlocked(key, st)
            self._state = st
        return self._state

    def _release_state(self) -> None:
        """Forget the registered state (on shutdown) so a reload starts afresh."""
        st, self._state = self._state, None
        if st is None:
            return
        try:
            key = _core_key_of_device(self)
        except Exception:  # no core proxy any more
            return
        with _REGISTRY_LOCK:
            if _lookup_unlocked(key) is st:
                if key is None:
                    _QT_FALLBACK.clear()
                else:
                    del _REGISTRY[key]


# ---------------------------------------------------------------------- devices
class SimulatedCamera(_SimDevice, SimpleCameraDevice):
    """RGB camera that images the virtual slide at the current stage position.

    Each frame is the field of the slide site under the XY stage (snap to
    site), rendered at defocus ``z_mechanical - slide.z_focus_um(x, y)`` with
    fresh camera noise, as ``(height, width, 3)`` uint8 in R, G, B order. A
    frame advances the simulated clock by exposure + readout.

    Parameters
    ----------
    state : SimulationState, optional
        Shared state; ``None`` (configuration files) uses the core's registered
        state, or a default one (seed 0) created on first use.
    """

    def sensor_shape(self) -> tuple[int, int] | tuple[int, int, int]:
        """``(height, width, 3)`` (``(height, width)`` for monochrome optics)."""
        slide = self.state.slide
        h, w = slide.field_shape_px
        c = slide.optics.n_channels
        return (h, w) if c == 1 else (h, w, c)

    def dtype(self) -> DTypeLike:
        """uint8 up to 8-bit optics, else uint16."""
        return np.uint8 if self.state.slide.optics.bit_depth <= 8 else np.uint16

    def get_exposure(self) -> float:
        """Exposure (ms)."""
        return self.state.exposure_ms

    def set_exposure(self, exposure: float) -> None:
        """Set the exposure (ms, finite and >= 0)."""
        _check_nonneg("exposure", float(exposure))
        with self.state.lock:
            self.state.exposure_ms = float(exposure)

    def snap(self, buffer: np.ndarray) -> Mapping[str, Any]:
        """Render one frame into ``buffer``."""
        st = self.state
        wall = time.perf_counter()
        st.check_fault("camera")
        with st.lock:
            x, y = st.xy_um
            z = st.z_mechanical_um
            rng = np.random.default_rng(st.rng.integers(2**63))
            dt_s = (st.exposure_ms + st.readout_ms) / 1000.0
        img = st.slide.render(x, y, z, rng=rng, noise=st.noise)
        buffer[...] = img.reshape(buffer.shape)
        with st.lock:
            st.counts["snaps"] += 1
        st.advance(dt_s, wall)
        site = st.slide.site_index(x, y)
        return {"SimulatedSite": f"{site[0]},{site[1]}", "SimulatedTime_s": f"{st.sim_time_s:.6f}"}


class SimulatedFocusStage(_SimDevice, StageDevice):
    """Focus (Z) drive with soft limits, speed, settling and optional backlash.

    Backlash model: the drive has a play of ``b = backlash_um``. The
    mechanical position ``m`` stays within ``[c, c + b]`` of the commanded
    position ``c``: an upward move (c increasing) pushes ``m`` up to ``c``; a
    downward move only pulls ``m`` down once the play is taken up,
    ``m = min(m, c + b)``. Approaching from below is therefore exact; after a
    downward move the stage sits up to ``b`` above where it was told to go.
    The stage reports ``c`` (motor steps, no linear encoder); the camera sees
    ``m``.

    Parameters
    ----------
    state : SimulationState, optional
        Shared state (see :class:`SimulatedCamera`).
    """

    def get_position_um(self) -> float:
        """Commanded position (µm)."""
        return self.state.z_commanded_um

    def set_position_um(self, val: float) -> None:
        """Move to ``val`` µm (raises :class:`StageLimitError` beyond the soft limits)."""
        st = self.state
        wall = time.perf_counter()
        st.check_fault("z")
        target = float(val)
        if not math.isfinite(target):
            raise ValueError(f"Z position must be finite, got {val!r}")
        lo, hi = st.z_limits_um
        if not lo <= target <= hi:
            raise StageLimitError(
                f"Z move to {target:.3f} µm refused: outside the soft limits "
                f"[{lo:.1f}, {hi:.1f}] µm (stage stays at {st.z_commanded_um:.3f} µm)"
            )
        with st.lock:
            dz = abs(target - st.z_commanded_um)
            m = st.z_mechanical_um
            m = max(m, target) if target >= st.z_commanded_um else min(m, target + st.backlash_um)
            st.z_commanded_um = target
            st.z_mechanical_um = m
            st.counts["z_moves"] += 1
        dt_s = dz / st.z_speed_um_s + st.z_settle_ms / 1000.0 if dz > 0 else 0.0
        st.advance(dt_s, wall)
        self.core.events.stagePositionChanged.emit(self.get_label(), target)

    def get_focus_direction(self) -> FocusDirection:
        """Positive Z moves the objective toward the sample."""
        return FocusDirection.TowardSample

    def set_focus_direction(self, sign: int) -> None:
        """Ignored: the simulated drive has a fixed direction."""

    def home(self) -> None:
        """Move to the nominal focus."""
        self.set_position_um(self.state.slide.z_nominal_um)

    def stop(self) -> None:
        """Do nothing: moves complete instantly in compute time."""

    def set_origin(self) -> None:
        """Unsupported: the simulated stage keeps a fixed origin."""
        raise NotImplementedError("the simulated Z stage has a fixed origin")


class SimulatedXYStage(_SimDevice, XYStageDevice):
    """XY stage over the virtual slide (soft limits: the slide bounds).

    Parameters
    ----------
    state : SimulationState, optional
        Shared state (see :class:`SimulatedCamera`).
    """

    def get_position_um(self) -> tuple[float, float]:
        """Position (µm)."""
        return self.state.xy_um

    def set_position_um(self, x: float, y: float) -> None:
        """Move to ``(x, y)`` µm (raises :class:`StageLimitError` off the slide)."""
        st = self.state
        wall = time.perf_counter()
        st.check_fault("xy")
        tx, ty = float(x), float(y)
        if not (math.isfinite(tx) and math.isfinite(ty)):
            raise ValueError(f"XY position must be finite, got ({x!r}, {y!r})")
        if not st.slide.contains(tx, ty):
            (x0, x1), (y0, y1) = st.slide.bounds_um
            cx, cy = st.xy_um
            raise StageLimitError(
                f"XY move to ({tx:.1f}, {ty:.1f}) µm refused: outside the slide "
                f"(x {x0:.1f}…{x1:.1f}, y {y0:.1f}…{y1:.1f} µm; stage stays at "
                f"({cx:.1f}, {cy:.1f}) µm)"
            )
        with st.lock:
            cx, cy = st.xy_um
            d = max(abs(tx - cx), abs(ty - cy))
            st.xy_um = (tx, ty)
            st.counts["xy_moves"] += 1
        dt_s = d / st.xy_speed_um_s + st.xy_settle_ms / 1000.0 if d > 0 else 0.0
        st.advance(dt_s, wall)
        self.core.events.XYStagePositionChanged.emit(self.get_label(), tx, ty)

    def home(self) -> None:
        """Move to the slide centre."""
        self.set_position_um(0.0, 0.0)

    def stop(self) -> None:
        """Do nothing: moves complete instantly in compute time."""

    def set_origin_x(self) -> None:
        """Unsupported: the simulated stage keeps a fixed origin."""
        raise NotImplementedError("the simulated XY stage has a fixed origin")

    def set_origin_y(self) -> None:
        """Unsupported: the simulated stage keeps a fixed origin."""
        raise NotImplementedError("the simulated XY stage has a fixed origin")


class SimulatedShutter(_SimDevice, ShutterDevice):
    """Transmitted-light shutter: records its state, does not darken frames.

    ``UniMMCore.snapImage`` does not open a Python shutter, so the camera
    ignores the shutter state (as if auto-shutter always opened it).

    Parameters
    ----------
    state : SimulationState, optional
        Shared state (see :class:`SimulatedCamera`).
    """

    def get_open(self) -> bool:
        """Whether the shutter is open."""
        return self.state.shutter_open

    def set_open(self, open: bool) -> None:
        """Open or close the shutter."""
        self.state.check_fault("shutter")
        with self.state.lock:
            self.state.shutter_open = bool(open)


# ---------------------------------------------------------------------- handle
class SimulatedMicroscope:
    """Handle on a simulated microscope loaded on a core (ground truth for tests).

    Build it with :func:`load_simulated_microscope` or
    :func:`load_simulated_config`; drive the microscope through ``core`` as
    you would a real one, and use this handle for what a real microscope
    cannot tell: the true focus, the simulated clock, fault injection.

    Parameters
    ----------
    core : UniMMCore
        The core the devices are loaded on.
    state : SimulationState
        Their shared state.
    labels : mapping, optional
        Device labels (keys ``camera``, ``z``, ``xy``, ``shutter``).
    """

    def __init__(
        self, core: UniMMCore, state: SimulationState, labels: Mapping[str, str] | None = None
    ) -> None:
        self.core = core
        self.state = state
        lab = {**DEFAULT_LABELS, **(labels or {})}
        self.camera_label = lab["camera"]
        self.z_label = lab["z"]
        self.xy_label = lab["xy"]
        self.shutter_label = lab["shutter"]

    @classmethod
    def from_core(cls, core: UniMMCore) -> SimulatedMicroscope:
        """Return a handle on the simulated devices loaded on ``core``.

        The labels are the core's current camera, focus, XY and shutter devices.

        Parameters
        ----------
        core : UniMMCore
            A core with simulated devices (from this module or the shipped config).

        Returns
        -------
        SimulatedMicroscope

        Raises
        ------
        LookupError
            If no simulated devices were loaded on ``core``.
        """
        _require_unicore(core)
        st = _lookup_state(_core_key(core))
        if st is None:
            raise LookupError("no simulated microscope is loaded on this core")
        labels = {
            "camera": core.getCameraDevice() or DEFAULT_LABELS["camera"],
            "z": core.getFocusDevice() or DEFAULT_LABELS["z"],
            "xy": core.getXYStageDevice() or DEFAULT_LABELS["xy"],
            "shutter": core.getShutterDevice() or DEFAULT_LABELS["shutter"],
        }
        return cls(core, st, labels)

    # ------------------------------------------------------------------ views
    @property
    def slide(self) -> VirtualSlide:
        """The virtual slide."""
        return self.state.slide

    @property
    def optics(self) -> Optics:
        """Optics the camera renders with."""
        return self.state.slide.optics

    @property
    def sensor_shape_px(self) -> tuple[int, int]:
        """``(height, width)`` of a frame."""
        return self.state.slide.field_shape_px

    @property
    def pixel_size_um(self) -> float:
        """Sample pixel size (µm)."""
        return self.state.slide.pixel_size_um

    @property
    def sim_time_s(self) -> float:
        """Simulated time (s) spent on exposures, readouts and moves since loading."""
        return self.state.sim_time_s

    def reset_clock(self) -> None:
        """Set the simulated clock and the operation counters to zero."""
        with self.state.lock:
            self.state.sim_time_s = 0.0
            for k in self.state.counts:
                self.state.counts[k] = 0

    @property
    def counts(self) -> dict[str, int]:
        """Operations so far: ``{"snaps", "z_moves", "xy_moves"}`` (a copy)."""
        with self.state.lock:
            return dict(self.state.counts)

    @property
    def realtime(self) -> bool:
        """Whether simulated durations are also slept."""
        return self.state.realtime

    @realtime.setter
    def realtime(self, value: bool) -> None:
        self.state.realtime = bool(value)

    @property
    def noise(self) -> bool:
        """Whether frames get camera noise."""
        return self.state.noise

    @noise.setter
    def noise(self, value: bool) -> None:
        self.state.noise = bool(value)

    @property
    def z_um(self) -> float:
        """Commanded (reported) focus position (µm)."""
        return self.state.z_commanded_um

    @property
    def z_mechanical_um(self) -> float:
        """Where the focus drive really is (µm): differs from :attr:`z_um` by backlash."""
        return self.state.z_mechanical_um

    @property
    def xy_um(self) -> tuple[float, float]:
        """XY position (µm)."""
        return self.state.xy_um

    @property
    def z_limits_um(self) -> tuple[float, float]:
        """Soft limits of the focus stage (µm)."""
        return self.state.z_limits_um

    @property
    def backlash_um(self) -> float:
        """Play of the focus drive (µm)."""
        return self.state.backlash_um

    def true_focus_um(self) -> float:
        """Return the stage Z of best focus at the current XY (ground truth; tests only).

        Returns
        -------
        float
            ``slide.z_focus_um(x, y)``: the mechanical Z at which the field is
            sharpest. With backlash, commanding it gives focus when
            approached from below.
        """
        return self.state.true_focus_um()

    def true_defocus_um(self) -> float:
        """Return the defocus of what the camera sees now (ground truth; tests only).

        Returns
        -------
        float
            ``z_mechanical_um - true_focus_um()`` (sign convention
            ``z_current - z_focus``).
        """
        return self.state.true_defocus_um()

    def current_site(self) -> SlideSite:
        """Return the slide site the camera shows now."""
        x, y = self.state.xy_um
        return self.state.slide.site_at(x, y)

    def move_to_site(
        self, site: SlideSite | tuple[int, int], *, z_um: float | None = None
    ) -> SlideSite:
        """Move the XY stage (through the core) to a site centre, and optionally Z.

        Parameters
        ----------
        site : SlideSite or tuple of int
            A site of :attr:`slide` or its ``(row, col)``.
        z_um : float, optional
            Focus position to move to afterwards (µm).

        Returns
        -------
        SlideSite
        """
        s = site if isinstance(site, SlideSite) else self.slide.site(*site)
        self.core.setXYPosition(self.xy_label, s.x_um, s.y_um)
        if z_um is not None:
            self.core.setPosition(self.z_label, float(z_um))
        return s

    def move_to_defocus(self, defocus_um: float) -> float:
        """Move Z (through the core) so the true defocus at this XY is ``defocus_um``.

        Parameters
        ----------
        defocus_um : float
            Wanted defocus (µm), ``z - z_focus``.

        Returns
        -------
        float
            The commanded Z (µm). With backlash the mechanical defocus can
            differ after a downward move.
        """
        z = self.true_focus_um() + float(defocus_um)
        self.core.setPosition(self.z_label, z)
        return z

    # ------------------------------------------------------------------ faults
    def inject_fault(
        self,
        device: str,
        *,
        after: int = 1,
        exc: BaseException | type[BaseException] | None = None,
        times: int | None = 1,
    ) -> None:
        """Make a simulated device raise on a coming call (tests of error handling).

        Parameters
        ----------
        device : {"camera", "z", "xy", "shutter"}
            Which device fails. Counted calls: camera frames (snaps and
            sequence frames), Z moves, XY moves, shutter open/close. Position
            reads never fail.
        after : int
            Which coming call raises, counting from 1: ``after=1`` (default)
            breaks the next call, ``after=3`` lets two calls succeed and breaks
            the third.
        exc : BaseException or exception type, optional
            What to raise (default ``RuntimeError("simulated <device> fault")``).
        times : int or None
            How many consecutive calls raise (``None``: every call until
            :meth:`clear_faults`).

        Notes
        -----
        A failing move does not move the stage. The core passes the device's
        exception through (``core.snapImage()`` raises it).
        """
        self.state.inject_fault(device, after=after, exc=exc, times=times)

    def clear_faults(self) -> None:
        """Remove every pending injected fault."""
        self.state.clear_faults()

    def unload(self) -> None:
        """Unload the simulated devices from the core."""
        for label in (self.camera_label, self.z_label, self.xy_label, self.shutter_label):
            if label in self.core.getLoadedDevices():
                self.core.unloadDevice(label)

    def __repr__(self) -> str:
        return (
            f"SimulatedMicroscope(slide={self.slide!r}, xy_um={self.xy_um}, z_um={self.z_um:.3f}, "
            f"sim_time_s={self.sim_time_s:.3f})"
        )


# ---------------------------------------------------------------------- loaders
def _require_unicore(core: Any) -> None:
    if not isinstance(core, UniMMCore):
        raise TypeError(
            "the simulated microscope uses Python devices, which need a "
            "pymmcore_plus.experimental.unicore.UniMMCore; got "
            f"{type(core).__module__}.{type(core).__name__}"
        )


def _make_state(
    seed: int,
    sensor_shape_px: tuple[int, int],
    optics: Optics | None,
    slide_kwargs: Mapping[str, Any] | None,
    state_kwargs: Mapping[str, Any],
) -> SimulationState:
    shape = tuple(int(v) for v in sensor_shape_px)
    if len(shape) != 2:
        raise ValueError(f"sensor_shape_px must be (height, width), got {sensor_shape_px}")
    slide = VirtualSlide(
        seed, optics=optics, field_shape_px=(shape[0], shape[1]), **dict(slide_kwargs or {})
    )
    return SimulationState(slide, **state_kwargs)


def _set_pixel_size(core: UniMMCore, camera_label: str, pixel_size_um: float) -> None:
    available = core.getAvailablePixelSizeConfigs()
    for name in {_PIXEL_CONFIG, *_CFG_PIXEL_CONFIGS}:
        if name in available:
            core.deletePixelSizeConfig(name)
    # a preset without properties always matches: py-device properties cannot key one
    core.definePixelSizeConfig(_PIXEL_CONFIG)
    core.setPixelSizeUm(_PIXEL_CONFIG, pixel_size_um)
    core.setPixelSizeConfig(_PIXEL_CONFIG)


def load_simulated_microscope(
    core: UniMMCore,
    seed: int = 0,
    *,
    sensor_shape_px: tuple[int, int] = (1120, 1120),
    optics: Optics | None = None,
    realtime: bool = False,
    backlash_um: float = 0.0,
    noise: bool = True,
    exposure_ms: float = 10.0,
    readout_ms: float = 10.0,
    z_limits_um: tuple[float, float] | None = None,
    z_speed_um_s: float = 1_000.0,
    z_settle_ms: float = 20.0,
    xy_speed_um_s: float = 10_000.0,
    xy_settle_ms: float = 50.0,
    slide_kwargs: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
) -> SimulatedMicroscope:
    """Load and initialise a simulated microscope on ``core``.

    Loads a camera, a focus stage, an XY stage and a shutter as Python
    devices, makes them the core's current devices, defines a pixel-size
    configuration with the optics' sample pixel size, sets the exposure, and
    leaves the stage at the slide centre at the nominal focus.

    Parameters
    ----------
    core : UniMMCore
        Core to load the devices on (their labels must be free).
    seed : int
        Slide seed: content layout, focal surface, fields and camera noise.
    sensor_shape_px : tuple of int
        ``(height, width)`` of a frame (one slide site), >= 224 px each way.
    optics : Optics, optional
        Optics of the rendering (default ``Optics()``, 0.1725 µm pixels).
    realtime : bool
        Also sleep for simulated exposures and moves (default: only count them).
    backlash_um : float
        Play of the focus drive (µm); see :class:`SimulatedFocusStage`.
    noise : bool
        Add camera noise (``False``: frames are exact renderings).
    exposure_ms, readout_ms : float
        Initial exposure and per-frame readout time (ms).
    z_limits_um : tuple of float, optional
        Soft limits of the focus stage (default nominal focus ± 200 µm).
    z_speed_um_s, z_settle_ms, xy_speed_um_s, xy_settle_ms : float
        Stage speeds (µm/s) and settling times (ms).
    slide_kwargs : mapping, optional
        More :class:`VirtualSlide` arguments (``size_um``, ``region_um``,
        ``sparsity_weights``, ``kinds``, ``curvature_um``, ...).
    labels : mapping, optional
        Device labels to use instead of :data:`DEFAULT_LABELS` (keys
        ``camera``, ``z``, ``xy``, ``shutter``).

    Returns
    -------
    SimulatedMicroscope

    Raises
    ------
    TypeError
        If ``core`` is not a ``UniMMCore``.
    ValueError
        If a label is already in use or an argument is invalid.
    """
    _require_unicore(core)
    lab = {**DEFAULT_LABELS, **(labels or {})}
    if set(lab) != set(DEFAULT_LABELS):
        raise ValueError(f"labels keys must be {sorted(DEFAULT_LABELS)}, got {sorted(lab)}")
    taken = [v for v in lab.values() if v in core.getLoadedDevices()]
    if taken:
        raise ValueError(f"device label(s) {taken} already in use on this core")
    state = _make_state(
        seed,
        sensor_shape_px,
        optics,
        slide_kwargs,
        {
            "exposure_ms": exposure_ms,
            "readout_ms": readout_ms,
            "z_speed_um_s": z_speed_um_s,
            "z_settle_ms": z_settle_ms,
            "xy_speed_um_s": xy_speed_um_s,
            "xy_settle_ms": xy_settle_ms,
            "z_limits_um": z_limits_um,
            "backlash_um": backlash_um,
            "realtime": realtime,
            "noise": noise,
        },
    )
    devices = {
        "camera": SimulatedCamera(state),
        "z": SimulatedFocusStage(state),
        "xy": SimulatedXYStage(state),
        "shutter": SimulatedShutter(state),
    }
    for key, dev in devices.items():
        core.loadPyDevice(lab[key], dev)
    for key in devices:
        core.initializeDevice(lab[key])
    _register_state(core, state)
    core.setCameraDevice(lab["camera"])
    core.setFocusDevice(lab["z"])
    core.setXYStageDevice(lab["xy"])
    core.setShutterDevice(lab["shutter"])
    _set_pixel_size(core, lab["camera"], state.slide.pixel_size_um)
    core.setExposure(exposure_ms)
    return SimulatedMicroscope(core, state, lab)


def load_simulated_config(
    core: UniMMCore,
    path: str | Path = SIMULATED_CONFIG,
    *,
    seed: int = 0,
    sensor_shape_px: tuple[int, int] = (1120, 1120),
    optics: Optics | None = None,
    **kwargs: Any,
) -> SimulatedMicroscope:
    """Load a configuration file of simulated devices and return the handle.

    ``core.loadSystemConfiguration(SIMULATED_CONFIG)`` alone gives the default
    simulated microscope (seed 0, 1120 × 1120 sensor, default optics). This
    function first registers a simulation with the given settings, so the
    file's devices use it, loads ``path``, and sets the pixel size from the
    optics.

    Parameters
    ----------
    core : UniMMCore
        Core to configure (the file unloads its current devices).
    path : str or Path
        Configuration file with ``#py pyDevice`` lines for this module's devices.
    seed, sensor_shape_px, optics
        As for :func:`load_simulated_microscope`.
    **kwargs
        ``realtime``, ``backlash_um``, ``noise``, ``exposure_ms``, ``readout_ms``,
        ``z_limits_um``, speeds and settling times, ``slide_kwargs``: as for
        :func:`load_simulated_microscope`. The exposure in the file, if any,
        wins over ``exposure_ms``.

    Returns
    -------
    SimulatedMicroscope
    """
    _require_unicore(core)
    slide_kwargs = kwargs.pop("slide_kwargs", None)
    state = _make_state(seed, sensor_shape_px, optics, slide_kwargs, kwargs)
    _register_state(core, state)
    core.loadSystemConfiguration(str(path))
    scope = SimulatedMicroscope.from_core(core)
    if scope.state is not state:
        raise RuntimeError(f"{path} did not load the simulated devices of {__name__}")
    _set_pixel_size(core, scope.camera_label, state.slide.pixel_size_um)
    return scope
