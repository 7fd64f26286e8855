"""PyTorch networks of SparseFocus and its baselines (imports torch; import explicitly).

``napari_sparsefocus`` and ``napari_sparsefocus.core`` never import this
subpackage, so they stay free of torch.
"""

from __future__ import annotations

from ._baselines import DastidarNet, JiangNet, LiaoNet
from ._calibration import NearFocusCalibration, fit_near_focus_calibration
from ._config import DastidarConfig, DPNConfig, JiangConfig, LiaoConfig, RINConfig
from ._dpn import DefocusPredictionNetwork
from ._inference import (
    BUNDLED_MODEL_DIR,
    DefocusPrediction,
    NearFocusReading,
    PatchPrediction,
    SparseFocusModel,
    iter_predict_stack,
    load_model,
    predict_defocus,
)
from ._model_io import (
    MODEL_FORMAT,
    MODEL_VERSION,
    REFUSED_SUFFIXES,
    ModelFileError,
    check_optics,
    load_model_file,
    save_model_file,
)
from ._refiner import (
    REFINER_FEATURES,
    NearFocusRefiner,
    fit_near_focus_refiner,
    patch_sharpness_descriptor,
    refiner_input_size,
    refiner_inputs,
)
from ._registry import NETWORKS, build_network
from ._rin import RegionImportanceNetwork

__all__ = [
    "BUNDLED_MODEL_DIR",
    "MODEL_FORMAT",
    "MODEL_VERSION",
    "NETWORKS",
    "REFINER_FEATURES",
    "REFUSED_SUFFIXES",
    "DPNConfig",
    "DastidarConfig",
    "DastidarNet",
    "DefocusPrediction",
    "DefocusPredictionNetwork",
    "JiangConfig",
    "JiangNet",
    "LiaoConfig",
    "LiaoNet",
    "ModelFileError",
    "NearFocusCalibration",
    "NearFocusReading",
    "NearFocusRefiner",
    "PatchPrediction",
    "RINConfig",
    "RegionImportanceNetwork",
    "SparseFocusModel",
    "build_network",
    "check_optics",
    "fit_near_focus_calibration",
    "fit_near_focus_refiner",
    "iter_predict_stack",
    "load_model",
    "load_model_file",
    "patch_sharpness_descriptor",
    "predict_defocus",
    "refiner_input_size",
    "refiner_inputs",
    "save_model_file",
]
