"""opentrack_node: RGB-D + CameraInfo + camera pose in; labelled 3D instances out. A managed (lifecycle) node.

Lifecycle (``ros2 lifecycle set /opentrack configure`` ..., or the launch file's ``autostart``):
  configure   read the parameters, build the pipeline, load and warm up the models, load ``map_path``; create
              the publishers and services and start the frame worker. Any failure (a weight file that is not
              there, a bad parameter, a bad map) is logged and the node stays unconfigured (``last_error``).
  activate    the subscriptions (camera streams, pose, query topic) are created: frames flow.
  deactivate  the subscriptions go; the map, the services and the publishers stay (queries, save and load work).
  cleanup     the worker stops, the pipeline (models, map) is freed and torch's CUDA cache emptied.
  shutdown    whatever is live is torn down, from any state.

Threading: subscription callbacks only decode stamps and hand messages to the stamp synchroniser; matched
frames go into a bounded drop-oldest queue. One worker thread turns them into Frames (image decoding, pose
lookup), runs Pipeline.step and publishes; vocabulary changes are commands run by the same worker between
frames. Queries run on their own threads (``query_workers``, ``query_backlog`` more waiting, any further one
answered 'busy' and counted) on a snapshot of the instances, so a slow MLLM confirmation never holds frames up.
The services run in their own callback groups (the save / load / reset ones wait for the current step; use a
MultiThreadedExecutor, as main() does, so that the ~/query service does not hold the executor either).

Bad input never stops the node: each rejected message or frame is counted under a reason (see ``drops()``
and the diagnostics) and warned about at most once per ``warn_throttle_s`` per reason.
"""

from __future__ import annotations

import gc
import json
import os
import queue
import sys
import threading
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header, String
from std_srvs.srv import SetBool, Trigger
from visualization_msgs.msg import MarkerArray

from .. import config as cfg_mod
from ..errors import ConfigError, InputError, OpenTrackError
from ..pipeline import release_memory
from ..tf_tree import TfBuffer, TransformUnavailable
from ..types import Frame, Mask2D, validate_pose
from . import conversions as conv
from .markers import MarkerBook
from .params import DYNAMIC_CORE_PARAMETERS, NodeParams, declare_all, read_config, read_node_params
from .sync import DropOldestQueue, StampSync

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
try:  # vision_msgs/Detection3DArray on 'detections' where vision_msgs is installed
    from vision_msgs.msg import Detection3DArray
except ImportError:  # pragma: no cover - depends on the install
    Detection3DArray = None

POSE_CHILD = "opentrack_pose_topic_camera"  # internal frame name of poses that arrive on the pose/odom topic
_TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
_TF_STATIC_QOS = QoSProfile(
    depth=100,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
    history=HistoryPolicy.KEEP_LAST,
)
_RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


