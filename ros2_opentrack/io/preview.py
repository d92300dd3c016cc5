"""Pictures of a map for people without RViz (no ROS here).

preview.png   a top-down view of the map points with each instance's box, id and label, and below it a strip
              of each instance's best view (the keyframe with its red box), captioned with the same id + label
draw_instances  a camera image with every instance in view outlined (box of its projected points), id + label:
              the node's ~/debug_image
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from .writers import instance_color

_AXES = "xyz"


def caption(inst) -> str:
    return f"#{int(inst.id)} {inst.label}" if getattr(inst, "label", None) else f"#{int(inst.id)}"


def _text(img: np.ndarray, text: str, org: Tuple[int, int], color, scale: float = 0.45) -> None:
    """Text with a dark outline, readable on any background."""
    import cv2

    x, y = int(org[0]), int(org[1])
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, tuple(int(c) for c in color), 1, cv2.LINE_AA)


def up_axis_of(points: np.ndarray) -> int:
    """The world axis the map is flattest along (the 5-95 % spread): the vertical of a room scan, whatever
    convention the poses use (z up for ROS maps, y down for 7-Scenes / camera-first frames)."""
    if len(points) < 10:
        return 2
    lo, hi = np.percentile(points, [5, 95], axis=0)
    return int(np.argmin(hi - lo))


def draw_instances(
    rgb: np.ndarray,
    instances: Sequence,
    K: np.ndarray,
    T_world_cam: np.ndarray,
    thickness: int = 2,
    min_points: int = 20,
) -> Tuple[np.ndarray, List[int]]:
    """A copy of ``rgb`` with each instance whose points project into the image (at least ``min_points`` in
    front of the camera and inside) outlined by the box of those points in its colour, with its id + label.
    Returns (image, ids drawn)."""
    import cv2

    out = np.ascontiguousarray(np.array(rgb, dtype=np.uint8, copy=True))
    h, w = out.shape[:2]
    T_cam_world = np.linalg.inv(np.asarray(T_world_cam, np.float64))
    drawn = []
    for inst in instances:
        pts = np.asarray(inst.points, np.float64).reshape(-1, 3)
        if not len(pts):
            continue
        cam = pts @ T_cam_world[:3, :3].T + T_cam_world[:3, 3]
        cam = cam[cam[:, 2] > 0.05]
        if len(cam) < min_points:
            continue
        uv = cam[:, :2] / cam[:, 2:3] * np.array([K[0, 0], K[1, 1]]) + np.array([K[0, 2], K[1, 2]])
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        if inside.sum() < min_points:
            continue
        uv = uv[inside]
        x0, y0 = np.percentile(uv, 2, axis=0)
        x1, y1 = np.percentile(uv, 98, axis=0)
        color = tuple(int(c) for c in instance_color(int(inst.id)))
        cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), color, thickness)
        _text(out, caption(inst), (int(x0) + 2, max(12, int(y0) - 4)), color)
        drawn.append(int(inst.id))
    return out, drawn


def top_down(
    instances: Sequence,
    scene_map: Optional[Tuple[np.ndarray, np.ndarray]] = None,
    width: int = 900,
    up_axis: Optional[int] = None,
    max_map_points: int = 400000,
) -> np.ndarray:
    """The map seen from above: map points in their colours (dimmed), each instance's points in its colour, its
    box (the footprint of its 3D box) and id + label; a 1 m grid and the axes named in the corner."""
    import cv2

    inst_pts = [np.asarray(i.points, np.float64).reshape(-1, 3) for i in instances]
    if scene_map is not None and len(scene_map[0]):
        map_pts, map_cols = np.asarray(scene_map[0], np.float64), np.asarray(scene_map[1], np.uint8)
    elif any(len(p) for p in inst_pts):
        map_pts = np.concatenate([p for p in inst_pts if len(p)])
        map_cols = np.full((len(map_pts), 3), 160, np.uint8)
    else:
        map_pts, map_cols = np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
    if len(map_pts) > max_map_points:
        keep = np.random.default_rng(0).choice(len(map_pts), max_map_points, replace=False)
        map_pts, map_cols = map_pts[keep], map_cols[keep]
    up = up_axis_of(map_pts) if up_axis is None else int(up_axis)
    a, b = [k for k in range(3) if k != up]  # image x <- axis a, image y <- axis b (upwards)
    if len(map_pts):
        lo, hi = np.percentile(map_pts[:, [a, b]], [0.5, 99.5], axis=0)
    else:
        lo, hi = np.zeros(2), np.ones(2)
    span = np.maximum(hi - lo, 0.5)
    margin = 30
    scale = (width - 2 * margin) / span[0]
    height = int(min(max(span[1] * scale + 2 * margin, 200), 1.5 * width))
    scale = min(scale, (height - 2 * margin) / span[1])
    img = np.full((height, width, 3), 245, np.uint8)

    def px(p2: np.ndarray) -> np.ndarray:
        return np.stack([margin + (p2[:, 0] - lo[0]) * scale, height - margin - (p2[:, 1] - lo[1]) * scale], 1)

    # 1 m grid
    for gx in np.arange(np.ceil(lo[0]), hi[0] + 1e-9):
        x = int(px(np.array([[gx, lo[1]]]))[0, 0])
        cv2.line(img, (x, 0), (x, height - 1), (225, 225, 225), 1)
    for gy in np.arange(np.ceil(lo[1]), hi[1] + 1e-9):
        y = int(px(np.array([[lo[0], gy]]))[0, 1])
        cv2.line(img, (0, y), (width - 1, y), (225, 225, 225), 1)
    if len(map_pts):  # lowest first, so what is higher up stays visible
        order = np.argsort(map_pts[:, up] if up != 1 else -map_pts[:, up])
        uv = px(map_pts[order][:, [a, b]]).astype(int)
        ok = (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
        img[uv[ok, 1], uv[ok, 0]] = (map_cols[order][ok].astype(np.float32) * 0.8 + 245 * 0.2).astype(np.uint8)
    labels = []  # (size, text, colour, box) placed after every box is drawn
    for inst, pts in zip(instances, inst_pts):
        if not len(pts):
            continue
        color = tuple(int(c) for c in instance_color(int(inst.id)))
        uv = px(pts[:, [a, b]]).astype(int)
        ok = (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
        img[uv[ok, 1], uv[ok, 0]] = color
        (x0, y1), (x1, y0) = px(np.array([pts[:, [a, b]].min(0), pts[:, [a, b]].max(0)])).astype(int)
        cv2.rectangle(img, (x0, y0), (x1, y1), color, 2)
        labels.append((len(pts), caption(inst), color, (x0, y0, x1, y1)))
    _place_labels(img, labels)
    title = np.full((26, width, 3), 255, np.uint8)  # a band of its own: no label ever covers it
    _text(
        title,
        f"top-down: {_AXES[a]} right, {_AXES[b]} up (grid 1 m), {len(instances)} instances",
        (8, 18),
        (255, 255, 255),
        0.5,
    )
    return np.concatenate([title, img])


def _place_labels(img: np.ndarray, labels: list, scale: float = 0.45) -> None:
    """Each instance's id + label beside its box, largest instances first, at the first spot (above, inside the
    top, below the box) that overlaps no label already placed; a label with no free spot is left out (the
    strip of best views below names every instance)."""
    import cv2

    h, w = img.shape[:2]
    taken: List[Tuple[int, int, int, int]] = []
    for _, text, color, (x0, y0, _, y1) in sorted(labels, key=lambda item: -item[0]):
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 3)
        for bx, by in ((x0, y0 - 4), (x0 + 2, y0 + th + 4), (x0, y1 + th + 4)):
            bx, by = int(min(max(bx, 0), w - tw)), int(min(max(by, th + 2), h - 2))
            rect = (bx, by - th - 2, bx + tw, by + 2)
            if not any(r[0] < rect[2] and rect[0] < r[2] and r[1] < rect[3] and rect[1] < r[3] for r in taken):
                taken.append(rect)
                _text(img, text, (bx, by), color, scale)
                break


def view_strip(
    instances: Sequence, view_image: Callable, width: int = 900, thumb_h: int = 150, max_views: int = 60
) -> Optional[np.ndarray]:
    """Each instance's best view (red box drawn by ``view_image``), captioned with id + label, in rows."""
    import cv2

    thumbs = []
    for inst in list(instances)[:max_views]:
        views = list(getattr(inst, "views", None) or [])
        if not views:
            continue
        try:
            rgb = np.asarray(view_image(views[0]), np.uint8)
        except Exception:  # an image no longer stored: no thumbnail
            continue
        tw = max(1, int(round(rgb.shape[1] * thumb_h / rgb.shape[0])))
        thumb = cv2.resize(rgb, (tw, thumb_h), interpolation=cv2.INTER_AREA)
        band = np.full((22, tw, 3), 255, np.uint8)
        color = instance_color(int(inst.id))
        band[:, :6] = color
        cv2.putText(band, caption(inst)[:40], (10, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        thumbs.append(np.concatenate([thumb, band], 0))
    if not thumbs:
        return None
    rows, row, used, gap = [], [], 0, 4
    for t in thumbs:
        if row and used + t.shape[1] > width:
            rows.append(row)
            row, used = [], 0
        row.append(t)
        used += t.shape[1] + gap
    rows.append(row)
    out = []
    for row in rows:
        line = np.full((thumb_h + 22, width, 3), 245, np.uint8)
        x = 0
        for t in row:
            tw = min(t.shape[1], width - x)
            line[:, x : x + tw] = t[:, :tw]
            x += tw + gap
        out.append(line)
        out.append(np.full((gap, width, 3), 245, np.uint8))
    return np.concatenate(out, 0)


def preview_image(
    instances: Sequence, scene_map=None, view_image: Optional[Callable] = None, width: int = 900
) -> np.ndarray:
    """top_down above view_strip (when ``view_image`` is given and some instance has a view)."""
    parts = [top_down(instances, scene_map, width)]
    if view_image is not None:
        strip = view_strip(instances, view_image, width)
        if strip is not None:
            parts += [np.full((6, width, 3), 200, np.uint8), strip]
    return np.concatenate(parts, 0)


def write_preview(
    path, instances: Sequence, scene_map=None, view_image: Optional[Callable] = None, width: int = 900
) -> Path:
    """preview.png (see the module doc); the file is written whole (a temporary file, then renamed)."""
    import os

    import cv2

    path = Path(path)
    img = preview_image(instances, scene_map, view_image, width)
    ok, data = cv2.imencode(".png", np.ascontiguousarray(img[..., ::-1]))
    if not ok:  # pragma: no cover - cv2 always encodes uint8 HxWx3
        raise OSError(f"could not encode {path}")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data.tobytes())
    os.replace(tmp, path)
    return path
