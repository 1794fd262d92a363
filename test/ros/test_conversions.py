"""camera_pose_ros.ros.conversions: messages built and read without a ROS graph.

Like nav2_simple_commander's helper tests: the functions take and return messages, so the
tests build messages directly; the DDS round trips are the node tests' job.
"""

from __future__ import annotations

import collections

import cv2
import numpy as np
import pytest

pytest.importorskip("rclpy")
from geometry_msgs.msg import Pose  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402

from camera_pose_ros.errors import (  # noqa: E402
    CameraModelError,
    ImageDecodeError,
    InputDataError,
)
from camera_pose_ros.geometry import (  # noqa: E402
    pose_matrix,
    quat_wxyz_from_rotmat,
    rotation_errors_deg,
    rotmat_from_quat_wxyz,
)
from camera_pose_ros.ros.conversions import (  # noqa: E402
    camera_from_info,
    floorplan_from_grid,
    image_to_rgb,
    insert_by_stamp,
    matrix_to_pose,
    ns_to_stamp,
    occupancy_grid,
    pose_stamped,
    pose_to_matrix,
    pose_with_covariance,
    stamp_to_ns,
    transform_stamped,
)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)


def _raw(encoding: str, pixels: np.ndarray, pad: int = 0) -> Image:
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)
    rows = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
    return Image(height=h, width=w, encoding=encoding, step=rows.shape[1],
                 data=rows.tobytes())


def test_raw_images_of_each_encoding_decode_to_rgb():
    np.testing.assert_array_equal(image_to_rgb(_raw("rgb8", RGB)), RGB)
    np.testing.assert_array_equal(image_to_rgb(_raw("bgr8", RGB[..., ::-1].copy())), RGB)
    np.testing.assert_array_equal(image_to_rgb(_raw("rgb8", RGB, pad=5)), RGB)  # row padding
    grey = RGB[..., 0].copy()
    np.testing.assert_array_equal(image_to_rgb(_raw("mono8", grey)), np.dstack([grey] * 3))


def test_compressed_images_decode_and_the_pixel_cap_reads_the_header():
    ok, png = cv2.imencode(".png", RGB[..., ::-1])
    assert ok
    msg = CompressedImage(format="rgb8; png compressed bgr8", data=png.tobytes())
    np.testing.assert_array_equal(image_to_rgb(msg), RGB)
    with pytest.raises(ImageDecodeError, match="larger than max_image_pixels"):
        image_to_rgb(msg, max_pixels=47)
    with pytest.raises(ImageDecodeError, match="larger than max_image_pixels"):
        image_to_rgb(_raw("rgb8", RGB), max_pixels=47)
    with pytest.raises(ImageDecodeError):
        image_to_rgb(CompressedImage(format="png", data=png.tobytes()[:20]))


def test_stamps_round_trip_through_nanoseconds():
    for ns in (0, 1, 999_999_999, 1_700_000_000_123_456_789):
        stamp = ns_to_stamp(ns)
        assert 0 <= stamp.nanosec < 10**9 and stamp_to_ns(stamp) == ns


def test_pose_messages_carry_xyzw_quaternions_and_row_major_covariance():
    q = quat_wxyz_from_rotmat(rotmat_from_quat_wxyz(np.array([0.9, 0.1, -0.3, 0.2])
                                                    / np.linalg.norm([0.9, 0.1, -0.3, 0.2])))
    cov = np.arange(36, dtype=float).reshape(6, 6)
    msg = pose_with_covariance(ns_to_stamp(5), "building", np.array([1, 2, 3]), q, cov)
    o = msg.pose.pose.orientation
    np.testing.assert_allclose([o.x, o.y, o.z, o.w], [q[1], q[2], q[3], q[0]])
    assert msg.header.frame_id == "building" and msg.pose.covariance[1] == 1.0
    assert msg.pose.covariance[6] == 6.0  # row 1, column 0
    ps = pose_stamped(ns_to_stamp(5), "building", np.array([1, 2, 3]), q)
    assert ps.pose == msg.pose.pose
    tf = transform_stamped(ns_to_stamp(5), "map", "odom", np.array([1, 2, 3]), q)
    assert (tf.header.frame_id, tf.child_frame_id) == ("map", "odom")
    assert tf.transform.rotation.w == pytest.approx(q[0])


def test_matrices_and_poses_convert_both_ways():
    rot = rotmat_from_quat_wxyz(np.array([0.5, 0.5, -0.5, 0.5]))
    m = pose_matrix(rot, np.array([4.0, -1.0, 0.5]))
    pos, q = matrix_to_pose(m)
    back = pose_to_matrix(pose_stamped(ns_to_stamp(0), "map", pos, q).pose)
    np.testing.assert_allclose(back, m, atol=1e-12)
    unnormalised = Pose()
    unnormalised.orientation.w = 1e-3  # a tiny but valid quaternion is normalised
    np.testing.assert_allclose(pose_to_matrix(unnormalised), np.eye(4), atol=1e-12)
    assert rotation_errors_deg(q[None], np.array([[0.5, 0.5, -0.5, 0.5]]))[0] < 1e-6


