"""camera_pose_ros.dashboard.localize: uploads are localized like the node localizes."""

from __future__ import annotations

import numpy as np

from camera_pose_ros.dashboard.localize import LocalizeService
from camera_pose_ros.io.floorplan import FloorPlan
from test.conftest import textured, write_random_checkpoint


def test_uploads_snap_onto_the_walkable_floor_like_the_node(tmp_path):
    ckpt = write_random_checkpoint(tmp_path / "model.pt", seed=3)
    occupancy = np.full((40, 40), 100, np.int8)
    occupancy[30, 5] = 0  # one walkable cell, far from where an untrained net points
    plan = FloorPlan(occupancy=occupancy, resolution=0.5, origin=(-10.0, -10.0))
    rgb = textured(1, 96, 128)
    free = LocalizeService(ckpt, device="cpu").localize(rgb)["modes"]["regress"]
    snapped = LocalizeService(ckpt, device="cpu", floorplan=plan).localize(rgb)["modes"][
        "regress"]
    assert not free["snapped"] and snapped["snapped"]
    cell_centre = (-10.0 + 5.5 * 0.5, -10.0 + 30.5 * 0.5)
    assert (snapped["x"], snapped["y"]) == (cell_centre[0], cell_centre[1])
    assert snapped["z"] == free["z"] and snapped["q"] == free["q"]


def test_a_plan_without_walkable_cells_leaves_uploads_unsnapped(tmp_path):
    ckpt = write_random_checkpoint(tmp_path / "model.pt", seed=3)
    walls = FloorPlan(occupancy=np.full((10, 10), 100, np.int8), resolution=0.5,
                      origin=(0.0, 0.0))
    view = LocalizeService(ckpt, device="cpu", floorplan=walls).localize(
        textured(1, 96, 128))["modes"]["regress"]
    assert "x" in view and not view["snapped"]
