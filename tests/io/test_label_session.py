from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING

import numpy as np
import pytest

from napari_sparsefocus.io import write_stack
from napari_sparsefocus.io._label_session import (
    LabelSession,
    LabelSessionError,
    grid_geometry,
)
from napari_sparsefocus.io._labels import (
    LABELS_SCHEMA,
    LabelFile,
    LabelFileError,
    StackLabel,
    read_labels,
    write_labels,
)

if TYPE_CHECKING:
    from pathlib import Path

Z_UM = np.arange(-4.0, 4.01, 1.0)  # 9 planes, 1 µm apart, focus on plane 4


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    from napari_sparsefocus import simulate_stack

    s = simulate_stack("cell", "dense", z_um=Z_UM, shape_px=(448, 448), seed=1, split="test")
    return s.images


@pytest.fixture
def folder(tmp_path: Path, images: np.ndarray) -> Path:
    """Two stacks (the second one flipped in z: focus on plane 4 too) and no labels."""
    write_stack(tmp_path / "a.ome.tif", images, z_step_um=1.0, pixel_size_um=0.5)
    write_stack(tmp_path / "b.ome.tif", images[::-1], z_step_um=1.0, pixel_size_um=0.5)
    (tmp_path / "notes.txt").write_text("not a stack")
    return tmp_path


def test_grid_geometry() -> None:
    assert grid_geometry((2016, 2016)) == ((9, 9), (0, 0))
    assert grid_geometry((2048, 3000)) == ((9, 9), (16, 492))
    assert grid_geometry((448, 700)) == ((2, 3), (0, 14))
    assert grid_geometry((200, 900)) == (None, (0, 0))


def test_open_folder_and_suggestion(folder: Path) -> None:
    s = LabelSession(folder / "labels.json", folder, annotator="ann")
    assert s.keys == ["a.ome.tif", "b.ome.tif"]
    info = s.info("a.ome.tif")
    assert (info.n_planes, info.z_step_um, info.grid_shape) == (9, 1.0, (2, 2))
    assert s.label("a.ome.tif") is None
    assert abs(s.suggested_focal_plane("a.ome.tif") - 4.0) < 1.5  # (the optics shift focus)
    assert s.focus("a.ome.tif").curve.shape == (9,)
    assert not (folder / "labels.json").exists()  # nothing written before an edit
    assert s.status() == "new file labels.json"


def test_round_trip(folder: Path) -> None:
    path = folder / "labels.json"
    s = LabelSession(path, folder, annotator="ann")
    s.set_focal_plane("a.ome.tif", 3)
    s.nudge("a.ome.tif", 0.1)
    s.nudge("a.ome.tif", 0.1)
    s.toggle_mask_cell("a.ome.tif", 0, 1)
    s.set_notes("a.ome.tif", "checked")
    s.accept_suggestion("b.ome.tif")
    assert not s.dirty and s.last_error is None
    assert s.status().startswith("saved 2 label(s) to labels.json")
    state = s.labels

    again = LabelSession(path)  # the stacks listed in the file are reopened
    assert again.keys == ["a.ome.tif", "b.ome.tif"]
    assert again.labels == state
    a = again.label("a.ome.tif")
    assert a is not None
    assert a.focal_plane_index == 3.2
    assert a.z_step_um == 1.0
    assert a.annotator == "ann" and a.source == "manual" and a.notes == "checked"
    np.testing.assert_array_equal(a.content_mask, [[0, 1], [0, 0]])
    b = again.label("b.ome.tif")
    assert b is not None and b.source == "finder"
    assert b.focal_plane_index == pytest.approx(s.suggested_focal_plane("b.ome.tif"), abs=1e-6)
    assert read_labels(path) == state  # what training reads


def test_labels_of_other_stacks_are_kept(folder: Path) -> None:
    path = folder / "labels.json"
    other = StackLabel("elsewhere/x.tif", 12.5, 0.25, source="model", notes="keep me")
    write_labels(path, LabelFile([other]))
    s = LabelSession(path, folder / "a.ome.tif")
    assert s.keys == ["a.ome.tif"]
    s.set_focal_plane("a.ome.tif", 5)
    assert read_labels(path).stacks == [other, s.label("a.ome.tif")]


