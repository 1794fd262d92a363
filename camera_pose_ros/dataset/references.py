"""Stage 1b: the robot's own map pose of the camera at every frame, from the bag.

While the mapping walk is recorded the robot usually already localizes in the building's
map: AMCL or slam_toolbox publish ``map -> odom``, odometry ``odom -> base_link``, and the
URDF ``base_link -> camera_optical_frame`` on ``/tf_static``. Every extracted frame then has
a rough map pose (a *prior*), and hundreds of priors align the SfM model to the map without a
tape measure (:mod:`.align`), and tell the SfM which loop-closure pairs are plausible.

Sources, by :attr:`ReferenceConfig.source` (``auto`` tries them in this order):

- ``tf``: ``map -> camera`` composed from ``/tf`` + ``/tf_static`` at each frame's stamp
  (interpolated between samples at most ``max_gap`` apart, never extrapolated: see
  :mod:`camera_pose_ros.io.tf`); every prior gets the standard deviation ``sigma``;
- ``pose``: a map-frame pose topic (``/amcl_pose`` by default; PoseWithCovarianceStamped,
  PoseStamped or Odometry) of the base, carried forward to each frame's stamp by odometry
  (``odom -> base`` in ``/tf``) when the bag has it, else interpolated; the camera extrinsic
  comes from ``/tf_static`` or ``base_to_camera``; the prior's standard deviation from the
  message's covariance (its larger horizontal term);
- ``none``: no priors (control points only).

Writes ``DATA/priors.csv`` (a pose CSV: frame, stamp, ``map_from_cam``, ``sigma_m``) and
``DATA/priors.json`` (source, frames covered and not, the time ranges without a prior), and,
when ``/tf`` has the odometry chain, ``DATA/odometry.csv`` (``odom_from_cam`` per frame: smooth
and locally accurate, it tells a localization jump from a folded reconstruction in
:mod:`.align`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from camera_pose_ros.dataset.frames import SOURCE_JSON, read_frames_csv
from camera_pose_ros.errors import AlignmentError, ConfigError, InputDataError
from camera_pose_ros.fileio import write_json_atomic
from camera_pose_ros.geometry import quat_wxyz_from_rotmat
from camera_pose_ros.io.bags import image_frame_id, list_topics
from camera_pose_ros.io.posecsv import PoseTable, read_poses, write_poses
from camera_pose_ros.io.tf import TfTree, interpolate_poses, read_pose_topic, read_tf

__all__ = ["ReferenceConfig", "Priors", "check_references", "compute_priors",
           "extract_priors", "read_priors", "time_ranges"]

log = logging.getLogger(__name__)

SOURCES = ("auto", "tf", "pose", "none")


@dataclass(frozen=True)
class ReferenceConfig:
    """Where the frames' map poses come from (the ``references`` section of the config).

    Attributes:
        source: ``auto``, ``tf``, ``pose`` or ``none`` (see the module docstring).
        map_frame, odom_frame, base_frame: REP 105 frame names.
        camera_frame: the images' frame ('' takes the image messages' ``header.frame_id``).
        pose_topic: the map-frame pose topic of the ``pose`` source.
        base_to_camera: ``x y z qx qy qz qw`` of the camera in the base frame, for a bag
            without ``/tf_static`` (empty: from ``/tf_static``).
        max_gap: seconds; TF samples farther apart are not interpolated across.
        pose_max_age: seconds; a pose message older than this is not carried forward.
        sigma: metres; standard deviation of a TF prior (TF carries no covariance).
        min_sigma: metres; a smaller claimed standard deviation is raised to this.
    """

    source: str = "auto"
    map_frame: str = "map"
    odom_frame: str = "odom"
    base_frame: str = "base_link"
    camera_frame: str = ""
    pose_topic: str = "/amcl_pose"
    base_to_camera: tuple[float, ...] = ()
    max_gap: float = 0.5
    pose_max_age: float = 2.0
    sigma: float = 0.05
    min_sigma: float = 0.01

    def __post_init__(self) -> None:
        for name in ("map_frame", "odom_frame", "base_frame", "camera_frame"):
            # tf2 frame names carry no leading slash (a tf1 habit in launch files)
            object.__setattr__(self, name, str(getattr(self, name)).lstrip("/"))
        if self.source not in SOURCES:
            raise ConfigError(f"references.source must be one of {', '.join(SOURCES)}, got "
                              f"{self.source!r}")
        if self.base_to_camera and len(self.base_to_camera) != 7:
            raise ConfigError("base_to_camera is x y z qx qy qz qw (7 numbers), got "
                              f"{len(self.base_to_camera)}")
        if self.base_to_camera and (
                not all(math.isfinite(v) for v in self.base_to_camera)
                or np.linalg.norm(self.base_to_camera[3:]) < 1e-6):
            raise ConfigError("base_to_camera must be finite with a non-zero quaternion")
        if min(self.max_gap, self.pose_max_age, self.sigma, self.min_sigma) <= 0:
            raise ConfigError("references: max_gap, pose_max_age, sigma and min_sigma must be "
                              "positive")

    def extrinsic(self) -> np.ndarray:
        """``base_from_cam`` from :attr:`base_to_camera` (4x4)."""
        x, y, z, *q = self.base_to_camera
        m = np.eye(4)
        m[:3, :3] = Rotation.from_quat(np.asarray(q) / np.linalg.norm(q)).as_matrix()
        m[:3, 3] = [x, y, z]
        return m


@dataclass(frozen=True)
class Priors:
    """Map poses of frames from the robot's own localization.

    Attributes:
        names, stamps_ns: the frames that have a prior.
        map_from_cam_N44: their camera poses in the map frame.
        sigma_N: standard deviation (metres) of each prior's position.
        source: ``tf`` or ``pose``.
        info: what was read (topics, frames), and the frames without a prior.
        odometry: ``(names, stamps_ns, odom_from_cam_N44)`` of the frames that odometry in
            ``/tf`` covers, or None.
    """

    names: list[str]
    stamps_ns: np.ndarray
    map_from_cam_N44: np.ndarray
    sigma_N: np.ndarray
    source: str
    info: dict
    odometry: tuple[list[str], np.ndarray, np.ndarray] | None = None


def time_ranges(stamps_ns: np.ndarray, mask: np.ndarray, *, join_s: float = 1.0
                ) -> list[tuple[float, float]]:
    """Time ranges (seconds) of the stamps where ``mask`` holds, runs closer than ``join_s``
    joined; stamps must be sorted."""
    st = np.asarray(stamps_ns, dtype=np.int64)[np.asarray(mask, bool)]
    ranges: list[list[float]] = []
    for t in st / 1e9:
        if ranges and t - ranges[-1][1] <= join_s:
            ranges[-1][1] = float(t)
        else:
            ranges.append([float(t), float(t)])
    return [(a, b) for a, b in ranges]


def _tf_priors(tree: TfTree, camera: str, stamps: np.ndarray, cfg: ReferenceConfig
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    poses, ok = tree.lookup(cfg.map_frame, camera, stamps, max_gap_s=cfg.max_gap)
    info = {"chain": " <- ".join(tree.chain(cfg.map_frame, camera)[0])}  # type: ignore[index]
    return poses, ok, np.full(len(stamps), cfg.sigma), info


def _pose_priors(bag: Path, tree: TfTree | None, camera: str, stamps: np.ndarray,
                 cfg: ReferenceConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict] | None:
    series = read_pose_topic(bag, cfg.pose_topic)
    if series is None:
        return None
    if series.frame_id != cfg.map_frame:
        raise AlignmentError(f"{cfg.pose_topic} is in frame '{series.frame_id}', not the map "
                             f"frame '{cfg.map_frame}': set --map-frame")
    base = series.child_frame_id or cfg.base_frame
    if cfg.base_to_camera:
        base_from_cam = np.tile(cfg.extrinsic(), (len(stamps), 1, 1))
        cam_ok = np.ones(len(stamps), bool)
    elif tree is not None and tree.chain(base, camera) is not None:
        base_from_cam, cam_ok = tree.lookup(base, camera, stamps, max_gap_s=cfg.max_gap)
    else:
        why = tree.missing_link(base, camera) if tree is not None else "the bag has no /tf"
        raise AlignmentError(f"{cfg.pose_topic} poses the '{base}' frame but the camera's "
                             f"mount is unknown ({why}); give --base-to-camera X Y Z QX QY QZ QW")
    max_age = int(cfg.pose_max_age * 1e9)
    if tree is not None and tree.chain(cfg.odom_frame, base) is not None:
        # carry the latest pose forward by odometry, as the robot itself does between updates
        odom_at_frames, ok_f = tree.lookup(cfg.odom_frame, base, stamps, max_gap_s=cfg.max_gap)
        odom_at_poses, ok_p = tree.lookup(cfg.odom_frame, base, series.stamps_ns,
                                          max_gap_s=cfg.max_gap)
        good = np.flatnonzero(ok_p)
        k = np.searchsorted(series.stamps_ns[good], stamps, side="right") - 1
        has = k >= 0
        j = good[np.clip(k, 0, max(0, len(good) - 1))] if len(good) else np.zeros_like(k)
        age = stamps - series.stamps_ns[j] if len(good) else np.full(len(stamps), max_age + 1)
        ok = has & ok_f & (age <= max_age) & cam_ok
        map_from_base = (series.poses_N44[j] @ np.linalg.inv(odom_at_poses[j])
                         @ odom_at_frames) if len(good) else np.tile(np.eye(4), (len(stamps),
                                                                                 1, 1))
        how = f"{cfg.pose_topic} carried forward by {cfg.odom_frame} -> {base}"
    else:
        j = np.clip(np.searchsorted(series.stamps_ns, stamps), 0, len(series.stamps_ns) - 1)
        rot = Rotation.from_matrix(series.poses_N44[:, :3, :3])
        map_from_base, ok = interpolate_poses(series.stamps_ns, series.poses_N44[:, :3, 3], rot,
                                              stamps, max_age)
        ok &= cam_ok
        how = f"{cfg.pose_topic} interpolated (no {cfg.odom_frame} -> {base} in /tf)"
    sigma = np.full(len(stamps), cfg.sigma)
    if series.covariances_N66 is not None:
        var = np.maximum(series.covariances_N66[j, 0, 0], series.covariances_N66[j, 1, 1])
        sigma = np.where(var > 0, np.sqrt(np.abs(var)), cfg.sigma)
    return map_from_base @ base_from_cam, ok, sigma, {"pose_topic": cfg.pose_topic,
                                                      "method": how}


def compute_priors(bag: str | os.PathLike, image_topic: str, names: list[str],
                   stamps_ns: np.ndarray, cfg: ReferenceConfig = ReferenceConfig()
                   ) -> Priors | None:
    """The frames' map poses from the bag's TF or pose topic; None when the bag has neither
    (and ``cfg.source`` is ``auto``) or ``cfg.source`` is ``none``.

    Raises:
        AlignmentError: the chosen source is missing or broken (the message names the frames
            or topic and the options), or it covers none of the frames.
    """
    if cfg.source == "none":
        return None
    bag = Path(bag)
    stamps = np.asarray(stamps_ns, dtype=np.int64)
    topics = list_topics(bag)
    tree = read_tf(bag) if ("/tf" in topics or "/tf_static" in topics) else None
    camera = cfg.camera_frame or image_frame_id(bag, image_topic)
    if not camera:
        raise AlignmentError(f"the images on {image_topic} name no frame (empty "
                             "header.frame_id): give --camera-frame")
    result = None
    source = ""
    tf_ok = (tree is not None and cfg.map_frame in tree.frames
             and tree.chain(cfg.map_frame, camera) is not None)
    if cfg.source in ("auto", "tf") and tf_ok:
        assert tree is not None
        result, source = _tf_priors(tree, camera, stamps, cfg), "tf"
    elif cfg.source == "tf":
        why = (f"the bag has no /tf or /tf_static (topics: {', '.join(sorted(topics))})"
               if tree is None else tree.missing_link(cfg.map_frame, camera))
        raise AlignmentError(f"cannot align from TF: {why}; set --map-frame/--camera-frame, "
                             f"or use --reference pose (topic {cfg.pose_topic}) or "
                             "--control-points")
    if result is None and cfg.source in ("auto", "pose"):
        result, source = _pose_priors(bag, tree, camera, stamps, cfg), "pose"
        if result is None and cfg.source == "pose":
            raise AlignmentError(f"the bag has no pose topic {cfg.pose_topic} (topics: "
                                 f"{', '.join(sorted(topics))}); set --pose-topic")
    if result is None:
        return None
    poses, ok, sigma, info = result
    if len(stamps) and not ok.any():
        raise AlignmentError(f"the bag's {source} localization covers none of the "
                             f"{len(stamps)} frames (gaps over {cfg.max_gap} s or a missing "
                             "link at their stamps, or another clock); use --control-points "
                             "with --reference none")
    order = np.argsort(stamps)
    missing = time_ranges(stamps[order], ~ok[order])
    info = {**info, "source": source, "camera_frame": camera, "map_frame": cfg.map_frame,
            "frames": len(stamps), "frames_with_prior": int(ok.sum()),
            "time_ranges_without_prior_s": missing}
    if missing:
        log.warning("references: %d of %d frames have no %s prior (%s)", int((~ok).sum()),
                    len(stamps), source, ", ".join(f"{a:.1f}-{b:.1f} s" for a, b in missing[:5]))
    idx = np.flatnonzero(ok)
    odometry = None
    if tree is not None and tree.chain(cfg.odom_frame, camera) is not None and len(stamps):
        odom, odom_ok = tree.lookup(cfg.odom_frame, camera, stamps, max_gap_s=cfg.max_gap)
        k = np.flatnonzero(odom_ok)
        odometry = ([names[i] for i in k], stamps[k], odom[k])
    return Priors([names[i] for i in idx], stamps[idx], poses[idx],
                  np.maximum(sigma[idx], cfg.min_sigma), source, info, odometry)


def check_references(bag: str | os.PathLike, image_topic: str,
                     cfg: ReferenceConfig = ReferenceConfig()) -> str:
    """Which robot reference the bag can give (``tf`` or ``pose``), checked before any work.

    Raises:
        AlignmentError: none (the message names what the bag has and the options), or the
            chosen one is broken (a missing TF link, an unknown camera mount).
    """
    bag = Path(bag)
    priors_or_none = compute_priors(bag, image_topic, [], np.zeros(0, np.int64), cfg)
    if priors_or_none is None:
        topics = ", ".join(sorted(list_topics(bag)))
        raise AlignmentError(
            f"nothing to align the map to: {bag} has no /tf chain {cfg.map_frame} -> camera and "
            f"no pose topic {cfg.pose_topic} (topics: {topics}); give --control-points CSV, or "
            "name the frames and topic (--map-frame, --camera-frame, --pose-topic)")
    return priors_or_none.source


def extract_priors(data: str | os.PathLike, cfg: ReferenceConfig = ReferenceConfig()
                   ) -> Path | None:
    """Write ``DATA/priors.csv`` and ``priors.json`` for the dataset's frames; return the CSV,
    or None (and remove stale ones) when the source gives none (videos, image folders, bags
    without TF or pose topic, ``source: none``).
    """
    data = Path(data)
    if not (data / SOURCE_JSON).exists() and cfg.source in ("auto", "none"):
        log.info("references: %s has no %s; no priors", data, SOURCE_JSON)
        return None
    try:
        source = json.loads((data / SOURCE_JSON).read_text())
    except (OSError, ValueError) as exc:
        raise InputDataError(f"{data / SOURCE_JSON}: unreadable ({exc}); run `camera-pose "
                             "frames` first") from exc
    priors = None
    if "bag" in source and cfg.source != "none":
        names, stamps = read_frames_csv(data / "frames.csv")
        priors = compute_priors(source["bag"], source.get("topic", "/camera/image_raw"),
                                names, np.asarray(stamps, np.int64), cfg)
    elif cfg.source in ("tf", "pose"):
        raise AlignmentError(f"--reference {cfg.source} needs a bag; the frames come from "
                             f"{next(iter(source), 'nowhere')}")
    for name in ("priors.csv", "priors.json", "odometry.csv"):
        (data / name).unlink(missing_ok=True)
    if priors is None:
        return None
    if priors.odometry is not None:
        o_names, o_stamps, o_poses = priors.odometry
        write_poses(data / "odometry.csv", PoseTable(
            o_stamps, o_poses[:, :3, 3],
            np.array([quat_wxyz_from_rotmat(p[:3, :3]) for p in o_poses]).reshape(-1, 4),
            list(o_names)))
    table = PoseTable(priors.stamps_ns, priors.map_from_cam_N44[:, :3, 3],
                      np.array([quat_wxyz_from_rotmat(p[:3, :3])
                                for p in priors.map_from_cam_N44]),
                      list(priors.names), {"sigma_m": [f"{s:.4f}" for s in priors.sigma_N]})
    write_json_atomic(data / "priors.json", priors.info)
    out = write_poses(data / "priors.csv", table)
    log.info("references: %s priors for %d of %d frames", priors.source, len(priors.names),
             priors.info["frames"])
    return out


def read_priors(data: str | os.PathLike) -> tuple[PoseTable, np.ndarray, dict] | None:
    """``DATA/priors.csv`` (frames in ``images``), their sigmas and ``priors.json``; None when
    the dataset has no priors."""
    data = Path(data)
    if not (data / "priors.csv").is_file():
        return None
    table = read_poses(data / "priors.csv")
    try:
        sigma = np.array([float(s) for s in table.extra.get("sigma_m", [])], float)
        info = json.loads((data / "priors.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputDataError(f"{data}: unreadable priors ({exc}); rerun the dataset") from exc
    if table.images is None or len(sigma) != len(table) or not np.all(sigma > 0):
        raise InputDataError(f"{data / 'priors.csv'}: needs image and sigma_m columns")
    return table, sigma, info
