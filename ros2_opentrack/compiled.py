"""Compiled loops (numba) for the per-keyframe hot spots that numpy can only do in many passes over memory:
grid DBSCAN's cell graph (lifting.grid_dbscan), the projection of every track's voxels (geometry.visibility), the
intersections of voxel sets (association.pairwise_iou, voxel_store.shared_places), a track store's insert and the
scene map's block merges (voxel_store), how masks cover tracks' visible pixels (consensus.mask_coverage) and how
much of them lies in each observation's box (association.seen_elsewhere), voxel keys and their bounds (geometry),
the nearest valid depth around projected pixels (changes), depth cleaning (types.validate_frame) and the colour
histogram's joint bins (perception.color_hist).

Each kernel returns exactly what the numpy code beside its caller returns, bit for bit (test_compiled.py compares
them on random and real inputs), so results never depend on whether numba is installed. Without numba, or with
OPENTRACK_COMPILED=0 in the environment, the callers run their numpy code. ``ENABLED`` is read at call time.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

log = logging.getLogger("ros2_opentrack")

numba = None
UNAVAILABLE = "OPENTRACK_COMPILED=0"  # why the numpy code runs (doctor), when it does
if os.environ.get("OPENTRACK_COMPILED", "1").lower() not in ("0", "false", "no", "off"):
    try:
        import numba
    except Exception as exc:  # optional (pip install numba); a broken install must not stop the package
        if str(exc) == "No module named 'numba'":
            UNAVAILABLE = "numba not installed: pip install numba"
        else:
            UNAVAILABLE = f"numba does not import ({type(exc).__name__}: {exc})"

ENABLED = numba is not None


def _jit(fn):
    # nogil: with perception.overlap_stages the kernels of one keyframe run beside another thread's work;
    # cache: compiled once per installation, not once per process (where numba finds a writable place)
    if numba is None:
        return fn
    try:
        return numba.njit(nogil=True, cache=True)(fn)
    except RuntimeError as exc:  # no writable cache location: compile in each process instead
        log.debug("numba cannot cache %s: %s", fn.__name__, exc)
        return numba.njit(nogil=True)(fn)


# ---------------------------------------------------------------------------------------------------------
# Grid DBSCAN (lifting.grid_dbscan): cells are sorted unique keys (group << 48 | x << 32 | y << 16 | z)

# key offsets of the four (dx, dy) columns of forward neighbours: (0, +1), (+1, -1), (+1, 0), (+1, +1)
GRID_COLUMNS = np.array([1 << 16, (1 << 32) - (1 << 16), 1 << 32, (1 << 32) + (1 << 16)], np.int64)


@_jit
def _root(parent, i):
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        parent[i], i = root, parent[i]
    return root


@_jit
def _forward_edges(cells, columns):
    """(src, dst) of each cell's occupied forward neighbours (z + 1, then each column's dz -1, 0, +1): by source,
    and per source by rising destination (the offsets rise in that order)."""
    n = len(cells)
    src = np.empty(13 * n, np.int64)
    dst = np.empty(13 * n, np.int64)
    at = np.zeros(len(columns), np.int64)  # per column, the first cell not below the current one's dz = -1
    m = 0
    for i in range(n):
        if i + 1 < n and cells[i + 1] == cells[i] + 1:
            src[m], dst[m] = i, i + 1
            m += 1
        for c in range(len(columns)):
            base = cells[i] + columns[c]
            j = at[c]
            while j < n and cells[j] < base - 1:
                j += 1
            at[c] = j
            for q in range(j, min(j + 3, n)):
                if cells[q] > base + 1:
                    break
                src[m], dst[m] = i, q
                m += 1
    return src[:m], dst[:m]


@_jit
def _grid_cell_labels(cells, counts, min_core, columns):
    n = len(cells)
    src, dst = _forward_edges(cells, columns)
    density = counts.astype(np.float64)
    for e in range(len(src)):
        density[src[e]] += counts[dst[e]]
        density[dst[e]] += counts[src[e]]
    core = density >= min_core
    parent = np.arange(n)
    for e in range(len(src)):
        if core[src[e]] and core[dst[e]]:
            a, b = _root(parent, src[e]), _root(parent, dst[e])
            parent[max(a, b)] = min(a, b)  # the root is the component's lowest cell
    label = np.full(n, -1, np.int64)
    n_labels = 0
    for i in range(n):  # components numbered by their lowest cell, as connected_components + rank do
        if core[i]:
            r = _root(parent, i)
            if r == i:
                label[i] = n_labels
                n_labels += 1
            else:
                label[i] = label[r]
    # a border cell ends as numpy's two ordered scatters leave it (a neighbour's offset falls as its list rank
    # rises): with the label of its lowest core neighbour below it, else of its highest core neighbour above
    below = np.full(n, -1, np.int64)
    above = np.full(n, -1, np.int64)
    for e in range(len(src)):
        a, b = src[e], dst[e]
        if core[a] and not core[b] and below[b] < 0:
            below[b] = a
        elif core[b] and not core[a]:
            above[a] = b
    for i in range(n):
        if below[i] >= 0:
            label[i] = label[below[i]]
        elif above[i] >= 0:
            label[i] = label[above[i]]
    return label


def grid_cell_labels(cells: np.ndarray, counts: np.ndarray, min_core: float) -> np.ndarray:
    """Cluster label per cell (-1: noise), as lifting.grid_cell_labels."""
    return _grid_cell_labels(cells.astype(np.int64), counts.astype(np.int64), float(min_core), GRID_COLUMNS)


# ---------------------------------------------------------------------------------------------------------
# Visibility (geometry.visibility): the same float32 operations in the same order


@_jit
def _visibility(points, T, fx, fy, cx, cy, depth, depth_min, depth_max, margin):
    n = len(points)
    h, w = depth.shape
    visible = np.zeros(n, np.bool_)
    frustum = np.zeros(n, np.bool_)
    px = np.zeros((n, 2), np.int64)
    tiny, zero, width, height = np.float32(1e-9), np.float32(0.0), np.float32(w), np.float32(h)
    for i in range(n):
        x, y, zw = points[i, 0], points[i, 1], points[i, 2]
        z = x * T[2, 0] + y * T[2, 1] + zw * T[2, 2] + T[2, 3]
        if not (z > depth_min and z < depth_max):
            continue
        safe = z if abs(z) > tiny else tiny
        u = fx * (x * T[0, 0] + y * T[0, 1] + zw * T[0, 2] + T[0, 3]) / safe + cx
        v = fy * (x * T[1, 0] + y * T[1, 1] + zw * T[1, 2] + T[1, 3]) / safe + cy
        if not (u >= zero and u < width and v >= zero and v < height):
            continue
        frustum[i] = True
        px[i, 0], px[i, 1] = np.int64(u), np.int64(v)
        observed = depth[px[i, 1], px[i, 0]]
        visible[i] = observed > zero and z <= observed + margin
    return visible, frustum, px


def visibility(points, T_cam_world, K, depth, depth_min, depth_max, margin):
    """(visible, in_frustum, pixels) as geometry.visibility, from float32 points and the float32 world-to-camera
    transform."""
    f = np.float32
    return _visibility(
        np.ascontiguousarray(points, np.float32),
        np.ascontiguousarray(T_cam_world, np.float32),
        f(K[0, 0]),
        f(K[1, 1]),
        f(K[0, 2]),
        f(K[1, 2]),
        np.ascontiguousarray(depth, np.float32),
        f(depth_min),  # numpy compares float32 arrays with a Python float in float32 (NEP 50): so do we
        f(depth_max),
        f(margin),
    )


# ---------------------------------------------------------------------------------------------------------
# Voxel-set intersections (association.pairwise_iou)


@_jit
def _intersections(keys_a, bounds_a, keys_b, bounds_b):
    na, nb = len(bounds_a) - 1, len(bounds_b) - 1
    out = np.zeros((na, nb))
    for i in range(na):
        a0, a1 = bounds_a[i], bounds_a[i + 1]
        if a1 == a0:
            continue
        for j in range(nb):
            b0, b1 = bounds_b[j], bounds_b[j + 1]
            if b1 == b0 or keys_b[b1 - 1] < keys_a[a0] or keys_b[b0] > keys_a[a1 - 1]:
                continue  # key ranges apart: nothing shared
            p, q, shared = a0, b0, 0
            while p < a1 and q < b1:  # merge of two sorted unique lists
                if keys_a[p] < keys_b[q]:
                    p += 1
                elif keys_b[q] < keys_a[p]:
                    q += 1
                else:
                    shared += 1
                    p += 1
                    q += 1
            out[i, j] = shared
    return out


def _slice_bounds(sizes) -> np.ndarray:
    """[0, cumulative sizes...]: set k of a concatenation is [bounds[k], bounds[k + 1])."""
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _packed_pixels(pixel_sets):
    """Pixel sets ((n, 2) x, y each) as one int64 array and their _slice_bounds, for a kernel."""
    sizes = [len(p) for p in pixel_sets]
    pixels = np.concatenate(pixel_sets).astype(np.int64, copy=False) if sum(sizes) else np.zeros((0, 2), np.int64)
    return pixels, _slice_bounds(sizes)


def intersections(keys_a, sizes_a, keys_b, sizes_b) -> np.ndarray:
    """(len(sizes_a), len(sizes_b)) count of keys shared by each pair of sorted unique key sets, the sets given
    concatenated with their sizes."""
    return _intersections(
        keys_a.astype(np.int64), _slice_bounds(sizes_a), keys_b.astype(np.int64), _slice_bounds(sizes_b)
    )


# ---------------------------------------------------------------------------------------------------------
# Sorted insertion into a track's point store (voxel_store.PointStore.add_keys)


@_jit
def _fresh_unique(keys, stored, room):
    """Indices into ``keys`` of the first occurrence of each key not in ``stored`` (sorted), in key order, at
    most ``room``: what isin_sorted + np.unique(return_index) + [:room] pick."""
    lead = np.empty(len(keys), np.int64)  # a repeat of the key before it is never a first occurrence
    m = 0
    for i in range(len(keys)):
        if i == 0 or keys[i] != keys[i - 1]:
            lead[m] = i
            m += 1
    lead = lead[:m]
    order = lead[np.argsort(keys[lead], kind="mergesort")]  # stable: the first occurrence leads each run
    first = np.empty(min(m, room), np.int64)
    k, p = 0, 0
    for j in range(m):  # one merge walk against the stored keys
        if k == len(first):
            break
        key = keys[order[j]]
        if j > 0 and key == keys[order[j - 1]]:
            continue
        while p < len(stored) and stored[p] < key:
            p += 1
        if p == len(stored) or stored[p] != key:
            first[k] = order[j]
            k += 1
    return first[:k]


@_jit
def _store_insert(
    stored,
    colors,
    visible,
    in_mask,
    centers,
    keep_centers,
    keys,
    add_colors,
    add_visible,
    add_in_mask,
    counted,
    room,
    voxel,
    bits,
    offset,
):
    """PointStore.add_keys in one pass: the first occurrence of each new key (_fresh_unique), merged in key order
    into the keys, colours, counters and (``keep_centers``) voxel centres. ``counted``: the added voxels bring
    their counters, else they start at 0. Returns (how many were added, their key bounds, keys, colors, visible,
    in_mask, centers)."""
    first = _fresh_unique(keys, stored, room)
    n, k = len(stored), len(first)
    bounds = np.empty((2, 3), np.int64)  # of the added keys (geometry.key_bounds)
    bounds[0, :] = np.iinfo(np.int64).max
    bounds[1, :] = np.iinfo(np.int64).min
    if k == 0:
        return 0, bounds, stored, colors, visible, in_mask, centers
    out_keys = np.empty(n + k, np.int64)
    out_colors = np.empty((n + k, 3), np.uint8)
    out_visible = np.empty(n + k, np.uint16)
    out_in_mask = np.empty(n + k, np.uint16)
    out_centers = np.empty((n + k if keep_centers else 0, 3), np.float32)
    field = (1 << bits) - 1
    i = j = 0
    for m in range(n + k):
        if j == k or (i < n and stored[i] < keys[first[j]]):
            out_keys[m] = stored[i]
            out_visible[m], out_in_mask[m] = visible[i], in_mask[i]
            for c in range(3):
                out_colors[m, c] = colors[i, c]
                if keep_centers:
                    out_centers[m, c] = centers[i, c]
            i += 1
        else:
            src = first[j]
            key = keys[src]
            out_keys[m] = key
            for axis, shift in enumerate((2 * bits, bits, 0)):
                v = ((key >> shift) & field) - offset  # the voxel index on this axis
                bounds[0, axis] = min(bounds[0, axis], v)
                bounds[1, axis] = max(bounds[1, axis], v)
                if keep_centers:  # geometry.voxel_centers: float32((index + 0.5) * voxel)
                    out_centers[m, axis] = np.float32((v + 0.5) * voxel)
            for c in range(3):
                out_colors[m, c] = add_colors[src, c]
            out_visible[m] = add_visible[src] if counted else 0
            out_in_mask[m] = add_in_mask[src] if counted else 0
            j += 1
    return k, bounds, out_keys, out_colors, out_visible, out_in_mask, out_centers


def store_insert(arrays, voxel: float, keys, colors, visible, in_mask, room: int, bits: int, offset: int):
    """voxel_store.PointStore.add_keys (its numpy path's result, bit for bit) on a store's ``arrays`` (keys,
    colors, visible, in_mask and its cached voxel centres or None): None when no voxel was added, else (the added
    voxels' key bounds (geometry.key_bounds), the store's new arrays in the same order)."""
    counted = visible is not None or in_mask is not None
    if counted:  # a counter not given starts at 0
        visible, in_mask = (np.zeros(len(keys), np.uint16) if c is None else c for c in (visible, in_mask))
    stored, stored_colors, stored_visible, stored_in_mask, centers = arrays
    keep_centers = centers is not None
    added, bounds, *out = _store_insert(
        stored,
        stored_colors,
        stored_visible,
        stored_in_mask,
        centers if keep_centers else np.zeros((0, 3), np.float32),
        keep_centers,
        np.ascontiguousarray(keys, np.int64),
        np.ascontiguousarray(colors).astype(np.uint8, copy=False).reshape(-1, 3),
        np.asarray(visible if counted else (), np.uint16),  # as add_keys' astype(np.uint16)
        np.asarray(in_mask if counted else (), np.uint16),
        counted,
        int(room),
        float(voxel),
        int(bits),
        int(offset),
    )
    if not added:
        return None
    return bounds, (*out[:4], out[4] if keep_centers else None)


# ---------------------------------------------------------------------------------------------------------
# How masks cover tracks' visible pixels (consensus.mask_coverage)


@_jit
def _sample_boxes(pixels, bounds, min_points, max_points):
    """Per pixel set k (pixels[bounds[k]:bounds[k + 1]], x and y): its sampling step (0: under min_points) and
    the box (x0, y0, x1, y1) of its strided sample."""
    n_sets = len(bounds) - 1
    steps = np.zeros(n_sets, np.int64)
    boxes = np.zeros((n_sets, 4), np.int64)
    for k in range(n_sets):
        n = bounds[k + 1] - bounds[k]
        if n < min_points:
            continue
        step = max(1, -(-n // max_points))
        steps[k] = step
        x0, y0 = pixels[bounds[k], 0], pixels[bounds[k], 1]
        x1, y1 = x0, y0
        for j in range(bounds[k], bounds[k + 1], step):
            x, y = pixels[j, 0], pixels[j, 1]
            x0, x1, y0, y1 = min(x0, x), max(x1, x), min(y0, y), max(y1, y)
        boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3] = x0, y0, x1, y1
    return steps, boxes


@_jit
def _coverage_row(mask, x0, y0, x1, y1, pixels, bounds, steps, boxes, out):
    """out[k]: the share of pixel set k's strided sample inside ``mask`` (tight box x0, y0, x1, y1), for the
    sets whose sample box meets the mask's; the others keep what ``out`` holds."""
    for k in range(len(steps)):
        step = steps[k]
        if step == 0 or boxes[k, 0] > x1 or boxes[k, 2] < x0 or boxes[k, 1] > y1 or boxes[k, 3] < y0:
            continue
        inside = 0
        taken = 0
        for j in range(bounds[k], bounds[k + 1], step):
            inside += mask[pixels[j, 1], pixels[j, 0]]
            taken += 1
        out[k] = inside / taken


def mask_coverage(masks, boxes, pixel_sets, min_points: int, max_points: int) -> np.ndarray:
    """consensus.mask_coverage (its numpy code's result, bit for bit): one kernel call per mask."""
    pixels, bounds = _packed_pixels(pixel_sets)
    steps, sample_boxes = _sample_boxes(pixels, bounds, int(min_points), int(max_points))
    cover = np.full((len(masks), len(pixel_sets)), np.nan)
    cover[:, steps > 0] = 0.0
    read = sample_boxes[steps > 0]  # the kernel reads masks there unchecked: refuse what numpy would refuse
    lowest, right, bottom = (read[:, :2].min(), read[:, 2].max(), read[:, 3].max()) if len(read) else (0, -1, -1)
    for i, (mask, (x0, y0, x1, y1)) in enumerate(zip(masks, boxes)):
        if lowest < 0 or right >= mask.shape[1] or bottom >= mask.shape[0]:
            raise IndexError(f"mask_coverage: pixels outside the {mask.shape[1]}x{mask.shape[0]} mask {i}")
        _coverage_row(mask, x0, y0, x1, y1, pixels, bounds, steps, sample_boxes, cover[i])
    return cover


@_jit
def _outside_boxes(pixels, bounds, seen, boxes):
    """(boxes, sets): fewer than half of pixel set k inside box i ([x0, x1) x [y0, y1)), for the sets in ``seen``
    (True for the others)."""
    out = np.ones((len(boxes), len(bounds) - 1), np.bool_)
    for k in range(len(bounds) - 1):
        if not seen[k]:
            continue
        n = bounds[k + 1] - bounds[k]
        for i in range(len(boxes)):
            inside = 0
            for j in range(bounds[k], bounds[k + 1]):
                x, y = pixels[j, 0], pixels[j, 1]
                if x >= boxes[i, 0] and x < boxes[i, 2] and y >= boxes[i, 1] and y < boxes[i, 3]:
                    inside += 1
            out[i, k] = n > 0 and inside / n < 0.5  # an empty set: numpy's mean is NaN, and NaN < 0.5 is False
    return out


def outside_boxes(pixel_sets, seen, boxes) -> np.ndarray:
    """association.Associator.seen_elsewhere's (observations, tracks) "mostly outside the box" test."""
    pixels, bounds = _packed_pixels(pixel_sets)
    return _outside_boxes(pixels, bounds, np.asarray(seen, np.bool_), np.asarray(boxes, np.float64).reshape(-1, 4))


# ---------------------------------------------------------------------------------------------------------
# Colour-histogram bins (perception.color_hist)


@_jit
def _joint_bins(hsv, lut):
    out = np.empty(hsv.shape[:2], np.int32)
    for y in range(hsv.shape[0]):
        for x in range(hsv.shape[1]):
            out[y, x] = np.int32(lut[0, hsv[y, x, 0], 0]) + lut[0, hsv[y, x, 1], 1] + lut[0, hsv[y, x, 2], 2]
    return out


def joint_bins(hsv: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """(H, W) int32 joint bin index of an HSV uint8 image: the sum of each channel's term in ``lut`` (1, 256, 3),
    as ColorHistogramFeatures.bin_image's LUT, split and adds give it (no term sum reaches the uint8 limit)."""
    return _joint_bins(hsv, lut)


# ---------------------------------------------------------------------------------------------------------
# Frame validation (types.validate_frame)


@_jit
def _clean_depth(depth):
    out = np.empty(depth.shape, np.float32)
    deepest = np.float32(0.0)
    for y in range(depth.shape[0]):
        for x in range(depth.shape[1]):
            v = depth[y, x]
            if not (v > 0 and v < np.inf):  # NaN, inf and <= 0: no reading
                v = np.float32(0.0)
            out[y, x] = v
            if v > deepest:
                deepest = v
    return out, deepest


def clean_depth(depth: np.ndarray):
    """(float32 depth with NaN, inf and <= 0 set to 0, its maximum): types.validate_frame's np.where and max in
    one pass."""
    out, deepest = _clean_depth(depth)
    return out, float(deepest)


@_jit
def _merge_new(old_keys, old_colors, keys, colors):
    """The sorted union of two sorted unique key lists with their colours, the old colour kept for a shared key;
    None when ``keys`` adds nothing."""
    n, k = len(old_keys), len(keys)
    fresh = 0
    p = 0
    for j in range(k):
        while p < n and old_keys[p] < keys[j]:
            p += 1
        if p == n or old_keys[p] != keys[j]:
            fresh += 1
    if fresh == 0:
        return None
    out_keys = np.empty(n + fresh, np.int64)
    out_colors = np.empty((n + fresh, old_colors.shape[1]), old_colors.dtype)
    i = j = m = 0
    while i < n or j < k:
        if j == k or (i < n and old_keys[i] <= keys[j]):
            if j < k and old_keys[i] == keys[j]:
                j += 1  # known voxel: keeps its colour
            out_keys[m] = old_keys[i]
            out_colors[m] = old_colors[i]
            i += 1
        else:
            out_keys[m] = keys[j]
            out_colors[m] = colors[j]
            j += 1
        m += 1
    return out_keys, out_colors


def merge_new(old_keys: np.ndarray, old_colors: np.ndarray, keys: np.ndarray, colors: np.ndarray):
    """(keys, colours) of voxel_store.SceneMap's block after adding sorted unique ``keys`` (known keys keep their
    colour), or None when all of them are known."""
    return _merge_new(old_keys, np.ascontiguousarray(old_colors), keys, np.ascontiguousarray(colors, old_colors.dtype))


# ---------------------------------------------------------------------------------------------------------
# Voxel keys of points (geometry.voxel_keys): floor in float64, then the packed fields


@_jit
def _voxel_keys(points, voxel_size, bits, offset):
    out = np.empty(len(points), np.int64)
    for i in range(len(points)):
        key = 0
        for axis in range(3):
            index = np.int64(np.floor(np.float64(points[i, axis]) / voxel_size))
            key = (key << bits) | (index + offset)
        out[i] = key
    return out


def voxel_keys(points: np.ndarray, voxel_size: float, bits: int, offset: int) -> np.ndarray:
    """Unsorted int64 keys of (N, 3) ``points``, as geometry.voxel_keys(unique=False)."""
    return _voxel_keys(np.ascontiguousarray(points), float(voxel_size), bits, offset)


# ---------------------------------------------------------------------------------------------------------
# Index bounds of voxel keys (geometry.key_bounds)


@_jit
def _key_bounds(keys, bits, field, offset):
    out = np.empty((2, 3), np.int64)
    out[0, :] = np.iinfo(np.int64).max
    out[1, :] = np.iinfo(np.int64).min
    for key in keys:
        for axis, shift in enumerate((2 * bits, bits, 0)):
            v = ((key >> shift) & field) - offset
            out[0, axis] = min(out[0, axis], v)
            out[1, axis] = max(out[1, axis], v)
    return out


def key_bounds(keys: np.ndarray, bits: int, field: int, offset: int) -> np.ndarray:
    """geometry.key_bounds in one pass over the keys."""
    return _key_bounds(np.ascontiguousarray(keys, np.int64), bits, field, offset)


@_jit
def _shared_places(a, b):
    ia = np.empty(min(len(a), len(b)), np.int64)
    ib = np.empty(len(ia), np.int64)
    i = j = m = 0
    while i < len(a) and j < len(b):
        if a[i] < b[j]:
            i += 1
        elif b[j] < a[i]:
            j += 1
        else:
            ia[m], ib[m] = i, j
            i += 1
            j += 1
            m += 1
    return ia[:m], ib[:m]


def shared_places(a: np.ndarray, b: np.ndarray):
    """(ia, ib): where the keys two sorted unique arrays share sit in each, in key order (np.intersect1d's
    indices)."""
    return _shared_places(a, b)


# ---------------------------------------------------------------------------------------------------------
# Nearest valid depth around a few pixels (changes._nearest_around, read at the projected points only)


@_jit
def _nearest_at(depth, u, v, half, far):
    h, w = depth.shape
    out = np.empty(len(u), np.float32)
    for i in range(len(u)):
        nearest = far
        for y in range(max(0, v[i] - half), min(h, v[i] + half + 1)):
            for x in range(max(0, u[i] - half), min(w, u[i] + half + 1)):
                d = depth[y, x]
                if d > 0 and d < nearest:
                    nearest = d
        out[i] = nearest
    return out


def nearest_at(depth: np.ndarray, u: np.ndarray, v: np.ndarray, window: int, far: float) -> np.ndarray:
    """At each pixel (u, v), the smallest valid (> 0) depth in the ``window`` x ``window`` square around it
    (``far`` when none), as a grey erosion of the image with invalid pixels set to ``far``, read there."""
    return _nearest_at(np.ascontiguousarray(depth, np.float32), u, v, window // 2, np.float32(far))


# ---------------------------------------------------------------------------------------------------------


_warmed = False


def warm_up() -> float:
    """Compile (or load from numba's cache) every kernel on a tiny input, so the first keyframe of a live stream
    does not wait for it; once per process. Seconds spent; 0 when the kernels are off or already warm."""
    global _warmed
    if not ENABLED or _warmed:
        return 0.0
    _warmed = True
    start = time.perf_counter()
    grid_cell_labels(np.array([1, 2], np.int64), np.array([5, 5]), 7.5)
    K = np.array([[1.0, 0, 1], [0, 1.0, 1], [0, 0, 1]])
    visibility(np.ones((1, 3), np.float32), np.eye(4), K, np.ones((2, 2), np.float32), 0.1, 6.0, 0.05)
    intersections(np.array([1, 2]), np.array([2]), np.array([2]), np.array([1]))
    merge_new(np.array([1, 3]), np.zeros((2, 3), np.uint8), np.array([2]), np.zeros((1, 3), np.uint8))
    key_bounds(np.array([1, 3]), 21, (1 << 21) - 1, 1 << 20)
    for dtype in (np.float32, np.float64):
        voxel_keys(np.zeros((1, 3), dtype), 0.02, 21, 1 << 20)
    shared_places(np.array([1, 3]), np.array([3]))
    clean_depth(np.ones((2, 2), np.float32))
    outside_boxes([np.zeros((1, 2), np.int64)], np.ones(1, bool), np.zeros((1, 4)))
    joint_bins(np.zeros((1, 1, 3), np.uint8), np.zeros((1, 256, 3), np.uint8))
    mask_coverage([np.ones((2, 2), bool)], [(0, 0, 1, 1)], [np.zeros((1, 2), np.int64)], 1, 512)
    nearest_at(np.ones((2, 2), np.float32), np.zeros(1, np.int64), np.zeros(1, np.int64), 5, 1e9)
    empty = (np.zeros(0, np.int64), np.zeros((0, 3), np.uint8), np.zeros(0, np.uint16), np.zeros(0, np.uint16))
    for centers in (None, np.zeros((0, 3), np.float32)):
        store_insert((*empty, centers), 0.02, np.array([2, 2]), np.zeros((2, 3), np.uint8), None, None, 8, 21, 1 << 20)
    return time.perf_counter() - start
