"""Stage: scene labels for structure-aware models, from the SfM model and the alignment.

Every registered frame's keypoints that observe a triangulated 3D point give a sparse scene
coordinate (the point in the map frame) and a sparse depth (its z in that frame's camera
frame), both metric after the alignment. Writes ``DATA/scene_labels.npz`` (format:
:mod:`camera_pose_ros.io.scenelabels`). Observations whose reprojection in the aligned
camera is more than ``max_reprojection_px`` off, or that lie behind the camera, are left
out (a label must agree with the pose it trains beside).

When the bag also holds a depth image registered to the colour camera (``depth_topic``;
found by name among :data:`~camera_pose_ros.io.bags.DEPTH_TOPICS` when not given: the
synthetic building's ``synth --depth`` and a RealSense's aligned depth), each registered
frame also gets dense labels: the depth at the centre of every ``depth_stride`` pixel cell,
back-projected through the SfM camera and the frame's aligned pose (``source``
``sfm+depth``). A depth camera sees the walls SIFT finds no texture on; its labels are as
good as the aligned pose and the depth sensor.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from camera_pose_ros.dataset.frames import read_frames_csv
from camera_pose_ros.errors import InputDataError
from camera_pose_ros.geometry import Sim3, invert_pose
from camera_pose_ros.io.bags import DEPTH_TOPICS, iter_bag_depth, list_topics
from camera_pose_ros.io.scenelabels import SCENE_LABELS, SceneLabels, save_scene_labels

__all__ = ["build_scene_labels"]

log = logging.getLogger(__name__)


def _depth_source(data: Path, depth_topic: str | None, depth_bag: str | os.PathLike | None
                  ) -> tuple[Path, str] | None:
    """(bag, topic) of the depth images to use, or None: ``depth_topic`` ``none`` (or
    None), or ``auto`` with no known depth topic in the dataset's bag."""
    if depth_topic is None or depth_topic == "none":
        return None
    bag = depth_bag
    if bag is None:
        source = data / "source.json"
        bag = json.loads(source.read_text()).get("bag") if source.is_file() else None
    if not bag:
        if depth_topic != "auto":
            raise InputDataError(f"--depth-topic {depth_topic}: the dataset was not made from "
                                 "a bag, so there is no depth topic to read")
        return None
    if depth_topic == "auto":
        topics = list_topics(bag)
        found = [t for t in DEPTH_TOPICS if topics.get(t) == "sensor_msgs/msg/Image"]
        if not found:
            return None
        depth_topic = found[0]
    return Path(bag), depth_topic


def _cell_centres(size: tuple[int, int], stride: int) -> np.ndarray:
    """(N, 2) ROS pixels of the centres of the ``stride``-pixel cells of a (w, h) image."""
    w, h = size
    u, v = np.meshgrid(np.arange(stride / 2 - 0.5, w, stride),
                       np.arange(stride / 2 - 0.5, h, stride))
    return np.stack([u.ravel(), v.ravel()], 1)


def _depth_at(depth: np.ndarray, uv: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N,) float32 depth at colour pixels ``uv`` of a (w, h) image, read from a registered
    depth image of any size (nearest pixel; NaN: no measurement)."""
    w, h = size
    hd, wd = depth.shape
    cols = np.clip(np.round((uv[:, 0] + 0.5) * wd / w - 0.5).astype(int), 0, wd - 1)
    rows = np.clip(np.round((uv[:, 1] + 0.5) * hd / h - 0.5).astype(int), 0, hd - 1)
    return depth[rows, cols].astype(np.float32)


def _depth_by_frame(data: Path, bag: Path, topic: str, wanted: set[str], max_dt_s: float,
                    sample: Callable[[np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
    """Image name -> ``sample(depth)`` of the depth image nearest its stamp (within
    ``max_dt_s``), for the frames in ``wanted``. Only the samples are kept, never the
    images: a long walk's depth would not fit in memory."""
    names, stamps = read_frames_csv(data / "frames.csv")
    stamp_of = {n: int(t) for n, t in zip(names, stamps, strict=True) if n in wanted}
    if not stamp_of:
        return {}
    order = sorted(stamp_of, key=stamp_of.__getitem__)
    keys = np.array([stamp_of[n] for n in order], np.int64)
    best: dict[str, tuple[int, np.ndarray]] = {}
    limit = int(max_dt_s * 1e9)
    for stamp, depth in iter_bag_depth(bag, topic):
        i = int(np.searchsorted(keys, stamp))
        for j in (i - 1, i):
            if 0 <= j < len(keys):
                dt = abs(int(keys[j]) - stamp)
                if dt <= limit and dt < best.get(order[j], (limit + 1, None))[0]:
                    best[order[j]] = (dt, sample(depth))
    return {n: z for n, (_, z) in best.items()}


