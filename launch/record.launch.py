"""Record a walk-through to a ROS 2 bag with recorder_node.

    ros2 launch camera_pose_ros record.launch.py output:=walk camera_topic:=/camera/image_raw
"""

from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    """Launch description: recorder_node configured by launch arguments."""
    args = [
        DeclareLaunchArgument("output", default_value="recording", description="bag folder"),
        DeclareLaunchArgument("camera_topic", default_value="/camera/image_raw"),
        DeclareLaunchArgument("camera_info_topic", default_value="/camera/camera_info"),
        DeclareLaunchArgument("odom_topic", default_value="", description="\"\" = none"),
        DeclareLaunchArgument("localization_topics", default_value="/tf /tf_static /amcl_pose",
                              description="the robot's own localization, recorded for "
                                          "`camera-pose dataset` to align to the map "
                                          "(space-separated; \"\" = none)"),
        DeclareLaunchArgument("storage", default_value="mcap", description="mcap | sqlite3"),
        DeclareLaunchArgument("min_interval", default_value="0.0",
                              description="seconds between recorded frames (keyframes)"),
        DeclareLaunchArgument("max_bag_size_mb", default_value="0.0"),
        DeclareLaunchArgument("flush_period", default_value="1.0",
                              description="seconds between flushes to disk: a killed "
                                          "recorder loses at most about this much"),
        DeclareLaunchArgument("chunk_size", default_value="1048576",
                              description="MCAP chunk size in bytes (at most 1 MiB)"),
        DeclareLaunchArgument("floorplan", default_value="",
                              description="map_server YAML: live coverage of the plan while "
                                          "recording (\"\" = /map only, if published)"),
        DeclareLaunchArgument("use_sim_time", default_value="false"),
        DeclareLaunchArgument("namespace", default_value=""),
    ]
    node = Node(
        package="camera_pose_ros",
        executable="recorder_node",
        name="recorder",
        namespace=LaunchConfiguration("namespace"),
        parameters=[{
            "output": LaunchConfiguration("output"),
            "topics": PythonExpression(["['", LaunchConfiguration("camera_topic"), "', '",
                                        LaunchConfiguration("camera_info_topic"), "'] + '",
                                        LaunchConfiguration("localization_topics"),
                                        "'.split()"]),
            "odom_topic": LaunchConfiguration("odom_topic"),
            "storage": LaunchConfiguration("storage"),
            "min_interval": LaunchConfiguration("min_interval"),
            "max_bag_size_mb": LaunchConfiguration("max_bag_size_mb"),
            "flush_period": LaunchConfiguration("flush_period"),
            "chunk_size": LaunchConfiguration("chunk_size"),
            "floorplan": LaunchConfiguration("floorplan"),
            "use_sim_time": LaunchConfiguration("use_sim_time"),
        }],
        output="screen",
    )
    return LaunchDescription([*args, node])
