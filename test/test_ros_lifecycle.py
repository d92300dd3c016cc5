"""The node a ROS 2 engineer expects, with real rclpy in-process: lifecycle transitions decide what exists, queries
never hold frames up (a deliberately slow labeller), the vocabulary / enable / query / save / load services,
compressed inputs (real 7-Scenes frames) equal raw ones, Detection3DArray equals Instance3DArray, the debug
image, per-input QoS and publisher qos_overrides."""

import os
import struct
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("ros2_opentrack.srv", reason="messages not built: run scripts/build_msgs.sh")
pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs not built: run scripts/build_msgs.sh")
sys.path.insert(0, str(Path(__file__).parent / "ros_support"))

import ros_messages  # noqa: E402
from rig import NODE_TEST_PARAMS, Rig, feed, init_ros, stamp_of  # noqa: E402

init_ros(domain_id=140 + os.getpid() % 50)  # before any rclpy use; loopback only

from lifecycle_msgs.srv import GetState  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.qos import ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402

from ros2_opentrack import synthetic  # noqa: E402
from ros2_opentrack.config import from_flat  # noqa: E402
from ros2_opentrack.perception.base import LabelResult  # noqa: E402
from ros2_opentrack.pipeline import Pipeline  # noqa: E402
from ros2_opentrack.ros import conversions as conv  # noqa: E402
from ros2_opentrack.ros import params  # noqa: E402
from ros2_opentrack.ros.node import OpenTrackNode  # noqa: E402
from ros2_opentrack.srv import LoadMap, Query, SetVocabulary  # noqa: E402

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE
SEVEN_SCENES = Path(__file__).resolve().parents[2] / "shared" / "data" / "7scenes_redkitchen"
BASE = dict(NODE_TEST_PARAMS)


@pytest.fixture(scope="module")
def room_frames():
    return synthetic.render_sequence(synthetic.make_room(seed=0, n_objects=5), n_frames=10, hw=(120, 160))


@pytest.fixture
def make(tmp_path):
    """make(extra params, pipeline=None, activate=True, **Rig kwargs) -> Rig."""
    rigs = []

    def build(extra=None, pipeline=None, activate=True, node_kwargs=None, wait=True, **rig_kwargs):
        values = {**BASE, "output_dir": str(tmp_path / "saved"), **(extra or {})}
        node = OpenTrackNode(pipeline=pipeline, parameter_overrides=params.overrides(values), **(node_kwargs or {}))
        r = Rig(node, activate=activate, **rig_kwargs)
        if activate and wait:
            assert r.wait_for_subscribers()
        rigs.append(r)
        return r

    yield build
    for r in rigs:
        r.close()


def sub_topics(node) -> set:
    return {s.topic_name for s in node.subscriptions}


def service_names(node) -> set:
    return {node.resolve_service_name(s.srv_name) for s in node.services}


def box(msg):
    return (
        msg.box_pose.position.x,
        msg.box_pose.position.y,
        msg.box_pose.position.z,
        msg.box_size.x,
        msg.box_size.y,
        msg.box_size.z,
    )


# ---------------------------------------------------------------------------------------------------------
# lifecycle


