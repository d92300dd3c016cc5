"""Camera geometry: back-projection, rigid transforms, int64 voxel keys, projection and visibility tests, poses
(quaternions, interpolation, look-at).

Conventions: OpenCV camera (x right, y down, z forward); T_world_cam maps camera points to world points;
pixel (u, v) = (column, row); boxes are x0, y0, x1, y1 with x1, y1 exclusive.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

from . import compiled
from .errors import InputError
from .types import validate_pose

# Voxel keys: three signed 21-bit indices packed in one int64 (±2^20 voxels: ±52 km at 5 cm).
_BITS = 21
_OFFSET = 1 << (_BITS - 1)
_FIELD = (1 << _BITS) - 1
KEY_BITS, KEY_OFFSET = _BITS, _OFFSET  # the key layout, for compiled.py


def backproject(
    depth: np.ndarray,
    K: np.ndarray,
    mask: Optional[np.ndarray] = None,
    stride: int = 1,
    depth_min: float = 0.0,
    depth_max: float = np.inf,
) -> Tuple[np.ndarray, np.ndarray]:
    """Camera-frame points of the valid depth pixels (under ``mask``) on a ``stride`` grid.

    Returns (points (N, 3) float32, pixels (N, 2) int32 as (u, v))."""
    d = depth[::stride, ::stride]
    valid = np.isfinite(d) & (d > depth_min) & (d < depth_max)
    if mask is not None:
        valid &= mask[::stride, ::stride]
    rows, cols = np.nonzero(valid)
    z = d[rows, cols].astype(np.float32)
    u = (cols * stride).astype(np.int32)
    v = (rows * stride).astype(np.int32)
    return pixels_to_camera(u, v, z, K), np.stack([u, v], axis=1)


def pixels_to_camera(u: np.ndarray, v: np.ndarray, z: np.ndarray, K: np.ndarray) -> np.ndarray:
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    x = (u.astype(np.float32) - cx) * z / fx
    y = (v.astype(np.float32) - cy) * z / fy
    return np.stack([x, y, z.astype(np.float32)], axis=1)


def transform(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 rigid transform to (N, 3) points (float32 out)."""
    R = np.asarray(T[:3, :3], dtype=np.float32)
    t = np.asarray(T[:3, 3], dtype=np.float32)
    return np.asarray(points, dtype=np.float32) @ R.T + t


