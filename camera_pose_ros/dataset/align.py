"""Stage 3: align the SfM model to the building map from a few control points.

A control point is the map position of the camera at a bag time (``stamp,x,y,z``) or at an
image (``image,x,y,z``). Each is matched to its registered frame (or interpolated between
the two around its stamp); a similarity transform
(scale, rotation, translation) from SfM to map is fitted by SVD (Umeyama), robust to a bad
control point, and applied to every registered camera. Writes ``alignment.json`` (the
transform ``map_from_sfm``, per-point residuals, RMS) and ``poses.csv`` (map frame).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from camera_pose_ros.dataset.frames import read_frames_csv
from camera_pose_ros.dataset.sfm import load_sfm_model
from camera_pose_ros.errors import AlignmentError, ConfigError, FormatError, InputDataError
from camera_pose_ros.fileio import write_json_atomic
from camera_pose_ros.geometry import fit_sim3_robust, quat_wxyz_from_rotmat
from camera_pose_ros.io.posecsv import (
    PoseTable,
    format_stamp,
    parse_stamp,
    read_csv_rows,
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
    """

    max_time_offset: float = 0.25
    inlier_threshold: float = 0.25
    max_rms: float = 0.5

    def __post_init__(self) -> None:
        if self.max_time_offset <= 0 or self.inlier_threshold <= 0 or self.max_rms <= 0:
            raise ConfigError("alignment thresholds must be positive")


@dataclass(frozen=True)
class ControlPoint:
    """A map position of the camera at a stamp or at an image."""

    key: str
    stamp_ns: int | None
    image: str | None
    xyz: tuple[float, float, float]


def read_control_points(path: str | os.PathLike) -> list[ControlPoint]:
    """Read ``stamp,x,y,z`` or ``image,x,y,z`` control points.

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
        image = row.get("image") or None
        if image is not None:
            key = image
        elif stamp is not None:
            key = format_stamp(stamp)
        else:
            raise InputDataError(f"{path}:{line}: neither stamp nor image given")
        points.append(ControlPoint(key, stamp, image, xyz))
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


def align_dataset(data: str | os.PathLike, control_points: str | os.PathLike,
                  config: AlignConfig = AlignConfig()) -> Path:
    """Fit ``map_from_sfm`` and write ``alignment.json`` and ``poses.csv``; return the latter.

    Raises:
        AlignmentError: too few, collinear or unmatched control points, or an RMS above
            ``max_rms``.
    """
    data = Path(data)
    points = read_control_points(control_points)
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
    src, used = _control_point_sources(points, model.names, stamps, model.sfm_from_cam[:, :3, 3],
                                       config.max_time_offset)
    dst = np.array([cp.xyz for cp in points])
    try:
        sim, inliers = fit_sim3_robust(src, dst, inlier_threshold=config.inlier_threshold)
    except (np.linalg.LinAlgError, ValueError, FloatingPointError) as exc:
        raise AlignmentError(f"the similarity fit failed ({exc}): check the control "
                             "points' coordinates") from exc
    residuals = np.linalg.norm(sim.apply(src) - dst, axis=1)
    rms = float(np.sqrt(np.mean(residuals[inliers] ** 2)))
    if rms > config.max_rms:
        raise AlignmentError(
            f"alignment RMS {rms:.3f} m exceeds {config.max_rms} m: control points disagree "
            "with the reconstruction (wrong stamps or coordinates?)"
        )
    for cp, r, ok in zip(points, residuals, inliers, strict=True):
        if not ok:
            log.warning("control point %s rejected as an outlier (residual %.2f m)", cp.key, r)
    report = {
        "map_from_sfm": sim.to_dict(),
        "rms_m": rms,
        "inliers": int(inliers.sum()),
        "control_points": [
            {"key": cp.key, "frame": frame, "xyz": list(cp.xyz),
             "residual_m": float(r), "inlier": bool(ok)}
            for cp, frame, r, ok in zip(points, used, residuals, inliers, strict=True)
        ],
    }
    map_from_cam = np.array([sim.transform_pose(p) for p in model.sfm_from_cam])
    order = np.argsort(stamps)
    table = PoseTable(
        stamps[order], map_from_cam[order, :3, 3],
        quat_wxyz_from_rotmat(map_from_cam[order, :3, :3]),
        [model.names[i] for i in order],
    )
    write_json_atomic(data / "alignment.json", report)
    out = write_poses(data / "poses.csv", table)
    log.info("align: scale %.4f, RMS %.3f m over %d/%d control points", sim.scale, rms,
             int(inliers.sum()), len(points))
    return out
