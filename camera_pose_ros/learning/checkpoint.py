"""Self-contained checkpoints: plain data, rebuilt without any other file.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so it loads with
``torch.load(weights_only=True)``: a model file from elsewhere cannot run code on the robot.
Besides the weights (``state_dict``) it holds the sections of :class:`CheckpointMeta`: the
network (``model``: kind, backbone, head), the input size and normalisation (``input``),
the map frame, the training config's identity, whether the backbone started from
pretrained weights, provenance, validation metrics and the uncertainty calibration.
``load_checkpoint`` checks every section, refuses files of another format version and of
removed model kinds with a message that says what to do, and returns the network with its
typed metadata (:class:`LoadedModel`).

Layout (format 1): the sections above as top-level keys ``model``, ``input``,
``map_frame``, ``config_id`` (optional: absent in checkpoints written before it existed),
``pretrained``, ``weights_source``, ``provenance``, ``metrics``, ``calibration``, plus
``format``, ``format_version``, ``package_version``, ``created`` and ``state_dict``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from camera_pose_ros import CHECKPOINT_FORMAT_VERSION, __version__
from camera_pose_ros.config import from_dict
from camera_pose_ros.errors import CameraPoseError, CheckpointError
from camera_pose_ros.fileio import atomic_path
from camera_pose_ros.learning.backbones import (
    BACKBONES,
    BackboneInfo,
    build_backbone,
    build_trunk,
)
from camera_pose_ros.learning.data import IMAGENET_MEAN, IMAGENET_STD, ImageTransform
from camera_pose_ros.learning.networks import PoseRegressor
from camera_pose_ros.learning.registry import (
    MODELS,
    ModelKind,
    ModelSpec,
    model_spec,
    removed_kind_message,
)
from camera_pose_ros.learning.structure import StructureAwareNet

__all__ = ["FORMAT", "NetworkConfig", "InputConfig", "Provenance", "CheckpointMeta",
           "LoadedModel", "save_checkpoint", "load_checkpoint", "build_regressor",
           "build_network", "load_plain", "PoseNetwork"]

FORMAT = "camera_pose_ros.checkpoint"


@dataclass(frozen=True)
class NetworkConfig:
    """The ``model`` section: what rebuilds the network before its weights are loaded."""

    kind: ModelKind
    backbone: str
    hidden: int
    dropout: float
    pool_grid: tuple[int, int] = (1, 1)
    #: the head regresses (position - pos_mean) / pos_scale (training split's statistics)
    pos_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    pos_scale: float = 1.0
    #: structure-aware only: the depth head's range in metres, and the training camera's
    #: intrinsics normalised by the image size (``learning.structure.intrinsics_at``);
    #: ``hidden`` is then the heads' width and ``pos_mean``/``pos_scale`` normalise the
    #: scene coordinates
    depth_range: tuple[float, float] = (0.0, 0.0)
    intrinsics: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    #: structure-aware only: the training camera's lens distortion (CameraInfo D)
    distortion: tuple[float, ...] = ()

    @classmethod
    def from_dict(cls, section: Mapping[str, Any]) -> NetworkConfig:
        """From a checked ``model`` section (a missing kind is posenet, as format 1 wrote)."""
        grid = section.get("pool_grid", (1, 1))
        mean = section.get("pos_mean", (0.0, 0.0, 0.0))
        depth = section.get("depth_range", (0.0, 0.0))
        k = section.get("intrinsics", (0.0, 0.0, 0.0, 0.0))
        return cls(kind=model_spec(section.get("kind", ModelKind.POSENET.value)).kind,
                   backbone=str(section["backbone"]), hidden=int(section["hidden"]),
                   dropout=float(section["dropout"]),
                   pool_grid=(int(grid[0]), int(grid[1])),
                   pos_mean=(float(mean[0]), float(mean[1]), float(mean[2])),
                   pos_scale=float(section.get("pos_scale", 1.0)),
                   depth_range=(float(depth[0]), float(depth[1])),
                   intrinsics=(float(k[0]), float(k[1]), float(k[2]), float(k[3])),
                   distortion=tuple(float(v) for v in section.get("distortion", ())))

    def to_dict(self) -> dict[str, Any]:
        """The plain ``model`` section."""
        out = {"kind": self.kind.value, "backbone": self.backbone, "hidden": self.hidden,
               "pool_grid": list(self.pool_grid), "dropout": self.dropout,
               "pos_mean": list(self.pos_mean), "pos_scale": self.pos_scale}
        if self.kind is ModelKind.STRUCTURE_AWARE:
            out.update(depth_range=list(self.depth_range), intrinsics=list(self.intrinsics),
                       distortion=list(self.distortion))
        return out

    @property
    def spec(self) -> ModelSpec:
        """The registry's entry of this kind."""
        return MODELS[self.kind.value]


