"""Backbones: torchvision builders without the classifier, pooled grids, pretrained
weights from a file, the torch cache or a download (learning/backbones.py).

Downloads come from a real HTTP server on this machine (the weights URL pointed at it), so
the tests never reach the internet and pass the same online and offline."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading

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
    _, info = build_backbone("mobilenet_v3_small", "cache")  # the cache only: no download
    assert not info.pretrained and info.weights_source == "random initialisation"
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


@pytest.fixture
def weights_server(tmp_path):
    """A local HTTP server of ``tmp_path / "served"``; yields its base URL."""
    served = tmp_path / "served"
    served.mkdir()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_auto_downloads_into_the_cache_with_the_hash_checked(tmp_path, monkeypatch, caplog,
                                                             weights_server):
    base, served = weights_server
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    state = torchvision_state("mobilenet_v3_small")
    torch.save(state, served / "w.pth")
    digest = hashlib.sha256((served / "w.pth").read_bytes()).hexdigest()
    good = f"mobilenet_v3_small-{digest[:8]}.pth"
    (served / "w.pth").rename(served / good)
    (served / "mobilenet_v3_small-00000000.pth").write_bytes((served / good).read_bytes())
    # the download as torchvision does it: into the hub cache, hash checked
    monkeypatch.setattr(backbones, "weights_url", lambda name: f"{base}/{good}")
    model, info = build_backbone("mobilenet_v3_small", "auto")
    assert (hub / "checkpoints" / good).is_file() and info.pretrained
    assert info.weights_source.endswith(f"(downloaded from {base}/{good})")
    first = next(iter(state))
    assert torch.equal(model.state_dict()[first], state[first])
    # a second build finds it in the cache: no download
    _, again = build_backbone("mobilenet_v3_small", "auto")
    assert again.pretrained and "downloaded" not in again.weights_source
    # a file whose hash is not its name's, a server that is not there: random, and said so
    for url in (f"{base}/mobilenet_v3_small-00000000.pth",
                f"http://127.0.0.1:{_closed_port()}/{good}"):
        monkeypatch.setattr(backbones, "weights_url", lambda name, u=url: u)
        (hub / "checkpoints" / good).unlink(missing_ok=True)
        caplog.clear()
        _, info = build_backbone("mobilenet_v3_small", "auto")
        assert not info.pretrained
        assert info.weights_source.startswith("random initialisation (download failed: ")
        assert "cannot download the ImageNet weights of mobilenet_v3_small" in caplog.text
        assert "offline?" in caplog.text
        assert not list((hub / "checkpoints").glob("mobilenet*"))  # nothing half-written
