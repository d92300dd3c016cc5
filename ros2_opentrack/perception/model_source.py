"""The model mask source: detector boxes for the current vocabulary -> one batched segmenter call -> Mask2D."""

from __future__ import annotations

import logging
from typing import Any, List, Sequence

import numpy as np

from ..errors import ConfigError
from ..types import Frame, Mask2D
from .devices import check_rgb

log = logging.getLogger(__name__)


class ModelMaskSource:
    """MaskSource over a Detector and a Segmenter (both built by name from config in from_config)."""

    def __init__(self, detector: Any, segmenter: Any):
        if detector is None or segmenter is None:
            raise ConfigError(
                "masks.source: model needs both perception.detector and perception.segmenter (neither may be 'none')"
            )
        self.detector = detector
        self.segmenter = segmenter
        self.empty_masks = 0  # segmenter masks with no pixel (degenerate boxes, random weights), not returned

    @classmethod
    def from_config(cls, perception_cfg: Any) -> "ModelMaskSource":
        from .registry import build

        for role in ("detector", "segmenter"):
            if getattr(perception_cfg, role).name == "none":
                raise ConfigError(
                    f"masks.source: model needs perception.{role} (it is 'none'); "
                    f"use masks.source dataset or topic to run without models"
                )
        return cls(
            build("detector", perception_cfg.detector, perception_cfg),
            build("segmenter", perception_cfg.segmenter, perception_cfg),
        )

    def set_vocabulary(self, classes: Sequence[str]) -> None:
        self.detector.set_vocabulary(list(classes))

    def masks(self, frame: Frame) -> List[Mask2D]:
        rgb = check_rgb(frame.rgb, f"frame {frame.index}")
        detections = self.detector.detect(rgb)
        if len(detections) == 0:
            return []
        if getattr(self.segmenter, "needs_depth", False):  # capability flag, e.g. box_depth
            masks, _ = self.segmenter.segment(rgb, detections.boxes, depth=frame.depth)
        else:
            masks, _ = self.segmenter.segment(rgb, detections.boxes)
        has_pixels = masks.reshape(len(masks), -1).any(axis=1)
        self.empty_masks += int((~has_pixels).sum())
        labels = detections.labels or [None] * len(detections)
        return [
            Mask2D(
                mask=masks[i],
                box=np.asarray(detections.boxes[i], np.float32),
                score=float(detections.scores[i]),
                label=labels[i],
            )
            for i in np.flatnonzero(has_pixels)
        ]
