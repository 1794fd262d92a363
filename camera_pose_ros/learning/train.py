"""``camera-pose train``: fit a PoseNet or MapNet regressor to one building's dataset.

The model kind (``model:``) picks the config schema and the loss from the registry
(learning/registry.py): PoseNet trains on single frames, MapNet on tuples of nearby frames.
Two modes:

- ``freeze_backbone: true`` (the source project's approach): backbone features are computed
  once (the clean image plus ``augment_copies`` augmented copies per training frame) and
  only the head is trained, on cached tensors: minutes on a CPU.
- ``freeze_backbone: false``: full fine-tuning with augmentation on every step. Under
  ``torchrun`` it trains with DistributedDataParallel across processes (one per GPU).

Training is deterministic for a seed, uses AdamW with a cosine schedule, stops early on the
validation score (median position error in metres + median rotation error in degrees / 10),
writes ``RUN/last.pt`` (resumable state) atomically every epoch, ``RUN/metrics.csv``,
``RUN/loss_curve.png`` and finally ``RUN/model.pt``: the best weights with their
uncertainty calibration. A non-finite loss stops training with a message naming the loss
and the step; the last good checkpoint stays as it was.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from camera_pose_ros.config import load_yaml, to_dict
from camera_pose_ros.errors import CheckpointError, ConfigError, InputDataError, TrainingError
from camera_pose_ros.fileio import atomic_path, write_text_atomic
from camera_pose_ros.io.refmap import REFINEMENT_MAP
from camera_pose_ros.io.scenelabels import MISSING_LABELS_HINT, load_scene_labels
from camera_pose_ros.learning.calibrate import fit_offpath_calibration
from camera_pose_ros.learning.checkpoint import (
    InputConfig,
    NetworkConfig,
    Provenance,
    build_network,
    save_checkpoint,
)
from camera_pose_ros.learning.data import (
    ImageTransform,
    PoseImageDataset,
    SceneLabelDataset,
    TupleDataset,
    camera_matrix,
    load_split,
    poses_tensor,
    tuple_starts,
)
from camera_pose_ros.learning.networks import PoseRegressor
from camera_pose_ros.learning.predict import resolve_device
from camera_pose_ros.learning.registry import (
    MODELS,
    StructureAwareConfig,
    TrainConfig,
    train_config,
)
from camera_pose_ros.learning.structure import StructureAwareNet
from camera_pose_ros.metrics import error_summary

__all__ = ["TrainConfig", "load_train_config", "train"]

log = logging.getLogger(__name__)


def load_train_config(path: str | os.PathLike | None, **overrides: object) -> TrainConfig:
    """The training config of a YAML file (``None``: defaults) with keyword overrides, in
    the schema of the model it names (:func:`~camera_pose_ros.learning.registry.train_config`:
    a key of another model's schema is a ConfigError naming it)."""
    data = load_yaml(path) if path else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return train_config(data, where=str(path) if path else "train config")


class _ImageLoss(torch.nn.Module):
    """Images (B, 3, H, W) or tuples (B, T, 3, H, W) and their poses -> the training loss."""

    def __init__(self, model: PoseRegressor, loss: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, images: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        """Scalar loss of one batch."""
        if images.dim() == 5:  # MapNet tuples
            b, t = images.shape[:2]
            raw = self.model.head(self.model.features(images.flatten(0, 1))).view(b, t, 6)
        else:
            raw = self.model.head(self.model.features(images))
        return self.loss(raw, self.model.encode(poses))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def _score(metrics: dict) -> float:
    """Early-stopping score: metres + degrees / 10 (medians on validation)."""
    return metrics["median_position_m"] + metrics["median_rotation_deg"] / 10.0


class _Run:
    """Everything one training run holds; split from ``train`` to keep each step short."""

    def __init__(self, cfg: TrainConfig, data: Path, out: Path, progress: bool = True) -> None:
        self.cfg, self.data, self.out = cfg, data, out
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.bars = progress and self.rank == 0
        if self.world > 1:
            self._init_distributed()
        else:
            self.device = resolve_device(cfg.device)
        self.train_table = load_split(data, "train")
        self.val_table = load_split(data, "validation")
        self.train_poses = poses_tensor(self.train_table)
        self.val_poses = poses_tensor(self.val_table)
        xy_std = self.train_poses[:, :3].std(0)
        pos_scale = float(max(xy_std.max().item(), 1e-3))
        mean = [float(v) for v in self.train_poses[:, :3].mean(0)]
        self.model_cfg = NetworkConfig(
            kind=cfg.model, backbone=cfg.backbone, hidden=cfg.hidden, dropout=cfg.dropout,
            pool_grid=cfg.pool_grid, pos_mean=(mean[0], mean[1], mean[2]),
            pos_scale=pos_scale)
        model, self.backbone_info = build_network(self.model_cfg, cfg.pretrained)
        assert isinstance(model, PoseRegressor)
        self.model: PoseRegressor = model.to(self.device)
        #: (steps, skip) of the tuples a MapNet trains on; None: single frames
        self.tuples = cfg.tuple_layout()
        self.transform = ImageTransform(cfg.input_height, cfg.input_width)
        self.K = camera_matrix(data)
        if cfg.rotation_augment_deg > 0 and self.K is None:
            log.warning("rotation_augment_deg is set but %s has no camera.json: no rotation "
                        "augmentation", data)
        self.aug_transform = replace(self.transform, color_jitter=cfg.color_jitter,
                                     blur_probability=cfg.blur_probability)
        self.loss = cfg.build_loss().to(self.device)
        self.loss_name = str(cfg.loss)
        if cfg.freeze_backbone:
            for p in self.model.backbone.parameters():
                p.requires_grad_(False)
        params = [p for p in self.model.parameters() if p.requires_grad]
        params += [p for p in self.loss.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler: torch.optim.lr_scheduler.LRScheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, cfg.epochs))
        # full fine-tuning runs image -> loss through one module, so that under torchrun
        # DistributedDataParallel sees the forward pass and averages every gradient (the
        # network's and the learned loss weights') across processes
        self.ddp_model: torch.nn.Module = _ImageLoss(self.model, self.loss)
        if self.world > 1:
            if cfg.freeze_backbone:
                raise ConfigError("torchrun training needs freeze_backbone: false (cached-"
                                  "feature training is fast on one process)")
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.ddp_model, device_ids=[self.device.index] if self.device.type == "cuda"
                else None)

    def _init_distributed(self) -> None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device("cpu")

    # -- cached features ------------------------------------------------------------------
    def _dataset(self, table, transform: ImageTransform, augment: bool, seed: int
                 ) -> PoseImageDataset:
        return PoseImageDataset(self.data, table, transform, augment=augment, seed=seed,
                                rotation_deg=self.cfg.rotation_augment_deg if augment else 0.0,
                                K=self.K)

    @torch.no_grad()
    def _features(self, table, transform: ImageTransform, seed: int | None,
                  desc: str) -> tuple[torch.Tensor, torch.Tensor]:
        ds = self._dataset(table, transform, seed is not None, seed or 0)
        loader = DataLoader(ds, batch_size=32, num_workers=self.cfg.num_workers)
        self.model.backbone.eval()
        feats, poses = [], []
        for images, p in tqdm(loader, desc=desc, unit="batch", disable=not self.bars):
            feats.append(self.model.features(images.to(self.device)))
            poses.append(p)
        return torch.cat(feats), torch.cat(poses)

    def cache_features(self) -> None:
        """Compute backbone features of every training copy and of the validation frames."""
        cfg = self.cfg
        copies = [self._features(self.train_table, self.transform, None, "features (clean)")]
        for c in range(cfg.augment_copies):
            copies.append(self._features(self.train_table, self.aug_transform,
                                         cfg.seed * 1000 + c, f"features (aug {c + 1})"))
        self.train_feats = torch.cat([f for f, _ in copies])
        self.val_feats = self._features(self.val_table, self.transform, None,
                                        "features (val)")[0]
        n = len(self.train_table)
        base = tuple_starts(self.train_table.stamps, *self.tuples) if (
            self.tuples is not None) else np.arange(n)[:, None]
        self.train_index = np.concatenate([base + c * n for c in range(len(copies))])
        # augmented copies carry their own poses (rotation augmentation changes them)
        self.train_targets = torch.cat([p for _, p in copies]).to(self.device)

    def prepare(self) -> None:
        """Work before the first epoch: cached features when the backbone is frozen."""
        if self.cfg.freeze_backbone:
            self.cache_features()

    def epoch(self, epoch: int, step: int) -> tuple[float, int]:
        """One training epoch; returns the mean loss and the global step."""
        if self.cfg.freeze_backbone:
            return self.epoch_cached(epoch, step)
        return self.epoch_full(epoch, step)

    # -- one epoch --------------------------------------------------------------------------
    def _step(self, raw: torch.Tensor, target_poses: torch.Tensor, step: int) -> float:
        return self._backward(self.loss(raw, self.model.encode(target_poses)), step)

    def _backward(self, loss: torch.Tensor, step: int) -> float:
        if not torch.isfinite(loss):
            raise TrainingError(
                f"loss '{self.loss_name}' became {loss.item()} at step {step}; training stopped "
                f"(lower lr, or use a robust loss); the last good checkpoint is kept at "
                f"{self.out / 'last.pt'}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(
            [p for g in self.optimizer.param_groups for p in g["params"]], 10.0)
        self.optimizer.step()
        return float(loss.item())

    def epoch_cached(self, epoch: int, step: int) -> tuple[float, int]:
        """One epoch over cached features; returns mean loss and the global step."""
        g = torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch)
        order = torch.randperm(len(self.train_index), generator=g).numpy()
        self.model.train()
        losses = []
        for k in range(0, len(order), self.cfg.batch_size):
            idx = self.train_index[order[k:k + self.cfg.batch_size]]  # (B, T)
            b, t = idx.shape
            feats = self.train_feats[torch.from_numpy(idx.reshape(-1))]
            raw = self.model.head(feats)
            poses = self.train_targets[torch.from_numpy(idx.reshape(-1))]
            if self.tuples is not None:
                raw, poses = raw.view(b, t, 6), poses.view(b, t, 7)
            losses.append(self._step(raw, poses, step))
            step += 1
            if self.cfg.max_steps and step >= self.cfg.max_steps:
                break
        return float(np.mean(losses)), step

    def epoch_full(self, epoch: int, step: int) -> tuple[float, int]:
        """One epoch of full fine-tuning with on-the-fly augmentation."""
        cfg = self.cfg
        frames = self._dataset(self.train_table, self.aug_transform, True, cfg.seed)
        frames.epoch = epoch
        ds: PoseImageDataset | TupleDataset = frames if self.tuples is None else TupleDataset(
            frames, steps=self.tuples[0], skip=self.tuples[1])
        sampler: DistributedSampler | None = None
        if self.world > 1:
            sampler = torch.utils.data.distributed.DistributedSampler(ds, seed=cfg.seed)
            sampler.set_epoch(epoch)
        g = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=sampler is None,
                            sampler=sampler, generator=g, num_workers=cfg.num_workers,
                            drop_last=len(ds) > cfg.batch_size)
        self.ddp_model.train()
        losses = []
        for images, poses in tqdm(loader, desc=f"epoch {epoch + 1}", unit="batch",
                                  leave=False, disable=not self.bars):
            images, poses = images.to(self.device), poses.to(self.device)
            losses.append(self._backward(self.ddp_model(images, poses), step))
            step += 1
            if cfg.max_steps and step >= cfg.max_steps:
                break
        return float(np.mean(losses)), step

    @torch.no_grad()
    def validate(self) -> tuple[dict, np.ndarray]:
        """Validation metrics and predicted poses (dropout off)."""
        self.model.eval()
        if self.cfg.freeze_backbone:
            pred = self.model.decode(self.model.head(self.val_feats))
        else:
            ds = PoseImageDataset(self.data, self.val_table, self.transform)
            loader = DataLoader(ds, batch_size=32, num_workers=self.cfg.num_workers)
            pred = torch.cat([self.model(x.to(self.device)) for x, _ in loader])
        p = pred.double().cpu().numpy()
        gt = self.val_poses.double().numpy()
        return error_summary(p[:, :3], p[:, 3:], gt[:, :3], gt[:, 3:]), p

    def calibrate(self) -> dict:
        """Fit the covariance calibration off the training path (learning/calibrate.py)."""
        return fit_offpath_calibration(self.model, self.transform, self.data,
                                       samples=self.cfg.mc_samples, seed=self.cfg.seed,
                                       device=self.device, num_workers=self.cfg.num_workers)

    # -- state ------------------------------------------------------------------------------
    def state(self, epoch: int, step: int, best: dict) -> dict:
        """Resumable training state (plain data: loads with weights_only=True)."""
        return {
            "epoch": epoch, "step": step, "best": best,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "loss": {k: v.detach().cpu() for k, v in self.loss.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "config": to_dict(self.cfg),
        }

    def restore(self, state: dict) -> tuple[int, int, dict]:
        """Load a state written by :meth:`state`; returns epoch, step, best.

        Raises:
            CheckpointError: the state's optimizer, scheduler or best weights differ in
                shape, type or finiteness from what this run would write.
        """
        _check_like(state["scheduler"], self.scheduler.state_dict(), "scheduler")
        fresh = self.optimizer.state_dict()
        _check_like(state["optimizer"].get("param_groups"), fresh["param_groups"],
                    "optimizer.param_groups")
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        per_param = state["optimizer"].get("state")
        if not isinstance(per_param, dict):
            raise CheckpointError("optimizer.state is not a mapping")
        for i, entry in per_param.items():
            if not (isinstance(i, int) and 0 <= i < len(params) and isinstance(entry, dict)):
                raise CheckpointError(f"optimizer.state has an entry {i!r} for no parameter")
            for name, v in entry.items():
                if not isinstance(v, torch.Tensor) or not bool(torch.isfinite(v).all()) or (
                        v.dim() > 0 and v.shape != params[i].shape):
                    raise CheckpointError(
                        f"optimizer.state[{i}].{name} does not fit its parameter")
        if "state" in state["best"]:
            _check_like(state["best"]["state"], self.model.state_dict(), "best.state")
        self.model.load_state_dict(state["model"])
        self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        best = state["best"]
        if "state" in best:
            best["state"] = {k: v.to(self.device) for k, v in best["state"].items()}
        return int(state["epoch"]), int(state["step"]), best


class _StructureRun(_Run):
    """A structure-aware training run (learning/structure.py): the two stages of the paper
    over :class:`~camera_pose_ros.learning.data.SceneLabelDataset` frames, full training
    (the trunk trains unless ``freeze_backbone``), single process."""

    model: StructureAwareNet  # type: ignore[assignment]

    def __init__(self, cfg: TrainConfig, data: Path, out: Path, progress: bool = True) -> None:
        if not isinstance(cfg, StructureAwareConfig):
            raise ConfigError(f"a structure-aware run needs its config, not {type(cfg)}")
        self.cfg, self.sa, self.data, self.out = cfg, cfg, data, out
        self.world, self.rank = 1, 0
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("structure_aware trains in one process (no torchrun)")
        self.bars = progress
        self.device = resolve_device(cfg.device)
        self.train_table = load_split(data, "train")
        self.val_table = load_split(data, "validation")
        self.train_poses = poses_tensor(self.train_table)
        self.val_poses = poses_tensor(self.val_table)
        labels = load_scene_labels(data)
        self.K = camera_matrix(data)
        if self.K is None:
            raise InputDataError(f"{data} has no camera.json: a structure-aware model needs "
                                 "the camera's intrinsics (camera-pose frames writes it)")
        self.transform = ImageTransform(cfg.input_height, cfg.input_width)
        self.aug_transform = replace(self.transform, color_jitter=cfg.color_jitter,
                                     blur_probability=cfg.blur_probability)
        self.train_set = SceneLabelDataset(
            data, self.train_table, labels, self.aug_transform, augment=True, seed=cfg.seed,
            rotation_deg=cfg.rotation_augment_deg, K=self.K, max_labels=cfg.max_labels,
            progress=progress)
        if self.train_set.labelled == 0:
            raise InputDataError(f"no training frame of {data} has scene labels; "
                                 f"{MISSING_LABELS_HINT}")
        self.val_set = SceneLabelDataset(data, self.val_table, labels, self.transform,
                                         max_labels=cfg.max_labels, progress=progress)
        # normalisation and depth range from the training frames' labels only
        row = labels.index()
        train_rows = [row[n] for n in self.train_set.names if n in row]
        xyz = np.concatenate([labels.frame(i)[1] for i in train_rows]).astype(np.float64)
        depth = np.concatenate([labels.frame(i)[2] for i in train_rows]).astype(np.float64)
        lo, hi = np.quantile(depth, [0.005, 0.995])
        w_img, h_img = labels.image_size
        cam = json.loads((data / "camera.json").read_text())
        from camera_pose_ros.camera import PinholeCamera

        pc = PinholeCamera.from_dict(cam)
        self.model_cfg = NetworkConfig(
            kind=cfg.model, backbone=cfg.backbone, hidden=cfg.head_width, dropout=0.0,
            pos_mean=tuple(float(v) for v in xyz.mean(0)),  # type: ignore[arg-type]
            pos_scale=float(max(xyz.std(0).max(), 1e-3)),
            depth_range=(float(max(lo * 0.5, 0.05)), float(hi * 1.5)),
            intrinsics=(pc.fx / pc.width, pc.fy / pc.height, (pc.cx + 0.5) / pc.width,
                        (pc.cy + 0.5) / pc.height),
            distortion=tuple(float(v) for v in pc.distortion))
        if (w_img, h_img) != (pc.width, pc.height):
            raise InputDataError(f"{data}: scene labels are for {w_img}x{h_img} frames, "
                                 f"camera.json for {pc.width}x{pc.height}; {MISSING_LABELS_HINT}")
        model, self.backbone_info = build_network(self.model_cfg, cfg.pretrained)
        assert isinstance(model, StructureAwareNet)
        self.model = model.to(self.device)
        self.tuples = None
        self.loss = cfg.build_loss().to(self.device)
        self.loss_name = "structure_aware"
        if cfg.freeze_backbone:
            for p in self.model.trunk.parameters():
                p.requires_grad_(False)
        geometry = [p for p in self.model.geometry_parameters() if p.requires_grad]
        weighting = list(self.model.weighting.parameters())
        self.optimizer = torch.optim.AdamW(
            [{"params": geometry, "lr": cfg.lr}, {"params": weighting, "lr": cfg.lr}],
            lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, [
            self._geometry_lr, self._weighting_lr])
        self.parts: dict[str, float] = {}

    # learning-rate factors of the two parameter groups, per epoch (cosine in each stage)
    def _cosine(self, epoch: int, start: int, end: int) -> float:
        span = max(end - start, 1)
        return 0.5 * (1 + math.cos(math.pi * min(max(epoch - start, 0), span) / span))

    def _geometry_lr(self, epoch: int) -> float:
        g = self.sa.geometry_epochs
        if epoch < g:
            return self._cosine(epoch, 0, g) * 0.98 + 0.02
        return self.sa.geometry_lr_scale * self._cosine(epoch, g, self.sa.epochs)

    def _weighting_lr(self, epoch: int) -> float:
        g = self.sa.geometry_epochs
        return 0.0 if epoch < g else self._cosine(epoch, g, self.sa.epochs)

    def prepare(self) -> None:
        """Nothing to cache: every epoch runs the whole network."""

    def epoch(self, epoch: int, step: int) -> tuple[float, int]:
        """One epoch: geometry alone before ``geometry_epochs``, then with the pose."""
        cfg = self.sa
        with_pose = epoch >= cfg.geometry_epochs
        self.train_set.epoch = epoch
        g = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        loader = DataLoader(self.train_set, batch_size=cfg.batch_size, shuffle=True,
                            generator=g, num_workers=cfg.num_workers,
                            drop_last=len(self.train_set) > cfg.batch_size)
        self.model.train()
        losses, parts = [], []
        hw = (cfg.input_height, cfg.input_width)
        for batch in tqdm(loader, desc=f"epoch {epoch + 1}", unit="batch", leave=False,
                          disable=not self.bars):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            out = self.model(batch["image"])
            loss, part = self.loss(out, batch, hw, with_pose)
            losses.append(self._backward(loss, step))
            parts.append(part)
            step += 1
            if cfg.max_steps and step >= cfg.max_steps:
                break
        self.parts = {k: float(np.mean([p[k] for p in parts])) for k in parts[0]}
        log.debug("epoch %d: %s", epoch + 1, self.parts)
        return float(np.mean(losses)), step

    @torch.no_grad()
    def validate(self) -> tuple[dict, np.ndarray]:
        """Validation metrics and the Kabsch poses."""
        from camera_pose_ros.geometry import quat_wxyz_from_rotmat

        self.model.eval()
        loader = DataLoader(self.val_set, batch_size=16, num_workers=self.cfg.num_workers)
        poses = []
        for batch in loader:
            out = self.model(batch["image"].to(self.device))
            rot, t = out["rot"].double().cpu().numpy(), out["t"].double().cpu().numpy()
            poses += [np.concatenate([t[i], quat_wxyz_from_rotmat(rot[i])])
                      for i in range(len(t))]
        p = np.array(poses)
        gt = self.val_poses.double().numpy()
        return error_summary(p[:, :3], p[:, 3:], gt[:, :3], gt[:, 3:]), p

    def calibrate(self) -> dict:
        """Covariance calibration of the Kabsch and the PnP poses, off the training path."""
        from camera_pose_ros.learning.calibrate import fit_structure_calibration

        return fit_structure_calibration(self.model, self.transform, self.data,
                                         device=self.device, seed=self.cfg.seed,
                                         num_workers=self.cfg.num_workers)


def _check_like(value: object, reference: object, where: str) -> None:
    """Raise CheckpointError unless ``value`` has the structure of ``reference``: the same
    keys, list lengths, leaf types (int and float alike) and tensor shapes, all numbers
    finite."""
    if isinstance(reference, torch.Tensor):
        if not (isinstance(value, torch.Tensor) and value.shape == reference.shape
                and value.dtype == reference.dtype):
            raise CheckpointError(f"{where} is not a tensor of shape {tuple(reference.shape)}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{where} holds NaN or infinite values")
    elif isinstance(reference, dict):
        if not isinstance(value, dict) or set(value) != set(reference):
            raise CheckpointError(f"{where} has other keys than this run's")
        for k in reference:
            _check_like(value[k], reference[k], f"{where}.{k}")
    elif isinstance(reference, (list, tuple)):
        if not isinstance(value, (list, tuple)) or len(value) != len(reference):
            raise CheckpointError(f"{where} is not a list of {len(reference)}")
        for i, (v, r) in enumerate(zip(value, reference, strict=True)):
            _check_like(v, r, f"{where}[{i}]")
    elif isinstance(reference, bool) or reference is None:
        if type(value) is not type(reference):
            raise CheckpointError(f"{where} is {value!r}, expected {reference!r}")
    elif isinstance(reference, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
                value):
            raise CheckpointError(f"{where} is {value!r}, not a finite number")
    elif type(value) is not type(reference):
        raise CheckpointError(f"{where} is a {type(value).__name__}, expected "
                              f"{type(reference).__name__}")


def _plot_curve(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(7, 4), dpi=100)
    ep = [r["epoch"] for r in rows]
    ax1.plot(ep, [r["train_loss"] for r in rows], label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax2 = ax1.twinx()
    ax2.plot(ep, [r["val_median_position_m"] for r in rows], "r-", label="val median m")
    ax2.set_ylabel("validation median position error (m)")
    fig.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _write_metrics(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def _remove_run_files(out: Path) -> None:
    for name in RUN_FILES:
        if (out / name).exists():
            (out / name).unlink()
            log.info("overwrite: removed %s", out / name)


def _tensorboard(out: Path):  # -> SummaryWriter | None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


#: what a run folder holds; ``overwrite`` removes these before training anew
RUN_FILES = ("model.pt", "last.pt", "metrics.csv", "loss_curve.png")
#: settings that may change on ``resume``: they do not touch the training state
# epochs only says where to stop (the learning-rate schedule resumes from last.pt)
RESUMABLE_CHANGES = ("mc_samples", "num_workers", "device", "epochs", "early_stopping_patience")
METRICS_COLUMNS = ("epoch", "step", "train_loss", "val_median_position_m",
                   "val_median_rotation_deg", "lr", "seconds")


def _same_value(a: object, b: object) -> bool:
    """Plain-data equality that a tensor (from a foreign file) never satisfies."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    try:
        return bool(a == b)
    except (RuntimeError, TypeError, ValueError):
        return False


def _resume_state(path: Path, config: TrainConfig) -> dict:
    """The checked content of ``last.pt``; CheckpointError / ConfigError tell what is wrong."""
    from camera_pose_ros.learning.checkpoint import load_plain

    state = load_plain(path, "resume state")
    keys = ("epoch", "step", "best", "model", "loss", "optimizer", "scheduler", "config")
    if not isinstance(state, dict) or not all(k in state for k in keys):
        raise CheckpointError(f"{path} is not a training state of camera-pose train (a "
                              "last.pt has epoch, step, weights, optimizer and config); "
                              "train anew with --overwrite")
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"{path} is damaged: its config is not a mapping")
    now = to_dict(config)
    # a last.pt written before each model had its own schema holds every model's keys
    other_models = {k for spec in MODELS.values() for k in spec.config_keys()} - set(now)
    changed = [k for k in sorted(set(now) | set(map(str, state["config"])) - other_models)
               if k not in RESUMABLE_CHANGES and not _same_value(state["config"].get(k),
                                                                  now.get(k))]
    if changed:
        def short(v: object) -> str:
            text = " ".join(repr(v).split())
            return text if len(text) <= 40 else text[:37] + "..."

        diff = ", ".join(f"{k} ({short(state['config'].get(k))} in last.pt, "
                         f"{short(now.get(k))} now)" for k in changed[:8])
        if len(changed) > 8:
            diff += f" and {len(changed) - 8} more"
        raise ConfigError(f"{path} was trained with another config: {diff}; resume with the "
                          "same config or start a new run folder (or --overwrite)")
    ints = all(isinstance(state[k], int) and not isinstance(state[k], bool)
               for k in ("epoch", "step"))
    if not ints or not 0 <= state["epoch"] <= 1_000_000 or state["step"] < 0:
        raise CheckpointError(f"{path} is damaged: epoch {state['epoch']!r}, step "
                              f"{state['step']!r}")
    best = state["best"]
    if not (isinstance(best, dict) and isinstance(best.get("score"), (int, float))
            and isinstance(best.get("epoch"), int)
            and isinstance(best.get("state", {}), dict)):
        raise CheckpointError(f"{path} is damaged: no valid best-epoch record")
    for k in ("model", "loss", "optimizer", "scheduler"):
        if not isinstance(state[k], dict):
            raise CheckpointError(f"{path} is damaged: its {k} state is not a mapping")
    for k, weights in (("model", state["model"]), ("loss", state["loss"]),
                       ("best", best.get("state", {}))):
        for name, v in weights.items():
            if not isinstance(v, torch.Tensor):
                raise CheckpointError(f"{path} is damaged: {k} weight {name!r} is not a tensor")
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise CheckpointError(f"{path} is damaged: {k} weight {name} holds NaN or "
                                      "infinite values")
    return state


def _read_metrics_rows(path: Path) -> list[dict]:
    """The rows of an earlier ``metrics.csv``; a damaged file is an InputDataError."""
    if not path.exists():
        return []
    what = (f"{path} is damaged; delete it to resume without the earlier epochs' rows, or "
            "train anew with --overwrite")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None:
                return []
            if tuple(reader.fieldnames) != METRICS_COLUMNS:
                raise InputDataError(f"{what} (columns {', '.join(reader.fieldnames)})")
            rows = []
            for r in reader:
                row = {k: float(r[k]) for k in METRICS_COLUMNS}
                if not all(np.isfinite(v) for k, v in row.items() if k != "train_loss"):
                    raise ValueError("non-finite value")
                rows.append(row)
    except (ValueError, TypeError, UnicodeDecodeError, csv.Error) as exc:
        raise InputDataError(f"{what} ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:100]})") from exc
    for row in rows:
        row["epoch"], row["step"] = int(row["epoch"]), int(row["step"])
    return rows


def _check_run_folder(out: Path, config: TrainConfig, resume: bool,
                      overwrite: bool) -> dict | None:
    """Refuse to train over a finished or running run unless told; the state to resume."""
    if resume and overwrite:
        raise ConfigError("resume and overwrite exclude each other: resume continues the run "
                          "in OUT, overwrite replaces it")
    existing = [n for n in ("model.pt", "last.pt") if (out / n).exists()]
    if existing and not (resume or overwrite):
        raise ConfigError(f"{out} already holds a training run ({', '.join(existing)}): "
                          "continue it with --resume, replace it with --overwrite, or "
                          "choose another --out")
    if not resume:
        return None
    if (out / "last.pt").exists():
        return _resume_state(out / "last.pt", config)
    if existing:
        raise ConfigError(f"{out} has model.pt but no last.pt to resume from; train anew "
                          "with --overwrite, or choose another --out")
    log.info("nothing to resume in %s: starting a new run", out)
    return None


def train(data: str | os.PathLike, config: TrainConfig, out: str | os.PathLike, *,
          resume: bool = False, overwrite: bool = False, progress: bool = True) -> Path:
    """Train a regressor on ``DATA`` and write ``OUT/model.pt``; return its path.

    A folder that already holds a run (``model.pt`` or ``last.pt``) is refused unless
    ``resume`` (continue from ``last.pt``, same config but for :data:`RESUMABLE_CHANGES`)
    or ``overwrite`` (remove that run's files and train anew).

    Raises:
        SplitError / InputDataError: missing or empty splits, missing columns or images,
            a damaged ``metrics.csv`` on resume.
        ConfigError: an existing run without resume/overwrite, or a resume with another
            config (the message names the keys that differ).
        CheckpointError: a ``last.pt`` that is truncated, foreign or not plain data.
        TrainingError: a non-finite loss (the last good ``last.pt`` is kept).
    """
    data, out = Path(data), Path(out)
    state = _check_run_folder(out, config, resume, overwrite)
    rows: list[dict] = _read_metrics_rows(out / "metrics.csv") if state is not None else []
    out.mkdir(parents=True, exist_ok=True)
    _seed_everything(config.seed)
    t_start = time.perf_counter()
    run = (_StructureRun(config, data, out, progress)
           if isinstance(config, StructureAwareConfig) else _Run(config, data, out, progress))
    main_rank = run.rank == 0
    if overwrite and main_rank:
        _remove_run_files(out)
    run.prepare()
    epoch, step = 0, 0
    best: dict[str, Any] = {"score": float("inf"), "epoch": -1}
    if state is not None:
        try:
            epoch, step, best = run.restore(state)
        except (KeyError, RuntimeError, TypeError, ValueError, AttributeError,
                IndexError, CheckpointError) as exc:
            raise CheckpointError(
                f"{out / 'last.pt'} does not fit this run ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:120]}); train anew with --overwrite") from exc
        log.info("resuming at epoch %d (best validation score %.3f)", epoch, best["score"])
    writer = _tensorboard(out) if main_rank else None
    bar = tqdm(range(epoch, config.epochs), desc="train", unit="epoch",
               disable=not (progress and main_rank), initial=epoch, total=config.epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        loss, step = run.epoch(epoch, step)
        run.scheduler.step()
        metrics, _ = run.validate()
        score = _score(metrics)
        if score < best["score"]:
            best = {"score": score, "epoch": epoch, "metrics": metrics,
                    "state": {k: v.detach().clone() for k, v in run.model.state_dict().items()}}
        row = {"epoch": epoch + 1, "step": step, "train_loss": loss,
               "val_median_position_m": metrics["median_position_m"],
               "val_median_rotation_deg": metrics["median_rotation_deg"],
               "lr": run.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        rows.append(row)
        bar.set_postfix(loss=f"{loss:.3f}", val_m=f"{metrics['median_position_m']:.2f}")
        if main_rank:
            with atomic_path(out / "last.pt", suffix=".tmp") as tmp:
                torch.save(run.state(epoch + 1, step, best), tmp)
            _write_metrics(rows, out / "metrics.csv")
            if writer is not None:
                writer.add_scalar("loss/train", loss, epoch)
                writer.add_scalar("val/median_position_m", metrics["median_position_m"], epoch)
                writer.add_scalar("val/median_rotation_deg", metrics["median_rotation_deg"],
                                  epoch)
        if epoch - best["epoch"] >= config.early_stopping_patience:
            log.info("early stop at epoch %d: no better validation score for %d epochs",
                     epoch + 1, config.early_stopping_patience)
            break
        if config.max_steps and step >= config.max_steps:
            break
    if not main_rank:
        torch.distributed.destroy_process_group()
        return out / "model.pt"
    if "state" not in best:
        raise TrainingError("no epoch gave a finite validation score: nothing to save")
    run.model.load_state_dict(best["state"])
    if not np.all(np.isfinite(run.validate()[1])):  # weights from a damaged last.pt
        raise TrainingError("the best weights give non-finite poses on the validation split; "
                            "nothing to save (train anew with --overwrite)")
    calibration = run.calibrate()
    final_metrics, _ = run.validate()
    _plot_curve(rows, out / "loss_curve.png")
    report = {}
    if (data / "report.json").exists():
        report = json.loads((data / "report.json").read_text())
    provenance = Provenance(
        dataset=str(data.resolve()),
        refinement_map=(str((data / REFINEMENT_MAP).resolve())
                        if (data / REFINEMENT_MAP).is_file() else ""),
        splits={"train": len(run.train_table), "validation": len(run.val_table)},
        dataset_registration_rate=report.get("registration_rate"),
        dataset_alignment_rms_m=report.get("alignment_rms_m"),
        train_config=to_dict(config),
        best_epoch=best["epoch"] + 1,
        epochs_run=len(rows),
        train_seconds=time.perf_counter() - t_start,
        device=str(run.device),
    )
    path = save_checkpoint(
        out / "model.pt", run.model, model_cfg=run.model_cfg,
        input_cfg=InputConfig(config.input_height, config.input_width, run.transform.mean,
                              run.transform.std),
        map_frame=config.map_frame,
        extra={"config_id": config.identity(), "pretrained": run.backbone_info.pretrained,
               "weights_source": run.backbone_info.weights_source,
               "provenance": provenance, "metrics": {"validation": final_metrics},
               "calibration": calibration})
    if writer is not None:
        writer.close()
    if run.world > 1:
        torch.distributed.destroy_process_group()
    log.info("trained %s (%s): validation median %.3f m, %.2f deg (best epoch %d)",
             config.identity(), config.backbone, final_metrics["median_position_m"],
             final_metrics["median_rotation_deg"], best["epoch"] + 1)
    return path
