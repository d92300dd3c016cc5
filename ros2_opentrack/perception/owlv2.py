"""OWLv2 open-vocabulary detector through transformers (Apache-2.0): the alternative for users who cannot take
YOLO-World's (ultralytics) AGPL licence. Text embeddings are computed once per vocabulary and cached; each frame
runs the image tower once. Uses the PIL (slow) image processor, which works without torchvision."""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import BackendUnavailable, InputError
from .base import Detections, Requirements
from .devices import check_rgb, resolve_device, torch_dtype

log = logging.getLogger(__name__)

HUB_IDS = {
    "base": "google/owlv2-base-patch16-ensemble",
    "b": "google/owlv2-base-patch16-ensemble",
    "large": "google/owlv2-large-patch14-ensemble",
    "l": "google/owlv2-large-patch14-ensemble",
}
DEFAULT_HUB_ID = HUB_IDS["base"]
PRE_NMS_TOP_K = 1000  # candidates kept before NMS (OWLv2 scores every patch: 3600 at 960 px / 16)


def hub_id(model: str) -> str:
    """Aliases -> hub ids. A YOLO-World file name (the detector default) means 'the default OWLv2'."""
    key = model.strip().lower()
    if "world" in key or key.endswith((".pt", ".engine")):
        log.info("detector.model %r is a YOLO-World file; owlv2 uses %s", model, DEFAULT_HUB_ID)
        return DEFAULT_HUB_ID
    return HUB_IDS.get(key, model)


def check_vocabulary(classes: Any) -> List[str]:
    """A non-empty list of non-empty class texts, duplicates removed in order."""
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",")]
    try:
        items = [str(c).strip() for c in classes]
    except TypeError:
        raise InputError(f"vocabulary must be a list of class names, got {type(classes).__name__}") from None
    items = list(dict.fromkeys(c for c in items if c))
    if not items:
        raise InputError("vocabulary is empty: give at least one class name (e.g. ['chair', 'table'])")
    return items


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    labels: Optional[np.ndarray] = None,
    max_keep: Optional[int] = None,
) -> np.ndarray:
    """Greedy non-maximum suppression (per class when labels are given) -> kept indices, best first."""
    order = np.argsort(-scores, kind="stable")
    b = boxes[order].astype(np.float64)
    if labels is not None and len(b):  # class-aware: move each class to its own region of the plane
        b = b + (labels[order].astype(np.float64) * (b.max() + 1.0))[:, None]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(b[:, None, :2], b[None, :, :2])
    rb = np.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    iou = inter / np.maximum(area[:, None] + area[None, :] - inter, 1e-12)
    suppressed = np.zeros(len(b), bool)
    keep = []
    for i in range(len(b)):
        if suppressed[i]:
            continue
        keep.append(i)
        if max_keep is not None and len(keep) >= max_keep:
            break
        suppressed |= iou[i] > iou_threshold
    return order[np.asarray(keep, dtype=np.int64)]


