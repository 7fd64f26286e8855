from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING

import numpy as np
import pytest

from napari_sparsefocus.io._labels import (
    LABELS_SCHEMA,
    LABELS_VERSION,
    LabelFile,
    LabelFileError,
    StackLabel,
    labels_from_simulated,
    read_labels,
    write_labels,
)

if TYPE_CHECKING:
    from pathlib import Path


MASK = np.array([[0, 1, 0], [1, 1, 1], [0, 0, 1]], np.uint8)


def example_labels() -> LabelFile:
    return LabelFile(
        [
            StackLabel(
                path="stack_01.ome.tif",
                focal_plane_index=23.4,
                z_step_um=0.5,
                content_mask=np.eye(9, dtype=bool),
                annotator="Jane Doe",
                source="manual",
                notes="tissue fold near the top — µm ✓",
            ),
            StackLabel(path="sub/stack_02.tif", focal_plane_index=7.0),
            StackLabel("stack_03.tif", 0.25, 1.0, MASK, source="finder"),
        ]
    )


def entry(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "path": "a.tif",
        "focal_plane_index": 3.5,
        "z_step_um": 0.5,
        "content_mask": [[0, 1], [1, 0]],
        "annotator": "",
        "source": "manual",
        "notes": "",
    }
    base.update(changes)
    return base


def doc(*stacks: object, **top: object) -> dict[str, object]:
    d: dict[str, object] = {"schema": LABELS_SCHEMA, "version": LABELS_VERSION}
    d["stacks"] = list(stacks)
    d.update(top)
    return d