def invert(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform."""
    T = np.asarray(T, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = T[:3, :3].T
    out[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return out


# ---------------------------------------------------------------------------------------------------------
# Voxel keys


def voxel_indices(points: np.ndarray, voxel_size: float) -> np.ndarray:
    """(N, 3) int64 voxel indices (floor)."""
    return np.floor(np.asarray(points, dtype=np.float64) / voxel_size).astype(np.int64)


def pack_keys(indices: np.ndarray) -> np.ndarray:
    """(N, 3) signed voxel indices -> (N,) int64 keys. Indices must lie in [-2^20, 2^20)."""
    idx = np.asarray(indices, dtype=np.int64) + _OFFSET
    return (idx[:, 0] << (2 * _BITS)) | (idx[:, 1] << _BITS) | idx[:, 2]


def unpack_keys(keys: np.ndarray) -> np.ndarray:
    """(N,) int64 keys -> (N, 3) int64 signed voxel indices."""
    keys = np.asarray(keys, dtype=np.int64)
    out = np.empty((len(keys), 3), dtype=np.int64)
    out[:, 0] = (keys >> (2 * _BITS)) & _FIELD
    out[:, 1] = (keys >> _BITS) & _FIELD
    out[:, 2] = keys & _FIELD
    return out - _OFFSET


def voxel_keys(points: np.ndarray, voxel_size: float, unique: bool = True) -> np.ndarray:
    """int64 keys of the voxels holding ``points`` (sorted and unique by default)."""
    if compiled.ENABLED and np.ndim(points) == 2 and np.shape(points)[1] == 3:
        keys = compiled.voxel_keys(np.asarray(points), voxel_size, _BITS, _OFFSET)
    else:
        keys = pack_keys(voxel_indices(points, voxel_size))
    return unique_keys(keys) if unique else keys


def unique_keys(keys: np.ndarray) -> np.ndarray:
    """np.unique of int64 keys (sorted): a sort and a neighbour compare, 1.3-2x faster than numpy 2's hash unique.
    Repeats in a row go first (neighbouring points often share a voxel): fewer keys to sort."""
    if len(keys) == 0:
        return np.sort(keys)
    keys = np.sort(keys[np.r_[True, keys[1:] != keys[:-1]]])
    return keys[np.r_[True, keys[1:] != keys[:-1]]]


def voxel_centers(keys: np.ndarray, voxel_size: float) -> np.ndarray:
    """(N, 3) float32 world centres of voxel keys."""
    return ((unpack_keys(keys) + 0.5) * voxel_size).astype(np.float32)


def point_bounds(points: np.ndarray) -> np.ndarray:
    """(2, 3): per-axis minimum and maximum of non-empty (N, 3) ``points``, one column at a time (numpy
    reduces (N, 3) over axis 0 slowly)."""
    cols = [points[:, k] for k in range(3)]
    return np.array([[c.min() for c in cols], [c.max() for c in cols]])


def key_bounds(keys: np.ndarray) -> np.ndarray:
    """(2, 3) int64: the smallest and the largest voxel index per axis of non-empty ``keys``. From 1-D index
    columns: numpy reduces (N, 3) over axis 0 slowly. The voxel centres of these bounds are the bounds of
    voxel_centers(keys) (a centre is monotone in its index)."""
    if compiled.ENABLED:
        return compiled.key_bounds(keys, _BITS, _FIELD, _OFFSET)
    axes = key_axes(keys)
    return np.array([[a.min() for a in axes], [a.max() for a in axes]])


def key_neighbourhood(radius: int, spherical: bool = True) -> np.ndarray:
    """Key deltas of the voxels within ``radius`` voxels of the origin (adding them to a key offsets the
    packed fields, which is exact as long as no index leaves its 21-bit range)."""
    r = np.arange(-radius, radius + 1)
    off = np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)
    if spherical:
        off = off[(off**2).sum(axis=1) <= radius * radius + 1e-9]
    return (off[:, 0] << (2 * _BITS)) + (off[:, 1] << _BITS) + off[:, 2]


def keys_near(keys: np.ndarray, seed_keys: np.ndarray, radius: int, max_grid_cells: int = 1 << 24) -> np.ndarray:
    """Which ``keys`` lie within ``radius`` voxels (Euclidean, on the integer grid) of some seed key: the same
    set as testing every offset of key_neighbourhood(radius). The seeds go into a dense grid over their box
    (a lookup there is far cheaper than a KD-tree query), dilated along z once per column height of the ball;
    each key then reads one cell per (dx, dy) column of the ball. Seeds spread too far for the grid: KD-tree."""
    if len(keys) == 0 or len(seed_keys) == 0:
        return np.zeros(len(keys), bool)
    seeds, cand = key_axes(seed_keys), key_axes(keys)
    bounds = np.array([[a.min() for a in seeds], [a.max() for a in seeds]])
    lo = bounds[0] - 2 * radius  # seeds +- 2 radius: no read below leaves the grid
    dims = bounds[1] + 2 * radius + 1 - lo
    if np.prod(dims.astype(np.float64)) > max_grid_cells:
        return _keys_near_kdtree(keys, seed_keys, radius)
    inside = np.ones(len(keys), bool)  # keys outside the seeds' box grown by radius are never near
    for a, a_lo, a_dim in zip(cand, lo, dims):
        inside &= (a >= a_lo + radius) & (a < a_lo + a_dim - radius)
    strides = (int(dims[1] * dims[2]), int(dims[2]), 1)
    columns = _z_dilations(_flat(seeds, lo, strides), int(np.prod(dims)), radius)
    at = _flat([a[inside] for a in cand], lo, strides)
    hit = np.zeros(len(at), bool)
    for dx, dy, height in _ball_columns(radius):
        hit |= columns[height][at + (dx * strides[0] + dy * strides[1])]
    near = np.zeros(len(keys), bool)
    near[inside] = hit
    return near


def _keys_near_kdtree(keys: np.ndarray, seed_keys: np.ndarray, radius: int) -> np.ndarray:
    from scipy.spatial import cKDTree

    tree = cKDTree(unpack_keys(seed_keys))
    dist, _ = tree.query(unpack_keys(keys), k=1, distance_upper_bound=radius + 1e-6)
    return np.isfinite(dist)


def key_axes(keys: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The x, y, z voxel indices of keys as three contiguous arrays (column-wise min / compare are faster)."""
    keys = np.asarray(keys, dtype=np.int64)
    return ((keys >> (2 * _BITS)) & _FIELD) - _OFFSET, ((keys >> _BITS) & _FIELD) - _OFFSET, (keys & _FIELD) - _OFFSET


def _flat(axes, lo, strides) -> np.ndarray:
    return (axes[0] - lo[0]) * strides[0] + (axes[1] - lo[1]) * strides[1] + (axes[2] - lo[2])


def _z_dilations(seed_cells: np.ndarray, size: int, radius: int) -> list:
    """Flat grids, one per height h = 0..radius: is a seed within h cells along z. Shifts along the flat array
    move along z; the 2 radius margin keeps every shifted seed inside its own z row."""
    grid = np.zeros(size, bool)
    grid[seed_cells] = True
    levels = [grid]
    for h in range(1, radius + 1):
        level = levels[-1].copy()
        level[h:] |= grid[:-h]
        level[:-h] |= grid[h:]
        levels.append(level)
    return levels


def _ball_columns(radius: int) -> list:
    """(dx, dy, height) of the ball dx^2 + dy^2 + dz^2 <= radius^2: its z column at (dx, dy) spans +-height."""
    columns = []
    for dx in range(-radius, radius + 1):
        for dy in range(-radius, radius + 1):
            rest = radius * radius - dx * dx - dy * dy
            if rest >= 0:
                columns.append((dx, dy, math.isqrt(rest)))
    return columns


# ---------------------------------------------------------------------------------------------------------
# Projection and visibility


def project(points_world: np.ndarray, T_world_cam: np.ndarray, K: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """World points -> (pixel coordinates (N, 2) float32 (u, v), camera depth z (N,) float32).

    Points behind the camera get z <= 0 and meaningless pixels: filter with z."""
    T = invert(T_world_cam).astype(np.float32)
    p = np.asarray(points_world, dtype=np.float32)
    x, y, zw = p[:, 0], p[:, 1], p[:, 2]
    xc, yc, z = (x * T[k, 0] + y * T[k, 1] + zw * T[k, 2] + T[k, 3] for k in range(3))  # per column: faster
    safe = np.where(np.abs(z) > 1e-9, z, np.float32(1e-9))  # than an (N, 3) @ (3, 3) product here
    uv = np.empty((len(p), 2), np.float32)
    uv[:, 0] = np.float32(K[0, 0]) * xc / safe + np.float32(K[0, 2])
    uv[:, 1] = np.float32(K[1, 1]) * yc / safe + np.float32(K[1, 2])
    return uv, z


def in_view(uv: np.ndarray, z: np.ndarray, hw, depth_min: float, depth_max: float) -> np.ndarray:
    """Inside the image and the depth range."""
    h, w = hw
    return (z > depth_min) & (z < depth_max) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)


def visibility(
    points_world: np.ndarray,
    T_world_cam: np.ndarray,
    K: np.ndarray,
    depth: np.ndarray,
    depth_min: float,
    depth_max: float,
    margin: float,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which points the camera sees: in the image, in the depth range and not occluded (z <= observed depth +
    margin, where the observed depth is valid). Returns (visible (N,), in_frustum (N,), pixel indices (N, 2)
    int (u, v)); pixels of points outside the frustum are (0, 0), so every row can index the image."""
    depth_min, depth_max, margin = float(depth_min), float(depth_max), float(margin)  # compared in float32
    if compiled.ENABLED and depth.dtype == np.float32:  # one pass per point, the same float32 operations
        T = invert(T_world_cam).astype(np.float32)
        return compiled.visibility(points_world, T, K, depth, depth_min, depth_max, margin)
    uv, z = project(points_world, T_world_cam, K)
    h, w = depth.shape
    inside = np.flatnonzero(in_view(uv, z, (h, w), depth_min, depth_max))  # NaN / inf pixels are never inside
    frustum = np.zeros(len(z), bool)
    frustum[inside] = True
    px = np.zeros((len(z), 2), dtype=np.int64)
    u, v = uv[inside, 0].astype(np.int64), uv[inside, 1].astype(np.int64)  # in [0, w) x [0, h): floor = truncate
    px[inside, 0], px[inside, 1] = u, v
    observed = np.take(depth, v * w + u)  # only the points in view: a flat gather
    visible = np.zeros(len(z), bool)
    visible[inside] = (observed > 0) & (z[inside] <= observed + margin)
    return visible, frustum, px


def visibility_by_set(
    point_sets: Sequence[np.ndarray], view, depth_min: float, depth_max: float, margin: float
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, List[slice]]:
    """visibility() of several point sets (one per track) in one projection into ``view`` (a Frame: its
    T_world_cam, K and depth): (visible, in_frustum, pixels) of the sets concatenated, and each set's slice."""
    sizes = [len(p) for p in point_sets]
    points = np.concatenate(point_sets) if sum(sizes) else np.zeros((0, 3), np.float32)
    visible, frustum, px = visibility(points, view.T_world_cam, view.K, view.depth, depth_min, depth_max, margin)
    bounds = np.r_[0, np.cumsum(sizes)]
    return visible, frustum, px, [slice(bounds[k], bounds[k + 1]) for k in range(len(point_sets))]


def sums_per_slice(flags: np.ndarray, parts: Sequence[slice]) -> np.ndarray:
    """Count of True in each of the consecutive slices ``parts`` of ``flags`` (visibility_by_set's): one cumulative
    sum, not a reduction per slice (a few hundred small numpy calls per keyframe)."""
    total = np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])
    return np.array([total[s.stop] - total[s.start] for s in parts], np.int64)


