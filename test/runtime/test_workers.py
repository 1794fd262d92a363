"""camera_pose_ros.runtime.workers: the newest job wins, errors are survived, refine scheduling."""

from __future__ import annotations

import threading

import numpy as np

from camera_pose_ros.runtime.estimate import PoseEstimate
from camera_pose_ros.runtime.workers import LatestJobWorker, RefineJob, RefineScheduler
from test.conftest import wait_for


class Gate:
    """A handler that records jobs and blocks on each until the test releases it."""

    def __init__(self) -> None:
        self.started: list = []
        self.done: list = []
        self.release = threading.Semaphore(0)

    def __call__(self, job) -> None:
        self.started.append(job)
        self.release.acquire()
        if job == "bad":
            raise RuntimeError("frame 'bad' is corrupt")
        self.done.append(job)


def test_the_newest_job_supersedes_the_waiting_ones():
    gate = Gate()
    worker = LatestJobWorker(gate, name="test-latest")
    worker.start()
    try:
        assert worker.submit(1) is False
        assert wait_for(lambda: gate.started == [1], 5)  # 1 is being handled
        assert [worker.submit(j) for j in (2, 3, 4)] == [False, True, True]
        assert worker.superseded == 2
        gate.release.release()
        gate.release.release()
        assert wait_for(lambda: gate.done == [1, 4], 5), gate.done
        assert wait_for(lambda: worker.handled == 2, 5)
    finally:
        gate.release.release()
        worker.stop()
    assert not worker.is_alive()


def test_an_exception_is_reported_and_the_worker_goes_on():
    gate = Gate()
    errors: list[Exception] = []
    worker = LatestJobWorker(gate, name="test-errors", on_error=errors.append)
    worker.start()
    try:
        worker.submit("bad")
        gate.release.release()
        assert wait_for(lambda: len(errors) == 1, 5)
        assert isinstance(errors[0], RuntimeError) and "corrupt" in str(errors[0])
        worker.submit("good")
        gate.release.release()
        assert wait_for(lambda: gate.done == ["good"], 5)
        assert worker.is_alive()
    finally:
        worker.stop()


def test_a_failing_error_callback_does_not_end_the_worker():
    def broken(exc: Exception) -> None:
        raise ValueError("logger gone")

    gate = Gate()
    worker = LatestJobWorker(gate, name="test-broken-report", on_error=broken)
    worker.start()
    try:
        worker.submit("bad")
        gate.release.release()
        assert wait_for(lambda: worker.handled == 1, 5)
        worker.submit("good")
        gate.release.release()
        assert wait_for(lambda: gate.done == ["good"], 5)
    finally:
        worker.stop()


def test_submit_if_idle_only_takes_a_job_when_nothing_waits_or_runs():
    gate = Gate()
    worker = LatestJobWorker(gate, name="test-idle")
    assert worker.submit_if_idle("early") is False  # not started
    worker.start()
    try:
        assert worker.submit_if_idle(1) is True
        assert wait_for(lambda: gate.started == [1], 5)
        assert worker.submit_if_idle(2) is False  # 1 runs
        gate.release.release()
        assert wait_for(lambda: worker.handled == 1, 5)
        assert worker.submit_if_idle(3) is True
        gate.release.release()
        assert wait_for(lambda: gate.done == [1, 3], 5)
    finally:
        worker.stop()


def test_stop_drops_the_waiting_job_and_refuses_new_ones():
    gate = Gate()
    worker = LatestJobWorker(gate, name="test-stop")
    worker.start()
    worker.submit(1)
    assert wait_for(lambda: gate.started == [1], 5)
    worker.submit(2)  # waits behind 1
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    assert wait_for(lambda: not worker.running, 5)
    gate.release.release()  # 1 finishes; 2 is never handled
    stopper.join(10)
    assert not worker.is_alive() and gate.done == [1]
    assert worker.submit(3) is False and gate.started == [1]


def job(requested: bool = False) -> RefineJob:
    est = PoseEstimate(np.zeros(3), np.array([1.0, 0, 0, 0]), np.eye(6))
    return RefineJob(stamp=None, rgb=np.zeros((2, 2, 3), np.uint8), estimate=est,
                     odom_from_base=None, requested=requested)


class Refiner:
    """A stand-in for LatestJobWorker.submit_if_idle: takes a job when ``free``."""

    def __init__(self) -> None:
        self.free = True
        self.taken: list[int] = []
        self.frame = 0

    def submit(self, job: RefineJob) -> bool:
        if self.free:
            self.taken.append(self.frame)
        return self.free


def offer_frames(scheduler: RefineScheduler, refiner: Refiner, n: int,
                 requested: bool = False) -> None:
    for _ in range(n):
        refiner.frame += 1
        scheduler.offer(job(requested))


def test_every_nth_frame_when_the_refiner_is_free():
    refiner = Refiner()
    scheduler = RefineScheduler(refiner.submit, every_n=3)
    offer_frames(scheduler, refiner, 7)
    assert refiner.taken == [3, 6]
    refiner.free = False  # busy: frame 9 is due but not taken ...
    offer_frames(scheduler, refiner, 3)
    refiner.free = True  # ... so the next frame is, and counting starts again from it
    offer_frames(scheduler, refiner, 4)
    assert refiner.taken == [3, 6, 11, 14]


def test_every_frame_while_a_request_is_open():
    refiner = Refiner()
    scheduler = RefineScheduler(refiner.submit, every_n=5)
    offer_frames(scheduler, refiner, 3, requested=True)
    assert refiner.taken == [1, 2, 3]
    refiner.free = False
    offer_frames(scheduler, refiner, 2, requested=True)
    assert refiner.taken == [1, 2, 3]


def test_on_request_only_never_refines_without_a_request():
    refiner = Refiner()
    scheduler = RefineScheduler(refiner.submit, every_n=1, on_request_only=True)
    offer_frames(scheduler, refiner, 10)
    assert refiner.taken == []
    offer_frames(scheduler, refiner, 2, requested=True)
    assert refiner.taken == [11, 12]
