"""The model kinds, in one registry: name -> training-config schema and loss.

:data:`MODELS` is a plain dict from the ``model`` spelling of configs and checkpoints to a
:class:`ModelSpec`. Both kinds train the same network
(:class:`~camera_pose_ros.learning.networks.PoseRegressor`: a backbone and a regression
head) and differ in what training feeds it:

- ``posenet`` (:class:`PoseNetConfig`): single frames, the absolute loss;
- ``mapnet`` (:class:`MapNetConfig`): tuples of ``steps`` frames ``skip`` apart, the
  absolute loss on each plus ``relative_weight`` times the loss on neighbours' relative
  poses. Those three keys are MapNet's alone: a PoseNet config naming one is an error.

Kinds that existed once are listed in :data:`REMOVED` with the reason, so that a config or
a checkpoint naming one is refused with that reason rather than as unknown.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

from torch import nn

from camera_pose_ros.config import check_range, from_dict, to_dict
from camera_pose_ros.errors import ConfigError
from camera_pose_ros.learning.backbones import BACKBONES
from camera_pose_ros.learning.losses import LossKind, MapNetLoss, PoseLoss

__all__ = ["ModelKind", "TrainConfig", "PoseNetConfig", "MapNetConfig",
           "StructureAwareConfig", "ModelSpec",
           "MODELS", "REMOVED", "model_spec", "removed_kind_message", "train_config"]


class ModelKind(str, Enum):
    """The ``model`` setting of a training config and ``model.kind`` of a checkpoint."""

    POSENET = "posenet"
    MAPNET = "mapnet"
    STRUCTURE_AWARE = "structure_aware"

    def __str__(self) -> str:
        return self.value


#: settings that do not change what is trained (left out of :meth:`TrainConfig.identity`)
RUNTIME_ONLY = ("device", "num_workers")


@dataclass(frozen=True)
class TrainConfig:
    """The settings every kind shares (YAML keys; unknown keys are an error).

    Build one with :func:`train_config` (or ``learning.train.load_train_config``), which
    picks the schema of the ``model`` named; presets live in config/.
    """

    model: ModelKind = ModelKind.POSENET
    backbone: str = "resnet18"
    pretrained: str = "auto"
    freeze_backbone: bool = True
    pool_grid: tuple[int, int] = (1, 1)
    hidden: int = 1024
    dropout: float = 0.5
    input_height: int = 192
    input_width: int = 256
    loss: LossKind = LossKind.HOMOSCEDASTIC
    beta: float = 1.0
    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    early_stopping_patience: int = 20
    color_jitter: float = 0.3
    blur_probability: float = 0.2
    rotation_augment_deg: float = 0.0
    augment_copies: int = 2
    mc_samples: int = 20
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    map_frame: str = "map"
    max_steps: int = 0

    def __post_init__(self) -> None:
        spec = model_spec(self.model)
        # built directly (not from YAML), the enum fields may hold their spellings
        object.__setattr__(self, "model", spec.kind)
        object.__setattr__(self, "loss", LossKind.parse(self.loss))
        if type(self) is not spec.config:
            raise ConfigError(f"model {self.model} takes the {spec.config.__name__} schema, "
                              f"not {type(self).__name__}")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone: unknown '{self.backbone}'; choose one of "
                              f"{', '.join(BACKBONES)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if len(self.pool_grid) != 2:
            raise ConfigError(f"pool_grid must be two integers [rows, columns], got "
                              f"{list(self.pool_grid)}")
        for v in self.pool_grid:
            check_range("pool_grid", v, low=1, high=32)
        for key, low, high in (("epochs", 1, 1_000_000), ("batch_size", 1, 1_000_000),
                               ("hidden", 1, 65536), ("input_height", 16, 4096),
                               ("input_width", 16, 4096), ("early_stopping_patience", 1, None),
                               ("augment_copies", 0, 100), ("mc_samples", 2, 10_000),
                               ("num_workers", 0, 1024), ("max_steps", 0, None),
                               ("seed", 0, 2**32 - 1)):
            check_range(key, getattr(self, key), low=low, high=high)
        check_range("lr", self.lr, low=0, low_open=True)
        for key in ("weight_decay", "beta"):
            check_range(key, getattr(self, key), low=0)
        check_range("color_jitter", self.color_jitter, low=0, high=1)
        check_range("blur_probability", self.blur_probability, low=0, high=1)
        check_range("rotation_augment_deg", self.rotation_augment_deg, low=0, high=90)
        if not self.map_frame.strip():
            raise ConfigError("map_frame must not be empty")

    def tuple_layout(self) -> tuple[int, int] | None:
        """``(steps, skip)`` when this kind trains on tuples of frames; None: single frames."""
        return None

    def build_loss(self) -> nn.Module:
        """The training loss on raw head outputs (B, 6), or (B, T, 6) for tuples."""
        return PoseLoss(self.loss, beta=self.beta)

    def identity(self) -> str:
        """``<model>-<8 hex digits>``: the kind and a digest of every setting that shapes
        the trained model (all but :data:`RUNTIME_ONLY`); stored in the checkpoint."""
        settings = {k: v for k, v in to_dict(self).items() if k not in RUNTIME_ONLY}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        return f"{self.model}-{digest[:8]}"


@dataclass(frozen=True)
class PoseNetConfig(TrainConfig):
    """PoseNet (Kendall et al. 2015): single frames, absolute pose loss."""


@dataclass(frozen=True)
class MapNetConfig(TrainConfig):
    """MapNet (Brahmbhatt et al. 2018): tuples of nearby frames, absolute + relative loss."""

    model: ModelKind = ModelKind.MAPNET
    relative_weight: float = 1.0
    steps: int = 3
    skip: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 2:
            raise ConfigError("mapnet needs steps >= 2 (frames per tuple)")
        check_range("steps", self.steps, low=1, high=100)
        check_range("skip", self.skip, low=1, high=10_000)
        check_range("relative_weight", self.relative_weight, low=0)

    def tuple_layout(self) -> tuple[int, int] | None:
        """``(steps, skip)``: frames per tuple and frames between its members."""
        return self.steps, self.skip

    def build_loss(self) -> nn.Module:
        """Absolute loss on every frame of a tuple plus the weighted relative loss."""
        return MapNetLoss(self.loss, beta=self.beta, relative_weight=self.relative_weight)


@dataclass(frozen=True)
class StructureAwareConfig(TrainConfig):
    """Structure-aware direct pose estimation (Blanton, Workman and Jacobs): scene
    coordinates and depth at stride 8, a weighting network and a weighted Kabsch step
    (learning/structure.py). Trains on the dataset's scene labels in two stages: geometry
    alone for ``geometry_epochs`` (L1 on scene coordinates and depth), then the pose through
    the Kabsch step as well (L1 on rotation matrix and translation, ``pose_weight``), the
    trunk and geometry heads at ``geometry_lr_scale`` times the learning rate.

    ``hidden``, ``dropout``, ``pool_grid``, ``loss``, ``beta``, ``augment_copies`` and
    ``mc_samples`` belong to the regressors and are not used.
    """

    model: ModelKind = ModelKind.STRUCTURE_AWARE
    head_width: int = 128
    geometry_epochs: int = 40
    pose_weight: float = 1.0
    depth_weight: float = 1.0
    geometry_lr_scale: float = 0.1
    max_labels: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("head_width", self.head_width, low=8, high=4096)
        check_range("geometry_epochs", self.geometry_epochs, low=0, high=self.epochs)
        check_range("max_labels", self.max_labels, low=16, high=100_000)
        for key in ("pose_weight", "depth_weight"):
            check_range(key, getattr(self, key), low=0)
        check_range("geometry_lr_scale", self.geometry_lr_scale, low=0, high=1)
        if self.input_height % 8 or self.input_width % 8:
            raise ConfigError(f"structure_aware needs an input size divisible by 8 (one "
                              f"scene coordinate per 8x8 pixels), got {self.input_height}x"
                              f"{self.input_width}")

    def build_loss(self) -> nn.Module:
        """Geometry (scene coordinates, depth) and pose loss (learning/structure.py)."""
        from camera_pose_ros.learning.structure import StructureLoss

        return StructureLoss(depth_weight=self.depth_weight, pose_weight=self.pose_weight)


@dataclass(frozen=True)
class ModelSpec:
    """One model kind: its name in configs and checkpoints, and its training schema."""

    kind: ModelKind
    title: str
    config: type[TrainConfig]
    summary: str

    def config_keys(self) -> frozenset[str]:
        """The keys its training config takes."""
        return frozenset(f.name for f in dataclasses.fields(self.config))


#: the registry: ``model`` spelling -> spec
MODELS: dict[str, ModelSpec] = {
    "posenet": ModelSpec(ModelKind.POSENET, "PoseNet", PoseNetConfig,
                         "absolute pose regression from single frames"),
    "mapnet": ModelSpec(ModelKind.MAPNET, "MapNet", MapNetConfig,
                        "absolute pose regression trained with relative terms over tuples of "
                        "nearby frames"),
    "structure_aware": ModelSpec(ModelKind.STRUCTURE_AWARE, "Structure-aware",
                                 StructureAwareConfig,
                                 "scene coordinates and depth at stride 8 with a weighted "
                                 "Kabsch step: direct pose, or PnP on the scene coordinates"),
}

#: kinds that were removed: spelling -> (title, why)
REMOVED: dict[str, tuple[str, str]] = {
    "menet": ("MeNet", "it regressed the relative pose of an image pair and learned nothing "
              "useful from scratch at this data size (no better than assuming no motion); "
              "the git history keeps it"),
}


def _choices() -> str:
    """The model spellings as prose: ``a, b or c``."""
    names = list(MODELS)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def removed_kind_message(kind: object, what: str) -> str | None:
    """Why ``kind`` is no longer supported, for ``what`` ("checkpoints", "configs"), or
    None when it was never removed."""
    if not isinstance(kind, str) or kind not in REMOVED:
        return None
    title, why = REMOVED[kind]
    return (f"{title} {what} are no longer supported: {title} was removed because {why}; "
            f"train {_choices()} instead")


def model_spec(kind: object) -> ModelSpec:
    """The spec of ``kind`` (a :class:`ModelKind` or its spelling).

    Raises:
        ConfigError: an unknown kind, or a removed one (the message says why).
    """
    spec = MODELS.get(kind) if isinstance(kind, str) else None
    if spec is not None:
        return spec
    removed = removed_kind_message(kind, "configs")
    if removed is not None:
        raise ConfigError(f"model: {removed}")
    raise ConfigError(f"model must be {_choices()}, got {kind!r}")


def train_config(data: dict[str, Any], *, where: str = "train config") -> TrainConfig:
    """The training config of ``data``, in the schema of the ``model`` it names.

    Raises:
        ConfigError: an unknown or removed model, a key of another kind's schema (named,
            with the kind it belongs to), an unknown key, a wrong type or a value out of
            range.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    kind = data.get("model", ModelKind.POSENET.value)
    try:
        spec = model_spec(kind)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    mine = spec.config_keys()
    for key in data:
        owners = [s.kind.value for s in MODELS.values() if key in s.config_keys()]
        if key not in mine and owners:
            raise ConfigError(f"{where}: {key} is a setting of model {' and '.join(owners)}; "
                              f"model {spec.kind} does not take it")
    return from_dict(spec.config, data, where=where)
