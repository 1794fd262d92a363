"""Backbone registry over torchvision: image (B, 3, H, W) -> feature vector (B, D).

ImageNet weights (``pretrained``): ``auto`` takes them from the local torch hub cache
(``$TORCH_HOME/hub/checkpoints``, where torchvision keeps what it has downloaded), else
downloads them there as torchvision does (a progress bar, the file's hash checked, written
atomically) and, when that fails (offline), says so in one warning and trains from random
initialisation; ``cache`` never downloads; ``none`` is random; a path is a weights file. The
checkpoint records ``pretrained`` and ``weights_source`` (the file, whether it was
downloaded, or why there were no weights).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from camera_pose_ros.errors import CheckpointError, ConfigError

__all__ = ["BACKBONES", "BackboneInfo", "build_backbone", "build_trunk", "cached_weights_path",
           "weights_url", "download_weights", "DOWNLOAD_TIMEOUT_S"]

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


#: seconds a download may wait for the server (connecting or between reads)
DOWNLOAD_TIMEOUT_S = 20.0


def weights_url(name: str) -> str:
    """Where torchvision downloads the ImageNet weights of backbone ``name``."""
    return str(torchvision.models.get_model_weights(BACKBONES[name][0]).DEFAULT.url)


def cached_weights_path(name: str) -> Path | None:
    """The ImageNet weights file of ``name`` in the local torch hub cache, if present."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights_url(name))
    return path if path.is_file() else None


def download_weights(url: str, *, progress: bool = True,
                     timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download a weights file into the torch hub cache as torchvision does and return it.

    The SHA-256 prefix in the file name (torchvision's ``name-<hash>.pth``) is checked; the
    file appears only when complete (torch writes a temporary file and renames it).

    Raises:
        OSError: no connection, a timeout, an HTTP error, or a file whose hash is wrong
            (``urllib``'s errors are OSErrors; torch's hash error is re-raised as one).
    """
    name = os.path.basename(url)
    dest_dir = Path(torch.hub.get_dir()) / "checkpoints"
    dest_dir.mkdir(parents=True, exist_ok=True)
    match = torch.hub.HASH_REGEX.search(name)
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)  # urllib under torch.hub takes no timeout of its own
    try:
        torch.hub.download_url_to_file(url, str(dest_dir / name),
                                       hash_prefix=match.group(1) if match else None,
                                       progress=progress)
    except RuntimeError as exc:  # "invalid hash value"
        raise OSError(str(exc)) from exc
    finally:
        socket.setdefaulttimeout(before)
    return dest_dir / name


def build_backbone(name: str, pretrained: str = "auto",
                   pool_grid: tuple[int, int] = (1, 1)) -> tuple[nn.Module, BackboneInfo]:
    """Build a feature extractor.

    Args:
        name: a key of :data:`BACKBONES`.
        pretrained: ``"auto"`` (ImageNet weights from the local cache, else downloaded
            there, else random with a warning), ``"cache"`` (the cache only), ``"none"``
            (random), or a path to a torchvision state-dict file.
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
    downloaded = ""
    if pretrained in ("auto", "cache"):
        path = cached_weights_path(name)
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        if path is None and pretrained == "auto":
            url = weights_url(name)
            log.info("downloading the ImageNet weights of %s from %s into %s", name, url, hub)
            try:
                path, downloaded = download_weights(url), f" (downloaded from {url})"
            except OSError as exc:
                reason = " ".join(str(exc).split())[:200]
                source = f"random initialisation (download failed: {reason})"
                log.warning(
                    "cannot download the ImageNet weights of %s (%s: offline?); training from "
                    "random initialisation (put the file %s in %s, or pass one with "
                    "`pretrained: /path/to/file.pth`)", name, reason, os.path.basename(url),
                    hub)
        elif path is None:
            log.warning(
                "no ImageNet weights for %s in the local torch cache (%s); training from random "
                "initialisation (`pretrained: auto` downloads them, or pass a file with "
                "`pretrained: /path/to/file.pth`)", name, hub)
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
        source = str(path) + downloaded
        log.info("backbone %s: ImageNet weights from %s", name, source)
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
