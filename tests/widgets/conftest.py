"""Shared fixtures of the widget tests: small real models and a widget-leak check.

Widgets run in a real napari viewer under Xvfb (pytest-xvfb); never set
QT_QPA_PLATFORM. Models here are real SparseFocus pipelines with small
networks whose answers are known by construction, so assertions can compare
the widgets' layers with ``predict_defocus`` exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sparsefocus import Optics
from napari_sparsefocus.core.nn import (
    DefocusPredictionNetwork,
    DPNConfig,
    RegionImportanceNetwork,
    RINConfig,
    SparseFocusModel,
)

TINY_DPN = DPNConfig(dims=(8, 16, 16, 32), depths=(1, 1, 1, 1))
TINY_RIN = RINConfig(width_mult=0.5, output_stride=32, head_channels=16)


def make_model(seed: int = 0, *, importance_logit: float | None = None) -> SparseFocusModel:
    """A small random-weight pipeline (answers vary per patch and per image).

    With ``importance_logit`` every patch gets that RIN logit (all positive
    for a large value, none for a very negative one).
    """
    torch.manual_seed(seed)
    rin = RegionImportanceNetwork(TINY_RIN)
    dpn = DefocusPredictionNetwork(TINY_DPN)
    if importance_logit is not None:
        with torch.no_grad():
            rin.head[-1].weight.zero_()
            rin.head[-1].bias.fill_(importance_logit)
    cfg = {
        "optics": Optics().to_dict(),
        "defocus_range_um": [-25, 25],
        "patch_px": 224,
        "rin_input_px": 256,
        "training": {"data": "none: random weights for widget tests"},
    }
    return SparseFocusModel(rin, dpn, cfg)


@pytest.fixture
def tiny_model() -> SparseFocusModel:
    torch.set_num_threads(1)
    return make_model(0, importance_logit=4.0)


@pytest.fixture
def tiny_model_file(tmp_path, tiny_model):
    """Path of ``tiny_model`` saved as a model file (``.json`` + ``.safetensors``)."""
    _, cfg = tiny_model.save(tmp_path / "tiny")
    return cfg


@pytest.fixture
def sparse_stack():
    """A small simulated extremely-sparse cell z-stack (Z, Y, X, 3) with its truth."""
    from napari_sparsefocus import simulate_stack

    return simulate_stack(
        "cell",
        "sparse",
        z_um=np.arange(-4.0, 4.01, 1.0),
        shape_px=(672, 672),
        seed=5,
        split="test",
    )


@pytest.fixture(autouse=True)
def _no_leaked_widgets(qapp):
    """Fail a test that leaves top-level widgets behind (closed viewers excepted)."""
    before = set(qapp.topLevelWidgets())
    yield
    qapp.processEvents()
    leaked = [
        w
        for w in set(qapp.topLevelWidgets()) - before
        if w.isVisible() and type(w).__module__.startswith("napari_sparsefocus")
    ]
    assert not leaked, f"leaked top-level widgets: {leaked}"


@pytest.fixture
def model_factory():
    """``make_model`` as a fixture (test modules should not import conftest)."""
    torch.set_num_threads(1)
    return make_model
