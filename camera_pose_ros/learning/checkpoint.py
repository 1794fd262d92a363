"""Self-contained checkpoints: plain data, rebuilt without any other file.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so it loads with
``torch.load(weights_only=True)``: a model file from elsewhere cannot run code on the robot.
It holds the network config, weights, input size and normalisation, map frame, provenance,
validation metrics and the uncertainty calibration; ``load_checkpoint`` refuses files of
another format version with a message that says what to do.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from camera_pose_ros import CHECKPOINT_FORMAT_VERSION, __version__
from camera_pose_ros.errors import CameraPoseError, CheckpointError
from camera_pose_ros.fileio import atomic_path
from camera_pose_ros.learning.backbones import BACKBONES, build_backbone
from camera_pose_ros.learning.data import ImageTransform
from camera_pose_ros.learning.networks import PoseRegressor, RelativePoseNet

__all__ = ["FORMAT", "LoadedModel", "save_checkpoint", "load_checkpoint", "build_regressor",
           "build_network", "load_plain"]

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


_TORCH_MAGIC = (b"PK\x03\x04", b"\x80\x02\x8a\x0a")  # zip (torch.save), legacy format


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def load_plain(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)`` of ``path``, with every failure a CheckpointError.

    The file must exist, be non-empty, be a file ``torch.save`` writes and hold plain data
    only (tensors, numbers, strings, lists, dicts): a pickled object is refused, not run.

    Args:
        path: the file.
        what: what it should be, for the messages ("checkpoint", "resume state").
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes): not a {what} (an interrupted "
                              "copy or save?)")
    if not any(head.startswith(m[:len(head)]) for m in _TORCH_MAGIC):
        raise CheckpointError(f"{path} is not a {what}: not a file that torch.save writes")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" in str(exc).lower():
            raise CheckpointError(
                f"{path} holds Python objects beyond tensors and plain data; refusing to load "
                "it (a checkpoint is data, not code)") from exc
        raise CheckpointError(f"{path} is not a {what}, or is damaged (unreadable "
                              "data)") from exc
    except MemoryError as exc:
        raise CheckpointError(f"{path} is damaged: it claims more memory than there "
                              "is") from exc
    except Exception as exc:  # noqa: BLE001 -- a hostile file raises anything from the reader
        raise CheckpointError(f"{path} is not a readable {what} (truncated or damaged: "
                              f"{_first_line(exc)})") from exc


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(float(v)))


def _numbers(v: Any, n: int) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == n and all(_is_number(x) for x in v)


def _check_payload(data: dict) -> str | None:
    """What is wrong with a loaded checkpoint's plain data, or None."""
    model, inp = data.get("model"), data.get("input")
    if not isinstance(model, dict) or not isinstance(inp, dict):
        return "no model or input section"
    if model.get("kind", "posenet") not in ("posenet", "mapnet", "menet"):
        return f"unknown model kind {model.get('kind')!r}"
    if model.get("backbone") not in BACKBONES:
        return f"unknown backbone {model.get('backbone')!r}"
    if not _is_int(model.get("hidden")) or not 1 <= model["hidden"] <= 65536:
        return f"model.hidden is {model.get('hidden')!r}, not an integer in [1, 65536]"
    if not _is_number(model.get("dropout")) or not 0 <= model["dropout"] < 1:
        return f"model.dropout is {model.get('dropout')!r}, not a number in [0, 1)"
    grid = model.get("pool_grid", [1, 1])
    if not (isinstance(grid, (list, tuple)) and len(grid) == 2
            and all(_is_int(g) and 1 <= g <= 32 for g in grid)):
        return f"model.pool_grid is {grid!r}, not two integers in [1, 32]"
    if not _numbers(model.get("pos_mean", [0.0, 0.0, 0.0]), 3):
        return f"model.pos_mean is {model.get('pos_mean')!r}, not three finite numbers"
    scale = model.get("pos_scale", 1.0)
    if not _is_number(scale) or scale <= 0:
        return f"model.pos_scale is {scale!r}, not a positive number"
    for key in ("height", "width"):
        if not _is_int(inp.get(key)) or not 8 <= inp[key] <= 8192:
            return f"input.{key} is {inp.get(key)!r}, not an integer in [8, 8192]"
    for key in ("mean", "std"):
        if not _numbers(inp.get(key), 3):
            return f"input.{key} is {inp.get(key)!r}, not three finite numbers"
    if min(inp["std"]) <= 0:
        return f"input.std is {inp['std']!r}: not positive"
    frame = data.get("map_frame")
    if not isinstance(frame, str) or not frame:
        return f"map_frame is {frame!r}, not a frame name"
    state = data.get("state_dict")
    if not isinstance(state, dict) or not state:
        return "no weights (state_dict)"
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            return f"weight {k!r} is not a tensor"
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            return f"weight {k} holds NaN or infinite values"
    calib = data.get("calibration")
    if calib is not None:
        if not isinstance(calib, dict):
            return "calibration is not a mapping"
        for k, v in calib.items():
            if isinstance(v, (int, float)) and not _is_number(v):
                return f"calibration.{k} is {v!r}, not a finite number"
        for k in ("k_pos", "k_rot", "floor_pos", "floor_rot"):
            if k in calib and not (_is_number(calib[k]) and calib[k] >= 0):
                return f"calibration.{k} is {calib[k]!r}, not a number >= 0"
        if "samples" in calib and not (_is_int(calib["samples"])
                                       and 0 <= calib["samples"] <= 10_000):
            return f"calibration.samples is {calib['samples']!r}, not an integer in [0, 10000]"
    if "pair_skip" in data and not (_is_int(data["pair_skip"]) and data["pair_skip"] >= 1):
        return f"pair_skip is {data['pair_skip']!r}, not an integer >= 1"
    return None


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu"
                    ) -> LoadedModel:
    """Load and rebuild a checkpoint.

    Raises:
        CheckpointError: missing or empty file, not a checkpoint, contains Python objects
            (refused), written by an incompatible format version, or holding values no
            training writes (wrong types, out of range, non-finite weights).
    """
    path = Path(path)
    data = load_plain(path, "checkpoint")
    if not isinstance(data, dict) or not (isinstance(data.get("format"), str)
                                          and data["format"] == FORMAT):
        raise CheckpointError(f"{path} is not a camera_pose_ros checkpoint")
    version = data.get("format_version")
    if not _is_int(version) or version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version}, this camera_pose_ros "
            f"({__version__}) reads format {CHECKPOINT_FORMAT_VERSION}: retrain with "
            "`camera-pose train`, or use the version that wrote it "
            f"({data.get('package_version')})")
    problem = _check_payload(data)
    if problem is not None:
        raise CheckpointError(f"{path} is damaged: {problem}")
    try:
        model = build_regressor(data["model"])
        model.load_state_dict(data["state_dict"])
        inp = data["input"]
        transform = ImageTransform(int(inp["height"]), int(inp["width"]),
                                   tuple(inp["mean"]), tuple(inp["std"]))
    except (KeyError, RuntimeError, TypeError, ValueError, CameraPoseError) as exc:
        raise CheckpointError(f"{path} is damaged or incomplete: {_first_line(exc)}") from exc
    model.eval().to(device)
    return LoadedModel(model, transform, data)
