"""Weight-free box_depth segmenter: a box in front of a wall with a hand-known answer, and a real 7-Scenes frame;
the model mask source hands it the depth (needs_depth), and sam2-style segmenters keep their 2-argument call."""

from pathlib import Path

import numpy as np
import pytest

from ros2_opentrack.errors import InputError
from ros2_opentrack.perception.base import Detections
from ros2_opentrack.perception.box_depth import BoxDepthSegmenter
from ros2_opentrack.perception.model_source import ModelMaskSource

SEVEN = Path(__file__).resolve().parents[2] / "shared" / "data" / "7scenes_redkitchen"


def scene(h=120, w=160, seed=0):
    """Wall at 3 m; an object (rows 40:80, cols 50:110) at ~1 m with a 10 cm depth slope and 3 mm noise; 2% of its
    pixels invalid; a few flying pixels at 0.5 m and a 6x6 patch at 0.7 m in front (too small to be a mode)."""
    rng = np.random.default_rng(seed)
    depth = np.full((h, w), 3.0, np.float32) + rng.normal(0, 0.005, (h, w)).astype(np.float32)
    obj = np.zeros((h, w), bool)
    obj[40:80, 50:110] = True
    slope = np.linspace(0.95, 1.05, 60, dtype=np.float32)[None, :]
    depth[40:80, 50:110] = slope + rng.normal(0, 0.003, (40, 60)).astype(np.float32)
    holes = obj & (rng.random((h, w)) < 0.02)
    depth[holes] = 0.0
    flying = rng.random((h, w)) < 0.01
    depth[flying & ~obj] = 0.5
    depth[32:38, 40:46] = 0.7
    return depth, obj


def iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def test_box_in_front_of_a_wall_gives_the_object():
    depth, obj = scene()
    rgb = np.zeros((*depth.shape, 3), np.uint8)
    seg = BoxDepthSegmenter()
    boxes = np.array(
        [
            [30, 25, 130, 95],  # object + wall margin + the small near patch + flying pixels
            [52, 42, 108, 78],  # tight box inside the object
            [0, 0, 30, 30],  # only wall: the wall is the near mode there
            [10, 10, 10, 50],
        ],
        np.float32,
    )  # degenerate
    masks, scores = seg.segment(rgb, boxes, depth=depth)
    assert masks.shape == (4, 120, 160) and masks.dtype == bool
    assert iou(masks[0], obj) > 0.97, iou(masks[0], obj)  # holes closed, flying pixels and patch dropped
    assert not masks[0][32:38, 40:46].any() and not masks[0][:40].any()
    assert 0.3 < scores[0] < 0.4  # 2400 object pixels of ~7000 valid in the box
    inside = obj.copy()
    inside[:, :52] = inside[:, 108:] = inside[:42] = inside[78:] = False
    assert iou(masks[1], inside) > 0.97
    assert masks[2][:30, :30].mean() > 0.9
    assert not masks[3].any() and scores[3] == 0 and seg.degenerate_boxes == 1
    assert not masks[0][:, :30].any()  # never outside its box


def test_box_depth_without_depth_is_a_clear_error():
    with pytest.raises(InputError, match="depth"):
        BoxDepthSegmenter().segment(np.zeros((10, 10, 3), np.uint8), np.array([[0, 0, 5, 5]], np.float32))


class _Det:
    def __init__(self, boxes):
        self.boxes = np.asarray(boxes, np.float32)

    def set_vocabulary(self, classes):
        pass

    def detect(self, rgb):
        return Detections(self.boxes, np.ones(len(self.boxes), np.float32), ["thing"] * len(self.boxes))


class _TwoArgSegmenter:
    def __init__(self):
        self.calls = []

    def segment(self, rgb, boxes):  # the sam2 signature: no depth keyword
        self.calls.append(len(boxes))
        m = np.zeros((len(boxes), *rgb.shape[:2]), bool)
        m[:, 40:80, 50:110] = True
        return m, np.ones(len(boxes), np.float32)


def test_model_mask_source_passes_depth_only_to_segmenters_that_need_it():
    from ros2_opentrack.types import Frame

    depth, obj = scene()
    frame = Frame(rgb=np.zeros((120, 160, 3), np.uint8), depth=depth, K=np.eye(3), T_world_cam=np.eye(4), stamp=0.0)
    masks = ModelMaskSource(_Det([[30, 25, 130, 95]]), BoxDepthSegmenter()).masks(frame)
    assert len(masks) == 1 and iou(masks[0].mask, obj) > 0.97 and masks[0].label == "thing"
    two = _TwoArgSegmenter()
    assert len(ModelMaskSource(_Det([[30, 25, 130, 95]]), two).masks(frame)) == 1 and two.calls == [1]


def test_box_depth_on_a_real_7scenes_frame():
    if not (SEVEN / "frame-000000.depth.png").is_file():
        pytest.skip(f"shared data not found at {SEVEN}")
    from ros2_opentrack.io import open_scene

    frame = next(iter(open_scene(SEVEN, max_frames=1)))
    boxes = np.array([[366, 163, 401, 202], [419, 144, 545, 213], [173, 130, 304, 314]], np.float32)  # cup, chairs
    masks, scores = BoxDepthSegmenter().segment(frame.rgb, boxes, depth=frame.depth)
    d = frame.depth
    for m, (x0, y0, x1, y1), s in zip(masks, boxes.astype(int), scores):
        box = np.zeros_like(m)
        box[y0:y1, x0:x1] = True
        assert m.any() and not (m & ~box).any()
        frac = m.sum() / box.sum()
        assert 0.1 < frac < 0.95, frac
        rest = box & ~m & (d > 0)
        if rest.sum() > 50:  # the kept mode is in front of the rest of the box
            assert np.median(d[m & (d > 0)]) < np.median(d[rest])
        assert 0.1 < s <= 1.0
