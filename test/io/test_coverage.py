"""camera_pose_ros.io.coverage: what the walk's cameras saw of the plan, nearest mapped views."""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest

from camera_pose_ros.errors import InputDataError, RefinementError
from camera_pose_ros.geometry import look_at_rotation, quat_wxyz_from_rotmat
from camera_pose_ros.io.coverage import (
    CoverageMap,
    MappedViews,
    load_mapped_views,
    nearest_view_summary,
    view_coverage,
)
from camera_pose_ros.io.floorplan import FloorPlan
from camera_pose_ros.io.posecsv import PoseTable, write_poses
from camera_pose_ros.io.refmap import save_refinement_map
from test.conftest import small_refinement_map


def looking(*directions) -> np.ndarray:
    """Scalar-first quaternions of level cameras looking along the given (x, y) directions."""
    return np.array([quat_wxyz_from_rotmat(look_at_rotation(np.array([dx, dy, 0.0])))
                     for dx, dy in directions])


def two_rooms() -> FloorPlan:
    """4 x 8 m at 10 cm: two rooms split by a wall at x = 4 m."""
    occ = np.zeros((40, 80), np.int8)
    occ[[0, -1], :] = 100
    occ[:, [0, -1, 40]] = 100
    return FloorPlan(occ, 0.1, (0.0, 0.0))


def corridor() -> FloorPlan:
    """A 12 m x 1 m corridor along x at 10 cm, walls around."""
    occ = np.full((12, 122), 100, np.int8)
    occ[1:-1, 1:-1] = 0
    return FloorPlan(occ, 0.1, (0.0, 0.0))


def test_coverage_stops_at_walls_and_names_the_room_nobody_looked_into():
    plan = two_rooms()
    # two cameras in the west room: one looks east at the dividing wall, one north-west
    pos = np.array([[2.0, 2.0, 1.5], [3.5, 1.0, 1.5]])
    cov = view_coverage(plan, pos, looking((1, 0), (-1, 1)), math.radians(90))
    codes = np.frombuffer(base64.b64decode(cov["grid"]["codes"]), np.uint8).reshape(40, 80)
    assert (codes[1:-1, 41:-1] == 1).all(), "the wall hides the east room"
    assert (codes[15:25, 40] == 3).all(), "the wall face the camera looks at is seen"
    assert (codes[15:25, 25:38] == 2).all(), "the floor in front of the camera is seen"
    assert (codes[0, 45:75] == 4).all(), "the east room's walls are unseen"
    assert 0.3 < cov["walkable_seen"] < 0.5


def test_view_cells_meet_only_for_views_of_the_same_room():
    plan = two_rooms()
    cover = CoverageMap(plan, hfov_rad=math.radians(90), max_range=8.0)
    # west room looking east at the wall, east room looking west at it (back to back), a
    # second west view looking north-east, and a non-finite pose
    pos = np.array([[2.0, 2.0, 1.5], [6.0, 2.0, 1.5], [1.0, 1.0, 1.5], [np.nan, 0.0, 1.5]])
    cells = cover.view_cells(pos, looking((1, 0), (-1, 0), (1, 1), (1, 0)))
    west, east, west2, none = cells
    assert none is None and cover.poses == 0  # the views are not added to the map
    assert len(np.intersect1d(west, west2)) > 20
    assert len(np.intersect1d(west, east)) == 0  # both see the wall, no common floor
    assert np.all(plan.occupancy.ravel()[west] == 0) and np.all(np.diff(west) > 0)
    sparse = cover.view_cells(pos[:3], looking((1, 0), (-1, 0), (1, 1)), lattice=5)
    assert len(sparse[0]) < len(west) / 10 and np.all(sparse[0] % 5 == 0)
    assert len(np.intersect1d(sparse[0], sparse[2])) > 0
    assert len(np.intersect1d(sparse[0], sparse[1])) == 0


def test_a_room_the_walk_never_saw_is_the_largest_gap_and_a_seen_one_is_none():
    plan = two_rooms()
    # a walk around the west room, looking outwards, then inwards
    ang = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    pos = np.column_stack([2.0 + np.cos(ang), 2.0 + 0.8 * np.sin(ang), np.full(16, 1.5)])
    cov = CoverageMap(plan, hfov_rad=math.radians(60))
    for turn in (1.0, np.pi):
        cov.add_views(pos, looking(*zip(np.cos(ang + turn), np.sin(ang + turn), strict=True)))
    s = cov.summary()
    (gap,) = s["gaps"]  # the east room, and nothing in the west room
    east_free = plan.walkable[:, 41:].sum() * 0.01
    assert 4.0 < gap["x"] < 8.0 and 0.0 < gap["y"] < 4.0
    assert plan.is_walkable(np.array([[gap["x"], gap["y"]]]))[0]
    assert gap["area_m2"] == pytest.approx(east_free, rel=0.02)
    assert gap["extent_m"] > 1.5  # a circle of that radius holds most of the room
    assert cov.seen()[1:-1, 1:40].all(), "every cell of the west room is seen"
    assert s["walkable_seen"] == pytest.approx(1 - east_free / (plan.walkable.sum() * 0.01),
                                               abs=0.01)
    assert s["walkable_m2"] == pytest.approx(plan.walkable.sum() * 0.01)


