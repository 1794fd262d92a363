"""The CLI used carelessly or with hostile inputs: one line on stderr, exit 2, nothing lost.

Every case runs ``camera_pose_ros.cli.main`` in-process (or the installed ``camera-pose``
where a signal is involved) and checks the contract: exit status 2, exactly one line on
stderr starting with ``camera-pose <command>: error:``, no traceback, no temporary left
behind, and no work done before an output that cannot be written is refused.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from camera_pose_ros import cli
from camera_pose_ros.cli import main

TINY_CONFIG = """\
backbone: mobilenet_v3_small
pretrained: none
freeze_backbone: true
augment_copies: 0
hidden: 16
input_height: 32
input_width: 32
batch_size: 8
epochs: 2
mc_samples: 4
device: cpu
"""


def run_cli(capsys, *args: str) -> tuple[int, str]:
    """Exit status and stderr of ``camera-pose -q ARGS`` run in this process."""
    rc = main(["-q", *[str(a) for a in args]])
    return rc, capsys.readouterr().err


def leftovers(root: Path) -> list[Path]:
    """Temporaries of atomic writes anywhere under ``root``."""
    return [p for p in root.rglob("*") if ".tmp-" in p.name]


def assert_user_error(rc: int, err: str, command: str, *words: str) -> str:
    """The CLI's contract for a user error; returns the message line."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"camera-pose {command}: error:"), lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def textured(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def image_folder(path: Path, n: int = 6, seed: int = 0, ext: str = ".png") -> Path:
    path.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(path / f"{i:04d}{ext}"), textured(seed + i))
    return path


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A dataset of textured noise images with poses and train/validation/test splits."""
    data = tmp_path_factory.mktemp("hostile") / "data"
    image_folder(data / "images", n=30)
    header = "image,stamp,x,y,z,qw,qx,qy,qz\n"
    rows = [f"{i:04d}.png,{100 + 0.1 * i:.9f},{0.2 * i:.3f},{np.sin(i):.3f},1.5,1,0,0,0\n"
            for i in range(30)]
    (data / "poses.csv").write_text(header + "".join(rows))
    for name, part in (("train", rows[:18]), ("validation", rows[18:24]),
                       ("test", rows[24:])):
        (data / f"{name}.csv").write_text(header + "".join(part))
    return data


@pytest.fixture(scope="module")
def tiny_config(tiny_data) -> Path:
    path = tiny_data.parent / "tiny.yaml"
    path.write_text(TINY_CONFIG)
    return path


@pytest.fixture(scope="module")
def finished_run(tiny_data, tiny_config) -> Path:
    """A complete tiny training run (model.pt, last.pt, metrics.csv), trained once."""
    out = tiny_data.parent / "run"
    assert main(["-q", "train", "--data", str(tiny_data), "--config", str(tiny_config),
                 "--out", str(out)]) == 0
    assert (out / "model.pt").is_file() and (out / "last.pt").is_file()
    return out


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


# -- 6: outputs are checked before any work -------------------------------------------------


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a prediction, a training run or an export starts."""
    def refuse(*args, **kwargs):
        raise AssertionError("work started before the output was checked")

    monkeypatch.setattr("camera_pose_ros.learning.evaluate.Predictor", refuse)
    monkeypatch.setattr("camera_pose_ros.runtime.localizer.Predictor", refuse)
    monkeypatch.setattr("camera_pose_ros.learning.train._Run", refuse)
    monkeypatch.setattr("camera_pose_ros.learning.export.load_checkpoint", refuse)
    monkeypatch.setattr("camera_pose_ros.dataset.frames.KeyframeSelector", refuse)


@pytest.mark.parametrize("command", ["localize", "evaluate", "export", "train", "frames",
                                     "dataset", "synth"])
