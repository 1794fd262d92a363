"""Datasets for pose regression: a split CSV + images -> tensors.

Images are resized (whole frame, no crop: a crop would move the principal point and so
the pose the image shows) and normalised with the backbone's ImageNet statistics.
Augmentation keeps the pose valid: colour jitter and blur only, never flips or crops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from camera_pose_ros.errors import InputDataError, SplitError
from camera_pose_ros.io.posecsv import PoseTable, read_poses
from camera_pose_ros.io.scenelabels import SceneLabels

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageTransform",
    "load_split",
    "PoseImageDataset",
    "OffPathView",
    "OffPathViews",
    "rotate_view",
    "camera_matrix",
    "TupleDataset",
    "tuple_starts",
    "poses_tensor",
    "SceneLabelDataset",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageTransform:
    """RGB uint8 (H, W, 3) -> normalised float tensor (3, h, w), optionally augmented."""

    height: int
    width: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    color_jitter: float = 0.0
    blur_probability: float = 0.0

    def __call__(self, rgb: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Transform one image; ``rng`` enables augmentation."""
        img = cv2.resize(rgb, (self.width, self.height), interpolation=cv2.INTER_AREA)
        x: np.ndarray = img.astype(np.float32) / 255.0
        if rng is not None and self.color_jitter > 0:
            j = self.color_jitter
            x = x * rng.uniform(1 - j, 1 + j)  # brightness
            mean = x.mean()
            x = (x - mean) * rng.uniform(1 - j, 1 + j) + mean  # contrast
            gray = x.mean(axis=2, keepdims=True)
            x = (x - gray) * rng.uniform(1 - j, 1 + j) + gray  # saturation
            x = np.clip(x, 0.0, 1.0)
        if rng is not None and self.blur_probability > 0 and rng.random() < self.blur_probability:
            x = cv2.GaussianBlur(x, (0, 0), float(rng.uniform(0.5, 1.5)))
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def load_split(data: str | os.PathLike, split: str) -> PoseTable:
    """The pose table of ``DATA/<split>.csv``; missing, empty or image-less splits raise."""
    path = Path(data) / f"{split}.csv"
    if not path.is_file():
        raise SplitError(f"{path} not found: build the dataset (camera-pose dataset/split)")
    table = read_poses(path)
    if table.images is None:
        raise InputDataError(f"{path}: no image column; expected image,stamp,x,y,z,qw,qx,qy,qz")
    if len(table) == 0:
        raise SplitError(f"split '{split}' in {data} is empty")
    return table


def poses_tensor(table: PoseTable) -> torch.Tensor:
    """(N, 7) float32 metric poses (x, y, z, qw, qx, qy, qz), canonical quaternions."""
    q = table.quats_wxyz_N4 * np.where(table.quats_wxyz_N4[:, :1] < 0, -1.0, 1.0)
    return torch.from_numpy(np.concatenate([table.positions_N3, q], 1).astype(np.float32))


def _image_names(table: PoseTable) -> list[str]:
    if table.images is None:
        raise InputDataError("a pose table without an image column cannot feed a dataset")
    return table.images


def camera_matrix(data: str | os.PathLike) -> np.ndarray | None:
    """K of the stored images (``DATA/camera.json``, from CameraInfo), or None."""
    import json

    from camera_pose_ros.camera import PinholeCamera

    path = Path(data) / "camera.json"
    if not path.is_file():
        return None
    return PinholeCamera.from_dict(json.loads(path.read_text())).matrix()


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputDataError(f"cannot read image {path}")
    return bgr[:, :, ::-1]


