from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING

import numpy as np
import pytest
import tifffile

from napari_sparsefocus.io import METADATA_TAG, read_stack, write_stack
from napari_sparsefocus.io._napari import napari_get_reader, napari_write_image

if TYPE_CHECKING:
    from pathlib import Path


def _images(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(size=shape).astype(dtype)
    if np.dtype(dtype).kind == "b":
        return rng.random(shape) > 0.5
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


LABELS = {
    "kind": "cell",
    "sparsity": "extremely_sparse",
    "defocus_um": [-1.5, -0.5, 0.5, 1.5],
    "importance": [[0.0, 0.25, 1.0], [0.1 + 0.2, 1e-300, 123456789.123456789]],
    "optics": {"na": 0.75, "wavelengths_um": [0.61, 0.53, 0.47], "name": "20x / 0.75 µm ✓"},
    "seed": 2**62 + 1,
    "noise": True,
    "note": None,
}


@pytest.mark.parametrize(
    ("shape", "dtype", "rgb"),
    [
        ((4, 20, 30), "uint16", False),
        ((4, 20, 30, 3), "uint8", True),
        ((20, 30), "float32", False),
        ((20, 30, 3), "uint8", True),
        ((4, 20, 30), "float64", False),
        ((4, 20, 30), "int16", False),
        ((4, 20, 30), "bool", False),
    ],
)
def test_round_trip(tmp_path: Path, shape: tuple[int, ...], dtype: str, rgb: bool) -> None:
    images = _images(shape, dtype)
    path = write_stack(
        tmp_path / "stack.ome.tif", images, z_step_um=0.5, pixel_size_um=0.1725, metadata=LABELS
    )
    assert path == tmp_path / "stack.ome.tif"
    stack = read_stack(path)
    assert stack.rgb is rgb
    assert stack.axes == ("ZYX" if len(shape) - rgb == 3 else "YX") + ("S" if rgb else "")
    assert stack.data.shape == shape
    assert stack.data.dtype == images.dtype
    np.testing.assert_array_equal(np.asarray(stack.data), images)
    assert stack.pixel_size_um == 0.1725
    assert stack.z_step_um == 0.5
    assert stack.metadata == LABELS


def test_written_file_is_standard_ome_tiff(tmp_path: Path) -> None:
    path = write_stack(
        tmp_path / "s.tif", _images((3, 8, 8), "uint8"), z_step_um=0.25, pixel_size_um=0.5
    )
    with tifffile.TiffFile(path) as tf:  # an independent OME reader's view
        assert tf.is_ome
        xml = tf.ome_metadata
        assert tf.series[0].axes == "ZYX"
        raw = tf.pages.first.tags[METADATA_TAG].value
    assert re.search(r'PhysicalSizeZ="0.25"', xml)
    assert re.search(r'PhysicalSizeX="0.5"', xml)
    assert 'PhysicalSizeXUnit="µm"' in xml
    assert json.loads(raw.decode("utf-8"))["metadata"] == {}


def test_without_sizes_round_trip_as_none(tmp_path: Path) -> None:
    path = write_stack(tmp_path / "plain.tif", _images((16, 16), "uint8"))
    stack = read_stack(path)
    assert stack.z_step_um is None and stack.pixel_size_um is None and stack.metadata == {}


def test_single_plane_stack_keeps_its_z_axis(tmp_path: Path) -> None:
    images = _images((1, 12, 14), "uint16")
    stack = read_stack(write_stack(tmp_path / "one.tif", images, z_step_um=1.0))
    assert stack.axes == "ZYX"
    np.testing.assert_array_equal(np.asarray(stack.data), images)


def test_tuples_in_metadata_come_back_as_lists(tmp_path: Path) -> None:
    path = write_stack(
        tmp_path / "t.tif", _images((8, 8), "uint8"), metadata={"shape_px": (1120, 1120)}
    )
    assert read_stack(path).metadata == {"shape_px": [1120, 1120]}


def test_rgb_inference_and_override(tmp_path: Path) -> None:
    # (Z, Y, X) with X == 3 is RGB by default; rgb=False keeps it a z-stack.
    images = _images((5, 6, 3), "uint8")
    assert read_stack(write_stack(tmp_path / "a.tif", images)).rgb
    stack = read_stack(write_stack(tmp_path / "b.tif", images, rgb=False, z_step_um=1.0))
    assert not stack.rgb and stack.axes == "ZYX"
    np.testing.assert_array_equal(np.asarray(stack.data), images)


def test_overwrite_replaces_file(tmp_path: Path) -> None:
    path = tmp_path / "s.tif"
    write_stack(path, _images((2, 8, 8), "uint8", seed=1), z_step_um=1.0)
    second = _images((3, 4, 4), "uint8", seed=2)
    write_stack(path, second, z_step_um=2.0)
    stack = read_stack(path)
    np.testing.assert_array_equal(np.asarray(stack.data), second)
    assert stack.z_step_um == 2.0


def test_failed_write_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.tif"
    old = _images((2, 8, 8), "uint8", seed=3)
    write_stack(path, old, z_step_um=1.0)
    before = path.read_bytes()

    real_imwrite = tifffile.imwrite

    def failing_imwrite(file: object, *args: object, **kwargs: object) -> None:
        real_imwrite(file, *args, **kwargs)
        with open(file, "r+b") as fh:  # type: ignore[arg-type]
            fh.truncate(100)  # a half-written file...
        raise OSError("disk full")  # ...and a failure

    monkeypatch.setattr(tifffile, "imwrite", failing_imwrite)
    with pytest.raises(OSError, match="disk full"):
        write_stack(path, _images((4, 16, 16), "uint8"), z_step_um=1.0)
    with pytest.raises(OSError, match="disk full"):
        write_stack(tmp_path / "new.tif", _images((4, 16, 16), "uint8"))
    monkeypatch.undo()

    assert path.read_bytes() == before  # target untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]  # no temp files, no new.tif
    np.testing.assert_array_equal(np.asarray(read_stack(path).data), old)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        (np.zeros((2, 4, 4), dtype=object), TypeError, "dtype"),
        (np.zeros((2, 4, 4), dtype=complex), TypeError, "dtype"),
        (np.zeros((2, 4, 4), dtype=np.int64), TypeError, "dtype"),
        (np.zeros((2, 4, 4), dtype=np.float16), TypeError, "dtype"),
        (np.array([["a", "b"], ["c", "d"]]), TypeError, "dtype"),
        (np.zeros(8, np.uint8), ValueError, "shape"),
        (np.zeros((2, 2, 4, 4, 3), np.uint8), ValueError, "shape"),
        (np.zeros((0, 4, 4), np.uint8), ValueError, "empty"),
        (np.array([[0.0, np.nan], [1.0, 2.0]], np.float32), ValueError, "NaN"),
        (np.full((3, 2, 2), np.inf), ValueError, "infinite"),
        (np.zeros((2, 4, 4, 5), np.uint8), ValueError, "RGB"),
    ],
)
def test_bad_images_raise(tmp_path: Path, images: np.ndarray, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        write_stack(tmp_path / "x.tif", images)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["z_step_um", "pixel_size_um"])
@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0.0, ValueError),
        (-1.0, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        ("0.5", TypeError),
        (True, TypeError),
    ],
)
def test_bad_sizes_raise(tmp_path: Path, name: str, value: object, error: type) -> None:
    with pytest.raises(error, match=name):
        write_stack(tmp_path / "x.tif", np.zeros((2, 4, 4), np.uint8), **{name: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("metadata", "error", "match"),
    [
        ({"a": np.zeros(3)}, TypeError, r"metadata\['a'\]"),
        ({"a": {"b": object()}}, TypeError, r"metadata\['a'\]\['b'\]"),
        ({1: "x"}, TypeError, "key"),
        ({"a": [1.0, math.nan]}, ValueError, "finite"),
        (["not", "a", "dict"], TypeError, "dict"),
    ],
)
def test_bad_metadata_raise(tmp_path: Path, metadata: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        write_stack(tmp_path / "x.tif", np.zeros((4, 4), np.uint8), metadata=metadata)  # type: ignore[arg-type]


def test_bad_file_name_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TIFF file name"):
        write_stack(tmp_path / "x.png", np.zeros((4, 4), np.uint8))


# --------------------------------------------------------------------------- napari writer


def test_napari_writer_round_trip(tmp_path: Path) -> None:
    images = _images((4, 10, 12, 3), "uint8")
    meta = {
        "scale": [0.5, 0.2, 0.2],
        "units": ("micrometer", "micrometer", "micrometer"),
        "rgb": True,
        "name": "stack",
        "metadata": {**LABELS, "importance": np.asarray(LABELS["importance"])},
    }
    [written] = napari_write_image(str(tmp_path / "out.ome.tif"), images, meta)
    reader = napari_get_reader(written)
    assert reader is not None
    [(data, kwargs, layer_type)] = reader(written)
    assert layer_type == "image" and kwargs["name"] == "out"
    assert kwargs["scale"] == pytest.approx((0.5, 0.2, 0.2))
    assert kwargs["rgb"] is True
    assert kwargs["metadata"] == LABELS  # numpy array stored as nested lists
    np.testing.assert_array_equal(np.asarray(data), images)


def test_napari_writer_converts_units_and_adds_suffix(tmp_path: Path) -> None:
    meta = {"scale": [500.0, 100.0, 100.0], "units": ("nanometer",) * 3, "rgb": False}
    [written] = napari_write_image(str(tmp_path / "noext"), _images((2, 6, 6), "uint16"), meta)
    assert written.endswith("noext.ome.tif")
    stack = read_stack(written)
    assert stack.z_step_um == pytest.approx(0.5)
    assert stack.pixel_size_um == pytest.approx(0.1)


def test_napari_writer_keeps_unknown_sizes_unknown(tmp_path: Path) -> None:
    # napari's default: pixel units, scale 1 -> no size is invented.
    meta = {"scale": [1.0, 1.0, 1.0], "units": ("pixel",) * 3, "rgb": False}
    [written] = napari_write_image(str(tmp_path / "u.tif"), _images((2, 6, 6), "uint8"), meta)
    with pytest.warns(UserWarning, match="z-step"):
        stack = read_stack(written)
    assert stack.z_step_um is None and stack.pixel_size_um is None


def test_napari_writer_drops_unserialisable_metadata_with_warning(tmp_path: Path) -> None:
    meta = {"scale": [0.5, 0.5], "rgb": False, "metadata": {"ok": 1, "widget": object()}}
    with pytest.warns(UserWarning, match="widget"):
        [written] = napari_write_image(str(tmp_path / "m.tif"), _images((6, 6), "uint8"), meta)
    stack = read_stack(written)
    assert stack.metadata == {"ok": 1}
    assert stack.pixel_size_um == pytest.approx(0.5)  # no units given: scale is µm


def test_napari_writer_rejects_non_square_pixels(tmp_path: Path) -> None:
    meta = {"scale": [1.0, 0.2, 0.4], "rgb": False}
    with pytest.raises(ValueError, match="non-square"):
        napari_write_image(str(tmp_path / "n.tif"), _images((2, 6, 6), "uint8"), meta)