def test_lifecycle_transitions_decide_what_exists(make, room_frames):
    r = make(activate=False)
    node = r.node
    state = lambda: r.call(GetState, "/opentrack/get_state").current_state.label  # noqa: E731
    assert state() == "unconfigured" and node.pipeline is None
    assert not {"/rgb", "/depth", "/masks", "/camera_info", "/query", "/tf"} & sub_topics(node)
    assert "/opentrack/save" not in service_names(node) and "/instances" not in {p.topic_name for p in node.publishers}

    assert node.trigger_configure() == SUCCESS, node.last_error
    assert state() == "inactive" and node.pipeline is not None
    assert {"/instances", "/detections", "/opentrack/debug_image"} <= {p.topic_name for p in node.publishers}
    assert {
        "/opentrack/save",
        "/opentrack/load",
        "/opentrack/query",
        "/opentrack/set_vocabulary",
        "/opentrack/enable",
        "/opentrack/reset",
    } <= service_names(node)
    assert not {"/rgb", "/depth", "/masks", "/camera_info", "/query", "/tf"} & sub_topics(node)  # none yet

    assert node.trigger_activate() == SUCCESS
    assert state() == "active"
    assert {"/rgb", "/depth", "/masks", "/camera_info", "/query", "/tf"} <= sub_topics(node)
    assert r.wait_for_subscribers()
    feed(r, room_frames)
    ids = [int(i.id) for i in r.got["instances"][-1].instances]
    assert ids

    assert node.trigger_deactivate() == SUCCESS
    assert state() == "inactive"
    assert not {"/rgb", "/depth", "/masks", "/camera_info", "/query"} & sub_topics(node)
    assert [int(i.id) for i in node.pipeline.instances()] == ids  # the map is kept
    n = r.counts["instances"]
    r.publish(ros_messages.frame_messages(room_frames[0], stamp_of(30)))
    r.spin_for(0.4)
    assert r.counts["instances"] == n  # no frames taken while inactive
    # the services still answer while inactive
    q = r.call(Query, "/opentrack/query", request=Query.Request(query="chair"))
    assert q.result.query == "chair"

    # re-activate: frames flow into the kept map
    assert node.trigger_activate() == SUCCESS and r.wait_for_subscribers()
    feed(r, room_frames[:2], start=40)
    assert set(ids) <= {int(i.id) for i in r.got["instances"][-1].instances}

    assert node.trigger_deactivate() == SUCCESS
    gone = weakref.ref(node.pipeline)
    assert node.trigger_cleanup() == SUCCESS
    assert state() == "unconfigured" and node.pipeline is None and gone() is None  # freed, not just dropped
    assert "/opentrack/save" not in service_names(node)
    # configure again: a fresh pipeline from the parameters (empty map), and a static parameter may change
    # while unconfigured (it is read at configure), but not once configured
    assert node.set_parameters([params.overrides({"tracking.alpha": 0.4})[0]])[0].successful
    assert node.trigger_configure() == SUCCESS
    assert node.pipeline.cfg.tracking.alpha == 0.4 and node.pipeline.instances() == []
    assert not node.set_parameters([params.overrides({"tracking.alpha": 0.5})[0]])[0].successful
    assert node.trigger_shutdown() == SUCCESS
    assert node.pipeline is None and state() == "finalized"


def test_configure_fails_cleanly_on_a_missing_weight_file(make, tmp_path):
    missing = tmp_path / "no_such_features.onnx"
    r = make({"perception.features.name": "onnx", "perception.features.model": str(missing)}, activate=False)
    node = r.node
    assert node.trigger_configure() == FAILURE
    assert str(missing.name) in node.last_error, node.last_error
    assert r.call(GetState, "/opentrack/get_state").current_state.label == "unconfigured"
    assert node.pipeline is None and "/opentrack/save" not in service_names(node) and not node._pubs
    assert node.trigger_activate() != SUCCESS  # not from unconfigured
    # fixed while unconfigured, it configures
    assert node.set_parameters(params.overrides({"perception.features.name": "color_hist"}))[0].successful
    assert node.trigger_configure() == SUCCESS, node.last_error
    assert node.last_error == ""


# ---------------------------------------------------------------------------------------------------------
# queries off the frame worker


class SlowLabeler:
    """Labels every track as the first vocabulary class at once; a query confirmation (tasks mode) waits until
    the test calls ``release()`` (at most ``timeout`` seconds), then confirms. Held, not slept: whether frames
    flow meanwhile is then a matter of order, not of the machine's speed."""

    text_matcher = None

    def __init__(self, timeout: float = 30.0):
        self.timeout = timeout
        self.confirming = threading.Event()
        self._released = threading.Event()
        self.confirmed = 0

    def release(self) -> None:
        self._released.set()

    def hold(self) -> None:
        self.confirming.clear()
        self._released.clear()

    def label(self, requests):
        if any(r.mode == "tasks" for r in requests):
            self.confirming.set()
            self._released.wait(self.timeout)
            self.confirmed += 1
            return [LabelResult(r.track_id, None, task_indices=[0], score=1.0) for r in requests]
        return [LabelResult(r.track_id, r.choices[0], score=0.9) for r in requests]


