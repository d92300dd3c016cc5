import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _core_scene import core_config, cube, look_at, make_frame, orbit  # noqa: E402

from ros2_opentrack.config import OpenTrackConfig  # noqa: E402
from ros2_opentrack.pipeline import Pipeline  # noqa: E402
from ros2_opentrack.tracker import Tracker  # noqa: E402
from ros2_opentrack.types import Observation, TrackState  # noqa: E402

HW = (240, 320)
RED, GREEN = (200, 30, 30), (30, 200, 30)


def config(**tracking):
    return core_config(refine_every=0, **{f"tracking__{k}": v for k, v in tracking.items()})


def run(pipe, boxes, colors, poses, drop=()):
    results = []
    for i, T in enumerate(poses):
        f = make_frame(boxes, colors, T, hw=HW, index=i)
        f.masks = [m for m in f.masks if m.source_id not in drop]
        results.append(pipe.step(f))
    return results


def test_two_look_alike_chairs_3m_apart_stay_two_tracks():
    boxes = [cube((0, 0, 0.4), 0.6), cube((3, 0, 0.4), 0.6)]
    pipe = Pipeline(config())
    # first only the left chair is seen, then only the right one (the left one still in the frustum), then both
    poses = [
        look_at((-0.5, -3, 1.5), (0, 0, 0.4)),
        look_at((3.5, -3, 1.5), (3, 0, 0.4)),
        look_at((1.5, -4, 1.5), (1.5, 0, 0.4)),
    ]
    run(pipe, boxes, [RED, RED], poses[:1], drop={1})
    r = run(pipe, boxes, [RED, RED], poses[1:2], drop={0})[0]
    assert len(r.created) == 1  # a look-alike 3 m away is a new object, not the same track
    run(pipe, boxes, [RED, RED], poses[2:])
    assert len(pipe.tracker.tracks) == 2
    centres = sorted(round(float(i.centroid[0])) for i in pipe.finalize())
    assert centres == [0, 3]


def test_one_chair_from_far_apart_views_stays_one_track():
    boxes = [cube((0, 0, 0.4), (0.6, 0.6, 0.8))]
    pipe = Pipeline(config())
    poses = [look_at((-3, 0, 0.6), (0, 0, 0.4)), look_at((3, 0, 0.6), (0, 0, 0.4))]  # opposite sides
    r = run(pipe, boxes, [RED], poses)
    t_first = pipe.tracker.tracks[r[0].created[0]]
    assert r[1].created == [] and r[1].matched == 1 and len(pipe.tracker.tracks) == 1
    assert t_first.observations == 2


def test_orbit_of_three_objects_gives_three_tracks():
    boxes = [cube((0, 0, 0.4), 0.6), cube((3, 0, 0.4), 0.6), cube((1.5, 2, 0.3), (0.4, 0.4, 0.6))]
    pipe = Pipeline(config())
    results = run(pipe, boxes, [RED, RED, GREEN], orbit((1.5, 0.5, 0.3), 4.0, 1.5, np.arange(0, 360, 30)))
    assert len(pipe.tracker.tracks) == 3
    assert sum(t.observations for t in pipe.tracker.tracks.values()) == sum(r.n_observations for r in results)


def test_greedy_iou_baseline_and_oracle_association():
    boxes = [cube((0, 0, 0.4), (0.6, 0.6, 0.8))]
    poses = [look_at((-3, 0, 0.6), (0, 0, 0.4)), look_at((3, 0, 0.6), (0, 0, 0.4))]
    greedy = Pipeline(config(association="greedy_iou"))
    r = run(greedy, boxes, [RED], poses)
    assert len(r[1].created) == 1  # no appearance cue: opposite faces share no voxel, the baseline splits
    cfg = config(association="greedy_iou")
    cfg.masks.oracle_ids = True
    oracle = Pipeline(cfg)
    r = run(oracle, boxes, [RED], poses)
    assert r[1].created == [] and len(oracle.tracker.tracks) == 1


