import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _core_scene import core_config, cube, look_at, make_frame, orbit  # noqa: E402

from ros2_opentrack import geometry  # noqa: E402
from ros2_opentrack.association import pairwise_iou  # noqa: E402
from ros2_opentrack.pipeline import Pipeline  # noqa: E402
from ros2_opentrack.refine import expand  # noqa: E402
from ros2_opentrack.types import Presence  # noqa: E402
from ros2_opentrack.voxel_store import PointStore, SceneMap  # noqa: E402

HW = (240, 320)
RED = (200, 30, 30)


def config():
    return core_config(refine_every=0)


def test_point_store_votes_and_keeps_consistent_voxels():
    s = PointStore(0.1, cap=100)
    s.add_points(np.array([[0.05, 0.05, 0.05], [1.05, 0.05, 0.05], [2.05, 0.05, 0.05]]), np.zeros((3, 3), np.uint8))
    for _ in range(10):
        s.vote(np.array([True, True, False]), np.array([True, False, False]))
    s.vote(np.array([True, True, False]), np.array([False, True, False]))  # voxel 1 once in the mask
    assert s.visible.tolist() == [11, 11, 0] and s.in_mask.tolist() == [10, 1, 0]
    assert s.kept(0.5, 2).tolist() == [True, False, False]  # 0 votes and never in mask: not kept
    assert s.kept(0.05, 2).tolist() == [True, True, False]


def test_point_store_cap_and_merge_add_counters():
    a = PointStore(0.1, cap=2)
    a.add_points(np.array([[0.05, 0, 0], [0.15, 0, 0], [0.25, 0, 0]]), np.zeros((3, 3), np.uint8))
    assert len(a) == 2
    a.vote(np.array([True, True]), np.array([True, True]))
    b = PointStore(0.1, cap=10)
    b.add_points(np.array([[0.05, 0, 0], [0.55, 0, 0]]), np.zeros((2, 3), np.uint8))
    b.vote(np.array([True, True]), np.array([True, False]))
    a.cap = 10
    a.merge(b)
    assert len(a) == 3 and a.visible.tolist() == [2, 1, 1] and a.in_mask.tolist() == [2, 1, 0]


def test_refinement_removes_planted_outliers():
    boxes = [cube((0, 0, 0.4), 0.6)]
    cfg = config()
    cfg.refine.tau_vis = 0.8  # the paper's value for fully observed scenes: floating points near the object
    pipe = Pipeline(cfg)  # project into its mask from some views (4 of 9 here), never from most
    poses = orbit((0, 0, 0.4), 3.0, 1.5, np.arange(0, 360, 30))
    r = pipe.step(make_frame(boxes, [RED], poses[0], hw=HW, index=0))
    track = pipe.tracker.tracks[r.created[0]]
    # depth bleeding: points floating beside the object and on the floor behind it joined the track
    outliers = np.array([[0.0, 0.7, 0.4], [0.5, 0.5, 0.5], [-0.6, 0.0, 0.3], [0.7, -0.7, 0.01], [0.0, 0.0, 1.2]])
    track.store.add_points(outliers, np.zeros((5, 3), np.uint8))
    track.store.in_mask[np.isin(track.store.keys, geometry.voxel_keys(outliers, 0.02))] = 1
    for i, T in enumerate(poses[1:], 1):
        pipe.step(make_frame(boxes, [RED], T, hw=HW, index=i))
    (inst,) = pipe.finalize()
    lo, hi = boxes[0]
    inside = ((inst.points >= lo - 0.03) & (inst.points <= hi + 0.03)).all(axis=1)
    assert inside.all()  # every outlier voted out
    assert len(inst.points) > 1000  # the object itself stays


def test_split_track_is_merged_into_the_longer_one():
    cfg = config()
    cfg.masks.oracle_ids = True  # a new source id per frame: every observation opens a track (a split)
    boxes = [cube((0, 0, 0.4), 0.6)]
    pipe = Pipeline(cfg)
    results = []
    for i in range(3):
        f = make_frame(boxes, [RED], look_at((-3, -1 + 0.2 * i, 1.2), (0, 0, 0.4)), hw=HW, index=i)
        f.masks[0].source_id = 100 + i
        results.append(pipe.step(f))
    ids = [r.created[0] for r in results]
    assert len(pipe.tracker.tracks) == 3
    pipe.tracker.tracks[ids[1]].observations = 5  # the longest survives
    merged = pipe._refine_and_merge(only_dirty=False)
    assert merged == {ids[0]: ids[1], ids[2]: ids[1]}
    (inst,) = pipe.instances()
    assert inst.id == ids[1] and inst.observations == 7
    assert pipe.stats.merged == 2


