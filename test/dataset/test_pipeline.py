"""End to end on a small synthetic building: bag -> frames -> pycolmap SfM -> alignment -> splits.

Asserts the accuracy the dataset builder promises (the full-size figures are in the README):
>= 95% of selected frames registered, alignment RMS < 5 cm, recovered camera poses within
5 cm and 1 degree (median) of ground truth.
"""

from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np
import pytest

from camera_pose_ros.dataset.frames import FrameSource, KeyframeConfig, extract_frames
from camera_pose_ros.dataset.sfm import SfMConfig, run_sfm
from camera_pose_ros.errors import ConfigError, SfMError
from camera_pose_ros.io.floorplan import FloorPlan
from camera_pose_ros.io.posecsv import read_poses
from camera_pose_ros.metrics import error_summary, match_by_stamp

pytestmark = pytest.mark.slow


@pytest.fixture
def built(sfm_building):
    """The session's small synthetic building and its dataset (see conftest)."""
    return sfm_building


def test_registration_alignment_and_pose_accuracy(built):
    synth, data = built
    report = json.loads((data / "report.json").read_text())
    assert report["frames"] >= 100
    assert report["registration_rate"] >= 0.95, report
    assert report["alignment_rms_m"] < 0.05, report
    # independent check of the written poses against ground truth
    poses = read_poses(data / "poses.csv")
    gt = read_poses(synth / "gt_mapping.csv")
    ip, ig = match_by_stamp(poses.stamps, gt.stamps, max_dt=1e-6)
    assert len(ip) == len(poses)
    err = error_summary(poses.positions_N3[ip], poses.quats_wxyz_N4[ip], gt.positions_N3[ig],
                        gt.quats_wxyz_N4[ig])
    assert err["median_position_m"] < 0.05, err
    assert err["median_rotation_deg"] < 1.0, err
    assert report["pose_error_vs_ground_truth"]["median_position_m"] == pytest.approx(
        err["median_position_m"])


def test_outputs_and_splits(built):
    _, data = built
    for name in ("frames.csv", "alignment.json", "poses.csv", "train.csv", "validation.csv",
                 "test.csv", "report.json", "trajectory.png", "sfm/model", "sfm/summary.json"):
        assert (data / name).exists(), name
    img = cv2.imread(str(data / "trajectory.png"))
    assert img is not None and img.shape[0] > 200
    sizes = json.loads((data / "report.json").read_text())["splits"]
    assert min(sizes.values()) > 0 and sizes["train"] > sizes["test"]
    train = set(read_poses(data / "train.csv").images)
    assert train.isdisjoint(read_poses(data / "test.csv").images)


def test_the_floor_plan_is_saved_into_the_dataset(built):
    synth, data = built
    src, kept = FloorPlan.load(synth / "floorplan.yaml"), FloorPlan.load(data / "floorplan.yaml")
    assert kept.resolution == src.resolution
    np.testing.assert_allclose(kept.origin[:2], src.origin[:2])
    np.testing.assert_array_equal(kept.walkable, src.walkable)
    assert (data / "floorplan.pgm").is_file()


def test_rerun_skips_finished_stages(built, venv_bin):
    synth, data = built
    model_mtime = (data / "sfm" / "model").stat().st_mtime_ns
    proc = subprocess.run(
        [str(venv_bin / "camera-pose"), "sfm", "--data", str(data)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (data / "sfm" / "model").stat().st_mtime_ns == model_mtime


def test_sfm_failure_is_a_clear_error(tmp_path):
    """Frames that share nothing (noise) cannot be reconstructed: a named error, no model."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        noise = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
        cv2.imwrite(str(imgs / f"{i:03d}.png"), noise)
    data = tmp_path / "data"
    extract_frames(FrameSource(images=imgs), data,
                   KeyframeConfig(min_time_step=0, blur_ratio=0.0, jpeg_quality=100),
                   progress=False)
    with pytest.raises(SfMError, match="registered"):
        run_sfm(data, SfMConfig(matcher="exhaustive"))
    assert not (data / "poses.csv").exists()


def test_the_sift_budget_grows_with_the_frame_size_and_is_reported(built):
    _, data = built
    cfg = SfMConfig()
    assert cfg.sift_budget(320, 240) == cfg.sift_budget(640, 480) == 1024
    assert cfg.sift_budget(1280, 960) == 4096
    assert cfg.sift_budget(4000, 3000) == cfg.max_num_features_cap  # a 12 MP photo
    with pytest.raises(ConfigError, match="max_num_features"):
        SfMConfig(max_num_features=10_000)
    report = json.loads((data / "report.json").read_text())
    assert report["sift_max_features"] == 1024  # the session building is 320x240


@pytest.mark.parametrize("reference", ["tf", "pose"])
def test_alignment_from_the_bag_alone_matches_the_ground_truth(built, venv_bin, tmp_path,
                                                               reference):
    """No control points: the robot's /tf (or /amcl_pose), noisy and jumping, aligns the map."""
    import shutil

    synth, data = built
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    for stale in ("poses.csv", "alignment.json", "priors.csv", "priors.json"):
        (copy / stale).unlink(missing_ok=True)
    proc = subprocess.run([str(venv_bin / "camera-pose"), "-q", "align", "--data", str(copy),
                           "--reference", reference], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((copy / "alignment.json").read_text())
    refs = report["robot_references"]
    assert refs["source"] == reference and not report["control_points"]
    assert refs["rejected"] > 0 and refs["rejected_time_ranges_s"]  # the injected jumps
    poses, gt = read_poses(copy / "poses.csv"), read_poses(synth / "gt_mapping.csv")
    ip, ig = match_by_stamp(poses.stamps_ns, gt.stamps_ns, max_dt=1e-3)
    err = error_summary(poses.positions_N3[ip], poses.quats_wxyz_N4[ip], gt.positions_N3[ig],
                        gt.quats_wxyz_N4[ig])
    # a 11 s walk of a 0.7-scale building: few independent AMCL errors (the full-size
    # figures are the benchmark's)
    assert err["median_position_m"] < 0.08 and err["median_rotation_deg"] < 0.5, err


def test_a_bag_without_tf_or_control_points_is_refused_before_any_work(tmp_path, venv_bin):
    from camera_pose_ros.dataset.synth import write_synthetic_building

    synth = write_synthetic_building(tmp_path / "s", frames=10, query_frames=1, width=64,
                                     height=48, progress=False, robot=None)
    proc = subprocess.run([str(venv_bin / "camera-pose"), "dataset", "--bag",
                           str(synth / "mapping"), "--out", str(tmp_path / "d")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--control-points" in proc.stderr and "/amcl_pose" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "d" / "images").exists()  # refused before extracting frames
