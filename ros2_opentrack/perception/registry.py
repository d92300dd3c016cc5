"""Backends chosen by name in config. Modules are imported only when their backend is built, so that a
missing optional dependency (ultralytics, sam2, tensorrt) only matters to users who ask for that backend."""
from __future__ import annotations

import importlib
from typing import Any, Dict

from ..errors import ConfigError

# role -> name -> "module:factory". A factory takes (role_config, perception_config) and returns the backend.
BACKENDS: Dict[str, Dict[str, str]] = {
    "detector": {
        "yolo_world": "ros2_opentrack.perception.yolo_world:YoloWorldDetector.from_config",
        "owlv2": "ros2_opentrack.perception.owlv2:Owlv2Detector.from_config",
        "onnx": "ros2_opentrack.perception.onnx_detector:OnnxDetector.from_config",
    },
    "segmenter": {
        "sam2": "ros2_opentrack.perception.sam2_segmenter:Sam2Segmenter.from_config",
        "onnx": "ros2_opentrack.perception.onnx_segmenter:OnnxSam2Segmenter.from_config",
        "box_depth": "ros2_opentrack.perception.box_depth:BoxDepthSegmenter.from_config",
    },
    "features": {
        "dinov2": "ros2_opentrack.perception.dinov2:Dinov2Features.from_config",
        "color_hist": "ros2_opentrack.perception.color_hist:ColorHistogramFeatures.from_config",
        "onnx": "ros2_opentrack.perception.onnx_features:OnnxFeatures.from_config",
    },
    "labeler": {
        "mllm": "ros2_opentrack.perception.mllm:MllmLabeler.from_config",
    },
    "text_matcher": {
        "minilm": "ros2_opentrack.perception.text_matcher:MiniLmMatcher.from_config",
    },
}


def build(role: str, role_cfg: Any, perception_cfg: Any = None) -> Any:
    """Instantiate the backend that ``role_cfg.name`` names for ``role``; None when the name is 'none'."""
    name = role_cfg.name
    if name == "none":
        return None
    try:
        target = BACKENDS[role][name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS.get(role, {}))) or "none"
        raise ConfigError(f"unknown {role} backend '{name}' (known: {known}, none)") from None
    module_name, attr = target.split(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj(role_cfg, perception_cfg)
