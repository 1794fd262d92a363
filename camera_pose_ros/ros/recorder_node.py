"""recorder_node: record camera topics to a ROS 2 bag (MCAP by default) through rosbags.

Messages are written as they arrive on the wire (raw serialized CDR: no deserialisation
cost). Image topics can be throttled to keyframes (``min_interval``); a bag is split when it
passes ``max_bag_size_mb`` or ``max_bag_duration``; the bag is closed, and so valid, when the
node stops (Ctrl-C or SIGTERM included).

The output is checked, and the first bag created, at start: an existing or unwritable
``output`` ends the node with one line and exit status 2 before anything is recorded.

A recorder killed without a chance to close its bag (SIGKILL, out of memory, power loss)
loses at most about ``flush_period`` seconds of messages: every ``flush_period`` the MCAP
chunk in memory is written out (``chunk_size`` bounds it too) and the file flushed and
fsynced, or the sqlite3 transaction committed. Such a bag has no ``metadata.yaml``; readers
refuse it and ``camera-pose bag-repair BAG`` writes a complete bag with what it holds.

With a floor plan (the ``floorplan`` parameter or ``/map``) and the camera's map pose (``/tf``
+ ``/tf_static``, or a pose topic such as ``/amcl_pose``), the recorder also keeps a live
coverage of the plan: ``~/coverage_map`` (OccupancyGrid), a ``/diagnostics`` status and a log
line every ``coverage_publish_period`` say how much of the walkable floor the walk has seen
and where the largest unseen areas are (:mod:`camera_pose_ros.ros.coverage_monitor`; its work
runs on a thread of its own, so writing never waits for it).

    ros2 run camera_pose_ros recorder_node --ros-args -p output:=walk \
        -p topics:="['/camera/image_raw', '/camera/camera_info']"
"""

from __future__ import annotations

import functools
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosbags.interfaces import Connection
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.errors import WriterError

from camera_pose_ros.errors import CameraPoseError, ConfigError, InputDataError
from camera_pose_ros.io.bags import TYPESTORE
from camera_pose_ros.ros.coverage_monitor import CoverageMonitor
from camera_pose_ros.ros.msgtypes import latched_qos, message_class
from camera_pose_ros.ros.spin import spin_until_shutdown

__all__ = ["RecorderNode", "main"]

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
#: rosbags' MCAP writer closes a chunk once it passes 1 MiB whatever ``chunk_size`` says
MCAP_MAX_CHUNK = 2**20


def check_output(path: Path) -> None:
    """Raise :class:`ConfigError` unless bag folder ``path`` can be created.

    It must not exist, and the nearest existing folder above it must be a writable folder.
    """
    if path.exists() or path.is_symlink():
        raise ConfigError(f"output {path} exists; choose another output (bags are never "
                          "overwritten)")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"cannot create output {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot create output {path}: folder {parent} is not writable")


