"""Backbones, networks, losses, uncertainty and checkpoints (no dataset needed)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from camera_pose_ros.errors import CheckpointError, ConfigError
from camera_pose_ros.learning import backbones
from camera_pose_ros.learning.backbones import BACKBONES, build_backbone
from camera_pose_ros.learning.checkpoint import build_regressor, load_checkpoint, save_checkpoint
from camera_pose_ros.learning.losses import MapNetLoss, PoseLoss, relative_raw
from camera_pose_ros.learning.networks import (
    PoseRegressor,
    logq_to_quat,
    quat_rotate,
    quat_to_logq,
)
from camera_pose_ros.learning.uncertainty import (
    apply_calibration,
    coverage,
    fit_calibration,
)

SMALL = {"kind": "posenet", "backbone": "mobilenet_v3_small", "hidden": 32, "dropout": 0.2,
         "pool_grid": [1, 1], "pos_mean": [1.0, 2.0, 1.5], "pos_scale": 3.0}
INPUT = {"height": 48, "width": 64, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


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


def test_logq_round_trip_and_sign():
    q = torch.tensor(Rotation.random(16, random_state=0).as_quat()[:, [3, 0, 1, 2]],
                     dtype=torch.float64)
    q = torch.where(q[:, :1] < 0, -q, q)
    assert torch.allclose(logq_to_quat(quat_to_logq(q)), q, atol=1e-9)
    assert torch.allclose(quat_to_logq(-q), quat_to_logq(q), atol=1e-9)
    v = torch.randn(16, 3, dtype=torch.float64)
    r = Rotation.from_quat(q[:, [1, 2, 3, 0]].numpy())
    assert np.allclose(quat_rotate(q, v).numpy(), r.apply(v.numpy()), atol=1e-9)


def test_regressor_outputs_unit_quaternions_and_metric_positions():
    model = build_regressor(SMALL).eval()
    with torch.no_grad():
        out = model(torch.rand(3, 3, 48, 64))
    assert out.shape == (3, 7)
    assert torch.allclose(out[:, 3:].norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.all(out[:, 3] >= 0)
    poses = torch.tensor([[4.0, -2.0, 1.5, 1.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(model.decode(model.encode(poses)), poses, atol=1e-5)


@pytest.mark.parametrize("kind", ["l1", "smoothl1", "mse", "beta", "homoscedastic"])
def test_losses_are_blind_to_quaternion_sign(kind):
    loss = PoseLoss(kind)
    pred = torch.randn(4, 6)
    q = logq_to_quat(torch.randn(4, 3) * 0.3)
    target_a = torch.cat([torch.randn(4, 3), quat_to_logq(q)], 1)
    target_b = torch.cat([target_a[:, :3], quat_to_logq(-q)], 1)
    assert torch.allclose(loss(pred, target_a), loss(pred, target_b))
    assert loss(target_a, target_a) <= loss(pred, target_a)


def test_homoscedastic_weights_are_learned():
    loss = PoseLoss("homoscedastic")
    assert loss.sx.requires_grad and loss.sq.requires_grad
    assert not PoseLoss("beta").sx.requires_grad
    with pytest.raises(ConfigError):
        PoseLoss("huber")


def test_mapnet_relative_terms():
    raw = torch.randn(2, 3, 6) * 0.3
    rel = relative_raw(raw)
    assert rel.shape == (2, 2, 6)
    assert torch.allclose(rel[..., :3], raw[:, 1:, :3] - raw[:, :-1, :3])
    loss = MapNetLoss("l1", relative_weight=1.0)
    shifted = raw.clone()
    shifted[..., :3] += 1.0  # same relative poses, wrong absolute ones
    no_rel = MapNetLoss("l1", relative_weight=0.0)
    assert loss(shifted, raw) == pytest.approx(no_rel(shifted, raw).item(), abs=1e-6)
    jitter = raw.clone()
    jitter[:, 1, :3] += 0.5
    assert loss(jitter, raw) > no_rel(jitter, raw)


def test_calibration_matches_chi_square():
    rng = np.random.default_rng(0)
    n = 4000
    true_sigma = np.array([0.3, 0.3, 0.05, 0.02, 0.02, 0.05])
    err = rng.normal(size=(n, 6)) * true_sigma
    raw_cov = np.repeat(np.diag((true_sigma * 0.1) ** 2)[None], n, 0)  # 10x too confident
    calib = fit_calibration(err, raw_cov, samples=10, floor_pos=0.0, floor_rot=0.0)
    cov = apply_calibration(raw_cov, calib)
    cover = coverage(err, cov)
    for block in ("position", "rotation"):
        assert cover[f"{block}_inside_1sigma"] == pytest.approx(0.683, abs=0.03)
        assert cover[f"{block}_inside_2sigma"] == pytest.approx(0.954, abs=0.02)
    before = coverage(err, raw_cov)
    assert before["position_inside_1sigma"] < 0.1


def test_checkpoint_round_trip(tmp_path):
    model = build_regressor(SMALL).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, model_cfg=SMALL, input_cfg=INPUT,
                           map_frame="map", extra={"calibration": {"k_pos": 2.0}})
    data = torch.load(path, weights_only=True)  # plain data: loads without unpickling code
    assert data["map_frame"] == "map" and data["calibration"]["k_pos"] == 2.0
    loaded = load_checkpoint(path)
    x = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), model(x), atol=1e-6)
    assert (loaded.transform.height, loaded.transform.width) == (48, 64)


class Evil:
    """A pickled object that would run code when unpickled without weights_only."""

    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_refuses_pickled_objects_and_other_versions(tmp_path):
    model = build_regressor(SMALL)
    path = save_checkpoint(tmp_path / "m.pt", model, model_cfg=SMALL, input_cfg=INPUT,
                           map_frame="map", extra={})
    data = torch.load(path, weights_only=True)
    data["evil"] = Evil()
    torch.save(data, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not code"):
        load_checkpoint(tmp_path / "evil.pt")
    data.pop("evil")
    data["format_version"] = 999
    torch.save(data, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format 999"):
        load_checkpoint(tmp_path / "future.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.pt")
    with open(tmp_path / "plain.pt", "wb") as fh:
        pickle.dump({"a": 1}, fh)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_regressor_is_a_pose_regressor():
    assert isinstance(build_regressor(SMALL), PoseRegressor)


def test_rotation_augmentation_is_pose_consistent():
    """A view rotated about the camera centre: pixels follow K dR^T K^-1, pose is R dR."""
    from camera_pose_ros.learning.data import rotate_view

    K = np.array([[100.0, 0, 63.5], [0, 100.0, 47.5], [0, 0, 1]])
    rgb = np.zeros((96, 128, 3), np.uint8)
    rgb[40:56, 56:72] = 255  # a bright square at the image centre
    pose = np.array([1.0, 2.0, 1.5, 1.0, 0.0, 0.0, 0.0], np.float32)
    yaw = np.radians(10.0)  # turn right: about the camera's y axis (down)
    warped, new = rotate_view(rgb, pose, K, np.array([0.0, yaw, 0.0]))
    ys, xs = np.nonzero(warped[:, :, 0] > 128)
    # the square's centre moves left by f tan(yaw) pixels when the camera turns right
    assert xs.mean() == pytest.approx(63.5 - 100.0 * np.tan(yaw), abs=1.5)
    assert ys.mean() == pytest.approx(47.5, abs=1.0)
    assert np.allclose(new[:3], pose[:3])
    angle = 2 * np.degrees(np.arccos(min(1.0, abs(float(new[3])))))
    assert angle == pytest.approx(10.0, abs=1e-3)
