from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("build")
    pytest.importorskip("hatchling")
    outdir = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(outdir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [whl] = outdir.glob("napari_sparsefocus-*.whl")
    return whl


def test_wheel_contains_manifest_as_regular_file(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        info = zf.getinfo("napari_sparsefocus/napari.yaml")
        content = zf.read(info)
    is_symlink = (info.external_attr >> 16) & 0o170000 == 0o120000
    assert not is_symlink
    assert content == (REPO / "napari.yaml").read_bytes()


def test_wheel_registers_napari_manifest_entry_point(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        [name] = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
        text = zf.read(name).decode("utf-8")
    parser = configparser.ConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    assert parser["napari.manifest"]["napari-sparsefocus"] == "napari_sparsefocus:napari.yaml"


def test_wheel_contains_io_modules(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    for module in ("__init__", "_tiff", "_napari", "_sample_data"):
        assert f"napari_sparsefocus/io/{module}.py" in names


def test_wheel_ships_the_bundled_models(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    for stem in ("default", "baselines/liao", "baselines/jiang", "baselines/dastidar"):
        for ext in ("json", "safetensors"):
            assert f"napari_sparsefocus/models/{stem}.{ext}" in names


def test_wheel_ships_the_simulated_microscope_config(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        cfg = zf.read("napari_sparsefocus/hardware/simulated.cfg").decode()
    assert "napari_sparsefocus/hardware/_simulated.py" in names
    # the devices are Python devices, declared with pymmcore-plus's `#py pyDevice` lines
    assert "#py pyDevice" in cfg
