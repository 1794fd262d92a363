"""camera_pose_ros.runtime.pipeline without ROS: frames in, estimates out, on worker threads.

A stand-in localizer makes each estimate from its image (x = the first pixel's red value), so
every test knows which frame an output came from.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.errors import (
    CameraModelError,
    ConfigError,
    ImageDecodeError,
    InputDataError,
)
from camera_pose_ros.geometry import pose_matrix, rotmat_from_quat_wxyz
from camera_pose_ros.io.coverage import MappedViews
from camera_pose_ros.io.refmap import save_refinement_map
from camera_pose_ros.ros.params import RELOCALIZATION_PARAMS
from camera_pose_ros.runtime.estimate import PoseEstimate
from camera_pose_ros.runtime.pipeline import (
    Frame,
    Mode,
    PipelineSettings,
    RelocalizationPipeline,
    load_localizer,
)
from camera_pose_ros.runtime.refine import RefineConfig
from camera_pose_ros.runtime.relocalize import Outcome, VerifyThresholds
from test.conftest import small_refinement_map, wait_for, write_random_checkpoint

S = 1_000_000_000
NOW_NS = 1_000 * S
DEFAULTS = {spec.name: spec.default for spec in RELOCALIZATION_PARAMS}


MAP = SimpleNamespace(config=RefineConfig())  # a refiner as the pipeline sees one


class StubLocalizer:
    """Estimates at (image[0, 0, 0], 0, 0) with position sigma ``sigma``; refines on request."""

    model_name, device = "stub/net", "cpu"
    views: MappedViews | None = None

    def __init__(self, sigma: float = 0.1, refiner: object | None = None) -> None:
        self.sigma, self.refiner = sigma, refiner
        self.nan = False
        self.refine_ok = True
        self.refine_shift = 1.0  # metres the refined pose lies from the regressed one (y)
        self.cameras: list = []
        self.priors: list[np.ndarray] = []  # the positions refinement started from

    def localize(self, rgb: np.ndarray) -> PoseEstimate | None:
        if self.nan:
            return None
        cov = np.diag([self.sigma**2] * 3 + [np.radians(1.0) ** 2] * 3)
        return PoseEstimate(np.array([float(rgb[0, 0, 0]), 0.0, 0.0]),
                            np.array([1.0, 0.0, 0.0, 0.0]), cov, latency_s=0.01)

    def refine(self, rgb: np.ndarray, est: PoseEstimate, camera=None) -> PoseEstimate:
        self.cameras.append(camera)
        self.priors.append(est.position.copy())
        if self.refine_ok:
            # (a prior without a position is refined to the origin)
            est.position = np.nan_to_num(est.position) + [0.0, self.refine_shift, 0.0]
            est.refined, est.inliers = True, 120
        else:
            est.refine_note = "8 inliers (< 30)"
        return est


class Recorder:
    """The outputs and the logger: keeps what the pipeline sends."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.poses: list[dict] = []
        self.initial: list = []
        self.floors: list = []
        self.lines: list[tuple[str, str]] = []

    def publish_pose(self, stamp, est, *, verified, map_from_odom, refined=False) -> None:
        with self.lock:
            self.poses.append({"stamp": stamp, "x": est.position.copy(), "verified": verified,
                               "edge": map_from_odom, "refined": refined,
                               "rot_sd_deg": float(np.degrees(np.sqrt(
                                   np.linalg.eigvalsh(est.covariance[3:, 3:])[0]))),
                               "pos_sd": float(np.sqrt(est.covariance[0, 0]))})

    def publish_initial_pose(self, stamp, est) -> None:
        with self.lock:
            self.initial.append((stamp, est))

    def floor_changed(self, floor) -> None:
        with self.lock:
            self.floors.append(floor)

    def info(self, msg: str) -> None:
        self.lines.append(("info", msg))

    def warning(self, msg: str) -> None:
        self.lines.append(("warning", msg))

    def error(self, msg: str) -> None:
        self.lines.append(("error", msg))

    def count(self) -> int:
        with self.lock:
            return len(self.poses)

    def logged(self, level: str, words: str) -> int:
        return sum(1 for lv, line in list(self.lines) if lv == level and words in line)


