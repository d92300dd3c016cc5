"""Synthetic RGB-D scenes with ground truth: procedural rooms, the ScanNet room of ../shared/data, a camera
trajectory that looks at the objects (with revisits), a numpy z-buffer point-splat renderer, and a model of a
2D segmenter's errors (MaskNoise). Used by the demo, the quality benchmark and the tests; so are the exactly
ray-cast box scenes of the core tests.

World frame: z up, floor at z = 0. Cameras are OpenCV (x right, y down, z forward), T_world_cam camera-to-world.
Instance 0 is background (walls, floor, ceiling): it gets no mask and is ignored by evaluation."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError
from .geometry import look_at
from .io.encodings import depth_to_millimetres, label_image_to_masks, masks_to_label_image
from .types import Frame, Mask2D

FALSE_BLOB_ID_BASE = 50000  # source ids of false-positive blobs start here (never a true instance id)
SCANNET20 = (
    "wall",
    "floor",
    "cabinet",
    "bed",
    "chair",
    "sofa",
    "table",
    "door",
    "window",
    "bookshelf",
    "picture",
    "counter",
    "desk",
    "curtain",
    "refrigerator",
    "shower curtain",
    "toilet",
    "sink",
    "bathtub",
    "otherfurniture",
)  # 1-based semantic ids of the ScanNet npy export


@dataclass
class SyntheticScene:
    points: np.ndarray  # (N, 3) float32 world
    colors: np.ndarray  # (N, 3) uint8
    instance: np.ndarray  # (N,) int32, 0 = background
    labels: Dict[int, str]  # instance id -> class name
    name: str = "synthetic"
    radius: Optional[np.ndarray] = None  # (N,) float32 surface radius each point stands for (splat size)

    def __post_init__(self):
        self.points = np.ascontiguousarray(self.points, dtype=np.float32)
        self.colors = np.ascontiguousarray(self.colors, dtype=np.uint8)
        self.instance = np.ascontiguousarray(self.instance, dtype=np.int32)
        n = len(self.points)
        if self.points.shape != (n, 3) or self.colors.shape != (n, 3) or self.instance.shape != (n,):
            raise InputError(
                f"scene '{self.name}': points (N,3), colors (N,3) and instance (N,) must agree, got "
                f"{self.points.shape}, {self.colors.shape}, {self.instance.shape}"
            )
        if self.radius is None:
            self.radius = estimate_radius(self.points)
        self.radius = np.asarray(self.radius, dtype=np.float32)

    @property
    def instance_ids(self) -> List[int]:
        return [int(i) for i in np.unique(self.instance) if i != 0]

    def class_ids(self) -> Dict[str, int]:
        """Class name -> 1-based id (sorted names), the 'label' part of gt_instances.txt."""
        return {name: k + 1 for k, name in enumerate(sorted(set(self.labels.values())))}

    def gt_ids(self) -> np.ndarray:
        """Per point label*1000+instance (ScanNet convention), 0 = ignore."""
        cls = self.class_ids()
        lut = {i: cls[self.labels[i]] * 1000 + i for i in self.instance_ids if i in self.labels}
        out = np.zeros(len(self.points), np.int64)
        for i, v in lut.items():
            out[self.instance == i] = v
        return out


def estimate_radius(points: np.ndarray, k: int = 4) -> np.ndarray:
    """Half the mean distance to the k nearest neighbours, times 1.5: a disc of that radius closes the surface."""
    from scipy.spatial import cKDTree

    if len(points) < k + 1:
        return np.full(len(points), 0.01, np.float32)
    d, _ = cKDTree(points).query(points, k=k + 1)
    return (0.75 * d[:, 1:].mean(axis=1)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Procedural room

# name -> (kind, size range (w, d, h) in m, colour choices (RGB))
_CATALOG = {
    "chair": ("chair", ((0.45, 0.5), (0.45, 0.5), (0.8, 0.95)), [(120, 72, 40), (40, 40, 45), (150, 30, 30)]),
    "table": ("table", ((1.0, 1.4), (0.7, 0.9), (0.72, 0.76)), [(160, 110, 70), (225, 225, 220)]),
    "cabinet": ("box", ((0.6, 0.9), (0.4, 0.5), (0.8, 1.3)), [(235, 232, 220), (110, 80, 55)]),
    "box": ("box", ((0.35, 0.5), (0.3, 0.45), (0.25, 0.4)), [(190, 150, 100), (60, 90, 160)]),
    "trash can": ("cylinder", ((0.3, 0.36), (0.3, 0.36), (0.4, 0.55)), [(70, 70, 75), (40, 120, 60)]),
    "plant": ("plant", ((0.35, 0.45), (0.35, 0.45), (0.7, 1.0)), [(50, 130, 55)]),
    "sofa": ("sofa", ((1.6, 2.0), (0.8, 0.9), (0.75, 0.85)), [(90, 100, 140), (130, 60, 50)]),
    "shelf": ("box", ((0.8, 1.0), (0.3, 0.35), (1.4, 1.8)), [(140, 100, 60), (240, 240, 235)]),
    "bin": ("cylinder", ((0.25, 0.3), (0.25, 0.3), (0.3, 0.4)), [(200, 60, 40), (40, 70, 170)]),
}
_ORDER = [
    "chair",
    "table",
    "cabinet",
    "box",
    "trash can",
    "chair",
    "plant",
    "sofa",
    "shelf",
    "bin",
    "box",
    "cabinet",
    "chair",
    "trash can",
    "plant",
]
WALL_COLOR, FLOOR_COLOR, CEILING_COLOR = (205, 200, 185), (150, 125, 95), (235, 235, 235)


def _grid(a0, a1, b0, b1, spacing, rng):
    """Jittered grid samples of a rectangle: even coverage, so discs of 0.75 * spacing close the surface."""
    na = max(2, int(np.ceil((a1 - a0) / spacing)))
    nb = max(2, int(np.ceil((b1 - b0) / spacing)))
    ga, gb = np.meshgrid((np.arange(na) + 0.5) / na, (np.arange(nb) + 0.5) / nb, indexing="ij")
    ga = ga.ravel() + rng.uniform(-0.3, 0.3, ga.size) / na
    gb = gb.ravel() + rng.uniform(-0.3, 0.3, gb.size) / nb
    return a0 + (a1 - a0) * np.clip(ga, 0, 1), b0 + (b1 - b0) * np.clip(gb, 0, 1)


def _box_surface(lo, hi, spacing, rng, faces="all"):
    """Points on the faces of an axis-aligned box (bottom face omitted when faces='no_bottom')."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    pts = []
    for axis in range(3):
        for side, value in ((0, lo[axis]), (1, hi[axis])):
            if faces == "no_bottom" and axis == 2 and side == 0:
                continue
            if side == 1 and hi[axis] == lo[axis]:
                continue  # a flat box (floor, wall) has one face
            a, b = [i for i in range(3) if i != axis]
            if hi[a] == lo[a] or hi[b] == lo[b]:
                continue  # degenerate face of a flat box
            pa, pb = _grid(lo[a], hi[a], lo[b], hi[b], spacing, rng)
            p = np.empty((len(pa), 3))
            p[:, a], p[:, b], p[:, axis] = pa, pb, value
            pts.append(p)
    return np.concatenate(pts)