def on_surface(points_world: np.ndarray, pixels: np.ndarray, view, margin: float) -> np.ndarray:
    """(N,) bool: is each point (in view, at its ``pixels`` (u, v)) within ``margin`` of the depth ``view`` (a
    Frame) observes there: on the surface the camera sees, not hidden behind it nor seen through."""
    if not len(points_world):
        return np.zeros(0, bool)
    _, z = project(points_world, view.T_world_cam, view.K)
    observed = view.depth[pixels[:, 1], pixels[:, 0]]
    return (observed > 0) & (np.abs(z - observed) <= np.float32(margin))


def frustum_corners(K: np.ndarray, T_world_cam: np.ndarray, hw, near: float, far: float) -> np.ndarray:
    """(8, 3) world corners of the view frustum: near plane then far plane."""
    h, w = hw
    u = np.array([0, w, w, 0], dtype=np.float32)
    v = np.array([0, 0, h, h], dtype=np.float32)
    corners = [pixels_to_camera(u, v, np.full(4, d, np.float32), K) for d in (near, far)]
    return transform(T_world_cam, np.concatenate(corners))


_FACES = np.array([(0, 1, 2), (4, 6, 5), (0, 4, 1), (1, 5, 2), (2, 6, 3), (3, 7, 0)])  # near far top right bottom left