class Clock:
    def __init__(self, now: float = 50.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def image(value: int) -> np.ndarray:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0, 0] = value
    return rgb


def frame(value: int, stamp_ns: int = NOW_NS, decode=None) -> Frame:
    return Frame(f"stamp-{value}", stamp_ns, decode or (lambda: image(value)))


@pytest.fixture
def make():
    """Builds a pipeline (stopped at the end); returns it and its recorder."""
    made: list[RelocalizationPipeline] = []

    def build(localizer=None, clock=None, floors=None, **settings
              ) -> tuple[RelocalizationPipeline, Recorder]:
        rec = Recorder()
        kwargs = {"clock": clock} if clock is not None else {}
        if floors is not None:
            kwargs["floors"] = floors
        pipe = RelocalizationPipeline(localizer or StubLocalizer(), PipelineSettings(**settings),
                                      rec, logger=rec, now_ns=lambda: NOW_NS, **kwargs)
        pipe.start()
        made.append(pipe)
        return pipe, rec

    yield build
    for pipe in made:
        pipe.stop()


def send(pipe: RelocalizationPipeline, rec: Recorder, f: Frame) -> bool:
    """Submit one frame; wait until it is published and every worker is done with it."""
    n0 = pipe.stats.counts["published"]
    pipe.submit(f)
    return wait_for(lambda: pipe.stats.counts["published"] > n0 and pipe.idle(), 10)


def test_a_frame_becomes_one_estimate_with_its_stamp(make):
    pipe, rec = make()
    assert send(pipe, rec, frame(3))
    assert wait_for(lambda: rec.count() == 1, 5)
    out = rec.poses[0]
    assert out["stamp"] == "stamp-3" and out["x"][0] == 3.0
    assert out["verified"] and out["edge"] is None and not out["refined"]
    assert pipe.stats.counts["received"] == 1 and pipe.stats.counts["published"] == 1
    assert list(pipe.stats.latency) == [0.01]


def test_drops_are_counted_logged_and_told_to_the_open_request(make):
    clock = Clock()
    stub = StubLocalizer()
    pipe, rec = make(stub, clock=clock, max_image_age=0.5, max_future_stamp=2.0,
                     relocalize_timeout=30.0)
    decoded: list[int] = []

    def never_decoded() -> np.ndarray:
        decoded.append(1)
        return image(1)

    pipe.submit(frame(1, NOW_NS + 3 * S, never_decoded))  # 3 s in the future
    assert pipe.stats.counts["dropped_future"] == 1 and decoded == []
    assert rec.logged("warning", "3.00 s ahead of this node's clock")
    pipe.request("test")
    for key, f in (("dropped_stale", frame(2, NOW_NS - 3600 * S)),
                   ("dropped_stale", frame(3, NOW_NS - S)),
                   ("rejected_bad_input", frame(4, decode=_undecodable))):
        n0 = pipe.stats.counts[key]
        pipe.submit(f)
        assert wait_for(lambda k=key, n=n0: pipe.stats.counts[k] > n, 5), key
        clock.now += 0.1 if key == "rejected_bad_input" else 6.0  # past the warning throttle
    stub.nan = True
    pipe.submit(frame(5))
    assert wait_for(lambda: pipe.stats.counts["rejected_nan"] == 1, 5)
    assert rec.count() == 0 and pipe.stats.counts["published"] == 0
    assert rec.logged("warning", "image stamps are 3600 s older than this node's clock")
    assert rec.logged("warning", "--clock") and rec.logged("warning", "use_sim_time:=true")
    assert rec.logged("warning", "dropping a frame 1.00 s old (max_image_age 0.5 s)")
    assert rec.logged("warning", "bad image: truncated PNG")
    clock.now += 30.0  # the request's deadline passes; its failure names the last reason
    pipe.session.expire()
    last = pipe.stats.last_relocalization
    assert last.outcome is Outcome.FAILED
    assert last.message.endswith("0 frames, none verified (last: non-finite prediction; "
                                 "nothing published)")


