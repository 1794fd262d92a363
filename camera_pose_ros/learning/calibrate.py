"""Covariance calibration off the training path: at the end of training, or again later.

``fit_offpath_calibration`` is what training runs last (see learning/uncertainty.py for the
model); ``recalibrate_checkpoint`` runs it on an existing checkpoint and its dataset
(``camera-pose calibrate``), e.g. for a checkpoint trained before the novelty term existed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from camera_pose_ros.errors import InputDataError
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
from camera_pose_ros.learning.structure import StructureAwareNet, solve_poses
from camera_pose_ros.learning.uncertainty import (
    error_vectors,
    fit_calibration,
    fit_novelty_index,
    mc_samples,
    mean_and_covariance,
    novelty,
)

__all__ = ["fit_offpath_calibration", "fit_structure_calibration", "recalibrate_checkpoint"]

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


@torch.no_grad()
def fit_structure_calibration(model: StructureAwareNet, transform: ImageTransform,
                              data: str | os.PathLike, *, seed: int = 0,
                              device: torch.device | str = "cpu", num_workers: int = 0
                              ) -> dict:
    """Calibration of a structure-aware model's covariances (plain data for the checkpoint).

    The raw covariances (the Kabsch fit's residuals; PnP's reprojection residuals) are
    scaled by ``k_pos``, ``k_rot`` fitted on the validation split's frames as recorded,
    turned and relit (:class:`~camera_pose_ros.learning.data.OffPathViews`), as for the
    regressors: the top level for the Kabsch pose, ``pnp`` for the scr-pnp mode.
    """
    device = torch.device(device)
    val = load_split(data, "validation")
    views = OffPathViews(data, val, transform, K=camera_matrix(data), seed=seed)
    size = _image_size(data, val.images[0] if val.images else "")
    out: dict[str, list[np.ndarray]] = {"kp": [], "kc": [], "pp": [], "pc": [], "ok": [],
                                        "gt": []}
    for x, p in DataLoader(views, batch_size=16, num_workers=num_workers):
        x = x.to(device)
        kp, kc, _ = solve_poses(model, x, [size] * len(x), solver="kabsch")
        pp, pc, ok = solve_poses(model, x, [size] * len(x), solver="pnp")
        for key, v in (("kp", kp), ("kc", kc), ("pp", pp), ("pc", pc), ("ok", ok),
                       ("gt", p.double().numpy())):
            out[key].append(v)
    a = {k: np.concatenate(v) for k, v in out.items()}
    good = np.all(np.isfinite(a["kp"]), 1)
    calib = fit_calibration(error_vectors(a["kp"][good], a["gt"][good]), a["kc"][good],
                            samples=0)
    calib["method"] = "kabsch_residuals"
    ok = a["ok"] & good
    pnp = fit_calibration(error_vectors(a["pp"][ok], a["gt"][ok]), a["pc"][ok], samples=0,
                          floor_pos=0.005, floor_rot=float(np.radians(0.1)))
    pnp["method"] = "pnp_reprojection"
    pnp["solved_share"] = float(ok.mean()) if len(ok) else 0.0
    calib["pnp"] = pnp
    calib["calibration_frames"] = int(len(good))
    log.info("covariance calibration on %d off-path views of the validation split: Kabsch "
             "k_pos %.3g, k_rot %.3g; PnP k_pos %.3g, k_rot %.3g (%.0f%% solved)",
             len(good), calib["k_pos"], calib["k_rot"], pnp["k_pos"], pnp["k_rot"],
             100 * pnp["solved_share"])
    return calib


def _image_size(data: str | os.PathLike, name: str) -> tuple[int, int]:
    """(height, width) of the dataset's frames (camera.json, else the image itself)."""
    import cv2

    K = camera_matrix(data)
    img = cv2.imread(str(Path(data) / "images" / name), cv2.IMREAD_COLOR) if name else None
    if img is not None:
        return int(img.shape[0]), int(img.shape[1])
    if K is None:
        raise InputDataError(f"cannot tell the frame size of {data}")
    return int(round(2 * (K[1, 2] + 0.5))), int(round(2 * (K[0, 2] + 0.5)))


def recalibrate_checkpoint(checkpoint: str | os.PathLike, data: str | os.PathLike, *,
                           out: str | os.PathLike | None = None, device: str = "auto",
                           samples: int | None = None) -> Path:
    """Fit the calibration of ``checkpoint`` again on ``data`` and write it (atomically) to
    ``out`` (default: the checkpoint itself)."""
    loaded = load_checkpoint(checkpoint)
    payload = load_plain(checkpoint)
    old = payload.get("calibration") or {}
    dev = resolve_device(device)
    if isinstance(loaded.model, StructureAwareNet):
        calib = fit_structure_calibration(loaded.model.to(dev), loaded.transform, data,
                                          device=dev)
    else:
        calib = fit_offpath_calibration(
            loaded.model.to(dev), loaded.transform, data,
            samples=int(samples if samples is not None else old.get("samples", 20)),
            device=dev)
    payload["calibration"] = calib
    target = Path(out) if out is not None else Path(checkpoint)
    with atomic_path(target, suffix=".tmp") as tmp:
        torch.save(payload, tmp)
    return target