def rotate_view(rgb: np.ndarray, pose_7: np.ndarray, K: np.ndarray, rotvec_cam: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """The image and pose of the same camera turned by ``rotvec_cam`` about its own centre.

    A pure rotation needs no depth: pixels move by the homography K dR^T K^-1, and the new
    pose is R dR (dR in the camera frame). Areas the original did not see are black.
    """
    from scipy.spatial.transform import Rotation

    d_rot = Rotation.from_rotvec(rotvec_cam).as_matrix()
    h, w = rgb.shape[:2]
    H = K @ d_rot.T @ np.linalg.inv(K)
    warped = cv2.warpPerspective(rgb, H, (w, h), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT)
    q = pose_7[3:]
    r_new = Rotation.from_quat([q[1], q[2], q[3], q[0]]).as_matrix() @ d_rot
    x, y, z, qw = Rotation.from_matrix(r_new).as_quat()
    out = np.array([*pose_7[:3], qw, x, y, z], dtype=np.float32)
    if out[3] < 0:
        out[3:] = -out[3:]
    return warped, out


class PoseImageDataset(Dataset):
    """(image tensor, pose (7,)) pairs of a split; augmentation when ``augment``.

    ``rotation_deg`` > 0 (with the camera matrix ``K`` of the stored images) adds random
    view rotations about the camera centre, up to that many degrees of yaw (half of it in
    pitch, a third in roll), with their exact poses: see :func:`rotate_view`.
    """

    def __init__(self, data: str | os.PathLike, table: PoseTable, transform: ImageTransform,
                 *, augment: bool = False, seed: int = 0, rotation_deg: float = 0.0,
                 K: np.ndarray | None = None) -> None:
        self.root = Path(data) / "images"
        self.table = table
        self.images = _image_names(table)
        self.poses_N7 = poses_tensor(table)
        self.transform = transform
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.rotation_deg = rotation_deg if K is not None else 0.0
        self.K = K

    def __len__(self) -> int:
        return len(self.table)

    def image(self, i: int, rng: np.random.Generator | None = None) -> torch.Tensor:
        """The transformed image of row ``i``."""
        return self.transform(_read_rgb(self.root / self.images[i]), rng)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, i)) if self.augment else None
        if rng is None or self.rotation_deg <= 0 or self.K is None:
            return self.image(i, rng), self.poses_N7[i]
        lim = np.radians(self.rotation_deg) * np.array([0.5, 1.0, 1.0 / 3.0])  # pitch yaw roll
        rgb, pose = rotate_view(_read_rgb(self.root / self.images[i]),
                                self.poses_N7[i].numpy(), self.K, rng.uniform(-lim, lim))
        return self.transform(rgb, rng), torch.from_numpy(pose)


def tuple_starts(stamps: np.ndarray, steps: int, skip: int) -> np.ndarray:
    """(M, T) frame indices of tuples ``steps`` frames ``skip`` apart inside contiguous runs.

    Runs break where time jumps (between a split's blocks). Runs shorter than a tuple give
    single frames (T = 1).
    """
    dt = np.diff(stamps) if len(stamps) > 1 else np.array([1.0])
    brk = np.concatenate([[0], np.flatnonzero(dt > 3 * np.median(dt)) + 1, [len(stamps)]])
    span = (steps - 1) * skip
    starts = [s for a, b in zip(brk[:-1], brk[1:], strict=True) for s in range(a, b - span)]
    if not starts:
        return np.arange(len(stamps))[:, None]
    return np.array(starts)[:, None] + np.arange(steps)[None, :] * skip


class TupleDataset(Dataset):
    """MapNet tuples: ``steps`` frames ``skip`` apart, all inside one contiguous run.

    Returns images (T, 3, H, W) and poses (T, 7). Runs are broken where the split jumps in
    time (between its blocks), so a tuple never spans two blocks.
    """

    def __init__(self, base: PoseImageDataset, *, steps: int = 3, skip: int = 2) -> None:
        self.base = base
        self.index = tuple_starts(base.table.stamps, steps, skip)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        items = [self.base[int(j)] for j in self.index[i]]
        return torch.stack([x for x, _ in items]), torch.stack([p for _, p in items])


