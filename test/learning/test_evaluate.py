"""camera_pose_ros.learning.evaluate on a dataset folder written by hand (no SfM, no training):
a tiny random network, a few frames, and where they stand relative to the mapped views."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from camera_pose_ros.io.posecsv import PoseTable, read_poses, write_poses
from camera_pose_ros.learning.evaluate import evaluate
from test.conftest import write_random_checkpoint

LEVEL_X = [0.5, -0.5, 0.5, -0.5]  # optical axis along +x
LEVEL_MINUS_X = [0.5, 0.5, -0.5, -0.5]  # optical axis along -x


@pytest.fixture
def dataset(tmp_path):
    """Five training frames along y = 3 looking +x; three test frames: two beside them (one
    looking the other way), one 5 m from any."""
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    pos = np.array([[1, 3, 1.5], [2, 3, 1.5], [3, 3, 1.5], [4, 3, 1.5], [5, 3, 1.5],
                    [2.3, 3, 1.5], [4, 3.4, 1.5], [10, 3, 1.5]], float)
    quats = np.array([LEVEL_X] * 6 + [LEVEL_MINUS_X, LEVEL_X], float)
    names = [f"{i:06d}.png" for i in range(8)]
    for name in names:
        cv2.imwrite(str(data / "images" / name), rng.integers(0, 256, (48, 64, 3), np.uint8))
    stamps = (1_000_000_000 + np.arange(8) * 100_000_000).astype(np.int64)
    write_poses(data / "poses.csv", PoseTable(stamps, pos, quats, names))
    write_poses(data / "train.csv", PoseTable(stamps[:5], pos[:5], quats[:5], names[:5]))
    write_poses(data / "test.csv", PoseTable(stamps[5:], pos[5:], quats[5:], names[5:]))
    return data


def test_evaluate_gives_each_frame_its_distance_to_the_nearest_mapped_view(dataset, tmp_path):
    model = write_random_checkpoint(tmp_path / "model.pt", seed=0)
    out = evaluate(model, dataset, split="test", device="cpu", progress=False)
    pred = read_poses(out.parent / "predictions_test.csv")
    # measured from the true poses to the training frames (the split's own are left out)
    dist = [float(v) for v in pred.extra["nearest_view_m"]]
    assert dist == pytest.approx([0.3, 0.4, 5.0], abs=1e-3)
    angle = [float(v) for v in pred.extra["nearest_view_angle_deg"]]
    assert angle == pytest.approx([0.0, 180.0, 0.0], abs=0.01)
    same_way = pred.extra["nearest_same_way_view_m"]
    assert float(same_way[0]) == pytest.approx(0.3, abs=1e-3) and same_way[1] == "inf"
    m = json.loads(out.read_text())
    near = m["nearest_view"]
    assert near["measured_from"] == "ground truth" and near["mapped_views"] == 5
    assert near["frames_near"] == 2 and near["frames_far"] == 1
    assert near["share_beyond"] == pytest.approx(1 / 3)
    err = np.linalg.norm(pred.positions_N3 - read_poses(dataset / "test.csv").positions_N3,
                         axis=1)
    assert near["median_position_error_near_m"] == pytest.approx(np.median(err[:2]), abs=1e-5)
    assert near["median_position_error_far_m"] == pytest.approx(err[2], abs=1e-5)


class TrueRefiner:
    """Refines every frame onto its true pose (the frames come in split order)."""

    def __init__(self, truth: np.ndarray) -> None:
        self.truth, self.i = truth, 0

    def refine(self, image_rgb, position, quat_wxyz, covariance, camera=None, exclude=()):
        from camera_pose_ros.runtime.refine import RefineOutcome

        t = self.truth[self.i]
        self.i += 1
        return RefineOutcome(True, t[:3].copy(), t[3:].copy(), covariance * 0.01,
                             inliers=100, latency_s=0.001)


def test_refine_mode_splits_the_refined_errors_near_and_far_from_the_map(dataset, tmp_path):
    model = write_random_checkpoint(tmp_path / "model.pt", seed=0)
    test = read_poses(dataset / "test.csv")
    truth = np.concatenate([test.positions_N3, test.quats_wxyz_N4], 1)
    out = evaluate(model, dataset, split="test", device="cpu", progress=False,
                   refiner=TrueRefiner(truth))
    m = json.loads(out.read_text())
    ref = m["modes"]["refine"]["nearest_view"]
    assert ref["frames_near"] == 2 and ref["median_position_error_near_m"] == pytest.approx(
        0.0, abs=1e-6)
    assert m["modes"]["regress"]["nearest_view"]["median_m"] == pytest.approx(0.4, abs=1e-3)
    refined = read_poses(out.parent / "predictions_test_refined.csv")
    assert [float(v) for v in refined.extra["nearest_view_m"]] == pytest.approx(
        [0.3, 0.4, 5.0], abs=1e-3)