def _undecodable() -> np.ndarray:
    raise ImageDecodeError("truncated PNG")


def test_warnings_of_one_kind_are_throttled(make):
    clock = Clock()
    pipe, rec = make(clock=clock, max_future_stamp=1.0)
    for _ in range(3):
        pipe.submit(frame(1, NOW_NS + 5 * S))
    assert pipe.stats.counts["dropped_future"] == 3
    assert rec.logged("warning", "ahead of this node's clock") == 1
    clock.now += 5.0
    pipe.submit(frame(1, NOW_NS + 5 * S))
    assert rec.logged("warning", "ahead of this node's clock") == 2


def test_a_frame_that_raises_is_counted_and_the_next_one_is_published(make):
    pipe, rec = make()

    def broken() -> np.ndarray:
        raise RuntimeError("decoder crashed")

    pipe.submit(frame(1, decode=broken))
    assert wait_for(lambda: pipe.stats.counts["rejected_error"] == 1, 5)
    assert rec.logged("error", "frame failed: decoder crashed")
    assert send(pipe, rec, frame(2)) and pipe.workers_alive()


def test_map_to_odom_needs_odometry_at_the_image_stamp(make):
    base_from_cam = pose_matrix(rotmat_from_quat_wxyz([0.5, -0.5, 0.5, -0.5]), [0.1, 0, 0.3])
    pipe, rec = make(publish_map_to_odom=True, base_from_cam=base_from_cam, max_odom_age=0.2)
    assert send(pipe, rec, frame(4))
    assert rec.poses[-1]["edge"] is None and pipe.stats.counts["no_odometry"] == 1
    assert rec.logged("warning", "no odometry near the image stamp")
    odom_from_base = pose_matrix(rotmat_from_quat_wxyz([np.cos(0.3), 0, 0, np.sin(0.3)]),
                                 [2.0, -1.0, 0.0])
    pipe.odometry.add(NOW_NS - S // 10, odom_from_base)  # 0.1 s before the image
    assert send(pipe, rec, frame(4))
    edge = rec.poses[-1]["edge"]
    map_from_cam = pose_matrix(np.eye(3), [4.0, 0.0, 0.0])
    assert np.allclose(edge @ odom_from_base @ base_from_cam, map_from_cam)


def test_the_jump_gate_rejects_a_jump_odometry_did_not_make(make):
    pipe, rec = make(jump_gate=True, max_jump=1.0)
    pipe.odometry.add(NOW_NS, np.eye(4))  # the robot stands still
    assert send(pipe, rec, frame(2))
    pipe.submit(frame(9))  # 7 m away
    assert wait_for(lambda: pipe.stats.counts["rejected_jump"] == 1, 5)
    assert send(pipe, rec, frame(2)) and rec.count() == 2


def _feed_until(pipe, done, values=range(1, 200)) -> list[str]:
    stamps = []
    for v in values:
        if done():
            break
        stamps.append(f"stamp-{v}")
        pipe.submit(frame(v))
        wait_for(done, 0.05)
    return stamps


def test_relocalize_waits_for_the_first_verified_frame(make):
    pipe, rec = make(relocalize_timeout=30.0)
    answers: list = []
    caller = threading.Thread(target=lambda: answers.append(
        pipe.relocalize("~/relocalize", wait=True)))
    caller.start()
    assert wait_for(lambda: pipe.session.is_open, 5)
    stamps = _feed_until(pipe, lambda: bool(answers))
    caller.join(10)
    ok, message = answers[0]
    assert ok and message.startswith("relocalized after") and "regressed pose" in message
    assert len(rec.initial) == 1 and rec.initial[0][0] in stamps
    assert rec.logged("info", "published on /initialpose") == 1
    assert pipe.stats.counts["relocalized"] == 1
    assert pipe.stats.last_relocalization.outcome is Outcome.RELOCALIZED


def test_relocalize_without_waiting_and_when_stopped(make):
    pipe, rec = make(thresholds=VerifyThresholds(max_position_sigma=0.01))
    ok, message = pipe.relocalize("tracking_lost", wait=False)
    assert ok and message.startswith("relocalization started (timeout 5 s)")
    assert rec.logged("info", "relocalization requested by tracking_lost")
    assert send(pipe, rec, frame(1)) and rec.initial == []  # sigma 0.1 m > 0.01 m
    pipe.stop("the node was deactivated")
    assert pipe.stats.last_relocalization.outcome is Outcome.CANCELLED
    assert rec.logged("warning", "relocalization cancelled: the node was deactivated")
    assert pipe.stats.counts["relocalization_failed"] == 1
    assert pipe.relocalize("x", wait=True) == (False, "not active: activate the node")
    assert pipe.request("x") is None and not pipe.running


def test_refine_mode_refines_every_nth_frame_and_only_refined_poses_verify(make):
    stub = StubLocalizer(refiner=MAP)
    pipe, rec = make(stub, mode=Mode.REFINE, refine_every_n=2)
    camera = PinholeCamera(64, 48, 60.0, 60.0, 32.0, 24.0)
    pipe.update_camera(lambda: camera)
    for v in range(1, 5):
        assert send(pipe, rec, frame(v))  # frames 2 and 4 are refined
    with rec.lock:
        refined = [p for p in rec.poses if p["refined"]]
        regressed = [p for p in rec.poses if not p["refined"]]
    assert [p["stamp"] for p in refined] == ["stamp-2", "stamp-4"]
    assert all(p["verified"] for p in refined) and not any(p["verified"] for p in regressed)
    assert [p["x"][1] for p in refined] == [1.0, 1.0]  # the refined position
    assert stub.cameras == [camera, camera]
    assert len(pipe.stats.refine_latency) == 2


def test_refinement_without_the_networks_prior_starts_from_nothing(make):
    stub = StubLocalizer(refiner=MAP)
    stub.refine_shift = 0.0
    pipe, rec = make(stub, mode=Mode.REFINE, refine_every_n=1, refine_from_network=False)
    for v in (3, 7):
        assert send(pipe, rec, frame(v))
    assert len(stub.priors) == 2 and all(np.isnan(p).all() for p in stub.priors)
    with rec.lock:
        refined = [p for p in rec.poses if p["refined"]]
    assert [p["stamp"] for p in refined] == ["stamp-3", "stamp-7"]
    assert all(list(p["x"]) == [0.0, 0.0, 0.0] for p in refined)
    pipe2, rec2 = make(StubLocalizer(refiner=MAP), mode=Mode.REFINE, refine_every_n=1)
    assert send(pipe2, rec2, frame(3))
    assert [list(p) for p in pipe2.localizer.priors] == [[3.0, 0.0, 0.0]]


def test_each_refinement_is_the_maps_verdict_on_the_regressed_poses_that_follow(make):
    stub = StubLocalizer(refiner=MAP)
    stub.refine_ok = False
    pipe, rec = make(stub, mode=Mode.REFINE, refine_every_n=2)
    for v in range(1, 5):
        assert send(pipe, rec, frame(v))  # 2 and 4 fail to refine
    stub.refine_ok, stub.refine_shift = True, 0.0
    v = 4
    while not pipe.check.confirmed:  # refined where the regressor said, every other frame
        v += 1
        assert v < 40 and send(pipe, rec, frame(v))
    agreed = v
    assert agreed - 4 == 2 * pipe.check.memory  # the failures were remembered that long
    stub.refine_shift = 1.0
    for v in range(agreed + 1, agreed + 4):  # agreed + 2: refined 1 m (10 sigma) away
        assert send(pipe, rec, frame(v))
    with rec.lock:
        regressed = {p["stamp"]: p for p in rec.poses if not p["refined"]}
    assert pipe.stats.counts["refine_failed"] == 2

    def claims(v: int) -> tuple[float, float]:
        p = regressed[f"stamp-{v}"]
        return p["pos_sd"], p["rot_sd_deg"]

    # before any verdict, and once the last refinements agreed: the regressor's own claim
    for v in (1, 2, agreed + 1, agreed + 2):
        assert claims(v) == pytest.approx((0.1, 1.0)), v
    # after a failure, while it is among the remembered refinements: heading unknown
    for v in range(3, agreed + 1):
        assert claims(v)[1] > 179.9 and claims(v)[0] == pytest.approx(0.1), v
    # a refined pose 1 m from a regressed one that claimed 0.1 m: position widened by the
    # maximum-likelihood scale of that difference, 1 m over three axes
    assert claims(agreed + 3) == pytest.approx((1.0 / np.sqrt(3.0), 1.0))


def test_an_open_request_refines_every_frame_until_one_is_refined(make):
    stub = StubLocalizer(refiner=MAP)
    stub.refine_ok = False
    pipe, rec = make(stub, mode=Mode.REFINE, refine_on_request_only=True,
                     relocalize_timeout=30.0)
    assert send(pipe, rec, frame(1)) and pipe.stats.counts["refine_failed"] == 0
    req = pipe.request("~/relocalize")
    for v in (2, 3):
        assert send(pipe, rec, frame(v))
    assert pipe.stats.counts["refine_failed"] == 2 and req.frames == 2
    assert "refinement: 8 inliers (< 30)" in req.last_reason
    assert rec.logged("warning", "refinement failed: 8 inliers (< 30)") == 1  # throttled
    stub.refine_ok = True
    _feed_until(pipe, lambda: req.done, range(4, 40))
    assert req.result.success and "refined pose (120 inliers)" in req.result.message
    assert len(rec.initial) == 1 and rec.initial[0][1].refined


def test_guard_counts_logs_and_drops_what_a_callback_raises(make):
    clock = Clock()
    pipe, rec = make(clock=clock)
    calls: list = []

    def callback(msg):
        calls.append(msg)
        if msg == "bad":
            raise InputDataError("non-finite pose")
        if msg == "worse":
            raise KeyError("x")

    guarded = pipe.guard(callback, "odom", "rejected_odometry", "; kept the last one")
    guarded("good")
    assert pipe.stats.counts["rejected_odometry"] == 0 and rec.lines == []
    guarded("bad")
    guarded("bad")
    assert pipe.stats.counts["rejected_odometry"] == 2
    assert rec.logged("warning", "ignoring odom: non-finite pose; kept the last one") == 1
    clock.now += 6.0
    guarded("worse")
    assert rec.logged("warning", "ignoring odom: KeyError: 'x'") == 1
    assert calls == ["good", "bad", "bad", "worse"]


def test_a_refused_camera_keeps_the_previous_one(make):
    pipe, rec = make()

    def refused() -> PinholeCamera:
        raise CameraModelError("distortion model 'equidistant' is not supported")

    with pytest.raises(CameraModelError, match="refinement uses the map's intrinsics"):
        pipe.update_camera(refused)
    assert pipe.camera is None and "equidistant" in pipe.camera_error
    good = PinholeCamera(64, 48, 60.0, 60.0, 32.0, 24.0)
    pipe.update_camera(lambda: good)
    with pytest.raises(CameraModelError, match="the previous camera_info's intrinsics"):
        pipe.update_camera(refused)
    assert pipe.camera == good


def test_settings_from_the_node_parameters():
    s = PipelineSettings.from_params(DEFAULTS)
    assert s.mode is Mode.REGRESS and s.thresholds == VerifyThresholds(0.25, 5.0)
    assert (s.max_image_age, s.refine_every_n, s.relocalize_timeout) == (0.5, 5, 5.0)
    assert np.allclose(s.base_from_cam[:3, :3] @ [0, 0, 1], [1, 0, 0])  # looks along base x
    assert PipelineSettings.from_params({**DEFAULTS, "mode": "refine"}).mode is Mode.REFINE
    assert PipelineSettings.from_params({**DEFAULTS, "mode": "scr-pnp"}).mode is Mode.SCR_PNP
    with pytest.raises(ConfigError, match="mode must be regress, refine or scr-pnp"):
        PipelineSettings.from_params({**DEFAULTS, "mode": "both"})
    assert s.refine_from_network
    assert not PipelineSettings.from_params({**DEFAULTS, "refine_prior": "none"}
                                            ).refine_from_network
    with pytest.raises(ConfigError, match="refine_prior must be network or none"):
        PipelineSettings.from_params({**DEFAULTS, "refine_prior": "imu"})
    with pytest.raises(ConfigError, match="base_to_camera"):
        PipelineSettings.from_params({**DEFAULTS, "base_to_camera": [0.0, 0.0, 1.0]})


def test_load_localizer_from_the_node_parameters(tmp_path):
    with pytest.raises(ConfigError, match="model_path is empty"):
        load_localizer(DEFAULTS)
    ckpt = write_random_checkpoint(tmp_path / "model.pt", seed=0)
    localizer, plan, refinement_map = load_localizer(
        {**DEFAULTS, "model_path": str(ckpt), "device": "cpu", "mc_samples": 3})
    assert localizer.model_name == "posenet/mobilenet_v3_small" and localizer.device == "cpu"
    assert plan is None and refinement_map == "" and localizer.refiner is None
    est = localizer.localize(np.zeros((48, 64, 3), np.uint8))
    assert est is not None and est.covariance.shape == (6, 6)


def test_diagnostics_give_the_last_published_pose_distance_to_the_mapped_views(make):
    stub = StubLocalizer()
    stub.views = MappedViews.from_poses(np.array([[5.0, 0.0, 0.0]]), np.array([[1.0, 0, 0, 0]]))
    pipe, rec = make(stub)
    assert pipe.diagnostics().values["nearest_view_m"] == ""  # nothing published yet
    assert send(pipe, rec, frame(2))  # an estimate at x = 2
    assert pipe.diagnostics().values["nearest_view_m"] == "3.00"
    assert send(pipe, rec, frame(9))
    assert pipe.diagnostics().values["nearest_view_m"] == "4.00"


def test_load_localizer_loads_the_mapped_views_in_regress_mode(tmp_path):
    ckpt = write_random_checkpoint(tmp_path / "model.pt", seed=0)
    rmap = small_refinement_map()
    save_refinement_map(tmp_path / "map.npz", rmap)
    localizer, _, where = load_localizer({**DEFAULTS, "model_path": str(ckpt), "device": "cpu",
                                          "refinement_map": str(tmp_path / "map.npz")})
    assert where == "" and localizer.refiner is None  # regress mode: no refiner
    assert localizer.views is not None and np.allclose(localizer.views.positions_N3,
                                                       rmap.centres)


def test_with_floors_each_estimate_names_its_floor_and_set_floor_switches_the_network(make):
    from camera_pose_ros.io.floors import FloorSpec
    from camera_pose_ros.runtime.floors import FloorSet

    low, high = StubLocalizer(), StubLocalizer(sigma=0.5)
    floors = FloorSet([(FloorSpec("0", 0.0, "map_0"), low), (FloorSpec("1", 3.2, "map_1"), high)],
                      current="0")
    pipe, rec = make(floors=floors)
    seen: list[str] = []
    rec.publish_pose = (lambda stamp, est, **kw: seen.append((est.floor, est.covariance[0, 0])))
    pipe.submit(frame(3))
    assert wait_for(lambda: len(seen) == 1 and pipe.idle(), 10)
    pipe.set_floor("1", "from the lift")
    assert pipe.localizer is high and rec.floors == ["1"]
    assert rec.logged("info", "floor from the lift: 1") == 1
    pipe.submit(frame(4))
    assert wait_for(lambda: len(seen) == 2, 10)
    assert seen == [("0", pytest.approx(0.01)), ("1", pytest.approx(0.25))]
    pipe.set_floor("1")  # no change: nothing said
    assert rec.floors == ["1"] and pipe.diagnostics().values["floor"] == "1"
    # nothing could recognise the floor in regress mode; an unknown floor is refused
    with pytest.raises(ConfigError, match="needs mode refine"):
        pipe.set_floor(None)
    with pytest.raises(ConfigError, match="unknown floor 'attic'"):
        pipe.set_floor("attic")
    assert floors.current == "1" and pipe.localizer is high
