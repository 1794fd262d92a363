"""The pose regressor and its quaternion helpers (learning/networks.py)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from camera_pose_ros.learning.checkpoint import build_regressor
from camera_pose_ros.learning.networks import logq_to_quat, quat_rotate, quat_to_logq

SMALL = {"kind": "posenet", "backbone": "mobilenet_v3_small", "hidden": 32, "dropout": 0.2,
         "pool_grid": [1, 1], "pos_mean": [1.0, 2.0, 1.5], "pos_scale": 3.0}


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
