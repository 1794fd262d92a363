"""Soak: the relocalization node over a long run; its memory, refined poses and latency.

The node runs as a child process in refine mode against a dataset's refinement map
(memory-mapped), with ``refine_prior`` as given (``none`` by default: refinement from
retrieval alone, so an untrained network in the PoseNet preset's shape will do). The query
bag's images are published in a loop at ``--rate`` Hz (reliable, stamped now, with the bag's
camera_info) for ``--minutes``; every ``--sample-s`` seconds the node's resident memory is read
from ``/proc/PID/status``: anonymous memory (what a leak grows) and file-backed memory (the
pages of the memory-mapped map touched so far: bounded by the file's size).

Reported: resident memory after the warm-up, at the end and its largest, the slope of a
least-squares line through the samples after the warm-up (MB per minute, anonymous and in
all), frames sent, poses and refined poses received, the refined poses' median error against
the truth of the image each came from, the share outside their own 99% ellipsoid, and the
node's own latency figures from its last ``/diagnostics``.

    python -m benchmarks.bench_soak --data DATA --bag QUERY_BAG --gt GT_QUERY.csv
                                     [--minutes 10] [--rate 5] [--refine-prior none]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_node import _tiny_checkpoint
from benchmarks.common import write_results

WARMUP_S = 60.0


def resident_mb(pid: int) -> dict[str, float]:
    """A process's resident memory in MB: ``total``, ``anon`` and ``file`` (Linux)."""
    keys = {"VmRSS:": "total", "RssAnon:": "anon", "RssFile:": "file"}
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, *rest = line.split()
        if name in keys and rest:
            out[keys[name]] = int(rest[0]) / 1024.0  # kB
    return out


def memory_summary(t_s: np.ndarray, samples: list[dict[str, float]],
                   warmup_s: float = WARMUP_S) -> dict:
    """Resident memory after the warm-up, at the end, the largest, and the slopes (MB/min)
    of a least-squares line through the samples taken after ``warmup_s``."""
    t = np.asarray(t_s, float)
    keep = t >= warmup_s
    if keep.sum() < 2:
        raise ValueError(f"fewer than 2 memory samples after the {warmup_s:.0f} s warm-up")
    out: dict = {"samples": int(keep.sum())}
    for key in ("total", "anon", "file"):
        v = np.array([s[key] for s in samples], float)
        tk, vk = t[keep], v[keep]
        out[f"{key}_mb_after_warmup"] = float(vk[0])
        out[f"{key}_mb_end"] = float(vk[-1])
        out[f"{key}_mb_max"] = float(v.max())
        out[f"{key}_mb_per_min"] = float(np.polyfit(tk / 60.0, vk, 1)[0])
    return out


