"""``camera-pose dataset``: frames -> SfM -> alignment -> splits, then a report and a plot."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.dataset.align import AlignConfig, align_dataset, read_control_points
from camera_pose_ros.dataset.frames import FrameSource, KeyframeConfig, extract_frames
from camera_pose_ros.dataset.references import (
    ReferenceConfig,
    check_references,
    extract_priors,
)
from camera_pose_ros.dataset.refmap import build_refinement_map
from camera_pose_ros.dataset.scene_labels import build_scene_labels
from camera_pose_ros.dataset.sfm import SfMConfig, run_sfm
from camera_pose_ros.dataset.split import SPLITS, SplitConfig, split_dataset
from camera_pose_ros.errors import AlignmentError, CameraModelError
from camera_pose_ros.fileio import write_json_atomic
from camera_pose_ros.io.coverage import CoverageMap
from camera_pose_ros.io.figures import plot_coverage, plot_trajectories
from camera_pose_ros.io.floorplan import FloorPlan
from camera_pose_ros.io.posecsv import read_poses
from camera_pose_ros.metrics import error_summary, match_by_stamp

__all__ = ["build_dataset", "robot_priors", "write_report"]

log = logging.getLogger(__name__)


def _with_breaks(stamps: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Positions with a NaN row wherever time jumps, so a plot does not join split blocks."""
    if len(stamps) < 3:
        return xyz
    dt = np.diff(stamps)
    gaps = np.flatnonzero(dt > 3 * np.median(dt)) + 1
    return np.insert(xyz.astype(float), gaps, np.nan, axis=0)


def write_report(data: str | os.PathLike, *, floorplan: str | os.PathLike | None = None,
                 timings: dict[str, float] | None = None,
                 ground_truth: str | os.PathLike | None = None) -> Path:
    """Write ``report.json``, ``trajectory.png`` and, with a floor plan, ``coverage.png`` for a
    dataset whose stages have run.

    With ``ground_truth`` (a pose CSV of the same frames, e.g. from ``camera-pose synth``) the
    report adds the error of the recovered camera poses against it.
    """
    data = Path(data)
    sfm = json.loads((data / "sfm" / "summary.json").read_text())
    alignment = json.loads((data / "alignment.json").read_text())
    sizes = {name: len(read_poses(data / f"{name}.csv")) for name in SPLITS
             if (data / f"{name}.csv").exists()}
    report = {
        "frames": sfm["frames"],
        "registered": sfm["registered"],
        "registration_rate": sfm["registered_ratio"],
        "reprojection_error_px": sfm["mean_reprojection_error_px"],
        "points3D": sfm["points3D"],
        "sift_max_features": sfm.get("sift_max_features"),
        # where the intrinsics came from (camera_info, calibration_file, intrinsics_option,
        # exif: a prior the SfM refined, colmap_estimate) and the ones the SfM used
        "intrinsics": {"source": sfm.get("intrinsics_source"), **(sfm.get("camera") or {})},
        "sfm_pairs_dropped_by_priors": (sfm.get("priors") or {}).get("pairs_dropped"),
        "alignment_rms_m": alignment["rms_m"],
        "alignment_scale": alignment["map_from_sfm"]["scale"],
        "alignment_z_vertical": alignment.get("z_vertical", False),
        "robot_references": alignment.get("robot_references"),
        "control_points_used": alignment["inliers"],
        "control_points": len(alignment["control_points"]),
        "control_point_residuals_m": [cp["residual_m"] for cp in alignment["control_points"]],
        "splits": sizes,
        "timings_s": timings or {},
    }
    if ground_truth is not None:
        poses = read_poses(data / "poses.csv")
        gt = read_poses(ground_truth)
        ip, ig = match_by_stamp(poses.stamps, gt.stamps, max_dt=1e-3)
        report["pose_error_vs_ground_truth"] = error_summary(
            poses.positions_N3[ip], poses.quats_wxyz_N4[ip], gt.positions_N3[ig],
            gt.quats_wxyz_N4[ig])
    plan = FloorPlan.load(floorplan) if floorplan else None
    tables = {name: read_poses(data / f"{name}.csv") for name in SPLITS
              if (data / f"{name}.csv").exists()} or {"registered": read_poses(data / "poses.csv")}
    tracks = {name: _with_breaks(t.stamps, t.positions_N3) for name, t in tables.items()}
    cps = np.array([cp["xyz"] for cp in alignment["control_points"]]).reshape(-1, 3)
    refs = alignment.get("robot_references") or {}
    how = (f"{refs.get('inliers')}/{refs.get('samples')} {refs.get('source')} references"
           if refs else f"{alignment['inliers']} control points")
    plot_trajectories(
        data / "trajectory.png", tracks, floorplan=plan, points={"control points": cps},
        title=f"{sfm['registered']}/{sfm['frames']} frames registered, aligned to {how}, "
              f"RMS {alignment['rms_m'] * 100:.1f} cm",
    )
    report["coverage"] = _coverage(data, plan)
    return write_json_atomic(data / "report.json", report)


