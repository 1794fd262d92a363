"""Start relocalization_node with a checkpoint on a camera topic.

    ros2 launch camera_pose_ros relocalization.launch.py model:=/path/model.pt \
        camera_topic:=/camera/image_raw [mode:=refine refinement_map:=/path/DATA] \
        [dashboard:=true dashboard_port:=8080]

The node is started as a lifecycle node. With ``autostart:=true`` (default) it configures and
activates itself; with ``autostart:=false`` a lifecycle manager drives it.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription

try:  # a lifecycle node, so that a lifecycle manager (e.g. Nav2's) can drive it
    from launch_ros.actions import LifecycleNode
except ImportError:  # a launch_ros without lifecycle support: a plain node
    LifecycleNode = None


def generate_launch_description() -> LaunchDescription:
    """Launch description: one node, configured by launch arguments."""
    share = get_package_share_directory("camera_pose_ros")
    default_config = os.path.join(share, "config", "relocalization.yaml")
    rviz_config = os.path.join(share, "rviz", "relocalization.rviz")
    args = [
        DeclareLaunchArgument("model", default_value="", description="checkpoint (model.pt)"),
        DeclareLaunchArgument("camera_topic", default_value="/camera/image_raw",
                              description="sensor_msgs/Image topic"),
        DeclareLaunchArgument("config", default_value=default_config,
                              description="parameter file"),
        DeclareLaunchArgument("mode", default_value="regress",
                              description="regress | refine (against the SfM map) | scr-pnp "
                                          "(structure-aware models)"),
        DeclareLaunchArgument("refinement_map", default_value="",
                              description="refinement map or dataset (\"\": beside the model)"),
        DeclareLaunchArgument("camera_info_topic", default_value="/camera/camera_info",
                              description="sensor_msgs/CameraInfo topic (refine mode)"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="true when a bag is played with --clock"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate without a lifecycle "
                              "manager"),
        DeclareLaunchArgument("namespace", default_value=""),
        DeclareLaunchArgument("rviz", default_value="false", description="start RViz too"),
        DeclareLaunchArgument("dashboard", default_value="false",
                              description="start dashboard_node too (web page of the poses "
                              "on the floor plan)"),
        DeclareLaunchArgument("dashboard_host", default_value="127.0.0.1",
                              description="dashboard address (another than loopback needs "
                              "dashboard_token)"),
        DeclareLaunchArgument("dashboard_port", default_value="8080"),
        DeclareLaunchArgument("dashboard_token", default_value="",
                              description="dashboard access token (\"\": made and logged "
                              "when needed)"),
        DeclareLaunchArgument("floorplan", default_value="",
                              description="map_server YAML for the dashboard (\"\": the "
                              "model's dataset's floorplan.yaml)"),
    ]
    common = dict(
        name="relocalization",
        namespace=LaunchConfiguration("namespace"),
        parameters=[
            LaunchConfiguration("config"),
            {"model_path": LaunchConfiguration("model"),
             "mode": LaunchConfiguration("mode"),
             "refinement_map": LaunchConfiguration("refinement_map"),
             "autostart": LaunchConfiguration("autostart"),
             "use_sim_time": LaunchConfiguration("use_sim_time")},
        ],
        remappings=[("image", LaunchConfiguration("camera_topic")),
                    ("camera_info", LaunchConfiguration("camera_info_topic"))],
        output="screen",
    )
    if LifecycleNode is not None:
        node = LifecycleNode(package="camera_pose_ros", executable="relocalization_node",
                             **common)
    else:
        node = Node(package="camera_pose_ros", executable="relocalization_node", **common)
    rviz = Node(package="rviz2", executable="rviz2", arguments=["-d", rviz_config],
                condition=IfCondition(LaunchConfiguration("rviz")), output="screen")
    dashboard = Node(
        package="camera_pose_ros", executable="dashboard_node", name="dashboard",
        namespace=LaunchConfiguration("namespace"),
        parameters=[{"checkpoint": LaunchConfiguration("model"),
                     "host": LaunchConfiguration("dashboard_host"),
                     "port": ParameterValue(LaunchConfiguration("dashboard_port"), value_type=int),
                     "token": LaunchConfiguration("dashboard_token"),
                     "floorplan_yaml": LaunchConfiguration("floorplan"),
                     "refinement_map": LaunchConfiguration("refinement_map"),
                     "use_sim_time": LaunchConfiguration("use_sim_time")}],
        remappings=[("image", LaunchConfiguration("camera_topic"))],
        condition=IfCondition(LaunchConfiguration("dashboard")), output="screen")
    return LaunchDescription([*args, node, rviz, dashboard])
