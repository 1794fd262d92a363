"""Stage 3: align the SfM model to the building map.

References, alone or together:

- the robot's own localization (``DATA/priors.csv`` from :mod:`.references`: TF or a pose
  topic), one sample per registered frame with a prior: hundreds of noisy control points,
  some of them metres off where the robot's localization jumped;
- control points: the map position of the camera at a bag time (``stamp,x,y,z``) or at an
  image (``image,x,y,z``), optionally with a ``sigma`` column (metres, the survey's stated
  accuracy; ``control_point_sigma`` otherwise). Each is matched to its registered frame (or
  interpolated between the two around its stamp).

A similarity transform (scale, rotation, translation) from SfM to map is fitted by weighted
SVD (Umeyama; weights 1/sigma^2) inside RANSAC, so jumps and a bad control point are
rejected, and applied to every registered camera. With ``z_vertical`` (the default with robot
references: a ground robot's map is 2D and its z is only the camera mount's height) the
map's +z is fixed first as the vertical that the references' camera rotations agree on, and
only scale, yaw and translation are fitted (:func:`camera_pose_ros.geometry.umeyama_sim3_upright`).

Writes ``alignment.json`` (the transform ``map_from_sfm``, per-control-point residuals, the
residual distribution of the robot references, the rejected ones and the time ranges they
came from), ``alignment.png`` (residuals over time) and ``poses.csv`` (map frame).

A reconstruction that contradicts its references is refused, not handed over (unless
``allow_inconsistent``): a stretch of rejected robot references where the SfM motion departs
from the odometry's (``DATA/odometry.csv``; a localization jump leaves the two in agreement,
a fold of look-alike places does not) or, without odometry, a stretch metres off the
references; more than ``max_rejected_share`` of them rejected; two or more control points
(and a third of them) that disagree by more than the inlier threshold. The error names the
time ranges.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camera_pose_ros.dataset.consistency import find_disagreements
from camera_pose_ros.dataset.frames import read_frames_csv
from camera_pose_ros.dataset.references import read_priors, time_ranges
from camera_pose_ros.dataset.sfm import load_sfm_model
from camera_pose_ros.errors import AlignmentError, ConfigError, FormatError, InputDataError
from camera_pose_ros.fileio import write_json_atomic
from camera_pose_ros.geometry import (
    fit_sim3_robust,
    fit_sim3_samples,
    quat_wxyz_from_rotmat,
    rotmat_from_quat_wxyz,
    up_direction_from_rotations,
)
from camera_pose_ros.io.figures import plot_series
from camera_pose_ros.io.posecsv import (
    PoseTable,
    format_stamp,
    parse_stamp,
    read_csv_rows,
    read_poses,
    write_poses,
)

__all__ = ["AlignConfig", "ControlPoint", "read_control_points", "align_dataset"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlignConfig:
    """Alignment settings.

    Attributes:
        max_time_offset: seconds between a control point's stamp and its frame at most.
        inlier_threshold: metres; a control point farther than this from the fitted
            transform is rejected as an outlier (when at least 4 are given).
        max_rms: metres; an alignment worse than this on its inliers is an error.
        control_point_sigma: metres; the accuracy of a control point without a ``sigma``.
        z_vertical: ``auto`` (yes with robot references), ``yes`` or ``no``: keep the map's
            z axis vertical (see the module docstring).
        max_rejected_share: more robot references rejected than this share is an error
            (the reconstruction and the robot's localization disagree).
        reference_correlation_s: seconds over which the robot's localization error is
            correlated (a particle filter's error drifts, it does not jump per frame): its
            samples weigh together as one independent measurement per this many seconds,
            so hundreds of them do not drown a few surveyed control points.
        fold_tolerance: metres (plus 5% of the distance travelled); a stretch of rejected
            robot references whose reconstructed motion departs from odometry by more than
            this is a folded reconstruction, not a localization jump.
        allow_inconsistent: finish even when the reconstruction contradicts its references
            (folded stretches, or control points that disagree by metres); they are still
            reported.
    """

    max_time_offset: float = 0.25
    inlier_threshold: float = 0.25
    max_rms: float = 0.5
    control_point_sigma: float = 0.02
    z_vertical: str = "auto"
    max_rejected_share: float = 0.4
    reference_correlation_s: float = 1.0
    fold_tolerance: float = 0.3
    allow_inconsistent: bool = False

    def __post_init__(self) -> None:
        if min(self.max_time_offset, self.inlier_threshold, self.max_rms,
               self.control_point_sigma) <= 0:
            raise ConfigError("alignment thresholds must be positive")
        if self.z_vertical not in ("auto", "yes", "no"):
            raise ConfigError(f"z_vertical must be auto, yes or no, got {self.z_vertical!r}")
        if self.reference_correlation_s < 0:
            raise ConfigError("reference_correlation_s must be >= 0")
        if not 0 < self.max_rejected_share < 1:
            raise ConfigError("max_rejected_share must be in (0, 1)")


@dataclass(frozen=True)
class ControlPoint:
    """A map position of the camera at a stamp or at an image."""

    key: str
    stamp_ns: int | None
    image: str | None
    xyz: tuple[float, float, float]
    sigma: float | None = None


def read_control_points(path: str | os.PathLike) -> list[ControlPoint]:
    """Read ``stamp,x,y,z`` or ``image,x,y,z`` control points (optional ``sigma`` column).

    A spreadsheet export (UTF-8 byte-order mark, spaces around names and values) is
    accepted; a row with a missing value, a coordinate that is not a finite number of
    metres, or a stamp that is not a time is an error naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"control points file not found: {path}")
    header, rows = read_csv_rows(path, "control points file")
    cols = set(header)
    if not {"x", "y", "z"} <= cols or not ({"stamp", "image"} & cols):
        raise InputDataError(f"{path}: expected columns stamp,x,y,z or image,x,y,z (found: "
                             f"{','.join(header) or 'nothing'})")
    points = []
    for row in rows:
        line = row["__line__"]
        try:
            xyz = (float(row["x"]), float(row["y"]), float(row["z"]))
            stamp = parse_stamp(row["stamp"]) if row.get("stamp") else None
        except (ValueError, FormatError) as exc:
            raise InputDataError(f"{path}:{line}: unparsable number ({exc})") from exc
        if not all(math.isfinite(v) and abs(v) <= 1e9 for v in xyz):
            raise InputDataError(f"{path}:{line}: coordinates {row['x']},{row['y']},"
                                 f"{row['z']} are not finite metres in a map")
        sigma = None
        if row.get("sigma"):
            try:
                sigma = float(row["sigma"])
            except ValueError:
                sigma = -1.0
            if not (math.isfinite(sigma) and 0 < sigma < 1e3):
                raise InputDataError(f"{path}:{line}: sigma {row['sigma']!r} is not a positive "
                                     "number of metres")
        image = row.get("image") or None
        if image is not None:
            key = image
        elif stamp is not None:
            key = format_stamp(stamp)
        else:
            raise InputDataError(f"{path}:{line}: neither stamp nor image given")
        points.append(ControlPoint(key, stamp, image, xyz, sigma))
    if len(points) < 3:
        raise AlignmentError(
            f"{path} has {len(points)} control point(s); at least 3, not collinear, are needed"
        )
    return points


def _control_point_sources(points: list[ControlPoint], names: list[str],
                           stamps_ns: np.ndarray, centres_N3: np.ndarray,
                           max_dt: float) -> tuple[np.ndarray, list[str]]:
    """SfM-frame camera centre at each control point, and the frame(s) it came from.

    A control point at an image, or at the stamp of a registered frame, takes that frame's
    centre. A stamp between two registered frames (its own frame was dropped as a keyframe
    or not registered) takes the centre linearly interpolated between them: snapping to the
    nearest frame instead would move it by a whole frame step (~20 cm at walking speed).
    """
    order = np.argsort(stamps_ns)
    st, centres = stamps_ns[order], centres_N3[order]
    sorted_names = [names[i] for i in order]
    src, used = [], []
    for cp in points:
        if cp.image is not None:
            if cp.image not in names:
                raise AlignmentError(
                    f"control point image '{cp.image}' is not a registered frame")
            j = names.index(cp.image)
            src.append(centres_N3[j])
            used.append(cp.image)
            continue
        stamp_ns = cp.stamp_ns
        assert stamp_ns is not None  # a control point has an image or a stamp
        k = int(np.searchsorted(st, stamp_ns))
        cands = [j for j in (k - 1, k) if 0 <= j < len(st)]
        dts = [abs(int(st[j]) - stamp_ns) / 1e9 for j in cands]
        nearest = cands[int(np.argmin(dts))]
        if min(dts) <= 1e-3:
            src.append(centres[nearest])
            used.append(sorted_names[nearest])
        elif len(cands) == 2 and max(dts) <= max_dt:
            w = (stamp_ns - int(st[k - 1])) / float(int(st[k]) - int(st[k - 1]))
            src.append((1 - w) * centres[k - 1] + w * centres[k])
            used.append(f"{sorted_names[k - 1]}+{sorted_names[k]}")
        elif min(dts) <= max_dt:
            src.append(centres[nearest])
            used.append(sorted_names[nearest])
        else:
            raise AlignmentError(
                f"no registered frame within {max_dt} s of control point stamp {cp.key} "
                f"(nearest is {min(dts):.3f} s away): check the stamps are bag time, or raise "
                "max_time_offset"
            )
    if len(set(used)) < len(used):
        raise AlignmentError("two control points fall on the same frame; space them apart")
    return np.array(src).reshape(-1, 3), used


@dataclass
class _Samples:
    """Alignment samples: SfM camera centre -> map position, with accuracy and origin."""

    src: list[np.ndarray] = field(default_factory=list)
    dst: list[np.ndarray] = field(default_factory=list)
    sigma: list[float] = field(default_factory=list)
    robot: list[bool] = field(default_factory=list)
    stamps_ns: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)

    def add(self, src: np.ndarray, dst: np.ndarray, sigma: float, robot: bool,
            stamp_ns: int, frame: int = -1) -> None:
        self.frames.append(frame)
        self.src.append(np.asarray(src, float))
        self.dst.append(np.asarray(dst, float))
        self.sigma.append(float(sigma))
        self.robot.append(robot)
        self.stamps_ns.append(int(stamp_ns))


