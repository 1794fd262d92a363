"""MeNet: training and evaluation of the relative pose of an image pair.

The network (:class:`~camera_pose_ros.learning.networks.RelativePoseNet`) takes two images
of the same building and predicts ``cam1_from_cam2``: the second camera's position in the
first camera's frame (metres) and its rotation. Training pairs are frames ``skip`` apart
inside the contiguous runs of a split (as MapNet's tuples), in both orders; the loss is the
training config's (L1, smooth L1, MSE, beta, or learned homoscedastic weighting) on the
translation and the log-quaternion of the relative pose.

``camera-pose train`` with ``model: menet`` calls :func:`train_menet`;
``camera-pose evaluate`` on a MeNet checkpoint calls :func:`evaluate_menet` (relative pose
errors on the split's pairs). A MeNet checkpoint gives no camera pose by itself, so the node
and ``localize`` refuse it with a clear error.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from camera_pose_ros.config import to_dict
from camera_pose_ros.errors import TrainingError
from camera_pose_ros.fileio import write_json_atomic
from camera_pose_ros.learning.checkpoint import build_network, load_checkpoint, save_checkpoint
from camera_pose_ros.learning.data import (
    ImageTransform,
    PoseImageDataset,
    load_split,
    tuple_starts,
)
from camera_pose_ros.learning.losses import PoseLoss
from camera_pose_ros.learning.networks import (
    RelativePoseNet,
    quat_conjugate,
    quat_multiply,
    quat_rotate,
    quat_to_logq,
)
from camera_pose_ros.learning.predict import resolve_device
from camera_pose_ros.metrics import error_summary

if TYPE_CHECKING:
    from camera_pose_ros.learning.train import TrainConfig

__all__ = ["PairDataset", "relative_pose", "train_menet", "evaluate_menet"]

log = logging.getLogger(__name__)


def relative_pose(poses1_B7: torch.Tensor, poses2_B7: torch.Tensor) -> torch.Tensor:
    """``cam1_from_cam2`` (B, 7: translation, canonical unit quaternion) of two map poses."""
    q1_inv = quat_conjugate(poses1_B7[..., 3:])
    t = quat_rotate(q1_inv, poses2_B7[..., :3] - poses1_B7[..., :3])
    q = quat_multiply(q1_inv, poses2_B7[..., 3:])
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.cat([t, torch.where(q[..., :1] < 0, -q, q)], dim=-1)


class PairDataset(Dataset):
    """Frame pairs ``skip`` apart inside a split's contiguous runs, in both orders.

    Returns images (2, 3, H, W) and the relative pose (7,) of the second in the first.
    """

    def __init__(self, base: PoseImageDataset, skip: int) -> None:
        self.base = base
        idx = tuple_starts(base.table.stamps, 2, skip)
        if idx.shape[1] != 2:
            raise TrainingError(f"no frame pairs {skip} apart in a split of {len(base)} frames "
                                "(lower skip)")
        self.pairs = np.concatenate([idx, idx[:, ::-1]])

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        (im1, p1), (im2, p2) = (self.base[int(j)] for j in self.pairs[i])
        return torch.stack([im1, im2]), relative_pose(p1[None], p2[None])[0]


def _encode(rel_B7: torch.Tensor) -> torch.Tensor:
    return torch.cat([rel_B7[:, :3], quat_to_logq(rel_B7[:, 3:])], dim=-1)


@torch.no_grad()
def _predict(model: RelativePoseNet, loader: DataLoader, device: torch.device
             ) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    pred, gt = [], []
    for images, rel in loader:
        images = images.to(device)
        pred.append(model(images[:, 0], images[:, 1]).double().cpu())
        gt.append(rel.double())
    return torch.cat(pred).numpy(), torch.cat(gt).numpy()


def _metrics(pred: np.ndarray, gt: np.ndarray) -> dict:
    return error_summary(pred[:, :3], pred[:, 3:], gt[:, :3], gt[:, 3:])


def train_menet(data: Path, config: TrainConfig, out: Path, *, progress: bool = True) -> Path:
    """Train MeNet on ``DATA``'s train split, early-stopped on validation; write the model.

    Returns ``OUT/model.pt`` (kind ``menet``). Full fine-tuning only (``freeze_backbone`` and
    ``torchrun`` are for the absolute regressors).
    """
    from camera_pose_ros.learning.train import _plot_curve, _write_metrics

    cfg, t_start = config, time.perf_counter()
    device = resolve_device(cfg.device)
    train_table, val_table = load_split(data, "train"), load_split(data, "validation")
    model_cfg = {"kind": "menet", "backbone": cfg.backbone, "hidden": cfg.hidden,
                 "pool_grid": list(cfg.pool_grid), "dropout": cfg.dropout}
    model, info = build_network(model_cfg, cfg.pretrained)
    model.to(device)
    transform = ImageTransform(cfg.input_height, cfg.input_width)
    aug = ImageTransform(cfg.input_height, cfg.input_width, color_jitter=cfg.color_jitter,
                         blur_probability=cfg.blur_probability)
    train_ds = PairDataset(PoseImageDataset(data, train_table, aug, augment=True,
                                            seed=cfg.seed), cfg.skip)
    val_loader = DataLoader(PairDataset(PoseImageDataset(data, val_table, transform),
                                        cfg.skip), batch_size=16)
    loss_fn = PoseLoss(cfg.loss, beta=cfg.beta).to(device)
    params = [p for p in model.parameters()] + [p for p in loss_fn.parameters()
                                               if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)
    best: dict = {"score": float("inf"), "epoch": -1}
    rows: list[dict] = []
    step = 0
    bar = tqdm(range(cfg.epochs), desc="train menet", unit="epoch", disable=not progress)
    for epoch in bar:
        t0 = time.perf_counter()
        train_ds.base.epoch = epoch
        g = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, generator=g,
                            drop_last=len(train_ds) > cfg.batch_size,
                            num_workers=cfg.num_workers)
        model.train()
        losses = []
        for images, rel in loader:
            images, rel = images.to(device), rel.to(device)
            f = torch.cat([model.backbone(images[:, 0]), model.backbone(images[:, 1])], -1)
            h = model.fc(f)
            raw = torch.cat([model.fc_xyz(h), model.fc_logq(h)], -1)
            loss = loss_fn(raw, _encode(rel))
            if not torch.isfinite(loss):
                raise TrainingError(f"loss '{cfg.loss}' became {loss.item()} at step {step}; "
                                    "training stopped (lower lr, or use a robust loss)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            losses.append(float(loss.item()))
            step += 1
            if cfg.max_steps and step >= cfg.max_steps:
                break
        sched.step()
        metrics = _metrics(*_predict(model, val_loader, device))
        score = metrics["median_position_m"] + metrics["median_rotation_deg"] / 10.0
        if score < best["score"]:
            best = {"score": score, "epoch": epoch, "metrics": metrics,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        rows.append({"epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses)),
                     "val_median_position_m": metrics["median_position_m"],
                     "val_median_rotation_deg": metrics["median_rotation_deg"],
                     "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0})
        _write_metrics(rows, out / "metrics.csv")
        bar.set_postfix(loss=f"{rows[-1]['train_loss']:.3f}",
                        val_m=f"{metrics['median_position_m']:.2f}")
        if (epoch - best["epoch"] >= cfg.early_stopping_patience
                or (cfg.max_steps and step >= cfg.max_steps)):
            break
    model.load_state_dict(best["state"])
    _plot_curve(rows, out / "loss_curve.png")
    provenance = {"dataset": str(data.resolve()), "train_config": to_dict(cfg),
                  "splits": {"train": len(train_table), "validation": len(val_table)},
                  "best_epoch": best["epoch"] + 1, "epochs_run": len(rows),
                  "train_seconds": time.perf_counter() - t_start, "device": str(device)}
    path = save_checkpoint(
        out / "model.pt", model, model_cfg=model_cfg,
        input_cfg={"height": cfg.input_height, "width": cfg.input_width,
                   "mean": list(transform.mean), "std": list(transform.std)},
        map_frame=cfg.map_frame,
        extra={"pretrained": info.pretrained, "weights_source": info.weights_source,
               "provenance": provenance, "metrics": {"validation": best["metrics"]},
               "pair_skip": cfg.skip})
    log.info("trained menet/%s: validation relative pose median %.3f m, %.2f deg",
             cfg.backbone, best["metrics"]["median_position_m"],
             best["metrics"]["median_rotation_deg"])
    return path


def evaluate_menet(checkpoint: str | os.PathLike, data: str | os.PathLike, *,
                   split: str = "test", out: str | os.PathLike | None = None,
                   device: str = "auto") -> Path:
    """Relative pose errors of a MeNet checkpoint on a split's pairs; write metrics JSON.

    The baseline is "no motion" (identity relative pose), the trivial answer for nearby frames.
    """
    data = Path(data)
    out = Path(out) if out else data / f"eval_{split}" / "metrics.json"
    loaded = load_checkpoint(checkpoint)
    dev = resolve_device(device)
    ds = PairDataset(PoseImageDataset(data, load_split(data, split), loaded.transform),
                     int(loaded.data.get("pair_skip", 2)))
    pred, gt = _predict(loaded.model.to(dev), DataLoader(ds, batch_size=16), dev)
    identity = np.tile([0.0, 0, 0, 1, 0, 0, 0], (len(gt), 1))
    metrics = {"split": split, "checkpoint": str(checkpoint), "kind": "menet",
               "relative_pose": _metrics(pred, gt), "pairs": len(gt),
               "baseline_no_motion": _metrics(identity, gt)}
    log.info("evaluate menet %s: relative pose median %.3f m, %.2f deg over %d pairs", split,
             metrics["relative_pose"]["median_position_m"],
             metrics["relative_pose"]["median_rotation_deg"], len(gt))
    return write_json_atomic(out, metrics)
