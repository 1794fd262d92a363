"""The refinement map: what geometric refinement needs from the SfM model, in the map frame.

``DATA/refinement_map.npz`` holds, for every registered frame, its camera pose
(``map_from_cam``), the SIFT descriptors of its keypoints that observe a triangulated 3D
point and those points' map-frame coordinates, the shared camera intrinsics, and a
bag-of-words vocabulary with per-image global descriptors for retrieval. It is built from
``sfm/database.db``, ``sfm/model`` and ``alignment.json``; refinement then needs neither
pycolmap's database nor the images.

One file, plain arrays (``np.load`` without pickle), written atomically.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from camera_pose_ros.errors import RefinementError
from camera_pose_ros.fileio import atomic_path
from camera_pose_ros.geometry import PinholeCamera, Sim3, invert_pose

__all__ = ["REFINEMENT_MAP", "RefinementMap", "build_refinement_map", "load_refinement_map"]

log = logging.getLogger(__name__)

REFINEMENT_MAP = "refinement_map.npz"
_FORMAT = 1


@dataclass
class RefinementMap:
    """Mapped frames with their 3D observations, ready for matching.

    Attributes:
        names: (M,) image names of the registered frames, sorted.
        map_from_cam: (M, 4, 4) camera poses in the map frame.
        camera: intrinsics of the mapped frames (ROS pixel convention).
        points: (P, 3) triangulated points in the map frame.
        offsets: (M + 1,) frame ``i``'s observations are rows ``offsets[i]:offsets[i+1]``.
        obs_point: (K,) index into ``points`` of each observation.
        obs_desc: (K, 128) uint8 SIFT descriptors of the observations (COLMAP's scale).
        vocabulary: (W, 128) visual words; ``idf`` (W,) their weights.
        global_desc: (M, W) L2-normalised tf-idf vectors of the frames.
        alignment_rms_m: RMS of the control points after alignment: how far the map itself
            may be from the building's frame (a floor for refined poses' uncertainty).
    """

    names: np.ndarray
    map_from_cam: np.ndarray
    camera: PinholeCamera
    points: np.ndarray
    offsets: np.ndarray
    obs_point: np.ndarray
    obs_desc: np.ndarray
    vocabulary: np.ndarray
    idf: np.ndarray
    global_desc: np.ndarray
    alignment_rms_m: float = 0.0

    def __len__(self) -> int:
        return len(self.names)

    @property
    def centres(self) -> np.ndarray:
        """(M, 3) camera centres in the map frame."""
        return self.map_from_cam[:, :3, 3]

    @property
    def optical_axes(self) -> np.ndarray:
        """(M, 3) viewing directions (camera z) in the map frame."""
        return self.map_from_cam[:, :3, 2]

    def observations(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Point indices (K,) and uint8 descriptors (K, 128) of the given frames' observations."""
        rows = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1])
                               for i in np.asarray(frames, int)] or [np.zeros(0, int)])
        return self.obs_point[rows], self.obs_desc[rows]


