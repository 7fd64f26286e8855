from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_sparsefocus.io import MissingZStepWarning, read_stack, write_stack
from napari_sparsefocus.io._napari import napari_get_reader

REPO = Path(__file__).resolve().parents[2]
BEADS = REPO.parent / "shared" / "data" / "beads_confocal_imagej.tif"


def _is_lazy(data: object) -> bool:
    """A memory map or a dask array, not an in-RAM ndarray copy."""
    if isinstance(data, np.memmap):
        return True
    try:
        import dask.array as da
    except ImportError:  # pragma: no cover
        return False
    return isinstance(data, da.Array)


def _stack(shape: tuple[int, ...], dtype: str = "uint8", seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not BEADS.is_file(), reason=f"{BEADS} not available")
def test_real_imagej_confocal_stack() -> None:
    with tifffile.TiffFile(BEADS) as tf:
        num, den = tf.pages.first.tags["XResolution"].value
        expected_pixel_um = den / num  # ImageJ: pixels per unit, unit µm
        expected = tf.series[0].asarray()
    stack = read_stack(BEADS)
    assert stack.axes == "ZYX"
    assert stack.n_planes == 41
    assert stack.data.shape == (41, 150, 150)
    assert stack.data.dtype == np.uint8
    assert stack.z_step_um == pytest.approx(0.125)
    assert stack.pixel_size_um == pytest.approx(expected_pixel_um, rel=1e-9)
    assert stack.rgb is False
    assert stack.metadata == {}
    assert _is_lazy(stack.data)
    np.testing.assert_array_equal(np.asarray(stack.data), expected)


@pytest.mark.skipif(not BEADS.is_file(), reason=f"{BEADS} not available")
def test_real_stack_through_napari_reader() -> None:
    reader = napari_get_reader(str(BEADS))
    assert reader is not None
    [(data, kwargs, layer_type)] = reader(str(BEADS))
    assert layer_type == "image"
    assert kwargs["name"] == "beads_confocal_imagej"
    assert kwargs["scale"][0] == pytest.approx(0.125)
    assert (
        kwargs["scale"][1] == kwargs["scale"][2] == pytest.approx(read_stack(BEADS).pixel_size_um)
    )
    assert kwargs["rgb"] is False
    assert data.shape == (41, 150, 150)


# --------------------------------------------------------------------------- laziness


def test_large_uncompressed_stack_is_memory_mapped(tmp_path: Path) -> None:
    images = _stack((48, 256, 256), "uint16")  # 6 MB
    path = write_stack(tmp_path / "big.ome.tif", images, z_step_um=0.5, pixel_size_um=0.1)
    stack = read_stack(path)
    assert isinstance(stack.data, np.memmap)
    assert not stack.data.flags.writeable
    np.testing.assert_array_equal(stack.data[17], images[17])


def test_compressed_stack_is_read_lazily_with_dask(tmp_path: Path) -> None:
    da = pytest.importorskip("dask.array")
    images = _stack((6, 40, 56, 3))
    path = tmp_path / "zlib.tif"
    tifffile.imwrite(
        path,
        images,
        imagej=True,
        photometric="rgb",
        compression="zlib",
        resolution=(1 / 0.25, 1 / 0.25),
        metadata={"axes": "ZYXS", "spacing": 0.75, "unit": "um"},
    )
    stack = read_stack(path)
    assert isinstance(stack.data, da.Array)
    assert stack.axes == "ZYXS" and stack.rgb
    assert stack.z_step_um == pytest.approx(0.75)
    assert stack.pixel_size_um == pytest.approx(0.25)
    np.testing.assert_array_equal(stack.data.compute(), images)


def test_planar_rgb_is_moved_to_last_axis(tmp_path: Path) -> None:
    images = _stack((3, 20, 30, 3))
    path = tmp_path / "planar.ome.tif"
    tifffile.imwrite(
        path,
        np.moveaxis(images, -1, 1),
        ome=True,
        photometric="rgb",
        planarconfig="separate",
        metadata={"axes": "ZSYX", "PhysicalSizeZ": 2.0},
    )
    stack = read_stack(path)
    assert stack.axes == "ZYXS" and stack.rgb
    assert stack.z_step_um == pytest.approx(2.0)
    np.testing.assert_array_equal(np.asarray(stack.data), images)