def test_frames_keep_flowing_while_a_slow_labeller_confirms_a_query(make, room_frames):
    slow = SlowLabeler()
    extra = {"perception.labeler.min_observations": 2, "perception.detector.vocabulary": ["mug", "kettle"]}
    pipeline = Pipeline(from_flat({k: v for k, v in {**BASE, **extra}.items() if "." in k}), labeler=slow)
    r = make(extra, pipeline=pipeline, multi_threaded=True)
    # a multi-threaded executor runs callbacks in any order: the camera_info first, so no frame lacks it
    r.pubs["camera_info"].publish(ros_messages.frame_messages(room_frames[0], stamp_of(0))["camera_info"])
    assert r.spin_until(lambda: r.node._camera_info is not None, 5.0)
    feed(r, room_frames)
    for k in range(20):  # the labeller answers asynchronously: a few more frames until labels show
        if any(i.label == "mug" for i in r.got["instances"][-1].instances):
            break
        r.spin_for(0.1)
        feed(r, [room_frames[k % len(room_frames)]], start=20 + k)
    assert any(i.label == "mug" for i in r.got["instances"][-1].instances)

    # 1. the ~/query service (a planner's call): frames go on while it waits for the MLLM
    future = r.call(Query, "/opentrack/query", request=Query.Request(query="mug"), wait=False)
    assert r.spin_until(slow.confirming.is_set, 5.0)
    feed(r, room_frames[:4], start=60)  # each waits for its Instance3DArray: fails if frames wait for the query
    assert not future.done() and slow.confirmed == 0, "the query did not wait for its confirmation"
    slow.release()
    assert r.spin_until(future.done, 10.0)
    answer = future.result().result
    assert answer.error == "" and answer.ids and set(answer.labels) == {"mug"}
    assert slow.confirmed == 1

    # 2. the query topic: the same, answered on query_result
    slow.hold()
    n = r.counts["query_result"]
    r.pubs["query"].publish(String(data="mug"))
    assert r.spin_until(slow.confirming.is_set, 5.0)
    feed(r, room_frames[4:7], start=70)
    assert r.counts["query_result"] == n and slow.confirmed == 1
    slow.release()
    assert r.spin_until(lambda: r.counts["query_result"] >= n + 1 and r.got["query_result"][-1].ids, 10.0)

    # 3. bounded: one worker, no backlog -> a second concurrent query is answered busy and counted
    r.node._query_slots = threading.Semaphore(1)
    slow.hold()
    first = r.call(Query, "/opentrack/query", request=Query.Request(query="mug"), wait=False)
    assert r.spin_until(slow.confirming.is_set, 5.0)
    busy = r.call(Query, "/opentrack/query", request=Query.Request(query="mug"))
    assert busy.result.error.startswith("busy") and r.node.drops().get("query_overflow") == 1
    slow.release()
    assert r.spin_until(first.done, 10.0) and first.result().result.ids


# ---------------------------------------------------------------------------------------------------------
# services


def test_set_vocabulary_and_enable(make, room_frames):
    r = make()
    reply = r.call(
        SetVocabulary, "/opentrack/set_vocabulary", request=SetVocabulary.Request(classes=["red mug", " kettle ", ""])
    )
    assert reply.success, reply.message
    assert list(r.node.get_parameter("perception.detector.vocabulary").value) == ["red mug", "kettle"]
    assert r.spin_until(lambda: r.node.pipeline.vocabulary == ["red mug", "kettle"], 10.0)
    bad = r.call(SetVocabulary, "/opentrack/set_vocabulary", request=SetVocabulary.Request(classes=[" "]))
    assert not bad.success and "non-empty" in bad.message
    assert r.node.pipeline.vocabulary == ["red mug", "kettle"]

    feed(r, room_frames[:6])
    ids = [int(i.id) for i in r.got["instances"][-1].instances]
    off = r.call(SetBool, "/opentrack/enable", request=SetBool.Request(data=False))
    assert off.success and "paused" in off.message
    n = r.counts["instances"]
    for k in range(3):
        r.publish(ros_messages.frame_messages(room_frames[6 + k], stamp_of(6 + k)))
    r.spin_for(0.5)
    assert r.counts["instances"] == n and r.node.drops() == {}  # ignored, not counted as bad input
    assert [int(i.id) for i in r.node.pipeline.instances()] == ids  # the map is kept
    assert r.call(SetBool, "/opentrack/enable", request=SetBool.Request(data=True)).success
    feed(r, room_frames[6:], start=6)
    assert set(ids) <= {int(i.id) for i in r.got["instances"][-1].instances}


