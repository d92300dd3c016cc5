"""The quality matrix's pieces in synthetic.py: structural mask errors, anonymous ids, pose drift, trajectories,
seen points, and the seen-only restriction of the AP."""

import numpy as np
import pytest

from ros2_opentrack.eval import evaluate_points
from ros2_opentrack.synthetic import PART_ID_BASE, TRAJECTORIES, MaskNoise, PoseDrift, make_wall_room, render_views
from ros2_opentrack.types import Mask2D, validate_pose

HW = (40, 60)


def two_touching():
    a, b = np.zeros(HW, bool), np.zeros(HW, bool)
    a[10:30, 5:25] = True
    b[10:30, 26:50] = True  # 1 px apart
    far = np.zeros(HW, bool)
    far[0:5, 55:60] = True
    return [Mask2D(mask=a, source_id=1), Mask2D(mask=b, source_id=2), Mask2D(mask=far, source_id=3)]


def test_merge_joins_touching_neighbours_with_the_larger_id():
    masks = two_touching()
    out = MaskNoise(p_merge=1.0).perturb_structure(masks, np.random.default_rng(0), HW)
    assert sorted(m.source_id for m in out) == [2, 3]
    merged = next(m for m in out if m.source_id == 2)
    assert merged.mask[masks[0].mask].all() and merged.mask[masks[1].mask].all()
    depth = np.where(masks[0].mask, 1.0, 3.0).astype(np.float32)  # a in front of b: not 3D neighbours
    kept = MaskNoise(p_merge=1.0).perturb_structure(masks, np.random.default_rng(0), HW, depth)
    assert sorted(m.source_id for m in kept) == [1, 2, 3]


def test_split_bleed_and_anonymize():
    masks = two_touching()
    noise = MaskNoise(p_split=1.0, min_pixels=10)
    parts = noise.perturb_structure(masks[:1], np.random.default_rng(1), HW)
    assert 2 <= len(parts) <= 3 and parts[0].source_id == 1
    assert all(p.source_id > PART_ID_BASE for p in parts[1:])
    union = np.logical_or.reduce([p.mask for p in parts])
    np.testing.assert_array_equal(union, masks[0].mask)
    assert sum(int(p.mask.sum()) for p in parts) == int(masks[0].mask.sum())  # a partition
    bled = MaskNoise(p_bleed=1.0, bleed_px=(3, 3)).perturb_structure(masks, np.random.default_rng(0), HW)
    a = bled[0].mask
    assert a.sum() > masks[0].mask.sum() and not (a & masks[1].mask).any()  # into the background only
    anon = MaskNoise(shuffle_ids=True).anonymize(masks, np.random.default_rng(0))
    assert {id(m.mask) for m in anon} == {id(m.mask) for m in masks}
    assert len({m.source_id for m in anon}) == 3  # distinct per-frame ids
    assert [m.source_id for m in MaskNoise().anonymize(masks, np.random.default_rng(0))] == [1, 2, 3]


def test_pose_drift_is_a_small_rigid_random_walk():
    poses = [np.eye(4) for _ in range(100)]
    drifted = PoseDrift(step_m=0.0005, step_deg=0.02, seed=0).apply(poses)
    for T in drifted:
        validate_pose(T)
    t = np.array([T[:3, 3] for T in drifted])
    assert 0.001 < np.linalg.norm(t[-1]) < 0.03 and np.linalg.norm(t[1] - t[0]) < 0.004
    ang = np.degrees(np.arccos(np.clip((np.trace(drifted[-1][:3, :3]) - 1) / 2, -1, 1)))
    assert 0.01 < ang < 1.0


@pytest.fixture(scope="module")
def wall_room():
    return make_wall_room(seed=0, n_objects=8)


def test_wall_room_and_trajectories(wall_room):
    assert len(wall_room.instance_ids) >= 6
    for name in ("loop", "wall", "walk"):
        poses = TRAJECTORIES[name](wall_room, 30, seed=0)
        assert len(poses) == 30
        for T in poses:
            validate_pose(T)
            assert np.all(T[:2, 3] > 0) and np.all(T[:2, 3] < [5, 4]) and 0.5 < T[2, 3] < 2.2  # in the room
    wall = TRAJECTORIES["wall"](wall_room, 60, seed=0)
    rot = [
        np.degrees(np.arccos(np.clip((np.trace(a[:3, :3].T @ b[:3, :3]) - 1) / 2, -1, 1)))
        for a, b in zip(wall, wall[1:])
    ]
    assert 10 < max(rot) < 20  # the fast corner turns


def test_seen_only_ap_ignores_what_no_frame_saw(wall_room):
    views = render_views(wall_room, TRAJECTORIES["walk"](wall_room, 4, seed=0), hw=(60, 80))
    assert 0 < views.seen.sum() < len(wall_room.points)
    gt = wall_room.gt_ids()
    seen_obj = wall_room.instance[views.seen & (wall_room.instance > 0)]
    iid = np.bincount(seen_obj).argmax()
    sel = views.seen & (wall_room.instance == iid)  # a perfect prediction of what was seen of one object
    pts = wall_room.points[sel]
    full = evaluate_points(wall_room.points, gt, pts, np.zeros(len(pts)), [0], [1.0])
    seen = evaluate_points(wall_room.points, gt, pts, np.zeros(len(pts)), [0], [1.0], gt_mask=views.seen)
    assert seen.n_gt <= full.n_gt and seen.ap50 >= full.ap50 and seen.ap50 > 0
    frames = views.frames(MaskNoise(), PoseDrift(), seed=0)
    assert len(frames) == 4 and not np.allclose(frames[-1].T_world_cam, views.poses[-1])