def test_output_below_a_file_is_refused_before_any_work(command, capsys, tmp_path, tiny_data,
                                                        tiny_config, finished_run, no_work):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder is needed\n")
    out = blocker / "out"
    images = image_folder(tmp_path / "imgs")
    ckpt = finished_run / "model.pt"
    args = {
        "localize": ["localize", "--checkpoint", ckpt, "--images", images, "--out", out,
                     "--device", "cpu"],
        "evaluate": ["evaluate", "--checkpoint", ckpt, "--data", tiny_data, "--out", out,
                     "--mode", "regress", "--device", "cpu"],
        "export": ["export", "--checkpoint", ckpt, "--format", "torchscript", "--out", out],
        "train": ["train", "--data", tiny_data, "--config", tiny_config, "--out", out],
        "frames": ["frames", "--images", images, "--out", out],
        "dataset": ["dataset", "--images", images, "--control-points", tmp_path / "cp.csv",
                    "--out", out],
        "synth": ["synth", "--out", out, "--frames", "10", "--query-frames", "1"],
    }[command]
    if command == "dataset":
        (tmp_path / "cp.csv").write_text("image,x,y,z\n0000.png,0,0,0\n0001.png,1,0,0\n"
                                         "0002.png,0,1,0\n")
    rc, err = run_cli(capsys, *args)
    assert_user_error(rc, err, command, str(blocker), "is a file")
    assert blocker.read_text() == "a file where a folder is needed\n"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("command", ["localize", "export"])
def test_output_file_that_is_a_folder_is_refused_before_any_work(command, capsys, tmp_path,
                                                                 finished_run, no_work):
    out = tmp_path / "pred.csv"
    out.mkdir()
    images = image_folder(tmp_path / "imgs")
    ckpt = finished_run / "model.pt"
    args = {"localize": ["localize", "--checkpoint", ckpt, "--images", images, "--out", out,
                         "--device", "cpu"],
            "export": ["export", "--checkpoint", ckpt, "--format", "onnx", "--out", out]}
    rc, err = run_cli(capsys, *args[command])
    assert_user_error(rc, err, command, str(out), "is a folder")
    assert out.is_dir() and not any(out.iterdir())


@pytest.mark.parametrize("command", ["evaluate", "train", "frames"])
def test_output_folder_that_is_a_file_is_refused(command, capsys, tmp_path, tiny_data,
                                                 tiny_config, finished_run, no_work):
    out = tmp_path / "results"
    out.write_text("{}\n")
    args = {"evaluate": ["evaluate", "--checkpoint", finished_run / "model.pt", "--data",
                         tiny_data, "--out", out, "--mode", "regress"],
            "train": ["train", "--data", tiny_data, "--config", tiny_config, "--out", out],
            "frames": ["frames", "--images", image_folder(tmp_path / "imgs"), "--out", out]}
    rc, err = run_cli(capsys, *args[command])
    assert_user_error(rc, err, command, str(out), "not a folder")
    assert out.read_text() == "{}\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_unwritable_output_folder_is_refused(capsys, tmp_path, finished_run, no_work):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        rc, err = run_cli(capsys, "export", "--checkpoint", finished_run / "model.pt",
                          "--format", "onnx", "--out", locked / "m.onnx")
    finally:
        locked.chmod(0o700)
    assert_user_error(rc, err, "export", "not writable")


@pytest.mark.parametrize("exc", [
    OSError(28, "No space left on device", "/data/run/.last.pt.tmp-4242-0123abcd.tmp"),
    PermissionError(13, "Permission denied", "/data/run/metrics.csv"),
    MemoryError(),
])
def test_system_errors_are_one_line(exc, capsys, tmp_path, monkeypatch):
    """A full disk, a permission or memory error in the middle of a command: one line."""
    def fail(args):
        raise exc

    monkeypatch.setattr(cli, "_cmd_split", fail)
    rc, err = run_cli(capsys, "split", "--data", tmp_path)
    line = assert_user_error(rc, err, "split")
    if isinstance(exc, OSError):
        assert exc.strerror in line
        assert ".tmp-" not in line  # the final name, not the temporary's
        assert line.endswith("last.pt") or line.endswith("metrics.csv")
    else:
        assert "out of memory" in line