def frustum_planes(K: np.ndarray, T_world_cam: np.ndarray, hw, near: float, far: float, corners=None) -> np.ndarray:
    """(6, 4) world planes (n, d) with unit inward normals: n . x + d >= 0 inside. ``corners``: the
    frustum_corners() of the same view, when the caller has them already."""
    c = (frustum_corners(K, T_world_cam, hw, near, far) if corners is None else corners).astype(np.float64)
    a, b, e = c[_FACES[:, 0]], c[_FACES[:, 1]], c[_FACES[:, 2]]
    n = np.cross(b - a, e - a)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    d = -(n * a).sum(axis=1)
    inward = np.where(n @ c.mean(axis=0) + d < 0, -1.0, 1.0)  # make the normals point inside
    return np.column_stack([n * inward[:, None], d * inward])


def boxes_in_frustum(box_min: np.ndarray, box_max: np.ndarray, planes: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Conservative box-vs-frustum test for (N, 3) AABBs: False only when a box lies entirely outside one
    plane by more than ``margin`` (the usual positive-vertex test)."""
    box_min = np.atleast_2d(box_min)
    box_max = np.atleast_2d(box_max)
    n = planes[:, :3]
    # the box corner furthest along each plane normal
    pos = np.where(n[None] >= 0, box_max[:, None, :], box_min[:, None, :])  # (N, 6, 3)
    dist = (pos * n[None]).sum(axis=2) + planes[None, :, 3]
    return (dist >= -margin).all(axis=1)


def box_gap(a_min: np.ndarray, a_max: np.ndarray, b_min: np.ndarray, b_max: np.ndarray) -> np.ndarray:
    """Euclidean gap between AABBs (0 when they overlap); broadcasts (N, 1, 3) vs (1, M, 3)."""
    d = np.maximum(0.0, np.maximum(a_min - b_max, b_min - a_max))
    return np.sqrt((d**2).sum(axis=-1))


# ---------------------------------------------------------------------------------------------------------
# Poses: quaternions are (x, y, z, w) as in ROS (geometry_msgs).


def quaternion_to_rotation(q: Sequence[float]) -> np.ndarray:
    """3x3 rotation of a quaternion (x, y, z, w); normalised first. Zero-length or non-finite -> InputError."""
    q = np.asarray(q, dtype=np.float64).ravel()
    if q.size != 4:
        raise InputError(f"quaternion must have 4 values (x, y, z, w), got {q.size}")
    if not np.isfinite(q).all():
        raise InputError(f"quaternion has non-finite values: {q.tolist()}")
    norm = np.linalg.norm(q)
    if norm < 1e-9:
        raise InputError("quaternion has zero length (an unset orientation?)")
    x, y, z, w = q / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotation_to_quaternion(R) -> np.ndarray:
    """Quaternion (x, y, z, w) with w >= 0 of a 3x3 rotation (Shepperd's method, stable for all angles)."""
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3) or not np.isfinite(R).all():
        raise InputError(f"rotation must be a finite 3x3 matrix, got shape {R.shape}")
    m = R
    diag = np.array([m[0, 0], m[1, 1], m[2, 2]])
    trace = diag.sum()
    if trace >= diag.max():
        s = 2.0 * np.sqrt(max(1.0 + trace, 1e-12))
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    else:
        i = int(np.argmax(diag))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(max(1.0 + m[i, i] - m[j, j] - m[k, k], 1e-12))
        q = [0.0, 0.0, 0.0, (m[k, j] - m[j, k]) / s]
        q[i] = 0.25 * s
        q[j] = (m[j, i] + m[i, j]) / s
        q[k] = (m[k, i] + m[i, k]) / s
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def pose_to_matrix(translation: Sequence[float], quaternion: Sequence[float]) -> np.ndarray:
    """4x4 transform from a translation (x, y, z) and a quaternion (x, y, z, w)."""
    t = np.asarray(translation, dtype=np.float64).ravel()
    if t.size != 3 or not np.isfinite(t).all():
        raise InputError(f"translation must be 3 finite values, got {t.tolist()}")
    T = np.eye(4)
    T[:3, :3] = quaternion_to_rotation(quaternion)
    T[:3, 3] = t
    return T


def matrix_to_pose(T) -> Tuple[np.ndarray, np.ndarray]:
    """(translation (3,), quaternion (x, y, z, w)) of a rigid 4x4 transform (validated)."""
    T = validate_pose(T)
    return T[:3, 3].copy(), rotation_to_quaternion(T[:3, :3])


def interpolate_pose(T0, T1, alpha: float) -> np.ndarray:
    """Pose between T0 (alpha 0) and T1 (alpha 1): linear translation, spherical rotation (slerp)."""
    t0, q0 = matrix_to_pose(T0)
    t1, q1 = matrix_to_pose(T1)
    dot = float(q0 @ q1)
    if dot < 0:  # take the short way round
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + alpha * (q1 - q0)
    else:
        theta = np.arccos(np.clip(dot, -1.0, 1.0))
        q = (np.sin((1 - alpha) * theta) * q0 + np.sin(alpha * theta) * q1) / np.sin(theta)
    return pose_to_matrix(t0 + alpha * (t1 - t0), q)


def look_at(position, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world 4x4 of an OpenCV camera at ``position`` looking at ``target`` (world z up)."""
    position, target = np.asarray(position, float), np.asarray(target, float)
    z = target - position
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-6:  # looking straight along ``up``: any horizontal x will do
        x = np.cross(z, (0.0, 1.0, 0.0))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, y, z, position
    return T
