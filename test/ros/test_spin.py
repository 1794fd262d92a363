"""camera_pose_ros.ros.spin: background spinning ends with its context."""

from __future__ import annotations

import pytest

from test.conftest import wait_for

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402

from camera_pose_ros.ros.spin import spin_in_background  # noqa: E402


def test_background_spinning_runs_callbacks_and_stops_at_shutdown():
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("spin_probe", context=ctx)
    ticks: list[int] = []
    node.create_timer(0.01, lambda: ticks.append(1))
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    thread = spin_in_background(ex, ctx)
    assert wait_for(lambda: len(ticks) >= 3, 10)
    rclpy.shutdown(context=ctx)  # ends the spinning
    thread.join(timeout=5)
    assert not thread.is_alive()
    ex.shutdown()
    node.destroy_node()
