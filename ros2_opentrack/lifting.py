"""2D masks -> denoised 3D observations (paper 3.1.1): lift with depth, keep the main DBSCAN cluster, voxelise.

All masks of a frame are lifted and clustered together (one back-projection, one clustering call with the
masks kept apart), because per-mask clustering calls cost more than the whole step budget."""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import compiled, geometry
from .config import DBSCAN_BACKENDS
from .errors import BackendUnavailable, ConfigError
from .types import Frame, Mask2D, Observation

log = logging.getLogger("ros2_opentrack")


def lift_masks(
    frame: Frame,
    masks: Sequence[Mask2D],
    lift_cfg,
    dbscan_cfg,
    voxel_size: float,
    rng: np.random.Generator,
    features: Optional[np.ndarray] = None,
) -> Tuple[List[Observation], Dict[str, int]]:
    """Lift the validated masks of a validated frame. Returns (observations, dropped reason -> count).

    ``features`` (N, D) are attached to the observations (row i to mask i) when given."""
    dropped: Dict[str, int] = {}
    if not masks:
        return [], dropped
    points, colors, group, counts = _lift_all(frame, masks, lift_cfg, rng)
    small = counts < lift_cfg.min_mask_pixels
    if small.any():
        dropped["small_mask"] = int(small.sum())
        points, colors, group = _select(~small[group], points, colors, group)
    if dbscan_cfg.enabled and len(points):
        keep = main_cluster(points, group, dbscan_cfg.eps_m, dbscan_cfg.min_points, dbscan_cfg.backend)
        points, colors, group = _select(keep, points, colors, group)
    observations = _to_observations(points, colors, group, masks, counts, small, voxel_size, features, dropped)
    return observations, dropped


def _select(keep: np.ndarray, *arrays: np.ndarray) -> Tuple[np.ndarray, ...]:
    """The rows of each array where ``keep``: np.compress, a third of the time of a boolean index on (N, 3)."""
    return tuple(np.compress(keep, a, axis=0) for a in arrays)


def _lift_all(frame: Frame, masks: Sequence[Mask2D], cfg, rng) -> Tuple[np.ndarray, ...]:
    """World points, colours and mask index of every sampled valid pixel; full-resolution valid pixel counts."""
    s = int(cfg.pixel_stride)
    depth = frame.depth
    valid = (depth > cfg.depth_min_m) & (depth < cfg.depth_max_m)  # validated depth: NaN already 0
    counts = np.zeros(len(masks), np.int64)
    rows, cols = [], []
    for i, m in enumerate(masks):  # each mask is only read inside its box
        x0, y0, x1, y1 = _box_slice(m, depth.shape, s)
        mask = _eroded(m.mask[y0:y1, x0:x1], cfg.erode_px) & valid[y0:y1, x0:x1]
        counts[i] = np.count_nonzero(mask)
        r, c = np.nonzero(mask[::s, ::s])
        rows.append(r * s + y0)
        cols.append(c * s + x0)
    sizes = [len(r) for r in rows]
    group = np.repeat(np.arange(len(masks), dtype=np.int32), sizes)
    group, v, u = _cap_per_group(group, np.concatenate(rows), np.concatenate(cols), len(masks), cfg.max_points, rng)
    pixel = v * depth.shape[1] + u  # flat gathers (np.take) cost a quarter of 2D fancy indexing
    z = np.take(depth, pixel)
    pts = geometry.transform(frame.T_world_cam, geometry.pixels_to_camera(u, v, z, frame.K))
    return pts, np.take(frame.rgb.reshape(-1, 3), pixel, axis=0), group, counts


def _box_slice(m: Mask2D, hw, stride: int):
    """The mask's box, widened to the stride grid so sampling stays aligned with the full image."""
    h, w = hw
    box = m.box if m.box is not None else (0, 0, w, h)
    x0 = max(0, int(box[0]) // stride * stride)
    y0 = max(0, int(box[1]) // stride * stride)
    return x0, y0, min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))


