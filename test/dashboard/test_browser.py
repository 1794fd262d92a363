"""The dashboard in a real headless Chromium, driven by Selenium, with a real robot graph.

A ``relocalization_node`` (refine mode, the session's tiny trained checkpoint) localizes
frames published over DDS; a ``dashboard_node`` process shows its outputs. The page must say
that no pose came yet, then draw each published pose where the node put it, tell regressed
and refined poses apart, say when the robot goes quiet; the upload page must draw a photo's
pose, and the dataset and model pages must draw their plots. Screenshots of every page go to
the test's folder, and to ``$DASHBOARD_SCREENSHOTS`` when set (the README's come from there).

Selenium drives the system's Chromium through the system's chromedriver (Debian packages
``chromium`` and ``chromium-driver``, which ``make test`` installs when run as root): the
driver comes from the same package as the browser, so their versions always match, and
nothing is downloaded at test time. Without them the test is skipped with the command that
installs them, except in CI (``CI`` set) or under ``make test`` as root
(``CAMERA_POSE_REQUIRE_BROWSER=1``), where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from camera_pose_ros.io.posecsv import read_poses
from test.conftest import wait_for
from test.dashboard.test_server import dashboard_run  # noqa: F401 -- the session's tiny run

rclpy = pytest.importorskip("rclpy")
from geometry_msgs.msg import PoseWithCovarianceStamped  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from camera_pose_ros.io.images import encode_raw  # noqa: E402
from camera_pose_ros.ros.relocalization_node import RelocalizationNode  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
INSTALL = ("the dashboard's browser test needs Chromium and its driver: `make test` installs "
           "them when run as root; elsewhere `sudo apt-get install chromium chromium-driver` "
           "(Debian; Ubuntu: chromium-browser chromium-chromedriver), or set CHROMIUM and "
           "CHROMEDRIVER to their paths")


def _browser_paths() -> tuple[str, str]:
    chromium = os.environ.get("CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None)
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if not chromium or not driver:
        if os.environ.get("CI") or os.environ.get("CAMERA_POSE_REQUIRE_BROWSER") == "1":
            pytest.fail(INSTALL)  # make test as root installs them: this must not be skipped
        pytest.skip(INSTALL)
    return chromium, driver


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,900", "--hide-scrollbars", f"--user-data-dir={tmp_path}/ud"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(driver), options=options)
    d.set_page_load_timeout(30)
    try:
        yield d
    finally:
        d.quit()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def screenshot(d, tmp_path: Path, name: str) -> Path:
    """A full-page PNG in the test's folder (and in $DASHBOARD_SCREENSHOTS)."""
    height = d.execute_script(
        "return Math.ceil(Math.max(document.documentElement.scrollHeight, ...[...document"
        ".querySelectorAll('main')].map(m => m.getBoundingClientRect().bottom + scrollY)))")
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 1400, "height": min(max(900, int(height) + 12), 3200), "deviceScaleFactor": 1,
        "mobile": False})
    time.sleep(0.3)
    path = tmp_path / f"dashboard_{name}.png"
    d.save_screenshot(str(path))
    d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    target = os.environ.get("DASHBOARD_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(target) / path.name)
    return path


def attr(d, css: str, name: str) -> str | None:
    return d.execute_script("const e = document.querySelector(arguments[0]); "
                            "return e ? e.getAttribute(arguments[1]) : null;", css, name)


def image_msg(node, rgb: np.ndarray) -> Image:
    msg = Image()
    msg.header.stamp = node.get_clock().now().to_msg()
    msg.header.frame_id = "camera_optical_frame"
    data, step = encode_raw(rgb, "rgb8")
    msg.height, msg.width, msg.encoding, msg.step = rgb.shape[0], rgb.shape[1], "rgb8", step
    msg.data = data
    return msg


def test_dashboard_in_a_browser_with_a_live_node(dashboard_run, ros_context, spinner,  # noqa: F811
                                                 browser, venv_bin, tmp_path):
    synth, data, model = dashboard_run
    d = browser
    spinner.add(RelocalizationNode(context=ros_context, parameter_overrides=[
        Parameter("model_path", value=str(model)), Parameter("device", value="cpu"),
        Parameter("mode", value="refine"), Parameter("refine_every_n", value=1),
        Parameter("mc_samples", value=4), Parameter("max_image_age", value=30.0),
        Parameter("path_period", value=0.0), Parameter("diagnostics_period", value=0.5),
        Parameter("qos_overrides./image.subscription.reliability", value="reliable")]))
    helper = spinner.add(rclpy.create_node("browser_test", context=ros_context))
    got: dict[int, list] = {}
    lock = threading.Lock()

    def record(msg: PoseWithCovarianceStamped, kind: str) -> None:
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        p = msg.pose.pose.position
        with lock:
            got.setdefault(stamp, []).append((kind, p.x, p.y))

    helper.create_subscription(PoseWithCovarianceStamped, "/relocalization/pose_with_covariance",
                               lambda m: record(m, "any"), RELIABLE)
    helper.create_subscription(PoseWithCovarianceStamped, "/relocalization/pose_refined",
                               lambda m: record(m, "refined"), RELIABLE)
    images = helper.create_publisher(Image, "/image", RELIABLE)
    port = _free_port()
    base = f"http://127.0.0.1:{port}/"
    log = open(tmp_path / "dashboard_node.log", "w")  # noqa: SIM115 -- closed below
    proc = subprocess.Popen(
        [str(venv_bin / "dashboard_node"), "--ros-args", "-p", f"port:={port}",
         "-p", f"checkpoint:={model}", "-p", f"floorplan_yaml:={synth / 'floorplan.yaml'}",
         "-p", "stale_after:=2.0", "-p", "image_period:=0.2",
         "-p", "qos_overrides./image.subscription.reliability:=reliable"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: _http_ok(base + "api/info") or proc.poll() is not None, 90)
        assert proc.poll() is None, (tmp_path / "dashboard_node.log").read_text()[-3000:]
        assert wait_for(lambda: helper.count_subscribers(
            "/relocalization/pose_with_covariance") >= 2 and helper.count_subscribers(
            "/image") >= 2, 30), "dashboard_node did not subscribe"

        # a robot that has not published yet: the page says so
        d.get(base)
        assert wait_for(lambda: attr(d, "#status", "data-state") == "waiting", 15), \
            d.find_element("id", "status").text
        assert "no pose received from /relocalization" in d.find_element("id", "status").text

        test = read_poses(data / "test.csv")
        picks = [0, 2, 4, 6]  # test frames a few steps apart
        frames = [cv2.imread(str(data / "images" / test.images[i]))[:, :, ::-1] for i in picks]
        # a featureless frame cannot be refined: its regressed pose stays on the path, drawn
        # apart from the refined ones
        flat = image_msg(helper, np.full_like(frames[0], 128))
        flat_stamp = flat.header.stamp.sec * 10**9 + flat.header.stamp.nanosec
        images.publish(flat)
        assert wait_for(lambda: flat_stamp in got, 30)
        assert wait_for(lambda: attr(d, "#current-pose", "data-stamp") == str(flat_stamp), 10)
        assert attr(d, "#current-pose", "data-kind") == "regressed"

        seen: list[tuple[float, float]] = []
        for i, rgb in enumerate(frames):
            msg = image_msg(helper, rgb)
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            images.publish(msg)
            assert wait_for(lambda s=stamp: s in got, 30), f"no pose for frame {i}"
            # the marker shows this frame's pose, where the node put it
            assert wait_for(lambda s=stamp: attr(d, "#current-pose", "data-stamp") == str(s),
                            10), f"frame {i} not drawn"

            def drawn_as_published(s: int = stamp) -> bool:
                x = float(attr(d, "#current-pose", "data-x"))
                y = float(attr(d, "#current-pose", "data-y"))
                with lock:
                    return any(abs(x - px) < 1e-9 and abs(y - py) < 1e-9
                               for _, px, py in got[s])

            assert wait_for(drawn_as_published, 5)
            assert attr(d, "#status", "data-state") == "live"
            # its refined pose follows (refine_every_n 1) and replaces it on the page
            if wait_for(lambda s=stamp: any(k == "refined" for k, _, _ in got[s]), 20):
                assert wait_for(lambda: attr(d, "#current-pose", "data-kind") == "refined"
                                and drawn_as_published(), 5), f"frame {i}: refined not drawn"
            seen.append((float(attr(d, "#current-pose", "data-x")),
                         float(attr(d, "#current-pose", "data-y"))))
        assert len(set(seen)) > 1, "the pose marker never moved"

        def dots(kind: str) -> list:
            return d.execute_script(
                "return [...document.querySelectorAll(arguments[0])].map("
                "c => [+c.getAttribute('cx'), -c.getAttribute('cy')])", f".pt-{kind}")

        def published(kind: str) -> list:
            with lock:
                return [(x, y) for v in got.values() for k, x, y in v
                        if kind == "regressed" or k == "refined"]

        for kind in ("regressed", "refined"):
            assert wait_for(lambda k=kind: len(dots(k)) >= 1, 10), kind
            assert all(any(abs(x - px) < 1e-6 and abs(y - py) < 1e-6
                           for px, py in published(kind)) for x, y in dots(kind)), kind
        assert wait_for(lambda: "received / published" in d.find_element(
            "id", "diagnostics").text, 10)
        assert wait_for(lambda: d.execute_script(
            "const i = document.getElementById('camera'); return i.complete && "
            "i.naturalWidth > 0"), 10), "no camera image"
        shot = screenshot(d, tmp_path, "live")

        # the robot goes quiet: the page keeps the last pose and says so
        assert wait_for(lambda: attr(d, "#status", "data-state") == "stale", 15)
        assert "stopped publishing" in d.find_element("id", "status").text
        assert attr(d, "#current-pose", "data-x") is not None

        # localize an uploaded photo: first a file that is no image, then a frame of the test
        # split written as PNG (its ground truth is known)
        (tmp_path / "notes.jpg").write_text("not an image")
        photo = tmp_path / "corridor.png"
        cv2.imwrite(str(photo), frames[3][:, :, ::-1])
        d.get(base + "localize")
        assert wait_for(lambda: d.execute_script(
            "return document.getElementById('split').options.length") == 3, 15)
        d.find_element("id", "file").send_keys(str(tmp_path / "notes.jpg"))
        assert wait_for(lambda: attr(d, "#errors .error", "data-status") == "415", 30)
        assert "not a PNG or JPEG" in d.find_element("id", "errors").text
        d.find_element("id", "file").send_keys(str(photo))
        assert wait_for(lambda: attr(d, "#result", "data-done") == "1", 60)
        for mode in ("regress", "refine"):
            assert attr(d, f"#result-{mode}", "data-x") is not None, mode
        x, y = (float(attr(d, "#result-refine", f"data-{k}")) for k in "xy")
        truth = test.positions_N3[picks[3]]
        assert np.hypot(x - truth[0], y - truth[1]) < 0.2
        assert "inliers" in d.find_element("id", "result").text
        screenshot(d, tmp_path, "localize")

        d.get(base + "dataset")
        assert wait_for(lambda: attr(d, "body", "data-ready") == "1", 30)
        alignment = json.loads((data / "alignment.json").read_text())
        assert d.execute_script("return document.querySelectorAll('circle.cp').length") == len(
            alignment["control_points"])
        assert d.execute_script("return document.querySelectorAll('rect.bar').length") == len(
            alignment["control_points"])
        assert "%" in d.find_element("id", "coverage-floor").text
        screenshot(d, tmp_path, "dataset")

        d.get(base + "model")
        assert wait_for(lambda: attr(d, "body", "data-ready") == "1", 30)
        assert d.execute_script("return document.querySelectorAll("
                                "'path.series[data-name=refine]').length") == 2  # both CDFs
        screenshot(d, tmp_path, "model")
        errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"
                  and "status of 415" not in e["message"]]
        assert not errors, errors
        assert shot.stat().st_size > 10_000
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        log.close()
    assert rc == 0, (tmp_path / "dashboard_node.log").read_text()[-3000:]
