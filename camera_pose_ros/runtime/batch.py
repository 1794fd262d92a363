"""``camera-pose localize``: every frame of a bag, video or image folder through a Localizer.

The batch job of the one inference path: frames go through
:meth:`Localizer.localize_batch <camera_pose_ros.runtime.localizer.Localizer.localize_batch>`
(validation and floor-plan snapping as in the node) in batches, and through
:meth:`Localizer.refine <camera_pose_ros.runtime.localizer.Localizer.refine>` when the
localizer has a refiner (the ``refine`` mode). The poses go into a pose CSV with covariance
columns; with ground truth, ``OUT.metrics.json`` gets the errors beside it.

A frame whose prediction is rejected (not finite) gets no row: it is skipped, counted
(``frames_rejected`` in the metrics and the :class:`BatchReport`) and a warning says how
many, as the node drops such a frame and counts it. Only when every frame is rejected does
the job fail.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.errors import CheckpointError, ConfigError, InputDataError
from camera_pose_ros.fileio import write_json_atomic
from camera_pose_ros.io.coverage import MappedViews, NearestViews, nearest_view_summary
from camera_pose_ros.io.posecsv import PoseTable, read_poses, write_poses
from camera_pose_ros.learning.evaluate import prediction_table, table_metrics
from camera_pose_ros.metrics import match_by_stamp
from camera_pose_ros.runtime.estimate import PoseEstimate, RegressorCheck
from camera_pose_ros.runtime.localizer import Localizer

__all__ = ["BatchReport", "FrameStream", "localize_source", "localization_metrics_path"]

log = logging.getLogger(__name__)


class FrameStream(Protocol):
    """Where the frames come from (``dataset.frames.FrameSource`` is one)."""

    def frames(self) -> Iterable[tuple[int, np.ndarray]]:
        """``(stamp_ns, rgb)`` pairs in source order."""


@dataclass
class BatchReport:
    """What :func:`localize_source` did.

    Attributes:
        csv: the pose CSV written.
        metrics: ``OUT.metrics.json`` (with ground truth), else None.
        frames: frames read from the source.
        rejected: frames whose prediction was rejected (no row in the CSV).
        snapped: rows moved onto the walkable floor (and not refined afterwards).
        refined: rows refined against the SfM map (refine mode).
        seconds: inference (and refinement) time, without reading the frames.
    """

    csv: Path
    metrics: Path | None
    frames: int
    rejected: int
    snapped: int
    refined: int
    seconds: float

    @property
    def localized(self) -> int:
        """Rows in the CSV."""
        return self.frames - self.rejected


def localization_metrics_path(out_csv: str | os.PathLike) -> Path:
    """Where ``localize`` with ground truth writes its metrics: ``preds.csv`` gives
    ``preds.metrics.json`` beside it."""
    return Path(out_csv).with_suffix(".metrics.json")


def localize_source(localizer: Localizer, source: FrameStream, out: str | os.PathLike, *,
                    batch: int = 16, camera: PinholeCamera | None = None,
                    ground_truth: str | os.PathLike | None = None, max_dt: float = 1e-3,
                    progress: bool = True) -> BatchReport:
    """Localize every frame of ``source`` into the pose CSV ``out`` with covariance columns.

    With a refiner on ``localizer`` (the ``refine`` mode) every pose is refined and the CSV
    gains columns ``refined`` (1: refined, 0: the regressed pose, refinement failed, its
    rotation widened as ``RefineConfig.unrefined_rotation_sigma_deg`` says) and
    ``inliers``; ``camera`` gives the frames' intrinsics (default: the refinement map's).
    With a floor plan on ``localizer`` the CSV gains ``snapped`` (1: moved onto the walkable
    floor). With mapped views on ``localizer`` (:meth:`Localizer.load_views`) it gains each
    estimate's distance to the nearest mapped view (``nearest_view_m``,
    ``nearest_view_angle_deg``, ``nearest_same_way_view_m``).

    With ``ground_truth`` (a pose CSV, read before any work) the rows are matched to it by
    stamp (within ``max_dt`` seconds) and :func:`localization_metrics_path`
    (``OUT.metrics.json``) gets the error summary, the covariance honesty figures, the
    refined share and false acceptance rate (refine mode: also
    ``regressed_as_published``, the errors and honesty of the regressed poses as the node
    publishes them before their refinement, widened by the map's verdict on the frames
    before, :class:`~camera_pose_ros.runtime.estimate.RegressorCheck`; the node refines
    every ``refine_every_n``-th frame, this every frame) and ms per frame; with mapped
    views, ``nearest_view``: the distances from the estimates and from the true poses, with
    the median error of the frames near the map and of those far from it.

    Raises:
        ConfigError: ``batch`` is below 1.
        InputDataError: the source has no frames; no row matches a ground-truth stamp (the
            CSV is written all the same).
        CheckpointError: every prediction was rejected (nothing is written).
    """
    if batch < 1:
        raise ConfigError(f"batch must be at least 1, got {batch}")
    gt_table = read_poses(ground_truth) if ground_truth is not None else None
    refiner = localizer.refiner
    refine = refiner is not None
    # the regressed poses as the node publishes them in refine mode (widened by the map's
    # verdict on the regressor from the frames before: RegressorCheck)
    check = RegressorCheck(refiner.config.unrefined_rotation_sigma_deg) if refiner else None
    as_published: list[PoseEstimate] = []
    stamps: list[int] = []
    estimates: list[PoseEstimate] = []
    frames = rejected = 0
    seconds = 0.0
    buf: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        nonlocal rejected, seconds
        t0 = time.perf_counter()
        results = localizer.localize_batch([rgb for _, rgb in buf])
        for (stamp_ns, rgb), est in zip(buf, results, strict=True):
            if est is None:
                rejected += 1
                continue
            if check is not None:
                regressed = replace(est)
                as_published.append(check.apply(replace(est)))
                localizer.refine(rgb, est, camera)
                if est.refined:
                    check.refined(regressed, est)
                else:
                    check.failed()
            stamps.append(stamp_ns)
            estimates.append(est)
        seconds += time.perf_counter() - t0
        buf.clear()

    for stamp_ns, rgb in tqdm(source.frames(), desc="localize", unit="frame",
                              disable=not progress):
        frames += 1
        buf.append((stamp_ns, rgb))
        if len(buf) == batch:
            flush()
    if buf:
        flush()
    if frames == 0:
        raise InputDataError("the source has no frames to localize")
    if rejected:
        log.warning("%d of %d frames skipped: the network's prediction was not finite",
                    rejected, frames)
    if not estimates:
        raise CheckpointError(f"no frame localized: the network's prediction was not finite "
                              f"for all {frames} frames (a damaged or diverged model?)")
    table = prediction_table(
        np.array(stamps, np.int64),
        np.array([np.concatenate([e.position, e.quat_wxyz]) for e in estimates]),
        np.array([e.covariance for e in estimates]))
    if localizer.snapper is not None:
        table.extra["snapped"] = [str(int(e.snapped)) for e in estimates]
    if refine:
        table.extra["refined"] = [str(int(e.refined)) for e in estimates]
        table.extra["inliers"] = [str(int(e.inliers)) for e in estimates]
    views = localizer.views
    near = views.nearest(table.positions_N3, table.quats_wxyz_N4) if views else None
    if near is not None:
        table.extra.update(near.columns())
        s = nearest_view_summary(near)
        log.info("nearest mapped view: median %.2f m, %.0f%% of the frames farther than "
                 "%g m", s["median_m"], 100 * s["share_beyond"], s["far_m"])
    report = BatchReport(write_poses(out, table), None, frames, rejected,
                         sum(e.snapped for e in estimates), sum(e.refined for e in estimates),
                         seconds)
    if refine:
        log.info("refined %d of %d frames", report.refined, report.localized)
    if localizer.snapper is not None:
        log.info("snapped %d of %d frames onto the floor plan", report.snapped,
                 report.localized)
    log.info("localized %d frames (%.1f ms per frame)", report.localized,
             1000 * seconds / frames)
    if gt_table is not None:
        metrics = table_metrics(table, gt_table, max_dt)
        if metrics["frames"] == 0:
            raise InputDataError(f"no localized frame matches a stamp of {ground_truth} "
                                 f"(within {max_dt * 1e3:g} ms): nothing to compare")
        metrics = {"mode": "refine" if refine else (
                       "scr-pnp" if localizer.predictor.solver == "pnp" else "regress"),
                   "predictions": str(report.csv), "ground_truth": str(ground_truth),
                   "frames_localized": report.localized, "frames_rejected": rejected,
                   **({"frames_snapped": report.snapped} if localizer.snapper is not None
                      else {}),
                   **metrics, "ms_per_frame": 1000.0 * seconds / frames}
        if as_published:
            metrics["regressed_as_published"] = _as_published_metrics(
                stamps, as_published, gt_table, max_dt)
        if views and near is not None:
            metrics["nearest_view"] = _nearest_view_metrics(views, near, table, gt_table,
                                                            max_dt)
        report.metrics = write_json_atomic(localization_metrics_path(report.csv), metrics)
        log.info("%s", _one_line(metrics))
        log.info("wrote %s", report.metrics)
    return report


def _nearest_view_metrics(views: MappedViews, near: NearestViews, pred: PoseTable,
                          gt: PoseTable, max_dt: float) -> dict:
    """The distances to the nearest mapped view from the estimates, and from the true poses
    with the median error near and far from the map (what tells a bad estimate from an
    unmapped place)."""
    ip, ig = match_by_stamp(pred.stamps, gt.stamps, max_dt)
    at_truth = views.nearest(gt.positions_N3[ig], gt.quats_wxyz_N4[ig])
    errors = np.linalg.norm(pred.positions_N3[ip] - gt.positions_N3[ig], axis=1)
    return {"source": views.source, "mapped_views": len(views),
            "from_estimate": nearest_view_summary(near),
            "from_ground_truth": nearest_view_summary(at_truth, position_errors_m=errors)}


def _as_published_metrics(stamps: list[int], estimates: list[PoseEstimate], gt: PoseTable,
                          max_dt: float) -> dict:
    """Error and honesty of the regressed poses as the node publishes them in refine mode
    (before each frame's refinement, widened by the verdicts of the frames before)."""
    table = prediction_table(
        np.array(stamps, np.int64),
        np.array([np.concatenate([e.position, e.quat_wxyz]) for e in estimates]),
        np.array([e.covariance for e in estimates]))
    return table_metrics(table, gt, max_dt)


def _one_line(m: dict) -> str:
    """One-line summary of localization metrics against ground truth."""
    text = (f"localize vs ground truth ({m.get('mode', '')}): {m['frames']} frames, median "
            f"{m['median_position_m']:.3f} m, {m['median_rotation_deg']:.2f} deg, "
            f"{m['within_25cm_2deg']:.0%} within 25cm,2deg")
    if "outside_99_any" in m:
        text += (f"; outside 99% {m['outside_99_any']:.0%} (position "
                 f"{m['outside_99_position']:.0%}), confidently wrong "
                 f"{m['overconfident_1m_0.5m']:.0%}, claimed sigma "
                 f"{m['median_claimed_sigma_m']:.2f} m")
    if "refined_share" in m:
        text += (f"; refined {m['refined_share']:.0%}, false acceptance "
                 f"{m['false_acceptance_25cm']:.0%}")
    return text
