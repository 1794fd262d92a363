"""Stage 2: structure from motion with pycolmap (SIFT, matching, incremental or global mapping).

Steps, each skipped when already done (the stage is resumable):

1. ``features``: SIFT into ``sfm/database.db``; one shared camera with the known intrinsics
   of ``camera.json`` (from CameraInfo: PINHOLE, or OPENCV / FULL_OPENCV with its plumb_bob
   or rational_polynomial distortion) when present, else SIMPLE_RADIAL: started from the
   photos' EXIF focal length when ``camera.json`` holds it (``source: exif``, a prior the
   mapping refines and writes back into ``camera.json``), else estimated by COLMAP.
2. ``matches``: sequential matching (videos, walks) or exhaustive (small sets), plus loop
   closure pairs found by image retrieval (a bag of visual words over the SIFT descriptors
   already in the database: no vocabulary tree download needed). With rough camera poses
   of the frames in ``DATA/priors.csv`` (the robot's own localization), a pair whose
   cameras were far apart or looked in directions that cannot overlap is dropped: loop
   pairs before they are matched, every other verified pair (long sequential gaps,
   exhaustive matching) after. Look-alike places (repeated posters, doors, symmetric
   wings) then cannot join distant parts of the walk into one folded model.
3. ``mapping``: incremental mapping (COLMAP), or global mapping (GLOMAP) with
   ``mapper: global``; the largest model is kept in ``sfm/model/``. A changed mapper maps
   again from the same matches.

``sfm/summary.json`` reports registered/total frames, the reprojection error, the intrinsics
used and where they came from, and the pairs dropped by the priors. The per-image global
descriptors of step 2 are kept in ``sfm/global_descriptors.npz``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pycolmap
from scipy.spatial.transform import Rotation, Slerp

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.config import check_range
from camera_pose_ros.dataset.frames import EXIF_SOURCE, read_frames_csv
from camera_pose_ros.errors import CameraModelError, ConfigError, FormatError, SfMError
from camera_pose_ros.fileio import atomic_dir, write_json_atomic, write_text_atomic
from camera_pose_ros.geometry import invert_pose, rotmat_from_quat_wxyz
from camera_pose_ros.io.posecsv import read_poses
from camera_pose_ros.io.retrieval import (
    GLOBAL_DESCRIPTORS,
    RetrievalIndex,
    build_retrieval_index,
    save_retrieval_index,
)
from camera_pose_ros.metrics import match_by_stamp

__all__ = ["SfMConfig", "SfMModel", "FramePriors", "PRIORS_CSV", "run_sfm", "load_sfm_model",
           "load_frame_priors", "with_floorplan_views", "check_pairs", "global_descriptors"]

#: rough map-frame camera poses of the frames (a pose CSV), from the robot's localization
PRIORS_CSV = "priors.csv"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SfMConfig:
    """Structure-from-motion settings.

    Attributes:
        matcher: ``sequential``, ``exhaustive`` or ``auto`` (exhaustive up to
            ``exhaustive_max_frames`` frames, sequential above).
        sequential_overlap: each frame is matched with this many following frames.
        loop_pairs: retrieval pairs per frame for loop closure (0 turns retrieval off).
        loop_stride: every this-many-th frame looks for loop pairs.
        loop_min_gap: retrieval ignores frames closer than this in the sequence.
        loop_min_inliers: a loop pair counts only with this many verified matches: repeated
            structure (ceiling grids, floor tiles) passes the usual 15 and bends the model.
        max_num_features: SIFT features per 640x480 image; larger frames get more in
            proportion to their pixel count (a 12-megapixel photo is not a VGA frame), up to
            ``max_num_features_cap``. The budget used is in ``sfm/summary.json`` and the
            dataset report.
        ba_global_ratio: global bundle adjustment runs when the model grew by this factor
            (COLMAP's default 1.1 is slower for long walks at no gain in accuracy here).
        use_priors: check image pairs against ``DATA/priors.csv`` when the dataset has it
            (False: match as if it had none).
        prior_max_distance: with ``DATA/priors.csv`` (see :func:`check_pairs`): frames
            whose prior camera centres lie farther apart (metres) are never matched outside
            the sequential chain. Generous: a corridor's far end is seen from metres away,
            and the relative-pose checks below catch look-alikes that are closer.
        prior_max_angle_deg: ... nor frames whose prior viewing directions differ by more.
        prior_max_rotation_deg: a verified pair whose relative rotation differs from the
            priors' by more than this (degrees) is dropped (a homography's decomposition
            alone can be 15 degrees off).
        prior_max_direction_deg: ... or whose direction from one camera to the other
            differs from the priors' by more than this (degrees), when the priors put them
            at least ``prior_min_baseline`` metres apart (an AMCL correction moves a pose
            by about 1 m: with both frames of a pair moved, 3 m apart turns the direction by
            at most 42 degrees).
        use_floorplan: with priors and ``DATA/floorplan.yaml``, also drop a pair (outside
            the sequential chain) whose two cameras, at their prior poses, see no common
            floor in the plan: walls between them (look-alike rooms side by side).
        floorplan_min_shared: ... that is, whose rays reach fewer than this many common
            floor cells of the plan on a 25 cm lattice.
        min_registered_ratio: fewer registered frames than this share is an error.
        mapper: ``incremental`` (COLMAP's: registers frame by frame from a start pair,
            bundle-adjusting as the model grows) or ``global`` (GLOMAP's, in pycolmap:
            rotation averaging and global positioning of every frame at once, then one
            bundle adjustment; faster on large maps).
        num_threads: -1 uses every core.
        seed: random seed of the mapper.
    """

    matcher: str = "auto"
    exhaustive_max_frames: int = 60
    sequential_overlap: int = 6
    loop_pairs: int = 3
    loop_stride: int = 2
    loop_min_gap: int = 30
    loop_min_inliers: int = 60
    max_num_features: int = 1024
    max_num_features_cap: int = 8192
    ba_global_ratio: float = 1.3
    use_priors: bool = True
    prior_max_distance: float = 6.0
    prior_max_angle_deg: float = 90.0
    prior_max_rotation_deg: float = 30.0
    prior_max_direction_deg: float = 60.0
    prior_min_baseline: float = 3.0
    use_floorplan: bool = True
    floorplan_min_shared: int = 4
    min_registered_ratio: float = 0.8
    mapper: str = "incremental"
    num_threads: int = -1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.matcher not in ("auto", "sequential", "exhaustive"):
            raise ConfigError(f"matcher must be auto, sequential or exhaustive: {self.matcher}")
        if self.mapper not in ("incremental", "global"):
            raise ConfigError(f"mapper must be incremental or global: {self.mapper}")
        if not 0 < self.min_registered_ratio <= 1:
            raise ConfigError("min_registered_ratio must be in (0, 1]")
        if not 0 < self.max_num_features <= self.max_num_features_cap:
            raise ConfigError("max_num_features must be positive and at most "
                              f"max_num_features_cap ({self.max_num_features_cap})")
        check_range("prior_max_distance", self.prior_max_distance, low=0, low_open=True)
        check_range("prior_min_baseline", self.prior_min_baseline, low=0, low_open=True)
        for key in ("prior_max_angle_deg", "prior_max_rotation_deg", "prior_max_direction_deg"):
            check_range(key, getattr(self, key), low=0, high=180, low_open=True)

    def sift_budget(self, width: int, height: int) -> int:
        """SIFT features per image for frames of ``width`` x ``height``."""
        scale = max(1.0, width * height / (640 * 480))
        return min(self.max_num_features_cap, int(round(self.max_num_features * scale)))


@dataclass
class SfMModel:
    """Registered cameras of an SfM model, in the SfM frame (arbitrary scale).

    Attributes:
        names: image names, in frames.csv order.
        sfm_from_cam: (N, 4, 4) camera poses.
        points_N3: 3D points (for plots and refinement).
    """

    names: list[str]
    sfm_from_cam: np.ndarray
    points_N3: np.ndarray


@dataclass
class FramePriors:
    """Rough map-frame camera poses of the frames (``DATA/priors.csv``).

    Attributes:
        names: every frame of ``frames.csv``, in order.
        centres_N3: camera centres in the map frame, metres (NaN: no prior).
        map_from_cam_N33: camera rotations (optical frame) in the map frame (NaN: no prior).
        digest: a hash of the priors file (a changed file redoes the matching), and of the
            floor plan when ``views`` come from one.
        views: per frame, the floor it sees from its prior pose (cells of the plan on a 25 cm
            lattice) (:func:`with_floorplan_views`; None: no plan, or no prior).
    """

    names: list[str]
    centres_N3: np.ndarray
    map_from_cam_N33: np.ndarray
    digest: str = ""
    views: list[np.ndarray | None] | None = None

    @property
    def known(self) -> np.ndarray:
        """Which frames have a prior."""
        return (np.isfinite(self.centres_N3).all(axis=1)
                & np.isfinite(self.map_from_cam_N33).all(axis=(1, 2)))


def load_frame_priors(data: str | os.PathLike, *, max_dt: float = 0.02,
                      max_gap_s: float = 1.0) -> FramePriors | None:
    """The priors of ``DATA/priors.csv`` for the frames of ``DATA/frames.csv``, or None when
    the dataset has no priors file.

    Rows are matched by their ``image`` column when it names frames, else by stamp (within
    ``max_dt`` seconds). A frame without a row gets one interpolated in time between the
    priors around it when they are at most ``max_gap_s`` seconds apart (a dropped pose
    message); else it has none.

    Raises:
        InputDataError: an unreadable priors or frames file.
    """
    data = Path(data)
    path = data / PRIORS_CSV
    if not path.is_file():
        return None
    table = read_poses(path)
    names, stamps_ns = read_frames_csv(data / "frames.csv")
    if table.images is not None and set(table.images) & set(names):
        row_of = {name: i for i, name in enumerate(table.images)}
        frame_idx = np.array([i for i, n in enumerate(names) if n in row_of], dtype=int)
        row_idx = np.array([row_of[names[i]] for i in frame_idx], dtype=int)
    else:
        frame_idx, row_idx = match_by_stamp(stamps_ns / 1e9, table.stamps, max_dt=max_dt)
    centres = np.full((len(names), 3), np.nan)
    rotations = np.full((len(names), 3, 3), np.nan)
    if len(row_idx) == 0:
        log.warning("sfm: %s matches no frame of frames.csv (by image name or stamp): no "
                    "pair is checked against priors", path)
        return FramePriors(list(names), centres, rotations)
    centres[frame_idx] = table.positions_N3[row_idx]
    rotations[frame_idx] = rotmat_from_quat_wxyz(table.quats_wxyz_N4[row_idx])
    # a frame between two priors close in time (a dropped pose message) gets their blend
    t = stamps_ns / 1e9
    after = np.searchsorted(frame_idx, np.arange(len(names)))
    for i in np.flatnonzero(~np.isin(np.arange(len(names)), frame_idx)):
        if after[i] == 0 or after[i] == len(frame_idx):
            continue
        j, k = frame_idx[after[i] - 1], frame_idx[after[i]]
        if t[k] - t[j] > max_gap_s:
            continue
        w = float((t[i] - t[j]) / max(t[k] - t[j], 1e-9))
        centres[i] = (1 - w) * centres[j] + w * centres[k]
        rotations[i] = Slerp([0.0, 1.0], Rotation.from_matrix(rotations[[j, k]]))(w).as_matrix()
    return FramePriors(list(names), centres, rotations,
                       hashlib.sha256(path.read_bytes()).hexdigest()[:16])


#: margin added to the camera's horizontal field of view (prior heading error, pitch, roll)
_VIEW_MARGIN_DEG = 20.0


def with_floorplan_views(data: str | os.PathLike, priors: FramePriors,
                         max_range: float = 15.0) -> FramePriors:
    """``priors`` with the floor-plan cells each camera sees from its prior pose, when
    ``DATA/floorplan.yaml`` exists (else unchanged).

    The field of view is the camera's (``DATA/camera.json``; 90 deg without it) plus 20 deg.
    """
    from camera_pose_ros.geometry import quat_wxyz_from_rotmat
    from camera_pose_ros.io.coverage import CoverageMap
    from camera_pose_ros.io.floorplan import FloorPlan

    data = Path(data)
    plan_path = data / "floorplan.yaml"
    if not plan_path.is_file():
        return priors
    plan = FloorPlan.load(plan_path)
    hfov = np.radians(90.0)
    try:
        cam = json.loads((data / "camera.json").read_text())
        hfov = 2 * np.arctan2(cam["width"] / 2, cam["fx"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    cover = CoverageMap(plan, hfov_rad=float(min(2 * np.pi, hfov + np.radians(
        _VIEW_MARGIN_DEG))), max_range=max_range)
    known = priors.known
    quats = np.full((len(priors.names), 4), np.nan)
    quats[known] = [quat_wxyz_from_rotmat(r) for r in priors.map_from_cam_N33[known]]
    views = cover.view_cells(priors.centres_N3, quats,
                             lattice=max(1, round(0.25 / plan.resolution)))
    digest = hashlib.sha256((priors.digest + str(plan.resolution) + str(plan.origin)).encode()
                            + plan.occupancy.tobytes()).hexdigest()[:16]
    log.info("sfm: image pairs are also checked against the walls of %s", plan_path)
    return FramePriors(priors.names, priors.centres_N3, priors.map_from_cam_N33, digest, views)


def _covisible(a: np.ndarray | None, b: np.ndarray | None, min_shared: int) -> bool:
    """Whether two views' floor-plan cells meet (True when either is unknown)."""
    if a is None or b is None:
        return True
    return len(np.intersect1d(a, b, assume_unique=True)) >= min_shared


