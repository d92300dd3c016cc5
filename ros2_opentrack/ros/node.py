"""opentrack_node: RGB-D + CameraInfo + camera pose in; labelled 3D instances out.

Threading: subscription callbacks only decode stamps and hand messages to the stamp synchroniser; matched
frames go into a bounded drop-oldest queue. One worker thread turns them into Frames (image decoding, pose
lookup), runs Pipeline.step and publishes; queries, vocabulary changes and resets are commands run by the same
worker between frames. Nothing the executor runs waits on the pipeline, except the save service, which waits
for the current step to finish (it runs in its own callback group, so the subscriptions keep flowing).

Bad input never stops the node: each rejected message or frame is counted under a reason (see ``drops()``
and the diagnostics) and warned about at most once per ``warn_throttle_s`` per reason.
"""
from __future__ import annotations

import json
import os
import queue
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import rclpy
from nav_msgs.msg import Odometry
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data)
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from .. import config as cfg_mod
from ..errors import ConfigError, InputError, OpenTrackError
from ..pipeline import release_memory
from ..types import Frame, Mask2D, validate_pose
from . import conversions as conv
from .markers import MarkerBook
from .params import DYNAMIC_CORE_PARAMETERS, NodeParams, declare_all, read_config, read_node_params
from .sync import DropOldestQueue, StampSync
from ..tf_tree import TfBuffer, TransformUnavailable

try:  # a real ROS install has tf2_ros; the PyPI wheels do not (the node then keeps its own small buffer)
    import tf2_ros
except ImportError:  # pragma: no cover - depends on the install
    tf2_ros = None
try:
    from tf2_msgs.msg import TFMessage
except ImportError:  # pragma: no cover
    TFMessage = None
try:
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
except ImportError:  # pragma: no cover - diagnostics then go out as JSON on ~/diagnostics
    DiagnosticArray = None

POSE_CHILD = "opentrack_pose_topic_camera"  # internal frame name of poses that arrive on the pose/odom topic
_TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
_TF_STATIC_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)


