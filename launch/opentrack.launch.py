"""Robot launch: the opentrack (lifecycle) node on live RGB-D + CameraInfo + pose.

    ros2 launch ros2_opentrack opentrack.launch.py rgb_topic:=/camera/color/image_raw \
        depth_topic:=/camera/aligned_depth_to_color/image_raw camera_info_topic:=/camera/color/camera_info \
        world_frame:=map pose_source:=tf [namespace:=robot1] [rgb_transport:=compressed] [autostart:=false]

autostart (default true) configures and activates the node as it starts, as yolo_ros does; autostart:=false
leaves it unconfigured for a lifecycle manager (nav2_lifecycle_manager) or `ros2 lifecycle set`.
"""

from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

# (name, default, description). Strings stay strings (ParameterValue value_type=str: an empty camera_frame
# would otherwise be parsed as YAML null); numbers are parsed from their text by launch_ros.
ARGUMENTS = [
    (
        "config_file",
        PathJoinSubstitution([FindPackageShare("ros2_opentrack"), "config", "opentrack.yaml"]),
        "YAML with the pipeline parameters (opentrack: ros__parameters: ...)",
    ),
    ("rgb_topic", "/camera/color/image_raw", "colour image (rgb8 / bgr8 / rgba8 / bgra8 / mono8)"),
    ("depth_topic", "/camera/aligned_depth_to_color/image_raw", "depth image (16UC1 mm or 32FC1 m)"),
    ("camera_info_topic", "/camera/color/camera_info", "camera_info of the depth image's pixels"),
    ("masks_topic", "/opentrack/masks", "label image of 2D instances (used when mask_source is topic)"),
    ("pose_topic", "/camera/pose", "geometry_msgs/PoseStamped of the camera (pose_source pose)"),
    ("odom_topic", "/odom", "nav_msgs/Odometry of the camera (pose_source odom)"),
    ("world_frame", "map", "fixed frame of the map"),
    ("camera_frame", "", "camera optical frame (empty: the depth image's frame_id)"),
    ("pose_source", "tf", "tf | pose | odom"),
    ("mask_source", "model", "model (detector + segmenter) | topic (masks_topic)"),
    ("sync_tolerance_s", "0.02", "rgb / depth / masks stamp matching tolerance in seconds"),
    ("queue_size", "1", "frames waiting for the worker (oldest dropped when full)"),
    ("output_dir", "~/.ros/opentrack", "folder written by the ~/save service"),
    ("use_sim_time", "false", "use /clock (bag replay)"),
    ("namespace", "", "namespace of the node and its topics (several cameras / robots)"),
    ("autostart", "true", "configure + activate at start; false: a lifecycle manager drives the node"),
    ("map_path", "", "saved map state folder to continue from (written by ~/save to <output_dir>/map)"),
    ("rgb_transport", "raw", "raw | compressed (subscribes <rgb_topic>/compressed)"),
    ("depth_transport", "raw", "raw | compressedDepth (<depth_topic>/compressedDepth) | compressed"),
    ("masks_transport", "raw", "raw | compressed | compressedDepth"),
    ("rgb_reliability", "best_effort", "rgb subscription QoS reliability"),
    ("depth_reliability", "best_effort", "depth subscription QoS reliability"),
    ("camera_info_reliability", "best_effort", "camera_info subscription QoS reliability"),
]
# Arguments whose values are fixed: launch refuses anything else before the node starts.
CHOICES = {
    "pose_source": ["tf", "pose", "odom"],
    "mask_source": ["model", "topic"],
    "rgb_transport": ["raw", "compressed"],
    "depth_transport": ["raw", "compressed", "compressedDepth"],
    "masks_transport": ["raw", "compressed", "compressedDepth"],
    "rgb_reliability": ["best_effort", "reliable"],
    "depth_reliability": ["best_effort", "reliable"],
    "camera_info_reliability": ["best_effort", "reliable"],
    "autostart": ["true", "false"],
    "use_sim_time": ["true", "false"],
}
STRING_PARAMETERS = (
    "world_frame",
    "camera_frame",
    "pose_source",
    "output_dir",
    "map_path",
    "rgb_transport",
    "depth_transport",
    "masks_transport",
    "rgb_reliability",
    "depth_reliability",
    "camera_info_reliability",
)
NUMBER_PARAMETERS = ("sync_tolerance_s", "queue_size")


def generate_launch_description():
    declared = [
        DeclareLaunchArgument(name, default_value=default, description=doc, choices=CHOICES.get(name))
        for name, default, doc in ARGUMENTS
    ]
    node_parameters = {name: ParameterValue(LaunchConfiguration(name), value_type=str) for name in STRING_PARAMETERS}
    node_parameters.update({name: LaunchConfiguration(name) for name in NUMBER_PARAMETERS})
    node_parameters["masks.source"] = ParameterValue(LaunchConfiguration("mask_source"), value_type=str)
    node_parameters["use_sim_time"] = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)
    node_parameters["autostart"] = ParameterValue(LaunchConfiguration("autostart"), value_type=bool)
    node = LifecycleNode(
        package="ros2_opentrack",
        executable="opentrack_node",
        name="opentrack",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[LaunchConfiguration("config_file"), node_parameters],
        remappings=[
            ("rgb", LaunchConfiguration("rgb_topic")),
            ("depth", LaunchConfiguration("depth_topic")),
            ("camera_info", LaunchConfiguration("camera_info_topic")),
            ("masks", LaunchConfiguration("masks_topic")),
            ("pose", LaunchConfiguration("pose_topic")),
            ("odom", LaunchConfiguration("odom_topic")),
        ],
    )
    return LaunchDescription(declared + [node])
