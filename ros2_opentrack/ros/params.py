"""ROS parameters of the node: every core parameter (the OpenTrackConfig tree, flattened to dotted names, with
its description) plus the node's own (frames, pose source, sync, queue, rates, output folder).

Topic names are not parameters: they are the fixed relative names below, changed by remapping
(``rgb:=/camera/color/image_raw``), as ROS intends."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, Literal, Optional, Sequence, Tuple, get_args

from rcl_interfaces.msg import ParameterDescriptor

from .. import config as cfg_mod
from ..config import OpenTrackConfig, param

# Core parameters that may change while running (everything else is read once at start-up).
DYNAMIC_CORE_PARAMETERS = ("perception.detector.vocabulary",)


PoseSource = Literal["tf", "pose", "odom"]
POSE_SOURCES: Tuple[str, ...] = get_args(PoseSource)
# image_transport names: raw (sensor_msgs/Image on <topic>), compressed (CompressedImage jpeg / png on
# <topic>/compressed), compressedDepth (compressed_depth_image_transport's png on <topic>/compressedDepth)
Transport = Literal["raw", "compressed", "compressedDepth"]
TRANSPORTS: Tuple[str, ...] = get_args(Transport)
Reliability = Literal["best_effort", "reliable"]


@dataclass
class NodeParams:
    world_frame: str = param("map", "fixed frame of the map: instances, markers and cloud are published in it")
    camera_frame: str = param("", "camera optical frame for the TF lookup; empty: the depth image's header.frame_id")
    pose_source: PoseSource = param(
        "tf", "tf (world_frame -> camera frame) | pose (PoseStamped 'pose') | odom (Odometry 'odom')"
    )
    tf_timeout_s: float = param(0.1, "how long the worker waits for a camera pose at a frame's stamp")
    sync_tolerance_s: float = param(0.02, "rgb / depth / masks stamps closer than this belong to one frame")
    sync_buffer: int = param(10, "messages buffered per stream while waiting for partners")
    sync_jump_back_s: float = param(
        1.0,
        "a stamp this much older than the newest seen means time jumped back "
        "(bag --loop, sim reset, driver restart): sync buffers and TF history "
        "are cleared, counted as time_jump_back, the map is kept (0: off)",
    )
    max_stamp_ahead_s: float = param(
        3600.0,
        "images stamped this far ahead of the node clock are dropped as "
        "sync_future_stamp (0: off; off while sim time reads 0)",
    )
    queue_size: int = param(1, "frames waiting for the worker, oldest dropped when full (counted); 1: latest wins")
    publish_rate_hz: float = param(0.0, "instances topic rate cap (0: after every processed frame)")
    markers_rate_hz: float = param(2.0, "markers + instance_cloud rate cap (0: after every processed frame)")
    cloud_max_points: int = param(200000, "instance_cloud is subsampled to at most this many points")
    marker_points: int = param(400, "points per instance in the points marker")
    output_dir: str = param("~/.ros/opentrack", "where the save service writes instances.json / .npz / .ply")
    warn_throttle_s: float = param(5.0, "at most one warning per reason in this period")
    autostart: bool = param(
        False,
        "configure and activate at start-up (the launch file sets it from its autostart "
        "argument); false: a lifecycle manager or `ros2 lifecycle set` drives the node",
    )
    warm_up: bool = param(True, "at configure, run the models once on a blank frame so the first real frame is fast")
    map_path: str = param(
        "",
        "saved map state folder (~/save writes <output_dir>/map) loaded at configure; empty: start with an empty map",
    )
    rgb_transport: Transport = param("raw", "raw | compressed (rgb/compressed, jpeg or png)")
    depth_transport: Transport = param("raw", "raw | compressedDepth (depth/compressedDepth) | compressed (16-bit png)")
    masks_transport: Transport = param("raw", "raw | compressed (16-bit png label image) | compressedDepth")
    rgb_reliability: Reliability = param(
        "best_effort", "best_effort (takes reliable and best-effort publishers) | reliable"
    )
    rgb_qos_depth: int = param(5, "rgb subscription history depth")
    depth_reliability: Reliability = param("best_effort", "best_effort | reliable")
    depth_qos_depth: int = param(5, "depth subscription history depth")
    masks_reliability: Reliability = param("best_effort", "best_effort | reliable")
    masks_qos_depth: int = param(5, "masks subscription history depth")
    camera_info_reliability: Reliability = param("best_effort", "best_effort | reliable")
    camera_info_qos_depth: int = param(5, "camera_info subscription history depth")
    pose_reliability: Reliability = param("best_effort", "best_effort | reliable (pose / odom topic)")
    pose_qos_depth: int = param(20, "pose / odom subscription history depth")
    query_workers: int = param(1, "queries answered at once, off the frame worker (label matching + MLLM confirmation)")
    query_backlog: int = param(
        4, "queries waiting for a query worker; more are answered 'busy' and counted (query_overflow)"
    )
    query_timeout_s: float = param(60.0, "the ~/query service answers with an error after this long")
    debug_image_rate_hz: float = param(
        2.0, "~/debug_image rate cap (keyframes only; 0: every keyframe); drawn only while someone subscribes"
    )


NODE_PARAM_DOCS = cfg_mod.field_docs(NodeParams)


def _descriptor(doc: str, choices: Optional[Sequence[str]] = None, **kwargs) -> ParameterDescriptor:
    """Description plus, for an enumerated parameter, its allowed values as the additional constraints."""
    constraints = f"one of: {', '.join(choices)}" if choices else ""
    return ParameterDescriptor(description=doc, additional_constraints=constraints, **kwargs)


def declare_all(node) -> None:
    """Declare the node's own and every core parameter with its default and description."""
    node_choices = cfg_mod.field_choices(NodeParams)
    for f in fields(NodeParams):
        node.declare_parameter(
            f.name, getattr(NodeParams(), f.name), _descriptor(NODE_PARAM_DOCS[f.name], node_choices.get(f.name))
        )
    docs, choices = cfg_mod.field_docs(), cfg_mod.field_choices()
    for name, default in cfg_mod.flatten(OpenTrackConfig()).items():
        # dynamic typing: a YAML '1' for a float parameter is coerced by config.from_flat instead of rejected
        node.declare_parameter(name, default, _descriptor(docs.get(name, ""), choices.get(name), dynamic_typing=True))