def build_refinement_map(data: str | os.PathLike, *, out: str | os.PathLike | None = None,
                         words: int = 256, seed: int = 0) -> Path:
    """Write ``DATA/refinement_map.npz`` (or ``out``) from the SfM model and the alignment.

    Raises:
        RefinementError: the SfM model, database, camera or alignment is missing.
    """
    import pycolmap  # here, not at import: training processes need only the file name

    from camera_pose_ros.dataset.sfm import global_descriptors

    data = Path(data)
    model_dir, db_path = data / "sfm" / "model", data / "sfm" / "database.db"
    for need, what in ((model_dir, "`camera-pose sfm`"), (db_path, "`camera-pose sfm`"),
                       (data / "alignment.json", "`camera-pose align`")):
        if not need.exists():
            raise RefinementError(f"cannot build the refinement map: {need} is missing; "
                                  f"run {what} first")
    alignment = json.loads((data / "alignment.json").read_text())
    sim = Sim3.from_dict(alignment["map_from_sfm"])
    rec = pycolmap.Reconstruction(model_dir)
    images = sorted((im for im in rec.images.values() if im.has_pose), key=lambda im: im.name)
    if not images:
        raise RefinementError(f"the SfM model in {model_dir} has no registered frame")
    camera = _camera(data, rec.cameras[images[0].camera_id])
    point_ids = np.array(sorted(rec.points3D), dtype=np.int64)
    lookup = {int(pid): i for i, pid in enumerate(point_ids)}
    points = sim.apply(np.array([rec.points3D[int(p)].xyz for p in point_ids]).reshape(-1, 3))
    retrieval = global_descriptors(db_path, words=words, seed=seed)
    row_of = {n: i for i, n in enumerate(retrieval["names"])}
    poses, offsets, obs_point, obs_desc = [], [0], [], []
    db = pycolmap.Database.open(db_path)
    try:
        for im in images:
            cam_from_world = np.eye(4)
            cam_from_world[:3, :] = im.cam_from_world().matrix()
            poses.append(sim.transform_pose(invert_pose(cam_from_world)))
            desc = np.asarray(db.read_descriptors(db.read_image_with_name(im.name).image_id).data,
                              dtype=np.uint8)
            idx = [(k, lookup[int(p.point3D_id)]) for k, p in enumerate(im.points2D)
                   if p.has_point3D()]
            kp = np.array([k for k, _ in idx], dtype=np.int64)
            obs_point.append(np.array([i for _, i in idx], dtype=np.int64))
            obs_desc.append(desc[kp] if len(kp) else np.zeros((0, 128), np.uint8))
            offsets.append(offsets[-1] + len(kp))
    finally:
        db.close()
    out = Path(out) if out is not None else data / REFINEMENT_MAP
    arrays = dict(
        format=np.array(_FORMAT), names=np.array([im.name for im in images]),
        map_from_cam=np.array(poses), camera=np.array(
            [camera.width, camera.height, camera.fx, camera.fy, camera.cx, camera.cy]),
        camera_distortion=np.array(camera.distortion, float),
        points=points.astype(np.float64), offsets=np.array(offsets, dtype=np.int64),
        obs_point=np.concatenate(obs_point), obs_desc=np.concatenate(obs_desc),
        vocabulary=retrieval["vocabulary"], idf=retrieval["idf"],
        global_desc=retrieval["descriptors"][[row_of[im.name] for im in images]],
        alignment_rms_m=np.array(float(alignment.get("rms_m", 0.0))))
    with atomic_path(out, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    log.info("refinement map: %d frames, %d points, %d observations -> %s", len(images),
             len(points), offsets[-1], out)
    return out


def _camera(data: Path, cam: object) -> PinholeCamera:
    """The mapped frames' intrinsics: camera.json when known, else COLMAP's estimate."""
    if (data / "camera.json").exists():
        return PinholeCamera.from_dict(json.loads((data / "camera.json").read_text()))
    try:
        return PinholeCamera.from_colmap(cam.model.name, cam.width, cam.height, cam.params)
    except ValueError as exc:
        raise RefinementError(f"the SfM camera: {exc}") from exc


def load_refinement_map(path: str | os.PathLike) -> RefinementMap:
    """Read a refinement map file, or ``DIR/refinement_map.npz`` when given a directory.

    Raises:
        RefinementError: missing, unreadable or of another format version.
    """
    path = Path(path)
    if path.is_dir():
        path = path / REFINEMENT_MAP
    if not path.is_file():
        raise RefinementError(f"no refinement map at {path}: build one with `camera-pose "
                              "refinement-map --data DATA` (the dataset command writes it)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise RefinementError(f"cannot read the refinement map {path}: {exc}") from exc
    if int(arrays.get("format", -1)) != _FORMAT:
        raise RefinementError(f"{path} is a refinement map of format "
                              f"{int(arrays.get('format', -1))}, this version reads {_FORMAT}; "
                              "rebuild it with `camera-pose refinement-map`")
    c = arrays["camera"]
    return RefinementMap(
        names=arrays["names"], map_from_cam=arrays["map_from_cam"],
        camera=PinholeCamera(int(c[0]), int(c[1]), *map(float, c[2:]),
                             tuple(arrays.get("camera_distortion", ()))),
        points=arrays["points"], offsets=arrays["offsets"], obs_point=arrays["obs_point"],
        obs_desc=arrays["obs_desc"], vocabulary=arrays["vocabulary"], idf=arrays["idf"],
        global_desc=arrays["global_desc"],
        alignment_rms_m=float(arrays.get("alignment_rms_m", 0.0)))
