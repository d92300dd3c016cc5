"""Weight-free appearance descriptor: a joint HSV histogram over each mask's pixels.

Hue is binned finer than saturation and value because it carries most of an object's colour identity and
is stable under the brightness changes between views. Bins are square-rooted (Hellinger) and L2-normalised,
so the dot product of two descriptors is a cosine in [0, 1]."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import compiled
from ..errors import InputError
from ..types import check_rgb
from .base import Requirements


class ColorHistogramFeatures:
    def __init__(self, bins: Sequence[int] = (12, 4, 4), stride: int = 2):
        self.bins = tuple(int(b) for b in bins)
        self.stride = max(1, int(stride))
        self.dim = int(np.prod(self.bins))

    @staticmethod
    def requirements(feature_cfg=None, perception_cfg=None) -> Requirements:
        return Requirements(modules=("numpy", "cv2"), device="cpu")

    @classmethod
    def from_config(cls, feature_cfg=None, perception_cfg=None) -> "ColorHistogramFeatures":
        return cls()

    def bin_image(self, rgb: np.ndarray) -> np.ndarray:
        """Per-pixel joint bin index (H, W) int32."""
        import cv2

        hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)  # H in [0, 180)
        if compiled.ENABLED:  # the lines below in one pass
            return compiled.joint_bins(hsv, self._lut)
        h, s, v = cv2.split(cv2.LUT(hsv, self._lut))  # per channel: its share of the joint bin index
        if self.dim <= 256:  # the joint index fits a byte: add in uint8 (the arithmetic dominated here)
            return cv2.add(cv2.add(h, s), v).astype(np.int32)
        return h.astype(np.int32) + s + v

    @property
    def _lut(self) -> np.ndarray:
        """(1, 256, 3) table: channel value -> that channel's term of (h * sb + s) * vb + v."""
        if getattr(self, "_lut_cache", None) is None:
            hb, sb, vb = self.bins
            x = np.arange(256)
            terms = [np.minimum(x, 179) * hb // 180 * sb * vb, x * sb // 256 * vb, x * vb // 256]
            dtype = np.uint8 if self.dim <= 256 else np.int32
            self._lut_cache = np.stack(terms, axis=1).astype(dtype)[None]
        return self._lut_cache

    def extract(self, rgb: np.ndarray, masks, boxes) -> np.ndarray:
        """One image, N HxW bool masks and their (N, 4) boxes x0, y0, x1, y1 -> (N, dim) float32 descriptors
        (all-zero for an empty mask). Each mask is only read inside its box: many masks cost little."""
        rgb = check_rgb(rgb, "color_hist features: rgb")
        h, w = rgb.shape[:2]
        if len(boxes) != len(masks):
            raise InputError(f"color_hist features: {len(masks)} masks but {len(boxes)} boxes")
        out = np.zeros((len(masks), self.dim), np.float32)
        if not len(masks):
            return out
        bins = self.bin_image(rgb)
        for i, (m, b) in enumerate(zip(masks, boxes)):
            m = np.asarray(m, dtype=bool)
            if m.shape != (h, w):
                raise InputError(f"color_hist features: mask {i} is {m.shape}, expected ({h}, {w}) like the image")
            x0, y0 = max(0, int(b[0])), max(0, int(b[1]))
            x1, y1 = min(w, int(np.ceil(b[2]))), min(h, int(np.ceil(b[3])))
            crop, mcrop = (
                bins[y0 : y1 : self.stride, x0 : x1 : self.stride],
                m[y0 : y1 : self.stride, x0 : x1 : self.stride],
            )
            if not mcrop.any():  # a tiny mask may fall between the sampled pixels
                crop, mcrop = bins[y0:y1, x0:x1], m[y0:y1, x0:x1]
            out[i] = np.bincount(crop[mcrop], minlength=self.dim)
        hist = np.sqrt(out)
        return hist / np.maximum(np.linalg.norm(hist, axis=1, keepdims=True), 1e-12)
