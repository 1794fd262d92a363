"""Shared fixtures: an isolated ROS 2 domain per test session, rclpy contexts, helpers.

Every pytest session takes a ROS_DOMAIN_ID that no other session on this machine holds (an
exclusive lock file per domain), and keeps DDS discovery on localhost, so parallel runs do
not see each other's topics. Subprocesses started by tests inherit both settings.
"""

from __future__ import annotations

import fcntl
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    from camera_pose_ros.io.refmap import RefinementMap

REPO = Path(__file__).resolve().parents[1]


def _claim_domain() -> tuple[int, object]:
    lock_dir = Path(tempfile.gettempdir()) / "camera_pose_ros-domains"
    lock_dir.mkdir(exist_ok=True)
    candidates = list(range(1, 101))
    random.Random(os.getpid()).shuffle(candidates)
    for domain in candidates:
        fh = open(lock_dir / f"{domain}.lock", "w")  # noqa: SIM115 -- held for the session
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            continue
        return domain, fh
    raise RuntimeError("no free ROS_DOMAIN_ID in 1..100 on this machine")


_DOMAIN, _DOMAIN_LOCK = _claim_domain()
os.environ["ROS_DOMAIN_ID"] = str(_DOMAIN)
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.pop("ROS_LOCALHOST_ONLY", None)  # deprecated in Jazzy; conflicts with the above
os.environ.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "1")


