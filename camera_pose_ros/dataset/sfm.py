"""Stage 2: structure from motion with pycolmap (SIFT, matching, incremental mapping).

Steps, each skipped when already done (the stage is resumable):

1. ``features``: SIFT into ``sfm/database.db``; one shared camera with the known intrinsics
   of ``camera.json`` (from CameraInfo: PINHOLE, or OPENCV / FULL_OPENCV with its plumb_bob
   or rational_polynomial distortion) when present, else SIMPLE_RADIAL.
2. ``matches``: sequential matching (videos, walks) or exhaustive (small sets), plus loop
   closure pairs found by image retrieval (a bag of visual words over the SIFT descriptors
   already in the database: no vocabulary tree download needed).
3. ``mapping``: incremental mapping; the largest model is kept in ``sfm/model/``.

``sfm/summary.json`` reports registered/total frames and the reprojection error. The
per-image global descriptors of step 2 are kept in ``sfm/global_descriptors.npz``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pycolmap

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.dataset.frames import read_frames_csv
from camera_pose_ros.errors import ConfigError, FormatError, SfMError
from camera_pose_ros.fileio import atomic_dir, write_json_atomic, write_text_atomic
from camera_pose_ros.geometry import invert_pose
from camera_pose_ros.io.retrieval import (
    GLOBAL_DESCRIPTORS,
    RetrievalIndex,
    build_retrieval_index,
    save_retrieval_index,
)

__all__ = ["SfMConfig", "SfMModel", "run_sfm", "load_sfm_model", "global_descriptors"]

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
        min_registered_ratio: fewer registered frames than this share is an error.
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
    min_registered_ratio: float = 0.8
    num_threads: int = -1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.matcher not in ("auto", "sequential", "exhaustive"):
            raise ConfigError(f"matcher must be auto, sequential or exhaustive: {self.matcher}")
        if not 0 < self.min_registered_ratio <= 1:
            raise ConfigError("min_registered_ratio must be in (0, 1]")
        if not 0 < self.max_num_features <= self.max_num_features_cap:
            raise ConfigError("max_num_features must be positive and at most "
                              f"max_num_features_cap ({self.max_num_features_cap})")

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


def _done(marker: Path) -> bool:
    return marker.exists()


def _mark(marker: Path, info: dict | None = None) -> None:
    write_text_atomic(marker, json.dumps(info or {}) + "\n")


def _extract(data: Path, sfm: Path, names: list[str], cfg: SfMConfig) -> dict:
    """SIFT into a new database; returns the budget used and the frames' size."""
    db = sfm / "database.db"
    if db.exists():
        db.unlink()  # an interrupted extraction leaves a partial database: start over
    reader = pycolmap.ImageReaderOptions()
    cam_file = data / "camera.json"
    if cam_file.exists():
        cam = PinholeCamera.from_dict(json.loads(cam_file.read_text()))
        reader.camera_model = cam.colmap_model()
        reader.camera_params = ",".join(f"{v:.6f}" for v in cam.colmap_params())
        log.info("sfm: known intrinsics from camera.json (%s)", reader.camera_params)
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
    return {"sift_max_features": budget, "frame_size": [int(width), int(height)]}


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


def _match(sfm: Path, names: list[str], cfg: SfMConfig) -> dict:
    db = sfm / "database.db"
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = cfg.num_threads
    exhaustive = cfg.matcher == "exhaustive" or (
        cfg.matcher == "auto" and len(names) <= cfg.exhaustive_max_frames)
    info = {"matcher": "exhaustive" if exhaustive else "sequential", "loop_pairs": 0}
    # an earlier run's index describes an earlier database: never leave it for the refinement
    # map to reuse
    (sfm / GLOBAL_DESCRIPTORS).unlink(missing_ok=True)
    if exhaustive:
        pycolmap.match_exhaustive(db, matching_options=matching, device=pycolmap.Device.cpu)
        return info
    pairing = pycolmap.SequentialPairingOptions()
    pairing.overlap = cfg.sequential_overlap
    pairing.quadratic_overlap = True
    pairing.loop_detection = False
    pycolmap.match_sequential(db, matching_options=matching, pairing_options=pairing,
                              device=pycolmap.Device.cpu)
    if cfg.loop_pairs > 0 and len(names) > cfg.loop_min_gap:
        index = global_descriptors(db, seed=cfg.seed)
        save_retrieval_index(sfm / GLOBAL_DESCRIPTORS, index)
        pairs = _loop_pairs(index.names, index.descriptors, cfg.loop_pairs, cfg.loop_min_gap,
                            cfg.loop_stride)
        if pairs:
            pairs_file = sfm / "loop_pairs.txt"
            write_text_atomic(pairs_file, "".join(f"{a} {b}\n" for a, b in pairs))
            imported = pycolmap.ImportedPairingOptions()
            imported.match_list_path = pairs_file
            verification = pycolmap.TwoViewGeometryOptions()
            verification.min_num_inliers = cfg.loop_min_inliers
            pycolmap.match_image_pairs(db, matching_options=matching, pairing_options=imported,
                                       verification_options=verification,
                                       device=pycolmap.Device.cpu)
        info["loop_pairs"] = len(pairs)
    return info


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


def _map(data: Path, sfm: Path, n_frames: int, cfg: SfMConfig, known_camera: bool) -> dict:
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
    with atomic_dir(sfm / "models") as tmp:
        try:
            recs = pycolmap.incremental_mapping(sfm / "database.db", data / "images", tmp, opts)
            if init is not None and not recs:  # the chosen start failed: let COLMAP choose
                opts.init_image_id1 = opts.init_image_id2 = -1
                opts.mapper = pycolmap.IncrementalPipelineOptions().mapper
                recs = pycolmap.incremental_mapping(sfm / "database.db", data / "images", tmp,
                                                    opts)
        except Exception as exc:  # pycolmap raises RuntimeError/ValueError from C++
            raise SfMError(f"incremental mapping failed: {exc}") from exc
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
    summary = {
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


def run_sfm(data: str | os.PathLike, config: SfMConfig = SfMConfig(), *,
            overwrite: bool = False) -> Path:
    """Run structure from motion on ``DATA/images`` listed in ``DATA/frames.csv``.

    Returns ``DATA/sfm/summary.json``. Completed steps are skipped unless ``overwrite``.

    Raises:
        SfMError: mapping failed or registered fewer frames than ``min_registered_ratio``.
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
    if not _done(steps["matches"]):
        steps["mapping"].unlink(missing_ok=True)
        log.info("sfm: matching")
        _mark(steps["matches"], _match(sfm, names, config))
    if not _done(steps["mapping"]):
        log.info("sfm: incremental mapping")
        summary = _map(data, sfm, len(names), config, (data / "camera.json").exists())
        summary.update(json.loads(steps["features"].read_text()))
        summary.update(json.loads(steps["matches"].read_text()))
        write_json_atomic(summary_path, summary)
        _mark(steps["mapping"])
    summary = json.loads(summary_path.read_text())
    if summary["registered_ratio"] < config.min_registered_ratio:
        raise SfMError(
            f"SfM registered only {summary['registered']} of {summary['frames']} frames "
            f"({summary['registered_ratio']:.0%} < {config.min_registered_ratio:.0%}): likely "
            "too little overlap between frames (walk slower, keep more frames) or blurred / "
            "textureless images"
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
