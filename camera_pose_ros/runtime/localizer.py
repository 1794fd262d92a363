"""Localizer: one RGB image in, one pose estimate out. No ROS here.

Wraps a checkpoint's predictor, validates its output (a NaN or non-unit pose is rejected, not
published), snaps estimates that fall outside the walkable floor to the nearest walkable
point, and gates implausible jumps against odometry.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.io.floorplan import FloorPlan
from camera_pose_ros.io.refmap import load_refinement_map
from camera_pose_ros.learning.checkpoint import load_checkpoint
from camera_pose_ros.learning.predict import Predictor
from camera_pose_ros.runtime.refine import RefineConfig, Refiner, find_refinement_map

__all__ = ["PoseEstimate", "Localizer", "FloorSnapper", "JumpGate"]

log = logging.getLogger(__name__)


@dataclass
class PoseEstimate:
    """A camera pose in the map frame.

    Attributes:
        position: (3,) metres.
        quat_wxyz: (4,) unit quaternion, ``map_from_cam``.
        covariance: (6, 6) REP 103 order (x, y, z, rotation about x, y, z).
        latency_s: inference time of the regression.
        snapped: moved onto the walkable floor.
        refined: geometric refinement against the SfM map succeeded (``refine_note`` says
            why not when it was tried and failed).
    """

    position: np.ndarray
    quat_wxyz: np.ndarray
    covariance: np.ndarray
    latency_s: float = 0.0
    snapped: bool = False
    refined: bool = False
    refine_note: str = ""
    inliers: int = 0


class FloorSnapper:
    """Moves (x, y) points off non-walkable cells onto the nearest walkable cell.

    The nearest walkable cell of every cell comes from one Euclidean distance transform,
    computed when the map arrives, so snapping is a table lookup per estimate.
    """

    def __init__(self, plan: FloorPlan) -> None:
        self.plan = plan
        walkable = plan.walkable
        if not walkable.any():
            raise ValueError("floor plan has no walkable (free) cell")
        _, (self._near_r, self._near_c) = ndimage.distance_transform_edt(
            ~walkable, return_indices=True)

    def snap(self, xy: np.ndarray) -> tuple[np.ndarray, bool]:
        """The nearest walkable point (cell centre) and whether ``xy`` had to move."""
        p = self.plan
        rc = p.world_to_cell(np.asarray(xy, float)[None])[0]
        h, w = p.occupancy.shape
        r, c = int(np.clip(rc[0], 0, h - 1)), int(np.clip(rc[1], 0, w - 1))
        inside = (r, c) == (rc[0], rc[1])
        if inside and p.walkable[r, c]:
            return np.asarray(xy, float), False
        nr, nc = self._near_r[r, c], self._near_c[r, c]
        out = np.array([p.origin[0] + (nc + 0.5) * p.resolution,
                        p.origin[1] + (nr + 0.5) * p.resolution])
        return out, True


class JumpGate:
    """Rejects an estimate whose motion since the last accepted one disagrees with odometry.

    ``max_jump`` metres of disagreement are allowed plus ``per_metre`` of the odometry's own
    travel (drift); rotation is not gated.
    """

    def __init__(self, max_jump: float = 1.0, per_metre: float = 0.2) -> None:
        self.max_jump, self.per_metre = max_jump, per_metre
        self._last: tuple[np.ndarray, np.ndarray] | None = None

    def accept(self, estimate_xyz: np.ndarray, odom_xyz: np.ndarray | None) -> bool:
        """True when plausible (always when there is no odometry or no previous estimate)."""
        if odom_xyz is None:
            return True
        if self._last is None:
            self._last = (np.asarray(estimate_xyz, float), np.asarray(odom_xyz, float))
            return True
        est0, odo0 = self._last
        d_est = np.linalg.norm(np.asarray(estimate_xyz) - est0)
        d_odo = np.linalg.norm(np.asarray(odom_xyz) - odo0)
        if abs(d_est - d_odo) > self.max_jump + self.per_metre * d_odo:
            return False
        self._last = (np.asarray(estimate_xyz, float), np.asarray(odom_xyz, float))
        return True


class Localizer:
    """Checkpoint + optional floor plan and refiner -> :class:`PoseEstimate` per RGB image."""

    def __init__(self, checkpoint: str | os.PathLike, *, device: str = "auto",
                 floorplan: FloorPlan | None = None, mc_samples: int | None = None,
                 refiner: Refiner | None = None) -> None:
        self.refiner = refiner
        self.checkpoint_path = str(checkpoint)
        self.loaded = load_checkpoint(checkpoint)
        self.predictor = Predictor(self.loaded, device=device, samples=mc_samples)
        self.snapper = FloorSnapper(floorplan) if floorplan is not None else None
        self.map_frame = self.loaded.meta.map_frame
        model = self.loaded.meta.model
        self.model_name = f"{model.kind}/{model.backbone}"

    def enable_refinement(self, map_path: str | os.PathLike | None = None,
                          config: RefineConfig = RefineConfig()) -> str:
        """Load the refinement map (see :func:`find_refinement_map`); returns its path.

        Raises:
            RefinementError: no map found, or it cannot be read.
        """
        path = find_refinement_map(self.checkpoint_path,
                                   self.loaded.meta.provenance.to_dict(), map_path)
        self.refiner = Refiner(load_refinement_map(path), config)
        return str(path)

    @property
    def device(self) -> str:
        """Where inference runs."""
        return str(self.predictor.device)

    def set_floorplan(self, plan: FloorPlan | None) -> None:
        """Replace the walkable-area map (e.g. when a new /map arrives)."""
        self.snapper = FloorSnapper(plan) if plan is not None else None

    def localize(self, image_rgb: np.ndarray) -> PoseEstimate | None:
        """Estimate the camera pose of one image; None when the prediction is not finite."""
        t0 = time.perf_counter()
        poses, covs = self.predictor.predict([image_rgb])
        latency = time.perf_counter() - t0
        pose, cov = poses[0], covs[0]
        if not (np.all(np.isfinite(pose)) and np.all(np.isfinite(cov))):
            return None
        q = pose[3:] / np.linalg.norm(pose[3:])
        est = PoseEstimate(pose[:3].copy(), q, cov, latency)
        if self.snapper is not None:
            xy, moved = self.snapper.snap(est.position[:2])
            if moved:
                est.position[:2] = xy
                est.snapped = True
        return est

    def refine(self, image_rgb: np.ndarray, est: PoseEstimate,
               camera: PinholeCamera | None = None) -> PoseEstimate:
        """Refine ``est`` in place against the SfM map (see :class:`Refiner`); returns it."""
        if self.refiner is None:
            est.refine_note = "no refinement map loaded"
            return est
        out = self.refiner.refine(image_rgb, est.position, est.quat_wxyz, est.covariance,
                                  camera)
        est.inliers = out.inliers
        if out.success:
            est.position, est.quat_wxyz, est.covariance = (out.position, out.quat_wxyz,
                                                            out.covariance)
            est.refined, est.snapped, est.refine_note = True, False, ""
        else:
            est.refine_note = out.reason
        return est