def _cylinder_surface(center_xy, radius, z0, z1, spacing, rng, top=True):
    ang, zz = _grid(0.0, 2 * np.pi * radius, z0, z1, spacing, rng)
    ang = ang / radius
    side = np.stack([center_xy[0] + radius * np.cos(ang), center_xy[1] + radius * np.sin(ang), zz], 1)
    if not top:
        return side
    cx, cy = _grid(-radius, radius, -radius, radius, spacing, rng)
    inside = cx**2 + cy**2 <= radius**2
    cap = np.stack([center_xy[0] + cx[inside], center_xy[1] + cy[inside], np.full(inside.sum(), z1)], 1)
    return np.concatenate([side, cap])


def _sphere_surface(center, radius, spacing, rng):
    n = max(8, int(4 * np.pi * radius**2 / spacing**2))
    k = np.arange(n) + 0.5  # Fibonacci sphere: even coverage
    phi = np.arccos(1 - 2 * k / n)
    theta = np.pi * (1 + 5**0.5) * k + rng.uniform(0, 2 * np.pi)
    v = np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1)
    return np.asarray(center) + radius * v


def _object_points(kind, x, y, w, d, h, spacing, rng):
    """Surface points of one object whose footprint is centred at (x, y), size w x d x h. Returns (pts, shade)
    where shade (per point, 0..1) darkens sub-parts (legs, pot) for a less uniform look."""
    lo = np.array([x - w / 2, y - d / 2, 0.0])
    hi = np.array([x + w / 2, y + d / 2, h])
    parts, shades = [], []

    def add(p, s=1.0):
        parts.append(p)
        shades.append(np.full(len(p), s))

    if kind == "box":
        add(_box_surface(lo, hi, spacing, rng, "no_bottom"))
    elif kind == "cylinder":
        add(_cylinder_surface((x, y), w / 2, 0.0, h, spacing, rng))
    elif kind == "table":
        add(_box_surface([lo[0], lo[1], h - 0.04], [hi[0], hi[1], h], spacing, rng))
        for cx, cy in (
            (lo[0] + 0.05, lo[1] + 0.05),
            (hi[0] - 0.05, lo[1] + 0.05),
            (lo[0] + 0.05, hi[1] - 0.05),
            (hi[0] - 0.05, hi[1] - 0.05),
        ):
            add(
                _box_surface(
                    [cx - 0.025, cy - 0.025, 0], [cx + 0.025, cy + 0.025, h - 0.04], spacing, rng, "no_bottom"
                ),
                0.8,
            )
    elif kind == "chair":
        seat = 0.45
        add(_box_surface([lo[0], lo[1], seat - 0.05], [hi[0], hi[1], seat], spacing, rng))
        add(_box_surface([lo[0], hi[1] - 0.05, seat], [hi[0], hi[1], h], spacing, rng), 0.9)
        for cx, cy in (
            (lo[0] + 0.03, lo[1] + 0.03),
            (hi[0] - 0.03, lo[1] + 0.03),
            (lo[0] + 0.03, hi[1] - 0.03),
            (hi[0] - 0.03, hi[1] - 0.03),
        ):
            add(
                _box_surface([cx - 0.02, cy - 0.02, 0], [cx + 0.02, cy + 0.02, seat - 0.05], spacing, rng, "no_bottom"),
                0.7,
            )
    elif kind == "sofa":
        add(_box_surface([lo[0], lo[1], 0], [hi[0], hi[1], 0.42], spacing, rng, "no_bottom"))
        add(_box_surface([lo[0], hi[1] - 0.2, 0.42], [hi[0], hi[1], h], spacing, rng), 0.9)
        add(_box_surface([lo[0], lo[1], 0.42], [lo[0] + 0.18, hi[1] - 0.2, 0.6], spacing, rng), 0.95)
        add(_box_surface([hi[0] - 0.18, lo[1], 0.42], [hi[0], hi[1] - 0.2, 0.6], spacing, rng), 0.95)
    elif kind == "plant":
        pot_h = 0.3 * h
        add(_cylinder_surface((x, y), 0.35 * w, 0.0, pot_h, spacing, rng), -1.0)  # terracotta pot
        add(_sphere_surface((x, y, pot_h + 0.35 * (h - pot_h)), 0.5 * w, spacing, rng))
    else:
        raise ValueError(kind)
    return np.concatenate(parts), np.concatenate(shades)


class _RoomCloud:
    """The point cloud a procedural room is built into: its shell (floor, ceiling, four walls) on creation, then
    furniture by add_object; scene() turns it into a SyntheticScene. terracotta: sub-parts shaded negative (a
    plant's pot) are terracotta-coloured; otherwise they take the object's colour like the rest."""

    def __init__(self, rng, size, height, wall_spacing, terracotta):
        self.rng = rng
        self.terracotta = terracotta
        self.pts, self.cols, self.inst, self.rad = [], [], [], []
        self.labels: Dict[int, str] = {}
        W, D = size
        ws = wall_spacing
        self.add(_box_surface([0, 0, 0], [W, D, 0], ws, rng), FLOOR_COLOR, 0, ws)
        self.add(_box_surface([0, 0, height], [W, D, height], ws, rng), CEILING_COLOR, 0, ws)
        for lo, hi in (
            ([0, 0, 0], [W, 0, height]),
            ([0, D, 0], [W, D, height]),
            ([0, 0, 0], [0, D, height]),
            ([W, 0, 0], [W, D, height]),
        ):
            self.add(_box_surface(lo, hi, ws, rng), WALL_COLOR, 0, ws)

    def add(self, p, color, iid, r, shade=None):
        c = np.tile(np.asarray(color, float), (len(p), 1))
        if shade is not None:
            if self.terracotta:
                c = np.where(shade[:, None] < 0, np.array([170, 90, 60], float), c * np.abs(shade)[:, None])
            else:
                c = c * np.abs(shade)[:, None]
        c += self.rng.normal(0, 6, c.shape)  # texture
        self.pts.append(p)
        self.cols.append(np.clip(c, 0, 255))
        self.inst.append(np.full(len(p), iid))
        self.rad.append(np.full(len(p), r))

    def add_object(self, points_shade, palette, iid, name, spacing):
        """One furniture item ((points, shade) of _object_points) in a colour drawn from its palette, jittered."""
        p, shade = points_shade
        base = np.asarray(palette[self.rng.integers(len(palette))], float)
        self.add(p, np.clip(base * self.rng.uniform(0.92, 1.08), 0, 255), iid, spacing, shade)
        self.labels[iid] = name

    def scene(self, name: str) -> SyntheticScene:
        return SyntheticScene(
            points=np.concatenate(self.pts).astype(np.float32),
            colors=np.concatenate(self.cols).astype(np.uint8),
            instance=np.concatenate(self.inst).astype(np.int32),
            labels=self.labels,
            name=name,
            radius=0.75 * np.concatenate(self.rad).astype(np.float32),
        )


