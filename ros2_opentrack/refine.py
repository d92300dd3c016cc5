"""Consistency refinement (paper eq. 2, streaming) and NMS-style duplicate merging (paper 3.2.3).

Paper eq. 2 votes, for each point of a track, over every frame that sees it: is it inside the track's mask?
Streaming, each track keeps per fine voxel two counters (keyframes it was visible in, keyframes it fell in the
track's mask; voxel_store.PointStore) updated at every keyframe where the track is a candidate; no frame is
stored. Refinement grows a track into the scene map near its confirmed voxels (tau_exp), then drops the
voxels whose in-mask ratio stays under tau_vis. Merging joins duplicates, longer track first."""

from __future__ import annotations

from typing import Dict, List

import numpy as np

from . import geometry
from .association import cosine_matrix, named_apart, pairwise_iou
from .types import TrackState
from .voxel_store import PointStore, SceneMap, isin_sorted, shared_places


def refine_track(track, scene: SceneMap, refine_cfg, voxel_size: float, max_voxels: int) -> None:
    """Expansion from the scene map, then the consistency vote prunes the track; its coarse voxels and box
    follow its consistent points."""
    rc = refine_cfg
    if rc.tau_exp > 0:
        expand(track.store, scene, rc.tau_exp)
    keep = track.store.kept(rc.tau_vis, rc.min_visible)
    if keep.any() and not keep.all():
        decided = track.store.visible >= max(1, rc.min_visible)
        track.store.prune(keep | ~decided)  # undecided expansion candidates wait for their votes
    follow_consistent(track, rc, voxel_size, max_voxels)


def follow_consistent(track, refine_cfg, voxel_size: float, max_voxels: int) -> None:
    """The track's coarse voxels follow its consistent fine points, and its box its fine points."""
    keep = track.store.kept(refine_cfg.tau_vis, refine_cfg.min_visible)
    if keep.any():  # np.compress: a third of the time of a boolean index on (N, 3)
        track.voxels = geometry.voxel_keys(np.compress(keep, track.store.centers(), axis=0), voxel_size)[:max_voxels]
    track.update_box()


def expand(store: PointStore, scene: SceneMap, radius_m: float, max_box_voxels: int = 2_000_000) -> int:
    """Add the scene voxels within ``radius_m`` of the store's in-mask voxels (paper's P'_k) as unvoted
    candidates. Returns how many were added."""
    if radius_m <= 0 or len(store) == 0 or scene.n_points == 0:
        return 0
    seed = store.in_mask > 0  # grow from voxels the masks confirmed, never from unvoted candidates: else
    if not seed.any():  # each refinement would creep one more radius into the surroundings (unbounded)
        return 0
    seed_keys = store.keys[seed]
    bounds = geometry.key_bounds(seed_keys)
    lo, hi = geometry.voxel_centers(geometry.pack_keys(bounds), store.voxel)  # the seeds' centres' box
    bmin, bmax = lo - radius_m, hi + radius_m
    if np.prod((bmax - bmin) / store.voxel) > max_box_voxels:  # huge tracks (walls): skip
        return 0
    r = max(1, int(round(radius_m / store.voxel)))
    keys, colors = scene.in_box(bmin, bmax, x_within=(bounds[0, 0] - r, bounds[1, 0] + r))  # farther: never near
    cand = np.flatnonzero(~isin_sorted(keys, store.keys))  # indices: (M, 3) colours are only gathered once
    if len(cand) == 0:
        return 0
    near = cand[_within_voxels(keys[cand], seed_keys, r)]
    before = len(store)
    store.add_keys(keys[near], colors[near])
    return len(store) - before