def test_lifecycle_active_dormant_rematched_then_terminated():
    boxes = [cube((0, 0, 0.4), 0.6)]
    pipe = Pipeline(config(dormant_after=3, tau_dorm=4))
    pose = look_at((-3, -1, 1.2), (0, 0, 0.4))
    r = run(pipe, boxes, [RED], [pose])
    tid = r[0].created[0]
    t = pipe.tracker.tracks[tid]
    run(pipe, boxes, [RED], [pose] * 2, drop={0})
    assert t.state == TrackState.ACTIVE and t.misses == 2
    run(pipe, boxes, [RED], [pose], drop={0})
    assert t.state == TrackState.DORMANT
    r = run(pipe, boxes, [RED], [pose])
    assert r[0].matched == 1 and r[0].created == [] and t.state == TrackState.ACTIVE and t.misses == 0
    results = run(pipe, boxes, [RED], [pose] * 7, drop={0})
    assert [x.terminated for x in results[:6]] == [[]] * 6 and results[6].terminated == [tid]
    assert tid not in pipe.tracker.tracks and len(pipe.tracker.index) == 0
    assert pipe.stats.terminated == 1


def test_out_of_view_and_occluded_tracks_do_not_age():
    boxes = [cube((0, 0, 0.4), 0.6), cube((-2, 0, 1.0), (0.2, 3.0, 2.0))]  # a wall that can hide the object
    pipe = Pipeline(config(dormant_after=2, tau_dorm=2))
    r = run(pipe, boxes, [RED, GREEN], [look_at((2, 0, 1.0), (0, 0, 0.4))], drop={1})
    t = pipe.tracker.tracks[r[0].created[0]]
    run(pipe, boxes, [RED, GREEN], [look_at((2, 0, 1.0), (5, 0, 0.4))] * 10, drop={1})  # looking away
    assert t.misses == 0 and t.state == TrackState.ACTIVE
    run(pipe, boxes, [RED, GREEN], [look_at((-3.5, 0, 1.0), (0, 0, 0.4))] * 10, drop={1})  # behind the wall
    assert t.misses == 0 and t.id in pipe.tracker.tracks


def _obs(center, feature):
    pts = (np.asarray(center) + np.random.default_rng(0).uniform(-0.2, 0.2, (200, 3))).astype(np.float32)
    from ros2_opentrack.geometry import voxel_keys

    return Observation(
        voxels=voxel_keys(pts, 0.05),
        points=pts,
        colors=np.zeros((200, 3), np.uint8),
        feature=np.asarray(feature, np.float32),
        pixel_count=200,
        box=np.zeros(4, np.float32),
    )


def test_hungarian_prefers_the_best_joint_assignment():
    cfg = config()
    tr = Tracker(cfg.tracking, cfg.refine, cfg.lift)
    frame = make_frame([], [], look_at((0, -5, 1), (0, 0, 0)), hw=HW)
    a = tr._open(_obs((0, 0, 0.5), [1, 0]), frame)
    b = tr._open(_obs((0.1, 0, 0.5), [0, 1]), frame)
    pairs = tr.associate([_obs((0.05, 0, 0.5), [0, 1]), _obs((0.05, 0, 0.5), [1, 0])], [a.id, b.id], tr.tracks)
    assert sorted(pairs) == [(0, b.id), (1, a.id)]


def test_candidates_come_from_the_spatial_index_only():
    cfg = config()
    tr = Tracker(cfg.tracking, cfg.refine, cfg.lift)
    frame = make_frame([], [], look_at((0, -3, 1), (0, 0, 0.4)), hw=HW)
    near = tr._open(_obs((0, 0, 0.4), [1, 0]), frame)
    for i in range(200):  # far behind the camera or far away
        tr._open(_obs((50 + i, 50, 0.4), [1, 0]), frame)
    behind = tr._open(_obs((0, -6, 1), [1, 0]), frame)
    cands = tr.candidates(frame)
    assert near.id in cands and behind.id not in cands and len(cands) == 1


