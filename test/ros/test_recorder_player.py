"""recorder_node writes a valid bag (also when stopped with Ctrl-C); bag_player replays one."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.errors import BagError
from camera_pose_ros.io.bags import BagImageWriter, iter_bag_images, list_topics
from test.conftest import wait_for

rclpy = pytest.importorskip("rclpy")
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from camera_pose_ros.ros.bag_player import play  # noqa: E402
from camera_pose_ros.ros.recorder_node import RecorderNode  # noqa: E402

pytestmark = pytest.mark.ros
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
CAM = PinholeCamera(32, 24, 30.0, 30.0, 15.5, 11.5)


def img(i: int) -> Image:
    m = Image()
    m.header.stamp.sec = 100 + i
    m.height, m.width, m.encoding, m.step = 24, 32, "rgb8", 96
    m.data = np.full(24 * 96, i, np.uint8).tobytes()
    return m


def test_record_and_read_back(ros_context, spinner, tmp_path):
    out = tmp_path / "rec"
    helper = spinner.add(rclpy.create_node("cam", context=ros_context))
    pub = helper.create_publisher(Image, "/camera/image_raw", RELIABLE)
    info = helper.create_publisher(CameraInfo, "/camera/camera_info", RELIABLE)
    rec = spinner.add(RecorderNode(context=ros_context, parameter_overrides=[
        Parameter("output", value=str(out))]))
    assert wait_for(lambda: pub.get_subscription_count() > 0
                    and info.get_subscription_count() > 0, 15)
    for i in range(10):
        pub.publish(img(i))
        info.publish(CameraInfo(width=32, height=24))
        time.sleep(0.05)
    assert wait_for(lambda: rec.counts.get("/camera/image_raw", 0) == 10, 10)
    rec.close()
    assert list_topics(out) == {"/camera/image_raw": "sensor_msgs/msg/Image",
                                "/camera/camera_info": "sensor_msgs/msg/CameraInfo"}
    frames = list(iter_bag_images(out))
    assert [f.stamp_ns // 10**9 for f in frames] == list(range(100, 110))
    assert all(int(f.image_rgb[0, 0, 0]) == i for i, f in enumerate(frames))


def test_keyframe_throttling_and_splitting(ros_context, spinner, tmp_path):
    out = tmp_path / "rec"
    helper = spinner.add(rclpy.create_node("cam2", context=ros_context))
    pub = helper.create_publisher(Image, "/camera/image_raw", RELIABLE)
    rec = spinner.add(RecorderNode(context=ros_context, parameter_overrides=[
        Parameter("output", value=str(out)), Parameter("topics", value=["/camera/image_raw"]),
        Parameter("min_interval", value=0.25), Parameter("max_bag_size_mb", value=0.005)]))
    assert wait_for(lambda: pub.get_subscription_count() > 0, 15)
    for i in range(20):  # 20 frames at 20 Hz over 1 s; keep at most one per 0.25 s
        pub.publish(img(i))
        time.sleep(0.05)
    time.sleep(0.5)
    rec.close()
    kept = sum(len(list(iter_bag_images(b))) for b in rec.bags)
    assert 3 <= kept <= 6, kept
    assert len(rec.bags) >= 2  # 2.3 kB frames, 5 kB per bag: split
    assert all((b / "metadata.yaml").exists() for b in rec.bags)


RECORDER = (
    "import sys; from camera_pose_ros.ros.recorder_node import main; "
    "sys.exit(main(sys.argv))"
)


def test_recorder_bag_is_valid_after_ctrl_c(ros_context, spinner, tmp_path):
    out = tmp_path / "rec"
    proc = subprocess.Popen([sys.executable, "-c", RECORDER, "--ros-args", "-p",
                             f"output:={out}"], stderr=subprocess.PIPE, text=True)
    helper = spinner.add(rclpy.create_node("cam3", context=ros_context))
    pub = helper.create_publisher(Image, "/camera/image_raw", RELIABLE)
    try:
        assert wait_for(lambda: pub.get_subscription_count() > 0, 30), "recorder not up"
        for i in range(5):
            pub.publish(img(i))
            time.sleep(0.1)
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert len(list(iter_bag_images(out))) == 5


def test_bag_player_replays_a_bag(ros_context, spinner, tmp_path, venv_bin):
    bag = tmp_path / "bag"
    with BagImageWriter(bag) as w:
        for i in range(8):
            w.write(10**18 + i * 50_000_000, np.full((24, 32, 3), i, np.uint8), CAM)
    helper = spinner.add(rclpy.create_node("viewer", context=ros_context))
    got: list[Image] = []
    helper.create_subscription(Image, "/camera/image_raw", got.append, RELIABLE)
    proc = subprocess.run([str(venv_bin / "bag_player"), str(bag), "--rate", "2.0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert wait_for(lambda: len(got) == 8, 10), len(got)
    assert [m.header.stamp.nanosec for m in got] == [i * 50_000_000 for i in range(8)]
    # in-process API with a topic filter
    node = spinner.add(rclpy.create_node("player", context=ros_context))
    with pytest.raises(BagError, match="none of the topics"):
        play(node, bag, topics=["/nope"])
    missing = subprocess.run([str(venv_bin / "bag_player"), str(tmp_path / "none")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "bag not found" in missing.stderr
