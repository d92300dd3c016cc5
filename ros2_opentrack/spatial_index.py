"""Hash grid of axis-aligned boxes: which tracks lie near a region, in time independent of the map size."""

from __future__ import annotations

from typing import Dict, Set, Tuple

import numpy as np


class SpatialIndex:
    def __init__(self, cell_m: float = 1.0):
        self.cell = float(cell_m)
        self._cells: Dict[Tuple[int, int, int], Set[int]] = {}
        self._boxes: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._boxes)

    def _range(self, bmin, bmax):
        lo = np.floor(np.asarray(bmin) / self.cell).astype(int)
        hi = np.floor(np.asarray(bmax) / self.cell).astype(int)
        return lo, hi

    def _cells_of(self, bmin, bmax):
        lo, hi = self._range(bmin, bmax)
        for i in range(lo[0], hi[0] + 1):
            for j in range(lo[1], hi[1] + 1):
                for k in range(lo[2], hi[2] + 1):
                    yield (i, j, k)

    def insert(self, item: int, bmin, bmax) -> None:
        """Insert or move ``item`` to the box [bmin, bmax]."""
        if item in self._boxes:
            old = self._boxes[item]
            if np.array_equal(self._range(*old)[0], self._range(bmin, bmax)[0]) and np.array_equal(
                self._range(*old)[1], self._range(bmin, bmax)[1]
            ):
                self._boxes[item] = (np.asarray(bmin, float), np.asarray(bmax, float))
                return
            self.remove(item)
        self._boxes[item] = (np.asarray(bmin, float), np.asarray(bmax, float))
        for c in self._cells_of(bmin, bmax):
            self._cells.setdefault(c, set()).add(item)

    def remove(self, item: int) -> None:
        box = self._boxes.pop(item, None)
        if box is None:
            return
        for c in self._cells_of(*box):
            bucket = self._cells.get(c)
            if bucket is not None:
                bucket.discard(item)
                if not bucket:
                    del self._cells[c]

    def query(self, bmin, bmax) -> Set[int]:
        """Items whose cells overlap the cells of [bmin, bmax] (a superset of the overlapping boxes)."""
        lo, hi = self._range(bmin, bmax)
        n_query = int(np.prod(hi - lo + 1))
        out: Set[int] = set()
        if n_query > len(self._cells):  # a huge query box: scan the occupied cells instead
            for c, bucket in self._cells.items():
                if all(lo[a] <= c[a] <= hi[a] for a in range(3)):
                    out |= bucket
            return out
        for c in self._cells_of(bmin, bmax):
            bucket = self._cells.get(c)
            if bucket:
                out |= bucket
        return out

    def clear(self) -> None:
        self._cells.clear()
        self._boxes.clear()
