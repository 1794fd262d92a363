"""Training, evaluation, localization and export on a small synthetic building.

The dataset is made from the synthetic building's ground truth (frames stage + exact poses +
splits), so these tests exercise learning without waiting for SfM.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from camera_pose_ros.dataset.frames import FrameSource, KeyframeConfig, extract_frames
from camera_pose_ros.dataset.split import SplitConfig, split_dataset
from camera_pose_ros.dataset.synth import write_synthetic_building
from camera_pose_ros.errors import (
    CheckpointError,
    ConfigError,
    InputDataError,
    SplitError,
    TrainingError,
)
from camera_pose_ros.io.posecsv import PoseTable, read_poses, write_poses
from camera_pose_ros.learning.checkpoint import load_checkpoint
from camera_pose_ros.learning.evaluate import COV_COLUMNS, evaluate
from camera_pose_ros.learning.export import export_model
from camera_pose_ros.learning.train import load_train_config, train
from camera_pose_ros.metrics import match_by_stamp
from camera_pose_ros.runtime.batch import localize_source
from camera_pose_ros.runtime.localizer import Localizer

pytestmark = pytest.mark.slow
REPO_CONFIG = Path(__file__).resolve().parents[2] / "config"

TINY = dict(backbone="mobilenet_v3_small", pretrained="none", hidden=64, input_height=48,
            input_width=64, batch_size=8, mc_samples=8, device="cpu",
            early_stopping_patience=100)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A synthetic building's dataset with ground-truth poses (no SfM)."""
    root = tmp_path_factory.mktemp("learn")
    synth = write_synthetic_building(root / "synth", seed=2, frames=90, query_frames=12,
                                     width=128, height=96, progress=False)
    data = root / "data"
    extract_frames(FrameSource(bag=synth / "mapping"), data,
                   KeyframeConfig(min_time_step=0.0, min_change=0.0, blur_ratio=0.0),
                   progress=False)
    gt = read_poses(synth / "gt_mapping.csv")
    from camera_pose_ros.dataset.frames import read_frames_csv

    names, stamps = read_frames_csv(data / "frames.csv")
    ig, iname = match_by_stamp(gt.stamps, stamps / 1e9, max_dt=1e-6)
    write_poses(data / "poses.csv", PoseTable(gt.stamps_ns[ig], gt.positions_N3[ig],
                                              gt.quats_wxyz_N4[ig], [names[i] for i in iname]))
    split_dataset(data, SplitConfig(block_seconds=1.0))
    return synth, data


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    _, data = dataset
    out = tmp_path_factory.mktemp("run")
    cfg = load_train_config(None, epochs=12, lr=3e-3, **TINY)
    return train(data, cfg, out, progress=False)


def test_training_lowers_the_loss_and_writes_a_complete_run(trained):
    run = trained.parent
    rows = (run / "metrics.csv").read_text().splitlines()
    losses = [float(r.split(",")[2]) for r in rows[1:]]
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2])
    assert (run / "loss_curve.png").stat().st_size > 1000
    data = torch.load(trained, weights_only=True)
    assert data["pretrained"] is False
    assert data["model"]["backbone"] == "mobilenet_v3_small"
    assert data["calibration"]["k_pos"] > 0 and data["calibration"]["samples"] == 8
    assert data["provenance"]["splits"]["train"] > 0
    assert "validation" in data["metrics"]


def test_evaluate_reports_errors_baseline_and_calibration(trained, dataset):
    _, data = dataset
    path = evaluate(trained, data, split="test", device="cpu", progress=False)
    m = json.loads(path.read_text())
    for key in ("median_position_m", "mean_position_m", "median_rotation_deg",
                "within_5cm_5deg", "within_25cm_2deg", "within_50cm_5deg", "within_100cm_10deg",
                "baseline_mean_pose", "uncertainty"):
        assert key in m
    assert 0 <= m["uncertainty"]["position_inside_1sigma"] <= 1
    for fig in ("error_cdf_test.png", "trajectory_test.png", "predictions_test.csv"):
        assert (path.parent / fig).exists()


