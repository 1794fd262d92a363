"""Honesty of covariances: coverage, outside-99% shares, confidently wrong frames.

Pure numpy: seeded Gaussian errors drawn from known covariances, hand-built cases.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from camera_pose_ros.metrics import (
    CHI2_3_99,
    block_mahalanobis_sq,
    covariance_columns,
    covariances_from_columns,
    honesty_summary,
    pose_error_vectors,
    refinement_summary,
)


def _random_spd(rng: np.random.Generator, scale: float) -> np.ndarray:
    a = rng.normal(size=(3, 3))
    return scale * (a @ a.T + 0.3 * np.eye(3))


def _samples(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 6) errors drawn from (N, 6, 6) block covariances (position m, rotation rad)."""
    cov = np.zeros((n, 6, 6))
    err = np.zeros((n, 6))
    for i in range(n):
        cp, cr = _random_spd(rng, 0.2), _random_spd(rng, 1e-3)
        cov[i, :3, :3], cov[i, 3:, 3:] = cp, cr
        err[i, :3] = rng.multivariate_normal(np.zeros(3), cp)
        err[i, 3:] = rng.multivariate_normal(np.zeros(3), cr)
    return err, cov


def test_gaussian_errors_from_their_own_covariance_cover_nominally():
    err, cov = _samples(np.random.default_rng(7), 4000)
    h = honesty_summary(err, cov)
    for block in ("position", "rotation"):
        assert h[f"coverage_68_{block}"] == pytest.approx(0.683, abs=0.03)
        assert h[f"coverage_95_{block}"] == pytest.approx(0.954, abs=0.015)
        assert h[f"outside_99_{block}"] == pytest.approx(0.01, abs=0.006)
    # either block outside: 1 - 0.99^2 for independent blocks
    assert h["outside_99_any"] == pytest.approx(0.0199, abs=0.008)
    assert h["invalid_covariance"] == 0.0
    assert h["frames"] == 4000


def test_a_scaled_down_covariance_is_mostly_outside_99():
    err, cov = _samples(np.random.default_rng(3), 1000)
    small = cov.copy()
    small[:, :3, :3] /= 25.0  # claims 5x smaller position sigma than the errors have
    h = honesty_summary(err, small)
    assert h["outside_99_position"] > 0.6
    assert h["coverage_68_position"] < 0.25
    assert h["outside_99_any"] >= h["outside_99_position"]
    # the rotation block was left honest
    assert h["outside_99_rotation"] < 0.03


def test_singular_and_non_finite_covariances_count_as_outside_never_nan():
    err = np.full((4, 6), 1e-3)
    cov = np.stack([np.eye(6) * 0.01] * 4)
    cov[0, :3, :3] = 0.0  # singular position block (a zero covariance)
    cov[1, 2, 2] = 0.0  # rank 2: z variance zero
    cov[2, 3, 3] = np.nan  # non-finite rotation block
    # frame 3 is honest: tiny error, 10 cm sigma
    d_pos, d_rot = block_mahalanobis_sq(err, cov)
    assert np.isinf(d_pos[0]) and np.isinf(d_pos[1]) and np.isfinite(d_pos[2:]).all()
    assert np.isinf(d_rot[2]) and np.isfinite(d_rot[[0, 1, 3]]).all()
    h = honesty_summary(err, cov)
    assert h["outside_99_position"] == pytest.approx(0.5)
    assert h["outside_99_rotation"] == pytest.approx(0.25)
    assert h["outside_99_any"] == pytest.approx(0.75)
    assert h["coverage_68_position"] == pytest.approx(0.5)
    assert h["invalid_covariance"] == pytest.approx(0.75)
    text = json.dumps(h, allow_nan=False)  # raises on NaN or infinity
    assert "NaN" not in text
    # a non-finite error vector (a NaN prediction) is outside as well
    err[3, 0] = np.nan
    assert honesty_summary(err, cov)["outside_99_any"] == pytest.approx(1.0)


