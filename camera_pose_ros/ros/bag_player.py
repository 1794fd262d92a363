"""bag_player: publish a bag's topics at the recorded rate (or a multiple of it).

For demos and tests on machines without ``ros2 bag play``. Messages go out as recorded
(serialized CDR, no deserialisation); publishers are reliable with depth 10. An unreadable
bag (missing, unfinished, corrupt, without the requested topics) ends it with one line and
exit status 2.

    ros2 run camera_pose_ros bag_player BAG [--rate 1.0] [--topics /camera/image_raw ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from camera_pose_ros.errors import BagError, CameraPoseError, ConfigError
from camera_pose_ros.io.bags import open_bag, read_messages
from camera_pose_ros.ros.msgtypes import latched_qos, message_class

__all__ = ["play", "check_bag", "main"]


def check_bag(bag: Path, topics: list[str] | None = None) -> list[str]:
    """The topics of ``bag`` that :func:`play` would publish.

    Raises:
        BagError: the bag cannot be opened, or has none of ``topics``.
    """
    reader = open_bag(bag)
    try:
        have = sorted({c.topic for c in reader.connections})
    finally:
        reader.close()
    chosen = [t for t in have if not topics or t in topics]
    if not chosen:
        raise BagError(f"bag {bag} has none of the topics {topics}; it has "
                       + (", ".join(have) if have else "no topics"))
    return chosen


def play(node: Node, bag: Path, *, rate: float = 1.0, topics: list[str] | None = None,
         wait_for_subscribers: float = 0.0, remap: dict[str, str] | None = None) -> int:
    """Publish ``bag`` on ``node``; return the number of messages published.

    Raises:
        ConfigError: ``rate`` is not positive.
        BagError: the bag cannot be read (also part-way through), or has none of ``topics``.
        InputDataError: a topic's message type is not installed here.
    """
    if rate <= 0:
        raise ConfigError(f"rate must be > 0, got {rate}")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    remap = remap or {}
    count = 0
    reader = open_bag(bag)
    try:
        conns = [c for c in reader.connections if not topics or c.topic in topics]
        if not conns:
            raise BagError(f"bag {bag} has none of the topics {topics}; it has "
                           + ", ".join(sorted({c.topic for c in reader.connections})))
        pubs = {c.id: node.create_publisher(
            message_class(c.msgtype), remap.get(c.topic, c.topic),
            latched_qos(qos) if c.topic.endswith("tf_static") else qos) for c in conns}
        deadline = time.monotonic() + wait_for_subscribers
        while wait_for_subscribers and time.monotonic() < deadline and not all(
                p.get_subscription_count() for p in pubs.values()):
            time.sleep(0.05)
        start: tuple[float, int] | None = None  # wall clock and bag time of the first message
        for conn, stamp_ns, raw in read_messages(reader, conns, bag):
            if start is None:
                start = (time.monotonic(), stamp_ns)
            due = start[0] + (stamp_ns - start[1]) / 1e9 / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pubs[conn.id].publish(bytes(raw))
            count += 1
    finally:
        reader.close()
    return count


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ros2 run camera_pose_ros bag_player``."""
    args_in = rclpy.utilities.remove_ros_args(argv if argv is not None else sys.argv)[1:]
    p = argparse.ArgumentParser(prog="bag_player", description=__doc__.splitlines()[0])
    p.add_argument("bag", type=Path)
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    p.add_argument("--topics", nargs="*", help="only these topics")
    p.add_argument("--wait", type=float, default=5.0,
                   help="seconds to wait for subscribers before playing")
    args = p.parse_args(args_in)
    if args.rate <= 0:
        sys.stderr.write("bag_player: --rate must be > 0\n")
        return 2
    try:  # before ROS starts: an unreadable bag is one line, not a node
        check_bag(args.bag, args.topics)
    except CameraPoseError as exc:
        sys.stderr.write(f"bag_player: {exc}\n")
        return 2
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = rclpy.create_node("bag_player")
    try:
        n = play(node, args.bag, rate=args.rate, topics=args.topics,
                 wait_for_subscribers=args.wait)
        node.get_logger().info(f"published {n} messages from {args.bag}")
        time.sleep(0.5)  # let reliable deliveries finish before the publishers go
    except CameraPoseError as exc:
        sys.stderr.write(f"bag_player: {exc}\n")
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