class FrameDrop(Exception):
    """A frame (or message) that cannot be used, with the reason it is counted under."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class OpenTrackNode(Node):
    def __init__(self, pipeline=None, node_name: str = "opentrack", **node_kwargs):
        """``pipeline``: an already built Pipeline (tests, benchmarks); None builds one from the parameters.
        ``node_kwargs`` go to rclpy's Node (e.g. parameter_overrides=params.overrides({...}), cli_args)."""
        super().__init__(node_name, **node_kwargs)
        declare_all(self)
        self.params: NodeParams = read_node_params(self)
        self.config = read_config(self)
        if pipeline is None:
            from ..pipeline import Pipeline

            pipeline = Pipeline.from_config(self.config)
        self.pipeline = pipeline
        self._lock = threading.Lock()  # the pipeline is used by the worker and by the save / reset services
        self._drops: Counter = Counter()
        self._drops_lock = threading.Lock()
        self._last_warn: Dict[str, float] = {}
        self._camera_info: Optional[CameraInfo] = None
        self._instances: list = []
        self._instances_dirty = True
        self._frames_processed = 0
        self._last_pub = {"instances": 0.0, "markers": 0.0}
        self._last_latency_ms = float("nan")
        self._markers_dirty = True
        self._book = MarkerBook(self.params.marker_points)

        streams = ["depth", "rgb"] + (["masks"] if self.config.masks.source == "topic" else [])
        self.sync = StampSync(streams, self.params.sync_tolerance_s, self.params.sync_buffer, anchor="depth",
                              **self._time_jump_kwargs())  # issue 8: recover from time jumps
        self.frames = DropOldestQueue(self.params.queue_size)
        self.commands: "queue.Queue[tuple]" = queue.Queue()
        self._setup_pose_source()
        self._setup_io()
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="opentrack_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"opentrack ready: masks from {self.config.masks.source}, pose from {self.params.pose_source}"
            f"{' (tf2_ros)' if self._tf2 is not None else ''}, world frame '{self.params.world_frame}'")

    # ------------------------------------------------------------------------------------------------------
    # set-up

    def _setup_pose_source(self) -> None:
        p = self.params
        self._tf2 = None
        tolerance = max(p.sync_tolerance_s, 0.05)
        # tf2's rule: interpolate between any two samples, extrapolate only within the tolerance (localisation
        # often publishes map -> odom at a few Hz; a gap limit would drop every frame between its samples)
        self.tf_buffer = TfBuffer(tolerance=tolerance, jump_back_s=p.sync_jump_back_s)  # issue 8: clears on a jump back
        if p.pose_source == "tf":
            if tf2_ros is not None:
                self._tf2 = tf2_ros.Buffer()
                self._tf2_listener = tf2_ros.TransformListener(self._tf2, self)
            elif TFMessage is not None:
                self.create_subscription(TFMessage, "/tf", lambda m: self._on_tf(m, False), _TF_QOS)
                self.create_subscription(TFMessage, "/tf_static", lambda m: self._on_tf(m, True), _TF_STATIC_QOS)
            else:
                self.get_logger().error("pose_source 'tf' but neither tf2_ros nor tf2_msgs is installed: "
                                        "every frame will be dropped as no_pose (use pose_source pose|odom)")
        elif p.pose_source == "pose":
            self.create_subscription(PoseStamped, "pose", self._on_pose, qos_profile_sensor_data)
        else:
            self.create_subscription(Odometry, "odom", self._on_odom, qos_profile_sensor_data)

    def _setup_io(self) -> None:
        self.create_subscription(Image, "depth", lambda m: self._on_image("depth", m), qos_profile_sensor_data)
        self.create_subscription(Image, "rgb", lambda m: self._on_image("rgb", m), qos_profile_sensor_data)
        if "masks" in self.sync.streams:
            self.create_subscription(Image, "masks", lambda m: self._on_image("masks", m), qos_profile_sensor_data)
        self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos_profile_sensor_data)
        self.create_subscription(String, "query", self._on_query, 10)

        from ros2_opentrack.msg import Instance3DArray, QueryResult

        self._QueryResult = QueryResult
        self.pub_instances = self.create_publisher(Instance3DArray, "instances", 10)
        self.pub_markers = self.create_publisher(MarkerArray, "markers", 10)
        self.pub_cloud = self.create_publisher(PointCloud2, "instance_cloud", 2)
        self.pub_query = self.create_publisher(QueryResult, "query_result", 10)
        if DiagnosticArray is not None:
            self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        else:
            self.pub_diag = self.create_publisher(String, "~/diagnostics", 10)
        services = MutuallyExclusiveCallbackGroup()
        self.create_service(Trigger, "~/save", self._on_save, callback_group=services)
        self.create_service(Trigger, "~/reset", self._on_reset, callback_group=services)

    # ------------------------------------------------------------------------------------------------------
    # time jumps (issue 8): the synchroniser detects them, the node clears its TF history and keeps the map

    def _time_jump_kwargs(self) -> Dict[str, Any]:
        return {"jump_back_s": self.params.sync_jump_back_s, "max_ahead_s": self.params.max_stamp_ahead_s,
                "clock": lambda: self.get_clock().now().nanoseconds * 1e-9, "on_jump": self._on_time_jump}

    def _on_time_jump(self, stream: str, newest: float, stamp: float) -> None:
        # samples of the old (or a wildly future) timeline would shadow the new one's: only they go
        gone = self.tf_buffer.forget_after(stamp + self.params.sync_jump_back_s)
        self.drop("time_jump_back", f"{stream} stamp {stamp:.3f} is {newest - stamp:.3f} s behind the newest "
                                    f"({newest:.3f}): time jumped back (bag loop, sim or driver restart); sync "
                                    f"buffers and {gone} TF samples cleared, the map is kept")

    # ------------------------------------------------------------------------------------------------------
    # counting and warning

    def drop(self, reason: str, detail: str = "") -> None:
        with self._drops_lock:
            self._drops[reason] += 1
        now = time.monotonic()
        if now - self._last_warn.get(reason, -1e9) >= self.params.warn_throttle_s:
            self._last_warn[reason] = now
            self.get_logger().warning(f"dropped ({reason}): {detail}" if detail else f"dropped ({reason})")

    def drops(self) -> Dict[str, int]:
        """Every drop so far by reason: the node's own, the synchroniser's and the queue's."""
        with self._drops_lock:
            out = Counter(self._drops)
        out.update({f"sync_{k}": v for k, v in self.sync.dropped.items()})
        if self.frames.dropped:
            out["queue_overflow"] = self.frames.dropped
        return dict(out)

    # ------------------------------------------------------------------------------------------------------
    # executor callbacks: cheap, never wait on the pipeline

    def _on_image(self, stream: str, msg: Image) -> None:
        received = time.perf_counter()
        for matched in self.sync.add(stream, conv.stamp_to_sec(msg.header.stamp), (msg, received)):
            self.frames.put(matched)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            conv.intrinsics_from_camera_info(msg)
        except InputError as exc:
            self.drop("bad_camera_info", str(exc))
            return
        self._camera_info = msg

    def _on_tf(self, msg, static: bool) -> None:
        for t in msg.transforms:
            try:
                T = conv.transform_to_matrix(t.transform)
                self.tf_buffer.set_transform(t.header.frame_id, t.child_frame_id, T,
                                             conv.stamp_to_sec(t.header.stamp), static=static)
            except InputError as exc:
                self.drop("bad_tf", f"{t.header.frame_id} -> {t.child_frame_id}: {exc}")

    def _on_pose(self, msg: PoseStamped) -> None:
        self._store_topic_pose(msg.header, msg.pose)

    def _on_odom(self, msg: Odometry) -> None:
        self._store_topic_pose(msg.header, msg.pose.pose)

    def _store_topic_pose(self, header, pose) -> None:
        try:
            T = conv.pose_to_matrix(pose)
            self.tf_buffer.set_transform(self.params.world_frame, POSE_CHILD, T, conv.stamp_to_sec(header.stamp))
        except InputError as exc:
            self.drop("bad_pose", f"pose message: {exc}")

    def _on_query(self, msg: String) -> None:
        text = msg.data.strip()
        if not text:
            self.drop("empty_query", "query text is empty")
            self.pub_query.publish(self._QueryResult(header=self._now_header(), query=msg.data,
                                                     error="empty query: expected a description such as 'red mug'"))
            return
        self.commands.put(("query", text))

    def _on_set_parameters(self, params) -> SetParametersResult:
        for p in params:
            if p.name in DYNAMIC_CORE_PARAMETERS:
                try:
                    classes = cfg_mod.from_flat({p.name: p.value}).perception.detector.vocabulary
                except ConfigError as exc:
                    return SetParametersResult(successful=False, reason=str(exc))
                if not classes:
                    return SetParametersResult(successful=False, reason="vocabulary must not be empty")
                self.commands.put(("vocabulary", list(classes)))
            elif p.name in self._static_names():
                return SetParametersResult(successful=False,
                                           reason=f"'{p.name}' is read at start-up: restart the node to change it")
        return SetParametersResult(successful=True)

    def _static_names(self) -> set:
        if not hasattr(self, "_static_param_names"):
            core = set(cfg_mod.flatten(cfg_mod.OpenTrackConfig())) - set(DYNAMIC_CORE_PARAMETERS)
            self._static_param_names = core | set(NodeParams.__dataclass_fields__)
        return self._static_param_names

    def _on_save(self, request, response):
        out = Path(os.path.expanduser(self.params.output_dir))
        try:
            from ..io.writers import write_outputs

            with self._lock:
                instances = self.pipeline.instances()
                scene_map = self.pipeline.map_points()
            paths = write_outputs(instances, out, scene_map, meta={"source": "opentrack_node", "stamp": time.time(),
                                                        "world_frame": self.params.world_frame})
            response.success = True
            response.message = f"{len(instances)} instances written to {out}: " + \
                ", ".join(sorted(Path(p).name for p in paths.values()))
        except (OSError, ValueError, OpenTrackError) as exc:  # InputError is a ValueError
            response.success, response.message = False, f"save to {out} failed: {exc}"
        return response

    def _on_reset(self, request, response):
        with self._lock:
            self.pipeline.reset()
            self._instances, self._instances_dirty, self._markers_dirty = [], True, True
        self.frames.clear()
        self.sync.reset()
        self.tf_buffer.clear()
        self.pub_markers.publish(self._book.clear(self._now_header()))
        release_memory()  # issue 8: the freed map and images go back to the system
        response.success, response.message = True, "tracks, map and buffers cleared"
        return response

    # ------------------------------------------------------------------------------------------------------
    # worker

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                self._run_commands()
                matched = self.frames.get(timeout=0.05)
                if matched is not None:
                    self._process(matched)
            except Exception as exc:  # the worker must survive anything; the reason is logged and counted
                self.drop("internal_error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")

    def _run_commands(self) -> None:
        while True:
            try:
                cmd = self.commands.get_nowait()
            except queue.Empty:
                return
            if cmd[0] == "query":
                self._answer_query(cmd[1])
            elif cmd[0] == "vocabulary":
                with self._lock:
                    self.pipeline.set_vocabulary(cmd[1])
                self.get_logger().info(f"vocabulary set: {len(cmd[1])} classes")

    def _process(self, matched: Dict[str, tuple]) -> None:
        depth_msg, received = matched["depth"]
        received = min(r for _, r in matched.values())
        try:
            frame = self._make_frame(matched)
        except FrameDrop as exc:
            self.drop(exc.reason, str(exc))
            return
        with self._lock:
            result = self.pipeline.step(frame)
            if result.error:
                self.drop("pipeline_rejected", result.error)
            changed = bool(result.keyframe or result.created or result.merged or result.terminated)
            self._instances_dirty |= changed
            self._markers_dirty |= changed
        self._frames_processed += 1
        header = Header(stamp=depth_msg.header.stamp, frame_id=self.params.world_frame)
        self._publish_outputs(header)
        self._last_latency_ms = (time.perf_counter() - received) * 1e3
        self._publish_diagnostics(result)

    def _make_frame(self, matched: Dict[str, tuple]) -> Frame:
        depth_msg = matched["depth"][0]
        stamp = conv.stamp_to_sec(depth_msg.header.stamp)
        depth = _reasoned("bad_depth", conv.depth_from_msg, depth_msg)
        rgb = _reasoned("bad_rgb", conv.rgb_from_msg, matched["rgb"][0])
        info = self._camera_info
        if info is None:
            raise FrameDrop("no_camera_info", "no valid camera_info received yet")
        K = _reasoned("bad_camera_info", conv.intrinsics_from_camera_info, info, depth.shape)
        masks = self._masks(matched["masks"][0]) if "masks" in matched else None
        T = self._camera_pose(depth_msg.header.frame_id, stamp)
        return Frame(rgb=rgb, depth=depth, K=K, T_world_cam=T, stamp=stamp, index=self._frames_processed,
                     masks=masks, frame_id=depth_msg.header.frame_id)

    def _masks(self, msg: Image) -> List[Mask2D]:
        decoded = _reasoned("bad_masks", conv.masks_from_label_image, msg, self.config.masks.max_ids)
        if decoded.over_cap:  # a hostile or broken label image: keep the largest ids, say so
            self.drop("mask_ids_over_cap", f"label image has {len(decoded.masks) + decoded.over_cap} ids: "
                                           f"kept the {len(decoded.masks)} largest")
        return decoded.masks

    def _camera_pose(self, image_frame: str, stamp: float) -> np.ndarray:
        p = self.params
        camera = p.camera_frame or image_frame
        at = stamp if stamp > 0 else None  # an unstamped image takes the latest pose, as tf2's Time(0)
        try:
            if p.pose_source != "tf":
                T = self.tf_buffer.wait_lookup(p.world_frame, POSE_CHILD, at, p.tf_timeout_s)
            elif self._tf2 is not None:
                T = self._tf2_lookup(p.world_frame, camera, stamp)
            else:
                if not camera:
                    raise FrameDrop("no_pose", "the depth image has no frame_id and camera_frame is not set")
                T = self.tf_buffer.wait_lookup(p.world_frame, camera, at, p.tf_timeout_s)
        except TransformUnavailable as exc:
            raise FrameDrop("no_pose", str(exc)) from None
        return _reasoned("bad_pose", validate_pose, T)

    def _tf2_lookup(self, target: str, source: str, stamp: float) -> np.ndarray:  # pragma: no cover - needs tf2_ros
        from rclpy.duration import Duration
        from rclpy.time import Time

        try:
            t = self._tf2.lookup_transform(target, source, Time(nanoseconds=int(stamp * 1e9)),
                                           timeout=Duration(nanoseconds=int(self.params.tf_timeout_s * 1e9)))
        except tf2_ros.TransformException as exc:
            raise TransformUnavailable(str(exc)) from None
        return _reasoned("bad_pose", conv.transform_to_matrix, t.transform)

    # ------------------------------------------------------------------------------------------------------
    # outputs

    def _current_instances(self) -> list:
        with self._lock:
            if self._instances_dirty:
                self._instances = list(self.pipeline.instances())
                self._instances_dirty = False
            return self._instances

    def _due(self, what: str, rate_hz: float) -> bool:
        now = time.monotonic()
        if rate_hz > 0 and now - self._last_pub[what] < 1.0 / rate_hz:
            return False
        self._last_pub[what] = now
        return True

    def _publish_outputs(self, header: Header) -> None:
        if not self._due("instances", self.params.publish_rate_hz):
            return
        instances = self._current_instances()
        self.pub_instances.publish(conv.instances_to_msg(instances, header))
        if self._markers_dirty and self._due("markers", self.params.markers_rate_hz):
            self._markers_dirty = False
            self.pub_markers.publish(self._book.update(instances, header))
            self.pub_cloud.publish(conv.instance_cloud(instances, header, self.params.cloud_max_points))

    def _answer_query(self, text: str) -> None:
        header = self._now_header()
        try:
            with self._lock:
                matches = list(self.pipeline.query(text))
        except InputError as exc:
            self.drop("bad_query", str(exc))
            self.pub_query.publish(self._QueryResult(header=header, query=text, error=str(exc)))
            return
        by_id = {int(i.id): i for i in self._current_instances()}
        found = [m for m in matches if int(m.instance_id) in by_id]
        msg = self._QueryResult(header=header, query=text, ids=[int(m.instance_id) for m in found],
                                scores=[float(m.score) for m in found], labels=[m.label or "" for m in found],
                                instances=[conv.instance_to_msg(by_id[int(m.instance_id)]) for m in found],
                                error="" if found else "no instance matches the query")
        self.pub_query.publish(msg)
        self.pub_markers.publish(self._book.highlight([by_id[int(m.instance_id)] for m in found], header))

    def _now_header(self) -> Header:
        return Header(stamp=self.get_clock().now().to_msg(), frame_id=self.params.world_frame)

    def diagnostics(self, result=None) -> Dict[str, Any]:
        stats = getattr(self.pipeline, "stats", None)
        values = {"latency_ms": round(self._last_latency_ms, 2), "queue_depth": len(self.frames),
                  "frames_processed": self._frames_processed, "instances": len(self._instances),
                  "drops_total": sum(self.drops().values())}
        for name in ("frames", "keyframes", "active", "dormant", "terminated"):
            if stats is not None and hasattr(stats, name):
                values[f"pipeline_{name}"] = getattr(stats, name)
        values.update({f"drop_{k}": v for k, v in self.drops().items()})
        if result is not None:
            values.update({f"time_{k}_ms": round(float(v), 2) for k, v in (result.timings_ms or {}).items()})
        return values

    def _publish_diagnostics(self, result) -> None:
        values = self.diagnostics(result)
        if DiagnosticArray is None:  # pragma: no cover
            self.pub_diag.publish(String(data=json.dumps(values)))
            return
        level = DiagnosticStatus.OK if values["queue_depth"] < self.frames.maxsize else DiagnosticStatus.WARN
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: pipeline", hardware_id="opentrack",
                                  message=f"{values['instances']} instances, {values['latency_ms']} ms",
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        self.pub_diag.publish(DiagnosticArray(header=self._now_header(), status=[status]))

    def destroy_node(self) -> None:
        self._stop.set()
        self.frames.close()
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout=5.0)
        if hasattr(self.pipeline, "close"):  # stops the labeller thread
            self.pipeline.close()
        super().destroy_node()


def _reasoned(reason: str, fn, *args):
    """Call fn; InputError becomes a FrameDrop counted under ``reason``."""
    try:
        return fn(*args)
    except InputError as exc:
        raise FrameDrop(reason, str(exc)) from None


def main(args: Optional[List[str]] = None) -> int:
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    rclpy.init(args=args)
    try:
        node = OpenTrackNode()
    except OpenTrackError as exc:  # bad parameters, backend that cannot run here: say which, exit non-zero
        rclpy.logging.get_logger("opentrack").fatal(str(exc))
        rclpy.try_shutdown()
        return 1
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