def test_touching_tracks_the_consensus_joins_merge_though_their_boxes_do_not_overlap():
    """Two halves of one table, 6 cm apart across a cell boundary of the box index (1 m cells), as two tracks
    whose boxes do not overlap: view consensus (three joint views, none apart) makes them one object, and
    merging must find the pair though the index cells of one half's box do not hold the other."""
    cfg = config()
    cfg.masks.oracle_ids = True
    halves = [cube((0.72, 0.5, 0.4), (0.5, 0.6, 0.8)), cube((1.28, 0.5, 0.4), (0.5, 0.6, 0.8))]
    pipe = Pipeline(cfg)
    pipe.step(make_frame(halves, [RED, RED], look_at((1.0, -2.5, 1.2), (1.0, 0.5, 0.4)), hw=HW, index=0))
    a, b = sorted(pipe.tracker.tracks)
    ta, tb = pipe.tracker.tracks[a], pipe.tracker.tracks[b]
    assert ta.box_max[0] < 1.0 < tb.box_min[0]  # apart in x, either side of a cell boundary
    for _ in range(3):
        pipe.tracker.consensus._count(pipe.tracker.consensus.joint, a, b)
    merged = pipe._refine_and_merge(only_dirty=False)
    assert merged == {b: a} or merged == {a: b}
    assert len(pipe.tracker.tracks) == 1


@pytest.mark.parametrize(
    "case, merges",
    [
        ("seen once as one", True),
        ("also seen apart", False),
        ("rule off", False),
        ("another colour", False),
        ("another detector class", False),
        ("in masks of their own in 2 keyframes", True),
        ("in masks of their own in 3 keyframes", False),
    ],
)
def test_halves_seen_once_in_one_mask_and_never_apart_merge_when_they_look_alike(case, merges):
    """The two halves of a long cabinet, tracked apart (a scan along it saw them in turn), touching: one joint
    view and none apart joins them when they look alike, unless a view held them apart, their descriptors
    disagree, a detector named them differently, more keyframes than refine.consensus_once_max_both_masked (2)
    gave each a mask of its own (two neighbours in view together), or the rule is off
    (refine.consensus_once_cos = 0)."""
    cfg = config()
    cfg.masks.oracle_ids = True
    cfg.refine.handover_cos = 0.0  # counts set by hand below: two tracks born together would pass for a handover
    if case == "rule off":
        cfg.refine.consensus_once_cos = 0.0
    colours = [RED, (30, 30, 200) if case == "another colour" else RED]
    halves = [cube((0.6, 0.5, 0.4), (0.4, 0.4, 0.8)), cube((1.0, 0.5, 0.4), (0.4, 0.4, 0.8))]
    pipe = Pipeline(cfg)
    pipe.step(make_frame(halves, colours, look_at((0.8, -2.0, 1.2), (0.8, 0.5, 0.4)), hw=HW, index=0))
    a, b = sorted(pipe.tracker.tracks)
    consensus = pipe.tracker.consensus
    assert consensus.both_masked(a, b) == 1  # the keyframe that opened both
    consensus.joint.clear()  # what the views said is set by hand below
    consensus.apart.clear()
    consensus.both.clear()
    consensus._count(consensus.joint, a, b)
    if case.startswith("in masks of their own"):
        for _ in range(int(case.split()[-2])):
            consensus._count(consensus.both, a, b)
    if case == "also seen apart":
        consensus._count(consensus.apart, a, b)
    if case == "another detector class":
        pipe.tracker.tracks[a].det_label, pipe.tracker.tracks[b].det_label = "oven", "refrigerator"
    merged = pipe._refine_and_merge(only_dirty=False)
    assert (len(pipe.tracker.tracks) == 1) == merges, merged
    assert bool(merged) == merges