def test_localize_bag_writes_predictions_with_covariance(trained, dataset, venv_bin, tmp_path):
    synth, _ = dataset
    out = tmp_path / "pred.csv"
    proc = subprocess.run([str(venv_bin / "camera-pose"), "-q", "localize", "--checkpoint",
                           str(trained), "--bag", str(synth / "query"), "--out", str(out),
                           "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    pred = read_poses(out)
    gt = read_poses(synth / "gt_query.csv")
    assert np.array_equal(pred.stamps_ns, gt.stamps_ns)
    assert set(COV_COLUMNS) <= set(pred.extra)
    var_x = np.array([float(v) for v in pred.extra["cov_00"]])
    assert np.all(var_x > 0)
    direct = localize_source(Localizer(trained, device="cpu"), FrameSource(bag=synth / "query"),
                             tmp_path / "p2.csv", progress=False).csv
    assert np.allclose(read_poses(direct).positions_N3, pred.positions_N3, atol=1e-5)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_gives_the_checkpoint_poses(trained, tmp_path, fmt):
    loaded = load_checkpoint(trained)
    x = torch.rand(3, 3, 48, 64)
    mean = torch.tensor(loaded.transform.mean).view(1, 3, 1, 1)
    std = torch.tensor(loaded.transform.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = loaded.model((x - mean) / std).numpy()
    out = export_model(trained, fmt, tmp_path / f"model.{fmt}")
    if fmt == "torchscript":
        got = torch.jit.load(str(out))(x).detach().numpy()
    else:
        import onnxruntime

        sess = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = sess.run(["poses_B7"], {"images_B3HW": x.numpy()})[0]
    assert np.allclose(got, expected, atol=1e-4)


def test_mapnet_trains_on_tuples(dataset, tmp_path):
    _, data = dataset
    cfg = load_train_config(None, model="mapnet", epochs=2, steps=3, skip=1,
                            rotation_augment_deg=8.0, augment_copies=1, **TINY)
    path = train(data, cfg, tmp_path, progress=False)
    assert torch.load(path, weights_only=True)["model"]["kind"] == "mapnet"


DDP_CHECK = """
import sys
from pathlib import Path

import torch

from camera_pose_ros.learning.train import _Run, load_train_config

data, out = Path(sys.argv[1]), Path(sys.argv[2])
cfg = load_train_config(None, model="mapnet", freeze_backbone=False, steps=2, skip=1,
                        backbone="mobilenet_v3_small", pretrained="none", hidden=32,
                        input_height=48, input_width=64, batch_size=4, epochs=1, device="cpu")
run = _Run(cfg, data, out, progress=False)
run.epoch_full(0, 0)
flat = torch.cat([p.detach().flatten() for p in [*run.model.parameters(),
                                                 *run.loss.parameters()]])
# each replica writes its own weights: a collective on Python tensors right before exit
# (all_gather) lets gloo's worker thread free them while the interpreter finalizes, which
# aborts the process (pytorch/pytorch#179291)
torch.save({"world": run.world, "weights": flat}, out / f"replica{run.rank}.pt")
torch.distributed.destroy_process_group()
"""


def test_torchrun_keeps_the_replicas_in_step(dataset, tmp_path, venv_bin):
    """Two DistributedDataParallel processes (gloo, CPU) end an epoch with equal weights."""
    _, data = dataset
    script = tmp_path / "ddp_check.py"
    script.write_text(DDP_CHECK)
    proc = subprocess.run([str(venv_bin / "torchrun"), "--nproc_per_node=2", str(script),
                           str(data), str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    replicas = [torch.load(tmp_path / f"replica{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world"] for r in replicas] == [2, 2]
    assert torch.equal(replicas[0]["weights"], replicas[1]["weights"])


def test_full_fine_tuning_and_resume(dataset, tmp_path):
    _, data = dataset
    cfg = load_train_config(None, freeze_backbone=False, epochs=2, **TINY)
    train(data, cfg, tmp_path, progress=False)
    first = (tmp_path / "metrics.csv").read_text().splitlines()
    other = load_train_config(None, freeze_backbone=False, epochs=2, weight_decay=0.05, **TINY)
    with pytest.raises(ConfigError, match="another config: weight_decay"):
        train(data, other, tmp_path, resume=True, progress=False)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 2
    again = train(data, cfg, tmp_path, resume=True, progress=False)  # already complete
    assert again.exists()
    assert (tmp_path / "metrics.csv").read_text().splitlines() == first
    # more epochs only say where to stop: training goes on from the third
    cfg3 = load_train_config(None, freeze_backbone=False, epochs=3, **TINY)
    train(data, cfg3, tmp_path, resume=True, progress=False)
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[:len(first)] == first and len(rows) == len(first) + 1


def test_non_finite_loss_stops_with_a_clear_error(dataset, tmp_path):
    _, data = dataset
    cfg = load_train_config(None, epochs=30, lr=1e12, loss="mse", **TINY)
    with pytest.raises(TrainingError, match=r"loss 'mse' became .* at step \d+"):
        train(data, cfg, tmp_path, progress=False)
    assert not (tmp_path / "model.pt").exists()


def test_bad_inputs_give_clear_errors(dataset, tmp_path, trained):
    _, data = dataset
    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    (bad / "train.csv").write_text("image,stamp,x,y,z\n000000.jpg,1.0,0,0,0\n")
    with pytest.raises(InputDataError, match="missing column"):
        train(bad, load_train_config(None, **TINY), tmp_path / "r1", progress=False)
    (bad / "train.csv").write_text("image,stamp,x,y,z,qw,qx,qy,qz\n")
    with pytest.raises(SplitError, match="empty"):
        train(bad, load_train_config(None, **TINY), tmp_path / "r2", progress=False)
    with pytest.raises(CheckpointError):
        evaluate(data / "frames.csv", data, progress=False)