# --------------------------------------------------------------------------- metadata


@pytest.mark.parametrize(
    ("unit", "um_per_unit"),
    [("µm", 1.0), ("nm", 1e-3), ("mm", 1e3), ("um", 1.0)],
)
def test_ome_physical_sizes_are_converted_to_um(
    tmp_path: Path, unit: str, um_per_unit: float
) -> None:
    path = tmp_path / "units.ome.tif"
    tifffile.imwrite(
        path,
        _stack((4, 16, 16)),
        ome=True,
        metadata={
            "axes": "ZYX",
            "PhysicalSizeX": 0.3 / um_per_unit,
            "PhysicalSizeXUnit": unit,
            "PhysicalSizeY": 0.3 / um_per_unit,
            "PhysicalSizeYUnit": unit,
            "PhysicalSizeZ": 1.5 / um_per_unit,
            "PhysicalSizeZUnit": unit,
        },
    )
    stack = read_stack(path)
    assert stack.pixel_size_um == pytest.approx(0.3)
    assert stack.z_step_um == pytest.approx(1.5)


@pytest.mark.parametrize("unit", ["micron", "\\u00B5m", "um"])
def test_imagej_units(tmp_path: Path, unit: str) -> None:
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path,
        _stack((5, 16, 16)),
        imagej=True,
        resolution=(1 / 0.2, 1 / 0.2),
        metadata={"axes": "ZYX", "spacing": 0.4, "unit": unit},
    )
    stack = read_stack(path)
    assert stack.z_step_um == pytest.approx(0.4)
    assert stack.pixel_size_um == pytest.approx(0.2)


def test_imagej_nm_unit_is_converted(tmp_path: Path) -> None:
    path = tmp_path / "ij_nm.tif"
    tifffile.imwrite(
        path,
        _stack((3, 16, 16)),
        imagej=True,
        resolution=(1 / 80.0, 1 / 80.0),  # 80 nm pixels
        metadata={"axes": "ZYX", "spacing": 250.0, "unit": "nm"},
    )
    stack = read_stack(path)
    assert stack.z_step_um == pytest.approx(0.25)
    assert stack.pixel_size_um == pytest.approx(0.08)


def test_missing_z_step_warns_and_napari_uses_scale_one(tmp_path: Path) -> None:
    path = tmp_path / "nometa.tif"
    tifffile.imwrite(path, _stack((4, 16, 16)), photometric="minisblack")
    with pytest.warns(MissingZStepWarning, match="nometa.tif"):
        stack = read_stack(path)
    assert stack.z_step_um is None
    assert stack.pixel_size_um is None
    assert stack.axes == "ZYX"  # generic page axis read as z
    reader = napari_get_reader(str(path))
    assert reader is not None
    with pytest.warns(MissingZStepWarning):
        [(_, kwargs, _)] = reader(str(path))
    assert kwargs["scale"] == (1.0, 1.0, 1.0)


