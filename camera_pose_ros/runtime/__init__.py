"""Runtime: numpy image -> pose estimate, tracking, map snapping. No ROS."""