def merge_duplicates(tracker, only_dirty: bool = True, final: bool = False) -> Dict[int, int]:
    """NMS by voxel IoU >= tau_merge (or containment, see contained_duplicates), longest track first; the
    shorter is merged into the longer and removed from ``tracker``. Returns removed id -> kept id. ``final``: the
    end of a run (Pipeline.finalize): no later view will come, so a match association.beside() deferred is settled
    (_beside_unrefuted)."""
    rc = tracker.refine_cfg
    merged: Dict[int, int] = {}
    pad = tracker.consensus.touch_gap_m  # consensus pairs touch: their boxes need not overlap
    links = _beside_links(tracker)
    for tid in merge_order({t.id: t.observations for t in tracker.tracks.values()}):
        t = tracker.tracks.get(tid)
        if t is None or (only_dirty and not t.dirty):
            continue
        others = _touching(tracker, t, pad)
        near = {o.id for o in others}
        others += [tracker.tracks[u] for u in links.get(t.id, ()) if u not in near and u in tracker.tracks]
        if not others:
            continue
        iou = pairwise_iou([t.voxels], [o.voxels for o in others])[0]
        contained = contained_duplicates(t, others, iou, rc)
        for other, v, c in zip(others, iou, contained):
            if other.id not in tracker.tracks:  # merged away by an earlier pair of this loop
                continue
            one = rc.consensus_min_joint > 0 and tracker.consensus.same_object(
                t.id, other.id, rc.consensus_min_joint, rc.consensus_ratio
            )
            one = one or _seen_once_as_one(tracker.consensus, t, other, rc)
            one = one or _handed_over(tracker, t, other)
            one = one or _beside_unrefuted(tracker, t, other, final)
            if v >= rc.tau_merge or c or one:
                keep, drop = (t, other) if (t.observations, -t.id) >= (other.observations, -other.id) else (other, t)
                tracker.merge(keep, drop)
                merged[drop.id] = keep.id
                if drop is t:
                    break
    for removed, kept in list(merged.items()):  # chains a -> b -> c report the final survivor
        while kept in merged:
            kept = merged[kept]
        merged[removed] = kept
    return merged


def fragment_adopters(tracker) -> Dict[int, int]:
    """Fragment track id -> the track that reports its points at the end of a run (Pipeline.finalize). A track
    seen fewer than refine.min_observations times is never reported, and its points would be lost. Often it is
    a piece of the object beside it: a view of a part its track had not seen (no voxel shared), whose appearance
    fell short of tau_match. It goes to the reported track its opening observation nearly continued
    (Track.born_near, refine.adopt_near_miss: the association's gates admitted that pair, and on a cabinet front a
    door's far end looks more like the cabinet than like the door's first end), else to the touching reported
    track it looks most like; either way only with cosine >= refine.adopt_fragments_cos, unless a view held the
    two apart or a detector named them differently. Nothing changes in the tracks, so a map state saved after the
    run resumes as if the run had gone on."""
    rc = tracker.refine_cfg
    if rc.adopt_fragments_cos <= 0:
        return {}
    pad = tracker.consensus.touch_gap_m
    adopters: Dict[int, int] = {}
    for t in tracker.tracks.values():
        if t.observations >= rc.min_observations or not len(t.feature):
            continue
        near = [
            o for o in _touching(tracker, t, pad) if geometry.box_gap(t.box_min, t.box_max, o.box_min, o.box_max) <= pad
        ]
        nearly = tracker.tracks.get(t.born_near)
        if nearly is not None and nearly.id != t.id and all(o.id != nearly.id for o in near):
            near.append(nearly)  # need not touch: the association's spatial gate admitted it
        near = [
            o
            for o in near
            if o.observations >= rc.min_observations
            and len(o.feature) == len(t.feature)
            and not named_apart(t.det_label, o.det_label)
            and tracker.consensus.counts(t.id, o.id)[1] == 0
        ]
        if near:
            cos = cosine_matrix([t.feature], [o.feature for o in near])[0]
            nearly_at = [k for k, o in enumerate(near) if o.id == t.born_near and cos[k] >= rc.adopt_fragments_cos]
            best = nearly_at[0] if nearly_at else int(np.argmax(cos))
            if cos[best] >= rc.adopt_fragments_cos:
                adopters[t.id] = near[best].id
    return adopters


def _touching(tracker, t, pad: float) -> List:
    """The other tracks whose boxes the index finds within ``pad`` of t's (candidates: callers check the gap)."""
    return [
        tracker.tracks[u]
        for u in tracker.index.query(t.box_min - pad, t.box_max + pad)
        if u != t.id and u in tracker.tracks
    ]


def _seen_once_as_one(consensus, a, b, refine_cfg) -> bool:
    """One view saw a and b in one mask and none apart, and they look alike: the two sides or halves of one
    object (a wall panned along, a chair from front and back) are seldom in view together, so a single joint view
    is all the evidence they get; two neighbours in view together are held apart by their own masks. That holds
    only while few keyframes gave each a mask of its own (consensus_once_max_both_masked): a track that took a
    look-alike neighbour's observation once covers part of it, so the neighbour's own masks never count apart
    cleanly, but they come again and again. Tracks a detector named differently stay apart (an oven beside a
    fridge, in one box once)."""
    rc = refine_cfg
    if rc.consensus_once_cos <= 0 or named_apart(a.det_label, b.det_label):
        return False
    joint, apart = consensus.counts(a.id, b.id)
    if joint < 1 or apart > 0 or consensus.both_masked(a.id, b.id) > rc.consensus_once_max_both_masked:
        return False
    return cosine_matrix([a.feature], [b.feature])[0, 0] >= rc.consensus_once_cos


