"""dashboard_node over real DDS: what the relocalization node publishes reaches the live state."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from test.conftest import wait_for

rclpy = pytest.importorskip("rclpy")
from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue  # noqa: E402
from geometry_msgs.msg import PoseWithCovarianceStamped  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from camera_pose_ros.io.images import encode_raw  # noqa: E402
from camera_pose_ros.ros.dashboard_node import DashboardNode  # noqa: E402

pytestmark = pytest.mark.ros
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def pose_msg(stamp_ns: int, x: float, y: float, sigma: float = 0.2
             ) -> PoseWithCovarianceStamped:
    msg = PoseWithCovarianceStamped()
    msg.header.stamp = Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
    msg.header.frame_id = "map"
    msg.pose.pose.position.x, msg.pose.pose.position.y, msg.pose.pose.position.z = x, y, 1.5
    msg.pose.pose.orientation.w = 1.0
    cov = np.diag([sigma**2, (sigma / 2) ** 2, 0.01, 1e-3, 1e-3, 1e-3])
    msg.pose.covariance = cov.reshape(-1).tolist()
    return msg


def test_dashboard_node_feeds_the_live_page_from_the_relocalization_topics(
        ros_context, spinner):
    node = spinner.add(DashboardNode(context=ros_context, parameter_overrides=[
        Parameter("image_period", value=0.01), Parameter("image_width", value=160),
        Parameter("stale_after", value=30.0),
        Parameter("qos_overrides./image.subscription.reliability", value="reliable")]))
    helper = spinner.add(rclpy.create_node("fake_relocalization", context=ros_context))
    live = node.live
    assert live.source == "/relocalization"
    status = live.status()
    assert status["state"] == "waiting" and "/relocalization" in status["message"]
    pub = helper.create_publisher(PoseWithCovarianceStamped,
                                  "/relocalization/pose_with_covariance", RELIABLE)
    refined = helper.create_publisher(PoseWithCovarianceStamped,
                                      "/relocalization/pose_refined", RELIABLE)
    diag = helper.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE)
    image = helper.create_publisher(Image, "/image", RELIABLE)
    assert wait_for(lambda: min(p.get_subscription_count() for p in (pub, refined, diag, image))
                    > 0, 20), "dashboard_node did not subscribe"

    pub.publish(pose_msg(10**18, 2.0, 3.0))
    assert wait_for(lambda: live.snapshot()["pose"] is not None, 10)
    pose = live.snapshot()["pose"]
    assert (pose["x"], pose["y"], pose["kind"]) == (2.0, 3.0, "regressed")
    assert pose["ellipse"]["a"] == pytest.approx(0.2) and pose["stamp_ns"] == str(10**18)
    assert live.status()["state"] == "live"

    refined.publish(pose_msg(10**18, 2.1, 3.1, 0.02))  # the refined pose of the same image
    assert wait_for(lambda: live.snapshot()["pose"]["kind"] == "refined", 10)
    pub.publish(pose_msg(10**18, 2.1, 3.1, 0.02))  # ... repeated on pose_with_covariance
    pub.publish(pose_msg(10**18 + 10**8, 2.5, 3.0))
    assert wait_for(lambda: len(live.snapshot()["path"]) == 2, 10)
    snap = live.snapshot()
    assert [(p["kind"], p["x"]) for p in snap["path"]] == [("refined", 2.1), ("regressed", 2.5)]
    assert snap["counts"]["repeats"] == 1

    status_msg = DiagnosticStatus(name="relocalization: relocalization", message="localizing",
                                  values=[KeyValue(key="inference_ms_p50", value="27.5"),
                                          KeyValue(key="dropped_stale", value="3")])
    other = DiagnosticStatus(name="camera_driver: usb", message="hot")
    diag.publish(DiagnosticArray(status=[other, status_msg]))
    assert wait_for(lambda: live.snapshot()["diagnostics"] is not None, 10)
    d = live.snapshot()["diagnostics"]
    assert d["message"] == "localizing" and d["values"]["inference_ms_p50"] == "27.5"

    bad = Image(height=240, width=320, encoding="rgb8", step=100, data=bytes(100 * 240))
    image.publish(bad)  # step shorter than a row: logged, counted, dropped
    assert wait_for(lambda: node.counts["bad_messages"] == 1, 10)
    rgb = np.zeros((240, 320, 3), np.uint8)
    rgb[:, :160] = (255, 0, 0)
    data, step = encode_raw(rgb, "rgb8")
    time.sleep(0.05)
    image.publish(Image(height=240, width=320, encoding="rgb8", step=step, data=data))
    assert wait_for(lambda: live.image() is not None, 10)
    jpeg = cv2.imdecode(np.frombuffer(live.image()[0], np.uint8), cv2.IMREAD_COLOR)
    assert jpeg.shape == (120, 160, 3)  # downscaled to image_width
    assert jpeg[60, 40, 2] > 200 and jpeg[60, 120, 2] < 50  # red left half (BGR)
    pub.publish(pose_msg(10**18 + 2 * 10**8, 2.7, 3.0))  # still alive after the bad image
    assert wait_for(lambda: live.snapshot()["pose"]["x"] == 2.7, 10)