@pytest.mark.parametrize(
    "case, merges",
    [
        ("handed over", True),
        ("returned to the first half", False),
        ("the new one seen once", False),
        ("in view together", False),
        ("another colour", False),
        ("another detector class", False),
        ("rule off", False),
    ],
)
def test_a_track_that_hands_over_to_a_new_one_beside_it_is_merged(case, merges):
    """A long cabinet scanned along at close range: its left half is seen in three keyframes, then its right
    half in three, never both in one view, so two tracks open (true ids). Their lives do not overlap, no view
    held them apart, their voxels touch and they look alike: one object (refine.handover_cos). They stay two
    when the camera came back to the left half (their lives overlap: a neighbour seen before and after), when
    the new track was seen once (refine.handover_min_observations), when one view showed both in masks of their
    own, when they look different or were named differently, or when the rule is off."""
    cfg = config()
    cfg.masks.oracle_ids = True
    if case == "rule off":
        cfg.refine.handover_cos = 0.0
    colours = [RED, (30, 30, 200) if case == "another colour" else RED]
    halves = [cube((0.5, 0.5, 0.4), (1.0, 0.5, 0.8)), cube((1.5, 0.5, 0.4), (1.0, 0.5, 0.8))]
    xs = [0.3, 0.4, 0.5] + ([1.0] if case == "in view together" else [])
    xs += [1.5] if case == "the new one seen once" else [1.5, 1.6, 1.7]
    xs += [0.4, 0.3] if case == "returned to the first half" else []
    pipe = Pipeline(cfg)
    for i, x in enumerate(xs):
        frame = make_frame(halves, colours, look_at((x, -0.3, 0.9), (x, 0.5, 0.4)), hw=HW, index=i)
        assert len(frame.masks) == (2 if x == 1.0 else 1)  # the close view sees one half at a time
        pipe.step(frame)
    assert len(pipe.tracker.tracks) == 2
    a, b = (pipe.tracker.tracks[t] for t in sorted(pipe.tracker.tracks))
    if case == "another detector class":
        a.det_label, b.det_label = "cabinet", "refrigerator"
    lives = (a.first_keyframe, a.last_keyframe, b.first_keyframe, b.last_keyframe)
    expected = {"returned to the first half": (1, 8, 4, 6), "in view together": (1, 4, 4, 7)}
    expected["the new one seen once"] = (1, 3, 4, 4)
    assert lives == expected.get(case, (1, 3, 4, 6))
    merged = pipe._refine_and_merge(only_dirty=False)
    assert (merged == {b.id: a.id}) == merges, merged
    assert len(pipe.tracker.tracks) == (1 if merges else 2)
    if merges:
        (kept,) = pipe.tracker.tracks.values()
        assert (kept.first_keyframe, kept.last_keyframe) == (1, 6)
        assert kept.box_min[0] < 0.1 and kept.box_max[0] > 1.9  # the whole cabinet


def test_pairwise_iou_matches_the_definition():
    a = [np.array([1, 2, 3]), np.array([10, 11])]
    b = [np.array([2, 3, 4, 5]), np.array([11]), np.array([], np.int64)]
    iou = pairwise_iou(a, b)
    np.testing.assert_allclose(iou, [[2 / 5, 0, 0], [0, 0.5, 0]])
    assert pairwise_iou([np.array([], np.int64)], [np.array([1])]).tolist() == [[0.0]]


def _line_scene_and_track():
    """A 1 m line of scene voxels (2 cm) and a track holding its first 10, all seen inside the track's mask."""
    scene = SceneMap(0.02, 10_000)
    line = np.stack([np.arange(0, 1.0, 0.02) + 0.01, np.full(50, 0.01), np.full(50, 0.01)], 1)
    scene.add(line, np.zeros((50, 3), np.uint8))
    s = PointStore(0.02, cap=1000)
    s.add_points(line[:10], np.zeros((10, 3), np.uint8))
    s.in_mask[:] = 1
    return scene, s, line


def test_expansion_adds_scene_voxels_near_the_track_only():
    scene, s, line = _line_scene_and_track()
    added = expand(s, scene, 0.03)  # radius 0.03 m = 1.5 voxels -> rounds to 2 voxels
    assert added == 2
    assert s.kept(0.1, 2).sum() == 10  # unvoted expansion candidates wait for their votes
    scene_small = SceneMap(0.02, 20)
    scene_small.add(line, np.zeros((50, 3), np.uint8))
    assert scene_small.n_points <= 20  # the cap holds (oldest blocks dropped)


def test_expansion_grows_from_in_mask_voxels_only_never_from_candidates():
    scene, s, _ = _line_scene_and_track()
    assert expand(s, scene, 0.03) == 2
    assert expand(s, scene, 0.03) == 0  # unvoted candidates do not seed more: no creep along the line
    assert len(s) == 12