# -- 8: config ranges are validated up front ------------------------------------------------


@pytest.mark.parametrize("setting, key", [
    ("mc_samples: 0", "mc_samples"),
    ("lr: .nan", "lr"),
    ("lr: .inf", "lr"),
    ("weight_decay: -1.0", "weight_decay"),
    ("hidden: -5", "hidden"),
    ("hidden: 0", "hidden"),
    ("input_height: 0", "input_height"),
    ("input_width: 0", "input_width"),
    ("num_workers: -1", "num_workers"),
    ("pool_grid: [0, 0]", "pool_grid"),
    ("pool_grid: [2]", "pool_grid"),
    ("blur_probability: 5", "blur_probability"),
    ("color_jitter: -1", "color_jitter"),
    ("rotation_augment_deg: .inf", "rotation_augment_deg"),
    ("seed: -3", "seed"),
    ("backbone: resnet9000", "backbone"),
])
def test_out_of_range_train_config_is_refused_naming_the_key(setting, key, capsys, tmp_path,
                                                             tiny_data):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(TINY_CONFIG + setting + "\n")
    out = tmp_path / "run"
    rc, err = run_cli(capsys, "train", "--data", tiny_data, "--config", cfg, "--out", out)
    assert_user_error(rc, err, "train", key)
    assert not out.exists()


def test_yaml_1_1_exponent_is_a_number(tmp_path):
    from camera_pose_ros.errors import ConfigError
    from camera_pose_ros.learning.train import load_train_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 1e-3\nweight_decay: 5E-5\n")
    loaded = load_train_config(cfg)
    assert loaded.lr == pytest.approx(1e-3) and loaded.weight_decay == pytest.approx(5e-5)
    cfg.write_text("lr: fast\n")
    with pytest.raises(ConfigError, match="lr"):
        load_train_config(cfg)


def test_nan_in_a_dataset_config_is_refused_naming_the_key(capsys, tmp_path):
    cfg = tmp_path / "dataset.yaml"
    cfg.write_text("frames:\n  min_time_step: .nan\n")
    rc, err = run_cli(capsys, "frames", "--images", image_folder(tmp_path / "imgs"),
                      "--out", tmp_path / "data", "--config", cfg)
    assert_user_error(rc, err, "frames", "min_time_step")
    assert not (tmp_path / "data").exists()


# -- 9: resume and overwrite ----------------------------------------------------------------


def test_training_into_a_finished_run_needs_overwrite(capsys, tmp_path, tiny_data,
                                                      tiny_config, finished_run):
    run = copy_run(finished_run, tmp_path / "run")
    before = {n: (run / n).read_bytes() for n in ("model.pt", "last.pt", "metrics.csv")}
    rc, err = run_cli(capsys, "train", "--data", tiny_data, "--config", tiny_config,
                      "--out", run)
    assert_user_error(rc, err, "train", "--resume", "--overwrite")
    assert {n: (run / n).read_bytes() for n in before} == before
    rc, err = run_cli(capsys, "train", "--data", tiny_data, "--config", tiny_config,
                      "--out", run, "--resume", "--overwrite")
    assert_user_error(rc, err, "train", "overwrite")
    rc, err = run_cli(capsys, "train", "--data", tiny_data, "--config", tiny_config,
                      "--out", run, "--overwrite")
    assert rc == 0, err
    assert (run / "model.pt").read_bytes() != before["model.pt"]
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 2


def _malicious(path: Path, marker: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"epoch": 1, "evil": Evil()}, path)


@pytest.mark.parametrize("damage", ["truncated", "empty", "text", "foreign", "malicious",
                                    "wrong_types"])
