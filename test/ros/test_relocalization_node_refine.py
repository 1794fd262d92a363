"""relocalization_node in refine mode over real DDS: refined poses with their covariance.

The network is random (its regressed poses are anywhere); the refined poses must still land
on the query walk's ground truth (refined from the regressed pose or, ``refine_prior: none``,
from retrieval alone), go out on ``~/pose_refined`` and the main pose topic with
the image's stamp, and answer relocalization requests on ``/initialpose``.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from camera_pose_ros.io.bags import iter_bag_images, read_camera_info
from camera_pose_ros.io.posecsv import read_poses
from camera_pose_ros.metrics import match_by_stamp
from test.conftest import wait_for

rclpy = pytest.importorskip("rclpy")
from geometry_msgs.msg import PoseWithCovarianceStamped  # noqa: E402
from nav_msgs.msg import Path  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from camera_pose_ros.ros.relocalization_node import RelocalizationNode  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


def _stamp(msg) -> tuple[int, int]:
    return msg.header.stamp.sec, msg.header.stamp.nanosec


@pytest.fixture
def refining_node(request, ros_context, spinner, sfm_building, map_checkpoint):
    """A refine-mode node (extra parameters by indirect parametrization) and a probe."""
    synth, _ = sfm_building
    ckpt, cfg = map_checkpoint
    extra = [Parameter(k, value=v) for k, v in getattr(request, "param", {}).items()]
    params = extra + [Parameter("model_path", value=str(ckpt)), Parameter("device", value="cpu"),
              Parameter("max_image_age", value=30.0), Parameter("mc_samples", value=4),
              Parameter("mode", value="refine"), Parameter("refine_every_n", value=1),
              Parameter("path_period", value=0.0),
              Parameter("refine_config", value=str(cfg)),
              Parameter("qos_overrides./image.subscription.reliability", value="reliable")]
    node = RelocalizationNode(context=ros_context, parameter_overrides=params)
    spinner.add(node)
    helper = spinner.add(rclpy.create_node("refine_probe", context=ros_context))
    got: dict[str, list] = {"refined": [], "cov": [], "initial": [], "path": []}
    lock = threading.Lock()
    helper.create_subscription(Path, "/relocalization/path",
                               lambda m: (lock.acquire(), got["path"].append(m),
                                          lock.release()), RELIABLE)
    for key, topic in (("refined", "/relocalization/pose_refined"),
                       ("cov", "/relocalization/pose_with_covariance"),
                       ("initial", "/initialpose")):
        helper.create_subscription(PoseWithCovarianceStamped, topic,
                                   lambda m, k=key: (lock.acquire(), got[k].append(m),
                                                     lock.release()), RELIABLE)
    pub = helper.create_publisher(Image, "/image", RELIABLE)
    info_pub = helper.create_publisher(CameraInfo, "/camera_info", RELIABLE)
    assert wait_for(lambda: pub.get_subscription_count() > 0, 30), "node did not subscribe"
    assert node.localizer.refiner is not None
    cam = read_camera_info(synth / "query", "/camera/camera_info")
    assert cam.distortion, "the session building has a lens with distortion"
    model, d = cam.camera_info_distortion()
    info = CameraInfo(width=cam.width, height=cam.height, distortion_model=model, d=d)
    info.k = [cam.fx, 0.0, cam.cx, 0.0, cam.fy, cam.cy, 0.0, 0.0, 1.0]
    gt = read_poses(synth / "gt_query.csv")
    frames = list(iter_bag_images(synth / "query"))
    ig, _ = match_by_stamp(gt.stamps, np.array([f.stamp for f in frames]), max_dt=1e-6)
    truth = [(f.image_rgb, gt.positions_N3[i]) for f, i in zip(frames, ig, strict=True)]
    return node, helper, pub, info_pub, info, got, lock, truth


def _image(helper, rgb: np.ndarray) -> Image:
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8",
                step=rgb.shape[1] * 3, data=rgb.tobytes())
    msg.header.stamp = helper.get_clock().now().to_msg()
    msg.header.frame_id = "camera_optical_frame"
    return msg


@pytest.mark.parametrize("refining_node", [{}, {"refine_prior": "none"}], indirect=True,
                         ids=["network-prior", "no-prior"])
def test_node_publishes_refined_poses_with_covariance(refining_node):
    node, helper, pub, info_pub, info, got, lock, truth = refining_node
    info_pub.publish(info)
    assert wait_for(lambda: node.pipeline.camera is not None, 10), "camera_info not received"
    sent: dict[tuple[int, int], np.ndarray] = {}
    for rgb, pos in truth:
        n0 = len(got["refined"]) + node.stats.counts["refine_failed"]
        msg = _image(helper, rgb)
        sent[_stamp(msg)] = pos
        pub.publish(msg)
        # one frame at a time, so that every frame is refined (the worker takes one)
        wait_for(lambda n0=n0: len(got["refined"]) + node.stats.counts["refine_failed"] > n0,
                 30)
    assert wait_for(lambda: len(got["refined"]) >= 0.75 * len(truth), 30), (
        len(got["refined"]), dict(node.stats.counts))
    with lock:
        refined = list(got["refined"])
        main = {_stamp(m): m for m in got["cov"]}
    errors = []
    for m in refined:
        assert m.header.frame_id == "map"
        p = m.pose.pose.position
        errors.append(np.linalg.norm(np.array([p.x, p.y, p.z]) - sent[_stamp(m)]))
        cov = np.array(m.pose.covariance).reshape(6, 6)
        assert np.allclose(cov, cov.T) and np.all(np.linalg.eigvalsh(cov) > 0)
        assert np.sqrt(cov[0, 0]) < 0.1  # centimetres, not the regressor's metres
        # the refined pose also went out on the main topic, with its image's stamp
        assert wait_for(lambda m=m: _stamp(m) in {_stamp(c) for c in got["cov"]}, 5)
    assert np.median(errors) < 0.05, errors
    with lock:
        main = [c for c in got["cov"] if _stamp(c) in {_stamp(m) for m in refined}]
    assert any(np.allclose(np.array(c.pose.covariance), np.array(m.pose.covariance))
               for c in main for m in refined)
    assert node.stats.counts["refined"] == len(refined)
    # the trajectory holds one pose per image, in stamp order, the refined one where it exists
    # (the path carrying the last refined pose may arrive after ~/pose_refined: wait for it)
    def path_agrees() -> bool:
        with lock:
            path = got["path"][-1] if got["path"] else None
        if path is None or len(path.poses) != len(sent):
            return False
        stamps = [_stamp(p) for p in path.poses]
        assert stamps == sorted(sent)
        for m in refined:
            p = path.poses[stamps.index(_stamp(m))].pose.position
            q = m.pose.pose.position
            if (p.x, p.y, p.z) != (q.x, q.y, q.z):
                return False
        return True

    assert wait_for(path_agrees, 10), "the path does not hold the refined poses"


def _request_while_feeding(helper, pub, rgb, limit: float = 40.0) -> tuple[object, dict]:
    """Call ~/relocalize and publish ``rgb`` every 0.3 s until it answers; (response, stamps)."""
    client = helper.create_client(Trigger, "/relocalization/relocalize")
    assert client.wait_for_service(timeout_sec=10)
    future = client.call_async(Trigger.Request())  # answers with the outcome
    sent = {}
    t = 0.0
    while not future.done() and t < limit:
        msg = _image(helper, rgb)
        sent[_stamp(msg)] = msg
        pub.publish(msg)
        wait_for(future.done, 0.3)
        t += 0.3
    assert future.done(), "~/relocalize did not answer"
    return future.result(), sent


@pytest.mark.parametrize("refining_node", [{"refine_on_request_only": True,
                                            "relocalize_timeout": 30.0}], indirect=True)
def test_relocalization_request_answers_with_the_refined_pose(refining_node):
    node, helper, pub, info_pub, info, got, lock, truth = refining_node
    rgb, pos = truth[2]
    msg = _image(helper, rgb)
    pub.publish(msg)
    assert wait_for(lambda: node.stats.counts["published"] >= 1, 20)
    assert node.stats.counts["refined"] == 0  # not asked: regression only
    response, sent = _request_while_feeding(helper, pub, rgb)
    assert response.success and "refined pose" in response.message, response.message
    assert wait_for(lambda: len(got["initial"]) >= 1, 10), dict(node.stats.counts)
    init = got["initial"][-1]
    assert _stamp(init) in sent
    p = init.pose.pose.position
    assert np.linalg.norm(np.array([p.x, p.y, p.z]) - pos) < 0.1
    refined = node.stats.counts["refined"]
    assert refined >= 1
    pub.publish(_image(helper, rgb))  # the request is over: regression only again
    assert wait_for(lambda: node.stats.counts["published"] >= len(sent) + 2, 20)
    assert len(got["initial"]) == 1 and node.stats.counts["refined"] == refined


@pytest.mark.parametrize("refining_node", [{"refine_on_request_only": True,
                                            "relocalize_timeout": 3.0}], indirect=True)
def test_relocalization_request_on_unmatched_frames_sends_nothing(refining_node):
    """Uniform grey frames cannot be refined: no /initialpose, and the reason is given."""
    node, helper, pub, info_pub, info, got, lock, truth = refining_node
    grey = np.full_like(truth[0][0], 128)
    response, sent = _request_while_feeding(helper, pub, grey)
    assert not response.success
    assert response.message.startswith("relocalization failed after 3.0 s: "), response.message
    assert "none verified (last: refinement: " in response.message
    assert node.stats.counts["refine_failed"] >= 1 and node.stats.counts["refined"] == 0
    assert got["initial"] == []
    assert node.stats.counts["relocalization_failed"] == 1
