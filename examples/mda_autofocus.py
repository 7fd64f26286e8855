"""Multi-position acquisition with SparseFocus autofocus on the simulated microscope.

A useq ``MDASequence`` visits four positions of the simulated microscope's
uneven virtual slide, all given at the slide's nominal focus, and takes a
small z stack at each. Its ``autofocus_plan`` (``useq.AxesBasedAF(axes=("p",))``)
asks for an autofocus whenever the position changes. The built-in
pymmcore-plus engine would need a hardware autofocus device for that;
:class:`~napari_sparsefocus.hardware.SparseFocusEngine` answers it with the
one-shot SparseFocus refocus and shifts the position's z stack by the focus it
found.

The script runs the sequence twice, with the built-in engine (autofocus
skipped: no autofocus device) and with the SparseFocus engine, and prints for
every frame the true defocus of the image (ground truth the simulator knows)
next to the z offset the z plan asked for. In focus means the two agree within
the depth of field.

Run: ``python examples/mda_autofocus.py`` (about a minute on a laptop CPU).
"""

from __future__ import annotations

import gc
import logging

import useq
from pymmcore_plus.experimental.unicore import UniMMCore
from pymmcore_plus.mda import MDAEngine

from napari_sparsefocus import load_model
from napari_sparsefocus.hardware import SparseFocusEngine, load_simulated_microscope


def run(core, scope, sequence, offsets):
    """Run ``sequence``; return (position, z offset, true defocus) of every frame."""
    frames = []

    def on_frame(image, event, meta):
        frames.append((event.index["p"], offsets[event.index["z"]], scope.true_defocus_um()))

    core.mda.events.frameReady.connect(on_frame)
    try:
        core.mda.run(sequence)
    finally:
        core.mda.events.frameReady.disconnect(on_frame)
    return frames


def _flag(defocus_um: float, offset_um: float, dof_um: float) -> str:
    return "ok " if abs(defocus_um - offset_um) <= dof_um else "OUT"


def main() -> None:
    """Run the sequence with both engines and print the per-frame true defocus."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    core = UniMMCore()
    # a 672 x 672 px camera keeps the example quick; the default is 1120 x 1120
    scope = load_simulated_microscope(core, seed=0, sensor_shape_px=(672, 672))
    slide, dof = scope.slide, scope.optics.dof_um
    z0 = slide.z_nominal_um

    # four sites with content, spread over the slide (their focus differs by µm)
    sites = slide.find_sites("dense", n=4, seed=1, margin_sites=5)
    z_plan = useq.ZRangeAround(range=1.0, step=0.5)  # -0.5, 0, +0.5 µm around focus
    sequence = useq.MDASequence(
        stage_positions=[(s.x_um, s.y_um, z0) for s in sites],
        z_plan=z_plan,
        axis_order="pz",
        # autofocus whenever the position changes; no device name is needed
        autofocus_plan=useq.AxesBasedAF(axes=("p",)),
    )
    offsets = list(z_plan)
    print(f"depth of field {dof:.2f} µm; positions (true focus relative to the nominal z):")
    for p, s in enumerate(sites):
        print(
            f"  p{p}: ({s.x_um:8.1f}, {s.y_um:8.1f}) µm, {s.sparsity} {s.kind}, "
            f"focus {slide.z_focus_um(s.x_um, s.y_um) - z0:+.2f} µm"
        )

    model = load_model()
    results = {}
    for name, engine in (
        ("built-in", MDAEngine(core)),
        ("SparseFocus", SparseFocusEngine(core, model)),
    ):
        core.register_mda_engine(engine)
        results[name] = run(core, scope, sequence, offsets)

    print("\nframe        z offset   true defocus (built-in)   true defocus (SparseFocus)")
    for (p, off, d_plain), (_, _, d_sf) in zip(
        results["built-in"], results["SparseFocus"], strict=True
    ):
        print(
            f"p{p} z{off:+.1f}     {off:+.2f}      {d_plain:+6.2f} {_flag(d_plain, off, dof)}"
            f"                {d_sf:+6.2f} {_flag(d_sf, off, dof)}"
        )
    for name, frames in results.items():
        n_ok = sum(abs(d - off) <= dof for _, off, d in frames)
        print(f"{name}: {n_ok}/{len(frames)} frames within the depth of field of their plane")
    engine = core.mda.engine
    if isinstance(engine, SparseFocusEngine):
        for rec in engine.autofocus_log:
            print(
                f"autofocus p{rec.position}: {'adopted' if rec.accepted else 'FAILED'}, "
                f"correction {rec.correction_um:+.2f} µm ({rec.message})"
            )

    # drop the core before exit: a core still holding Python devices can abort the interpreter
    scope.unload()
    del scope, core
    gc.collect()


if __name__ == "__main__":
    main()