def test_save_then_load_into_a_new_node_publishes_the_same_instances(make, room_frames, tmp_path):
    a = make()
    feed(a, room_frames)
    reply = a.call(Trigger, "/opentrack/save")
    assert reply.success, reply.message
    saved = tmp_path / "saved"
    assert (saved / "map").is_dir() and (saved / "preview.png").is_file() and (saved / "instances.json").is_file()
    before = {int(i.id): (i.point_count, box(i), i.presence, i.moved_from) for i in a.got["instances"][-1].instances}
    assert before and {p for _, _, p, _ in before.values()} == {"present"}
    a.close()  # a second node of the same name follows: its services must be the only /opentrack/* ones

    b = make()
    assert b.node.pipeline.instances() == []
    bad = b.call(LoadMap, "/opentrack/load", request=LoadMap.Request(path=str(tmp_path / "nothing_here")))
    assert not bad.success and "nothing_here" in bad.message and b.node.pipeline.instances() == []
    n = b.counts["instances"]
    ok = b.call(LoadMap, "/opentrack/load", request=LoadMap.Request(path=""))  # empty: <output_dir>/map
    assert ok.success, ok.message
    assert b.spin_until(lambda: b.counts["instances"] > n, 5.0)  # published on load, before any frame
    after = {int(i.id): (i.point_count, box(i), i.presence, i.moved_from) for i in b.got["instances"][-1].instances}
    assert after.keys() == before.keys()
    for k in before:
        assert after[k][0] == before[k][0] and after[k][1] == pytest.approx(before[k][1], abs=1e-5)
    feed(b, room_frames[:2], start=20)  # and it goes on from there
    assert set(before) <= {int(i.id) for i in b.got["instances"][-1].instances}

    # map_path, read at configure
    c = make({"map_path": str(saved / "map")}, activate=False)
    assert c.node.trigger_configure() == SUCCESS, c.node.last_error
    assert {int(i.id) for i in c.node.pipeline.instances()} == set(before)
    d = make({"map_path": str(tmp_path / "missing_map")}, activate=False)
    assert d.node.trigger_configure() == FAILURE and "missing_map" in d.node.last_error


# ---------------------------------------------------------------------------------------------------------
# outputs


def test_detections_equal_instances_and_the_debug_image(make, room_frames):
    pytest.importorskip("vision_msgs.msg", reason="vision_msgs (or its test stand-in) not built")
    from ros2_opentrack.io.preview import draw_instances
    from ros2_opentrack.io.writers import instance_color

    r = make(debug_image=True, extra={"debug_image_rate_hz": 0.0})
    assert r.spin_until(lambda: r.node.pub_debug.get_subscription_count() > 0, 5.0)
    feed(r, room_frames)
    assert r.spin_until(lambda: r.counts["detections"] >= r.counts["instances"], 10.0)
    inst, det = r.got["instances"][-1], r.got["detections"][-1]
    assert det.header == inst.header and len(det.detections) == len(inst.instances) > 0
    for i, d in zip(inst.instances, det.detections):
        assert d.id == str(i.id) and d.header == inst.header
        assert (
            d.bbox.center.position.x,
            d.bbox.center.position.y,
            d.bbox.center.position.z,
            d.bbox.size.x,
            d.bbox.size.y,
            d.bbox.size.z,
        ) == pytest.approx(box(i), abs=1e-6)
        assert d.bbox.center.orientation.w == 1.0
        assert d.results[0].hypothesis.class_id == i.label
        assert d.results[0].hypothesis.score == pytest.approx(i.confidence, abs=1e-6)
        assert d.results[0].pose.pose == d.bbox.center

    assert r.spin_until(
        lambda: (
            r.got["debug_image"]
            and conv.stamp_to_sec(r.got["debug_image"][-1].header.stamp) == pytest.approx(stamp_of(9))
        ),
        10.0,
    )
    img_msg = r.got["debug_image"][-1]
    last = room_frames[-1]
    assert (img_msg.height, img_msg.width, img_msg.encoding) == (*last.depth.shape, "rgb8")
    assert img_msg.header.frame_id == "camera_optical"  # the image's own frame
    img = conv.image_to_array(img_msg)
    expected, drawn = draw_instances(last.rgb, r.node.pipeline.instances(), last.K, last.T_world_cam)
    assert drawn and np.array_equal(img, expected)
    assert not np.array_equal(img, last.rgb)
    for i in drawn:  # each drawn instance's outline is there in its colour
        assert (img == instance_color(i)).all(axis=2).sum() >= 20, i


