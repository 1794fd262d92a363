"""dashboard_node: the web dashboard of a running relocalization node.

Subscribes to what ``relocalization_node`` publishes (``<node>/pose_with_covariance``,
``<node>/pose_refined``, ``/diagnostics``) and to the camera image it localizes (``image``
or ``image/compressed``, decoded and downscaled at most every ``image_period`` seconds),
feeds a :class:`~camera_pose_ros.dashboard.state.LiveState`, and serves the dashboard
(FastAPI + uvicorn) on ``host:port``: every pose is pushed to the open pages as it arrives.
The offline pages (dataset, model) and image upload work from ``checkpoint``, ``data``,
``floorplan_yaml`` (all optional; the dataset and the plan are found from the checkpoint's
provenance). An input that cannot be used is logged and shown on the pages; the node keeps
running, as it does on a malformed message (logged, throttled, counted).

    dashboard_node --ros-args -p checkpoint:=RUN/model.pt -p port:=8080 \\
        -r image:=/camera/image_raw

Binds 127.0.0.1 unless ``host`` says otherwise; on any other address it requires
``token`` (a random one is made and logged when it is empty).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image

from camera_pose_ros.dashboard.state import LiveState
from camera_pose_ros.ros.conversions import image_to_rgb, stamp_to_ns
from camera_pose_ros.ros.params import ParamSpec, declare_parameters

__all__ = ["DashboardNode", "DASHBOARD_PARAMS", "main"]

RELIABLE_10 = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)

DASHBOARD_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("relocalization_node", "relocalization",
              "the relocalization node whose outputs are shown (relative names resolve in "
              "this node's namespace)"),
    ParamSpec("diagnostics_topic", "/diagnostics", "where the relocalization node's "
              "diagnostics arrive"),
    ParamSpec("host", "127.0.0.1", "address to serve on; another than loopback needs a token"),
    ParamSpec("port", 8080, "TCP port to serve on", min_value=1, max_value=65535),
    ParamSpec("token", "", "access token (\"\" on loopback: none; elsewhere one is made and "
              "logged)"),
    ParamSpec("checkpoint", "", "model.pt for the model page and image upload (\"\": none)"),
    ParamSpec("data", "", "dataset folder (\"\": the checkpoint's provenance)"),
    ParamSpec("floorplan_yaml", "", "map_server YAML (\"\": DATA/floorplan.yaml)"),
    ParamSpec("evaluation", "", "evaluation folder(s), comma-separated (\"\": DATA/eval_* and "
              "eval_* beside the checkpoint)"),
    ParamSpec("refinement_map", "", "refinement map for uploads (\"\": found from the "
              "checkpoint)"),
    ParamSpec("refine_config", "", "YAML of refinement settings for uploads"),
    ParamSpec("device", "cpu", "where uploads are localized", ("auto", "cpu", "cuda")),
    ParamSpec("image_transport", "raw", "show `image` (raw) or `image/compressed`",
              ("raw", "compressed")),
    ParamSpec("image_period", 0.5, "seconds between camera images shown (0: none)",
              min_value=0.0, max_value=3600.0),
    ParamSpec("image_width", 320, "width of the image shown (pixels)", min_value=16,
              max_value=4096),
    ParamSpec("max_image_pixels", 4096 * 4096, "larger camera images are not decoded",
              min_value=1, max_value=1 << 30),
    ParamSpec("path_length", 500, "poses kept in the recent path", min_value=1,
              max_value=100000),
    ParamSpec("stale_after", 3.0, "seconds without a pose before the page says the robot "
              "stopped publishing", min_value=0.1, max_value=3600.0),
    ParamSpec("max_upload_mb", 20.0, "largest image upload (MiB)", min_value=0.01,
              max_value=1024.0),
)


class DashboardNode(Node):
    """Feeds :attr:`live` from the relocalization node's topics (node name ``dashboard``)."""

    def __init__(self, node_name: str = "dashboard", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        declare_parameters(self, DASHBOARD_PARAMS)
        p = self.p
        reloc = str(p("relocalization_node")).rstrip("/") or "relocalization"
        self._reloc_name = reloc.rsplit("/", 1)[-1]
        self._warned: dict[str, float] = {}
        self._last_image = -1e9
        self.counts: dict[str, int] = {"bad_messages": 0, "images_shown": 0}
        pose_topic = self.resolve_topic_name(f"{reloc}/pose_with_covariance")
        self.live = LiveState(pose_topic.rsplit("/", 1)[0] or "/",
                              path_length=int(p("path_length")),
                              stale_after=float(p("stale_after")))
        self.create_subscription(
            PoseWithCovarianceStamped, f"{reloc}/pose_with_covariance",
            self._guarded(lambda m: self._on_pose(m, False), "pose"), RELIABLE_10)
        self.create_subscription(
            PoseWithCovarianceStamped, f"{reloc}/pose_refined",
            self._guarded(lambda m: self._on_pose(m, True), "refined pose"), RELIABLE_10)
        self.create_subscription(DiagnosticArray, str(p("diagnostics_topic")),
                                 self._guarded(self._on_diagnostics, "diagnostics"),
                                 RELIABLE_10)
        if float(p("image_period")) > 0:
            compressed = p("image_transport") == "compressed"
            self.create_subscription(
                CompressedImage if compressed else Image,
                "image/compressed" if compressed else "image",
                self._guarded(self._on_image, "image"),
                QoSProfile(depth=1, reliability=qos_profile_sensor_data.reliability,
                           durability=qos_profile_sensor_data.durability),
                qos_overriding_options=QoSOverridingOptions.with_default_policies())

    def p(self, name: str) -> Any:
        """A parameter's value (of the type :data:`DASHBOARD_PARAMS` declares)."""
        return self.get_parameter(name).value

    def _guarded(self, callback: Callable[[object], None], what: str
                 ) -> Callable[[object], None]:
        """``callback`` that logs (throttled), counts and drops what it raises."""

        def run(msg: object) -> None:
            try:
                callback(msg)
            except Exception as exc:  # one bad message must never stop the dashboard
                self.counts["bad_messages"] += 1
                now = time.monotonic()
                if now - self._warned.get(what, -10.0) >= 5.0:
                    self._warned[what] = now
                    self.get_logger().warning(f"ignoring a {what} message: "
                                              f"{type(exc).__name__}: {exc}")

        return run

    def _on_pose(self, msg: PoseWithCovarianceStamped, refined: bool) -> None:
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        self.live.on_pose(stamp_to_ns(msg.header.stamp), np.array([p.x, p.y, p.z]),
                          np.array([q.w, q.x, q.y, q.z]),
                          np.array(msg.pose.covariance, float).reshape(6, 6),
                          refined=refined, frame=msg.header.frame_id)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.split(":", 1)[0].strip() != self._reloc_name:
                continue
            level = status.level  # a `byte` field: bytes of length 1 in rclpy
            level = level[0] if isinstance(level, (bytes, bytearray)) else int(level)
            self.live.on_diagnostics(status.name, level, status.message,
                                     {kv.key: kv.value for kv in status.values})

    def _on_image(self, msg: Image | CompressedImage) -> None:
        now = time.monotonic()
        if now - self._last_image < float(self.p("image_period")):
            return
        self._last_image = now
        rgb = image_to_rgb(msg, int(self.p("max_image_pixels")))
        h, w = rgb.shape[:2]
        width = min(w, int(self.p("image_width")))
        if width < w:
            rgb = cv2.resize(rgb, (width, max(1, round(h * width / w))),
                             interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]),
                               [cv2.IMWRITE_JPEG_QUALITY, 80])
        if ok:
            self.counts["images_shown"] += 1
            self.live.on_image(buf.tobytes(), rgb.shape[1], rgb.shape[0],
                               stamp_to_ns(msg.header.stamp))


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ros2 run camera_pose_ros dashboard_node``: spin the node on a
    background thread and serve the dashboard until Ctrl-C or SIGTERM."""
    from camera_pose_ros.dashboard.server import (
        access_token,
        check_port,
        create_app,
        make_server,
    )
    from camera_pose_ros.dashboard.sources import find_sources
    from camera_pose_ros.errors import CameraPoseError

    try:  # before the signal handlers: importing pycolmap installs its own for SIGTERM
        import pycolmap  # noqa: F401
    except ImportError:
        pass
    rclpy.init(args=argv if argv is not None else sys.argv,
               signal_handler_options=SignalHandlerOptions.NO)
    node = DashboardNode()
    log = node.get_logger()
    p = node.p
    host, port = str(p("host")), int(p("port"))
    sources = find_sources(p("checkpoint") or None, p("data") or None,
                           p("floorplan_yaml") or None,
                           [e.strip() for e in str(p("evaluation")).split(",") if e.strip()],
                           p("refinement_map") or None)
    token = access_token(host, str(p("token")) or None)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    stop = threading.Event()

    def spin() -> None:
        try:
            while not stop.is_set() and rclpy.ok():
                executor.spin_once(timeout_sec=0.1)
        except ExternalShutdownException:
            pass

    spinner = threading.Thread(target=spin, name="dashboard-ros", daemon=True)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    status = 0
    try:
        check_port(host, port)
        app = create_app(sources, node.live, token=token,
                         max_upload_bytes=int(float(p("max_upload_mb")) * 2**20),
                         device=str(p("device")), refine_config=p("refine_config") or None,
                         warm_up=True)
        server = make_server(app, host, port)
        spinner.start()
        url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"
        log.info(f"dashboard on {url}{'?token=' + token if token else ''} (showing "
                 f"{node.live.source})")
        server.run()
    except CameraPoseError as exc:
        log.error(str(exc))
        status = 2
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        if spinner.is_alive():
            spinner.join(timeout=5)
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return status


if __name__ == "__main__":
    sys.exit(main())
