"""camera_pose_ros.runtime.localizer: batched inference, the one way a refiner is made,
floor-plan snapping and the odometry jump gate.

No DDS and no training: a tiny random network and a refinement map built here.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from camera_pose_ros.errors import ConfigError, RefinementError
from camera_pose_ros.io.floorplan import FloorPlan
from camera_pose_ros.io.refmap import REFINEMENT_MAP, save_refinement_map
from camera_pose_ros.runtime.estimate import (
    FloorSnapper,
    JumpGate,
    PoseEstimate,
    RegressorCheck,
)
from camera_pose_ros.runtime.localizer import Localizer, load_refiner
from test.conftest import small_refinement_map, write_random_checkpoint


def test_a_batch_gives_the_poses_of_single_frames_in_order(tmp_path):
    loc = Localizer(write_random_checkpoint(tmp_path / "model.pt", seed=1), device="cpu")
    real = loc.predictor.predict

    def by_content(images):  # an untrained network answers alike for every image
        poses, covs = real(images)
        poses[:, 0] += [img.mean() / 10.0 for img in images]
        poses[:, 3:] *= 2.0  # not unit: the localizer normalises
        return poses, covs

    loc.predictor.predict = by_content
    rng = np.random.default_rng(3)
    images = [np.full((48, 64, 3), v, np.uint8) for v in rng.integers(0, 256, 5)]
    batch = loc.localize_batch(images)
    assert len(batch) == 5 and loc.localize_batch([]) == []
    assert len({round(e.position[0], 6) for e in batch}) == 5
    for img, est in zip(images, batch, strict=True):
        one = loc.localize(img)
        np.testing.assert_allclose(est.position, one.position, atol=1e-5)
        np.testing.assert_allclose(est.quat_wxyz, one.quat_wxyz, atol=1e-5)
        assert np.linalg.norm(est.quat_wxyz) == pytest.approx(1.0)
        assert est.latency_s > 0 and not est.snapped


def test_the_refiner_comes_from_the_explicit_map_with_the_yaml_settings(tmp_path):
    ckpt = write_random_checkpoint(tmp_path / "run" / "model.pt")
    data = tmp_path / "data"
    save_refinement_map(data / REFINEMENT_MAP, small_refinement_map())
    cfg = tmp_path / "refine.yaml"
    cfg.write_text("min_inliers: 12\nk_pose: 2\n")
    refiner, path = load_refiner(ckpt, data, cfg)  # a dataset folder holds the map
    assert path == data / REFINEMENT_MAP
    assert (refiner.config.min_inliers, refiner.config.k_pose) == (12, 2)
    assert list(refiner.map.names) == ["a.png", "b.png", "c.png"]
    refiner, _ = load_refiner(ckpt, data, "")  # an unset ROS parameter: the defaults
    assert refiner.config.min_inliers == 30


def test_the_refiner_is_found_through_the_checkpoints_provenance(tmp_path):
    data = tmp_path / "data"
    save_refinement_map(data / REFINEMENT_MAP, small_refinement_map())
    ckpt = write_random_checkpoint(tmp_path / "run" / "model.pt",
                                   provenance={"dataset": str(data)})
    loc = Localizer(ckpt, device="cpu")
    assert loc.refiner is None
    assert loc.enable_refinement() == str(data / REFINEMENT_MAP)
    assert loc.refiner is not None and len(loc.refiner.map.names) == 3


def test_bad_settings_fail_before_the_map_is_looked_for_and_no_map_keeps_no_refiner(
        tmp_path):
    ckpt = write_random_checkpoint(tmp_path / "model.pt")
    bad = tmp_path / "refine.yaml"
    bad.write_text("min_inliers: 2\n")
    with pytest.raises(ConfigError, match="min_inliers"):
        load_refiner(ckpt, tmp_path / "nowhere", bad)
    with pytest.raises(RefinementError, match="none was found"):
        load_refiner(ckpt, None, None)  # none beside it, no provenance
    loc = Localizer(ckpt, device="cpu")
    with pytest.raises(RefinementError):
        loc.enable_refinement(tmp_path / "nowhere")
    assert loc.refiner is None


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


def _pose(x: float, yaw_deg: float, pos_sd: float = 0.5, rot_sd_deg: float = 5.0
          ) -> PoseEstimate:
    q = Rotation.from_euler("z", yaw_deg, degrees=True).as_quat()  # xyzw
    cov = np.diag([pos_sd**2] * 3 + [np.radians(rot_sd_deg) ** 2] * 3)
    return PoseEstimate(np.array([x, 0.0, 1.5]), np.r_[q[3], q[:3]], cov)


def test_regressor_check_widens_what_the_refined_poses_found_outside_the_claim():
    check = RegressorCheck(memory=2)  # test at the 95% level
    assert check.confirmed
    untouched = check.apply(_pose(0.0, 0.0)).covariance
    np.testing.assert_allclose(untouched, _pose(0.0, 0.0).covariance)
    # the map agrees within the claim (inside the 95% ellipsoid): nothing changes
    check.refined(_pose(0.0, 0.0), _pose(1.2, 12.0))
    assert check.confirmed
    # 3 m and 60 deg from a regressor that claimed 0.5 m and 5 deg: both blocks scaled by
    # the maximum-likelihood variance scale of that one difference (d^2 / sigma^2 / 3)
    check.refined(_pose(0.0, 0.0), _pose(3.0, 60.0))
    assert not check.confirmed
    cov = check.apply(_pose(10.0, 90.0)).covariance
    np.testing.assert_allclose(np.sqrt(cov[0, 0]), 3.0 / np.sqrt(3.0))
    np.testing.assert_allclose(np.degrees(np.sqrt(cov[5, 5])), 60.0 / np.sqrt(3.0))
    assert np.linalg.eigvalsh(cov).min() > 0
    # a failed refinement: heading unknown, the position as the worst recent verdict
    check.failed()
    cov = check.apply(_pose(0.0, 0.0)).covariance
    np.testing.assert_allclose(np.degrees(np.sqrt(np.diag(cov)[3:])), 180.0, rtol=1e-6)
    np.testing.assert_allclose(np.sqrt(cov[0, 0]), 3.0 / np.sqrt(3.0))
    # two agreeing refinements later (memory 2) the regressor's own claim stands again
    check.refined(_pose(0.0, 0.0), _pose(0.0, 0.0))
    assert not check.confirmed
    check.refined(_pose(0.0, 0.0), _pose(0.1, 1.0))
    assert check.confirmed
    # a singular claim is no claim: any difference widens it
    flat = _pose(0.0, 0.0)
    flat.covariance[:3, :3] = 0.0
    check.refined(flat, _pose(0.2, 0.0))
    assert not check.confirmed