def make_room(
    seed: int = 0,
    n_objects: int = 8,
    size: Tuple[float, float] = (5.0, 4.0),
    height: float = 2.5,
    spacing: float = 0.02,
    wall_spacing: float = 0.035,
) -> SyntheticScene:
    """A procedural room: floor, four walls, ceiling, and n_objects furniture items placed without overlap.

    Colours are realistic and jittered per instance; the catalogue repeats classes (chairs, boxes, cabinets)
    so that some pairs look alike, as in real rooms."""
    if n_objects < 1:
        raise InputError(f"n_objects must be >= 1, got {n_objects}")
    rng = np.random.default_rng(seed)
    W, D = size
    room = _RoomCloud(rng, size, height, wall_spacing, terracotta=True)

    footprints: List[Tuple[float, float, float, float]] = []
    for k in range(n_objects):
        name = _ORDER[k % len(_ORDER)]
        kind, sizes, palette = _CATALOG[name]
        w, d, h = (rng.uniform(*s) for s in sizes)
        placed = _place(rng, footprints, w, d, W, D)
        if placed is None:
            continue
        x, y = placed
        room.add_object(_object_points(kind, x, y, w, d, h, spacing, rng), palette, k + 1, name, spacing)
    return room.scene(f"room_s{seed}_n{n_objects}")


def _place(rng, footprints, w, d, W, D, tries=300):
    for attempt in range(tries):
        margin = 0.25 if attempt < tries // 2 else 0.05
        x = rng.uniform(w / 2 + 0.1, W - w / 2 - 0.1)
        y = rng.uniform(d / 2 + 0.1, D - d / 2 - 0.1)
        box = (x - w / 2 - margin, y - d / 2 - margin, x + w / 2 + margin, y + d / 2 + margin)
        if all(box[2] < f[0] or box[0] > f[2] or box[3] < f[1] or box[1] > f[3] for f in footprints):
            footprints.append((x - w / 2, y - d / 2, x + w / 2, y + d / 2))
            return x, y
    return None


def load_scannet_npy(path, background_classes: Sequence[int] = (0, 1, 2)) -> SyntheticScene:
    """A ScanNet room exported as (N, 8) float rows x y z r g b semantic instance (semantic: 1-based ScanNet20).

    Walls, floors and unannotated points (semantic 0, 1, 2) become background, as in ScanNet's instance
    benchmark, which scores only the 18 object classes."""
    path = Path(path)
    try:
        a = np.load(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read ScanNet point cloud '{path}': {exc}") from None
    if a.ndim != 2 or a.shape[1] < 8:
        raise InputError(f"'{path}' must be an (N, 8) array x y z r g b semantic instance, got {a.shape}")
    sem = a[:, 6].astype(np.int64)
    inst = a[:, 7].astype(np.int64)
    inst = np.where(np.isin(sem, list(background_classes)), 0, inst)
    labels = {}
    for i in np.unique(inst):
        if i == 0:
            continue
        s = np.bincount(sem[inst == i]).argmax()
        labels[int(i)] = SCANNET20[s - 1] if 1 <= s <= len(SCANNET20) else f"class{s}"
    pts = a[:, :3].astype(np.float32)
    return SyntheticScene(
        points=pts - np.array([0, 0, pts[:, 2].min()], np.float32),
        colors=np.clip(a[:, 3:6], 0, 255).astype(np.uint8),
        instance=inst.astype(np.int32),
        labels=labels,
        name=path.stem,
    )


# ---------------------------------------------------------------------------------------------------------
# Cameras


def default_K(hw=(240, 320)) -> np.ndarray:
    """Kinect-like intrinsics (about 63 deg horizontal field of view) for an image of size hw."""
    h, w = hw
    f = 0.82 * w
    return np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]], dtype=np.float64)


def make_trajectory(scene: SyntheticScene, n_frames: int = 60, seed: int = 0, revisit: float = 0.4) -> List[np.ndarray]:
    """Poses that visit every object once in random order, then revisit a fraction of them from new angles.

    Between waypoints the camera position and its look-at point move smoothly (cosine easing)."""
    rng = np.random.default_rng(seed)
    bg = scene.points[scene.instance == 0]
    ref = bg if len(bg) else scene.points
    lo = np.percentile(ref[:, :2], 1, axis=0) + 0.35
    hi = np.percentile(ref[:, :2], 99, axis=0) - 0.35
    ids = scene.instance_ids
    if not ids:
        raise InputError(f"scene '{scene.name}' has no object instances to look at")
    centres = {i: scene.points[scene.instance == i].mean(axis=0) for i in ids}
    boxes = {i: (scene.points[scene.instance == i].min(0), scene.points[scene.instance == i].max(0)) for i in ids}
    order = list(rng.permutation(ids))
    order += list(rng.choice(ids, size=max(1, int(round(revisit * len(ids)))), replace=False))
    waypoints = [_viewpoint(rng, centres[i], lo, hi, boxes) for i in order]
    n_way = len(waypoints)
    poses = []
    for k in range(n_frames):
        s = k * (n_way - 1) / max(1, n_frames - 1)
        a = min(int(s), n_way - 2) if n_way > 1 else 0
        t = s - a
        t = 0.5 - 0.5 * np.cos(np.pi * t)
        (p0, g0), (p1, g1) = waypoints[a], waypoints[min(a + 1, n_way - 1)]
        poses.append(look_at((1 - t) * p0 + t * p1, (1 - t) * g0 + t * g1))
    return poses


def _viewpoint(rng, centre, lo, hi, boxes):
    """A camera position 1.2-2.6 m from an object, inside the room, not inside any object."""
    best = None
    for _ in range(60):
        ang = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(1.2, 2.6)
        pos = np.array([centre[0] + dist * np.cos(ang), centre[1] + dist * np.sin(ang), rng.uniform(1.1, 1.7)])
        pos[:2] = np.clip(pos[:2], lo, hi)
        clear = all(not (np.all(pos[:2] > b[0][:2] - 0.3) and np.all(pos[:2] < b[1][:2] + 0.3)) for b in boxes.values())
        if clear and np.linalg.norm(pos[:2] - centre[:2]) > 0.9:
            best = pos
            break
        best = pos if best is None else best
    target = centre + rng.normal(0, 0.1, 3)
    return best, target


# ---------------------------------------------------------------------------------------------------------
# Renderer