def _beside_links(tracker) -> Dict[int, List[int]]:
    """Track id -> the tracks linked to it by Track.born_beside, both ways (merge candidates that need not touch)."""
    links: Dict[int, List[int]] = {}
    for t in tracker.tracks.values():
        if t.born_beside:
            links.setdefault(t.id, []).append(t.born_beside)
            links.setdefault(t.born_beside, []).append(t.id)
    return links


def _lives_overlap(a, b) -> int:
    """Keyframes in which both tracks were alive (first to last observed); <= 0 when one began after the other."""
    return min(a.last_keyframe, b.last_keyframe) - max(a.first_keyframe, b.first_keyframe) + 1


def _shown_apart(consensus, a, b) -> bool:
    """Some keyframe held a and b apart or gave each a mask of its own (consensus.py)."""
    return consensus.counts(a.id, b.id)[1] > 0 or consensus.both_masked(a.id, b.id) > 0


def _handed_over(tracker, a, b) -> bool:
    """b took over where a left off (or a where b did): one object scanned along (a long table, a wall), whose
    track lost it when the view moved on to a part it had not seen, and a new track opened beside it. Their lives
    barely overlap (<= refine.handover_max_overlap keyframes), no keyframe gave each a mask of its own and none
    held them apart, their voxels touch and they look alike. Neighbours are in view together: they take masks of
    their own, side by side, for as long as the camera sees them (a door in a wall, a chair at a table). Small
    tracks (a part mask, a sliver) and tracks seen once (a neighbour's first mask, beside a track that had
    swallowed part of it) need more than this; named apart stays apart."""
    rc, consensus = tracker.refine_cfg, tracker.consensus
    if rc.handover_cos <= 0 or min(a.first_keyframe, b.first_keyframe) < 0 or named_apart(a.det_label, b.det_label):
        return False
    if _lives_overlap(a, b) > rc.handover_max_overlap or min(len(a.voxels), len(b.voxels)) < rc.handover_min_voxels:
        return False
    if min(a.observations, b.observations) < rc.handover_min_observations or _shown_apart(consensus, a, b):
        return False
    if cosine_matrix([a.feature], [b.feature])[0, 0] < rc.handover_cos:  # 0 for missing or mismatched descriptors
        return False
    return bool(geometry.keys_near(a.voxels, b.voxels, 1).any())


def _beside_unrefuted(tracker, a, b, final: bool) -> bool:
    """At the end of a run: b was opened beside a while a was out of view (Track.born_beside, or a beside b): eq. 1
    matched b's first mask to a by appearance, and association.beside() held that back, since one view cannot tell
    the next stretch of an object from a look-alike beside it. No view since showed them as one (view consensus
    would have merged them) nor apart (a mask each in one keyframe, or one's mask leaving the other out), their
    lives barely overlap (refine.handover_max_overlap) and they still look alike (refine.consensus_once_cos): the
    match stands. Only at the end: a loop brings the camera back to a neighbour long after it left, and then the
    neighbour takes a mask of its own. Named apart stays apart."""
    if not final or not (a.born_beside == b.id or b.born_beside == a.id) or named_apart(a.det_label, b.det_label):
        return False
    rc = tracker.refine_cfg
    if _lives_overlap(a, b) > rc.handover_max_overlap or _shown_apart(tracker.consensus, a, b):
        return False
    return cosine_matrix([a.feature], [b.feature])[0, 0] >= rc.consensus_once_cos  # still alike, as when matched


def _within_voxels(keys: np.ndarray, seed_keys: np.ndarray, radius: int) -> np.ndarray:
    """Which ``keys`` lie within ``radius`` voxels (Euclidean, on the integer grid) of some seed key: the same
    set as testing every offset of geometry.key_neighbourhood(radius), on a dense grid (geometry.keys_near)."""
    return geometry.keys_near(keys, seed_keys, radius)


