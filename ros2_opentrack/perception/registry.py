"""Backends chosen by name in config. Modules are imported only when their backend is built (or checked by
`opentrack doctor`), so that a missing optional dependency (ultralytics, sam2, tensorrt) only matters to users
who ask for that backend.

Adding a backend: write its class (the role's protocol from base.py, plus base.Backend: ``from_config`` and
``requirements``) in its own module, and add one line here. The doctor derives its rows from this table."""

from __future__ import annotations

import importlib
from typing import Any, Dict

from ..errors import ConfigError

# role -> name -> "module:Class". The class builds itself with Class.from_config(role_config, perception_config)
# and declares what it needs with Class.requirements(role_config, perception_config) (base.Backend).
BACKENDS: Dict[str, Dict[str, str]] = {
    "detector": {
        "yolo_world": "ros2_opentrack.perception.yolo_world:YoloWorldDetector",
        "owlv2": "ros2_opentrack.perception.owlv2:Owlv2Detector",
        "onnx": "ros2_opentrack.perception.onnx_detector:OnnxDetector",
    },
    "segmenter": {
        "sam2": "ros2_opentrack.perception.sam2_segmenter:Sam2Segmenter",
        "onnx": "ros2_opentrack.perception.onnx_segmenter:OnnxSam2Segmenter",
        "box_depth": "ros2_opentrack.perception.box_depth:BoxDepthSegmenter",
    },
    "features": {
        "dinov2": "ros2_opentrack.perception.dinov2:Dinov2Features",
        "color_hist": "ros2_opentrack.perception.color_hist:ColorHistogramFeatures",
        "onnx": "ros2_opentrack.perception.onnx_features:OnnxFeatures",
    },
    "labeler": {
        "mllm": "ros2_opentrack.perception.mllm:MllmLabeler",
    },
    "text_matcher": {
        "minilm": "ros2_opentrack.perception.text_matcher:MiniLmMatcher",
    },
}


def backend_class(role: str, name: str) -> Any:
    """The class registered as ``name`` for ``role`` (its module imported); ConfigError for an unknown name."""
    try:
        target = BACKENDS[role][name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS.get(role, {}))) or "none"
        raise ConfigError(f"unknown {role} backend '{name}' (known: {known}, none)") from None
    module_name, attr = target.split(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def build(role: str, role_cfg: Any, perception_cfg: Any = None) -> Any:
    """Instantiate the backend that ``role_cfg.name`` names for ``role``; None when the name is 'none'."""
    if role_cfg.name == "none":
        return None
    return backend_class(role, role_cfg.name).from_config(role_cfg, perception_cfg)