def test_single_plane_without_z_step_does_not_warn(tmp_path: Path) -> None:
    path = tmp_path / "plane.tif"
    tifffile.imwrite(path, _stack((16, 24)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stack = read_stack(path)
    assert stack.axes == "YX" and stack.n_planes == 1


def _ij(path: Path, **metadata: object) -> Path:
    tifffile.imwrite(
        path, _stack((3, 16, 16)), imagej=True, metadata={"axes": "ZYX", "unit": "um", **metadata}
    )
    return path


@pytest.mark.parametrize("spacing", [0.0, -0.5, math.nan, math.inf])
def test_bad_imagej_spacing_raises(tmp_path: Path, spacing: float) -> None:
    path = _ij(tmp_path / "bad.tif", spacing=spacing)
    with pytest.raises(ValueError, match=r"bad\.tif.*spacing"):
        read_stack(path)


@pytest.mark.parametrize("size", [0.0, -1.0])
def test_bad_ome_physical_size_raises(tmp_path: Path, size: float) -> None:
    path = tmp_path / "bad.ome.tif"
    tifffile.imwrite(
        path, _stack((3, 16, 16)), ome=True, metadata={"axes": "ZYX", "PhysicalSizeZ": size}
    )
    with pytest.raises(ValueError, match="PhysicalSizeZ"):
        read_stack(path)


def test_non_square_pixels_raise(tmp_path: Path) -> None:
    path = tmp_path / "aniso.ome.tif"
    tifffile.imwrite(
        path,
        _stack((3, 16, 16)),
        ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.4, "PhysicalSizeZ": 1.0},
    )
    with pytest.raises(ValueError, match="non-square"):
        read_stack(path)


def _ome_with_imagej(path: Path, ome_z: float, ij_spacing: float) -> Path:
    """An OME-TIFF whose second ImageDescription carries ImageJ metadata too."""
    ij = f"ImageJ=1.11a\nimages=3\nslices=3\nspacing={ij_spacing}\nunit=micron\n"
    tifffile.imwrite(
        path,
        _stack((3, 16, 16)),
        ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeZ": ome_z, "PhysicalSizeZUnit": "nm"},
        extratags=[("ImageDescription", 2, 0, ij, True)],
    )
    with tifffile.TiffFile(path) as tf:
        assert tf.is_ome and tf.is_imagej
    return path


def test_ome_and_imagej_that_agree_are_accepted(tmp_path: Path) -> None:
    stack = read_stack(_ome_with_imagej(tmp_path / "both.ome.tif", 500.0, 0.5))
    assert stack.z_step_um == pytest.approx(0.5)


def test_ome_and_imagej_that_disagree_raise(tmp_path: Path) -> None:
    path = _ome_with_imagej(tmp_path / "both.ome.tif", 500.0, 0.7)
    with pytest.raises(ValueError, match="z-step differs"):
        read_stack(path)


# --------------------------------------------------------------------------- bad files


def test_not_a_tiff_raises(tmp_path: Path) -> None:
    path = tmp_path / "text.tif"
    path.write_text("this is not an image\n")
    with pytest.raises(ValueError, match=r"text\.tif.*TIFF"):
        read_stack(path)


def test_empty_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "empty.tif"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.tif"):
        read_stack(path)


def test_tiff_without_images_raises(tmp_path: Path) -> None:
    path = tmp_path / "nopages.tif"
    path.write_bytes(b"II*\x00\x00\x00\x00\x00")  # valid header, no image directory
    with pytest.raises(ValueError, match="no images"):
        read_stack(path)


def test_zero_plane_stack_raises(tmp_path: Path) -> None:
    path = tmp_path / "zero.tif"
    with pytest.warns(UserWarning, match="zero-size"):
        tifffile.imwrite(path, np.zeros((0, 16, 16), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        read_stack(path)


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.95])
def test_truncated_file_raises(tmp_path: Path, fraction: float) -> None:
    full = write_stack(tmp_path / "full.ome.tif", _stack((6, 32, 32)), z_step_um=1.0)
    blob = full.read_bytes()
    path = tmp_path / "cut.ome.tif"
    path.write_bytes(blob[: int(len(blob) * fraction)])
    with pytest.raises(ValueError, match=r"cut\.ome\.tif"):
        read_stack(path)


def test_truncated_compressed_file_raises(tmp_path: Path) -> None:
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, _stack((6, 32, 32)), compression="zlib")
    blob = full.read_bytes()
    path = tmp_path / "cut.tif"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"cut\.tif"):
        read_stack(path)


def test_time_series_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, _stack((3, 4, 16, 16)), imagej=True, metadata={"axes": "TZYX"})
    with pytest.raises(ValueError, match="time series"):
        read_stack(path)


