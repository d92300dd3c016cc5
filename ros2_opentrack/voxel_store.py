"""Voxel stores at the fine resolution: a track's points with their consistency counters (PointStore) and the
scene's points in bounded blocks (SceneMap). Keys are sorted int64 voxel keys (geometry.voxel_keys)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Tuple

import numpy as np

from . import compiled, geometry


class PointStore:
    """A track's points at the fine resolution: sorted voxel keys, colours and the two vote counters."""

    def __init__(self, voxel_size: float, cap: int):
        self.voxel = float(voxel_size)
        self.cap = int(cap)
        self.keys = np.zeros(0, np.int64)
        self.colors = np.zeros((0, 3), np.uint8)
        self.visible = np.zeros(0, np.uint16)
        self.in_mask = np.zeros(0, np.uint16)
        self._centers: Optional[np.ndarray] = None
        self._bounds: Optional[np.ndarray] = None  # geometry.key_bounds of the keys array in _bounds_of
        self._bounds_of: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.colors.nbytes + self.visible.nbytes + self.in_mask.nbytes

    def centers(self) -> np.ndarray:
        if self._centers is None:
            self._centers = geometry.voxel_centers(self.keys, self.voxel)
        return self._centers

    def box(self) -> Tuple[np.ndarray, np.ndarray]:
        """(min, max) corners of the stored voxels (non-empty): centres -+ half a voxel, the values reducing
        centers() over axis 0 gives, from the keys' index bounds (numpy reduces (N, 3) over axis 0 slowly)."""
        if self._bounds_of is not self.keys:  # keys replaced other than by add_keys (prune, a loaded state)
            self._bounds, self._bounds_of = geometry.key_bounds(self.keys), self.keys
        lo, hi = ((self._bounds + 0.5) * self.voxel).astype(np.float32)  # geometry.voxel_centers of the bounds
        half = self.voxel / 2
        return lo - half, hi + half

    def add_points(self, points: np.ndarray, colors: np.ndarray) -> None:
        keys = geometry.voxel_keys(points, self.voxel, unique=False)
        self.add_keys(keys, colors)

    def add_keys(self, keys: np.ndarray, colors: np.ndarray, visible=None, in_mask=None) -> None:
        """Add voxels not yet stored (first colour wins), within the cap; counters start at 0 unless given."""
        keys, room = np.asarray(keys), max(0, self.cap - len(self.keys))
        if room == 0:
            return
        if compiled.ENABLED:  # the steps below in one pass
            old_keys = self.keys
            arrays = (self.keys, self.colors, self.visible, self.in_mask, self._centers)
            bits, offset = geometry.KEY_BITS, geometry.KEY_OFFSET
            done = compiled.store_insert(arrays, self.voxel, keys, colors, visible, in_mask, room, bits, offset)
            if done is not None:
                added, (self.keys, self.colors, self.visible, self.in_mask, self._centers) = done
                self._follow_bounds(old_keys, added)
            return
        first = _first_new(keys, self.keys, room)  # the first occurrence of each new key, in key order
        if len(first) == 0:
            return
        new_keys = keys[first]  # sorted: merge in place, O(n) instead of re-sorting the store
        vis = np.zeros(len(first), np.uint16) if visible is None else np.asarray(visible)[first]
        inm = np.zeros(len(first), np.uint16) if in_mask is None else np.asarray(in_mask)[first]
        old_keys, merge = self.keys, _SortedMerge.of_keys(self.keys, new_keys)
        if self._centers is not None:
            self._centers = merge(self._centers, geometry.voxel_centers(new_keys, self.voxel))
        self.keys = merge(self.keys, new_keys)
        self.colors = merge(self.colors, np.asarray(colors)[first])
        self.visible = merge(self.visible, vis.astype(np.uint16))
        self.in_mask = merge(self.in_mask, inm.astype(np.uint16))
        self._follow_bounds(old_keys, geometry.key_bounds(new_keys))

    def _follow_bounds(self, old_keys: np.ndarray, added: np.ndarray) -> None:
        """An insert replaced ``old_keys`` by self.keys, adding keys whose bounds are ``added``: the cached bounds
        grow by them, without a pass over the whole store (box() recomputes them when they were not cached)."""
        if len(old_keys) and self._bounds_of is not old_keys:
            return
        if len(old_keys):
            added = np.stack([np.minimum(self._bounds[0], added[0]), np.maximum(self._bounds[1], added[1])])
        self._bounds, self._bounds_of = added, self.keys

    def vote(self, visible: np.ndarray, in_mask: np.ndarray) -> None:
        """One keyframe's votes: ``visible`` and ``in_mask`` are bool per stored voxel (in_mask implies visible)."""
        self.visible = np.minimum(self.visible.astype(np.int32) + visible, 65535).astype(np.uint16)
        self.in_mask = np.minimum(self.in_mask.astype(np.int32) + (in_mask & visible), 65535).astype(np.uint16)

    def kept(self, tau_vis: float, min_visible: int) -> np.ndarray:
        """Consistent voxels: voted on (visible >= min_visible) and in-mask ratio >= tau_vis; voxels not yet
        voted on are kept when they were ever inside the mask (pure expansion candidates are not)."""
        voted = self.visible >= max(1, min_visible)
        ratio_ok = self.in_mask >= tau_vis * self.visible.astype(np.float32)
        return np.where(voted, ratio_ok, self.in_mask > 0)

    def prune(self, keep: np.ndarray) -> None:
        """Keep the voxels where ``keep`` (bool per stored voxel)."""
        self.keys, self.colors = self.keys[keep], np.compress(keep, self.colors, axis=0)  # (N, 3): compress is faster
        self.visible, self.in_mask = self.visible[keep], self.in_mask[keep]
        if self._centers is not None:  # cheaper kept in step than recomputed from the keys
            self._centers = np.compress(keep, self._centers, axis=0)

    def merge(self, other: "PointStore") -> None:
        """Union with another store; counters of shared voxels add up."""
        shared = isin_sorted(other.keys, self.keys)
        pos = np.searchsorted(self.keys, other.keys[shared])
        self.visible[pos] = np.minimum(self.visible[pos].astype(np.int32) + other.visible[shared], 65535)
        self.in_mask[pos] = np.minimum(self.in_mask[pos].astype(np.int32) + other.in_mask[shared], 65535)
        rest = ~shared
        self.add_keys(other.keys[rest], other.colors[rest], other.visible[rest], other.in_mask[rest])