def _coverage(data: Path, plan: FloorPlan | None) -> dict | None:
    """The report's coverage section and ``coverage.png``: which parts of the plan the
    registered views saw (:class:`~camera_pose_ros.io.coverage.CoverageMap`); None (and no
    figure) without a floor plan."""
    figure = data / "coverage.png"
    if plan is None:
        figure.unlink(missing_ok=True)  # an earlier run's, with another plan
        return None
    poses = read_poses(data / "poses.csv")
    hfov, fov_from = math.radians(60.0), "assumed (no camera.json)"
    try:
        cam = PinholeCamera.from_dict(json.loads((data / "camera.json").read_text()))
        hfov, fov_from = 2 * math.atan(cam.width / (2 * cam.fx)), "camera.json"
    except (OSError, ValueError, KeyError, TypeError, CameraModelError):
        pass
    cov = CoverageMap(plan, hfov_rad=hfov)
    cov.add_views(poses.positions_N3, poses.quats_wxyz_N4)
    summary = {**cov.summary(), "field_of_view_from": fov_from}
    track = _with_breaks(poses.stamps, poses.positions_N3)
    plot_coverage(figure, plan, cov.cell_views(), cov.cell_headings(), gaps=summary["gaps"],
                  one_heading=summary["one_heading_areas"], track=track,
                  heading_bins=cov.heading_bins,
                  title=f"{summary['walkable_seen']:.0%} of the walkable floor seen, "
                        f"{summary['walkable_seen_2_headings']:.0%} from 2+ headings "
                        f"({len(poses)} registered views)")
    log.info("coverage: %.0f%% of the walkable floor seen (%.0f%% from 2+ headings), %d "
             "gap(s) of 1 m2 or more", 100 * summary["walkable_seen"],
             100 * summary["walkable_seen_2_headings"], len(summary["gaps"]))
    return summary


def robot_priors(data: Path, references: ReferenceConfig, *, optional: bool) -> Path | None:
    """The robot's priors; with control points and ``source: auto`` a broken robot
    reference (a pose topic in another frame, an unknown mount) only costs a warning."""
    try:
        return extract_priors(data, references)
    except AlignmentError as exc:
        if not optional or references.source != "auto":
            raise
        log.warning("aligning to the control points alone: the bag's localization is "
                    "unusable (%s)", exc)
        return None


def build_dataset(
    source: FrameSource, out: str | os.PathLike, *,
    control_points: str | os.PathLike | None = None,
    references: ReferenceConfig = ReferenceConfig(),
    floorplan: str | os.PathLike | None = None, keyframes: KeyframeConfig = KeyframeConfig(),
    sfm: SfMConfig = SfMConfig(), align: AlignConfig = AlignConfig(),
    split: SplitConfig = SplitConfig(), test_poses: str | os.PathLike | None = None,
    ground_truth: str | os.PathLike | None = None, overwrite: bool = False,
    progress: bool = True, depth_topic: str | None = "auto",
) -> Path:
    """Run every dataset stage into ``out`` and return ``out/report.json``.

    The alignment uses the robot's own localization in the bag (``references``: TF or a pose
    topic, see :mod:`.references`) and/or ``control_points``; at least one must exist.

    Completed stages are skipped (frames, SfM steps) unless ``overwrite``; alignment,
    splits and the refinement map are cheap and always recomputed, so new control points
    take effect. A ``floorplan`` is saved into the dataset (``out/floorplan.yaml`` and its
    ``.pgm``), where evaluation and the dashboard look for it. ``depth_topic``: depth images
    for dense scene labels (see :func:`~camera_pose_ros.dataset.scene_labels.build_scene_labels`).
    """
    out = Path(out)
    # every input file is read before the first stage: a typo in the control points or a
    # pose file fails in a second, not after the SfM
    source.check()
    cp_stamps = [] if control_points is None else [
        cp.stamp_ns for cp in read_control_points(control_points) if cp.stamp_ns is not None]
    if control_points is None and (source.bag is None or references.source == "none"):
        raise AlignmentError("give --control-points: without a bag's TF or pose topic "
                             "(--reference) there is nothing to align the map to")
    if control_points is None:
        assert source.bag is not None
        log.info("aligning to the map from the robot's %s in the bag",
                 check_references(source.bag, source.topic, references))
    for pose_file in (test_poses, ground_truth):
        if pose_file is not None:
            read_poses(pose_file)
    plan = FloorPlan.load(floorplan) if floorplan is not None else None
    out.mkdir(parents=True, exist_ok=True)
    if plan is not None:  # before the SfM: its pair checks use the walls
        floorplan = plan.save(out / "floorplan.yaml")
    timings: dict[str, float] = {}
    stages = [
        # a control point's frame is kept even where the walk paused (duplicates)
        ("frames", lambda: extract_frames(source, out, keyframes, overwrite=overwrite,
                                          progress=progress, keep_stamps_ns=cp_stamps,
                                          keep_window_s=align.max_time_offset)),
        ("references", lambda: robot_priors(out, references,
                                       optional=control_points is not None)),
        ("sfm", lambda: run_sfm(out, sfm, overwrite=overwrite)),
        ("align", lambda: align_dataset(out, control_points, align)),
        ("split", lambda: split_dataset(out, split, test_poses=test_poses)),
        ("refinement map", lambda: build_refinement_map(out)),
        ("scene labels", lambda: build_scene_labels(out, depth_topic=depth_topic)),
    ]
    bar = tqdm(stages, desc="dataset", unit="stage", disable=not progress)
    for name, run in bar:
        bar.set_postfix(stage=name)
        t0 = time.perf_counter()
        run()
        timings[name] = time.perf_counter() - t0
    return write_report(out, floorplan=floorplan, timings=timings, ground_truth=ground_truth)
