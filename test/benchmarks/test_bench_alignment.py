"""benchmarks/bench_alignment.py: the floor that an alignment from the robot's TF can reach."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from benchmarks.bench_alignment import localization_floor
from camera_pose_ros.dataset.synth import SCENARIOS, Building, BuildingSpec, walk_trajectory
from camera_pose_ros.dataset.synth_robot import RobotSpec
from camera_pose_ros.geometry import quat_wxyz_from_rotmat
from camera_pose_ros.io.posecsv import PoseTable


def _walk(frames: int = 120) -> PoseTable:
    building = Building(BuildingSpec(seed=3, **SCENARIOS["standard"]["building"]))
    poses = np.array(walk_trajectory(building, frames, loops=1.0))
    stamps = 1_700_000_000_000_000_000 + np.arange(frames, dtype=np.int64) * 100_000_000
    return PoseTable(stamps, poses[:, :3, 3], quat_wxyz_from_rotmat(poses[:, :3, :3]), None)


def test_floor_is_the_localization_noise_and_ignores_the_jumps():
    gt = _walk()
    exact = replace(RobotSpec(), position_sigma=0.0, yaw_sigma_deg=0.0, odom_scale_error=0.0,
                    odom_yaw_rate_error=0.0)
    # 1 m jumps alone: rejected; what is left is the TF's interpolation at the frame stamps
    assert max(localization_floor(gt, [1, 2], exact)) < 1e-3
    noisy = localization_floor(gt, range(6), RobotSpec())
    assert all(0.001 < f < 0.1 for f in noisy) and len(set(noisy)) == 6
    quieter = localization_floor(gt, range(6), replace(RobotSpec(), position_sigma=0.01))
    assert np.median(quieter) < np.median(noisy) / 2