class _Probe:
    """Publishes the images in a loop, keeps the refined poses and the last diagnostics."""

    def __init__(self, frames: list, camera_info: object | None) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image

        from camera_pose_ros.ros.spin import spin_in_background

        self.frames, self.camera_info, self.Image = frames, camera_info, Image
        self.ctx = rclpy.context.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node("soak_probe", context=self.ctx)
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.lock = threading.Lock()
        self.sent: dict[tuple[int, int], int] = {}  # stamp -> index of the frame
        self.refined: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        self.poses = 0
        self.diagnostics: dict[str, str] = {}
        self.node.create_subscription(PoseWithCovarianceStamped,
                                      "/relocalization/pose_refined", self._on_refined,
                                      reliable)
        self.node.create_subscription(PoseWithCovarianceStamped,
                                      "/relocalization/pose_with_covariance",
                                      self._on_pose, reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.pub = self.node.create_publisher(Image, "/image", reliable)
        self.info_pub = self.node.create_publisher(CameraInfo, "/camera_info", reliable)
        ex = SingleThreadedExecutor(context=self.ctx)
        ex.add_node(self.node)
        self.spin = spin_in_background(ex, self.ctx)

    @staticmethod
    def _key(msg: object) -> tuple[int, int]:
        return msg.header.stamp.sec, msg.header.stamp.nanosec  # type: ignore[attr-defined]

    def _on_refined(self, msg: object) -> None:
        p, q = msg.pose.pose.position, msg.pose.pose.orientation  # type: ignore[attr-defined]
        with self.lock:
            idx = self.sent.get(self._key(msg))
            if idx is not None:
                self.refined.append((idx, np.array([p.x, p.y, p.z]),
                                     np.array([q.w, q.x, q.y, q.z]),
                                     np.array(msg.pose.covariance).reshape(6, 6)))  # type: ignore[attr-defined]

    def _on_pose(self, msg: object) -> None:
        with self.lock:
            self.poses += 1

    def _on_diag(self, msg: object) -> None:
        for status in msg.status:  # type: ignore[attr-defined]
            if "relocalization" in status.name:
                with self.lock:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}

    def wait_for_node(self, timeout: float) -> bool:
        """Until the node subscribes to the images."""
        deadline = time.monotonic() + timeout
        while self.pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.pub.get_subscription_count() > 0

    def send(self, i: int) -> None:
        """Publish the next image of the loop (and the camera_info every 10th)."""
        rgb = self.frames[i % len(self.frames)]
        msg = self.Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8",
                         step=rgb.shape[1] * 3, data=rgb.tobytes())
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = "camera_optical_frame"
        with self.lock:
            self.sent[self._key(msg)] = i % len(self.frames)
        if self.camera_info is not None and i % 10 == 0:
            self.info_pub.publish(self.camera_info)
        self.pub.publish(msg)

    def close(self) -> None:
        """Shut the probe's context down."""
        self.ctx.shutdown()
        self.spin.join(timeout=5)


def _camera_info(bag: Path) -> object | None:
    from sensor_msgs.msg import CameraInfo

    from camera_pose_ros.io.bags import read_camera_info

    cam = read_camera_info(bag, "/camera/camera_info")
    if cam is None:
        return None
    info = CameraInfo(width=cam.width, height=cam.height)
    if cam.distortion:
        info.distortion_model, info.d = cam.camera_info_distortion()
    info.k = [cam.fx, 0.0, cam.cx, 0.0, cam.fy, cam.cy, 0.0, 0.0, 1.0]
    return info


