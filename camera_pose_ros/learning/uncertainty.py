"""Prediction uncertainty: MC-dropout covariance that grows off the training path.

The backbone runs once; only the head is sampled ``samples`` times with dropout on, so the
cost is a few small matrix products. The spread of the samples gives a 6x6 covariance in
REP 103 order (x, y, z, then rotation about the map's x, y, z axes: rotation vectors of
``R_sample R_mean^T``).

MC-dropout spreads are not calibrated by themselves, and they do not know when an image is
unlike anything trained on: a regressor asked about a new path answers with a training
pose, metres off, as confidently as ever. So each block (position, rotation) gets

    Sigma = k * (Sigma_mc + floor^2 I) + (s * novelty)^2 I

where ``novelty`` is the distance of the image's (standardised, PCA-reduced) features to
the nearest training image's, in units of the typical distance between neighbouring
training images (about 1 on the training path, larger off it). ``k`` and ``s`` are fitted
on a calibration set that is off the training path the way real queries are: the
validation blocks (whole stretches of the walk never trained on), plus the same frames
turned 15-25 deg about the camera centre (exact poses by homography) and under other
light. The fit asks for the right coverage at 68% and 95% in each third of the
calibration set's novelty range (so the most novel views are covered too, not outvoted by
the familiar ones); then both are grown together towards at most 1% of the calibration
errors outside the 99% ellipsoid (the errors' tails are heavier than a Gaussian's): for the
position as long as the 68% ellipsoid holds at most 75% of them, for the rotation without
that limit (off its path a regressor's heading can be wrong by anything). Evaluation reports
coverage and the share of errors outside the 99% ellipsoid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from scipy.stats import chi2

from camera_pose_ros.geometry import ROTATION_VARIANCE_CAP, quat_wxyz_to_xyzw

if TYPE_CHECKING:
    from camera_pose_ros.learning.networks import PoseRegressor

__all__ = [
    "fit_novelty_index",
    "novelty",
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
def mc_samples(model: PoseRegressor, feats_BD: torch.Tensor, samples: int) -> torch.Tensor:
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


def fit_novelty_index(feats_ND: np.ndarray, dims: int = 64) -> dict:
    """Index of the training images' features for :func:`novelty`.

    Args:
        feats_ND: standardised features of the training images (the head's input after
            its normalisation), one row per image, no augmentation.
        dims: PCA dimensions kept (fewer when there are fewer images).

    Returns:
        Plain data for the checkpoint: ``mean`` (D,), ``components`` (k, D), ``train``
        (N, k) float32 tensors and ``scale``: the median distance of a training image to
        its nearest other training image.
    """
    x = np.asarray(feats_ND, np.float64)
    mean = x.mean(0)
    k = int(max(1, min(dims, len(x) - 1, x.shape[1])))
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = vt[:k]
    train = (x - mean) @ comps.T
    d = np.linalg.norm(train[:, None] - train[None], axis=2) if len(train) <= 4000 else None
    if d is None:  # a big walk: a sample of images against all
        idx = np.random.default_rng(0).choice(len(train), 2000, replace=False)
        d = np.linalg.norm(train[idx][:, None] - train[None], axis=2)
        d[np.arange(len(idx)), idx] = np.inf
    else:
        np.fill_diagonal(d, np.inf)
    scale = float(np.median(d.min(axis=1))) if len(train) > 1 else 1.0
    return {"mean": torch.tensor(mean, dtype=torch.float32),
            "components": torch.tensor(comps, dtype=torch.float32),
            "train": torch.tensor(train, dtype=torch.float32),
            "scale": max(scale, 1e-9)}


def novelty(index: dict, feats_BD: np.ndarray) -> np.ndarray:
    """(B,) distance of each image's features to the nearest training image, in units of
    the index's ``scale`` (about 1 on the training path)."""
    mean = np.asarray(index["mean"], np.float64)
    comps = np.asarray(index["components"], np.float64)
    train = np.asarray(index["train"], np.float64)
    z = (np.asarray(feats_BD, np.float64) - mean) @ comps.T
    d2 = ((z * z).sum(1)[:, None] - 2.0 * z @ train.T + (train * train).sum(1)[None])
    d = np.sqrt(np.maximum(d2.min(axis=1), 0.0)) / float(index["scale"])
    return np.where(np.isfinite(d), d, np.inf)


def apply_calibration(cov_N66: np.ndarray, calib: dict,
                      novelty_N: np.ndarray | None = None) -> np.ndarray:
    """Calibrated covariances: each block scaled above its floor, plus the novelty term
    (``s_pos``, ``s_rot`` times the novelty, as a standard deviation); cross terms dropped.
    Without ``novelty_N`` (or a calibration that has no novelty term) none is added."""
    out = np.zeros_like(cov_N66)
    eye = np.eye(3)
    out[:, :3, :3] = calib["k_pos"] * (cov_N66[:, :3, :3] + calib["floor_pos"] ** 2 * eye)
    out[:, 3:, 3:] = calib["k_rot"] * (cov_N66[:, 3:, 3:] + calib["floor_rot"] ** 2 * eye)
    if novelty_N is not None and ("s_pos" in calib or "s_rot" in calib):
        nov = np.nan_to_num(np.asarray(novelty_N, float), nan=1e3, posinf=1e3)
        out[:, :3, :3] += (calib.get("s_pos", 0.0) * nov)[:, None, None] ** 2 * eye
        out[:, 3:, 3:] += (calib.get("s_rot", 0.0) * nov)[:, None, None] ** 2 * eye
    # a rotation standard deviation beyond 180 deg says no more than 180 deg (heading
    # unknown; every rotation error lies inside it): cap the rotation block there
    rot = out[:, 3:, 3:]
    big = np.linalg.eigvalsh(rot)[:, -1] > ROTATION_VARIANCE_CAP
    if big.any():
        w, v = np.linalg.eigh(rot[big])
        out[big, 3:, 3:] = np.einsum("nij,nj,nkj->nik", v,
                                     np.minimum(w, ROTATION_VARIANCE_CAP), v)
    return out