def test_point_store_inserts_keep_keys_sorted_and_centres_in_step():
    s = PointStore(0.1, cap=100)
    rng = np.random.default_rng(3)
    s.add_points(rng.uniform(0, 1, (30, 3)), np.zeros((30, 3), np.uint8))
    s.centers()  # cached, then updated in place by the next insert
    s.add_points(rng.uniform(-1, 2, (40, 3)), np.full((40, 3), 7, np.uint8))
    assert np.all(np.diff(s.keys) > 0) and len(s.colors) == len(s.keys) == len(s.visible)
    np.testing.assert_allclose(s.centers(), geometry.voxel_centers(s.keys, 0.1))
    s.prune(np.arange(len(s)) % 3 != 0)  # the cached centres follow a prune too
    np.testing.assert_array_equal(s.centers(), geometry.voxel_centers(s.keys, 0.1))


def _set_arrays(store, n):
    store.keys, store.colors = store.keys[:n].copy(), store.colors[:n].copy()
    store.visible, store.in_mask, store._centers = store.visible[:n].copy(), store.in_mask[:n].copy(), None


@pytest.mark.parametrize("compiled_kernels", [True, False])
def test_point_store_box_follows_inserts_prunes_merges_and_loaded_keys(compiled_kernels, monkeypatch):
    """The cached key bounds behind box() grow with each insert and are recomputed after anything else replaced
    the keys: the box always equals the one of the voxel centres."""
    from ros2_opentrack import compiled

    monkeypatch.setattr(compiled, "ENABLED", compiled.ENABLED and compiled_kernels)
    rng = np.random.default_rng(5)

    def expected(store):
        c = geometry.voxel_centers(store.keys, store.voxel)
        return c.min(axis=0) - store.voxel / 2, c.max(axis=0) + store.voxel / 2

    s = PointStore(0.1, cap=10**6)
    steps = [
        lambda: s.add_points(rng.uniform(0, 1, (50, 3)), np.zeros((50, 3), np.uint8)),
        lambda: s.add_points(rng.uniform(-2, 0.5, (20, 3)), np.zeros((20, 3), np.uint8)),  # grows down
        lambda: s.add_points(rng.uniform(0.2, 0.4, (20, 3)), np.zeros((20, 3), np.uint8)),  # inside: no change
        lambda: s.prune(s.centers()[:, 0] > -1.0),  # shrinks
        lambda: s.add_points(rng.uniform(2, 3, (5, 3)), np.zeros((5, 3), np.uint8)),  # after a prune
        lambda: _set_arrays(s, len(s) // 2),  # arrays set directly (as a loaded map state does)
    ]
    other = PointStore(0.1, cap=10**6)
    other.add_points(rng.uniform(4, 5, (30, 3)), np.zeros((30, 3), np.uint8))
    steps.append(lambda: s.merge(other))
    for step in steps:
        step()
        for got, want in zip(s.box(), expected(s)):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert s.box()[1][0] > 4.9 and s.box()[0][0] > -1.1


def test_instance_score_is_detector_score_times_track_length_objectness():
    from ros2_opentrack.pipeline import objectness

    assert objectness(10, 10.0) == 0.5 and objectness(30, 10.0) == 0.75 and objectness(3, 0.0) == 1.0
    boxes = [cube((0, 0, 0.4), 0.6)]
    cfg = config()
    pipe = Pipeline(cfg)
    for i, T in enumerate(orbit((0, 0, 0.4), 3.0, 1.5, [-100, -90, -80])):
        f = make_frame(boxes, [RED], T, hw=HW, index=i)
        for m in f.masks:
            m.score = 0.8
        pipe.step(f)
    (inst,) = pipe.finalize()
    assert inst.observations == 3
    assert inst.score == pytest.approx(0.8 * 3 / (3 + cfg.refine.objectness_half_obs))


def test_expansion_neighbourhood_query_equals_the_offset_definition():
    """refine._within_voxels (a dense-grid lookup) selects exactly the keys that some offset of
    geometry.key_neighbourhood(r) maps onto a seed."""
    from ros2_opentrack.refine import _within_voxels
    from ros2_opentrack.voxel_store import isin_sorted

    rng = np.random.default_rng(0)
    for r in (1, 2, 3):
        seeds = np.unique(geometry.pack_keys(rng.integers(0, 40, (500, 3))))
        keys = np.unique(geometry.pack_keys(rng.integers(-3, 43, (5000, 3))))
        expected = np.zeros(len(keys), bool)
        for d in geometry.key_neighbourhood(r):
            expected |= isin_sorted(keys + d, seeds)
        assert 0 < expected.sum() < len(keys)
        np.testing.assert_array_equal(_within_voxels(keys, seeds, r), expected)


@pytest.mark.parametrize("n_old", [300, 3000])  # 3000: past 1024 rows the (N, 3) arrays move as whole rows
def test_point_store_add_keys_equals_inserting_each_array(n_old):
    """The shared-slot merge of add_keys gives what np.insert per array gave: sorted keys, first colour wins,
    given counters carried, cached centres in step."""
    rng = np.random.default_rng(5)
    s = PointStore(0.05, cap=10_000)
    s.add_keys(geometry.pack_keys(rng.integers(0, 20, (n_old, 3))), rng.integers(0, 255, (n_old, 3)).astype(np.uint8))
    assert n_old < 1024 or len(s) >= 1024
    s.centers()
    old = (s.keys.copy(), s.colors.copy(), s.visible.copy(), s.in_mask.copy())
    keys = geometry.pack_keys(rng.integers(-5, 25, (400, 3)))
    colors = rng.integers(0, 255, (400, 3)).astype(np.uint8)
    vis, inm = rng.integers(0, 9, 400).astype(np.uint16), rng.integers(0, 9, 400).astype(np.uint16)
    s.add_keys(keys, colors, vis, inm)
    uniq, first = np.unique(keys, return_index=True)
    new = ~np.isin(uniq, old[0])
    at = np.searchsorted(old[0], uniq[new])
    src = first[new]
    np.testing.assert_array_equal(s.keys, np.insert(old[0], at, uniq[new]))
    np.testing.assert_array_equal(s.colors, np.insert(old[1], at, colors[src], axis=0))
    np.testing.assert_array_equal(s.visible, np.insert(old[2], at, vis[src]))
    np.testing.assert_array_equal(s.in_mask, np.insert(old[3], at, inm[src]))
    np.testing.assert_array_equal(s.centers(), geometry.voxel_centers(s.keys, 0.05))


def test_point_store_box_equals_reducing_the_centres():
    rng = np.random.default_rng(6)
    s = PointStore(0.02, cap=10_000)
    s.add_points(rng.uniform(-1, 1, (500, 3)), np.zeros((500, 3), np.uint8))
    lo, hi = s.box()
    assert lo.dtype == hi.dtype == np.float32
    np.testing.assert_array_equal(lo, s.centers().min(axis=0) - 0.01)
    np.testing.assert_array_equal(hi, s.centers().max(axis=0) + 0.01)


def test_scene_map_box_query_trimmed_to_an_x_range_is_the_full_query_filtered_in_order():
    rng = np.random.default_rng(7)
    scene = SceneMap(0.02, max_points=1_000_000)
    scene.add(rng.uniform(-2, 2, (20_000, 3)).astype(np.float32), rng.integers(0, 255, (20_000, 3)).astype(np.uint8))
    keys, colors = scene.in_box((-0.5, -0.5, -0.5), (0.7, 0.5, 0.6))
    x = geometry.unpack_keys(keys)[:, 0]
    inside = (x >= -20) & (x <= 31)
    assert 0 < inside.sum() < len(keys)
    got_keys, got_colors = scene.in_box((-0.5, -0.5, -0.5), (0.7, 0.5, 0.6), x_within=(-20, 31))
    np.testing.assert_array_equal(got_keys, keys[inside])
    np.testing.assert_array_equal(got_colors, colors[inside])


@pytest.mark.parametrize(
    "case, adopted",
    [("same colour", True), ("another colour", False), ("held apart", False), ("removed", False), ("rule off", False)],
)
def test_a_piece_seen_once_joins_the_object_it_touches_at_the_end(case, adopted):
    """A small box on the side of a big one, the same colour, has a mask of its own in the first keyframe only
    (the later views, from the other side, cannot see it): its track is seen once, too few to be reported
    (refine.min_observations 2), so its points would be lost. At finalize it lends them to the big box's instance,
    unless it looks different, a view held the two apart, change detection marked the big box removed or the rule is
    off (refine.adopt_fragments_cos = 0). The tracks stay as they were (a map state saved after the run resumes as if
    it had gone on)."""
    cfg = core_config(refine_every=0, min_observations=2, masks__oracle_ids=True)
    if case == "rule off":
        cfg.refine.adopt_fragments_cos = 0.0
    big, piece = cube((0.0, 0.0, 0.4), (0.6, 0.6, 0.8)), cube((0.4, 0.0, 0.3), (0.2, 0.3, 0.3))
    colours = [RED, (30, 30, 200) if case == "another colour" else RED]
    pipe = Pipeline(cfg)
    poses = [look_at((2.5, 0.3, 1.2), (0.0, 0.0, 0.4))] + orbit((0.0, 0.0, 0.4), 2.5, 1.2, [150, 170, 190, 210])
    for i, T in enumerate(poses):
        pipe.step(make_frame([big, piece], colours, T, hw=HW, index=i))
    by_source = {t.source_id: t for t in pipe.tracker.tracks.values()}
    assert by_source[0].observations == 5 and by_source[1].observations == 1  # the later views never saw it
    if case == "held apart":
        pipe.tracker.consensus._count(pipe.tracker.consensus.apart, by_source[0].id, by_source[1].id)
    if case == "removed":  # change detection saw the big box gone: what is left at its place is not part of it
        pipe.tracker.changes._set(by_source[0], Presence.REMOVED, stamp=9.0)
    (inst,) = pipe.finalize()  # the piece alone is never reported
    assert inst.id == by_source[0].id and by_source[1].id in pipe.tracker.tracks
    lo, hi = piece
    in_piece = np.all((inst.points >= lo - 0.01) & (inst.points <= hi + 0.01), axis=1)
    assert (in_piece.sum() > 50) == adopted, in_piece.sum()


def _fragment_scene(born_near: bool, held_apart: bool = False, near_cos: float = 0.78):
    """A door seen in two ends 0.5 m apart, on a big cabinet front of nearly its colour: the door's track (3
    observations), the cabinet's (10, touching everything) and a piece of the door seen once at the far end,
    touching the cabinet only. Features in 2-D: the piece has cosine 0.83 with the cabinet, ``near_cos`` with the
    door."""
    from test_tracker import _obs

    from ros2_opentrack.tracker import Tracker

    cfg = core_config(refine_every=0, min_observations=2)
    tr = Tracker(cfg.tracking, cfg.refine, cfg.lift)
    frame = make_frame([], [], look_at((0, -4, 1), (0, 0, 0.5)), hw=HW)

    def unit(degrees):
        return [np.cos(np.radians(degrees)), np.sin(np.radians(degrees))]

    piece_at = np.degrees(np.arccos(near_cos))  # the door's feature at 0 degrees
    door = tr._open(_obs((0.0, 0, 0.5), unit(0)), frame)
    cabinet = tr._open(_obs((0.45, 0.1, 0.5), unit(piece_at - np.degrees(np.arccos(0.83)))), frame)
    cabinet.store.add_points(_obs((1.0, 0.1, 0.5), [1, 0]).points, np.zeros((200, 3), np.uint8))  # 0.25-1.2 m
    cabinet.update_box()
    tr.index.insert(cabinet.id, cabinet.box_min, cabinet.box_max)
    piece = tr._open(_obs((0.9, 0, 0.5), unit(piece_at)), frame)  # 0.7-1.1 m; the door ends at 0.2 m
    door.observations, cabinet.observations = 3, 10
    piece.born_near = door.id if born_near else 0
    if held_apart:
        tr.consensus._count(tr.consensus.apart, door.id, piece.id)
    return tr, door, cabinet, piece


@pytest.mark.parametrize(
    "case, goes_to",
    [("nearly continued", "door"), ("no near miss", "cabinet"), ("held apart", "cabinet"), ("unlike", "cabinet")],
)
def test_a_piece_seen_once_goes_to_the_track_it_nearly_continued(case, goes_to):
    """refine.fragment_adopters: a fragment's points go to the reported track its opening observation nearly
    continued (Track.born_near: the best score the association's gates admitted), though it does not touch it
    and a touching neighbour looks more like it; to the touching look-alike when it has no near miss, when a view
    held it apart from that track, or when that track looks too different (cosine below
    refine.adopt_fragments_cos)."""
    from ros2_opentrack.refine import fragment_adopters

    tr, door, cabinet, piece = _fragment_scene(
        born_near=case != "no near miss", held_apart=case == "held apart", near_cos=0.6 if case == "unlike" else 0.78
    )
    assert geometry.box_gap(piece.box_min, piece.box_max, door.box_min, door.box_max) > 0.3  # not touching
    assert fragment_adopters(tr) == {piece.id: {"door": door.id, "cabinet": cabinet.id}[goes_to]}


@pytest.mark.parametrize("through", ["duplicate merging", "object back at its place"])
def test_merging_a_track_hands_its_near_misses_and_view_evidence_to_the_survivor(through):
    """Tracker.merge, the one way two tracks become one: the merged-away track leaves the map and the index, its
    points join the survivor's, a fragment that nearly continued it nearly continues the survivor (so
    fragment_adopters still finds it), and views that held it apart from a third track hold the survivor apart
    too. Both callers: duplicate merging, and change detection folding a newcomer into the removed track whose
    place it fills (changes.ChangeDetector._refilled)."""
    from test_tracker import _obs

    from ros2_opentrack.refine import merge_duplicates

    tr, door, cabinet, piece = _fragment_scene(born_near=True, held_apart=True)
    again = tr._open(_obs((0.0, 0, 0.5), [1, 0]), make_frame([], [], look_at((0, -4, 1), (0, 0, 0.5)), hw=HW))
    again.first_seen = 5.0
    door_voxels = door.voxels.copy()
    piece.born_near = again.id  # the piece nearly continued the newcomer
    tr.consensus._count(tr.consensus.apart, again.id, cabinet.id)
    if through == "duplicate merging":  # the door's points, seen fewer times: it goes into the door
        assert merge_duplicates(tr, only_dirty=False) == {again.id: door.id}
    else:  # the door was taken away; the track opened where it was is the door back
        tr.changes._set(door, Presence.REMOVED, stamp=3.0)
        assert tr.changes._refilled(door, tr, stamp=6.0) == [again.id]
        assert door.presence == Presence.PRESENT
    survivor, gone = door, again
    assert gone.id not in tr.tracks and gone.id not in tr.index.query(survivor.box_min, survivor.box_max)
    assert np.isin(door_voxels, survivor.voxels).all()
    assert piece.born_near == survivor.id
    assert tr.consensus.counts(survivor.id, piece.id)[1] == 1  # the door was held apart from the piece
    assert tr.consensus.counts(survivor.id, cabinet.id)[1] == 1  # folded from the newcomer


@pytest.mark.parametrize(
    "case, joined",
    [
        ("run ended", True),
        ("run goes on", False),
        ("each in its own mask once", False),
        ("held apart once", False),
        ("lives overlap", False),
        ("no longer alike", False),
    ],
)
def test_a_track_opened_beside_an_out_of_view_track_joins_it_at_the_end_if_unrefuted(case, joined):
    """refine._beside_unrefuted: the far track was opened beside the near one while the near one was out of view
    (Track.born_beside: eq. 1 matched it by appearance, association.beside held that back). 1.5 m apart, nothing
    else would join them (handover off). At the end of the run (final), with no view that showed them apart, the
    match stands; before it, a later view may still show them apart. A keyframe that gave each a mask of its own
    or held them apart refutes it; so do lives that overlap (a neighbour in view alongside, both tracks going)
    and features that no longer agree to refine.consensus_once_cos (0.85; here cosine 0.8)."""
    from test_tracker import _obs

    from ros2_opentrack.tracker import Tracker

    cfg = core_config(refine_every=0)
    cfg.refine.handover_cos = 0.0
    tr = Tracker(cfg.tracking, cfg.refine, cfg.lift)
    frame = make_frame([], [], look_at((0, -4, 1), (0, 0, 0.5)), hw=HW)
    near = tr._open(_obs((0.0, 0, 0.5), [1, 0]), frame)
    far = tr._open(_obs((1.5, 0, 0.5), [0.8, 0.6] if case == "no longer alike" else [1, 0]), frame)
    far.born_beside = near.id
    near.first_keyframe, near.last_keyframe = 1, 5
    far.first_keyframe, far.last_keyframe = (3, 8) if case == "lives overlap" else (6, 8)
    tr.keyframes = 30
    if case == "each in its own mask once":
        tr.consensus._count(tr.consensus.both, near.id, far.id)
    if case == "held apart once":
        tr.consensus._count(tr.consensus.apart, near.id, far.id)
    merged = tr.merge_duplicates(only_dirty=False, final=case != "run goes on")
    assert (merged == {far.id: near.id}) == joined and (far.id in tr.tracks) != joined
