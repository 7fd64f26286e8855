from __future__ import annotations

import builtins
import json
import os
import pickle
import zipfile
from typing import TYPE_CHECKING, Any

import pytest
import torch
from torch import nn

from napari_sparsefocus.core import Optics
from napari_sparsefocus.core.nn._model_io import (
    MODEL_FORMAT,
    MODEL_VERSION,
    ModelFileError,
    check_optics,
    load_model_file,
    save_model_file,
)

if TYPE_CHECKING:
    from pathlib import Path


def small_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    conv = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5))
    tensors = {f"dpn.{k}": v for k, v in lin.state_dict().items()}
    tensors.update({f"rin.{k}": v for k, v in conv.state_dict().items()})
    return tensors


CONFIG: dict[str, Any] = {
    "architecture": "sparsefocus",
    "networks": {"dpn": {"name": "dpn", "config": {"width": 0.5}}},
    "optics": Optics().to_dict(),
    "defocus_range_um": [-25, 25],
    "patch_px": 224,
    "training": {"steps": 10, "seed": 0, "command": "sparsefocus train — µm"},
}


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------- round trip
def test_round_trip(tmp_path: Path) -> None:
    tensors = small_state()
    w, j = save_model_file(tmp_path / "run" / "dpn", tensors, CONFIG)
    assert w == tmp_path / "run" / "dpn.safetensors"
    assert j == tmp_path / "run" / "dpn.json"
    raw = json.loads(j.read_text(encoding="utf-8"))
    assert list(raw)[:2] == ["format", "version"]
    assert raw["format"] == MODEL_FORMAT == "napari-sparsefocus-model"
    assert raw["version"] == MODEL_VERSION == 1
    for form in (j, w, tmp_path / "run" / "dpn", str(j)):
        back, cfg = load_model_file(form)
        assert_same_tensors(back, tensors)
        assert cfg == {"format": MODEL_FORMAT, "version": 1, **CONFIG}
    # the int64 BatchNorm counter survives with its dtype
    assert back["rin.1.num_batches_tracked"].dtype == torch.int64
    # nothing but the two files
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["dpn.json", "dpn.safetensors"]
    # the loaded network works
    lin = nn.Linear(4, 3)
    lin.load_state_dict({k[4:]: v for k, v in back.items() if k.startswith("dpn.")})


def test_directory_form(tmp_path: Path) -> None:
    tensors = small_state()
    folder = tmp_path / "model_dir"
    folder.mkdir()
    w, j = save_model_file(folder, tensors, CONFIG)
    assert (w, j) == (folder / "model.safetensors", folder / "model.json")
    assert_same_tensors(load_model_file(folder)[0], tensors)
    # a string ending in a separator is a folder too (created)
    w2, _ = save_model_file(str(tmp_path / "new_dir") + os.sep, tensors, CONFIG)
    assert w2 == tmp_path / "new_dir" / "model.safetensors"
    assert_same_tensors(load_model_file(tmp_path / "new_dir")[0], tensors)


def test_suffix_forms_and_dotted_stems(tmp_path: Path) -> None:
    tensors = small_state()
    w, j = save_model_file(tmp_path / "a.json", tensors, CONFIG)
    assert (w.name, j.name) == ("a.safetensors", "a.json")
    w, j = save_model_file(tmp_path / "b.safetensors", tensors, CONFIG)
    assert (w.name, j.name) == ("b.safetensors", "b.json")
    w, j = save_model_file(tmp_path / "run.v2", tensors, CONFIG)
    assert (w.name, j.name) == ("run.v2.safetensors", "run.v2.json")
    assert_same_tensors(load_model_file(tmp_path / "run.v2")[0], tensors)
    assert_same_tensors(load_model_file(tmp_path / "run.v2.json")[0], tensors)


