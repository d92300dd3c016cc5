"""Replay a bag into the node with simulated time, and show the result in RViz.

ros2 launch ros2_opentrack replay.launch.py bag:=/data/scene.mcap
(a bag from `opentrack convert`: /camera/color/image_raw, /camera/depth/image_raw, /camera/color/camera_info,
 /camera/pose, /tf, and /camera/masks/image_raw when the scene had instance masks: mask_source:=topic)
"""

from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

SHARE = FindPackageShare("ros2_opentrack")
# Defaults are the topic names ros2_opentrack.io.rosbag.BagTopics writes.
ARGUMENTS = [
    ("bag", "", "bag to play (.mcap / .db3 / rosbag2 folder)"),
    ("rate", "1.0", "playback rate"),
    ("rviz", "true", "start RViz with config/opentrack.rviz"),
    ("config_file", PathJoinSubstitution([SHARE, "config", "opentrack.yaml"]), "pipeline parameters"),
    ("rgb_topic", "/camera/color/image_raw", "colour image topic in the bag"),
    ("depth_topic", "/camera/depth/image_raw", "depth image topic in the bag"),
    ("camera_info_topic", "/camera/color/camera_info", "camera_info topic in the bag"),
    ("masks_topic", "/camera/masks/image_raw", "label-image masks topic in the bag (mask_source topic)"),
    ("pose_topic", "/camera/pose", "PoseStamped topic in the bag (pose_source pose)"),
    ("world_frame", "map", "fixed frame of the map"),
    ("pose_source", "pose", "tf | pose | odom"),
    ("mask_source", "model", "model | topic"),
]
CHOICES = {"pose_source": ["tf", "pose", "odom"], "mask_source": ["model", "topic"], "rviz": ["true", "false"]}


def generate_launch_description():
    declared = [
        DeclareLaunchArgument(name, default_value=default, description=doc, choices=CHOICES.get(name))
        for name, default, doc in ARGUMENTS
    ]
    opentrack = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([SHARE, "launch", "opentrack.launch.py"])),
        launch_arguments={
            "use_sim_time": "true",
            **{
                name: LaunchConfiguration(name)
                for name in (
                    "config_file",
                    "rgb_topic",
                    "depth_topic",
                    "camera_info_topic",
                    "masks_topic",
                    "pose_topic",
                    "world_frame",
                    "pose_source",
                    "mask_source",
                )
            },
        }.items(),
    )
    play = ExecuteProcess(
        cmd=["ros2", "bag", "play", LaunchConfiguration("bag"), "--clock", "--rate", LaunchConfiguration("rate")],
        output="screen",
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", PathJoinSubstitution([SHARE, "config", "opentrack.rviz"])],
        parameters=[{"use_sim_time": True}],
        condition=IfCondition(LaunchConfiguration("rviz")),
    )
    return LaunchDescription(declared + [opentrack, play, rviz])
