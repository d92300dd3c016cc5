"""Which observation of a keyframe continues which track: the visual-spatial score of paper eq. 1.

    s = alpha * cos(f_T, f_I) + (1 - alpha) * IoU_voxel,   Hungarian assignment, accepted when s >= tau_match

Three gates keep eq. 1 from joining look-alikes: a pair is admissible only when the boxes are within max_gap_m, and
a track the camera plainly sees elsewhere, or whose surface it sees where the mask leaves it out, cannot take an
observation by appearance alone. A pair matched by appearance alone to a track out of view is no continuation
either (beside(): the observation opens a track linked to it, for view consensus to decide). With visible_iou the
IoU is taken against the part of the track this camera can see now. Modes (tracking.association): hungarian (the
paper), greedy_iou (the baseline: voxel IoU only, greedy); masks.oracle_ids associates by dataset ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from . import compiled, geometry
from .consensus import MaskSet
from .types import Frame, Observation
from .voxel_store import isin_sorted

Pairs = List[Tuple[int, int]]  # (observation index, track id)
_NOTHING_SEEN = ([], [], None, np.zeros((0, 0)))


class Visible(NamedTuple):
    """What one view shows of each track (Associator.visible_voxels), one entry per track."""

    voxels: List[np.ndarray]  # its coarse voxels in the frustum and not occluded
    pixels: List[np.ndarray]  # their (u, v) pixels
    surface_pixels: List[np.ndarray]  # the pixels of those on the surface this depth shows
    in_frustum: np.ndarray  # (tracks,) how many of its voxels lie in the frustum, occluded or not


@dataclass
class Share:
    """An observation that also continues a track other than its Hungarian pair (a part of that object)."""

    observation: int
    track_id: int


@dataclass
class Ownership:
    """Observations of a keyframe that continue a track beyond the one-to-one pairs."""

    shares: List[Share] = field(default_factory=list)
    consumed: set = field(default_factory=set)  # unmatched observations given to a track: open no new one
    reassigned: dict = field(default_factory=dict)  # observation index -> the track it continues instead


class Associator:
    def __init__(self, tracking_cfg, lift_cfg, oracle_ids: bool = False):
        self.cfg = tracking_cfg
        self.lift_cfg = lift_cfg
        self.oracle_ids = oracle_ids
        if not oracle_ids and tracking_cfg.association == "hungarian":
            import scipy.optimize  # noqa: F401 - here, not in the first keyframe (a ~0.3 s import)
        # this keyframe's candidates, their visible voxels and pixels, and the observations' IoU with those
        self._seen_now: Tuple[List[int], List[np.ndarray], Optional[List[np.ndarray]], np.ndarray] = _NOTHING_SEEN
        self._score: Optional[np.ndarray] = None  # this keyframe's eq. 1 scores, -1 where a gate rules a pair out
        self._out_of_view: Optional[np.ndarray] = None  # (candidates,) bool: out of view this keyframe (beside())

    def __call__(
        self,
        observations: Sequence[Observation],
        candidate_ids: Sequence[int],
        tracks: Mapping,
        frame: Frame = None,
        masks: Optional[MaskSet] = None,
    ) -> Pairs:
        """Pairs for this keyframe. ``tracks``: id -> Track (the oracle looks beyond the candidates); ``masks``:
        the frame's masks, indexed by Observation.mask_index (for left_out)."""
        self._seen_now, self._score, self._out_of_view = _NOTHING_SEEN, None, None
        if not observations:
            return []
        if self.oracle_ids:
            return associate_by_source_id(observations, tracks.values())
        if not candidate_ids:
            return []
        candidates = [tracks[t] for t in candidate_ids]
        track_voxels, track_pixels, surface_pixels = [t.voxels for t in candidates], None, None
        if frame is not None and self.cfg.visible_iou:
            shown = self.visible_voxels(frame, candidates)
            track_voxels, track_pixels, surface_pixels = shown.voxels, shown.pixels, shown.surface_pixels
            self._out_of_view = self.out_of_view(candidates, shown.in_frustum)
        iou = pairwise_iou([o.voxels for o in observations], track_voxels)
        self._seen_now = (list(candidate_ids), track_voxels, track_pixels, iou)  # for ownership() / spanned()
        gate = spatial_gate(observations, candidates, self.cfg.max_gap_m)
        if track_pixels is not None:
            gate &= ~self.seen_elsewhere(observations, candidates, track_voxels, track_pixels, iou)
        if surface_pixels is not None and masks is not None:
            gate &= ~self.left_out(observations, MaskSet.of(masks), surface_pixels, iou)
        if self.cfg.association == "greedy_iou":
            return associate_greedy(observations, candidate_ids, np.where(gate, iou, 0.0), self.cfg.tau_match)
        cos = cosine_matrix([o.feature for o in observations], [t.feature for t in candidates])
        score = np.where(gate, self.cfg.alpha * cos + (1.0 - self.cfg.alpha) * iou, -1.0)
        self._score = score
        return associate_hungarian(score, candidate_ids, self.cfg.tau_match, self.cfg.assign_margin)

    def nearest_miss(self, observation: int, margin: float, continued=()) -> int:
        """The candidate this keyframe's observation scored best with among those the gates admit, when that
        score is within ``margin`` of tau_match and no other observation continued it (after __call__ on the
        same keyframe), or 0: for an observation left unmatched, the track it nearly continued."""
        if self._score is None or margin <= 0:  # set only when there were candidates
            return 0
        row = self._score[observation]
        best = int(np.argmax(row))
        tid = int(self._seen_now[0][best])
        return tid if row[best] >= max(0.0, self.cfg.tau_match - margin) and tid not in continued else 0

    def visible_voxels(self, frame: Frame, tracks) -> Visible:
        """Each track's voxels inside this frustum and not occluded by this depth, their pixels (one
        projection for all), the pixels of those on the surface this depth shows (within surface_margin_m;
        none when 0), and how many of its voxels the frustum holds: one view's observation can only cover what
        the camera sees, so IoU with the whole track (every side of the object seen so far) would fall as the
        track grows and split objects seen from a new side."""
        centers = [t.voxel_centers(self.cfg.voxel_size_m) for t in tracks]
        if sum(len(c) for c in centers) == 0:
            nothing = [np.zeros((0, 2), np.int64) for _ in tracks]
            return Visible([t.voxels for t in tracks], nothing, nothing, np.zeros(len(tracks), np.int64))
        visible, frustum, px, parts = geometry.visibility_by_set(
            centers, frame, self.lift_cfg.depth_min_m, self.lift_cfg.depth_max_m, self.cfg.occlusion_margin_m
        )
        on_surface = np.zeros(len(visible), bool)
        if self.cfg.surface_margin_m > 0:
            on_surface[visible] = geometry.on_surface(
                np.concatenate(centers)[visible], px[visible], frame, self.cfg.surface_margin_m
            )
        return Visible(
            [t.voxels[visible[s]] for t, s in zip(tracks, parts)],
            [px[s][visible[s]] for s in parts],
            [px[s][on_surface[s]] for s in parts],
            geometry.sums_per_slice(frustum, parts),
        )

    def out_of_view(self, tracks, in_frustum: np.ndarray) -> Optional[np.ndarray]:
        """(tracks,) bool: fewer than out_of_view_voxels of the track's voxels lie in this frustum, and under
        half of them (a small track wholly in view is in view); None when out_of_view_voxels is 0 (off)."""
        if self.cfg.out_of_view_voxels <= 0:
            return None
        sizes = np.array([len(t.voxels) for t in tracks])
        return (in_frustum < self.cfg.out_of_view_voxels) & (2 * in_frustum < sizes)

    def beside(self, pairs: Pairs) -> Dict[int, int]:
        """Of this keyframe's pairs (after ownership()), those that join an observation to a track out of view by
        appearance alone (no visible voxel shared): observation index -> track id. The camera cannot see that
        track, so the observation shows something beside what was seen of it: the object's next stretch (a
        wall panned along, the far half of a table) or a look-alike neighbour (a chair beside the one seen
        before, a small box beside a big one). One view cannot tell which, so the observation opens a track of
        its own, linked to that one (Track.born_beside): view consensus joins them once a view shows both as
        one and keeps them apart once each takes a mask of its own; left unsettled at the end of a run, the
        match stands (refine.merge_duplicates)."""
        ids, _, _, iou = self._seen_now
        if self._out_of_view is None or not pairs:
            return {}
        column = {tid: j for j, tid in enumerate(ids)}
        return {
            i: tid
            for i, tid in pairs
            if tid in column and self._out_of_view[column[tid]] and iou[i, column[tid]] <= 0.0
        }

    def left_out(self, observations, masks: MaskSet, surface_pixels, iou) -> np.ndarray:
        """(observations, tracks) pairs where this view shows the track's surface (visible_voxels) and the
        observation's mask leaves it out (covers at most surface_cover_max of it), sharing no voxel: the mask is
        of something beside the track (the far end of a door after a corner turn, next to a cabinet whose own
        mask the segmenter dropped: the cabinet in full view, outside the door's mask). Appearance alone must
        not join them. A track seen from a new side has its known surface behind the new one, off the surface
        this depth shows, so a first view of an object's back is never ruled out."""
        out = np.zeros(iou.shape, bool)
        rows = [
            i for i, o in enumerate(observations) if o.mask_index >= 0 and len(o.voxels) >= self.cfg.min_seen_voxels
        ]
        if rows:
            cover = masks.coverage([observations[i].mask_index for i in rows], surface_pixels, self.cfg.min_seen_voxels)
            out[rows] = (cover <= self.cfg.surface_cover_max) & (iou[rows] <= 0.0)  # NaN (too little shown): False
        return out

    def seen_elsewhere(self, observations, tracks, visible_voxels, visible_pixels, iou) -> np.ndarray:
        """(observations, tracks) pairs where the camera plainly sees the track somewhere else: min_seen_voxels
        of it (and elsewhere_fraction of it) visible, most of those outside the observation's image box, and
        (almost) no voxel shared (IoU <= elsewhere_max_iou: a brush along an edge, not an overlap). Appearance
        alone (a look-alike neighbour) must not join them. An observation of the track itself covers the track's
        visible surface; a track seen from a new side has its known surface hidden behind the new one (what
        stays visible are silhouette voxels inside the box); slivers are too small."""
        shown = np.array([len(v) for v in visible_voxels])
        seen = (shown >= self.cfg.elsewhere_fraction * np.array([len(t.voxels) for t in tracks])) & (
            shown >= self.cfg.min_seen_voxels
        )
        sized = np.array([len(o.voxels) for o in observations]) >= self.cfg.min_seen_voxels
        boxes = np.array([o.box for o in observations], np.float64).reshape(-1, 4)
        if compiled.ENABLED:  # one pass per (box, track) pair, no (boxes, pixels) temporaries
            outside = compiled.outside_boxes(visible_pixels, seen, boxes)
            return (iou <= self.cfg.elsewhere_max_iou) & outside & seen[None, :] & sized[:, None]
        outside = np.ones((len(observations), len(tracks)), bool)
        for k, px in enumerate(visible_pixels):
            if seen[k]:
                inside = (
                    (px[None, :, 0] >= boxes[:, None, 0])
                    & (px[None, :, 0] < boxes[:, None, 2])
                    & (px[None, :, 1] >= boxes[:, None, 1])
                    & (px[None, :, 1] < boxes[:, None, 3])
                )
                outside[:, k] = inside.mean(axis=1) < 0.5
        return (iou <= self.cfg.elsewhere_max_iou) & outside & seen[None, :] & sized[:, None]

    def ownership(self, observations: Sequence[Observation], pairs: Pairs, tracks: Mapping) -> Ownership:
        """Part masks (a chair as seat and back), after the one-to-one assignment of the same keyframe: a matched
        observation that belongs to another continued track moves there (reassign_parts, _reassign_parts); an
        unmatched one lying inside a track that another observation of this keyframe continues, and looking like
        it, is one more part of that track, not a new object (absorb_parts). (A mask over two neighbours is
        split by spanned() and resolved later by voxel ownership in refinement: refine.resolve_contested.)"""
        out = Ownership()
        ids, visible, _, iou = self._seen_now
        if self.oracle_ids or not observations or not ids:
            return out
        if self.cfg.reassign_parts:
            out.reassigned = self._reassign_parts(observations, pairs, ids, visible, iou, tracks)
            pairs = [(i, out.reassigned.get(i, t)) for i, t in pairs]
        if not self.cfg.absorb_parts:
            return out
        continued = {tid for _, tid in pairs}
        matched = {i for i, _ in pairs}
        inter = _intersections([o.voxels for o in observations], [tracks[t].voxels for t in ids])
        for i, obs in enumerate(observations):
            if i not in matched:
                whole = self._whole_of(i, obs, ids, inter, continued, tracks)
                if whole is not None:
                    out.shares.append(Share(i, whole))
                    out.consumed.add(i)
        return out

    def spanned(self, observations: Sequence[Observation], pairs: Pairs, masks, tracks: Mapping, consensus) -> dict:
        """spanned_neighbours for this keyframe's pairs (after __call__ on the same keyframe); ``masks``: the
        frame's masks, indexed by Observation.mask_index."""
        ids, voxels, pixels, _ = self._seen_now
        if self.oracle_ids or not self.cfg.split_spanning or not pairs or pixels is None or masks is None:
            return {}
        return spanned_neighbours(observations, pairs, ids, voxels, pixels, masks, tracks, consensus, self.cfg)

    def _reassign_parts(self, observations, pairs: Pairs, ids, visible, iou, tracks: Mapping) -> dict:
        """A segmenter's part masks (an object as 2-3 pieces) give one track several observations, but the
        assignment is one-to-one: a second piece goes to whatever neighbour it resembles. A matched observation
        that is not inside its own pair's track continues instead a track another observation continues this
        keyframe when it lies mostly (part_containment) inside that track's visible voxels, or else overlaps
        them clearly more than its own pair's (part_iou_margin), looks like it, and no detector class says
        otherwise (a detector's boxes nest: a table's box holds the chairs and the laptop)."""
        col = {tid: k for k, tid in enumerate(ids)}
        owner_of = dict(pairs)
        continued = set(owner_of.values())
        inter = _intersections([o.voxels for o in observations], visible, iou)
        moves = {}
        for i, t in pairs:
            obs = observations[i]
            inside_own = t in col and inter[i, col[t]] >= self.cfg.part_containment * len(obs.voxels)
            if len(obs.voxels) < self.cfg.min_seen_voxels or inside_own:
                continue
            others = [(u, col[u]) for u in continued - {t}]
            best = self._whole_for_part(obs, iou[i, col[t]] if t in col else 0.0, others, inter[i], iou[i], tracks)
            if best is not None:
                moves[i] = best
        moved_away = {owner_of[i] for i in moves}  # a track whose own observation moves takes none
        return {i: u for i, u in moves.items() if u not in moved_away}

    def _whole_for_part(self, obs, own_iou: float, others, inter, iou, tracks: Mapping) -> Optional[int]:
        """The track of ``others`` ((id, column) pairs) that part ``obs`` belongs to: the one holding most of
        it (at least part_containment), else the one it overlaps most, by part_iou_margin more than its own
        pair's IoU ``own_iou``; among those it looks like and no detector class keeps apart. None: none."""
        need, margin = self.cfg.part_containment * len(obs.voxels), self.cfg.part_iou_margin
        best, best_key = None, None
        for u, k in others:
            if inter[k] >= need:
                key = (1, inter[k])  # containment first
            elif margin > 0 and iou[k] >= own_iou + margin:
                key = (0, iou[k])
            else:
                continue
            if (best_key is not None and key < best_key) or named_apart(obs.label, tracks[u].det_label):
                continue
            if len(obs.feature) and cosine_matrix([obs.feature], [tracks[u].feature])[0, 0] < self.cfg.part_min_cos:
                continue
            best, best_key = u, key
        return best

    def _whole_of(self, i, obs, ids, inter_all, continued, tracks) -> Optional[int]:
        """The continued track this unmatched observation is a part of, or None."""
        n = max(1, len(obs.voxels))
        best, best_share = None, self.cfg.part_containment
        for k, tid in enumerate(ids):
            share = inter_all[i, k] / n
            if tid in continued and share >= best_share and len(obs.voxels) >= self.cfg.min_seen_voxels:
                cos = cosine_matrix([obs.feature], [tracks[tid].feature])[0, 0]
                if cos >= self.cfg.part_min_cos or not len(obs.feature):
                    best, best_share = tid, share
        return best


