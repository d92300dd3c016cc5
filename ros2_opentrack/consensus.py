"""View consensus between neighbouring tracks: are two tracks one object seen in pieces, or two objects?

A big object seen close up (a door at 0.4 m), or an object a segmenter sometimes splits (seat and back), opens
several tracks whose voxels barely overlap, so IoU merging never joins them. A mask over two neighbours (a
box spanning both) looks the same from one keyframe. What tells them apart is the majority of the views that
see both tracks:

  joint   one mask covers most of the visible points of both tracks: the segmenter saw a and b as one object;
  apart   the mask that continued track a covers a and leaves b, in view, out: it saw two objects. Only a
          track's own mask counts here: the table's mask may cover the cup on it every time, but the cup's own
          masks leave the table out. A keyframe that opened a or b counts only with
          refine.consensus_birth_apart (box_depth's nested boxes need that vote: config/cpu.yaml): the new
          track is its mask, and an object's second part mask opens one beside the first's. Without it, such
          a view is kept as split evidence (``born``): a later mask over both is split between them
          (association.spanned_neighbours), but it is no vote against merging.

Two touching tracks are one object when at least refine.consensus_min_joint views saw them joint and joint views
outnumber apart views refine.consensus_ratio to one (refine.merge_duplicates then joins them). One more count,
``both_masked`` (keyframes in which each took a mask of its own), weighs the weakest merge, one joint view and none
apart (refine.consensus_once_max_both_masked): two objects in view together take two masks again and again, even
when one track holds a few of the other's voxels and no view counts apart cleanly; an object's halves seldom do.
Merged masks are a minority of a pair's views, so two neighbours stay apart; the pieces of one object are
covered together whenever the camera sees more of it. Counts are kept only for touching tracks (and for a track
and the one it opened beside, Track.born_beside), and forgotten with their tracks, so the memory follows the map,
not the run length."""

from __future__ import annotations

from typing import Dict, Iterable, Mapping, Sequence, Tuple

import numpy as np

from . import compiled, geometry

Pair = Tuple[int, int]  # (smaller id, larger id)


def _pair(a: int, b: int) -> Pair:
    return (a, b) if a < b else (b, a)


class MaskSet:
    """One keyframe's HxW bool masks, with the tight pixel box of each found once, on first use: two stages of a
    keyframe ask mask_coverage about the same masks."""

    def __init__(self, masks):
        self.masks = masks
        self._boxes: Dict[int, Tuple[int, int, int, int]] = {}

    @classmethod
    def of(cls, masks) -> "MaskSet":
        return masks if isinstance(masks, MaskSet) else cls(masks)

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.masks[i]

    def box(self, i: int) -> Tuple[int, int, int, int]:
        if i not in self._boxes:
            self._boxes[i] = _box(self.masks[i])
        return self._boxes[i]

    def coverage(self, indices: Sequence[int], pixel_sets: Sequence[np.ndarray], min_points: int) -> np.ndarray:
        """mask_coverage of the masks at ``indices``."""
        return mask_coverage(
            [self.masks[i] for i in indices], pixel_sets, min_points, boxes=[self.box(i) for i in indices]
        )


def mask_coverage(
    masks: Sequence[np.ndarray], pixel_sets: Sequence[np.ndarray], min_points: int, max_points: int = 512, boxes=None
) -> np.ndarray:
    """(masks, tracks) share of each track's visible points (their (x, y) pixels in ``pixel_sets``) inside each
    mask; NaN columns for tracks with fewer than ``min_points`` visible. In the image, not in voxels: a thin
    object on a table shares the table's coarse voxels, never its pixels. A share is estimated from at most
    ``max_points`` evenly strided points per track (+-2% at 512: the thresholds are 0.2 and 0.7). ``boxes``: the
    masks' tight boxes when the caller has them (MaskSet)."""
    if compiled.ENABLED and len(masks):  # one kernel call per mask
        return compiled.mask_coverage(
            masks, [_box(m) for m in masks] if boxes is None else boxes, pixel_sets, min_points, max_points
        )
    cover = np.full((len(masks), len(pixel_sets)), np.nan)
    if not len(masks):
        return cover
    boxes = np.array([_box(m) for m in masks] if boxes is None else boxes)  # x0, y0, x1, y1 (inclusive)
    for k, px in enumerate(pixel_sets):
        if len(px) < min_points:
            continue
        px = px[:: max(1, -(-len(px) // max_points))]
        cover[:, k] = 0.0
        lo, hi = px.min(axis=0), px.max(axis=0)
        near = (boxes[:, 0] <= hi[0]) & (boxes[:, 2] >= lo[0]) & (boxes[:, 1] <= hi[1]) & (boxes[:, 3] >= lo[1])
        for i in np.flatnonzero(near):
            cover[i, k] = float(masks[i][px[:, 1], px[:, 0]].mean())
    return cover


def _box(mask: np.ndarray) -> Tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(rows):
        return (1, 1, 0, 0)
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))  # only the rows that hold the mask
    return (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))