def _dense_labels(uv: np.ndarray, z: np.ndarray, camera: object, map_from_cam: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uv ROS pixels, xyz map, depth) of the pixels ``uv`` whose depth ``z`` was measured,
    back-projected through the SfM ``camera`` (a pycolmap Camera) and the aligned pose."""
    z = z.astype(np.float64)
    ok = np.isfinite(z) & (z > 0.05)
    uv, z = uv[ok], z[ok]
    xy = np.asarray(camera.cam_from_img(uv + 0.5), np.float64).reshape(-1, 2)  # type: ignore[attr-defined]
    p_cam = np.c_[xy, np.ones(len(xy))] * z[:, None]
    xyz = p_cam @ map_from_cam[:3, :3].T + map_from_cam[:3, 3]
    good = np.all(np.isfinite(xyz), axis=1)
    return uv[good], xyz[good], z[good]


def build_scene_labels(data: str | os.PathLike, *, out: str | os.PathLike | None = None,
                       max_reprojection_px: float = 4.0, depth_topic: str | None = "auto",
                       depth_bag: str | os.PathLike | None = None, depth_stride: int = 8,
                       max_depth_dt: float = 0.02) -> Path:
    """Write ``DATA/scene_labels.npz`` (or ``out``) from ``DATA/sfm/model`` and
    ``DATA/alignment.json``; return its path.

    ``depth_topic``: a depth image topic of the dataset's bag (or of ``depth_bag``) whose
    images, registered to the colour camera, add dense labels every ``depth_stride`` pixels
    (matched to a frame within ``max_depth_dt`` seconds); ``auto`` (default) uses one of
    :data:`~camera_pose_ros.io.bags.DEPTH_TOPICS` when the bag has it; ``none``: SfM only.

    Raises:
        InputDataError: the SfM model or the alignment is missing, no frame has a label, or
            a named depth topic cannot be used.
        BagError: the bag or a named depth topic cannot be read.
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
    if depth_stride < 1:
        raise InputDataError(f"depth_stride must be at least 1, got {depth_stride}")
    where = _depth_source(data, depth_topic, depth_bag)
    cells = _cell_centres(size, depth_stride)
    dense = (_depth_by_frame(data, where[0], where[1], {im.name for im in images},
                             max_depth_dt, lambda d: _depth_at(d, cells, size))
             if where else {})
    names, offsets, uvs, xyzs, depths = [], [0], [], [], []
    dropped = n_dense = 0
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
        if im.name in dense:
            duv, dxyz, dz = _dense_labels(cells, dense[im.name], rec.cameras[im.camera_id],
                                          map_from_cam)
            uv, xyz, z = np.r_[uv, duv], np.r_[xyz, dxyz], np.r_[z, dz]
            n_dense += len(dz)
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
                         depth=np.concatenate(depths).astype(np.float32),
                         source="sfm+depth" if n_dense else "sfm")
    path = save_scene_labels(Path(out) if out is not None else data / SCENE_LABELS, labels)
    per = np.diff(labels.offsets)
    if where:
        log.info("dense labels from %s: %d frames of %d matched a depth image, %d labels",
                 where[1], len(dense), len(images), n_dense)
    elif depth_topic == "auto":
        log.info("no depth topic in the bag (looked for %s): sparse SfM labels only",
                 ", ".join(DEPTH_TOPICS))
    log.info("scene labels: %d frames, median %d labels per frame (%d observations left out "
             "as inconsistent with their frame's pose) -> %s", len(names),
             int(np.median(per)), dropped, path)
    return path