def spanned_neighbours(
    observations, pairs: Pairs, ids, visible_voxels, visible_pixels, masks, tracks: Mapping, consensus, cfg
) -> dict:
    """Observation index -> the tracks whose points it should hand over: a mask over two neighbours (a box
    spanning both) that continues track a covers most (span_coverage) of neighbour b's visible voxels in the
    image, where b took no observation of its own this keyframe and the view consensus so far holds a and b
    apart (more views apart than joint ones, counting those of a mask that opened its track). The pieces of one
    object are joint more often than apart, so a whole view still absorbs its pieces (consensus then merges
    them)."""
    continued = {tid for _, tid in pairs}
    free = [k for k in range(len(ids)) if ids[k] not in continued]
    pairs = [(i, t) for i, t in pairs if observations[i].mask_index >= 0]
    if not free or not pairs:
        return {}
    cover = MaskSet.of(masks).coverage(
        [observations[i].mask_index for i, _ in pairs], [visible_pixels[k] for k in free], cfg.min_seen_voxels
    )
    out: dict = {}
    for row, col in zip(*np.nonzero(cover >= cfg.span_coverage)):  # NaN (too few visible) compares False
        (i, owner), tid = pairs[row], ids[free[col]]
        joint, _ = consensus.counts(owner, tid)
        shown = visible_voxels[free[col]]
        swallowed = np.count_nonzero(isin_sorted(shown, tracks[owner].voxels)) > 0.5 * len(shown)
        if consensus.split_evidence(owner, tid) > joint and not swallowed:
            out.setdefault(i, []).append(tid)
    return out


