from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import npe2
import pytest

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "napari.yaml"
NPE2 = Path(sys.executable).parent / "npe2"

COMMANDS = {
    "napari-sparsefocus.get_reader": "napari_sparsefocus.io._napari:napari_get_reader",
    "napari-sparsefocus.write_image": "napari_sparsefocus.io._napari:napari_write_image",
    "napari-sparsefocus.sample_sparse_cells": (
        "napari_sparsefocus.io._sample_data:sample_sparse_cells"
    ),
    "napari-sparsefocus.sample_dense_tissue": (
        "napari_sparsefocus.io._sample_data:sample_dense_tissue"
    ),
}


@pytest.fixture(scope="module")
def manifest() -> npe2.PluginManifest:
    return npe2.PluginManifest.from_file(MANIFEST)


def test_manifest_loads(manifest: npe2.PluginManifest) -> None:
    assert manifest.name == "napari-sparsefocus"
    assert manifest.display_name == "SparseFocus"


def test_commands_point_at_submodules_and_resolve(manifest: npe2.PluginManifest) -> None:
    commands = {c.id: c.python_name for c in manifest.contributions.commands or []}
    assert {k: commands[k] for k in COMMANDS} == COMMANDS
    for command in manifest.contributions.commands or []:
        module = command.python_name.split(":")[0] if command.python_name else ""
        assert module != "napari_sparsefocus", f"{command.id} points at the package __init__"
    for python_name in COMMANDS.values():
        module_name, attr = python_name.split(":")
        module = __import__(module_name, fromlist=[attr])
        assert callable(getattr(module, attr))


def test_reader_writer_sample_contributions(manifest: npe2.PluginManifest) -> None:
    [reader] = manifest.contributions.readers or []
    assert reader.command == "napari-sparsefocus.get_reader"
    assert set(reader.filename_patterns) == {"*.tif", "*.tiff", "*.ome.tif", "*.ome.tiff"}
    assert reader.accepts_directories is False
    [writer] = manifest.contributions.writers or []
    assert writer.command == "napari-sparsefocus.write_image"
    assert [str(t) for t in writer.layer_types] == ["image"]
    assert writer.filename_extensions == [".ome.tif", ".tif", ".tiff"]
    samples = {s.key: s for s in manifest.contributions.sample_data or []}
    assert set(samples) == {"sparse_cells", "dense_tissue"}
    assert all(s.display_name for s in samples.values())


def test_npe2_validate_with_imports() -> None:
    if not NPE2.exists():
        pytest.skip(f"{NPE2} not installed")
    result = subprocess.run(
        [str(NPE2), "validate", "napari-sparsefocus", "--imports"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_manifest_is_discoverable_through_entry_point() -> None:
    [ep] = [e for e in entry_points(group="napari.manifest") if e.name == "napari-sparsefocus"]
    assert ep.value == "napari_sparsefocus:napari.yaml"
    installed = npe2.PluginManifest.from_distribution("napari-sparsefocus")
    assert installed.name == "napari-sparsefocus"
    from_file = npe2.PluginManifest.from_file(MANIFEST)
    assert installed.contributions.model_dump() == from_file.contributions.model_dump()


def test_reader_is_offered_for_tiff_files() -> None:
    pm = npe2.PluginManager()
    pm.discover(include_npe1=False)
    names = {r.plugin_name for r in pm.iter_compatible_readers(["stack.ome.tif"])}
    assert "napari-sparsefocus" in names
    assert "napari-sparsefocus" not in {
        r.plugin_name for r in pm.iter_compatible_readers(["image.png"])
    }