def overrides(values: Dict[str, Any]) -> list:
    """rclpy Parameter list for Node(parameter_overrides=...) from {name: value}; unknown names raise."""
    from rclpy.parameter import Parameter

    known = set(cfg_mod.flatten(OpenTrackConfig())) | {f.name for f in fields(NodeParams)} | {"use_sim_time"}
    unknown = sorted(k for k in set(values) - known if not k.startswith("qos_overrides."))
    if unknown:
        raise cfg_mod.ConfigError(f"unknown parameter(s): {', '.join(unknown)}")
    return [Parameter(k, value=v) for k, v in values.items()]


def read_node_params(node, validate: bool = True) -> NodeParams:
    """The node's own parameters; ``validate`` raises ConfigError on a value out of its choices."""
    values = {f.name: node.get_parameter(f.name).value for f in fields(NodeParams)}
    params = NodeParams(**values)
    if not validate:
        return params
    for name, allowed in cfg_mod.field_choices(NodeParams).items():
        if getattr(params, name) not in allowed:
            raise cfg_mod.ConfigError(
                f"parameter '{name}' = {getattr(params, name)!r}: expected one of {', '.join(allowed)}"
            )
    if params.rgb_transport == "compressedDepth":
        raise cfg_mod.ConfigError(
            "parameter 'rgb_transport' = 'compressedDepth': that transport is for depth images; use raw or compressed"
        )
    for name in ("query_workers", "query_backlog"):
        if getattr(params, name) < (1 if name == "query_workers" else 0):
            raise cfg_mod.ConfigError(
                f"parameter '{name}' = {getattr(params, name)}: must be at least {1 if name == 'query_workers' else 0}"
            )
    return params


def read_config(node) -> OpenTrackConfig:
    """The OpenTrackConfig of the node's current core parameter values (validated)."""
    flat = {name: _plain(node.get_parameter(name).value) for name in cfg_mod.flatten(OpenTrackConfig())}
    return cfg_mod.from_flat(flat)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "array" else value


# ---------------------------------------------------------------------------------------------------------
# config/opentrack.yaml is generated from the dataclass tree, so it names every key with its default and its
# description. Regenerate after changing config.py:  python -m ros2_opentrack.ros.params > config/opentrack.yaml

_YAML_HEADER = """\
# ros2_opentrack parameters: the whole OpenTrackConfig tree (ros2_opentrack/config.py), ROS-wrapped.
# Load with `--ros-args --params-file config/opentrack.yaml` (node name: opentrack) or, without ROS,
# through config.load_config (it unwraps ros__parameters), e.g. `opentrack run --config config/opentrack.yaml`.
# Values are the dataclass defaults (the paper's settings, OpenTrack3D sec. 4.1); test_ros_params keeps them
# equal. Node parameters (world_frame, pose_source, queue_size, ...) come from the launch file's arguments.
# Generated by: python -m ros2_opentrack.ros.params > config/opentrack.yaml
opentrack:
  ros__parameters:
"""


def default_yaml(line_width: int = 110) -> str:
    import dataclasses

    docs = cfg_mod.field_docs()
    lines: list = []

    def emit(obj, prefix: str, indent: int) -> None:
        pad = " " * indent
        for f in dataclasses.fields(obj):
            value, doc = getattr(obj, f.name), docs.get(prefix + f.name)
            if dataclasses.is_dataclass(value):
                cls_doc = (type(value).__doc__ or "").strip().splitlines()
                cls_doc = cls_doc[0] if cls_doc and not cls_doc[0].startswith(type(value).__name__ + "(") else ""
                lines.append(f"{pad}{f.name}:" + (f"  # {cls_doc}" if cls_doc else ""))
                emit(value, prefix + f.name + ".", indent + 2)
            elif isinstance(value, list) and len(pad + f.name) + sum(len(str(v)) + 4 for v in value) > line_width:
                lines.append(f"{pad}{f.name}: [" + (f"  # {doc}" if doc else ""))
                row = pad + "  "
                for item in (_yaml_scalar(v) + "," for v in value):
                    if len(row) + len(item) > line_width:
                        lines.append(row.rstrip())
                        row = pad + "  "
                    row += item + " "
                lines.append(row.rstrip().rstrip(","))
                lines.append(pad + "]")
            else:
                lines.append(f"{pad}{f.name}: {_yaml_value(value)}" + (f"  # {doc}" if doc else ""))

    emit(OpenTrackConfig(), "", 4)
    return _YAML_HEADER + "\n".join(lines) + "\n"


def _yaml_scalar(v: Any) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def _yaml_value(v: Any) -> str:
    return "[" + ", ".join(_yaml_scalar(x) for x in v) + "]" if isinstance(v, list) else _yaml_scalar(v)


if __name__ == "__main__":
    print(default_yaml(), end="")