def _fit_block(err_N3: np.ndarray, cov_N33: np.ndarray, floor: float,
               nov_N: np.ndarray | None, max_inside_68: float = 1.0) -> tuple[float, float]:
    """(k, s) of one block: coverage right at every novelty, then the tail guard.

    A grid over ``k`` and ``s`` (``s`` = 0 included) picks the pair whose 68% and 95%
    ellipsoids hold the right share of the calibration errors in each third of the
    novelty range (a maximum-likelihood fit lets the many familiar views outvote the few
    novel ones, which are exactly those a query off the path resembles).
    """
    eye = np.eye(3)
    base = cov_N33 + floor ** 2 * eye
    nov = np.zeros(len(err_N3)) if nov_N is None else np.minimum(nov_N, 1e3)
    levels = np.array([SIGMA_LEVELS["1sigma"], SIGMA_LEVELS["2sigma"]])
    bounds = chi2.ppf(levels, 3)

    def maha(k: float, s: float) -> np.ndarray:
        c = k * base + (s * nov)[:, None, None] ** 2 * eye
        return np.einsum("ni,ni->n", err_N3, np.linalg.solve(c, err_N3[..., None])[..., 0])

    scale = np.sqrt(float(np.median(np.einsum("ni,ni->n", err_N3, err_N3))) / 3) + 1e-9
    k_unit = scale ** 2 / max(float(np.median(np.trace(base, axis1=1, axis2=2))) / 3, 1e-18)
    bins = (np.digitize(nov, np.quantile(nov, [1 / 3, 2 / 3])) if nov_N is not None
            else np.zeros(len(nov), int))
    s_grid = np.r_[0.0, np.geomspace(1e-3, 10.0, 31) * scale] if nov_N is not None else [0.0]
    def search(k_grid: np.ndarray, s_grid: np.ndarray | list[float], best: tuple) -> tuple:
        for k in k_grid:
            for s_ in s_grid:
                m = maha(k, s_)
                obj = sum(float(((np.mean(m[bins == b, None] <= bounds, 0) - levels) ** 2)
                                .sum()) for b in np.unique(bins))
                if obj < best[0] - 1e-12:
                    best = (obj, float(k), float(s_))
        return best

    best = search(np.geomspace(1e-3, 1e3, 31) * k_unit, s_grid, (np.inf, k_unit, 0.0))
    fine = np.geomspace(1 / 1.6, 1.6, 15)  # one coarse step either way, finer
    best = search(best[1] * fine, best[2] * fine if best[2] > 0 else [0.0], best)
    _, k, s = best
    m = maha(k, s)
    g = 1.0
    # ... then grown towards at most 1% outside the 99% ellipsoid (errors have heavier tails
    # than a Gaussian), as far as the 68% ellipsoid holds at most ``max_inside_68``
    g_tail = float(np.quantile(m, 0.99) / chi2.ppf(0.99, 3))
    bound68 = chi2.ppf(SIGMA_LEVELS["1sigma"], 3)
    for g_try in np.geomspace(g, max(g, g_tail), 25):
        if np.mean(m / g_try <= bound68) > max_inside_68:
            break
        g = float(g_try)
    return float(k * g), float(s * np.sqrt(g))  # plain floats: checkpoints hold plain data


def fit_calibration(err_N6: np.ndarray, cov_N66: np.ndarray, *, samples: int,
                    novelty_N: np.ndarray | None = None, floor_pos: float = 0.01,
                    floor_rot: float = float(np.radians(0.2))) -> dict:
    """Calibration of MC-dropout covariances on a calibration set's errors.

    With ``novelty_N`` the novelty term is fitted too (see the module docstring); without
    it only the scales ``k_pos``, ``k_rot``.
    """
    calib = {"method": "mc_dropout_novelty" if novelty_N is not None else "mc_dropout",
             "samples": int(samples), "k_pos": 1.0, "k_rot": 1.0,
             "floor_pos": float(floor_pos), "floor_rot": float(floor_rot)}
    if len(err_N6) < 3:
        return calib
    # position: the tail guard stops where the 68% ellipsoid would hold more than 75%;
    # rotation: a regressor off its path can be turned by anything, so guard the tail fully
    calib["k_pos"], s_pos = _fit_block(err_N6[:, :3], cov_N66[:, :3, :3], floor_pos, novelty_N,
                                       max_inside_68=0.75)
    calib["k_rot"], s_rot = _fit_block(err_N6[:, 3:], cov_N66[:, 3:, 3:], floor_rot, novelty_N)
    if novelty_N is not None:
        calib["s_pos"], calib["s_rot"] = s_pos, s_rot
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
