"""Geometric refinement of a regressed pose against the SfM map (the hybrid mode).

Given an RGB image, its regressed pose and the camera intrinsics:

1. pick mapped frames: the ``k_pose`` nearest the regressed pose that look the same way,
   plus the ``k_retrieval`` most similar by bag-of-words global descriptor (the regressor
   can be metres off in a new viewpoint; retrieval does not depend on it);
2. extract SIFT from the image (pycolmap, CPU) and match it to the descriptors of the 3D
   points those frames observe (one per point: mutual nearest neighbour, Lowe's ratio test);
3. solve the absolute pose with LO-RANSAC and refine it (pycolmap);
4. verify it on the map's own evidence, not on the regressor: match again against the
   mapped frames nearest the *solution* and those that see most of its view, and solve
   again; accept when both solutions agree,
   enough inliers support it and they spread over the image. Its covariance comes
   from the inliers' reprojection residuals (Gauss-Newton, REP 103 order, map frame), plus
   the map's own error and the two solutions' disagreement.

A pose that the map refuses does not end the search: the next ``k_retrieval`` most similar
frames are tried, up to ``retrieval_rounds`` (``blind_retrieval_rounds`` without a prior),
unless the image fits a look-alike place (searching on would pick one of the twins).
When no pose passes, the regressed pose comes back with the reason (the strongest refused
pose's, when there was one).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import pycolmap
from scipy.spatial.transform import Rotation

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.config import from_dict
from camera_pose_ros.errors import ConfigError, RefinementError
from camera_pose_ros.geometry import (
    pose_covariance_from_reprojection,
    quat_wxyz_from_rotmat,
    rotmat_from_quat_wxyz,
    widen_rotation,
)
from camera_pose_ros.io.refmap import REFINEMENT_MAP, RefinementMap
from camera_pose_ros.io.retrieval import bow_descriptor

__all__ = ["RefineConfig", "RefineOutcome", "Refiner", "QueryFeatures",
           "pose_covariance_from_inliers", "find_refinement_map"]

#: the refiner's name of :func:`~camera_pose_ros.geometry.pose_covariance_from_reprojection`
pose_covariance_from_inliers = pose_covariance_from_reprojection


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefineConfig:
    """Refinement settings.

    Attributes:
        k_pose: mapped frames nearest the regressed pose.
        k_retrieval: mapped frames most similar by global descriptor.
        retrieval_rounds: when no pose is found, try the next ``k_retrieval`` most similar
            frames, up to this many rounds in all.
        blind_retrieval_rounds: the same without a prior (floor recognition, a non-finite
            regressed pose), where retrieval alone must find the frames.
        max_view_angle_deg: a frame chosen by pose must look within this angle of the prior.
        max_features: SIFT features extracted from the query image.
        first_octave: SIFT's first octave (-1 upsamples the image: slower, more features).
        max_image_size: SIFT sees the query image shrunk to at most this many pixels on its
            longer side (0: as it comes); the keypoints are scaled back, so PnP and the
            covariance use the full-size camera. SIFT's time grows with the pixel count.
        ratio: Lowe's ratio test threshold (best / second-best distinct 3D point).
        max_error_px: RANSAC inlier threshold on the reprojection error.
        min_inliers: fewer inliers than this is a failure.
        min_inlier_ratio: inliers / matches below this is a failure.
        min_spread: share of the cells of a 4x4 grid over the image that must hold an
            inlier (a pose carried by one poster or one corner is not accepted).
        verify: match again against the ``k_verify`` mapped frames nearest the solution that
            look its way, and the ``k_verify`` that see most of what a camera at the solution
            would see (:meth:`Refiner.verification_frames`), and solve again; the two
            solutions must agree within ``verify_max_m`` and ``verify_max_deg``.
        lookalike_check: after the checks above, look for the inliers' twins: map points over
            ``lookalike_radius_m`` away whose descriptors are nearly the same (repeated
            rooms, posters). When at least ``lookalike_ratio`` of the inliers have one and
            the image's keypoints put on the twins give a pose of their own, over
            ``lookalike_radius_m`` away with at least ``lookalike_ratio`` times the inliers,
            the image is ambiguous (each place passes the verification on its own): a
            failure, not a guess.
        lookalike_radius_m: see ``lookalike_check``.
        lookalike_ratio: see ``lookalike_check``.
        gate_sigma: 0 (default): the regressed pose only picks candidate frames. Above 0 the
            refined position must also lie within this many standard deviations of the
            regressed one (its covariance's largest axis) ...
        gate_min_m: ... or this many metres, whichever is larger. Off by default: a
            regressor can be metres off in a new viewpoint while the map is right.
        cov_floor_m: position standard deviation added for the map's own error (at least
            the map's alignment RMS, which measures it).
        cov_floor_deg: rotation standard deviation added likewise.
        cov_scale: multiplies the inlier covariance (calibration).
        disagreement_cov: add the verification's disagreement (the distance and angle
            between the solution and the one from the frames around it, two estimates from
            different parts of the map) to the covariance, as a standard deviation per axis.
            The inlier covariance alone knows only the image noise; where the map is locally
            off (off the mapped path, its points seen from few views), the two solutions
            differ by about as much as the pose is off.
        unrefined_rotation_sigma_deg: when refinement fails, the prior goes back with a
            rotation standard deviation of at least this (180, the default: heading unknown;
            0 keeps the prior's covariance). The frames the map cannot confirm are those off
            the mapped path, where a regressor trained on the walk is least right about the
            heading (on an unseen off-path walk its unrefined rotations were 95-155 deg off
            while claiming 26-33 deg).
        num_threads: SIFT and RANSAC threads.
    """

    k_pose: int = 4
    k_retrieval: int = 6
    retrieval_rounds: int = 2
    blind_retrieval_rounds: int = 8
    max_view_angle_deg: float = 60.0
    max_features: int = 2048
    first_octave: int = 0
    max_image_size: int = 0
    ratio: float = 0.85
    max_error_px: float = 6.0
    min_inliers: int = 30
    min_inlier_ratio: float = 0.15
    min_spread: float = 0.25
    verify: bool = True
    k_verify: int = 4
    verify_max_m: float = 0.15
    verify_max_deg: float = 2.0
    lookalike_check: bool = True
    lookalike_radius_m: float = 2.0
    lookalike_ratio: float = 0.5
    gate_sigma: float = 0.0
    gate_min_m: float = 2.0
    cov_floor_m: float = 0.01
    cov_floor_deg: float = 0.1
    cov_scale: float = 1.0
    disagreement_cov: bool = True
    unrefined_rotation_sigma_deg: float = 180.0
    num_threads: int = 2

    def __post_init__(self) -> None:
        if self.k_pose < 0 or self.k_retrieval < 0 or self.k_pose + self.k_retrieval == 0:
            raise ConfigError("refinement needs k_pose + k_retrieval >= 1 mapped frames")
        if not 0.0 < self.ratio <= 1.0:
            raise ConfigError(f"refine ratio must be in (0, 1], got {self.ratio}")
        if self.min_inliers < 4:
            raise ConfigError("refine min_inliers must be at least 4 (a pose needs 4 points)")
        for name in ("max_error_px", "cov_scale", "max_view_angle_deg", "verify_max_m",
                     "verify_max_deg"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"refine {name} must be positive")
        for name in ("min_spread", "min_inlier_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"refine {name} must be in [0, 1]")
        if not self.gate_sigma >= 0 or not self.gate_min_m >= 0:
            raise ConfigError("refine gate_sigma and gate_min_m must be >= 0")
        if not 0.0 <= self.unrefined_rotation_sigma_deg <= 180.0:
            raise ConfigError("refine unrefined_rotation_sigma_deg must be in [0, 180]")
        if self.max_image_size != 0 and self.max_image_size < 64:
            raise ConfigError("refine max_image_size must be 0 (full size) or at least 64")
        if self.retrieval_rounds < 1 or self.blind_retrieval_rounds < 1:
            raise ConfigError("refine retrieval_rounds and blind_retrieval_rounds must be at "
                              "least 1")
        if self.verify and self.k_verify < 1:
            raise ConfigError("refine k_verify must be at least 1 when verify is on")
        if not self.lookalike_radius_m > 0 or not 0.0 < self.lookalike_ratio <= 1.0:
            raise ConfigError("refine lookalike_radius_m must be > 0 and lookalike_ratio in "
                              "(0, 1]")

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
            or the prior's when ``success`` is false (its rotation widened to
            ``RefineConfig.unrefined_rotation_sigma_deg``).
        reason: why it failed ("" on success).
        matches, inliers: 2D-3D matches and RANSAC inliers.
        frames: names of the mapped frames matched against.
        latency_s: time spent refining.
        stages_s: seconds per stage (features, matching, pose).
        disagreement: metres and degrees between the accepted solution and the
            verification's own (see ``RefineConfig.disagreement_cov``).
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
    disagreement: tuple[float, float] = (0.0, 0.0)


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


#: map points decoded at once by the look-alike check
_TWIN_CHUNK = 32768
#: inliers whose twins are looked for at most
_TWIN_SAMPLE = 60
#: a map point whose descriptor is this close (cosine) to an inlier's is its twin
_TWIN_COSINE = 0.9
#: verification frames are picked among this many mapped frames nearest the solution
_VERIFY_CANDIDATES = 32


@dataclass(frozen=True)
class QueryFeatures:
    """A query image's SIFT features (:meth:`Refiner.extract`).

    Attributes:
        keypoints: (N, 2) pixel coordinates in the full-size image.
        descriptors: (N, 128) float32, unit length.
        seconds: what extracting them took.
    """

    keypoints: np.ndarray
    descriptors: np.ndarray
    seconds: float


_AMBIGUOUS = "ambiguous"  # the start of the look-alike check's reason


@dataclass
class _Solution:
    """One absolute-pose solution and its inliers."""

    rot_map_cam: np.ndarray
    centre: np.ndarray
    points2d: np.ndarray
    points3d: np.ndarray
    matches: int
    point_ids: np.ndarray  # the inliers' indices into the map's points
    #: how far the verification's own solution lay from this one (metres, degrees)
    disagreement: tuple[float, float] = (0.0, 0.0)

    @property
    def inliers(self) -> int:
        return len(self.points2d)


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
        self._desc_norms: np.ndarray | None = None
        self._index = {n: i for i, n in enumerate(self._names)}

    def select_frames(self, position: np.ndarray, rot_map_cam: np.ndarray,
                      global_desc: np.ndarray | None, exclude: frozenset[int] = frozenset(),
                      k_pose: int | None = None, k_retrieval: int | None = None
                      ) -> np.ndarray:
        """Indices of the mapped frames to match against (by pose, then by retrieval).

        ``k_pose`` / ``k_retrieval`` override the configured numbers.
        """
        cfg, m = self.config, self.map
        k_pose = cfg.k_pose if k_pose is None else k_pose
        k_retrieval = cfg.k_retrieval if k_retrieval is None else k_retrieval
        allowed = np.ones(len(m), bool)
        allowed[list(exclude)] = False
        chosen: list[int] = []
        if k_pose:
            cos = m.optical_axes @ rot_map_cam[:, 2]
            ok = allowed & (cos >= np.cos(np.radians(cfg.max_view_angle_deg)))
            dist = np.where(ok, np.linalg.norm(m.centres - position, axis=1), np.inf)
            chosen += [int(i) for i in np.argsort(dist)[:k_pose] if np.isfinite(dist[i])]
        if k_retrieval and global_desc is not None:
            score = np.where(allowed, m.global_desc @ global_desc, -np.inf)
            chosen += [int(i) for i in np.argsort(-score)[:k_retrieval]
                       if np.isfinite(score[i]) and i not in chosen]
        return np.array(chosen, dtype=np.int64)

    def verification_frames(self, sol: _Solution, colmap_cam: pycolmap.Camera,
                            exclude: frozenset[int] = frozenset()) -> np.ndarray:
        """The ``k_verify`` mapped frames that see most of what a camera at the solution sees.

        Among the frames nearest the solution (any way they look, but not facing it: those
        see the other faces of its walls), each frame's points are projected into the
        solution's image; the frames with the most points inside it, in front of the camera
        and no deeper than the inliers' far end (points further are likely behind a wall),
        win. The choice rests on the solution's pose and the map alone, never on which
        points were matched: frames around a wrong pose see another place, which the image
        then fails to match.
        """
        m, k = self.map, self.config.k_verify
        allowed = np.ones(len(m), bool)
        allowed[list(exclude)] = False
        axis = sol.rot_map_cam[:, 2]
        allowed &= m.optical_axes @ axis > 0.0
        dist = np.where(allowed, np.linalg.norm(m.centres - sol.centre, axis=1), np.inf)
        cand = [int(i) for i in np.argsort(dist)[:_VERIFY_CANDIDATES] if np.isfinite(dist[i])]
        if not cand:
            return np.zeros(0, np.int64)
        depth = (sol.points3d - sol.centre) @ axis
        far = 1.25 * float(np.percentile(depth, 95)) + 0.5
        counts = np.diff(m.offsets[np.array(cand)[:, None] + [0, 1]], axis=1)[:, 0]
        pts = np.asarray(m.points[np.concatenate(
            [m.frame_points[m.offsets[i]:m.offsets[i + 1]] for i in cand])], float)
        owner = np.repeat(np.arange(len(cand)), counts)
        in_cam = (pts - sol.centre) @ sol.rot_map_cam  # rows: R^T (X - c)
        front = (in_cam[:, 2] > 0.1) & (in_cam[:, 2] < far)
        seen = np.zeros(len(pts), bool)
        if front.any():
            uv = colmap_cam.img_from_cam(in_cam[front])
            seen[front] = ((uv[:, 0] >= 0) & (uv[:, 0] < colmap_cam.width) & (uv[:, 1] >= 0)
                           & (uv[:, 1] < colmap_cam.height))
        score = np.bincount(owner[seen], minlength=len(cand))
        order = np.lexsort((dist[cand], -score))  # most points seen, then nearest
        return np.array([cand[j] for j in order[:k] if score[j] > 0], np.int64)

    def _match(self, desc_q: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query index, 3D point index) pairs passing the ratio test and mutual check.

        Each point the frames observe has one descriptor, so the ratio test compares the
        best point with the second-best point.
        """
        point_idx, desc = self.map.observations(frames)
        if len(point_idx) == 0 or len(desc_q) == 0:
            return np.zeros(0, int), np.zeros(0, int)
        sim = desc_q @ desc.T  # unit vectors: cosine
        rows = np.arange(len(sim))
        best = np.argmax(sim, axis=1)
        best_s = sim[rows, best]
        mutual = best_s >= sim.max(axis=0)[best]  # each is its match's best query feature
        sim[rows, best] = -1.0
        second_s = sim.max(axis=1)
        d1 = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * best_s))
        d2 = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * second_s))
        q = np.flatnonzero(mutual & (d1 < self.config.ratio * d2))
        pts = point_idx[best[q]]
        _, first = np.unique(pts, return_index=True)  # one query feature per 3D point (ties)
        return q[first], pts[first]

    def _pnp(self, pts2d: np.ndarray, pts3d: np.ndarray, colmap_cam: pycolmap.Camera
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """LO-RANSAC absolute pose and its refinement: ``map_from_cam`` rotation, camera
        centre and inlier mask, or None."""
        est = pycolmap.AbsolutePoseEstimationOptions()
        est.ransac.max_error = self.config.max_error_px
        est.ransac.num_threads = self.config.num_threads
        est.ransac.random_seed = 0
        result = pycolmap.estimate_and_refine_absolute_pose(pts2d, pts3d, colmap_cam, est)
        if result is None:
            return None
        cam_from_map = np.eye(4)
        cam_from_map[:3, :] = result["cam_from_world"].matrix()
        rot_map_cam = cam_from_map[:3, :3].T
        return rot_map_cam, -rot_map_cam @ cam_from_map[:3, 3], np.asarray(
            result["inlier_mask"], bool)

    def _solve(self, keypoints: np.ndarray, desc_q: np.ndarray, frames: np.ndarray,
               colmap_cam: pycolmap.Camera) -> _Solution | str:
        """Match against ``frames`` and solve the absolute pose; a reason string on failure."""
        cfg = self.config
        qi, pi = self._match(desc_q, frames)
        if len(qi) < cfg.min_inliers:
            return f"{len(qi)} matches to the map (< {cfg.min_inliers})"
        pts2d, pts3d = keypoints[qi], np.asarray(self.map.points[pi], float)
        pose = self._pnp(pts2d, pts3d, colmap_cam)
        if pose is None:
            return f"absolute pose RANSAC found no pose from {len(qi)} matches"
        rot_map_cam, centre, mask = pose
        sol = _Solution(rot_map_cam, centre, pts2d[mask], pts3d[mask], len(qi), pi[mask])
        if sol.inliers < cfg.min_inliers:
            return f"{sol.inliers} inliers (< {cfg.min_inliers})"
        if sol.inliers < cfg.min_inlier_ratio * len(qi):
            return f"inlier ratio {sol.inliers / len(qi):.2f} (< {cfg.min_inlier_ratio})"
        if not (np.all(np.isfinite(centre)) and np.all(np.isfinite(rot_map_cam))):
            return "absolute pose is not finite"
        return sol

    def _twins(self, point_ids: np.ndarray) -> np.ndarray:
        """Per point, the map point elsewhere (over ``lookalike_radius_m`` away) whose
        descriptor is nearly the same (cosine >= 0.9), or -1: repeated texture.

        Computed in the map's PCA code space (decoding every point would cost P x 128
        floats): ``d_j = basis @ (codes_j * scale) + mean``, so
        ``q . d_j = (q @ basis * scale) . codes_j + q . mean``, over ``|d_j|`` (cached).
        """
        m = self.map
        if self._desc_norms is None:
            self._desc_norms = m.descriptor_norms(_TWIN_CHUNK)
        q = m.descriptors(point_ids)
        q_proj, q_mean = (q @ m.desc_basis) * m.desc_scale, q @ m.desc_mean
        where = np.asarray(m.points[point_ids], np.float32)
        best = np.full(len(q), _TWIN_COSINE, np.float32)
        twin = np.full(len(q), -1, np.int64)
        radius2 = np.float32(self.config.lookalike_radius_m) ** 2
        for s in range(0, len(m.points), _TWIN_CHUNK):
            codes = np.asarray(m.desc_codes[s:s + _TWIN_CHUNK], np.float32)
            sim = (q_proj @ codes.T + q_mean[:, None]) / self._desc_norms[s:s + len(codes)]
            i, j = np.nonzero(sim >= best[:, None])  # few: the point, its neighbours, twins
            far = np.square(where[i] - np.asarray(m.points[s + j], np.float32)).sum(1) > radius2
            i, j = i[far], j[far]
            order = np.argsort(sim[i, j])  # ascending: each point's best is written last
            for a, b in zip(i[order], j[order], strict=True):
                best[a], twin[a] = sim[a, b], s + b
        return twin

    def _lookalike(self, sol: _Solution, colmap_cam: pycolmap.Camera) -> str:
        """Why the image is ambiguous ('' when it is not): the inliers' points have twins
        elsewhere in the map (repeated rooms) that give a pose of their own (see
        ``lookalike_check``)."""
        cfg = self.config
        # a sample of the inliers tells as well as all of them, at a fraction of the cost
        pick = np.unique(np.linspace(0, sol.inliers - 1, min(sol.inliers, _TWIN_SAMPLE)
                                     ).astype(int))
        twin = self._twins(sol.point_ids[pick])
        ok = twin >= 0
        if ok.sum() < max(cfg.min_inliers, cfg.lookalike_ratio * len(pick)):
            return ""
        alt = self._pnp(sol.points2d[pick][ok], np.asarray(self.map.points[twin[ok]], float),
                        colmap_cam)
        if alt is None:
            return ""
        _, centre, mask = alt
        away = float(np.linalg.norm(centre - sol.centre))
        if away > cfg.lookalike_radius_m and mask.sum() >= cfg.lookalike_ratio * len(pick):
            return (f"{_AMBIGUOUS}: a look-alike place {away:.1f} m away fits too "
                    f"({int(mask.sum())} of {len(pick)} sampled inliers' twins)")
        return ""

    @property
    def feature_settings(self) -> tuple[int, int, int]:
        """What :meth:`extract` depends on: SIFT's feature budget, first octave and the
        image size it runs at."""
        cfg = self.config
        return cfg.max_features, cfg.first_octave, cfg.max_image_size

    def extract(self, image_rgb: np.ndarray) -> QueryFeatures:
        """The image's SIFT keypoints (full-size pixels) and unit descriptors."""
        t0 = time.perf_counter()
        cfg = self.config
        h, w = image_rgb.shape[:2]
        gray = np.ascontiguousarray(np.clip(
            image_rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            + 0.5, 0, 255).astype(np.uint8))
        shrink = (cfg.max_image_size / max(h, w)
                  if 0 < cfg.max_image_size < max(h, w) else 1.0)
        if shrink < 1.0:
            gray = cv2.resize(gray, (max(1, round(w * shrink)), max(1, round(h * shrink))),
                              interpolation=cv2.INTER_AREA)
        kps, descs = self._sift.extract_from_uint8_array(gray)
        keypoints = np.array([(k.x, k.y) for k in kps], dtype=float).reshape(-1, 2)
        if shrink < 1.0:  # COLMAP keypoints: pixel corners at 0, so a plain scale
            keypoints *= [w / gray.shape[1], h / gray.shape[0]]
        desc_q = np.asarray(descs.data, dtype=np.float32) / 512.0  # COLMAP's uint8 scale
        return QueryFeatures(keypoints, desc_q, time.perf_counter() - t0)

    def _check(self, sol: _Solution, frames: np.ndarray, keypoints: np.ndarray,
               desc_q: np.ndarray, colmap_cam: pycolmap.Camera, excluded: frozenset[int],
               stages_s: dict[str, float]) -> tuple[_Solution, np.ndarray] | tuple[str, None]:
        """The map's checks of a first solution (verification, the inliers' spread, the
        look-alike check): the pose to keep and the frames it came from, or why not."""
        cfg = self.config
        if cfg.verify:  # the map around the solution must tell the same story
            t0 = time.perf_counter()
            near = self.select_frames(sol.centre, sol.rot_map_cam, None, excluded,
                                      k_pose=cfg.k_verify, k_retrieval=0)
            seeing = self.verification_frames(sol, colmap_cam, excluded)
            vframes = np.array(list(dict.fromkeys([*near.tolist(), *seeing.tolist()])),
                               np.int64)
            check = self._solve(keypoints, desc_q, vframes, colmap_cam)
            stages_s["verify"] = stages_s.get("verify", 0.0) + time.perf_counter() - t0
            if isinstance(check, str):
                return f"verification against the frames around the solution: {check}", None
            d_m = float(np.linalg.norm(check.centre - sol.centre))
            d_deg = float(np.degrees(Rotation.from_matrix(
                check.rot_map_cam @ sol.rot_map_cam.T).magnitude()))
            if d_m > cfg.verify_max_m or d_deg > cfg.verify_max_deg:
                return (f"the frames around the solution give another pose ({d_m:.2f} m, "
                        f"{d_deg:.1f} deg away)"), None
            if check.inliers >= sol.inliers:
                sol, frames = check, vframes
            sol.disagreement = (d_m, d_deg)
        w, h = colmap_cam.width, colmap_cam.height
        cells = np.unique(np.minimum((sol.points2d / [w, h] * 4).astype(int), 3), axis=0)
        spread = len(cells) / 16.0
        if spread < cfg.min_spread:
            return f"inliers cover {spread:.0%} of the image (< {cfg.min_spread:.0%})", None
        if cfg.lookalike_check:
            t0 = time.perf_counter()
            elsewhere = self._lookalike(sol, colmap_cam)
            stages_s["lookalike"] = stages_s.get("lookalike", 0.0) + time.perf_counter() - t0
            if elsewhere:
                return elsewhere, None
        return sol, frames

    def refine(self, image_rgb: np.ndarray, position: np.ndarray, quat_wxyz: np.ndarray,
               covariance: np.ndarray, camera: PinholeCamera | None = None,
               exclude: tuple[str, ...] = (), features: QueryFeatures | None = None
               ) -> RefineOutcome:
        """Refine one regressed pose; the prior comes back, with the reason, on failure
        (its covariance's rotation widened to ``unrefined_rotation_sigma_deg``: the map did
        not confirm it).

        Args:
            image_rgb: (H, W, 3) uint8.
            position: (3,) the regressed camera centre, map frame.
            quat_wxyz: (4,) the regressed ``map_from_cam`` rotation.
            covariance: (6, 6) the regressed pose's covariance (REP 103 order).
            camera: the image's intrinsics; default: the mapped frames' camera scaled to
                the image size.
            exclude: names of mapped frames not to match against (evaluation of frames
                that are themselves in the map).
            features: the image's features from :meth:`extract` (of this refiner or one
                with the same :attr:`feature_settings`), to share them between maps.

        A non-finite prior (no regressor, or the floor not known) leaves the frames to
        retrieval alone and turns the gate off.
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
            if cfg.unrefined_rotation_sigma_deg > 0 and np.all(np.isfinite(prior.covariance)):
                prior.covariance = widen_rotation(
                    prior.covariance, np.radians(cfg.unrefined_rotation_sigma_deg))
            return prior

        feats = features if features is not None else self.extract(image_rgb)
        keypoints, desc_q = feats.keypoints, feats.descriptors
        t1 = time.perf_counter()
        prior.stages_s["features"] = feats.seconds
        if len(desc_q) < cfg.min_inliers:
            return fail(f"only {len(desc_q)} SIFT features in the image")
        rot = rotmat_from_quat_wxyz(prior.quat_wxyz)
        blind = not (np.all(np.isfinite(rot)) and np.all(np.isfinite(prior.position)))
        if blind:  # no prior: retrieval alone picks the frames, and nothing gates on it
            rot, prior.position = np.eye(3), np.zeros(3)
        gdesc = bow_descriptor(desc_q, self.map.vocabulary, self.map.idf)
        excluded = frozenset(self._index[n] for n in exclude if n in self._index)
        frames = self.select_frames(prior.position, rot, gdesc, excluded,
                                    k_pose=0 if blind else None)
        prior.frames = [self._names[i] for i in frames]
        params = np.array(camera.colmap_params())
        colmap_cam = pycolmap.Camera(model=camera.colmap_model(), width=w, height=h,
                                     params=params)
        tried = set(frames.tolist())
        rounds = cfg.blind_retrieval_rounds if blind else cfg.retrieval_rounds
        sol: _Solution | str = ""
        refused: tuple[_Solution, list[str], str] | None = None
        for round_ in range(rounds):  # the next most similar frames after a failure
            if round_:
                frames = self.select_frames(prior.position, rot, gdesc,
                                            excluded | frozenset(tried), k_pose=0)
                if len(frames) == 0:
                    break
                tried |= set(frames.tolist())
            found = self._solve(keypoints, desc_q, frames, colmap_cam)
            if isinstance(found, str):
                sol = sol or found
                continue
            checked = self._check(found, frames, keypoints, desc_q, colmap_cam, excluded,
                                  prior.stages_s)
            if not isinstance(checked[0], str):
                sol, frames = checked
                break
            # a pose from these frames that the map refuses does not end the search: the
            # right frames may come in a later round (kept: the strongest refused pose);
            # an image that fits a look-alike place does (searching on picks a twin)
            sol = ""
            ambiguous = checked[0].startswith(_AMBIGUOUS)
            if ambiguous or refused is None or found.inliers > refused[0].inliers:
                refused = (found, [self._names[i] for i in frames], checked[0])
            if ambiguous:
                break
        prior.stages_s["pose"] = time.perf_counter() - t1 - sum(
            prior.stages_s.get(k, 0.0) for k in ("verify", "lookalike"))
        if isinstance(sol, str):
            if refused is not None:
                prior.matches, prior.inliers, prior.frames = (refused[0].matches,
                                                              refused[0].inliers, refused[1])
                return fail(refused[2])
            return fail(sol or "no mapped frame to match against")
        prior.frames = [self._names[i] for i in frames]
        prior.matches, prior.inliers = sol.matches, sol.inliers
        if cfg.gate_sigma > 0 and not blind:
            pos_sd = np.sqrt(max(np.linalg.eigvalsh(prior.covariance[:3, :3]).max(), 0.0))
            gate = max(cfg.gate_min_m, cfg.gate_sigma * pos_sd)
            jump = float(np.linalg.norm(sol.centre - prior.position))
            if not jump <= gate:
                return fail(f"refined pose {jump:.2f} m from the regressed one "
                            f"(gate {gate:.2f} m)")
        inl2d = sol.points2d
        if camera.distortion:  # the covariance's model is the ideal pinhole
            inl2d = colmap_cam.cam_from_img(inl2d) * params[:2] + params[2:4]
        cov = cfg.cov_scale * pose_covariance_from_inliers(
            inl2d, sol.points3d, sol.rot_map_cam, sol.centre, params[:4])
        cov[:3, :3] += np.eye(3) * max(cfg.cov_floor_m, self.map.alignment_rms_m) ** 2
        cov[3:, 3:] += np.eye(3) * np.radians(cfg.cov_floor_deg) ** 2
        if cfg.disagreement_cov:  # two solutions from other frames: a measured error scale
            cov[:3, :3] += np.eye(3) * sol.disagreement[0] ** 2
            cov[3:, 3:] += np.eye(3) * np.radians(sol.disagreement[1]) ** 2
        if not np.all(np.isfinite(cov)):
            return fail("refined covariance is not finite")
        return replace(prior, success=True, position=sol.centre,
                       quat_wxyz=quat_wxyz_from_rotmat(sol.rot_map_cam), covariance=cov,
                       disagreement=sol.disagreement,
                       latency_s=time.perf_counter() - t0)
