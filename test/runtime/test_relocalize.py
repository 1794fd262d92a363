"""camera_pose_ros.runtime.relocalize without ROS: verification rule, deadline, one result,
and the thread-safe session that reports each request's result exactly once."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from camera_pose_ros.errors import ConfigError
from camera_pose_ros.runtime.estimate import PoseEstimate
from camera_pose_ros.runtime.relocalize import (
    Outcome,
    RelocalizationRequest,
    RelocalizationSession,
    VerifyThresholds,
    pose_sigmas,
    verify,
)


def estimate(pos_sigma: float, rot_sigma_deg: float = 1.0, refined: bool = False,
             note: str = "", inliers: int = 0) -> PoseEstimate:
    cov = np.diag([pos_sigma**2, (pos_sigma / 2) ** 2, (pos_sigma / 3) ** 2,
                   *[np.radians(rot_sigma_deg) ** 2] * 3])
    return PoseEstimate(np.array([1.0, 2.0, 0.5]), np.array([1.0, 0, 0, 0]), cov,
                        refined=refined, refine_note=note, inliers=inliers)


def test_pose_sigmas_are_the_largest_axes():
    cov = np.diag([0.01, 0.04, 0.09, 0.0, 0.0, np.radians(3.0) ** 2])
    cov[0, 1] = cov[1, 0] = 0.0
    pos, rot = pose_sigmas(cov)
    assert pos == pytest.approx(0.3) and rot == pytest.approx(3.0)
    bad = cov.copy()
    bad[2, 2] = np.nan
    assert pose_sigmas(bad) == (float("inf"), float("inf"))


def test_verify_regressed_poses_by_covariance():
    thr = VerifyThresholds(max_position_sigma=0.25, max_rotation_sigma_deg=5.0)
    ok, why = verify(estimate(0.2, 2.0), thr, refining=False)
    assert ok and "regressed" in why
    ok, why = verify(estimate(2.0, 2.0), thr, refining=False)
    assert not ok and "position sigma 2.00 m" in why
    ok, why = verify(estimate(0.1, 9.0), thr, refining=False)
    assert not ok and "rotation sigma 9.0 deg" in why


def test_with_a_refiner_only_refined_poses_verify():
    thr = VerifyThresholds()
    ok, why = verify(estimate(0.01), thr, refining=True)  # small covariance, not refined
    assert not ok and why.startswith("refinement:")
    ok, why = verify(estimate(0.01, note="8 inliers (< 30)"), thr, refining=True)
    assert not ok and why == "refinement: 8 inliers (< 30)"
    ok, why = verify(estimate(3.0, refined=True, inliers=250), thr, refining=True)
    assert ok and "250 inliers" in why


def test_request_ends_with_the_first_verified_frame_once():
    req = RelocalizationRequest(100.0, 5.0, VerifyThresholds(0.25, 5.0))
    assert req.offer(estimate(1.0), 100.5, stamp="a") is None
    assert req.offer(estimate(0.8), 101.0, stamp="b") is None
    assert not req.done and req.frames == 2 and "0.80 m" in req.last_reason
    result = req.offer(estimate(0.1), 101.5, stamp="c")
    assert result is not None and result.success and result.stamp == "c"
    assert "frame 3" in result.message and "1.5 s" in result.message
    assert req.done
    assert req.offer(estimate(0.1), 102.0, stamp="d") is None  # one result only
    assert req.expire(200.0) is None and req.cancel("x") is None
    assert req.result is result


def test_request_fails_at_its_deadline_with_the_last_reason():
    req = RelocalizationRequest(10.0, 5.0, refining=True)
    for t in (10.5, 11.0, 12.0):
        assert req.offer(estimate(0.05, note="8 inliers (< 30)"), t) is None
    assert req.expire(14.9) is None  # not yet
    result = req.expire(15.0)
    assert result is not None and not result.success and result.estimate is None
    assert result.message == ("relocalization failed after 5.0 s: 3 frames, none verified "
                              "(last: refinement: 8 inliers (< 30))")
    assert req.expire(16.0) is None


def test_a_frame_after_the_deadline_fails_the_request():
    req = RelocalizationRequest(0.0, 1.0)
    result = req.offer(estimate(0.01), 1.5)
    assert result is not None and not result.success
    assert "0 frames" in result.message and "no image arrived" in result.message


def test_notes_and_cancel():
    req = RelocalizationRequest(0.0, 2.0)
    req.note("image stamps are 60 s older than this node's clock")
    result = req.expire(2.0)
    assert "(last: image stamps are 60 s older" in result.message
    req = RelocalizationRequest(0.0, 2.0)
    result = req.cancel("node deactivated")
    assert not result.success and "node deactivated" in result.message
    assert result.outcome is Outcome.CANCELLED
    with pytest.raises(ConfigError, match="timeout must be positive"):
        RelocalizationRequest(0.0, 0.0)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def session(clock: Clock) -> tuple[RelocalizationSession, list]:
    results: list = []
    return RelocalizationSession(results.append, clock=clock), results


def test_session_joins_the_open_request_and_reports_once():
    clock = Clock()
    ses, results = session(clock)
    assert not ses.is_open
    ses.offer(estimate(0.1), stamp="ignored")  # no request open: nothing happens
    req, new = ses.start(5.0)
    again, joined = ses.start(5.0)
    assert new and not joined and again is req and ses.is_open
    clock.now += 1.0
    ses.offer(estimate(2.0), stamp="a")  # not verified
    ses.note("bad image")
    ses.offer(estimate(0.1), stamp="b")
    ses.offer(estimate(0.1), stamp="c")  # the request has ended: ignored
    ses.expire()
    ses.cancel("late")
    assert len(results) == 1 and results[0].outcome is Outcome.RELOCALIZED
    assert results[0].stamp == "b" and results[0].success and req.reported
    assert not ses.is_open
    third, new = ses.start(5.0)  # the next request is a new one
    assert new and third is not req


def test_session_expires_and_cancels_with_their_outcomes():
    clock = Clock()
    ses, results = session(clock)
    ses.start(2.0)
    ses.offer(estimate(3.0))
    ses.expire()
    assert results == []  # not yet
    clock.now += 2.5
    ses.expire()
    assert [r.outcome for r in results] == [Outcome.FAILED]
    assert "1 frame, none verified (last: position sigma 3.00 m" in results[0].message
    ses.start(2.0)
    ses.cancel("the node was deactivated")
    assert [r.outcome for r in results] == [Outcome.FAILED, Outcome.CANCELLED]
    with pytest.raises(ConfigError):
        ses.start(0.0)


def test_session_wait_returns_the_result_another_thread_reports():
    ses, results = session(Clock())  # the deadline never passes on this clock
    req, _ = ses.start(5.0)
    answers: list = []
    waiter = threading.Thread(target=lambda: answers.append(ses.wait(req)))
    waiter.start()
    ses.offer(estimate(0.1), stamp="s")
    waiter.join(10)
    assert answers and answers[0] is results[0] and answers[0].stamp == "s"


def test_session_wait_expires_a_request_past_its_deadline():
    clock = Clock()
    ses, results = session(clock)
    req, _ = ses.start(1.0)
    clock.now += 5.0  # no frame came and no timer expired it: wait ends it itself
    result = ses.wait(req, grace=0.0)
    assert result.outcome is Outcome.FAILED and "no image arrived" in result.message
    assert results == [result]


def test_a_failing_result_callback_still_releases_waiters():
    def broken(result):
        raise RuntimeError("publisher gone")

    ses = RelocalizationSession(broken, clock=Clock())
    req, _ = ses.start(5.0)
    with pytest.raises(RuntimeError):
        ses.offer(estimate(0.1))
    assert req.reported and not ses.is_open
    assert ses.wait(req).success  # reported: returns at once
