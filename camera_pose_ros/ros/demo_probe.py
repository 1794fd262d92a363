"""The live stage of ``make demo``: relocalization_node on the query bag, over DDS.

Starts ``relocalization_node`` in a child process, plays the query bag's images into it from
a probe node at the recorded rate and collects what it publishes on
``/relocalization/pose_with_covariance``. It lives in the ROS layer (the only place for rclpy
and message packages); :mod:`camera_pose_ros.demo` imports it when the stage runs.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from camera_pose_ros.errors import CameraPoseError
from camera_pose_ros.io.bags import iter_bag_images
from camera_pose_ros.io.images import encode_raw
from camera_pose_ros.ros.conversions import ns_to_stamp, stamp_to_ns
from camera_pose_ros.ros.spin import spin_in_background

__all__ = ["run_live_node"]


def run_live_node(checkpoint: Path, query_bag: Path, floorplan: Path, device: str,
                  env: dict) -> tuple[dict[int, np.ndarray], list[float]]:
    """Start relocalization_node, play the query bag into it; poses by stamp and latencies.

    Each stamp's entry is 43 numbers: the pose (x, y, z, qw, qx, qy, qz) and the published
    6x6 covariance, row-major.
    """
    node = subprocess.Popen(
        [sys.executable, "-m", "camera_pose_ros.ros.relocalization_node", "--ros-args",
         "-r", "image:=/camera/image_raw",
         "-p", f"model_path:={checkpoint}", "-p", f"device:={device}",
         "-p", f"floorplan_yaml:={floorplan}", "-p", "max_image_age:=0.0",
         "-p", "qos_overrides./camera/image_raw.subscription.reliability:=reliable"],
        env=env, stderr=subprocess.PIPE, text=True)
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    probe = rclpy.create_node("demo_probe", context=ctx)
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    got: dict[int, np.ndarray] = {}
    sent: dict[int, float] = {}
    latency: list[float] = []
    lock = threading.Lock()

    def on_pose(msg: PoseWithCovarianceStamped) -> None:
        ns = stamp_to_ns(msg.header.stamp)
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        with lock:
            got[ns] = np.array([p.x, p.y, p.z, q.w, q.x, q.y, q.z, *msg.pose.covariance])
            if ns in sent:
                latency.append(time.perf_counter() - sent[ns])

    probe.create_subscription(PoseWithCovarianceStamped, "/relocalization/pose_with_covariance",
                              on_pose, reliable)
    pub = probe.create_publisher(Image, "/camera/image_raw", reliable)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(probe)
    th = spin_in_background(ex, ctx)
    try:
        deadline = time.monotonic() + 120
        while pub.get_subscription_count() == 0:
            if time.monotonic() > deadline or node.poll() is not None:
                raise CameraPoseError("relocalization_node did not come up")
            time.sleep(0.1)
        time.sleep(1.0)
        frames = list(iter_bag_images(query_bag))
        # play at the recorded rate (10 Hz), the query bag's own stamps on every frame
        for i, f in enumerate(frames):
            msg = Image()
            msg.header.stamp, msg.header.frame_id = ns_to_stamp(f.stamp_ns), "camera"
            data, step = encode_raw(f.image_rgb, "rgb8")
            msg.height, msg.width = f.image_rgb.shape[:2]
            msg.encoding, msg.step, msg.data = "rgb8", step, data
            with lock:
                sent[f.stamp_ns] = time.perf_counter()
            pub.publish(msg)
            if i + 1 < len(frames):
                time.sleep(max(0.0, (frames[i + 1].stamp_ns - f.stamp_ns) / 1e9))
        deadline = time.monotonic() + 30
        while len(got) < len(frames) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        ctx.shutdown()
        th.join(timeout=5)
        node.send_signal(signal.SIGINT)
        try:
            node.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
    return got, latency
