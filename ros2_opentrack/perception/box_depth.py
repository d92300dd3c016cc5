"""Weight-free segmenter from depth (``segmenter.name: box_depth``): inside each detector box keep the pixels of
the dominant NEAR depth mode, i.e. the object in front of its background.

Per box: a histogram of the box's valid depths (bins of ``segmenter.depth_bin_m``, lightly smoothed); its modes
are the peaks with the basin around each (down to a valley, or to where the count falls under a tenth of the
peak); the nearest mode holding at least ``segmenter.min_mode_fraction`` of the box's valid pixels wins (so a
few flying pixels in front do not, and the wall behind the object loses to the object). Its depth range is kept,
then cleaned: morphological opening and closing (kernel ~3 % of the box, 3..7 px) and the largest 8-connected
component. The predicted "IoU" returned is the share of the box's valid pixels in the mask.

It needs the frame's depth: ``needs_depth = True`` tells the model mask source to call
``segment(rgb, boxes, depth=...)``. CPU only; a few ms per box at 640x480."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from ..errors import InputError
from .onnx_segmenter import clip_boxes


class BoxDepthSegmenter:
    needs_depth = True  # the mask source passes the frame's depth (metres, 0 / NaN invalid)

    def __init__(
        self,
        bin_m: float = 0.02,
        min_mode_fraction: float = 0.15,
        min_pixels: int = 20,
        depth_min_m: float = 0.1,
        depth_max_m: float = 10.0,
    ):
        if bin_m <= 0 or not (0 < min_mode_fraction <= 1):
            raise InputError(
                f"box_depth: bin {bin_m} m must be > 0 and min_mode_fraction {min_mode_fraction} in (0, 1]"
            )
        self.bin_m = float(bin_m)
        self.min_mode_fraction = float(min_mode_fraction)
        self.min_pixels = int(min_pixels)
        self.depth_min_m, self.depth_max_m = float(depth_min_m), float(depth_max_m)
        self.degenerate_boxes = 0
        self.device = "cpu"

    @staticmethod
    def requirements(cfg: Any, perception_cfg: Any = None):
        from .base import Requirements

        return Requirements(modules=("cv2",), device="cpu", note="not needed (uses depth)")

    @classmethod
    def from_config(cls, cfg: Any, perception_cfg: Any = None) -> "BoxDepthSegmenter":
        return cls(bin_m=getattr(cfg, "depth_bin_m", 0.02), min_mode_fraction=getattr(cfg, "min_mode_fraction", 0.15))

    # -------------------------------------------------------------------------------------------------
    def segment(
        self, rgb: np.ndarray, boxes: np.ndarray, depth: Optional[np.ndarray] = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        """(masks (N, H, W) bool, share of each box's valid depth in its mask (N,))."""
        if depth is None:
            raise InputError("segmenter box_depth needs the frame's depth: call segment(rgb, boxes, depth=...)")
        h, w = np.asarray(rgb).shape[:2]
        depth = np.asarray(depth, np.float32)
        if depth.shape != (h, w):
            import cv2

            depth = cv2.resize(depth, (w, h), interpolation=cv2.INTER_NEAREST)
        clipped, keep = clip_boxes(boxes, (h, w))
        masks = np.zeros((len(clipped), h, w), bool)
        scores = np.zeros(len(clipped), np.float32)
        self.degenerate_boxes += int((~keep).sum())
        for i in np.flatnonzero(keep):
            x0, y0, x1, y1 = clipped[i]
            c0, r0 = int(np.floor(x0)), int(np.floor(y0))
            c1, r1 = max(c0 + 1, int(np.ceil(x1))), max(r0 + 1, int(np.ceil(y1)))
            crop, share = self.segment_crop(depth[r0:r1, c0:c1])
            masks[i, r0:r1, c0:c1] = crop
            scores[i] = share
        return masks, scores

    def near_mode(self, values: np.ndarray) -> Optional[Tuple[float, float, float]]:
        """(low, high, share) depth range of the nearest strong mode of ``values`` (1-D, metres), or None."""
        lo = float(values.min())
        idx = ((values - lo) / self.bin_m).astype(np.int64)
        hist = np.bincount(idx).astype(np.float64)
        kernel = np.array([1, 4, 6, 4, 1], np.float64) / 16.0
        smooth = np.convolve(np.pad(hist, 2), kernel, mode="valid") if len(hist) > 1 else hist
        n = len(smooth)
        left = np.r_[-1.0, smooth[:-1]]
        right = np.r_[smooth[1:], -1.0]
        peaks = np.flatnonzero((smooth >= left) & (smooth > right) & (smooth > 0))
        total = float(len(values))
        for p in peaks:  # nearest first
            top = smooth[p]
            a = p
            while a > 0 and smooth[a - 1] <= smooth[a] and smooth[a - 1] > 0.1 * top:
                a -= 1
            b = p
            while b < n - 1 and smooth[b + 1] <= smooth[b] and smooth[b + 1] > 0.1 * top:
                b += 1
            share = float(hist[a : b + 1].sum()) / total
            if share >= self.min_mode_fraction:
                return lo + a * self.bin_m, lo + (b + 1) * self.bin_m, share
        return None

    def segment_crop(self, depth: np.ndarray) -> Tuple[np.ndarray, float]:
        """Mask of one box's depth crop and its share of the valid pixels."""
        import cv2

        valid = np.isfinite(depth) & (depth > self.depth_min_m) & (depth < self.depth_max_m)
        n_valid = int(valid.sum())
        empty = np.zeros(depth.shape, bool)
        if n_valid < self.min_pixels:
            return empty, 0.0
        mode = self.near_mode(depth[valid])
        if mode is None:
            return empty, 0.0
        low, high, _ = mode
        raw = (valid & (depth >= low) & (depth < high)).astype(np.uint8)
        k = int(np.clip(round(0.03 * min(depth.shape)), 3, 7)) | 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        clean = cv2.morphologyEx(raw, cv2.MORPH_OPEN, kernel)
        clean = cv2.morphologyEx(clean, cv2.MORPH_CLOSE, kernel)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(clean, connectivity=8)
        if count <= 1:
            return empty, 0.0
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        mask = labels == largest
        return mask, float((mask & valid).sum()) / n_valid