class Owlv2Detector:
    """Detector over transformers' Owlv2ForObjectDetection."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        image_processor: Any,
        vocabulary: Sequence[str],
        score_threshold: float = 0.1,
        nms_iou: float = 0.5,
        max_detections: int = 50,
        device: str = "cpu",
        half: bool = False,
        prompt: str = "a photo of a {}",
    ):
        self.device = device
        self.dtype = torch_dtype(device, half)
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.max_detections = int(max_detections)
        self.prompt = prompt
        self._text_cache: Dict[Tuple[str, ...], Any] = {}
        self.text_encodings = 0  # how many times a vocabulary was run through the text tower
        self.set_vocabulary(vocabulary)

    @staticmethod
    def requirements(cfg: Any, perception_cfg: Any = None) -> Requirements:
        return Requirements(modules=("transformers",), weights=hub_id(cfg.model))

    @classmethod
    def from_config(cls, cfg: Any, perception_cfg: Any = None) -> "Owlv2Detector":
        try:
            from transformers import AutoTokenizer, Owlv2ForObjectDetection
        except ImportError as exc:
            raise BackendUnavailable(f"detector 'owlv2' needs transformers: {exc}") from None
        from .weights import from_pretrained

        ref = hub_id(cfg.model)
        device = resolve_device(cfg.device, "detector")
        role = "detector (owlv2)"
        model = from_pretrained(Owlv2ForObjectDetection.from_pretrained, ref, role, perception_cfg)
        tokenizer = from_pretrained(AutoTokenizer.from_pretrained, ref, role, perception_cfg)
        processor = from_pretrained(slow_image_processor().from_pretrained, ref, role, perception_cfg)
        return cls(
            model,
            tokenizer,
            processor,
            cfg.vocabulary,
            cfg.score_threshold,
            cfg.nms_iou,
            cfg.max_detections,
            device,
            cfg.half,
        )

    # -------------------------------------------------------------------------------------------------
    @property
    def vocabulary(self) -> List[str]:
        return list(self._vocabulary)

    def set_vocabulary(self, classes: Sequence[str]) -> None:
        self._vocabulary = tuple(check_vocabulary(classes))
        self._queries = self.text_embeddings(self._vocabulary)

    def text_embeddings(self, classes: Tuple[str, ...]):
        """(Q, D) query embeddings of a vocabulary, cached: switching back to a vocabulary costs nothing."""
        import torch

        if classes not in self._text_cache:
            texts = [self.prompt.format(c) for c in classes]
            tokens = self.tokenizer(
                texts, padding="max_length", truncation=True, return_tensors="pt", max_length=self._max_text_length()
            )
            with torch.inference_mode():
                out = self.model.owlv2.get_text_features(
                    input_ids=tokens["input_ids"].to(self.device),
                    attention_mask=tokens["attention_mask"].to(self.device),
                )
            embeds = out.pooler_output if hasattr(out, "pooler_output") else out
            self._text_cache[classes] = embeds
            self.text_encodings += 1
        return self._text_cache[classes]

    def _max_text_length(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    def pixel_values(self, rgb: np.ndarray):
        pixels = self.image_processor(images=rgb, return_tensors="pt")["pixel_values"]
        return pixels.to(device=self.device, dtype=self.dtype)

    def detect(self, rgb: np.ndarray) -> Detections:
        import torch

        rgb = check_rgb(rgb, "detector")
        with torch.inference_mode():
            feature_map, _ = self.model.image_embedder(pixel_values=self.pixel_values(rgb))
            b, gh, gw, d = feature_map.shape
            feats = feature_map.reshape(b, gh * gw, d)
            logits, _ = self.model.class_predictor(feats, self._queries[None], None)
            boxes = self.model.box_predictor(feats, feature_map)
        scores, labels = torch.sigmoid(logits[0].float()).max(dim=-1)
        return self._postprocess(
            boxes[0].float().cpu().numpy(), scores.cpu().numpy(), labels.cpu().numpy(), rgb.shape[:2]
        )

    def _postprocess(
        self, cxcywh: np.ndarray, scores: np.ndarray, labels: np.ndarray, hw: Tuple[int, int]
    ) -> Detections:
        """Threshold, boxes to image pixels (the processor pads bottom/right to a square), clip, NMS, cap."""
        h, w = hw
        keep = np.flatnonzero(scores >= self.score_threshold)
        keep = keep[np.argsort(-scores[keep], kind="stable")[:PRE_NMS_TOP_K]]
        if not len(keep):
            return Detections.empty()
        side = float(max(h, w))
        c = cxcywh[keep]
        boxes = (
            np.stack(
                [c[:, 0] - c[:, 2] / 2, c[:, 1] - c[:, 3] / 2, c[:, 0] + c[:, 2] / 2, c[:, 1] + c[:, 3] / 2], axis=1
            )
            * side
        )
        boxes = np.clip(boxes, 0.0, [w, h, w, h])
        area_ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # boxes lying only in the padding
        boxes, sc, lb = boxes[area_ok], scores[keep][area_ok], labels[keep][area_ok]
        if not len(boxes):
            return Detections.empty()
        kept = nms(boxes, sc, self.nms_iou, lb, self.max_detections)
        return Detections(
            boxes[kept].astype(np.float32), sc[kept].astype(np.float32), [self._vocabulary[i] for i in lb[kept]]
        )


def slow_image_processor():
    """The PIL OWLv2 image processor class (transformers 5: Owlv2ImageProcessorPil; 4.x: Owlv2ImageProcessor)."""
    import transformers

    cls = getattr(transformers, "Owlv2ImageProcessorPil", None)
    return cls if cls is not None else transformers.Owlv2ImageProcessor
