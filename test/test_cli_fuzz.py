"""Fuzzing the CLI's readers: random, truncated and mutated inputs never give a traceback.

Each test feeds one reader (bags, control points, pose CSVs, YAML configs, checkpoints,
training states) inputs made from a seeded random generator for a bounded time, through
``camera_pose_ros.cli.main`` in this process. Every run must either succeed (a mutation can
leave a file valid) or end with exit status 2 and exactly one line on stderr starting with
``camera-pose <command>: error:``; an exception escaping ``main`` fails the test with the
case that caused it. The cases are the same on every run (seeded); how many run depends on
the machine's speed.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from camera_pose_ros.cli import main

pytestmark = pytest.mark.slow  # each test spends its time budget running commands

# per test; a longer local run: CAMERA_POSE_FUZZ_SECONDS=60 pytest test/test_cli_fuzz.py
SECONDS = float(os.environ.get("CAMERA_POSE_FUZZ_SECONDS", "3"))
MAX_CASES = max(150, int(50 * SECONDS))

HOSTILE_VALUES = ["nan", "-nan", "inf", "-inf", "1e400", "-1e400", "1e308", "", " ", "0",
                  "-0", "-1", "99999999999999999999999999", "0x1F", "1_000", "١٢", "\x00",
                  "\"", "'", ",", ";", "\\", "\ufeff", "NaN,NaN", "1.2.3", "--1", "true",
                  "[1, 2]", "{a: 1}", "é", "\U0001f600", "1e-400", ".5", "5.", "+", "e5"]


def cases(seed: int) -> Iterator[random.Random]:
    """Seeded generators, one per case, until the time or case budget is spent.

    The clock starts after the first case, which pays for the command's lazy imports.
    """
    rng = random.Random(seed)
    deadline = None
    for _ in range(MAX_CASES):
        if deadline is not None and time.monotonic() > deadline:
            return
        yield random.Random(rng.getrandbits(64))
        if deadline is None:
            deadline = time.monotonic() + SECONDS


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """One of: truncate, flip bytes, insert or delete a run, splice random bytes."""
    if not data:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
    op = rng.randrange(5)
    if op == 0:
        return data[: rng.randrange(len(data))]
    b = bytearray(data)
    if op == 1:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.getrandbits(8)
        return bytes(b)
    i = rng.randrange(len(b))
    if op == 2:
        return bytes(b[:i] + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 32)))
                     + b[i:])
    if op == 3:
        return bytes(b[:i] + b[i + rng.randint(1, 64):])
    return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 256)))


def mutate_csv(rng: random.Random, text: str) -> bytes:
    """A CSV with a hostile value, a broken row, or mangled bytes."""
    lines = text.splitlines()
    op = rng.randrange(5)
    if op <= 1:  # one value replaced by a hostile one
        i = rng.randrange(len(lines))
        cells = lines[i].split(",")
        cells[rng.randrange(len(cells))] = rng.choice(HOSTILE_VALUES)
        lines[i] = ",".join(cells)
    elif op == 2:  # a row cut short, or one cell too many
        i = rng.randrange(1, len(lines))
        lines[i] = lines[i].rsplit(",", 1)[0] if rng.random() < 0.5 else lines[i] + ",7"
    elif op == 3:  # header mangled
        lines[0] = rng.choice(["", "\ufeff" + lines[0], lines[0].upper(),
                               lines[0].replace(",", ";"), " " + lines[0].replace(",", " , ")])
    else:
        return mutate_bytes(rng, text.encode())
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")


def check_contract(capsys, command: str, args: list, case: str, *,
                   may_succeed: bool = True) -> int:
    """Run ``camera-pose -q ARGS``; assert the one-line error contract; return the status."""
    try:
        rc = main(["-q", *[str(a) for a in args]])
    except BaseException as exc:  # noqa: BLE001 -- any escape is the failure under test
        pytest.fail(f"{case}: {type(exc).__name__} escaped main: {exc}")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    if rc == 0 and may_succeed:
        return rc
    assert rc == 2, f"{case}: exit status {rc}, stderr {err!r}"
    assert "Traceback" not in err, f"{case}: {err}"
    assert len(lines) == 1, f"{case}: {len(lines)} lines on stderr: {err!r}"
    assert lines[0].startswith(f"camera-pose {command}: error:"), f"{case}: {lines[0]!r}"
    return rc


def fresh(root: Path, name: str) -> Path:
    path = root / name
    if path.exists():
        shutil.rmtree(path)
    return path


def no_temporaries(root: Path, case: str) -> None:
    left = [p for p in root.rglob("*") if ".tmp-" in p.name]
    assert not left, f"{case}: temporaries left behind: {left}"


# -- bags -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_bag(tmp_path_factory) -> Path:
    """A valid MCAP bag of six 64x48 frames with CameraInfo."""
    from camera_pose_ros.camera import PinholeCamera
    from camera_pose_ros.io.bags import BagImageWriter

    bag = tmp_path_factory.mktemp("fuzzbag") / "bag"
    cam = PinholeCamera(64, 48, 50.0, 50.0, 31.5, 23.5)
    rng = np.random.default_rng(0)
    with BagImageWriter(bag, storage="mcap") as w:
        for i in range(6):
            img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            w.write(1_700_000_000_000_000_000 + i * 100_000_000, img, cam)
    return bag


def bag_cases(rng: random.Random, bag: Path, dest: Path) -> str:
    """A damaged copy of ``bag`` at ``dest``; returns what was done."""
    shutil.copytree(bag, dest)
    mcap = next(dest.glob("*.mcap"))
    op = rng.randrange(4)
    if op == 0:
        data = mcap.read_bytes()
        cut = rng.randrange(len(data))
        mcap.write_bytes(data[:cut])
        return f"mcap truncated at {cut} of {len(data)}"
    if op == 1:
        mcap.write_bytes(mutate_bytes(rng, mcap.read_bytes()))
        return "mcap mutated"
    if op == 2:
        meta = dest / "metadata.yaml"
        meta.write_bytes(mutate_bytes(rng, meta.read_bytes()) if rng.random() < 0.5 else
                         bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 512))))
        return "metadata.yaml mutated or random"
    mcap.write_bytes(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 4096))))
    return "mcap replaced by random bytes"


def test_fuzz_bags(capsys, tmp_path, small_bag):
    for n, rng in enumerate(cases(11)):
        bag = fresh(tmp_path, "bag")
        case = f"bag case {n}: " + bag_cases(rng, small_bag, bag)
        out = fresh(tmp_path, "data")
        check_contract(capsys, "frames", ["frames", "--bag", bag, "--out", out], case)
        no_temporaries(tmp_path, case)


# -- CSVs -----------------------------------------------------------------------------------

CONTROL_POINTS = "stamp,x,y,z\n100.0,0.5,1.0,1.5\n101.5,4.0,1.0,1.5\n103.0,4.0,6.0,1.5\n"


def test_fuzz_control_points(capsys, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for n, rng in enumerate(cases(12)):
        cp = tmp_path / "control_points.csv"
        cp.write_bytes(mutate_csv(rng, CONTROL_POINTS))
        case = f"control points case {n}: {cp.read_bytes()!r}"
        # a valid file still fails: the dataset has no frames (a one-line error too)
        check_contract(capsys, "align", ["align", "--data", data, "--control-points", cp],
                       case, may_succeed=False)


def pose_csv(n: int = 12) -> str:
    rows = [f"{i:06d}.jpg,{100 + 0.5 * i:.9f},{0.3 * i:.6f},{np.sin(i):.6f},1.5,"
            f"1.0,0.0,0.0,0.0" for i in range(n)]
    return "image,stamp,x,y,z,qw,qx,qy,qz\n" + "\n".join(rows) + "\n"


def test_fuzz_pose_csvs(capsys, tmp_path):
    text = pose_csv()
    for n, rng in enumerate(cases(13)):
        data = fresh(tmp_path, "data")
        data.mkdir()
        (data / "poses.csv").write_bytes(mutate_csv(rng, text))
        case = f"poses case {n}: {(data / 'poses.csv').read_bytes()!r}"
        check_contract(capsys, "split", ["split", "--data", data], case)
        no_temporaries(tmp_path, case)


# -- YAML configs ---------------------------------------------------------------------------

TRAIN_YAML = """\
model: posenet
backbone: resnet18
pool_grid: [3, 4]
hidden: 1024
dropout: 0.3
input_height: 96
input_width: 128
epochs: 80
lr: 0.001
weight_decay: 0.0001
color_jitter: 0.3
mc_samples: 20
device: cpu
"""
YAML_VALUES = [".nan", ".inf", "-.inf", "-1", "0", "1e400", "1e-3", "'text'", "[]", "{}",
               "[0, 0]", "[1, 2, 3]", "null", "~", "true", "!!python/object:os.system ls",
               "&a [*a]", "*b", "99999999999999999999", "0x10", "0o17", "1_000", "'1e-3'",
               "\"\\x00\"", "|\n  block", "2001-12-14", "-", "? complex", "%YAML 1.1"]


def mutate_yaml(rng: random.Random, text: str) -> bytes:
    lines = text.splitlines()
    op = rng.randrange(4)
    if op <= 1:  # a value replaced
        i = rng.randrange(len(lines))
        key = lines[i].split(":", 1)[0]
        lines[i] = f"{key}: {rng.choice(YAML_VALUES)}"
    elif op == 2:  # an unknown, duplicated or indented key
        lines.insert(rng.randrange(len(lines) + 1),
                     rng.choice(["lr: 0.1", "  nested: 1", "unknown_key: 3", ":", "- item",
                                 "model:", "epochs: [", "\t: tab"]))
    else:
        return mutate_bytes(rng, text.encode())
    return ("\n".join(lines) + "\n").encode()


def test_fuzz_train_configs(capsys, tmp_path):
    for n, rng in enumerate(cases(14)):
        cfg = tmp_path / "train.yaml"
        cfg.write_bytes(mutate_yaml(rng, TRAIN_YAML))
        case = f"train config case {n}: {cfg.read_bytes()!r}"
        # a valid config still fails: the dataset does not exist
        check_contract(capsys, "train", ["train", "--data", tmp_path / "no_data", "--config",
                                         cfg, "--out", fresh(tmp_path, "run")], case,
                       may_succeed=False)
        assert not (tmp_path / "run").exists(), case


def test_fuzz_dataset_configs(capsys, tmp_path):
    base = "frames:\n  min_time_step: 0.1\n  max_frames: 10\nsfm:\n  matcher: sequential\n"
    for n, rng in enumerate(cases(15)):
        cfg = tmp_path / "dataset.yaml"
        cfg.write_bytes(mutate_yaml(rng, base))
        case = f"dataset config case {n}: {cfg.read_bytes()!r}"
        check_contract(capsys, "frames", ["frames", "--images", tmp_path / "no_images",
                                          "--out", fresh(tmp_path, "data"), "--config", cfg],
                       case, may_succeed=False)


# -- checkpoints and training states --------------------------------------------------------

SMALL_MODEL = {"kind": "posenet", "backbone": "mobilenet_v3_small", "hidden": 16,
               "dropout": 0.2, "pool_grid": [1, 1], "pos_mean": [1.0, 2.0, 1.5],
               "pos_scale": 2.0}
SMALL_INPUT = {"height": 32, "width": 32, "mean": [0.485, 0.456, 0.406],
               "std": [0.229, 0.224, 0.225]}


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> Path:
    from camera_pose_ros.learning.checkpoint import build_regressor, save_checkpoint

    path = tmp_path_factory.mktemp("fuzzckpt") / "model.pt"
    calib = {"method": "mc_dropout", "samples": 4, "k_pos": 1.0, "k_rot": 1.0,
             "floor_pos": 0.05, "floor_rot": 0.01}
    return save_checkpoint(path, build_regressor(SMALL_MODEL).eval(), model_cfg=SMALL_MODEL,
                           input_cfg=SMALL_INPUT, map_frame="map",
                           extra={"calibration": calib})


PLAIN_VALUES: list[Callable[[], object]] = [
    lambda: "text", lambda: -1, lambda: 0, lambda: 10**12, lambda: float("nan"),
    lambda: float("inf"), lambda: [], lambda: {}, lambda: None, lambda: [1, 2, 3],
    lambda: torch.zeros(0), lambda: torch.full((3,), float("nan")), lambda: True,
    lambda: {"nested": {"deep": [float("-inf")]}}, lambda: b"bytes", lambda: 1.5,
]


def _mutate_plain(rng: random.Random, data: dict) -> str:
    """Replace one value somewhere in a checkpoint's plain data; returns its path."""
    node, path = data, []
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = rng.choice(keys)
        path.append(str(key))
        child = node[key]
        if isinstance(child, (dict, list)) and child and rng.random() < 0.6:
            node = child
            continue
        if isinstance(child, torch.Tensor) and rng.random() < 0.5:
            bad = child.clone().flatten()
            if bad.numel() and bad.is_floating_point():
                bad[rng.randrange(bad.numel())] = rng.choice([float("nan"), float("inf")])
            node[key] = bad.reshape(child.shape) if rng.random() < 0.5 else bad
        elif rng.random() < 0.15:
            del node[key]
            path[-1] += " (deleted)"
        else:
            node[key] = rng.choice(PLAIN_VALUES)()
        break
    return ".".join(path)