def _first_new(keys: np.ndarray, stored: np.ndarray, room: int) -> np.ndarray:
    """Indices of the first occurrence of each of ``keys`` not in the sorted ``stored``, in key order, at most
    ``room``."""
    fresh = np.flatnonzero(~isin_sorted(keys, stored))  # most keys are known: sort only the others
    _, first = np.unique(keys[fresh], return_index=True)
    return fresh[first[:room]]  # the first occurrence of each new key, as np.unique over all keys gives


class _SortedMerge:
    """np.insert(old, at, new) for several arrays with the same ``at`` (sorted): the slots are computed once."""

    def __init__(self, old_slots: np.ndarray, new_slots: np.ndarray):
        self.old_slots, self.new_slots = old_slots, new_slots

    @classmethod
    def at(cls, at: np.ndarray, n_old: int) -> "_SortedMerge":
        """New items inserted before the old ones at ``at`` (np.insert's places)."""
        new_slots = at + np.arange(len(at))
        is_new = np.zeros(n_old + len(at), bool)
        is_new[new_slots] = True
        return cls(np.flatnonzero(~is_new), new_slots)

    @classmethod
    def of_keys(cls, stored: np.ndarray, new_keys: np.ndarray) -> "_SortedMerge":
        """The merge of sorted ``new_keys`` (none of them stored) into the sorted ``stored``."""
        return cls.at(np.searchsorted(stored, new_keys), len(stored))

    def __call__(self, old: np.ndarray, new: np.ndarray) -> np.ndarray:
        out = np.empty((len(self.old_slots) + len(self.new_slots),) + old.shape[1:], old.dtype)
        dst = out
        if old.ndim == 2 and len(old) >= 1024:  # big (N, 3) arrays: scatter whole rows (2x faster)
            dst, old, new = _rows(out), _rows(old), _rows(np.asarray(new, old.dtype))
        dst[self.old_slots] = old
        dst[self.new_slots] = new
        return out


def _rows(a: np.ndarray) -> np.ndarray:
    """A C-contiguous (N, k) array as N opaque k-item rows (a view of the same memory)."""
    a = np.ascontiguousarray(a)
    return a.view(np.dtype((np.void, a.dtype.itemsize * a.shape[1]))).reshape(len(a))


def _block_key(i: int, j: int, k: int) -> int:
    """geometry.pack_keys of one block index, in Python ints (a numpy call per block costs more)."""
    half, bits = 1 << 20, 21
    return ((int(i) + half) << (2 * bits)) | ((int(j) + half) << bits) | (int(k) + half)


def _x_key_range(x_first: int, x_last: int) -> np.ndarray:
    """[first key with x >= x_first, first key with x > x_last): the keys of voxels with x in the range."""
    low = -(1 << 20)  # the lowest index a key field holds (geometry.pack_keys)
    return geometry.pack_keys(np.array([[x_first, low, low], [x_last + 1, low, low]]))


