"""Message conversions (round trips, hand-computed values), the stamp synchroniser, the drop-oldest queue and
the fallback TF buffer. No DDS traffic: messages are built and read in-process."""

import math

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("ros2_opentrack.msg", reason="messages not built: run scripts/build_msgs.sh")

from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from ros_support import ros_messages  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from ros2_opentrack.errors import InputError  # noqa: E402
from ros2_opentrack.msg import Instance3D, Instance3DArray  # noqa: E402
from ros2_opentrack.ros import conversions as conv  # noqa: E402
from ros2_opentrack.ros.markers import MarkerBook  # noqa: E402
from ros2_opentrack.ros.sync import DropOldestQueue, StampSync  # noqa: E402
from ros2_opentrack.tf_tree import TfBuffer, TransformUnavailable  # noqa: E402
from ros2_opentrack.types import Instance, TrackState  # noqa: E402

HEADER = Header(frame_id="map", stamp=conv.sec_to_stamp(12.25))


def _instance(i=3, label="mug"):
    pts = np.array([[0, 0, 0], [1, 2, 3], [0.5, 1, 1.5]], np.float32)
    return Instance(
        id=i,
        points=pts,
        colors=np.zeros((3, 3), np.uint8),
        label=label,
        score=0.75,
        observations=4,
        state=TrackState.DORMANT,
        first_seen=1.5,
        last_seen=7.25,
    )


def test_stamp_round_trip():
    assert conv.stamp_to_sec(conv.sec_to_stamp(12.25)) == 12.25
    s = conv.sec_to_stamp(1.9999999999)
    assert (s.sec, s.nanosec) == (2, 0)


