"""relocalization_node: camera images in, map-frame poses with covariance out.

A lifecycle node. ``on_configure`` loads the checkpoint and the optional floor plan;
``on_activate`` subscribes. With ``autostart`` (default) it configures and activates itself.
Inference runs on a worker thread that always takes the newest frame (older unprocessed
frames are dropped and counted), so the subscription callback never blocks. Every output is
stamped with the image's stamp.

Topics: ``image`` (sensor_msgs/Image) or ``image/compressed``; ``odom``, ``map``,
``tracking_lost`` in; ``~/pose``, ``~/pose_with_covariance``, ``~/path``, ``/tf``,
``/diagnostics``, ``/initialpose`` out. Service ``~/relocalize`` (std_srvs/Trigger).

With ``mode: refine`` a second worker refines poses against the SfM map (intrinsics from
``camera_info`` when it arrives, else the map's): every ``refine_every_n``-th frame when it
is free, or only on relocalization requests. Regression keeps its frame rate; each refined
pose goes out, with its image's stamp, on ``~/pose``, ``~/pose_with_covariance``, the path,
TF and ``~/pose_refined``; a relocalization request in this mode answers on
``/initialpose`` with the refined pose (the regressed one, with a warning, when refinement
fails).
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from nav_msgs.msg import OccupancyGrid, Odometry, Path
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from rclpy.qos import (
    DurabilityPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Bool
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage

from camera_pose_ros.config import load_yaml
from camera_pose_ros.dataset.maps import FloorPlan
from camera_pose_ros.errors import CameraPoseError, ImageDecodeError
from camera_pose_ros.geometry import (
    PinholeCamera,
    invert_pose,
    is_rectified_topic,
    pose_matrix,
    rotmat_from_quat_wxyz,
)
from camera_pose_ros.ros.conversions import (
    image_to_rgb,
    insert_by_stamp,
    matrix_to_pose,
    pose_stamped,
    pose_to_matrix,
    pose_with_covariance,
    stamp_to_ns,
    transform_stamped,
)
from camera_pose_ros.ros.params import RELOCALIZATION_PARAMS
from camera_pose_ros.ros.spin import spin_until_shutdown
from camera_pose_ros.runtime.localizer import JumpGate, Localizer, PoseEstimate
from camera_pose_ros.runtime.refine import RefineConfig

__all__ = ["RelocalizationNode", "main"]

RELIABLE_10 = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


class _Stats:
    """Counters and a latency window for /diagnostics (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.latency = collections.deque(maxlen=200)
        self.refine_latency = collections.deque(maxlen=200)
        self.arrivals = collections.deque(maxlen=200)

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n


class RelocalizationNode(LifecycleNode):
    """The relocalization lifecycle node (node name ``relocalization`` by default)."""

    def __init__(self, node_name: str = "relocalization", **kwargs: object) -> None:
        super().__init__(node_name, **kwargs)
        for spec in RELOCALIZATION_PARAMS:
            desc = ParameterDescriptor(description=spec.description + (
                f" ({'|'.join(spec.choices)})" if spec.choices else ""))
            if spec.min_value is not None and isinstance(spec.default, float):
                desc.floating_point_range = [FloatingPointRange(
                    from_value=float(spec.min_value), to_value=float(spec.max_value))]
            elif spec.min_value is not None and isinstance(spec.default, int):
                desc.integer_range = [IntegerRange(from_value=int(spec.min_value),
                                                   to_value=int(spec.max_value), step=1)]
            self.declare_parameter(spec.name, spec.default, desc)
        self.stats = _Stats()
        self.localizer: Localizer | None = None
        self._cond = threading.Condition()
        self._latest: object | None = None
        self._running = False
        self._worker: threading.Thread | None = None
        self._reloc_requested = threading.Event()
        self._odom = collections.deque(maxlen=400)
        self._path = collections.deque()
        self._subs: list = []
        self._timers: list = []
        self._service = None
        self._gate: JumpGate | None = None
        self._refine_cond = threading.Condition()
        self._refine_job: tuple | None = None
        self._refine_busy = False
        self._refine_worker: threading.Thread | None = None
        self._since_refine = 0
        self._camera: PinholeCamera | None = None
        self._camera_info_error = ""
        self._image_topic = ""
        self._publish_lock = threading.Lock()
        if self.get_parameter("autostart").value:
            self._autostart_timer = self.create_timer(0.0, self._autostart)

    # -- lifecycle ----------------------------------------------------------------------
    def _autostart(self) -> None:
        self._autostart_timer.cancel()
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def _p(self, name: str) -> object:
        return self.get_parameter(name).value

    def _cache_params(self) -> None:
        """Parameters read on every frame, read once per configure."""
        self._cfg = {spec.name: self._p(spec.name) for spec in RELOCALIZATION_PARAMS}
        e = [float(v) for v in self._cfg["base_to_camera"]]
        self._base_from_cam = pose_matrix(rotmat_from_quat_wxyz([e[6], e[3], e[4], e[5]]),
                                          e[:3])
        self._last_path_pub = 0.0

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        """Load the checkpoint and the floor plan; create publishers."""
        plan = None
        try:
            if self._p("floorplan_yaml"):
                plan = FloorPlan.load(self._p("floorplan_yaml"))
            model = str(self._p("model_path"))
            if not model:
                raise CameraPoseError("parameter model_path is empty: give a checkpoint")
            samples = int(self._p("mc_samples")) or None
            self.localizer = Localizer(model, device=str(self._p("device")), floorplan=plan,
                                       mc_samples=samples)
            if self._p("half_precision"):
                self.localizer.predictor.enable_half()
            if self._p("mode") == "refine":
                path = str(self._p("refine_config"))
                config = RefineConfig.from_dict(load_yaml(path) if path else {})
                where = self.localizer.enable_refinement(
                    str(self._p("refinement_map")) or None, config)
                self.get_logger().info(f"refinement map: {where}")
        except (CameraPoseError, ValueError) as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        if not self._p("snap_to_floorplan"):
            self.localizer.set_floorplan(None)
        self._cache_params()
        self._gate = JumpGate(float(self._p("max_jump"))) if self._p("jump_gate") else None
        self._path = collections.deque(maxlen=int(self._p("path_length")))
        self.pub_pose = self.create_publisher(PoseStamped, "~/pose", RELIABLE_10)
        self.pub_cov = self.create_publisher(PoseWithCovarianceStamped, "~/pose_with_covariance",
                                             RELIABLE_10)
        self.pub_path = self.create_publisher(Path, "~/path", RELIABLE_10)
        self.pub_tf = self.create_publisher(TFMessage, "/tf", TF_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE_10)
        self.pub_initial = self.create_publisher(PoseWithCovarianceStamped, "/initialpose",
                                                 RELIABLE_10)
        self.pub_refined = self.create_publisher(PoseWithCovarianceStamped, "~/pose_refined",
                                                 RELIABLE_10)
        self.get_logger().info(
            f"configured: {self.localizer.model_name} on {self.localizer.device}, map frame "
            f"'{self._p('map_frame')}', floor plan {'yes' if plan else 'no'}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        """Subscribe and start the inference worker."""
        group = MutuallyExclusiveCallbackGroup()
        if self._p("image_transport") == "compressed":
            sub = self.create_subscription(
                CompressedImage, "image/compressed", self._on_image, qos_profile_sensor_data,
                callback_group=group,
                qos_overriding_options=QoSOverridingOptions.with_default_policies())
        else:
            sub = self.create_subscription(
                Image, "image", self._on_image, QoSProfile(
                    depth=1, reliability=qos_profile_sensor_data.reliability,
                    durability=qos_profile_sensor_data.durability),
                callback_group=group,
                qos_overriding_options=QoSOverridingOptions.with_default_policies())
        self._image_topic = sub.topic_name
        other = ReentrantCallbackGroup()
        self._subs = [
            sub,
            self.create_subscription(Odometry, "odom", self._on_odom, 50, callback_group=other),
            self.create_subscription(OccupancyGrid, "map", self._on_map, LATCHED,
                                     callback_group=other),
            self.create_subscription(Bool, "tracking_lost", self._on_tracking_lost, 10,
                                     callback_group=other),
            self.create_subscription(CameraInfo, "camera_info", self._on_camera_info,
                                     qos_profile_sensor_data, callback_group=other),
        ]
        self._service = self.create_service(Trigger, "~/relocalize", self._on_relocalize,
                                            callback_group=other)
        self._timers = [self.create_timer(float(self._p("diagnostics_period")),
                                          self._publish_diagnostics, callback_group=other)]
        self._running = True
        self._worker = threading.Thread(target=self._work, name="relocalization-inference",
                                        daemon=True)
        self._worker.start()
        if self._refining():
            self._refine_worker = threading.Thread(target=self._refine_work,
                                                   name="relocalization-refine", daemon=True)
            self._refine_worker.start()
        self.get_logger().info(f"active: listening on {sub.topic_name}")
        return TransitionCallbackReturn.SUCCESS

    def _stop(self) -> None:
        self._running = False
        with self._cond:
            self._cond.notify_all()
        with self._refine_cond:
            self._refine_cond.notify_all()
        for worker in (self._worker, self._refine_worker):
            if worker is not None:
                worker.join(timeout=5)
        self._worker = self._refine_worker = None
        for sub in self._subs:
            self.destroy_subscription(sub)
        for timer in self._timers:
            self.destroy_timer(timer)
        if self._service is not None:
            self.destroy_service(self._service)
        self._subs, self._timers, self._service = [], [], None

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        """Unsubscribe and stop the worker."""
        self._stop()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        """Release the model."""
        self.localizer = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        """Stop everything."""
        self._stop()
        self.localizer = None
        return TransitionCallbackReturn.SUCCESS

    # -- inputs ---------------------------------------------------------------------------
    def _on_image(self, msg: Image | CompressedImage) -> None:
        self.stats.add("received")
        with self.stats.lock:
            self.stats.arrivals.append(time.monotonic())
        with self._cond:
            if self._latest is not None:
                self.stats.add("dropped_superseded")
            self._latest = msg
            self._cond.notify()

    def _on_odom(self, msg: Odometry) -> None:
        self._odom.append((stamp_to_ns(msg.header.stamp), pose_to_matrix(msg.pose.pose)))

    def _on_map(self, msg: OccupancyGrid) -> None:
        if self.localizer is None or not self._p("snap_to_floorplan"):
            return
        info = msg.info
        occ = np.asarray(msg.data, dtype=np.int8).reshape(info.height, info.width)
        plan = FloorPlan(occ, float(info.resolution),
                         (float(info.origin.position.x), float(info.origin.position.y)))
        try:
            self.localizer.set_floorplan(plan)
            self.get_logger().info(f"floor plan from 'map' ({info.width}x{info.height})")
        except ValueError as exc:
            self.get_logger().warning(f"ignoring map: {exc}")

    def _on_camera_info(self, msg: CameraInfo) -> None:
        if msg.width <= 0 or msg.height <= 0:
            return
        try:
            setting = str(self._cfg["rectified_images"])
            rectified = (setting == "true" if setting != "auto"
                         else is_rectified_topic(self._image_topic))
            self._camera = PinholeCamera.from_camera_info(
                msg.width, msg.height, msg.k, msg.d, msg.distortion_model, msg.p, rectified)
        except ValueError as exc:
            if self._camera_info_error != str(exc):  # once per distinct problem
                self._camera_info_error = str(exc)
                self.get_logger().error(f"ignoring camera_info: {exc}; refinement uses the "
                                        "map's intrinsics")

    def _refining(self) -> bool:
        return (self.localizer is not None and self.localizer.refiner is not None
                and self._cfg.get("mode") == "refine")

    def _on_tracking_lost(self, msg: Bool) -> None:
        if msg.data:
            self._reloc_requested.set()

    def _on_relocalize(self, request: Trigger.Request, response: Trigger.Response
                       ) -> Trigger.Response:
        self._reloc_requested.set()
        response.success = self.localizer is not None
        response.message = ("the next good estimate goes out on /initialpose"
                            if response.success else "not configured: no model loaded")
        return response

    # -- inference ------------------------------------------------------------------------
    def _serve(self, cond: threading.Condition, slot: str, handle: Callable[[object], None],
               error_key: str, what: str) -> None:
        """Worker loop: take the job in attribute ``slot`` (under ``cond``) and handle it."""
        while True:
            with cond:
                while self._running and getattr(self, slot) is None:
                    cond.wait(timeout=0.5)
                if not self._running:
                    return
                job = getattr(self, slot)
                setattr(self, slot, None)
            try:
                handle(job)
            except Exception as exc:  # the node must survive anything one frame does
                self.stats.add(error_key)
                self.get_logger().error(f"{what} failed: {exc}", throttle_duration_sec=5.0)

    def _work(self) -> None:
        self._serve(self._cond, "_latest", self._process, "rejected_error", "frame")

    def _process(self, msg: Image | CompressedImage) -> None:
        stamp_ns = stamp_to_ns(msg.header.stamp)
        age = (self.get_clock().now().nanoseconds - stamp_ns) / 1e9
        max_age = float(self._cfg["max_image_age"])
        if max_age > 0 and age > max_age:
            self.stats.add("dropped_stale")
            self.get_logger().warning(f"dropping a frame {age:.2f} s old (max_image_age "
                                      f"{max_age} s)", throttle_duration_sec=5.0)
            return
        try:
            rgb = image_to_rgb(msg)
        except ImageDecodeError as exc:
            self.stats.add("rejected_bad_input")
            self.get_logger().warning(f"bad image: {exc}", throttle_duration_sec=5.0)
            return
        localizer = self.localizer
        if localizer is None:
            return
        est = localizer.localize(rgb)
        if est is None:
            self.stats.add("rejected_nan")
            self.get_logger().warning("non-finite prediction; nothing published",
                                      throttle_duration_sec=5.0)
            return
        with self.stats.lock:
            self.stats.latency.append(est.latency_s)
        odom = self._odom_at(stamp_ns)
        if self._gate is not None and not self._gate.accept(
                est.position, None if odom is None else odom[:3, 3]):
            self.stats.add("rejected_jump")
            self.get_logger().warning("estimate rejected by the odometry jump gate",
                                      throttle_duration_sec=5.0)
            return
        if est.snapped:
            self.stats.add("snapped")
        self._publish(msg.header.stamp, est, odom)
        self.stats.add("published")
        if self._refining():
            self._offer_refinement(msg.header.stamp, rgb, est, odom)

    # -- refinement -----------------------------------------------------------------------
    def _offer_refinement(self, stamp: object, rgb: np.ndarray, est: PoseEstimate,
                          odom: np.ndarray | None) -> None:
        """Hand the frame to the refine worker when it is due and the worker is free."""
        self._since_refine += 1
        requested = self._reloc_requested.is_set()
        due = requested or (not self._cfg["refine_on_request_only"]
                            and self._since_refine >= int(self._cfg["refine_every_n"]))
        with self._refine_cond:
            if not due or self._refine_busy:
                return
            if requested:
                self._reloc_requested.clear()
            self._since_refine = 0
            self._refine_busy = True
            self._refine_job = (stamp, rgb, est, odom, requested)
            self._refine_cond.notify()

    def _refine_work(self) -> None:
        def handle(job: tuple) -> None:
            try:
                self._refine(*job)
            finally:
                with self._refine_cond:
                    self._refine_busy = False

        self._serve(self._refine_cond, "_refine_job", handle, "refine_error", "refinement")

    def _refine(self, stamp: object, rgb: np.ndarray, est: PoseEstimate,
                odom: np.ndarray | None, requested: bool) -> None:
        localizer = self.localizer
        if localizer is None:
            return
        t0 = time.perf_counter()
        localizer.refine(rgb, est, self._camera)
        with self.stats.lock:
            self.stats.refine_latency.append(time.perf_counter() - t0)
        if est.refined:
            self.stats.add("refined")
            frame = str(self._cfg["map_frame"])
            self.pub_refined.publish(pose_with_covariance(stamp, frame, est.position,
                                                          est.quat_wxyz, est.covariance))
            self._publish(stamp, est, odom)
        else:
            self.stats.add("refine_failed")
            self.get_logger().warning(f"refinement failed: {est.refine_note}",
                                      throttle_duration_sec=5.0)
        if requested:
            self._publish_initial(stamp, est)

    def _odom_at(self, stamp_ns: int) -> np.ndarray | None:
        if not self._odom:
            return None
        stamps = np.array([s for s, _ in self._odom])
        i = int(np.argmin(np.abs(stamps - stamp_ns)))
        if abs(stamps[i] - stamp_ns) / 1e9 > float(self._cfg["max_odom_age"]):
            return None
        return self._odom[i][1]

    def _publish_initial(self, stamp: object, est: PoseEstimate) -> None:
        self.pub_initial.publish(pose_with_covariance(stamp, "map", est.position,
                                                      est.quat_wxyz, est.covariance))
        how = ("refined" if est.refined else
               f"regressed; refinement failed: {est.refine_note}" if est.refine_note else
               "regressed")
        self.get_logger().info(f"relocalization published on /initialpose ({how})")

    def _publish(self, stamp: object, est: PoseEstimate, odom: np.ndarray | None) -> None:
        with self._publish_lock:
            self._publish_locked(stamp, est, odom)

    def _publish_locked(self, stamp: object, est: PoseEstimate, odom: np.ndarray | None
                        ) -> None:
        cfg = self._cfg
        frame = str(cfg["map_frame"])
        ps = pose_stamped(stamp, frame, est.position, est.quat_wxyz)
        cov = pose_with_covariance(stamp, frame, est.position, est.quat_wxyz, est.covariance)
        self.pub_pose.publish(ps)
        self.pub_cov.publish(cov)
        insert_by_stamp(self._path, ps)  # a refined pose replaces its image's regressed one
        now = time.monotonic()
        if now - self._last_path_pub >= float(cfg["path_period"]):
            self._last_path_pub = now
            path = Path()
            path.header.stamp, path.header.frame_id = stamp, frame
            path.poses = list(self._path)
            self.pub_path.publish(path)
        if cfg["publish_map_to_odom"]:
            if odom is None:
                self.stats.add("no_odometry")
                self.get_logger().warning("no odometry near the image stamp: map -> odom not "
                                          "published", throttle_duration_sec=5.0)
            else:
                map_from_cam = pose_matrix(rotmat_from_quat_wxyz(est.quat_wxyz), est.position)
                map_from_odom = (map_from_cam @ invert_pose(self._base_from_cam)
                                 @ invert_pose(odom))
                pos, q = matrix_to_pose(map_from_odom)
                self.pub_tf.publish(TFMessage(transforms=[transform_stamped(
                    stamp, frame, str(cfg["odom_frame"]), pos, q)]))
        elif cfg["publish_tf"]:
            self.pub_tf.publish(TFMessage(transforms=[transform_stamped(
                stamp, frame, str(cfg["child_frame"]), est.position, est.quat_wxyz)]))
        if self._reloc_requested.is_set() and not self._refining():
            self._reloc_requested.clear()
            self._publish_initial(stamp, est)

    # -- diagnostics ----------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        with self.stats.lock:
            counts = dict(self.stats.counts)
            lat = np.array(self.stats.latency) * 1000.0
            ref_lat = np.array(self.stats.refine_latency) * 1000.0
            arr = np.array(self.stats.arrivals)
        now = time.monotonic()
        recent = arr[arr > now - 5.0]
        rate = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 else 0.0
        status = DiagnosticStatus(name=f"{self.get_name()}: relocalization",
                                  hardware_id=self.localizer.device if self.localizer else "")
        status.level = DiagnosticStatus.OK
        status.message = "localizing"
        if self.localizer is None:
            status.level, status.message = DiagnosticStatus.ERROR, "no model loaded"
        elif counts.get("received", 0) == 0 or rate == 0.0:
            status.level, status.message = DiagnosticStatus.WARN, "no images"
        values = {
            "input_rate_hz": f"{rate:.2f}",
            "inference_ms_p50": f"{np.percentile(lat, 50):.1f}" if len(lat) else "",
            "inference_ms_p99": f"{np.percentile(lat, 99):.1f}" if len(lat) else "",
            "refine_ms_p50": f"{np.percentile(ref_lat, 50):.1f}" if len(ref_lat) else "",
            "device": self.localizer.device if self.localizer else "",
            "model": self.localizer.model_name if self.localizer else "",
        }
        for key in ("received", "published", "dropped_stale", "dropped_superseded",
                    "rejected_bad_input", "rejected_nan", "rejected_jump", "rejected_error",
                    "snapped", "no_odometry", "refined", "refine_failed", "refine_error"):
            values[key] = str(counts.get(key, 0))
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        arr_msg = DiagnosticArray(status=[status])
        arr_msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(arr_msg)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ros2 run camera_pose_ros relocalization_node``."""
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = RelocalizationNode()
    # callbacks only hand frames over; inference has its own thread, so one executor thread
    # is enough, and fewer Python threads compete with torch for the cores
    return spin_until_shutdown(node, SingleThreadedExecutor(), on_exit=node._stop)


if __name__ == "__main__":
    sys.exit(main())
