"""camera_pose_ros.dataset.split: contiguous blocks, never interleaved frames."""

from __future__ import annotations

import numpy as np
import pytest

from camera_pose_ros.dataset.split import SplitConfig, assign_blocks, split_dataset
from camera_pose_ros.errors import InputDataError, SplitError
from camera_pose_ros.geometry import quat_wxyz_from_rotmat
from camera_pose_ros.io.posecsv import PoseTable, read_poses, write_poses


def test_block_assignment_is_contiguous_and_spread():
    labels = assign_blocks(20, (0.7, 0.15, 0.15))
    assert np.bincount(labels, minlength=3).tolist() == [14, 3, 3]
    assert labels[0] == 0
    # validation and test blocks are spread along the walk, not bunched at the end
    assert np.flatnonzero(labels == 2).max() - np.flatnonzero(labels == 2).min() >= 8


def _poses_csv(data, n=300, rate=10.0):
    rot = quat_wxyz_from_rotmat(np.repeat(np.eye(3)[None], n, 0))
    table = PoseTable(10**12 + np.arange(n) * int(1e9 / rate),
                      np.c_[np.arange(n) * 0.1, np.zeros((n, 2))],
                      rot, [f"{i:06d}.jpg" for i in range(n)])
    write_poses(data / "poses.csv", table)
    return table


def test_splits_are_blocks_never_interleaved(tmp_path):
    _poses_csv(tmp_path)
    split_dataset(tmp_path, SplitConfig(block_seconds=3.0, gap_frames=2))
    parts = {k: read_poses(tmp_path / f"{k}.csv") for k in ("train", "validation", "test")}
    idx = {k: np.array([int(n[:6]) for n in v.images]) for k, v in parts.items()}
    assert set(idx["train"]).isdisjoint(idx["test"]) and set(idx["train"]).isdisjoint(
        idx["validation"])
    # every test frame's neighbours within one frame are not training frames
    train = set(idx["train"])
    assert not any((i - 1) in train or (i + 1) in train for i in idx["test"])
    # test frames form runs of whole blocks (>= 25 frames), not single frames
    runs = np.split(idx["test"], np.flatnonzero(np.diff(idx["test"]) > 1) + 1)
    assert min(len(r) for r in runs) >= 25
    total = sum(len(v) for v in parts.values())
    assert 0.6 < len(parts["train"]) / total < 0.8


def test_split_with_separate_test_session(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    _poses_csv(a)
    other = _poses_csv(b, n=50)
    split_dataset(a, SplitConfig(block_seconds=3.0), test_poses=b / "poses.csv")
    test = read_poses(a / "test.csv")
    assert len(test) == len(other)
    assert test.images[0] == "../../b/images/000000.jpg"
    assert len(read_poses(a / "train.csv")) + len(read_poses(a / "validation.csv")) > 250


def test_split_errors(tmp_path):
    _poses_csv(tmp_path, n=1)
    with pytest.raises(SplitError, match="need at least 3"):
        split_dataset(tmp_path)
    _poses_csv(tmp_path, n=3)
    with pytest.raises(SplitError, match="is empty"):
        split_dataset(tmp_path)
    assert not (tmp_path / "train.csv").exists()  # nothing written when a split fails
    (tmp_path / "poses.csv").write_text("stamp,x,y\n")
    with pytest.raises(InputDataError, match="missing column"):
        split_dataset(tmp_path)


def test_short_walk_gets_shorter_blocks(tmp_path):
    _poses_csv(tmp_path, n=100)  # 10 s: fewer than the 8 blocks of 4 s the shares need
    split_dataset(tmp_path)
    sizes = [len(read_poses(tmp_path / f"{k}.csv")) for k in ("train", "validation", "test")]
    assert min(sizes) >= 5 and sizes[0] > sizes[1]