def render(
    scene: SyntheticScene,
    K: np.ndarray,
    T_world_cam: np.ndarray,
    hw=(240, 320),
    near: float = 0.1,
    scale: Optional[int] = None,
    max_splat_px: int = 5,
):
    """Z-buffer point splatting -> (rgb uint8 HxWx3, depth float32 metres (0 = no surface), ids int32 HxW).

    Each point is drawn as a disc of radius f * radius / z pixels (so surfaces close at any distance); the
    nearest point wins every pixel. When discs would be large (camera close to a surface) the image is rendered
    at 1/scale resolution and upsampled (nearest), which keeps the cost per frame bounded; scale=1 forces full
    resolution, where a point that wins its own centre pixel re-projects exactly (its depth is its camera z)."""
    if len(scene.points) >= 1 << 24:
        raise InputError(f"scene '{scene.name}' has {len(scene.points)} points; the renderer takes < 16.7M")
    h, w = hw
    R, t = T_world_cam[:3, :3], T_world_cam[:3, 3]
    pc = (scene.points.astype(np.float64) - t) @ R  # world -> camera: R^T (p - t)
    z = pc[:, 2]
    keep = z > near
    zs = np.where(keep, z, 1.0)
    if scale is None:
        r_full = K[0, 0] * scene.radius[keep] / zs[keep]
        scale = int(np.clip(np.ceil(np.percentile(r_full, 80) / 3.0), 1, 3)) if keep.any() else 1
    Ks = K.astype(np.float64).copy()
    Ks[:2, :2] /= scale
    Ks[:2, 2] = (K[:2, 2] + 0.5) / scale - 0.5
    hs, ws = -(-h // scale), -(-w // scale)
    rgb, depth, ids = _splat(scene, pc, keep, zs, Ks, (hs, ws), max_splat_px)
    if scale > 1:
        up = lambda img: np.repeat(np.repeat(img, scale, 0), scale, 1)[:h, :w]  # noqa: E731
        rgb, depth, ids = up(rgb), up(depth), up(ids)
    return np.ascontiguousarray(rgb), np.ascontiguousarray(depth), np.ascontiguousarray(ids)


def _splat(scene, pc, keep, zs, K, hw, max_splat_px):
    h, w = hw
    u = np.rint(K[0, 0] * pc[:, 0] / zs + K[0, 2]).astype(np.int64)
    v = np.rint(K[1, 1] * pc[:, 1] / zs + K[1, 2]).astype(np.int64)
    r = np.minimum(np.rint(K[0, 0] * scene.radius / zs), max_splat_px).astype(np.int64)
    keep = keep & (u >= -r) & (u < w + r) & (v >= -r) & (v < h + r)
    idx = np.flatnonzero(keep)
    empty = np.iinfo(np.int64).max
    zbuf = np.full(h * w, empty, np.int64)
    key_all = (np.round(zs[idx] * 1e5).astype(np.int64) << 24) | idx  # depth first, point index last
    r_idx = r[idx]
    for radius in np.unique(r_idx):
        in_r = r_idx == radius
        sel, key = idx[in_r], key_all[in_r]
        dy, dx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
        disc = dx**2 + dy**2 <= radius**2 + radius
        for ox, oy in zip(dx[disc], dy[disc]):
            uu, vv = u[sel] + ox, v[sel] + oy
            ok = (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
            np.minimum.at(zbuf, vv[ok] * w + uu[ok], key[ok])
    hit = zbuf != empty
    winner = zbuf[hit] & ((1 << 24) - 1)
    depth = np.zeros(h * w, np.float32)
    depth[hit] = zs[winner]
    rgb = np.zeros((h * w, 3), np.uint8)
    rgb[hit] = scene.colors[winner]
    ids = np.zeros(h * w, np.int32)
    ids[hit] = scene.instance[winner]
    return rgb.reshape(h, w, 3), depth.reshape(h, w), ids.reshape(h, w)


# ---------------------------------------------------------------------------------------------------------
# Segmenter error model


@dataclass
class MaskNoise:
    """How a real 2D segmenter errs, applied to perfect instance masks.

    p_drop: a mask is missed; p_edge: its boundary is eroded or dilated by 1..edge_px pixels;
    false_blobs: mean number of spurious small masks per frame (radius blob_px); min_pixels: masks smaller than
    this are not reported; depth_k: depth noise sigma = depth_k * z^2 (Kinect-like axial noise)."""

    p_drop: float = 0.1
    p_edge: float = 0.6
    edge_px: int = 3
    false_blobs: float = 0.3
    blob_px: Tuple[int, int] = (6, 16)
    min_pixels: int = 40
    depth_k: float = 0.0025
    seed: int = 0
    _blob_counter: int = field(default=0, repr=False)
    # structural errors, applied by perturb_frame before the ones above (all off by default):
    # per frame: one pair of adjacent objects comes as ONE mask covering both (a box spanning both)
    p_merge: float = 0.0
    p_split: float = 0.0  # per mask: the object comes as 2-3 part masks (straight cuts across it)
    p_bleed: float = 0.0  # per mask: it spills into the background around it by bleed_px pixels
    bleed_px: Tuple[int, int] = (4, 10)
    shuffle_ids: bool = False  # anonymize(): random mask order and per-frame random ids (all but the oracle)
    _part_counter: int = field(default=0, repr=False)

    def perturb_masks(self, masks: List[Mask2D], rng: np.random.Generator, hw) -> List[Mask2D]:
        import cv2

        out = []
        for m in masks:
            if rng.random() < self.p_drop:
                continue
            mask = m.mask
            if self.edge_px > 0 and rng.random() < self.p_edge:
                k = int(rng.integers(1, self.edge_px + 1))
                kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
                op = cv2.erode if rng.random() < 0.5 else cv2.dilate
                mask = op(mask.astype(np.uint8), kernel).astype(bool)
            if mask.sum() >= self.min_pixels:
                out.append(
                    Mask2D(mask=mask, score=float(np.clip(rng.normal(0.85, 0.08), 0.3, 1.0)), source_id=m.source_id)
                )
        for _ in range(rng.poisson(self.false_blobs)):
            out.append(self._blob(rng, hw))
        return out

    def _blob(self, rng, hw) -> Mask2D:
        h, w = hw
        yy, xx = np.mgrid[:h, :w]
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(*self.blob_px, size=2)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        self._blob_counter += 1
        return Mask2D(mask=mask, score=float(rng.uniform(0.3, 0.7)), source_id=FALSE_BLOB_ID_BASE + self._blob_counter)

    def perturb_depth(self, depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.depth_k <= 0:
            return depth
        noisy = depth + rng.normal(0.0, 1.0, depth.shape).astype(np.float32) * self.depth_k * depth**2
        return np.where(depth > 0, np.maximum(noisy, 0.0), 0.0).astype(np.float32)

    def perturb_frame(
        self, masks: List[Mask2D], rng: np.random.Generator, hw, depth: Optional[np.ndarray] = None
    ) -> List[Mask2D]:
        """Every error mode on one frame's perfect masks: merged neighbours, split objects and background
        bleeding (perturb_structure), then drops, edges and false blobs (perturb_masks). Ids stay true (a merged
        mask carries the larger object's id, extra parts PART_ID_BASE + k): ``anonymize`` hides them."""
        return self.perturb_masks(self.perturb_structure(masks, rng, hw, depth), rng, hw)

    def perturb_structure(
        self, masks: List[Mask2D], rng: np.random.Generator, hw, depth: Optional[np.ndarray] = None
    ) -> List[Mask2D]:
        """Under-segmentation (p_merge), over-segmentation (p_split) and bleeding into the background (p_bleed).
        With ``depth``, only neighbours that also touch in depth (3D-adjacent objects) are merged."""
        out = list(masks)
        if self.p_merge > 0 and len(out) >= 2 and rng.random() < self.p_merge:
            out = _merge_neighbours(out, rng, depth)
        if self.p_split > 0:
            split = []
            for m in out:
                if rng.random() < self.p_split:
                    parts = _split_mask(m.mask, int(rng.integers(2, 4)), rng, self.min_pixels)
                    if len(parts) > 1:
                        split.append(Mask2D(mask=parts[0], score=m.score, source_id=m.source_id))
                        for part in parts[1:]:
                            self._part_counter += 1
                            split.append(Mask2D(mask=part, score=m.score, source_id=PART_ID_BASE + self._part_counter))
                        continue
                split.append(m)
            out = split
        if self.p_bleed > 0 and out:
            import cv2

            taken = np.zeros(hw, bool)
            for m in masks:
                taken |= m.mask
            bled = []
            for m in out:
                if rng.random() < self.p_bleed:
                    k = int(rng.integers(self.bleed_px[0], self.bleed_px[1] + 1))
                    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
                    grown = cv2.dilate(m.mask.astype(np.uint8), kernel).astype(bool)
                    m = Mask2D(mask=m.mask | (grown & ~taken), score=m.score, source_id=m.source_id)
                bled.append(m)
            out = bled
        return out

    def anonymize(self, masks: List[Mask2D], rng: np.random.Generator) -> List[Mask2D]:
        """The masks in random order with random per-frame ids (what a segmenter gives: no stable identity).
        A no-op copy unless shuffle_ids."""
        if not self.shuffle_ids or not masks:
            return list(masks)
        ids = rng.choice(np.arange(1, 1 << 20), size=len(masks), replace=False)
        return [
            Mask2D(mask=masks[k].mask, box=masks[k].box, score=masks[k].score, label=masks[k].label, source_id=int(i))
            for k, i in zip(rng.permutation(len(masks)), ids)
        ]


def render_sequence(
    scene: SyntheticScene,
    n_frames: int = 60,
    hw=(240, 320),
    seed: int = 0,
    noise: Optional[MaskNoise] = None,
    fps: float = 30.0,
) -> List[Frame]:
    """Render a trajectory through the scene. Frames carry anonymous masks (label None; source_id = true id,
    FALSE_BLOB_ID_BASE+k for spurious blobs) and, in frame.masks order, nothing else about the truth.
    The perfect instance-id image of each frame is kept in ``frame_ids[i]`` of the returned list's attribute."""
    K = default_K(hw)
    rng = np.random.default_rng(seed + 1)
    frames = _FrameList()
    for k, T in enumerate(make_trajectory(scene, n_frames, seed)):
        rgb, depth, ids = render(scene, K, T, hw)
        masks = label_image_to_masks(ids, max_ids=None).masks
        if noise is not None:
            masks = noise.perturb_masks(masks, rng, hw)
            depth = noise.perturb_depth(depth, rng)
        frames.append(Frame(rgb=rgb, depth=depth, K=K.copy(), T_world_cam=T, stamp=k / fps, index=k, masks=masks))
        frames.ids.append(ids)
    return frames


class _FrameList(list):
    """A list of frames that also keeps each frame's true instance-id image (``.ids``)."""

    def __init__(self):
        super().__init__()
        self.ids: List[np.ndarray] = []


# ---------------------------------------------------------------------------------------------------------
# Box scenes: axis-aligned boxes on a floor, ray-cast exactly (the core tests and bench/bench_step.py)

BOX_FLOOR = (np.array([-20.0, -20.0, -1.0]), np.array([20.0, 20.0, 0.0]))


def box_intrinsics(hw=(120, 160), f=None) -> np.ndarray:
    """Pinhole intrinsics of a box scene camera (focal 0.9 w unless given, principal point at the centre)."""
    h, w = hw
    f = f or 0.9 * w
    return np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], dtype=np.float64)


def render_boxes(boxes, K, T, hw):
    """boxes: list of (min (3,), max (3,)). Returns (depth (H, W) float32 z-depth, id (H, W) int: index of the
    box hit, -1 for the floor or nothing)."""
    h, w = hw
    u, v = np.meshgrid(np.arange(w) + 0.0, np.arange(h) + 0.0)
    dirs_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
    dirs = dirs_cam @ T[:3, :3].T
    origin = T[:3, 3]
    all_boxes = [BOX_FLOOR] + list(boxes)
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


def make_box_frame(boxes, colors, T, hw=(120, 160), K=None, index=0, stamp=None, min_pixels=20, rng=None) -> Frame:
    """A Frame with one anonymous mask per visible box (source_id = box index)."""
    K = box_intrinsics(hw) if K is None else K
    depth, ids = render_boxes(boxes, K, T, hw)
    rgb = np.full(hw + (3,), 90, np.uint8)
    for i, c in enumerate(colors):
        rgb[ids == i] = c
    if rng is not None:
        rgb = np.clip(rgb.astype(int) + rng.integers(-8, 9, rgb.shape), 0, 255).astype(np.uint8)
    masks = [Mask2D(mask=ids == i, source_id=i) for i in range(len(boxes)) if (ids == i).sum() >= min_pixels]
    return Frame(
        rgb=rgb,
        depth=depth,
        K=K,
        T_world_cam=T,
        stamp=float(index if stamp is None else stamp),
        index=index,
        masks=masks,
    )


# ---------------------------------------------------------------------------------------------------------
# Scene folder (ScanNet export layout)


def write_scene_folder(scene: SyntheticScene, frames: Sequence[Frame], out_dir) -> Path:
    """Write frames + ground truth as a ScanNet export folder that ScanNetReader and `opentrack eval` read.

    instance/<i>.png holds the frame's masks (their source ids; larger masks first, so smaller ones stay on top)."""
    import cv2

    from .io.ply import write_ply

    out = Path(out_dir)
    for sub in ("color", "depth", "pose", "intrinsic", "instance"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for frame in frames:
        i = frame.index
        cv2.imwrite(
            str(out / "color" / f"{i}.jpg"), np.ascontiguousarray(frame.rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 92]
        )
        cv2.imwrite(str(out / "depth" / f"{i}.png"), depth_to_millimetres(frame.depth))
        np.savetxt(out / "pose" / f"{i}.txt", frame.T_world_cam, fmt="%.9f")
        with_ids = [m for m in frame.masks or [] if m.source_id is not None]  # a mask without an id is not written
        largest_first = sorted(with_ids, key=lambda m: -int(np.count_nonzero(m.mask)))
        cv2.imwrite(str(out / "instance" / f"{i}.png"), masks_to_label_image(largest_first, frame.depth.shape))
    if frames:
        K4 = np.eye(4)
        K4[:3, :3] = frames[0].K
        np.savetxt(out / "intrinsic" / "intrinsic_depth.txt", K4, fmt="%.6f")
        np.savetxt(out / "intrinsic" / "intrinsic_color.txt", K4, fmt="%.6f")
    (out / "instance_labels.json").write_text(
        json.dumps({str(k): v for k, v in sorted(scene.labels.items())}, indent=1)
    )
    write_ply(out / "points.ply", scene.points, scene.colors)
    np.savetxt(out / "gt_instances.txt", scene.gt_ids(), fmt="%d")
    names = {str(v): k for k, v in scene.class_ids().items()}
    (out / "gt_label_names.json").write_text(json.dumps(names, indent=1))
    return out


# ---------------------------------------------------------------------------------------------------------
# Quality-matrix pieces (bench/bench_quality.py): structural segmenter errors, more trajectories, pose drift,
# and which scene points the frames saw

PART_ID_BASE = 60000  # source ids of the extra part masks of a split object (never a true instance id)


def _merge_neighbours(
    masks: List[Mask2D],
    rng: np.random.Generator,
    depth: Optional[np.ndarray] = None,
    contact_px: int = 3,
    max_depth_step: float = 0.25,
) -> List[Mask2D]:
    """One random pair of touching masks replaced by one mask over both (and the gap between them), with the
    larger one's id. Touching: within contact_px pixels; with ``depth``, the two sides of the contact must also
    lie within max_depth_step metres (3D neighbours, not an object in front of another far behind)."""
    import cv2

    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * contact_px + 1, 2 * contact_px + 1))
    grown = [cv2.dilate(m.mask.astype(np.uint8), kernel).astype(bool) for m in masks]
    pairs = []
    for a in range(len(masks)):
        for b in range(a + 1, len(masks)):
            touch_b = grown[a] & masks[b].mask
            if not touch_b.any():
                continue
            if depth is not None:
                touch_a = grown[b] & masks[a].mask
                da, db = depth[touch_a], depth[touch_b]
                da, db = da[da > 0], db[db > 0]
                if len(da) == 0 or len(db) == 0 or abs(float(np.median(da)) - float(np.median(db))) > max_depth_step:
                    continue
            pairs.append((a, b))
    if not pairs:
        return list(masks)
    a, b = pairs[int(rng.integers(len(pairs)))]
    union = masks[a].mask | masks[b].mask
    closed = cv2.morphologyEx(union.astype(np.uint8), cv2.MORPH_CLOSE, kernel).astype(bool)
    big = masks[a] if masks[a].mask.sum() >= masks[b].mask.sum() else masks[b]
    merged = Mask2D(mask=closed, score=big.score, source_id=big.source_id)
    return [m for k, m in enumerate(masks) if k not in (a, b)] + [merged]


