"""The `sparsefocus` command line, run in-process and as a console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_sparsefocus.cli import main
from napari_sparsefocus.io import read_stack

BEADS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "beads_confocal_imagej.tif"


def test_simulate_writes_a_labelled_ome_tiff(tmp_path, capsys):
    out = tmp_path / "s.ome.tif"
    rc = main(
        [
            "simulate",
            str(out),
            "--kind",
            "tissue",
            "--sparsity",
            "dense",
            "--z-range",
            "-2",
            "2",
            "1",
            "--size",
            "448",
            "--seed",
            "3",
        ]
    )
    assert rc == 0
    assert "wrote" in capsys.readouterr().out
    st = read_stack(out)
    assert st.data.shape == (5, 448, 448, 3)
    assert st.z_step_um == pytest.approx(1.0)
    assert st.pixel_size_um == pytest.approx(0.1725)
    assert st.metadata["defocus_um"] == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert st.metadata["kind"] == "tissue"


def test_focus_json_on_a_simulated_stack_finds_defocus_zero(tmp_path, capsys):
    out = tmp_path / "s.ome.tif"
    main(
        [
            "simulate",
            str(out),
            "--kind",
            "cell",
            "--sparsity",
            "dense",
            "--z-range",
            "-5",
            "5",
            "1",
            "--size",
            "448",
        ]
    )
    capsys.readouterr()
    assert main(["focus", str(out), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["z_um"] == [float(v) for v in range(-5, 6)]
    assert abs(rec["focal_plane_z_um"]) < 1.0
    assert rec["trustworthy"] is True
    assert len(rec["curve"]) == 11


def test_focus_on_the_real_bead_stack(capsys):
    if not BEADS.exists():
        pytest.skip("shared bead stack not available")
    assert main(["focus", str(BEADS), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["focal_plane_index"] in (23, 24)
    np.testing.assert_allclose(np.diff(rec["z_um"]), 0.125)


def test_focus_reports_bad_files_cleanly(tmp_path, capsys):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all")
    assert main(["focus", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.tif" in err and "Traceback" not in err


def test_console_script_is_installed(tmp_path):
    exe = Path(sys.executable).parent / "sparsefocus"
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for sub in ("simulate", "focus", "demo"):
        assert sub in r.stdout
