"""Scene readers: ScanNet export layout, 7-Scenes layout, bad input counted or refused."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from ros2_opentrack.cli import main
from ros2_opentrack.errors import InputError
from ros2_opentrack.io import open_scene
from ros2_opentrack.io.scannet import ScanNetReader, read_scene_gt
from ros2_opentrack.io.sevenscenes import SevenScenesReader
from ros2_opentrack.types import validate_frame

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
K = np.array([[100.0, 0, 31.5], [0, 100.0, 23.5], [0, 0, 1]])


def pose(tx=0.0):
    T = np.eye(4)
    T[0, 3] = tx
    return T


def write_scannet(root: Path, n=12, hw=(48, 64), color_hw=None, depth_K=True, ids=True):
    """A tiny ScanNet export: depth i+1 metres... actually 1000 + 10*i mm, instance ids 3 and 7."""
    for sub in ("color", "depth", "pose", "intrinsic", "instance"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ch, cw = color_hw or hw
    for i in range(n):
        rgb = np.zeros((ch, cw, 3), np.uint8)
        rgb[..., 0] = 200
        cv2.imwrite(str(root / "color" / f"{i}.jpg"), rgb[..., ::-1])
        cv2.imwrite(str(root / "depth" / f"{i}.png"), np.full(hw, 1000 + 10 * i, np.uint16))
        np.savetxt(root / "pose" / f"{i}.txt", pose(0.1 * i))
        if ids:
            inst = np.zeros(hw, np.uint16)
            inst[:10, :10] = 3
            inst[20:40, 30:60] = 7
            cv2.imwrite(str(root / "instance" / f"{i}.png"), inst)
    K4 = np.eye(4)
    K4[:3, :3] = K
    if depth_K:
        np.savetxt(root / "intrinsic" / "intrinsic_depth.txt", K4)
    Kc = K4.copy()
    Kc[0] *= cw / hw[1]
    Kc[1] *= ch / hw[0]
    np.savetxt(root / "intrinsic" / "intrinsic_color.txt", Kc)
    (root / "instance_labels.json").write_text(json.dumps({"3": "chair", "7": "table"}))
    return root


def test_scannet_reads_frames_in_numeric_order(tmp_path):
    reader = open_scene(write_scannet(tmp_path / "s"))
    assert isinstance(reader, ScanNetReader) and len(reader) == 12
    frames = list(reader)
    assert [f.index for f in frames] == list(range(12))  # 10 after 9, not after 1
    f = frames[10]
    assert f.depth.dtype == np.float32 and f.depth[0, 0] == pytest.approx(1.1)
    assert f.rgb.shape == (48, 64, 3) and f.rgb[5, 5, 0] > 180 and f.rgb[5, 5, 2] < 60  # RGB, not BGR
    np.testing.assert_allclose(f.K, K)
    assert f.T_world_cam[0, 3] == pytest.approx(1.0)
    assert f.stamp == pytest.approx(10 / 30.0) and f.masks is None
    assert not reader.dropped


def test_scannet_stride_max_frames_and_masks(tmp_path):
    reader = open_scene(write_scannet(tmp_path / "s"), stride=3, max_frames=3, with_masks=True)
    frames = list(reader)
    assert [f.index for f in frames] == [0, 3, 6]
    masks = {m.source_id: m for m in frames[0].masks}
    assert set(masks) == {3, 7}
    assert masks[3].label == "chair" and masks[7].label == "table"
    assert masks[3].mask.sum() == 100 and masks[7].mask.sum() == 600


def test_scannet_color_intrinsics_scaled_to_depth(tmp_path):
    root = write_scannet(tmp_path / "s", n=2, color_hw=(96, 128), depth_K=False)
    f = validate_frame(next(iter(ScanNetReader(root))))  # as the pipeline's entry sees it
    assert f.rgb.shape == (48, 64, 3)  # resized to the depth image
    np.testing.assert_allclose(f.K, K, atol=1e-9)  # colour K halved back to the depth size


def test_scannet_bad_frames_are_counted_not_fatal(tmp_path):
    root = write_scannet(tmp_path / "s", n=6)
    (root / "pose" / "1.txt").unlink()
    np.savetxt(root / "pose" / "2.txt", np.full((4, 4), -np.inf))  # ScanNet's lost-tracking pose
    (root / "color" / "3.jpg").write_bytes(b"not a jpeg")
    np.savetxt(root / "pose" / "4.txt", np.eye(4) * 2.0)  # not rigid
    reader = ScanNetReader(root)
    frames = list(reader)
    assert [f.index for f in frames] == [0, 4, 5]  # the 2*I pose is the pipeline's to reject (validated once)
    assert dict(reader.dropped) == {"missing_file": 1, "invalid_pose": 1, "unreadable_image": 1}
    with pytest.raises(InputError, match="pose last row must be"):
        validate_frame(frames[1])
    assert frames[1].source.endswith("color/4.jpg")


def test_scannet_wrong_layouts_raise(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="empty.*expected"):
        open_scene(empty)
    for sub in ("color", "depth", "pose"):
        (empty / sub).mkdir()
    with pytest.raises(InputError, match="no frames"):
        ScanNetReader(empty)
    partial = tmp_path / "partial"
    (partial / "color").mkdir(parents=True)
    with pytest.raises(InputError, match=r"depth/.*expected"):
        open_scene(partial)
    no_k = write_scannet(tmp_path / "nok", n=1)
    for p in (no_k / "intrinsic").iterdir():
        p.unlink()
    with pytest.raises(InputError, match="intrinsic"):
        ScanNetReader(no_k)
    no_ids = write_scannet(tmp_path / "noids", n=1, ids=False)
    (no_ids / "instance").rmdir()
    with pytest.raises(InputError, match="instance/"):
        ScanNetReader(no_ids, with_masks=True)
    with pytest.raises(InputError, match="does not exist"):
        open_scene(tmp_path / "nowhere")


def write_sevenscenes(root: Path, n=5):
    root.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(root / f"frame-{i:06d}.color.png"), np.full((48, 64, 3), 90, np.uint8))
        d = np.full((48, 64), 2000, np.uint16)
        d[0, :] = 65535
        cv2.imwrite(str(root / f"frame-{i:06d}.depth.png"), d)
        np.savetxt(root / f"frame-{i:06d}.pose.txt", pose(i))
    return root


def test_sevenscenes_folder(tmp_path):
    root = write_sevenscenes(tmp_path / "seq")
    (root / "frame-000003.depth.png").write_bytes(b"")
    reader = open_scene(root, stride=1)
    assert isinstance(reader, SevenScenesReader) and len(reader) == 5
    frames = list(reader)
    assert [f.index for f in frames] == [0, 1, 2, 4]
    assert reader.dropped == {"unreadable_image": 1}
    f = frames[0]
    assert f.depth[0, 0] == 0.0 and f.depth[5, 5] == pytest.approx(2.0)  # 65535 = invalid
    # no camera-intrinsics.txt: nominal 585 px at 640x480, scaled to 64x48
    np.testing.assert_allclose(f.K[:2, :3], [[58.5, 0, 32], [0, 58.5, 24]])
    with pytest.raises(InputError, match="no instance masks"):
        SevenScenesReader(root, with_masks=True)


def test_dataset_masks_from_a_scene_without_masks_fail_once_naming_the_scene(tmp_path, capsys):
    root = write_sevenscenes(tmp_path / "seq")
    with pytest.raises(InputError, match=r"'.*seq' is a 7-Scenes folder, which has no instance masks"):
        open_scene(root, with_masks=True)
    code = main(["run", str(root), "--out", str(tmp_path / "out"), "--masks", "dataset", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert str(root) in err and "no instance masks" in err


@pytest.mark.skipif(not (DATA / "7scenes_redkitchen").is_dir(), reason="shared 7-Scenes data absent")
def test_sevenscenes_real_redkitchen():
    reader = open_scene(DATA / "7scenes_redkitchen", stride=50, max_frames=4)
    assert len(open_scene(DATA / "7scenes_redkitchen")) == 500
    frames = list(reader)
    assert [f.index for f in frames] == [0, 50, 100, 150]
    f = frames[0]
    assert f.rgb.shape == (480, 640, 3) and f.depth.shape == (480, 640)
    np.testing.assert_allclose(f.K, [[585, 0, 320], [0, 585, 240], [0, 0, 1]])
    valid = f.depth[f.depth > 0]
    assert 0.3 < np.median(valid) < 4.0  # a kitchen, in metres
    np.testing.assert_allclose(f.T_world_cam[:3, 3], [-0.3404563, 0.0164698, 0.2965692], atol=1e-6)


def test_read_scene_gt_checks_lengths(tmp_path):
    from ros2_opentrack.io.ply import write_ply

    write_ply(tmp_path / "points.ply", np.zeros((4, 3)), np.zeros((4, 3), np.uint8))
    np.savetxt(tmp_path / "gt_instances.txt", [0, 1001, 1001], fmt="%d")
    with pytest.raises(InputError, match="3 ids but points.ply has 4"):
        read_scene_gt(tmp_path)
    np.savetxt(tmp_path / "gt_instances.txt", [0, 1001, 1001, 2002], fmt="%d")
    pts, gt, _ = read_scene_gt(tmp_path)
    assert gt.tolist() == [0, 1001, 1001, 2002] and pts.shape == (4, 3)
