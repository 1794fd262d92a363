"""camera_pose_ros.geometry: quaternions, poses, Sim(3) fits and pose errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from camera_pose_ros.errors import AlignmentError
from camera_pose_ros.geometry import (
    Sim3,
    canonical_quat_wxyz,
    fit_sim3_robust,
    invert_pose,
    look_at_rotation,
    pose_matrix,
    quat_wxyz_from_rotmat,
    quat_wxyz_to_xyzw,
    quat_xyzw_to_wxyz,
    rotation_errors_deg,
    rotmat_from_quat_wxyz,
    umeyama_sim3,
    widen_rotation,
)


def random_sim3(rng: np.random.Generator) -> Sim3:
    return Sim3(float(rng.uniform(0.2, 5.0)), Rotation.random(random_state=rng).as_matrix(),
                rng.normal(0, 10, 3))


def test_quaternion_orders_round_trip():
    q_wxyz = np.array([0.9, 0.1, -0.3, 0.2])
    assert np.allclose(quat_wxyz_to_xyzw(q_wxyz), [0.1, -0.3, 0.2, 0.9])
    assert np.allclose(quat_xyzw_to_wxyz(quat_wxyz_to_xyzw(q_wxyz)), q_wxyz)


def test_rotation_matrix_round_trip_and_sign():
    rng = np.random.default_rng(1)
    rot = Rotation.random(5, random_state=rng).as_matrix()
    q = quat_wxyz_from_rotmat(rot)
    assert np.all(q[:, 0] >= 0)
    assert np.allclose(rotmat_from_quat_wxyz(q), rot)
    assert np.allclose(rotmat_from_quat_wxyz(-q), rot)  # q and -q: one rotation
    assert np.allclose(canonical_quat_wxyz(-2 * q), q)


def test_rotation_error_ignores_quaternion_sign():
    q = quat_wxyz_from_rotmat(Rotation.from_euler("z", 30, degrees=True).as_matrix())
    ident = np.array([1.0, 0, 0, 0])
    assert rotation_errors_deg(q, ident) == pytest.approx(30.0)
    assert rotation_errors_deg(-q, ident) == pytest.approx(30.0)
    assert rotation_errors_deg(q, q) == pytest.approx(0.0, abs=1e-5)


def test_invert_pose():
    rng = np.random.default_rng(2)
    pose = pose_matrix(Rotation.random(random_state=rng).as_matrix(), rng.normal(size=3))
    assert np.allclose(invert_pose(pose) @ pose, np.eye(4))


def test_look_at_is_optical_frame():
    rot = look_at_rotation([1.0, 0.0, 0.0])
    assert np.allclose(rot[:, 2], [1, 0, 0])  # z forward
    assert np.allclose(rot[:, 1], [0, 0, -1])  # y down
    assert np.allclose(rot[:, 0], [0, -1, 0])  # x right of the view
    assert np.linalg.det(rot) == pytest.approx(1.0)


def test_umeyama_exact_recovery():
    rng = np.random.default_rng(3)
    truth = random_sim3(rng)
    src = rng.normal(0, 3, (6, 3))
    est = umeyama_sim3(src, truth.apply(src))
    assert est.scale == pytest.approx(truth.scale, rel=1e-9)
    assert np.allclose(est.rotation, truth.rotation, atol=1e-9)
    assert np.allclose(est.translation, truth.translation, atol=1e-8)


def test_umeyama_with_noise_is_close():
    rng = np.random.default_rng(4)
    truth = random_sim3(rng)
    src = rng.normal(0, 5, (30, 3))
    dst = truth.apply(src) + rng.normal(0, 0.01, (30, 3))
    est = umeyama_sim3(src, dst)
    res = np.linalg.norm(est.apply(src) - dst, axis=1)
    assert np.sqrt(np.mean(res**2)) < 0.02
    assert est.scale == pytest.approx(truth.scale, rel=0.01)


def test_robust_fit_rejects_one_bad_point():
    rng = np.random.default_rng(5)
    truth = random_sim3(rng)
    src = rng.normal(0, 4, (6, 3))
    dst = truth.apply(src) + rng.normal(0, 0.01, (6, 3))
    dst[2] += [2.0, -1.5, 0.5]  # a control point measured at the wrong place
    plain = umeyama_sim3(src, dst)
    est, inliers = fit_sim3_robust(src, dst, inlier_threshold=0.1)
    assert inliers.tolist() == [True, True, False, True, True, True]
    good = np.flatnonzero(inliers)
    res = np.linalg.norm(est.apply(src[good]) - dst[good], axis=1)
    res_plain = np.linalg.norm(plain.apply(src[good]) - dst[good], axis=1)
    assert res.max() < 0.05 < res_plain.max()


def test_robust_fit_without_outliers_keeps_all():
    rng = np.random.default_rng(6)
    truth = random_sim3(rng)
    src = rng.normal(0, 4, (5, 3))
    _, inliers = fit_sim3_robust(src, truth.apply(src))
    assert inliers.all()


@pytest.mark.parametrize("n", [0, 1, 2])
def test_too_few_points_is_an_error(n):
    pts = np.random.default_rng(0).normal(size=(n, 3))
    with pytest.raises(AlignmentError, match="at least 3"):
        umeyama_sim3(pts, pts)


def test_collinear_points_are_an_error():
    t = np.linspace(0, 5, 6)[:, None]
    line = t * np.array([[1.0, 2.0, 0.5]]) + 3.0
    with pytest.raises(AlignmentError, match="collinear"):
        umeyama_sim3(line, line * 2)


def test_sim3_transform_pose_and_dict_round_trip():
    rng = np.random.default_rng(7)
    sim = random_sim3(rng)
    pose = pose_matrix(Rotation.random(random_state=rng).as_matrix(), rng.normal(size=3))
    out = sim.transform_pose(pose)
    assert np.allclose(out[:3, 3], sim.apply(pose[:3, 3]))
    assert np.allclose(out[:3, :3], sim.rotation @ pose[:3, :3])
    back = Sim3.from_dict(sim.to_dict())
    assert np.allclose(back.apply(pose[:3, 3]), out[:3, 3])


def _random_sim(seed: int, upright: bool = False):
    from camera_pose_ros.geometry import Sim3

    rng = np.random.default_rng(seed)
    rot = Rotation.from_euler("z", rng.uniform(-np.pi, np.pi)).as_matrix() if upright else \
        Rotation.random(random_state=seed).as_matrix()
    return Sim3(float(rng.uniform(0.3, 3.0)), rot, rng.uniform(-5, 5, 3))


def test_fit_sim3_samples_rejects_jumps_and_weighs_by_accuracy():
    from camera_pose_ros.geometry import fit_sim3_samples

    rng = np.random.default_rng(3)
    truth = _random_sim(3)
    src = rng.uniform(-4, 4, (300, 3)) * [1, 1, 0.05]  # a flat walk, as a robot's
    dst = truth.apply(src) + rng.normal(0, 0.03, (300, 3))
    jumps = np.zeros(300, bool)
    jumps[40:70] = jumps[200:230] = True  # 20 % of the samples 1 m off, in runs
    dst[jumps] += [1.0, 0.0, 0.0]
    sim, inliers = fit_sim3_samples(src, dst, inlier_threshold=0.25)
    assert not inliers[jumps].any() and inliers[~jumps].mean() > 0.98
    probe = rng.uniform(-4, 4, (50, 3))
    assert np.abs(sim.apply(probe) - truth.apply(probe)).max() < 0.05
    # weights: one accurate sample outweighs many rough ones near it
    w = np.full(300, 1.0)
    w[0] = 1e6
    dst2 = dst.copy()
    dst2[0] = truth.apply(src[:1])[0]
    sim_w, _ = fit_sim3_samples(src, dst2, weights_N=w, inlier_threshold=0.25)
    assert np.linalg.norm(sim_w.apply(src[:1]) - dst2[:1]) < 0.01


def test_upright_fit_keeps_the_vertical_and_recovers_yaw_and_scale():
    from camera_pose_ros.geometry import (
        fit_sim3_samples,
        umeyama_sim3_upright,
        up_direction_from_rotations,
    )

    truth = _random_sim(5, upright=True)
    tilt = Rotation.from_euler("xy", [25, -10], degrees=True).as_matrix()  # SfM's own tilt
    rng = np.random.default_rng(5)
    map_pts = rng.uniform(-5, 5, (200, 3)) * [1, 1, 0.01]
    # src = tilt^-1 (truth^-1 map)
    src = (((map_pts - truth.translation) @ truth.rotation) / truth.scale) @ tilt
    up_src = tilt.T @ np.array([0.0, 0.0, 1.0])
    sim = umeyama_sim3_upright(src, map_pts, up_src)
    assert np.allclose(sim.rotation @ up_src, [0, 0, 1], atol=1e-9)
    assert np.isclose(sim.scale, truth.scale) and np.allclose(sim.apply(src), map_pts)
    # the vertical from camera rotations, with a quarter of them wrong by 40 deg
    cams = Rotation.random(40, random_state=1).as_matrix()
    src_from_cam = np.einsum("ij,njk->nik", tilt.T, cams)  # the same cameras in the SfM frame
    noisy = cams.copy()
    noisy[:10] = Rotation.from_euler("x", 40, degrees=True).as_matrix() @ cams[:10]
    up, spread = up_direction_from_rotations(src_from_cam, noisy)
    assert np.degrees(np.arccos(np.clip(up @ up_src, -1, 1))) < 1e-6 and spread < 1e-6
    sim2, inl = fit_sim3_samples(src, map_pts, up_src=up, inlier_threshold=0.1)
    assert inl.all() and np.allclose(sim2.apply(src), map_pts, atol=1e-6)


def test_widen_rotation_raises_every_axis_keeps_the_rest_and_caps_at_180_deg():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(6, 6))
    cov = a @ a.T * 1e-3  # correlated, with position-rotation cross terms
    out = widen_rotation(cov, np.radians(20.0))
    assert np.all(np.linalg.eigvalsh(out[3:, 3:]) >= np.radians(20.0) ** 2 * (1 - 1e-9))
    np.testing.assert_allclose(out[:3, :], cov[:3, :])  # position and cross terms kept
    assert np.linalg.eigvalsh(out).min() > -1e-12  # still a covariance
    # an axis already wider than asked is kept
    wide = np.diag([1.0, 1.0, 1.0, np.radians(40.0) ** 2, 1e-4, 1e-4])
    np.testing.assert_allclose(np.degrees(np.sqrt(np.diag(widen_rotation(wide, np.radians(
        20.0)))[3:])), [40.0, 20.0, 20.0])
    # beyond 180 deg says no more than 180 deg (heading unknown); cross terms then go
    huge = cov.copy()
    huge[3:, 3:] += np.eye(3) * 100.0
    capped = widen_rotation(huge, np.pi)
    np.testing.assert_allclose(np.sqrt(np.linalg.eigvalsh(capped[3:, 3:])), np.pi, rtol=1e-6)
    assert not capped[:3, 3:].any() and np.linalg.eigvalsh(capped).min() > -1e-12