def _intersections(voxels_a, voxels_b, iou: Optional[np.ndarray] = None) -> np.ndarray:
    """(len(a), len(b)) counts of shared keys, from their IoU (computed here when not given) and the sizes."""
    iou = pairwise_iou(voxels_a, voxels_b) if iou is None else iou
    a = np.array([len(v) for v in voxels_a], np.float64)[:, None]
    b = np.array([len(v) for v in voxels_b], np.float64)[None, :]
    return np.rint(iou * (a + b) / (1.0 + iou))


def spatial_gate(observations, tracks, max_gap_m: float) -> np.ndarray:
    """A pair is admissible only when the observation's box is within max_gap_m of the track's: appearance
    alone must never join two look-alike objects metres apart (eq. 1 gives them s >= alpha)."""
    bounds = np.array([geometry.point_bounds(o.points) for o in observations])  # (N, 2, 3)
    omin, omax = bounds[:, 0], bounds[:, 1]
    tmin = np.array([t.box_min for t in tracks])
    tmax = np.array([t.box_max for t in tracks])
    return geometry.box_gap(omin[:, None], omax[:, None], tmin[None], tmax[None]) <= max_gap_m


def associate_hungarian(
    score: np.ndarray, candidate_ids: Sequence[int], tau_match: float, margin: bool = True
) -> Pairs:
    """One-to-one assignment, pairs below tau_match rejected. The paper maximises the total score; with
    ``margin`` the total of s - tau_match over the pairs that pass, so the assignment never gives up one strong
    pair for two that barely pass (leaving an observation unmatched is worth 0, not -tau_match)."""
    from scipy.optimize import linear_sum_assignment

    if not margin:
        rows, cols = linear_sum_assignment(-score)
        return [(int(r), candidate_ids[c]) for r, c in zip(rows, cols) if score[r, c] >= tau_match]
    n, m = score.shape
    gain = np.where(score >= tau_match, score - tau_match, -1e6)
    gain = np.hstack([gain, np.zeros((n, n))])  # one "stay unmatched" column per observation: nothing is forced
    rows, cols = linear_sum_assignment(-gain)
    return [(int(r), candidate_ids[c]) for r, c in zip(rows, cols) if c < m and score[r, c] >= tau_match]


