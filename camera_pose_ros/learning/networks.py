"""The pose regression network of PoseNet and MapNet.

Both absolute regressors are a backbone plus a fully connected head (PoseNet: Kendall et al.
2015; MapNet: Brahmbhatt et al. 2018, the same regressor with a larger head, trained with
relative terms). The head regresses the position normalised by the training set's mean and
scale, and the rotation as a log-quaternion (MapNet's parametrisation: three unconstrained
numbers, no unit-norm constraint to fight, and q / -q ambiguity gone). ``forward`` returns
metric poses ``poses_B7`` = (x, y, z, qw, qx, qy, qz) with a unit quaternion, w >= 0.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "PoseRegressor",
    "logq_to_quat",
    "quat_to_logq",
    "quat_multiply",
    "quat_conjugate",
    "quat_rotate",
]


def logq_to_quat(logq_B3: torch.Tensor) -> torch.Tensor:
    """Unit quaternion (w, x, y, z) from a log-quaternion u: q = (cos|u|, sin|u| u/|u|)."""
    norm = logq_B3.norm(dim=-1, keepdim=True)
    # sin(n)/n -> 1 at 0; the clamp keeps the gradient finite there
    sinc = torch.where(norm < 1e-6, torch.ones_like(norm),
                       torch.sin(norm) / norm.clamp_min(1e-6))
    return torch.cat([torch.cos(norm), logq_B3 * sinc], dim=-1)


def quat_to_logq(q_B4: torch.Tensor) -> torch.Tensor:
    """Log-quaternion of the canonical (w >= 0) unit quaternion: u = acos(w) v/|v|."""
    q = q_B4 / q_B4.norm(dim=-1, keepdim=True)
    q = torch.where(q[..., :1] < 0, -q, q)
    v = q[..., 1:]
    vn = v.norm(dim=-1, keepdim=True)
    angle = torch.atan2(vn, q[..., :1])
    return torch.where(vn < 1e-8, v, v * angle / vn.clamp_min(1e-8))


def quat_multiply(a_B4: torch.Tensor, b_B4: torch.Tensor) -> torch.Tensor:
    """Hamilton product of (w, x, y, z) quaternions."""
    aw, ax, ay, az = a_B4.unbind(-1)
    bw, bx, by, bz = b_B4.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], dim=-1)


def quat_conjugate(q_B4: torch.Tensor) -> torch.Tensor:
    """Inverse of a unit quaternion."""
    return q_B4 * q_B4.new_tensor([1.0, -1.0, -1.0, -1.0])


def quat_rotate(q_B4: torch.Tensor, v_B3: torch.Tensor) -> torch.Tensor:
    """Rotate vectors by unit quaternions."""
    zero = torch.zeros_like(v_B3[..., :1])
    return quat_multiply(quat_multiply(q_B4, torch.cat([zero, v_B3], -1)),
                         quat_conjugate(q_B4))[..., 1:]


class PoseRegressor(nn.Module):
    """Absolute pose regressor (PoseNet / MapNet): image -> metric pose in the map frame."""

    pos_mean: torch.Tensor  # buffers (saved with the weights)
    pos_scale: torch.Tensor

    def __init__(self, backbone: nn.Module, feature_dim: int, *, hidden: int = 2048,
                 dropout: float = 0.5, pos_mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
                 pos_scale: float = 1.0) -> None:
        super().__init__()
        self.backbone = backbone
        # standardise features per dimension: frozen (above all random) backbones give
        # features whose image-to-image variation is small beside their common offset
        self.norm = nn.BatchNorm1d(feature_dim)
        self.fc = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.fc_xyz = nn.Linear(hidden, 3)
        self.fc_logq = nn.Linear(hidden, 3)
        # small initial rotations: start near the identity, not at random axes
        nn.init.normal_(self.fc_logq.weight, std=1e-3)
        nn.init.zeros_(self.fc_logq.bias)
        self.register_buffer("pos_mean", torch.tensor(pos_mean, dtype=torch.float32))
        self.register_buffer("pos_scale", torch.tensor(float(pos_scale), dtype=torch.float32))

    def features(self, images_B3HW: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, D)."""
        return self.backbone(images_B3HW)

    def head(self, feats_BD: torch.Tensor) -> torch.Tensor:
        """Raw head output (B, 6): normalised position and log-quaternion."""
        h = self.dropout(self.fc(self.norm(feats_BD)))
        return torch.cat([self.fc_xyz(h), self.fc_logq(h)], dim=-1)

    def decode(self, raw_B6: torch.Tensor) -> torch.Tensor:
        """Metric poses (B, 7) from raw head output."""
        xyz = raw_B6[..., :3] * self.pos_scale + self.pos_mean
        q = logq_to_quat(raw_B6[..., 3:])
        q = torch.where(q[..., :1] < 0, -q, q)
        return torch.cat([xyz, q], dim=-1)

    def encode(self, poses_B7: torch.Tensor) -> torch.Tensor:
        """Raw targets (B, 6) for metric poses: the inverse of :meth:`decode`."""
        return torch.cat([(poses_B7[..., :3] - self.pos_mean) / self.pos_scale,
                          quat_to_logq(poses_B7[..., 3:])], dim=-1)

    def forward(self, images_B3HW: torch.Tensor) -> torch.Tensor:
        """Metric poses (B, 7): x, y, z, qw, qx, qy, qz in the map frame."""
        return self.decode(self.head(self.features(images_B3HW)))

