"""camera_pose_ros.runtime.batch: ``camera-pose localize`` as a batch loop over a Localizer.

No DDS and no training: a tiny random network (``write_random_checkpoint``), frames made in
memory or written to a folder, a floor plan built here and a stand-in refiner.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from camera_pose_ros.cli import main
from camera_pose_ros.errors import CheckpointError, InputDataError
from camera_pose_ros.io.floorplan import FloorPlan
from camera_pose_ros.io.posecsv import PoseTable, read_poses, write_poses
from camera_pose_ros.learning.evaluate import COV_COLUMNS
from camera_pose_ros.runtime.batch import localization_metrics_path, localize_source
from camera_pose_ros.runtime.localizer import Localizer
from camera_pose_ros.runtime.refine import RefineConfig, RefineOutcome
from test.conftest import write_random_checkpoint

STRIP_X = 12.25  # centre x of the one walkable column of cells of strip_plan()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny random PoseNet: its poses land around (4, 3) m, metres from the strip."""
    return write_random_checkpoint(tmp_path_factory.mktemp("batch") / "model.pt", seed=0)


def strip_plan() -> FloorPlan:
    """20 x 20 m of wall at 0.5 m, origin (-5, -5), walkable only where 12 <= x < 12.5."""
    occ = np.full((40, 40), 100, np.int8)
    occ[:, 34] = 0
    return FloorPlan(occ, 0.5, (-5.0, -5.0))


def frames(n: int, seed: int = 0) -> list[tuple[int, np.ndarray]]:
    """``n`` random 64x48 RGB frames, 0.1 s apart (distinct images, distinct poses)."""
    rng = np.random.default_rng(seed)
    return [(1_000_000_000 + i * 100_000_000, rng.integers(0, 256, (48, 64, 3), np.uint8))
            for i in range(n)]


class Frames:
    """A frame source in memory (what FrameSource gives: ``frames()``)."""

    def __init__(self, items: list[tuple[int, np.ndarray]]) -> None:
        self.items = items

    def frames(self):
        return iter(self.items)


def write_ground_truth(path: Path, stamps_ns: list[int]) -> Path:
    """Ground truth at the given stamps: every pose at (4, 3, 1.5), identity rotation."""
    n = len(stamps_ns)
    return write_poses(path, PoseTable(np.array(stamps_ns, np.int64),
                                       np.tile([4.0, 3.0, 1.5], (n, 1)),
                                       np.tile([1.0, 0.0, 0.0, 0.0], (n, 1))))


