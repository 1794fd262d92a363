"""`recorder_node` executable (stub until the ROS node issue lands)."""

from __future__ import annotations

import sys

from camera_pose_ros.ros._not_built import exit_not_built


def main(argv: list[str] | None = None) -> int:
    """Entry point of `ros2 run camera_pose_ros recorder_node`."""
    return exit_not_built("recorder_node", "ROS 2 relocalization node issue")


if __name__ == "__main__":
    sys.exit(main())