def test_multichannel_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "channels.tif"
    tifffile.imwrite(path, _stack((4, 2, 16, 16)), imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(ValueError, match="channel"):
        read_stack(path)


def test_non_tiff_name_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a TIFF file name"):
        read_stack(tmp_path / "image.png")
    with pytest.raises(FileNotFoundError):
        read_stack(tmp_path / "absent.tif")


# --------------------------------------------------------------------------- napari reader


def test_get_reader_declines_what_it_cannot_read(tmp_path: Path) -> None:
    good = write_stack(tmp_path / "good.tif", _stack((2, 8, 8)), z_step_um=1.0)
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all")
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG")
    assert napari_get_reader(str(png)) is None
    assert napari_get_reader([str(good), str(png)]) is None
    assert napari_get_reader(str(bad)) is None
    assert napari_get_reader([str(good), str(bad)]) is None
    assert napari_get_reader(str(tmp_path / "absent.tif")) is None
    assert napari_get_reader(str(tmp_path)) is None
    assert napari_get_reader([]) is None
    assert napari_get_reader(str(good)) is not None


def test_reader_returns_one_layer_per_file(tmp_path: Path) -> None:
    a = write_stack(tmp_path / "a.ome.tif", _stack((3, 8, 8)), z_step_um=2.0, pixel_size_um=0.5)
    b = write_stack(tmp_path / "b.tiff", _stack((8, 8, 3)), pixel_size_um=0.25, metadata={"k": 1})
    paths = [str(a), str(b)]
    reader = napari_get_reader(paths)
    assert reader is not None
    layers = reader(paths)
    assert [kw["name"] for _, kw, _ in layers] == ["a", "b"]
    (_, kw_a, _), (data_b, kw_b, _) = layers
    assert kw_a["scale"] == (2.0, 0.5, 0.5) and kw_a["rgb"] is False
    assert kw_b["scale"] == (0.25, 0.25) and kw_b["rgb"] is True and data_b.shape == (8, 8, 3)
    assert kw_b["metadata"] == {"k": 1}


def test_viewer_opens_written_stack(make_napari_viewer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    images = _stack((5, 24, 32, 3))
    path = write_stack(
        tmp_path / "viewer.ome.tif",
        images,
        z_step_um=0.5,
        pixel_size_um=0.2,
        metadata={"defocus_um": [-1.0, -0.5, 0.0, 0.5, 1.0]},
    )
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-sparsefocus")
    assert len(layers) == 1 and len(viewer.layers) == 1
    layer = viewer.layers[0]
    assert type(layer).__name__ == "Image"
    assert layer.rgb
    assert layer.data.shape == images.shape
    np.testing.assert_allclose(layer.scale, [0.5, 0.2, 0.2])
    assert layer.metadata["defocus_um"] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    np.testing.assert_array_equal(np.asarray(layer.data[2]), images[2])

    # Saving the layer through napari with this plugin's writer round-trips.
    out = tmp_path / "saved.ome.tif"
    written = layer.save(str(out), plugin="napari-sparsefocus")
    assert [Path(p) for p in written] == [out]
    saved = read_stack(out)
    assert saved.z_step_um == pytest.approx(0.5)
    assert saved.pixel_size_um == pytest.approx(0.2)
    assert saved.rgb and saved.metadata == {"defocus_um": [-1.0, -0.5, 0.0, 0.5, 1.0]}
    np.testing.assert_array_equal(np.asarray(saved.data), images)


def test_viewer_round_trip_without_z_step(make_napari_viewer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    images = _stack((3, 16, 16), "uint16")
    path = tmp_path / "noz.tif"
    tifffile.imwrite(path, images, photometric="minisblack")
    viewer = make_napari_viewer()
    with pytest.warns(MissingZStepWarning, match="noz.tif"):
        viewer.open(str(path), plugin="napari-sparsefocus")
    layer = viewer.layers[0]
    np.testing.assert_allclose(layer.scale, [1.0, 1.0, 1.0])
    out = tmp_path / "noz_saved.tif"
    layer.save(str(out), plugin="napari-sparsefocus")
    with pytest.warns(MissingZStepWarning):
        saved = read_stack(out)
    assert saved.z_step_um is None  # the placeholder scale of 1 is not saved as 1 µm
    assert saved.pixel_size_um is None
    np.testing.assert_array_equal(np.asarray(saved.data), images)


def test_io_modules_import_neither_napari_nor_qt_nor_torch() -> None:
    code = (
        "import sys\n"
        "import napari_sparsefocus.io, napari_sparsefocus.io._napari\n"
        "import napari_sparsefocus.io._sample_data\n"
        "heavy = ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'torch', 'dask')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
