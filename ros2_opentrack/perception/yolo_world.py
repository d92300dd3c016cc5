"""YOLO-World (v2 weights) through ultralytics: the paper's detector.

ultralytics is AGPL-3.0 (users who cannot accept that choose detector.name: owlv2). It imports torchvision,
so on machines without a working torchvision this backend reports BackendUnavailable with the reason."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import BackendUnavailable, ConfigError
from .base import Detections, Requirements
from .devices import check_rgb, resolve_device, use_half
from .owlv2 import check_vocabulary

log = logging.getLogger(__name__)

SIZES = ("s", "m", "l", "x")


def weight_file(model: str) -> str:
    """'s' | 'x' | 'yolov8x-worldv2' | 'yolov8x-worldv2.pt' | a path -> the weight file reference."""
    key = model.strip()
    if key.lower() in SIZES:
        return f"yolov8{key.lower()}-worldv2.pt"
    if Path(key).suffix == "":
        return key + ".pt"
    return key


def import_ultralytics() -> Tuple[Optional[Any], str]:
    """(ultralytics module or None, reason when it cannot import)."""
    try:
        import ultralytics
    except Exception as exc:  # ImportError, or torchvision failing inside (RuntimeError: operator ... nms)
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        try:
            import torchvision  # noqa: F401
        except Exception as tv_exc:
            reason += f" (torchvision does not import: {type(tv_exc).__name__}: {str(tv_exc).splitlines()[0]})"
        return None, reason
    return ultralytics, ""


def ultralytics_check() -> Tuple[bool, str]:
    """(importable, doctor message): the reason names torchvision when that is what breaks the import."""
    module, reason = import_ultralytics()
    return (True, "ok (ultralytics)") if module is not None else (False, reason[:160])


def require_ultralytics() -> Any:
    module, reason = import_ultralytics()
    if module is None:
        raise BackendUnavailable(
            f"detector 'yolo_world' needs ultralytics, which cannot import here: {reason}. "
            f"Install torchvision matching torch and `pip install ultralytics`; on a CPU machine run the CPU "
            f"profile (--config config/cpu.yaml); or use perception.detector.name: owlv2"
        )
    return module


class YoloWorldDetector:
    """Detector over ultralytics.YOLOWorld; optional TensorRT engine per vocabulary."""

    def __init__(
        self,
        model: Any,
        vocabulary: Sequence[str],
        score_threshold: float = 0.1,
        nms_iou: float = 0.5,
        max_detections: int = 50,
        image_size: int = 640,
        device: str = "cpu",
        half: bool = False,
        tensorrt: bool = False,
        perception_cfg: Any = None,
        stem: str = "yolo-world",
    ):
        self.model = model  # ultralytics YOLOWorld
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.max_detections = int(max_detections)
        self.image_size = int(image_size)
        self.device = device
        self.half = use_half(device, half)
        self.tensorrt = tensorrt
        self.perception_cfg = perception_cfg
        self.stem = stem
        self._engine = None  # ultralytics model on a TensorRT engine for the current vocabulary
        self.set_vocabulary(vocabulary)

    @staticmethod
    def requirements(cfg: Any, perception_cfg: Any = None) -> Requirements:
        return Requirements(modules=("ultralytics",), weights=weight_file(cfg.model), import_check=ultralytics_check)

    @classmethod
    def from_config(cls, cfg: Any, perception_cfg: Any = None) -> "YoloWorldDetector":
        require_ultralytics()
        from ultralytics import YOLOWorld

        from .weights import resolve_file

        if cfg.image_size % 32:
            raise ConfigError(f"detector.image_size = {cfg.image_size}: YOLO-World needs a multiple of 32")
        ref = weight_file(cfg.model)
        device = resolve_device(cfg.device, "detector")
        # ultralytics downloads its own assets by bare file name (to the working directory) when online
        path = resolve_file(ref, "detector (yolo_world)", perception_cfg, download=lambda: _ultralytics_download(ref))
        model = YOLOWorld(str(path))
        return cls(
            model,
            cfg.vocabulary,
            cfg.score_threshold,
            cfg.nms_iou,
            cfg.max_detections,
            cfg.image_size,
            device,
            cfg.half,
            cfg.tensorrt,
            perception_cfg,
            Path(ref).stem,
        )

    # -------------------------------------------------------------------------------------------------
    @property
    def vocabulary(self) -> List[str]:
        return list(self._vocabulary)

    def set_vocabulary(self, classes: Sequence[str]) -> None:
        """set_classes runs the CLIP text encoder once and stores the embeddings in the model (offline vocab)."""
        self._vocabulary = tuple(check_vocabulary(classes))
        self.model.set_classes(list(self._vocabulary))
        self._engine = None
        if self.tensorrt:
            from .tensorrt_engine import yolo_world_engine

            self._engine = yolo_world_engine(
                self.model, self._vocabulary, self.stem, self.image_size, self.half, self.device, self.perception_cfg
            )

    def detect(self, rgb: np.ndarray) -> Detections:
        rgb = check_rgb(rgb, "detector")
        runner = self._engine if self._engine is not None else self.model
        results = runner.predict(
            source=np.ascontiguousarray(rgb[..., ::-1]),  # ultralytics takes BGR arrays
            conf=self.score_threshold,
            iou=self.nms_iou,
            max_det=self.max_detections,
            imgsz=self.image_size,
            device=self.device,
            half=self.half,
            verbose=False,
        )
        return self._to_detections(results[0], rgb.shape[:2])

    def _to_detections(self, result: Any, hw: Tuple[int, int]) -> Detections:
        boxes = result.boxes
        if boxes is None or len(boxes) == 0:
            return Detections.empty()
        h, w = hw
        xyxy = np.clip(boxes.xyxy.float().cpu().numpy(), 0.0, [w, h, w, h]).astype(np.float32)
        scores = boxes.conf.float().cpu().numpy().astype(np.float32)
        classes = boxes.cls.cpu().numpy().astype(int)
        labels = [
            self._vocabulary[c] if 0 <= c < len(self._vocabulary) else str(result.names.get(c, c)) for c in classes
        ]
        ok = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        return Detections(xyxy[ok], scores[ok], [label for label, keep in zip(labels, ok) if keep])


def _ultralytics_download(name: str) -> str:
    from ultralytics.utils.downloads import attempt_download_asset

    path = attempt_download_asset(name)
    if not Path(path).is_file():
        raise FileNotFoundError(name)
    return str(path)
