"""Runtime pieces without ROS: floor-plan snapping and the odometry jump gate."""

from __future__ import annotations

import numpy as np

from camera_pose_ros.io.floorplan import FloorPlan
from camera_pose_ros.runtime.localizer import FloorSnapper, JumpGate


def corridor_plan() -> FloorPlan:
    occ = np.full((40, 60), 100, np.int8)  # 2 m x 3 m at 5 cm, all wall ...
    occ[10:30, 5:55] = 0  # ... but a walkable corridor y in [0.5, 1.5), x in [0.25, 2.75)
    return FloorPlan(occ, 0.05, (0.0, 0.0))


def test_walkable_points_stay():
    snap = FloorSnapper(corridor_plan())
    xy, moved = snap.snap(np.array([1.0, 1.0]))
    assert not moved and np.allclose(xy, [1.0, 1.0])


def test_points_in_walls_move_to_the_nearest_walkable_cell():
    plan = corridor_plan()
    snap = FloorSnapper(plan)
    xy, moved = snap.snap(np.array([1.0, 1.8]))  # 30 cm above the corridor
    assert moved
    assert plan.is_walkable(xy[None])[0]
    assert abs(xy[0] - 1.0) < 0.05 and abs(xy[1] - 1.475) < 0.03
    xy, moved = snap.snap(np.array([-3.0, 1.0]))  # outside the grid entirely
    assert moved and plan.is_walkable(xy[None])[0]


def test_jump_gate_follows_odometry():
    gate = JumpGate(max_jump=0.5, per_metre=0.1)
    assert gate.accept(np.zeros(3), None)  # no odometry: nothing to check
    assert gate.accept(np.zeros(3), np.zeros(3))
    assert gate.accept(np.array([1.0, 0, 0]), np.array([1.1, 0, 0]))  # agrees
    assert not gate.accept(np.array([5.0, 0, 0]), np.array([1.2, 0, 0]))  # 4 m jump
    assert gate.accept(np.array([1.3, 0, 0]), np.array([1.2, 0, 0]))  # back on track
