"""An MDA engine whose autofocus events run the SparseFocus one-shot refocus.

pymmcore-plus's :class:`~pymmcore_plus.mda.MDAEngine` executes useq
autofocus events (``useq.HardwareAutofocus`` actions, which an
``autofocus_plan`` such as ``useq.AxesBasedAF(axes=("p",))`` inserts) with
the core's *hardware* autofocus device, and skips them with a warning when
the core has none. :class:`SparseFocusEngine` runs the image-based one-shot
refocus (:func:`~napari_sparsefocus.hardware.refocus`) instead, and applies
the result exactly as the built-in engine applies a hardware autofocus: the
z change becomes a per-position correction that shifts every later z of that
position (its z stack included).

Register it with ``core.register_mda_engine(SparseFocusEngine(core, model))``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pymmcore_plus.mda import MDAEngine
from useq import HardwareAutofocus

from ._refocus import RefocusOptions, RefocusResult, refocus

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable

    from pymmcore_plus import CMMCorePlus
    from pymmcore_plus.mda._protocol import PImagePayload
    from useq import MDAEvent, MDASequence

    from ..core.nn import SparseFocusModel

__all__ = ["DEFAULT_ACCEPTED_VERDICTS", "AutofocusRecord", "SparseFocusEngine"]

logger = logging.getLogger(__name__)

#: Refocus verdicts whose end position the engine adopts as the new focus.
DEFAULT_ACCEPTED_VERDICTS = ("in_focus", "bracketed", "fallback_in_focus", "unverified")


@dataclass(frozen=True)
class AutofocusRecord:
    """What one autofocus event of a sequence did.

    Attributes
    ----------
    index : dict
        The autofocus event's index (``{"p": 0, "t": 0, ...}``).
    position : int or None
        Its position index (the key of the z correction).
    z_before_um : float
        Focus position when the autofocus began (the event's z plus the
        position's correction so far).
    accepted : bool
        Whether the refocus succeeded and its z was adopted.
    correction_um : float
        The position's z correction after this event (unchanged when not
        accepted).
    result : RefocusResult or None
        The refocus outcome (None if it raised before returning one).
    message : str
        One line: the verdict and what the engine did.
    """

    index: dict[str, int]
    position: int | None
    z_before_um: float
    accepted: bool
    correction_um: float
    result: RefocusResult | None
    message: str


class SparseFocusEngine(MDAEngine):
    """MDA engine that answers useq autofocus events with the SparseFocus refocus.

    Parameters
    ----------
    mmc : CMMCorePlus
        The core (``CMMCorePlus`` or ``UniMMCore``) with a camera and a focus
        stage; no autofocus device is needed.
    model : SparseFocusModel, optional
        Defocus predictor (default: the bundled model, loaded on the first
        autofocus event).
    options : RefocusOptions, optional
        Refocus settings; keyword arguments override its fields.
    accept_verdicts : collection of str, optional
        Refocus verdicts taken as success (default
        :data:`DEFAULT_ACCEPTED_VERDICTS`). Other verdicts ("abstained",
        "budget_spent", "limited", "unconfirmed", "fallback_failed", "error",
        ...) count as failure.
    restore_on_failure : bool, default True
        After a failed autofocus, move the focus stage back to where the
        autofocus began, so the frames that follow are taken exactly as
        without it.
    **kwargs
        More :class:`~pymmcore_plus.mda.MDAEngine` arguments
        (``use_hardware_sequencing``, ``restore_initial_state``, ...) and
        :class:`~napari_sparsefocus.hardware.RefocusOptions` fields
        (``max_moves``, ``z_min_um``, ``fallback``, ...), told apart by name.

    Attributes
    ----------
    autofocus_log : list of AutofocusRecord
        One record per autofocus event of the current (or last) sequence.

    Notes
    -----
    **Per-position correction.** As in the built-in engine, an autofocus
    event arrives with the z of its position (relative z-plan offsets
    removed); ``setup_event`` moves there plus the position's correction so
    far. The refocus then moves to focus, and the change ``z_after -
    z_before`` is added to the correction of that position index; every
    later event of the position (each plane of its z stack, later time
    points) is set to its own z plus the correction.

    **Failure.** When the refocus abstains (no content), ends with an
    unaccepted verdict, or raises, the engine logs a warning, keeps the
    position's previous correction, moves the stage back to where the
    autofocus began (``restore_on_failure``) and carries on with the
    sequence: one empty field does not stop an overnight acquisition.

    **Device name and offset.** The autofocus event's
    ``autofocus_device_name`` and ``autofocus_motor_offset`` address a
    hardware autofocus, which this engine does not use: leave them ``None``
    (any value is ignored, so a sequence written for a hardware autofocus
    runs unchanged). The built-in engine, by contrast, skips every
    autofocus event when ``core.getAutoFocusDevice()`` is empty.
    """

    def __init__(
        self,
        mmc: CMMCorePlus,
        model: SparseFocusModel | None = None,
        *,
        options: RefocusOptions | None = None,
        accept_verdicts: Collection[str] | None = None,
        restore_on_failure: bool = True,
        **kwargs: Any,
    ) -> None:
        engine_names = {
            "use_hardware_sequencing",
            "force_set_xy_position",
            "restore_initial_state",
            "timeout_base",
            "timeout_multiplier",
            "timeout_first_frame",
            "timeout_action",
        }
        engine_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in engine_names}
        super().__init__(mmc, **engine_kwargs)
        # validates the refocus options now rather than at the first autofocus event
        self.refocus_options = (options or RefocusOptions()).replace(**kwargs)
        accepted = tuple(DEFAULT_ACCEPTED_VERDICTS if accept_verdicts is None else accept_verdicts)
        if not accepted or not all(isinstance(v, str) for v in accepted):
            raise ValueError(f"accept_verdicts must be verdict names, got {accept_verdicts!r}")
        self.accept_verdicts = accepted
        self.restore_on_failure = bool(restore_on_failure)
        self.model = model
        self.autofocus_log: list[AutofocusRecord] = []

    def setup_sequence(self, sequence: MDASequence) -> Any:
        """Set up the sequence and clear :attr:`autofocus_log` (and the corrections)."""
        self.autofocus_log = []
        return super().setup_sequence(sequence)

    def exec_event(self, event: MDAEvent) -> Iterable[PImagePayload | None]:
        """Run autofocus events with the SparseFocus refocus; everything else as usual."""
        if isinstance(getattr(event, "action", None), HardwareAutofocus):
            self._autofocus(event)
            return ()
        return super().exec_event(event)

    def z_correction_um(self, position: int | None = None) -> float:
        """Return the current z correction of a position index (0 if none yet).

        Parameters
        ----------
        position : int, optional
            Position index (``event.index["p"]``; None for sequences without
            positions).

        Returns
        -------
        float
            Correction added to that position's z (µm).
        """
        return float(self._z_correction.get(position, 0.0))

    def _load_model(self) -> SparseFocusModel:
        if self.model is None:
            from ..core.nn import load_model

            self.model = load_model()
        return self.model

    def _autofocus(self, event: MDAEvent) -> None:
        core = self.mmcore
        p_idx = event.index.get("p", None)
        previous = self.z_correction_um(p_idx)
        z_before = float(core.getZPosition())
        result: RefocusResult | None = None
        try:
            result = refocus(core, self._load_model(), options=self.refocus_options)
        except Exception as exc:  # a refocus failure must not end the acquisition
            message = f"refocus raised {type(exc).__name__}: {exc}"
        else:
            message = f"refocus {result.verdict}: {result.message}"
        accepted = (
            result is not None
            and result.verdict in self.accept_verdicts
            and math.isfinite(result.final_z_um)
        )
        if accepted and result is not None:
            correction = previous + (result.final_z_um - z_before)
            self._z_correction[p_idx] = correction
            self._af_succeeded = True
            logger.info(
                "autofocus at %s: %s; z correction of position %s now %.3f µm",
                dict(event.index),
                message,
                p_idx,
                correction,
            )
        else:
            correction = previous
            self._af_succeeded = False
            logger.warning(
                "autofocus at %s failed (%s); keeping the z correction of position %s "
                "(%.3f µm) and continuing",
                dict(event.index),
                message,
                p_idx,
                previous,
            )
            if self.restore_on_failure:
                self._restore_z(z_before)
        self.autofocus_log.append(
            AutofocusRecord(
                index=dict(event.index),
                position=p_idx,
                z_before_um=z_before,
                accepted=accepted,
                correction_um=correction,
                result=result,
                message=message,
            )
        )

    def _restore_z(self, z_um: float) -> None:
        core = self.mmcore
        try:
            if abs(float(core.getZPosition()) - z_um) > 1e-9:
                core.setZPosition(z_um)
                core.waitForDevice(core.getFocusDevice())
        except Exception as exc:  # the next event's setup moves z anyway (if it has one)
            logger.warning("could not move the focus back to %.3f µm: %s", z_um, exc)
