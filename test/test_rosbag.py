"""ROS 2 bag writing and reading (ros2_opentrack.io.rosbag) on tiny scenes made here, plus 7-Scenes."""

import dataclasses
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from ros2_opentrack import geometry
from ros2_opentrack.errors import InputError
from ros2_opentrack.io import encodings as enc
from ros2_opentrack.io import open_scene
from ros2_opentrack.io.rosbag import BagTopics, RosbagReader, convert_frames_to_bag, convert_scene_to_bag
from ros2_opentrack.types import Frame, Mask2D, validate_frame

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SEVEN_SCENES = DATA / "7scenes_redkitchen"
HW = (24, 32)
K = np.array([[30.0, 0, 16.0], [0, 31.0, 12.0], [0, 0, 1]])


def rot_z(deg):
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def make_frames(n=5, with_masks=False, seed=0):
    """Frames whose values survive the bag exactly: depth on whole millimetres, stamps at 30 Hz from 10 s."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        mm = rng.integers(300, 5000, HW).astype(np.uint16)
        mm[0, :3] = 0  # invalid pixels stay 0
        T = np.eye(4)
        T[:3, :3] = rot_z(15 * i) @ np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]])
        T[:3, 3] = [0.1 * i, -0.2, 1.5]
        masks = None
        if with_masks:
            a = np.zeros(HW, bool)
            a[2:10, 3:12] = True
            b = np.zeros(HW, bool)
            b[12:20, 15 + i : 25 + i] = True
            masks = [Mask2D(mask=a, source_id=3), Mask2D(mask=b, source_id=700)]
        frames.append(
            Frame(
                rgb=rng.integers(0, 256, HW + (3,), dtype=np.uint8),
                depth=mm.astype(np.float32) / np.float32(1000.0),
                K=K.copy(),
                T_world_cam=T,
                stamp=10.0 + i / 30.0,
                index=i,
                masks=masks,
            )
        )
    return frames


def assert_same_frames(expected, got):
    assert len(got) == len(expected)
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(b.rgb, a.rgb)
        np.testing.assert_array_equal(b.depth, a.depth)
        np.testing.assert_allclose(b.K, a.K)
        np.testing.assert_allclose(b.T_world_cam, a.T_world_cam, atol=1e-9)
        assert abs(b.stamp - a.stamp) < 1e-8


@pytest.fixture(scope="module")
def frames():
    return make_frames()


@pytest.mark.parametrize("name", ["scene.mcap", "scene.db3", "scene_folder"])
def test_write_then_read_round_trip(tmp_path, frames, name):
    out = tmp_path / name
    summary = convert_frames_to_bag(frames, out)
    assert summary["frames"] == 5
    assert summary["storage"] == ("sqlite3" if name.endswith(".db3") else "mcap")
    assert summary["messages"] == {
        "/camera/color/image_raw": 5,
        "/camera/depth/image_raw": 5,
        "/camera/color/camera_info": 5,
        "/camera/pose": 5,
        "/tf": 5,
    }
    assert summary["duration_s"] == pytest.approx(4 / 30)
    assert summary["size_bytes"] > 5 * HW[0] * HW[1] * 5
    assert out.is_file() == (name != "scene_folder")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    reader = open_scene(out)  # dispatch by suffix / metadata.yaml
    assert isinstance(reader, RosbagReader)
    assert len(reader) == 5 and reader.pose_source == "pose"
    got = list(reader)
    assert_same_frames(frames, got)
    assert [f.index for f in got] == [0, 1, 2, 3, 4]
    assert got[0].frame_id == "camera_color_optical_frame"
    assert not reader.dropped


def test_storage_file_inside_a_bag_folder_reads_through_the_folder(tmp_path, frames):
    convert_frames_to_bag(frames, tmp_path / "bag")
    assert_same_frames(frames, list(RosbagReader(tmp_path / "bag" / "bag.mcap")))


def test_bag_folder_without_metadata_reads_its_single_storage_file(tmp_path, frames):
    convert_frames_to_bag(frames, tmp_path / "rec")
    (tmp_path / "rec" / "metadata.yaml").unlink()  # as a recording killed before it wrote its metadata
    assert_same_frames(frames, list(RosbagReader(tmp_path / "rec")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="0 .mcap/.db3 files"):
        RosbagReader(tmp_path / "empty")


def test_stride_and_max_frames(tmp_path, frames):
    convert_frames_to_bag(frames, tmp_path / "s.mcap")
    reader = RosbagReader(tmp_path / "s.mcap", stride=2, max_frames=2)
    assert len(reader) == 2
    assert_same_frames(frames[0:4:2], list(reader))
    with pytest.raises(InputError, match="stride"):
        RosbagReader(tmp_path / "s.mcap", stride=0)


def test_never_overwrites(tmp_path, frames):
    convert_frames_to_bag(frames[:1], tmp_path / "x.mcap")
    with pytest.raises(InputError, match="exists already"):
        convert_frames_to_bag(frames[:1], tmp_path / "x.mcap")


@pytest.mark.parametrize("pose_source", ["tf", "auto"])
def test_tf_only_bag(tmp_path, frames, pose_source):
    out = tmp_path / "tf.mcap"
    summary = convert_frames_to_bag(frames, out, write_pose=False)
    assert "/camera/pose" not in summary["messages"]
    reader = RosbagReader(out, topics=BagTopics(pose_source=pose_source))
    assert reader.pose_source == "tf"
    assert_same_frames(frames, list(reader))
    with pytest.raises(InputError, match="lacks topic"):
        RosbagReader(out, topics=BagTopics(pose_source="pose"))


def test_masks_round_trip(tmp_path):
    frames = make_frames(3, with_masks=True)
    out = tmp_path / "m.db3"
    summary = convert_frames_to_bag(frames, out)
    assert summary["messages"]["/camera/masks/image_raw"] == 3
    got = list(RosbagReader(out, with_masks=True))
    assert_same_frames(frames, got)
    for a, b in zip(frames, got):
        assert [m.source_id for m in b.masks] == [3, 700]
        for ma, mb in zip(a.masks, b.masks):
            np.testing.assert_array_equal(mb.mask, ma.mask)
    assert all(f.masks is None for f in RosbagReader(out))  # masks only when asked


def test_missing_topic_lists_what_the_bag_has(tmp_path, frames):
    convert_frames_to_bag(frames, tmp_path / "t.mcap")
    with pytest.raises(InputError) as info:
        RosbagReader(tmp_path / "t.mcap", topics=BagTopics(rgb="/rgb"))
    msg = str(info.value)
    assert "/rgb" in msg and "t.mcap" in msg
    assert "/camera/color/image_raw [sensor_msgs/msg/Image, 5 msgs]" in msg
    assert "/tf [tf2_msgs/msg/TFMessage" in msg
    with pytest.raises(InputError, match="with_masks needs"):
        RosbagReader(tmp_path / "t.mcap", with_masks=True, topics=BagTopics(masks=None))
    with pytest.raises(InputError, match="lacks topic.*/camera/masks/image_raw"):
        RosbagReader(tmp_path / "t.mcap", with_masks=True)


@pytest.mark.parametrize("name", ["c.mcap", "c.db3", "folder"])
def test_truncated_bag_raises_input_error_naming_the_file(tmp_path, name):
    frames = make_frames(8)
    out = tmp_path / name
    convert_frames_to_bag(frames, out)
    storage = out if out.is_file() else out / "folder.mcap"
    os.truncate(storage, storage.stat().st_size * 6 // 10)
    with pytest.raises(InputError) as info:
        list(RosbagReader(out))
    msg = str(info.value)
    assert str(out) in msg and "truncated or corrupt" in msg
    if storage.suffix == ".mcap":
        assert "complete messages readable" in msg and f"of {storage.stat().st_size}" in msg


def test_garbage_file_and_missing_path(tmp_path):
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"definitely not an mcap file" * 10)
    with pytest.raises(InputError, match="junk.mcap"):
        RosbagReader(junk)
    with pytest.raises(InputError, match="does not exist"):
        RosbagReader(tmp_path / "nope.mcap")


# -- hand-written bags: TF chains, interpolation, dropped frames ------------------------------------------


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def _header(ts, stamp, frame_id):
    sec = int(stamp)
    return ts.types["std_msgs/msg/Header"](
        stamp=ts.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=int(round((stamp - sec) * 1e9))),
        frame_id=frame_id,
    )


def _tf_message(ts, stamp, parent, child, T):
    t, q = geometry.matrix_to_pose(T)
    Tt = ts.types
    tr = Tt["geometry_msgs/msg/TransformStamped"](
        header=_header(ts, stamp, parent),
        child_frame_id=child,
        transform=Tt["geometry_msgs/msg/Transform"](
            translation=Tt["geometry_msgs/msg/Vector3"](x=t[0], y=t[1], z=t[2]),
            rotation=Tt["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]),
        ),
    )
    return Tt["tf2_msgs/msg/TFMessage"](transforms=[tr])


def _write(path, items):
    """items: (topic, msgtype, message, log time s) -> a rosbag2 folder."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = _typestore()
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    conns = {}
    for topic, msgtype, msg, stamp in sorted(items, key=lambda item: item[3]):
        if topic not in conns:
            conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
        writer.write(conns[topic], int(stamp * 1e9), ts.serialize_cdr(msg, msgtype))
    writer.close()