@pytest.mark.parametrize(("field", "value", "words"), [
    ("position.x", float("nan"), "non-finite pose"),
    ("orientation.z", float("inf"), "non-finite pose"),
    ("position.y", 1e9, "beyond"),
    ("orientation.w", 0.0, "zero length"),
])
def test_a_pose_that_is_no_pose_is_a_named_error(field, value, words):
    pose = Pose()  # identity: w = 1
    part, axis = field.split(".")
    setattr(getattr(pose, part), axis, value)
    with pytest.raises(InputDataError, match=words):
        pose_to_matrix(pose)


def test_camera_info_becomes_a_camera_or_a_named_error():
    info = CameraInfo(width=640, height=480, distortion_model="plumb_bob",
                      d=[0.1, -0.05, 0.0, 0.0, 0.0],
                      k=[500.0, 0, 319.5, 0, 501.0, 239.5, 0, 0, 1],
                      p=[480.0, 0, 320.0, 0, 0, 481.0, 240.0, 0, 0, 0, 1, 0])
    raw = camera_from_info(info, rectified=False)
    assert (raw.fx, raw.cy, raw.distortion[:2]) == (500.0, 239.5, (0.1, -0.05))
    rect = camera_from_info(info, rectified=True)  # rectified images: P, no distortion
    assert (rect.fx, rect.cx, rect.distortion) == (480.0, 320.0, ())
    with pytest.raises(CameraModelError, match="no image size"):
        camera_from_info(CameraInfo(k=info.k), rectified=False)
    bad = CameraInfo(width=640, height=480, k=[float("nan")] * 9)
    with pytest.raises(CameraModelError, match="non-finite"):
        camera_from_info(bad, rectified=False)


def test_trajectory_keeps_stamp_order_and_replaces_a_refined_frame():
    def ps(t: int, x: float):
        return pose_stamped(ns_to_stamp(t), "map", np.array([x, 0.0, 0.0]),
                            np.array([1.0, 0, 0, 0]))

    path: collections.deque = collections.deque(maxlen=4)
    for t in (10, 20, 30):
        insert_by_stamp(path, ps(t, 0.0))
    insert_by_stamp(path, ps(20, 1.0))  # refined pose of frame 20, arriving after frame 30
    insert_by_stamp(path, ps(25, 2.0))  # late, between two kept poses
    stamps = [stamp_to_ns(p.header.stamp) for p in path]
    assert stamps == [10, 20, 25, 30]
    assert [p.pose.position.x for p in path] == [0.0, 1.0, 2.0, 0.0]
    insert_by_stamp(path, ps(40, 0.0))  # full: the oldest goes
    insert_by_stamp(path, ps(5, 9.0))  # older than everything kept: dropped
    assert [p.header.stamp.nanosec for p in path] == [20, 25, 30, 40]


def test_a_diagnostics_snapshot_becomes_one_status_with_its_values_in_order():
    from diagnostic_msgs.msg import DiagnosticStatus

    from camera_pose_ros.ros.conversions import diagnostic_array
    from camera_pose_ros.runtime.diagnostics import DiagnosticsSnapshot, Level

    snap = DiagnosticsSnapshot(Level.WARN, "no images",
                               {"input_rate_hz": "0.00", "device": "cpu", "published": "7"})
    msg = diagnostic_array(ns_to_stamp(3_000_000_001), "relocalization: x", snap)
    (status,) = msg.status
    assert status.level == DiagnosticStatus.WARN and status.message == "no images"
    assert status.name == "relocalization: x" and status.hardware_id == "cpu"
    assert [(kv.key, kv.value) for kv in status.values] == list(snap.values.items())
    assert stamp_to_ns(msg.header.stamp) == 3_000_000_001


def test_an_occupancy_grid_round_trip_and_a_rotated_origin_refused():
    occ = np.full((3, 4), -1, np.int8)
    occ[1, 1:3], occ[2, 3] = 0, 100
    msg = occupancy_grid(ns_to_stamp(5), "map", occ, 0.25, (-1.0, 2.0))
    assert (msg.info.width, msg.info.height, msg.header.frame_id) == (4, 3, "map")
    plan = floorplan_from_grid(msg)
    np.testing.assert_array_equal(plan.occupancy, occ)
    assert (plan.resolution, plan.origin) == (0.25, (-1.0, 2.0))
    msg.info.origin.orientation.z, msg.info.origin.orientation.w = 0.38, 0.92
    with pytest.raises(InputDataError, match="rotated"):
        floorplan_from_grid(msg)
    msg.info.origin.orientation.z, msg.info.origin.orientation.w = 0.0, 1.0
    with pytest.raises(InputDataError, match="larger than"):
        floorplan_from_grid(msg, max_cells=11)
