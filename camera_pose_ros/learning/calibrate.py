"""Covariance calibration off the training path: at the end of training, or again later.

``fit_offpath_calibration`` is what training runs last (see learning/uncertainty.py for the
model); ``recalibrate_checkpoint`` runs it on an existing checkpoint and its dataset
(``camera-pose calibrate``), e.g. for a checkpoint trained before the novelty term existed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from camera_pose_ros.fileio import atomic_path
from camera_pose_ros.learning.checkpoint import load_checkpoint, load_plain
from camera_pose_ros.learning.data import (
    ImageTransform,
    OffPathViews,
    PoseImageDataset,
    camera_matrix,
    load_split,
)
from camera_pose_ros.learning.networks import PoseRegressor
from camera_pose_ros.learning.predict import resolve_device
from camera_pose_ros.learning.uncertainty import (
    error_vectors,
    fit_calibration,
    fit_novelty_index,
    mc_samples,
    mean_and_covariance,
    novelty,
)

__all__ = ["fit_offpath_calibration", "recalibrate_checkpoint"]

log = logging.getLogger(__name__)


@torch.no_grad()
def _features(model: PoseRegressor, ds: Dataset, device: torch.device, num_workers: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    out, poses = [], []
    for x, p in DataLoader(ds, batch_size=32, num_workers=num_workers):
        out.append(model.features(x.to(device)))
        poses.append(p)
    return torch.cat(out), torch.cat(poses)


@torch.no_grad()
def fit_offpath_calibration(model: PoseRegressor, transform: ImageTransform,
                            data: str | os.PathLike, *, samples: int, seed: int = 0,
                            device: torch.device | str = "cpu", num_workers: int = 0) -> dict:
    """Calibration of a trained regressor's covariances (plain data for the checkpoint).

    A novelty index of the training split's features, then MC-dropout scales and the
    novelty term fitted on the validation split's frames as recorded, turned and relit
    (:class:`~camera_pose_ros.learning.data.OffPathViews`).
    """
    device = torch.device(device)
    model.eval()
    train = load_split(data, "train")
    val = load_split(data, "validation")
    train_feats, _ = _features(model, PoseImageDataset(data, train, transform), device,
                               num_workers)
    index = fit_novelty_index(model.norm(train_feats).double().cpu().numpy())
    feats, poses = _features(model, OffPathViews(data, val, transform, K=camera_matrix(data),
                                                 seed=seed), device, num_workers)
    pred = model.decode(model.head(feats)).double().cpu().numpy()
    _, cov = mean_and_covariance(mc_samples(model, feats, samples).double().cpu().numpy())
    err = error_vectors(pred, poses.double().numpy())
    nov = novelty(index, model.norm(feats).double().cpu().numpy())
    calib = fit_calibration(err, cov, samples=samples, novelty_N=nov)
    calib["novelty"] = index
    calib["calibration_frames"] = int(len(err))
    log.info("covariance calibration on %d off-path views of the validation split: "
             "k_pos %.3g, s_pos %.3g m, k_rot %.3g, s_rot %.3g rad per unit of novelty",
             len(err), calib["k_pos"], calib.get("s_pos", 0.0), calib["k_rot"],
             calib.get("s_rot", 0.0))
    return calib


def recalibrate_checkpoint(checkpoint: str | os.PathLike, data: str | os.PathLike, *,
                           out: str | os.PathLike | None = None, device: str = "auto",
                           samples: int | None = None) -> Path:
    """Fit the calibration of ``checkpoint`` again on ``data`` and write it (atomically) to
    ``out`` (default: the checkpoint itself)."""
    loaded = load_checkpoint(checkpoint)
    payload = load_plain(checkpoint)
    old = payload.get("calibration") or {}
    dev = resolve_device(device)
    calib = fit_offpath_calibration(
        loaded.model.to(dev), loaded.transform, data,
        samples=int(samples if samples is not None else old.get("samples", 20)),
        device=dev)
    payload["calibration"] = calib
    target = Path(out) if out is not None else Path(checkpoint)
    with atomic_path(target, suffix=".tmp") as tmp:
        torch.save(payload, tmp)
    return target
