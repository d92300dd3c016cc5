"""Synthetic rooms, the point-splat renderer's geometry, the segmenter error model, scene folders."""

from pathlib import Path

import numpy as np
import pytest

from ros2_opentrack.geometry import look_at
from ros2_opentrack.io import open_scene
from ros2_opentrack.io.scannet import read_scene_gt
from ros2_opentrack.synthetic import (
    FALSE_BLOB_ID_BASE,
    MaskNoise,
    SyntheticScene,
    default_K,
    load_scannet_npy,
    make_room,
    make_trajectory,
    render,
    render_sequence,
    write_scene_folder,
)
from ros2_opentrack.types import Mask2D, validate_pose

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NPY = DATA / "scannet_scene0451_01" / "scene0451_01.npy"


@pytest.fixture(scope="module")
def room():
    return make_room(seed=3, n_objects=6)


def test_make_room_is_deterministic_with_labelled_objects(room):
    again = make_room(seed=3, n_objects=6)
    np.testing.assert_array_equal(room.points, again.points)
    assert room.instance_ids == [1, 2, 3, 4, 5, 6] and set(room.labels) == {1, 2, 3, 4, 5, 6}
    assert room.labels[1] == "chair" and (room.instance == 0).sum() > 0.2 * len(room.points)
    lo, hi = room.points.min(0), room.points.max(0)
    np.testing.assert_allclose(lo, [0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(hi, [5, 4, 2.5], atol=1e-6)
    gt = room.gt_ids()
    cls = room.class_ids()
    assert set(np.unique(gt)) == {0} | {cls[room.labels[i]] * 1000 + i for i in room.instance_ids}


def test_rendered_points_reproject_to_their_pixel(room):
    K = default_K((120, 160))
    T = look_at([2.5, 0.5, 1.4], [2.5, 2.5, 0.6])
    rgb, depth, ids = render(room, K, T, (120, 160), scale=1)
    assert rgb.shape == (120, 160, 3) and depth.dtype == np.float32 and (depth > 0).mean() > 0.95
    pc = (room.points.astype(np.float64) - T[:3, 3]) @ T[:3, :3]
    u = np.rint(K[0, 0] * pc[:, 0] / pc[:, 2] + K[0, 2]).astype(int)
    v = np.rint(K[1, 1] * pc[:, 1] / pc[:, 2] + K[1, 2]).astype(int)
    inside = (pc[:, 2] > 0.1) & (u >= 0) & (u < 160) & (v >= 0) & (v < 120)
    idx = np.flatnonzero(inside)
    own = np.abs(depth[v[idx], u[idx]] - pc[idx, 2]) < 1e-6  # points that won their own centre pixel
    assert own.sum() > 200
    winners = idx[own]
    # depth is the distance along the optical axis, and back-projecting the pixel lands within half a pixel
    z = depth[v[winners], u[winners]]
    x = (u[winners] - K[0, 2]) * z / K[0, 0]
    y = (v[winners] - K[1, 2]) * z / K[1, 1]
    err = np.linalg.norm(np.stack([x, y, z], 1) - pc[winners], axis=1)
    assert (err <= 0.5 * np.sqrt(2) * z / K[0, 0] + 1e-6).all()
    np.testing.assert_array_equal(ids[v[winners], u[winners]], room.instance[winners])
    np.testing.assert_array_equal(rgb[v[winners], u[winners]], room.colors[winners])
    # nothing is visible behind the nearest surface: every pixel's depth <= any point projecting there
    order = np.argsort(pc[idx, 2])
    nearest = np.full((120, 160), np.inf)
    np.minimum.at(nearest, (v[idx][order], u[idx][order]), pc[idx, 2][order])
    seen = np.isfinite(nearest)
    assert (depth[seen] <= nearest[seen] + 1e-6).all()


def test_trajectory_visits_every_object(room):
    poses = make_trajectory(room, n_frames=30, seed=1)
    assert len(poses) == 30
    for T in poses:
        validate_pose(T)
    frames = render_sequence(room, n_frames=30, hw=(60, 80), seed=1)
    seen = set()
    for ids in frames.ids:
        seen |= set(np.unique(ids).tolist())
    assert set(room.instance_ids) <= seen


def test_render_sequence_masks_are_true_ids(room):
    frames = render_sequence(room, n_frames=6, hw=(60, 80), seed=0)
    for f, ids in zip(frames, frames.ids):
        assert all(m.label is None for m in f.masks)
        for m in f.masks:
            assert (ids[m.mask] == m.source_id).all() and m.mask.sum() == (ids == m.source_id).sum()


def test_mask_noise_drops_blobs_and_depth_noise():
    rng = np.random.default_rng(0)
    mask = np.zeros((60, 80), bool)
    mask[10:40, 10:50] = True
    masks = [Mask2D(mask=mask, source_id=i + 1) for i in range(200)]
    noise = MaskNoise(p_drop=0.25, p_edge=1.0, edge_px=2, false_blobs=0.0)
    out = noise.perturb_masks(masks, rng, (60, 80))
    assert 120 < len(out) < 180  # about 3/4 kept
    areas = {int(m.mask.sum()) for m in out}
    # every kept mask was eroded or dilated by 1 or 2 px: four distinct areas around the 1200 px original
    assert len(areas) == 4 and sum(a < 1200 for a in areas) == 2 and 26 * 36 in areas and 28 * 38 in areas
    blobs = MaskNoise(p_drop=1.0, false_blobs=3.0).perturb_masks(masks, rng, (60, 80))
    assert all(m.source_id > FALSE_BLOB_ID_BASE for m in blobs)
    depth = np.full((200, 200), 3.0, np.float32)
    depth[0] = 0
    noisy = MaskNoise(depth_k=0.004).perturb_depth(depth, rng)
    assert (noisy[0] == 0).all()
    assert np.std(noisy[1:] - 3.0) == pytest.approx(0.004 * 9, rel=0.05)  # sigma = k z^2


def test_scene_folder_round_trip(room, tmp_path):
    frames = render_sequence(room, n_frames=5, hw=(60, 80), seed=0, noise=MaskNoise(false_blobs=1.0, depth_k=0))
    out = write_scene_folder(room, frames, tmp_path / "scene")
    reader = open_scene(out, with_masks=True)
    back = list(reader)
    assert len(back) == 5 and not reader.dropped
    for f, g in zip(frames, back):
        np.testing.assert_allclose(g.depth, f.depth, atol=6e-4)  # millimetre PNG
        np.testing.assert_allclose(g.K, f.K, atol=1e-5)
        np.testing.assert_allclose(g.T_world_cam, f.T_world_cam, atol=1e-8)
        assert {m.source_id for m in g.masks} <= {m.source_id for m in f.masks}
        assert all(m.label == room.labels[m.source_id] for m in g.masks if m.source_id < FALSE_BLOB_ID_BASE)
    pts, gt, names = read_scene_gt(out)
    np.testing.assert_allclose(pts, room.points)
    np.testing.assert_array_equal(gt, room.gt_ids())
    assert set(names.values()) == set(room.labels.values())


def test_scene_validation():
    with pytest.raises(Exception, match="must agree"):
        SyntheticScene(points=np.zeros((3, 3)), colors=np.zeros((2, 3)), instance=np.zeros(3), labels={})


@pytest.mark.skipif(not NPY.is_file(), reason="shared ScanNet point cloud absent")
def test_load_scannet_npy_room():
    scene = load_scannet_npy(NPY)
    assert len(scene.points) == 107046
    assert scene.labels[14] == "sofa" and scene.labels[38] == "table" and scene.labels[30] == "chair"
    assert 31 not in scene.labels and 1 not in scene.labels  # floor and wall are background
    assert scene.points[:, 2].min() == pytest.approx(0.0)
    frames = render_sequence(scene, n_frames=3, hw=(60, 80), seed=0)
    assert all((f.depth > 0).mean() > 0.5 for f in frames)
