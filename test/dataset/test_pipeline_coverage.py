"""dataset.pipeline.write_report: the coverage section of report.json and coverage.png.

A dataset folder is written by hand (the SfM summary, the alignment, poses and splits the
report reads), so no SfM runs: the registered views walk one room of a two-room plan.
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.dataset.pipeline import write_report
from camera_pose_ros.geometry import look_at_rotation, quat_wxyz_from_rotmat
from camera_pose_ros.io.floorplan import FloorPlan
from camera_pose_ros.io.posecsv import PoseTable, write_poses


def one_room_walk(data, n: int = 24) -> None:
    """A dataset whose ``n`` registered views circle the west room of :func:`plan`, looking
    outwards and inwards in turn."""
    (data / "sfm").mkdir(parents=True)
    (data / "sfm" / "summary.json").write_text(json.dumps(
        {"frames": n, "registered": n, "registered_ratio": 1.0,
         "mean_reprojection_error_px": 0.5, "points3D": 100}))
    (data / "alignment.json").write_text(json.dumps(
        {"map_from_sfm": {"scale": 1.0, "rotation": np.eye(3).tolist(),
                          "translation": [0, 0, 0]},
         "rms_m": 0.01, "inliers": 3,
         "control_points": [{"key": "a", "frame": "000000.jpg", "xyz": [2, 2, 0],
                             "residual_m": 0.01, "inlier": True}]}))
    ang = np.linspace(0, 4 * np.pi, n, endpoint=False)
    pos = np.column_stack([2.0 + np.cos(ang), 2.0 + 0.8 * np.sin(ang), np.full(n, 1.5)])
    turn = np.where(np.arange(n) % 2 == 0, 1.0, np.pi)
    quats = np.array([quat_wxyz_from_rotmat(look_at_rotation(
        np.array([math.cos(a + t), math.sin(a + t), 0.0]))) for a, t in zip(ang, turn,
                                                                             strict=True)])
    stamps = (1_000_000_000 + np.arange(n) * 500_000_000).astype(np.int64)
    names = [f"{i:06d}.jpg" for i in range(n)]
    table = PoseTable(stamps, pos, quats, names)
    write_poses(data / "poses.csv", table)
    half = n // 2
    write_poses(data / "train.csv", PoseTable(stamps[:half], pos[:half], quats[:half],
                                              names[:half]))
    write_poses(data / "test.csv", PoseTable(stamps[half:], pos[half:], quats[half:],
                                             names[half:]))


def plan() -> FloorPlan:
    """4 x 8 m at 10 cm: two rooms split by a wall at x = 4 m."""
    occ = np.zeros((40, 80), np.int8)
    occ[[0, -1], :] = 100
    occ[:, [0, -1, 40]] = 100
    return FloorPlan(occ, 0.1, (0.0, 0.0))


def test_report_marks_the_room_the_walk_never_saw_and_draws_it(tmp_path):
    data = tmp_path / "data"
    one_room_walk(data)
    (data / "camera.json").write_text(json.dumps(
        PinholeCamera(320, 240, 160.0, 160.0, 159.5, 119.5).to_dict()))  # 90 deg wide
    plan_yaml = plan().save(tmp_path / "plan.yaml")
    report = json.loads(write_report(data, floorplan=plan_yaml).read_text())
    cov = report["coverage"]
    assert cov["hfov_deg"] == pytest.approx(90.0) and cov["field_of_view_from"] == "camera.json"
    assert cov["poses_used"] == 24
    (gap,) = cov["gaps"]  # the east room; the west room, walked, has none
    assert gap["x"] > 4.0 and gap["area_m2"] == pytest.approx(38 * 38 * 0.01, rel=0.02)
    assert 0.45 < cov["walkable_seen"] < 0.55
    assert cov["headings_histogram"][0] == pytest.approx(1 - cov["walkable_seen"])
    assert cov["walkable_seen_2_headings"] > 0.3  # the west room is seen from several sides
    img = cv2.imread(str(data / "coverage.png"))
    assert img is not None and img.shape[1] > 1000
    # the unseen room is drawn red in both panels: a fair part of the figure
    b, g, r = (img[..., i].astype(int) for i in range(3))
    assert np.mean((r > 200) & (g < 160) & (b < 160)) > 0.05


def test_report_without_a_floor_plan_has_no_coverage_and_no_stale_figure(tmp_path):
    data = tmp_path / "data"
    one_room_walk(data)
    write_report(data, floorplan=plan().save(tmp_path / "plan.yaml"))
    assert json.loads((data / "report.json").read_text())["coverage"]["gaps"]
    report = json.loads(write_report(data).read_text())
    assert report["coverage"] is None
    assert not (data / "coverage.png").exists()  # the first run's figure is gone
    assert report["frames"] == 24  # the rest of the report is written as before
