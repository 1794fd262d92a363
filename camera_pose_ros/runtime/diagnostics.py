"""The relocalization node's counters, latency windows and diagnostics snapshots. No ROS here.

:class:`NodeStats` is written by every thread of the node; :func:`diagnostics_snapshot` turns
it into one status (level, message, key/values) that the node sends as a
``diagnostic_msgs/DiagnosticStatus``.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from camera_pose_ros.io.coverage import MappedViews
from camera_pose_ros.runtime.relocalize import Outcome, RelocalizationResult

__all__ = ["Level", "COUNTERS", "NodeStats", "DiagnosticsSnapshot", "diagnostics_snapshot"]

# every counter /diagnostics reports, in this order (zero when never counted)
COUNTERS = ("received", "published", "dropped_stale", "dropped_superseded", "dropped_future",
            "rejected_bad_input", "rejected_nan", "rejected_jump", "rejected_error",
            "rejected_odometry", "rejected_map", "rejected_camera_info", "rejected_other",
            "snapped", "no_odometry", "refined", "refine_failed", "refine_error",
            "relocalized", "relocalization_failed")

RATE_WINDOW_S = 5.0  # the input rate counts images that arrived this recently


class Level(IntEnum):
    """Diagnostic level (the values of ``diagnostic_msgs/DiagnosticStatus``)."""

    OK = 0
    WARN = 1
    ERROR = 2
    STALE = 3


class NodeStats:
    """Counters, inference and refinement latencies and image arrival times (thread-safe).

    Args:
        window: latencies and arrival times kept (the newest).
    """

    def __init__(self, window: int = 200) -> None:
        self.lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.latency: collections.deque[float] = collections.deque(maxlen=window)
        self.refine_latency: collections.deque[float] = collections.deque(maxlen=window)
        self.arrivals: collections.deque[float] = collections.deque(maxlen=window)
        self.last_relocalization: RelocalizationResult | None = None
        self.last_pose: tuple[np.ndarray, np.ndarray] | None = None  # position, quat_wxyz

    def add(self, key: str, n: int = 1) -> None:
        """Count ``n`` under ``key``."""
        with self.lock:
            self.counts[key] += n

    def arrived(self, now: float) -> None:
        """One image arrived at ``now`` (monotonic seconds)."""
        with self.lock:
            self.arrivals.append(now)

    def inference_took(self, seconds: float) -> None:
        """One inference's latency."""
        with self.lock:
            self.latency.append(seconds)

    def refinement_took(self, seconds: float) -> None:
        """One refinement's latency."""
        with self.lock:
            self.refine_latency.append(seconds)

    def estimated(self, position: np.ndarray, quat_wxyz: np.ndarray) -> None:
        """The pose last published (its distance to the mapped views is measured when a
        snapshot is taken, not on the frame path)."""
        with self.lock:
            self.last_pose = (np.array(position, float), np.array(quat_wxyz, float))

    def relocalization_ended(self, result: RelocalizationResult) -> None:
        """Count a request's result (relocalized, else failed) and keep it as the last one."""
        with self.lock:
            self.counts["relocalized" if result.success else "relocalization_failed"] += 1
            self.last_relocalization = result


@dataclass(frozen=True)
class DiagnosticsSnapshot:
    """One diagnostic status: level, a one-line message and ordered key/values (strings)."""

    level: Level
    message: str
    values: dict[str, str]


def _percentile(ms: np.ndarray, q: float) -> str:
    return f"{np.percentile(ms, q):.1f}" if len(ms) else ""


def diagnostics_snapshot(stats: NodeStats, *, now: float, model: str | None,
                         device: str = "", views: MappedViews | None = None
                         ) -> DiagnosticsSnapshot:
    """The node's status now.

    ERROR without a model; WARN with no image in the last few seconds, or when the last
    relocalization request failed (its message); else OK, "localizing".

    Args:
        stats: the node's counters.
        now: monotonic seconds (the clock of :meth:`NodeStats.arrived`).
        model: the loaded model's name, None when none is loaded.
        device: where inference runs.
        views: the mapped views; with them, the last published pose's distance to the
            nearest one (``nearest_view_m``) and to the nearest one looking the same way
            (``nearest_same_way_view_m``, metres): a pose far from every mapped view is in
            a place the map never saw (empty values otherwise).
    """
    with stats.lock:
        counts = dict(stats.counts)
        lat_ms = np.array(stats.latency) * 1000.0
        ref_ms = np.array(stats.refine_latency) * 1000.0
        arrivals = np.array(stats.arrivals)
        last = stats.last_relocalization
        last_pose = stats.last_pose
    recent = arrivals[arrivals > now - RATE_WINDOW_S]
    span = float(recent[-1] - recent[0]) if len(recent) > 1 else 0.0
    rate = (len(recent) - 1) / span if span > 0 else 0.0
    last_text = last.message if last is not None else ""
    if model is None:
        level, message = Level.ERROR, "no model loaded"
    elif counts.get("received", 0) == 0 or rate == 0.0:
        level, message = Level.WARN, "no images"
    elif last is not None and last.outcome is Outcome.FAILED:
        level, message = Level.WARN, last_text
    else:
        level, message = Level.OK, "localizing"
    values = {"input_rate_hz": f"{rate:.2f}", "inference_ms_p50": _percentile(lat_ms, 50),
              "inference_ms_p99": _percentile(lat_ms, 99),
              "refine_ms_p50": _percentile(ref_ms, 50), "device": device,
              "model": model or "", "last_relocalization": last_text}
    values.update((key, str(counts.get(key, 0))) for key in COUNTERS)
    values["nearest_view_m"] = values["nearest_same_way_view_m"] = ""
    if views is not None and len(views) and last_pose is not None:
        near = views.nearest(last_pose[0][None], last_pose[1][None])
        values["nearest_view_m"] = f"{near.distance_m[0]:.2f}"
        values["nearest_same_way_view_m"] = f"{near.same_way_m[0]:.2f}"
    return DiagnosticsSnapshot(level, message, values)
