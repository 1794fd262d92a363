"""Conversions between ROS messages and numpy (the only place that knows both)."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import (
    Pose,
    PoseStamped,
    PoseWithCovarianceStamped,
    TransformStamped,
)
from nav_msgs.msg import OccupancyGrid
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.errors import CameraModelError, ImageDecodeError, InputDataError
from camera_pose_ros.geometry import quat_wxyz_to_xyzw, quat_xyzw_to_wxyz
from camera_pose_ros.io.floorplan import FloorPlan
from camera_pose_ros.io.images import (
    compressed_image_size,
    decode_compressed,
    decode_raw,
)

if TYPE_CHECKING:  # runtime.diagnostics loads the model code: only its type is needed here
    from camera_pose_ros.runtime.diagnostics import DiagnosticsSnapshot

__all__ = [
    "image_to_rgb",
    "compressed_image_size",
    "camera_from_info",
    "stamp_to_ns",
    "ns_to_stamp",
    "pose_msg",
    "pose_stamped",
    "pose_with_covariance",
    "transform_stamped",
    "pose_to_matrix",
    "matrix_to_pose",
    "diagnostic_array",
    "floorplan_from_grid",
    "occupancy_grid",
]


def image_to_rgb(msg: Image | CompressedImage, max_pixels: int | None = None) -> np.ndarray:
    """RGB uint8 array of an Image or CompressedImage (raises ImageDecodeError).

    ``max_pixels``: an image with more pixels is refused before anything is decoded (a
    compressed one by its PNG/JPEG header, so a small stream that expands to gigabytes never
    allocates them).
    """
    if isinstance(msg, CompressedImage):
        data = bytes(msg.data)
        if max_pixels is not None:
            _check_pixels(*compressed_image_size(data), max_pixels)
        return decode_compressed(data, msg.format)
    if max_pixels is not None:
        _check_pixels(int(msg.width), int(msg.height), max_pixels)
    return decode_raw(msg.data, width=msg.width, height=msg.height, encoding=msg.encoding,
                      step=msg.step)


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageDecodeError(f"image of {width}x{height} pixels is larger than "
                               f"max_image_pixels ({max_pixels})")


def stamp_to_ns(stamp: Time) -> int:
    """Nanoseconds of a builtin_interfaces/Time."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    """builtin_interfaces/Time of nanoseconds."""
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def pose_msg(position: np.ndarray, quat_wxyz: np.ndarray) -> Pose:
    """geometry_msgs/Pose (quaternion reordered to x, y, z, w)."""
    p = Pose()
    p.position.x, p.position.y, p.position.z = (float(v) for v in position)
    x, y, z, w = (float(v) for v in quat_wxyz_to_xyzw(np.asarray(quat_wxyz, float)))
    p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = x, y, z, w
    return p


def pose_stamped(stamp: Time, frame: str, position: np.ndarray, quat_wxyz: np.ndarray
                 ) -> PoseStamped:
    """PoseStamped in ``frame``."""
    msg = PoseStamped()
    msg.header.stamp, msg.header.frame_id = stamp, frame
    msg.pose = pose_msg(position, quat_wxyz)
    return msg


def pose_with_covariance(stamp: Time, frame: str, position: np.ndarray, quat_wxyz: np.ndarray,
                         cov_66: np.ndarray) -> PoseWithCovarianceStamped:
    """PoseWithCovarianceStamped with the 6x6 covariance in REP 103 order, row major."""
    msg = PoseWithCovarianceStamped()
    msg.header.stamp, msg.header.frame_id = stamp, frame
    msg.pose.pose = pose_msg(position, quat_wxyz)
    msg.pose.covariance = [float(v) for v in np.asarray(cov_66, float).reshape(36)]
    return msg


def transform_stamped(stamp: Time, parent: str, child: str, position: np.ndarray,
                      quat_wxyz: np.ndarray) -> TransformStamped:
    """TransformStamped ``parent -> child`` (child's pose in parent)."""
    t = TransformStamped()
    t.header.stamp, t.header.frame_id, t.child_frame_id = stamp, parent, child
    t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = (
        float(v) for v in position)
    x, y, z, w = (float(v) for v in quat_wxyz_to_xyzw(np.asarray(quat_wxyz, float)))
    t.transform.rotation.x, t.transform.rotation.y = x, y
    t.transform.rotation.z, t.transform.rotation.w = z, w
    return t


def pose_to_matrix(pose: Pose, max_abs: float = 1e8) -> np.ndarray:
    """4x4 matrix of a geometry_msgs/Pose (the quaternion is normalised).

    Raises:
        InputDataError: a non-finite position or quaternion, a coordinate beyond ``max_abs``
            metres, or a quaternion of zero length.
    """
    from camera_pose_ros.geometry import pose_matrix, rotmat_from_quat_wxyz

    q = quat_xyzw_to_wxyz(np.array([pose.orientation.x, pose.orientation.y,
                                    pose.orientation.z, pose.orientation.w]))
    t = np.array([pose.position.x, pose.position.y, pose.position.z])
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(t))):
        raise InputDataError(f"non-finite pose (position {t}, quaternion wxyz {q})")
    if np.abs(t).max() > max_abs:
        raise InputDataError(f"position {t} is beyond {max_abs:g} m")
    scale = float(np.abs(q).max())  # normalise without overflow
    if scale < 1e-9:
        raise InputDataError(f"quaternion {q} (wxyz) of zero length is not a rotation")
    q = q / scale
    return pose_matrix(rotmat_from_quat_wxyz(q / np.linalg.norm(q)), t)


