"""The opentrack node in-process, fed by a second node in the same process: a small rendered room (masks on the
masks topic), bad input of every kind, query / save / reset / vocabulary, and a 7-Scenes bag when available."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("ros2_opentrack.msg", reason="messages not built: run scripts/build_msgs.sh")
pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs not built: run scripts/build_msgs.sh")
sys.path.insert(0, str(Path(__file__).parent / "ros_support"))

import ros_messages  # noqa: E402
from rig import NODE_TEST_PARAMS, Rig, feed, init_ros, stamp_of  # noqa: E402

init_ros(domain_id=60 + os.getpid() % 40)  # before any rclpy use; loopback only

from rclpy.parameter import Parameter  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from ros2_opentrack import synthetic  # noqa: E402
from ros2_opentrack.ros import conversions as conv  # noqa: E402
from ros2_opentrack.ros import params  # noqa: E402
from ros2_opentrack.ros.node import OpenTrackNode  # noqa: E402

SEVEN_SCENES = Path(__file__).resolve().parents[2] / "shared" / "data" / "7scenes_redkitchen"
BASE = dict(NODE_TEST_PARAMS)


@pytest.fixture(scope="module")
def room():
    return synthetic.make_room(seed=0, n_objects=5)


@pytest.fixture(scope="module")
def room_frames(room):
    return synthetic.render_sequence(room, n_frames=10, hw=(120, 160))


def true_objects(room, pts, ids):
    """Published instance id -> (true object id its points mostly lie on, that share)."""
    from scipy.spatial import cKDTree

    _, near = cKDTree(room.points).query(pts)
    truth = room.instance[near]
    out = {}
    for i in np.unique(ids):
        objs, counts = np.unique(truth[ids == i], return_counts=True)
        out[int(i)] = (int(objs[np.argmax(counts)]), float(counts.max() / counts.sum()))
    return out


@pytest.fixture
def rig(tmp_path):
    rigs = []

    def make(extra=None, topics=None, **node_kwargs):
        values = {**BASE, "output_dir": str(tmp_path / "saved"), **(extra or {})}
        node = OpenTrackNode(parameter_overrides=params.overrides(values), **node_kwargs)
        r = Rig(node, topics)
        assert r.wait_for_subscribers()
        rigs.append(r)
        return r

    yield make
    for r in rigs:
        r.close()


def test_room_instances_markers_cloud_frames_and_stamps(rig, room, room_frames):
    r = rig()
    feed(r, room_frames)
    last = r.got["instances"][-1]
    assert last.header.frame_id == "map"
    assert conv.stamp_to_sec(last.header.stamp) == pytest.approx(stamp_of(len(room_frames) - 1), abs=1e-6)
    assert [conv.stamp_to_sec(m.header.stamp) for m in r.got["instances"]] == pytest.approx(
        [stamp_of(i) for i in range(len(room_frames))], abs=1e-6
    )
    assert all(i.point_count > 0 and i.observation_count >= 2 for i in last.instances)
    truth = {int(i.id) for i in r.node.pipeline.instances()}
    assert {int(i.id) for i in last.instances} == truth
    last_stamp = conv.stamp_to_sec(last.header.stamp)
    assert r.spin_until(
        lambda: (
            r.got["cloud"]
            and conv.stamp_to_sec(r.got["cloud"][-1].header.stamp) == last_stamp
            and r.got["markers"]
            and r.got["markers"][-1].markers[-1].header.stamp == last.header.stamp
        ),
        10.0,
    )
    markers = r.got["markers"][-1].markers
    assert {m.header.frame_id for m in markers} == {"map"}
    shown = {m.id for m in markers if m.ns == "instance_boxes" and m.action == m.ADD}
    assert shown == truth
    cloud = r.got["cloud"][-1]
    assert cloud.header.frame_id == "map"
    pts, cols, ids = ros_messages.cloud_from_msg(cloud)
    assert set(np.unique(ids).tolist()) == truth and len(pts) == sum(i.point_count for i in last.instances)
    # one instance per object seen at least twice (object 4 is in view in one frame only), each on its object
    on = true_objects(room, pts, ids)
    assert sorted(obj for obj, _ in on.values()) == [1, 2, 3, 5] and all(share >= 0.9 for _, share in on.values()), on
    values = lambda: {kv.key: kv.value for kv in r.got["diagnostics"][-1].status[0].values}  # noqa: E731
    assert r.spin_until(lambda: r.got["diagnostics"] and values()["frames_processed"] == str(len(room_frames)), 10.0)
    values = values()
    assert int(values["frames_processed"]) == len(room_frames) and int(values["drops_total"]) == 0


def test_a_pose_arriving_after_its_images_is_waited_for(rig, room, room_frames):
    """tf one step behind the images: the previous camera pose lies within the TF tolerance (33 ms < 50 ms) but
    must not lift the frame; the node waits for the pose at the frame's stamp."""
    from tf2_msgs.msg import TFMessage

    r = rig({"tf_timeout_s": 5.0})
    for k, f in enumerate(room_frames):
        msgs = ros_messages.frame_messages(f, stamp_of(k))
        n = r.counts["instances"]
        r.publish(msgs, with_tf=False)
        r.spin_for(0.05)  # the depth anchor completes the set and the worker asks for the pose first
        r.pubs["tf"].publish(TFMessage(transforms=[msgs["tf"]]))
        assert r.spin_until(lambda n=n: r.counts["instances"] > n, 10.0), r.node.drops()
    assert r.node.drops() == {}
    last = stamp_of(len(room_frames) - 1)
    assert r.spin_until(lambda: r.got["cloud"] and conv.stamp_to_sec(r.got["cloud"][-1].header.stamp) == last, 10.0)
    pts, _, ids = ros_messages.cloud_from_msg(r.got["cloud"][-1])
    on = true_objects(room, pts, ids)
    assert sorted(obj for obj, _ in on.values()) == [1, 2, 3, 5] and all(share >= 0.9 for _, share in on.values()), on


