"""Worker threads of the relocalization node and when refinement runs. No ROS here.

A :class:`LatestJobWorker` is one thread that always handles the newest job it was given: a
job that arrives while an older one still waits replaces it (the older one is *superseded*
and counted), so a slow consumer never builds a queue and callers never block. An exception
in a job is reported through a callback and the thread goes on with the next job.

A :class:`RefineScheduler` decides which frames go to the (slow) refinement worker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from camera_pose_ros.runtime.estimate import PoseEstimate

__all__ = ["LatestJobWorker", "RefineJob", "RefineScheduler"]

T = TypeVar("T")


class LatestJobWorker(Generic[T]):
    """A thread that handles the newest submitted job; older waiting jobs are dropped.

    Start it once, stop it once (make a new worker to start again).

    Args:
        handle: called on the worker thread with each job.
        name: the thread's name.
        on_error: called on the worker thread with what ``handle`` raised (the thread goes
            on, also when ``on_error`` raises); when None the exception is dropped.
    """

    def __init__(self, handle: Callable[[T], None], *, name: str,
                 on_error: Callable[[Exception], None] | None = None) -> None:
        self._handle = handle
        self._on_error = on_error
        self._cond = threading.Condition()
        self._job: T | None = None
        self._busy = False  # a job waits or is being handled
        self._running = False
        self.superseded = 0
        self.handled = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    @property
    def running(self) -> bool:
        """Started and not stopped."""
        return self._running

    @property
    def idle(self) -> bool:
        """No job waits or is being handled."""
        with self._cond:
            return not self._busy

    def is_alive(self) -> bool:
        """The thread is running (it is, from start to stop, whatever the jobs raise)."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Start the thread."""
        self._running = True
        self._thread.start()

    def submit(self, job: T) -> bool:
        """Hand over ``job``; returns True when it superseded a job that was still waiting.

        A job submitted to a worker that is not running is dropped.
        """
        with self._cond:
            if not self._running:
                return False
            superseded = self._job is not None
            self.superseded += superseded
            self._job, self._busy = job, True
            self._cond.notify()
        return superseded

    def submit_if_idle(self, job: T) -> bool:
        """Hand over ``job`` only when no job waits or runs; returns whether it was taken."""
        with self._cond:
            if not self._running or self._busy:
                return False
            self._job, self._busy = job, True
            self._cond.notify()
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (a job being handled finishes first) and drop a waiting job.

        Waits up to ``timeout`` seconds, unless called from the worker thread itself.
        """
        with self._cond:
            self._running = False
            self._job = None
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)

    def _report(self, exc: Exception) -> None:
        if self._on_error is None:
            return
        try:
            self._on_error(exc)
        except Exception:  # a failing report must not end the thread either
            pass

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._running and self._job is None:
                    self._cond.wait()
                job, self._job = self._job, None
                if not self._running or job is None:
                    return
            try:
                self._handle(job)
            except Exception as exc:  # one bad job must never end the thread
                self._report(exc)
            finally:
                with self._cond:
                    self.handled += 1
                    self._busy = self._job is not None


@dataclass(frozen=True)
class RefineJob:
    """One frame for the refinement worker.

    Attributes:
        stamp: the image's stamp, as the caller gave it (carried to the outputs).
        rgb: the decoded image, (H, W, 3) uint8.
        estimate: its regressed pose (refined in place); None when the floor is not known
            (the worker recognises it, :class:`~camera_pose_ros.runtime.floors.FloorSet`).
        odom_from_base: odometry at the image's stamp (4x4), or None.
        requested: a relocalization request was open when the frame was taken.
        regressed: the pose as the regressor gave it (before any widening), for the map's
            verdict on the regressor (:class:`~camera_pose_ros.runtime.estimate.RegressorCheck`).
    """

    stamp: object
    rgb: np.ndarray
    estimate: PoseEstimate | None
    odom_from_base: np.ndarray | None
    requested: bool
    regressed: PoseEstimate | None = None


class RefineScheduler:
    """Which frames are refined: every ``every_n``-th frame when the refiner is free, and every
    frame it can take while a relocalization request is open.

    Args:
        submit: hands a job to the refiner when it is free; returns whether it was taken
            (e.g. :meth:`LatestJobWorker.submit_if_idle`).
        every_n: refine one frame in ``every_n`` (counted from the last one taken).
        on_request_only: refine only while a request is open.
    """

    def __init__(self, submit: Callable[[RefineJob], bool], *, every_n: int = 5,
                 on_request_only: bool = False) -> None:
        self._submit = submit
        self.every_n = max(1, int(every_n))
        self.on_request_only = on_request_only
        self._lock = threading.Lock()
        self._since = 0  # frames offered since the last one taken

    def offer(self, job: RefineJob) -> bool:
        """Count one frame; hand it to the refiner when due and free. Returns whether taken."""
        with self._lock:
            self._since += 1
            due = job.requested or (not self.on_request_only and self._since >= self.every_n)
            if not due or not self._submit(job):
                return False
            self._since = 0
            return True
