"""The relocalization node's frame path, without ROS: frames in, estimates out.

A frame stamped too far in the future is dropped at once; the others go to a
:class:`~camera_pose_ros.runtime.workers.LatestJobWorker` (the newest frame wins, so the
caller never blocks). On that thread a frame older than ``max_image_age`` is dropped, the
image is decoded and localized (a non-finite prediction is dropped), odometry at its stamp is
looked up, the optional jump gate is applied and the estimate goes out through
:class:`Outputs`. In refine mode a :class:`~camera_pose_ros.runtime.workers.RefineScheduler`
hands some frames to a second worker whose refined poses go out too; each refinement is also
the map's verdict on the regressor (:class:`~camera_pose_ros.runtime.estimate.RegressorCheck`):
the regressed poses that follow a failed refinement, or one that found the regressor outside
its own covariance, go out widened. Relocalization requests
(:class:`~camera_pose_ros.runtime.relocalize.RelocalizationSession`) take the verified
estimates. Every drop is counted in :class:`~camera_pose_ros.runtime.diagnostics.NodeStats`,
logged (throttled) and told to an open request.

The node supplies the outputs (messages and TF), its logger and its clock; stamps are integer
nanoseconds here and the message's own stamp rides along untouched to the outputs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.errors import CameraModelError, CameraPoseError, ConfigError, ImageDecodeError
from camera_pose_ros.geometry import pose_matrix, rotmat_from_quat_wxyz
from camera_pose_ros.io.floorplan import FloorPlan
from camera_pose_ros.runtime.diagnostics import (
    DiagnosticsSnapshot,
    NodeStats,
    diagnostics_snapshot,
)
from camera_pose_ros.runtime.estimate import (
    JumpGate,
    PoseEstimate,
    RegressorCheck,
    blind_estimate,
)
from camera_pose_ros.runtime.odometry import OdometryBuffer, base_from_camera, map_from_odom
from camera_pose_ros.runtime.relocalize import (
    RelocalizationRequest,
    RelocalizationResult,
    RelocalizationSession,
    VerifyThresholds,
    verify,
)
from camera_pose_ros.runtime.workers import LatestJobWorker, RefineJob, RefineScheduler

if TYPE_CHECKING:
    from camera_pose_ros.runtime.floors import FloorSet
    from camera_pose_ros.runtime.localizer import Localizer

WARN_PERIOD_S = 5.0  # a throttled log line repeats at most this often per key

__all__ = ["Mode", "PipelineSettings", "load_localizer", "load_floor_set", "Frame", "Logger",
           "Outputs", "RelocalizationPipeline"]

log = logging.getLogger(__name__)


class Mode(Enum):
    """What the node does with each frame."""

    REGRESS = "regress"  # the network alone
    REFINE = "refine"  # also refine some frames against the SfM map
    SCR_PNP = "scr-pnp"  # a structure-aware network's scene coordinates + PnP, every frame


@dataclass(frozen=True)
class PipelineSettings:
    """The frame path's settings (the node's parameters of the same names)."""

    mode: Mode = Mode.REGRESS
    max_image_age: float = 0.5
    max_future_stamp: float = 2.0
    max_odom_age: float = 0.2
    publish_map_to_odom: bool = False
    base_from_cam: np.ndarray = field(default_factory=lambda: np.eye(4), compare=False)
    jump_gate: bool = False
    max_jump: float = 1.0
    refine_every_n: int = 5
    refine_on_request_only: bool = False
    refine_from_network: bool = True  # False: refinement from retrieval alone
    relocalize_timeout: float = 5.0
    thresholds: VerifyThresholds = VerifyThresholds()

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> PipelineSettings:
        """Settings from parameter values by name (``base_to_camera`` as x y z qx qy qz qw).

        Raises:
            ConfigError: an unknown mode or an unusable ``base_to_camera``.
        """
        try:
            mode = Mode(params["mode"])
        except ValueError as exc:
            raise ConfigError(f"mode must be regress, refine or scr-pnp, got "
                              f"{params['mode']!r}") from exc
        prior = str(params.get("refine_prior", "network"))
        if prior not in ("network", "none"):
            raise ConfigError(f"refine_prior must be network or none, got {prior!r}")
        return cls(mode=mode, max_image_age=float(params["max_image_age"]),
                   max_future_stamp=float(params["max_future_stamp"]),
                   max_odom_age=float(params["max_odom_age"]),
                   publish_map_to_odom=bool(params["publish_map_to_odom"]),
                   base_from_cam=base_from_camera(params["base_to_camera"]),
                   jump_gate=bool(params["jump_gate"]), max_jump=float(params["max_jump"]),
                   refine_every_n=int(params["refine_every_n"]),
                   refine_on_request_only=bool(params["refine_on_request_only"]),
                   refine_from_network=prior == "network",
                   relocalize_timeout=float(params["relocalize_timeout"]),
                   thresholds=VerifyThresholds(
                       float(params["verify_max_position_sigma"]),
                       float(params["verify_max_rotation_sigma_deg"])))


def load_localizer(params: Mapping[str, Any]) -> tuple[Localizer, FloorPlan | None, str]:
    """The localizer that parameter values by name ask for: checkpoint, device, dropout
    samples, half precision, floor plan and, in refine mode, the refiner (in scr-pnp mode a
    structure-aware checkpoint's PnP solver: a regressor is refused); the mapped views
    (for the nearest-view distance in diagnostics) in either mode, when a map is found.

    Returns:
        The localizer, the floor plan (None without one) and the refinement map's path (""
        unless in refine mode).

    Raises:
        CameraPoseError: an empty ``model_path``, or what loading the checkpoint, the floor
            plan, the refinement settings or the refinement map raises.
    """
    from camera_pose_ros.runtime.localizer import Localizer  # torch: loaded when configuring

    plan = FloorPlan.load(str(params["floorplan_yaml"])) if params["floorplan_yaml"] else None
    if not params["model_path"]:
        raise ConfigError("parameter model_path is empty: give a checkpoint")
    localizer = Localizer(str(params["model_path"]), device=str(params["device"]),
                          floorplan=plan, mc_samples=int(params["mc_samples"]) or None,
                          solver="pnp" if params["mode"] == Mode.SCR_PNP.value else "kabsch")
    if params["half_precision"]:
        localizer.predictor.enable_half()
    where = ""
    if params["mode"] == Mode.REFINE.value:
        where = localizer.enable_refinement(str(params["refinement_map"]) or None,
                                            str(params["refine_config"]) or None)
    else:  # the mapped views alone (their poses): diagnostics' nearest-view distance
        localizer.load_views(str(params["refinement_map"]) or None)
    if not params["snap_to_floorplan"]:
        localizer.set_floorplan(None)
    return localizer, plan, where


def load_floor_set(params: Mapping[str, Any]) -> FloorSet:
    """The floors of ``floors_file`` (:mod:`camera_pose_ros.io.floors`), each floor's
    localizer loaded as :func:`load_localizer` loads one (the floor's ``model_path``,
    ``refinement_map`` and ``floorplan_yaml`` in place of the parameters of those names),
    starting on ``floor`` ("": recognise it).

    Raises:
        ConfigError: an unreadable floors file, a floor without a model, an unknown
            ``floor``, or automatic recognition (``floor`` "") outside refine mode.
        CameraPoseError: what loading a floor's localizer raises (the floor is named).
    """
    from camera_pose_ros.io.floors import load_floors
    from camera_pose_ros.runtime.floors import FloorSet

    specs = load_floors(str(params["floors_file"]), str(params["map_frame"]))
    start = str(params["floor"]) or None
    if start is None and params["mode"] != Mode.REFINE.value:
        raise ConfigError("floor recognition needs mode refine (a refinement map per floor): "
                          "set mode:=refine, or give the floor with the floor parameter")
    floors = []
    for spec in specs:
        if not spec.model_path:
            raise ConfigError(f"floor {spec.id} of {params['floors_file']} has no model_path")
        sub = {**params, "model_path": spec.model_path, "refinement_map": spec.refinement_map,
               "floorplan_yaml": spec.floorplan_yaml}
        try:
            floors.append((spec, load_localizer(sub)[0]))
        except CameraPoseError as exc:
            raise type(exc)(f"floor {spec.id}: {exc}") from exc
    return FloorSet(floors, current=start, recheck_after=int(params["floor_recheck_after"]))


@dataclass(frozen=True)
class Frame:
    """One image as it arrived.

    Attributes:
        stamp: the message's stamp, handed to the outputs as it is.
        stamp_ns: the same stamp in nanoseconds.
        decode: returns the RGB uint8 image; raises ImageDecodeError (called on the worker).
    """

    stamp: object
    stamp_ns: int
    decode: Callable[[], np.ndarray]


class Logger(Protocol):
    """What the pipeline logs through: a :class:`logging.Logger` or an rclpy node's logger."""

    def info(self, msg: str) -> object:
        """An informational line."""

    def warning(self, msg: str) -> object:
        """A warning."""

    def error(self, msg: str) -> object:
        """An error."""