def _split_mask(mask: np.ndarray, n_parts: int, rng: np.random.Generator, min_pixels: int = 1) -> List[np.ndarray]:
    """A mask cut into n_parts by parallel straight cuts across a random direction (the largest part first);
    parts under min_pixels are dropped. One part (the mask itself) when it is too small to cut."""
    vv, uu = np.nonzero(mask)
    if len(vv) < 2 * n_parts * max(1, min_pixels):
        return [mask]
    ang = rng.uniform(0, np.pi)
    s = uu * np.cos(ang) + vv * np.sin(ang)
    cuts = np.sort(rng.uniform(0.25, 0.75, n_parts - 1)) if n_parts > 2 else np.array([rng.uniform(0.3, 0.7)])
    edges = np.quantile(s, cuts)
    part = np.searchsorted(edges, s)
    parts = []
    for k in range(n_parts):
        sel = part == k
        if sel.sum() >= min_pixels:
            m = np.zeros_like(mask, dtype=bool)
            m[vv[sel], uu[sel]] = True
            parts.append(m)
    return sorted(parts, key=lambda m: -int(m.sum())) or [mask]


def make_wall_room(
    seed: int = 0,
    n_objects: int = 10,
    size: Tuple[float, float] = (5.0, 4.0),
    height: float = 2.5,
    spacing: float = 0.02,
    wall_spacing: float = 0.035,
    gap_m=(0.0, 0.1),
) -> SyntheticScene:
    """A procedural room furnished along its walls, as rooms are: objects in rows against the walls, each a
    gap of gap_m from its neighbour (0 = touching), two in the middle. Many 3D-adjacent pairs (what merged
    masks fuse), and a wall-facing scan sees them from close by."""
    if n_objects < 1:
        raise InputError(f"n_objects must be >= 1, got {n_objects}")
    rng = np.random.default_rng(seed)
    W, D = size
    room = _RoomCloud(rng, size, height, wall_spacing, terracotta=False)
    names = [n for n in rng.permutation(_ORDER) if n != "sofa"]  # sofas are longer than some walls' free run
    cursor = {0: 0.05, 1: 0.95, 2: 0.05, 3: 0.95}  # wall -> free position along it: y=0, x=W, y=D, x=0
    end = {0: W - 0.05, 1: D - 0.95, 2: W - 0.05, 3: D - 0.95}  # walls 1 and 3 leave the corners to 0 and 2
    n_middle = min(2, max(0, n_objects - 4))
    iid = 0
    for k in range(n_objects):
        name = names[k % len(names)]
        kind, sizes, palette = _CATALOG[name]
        w, d, h = (rng.uniform(*s) for s in sizes)
        if k < n_objects - n_middle:
            wall = k % 4
            along = cursor[wall]
            if along + w > end[wall]:
                continue
            cursor[wall] = along + w + rng.uniform(*gap_m)
            off = 0.02 + d / 2
            if wall in (1, 3):
                w, d = d, w  # the long side along the wall
            x, y = {
                0: (along + w / 2, off),
                1: (W - off, along + d / 2),
                2: (along + w / 2, D - off),
                3: (off, along + d / 2),
            }[wall]
        else:  # the middle of the room
            x, y = W / 2 + rng.uniform(-0.6, 0.6), D / 2 + rng.uniform(-0.5, 0.5)
        iid += 1
        room.add_object(_object_points(kind, x, y, w, d, h, spacing, rng), palette, iid, name, spacing)
    return room.scene(f"wallroom_s{seed}_n{n_objects}")


