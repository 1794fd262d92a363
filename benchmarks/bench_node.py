"""Node latency: relocalization_node vs a trivial echo node vs the bare forward pass.

In one run on one machine: 640x480 rgb8 frames are published at 10 Hz from this process
(reliable), each stamped with its publish time; the time until the matching PoseStamped
comes back is the end-to-end latency. The same probe against an echo node (subscribes to the
image, publishes a PoseStamped with its stamp at once) gives the transport floor. The bare
forward pass of the same checkpoint (preprocessing + network + covariance samples) is timed
in-process. Reported: p50/p99 of each and node / (echo + forward).

    python -m benchmarks.bench_node --checkpoint RUN/model.pt [--frames 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import write_results

ECHO = """
import sys, rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node("echo")
pub = node.create_publisher(PoseStamped, "/echo/pose", 10)
def cb(msg):
    out = PoseStamped(); out.header = msg.header; pub.publish(out)
node.create_subscription(Image, "/image", cb,
                         QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
try:
    rclpy.spin(node)
except Exception:
    pass
"""


def _probe(pose_topic: str, frames: int, rate: float, size: tuple[int, int]) -> np.ndarray:
    import rclpy
    from geometry_msgs.msg import PoseStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from camera_pose_ros.ros.spin import spin_in_background

    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("latency_probe", context=ctx)
    sent: dict[tuple[int, int], float] = {}
    lat: list[float] = []
    lock = threading.Lock()

    def on_pose(msg: PoseStamped) -> None:
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        with lock:
            if key in sent:
                lat.append(time.perf_counter() - sent.pop(key))

    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(PoseStamped, pose_topic, on_pose, reliable)
    pub = node.create_publisher(Image, "/image", reliable)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    spin = spin_in_background(ex, ctx)
    deadline = time.monotonic() + 60
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    h, w = size
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    # warm-up frames (model first-call costs), not counted
    for i in range(frames + 10):
        msg = Image()
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.height, msg.width, msg.encoding, msg.step = h, w, "rgb8", w * 3
        msg.data = np.roll(base, i, axis=1).tobytes()
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        with lock:
            if i >= 10:
                sent[key] = time.perf_counter()
        pub.publish(msg)
        time.sleep(1.0 / rate)
    time.sleep(2.0)
    ctx.shutdown()
    spin.join(timeout=5)
    return np.array(lat) * 1000.0


def _start(cmd: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def run(checkpoint: Path, frames: int = 200, rate: float = 10.0, device: str = "cpu",
        size: tuple[int, int] = (480, 640)) -> dict:
    """Measure node, echo and forward; return the figures."""
    import cv2

    from camera_pose_ros.learning.checkpoint import load_checkpoint
    from camera_pose_ros.learning.predict import Predictor

    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(90 + os.getpid() % 9))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    out: dict = {"frames": frames, "rate_hz": rate, "image": f"{size[1]}x{size[0]} rgb8",
                 "device": device, "checkpoint": Path(checkpoint).name}  # no machine paths
    # bare forward pass, same checkpoint, same image size
    pred = Predictor(load_checkpoint(checkpoint), device=device)
    img = np.random.default_rng(1).integers(0, 255, (*size, 3), dtype=np.uint8)
    for _ in range(5):
        pred.predict([img])
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        pred.predict([img])
        times.append(time.perf_counter() - t0)
    out["forward_ms_p50"] = float(np.percentile(times, 50) * 1000)
    del pred, cv2
    # echo node: the transport floor
    echo = _start([sys.executable, "-c", ECHO], env)
    try:
        lat = _probe("/echo/pose", frames, rate, size)
    finally:
        echo.terminate()
        echo.wait(timeout=10)
    out["echo_ms_p50"], out["echo_ms_p99"] = (float(np.percentile(lat, q)) for q in (50, 99))
    out["echo_received"] = int(len(lat))
    # the relocalization node
    node = _start([sys.executable, "-m", "camera_pose_ros.ros.relocalization_node",
                   "--ros-args", "-p", f"model_path:={checkpoint}", "-p", f"device:={device}",
                   "-p", "qos_overrides./image.subscription.reliability:=reliable"], env)
    try:
        time.sleep(3.0)
        lat = _probe("/relocalization/pose", frames, rate, size)
    finally:
        node.terminate()
        _, err = node.communicate(timeout=20)
    out["node_ms_p50"], out["node_ms_p99"] = (float(np.percentile(lat, q)) for q in (50, 99))
    out["node_received"] = int(len(lat))
    out["ratio_node_over_echo_plus_forward"] = out["node_ms_p50"] / (
        out["echo_ms_p50"] + out["forward_ms_p50"])
    out["node_beyond_transport_ms_p50"] = out["node_ms_p50"] - out["echo_ms_p50"]
    return out


def _tiny_checkpoint(folder: Path) -> Path:
    from camera_pose_ros.learning.checkpoint import build_regressor, save_checkpoint

    cfg = {"kind": "posenet", "backbone": "resnet18", "hidden": 1024, "dropout": 0.3,
           "pool_grid": [3, 4], "pos_mean": [0.0, 0.0, 1.5], "pos_scale": 3.0}
    inp = {"height": 96, "width": 128, "mean": [0.485, 0.456, 0.406],
           "std": [0.229, 0.224, 0.225]}
    return save_checkpoint(folder / "model.pt", build_regressor(cfg).eval(), model_cfg=cfg,
                           input_cfg=inp, map_frame="map", extra={})


def main(argv: list[str] | None = None) -> dict:
    """Command line entry; prints and writes the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path,
                   help="model.pt (default: an untrained one in the PoseNet preset's shape)")
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or _tiny_checkpoint(Path(tmp))
        res = run(ckpt, args.frames, device=args.device)
    print(json.dumps(res, indent=2))
    print(f"written {write_results('node', res)}")
    return res


if __name__ == "__main__":
    main()