def test_resume_refuses_a_damaged_last_pt(damage, capsys, tmp_path, tiny_data, tiny_config,
                                          finished_run):
    run = copy_run(finished_run, tmp_path / "run")
    last = run / "last.pt"
    marker = tmp_path / "pwned"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    elif damage == "empty":
        last.write_bytes(b"")
    elif damage == "text":
        last.write_text("epoch: 3\n")
    elif damage == "foreign":
        torch.save({"weights": torch.zeros(3)}, last)
    elif damage == "malicious":
        _malicious(last, marker)
    else:
        state = torch.load(last, weights_only=True)
        state["epoch"] = "two"
        torch.save(state, last)
    rc, err = run_cli(capsys, "train", "--data", tiny_data, "--config", tiny_config,
                      "--out", run, "--resume")
    assert_user_error(rc, err, "train", "last.pt")
    assert not marker.exists()
    assert (run / "model.pt").read_bytes() == (finished_run / "model.pt").read_bytes()


@pytest.mark.parametrize("content", ["epoch,step\n1,x\n", "epoch,step,train_loss,"
                                     "val_median_position_m,val_median_rotation_deg,lr,"
                                     "seconds\n1,2,0.5\n", "\xff\xfe\x00garbage"])
def test_resume_refuses_a_damaged_metrics_csv(content, capsys, tmp_path, tiny_data,
                                              tiny_config, finished_run):
    run = copy_run(finished_run, tmp_path / "run")
    (run / "metrics.csv").write_bytes(content.encode("latin-1"))
    rc, err = run_cli(capsys, "train", "--data", tiny_data, "--config", tiny_config,
                      "--out", run, "--resume")
    assert_user_error(rc, err, "train", "metrics.csv")


def test_resume_with_another_config_names_the_keys(capsys, tmp_path, tiny_data, finished_run):
    run = copy_run(finished_run, tmp_path / "run")
    cfg = tmp_path / "other.yaml"
    cfg.write_text(TINY_CONFIG.replace("batch_size: 8", "batch_size: 4") + "lr: 0.002\n")
    rc, err = run_cli(capsys, "train", "--data", tiny_data, "--config", cfg, "--out", run,
                      "--resume")
    line = assert_user_error(rc, err, "train", "another config", "batch_size", "lr")
    assert "mc_samples" not in line


def test_resume_after_fixing_mc_samples_finishes_the_run(capsys, tmp_path, tiny_data,
                                                         finished_run):
    """The run died in calibration (no model.pt): resuming with another mc_samples works."""
    run = copy_run(finished_run, tmp_path / "run")
    (run / "model.pt").unlink()
    cfg = tmp_path / "fixed.yaml"
    cfg.write_text(TINY_CONFIG.replace("mc_samples: 4", "mc_samples: 6"))
    rc, err = run_cli(capsys, "train", "--data", tiny_data, "--config", cfg, "--out", run,
                      "--resume")
    assert rc == 0, err
    ckpt = torch.load(run / "model.pt", weights_only=True)
    assert ckpt["calibration"]["samples"] == 6
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 2


# -- 10: control points ---------------------------------------------------------------------


@pytest.mark.parametrize("content", [
    b"stamp,x,y,z\n1.0,nan,0,0\n2.0,1,0,0\n3.0,0,1,0\n",
    b"stamp,x,y,z\n1.0,inf,0,0\n2.0,1,0,0\n3.0,0,1,0\n",
    b"stamp,x,y,z\n1.0,0,0\n2.0,1,0,0\n3.0,0,1,0\n",
    b"stamp,x,y,z\n1e400,0,0,0\n2.0,1,0,0\n3.0,0,1,0\n",
    b"stamp,x,y,z\n99999999999999999999999,0,0,0\n2.0,1,0,0\n3.0,0,1,0\n",
    b"stamp,x,y,z\n1.0,0,0,0\n2.0,1,0,0\n3.0,0,1,\xe9\n",
])
def test_hostile_control_points_are_one_line_errors(content, capsys, tmp_path):
    cp = tmp_path / "control_points.csv"
    cp.write_bytes(content)
    (tmp_path / "data").mkdir()
    rc, err = run_cli(capsys, "align", "--data", tmp_path / "data", "--control-points", cp)
    assert_user_error(rc, err, "align", "control_points.csv")