@pytest.fixture
def chat():
    """A stand-in MLLM on 127.0.0.1 (the labeller's openai transport): the first closed-set label request is
    answered 'red mug', every later one 'kettle'; query confirmations (tasks mode) answer task 1."""
    from support.chat_server import ChatServer

    state = {"closed": 0}

    def answer(received):
        if "task list" in received.text:
            return "1"
        state["closed"] += 1
        return "red mug" if state["closed"] == 1 else "kettle"

    with ChatServer(answer) as server:
        yield server


def test_query_save_reset_and_vocabulary(chat, rig, room_frames, tmp_path):
    # labelling only once a track has 11 observations: none can during the first 10 frames
    r = rig(
        {
            "perception.labeler.name": "mllm",
            "perception.labeler.transport": "openai",
            "perception.labeler.endpoint": chat.endpoint,
            "perception.labeler.model": "stand-in",
            "perception.labeler.api_key_env": "OPENTRACK_TEST_NO_KEY",
            "perception.labeler.min_observations": 11,
            "perception.labeler.relabel_growth": 1000.0,
            "perception.detector.vocabulary": ["cup", "kettle"],
        }
    )
    feed(r, room_frames)
    ids = sorted(int(i.id) for i in r.got["instances"][-1].instances)
    assert ids and all(i.label == "" for i in r.got["instances"][-1].instances) and chat.received == []
    # an unlabelled map answers, with no match
    r.pubs["query"].publish(String(data="red mug"))
    assert r.spin_until(lambda: r.got["query_result"], 5.0)
    assert r.got["query_result"][-1].query == "red mug" and list(r.got["query_result"][-1].ids) == []
    assert r.got["query_result"][-1].error == "no instance matches the query"

    # the vocabulary parameter reaches the labeller: every label request from now on offers the new classes
    result = r.node.set_parameters([Parameter("perception.detector.vocabulary", value=["red mug", "kettle"])])
    assert result[0].successful
    assert not r.node.set_parameters([Parameter("tracking.alpha", value=0.9)])[0].successful  # start-up only
    # the room seen again: tracks pass 11 observations and get labelled, 'red mug' the first one answered and
    # 'kettle' the next ones
    labels = lambda: {int(i.id): i.label for i in r.got["instances"][-1].instances}  # noqa: E731
    fed = 0
    while not {"red mug", "kettle"} <= set(labels().values()) and fed < 3 * len(room_frames):
        feed(r, [room_frames[fed % len(room_frames)]], start=len(room_frames) + fed)
        fed += 1
    mugs = [i for i, label in labels().items() if label == "red mug"]
    assert len(mugs) == 1, labels()
    closed = [q for q in chat.received if "task list" not in q.text]
    assert closed and all("red mug, kettle" in q.text and q.images for q in closed)
    assert "kettle" in labels().values() and set(labels().values()) <= {"red mug", "kettle", ""}

    r.pubs["query"].publish(String(data="red mug"))
    assert r.spin_until(lambda: len(r.got["query_result"]) >= 2, 10.0)
    answer = r.got["query_result"][-1]
    # text matcher 'none': word match, so 'kettle' (score 0) is no match and only the mug answers
    assert list(answer.ids) == mugs and list(answer.labels) == ["red mug"] and answer.error == ""
    assert answer.instances[0].label == "red mug" and answer.instances[0].id == mugs[0]
    assert r.spin_until(
        lambda: any(m.ns == "query_highlight" and m.id == mugs[0] for a in r.got["markers"] for m in a.markers), 10.0
    )

    reply = r.call(Trigger, "/opentrack/save")
    assert reply.success, reply.message
    shown = {int(i.id): i.label for i in r.got["instances"][-1].instances}
    assert reply.message.startswith(f"{len(shown)} instances written to ")
    saved = tmp_path / "saved"
    doc = json.loads((saved / "instances.json").read_text())
    assert {i["id"]: i["label"] or "" for i in doc["instances"]} == shown
    assert (saved / "instances.npz").is_file() and (saved / "instances.ply").is_file()

    assert r.call(Trigger, "/opentrack/reset").success
    n = len(r.got["instances"])
    r.publish(ros_messages.frame_messages(room_frames[0], stamp_of(50 + fed)))
    assert r.spin_until(lambda: len(r.got["instances"]) > n, 5.0)
    assert list(r.got["instances"][-1].instances) == []  # map cleared; one observation is not an instance yet
    r.pubs["query"].publish(String(data="red mug"))
    assert r.spin_until(lambda: len(r.got["query_result"]) >= 3, 5.0)
    assert list(r.got["query_result"][-1].ids) == []  # the labelled mug went with the reset