class OffPathView(Enum):
    """How :class:`OffPathViews` shows a frame."""

    PLAIN = "plain"  # as recorded
    TURNED = "turned"  # rotated about the camera centre (needs K)
    LIGHT = "light"  # under another light


class OffPathViews(Dataset):
    """Frames of a split as a query off the training path would show them, for calibration.

    Each frame comes three times: as recorded; turned 15-25 deg about the camera centre to
    either side (pitch up to 8 deg; beyond the training augmentation, exact poses by
    :func:`rotate_view`; skipped without ``K``); and under another light (each colour channel
    scaled by 0.6-1.3). Deterministic for a ``seed``.
    """

    def __init__(self, data: str | os.PathLike, table: PoseTable, transform: ImageTransform,
                 *, K: np.ndarray | None, seed: int = 0) -> None:
        self.root = Path(data) / "images"
        self.table = table
        self.images = _image_names(table)
        self.poses_N7 = poses_tensor(table)
        self.transform = transform
        self.K = K
        self.seed = seed
        self.kinds = tuple(OffPathView) if K is not None else (OffPathView.PLAIN,
                                                              OffPathView.LIGHT)

    def __len__(self) -> int:
        return len(self.table) * len(self.kinds)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        i, kind = divmod(j, len(self.kinds))
        rgb = _read_rgb(self.root / self.images[i])
        pose = self.poses_N7[i].numpy()
        rng = np.random.default_rng((self.seed, j))
        if self.kinds[kind] is OffPathView.TURNED and self.K is not None:
            yaw = np.radians(rng.uniform(15, 25)) * (1 if i % 2 else -1)
            pitch = np.radians(rng.uniform(-8, 8))
            rgb, pose = rotate_view(rgb, pose, self.K, np.array([pitch, yaw, 0.0]))
        elif self.kinds[kind] is OffPathView.LIGHT:
            gain = rng.uniform(0.6, 1.3, 3).astype(np.float32)
            rgb = np.clip(rgb.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        return self.transform(rgb), torch.as_tensor(pose, dtype=torch.float32)


class SceneLabelDataset(Dataset):
    """Frames of a split with their sparse scene labels, for structure-aware training.

    Images are decoded and resized to the network's input size once (kept in memory as
    uint8). Each item is a dict: ``image`` (3, H, W), ``rot`` (3, 3) and ``t`` (3,) of
    ``map_from_cam``, ``pose`` (7,), and up to ``max_labels`` labels: ``uv`` (M, 2) pixels
    of the input image, ``xyz`` (M, 3) map points, ``depth`` (M,) their z in the camera
    frame (computed from the pose, so that it stays exact under augmentation), ``mask``
    (M,). Frames without labels (not registered by SfM) have an all-false mask.

    Augmentation keeps the labels valid: colour and blur leave them as they are; a rotation
    about the camera centre (``rotation_deg``, with ``K`` of the stored images) moves each
    label's pixel by the same homography as the image and changes its depth with the pose.
    """

    def __init__(self, data: str | os.PathLike, table: PoseTable, labels: SceneLabels,
                 transform: ImageTransform, *, augment: bool = False, seed: int = 0,
                 rotation_deg: float = 0.0, K: np.ndarray | None = None,
                 max_labels: int = 512, progress: bool = False) -> None:
        from tqdm import tqdm

        self.table = table
        self.names = _image_names(table)
        self.poses_N7 = poses_tensor(table)
        self.transform = transform
        self.augment, self.seed, self.epoch = augment, seed, 0
        self.max_labels = max_labels
        root = Path(data) / "images"
        row = labels.index()
        self.images: list[np.ndarray] = []
        self.labels: list[tuple[np.ndarray, np.ndarray]] = []
        sx = sy = 1.0
        for name in tqdm(self.names, desc="load frames", unit="frame", disable=not progress):
            rgb = _read_rgb(root / name)
            h, w = rgb.shape[:2]
            sx, sy = transform.width / w, transform.height / h
            self.images.append(cv2.resize(rgb, (transform.width, transform.height),
                                          interpolation=cv2.INTER_AREA))
            if name in row:
                uv, xyz, _ = labels.frame(row[name])
                uv_in = np.stack([(uv[:, 0] + 0.5) * sx - 0.5, (uv[:, 1] + 0.5) * sy - 0.5], 1)
                self.labels.append((uv_in.astype(np.float32), xyz.astype(np.float32)))
            else:
                self.labels.append((np.zeros((0, 2), np.float32), np.zeros((0, 3), np.float32)))
        self.labelled = int(sum(len(u) > 0 for u, _ in self.labels))
        self.K_in: np.ndarray | None = None
        if K is not None:  # intrinsics at the input size (pixel centres scale about corners)
            self.K_in = np.array([[K[0, 0] * sx, 0.0, (K[0, 2] + 0.5) * sx - 0.5],
                                  [0.0, K[1, 1] * sy, (K[1, 2] + 0.5) * sy - 0.5],
                                  [0.0, 0.0, 1.0]])
        self.rotation_deg = rotation_deg if self.K_in is not None else 0.0

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        from scipy.spatial.transform import Rotation

        rng = np.random.default_rng((self.seed, self.epoch, i)) if self.augment else None
        rgb, pose = self.images[i], self.poses_N7[i].numpy().astype(np.float64)
        uv, xyz = self.labels[i]
        if rng is not None and self.rotation_deg > 0 and self.K_in is not None:
            lim = np.radians(self.rotation_deg) * np.array([0.5, 1.0, 1.0 / 3.0])
            rotvec = rng.uniform(-lim, lim)
            rgb, pose32 = rotate_view(rgb, pose.astype(np.float32), self.K_in, rotvec)
            pose = pose32.astype(np.float64)
            if len(uv):
                H = self.K_in @ Rotation.from_rotvec(rotvec).as_matrix().T @ np.linalg.inv(
                    self.K_in)
                hom = np.c_[uv, np.ones(len(uv))] @ H.T
                uv = (hom[:, :2] / hom[:, 2:3]).astype(np.float32)
                inside = ((uv[:, 0] >= 0) & (uv[:, 0] <= rgb.shape[1] - 1)
                          & (uv[:, 1] >= 0) & (uv[:, 1] <= rgb.shape[0] - 1))
                uv, xyz = uv[inside], xyz[inside]
        q = pose[3:]
        rot = Rotation.from_quat([q[1], q[2], q[3], q[0]]).as_matrix()
        m = self.max_labels
        if len(uv) > m:
            pick = (rng.choice(len(uv), m, replace=False) if rng is not None
                    else np.linspace(0, len(uv) - 1, m).astype(int))
            uv, xyz = uv[pick], xyz[pick]
        depth = ((xyz - pose[:3]) @ rot)[:, 2] if len(xyz) else np.zeros(0)
        keep = depth > 1e-3
        uv, xyz, depth = uv[keep], xyz[keep], depth[keep]
        k = len(uv)
        out_uv = np.zeros((m, 2), np.float32)
        out_xyz = np.zeros((m, 3), np.float32)
        out_d = np.zeros(m, np.float32)
        out_uv[:k], out_xyz[:k], out_d[:k] = uv, xyz, depth
        mask = np.zeros(m, bool)
        mask[:k] = True
        return {"image": self.transform(rgb, rng), "pose": torch.from_numpy(
                    pose.astype(np.float32)),
                "rot": torch.from_numpy(rot.astype(np.float32)),
                "t": torch.from_numpy(pose[:3].astype(np.float32)),
                "uv": torch.from_numpy(out_uv), "xyz": torch.from_numpy(out_xyz),
                "depth": torch.from_numpy(out_d), "mask": torch.from_numpy(mask)}
