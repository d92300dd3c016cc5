"""config/opentrack.yaml, the node's parameter declarations, the launch files (parsed, launch is not a wheel)
and the package manifest / CMake file agree with each other and with the code."""

import ast
import dataclasses
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from ros2_opentrack import config as cfg

ROOT = Path(__file__).resolve().parents[1]
YAML = ROOT / "config" / "opentrack.yaml"


def test_yaml_loads_names_only_known_keys_and_equals_defaults():
    data = yaml.safe_load(YAML.read_text())
    assert list(data) == ["opentrack"] and list(data["opentrack"]) == ["ros__parameters"]
    loaded = cfg.load_config(YAML)  # raises ConfigError on any unknown key
    assert loaded == cfg.OpenTrackConfig()  # no comment in the file says a value differs from the dataclass
    flat_file = _flatten(data["opentrack"]["ros__parameters"])
    assert set(flat_file) == set(cfg.flatten(cfg.OpenTrackConfig()))  # every group, every key


def test_yaml_is_the_generated_one():
    pytest.importorskip("rclpy")
    from ros2_opentrack.ros.params import default_yaml

    assert YAML.read_text() == default_yaml(), (
        "config/opentrack.yaml is stale: python -m ros2_opentrack.ros.params > config/opentrack.yaml"
    )


def _flatten(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


# ---------------------------------------------------------------------------------------------------------
# launch files


def _launch_arguments(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ARGUMENTS" for t in node.targets):
            return {elt.elts[0].value: elt.elts[1] for elt in node.value.elts}
    raise AssertionError(f"{path} declares no ARGUMENTS list")


def _string_constants(path: Path):
    return {
        n.value
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def _called(path: Path):
    return {
        n.func.id if isinstance(n.func, ast.Name) else n.func.attr
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.Call)
    }


def test_robot_launch_arguments_and_references():
    path = ROOT / "launch" / "opentrack.launch.py"
    compile(path.read_text(), str(path), "exec")
    args = _launch_arguments(path)
    assert {
        "config_file",
        "rgb_topic",
        "depth_topic",
        "camera_info_topic",
        "masks_topic",
        "pose_topic",
        "odom_topic",
        "world_frame",
        "camera_frame",
        "pose_source",
        "mask_source",
        "use_sim_time",
    } <= set(args)
    assert args["pose_source"].value == "tf" and args["world_frame"].value == "map"
    assert {"generate_launch_description"} <= {
        n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)
    }
    assert {
        "DeclareLaunchArgument",
        "LifecycleNode",
        "LaunchConfiguration",
        "FindPackageShare",
        "ParameterValue",
    } <= _called(path)
    assert {"namespace", "autostart", "rgb_transport", "depth_transport", "masks_transport"} <= set(args)
    assert args["autostart"].value == "true"
    consts = _string_constants(path)
    assert {"ros2_opentrack", "opentrack_node", "opentrack.yaml"} <= consts
    assert (ROOT / "config" / "opentrack.yaml").is_file()
    assert "opentrack_node" in (ROOT / "CMakeLists.txt").read_text()
    # the remapped names are the node's topic names; the node parameters set exist on the node
    assert {"rgb", "depth", "camera_info", "masks", "pose", "odom"} <= consts
    pytest.importorskip("rclpy")
    from ros2_opentrack.ros.params import NodeParams

    tree = ast.parse(path.read_text())
    names = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id in ("STRING_PARAMETERS", "NUMBER_PARAMETERS"):
            names[node.targets[0].id] = [e.value for e in node.value.elts]
    set_params = set(names["STRING_PARAMETERS"]) | set(names["NUMBER_PARAMETERS"])
    assert set_params <= {f.name for f in dataclasses.fields(NodeParams)}
    assert set(args["pose_source"].value.split("|")) <= {"tf", "pose", "odom"}
    # fixed-value arguments declare their choices, and those are the node's allowed values
    choices = _choices(path)
    node_choices = cfg.field_choices(NodeParams)
    assert {"pose_source", "mask_source", "rgb_transport", "depth_transport", "masks_transport"} <= set(choices)
    for name, allowed in choices.items():
        if name in node_choices:
            assert set(allowed) <= set(node_choices[name]), name
        assert args[name].value in allowed, name
    assert set(choices["mask_source"]) <= set(cfg.field_choices()["masks.source"])
    assert "choices=CHOICES.get(name)" in path.read_text()


def _choices(path: Path):
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "CHOICES":
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path} declares no CHOICES")


def test_replay_launch_arguments_and_references():
    path = ROOT / "launch" / "replay.launch.py"
    compile(path.read_text(), str(path), "exec")
    args = _launch_arguments(path)
    assert {"bag", "rate", "rviz", "config_file", "pose_source", "mask_source"} <= set(args)
    consts = _string_constants(path)
    assert {"ros2", "bag", "play", "--clock", "opentrack.launch.py", "opentrack.rviz", "rviz2"} <= consts
    assert {"ExecuteProcess", "IncludeLaunchDescription", "IfCondition"} <= _called(path)
    assert (ROOT / "launch" / "opentrack.launch.py").is_file() and (ROOT / "config" / "opentrack.rviz").is_file()
    # the included launch file declares every argument passed to it
    included = _launch_arguments(ROOT / "launch" / "opentrack.launch.py")
    passed = re.findall(r'"(\w+)",?', path.read_text().split("launch_arguments=")[1].split("}.items()")[0])
    assert set(passed) - {"true"} <= set(included)
    # the defaults are the topics the bag writer uses
    from ros2_opentrack.io.rosbag import BagTopics

    t = BagTopics()
    assert (
        args["rgb_topic"].value,
        args["depth_topic"].value,
        args["camera_info_topic"].value,
        args["pose_topic"].value,
    ) == (t.rgb, t.depth, t.camera_info, t.pose)


