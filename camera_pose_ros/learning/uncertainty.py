"""Prediction uncertainty: MC-dropout covariance, calibrated on the validation split.

The backbone runs once; only the head is sampled ``samples`` times with dropout on, so the
cost is a few small matrix products. The spread of the samples gives a 6x6 covariance in
REP 103 order (x, y, z, then rotation about the map's x, y, z axes: rotation vectors of
``R_sample R_mean^T``). MC-dropout spreads are not calibrated by themselves: on the
validation split each block (position, rotation) is scaled, above a floor, so that the
median squared Mahalanobis distance of the true errors equals that of a chi-square with 3
degrees of freedom. Evaluation then reports how many test errors fall inside the 1-sigma and
2-sigma regions (68.3% and 95.4% expected).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from scipy.stats import chi2

from camera_pose_ros.geometry import quat_wxyz_to_xyzw

__all__ = [
    "mc_samples",
    "mean_and_covariance",
    "error_vectors",
    "mahalanobis_sq",
    "fit_calibration",
    "apply_calibration",
    "coverage",
]

CHI2_3_MEDIAN = float(chi2.ppf(0.5, 3))
SIGMA_LEVELS = {"1sigma": 0.6827, "2sigma": 0.9545}


@torch.no_grad()
def mc_samples(model: torch.nn.Module, feats_BD: torch.Tensor, samples: int) -> torch.Tensor:
    """(S, B, 7) metric poses from ``samples`` dropout passes of the head."""
    was_training = model.training
    model.eval()
    model.dropout.train()  # dropout only: batch-norm statistics stay frozen
    try:
        out = torch.stack([model.decode(model.head(feats_BD)) for _ in range(samples)])
    finally:
        model.train(was_training)
    return out


def _rotations(q_wxyz: np.ndarray) -> Rotation:
    return Rotation.from_quat(quat_wxyz_to_xyzw(q_wxyz))


def mean_and_covariance(samples_SB7: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean poses (B, 7) and covariances (B, 6, 6) of MC samples."""
    s, b, _ = samples_SB7.shape
    mean = np.zeros((b, 7))
    cov = np.zeros((b, 6, 6))
    for i in range(b):
        pos = samples_SB7[:, i, :3]
        rots = _rotations(samples_SB7[:, i, 3:])
        r_mean = rots.mean()
        delta = (rots * r_mean.inv()).as_rotvec()  # (S, 3), about the map axes
        e = np.concatenate([pos - pos.mean(0), delta], 1)
        cov[i] = e.T @ e / max(s - 1, 1)
        q = r_mean.as_quat()
        mean[i, :3] = pos.mean(0)
        mean[i, 3:] = np.sign(q[3] or 1.0) * np.array([q[3], q[0], q[1], q[2]])
    return mean, cov


def error_vectors(pred_N7: np.ndarray, gt_N7: np.ndarray) -> np.ndarray:
    """(N, 6) errors: position difference and rotation vector of R_pred R_gt^T."""
    d_rot = (_rotations(pred_N7[:, 3:]) * _rotations(gt_N7[:, 3:]).inv()).as_rotvec()
    return np.concatenate([pred_N7[:, :3] - gt_N7[:, :3], d_rot], 1)


def mahalanobis_sq(err_N6: np.ndarray, cov_N66: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared Mahalanobis distances of the position and the rotation blocks."""
    out = []
    for sl in (slice(0, 3), slice(3, 6)):
        e = err_N6[:, sl]
        c = cov_N66[:, sl, sl]
        out.append(np.einsum("ni,ni->n", e, np.linalg.solve(c, e[..., None])[..., 0]))
    return out[0], out[1]


def apply_calibration(cov_N66: np.ndarray, calib: dict) -> np.ndarray:
    """Calibrated covariances: each block scaled, above its floor; cross terms dropped."""
    out = np.zeros_like(cov_N66)
    eye = np.eye(3)
    out[:, :3, :3] = calib["k_pos"] * (cov_N66[:, :3, :3] + calib["floor_pos"] ** 2 * eye)
    out[:, 3:, 3:] = calib["k_rot"] * (cov_N66[:, 3:, 3:] + calib["floor_rot"] ** 2 * eye)
    return out


def fit_calibration(err_N6: np.ndarray, cov_N66: np.ndarray, *, samples: int,
                    floor_pos: float = 0.01, floor_rot: float = float(np.radians(0.2))) -> dict:
    """Scales that make validation Mahalanobis distances match chi-square(3) at the median."""
    calib = {"method": "mc_dropout", "samples": int(samples), "k_pos": 1.0, "k_rot": 1.0,
             "floor_pos": float(floor_pos), "floor_rot": float(floor_rot)}
    d_pos, d_rot = mahalanobis_sq(err_N6, apply_calibration(cov_N66, calib))
    calib["k_pos"] = float(np.median(d_pos) / CHI2_3_MEDIAN) if len(d_pos) else 1.0
    calib["k_rot"] = float(np.median(d_rot) / CHI2_3_MEDIAN) if len(d_rot) else 1.0
    return calib


def coverage(err_N6: np.ndarray, cov_N66: np.ndarray) -> dict:
    """Share of errors inside the 1- and 2-sigma regions, per block (expected 0.683/0.954)."""
    d_pos, d_rot = mahalanobis_sq(err_N6, cov_N66)
    out = {}
    for name, level in SIGMA_LEVELS.items():
        bound = chi2.ppf(level, 3)
        out[f"position_inside_{name}"] = float(np.mean(d_pos <= bound)) if len(d_pos) else 0.0
        out[f"rotation_inside_{name}"] = float(np.mean(d_rot <= bound)) if len(d_rot) else 0.0
        out[f"expected_{name}"] = level
    return out
