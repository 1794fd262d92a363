"""Dashboard latency: a pose published over DDS -> drawn on the live page in Chromium.

In one run on one machine: ``dashboard_node`` runs as its own process with a floor plan,
a headless Chromium (Selenium, the system's chromedriver) shows its live page, and this
process publishes PoseWithCovarianceStamped messages on
``/relocalization/pose_with_covariance`` at 10 Hz (reliable), noting the wall time of each
publish. The page notes, for every pose, the wall time right after it has updated the
marker (``window.dashboardLog``: ``performance.timeOrigin + performance.now()``); the two
clocks are the same machine's, their offset through Selenium measured to within half the
smallest of 20 round trips. Baseline in the same run: the same messages received by a
subscriber in this process (the DDS hop alone). Reported: p50/p99 of each.

    python -m benchmarks.bench_dashboard [--messages 200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks.common import write_results


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _browser():  # -> selenium WebDriver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = os.environ.get("CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None)
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if not chromium or not driver:
        raise RuntimeError("Chromium and chromedriver are needed: sudo apt-get install "
                           "chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def _clock_offset(d) -> tuple[float, float]:  # noqa: ANN001 -- a WebDriver
    """Browser wall clock minus ours (s), and the round trip it was measured within (s)."""
    best = (0.0, float("inf"))
    for _ in range(20):
        t0 = time.time()
        b = d.execute_script("return performance.timeOrigin + performance.now()") / 1000.0
        t1 = time.time()
        if t1 - t0 < best[1]:
            best = (b - (t0 + t1) / 2, t1 - t0)
    return best


def run(messages: int = 200, rate: float = 10.0) -> dict:
    """Measure; returns the figures (``skipped`` with the reason when no browser)."""
    import rclpy
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from camera_pose_ros.io.floorplan import FloorPlan
    from camera_pose_ros.ros.spin import spin_in_background

    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(80 + os.getpid() % 9))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    try:
        d = _browser()
    except Exception as exc:  # no browser here: say so in the results, do not fail the run
        return {"skipped": f"no browser: {exc}"}
    tmp = tempfile.TemporaryDirectory()
    occ = np.zeros((200, 320), np.int8)  # a 16 x 10 m floor with walls round it
    occ[[0, -1], :] = 100
    occ[:, [0, -1]] = 100
    plan = FloorPlan(occ, 0.05, (0.0, 0.0)).save(Path(tmp.name) / "floorplan.yaml")
    port = _free_port()
    base = f"http://127.0.0.1:{port}/"
    node_proc = subprocess.Popen(
        [sys.executable, "-m", "camera_pose_ros.ros.dashboard_node", "--ros-args",
         "-p", f"port:={port}", "-p", f"floorplan_yaml:={plan}", "-p", "image_period:=0.0"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("dashboard_latency", context=ctx)
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pub = node.create_publisher(PoseWithCovarianceStamped,
                                "/relocalization/pose_with_covariance", reliable)
    sent: dict[int, float] = {}
    dds: list[float] = []
    lock = threading.Lock()

    def on_pose(msg: PoseWithCovarianceStamped) -> None:
        now = time.time()
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        with lock:
            if stamp in sent:
                dds.append(now - sent[stamp])

    node.create_subscription(PoseWithCovarianceStamped, "/relocalization/pose_with_covariance",
                             on_pose, reliable)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    th = spin_in_background(ex, ctx)
    out: dict = {"messages": messages, "rate_hz": rate}
    try:
        deadline = time.monotonic() + 120
        while not _up(base + "api/info") or pub.get_subscription_count() < 2:
            if time.monotonic() > deadline or node_proc.poll() is not None:
                raise RuntimeError("dashboard_node did not come up: "
                                   + (node_proc.stderr.read()[-500:] if node_proc.poll()
                                      is not None else "timeout"))
            time.sleep(0.2)
        d.get(base)
        while d.execute_script("return document.getElementById('status')"
                               ".getAttribute('data-state')") != "waiting":
            time.sleep(0.1)
        offset, rtt = _clock_offset(d)
        cov = np.diag([0.04, 0.01, 0.01, 1e-3, 1e-3, 1e-3]).reshape(-1).tolist()
        t0_ns = 1_700_000_000 * 10**9
        for i in range(messages + 10):  # the first 10 warm the path up, not counted
            msg = PoseWithCovarianceStamped()
            stamp = t0_ns + i * 10**8
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
            msg.header.frame_id = "map"
            a = i * 0.05
            msg.pose.pose.position.x = 8.0 + 5.0 * np.cos(a)
            msg.pose.pose.position.y = 5.0 + 3.0 * np.sin(a)
            msg.pose.pose.orientation.w = 1.0
            msg.pose.covariance = cov
            with lock:
                if i >= 10:
                    sent[stamp] = time.time()
            pub.publish(msg)
            time.sleep(1.0 / rate)
        time.sleep(2.0)
        entries = d.execute_script("return window.dashboardLog")
        page = [e["t"] / 1000.0 - offset - sent[int(e["stamp_ns"])] for e in entries
                if int(e["stamp_ns"]) in sent]
        page_ms, dds_ms = np.array(page) * 1000.0, np.array(dds) * 1000.0
        out.update({
            "page_received": int(len(page_ms)), "dds_received": int(len(dds_ms)),
            "clock_offset_ms": 1000.0 * offset, "clock_offset_uncertainty_ms": 500.0 * rtt,
            "page_ms_p50": float(np.percentile(page_ms, 50)),
            "page_ms_p99": float(np.percentile(page_ms, 99)),
            "dds_ms_p50": float(np.percentile(dds_ms, 50)),
            "dds_ms_p99": float(np.percentile(dds_ms, 99)),
            "browser": d.capabilities.get("browserVersion"),
        })
        out["dashboard_beyond_dds_ms_p50"] = out["page_ms_p50"] - out["dds_ms_p50"]
    finally:
        d.quit()
        ctx.shutdown()
        th.join(timeout=5)
        node_proc.terminate()
        try:
            node_proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            node_proc.kill()
        tmp.cleanup()
    return out


def markdown(res: dict) -> str:
    """Rows for the benchmark table."""
    if "skipped" in res:
        return f"dashboard latency: skipped ({res['skipped']})\n"
    return "\n".join([
        f"| dashboard ({res['messages']} poses at {res['rate_hz']:g} Hz, Chromium "
        f"{res.get('browser')}) | p50 | p99 |", "|---|---|---|",
        f"| pose published -> drawn on the live page | {res['page_ms_p50']:.1f} ms | "
        f"{res['page_ms_p99']:.1f} ms |",
        f"| pose published -> received by a subscriber (DDS alone) | {res['dds_ms_p50']:.1f} ms"
        f" | {res['dds_ms_p99']:.1f} ms |",
        f"| clock offset page/benchmark known to | +-{res['clock_offset_uncertainty_ms']:.1f} ms"
        " | |",
    ]) + "\n"


def main(argv: list[str] | None = None) -> dict:
    """Command line entry; prints and writes the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=200)
    args = p.parse_args(argv)
    res = run(args.messages)
    print(json.dumps(res, indent=2))
    print(markdown(res))
    print(f"written {write_results('dashboard', res, markdown(res))}")
    return res


if __name__ == "__main__":
    main()
