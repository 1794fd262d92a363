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
    "fit_sim3_samples",
    "pose_covariance_from_reprojection",
    "umeyama_sim3_upright",
    "up_direction_from_rotations",
    "check_not_degenerate",
    "position_errors",
    "rotation_errors_deg",
    "ROTATION_VARIANCE_CAP",
    "widen_rotation",
]

#: largest rotation variance a covariance claims: (180 deg)^2, a hair under (a rotation
#: standard deviation beyond 180 deg says no more: heading unknown, every error lies inside)
ROTATION_VARIANCE_CAP = float(np.pi ** 2 * (1.0 - 1e-9))


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


def _weights(weights_N: ArrayLike | None, n: int) -> np.ndarray:
    w = np.ones(n) if weights_N is None else np.asarray(weights_N, dtype=float).reshape(-1)
    if len(w) != n or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise AlignmentError("alignment weights must be finite, non-negative, one per point")
    return w / w.sum()


def umeyama_sim3(src_N3: np.ndarray, dst_N3: np.ndarray, *, with_scale: bool = True,
                 weights_N: ArrayLike | None = None) -> Sim3:
    """Least-squares similarity ``dst ~ s R src + t`` by SVD (Umeyama 1991).

    Args:
        src_N3: points in the source frame (e.g. SfM), at least 3, not collinear.
        dst_N3: the same points in the destination frame (e.g. the building map).
        with_scale: estimate the scale (SfM has none of its own); False gives SE(3).
        weights_N: per-point weights (e.g. inverse variances); None weighs all alike.
    """
    src = np.asarray(src_N3, dtype=float)
    dst = np.asarray(dst_N3, dtype=float)
    if src.shape != dst.shape:
        raise AlignmentError(f"point sets differ in shape: {src.shape} vs {dst.shape}")
    check_not_degenerate(src)
    check_not_degenerate(dst)
    w = _weights(weights_N, len(src))
    mu_s, mu_d = w @ src, w @ dst
    xs, xd = src - mu_s, dst - mu_d
    cov = (xd * w[:, None]).T @ xs
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2, 2] = -1.0
    rot = u @ sign @ vt
    var_s = float(w @ (xs**2).sum(axis=1))
    scale = float(np.trace(np.diag(d) @ sign) / var_s) if with_scale else 1.0
    trans = mu_d - scale * rot @ mu_s
    return Sim3(scale, rot, trans)


