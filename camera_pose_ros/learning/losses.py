"""Pose losses on raw head outputs (normalised position, log-quaternion).

Working on log-quaternions makes every loss blind to the sign of q (targets are canonical,
w >= 0, and the network's output maps to one rotation). Kinds:

- ``l1``, ``smoothl1``, ``mse``: the same distance on position and rotation, rotation
  weighted by ``beta``;
- ``beta``: PoseNet's ||x - x*||_2 + beta ||q - q*||_2 (Kendall et al. 2015);
- ``homoscedastic``: learned weighting L_x exp(-s_x) + s_x + L_q exp(-s_q) + s_q
  (Kendall & Cipolla 2017), also used by MapNet.

``MapNetLoss`` adds relative terms between consecutive frames of a tuple (Brahmbhatt et al.
2018): the predicted relative pose against the true one.
"""

from __future__ import annotations

from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn

from camera_pose_ros.errors import ConfigError

__all__ = ["LossKind", "LOSS_KINDS", "PoseLoss", "MapNetLoss", "relative_raw"]


class LossKind(str, Enum):
    """The ``loss`` setting (YAML spelling = value)."""

    L1 = "l1"
    SMOOTH_L1 = "smoothl1"
    MSE = "mse"
    BETA = "beta"
    HOMOSCEDASTIC = "homoscedastic"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, kind: str | LossKind) -> LossKind:
        """The member spelled ``kind``; ConfigError names the choices otherwise."""
        try:
            return cls(kind)
        except ValueError:
            raise ConfigError(f"unknown loss '{kind}'; choose one of "
                              f"{', '.join(LOSS_KINDS)}") from None


LOSS_KINDS = tuple(k.value for k in LossKind)


def _dist(kind: LossKind, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if kind is LossKind.L1:
        return F.l1_loss(a, b)
    if kind is LossKind.SMOOTH_L1:
        return F.smooth_l1_loss(a, b, beta=0.1)
    if kind is LossKind.MSE:
        return F.mse_loss(a, b)
    # beta and homoscedastic: mean Euclidean norm (PoseNet), L1 for homoscedastic (MapNet)
    if kind is LossKind.BETA:
        return (a - b).norm(dim=-1).mean()
    return F.l1_loss(a, b)


class PoseLoss(nn.Module):
    """Absolute pose loss on (B, 6) raw outputs and targets."""

    def __init__(self, kind: str | LossKind = LossKind.HOMOSCEDASTIC, *, beta: float = 1.0,
                 sx: float = 0.0, sq: float = -3.0) -> None:
        super().__init__()
        self.kind = LossKind.parse(kind)
        self.beta = beta
        learn = self.kind is LossKind.HOMOSCEDASTIC
        self.sx = nn.Parameter(torch.tensor(float(sx)), requires_grad=learn)
        self.sq = nn.Parameter(torch.tensor(float(sq)), requires_grad=learn)

    def terms(self, pred_B6: torch.Tensor, target_B6: torch.Tensor) -> tuple[torch.Tensor,
                                                                            torch.Tensor]:
        """Position and rotation terms, unweighted."""
        return (_dist(self.kind, pred_B6[..., :3], target_B6[..., :3]),
                _dist(self.kind, pred_B6[..., 3:], target_B6[..., 3:]))

    def combine(self, lx: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        """Weighted sum of a position and a rotation term."""
        if self.kind is LossKind.HOMOSCEDASTIC:
            return lx * torch.exp(-self.sx) + self.sx + lq * torch.exp(-self.sq) + self.sq
        return lx + self.beta * lq

    def forward(self, pred_B6: torch.Tensor, target_B6: torch.Tensor) -> torch.Tensor:
        """Scalar loss."""
        return self.combine(*self.terms(pred_B6, target_B6))


def relative_raw(raw_BT6: torch.Tensor) -> torch.Tensor:
    """Relative poses between consecutive frames of tuples, in raw form (B, T-1, 6).

    Position: the difference of normalised positions (map frame); rotation: log of
    q_t^-1 q_{t+1}. Both are what MapNet's relative terms compare.
    """
    from camera_pose_ros.learning.networks import (  # local: networks imports nothing here
        logq_to_quat,
        quat_conjugate,
        quat_multiply,
        quat_to_logq,
    )

    q = logq_to_quat(raw_BT6[..., 3:])
    q_rel = quat_multiply(quat_conjugate(q[:, :-1]), q[:, 1:])
    return torch.cat([raw_BT6[:, 1:, :3] - raw_BT6[:, :-1, :3], quat_to_logq(q_rel)], dim=-1)


class MapNetLoss(nn.Module):
    """MapNet: absolute loss on every frame of a tuple plus relative loss between neighbours."""

    def __init__(self, kind: str | LossKind = LossKind.HOMOSCEDASTIC, *, beta: float = 1.0,
                 relative_weight: float = 1.0) -> None:
        super().__init__()
        self.absolute = PoseLoss(kind, beta=beta)
        self.relative = PoseLoss(kind, beta=beta)
        self.relative_weight = relative_weight

    def forward(self, pred_BT6: torch.Tensor, target_BT6: torch.Tensor) -> torch.Tensor:
        """Scalar loss over (B, T, 6) tuples."""
        b, t, _ = pred_BT6.shape
        loss = self.absolute(pred_BT6.reshape(b * t, 6), target_BT6.reshape(b * t, 6))
        if t > 1 and self.relative_weight > 0:
            loss = loss + self.relative_weight * self.relative(
                relative_raw(pred_BT6).reshape(-1, 6), relative_raw(target_BT6).reshape(-1, 6))
        return loss
