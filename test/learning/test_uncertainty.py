"""Covariance calibration: MC-dropout scales, the novelty index and the fitted model off the
training path (learning/uncertainty.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2

from camera_pose_ros.learning.uncertainty import (
    apply_calibration,
    coverage,
    fit_calibration,
    fit_novelty_index,
    mahalanobis_sq,
    novelty,
)


def _clusters(rng: np.random.Generator, n: int, dim: int = 40) -> np.ndarray:
    """Features of a walk: points along a smooth curve in feature space, a little noise."""
    t = np.linspace(0, 1, n)[:, None]
    basis = rng.normal(size=(3, dim))
    return np.sin(np.pi * t * [1, 2, 3]) @ basis + 0.02 * rng.normal(size=(n, dim))


def test_novelty_is_about_one_on_the_path_and_grows_off_it():
    rng = np.random.default_rng(0)
    train = _clusters(rng, 200)
    index = fit_novelty_index(train, dims=16)
    on_path = train[::7] + 0.02 * rng.normal(size=train[::7].shape)
    off_path = train[::7] + 0.5 * rng.normal(size=train[::7].shape)
    d_on, d_off = novelty(index, on_path), novelty(index, off_path)
    assert 0.2 < np.median(d_on) < 3.0
    assert np.median(d_off) > 5 * np.median(d_on)
    assert np.all(np.isfinite(d_on)) and np.all(d_on >= 0)


def test_calibration_learns_that_error_grows_with_novelty():
    """Errors drawn with a spread proportional to novelty (what a regressor does off its
    path), MC covariances that ignore it: the fitted model covers them at every novelty;
    the MC-only model is confidently wrong on the novel half."""
    rng = np.random.default_rng(1)
    n = 1500
    nov = np.concatenate([rng.uniform(0.5, 1.5, n // 2), rng.uniform(3, 12, n // 2)])
    sd = np.sqrt(0.05 ** 2 + (0.3 * nov) ** 2)  # metres, radians alike
    err = rng.normal(size=(n, 6)) * sd[:, None]
    mc = np.repeat((np.eye(6) * 0.02 ** 2)[None], n, 0)
    bound95 = chi2.ppf(0.95, 3)
    calib = fit_calibration(err, mc, samples=20, novelty_N=nov)
    assert calib["s_pos"] > 0.15 and calib["s_rot"] > 0.15
    d_pos, d_rot = mahalanobis_sq(err, apply_calibration(mc, calib, nov))
    novel = nov > 2
    for d in (d_pos, d_rot):
        for part in (novel, ~novel):
            assert 0.85 < np.mean(d[part] <= bound95) <= 1.0, np.mean(d[part] <= bound95)
    old = fit_calibration(err, mc, samples=20)  # one scale for all: wrong at both ends
    d_pos_old, _ = mahalanobis_sq(err, apply_calibration(mc, old))
    assert np.mean(d_pos_old[novel] > chi2.ppf(0.99, 3)) > 0.1


def test_calibration_without_novelty_reaches_nominal_coverage():
    rng = np.random.default_rng(2)
    n = 2000
    true_cov = np.diag([0.2, 0.1, 0.05, 0.02, 0.02, 0.01]) ** 2
    err = rng.multivariate_normal(np.zeros(6), true_cov, size=n)
    mc = np.repeat((true_cov * 0.05)[None], n, 0)  # MC spread 20x too small in variance
    calib = fit_calibration(err, mc, samples=20, floor_pos=1e-4, floor_rot=1e-5)
    assert "s_pos" not in calib
    d_pos, d_rot = mahalanobis_sq(err, apply_calibration(mc, calib))
    for d in (d_pos, d_rot):
        assert abs(np.mean(d <= chi2.ppf(0.6827, 3)) - 0.6827) < 0.05
        assert abs(np.mean(d <= chi2.ppf(0.9545, 3)) - 0.9545) < 0.03


def test_apply_calibration_ignores_a_missing_or_infinite_novelty_safely():
    mc = np.repeat((np.eye(6) * 0.01)[None], 3, 0)
    calib = {"k_pos": 2.0, "k_rot": 1.0, "floor_pos": 0.0, "floor_rot": 0.0,
             "s_pos": 0.5, "s_rot": 0.1}
    plain = apply_calibration(mc, calib)
    np.testing.assert_allclose(plain[:, 0, 0], 0.02)
    grown = apply_calibration(mc, calib, np.array([0.0, 2.0, np.inf]))
    np.testing.assert_allclose(grown[:2, 0, 0], [0.02, 0.02 + 1.0])
    assert np.all(np.isfinite(grown)) and grown[2, 0, 0] > 1e4  # unknown: very uncertain


def test_calibration_is_plain_data_a_checkpoint_can_hold(tmp_path):
    """torch.load(weights_only=True) refuses numpy scalars: the fitted calibration, novelty
    index included, must round-trip through it."""
    import torch

    rng = np.random.default_rng(3)
    err = rng.normal(size=(60, 6))
    mc = np.repeat(np.eye(6)[None], 60, 0)
    calib = fit_calibration(err, mc, samples=5, novelty_N=rng.uniform(0.5, 3, 60))
    calib["novelty"] = fit_novelty_index(rng.normal(size=(30, 8)))
    torch.save({"calibration": calib}, tmp_path / "c.pt")
    back = torch.load(tmp_path / "c.pt", weights_only=True)["calibration"]
    assert back["s_pos"] == calib["s_pos"] and back["novelty"]["scale"] > 0


def test_rotation_uncertainty_is_capped_at_half_a_turn():
    """A calibrated rotation sigma never exceeds 180 deg (heading unknown), and the cap
    keeps the covariance symmetric positive definite; position is untouched."""
    cov = np.repeat(np.diag([1.0, 1.0, 1.0, 50.0, 0.01, 30.0])[None], 2, 0)
    calib = {"k_pos": 1.0, "k_rot": 1.0, "floor_pos": 0.0, "floor_rot": 0.0}
    out = apply_calibration(cov, calib)
    w = np.linalg.eigvalsh(out[:, 3:, 3:])
    assert np.all(np.sqrt(w[:, -1]) <= np.pi) and np.all(w > 0)
    np.testing.assert_allclose(np.sqrt(w[:, 0]), 0.1)
    np.testing.assert_allclose(out[:, :3, :3], cov[:, :3, :3])
    np.testing.assert_allclose(out, np.swapaxes(out, 1, 2))


def test_calibration_matches_chi_square():
    rng = np.random.default_rng(0)
    n = 4000
    true_sigma = np.array([0.3, 0.3, 0.05, 0.02, 0.02, 0.05])
    err = rng.normal(size=(n, 6)) * true_sigma
    raw_cov = np.repeat(np.diag((true_sigma * 0.1) ** 2)[None], n, 0)  # 10x too confident
    calib = fit_calibration(err, raw_cov, samples=10, floor_pos=0.0, floor_rot=0.0)
    cov = apply_calibration(raw_cov, calib)
    cover = coverage(err, cov)
    for block in ("position", "rotation"):
        assert cover[f"{block}_inside_1sigma"] == pytest.approx(0.683, abs=0.03)
        assert cover[f"{block}_inside_2sigma"] == pytest.approx(0.954, abs=0.02)
    before = coverage(err, raw_cov)
    assert before["position_inside_1sigma"] < 0.1
