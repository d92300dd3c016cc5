"""Tiny numpy ray-caster for core tests and benchmarks: coloured boxes on a floor, seen by a pinhole camera."""
from __future__ import annotations

import numpy as np

from ros2_opentrack.config import OpenTrackConfig, from_flat
from ros2_opentrack.types import Frame, Mask2D


def intrinsics(hw=(120, 160), f=None) -> np.ndarray:
    h, w = hw
    f = f or 0.9 * w
    return np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], dtype=np.float64)


def look_at(position, target, up=(0, 0, 1)) -> np.ndarray:
    """Camera-to-world pose of an OpenCV camera at ``position`` looking at ``target`` (world z up)."""
    p = np.asarray(position, float)
    f = np.asarray(target, float) - p
    f /= np.linalg.norm(f)
    r = np.cross(f, up)
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    T = np.eye(4)
    T[:3, :3] = np.stack([r, d, f], axis=1)
    T[:3, 3] = p
    return T


FLOOR = (np.array([-20.0, -20.0, -1.0]), np.array([20.0, 20.0, 0.0]))


def render(boxes, K, T, hw):
    """boxes: list of (min (3,), max (3,)). Returns (depth (H, W) float32 z-depth, id (H, W) int: index of the
    box hit, -1 for the floor or nothing)."""
    h, w = hw
    u, v = np.meshgrid(np.arange(w) + 0.0, np.arange(h) + 0.0)
    dirs_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
    dirs = dirs_cam @ T[:3, :3].T
    origin = T[:3, 3]
    all_boxes = [FLOOR] + list(boxes)
    lo = np.array([b[0] for b in all_boxes])[:, None, :]
    hi = np.array([b[1] for b in all_boxes])[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dirs[None]
        t1 = (lo - origin) * inv
        t2 = (hi - origin) * inv
    tnear = np.nanmax(np.minimum(t1, t2), axis=2)
    tfar = np.nanmin(np.maximum(t1, t2), axis=2)
    hit = (tfar >= tnear) & (tnear > 1e-6)
    tnear = np.where(hit, tnear, np.inf)
    first = np.argmin(tnear, axis=0)
    t = tnear[first, np.arange(len(first))]
    depth = np.where(np.isfinite(t), t, 0.0).reshape(h, w).astype(np.float32)  # dirs_cam has z = 1: t is z
    ids = (first - 1).reshape(h, w)
    ids[depth == 0] = -1
    return depth, ids


def make_frame(boxes, colors, T, hw=(120, 160), K=None, index=0, stamp=None, min_pixels=20, rng=None):
    """A Frame with one anonymous mask per visible box (source_id = box index)."""
    K = intrinsics(hw) if K is None else K
    depth, ids = render(boxes, K, T, hw)
    rgb = np.full(hw + (3,), 90, np.uint8)
    for i, c in enumerate(colors):
        rgb[ids == i] = c
    if rng is not None:
        rgb = np.clip(rgb.astype(int) + rng.integers(-8, 9, rgb.shape), 0, 255).astype(np.uint8)
    masks = [Mask2D(mask=ids == i, source_id=i) for i in range(len(boxes)) if (ids == i).sum() >= min_pixels]
    return Frame(rgb=rgb, depth=depth, K=K, T_world_cam=T, stamp=float(index if stamp is None else stamp),
                 index=index, masks=masks)


def cube(center, size):
    c = np.asarray(center, float)
    s = np.asarray(size, float) / 2 if np.ndim(size) else np.full(3, size / 2.0)
    return (c - s, c + s)


def orbit(center, radius, height, angles_deg):
    """Poses on a circle around ``center`` looking at it."""
    out = []
    for a in np.radians(angles_deg):
        pos = np.asarray(center, float) + [radius * np.cos(a), radius * np.sin(a), 0]
        pos[2] = height
        out.append(look_at(pos, center))
    return out


def core_config(every_n=1, refine_every=None, min_observations=1, **overrides) -> OpenTrackConfig:
    """The core tests' config: dataset masks, colour-histogram features, every frame a keyframe, small masks
    allowed. ``refine_every`` sets refine.every_n_keyframes (None: the default); ``overrides`` are dotted
    names with the dots written as double underscores, e.g. tracking__alpha=0.0."""
    cfg = OpenTrackConfig()
    cfg.masks.source = "dataset"
    cfg.perception.features.name = "color_hist"
    cfg.perception.labeler.name = "none"  # the default is the MLLM (weights); core tests run without it
    cfg.keyframes.every_n = every_n
    cfg.lift.min_mask_pixels = 20
    cfg.refine.min_observations = min_observations
    if refine_every is not None:
        cfg.refine.every_n_keyframes = refine_every
    return from_flat({k.replace("__", "."): v for k, v in overrides.items()}, cfg) if overrides else cfg
