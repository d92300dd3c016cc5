"""Closed-set detector on ONNX Runtime (``detector.name: onnx``): no torch, torchvision or ultralytics at run time.

Two output formats are read, told apart by the output shape (and metadata ``format``):
- end-to-end: ``[1, N, 6]`` rows x1, y1, x2, y2, score, class_id in input pixels, NMS done in the graph
  (NanoDet-m of ../shared/models, ultralytics ``export(nms=True)``, YOLOv10 / YOLO26);
- raw YOLOv8 / YOLO11 head: ``[1, 4 + nc, A]`` cx, cy, w, h + per-class scores (ultralytics'
  ``export(format="onnx")``, also a YOLO-World export with its vocabulary baked in); decoded and suppressed
  here (class-aware NMS, numpy).
Input: one NCHW float image, RGB, 0..1 (metadata ``input_scale: 0..255`` switches to raw pixels), letterboxed
(grey 114 padding, centred) to the graph's fixed size, or to ``detector.image_size`` square when H and W are
dynamic; boxes are mapped back by undoing the pad and the scale.

Class names come from metadata ``names`` (a JSON list, or ultralytics' dict literal) or from a sidecar
``<model>.classes.txt``. The model's classes are fixed, so the configured vocabulary is mapped onto them: an
exact (or whole-word) name match maps directly, otherwise the text matcher's nearest model class when its cosine
is >= detector.class_match_min (so "mug" finds COCO "cup", "sofa" finds "couch"). Model classes no vocabulary
word maps to are ignored, and each box carries the VOCABULARY word (the user's word), so tracks, labels and
queries speak the user's language."""

from __future__ import annotations

import logging
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import BackendUnavailable
from .base import Detections
from .devices import check_rgb
from .onnx_runtime import (
    backend_requirements,
    fixed_hw,
    input_scale,
    metadata,
    parse_names,
    session_from_config,
    sidecar_names,
)
from .owlv2 import check_vocabulary, nms

log = logging.getLogger(__name__)

PAD_VALUE = 114  # ultralytics' letterbox grey


def letterbox(rgb: np.ndarray, size: Tuple[int, int]) -> Tuple[np.ndarray, float, Tuple[float, float]]:
    """Resize keeping the aspect ratio into (H, W), pad centred -> (image, scale, (pad_x, pad_y))."""
    import cv2

    th, tw = size
    h, w = rgb.shape[:2]
    scale = min(th / h, tw / w)
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nh, nw) != (h, w) else rgb
    px, py = (tw - nw) / 2.0, (th - nh) / 2.0
    left, top = int(round(px - 0.1)), int(round(py - 0.1))
    out = np.full((th, tw, 3), PAD_VALUE, np.uint8)
    out[top : top + nh, left : left + nw] = resized
    return out, scale, (float(left), float(top))


def normalise_name(text: str) -> str:
    return re.sub(r"[\s_\-]+", " ", text.strip().lower())


