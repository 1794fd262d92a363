"""Backbone registry over torchvision: image (B, 3, H, W) -> feature vector (B, D).

ImageNet weights load from the local torch hub cache (``$TORCH_HOME/hub/checkpoints``, where
torchvision keeps what it has downloaded before) or from a given file. Nothing is downloaded:
when no weights are found the backbone is randomly initialised, the log says so plainly, and
the checkpoint records ``pretrained: false``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from camera_pose_ros.errors import CheckpointError, ConfigError

__all__ = ["BACKBONES", "BackboneInfo", "build_backbone", "build_trunk", "cached_weights_path"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneInfo:
    """How a backbone was built: its feature width and where its weights came from."""

    name: str
    feature_dim: int
    pretrained: bool
    weights_source: str


def _strip(attr: str) -> Callable[[nn.Module], int]:
    """Replace ``model.<attr>`` (the classifier) by Identity; return the feature width."""
    def strip(model: nn.Module) -> int:
        head = getattr(model, attr)
        if isinstance(head, nn.Sequential):
            width = next(m for m in head if isinstance(m, nn.Linear)).in_features
        else:
            width = head.in_features
        setattr(model, attr, nn.Identity())
        return width
    return strip


#: name -> (torchvision builder name, extra builder kwargs, classifier stripper)
BACKBONES: dict[str, tuple[str, dict, Callable[[nn.Module], int]]] = {
    **{n: (n, {}, _strip("fc")) for n in ("resnet18", "resnet34", "resnet50", "resnet101",
                                          "resnet152")},
    "googlenet": ("googlenet", {"aux_logits": False, "init_weights": True}, _strip("fc")),
    **{f"efficientnet_b{i}": (f"efficientnet_b{i}", {}, _strip("classifier")) for i in range(8)},
    "mobilenet_v3_large": ("mobilenet_v3_large", {}, _strip("classifier")),
    "mobilenet_v3_small": ("mobilenet_v3_small", {}, _strip("classifier")),
}


def cached_weights_path(name: str) -> Path | None:
    """The ImageNet weights file of ``name`` in the local torch hub cache, if present."""
    builder = BACKBONES[name][0]
    weights = torchvision.models.get_model_weights(builder).DEFAULT
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    return path if path.is_file() else None


def build_backbone(name: str, pretrained: str = "auto",
                   pool_grid: tuple[int, int] = (1, 1)) -> tuple[nn.Module, BackboneInfo]:
    """Build a feature extractor.

    Args:
        name: a key of :data:`BACKBONES`.
        pretrained: ``"auto"`` (ImageNet weights from the local cache when present, else
            random), ``"none"`` (random), or a path to a torchvision state-dict file.
        pool_grid: the final pooling's output grid (rows, columns). (1, 1) is the usual
            global average; a grid keeps where things are in the image, which is much of
            what a pose regressor needs, above all when the backbone is not pretrained.
    """
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone '{name}'; choose one of {', '.join(BACKBONES)}")
    builder, kwargs, strip = BACKBONES[name]
    model = torchvision.models.get_model(builder, weights=None, **kwargs)
    source = "random initialisation"
    path: Path | None = None
    if pretrained == "auto":
        path = cached_weights_path(name)
        if path is None:
            log.warning(
                "no ImageNet weights for %s in the local torch cache (%s); training from random "
                "initialisation (put the torchvision weights file there, or pass one with "
                "`pretrained: /path/to/file.pth`)", name,
                Path(torch.hub.get_dir()) / "checkpoints")
    elif pretrained not in ("none", ""):
        path = Path(pretrained)
        if not path.is_file():
            raise ConfigError(f"pretrained weights file not found: {path}")
    if path is not None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing, unexpected = model.load_state_dict(state, strict=False)
        except (RuntimeError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot load backbone weights {path}: {exc}") from exc
        if missing:
            raise CheckpointError(f"{path} lacks {len(missing)} tensors of {name} (wrong file?)")
        source = str(path)
        log.info("backbone %s: ImageNet weights from %s", name, path)
    width = strip(model)
    gh, gw = (int(v) for v in pool_grid)
    if (gh, gw) != (1, 1):
        if not isinstance(getattr(model, "avgpool", None), nn.AdaptiveAvgPool2d):
            raise ConfigError(f"backbone {name} has no adaptive pooling to set a grid on")
        model.avgpool = nn.AdaptiveAvgPool2d((gh, gw))
        width *= gh * gw
    return model, BackboneInfo(name, width, path is not None, source)


def build_trunk(name: str, pretrained: str = "auto", stride: int = 8
                ) -> tuple[nn.Module, int, BackboneInfo]:
    """The backbone ``name`` cut at output ``stride`` (a dense feature map, no pooling), for
    dense heads (:mod:`camera_pose_ros.learning.structure`).

    Returns the trunk, its output channels and how its weights were found.

    Raises:
        ConfigError: a backbone without a stride-``stride`` stage to cut at (googlenet).
    """
    model, info = build_backbone(name, pretrained)
    if name.startswith("resnet"):
        names = ["conv1", "bn1", "relu", "maxpool", "layer1"]
        names += ["layer2"] if stride >= 8 else []
        names += ["layer3"] if stride >= 16 else []
        stages = [model.get_submodule(n) for n in names]
        trunk = nn.Sequential(*stages)
    elif hasattr(model, "features"):  # efficientnet, mobilenet_v3: cut where stride ends
        trunk = nn.Sequential()
        probe = torch.zeros(1, 3, 64, 64)
        with torch.no_grad():
            features = model.features
            assert isinstance(features, nn.Sequential)
            for i, block in enumerate(features):
                out = block(probe)
                if 64 // out.shape[-1] > stride:
                    break
                trunk.add_module(str(i), block)
                probe = out
    else:
        raise ConfigError(f"backbone {name} cannot be cut at stride {stride} for dense "
                          "heads; use a resnet, efficientnet or mobilenet_v3")
    with torch.no_grad():
        trunk.eval()
        channels = int(trunk(torch.zeros(1, 3, 64, 64)).shape[1])
    trunk.train()
    return trunk, channels, BackboneInfo(name, channels, info.pretrained, info.weights_source)