def associate_greedy(observations, candidate_ids, iou: np.ndarray, tau_match: float) -> Pairs:
    """Baseline: largest observation first, each takes the unused track with the best IoU >= tau_match."""
    pairs, used = [], set()
    for i in sorted(range(len(observations)), key=lambda k: -observations[k].pixel_count):
        for j in np.argsort(-iou[i], kind="stable"):
            if iou[i, j] < tau_match:
                break
            if j not in used:
                used.add(j)
                pairs.append((i, candidate_ids[j]))
                break
    return pairs


def associate_by_source_id(observations, tracks) -> Pairs:
    """Upper bound for studies: an observation continues the track opened from the same dataset instance id."""
    by_source = {t.source_id: t.id for t in tracks if t.source_id is not None}
    pairs, used = [], set()
    for i, o in enumerate(observations):
        tid = by_source.get(o.source_id)
        if o.source_id is not None and tid is not None and tid not in used:
            used.add(tid)
            pairs.append((i, tid))
    return pairs


def named_apart(label_a: Optional[str], label_b: Optional[str]) -> bool:
    """A detector named the two differently (both classes known): no appearance or view evidence joins them."""
    return bool(label_a and label_b and label_a != label_b)


def cosine_matrix(features_a: Sequence[np.ndarray], features_b: Sequence[np.ndarray]) -> np.ndarray:
    """(len(a), len(b)) cosine of L2-normalised descriptors; zeros when either side has none or dims differ
    (the spatial term then decides alone)."""
    if not len(features_a) or not len(features_b) or not len(features_a[0]) or not len(features_b[0]):
        return np.zeros((len(features_a), len(features_b)))
    fa, fb = np.stack(features_a), np.stack(features_b)
    if fa.shape[1] != fb.shape[1]:
        return np.zeros((len(fa), len(fb)))
    return np.clip(fa @ fb.T, -1.0, 1.0)