def test_spreadsheet_control_points_are_read(tmp_path):
    from camera_pose_ros.dataset.align import read_control_points

    cp = tmp_path / "cp.csv"
    cp.write_bytes("\ufeffstamp, x , y ,z\r\n1.5, 1.0,2.0 ,3\r\n2.5,4,5,6\r\n\r\n"
                   "3.5,7,8,9,\r\n".encode())
    points = read_control_points(cp)
    assert [p.stamp_ns for p in points] == [1_500_000_000, 2_500_000_000, 3_500_000_000]
    assert [p.xyz for p in points] == [(1.0, 2.0, 3.0), (4.0, 5.0, 6.0), (7.0, 8.0, 9.0)]


def test_pose_file_inputs_are_read_before_the_first_stage(capsys, tmp_path):
    """A broken --test-poses fails the dataset command before frames are extracted."""
    cp = tmp_path / "cp.csv"
    cp.write_text("image,x,y,z\n0000.png,0,0,0\n0001.png,1,0,0\n0002.png,0,1,0\n")
    bad = tmp_path / "test_poses.csv"
    bad.write_text("stamp,x,y,z,qw,qx,qy,qz\n1.0,0,0,0,1,0,0\n")
    out = tmp_path / "data"
    rc, err = run_cli(capsys, "dataset", "--images", image_folder(tmp_path / "imgs"),
                      "--control-points", cp, "--test-poses", bad, "--out", out)
    assert_user_error(rc, err, "dataset", "test_poses.csv")
    assert not out.exists()


# -- 11: checkpoints ------------------------------------------------------------------------


def _edit_checkpoint(src: Path, dest: Path, edit) -> Path:
    data = torch.load(src, weights_only=True)
    edit(data)
    torch.save(data, dest)
    return dest


def _nan_weights(d):
    key = next(k for k, v in d["state_dict"].items() if v.is_floating_point())
    d["state_dict"][key] = torch.full_like(d["state_dict"][key], float("nan"))


EDITS = {
    "string_height": lambda d: d["input"].update(height="tall"),
    "negative_size": lambda d: d["input"].update(width=-64),
    "nan_weights": _nan_weights,
    "zero_std": lambda d: d["input"].update(std=[0.0, 0.2, 0.2]),
    "bad_pool_grid": lambda d: d["model"].update(pool_grid=[0, 5]),
    "bad_hidden": lambda d: d["model"].update(hidden="many"),
    "unknown_backbone": lambda d: d["model"].update(backbone="vgg_nope"),
    "no_weights": lambda d: d.update(state_dict={}),
    "nan_calibration": lambda d: d["calibration"].update(k_pos=float("nan")),
}