@dataclass(frozen=True)
class InputConfig:
    """The ``input`` section: the network's image size and normalisation."""

    height: int
    width: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def from_dict(cls, section: Mapping[str, Any]) -> InputConfig:
        """From a checked ``input`` section."""
        mean, std = section["mean"], section["std"]
        return cls(int(section["height"]), int(section["width"]),
                   (float(mean[0]), float(mean[1]), float(mean[2])),
                   (float(std[0]), float(std[1]), float(std[2])))

    def to_dict(self) -> dict[str, Any]:
        """The plain ``input`` section."""
        return {"height": self.height, "width": self.width, "mean": list(self.mean),
                "std": list(self.std)}

    def transform(self) -> ImageTransform:
        """RGB image -> the network's input tensor."""
        return ImageTransform(self.height, self.width, self.mean, self.std)


@dataclass(frozen=True)
class Provenance:
    """Where a trained model comes from (empty for checkpoints not written by training)."""

    dataset: str = ""
    refinement_map: str = ""
    splits: dict[str, int] = field(default_factory=dict)
    dataset_registration_rate: float | None = None
    dataset_alignment_rms_m: float | None = None
    train_config: dict[str, Any] = field(default_factory=dict)
    best_epoch: int | None = None
    epochs_run: int | None = None
    train_seconds: float | None = None
    device: str = ""

    @classmethod
    def from_dict(cls, section: Mapping[str, Any]) -> Provenance:
        """From a ``provenance`` section; keys this version does not know are left out.

        Raises:
            ConfigError: a known key of the wrong type.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        return from_dict(cls, {k: v for k, v in section.items() if k in names},
                         where="provenance")

    def to_dict(self) -> dict[str, Any]:
        """The plain ``provenance`` section."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CheckpointMeta:
    """Everything in a checkpoint but its weights, typed."""

    model: NetworkConfig
    input: InputConfig
    map_frame: str = "map"
    #: the training config's :meth:`~camera_pose_ros.learning.registry.TrainConfig.identity`
    #: ("" in checkpoints written before it was stored, or not by training)
    config_id: str = ""
    pretrained: bool = False
    weights_source: str = ""
    provenance: Provenance = field(default_factory=Provenance)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: uncertainty calibration (learning/uncertainty.py); empty: raw MC-dropout covariances
    calibration: dict[str, Any] = field(default_factory=dict)
    format_version: int = CHECKPOINT_FORMAT_VERSION
    package_version: str = __version__
    created: str = ""

    @property
    def kind(self) -> ModelKind:
        """The model kind (``model.kind``)."""
        return self.model.kind

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> CheckpointMeta:
        """From a loaded checkpoint whose sections :func:`load_checkpoint` has checked."""
        return cls(model=NetworkConfig.from_dict(payload["model"]),
                   input=InputConfig.from_dict(payload["input"]),
                   map_frame=str(payload["map_frame"]),
                   config_id=str(payload.get("config_id", "")),
                   pretrained=bool(payload.get("pretrained", False)),
                   weights_source=str(payload.get("weights_source", "")),
                   provenance=Provenance.from_dict(payload.get("provenance") or {}),
                   metrics=dict(payload.get("metrics") or {}),
                   calibration=dict(payload.get("calibration") or {}),
                   format_version=int(payload["format_version"]),
                   package_version=str(payload.get("package_version", "")),
                   created=str(payload.get("created", "")))

    def to_payload(self) -> dict[str, Any]:
        """The plain sections, as written to the file (without ``state_dict``)."""
        return {"format": FORMAT, "format_version": self.format_version,
                "package_version": self.package_version, "created": self.created,
                "model": self.model.to_dict(), "input": self.input.to_dict(),
                "map_frame": self.map_frame, "config_id": self.config_id,
                "pretrained": self.pretrained, "weights_source": self.weights_source,
                "provenance": self.provenance.to_dict(), "metrics": dict(self.metrics),
                "calibration": dict(self.calibration)}


#: what a checkpoint's network is: a regressor (PoseNet, MapNet) or a structure-aware net
PoseNetwork = PoseRegressor | StructureAwareNet


def build_network(model_cfg: NetworkConfig | Mapping[str, Any], pretrained: str = "none"
                  ) -> tuple[PoseNetwork, BackboneInfo]:
    """The network of a ``model`` section and its backbone info (whether pretrained
    weights were loaded, from where): the regressor PoseNet and MapNet share, or the
    structure-aware network."""
    net = model_cfg if isinstance(model_cfg, NetworkConfig) else NetworkConfig.from_dict(
        model_cfg)
    if net.kind is ModelKind.STRUCTURE_AWARE:
        trunk, channels, info = build_trunk(net.backbone, pretrained)
        return StructureAwareNet(trunk, channels, width=net.hidden, scene_mean=net.pos_mean,
                                 scene_scale=net.pos_scale, depth_range=net.depth_range,
                                 intrinsics_norm=net.intrinsics,
                                 distortion=net.distortion), info
    backbone, info = build_backbone(net.backbone, pretrained, net.pool_grid)
    return PoseRegressor(backbone, info.feature_dim, hidden=net.hidden, dropout=net.dropout,
                         pos_mean=net.pos_mean, pos_scale=net.pos_scale), info