def _eroded(mask: np.ndarray, erode_px: int) -> np.ndarray:
    if erode_px <= 0:
        return mask
    import cv2

    k = np.ones((2 * erode_px + 1, 2 * erode_px + 1), np.uint8)
    # pixels outside the crop count as background, so cropping to the box does not change the result
    return cv2.erode(mask.astype(np.uint8), k, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def _cap_per_group(group, rows, cols, n_groups, max_points, rng):
    """At most ``max_points`` per mask, a seeded random subset (np.nonzero returns groups in order): a mask
    over the cap keeps its points of the ``max_points`` smallest random draws (ties: the earlier point)."""
    sizes = np.bincount(group, minlength=n_groups)
    if max_points <= 0 or sizes.max(initial=0) <= max_points:
        return group, rows, cols
    draws = rng.random(len(group))  # one draw per point, over-cap masks or not: the seeded stream stays the same
    keep = np.ones(len(group), bool)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    for g in np.flatnonzero(sizes > max_points):  # a partition per big mask: cheaper than sorting every point
        lo, hi = bounds[g], bounds[g + 1]
        keep[lo:hi] = _smallest(draws[lo:hi], max_points)
    kept = np.flatnonzero(keep)  # a gather by index: boolean indexing is slow on a random pattern
    return group.take(kept), rows.take(kept), cols.take(kept)


def _smallest(values: np.ndarray, k: int) -> np.ndarray:
    """Bool mask of the ``k`` smallest values; among values equal to the k-th, the first ones."""
    kth = _kth_smallest(values, k)
    out = values < kth
    ties = np.flatnonzero(values == kth)
    out[ties[: k - int(out.sum())]] = True
    return out


def _kth_smallest(values: np.ndarray, k: int) -> float:
    """The k-th smallest of ``values`` (uniform draws in [0, 1)). It lies near k / n: partition only the values
    under a bound 6 sigma above that; exact whenever at least k values are under it (else all are partitioned)."""
    bound = (k + 6.0 * np.sqrt(k) + 6.0) / len(values)
    low = np.compress(values < bound, values)
    pool = low if len(low) >= k else values
    return np.partition(pool, k - 1)[k - 1]


def _to_observations(points, colors, group, masks, counts, small, voxel_size, features, dropped):
    """One observation per mask with points left; ``group`` is sorted (masks are lifted in order and filters
    keep the order), so each mask's points are one contiguous slice."""
    observations: List[Observation] = []
    bounds = np.searchsorted(group, np.arange(len(masks) + 1))
    keys = geometry.voxel_keys(points, voxel_size, unique=False)  # one pass over all points
    for i, m in enumerate(masks):
        if small[i]:
            continue
        sel = slice(bounds[i], bounds[i + 1])
        if bounds[i] == bounds[i + 1]:
            dropped["no_cluster"] = dropped.get("no_cluster", 0) + 1
            continue
        feat = features[i] if features is not None else np.zeros(0, np.float32)
        observations.append(
            Observation(
                voxels=geometry.unique_keys(keys[sel]),
                points=points[sel].copy(),
                colors=colors[sel].copy(),
                feature=feat,
                pixel_count=int(counts[i]),
                box=np.asarray(m.box, np.float32),
                score=float(m.score),
                label=m.label,
                source_id=m.source_id,
                mask_index=i,
            )
        )
    return observations


# ---------------------------------------------------------------------------------------------------------
# DBSCAN denoising: keep, for each group (mask), the cluster holding the most points


def main_cluster(
    points: np.ndarray, group: np.ndarray, eps: float, min_points: int, backend: str = "auto"
) -> np.ndarray:
    """Bool (N,): the point belongs to the largest DBSCAN cluster of its group."""
    if len(points) == 0:
        return np.zeros(0, bool)
    labels = cluster_labels(points, group, eps, min_points, backend)
    return _largest_per_group(labels, group)


def cluster_labels(
    points: np.ndarray, group: np.ndarray, eps: float, min_points: int, backend: str = "auto"
) -> np.ndarray:
    """Cluster label per point (-1 = noise); clusters never span two groups. An explicit backend runs exactly
    that backend; only auto chooses (grid, or sklearn where the grid cannot hold the points)."""
    if backend not in DBSCAN_BACKENDS:
        raise ConfigError(f"dbscan.backend '{backend}' unknown (expected one of {', '.join(DBSCAN_BACKENDS)})")
    if backend in ("auto", "grid"):
        labels = grid_dbscan(points, group, eps, min_points)
        if labels is not None:
            return labels
        if backend == "grid":
            raise ConfigError(
                f"dbscan.backend 'grid' cannot cluster these points: they span more than "
                f"{(1 << _AXIS_BITS) - 2} cells of eps/2 = {eps / 2} m per axis, or the frame has "
                f"{1 << 14} or more masks; use dbscan.backend auto or sklearn"
            )
        backend = "sklearn"
    if backend == "open3d":
        return _open3d_labels(points, group, eps, min_points)
    return _sklearn_labels(points, group, eps, min_points)


def _largest_per_group(labels: np.ndarray, group: np.ndarray) -> np.ndarray:
    ok = labels >= 0
    if not ok.any():
        return ok
    n_labels = labels.max() + 1
    sizes = np.bincount(labels[ok], minlength=n_labels)
    label_group = np.full(n_labels, -1, np.int64)
    label_group[labels[ok]] = group[ok]
    # per group, the label with the largest size: sort by (group, -size) and take the first of each group
    present = np.flatnonzero(sizes)
    order = present[np.lexsort((-sizes[present], label_group[present]))]
    first = np.ones(len(order), bool)
    first[1:] = label_group[order[1:]] != label_group[order[:-1]]
    best = np.zeros(n_labels, bool)
    best[order[first]] = True
    return ok & best[np.where(ok, labels, 0)]


def _separated(points: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Shift each group far apart so one clustering call never joins two masks."""
    span = float(np.ptp(points, axis=0).max()) + 10.0
    out = points.astype(np.float64, copy=True)
    out[:, 0] += group * span
    return out


def _sklearn_labels(points, group, eps, min_points) -> np.ndarray:
    from sklearn.cluster import DBSCAN

    return DBSCAN(eps=eps, min_samples=min_points).fit(_separated(points, group)).labels_.astype(np.int64)


def _open3d_labels(points, group, eps, min_points) -> np.ndarray:
    o3d = import_open3d()
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(_separated(points, group)))
    return np.asarray(pcd.cluster_dbscan(eps=eps, min_points=min_points, print_progress=False), dtype=np.int64)


def import_open3d():
    """open3d, loading the libusb copy of the libusb-package wheel first when the system lacks it."""
    try:
        import ctypes

        import libusb_package

        ctypes.CDLL(libusb_package.get_library_path(), mode=ctypes.RTLD_GLOBAL)
    except Exception:  # no wheel: the system library may still be there
        pass
    try:
        import open3d as o3d
    except Exception as exc:  # ImportError or OSError from a missing shared library
        raise BackendUnavailable(f"open3d does not import here ({exc}); use dbscan.backend: grid or sklearn") from None
    return o3d


_AXIS_BITS = 16


def grid_dbscan(points: np.ndarray, group: np.ndarray, eps: float, min_points: int) -> Optional[np.ndarray]:
    """DBSCAN on a grid of eps/2 cells, all groups at once: a cell is core when its 3x3x3 neighbourhood (a
    cube of side 1.5 eps) holds >= 0.75 min_points points; 26-adjacent core cells
    form clusters; a non-core cell joins one adjacent core cell's cluster (border), others are noise.

    None when the points span too many cells for the key packing (then use an exact backend)."""
    cell = eps / 2.0
    x, y, z = (c - (c.min() - 1) for c in np.floor(points.T / cell).astype(np.int64))  # per axis: contiguous rows
    if max(x.max(), y.max(), z.max()) >= (1 << _AXIS_BITS) - 1 or group.max(initial=0) >= (1 << 14):
        return None
    keys = (group.astype(np.int64) << 48) | (x << 32) | (y << 16) | z
    order = np.argsort(keys)  # only the cell of each point matters: no stable sort needed
    sk = keys[order]
    first = np.ones(len(sk), bool)
    first[1:] = sk[1:] != sk[:-1]
    starts = np.flatnonzero(first)
    cells = sk.take(starts)  # a gather by index: boolean indexing is slow on a random pattern
    inverse = np.empty(len(keys), np.int64)
    inverse[order] = np.cumsum(first) - 1
    counts = np.diff(np.append(starts, len(sk)))
    # the 3x3x3 cube of side 1.5 eps holds ~0.75 of the points of the eps ball (0.81 in volume, 0.72 on
    # a surface): scale the threshold so grid and exact DBSCAN call the same points core
    labels = compiled.grid_cell_labels if compiled.ENABLED else grid_cell_labels
    return labels(cells, counts, 0.75 * min_points)[inverse]


def grid_cell_labels(cells: np.ndarray, counts: np.ndarray, min_core: float) -> np.ndarray:
    """Cluster label per cell of grid_dbscan (-1: noise) from the sorted unique ``cells`` and their point
    ``counts``: a cell is core when its 3x3x3 neighbourhood holds >= ``min_core`` points."""
    n = len(cells)
    src_parts, dst_parts = _forward_neighbours(cells)
    src = np.concatenate(src_parts)
    dst = np.concatenate(dst_parts)
    density = (
        counts + np.bincount(src, weights=counts[dst], minlength=n) + np.bincount(dst, weights=counts[src], minlength=n)
    )
    core = density >= min_core
    cell_label = _core_components(src, dst, core)
    # border cells (not core) take the label of an adjacent core cell; the rest is noise (-1)
    for a, b in ((src, dst), (dst, src)):
        attach = np.flatnonzero(~core[a] & core[b])
        cell_label[a.take(attach)] = cell_label[b.take(attach)]
    return cell_label


# the 13 "forward" neighbours (each pair is seen once, counted both ways): (0, 0, +1), then (dx, dy) columns
# with their dz
_FORWARD_COLUMNS = (
    ((0, 1), (-1, 0, 1)),
    ((1, -1), (-1, 0, 1)),
    ((1, 0), (-1, 0, 1)),
    ((1, 1), (-1, 0, 1)),
)


def _forward_neighbours(cells: np.ndarray):
    """(src, dst) index lists of occupied forward-neighbour cells of the sorted unique ``cells``. The cell above
    (z + 1) is the next one in order when occupied; keys differing only in z by -1, 0, +1 are consecutive
    integers, so one search per (dx, dy) column finds all three."""
    n = len(cells)
    above = np.flatnonzero(cells[1:] == cells[:-1] + 1)
    src_parts, dst_parts = [above], [above + 1]
    for (dx, dy), dzs in _FORWARD_COLUMNS:
        base = cells + ((dx << 32) + (dy << 16))
        pos = np.searchsorted(cells, base + dzs[0])
        for dz in dzs:
            hit = cells[np.minimum(pos, n - 1)] == base + dz
            idx = np.flatnonzero(hit)
            src_parts.append(idx)
            dst_parts.append(pos[idx])
            pos = pos + hit
    return src_parts, dst_parts


def _core_components(src: np.ndarray, dst: np.ndarray, core: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(core)
    ok = np.flatnonzero(core[src] & core[dst])
    graph = coo_matrix((np.ones(len(ok), np.int8), (src.take(ok), dst.take(ok))), shape=(n, n)).tocsr()
    _, comp = connected_components(graph, directed=False)
    # number the components holding core cells 0, 1, ... in component order (np.unique's ranks, without a sort)
    used = np.zeros(comp.max(initial=-1) + 1, bool)
    used[comp[core]] = True
    rank = np.cumsum(used) - 1
    return np.where(core, rank[comp], -1)