def _cluster(center, n=200, seed=0):
    rng = np.random.default_rng(seed)
    pts = (np.asarray(center) + rng.uniform(-0.1, 0.1, (n, 3))).astype(np.float32)
    from ros2_opentrack.geometry import voxel_keys

    return Observation(
        voxels=voxel_keys(pts, 0.05),
        points=pts,
        colors=np.zeros((n, 3), np.uint8),
        feature=np.array([1.0, 0.0], np.float32),
        pixel_count=n,
        box=np.zeros(4, np.float32),
    )


def test_spatial_term_uses_the_part_of_the_track_this_camera_can_see():
    cfg = config(alpha=0.0, tau_match=0.8)  # IoU only, strict
    tr = Tracker(cfg.tracking, cfg.refine, cfg.lift)
    frame = make_frame([], [], look_at((0, -3, 1), (0, 0, 0.4)), hw=HW)
    front, back = _cluster((0, 0, 0.5)), _cluster((0, -6, 1.0), seed=1)  # back: behind the camera
    both = Observation(
        voxels=np.union1d(front.voxels, back.voxels),
        points=np.r_[front.points, back.points],
        colors=np.r_[front.colors, back.colors],
        feature=front.feature,
        pixel_count=400,
        box=np.zeros(4, np.float32),
    )
    t = tr._open(both, frame)
    whole = len(front.voxels) / len(both.voxels)  # IoU with every voxel of the track: about 0.5
    assert whole < 0.8
    assert tr.associate([front], [t.id], tr.tracks) == []  # union-of-all-views IoU: rejected
    visible = tr.associate.visible_voxels(frame, [t])[0][0]
    np.testing.assert_array_equal(visible, front.voxels)  # the back cluster is out of this frustum
    assert tr.associate([front], [t.id], tr.tracks, frame) == [(0, t.id)]  # view-consistent IoU = 1
    tr.cfg.visible_iou = False
    assert tr.associate([front], [t.id], tr.tracks, frame) == []