def room_box(scene: SyntheticScene, pct: float = 0.5) -> Tuple[np.ndarray, np.ndarray]:
    """(lo, hi) xy extent of the room: robust min / max of the background (walls) points."""
    bg = scene.points[scene.instance == 0]
    ref = bg if len(bg) > 100 else scene.points
    return np.percentile(ref[:, :2], pct, axis=0), np.percentile(ref[:, :2], 100 - pct, axis=0)


def _object_boxes(scene: SyntheticScene) -> List[Tuple[np.ndarray, np.ndarray]]:
    return [
        (scene.points[scene.instance == i].min(0), scene.points[scene.instance == i].max(0)) for i in scene.instance_ids
    ]


def _clear_of(pos, boxes, margin: float) -> bool:
    return all(not (np.all(pos > b[0] - margin) and np.all(pos < b[1] + margin)) for b in boxes)


def _push_clear(pos, toward, boxes, margin: float = 0.2, step: float = 0.05, max_steps: int = 60) -> np.ndarray:
    """Move pos towards ``toward`` (xy) until it is outside every object box (+ margin)."""
    pos = np.array(pos, float)
    d = np.asarray(toward, float)[:2] - pos[:2]
    n = np.linalg.norm(d)
    d = d / n if n > 1e-9 else np.zeros(2)
    for _ in range(max_steps):
        if _clear_of(pos, boxes, margin):
            break
        pos[:2] += step * d
    return pos


def _direction(yaw: float, pitch: float) -> np.ndarray:
    return np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])


def _rotation(rotvec) -> np.ndarray:
    """Rodrigues: the 3x3 rotation of axis-angle ``rotvec`` (radians)."""
    v = np.asarray(rotvec, float)
    th = float(np.linalg.norm(v))
    if th < 1e-12:
        return np.eye(3)
    k = v / th
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(th) * Kx + (1 - np.cos(th)) * Kx @ Kx


