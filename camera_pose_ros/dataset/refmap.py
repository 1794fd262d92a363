"""Stage: the refinement map, built from the SfM model, its database and the alignment.

Writes ``DATA/refinement_map.npz`` (format: :mod:`camera_pose_ros.io.refmap`). The retrieval
vocabulary of the SfM stage (``sfm/global_descriptors.npz``) is reused when present.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.errors import CameraModelError, FormatError, RefinementError
from camera_pose_ros.geometry import Sim3, invert_pose
from camera_pose_ros.io.refmap import (
    DESCRIPTOR_DIMS,
    REFINEMENT_MAP,
    RefinementMap,
    check_descriptor_dims,
    compact_descriptors,
    save_refinement_map,
)
from camera_pose_ros.io.retrieval import (
    GLOBAL_DESCRIPTORS,
    RetrievalIndex,
    load_retrieval_index,
)

if TYPE_CHECKING:
    import pycolmap

__all__ = ["build_refinement_map"]

log = logging.getLogger(__name__)


def build_refinement_map(data: str | os.PathLike, *, out: str | os.PathLike | None = None,
                         words: int = 256, seed: int = 0,
                         descriptor_dims: int = DESCRIPTOR_DIMS) -> Path:
    """Write ``DATA/refinement_map.npz`` (or ``out``) from the SfM model and the alignment.

    Every observation's descriptor is read from the database; each point keeps one
    (:func:`~camera_pose_ros.io.refmap.compact_descriptors`, ``descriptor_dims`` PCA
    components).

    Raises:
        RefinementError: the SfM model, database, camera or alignment is missing, or
            ``descriptor_dims`` is not 1 to 128.
    """
    import pycolmap  # here, not at import: training processes need only the file name

    check_descriptor_dims(descriptor_dims)
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
    retrieval = _retrieval(data, db_path, words, seed, [im.name for im in images])
    row_of = {n: i for i, n in enumerate(retrieval.names)}
    poses, offsets, obs_point, obs_desc = [], [0], [], []
    db = pycolmap.Database.open(db_path)
    try:
        for im in images:
            cam_from_world = np.eye(4)
            cam_from_world[:3, :] = im.cam_from_world().matrix()
            poses.append(sim.transform_pose(invert_pose(cam_from_world)))
            db_image = db.read_image_with_name(im.name)
            if db_image is None:
                raise RefinementError(f"frame {im.name} of the SfM model is not in {db_path}: "
                                      "run `camera-pose sfm` again")
            desc = np.asarray(db.read_descriptors(db_image.image_id).data, dtype=np.uint8)
            idx = [(k, lookup[int(p.point3D_id)]) for k, p in enumerate(im.points2D)
                   if p.has_point3D()]
            kp = np.array([k for k, _ in idx], dtype=np.int64)
            obs_point.append(np.array([i for _, i in idx], dtype=np.int64))
            obs_desc.append(desc[kp] if len(kp) else np.zeros((0, 128), np.uint8))
            offsets.append(offsets[-1] + len(kp))
    finally:
        db.close()
    out = Path(out) if out is not None else data / REFINEMENT_MAP
    frame_points = np.concatenate(obs_point)
    codes, mean, basis, scale = compact_descriptors(frame_points, np.concatenate(obs_desc),
                                                    len(points), descriptor_dims)
    save_refinement_map(out, RefinementMap(
        names=np.array([im.name for im in images]), map_from_cam=np.array(poses),
        camera=camera, points=points, offsets=np.array(offsets, dtype=np.int64),
        frame_points=frame_points, desc_codes=codes, desc_mean=mean, desc_basis=basis,
        desc_scale=scale, vocabulary=retrieval.vocabulary, idf=retrieval.idf,
        global_desc=retrieval.descriptors[[row_of[im.name] for im in images]],
        alignment_rms_m=float(alignment.get("rms_m", 0.0))))
    log.info("refinement map: %d frames, %d points (%d components each), %d observations, "
             "%.1f MB -> %s", len(images), len(points), codes.shape[1], offsets[-1],
             out.stat().st_size / 1e6, out)
    return out


def _camera(data: Path, cam: pycolmap.Camera) -> PinholeCamera:
    """The mapped frames' intrinsics: camera.json when known, else COLMAP's estimate."""
    if (data / "camera.json").exists():
        return PinholeCamera.from_dict(json.loads((data / "camera.json").read_text()))
    try:
        return PinholeCamera.from_colmap(cam.model.name, cam.width, cam.height, cam.params)
    except CameraModelError as exc:
        raise RefinementError(f"the SfM camera: {exc}") from exc


def _retrieval(data: Path, db_path: Path, words: int, seed: int, names: list[str]
               ) -> RetrievalIndex:
    """The SfM stage's retrieval index when it was made with ``words`` and ``seed`` and holds
    every frame of ``names``, else a new one from the database (same computation)."""
    from camera_pose_ros.dataset.sfm import global_descriptors

    saved = data / "sfm" / GLOBAL_DESCRIPTORS
    if saved.is_file():
        try:
            index = load_retrieval_index(saved)
        except FormatError as exc:
            log.warning("%s; computing the retrieval vocabulary again", exc)
        else:
            if index.words == words and index.seed == seed and set(names) <= set(index.names):
                return index
    return global_descriptors(db_path, words=words, seed=seed)


