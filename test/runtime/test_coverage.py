"""camera_pose_ros.runtime.coverage: the recorder's TF composition and running coverage, no ROS."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from camera_pose_ros.errors import ConfigError, InputDataError
from camera_pose_ros.geometry import look_at_rotation, pose_matrix
from camera_pose_ros.io.floorplan import FloorPlan
from camera_pose_ros.runtime.coverage import UNSEEN, LatestTransforms, LiveCoverage
from camera_pose_ros.runtime.diagnostics import Level


def random_pose(rng: np.random.Generator) -> np.ndarray:
    return pose_matrix(Rotation.random(random_state=rng).as_matrix(), rng.normal(size=3))


def add(tf: LatestTransforms, parent: str, child: str, m: np.ndarray, *, static=False,
        now=0.0) -> None:
    tf.add(parent, child, m[:3, 3], Rotation.from_matrix(m[:3, :3]).as_quat(), static=static,
           now=now)


def test_the_chain_map_odom_base_camera_is_composed_by_hand():
    rng = np.random.default_rng(1)
    map_odom, odom_base, base_cam = (random_pose(rng) for _ in range(3))
    tf = LatestTransforms()
    add(tf, "map", "odom", map_odom)
    add(tf, "/odom", "base_link", odom_base)  # a tf1-style leading slash is the same frame
    add(tf, "base_link", "camera_optical_frame", base_cam, static=True)
    got = tf.lookup("map", "camera_optical_frame", now=1.0, max_age=2.0)
    np.testing.assert_allclose(got, map_odom @ odom_base @ base_cam, atol=1e-9)
    # across branches: the camera seen from odom, and the inverse direction
    np.testing.assert_allclose(tf.lookup("odom", "camera_optical_frame", now=1.0, max_age=2.0),
                               odom_base @ base_cam, atol=1e-9)
    np.testing.assert_allclose(tf.lookup("camera_optical_frame", "map", now=1.0, max_age=2.0),
                               np.linalg.inv(map_odom @ odom_base @ base_cam), atol=1e-9)
    # the newest sample of an edge wins
    odom_base2 = random_pose(rng)
    add(tf, "odom", "base_link", odom_base2, now=1.0)
    np.testing.assert_allclose(tf.lookup("map", "camera_optical_frame", now=1.0, max_age=2.0),
                               map_odom @ odom_base2 @ base_cam, atol=1e-9)


def test_a_missing_link_or_a_stale_edge_gives_no_pose_and_says_why():
    rng = np.random.default_rng(2)
    tf = LatestTransforms()
    add(tf, "odom", "base_link", random_pose(rng), now=0.0)
    add(tf, "base_link", "camera_optical_frame", random_pose(rng), static=True, now=0.0)
    with pytest.raises(InputDataError, match="'odom' has no parent"):
        tf.lookup("map", "camera_optical_frame", now=0.5, max_age=2.0)
    add(tf, "map", "odom", random_pose(rng), now=0.0)
    tf.lookup("map", "camera_optical_frame", now=1.9, max_age=2.0)
    with pytest.raises(InputDataError, match="'odom' -> 'base_link' is 3.0 s old"):
        tf.lookup("map", "camera_optical_frame", now=3.0, max_age=2.0)
    # a static edge never goes stale
    np.testing.assert_allclose(
        tf.lookup("base_link", "camera_optical_frame", now=100.0, max_age=2.0)[3], [0, 0, 0, 1])


def test_hostile_transforms_are_refused_and_a_loop_does_not_hang():
    tf = LatestTransforms(max_frames=5)
    bad = [("map", "map", (0, 0, 0), (0, 0, 0, 1)), ("", "a", (0, 0, 0), (0, 0, 0, 1)),
           ("map", "a", (np.nan, 0, 0), (0, 0, 0, 1)), ("map", "a", (1e300, 0, 0), (0, 0, 0, 1)),
           ("map", "a", (0, 0, 0), (0, 0, 0, 0)), ("map", "a", (0, 0, 0), (0, 0, 0, np.inf))]
    for parent, child, t, q in bad:
        with pytest.raises(InputDataError):
            tf.add(parent, child, t, q, static=False, now=0.0)
    tf.add("a", "b", (1, 0, 0), (0, 0, 0, 1), static=False, now=0.0)
    tf.add("b", "a", (1, 0, 0), (0, 0, 0, 1), static=False, now=0.0)  # a loop
    with pytest.raises(InputDataError, match="no TF chain"):
        tf.lookup("map", "a", now=0.0, max_age=1.0)
    for i in range(3):
        tf.add("map", f"f{i}", (0, 0, 0), (0, 0, 0, 1), static=False, now=0.0)
    with pytest.raises(InputDataError, match="more than 5 TF frames"):
        tf.add("map", "one_too_many", (0, 0, 0), (0, 0, 0, 1), static=False, now=0.0)


def two_rooms() -> FloorPlan:
    """4 x 8 m at 10 cm: two rooms split by a wall at x = 4 m."""
    occ = np.zeros((40, 80), np.int8)
    occ[[0, -1], :] = 100
    occ[:, [0, -1, 40]] = 100
    return FloorPlan(occ, 0.1, (0.0, 0.0))


def camera(x: float, y: float, dx: float, dy: float) -> np.ndarray:
    return pose_matrix(look_at_rotation(np.array([dx, dy, 0.0])), np.array([x, y, 1.5]))


def test_live_coverage_grows_as_the_walk_goes_and_reports_the_unseen_room():
    live = LiveCoverage(hfov_rad=math.radians(90))
    assert live.update() is None  # no plan yet
    assert live.add_pose(camera(1.0, 2.0, 1, 0))
    live.set_plan(two_rooms(), "plan.yaml")
    first = live.update()
    assert first is not None and 0.0 < first.summary["walkable_seen"] < 0.3
    # standing still adds nothing; turning or walking does
    assert not live.add_pose(camera(1.02, 2.0, 1, 0))
    assert live.add_pose(camera(1.02, 2.0, -1, 0))
    for x in np.linspace(1.0, 3.0, 5):
        live.add_pose(camera(x, 1.0, 0, 1))
        live.add_pose(camera(x, 3.0, 0, -1))
    report = live.update()
    assert report is not None and live.poses == 12
    s = report.summary
    assert 0.4 < s["walkable_seen"] < 0.55 and s["poses_used"] == 12
    assert s["gaps"][0]["x"] > 4.0  # the east room
    east, west = report.grid[1:-1, 41:-1], report.grid[1:-1, 1:40]
    assert (east == UNSEEN).all()
    assert (west < UNSEEN).mean() > 0.95 and (west >= 0).all()
    assert (report.grid[:, 40] == -1).all()  # the wall is not walkable
    # a cell seen from k of 8 heading sectors is 100 * (1 - k / 8)
    assert set(np.unique(west)) <= {round(100 * (1 - k / 8)) for k in range(1, 9)} | {UNSEEN}
    assert report.status.level is Level.OK and "largest gaps" in report.status.message
    assert report.status.values["plan"] == "plan.yaml"
    assert float(report.status.values["walkable_seen"]) == pytest.approx(s["walkable_seen"],
                                                                         abs=1e-3)
    warned = live.update("no TF chain")
    assert warned.status.level is Level.WARN and "no TF chain" in warned.status.message


def test_a_new_plan_is_covered_from_the_whole_walk_so_far():
    live = LiveCoverage(hfov_rad=math.radians(90))
    live.set_plan(two_rooms(), "file")
    for x in np.linspace(1.0, 7.0, 13):
        live.add_pose(camera(x, 2.0, 1, 0))
    before = live.update()
    # the same building without the dividing wall: the walk saw both halves all along
    occ = two_rooms().occupancy.copy()
    occ[1:-1, 40] = 0
    live.set_plan(FloorPlan(occ, 0.1, (0.0, 0.0)), "/map")
    after = live.update()
    assert after is not None and after.summary["poses_used"] == 13
    assert after.status.values["plan"] == "/map"
    assert after.summary["walkable_m2"] > before.summary["walkable_m2"]
    assert (after.grid[15:25, 40] < UNSEEN).all()  # the old wall's cells, seen


def test_unusable_settings_are_config_errors():
    with pytest.raises(ConfigError):
        LiveCoverage(hfov_rad=0.0)
    with pytest.raises(ConfigError):
        LiveCoverage(max_range=-1.0)
    assert not LiveCoverage().add_pose(np.full((4, 4), np.nan))