def _bad(msgs, key, **changes):
    out = dict(msgs)
    old = msgs[key]
    new = type(old)()
    for field in old.get_fields_and_field_types():
        setattr(new, field, getattr(old, field))
    for name, value in changes.items():
        setattr(new, name, value)
    out[key] = new
    return out


def test_bad_input_is_counted_and_survived(rig, room_frames):
    from tf2_msgs.msg import TFMessage

    r = rig()
    feed(r, room_frames[:2])
    f = room_frames[2]

    def send(msgs, with_tf=True):
        r.publish(msgs, with_tf=with_tf)
        r.spin_for(0.25)

    good = lambda k: ros_messages.frame_messages(f, stamp_of(10 + k))  # noqa: E731
    send(_bad(good(0), "rgb", encoding="yuv422"))  # wrong encoding
    m = good(1)
    send(_bad(m, "depth", data=bytes(m["depth"].data)[:-10]))  # size mismatch (truncated data)
    send(_bad(good(2), "camera_info", k=np.zeros(9)))  # camera_info with zeros (then the frame still works)
    nan_tf = good(4)
    bad_pose = nan_tf["tf"]
    bad_pose.transform.translation.x = float("nan")
    r.pubs["tf"].publish(TFMessage(transforms=[bad_pose]))  # NaN pose: rejected, counted
    send(good(6), with_tf=False)  # missing TF: the newest pose is 4/30 s older than the frame
    send(good(-5))  # stamps out of order: older than frames already processed
    r.pubs["query"].publish(String(data="   "))  # empty query
    assert r.spin_until(lambda: r.got["query_result"], 10.0)
    assert r.got["query_result"][-1].error.startswith("empty query")
    info = _bad(good(7), "camera_info", width=999)
    send(info)  # camera_info of another image size
    # each bad input counted once under its own reason, nothing else: two bad camera_infos (zeros, other size),
    # and the out-of-order frame's three images (depth, rgb, masks) rejected by the synchroniser
    expected = {
        "bad_rgb": 1,
        "bad_depth": 1,
        "bad_camera_info": 2,
        "no_pose": 1,
        "bad_tf": 1,
        "sync_out_of_order": 3,
        "empty_query": 1,
    }
    assert r.spin_until(lambda: r.node.drops() == expected, 5.0), r.node.drops()  # a loaded CI may lag
    # and the node goes on: a good frame still gives its output
    feed(r, [room_frames[3]], start=20)
    assert conv.stamp_to_sec(r.got["instances"][-1].header.stamp) == pytest.approx(stamp_of(20), abs=1e-6)


