"""The scene-label format: sparse scene coordinates and depths of every registered frame.

``DATA/scene_labels.npz`` holds, for every frame the SfM model registered, the pixels of its
keypoints that observe a triangulated 3D point, that point in the map frame and its depth
(z in the frame's camera frame, metres, after alignment). A structure-aware model
(:mod:`camera_pose_ros.learning.structure`) trains on them with a validity mask: a user's
own building gets these labels from its SfM model alone, no depth camera needed. The dataset
stage :mod:`camera_pose_ros.dataset.scene_labels` writes the file; ``camera-pose
scene-labels DATA`` recomputes it for an existing dataset.

Pixels are in the ROS / OpenCV convention (the centre of the top-left pixel is (0, 0)) of
the frames as stored in ``DATA/images``. One file, plain arrays (``np.load`` without pickle),
versioned (``format``), written atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from camera_pose_ros.errors import FormatError, InputDataError
from camera_pose_ros.fileio import atomic_path

__all__ = ["SCENE_LABELS", "SceneLabels", "save_scene_labels", "load_scene_labels",
           "MISSING_LABELS_HINT"]

SCENE_LABELS = "scene_labels.npz"
_FORMAT = 1
#: what to run when a dataset has no labels
MISSING_LABELS_HINT = ("make them with `camera-pose scene-labels --data DATA` (`camera-pose "
                       "dataset` writes them for new datasets)")


@dataclass
class SceneLabels:
    """Sparse scene coordinates of the registered frames.

    Attributes:
        names: (M,) image names, sorted.
        image_size: (width, height) of the frames the pixels refer to.
        offsets: (M + 1,) frame ``i``'s labels are rows ``offsets[i]:offsets[i+1]``.
        uv: (K, 2) float32 pixels of the observations.
        xyz: (K, 3) float32 their 3D points in the map frame.
        depth: (K,) float32 the points' depth in the frame's camera (metres).
        source: where the labels come from (``sfm``).
    """

    names: np.ndarray
    image_size: tuple[int, int]
    offsets: np.ndarray
    uv: np.ndarray
    xyz: np.ndarray
    depth: np.ndarray
    source: str = "sfm"

    def __len__(self) -> int:
        return len(self.names)

    def frame(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(uv, xyz, depth) of frame ``i``."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.uv[a:b], self.xyz[a:b], self.depth[a:b]

    def index(self) -> dict[str, int]:
        """Image name -> row."""
        return {str(n): i for i, n in enumerate(self.names)}


def save_scene_labels(path: str | os.PathLike, labels: SceneLabels) -> Path:
    """Write ``labels`` to ``path`` atomically (the format :func:`load_scene_labels` reads)."""
    path = Path(path)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, format=np.array(_FORMAT), names=np.asarray(labels.names),
                 image_size=np.array(labels.image_size, np.int64),
                 offsets=np.asarray(labels.offsets, np.int64),
                 uv=np.asarray(labels.uv, np.float32), xyz=np.asarray(labels.xyz, np.float32),
                 depth=np.asarray(labels.depth, np.float32), source=np.array(labels.source))
    return path


def load_scene_labels(path: str | os.PathLike) -> SceneLabels:
    """Read and check a scene-label file (or the one in a dataset folder).

    Raises:
        InputDataError: no file there (the message says which command makes one).
        FormatError: not a scene-label file, another format version, or inconsistent arrays.
    """
    path = Path(path)
    if path.is_dir():
        path = path / SCENE_LABELS
    if not path.is_file():
        raise InputDataError(f"no scene labels at {path}: {MISSING_LABELS_HINT}")
    keys = ("format", "names", "image_size", "offsets", "uv", "xyz", "depth", "source")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not set(keys) <= set(z.files):
                raise FormatError(f"{path} is not a scene-label file (it lacks "
                                  f"{', '.join(sorted(set(keys) - set(z.files)))})")
            a = {k: z[k] for k in keys}
    except FormatError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise FormatError(f"{path} is not a readable scene-label file ({exc})") from exc
    if int(a["format"]) != _FORMAT:
        raise FormatError(f"{path} has scene-label format {int(a['format'])}, this version "
                          f"reads {_FORMAT}: {MISSING_LABELS_HINT}")
    m, k = len(a["names"]), len(a["uv"])
    off = a["offsets"]
    ok = (off.shape == (m + 1,) and off[0] == 0 and off[-1] == k and np.all(np.diff(off) >= 0)
          and a["uv"].shape == (k, 2) and a["xyz"].shape == (k, 3) and a["depth"].shape == (k,)
          and a["image_size"].shape == (2,) and bool(np.all(a["image_size"] > 0)))
    if not ok:
        raise FormatError(f"{path} is damaged: its arrays do not fit together")
    for name in ("uv", "xyz", "depth"):
        if not np.all(np.isfinite(a[name])):
            raise FormatError(f"{path} is damaged: {name} holds NaN or infinite values")
    return SceneLabels(names=a["names"].astype(str), image_size=(int(a["image_size"][0]),
                                                                 int(a["image_size"][1])),
                       offsets=off, uv=a["uv"], xyz=a["xyz"], depth=a["depth"],
                       source=str(a["source"]))