def _rotation_taking(a_3: np.ndarray, b_3: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector ``a`` to unit vector ``b``."""
    a = np.asarray(a_3, float) / np.linalg.norm(a_3)
    b = np.asarray(b_3, float) / np.linalg.norm(b_3)
    axis = np.cross(a, b)
    sin, cos = np.linalg.norm(axis), float(a @ b)
    if sin < 1e-12:
        if cos > 0:
            return np.eye(3)
        perp = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        return Rotation.from_rotvec(np.pi * perp / np.linalg.norm(perp)).as_matrix()
    return Rotation.from_rotvec(axis / sin * np.arctan2(sin, cos)).as_matrix()


def umeyama_sim3_upright(src_N3: np.ndarray, dst_N3: np.ndarray, up_src_3: ArrayLike, *,
                         weights_N: ArrayLike | None = None) -> Sim3:
    """Similarity whose rotation takes ``up_src`` to the destination's +z (4 degrees of freedom).

    For a ground robot's 2D map: the source frame's vertical is known (``up_src``, e.g. from
    :func:`up_direction_from_rotations`), so only scale, the rotation about the vertical
    (yaw) and the translation are fitted: scale and yaw by a weighted 2D Umeyama fit of the
    horizontal coordinates, the translation (z included) by weighted means. At least two
    points apart horizontally are needed.
    """
    src = np.asarray(src_N3, dtype=float).reshape(-1, 3)
    dst = np.asarray(dst_N3, dtype=float).reshape(-1, 3)
    if src.shape != dst.shape:
        raise AlignmentError(f"point sets differ in shape: {src.shape} vs {dst.shape}")
    up = np.asarray(up_src_3, dtype=float).reshape(3)
    if not np.all(np.isfinite(up)) or np.linalg.norm(up) < 1e-9:
        raise AlignmentError("the vertical direction of the reconstruction is undetermined")
    r0 = _rotation_taking(up, np.array([0.0, 0.0, 1.0]))
    p = src @ r0.T
    w = _weights(weights_N, len(src))
    mu_p, mu_d = w @ p, w @ dst
    xp, xd = (p - mu_p)[:, :2], (dst - mu_d)[:, :2]
    var_p = float(w @ (xp**2).sum(axis=1))
    if var_p < 1e-12 or float(w @ (xd**2).sum(axis=1)) < 1e-12:
        raise AlignmentError("the points are all at one place horizontally; the yaw and scale "
                             "are undetermined")
    u, d, vt = np.linalg.svd((xd * w[:, None]).T @ xp)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1.0
    yaw = np.eye(3)
    yaw[:2, :2] = u @ sign @ vt
    scale = float(np.trace(np.diag(d) @ sign) / var_p)
    rot = yaw @ r0
    return Sim3(scale, rot, mu_d - scale * rot @ (w @ src))


def up_direction_from_rotations(src_from_cam_N33: np.ndarray, dst_from_cam_N33: np.ndarray,
                                weights_N: ArrayLike | None = None, *,
                                outlier_deg: float = 10.0) -> tuple[np.ndarray, float]:
    """The destination's +z expressed in the source frame, from paired camera rotations.

    Each pair gives ``R_src_cam R_dst_cam^T e_z``; the weighted mean direction is taken, then
    retaken over the pairs within ``outlier_deg`` of it (twice), so a few wrong rotations
    (a relocalization jump) do not tilt it.

    Returns:
        The unit vector and the median angle (degrees) of the kept pairs from it.
    """
    rs = np.asarray(src_from_cam_N33, dtype=float).reshape(-1, 3, 3)
    rd = np.asarray(dst_from_cam_N33, dtype=float).reshape(-1, 3, 3)
    ups = np.einsum("nij,nkj,k->ni", rs, rd, np.array([0.0, 0.0, 1.0]))
    w = _weights(weights_N, len(ups))
    keep = np.ones(len(ups), bool)
    mean = np.zeros(3)
    for _ in range(3):
        mean = (w[keep, None] * ups[keep]).sum(axis=0)
        if np.linalg.norm(mean) < 1e-9:
            raise AlignmentError("the camera rotations disagree on the vertical direction")
        mean /= np.linalg.norm(mean)
        ang = np.degrees(np.arccos(np.clip(ups @ mean, -1.0, 1.0)))
        new_keep = ang <= outlier_deg
        if new_keep.sum() < max(2, len(ups) // 4):
            break
        keep = new_keep
    return mean, float(np.median(ang[keep]))


def fit_sim3_samples(
    src_N3: np.ndarray, dst_N3: np.ndarray, *, weights_N: ArrayLike | None = None,
    inlier_threshold: float | np.ndarray = 0.25, up_src: ArrayLike | None = None,
    iterations: int = 400, seed: int = 0,
) -> tuple[Sim3, np.ndarray]:
    """Similarity from many noisy samples (a robot's own localization), robust to jumps.

    RANSAC over minimal sets (3 points, or 2 with ``up_src``: see
    :func:`umeyama_sim3_upright`) keeps the transform that most samples agree with within
    ``inlier_threshold`` (metres, scalar or per sample); it is refitted by weighted least
    squares on its inliers until the inlier set stops changing. Deterministic for a seed.

    Returns:
        The transform and the boolean inlier mask.

    Raises:
        AlignmentError: fewer than 3 samples agree on any transform.
    """
    src = np.asarray(src_N3, dtype=float).reshape(-1, 3)
    dst = np.asarray(dst_N3, dtype=float).reshape(-1, 3)
    n = len(src)
    w = _weights(weights_N, n)
    thr = np.broadcast_to(np.asarray(inlier_threshold, dtype=float), (n,))

    def fit(idx: np.ndarray) -> Sim3:
        if up_src is not None:
            return umeyama_sim3_upright(src[idx], dst[idx], up_src, weights_N=w[idx])
        return umeyama_sim3(src[idx], dst[idx], weights_N=w[idx])

    if n < 3:
        raise AlignmentError(f"need at least 3 alignment samples, got {n}")
    rng = np.random.default_rng(seed)
    k = 2 if up_src is not None else 3
    best: np.ndarray | None = None
    best_cost = np.inf
    for _ in range(iterations):
        idx = rng.choice(n, size=k, replace=False)
        try:
            cand = fit(idx)
        except (AlignmentError, np.linalg.LinAlgError):
            continue
        res = np.linalg.norm(cand.apply(src) - dst, axis=1)
        mask = res <= thr
        cost = float(np.minimum(res / thr, 1.0).sum())  # MSAC: inliers count by residual
        if best is None or cost < best_cost:
            best, best_cost = mask, cost
    if best is None or best.sum() < 3:
        raise AlignmentError("fewer than 3 alignment samples agree on one similarity "
                             f"transform within {float(thr.max()):.2f} m")
    mask = best
    sim = fit(np.flatnonzero(mask))
    for _ in range(10):
        new = np.linalg.norm(sim.apply(src) - dst, axis=1) <= thr
        if new.sum() < 3 or np.array_equal(new, mask):
            break
        mask = new
        sim = fit(np.flatnonzero(mask))
    return sim, mask


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


def _project(points_N3: np.ndarray, rot_map_cam: np.ndarray, centre: np.ndarray,
             params: np.ndarray) -> np.ndarray:
    """Pixel coordinates of map points seen from ``map_from_cam`` (params fx, fy, cx, cy)."""
    cam = (points_N3 - centre) @ rot_map_cam
    return cam[:, :2] / cam[:, 2:3] * params[:2] + params[2:]


def pose_covariance_from_reprojection(points2d_N2: np.ndarray, points3d_N3: np.ndarray,
                                 rot_map_cam: np.ndarray, centre: np.ndarray,
                                 camera_params: np.ndarray) -> np.ndarray:
    """6x6 covariance (x, y, z, rotation about map x, y, z) of a camera pose from its inliers.

    Gauss-Newton: ``sigma^2 (J^T J)^-1`` with ``J`` the Jacobian of the reprojection
    residuals with respect to the camera centre and a small rotation about the map axes
    (``R = exp(d) R0``), and ``sigma^2`` the residuals' variance.
    """
    params = np.asarray(camera_params, float)
    base = _project(points3d_N3, rot_map_cam, centre, params)
    resid = (base - points2d_N2).ravel()
    eps = 1e-6
    jac = np.empty((resid.size, 6))
    for j in range(3):
        d = np.zeros(3)
        d[j] = eps
        jac[:, j] = ((_project(points3d_N3, rot_map_cam, centre + d, params) - base)
                     .ravel() / eps)
        turned = Rotation.from_rotvec(d).as_matrix() @ rot_map_cam  # R = exp(d) R0
        jac[:, 3 + j] = (_project(points3d_N3, turned, centre, params) - base).ravel() / eps
    dof = max(1, resid.size - 6)
    sigma2 = float(resid @ resid) / dof
    return sigma2 * np.linalg.pinv(jac.T @ jac)


def widen_rotation(cov_66: np.ndarray, sigma_rad: float) -> np.ndarray:
    """A copy of a REP 103 pose covariance whose rotation block claims at least ``sigma_rad``
    in every direction, and at most 180 deg (:data:`ROTATION_VARIANCE_CAP`).

    Raising the block adds a positive semi-definite matrix, so the result stays a valid
    covariance with its position-rotation cross terms; where the cap lowers an axis the cross
    terms are dropped (lowering one block alone could break positive semi-definiteness).
    """
    out = np.array(cov_66, dtype=float, copy=True)
    w, v = np.linalg.eigh(out[3:, 3:])
    if np.any(w > ROTATION_VARIANCE_CAP):
        out[:3, 3:] = 0.0
        out[3:, :3] = 0.0
    w = np.clip(w, min(float(sigma_rad) ** 2, ROTATION_VARIANCE_CAP), ROTATION_VARIANCE_CAP)
    out[3:, 3:] = (v * w) @ v.T
    return out
