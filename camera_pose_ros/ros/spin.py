"""Running a node until Ctrl-C, SIGTERM or an external shutdown, then cleaning up."""

from __future__ import annotations

import signal
from collections.abc import Callable

import rclpy
from rclpy.executors import Executor, ExternalShutdownException
from rclpy.node import Node

__all__ = ["spin_until_shutdown"]


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def spin_until_shutdown(node: Node, executor: Executor,
                        on_exit: Callable[[], None] | None = None) -> int:
    """Spin ``node`` on ``executor``; SIGTERM ends it like Ctrl-C. Returns exit status 0."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if on_exit is not None:
            on_exit()
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
