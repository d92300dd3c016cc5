"""Mask descriptors from any ONNX backbone that outputs a feature map (``features.name: onnx``).

Model interface: input one NCHW float image, RGB 0..1 (metadata ``input_scale: 0..255`` for raw pixels; any
normalisation lives inside the graph, or in metadata ``mean`` / ``std`` as JSON lists on the 0..1 scale);
output ``[1, C, h, w]``. The stride is metadata ``stride`` or, failing that, input size / output size. Fixed
input dims in the graph are used as they are (the image is resized to them); dynamic dims get the shorter side
``features.image_size``, both sides rounded to multiples of the stride (as the DINOv2 backend does with its
patch). Exports of EfficientNet-Lite0 (../shared/models) and DINOv2 (scripts/export_onnx.py, patch tokens
reshaped to a map) both fit.

Pooling is the DINOv2 backend's: each mask's area fraction in every cell of the feature grid (the bins of
torch's adaptive_avg_pool2d, computed here with two small matrix products) weights the cell features, then
L2-normalisation; a mask covering no cell falls back to the image mean. No torch at run time."""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from ..errors import BackendUnavailable, ConfigError
from .devices import check_masks, check_rgb
from .onnx_runtime import backend_requirements, fixed_hw, input_scale, metadata, session_from_config

log = logging.getLogger(__name__)


def adaptive_bins(n_in: int, n_out: int) -> Tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of adaptive_avg_pool's bins: [floor(i*n/k), ceil((i+1)*n/k))."""
    i = np.arange(n_out)
    return (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)


def _bin_sums(cs: np.ndarray, start: np.ndarray, end: np.ndarray, offset: int, axis: int) -> np.ndarray:
    """Sums over bins from a zero-led cumulative sum of a crop that starts at ``offset`` in the full axis."""
    size = cs.shape[axis] - 1
    s = np.clip(start - offset, 0, size)
    e = np.clip(end - offset, 0, size)
    return np.take(cs, e, axis=axis) - np.take(cs, s, axis=axis)


def mask_weights(masks: np.ndarray, grid: Tuple[int, int]) -> np.ndarray:
    """(N, gh*gw) fraction of each grid cell covered by each mask: the same numbers as torch's
    adaptive_avg_pool2d of the masks (DINOv2 backend). Each mask is cropped to its bounding box and summed with
    cumulative sums, so the cost follows the mask's area."""
    n, h, w = masks.shape
    gh, gw = grid
    rs, re_ = adaptive_bins(h, gh)
    cs_, ce = adaptive_bins(w, gw)
    area = ((re_ - rs)[:, None] * (ce - cs_)[None, :]).astype(np.float64)
    out = np.zeros((n, gh, gw), np.float32)
    any_r, any_c = masks.any(axis=2), masks.any(axis=1)
    for i in range(n):
        r, c = np.flatnonzero(any_r[i]), np.flatnonzero(any_c[i])
        if len(r) == 0:
            continue
        r0, r1, c0, c1 = r[0], r[-1] + 1, c[0], c[-1] + 1
        crop = masks[i, r0:r1, c0:c1]
        cum = np.zeros((r1 - r0, c1 - c0 + 1), np.int32)
        np.cumsum(crop, axis=1, out=cum[:, 1:])
        per_col = _bin_sums(cum, cs_, ce, c0, axis=1)  # (rows, gw)
        cum_r = np.zeros((r1 - r0 + 1, gw), np.int64)
        np.cumsum(per_col, axis=0, out=cum_r[1:])
        out[i] = _bin_sums(cum_r, rs, re_, r0, axis=0) / area
    return out.reshape(n, gh * gw)


def pool(tokens: np.ndarray, weights: np.ndarray) -> Tuple[np.ndarray, int]:
    """Weighted mean of cell features per mask, L2-normalised -> ((N, C), number of empty masks)."""
    total = weights.sum(axis=1, keepdims=True)
    empty = total[:, 0] <= 0
    if empty.any():
        weights = np.where(empty[:, None], 1.0, weights).astype(np.float32)
        total = weights.sum(axis=1, keepdims=True)
    pooled = (weights @ tokens) / total
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled.astype(np.float32, copy=False), int(empty.sum())


