"""A pose estimate and the checks it goes through: floor snapping, jump gate, the map's
verdict on the regressor.

numpy and scipy only (no torch): the node's scheduling, relocalization and diagnostics
pieces build on these without loading the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation
from scipy.stats import chi2

from camera_pose_ros.errors import InputDataError
from camera_pose_ros.geometry import rotmat_from_quat_wxyz, widen_rotation
from camera_pose_ros.io.floorplan import FloorPlan

__all__ = ["PoseEstimate", "FloorSnapper", "JumpGate", "RegressorCheck"]


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
        inliers: the refinement's inliers.
        floor: the floor whose map frame the pose is in ("": the only map).
    """

    position: np.ndarray
    quat_wxyz: np.ndarray
    covariance: np.ndarray
    latency_s: float = 0.0
    snapped: bool = False
    refined: bool = False
    refine_note: str = ""
    inliers: int = 0
    floor: str = ""


def blind_estimate(floor: str = "") -> PoseEstimate:
    """A pose that says nothing (position NaN, rotation unknown, covariance huge): refined
    from it, the map's frames are picked by retrieval alone and nothing gates on it."""
    return PoseEstimate(np.full(3, np.nan), np.array([1.0, 0.0, 0.0, 0.0]),
                        np.diag([1e6] * 3 + [np.pi**2] * 3), floor=floor)


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


class RegressorCheck:
    """Whether the SfM map currently confirms the regressor: the refined poses test the
    regressed ones, and the regressed poses that follow are widened by the verdict.

    In refine mode the regressed pose of a frame goes out before (or instead of) its refined
    one. A regressor trained on the mapping walk can be far off the walk while claiming a
    small covariance, and its error is correlated from frame to frame. So every refinement
    also tests the regressor: after a success, where the refined pose lies outside the
    regressed covariance's ``level`` ellipsoid (position and rotation separately: the
    regressor is worse than it claims), that block of the following regressed poses is
    scaled by the maximum-likelihood variance scale of the one difference seen
    (``d^T C^-1 d / 3``); after a failure, their rotation claims
    ``failed_rotation_sigma_deg`` (180: heading unknown; the map could not confirm it). The
    largest scale among the last ``memory`` refinements applies; a rotation never claims
    more than 180 deg.
    """

    def __init__(self, failed_rotation_sigma_deg: float = 180.0, level: float = 0.95,
                 memory: int = 5) -> None:
        self.failed_rotation_sigma = float(np.radians(failed_rotation_sigma_deg))
        self.threshold = float(chi2.ppf(level, 3))
        self.memory = max(1, int(memory))
        #: (position scale, rotation scale, rotation floor in rad) of recent refinements
        self.verdicts: list[tuple[float, float, float]] = []

    def _add(self, verdict: tuple[float, float, float]) -> None:
        self.verdicts = [*self.verdicts, verdict][-self.memory:]

    def refined(self, regressed: PoseEstimate, refined: PoseEstimate) -> None:
        """A refinement succeeded: how far outside its own covariance was the regressed pose
        it started from (``regressed``: that pose as it was before refinement)."""
        cov = regressed.covariance
        d_pos = refined.position - regressed.position
        d_rot = Rotation.from_matrix(rotmat_from_quat_wxyz(refined.quat_wxyz)
                                     @ rotmat_from_quat_wxyz(regressed.quat_wxyz).T).as_rotvec()
        scales = []
        for d, block in ((d_pos, cov[:3, :3]), (d_rot, cov[3:, 3:])):
            try:
                m2 = float(d @ np.linalg.solve(block, d))
            except np.linalg.LinAlgError:
                m2 = np.inf
            if not np.isfinite(m2):
                scales.append(1e6)
            else:
                scales.append(max(1.0, m2 / 3.0) if m2 > self.threshold else 1.0)
        self._add((scales[0], scales[1], 0.0))

    def failed(self) -> None:
        """A refinement failed: the map did not confirm the regressor."""
        self._add((1.0, 1.0, self.failed_rotation_sigma))

    @property
    def confirmed(self) -> bool:
        """No recent refinement found the regressor outside its covariance or failed."""
        return all(v == (1.0, 1.0, 0.0) for v in self.verdicts)

    def apply(self, est: PoseEstimate) -> PoseEstimate:
        """Widen a regressed estimate's covariance by the recent verdicts (in place)."""
        if self.confirmed:
            return est
        k_pos = max(v[0] for v in self.verdicts)
        k_rot = max(v[1] for v in self.verdicts)
        floor = max(v[2] for v in self.verdicts)
        scale = np.sqrt(np.r_[np.full(3, k_pos), np.full(3, k_rot)])
        cov = est.covariance * np.outer(scale, scale)  # D C D: still a covariance
        est.covariance = widen_rotation(cov, floor)
        return est