#: Fixtures that make every test using them (directly or through another fixture) slow: a
#: DDS graph, SfM on the session building, a training run, or the installed commands run as
#: subprocesses. ``make test-fast`` (``pytest -m "not slow"``) leaves those tests out.
SLOW_FIXTURES = frozenset({
    "ros_context", "spinner",  # DDS nodes
    "sfm_building", "map_checkpoint",  # the session building's SfM dataset
    "venv_bin",  # `camera-pose` and the node executables as subprocesses
    "finished_run", "trained", "dashboard_run", "resume_state",  # the modules' training runs
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test marked ``ros`` or using one of :data:`SLOW_FIXTURES`."""
    for item in items:
        if (item.get_closest_marker("ros") is not None
                or SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ()))):
            item.add_marker(pytest.mark.slow)


def textured(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A random blocky RGB image (texture SIFT and the codecs can tell apart)."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, period: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return bool(predicate())


@pytest.fixture(scope="session")
def ros_domain_id() -> int:
    """The ROS_DOMAIN_ID this session holds."""
    return _DOMAIN


@pytest.fixture
def ros_context() -> Iterator[object]:
    """A fresh rclpy context for one test (init/shutdown), not the global default."""
    rclpy = pytest.importorskip("rclpy")
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    try:
        yield ctx
    finally:
        rclpy.shutdown(context=ctx)


class Spinner:
    """Spins nodes on a multi-threaded executor in a background thread."""

    def __init__(self, context: object) -> None:
        from rclpy.executors import MultiThreadedExecutor

        self.executor = MultiThreadedExecutor(context=context, num_threads=4)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._stop = threading.Event()
        self._nodes: list = []

    def _spin(self) -> None:
        while not self._stop.is_set() and self.executor.context.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def add(self, node: object) -> object:
        """Add a node and return it."""
        self.executor.add_node(node)
        self._nodes.append(node)
        return node

    def start(self) -> Spinner:
        """Start spinning."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop spinning and destroy the nodes."""
        self._stop.set()
        self._thread.join(timeout=5)
        for node in self._nodes:
            self.executor.remove_node(node)
            node.destroy_node()
        self.executor.shutdown(timeout_sec=1)


@pytest.fixture
def spinner(ros_context: object) -> Iterator[Spinner]:
    """A running :class:`Spinner` on the test's rclpy context."""
    sp = Spinner(ros_context).start()
    try:
        yield sp
    finally:
        sp.stop()


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    """The bin folder of the Python running the tests (its console scripts live there)."""
    return Path(sys.executable).parent


# the session building's lens: plumb_bob k1 k2 p1 p2, a webcam-like barrel distortion
LENS_DISTORTION = ["-0.25", "0.07", "0.001", "-0.001"]


def _synth(venv_bin: Path, out: Path, *extra: str) -> None:
    """``camera-pose synth`` of the session building (small, lens distortion) into ``out``."""
    subprocess.run([str(venv_bin / "camera-pose"), "-q", "synth", "--out", str(out), "--seed",
                    "1", "--frames", "110", "--query-frames", "8", "--width", "320", "--height",
                    "240", "--scale", "0.7", "--loops", "1.3", "--distortion",
                    *LENS_DISTORTION, *extra], check=True, timeout=600)


def _dataset(venv_bin: Path, synth: Path, data: Path) -> None:
    """``camera-pose dataset`` of ``synth``'s mapping walk (control points, plan, truth)."""
    proc = subprocess.run(
        [str(venv_bin / "camera-pose"), "-q", "dataset", "--bag", str(synth / "mapping"),
         "--control-points", str(synth / "control_points.csv"), "--out", str(data),
         "--floorplan", str(synth / "floorplan.yaml"), "--ground-truth",
         str(synth / "gt_mapping.csv")],
        capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="session")
def sfm_building(tmp_path_factory, venv_bin) -> tuple[Path, Path]:
    """A small synthetic building and its dataset built with the CLI (SfM included), once.

    Its camera has lens distortion (:data:`LENS_DISTORTION`, in the bags' CameraInfo), so the
    dataset, refinement and node tests run the distortion-aware path end to end.

    Returns ``(synth, data)``: the synthetic folder (bags, ground truth) and the dataset.
    """
    root = tmp_path_factory.mktemp("e2e")
    synth, data = root / "synth", root / "data"
    _synth(venv_bin, synth)
    _dataset(venv_bin, synth, data)
    return synth, data


@pytest.fixture(scope="session")
def floors_building(sfm_building, venv_bin) -> tuple[Path, list[Path]]:
    """Two floors (``synth --floors 2`` with :func:`sfm_building`'s options, so floor 0 is
    that building) and a dataset per floor (floor 0's is :func:`sfm_building`'s).

    Returns ``(synth, [data_0, data_1])``: the floors' folder (``floors.yaml``,
    ``floor_<f>/``) and each floor's dataset.
    """
    synth0, data0 = sfm_building
    root = synth0.parent / "floors"
    _synth(venv_bin, root, "--floors", "2")
    data1 = root / "data_1"
    _dataset(venv_bin, root / "floor_1", data1)
    return root, [data0, data1]


def small_refinement_map(*, distortion: tuple[float, ...] = (), alignment_rms_m: float = 0.01
                         ) -> RefinementMap:
    """Three mapped frames, five points: enough to save and load, not to refine against."""
    from camera_pose_ros.camera import PinholeCamera
    from camera_pose_ros.io.refmap import RefinementMap, compact_descriptors

    rng = np.random.default_rng(0)
    poses = np.tile(np.eye(4), (3, 1, 1))
    poses[:, :3, 3] = rng.normal(size=(3, 3))
    codes, mean, basis, scale = compact_descriptors(
        np.arange(5), rng.integers(0, 255, (5, 128)).astype(np.uint8), 5)
    return RefinementMap(
        names=np.array(["a.png", "b.png", "c.png"]), map_from_cam=poses,
        camera=PinholeCamera(320, 240, 260.0, 261.0, 159.5, 119.5, distortion),
        points=rng.normal(size=(5, 3)).astype(np.float32), offsets=np.array([0, 2, 3, 5]),
        frame_points=np.array([0, 1, 2, 3, 4], np.int32), desc_codes=codes, desc_mean=mean,
        desc_basis=basis, desc_scale=scale,
        vocabulary=rng.normal(size=(4, 128)).astype(np.float32),
        idf=np.ones(4, np.float32), global_desc=np.eye(3, 4, dtype=np.float32),
        alignment_rms_m=alignment_rms_m)


def write_random_checkpoint(path: Path, *, seed: int | None = None,
                            provenance: dict | None = None) -> Path:
    """A tiny untrained PoseNet checkpoint (metres off, as a rule) with a plain calibration."""
    import torch

    from camera_pose_ros.learning.checkpoint import build_regressor, save_checkpoint

    model = {"kind": "posenet", "backbone": "mobilenet_v3_small", "hidden": 32,
             "dropout": 0.2, "pool_grid": [1, 1], "pos_mean": [4.0, 3.0, 1.5],
             "pos_scale": 2.0}
    inp = {"height": 48, "width": 64, "mean": [0.485, 0.456, 0.406],
           "std": [0.229, 0.224, 0.225]}
    calib = {"method": "mc_dropout", "samples": 4, "k_pos": 1.0, "k_rot": 1.0,
             "floor_pos": 0.05, "floor_rot": 0.01}
    if seed is not None:
        torch.manual_seed(seed)
    extra: dict = {"calibration": calib}
    if provenance is not None:
        extra["provenance"] = provenance
    return save_checkpoint(path, build_regressor(model).eval(), model_cfg=model,
                           input_cfg=inp, map_frame="map", extra=extra)


@pytest.fixture(scope="session")
def map_checkpoint(sfm_building, tmp_path_factory) -> tuple[Path, Path]:
    """A small random network whose provenance names :func:`sfm_building`'s dataset.

    Returns ``(model.pt, refine.yaml)``; the YAML sets a refinement option explicitly (the
    regressed pose of a random network is anywhere in the building, which refinement no
    longer gates on by default).
    """
    _, data = sfm_building
    root = tmp_path_factory.mktemp("refine_ckpt")
    path = write_random_checkpoint(root / "model.pt", provenance={"dataset": str(data)})
    cfg = root / "refine.yaml"
    cfg.write_text("gate_min_m: 100.0\n")
    return path, cfg


#: a tiny structure-aware config: trains in seconds on the session building
TINY_STRUCTURE = dict(model="structure_aware", backbone="mobilenet_v3_small", pretrained="none",
                      head_width=32, input_height=48, input_width=64, batch_size=8,
                      max_labels=128, epochs=8, geometry_epochs=5, lr=3e-3, device="cpu",
                      early_stopping_patience=100, rotation_augment_deg=5.0)


@pytest.fixture(scope="session")
def structure_checkpoint(sfm_building, tmp_path_factory) -> Path:
    """A tiny structure-aware model trained for a few epochs on :func:`sfm_building`'s
    dataset and its scene labels (the dataset command wrote them)."""
    from camera_pose_ros.learning.train import load_train_config, train

    _, data = sfm_building
    out = tmp_path_factory.mktemp("structure_run")
    return train(data, load_train_config(None, **TINY_STRUCTURE), out, progress=False)
