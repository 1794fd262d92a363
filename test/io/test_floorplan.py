"""camera_pose_ros.io.floorplan: map_server files and OccupancyGrid fields, bad ones refused."""

from __future__ import annotations

import numpy as np
import pytest

from camera_pose_ros.errors import InputDataError
from camera_pose_ros.io.floorplan import FloorPlan


def _grid(width: int = 20, height: int = 10, resolution: float = 0.5,
          origin: tuple[float, float] = (0.0, 0.0), data: list[int] | None = None) -> dict:
    return {"data": [0] * (width * height) if data is None else data, "width": width,
            "height": height, "resolution": resolution, "origin_xy": origin}


@pytest.mark.parametrize("kwargs,words", [
    ({"data": [0] * 199}, "data"), ({"resolution": 0.0}, "resolution"),
    ({"resolution": -0.1}, "resolution"), ({"resolution": float("nan")}, "resolution"),
    ({"width": 0, "data": []}, "empty"), ({"origin": (float("nan"), 0.0)}, "origin"),
    ({"origin": (0.0, float("inf"))}, "origin")])
def test_floor_plan_from_a_grid_refuses_malformed_grids(kwargs, words):
    with pytest.raises(InputDataError, match=words):
        FloorPlan.from_grid(**_grid(**kwargs))


def test_floor_plan_from_a_grid():
    occ = np.zeros((10, 20), np.int8)
    occ[2, 3] = 100
    plan = FloorPlan.from_grid(occ.reshape(-1).tolist(), 20, 10, 0.5, (1.0, -2.0))
    assert plan.occupancy.shape == (10, 20) and plan.occupancy[2, 3] == 100
    assert plan.resolution == 0.5 and plan.origin == (1.0, -2.0)


def test_a_saved_plan_loads_back_with_the_same_walkable_cells(tmp_path):
    occ = np.full((12, 16), -1, np.int8)
    occ[2:10, 3:14] = 0
    occ[5, 5:9] = 100
    plan = FloorPlan(occ, 0.25, (-1.5, 2.0))
    back = FloorPlan.load(plan.save(tmp_path / "floor.yaml"))
    np.testing.assert_array_equal(back.walkable, plan.walkable)
    assert back.resolution == 0.25 and back.origin[:2] == (-1.5, 2.0)
    assert back.is_walkable(np.array([[-1.5 + 0.25 * 4.5, 2.0 + 0.25 * 3.5]]))[0]
    assert not back.is_walkable(np.array([[-1.5 + 0.25 * 6.5, 2.0 + 0.25 * 5.5]]))[0]