def test_input_qos_and_publisher_qos_overrides(make):
    r = make(
        {
            "rgb_reliability": "reliable",
            "rgb_qos_depth": 3,
            "camera_info_qos_depth": 2,
            "qos_overrides./instances.publisher.depth": 4,
            "qos_overrides./instances.publisher.reliability": "best_effort",
        }
    )
    subs = {s.topic_name: s.qos_profile for s in r.node.subscriptions}
    assert subs["/rgb"].reliability == ReliabilityPolicy.RELIABLE and subs["/rgb"].depth == 3
    assert subs["/depth"].reliability == ReliabilityPolicy.BEST_EFFORT and subs["/depth"].depth == 5
    assert subs["/camera_info"].depth == 2
    qos = r.node.pub_instances.qos_profile
    assert qos.depth == 4 and qos.reliability == ReliabilityPolicy.BEST_EFFORT
    assert r.node.get_parameter("qos_overrides./markers.publisher.depth").value == 10  # declared, default
    bad = OpenTrackNode(parameter_overrides=params.overrides({**BASE, "depth_transport": "jpeg"}))
    try:
        assert bad.trigger_configure() == FAILURE and "depth_transport" in bad.last_error
    finally:
        bad.destroy_node()


# ---------------------------------------------------------------------------------------------------------
# compressed inputs: real 7-Scenes frames


def _png(array: np.ndarray) -> bytes:
    import cv2

    ok, data = cv2.imencode(".png", array)
    assert ok
    return data.tobytes()


def _compressed(msgs: dict, labels: np.ndarray, rgb_format: str) -> dict:
    """image_transport's compressed rgb (png or jpeg), compressedDepth depth (its 12-byte header + 16-bit png)
    and a 16-bit png label image, with the raw messages' headers."""
    import cv2

    rgb = conv.rgb_from_msg(msgs["rgb"])
    if rgb_format == "jpeg":
        ok, data = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        rgb_msg = CompressedImage(header=msgs["rgb"].header, format="rgb8; jpeg compressed bgr8", data=data.tobytes())
    else:
        rgb_msg = CompressedImage(
            header=msgs["rgb"].header,
            format="rgb8; png compressed bgr8",
            data=_png(np.ascontiguousarray(rgb[..., ::-1])),
        )
    depth_mm = conv.image_to_array(msgs["depth"])
    depth_msg = CompressedImage(
        header=msgs["depth"].header,
        format="16UC1; compressedDepth png",
        data=struct.pack("<iff", 0, 0.0, 0.0) + _png(depth_mm),
    )
    masks_msg = CompressedImage(header=msgs["depth"].header, format="16UC1; png", data=_png(labels))
    return {"rgb": rgb_msg, "depth": depth_msg, "masks": masks_msg}


@pytest.fixture(scope="module")
def kitchen():
    if not SEVEN_SCENES.is_dir():
        pytest.skip(f"shared data not found: {SEVEN_SCENES}")
    from ros2_opentrack.io.sevenscenes import SevenScenesReader

    frames = list(SevenScenesReader(SEVEN_SCENES, stride=10, max_frames=6))
    out = []
    for k, f in enumerate(frames):
        msgs = ros_messages.frame_messages(f, stamp_of(k))
        labels = ros_messages.depth_band_labels(np.asarray(f.depth, np.float32))
        msgs["masks"] = ros_messages.image_msg(labels, "16UC1", msgs["depth"].header)
        out.append((msgs, labels))
    return out