def _vertical(centres_N3: np.ndarray, up_from_rotations: np.ndarray, *,
              flatness: float = 0.05, max_angle_deg: float = 15.0) -> tuple[np.ndarray, str]:
    """The map's +z in the SfM frame: the normal of the camera centres' plane when the walk is
    flat (a camera on a ground robot stays at its mount height: the normal is then exact,
    whatever the extrinsic's tilt error or the camera's unmodelled pitching), else the
    camera rotations' vertical. The plane's normal is used only when the centres are thin
    (third singular value below ``flatness`` of the second) and it lies within
    ``max_angle_deg`` of the rotations' vertical."""
    c = centres_N3 - centres_N3.mean(axis=0)
    _, sv, vt = np.linalg.svd(c, full_matrices=False)
    normal = vt[2] if vt[2] @ up_from_rotations >= 0 else -vt[2]
    angle = math.degrees(math.acos(float(np.clip(normal @ up_from_rotations, -1.0, 1.0))))
    if sv[1] > 0 and sv[2] < flatness * sv[1] and angle <= max_angle_deg:
        return normal, "trajectory plane"
    return up_from_rotations, "camera rotations"


def _folded_stretches(data: Path, names: list[str], stamps_ns: np.ndarray, inlier: np.ndarray,
                      map_from_cam_N44: np.ndarray, tolerance: float
                      ) -> list[tuple[float, float]]:
    """Time ranges (s) of rejected references where the reconstruction, not the robot's
    localization, is wrong: there the aligned SfM motion from the last agreeing frame departs
    from the odometry's (``DATA/odometry.csv``) by more than ``tolerance`` + 5% of the
    distance travelled. A localization jump leaves SfM and odometry in agreement. Each frame
    is judged on its own: one frame registered in a look-alike place during a localization
    jump is a fold too (the jump hides it from the references). Without
    odometry an empty list (the caller then looks for stretches metres off instead:
    :func:`camera_pose_ros.dataset.consistency.find_disagreements`)."""
    if (~inlier).sum() == 0 or not (data / "odometry.csv").is_file():
        return []
    odo = read_poses(data / "odometry.csv")
    row = {n: i for i, n in enumerate(odo.images or [])}
    odo_pos = odo.positions_N3
    odo_rot = np.array([rotmat_from_quat_wxyz(q) for q in odo.quats_wxyz_N4]).reshape(-1, 3, 3)
    folded = np.zeros(len(names), bool)
    k = 0
    while k < len(names):
        if inlier[k]:
            k += 1
            continue
        end = k
        while end + 1 < len(names) and not inlier[end + 1]:
            end += 1
        anchor = k - 1 if k > 0 else (end + 1 if end + 1 < len(names) else None)
        if anchor is not None and names[anchor] in row:
            a = row[names[anchor]]
            for i in range(k, end + 1):
                if names[i] not in row:
                    continue
                b = row[names[i]]
                d_odo = odo_rot[a].T @ (odo_pos[b] - odo_pos[a])
                d_sfm = map_from_cam_N44[anchor, :3, :3].T @ (
                    map_from_cam_N44[i, :3, 3] - map_from_cam_N44[anchor, :3, 3])
                lo, hi = sorted((a, b))
                path = float(np.linalg.norm(np.diff(odo_pos[lo:hi + 1], axis=0), axis=1).sum())
                folded[i] = np.linalg.norm(d_sfm - d_odo) > tolerance + 0.05 * path
        k = end + 1
    return time_ranges(stamps_ns, folded)


