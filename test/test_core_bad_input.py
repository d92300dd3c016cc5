"""Every bad input of the issue: handled without a crash and without losing tracks."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _core_scene import core_config, cube, look_at, make_frame  # noqa: E402

from ros2_opentrack.pipeline import Pipeline  # noqa: E402
from ros2_opentrack.types import Mask2D  # noqa: E402

HW = (240, 320)
BOXES = [cube((0, 0, 0.4), 0.6)]
POSE = look_at((-3, -1, 1.2), (0, 0, 0.4))


@pytest.fixture
def pipe():
    cfg = core_config()
    p = Pipeline(cfg)
    r = p.step(make_frame(BOXES, [(200, 30, 30)], POSE, hw=HW, index=0))
    assert len(r.created) == 1
    return p


def good(i=1):
    return make_frame(BOXES, [(200, 30, 30)], POSE, hw=HW, index=i)


def check_rejected(pipe, frame, match):
    n_tracks = len(pipe.tracker.tracks)
    r = pipe.step(frame)
    assert r.error is not None and match in r.error and not r.keyframe
    assert len(pipe.tracker.tracks) == n_tracks
    r = pipe.step(good())  # the pipeline goes on, the track is still matched
    assert r.error is None and r.matched == 1
    return r


def test_rgb_of_another_size_is_resized_to_depth(pipe):
    f = good()
    f.rgb = np.repeat(np.repeat(f.rgb, 2, axis=0), 2, axis=1)  # 480x640 rgb over 240x320 depth
    r = pipe.step(f)
    assert r.error is None and r.matched == 1


def test_rgb_with_wrong_channels_is_rejected(pipe):
    f = good()
    f.rgb = f.rgb[..., 0]
    check_rejected(pipe, f, "rgb")


@pytest.mark.parametrize("fill", [0.0, np.nan])
def test_all_invalid_depth(pipe, fill):
    f = good()
    f.depth = np.full(HW, fill, np.float32)
    check_rejected(pipe, f, "depth")
    assert pipe.stats.dropped["bad_frame"] == 1


def test_partly_nan_depth_is_fine(pipe):
    f = good()
    f.depth[:50] = np.nan
    assert pipe.step(f).error is None


@pytest.mark.parametrize("bad", ["nan", "scaled", "shear", "last_row"])
def test_bad_pose(pipe, bad):
    f = good()
    T = f.T_world_cam.copy()
    if bad == "nan":
        T[0, 3] = np.nan
    elif bad == "scaled":
        T[:3, :3] *= 2.0
    elif bad == "shear":
        T[0, 1] += 0.3
    else:
        T[3] = [0, 0, 1, 1]
    f.T_world_cam = T
    check_rejected(pipe, f, "pose")


@pytest.mark.parametrize("bad", ["zeros", "zero_focal", "nan", "shape"])
def test_bad_intrinsics(pipe, bad):
    f = good()
    K = {
        "zeros": np.zeros((3, 3)),
        "zero_focal": np.diag([0.0, 0.0, 1.0]),
        "nan": np.full((3, 3), np.nan),
        "shape": np.eye(4),
    }[bad]
    f.K = K
    check_rejected(pipe, f, "intrinsics")


def test_empty_and_oversized_masks_drop_only_themselves(pipe):
    f = good()
    f.masks.append(Mask2D(mask=np.zeros(HW, bool)))
    f.masks.append(Mask2D(mask=np.ones((500, 123), bool)))  # bigger than the image, another aspect
    f.masks.append(Mask2D(mask=np.ones((3, 4, 5), bool)))
    r = pipe.step(f)
    assert r.error is None and r.matched == 1
    assert r.dropped == {"empty_mask": 1, "bad_mask": 2}
    assert pipe.stats.dropped["bad_mask"] == 2


def test_no_masks_and_not_a_frame(pipe):
    f = good()
    f.masks = None
    check_rejected(pipe, f, "masks")
    check_rejected(pipe, "not a frame", "Frame")
    f = good()
    f.masks = []
    r = pipe.step(f)
    assert r.error is None and r.n_masks == 0 and len(pipe.tracker.tracks) == 1


def test_depth_of_wrong_type(pipe):
    f = good()
    f.depth = (f.depth * 1000).astype(np.int32)
    check_rejected(pipe, f, "depth")
    f = good()
    f.depth = (f.depth * 1000).astype(np.uint16)  # millimetres are accepted
    assert pipe.step(f).error is None
