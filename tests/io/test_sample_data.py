from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from napari_sparsefocus.io import read_stack, write_stack
from napari_sparsefocus.io._napari import napari_get_reader
from napari_sparsefocus.io._sample_data import (
    SAMPLE_SEED,
    SAMPLE_SHAPE_PX,
    sample_dense_tissue,
    sample_sparse_cells,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

SAMPLES = [
    pytest.param(sample_sparse_cells, "cell", "extremely_sparse", id="sparse_cells"),
    pytest.param(sample_dense_tissue, "tissue", "dense", id="dense_tissue"),
]
Z_UM = np.arange(-10, 10.01, 1.0)
SMALL_PX = (448, 448)  # 2 x 2 patches: the plumbing test renders this instead of 1120 x 1120


def _check_labels(meta: dict[str, Any], kind: str, sparsity: str, grid: tuple[int, int]) -> None:
    assert meta["kind"] == kind and meta["sparsity"] == sparsity
    np.testing.assert_allclose(meta["defocus_um"], Z_UM)
    assert np.asarray(meta["importance"], dtype=float).shape == grid
    assert isinstance(meta["optics"], dict) and meta["optics"]
    assert json.loads(json.dumps(meta)) == meta  # JSON-serialisable as is


@pytest.mark.parametrize(("func", "kind", "sparsity"), SAMPLES)
def test_sample_wiring(
    func: Callable[[], list[Any]],
    kind: str,
    sparsity: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The sample asks the simulator for the documented stack and labels it faithfully."""
    import napari_sparsefocus.core as core
    from napari_sparsefocus.core import simulate_stack

    calls: list[dict[str, Any]] = []
    made: list[Any] = []

    def smaller(*args: Any, **kwargs: Any) -> Any:
        calls.append({"args": args, **kwargs})
        kwargs["shape_px"] = SMALL_PX
        made.append(simulate_stack(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(core, "simulate_stack", smaller)
    [(data, kwargs, layer_type)] = func()

    [call] = calls
    assert (call["kind"] if "kind" in call else call["args"][0]) == kind
    assert call["sparsity"] == sparsity
    np.testing.assert_allclose(call["z_um"], Z_UM)
    assert tuple(call["shape_px"]) == SAMPLE_SHAPE_PX == (1120, 1120)
    assert call["seed"] == SAMPLE_SEED
    stack = made[0]
    assert layer_type == "image"
    assert data is stack.images
    assert kwargs["rgb"] is True and data.shape[-1] == 3
    assert isinstance(kwargs["name"], str) and kwargs["name"]
    assert kwargs["scale"] == pytest.approx(
        (stack.z_step_um, stack.pixel_size_um, stack.pixel_size_um)
    )
    assert kwargs["scale"][0] == pytest.approx(1.0)
    _check_labels(kwargs["metadata"], kind, sparsity, stack.importance.shape)
    np.testing.assert_allclose(kwargs["metadata"]["importance"], stack.importance)
    assert kwargs["metadata"]["optics"] == stack.optics.to_dict()

    # The layer saves and reloads with its scale and labels.
    path = write_stack(
        tmp_path / "sample.ome.tif",
        data,
        z_step_um=kwargs["scale"][0],
        pixel_size_um=kwargs["scale"][1],
        rgb=True,
        metadata=kwargs["metadata"],
    )
    assert read_stack(path).metadata == kwargs["metadata"]
    reader = napari_get_reader(str(path))
    assert reader is not None
    [(_, reread, _)] = reader(str(path))
    assert reread["scale"] == pytest.approx(kwargs["scale"])
    assert reread["rgb"] is True


@pytest.mark.parametrize(("func", "kind", "sparsity"), SAMPLES)
def test_full_size_sample(func: Callable[[], list[Any]], kind: str, sparsity: str) -> None:
    from napari_sparsefocus.core import Optics, simulate_stack  # noqa: F401 - must exist

    [(data, kwargs, layer_type)] = func()
    assert layer_type == "image"
    assert data.shape == (21, 1120, 1120, 3) and data.dtype == np.uint8
    assert kwargs["rgb"] is True
    pixel_um = Optics().pixel_size_um
    assert kwargs["scale"] == pytest.approx((1.0, pixel_um, pixel_um))
    _check_labels(kwargs["metadata"], kind, sparsity, (5, 5))


def test_viewer_opens_sample_through_manifest(
    make_napari_viewer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import napari_sparsefocus.core as core
    from napari_sparsefocus.core import simulate_stack

    def smaller(*args: Any, **kwargs: Any) -> Any:
        kwargs["shape_px"] = SMALL_PX
        return simulate_stack(*args, **kwargs)

    monkeypatch.setattr(core, "simulate_stack", smaller)
    viewer = make_napari_viewer()
    viewer.open_sample("napari-sparsefocus", "dense_tissue")
    [layer] = viewer.layers
    assert layer.rgb and layer.data.shape == (21, *SMALL_PX, 3)
    assert layer.scale[0] == pytest.approx(1.0)
    assert layer.metadata["kind"] == "tissue"