def test_existing_entry_spelling_is_kept(folder: Path) -> None:
    path = folder / "labels.json"
    write_labels(path, LabelFile([StackLabel("./a.ome.tif", 2.0)]))
    s = LabelSession(path, folder)
    assert s.keys == ["./a.ome.tif", "b.ome.tif"]
    s.nudge("./a.ome.tif", -0.1)
    assert [x.path for x in read_labels(path).stacks] == ["./a.ome.tif"]
    assert read_labels(path).stacks[0].focal_plane_index == 1.9


def test_nudge_is_sub_step_and_clipped(folder: Path) -> None:
    s = LabelSession(folder / "labels.json", folder, autosave=False)
    s.set_focal_plane("a.ome.tif", 7)
    for _ in range(3):
        s.nudge("a.ome.tif", 0.1)
    assert s.label("a.ome.tif").focal_plane_index == 7.3  # no float noise
    for _ in range(20):
        s.nudge("a.ome.tif", 0.1)
    assert s.label("a.ome.tif").focal_plane_index == 8.0  # last plane
    s.set_focal_plane("a.ome.tif", 0)
    s.nudge("a.ome.tif", -0.5)
    assert s.label("a.ome.tif").focal_plane_index == 0.0
    # unlabelled: starts from the finder's suggestion
    s.nudge("b.ome.tif", 0.1)
    expected = round(s.suggested_focal_plane("b.ome.tif") + 0.1, 6)
    assert s.label("b.ome.tif").focal_plane_index == pytest.approx(expected)
    assert s.label("b.ome.tif").source == "manual"
    np.testing.assert_allclose(s.label("a.ome.tif").defocus_um(9), np.arange(9.0))  # (i - 0) * 1 µm
    with pytest.raises(ValueError, match="plane index"):
        s.set_focal_plane("a.ome.tif", 8.5)
    with pytest.raises(ValueError, match="plane index"):
        s.set_focal_plane("a.ome.tif", -1)
    with pytest.raises(KeyError, match="no stack"):
        s.set_focal_plane("missing.tif", 1)


def test_mask_toggle(folder: Path) -> None:
    s = LabelSession(folder / "labels.json", folder, autosave=False)
    np.testing.assert_array_equal(s.mask("a.ome.tif"), np.zeros((2, 2)))
    s.toggle_mask_cell("a.ome.tif", 1, 0)  # unlabelled: the finder's plane is taken
    lab = s.label("a.ome.tif")
    assert lab.source == "finder"
    np.testing.assert_array_equal(lab.content_mask, [[0, 0], [1, 0]])
    s.toggle_mask_cell("a.ome.tif", 1, 1)
    s.toggle_mask_cell("a.ome.tif", 1, 0)
    np.testing.assert_array_equal(s.mask("a.ome.tif"), [[0, 0], [0, 1]])
    with pytest.raises(ValueError, match="outside the 2 x 2 grid"):
        s.toggle_mask_cell("a.ome.tif", 2, 0)
    s.set_mask("a.ome.tif", None)
    assert s.label("a.ome.tif").content_mask is None
    with pytest.raises(ValueError, match="grid"):
        s.set_mask("a.ome.tif", np.ones((9, 9)))


def test_undo_redo(folder: Path) -> None:
    path = folder / "labels.json"
    s = LabelSession(path, folder)
    assert not s.can_undo and s.undo() is None and s.redo() is None
    s.set_focal_plane("a.ome.tif", 2)
    s.nudge("a.ome.tif", 0.1)
    s.toggle_mask_cell("a.ome.tif", 0, 0)
    s.set_focal_plane("b.ome.tif", 6)
    history = [s.labels]

    assert s.undo() == "b.ome.tif"
    assert s.label("b.ome.tif") is None
    assert read_labels(path) == s.labels  # undo is saved too
    assert s.undo() == "a.ome.tif"
    assert s.label("a.ome.tif").content_mask is None
    assert s.undo() == "a.ome.tif"
    assert s.label("a.ome.tif").focal_plane_index == 2.0
    assert s.redo() == "a.ome.tif"
    assert s.label("a.ome.tif").focal_plane_index == 2.1
    # a new edit drops the redo history
    s.nudge("a.ome.tif", -0.1)
    assert not s.can_redo and s.redo() is None
    assert s.label("a.ome.tif").focal_plane_index == 2.0
    for _ in range(3):
        s.undo()
    assert s.labels == LabelFile([]) and not s.can_undo
    assert read_labels(path) == LabelFile([])
    for _ in range(3):
        s.redo()
    assert s.label("a.ome.tif").focal_plane_index == 2.0
    assert history[0] != s.labels
    # an edit that changes nothing is not a history entry
    n = len(s._undo)
    s.set_focal_plane("a.ome.tif", 2.0)
    assert len(s._undo) == n