def map_vocabulary(
    vocabulary: Sequence[str], model_names: Sequence[str], matcher: Any = None, min_similarity: float = 0.62
) -> Tuple[Dict[int, str], Dict[str, Tuple[Optional[str], float]]]:
    """(model class index -> vocabulary word, vocabulary word -> (model class or None, score)).

    Exact names first (case, '_' and '-' ignored), then whole-word containment ('table' -> 'dining table',
    'tv monitor' -> 'tv'), then the text matcher. Several words may land on one model class; the box then
    carries the best of them (an exact name beats a similar one)."""
    norm_model = [normalise_name(n) for n in model_names]
    index = {n: i for i, n in reversed(list(enumerate(norm_model)))}
    found: Dict[str, Tuple[Optional[int], float]] = {}
    pending = []
    for word in vocabulary:
        w = normalise_name(word)
        if w in index:
            found[word] = (index[w], 2.0)  # exact beats everything
            continue
        contains = [
            i
            for i, n in enumerate(norm_model)
            if re.search(rf"\b{re.escape(w)}\b", n) or re.search(rf"\b{re.escape(n)}\b", w)
        ]
        if len(contains) == 1:
            found[word] = (contains[0], 1.5)
            continue
        pending.append(word)
    if pending and matcher is not None and len(model_names):
        sims = np.asarray(matcher.similarity(list(pending), list(model_names)), np.float64)
        for word, row in zip(pending, sims):
            best = int(np.argmax(row))
            found[word] = (best, float(row[best])) if row[best] >= min_similarity else (None, float(row[best]))
    for word in pending:
        found.setdefault(word, (None, 0.0))
    class_to_word: Dict[int, str] = {}
    best_score: Dict[int, float] = {}
    for word in vocabulary:
        cls, score = found[word]
        if cls is not None and score > best_score.get(cls, -1.0):
            class_to_word[cls], best_score[cls] = word, score
    report = {w: ((model_names[c] if c is not None else None), s) for w, (c, s) in found.items()}
    return class_to_word, report