def run(data: Path, bag: Path, gt_csv: Path, checkpoint: Path, *, minutes: float = 10.0,
        rate: float = 5.0, sample_s: float = 10.0, refine_prior: str = "none",
        warmup_s: float = WARMUP_S) -> dict:
    """Soak the node; return the figures (see the module doc)."""
    from camera_pose_ros.io.bags import iter_bag_images
    from camera_pose_ros.io.posecsv import read_poses
    from camera_pose_ros.metrics import honesty_summary, match_by_stamp, pose_error_vectors

    gt = read_poses(gt_csv)
    frames = list(iter_bag_images(bag))
    ig, fi = match_by_stamp(gt.stamps, np.array([f.stamp for f in frames]), max_dt=1e-6)
    images = [frames[j].image_rgb for j in fi]
    truth_pos, truth_q = gt.positions_N3[ig], gt.quats_wxyz_N4[ig]
    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(80 + os.getpid() % 9))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    refmap = data / "refinement_map.npz"
    node = subprocess.Popen(
        [sys.executable, "-m", "camera_pose_ros.ros.relocalization_node", "--ros-args",
         "-p", f"model_path:={checkpoint}", "-p", "device:=cpu", "-p", "mode:=refine",
         "-p", f"refinement_map:={refmap}", "-p", f"refine_prior:={refine_prior}",
         "-p", "refine_every_n:=1", "-p", "mc_samples:=4", "-p", "path_period:=5.0",
         "-p", "qos_overrides./image.subscription.reliability:=reliable"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    probe = _Probe(images, _camera_info(bag))
    t_s: list[float] = []
    mem: list[dict[str, float]] = []
    try:
        if not probe.wait_for_node(120):
            raise SystemExit("the node did not subscribe to /image within 120 s")
        t0 = next_sample = time.monotonic()
        i = 0
        while (now := time.monotonic()) - t0 < minutes * 60.0:
            if node.poll() is not None:
                raise SystemExit(f"the node exited ({node.returncode}) after {now - t0:.0f} s")
            if now >= next_sample:
                t_s.append(now - t0)
                mem.append(resident_mb(node.pid))
                next_sample += sample_s
            probe.send(i)
            i += 1
            time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        time.sleep(3.0)  # the last refinement
    finally:
        probe.close()
        node.terminate()
        try:
            _, err = node.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
            _, err = node.communicate()
    out: dict = {"minutes": minutes, "rate_hz": rate, "refine_prior": refine_prior,
                 "query_images": len(images), "map_mb": refmap.stat().st_size / 1e6,
                 "sent": i, "poses": probe.poses, "refined": len(probe.refined)}
    out["refined_share_of_sent"] = out["refined"] / max(1, i)
    out["memory"] = memory_summary(np.array(t_s), mem, warmup_s)
    out["memory_samples"] = [{"t_s": round(t, 1), **{k: round(v, 1) for k, v in m.items()}}
                             for t, m in zip(t_s, mem, strict=True)]
    if probe.refined:
        idx = np.array([r[0] for r in probe.refined])
        err = pose_error_vectors(np.array([r[1] for r in probe.refined]),
                                 np.array([r[2] for r in probe.refined]),
                                 truth_pos[idx], truth_q[idx])
        out["refined_median_m"] = float(np.median(np.linalg.norm(err[:, :3], axis=1)))
        out["refined_median_deg"] = float(np.degrees(np.median(
            np.linalg.norm(err[:, 3:], axis=1))))
        out["honesty"] = honesty_summary(err, np.array([r[3] for r in probe.refined]))
        out["images_refined_at_least_once"] = int(len(set(idx.tolist())))
    out["diagnostics"] = {k: probe.diagnostics.get(k, "") for k in (
        "inference_ms_p50", "inference_ms_p99", "refine_ms_p50", "received", "published",
        "refined", "refine_failed", "refine_error", "dropped_stale")}
    out["node_stderr_tail"] = err[-1500:] if node.returncode not in (0, -15) else ""
    return out


def markdown(res: dict) -> str:
    """A one-row summary table."""
    m, h = res["memory"], res.get("honesty", {})
    med = res.get("refined_median_m")
    return ("| minutes | map MB | sent | refined | median | outside 99% | refine p50 ms "
            "| RSS after warm-up MB | RSS end | anon MB/min | all MB/min |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n"
            f"| {res['minutes']:g} | {res['map_mb']:.1f} | {res['sent']} "
            f"| {res['refined']} ({res['refined_share_of_sent']:.0%}) "
            f"| {'-' if med is None else f'{100 * med:.1f} cm'} "
            f"| {h.get('outside_99_any', 0.0):.1%} | {res['diagnostics']['refine_ms_p50']} "
            f"| {m['total_mb_after_warmup']:.0f} | {m['total_mb_end']:.0f} "
            f"| {m['anon_mb_per_min']:+.2f} | {m['total_mb_per_min']:+.2f} |\n")


def main(argv: list[str] | None = None) -> dict:
    """Command line entry; prints and writes the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="dataset folder (its "
                   "refinement_map.npz)")
    p.add_argument("--bag", type=Path, required=True, help="query bag (images, camera_info)")
    p.add_argument("--gt", type=Path, required=True, help="the query walk's truth (CSV)")
    p.add_argument("--checkpoint", type=Path,
                   help="model.pt (default: an untrained one in the PoseNet preset's shape)")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=5.0, help="images per second")
    p.add_argument("--sample-s", type=float, default=10.0)
    p.add_argument("--warmup-s", type=float, default=WARMUP_S)
    p.add_argument("--refine-prior", choices=("none", "network"), default="none")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or _tiny_checkpoint(Path(tmp))
        res = run(args.data, args.bag, args.gt, ckpt, minutes=args.minutes, rate=args.rate,
                  sample_s=args.sample_s, refine_prior=args.refine_prior,
                  warmup_s=args.warmup_s)
    print(markdown(res))
    print(f"written {write_results('soak', res, markdown(res))}")
    return res


if __name__ == "__main__":
    main()
