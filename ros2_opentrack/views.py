"""Per-track view ranking and the red-box images the labeller sees (paper 3.3)."""
from __future__ import annotations

import numpy as np


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
