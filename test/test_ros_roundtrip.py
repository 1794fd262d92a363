"""Real DDS round trips: sensor_msgs/Image and tf2_msgs/TFMessage between rclpy nodes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from test.conftest import wait_for

rclpy = pytest.importorskip("rclpy")
from geometry_msgs.msg import TransformStamped  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

pytestmark = pytest.mark.ros

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def _image(i: int, h: int = 480, w: int = 640) -> Image:
    msg = Image()
    msg.header.stamp.sec = 1_700_000_000 + i
    msg.header.stamp.nanosec = 123_456_789
    msg.header.frame_id = "camera_optical_frame"
    msg.height, msg.width, msg.encoding, msg.step = h, w, "rgb8", w * 3
    data = np.random.default_rng(i).integers(0, 256, size=h * w * 3, dtype=np.uint8)
    msg.data = data.tobytes()
    return msg


def test_image_round_trip_between_nodes(ros_context, spinner):
    pub_node = spinner.add(rclpy.create_node("img_pub", context=ros_context))
    sub_node = spinner.add(rclpy.create_node("img_sub", context=ros_context))
    received: list[Image] = []
    lock = threading.Lock()

    def on_image(msg: Image) -> None:
        with lock:
            received.append(msg)

    sub_node.create_subscription(Image, "camera/image_raw", on_image, RELIABLE)
    pub = pub_node.create_publisher(Image, "camera/image_raw", RELIABLE)
    assert wait_for(lambda: pub.get_subscription_count() > 0, 10), "no DDS match"
    sent = [_image(i) for i in range(20)]
    for msg in sent:  # a camera's pace (20 Hz); a burst would overrun KEEP_LAST history
        pub.publish(msg)
        time.sleep(0.05)
    assert wait_for(lambda: len(received) >= 20, 15), f"received {len(received)}/20"
    by_sec = {m.header.stamp.sec: m for m in received}
    for msg in sent:
        got = by_sec[msg.header.stamp.sec]
        assert got.header.stamp.nanosec == msg.header.stamp.nanosec
        assert (got.height, got.width, got.encoding, got.step) == (480, 640, "rgb8", 1920)
        assert bytes(got.data) == bytes(msg.data)


def test_tf_round_trip(ros_context, spinner):
    pub_node = spinner.add(rclpy.create_node("tf_pub", context=ros_context))
    sub_node = spinner.add(rclpy.create_node("tf_sub", context=ros_context))
    received: list[TFMessage] = []
    sub_node.create_subscription(TFMessage, "/tf", received.append, RELIABLE)
    pub = pub_node.create_publisher(TFMessage, "/tf", RELIABLE)
    assert wait_for(lambda: pub.get_subscription_count() > 0, 10)
    for i in range(10):
        t = TransformStamped()
        t.header.stamp.sec = 100 + i
        t.header.frame_id = "map"
        t.child_frame_id = "camera_estimate"
        t.transform.translation.x = float(i)
        t.transform.rotation.w = 1.0
        pub.publish(TFMessage(transforms=[t]))
    assert wait_for(lambda: len(received) >= 10, 10), f"received {len(received)}/10"
    xs = sorted(m.transforms[0].transform.translation.x for m in received)
    assert xs == [float(i) for i in range(10)]
    assert all(m.transforms[0].child_frame_id == "camera_estimate" for m in received)


PUBLISHER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np, rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    rclpy.init()
    node = rclpy.create_node("external_camera")
    pub = node.create_publisher(
        Image, "ext/image_raw", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    deadline = time.monotonic() + 20
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    for i in range(10):
        msg = Image()
        msg.header.stamp.sec = 42 + i
        msg.height, msg.width, msg.encoding, msg.step = 480, 640, "rgb8", 1920
        msg.data = np.full(480 * 640 * 3, i, np.uint8).tobytes()
        pub.publish(msg)
        time.sleep(0.1)
    time.sleep(1.0)
    node.destroy_node()
    rclpy.shutdown()
    """
)


def test_image_from_another_process(ros_context, spinner):
    sub_node = spinner.add(rclpy.create_node("ext_sub", context=ros_context))
    received: list[Image] = []
    sub_node.create_subscription(Image, "ext/image_raw", received.append, RELIABLE)
    proc = subprocess.Popen([sys.executable, "-c", PUBLISHER_SCRIPT])
    try:
        assert wait_for(lambda: len(received) >= 10, 30), f"received {len(received)}/10"
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert sorted(m.header.stamp.sec for m in received) == list(range(42, 52))
    assert all(bytes(m.data[:3]) == bytes([m.header.stamp.sec - 42] * 3) for m in received)


def test_trajectory_keeps_stamp_order_and_replaces_a_refined_frame():
    import collections

    from camera_pose_ros.ros.conversions import insert_by_stamp, ns_to_stamp, pose_stamped

    def ps(t: int, x: float):
        return pose_stamped(ns_to_stamp(t), "map", np.array([x, 0.0, 0.0]),
                            np.array([1.0, 0, 0, 0]))

    path: collections.deque = collections.deque(maxlen=4)
    for t in (10, 20, 30):
        insert_by_stamp(path, ps(t, 0.0))
    insert_by_stamp(path, ps(20, 1.0))  # refined pose of frame 20, arriving after frame 30
    insert_by_stamp(path, ps(25, 2.0))  # late, between two kept poses
    stamps = [p.header.stamp.sec * 10**9 + p.header.stamp.nanosec for p in path]
    assert stamps == [10, 20, 25, 30]
    assert [p.pose.position.x for p in path] == [0.0, 1.0, 2.0, 0.0]
    insert_by_stamp(path, ps(40, 0.0))  # full: the oldest goes
    insert_by_stamp(path, ps(5, 9.0))  # older than everything kept: dropped
    assert [p.header.stamp.nanosec for p in path] == [20, 25, 30, 40]
