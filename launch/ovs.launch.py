"""Launch the ovs_ros segmentation node with its parameters file.

    ros2 launch ovs_ros ovs.launch.py image_topic:=/camera/color/image_raw
    ros2 launch ovs_ros ovs.launch.py params_file:=/path/to/my_ovs.yaml namespace:=robot1 input_mode:=compressed
    ros2 launch ovs_ros ovs.launch.py autostart:=false use_sim_time:=true log_level:=debug   # lifecycle manager, bag

The node is named `ovs` (so `ros2 param set /ovs vocabulary "['red mug', 'laptop']"` works, or
`/<namespace>/ovs`); its `image` input is remapped to `image_topic` and `image/compressed` to
`<image_topic>/compressed`. Outputs are ~/panoptic, ~/semantic, ~/segments, ~/overlay, ~/labels and /diagnostics
(docs/ros_interface.md).

`input_mode`, `autostart` and `use_sim_time` are empty by default, so the params file decides; when given they reach
the node as its `--input-mode`, `--autostart` and `--use-sim-time` flags, which override the file (a parameters dict
here would override the file even when the argument is unset). `autostart:=false` leaves the node unconfigured for a
lifecycle manager (e.g. nav2_lifecycle_manager).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "ovs_ros"
NODE_NAME = "ovs"
EXECUTABLE = "ovs_node"
PARAMS_FILE = os.path.join("config", "ovs.yaml")


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    image_topic = LaunchConfiguration("image_topic")
    arguments = [
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="sensor_msgs/Image topic to segment (its /compressed sibling is used "
                                          "with input_mode:=compressed)"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, PARAMS_FILE),
                              description="node parameters (YAML with a ros__parameters block)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("input_mode", default_value="",
                              description="raw (sensor_msgs/Image) or compressed (sensor_msgs/CompressedImage); "
                                          "empty = the params file's input_mode"),
        DeclareLaunchArgument("autostart", default_value="",
                              description="true: configure and activate at start-up; false: wait for a lifecycle "
                                          "manager; empty = the params file's autostart"),
        DeclareLaunchArgument("use_sim_time", default_value="",
                              description="true: stamps and latency on /clock time (bag replay); empty = the params "
                                          "file's (default false)"),
        DeclareLaunchArgument("log_level", default_value="info",
                              description="ROS log level (debug, info, warn, error, fatal); the model code's log "
                                          "lines follow it too"),
    ]
    node = Node(
        package=PACKAGE,
        executable=EXECUTABLE,
        name=NODE_NAME,
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file")],
        arguments=[  # an empty value keeps the params file's
            ["--input-mode=", LaunchConfiguration("input_mode")],
            ["--autostart=", LaunchConfiguration("autostart")],
            ["--use-sim-time=", LaunchConfiguration("use_sim_time")],
        ],
        remappings=[
            ("image", image_topic),
            ("image/compressed", [image_topic, "/compressed"]),
        ],
        ros_arguments=["--log-level", LaunchConfiguration("log_level")],
        output="screen",
        emulate_tty=True,
    )
    return LaunchDescription(arguments + [node])
