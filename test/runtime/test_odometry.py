"""camera_pose_ros.runtime.odometry: lookup by stamp across threads, extrinsics, map -> odom."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from camera_pose_ros.errors import ConfigError
from camera_pose_ros.geometry import pose_matrix, rotmat_from_quat_wxyz
from camera_pose_ros.runtime.odometry import OdometryBuffer, base_from_camera, map_from_odom

S = 1_000_000_000  # nanoseconds per second


def yaw(deg: float, xyz=(0.0, 0.0, 0.0)) -> np.ndarray:
    """A pose rotated ``deg`` about z, at ``xyz``."""
    half = np.radians(deg) / 2
    return pose_matrix(rotmat_from_quat_wxyz([np.cos(half), 0.0, 0.0, np.sin(half)]), xyz)


def test_nearest_pose_within_max_age():
    buf = OdometryBuffer()
    assert buf.nearest(5 * S, 1.0) is None  # empty
    for i in range(5):
        buf.add(i * S, yaw(0, (i, 0, 0)))
    assert buf.nearest(2 * S + S // 10, 0.2)[0, 3] == 2.0  # 0.1 s after the third
    assert buf.nearest(3 * S - S // 10, 0.2)[0, 3] == 3.0  # nearer the fourth
    assert buf.nearest(2 * S + S // 2 + 1, 0.2) is None  # 0.5 s from both neighbours
    assert buf.nearest(10 * S, 0.2) is None and buf.nearest(10 * S, 6.0)[0, 3] == 4.0


def test_the_oldest_poses_go_first():
    buf = OdometryBuffer(maxlen=3)
    for i in range(5):
        buf.add(i * S, yaw(0, (i, 0, 0)))
    assert len(buf) == 3
    assert buf.nearest(0, 1.5) is None  # stamps 0 and 1 were dropped
    assert buf.nearest(0, 2.5)[0, 3] == 2.0


def test_lookups_while_another_thread_adds():
    """An unlocked deque raises 'deque mutated during iteration' here."""
    buf = OdometryBuffer(maxlen=400)
    buf.add(0, yaw(0))
    stop = threading.Event()
    errors: list[BaseException] = []
    added = [0]

    def writer() -> None:
        try:
            while not stop.is_set() and added[0] < 100_000:
                added[0] += 1
                buf.add(added[0] * 1000, yaw(0, (added[0], 0, 0)))
        except BaseException as exc:  # pragma: no cover -- reported below
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: mid-iteration, as under load
    thread = threading.Thread(target=writer)
    try:
        thread.start()
        for lookup in range(2000):  # a bounded amount of work, whoever the scheduler favours
            pose = buf.nearest(lookup * 1000, 1e9)  # any pose within a second
            assert pose is not None and pose.shape == (4, 4)
    finally:
        stop.set()
        thread.join(10)
        sys.setswitchinterval(interval)
    assert errors == [] and added[0] > 0
    assert buf.nearest(added[0] * 1000, 0.0)[0, 3] == added[0]


def test_base_from_camera_default_looks_along_base_x():
    base_from_cam = base_from_camera([0.1, 0.0, 0.5, -0.5, 0.5, -0.5, 0.5])
    rot = base_from_cam[:3, :3]
    # optical frame: z forward -> base x, x right -> base -y, y down -> base -z
    assert np.allclose(rot @ [0, 0, 1], [1, 0, 0])
    assert np.allclose(rot @ [1, 0, 0], [0, -1, 0])
    assert np.allclose(rot @ [0, 1, 0], [0, 0, -1])
    assert np.allclose(base_from_cam[:3, 3], [0.1, 0.0, 0.5])
    # a quaternion that is not unit length is normalised
    assert np.allclose(base_from_camera([0, 0, 0, 0, 0, 0, 2.0]), np.eye(4))


@pytest.mark.parametrize("values", [[0.0, 0.0, 1.0], [0, 0, np.nan, 0, 0, 0, 1],
                                    [0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1, 0]])
def test_base_from_camera_refuses_unusable_extrinsics(values):
    with pytest.raises(ConfigError, match="base_to_camera must be 7 finite numbers"):
        base_from_camera(values)


def test_map_from_odom_against_a_hand_built_transform():
    # odometry: the base 3 m along odom x; camera at the base origin, axes as the base's;
    # the estimate: camera at (1, 5, 0) in the map, turned 90 degrees. So the odom frame is
    # turned 90 degrees in the map and starts at (1, 5, 0) - R90 (3, 0, 0) = (1, 2, 0).
    odom_from_base = yaw(0, (3.0, 0.0, 0.0))
    map_from_cam = yaw(90, (1.0, 5.0, 0.0))
    m = map_from_odom(map_from_cam, np.eye(4), odom_from_base)
    assert np.allclose(m, yaw(90, (1.0, 2.0, 0.0)))
    # with an extrinsic and arbitrary poses the chain closes
    base_from_cam = base_from_camera([0.2, -0.1, 0.4, -0.5, 0.5, -0.5, 0.5])
    odom_from_base = yaw(-35, (4.0, -2.0, 0.0))
    map_from_cam = yaw(120, (7.0, 1.0, 1.2)) @ base_from_cam
    m = map_from_odom(map_from_cam, base_from_cam, odom_from_base)
    assert np.allclose(m @ odom_from_base @ base_from_cam, map_from_cam)
