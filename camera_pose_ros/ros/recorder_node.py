"""recorder_node: record camera topics to a ROS 2 bag (MCAP by default) through rosbags.

Messages are written as they arrive on the wire (raw serialized CDR: no deserialisation
cost). Image topics can be throttled to keyframes (``min_interval``); a bag is split when it
passes ``max_bag_size_mb`` or ``max_bag_duration``; the bag is closed, and so valid, when the
node stops (Ctrl-C or SIGTERM included).

    ros2 run camera_pose_ros recorder_node --ros-args -p output:=walk \
        -p topics:="['/camera/image_raw', '/camera/camera_info']"
"""

from __future__ import annotations

import sys
from pathlib import Path

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosbags.rosbag2 import StoragePlugin, Writer

from camera_pose_ros.dataset.bagio import TYPESTORE
from camera_pose_ros.ros.msgtypes import message_class
from camera_pose_ros.ros.spin import spin_until_shutdown

__all__ = ["RecorderNode", "main"]

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


class RecorderNode(Node):
    """Subscribes to the configured topics as they appear and writes them to bags."""

    def __init__(self, node_name: str = "recorder", **kwargs: object) -> None:
        super().__init__(node_name, **kwargs)
        self.declare_parameter("topics", ["/camera/image_raw", "/camera/camera_info"])
        self.declare_parameter("odom_topic", "")
        self.declare_parameter("output", "recording")
        self.declare_parameter("storage", "mcap")
        self.declare_parameter("min_interval", 0.0)
        self.declare_parameter("max_bag_size_mb", 0.0)
        self.declare_parameter("max_bag_duration", 0.0)
        self.declare_parameter("reliable", True)
        p = self.get_parameter
        self.topics = list(p("topics").value) + (
            [p("odom_topic").value] if p("odom_topic").value else [])
        self.output = Path(p("output").value)
        storage = p("storage").value
        self.plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}.get(storage)
        if self.plugin is None:
            raise ValueError(f"storage must be mcap or sqlite3, got {storage}")
        self.min_interval_ns = int(float(p("min_interval").value) * 1e9)
        self.max_bytes = float(p("max_bag_size_mb").value) * 1e6
        self.max_duration_ns = int(float(p("max_bag_duration").value) * 1e9)
        self.qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE
                              if p("reliable").value else ReliabilityPolicy.BEST_EFFORT)
        self.bags: list[Path] = []
        self.counts: dict[str, int] = {}
        self._writer: Writer | None = None
        self._conns: dict[str, object] = {}
        self._types: dict[str, str] = {}
        self._subs: dict[str, object] = {}
        self._last_kept: dict[str, int] = {}
        self._bag_start = 0
        self._bag_bytes = 0
        self._discover()
        self._timer = self.create_timer(0.5, self._discover)

    def _discover(self) -> None:
        for name, types in self.get_topic_names_and_types():
            if name in self.topics and name not in self._subs and types:
                msgtype = types[0]
                self._types[name] = msgtype
                self._subs[name] = self.create_subscription(
                    message_class(msgtype), name,
                    lambda data, topic=name: self._on_message(topic, data), self.qos, raw=True)
                self.get_logger().info(f"recording {name} ({msgtype})")

    def _open(self, now_ns: int) -> None:
        path = self.output if not self.bags else Path(f"{self.output}_{len(self.bags)}")
        if path.exists():
            raise FileExistsError(f"{path} exists; choose another output")
        self._writer = Writer(path, version=9, storage_plugin=self.plugin)
        self._writer.open()
        self._conns = {}
        self.bags.append(path)
        self._bag_start, self._bag_bytes = now_ns, 0

    def _on_message(self, topic: str, data: bytes) -> None:
        now_ns = self.get_clock().now().nanoseconds
        if self._types[topic] in IMAGE_TYPES and self.min_interval_ns > 0:
            last = self._last_kept.get(topic)
            if last is not None and now_ns - last < self.min_interval_ns:
                return
            self._last_kept[topic] = now_ns
        if self._writer is not None and (
            (self.max_bytes and self._bag_bytes >= self.max_bytes)
            or (self.max_duration_ns and now_ns - self._bag_start >= self.max_duration_ns)
        ):
            self.close()
        if self._writer is None:
            self._open(now_ns)
        conn = self._conns.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, self._types[topic], typestore=TYPESTORE)
            self._conns[topic] = conn
        self._writer.write(conn, now_ns, bytes(data))
        self._bag_bytes += len(data)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def close(self) -> None:
        """Close the current bag (writes its metadata: the bag is valid from here on)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self.get_logger().info(f"closed {self.bags[-1]}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ros2 run camera_pose_ros recorder_node``."""
    rclpy.init(args=argv if argv is not None else sys.argv)
    try:
        node = RecorderNode()
    except (ValueError, FileExistsError) as exc:
        sys.stderr.write(f"recorder_node: {exc}\n")
        rclpy.shutdown()
        return 2
    # the bag is closed (and so valid) on Ctrl-C and SIGTERM alike
    return spin_until_shutdown(node, SingleThreadedExecutor(), on_exit=node.close)


if __name__ == "__main__":
    sys.exit(main())
