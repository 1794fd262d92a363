"""The synthetic building's camera as a ground robot's: ``/tf``, ``/tf_static``, ``/amcl_pose``.

A mapping walk recorded on a robot carries the robot's own localization: odometry publishes
``odom -> base_link`` (smooth, drifting), AMCL publishes ``map -> odom`` (corrections that
keep ``map -> base_link`` near the truth, noisy, sometimes jumping) and ``/amcl_pose``, and
the URDF gives ``base_link -> camera_optical_frame`` on ``/tf_static``. This module makes
those messages from the walk's true camera poses, so the dataset builder can align to the
map without control points and be measured against the truth.

The model (all figures are :class:`RobotSpec` fields):

- the base is the camera's ground projection: at its x, y minus the mount's forward offset,
  z = 0, heading the camera's heading, no roll or pitch. The camera's own pitch and height
  bob (the walk's footsteps) are not in the extrinsic: they are unmodelled motion, as a
  wobbly mount or suspension would be;
- odometry integrates the true base motion with a scale error and a heading-rate error
  (so it drifts), sampled at ``tf_rate_hz``;
- AMCL updates at ``amcl_rate_hz`` with a time-correlated error (``position_sigma``,
  ``yaw_sigma_deg``), and in ``jumps`` episodes of ``jump_duration`` seconds it is
  ``jump_distance`` metres off (a wrong relocalization) while claiming the same covariance.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from camera_pose_ros.errors import ConfigError
from camera_pose_ros.io.bags import TYPESTORE, ros_header

__all__ = ["RobotSpec", "BASE_FROM_CAMERA", "robot_messages", "base_from_camera"]

TF = "tf2_msgs/msg/TFMessage"
POSE_COV = "geometry_msgs/msg/PoseWithCovarianceStamped"
_T = TYPESTORE.types

#: optical frame (x right, y down, z forward) in a REP 103 base frame (x forward, z up)
_OPTICAL_IN_BASE = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class RobotSpec:
    """How the synthetic robot localizes itself; lengths in metres, angles in degrees."""

    mount_forward: float = 0.10
    mount_height: float = 1.5
    tf_rate_hz: float = 30.0
    amcl_rate_hz: float = 2.0
    odom_scale_error: float = 0.01
    odom_yaw_rate_error: float = 0.01
    position_sigma: float = 0.05
    yaw_sigma_deg: float = 1.0
    correlation_s: float = 1.0
    jumps: int = 3
    jump_distance: float = 1.0
    jump_duration: float = 1.0
    map_frame: str = "map"
    odom_frame: str = "odom"
    base_frame: str = "base_link"
    camera_frame: str = "camera_optical_frame"

    def __post_init__(self) -> None:
        if min(self.tf_rate_hz, self.amcl_rate_hz) <= 0 or self.jumps < 0:
            raise ConfigError("robot rates must be positive and jumps non-negative")


def base_from_camera(spec: RobotSpec = RobotSpec()) -> np.ndarray:
    """The mount: ``base_from_cam`` (4x4)."""
    m = np.eye(4)
    m[:3, :3] = _OPTICAL_IN_BASE
    m[:3, 3] = [spec.mount_forward, 0.0, spec.mount_height]
    return m


BASE_FROM_CAMERA = base_from_camera()


def _planar(x: float, y: float, yaw: float) -> np.ndarray:
    m = np.eye(4)
    c, s = math.cos(yaw), math.sin(yaw)
    m[:2, :2] = [[c, -s], [s, c]]
    m[:2, 3] = [x, y]
    return m


def _xyyaw(m: np.ndarray) -> tuple[float, float, float]:
    return float(m[0, 3]), float(m[1, 3]), math.atan2(m[1, 0], m[0, 0])


def _transform(stamp_ns: int, parent: str, child: str, m: np.ndarray) -> Any:
    q = Rotation.from_matrix(m[:3, :3]).as_quat()
    return _T["geometry_msgs/msg/TransformStamped"](
        header=ros_header(stamp_ns, parent), child_frame_id=child,
        transform=_T["geometry_msgs/msg/Transform"](
            translation=_T["geometry_msgs/msg/Vector3"](x=float(m[0, 3]), y=float(m[1, 3]),
                                                        z=float(m[2, 3])),
            rotation=_T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3])))


def _tf(*transforms: Any) -> Any:
    return _T[TF](transforms=list(transforms))


def _amcl_pose(stamp_ns: int, frame: str, m: np.ndarray, cov: np.ndarray) -> Any:
    q = Rotation.from_matrix(m[:3, :3]).as_quat()
    pose = _T["geometry_msgs/msg/Pose"](
        position=_T["geometry_msgs/msg/Point"](x=float(m[0, 3]), y=float(m[1, 3]),
                                               z=float(m[2, 3])),
        orientation=_T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]))
    return _T[POSE_COV](header=ros_header(stamp_ns, frame),
                        pose=_T["geometry_msgs/msg/PoseWithCovariance"](
                            pose=pose, covariance=cov.reshape(-1)))


def _true_base(stamps_ns: np.ndarray, map_from_cam: list[np.ndarray], spec: RobotSpec,
               at_ns: np.ndarray) -> np.ndarray:
    """True (x, y, yaw) of the base at ``at_ns``, interpolated between the frames."""
    xyyaw = []
    for pose in map_from_cam:
        fwd = pose[:3, 2]
        yaw = math.atan2(fwd[1], fwd[0])
        xyyaw.append((pose[0, 3] - spec.mount_forward * math.cos(yaw),
                      pose[1, 3] - spec.mount_forward * math.sin(yaw), yaw))
    arr = np.array(xyyaw)
    arr[:, 2] = np.unwrap(arr[:, 2])
    t = np.clip(at_ns, stamps_ns[0], stamps_ns[-1]).astype(float)
    return np.stack([np.interp(t, stamps_ns.astype(float), arr[:, k]) for k in range(3)], 1)


def robot_messages(stamps_ns: list[int], map_from_cam: list[np.ndarray],
                   rng: np.random.Generator, spec: RobotSpec = RobotSpec()
                   ) -> Iterator[tuple[str, str, int, Any, bool]]:
    """``(topic, msgtype, stamp_ns, message, latched)`` of the robot's localization, in
    time order, over the span of the frames (from the first to just past the last).
    """
    st = np.asarray(stamps_ns, dtype=np.int64)
    dt_ns = int(round(1e9 / spec.tf_rate_hz))
    t_tf = np.arange(st[0], st[-1] + dt_ns, dt_ns, dtype=np.int64)
    truth = _true_base(st, map_from_cam, spec, t_tf)
    yield ("/tf_static", TF, int(t_tf[0]),
           _tf(_transform(int(t_tf[0]), spec.base_frame, spec.camera_frame,
                          base_from_camera(spec))), True)
    # odometry: true increments in the base frame, scaled and turned a little wrong
    odom = [np.eye(4)]
    for k in range(1, len(t_tf)):
        a, b = _planar(*truth[k - 1]), _planar(*truth[k])
        dx, dy, dyaw = _xyyaw(np.linalg.inv(a) @ b)
        s = 1.0 + spec.odom_scale_error
        odom.append(odom[-1] @ _planar(s * dx, s * dy, dyaw * (1.0 + spec.odom_yaw_rate_error)))
    # AMCL: a correlated error (AR(1)) at each update, and a few jumps
    period = 1.0 / spec.amcl_rate_hz
    rho = math.exp(-period / spec.correlation_s)
    sig = np.array([spec.position_sigma, spec.position_sigma, math.radians(spec.yaw_sigma_deg)])
    updates = np.flatnonzero(np.diff(np.floor((t_tf - t_tf[0]) / 1e9 / period),
                                     prepend=-1) > 0)
    jump_at = set()
    if spec.jumps and len(updates) > 8:
        starts = rng.choice(np.arange(2, len(updates) - 2), size=min(spec.jumps,
                                                                      len(updates) - 4),
                            replace=False)
        length = max(1, int(round(spec.jump_duration / period)))
        for j in starts:
            direction = rng.uniform(0, 2 * math.pi)
            for u in range(j, min(len(updates), j + length)):
                jump_at.add((u, direction))
    jump_dir = dict(jump_at)
    err = rng.normal(0, 1, 3) * sig
    cov = np.zeros((6, 6))
    cov[0, 0] = cov[1, 1] = spec.position_sigma**2
    cov[5, 5] = math.radians(spec.yaw_sigma_deg) ** 2
    map_from_odom = None
    next_update = 0
    for k, t in enumerate(t_tf):
        t = int(t)
        if next_update < len(updates) and k == updates[next_update]:
            err = rho * err + math.sqrt(1 - rho**2) * rng.normal(0, 1, 3) * sig
            x, y, yaw = truth[k] + err
            if next_update in jump_dir:
                d = jump_dir[next_update]
                x += spec.jump_distance * math.cos(d)
                y += spec.jump_distance * math.sin(d)
                yaw += math.radians(5.0)
            estimate = _planar(x, y, yaw)
            map_from_odom = estimate @ np.linalg.inv(odom[k])
            yield ("/amcl_pose", POSE_COV, t, _amcl_pose(t, spec.map_frame, estimate, cov),
                   False)
            next_update += 1
        transforms = [_transform(t, spec.odom_frame, spec.base_frame, odom[k])]
        if map_from_odom is not None:
            transforms.insert(0, _transform(t, spec.map_frame, spec.odom_frame, map_from_odom))
        yield "/tf", TF, t, _tf(*transforms), False
