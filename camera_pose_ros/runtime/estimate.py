"""A pose estimate and the checks every estimate goes through: floor snapping, jump gate.

numpy and scipy only (no torch): the node's scheduling, relocalization and diagnostics
pieces build on these without loading the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from camera_pose_ros.errors import InputDataError
from camera_pose_ros.io.floorplan import FloorPlan

__all__ = ["PoseEstimate", "FloorSnapper", "JumpGate"]


@dataclass
class PoseEstimate:
    """A camera pose in the map frame.

    Attributes:
        position: (3,) metres.
        quat_wxyz: (4,) unit quaternion, ``map_from_cam``.
        covariance: (6, 6) REP 103 order (x, y, z, rotation about x, y, z).
        latency_s: inference time of the regression (in a batch, this frame's share of
            the batch's time).
        snapped: moved onto the walkable floor.
        refined: geometric refinement against the SfM map succeeded (``refine_note`` says
            why not when it was tried and failed).
    """

    position: np.ndarray
    quat_wxyz: np.ndarray
    covariance: np.ndarray
    latency_s: float = 0.0
    snapped: bool = False
    refined: bool = False
    refine_note: str = ""
    inliers: int = 0


class FloorSnapper:
    """Moves (x, y) points off non-walkable cells onto the nearest walkable cell.

    The nearest walkable cell of every cell comes from one Euclidean distance transform,
    computed when the map arrives, so snapping is a table lookup per estimate.

    Raises:
        InputDataError: the plan has no walkable (free) cell.
    """

    def __init__(self, plan: FloorPlan) -> None:
        self.plan = plan
        walkable = plan.walkable
        if not walkable.any():
            raise InputDataError("floor plan has no walkable (free) cell")
        _, (self._near_r, self._near_c) = ndimage.distance_transform_edt(
            ~walkable, return_indices=True)

    def snap(self, xy: np.ndarray) -> tuple[np.ndarray, bool]:
        """The nearest walkable point (cell centre) and whether ``xy`` had to move."""
        p = self.plan
        rc = p.world_to_cell(np.asarray(xy, float)[None])[0]
        h, w = p.occupancy.shape
        r, c = int(np.clip(rc[0], 0, h - 1)), int(np.clip(rc[1], 0, w - 1))
        inside = (r, c) == (rc[0], rc[1])
        if inside and p.walkable[r, c]:
            return np.asarray(xy, float), False
        nr, nc = self._near_r[r, c], self._near_c[r, c]
        out = np.array([p.origin[0] + (nc + 0.5) * p.resolution,
                        p.origin[1] + (nr + 0.5) * p.resolution])
        return out, True


class JumpGate:
    """Rejects an estimate whose motion since the last accepted one disagrees with odometry.

    ``max_jump`` metres of disagreement are allowed plus ``per_metre`` of the odometry's own
    travel (drift); rotation is not gated.
    """

    def __init__(self, max_jump: float = 1.0, per_metre: float = 0.2) -> None:
        self.max_jump, self.per_metre = max_jump, per_metre
        self._last: tuple[np.ndarray, np.ndarray] | None = None

    def accept(self, estimate_xyz: np.ndarray, odom_xyz: np.ndarray | None) -> bool:
        """True when plausible (always when there is no odometry or no previous estimate)."""
        if odom_xyz is None:
            return True
        if self._last is None:
            self._last = (np.asarray(estimate_xyz, float), np.asarray(odom_xyz, float))
            return True
        est0, odo0 = self._last
        d_est = np.linalg.norm(np.asarray(estimate_xyz) - est0)
        d_odo = np.linalg.norm(np.asarray(odom_xyz) - odo0)
        if abs(d_est - d_odo) > self.max_jump + self.per_metre * d_odo:
            return False
        self._last = (np.asarray(estimate_xyz, float), np.asarray(odom_xyz, float))
        return True
