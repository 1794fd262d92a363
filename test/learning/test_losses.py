"""Pose losses on raw head outputs, PoseNet's and MapNet's (learning/losses.py)."""

from __future__ import annotations

import pytest
import torch

from camera_pose_ros.errors import ConfigError
from camera_pose_ros.learning.losses import MapNetLoss, PoseLoss, relative_raw
from camera_pose_ros.learning.networks import logq_to_quat, quat_to_logq


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
