"""Structure-aware training, evaluation, localization, export and bad input, end to end on
the session building (real SfM, its scene labels, real torch training of a tiny model)."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

from camera_pose_ros.dataset.frames import FrameSource
from camera_pose_ros.errors import ConfigError, InputDataError
from camera_pose_ros.io.posecsv import read_poses
from camera_pose_ros.io.scenelabels import SCENE_LABELS
from camera_pose_ros.learning.checkpoint import load_checkpoint, save_checkpoint
from camera_pose_ros.learning.evaluate import evaluate
from camera_pose_ros.learning.export import export_model
from camera_pose_ros.learning.structure import StructureAwareNet
from camera_pose_ros.learning.train import load_train_config, train
from camera_pose_ros.runtime.batch import localize_source
from camera_pose_ros.runtime.localizer import Localizer
from test.conftest import TINY_STRUCTURE, write_random_checkpoint

pytestmark = pytest.mark.slow


def _rows(run) -> list[dict]:
    lines = (run / "metrics.csv").read_text().splitlines()
    keys = lines[0].split(",")
    return [dict(zip(keys, map(float, r.split(",")), strict=True)) for r in lines[1:]]


def test_both_stages_train_and_the_checkpoint_is_complete(structure_checkpoint):
    rows = _rows(structure_checkpoint.parent)
    assert len(rows) == TINY_STRUCTURE["epochs"]
    geometry = [r["train_loss"] for r in rows[:TINY_STRUCTURE["geometry_epochs"]]]
    assert np.mean(geometry[-2:]) < 0.8 * geometry[0]  # the geometry losses fall
    data = torch.load(structure_checkpoint, weights_only=True)
    assert data["model"]["kind"] == "structure_aware"
    lo, hi = data["model"]["depth_range"]
    assert 0 < lo < hi
    calib = data["calibration"]
    assert calib["method"] == "kabsch_residuals" and calib["k_pos"] > 0
    assert calib["pnp"]["method"] == "pnp_reprojection"
    loaded = load_checkpoint(structure_checkpoint)
    assert isinstance(loaded.model, StructureAwareNet)
    # a damaged structure-aware section is refused when saving (nothing written)
    bad = dict(data["model"], depth_range=[2.0, 1.0])
    with pytest.raises(Exception, match="depth_range"):
        save_checkpoint(structure_checkpoint.parent / "bad.pt", loaded.model, model_cfg=bad,
                        input_cfg=data["input"], map_frame="map")
    assert not (structure_checkpoint.parent / "bad.pt").exists()


def test_evaluate_reports_direct_and_scr_pnp_side_by_side(structure_checkpoint, sfm_building,
                                                          tmp_path):
    _, data = sfm_building
    path = evaluate(structure_checkpoint, data, split="test", out=tmp_path, device="cpu",
                    progress=False, scr_pnp=True)
    m = json.loads(path.read_text())
    pnp = m["modes"]["scr-pnp"]
    for key in ("median_position_m", "within_25cm_2deg", "solved_share", "uncertainty",
                "ms_per_frame"):
        assert key in pnp
    assert 0 <= pnp["solved_share"] <= 1
    table = read_poses(tmp_path / "predictions_test_scr_pnp.csv")
    assert set(table.extra["pnp_solved"]) <= {"0", "1"}
    assert np.all(np.isfinite(table.positions_N3))
    # without scr_pnp the stale scr-pnp predictions of the earlier run go
    evaluate(structure_checkpoint, data, split="test", out=tmp_path, device="cpu",
             progress=False)
    assert not (tmp_path / "predictions_test_scr_pnp.csv").exists()


def test_localize_in_scr_pnp_mode_and_bad_mode_for_a_regressor(structure_checkpoint,
                                                               sfm_building, venv_bin,
                                                               tmp_path):
    synth, _ = sfm_building
    out = tmp_path / "pred.csv"
    proc = subprocess.run([str(venv_bin / "camera-pose"), "-q", "localize", "--checkpoint",
                           str(structure_checkpoint), "--bag", str(synth / "query"), "--out",
                           str(out), "--mode", "scr-pnp", "--device", "cpu",
                           "--ground-truth", str(synth / "gt_query.csv")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(out.with_suffix(".metrics.json").read_text())
    assert metrics["mode"] == "scr-pnp" and metrics["frames"] > 0
    regressor = write_random_checkpoint(tmp_path / "posenet.pt")
    proc = subprocess.run([str(venv_bin / "camera-pose"), "localize", "--checkpoint",
                           str(regressor), "--bag", str(synth / "query"), "--out",
                           str(tmp_path / "x.csv"), "--mode", "scr-pnp"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "structure-aware" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    with pytest.raises(ConfigError, match="structure-aware"):
        Localizer(regressor, device="cpu", solver="pnp")


def test_degenerate_or_broken_outputs_never_publish_nan(structure_checkpoint, sfm_building,
                                                        tmp_path):
    synth, _ = sfm_building
    localizer = Localizer(structure_checkpoint, device="cpu")
    net = localizer.predictor.model
    assert isinstance(net, StructureAwareNet)
    rgb = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    with torch.no_grad():  # all weights zero: the Kabsch step still gives a finite pose
        net.weighting[-1].bias.fill_(-1e4)
        est = localizer.localize(rgb)
        assert est is not None and np.all(np.isfinite(est.position))
        assert np.all(np.isfinite(est.covariance))
        net.scene_head[-1].bias.fill_(float("nan"))  # a broken network: rejected, not NaN
        assert localizer.localize(rgb) is None
    pnp = Localizer(structure_checkpoint, device="cpu", solver="pnp")
    with torch.no_grad():  # all scene coordinates in one point: PnP fails, Kabsch stays
        pnp_net = pnp.predictor.model
        assert isinstance(pnp_net, StructureAwareNet)
        for p in pnp_net.scene_head[-1].parameters():
            p.zero_()
        est = pnp.localize(rgb)
    assert est is not None and np.all(np.isfinite(est.position))
    assert not pnp.predictor.last_solved.any()
    got = localize_source(Localizer(structure_checkpoint, device="cpu"),
                          FrameSource(bag=synth / "query"), tmp_path / "q.csv",
                          progress=False).csv
    assert np.all(np.isfinite(read_poses(got).positions_N3))


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_matches_the_checkpoint(structure_checkpoint, tmp_path, fmt):
    loaded = load_checkpoint(structure_checkpoint)
    net = loaded.model
    assert isinstance(net, StructureAwareNet)
    x = torch.rand(2, 3, 48, 64)
    mean = torch.tensor(loaded.transform.mean).view(1, 3, 1, 1)
    std = torch.tensor(loaded.transform.std).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = net((x - mean) / std)
    out = export_model(structure_checkpoint, fmt, tmp_path / f"model.{fmt}")
    if fmt == "torchscript":
        with torch.no_grad():
            poses, scene, _, weights = torch.jit.load(str(out))(x)
        assert np.allclose(poses[:, :3].numpy(), ref["t"].numpy(), atol=1e-4)
        assert np.allclose(scene.numpy(), ref["scene"].numpy(), atol=1e-4)
        assert np.allclose(torch.linalg.norm(poses[:, 3:], dim=1).numpy(), 1.0, atol=1e-5)
    else:
        import onnxruntime

        from camera_pose_ros.learning.structure import kabsch_numpy

        sess = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        scene, cam, weights = sess.run(None, {"images_B3HW": x.numpy()})
        assert np.allclose(scene, ref["scene"].numpy(), atol=1e-3)
        # the numpy solver beside the ONNX graph gives the network's own pose
        r, t = kabsch_numpy(cam[0].reshape(3, -1).T, scene[0].reshape(3, -1).T,
                            weights[0].reshape(-1))
        assert np.allclose(t, ref["t"][0].numpy(), atol=1e-3)


def test_a_dataset_without_labels_says_which_command_makes_them(sfm_building, tmp_path,
                                                                venv_bin):
    _, data = sfm_building
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (copy / SCENE_LABELS).unlink()
    cfg = load_train_config(None, **TINY_STRUCTURE)
    with pytest.raises(InputDataError, match="camera-pose scene-labels"):
        train(copy, cfg, tmp_path / "run", progress=False)
    conf = tmp_path / "sa.yaml"
    conf.write_text("model: structure_aware\ninput_height: 48\ninput_width: 64\n"
                    "backbone: mobilenet_v3_small\npretrained: none\nepochs: 2\n"
                    "geometry_epochs: 1\n")
    proc = subprocess.run([str(venv_bin / "camera-pose"), "train", "--data", str(copy),
                           "--config", str(conf), "--out", str(tmp_path / "run2")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "camera-pose scene-labels" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    with pytest.raises(ConfigError, match="divisible by 8"):
        load_train_config(None, **{**TINY_STRUCTURE, "input_height": 50})
    with pytest.raises(ConfigError, match="geometry_epochs"):
        load_train_config(None, **{**TINY_STRUCTURE, "geometry_epochs": 99})


def test_structure_aware_training_resumes(sfm_building, tmp_path):
    _, data = sfm_building
    short = {**TINY_STRUCTURE, "epochs": 3, "geometry_epochs": 2}
    train(data, load_train_config(None, **short), tmp_path, progress=False)
    more = load_train_config(None, **{**short, "epochs": 4})
    path = train(data, more, tmp_path, resume=True, progress=False)
    assert len(_rows(tmp_path)) == 4 and path.exists()


def test_calibrate_refits_a_structure_aware_checkpoint(structure_checkpoint, sfm_building,
                                                       tmp_path):
    from camera_pose_ros.learning.calibrate import recalibrate_checkpoint

    _, data = sfm_building
    out = recalibrate_checkpoint(structure_checkpoint, data, out=tmp_path / "again.pt",
                                 device="cpu")
    before = torch.load(structure_checkpoint, weights_only=True)["calibration"]
    after = load_checkpoint(out).meta.calibration
    assert after["method"] == "kabsch_residuals" and "pnp" in after
    assert after["k_pos"] == pytest.approx(before["k_pos"], rel=0.05)  # same data, same fit
