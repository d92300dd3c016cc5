"""Per-track view ranking and the red-box images the labeller sees (paper 3.3)."""
from __future__ import annotations

import numpy as np

from .io.encodings import decode_jpeg, encode_jpeg


def draw_red_box(rgb: np.ndarray, box, thickness: int = 3, color=(255, 0, 0)) -> np.ndarray:
    """A copy of ``rgb`` with an axis-aligned rectangle drawn on it; the box is clipped to the image.

    The outline is ``thickness`` pixels wide and lies inside the box [x0, x1) x [y0, y1)."""
    out = np.array(rgb, dtype=np.uint8, copy=True)
    h, w = out.shape[:2]
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    x0, x1 = max(0, min(x0, w)), max(0, min(x1, w))
    y0, y1 = max(0, min(y0, h)), max(0, min(y1, h))
    if x1 <= x0 or y1 <= y0:
        return out
    t = max(1, int(thickness))
    c = np.asarray(color, dtype=np.uint8)
    out[y0:min(y0 + t, y1), x0:x1] = c
    out[max(y1 - t, y0):y1, x0:x1] = c
    out[y0:y1, x0:min(x0 + t, x1)] = c
    out[y0:y1, max(x1 - t, x0):x1] = c
    return out


class ImageStore:
    """Keyframe images kept JPEG-encoded and shared by every track that keeps a view of them; an image is
    dropped when the last view referring to it is released, so memory is bounded by tracks x top_k."""

    def __init__(self, jpeg_quality: int = 90):
        self.quality = int(jpeg_quality)
        self._images: dict = {}  # key -> [jpeg bytes, reference count]
        self._next = 1

    def __len__(self) -> int:
        return len(self._images)

    @property
    def nbytes(self) -> int:
        return sum(len(v[0]) for v in self._images.values())

    def reserve(self) -> int:
        """A key for an image that may be stored (put) later."""
        key = self._next
        self._next += 1
        return key

    def put(self, key: int, rgb: np.ndarray, refs: int) -> None:
        self._images[key] = [encode_jpeg(rgb, self.quality), int(refs)]

    def jpeg(self, key: int) -> bytes:
        return self._images[key][0]

    def __contains__(self, key: int) -> bool:
        return key in self._images

    def release(self, key: int) -> None:
        entry = self._images.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._images[key]

    def decode(self, key: int) -> np.ndarray:
        return decode_jpeg(self.jpeg(key))

    def clear(self) -> None:
        self._images.clear()


def view_rank(view) -> tuple:
    """Sort key, best first: fraction of the track inside the view's frustum, then projected mask area, then
    the older view (a revisit that is only as good does not replace a stored image: no churn)."""
    return (-float(view.visible_fraction), -int(view.mask_area), int(view.frame_index))


def would_keep(views: list, candidate, top_k: int) -> bool:
    """Would ``candidate`` make the track's top-K?"""
    if len(views) < top_k:
        return True
    return view_rank(candidate) < max(view_rank(v) for v in views)


def keep_top_k(views: list, top_k: int) -> tuple:
    """(kept views best first, dropped views)."""
    ranked = sorted(views, key=view_rank)
    return ranked[:top_k], ranked[top_k:]
