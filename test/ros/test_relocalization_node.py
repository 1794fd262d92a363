"""relocalization_node over real DDS: outputs, stamps, relocalization requests, bad input."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from camera_pose_ros.learning.checkpoint import build_regressor, save_checkpoint
from test.conftest import wait_for

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped  # noqa: E402
from nav_msgs.msg import Path  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from camera_pose_ros.ros.relocalization_node import RelocalizationNode  # noqa: E402

pytestmark = pytest.mark.ros
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
MODEL = {"kind": "posenet", "backbone": "mobilenet_v3_small", "hidden": 32, "dropout": 0.2,
         "pool_grid": [1, 1], "pos_mean": [5.0, 3.0, 1.5], "pos_scale": 2.0}
INPUT = {"height": 48, "width": 64, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small randomly initialised checkpoint in the real format."""
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    calib = {"method": "mc_dropout", "samples": 5, "k_pos": 1.0, "k_rot": 1.0,
             "floor_pos": 0.05, "floor_rot": 0.01}
    save_checkpoint(path, build_regressor(MODEL).eval(), model_cfg=MODEL, input_cfg=INPUT,
                    map_frame="map", extra={"calibration": calib})
    return path


class Probe:
    """Collects the node's outputs."""

    def __init__(self, node, ns: str = "/relocalization") -> None:
        self.msgs: dict[str, list] = {k: [] for k in ("pose", "cov", "path", "tf", "diag",
                                                      "initial")}
        self.lock = threading.Lock()
        for key, typ, topic in (("pose", PoseStamped, f"{ns}/pose"),
                                ("cov", PoseWithCovarianceStamped, f"{ns}/pose_with_covariance"),
                                ("path", Path, f"{ns}/path"), ("tf", TFMessage, "/tf"),
                                ("diag", DiagnosticArray, "/diagnostics"),
                                ("initial", PoseWithCovarianceStamped, "/initialpose")):
            node.create_subscription(typ, topic, lambda m, k=key: self._add(k, m), RELIABLE)

    def _add(self, key, msg) -> None:
        with self.lock:
            self.msgs[key].append(msg)

    def count(self, key: str) -> int:
        with self.lock:
            return len(self.msgs[key])


def image_msg(node, rgb: np.ndarray, encoding: str = "rgb8") -> Image:
    msg = Image()
    msg.header.stamp = node.get_clock().now().to_msg()
    msg.header.frame_id = "camera_optical_frame"
    from camera_pose_ros.io.images import encode_raw

    data, step = encode_raw(rgb, encoding)
    msg.height, msg.width, msg.encoding, msg.step = rgb.shape[0], rgb.shape[1], encoding, step
    msg.data = data
    return msg


def frame(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return cv2.resize(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), (160, 120),
                      interpolation=cv2.INTER_NEAREST)


@pytest.fixture
def node_setup(ros_context, spinner, checkpoint, tmp_path):
    params = [Parameter("model_path", value=str(checkpoint)), Parameter("device", value="cpu"),
              Parameter("max_image_age", value=5.0), Parameter("mc_samples", value=5),
              Parameter("path_period", value=0.0),
              Parameter("qos_overrides./image.subscription.reliability", value="reliable")]
    node = RelocalizationNode(context=ros_context, parameter_overrides=params)
    spinner.add(node)
    helper = spinner.add(rclpy.create_node("probe", context=ros_context))
    probe = Probe(helper)
    pub = helper.create_publisher(Image, "/image", RELIABLE)
    assert wait_for(lambda: pub.get_subscription_count() > 0, 20), "node did not subscribe"
    return node, helper, probe, pub


def send(pub, msg, probe, key="pose", before=None, timeout=20.0) -> bool:
    n0 = probe.count(key) if before is None else before
    pub.publish(msg)
    return wait_for(lambda: probe.count(key) > n0, timeout)