class Consensus:
    def __init__(self, span: float, separate: float, min_seen_voxels: int, touch_gap_m: float):
        self.span = span  # an observation covering this share of a track's visible voxels spans it
        self.separate = separate  # ... and at most this share leaves it out
        self.min_seen_voxels = min_seen_voxels
        self.touch_gap_m = touch_gap_m
        self.joint: Dict[Pair, int] = {}
        self.apart: Dict[Pair, int] = {}
        self.born: Dict[Pair, int] = {}  # views apart in a keyframe that opened one of the two (split evidence)
        self.both: Dict[Pair, int] = {}  # keyframes in which each of the two took a mask of its own
        self._of: Dict[int, set] = {}  # track id -> the pairs it is in (forget / fold without a scan)

    def observe(
        self,
        cover: np.ndarray,
        owners: Sequence,
        track_ids: Sequence[int],
        tracks: Mapping,
        born: Iterable = (),
        linked: Iterable[Pair] = (),
    ) -> None:
        """Count one keyframe. ``cover[i, k]``: the share of track k's visible points inside mask i (mask_coverage;
        a NaN column: too few visible to tell); ``owners[i]``: the track mask i continued or opened (None: none).
        Any mask spanning both counts joint; only a track's own mask counts apart (see the module docstring).
        ``born``: the tracks that masks opened this keyframe; a view apart of a pair with one of them goes to
        ``born`` (split_evidence), not ``apart``: the new track is its mask, so either side leaving the other out
        is trivially true. Two tracks whose masks are both among this keyframe's owners count ``both_masked``.
        ``linked``: pairs counted whether or not they touch (a track and the out-of-view track it opened beside,
        Track.born_beside: the far half of a table need not touch the near half's track)."""
        shown = np.flatnonzero(~np.isnan(cover[0])) if cover.size else np.zeros(0, np.int64)
        if len(shown) < 2:
            return
        ids = [track_ids[k] for k in shown]
        column = {tid: c for c, tid in enumerate(ids)}
        cover = cover[:, shown]
        spans = (cover >= self.span).astype(np.int32)
        joint = (spans.T @ spans) > 0  # some mask spans both
        rows = [i for i, tid in enumerate(owners) if tid in column and spans[i, column[tid]]]
        apart = np.zeros((len(ids), len(ids)), bool)
        if rows:  # [a, b]: a's own mask spans a and leaves b out
            np.logical_or.at(apart, np.array([column[owners[i]] for i in rows]), cover[rows] <= self.separate)
        apart |= apart.T
        new = np.isin(ids, list(born))
        fresh = new[:, None] | new[None, :]  # either track opened here: its mask is the line between them
        bmin = np.array([tracks[t].box_min for t in ids])
        bmax = np.array([tracks[t].box_max for t in ids])
        touching = geometry.box_gap(bmin[:, None], bmax[:, None], bmin[None], bmax[None]) <= self.touch_gap_m
        for a, b in linked:
            if a in column and b in column:
                touching[column[a], column[b]] = touching[column[b], column[a]] = True
        masked = np.isin(ids, [tid for tid in owners if tid is not None])
        both = masked[:, None] & masked[None, :]
        counted = ((self.joint, joint), (self.apart, apart & ~fresh), (self.born, apart & fresh), (self.both, both))
        for table, hit in counted:
            for x, y in zip(*np.nonzero(np.triu(hit & touching, 1))):
                self._count(table, ids[x], ids[y])

    def _count(self, table: Dict[Pair, int], a: int, b: int) -> None:
        p = _pair(a, b)
        table[p] = table.get(p, 0) + 1
        self._of.setdefault(a, set()).add(p)
        self._of.setdefault(b, set()).add(p)

    def same_object(self, a: int, b: int, min_joint: int, ratio: float) -> bool:
        """At least ``min_joint`` views saw a and b as one, and ``ratio`` times as many as saw them apart."""
        p = _pair(a, b)
        joint = self.joint.get(p, 0)
        return joint >= min_joint and joint >= ratio * self.apart.get(p, 0)

    def counts(self, a: int, b: int) -> Tuple[int, int]:
        p = _pair(a, b)
        return self.joint.get(p, 0), self.apart.get(p, 0)

    def split_evidence(self, a: int, b: int) -> int:
        """Views apart, counting those of a mask that opened its track: were a and b ever segmented apart? A
        mask over both is then split between them (association.spanned_neighbours) though merging, which
        needs more than a birth (the second part mask of an object opens a track beside the first's), waits."""
        p = _pair(a, b)
        return self.apart.get(p, 0) + self.born.get(p, 0)

    def both_masked(self, a: int, b: int) -> int:
        """Keyframes in which a and b, both in view, each took a mask of its own (continued or opened)."""
        return self.both.get(_pair(a, b), 0)

    def fold(self, keep: int, drop: int) -> None:
        """``drop`` was merged into ``keep``: its counts with third tracks add to keep's."""
        for p in list(self._of.get(drop, ())):
            other = p[0] if p[1] == drop else p[1]
            for table in self._tables():
                n = table.pop(p, 0)
                if n and other != keep:
                    table[_pair(keep, other)] = table.get(_pair(keep, other), 0) + n
                    self._of.setdefault(keep, set()).add(_pair(keep, other))
                    self._of.setdefault(other, set()).add(_pair(keep, other))
            self._of.get(other, set()).discard(p)
        self._of.pop(drop, None)
        self._of.get(keep, set()).discard(_pair(keep, drop))

    def forget(self, track_ids: Iterable[int]) -> None:
        for tid in track_ids:
            for p in self._of.pop(tid, ()):
                for table in self._tables():
                    table.pop(p, None)
                other = p[0] if p[1] == tid else p[1]
                self._of.get(other, set()).discard(p)

    def _tables(self) -> Tuple[Dict[Pair, int], ...]:
        return (self.joint, self.apart, self.born, self.both)  # the column order of to_arrays

    def to_arrays(self) -> Tuple[np.ndarray, np.ndarray]:
        """(K, 2) pairs and their (K, 4) joint / apart / born-apart / both-masked counts (the map state)."""
        tables = self._tables()
        pairs = sorted(set().union(*tables))
        counts = [tuple(table.get(p, 0) for table in tables) for p in pairs]
        return np.array(pairs, np.int64).reshape(-1, 2), np.array(counts, np.int64).reshape(-1, len(tables))

    def restore(self, pairs: np.ndarray, counts: np.ndarray, track_ids) -> None:
        """Counts saved by to_arrays (K x 4; K x 3 or K x 2 from states saved before both-masked or born-apart
        counts: those start at 0); pairs naming a track not in ``track_ids`` are dropped."""
        self.clear()
        known = set(int(t) for t in track_ids)
        pairs = np.asarray(pairs).reshape(-1, 2)
        if not len(pairs):
            return
        counts = np.asarray(counts).reshape(len(pairs), -1)
        for (a, b), row in zip(pairs, counts):
            a, b = int(a), int(b)
            if a in known and b in known and a != b:
                for table, n in zip(self._tables(), row):
                    if n > 0:
                        table[_pair(a, b)] = int(n)
                self._of.setdefault(a, set()).add(_pair(a, b))
                self._of.setdefault(b, set()).add(_pair(a, b))

    def clear(self) -> None:
        for table in self._tables():
            table.clear()
        self._of.clear()

    def __len__(self) -> int:
        return len(set().union(*self._tables()))
