"""What the live page shows, fed from any thread, pushed to every open page.

:class:`LiveState` holds the newest pose, the recent path (regressed and refined poses told
apart), the relocalization node's diagnostics and the last camera image (downscaled JPEG).
Feeders (the ROS callbacks of ``dashboard_node``, a test, a benchmark) call its ``on_*``
methods from their own threads; each update is serialised to JSON once and handed to every
subscribed WebSocket queue on its asyncio loop (``call_soon_threadsafe``), so a pose reaches
the page without polling. No ROS here.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from camera_pose_ros.geometry import rotmat_from_quat_wxyz

__all__ = ["LiveState", "pose_view", "covariance_ellipse", "QUEUE_SIZE"]

#: events a slow page may fall behind before the oldest are dropped
QUEUE_SIZE = 256


def covariance_ellipse(cov_xy: np.ndarray) -> dict | None:
    """1-sigma ellipse of a 2x2 position covariance: semi-axes (m) and major-axis angle.

    Returns ``{"a": major, "b": minor, "angle": radians from the map's x axis}`` or None
    when the covariance is not finite or not positive semi-definite.
    """
    c = np.asarray(cov_xy, float).reshape(2, 2)
    if not np.all(np.isfinite(c)):
        return None
    w, v = np.linalg.eigh(0.5 * (c + c.T))
    if w[0] < -1e-12:
        return None
    w = np.clip(w, 0.0, None)
    return {"a": float(math.sqrt(w[1])), "b": float(math.sqrt(w[0])),
            "angle": float(math.atan2(v[1, 1], v[0, 1]))}


def pose_view(position: np.ndarray, quat_wxyz: np.ndarray, covariance: np.ndarray | None = None,
              **extra: object) -> dict:
    """A pose as the pages draw it (JSON-safe).

    Keys: ``x, y, z`` (m), ``q`` (wxyz), ``heading`` (radians in the map's xy plane of the
    camera's viewing direction, its optical z axis), ``ellipse`` (1-sigma, see
    :func:`covariance_ellipse`; the pages draw 1 and 2 sigma), ``sigma`` (standard deviations
    of x, y, z in m and of the rotation about x, y, z in degrees), plus ``extra``.
    """
    p = np.asarray(position, float).reshape(3)
    q = np.asarray(quat_wxyz, float).reshape(4)
    forward = rotmat_from_quat_wxyz(q / np.linalg.norm(q))[:, 2]
    out: dict = {"x": float(p[0]), "y": float(p[1]), "z": float(p[2]),
                 "q": [float(v) for v in q],
                 "heading": float(math.atan2(forward[1], forward[0]))
                 if math.hypot(forward[0], forward[1]) > 1e-9 else None,
                 "ellipse": None, "sigma": None}
    if covariance is not None:
        c = np.asarray(covariance, float).reshape(6, 6)
        out["ellipse"] = covariance_ellipse(c[:2, :2])
        d = np.diag(c)
        if np.all(np.isfinite(d)) and np.all(d >= 0):
            s = np.sqrt(d)
            out["sigma"] = [float(v) for v in s[:3]] + [float(np.degrees(v)) for v in s[3:]]
    out.update(extra)
    return out


@dataclass
class _Image:
    jpeg: bytes
    width: int
    height: int
    stamp_ns: int
    seq: int
    received: float


@dataclass
class _Subscriber:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    dropped: int = 0


@dataclass
class _Feed:
    """What has arrived from the robot (guarded by LiveState's lock)."""

    pose: dict | None = None
    path: collections.deque = field(default_factory=collections.deque)
    diagnostics: dict | None = None
    image: _Image | None = None
    counts: collections.Counter = field(default_factory=collections.Counter)
    last_pose_at: float | None = None
    last_diagnostics_at: float | None = None


class LiveState:
    """Thread-safe store of the live robot's outputs and fan-out to the open pages.

    Args:
        source: what feeds it, shown on the page (e.g. ``/relocalization``); None when
            nothing does (``camera-pose dashboard`` without ROS).
        path_length: poses kept in the recent path.
        stale_after: seconds without a pose after which the page says the robot stopped.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, source: str | None = None, *, path_length: int = 500,
                 stale_after: float = 3.0, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.source = source
        self.stale_after = float(stale_after)
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._feed = _Feed(path=collections.deque(maxlen=max(1, int(path_length))))
        self._seq = 0
        self._subs: list[_Subscriber] = []
        self._refined_stamps: collections.deque = collections.deque(maxlen=1000)
        self._regressed_stamps: collections.deque = collections.deque(maxlen=1000)

    # -- feeding (any thread) -------------------------------------------------------------
    def on_pose(self, stamp_ns: int, position: np.ndarray, quat_wxyz: np.ndarray,
                covariance: np.ndarray, *, refined: bool = False, frame: str = "map") -> bool:
        """A pose from the relocalization node; returns False when it repeats one already
        shown.

        The node publishes a refined pose twice: on ``~/pose_refined`` and, with the same
        image stamp, on ``~/pose_with_covariance``; give the first with ``refined=True``.
        A regressed pose whose stamp was already seen is that repeat and is dropped.
        """
        stamp_ns = int(stamp_ns)
        if not (np.all(np.isfinite(position)) and np.all(np.isfinite(quat_wxyz))
                and np.linalg.norm(quat_wxyz) > 0):
            with self._lock:
                self._feed.counts["rejected_non_finite"] += 1
            return False
        with self._lock:
            if not refined and (stamp_ns in self._refined_stamps
                                or stamp_ns in self._regressed_stamps):
                self._feed.counts["repeats"] += 1
                return False
            (self._refined_stamps if refined else self._regressed_stamps).append(stamp_ns)
            now = self._clock()
            self._seq += 1
            kind = "refined" if refined else "regressed"
            view = pose_view(position, quat_wxyz, covariance, stamp=stamp_ns / 1e9,
                             stamp_ns=str(stamp_ns), kind=kind, frame=frame, seq=self._seq,
                             received=time.time())
            self._feed.pose = view
            self._feed.last_pose_at = now
            self._feed.counts[kind] += 1
            self._insert_path({"x": view["x"], "y": view["y"], "stamp": view["stamp"],
                               "kind": kind})
            event = {"type": "pose", "pose": view, "status": self._status_locked(now),
                     "counts": dict(self._feed.counts)}
        self._broadcast(event)
        return True

    def _insert_path(self, point: dict) -> None:
        """Stamp order; a refined pose replaces its image's regressed one."""
        path = self._feed.path
        items = list(path)
        i = len(items)
        while i > 0 and items[i - 1]["stamp"] > point["stamp"]:
            i -= 1
        if i > 0 and items[i - 1]["stamp"] == point["stamp"]:
            items[i - 1] = point
        else:
            items.insert(i, point)
        path.clear()
        path.extend(items[-path.maxlen:] if path.maxlen else items)

    def on_diagnostics(self, name: str, level: int, message: str, values: dict[str, str]
                       ) -> None:
        """The relocalization node's /diagnostics status (key-value strings)."""
        with self._lock:
            now = self._clock()
            self._feed.diagnostics = {"name": name, "level": int(level), "message": message,
                                      "values": dict(values), "received": time.time()}
            self._feed.last_diagnostics_at = now
            event = {"type": "diagnostics", "diagnostics": self._feed.diagnostics,
                     "status": self._status_locked(now)}
        self._broadcast(event)

    def on_image(self, jpeg: bytes, width: int, height: int, stamp_ns: int) -> None:
        """The last camera image, already downscaled and JPEG-encoded."""
        with self._lock:
            seq = (self._feed.image.seq + 1) if self._feed.image else 1
            self._feed.image = _Image(bytes(jpeg), int(width), int(height), int(stamp_ns),
                                      seq, self._clock())
            event = {"type": "image", "image": self._image_meta_locked()}
        self._broadcast(event)

    # -- reading --------------------------------------------------------------------------
    def image(self) -> tuple[bytes, int] | None:
        """The last image's JPEG bytes and sequence number, or None."""
        with self._lock:
            img = self._feed.image
            return None if img is None else (img.jpeg, img.seq)

    def _image_meta_locked(self) -> dict | None:
        img = self._feed.image
        if img is None:
            return None
        return {"seq": img.seq, "width": img.width, "height": img.height,
                "stamp": img.stamp_ns / 1e9, "age_s": self._clock() - img.received}

    def status(self) -> dict:
        """``{"state", "message", "age_s", ...}``: live, waiting, stale or offline."""
        with self._lock:
            return self._status_locked(self._clock())

    def _status_locked(self, now: float) -> dict:
        feed = self._feed
        age = None if feed.last_pose_at is None else now - feed.last_pose_at
        diag_age = (None if feed.last_diagnostics_at is None
                    else now - feed.last_diagnostics_at)
        out = {"source": self.source, "age_s": age, "diagnostics_age_s": diag_age,
               "since_start_s": now - self._started, "stale_after_s": self.stale_after}
        if self.source is None:
            out["state"] = "offline"
            out["message"] = ("no robot connected: this dashboard runs without ROS; start "
                              "dashboard_node (or launch with dashboard:=true) to watch one")
        elif age is None:
            out["state"] = "waiting"
            out["message"] = (f"no pose received from {self.source} in "
                              f"{now - self._started:.0f} s: is relocalization_node running, "
                              "active, and getting images?")
        elif age > self.stale_after:
            out["state"] = "stale"
            out["message"] = (f"no pose for {age:.0f} s: the robot stopped publishing "
                              f"(showing the last pose from {self.source})")
        else:
            out["state"] = "live"
            out["message"] = f"live from {self.source}"
        return out

    def snapshot(self) -> dict:
        """Everything a page needs when it opens: pose, path, diagnostics, image, status."""
        with self._lock:
            now = self._clock()
            return {"type": "snapshot", "pose": self._feed.pose,
                    "path": list(self._feed.path), "diagnostics": self._feed.diagnostics,
                    "image": self._image_meta_locked(), "status": self._status_locked(now),
                    "counts": dict(self._feed.counts)}

    # -- fan-out --------------------------------------------------------------------------
    def subscribe(self, loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Queue:
        """A queue of JSON strings, one per update, filled on ``loop`` (default: running)."""
        loop = loop or asyncio.get_running_loop()
        sub = _Subscriber(loop, asyncio.Queue(maxsize=QUEUE_SIZE))
        with self._lock:
            self._subs.append(sub)
        return sub.queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        """Stop filling ``queue``."""
        with self._lock:
            self._subs = [s for s in self._subs if s.queue is not queue]

    @property
    def subscribers(self) -> int:
        """Open pages."""
        with self._lock:
            return len(self._subs)

    def _broadcast(self, event: dict) -> None:
        text = json.dumps(event, allow_nan=False, default=_json_default)
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            try:
                sub.loop.call_soon_threadsafe(_put_latest, sub, text)
            except RuntimeError:  # that page's loop is closed: it is gone
                self.unsubscribe(sub.queue)


def _put_latest(sub: _Subscriber, text: str) -> None:
    """Queue ``text``; a page that fell :data:`QUEUE_SIZE` events behind loses the oldest."""
    while True:
        try:
            sub.queue.put_nowait(text)
            return
        except asyncio.QueueFull:
            sub.queue.get_nowait()
            sub.dropped += 1


def _json_default(value: object) -> object:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