def test_rviz_config_shows_markers_cloud_and_image():
    doc = yaml.safe_load((ROOT / "config" / "opentrack.rviz").read_text())
    displays = {d["Class"]: d for d in doc["Visualization Manager"]["Displays"]}
    assert displays["rviz_default_plugins/MarkerArray"]["Topic"]["Value"] == "/markers"
    assert displays["rviz_default_plugins/PointCloud2"]["Topic"]["Value"] == "/instance_cloud"
    assert displays["rviz_default_plugins/PointCloud2"]["Color Transformer"] == "RGB8"
    assert "rviz_default_plugins/Image" in displays
    assert doc["Visualization Manager"]["Global Options"]["Fixed Frame"] == "map"


# ---------------------------------------------------------------------------------------------------------
# package manifest and build file


def test_package_xml_and_cmake():
    pkg = ET.parse(ROOT / "package.xml").getroot()
    assert pkg.get("format") == "3" and pkg.findtext("name") == "ros2_opentrack"
    deps = {e.text for e in pkg if e.tag.endswith("depend")}
    assert {
        "rclpy",
        "std_msgs",
        "sensor_msgs",
        "geometry_msgs",
        "nav_msgs",
        "visualization_msgs",
        "std_srvs",
        "tf2_ros",
        "tf2_msgs",
        "builtin_interfaces",
        "rosidl_default_generators",
        "rosidl_default_runtime",
        "ament_cmake",
        "ament_cmake_python",
        "python3-numpy",
        "python3-scipy",
        "python3-yaml",
        "diagnostic_msgs",
    } <= deps
    assert pkg.findtext("member_of_group") == "rosidl_interface_packages"
    assert pkg.find("export/build_type").text == "ament_cmake"
    cmake = (ROOT / "CMakeLists.txt").read_text()
    listed = re.findall(r'"(msg/\w+\.msg)"', cmake)
    assert sorted(listed) == sorted(f"msg/{p.name}" for p in (ROOT / "msg").glob("*.msg"))
    for dep in re.search(r"DEPENDENCIES ([\w ]+)", cmake).group(1).split():
        assert dep in deps
    assert "project(ros2_opentrack)" in cmake


# ---------------------------------------------------------------------------------------------------------
# the node's parameter declarations (a node is created, no message is sent)


@pytest.fixture(scope="module")
def ros():
    rclpy = pytest.importorskip("rclpy")
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_DOMAIN_ID"] = str(20 + os.getpid() % 40)
    if not rclpy.ok():
        rclpy.init()
    return rclpy


def test_every_core_parameter_declared_with_description(ros):
    from ros2_opentrack.ros.params import NodeParams, declare_all, read_config, read_node_params

    node = ros.create_node("opentrack_params_test")
    try:
        declare_all(node)
        docs = cfg.field_docs()
        for name in cfg.flatten(cfg.OpenTrackConfig()):
            desc = node.describe_parameter(name)
            assert desc.description == docs.get(name, ""), name
        assert node.describe_parameter("tracking.alpha").description.startswith("s = alpha")
        assert read_config(node) == cfg.OpenTrackConfig()
        assert read_node_params(node) == NodeParams()
    finally:
        node.destroy_node()


def test_enumerated_parameters_declare_their_choices(ros):
    from ros2_opentrack.ros.params import POSE_SOURCES, declare_all

    node = ros.create_node("opentrack_params_choices")
    try:
        declare_all(node)
        for name, allowed in cfg.field_choices().items():
            assert node.describe_parameter(name).additional_constraints == f"one of: {', '.join(allowed)}", name
        assert node.describe_parameter("pose_source").additional_constraints == f"one of: {', '.join(POSE_SOURCES)}"
        assert node.describe_parameter("tracking.alpha").additional_constraints == ""
    finally:
        node.destroy_node()


def test_yaml_values_reach_the_config_through_ros_parameters(ros):
    from rclpy.parameter import Parameter

    from ros2_opentrack.errors import ConfigError
    from ros2_opentrack.ros.params import declare_all, overrides, read_config, read_node_params

    flat = _flatten(yaml.safe_load(YAML.read_text())["opentrack"]["ros__parameters"])
    flat.update({"tracking.alpha": 1, "refine.tau_vis": 0.8, "perception.detector.vocabulary": ["mug", "kettle"]})
    node = ros.create_node(
        "opentrack_params_test2", parameter_overrides=[Parameter(k, value=v) for k, v in flat.items()]
    )
    try:
        declare_all(node)
        c = read_config(node)
        assert c.tracking.alpha == 1.0 and isinstance(c.tracking.alpha, float)  # int 1 coerced
        assert c.refine.tau_vis == 0.8 and c.perception.detector.vocabulary == ["mug", "kettle"]
    finally:
        node.destroy_node()
    with pytest.raises(ConfigError, match="tracking.alfa"):
        overrides({"tracking.alfa": 0.3})
    bad = ros.create_node("opentrack_params_test3", parameter_overrides=overrides({"pose_source": "gps"}))
    try:
        declare_all(bad)
        with pytest.raises(ConfigError, match="pose_source"):
            read_node_params(bad)
    finally:
        bad.destroy_node()


def test_entry_point_refuses_bad_parameters_with_a_clear_message():
    import subprocess
    import sys

    pytest.importorskip("rclpy")
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(60 + os.getpid() % 40))
    code = "from ros2_opentrack.ros.node import main; raise SystemExit(main())"
    proc = subprocess.run(
        [sys.executable, "-c", code, "--ros-args", "-p", "masks.source:=topic", "-p", "pose_source:=gps"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "pose_source" in proc.stderr and "tf, pose, odom" in proc.stderr
