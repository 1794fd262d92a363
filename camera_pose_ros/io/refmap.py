"""The refinement map format: what geometric refinement needs from the SfM model.

``DATA/refinement_map.npz`` holds, for every registered frame, its camera pose
(``map_from_cam``), the SIFT descriptors of its keypoints that observe a triangulated 3D
point and those points' map-frame coordinates, the shared camera intrinsics, and a
bag-of-words vocabulary with per-image global descriptors for retrieval. The dataset stage
:mod:`camera_pose_ros.dataset.refmap` builds it; refinement then needs neither pycolmap's
database nor the images.

One file, plain arrays (``np.load`` without pickle), written atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.errors import RefinementError
from camera_pose_ros.fileio import atomic_path

__all__ = ["REFINEMENT_MAP", "RefinementMap", "save_refinement_map", "load_refinement_map",
           "load_refinement_map_frames"]

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


def save_refinement_map(path: str | os.PathLike, rmap: RefinementMap) -> Path:
    """Write ``rmap`` to ``path`` atomically (the format :func:`load_refinement_map` reads)."""
    path = Path(path)
    cam = rmap.camera
    arrays: dict[str, Any] = dict(  # Any: savez's stub types allow_pickle as a keyword
        format=np.array(_FORMAT), names=np.asarray(rmap.names),
        map_from_cam=np.asarray(rmap.map_from_cam, float),
        camera=np.array([cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy]),
        camera_distortion=np.array(cam.distortion, float),
        points=np.asarray(rmap.points, np.float64),
        offsets=np.asarray(rmap.offsets, np.int64), obs_point=np.asarray(rmap.obs_point, np.int64),
        obs_desc=np.asarray(rmap.obs_desc, np.uint8), vocabulary=rmap.vocabulary, idf=rmap.idf,
        global_desc=rmap.global_desc, alignment_rms_m=np.array(float(rmap.alignment_rms_m)))
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return path


def _read_arrays(path: str | os.PathLike, keys: tuple[str, ...] | None = None
                 ) -> tuple[Path, dict[str, np.ndarray]]:
    """The file's arrays (only ``keys`` when given), its format checked."""
    path = Path(path)
    if path.is_dir():
        path = path / REFINEMENT_MAP
    if not path.is_file():
        raise RefinementError(f"no refinement map at {path}: build one with `camera-pose "
                              "refinement-map --data DATA` (the dataset command writes it)")
    try:
        with np.load(path, allow_pickle=False) as z:
            wanted = z.files if keys is None else ["format", *keys]
            arrays = {k: z[k] for k in wanted if k in z.files}
    except (OSError, ValueError) as exc:
        raise RefinementError(f"cannot read the refinement map {path}: {exc}") from exc
    if int(arrays.get("format", -1)) != _FORMAT:
        raise RefinementError(f"{path} is a refinement map of format "
                              f"{int(arrays.get('format', -1))}, this version reads {_FORMAT}; "
                              "rebuild it with `camera-pose refinement-map`")
    missing = [k for k in keys or () if k not in arrays]
    if missing:
        raise RefinementError(f"{path} lacks {', '.join(missing)}: rebuild it with "
                              "`camera-pose refinement-map`")
    return path, arrays


def load_refinement_map_frames(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Only the frames' names (M,) and ``map_from_cam`` poses (M, 4, 4) of a refinement map
    (the other arrays are not read).

    Raises:
        RefinementError: missing, unreadable or of another format version.
    """
    _, arrays = _read_arrays(path, ("names", "map_from_cam"))
    return arrays["names"], arrays["map_from_cam"]


def load_refinement_map(path: str | os.PathLike) -> RefinementMap:
    """Read a refinement map file, or ``DIR/refinement_map.npz`` when given a directory.

    Raises:
        RefinementError: missing, unreadable or of another format version.
    """
    path, arrays = _read_arrays(path)
    c = arrays["camera"]
    return RefinementMap(
        names=arrays["names"], map_from_cam=arrays["map_from_cam"],
        camera=PinholeCamera(int(c[0]), int(c[1]), float(c[2]), float(c[3]), float(c[4]),
                             float(c[5]), tuple(arrays.get("camera_distortion", ()))),
        points=arrays["points"], offsets=arrays["offsets"], obs_point=arrays["obs_point"],
        obs_desc=arrays["obs_desc"], vocabulary=arrays["vocabulary"], idf=arrays["idf"],
        global_desc=arrays["global_desc"],
        alignment_rms_m=float(arrays.get("alignment_rms_m", 0.0)))
