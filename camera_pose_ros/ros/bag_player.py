"""`bag_player` executable (stub until the ROS node issue lands)."""

from __future__ import annotations

import sys

from camera_pose_ros.ros._not_built import exit_not_built


def main(argv: list[str] | None = None) -> int:
    """Entry point of `ros2 run camera_pose_ros bag_player`."""
    return exit_not_built("bag_player", "ROS 2 relocalization node issue")


if __name__ == "__main__":
    sys.exit(main())