def test_instance_msg_values_and_serialisation_round_trip():
    msg = conv.instance_to_msg(_instance())
    assert (msg.id, msg.label, msg.point_count, msg.observation_count) == (3, "mug", 3, 4)
    assert msg.state == Instance3D.STATE_DORMANT
    assert (msg.centroid.x, msg.centroid.y, msg.centroid.z) == pytest.approx((0.5, 1.0, 1.5))
    assert (msg.box_size.x, msg.box_size.y, msg.box_size.z) == pytest.approx((1.0, 2.0, 3.0))
    lo, hi = ros_messages.box_of_msg(msg)
    np.testing.assert_allclose(lo, [0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(hi, [1, 2, 3], atol=1e-6)
    assert conv.stamp_to_sec(msg.last_seen) == 7.25 and msg.confidence == pytest.approx(0.75)
    arr = conv.instances_to_msg([_instance(3), _instance(9, None)], HEADER)
    back = deserialize_message(serialize_message(arr), Instance3DArray)
    assert [i.id for i in back.instances] == [3, 9] and back.instances[1].label == ""
    assert back.header.frame_id == "map"


def test_pointcloud2_round_trip_and_fields():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(50, 3)).astype(np.float32)
    cols = rng.integers(0, 256, (50, 3)).astype(np.uint8)
    ids = rng.integers(1, 9, 50)
    msg = conv.cloud_msg(pts, cols, ids, HEADER)
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb", "instance"]
    assert msg.point_step == 20 and msg.row_step == 1000 and msg.width == 50 and msg.height == 1
    p2, c2, i2 = ros_messages.cloud_from_msg(msg)
    np.testing.assert_array_equal(p2, pts)
    np.testing.assert_array_equal(c2, cols)
    np.testing.assert_array_equal(i2, ids)
    # rgb is packed 0x00RRGGBB in a float32 field (the PCL / RViz convention)
    one = conv.cloud_msg(np.zeros((1, 3)), np.array([[0x12, 0x34, 0x56]]), np.array([1]), HEADER)
    assert np.frombuffer(bytes(one.data)[12:16], "<u4")[0] == 0x123456
    with pytest.raises(InputError):
        conv.cloud_msg(pts, cols[:3], ids, HEADER)


def test_instance_cloud_colours_by_id_and_subsamples():
    from ros2_opentrack.io.writers import instance_color

    msg = conv.instance_cloud([_instance(3), _instance(4)], HEADER, max_points=4)
    pts, cols, ids = ros_messages.cloud_from_msg(msg)
    assert len(pts) == 4
    for c, i in zip(cols, ids):
        np.testing.assert_array_equal(c, instance_color(int(i)))


def test_images_depth_and_masks():
    h = Header(frame_id="cam")
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(conv.rgb_from_msg(ros_messages.image_msg(rgb, "rgb8", h)), rgb)
    np.testing.assert_array_equal(conv.rgb_from_msg(ros_messages.image_msg(rgb, "bgr8", h)), rgb)
    mm = np.array([[1000, 0], [2500, 65535]], np.uint16)
    np.testing.assert_allclose(conv.depth_from_msg(ros_messages.image_msg(mm, "16UC1", h)), [[1.0, 0.0], [2.5, 65.535]])
    m = np.array([[1.5, np.nan], [-1.0, 2.0]], np.float32)
    np.testing.assert_allclose(conv.depth_from_msg(ros_messages.image_msg(m, "32FC1", h)), [[1.5, 0], [0, 2.0]])
    with pytest.raises(InputError, match="depth image has encoding 'rgb8'"):
        conv.depth_from_msg(ros_messages.image_msg(rgb, "rgb8", h))
    with pytest.raises(InputError, match="rgb image has encoding '16UC1'"):
        conv.rgb_from_msg(ros_messages.image_msg(mm, "16UC1", h))
    labels = np.array([[0, 7, 7], [2, 0, 7]], np.int32)
    for enc, arr in (("32SC1", labels), ("16UC1", labels.astype(np.uint16)), ("mono8", labels.astype(np.uint8))):
        masks = conv.masks_from_label_image(ros_messages.image_msg(arr, enc, h)).masks
        assert [mk.source_id for mk in masks] == [2, 7]
        np.testing.assert_array_equal(masks[1].mask, labels == 7)
    with pytest.raises(InputError, match="label image"):
        conv.masks_from_label_image(ros_messages.image_msg(m, "32FC1", h))


def test_camera_info_and_pose_conversions():
    from sensor_msgs.msg import CameraInfo

    info = CameraInfo(width=640, height=480, k=[500.0, 0, 320, 0, 510, 240, 0, 0, 1])
    K = conv.intrinsics_from_camera_info(info, (480, 640))
    assert (K[0, 0], K[1, 1], K[0, 2], K[1, 2]) == (500, 510, 320, 240)
    with pytest.raises(InputError, match="all zeros"):
        conv.intrinsics_from_camera_info(CameraInfo(width=640, height=480))
    half = conv.intrinsics_from_camera_info(info, (240, 320))  # same aspect: a resized image, K rescaled
    assert (half[0, 0], half[1, 1], half[0, 2], half[1, 2]) == (250, 255, 160, 120)
    with pytest.raises(InputError, match="640x480.*another aspect ratio"):
        conv.intrinsics_from_camera_info(info, (240, 640))
    T = np.eye(4)
    T[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]  # 90 degrees about z
    T[:3, 3] = [1, 2, 3]
    pose = ros_messages.matrix_to_pose(T)
    assert (pose.orientation.z, pose.orientation.w) == pytest.approx((math.sqrt(0.5), math.sqrt(0.5)))
    np.testing.assert_allclose(conv.pose_to_matrix(pose), T, atol=1e-12)
    np.testing.assert_allclose(conv.transform_to_matrix(ros_messages.matrix_to_transform(T)), T, atol=1e-12)


def test_stamp_sync_matches_within_tolerance_and_counts_drops():
    s = StampSync(["depth", "rgb"], tolerance=0.01, anchor="depth")
    assert s.add("rgb", 1.000, "r1") == []
    assert s.add("depth", 1.004, "d1") == [{"depth": "d1", "rgb": "r1"}]
    assert s.add("depth", 1.100, "d2") == []  # waits for its rgb
    assert s.add("rgb", 1.150, "r3") == []  # rgb is past 1.100 + tol: d2 can never match
    assert s.dropped["unmatched"] == 1
    assert s.add("depth", 1.152, "d3") == [{"depth": "d3", "rgb": "r3"}]
    assert s.add("depth", 1.000, "old") == [] and s.dropped["out_of_order"] == 1
    assert s.add("rgb", 1.150, "dup") == [] and s.dropped["out_of_order"] == 2


def test_drop_oldest_queue():
    q = DropOldestQueue(2)
    assert q.put(1) and q.put(2) and not q.put(3)
    assert q.dropped == 1 and len(q) == 2
    assert q.get(0) == 2 and q.get(0) == 3 and q.get(0.01) is None


def test_tf_buffer_chain_interpolation_and_limits():
    tf = TfBuffer(tolerance=0.05)
    base = np.eye(4)
    base[:3, 3] = [0, 0, 1]
    tf.set_transform("base", "camera", base, 0, static=True)
    for t, x in ((1.0, 0.0), (2.0, 2.0)):
        T = np.eye(4)
        T[0, 3] = x
        tf.set_transform("map", "base", T, t)
    T = tf.lookup("map", "camera", 1.5)  # halfway: x = 1, camera 1 m above the base
    np.testing.assert_allclose(T[:3, 3], [1.0, 0.0, 1.0])
    np.testing.assert_allclose(tf.lookup("camera", "map", 1.5)[:3, 3], [-1.0, 0.0, -1.0])
    np.testing.assert_allclose(tf.lookup("map", "camera", 2.04)[:3, 3], [2.0, 0.0, 1.0])  # within tolerance
    with pytest.raises(TransformUnavailable, match="outside"):
        tf.lookup("map", "camera", 2.2)
    with pytest.raises(TransformUnavailable, match="no transform"):
        tf.lookup("map", "elsewhere", 1.5)
    bad = np.eye(4)
    bad[0, 3] = np.nan
    with pytest.raises(InputError):
        tf.set_transform("map", "base", bad, 3.0)


def test_tf_buffer_never_interpolates_across_a_gap():
    tf = TfBuffer(cache_s=float("inf"), tolerance=0.05, interp_reach_s=0.05)
    for t, x in ((0.0, 0.0), (0.1, 1.0), (1.0, 10.0), (1.02, 10.2)):
        T = np.eye(4)
        T[0, 3] = x
        tf.set_transform("map", "cam", T, t)
    assert tf.lookup("map", "cam", 0.05)[0, 3] == pytest.approx(0.5)  # both samples 50 ms away: slerp
    assert tf.lookup("map", "cam", 1.01)[0, 3] == pytest.approx(10.1)
    assert tf.lookup("map", "cam", 0.14)[0, 3] == pytest.approx(1.0)  # in a 0.9 s gap: the nearest sample
    with pytest.raises(TransformUnavailable, match="no sample within 0.05 s"):
        tf.lookup("map", "cam", 0.5)
    assert tf.lookup("map", "cam", 0.0)[0, 3] == 0.0 and tf.lookup("map", "cam")[0, 3] == pytest.approx(10.2)
    tf.interpolate = False
    assert tf.lookup("map", "cam", 0.04)[0, 3] == pytest.approx(0.0)  # nearest sample within tolerance


def test_wait_lookup_waits_for_the_pose_at_the_stamp_rather_than_take_the_previous_one():
    """tf lagging the images by a frame: the previous pose (33 ms old, inside the 50 ms tolerance) must not be
    used while the pose at the stamp is on its way; once the wait times out, the tolerance serves."""
    import threading

    tf = TfBuffer(tolerance=0.05)

    def at(x):
        T = np.eye(4)
        T[0, 3] = x
        return T

    tf.set_transform("map", "cam", at(0.0), 1.0)
    late = threading.Timer(0.05, lambda: tf.set_transform("map", "cam", at(1.0), 1.0 + 1 / 30))
    late.start()
    try:
        assert tf.wait_lookup("map", "cam", 1.0 + 1 / 30, timeout_s=2.0)[0, 3] == pytest.approx(1.0)
    finally:
        late.join()
    assert tf.lookup("map", "cam", 1.05)[0, 3] == pytest.approx(1.0)  # no wait: the nearest within tolerance
    assert tf.wait_lookup("map", "cam", 1.05, timeout_s=0.02)[0, 3] == pytest.approx(1.0)  # nothing newer came
    with pytest.raises(TransformUnavailable, match="outside"):
        tf.wait_lookup("map", "cam", 1.2, timeout_s=0.02)


def test_marker_book_deletes_vanished_ids():
    from visualization_msgs.msg import Marker

    book = MarkerBook()
    first = book.update([_instance(1), _instance(2)], HEADER)
    assert sorted((m.ns, m.id) for m in first.markers if m.action == Marker.ADD) == [
        ("instance_boxes", 1),
        ("instance_boxes", 2),
        ("instance_labels", 1),
        ("instance_labels", 2),
        ("instance_points", 1),
        ("instance_points", 2),
    ]
    second = book.update([_instance(2)], HEADER)  # 1 was merged into 2
    deleted = sorted((m.ns, m.id) for m in second.markers if m.action == Marker.DELETE)
    assert deleted == [("instance_boxes", 1), ("instance_labels", 1), ("instance_points", 1)]
    text = [m for m in second.markers if m.ns == "instance_labels" and m.action == Marker.ADD][0]
    assert text.text == "2: mug"
    box = [m for m in second.markers if m.ns == "instance_boxes" and m.action == Marker.ADD][0]
    assert (box.scale.x, box.scale.y, box.scale.z) == pytest.approx((1, 2, 3))
    # same id, same colour, every time
    again = MarkerBook().update([_instance(2)], HEADER)
    assert again.markers[0].color == box.color


def test_presence_fields_and_compressed_decoders():
    import struct

    import cv2
    from sensor_msgs.msg import CompressedImage

    pts = np.array([[0, 0, 0], [1, 2, 3]], np.float32)
    inst = Instance(
        id=9, points=pts, colors=np.zeros((2, 3), np.uint8), presence="moved", presence_since=12.5, moved_from=3
    )
    m = conv.instance_to_msg(inst)
    assert (m.presence, conv.stamp_to_sec(m.presence_since), m.moved_from) == ("moved", 12.5, 3)
    assert m.presence == m.PRESENCE_MOVED
    plain = conv.instance_to_msg(Instance(id=1, points=pts, colors=np.zeros((2, 3), np.uint8)))
    assert (plain.presence, plain.moved_from) == ("present", -1)

    depth = np.arange(12, dtype=np.uint16).reshape(3, 4) * 250
    png = cv2.imencode(".png", depth)[1].tobytes()
    msg = CompressedImage(format="16UC1; compressedDepth png", data=struct.pack("<iff", 0, 0.0, 0.0) + png)
    assert np.allclose(conv.depth_from_any(msg), depth / 1000.0)
    assert np.allclose(conv.depth_from_any(CompressedImage(format="16UC1; png", data=png)), depth / 1000.0)
    labels = np.zeros((3, 4), np.uint16)
    labels[1:, 2:] = 5
    masks = conv.masks_from_any(CompressedImage(format="16UC1; png", data=cv2.imencode(".png", labels)[1].tobytes()))
    assert len(masks.masks) == 1 and masks.masks[0].mask.sum() == 4
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[..., 0] = 200  # red
    got = conv.rgb_from_any(
        CompressedImage(format="rgb8; png compressed bgr8", data=cv2.imencode(".png", rgb[..., ::-1])[1].tobytes())
    )
    assert np.array_equal(got, rgb)
    for bad, fn in (
        (CompressedImage(format="jpeg", data=b"not an image"), conv.rgb_from_any),
        (
            CompressedImage(format="16UC1; png", data=cv2.imencode(".png", rgb)[1].tobytes()),
            conv.depth_from_any,
        ),  # 8-bit colour is not depth
        (CompressedImage(format="16UC1; compressedDepth png", data=b""), conv.depth_from_any),
    ):
        with pytest.raises(InputError):
            fn(bad)
