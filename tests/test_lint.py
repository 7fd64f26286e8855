"""Static checks the project holds itself to: ruff (numpydoc docstrings) and mypy --strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    exe = BIN / cmd[0]
    if not exe.exists():
        pytest.skip(f"{cmd[0]} is not installed in this environment")
    return subprocess.run(
        [str(exe), *cmd[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff_clean():
    r = _run("ruff", "check", "src", "tests", "benchmarks")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_clean():
    r = _run("mypy")
    assert r.returncode == 0, r.stdout + r.stderr


def test_core_never_imports_gui_torch_or_hardware():
    code = (
        "import sys, napari_sparsefocus, napari_sparsefocus.core, napari_sparsefocus.evaluation, "
        "napari_sparsefocus.io\n"
        "bad = [m for m in ('torch', 'napari', 'qtpy', 'PyQt6', 'pymmcore_plus', 'magicgui') "
        "if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""
