"""relocalization_node against hostile input and a real lifecycle, over real DDS.

One malformed message on any topic must never stop the node: it is logged, counted in
/diagnostics and dropped, and poses keep coming for good images. Configure failures are
logged; lifecycle cycles leave no publishers behind.
"""

from __future__ import annotations

import struct
import threading
import time
import zlib

import numpy as np
import pytest

from camera_pose_ros.errors import ImageDecodeError
from test.conftest import wait_for
from test.ros.test_relocalization_node import Probe, checkpoint, frame, image_msg  # noqa: F401 -- fixture

rclpy = pytest.importorskip("rclpy")
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from nav_msgs.msg import OccupancyGrid, Odometry  # noqa: E402
from rcl_interfaces.msg import Log  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from camera_pose_ros.ros.conversions import image_to_rgb  # noqa: E402
from camera_pose_ros.ros.relocalization_node import RelocalizationNode  # noqa: E402

pytestmark = pytest.mark.ros
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _params(ckpt, **extra) -> list:
    values = {"model_path": str(ckpt), "device": "cpu", "max_image_age": 5.0,
              "mc_samples": 5, "path_period": 0.0, "diagnostics_period": 0.2,
              "qos_overrides./image.subscription.reliability": "reliable", **extra}
    return [Parameter(k, value=v) for k, v in values.items()]


class Rosout:
    """Collects the log lines of one node from /rosout."""

    def __init__(self, helper, name: str) -> None:
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self.name = name
        helper.create_subscription(Log, "/rosout", self._add, QoSProfile(  # as rcl's rosout
            depth=1000, reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL))

    def _add(self, msg: Log) -> None:
        if msg.name == self.name:
            with self.lock:
                self.lines.append(msg.msg)

    def has(self, *words: str) -> bool:
        with self.lock:
            return any(all(w in line for w in words) for line in self.lines)


@pytest.fixture
def running(ros_context, spinner, checkpoint):  # noqa: F811
    """A running node (extra parameters by indirect parametrization), a helper and a probe."""

    def start(**extra):
        node = spinner.add(RelocalizationNode(context=ros_context,
                                              parameter_overrides=_params(checkpoint, **extra)))
        helper = spinner.add(rclpy.create_node("hostile_probe", context=ros_context))
        probe = Probe(helper)
        pub = helper.create_publisher(Image, "/image", RELIABLE)
        assert wait_for(lambda: pub.get_subscription_count() > 0, 20), "node did not subscribe"
        return node, helper, probe, pub

    return start


def send_image(pub, helper, probe, i: int, timeout: float = 20.0) -> bool:
    n0 = probe.count("pose")
    pub.publish(image_msg(helper, frame(i)))
    return wait_for(lambda: probe.count("pose") > n0, timeout)


def diag_value(probe, key: str) -> int:
    with probe.lock:
        msgs = list(probe.msgs["diag"])
    for msg in reversed(msgs):
        values = {kv.key: kv.value for kv in msg.status[0].values}
        if key in values:
            return int(values[key])
    return -1


