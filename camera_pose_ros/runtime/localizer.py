"""Localizer: RGB images in, pose estimates out. No ROS here.

The one inference path of the package: the node, the dashboard and ``camera-pose localize``
(:mod:`camera_pose_ros.runtime.batch`) all go through :class:`Localizer`. It wraps a
checkpoint's predictor, validates its output (a non-finite pose or covariance, or a
quaternion of zero length, is rejected, not published), snaps estimates that fall outside the
walkable floor to the nearest walkable point, and refines them against the SfM map when a
refiner is loaded (:func:`load_refiner`, the one place a refiner is made). :class:`JumpGate`
gates implausible jumps against odometry.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.config import load_yaml
from camera_pose_ros.errors import CameraPoseError
from camera_pose_ros.io.coverage import MappedViews, load_mapped_views
from camera_pose_ros.io.floorplan import FloorPlan
from camera_pose_ros.io.refmap import load_refinement_map
from camera_pose_ros.learning.checkpoint import load_checkpoint
from camera_pose_ros.learning.predict import Predictor
from camera_pose_ros.runtime.estimate import FloorSnapper, PoseEstimate
from camera_pose_ros.runtime.refine import RefineConfig, Refiner, find_refinement_map

__all__ = ["Localizer", "load_refiner"]

log = logging.getLogger(__name__)


def load_refiner(checkpoint: str | os.PathLike,
                 map_path: str | os.PathLike | None = None,
                 config: RefineConfig | str | os.PathLike | None = None, *,
                 provenance: dict | None = None) -> tuple[Refiner, Path]:
    """The refiner of a checkpoint, and the refinement map it loaded.

    The one place a refiner is made: ``camera-pose evaluate`` and ``localize``, the node and
    the dashboard all come here.

    Args:
        checkpoint: the model file (a map beside it is found, see
            :func:`~camera_pose_ros.runtime.refine.find_refinement_map`).
        map_path: an explicit refinement map or dataset folder, or None to search.
        config: refinement settings, a YAML file of them (``config/refine.yaml``), or None
            (or "") for the defaults.
        provenance: the checkpoint's provenance when the caller has loaded it already
            (default: read from ``checkpoint``), to find the dataset it was trained on.

    Raises:
        ConfigError: the settings are invalid (checked before the map is looked for).
        RefinementError: no map found, or it cannot be read.
        CheckpointError: ``provenance`` is None and ``checkpoint`` cannot be loaded.
    """
    if config is None or config == "":  # "": an unset ROS parameter
        config = RefineConfig()
    elif not isinstance(config, RefineConfig):
        config = RefineConfig.from_dict(load_yaml(config))
    if provenance is None:
        provenance = load_checkpoint(checkpoint).meta.provenance.to_dict()
    if not isinstance(provenance, dict):
        provenance = {}
    path = find_refinement_map(checkpoint, provenance, map_path)
    return Refiner(load_refinement_map(path), config), path


class Localizer:
    """Checkpoint + optional floor plan and refiner -> :class:`PoseEstimate` per RGB image."""

    def __init__(self, checkpoint: str | os.PathLike, *, device: str = "auto",
                 floorplan: FloorPlan | None = None, mc_samples: int | None = None,
                 refiner: Refiner | None = None, solver: str = "kabsch") -> None:
        """``solver`` ``pnp``: a structure-aware checkpoint's scr-pnp mode (PnP + RANSAC on
        its scene coordinates; ConfigError for a regressor); ``kabsch``: its direct pose, or
        a regressor's."""
        self.refiner = refiner
        self.checkpoint_path = str(checkpoint)
        self.loaded = load_checkpoint(checkpoint)
        self.predictor = Predictor(self.loaded, device=device, samples=mc_samples,
                                   solver=solver)
        self.snapper = FloorSnapper(floorplan) if floorplan is not None else None
        #: the mapping cameras, for each estimate's distance to the nearest (:meth:`load_views`)
        self.views: MappedViews | None = None
        self.map_frame = self.loaded.meta.map_frame
        model = self.loaded.meta.model
        self.model_name = f"{model.kind}/{model.backbone}" + (
            "/scr-pnp" if solver == "pnp" else "")

    def enable_refinement(self, map_path: str | os.PathLike | None = None,
                          config: RefineConfig | str | os.PathLike | None = None) -> str:
        """Load the refinement map (see :func:`load_refiner`); returns its path.

        ``config``: settings, a YAML file of them, or None for the defaults.

        Raises:
            ConfigError: invalid settings.
            RefinementError: no map found, or it cannot be read.
        """
        self.refiner, path = load_refiner(self.checkpoint_path, map_path, config,
                                          provenance=self.loaded.meta.provenance.to_dict())
        rmap = self.refiner.map
        self.views = MappedViews.from_matrices(rmap.map_from_cam, rmap.names, str(path))
        return str(path)

    def load_views(self, map_path: str | os.PathLike | None = None, *,
                   strict: bool = False) -> str:
        """Load the mapped views: the camera poses of the refinement map's frames, found as
        the refiner finds its map (``map_path``, which may also be a dataset folder or a pose
        CSV, else beside the checkpoint or in its dataset). Only the poses are read.

        Returns where they came from, or "" when there is none (logged; estimates then carry
        no nearest-view distance).

        Raises:
            CameraPoseError: with ``strict``, what finding or reading them raised.
        """
        try:
            path = map_path or find_refinement_map(
                self.checkpoint_path, self.loaded.meta.provenance.to_dict())
            self.views = load_mapped_views(path)
        except CameraPoseError as exc:
            if strict:
                raise
            log.info("no mapped views for nearest-view distances: %s", exc)
            self.views = None
            return ""
        return self.views.source

    @property
    def device(self) -> str:
        """Where inference runs."""
        return str(self.predictor.device)

    def set_floorplan(self, plan: FloorPlan | None) -> None:
        """Replace the walkable-area map (e.g. when a new /map arrives).

        Raises:
            InputDataError: the plan has no walkable cell (the previous one is kept).
        """
        self.snapper = FloorSnapper(plan) if plan is not None else None

    def localize(self, image_rgb: np.ndarray) -> PoseEstimate | None:
        """Estimate the camera pose of one image; None when the prediction is rejected."""
        return self.localize_batch([image_rgb])[0]

    def localize_batch(self, images_rgb: Sequence[np.ndarray]) -> list[PoseEstimate | None]:
        """Estimate the camera poses of several images in one forward pass.

        Each estimate is validated and snapped as :meth:`localize` does it; a rejected
        prediction (a non-finite pose or covariance, a quaternion of zero length) is None in
        its place, so the list is as long as ``images_rgb``. ``latency_s`` of each estimate
        is its share of the batch's inference time.
        """
        if len(images_rgb) == 0:
            return []
        t0 = time.perf_counter()
        poses_B7, covs_B66 = self.predictor.predict(list(images_rgb))
        latency = (time.perf_counter() - t0) / len(images_rgb)
        return [self._estimate(pose, cov, latency)
                for pose, cov in zip(poses_B7, covs_B66, strict=True)]

    def _estimate(self, pose_7: np.ndarray, cov_66: np.ndarray, latency_s: float
                  ) -> PoseEstimate | None:
        """Validate, normalise and snap one prediction; None when it is rejected."""
        if not (np.all(np.isfinite(pose_7)) and np.all(np.isfinite(cov_66))):
            return None
        norm = float(np.linalg.norm(pose_7[3:]))
        if not norm > 1e-12:
            return None
        est = PoseEstimate(np.array(pose_7[:3], float), np.asarray(pose_7[3:], float) / norm,
                           np.asarray(cov_66, float), latency_s)
        if self.snapper is not None:
            xy, moved = self.snapper.snap(est.position[:2])
            if moved:
                est.position[:2] = xy
                est.snapped = True
        return est

    def refine(self, image_rgb: np.ndarray, est: PoseEstimate,
               camera: PinholeCamera | None = None) -> PoseEstimate:
        """Refine ``est`` in place against the SfM map (see :class:`Refiner`); returns it.

        On failure the pose stays and its covariance becomes the refiner's (the rotation
        widened to ``unrefined_rotation_sigma_deg``)."""
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
        else:  # the prior, its rotation widened: the map did not confirm it
            est.covariance, est.refine_note = out.covariance, out.reason
        return est
