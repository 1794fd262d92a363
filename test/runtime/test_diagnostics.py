"""camera_pose_ros.runtime.diagnostics: counters and the status a snapshot reports."""

from __future__ import annotations

import numpy as np

from camera_pose_ros.io.coverage import MappedViews
from camera_pose_ros.runtime.diagnostics import (
    COUNTERS,
    Level,
    NodeStats,
    diagnostics_snapshot,
)
from camera_pose_ros.runtime.relocalize import Outcome, RelocalizationResult


def arrivals(stats: NodeStats, times: list[float]) -> None:
    for t in times:
        stats.add("received")
        stats.arrived(t)


def test_levels_error_without_model_warn_without_images_else_ok():
    stats = NodeStats()
    snap = diagnostics_snapshot(stats, now=100.0, model=None)
    assert (snap.level, snap.message) == (Level.ERROR, "no model loaded")
    snap = diagnostics_snapshot(stats, now=100.0, model="posenet/x", device="cpu")
    assert (snap.level, snap.message) == (Level.WARN, "no images")
    arrivals(stats, [98.0, 98.5, 99.0, 99.5, 100.0])
    snap = diagnostics_snapshot(stats, now=100.0, model="posenet/x", device="cpu")
    assert (snap.level, snap.message) == (Level.OK, "localizing")
    assert snap.values["input_rate_hz"] == "2.00"
    assert (snap.values["model"], snap.values["device"]) == ("posenet/x", "cpu")
    # five seconds without an image: no images again
    snap = diagnostics_snapshot(stats, now=106.0, model="posenet/x")
    assert (snap.level, snap.message) == (Level.WARN, "no images")
    assert snap.values["input_rate_hz"] == "0.00" and snap.values["received"] == "5"


def test_a_failed_relocalization_warns_until_the_next_result():
    stats = NodeStats()
    arrivals(stats, [9.0, 10.0])
    failed = RelocalizationResult(Outcome.FAILED, "relocalization failed after 5.0 s: ...")
    stats.relocalization_ended(failed)
    snap = diagnostics_snapshot(stats, now=10.0, model="m")
    assert (snap.level, snap.message) == (Level.WARN, failed.message)
    assert snap.values["last_relocalization"] == failed.message
    cancelled = RelocalizationResult(Outcome.CANCELLED, "relocalization cancelled: deactivated")
    stats.relocalization_ended(cancelled)  # counted as not relocalized, but no warning
    snap = diagnostics_snapshot(stats, now=10.0, model="m")
    assert snap.level is Level.OK and snap.values["last_relocalization"] == cancelled.message
    stats.relocalization_ended(RelocalizationResult(Outcome.RELOCALIZED, "relocalized after"))
    snap = diagnostics_snapshot(stats, now=10.0, model="m")
    assert snap.level is Level.OK
    assert (snap.values["relocalized"], snap.values["relocalization_failed"]) == ("1", "2")


def test_values_hold_every_counter_and_the_latency_percentiles():
    stats = NodeStats()
    snap = diagnostics_snapshot(stats, now=0.0, model="m")
    assert snap.values["inference_ms_p50"] == "" and snap.values["refine_ms_p50"] == ""
    for ms in range(1, 101):
        stats.inference_took(ms / 1000.0)
    stats.refinement_took(0.250)
    stats.add("rejected_nan", 3)
    snap = diagnostics_snapshot(stats, now=0.0, model="m")
    assert snap.values["inference_ms_p50"] == "50.5"
    assert snap.values["inference_ms_p99"] == "99.0"
    assert snap.values["refine_ms_p50"] == "250.0"
    keys = list(snap.values)
    assert keys[:7] == ["input_rate_hz", "inference_ms_p50", "inference_ms_p99",
                        "refine_ms_p50", "device", "model", "last_relocalization"]
    assert keys[7:-2] == list(COUNTERS)
    assert keys[-2:] == ["nearest_view_m", "nearest_same_way_view_m"]
    assert snap.values["rejected_nan"] == "3" and snap.values["published"] == "0"


def test_windows_keep_the_newest_values():
    stats = NodeStats(window=10)
    for ms in range(100):
        stats.inference_took(ms / 1000.0)
    assert list(stats.latency) == [ms / 1000.0 for ms in range(90, 100)]


def test_the_last_pose_distance_to_the_nearest_mapped_view():
    # two mapped views, 4 m apart, looking along +x and -x
    views = MappedViews.from_poses(np.array([[0.0, 0, 0], [4.0, 0, 0]]),
                                   np.array([[0.5, -0.5, 0.5, -0.5], [0.5, 0.5, -0.5, -0.5]]))
    stats = NodeStats()
    snap = diagnostics_snapshot(stats, now=0.0, model="m", views=views)
    assert snap.values["nearest_view_m"] == "" and snap.values["nearest_same_way_view_m"] == ""
    stats.estimated(np.array([1.0, 0.0, 0.0]), np.array([0.5, -0.5, 0.5, -0.5]))  # looks +x
    snap = diagnostics_snapshot(stats, now=0.0, model="m", views=views)
    assert snap.values["nearest_view_m"] == "1.00"
    assert snap.values["nearest_same_way_view_m"] == "1.00"
    stats.estimated(np.array([3.5, 0.0, 0.0]), np.array([0.5, -0.5, 0.5, -0.5]))
    snap = diagnostics_snapshot(stats, now=0.0, model="m", views=views)
    assert snap.values["nearest_view_m"] == "0.50"  # the -x one, beside it
    assert snap.values["nearest_same_way_view_m"] == "3.50"  # the +x one, behind
    snap = diagnostics_snapshot(stats, now=0.0, model="m")  # no mapped views: no distance
    assert snap.values["nearest_view_m"] == ""
