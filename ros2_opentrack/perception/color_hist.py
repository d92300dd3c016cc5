"""Weight-free appearance descriptor: a joint HSV histogram over each mask's pixels.

Hue is binned finer than saturation and value because it carries most of an object's colour identity and
is stable under the brightness changes between views. Bins are square-rooted (Hellinger) and L2-normalised,
so the dot product of two descriptors is a cosine in [0, 1]."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError


class ColorHistogramFeatures:
    def __init__(self, bins: Sequence[int] = (12, 4, 4), stride: int = 2):
        self.bins = tuple(int(b) for b in bins)
        self.stride = max(1, int(stride))
        self.dim = int(np.prod(self.bins))

    @classmethod
    def from_config(cls, feature_cfg=None, perception_cfg=None) -> "ColorHistogramFeatures":
        return cls()

    def bin_image(self, rgb: np.ndarray) -> np.ndarray:
        """Per-pixel joint bin index (H, W) int32."""
        import cv2

        hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)  # H in [0, 180)
        hb, sb, vb = self.bins
        h = hsv[..., 0].astype(np.int32) * hb // 180
        s = hsv[..., 1].astype(np.int32) * sb // 256
        v = hsv[..., 2].astype(np.int32) * vb // 256
        return (h * sb + s) * vb + v

    def extract_boxed(self, rgb: np.ndarray, masks, boxes) -> np.ndarray:
        """Fast path for many masks: each mask is only read inside its box (x0, y0, x1, y1)."""
        rgb = np.asarray(rgb)
        out = np.zeros((len(masks), self.dim), np.float32)
        if not len(masks):
            return out
        bins = self.bin_image(rgb)
        h, w = rgb.shape[:2]
        for i, (m, b) in enumerate(zip(masks, boxes)):
            x0, y0 = max(0, int(b[0])), max(0, int(b[1]))
            x1, y1 = min(w, int(np.ceil(b[2]))), min(h, int(np.ceil(b[3])))
            crop, mcrop = bins[y0:y1:self.stride, x0:x1:self.stride], m[y0:y1:self.stride, x0:x1:self.stride]
            if not mcrop.any():
                crop, mcrop = bins[y0:y1, x0:x1], m[y0:y1, x0:x1]
            out[i] = np.bincount(crop[mcrop], minlength=self.dim)
        hist = np.sqrt(out)
        return hist / np.maximum(np.linalg.norm(hist, axis=1, keepdims=True), 1e-12)

    def extract(self, rgb: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """One image, masks (N, H, W) bool -> (N, dim) float32 descriptors (all-zero for an empty mask)."""
        rgb = np.asarray(rgb)
        masks = np.asarray(masks, dtype=bool)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise InputError(f"color_hist features need an HxWx3 uint8 image, got {rgb.shape} {rgb.dtype}")
        if masks.ndim != 3 or masks.shape[1:] != rgb.shape[:2]:
            raise InputError(f"masks must be (N, {rgb.shape[0]}, {rgb.shape[1]}) bool, got shape {masks.shape}")
        n = len(masks)
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        s = self.stride
        bins = self.bin_image(rgb)[::s, ::s]
        sub = masks[:, ::s, ::s]
        if not sub.any(axis=(1, 2)).all():  # tiny masks may fall between the sampled pixels
            sub = masks
            bins = self.bin_image(rgb)
        idx, rows, cols = np.nonzero(sub)
        hist = np.bincount(idx * self.dim + bins[rows, cols], minlength=n * self.dim).reshape(n, self.dim)
        hist = np.sqrt(hist.astype(np.float32))
        norm = np.linalg.norm(hist, axis=1, keepdims=True)
        return (hist / np.maximum(norm, 1e-12)).astype(np.float32)
