"""Visual-spatial tracking (paper eq. 1) with the active / dormant / terminated life cycle.

Only tracks whose box lies near the camera frustum are candidates (a hash grid of track boxes finds them),
so the work per keyframe depends on what the camera sees, not on the size of the map."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import geometry
from .refine import PointStore, SceneMap, expand, isin_sorted, merge_order, pairwise_iou
from .spatial_index import SpatialIndex
from .types import Frame, Observation, TrackState, View


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
    state: TrackState = TrackState.ACTIVE
    misses: int = 0  # keyframes it should have been seen but was not (reset on a match)
    views: List[View] = field(default_factory=list)
    source_id: Optional[int] = None
    det_label: Optional[str] = None
    det_score_sum: float = 0.0
    label: Optional[str] = None
    label_score: float = 0.0
    labelled_size: int = 0  # voxel count when the last label request was sent
    label_pending: bool = False
    box_min: np.ndarray = field(default_factory=lambda: np.zeros(3))
    box_max: np.ndarray = field(default_factory=lambda: np.zeros(3))
    dirty: bool = True  # changed since the last refinement
    _centers_of: Optional[np.ndarray] = field(default=None, repr=False)  # the voxels array _centers belongs to
    _centers: Optional[np.ndarray] = field(default=None, repr=False)

    def voxel_centers(self, voxel_size: float) -> np.ndarray:
        """World centres of ``voxels``, cached until ``voxels`` is replaced."""
        if self._centers_of is not self.voxels:
            self._centers_of, self._centers = self.voxels, geometry.voxel_centers(self.voxels, voxel_size)
        return self._centers

    def update_box(self) -> None:
        pts = self.store.centers()
        if len(pts):
            half = self.store.voxel / 2
            self.box_min, self.box_max = pts.min(axis=0) - half, pts.max(axis=0) + half


@dataclass
class StepOutcome:
    matched: List[Tuple[int, int]] = field(default_factory=list)  # (observation index, track id)
    created: List[int] = field(default_factory=list)
    terminated: List[int] = field(default_factory=list)
    candidates: List[int] = field(default_factory=list)
    in_frustum: Dict[int, float] = field(default_factory=dict)  # track id -> fraction of its points in view


_MIN_SEEN_VOXELS = 10  # slivers (a few voxels at a silhouette) say nothing about where an object is


class Tracker:
    def __init__(self, tracking_cfg, refine_cfg, lift_cfg, oracle_ids: bool = False):
        self.cfg = tracking_cfg
        self.refine_cfg = refine_cfg
        self.lift_cfg = lift_cfg
        self.oracle_ids = oracle_ids
        self.tracks: Dict[int, Track] = {}
        self.index = SpatialIndex(tracking_cfg.index_cell_m)
        self.scene = SceneMap(refine_cfg.map_voxel_m, refine_cfg.max_map_points)
        self.next_id = 1
        self.terminated_total = 0
        self.removed: List[Track] = []  # removed since the owner last drained it (their views to release)

    # ---------------------------------------------------------------------------------------------
    def step(self, frame: Frame, observations: Sequence[Observation], masks=None) -> StepOutcome:
        """One keyframe: associate, update or open tracks, vote, age the missed ones. ``masks``: the frame's
        HxW bool masks (a list or an (N, H, W) array), indexed by Observation.mask_index."""
        out = StepOutcome()
        out.candidates = self.candidates(frame)
        out.matched = self.associate(observations, out.candidates, frame)
        for obs_i, tid in out.matched:
            self._absorb(self.tracks[tid], observations[obs_i], frame)
        matched_obs = {i for i, _ in out.matched}
        for i, obs in enumerate(observations):
            if i not in matched_obs:
                t = self._open(obs, frame)
                out.created.append(t.id)
                out.matched.append((i, t.id))
        mask_of = {tid: observations[i].mask_index for i, tid in out.matched}
        seen = self._vote(frame, out.candidates + out.created, mask_of, masks, out)
        out.terminated = self._age(out.candidates, mask_of, seen)
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
        corners = geometry.frustum_corners(frame.K, frame.T_world_cam, hw, self.lift_cfg.depth_min_m,
                                           self.lift_cfg.depth_max_m)
        near = sorted(self.index.query(corners.min(axis=0) - margin, corners.max(axis=0) + margin))
        if not near:
            return []
        planes = geometry.frustum_planes(frame.K, frame.T_world_cam, hw, self.lift_cfg.depth_min_m,
                                         self.lift_cfg.depth_max_m)
        bmin = np.array([self.tracks[t].box_min for t in near])
        bmax = np.array([self.tracks[t].box_max for t in near])
        ok = geometry.boxes_in_frustum(bmin, bmax, planes, margin)
        return [t for t, k in zip(near, ok) if k]

    # ---------------------------------------------------------------------------------------------
    def associate(self, observations: Sequence[Observation], candidate_ids: Sequence[int],
                  frame: Optional[Frame] = None) -> List[Tuple[int, int]]:
        """(observation index, track id) pairs. With ``frame`` (and tracking.visible_iou) the spatial term is the
        IoU with the part of each track this camera can see now, not with the union of all its views, and a track
        the camera plainly sees elsewhere cannot take an observation by appearance alone (_seen_elsewhere)."""
        if not observations:
            return []
        if self.oracle_ids:
            return self._associate_oracle(observations)
        if not candidate_ids:
            return []
        tracks = [self.tracks[t] for t in candidate_ids]
        track_voxels = [t.voxels for t in tracks]
        if frame is not None and self.cfg.visible_iou:
            track_voxels = self._visible_voxels(frame, tracks)
        iou = pairwise_iou([o.voxels for o in observations], track_voxels)
        gate = self._spatial_gate(observations, tracks)
        if self.cfg.visible_iou:
            gate &= ~self._seen_elsewhere(observations, tracks, track_voxels, iou)
        if self.cfg.association == "greedy_iou":
            return self._associate_greedy(observations, candidate_ids, np.where(gate, iou, 0.0))
        cos = self._cosine(observations, tracks)
        score = self.cfg.alpha * cos + (1.0 - self.cfg.alpha) * iou
        score = np.where(gate, score, -1.0)
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(-score)
        return [(int(r), candidate_ids[c]) for r, c in zip(rows, cols) if score[r, c] >= self.cfg.tau_match]

    def _visible_voxels(self, frame: Frame, tracks) -> List[np.ndarray]:
        """Each track's voxels inside this frustum and not occluded by this depth (one projection for all):
        one view's observation can only cover what the camera sees, so IoU with the whole track (every side
        of the object seen so far) would fall as the track grows and split objects seen from a new side."""
        centers = [t.voxel_centers(self.cfg.voxel_size_m) for t in tracks]
        sizes = np.array([len(c) for c in centers])
        if sizes.sum() == 0:
            return [t.voxels for t in tracks]
        visible, _, _ = geometry.visibility(np.concatenate(centers), frame.T_world_cam, frame.K, frame.depth,
                                            self.lift_cfg.depth_min_m, self.lift_cfg.depth_max_m,
                                            self.cfg.occlusion_margin_m)
        bounds = np.r_[0, np.cumsum(sizes)]
        return [t.voxels[visible[bounds[k]:bounds[k + 1]]] for k, t in enumerate(tracks)]

    def _spatial_gate(self, observations, tracks) -> np.ndarray:
        """A pair is admissible only when the observation's box is within max_gap_m of the track's: appearance
        alone must never join two look-alike objects metres apart (eq. 1 gives them s >= alpha)."""
        omin = np.array([o.points.min(axis=0) for o in observations])
        omax = np.array([o.points.max(axis=0) for o in observations])
        tmin = np.array([t.box_min for t in tracks])
        tmax = np.array([t.box_max for t in tracks])
        gap = geometry.box_gap(omin[:, None], omax[:, None], tmin[None], tmax[None])
        return gap <= self.cfg.max_gap_m

    def _seen_elsewhere(self, observations, tracks, visible_voxels, iou) -> np.ndarray:
        """(observations, tracks) pairs where the camera sees much of the track (min_visible_fraction of it) and
        the observation shares none of its voxels: the track is plainly somewhere else, so appearance alone (a
        look-alike neighbour) must not join them. Tracks seen from a new side show little of themselves and stay
        free to match by appearance; slivers on either side are too small to tell."""
        shown = np.array([len(v) for v in visible_voxels])
        seen = (shown >= self.cfg.min_visible_fraction * np.array([len(t.voxels) for t in tracks])) & \
            (shown >= _MIN_SEEN_VOXELS)
        sized = np.array([len(o.voxels) for o in observations]) >= _MIN_SEEN_VOXELS
        return (iou <= 0.0) & seen[None, :] & sized[:, None]

    @staticmethod
    def _cosine(observations, tracks) -> np.ndarray:
        fo = np.stack([o.feature for o in observations]) if len(observations[0].feature) else None
        ft = np.stack([t.feature for t in tracks]) if len(tracks[0].feature) else None
        if fo is None or ft is None or fo.shape[1] != ft.shape[1]:
            return np.zeros((len(observations), len(tracks)))
        return np.clip(fo @ ft.T, -1.0, 1.0)

    def _associate_greedy(self, observations, candidate_ids, iou) -> List[Tuple[int, int]]:
        """Baseline: largest observation first, each takes the unused track with the best IoU >= tau_match."""
        pairs, used = [], set()
        for i in sorted(range(len(observations)), key=lambda k: -observations[k].pixel_count):
            for j in np.argsort(-iou[i], kind="stable"):
                if iou[i, j] < self.cfg.tau_match:
                    break
                if j not in used:
                    used.add(j)
                    pairs.append((i, candidate_ids[j]))
                    break
        return pairs

    def _associate_oracle(self, observations) -> List[Tuple[int, int]]:
        by_source = {t.source_id: t.id for t in self.tracks.values() if t.source_id is not None}
        pairs, used = [], set()
        for i, o in enumerate(observations):
            tid = by_source.get(o.source_id)
            if o.source_id is not None and tid is not None and tid not in used:
                used.add(tid)
                pairs.append((i, tid))
        return pairs

    # ---------------------------------------------------------------------------------------------
    def _open(self, obs: Observation, frame: Frame) -> Track:
        store = PointStore(self.refine_cfg.map_voxel_m, self.refine_cfg.max_track_points)
        store.add_points(obs.points, obs.colors)
        t = Track(id=self.next_id, voxels=obs.voxels[: self.cfg.max_track_voxels], feature=obs.feature.copy(),
                  store=store, first_seen=frame.stamp, last_seen=frame.stamp, first_frame=frame.index,
                  last_frame=frame.index, source_id=obs.source_id, det_label=obs.label, det_score_sum=obs.score)
        self.next_id += 1
        self.tracks[t.id] = t
        t.update_box()
        self.index.insert(t.id, t.box_min, t.box_max)
        return t

    def _absorb(self, t: Track, obs: Observation, frame: Frame) -> None:
        room = self.cfg.max_track_voxels - len(t.voxels)
        if room > 0:  # both sorted: insert the new keys in place (O(n), no re-sort)
            new = obs.voxels[~isin_sorted(obs.voxels, t.voxels)][:room]
            t.voxels = np.insert(t.voxels, np.searchsorted(t.voxels, new), new)
        if len(obs.feature) and len(obs.feature) == len(t.feature):
            m = self.cfg.feature_momentum
            f = m * t.feature + (1.0 - m) * obs.feature
            t.feature = (f / max(float(np.linalg.norm(f)), 1e-12)).astype(np.float32)
        t.store.add_points(obs.points, obs.colors)
        t.observations += 1
        t.last_seen, t.last_frame = frame.stamp, frame.index
        t.misses = 0
        t.state = TrackState.ACTIVE
        t.det_score_sum += obs.score
        t.det_label = t.det_label or obs.label
        t.dirty = True

    def _vote(self, frame: Frame, track_ids, mask_of, masks, out: StepOutcome) -> Dict[int, bool]:
        """Consistency votes of this keyframe for every candidate and new track, in one projection. Returns
        track id -> whether it should have been seen (enough of it visible and not occluded)."""
        ids = list(dict.fromkeys(track_ids))
        if not ids:
            return {}
        stores = [self.tracks[t].store for t in ids]
        sizes = np.array([len(s) for s in stores])
        pts = np.concatenate([s.centers() for s in stores]) if sizes.sum() else np.zeros((0, 3), np.float32)
        visible, frustum, px = geometry.visibility(pts, frame.T_world_cam, frame.K, frame.depth,
                                                   self.lift_cfg.depth_min_m, self.lift_cfg.depth_max_m,
                                                   self.cfg.occlusion_margin_m)
        in_mask = np.zeros(len(pts), bool)
        bounds = np.r_[0, np.cumsum(sizes)]
        if masks is not None and len(masks):
            for k, tid in enumerate(ids):
                mi = mask_of.get(tid, -1)
                if mi >= 0:
                    s = slice(bounds[k], bounds[k + 1])
                    in_mask[s] = masks[mi][px[s, 1], px[s, 0]]
        seen: Dict[int, bool] = {}
        for k, (tid, store) in enumerate(zip(ids, stores)):
            s = slice(bounds[k], bounds[k + 1])
            store.vote(visible[s], in_mask[s])
            n = max(1, sizes[k])
            seen[tid] = visible[s].sum() >= self.cfg.min_visible_fraction * n
            out.in_frustum[tid] = float(frustum[s].sum()) / n
        return seen

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
        t = self.tracks.pop(tid, None)
        if t is not None:
            t.state = TrackState.TERMINATED
            self.removed.append(t)
        return t

    # ---------------------------------------------------------------------------------------------
    def refine(self, only_dirty: bool = True) -> None:
        """Expansion from the scene map, then the consistency vote prunes each changed track."""
        rc = self.refine_cfg
        for t in list(self.tracks.values()):
            if only_dirty and not t.dirty:
                continue
            if rc.tau_exp > 0:
                expand(t.store, self.scene, rc.tau_exp)
            keep = t.store.kept(rc.tau_vis, rc.min_visible)
            if keep.any() and not keep.all():
                decided = t.store.visible >= max(1, rc.min_visible)
                t.store.prune(keep | ~decided)  # undecided expansion candidates wait for their votes
            consistent = t.store.centers()[t.store.kept(rc.tau_vis, rc.min_visible)]
            if len(consistent):
                t.voxels = geometry.voxel_keys(consistent, self.cfg.voxel_size_m)[: self.cfg.max_track_voxels]
            t.update_box()
            self.index.insert(t.id, t.box_min, t.box_max)

    def merge_duplicates(self, only_dirty: bool = True) -> Dict[int, int]:
        """NMS by voxel IoU >= tau_merge, longest track first; the shorter is merged into the longer.
        Returns removed id -> kept id."""
        merged: Dict[int, int] = {}
        ids = merge_order({t.id: t.observations for t in self.tracks.values()})
        for tid in ids:
            t = self.tracks.get(tid)
            if t is None or (only_dirty and not t.dirty):
                continue
            near = [u for u in self.index.query(t.box_min, t.box_max) if u != tid and u in self.tracks]
            if not near:
                continue
            others = [self.tracks[u] for u in near]
            iou = pairwise_iou([t.voxels], [o.voxels for o in others])[0]
            contained = self._contained_duplicates(t, others, iou)
            for u, v, c in zip(near, iou, contained):
                other = self.tracks[u]
                if v >= self.refine_cfg.tau_merge or c:
                    keep, drop = (t, other) if (t.observations, -t.id) >= (other.observations, -other.id) else (other, t)
                    self._merge(keep, drop)
                    merged[drop.id] = keep.id
                    if drop is t:
                        break
        for removed, kept in list(merged.items()):  # chains a -> b -> c report the final survivor
            while kept in merged:
                kept = merged[kept]
            merged[removed] = kept
        return merged

    def _contained_duplicates(self, t: Track, others, iou: np.ndarray) -> np.ndarray:
        """A partial track (one side of an object) lies mostly inside the whole one: IoU stays low, but the
        overlap over the smaller track is high. Merge those only when they also look alike (a mug inside a
        table mask that bled over it must stay apart)."""
        rc = self.refine_cfg
        if rc.tau_contain <= 0 or not others:
            return np.zeros(len(others), bool)
        a = float(len(t.voxels))
        b = np.array([len(o.voxels) for o in others], np.float64)
        inter = iou * (a + b) / (1.0 + iou)
        contain = inter / np.maximum(1.0, np.minimum(a, b))
        cos = self._cosine([t], others)[0] if len(t.feature) else np.ones(len(others))
        return (contain >= rc.tau_contain) & (cos >= rc.contain_min_cos)

    def _merge(self, keep: Track, drop: Track) -> None:
        keep.voxels = np.union1d(keep.voxels, drop.voxels)[: self.cfg.max_track_voxels]
        w = keep.observations + drop.observations
        if len(keep.feature) == len(drop.feature) and len(keep.feature):
            f = (keep.observations * keep.feature + drop.observations * drop.feature) / w
            keep.feature = (f / max(float(np.linalg.norm(f)), 1e-12)).astype(np.float32)
        keep.store.merge(drop.store)
        keep.views, drop.views = keep.views + drop.views, []  # the owner trims them back to top-K
        keep.observations = w
        keep.det_score_sum += drop.det_score_sum
        keep.first_seen, keep.first_frame = min(keep.first_seen, drop.first_seen), min(keep.first_frame, drop.first_frame)
        keep.last_seen, keep.last_frame = max(keep.last_seen, drop.last_seen), max(keep.last_frame, drop.last_frame)
        keep.label = keep.label or drop.label
        keep.det_label = keep.det_label or drop.det_label
        keep.misses = min(keep.misses, drop.misses)
        keep.state = TrackState.ACTIVE if TrackState.ACTIVE in (keep.state, drop.state) else keep.state
        keep.dirty = True
        keep.update_box()
        self.index.insert(keep.id, keep.box_min, keep.box_max)
        self.remove(drop.id)

    def mark_clean(self) -> None:
        for t in self.tracks.values():
            t.dirty = False

    def reset(self) -> None:
        self.removed.clear()
        self.tracks.clear()
        self.index.clear()
        self.scene.clear()
        self.terminated_total = 0  # next_id keeps counting: ids stay unique for the pipeline's lifetime