def checkpoint_case(rng: random.Random, good: Path, dest: Path) -> str:
    raw = good.read_bytes()
    op = rng.randrange(6)
    if op == 0:
        cut = rng.randrange(len(raw))
        dest.write_bytes(raw[:cut])
        return f"truncated at {cut} of {len(raw)}"
    if op == 1:
        dest.write_bytes(mutate_bytes(rng, raw))
        return "bytes mutated"
    if op == 2:
        dest.write_bytes(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 2048))))
        return "random bytes"
    if op == 3:
        dest.write_text(rng.choice(["model", "PK\x03\x04 not really", "{}", "\x80\x02",
                                    "format: camera_pose_ros.checkpoint\n"]))
        return f"text {dest.read_bytes()!r}"
    if op == 4:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for _ in range(rng.randint(0, 3)):
                name = rng.choice(["archive/data.pkl", "archive/version", "a.txt",
                                   "archive/data/0", "../evil"])
                z.writestr(name, bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))))
        dest.write_bytes(buf.getvalue())
        return "zip with junk"
    data = torch.load(good, weights_only=True)
    where = _mutate_plain(rng, data)
    torch.save(data, dest)
    return f"plain data mutated at {where}"


def test_fuzz_checkpoints(capsys, tmp_path, small_checkpoint):
    """Loaded by ``localize`` on an empty image folder: a checkpoint that loads is rebuilt
    and checked, then the folder fails (a prediction per case would be too slow)."""
    images = tmp_path / "images"
    images.mkdir()
    for n, rng in enumerate(cases(16)):
        ckpt = tmp_path / "model.pt"
        case = f"checkpoint case {n}: " + checkpoint_case(rng, small_checkpoint, ckpt)
        check_contract(capsys, "localize", ["localize", "--checkpoint", ckpt, "--images",
                                            images, "--out", tmp_path / "pred.csv", "--device",
                                            "cpu"], case, may_succeed=False)
        no_temporaries(tmp_path, case)


