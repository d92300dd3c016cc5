"""Model roles (protocols in base.py) and their backends, built by name through registry.build."""

from .base import (
    Detections,
    Detector,
    FeatureExtractor,
    Labeler,
    LabelRequest,
    LabelResult,
    MaskSource,
    Segmenter,
    TextMatcher,
)
from .registry import BACKENDS, build

__all__ = [
    "Detections",
    "Detector",
    "FeatureExtractor",
    "Labeler",
    "LabelRequest",
    "LabelResult",
    "MaskSource",
    "Segmenter",
    "TextMatcher",
    "BACKENDS",
    "build",
]
