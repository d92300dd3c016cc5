"""In-process test rig: the opentrack node plus a 'driver' node in the same process that publishes camera
messages and collects every output. Used by test_ros_node.py and bench/bench_ros_latency.py."""

from __future__ import annotations

import os
import time
from collections import defaultdict, deque
from typing import Any, Callable, Dict, List, Optional


def init_ros(domain_id: int) -> None:
    """Loopback-only DDS on a domain of the caller's own, then rclpy.init (once per process)."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_DOMAIN_ID"] = str(domain_id)
    import rclpy

    if not rclpy.ok():
        rclpy.init()


class Rig:
    def __init__(
        self,
        node,
        topics: Optional[Dict[str, str]] = None,
        keep: Optional[int] = None,
        activate: bool = True,
        multi_threaded: bool = False,
        debug_image: bool = False,
    ):
        """``keep``: how many received messages per output to keep (None: all; arrival times are always kept
        for instances), so long benchmarks do not measure their own collector's memory. ``activate``: an
        unconfigured (lifecycle) node is configured and activated first. ``multi_threaded``: a
        MultiThreadedExecutor (as the node's main()), so a service that waits does not hold the others.
        ``debug_image``: also subscribe to ~/debug_image (the node draws it only while someone listens)."""
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped
        from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
        from rclpy.lifecycle import TransitionCallbackReturn
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2
        from std_msgs.msg import String
        from tf2_msgs.msg import TFMessage
        from visualization_msgs.msg import MarkerArray

        from ros2_opentrack.msg import Instance3DArray, QueryResult

        t = {
            "rgb": "rgb",
            "depth": "depth",
            "masks": "masks",
            "camera_info": "camera_info",
            "pose": "pose",
            **(topics or {}),
        }
        self.node = node
        if activate and getattr(node, "stage", None) == "unconfigured":
            assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.last_error
            assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS, node.last_error
        self.driver = rclpy.create_node("opentrack_test_driver")
        d = self.driver
        self.pubs = {
            "rgb": d.create_publisher(Image, t["rgb"], 10),
            "depth": d.create_publisher(Image, t["depth"], 10),
            "masks": d.create_publisher(Image, t["masks"], 10),
            "camera_info": d.create_publisher(CameraInfo, t["camera_info"], 10),
            "tf": d.create_publisher(TFMessage, "/tf", 100),
            "query": d.create_publisher(String, "query", 10),
            "pose": d.create_publisher(PoseStamped, t["pose"], 10),
            "clock": d.create_publisher(Clock, "/clock", 10),
        }
        self.got: Dict[str, Any] = defaultdict(lambda: deque(maxlen=keep))
        self.counts: Dict[str, int] = defaultdict(int)
        self.stamps: List[int] = []  # header stamps (ns) of every received Instance3DArray
        self.arrival: Dict[str, List[float]] = defaultdict(list)
        for name, typ, topic in (
            ("instances", Instance3DArray, "instances"),
            ("markers", MarkerArray, "markers"),
            ("cloud", PointCloud2, "instance_cloud"),
            ("query_result", QueryResult, "query_result"),
            ("diagnostics", DiagnosticArray, "/diagnostics"),
        ):
            d.create_subscription(typ, topic, self._collector(name), 10)
        try:
            from vision_msgs.msg import Detection3DArray

            d.create_subscription(Detection3DArray, "detections", self._collector("detections"), 10)
        except ImportError:  # pragma: no cover
            pass
        if debug_image:
            d.create_subscription(Image, f"/{node.get_name()}/debug_image", self._collector("debug_image"), 2)
        self.executor = MultiThreadedExecutor(num_threads=4) if multi_threaded else SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.executor.add_node(d)

    def _collector(self, name: str) -> Callable:
        def collect(msg):
            self.got[name].append(msg)
            self.counts[name] += 1
            if name == "instances":
                self.arrival[name].append(time.perf_counter())
                self.stamps.append(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)

        return collect

    def spin_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.01)
        return predicate()

    def spin_for(self, seconds: float) -> None:
        self.spin_until(lambda: False, seconds)

    def wait_for_subscribers(self, timeout: float = 5.0) -> bool:
        return self.spin_until(
            lambda: all(self.pubs[k].get_subscription_count() > 0 for k in ("rgb", "depth", "camera_info")), timeout
        )

    def publish(self, msgs: dict, with_tf: bool = True, order=("camera_info", "masks", "rgb", "depth")) -> None:
        """One frame's messages (ros_messages.frame_messages): tf first, depth last (the sync anchor)."""
        from tf2_msgs.msg import TFMessage

        if with_tf and "tf" in msgs:
            self.pubs["tf"].publish(TFMessage(transforms=[msgs["tf"]]))
        for key in order:
            if key in msgs:
                self.pubs[key].publish(msgs[key])

    def call(self, srv_type, name: str, timeout: float = 10.0, request=None, wait: bool = True):
        """Call a service while spinning; ``wait`` False returns the future at once (spin on to get it)."""
        client = self.driver.create_client(srv_type, name)
        assert self.spin_until(client.service_is_ready, timeout), f"service {name} not available"
        future = client.call_async(request if request is not None else srv_type.Request())
        if not wait:
            return future
        assert self.spin_until(future.done, timeout), f"service {name} did not answer"
        self.driver.destroy_client(client)
        return future.result()

    def close(self) -> None:
        """Idempotent: a test may close a rig early (e.g. so that a second node can take its name)."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self.executor.remove_node(self.node)
        self.executor.remove_node(self.driver)
        self.node.destroy_node()
        self.driver.destroy_node()
        self.executor.shutdown()


# Node parameters of the in-process node tests: masks on the topic, weight-free descriptor, no models, every frame a
# keyframe, no throttling (each test adds what it checks).
NODE_TEST_PARAMS = {
    "masks.source": "topic",
    "perception.features.name": "color_hist",
    "perception.text_matcher.name": "none",
    "perception.labeler.name": "none",
    "keyframes.every_n": 1,
    "markers_rate_hz": 0.0,
    "tf_timeout_s": 0.1,
    "warn_throttle_s": 0.0,
}


def stamp_of(i: int) -> float:
    """The stamp the node tests give frame i: 30 Hz from t = 100 s."""
    return 100.0 + i / 30.0


def feed(r: "Rig", frames, start: int = 0, timeout: float = 10.0, stamps=None) -> None:
    """Publish frames one at a time (at ``stamps``, else stamp_of(start + k)), each waiting for its
    Instance3DArray."""
    import ros_messages

    stamps = [stamp_of(start + k) for k in range(len(frames))] if stamps is None else stamps
    for f, t in zip(frames, stamps):
        n = r.counts["instances"]
        r.publish(ros_messages.frame_messages(f, t))
        assert r.spin_until(lambda n=n: r.counts["instances"] > n, timeout), f"no output for the frame at t={t:.3f}"