@pytest.fixture(scope="module")
def resume_state(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A tiny dataset, a config, and a valid last.pt of that config after one epoch."""
    import cv2

    from camera_pose_ros.learning.train import _Run, load_train_config

    root = tmp_path_factory.mktemp("fuzzresume")
    data = root / "data"
    (data / "images").mkdir(parents=True)
    header = "image,stamp,x,y,z,qw,qx,qy,qz\n"
    rng = np.random.default_rng(5)
    rows = []
    for i in range(16):
        cv2.imwrite(str(data / "images" / f"{i:04d}.png"),
                    rng.integers(0, 256, (32, 32, 3), np.uint8))
        rows.append(f"{i:04d}.png,{100 + 0.1 * i:.9f},{0.2 * i:.3f},0.5,1.5,1,0,0,0\n")
    for name, part in (("train", rows[:10]), ("validation", rows[10:13]),
                       ("test", rows[13:])):
        (data / f"{name}.csv").write_text(header + "".join(part))
    cfg_path = root / "tiny.yaml"
    cfg_path.write_text("backbone: mobilenet_v3_small\npretrained: none\n"
                        "freeze_backbone: false\nhidden: 16\ninput_height: 32\n"
                        "input_width: 32\nbatch_size: 8\nepochs: 2\nmax_steps: 3\n"
                        "mc_samples: 2\ndevice: cpu\n")
    run = _Run(load_train_config(cfg_path), data, root, progress=False)
    best = {"score": 1.0, "epoch": 0,
            "state": {k: v.detach().clone() for k, v in run.model.state_dict().items()}}
    torch.save(run.state(1, 2, best), root / "last.pt")
    return root / "last.pt", cfg_path, data


def test_fuzz_resume_states(capsys, tmp_path, resume_state):
    """Damaged last.pt files under ``train --resume`` (one that survives resumes)."""
    good, cfg, data = resume_state
    for n, rng in enumerate(cases(17)):
        run = fresh(tmp_path, "run")
        run.mkdir()
        case = f"last.pt case {n}: " + checkpoint_case(rng, good, run / "last.pt")
        check_contract(capsys, "train", ["train", "--data", data, "--config", cfg, "--out",
                                         run, "--resume"], case)
        no_temporaries(tmp_path, case)
