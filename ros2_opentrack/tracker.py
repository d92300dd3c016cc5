"""Tracks and their life cycle (active / dormant / terminated): one keyframe's observations continue tracks
(association.py, paper eq. 1) or open new ones; every candidate is voted on for consistency refinement.

Only tracks whose box lies near the camera frustum are candidates (a hash grid of track boxes finds them),
so the work per keyframe depends on what the camera sees, not on the size of the map. Tracking state only:
views and labels are owned by views.TrackViews and labeling.TrackLabels, keyed by track id."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import geometry
from .association import Associator
from .changes import ChangeDetector
from .consensus import Consensus, MaskSet
from .refine import merge_duplicates, merge_tracks, refine_track, resolve_contested
from .spatial_index import SpatialIndex
from .types import Frame, Observation, Presence, TrackState
from .voxel_store import PointStore, SceneMap, isin_sorted


@dataclass
class Track:
    id: int
    voxels: np.ndarray  # sorted unique int64 keys at tracking.voxel_size_m
    feature: np.ndarray  # (D,) float32, L2-normalised EMA
    store: PointStore  # fine points + consistency counters
    first_seen: float
    last_seen: float
    first_frame: int
    last_frame: int
    observations: int = 1
    first_keyframe: int = -1  # Tracker.keyframes when opened / last observed (-1: unknown, a map state saved
    last_keyframe: int = -1  # before they were kept); keyframes, not frames: the keyframe rate may vary
    state: TrackState = TrackState.ACTIVE
    misses: int = 0  # keyframes it should have been seen but was not (reset on a match)
    source_id: Optional[int] = None  # dataset instance id (masks.oracle_ids studies)
    born_near: int = 0  # the track its opening observation nearly continued (refine.fragment_adopters; 0: none)
    born_beside: int = 0  # the out-of-view track its opening observation matched by appearance alone (0: none)
    det_label: Optional[str] = None  # first detector class seen for it
    det_score_sum: float = 0.0
    box_min: np.ndarray = field(default_factory=lambda: np.zeros(3))
    box_max: np.ndarray = field(default_factory=lambda: np.zeros(3))
    dirty: bool = True  # changed since the last refinement
    presence: Presence = Presence.PRESENT  # changes.py: is it still where the map says (since presence_since)?
    presence_since: float = 0.0  # stamp of the last presence change (0: present since first_seen)
    moved_from: Optional[int] = None  # changes.py: the removed track this one was linked to (moved_to: back)
    moved_to: Optional[int] = None
    empty_count: int = 0  # changes.py: keyframes its place was seen empty while present / filled while removed
    there_count: int = 0
    _centers_of: Optional[np.ndarray] = field(default=None, repr=False)  # the voxels array _centers belongs to
    _centers: Optional[np.ndarray] = field(default=None, repr=False)

    def voxel_centers(self, voxel_size: float) -> np.ndarray:
        """World centres of ``voxels``, cached until ``voxels`` is replaced."""
        if self._centers_of is not self.voxels:
            self._centers_of, self._centers = self.voxels, geometry.voxel_centers(self.voxels, voxel_size)
        return self._centers

    def update_box(self) -> None:
        if len(self.store):
            self.box_min, self.box_max = self.store.box()


@dataclass
class StepOutcome:
    matched: List[Tuple[int, int]] = field(default_factory=list)  # (observation index, track id)
    created: List[int] = field(default_factory=list)
    terminated: List[int] = field(default_factory=list)
    candidates: List[int] = field(default_factory=list)
    in_frustum: Dict[int, float] = field(default_factory=dict)  # track id -> fraction of its points in view


class Tracker:
    def __init__(self, tracking_cfg, refine_cfg, lift_cfg, oracle_ids: bool = False):
        self.cfg = tracking_cfg
        self.refine_cfg = refine_cfg
        self.lift_cfg = lift_cfg
        self.tracks: Dict[int, Track] = {}
        self.index = SpatialIndex(tracking_cfg.index_cell_m)
        self.scene = SceneMap(refine_cfg.map_voxel_m, refine_cfg.max_map_points)
        self.next_id = 1
        self.terminated_total = 0
        self.keyframes = 0  # steps taken: the clock of track lifetimes (Track.first_keyframe, last_keyframe)
        self.associate = Associator(tracking_cfg, lift_cfg, oracle_ids)
        self.changes = ChangeDetector(tracking_cfg, lift_cfg)  # changes.py: presence of tracks (issue 11)
        self.consensus = Consensus(  # consensus.py: one object in pieces, or two objects?
            tracking_cfg.span_coverage,
            tracking_cfg.separate_coverage,
            tracking_cfg.min_seen_voxels,
            2 * tracking_cfg.voxel_size_m,
        )

    # ---------------------------------------------------------------------------------------------
    def step(self, frame: Frame, observations: Sequence[Observation], masks=None) -> StepOutcome:
        """One keyframe: associate, update or open tracks, vote, age the missed ones. ``masks``: the frame's
        HxW bool masks (a list or an (N, H, W) array), indexed by Observation.mask_index."""
        out = StepOutcome()
        masks = None if masks is None else MaskSet.of(masks)  # each mask's box found once, on first use
        self.keyframes += 1
        out.candidates = self.candidates(frame)
        away = self.changes.set_aside(out.candidates, self.tracks)  # changes.py: removed tracks are no candidates
        out.matched = self.associate(observations, out.candidates, self.tracks, frame, masks)
        own = self.associate.ownership(observations, out.matched, self.tracks)
        out.matched = [(i, own.reassigned.get(i, t)) for i, t in out.matched]
        beside = self.associate.beside(out.matched)  # opens a linked track instead (association.beside)
        out.matched = [(i, t) for i, t in out.matched if i not in beside]
        spanned = self.associate.spanned(observations, out.matched, masks, self.tracks, self.consensus)
        absorbed: Dict[int, List[int]] = {}  # track id -> mask indices it was observed in this keyframe
        for obs_i, tid in out.matched + [(s.observation, s.track_id) for s in own.shares]:
            obs = observations[obs_i]
            parts, obs = self._hand_over(obs, spanned.get(obs_i, ()))
            for other, part in parts:  # a handed-over part continues its track, but is no observation of it
                self._absorb(self.tracks[other], part, frame, again=True, describe=False)
                absorbed.setdefault(other, []).append(obs.mask_index)
            self._absorb(self.tracks[tid], obs, frame, again=tid in absorbed)
            absorbed.setdefault(tid, []).append(obs.mask_index)
        taken = {i for i, _ in out.matched} | own.consumed
        for i, obs in enumerate(observations):
            if i not in taken:
                t = self._open(obs, frame)  # absorbed: the tracks continued so far (new ones are no candidates)
                t.born_beside = beside.get(i, 0)
                t.born_near = t.born_beside or self.associate.nearest_miss(i, self.refine_cfg.adopt_near_miss, absorbed)
                out.created.append(t.id)
                out.matched.append((i, t.id))
                absorbed[t.id] = [obs.mask_index]
        mask_of = absorbed
        seen = self._vote(frame, out.candidates + out.created, mask_of, masks, out, observations)
        out.terminated = self._age(out.candidates, mask_of, seen)
        out.terminated += self.changes.update(self, frame, out.candidates + away, mask_of)  # changes.py: presence
        for tid in set(mask_of) - set(out.terminated):
            t = self.tracks[tid]
            t.update_box()
            self.index.insert(tid, t.box_min, t.box_max)
        return out

    def candidates(self, frame: Frame) -> List[int]:
        """Active and dormant tracks whose box is within candidate_margin_m of the camera frustum."""
        if not self.tracks:
            return []
        hw = frame.depth.shape
        margin = self.cfg.candidate_margin_m
        corners = geometry.frustum_corners(
            frame.K, frame.T_world_cam, hw, self.lift_cfg.depth_min_m, self.lift_cfg.depth_max_m
        )
        near = sorted(self.index.query(corners.min(axis=0) - margin, corners.max(axis=0) + margin))
        if not near:
            return []
        planes = geometry.frustum_planes(
            frame.K, frame.T_world_cam, hw, self.lift_cfg.depth_min_m, self.lift_cfg.depth_max_m, corners
        )
        bmin = np.array([self.tracks[t].box_min for t in near])
        bmax = np.array([self.tracks[t].box_max for t in near])
        ok = geometry.boxes_in_frustum(bmin, bmax, planes, margin)
        return [t for t, k in zip(near, ok) if k]

    # ---------------------------------------------------------------------------------------------
    def _open(self, obs: Observation, frame: Frame) -> Track:
        store = PointStore(self.refine_cfg.map_voxel_m, self.refine_cfg.max_track_points)
        store.add_points(obs.points, obs.colors)
        t = Track(
            id=self.next_id,
            voxels=obs.voxels[: self.cfg.max_track_voxels],
            feature=obs.feature.copy(),
            store=store,
            first_seen=frame.stamp,
            last_seen=frame.stamp,
            first_frame=frame.index,
            last_frame=frame.index,
            first_keyframe=self.keyframes,
            last_keyframe=self.keyframes,
            source_id=obs.source_id,
            det_label=obs.label,
            det_score_sum=obs.score,
        )
        self.next_id += 1
        self.tracks[t.id] = t
        t.update_box()
        self.index.insert(t.id, t.box_min, t.box_max)
        return t

    def _hand_over(self, obs: Observation, neighbours) -> Tuple[List[Tuple[int, Observation]], Observation]:
        """The parts of ``obs`` lying in the coarse voxels of each spanned neighbour (association.spanned), and
        what is left of it."""
        if not neighbours:
            return [], obs
        parts = []
        keys = geometry.voxel_keys(obs.points, self.cfg.voxel_size_m, unique=False)
        left, left_voxels = np.ones(len(keys), bool), np.ones(len(obs.voxels), bool)
        for tid in neighbours:
            voxels = self.tracks[tid].voxels
            inside, inside_voxels = left & isin_sorted(keys, voxels), left_voxels & isin_sorted(obs.voxels, voxels)
            if inside.any():
                parts.append((tid, _subset(obs, inside, inside_voxels)))
                left &= ~inside
                left_voxels &= ~inside_voxels
        return parts, _subset(obs, left, left_voxels) if parts else obs

    def _absorb(self, t: Track, obs: Observation, frame: Frame, again: bool = False, describe: bool = True) -> None:
        """Continue ``t`` with ``obs``. ``again``: the track already took another part of this keyframe, which
        counts as one observation. ``describe``: the observation's descriptor is the track's (not for a part
        handed over from a mask over two objects)."""
        room = self.cfg.max_track_voxels - len(t.voxels)
        if room > 0:  # both sorted: insert the new keys in place (O(n), no re-sort)
            new = obs.voxels[~isin_sorted(obs.voxels, t.voxels)][:room]
            t.voxels = np.insert(t.voxels, np.searchsorted(t.voxels, new), new)
        if describe and len(obs.feature) and len(obs.feature) == len(t.feature):
            m = self.cfg.feature_momentum
            f = m * t.feature + (1.0 - m) * obs.feature
            t.feature = (f / max(float(np.linalg.norm(f)), 1e-12)).astype(np.float32)
        t.store.add_points(obs.points, obs.colors)
        if not again:
            t.observations += 1
            t.det_score_sum += obs.score
        t.last_seen, t.last_frame, t.last_keyframe = frame.stamp, frame.index, self.keyframes
        t.misses = 0
        t.state = TrackState.ACTIVE
        t.det_label = t.det_label or obs.label
        t.dirty = True

    def _vote(self, frame: Frame, track_ids, mask_of, masks, out: StepOutcome, observations=()) -> Dict[int, bool]:
        """Consistency votes of this keyframe for every candidate and new track, in one projection, and the
        view consensus of touching tracks (consensus.py). Returns track id -> whether it should have been seen
        (enough of it visible and not occluded)."""
        ids = list(dict.fromkeys(track_ids))
        if not ids:
            return {}
        stores = [self.tracks[t].store for t in ids]
        sizes = np.array([len(s) for s in stores])
        visible, frustum, px, parts = geometry.visibility_by_set(
            [s.centers() for s in stores],
            frame,
            self.lift_cfg.depth_min_m,
            self.lift_cfg.depth_max_m,
            self.cfg.occlusion_margin_m,
        )
        in_mask = np.zeros(len(visible), bool)
        n_visible, n_frustum = geometry.sums_per_slice(visible, parts), geometry.sums_per_slice(frustum, parts)
        in_view = n_visible >= self.cfg.min_visible_fraction * np.maximum(1, sizes)  # not a sliver
        if masks is not None and len(masks):
            width = frame.depth.shape[1]
            seen_at = [s.start + np.flatnonzero(visible[s]) for s in parts]  # each track's visible points
            for tid, at in zip(ids, seen_at):
                flat = px[at, 1] * width + px[at, 0]  # in_mask counts only where visible: look only there
                for mi in mask_of.get(tid, ()):  # every mask (part) the track was observed in
                    if mi >= 0:
                        in_mask[at] |= np.take(masks[mi], flat)
            shown = [px[at] if ok else px[:0] for at, ok in zip(seen_at, in_view)]
            born = set() if self.refine_cfg.consensus_birth_apart else set(out.created)
            self._observe_consensus(ids, shown, observations, masks, dict(out.matched), born)
        seen: Dict[int, bool] = {}
        for k, (tid, store, s) in enumerate(zip(ids, stores, parts)):
            if tid in mask_of or not self.refine_cfg.vote_only_observed:
                store.vote(visible[s], in_mask[s])
            seen[tid] = bool(in_view[k])
            out.in_frustum[tid] = float(n_frustum[k]) / max(1, sizes[k])
        return seen

    def _observe_consensus(self, ids, shown, observations, masks, owner, born) -> None:
        """consensus.py: how this keyframe's masks cover each track's visible points (``shown``: their pixels),
        and which track each mask continued or opened (``owner``: observation index -> track id). A pair with
        a track in ``born`` gets no view apart, only split evidence: a new track is its mask, so that the two
        leave each other out says little (the second part mask of an object opens a track beside the first's),
        but a mask over both later should still be split between them."""
        lifted = [(o.mask_index, owner.get(i)) for i, o in enumerate(observations) if o.mask_index >= 0]
        cover = MaskSet.of(masks).coverage([m for m, _ in lifted], shown, self.cfg.min_seen_voxels)
        owners = [tid for _, tid in lifted]
        linked = [(t, self.tracks[t].born_beside) for t in ids if self.tracks[t].born_beside]
        self.consensus.observe(cover, owners, ids, self.tracks, born=born.intersection(owners), linked=linked)

    def _age(self, candidate_ids, mask_of, seen) -> List[int]:
        """Missed while it should have been seen: count; dormant after dormant_after misses, terminated
        tau_dorm misses later. Tracks out of view are not candidates and do not age."""
        ended = []
        for tid in candidate_ids:
            if tid in mask_of or not seen.get(tid, False):
                continue
            t = self.tracks[tid]
            t.misses += 1
            if t.misses >= self.cfg.dormant_after + self.cfg.tau_dorm:
                ended.append(tid)
            elif t.misses >= self.cfg.dormant_after:
                t.state = TrackState.DORMANT
        for tid in ended:
            self.remove(tid)
            self.terminated_total += 1
        return ended

    def remove(self, tid: int) -> Optional[Track]:
        self.index.remove(tid)
        self.consensus.forget([tid])
        t = self.tracks.pop(tid, None)
        if t is not None:
            t.state = TrackState.TERMINATED
        return t

    def merge(self, keep: Track, drop: Track) -> None:
        """``drop`` is the same object as ``keep``: its points, views and counts go to keep, its view consensus
        with third tracks adds to keep's, a track that nearly continued it nearly continued keep
        (refine.fragment_adopters), and it leaves the map. The one way two tracks become one (duplicate
        merging, change detection's object back at its place)."""
        merge_tracks(keep, drop, self.cfg.max_track_voxels)
        self.consensus.fold(keep.id, drop.id)
        self.index.insert(keep.id, keep.box_min, keep.box_max)
        self.remove(drop.id)
        for u in self.tracks.values():
            if u.born_near == drop.id:
                u.born_near = keep.id if u.id != keep.id else 0
            if u.born_beside == drop.id:
                u.born_beside = keep.id if u.id != keep.id else 0

    # ---------------------------------------------------------------------------------------------
    def refine(self, only_dirty: bool = True) -> None:
        """Consistency refinement (refine.refine_track) of every changed track; boxes re-indexed."""
        for t in list(self.tracks.values()):
            if only_dirty and not t.dirty:
                continue
            refine_track(t, self.scene, self.refine_cfg, self.cfg.voxel_size_m, self.cfg.max_track_voxels)
            self.index.insert(t.id, t.box_min, t.box_max)

    def resolve_contested(self, only_dirty: bool = True) -> int:
        """Voxel ownership between neighbours (refine.resolve_contested)."""
        return resolve_contested(self, only_dirty) if self.refine_cfg.exclusive_voxels else 0

    def merge_duplicates(self, only_dirty: bool = True, final: bool = False) -> Dict[int, int]:
        """Duplicate merging (refine.merge_duplicates). Returns removed id -> kept id."""
        return merge_duplicates(self, only_dirty, final)

    def mark_clean(self) -> None:
        for t in self.tracks.values():
            t.dirty = False

    def reset(self) -> None:
        self.tracks.clear()
        self.index.clear()
        self.scene.clear()
        self.consensus.clear()
        self.terminated_total = 0  # next_id keeps counting: ids stay unique for the pipeline's lifetime


def _subset(obs: Observation, points: np.ndarray, voxels: np.ndarray) -> Observation:
    """``obs`` reduced to the points and voxels selected by two bool masks."""
    return dataclasses.replace(obs, points=obs.points[points], colors=obs.colors[points], voxels=obs.voxels[voxels])