def build_regressor(model_cfg: NetworkConfig | Mapping[str, Any],
                    pretrained: str = "none") -> PoseNetwork:
    """The network of a ``model`` section (:func:`build_network` without the info)."""
    return build_network(model_cfg, pretrained)[0]


_META_FIELDS = frozenset(f.name for f in dataclasses.fields(CheckpointMeta)) - {
    "model", "input", "map_frame", "format_version", "package_version", "created"}


def save_checkpoint(path: str | os.PathLike, model: PoseNetwork, *,
                    model_cfg: NetworkConfig | Mapping[str, Any],
                    input_cfg: InputConfig | Mapping[str, Any], map_frame: str,
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically; return its path.

    Args:
        path: the file.
        model: the network (its weights are saved).
        model_cfg: the ``model`` section (typed, or its plain dict).
        input_cfg: the ``input`` section (typed, or its plain dict).
        map_frame: the frame the poses are in.
        extra: further :class:`CheckpointMeta` fields by name (``config_id``,
            ``pretrained``, ``weights_source``, ``provenance``, ``metrics``,
            ``calibration``); a provenance may be a plain dict.

    Raises:
        TypeError: ``extra`` names no field of :class:`CheckpointMeta`.
        CheckpointError: the checkpoint would not load (a value out of range, non-finite
            weights): nothing is written.
    """
    extra = dict(extra or {})
    unknown = sorted(set(extra) - _META_FIELDS)
    if unknown:
        raise TypeError(f"save_checkpoint: unknown section(s) {', '.join(unknown)}")
    if isinstance(extra.get("provenance"), Mapping):
        extra["provenance"] = Provenance.from_dict(extra["provenance"])
    meta = CheckpointMeta(
        model=model_cfg if isinstance(model_cfg, NetworkConfig) else NetworkConfig.from_dict(
            model_cfg),
        input=input_cfg if isinstance(input_cfg, InputConfig) else InputConfig.from_dict(
            input_cfg),
        map_frame=map_frame,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **extra)
    payload = meta.to_payload()
    payload["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    problem = _check_payload(payload)
    if problem is not None:
        raise CheckpointError(f"refusing to write {path}: {problem}")
    with atomic_path(path, suffix=".tmp") as tmp:
        torch.save(payload, tmp)
    return Path(path)


@dataclass
class LoadedModel:
    """A checkpoint rebuilt: the network (eval mode), its input transform and metadata."""

    model: PoseNetwork
    transform: ImageTransform
    meta: CheckpointMeta


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
    """What is wrong with a checkpoint's plain data, or None."""
    model, inp = data.get("model"), data.get("input")
    if not isinstance(model, dict) or not isinstance(inp, dict):
        return "no model or input section"
    kind = model.get("kind", ModelKind.POSENET.value)
    if not isinstance(kind, str) or kind not in MODELS:
        return f"unknown model kind {kind!r}"
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
    if kind == ModelKind.STRUCTURE_AWARE.value:
        depth, k = model.get("depth_range"), model.get("intrinsics")
        if not (depth is not None and _numbers(depth, 2) and 0 < depth[0] < depth[1]):
            return f"model.depth_range is {depth!r}, not two increasing positive numbers"
        if not (k is not None and _numbers(k, 4) and min(k) > 0):
            return f"model.intrinsics is {k!r}, not four positive numbers"
        dist = model.get("distortion", [])
        if not (isinstance(dist, (list, tuple)) and len(dist) in (0, 4, 5, 8)
                and _numbers(dist, len(dist))):
            return f"model.distortion is {dist!r}, not 0, 4, 5 or 8 finite numbers"
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
    for key in ("provenance", "metrics"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            return f"{key} is not a mapping"
    for key in ("config_id", "weights_source", "created", "package_version"):
        if key in data and not isinstance(data[key], str):
            return f"{key} is {data[key]!r}, not a string"
    if "pretrained" in data and not isinstance(data["pretrained"], bool):
        return f"pretrained is {data['pretrained']!r}, not true or false"
    return None


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu"
                    ) -> LoadedModel:
    """Load and rebuild a checkpoint: the network in eval mode on ``device``, its input
    transform and its :class:`CheckpointMeta`.

    Raises:
        CheckpointError: missing or empty file, not a checkpoint, contains Python objects
            (refused), written by an incompatible format version, of a model kind that was
            removed (MeNet), or holding values no training writes (wrong types, out of
            range, non-finite weights).
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
    if isinstance(data.get("model"), dict):
        removed = removed_kind_message(data["model"].get("kind"), "checkpoints")
        if removed is not None:
            raise CheckpointError(f"{path}: {removed}")
    problem = _check_payload(data)
    if problem is not None:
        raise CheckpointError(f"{path} is damaged: {problem}")
    try:
        meta = CheckpointMeta.from_payload(data)
        model = build_regressor(meta.model)
        model.load_state_dict(data["state_dict"])
    except (KeyError, RuntimeError, TypeError, ValueError, CameraPoseError) as exc:
        raise CheckpointError(f"{path} is damaged or incomplete: {_first_line(exc)}") from exc
    model.eval().to(device)
    return LoadedModel(model, meta.input.transform(), meta)
