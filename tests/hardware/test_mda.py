from __future__ import annotations

import pytest

pytest.importorskip("pymmcore_plus")

import useq
from pymmcore_plus.mda import MDAEngine

from napari_sparsefocus.hardware import SparseFocusEngine

#: Relative z plan of every position: two planes, 0.5 µm below and above.
Z_PLAN = useq.ZRangeAround(range=1.0, step=1.0)


@pytest.fixture(scope="module")
def model():
    from napari_sparsefocus import load_model

    return load_model()


def _positions(scope, n=3):
    """``n`` dense sites whose focus lies 1.3 DoF to 3 µm off the nominal focus."""
    slide, dof = scope.slide, scope.optics.dof_um
    z0 = slide.z_nominal_um
    out = []
    for site in slide.find_sites("dense", n=40, seed=0, margin_sites=3):
        dz = slide.z_focus_um(site.x_um, site.y_um) - z0
        if 1.3 * dof < abs(dz) < 3.0:
            out.append(site)
        if len(out) == n:
            return out
    raise AssertionError("not enough off-focus dense sites on the test slide")


def _sequence(sites, z_um, autofocus=True):
    return useq.MDASequence(
        stage_positions=[(s.x_um, s.y_um, z_um) for s in sites],
        z_plan=Z_PLAN,
        axis_order="pz",
        autofocus_plan=useq.AxesBasedAF(axes=("p",)) if autofocus else None,
    )


def _run(scope, seq):
    """Run ``seq``; return ``(index, planned z offset, true defocus)`` of every frame."""
    offsets = list(Z_PLAN)
    frames = []

    def on_frame(img, event, meta):
        frames.append((dict(event.index), offsets[event.index["z"]], scope.true_defocus_um()))

    scope.core.mda.events.frameReady.connect(on_frame)
    try:
        scope.core.mda.run(seq)
    finally:
        scope.core.mda.events.frameReady.disconnect(on_frame)
    return frames


def test_engine_keeps_every_frame_in_focus(microscope, model):
    core, dof = microscope.core, microscope.optics.dof_um
    sites = _positions(microscope)
    z0 = microscope.slide.z_nominal_um
    seq = _sequence(sites, z0)

    # the built-in engine has no autofocus device: it skips the autofocus events,
    # and the uneven slide puts frames out of the depth of field
    core.register_mda_engine(MDAEngine(core))
    plain = _run(microscope, seq)
    assert len(plain) == 6
    assert max(abs(d - off) for _, off, d in plain) > dof

    engine = SparseFocusEngine(core, model)
    core.register_mda_engine(engine)
    assert core.mda.engine is engine
    frames = _run(microscope, seq)
    assert len(frames) == 6
    for index, off, d in frames:
        assert abs(d - off) <= dof, (index, off, d)
    # one autofocus per position, each adopted as that position's correction
    assert [r.position for r in engine.autofocus_log] == [0, 1, 2]
    assert all(r.accepted for r in engine.autofocus_log)
    for p, site in enumerate(sites):
        true_shift = microscope.slide.z_focus_um(site.x_um, site.y_um) - z0
        assert engine.z_correction_um(p) == pytest.approx(true_shift, abs=dof)
        assert engine.autofocus_log[p].correction_um == engine.z_correction_um(p)


def test_failed_autofocus_keeps_the_correction_and_continues(microscope, model):
    core = microscope.core
    sites = _positions(microscope, 2)
    z0 = microscope.slide.z_nominal_um
    engine = SparseFocusEngine(core, model, max_moves=2)
    core.register_mda_engine(engine)
    # the first camera frame (the autofocus snap at position 0) fails
    microscope.inject_fault("camera", after=1, times=1)
    frames = _run(microscope, _sequence(sites, z0))
    assert len(frames) == 4  # the sequence went on
    first, second = engine.autofocus_log
    assert not first.accepted and first.result is not None and first.result.verdict == "error"
    assert first.correction_um == 0.0 == engine.z_correction_um(0)
    assert second.accepted and engine.z_correction_um(1) != 0.0
    # position 0 imaged at its uncorrected z, position 1 in focus
    dof = microscope.optics.dof_um
    p0 = [d - off for idx, off, d in frames if idx["p"] == 0]
    p1 = [d - off for idx, off, d in frames if idx["p"] == 1]
    true0 = z0 - microscope.slide.z_focus_um(sites[0].x_um, sites[0].y_um)
    assert p0 == pytest.approx([true0, true0], abs=1e-6)
    assert all(abs(v) <= dof for v in p1)


def test_options_are_validated(microscope):
    with pytest.raises(ValueError, match="unknown refocus option"):
        SparseFocusEngine(microscope.core, max_movez=3)
    with pytest.raises(ValueError, match="accept_verdicts"):
        SparseFocusEngine(microscope.core, accept_verdicts=())
    engine = SparseFocusEngine(microscope.core, use_hardware_sequencing=False, max_moves=4)
    assert engine.use_hardware_sequencing is False
    assert engine.refocus_options.max_moves == 4