def test_outputs_carry_the_image_stamp(node_setup):
    node, helper, probe, pub = node_setup
    stamps = []
    for i in range(3):
        msg = image_msg(helper, frame(i))
        stamps.append((msg.header.stamp.sec, msg.header.stamp.nanosec))
        assert send(pub, msg, probe), f"no pose for frame {i}"
        time.sleep(0.05)
    assert wait_for(lambda: probe.count("tf") >= 3 and probe.count("path") >= 3, 10)
    pose = probe.msgs["pose"][-1]
    assert (pose.header.stamp.sec, pose.header.stamp.nanosec) == stamps[-1]
    assert pose.header.frame_id == "map"
    q = pose.pose.orientation
    assert abs(q.x**2 + q.y**2 + q.z**2 + q.w**2 - 1) < 1e-5
    cov = probe.msgs["cov"][-1]
    c = np.array(cov.pose.covariance).reshape(6, 6)
    assert np.all(np.diag(c) > 0) and np.allclose(c, c.T)
    assert (cov.header.stamp.sec, cov.header.stamp.nanosec) == stamps[-1]
    tf = probe.msgs["tf"][-1].transforms[0]
    assert (tf.header.frame_id, tf.child_frame_id) == ("map", "camera_estimate")
    assert (tf.header.stamp.sec, tf.header.stamp.nanosec) == stamps[-1]
    assert len(probe.msgs["path"][-1].poses) == 3
    assert wait_for(lambda: probe.count("diag") > 0, 5)
    values = {kv.key: kv.value for kv in probe.msgs["diag"][-1].status[0].values}
    assert int(values["published"]) >= 3 and values["device"] == "cpu"
    assert values["model"] == "posenet/mobilenet_v3_small"


def test_relocalize_service_and_tracking_lost_send_initialpose(ros_context, spinner,
                                                              checkpoint):
    # limits loose enough that the tiny network's estimates count as verified (a failed
    # request is tested in test_relocalization_node_verified.py)
    params = [Parameter("model_path", value=str(checkpoint)), Parameter("device", value="cpu"),
              Parameter("max_image_age", value=5.0), Parameter("mc_samples", value=5),
              Parameter("verify_max_position_sigma", value=1000.0),
              Parameter("verify_max_rotation_sigma_deg", value=180.0),
              Parameter("qos_overrides./image.subscription.reliability", value="reliable")]
    spinner.add(RelocalizationNode(context=ros_context, parameter_overrides=params))
    helper = spinner.add(rclpy.create_node("probe_r", context=ros_context))
    probe = Probe(helper)
    pub = helper.create_publisher(Image, "/image", RELIABLE)
    assert wait_for(lambda: pub.get_subscription_count() > 0, 20)
    assert send(pub, image_msg(helper, frame(0)), probe)
    assert probe.count("initial") == 0  # nothing asked yet
    client = helper.create_client(Trigger, "/relocalization/relocalize")
    assert client.wait_for_service(timeout_sec=10)
    future = client.call_async(Trigger.Request())  # answers once a frame is verified
    msg = image_msg(helper, frame(1))
    assert send(pub, msg, probe, key="initial")
    assert wait_for(future.done, 10) and future.result().success
    init = probe.msgs["initial"][-1]
    assert init.header.frame_id == "map"
    assert (init.header.stamp.sec, init.header.stamp.nanosec) == (msg.header.stamp.sec,
                                                                  msg.header.stamp.nanosec)
    assert send(pub, image_msg(helper, frame(2)), probe)
    assert probe.count("initial") == 1  # only the next estimate, once
    lost = helper.create_publisher(Bool, "/tracking_lost", RELIABLE)
    assert wait_for(lambda: lost.get_subscription_count() > 0, 10)
    lost.publish(Bool(data=True))
    time.sleep(0.3)
    assert send(pub, image_msg(helper, frame(3)), probe, key="initial")


