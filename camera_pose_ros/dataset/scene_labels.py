"""Stage: scene labels for structure-aware models, from the SfM model and the alignment.

Every registered frame's keypoints that observe a triangulated 3D point give a sparse scene
coordinate (the point in the map frame) and a sparse depth (its z in that frame's camera
frame), both metric after the alignment. Writes ``DATA/scene_labels.npz`` (format:
:mod:`camera_pose_ros.io.scenelabels`). Observations whose reprojection in the aligned
camera is more than ``max_reprojection_px`` off, or that lie behind the camera, are left
out (a label must agree with the pose it trains beside).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from camera_pose_ros.errors import InputDataError
from camera_pose_ros.geometry import Sim3, invert_pose
from camera_pose_ros.io.scenelabels import SCENE_LABELS, SceneLabels, save_scene_labels

__all__ = ["build_scene_labels"]

log = logging.getLogger(__name__)


def build_scene_labels(data: str | os.PathLike, *, out: str | os.PathLike | None = None,
                       max_reprojection_px: float = 4.0) -> Path:
    """Write ``DATA/scene_labels.npz`` (or ``out``) from ``DATA/sfm/model`` and
    ``DATA/alignment.json``; return its path.

    Raises:
        InputDataError: the SfM model or the alignment is missing, or no frame has a label.
    """
    import pycolmap  # here, not at import: training processes need only the file

    data = Path(data)
    model_dir = data / "sfm" / "model"
    for need, what in ((model_dir, "`camera-pose sfm`"),
                       (data / "alignment.json", "`camera-pose align`")):
        if not need.exists():
            raise InputDataError(f"cannot make scene labels: {need} is missing; run {what} "
                                 "first")
    sim = Sim3.from_dict(json.loads((data / "alignment.json").read_text())["map_from_sfm"])
    rec = pycolmap.Reconstruction(model_dir)
    images = sorted((im for im in rec.images.values() if im.has_pose), key=lambda im: im.name)
    if not images:
        raise InputDataError(f"cannot make scene labels: the SfM model in {model_dir} has no "
                             "registered frame")
    cam = rec.cameras[images[0].camera_id]
    size = (int(cam.width), int(cam.height))
    names, offsets, uvs, xyzs, depths = [], [0], [], [], []
    dropped = 0
    for im in images:
        world_from_cam = np.eye(4)
        world_from_cam[:3, :] = im.cam_from_world().matrix()
        map_from_cam = sim.transform_pose(invert_pose(world_from_cam))
        obs = [(p.xy, rec.points3D[p.point3D_id].xyz) for p in im.points2D if p.has_point3D()]
        if obs:
            uv = np.array([o[0] for o in obs], np.float64) - 0.5  # COLMAP -> ROS pixels
            xyz = sim.apply(np.array([o[1] for o in obs], np.float64))
            p_cam = (xyz - map_from_cam[:3, 3]) @ map_from_cam[:3, :3]
            z = p_cam[:, 2]
            proj = np.asarray(rec.cameras[im.camera_id].img_from_cam(
                p_cam, check_cheirality=False), np.float64).reshape(-1, 2)
            err = np.linalg.norm(proj - 0.5 - uv, axis=1)
            keep = (z > 1e-3) & np.isfinite(err) & (err <= max_reprojection_px)
            dropped += int((~keep).sum())
            uv, xyz, z = uv[keep], xyz[keep], z[keep]
        else:
            uv, xyz, z = np.zeros((0, 2)), np.zeros((0, 3)), np.zeros(0)
        names.append(im.name)
        uvs.append(uv)
        xyzs.append(xyz)
        depths.append(z)
        offsets.append(offsets[-1] + len(uv))
    if offsets[-1] == 0:
        raise InputDataError(f"cannot make scene labels: no frame of {model_dir} observes a "
                             "triangulated point")
    labels = SceneLabels(names=np.array(names), image_size=size,
                         offsets=np.array(offsets, np.int64),
                         uv=np.concatenate(uvs).astype(np.float32),
                         xyz=np.concatenate(xyzs).astype(np.float32),
                         depth=np.concatenate(depths).astype(np.float32), source="sfm")
    path = save_scene_labels(Path(out) if out is not None else data / SCENE_LABELS, labels)
    per = np.diff(labels.offsets)
    log.info("scene labels: %d frames, median %d labels per frame (%d observations left out "
             "as inconsistent with their frame's pose) -> %s", len(names),
             int(np.median(per)), dropped, path)
    return path