def dump(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# ---------------------------------------------------------------- round trip
def test_round_trip(tmp_path: Path) -> None:
    labels = example_labels()
    out = write_labels(tmp_path / "labels.json", labels)
    assert out == tmp_path / "labels.json"
    back = read_labels(out)
    assert back == labels
    first, second, third = back.stacks
    assert first.focal_plane_index == 23.4
    assert first.z_step_um == 0.5
    assert first.content_mask is not None
    assert first.content_mask.dtype == np.uint8
    np.testing.assert_array_equal(first.content_mask, np.eye(9))
    assert first.notes == "tissue fold near the top — µm ✓"
    assert second.z_step_um is None
    assert second.content_mask is None
    assert (second.annotator, second.source, second.notes) == ("", "manual", "")
    assert third.source == "finder"
    np.testing.assert_array_equal(third.content_mask, MASK)
    # the file is the documented JSON, UTF-8 and readable by eye (one line per mask row)
    text = out.read_text(encoding="utf-8")
    raw = json.loads(text)
    assert raw["schema"] == "napari-sparsefocus-labels"
    assert raw["version"] == 1
    assert raw["stacks"][1]["content_mask"] is None
    assert raw["stacks"][2]["content_mask"] == MASK.tolist()
    assert "[0, 1, 0]," in text
    assert "µm ✓" in text
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.json"]


def test_round_trip_empty_and_rewrite(tmp_path: Path) -> None:
    target = tmp_path / "l.json"
    write_labels(target, LabelFile())
    assert read_labels(target) == LabelFile([])
    write_labels(target, example_labels())  # a readable current file: no backup
    assert read_labels(target) == example_labels()
    assert [p.name for p in tmp_path.iterdir()] == ["l.json"]


def test_equality_sees_every_field() -> None:
    a = StackLabel("a.tif", 1.0, 0.5, MASK)
    assert a == StackLabel("a.tif", 1, 0.5, MASK.tolist())
    assert a != StackLabel("a.tif", 1.0, 0.5, 1 - MASK)
    assert a != StackLabel("a.tif", 1.0, 0.5, None)
    assert a != StackLabel("a.tif", 1.5, 0.5, MASK)
    assert a != StackLabel("a.tif", 1.0, 0.5, MASK, notes="x")


def test_mask_is_read_only() -> None:
    label = StackLabel("a.tif", 1.0, content_mask=MASK)
    assert label.content_mask is not None
    with pytest.raises(ValueError, match="read-only"):
        label.content_mask[0, 0] = 1
    assert MASK[0, 0] == 0


def test_resolve_relative_path(tmp_path: Path) -> None:
    label = StackLabel("sub/stack.tif", 1.0)
    assert label.resolve(tmp_path) == tmp_path / "sub" / "stack.tif"


# ---------------------------------------------------------------- defocus
def test_defocus_by_hand() -> None:
    label = StackLabel("a.tif", 2.5, 0.5)
    np.testing.assert_allclose(label.defocus_um(5), [-1.25, -0.75, -0.25, 0.25, 0.75])
    np.testing.assert_allclose(label.defocus_um(3, z_step_um=2.0), [-5.0, -3.0, -1.0])
    assert StackLabel("a.tif", 0.0, 1.0).defocus_um(1).tolist() == [0.0]
    d = StackLabel("a.tif", 50, 0.5).defocus_um(101)
    assert d[0] == -25.0
    assert d[50] == 0.0
    assert d[-1] == 25.0


def test_defocus_needs_a_z_step() -> None:
    with pytest.raises(ValueError, match=r"no z-step is known for 'a\.tif'"):
        StackLabel("a.tif", 2.0).defocus_um(5)
    np.testing.assert_allclose(StackLabel("a.tif", 2.0).defocus_um(3, 1.0), [-2, -1, 0])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n_planes"):
            StackLabel("a.tif", 2.0, 1.0).defocus_um(bad)  # type: ignore[arg-type]
    for bad_step in (0.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="z_step_um"):
            StackLabel("a.tif", 2.0).defocus_um(3, bad_step)


# ---------------------------------------------------------------- atomicity
def test_failed_replace_keeps_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = write_labels(tmp_path / "labels.json", example_labels())
    before = target.read_bytes()

    def boom(src: object, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        write_labels(target, LabelFile([StackLabel("other.tif", 1.0)]))
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert read_labels(target) == example_labels()
    assert [p.name for p in tmp_path.iterdir()] == ["labels.json"]


def test_invalid_labels_never_touch_the_file(tmp_path: Path) -> None:
    target = write_labels(tmp_path / "labels.json", example_labels())
    before = target.read_bytes()
    with pytest.raises(TypeError, match="LabelFile"):
        write_labels(target, [StackLabel("a.tif", 1.0)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"stacks\[1\]"):
        write_labels(target, LabelFile([StackLabel("a.tif", 1.0), "b.tif"]))  # type: ignore[list-item]
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["labels.json"]


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from napari_sparsefocus.io._labels import LabelFile, StackLabel, write_labels

    target = sys.argv[1]
    mask = (np.arange(81).reshape(9, 9) % 3 == 0)
    stacks = [StackLabel(f"stack_{i:05d}.ome.tif", i * 0.01, 0.5, mask, "bot", "model",
                         "x" * 40) for i in range(4000)]
    n = 0
    while True:
        n += 1
        stacks[0] = StackLabel("stack_00000.ome.tif", 0.0, 0.5, mask, notes=f"generation {n}")
        write_labels(target, LabelFile(stacks))
        if n == 2:
            sys.stdout.write("ready\\n")
            sys.stdout.flush()
    """
)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for e in os.scandir(folder):
        try:
            st = e.stat()
        except FileNotFoundError:  # a temporary file renamed away meanwhile
            continue
        out[e.name] = (st.st_size, st.st_mtime_ns)
    return out


def _wait_for_write_activity(folder: Path, timeout_s: float = 20.0) -> None:
    """Return as soon as any file in ``folder`` appears, grows, shrinks or is modified."""
    before = _snapshot(folder)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _snapshot(folder) != before:
            return
    raise AssertionError("the writer did not write within the timeout")


@pytest.mark.slow
def test_killed_writer_never_leaves_a_broken_file(tmp_path: Path) -> None:
    target = tmp_path / "labels.json"
    write_labels(target, LabelFile([StackLabel("initial.tif", 1.0)]))
    rng = random.Random(0)
    for round_ in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(target)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line == b"ready\n", proc.stderr.read() if proc.stderr else b""
            if round_ % 2 == 0:
                # kill at the first sign of the next write: this is where a
                # non-atomic writer leaves a truncated file
                _wait_for_write_activity(tmp_path)
            else:
                time.sleep(rng.uniform(0.0, 0.3))
        finally:
            proc.kill()  # SIGKILL on POSIX: no cleanup runs
            proc.wait(timeout=30)
            if proc.stdout:
                proc.stdout.close()
            if proc.stderr:
                proc.stderr.close()
        labels = read_labels(target)  # always a complete file, old or new
        assert len(labels.stacks) == 4000
        assert labels.stacks[0].notes.startswith("generation ")
        assert labels.stacks[-1].path == "stack_03999.ome.tif"
    # a readable file is never backed up; only temporary files of killed writers may remain
    names = [p.name for p in tmp_path.iterdir()]
    assert not [n for n in names if ".bak-" in n]
    assert all(n == "labels.json" or n.endswith(".tmp") for n in names)


# ---------------------------------------------------------------- backups
@pytest.mark.parametrize(
    "old",
    [
        b"{not json",
        b"\xff\xfe\x00garbage",
        json.dumps(doc(entry(), version=0)).encode(),  # older version
        json.dumps(doc(entry(), version=2)).encode(),  # newer version
        json.dumps({"schema": "something-else", "version": 1}).encode(),
        json.dumps(doc(entry(focal_plane_index="x"))).encode(),
    ],
    ids=["not-json", "not-utf8", "v0", "v2", "other-schema", "invalid-entry"],
)
def test_unreadable_file_is_backed_up(tmp_path: Path, old: bytes) -> None:
    target = tmp_path / "labels.json"
    target.write_bytes(old)
    write_labels(target, example_labels())
    assert read_labels(target) == example_labels()
    backups = sorted(tmp_path.glob("labels.json.bak-*"))
    assert len(backups) == 1
    assert backups[0].read_bytes() == old
    assert len(list(tmp_path.iterdir())) == 2


def test_backups_never_overwrite_each_other(tmp_path: Path) -> None:
    target = tmp_path / "labels.json"
    for content in (b"first broken", b"second broken", b"third broken"):
        target.write_bytes(content)
        write_labels(target, example_labels())
    backups = sorted(tmp_path.glob("labels.json.bak-*"))
    assert sorted(b.read_bytes() for b in backups) == [
        b"first broken",
        b"second broken",
        b"third broken",
    ]


def test_backup_can_be_disabled(tmp_path: Path) -> None:
    target = tmp_path / "labels.json"
    target.write_bytes(b"{broken")
    write_labels(target, example_labels(), backup=False)
    assert read_labels(target) == example_labels()
    assert [p.name for p in tmp_path.iterdir()] == ["labels.json"]


# ---------------------------------------------------------------- read errors
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_labels(tmp_path / "nope.json")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe\x00\x01", "not a UTF-8"),
        (b"[1, 2]", "JSON object, got list"),
        (json.dumps({"version": 1, "stacks": []}).encode(), "schema is None"),
        (json.dumps(doc(schema="other")).encode(), "not a napari-sparsefocus label file"),
        (json.dumps(doc(version=2)).encode(), "newer napari-sparsefocus.*upgrade"),
        (json.dumps(doc(version=0)).encode(), "version 0 cannot be read"),
        (json.dumps(doc(version=-3)).encode(), "version -3 cannot be read"),
        (json.dumps(doc(version="1")).encode(), "must be an integer"),
        (json.dumps(doc(version=True)).encode(), "must be an integer"),
        (json.dumps(doc(version=1.0)).encode(), "must be an integer"),
        (json.dumps(doc(extra=3)).encode(), r"unknown top-level field\(s\) \['extra'\]"),
        (json.dumps(doc(stacks={"a": 1})).encode(), "'stacks' must be a list"),
    ],
)
def test_file_level_errors(tmp_path: Path, content: bytes, match: str) -> None:
    p = tmp_path / "labels.json"
    p.write_bytes(content)
    with pytest.raises(LabelFileError, match=match) as info:
        read_labels(p)
    assert isinstance(info.value, ValueError)
    assert str(p) in str(info.value)


def test_missing_stacks_key(tmp_path: Path) -> None:
    p = dump(tmp_path / "l.json", {"schema": LABELS_SCHEMA, "version": 1})
    with pytest.raises(LabelFileError, match="'stacks' must be a list, got NoneType"):
        read_labels(p)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"focal_plane_index": None}, "focal_plane_index must be a number"),
        ({"focal_plane_index": "3"}, "focal_plane_index must be a number"),
        ({"focal_plane_index": True}, "focal_plane_index must be a number"),
        ({"z_step_um": -0.5}, "z_step_um must be > 0"),
        ({"z_step_um": 0}, "z_step_um must be > 0"),
        ({"z_step_um": "0.5"}, "z_step_um must be a number"),
        ({"content_mask": [[0, 1], [1]]}, "content_mask must be rectangular"),
        ({"content_mask": [[0, 2], [1, 0]]}, "content_mask must hold only 0 and 1, found 2"),
        ({"content_mask": [[0, 0.5], [1, 0]]}, "only 0 and 1, found 0.5"),
        ({"content_mask": [[0, 1.0], [1, 0]]}, "only 0 and 1, found 1.0"),
        ({"content_mask": [0, 1, 1]}, "content_mask must be a non-empty list of rows"),
        ({"content_mask": []}, "content_mask must be a non-empty list of rows"),
        ({"content_mask": [[]]}, "content_mask must be rectangular"),
        ({"content_mask": "0101"}, "content_mask must be a non-empty 2-D grid"),
        ({"source": "guess"}, "source must be one of"),
        ({"annotator": 5}, "annotator must be a string"),
        ({"notes": ["a"]}, "notes must be a string"),
        ({"path": ""}, "path must be a non-empty string"),
        ({"path": 3}, "path must be a non-empty string"),
        ({"zstep_um": 0.5}, r"unknown field\(s\) \['zstep_um'\]"),
    ],
)
def test_entry_errors_name_entry_and_field(
    tmp_path: Path, bad: dict[str, object], match: str
) -> None:
    p = dump(tmp_path / "l.json", doc(entry(path="good.tif"), entry(**{"path": "b.tif", **bad})))
    with pytest.raises(LabelFileError, match=match) as info:
        read_labels(p)
    msg = str(info.value)
    assert "stacks[1]" in msg
    if isinstance(bad.get("path", "b.tif"), str) and bad.get("path", "b.tif"):
        assert "'b.tif'" in msg


def test_missing_required_fields(tmp_path: Path) -> None:
    e = entry(path="b.tif")
    del e["focal_plane_index"]
    p = dump(tmp_path / "l.json", doc(entry(), e))
    with pytest.raises(
        LabelFileError, match=r"stacks\[1\] \('b.tif'\): missing field.*focal_plane_index"
    ):
        read_labels(p)
    e = entry()
    del e["path"]
    p = dump(tmp_path / "l.json", doc(e))
    with pytest.raises(LabelFileError, match=r"stacks\[0\]: missing field.*path"):
        read_labels(p)
    p = dump(tmp_path / "l.json", doc(entry(), 3))
    with pytest.raises(LabelFileError, match=r"stacks\[1\]: a stack entry must be an object"):
        read_labels(p)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers(tmp_path: Path, literal: str) -> None:
    p = tmp_path / "l.json"
    p.write_text(
        '{"schema": "napari-sparsefocus-labels", "version": 1, "stacks": '
        f'[{{"path": "a.tif", "focal_plane_index": {literal}}}]}}',
        encoding="utf-8",
    )
    with pytest.raises(LabelFileError, match="finite"):
        read_labels(p)


def test_optional_fields_may_be_absent_or_null(tmp_path: Path) -> None:
    p = dump(
        tmp_path / "l.json",
        doc(
            {"path": "a.tif", "focal_plane_index": 4},
            {"path": "b.tif", "focal_plane_index": 1.5, "annotator": None, "notes": None},
            entry(content_mask=[[True, False]]),
        ),
    )
    a, b, c = read_labels(p).stacks
    assert a == StackLabel("a.tif", 4.0)
    assert (b.annotator, b.notes, b.source) == ("", "", "manual")
    np.testing.assert_array_equal(c.content_mask, [[1, 0]])


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="only 0 and 1"):
        StackLabel("a.tif", 1.0, content_mask=np.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="2-D"):
        StackLabel("a.tif", 1.0, content_mask=np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        StackLabel("a.tif", float("inf"))
    with pytest.raises(ValueError, match="source"):
        StackLabel("a.tif", 1.0, source="Manual")


# ---------------------------------------------------------------- from the simulator
def meta(defocus: list[float], importance: list[list[float]] | None = None) -> dict[str, object]:
    return {
        "defocus_um": defocus,
        "importance": importance if importance is not None else [[1.0, 0.0], [0.0, 1.0]],
        "kind": "cell",
        "sparsity": "sparse",
        "simulated": True,
    }


def test_labels_from_simulated_on_a_plane() -> None:
    imp = [[0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    label = labels_from_simulated(meta([-1.0, -0.5, 0.0, 0.5, 1.0], imp), "sim_001.ome.tif")
    assert label.path == "sim_001.ome.tif"
    assert label.focal_plane_index == 2.0
    assert label.z_step_um == 0.5
    assert label.source == "simulated"
    assert "cell" in label.notes
    assert "sparse" in label.notes
    np.testing.assert_array_equal(label.content_mask, [[0, 1, 0], [1, 1, 0], [0, 0, 0]])
    np.testing.assert_allclose(label.defocus_um(5), [-1.0, -0.5, 0.0, 0.5, 1.0])


def test_labels_from_simulated_between_planes() -> None:
    # 0 lies a quarter of the way from plane 1 (-0.25) to plane 2 (0.75)
    label = labels_from_simulated(meta([-1.25, -0.25, 0.75, 1.75]), "s.tif")
    assert label.focal_plane_index == pytest.approx(1.25)
    assert label.z_step_um == 1.0
    np.testing.assert_allclose(label.defocus_um(4), [-1.25, -0.25, 0.75, 1.75])
    # uneven spacing: still a focal index, but no single z-step
    uneven = labels_from_simulated(meta([-2.0, -1.0, 1.0, 4.0]), "s.tif")
    assert uneven.focal_plane_index == pytest.approx(1.5)
    assert uneven.z_step_um is None
    # one plane at focus
    single = labels_from_simulated(meta([0.0]), "s.tif")
    assert (single.focal_plane_index, single.z_step_um) == (0.0, None)
    # the ends count as inside
    assert labels_from_simulated(meta([0.0, 0.5]), "s.tif").focal_plane_index == 0.0
    assert labels_from_simulated(meta([-0.5, 0.0]), "s.tif").focal_plane_index == 1.0


def test_labels_from_simulated_errors() -> None:
    with pytest.raises(ValueError, match="outside the stack"):
        labels_from_simulated(meta([0.5, 1.0, 1.5]), "s.tif")
    with pytest.raises(ValueError, match="outside the stack"):
        labels_from_simulated(meta([-3.0, -2.0]), "s.tif")
    with pytest.raises(ValueError, match="strictly increasing"):
        labels_from_simulated(meta([1.0, 0.0, -1.0]), "s.tif")
    with pytest.raises(ValueError, match="finite"):
        labels_from_simulated(meta([-1.0, float("nan")]), "s.tif")
    with pytest.raises(ValueError, match="lacks"):
        labels_from_simulated({"defocus_um": [0.0]}, "s.tif")


def test_labels_from_real_simulator_round_trip(tmp_path: Path) -> None:
    from napari_sparsefocus.core import simulate_stack

    stack = simulate_stack(
        "cell", "sparse", z_um=[-1.0, -0.5, 0.0, 0.5], shape_px=(448, 448), noise=False
    )
    label = labels_from_simulated(stack.to_metadata(), "sim.ome.tif")
    assert label.focal_plane_index == 2.0
    assert label.z_step_um == 0.5
    assert label.content_mask is not None
    np.testing.assert_array_equal(label.content_mask, stack.importance >= 0.5)
    np.testing.assert_allclose(label.defocus_um(4), stack.defocus_um)
    target = write_labels(tmp_path / "labels.json", LabelFile([label]))
    assert read_labels(target).stacks == [label]
