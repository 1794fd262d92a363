"""Stage 4: train / validation / test splits as contiguous blocks of time.

Frames next to each other in time look almost the same, so interleaving frames (the mod-3
split of the source project) leaks the test set into training. Here the walk is cut into
blocks of ``block_seconds``; whole blocks go to one split, spread along the walk so that
every split sees most of the building, and ``gap_frames`` frames at each boundary between
splits are dropped. Alternatively a separate session (another dataset's ``poses.csv``, in
the same map frame) is the test set.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from camera_pose_ros.errors import ConfigError, SplitError
from camera_pose_ros.io.posecsv import PoseTable, read_poses, write_poses

__all__ = ["SplitConfig", "assign_blocks", "split_dataset", "SPLITS"]

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitConfig:
    """Split settings (shares are of the frames; they are normalised)."""

    train: float = 0.7
    validation: float = 0.15
    test: float = 0.15
    block_seconds: float = 4.0
    gap_frames: int = 2

    def __post_init__(self) -> None:
        shares = (self.train, self.validation, self.test)
        if min(shares) < 0 or self.train <= 0 or sum(shares) <= 0:
            raise ConfigError("split shares must be >= 0 with train > 0")
        if self.block_seconds <= 0 or self.gap_frames < 0:
            raise ConfigError("block_seconds must be > 0 and gap_frames >= 0")


def assign_blocks(n_blocks: int, shares: tuple[float, ...]) -> np.ndarray:
    """Split index per block: each block goes to the split furthest below its share.

    Deterministic, and it spreads the smaller splits evenly along the sequence.
    """
    target = np.asarray(shares, float) / np.sum(shares)
    counts = np.zeros(len(target))
    out = np.empty(n_blocks, int)
    for b in range(n_blocks):
        deficit = target * (b + 1) - counts
        deficit[target == 0] = -np.inf
        k = int(np.argmax(deficit))  # ties go to the first (train)
        out[b] = k
        counts[k] += 1
    return out


def split_dataset(data: str | os.PathLike, config: SplitConfig = SplitConfig(), *,
                  test_poses: str | os.PathLike | None = None) -> Path:
    """Write ``train.csv``, ``validation.csv``, ``test.csv`` from ``DATA/poses.csv``.

    Args:
        data: the dataset folder.
        config: shares, block length and gap.
        test_poses: another session's ``poses.csv`` (same map frame) to use as the test split;
            then this dataset is divided into train and validation only.

    Returns:
        The folder holding the three CSVs (``data``).
    """
    data = Path(data)
    poses = read_poses(data / "poses.csv")
    if poses.images is None:
        raise SplitError(f"{data / 'poses.csv'} has no image column")
    if len(poses) == 0:
        raise SplitError(f"{data / 'poses.csv'} holds no frames: run `camera-pose align` "
                         "(or the whole `dataset`) again")
    order = np.argsort(poses.stamps_ns)
    poses = poses.subset(order)
    shares = (config.train, config.validation, 0.0 if test_poses else config.test)
    t = (poses.stamps_ns - poses.stamps_ns[0]) / 1e9
    # a short walk gets shorter blocks, so that even the smallest split gets whole blocks
    smallest = min(s for s in shares if s > 0) / sum(shares)
    min_blocks = int(np.ceil(1.0 / smallest)) + 1
    block_s = min(config.block_seconds, max(t[-1], 1e-9) / min_blocks) if len(t) else 1.0
    if block_s < config.block_seconds:
        log.info("split: walk of %.1f s; blocks of %.2f s instead of %.1f s", t[-1], block_s,
                 config.block_seconds)
    block = np.floor(t / block_s).astype(int)
    _, block = np.unique(block, return_inverse=True)
    n_blocks = int(block.max()) + 1 if len(block) else 0
    needed = sum(s > 0 for s in shares)
    if n_blocks < needed:
        raise SplitError(
            f"{len(poses)} frames make {n_blocks} block(s) of {block_s:.2f} s; need "
            f"at least {needed}: record a longer walk"
        )
    split_of_block = assign_blocks(n_blocks, shares)
    label = split_of_block[block]
    keep = np.ones(len(poses), bool)
    change = np.flatnonzero(np.diff(label) != 0) + 1  # first frame of a new split's block
    for c in change:
        keep[max(0, c - config.gap_frames // 2): c + (config.gap_frames + 1) // 2] = False
    tables = {name: poses.subset(np.flatnonzero((label == k) & keep))
              for k, name in enumerate(SPLITS)}
    if test_poses is not None:
        other = read_poses(test_poses)
        if other.images is None:
            raise SplitError(f"{test_poses} has no image column")
        other_images = Path(test_poses).resolve().parent / "images"
        rel = [os.path.relpath(other_images / im, (data / "images").resolve())
               for im in other.images]
        tables["test"] = PoseTable(other.stamps_ns, other.positions_N3, other.quats_wxyz_N4, rel)
    for name, table in tables.items():
        if len(table) == 0:
            raise SplitError(
                f"split '{name}' is empty ({len(poses)} frames, {n_blocks} blocks): lower "
                "block_seconds or gap_frames"
            )
    for name, table in tables.items():
        write_poses(data / f"{name}.csv", table)
    log.info("split: %s", {k: len(v) for k, v in tables.items()})
    return data