def test_overconfident_counts_frames_over_1m_off_claiming_under_half_a_metre():
    err = np.zeros((5, 6))
    cov = np.zeros((5, 6, 6))
    cov[:, 3:, 3:] = np.eye(3) * 1e-4
    # 0: 2 m off, claims 0.3 m (largest axis)         -> confidently wrong
    # 1: 2 m off, claims 0.2 m on x but 0.8 m on y     -> not (largest sigma 0.8 m)
    # 2: 0.5 m off, claims 0.1 m                      -> not (not over 1 m off)
    # 3: 1.5 m off along z, claims 0.49 m             -> confidently wrong
    # 4: 3 m off, singular covariance (claims 0 m)    -> confidently wrong
    err[0, 0], err[1, 1], err[2, 0], err[3, 2], err[4, 0] = 2.0, 2.0, 0.5, 1.5, 3.0
    cov[0, :3, :3] = np.diag([0.3, 0.1, 0.1]) ** 2
    cov[1, :3, :3] = np.diag([0.2, 0.8, 0.1]) ** 2
    cov[2, :3, :3] = np.diag([0.1, 0.1, 0.1]) ** 2
    cov[3, :3, :3] = np.diag([0.2, 0.2, 0.49]) ** 2
    h = honesty_summary(err, cov)
    assert h["overconfident_1m_0.5m"] == pytest.approx(3 / 5)
    assert h["wrong_1m"] == pytest.approx(4 / 5)
    assert h["median_claimed_sigma_m"] == pytest.approx(0.3)


def test_empty_input_gives_zeros_not_nan():
    h = honesty_summary(np.zeros((0, 6)), np.zeros((0, 6, 6)))
    assert h["frames"] == 0
    json.dumps(h, allow_nan=False)


def test_error_vectors_are_position_difference_and_map_frame_rotation_vector():
    gt_q = Rotation.from_euler("xyz", [10, -20, 30], degrees=True)
    d = Rotation.from_rotvec([0.0, 0.0, 0.1])  # 0.1 rad about the map's z axis
    pred_q = d * gt_q
    xyzw = np.stack([pred_q.as_quat(), gt_q.as_quat()])
    wxyz = np.concatenate([xyzw[:, 3:], xyzw[:, :3]], 1)
    e = pose_error_vectors(np.array([[1.0, 2.0, 3.0]]), -wxyz[:1],  # sign-blind
                           np.array([[1.5, 2.0, 2.0]]), wxyz[1:])
    assert np.allclose(e[0, :3], [-0.5, 0.0, 1.0])
    assert np.allclose(e[0, 3:], [0.0, 0.0, 0.1], atol=1e-9)


def test_covariance_columns_round_trip():
    rng = np.random.default_rng(0)
    cov = np.stack([np.block([[_random_spd(rng, 1.0), np.zeros((3, 3))],
                              [np.zeros((3, 3)), _random_spd(rng, 0.1)]]) for _ in range(3)])
    cols = covariance_columns(cov)
    assert len(cols) == 21 and set(cols) >= {"cov_00", "cov_05", "cov_55"}
    back = covariances_from_columns(cols)
    assert np.allclose(back, cov, rtol=1e-8)
    assert covariances_from_columns({"refined": ["1"]}) is None
    cols["cov_11"][1] = "nan"
    assert np.isnan(covariances_from_columns(cols)[1, 1, 1])


def test_refinement_summary_false_acceptance_among_accepted():
    t_err = np.array([0.01, 0.02, 0.30, 2.0, 0.01])
    accepted = np.array([True, True, True, False, False])
    r = refinement_summary(t_err, accepted)
    assert r["refined_share"] == pytest.approx(3 / 5)
    assert r["accepted_frames"] == 3
    assert r["false_acceptance_25cm"] == pytest.approx(1 / 3)
    none = refinement_summary(t_err, np.zeros(5, bool))
    assert none["false_acceptance_25cm"] == 0.0 and none["accepted_frames"] == 0


def test_chi2_bound_is_the_99_percent_quantile_of_3_dof():
    assert CHI2_3_99 == pytest.approx(11.345, abs=1e-3)