def _camera_items(ts, frames, tweak=None):
    """rgb, depth and camera_info messages of frames (as convert_frames_to_bag makes them), optionally edited."""
    from ros2_opentrack.io.rosbag import _frame_messages

    items = []
    for f in frames:
        for topic, msgtype, msg in _frame_messages(ts, f, f.stamp, BagTopics(), {"pose": False, "tf": False}):
            msg = tweak(f, topic, msg) if tweak else msg
            items.append((topic, msgtype, msg, f.stamp))
    return items


def test_tf_chain_static_mount_and_interpolation(tmp_path):
    """map -> base_link (dynamic, samples 10 ms either side of each image) -> camera (static mount)."""
    ts = _typestore()
    frames = make_frames(3)
    T_base_cam = np.eye(4)
    T_base_cam[:3, :3] = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]])  # optical frame on a base link
    T_base_cam[:3, 3] = [0.2, 0.0, 0.5]
    items = _camera_items(ts, frames)
    items.append(
        (
            "/tf_static",
            "tf2_msgs/msg/TFMessage",
            _tf_message(ts, 0.0, "base_link", "camera_color_optical_frame", T_base_cam),
            0.0,
        )
    )
    expected = []
    for i, f in enumerate(frames):
        before, after = np.eye(4), np.eye(4)
        before[:3, :3], after[:3, :3] = rot_z(10 * i), rot_z(10 * i + 20)
        before[:3, 3], after[:3, 3] = [i, 0, 0], [i + 0.2, 0.4, 0]
        for dt, T in ((-0.01, before), (0.01, after)):
            items.append(
                ("/tf", "tf2_msgs/msg/TFMessage", _tf_message(ts, f.stamp + dt, "/map", "base_link", T), f.stamp + dt)
            )
        halfway = np.eye(4)
        halfway[:3, :3] = rot_z(10 * i + 10)  # slerp halfway between 10i and 10i + 20 degrees
        halfway[:3, 3] = [i + 0.1, 0.2, 0]
        expected.append(halfway @ T_base_cam)
    _write(tmp_path / "chain", items)
    reader = RosbagReader(tmp_path / "chain")
    assert reader.pose_source == "tf"
    got = list(reader)
    assert len(got) == 3
    for T, f in zip(expected, got):
        np.testing.assert_allclose(f.T_world_cam, T, atol=1e-9)
    # without interpolation: the nearest sample (ties go to the earlier one)
    got = list(RosbagReader(tmp_path / "chain", interpolate=False))
    np.testing.assert_allclose(got[1].T_world_cam[:3, :3], rot_z(10) @ T_base_cam[:3, :3], atol=1e-9)
    # a camera frame with no TF path to map: every frame is dropped, counted by reason
    reader = RosbagReader(tmp_path / "chain", topics=BagTopics(camera_frame="elsewhere"))
    assert list(reader) == [] and reader.dropped == {"no_pose_within_tolerance": 3}


