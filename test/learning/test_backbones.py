"""Backbones: torchvision builders without the classifier, pooled grids, pretrained
weights from a file or the torch cache (learning/backbones.py)."""

from __future__ import annotations

import pytest
import torch

from camera_pose_ros.errors import ConfigError
from camera_pose_ros.learning import backbones
from camera_pose_ros.learning.backbones import BACKBONES, build_backbone


def test_registry_covers_the_required_backbones():
    for name in ["resnet18", "resnet34", "resnet50", "resnet152", "googlenet",
                 *[f"efficientnet_b{i}" for i in range(8)], "mobilenet_v3_large"]:
        assert name in BACKBONES


@pytest.mark.parametrize("name, width", [("resnet18", 512), ("mobilenet_v3_small", 576),
                                         ("googlenet", 1024), ("efficientnet_b0", 1280)])
def test_backbone_feature_width(name, width):
    model, info = build_backbone(name, "none")
    assert info.feature_dim == width and not info.pretrained
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 3, 64, 64)).shape == (2, width)


def test_pool_grid_multiplies_width():
    model, info = build_backbone("resnet18", "none", (2, 3))
    assert info.feature_dim == 512 * 6
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 96, 128)).shape == (1, 512 * 6)


def test_pretrained_from_file_and_plain_fallback(tmp_path, monkeypatch, caplog):
    src, _ = build_backbone("mobilenet_v3_small", "none")
    state = {k: v for k, v in torchvision_state("mobilenet_v3_small").items()}
    torch.save(state, tmp_path / "w.pth")
    model, info = build_backbone("mobilenet_v3_small", str(tmp_path / "w.pth"))
    assert info.pretrained and info.weights_source.endswith("w.pth")
    first = next(iter(state))
    assert torch.equal(model.state_dict()[first], state[first])
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    _, info = build_backbone("mobilenet_v3_small", "auto")
    assert not info.pretrained
    assert "training from random initialisation" in caplog.text
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_backbone("vgg_nope")
    del src


def torchvision_state(name: str) -> dict:
    import torchvision

    return torchvision.models.get_model(name, weights=None).state_dict()


def test_cached_weights_are_found(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    path = backbones.cached_weights_path("resnet18")
    assert path is None
    import torchvision

    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    torch.save(torchvision_state("resnet18"), tmp_path / "checkpoints" / url.rsplit("/", 1)[1])
    _, info = build_backbone("resnet18", "auto")
    assert info.pretrained