# -- Part A.1: odometry ---------------------------------------------------------------------------
def test_bad_odometry_is_dropped_and_the_node_keeps_going(running, spinner):
    node, helper, probe, pub = running(publish_map_to_odom=True)
    odom_pub = helper.create_publisher(Odometry, "/odom", RELIABLE)
    assert wait_for(lambda: odom_pub.get_subscription_count() > 0, 10)
    bad = []
    for q, p in (((0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),  # zero quaternion
                 ((float("nan"), 0.0, 0.0, 1.0), (0.0, 0.0, 0.0)),
                 ((0.0, 0.0, 0.0, 1.0), (float("nan"), 1.0, 0.0)),
                 ((0.0, 0.0, 0.0, 1.0), (float("inf"), 1.0, 0.0))):
        m = Odometry()
        m.header.stamp = helper.get_clock().now().to_msg()
        o, pos = m.pose.pose.orientation, m.pose.pose.position
        o.x, o.y, o.z, o.w = q
        pos.x, pos.y, pos.z = p
        bad.append(m)
    for m in bad:
        odom_pub.publish(m)
    assert wait_for(lambda: node.stats.counts["rejected_odometry"] >= len(bad), 10), dict(
        node.stats.counts)
    assert send_image(pub, helper, probe, 0), "the node stopped after bad odometry"
    assert spinner._thread.is_alive()
    assert wait_for(lambda: diag_value(probe, "rejected_odometry") >= len(bad), 5)
    # a good odometry message is still used: map -> odom goes out
    good = Odometry()
    good.pose.pose.orientation.w = 1.0
    img = image_msg(helper, frame(1))
    good.header.stamp = img.header.stamp
    odom_pub.publish(good)
    time.sleep(0.3)
    pub.publish(img)
    assert wait_for(lambda: any(t.transforms[0].child_frame_id == "odom"
                                for t in list(probe.msgs["tf"])), 20)


# -- Part A.2: occupancy grids --------------------------------------------------------------------
def _grid(width: int = 20, height: int = 10, resolution: float = 0.5,
          origin: tuple[float, float] = (0.0, 0.0), data: list[int] | None = None
          ) -> OccupancyGrid:
    grid = OccupancyGrid()
    grid.header.frame_id = "map"
    grid.info.width, grid.info.height, grid.info.resolution = width, height, resolution
    grid.info.origin.position.x, grid.info.origin.position.y = origin
    grid.data = [0] * (width * height) if data is None else data
    return grid


def test_malformed_maps_are_rejected_and_the_previous_one_kept(running, spinner):
    node, helper, probe, pub = running()
    map_pub = helper.create_publisher(OccupancyGrid, "/map", LATCHED)
    map_pub.publish(_grid())
    assert wait_for(lambda: node.localizer.snapper is not None, 10), "good map not received"
    good = node.localizer.snapper.plan
    bad = [_grid(data=[0] * 7), _grid(resolution=0.0), _grid(resolution=float("nan")),
           _grid(width=0, data=[]), _grid(origin=(float("nan"), 1.0)),
           _grid(width=100000, height=100000, data=[0] * 10)]
    for i, g in enumerate(bad):
        map_pub.publish(g)
        assert wait_for(lambda i=i: node.stats.counts["rejected_map"] > i, 10), (
            i, dict(node.stats.counts))
    assert node.localizer.snapper.plan is good
    assert send_image(pub, helper, probe, 0), "the node stopped after a bad map"
    assert spinner._thread.is_alive()
    assert wait_for(lambda: diag_value(probe, "rejected_map") >= len(bad), 5)


def test_a_bad_latched_map_does_not_kill_a_starting_node(ros_context, spinner, checkpoint):  # noqa: F811
    helper = spinner.add(rclpy.create_node("map_first", context=ros_context))
    map_pub = helper.create_publisher(OccupancyGrid, "/map", LATCHED)
    map_pub.publish(_grid(data=[0] * 3))  # latched before the node exists
    node = spinner.add(RelocalizationNode(context=ros_context,
                                          parameter_overrides=_params(checkpoint)))
    probe = Probe(helper)
    pub = helper.create_publisher(Image, "/image", RELIABLE)
    assert wait_for(lambda: pub.get_subscription_count() > 0, 20)
    assert wait_for(lambda: node.stats.counts["rejected_map"] >= 1, 10)
    assert send_image(pub, helper, probe, 1)
    assert node.localizer.snapper is None


# -- Part A.3: configure failures -----------------------------------------------------------------
@pytest.mark.parametrize("what", ["text_model", "short_extrinsic", "nan_extrinsic",
                                  "unexpected", "missing_floors", "floor_without_model",
                                  "floor_recognition_without_refine"])
def test_configure_failures_are_logged(ros_context, spinner, checkpoint, tmp_path,  # noqa: F811
                                       monkeypatch, what):
    if what == "unexpected":  # an exception type configure does not expect
        import camera_pose_ros.runtime.localizer as localizer_module

        def broken(*args, **kwargs):
            raise IndexError("list index out of range")

        monkeypatch.setattr(localizer_module, "Localizer", broken)
    helper = spinner.add(rclpy.create_node("log_probe", context=ros_context))
    name = f"reloc_{what}"  # one name per test: rcl keeps one /rosout publisher per name
    log = Rosout(helper, name)
    text = tmp_path / "model.pt"
    text.write_text("not a checkpoint\n" * 10)
    floors = tmp_path / "floors.yaml"
    floors.write_text(f"floors:\n  - id: '0'\n    model_path: {checkpoint}\n  - id: '1'\n")
    extra = {"text_model": {"model_path": str(text)},
             "missing_floors": {"floors_file": str(tmp_path / "none.yaml")},
             "floor_without_model": {"floors_file": str(floors), "floor": "0"},
             "floor_recognition_without_refine": {"floors_file": str(floors)},
             "short_extrinsic": {"base_to_camera": [0.0, 0.0, 1.0]},
             "nan_extrinsic": {"base_to_camera": [0.0, 0.0, float("nan"), 0.0, 0.0, 0.0, 1.0]},
             "unexpected": {}}[what]
    node = spinner.add(RelocalizationNode(name, context=ros_context, parameter_overrides=_params(
        checkpoint, autostart=False, **extra)))
    # configure through the lifecycle service once /rosout is matched, so no line is missed
    rosout = next(s for s in helper.subscriptions if s.topic_name == "/rosout")
    assert wait_for(lambda: rosout.get_publisher_count() >= 2, 10)
    change = helper.create_client(ChangeState, f"/{name}/change_state")
    assert change.wait_for_service(timeout_sec=10)
    future = change.call_async(ChangeState.Request(
        transition=Transition(id=Transition.TRANSITION_CONFIGURE)))
    assert wait_for(future.done, 30) and not future.result().success
    words = {"text_model": ("configure failed", str(text)),
             "short_extrinsic": ("configure failed", "base_to_camera"),
             "nan_extrinsic": ("configure failed", "base_to_camera"),
             "unexpected": ("configure failed", "IndexError", "list index out of range"),
             "missing_floors": ("configure failed", "cannot read floors file"),
             "floor_without_model": ("configure failed", "floor 1", "has no model_path"),
             "floor_recognition_without_refine": ("configure failed",
                                                  "floor recognition needs mode refine")}[what]
    assert wait_for(lambda: log.has(*words), 10), log.lines
    assert node._state_machine.current_state[1] == "unconfigured"
    assert node.localizer is None
    assert not any("Traceback" in line for line in log.lines)


# -- Part A.4: camera_info and image stamps -------------------------------------------------------
def test_non_finite_camera_info_is_rejected(running):
    node, helper, probe, pub = running()
    info_pub = helper.create_publisher(CameraInfo, "/camera_info", RELIABLE)
    assert wait_for(lambda: info_pub.get_subscription_count() > 0, 10)
    good = CameraInfo(width=320, height=240, distortion_model="plumb_bob",
                      d=[-0.2, 0.05, 0.001, -0.001, 0.0])
    good.k = [260.0, 0.0, 161.0, 0.0, 258.0, 121.0, 0.0, 0.0, 1.0]
    info_pub.publish(good)
    assert wait_for(lambda: node.pipeline.camera is not None, 10)
    kept = node.pipeline.camera
    for field, value in (("k", [float("nan")] + list(good.k[1:])),
                         ("k", list(good.k[:2]) + [float("inf")] + list(good.k[3:])),
                         ("d", [float("nan"), 0.0, 0.0, 0.0, 0.0]),
                         ("d", [0.0, float("-inf"), 0.0, 0.0, 0.0])):
        bad = CameraInfo(width=320, height=240, distortion_model="plumb_bob", k=good.k,
                         d=good.d)
        setattr(bad, field, value)
        info_pub.publish(bad)
    assert wait_for(lambda: node.stats.counts["rejected_camera_info"] >= 4, 10), dict(
        node.stats.counts)
    assert node.pipeline.camera == kept
    assert wait_for(lambda: diag_value(probe, "rejected_camera_info") >= 4, 5)


def test_image_stamps_from_the_future_are_dropped(running):
    node, helper, probe, pub = running()
    future = image_msg(helper, frame(0))
    future.header.stamp.sec += 60
    n0 = probe.count("pose")
    pub.publish(future)
    assert wait_for(lambda: node.stats.counts["dropped_future"] >= 1, 10), dict(
        node.stats.counts)
    assert probe.count("pose") == n0
    assert send_image(pub, helper, probe, 1)
    assert wait_for(lambda: diag_value(probe, "dropped_future") >= 1, 5)


# -- Part A.5: lifecycle --------------------------------------------------------------------------
def test_lifecycle_cycles_leave_one_publisher_and_poses_still_arrive(ros_context, spinner,
                                                                     checkpoint):  # noqa: F811
    spinner.add(RelocalizationNode(
        context=ros_context, parameter_overrides=_params(checkpoint, autostart=False)))
    helper = spinner.add(rclpy.create_node("lifecycle_probe", context=ros_context))
    probe = Probe(helper)
    change = helper.create_client(ChangeState, "/relocalization/change_state")
    get = helper.create_client(GetState, "/relocalization/get_state")
    assert change.wait_for_service(timeout_sec=10) and get.wait_for_service(timeout_sec=10)

    def transition(tid: int) -> bool:
        future = change.call_async(ChangeState.Request(transition=Transition(id=tid)))
        assert wait_for(future.done, 30), f"transition {tid} did not answer"
        return future.result().success

    assert transition(Transition.TRANSITION_CONFIGURE)
    assert transition(Transition.TRANSITION_ACTIVATE)
    for _ in range(15):
        assert transition(Transition.TRANSITION_DEACTIVATE)
        assert transition(Transition.TRANSITION_CLEANUP)
        assert transition(Transition.TRANSITION_CONFIGURE)
        assert transition(Transition.TRANSITION_ACTIVATE)
    future = get.call_async(GetState.Request())
    assert wait_for(future.done, 10) and future.result().current_state.label == "active"
    assert wait_for(lambda: helper.count_publishers("/relocalization/pose") == 1, 10), (
        helper.count_publishers("/relocalization/pose"))
    for topic in ("/relocalization/pose_with_covariance", "/relocalization/path",
                  "/initialpose"):
        assert wait_for(lambda t=topic: helper.count_publishers(t) == 1, 10), topic
    pub = helper.create_publisher(Image, "/image", RELIABLE)
    assert wait_for(lambda: pub.get_subscription_count() == 1, 20)
    assert send_image(pub, helper, probe, 0), "no pose after the last activate"
    # deactivated: the node takes no images and publishes nothing
    assert transition(Transition.TRANSITION_DEACTIVATE)
    assert wait_for(lambda: pub.get_subscription_count() == 0, 10)
    assert transition(Transition.TRANSITION_CLEANUP)
    assert wait_for(lambda: helper.count_publishers("/relocalization/pose") == 0, 10)


@pytest.mark.parametrize("state", ["unconfigured", "inactive", "active"])
def test_shutdown_from_each_state_releases_everything(ros_context, spinner, checkpoint,  # noqa: F811
                                                      state):
    """Shutdown through the lifecycle service leaves only what every node has."""
    name = f"reloc_shutdown_{state}"
    node = spinner.add(RelocalizationNode(name, context=ros_context, parameter_overrides=_params(
        checkpoint, autostart=False)))
    helper = spinner.add(rclpy.create_node(f"{name}_probe", context=ros_context))
    probe = Probe(helper, f"/{name}")
    change = helper.create_client(ChangeState, f"/{name}/change_state")
    get = helper.create_client(GetState, f"/{name}/get_state")
    assert change.wait_for_service(timeout_sec=10) and get.wait_for_service(timeout_sec=10)

    def transition(tid: int) -> bool:
        future = change.call_async(ChangeState.Request(transition=Transition(id=tid)))
        assert wait_for(future.done, 30), f"transition {tid} did not answer"
        return future.result().success

    def graph(query) -> set[str]:
        return {topic for topic, _ in query(name, "/")}

    if state != "unconfigured":
        assert transition(Transition.TRANSITION_CONFIGURE)
        assert wait_for(lambda: f"/{name}/relocalize" in graph(
            helper.get_service_names_and_types_by_node), 10)
    if state == "active":
        assert transition(Transition.TRANSITION_ACTIVATE)
        pub = helper.create_publisher(Image, "/image", RELIABLE)
        assert wait_for(lambda: pub.get_subscription_count() == 1, 20)
        assert send_image(pub, helper, probe, 0), "no pose before the shutdown"
    shutdown = {"unconfigured": Transition.TRANSITION_UNCONFIGURED_SHUTDOWN,
                "inactive": Transition.TRANSITION_INACTIVE_SHUTDOWN,
                "active": Transition.TRANSITION_ACTIVE_SHUTDOWN}[state]
    assert transition(shutdown)
    future = get.call_async(GetState.Request())
    assert wait_for(future.done, 10) and future.result().current_state.label == "finalized"
    # what every (lifecycle) node has, and nothing of configure's or activate's
    base = {"/rosout", "/parameter_events", f"/{name}/transition_event"}
    assert wait_for(lambda: graph(helper.get_publisher_names_and_types_by_node) <= base, 10), (
        graph(helper.get_publisher_names_and_types_by_node))
    assert wait_for(lambda: not graph(helper.get_subscriber_names_and_types_by_node) - {
        "/parameter_events"}, 10), graph(helper.get_subscriber_names_and_types_by_node)
    assert f"/{name}/relocalize" not in graph(helper.get_service_names_and_types_by_node)
    assert node.pipeline is None and node.localizer is None
    workers = [t.name for t in threading.enumerate() if t.name.startswith("relocalization-")]
    assert workers == []


# -- Part A.6: /initialpose frame -----------------------------------------------------------------
def test_initialpose_is_in_the_map_frame_parameter(running):
    node, helper, probe, pub = running(map_frame="world", verify_max_position_sigma=1000.0,
                                       verify_max_rotation_sigma_deg=180.0)
    client = helper.create_client(Trigger, "/relocalization/relocalize")
    assert client.wait_for_service(timeout_sec=10)
    future = client.call_async(Trigger.Request())
    i = 0
    while probe.count("initial") == 0 and i < 20:
        send_image(pub, helper, probe, i, timeout=2.0)
        i += 1
    assert wait_for(lambda: probe.count("initial") == 1, 10)
    assert probe.msgs["initial"][0].header.frame_id == "world"
    assert probe.msgs["pose"][-1].header.frame_id == "world"
    assert wait_for(future.done, 10) and future.result().success


# -- Part B: decoded size cap ---------------------------------------------------------------------
def _png_header_only(width: int, height: int) -> bytes:
    """A 1-bit grey PNG of ``width`` x ``height`` (all black; small compressed)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    row = b"\x00" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(1)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0,
                                                              0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def _jpeg_header(width: int, height: int) -> bytes:
    """A JPEG stream start whose frame header claims ``width`` x ``height``."""
    sof = struct.pack(">BBHBHHB", 0xFF, 0xC0, 11, 8, height, width, 1) + b"\x01\x11\x00"
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    return b"\xff\xd8" + app0 + sof + b"\xff\xda" + b"\x00" * 64 + b"\xff\xd9"


def test_compressed_images_larger_than_the_pixel_cap_are_refused_before_decoding():
    huge = CompressedImage(format="png", data=_png_header_only(20000, 20000))
    with pytest.raises(ImageDecodeError, match="20000x20000"):
        image_to_rgb(huge, max_pixels=4096 * 4096)
    jpeg = CompressedImage(format="jpeg", data=_jpeg_header(30000, 20000))
    with pytest.raises(ImageDecodeError, match="30000x20000"):
        image_to_rgb(jpeg, max_pixels=4096 * 4096)
    raw = Image(width=5000, height=5000, encoding="mono8", step=5000, data=b"\x00" * 10)
    with pytest.raises(ImageDecodeError, match="5000x5000"):
        image_to_rgb(raw, max_pixels=4096 * 4096)
    small = CompressedImage(format="png", data=_png_header_only(64, 48))
    assert image_to_rgb(small, max_pixels=64 * 48).shape == (48, 64, 3)
    with pytest.raises(ImageDecodeError, match="64x48"):
        image_to_rgb(small, max_pixels=64 * 48 - 1)


# -- Part B: fuzzing a running node ------------------------------------------------------------
ENCODINGS = ["rgb8", "bgr8", "mono8", "rgba8", "bgra8", "RGB8", "16UC1", "32FC1", "yuv422",
             "bayer_rggb8", "", "rgb8" * 40, "\u00e9\u00e8"]
SIZES = [0, 1, 7, 120, 160, 4096, 65535, 2**31 - 1, 2**32 - 1]
FLOATS = [float("nan"), float("inf"), float("-inf"), 0.0, -1.0, 1e308, -1e-308, 0.5, 260.0]


def _pick(rng, values):
    return values[int(rng.integers(len(values)))]


def _float(rng) -> float:
    return float(_pick(rng, FLOATS)) if rng.random() < 0.6 else float(rng.normal(0, 100))


def _stamp(rng, helper):
    stamp = helper.get_clock().now().to_msg()
    if rng.random() < 0.3:
        stamp.sec = int(rng.integers(-2**31, 2**31))
        stamp.nanosec = int(rng.integers(0, 2**32))
    return stamp


def _hostile_image(rng, helper) -> Image:
    msg = image_msg(helper, frame(int(rng.integers(100))))
    roll = rng.random()
    if roll < 0.25:  # a good frame with its data cut or padded
        data = bytes(msg.data)
        msg.data = data[:int(rng.integers(len(data)))] if rng.random() < 0.5 else (
            data + rng.bytes(int(rng.integers(1, 5000))))
    elif roll < 0.5:  # a good frame with a wrong step or encoding
        msg.step = int(rng.integers(0, 2**32))
        msg.encoding = _pick(rng, ENCODINGS)
    else:  # everything random
        msg.width, msg.height = _pick(rng, SIZES), _pick(rng, SIZES)
        msg.step = int(rng.integers(0, 2**32))
        msg.encoding = _pick(rng, ENCODINGS)
        msg.is_bigendian = int(rng.integers(2))
        msg.data = rng.bytes(int(_pick(rng, [0, 1, 99, 57600, 200000])))
    msg.header.stamp = _stamp(rng, helper)
    return msg


def _hostile_compressed(rng, helper, good: list[bytes], huge: list[bytes]) -> CompressedImage:
    data = _pick(rng, good)
    roll = rng.random()
    if roll < 0.2:
        data = data[:int(rng.integers(len(data)))]
    elif roll < 0.4:
        buf = bytearray(data)
        for i in rng.integers(0, len(buf), int(rng.integers(1, 50))):
            buf[int(i)] = int(rng.integers(256))
        data = bytes(buf)
    elif roll < 0.6:
        data = _pick(rng, huge)
    elif roll < 0.8:
        data = data[:2] + rng.bytes(int(rng.integers(0, 3000)))
    else:
        data = rng.bytes(int(rng.integers(0, 3000)))
    msg = CompressedImage(format=_pick(rng, ["jpeg", "png", "", "bmp", "rgb8; jpeg compressed "
                                             "bgr8", "\u00e9" * 9]), data=data)
    msg.header.stamp = _stamp(rng, helper)
    return msg


def _hostile_camera_info(rng, helper) -> CameraInfo:
    msg = CameraInfo(width=_pick(rng, SIZES), height=_pick(rng, SIZES),
                     distortion_model=_pick(rng, ["plumb_bob", "rational_polynomial",
                                                  "equidistant", "", "x" * 300]))
    msg.k = [_float(rng) for _ in range(9)]
    msg.d = [_float(rng) for _ in range(int(rng.integers(0, 15)))]
    msg.p = [_float(rng) for _ in range(12)]
    msg.header.stamp = _stamp(rng, helper)
    return msg


def _hostile_odometry(rng, helper) -> Odometry:
    msg = Odometry()
    msg.header.stamp = _stamp(rng, helper)
    p, o = msg.pose.pose.position, msg.pose.pose.orientation
    p.x, p.y, p.z = _float(rng), _float(rng), _float(rng)
    o.x, o.y, o.z, o.w = _float(rng), _float(rng), _float(rng), _float(rng)
    msg.pose.covariance = [_float(rng) for _ in range(36)]
    return msg


def _hostile_grid(rng) -> OccupancyGrid:
    width, height = (int(_pick(rng, [0, 1, 10, 200, 100000, 2**32 - 1])) for _ in range(2))
    cells = width * height if width * height <= 40000 else int(rng.integers(0, 1000))
    if rng.random() < 0.5:
        cells = int(rng.integers(0, 2000))
    grid = _grid(width, height, _float(rng), (_float(rng), _float(rng)),
                 rng.integers(-128, 128, cells).tolist())
    return grid


def test_fuzzed_inputs_never_stop_the_node(ros_context, spinner, checkpoint):  # noqa: F811
    """~12 s of random malformed messages on every input topic, good frames in between."""
    import cv2

    raw = spinner.add(RelocalizationNode(context=ros_context, parameter_overrides=_params(
        checkpoint, publish_map_to_odom=True, max_image_pixels=1_000_000)))
    comp = spinner.add(RelocalizationNode("relocalization_c", context=ros_context,
                                          parameter_overrides=_params(
        checkpoint, image_transport="compressed", max_image_pixels=1_000_000, **{
            "qos_overrides./image/compressed.subscription.reliability": "reliable"})))
    helper = spinner.add(rclpy.create_node("fuzzer", context=ros_context))
    probes = {"raw": Probe(helper), "comp": Probe(helper, "/relocalization_c")}
    pubs = {"image": helper.create_publisher(Image, "/image", RELIABLE),
            "compressed": helper.create_publisher(CompressedImage, "/image/compressed",
                                                  RELIABLE),
            "camera_info": helper.create_publisher(CameraInfo, "/camera_info", RELIABLE),
            "odom": helper.create_publisher(Odometry, "/odom", RELIABLE),
            "map": helper.create_publisher(OccupancyGrid, "/map", LATCHED)}
    assert wait_for(lambda: all(p.get_subscription_count() >= (1 if k in ("image",
                                                                          "compressed") else 2)
                                for k, p in pubs.items()), 20), "nodes did not subscribe"
    # the lifecycle services' clients are discovered before the burst: what is tested after
    # it is that the services still answer, not how fast a new client is discovered
    state_clients = {name: helper.create_client(GetState, f"/{name}/get_state")
                     for name in ("relocalization", "relocalization_c")}
    assert all(c.wait_for_service(timeout_sec=20) for c in state_clients.values())
    good = [cv2.imencode(ext, frame(i))[1].tobytes() for i, ext in ((0, ".jpg"), (1, ".png"))]
    huge = [_png_header_only(20000, 20000), _jpeg_header(30000, 20000)]

    def good_frames(i: int) -> None:
        pubs["image"].publish(image_msg(helper, frame(i)))
        msg = CompressedImage(format="jpeg", data=cv2.imencode(".jpg", frame(i))[1].tobytes())
        msg.header.stamp = helper.get_clock().now().to_msg()
        pubs["compressed"].publish(msg)

    rng = np.random.default_rng(20240607)
    makers = {"image": lambda: _hostile_image(rng, helper),
              "compressed": lambda: _hostile_compressed(rng, helper, good, huge),
              "camera_info": lambda: _hostile_camera_info(rng, helper),
              "odom": lambda: _hostile_odometry(rng, helper),
              "map": lambda: _hostile_grid(rng)}
    kinds = list(makers)
    sent = 0
    deadline = time.monotonic() + 12.0
    while time.monotonic() < deadline:
        kind = kinds[int(rng.integers(len(kinds)))]
        pubs[kind].publish(makers[kind]())
        sent += 1
        if sent % 10 == 0:
            good_frames(sent)
        time.sleep(0.005)
    # the executor, the workers and the services are alive, and good frames give poses
    assert spinner._thread.is_alive(), "the executor thread died"
    for node in (raw, comp):
        assert node.pipeline is not None and node.pipeline.workers_alive(), node.get_name()
        assert node._state_machine.current_state[1] == "active"
    for client in state_clients.values():
        future = client.call_async(GetState.Request())
        assert wait_for(future.done, 20) and future.result().current_state.label == "active"
    for i in range(3):
        n0 = {k: p.count("pose") for k, p in probes.items()}
        good_frames(1000 + i)
        assert wait_for(lambda n0=n0: all(p.count("pose") > n0[k] for k, p in probes.items()),
                        20), (f"no pose for a good frame after {sent} messages",
                              {k: p.count("pose") for k, p in probes.items()},
                              dict(raw.stats.counts), dict(comp.stats.counts))
    counts = {k: dict(n.stats.counts) for k, n in (("raw", raw), ("comp", comp))}
    for key in ("rejected_bad_input", "rejected_odometry", "rejected_map",
                "rejected_camera_info"):
        assert counts["raw"].get(key, 0) > 0 and counts["comp"].get(key, 0) > 0, (key, counts)
    assert counts["raw"].get("rejected_error", 0) == 0, counts
    assert counts["comp"].get("rejected_error", 0) == 0, counts