def test_frames_that_cannot_be_assembled_are_dropped_by_reason(tmp_path):
    ts = _typestore()
    frames = make_frames(5)

    def tweak(f, topic, msg):
        if f.index == 1 and topic.endswith("image_raw") and "color" in topic:
            return dataclasses.replace(msg, encoding="yuv422")
        if f.index == 2 and topic.endswith("camera_info"):
            return dataclasses.replace(msg, k=np.zeros(9))
        if f.index == 3 and "depth" in topic:  # depth 0.1 s late: beyond the 20 ms sync tolerance
            return dataclasses.replace(msg, header=_header(ts, f.stamp + 0.1, "camera_color_optical_frame"))
        return msg

    items = _camera_items(ts, frames, tweak)
    for f in frames:
        if f.index != 4:  # frame 4 has no pose within tolerance
            t, q = geometry.matrix_to_pose(f.T_world_cam)
            Tt = ts.types
            pose = Tt["geometry_msgs/msg/PoseStamped"](
                header=_header(ts, f.stamp, "map"),
                pose=Tt["geometry_msgs/msg/Pose"](
                    position=Tt["geometry_msgs/msg/Point"](x=t[0], y=t[1], z=t[2]),
                    orientation=Tt["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]),
                ),
            )
            items.append(("/camera/pose", "geometry_msgs/msg/PoseStamped", pose, f.stamp))
    _write(tmp_path / "bad", items)
    reader = RosbagReader(tmp_path / "bad", interpolate=False, pose_tolerance_s=0.02)  # frames 33 ms apart
    assert len(reader) == 5
    got = list(reader)
    assert [f.index for f in got] == [0]
    assert_same_frames(frames[:1], got)
    assert reader.dropped == {
        "bad_encoding": 1,
        "camera_info_invalid": 1,
        "no_depth_within_tolerance": 1,
        "no_pose_within_tolerance": 1,
    }


def test_camera_info_of_another_size_is_rescaled_to_depth(tmp_path):
    ts = _typestore()
    frames = make_frames(1)

    def tweak(f, topic, msg):
        if topic.endswith("camera_info"):  # calibration at twice the depth resolution
            return dataclasses.replace(msg, width=64, height=48, k=(np.diag([2, 2, 1.0]) @ K).ravel())
        return msg

    items = _camera_items(ts, frames, tweak)
    items.append(
        (
            "/tf",
            "tf2_msgs/msg/TFMessage",
            _tf_message(ts, frames[0].stamp, "map", "camera_color_optical_frame", frames[0].T_world_cam),
            frames[0].stamp,
        )
    )
    _write(tmp_path / "scaled", items)
    (frame,) = list(RosbagReader(tmp_path / "scaled"))
    np.testing.assert_allclose(frame.K, K)


# -- real ROS 2 and real data ------------------------------------------------------------------------------


def test_bag_deserialises_with_rclpy(tmp_path, frames):
    """The bag is a real ROS 2 bag: rclpy's own CDR deserialiser reads its messages."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_DOMAIN_ID", "73")
    serialization = pytest.importorskip("rclpy.serialization")
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    geometry_msgs = pytest.importorskip("geometry_msgs.msg")
    from rosbags.rosbag2.storage_mcap import McapReader

    out = tmp_path / "r.mcap"
    convert_frames_to_bag(frames, out)
    storage = McapReader(out)
    storage.open()
    try:
        by_topic = {}
        for conn, _, raw in storage.messages(storage.connections):
            by_topic.setdefault(conn.topic, []).append(bytes(raw))
    finally:
        storage.close()
    image = serialization.deserialize_message(by_topic["/camera/color/image_raw"][2], sensor_msgs.Image)
    assert (image.encoding, image.height, image.width, image.step) == ("rgb8", 24, 32, 96)
    assert image.header.frame_id == "camera_color_optical_frame"
    assert image.header.stamp.sec == 10 and abs(image.header.stamp.nanosec - 66_666_667) <= 1
    rgb = enc.image_to_numpy(image.encoding, image.height, image.width, image.step, bytes(image.data))
    np.testing.assert_array_equal(rgb, frames[2].rgb)
    depth = serialization.deserialize_message(by_topic["/camera/depth/image_raw"][2], sensor_msgs.Image)
    assert depth.encoding == "16UC1"
    mm = enc.image_to_numpy(depth.encoding, depth.height, depth.width, depth.step, bytes(depth.data))
    np.testing.assert_array_equal(mm, np.rint(frames[2].depth * 1000).astype(np.uint16))
    info = serialization.deserialize_message(by_topic["/camera/color/camera_info"][0], sensor_msgs.CameraInfo)
    np.testing.assert_allclose(np.reshape(info.k, (3, 3)), K)
    assert info.distortion_model == "plumb_bob"
    pose = serialization.deserialize_message(by_topic["/camera/pose"][1], geometry_msgs.PoseStamped)
    p, o = pose.pose.position, pose.pose.orientation
    np.testing.assert_allclose(
        geometry.pose_to_matrix([p.x, p.y, p.z], [o.x, o.y, o.z, o.w]), frames[1].T_world_cam, atol=1e-9
    )


def test_convert_scannet_layout_folder_with_instance_masks(tmp_path):
    frames = make_frames(3, with_masks=True)
    scene = tmp_path / "scene"
    for sub in ("color", "depth", "pose", "intrinsic", "instance"):
        (scene / sub).mkdir(parents=True)
    np.savetxt(scene / "intrinsic" / "intrinsic_depth.txt", K)
    for f in frames:
        cv2.imwrite(str(scene / "color" / f"{f.index}.jpg"), f.rgb[..., ::-1])
        cv2.imwrite(str(scene / "depth" / f"{f.index}.png"), np.rint(f.depth * 1000).astype(np.uint16))
        np.savetxt(scene / "pose" / f"{f.index}.txt", f.T_world_cam)
        ids = np.zeros(HW, np.uint16)
        for m in f.masks:
            ids[m.mask] = m.source_id
        cv2.imwrite(str(scene / "instance" / f"{f.index}.png"), ids)
    summary = convert_scene_to_bag(scene, tmp_path / "scene.mcap", progress=False)
    assert summary["frames"] == 3 and summary["messages"]["/camera/masks/image_raw"] == 3
    source = list(open_scene(scene, with_masks=True))
    got = list(RosbagReader(tmp_path / "scene.mcap", with_masks=True))
    assert len(got) == 3
    for a, b in zip(source, got):
        np.testing.assert_array_equal(b.rgb, a.rgb)  # the jpeg-decoded pixels, losslessly in the bag
        np.testing.assert_array_equal(b.depth, a.depth)
        np.testing.assert_allclose(b.T_world_cam, a.T_world_cam, atol=1e-9)
        assert b.stamp == pytest.approx(a.stamp if a.index else 0.0, abs=1e-8)
        assert [m.source_id for m in b.masks] == [3, 700]


@pytest.mark.skipif(not SEVEN_SCENES.is_dir(), reason="shared 7-Scenes data is absent")
def test_seven_scenes_convert_and_read_20_frames(tmp_path):
    out = tmp_path / "kitchen.mcap"
    summary = convert_scene_to_bag(SEVEN_SCENES, out, max_frames=20, progress=False)
    assert summary["frames"] == 20 and summary["messages"]["/tf"] == 20
    assert summary["duration_s"] == pytest.approx(19 / 30)
    source = [validate_frame(f) for f in open_scene(SEVEN_SCENES, max_frames=20)]  # as the pipeline sees them
    reader = open_scene(out)
    assert len(reader) == 20
    got = list(reader)
    assert len(got) == len(source) == 20
    for a, b in zip(source, got):
        np.testing.assert_array_equal(b.rgb, a.rgb)
        assert np.abs(b.depth - a.depth).max() <= 0.0005 + 1e-6  # millimetre quantisation
        np.testing.assert_allclose(b.K, a.K)
        np.testing.assert_allclose(b.T_world_cam, a.T_world_cam, atol=1e-9)
        assert b.stamp == pytest.approx(a.index / 30.0, abs=1e-8)


def test_odometry_pose_with_static_camera_mount_and_compressed_rgb(tmp_path):
    """nav_msgs/Odometry gives base_link in odom; /tf_static mounts the camera; rgb arrives as PNG."""
    ts = _typestore()
    Tt = ts.types
    frames = make_frames(2)
    T_base_cam = np.eye(4)
    T_base_cam[:3, 3] = [0.3, 0.0, 0.2]

    def tweak(f, topic, msg):
        if "color/image_raw" in topic:
            ok, png = cv2.imencode(".png", f.rgb[..., ::-1].copy())
            return Tt["sensor_msgs/msg/CompressedImage"](
                header=msg.header, format="rgb8; png compressed bgr8", data=png.ravel()
            )
        return msg

    items = [
        (topic, "sensor_msgs/msg/CompressedImage" if "color/image_raw" in topic else msgtype, msg, stamp)
        for topic, msgtype, msg, stamp in _camera_items(ts, frames, tweak)
    ]
    items.append(
        (
            "/tf_static",
            "tf2_msgs/msg/TFMessage",
            _tf_message(ts, 0.0, "base_link", "camera_color_optical_frame", T_base_cam),
            0.0,
        )
    )
    for f in frames:
        T_odom_base = f.T_world_cam @ np.linalg.inv(T_base_cam)
        t, q = geometry.matrix_to_pose(T_odom_base)
        pose = Tt["geometry_msgs/msg/PoseWithCovariance"](
            pose=Tt["geometry_msgs/msg/Pose"](
                position=Tt["geometry_msgs/msg/Point"](x=t[0], y=t[1], z=t[2]),
                orientation=Tt["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]),
            ),
            covariance=np.zeros(36),
        )
        twist = Tt["geometry_msgs/msg/TwistWithCovariance"](
            twist=Tt["geometry_msgs/msg/Twist"](
                linear=Tt["geometry_msgs/msg/Vector3"](x=0, y=0, z=0),
                angular=Tt["geometry_msgs/msg/Vector3"](x=0, y=0, z=0),
            ),
            covariance=np.zeros(36),
        )
        odom = Tt["nav_msgs/msg/Odometry"](
            header=_header(ts, f.stamp, "odom"), child_frame_id="base_link", pose=pose, twist=twist
        )
        items.append(("/odom", "nav_msgs/msg/Odometry", odom, f.stamp))
    _write(tmp_path / "odom", items)
    reader = RosbagReader(tmp_path / "odom")
    assert reader.pose_source == "odom"
    assert_same_frames(frames, list(reader))
