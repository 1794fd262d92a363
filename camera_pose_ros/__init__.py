"""camera_pose_ros: single-image camera relocalization inside a building, for ROS 2."""

__all__ = ["__version__", "CHECKPOINT_FORMAT_VERSION"]

__version__ = "0.1.0"
#: Bumped whenever the checkpoint layout changes incompatibly.
CHECKPOINT_FORMAT_VERSION = 1
