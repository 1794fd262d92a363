"""Odometry for the relocalization node: a stamped buffer and the map -> odom edge. No ROS here.

Odometry arrives on one thread and is looked up by image stamp on another, so the buffer holds
a lock. Stamps are integer nanoseconds; poses are 4x4 ``odom_from_base`` matrices.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence

import numpy as np

from camera_pose_ros.errors import ConfigError
from camera_pose_ros.geometry import invert_pose, pose_matrix, rotmat_from_quat_wxyz

__all__ = ["OdometryBuffer", "base_from_camera", "map_from_odom"]


class OdometryBuffer:
    """The last ``maxlen`` odometry poses, looked up by the stamp nearest an image's (thread-safe).

    Args:
        maxlen: poses kept (the oldest go first).
    """

    def __init__(self, maxlen: int = 400) -> None:
        self._lock = threading.Lock()
        self._poses: collections.deque[tuple[int, np.ndarray]] = collections.deque(
            maxlen=maxlen)

    def __len__(self) -> int:
        with self._lock:
            return len(self._poses)

    def add(self, stamp_ns: int, odom_from_base: np.ndarray) -> None:
        """Keep one pose (a 4x4 matrix) stamped ``stamp_ns``."""
        with self._lock:
            self._poses.append((int(stamp_ns), odom_from_base))

    def nearest(self, stamp_ns: int, max_age_s: float) -> np.ndarray | None:
        """The pose stamped nearest ``stamp_ns``, or None when none is within ``max_age_s``."""
        with self._lock:
            if not self._poses:
                return None
            stamp, pose = min(self._poses, key=lambda item: abs(item[0] - stamp_ns))
        return pose if abs(stamp - stamp_ns) / 1e9 <= max_age_s else None


def base_from_camera(values: Sequence[float]) -> np.ndarray:
    """The 4x4 ``base_from_cam`` of the ``base_to_camera`` parameter (x y z qx qy qz qw).

    Raises:
        ConfigError: not 7 finite numbers, or a quaternion of zero length.
    """
    e = np.array(values, dtype=float)
    if e.shape != (7,) or not np.all(np.isfinite(e)) or np.linalg.norm(e[3:]) < 1e-6:
        raise ConfigError(f"base_to_camera must be 7 finite numbers x y z qx qy qz qw "
                          f"with a non-zero quaternion, got {e.tolist()}")
    q_wxyz = np.array([e[6], e[3], e[4], e[5]]) / np.linalg.norm(e[3:])
    return pose_matrix(rotmat_from_quat_wxyz(q_wxyz), e[:3])


def map_from_odom(map_from_cam: np.ndarray, base_from_cam: np.ndarray,
                  odom_from_base: np.ndarray) -> np.ndarray:
    """The map -> odom transform that puts the camera where the estimate says.

    ``map_from_odom @ odom_from_base @ base_from_cam == map_from_cam``.
    """
    return map_from_cam @ invert_pose(base_from_cam) @ invert_pose(odom_from_base)
