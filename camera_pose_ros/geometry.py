"""Poses, quaternions, Sim(3)/SE(3) and alignment maths, pose errors. numpy/scipy only.

Conventions (see ARCHITECTURE.md): a pose is named for what it maps, ``map_from_cam`` takes
camera coordinates to map coordinates. Quaternions are ``wxyz`` (scalar first) in CSV files
and in this module's ``*_wxyz`` names, ``xyzw`` in ROS messages and scipy. Convert only
through the helpers here. q and -q are the same rotation.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from camera_pose_ros.errors import AlignmentError

__all__ = [
    "Sim3",
    "PinholeCamera",
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


def look_at_rotation(forward: np.ndarray, up: np.ndarray = (0.0, 0.0, 1.0)) -> np.ndarray:
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
    combos = itertools.combinations(range(n), 3)
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


def is_rectified_topic(image_topic: str) -> bool:
    """Whether an image topic carries rectified images by image_pipeline's naming.

    ``image_rect``, ``image_rect_color`` (and their ``/compressed``) are rectified;
    ``image_raw``, ``image_color``, ``image`` are not.
    """
    parts = [p for p in image_topic.split("/") if p and p != "compressed"]
    return bool(parts) and parts[-1].startswith("image_rect")


@dataclass(frozen=True)
class PinholeCamera:
    """Pinhole intrinsics in the ROS convention (pixel centres at integer coordinates).

    ``distortion`` holds CameraInfo's ``D`` for the ``plumb_bob`` / ``rational_polynomial``
    models (OpenCV's order ``k1, k2, p1, p2[, k3[, k4, k5, k6]]``); empty or all zero means
    an ideal pinhole. COLMAP puts the first pixel's centre at (0.5, 0.5): convert with
    :meth:`colmap_params`, whose model :meth:`colmap_model` names.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        d = tuple(float(v) for v in self.distortion)
        if len(d) not in (0, 4, 5, 8):
            raise ValueError(f"distortion needs 4, 5 or 8 coefficients (k1 k2 p1 p2 [k3 "
                             f"[k4 k5 k6]]), got {len(d)}")
        # one spelling for equal cameras: the shortest of 0, 4, 5, 8 coefficients
        while d and not any(d[{8: 5, 5: 4, 4: 0}[len(d)]:]):
            d = d[:{8: 5, 5: 4, 4: 0}[len(d)]]
        object.__setattr__(self, "distortion", d)

    def matrix(self) -> np.ndarray:
        """3x3 calibration matrix K."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1.0]])

    def _radial_tangential(self, x: np.ndarray, y: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """OpenCV's radial factor and tangential offsets at ideal coordinates ``x, y``."""
        k1, k2, p1, p2, k3, k4, k5, k6 = (*self.distortion, 0.0, 0.0, 0.0, 0.0)[:8]
        r2 = x * x + y * y
        radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
        return (radial, 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)

    def distort_normalized(self, xy_N2: np.ndarray) -> np.ndarray:
        """Ideal normalised image coordinates (x/z, y/z) to distorted ones (OpenCV model)."""
        xy = np.asarray(xy_N2, float)
        if not self.distortion:
            return xy.copy()
        radial, dx, dy = self._radial_tangential(xy[..., 0], xy[..., 1])
        return np.stack([xy[..., 0] * radial + dx, xy[..., 1] * radial + dy], axis=-1)

    def undistort_normalized(self, xy_N2: np.ndarray, iterations: int = 30) -> np.ndarray:
        """Inverse of :meth:`distort_normalized` by fixed-point iteration (as OpenCV does)."""
        xd = np.asarray(xy_N2, float)
        if not self.distortion:
            return xd.copy()
        x, y = xd[..., 0], xd[..., 1]
        for _ in range(iterations):
            radial, dx, dy = self._radial_tangential(x, y)
            x, y = (xd[..., 0] - dx) / radial, (xd[..., 1] - dy) / radial
        return np.stack([x, y], axis=-1)

    def camera_info_distortion(self) -> tuple[str, list[float]]:
        """CameraInfo's ``distortion_model`` and ``D`` for this camera (inverse of
        :meth:`from_camera_info`): rational_polynomial with 8 coefficients, else plumb_bob
        with 5."""
        if len(self.distortion) == 8:
            return "rational_polynomial", list(self.distortion)
        return "plumb_bob", list((*self.distortion, 0.0, 0.0, 0.0, 0.0, 0.0)[:5])

    def colmap_model(self) -> str:
        """COLMAP's camera model for these intrinsics: PINHOLE, OPENCV or FULL_OPENCV."""
        if not self.distortion:
            return "PINHOLE"
        return "OPENCV" if not any(self.distortion[4:]) else "FULL_OPENCV"

    def colmap_params(self) -> list[float]:
        """The parameters of :meth:`colmap_model` (``fx, fy, cx, cy`` then distortion)."""
        params = [self.fx, self.fy, self.cx + 0.5, self.cy + 0.5]
        model = self.colmap_model()
        if model == "OPENCV":
            return params + list(self.distortion[:4])
        if model == "FULL_OPENCV":
            return params + list(self.distortion) + [0.0] * (8 - len(self.distortion))
        return params

    @classmethod
    def from_camera_info(cls, width: int, height: int, k: Sequence[float], d: Sequence[float],
                         distortion_model: str, p: Sequence[float] = (),
                         rectified: bool = False) -> PinholeCamera:
        """Intrinsics from ``sensor_msgs/CameraInfo`` fields (K and P row-major, D, its model).

        ``rectified``: the images are ``image_rect`` (undistorted by image_proc), so their
        camera is P's left 3x3 without distortion (K when P is unset); else K with D.

        Raises:
            ValueError: no focal length, or a distortion model other than ``plumb_bob`` /
                ``rational_polynomial`` (an ``equidistant`` fisheye camera) with non-zero D.
        """
        if rectified:
            p = [float(v) for v in p]
            if len(p) == 12 and p[0] > 0 and p[5] > 0:
                return cls(int(width), int(height), p[0], p[5], p[2], p[6])
            d, distortion_model = (), ""
        k = [float(v) for v in k]
        if len(k) != 9 or k[0] <= 0 or k[4] <= 0:
            raise ValueError("CameraInfo has no focal length (K is unset)")
        d = tuple(float(v) for v in d)
        if any(d) and distortion_model not in ("plumb_bob", "rational_polynomial"):
            raise ValueError(f"CameraInfo distortion model '{distortion_model}' is not "
                             "supported (plumb_bob or rational_polynomial); rectify the images")
        if len(d) > 8 or len(d) in (1, 2, 3, 6, 7):
            raise ValueError(f"CameraInfo has {len(d)} distortion coefficients; "
                             "plumb_bob has 5, rational_polynomial 8")
        return cls(int(width), int(height), k[0], k[4], k[2], k[5], d)

    @classmethod
    def from_colmap(cls, model: str, width: int, height: int,
                    params: Sequence[float]) -> PinholeCamera:
        """Intrinsics from a COLMAP camera (radial models become plumb_bob coefficients).

        Raises:
            ValueError: a COLMAP model without an OpenCV equivalent (fisheye models).
        """
        p = [float(v) for v in params]
        if model == "SIMPLE_PINHOLE":
            f, cx, cy, dist = p[0], p[1], p[2], []
            fx = fy = f
        elif model in ("SIMPLE_RADIAL", "RADIAL"):
            fx = fy = p[0]
            cx, cy = p[1], p[2]
            dist = [p[3], p[4] if model == "RADIAL" else 0.0, 0.0, 0.0]
        elif model in ("PINHOLE", "OPENCV", "FULL_OPENCV"):
            fx, fy, cx, cy = p[:4]
            dist = p[4:]
        else:
            raise ValueError(f"COLMAP camera model {model} has no plumb_bob equivalent")
        return cls(int(width), int(height), fx, fy, cx - 0.5, cy - 0.5, tuple(dist))

    def scaled(self, width: int, height: int) -> PinholeCamera:
        """The same camera for an image resized to ``width`` x ``height``.

        Distortion acts on normalised coordinates, so its coefficients carry over.
        """
        sx, sy = width / self.width, height / self.height
        return PinholeCamera(
            width, height, self.fx * sx, self.fy * sy,
            (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5, self.distortion,
        )

    def to_dict(self) -> dict:
        """Plain-JSON form (``distortion`` only when the camera has some)."""
        out = {k: getattr(self, k) for k in ("width", "height", "fx", "fy", "cx", "cy")}
        if self.distortion:
            out["distortion"] = list(self.distortion)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> PinholeCamera:
        """Inverse of :meth:`to_dict`."""
        return cls(int(data["width"]), int(data["height"]), float(data["fx"]),
                   float(data["fy"]), float(data["cx"]), float(data["cy"]),
                   tuple(float(v) for v in data.get("distortion", ())))