@pytest.mark.parametrize("kind", ["text", "empty", "random", "plain_pickle", *EDITS])
def test_hostile_checkpoints_are_one_line_errors(kind, capsys, tmp_path, finished_run):
    good = finished_run / "model.pt"
    path = tmp_path / "model.pt"
    if kind == "text":
        path.write_text("this is not a model\nbut it is called model.pt\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "plain_pickle":
        path.write_bytes(pickle.dumps({"format": "camera_pose_ros.checkpoint"}))
    else:
        _edit_checkpoint(good, path, EDITS[kind])
    out = tmp_path / "m.ts"
    rc, err = run_cli(capsys, "export", "--checkpoint", path, "--format", "torchscript",
                      "--out", out)
    line = assert_user_error(rc, err, "export", str(path))
    assert not out.exists() and leftovers(tmp_path) == []
    if kind in ("text", "random", "plain_pickle"):
        assert "not a checkpoint" in line and "Python objects" not in line
    if kind == "empty":
        assert "empty" in line


# -- 14: SIGTERM and stale temporaries ------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_sigterm_cleans_up_and_exits_143(tmp_path, venv_bin):
    out = tmp_path / "synth"
    proc = subprocess.Popen(
        [str(venv_bin / "camera-pose"), "-q", "synth", "--out", str(out), "--frames", "3000",
         "--query-frames", "5", "--width", "320", "--height", "240"],
        stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(
            p.name.startswith(".mapping") for p in (out.iterdir() if out.exists() else [])):
        time.sleep(0.05)
    time.sleep(0.5)  # some frames rendered into the temporary bag
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == [
        "camera-pose synth: terminated"]
    assert not out.exists()  # created by the run, left empty: removed


def test_sigterm_inside_pycolmap_is_a_clean_exit(capsys, tmp_path, venv_bin):
    """pycolmap installs a C++ SIGTERM handler (a stack dump); the CLI's own handler wins."""
    data = tmp_path / "data"
    rng = np.random.default_rng(3)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(30):
        cv2.imwrite(str(frames / f"{i:04d}.png"), rng.integers(0, 256, (480, 640, 3), np.uint8))
    assert run_cli(capsys, "frames", "--images", frames, "--out", data)[0] == 0
    proc = subprocess.Popen([str(venv_bin / "camera-pose"), "-q", "sfm", "--data", str(data)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (data / "sfm" / "database.db").exists():
        time.sleep(0.02)
    time.sleep(0.3)  # inside feature extraction
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "SIGTERM" not in err and "Traceback" not in err  # no C++ or Python stack dump
    assert err.strip().splitlines()[-1] == "camera-pose sfm: terminated"
    assert leftovers(tmp_path) == []


def test_a_killed_runs_temporaries_are_removed_by_the_next_run(capsys, tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    dead = _dead_pid()
    stale_dir = out / f".images.tmp-{dead}-0123abcd"
    stale_dir.mkdir()
    (stale_dir / "000000.jpg").write_bytes(b"\xff\xd8partial")
    stale_file = out / f".frames.csv.tmp-{dead}-89abcdef.csv"
    stale_file.write_bytes(b"")
    live = out / f".frames.csv.tmp-{os.getpid()}-00000000.csv"  # a run still writing
    live.write_bytes(b"")
    rc, err = run_cli(capsys, "frames", "--images", image_folder(tmp_path / "imgs"), "--out",
                      out)
    assert rc == 0, err
    assert not stale_dir.exists() and not stale_file.exists()
    assert live.exists()
    assert (out / "frames.csv").is_file()


def test_stale_checkpoint_temporary_is_removed_on_the_next_save(tmp_path):
    from camera_pose_ros.fileio import atomic_path

    stale = tmp_path / f".last.pt.tmp-{_dead_pid()}-0badf00d.tmp"
    stale.write_bytes(b"")
    with atomic_path(tmp_path / "last.pt", suffix=".tmp") as tmp:
        tmp.write_bytes(b"state")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_atomic_outputs_respect_the_umask(tmp_path):
    from camera_pose_ros.fileio import atomic_dir, write_text_atomic

    old = os.umask(0o022)
    try:
        f = write_text_atomic(tmp_path / "a.csv", "x\n")
        with atomic_dir(tmp_path / "d") as d:
            (d / "x").write_text("x")
        os.umask(0o002)
        g = write_text_atomic(tmp_path / "b.csv", "x\n")
        with atomic_dir(tmp_path / "e"):
            pass
    finally:
        os.umask(old)
    assert f.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    assert g.stat().st_mode & 0o777 == 0o664
    assert (tmp_path / "e").stat().st_mode & 0o777 == 0o775


# -- 15: smaller ----------------------------------------------------------------------------


def test_truncated_jpegs_in_an_image_folder_are_skipped_and_counted(tmp_path, caplog):
    from camera_pose_ros.dataset.frames import iter_image_folder

    folder = image_folder(tmp_path / "imgs", n=4, ext=".jpg")
    whole = (folder / "0002.jpg").read_bytes()
    (folder / "0002.jpg").write_bytes(whole[: len(whole) * 2 // 3])
    (folder / "0003.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with caplog.at_level("WARNING"):
        got = list(iter_image_folder(folder))
    assert [stamp for stamp, _ in got] == [0.0, 1.0, 3.0]  # 0002.jpg and 0003.png skipped
    assert "skipped 2" in caplog.text


@pytest.mark.parametrize("option, value", [("--rate", "0"), ("--scale", "nan"),
                                           ("--loops", "-1"), ("--control-point-noise", "inf"),
                                           ("--seed", "-3"), ("--bad-control-points", "9"),
                                           ("--rooms", "1"), ("--rooms", "65"),
                                           ("--room-designs", "-1")])
def test_synth_option_ranges(option, value, capsys, tmp_path):
    out = tmp_path / "synth"
    rc, err = run_cli(capsys, "synth", "--out", out, "--frames", "10", "--query-frames", "1",
                      option, value)
    assert_user_error(rc, err, "synth", option)
    assert not out.exists()


def test_a_failed_command_removes_the_out_folder_it_created(capsys, tmp_path, tiny_config):
    out = tmp_path / "new" / "run"
    rc, err = run_cli(capsys, "train", "--data", tmp_path / "missing", "--config",
                      tiny_config, "--out", out)
    assert_user_error(rc, err, "train")
    assert not out.exists()
    cp = tmp_path / "cp.csv"
    cp.write_text("stamp,x,y,z\n1,0,0,0\n2,1,0,0\n3,0,1,0\n")
    rc, err = run_cli(capsys, "dataset", "--bag", tmp_path / "nobag", "--control-points", cp,
                      "--out", tmp_path / "data")
    assert_user_error(rc, err, "dataset")
    assert not (tmp_path / "data").exists()
    kept = tmp_path / "kept"
    kept.mkdir()  # made by the user: stays
    rc, err = run_cli(capsys, "train", "--data", tmp_path / "missing", "--config",
                      tiny_config, "--out", kept)
    assert_user_error(rc, err, "train")
    assert kept.is_dir()


def test_frames_from_another_source_are_refused_until_overwrite(capsys, tmp_path):
    first = image_folder(tmp_path / "a", n=5, seed=0)
    second = image_folder(tmp_path / "b", n=7, seed=50)
    out = tmp_path / "data"
    assert run_cli(capsys, "frames", "--images", first, "--out", out)[0] == 0
    frames_csv = (out / "frames.csv").read_text()
    assert run_cli(capsys, "frames", "--images", first, "--out", out)[0] == 0  # same: reused
    rc, err = run_cli(capsys, "frames", "--images", second, "--out", out)
    assert_user_error(rc, err, "frames", "another source", "--overwrite")
    assert (out / "frames.csv").read_text() == frames_csv
    rc, err = run_cli(capsys, "frames", "--images", second, "--out", out, "--overwrite")
    assert rc == 0, err
    assert len((out / "frames.csv").read_text().splitlines()) == 1 + 7


def test_evaluate_out_is_a_folder_holding_every_output(capsys, tmp_path, tiny_data,
                                                       finished_run):
    rc, err = run_cli(capsys, "evaluate", "--checkpoint", finished_run / "model.pt", "--data",
                      tiny_data, "--out", tmp_path / "metrics.json", "--mode", "regress")
    assert_user_error(rc, err, "evaluate", "names a folder", str(tmp_path / "metrics"))
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "eval"
    out.mkdir()
    (out / "predictions_test_refined.csv").write_text("from an earlier refined run\n")
    rc, err = run_cli(capsys, "evaluate", "--checkpoint", finished_run / "model.pt", "--data",
                      tiny_data, "--out", out, "--mode", "regress", "--device", "cpu")
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]
    names = sorted(p.name for p in out.iterdir())
    assert "metrics.json" in names and "predictions_test.csv" in names
    assert "error_cdf_test.png" in names and "trajectory_test.png" in names
    assert "predictions_test_refined.csv" not in names


def test_an_empty_or_reversed_window_is_a_one_line_error(capsys, tmp_path):
    (tmp_path / "images").mkdir()
    rc, err = run_cli(capsys, "frames", "--images", tmp_path / "images", "--between", "5",
                      "1", "--out", tmp_path / "data")
    assert_user_error(rc, err, "frames", "--between takes START END")
    assert not (tmp_path / "data").exists()