def _smooth_noise(rng, n, scale, periods=(9.0, 23.0, 57.0)) -> np.ndarray:
    """A smooth bounded random signal (sum of sines of random phase), amplitude about ``scale``."""
    t = np.arange(n)
    out = np.zeros(n)
    for p in periods:
        out += np.sin(2 * np.pi * t / (p * rng.uniform(0.8, 1.25)) + rng.uniform(0, 2 * np.pi))
    return scale * out / len(periods)


def _wall_furniture_depth(scene: SyntheticScene, lo, hi, near_m: float = 0.3, cap_m: float = 0.8) -> np.ndarray:
    """Per wall (y=lo, x=hi, y=hi, x=lo) how far the objects standing against it (within near_m) reach into
    the room, at most cap_m."""
    out = np.zeros(4)
    for bmin, bmax in _object_boxes(scene):
        reach = [
            bmax[1] - lo[1] if bmin[1] - lo[1] < near_m else 0.0,
            hi[0] - bmin[0] if hi[0] - bmax[0] < near_m else 0.0,
            hi[1] - bmin[1] if hi[1] - bmax[1] < near_m else 0.0,
            bmax[0] - lo[0] if bmin[0] - lo[0] < near_m else 0.0,
        ]
        out = np.maximum(out, np.minimum(reach, cap_m))
    return out


def _height_and_pitch(rng, n, height, pitch_deg) -> Tuple[np.ndarray, np.ndarray]:
    """A camera path's heights (m) and pitches (radians): smooth noise within the height and pitch_deg ranges."""
    z = np.mean(height) + _smooth_noise(rng, n, (height[1] - height[0]) / 2)
    pitch = np.radians(np.mean(pitch_deg) + _smooth_noise(rng, n, (pitch_deg[1] - pitch_deg[0]) / 2))
    return z, pitch


def loop_trajectory(
    scene: SyntheticScene,
    n_frames: int = 80,
    seed: int = 0,
    turns: float = 1.25,
    height=(1.2, 1.6),
    pitch_deg=(-30.0, -15.0),
) -> List[np.ndarray]:
    """A loop around the middle of the room looking outward (at the walls and what stands before them):
    ``turns`` revolutions, so the start is seen again at the end (loop closure)."""
    rng = np.random.default_rng(seed)
    lo, hi = room_box(scene)
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    radius = np.clip(0.3 * half, 0.3, 1.2)
    boxes = _object_boxes(scene)
    a0 = rng.uniform(0, 2 * np.pi)
    ang = a0 + np.linspace(0, 2 * np.pi * turns, n_frames)
    z, pitch = _height_and_pitch(rng, n_frames, height, pitch_deg)
    yaw = ang + np.radians(_smooth_noise(rng, n_frames, 10.0))
    poses = []
    for k in range(n_frames):
        pos = np.array([centre[0] + radius[0] * np.cos(ang[k]), centre[1] + radius[1] * np.sin(ang[k]), z[k]])
        pos = _push_clear(pos, centre, boxes)
        poses.append(look_at(pos, pos + _direction(yaw[k], pitch[k])))
    return poses