def shared_places(a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(ia, ib): the places in sorted unique ``a`` and ``b`` of the keys they share, in key order."""
    if compiled.ENABLED:  # one merge walk
        return compiled.shared_places(a, b)
    _, ia, ib = np.intersect1d(a, b, assume_unique=True, return_indices=True)
    return ia, ib


def isin_sorted(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """np.isin for a sorted ``sorted_keys``, by binary search."""
    if len(sorted_keys) == 0:
        return np.zeros(len(values), bool)
    pos = np.minimum(np.searchsorted(sorted_keys, values), len(sorted_keys) - 1)
    return sorted_keys[pos] == values


class SceneMap:
    """The scene's points at the fine resolution in blocks of 32^3 voxels, for expansion (paper tau_exp).
    Bounded: past ``max_points`` the least recently updated blocks are dropped."""

    BLOCK_SHIFT = 5

    def __init__(self, voxel_size: float, max_points: int):
        self.voxel = float(voxel_size)
        self.max_points = int(max_points)
        self.blocks: "OrderedDict[int, Tuple[np.ndarray, np.ndarray]]" = OrderedDict()
        self.n_points = 0

    def _block_of(self, keys: np.ndarray) -> np.ndarray:
        return geometry.pack_keys(geometry.unpack_keys(keys) >> self.BLOCK_SHIFT)

    def add(self, points: np.ndarray, colors: np.ndarray) -> None:
        if len(points) == 0:
            return
        keys, first = np.unique(geometry.voxel_keys(points, self.voxel, unique=False), return_index=True)
        colors = colors[first]
        blocks = self._block_of(keys)
        order = np.argsort(blocks, kind="stable")
        blocks, keys, colors = blocks[order], keys[order], colors[order]
        starts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]])
        ends = np.r_[starts[1:], len(blocks)]
        for s, e in zip(starts, ends):
            self._merge_block(int(blocks[s]), keys[s:e], colors[s:e])
        while self.n_points > self.max_points and self.blocks:
            _, (old_keys, _) = self.blocks.popitem(last=False)
            self.n_points -= len(old_keys)

    def _merge_block(self, block: int, keys: np.ndarray, colors: np.ndarray) -> None:
        """Add a block's new voxels (``keys`` sorted and unique; known voxels keep their colour); the block
        becomes the most recently updated."""
        old = self.blocks.pop(block, None)
        if old is None:
            self.blocks[block] = (keys, colors)
            self.n_points += len(keys)
            return
        if compiled.ENABLED:  # one merge walk
            merged = compiled.merge_new(old[0], old[1], keys, colors)
            self.blocks[block] = old if merged is None else merged
            self.n_points += len(self.blocks[block][0]) - len(old[0])
            return
        pos = np.searchsorted(old[0], keys)
        new = np.flatnonzero(old[0][np.minimum(pos, len(old[0]) - 1)] != keys)  # isin_sorted, keeping the places
        if len(new) == 0:
            self.blocks[block] = old
            return
        merge = _SortedMerge.at(pos[new], len(old[0]))  # sorted insertion: no re-sort of the block
        self.blocks[block] = (merge(old[0], keys[new]), merge(old[1], colors[new]))
        self.n_points += len(new)

    def in_box(self, bmin, bmax, x_within=None) -> Tuple[np.ndarray, np.ndarray]:
        """Keys and colours of the map voxels in the blocks overlapping the box; with ``x_within`` (lowest and
        highest voxel index along x, inclusive) only those of them in that x range, in the same order."""
        lo = np.floor(np.asarray(bmin) / self.voxel).astype(np.int64) >> self.BLOCK_SHIFT
        hi = np.floor(np.asarray(bmax) / self.voxel).astype(np.int64) >> self.BLOCK_SHIFT
        x_keys = None if x_within is None else _x_key_range(*x_within)
        keys, colors = [], []
        for i in range(lo[0], hi[0] + 1):
            for j in range(lo[1], hi[1] + 1):
                for k in range(lo[2], hi[2] + 1):
                    b = self.blocks.get(_block_key(i, j, k))
                    if b is not None:
                        if x_keys is not None:  # x is the keys' top field: an x range is a slice of sorted keys
                            start, stop = np.searchsorted(b[0], x_keys)
                            b = (b[0][start:stop], b[1][start:stop])
                        keys.append(b[0])
                        colors.append(b[1])
        if not keys:
            return np.zeros(0, np.int64), np.zeros((0, 3), np.uint8)
        return np.concatenate(keys), np.concatenate(colors)

    def points(self) -> Tuple[np.ndarray, np.ndarray]:
        """(N, 3) float32 voxel centres and (N, 3) uint8 colours of every stored scene point."""
        if not self.blocks:
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
        keys = np.concatenate([b[0] for b in self.blocks.values()])
        colors = np.concatenate([b[1] for b in self.blocks.values()])
        return geometry.voxel_centers(keys, self.voxel), colors

    def clear(self) -> None:
        self.blocks.clear()
        self.n_points = 0