def test_disagreement_flags_first(folder: Path, tmp_path: Path, images: np.ndarray) -> None:
    write_stack(folder / "c.ome.tif", images, z_step_um=0.5)
    s = LabelSession(folder / "labels.json", folder, autosave=False)
    keys = ["a.ome.tif", "b.ome.tif", "c.ome.tif"]
    assert s.ordered_keys() == keys
    for k in keys:
        s.set_focal_plane(k, 4)
    z = np.arange(9.0)
    # a: the model says focus at plane 4.3 (0.3 µm off, within 1 DoF)
    s.set_predictions("a.ome.tif", (z - 4.3) * 1.0, dof_um=1.0)
    # b: plane 6 (2 µm off) with one plane without an answer
    pred_b: list[float | None] = list((z - 6.0) * 1.0)
    pred_b[0] = None
    s.set_predictions("b.ome.tif", pred_b, dof_um=1.0)
    # c: plane 7 at 0.5 µm per plane = 1.5 µm off
    s.set_predictions("c.ome.tif", (z - 7.0) * 0.5, dof_um=1.0)
    assert s.model_focal_plane("a.ome.tif") == pytest.approx(4.3)
    assert s.model_focal_plane("b.ome.tif") == pytest.approx(6.0)
    assert s.disagreement_um("c.ome.tif") == pytest.approx(1.5)
    assert [s.is_flagged(k) for k in keys] == [False, True, True]
    assert s.ordered_keys() == ["b.ome.tif", "c.ome.tif", "a.ome.tif"]
    # correcting the label clears the flag; an unlabelled stack comes before agreeing ones
    s.accept_model("b.ome.tif")
    assert s.label("b.ome.tif").source == "model"
    assert not s.is_flagged("b.ome.tif")
    s.remove_label("a.ome.tif")
    assert s.ordered_keys() == ["c.ome.tif", "a.ome.tif", "b.ome.tif"]
    with pytest.raises(ValueError, match="one per plane"):
        s.set_predictions("a.ome.tif", [0.0, 1.0], dof_um=1.0)
    with pytest.raises(ValueError, match="dof_um"):
        s.set_predictions("a.ome.tif", z, dof_um=0.0)


@pytest.mark.parametrize(
    "old",
    [
        b"{not json",
        json.dumps({"schema": LABELS_SCHEMA, "version": 0, "stacks": []}).encode(),
        json.dumps({"schema": LABELS_SCHEMA, "version": 99, "stacks": []}).encode(),
    ],
    ids=["corrupt", "older", "newer"],
)
def test_unreadable_file_is_never_overwritten_without_backup(folder: Path, old: bytes) -> None:
    path = folder / "labels.json"
    path.write_bytes(old)
    with pytest.raises(LabelSessionError, match=r"cannot edit labels\.json") as info:
        LabelSession(path, folder)
    assert isinstance(info.value, LabelFileError) and info.value.path == path
    assert "recovery" in str(info.value)
    assert path.read_bytes() == old  # untouched
    assert not list(folder.glob("labels.json.bak-*"))

    s = LabelSession(path, folder, recover=True)
    assert s.backup_path is not None and s.backup_path.read_bytes() == old
    assert read_labels(path) == LabelFile([])
    s.set_focal_plane("a.ome.tif", 4)
    assert read_labels(path).stacks == [s.label("a.ome.tif")]
    assert [p.read_bytes() for p in folder.glob("labels.json.bak-*")] == [old]