class OnnxDetector:
    """Detector protocol over an ONNX Runtime session of a fixed-class detector."""

    def __init__(
        self,
        session: Any,
        class_names: Sequence[str],
        vocabulary: Sequence[str],
        score_threshold: float = 0.1,
        nms_iou: float = 0.5,
        max_detections: int = 50,
        image_size: int = 640,
        matcher: Any = None,
        matcher_factory: Any = None,
        class_match_min: float = 0.62,
        meta: Optional[Dict[str, str]] = None,
        name: str = "onnx",
    ):
        self.session = session
        self.meta = dict(meta if meta is not None else metadata(session))
        self.class_names = list(class_names)
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.max_detections = int(max_detections)
        self.class_match_min = float(class_match_min)
        self.name = name
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        self.input_hw = fixed_hw(inp.shape) or (int(image_size), int(image_size))
        self.scale = input_scale(self.meta)
        out = session.get_outputs()[0]
        self.output_name = out.name
        self.format = self._format(out.shape)
        self._matcher = matcher
        self._matcher_factory = matcher_factory
        self._mapping_logged: Optional[Tuple] = None
        self.set_vocabulary(vocabulary)

    requirements = staticmethod(backend_requirements)

    @classmethod
    def from_config(cls, cfg: Any, perception_cfg: Any = None) -> "OnnxDetector":
        path, session = session_from_config(cfg, "detector (onnx)", perception_cfg)
        meta = metadata(session)
        names = parse_names(meta.get("names")) or sidecar_names(path)
        if not names:
            raise BackendUnavailable(
                f"detector (onnx): {path} names no classes: expected metadata 'names' "
                f"(JSON list or ultralytics dict) or a sidecar {path.with_suffix('.classes.txt')}"
            )

        def factory():
            if perception_cfg is None or perception_cfg.text_matcher.name == "none":
                return None
            from .registry import build

            return build("text_matcher", perception_cfg.text_matcher, perception_cfg)

        return cls(
            session,
            names,
            cfg.vocabulary,
            cfg.score_threshold,
            cfg.nms_iou,
            cfg.max_detections,
            cfg.image_size,
            matcher_factory=factory,
            class_match_min=getattr(cfg, "class_match_min", 0.62),
            meta=meta,
            name=path.stem,
        )

    # -------------------------------------------------------------------------------------------------
    def _format(self, shape: Sequence[Any]) -> str:
        declared = self.meta.get("format", "").strip().lower()
        if declared in ("end2end", "end-to-end", "e2e"):
            return "end2end"
        if len(shape) == 3 and shape[-1] == 6 and not (shape[1] == 4 + len(self.class_names) == 6):
            return "end2end"
        if len(shape) == 3 and (shape[1] == 4 + len(self.class_names) or not isinstance(shape[1], int)):
            return "yolo"
        raise BackendUnavailable(
            f"detector (onnx): output shape {list(shape)} is neither end-to-end [1, N, 6] "
            f"nor a YOLOv8 head [1, 4+{len(self.class_names)}, anchors]"
        )

    @property
    def vocabulary(self) -> List[str]:
        return list(self._vocabulary)

    def set_vocabulary(self, classes: Sequence[str]) -> None:
        self._vocabulary = tuple(check_vocabulary(classes))
        norm = {normalise_name(n) for n in self.class_names}
        needs_matcher = any(normalise_name(w) not in norm for w in self._vocabulary)
        if needs_matcher and self._matcher is None and self._matcher_factory is not None:
            self._matcher = self._matcher_factory()
            self._matcher_factory = None
        self.class_to_word, report = map_vocabulary(
            self._vocabulary, self.class_names, self._matcher, self.class_match_min
        )
        self._class_ok = np.zeros(len(self.class_names), bool)
        self._class_ok[list(self.class_to_word)] = True
        key = tuple(sorted(report.items()))
        if key != self._mapping_logged:
            self._mapping_logged = key
            mapped = [f"{w}->{c}" + ("" if s >= 1.5 else f" ({s:.2f})") for w, (c, s) in report.items() if c]
            unmapped = [w for w, (c, _) in report.items() if c is None]
            log.info(
                "detector (onnx) %s: vocabulary mapped onto %d model classes: %s%s",
                self.name,
                len(self.class_to_word),
                ", ".join(mapped) or "nothing",
                f"; no model class for: {', '.join(unmapped)}" if unmapped else "",
            )
        self.mapping = report

    def preprocess(self, rgb: np.ndarray) -> Tuple[np.ndarray, float, Tuple[float, float]]:
        image, scale, pad = letterbox(rgb, self.input_hw)
        x = image.transpose(2, 0, 1)[None].astype(np.float32)
        if self.scale != 1.0:
            x *= np.float32(1.0 / self.scale)
        return x, scale, pad

    def raw(self, rgb: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes in frame pixels, scores, model class ids) of every candidate above the score threshold, before
        the vocabulary filter and our NMS."""
        rgb = check_rgb(rgb, "detector")
        x, scale, (px, py) = self.preprocess(rgb)
        out = np.asarray(self.session.run([self.output_name], {self.input_name: x})[0], np.float32)[0]
        if self.format == "end2end":
            boxes, scores, classes = out[:, :4], out[:, 4], out[:, 5].astype(np.int64)
        else:  # (4 + nc, A): cx, cy, w, h, class scores
            cls_scores = out[4:]
            classes = np.argmax(cls_scores, axis=0)
            scores = cls_scores[classes, np.arange(cls_scores.shape[1])]
            cxcywh = out[:4].T
            boxes = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], axis=1)
        keep = scores >= self.score_threshold
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        h, w = rgb.shape[:2]
        boxes = (boxes - np.array([px, py, px, py], np.float32)) / np.float32(scale)
        boxes = np.clip(boxes, 0.0, [w, h, w, h]).astype(np.float32)
        return boxes, scores.astype(np.float32), classes

    def detect(self, rgb: np.ndarray) -> Detections:
        boxes, scores, classes = self.raw(rgb)
        valid = (classes >= 0) & (classes < len(self.class_names))
        ok = valid & self._class_ok[np.clip(classes, 0, len(self.class_names) - 1)]
        ok &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, classes = boxes[ok], scores[ok], classes[ok]
        if len(boxes) == 0:
            return Detections.empty()
        if len(boxes) > 4 * self.max_detections + 100:  # bound the O(n^2) NMS on raw heads
            top = np.argsort(-scores, kind="stable")[: 4 * self.max_detections + 100]
            boxes, scores, classes = boxes[top], scores[top], classes[top]
        keep = nms(boxes, scores, self.nms_iou, labels=classes, max_keep=self.max_detections)
        return Detections(boxes[keep], scores[keep], [self.class_to_word[int(c)] for c in classes[keep]])
