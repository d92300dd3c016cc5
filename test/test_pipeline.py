import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _core_scene import core_config, cube, make_frame, orbit  # noqa: E402

from ros2_opentrack import synthetic  # noqa: E402
from ros2_opentrack.config import OpenTrackConfig  # noqa: E402
from ros2_opentrack.errors import InputError  # noqa: E402
from ros2_opentrack.eval.ap import evaluate_points, transfer_to_gt  # noqa: E402
from ros2_opentrack.perception.color_hist import ColorHistogramFeatures  # noqa: E402
from ros2_opentrack.perception.registry import build  # noqa: E402
from ros2_opentrack.pipeline import Pipeline  # noqa: E402

HW = (240, 320)
BOXES = [cube((0, 0, 0.4), 0.6), cube((2.5, 0, 0.4), 0.6), cube((1.2, 1.8, 0.3), (0.4, 0.4, 0.6))]
COLOURS = [(200, 30, 30), (30, 30, 200), (30, 200, 30)]


def config(every_n=1):
    return core_config(every_n=every_n, refine_every=4, min_observations=2)


def frames(n=12):
    rng = np.random.default_rng(0)
    return [
        make_frame(BOXES, COLOURS, T, hw=HW, index=i, rng=rng)
        for i, T in enumerate(orbit((1.2, 0.5, 0.3), 4.0, 1.5, np.linspace(0, 330, n)))
    ]


def test_color_hist_features_are_normalised_and_discriminative():
    fx = build("features", OpenTrackConfig().perception.features.__class__(name="color_hist"))
    assert isinstance(fx, ColorHistogramFeatures)
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[:, :20] = (200, 30, 30)
    rgb[:, 20:] = (30, 30, 200)
    masks = np.zeros((4, 40, 40), bool)
    masks[0, :20, :20] = True
    masks[1, 20:, :20] = True
    masks[2, :, 20:] = True
    boxes = np.tile(np.float32([0, 0, 40, 40]), (4, 1))
    f = fx.extract(rgb, masks, boxes)
    assert f.shape == (4, fx.dim)
    np.testing.assert_allclose(np.linalg.norm(f[:3], axis=1), 1.0, atol=1e-6)
    assert f[0] @ f[1] == pytest.approx(1.0) and f[0] @ f[2] < 0.1
    assert not f[3].any()  # an empty mask gives the zero vector
    tight = np.float32([[0, 0, 20, 20], [0, 20, 20, 40], [20, 0, 40, 40], [0, 0, 0, 0]])
    np.testing.assert_allclose(fx.extract(rgb, list(masks), tight), f, atol=1e-6)  # a list, boxes as a hint
    with pytest.raises(InputError, match="4 masks but 3 boxes"):
        fx.extract(rgb, masks, tight[:3])


def test_backends_satisfy_the_protocols_callers_use():
    from ros2_opentrack.perception.base import FeatureExtractor, Labeler, MaskSource
    from ros2_opentrack.perception.mllm import MllmLabeler
    from ros2_opentrack.perception.model_source import ModelMaskSource

    assert isinstance(ColorHistogramFeatures(), FeatureExtractor)
    assert isinstance(ModelMaskSource(object(), object()), MaskSource)  # has set_vocabulary
    labeler = MllmLabeler(transport=None)
    assert isinstance(labeler, Labeler) and labeler.text_matcher is None


def test_end_to_end_three_objects():
    pipe = Pipeline(config())
    results = [pipe.step(f) for f in frames()]
    assert all(r.keyframe and r.error is None for r in results)
    assert set(results[0].timings_ms) >= {"features", "lift", "track", "views", "total"}
    insts = pipe.finalize()
    assert len(insts) == 3
    for inst in insts:
        near = [
            i
            for i, (lo, hi) in enumerate(BOXES)
            if ((inst.points >= lo - 0.05) & (inst.points <= hi + 0.05)).all(axis=1).mean() > 0.95
        ]
        assert len(near) == 1
        assert inst.observations >= 8 and inst.first_seen <= inst.last_seen and 1 <= len(inst.views) <= 3
        assert inst.colors.shape == inst.points.shape and inst.points.dtype == np.float32
    s = pipe.stats
    assert s.frames == s.keyframes == 12 and s.active == 3


def test_scene_map_holds_the_observed_surfaces_only():
    from scipy.spatial import cKDTree

    from ros2_opentrack import geometry

    pipe = Pipeline(config())
    assert pipe.map_points() is None  # nothing seen yet: writers fall back to the instances' points
    seen = frames(4)
    for f in seen:
        pipe.step(f)
    points, colors = pipe.map_points()
    assert len(points) > 100 and colors.shape == points.shape and colors.dtype == np.uint8
    surface = np.concatenate([geometry.transform(f.T_world_cam, geometry.backproject(f.depth, f.K)[0]) for f in seen])
    gap, _ = cKDTree(surface).query(points)
    assert gap.max() <= pipe.cfg.refine.map_voxel_m  # every map point is a voxel centre of a seen surface
    pipe.reset()
    assert pipe.map_points() is None