def _angle_deg(cos: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def check_pairs(pairs: list[tuple[str, str]], priors: FramePriors, config: SfMConfig, *,
                cam2_from_cam1: list[tuple[np.ndarray, np.ndarray] | None] | None = None
                ) -> list[str]:
    """Why the priors contradict each image pair ('' where they do not).

    Pairs of frames at most ``config.sequential_overlap`` apart in the walk are the
    sequential chain and always kept. Any other pair is dropped as

    - ``unchecked``: a frame has no prior (no loop closure without evidence);
    - ``far``: the prior camera centres lie over ``prior_max_distance`` apart;
    - ``facing``: the prior viewing directions differ by over ``prior_max_angle_deg``;
    - ``walls``: the cameras see no common floor in the plan (``priors.views``: fewer than
      ``floorplan_min_shared`` common lattice cells);
    - ``rotation``: its verified relative pose (``cam2_from_cam1``: rotation 3x3 and
      translation of camera 2 from camera 1, COLMAP's two-view geometry; None where there
      is none) turns by over ``prior_max_rotation_deg`` more or less than the priors do;
    - ``direction``: the direction from one camera to the other differs by over
      ``prior_max_direction_deg`` from the priors', when they are ``prior_min_baseline``
      or more apart.

    A name that is not a frame of ``priors`` is kept.
    """
    row_of = {name: i for i, name in enumerate(priors.names)}
    reasons = [""] * len(pairs)
    known = priors.known
    for k, (a, b) in enumerate(pairs):
        ia, ib = row_of.get(a), row_of.get(b)
        if ia is None or ib is None:
            continue
        chain = abs(ia - ib) <= config.sequential_overlap
        if not (known[ia] and known[ib]):
            reasons[k] = "" if chain else "unchecked"
            continue
        ra, rb = priors.map_from_cam_N33[ia], priors.map_from_cam_N33[ib]
        baseline = priors.centres_N3[ia] - priors.centres_N3[ib]
        if not chain and np.linalg.norm(baseline) > config.prior_max_distance:
            reasons[k] = "far"
        elif not chain and _angle_deg(ra[:, 2] @ rb[:, 2]) > config.prior_max_angle_deg:
            reasons[k] = "facing"
        elif not chain and priors.views is not None and not _covisible(
                priors.views[ia], priors.views[ib], config.floorplan_min_shared):
            reasons[k] = "walls"
        elif (pose := None if cam2_from_cam1 is None else cam2_from_cam1[k]) is not None:
            rot_sfm, t_sfm = pose
            rot_prior = rb.T @ ra
            if _angle_deg((np.trace(rot_sfm @ rot_prior.T) - 1) / 2) > (
                    config.prior_max_rotation_deg):
                reasons[k] = "rotation"
                continue
            t_prior = rb.T @ baseline  # camera 1's centre seen from camera 2
            norm = np.linalg.norm(t_sfm)
            if np.linalg.norm(t_prior) >= config.prior_min_baseline and norm > 0 and (
                _angle_deg(t_sfm @ t_prior / norm / np.linalg.norm(t_prior))
                > config.prior_max_direction_deg
            ):
                reasons[k] = "direction"
    return reasons


def _count(reasons: list[str]) -> dict[str, int]:
    return {r: reasons.count(r) for r in sorted(set(reasons)) if r}


def _drop_contradicted_pairs(db_path: Path, priors: FramePriors, cfg: SfMConfig
                             ) -> dict[str, int]:
    """Delete the verified pairs of the database that the priors contradict; counts by
    reason."""
    db = pycolmap.Database.open(db_path)
    try:
        name_of = {im.image_id: im.name for im in db.read_all_images()}
        pair_ids, geoms = db.read_two_view_geometries()
        ids, poses = [], []
        for pid, geom in zip(pair_ids, geoms, strict=True):
            if len(geom.inlier_matches) == 0:
                continue
            ids.append(pycolmap.pair_id_to_image_pair(pid))
            rel = geom.cam2_from_cam1
            t = np.zeros(3) if rel is None else np.asarray(rel.translation, dtype=float)
            # no relative pose (left unestimated: identity, zero translation) checks nothing
            poses.append((np.asarray(rel.rotation.matrix(), dtype=float), t)
                         if rel is not None and np.linalg.norm(t) > 0 else None)
        reasons = check_pairs([(name_of[a], name_of[b]) for a, b in ids], priors, cfg,
                              cam2_from_cam1=poses)
        for (a, b), reason in zip(ids, reasons, strict=True):
            if reason:
                db.delete_two_view_geometry(a, b)
    finally:
        db.close()
    return _count(reasons)


def _done(marker: Path) -> bool:
    return marker.exists()


def _mark(marker: Path, info: dict | None = None) -> None:
    write_text_atomic(marker, json.dumps(info or {}) + "\n")


def _camera_meta(data: Path) -> dict | None:
    """``DATA/camera.json`` as written (intrinsics, ``source``), or None."""
    path = data / "camera.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
        PinholeCamera.from_dict(meta)
    except (ValueError, KeyError, TypeError, CameraModelError) as exc:
        raise SfMError(f"{path}: unreadable intrinsics ({exc}); redo the frames") from exc
    return dict(meta)


def _is_prior(meta: dict | None) -> bool:
    """Whether camera.json's intrinsics are a prior to refine (EXIF), not known ones."""
    return meta is not None and meta.get("source") == EXIF_SOURCE


def _extract(data: Path, sfm: Path, names: list[str], cfg: SfMConfig) -> dict:
    """SIFT into a new database; returns the budget used, the frames' size and where the
    intrinsics come from."""
    db = sfm / "database.db"
    if db.exists():
        db.unlink()  # an interrupted extraction leaves a partial database: start over
    reader = pycolmap.ImageReaderOptions()
    meta = _camera_meta(data)
    if _is_prior(meta):
        assert meta is not None
        prior = PinholeCamera.from_dict(meta.get("prior", meta))  # not a refined one
        reader.camera_model = "SIMPLE_RADIAL"
        reader.camera_params = (f"{prior.fx:.6f},{prior.cx + 0.5:.6f},{prior.cy + 0.5:.6f},"
                                "0.0")
        log.info("sfm: focal length %.1f px from the photos' EXIF (%s): a prior the mapping "
                 "refines", prior.fx, meta.get("exif", ""))
    elif meta is not None:
        cam = PinholeCamera.from_dict(meta)
        reader.camera_model = cam.colmap_model()
        reader.camera_params = ",".join(f"{v:.6f}" for v in cam.colmap_params())
        log.info("sfm: known intrinsics from camera.json (%s: %s)",
                 meta.get("source", "given"), reader.camera_params)
    else:
        reader.camera_model = "SIMPLE_RADIAL"
        log.info("sfm: no camera.json; COLMAP estimates the intrinsics")
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = cfg.num_threads
    first = cv2.imread(str(data / "images" / names[0]), cv2.IMREAD_UNCHANGED)
    if first is None:
        raise SfMError(f"cannot read the first frame {data / 'images' / names[0]}")
    height, width = first.shape[:2]
    budget = cfg.sift_budget(width, height)
    log.info("sfm: up to %d SIFT features per %dx%d frame", budget, width, height)
    extraction.sift.max_num_features = budget
    pycolmap.extract_features(
        db, data / "images", image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
        reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu,
    )
    source = "colmap_estimate" if meta is None else str(meta.get("source", "camera_json"))
    return {"sift_max_features": budget, "frame_size": [int(width), int(height)],
            "intrinsics_source": source}


def global_descriptors(db_path: Path, *, words: int = 256, seed: int = 0) -> RetrievalIndex:
    """Bag-of-visual-words image descriptors (tf-idf, L2-normalised) from a COLMAP database.

    Raises:
        SfMError: too few SIFT features to learn the vocabulary.
    """
    db = pycolmap.Database.open(db_path)
    try:
        images = sorted(db.read_all_images(), key=lambda im: im.name)
        descs = [np.asarray(db.read_descriptors(im.image_id).data, dtype=np.float32)
                 for im in images]
    finally:
        db.close()
    try:
        return build_retrieval_index([im.name for im in images], descs, words=words, seed=seed)
    except FormatError as exc:
        raise SfMError(str(exc)) from exc


def _loop_pairs(names: list[str], desc: np.ndarray, k: int, min_gap: int,
                stride: int = 1) -> list[tuple[str, str]]:
    sim = desc @ desc.T
    idx = np.arange(len(names))
    sim[np.abs(idx[:, None] - idx[None, :]) < min_gap] = -np.inf
    pairs = set()
    for i in range(0, len(names), max(1, stride)):
        for j in np.argsort(-sim[i])[:k]:
            if np.isfinite(sim[i, j]):
                pairs.add((min(i, j), max(i, j)))
    return [(names[i], names[j]) for i, j in sorted(pairs)]


def _match(sfm: Path, names: list[str], cfg: SfMConfig, priors: FramePriors | None) -> dict:
    db = sfm / "database.db"
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = cfg.num_threads
    exhaustive = cfg.matcher == "exhaustive" or (
        cfg.matcher == "auto" and len(names) <= cfg.exhaustive_max_frames)
    info: dict = {"matcher": "exhaustive" if exhaustive else "sequential", "loop_pairs": 0,
                  "priors": None}
    # an earlier run's index describes an earlier database: never leave it for the refinement
    # map to reuse
    (sfm / GLOBAL_DESCRIPTORS).unlink(missing_ok=True)
    # matching again (other priors, an interrupted run) starts from no pairs: COLMAP skips
    # pairs already in the database, and a pair the priors dropped would stay dropped
    database = pycolmap.Database.open(db)
    try:
        database.clear_two_view_geometries()
        database.clear_matches()
    finally:
        database.close()
    if priors is not None:
        info["priors"] = {"frames_with_prior": int(priors.known.sum()),
                          "loop_pairs_dropped": {}, "pairs_dropped": {},
                          "digest": priors.digest}
    # the relative pose of each verified pair, to check it against the priors
    verification = pycolmap.TwoViewGeometryOptions()
    verification.compute_relative_pose = priors is not None
    if exhaustive:
        pycolmap.match_exhaustive(db, matching_options=matching,
                                  verification_options=verification, device=pycolmap.Device.cpu)
        _check_pairs(db, priors, cfg, info)
        return info
    pairing = pycolmap.SequentialPairingOptions()
    pairing.overlap = cfg.sequential_overlap
    pairing.quadratic_overlap = True
    pairing.loop_detection = False
    pycolmap.match_sequential(db, matching_options=matching, pairing_options=pairing,
                              verification_options=verification, device=pycolmap.Device.cpu)
    if cfg.loop_pairs > 0 and len(names) > cfg.loop_min_gap:
        index = global_descriptors(db, seed=cfg.seed)
        save_retrieval_index(sfm / GLOBAL_DESCRIPTORS, index)
        pairs = _loop_pairs(index.names, index.descriptors, cfg.loop_pairs, cfg.loop_min_gap,
                            cfg.loop_stride)
        if priors is not None and pairs:
            reasons = check_pairs(pairs, priors, cfg)
            info["priors"]["loop_pairs_dropped"] = _count(reasons)
            log.info("sfm: %d of %d loop pairs contradict the priors (%s): not matched",
                     sum(map(bool, reasons)), len(pairs), _count(reasons))
            pairs = [pair for pair, reason in zip(pairs, reasons, strict=True) if not reason]
        if pairs:
            pairs_file = sfm / "loop_pairs.txt"
            write_text_atomic(pairs_file, "".join(f"{a} {b}\n" for a, b in pairs))
            imported = pycolmap.ImportedPairingOptions()
            imported.match_list_path = pairs_file
            verification.min_num_inliers = cfg.loop_min_inliers
            pycolmap.match_image_pairs(db, matching_options=matching, pairing_options=imported,
                                       verification_options=verification,
                                       device=pycolmap.Device.cpu)
        info["loop_pairs"] = len(pairs)
    _check_pairs(db, priors, cfg, info)
    return info


def _check_pairs(db: Path, priors: FramePriors | None, cfg: SfMConfig, info: dict) -> None:
    """Drop the verified pairs (sequential, exhaustive) that the priors contradict."""
    if priors is None:
        return
    dropped = _drop_contradicted_pairs(db, priors, cfg)
    info["priors"]["pairs_dropped"] = dropped
    log.info("sfm: %d verified pair(s) contradict the priors (%s): dropped",
             sum(dropped.values()), dropped)


def _initial_pair(db_path: Path, cfg: SfMConfig) -> tuple[int, int] | None:
    """A sequential image pair to start mapping from, or None for COLMAP's own choice.

    COLMAP starts from the pair with most inliers; along a corridor walk with loop pairs that
    is often a wide-baseline view of one wall (a planar homography, whose decomposition is
    ambiguous), and the model then comes out bent by decimetres. A pair a few frames apart
    along the walk with a calibrated (essential-matrix) geometry starts it well.
    """
    db = pycolmap.Database.open(db_path)
    try:
        order = {im.image_id: i for i, im in
                 enumerate(sorted(db.read_all_images(), key=lambda im: im.name))}
        pair_ids, geoms = db.read_two_view_geometries()
    finally:
        db.close()
    best, best_key = None, (0, 0)
    for pid, geom in zip(pair_ids, geoms, strict=True):
        a, b = pycolmap.pair_id_to_image_pair(pid)
        gap = abs(order.get(a, -10**6) - order.get(b, 10**6))
        if not 3 <= gap <= max(3, cfg.sequential_overlap):
            continue
        if geom.config != pycolmap.TwoViewGeometryConfiguration.CALIBRATED:
            continue
        n = len(geom.inlier_matches)
        if n >= 50 and (gap, n) > best_key:  # the widest gap: the largest angles
            best, best_key = (int(a), int(b)), (gap, n)
    return best


def _incremental(data: Path, sfm: Path, cfg: SfMConfig, known_camera: bool, out: Path
                 ) -> tuple[dict, tuple[int, int] | None]:
    """COLMAP's incremental mapping into ``out``: the models and the start pair chosen."""
    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = cfg.num_threads
    opts.random_seed = cfg.seed
    opts.min_model_size = 5
    opts.ba_global_frames_ratio = cfg.ba_global_ratio
    opts.ba_global_points_ratio = cfg.ba_global_ratio
    opts.extract_colors = False
    if known_camera:
        opts.ba_refine_focal_length = False
        opts.ba_refine_principal_point = False
        opts.ba_refine_extra_params = False
    init = _initial_pair(sfm / "database.db", cfg)
    if init is not None:
        opts.init_image_id1, opts.init_image_id2 = init
        # COLMAP's start checks assume photo collections: a walk moves forward with small
        # triangulation angles, and its defaults (0.95, 16 deg) refuse nearly every such pair
        opts.mapper.init_max_forward_motion = 1.0
        opts.mapper.init_min_tri_angle = 4.0
        # every further model would start from the same pair again (50 copies of the first,
        # each mapped anew, where frames stay unregistered): one model
        opts.multiple_models = False
    recs = pycolmap.incremental_mapping(sfm / "database.db", data / "images", out, opts)
    if init is not None and not recs:  # the chosen start failed: let COLMAP choose
        opts.init_image_id1 = opts.init_image_id2 = -1
        opts.mapper = pycolmap.IncrementalPipelineOptions().mapper
        opts.multiple_models = True
        recs = pycolmap.incremental_mapping(sfm / "database.db", data / "images", out, opts)
    return recs, init


def _global(data: Path, sfm: Path, cfg: SfMConfig, known_camera: bool, out: Path) -> dict:
    """GLOMAP's global mapping into ``out``: the models."""
    opts = pycolmap.GlobalPipelineOptions()
    opts.num_threads = cfg.num_threads
    opts.random_seed = cfg.seed
    opts.min_model_size = 5
    if known_camera:
        ba = opts.mapper.bundle_adjustment
        ba.refine_focal_length = ba.refine_principal_point = ba.refine_extra_params = False
    return pycolmap.global_mapping(sfm / "database.db", data / "images", out, opts)


def _map(data: Path, sfm: Path, n_frames: int, cfg: SfMConfig, known_camera: bool) -> dict:
    init = None
    with atomic_dir(sfm / "models") as tmp:
        try:
            if cfg.mapper == "global":
                recs = _global(data, sfm, cfg, known_camera, tmp)
            else:
                recs, init = _incremental(data, sfm, cfg, known_camera, tmp)
        except Exception as exc:  # pycolmap raises RuntimeError/ValueError from C++
            raise SfMError(f"{cfg.mapper} mapping failed: {exc}") from exc
        if not recs:
            raise SfMError(
                f"SfM registered no frames of {n_frames}: the images share too few features "
                "(textureless walls, motion blur, or frames too far apart); record slower, "
                "keep more frames (lower min_time_step) or add texture"
            )
        best_key = max(recs, key=lambda k: recs[k].num_reg_images())
        best = recs[best_key]
        with atomic_dir(sfm / "model") as model_tmp:
            best.write(model_tmp)
    registered = best.num_reg_images()
    cam = next(iter(best.cameras.values()))
    try:
        camera: dict | None = PinholeCamera.from_colmap(
            cam.model.name, cam.width, cam.height, cam.params).to_dict()
    except CameraModelError:
        camera = None
    summary = {
        "camera": camera,
        "mapper": cfg.mapper,
        "initial_pair": list(init) if init is not None else None,
        "frames": n_frames,
        "registered": registered,
        "registered_ratio": registered / max(n_frames, 1),
        "models": len(recs),
        "points3D": best.num_points3D(),
        "mean_reprojection_error_px": best.compute_mean_reprojection_error(),
        "mean_track_length": best.compute_mean_track_length(),
    }
    return summary


def _write_refined_camera(data: Path, meta: dict, refined: dict) -> None:
    """Replace camera.json's EXIF prior by the intrinsics the mapping refined from it (what
    refinement and training read), keeping the prior for a later run."""
    prior = meta.get("prior") or {k: meta[k] for k in ("width", "height", "fx", "fy", "cx",
                                                        "cy")}
    log.info("sfm: focal length refined from %.1f px (EXIF) to %.1f px", prior["fx"],
             refined["fx"])
    write_json_atomic(data / "camera.json", {**refined, "source": EXIF_SOURCE,
                                             "exif": meta.get("exif", ""), "prior": prior,
                                             "refined_by": "sfm"})


def _mapper_changed(marker: Path, mapper: str) -> bool:
    """Whether the mapping marked done used another mapper (older markers: incremental)."""
    try:
        return (json.loads(marker.read_text()) or {}).get("mapper", "incremental") != mapper
    except (OSError, ValueError, AttributeError):
        return True


def _priors_changed(marker: Path, priors: FramePriors | None) -> bool:
    try:
        done = json.loads(marker.read_text()).get("priors")
    except (OSError, ValueError, AttributeError):
        return True
    if priors is None or done is None:
        return (priors is None) != (done is None)
    return bool(done.get("digest") != priors.digest)


def run_sfm(data: str | os.PathLike, config: SfMConfig = SfMConfig(), *,
            overwrite: bool = False) -> Path:
    """Run structure from motion on ``DATA/images`` listed in ``DATA/frames.csv``.

    Returns ``DATA/sfm/summary.json``. Completed steps are skipped unless ``overwrite``
    (the matching is redone when ``DATA/priors.csv`` changed: its pairs depend on it).

    Raises:
        SfMError: mapping failed or registered fewer frames than ``min_registered_ratio``.
        InputDataError: an unreadable ``DATA/priors.csv``.
    """
    data = Path(data)
    names, _ = read_frames_csv(data / "frames.csv")
    # COLMAP logs every image at INFO through glog; show it only when we log debug
    pycolmap.logging.minloglevel = 0 if log.isEnabledFor(logging.DEBUG) else 1
    sfm = data / "sfm"
    if overwrite and sfm.exists():
        shutil.rmtree(sfm)
    sfm.mkdir(parents=True, exist_ok=True)
    summary_path = sfm / "summary.json"
    steps = {k: sfm / f".{k}.done" for k in ("features", "matches", "mapping")}
    if not _done(steps["features"]):
        for later in ("matches", "mapping"):
            steps[later].unlink(missing_ok=True)
        log.info("sfm: extracting SIFT features from %d frames", len(names))
        _mark(steps["features"], _extract(data, sfm, names, config))
    priors = load_frame_priors(data) if config.use_priors else None
    if priors is not None and config.use_floorplan:
        priors = with_floorplan_views(data, priors)
    if _done(steps["matches"]) and _priors_changed(steps["matches"], priors):
        log.info("sfm: %s changed since the matching: matching again", data / PRIORS_CSV)
        steps["matches"].unlink()
    if not _done(steps["matches"]):
        steps["mapping"].unlink(missing_ok=True)
        log.info("sfm: matching")
        _mark(steps["matches"], _match(sfm, names, config, priors))
    if _done(steps["mapping"]) and _mapper_changed(steps["mapping"], config.mapper):
        log.info("sfm: the mapper changed to %s: mapping again", config.mapper)
        steps["mapping"].unlink()
    if not _done(steps["mapping"]):
        log.info("sfm: %s mapping", config.mapper)
        meta = _camera_meta(data)
        summary = _map(data, sfm, len(names), config, meta is not None and not _is_prior(meta))
        summary.update(json.loads(steps["features"].read_text()))
        summary.update(json.loads(steps["matches"].read_text()))
        if meta is not None and _is_prior(meta) and summary["camera"] is not None:
            _write_refined_camera(data, meta, summary["camera"])
        write_json_atomic(summary_path, summary)
        _mark(steps["mapping"], {"mapper": config.mapper})
    summary = json.loads(summary_path.read_text())
    if summary["registered_ratio"] < config.min_registered_ratio:
        checked = summary.get("priors") or {}
        dropped = sum(checked.get("pairs_dropped", {}).values()) + sum(
            checked.get("loop_pairs_dropped", {}).values())
        raise SfMError(
            f"SfM registered only {summary['registered']} of {summary['frames']} frames "
            f"({summary['registered_ratio']:.0%} < {config.min_registered_ratio:.0%}): likely "
            "too little overlap between frames (walk slower, keep more frames) or blurred / "
            "textureless images" + (
                f"; {dropped} image pairs that contradict the robot's localization "
                f"({PRIORS_CSV}) were left out, so look-alike places could not hold the walk "
                "together" if dropped else "") + (
                "; the incremental mapper stops at the first weak link of a long walk (a "
                "sharp turn through a door): `--mapper global` maps from every pair at once, "
                "from the matches already made" if summary.get("mapper") == "incremental"
                and summary["registered"] < 0.5 * summary["frames"] else "")
        )
    log.info("sfm: registered %d/%d frames, reprojection error %.2f px",
             summary["registered"], summary["frames"], summary["mean_reprojection_error_px"])
    return summary_path


def load_sfm_model(data: str | os.PathLike) -> SfMModel:
    """Camera poses and points of ``DATA/sfm/model`` (registered frames only)."""
    model_dir = Path(data) / "sfm" / "model"
    if not model_dir.is_dir():
        raise SfMError(f"no SfM model in {model_dir}: run `camera-pose sfm` first")
    rec = pycolmap.Reconstruction(model_dir)
    names, poses = [], []
    for image in sorted(rec.images.values(), key=lambda im: im.name):
        if not image.has_pose:
            continue
        cam_from_world = np.eye(4)
        cam_from_world[:3, :] = image.cam_from_world().matrix()
        names.append(image.name)
        poses.append(invert_pose(cam_from_world))
    points = np.array([p.xyz for p in rec.points3D.values()]).reshape(-1, 3)
    return SfMModel(names, np.array(poses).reshape(-1, 4, 4), points)