def test_views_gpu_style_inputs_and_overwrite(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {"t": base.t(), "shared": base, "half": base.to(torch.float16)}  # share memory
    save_model_file(tmp_path / "m", tensors, {})
    back, cfg = load_model_file(tmp_path / "m")
    assert torch.equal(back["t"], base.t())
    assert back["t"].is_contiguous()
    assert back["half"].dtype == torch.float16
    assert cfg == {"format": MODEL_FORMAT, "version": 1}
    # overwriting replaces both files
    save_model_file(tmp_path / "m", {"x": torch.ones(2)}, {"note": "second"})
    back, cfg = load_model_file(tmp_path / "m")
    assert list(back) == ["x"]
    assert cfg["note"] == "second"


def test_failed_replace_leaves_old_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_model_file(tmp_path / "m", {"x": torch.ones(2)}, {"note": "old"})

    def boom(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_model_file(tmp_path / "m", {"x": torch.zeros(2)}, {"note": "new"})
    monkeypatch.undo()
    back, cfg = load_model_file(tmp_path / "m")
    assert cfg["note"] == "old"
    assert torch.equal(back["x"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]


def test_save_validation(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="non-finite"):
        save_model_file(tmp_path / "m", {"w": torch.tensor([1.0, float("nan")])}, {})
    with pytest.raises(ModelFileError, match="format"):
        save_model_file(tmp_path / "m", {"w": torch.ones(1)}, {"format": "other"})
    with pytest.raises(ModelFileError, match="newer"):
        save_model_file(tmp_path / "m", {"w": torch.ones(1)}, {"version": 2})
    with pytest.raises(ModelFileError, match="JSON"):
        save_model_file(tmp_path / "m", {"w": torch.ones(1)}, {"x": float("nan")})
    with pytest.raises(ModelFileError, match="JSON"):
        save_model_file(tmp_path / "m", {"w": torch.ones(1)}, {"x": object()})
    with pytest.raises(ModelFileError, match=r"not \.pt"):
        save_model_file(tmp_path / "m.pt", {"w": torch.ones(1)}, {})
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        save_model_file(tmp_path / "m", {"w": [1.0]}, {})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- never unpickle
class Payload:
    """Unpickling this creates ``marker`` (``open(marker, "w")``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (self.marker, "w"))


def _json_next_to(weights: Path) -> None:
    weights.with_suffix(".json").write_text(json.dumps({"format": MODEL_FORMAT, "version": 1}))


@pytest.mark.parametrize("proto", [2, 4, 5])
def test_raw_pickle_disguised_as_safetensors_is_refused(tmp_path: Path, proto: int) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.safetensors"
    evil.write_bytes(pickle.dumps({"w": Payload(marker)}, protocol=proto))
    _json_next_to(evil)
    with pytest.raises(ModelFileError, match="pickle") as info:
        load_model_file(evil)
    assert str(evil) in str(info.value)
    assert "only safetensors" in str(info.value)
    assert not marker.exists()
    # the payload is real: unpickling would have created the file
    with open(evil, "rb") as fh:
        loaded = pickle.load(fh)  # deliberately, to prove the payload works
    loaded["w"].close()  # the file object open() returned
    assert marker.exists()


def test_torch_save_file_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.safetensors"
    torch.save({"w": torch.ones(2), "x": Payload(marker)}, evil)
    assert evil.read_bytes()[:4] == b"PK\x03\x04"
    _json_next_to(evil)
    with pytest.raises(ModelFileError, match="zip archive"):
        load_model_file(tmp_path / "model")
    assert not marker.exists()
    # legacy (non-zip) torch.save format is a pickle stream
    torch.save({"w": torch.ones(2)}, evil, _use_new_zipfile_serialization=False)
    with pytest.raises(ModelFileError, match="pickle"):
        load_model_file(evil)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pkl", ".ckpt", ".bin", ".PT"])
def test_pickle_suffixes_are_refused_unopened(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / f"model{suffix}"
    evil.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ModelFileError, match=f"refusing a \\{suffix} file") as info:
        load_model_file(evil)
    assert "only safetensors weights + a JSON config are accepted" in str(info.value)
    assert str(evil) in str(info.value)
    assert not marker.exists()


def test_zip_file_is_refused(tmp_path: Path) -> None:
    z = tmp_path / "model.safetensors"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("data.pkl", b"whatever")
    _json_next_to(z)
    with pytest.raises(ModelFileError, match="zip"):
        load_model_file(z)


def test_pickle_as_config_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    save_model_file(tmp_path / "m", {"w": torch.ones(1)}, {})
    (tmp_path / "m.json").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ModelFileError, match="pickle"):
        load_model_file(tmp_path / "m")
    assert not marker.exists()


def test_weights_with_header_length_starting_0x80_still_load(tmp_path: Path) -> None:
    # a safetensors header length whose low byte is 0x80 must not be taken for a pickle
    for pad in range(400):
        tensors = {"w" + "x" * pad: torch.ones(1)}
        w, _ = save_model_file(tmp_path / "m", tensors, {})
        if w.read_bytes()[:1] == b"\x80":
            break
    else:  # pragma: no cover
        pytest.fail("no header of length 0x..80 produced")
    back, _ = load_model_file(w)
    assert_same_tensors(back, tensors)
    # truncated, it is reported as truncated, not as a pickle
    w.write_bytes(w.read_bytes()[:40])
    with pytest.raises(ModelFileError, match="truncated safetensors"):
        load_model_file(w)


# ---------------------------------------------------------------- corrupt files
def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"config file .*nothing\.json is missing"):
        load_model_file(tmp_path / "nothing")
    save_model_file(tmp_path / "m", {"w": torch.ones(1)}, {})
    (tmp_path / "m.safetensors").unlink()
    with pytest.raises(ModelFileError, match=r"weights file .*m\.safetensors is missing"):
        load_model_file(tmp_path / "m.json")
    with pytest.raises(ModelFileError, match=r"model\.json is missing"):
        load_model_file(tmp_path)  # a folder without model files


@pytest.mark.parametrize(
    ("keep", "match"),
    [
        (0, "not a safetensors file"),
        (5, "not a safetensors file"),
        (8, "not a safetensors file"),
        (20, "truncated safetensors file"),
        (-1, "corrupt or truncated safetensors file"),
        (-7, "corrupt or truncated safetensors file"),
    ],
)
def test_truncated_safetensors(tmp_path: Path, keep: int, match: str) -> None:
    w, _ = save_model_file(tmp_path / "m", small_state(), CONFIG)
    w.write_bytes(w.read_bytes()[:keep])
    with pytest.raises(ModelFileError, match=match) as info:
        load_model_file(w)
    assert str(w) in str(info.value)


def test_garbage_and_corrupt_header(tmp_path: Path) -> None:
    w, _ = save_model_file(tmp_path / "m", small_state(), CONFIG)
    data = bytearray(w.read_bytes())
    data[9:20] = b"!!!!!!!!!!!"  # break the JSON header
    w.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="corrupt"):
        load_model_file(w)
    w.write_bytes(b"hello world, not a model at all")
    with pytest.raises(ModelFileError, match="not a safetensors file"):
        load_model_file(w)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"{broken", "not valid UTF-8 JSON"),
        (b"\xff\xfe\x00", "not valid UTF-8 JSON"),
        (b"[1, 2]", "must be a JSON object, got list"),
        (json.dumps({"version": 1}).encode(), "not a napari-sparsefocus model"),
        (json.dumps({"format": "keras", "version": 1}).encode(), "format 'keras'"),
        (json.dumps({"format": MODEL_FORMAT, "version": 2}).encode(), "newer.*upgrade"),
        (json.dumps({"format": MODEL_FORMAT, "version": 0}).encode(), "integer >= 1"),
        (json.dumps({"format": MODEL_FORMAT, "version": "1"}).encode(), "integer >= 1"),
        (json.dumps({"format": MODEL_FORMAT}).encode(), "integer >= 1"),
        (b'{"format": "napari-sparsefocus-model", "version": 1, "x": NaN}', "non-finite"),
    ],
)
def test_bad_config(tmp_path: Path, content: bytes, match: str) -> None:
    save_model_file(tmp_path / "m", {"w": torch.ones(1)}, {})
    (tmp_path / "m.json").write_bytes(content)
    with pytest.raises(ModelFileError, match=match) as info:
        load_model_file(tmp_path / "m")
    assert "m.json" in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_refused_on_load(tmp_path: Path, bad: float) -> None:
    from safetensors.torch import save_file

    w = torch.ones(2, 3)
    w[1, 2] = bad
    save_file({"dpn.fc.weight": w, "dpn.fc.bias": torch.zeros(3)}, tmp_path / "m.safetensors")
    _json_next_to(tmp_path / "m.safetensors")
    with pytest.raises(ModelFileError, match=r"non-finite weights in 'dpn\.fc\.weight' \(1 of 6"):
        load_model_file(tmp_path / "m")


# ---------------------------------------------------------------- optics
def test_check_optics_matches() -> None:
    o = Optics()
    cfg = {"optics": o.to_dict()}
    check_optics(cfg, o)
    check_optics(cfg, o.to_dict())
    # within 2 %
    check_optics(cfg, o.replace(na=o.na * 1.015))
    # only the fields the image gives are compared
    check_optics(cfg, {"pixel_size_um": o.pixel_size_um})
    check_optics(cfg, {})


def test_check_optics_pixel_size_message() -> None:
    model = Optics(magnification=20.0, camera_pixel_size_um=3.45)  # 0.1725 µm
    image = model.replace(magnification=10.0)  # 0.345 µm
    with pytest.raises(ModelFileError) as info:
        check_optics({"optics": model.to_dict()}, image)
    msg = str(info.value)
    assert "model trained for pixel size 0.1725 µm, image has 0.345 µm" in msg
    assert "NA" not in msg
    assert "wavelengths" not in msg


def test_check_optics_na_and_wavelengths() -> None:
    model = Optics()
    image = model.replace(na=0.5, condenser_na=0.4, wavelengths_um=(0.55,))
    with pytest.raises(ModelFileError) as info:
        check_optics({"optics": model.to_dict()}, image)
    msg = str(info.value)
    assert f"NA {model.na:g}, image has NA 0.5" in msg
    assert "image has (0.55) µm" in msg
    assert "pixel size" not in msg
    # same count, one wavelength 10 % off
    wl = list(model.wavelengths_um)
    wl[0] *= 1.1
    with pytest.raises(ModelFileError, match="wavelengths"):
        check_optics({"optics": model.to_dict()}, {"wavelengths_um": wl})
    # a looser tolerance accepts it
    check_optics({"optics": model.to_dict()}, {"wavelengths_um": wl}, rtol=0.15)


def test_check_optics_errors() -> None:
    with pytest.raises(ModelFileError, match="records no 'optics'"):
        check_optics({}, Optics())
    with pytest.raises(ValueError, match="rtol"):
        check_optics({"optics": {}}, Optics(), rtol=-1)
    with pytest.raises(ModelFileError, match="cannot compare"):
        check_optics({"optics": {"na": "high"}}, {"na": 0.5})


def test_check_optics_on_a_loaded_model(tmp_path: Path) -> None:
    save_model_file(tmp_path / "m", small_state(), CONFIG)
    _, cfg = load_model_file(tmp_path / "m")
    check_optics(cfg, Optics())
    with pytest.raises(ModelFileError, match="pixel size"):
        check_optics(cfg, Optics().replace(magnification=40.0))