def camera_from_info(msg: CameraInfo, rectified: bool) -> PinholeCamera:
    """The camera of a ``sensor_msgs/CameraInfo`` (see ``PinholeCamera.from_camera_info``).

    Raises:
        CameraModelError: zero size, non-finite K, D or P, or what ``from_camera_info``
            refuses.
    """
    if msg.width <= 0 or msg.height <= 0:
        raise CameraModelError(f"CameraInfo has no image size ({msg.width}x{msg.height})")
    for name in ("k", "d", "p"):
        values = np.asarray(getattr(msg, name), dtype=float)
        if not np.all(np.isfinite(values)):
            raise CameraModelError(f"CameraInfo {name.upper()} has non-finite values "
                             f"{values.tolist()}")
    return PinholeCamera.from_camera_info(msg.width, msg.height, msg.k, msg.d,
                                          msg.distortion_model, msg.p, rectified)


def matrix_to_pose(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position and scalar-first quaternion of a 4x4 matrix."""
    from camera_pose_ros.geometry import quat_wxyz_from_rotmat

    return m[:3, 3].copy(), quat_wxyz_from_rotmat(m[:3, :3])


def insert_by_stamp(poses: collections.deque, pose: PoseStamped) -> None:
    """Put ``pose`` into a bounded trajectory in stamp order, replacing one of the same stamp.

    A refined pose arrives after later regressed ones and supersedes the regressed pose of
    its own image; a pose older than everything a full deque keeps is dropped.
    """
    key = stamp_to_ns(pose.header.stamp)
    i = len(poses)
    while i > 0 and stamp_to_ns(poses[i - 1].header.stamp) > key:
        i -= 1
    if i > 0 and stamp_to_ns(poses[i - 1].header.stamp) == key:
        poses[i - 1] = pose
        return
    if poses.maxlen is not None and len(poses) == poses.maxlen:
        if i == 0:
            return
        poses.popleft()
        i -= 1
    poses.insert(i, pose)


def diagnostic_array(stamp: Time, name: str, snapshot: DiagnosticsSnapshot) -> DiagnosticArray:
    """DiagnosticArray of one status (``hardware_id``: the snapshot's ``device`` value)."""
    status = DiagnosticStatus(
        level=bytes([int(snapshot.level)]), name=name, message=snapshot.message,
        hardware_id=snapshot.values.get("device", ""),
        values=[KeyValue(key=k, value=v) for k, v in snapshot.values.items()])
    msg = DiagnosticArray(status=[status])
    msg.header.stamp = stamp
    return msg


def floorplan_from_grid(msg: OccupancyGrid, max_cells: int = 100_000_000) -> FloorPlan:
    """The floor plan of an OccupancyGrid (see ``FloorPlan.from_grid``).

    Raises:
        InputDataError: what ``FloorPlan.from_grid`` refuses, or a rotated origin (a
            quaternion other than a yaw of 0).
    """
    info, q = msg.info, msg.info.origin.orientation
    if not (abs(q.x) < 1e-6 and abs(q.y) < 1e-6 and abs(q.z) < 1e-6):
        raise InputDataError(f"occupancy grid origin is rotated (quaternion xyzw {q.x}, "
                             f"{q.y}, {q.z}, {q.w}): not supported")
    return FloorPlan.from_grid(msg.data, info.width, info.height, info.resolution,
                               (info.origin.position.x, info.origin.position.y), max_cells)


def occupancy_grid(stamp: Time, frame: str, grid_HW: np.ndarray, resolution: float,
                   origin_xy: tuple[float, float]) -> OccupancyGrid:
    """An OccupancyGrid of int8 cells (row 0 at ``origin_xy``), unrotated."""
    import array

    msg = OccupancyGrid()
    msg.header.stamp, msg.header.frame_id = stamp, frame
    h, w = grid_HW.shape
    msg.info.map_load_time = stamp
    msg.info.resolution, msg.info.width, msg.info.height = float(resolution), int(w), int(h)
    msg.info.origin.position.x, msg.info.origin.position.y = (float(v) for v in origin_xy)
    msg.info.origin.orientation.w = 1.0
    msg.data = array.array("b", np.ascontiguousarray(grid_HW, np.int8).tobytes())
    return msg
