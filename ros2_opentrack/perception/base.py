"""Protocols of the model roles. A backend is a small class that satisfies one of these; the pipeline only
sees the protocol. Images are RGB uint8 HxWx3 numpy arrays; boxes are float32 (N, 4) x0, y0, x1, y1 pixels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

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

    def extract(self, rgb: np.ndarray, masks: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        """One image, N HxW bool masks (a list or an (N, H, W) array) and their float32 (N, 4) boxes -> (N, dim)
        float32 L2-normalised mask-averaged descriptors. Boxes are a hint a backend may use (read each mask only
        inside its box) or ignore."""
        ...


@runtime_checkable
class MaskSource(Protocol):
    def masks(self, frame: Frame) -> List[Mask2D]: ...

    def set_vocabulary(self, classes: Sequence[str]) -> None:
        """The classes to look for from now on; a no-op for sources without a vocabulary (dataset, topic)."""
        ...


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
    # Maps free-form answers to a choice. May be None: the pipeline then hands the labeller its own matcher (one
    # sentence model for both), and a labeller that built one first shares it with the pipeline.
    text_matcher: Optional["TextMatcher"]

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


# ---------------------------------------------------------------------------------------------------------
# What a backend class declares besides its role protocol (see registry.py)


@dataclass
class Requirements:
    """What a backend needs to run here, declared without building it: `opentrack doctor` checks it."""

    modules: Tuple[str, ...] = ()  # Python modules that must import
    weights: Optional[str] = None  # weight reference (path, file name in weights_dir, hub id); None: none needed
    hub_file: str = "config.json"  # the file whose presence in the hub cache means the weights are there
    hub_repo: Optional[str] = None  # hub repository of a single-file checkpoint (weights is then its file)
    device: Optional[str] = None  # where it runs when fixed ("cpu", "remote"); None: resolved from role_cfg.device
    note: str = "not needed"  # the weights column when ``weights`` is None
    backend: str = ""  # the backend column when the name alone is not enough, e.g. "mllm (openai)"
    import_check: Optional[Callable[[], Tuple[bool, str]]] = None  # replaces the plain import of ``modules``


@runtime_checkable
class Backend(Protocol):
    """The class a registry entry names: builds itself from config and declares its requirements."""

    @classmethod
    def from_config(cls, role_cfg: Any, perception_cfg: Any = None) -> Any: ...

    @staticmethod
    def requirements(role_cfg: Any, perception_cfg: Any = None) -> Requirements: ...