def test_contained_partial_track_merges_only_when_enabled_and_alike():
    cfg = config()
    frame = make_frame([], [], look_at((0, -3, 1), (0, 0, 0.4)), hw=HW)
    big = _cluster((0, 0, 0.5), n=2000)
    part = _cluster((0, 0, 0.5), n=2000)
    part.voxels = big.voxels[: len(big.voxels) // 5]  # one side: 20% of the object, IoU 0.2
    results = {}
    for tau_contain, feature in ((0.0, [1, 0]), (0.8, [0, 1]), (0.8, [1, 0])):
        cfg.refine.tau_contain = tau_contain
        tr = Tracker(cfg.tracking, cfg.refine, cfg.lift)
        a = tr._open(big, frame)
        a.observations = 5
        part.feature = np.asarray(feature, np.float32)
        b = tr._open(part, frame)
        results[(tau_contain, tuple(feature))] = tr.merge_duplicates(only_dirty=False)
        if results[(tau_contain, tuple(feature))]:
            assert results[(tau_contain, tuple(feature))] == {b.id: a.id}
    assert results[(0.0, (1, 0))] == {} and results[(0.8, (0, 1))] == {}  # off / look different: apart
    assert len(results[(0.8, (1, 0))]) == 1


def test_lookalike_neighbour_appearing_beside_a_seen_track_opens_its_own_track():
    """Two identical red boxes 0.5 m apart (inside max_gap_m, so the box gate lets the pair through). The first
    keyframe sees only A. In the second, B appears while A is plainly in view but its mask was missed (segmenters
    miss objects): B's observation shares no voxel with what the camera sees of A, so appearance alone (cos ~ 1,
    s >= alpha > tau_match) must not put B into A's track."""
    boxes = [cube((0, 0, 0.4), 0.4), cube((0, 0.9, 0.4), 0.4)]
    pose = look_at((-3, 0.45, 1.0), (0, 0.45, 0.4))

    def two_keyframes(pipe):
        first = run(pipe, boxes, [RED, RED], [pose], drop=(1,))[0]
        frame = make_frame(boxes, [RED, RED], pose, hw=HW, index=1)
        frame.masks = [m for m in frame.masks if m.source_id == 1]  # A in view, its mask missed
        return first, pipe.step(frame)

    pipe = Pipeline(config())
    first, second = two_keyframes(pipe)
    assert len(first.created) == 1 and second.matched == 0 and len(second.created) == 1
    assert len(pipe.tracker.tracks) == 2
    # the paper's score alone joins them: the seen-elsewhere gate is what keeps them apart
    plain = Pipeline(config(visible_iou=False))
    _, joined = two_keyframes(plain)
    assert joined.matched == 1 and joined.created == [] and len(plain.tracker.tracks) == 1


def test_a_part_moves_to_the_track_it_lies_in_unless_the_detector_classes_differ():
    """Association._reassign_parts on hand-made voxel sets: observation 1 was paired with track 20 but lies
    wholly inside track 10's visible voxels (which observation 0 continues), so it moves there; with a
    detector class other than track 10's (a laptop inside a table's box) it stays with its pair."""
    from types import SimpleNamespace

    from ros2_opentrack.association import Associator, pairwise_iou

    cfg = OpenTrackConfig().tracking
    visible = [np.arange(0, 100), np.arange(500, 540)]  # tracks 10 and 20
    feature = np.ones(4, np.float32) / 2
    tracks = {tid: SimpleNamespace(feature=feature, det_label="table") for tid in (10, 20)}
    moved = {}
    for label in ("table", "laptop"):
        observations = [
            SimpleNamespace(voxels=np.arange(0, 60), feature=feature, label="table"),
            SimpleNamespace(voxels=np.arange(60, 90), feature=feature, label=label),
        ]
        iou = pairwise_iou([o.voxels for o in observations], visible)
        assoc = Associator(cfg, OpenTrackConfig().lift)
        moved[label] = assoc._reassign_parts(observations, [(0, 10), (1, 20)], [10, 20], visible, iou, tracks)
    assert moved == {"table": {1: 10}, "laptop": {}}


def test_a_part_straddling_a_look_alike_neighbour_moves_to_the_track_it_overlaps_clearly_more():
    """Observation 1 was paired with track 20 but overlaps track 10 (which observation 0 continues) far more:
    IoU 40 / 145 = 0.28 against 10 / 115 = 0.09, though only 40 of its 85 voxels lie in track 10 (under
    part_containment). It moves by tracking.part_iou_margin (0.15), not with the margin off or raised past the
    gap of 0.19."""
    from types import SimpleNamespace

    from ros2_opentrack.association import Associator, pairwise_iou

    visible = [np.arange(0, 100), np.arange(500, 540)]  # tracks 10 and 20
    feature = np.ones(4, np.float32) / 2
    tracks = {tid: SimpleNamespace(feature=feature, det_label=None) for tid in (10, 20)}
    part = np.concatenate([np.arange(60, 100), np.arange(530, 545), np.arange(1000, 1030)])
    observations = [SimpleNamespace(voxels=np.arange(0, 60), feature=feature, label=None)]
    observations.append(SimpleNamespace(voxels=part, feature=feature, label=None))
    iou = pairwise_iou([o.voxels for o in observations], visible)
    assert iou[1].round(3).tolist() == [0.276, 0.087]
    moved = {}
    for margin in (0.15, 0.0, 0.25):
        cfg = OpenTrackConfig().tracking
        cfg.part_iou_margin = margin
        assoc = Associator(cfg, OpenTrackConfig().lift)
        moved[margin] = assoc._reassign_parts(observations, [(0, 10), (1, 20)], [10, 20], visible, iou, tracks)
    assert moved == {0.15: {1: 10}, 0.0: {}, 0.25: {}}


@pytest.mark.parametrize("margin, remembered", [(0.05, True), (0.03, False), (0.0, False)])
def test_a_new_track_remembers_the_track_its_opening_observation_nearly_continued(margin, remembered):
    """An observation beside a track (no voxel shared, cosine 0.72: eq. 1 gives 0.36 < tau_match 0.4) opens a new
    track, which remembers the one it nearly continued (Track.born_near; refine.fragment_adopters gives its points
    there if it stays a fragment) when the score is within refine.adopt_near_miss of tau_match (0: off). A
    look-alike (cosine 1) beyond tracking.max_gap_m is no near miss: the spatial gate rules it out; an observation
    no gate admits anywhere remembers none (0). (Whole-track IoU: these observations have no image boxes for the
    "seen elsewhere" gate.)"""
    cfg = config(visible_iou=False)
    cfg.refine.adopt_near_miss = margin
    tr = Tracker(cfg.tracking, cfg.refine, cfg.lift)
    frame = make_frame([], [], look_at((0, -4, 1), (0, 0, 0.5)), hw=HW)
    alike = np.array([0.72, np.sqrt(1 - 0.72**2)], np.float32)
    near = tr._open(_obs((0.0, 0, 0.5), [1, 0]), frame)
    tr._open(_obs((2.0, 0, 0.5), alike), frame)  # 1.6 m between the boxes
    out = tr.step(frame, [_obs((0.6, 0, 0.5), alike), _obs((-2.5, 0, 0.5), [0, 1])])
    assert len(out.created) == 2, out.matched
    beside, alone = (tr.tracks[t] for t in out.created)
    assert beside.born_near == (near.id if remembered else 0)
    assert alone.born_near == 0


def _panel(x0, x1, z0, z1, y, feature, step=0.02):
    """A hand-built observation: a vertical grid of points at depth ``y`` (the camera below looks along +y)."""
    from ros2_opentrack.geometry import voxel_keys

    x, z = np.meshgrid(np.arange(x0, x1, step), np.arange(z0, z1, step))
    pts = np.column_stack([x.ravel(), np.full(x.size, y), z.ravel()]).astype(np.float32)
    return Observation(
        voxels=voxel_keys(pts, 0.05),
        points=pts,
        colors=np.zeros((len(pts), 3), np.uint8),
        feature=np.asarray(feature, np.float32),
        pixel_count=len(pts),
        box=np.zeros(4, np.float32),
    )


@pytest.mark.parametrize("surface_margin_m, continues", [(0.03, "door"), (0.0, "cabinet")])
def test_a_mask_that_leaves_out_a_track_in_full_view_does_not_continue_it_by_appearance(surface_margin_m, continues):
    """A door, with a low cabinet 8 cm in front of its lower left part. The door's track holds only that part
    (now hidden behind the cabinet, within the occlusion margin); this keyframe's door mask shows the rest of the
    door (no voxel shared with either track) and the segmenter dropped the cabinet's mask. The mask looks a
    little more like the cabinet (eq. 1: 0.45 vs 0.41), but the camera sees the cabinet's surface in full view
    and the mask leaves it out: it continues the door (tracking.surface_margin_m; 0: off, and the cabinet takes
    it)."""
    from ros2_opentrack.lifting import lift_masks
    from ros2_opentrack.types import Mask2D

    cfg = config(surface_margin_m=surface_margin_m)
    tr = Tracker(cfg.tracking, cfg.refine, cfg.lift)
    cabinet_box, door_box = ((-1.0, 0.91, 0.0), (-0.1, 0.96, 0.9)), ((-1.0, 0.99, 0.0), (1.0, 1.03, 2.0))
    frame = make_frame([cabinet_box, door_box], [RED, RED], look_at((0, -2, 1.0), (0, 1, 1.0)), hw=HW)
    (door_mask,) = [m.mask for m in frame.masks if m.source_id == 1]
    ys, xs = np.nonzero(door_mask)
    boxed = Mask2D(door_mask, box=np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32))
    (obs,), _ = lift_masks(frame, [boxed], cfg.lift, cfg.dbscan, 0.05, np.random.default_rng(0))

    def unit(degrees):
        return [np.cos(np.radians(degrees)), np.sin(np.radians(degrees))]

    obs.feature = np.asarray(unit(0), np.float32)
    cabinet = tr._open(_panel(-0.95, -0.15, 0.05, 0.85, 0.91, unit(np.degrees(np.arccos(0.9)))), frame)
    door = tr._open(_panel(-0.9, -0.3, 0.1, 0.7, 0.99, unit(-np.degrees(np.arccos(0.82)))), frame)
    assert len(np.intersect1d(obs.voxels, door.voxels)) == len(np.intersect1d(obs.voxels, cabinet.voxels)) == 0
    shown = tr.associate.visible_voxels(frame, [cabinet, door])
    visible, surface = shown.voxels, shown.surface_pixels
    assert len(visible[1]) > 0.9 * len(door.voxels) and len(surface[1]) == 0  # behind the cabinet, in the margin
    assert len(surface[0]) == (len(cabinet.voxels) if surface_margin_m else 0)
    pairs = tr.associate([obs], [cabinet.id, door.id], tr.tracks, frame, [door_mask])
    assert pairs == [(0, {"door": door.id, "cabinet": cabinet.id}[continues])]


