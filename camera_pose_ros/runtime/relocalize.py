"""Relocalization requests: try frames until an estimate is verified, or give up. No ROS here.

An estimate is *verified* when it can reset another localizer (AMCL's ``/initialpose``):

- with a refiner (``mode: refine``), only a refined pose is (the regressed pose is what
  refinement checks; a random or badly trained network can be metres off with a small
  claimed covariance);
- without one, a regressed pose whose calibrated covariance is small enough: its largest
  position standard deviation at most ``max_position_sigma`` metres and its largest rotation
  standard deviation at most ``max_rotation_sigma_deg``.

A :class:`RelocalizationRequest` starts at a time, takes one frame's estimate after another
(:meth:`~RelocalizationRequest.offer`) and ends with a :class:`RelocalizationResult`: the
first verified estimate, or a failure at its deadline saying how many frames it tried and
why the last one was not verified. Times are plain seconds (a monotonic clock).

A :class:`RelocalizationSession` holds the one open request for threads that start it (a
service, a topic), feed it frames, expire it on a timer and wait for its result; each result
is reported exactly once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np

from camera_pose_ros.errors import ConfigError
from camera_pose_ros.runtime.estimate import PoseEstimate

__all__ = ["VerifyThresholds", "pose_sigmas", "verify", "Outcome", "RelocalizationResult",
           "RelocalizationRequest", "RelocalizationSession"]


@dataclass(frozen=True)
class VerifyThresholds:
    """When a regressed pose counts as verified (see the module docstring).

    Attributes:
        max_position_sigma: metres, largest standard deviation of the position.
        max_rotation_sigma_deg: degrees, largest standard deviation of the rotation.
    """

    max_position_sigma: float = 0.25
    max_rotation_sigma_deg: float = 5.0


def pose_sigmas(cov_66: np.ndarray) -> tuple[float, float]:
    """Largest position (metres) and rotation (degrees) standard deviations of a covariance.

    A non-finite covariance gives infinities (never verified).
    """
    cov = np.asarray(cov_66, float)
    if cov.shape != (6, 6) or not np.all(np.isfinite(cov)):
        return float("inf"), float("inf")
    pos = float(np.sqrt(max(np.linalg.eigvalsh(cov[:3, :3]).max(), 0.0)))
    rot = float(np.degrees(np.sqrt(max(np.linalg.eigvalsh(cov[3:, 3:]).max(), 0.0))))
    return pos, rot


def verify(est: PoseEstimate, thresholds: VerifyThresholds, refining: bool) -> tuple[bool, str]:
    """Whether ``est`` is verified, and why (or why not) in a few words.

    Args:
        est: the estimate (``est.refined`` when refinement succeeded, else ``refine_note``
            says why it failed, when it was tried).
        thresholds: the covariance limits for a regressed pose.
        refining: a refiner is in use, so only a refined pose is verified.
    """
    if est.refined:
        return True, f"refined pose ({est.inliers} inliers)"
    if refining:
        return False, f"refinement: {est.refine_note or 'not refined'}"
    pos, rot = pose_sigmas(est.covariance)
    if not pos <= thresholds.max_position_sigma:
        return False, (f"position sigma {pos:.2f} m (> verify_max_position_sigma "
                       f"{thresholds.max_position_sigma:g} m)")
    if not rot <= thresholds.max_rotation_sigma_deg:
        return False, (f"rotation sigma {rot:.1f} deg (> verify_max_rotation_sigma_deg "
                       f"{thresholds.max_rotation_sigma_deg:g} deg)")
    return True, f"regressed pose, position sigma {pos:.2f} m, rotation sigma {rot:.1f} deg"


class Outcome(Enum):
    """How a relocalization request ended."""

    RELOCALIZED = "relocalized"  # a verified estimate before the deadline
    FAILED = "failed"  # the deadline passed with none verified
    CANCELLED = "cancelled"  # ended from outside (the node was deactivated)


@dataclass
class RelocalizationResult:
    """How a request ended.

    Attributes:
        outcome: relocalized, failed or cancelled.
        message: one line for the log, the service response and diagnostics.
        estimate: the verified estimate (None unless relocalized).
        stamp: the verified frame's stamp, as the caller gave it (None unless relocalized).
    """

    outcome: Outcome
    message: str
    estimate: PoseEstimate | None = None
    stamp: object = None

    @property
    def success(self) -> bool:
        """A verified estimate was found before the deadline."""
        return self.outcome is Outcome.RELOCALIZED


class RelocalizationRequest:
    """One relocalization: frames are offered until one is verified or the deadline passes.

    Not thread-safe: the caller holds a lock around every call (see
    :class:`RelocalizationSession`). ``reported`` is the caller's flag: set it once the result
    has been published and logged (others may wait for it).

    Raises:
        ConfigError: a timeout that is not positive.
    """

    def __init__(self, started: float, timeout: float,
                 thresholds: VerifyThresholds = VerifyThresholds(), refining: bool = False
                 ) -> None:
        if not timeout > 0:
            raise ConfigError(f"relocalization timeout must be positive, got {timeout}")
        self.started = float(started)
        self.timeout = float(timeout)
        self.deadline = self.started + self.timeout
        self.thresholds = thresholds
        self.refining = refining
        self.frames = 0
        self.last_reason = ""
        self.result: RelocalizationResult | None = None
        self.reported = False

    @property
    def done(self) -> bool:
        """The request has a result (success, failure or cancellation)."""
        return self.result is not None

    def offer(self, est: PoseEstimate, now: float, stamp: object = None
              ) -> RelocalizationResult | None:
        """Try one frame's estimate; returns the result when this call ends the request.

        A frame offered after the deadline ends the request as failed instead.
        """
        if self.result is not None:
            return None
        if now >= self.deadline:
            return self.expire(now)
        self.frames += 1
        ok, why = verify(est, self.thresholds, self.refining)
        if not ok:
            self.last_reason = why
            return None
        self.result = RelocalizationResult(
            Outcome.RELOCALIZED,
            f"relocalized after {now - self.started:.1f} s, frame {self.frames}: {why}", est,
            stamp)
        return self.result

    def note(self, reason: str) -> None:
        """A frame that gave no estimate (stale, undecodable, rejected): remember why."""
        if self.result is None:
            self.last_reason = reason

    def expire(self, now: float) -> RelocalizationResult | None:
        """End the request as failed when its deadline has passed; returns that result."""
        if self.result is not None or now < self.deadline:
            return None
        frames = f"{self.frames} frame{'' if self.frames == 1 else 's'}"
        last = self.last_reason or "no image arrived"
        self.result = RelocalizationResult(
            Outcome.FAILED, f"relocalization failed after {self.timeout:.1f} s: {frames}, none "
                   f"verified (last: {last})")
        return self.result

    def cancel(self, reason: str) -> RelocalizationResult | None:
        """End the request as failed now (e.g. the node is deactivated)."""
        if self.result is not None:
            return None
        self.result = RelocalizationResult(Outcome.CANCELLED,
                                           f"relocalization cancelled: {reason}")
        return self.result


class RelocalizationSession:
    """The open relocalization request, shared by threads (thread-safe).

    Starting a request while one is open joins it. Each request's result is handed to
    ``on_result`` exactly once, outside the lock (it may publish and log); then the request
    is marked ``reported`` and :meth:`wait` returns.

    Args:
        on_result: called with each request's result (success, failure or cancellation).
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, on_result: Callable[[RelocalizationResult], None], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._on_result = on_result
        self._clock = clock
        self._cond = threading.Condition()
        self._request: RelocalizationRequest | None = None

    @property
    def is_open(self) -> bool:
        """A request is open (started and without a result)."""
        with self._cond:
            return self._request is not None and not self._request.done

    def start(self, timeout: float, thresholds: VerifyThresholds = VerifyThresholds(),
              refining: bool = False) -> tuple[RelocalizationRequest, bool]:
        """The open request, or a new one; and whether it is new.

        Raises:
            ConfigError: a timeout that is not positive.
        """
        with self._cond:
            if self._request is None or self._request.done:
                self._request = RelocalizationRequest(self._clock(), timeout, thresholds,
                                                      refining)
                return self._request, True
            return self._request, False

    def offer(self, est: PoseEstimate, stamp: object = None) -> None:
        """Offer one frame's estimate to the open request (none open: nothing happens)."""
        self._advance(lambda req, now: req.offer(est, now, stamp))

    def note(self, reason: str) -> None:
        """A frame gave no estimate: the open request remembers why."""
        self._advance(lambda req, now: req.note(reason))

    def expire(self) -> None:
        """End the open request as failed when its deadline has passed."""
        self._advance(lambda req, now: req.expire(now))

    def cancel(self, reason: str) -> None:
        """End the open request as cancelled now."""
        self._advance(lambda req, now: req.cancel(reason))

    def wait(self, req: RelocalizationRequest, grace: float = 1.0) -> RelocalizationResult:
        """Block until ``req``'s result is reported (at most ``grace`` s past its deadline).

        A request still open then is expired here, so a result always comes back.
        """
        with self._cond:
            self._cond.wait_for(lambda: req.reported,
                                timeout=max(0.0, req.deadline - self._clock()) + grace)
        self.expire()
        with self._cond:
            result = req.result
        return result or RelocalizationResult(Outcome.FAILED, "relocalization request lost")

    def _advance(self, step: Callable[[RelocalizationRequest, float],
                                      RelocalizationResult | None]) -> None:
        with self._cond:
            req = self._request
            result = step(req, self._clock()) if req is not None else None
        if req is None or result is None:
            return
        try:
            self._on_result(result)
        finally:
            with self._cond:
                req.reported = True
                self._cond.notify_all()