class FrameDrop(Exception):
    """A frame (or message) that cannot be used, with the reason it is counted under."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class OpenTrackNode(LifecycleNode):
    def __init__(
        self,
        pipeline=None,
        node_name: str = "opentrack",
        pipeline_factory: Optional[Callable[[cfg_mod.OpenTrackConfig], Any]] = None,
        **node_kwargs,
    ):
        """``pipeline``: an already built Pipeline, used by the first configure (tests, benchmarks);
        ``pipeline_factory(config)``: builds one at each configure; neither: Pipeline.from_config.
        ``node_kwargs`` go to rclpy's Node (e.g. parameter_overrides=params.overrides({...}), cli_args).
        The node starts unconfigured: call trigger_configure() / trigger_activate(), or see main()."""
        super().__init__(node_name, **node_kwargs)
        declare_all(self)
        self.params: NodeParams = read_node_params(self, validate=False)  # checked at configure
        self._given_pipeline = pipeline
        self._factory = pipeline_factory
        self.pipeline = None
        self.config: Optional[cfg_mod.OpenTrackConfig] = None
        self.stage = "unconfigured"  # unconfigured | inactive | active (mirrors the lifecycle state)
        self.last_error = ""  # why the last transition failed
        self._lock = threading.Lock()  # the pipeline is used by the worker, the query threads and the services
        self._book_lock = threading.Lock()
        self._drops: Counter = Counter()
        self._drops_lock = threading.Lock()
        self._last_warn: Dict[str, float] = {}
        self._enabled = True
        self._subs: list = []
        self._pubs: list = []
        self._srvs: list = []
        self._worker: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._queries: Optional[ThreadPoolExecutor] = None
        self._query_slots: Optional[threading.Semaphore] = None
        self._tf2 = None
        self._tf2_listener = None
        self._reset_runtime()
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _reset_runtime(self) -> None:
        self._camera_info: Optional[CameraInfo] = None
        self._instances: list = []
        self._instances_dirty = True
        self._frames_processed = 0
        self._last_pub = {"instances": 0.0, "markers": 0.0, "debug": 0.0}
        self._last_latency_ms = float("nan")
        self._markers_dirty = True
        self._book = MarkerBook(self.params.marker_points)
        streams = ["depth", "rgb"] + (["masks"] if self.config and self.config.masks.source == "topic" else [])
        self.sync = StampSync(
            streams, self.params.sync_tolerance_s, self.params.sync_buffer, anchor="depth", **self._time_jump_kwargs()
        )  # recover from time jumps (bag loop, sim reset)
        self.frames = DropOldestQueue(self.params.queue_size)
        self.commands: "queue.Queue[tuple]" = queue.Queue()
        tolerance = max(self.params.sync_tolerance_s, 0.05)
        # tf2's rule: interpolate between any two samples, extrapolate only within the tolerance (localisation
        # often publishes map -> odom at a few Hz; a gap limit would drop every frame between its samples)
        self.tf_buffer = TfBuffer(tolerance=tolerance, jump_back_s=self.params.sync_jump_back_s)

    # ------------------------------------------------------------------------------------------------------
    # time jumps: the synchroniser detects them, the node clears its TF history and keeps the map

    def _time_jump_kwargs(self) -> Dict[str, Any]:
        return {
            "jump_back_s": self.params.sync_jump_back_s,
            "max_ahead_s": self.params.max_stamp_ahead_s,
            "clock": lambda: self.get_clock().now().nanoseconds * 1e-9,
            "on_jump": self._on_time_jump,
        }

    def _on_time_jump(self, stream: str, newest: float, stamp: float) -> None:
        # samples of the old (or a wildly future) timeline would shadow the new one's: only they go
        gone = self.tf_buffer.forget_after(stamp + self.params.sync_jump_back_s)
        self.drop(
            "time_jump_back",
            f"{stream} stamp {stamp:.3f} is {newest - stamp:.3f} s behind the newest "
            f"({newest:.3f}): time jumped back (bag loop, sim or driver restart); sync "
            f"buffers and {gone} TF samples cleared, the map is kept",
        )

    # ------------------------------------------------------------------------------------------------------
    # lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        pipeline = None
        try:
            self.params = read_node_params(self)
            self.config = read_config(self)
            pipeline = self._build_pipeline()
            if self.params.warm_up:
                _warm_up(pipeline)
            if self.params.map_path:
                pipeline.load_state(Path(os.path.expanduser(self.params.map_path)))
        except Exception as exc:  # a model that cannot load, a bad parameter, a bad map: stay unconfigured
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"configure failed: {self.last_error}")
            if pipeline is not None and hasattr(pipeline, "close"):
                pipeline.close()
            self.pipeline = self.config = None
            return FAILURE
        self.pipeline = pipeline
        self._reset_runtime()
        self._create_outputs()
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="opentrack_worker", daemon=True)
        self._worker.start()
        self._queries = ThreadPoolExecutor(self.params.query_workers, thread_name_prefix="opentrack_query")
        self._query_slots = threading.Semaphore(self.params.query_workers + self.params.query_backlog)
        self.stage, self.last_error = "inactive", ""
        loaded = f", map loaded from {self.params.map_path}" if self.params.map_path else ""
        self.get_logger().info(
            f"configured: masks from {self.config.masks.source}, pose from "
            f"{self.params.pose_source}, world frame '{self.params.world_frame}'{loaded}"
        )
        return SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._create_inputs()
        except Exception as exc:  # e.g. an invalid QoS depth
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"activate failed: {self.last_error}")
            self._destroy_inputs()
            return FAILURE
        self.stage = "active"
        self.get_logger().info("active: taking frames" + ("" if self._enabled else " (paused by ~/enable)"))
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_inputs()
        self.frames.clear()
        self.sync.reset()
        self.stage = "inactive"
        self.get_logger().info("inactive: not taking frames; the map is kept")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        self.get_logger().info("cleaned up: pipeline and models freed")
        return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return SUCCESS  # back to unconfigured

    def _build_pipeline(self):
        if self._given_pipeline is not None:
            pipeline, self._given_pipeline = self._given_pipeline, None
            return pipeline
        if self._factory is not None:
            return self._factory(self.config)
        from ..pipeline import Pipeline

        return Pipeline.from_config(self.config)

    def _teardown(self) -> None:
        """Back to nothing: inputs, worker, query threads, outputs, pipeline; GPU cache emptied."""
        self._destroy_inputs()
        self._stop.set()
        self.frames.close()
        if self._worker is not None and self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout=5.0)
        self._worker = None
        if self._queries is not None:
            self._queries.shutdown(wait=False, cancel_futures=True)
            self._queries = None
        for srv in self._srvs:
            self.destroy_service(srv)
        for pub in self._pubs:
            self.destroy_publisher(pub)
        self._srvs, self._pubs = [], []
        pipeline, self.pipeline = self.pipeline, None
        with self._lock:
            self._instances = []
        if pipeline is not None and hasattr(pipeline, "close"):  # stops the labeller thread
            pipeline.close()
        del pipeline
        gc.collect()
        if "torch" in sys.modules:  # release the models' GPU memory to other processes
            torch = sys.modules["torch"]
            try:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception:  # pragma: no cover - a broken CUDA install must not stop cleanup
                pass
        self.stage = "unconfigured"

    # ------------------------------------------------------------------------------------------------------
    # set-up

    def _qos(self, name: str) -> QoSProfile:
        p = self.params
        return QoSProfile(
            depth=int(getattr(p, f"{name}_qos_depth")),
            history=HistoryPolicy.KEEP_LAST,
            reliability=_RELIABILITY[getattr(p, f"{name}_reliability")],
        )

    def _subscribe(self, msg_type, topic: str, callback, qos) -> None:
        self._subs.append(self.create_subscription(msg_type, topic, callback, qos))

    def _create_inputs(self) -> None:
        p = self.params
        for stream in self.sync.streams:
            transport = getattr(p, f"{stream}_transport")
            cb = lambda m, s=stream: self._on_image(s, m)
            if transport == "raw":
                self._subscribe(Image, stream, cb, self._qos(stream))
            else:  # image_transport's naming: the resolved (remapped) base topic + /compressed | /compressedDepth
                self._subscribe(
                    CompressedImage, f"{self.resolve_topic_name(stream)}/{transport}", cb, self._qos(stream)
                )
        self._subscribe(CameraInfo, "camera_info", self._on_camera_info, self._qos("camera_info"))
        self._subscribe(String, "query", self._on_query, 10)
        if p.pose_source == "tf":
            if tf2_ros is not None:  # pragma: no cover - needs tf2_ros
                self._tf2 = tf2_ros.Buffer()
                self._tf2_listener = tf2_ros.TransformListener(self._tf2, self)
            elif TFMessage is not None:
                self._subscribe(TFMessage, "/tf", lambda m: self._on_tf(m, False), _TF_QOS)
                self._subscribe(TFMessage, "/tf_static", lambda m: self._on_tf(m, True), _TF_STATIC_QOS)
            else:  # pragma: no cover
                self.get_logger().error(
                    "pose_source 'tf' but neither tf2_ros nor tf2_msgs is installed: "
                    "every frame will be dropped as no_pose (use pose_source pose|odom)"
                )
        elif p.pose_source == "pose":
            self._subscribe(PoseStamped, "pose", self._on_pose, self._qos("pose"))
        else:
            self._subscribe(Odometry, "odom", self._on_odom, self._qos("pose"))

    def _destroy_inputs(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        if self._tf2_listener is not None:  # pragma: no cover - needs tf2_ros
            self._tf2_listener.unregister()
            self._tf2_listener = self._tf2 = None

    def _publisher(self, msg_type, topic: str, depth: int):
        pub = self.create_publisher(
            msg_type, topic, depth, qos_overriding_options=QoSOverridingOptions.with_default_policies()
        )
        self._pubs.append(pub)
        return pub

    def _create_outputs(self) -> None:
        from ros2_opentrack.msg import Instance3DArray, QueryResult
        from ros2_opentrack.srv import LoadMap, Query, SetVocabulary

        self._QueryResult = QueryResult
        self.pub_instances = self._publisher(Instance3DArray, "instances", 10)
        self.pub_detections = self._publisher(Detection3DArray, "detections", 10) if Detection3DArray else None
        self.pub_markers = self._publisher(MarkerArray, "markers", 10)
        self.pub_cloud = self._publisher(PointCloud2, "instance_cloud", 2)
        self.pub_query = self._publisher(QueryResult, "query_result", 10)
        self.pub_debug = self._publisher(Image, "~/debug_image", 2)
        if DiagnosticArray is not None:
            self.pub_diag = self._publisher(DiagnosticArray, "/diagnostics", 10)
        else:  # pragma: no cover
            self.pub_diag = self._publisher(String, "~/diagnostics", 10)
        services = MutuallyExclusiveCallbackGroup()  # save / load / reset / vocabulary / enable: one at a time
        queries = ReentrantCallbackGroup()  # queries wait for their answer: several at once, beside the rest
        for srv_type, name, cb in (
            (Trigger, "~/save", self._on_save),
            (Trigger, "~/reset", self._on_reset),
            (LoadMap, "~/load", self._on_load),
            (SetBool, "~/enable", self._on_enable),
            (SetVocabulary, "~/set_vocabulary", self._on_set_vocabulary),
        ):
            self._srvs.append(self.create_service(srv_type, name, cb, callback_group=services))
        self._srvs.append(self.create_service(Query, "~/query", self._on_query_service, callback_group=queries))

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

    def _on_image(self, stream: str, msg) -> None:
        if not self._enabled:
            return
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
                self.tf_buffer.set_transform(
                    t.header.frame_id, t.child_frame_id, T, conv.stamp_to_sec(t.header.stamp), static=static
                )
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
        self.submit_query(msg.data, self.pub_query.publish)

    def _on_set_parameters(self, params) -> SetParametersResult:
        for p in params:
            if p.name in DYNAMIC_CORE_PARAMETERS:
                try:
                    classes = cfg_mod.from_flat({p.name: p.value}).perception.detector.vocabulary
                except ConfigError as exc:
                    return SetParametersResult(successful=False, reason=str(exc))
                if not [c for c in classes if str(c).strip()]:
                    return SetParametersResult(successful=False, reason="vocabulary must not be empty")
                if self.pipeline is not None:
                    self.commands.put(("vocabulary", list(classes)))
            elif p.name in self._static_names() and self.stage != "unconfigured":
                return SetParametersResult(
                    successful=False, reason=f"'{p.name}' is read at configure: cleanup, set it, configure"
                )
        return SetParametersResult(successful=True)

    def _static_names(self) -> set:
        if not hasattr(self, "_static_param_names"):
            core = set(cfg_mod.flatten(cfg_mod.OpenTrackConfig())) - set(DYNAMIC_CORE_PARAMETERS)
            self._static_param_names = core | set(NodeParams.__dataclass_fields__)
        return self._static_param_names

    # ------------------------------------------------------------------------------------------------------
    # services

    def _on_save(self, request, response):
        out = Path(os.path.expanduser(self.params.output_dir))
        try:
            from ..io.writers import write_outputs

            with self._lock:
                instances = self.pipeline.instances()
                scene_map = self.pipeline.map_points()
                self.pipeline.save_state(out / "map")
            paths = write_outputs(
                instances,
                out,
                scene_map,
                meta={"source": "opentrack_node", "stamp": time.time(), "world_frame": self.params.world_frame},
                view_image=self.pipeline.view_image,
            )
            response.success = True
            response.message = (
                f"{len(instances)} instances written to {out}: "
                + ", ".join(sorted(Path(p).name for p in paths.values()))
                + ", map/ (resumable state: ~/load)"
            )
        except (OSError, ValueError, OpenTrackError) as exc:  # InputError is a ValueError
            response.success, response.message = False, f"save to {out} failed: {exc}"
        return response

    def _on_load(self, request, response):
        from ..map_state import MapStateError

        path = Path(os.path.expanduser(request.path.strip() or str(Path(self.params.output_dir) / "map")))
        try:
            with self._lock:
                self.pipeline.load_state(path)
                self._instances_dirty = self._markers_dirty = True
        except (MapStateError, OSError, ValueError, OpenTrackError) as exc:  # the live map is untouched
            response.success, response.message = False, f"load from {path} failed: {exc}"
            return response
        self.frames.clear()
        self.sync.reset()
        header = self._now_header()
        self._last_pub["instances"] = self._last_pub["markers"] = 0.0
        self._publish_outputs(header)
        n = len(self._current_instances())
        response.success, response.message = True, f"{n} instances loaded from {path}"
        self.get_logger().info(response.message)
        return response

    def _on_reset(self, request, response):
        with self._lock:
            self.pipeline.reset()
            self._instances, self._instances_dirty, self._markers_dirty = [], True, True
        self.frames.clear()
        self.sync.reset()
        self.tf_buffer.clear()
        with self._book_lock:
            self.pub_markers.publish(self._book.clear(self._now_header()))
        release_memory()  # the freed map and images go back to the system
        response.success, response.message = True, "tracks, map and buffers cleared"
        return response

    def _on_enable(self, request, response):
        self._enabled = bool(request.data)
        if not self._enabled:
            self.frames.clear()
            self.sync.reset()
        response.success = True
        response.message = ("taking frames" if self._enabled else "paused: frames are ignored, the map is kept") + (
            "" if self.stage == "active" else f" (node is {self.stage}: frames flow once active)"
        )
        return response

    def _on_set_vocabulary(self, request, response):
        classes = [str(c).strip() for c in request.classes if str(c).strip()]
        if not classes:
            response.success, response.message = False, "vocabulary must hold at least one non-empty class name"
            return response
        # through the parameter, so that `ros2 param get` shows the vocabulary in use
        result = self.set_parameters([Parameter("perception.detector.vocabulary", value=classes)])[0]
        response.success = bool(result.successful)
        response.message = f"vocabulary set: {len(classes)} classes" if result.successful else result.reason
        return response

    def _on_query_service(self, request, response):
        done = threading.Event()
        box: Dict[str, Any] = {}

        def reply(msg) -> None:
            box["msg"] = msg
            done.set()

        self.submit_query(request.query, reply)
        if done.wait(self.params.query_timeout_s):
            response.result = box["msg"]
        else:
            response.result = self._error_result(
                request.query, f"no answer within query_timeout_s = {self.params.query_timeout_s} s"
            )
        return response

    # ------------------------------------------------------------------------------------------------------
    # queries: off the frame worker, on a snapshot of the instances

    def submit_query(self, text: str, reply: Callable) -> bool:
        """Answer ``text`` on a query thread and hand the QueryResult to ``reply`` (also published on
        query_result when reply is not that publisher). False when no query slot is free (answered 'busy')."""
        if not text.strip():
            self.drop("empty_query", "query text is empty")
            self._answer(reply, self._error_result(text, "empty query: expected a description such as 'red mug'"))
            return True
        if self._queries is None or not self._query_slots.acquire(blocking=False):
            self.drop("query_overflow", "all query slots are busy")
            self._answer(reply, self._error_result(text, "busy: too many queries in progress, ask again later"))
            return False
        try:
            self._queries.submit(self._run_query, text.strip(), reply)
        except RuntimeError:  # the pool was shut down (cleanup) in between
            self._query_slots.release()
            return False
        return True

    def _error_result(self, query: str, error: str):
        """A QueryResult that answers ``query`` with ``error`` (stamped now)."""
        return self._QueryResult(header=self._now_header(), query=query, error=error)

    def _answer(self, reply: Callable, msg) -> None:
        reply(msg)
        if reply != self.pub_query.publish:  # every answer also goes out on query_result
            self.pub_query.publish(msg)

    def _run_query(self, text: str, reply: Callable) -> None:
        try:
            self._answer(reply, self._query_result(text))
        except Exception as exc:  # a query must never take a thread down without an answer
            self.drop("query_error", f"{type(exc).__name__}: {exc}")
            reply(self._error_result(text, f"query failed: {exc}"))
        finally:
            self._query_slots.release()

    def _query_result(self, text: str):
        from ..query import answer_query

        pipeline = self.pipeline
        if pipeline is None:
            return self._error_result(text, "node is not configured")
        with self._lock:
            text_matcher = pipeline.text_matcher  # built at first use
        snapshot = self._current_instances()  # plain Instance objects: the worker goes on meanwhile
        tm = self.config.perception.text_matcher
        try:
            matches = answer_query(
                text,
                snapshot,
                text_matcher=text_matcher,
                labeler=pipeline.labeler,
                view_image=pipeline.view_image,
                shortlist=tm.shortlist,
                min_similarity=tm.min_similarity,
            )
        except InputError as exc:
            self.drop("bad_query", str(exc))
            return self._error_result(text, str(exc))
        header = self._now_header()
        by_id = {int(i.id): i for i in snapshot}
        found = [m for m in matches if int(m.instance_id) in by_id]
        msg = self._QueryResult(
            header=header,
            query=text,
            ids=[int(m.instance_id) for m in found],
            scores=[float(m.score) for m in found],
            labels=[m.label or "" for m in found],
            instances=[conv.instance_to_msg(by_id[int(m.instance_id)]) for m in found],
            error="" if found else "no instance matches the query",
        )
        with self._book_lock:
            self.pub_markers.publish(self._book.highlight([by_id[int(m.instance_id)] for m in found], header))
        return msg

    # ------------------------------------------------------------------------------------------------------
    # worker

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                self._run_commands()
                matched = self.frames.get(timeout=0.05)
                if matched is not None and not self._stop.is_set():
                    self._process(matched)
            except Exception as exc:  # the worker must survive anything; the reason is logged and counted
                self.drop("internal_error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")

    def _run_commands(self) -> None:
        while True:
            try:
                cmd = self.commands.get_nowait()
            except queue.Empty:
                return
            if cmd[0] == "vocabulary":
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
        if result.keyframe and not result.error:
            self._publish_debug_image(frame, depth_msg.header)
        self._publish_diagnostics(result)

    def _make_frame(self, matched: Dict[str, tuple]) -> Frame:
        depth_msg = matched["depth"][0]
        stamp = conv.stamp_to_sec(depth_msg.header.stamp)
        depth = _reasoned("bad_depth", conv.depth_from_any, depth_msg)
        rgb = _reasoned("bad_rgb", conv.rgb_from_any, matched["rgb"][0])
        info = self._camera_info
        if info is None:
            raise FrameDrop("no_camera_info", "no valid camera_info received yet")
        K = _reasoned("bad_camera_info", conv.intrinsics_from_camera_info, info, depth.shape)
        masks = self._masks(matched["masks"][0]) if "masks" in matched else None
        T = self._camera_pose(depth_msg.header.frame_id, stamp)
        return Frame(
            rgb=rgb,
            depth=depth,
            K=K,
            T_world_cam=T,
            stamp=stamp,
            index=self._frames_processed,
            masks=masks,
            frame_id=depth_msg.header.frame_id,
        )

    def _masks(self, msg) -> List[Mask2D]:
        decoded = _reasoned("bad_masks", conv.masks_from_any, msg, self.config.masks.max_ids)
        if decoded.over_cap:  # a hostile or broken label image: keep the largest ids, say so
            self.drop(
                "mask_ids_over_cap",
                f"label image has {len(decoded.masks) + decoded.over_cap} ids: kept the {len(decoded.masks)} largest",
            )
        return decoded.masks

    def _camera_pose(self, image_frame: str, stamp: float) -> np.ndarray:
        p = self.params
        camera = p.camera_frame or image_frame
        at = stamp if stamp > 0 else None  # an unstamped image takes the latest pose, as tf2's Time(0)
        try:
            if p.pose_source != "tf":
                T = self.tf_buffer.wait_lookup(p.world_frame, POSE_CHILD, at, p.tf_timeout_s)
            elif self._tf2 is not None:  # pragma: no cover - needs tf2_ros
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
            t = self._tf2.lookup_transform(
                target,
                source,
                Time(nanoseconds=int(stamp * 1e9)),
                timeout=Duration(nanoseconds=int(self.params.tf_timeout_s * 1e9)),
            )
        except tf2_ros.TransformException as exc:
            raise TransformUnavailable(str(exc)) from None
        return _reasoned("bad_pose", conv.transform_to_matrix, t.transform)

    # ------------------------------------------------------------------------------------------------------
    # outputs

    def _current_instances(self) -> list:
        with self._lock:
            if self._instances_dirty and self.pipeline is not None:
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
        if self.pub_detections is not None:
            self.pub_detections.publish(conv.detections_msg(instances, header))
        if self._markers_dirty and self._due("markers", self.params.markers_rate_hz):
            self._markers_dirty = False
            with self._book_lock:
                self.pub_markers.publish(self._book.update(instances, header))
            self.pub_cloud.publish(conv.instance_cloud(instances, header, self.params.cloud_max_points))

    def _publish_debug_image(self, frame: Frame, image_header) -> None:
        """The keyframe with each instance in view outlined, id + label: only while someone subscribes."""
        if self.pub_debug.get_subscription_count() == 0 or not self._due("debug", self.params.debug_image_rate_hz):
            return
        from ..io.preview import draw_instances

        image, _ = draw_instances(frame.rgb, self._current_instances(), frame.K, frame.T_world_cam)
        self.pub_debug.publish(conv.image_msg(image, "rgb8", image_header))

    def _now_header(self) -> Header:
        return Header(stamp=self.get_clock().now().to_msg(), frame_id=self.params.world_frame)

    def diagnostics(self, result=None) -> Dict[str, Any]:
        stats = getattr(self.pipeline, "stats", None)
        values = {
            "lifecycle": self.stage,
            "enabled": self._enabled,
            "latency_ms": round(self._last_latency_ms, 2),
            "queue_depth": len(self.frames),
            "frames_processed": self._frames_processed,
            "instances": len(self._instances),
            "drops_total": sum(self.drops().values()),
        }
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
        status = DiagnosticStatus(
            level=level,
            name=f"{self.get_name()}: pipeline",
            hardware_id="opentrack",
            message=f"{values['instances']} instances, {values['latency_ms']} ms",
            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
        )
        self.pub_diag.publish(DiagnosticArray(header=self._now_header(), status=[status]))

    def destroy_node(self) -> None:
        self._teardown()
        super().destroy_node()


def _warm_up(pipeline) -> None:
    """Run the models once on a blank 640x480 frame (loads lazy weights, allocates, compiles), so a weight file
    that cannot be used fails configure rather than the first frame, and the first frame is not slow."""
    h, w = 480, 640
    rgb = np.full((h, w, 3), 127, np.uint8)
    K = np.array([[525.0, 0, w / 2], [0, 525.0, h / 2], [0, 0, 1]])
    if getattr(pipeline, "mask_source", None) is not None:
        pipeline.mask_source.masks(
            Frame(rgb=rgb, depth=np.ones((h, w), np.float32), K=K, T_world_cam=np.eye(4), stamp=0.0, index=0)
        )
    masks = np.zeros((1, h, w), bool)
    masks[0, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = True
    pipeline.features.extract(rgb, masks, np.array([[w // 4, h // 4, 3 * w // 4, 3 * h // 4]], np.float32))
    _ = pipeline.text_matcher  # the sentence model, when one is configured


def _reasoned(reason: str, fn, *args):
    """Call fn; InputError becomes a FrameDrop counted under ``reason``."""
    try:
        return fn(*args)
    except InputError as exc:
        raise FrameDrop(reason, str(exc)) from None


def main(args: Optional[List[str]] = None) -> int:
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    rclpy.init(args=args)
    node = None
    try:
        node = OpenTrackNode()
        read_node_params(node), read_config(node)  # a parameter that does not parse: say which, exit non-zero
    except OpenTrackError as exc:
        rclpy.logging.get_logger("opentrack").fatal(str(exc))
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        return 1
    if node.params.autostart:  # as yolo_ros: configure + activate; a failure leaves the node unconfigured
        if node.trigger_configure() == SUCCESS:
            node.trigger_activate()
        else:
            node.get_logger().error(
                f"autostart: configure failed ({node.last_error}); fix the parameters and "
                f"`ros2 lifecycle set {node.get_fully_qualified_name()} configure`"
            )
    executor = MultiThreadedExecutor(num_threads=4)  # queries and services beside the subscriptions
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