def _distribution(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    return {"median": float(np.median(values)), "p90": float(np.percentile(values, 90)),
            "p99": float(np.percentile(values, 99)), "max": float(np.max(values))}


def align_dataset(data: str | os.PathLike, control_points: str | os.PathLike | None = None,
                  config: AlignConfig = AlignConfig(), *, use_priors: bool = True) -> Path:
    """Fit ``map_from_sfm`` and write ``alignment.json``, ``alignment.png`` and ``poses.csv``;
    return the latter.

    References: ``DATA/priors.csv`` when present (and ``use_priors``), and the control points
    when given; at least one of them.

    Raises:
        AlignmentError: no reference, too few, collinear or unmatched control points, an RMS
            above ``max_rms``, or robot references that disagree with the reconstruction on
            more than ``max_rejected_share`` of the frames.
    """
    data = Path(data)
    points = read_control_points(control_points) if control_points is not None else []
    priors = read_priors(data) if use_priors else None
    if not points and priors is None:
        raise AlignmentError(
            "nothing to align to: the dataset has no priors from the robot's localization "
            "(the bag has no /tf chain map -> camera and no /amcl_pose; see --reference, "
            "--map-frame, --camera-frame, --pose-topic) and no --control-points CSV was given")
    frame_names, frame_stamps = read_frames_csv(data / "frames.csv")
    stamp_of = dict(zip(frame_names, frame_stamps, strict=True))
    model = load_sfm_model(data)
    if len(model.names) < 3:
        raise AlignmentError(f"only {len(model.names)} registered frames; cannot align")
    unknown = [n for n in model.names if n not in stamp_of]
    if unknown:
        raise AlignmentError(
            f"the SfM model has {len(unknown)} frame(s) that {data / 'frames.csv'} lacks "
            f"({unknown[0]}, ...): the frames were redone after SfM; run `camera-pose sfm "
            "--overwrite`")
    stamps = np.array([stamp_of[n] for n in model.names], dtype=np.int64)
    centres = model.sfm_from_cam[:, :3, 3]
    samples = _Samples()
    rot_pairs: list[tuple[np.ndarray, np.ndarray]] = []
    prior_info: dict = {}
    if priors is not None:
        table, sigma, prior_info = priors
        row_of = {name: i for i, name in enumerate(table.images or [])}
        for j, name in enumerate(model.names):
            i = row_of.get(name)
            if i is None:
                continue
            samples.add(centres[j], table.positions_N3[i], sigma[i], True, stamps[j], j)
            rot_pairs.append((model.sfm_from_cam[j, :3, :3],
                              rotmat_from_quat_wxyz(table.quats_wxyz_N4[i])))
        if len(rot_pairs) < 3 and not points:
            raise AlignmentError(f"only {len(rot_pairs)} registered frame(s) have a prior from "
                                 "the robot's localization; give --control-points")
    used: list[str] = []
    if points:
        src, used = _control_point_sources(points, model.names, stamps, centres,
                                           config.max_time_offset)
        for cp, c in zip(points, src, strict=True):
            stamp = cp.stamp_ns if cp.stamp_ns is not None else stamp_of.get(cp.image or "", 0)
            samples.add(c, np.array(cp.xyz), cp.sigma or config.control_point_sigma, False,
                        stamp)
    src_a, dst_a = np.array(samples.src), np.array(samples.dst)
    sig_a, robot_a = np.array(samples.sigma), np.array(samples.robot, bool)
    upright = config.z_vertical == "yes" or (config.z_vertical == "auto" and bool(rot_pairs))
    up_src, up_spread, vertical_from = None, None, ""
    if upright:
        if not rot_pairs:
            raise AlignmentError("z_vertical needs the robot's localization (TF or a pose "
                                 "topic) for the camera rotations; control points alone have "
                                 "none: set z_vertical: no")
        up_src, up_spread = up_direction_from_rotations(
            np.array([a for a, _ in rot_pairs]), np.array([b for _, b in rot_pairs]))
        up_src, vertical_from = _vertical(centres, up_src)
    weights = 1.0 / sig_a**2
    if robot_a.sum() > 1 and config.reference_correlation_s > 0:
        step = float(np.median(np.diff(np.sort(np.array(samples.stamps_ns)[robot_a])))) / 1e9
        weights[robot_a] *= min(1.0, step / config.reference_correlation_s)
    try:
        if robot_a.any():
            thr = np.maximum(config.inlier_threshold, 4.0 * sig_a)
            sim, inliers = fit_sim3_samples(src_a, dst_a, weights_N=weights,
                                            inlier_threshold=thr, up_src=up_src)
        else:
            sim, inliers = fit_sim3_robust(src_a, dst_a,
                                           inlier_threshold=config.inlier_threshold)
    except (np.linalg.LinAlgError, ValueError, FloatingPointError) as exc:
        raise AlignmentError(f"the similarity fit failed ({exc}): check the control "
                             "points' coordinates") from exc
    residuals = np.linalg.norm(sim.apply(src_a) - dst_a, axis=1)
    # the RMS that the refinement map takes as its own error: of the surveyed points when
    # there are enough, else of the robot's localization (its noise included: conservative)
    on = inliers & ~robot_a if (inliers & ~robot_a).sum() >= 3 else inliers
    rms = float(np.sqrt(np.mean(residuals[on] ** 2)))
    if rms > config.max_rms:
        raise AlignmentError(
            f"alignment RMS {rms:.3f} m exceeds {config.max_rms} m: the references disagree "
            "with the reconstruction (wrong stamps or coordinates?)"
        )
    cp_res, cp_in = residuals[~robot_a], inliers[~robot_a]
    for cp, r, ok in zip(points, cp_res, cp_in, strict=True):
        if not ok:
            log.warning("control point %s rejected as an outlier (residual %.2f m)", cp.key, r)
    n_bad = int((~cp_in).sum())
    if n_bad >= 2 and n_bad * 3 >= len(cp_in) and not config.allow_inconsistent:
        bad = [f"{cp.key} ({r:.1f} m)" for cp, r, ok in zip(points, cp_res, cp_in, strict=True)
               if not ok]
        raise AlignmentError(
            f"{n_bad} of {len(cp_in)} control points disagree with the reconstruction: "
            f"{', '.join(bad[:4])}; wrong stamps or coordinates, or SfM joined look-alike "
            "places there; check them, or keep the map anyway with --allow-inconsistent")
    report: dict = {
        "map_from_sfm": sim.to_dict(),
        "rms_m": rms,
        "rms_of": "control points" if on is not inliers else (
            "robot references" if robot_a.any() else "control points"),
        "inliers": int(cp_in.sum()),
        "z_vertical": upright,
        "control_points": [
            {"key": cp.key, "frame": frame, "xyz": list(cp.xyz), "sigma_m": s,
             "residual_m": float(r), "inlier": bool(ok)}
            for cp, frame, r, ok, s in zip(points, used, cp_res, cp_in, sig_a[~robot_a],
                                           strict=True)
        ],
    }
    if upright:
        report["vertical"] = {"from": vertical_from, "rotation_spread_deg": up_spread}
    if robot_a.any():
        st_r = np.array(samples.stamps_ns)[robot_a]
        order = np.argsort(st_r)
        res_r, in_r = residuals[robot_a][order], inliers[robot_a][order]
        rejected = time_ranges(st_r[order], ~in_r)
        t0 = float(stamps.min()) / 1e9
        report["robot_references"] = {
            **{k: prior_info.get(k) for k in ("source", "chain", "pose_topic", "method")
               if prior_info.get(k) is not None},
            "samples": int(robot_a.sum()),
            "inliers": int(in_r.sum()),
            "rejected": int((~in_r).sum()),
            "residual_m": _distribution(res_r),
            "inlier_residual_m": _distribution(res_r[in_r]),
            "rejected_time_ranges_s": [[a, b] for a, b in rejected],
            "rejected_time_ranges_from_start_s": [[a - t0, b - t0] for a, b in rejected],
        }
        _plot_residuals(data / "alignment.png", st_r[order] / 1e9 - t0, res_r, in_r,
                        thr[robot_a][order],
                        cp_times=[t / 1e9 - t0 for t in np.array(samples.stamps_ns)[~robot_a]],
                        cp_res=cp_res)
        folds = _folded_stretches(
            data, [model.names[j] for j in np.array(samples.frames)[robot_a][order]],
            st_r[order], in_r, np.array([sim.transform_pose(p) for p in model.sfm_from_cam[
                np.array(samples.frames)[robot_a][order]]]), config.fold_tolerance)
        if not (data / "odometry.csv").is_file():  # no odometry: stretches metres off
            found = find_disagreements(st_r, src_a[robot_a], dst_a[robot_a])
            folds = [(seg.start_ns / 1e9, seg.end_ns / 1e9) for seg in found.segments]
        report["robot_references"]["folded_time_ranges_from_start_s"] = [
            [a - t0, b - t0] for a, b in folds]
        share = float((~in_r).mean())
        if folds and not config.allow_inconsistent:
            write_json_atomic(data / "alignment.json", report)
            raise AlignmentError(
                "the reconstruction contradicts the robot's "
                + ("odometry" if (data / "odometry.csv").is_file() else "localization")
                + " at "
                + ", ".join(f"{a - t0:.1f}-{b - t0:.1f} s" for a, b in folds[:4])
                + " from the start (look-alike places joined by SfM?); record that stretch "
                "again, or keep the map anyway with --allow-inconsistent")
        if share > config.max_rejected_share:
            write_json_atomic(data / "alignment.json", report)
            raise AlignmentError(
                f"the reconstruction disagrees with the robot's localization on {share:.0%} "
                f"of the frames (over {float(thr.min()):.2f} m; at "
                + ", ".join(f"{a - t0:.1f}-{b - t0:.1f} s" for a, b in rejected[:4])
                + " from the start): check the map and camera frames, or align with "
                "--control-points")
        if rejected:
            log.warning("align: %d of %d robot references rejected (localization jumps?) at "
                        "%s s from the start", int((~in_r).sum()), len(in_r),
                        ", ".join(f"{a - t0:.1f}-{b - t0:.1f}" for a, b in rejected[:6]))
    map_from_cam = np.array([sim.transform_pose(p) for p in model.sfm_from_cam])
    order = np.argsort(stamps)
    table = PoseTable(
        stamps[order], map_from_cam[order, :3, 3],
        quat_wxyz_from_rotmat(map_from_cam[order, :3, :3]),
        [model.names[i] for i in order],
    )
    write_json_atomic(data / "alignment.json", report)
    out = write_poses(data / "poses.csv", table)
    log.info("align: scale %.4f, RMS %.3f m over %d/%d samples%s", sim.scale, rms,
             int(inliers.sum()), len(inliers), " (z vertical)" if upright else "")
    return out


def _plot_residuals(out: Path, t_s: np.ndarray, res: np.ndarray, inlier: np.ndarray,
                    thr: np.ndarray, *, cp_times: list[float], cp_res: np.ndarray) -> None:
    """Residual of every robot reference over time, rejected ones marked."""
    plot_series(out, {"accepted": (t_s[inlier], res[inlier]),
                      "rejected": (t_s[~inlier], res[~inlier]),
                      "control points": (np.array(cp_times), np.asarray(cp_res))},
                lines={"threshold": (t_s, thr)}, xlabel="time from the first frame (s)",
                ylabel="residual after alignment (m)", log_y=True,
                title=f"alignment: {int(inlier.sum())}/{len(inlier)} robot references "
                      f"accepted, median {np.median(res[inlier]) * 100:.1f} cm")