class RecorderNode(Node):
    """Subscribes to the configured topics as they appear and writes them to bags."""

    def __init__(self, node_name: str = "recorder", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        # the robot's own localization too: `camera-pose dataset` aligns to the map from it
        self.declare_parameter("topics", ["/camera/image_raw", "/camera/camera_info", "/tf",
                                          "/tf_static", "/amcl_pose"])
        self.declare_parameter("odom_topic", "")
        self.declare_parameter("output", "recording")
        self.declare_parameter("storage", "mcap")
        self.declare_parameter("min_interval", 0.0)
        self.declare_parameter("max_bag_size_mb", 0.0)
        self.declare_parameter("max_bag_duration", 0.0)
        self.declare_parameter("reliable", True)
        # any number type (a launch file may pass 1 for 1.0)
        self.declare_parameter("chunk_size", MCAP_MAX_CHUNK,
                               ParameterDescriptor(dynamic_typing=True))
        self.declare_parameter("flush_period", 1.0, ParameterDescriptor(dynamic_typing=True))
        p = self.get_parameter
        self.topics = list(p("topics").value) + (
            [p("odom_topic").value] if p("odom_topic").value else [])
        self.output = Path(p("output").value)
        storage = p("storage").value
        plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}.get(storage)
        if plugin is None:
            raise ConfigError(f"storage must be mcap or sqlite3, got {storage}")
        self.plugin: StoragePlugin = plugin
        try:  # chunk_size and flush_period take any type; nan or inf fail int()
            self.chunk_size = int(p("chunk_size").value)
            self.flush_period = float(p("flush_period").value)
            self.min_interval_ns = int(float(p("min_interval").value) * 1e9)
            self.max_bytes = float(p("max_bag_size_mb").value) * 1e6
            self.max_duration_ns = int(float(p("max_bag_duration").value) * 1e9)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ConfigError(f"chunk_size, flush_period, min_interval and max_bag_duration "
                              f"must be finite numbers ({exc})") from exc
        if self.chunk_size <= 0:
            raise ConfigError(f"chunk_size must be > 0 bytes, got {self.chunk_size}")
        if not self.flush_period >= 0:
            raise ConfigError(f"flush_period must be >= 0 s (0: only on close), got "
                              f"{self.flush_period}")
        self.qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE
                              if p("reliable").value else ReliabilityPolicy.BEST_EFFORT)
        self.bags: list[Path] = []
        self.counts: dict[str, int] = {}
        self._writer: Writer | None = None
        self._conns: dict[str, Connection] = {}
        self._types: dict[str, str] = {}
        self._subs: dict[str, object] = {}
        self._unknown_types: set[str] = set()
        self._last_kept: dict[str, int] = {}
        self._bag_start: int | None = None
        self._bag_bytes = 0
        self._dirty = False
        self.dropped = 0
        self._last_error = 0.0
        # live coverage (ros/coverage_monitor.py): its parameters are checked before the bag
        self.coverage = CoverageMonitor(self, self._images_recorded)
        # the first bag is created now: a bad output fails here, before anything is recorded
        check_output(self.output)
        try:
            self._open()
        except (OSError, WriterError) as exc:
            raise ConfigError(f"cannot create output {self.output}: {exc}") from exc
        self._discover()
        self._timer = self.create_timer(0.5, self._discover)
        self._flush_timer = (self.create_timer(self.flush_period, self.flush)
                             if self.flush_period > 0 else None)
        self.coverage.start()

    def _images_recorded(self) -> int:
        return sum(n for topic, n in self.counts.items() if self._types[topic] in IMAGE_TYPES)

    def destroy_node(self) -> None:
        """Stop the coverage thread, then destroy the node."""
        self.coverage.stop()
        super().destroy_node()

    def _discover(self) -> None:
        for name, types in self.get_topic_names_and_types():
            if name in self.topics and name not in self._subs and types:
                msgtype = types[0]
                try:
                    msg_class = message_class(msgtype)
                except InputDataError as exc:  # a node keeps running: say it once, go on
                    if name not in self._unknown_types:
                        self._unknown_types.add(name)
                        self.get_logger().error(f"cannot record {name}: {exc}")
                    continue
                self._types[name] = msgtype
                self._subs[name] = self.create_subscription(
                    msg_class, name, functools.partial(self._on_message, name),
                    latched_qos(self.qos) if name.endswith("tf_static") else self.qos,
                    raw=True)
                self.get_logger().info(f"recording {name} ({msgtype})")

    def _open(self) -> Writer:
        """Start a bag: ``output``, then ``output_1``, ``output_2``... after a split."""
        index = len(self.bags)
        path = self.output if not self.bags else Path(f"{self.output}_{index}")
        while self.bags and (path.exists() or path.is_symlink()):  # a split: next free name
            index += 1
            path = Path(f"{self.output}_{index}")
        writer = Writer(path, version=9, storage_plugin=self.plugin)
        writer.open()
        self._writer = writer
        self._conns = {}
        self.bags.append(path)
        self._bag_start, self._bag_bytes = None, 0
        return writer

    def _error(self, what: str, exc: BaseException, dropped: int = 1) -> None:
        """Log a write failure (at most every 5 s); the node keeps running."""
        self.dropped += dropped
        now = time.monotonic()
        if now - self._last_error >= 5.0:
            self._last_error = now
            self.get_logger().error(f"{what}: {exc} ({self.dropped} message(s) dropped "
                                    "so far)")

    def _on_message(self, topic: str, data: bytes) -> None:
        now_ns = self.get_clock().now().nanoseconds
        if self._types[topic] in IMAGE_TYPES and self.min_interval_ns > 0:
            last = self._last_kept.get(topic)
            if last is not None and now_ns - last < self.min_interval_ns:
                return
            self._last_kept[topic] = now_ns
        if self._writer is not None and self._bag_start is not None and (
            (self.max_bytes and self._bag_bytes >= self.max_bytes)
            or (self.max_duration_ns and now_ns - self._bag_start >= self.max_duration_ns)
        ):
            self.close()
        try:
            writer = self._writer if self._writer is not None else self._open()
            conn = self._conns.get(topic)
            if conn is None:
                conn = writer.add_connection(topic, self._types[topic], typestore=TYPESTORE)
                self._conns[topic] = conn
            writer.write(conn, now_ns, bytes(data))
        except (OSError, WriterError, sqlite3.Error) as exc:
            self._error(f"cannot write {topic} to {self.bags[-1] if self.bags else '?'}",
                        exc)
            return
        if self._bag_start is None:
            self._bag_start = now_ns
        self._bag_bytes += len(data)
        self._dirty = True
        self.counts[topic] = self.counts.get(topic, 0) + 1
        storage: Any = writer.storage  # the MCAP chunk is not in rosbags' storage protocol
        if self.plugin is StoragePlugin.MCAP and storage.chunk.bio.tell() >= self.chunk_size:
            try:  # rosbags' writer itself closes a chunk only past 1 MiB
                storage.close_chunk()
            except OSError as exc:
                self._error(f"cannot write a chunk to {self.bags[-1]}", exc, dropped=0)

    def flush(self) -> None:
        """Put what was recorded so far on disk, so that a killed recorder loses no more.

        MCAP: the chunk being filled is written out as a complete chunk and the file is
        flushed and fsynced; sqlite3: the transaction is committed. A no-op when nothing
        was written since the last flush.
        """
        if self._writer is None or self._writer.storage is None or not self._dirty:
            return
        storage: Any = self._writer.storage  # MCAP's chunk and file, sqlite3's connection
        try:
            if self.plugin is StoragePlugin.MCAP:
                if storage.chunk.msgs:
                    storage.close_chunk()
                storage.bio.flush()
                os.fsync(storage.bio.fileno())
            else:
                storage.conn.commit()
        except (OSError, sqlite3.Error) as exc:
            self._error(f"cannot flush {self.bags[-1]}", exc, dropped=0)
            return
        self._dirty = False

    def close(self) -> None:
        """Close the current bag (writes its metadata: the bag is valid from here on)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
            except (OSError, WriterError, sqlite3.Error) as exc:
                self.get_logger().error(
                    f"cannot close {self.bags[-1]}: {exc}; `camera-pose bag-repair "
                    f"{self.bags[-1]}` recovers what was written")
                return
            self.get_logger().info(f"closed {self.bags[-1]}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ros2 run camera_pose_ros recorder_node``."""
    rclpy.init(args=argv if argv is not None else sys.argv)
    try:
        node = RecorderNode()
    except (CameraPoseError, ParameterException) as exc:
        sys.stderr.write(f"recorder_node: {exc}\n")
        rclpy.shutdown()
        return 2
    # the bag is closed (and so valid) on Ctrl-C and SIGTERM alike
    return spin_until_shutdown(node, SingleThreadedExecutor(), on_exit=node.close)


if __name__ == "__main__":
    sys.exit(main())