def test_cli_localize_with_a_floorplan_puts_every_pose_on_a_walkable_cell(
        checkpoint, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for stamp_ns, rgb in frames(5):
        cv2.imwrite(str(folder / f"{stamp_ns / 1e9:.1f}.png"), rgb[:, :, ::-1])
    plan = strip_plan()
    plan.save(tmp_path / "floor.yaml")
    base = ["-q", "localize", "--checkpoint", str(checkpoint), "--images", str(folder),
            "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "free.csv")]) == 0
    assert main([*base, "--out", str(tmp_path / "snapped.csv"), "--floorplan",
                 str(tmp_path / "floor.yaml")]) == 0
    free, snapped = read_poses(tmp_path / "free.csv"), read_poses(tmp_path / "snapped.csv")
    assert len(free) == len(snapped) == 5
    assert not plan.is_walkable(free.positions_N3[:, :2]).any()  # the network misses the strip
    assert "snapped" not in free.extra  # no floor plan: no snapping, columns as before
    assert plan.is_walkable(snapped.positions_N3[:, :2]).all()
    assert snapped.extra["snapped"] == ["1"] * 5
    # the nearest walkable cell centre: x of the strip, the row of the regressed y
    np.testing.assert_allclose(snapped.positions_N3[:, 0], STRIP_X)
    assert np.all(np.abs(snapped.positions_N3[:, 1] - free.positions_N3[:, 1]) <= 0.25)
    np.testing.assert_allclose(snapped.positions_N3[:, 2], free.positions_N3[:, 2], atol=1e-6)
    np.testing.assert_allclose(snapped.quats_wxyz_N4, free.quats_wxyz_N4, atol=1e-6)
    np.testing.assert_array_equal(snapped.stamps_ns, free.stamps_ns)


def test_cli_localize_refuses_an_unreadable_floorplan(checkpoint, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "0.png"), frames(1)[0][1])
    (tmp_path / "floor.yaml").write_text("image: nowhere.pgm\nresolution: 0.05\n")
    rc = main(["-q", "localize", "--checkpoint", str(checkpoint), "--images", str(folder),
               "--device", "cpu", "--out", str(tmp_path / "p.csv"), "--floorplan",
               str(tmp_path / "floor.yaml")])
    err = capsys.readouterr().err
    assert rc == 2 and "floor.yaml" in err and "Traceback" not in err
    assert not (tmp_path / "p.csv").exists()


def _poisoned(predict, frames_to_spoil: dict[int, str]):
    """``predict`` with the given frames (counted over all calls) spoiled: a NaN position
    (``nan``), an infinite covariance (``inf_cov``) or a zero quaternion (``zero_q``)."""
    seen = 0

    def spoiled(images):
        nonlocal seen
        poses, covs = predict(images)
        for i in range(len(poses)):
            how = frames_to_spoil.get(seen + i)
            if how == "nan":
                poses[i, 0] = np.nan
            elif how == "inf_cov":
                covs[i, 2, 2] = np.inf
            elif how == "zero_q":
                poses[i, 3:] = 0.0
        seen += len(poses)
        return poses, covs
    return spoiled


def test_rejected_predictions_are_skipped_counted_and_reported(checkpoint, tmp_path, caplog):
    loc = Localizer(checkpoint, device="cpu")
    items = frames(7)
    # batches of 4: three frames of the first batch, one of the second
    loc.predictor.predict = _poisoned(loc.predictor.predict,
                                      {0: "inf_cov", 1: "nan", 3: "zero_q", 4: "nan"})
    gt = write_ground_truth(tmp_path / "gt.csv", [s for s, _ in items])
    with caplog.at_level(logging.WARNING, logger="camera_pose_ros.runtime.batch"):
        report = localize_source(loc, Frames(items), tmp_path / "p.csv", batch=4,
                                 ground_truth=gt, progress=False)
    table = read_poses(report.csv)
    kept = [items[i][0] for i in (2, 5, 6)]
    np.testing.assert_array_equal(table.stamps_ns, kept)
    assert (report.frames, report.rejected, report.localized) == (7, 4, 3)
    assert np.all(np.isfinite(table.positions_N3))
    np.testing.assert_allclose(np.linalg.norm(table.quats_wxyz_N4, axis=1), 1.0, atol=1e-6)
    m = json.loads(localization_metrics_path(report.csv).read_text())
    assert m["frames_rejected"] == 4 and m["frames_localized"] == 3 and m["frames"] == 3
    assert m["mode"] == "regress" and "frames_snapped" not in m
    assert any("4 of 7 frames skipped" in r.getMessage() for r in caplog.records)


def test_every_prediction_rejected_is_an_error_and_writes_nothing(checkpoint, tmp_path):
    loc = Localizer(checkpoint, device="cpu")
    loc.predictor.predict = _poisoned(loc.predictor.predict, {i: "nan" for i in range(3)})
    with pytest.raises(CheckpointError, match="not finite for all 3 frames"):
        localize_source(loc, Frames(frames(3)), tmp_path / "p.csv", progress=False)
    assert not (tmp_path / "p.csv").exists()


def test_an_empty_source_is_an_input_error(checkpoint, tmp_path):
    with pytest.raises(InputDataError, match="no frames"):
        localize_source(Localizer(checkpoint, device="cpu"), Frames([]), tmp_path / "p.csv",
                        progress=False)
    assert not (tmp_path / "p.csv").exists()


class StubRefiner:
    """Accepts the frames whose first pixel is even, moving them to (1, 2, 0.5) + index."""

    config = RefineConfig()

    def __init__(self) -> None:
        self.cameras: list[object] = []

    def refine(self, image_rgb, position, quat_wxyz, covariance, camera=None):
        self.cameras.append(camera)
        index = int(image_rgb[0, 0, 0]) // 2
        if int(image_rgb[0, 0, 0]) % 2:
            return RefineOutcome(False, position, quat_wxyz, covariance,
                                 reason="too few inliers", inliers=7)
        return RefineOutcome(True, np.array([1.0, 2.0, 0.5]) + index,
                             np.array([1.0, 0.0, 0.0, 0.0]), np.eye(6) * 1e-4, inliers=100)


def test_refine_mode_writes_refined_poses_and_the_refined_and_inliers_columns(
        checkpoint, tmp_path):
    items = frames(6)
    for i, (_, rgb) in enumerate(items):
        rgb[0, 0, 0] = i  # even frames are accepted by StubRefiner
    loc = Localizer(checkpoint, device="cpu")
    regressed = read_poses(localize_source(loc, Frames(items), tmp_path / "r.csv",
                                           progress=False).csv)
    assert not {"refined", "inliers"} & set(regressed.extra)
    loc.refiner = StubRefiner()
    camera = object()
    gt = write_ground_truth(tmp_path / "gt.csv", [s for s, _ in items])
    report = localize_source(loc, Frames(items), tmp_path / "p.csv", batch=4, camera=camera,
                             ground_truth=gt, progress=False)
    table = read_poses(report.csv)
    assert set(COV_COLUMNS) <= set(table.extra)
    assert table.extra["refined"] == ["1", "0", "1", "0", "1", "0"]
    assert table.extra["inliers"] == ["100", "7", "100", "7", "100", "7"]
    assert report.refined == 3 and loc.refiner.cameras == [camera] * 6
    for i in (0, 2, 4):  # the refiner's pose
        np.testing.assert_allclose(table.positions_N3[i], np.array([1.0, 2.0, 0.5]) + i // 2)
    for i in (1, 3, 5):  # refinement failed: the regressed pose
        np.testing.assert_allclose(table.positions_N3[i], regressed.positions_N3[i], atol=1e-6)
    m = json.loads(report.metrics.read_text())
    assert m["mode"] == "refine" and m["refined_share"] == pytest.approx(0.5)
    assert m["accepted_frames"] == 3
    # the regressed poses as the node would publish them, before their own refinement
    pub = m["regressed_as_published"]
    assert pub["frames"] == 6 and {"outside_99_any", "median_position_m"} <= set(pub)


def test_localize_gives_each_pose_its_distance_to_the_nearest_mapped_view(checkpoint,
                                                                         tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    items = frames(6)
    for stamp_ns, rgb in items:
        cv2.imwrite(str(folder / f"{stamp_ns / 1e9:.1f}.png"), rgb[:, :, ::-1])
    level = np.tile([0.5, -0.5, 0.5, -0.5], (2, 1))  # optical axis along +x
    mapped = np.array([[4.0, 3.0, 1.5], [20.0, 3.0, 1.5]])
    write_poses(tmp_path / "mapped.csv", PoseTable(np.array([1, 2], np.int64), mapped, level,
                                                   ["a.jpg", "b.jpg"]))
    # the first three frames were taken beside a mapped view, the last three 8 m from any
    truth = np.repeat([[4.0, 3.0, 1.5], [12.0, 3.0, 1.5]], 3, axis=0)
    write_poses(tmp_path / "gt.csv", PoseTable(np.array([s for s, _ in items], np.int64),
                                               truth, np.tile([1.0, 0, 0, 0], (6, 1))))
    base = ["-q", "localize", "--checkpoint", str(checkpoint), "--images", str(folder),
            "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "p.csv"), "--map",
                 str(tmp_path / "mapped.csv"), "--ground-truth", str(tmp_path / "gt.csv")]) == 0
    pred = read_poses(tmp_path / "p.csv")
    expect = np.linalg.norm(pred.positions_N3[:, None] - mapped[None], axis=2).min(1)
    got = np.array([float(v) for v in pred.extra["nearest_view_m"]])
    np.testing.assert_allclose(got, expect, atol=1e-3)
    assert all(0.0 <= float(v) <= 180.0 for v in pred.extra["nearest_view_angle_deg"])
    m = json.loads(localization_metrics_path(tmp_path / "p.csv").read_text())
    near = m["nearest_view"]
    assert near["mapped_views"] == 2 and near["from_estimate"]["median_m"] == pytest.approx(
        np.median(expect), abs=1e-6)
    at_truth = near["from_ground_truth"]
    assert at_truth["median_m"] == pytest.approx(4.0) and at_truth["share_beyond"] == 0.5
    assert at_truth["frames_near"] == at_truth["frames_far"] == 3
    err = np.linalg.norm(pred.positions_N3 - truth, axis=1)
    assert at_truth["median_position_error_far_m"] == pytest.approx(np.median(err[3:]),
                                                                     abs=1e-5)
    # no map beside the checkpoint and none named: no distances, the columns as before
    assert main([*base, "--out", str(tmp_path / "q.csv")]) == 0
    assert "nearest_view_m" not in read_poses(tmp_path / "q.csv").extra
    # a map named that is not there is an error, before any frame
    assert main([*base, "--out", str(tmp_path / "r.csv"), "--map",
                 str(tmp_path / "nowhere.npz")]) == 2
    assert not (tmp_path / "r.csv").exists()
