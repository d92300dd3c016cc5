"""Changed scenes: is a tracked object still where the map says (issue 11)?

A missed detection says nothing about whether an object is still there; the depth image does. Each keyframe,
the fine point centres of every track near the view that was not matched are projected once (all tracks in one
projection, at most _MAX_POINTS per track); where the observed depth is valid, a centre is

    surface   |observed - z| <= free_space_margin_m   the object's surface is still there (a detector miss)
    through   observed > z + free_space_margin_m      the camera sees behind it: the space is empty now (all
              depth in a small window around the pixel: a silhouette seen edge-on is no evidence)
    occluded  observed < z - free_space_margin_m      something stands in front: no evidence

Out of view, invalid depth and occluded centres give no evidence; neither does a keyframe where most of the
track's centres in view are occluded. A keyframe whose unoccluded centres (at least _MIN_POINTS) are mostly
seen through (>= free_space_fraction) counts as "empty"; one with under half that
share as "there". removed_after_keyframes empty keyframes (evidence-free keyframes in between do not reset the
count, a "there" keyframe or a match does) mark the track REMOVED at that keyframe's stamp. A removed track is set
aside: it is no candidate (no association, no consistency votes, no aging, so it is not terminated while its place
is seen empty, and cannot take observations at its old place) and is left out of refinement and merging; it stays
in the map as a last-known place. When a track opened after the removed one was last seen looks the same
(feature cosine >= moved_min_cos, same detector label when both have one) and lies elsewhere, the two are linked:
the old one becomes MOVED, the new one's moved_from names it. A removed place seen filled again for
removed_after_keyframes keyframes is PRESENT again, unless a track opened since that looks different covers it
(then the old track is superseded and forgotten); tracks opened there since that look the same are the object
back and are folded into the old one. At most max_removed_tracks removed / moved tracks are
kept (oldest forgotten first), so the map stays bounded by the explored volume.

The state lives on Track (presence, presence_since, moved_from, moved_to, empty_count, there_count) and is saved
with the map state; the tracker calls ChangeDetector.set_aside and .update once per keyframe."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, List, Optional, Sequence, Set

import numpy as np

from . import compiled, geometry
from .association import cosine_matrix, pairwise_iou
from .types import Presence

_MAX_POINTS = 400  # voxel centres projected per track (an even subsample of larger tracks)
_MIN_POINTS = 10  # unoccluded centres in view a keyframe needs to say anything about a track's place
_MIN_UNOCCLUDED = 0.5  # ... and at least this share of its centres in view (mostly occluded: no evidence)
_FAR = 1e9  # depth of no reading, for _nearest_around
_WINDOW_PX = 5  # seen through: the observed depth in a window this wide around the pixel all lies behind
_COVER_FRACTION = 0.3  # a present track covering this share of a removed one's voxels has taken its place


class ChangeDetector:
    def __init__(self, tracking_cfg, lift_cfg):
        self.cfg = tracking_cfg
        self.lift_cfg = lift_cfg
        self._away: Optional[Set[int]] = None  # ids of non-present tracks (rebuilt by a scan when None)

    @property
    def enabled(self) -> bool:
        return self.cfg.removed_after_keyframes > 0

    def away(self, tracks) -> Set[int]:
        """Ids of the removed and moved tracks."""
        if self._away is None:
            self._away = {tid for tid, t in tracks.items() if t.presence != Presence.PRESENT}
        self._away &= tracks.keys()
        return self._away

    # ---------------------------------------------------------------------------------------------------------
    def set_aside(self, candidate_ids: List[int], tracks) -> List[int]:
        """Take the removed / moved tracks out of ``candidate_ids`` (in place); returns them."""
        away = self.away(tracks)
        if not away:
            return []
        out = [tid for tid in candidate_ids if tid in away]
        if out:
            candidate_ids[:] = [tid for tid in candidate_ids if tid not in away]
        return out

    def update(self, tracker, frame, track_ids: Sequence[int], matched: Dict[int, int]) -> List[int]:
        """One keyframe's presence decisions for ``track_ids`` (the candidates and the set-aside tracks near the
        view) and the tracks matched in it (``matched``: track id -> mask index). Returns the ids of tracks it
        forgot (superseded, or past max_removed_tracks): the tracker has removed them, the caller forgets
        their views and labels."""
        if not self.enabled:
            return []
        tracks = tracker.tracks
        stamp = float(frame.stamp)
        for tid in matched:
            t = tracks.get(tid)
            if t is None:
                continue
            t.empty_count = 0
            if t.presence != Presence.PRESENT:  # only the oracle associates beyond the candidates
                self._set(t, Presence.PRESENT, stamp)
        ids = [tid for tid in dict.fromkeys(track_ids) if tid in tracks and tid not in matched]
        empty, there = self.evidence(frame, [tracks[tid] for tid in ids])
        forgotten: List[int] = []
        for tid, e, h in zip(ids, empty, there):
            t = tracks.get(tid)
            if t is None:  # folded into a track back at its place (_refilled) earlier in this loop
                continue
            if t.presence == Presence.PRESENT:
                t.empty_count = t.empty_count + 1 if e else (0 if h else t.empty_count)
                if t.empty_count >= self.cfg.removed_after_keyframes:
                    self._set(t, Presence.REMOVED, stamp)
                    self._link_removed(t, tracks, stamp)
            else:
                t.there_count = t.there_count + 1 if h else (0 if e else t.there_count)
                if t.there_count >= self.cfg.removed_after_keyframes:
                    forgotten += self._refilled(t, tracker, stamp)
        if self.away(tracks):
            for tid in matched:
                t = tracks.get(tid)
                if t is not None and t.moved_from is None and t.presence == Presence.PRESENT:
                    self._link_new(t, tracks, stamp)
        forgotten += self._over_cap(tracks)
        for tid in forgotten:
            if tracker.remove(tid) is not None:
                tracker.terminated_total += 1
        return forgotten

    def evidence(self, frame, tracks) -> tuple:
        """(empty (N,) bool, there (N,) bool) for each track, from one projection of their voxel centres."""
        n = len(tracks)
        if n == 0:
            return np.zeros(0, bool), np.zeros(0, bool)
        parts = []
        for t in tracks:
            c = t.store.centers()  # fine points: within half a map voxel of the surface (coarse centres are not)
            if len(c) > _MAX_POINTS:
                c = c[:: -(-len(c) // _MAX_POINTS)]
            parts.append(c)
        sizes = np.array([len(p) for p in parts])
        pts = np.concatenate(parts) if sizes.sum() else np.zeros((0, 3), np.float32)
        uv, z = geometry.project(pts, frame.T_world_cam, frame.K)
        h, w = frame.depth.shape
        inside = geometry.in_view(uv, z, (h, w), self.lift_cfg.depth_min_m, self.lift_cfg.depth_max_m)
        u = np.clip(uv[:, 0], 0, w - 1).astype(np.int64)
        v = np.clip(uv[:, 1], 0, h - 1).astype(np.int64)
        observed = frame.depth[v, u]
        valid = inside & (observed > 0)
        margin = self.cfg.free_space_margin_m
        through = valid & (_nearest_around(frame.depth, u, v) > z + margin)
        surface = valid & (np.abs(observed - z) <= margin)
        seg = np.repeat(np.arange(n), sizes)
        n_through = np.bincount(seg, weights=through, minlength=n)
        n_decided = n_through + np.bincount(seg, weights=surface, minlength=n)
        n_valid = np.bincount(seg, weights=valid, minlength=n)
        share = n_through / np.maximum(n_decided, 1)
        enough = (n_decided >= _MIN_POINTS) & (n_decided >= _MIN_UNOCCLUDED * n_valid)
        frac = self.cfg.free_space_fraction
        return enough & (share >= frac), enough & (share < frac / 2)

    # ---------------------------------------------------------------------------------------------------------
    def _set(self, t, presence: Presence, stamp: float) -> None:
        t.presence, t.presence_since = presence, stamp
        t.empty_count = t.there_count = 0
        away = self._away if self._away is not None else set()
        if presence == Presence.PRESENT:
            away.discard(t.id)
            t.moved_to = None
        else:
            away.add(t.id)

    def _link(self, old, new, stamp: float) -> None:
        old.presence, old.presence_since, old.moved_to = Presence.MOVED, stamp, new.id
        new.moved_from = old.id

    def _alike(self, t, others) -> np.ndarray:
        """For each of ``others``: could it be ``t`` seen elsewhere (appearance, label, apart)?"""
        if not others:
            return np.zeros(0)
        cos = cosine_matrix([t.feature], [o.feature for o in others])[0]
        ok = np.array(
            [
                (t.det_label is None or o.det_label is None or t.det_label == o.det_label)
                and float(geometry.box_gap(t.box_min, t.box_max, o.box_min, o.box_max)) > 0
                for o in others
            ]
        )
        return np.where(ok & (cos >= self.cfg.moved_min_cos), cos, -1.0)

    def _link_removed(self, old, tracks, stamp: float) -> None:
        """A track just marked removed: the best-matching track opened after it was last seen, if any."""
        cands = [
            t
            for t in tracks.values()
            if t.presence == Presence.PRESENT
            and t.moved_from is None
            and t.first_seen > old.last_seen
            and t.id != old.id
        ]
        score = self._alike(old, cands)
        if len(score) and score.max() >= 0:
            self._link(old, cands[int(score.argmax())], stamp)

    def _link_new(self, new, tracks, stamp: float) -> None:
        """A present, unlinked track: the best-matching removed track last seen before it was opened, if any."""
        cands = [tracks[tid] for tid in sorted(self.away(tracks))]
        cands = [
            o for o in cands if o.presence == Presence.REMOVED and o.moved_to is None and o.last_seen < new.first_seen
        ]
        score = self._alike(new, cands)
        if len(score) and score.max() >= 0:
            self._link(cands[int(score.argmax())], new, stamp)

    def _refilled(self, t, tracker, stamp: float) -> List[int]:
        """A removed place seen filled again. Newcomers there (tracks opened since it was removed, not neighbours
        that were there all along): one that covers it and looks different has taken its place (the old track
        is forgotten); ones that look the same are the object back (folded into the old track, which is present
        again). Returns the ids forgotten."""
        near = [
            tracker.tracks[u]
            for u in sorted(tracker.index.query(t.box_min, t.box_max))
            if u != t.id
            and u in tracker.tracks
            and tracker.tracks[u].presence == Presence.PRESENT
            and tracker.tracks[u].first_seen >= t.presence_since
        ]
        same = []
        if near and len(t.voxels):
            iou = pairwise_iou([t.voxels], [o.voxels for o in near])[0]
            a = float(len(t.voxels))
            b = np.array([len(o.voxels) for o in near], np.float64)
            covered = iou * (a + b) / (1.0 + iou) / a  # |A n B| / |A|
            cos = cosine_matrix([t.feature], [o.feature for o in near])[0]
            if ((covered >= _COVER_FRACTION) & (cos < self.cfg.moved_min_cos)).any():
                return [t.id]
            same = [o for o, c in zip(near, cos) if c >= self.cfg.moved_min_cos]
        self._set(t, Presence.PRESENT, stamp)
        for o in same:  # the object is back: its identity continues (and the moves it made)
            if o.moved_from is not None and o.moved_from in tracker.tracks:
                t.moved_from = o.moved_from
                tracker.tracks[o.moved_from].moved_to = t.id
            tracker.merge(t, o)
            tracker.terminated_total += 1
        return [o.id for o in same]

    def _over_cap(self, tracks) -> List[int]:
        away = self.away(tracks)
        extra = len(away) - self.cfg.max_removed_tracks
        if extra <= 0:
            return []
        return sorted(away, key=lambda tid: (tracks[tid].presence_since, tid))[:extra]

    # ---------------------------------------------------------------------------------------------------------
    @contextmanager
    def withheld(self, tracker):
        """Removed / moved tracks taken out of ``tracker`` for the duration (refinement and merging: their
        votes are frozen, and a new object at their old place must not be merged into them)."""
        ids = sorted(self.away(tracker.tracks)) if self.enabled else []
        held = {tid: tracker.tracks.pop(tid) for tid in ids}
        for tid in held:
            tracker.index.remove(tid)
        try:
            yield held
        finally:
            for tid, t in held.items():
                tracker.tracks[tid] = t
                tracker.index.insert(tid, t.box_min, t.box_max)

    def reset(self) -> None:
        self._away = None


def _nearest_around(depth: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """At each pixel (u, v), the nearest valid depth within _WINDOW_PX (invalid pixels count as far): a point
    counts as seen through only when everything around its pixel lies behind it, so the points of a surface seen
    edge-on, at an object's silhouette, are no evidence."""
    if compiled.ENABLED:  # only at the pixels asked about
        return compiled.nearest_at(depth, u, v, _WINDOW_PX, _FAR)
    import cv2

    far = np.where(depth > 0, depth, np.float32(_FAR)).astype(np.float32)
    return cv2.erode(far, np.ones((_WINDOW_PX, _WINDOW_PX), np.uint8))[v, u]