def test_bad_input_never_stops_the_node(node_setup):
    node, helper, probe, pub = node_setup
    bad = []
    m = image_msg(helper, frame(0))
    m.encoding = "32FC1"
    bad.append(m)
    m = image_msg(helper, frame(1))
    m.step = m.step - 7  # size that does not match step
    bad.append(m)
    m = image_msg(helper, frame(2))
    m.data = bytes(m.data)[: len(m.data) // 3]  # truncated
    bad.append(m)
    m = image_msg(helper, frame(3))
    m.data = b""
    m.width = 0
    bad.append(m)
    for msg in bad:
        n0 = probe.count("pose")
        pub.publish(msg)
        time.sleep(0.4)
        assert probe.count("pose") == n0, "a bad frame produced a pose"
    assert send(pub, image_msg(helper, frame(4)), probe), "node stopped after bad input"
    assert wait_for(lambda: node.stats.counts["rejected_bad_input"] >= 4, 5)
    # a NaN prediction is rejected, not published
    real = node.localizer.predictor.predict
    node.localizer.predictor.predict = lambda imgs: (np.full((1, 7), np.nan), np.zeros((1, 6, 6)))
    n0 = probe.count("pose")
    pub.publish(image_msg(helper, frame(5)))
    assert wait_for(lambda: node.stats.counts["rejected_nan"] >= 1, 10)
    assert probe.count("pose") == n0
    node.localizer.predictor.predict = real
    assert send(pub, image_msg(helper, frame(6)), probe)


def test_stale_frames_are_dropped(node_setup):
    node, helper, probe, pub = node_setup
    old = image_msg(helper, frame(0))
    old.header.stamp.sec -= 60
    n0 = probe.count("pose")
    pub.publish(old)
    assert wait_for(lambda: node.stats.counts["dropped_stale"] >= 1, 10)
    assert probe.count("pose") == n0


def test_compressed_transport_and_corrupt_frames(ros_context, spinner, checkpoint):
    params = [Parameter("model_path", value=str(checkpoint)), Parameter("device", value="cpu"),
              Parameter("image_transport", value="compressed"),
              Parameter("mc_samples", value=5), Parameter("max_image_age", value=5.0),
              Parameter("qos_overrides./image/compressed.subscription.reliability",
                        value="reliable")]
    node = spinner.add(RelocalizationNode(context=ros_context, parameter_overrides=params))
    helper = spinner.add(rclpy.create_node("probe_c", context=ros_context))
    probe = Probe(helper)
    pub = helper.create_publisher(CompressedImage, "/image/compressed", RELIABLE)
    assert wait_for(lambda: pub.get_subscription_count() > 0, 20)
    ok, buf = cv2.imencode(".jpg", frame(1))
    msg = CompressedImage(format="jpeg", data=buf.tobytes())
    msg.header.stamp = helper.get_clock().now().to_msg()
    corrupt = CompressedImage(format="jpeg", data=buf.tobytes()[:100])
    corrupt.header.stamp = msg.header.stamp
    pub.publish(corrupt)
    assert wait_for(lambda: node.stats.counts["rejected_bad_input"] >= 1, 10)
    msg.header.stamp = helper.get_clock().now().to_msg()
    assert send(pub, msg, probe)


def test_missing_checkpoint_keeps_the_node_alive_unconfigured(ros_context, spinner, tmp_path):
    params = [Parameter("model_path", value=str(tmp_path / "none.pt"))]
    node = spinner.add(RelocalizationNode(context=ros_context, parameter_overrides=params))
    assert wait_for(lambda: node._state_machine.current_state[1] == "unconfigured", 5)
    time.sleep(0.5)
    assert node.localizer is None


def test_map_to_odom_from_odometry(ros_context, spinner, checkpoint):
    from nav_msgs.msg import Odometry

    from camera_pose_ros.geometry import invert_pose, pose_matrix, rotmat_from_quat_wxyz
    from camera_pose_ros.ros.conversions import pose_to_matrix

    params = [Parameter("model_path", value=str(checkpoint)), Parameter("device", value="cpu"),
              Parameter("mc_samples", value=5), Parameter("max_image_age", value=5.0),
              Parameter("publish_map_to_odom", value=True),
              Parameter("qos_overrides./image.subscription.reliability", value="reliable")]
    spinner.add(RelocalizationNode(context=ros_context, parameter_overrides=params))
    helper = spinner.add(rclpy.create_node("probe_o", context=ros_context))
    probe = Probe(helper)
    pub = helper.create_publisher(Image, "/image", RELIABLE)
    odom_pub = helper.create_publisher(Odometry, "/odom", RELIABLE)
    assert wait_for(lambda: pub.get_subscription_count() > 0
                    and odom_pub.get_subscription_count() > 0, 20)
    msg = image_msg(helper, frame(7))
    odom = Odometry()
    odom.header.stamp = msg.header.stamp
    odom.header.frame_id, odom.child_frame_id = "odom", "base_link"
    odom.pose.pose.position.x, odom.pose.pose.position.y = 2.0, -1.0
    odom.pose.pose.orientation.z, odom.pose.pose.orientation.w = np.sin(0.3), np.cos(0.3)
    odom_pub.publish(odom)
    time.sleep(0.3)
    assert send(pub, msg, probe)
    assert wait_for(lambda: any(t.transforms[0].child_frame_id == "odom"
                                for t in probe.msgs["tf"]), 10)
    tf = next(t.transforms[0] for t in probe.msgs["tf"] if t.transforms[0].child_frame_id
              == "odom")
    assert tf.header.frame_id == "map"
    assert not any(t.transforms[0].child_frame_id == "camera_estimate" for t in probe.msgs["tf"])
    # map_from_odom * odom_from_base * base_from_cam must give the published camera pose
    tr, r = tf.transform.translation, tf.transform.rotation
    map_from_odom = pose_matrix(rotmat_from_quat_wxyz([r.w, r.x, r.y, r.z]), [tr.x, tr.y, tr.z])
    base_from_cam = pose_matrix(rotmat_from_quat_wxyz([0.5, -0.5, 0.5, -0.5]), [0, 0, 0])
    map_from_cam = map_from_odom @ pose_to_matrix(odom.pose.pose) @ base_from_cam
    published = pose_to_matrix(probe.msgs["pose"][-1].pose)
    assert np.allclose(map_from_cam, published, atol=1e-5)
    assert np.allclose(invert_pose(invert_pose(published)), published)


def test_floor_plan_from_map_topic_snaps_estimates(ros_context, spinner, checkpoint):
    from nav_msgs.msg import OccupancyGrid
    from rclpy.qos import DurabilityPolicy

    params = [Parameter("model_path", value=str(checkpoint)), Parameter("device", value="cpu"),
              Parameter("mc_samples", value=5), Parameter("max_image_age", value=5.0),
              Parameter("qos_overrides./image.subscription.reliability", value="reliable")]
    node = spinner.add(RelocalizationNode(context=ros_context, parameter_overrides=params))
    helper = spinner.add(rclpy.create_node("probe_m", context=ros_context))
    probe = Probe(helper)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    map_pub = helper.create_publisher(OccupancyGrid, "/map", latched)
    grid = OccupancyGrid()
    grid.header.frame_id = "map"
    grid.info.resolution, grid.info.width, grid.info.height = 0.1, 100, 100  # 10 m x 10 m
    occ = np.full((100, 100), 100, np.int8)
    occ[80:90, 10:90] = 0  # the only walkable strip: y in [8, 9) m
    grid.data = occ.reshape(-1).tolist()
    map_pub.publish(grid)  # latched: the node gets it whenever it subscribes
    pub = helper.create_publisher(Image, "/image", RELIABLE)
    assert wait_for(lambda: pub.get_subscription_count() > 0, 20)
    assert wait_for(lambda: node.localizer is not None and node.localizer.snapper is not None,
                    10), "map not received"
    assert send(pub, image_msg(helper, frame(8)), probe)
    p = probe.msgs["pose"][-1].pose.position
    assert 8.0 <= p.y < 9.0 and 1.0 <= p.x < 9.0  # moved onto the walkable strip
    assert node.stats.counts["snapped"] >= 1


@pytest.mark.parametrize("remap,setting,rectified", [
    ("image:=/cam/image_raw", "auto", False), ("image:=/cam/image_rect", "auto", True),
    ("image:=/cam/image_raw", "true", True)])
def test_camera_info_gives_raw_or_rectified_intrinsics(ros_context, spinner, checkpoint,
                                                       remap, setting, rectified):
    """Raw images use K and D; image_rect (by name or parameter) uses P without distortion."""
    from sensor_msgs.msg import CameraInfo

    from camera_pose_ros.camera import PinholeCamera

    params = [Parameter("model_path", value=str(checkpoint)), Parameter("device", value="cpu"),
              Parameter("rectified_images", value=setting)]
    node = RelocalizationNode(context=ros_context, parameter_overrides=params,
                              cli_args=["--ros-args", "-r", remap])
    spinner.add(node)
    helper = spinner.add(rclpy.create_node("info_probe", context=ros_context))
    pub = helper.create_publisher(CameraInfo, "/camera_info", RELIABLE)
    assert wait_for(lambda: pub.get_subscription_count() > 0, 20)
    info = CameraInfo(width=320, height=240, distortion_model="equidistant")
    info.k = [260.0, 0.0, 161.0, 0.0, 258.0, 121.0, 0.0, 0.0, 1.0]
    info.d = [-0.2, 0.05, 0.001, -0.001]
    info.p = [240.0, 0.0, 158.0, 0.0, 0.0, 238.0, 118.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    pub.publish(info)  # a fisheye model on raw images: refused, the node keeps going
    if not rectified:
        assert wait_for(lambda: "equidistant" in node.pipeline.camera_error, 10)
        assert node.pipeline.camera is None
    info.distortion_model = "plumb_bob"
    info.d = [-0.2, 0.05, 0.001, -0.001, 0.0]
    pub.publish(info)
    expected = (PinholeCamera(320, 240, 240.0, 238.0, 158.0, 118.0) if rectified
                else PinholeCamera(320, 240, 260.0, 258.0, 161.0, 121.0, (-0.2, 0.05, 0.001,
                                                                          -0.001)))
    assert wait_for(lambda: node.pipeline.camera == expected, 10), node.pipeline.camera
