import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _core_scene import core_config, cube, look_at, make_frame, orbit  # noqa: E402

from ros2_opentrack.perception.base import LabelResult  # noqa: E402
from ros2_opentrack.pipeline import Pipeline  # noqa: E402
from ros2_opentrack.types import View  # noqa: E402
from ros2_opentrack.views import ImageStore, keep_top_k, would_keep  # noqa: E402

HW = (240, 320)
COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


def config(top_k=2):
    return core_config(views__top_k=top_k, perception__labeler__min_observations=2)


class DominantColourLabeler:
    """Test labeller: answers with the colour name closest to the mean colour inside the red box's interior."""

    text_matcher = None  # Labeler protocol: no matcher of its own

    def __init__(self):
        self.calls = 0

    def label(self, requests):
        self.calls += 1
        out = []
        for r in requests:
            votes = []
            for img in r.images:
                red = (img[..., 0] == 255) & (img[..., 1] == 0) & (img[..., 2] == 0)
                ys, xs = np.nonzero(red)
                inner = img[ys.min() + 4 : ys.max() - 3, xs.min() + 4 : xs.max() - 3].reshape(-1, 3).astype(float)
                mean = inner.mean(axis=0)
                votes.append(min(r.choices, key=lambda c: np.linalg.norm(mean - COLOURS[c])))
            best = max(set(votes), key=votes.count)
            out.append(LabelResult(track_id=r.track_id, label=best, score=votes.count(best) / len(votes)))
        return out


def _view(key, frac, area, idx=0):
    return View(image_key=key, frame_index=idx, stamp=0.0, box=np.zeros(4), visible_fraction=frac, mask_area=area)


def test_top_k_ranking_by_visible_fraction_then_mask_area():
    views = [_view(1, 0.5, 100), _view(2, 0.9, 10), _view(3, 0.5, 300)]
    kept, dropped = keep_top_k(views, 2)
    assert [v.image_key for v in kept] == [2, 3] and [v.image_key for v in dropped] == [1]
    assert would_keep(kept, _view(4, 0.6, 1), 2) and not would_keep(kept, _view(5, 0.5, 200), 2)


def test_image_store_reference_counts():
    store = ImageStore(90)
    img = np.zeros((20, 30, 3), np.uint8)
    img[:, :15] = (200, 30, 30)
    key = store.reserve()
    store.put(key, img, refs=2)
    decoded = store.decode(key)
    assert decoded.shape == img.shape and abs(int(decoded[10, 5, 0]) - 200) < 10
    store.release(key)
    assert key in store
    store.release(key)
    assert key not in store and len(store) == 0


def test_views_bounded_and_images_shared_and_dropped():
    boxes = [cube((0, 0, 0.4), 0.6), cube((2, 0, 0.4), 0.6)]
    pipe = Pipeline(config(top_k=2))
    for i, T in enumerate(orbit((1, 0, 0.4), 4.0, 1.5, np.arange(0, 360, 20))):
        pipe.step(make_frame(boxes, [COLOURS["red"], COLOURS["blue"]], T, hw=HW, index=i))
    tracks = list(pipe.tracker.tracks.values())
    assert all(len(pipe.views.of(t.id)) == 2 for t in tracks)
    keys = {v.image_key for t in tracks for v in pipe.views.of(t.id)}
    assert len(pipe.views.images) == len(keys) <= 4  # only kept images stay stored
    v = pipe.views.of(tracks[0].id)[0]
    img = pipe.view_image(v)
    x0, y0, x1, y1 = (int(round(float(c))) for c in v.box)
    assert tuple(img[y0, x0 + 5]) == (255, 0, 0) and tuple(img[y1 - 1, x1 - 5]) == (255, 0, 0)
    assert pipe.view_image(v, boxed=False).shape == HW + (3,)
    pipe.views.forget([t.id for t in tracks])  # what the pipeline does when tracks end
    assert len(pipe.views.images) == 0


def test_async_labels_arrive_without_stalling_and_relabel_on_growth():
    labeler = DominantColourLabeler()
    pipe = Pipeline(config(top_k=2), labeler=labeler)
    pipe.set_vocabulary(["red", "green", "blue"])
    boxes = [cube((0, 0, 0.4), 0.6), cube((2, 0, 0.4), 0.6)]
    for i, T in enumerate(orbit((1, 0, 0.4), 4.0, 1.5, np.arange(0, 360, 30))):
        pipe.step(make_frame(boxes, [COLOURS["green"], COLOURS["blue"]], T, hw=HW, index=i))
    insts = pipe.finalize()
    by_x = {round(float(i.centroid[0])): i.label for i in insts}
    assert by_x == {0: "green", 2: "blue"}
    assert labeler.calls >= 1
    pipe.close()


def test_a_failing_labeller_never_breaks_tracking():
    class Broken:
        text_matcher = None

        def label(self, requests):
            raise RuntimeError("model crashed")

    pipe = Pipeline(config(), labeler=Broken())
    boxes = [cube((0, 0, 0.4), 0.6)]
    for i, T in enumerate([look_at((-3, -1, 1.2), (0, 0, 0.4))] * 4):
        r = pipe.step(make_frame(boxes, [COLOURS["red"]], T, hw=HW, index=i))
        assert r.error is None
    time.sleep(0.2)
    (inst,) = pipe.finalize(wait_s=2.0)
    assert inst.label is None and inst.observations == 4
    pipe.close()


def test_a_revisit_that_is_only_as_good_does_not_replace_the_stored_view():
    kept = [_view(1, 0.5, 100, idx=3), _view(2, 0.5, 100, idx=7)]
    assert not would_keep(kept, _view(3, 0.5, 100, idx=50), 2)  # equal rank: the older image stays
    ranked, dropped = keep_top_k(kept + [_view(3, 0.5, 100, idx=50)], 2)
    assert [v.image_key for v in ranked] == [1, 2] and [v.image_key for v in dropped] == [3]
