"""Poses, quaternions, Sim(3)/SE(3) and alignment maths, pose errors. numpy/scipy only.

The camera model is :mod:`camera_pose_ros.camera`.

Conventions (see docs/ARCHITECTURE.md): a pose is named for what it maps, ``map_from_cam`` takes
camera coordinates to map coordinates. Quaternions are ``wxyz`` (scalar first) in CSV files
and in this module's ``*_wxyz`` names, ``xyzw`` in ROS messages and scipy. Convert only
through the helpers here. q and -q are the same rotation.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial.transform import Rotation

from camera_pose_ros.errors import AlignmentError

__all__ = [
    "Sim3",
    "quat_wxyz_to_xyzw",
    "quat_xyzw_to_wxyz",
    "canonical_quat_wxyz",
    "rotmat_from_quat_wxyz",
    "quat_wxyz_from_rotmat",
    "pose_matrix",
    "invert_pose",
    "look_at_rotation",
    "umeyama_sim3",
    "fit_sim3_robust",
    "check_not_degenerate",
    "position_errors",
    "rotation_errors_deg",
]


def quat_wxyz_to_xyzw(q_wxyz: np.ndarray) -> np.ndarray:
    """Reorder quaternion(s) from scalar-first (CSV, papers) to scalar-last (ROS, scipy)."""
    q = np.asarray(q_wxyz, dtype=float)
    return np.concatenate([q[..., 1:4], q[..., :1]], axis=-1)


def quat_xyzw_to_wxyz(q_xyzw: np.ndarray) -> np.ndarray:
    """Reorder quaternion(s) from scalar-last (ROS, scipy) to scalar-first (CSV, papers)."""
    q = np.asarray(q_xyzw, dtype=float)
    return np.concatenate([q[..., 3:4], q[..., :3]], axis=-1)


def canonical_quat_wxyz(q_wxyz: np.ndarray) -> np.ndarray:
    """Normalise quaternion(s) and pick the sign with w >= 0 (q and -q are one rotation)."""
    q = np.asarray(q_wxyz, dtype=float)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def rotmat_from_quat_wxyz(q_wxyz: np.ndarray) -> np.ndarray:
    """Rotation matrix (..., 3, 3) from scalar-first quaternion(s)."""
    return Rotation.from_quat(quat_wxyz_to_xyzw(q_wxyz)).as_matrix()


def quat_wxyz_from_rotmat(rot: np.ndarray) -> np.ndarray:
    """Canonical scalar-first quaternion(s) from rotation matrix (..., 3, 3)."""
    return canonical_quat_wxyz(quat_xyzw_to_wxyz(Rotation.from_matrix(rot).as_quat()))


def pose_matrix(rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """4x4 homogeneous matrix from a 3x3 rotation and a translation."""
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = trans
    return out


def invert_pose(pose_44: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (``a_from_b`` -> ``b_from_a``)."""
    rot = pose_44[:3, :3]
    out = np.eye(4)
    out[:3, :3] = rot.T
    out[:3, 3] = -rot.T @ pose_44[:3, 3]
    return out


def look_at_rotation(forward: np.ndarray, up: ArrayLike = (0.0, 0.0, 1.0)) -> np.ndarray:
    """``map_from_cam`` rotation of an optical-frame camera (x right, y down, z forward).

    Args:
        forward: viewing direction in the map frame (need not be unit length).
        up: the map's up direction; must not be parallel to ``forward``.
    """
    z = np.asarray(forward, dtype=float)
    z = z / np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, dtype=float))
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