class OnnxFeatures:
    """FeatureExtractor protocol over an ONNX feature-map backbone."""

    def __init__(self, session: Any, image_size: int = 448, meta: Optional[Dict[str, str]] = None, name: str = "onnx"):
        import cv2  # noqa: F401  (resize)

        self.session = session
        self.meta = dict(meta if meta is not None else metadata(session))
        self.name = name
        self.backend = "onnxruntime"
        inp, out = session.get_inputs()[0], session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        self.fixed = fixed_hw(inp.shape)
        if len(out.shape) != 4:
            raise BackendUnavailable(
                f"features (onnx): {name} outputs shape {list(out.shape)}; expected a feature map [1, C, h, w]"
            )
        if not isinstance(out.shape[1], int):
            raise BackendUnavailable(f"features (onnx): {name} has no fixed channel count ({out.shape})")
        self.dim = int(out.shape[1])
        self.stride = self._stride(out.shape)
        if image_size < 1:
            raise ConfigError(f"features.image_size = {image_size}: expected a positive number of pixels")
        self.image_size = int(image_size)
        self.scale = input_scale(self.meta)
        mean, std = self.meta.get("mean"), self.meta.get("std")
        self._mean = np.asarray(json.loads(mean), np.float32).reshape(1, 3, 1, 1) if mean else None
        self._std = np.asarray(json.loads(std), np.float32).reshape(1, 3, 1, 1) if std else None
        self.empty_masks = 0

    requirements = staticmethod(backend_requirements)

    @classmethod
    def from_config(cls, cfg: Any, perception_cfg: Any = None) -> "OnnxFeatures":
        path, session = session_from_config(cfg, "features (onnx)", perception_cfg)
        return cls(session, image_size=cfg.image_size, name=path.stem)

    def _stride(self, out_shape: Sequence[Any]) -> int:
        if self.meta.get("stride"):
            return int(float(self.meta["stride"]))
        if self.fixed and isinstance(out_shape[2], int) and out_shape[2] > 0:
            return max(1, round(self.fixed[0] / out_shape[2]))
        # dynamic and undeclared: run once on a probe image and measure
        probe = np.zeros((1, 3, 224, 224), np.float32)
        fmap = self.session.run([self.output_name], {self.input_name: probe})[0]
        return max(1, round(224 / fmap.shape[2]))

    # -------------------------------------------------------------------------------------------------
    def input_size(self, hw: Tuple[int, int]) -> Tuple[int, int]:
        if self.fixed:
            return self.fixed
        h, w = hw
        scale = self.image_size / min(h, w)
        s = self.stride
        return max(s, round(h * scale / s) * s), max(s, round(w * scale / s) * s)

    def feature_map(self, rgb: np.ndarray) -> np.ndarray:
        """(C, gh, gw) float32 feature map of one image."""
        import cv2

        rgb = check_rgb(rgb, "features")
        th, tw = self.input_size(rgb.shape[:2])
        image = rgb if rgb.shape[:2] == (th, tw) else cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA)
        x = image.transpose(2, 0, 1)[None].astype(np.float32)
        if self.scale != 1.0:
            x *= np.float32(1.0 / self.scale)
        if self._mean is not None:
            x = (x - self._mean) / (self._std if self._std is not None else 1.0)
        return np.asarray(self.session.run([self.output_name], {self.input_name: x})[0][0], np.float32)

    def extract(self, rgb: np.ndarray, masks: Any, boxes: Optional[np.ndarray] = None) -> np.ndarray:
        """(N, dim) L2-normalised mask-pooled descriptors. ``masks``: (N, H, W) bool or a list of N HxW masks;
        ``boxes`` is accepted for the FeatureExtractor interface and not needed here."""
        rgb = check_rgb(rgb, "features")
        if isinstance(masks, (list, tuple)):
            masks = np.stack([np.asarray(m) for m in masks]) if len(masks) else np.zeros((0, *rgb.shape[:2]), bool)
        masks = check_masks(masks, rgb.shape[:2], "features masks")
        if len(masks) == 0:
            return np.zeros((0, self.dim), np.float32)
        fmap = self.feature_map(rgb)
        c, gh, gw = fmap.shape
        tokens = fmap.reshape(c, gh * gw).T  # (gh*gw, C)
        out, empty = pool(tokens, mask_weights(masks, (gh, gw)))
        self.empty_masks += empty
        return out
