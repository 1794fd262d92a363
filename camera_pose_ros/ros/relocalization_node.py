"""relocalization_node: camera images in, map-frame poses with covariance out.

A lifecycle node (parameters, subscriptions, publishers, conversions, wiring) over
:class:`~camera_pose_ros.runtime.pipeline.RelocalizationPipeline`, the frame path without ROS.
``on_configure`` loads the model and creates the lifecycle publishers and the service,
``on_cleanup`` and ``on_shutdown`` destroy them; ``on_activate`` subscribes and starts the
workers, ``on_deactivate`` stops them; ``autostart`` does both. Topics: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import collections
import functools
import sys
import threading
import time
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from nav_msgs.msg import OccupancyGrid, Odometry, Path
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage

from camera_pose_ros.errors import CameraPoseError
from camera_pose_ros.io.bags import is_rectified_topic
from camera_pose_ros.io.floorplan import FloorPlan
from camera_pose_ros.ros import conversions as conv
from camera_pose_ros.ros.params import RELOCALIZATION_PARAMS, declare_parameters
from camera_pose_ros.ros.spin import spin_until_shutdown
from camera_pose_ros.runtime.diagnostics import NodeStats
from camera_pose_ros.runtime.estimate import PoseEstimate
from camera_pose_ros.runtime.pipeline import (
    Frame,
    PipelineSettings,
    RelocalizationPipeline,
    load_floor_set,
    load_localizer,
)

__all__ = ["RelocalizationNode", "main"]

RELIABLE_10 = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
RAW_IMAGE_QOS = QoSProfile(depth=1, reliability=qos_profile_sensor_data.reliability,
                           durability=qos_profile_sensor_data.durability)


class RelocalizationNode(LifecycleNode):
    """The relocalization lifecycle node (node name ``relocalization`` by default)."""

    def __init__(self, node_name: str = "relocalization", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        declare_parameters(self, RELOCALIZATION_PARAMS)
        self.stats = NodeStats()  # kept across lifecycle cycles
        self.localizer: Any = None  # runtime.localizer.Localizer, from configure to cleanup
        self.pipeline: RelocalizationPipeline | None = None  # from configure to cleanup
        self._cfg: dict[str, Any] = {}
        self._subs: list = []
        self._timers: list = []
        self._pubs: dict[str, Any] = {}
        self._service: Any = None
        self._path: collections.deque = collections.deque()
        self._last_path_pub = 0.0
        self._rectified = False  # the images are rectified (camera_info's P, not K and D)
        self._publish_lock = threading.Lock()
        if self.get_parameter("autostart").value:
            self._autostart_timer = self.create_timer(0.0, self._autostart)

    # -- lifecycle ----------------------------------------------------------------------
    def _autostart(self) -> None:
        self._autostart_timer.cancel()
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        """Load the model (floor plan, refiner); create the publishers and the service.

        Every failure is logged in one line and returns FAILURE (the node stays unconfigured).
        """
        try:
            cfg = {spec.name: self.get_parameter(spec.name).value
                   for spec in RELOCALIZATION_PARAMS}
            settings = PipelineSettings.from_params(cfg)
            floors = load_floor_set(cfg) if cfg["floors_file"] else None
            if floors is not None:
                localizer, plan = floors.localizer, None
                refinement_map = f"one per floor ({', '.join(floors.specs)})"
            else:
                localizer, plan, refinement_map = load_localizer(cfg)
        except Exception as exc:  # rclpy would swallow it without a word
            named = isinstance(exc, (CameraPoseError, ValueError))
            self.get_logger().error("configure failed: " + (
                str(exc) if named else f"unexpected {type(exc).__name__}: {exc}"))
            return TransitionCallbackReturn.FAILURE
        self._cfg, self.localizer, self._last_path_pub = cfg, localizer, 0.0
        self._path = collections.deque(maxlen=int(cfg["path_length"]))
        for key, typ, topic in (
                ("pose", PoseStamped, "~/pose"), ("path", Path, "~/path"),
                ("cov", PoseWithCovarianceStamped, "~/pose_with_covariance"),
                ("tf", TFMessage, "/tf"), ("diag", DiagnosticArray, "/diagnostics"),
                ("initial", PoseWithCovarianceStamped, "/initialpose"),
                ("refined", PoseWithCovarianceStamped, "~/pose_refined"),
                ("verified", PoseWithCovarianceStamped, "~/pose_verified"),
                *((("floor", String, "~/floor"), ("tf_static", TFMessage, "/tf_static"))
                  if floors is not None else ())):
            self._pubs[key] = self.create_lifecycle_publisher(typ, topic, {
                "tf": TF_QOS, "floor": LATCHED, "tf_static": LATCHED}.get(key, RELIABLE_10))
        self._service = self.create_service(Trigger, "~/relocalize", self._on_relocalize,
                                            callback_group=ReentrantCallbackGroup())
        self.pipeline = RelocalizationPipeline(
            localizer, settings, self, logger=self.get_logger(), stats=self.stats,
            now_ns=lambda: self.get_clock().now().nanoseconds, floors=floors)
        self.get_logger().info(
            f"configured: {localizer.model_name} on {localizer.device}, map frame "
            f"'{cfg['map_frame']}', floor plan {'yes' if plan else 'no'}, refinement map "
            f"{refinement_map or 'none'}")
        return super().on_configure(state)

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        """Enable the publishers, subscribe and start the workers."""
        ret = super().on_activate(state)
        if ret != TransitionCallbackReturn.SUCCESS or self.pipeline is None:
            return ret
        g, other = self.pipeline.guard, ReentrantCallbackGroup()
        kind, topic, qos = ((CompressedImage, "image/compressed", qos_profile_sensor_data)
                            if self.get_parameter("image_transport").value == "compressed"
                            else (Image, "image", RAW_IMAGE_QOS))
        image = self.create_subscription(
            kind, topic, g(self._on_image, "image", "rejected_bad_input"), qos,
            callback_group=MutuallyExclusiveCallbackGroup(),
            qos_overriding_options=QoSOverridingOptions.with_default_policies())
        setting = str(self._cfg["rectified_images"])
        self._rectified = (setting == "true" if setting != "auto"
                           else is_rectified_topic(image.topic_name))
        self._subs = [image] + [
            self.create_subscription(typ, name, g(cb, name, key, note), depth,
                                     callback_group=other)
            for typ, name, cb, key, note, depth in (
                (Odometry, "odom", self._on_odom, "rejected_odometry", "", 50),
                (OccupancyGrid, "map", self._on_map, "rejected_map",
                 "; the previous map (if any) stays in use", LATCHED),
                (Bool, "tracking_lost", self._on_tracking_lost, "rejected_other", "", 10),
                (CameraInfo, "camera_info", self._on_camera_info, "rejected_camera_info", "",
                 qos_profile_sensor_data),
                (String, "~/set_floor", self._on_set_floor, "rejected_other",
                 "; the floor stays", 10))]
        self._timers = [self.create_timer(period, g(cb, name, "rejected_other"),
                                          callback_group=other)
                        for period, cb, name in (
            (float(self.get_parameter("diagnostics_period").value),
             self._publish_diagnostics, "diagnostics"),
            (0.2, self.pipeline.session.expire, "relocalization"))]
        self.pipeline.start()
        self._announce_floors()
        self.get_logger().info(f"active: listening on {image.topic_name}")
        return ret

    def _stop(self) -> None:
        """Stop the workers; destroy the subscriptions and timers (``on_activate``'s)."""
        if self.pipeline is not None:
            self.pipeline.stop("the node was deactivated")
        for sub in self._subs:
            self.destroy_subscription(sub)
        for timer in self._timers:
            self.destroy_timer(timer)
        self._subs, self._timers = [], []

    def _release(self) -> None:
        """Stop; destroy the publishers and the service (``on_configure``'s), drop the model."""
        self._stop()
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        if self._service is not None:
            self.destroy_service(self._service)
        self._pubs, self._service, self.localizer, self.pipeline = {}, None, None, None

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        """Unsubscribe, stop the workers, disable the publishers."""
        self._stop()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        """Destroy the publishers and the service; release the model."""
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        """Stop and destroy everything (from any state)."""
        self._release()
        return super().on_shutdown(state)

    def on_error(self, state: State) -> TransitionCallbackReturn:
        """A transition raised: stop and destroy everything (back to unconfigured)."""
        self._release()
        return super().on_error(state)

    def destroy_node(self) -> None:
        """Stop the workers, then destroy the node."""
        self._stop()
        super().destroy_node()

    def _announce_floors(self) -> None:
        """With floors: each floor's frame on /tf_static (``map_frame -> frame_id``, raised
        by its elevation) and the current floor on ``~/floor``."""
        floors = self.pipeline.floors if self.pipeline is not None else None
        if floors is None:
            return
        stamp, parent = self.get_clock().now().to_msg(), str(self._cfg["map_frame"])
        self._pubs["tf_static"].publish(TFMessage(transforms=[
            conv.transform_stamped(stamp, parent, spec.frame_id, np.array([0, 0, spec.elevation]),
                                   np.array([1.0, 0, 0, 0]))
            for spec in floors.specs.values() if spec.frame_id != parent]))
        self.floor_changed(floors.current)

    def _frame(self, est: PoseEstimate) -> str:
        """The map frame an estimate is in (its floor's, with floors)."""
        floors = self.pipeline.floors if self.pipeline is not None else None
        return (floors.frame_id(est.floor) if floors is not None and est.floor
                else str(self._cfg["map_frame"]))

    # -- outputs (the pipeline's Outputs) ---------------------------------------------------
    def floor_changed(self, floor: str | None) -> None:
        """``~/floor`` (latched; "" while unknown); ``~/path`` starts again."""
        with self._publish_lock:
            self._path.clear()
            self._pubs["floor"].publish(String(data=floor or ""))

    def publish_pose(self, stamp: object, est: PoseEstimate, *, verified: bool,
                     map_from_odom: np.ndarray | None, refined: bool = False) -> None:
        """``~/pose_refined`` (when refined), ``~/pose``, ``~/pose_with_covariance``,
        ``~/pose_verified`` (when verified), ``~/path`` (throttled) and TF."""
        cfg, frame, pubs = self._cfg, self._frame(est), self._pubs
        ps = conv.pose_stamped(stamp, frame, est.position, est.quat_wxyz)
        cov = conv.pose_with_covariance(stamp, frame, est.position, est.quat_wxyz,
                                        est.covariance)
        with self._publish_lock:
            for key, msg, wanted in (("refined", cov, refined), ("pose", ps, True),
                                     ("cov", cov, True), ("verified", cov, verified)):
                if wanted:
                    pubs[key].publish(msg)
            conv.insert_by_stamp(self._path, ps)  # a refined pose replaces the regressed one
            now = time.monotonic()
            if now - self._last_path_pub >= float(cfg["path_period"]):
                self._last_path_pub = now
                path = Path(poses=list(self._path))
                path.header.stamp, path.header.frame_id = stamp, frame
                pubs["path"].publish(path)
            if map_from_odom is not None:
                child, (pos, q) = str(cfg["odom_frame"]), conv.matrix_to_pose(map_from_odom)
            elif cfg["publish_tf"] and not cfg["publish_map_to_odom"]:
                child, pos, q = str(cfg["child_frame"]), est.position, est.quat_wxyz
            else:
                return
            pubs["tf"].publish(TFMessage(transforms=[
                conv.transform_stamped(stamp, frame, child, pos, q)]))

    def publish_initial_pose(self, stamp: object, est: PoseEstimate) -> None:
        """``/initialpose``: the verified estimate that ended a relocalization request."""
        self._pubs["initial"].publish(conv.pose_with_covariance(
            stamp, self._frame(est), est.position, est.quat_wxyz, est.covariance))

    # -- inputs ---------------------------------------------------------------------------
    def _on_image(self, msg: Image | CompressedImage) -> None:
        if self.pipeline is not None:  # decoded on the worker, not here
            decode = functools.partial(conv.image_to_rgb, msg, int(self._cfg["max_image_pixels"]))
            self.pipeline.submit(Frame(msg.header.stamp, conv.stamp_to_ns(msg.header.stamp),
                                       decode))

    def _on_odom(self, msg: Odometry) -> None:
        if self.pipeline is not None:
            self.pipeline.odometry.add(conv.stamp_to_ns(msg.header.stamp),
                                       conv.pose_to_matrix(msg.pose.pose))

    def _on_map(self, msg: OccupancyGrid) -> None:
        pipeline, info = self.pipeline, msg.info
        localizer = pipeline.localizer if pipeline is not None else None  # the floor's
        if localizer is None or not self._cfg["snap_to_floorplan"]:
            return
        localizer.set_floorplan(FloorPlan.from_grid(
            msg.data, info.width, info.height, info.resolution,
            (info.origin.position.x, info.origin.position.y)))
        self.get_logger().info(f"floor plan from 'map' ({info.width}x{info.height})")

    def _on_camera_info(self, msg: CameraInfo) -> None:
        if self.pipeline is not None:
            self.pipeline.update_camera(functools.partial(conv.camera_from_info, msg,
                                                          self._rectified))

    def _on_set_floor(self, msg: String) -> None:
        if (pipeline := self.pipeline) is not None:
            floor = msg.data.strip()
            pipeline.set_floor(None if floor in ("", "auto") else floor, "set on ~/set_floor")

    def _on_tracking_lost(self, msg: Bool) -> None:
        if msg.data and (pipeline := self.pipeline) is not None:
            pipeline.request("tracking_lost")

    def _on_relocalize(self, request: Trigger.Request, response: Trigger.Response
                       ) -> Trigger.Response:
        """Start a request; under a multi-threaded executor wait for its outcome."""
        wait, pipeline = isinstance(self.executor, MultiThreadedExecutor), self.pipeline
        try:  # pipeline read once: a cleanup on another executor thread may clear it
            response.success, response.message = (
                pipeline.relocalize("~/relocalize", wait=wait) if pipeline
                else (False, "not active: activate the node"))
        except Exception as exc:  # a service callback must never stop the executor
            self.stats.add("rejected_other")
            response.success, response.message = False, f"{type(exc).__name__}: {exc}"
        return response

    def _publish_diagnostics(self) -> None:
        if (pipeline := self.pipeline) is not None:
            self._pubs["diag"].publish(conv.diagnostic_array(
                self.get_clock().now().to_msg(), f"{self.get_name()}: relocalization",
                pipeline.diagnostics()))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ros2 run camera_pose_ros relocalization_node``."""
    import camera_pose_ros.runtime.localizer  # noqa: F401 -- see spin._handle_sigterm
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = RelocalizationNode()  # 4 threads: ~/relocalize waits while images keep arriving
    return spin_until_shutdown(node, MultiThreadedExecutor(num_threads=4),
                               on_exit=node._stop)


if __name__ == "__main__":
    sys.exit(main())