def wall_trajectory(
    scene: SyntheticScene,
    n_frames: int = 90,
    seed: int = 0,
    standoff=(0.45, 0.75),
    corner_deg: float = 13.0,
    height=(1.0, 1.5),
    pitch_deg=(-40.0, -20.0),
) -> List[np.ndarray]:
    """A scan along the walls facing them, close to the surfaces (standoff from the front of what stands
    against each wall, so surfaces lie at about 0.4-1.5 m), once around the room: straight runs along each
    wall, and at each corner a turn in place of 90 degrees at corner_deg per frame (fast turns, little
    overlap between keyframes)."""
    rng = np.random.default_rng(seed)
    lo, hi = room_box(scene)
    d = float(np.mean(standoff))
    front = _wall_furniture_depth(scene, lo, hi)  # how far furniture reaches into the room from each wall
    a = lo + d + np.array([front[3], front[0]])
    b = hi - d - np.array([front[1], front[2]])
    if np.any(b - a < 0.2):  # a small room: the path shrinks to a small rectangle at its middle
        mid = (lo + hi) / 2
        a, b = np.minimum(a, mid - 0.1), np.maximum(b, mid + 0.1)
    # counter-clockwise: along y=a_y facing -y, along x=b_x facing +x, along y=b_y facing +y, along x=a_x facing -x
    corners = [np.array([a[0], a[1]]), np.array([b[0], a[1]]), np.array([b[0], b[1]]), np.array([a[0], b[1]])]
    yaws = [-np.pi / 2, 0.0, np.pi / 2, np.pi]
    n_turn = int(np.ceil(90.0 / corner_deg))
    lengths = np.array([np.linalg.norm(corners[(i + 1) % 4] - corners[i]) for i in range(4)])
    n_runs = max(4, n_frames - 4 * n_turn)
    run_frames = np.maximum(1, np.round(n_runs * lengths / lengths.sum()).astype(int))
    run_frames[-1] = max(1, n_runs - run_frames[:-1].sum())
    start = rng.integers(4)
    samples = []  # (xy, yaw)
    for j in range(4):
        i = (start + j) % 4
        p0, p1 = corners[i], corners[(i + 1) % 4]
        for t in np.arange(run_frames[i]) / run_frames[i]:
            samples.append(((1 - t) * p0 + t * p1, yaws[i]))
        for t in np.arange(1, n_turn + 1) / n_turn:
            samples.append((p1, yaws[i] + t * np.pi / 2))
    samples = samples[:n_frames]
    while len(samples) < n_frames:
        samples.append(samples[-1])
    n = len(samples)
    boxes = _object_boxes(scene)
    centre = (lo + hi) / 2
    wobble = _smooth_noise(rng, n, (standoff[1] - standoff[0]) / 2)
    z, pitch = _height_and_pitch(rng, n, height, pitch_deg)
    jitter = np.radians(_smooth_noise(rng, n, 4.0))
    raw, yaw = np.zeros((n, 3)), np.zeros(n)
    for k, (xy, yw) in enumerate(samples):
        yaw[k] = yw + jitter[k]
        raw[k] = [xy[0], xy[1], z[k]]
        raw[k, :2] -= wobble[k] * np.array([np.cos(yaw[k]), np.sin(yaw[k])])  # nearer / farther from the wall
    push = np.array([np.linalg.norm(_push_clear(p, centre, boxes) - p) for p in raw])
    win = 9  # step back early and smoothly where an object stands in the way, no jumps
    push = np.array([push[max(0, k - win) : k + win + 1].max() for k in range(n)])
    push = np.convolve(np.pad(push, win // 2, mode="edge"), np.ones(win) / win, mode="valid")[:n]
    poses = []
    for k in range(n):
        to_c = centre - raw[k, :2]
        pos = raw[k].copy()
        pos[:2] += push[k] * to_c / max(1e-9, float(np.linalg.norm(to_c)))
        pos = _push_clear(pos, centre, boxes)
        poses.append(look_at(pos, pos + _direction(yaw[k], pitch[k])))
    return poses


def walk_trajectory(
    scene: SyntheticScene,
    n_frames: int = 80,
    seed: int = 0,
    speed_m: float = 0.06,
    turn_deg: float = 4.0,
    height=(1.1, 1.6),
    pitch_deg=(-40.0, -10.0),
    shake_deg: float = 0.4,
    shake_m: float = 0.003,
) -> List[np.ndarray]:
    """A hand-held-like random walk: the walker wanders at about speed_m per frame with a smoothly random
    heading, the camera looks around (yaw rate a random walk of about turn_deg per frame, pitch wandering),
    and the hand shakes (shake_deg, shake_m per frame). It stays in the room and out of the objects."""
    rng = np.random.default_rng(seed)
    lo, hi = room_box(scene)
    a, b = lo + 0.5, hi - 0.5
    a, b = np.minimum(a, (lo + hi) / 2), np.maximum(b, (lo + hi) / 2)
    boxes = _object_boxes(scene)
    centre = (lo + hi) / 2
    pos = _push_clear(np.array([*rng.uniform(a, b), np.mean(height)]), centre, boxes)
    heading = rng.uniform(0, 2 * np.pi)
    yaw, yaw_rate = rng.uniform(0, 2 * np.pi), 0.0
    z, pitch = _height_and_pitch(rng, n_frames, height, pitch_deg)
    poses = []
    for k in range(n_frames):
        heading += rng.normal(0, np.radians(10))
        step = speed_m * rng.uniform(0.5, 1.5) * np.array([np.cos(heading), np.sin(heading)])
        nxt = pos[:2] + step
        if np.any(nxt < a) or np.any(nxt > b) or not _clear_of(np.r_[nxt, z[k]], boxes, 0.2):
            heading = np.arctan2(*(centre - pos[:2])[::-1]) + rng.normal(0, 0.5)  # turn back to the middle
            nxt = pos[:2] + speed_m * np.array([np.cos(heading), np.sin(heading)])
        pos = _push_clear(np.r_[np.clip(nxt, a, b), z[k]], centre, boxes)
        yaw_rate = 0.85 * yaw_rate + rng.normal(0, np.radians(turn_deg) * 0.55)
        yaw += yaw_rate
        T = look_at(pos + rng.normal(0, shake_m, 3), pos + _direction(yaw, pitch[k]))
        T[:3, :3] = T[:3, :3] @ _rotation(rng.normal(0, np.radians(shake_deg), 3))
        poses.append(T)
    return poses


TRAJECTORIES = {"tour": make_trajectory, "loop": loop_trajectory, "wall": wall_trajectory, "walk": walk_trajectory}


@dataclass
class PoseDrift:
    """Odometry-like drift of the poses a pipeline sees (rendering keeps the true ones): a random walk whose
    steps are Gaussian with per-axis sigma step_m metres and step_deg degrees per frame. The rotation error
    turns about the camera centre, so what the camera sees shifts by distance x angle."""

    step_m: float = 0.0005
    step_deg: float = 0.02
    seed: int = 0

    def offsets(self, n: int) -> Tuple[np.ndarray, np.ndarray]:
        """(n, 3) accumulated translation errors and (n, 3, 3) accumulated rotation errors."""
        rng = np.random.default_rng(self.seed)
        t = np.cumsum(rng.normal(0, self.step_m, (n, 3)), axis=0)
        steps = rng.normal(0, np.radians(self.step_deg), (n, 3))
        R, acc = np.empty((n, 3, 3)), np.eye(3)
        for k in range(n):
            acc = _rotation(steps[k]) @ acc
            R[k] = acc
        return t, R

    def apply(self, poses: Sequence[np.ndarray]) -> List[np.ndarray]:
        t, R = self.offsets(len(poses))
        out = []
        for k, T in enumerate(poses):
            D = np.array(T, float, copy=True)
            D[:3, :3] = R[k] @ T[:3, :3]
            D[:3, 3] = T[:3, 3] + t[k]
            out.append(D)
        return out


def seen_points(
    scene: SyntheticScene,
    K: np.ndarray,
    T_world_cam: np.ndarray,
    depth: np.ndarray,
    near: float = 0.1,
    tol_m: float = 0.03,
    tol_rel: float = 0.02,
) -> np.ndarray:
    """(N,) bool: the scene points this view saw - in the image and not behind the rendered (noise-free)
    depth of their pixel by more than tol_m + tol_rel * z."""
    h, w = depth.shape
    R, t = T_world_cam[:3, :3], T_world_cam[:3, 3]
    pc = (scene.points.astype(np.float64) - t) @ R
    z = pc[:, 2]
    ok = z > near
    zs = np.where(ok, z, 1.0)
    u = np.rint(K[0, 0] * pc[:, 0] / zs + K[0, 2]).astype(np.int64)
    v = np.rint(K[1, 1] * pc[:, 1] / zs + K[1, 2]).astype(np.int64)
    ok &= (u >= 0) & (u < w) & (v >= 0) & (v < h)
    d = np.zeros(len(z), np.float32)
    d[ok] = depth[v[ok], u[ok]]
    return ok & (d > 0) & (z <= d + tol_m + tol_rel * z)


@dataclass
class RenderedViews:
    """Noise-free renders of a trajectory, kept so that many error models can be applied to the same views."""

    K: np.ndarray
    poses: List[np.ndarray]
    rgb: List[np.ndarray]
    depth: List[np.ndarray]
    ids: List[np.ndarray]
    seen: np.ndarray  # (N,) bool over the scene points: seen by at least one view

    def frames(
        self, noise: Optional[MaskNoise] = None, drift: Optional[PoseDrift] = None, seed: int = 0, fps: float = 30.0
    ) -> List[Frame]:
        """Frames with perturbed masks (perturb_frame) and depth, and drifted poses when ``drift`` is given.
        Mask ids are the true ones (for the oracle); noise.anonymize hides them for everyone else."""
        rng = np.random.default_rng(seed + 1)
        poses = drift.apply(self.poses) if drift is not None else self.poses
        hw = self.depth[0].shape if self.depth else (0, 0)
        out = []
        for k, (rgb, depth, ids, T) in enumerate(zip(self.rgb, self.depth, self.ids, poses)):
            masks = label_image_to_masks(ids, max_ids=None).masks
            if noise is not None:
                masks = noise.perturb_frame(masks, rng, hw, depth)
                depth = noise.perturb_depth(depth, rng)
            out.append(
                Frame(
                    rgb=rgb,
                    depth=depth,
                    K=self.K.copy(),
                    T_world_cam=np.array(T, float),
                    stamp=k / fps,
                    index=k,
                    masks=masks,
                )
            )
        return out


def render_views(scene: SyntheticScene, poses: Sequence[np.ndarray], hw=(240, 320)) -> RenderedViews:
    """Render every pose (noise-free) and note which scene points some view saw."""
    K = default_K(hw)
    views = RenderedViews(
        K=K,
        poses=[np.asarray(T, float) for T in poses],
        rgb=[],
        depth=[],
        ids=[],
        seen=np.zeros(len(scene.points), bool),
    )
    for T in views.poses:
        rgb, depth, ids = render(scene, K, T, hw)
        views.rgb.append(rgb)
        views.depth.append(depth)
        views.ids.append(ids)
        views.seen |= seen_points(scene, K, T, depth)
    return views
