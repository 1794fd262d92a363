"""Self-contained checkpoints: plain data, rebuilt without any other file.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so it loads with
``torch.load(weights_only=True)``: a model file from elsewhere cannot run code on the robot.
It holds the network config, weights, input size and normalisation, map frame, provenance,
validation metrics and the uncertainty calibration; ``load_checkpoint`` refuses files of
another format version with a message that says what to do.
"""

from __future__ import annotations

import datetime as dt
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from camera_pose_ros import CHECKPOINT_FORMAT_VERSION, __version__
from camera_pose_ros.errors import CheckpointError
from camera_pose_ros.fileio import atomic_path
from camera_pose_ros.learning.backbones import build_backbone
from camera_pose_ros.learning.data import ImageTransform
from camera_pose_ros.learning.networks import PoseRegressor, RelativePoseNet

__all__ = ["FORMAT", "LoadedModel", "save_checkpoint", "load_checkpoint", "build_regressor",
           "build_network"]

FORMAT = "camera_pose_ros.checkpoint"


def build_network(model_cfg: dict, pretrained: str = "none"
                  ) -> tuple[PoseRegressor | RelativePoseNet, object]:
    """The network of a ``model`` section (PoseNet/MapNet regressor or MeNet) and its
    backbone info (whether pretrained weights were loaded, from where)."""
    backbone, info = build_backbone(model_cfg["backbone"], pretrained,
                                    tuple(model_cfg.get("pool_grid", (1, 1))))
    if model_cfg.get("kind") == "menet":
        return RelativePoseNet(backbone, info.feature_dim, hidden=int(model_cfg["hidden"]),
                               dropout=float(model_cfg["dropout"])), info
    return PoseRegressor(backbone, info.feature_dim, hidden=int(model_cfg["hidden"]),
                         dropout=float(model_cfg["dropout"]),
                         pos_mean=tuple(model_cfg.get("pos_mean", (0.0, 0.0, 0.0))),
                         pos_scale=float(model_cfg.get("pos_scale", 1.0))), info


def build_regressor(model_cfg: dict, pretrained: str = "none") -> PoseRegressor:
    """A PoseRegressor (or, for ``kind: menet``, a MeNet) from a ``model`` section."""
    return build_network(model_cfg, pretrained)[0]


def save_checkpoint(path: str | os.PathLike, model: PoseRegressor, *, model_cfg: dict,
                    input_cfg: dict, map_frame: str, extra: dict[str, Any]) -> Path:
    """Write a checkpoint atomically. ``extra`` adds plain-data sections (metrics, ...)."""
    payload = {
        "format": FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "package_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": dict(model_cfg),
        "input": dict(input_cfg),
        "map_frame": map_frame,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    with atomic_path(path, suffix=".tmp") as tmp:
        torch.save(payload, tmp)
    return Path(path)


@dataclass
class LoadedModel:
    """A checkpoint rebuilt: the network (eval mode), its input transform and metadata."""

    model: PoseRegressor
    transform: ImageTransform
    data: dict


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu"
                    ) -> LoadedModel:
    """Load and rebuild a checkpoint.

    Raises:
        CheckpointError: missing file, not a checkpoint, contains Python objects (refused),
            or written by an incompatible format version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} holds Python objects beyond tensors and plain data; refusing to load it "
            "(a checkpoint is data, not code)") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a camera_pose_ros checkpoint")
    version = data.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version}, this camera_pose_ros "
            f"({__version__}) reads format {CHECKPOINT_FORMAT_VERSION}: retrain with "
            "`camera-pose train`, or use the version that wrote it "
            f"({data.get('package_version')})")
    try:
        model = build_regressor(data["model"])
        model.load_state_dict(data["state_dict"])
        inp = data["input"]
        transform = ImageTransform(int(inp["height"]), int(inp["width"]),
                                   tuple(inp["mean"]), tuple(inp["std"]))
    except (KeyError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path} is damaged or incomplete: {exc}") from exc
    model.eval().to(device)
    return LoadedModel(model, transform, data)