def resolve_contested(tracker, only_dirty: bool = True) -> int:
    """Each fine voxel belongs to at most one instance: a voxel two nearby tracks both hold stays with the one
    whose masks covered it more often (in-mask votes; ties: the smaller track, see _tie_rank). A mask over two
    neighbours (a box spanning both) puts the neighbour's surface into one track a few times; the neighbour's own
    masks cover it every time, so it goes back. Runs after merging, so duplicates of one object are joined, not split.
    Returns how many voxels changed hands."""
    moved, changed = 0, {}
    for tid in merge_order({t.id: t.observations for t in tracker.tracks.values()}):
        t = tracker.tracks.get(tid)
        if t is None or (only_dirty and not t.dirty):
            continue
        for u in tracker.index.query(t.box_min, t.box_max):
            other = tracker.tracks.get(u)
            if other is None or u == tid:
                continue
            ia, ib = shared_places(t.store.keys, other.store.keys)
            if not len(ia):
                continue
            a, b = t.store.in_mask[ia].astype(np.int32), other.store.in_mask[ib].astype(np.int32)
            t_wins = (a > b) | ((a == b) & (_tie_rank(t) <= _tie_rank(other)))
            for track, lose in ((t, ia[~t_wins]), (other, ib[t_wins])):
                if len(lose):
                    keep = np.ones(len(track.store), bool)
                    keep[lose] = False
                    track.store.prune(keep)
                    changed[track.id] = track
            moved += len(ia)
    for track in changed.values():  # once per track (boxes only shrink: the queries above saw a superset)
        _follow_store(track, tracker)
    return moved


def _tie_rank(track) -> tuple:
    """Who keeps a voxel both tracks' masks covered equally often (lower wins): the smaller track, since nested
    masks (a table's mask over the cup on it) cover the small object's surface in both; then the longer track."""
    return (len(track.store), -track.observations, track.id)


def _follow_store(track, tracker) -> None:
    """Coarse voxels and box follow the fine points a track kept."""
    follow_consistent(track, tracker.refine_cfg, tracker.cfg.voxel_size_m, tracker.cfg.max_track_voxels)
    tracker.index.insert(track.id, track.box_min, track.box_max)
    track.dirty = True


def contained_duplicates(t, others: List, iou: np.ndarray, refine_cfg) -> np.ndarray:
    """A partial track (one side of an object) lies mostly inside the whole one: IoU stays low, but the
    overlap over the smaller track is high. Merge those only when they also look alike (a mug inside a
    table mask that bled over it must stay apart)."""
    rc = refine_cfg
    if rc.tau_contain <= 0 or not others:
        return np.zeros(len(others), bool)
    a = float(len(t.voxels))
    b = np.array([len(o.voxels) for o in others], np.float64)
    inter = iou * (a + b) / (1.0 + iou)
    contain = inter / np.maximum(1.0, np.minimum(a, b))
    cos = cosine_matrix([t.feature], [o.feature for o in others])[0] if len(t.feature) else np.ones(len(others))
    return (contain >= rc.tau_contain) & (cos >= rc.contain_min_cos)


def merge_tracks(keep, drop, max_voxels: int) -> None:
    """Fold ``drop`` into ``keep``: voxels and counters united, features weighted by observations."""
    keep.voxels = np.union1d(keep.voxels, drop.voxels)[:max_voxels]
    w = keep.observations + drop.observations
    if len(keep.feature) == len(drop.feature) and len(keep.feature):
        f = (keep.observations * keep.feature + drop.observations * drop.feature) / w
        keep.feature = (f / max(float(np.linalg.norm(f)), 1e-12)).astype(np.float32)
    keep.store.merge(drop.store)
    keep.observations = w
    keep.det_score_sum += drop.det_score_sum
    keep.first_seen, keep.first_frame = min(keep.first_seen, drop.first_seen), min(keep.first_frame, drop.first_frame)
    keep.last_seen, keep.last_frame = max(keep.last_seen, drop.last_seen), max(keep.last_frame, drop.last_frame)
    keep.first_keyframe = min(keep.first_keyframe, drop.first_keyframe)  # -1 (unknown) stays unknown
    keep.last_keyframe = max(keep.last_keyframe, drop.last_keyframe)
    keep.det_label = keep.det_label or drop.det_label
    keep.misses = min(keep.misses, drop.misses)
    keep.state = TrackState.ACTIVE if TrackState.ACTIVE in (keep.state, drop.state) else keep.state
    keep.dirty = True
    keep.update_box()


def merge_order(observations: Dict[int, int]) -> list:
    """Track ids, longest (most observations) first; ties by id (older first)."""
    return sorted(observations, key=lambda t: (-observations[t], t))