def pairwise_iou(voxels_a, voxels_b) -> np.ndarray:
    """(len(a), len(b)) voxel IoU between two lists of sorted unique key arrays."""
    na, nb = len(voxels_a), len(voxels_b)
    if na == 0 or nb == 0:
        return np.zeros((na, nb))
    size_a = np.array([len(v) for v in voxels_a], np.float64)
    size_b = np.array([len(v) for v in voxels_b], np.float64)
    keys_a = np.concatenate(voxels_a) if size_a.sum() else np.zeros(0, np.int64)
    if len(keys_a) == 0:
        return np.zeros((na, nb))
    keys_b = np.concatenate(voxels_b) if size_b.sum() else np.zeros(0, np.int64)
    if compiled.ENABLED:  # a merge per pair of sorted lists
        inter = compiled.intersections(keys_a, size_a.astype(np.int64), keys_b, size_b.astype(np.int64))
    else:
        inter = _sparse_intersections(keys_a, size_a, keys_b, size_b)
    union = size_a[:, None] + size_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def _sparse_intersections(keys_a, size_a, keys_b, size_b) -> np.ndarray:
    """pairwise_iou's shared-voxel counts in one sparse product."""
    from scipy.sparse import csr_matrix

    na, nb = len(size_a), len(size_b)
    uniq, inv_a = np.unique(keys_a, return_inverse=True)
    row_a = np.repeat(np.arange(na), size_a.astype(np.int64))
    row_b = np.repeat(np.arange(nb), size_b.astype(np.int64))
    pos = np.minimum(np.searchsorted(uniq, keys_b), len(uniq) - 1)
    hit = uniq[pos] == keys_b
    A = csr_matrix((np.ones(len(inv_a), np.float32), (row_a, inv_a.ravel())), shape=(na, len(uniq)))
    B = csr_matrix((np.ones(int(hit.sum()), np.float32), (row_b[hit], pos[hit])), shape=(nb, len(uniq)))
    return (A @ B.T).toarray()
