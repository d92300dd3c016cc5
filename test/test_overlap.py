"""run_overlapped: the stages of consecutive keyframes run concurrently and give exactly step()'s results."""

import numpy as np
import pytest
from _core_scene import core_config, cube, make_frame, orbit

from ros2_opentrack.overlap import run_overlapped
from ros2_opentrack.pipeline import Pipeline

HW = (240, 320)
BOXES = [cube((0, 0, 0.4), 0.6), cube((2.5, 0, 0.4), 0.6), cube((1.2, 1.8, 0.3), (0.4, 0.4, 0.6))]
COLOURS = [(200, 30, 30), (30, 30, 200), (30, 200, 30)]


def frames(n=14):
    rng = np.random.default_rng(0)
    fs = [
        make_frame(BOXES, COLOURS, T, hw=HW, index=i, stamp=float(i), rng=rng)
        for i, T in enumerate(orbit((1.2, 0.5, 0.3), 4.0, 1.5, np.linspace(0, 330, n)))
    ]
    fs[n // 2].K = np.zeros((3, 3))  # a bad frame on the way: rejected the same way
    return fs


def test_overlapped_run_equals_the_plain_loop():
    cfg = core_config(every_n=1, refine_every=3, min_observations=2)
    plain, overlapped = Pipeline(cfg), Pipeline(cfg)
    expected = [plain.step(f) for f in frames()]
    got = list(run_overlapped(overlapped, frames()))
    assert [(r.keyframe, r.error, r.created, r.matched, r.merged) for r in got] == [
        (r.keyframe, r.error, r.created, r.matched, r.merged) for r in expected
    ]
    a, b = plain.finalize(), overlapped.finalize()
    assert [i.id for i in a] == [i.id for i in b] and len(a) == 3
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.points, y.points)
    assert overlapped.stats.dropped == plain.stats.dropped and plain.stats.dropped["bad_frame"] == 1


def test_a_failing_stage_raises_in_the_caller_and_stops_the_threads():
    class Exploding:
        dim = 4

        def extract(self, rgb, masks, boxes):
            raise RuntimeError("features backend crashed")

    pipe = Pipeline(core_config(), features=Exploding())
    with pytest.raises(RuntimeError, match="features backend crashed"):
        list(run_overlapped(pipe, frames(4)))