def test_headings_count_the_directions_a_cell_was_seen_from():
    plan = corridor()
    east = np.column_stack([np.linspace(0.5, 3.0, 6), np.full(6, 0.6), np.full(6, 1.5)])
    cov = CoverageMap(plan, hfov_rad=math.radians(60), max_range=8.0)
    cov.add_views(east, looking(*[(1, 0)] * 6))
    headings, views = cov.cell_headings(), cov.cell_views()
    mid = (slice(2, 10), slice(50, 70))  # x 5 to 7 m: in front of every eastward camera
    assert (headings[mid] == 1).all() and (views[mid] == 6).all()
    s = cov.summary(min_gap_m2=0.5)
    assert s["walkable_seen_2_headings"] == 0.0
    assert any(a["x"] > 3.0 and a["area_m2"] > 4.0 for a in s["one_heading_areas"])
    # walking back west along the same line: the middle is now seen from two headings
    west = east.copy()
    west[:, 0] = np.linspace(11.5, 9.0, 6)
    cov.add_views(west, looking(*[(-1, 0)] * 6))
    headings, views = cov.cell_headings(), cov.cell_views()
    assert (headings[mid] == 2).all() and (views[mid] == 12).all()
    s2 = cov.summary(min_gap_m2=0.5)
    assert s2["walkable_seen_2_headings"] > 0.3
    assert s2["headings_histogram"][2] == pytest.approx(s2["walkable_seen_2_headings"])
    assert sum(s2["headings_histogram"]) == pytest.approx(1.0)
    assert not any(4.5 < a["x"] < 7.5 for a in s2["one_heading_areas"])


def test_views_added_in_batches_give_what_one_batch_gives():
    plan = two_rooms()
    rng = np.random.default_rng(3)
    pos = np.column_stack([rng.uniform(0.5, 7.5, 40), rng.uniform(0.5, 3.5, 40),
                           np.full(40, 1.5)])
    ang = rng.uniform(0, 2 * np.pi, 40)
    quats = looking(*zip(np.cos(ang), np.sin(ang), strict=True))
    one = CoverageMap(plan)
    one.add_views(pos, quats)
    parts = CoverageMap(plan)
    for i in range(0, 40, 7):
        parts.add_views(pos[i:i + 7], quats[i:i + 7])
    assert np.array_equal(one.cell_views(), parts.cell_views())
    assert np.array_equal(one.cell_headings(), parts.cell_headings())
    assert one.summary() == parts.summary()


def test_non_finite_poses_are_skipped():
    cov = CoverageMap(corridor())
    quats = looking((1, 0), (1, 0))
    cov.add_views(np.array([[np.nan, 0.5, 1.5], [1.0, 0.6, 1.5]]), quats)
    assert cov.poses == 1 and cov.summary()["walkable_seen"] > 0.2


def test_nearest_mapped_view_distance_angle_and_same_way():
    views = MappedViews.from_poses(np.array([[0.0, 0.0, 1.5], [3.0, 0.0, 1.5]]),
                                   looking((1, 0), (-1, 0)), ["a.png", "b.png"])
    q = np.array([[0.5, 0.0, 1.5], [0.5, 0.0, 1.5], [10.0, 0.0, 1.5]])
    near = views.nearest(q, looking((-1, 0), (1, 1), (-1, 0)))
    assert near.distance_m == pytest.approx([0.5, 0.5, 7.0])
    assert near.angle_deg == pytest.approx([180.0, 45.0, 0.0], abs=1e-6)
    # the first looks west: the west-looking view is 2.5 m away; the second is 45 deg off
    # the east-looking one
    assert near.same_way_m == pytest.approx([2.5, 0.5, 7.0])
    only_b = views.excluding(["a.png"])
    assert len(only_b) == 1 and only_b.nearest(q).distance_m == pytest.approx([2.5, 2.5, 7.0])
    no_rot = views.nearest(q)
    assert np.isnan(no_rot.angle_deg).all() and np.isnan(no_rot.same_way_m).all()
    with pytest.raises(InputDataError):
        views.excluding(["a.png", "b.png"]).nearest(q)


def test_summary_tells_errors_near_the_map_from_errors_far_from_it():
    views = MappedViews.from_poses(np.zeros((1, 3)), looking((1, 0)))
    pos = np.array([[0.2, 0, 0], [0.5, 0, 0], [3.0, 0, 0], [4.0, 0, 0]], float)
    near = views.nearest(pos, looking(*[(1, 0)] * 4))
    s = nearest_view_summary(near, position_errors_m=np.array([0.1, 0.3, 2.0, 4.0]))
    assert s["median_m"] == pytest.approx(1.75) and s["share_beyond"] == 0.5
    assert s["frames_near"] == 2 and s["median_position_error_near_m"] == pytest.approx(0.2)
    assert s["frames_far"] == 2 and s["median_position_error_far_m"] == pytest.approx(3.0)


def test_mapped_views_load_from_a_refinement_map_a_dataset_or_a_pose_csv(tmp_path):
    rmap = small_refinement_map()
    save_refinement_map(tmp_path / "refinement_map.npz", rmap)
    for path in (tmp_path / "refinement_map.npz", tmp_path):
        views = load_mapped_views(path)
        assert list(views.names) == list(rmap.names)
        assert np.allclose(views.positions_N3, rmap.centres)
        assert np.allclose(views.axes_N3, rmap.optical_axes)
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(InputDataError, match="poses.csv"):
        load_mapped_views(data)
    write_poses(data / "poses.csv", PoseTable(np.array([1, 2], np.int64), np.eye(2, 3),
                                              looking((1, 0), (0, 1)), ["x.png", "y.png"]))
    views = load_mapped_views(data)
    assert list(views.names) == ["x.png", "y.png"]
    assert np.allclose(views.axes_N3, [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(RefinementError):
        load_mapped_views(tmp_path / "bad.npz")
