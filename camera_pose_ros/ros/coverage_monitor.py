"""Live capture coverage for ``recorder_node``: how much of the floor plan the walk has seen.

While images are recorded, the camera's map pose is sampled every ``coverage_period``
seconds, from ``/tf`` + ``/tf_static`` composed by hand (``map_frame`` -> ... ->
``camera_frame``, whatever lies between: ``odom``, ``base_link``, ``camera_link``; or
``map_frame`` -> ``base_frame`` and the fixed ``base_to_camera``), or from a map-frame pose
topic of the base (``pose_topic``: ``geometry_msgs/PoseWithCovarianceStamped`` such as
AMCL's ``/amcl_pose``, ``PoseStamped`` or ``nav_msgs/Odometry``) and the camera extrinsic
(``base_to_camera``, else ``base_frame`` -> ``camera_frame`` from TF). The floor plan is the
``floorplan`` YAML and/or ``map_topic`` (``nav_msgs/OccupancyGrid``; each valid one replaces
the plan and the walk so far is covered again).

Every ``coverage_publish_period`` seconds, on a worker thread (the bag writing never waits
for it), the running coverage (:class:`camera_pose_ros.runtime.coverage.LiveCoverage`) goes
out as:

- ``~/coverage_map`` (``nav_msgs/OccupancyGrid``, transient local, the plan's grid): -1 not
  walkable, 100 walkable and never seen, less the more heading sectors a cell was seen from
  (0: all 8); RViz's ``costmap`` colour scheme shows the unseen floor apart;
- ``/diagnostics`` (``diagnostic_msgs/DiagnosticArray``): one status ``<node>: coverage``
  whose message is the summary line and whose values are ``walkable_seen``,
  ``walkable_seen_2_headings``, ``walkable_m2``, ``poses``, ``gaps`` (``x,y,area_m2`` of the
  largest unseen areas), ``plan``, ``pose_source``, ``problem``;
- the log: the same summary line.

A malformed or hostile TF, pose or OccupancyGrid message is counted, logged (at most every
5 s per kind) and ignored: the recorder keeps recording.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from nav_msgs.msg import OccupancyGrid, Odometry
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from tf2_msgs.msg import TFMessage

from camera_pose_ros.errors import CameraPoseError, ConfigError, InputDataError
from camera_pose_ros.io.floorplan import FloorPlan
from camera_pose_ros.ros import conversions as conv
from camera_pose_ros.ros.msgtypes import latched_qos
from camera_pose_ros.ros.params import ParamSpec, declare_parameters
from camera_pose_ros.runtime.coverage import CoverageReport, LatestTransforms, LiveCoverage
from camera_pose_ros.runtime.odometry import base_from_camera
from camera_pose_ros.runtime.workers import LatestJobWorker

__all__ = ["CoverageMonitor", "COVERAGE_PARAMS"]

COVERAGE_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("floorplan", "", "map_server YAML of the floor plan to cover (\"\": only "
              "map_topic)"),
    ParamSpec("map_topic", "/map", "nav_msgs/OccupancyGrid floor plan; each valid one "
              "replaces the plan (\"\": none)"),
    ParamSpec("pose_topic", "", "a map-frame pose of the base (PoseWithCovarianceStamped such "
              "as /amcl_pose, PoseStamped or Odometry) instead of TF (\"\": TF)"),
    ParamSpec("map_frame", "map", "the floor plan's frame"),
    ParamSpec("base_frame", "base_link", "the robot's base frame (with base_to_camera or "
              "pose_topic)"),
    ParamSpec("camera_frame", "camera_optical_frame", "the camera's optical frame (z forward)"),
    ParamSpec("coverage_period", 1.0, "seconds between camera pose samples while images are "
              "recorded (0: no live coverage)", min_value=0.0, max_value=60.0),
    ParamSpec("coverage_publish_period", 5.0, "seconds between ~/coverage_map, the "
              "/diagnostics status and the log line", min_value=0.05, max_value=600.0),
    ParamSpec("camera_hfov_deg", 60.0, "the camera's horizontal field of view",
              min_value=1.0, max_value=360.0),
    ParamSpec("coverage_range", 8.0, "metres a view reaches along the floor",
              min_value=0.1, max_value=100.0),
    ParamSpec("max_tf_age", 2.0, "seconds; a TF edge or pose older than this gives no pose",
              min_value=0.0, max_value=3600.0),
)
#: cells of the largest OccupancyGrid taken from map_topic
MAX_MAP_CELLS = 25_000_000
WARN_PERIOD_S = 5.0
_MAP_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)
_TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
_POSE_TYPES = {"geometry_msgs/msg/PoseWithCovarianceStamped": PoseWithCovarianceStamped,
               "geometry_msgs/msg/PoseStamped": PoseStamped, "nav_msgs/msg/Odometry": Odometry}


class CoverageMonitor:
    """Declares and checks the coverage parameters on ``node``; :meth:`start` (unless
    ``coverage_period`` is 0) subscribes, publishes and samples as the module says.

    Args:
        node: the recorder.
        images_recorded: how many image messages the recorder has written so far (a pose is
            sampled only when it grew: the camera is recording).

    Raises:
        ConfigError: an unreadable ``floorplan`` or an unusable ``base_to_camera``.
    """

    def __init__(self, node: Node, images_recorded: Callable[[], int]) -> None:
        self.node, self._images_recorded = node, images_recorded
        declare_parameters(node, COVERAGE_PARAMS)
        node.declare_parameter("base_to_camera", None, ParameterDescriptor(
            dynamic_typing=True,
            description="x y z qx qy qz qw of camera_frame in base_frame (unset: from TF)"))
        self.p: Callable[[str], Any] = lambda name: node.get_parameter(name).value
        self.rejected: dict[str, int] = {}
        self.live: LiveCoverage | None = None
        self._worker: LatestJobWorker[str] | None = None
        self.reports = 0
        self._logged: dict[str, float] = {}
        if float(self.p("coverage_period")) <= 0:
            return
        extrinsic = self.p("base_to_camera")
        self.base_from_cam = base_from_camera(extrinsic) if extrinsic is not None else None
        self.pose_topic = str(self.p("pose_topic"))
        self.live = LiveCoverage(hfov_rad=math.radians(float(self.p("camera_hfov_deg"))),
                                 max_range=float(self.p("coverage_range")),
                                 source=self.pose_topic or "tf")
        if self.p("floorplan"):
            try:
                self.live.set_plan(FloorPlan.load(self.p("floorplan")), str(self.p("floorplan")))
            except InputDataError as exc:
                raise ConfigError(f"floorplan: {exc}") from exc
        self.tf = LatestTransforms()
        self._images_seen = 0
        self._pose: tuple[np.ndarray, float] | None = None  # map_from_base of pose_topic
        self._pose_sub: object | None = None
        self.problem = "no image recorded yet"
        self._said_no_plan = False

    def start(self) -> None:
        """Subscribe, create the publishers, timers and the worker thread (unless disabled)."""
        node = self.node
        if self.live is None or self._worker is not None:
            return
        node.create_subscription(TFMessage, "/tf", self._guard(self._on_tf, "tf"), _TF_QOS)
        node.create_subscription(TFMessage, "/tf_static",
                                 self._guard(self._on_tf_static, "tf"), latched_qos(_TF_QOS))
        if self.p("map_topic"):
            node.create_subscription(OccupancyGrid, str(self.p("map_topic")),
                                     self._guard(self._on_map, "map"), _MAP_QOS)
        self._map_pub = node.create_publisher(OccupancyGrid, "~/coverage_map", _MAP_QOS)
        self._diag_pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._worker = LatestJobWorker(self._update, name="recorder-coverage",
                                       on_error=lambda exc: self._warn(
                                           "update", f"coverage update failed: {exc}"))
        self._worker.start()
        node.create_timer(float(self.p("coverage_period")), self._guard(self._sample, "sample"))
        node.create_timer(float(self.p("coverage_publish_period")),
                          lambda: self._worker.submit(self.problem) if self._worker else None)

    def stop(self) -> None:
        """Stop the worker thread (before the node goes)."""
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    # -- callbacks (the executor's thread: cheap) ------------------------------------------
    def _warn(self, key: str, text: str) -> None:
        now = time.monotonic()
        if now - self._logged.get(key, -WARN_PERIOD_S) >= WARN_PERIOD_S:
            self._logged[key] = now
            self.node.get_logger().warning(text)

    def _guard(self, callback: Callable[..., object], what: str) -> Callable[..., None]:
        """``callback`` that counts, logs (throttled) and drops what it raises."""

        def run(*args: object) -> None:
            try:
                callback(*args)
            except Exception as exc:  # a hostile message must never stop the recorder
                self.rejected[what] = self.rejected.get(what, 0) + 1
                text = str(exc) if isinstance(exc, CameraPoseError) else (
                    f"{type(exc).__name__}: {exc}")
                self._warn(what, f"coverage: ignoring {what}: {text} "
                                 f"({self.rejected[what]} so far)")

        return run

    def _add_transforms(self, msg: TFMessage, static: bool) -> None:
        now, bad = time.monotonic(), []
        for t in msg.transforms:
            tr, q = t.transform.translation, t.transform.rotation
            try:
                self.tf.add(t.header.frame_id, t.child_frame_id, (tr.x, tr.y, tr.z),
                            (q.x, q.y, q.z, q.w), static=static, now=now)
            except InputDataError as exc:  # the message's other transforms still count
                bad.append(str(exc))
        if bad:
            raise InputDataError(f"{len(bad)} transform(s): {bad[0]}")

    def _on_tf(self, msg: TFMessage) -> None:
        self._add_transforms(msg, False)

    def _on_tf_static(self, msg: TFMessage) -> None:
        self._add_transforms(msg, True)

    def _on_map(self, msg: OccupancyGrid) -> None:
        frame = msg.header.frame_id.lstrip("/")
        if frame and frame != str(self.p("map_frame")).lstrip("/"):
            raise InputDataError(f"map in frame '{frame}', not map_frame "
                                 f"'{self.p('map_frame')}'")
        plan = conv.floorplan_from_grid(msg, MAX_MAP_CELLS)
        if self.live is not None:
            self.live.set_plan(plan, str(self.p("map_topic")))
            self.node.get_logger().info(f"coverage: floor plan from {self.p('map_topic')} "
                                        f"({msg.info.width}x{msg.info.height})")

    def _on_pose(self, msg: Any) -> None:
        frame = msg.header.frame_id.lstrip("/")
        if frame != str(self.p("map_frame")).lstrip("/"):
            raise InputDataError(f"pose in frame '{frame}', not map_frame "
                                 f"'{self.p('map_frame')}'")
        pose = msg.pose if isinstance(msg, PoseStamped) else msg.pose.pose
        self._pose = (conv.pose_to_matrix(pose), time.monotonic())

    def _discover_pose_topic(self) -> None:
        for name, types in self.node.get_topic_names_and_types():
            if name == self.pose_topic and types and types[0] in _POSE_TYPES:
                self._pose_sub = self.node.create_subscription(
                    _POSE_TYPES[types[0]], name, self._guard(self._on_pose, "pose"), 10)
                self.node.get_logger().info(f"coverage: camera pose from {name} ({types[0]})")

    def _camera_pose(self, now: float) -> np.ndarray:
        """``map_from_cam`` now (raises InputDataError saying why there is none)."""
        max_age = float(self.p("max_tf_age"))
        base, cam = str(self.p("base_frame")), str(self.p("camera_frame"))
        if self.pose_topic:
            if self._pose is None or now - self._pose[1] > max_age:
                raise InputDataError(f"no pose on {self.pose_topic} in the last {max_age:g} s")
            extrinsic = (self.base_from_cam if self.base_from_cam is not None else
                         self.tf.lookup(base, cam, now=now, max_age=math.inf))
            return self._pose[0] @ extrinsic
        mapf = str(self.p("map_frame"))
        if self.base_from_cam is not None:
            return self.tf.lookup(mapf, base, now=now, max_age=max_age) @ self.base_from_cam
        return self.tf.lookup(mapf, cam, now=now, max_age=max_age)

    def _sample(self) -> None:
        if self.live is None:
            return
        if self.pose_topic and self._pose_sub is None:
            self._discover_pose_topic()
        recorded = self._images_recorded()
        if recorded == self._images_seen:
            return  # the camera is not recording: nothing new is seen
        self._images_seen = recorded
        try:
            pose = self._camera_pose(time.monotonic())
        except InputDataError as exc:
            self.problem = str(exc)
            if self.live.has_plan:  # without a plan there is nothing to cover: no noise
                self._warn("pose", f"coverage: no camera pose: {exc}")
            return
        self.problem = ""
        self.live.add_pose(pose)

    # -- the worker thread -------------------------------------------------------------------
    def _update(self, problem: str) -> None:
        if self.live is None:
            return
        report = self.live.update(problem)
        if report is None:
            if not self._said_no_plan:  # once: a recorder without a plan is fine
                self._said_no_plan = True
                self.node.get_logger().info(
                    "live coverage waits for a floor plan (the floorplan parameter or "
                    f"{self.p('map_topic') or 'a map_topic'})")
            return
        self._publish(report)

    def _publish(self, report: CoverageReport) -> None:
        stamp = self.node.get_clock().now().to_msg()
        self._map_pub.publish(conv.occupancy_grid(stamp, str(self.p("map_frame")), report.grid,
                                                  report.resolution, report.origin))
        self._diag_pub.publish(conv.diagnostic_array(
            stamp, f"{self.node.get_name()}: coverage", report.status))
        self.reports += 1
        self.node.get_logger().info(f"coverage: {report.status.message}")