def test_keyframe_selection_every_n_and_motion():
    pipe = Pipeline(config(every_n=3))
    fs = frames(7)
    assert [pipe.step(f).keyframe for f in fs] == [True, False, False, True, False, False, True]
    cfg = config(every_n=0)
    cfg.keyframes.min_translation_m = 1.0
    pipe = Pipeline(cfg)
    # orbit steps of 30 degrees at radius 4 m are ~2.1 m apart; repeating a frame does not move the camera
    flags = [pipe.step(f).keyframe for f in [fs[0], fs[0], fs[1], fs[1]]]
    assert flags == [True, False, True, False]
    cfg = config(every_n=1)
    cfg.keyframes.max_rate_hz = 0.5  # stamps are 1 s apart: every second frame
    pipe = Pipeline(cfg)
    assert [pipe.step(f).keyframe for f in fs[:4]] == [True, False, True, False]


def test_deterministic_given_seed_and_reset():
    a = Pipeline(config())
    b = Pipeline(config())
    fs = frames(6)
    for f in fs:
        a.step(f)
        b.step(f)
    ia, ib = a.finalize(), b.finalize()
    assert [i.id for i in ia] == [i.id for i in ib]
    for x, y in zip(ia, ib):
        np.testing.assert_array_equal(x.points, y.points)
    a.reset()
    assert a.instances() == [] and a.stats.frames == 0 and len(a.views.images) == 0
    a.step(fs[0])
    assert min(a.tracker.tracks) > max(i.id for i in ia)  # ids stay unique across reset


LABELS = ["red box", "blue box", "green crate"]


def labelled(frame):
    """The frame with each mask carrying its box's label text (as dataset masks with label text do)."""
    frame.masks = [dataclasses.replace(m, label=LABELS[m.source_id]) for m in frame.masks]
    return frame


def test_query_delegates_to_answer_query():
    from ros2_opentrack.errors import InputError

    pipe = Pipeline(config())
    pipe.cfg.perception.text_matcher.name = "none"  # word overlap: no sentence model in this test
    for f in frames(6):
        pipe.step(labelled(f))
    with pytest.raises(InputError):
        pipe.query("")
    matches = pipe.query("where is the green crate")
    assert [m.label for m in matches] == ["green crate"]
    (inst,) = [i for i in pipe.instances() if i.id == matches[0].instance_id]
    lo, hi = BOXES[2]
    assert ((inst.points >= lo - 0.05) & (inst.points <= hi + 0.05)).all(axis=1).mean() > 0.95


def test_synthetic_room_end_to_end():
    """A rendered room (4 objects): the tracker's instances must match the ground truth (class-agnostic AP50
    1.0 and best IoU ~0.6 per object when written; oracle association reaches the same)."""
    scene = synthetic.make_room(seed=0, n_objects=4)
    seq = synthetic.render_sequence(scene, n_frames=30, hw=(240, 320), seed=0)
    pipe = Pipeline(config())
    for f in seq:
        r = pipe.step(f)
        assert r.error is None
    insts = pipe.finalize()
    assert 4 <= len(insts) <= 5
    pts = np.concatenate([i.points for i in insts])
    owner = np.concatenate([np.full(len(i.points), i.id) for i in insts])
    ids = [i.id for i in insts]
    gt = scene.gt_ids()
    result = evaluate_points(scene.points, gt, pts, owner, ids, [i.score for i in insts])
    assert result.n_gt == 4 and result.ap50 >= 0.75
    predicted = transfer_to_gt(scene.points, pts, owner, ids)
    for g in np.unique(gt[gt > 0]):
        truth = gt == g
        best = max((truth & p).sum() / (truth | p).sum() for p in predicted)
        assert best >= 0.5, f"GT object {g} covered at IoU {best:.2f} only"


class MatcherSlotLabeler:
    """A labeller with a text_matcher slot, as MllmLabeler has."""

    def __init__(self, text_matcher=None):
        self.text_matcher = text_matcher

    def label(self, requests):
        return []


def test_labeler_shares_the_pipelines_text_matcher():
    matcher = object()
    labeler = MatcherSlotLabeler()
    pipe = Pipeline(config(), labeler=labeler, text_matcher=matcher)
    assert labeler.text_matcher is matcher and pipe.text_matcher is matcher
    pipe.close()
    own = object()  # a labeller that built its matcher first lends it to the pipeline
    pipe = Pipeline(config(), labeler=MatcherSlotLabeler(own))
    assert pipe.text_matcher is own
    pipe.close()
