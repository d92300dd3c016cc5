"""preview.png (io/preview.py): the top-down map with boxes, ids and labels, the strip of best views, and the
per-frame instance drawing the node's ~/debug_image uses. No ROS."""

import numpy as np

from ros2_opentrack import synthetic
from ros2_opentrack.config import OpenTrackConfig
from ros2_opentrack.io import preview
from ros2_opentrack.io.writers import instance_color, write_outputs
from ros2_opentrack.pipeline import Pipeline


def _run():
    cfg = OpenTrackConfig()
    cfg.masks.source = "dataset"
    cfg.perception.features.name = "color_hist"
    cfg.perception.labeler.name = "none"
    cfg.perception.text_matcher.name = "none"
    cfg.keyframes.every_n = 1
    pipe = Pipeline(cfg)
    frames = synthetic.render_sequence(synthetic.make_room(seed=0, n_objects=5), n_frames=10, hw=(120, 160))
    for f in frames:
        pipe.step(f)
    return pipe, frames


def test_preview_png_top_down_and_view_strip(tmp_path):
    import cv2

    pipe, _ = _run()
    instances = pipe.instances()
    assert instances
    paths = write_outputs(instances, tmp_path, pipe.map_points(), view_image=pipe.view_image)
    img = cv2.imread(str(paths["preview"]))[..., ::-1]
    top = preview.top_down(instances, pipe.map_points())
    assert img.shape[1] == 900 and img.shape[0] > top.shape[0]  # the strip of views is below the map
    assert np.array_equal(img[: top.shape[0]], top)
    for inst in instances:  # every instance drawn in its colour on the map, and its view in the strip
        assert (top == instance_color(inst.id)).all(axis=2).sum() > 20, inst.id
    strip = img[top.shape[0] + 6 :]
    assert (strip == (255, 0, 0)).all(axis=2).sum() > 50  # red boxes of the best views
    # the synthetic room is z-up: the top-down view looks along z
    assert preview.up_axis_of(pipe.map_points()[0]) == 2
    # without views: just the map; without anything: still a picture
    assert preview.preview_image(instances, pipe.map_points(), None).shape == top.shape
    assert preview.preview_image([], None, None).ndim == 3


def test_draw_instances_outlines_what_is_in_view():
    pipe, frames = _run()
    f = frames[-1]
    instances = pipe.instances()
    img, drawn = preview.draw_instances(f.rgb, instances, f.K, f.T_world_cam)
    assert img.shape == f.rgb.shape and drawn and set(drawn) <= {i.id for i in instances}
    for i in drawn:
        assert (img == instance_color(i)).all(axis=2).sum() >= 20
    behind = np.eye(4)
    behind[:3, 3] = [0, 0, 100.0]  # a camera far away looking away from the room: nothing in view
    _, none = preview.draw_instances(f.rgb, instances, f.K, behind)
    assert none == []