@dataclass(frozen=True)
class Sim3:
    """Similarity transform ``dst = scale * rotation @ src + translation``."""

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    def apply(self, points_N3: np.ndarray) -> np.ndarray:
        """Transform points (N, 3) or (3,)."""
        return self.scale * np.asarray(points_N3) @ self.rotation.T + self.translation

    def transform_pose(self, src_from_cam: np.ndarray) -> np.ndarray:
        """Map a camera pose (4x4, ``src_from_cam``) to ``dst_from_cam`` (rigid, metric)."""
        return pose_matrix(
            self.rotation @ src_from_cam[:3, :3], self.apply(src_from_cam[:3, 3])
        )

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return {
            "scale": float(self.scale),
            "rotation": np.asarray(self.rotation).tolist(),
            "translation": np.asarray(self.translation).tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Sim3:
        """Inverse of :meth:`to_dict`."""
        return cls(
            float(data["scale"]),
            np.asarray(data["rotation"], dtype=float),
            np.asarray(data["translation"], dtype=float),
        )


def check_not_degenerate(points_N3: np.ndarray, *, min_spread: float = 1e-3) -> None:
    """Raise :class:`AlignmentError` unless there are >= 3 points that are not collinear.

    ``min_spread`` is the smallest allowed second singular value of the centred points, relative
    to the first: below it the points lie (almost) on a line and the rotation about it is free.
    """
    pts = np.asarray(points_N3, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise AlignmentError(f"control points must be N x 3, got shape {pts.shape}")
    if len(pts) < 3:
        raise AlignmentError(
            f"need at least 3 control points to fix a similarity transform, got {len(pts)}; "
            "add control points at well separated places"
        )
    sv = np.linalg.svd(pts - pts.mean(axis=0), compute_uv=False)
    if sv[0] <= 0 or sv[1] / sv[0] < min_spread:
        raise AlignmentError(
            "control points are collinear (or all at one place): the rotation about their line "
            "is undetermined; add a control point away from that line"
        )


def umeyama_sim3(src_N3: np.ndarray, dst_N3: np.ndarray, *, with_scale: bool = True) -> Sim3:
    """Least-squares similarity ``dst ~ s R src + t`` by SVD (Umeyama 1991).

    Args:
        src_N3: points in the source frame (e.g. SfM), at least 3, not collinear.
        dst_N3: the same points in the destination frame (e.g. the building map).
        with_scale: estimate the scale (SfM has none of its own); False gives SE(3).
    """
    src = np.asarray(src_N3, dtype=float)
    dst = np.asarray(dst_N3, dtype=float)
    if src.shape != dst.shape:
        raise AlignmentError(f"point sets differ in shape: {src.shape} vs {dst.shape}")
    check_not_degenerate(src)
    check_not_degenerate(dst)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2, 2] = -1.0
    rot = u @ sign @ vt
    var_s = (xs**2).sum() / len(src)
    scale = float(np.trace(np.diag(d) @ sign) / var_s) if with_scale else 1.0
    trans = mu_d - scale * rot @ mu_s
    return Sim3(scale, rot, trans)


def fit_sim3_robust(
    src_N3: np.ndarray,
    dst_N3: np.ndarray,
    *,
    inlier_threshold: float = 0.25,
    with_scale: bool = True,
) -> tuple[Sim3, np.ndarray]:
    """Similarity transform robust to bad control points.

    Fits all points; when there are at least 4 and one residual exceeds ``inlier_threshold``
    (metres, destination frame), every 3-point subset is tried (exhaustive RANSAC: control
    point sets are small), the largest consensus set is kept (ties broken by RMS) and the
    transform is refitted on it.

    Returns:
        The transform and a boolean inlier mask (all True when no point was rejected).
    """
    src = np.asarray(src_N3, dtype=float)
    dst = np.asarray(dst_N3, dtype=float)
    full = umeyama_sim3(src, dst, with_scale=with_scale)
    res = np.linalg.norm(full.apply(src) - dst, axis=1)
    n = len(src)
    if n < 4 or res.max() <= inlier_threshold:
        return full, np.ones(n, dtype=bool)
    best_mask, best_rms = None, np.inf
    combos: Iterable[tuple[int, ...]] = itertools.combinations(range(n), 3)
    if n > 12:  # C(n,3) grows fast; sample a fixed, seeded subset instead
        rng = np.random.default_rng(0)
        combos = (tuple(rng.choice(n, 3, replace=False)) for _ in range(500))
    for idx in combos:
        sub = list(idx)
        try:
            cand = umeyama_sim3(src[sub], dst[sub], with_scale=with_scale)
        except AlignmentError:
            continue
        r = np.linalg.norm(cand.apply(src) - dst, axis=1)
        mask = r <= inlier_threshold
        rms = float(np.sqrt(np.mean(r[mask] ** 2))) if mask.any() else np.inf
        if best_mask is None or mask.sum() > best_mask.sum() or (
            mask.sum() == best_mask.sum() and rms < best_rms
        ):
            best_mask, best_rms = mask, rms
    if best_mask is None or best_mask.sum() < 3:
        raise AlignmentError(
            "no three control points agree on one similarity transform within "
            f"{inlier_threshold} m; check the control points' stamps and coordinates"
        )
    refit = umeyama_sim3(src[best_mask], dst[best_mask], with_scale=with_scale)
    mask = np.linalg.norm(refit.apply(src) - dst, axis=1) <= inlier_threshold
    if mask.sum() >= 3 and not np.array_equal(mask, best_mask):
        refit = umeyama_sim3(src[mask], dst[mask], with_scale=with_scale)
        best_mask = mask
    return refit, best_mask


def position_errors(pred_N3: np.ndarray, gt_N3: np.ndarray) -> np.ndarray:
    """Euclidean position error per pose, metres."""
    return np.linalg.norm(np.asarray(pred_N3, float) - np.asarray(gt_N3, float), axis=-1)


def rotation_errors_deg(pred_wxyz_N4: np.ndarray, gt_wxyz_N4: np.ndarray) -> np.ndarray:
    """Angle of the relative rotation per pose, degrees; blind to the sign of q."""
    p = np.asarray(pred_wxyz_N4, float)
    g = np.asarray(gt_wxyz_N4, float)
    p = p / np.linalg.norm(p, axis=-1, keepdims=True)
    g = g / np.linalg.norm(g, axis=-1, keepdims=True)
    dot = np.clip(np.abs(np.sum(p * g, axis=-1)), 0.0, 1.0)
    return np.degrees(2.0 * np.arccos(dot))
