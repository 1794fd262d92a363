"""Live capture coverage for the recorder: where the camera is, what of the plan it has seen.

No ROS here. :class:`LatestTransforms` keeps the newest transform of every edge of ``/tf`` and
``/tf_static`` (each frame has one parent, as in tf2) and composes ``target_from_source`` by
walking the tree, e.g. ``map -> odom -> base_link -> camera_optical_frame``; tf2_ros is not
needed. :class:`LiveCoverage` takes camera poses as the walk goes (cheap: a pose is only
queued) and, on the caller's worker thread, casts them into a
:class:`~camera_pose_ros.io.coverage.CoverageMap` of the floor plan and reports the share of
the walkable floor seen so far, the largest unseen gaps, a one-line summary and the grid
for an ``OccupancyGrid``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from camera_pose_ros.errors import ConfigError, InputDataError
from camera_pose_ros.geometry import (
    invert_pose,
    pose_matrix,
    quat_wxyz_from_rotmat,
    rotmat_from_quat_wxyz,
)
from camera_pose_ros.io.coverage import CoverageMap, optical_axes
from camera_pose_ros.io.floorplan import MAX_COORD, FloorPlan
from camera_pose_ros.runtime.diagnostics import DiagnosticsSnapshot, Level

__all__ = ["LatestTransforms", "LiveCoverage", "CoverageReport", "UNSEEN"]

#: OccupancyGrid value of a walkable cell no view has seen; seen cells get less, the more
#: heading sectors they were seen from (0: all of them); -1: not walkable
UNSEEN = 100


def _frame(name: str) -> str:
    """tf2 frame names carry no leading slash (tf1 still has them)."""
    return str(name).lstrip("/")


@dataclass
class _Edge:
    parent: str
    parent_from_child: np.ndarray
    static: bool
    received: float  # the caller's clock (monotonic seconds) when it arrived


class LatestTransforms:
    """The newest transform of each TF edge, composed on request (thread-safe).

    Args:
        max_frames: frames kept at most (a flood of new names is refused, not stored).
    """

    def __init__(self, max_frames: int = 1000) -> None:
        self._lock = threading.Lock()
        self._edges: dict[str, _Edge] = {}
        self.max_frames = max_frames

    def add(self, parent: str, child: str, xyz: tuple[float, float, float] | np.ndarray,
            quat_xyzw: tuple[float, float, float, float] | np.ndarray, *, static: bool,
            now: float) -> None:
        """Keep ``parent_from_child``; a frame's parent may change (the newest wins).

        Raises:
            InputDataError: empty names, a frame its own parent, a non-finite or huge
                translation, a quaternion not of unit length (within 10%), or too many frames.
        """
        parent, child = _frame(parent), _frame(child)
        if not parent or not child or parent == child:
            raise InputDataError(f"transform '{parent}' -> '{child}' does not join two frames")
        t = np.asarray(xyz, float).reshape(3)
        q = np.asarray(quat_xyzw, float).reshape(4)
        if not (np.isfinite(t).all() and np.isfinite(q).all()) or np.abs(t).max() > MAX_COORD:
            raise InputDataError(f"transform '{parent}' -> '{child}' is not finite or beyond "
                                 f"{MAX_COORD:g} m: {t.tolist()} {q.tolist()}")
        norm = float(np.linalg.norm(q))
        if not 0.9 < norm < 1.1:
            raise InputDataError(f"transform '{parent}' -> '{child}' has a quaternion of "
                                 f"length {norm:.3g}")
        m = pose_matrix(rotmat_from_quat_wxyz(np.array([q[3], q[0], q[1], q[2]]) / norm), t)
        with self._lock:
            if child not in self._edges and len(self._edges) >= self.max_frames:
                raise InputDataError(f"more than {self.max_frames} TF frames: '{child}' "
                                     "not kept")
            self._edges[child] = _Edge(parent, m, static, now)

    def _up(self, frame: str) -> list[str]:
        """``frame`` and its ancestors up to the root (a loop ends it)."""
        path = [frame]
        while (edge := self._edges.get(path[-1])) is not None and edge.parent not in path:
            path.append(edge.parent)
        return path

    def lookup(self, target: str, source: str, *, now: float, max_age: float) -> np.ndarray:
        """``target_from_source`` (4x4) from the newest transforms.

        Raises:
            InputDataError: the frames are not connected (the message names where the chain
                breaks), or a non-static edge on the way arrived more than ``max_age``
                seconds before ``now`` (the robot's localization or odometry stopped).
        """
        target, source = _frame(target), _frame(source)
        with self._lock:
            up_s, up_t = self._up(source), self._up(target)
            common = next((f for f in up_s if f in up_t), None)
            if common is None:
                raise InputDataError(
                    f"no TF chain from '{target}' to '{source}': '{up_s[-1]}' has no parent "
                    f"(above {' <- '.join(up_s)}) and '{up_t[-1]}' none (above "
                    f"{' <- '.join(up_t)}); frames: {', '.join(sorted(self._edges)) or 'none'}")
            chain = []
            for path in (up_s[:up_s.index(common)], up_t[:up_t.index(common)]):
                out = np.eye(4)
                for child in path:
                    edge = self._edges[child]
                    if not edge.static and now - edge.received > max_age:
                        raise InputDataError(
                            f"TF '{edge.parent}' -> '{child}' is {now - edge.received:.1f} s "
                            f"old (more than {max_age:g} s)")
                    out = edge.parent_from_child @ out
                chain.append(out)
        return invert_pose(chain[1]) @ chain[0]


@dataclass(frozen=True)
class CoverageReport:
    """What the live coverage is now.

    Attributes:
        summary: :meth:`CoverageMap.summary` (shares, gaps, ...).
        grid: (H, W) int8 in OccupancyGrid order: -1 not walkable, :data:`UNSEEN` walkable and
            never seen, else ``round(100 * (1 - headings / bins))`` (0: seen from every
            heading sector).
        resolution: metres per cell; ``origin``: map coordinates of cell (0, 0).
        status: the one-line summary, a level and key/values for ``/diagnostics``.
    """

    summary: dict
    grid: np.ndarray
    resolution: float
    origin: tuple[float, float]
    status: DiagnosticsSnapshot


class LiveCoverage:
    """A running coverage of a floor plan from camera poses given one by one (thread-safe).

    :meth:`add_pose` and :meth:`set_plan` only queue; :meth:`update` (one worker thread)
    does the work. Every kept pose is remembered (at most ``max_poses``, then every other
    one is dropped), so a new plan is covered from the whole walk so far.

    Args:
        hfov_rad: the camera's horizontal field of view.
        max_range: metres a view reaches.
        min_move: a pose within this distance (m) and ``min_turn_deg`` of the last kept one
            is not kept (standing still does not count as seeing more).
        max_poses: poses remembered at most.
        source: where the poses come from, for the status (e.g. ``tf``).

    Raises:
        ConfigError: a field of view outside (0, 360] deg or a range that is not positive.
    """

    def __init__(self, *, hfov_rad: float = math.radians(60.0), max_range: float = 8.0,
                 min_move: float = 0.1, min_turn_deg: float = 10.0, max_poses: int = 20000,
                 source: str = "") -> None:
        try:  # the settings are checked now, not on the worker
            CoverageMap(FloorPlan(np.zeros((1, 1), np.int8), 1.0, (0.0, 0.0)),
                        hfov_rad=hfov_rad, max_range=max_range)
        except ValueError as exc:
            raise ConfigError(f"coverage: {exc}") from exc
        self.hfov_rad, self.max_range = hfov_rad, max_range
        self.min_move, self.min_cos = min_move, math.cos(math.radians(min_turn_deg))
        self.max_poses, self.source = max_poses, source
        self._lock = threading.Lock()
        self._poses: list[np.ndarray] = []  # (7,) x y z qw qx qy qz, every kept pose
        self._pending: list[np.ndarray] = []  # kept, not yet cast into the map
        self._plan: tuple[FloorPlan, str] | None = None  # a new plan waiting for update()
        self._map: CoverageMap | None = None
        self.plan_source = ""

    @property
    def poses(self) -> int:
        """Poses kept so far."""
        with self._lock:
            return len(self._poses)

    @property
    def has_plan(self) -> bool:
        """A floor plan was given (it may not be in use until the next :meth:`update`)."""
        with self._lock:
            return self._map is not None or self._plan is not None

    def set_plan(self, plan: FloorPlan, source: str) -> None:
        """Use ``plan`` from the next :meth:`update` on (the walk so far is cast again)."""
        with self._lock:
            self._plan = (plan, source)

    def add_pose(self, map_from_cam: np.ndarray) -> bool:
        """Queue the camera pose (4x4, map frame); False when it is too close to the last
        kept one or not finite."""
        m = np.asarray(map_from_cam, float)
        if m.shape != (4, 4) or not np.isfinite(m).all():
            return False
        pos, axis = m[:3, 3], m[:3, 2]
        with self._lock:
            if self._poses:
                last = self._poses[-1]
                if (np.linalg.norm(pos - last[:3]) < self.min_move
                        and float(axis @ optical_axes(last[3:])[0]) > self.min_cos):
                    return False
            pose = np.concatenate([pos, quat_wxyz_from_rotmat(m[:3, :3])])
            self._poses.append(pose)
            self._pending.append(pose)
            if len(self._poses) > self.max_poses:
                self._poses = self._poses[::2]
        return True

    def update(self, problem: str = "") -> CoverageReport | None:
        """Cast the queued poses (the whole walk again after a new plan) and report; None
        before there is a plan. A ``problem`` (why no pose came lately) makes the status a
        warning that says it."""
        with self._lock:
            new_plan, self._plan = self._plan, None
            if new_plan is not None:
                pending, self._pending = list(self._poses), []
            else:
                pending, self._pending = self._pending, []
        if new_plan is not None:
            self._map = CoverageMap(new_plan[0], hfov_rad=self.hfov_rad,
                                    max_range=self.max_range)
            self.plan_source = new_plan[1]
        cov = self._map
        if cov is None:
            return None
        if pending:
            poses = np.array(pending)
            cov.add_views(poses[:, :3], poses[:, 3:])
        return self._report(cov, problem)

    def _report(self, cov: CoverageMap, problem: str) -> CoverageReport:
        s = cov.summary()
        headings = cov.cell_headings()
        grid = np.full(cov.shape, -1, np.int8)
        grid[cov.free] = UNSEEN
        seen = cov.free & (cov.cell_views() > 0)
        grid[seen] = np.round(100 * (1 - headings[seen] / cov.heading_bins)).astype(np.int8)
        gaps = "; ".join(f"{g['area_m2']:.1f} m2 at ({g['x']:.1f}, {g['y']:.1f})"
                         for g in s["gaps"][:3])
        message = (f"{s['walkable_seen']:.0%} of the walkable floor seen "
                   f"({s['walkable_seen_2_headings']:.0%} from 2+ headings), "
                   f"{cov.poses} poses; " + (f"largest gaps: {gaps}" if gaps else
                                             "no unseen area of 1 m2 or more"))
        values = {
            "walkable_seen": f"{s['walkable_seen']:.3f}",
            "walkable_seen_2_headings": f"{s['walkable_seen_2_headings']:.3f}",
            "walkable_m2": f"{s['walkable_m2']:.1f}",
            "poses": str(cov.poses),
            "gaps": " ".join(f"{g['x']:.2f},{g['y']:.2f},{g['area_m2']:.2f}"
                             for g in s["gaps"]),
            "plan": self.plan_source, "pose_source": self.source,
        }
        values["problem"] = problem
        status = (DiagnosticsSnapshot(Level.WARN, f"{message} (no camera pose: {problem})",
                                      values) if problem else
                  DiagnosticsSnapshot(Level.OK, message, values))
        return CoverageReport(s, grid, cov.plan.resolution, cov.plan.origin, status)