def _run_kitchen(make, kitchen, transports=None, rgb_format="png"):
    extra = {"lift.min_mask_pixels": 300, **(transports or {})}
    r = make(extra, wait=not transports)
    pubs = {}
    if transports:
        d = r.driver
        pubs = {
            s: d.create_publisher(CompressedImage, f"/{s}/{transports[f'{s}_transport']}", 10)
            for s in ("rgb", "depth", "masks")
        }
        assert r.spin_until(lambda: all(p.get_subscription_count() for p in pubs.values()), 5.0)
    for msgs, labels in kitchen:
        n = r.counts["instances"]
        if transports:
            r.publish({"tf": msgs["tf"], "camera_info": msgs["camera_info"]}, order=("camera_info",))
            comp = _compressed(msgs, labels, rgb_format)
            for s in ("masks", "rgb", "depth"):
                pubs[s].publish(comp[s])
        else:
            r.publish(msgs)
        assert r.spin_until(lambda n=n: r.counts["instances"] > n, 15.0), r.node.drops()
    assert r.node.drops() == {}
    last = r.got["instances"][-1]
    r.close()  # the next run's node takes the same name and topics
    return last


def test_compressed_inputs_give_the_same_instances_as_raw(make, kitchen):
    raw = _run_kitchen(make, kitchen)
    assert raw.instances, "real frames with depth-band masks should give instances"
    transports = {"rgb_transport": "compressed", "depth_transport": "compressedDepth", "masks_transport": "compressed"}
    lossless = _run_kitchen(make, kitchen, transports, rgb_format="png")
    assert [(i.id, i.point_count, box(i)) for i in lossless.instances] == [
        (i.id, i.point_count, box(i)) for i in raw.instances
    ]
    # jpeg colour (lossy): the geometry comes from depth + masks, so the same instances and boxes
    jpeg = _run_kitchen(make, kitchen, transports, rgb_format="jpeg")
    assert [i.id for i in jpeg.instances] == [i.id for i in raw.instances]
    for a, b in zip(jpeg.instances, raw.instances):
        assert box(a) == pytest.approx(box(b), abs=0.02) and abs(a.point_count - b.point_count) <= 0.02 * b.point_count


def test_entry_point_autostart_reaches_active_and_shuts_down_cleanly(tmp_path):
    """`opentrack_node --ros-args -p autostart:=true` (what the launch file's autostart does): configured and
    active without a lifecycle manager; SIGINT ends it with exit status 0."""
    import signal
    import subprocess

    import rclpy

    code = "from ros2_opentrack.ros.node import main; raise SystemExit(main())"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            "--ros-args",
            "-r",
            "__node:=opentrack_autostart",
            "-p",
            "autostart:=true",
            "-p",
            "masks.source:=topic",
            "-p",
            "perception.features.name:=color_hist",
            "-p",
            "perception.labeler.name:=none",
            "-p",
            "perception.text_matcher.name:=none",
            "-p",
            f"output_dir:={tmp_path}",
        ],
        # the domain this process's rclpy uses (an earlier test module may have set it)
        env=dict(os.environ, ROS_DOMAIN_ID=str(rclpy.get_default_context().get_domain_id())),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    client_node = rclpy.create_node("opentrack_autostart_probe")
    try:
        client = client_node.create_client(GetState, "/opentrack_autostart/get_state")
        label, deadline = "", time.monotonic() + 30
        while label != "active" and time.monotonic() < deadline and proc.poll() is None:
            if client.wait_for_service(timeout_sec=0.5):
                future = client.call_async(GetState.Request())
                rclpy.spin_until_future_complete(client_node, future, timeout_sec=2.0)
                label = future.result().current_state.label if future.done() else ""
        assert label == "active", proc.stdout.read() if proc.poll() is not None else label
    finally:
        client_node.destroy_node()
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, out
    assert "configured" in out and "active: taking frames" in out