def test_file_broken_while_open_is_backed_up_on_save(folder: Path) -> None:
    path = folder / "labels.json"
    s = LabelSession(path, folder)
    s.set_focal_plane("a.ome.tif", 4)
    path.write_bytes(b"garbage from elsewhere")
    s.nudge("a.ome.tif", 0.1)
    assert [p.read_bytes() for p in folder.glob("labels.json.bak-*")] == [b"garbage from elsewhere"]
    assert read_labels(path).stacks[0].focal_plane_index == 4.1


def test_failed_autosave_is_reported(folder: Path) -> None:
    s = LabelSession(folder / "no-such-dir" / "labels.json", folder)
    assert s.keys[0] == "../a.ome.tif"
    s.set_focal_plane("../a.ome.tif", 4)  # does not raise
    assert s.dirty
    assert s.last_error is not None and s.status().startswith("NOT SAVED: autosave failed")
    (folder / "no-such-dir").mkdir()
    s.nudge("../a.ome.tif", 0.1)
    assert not s.dirty and s.last_error is None


def test_bad_stack_file(folder: Path) -> None:
    (folder / "broken.tif").write_bytes(b"not a tiff")
    s = LabelSession(folder / "labels.json", folder)  # skipped inside a folder
    assert s.keys == ["a.ome.tif", "b.ome.tif"]
    assert [p.name for p, _ in s.skipped] == ["broken.tif"]
    with pytest.raises(ValueError, match=r"broken\.tif"):
        LabelSession(folder / "labels.json", folder / "broken.tif")
    with pytest.raises(FileNotFoundError):
        LabelSession(folder / "labels.json", folder / "missing.tif")


def test_training_reads_the_session_output(folder: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from napari_sparsefocus.core.nn._data import StackLabelStream

    path = folder / "labels.json"
    s = LabelSession(path, folder, annotator="ann")
    s.set_focal_plane("a.ome.tif", 4)
    s.nudge("a.ome.tif", 0.1)
    s.toggle_mask_cell("a.ome.tif", 0, 0)
    s.toggle_mask_cell("a.ome.tif", 1, 1)
    s.accept_suggestion("b.ome.tif")
    stream = StackLabelStream(path, batch_size=4, seed=0, mode="patches")
    x, y = stream.batch(0)
    assert tuple(x.shape) == (4, 3, 224, 224)
    assert tuple(y.shape) == (4,)
    assert torch.all(torch.abs(y) <= 8.5)


WRITER = textwrap.dedent(
    """
    import sys
    from napari_sparsefocus.io._label_session import LabelSession

    s = LabelSession(sys.argv[1], [sys.argv[2]])
    n = 0
    while True:
        n += 1
        s.set_focal_plane("a.ome.tif", n % 9)
        if n == 2:
            sys.stdout.write("ready\\n")
            sys.stdout.flush()
    """
)


def _sizes(folder: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in folder.iterdir():
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        out[p.name] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.slow
def test_killed_session_leaves_the_previous_file_intact(folder: Path) -> None:
    path = folder / "labels.json"
    # many labels of other stacks make every save long enough to be interrupted
    others = [StackLabel(f"other_{i:05d}.tif", i * 0.01, 0.5, np.eye(9)) for i in range(3000)]
    write_labels(path, LabelFile(others))
    for round_ in range(2):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(folder / "a.ome.tif")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line == b"ready\n", proc.stderr.read() if proc.stderr else b""
            before = _sizes(folder)
            deadline = time.monotonic() + 20
            while _sizes(folder) == before and time.monotonic() < deadline:
                pass  # kill at the first sign of the next write
            if round_ == 1:
                time.sleep(0.05)  # and once a little later
        finally:
            proc.kill()
            proc.wait(timeout=30)
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
        labels = read_labels(path)  # always complete: the old or the new file
        assert labels.stacks[:3000] == others
        assert [s.path for s in labels.stacks[3000:]] == ["a.ome.tif"]
        # and a new session opens it
        reopened = LabelSession(path, folder / "a.ome.tif", autosave=False)
        assert reopened.label("a.ome.tif") is not None
    assert not list(folder.glob("labels.json.bak-*"))
