"""Geometric refinement of a regressed pose against the SfM map (the hybrid mode).

Given an RGB image, its regressed pose and the camera intrinsics:

1. pick mapped frames: the ``k_pose`` nearest the regressed pose that look the same way,
   plus the ``k_retrieval`` most similar by bag-of-words global descriptor (the regressor
   can be metres off in a new viewpoint; retrieval does not depend on it);
2. extract SIFT from the image (pycolmap, CPU) and match it to those frames' observations
   of 3D points (mutual nearest neighbour per 3D point, Lowe's ratio test);
3. solve the absolute pose with LO-RANSAC and refine it (pycolmap);
4. accept it when enough inliers support it and it lies within the regressed pose's own
   uncertainty (``gate_sigma``, at least ``gate_min_m``); its covariance comes from the
   inliers' reprojection residuals (Gauss-Newton, REP 103 order, map frame).

When a check fails the regressed pose comes back unchanged with the reason.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pycolmap
from scipy.spatial.transform import Rotation

from camera_pose_ros.config import from_dict
from camera_pose_ros.dataset.refmap import REFINEMENT_MAP, RefinementMap
from camera_pose_ros.dataset.sfm import bow_descriptor
from camera_pose_ros.errors import ConfigError, RefinementError
from camera_pose_ros.geometry import PinholeCamera, quat_wxyz_from_rotmat, rotmat_from_quat_wxyz

__all__ = ["RefineConfig", "RefineOutcome", "Refiner", "pose_covariance_from_inliers",
           "find_refinement_map"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefineConfig:
    """Refinement settings.

    Attributes:
        k_pose: mapped frames nearest the regressed pose.
        k_retrieval: mapped frames most similar by global descriptor.
        max_view_angle_deg: a frame chosen by pose must look within this angle of the prior.
        max_features: SIFT features extracted from the query image.
        first_octave: SIFT's first octave (-1 upsamples the image: slower, more features).
        ratio: Lowe's ratio test threshold (best / second-best distinct 3D point).
        max_error_px: RANSAC inlier threshold on the reprojection error.
        min_inliers: fewer inliers than this is a failure.
        min_inlier_ratio: inliers / matches below this is a failure.
        gate_sigma: the refined position must lie within this many standard deviations of
            the regressed one (its covariance's largest axis) ...
        gate_min_m: ... or this many metres, whichever is larger.
        trust_inliers: with at least this many inliers the map's evidence overrules the gate
            (a regressor can be metres off in a new viewpoint; 0: always gate).
        cov_floor_m: position standard deviation added for the map's own error (at least
            the map's alignment RMS, which measures it).
        cov_floor_deg: rotation standard deviation added likewise.
        cov_scale: multiplies the inlier covariance (calibration).
        num_threads: SIFT and RANSAC threads.
    """

    k_pose: int = 4
    k_retrieval: int = 4
    max_view_angle_deg: float = 60.0
    max_features: int = 2048
    first_octave: int = 0
    ratio: float = 0.85
    max_error_px: float = 6.0
    min_inliers: int = 30
    min_inlier_ratio: float = 0.15
    gate_sigma: float = 4.0
    gate_min_m: float = 2.0
    trust_inliers: int = 150
    cov_floor_m: float = 0.01
    cov_floor_deg: float = 0.1
    cov_scale: float = 1.0
    num_threads: int = 2

    def __post_init__(self) -> None:
        if self.k_pose < 0 or self.k_retrieval < 0 or self.k_pose + self.k_retrieval == 0:
            raise ConfigError("refinement needs k_pose + k_retrieval >= 1 mapped frames")
        if not 0.0 < self.ratio <= 1.0:
            raise ConfigError(f"refine ratio must be in (0, 1], got {self.ratio}")
        if self.min_inliers < 4:
            raise ConfigError("refine min_inliers must be at least 4 (a pose needs 4 points)")
        for name in ("max_error_px", "gate_sigma", "cov_scale", "max_view_angle_deg"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"refine {name} must be positive")

    @classmethod
    def from_dict(cls, data: dict) -> RefineConfig:
        """Build from a YAML mapping; unknown keys are an error."""
        return from_dict(cls, data)


@dataclass
class RefineOutcome:
    """What refinement did with one image.

    Attributes:
        success: the refined pose was accepted.
        position, quat_wxyz, covariance: the refined pose (map frame, REP 103 covariance),
            or the prior's when ``success`` is false.
        reason: why it failed ("" on success).
        matches, inliers: 2D-3D matches and RANSAC inliers.
        frames: names of the mapped frames matched against.
        latency_s: time spent refining.
        stages_s: seconds per stage (features, matching, pose).
    """

    success: bool
    position: np.ndarray
    quat_wxyz: np.ndarray
    covariance: np.ndarray
    reason: str = ""
    matches: int = 0
    inliers: int = 0
    frames: list[str] = field(default_factory=list)
    latency_s: float = 0.0
    stages_s: dict[str, float] = field(default_factory=dict)


def find_refinement_map(checkpoint: str | os.PathLike, provenance: dict | None = None,
                        explicit: str | os.PathLike | None = None) -> Path:
    """Where the refinement map of a checkpoint is.

    In order: ``explicit`` (a file, or a dataset directory holding one); a
    ``refinement_map.npz`` beside the checkpoint (copy it there when deploying); the map the
    checkpoint's provenance names; the provenance dataset's own.

    Raises:
        RefinementError: none of them exists (the message lists where it looked).
    """
    provenance = provenance or {}
    if explicit:
        path = Path(explicit)
        path = path / REFINEMENT_MAP if path.is_dir() else path
        if not path.is_file():
            raise RefinementError(f"no refinement map at {path}: build one with `camera-pose "
                                  "refinement-map --data DATA`")
        return path
    tried = [Path(checkpoint).parent / REFINEMENT_MAP]
    if provenance.get("refinement_map"):
        tried.append(Path(provenance["refinement_map"]))
    if provenance.get("dataset"):
        tried.append(Path(provenance["dataset"]) / REFINEMENT_MAP)
    for path in tried:
        if path.is_file():
            return path
    raise RefinementError("refinement needs the SfM map and none was found (looked at "
                          + ", ".join(str(p) for p in tried) + "); give the dataset with "
                          "--map DATA, or build it with `camera-pose refinement-map`")


def _project(points_N3: np.ndarray, rot_map_cam: np.ndarray, centre: np.ndarray,
             params: np.ndarray) -> np.ndarray:
    """Pixel coordinates (COLMAP convention) of map points seen from ``map_from_cam``."""
    cam = (points_N3 - centre) @ rot_map_cam
    return cam[:, :2] / cam[:, 2:3] * params[:2] + params[2:]


def pose_covariance_from_inliers(points2d_N2: np.ndarray, points3d_N3: np.ndarray,
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


class Refiner:
    """Refines regressed poses against one :class:`RefinementMap`."""

    def __init__(self, refinement_map: RefinementMap, config: RefineConfig = RefineConfig()
                 ) -> None:
        self.map = refinement_map
        self.config = config
        options = pycolmap.FeatureExtractionOptions()
        options.num_threads = config.num_threads
        options.sift.max_num_features = config.max_features
        options.sift.first_octave = config.first_octave
        self._sift = pycolmap.FeatureExtractor.create(options, device=pycolmap.Device.cpu)
        self._names = [str(n) for n in refinement_map.names]
        self._index = {n: i for i, n in enumerate(self._names)}

    def select_frames(self, position: np.ndarray, rot_map_cam: np.ndarray,
                      global_desc: np.ndarray | None, exclude: frozenset[int] = frozenset()
                      ) -> np.ndarray:
        """Indices of the mapped frames to match against (by pose, then by retrieval)."""
        cfg, m = self.config, self.map
        allowed = np.ones(len(m), bool)
        allowed[list(exclude)] = False
        chosen: list[int] = []
        if cfg.k_pose:
            cos = m.optical_axes @ rot_map_cam[:, 2]
            ok = allowed & (cos >= np.cos(np.radians(cfg.max_view_angle_deg)))
            dist = np.where(ok, np.linalg.norm(m.centres - position, axis=1), np.inf)
            chosen += [int(i) for i in np.argsort(dist)[:cfg.k_pose] if np.isfinite(dist[i])]
        if cfg.k_retrieval and global_desc is not None:
            score = np.where(allowed, m.global_desc @ global_desc, -np.inf)
            chosen += [int(i) for i in np.argsort(-score)[:cfg.k_retrieval]
                       if np.isfinite(score[i]) and i not in chosen]
        return np.array(chosen, dtype=np.int64)

    def _match(self, desc_q: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query index, 3D point index) pairs passing the ratio test and mutual check.

        The ratio test compares the best 3D point with the second-best *other* point (the
        frames share points, whose observations look alike). Observations are sorted by
        point, so each point's columns are one contiguous run of the similarity matrix.
        """
        point_idx, obs = self.map.observations(frames)
        if len(obs) == 0 or len(desc_q) == 0:
            return np.zeros(0, int), np.zeros(0, int)
        order = np.argsort(point_idx, kind="stable")
        point_idx, obs = point_idx[order], obs[order]
        run_start = np.searchsorted(point_idx, point_idx, "left")
        run_len = np.searchsorted(point_idx, point_idx, "right") - run_start
        sim = desc_q @ (obs.astype(np.float32) / 512.0).T  # about unit length: cosine
        rows = np.arange(len(sim))
        best = np.argmax(sim, axis=1)
        best_s = sim[rows, best]
        mutual = best_s >= sim.max(axis=0)[best]  # each is its match's best query feature
        lens = run_len[best]  # blank the best point's own columns, then take the maximum
        within = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        sim[np.repeat(rows, lens), np.repeat(run_start[best], lens) + within] = -1.0
        second_s = sim.max(axis=1)
        d1 = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * best_s))
        d2 = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * second_s))
        q = np.flatnonzero(mutual & (d1 < self.config.ratio * d2))
        pts = point_idx[best[q]]
        _, first = np.unique(pts, return_index=True)  # one query feature per 3D point
        return q[first], pts[first]

    def refine(self, image_rgb: np.ndarray, position: np.ndarray, quat_wxyz: np.ndarray,
               covariance: np.ndarray, camera: PinholeCamera | None = None,
               exclude: tuple[str, ...] = ()) -> RefineOutcome:
        """Refine one regressed pose; the prior comes back, with the reason, on failure.

        Args:
            image_rgb: (H, W, 3) uint8.
            position: (3,) the regressed camera centre, map frame.
            quat_wxyz: (4,) the regressed ``map_from_cam`` rotation.
            covariance: (6, 6) the regressed pose's covariance (REP 103 order).
            camera: the image's intrinsics; default: the mapped frames' camera scaled to
                the image size.
            exclude: names of mapped frames not to match against (evaluation of frames
                that are themselves in the map).
        """
        t0 = time.perf_counter()
        cfg = self.config
        prior = RefineOutcome(False, np.asarray(position, float).copy(),
                              np.asarray(quat_wxyz, float).copy(),
                              np.asarray(covariance, float).copy())
        h, w = image_rgb.shape[:2]
        if camera is None:
            camera = self.map.camera.scaled(w, h)
        elif (camera.width, camera.height) != (w, h):
            camera = camera.scaled(w, h)

        def fail(reason: str) -> RefineOutcome:
            prior.reason, prior.latency_s = reason, time.perf_counter() - t0
            return prior

        gray = np.ascontiguousarray(np.clip(
            image_rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            + 0.5, 0, 255).astype(np.uint8))
        kps, descs = self._sift.extract_from_uint8_array(gray)
        keypoints = np.array([(k.x, k.y) for k in kps], dtype=float).reshape(-1, 2)
        desc_q = np.asarray(descs.data, dtype=np.float32) / 512.0  # COLMAP's uint8 scale
        t1 = time.perf_counter()
        prior.stages_s["features"] = t1 - t0
        if len(desc_q) < cfg.min_inliers:
            return fail(f"only {len(desc_q)} SIFT features in the image")
        rot = rotmat_from_quat_wxyz(prior.quat_wxyz)
        gdesc = bow_descriptor(desc_q, self.map.vocabulary, self.map.idf)
        excluded = frozenset(self._index[n] for n in exclude if n in self._index)
        frames = self.select_frames(prior.position, rot, gdesc, excluded)
        prior.frames = [self._names[i] for i in frames]
        qi, pi = self._match(desc_q, frames)
        prior.matches = len(qi)
        t2 = time.perf_counter()
        prior.stages_s["matching"] = t2 - t1
        if len(qi) < cfg.min_inliers:
            return fail(f"{len(qi)} matches to the map (< {cfg.min_inliers})")
        params = np.array(camera.colmap_params())
        colmap_cam = pycolmap.Camera(model=camera.colmap_model(), width=w, height=h,
                                     params=params)
        est = pycolmap.AbsolutePoseEstimationOptions()
        est.ransac.max_error = cfg.max_error_px
        est.ransac.num_threads = cfg.num_threads
        est.ransac.random_seed = 0
        pts2d = keypoints[qi]
        pts3d = self.map.points[pi]
        result = pycolmap.estimate_and_refine_absolute_pose(pts2d, pts3d, colmap_cam, est)
        prior.stages_s["pose"] = time.perf_counter() - t2
        if result is None:
            return fail(f"absolute pose RANSAC found no pose from {len(qi)} matches")
        mask = np.asarray(result["inlier_mask"], bool)
        prior.inliers = int(mask.sum())
        if prior.inliers < cfg.min_inliers:
            return fail(f"{prior.inliers} inliers (< {cfg.min_inliers})")
        if prior.inliers < cfg.min_inlier_ratio * len(qi):
            return fail(f"inlier ratio {prior.inliers / len(qi):.2f} "
                        f"(< {cfg.min_inlier_ratio})")
        cam_from_map = np.eye(4)
        cam_from_map[:3, :] = result["cam_from_world"].matrix()
        rot_map_cam = cam_from_map[:3, :3].T
        centre = -rot_map_cam @ cam_from_map[:3, 3]
        pos_sd = np.sqrt(max(np.linalg.eigvalsh(prior.covariance[:3, :3]).max(), 0.0))
        gate = max(cfg.gate_min_m, cfg.gate_sigma * pos_sd)
        jump = float(np.linalg.norm(centre - prior.position))
        trusted = 0 < cfg.trust_inliers <= prior.inliers
        if not np.isfinite(jump) or (jump > gate and not trusted):
            return fail(f"refined pose {jump:.2f} m from the regressed one (gate {gate:.2f} m)")
        if jump > gate:
            log.debug("refined pose %.2f m from the regressed one, trusted on %d inliers",
                      jump, prior.inliers)
        inl2d = pts2d[mask]
        if camera.distortion:  # the covariance's model is the ideal pinhole
            inl2d = colmap_cam.cam_from_img(inl2d) * params[:2] + params[2:4]
        cov = cfg.cov_scale * pose_covariance_from_inliers(
            inl2d, pts3d[mask], rot_map_cam, centre, params[:4])
        cov[:3, :3] += np.eye(3) * max(cfg.cov_floor_m, self.map.alignment_rms_m) ** 2
        cov[3:, 3:] += np.eye(3) * np.radians(cfg.cov_floor_deg) ** 2
        return replace(prior, success=True, position=centre,
                       quat_wxyz=quat_wxyz_from_rotmat(rot_map_cam), covariance=cov,
                       latency_s=time.perf_counter() - t0)