def _seen_end_on(x, n=3):
    """n close views (1 m away) of the stretch of the floor-standing scene around x, stepping 5 cm sideways."""
    return [look_at((x + dx, -1.0, 1.0), (x + dx, 0, 0.4)) for dx in np.arange(n) * 0.05]


@pytest.mark.parametrize("out_of_view_voxels", [10, 0])
def test_a_look_alike_beside_a_track_out_of_view_opens_its_own_track_and_stays_apart(out_of_view_voxels):
    """Two look-alike boxes 0.8 m apart. Close views show the left one, then only the right one: the left one's
    track is wholly out of the frustum, and the right one's first mask shares no voxel with it but looks the
    same (eq. 1: 0.5 >= tau_match). It opens a track of its own, linked to the left one (Track.born_beside); a wide
    view then shows both, each in a mask of its own, and they end as two instances with their own points. With
    tracking.out_of_view_voxels 0 the right box continues the left box's track, which keeps both."""
    boxes = [cube((-0.8, 0, 0.4), (0.8, 0.6, 0.8)), cube((0.8, 0, 0.4), (0.8, 0.6, 0.8))]
    pipe = Pipeline(config(out_of_view_voxels=out_of_view_voxels))
    (left,) = run(pipe, boxes, [RED, RED], _seen_end_on(-0.8), drop={1})[0].created
    right = run(pipe, boxes, [RED, RED], _seen_end_on(0.8), drop={0})
    if not out_of_view_voxels:
        assert right[0].created == [] and list(pipe.tracker.tracks) == [left]
        return
    (first,) = right[0].created
    assert pipe.tracker.tracks[first].born_beside == left
    run(pipe, boxes, [RED, RED], [look_at((dx, -3.5, 1.5), (0, 0, 0.4)) for dx in (0.0, 0.1)])
    instances = sorted(pipe.finalize(), key=lambda i: i.centroid[0])
    assert [round(float(i.centroid[0]), 1) for i in instances] == [-0.8, 0.8]
    for inst, x in zip(instances, (-0.8, 0.8)):
        assert np.all(np.abs(inst.points[:, 0] - x) <= 0.45)  # its own points only (half-width 0.4 + a voxel)


def test_an_objects_far_half_seen_after_its_near_half_left_view_joins_it_at_the_end():
    """One 2.4 m table seen close up, its left half first, then its right half with the left half out of view:
    the right half's first mask opens a track beside the left half's (Track.born_beside), and no later view
    shows the two apart (nor together). Eq. 1's match stands when the run ends (refine._beside_unrefuted): one
    instance spanning the table."""
    table = [cube((0, 0, 0.4), (2.4, 0.6, 0.8))]
    pipe = Pipeline(config())
    (near,) = run(pipe, table, [RED], _seen_end_on(-0.8))[0].created
    far = run(pipe, table, [RED], _seen_end_on(0.8))
    assert pipe.tracker.tracks[far[0].created[0]].born_beside == near and len(pipe.tracker.tracks) == 2
    (table_instance,) = pipe.finalize()
    assert table_instance.points[:, 0].min() < -1.0 and table_instance.points[:, 0].max() > 1.0