def test_pose_topic_source_and_sim_time(rig, room_frames):
    from rosgraph_msgs.msg import Clock

    r = rig({"pose_source": "pose", "use_sim_time": True})
    r.pubs["clock"].publish(Clock(clock=conv.sec_to_stamp(1234.5)))
    r.spin_for(0.3)
    for k, f in enumerate(room_frames[:4]):
        msgs = ros_messages.frame_messages(f, stamp_of(k))
        r.pubs["pose"].publish(msgs["pose"])
        n = len(r.got["instances"])
        r.publish(msgs, with_tf=False)
        assert r.spin_until(lambda n=n: len(r.got["instances"]) > n, 10.0)
    assert r.node.drops() == {}
    r.pubs["query"].publish(String(data="chair"))
    assert r.spin_until(lambda: r.got["query_result"], 5.0)
    assert conv.stamp_to_sec(r.got["query_result"][-1].header.stamp) == pytest.approx(1234.5)  # the /clock time


def test_sevenscenes_bag_through_the_node(rig, tmp_path):
    if not SEVEN_SCENES.is_dir():
        pytest.skip(f"7-Scenes data not found at {SEVEN_SCENES}")
    rosbag = pytest.importorskip("ros2_opentrack.io.rosbag")
    from rclpy.serialization import deserialize_message
    from rosbags.highlevel import AnyReader
    from sensor_msgs.msg import CameraInfo, Image
    from tf2_msgs.msg import TFMessage

    bag = tmp_path / "redkitchen.mcap"
    rosbag.convert_scene_to_bag(SEVEN_SCENES, bag, stride=10, max_frames=6, progress=False)
    t = rosbag.BagTopics()
    remap = {"rgb": t.rgb, "depth": t.depth, "camera_info": t.camera_info}  # the node's topics, renamed
    r = rig(
        {"lift.min_mask_pixels": 300},
        topics=remap,
        cli_args=["--ros-args"] + [a for k, v in remap.items() for a in ("-r", f"{k}:={v}")],
    )
    types = {t.rgb: Image, t.depth: Image, t.camera_info: CameraInfo, t.tf: TFMessage}
    frames, current = [], {}
    with AnyReader([bag]) as reader:
        for conn, _, raw in reader.messages([c for c in reader.connections if c.topic in types]):
            msg = deserialize_message(bytes(raw), types[conn.topic])
            key = {t.rgb: "rgb", t.depth: "depth", t.camera_info: "camera_info", t.tf: "tf"}[conn.topic]
            current[key] = msg
            if {"rgb", "depth", "camera_info", "tf"} <= set(current):
                frames.append(current)
                current = {}
    assert len(frames) >= 4
    stamps = []
    for msgs in frames:
        depth = conv.depth_from_msg(msgs["depth"])
        msgs["masks"] = ros_messages.image_msg(ros_messages.depth_band_labels(depth), "16UC1", msgs["depth"].header)
        r.pubs["tf"].publish(msgs["tf"])
        n = len(r.got["instances"])
        r.publish(msgs, with_tf=False)
        assert r.spin_until(lambda n=n: len(r.got["instances"]) > n, 15.0), r.node.drops()
        stamps.append(conv.stamp_to_sec(msgs["depth"].header.stamp))
    got = [conv.stamp_to_sec(m.header.stamp) for m in r.got["instances"]]
    assert got == pytest.approx(stamps, abs=1e-6)
    assert {m.header.frame_id for m in r.got["instances"]} == {"map"}
    assert r.got["instances"][-1].instances, "real frames with depth-band masks should give instances"
    assert r.got["cloud"] and r.got["cloud"][-1].header.frame_id == "map"
    assert r.got["markers"] and all(m.header.frame_id == "map" for m in r.got["markers"][-1].markers)
