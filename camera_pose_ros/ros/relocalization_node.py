"""relocalization_node: camera images in, map-frame poses with covariance out.

A lifecycle node. ``on_configure`` loads the checkpoint and the optional floor plan and
creates the (lifecycle) publishers and the service, which ``on_cleanup`` and ``on_shutdown``
destroy; ``on_activate`` subscribes and starts the workers, ``on_deactivate`` stops them.
With ``autostart`` (default) it configures and activates itself. A malformed message on any
topic is logged (throttled per topic), counted in /diagnostics and dropped.
Inference runs on a worker thread that always takes the newest frame (older unprocessed
frames are dropped and counted), so the subscription callback never blocks. Every output is
stamped with the image's stamp.

Topics: ``image`` (sensor_msgs/Image) or ``image/compressed``; ``odom``, ``map``,
``tracking_lost`` in; ``~/pose``, ``~/pose_with_covariance``, ``~/pose_verified``, ``~/path``,
``/tf``, ``/diagnostics``, ``/initialpose`` out. Service ``~/relocalize`` (std_srvs/Trigger).

A relocalization request (``~/relocalize`` or ``tracking_lost: true``) tries the next frames
for up to ``relocalize_timeout`` seconds until an estimate is *verified* (see
:mod:`camera_pose_ros.runtime.relocalize`: refined in refine mode, else a regressed pose
under the ``verify_max_*`` covariance limits); that one pose goes to ``/initialpose``, or
nothing does and the log and /diagnostics say why. ``main()`` spins a multi-threaded
executor, and the service runs in a reentrant group: it waits for the outcome and answers
success or failure with the reason, while other threads keep taking images. Under a
single-threaded executor it answers at once ("started") and the outcome goes only to the log,
/diagnostics and ``/initialpose``. Every verified estimate also goes to ``~/pose_verified``.

With ``mode: refine`` a second worker refines poses against the SfM map (intrinsics from
``camera_info`` when it arrives, else the map's): every ``refine_every_n``-th frame when it
is free, and every frame it can take while a relocalization request is open. Regression
keeps its frame rate; each refined pose goes out, with its image's stamp, on ``~/pose``,
``~/pose_with_covariance``, ``~/pose_verified``, the path, TF and ``~/pose_refined``.
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
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
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

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.config import load_yaml
from camera_pose_ros.errors import (
    CameraModelError,
    CameraPoseError,
    ConfigError,
    ImageDecodeError,
)
from camera_pose_ros.geometry import invert_pose, pose_matrix, rotmat_from_quat_wxyz
from camera_pose_ros.io.bags import is_rectified_topic
from camera_pose_ros.io.floorplan import FloorPlan
from camera_pose_ros.ros.conversions import (
    camera_from_info,
    image_to_rgb,
    insert_by_stamp,
    matrix_to_pose,
    pose_stamped,
    pose_to_matrix,
    pose_with_covariance,
    stamp_to_ns,
    transform_stamped,
)
from camera_pose_ros.ros.params import RELOCALIZATION_PARAMS, declare_parameters
from camera_pose_ros.ros.spin import spin_until_shutdown
from camera_pose_ros.runtime.localizer import JumpGate, Localizer, PoseEstimate
from camera_pose_ros.runtime.refine import RefineConfig
from camera_pose_ros.runtime.relocalize import (
    RelocalizationRequest,
    RelocalizationResult,
    VerifyThresholds,
    verify,
)

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
        declare_parameters(self, RELOCALIZATION_PARAMS)
        self.stats = _Stats()
        self.localizer: Localizer | None = None
        self._cond = threading.Condition()
        self._latest: object | None = None
        self._running = False
        self._worker: threading.Thread | None = None
        self._reloc_cond = threading.Condition()
        self._request: RelocalizationRequest | None = None
        self._last_reloc = ""
        self._odom = collections.deque(maxlen=400)
        self._path = collections.deque()
        self._subs: list = []
        self._timers: list = []
        self._pubs: list = []
        self._service = None
        self._warned: dict[str, float] = {}
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
        e = np.array(self._cfg["base_to_camera"], dtype=float)
        if e.shape != (7,) or not np.all(np.isfinite(e)) or np.linalg.norm(e[3:]) < 1e-6:
            raise ConfigError(f"base_to_camera must be 7 finite numbers x y z qx qy qz qw "
                              f"with a non-zero quaternion, got {e.tolist()}")
        q = np.array([e[6], e[3], e[4], e[5]]) / np.linalg.norm(e[3:])
        self._base_from_cam = pose_matrix(rotmat_from_quat_wxyz(q), e[:3])
        self._thresholds = VerifyThresholds(float(self._cfg["verify_max_position_sigma"]),
                                            float(self._cfg["verify_max_rotation_sigma_deg"]))
        self._last_path_pub = 0.0

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        """Load the checkpoint and the floor plan; create publishers and the service.

        Every failure is logged in one line and returns FAILURE (the node stays unconfigured).
        """
        try:
            plan = self._load()
        except (CameraPoseError, ValueError) as exc:
            self.localizer = None
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        except Exception as exc:  # rclpy would swallow it without a word
            self.localizer = None
            self.get_logger().error(f"configure failed: unexpected {type(exc).__name__}: {exc}")
            return TransitionCallbackReturn.FAILURE
        self._gate = JumpGate(float(self._p("max_jump"))) if self._p("jump_gate") else None
        self._path = collections.deque(maxlen=int(self._p("path_length")))

        def pub(typ: type, topic: str, qos: QoSProfile = RELIABLE_10) -> object:
            self._pubs.append(self.create_lifecycle_publisher(typ, topic, qos))
            return self._pubs[-1]

        self.pub_pose = pub(PoseStamped, "~/pose")
        self.pub_cov = pub(PoseWithCovarianceStamped, "~/pose_with_covariance")
        self.pub_path = pub(Path, "~/path")
        self.pub_tf = pub(TFMessage, "/tf", TF_QOS)
        self.pub_diag = pub(DiagnosticArray, "/diagnostics")
        self.pub_initial = pub(PoseWithCovarianceStamped, "/initialpose")
        self.pub_refined = pub(PoseWithCovarianceStamped, "~/pose_refined")
        self.pub_verified = pub(PoseWithCovarianceStamped, "~/pose_verified")
        self._service = self.create_service(Trigger, "~/relocalize", self._on_relocalize,
                                            callback_group=ReentrantCallbackGroup())
        self.get_logger().info(
            f"configured: {self.localizer.model_name} on {self.localizer.device}, map frame "
            f"'{self._p('map_frame')}', floor plan {'yes' if plan else 'no'}")
        return super().on_configure(state)

    def _load(self) -> FloorPlan | None:
        """The configure work that can fail: parameters, checkpoint, floor plan, refiner."""
        self._cache_params()
        plan = None
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
        if not self._p("snap_to_floorplan"):
            self.localizer.set_floorplan(None)
        return plan

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        """Enable the publishers, subscribe and start the inference worker."""
        ret = super().on_activate(state)
        if ret != TransitionCallbackReturn.SUCCESS:
            return ret
        group = MutuallyExclusiveCallbackGroup()
        on_image = self._guarded(self._on_image, "image", "rejected_bad_input")
        if self._p("image_transport") == "compressed":
            sub = self.create_subscription(
                CompressedImage, "image/compressed", on_image, qos_profile_sensor_data,
                callback_group=group,
                qos_overriding_options=QoSOverridingOptions.with_default_policies())
        else:
            sub = self.create_subscription(
                Image, "image", on_image, QoSProfile(
                    depth=1, reliability=qos_profile_sensor_data.reliability,
                    durability=qos_profile_sensor_data.durability),
                callback_group=group,
                qos_overriding_options=QoSOverridingOptions.with_default_policies())
        self._image_topic = sub.topic_name
        other = ReentrantCallbackGroup()
        guarded = self._guarded
        self._subs = [
            sub,
            self.create_subscription(Odometry, "odom", guarded(
                self._on_odom, "odom", "rejected_odometry"), 50, callback_group=other),
            self.create_subscription(OccupancyGrid, "map", guarded(
                self._on_map, "map", "rejected_map", "; the previous map (if any) stays in use"),
                LATCHED, callback_group=other),
            self.create_subscription(Bool, "tracking_lost", guarded(
                self._on_tracking_lost, "tracking_lost", "rejected_other"), 10,
                callback_group=other),
            self.create_subscription(CameraInfo, "camera_info", guarded(
                self._on_camera_info, "camera_info", "rejected_camera_info"),
                qos_profile_sensor_data, callback_group=other),
        ]
        self._timers = [self.create_timer(
            float(self._p("diagnostics_period")),
            guarded(self._publish_diagnostics, "diagnostics", "rejected_other"),
            callback_group=other), self.create_timer(
            0.2, guarded(self._expire_request, "relocalization", "rejected_other"),
            callback_group=other)]
        self._running = True
        self._worker = threading.Thread(target=self._work, name="relocalization-inference",
                                        daemon=True)
        self._worker.start()
        if self._refining():
            self._refine_worker = threading.Thread(target=self._refine_work,
                                                   name="relocalization-refine", daemon=True)
            self._refine_worker.start()
        self.get_logger().info(f"active: listening on {sub.topic_name}")
        return ret

    def _stop(self) -> None:
        """Stop the workers; destroy the subscriptions and timers (``on_activate``'s)."""
        self._running = False
        with self._cond:
            self._cond.notify_all()
        with self._refine_cond:
            self._refine_cond.notify_all()
        for worker in (self._worker, self._refine_worker):
            if worker is not None and worker is not threading.current_thread():
                worker.join(timeout=5)
        self._worker = self._refine_worker = None
        with self._cond:
            self._latest = None
        self._advance(lambda req, now: req.cancel("the node was deactivated"))
        for sub in self._subs:
            self.destroy_subscription(sub)
        for timer in self._timers:
            self.destroy_timer(timer)
        self._subs, self._timers = [], []

    def _release(self) -> None:
        """Destroy the publishers and the service (``on_configure``'s); drop the model."""
        for pub in self._pubs:
            self.destroy_lifecycle_publisher(pub)
        if self._service is not None:
            self.destroy_service(self._service)
        self._pubs, self._service = [], None
        self.localizer = None

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        """Unsubscribe, stop the workers, disable the publishers."""
        self._stop()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        """Destroy the publishers and the service; release the model."""
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        """Stop and destroy everything."""
        self._stop()
        self._release()
        return super().on_shutdown(state)

    def on_error(self, state: State) -> TransitionCallbackReturn:
        """A transition raised: stop and destroy everything (back to unconfigured)."""
        self._stop()
        self._release()
        return super().on_error(state)

    def destroy_node(self) -> None:
        """Stop the workers, then destroy the node."""
        self._stop()
        super().destroy_node()

    def _guarded(self, callback: Callable[..., object], what: str, key: str,
                 consequence: str = "") -> Callable[..., object]:
        """``callback`` that logs (throttled), counts under ``key`` and drops what it raises."""

        def run(*args: object) -> object:
            try:
                return callback(*args)
            except Exception as exc:  # one bad message must never stop the node
                self.stats.add(key)
                text = str(exc) if isinstance(exc, (CameraPoseError, ValueError)) else (
                    f"{type(exc).__name__}: {exc}")
                self._warn(what, f"ignoring {what}: {text}{consequence}")
                return None

        return run

    def _warn(self, key: str, text: str, period: float = 5.0) -> None:
        """A warning at most once per ``period`` seconds per ``key`` (per topic, not per line)."""
        now = time.monotonic()
        if now - self._warned.get(key, -period) >= period:
            self._warned[key] = now
            self.get_logger().warning(text)

    # -- inputs ---------------------------------------------------------------------------
    def _on_image(self, msg: Image | CompressedImage) -> None:
        self.stats.add("received")
        with self.stats.lock:
            self.stats.arrivals.append(time.monotonic())
        ahead = (stamp_to_ns(msg.header.stamp) - self.get_clock().now().nanoseconds) / 1e9
        max_ahead = float(self._cfg["max_future_stamp"])
        if max_ahead > 0 and ahead > max_ahead:
            self.stats.add("dropped_future")
            self._warn("future", f"dropping a frame stamped {ahead:.2f} s ahead of this "
                       f"node's clock (max_future_stamp {max_ahead} s)")
            return
        with self._cond:
            if self._latest is not None:
                self.stats.add("dropped_superseded")
            self._latest = msg
            self._cond.notify()

    def _on_odom(self, msg: Odometry) -> None:
        self._odom.append((stamp_to_ns(msg.header.stamp), pose_to_matrix(msg.pose.pose)))

    def _on_map(self, msg: OccupancyGrid) -> None:
        localizer = self.localizer
        if localizer is None or not self._cfg["snap_to_floorplan"]:
            return
        info = msg.info
        plan = FloorPlan.from_grid(msg.data, info.width, info.height, info.resolution,
                                   (info.origin.position.x, info.origin.position.y))
        localizer.set_floorplan(plan)
        self.get_logger().info(f"floor plan from 'map' ({info.width}x{info.height})")

    def _on_camera_info(self, msg: CameraInfo) -> None:
        setting = str(self._cfg["rectified_images"])
        rectified = (setting == "true" if setting != "auto"
                     else is_rectified_topic(self._image_topic))
        try:
            self._camera = camera_from_info(msg, rectified)
        except CameraModelError as exc:
            self._camera_info_error = str(exc)
            raise CameraModelError(f"{exc}; refinement uses the "
                             f"{'previous camera_info' if self._camera else 'map'}'s "
                             "intrinsics") from exc

    def _refining(self) -> bool:
        return (self.localizer is not None and self.localizer.refiner is not None
                and self._cfg.get("mode") == "refine")

    def _on_tracking_lost(self, msg: Bool) -> None:
        if msg.data and self._running:
            self._start_request("tracking_lost")

    def _on_relocalize(self, request: Trigger.Request, response: Trigger.Response
                       ) -> Trigger.Response:
        """Start a request; under a multi-threaded executor wait for its outcome."""
        try:
            if not self._running:
                response.success, response.message = False, "not active: activate the node"
                return response
            req = self._start_request("~/relocalize")
            if not isinstance(self.executor, MultiThreadedExecutor):  # waiting would block
                response.success = True  # the image callbacks: answer now
                response.message = (f"relocalization started (timeout {req.timeout:g} s); "
                                    "the outcome goes to /initialpose, the log and diagnostics")
                return response
            with self._reloc_cond:
                self._reloc_cond.wait_for(lambda: req.reported,
                                          timeout=req.deadline - time.monotonic() + 1.0)
            self._expire_request()  # in case the timer has not yet
            response.success, response.message = req.result.success, req.result.message
        except Exception as exc:  # a service callback must never stop the executor
            self.stats.add("rejected_other")
            response.success, response.message = False, f"{type(exc).__name__}: {exc}"
        return response

    # -- relocalization requests --------------------------------------------------------
    def _start_request(self, source: str) -> RelocalizationRequest:
        """The open request, or a new one (a request while one is open joins it)."""
        with self._reloc_cond:
            if self._request is None or self._request.done:
                self._request = RelocalizationRequest(
                    time.monotonic(), float(self._cfg["relocalize_timeout"]), self._thresholds,
                    self._refining())
                self.get_logger().info(f"relocalization requested by {source}: trying frames "
                                       f"for up to {self._request.timeout:g} s")
            return self._request

    def _requested(self) -> bool:
        with self._reloc_cond:
            return self._request is not None and not self._request.done

    def _advance(self, step: Callable[[RelocalizationRequest, float],
                                      RelocalizationResult | None]) -> None:
        """Apply ``step`` (offer, note, expire, cancel) to the open request; report its end."""
        with self._reloc_cond:
            req = self._request
            result = step(req, time.monotonic()) if req is not None else None
        if result is not None:
            self._finish(req, result)

    def _offer_request(self, est: PoseEstimate, stamp: object) -> None:
        self._advance(lambda req, now: req.offer(est, now, stamp))

    def _note_request(self, reason: str) -> None:
        self._advance(lambda req, now: req.note(reason))

    def _expire_request(self) -> None:
        self._advance(lambda req, now: req.expire(now))

    def _finish(self, req: RelocalizationRequest, result: RelocalizationResult) -> None:
        """Report a request's one result; a success goes to /initialpose (exactly once)."""
        est = result.estimate
        if result.success and est is not None:
            self.pub_initial.publish(pose_with_covariance(
                result.stamp, str(self._cfg["map_frame"]), est.position, est.quat_wxyz,
                est.covariance))
            self.stats.add("relocalized")
            self.get_logger().info(f"{result.message}: published on /initialpose")
        else:
            self.stats.add("relocalization_failed")
            self.get_logger().warning(result.message)
        self._last_reloc = result.message
        with self._reloc_cond:
            req.reported = True  # waiting service calls answer now
            self._reloc_cond.notify_all()

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

    def _drop(self, key: str, text: str) -> None:
        """A frame that gives no estimate: count, warn (throttled), tell the open request."""
        self.stats.add(key)
        self._warn(key, text)
        self._note_request(text)

    def _process(self, msg: Image | CompressedImage) -> None:
        stamp_ns = stamp_to_ns(msg.header.stamp)
        age = (self.get_clock().now().nanoseconds - stamp_ns) / 1e9
        max_age = float(self._cfg["max_image_age"])
        if max_age > 0 and age > max_age:
            return self._drop("dropped_stale", (
                f"image stamps are {age:.0f} s older than this node's clock: a bag played "
                "without `--clock`? run the player with --clock and the node with "
                "use_sim_time:=true, or raise max_image_age" if age > 10.0 else
                f"dropping a frame {age:.2f} s old (max_image_age {max_age} s)"))
        try:
            rgb = image_to_rgb(msg, int(self._cfg["max_image_pixels"]))
        except ImageDecodeError as exc:
            return self._drop("rejected_bad_input", f"bad image: {exc}")
        localizer = self.localizer
        if localizer is None:
            return None
        est = localizer.localize(rgb)
        if est is None:
            return self._drop("rejected_nan", "non-finite prediction; nothing published")
        with self.stats.lock:
            self.stats.latency.append(est.latency_s)
        odom = self._odom_at(stamp_ns)
        if self._gate is not None and not self._gate.accept(
                est.position, None if odom is None else odom[:3, 3]):
            return self._drop("rejected_jump", "estimate rejected by the odometry jump gate")
        if est.snapped:
            self.stats.add("snapped")
        self._publish(msg.header.stamp, est, odom)
        self.stats.add("published")
        if self._refining():
            self._offer_refinement(msg.header.stamp, rgb, est, odom)
        else:
            self._offer_request(est, msg.header.stamp)
        return None

    # -- refinement -----------------------------------------------------------------------
    def _offer_refinement(self, stamp: object, rgb: np.ndarray, est: PoseEstimate,
                          odom: np.ndarray | None) -> None:
        """Hand the frame to the refine worker when it is due and the worker is free."""
        self._since_refine += 1
        requested = self._requested()  # an open request refines every frame it can
        due = requested or (not self._cfg["refine_on_request_only"]
                            and self._since_refine >= int(self._cfg["refine_every_n"]))
        with self._refine_cond:
            if not due or self._refine_busy:
                return
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
            self._warn("refine_failed", f"refinement failed: {est.refine_note}")
        if requested:
            self._offer_request(est, stamp)

    def _odom_at(self, stamp_ns: int) -> np.ndarray | None:
        if not self._odom:
            return None
        stamps = np.array([s for s, _ in self._odom])
        i = int(np.argmin(np.abs(stamps - stamp_ns)))
        if abs(stamps[i] - stamp_ns) / 1e9 > float(self._cfg["max_odom_age"]):
            return None
        return self._odom[i][1]

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
        if verify(est, self._thresholds, self._refining())[0]:
            self.pub_verified.publish(cov)
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
        elif self._last_reloc.startswith("relocalization failed"):
            status.level, status.message = DiagnosticStatus.WARN, self._last_reloc
        values = {
            "input_rate_hz": f"{rate:.2f}",
            "inference_ms_p50": f"{np.percentile(lat, 50):.1f}" if len(lat) else "",
            "inference_ms_p99": f"{np.percentile(lat, 99):.1f}" if len(lat) else "",
            "refine_ms_p50": f"{np.percentile(ref_lat, 50):.1f}" if len(ref_lat) else "",
            "device": self.localizer.device if self.localizer else "",
            "model": self.localizer.model_name if self.localizer else "",
            "last_relocalization": self._last_reloc,
        }
        for key in ("received", "published", "dropped_stale", "dropped_superseded",
                    "dropped_future", "rejected_bad_input", "rejected_nan", "rejected_jump",
                    "rejected_error", "rejected_odometry", "rejected_map",
                    "rejected_camera_info", "rejected_other", "snapped", "no_odometry",
                    "refined", "refine_failed", "refine_error", "relocalized",
                    "relocalization_failed"):
            values[key] = str(counts.get(key, 0))
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        arr_msg = DiagnosticArray(status=[status])
        arr_msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(arr_msg)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ros2 run camera_pose_ros relocalization_node``."""
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = RelocalizationNode()
    # callbacks only hand frames over (inference has its own threads); a few executor
    # threads let ~/relocalize wait for its outcome while images keep arriving
    return spin_until_shutdown(node, MultiThreadedExecutor(num_threads=4),
                               on_exit=node._stop)


if __name__ == "__main__":
    sys.exit(main())
