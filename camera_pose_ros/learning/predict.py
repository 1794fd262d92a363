"""Inference from a checkpoint: RGB images -> metric poses with calibrated covariances."""

from __future__ import annotations

import numpy as np
import torch

from camera_pose_ros.errors import ConfigError
from camera_pose_ros.learning.checkpoint import LoadedModel
from camera_pose_ros.learning.networks import PoseRegressor
from camera_pose_ros.learning.structure import SOLVERS, StructureAwareNet, solve_poses
from camera_pose_ros.learning.uncertainty import (
    apply_calibration,
    mc_samples,
    mean_and_covariance,
    novelty,
)

__all__ = ["Predictor", "resolve_device"]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for, but no CUDA GPU is available; use auto or cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ConfigError(f"unknown device '{device}'; use auto, cpu or cuda")
    return torch.device(device)


class Predictor:
    """Batched pose prediction with calibrated covariances from a loaded checkpoint.

    Regressors (PoseNet, MapNet): MC-dropout covariance. Structure-aware models: the
    weighted Kabsch pose (``solver`` ``kabsch``) or PnP + RANSAC on the predicted scene
    coordinates (``solver`` ``pnp``, the ``scr-pnp`` mode), covariances from their residuals.
    """

    def __init__(self, loaded: LoadedModel, *, device: str = "auto",
                 samples: int | None = None, solver: str = "kabsch") -> None:
        self.device = resolve_device(device)
        self.model = loaded.model.to(self.device).eval()
        self.structure = isinstance(self.model, StructureAwareNet)
        if solver not in SOLVERS:
            raise ConfigError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
        if solver == "pnp" and not self.structure:
            raise ConfigError(f"the scr-pnp mode needs a structure-aware model; this "
                              f"checkpoint is {loaded.meta.kind} (use regress or refine)")
        self.solver = solver
        #: frames of the last batch that PnP solved (scr-pnp mode)
        self.last_solved = np.zeros(0, bool)
        self.transform = loaded.transform
        self.calibration = loaded.meta.calibration
        self.samples = int(samples if samples is not None
                           else self.calibration.get("samples", 20))
        self.half = False
        #: training images' features (calibration["novelty"]): covariances grow off the path
        index = self.calibration.get("novelty") or None
        self.novelty_index = None if index is None else {  # numpy once, not per frame
            k: (np.asarray(v, np.float64) if isinstance(v, torch.Tensor) else v)
            for k, v in index.items()}

    def enable_half(self) -> bool:
        """float16 inference on a GPU (no effect on CPU); returns whether it is on."""
        if self.device.type == "cuda":
            self.model.half()
            self.half = True
        return self.half

    def _regressor(self) -> PoseRegressor:
        if not isinstance(self.model, PoseRegressor):
            raise ConfigError("features and predict_features are a regressor's (PoseNet, "
                              "MapNet); a structure-aware model predicts from images")
        return self.model

    @torch.no_grad()
    def features(self, images_rgb: list[np.ndarray]) -> torch.Tensor:
        """Backbone features (B, D) of RGB uint8 images (regressors)."""
        batch = torch.stack([self.transform(img) for img in images_rgb]).to(self.device)
        return self._regressor().features(batch.half() if self.half else batch)

    @torch.no_grad()
    def predict_features(self, feats_BD: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Poses (B, 7) and calibrated covariances (B, 6, 6) from backbone features
        (regressors)."""
        model = self._regressor()
        poses = model.decode(model.head(feats_BD)).double().cpu().numpy()
        if self.samples < 2:
            cov = np.repeat(np.eye(6)[None], len(poses), 0)
        else:
            _, cov = mean_and_covariance(
                mc_samples(model, feats_BD, self.samples).double().cpu().numpy())
        if self.calibration:
            nov = None
            if self.novelty_index is not None:
                nov = novelty(self.novelty_index,
                              model.norm(feats_BD).double().cpu().numpy())
            cov = apply_calibration(cov, self.calibration, nov)
        return poses, cov

    def predict(self, images_rgb: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Poses (B, 7: x, y, z, qw, qx, qy, qz) and covariances (B, 6, 6, REP 103 order)."""
        if self.structure:
            return self._predict_structure(images_rgb)
        return self.predict_features(self.features(images_rgb))

    @torch.no_grad()
    def _predict_structure(self, images_rgb: list[np.ndarray]
                           ) -> tuple[np.ndarray, np.ndarray]:
        batch = torch.stack([self.transform(img) for img in images_rgb]).to(self.device)
        assert isinstance(self.model, StructureAwareNet)
        poses, raw, solved = solve_poses(self.model, batch.half() if self.half else batch,
                                         [img.shape[:2] for img in images_rgb],
                                         solver=self.solver)
        self.last_solved = solved
        cov = raw.copy()
        finite = np.all(np.isfinite(raw), axis=(1, 2))  # a NaN pose stays NaN (rejected)
        if self.calibration and finite.any():
            cov[finite] = apply_calibration(raw[finite], self.calibration)
            pnp = self.calibration.get("pnp")
            if (solved & finite).any() and isinstance(pnp, dict):
                cov[solved & finite] = apply_calibration(raw[solved & finite], pnp)
        return poses, cov