class Outputs(Protocol):
    """Where the pipeline's results go (the node: messages and TF)."""

    def publish_pose(self, stamp: object, est: PoseEstimate, *, verified: bool,
                     map_from_odom: np.ndarray | None, refined: bool = False) -> None:
        """An estimate; ``map_from_odom`` (4x4) when the map -> odom edge is published;
        ``refined`` for an estimate of the refinement worker."""

    def publish_initial_pose(self, stamp: object, est: PoseEstimate) -> None:
        """The verified estimate that ended a relocalization request (/initialpose)."""

    def floor_changed(self, floor: str | None) -> None:
        """The current floor changed (None: unknown); only with several floors."""


class RelocalizationPipeline:
    """Frames -> estimates (and refined estimates) -> :class:`Outputs`, on worker threads.

    Args:
        localizer: the loaded model (and refiner, in refine mode).
        settings: see :class:`PipelineSettings`.
        outputs: where estimates and verified initial poses go.
        logger: where log lines go (rate-limited per kind of line).
        stats: the counters to update (a new one when None).
        now_ns: the clock image stamps are compared with (the node's, maybe simulated).
        clock: monotonic seconds (arrival times, relocalization deadlines).
        floors: several floors (:func:`load_floor_set`): ``localizer`` follows the current
            one; while none is known frames go to the refinement worker to recognise it and
            nothing is published.
    """

    def __init__(self, localizer: Localizer, settings: PipelineSettings, outputs: Outputs, *,
                 logger: Logger = log, stats: NodeStats | None = None,
                 now_ns: Callable[[], int] = time.time_ns,
                 clock: Callable[[], float] = time.monotonic,
                 floors: FloorSet | None = None) -> None:
        self.floors = floors
        self.localizer = floors.localizer if floors is not None else localizer
        self.settings = settings
        self.outputs = outputs
        self.logger = logger
        self.stats = stats if stats is not None else NodeStats()
        self._now_ns = now_ns
        self._clock = clock
        self.camera: PinholeCamera | None = None  # refinement intrinsics (None: the map's)
        self.camera_error = ""  # why the last camera_info was refused
        self._logged: dict[str, float] = {}
        self.odometry = OdometryBuffer()
        self.gate = JumpGate(settings.max_jump) if settings.jump_gate else None
        self.session = RelocalizationSession(self._relocalized, clock=clock)
        self._frames: LatestJobWorker[Frame] | None = None
        self._refiner: LatestJobWorker[RefineJob] | None = None
        self._scheduler: RefineScheduler | None = None
        #: in refine mode, the map's verdict on the regressor (made by :meth:`start`)
        self.check: RegressorCheck | None = None

    @property
    def refining(self) -> bool:
        """Refine mode with a refiner loaded."""
        return self.settings.mode is Mode.REFINE and self.localizer.refiner is not None

    @property
    def running(self) -> bool:
        """Started and not stopped."""
        frames = self._frames  # read once: stop() may clear it from another thread
        return frames is not None and frames.running

    def idle(self) -> bool:
        """No frame waits or is being handled (localized or refined)."""
        return all(w.idle for w in (self._frames, self._refiner) if w is not None)

    def workers_alive(self) -> bool:
        """Every worker thread the pipeline started is alive."""
        workers = [w for w in (self._frames, self._refiner) if w is not None]
        return bool(workers) and all(w.is_alive() for w in workers)

    def start(self) -> None:
        """Start the worker threads (again after :meth:`stop`; no-op while running)."""
        if self.running:
            return
        self._frames = LatestJobWorker(self._process, name="relocalization-inference",
                                       on_error=self._failed("rejected_error", "frame"))
        self._frames.start()
        refiner = self.localizer.refiner
        if self.refining and refiner is not None:
            self.check = RegressorCheck(refiner.config.unrefined_rotation_sigma_deg)
            self._refiner = LatestJobWorker(self._refine, name="relocalization-refine",
                                            on_error=self._failed("refine_error", "refinement"))
            self._scheduler = RefineScheduler(
                self._refiner.submit_if_idle, every_n=self.settings.refine_every_n,
                on_request_only=self.settings.refine_on_request_only)
            self._refiner.start()

    def stop(self, reason: str = "the pipeline was stopped") -> None:
        """Stop the workers (a frame being handled finishes) and cancel an open request."""
        for worker in (self._frames, self._refiner):
            if worker is not None:
                worker.stop()
        self._frames = self._refiner = None
        self._scheduler = None
        self.session.cancel(reason)

    def submit(self, frame: Frame) -> None:
        """Take one frame (never blocks); a frame that still waits is superseded."""
        self.stats.add("received")
        self.stats.arrived(self._clock())
        ahead = (frame.stamp_ns - self._now_ns()) / 1e9
        max_ahead = self.settings.max_future_stamp
        if max_ahead > 0 and ahead > max_ahead:
            self.stats.add("dropped_future")
            self._log(logging.WARNING, f"dropping a frame stamped {ahead:.2f} s ahead of "
                      f"this node's clock (max_future_stamp {max_ahead} s)", "future")
            return
        frames = self._frames
        if frames is not None and frames.submit(frame):
            self.stats.add("dropped_superseded")

    def request(self, source: str) -> RelocalizationRequest | None:
        """Start a relocalization request (or join the open one) on behalf of ``source``.

        None when the pipeline is not running (no frame would come to the request).
        """
        if not self.running:
            return None
        s = self.settings
        req, new = self.session.start(s.relocalize_timeout, s.thresholds, self.refining)
        if new:
            self._log(logging.INFO, f"relocalization requested by {source}: trying frames "
                      f"for up to {req.timeout:g} s")
        return req

    def relocalize(self, source: str, *, wait: bool) -> tuple[bool, str]:
        """Start (or join) a request; the answer for whoever asked: success and a message.

        With ``wait`` this blocks until the request's result (its deadline at most) and
        answers it; without, it answers "started" at once and the result goes only to the
        outputs (a caller on the only thread that feeds frames must not wait).
        """
        req = self.request(source)
        if req is None:
            return False, "not active: activate the node"
        if not wait:
            return True, (f"relocalization started (timeout {req.timeout:g} s); the outcome "
                          "goes to /initialpose, the log and diagnostics")
        result = self.session.wait(req)
        return result.success, result.message

    def diagnostics(self) -> DiagnosticsSnapshot:
        """The status now (see :func:`.diagnostics_snapshot`)."""
        snap = diagnostics_snapshot(self.stats, now=self._clock(),
                                    model=self.localizer.model_name,
                                    device=self.localizer.device,
                                    views=self.localizer.views)
        if self.floors is not None:
            snap.values["floor"] = self.floors.current or "unknown"
        return snap

    def set_floor(self, floor: str | None, why: str = "set") -> None:
        """Make ``floor`` current (None or "": unknown, recognise it from the next frames).

        Raises:
            ConfigError: no floors were given, ``floor`` is not one of them, or it is None
                and nothing could recognise it (not in refine mode).
        """
        floors = self.floors
        if floors is None:
            raise ConfigError("this node has one map: give floors_file to use floors")
        if not floor and not self.refining:
            raise ConfigError("recognising the floor needs mode refine: name the floor")
        if not floors.select(floor):
            return
        self.localizer = floors.localizer
        if self.check is not None:  # the new floor's regressor is another regressor
            self.check = RegressorCheck(float(np.degrees(self.check.failed_rotation_sigma)))
        self.stats.add("floor_changes")
        self._log(logging.INFO, f"floor {why}: {floors.current or 'unknown (recognising)'}")
        self.outputs.floor_changed(floors.current)

    def update_camera(self, make: Callable[[], PinholeCamera]) -> None:
        """Take the camera ``make`` returns for refinement; when it raises CameraModelError,
        keep the previous one and raise saying which intrinsics stay in use."""
        try:
            self.camera = make()
        except CameraModelError as exc:
            self.camera_error = str(exc)
            kept = "previous camera_info" if self.camera is not None else "map"
            raise CameraModelError(f"{exc}; refinement uses the {kept}'s intrinsics") from exc

    def guard(self, callback: Callable[..., object], what: str, key: str,
              consequence: str = "") -> Callable[..., None]:
        """``callback`` that counts under ``key``, logs (throttled per ``what``) and drops
        anything it raises: one bad message must never stop the caller."""

        def run(*args: object) -> None:
            try:
                callback(*args)
            except Exception as exc:
                self.stats.add(key)
                text = str(exc) if isinstance(exc, (CameraPoseError, ValueError)) else (
                    f"{type(exc).__name__}: {exc}")
                self._log(logging.WARNING, f"ignoring {what}: {text}{consequence}", what)

        return run

    def _log(self, level: int, text: str, key: str = "") -> None:
        """Log at a :mod:`logging` level; with a ``key``, at most once per WARN_PERIOD_S."""
        if key:
            now = self._clock()
            if now - self._logged.get(key, -WARN_PERIOD_S) < WARN_PERIOD_S:
                return
            self._logged[key] = now
        # one call per level: rclpy refuses two levels from one line of code
        if level >= logging.ERROR:
            self.logger.error(text)
        elif level >= logging.WARNING:
            self.logger.warning(text)
        else:
            self.logger.info(text)

    # -- worker threads --------------------------------------------------------------------
    def _failed(self, key: str, what: str) -> Callable[[Exception], None]:
        def report(exc: Exception) -> None:
            self.stats.add(key)
            self._log(logging.ERROR, f"{what} failed: {exc}", key)

        return report

    def _drop(self, key: str, text: str) -> None:
        """A frame that gives no estimate: count, warn (throttled), tell the open request."""
        self.stats.add(key)
        self._log(logging.WARNING, text, key)
        self.session.note(text)

    def _process(self, frame: Frame) -> None:
        age = (self._now_ns() - frame.stamp_ns) / 1e9
        max_age = self.settings.max_image_age
        if max_age > 0 and age > max_age:
            return self._drop("dropped_stale", (
                f"image stamps are {age:.0f} s older than this node's clock: a bag played "
                "without `--clock`? run the player with --clock and the node with "
                "use_sim_time:=true, or raise max_image_age" if age > 10.0 else
                f"dropping a frame {age:.2f} s old (max_image_age {max_age} s)"))
        try:
            rgb = frame.decode()
        except ImageDecodeError as exc:
            return self._drop("rejected_bad_input", f"bad image: {exc}")
        floors, refiner = self.floors, self._refiner
        if floors is not None and floors.current is None:  # recognise it; publish nothing
            if refiner is not None:
                refiner.submit_if_idle(RefineJob(
                    frame.stamp, rgb, None, self.odometry.nearest(
                        frame.stamp_ns, self.settings.max_odom_age), self.session.is_open))
            return self._drop("dropped_no_floor", "the floor is not known yet: recognising "
                              "it from the images (nothing is published until then)")
        est = self.localizer.localize(rgb)
        if est is None:
            return self._drop("rejected_nan", "non-finite prediction; nothing published")
        if floors is not None:
            est.floor = floors.current or ""
        self.stats.inference_took(est.latency_s)
        odom = self.odometry.nearest(frame.stamp_ns, self.settings.max_odom_age)
        if self.gate is not None and not self.gate.accept(
                est.position, None if odom is None else odom[:3, 3]):
            return self._drop("rejected_jump", "estimate rejected by the odometry jump gate")
        if est.snapped:
            self.stats.add("snapped")
        regressed = None
        check = self.check
        if self.refining and check is not None:
            regressed = replace(est)  # the regressor's own claim, for the map's verdict
            check.apply(est)
        self._publish(frame.stamp, est, odom)
        self.stats.add("published")
        scheduler = self._scheduler
        if not self.refining:
            self.session.offer(est, frame.stamp)
        elif scheduler is not None:  # None once stopped
            scheduler.offer(RefineJob(frame.stamp, rgb, est, odom, self.session.is_open,
                                      regressed))
        return None

    def _refine(self, job: RefineJob) -> None:
        est, floors = job.estimate, self.floors
        if floors is not None and (est is None or floors.lost):
            return self._recognise(job, floors)
        if est is None:
            return None
        if not self.settings.refine_from_network:  # the map alone: retrieval, no gate
            est = replace(blind_estimate(est.floor), latency_s=est.latency_s)
        t0 = time.perf_counter()
        self.localizer.refine(job.rgb, est, self.camera)
        self.stats.refinement_took(time.perf_counter() - t0)
        if floors is not None:
            floors.refined(est.refined)
        check = self.check
        if check is not None and job.regressed is not None:
            if est.refined:
                check.refined(job.regressed, est)
            else:
                check.failed()
        if est.refined:
            self.stats.add("refined")
            self._publish(job.stamp, est, job.odom_from_base, refined=True)
        else:
            self.stats.add("refine_failed")
            self._log(logging.WARNING, f"refinement failed: {est.refine_note}", "refine_failed")
        if job.requested:
            self.session.offer(est, job.stamp)
        return None

    def _recognise(self, job: RefineJob, floors: FloorSet) -> None:
        """Recognise the floor from the image; on success switch to it and publish the pose
        refined there (it also answers an open request)."""
        verdict = floors.recognise(job.rgb, self.camera)
        self.stats.refinement_took(verdict.seconds)
        check = self.check if job.regressed is not None else None
        if verdict.floor is None or verdict.estimate is None:
            self.stats.add("floor_unrecognised")
            self._log(logging.WARNING, f"floor not recognised: {verdict.reason}", "no_floor")
            if check is not None:  # the map did not confirm the regressor either
                check.failed()
            if job.requested:
                self.session.note(f"floor not recognised: {verdict.reason}")
            return
        if verdict.floor != floors.current:
            self.set_floor(verdict.floor, f"recognised ({verdict.inliers[verdict.floor]} "
                                          "inliers)")
        else:
            floors.refined(True)
            if check is not None and job.regressed is not None:
                check.refined(job.regressed, verdict.estimate)
        self.stats.add("refined")
        self._publish(job.stamp, verdict.estimate, job.odom_from_base, refined=True)
        if job.requested:
            self.session.offer(verdict.estimate, job.stamp)

    def _publish(self, stamp: object, est: PoseEstimate, odom: np.ndarray | None,
                 refined: bool = False) -> None:
        s = self.settings
        edge = None
        if s.publish_map_to_odom and odom is None:
            self.stats.add("no_odometry")
            self._log(logging.WARNING, "no odometry near the image stamp: map -> odom not "
                      "published", "no_odometry")
        elif s.publish_map_to_odom and odom is not None:
            map_from_cam = pose_matrix(rotmat_from_quat_wxyz(est.quat_wxyz), est.position)
            edge = map_from_odom(map_from_cam, s.base_from_cam, odom)
        verified = verify(est, s.thresholds, self.refining)[0]
        self.outputs.publish_pose(stamp, est, verified=verified, map_from_odom=edge,
                                  refined=refined)
        self.stats.estimated(est.position, est.quat_wxyz)

    def _relocalized(self, result: RelocalizationResult) -> None:
        """A request's one result: a success goes out as the initial pose (exactly once)."""
        if result.success and result.estimate is not None:
            self.outputs.publish_initial_pose(result.stamp, result.estimate)
            self.logger.info(f"{result.message}: published on /initialpose")
        else:
            self.logger.warning(result.message)
        self.stats.relocalization_ended(result)
