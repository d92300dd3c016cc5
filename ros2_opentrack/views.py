"""Per-track view ranking and the red-box images the labeller sees (paper 3.3)."""

from __future__ import annotations

import threading

import numpy as np

from .errors import InputError
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
    out[y0 : min(y0 + t, y1), x0:x1] = c
    out[max(y1 - t, y0) : y1, x0:x1] = c
    out[y0:y1, x0 : min(x0 + t, x1)] = c
    out[y0:y1, max(x1 - t, x0) : x1] = c
    return out


class ImageStore:
    """Keyframe images kept JPEG-encoded and shared by every track that keeps a view of them; an image is
    dropped when the last view referring to it is released, so memory is bounded by tracks x top_k.

    Thread-safe: the pipeline's thread adds and releases images while query threads read them (``get``)."""

    def __init__(self, jpeg_quality: int = 90):
        self.quality = int(jpeg_quality)
        self._images: dict = {}  # key -> [jpeg bytes, reference count]
        self._next = 1
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._images)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(len(v[0]) for v in self._images.values())

    def reserve(self) -> int:
        """A key for an image that may be stored (put) later."""
        key = self._next
        self._next += 1
        return key

    def put(self, key: int, rgb: np.ndarray, refs: int) -> None:
        data = encode_jpeg(rgb, self.quality)
        with self._lock:
            self._images[key] = [data, int(refs)]

    def jpeg(self, key: int) -> bytes:
        return self._images[key][0]

    def get(self, key: int):
        """The JPEG bytes of ``key``, or None when it is not (or no longer) stored: one atomic look-up."""
        with self._lock:
            entry = self._images.get(key)
        return None if entry is None else entry[0]

    def __contains__(self, key: int) -> bool:
        return key in self._images

    def release(self, key: int) -> None:
        with self._lock:
            entry = self._images.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                del self._images[key]

    @property
    def next_key(self) -> int:
        return self._next

    def entries(self) -> list:
        """(key, jpeg bytes, reference count) of every stored image (for the map state)."""
        with self._lock:
            return [(k, data, refs) for k, (data, refs) in self._images.items()]

    def restore(self, entries, next_key: int) -> None:
        images = {int(k): [data, int(refs)] for k, data, refs in entries}
        with self._lock:
            self._images = images
        self._next = int(next_key)

    def decode(self, key: int) -> np.ndarray:
        return decode_jpeg(self.jpeg(key))

    def clear(self) -> None:
        with self._lock:
            self._images = {}


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


class TrackViews:
    """The one owner of every track's top-K views and of the keyframe images they point to (the tracker
    knows nothing of images). Views follow a track through merges and are released when it ends."""

    def __init__(self, views_cfg):
        self.top_k = int(views_cfg.top_k)
        self.box_thickness = int(views_cfg.box_thickness_px)
        self.images = ImageStore(views_cfg.jpeg_quality)
        self._views: dict = {}  # track id -> [View], best first

    def of(self, track_id: int) -> list:
        return list(self._views.get(track_id, ()))

    def offer(self, rgb: np.ndarray, candidates) -> None:
        """One keyframe's candidate views, (track id, View) pairs: each joins its track's top-K when it ranks
        there; the frame's image is stored once, and only when some track kept it."""
        key = self.images.reserve()
        refs = 0
        for track_id, view in candidates:
            views = self._views.get(track_id, [])
            if not would_keep(views, view, self.top_k):
                continue
            view.image_key = key
            refs += 1
            self._views[track_id] = self._trim(views + [view])
        if refs:
            self.images.put(key, rgb, refs)

    def move(self, from_id: int, to_id: int) -> None:
        """A merge: the removed track's views compete for the kept track's top-K."""
        moved = self._views.pop(from_id, [])
        if moved:
            self._views[to_id] = self._trim(self._views.get(to_id, []) + moved)

    def forget(self, track_ids) -> None:
        for tid in track_ids:
            for v in self._views.pop(tid, ()):
                self.images.release(v.image_key)

    def clear(self) -> None:
        self._views.clear()
        self.images.clear()

    def restore(self, views: dict, images: list, next_key: int) -> None:
        """Replace everything with a loaded state (map_state.load): views per track and the images they use."""
        self._views = {tid: list(v) for tid, v in views.items() if v}
        self.images.restore(images, next_key)

    def jpegs(self, track_id: int) -> list:
        """(jpeg bytes, box) of the track's stored views, best first: what a label request carries."""
        return [
            (self.images.jpeg(v.image_key), v.box) for v in self._views.get(track_id, ()) if v.image_key in self.images
        ]

    def image(self, view, boxed: bool = True) -> np.ndarray:
        """The stored keyframe image of a view (decoded), with the track's box drawn in red by default. Safe to
        call from another thread than the pipeline's (a query thread): the image is looked up once."""
        data = self.images.get(view.image_key)
        if data is None:
            raise InputError(f"view of frame {view.frame_index}: its image is no longer stored (view dropped)")
        rgb = decode_jpeg(data)
        return draw_red_box(rgb, view.box, self.box_thickness) if boxed else rgb

    def _trim(self, views: list) -> list:
        kept, dropped = keep_top_k(views, self.top_k)
        for v in dropped:
            self.images.release(v.image_key)
        return kept
