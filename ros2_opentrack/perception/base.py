"""Protocols of the model roles. A backend is a small class that satisfies one of these; the pipeline only
sees the protocol. Images are RGB uint8 HxWx3 numpy arrays; boxes are float32 (N, 4) x0, y0, x1, y1 pixels."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from ..types import Frame, Mask2D


@dataclass
class Detections:
    boxes: np.ndarray  # (N, 4) float32
    scores: np.ndarray  # (N,) float32
    labels: List[str] = field(default_factory=list)  # N class texts

    def __len__(self) -> int:
        return len(self.boxes)

    @staticmethod
    def empty() -> "Detections":
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), [])


@runtime_checkable
class Detector(Protocol):
    def set_vocabulary(self, classes: Sequence[str]) -> None: ...

    def detect(self, rgb: np.ndarray) -> Detections: ...


@runtime_checkable
class Segmenter(Protocol):
    def segment(self, rgb: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All boxes of one image in one call -> (masks (N, H, W) bool, predicted IoU (N,))."""
        ...


@runtime_checkable
class FeatureExtractor(Protocol):
    dim: int

    def extract(self, rgb: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """One image, masks (N, H, W) bool -> (N, dim) float32 L2-normalised mask-averaged descriptors."""
        ...


@runtime_checkable
class MaskSource(Protocol):
    def masks(self, frame: Frame) -> List[Mask2D]: ...


@dataclass
class LabelRequest:
    track_id: int
    images: List[np.ndarray]  # top-K full images with the target already drawn in a red box
    choices: List[str]  # class names (mode closed) or task descriptions (mode tasks)
    mode: str = "closed"


@dataclass
class LabelResult:
    track_id: int
    label: Optional[str]  # a class from choices, or None for 'none' / unparseable
    task_indices: List[int] = field(default_factory=list)  # mode tasks: indices into choices
    score: float = 0.0
    raw: str = ""  # the model's answer, for logs
    error: Optional[str] = None  # set when the request failed (timeout, bad answer); never raised


@runtime_checkable
class Labeler(Protocol):
    def label(self, requests: Sequence[LabelRequest]) -> List[LabelResult]:
        """Answer a batch; failures come back as results with ``error`` set, not as exceptions."""
        ...


@runtime_checkable
class TextMatcher(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32 L2-normalised."""
        ...

    def similarity(self, queries: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        """(Q, C) cosine similarities."""
        ...
