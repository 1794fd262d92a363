"""relocalization_node sends /initialpose only when an estimate is verified (over real DDS).

The node runs on a multi-threaded executor, as ``main()`` spins it: the ``~/relocalize``
service waits for the outcome and answers success or failure with the reason.
"""

from __future__ import annotations

import threading

import pytest

from test.conftest import wait_for
from test.ros.test_relocalization_node import Probe, checkpoint, frame, image_msg  # noqa: F401 -- fixture
from test.ros.test_relocalization_node_hostile import Rosout, diag_value

rclpy = pytest.importorskip("rclpy")
from geometry_msgs.msg import PoseWithCovarianceStamped  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from camera_pose_ros.ros.relocalization_node import RelocalizationNode  # noqa: E402

pytestmark = pytest.mark.ros
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def _params(ckpt, **extra) -> list:
    values = {"model_path": str(ckpt), "device": "cpu", "max_image_age": 5.0,
              "mc_samples": 5, "path_period": 0.0, "diagnostics_period": 0.2,
              "relocalize_timeout": 2.0,
              "qos_overrides./image.subscription.reliability": "reliable", **extra}
    return [Parameter(k, value=v) for k, v in values.items()]


def _start(spinner, ros_context, ckpt, name: str = "relocalization", **extra):
    node = spinner.add(RelocalizationNode(name, context=ros_context,
                                          parameter_overrides=_params(ckpt, **extra)))
    helper = spinner.add(rclpy.create_node(f"{name}_probe", context=ros_context))
    probe = Probe(helper, f"/{name}")
    verified: list = []
    helper.create_subscription(PoseWithCovarianceStamped, f"/{name}/pose_verified",
                               verified.append, RELIABLE)
    pub = helper.create_publisher(Image, "/image", RELIABLE)
    assert wait_for(lambda: pub.get_subscription_count() > 0, 20), "node did not subscribe"
    assert wait_for(lambda: node.pipeline is not None and node.pipeline.running, 20), (
        "node did not activate")
    client = helper.create_client(Trigger, f"/{name}/relocalize")
    assert client.wait_for_service(timeout_sec=10)
    return node, helper, probe, pub, client, verified


def _feed_until(pub, helper, done, limit: float = 15.0, period: float = 0.2) -> int:
    """Publish frames every ``period`` s until ``done()`` (or ``limit`` s); returns how many."""
    sent = 0
    stop = threading.Event()
    while not done() and sent * period < limit:
        pub.publish(image_msg(helper, frame(sent)))
        sent += 1
        stop.wait(period)
    return sent


def test_unverifiable_frames_send_nothing_to_initialpose(ros_context, spinner, checkpoint):  # noqa: F811
    # the tiny network's position sigma is at least its calibration floor (5 cm): never 1 cm
    node, helper, probe, pub, client, verified = _start(
        spinner, ros_context, checkpoint, verify_max_position_sigma=0.01)
    future = client.call_async(Trigger.Request())
    sent = _feed_until(pub, helper, future.done)
    assert future.done(), "the service did not answer after its timeout"
    response = future.result()
    assert not response.success
    assert response.message.startswith("relocalization failed after 2.0 s: "), response.message
    assert "none verified (last: position sigma" in response.message
    assert probe.count("pose") > 0 and sent > 0  # frames were localized ...
    assert probe.count("initial") == 0  # ... but none was verified
    assert verified == []
    assert wait_for(lambda: diag_value(probe, "relocalization_failed") == 1, 5)
    with probe.lock:
        status = probe.msgs["diag"][-1].status[0]
    values = {kv.key: kv.value for kv in status.values}
    assert values["last_relocalization"] == response.message
    assert status.message == response.message
    # tracking_lost starts a request too; with no waiting caller its outcome is counted
    lost = helper.create_publisher(Bool, "/tracking_lost", RELIABLE)
    assert wait_for(lambda: lost.get_subscription_count() > 0, 10)
    lost.publish(Bool(data=True))
    _feed_until(pub, helper, lambda: node.stats.counts["relocalization_failed"] >= 2, 10)
    assert node.stats.counts["relocalization_failed"] == 2
    assert probe.count("initial") == 0


def test_verified_frames_send_exactly_one_initialpose(ros_context, spinner, checkpoint):  # noqa: F811
    node, helper, probe, pub, client, verified = _start(
        spinner, ros_context, checkpoint, map_frame="world", verify_max_position_sigma=1000.0,
        verify_max_rotation_sigma_deg=180.0)
    assert probe.count("initial") == 0
    future = client.call_async(Trigger.Request())
    _feed_until(pub, helper, future.done)
    response = future.result()
    assert response.success and response.message.startswith("relocalized after"), (
        response.message)
    assert wait_for(lambda: probe.count("initial") == 1, 5)
    init = probe.msgs["initial"][0]
    assert init.header.frame_id == "world"
    # the /initialpose is one of the published poses, with its image's stamp
    stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in probe.msgs["cov"]}
    assert (init.header.stamp.sec, init.header.stamp.nanosec) in stamps
    n = probe.count("pose")
    _feed_until(pub, helper, lambda: probe.count("pose") >= n + 3, 10)
    assert probe.count("initial") == 1  # one request, one pose
    assert len(verified) >= 3  # every estimate passes these limits
    assert wait_for(lambda: diag_value(probe, "relocalized") == 1, 5)


def test_old_stamps_name_the_missing_clock(ros_context, spinner, checkpoint):  # noqa: F811
    node, helper, probe, pub, client, verified = _start(spinner, ros_context, checkpoint,
                                                        name="reloc_clock")
    log = Rosout(helper, "reloc_clock")
    rosout = next(s for s in helper.subscriptions if s.topic_name == "/rosout")
    assert wait_for(lambda: rosout.get_publisher_count() >= 2, 10)
    old = image_msg(helper, frame(0))
    old.header.stamp.sec -= 3600
    pub.publish(old)
    assert wait_for(lambda: log.has("image stamps are 3600 s older than this node's clock",
                                    "--clock", "use_sim_time:=true", "max_image_age"), 10), (
        log.lines)
    assert node.stats.counts["dropped_stale"] == 1


def test_single_threaded_executor_answers_at_once(ros_context, checkpoint):  # noqa: F811
    """A node spun by one thread cannot wait in the service: it answers 'started'."""
    executor = SingleThreadedExecutor(context=ros_context)
    node = RelocalizationNode("reloc_single", context=ros_context, parameter_overrides=_params(
        checkpoint, verify_max_position_sigma=1000.0, verify_max_rotation_sigma_deg=180.0))
    executor.add_node(node)
    stop = threading.Event()
    thread = threading.Thread(target=lambda: [executor.spin_once(timeout_sec=0.05)
                                              for _ in iter(stop.is_set, True)], daemon=True)
    thread.start()
    helper = rclpy.create_node("single_probe", context=ros_context)
    helper_exec = SingleThreadedExecutor(context=ros_context)
    helper_exec.add_node(helper)
    helper_thread = threading.Thread(target=lambda: [helper_exec.spin_once(timeout_sec=0.05)
                                                     for _ in iter(stop.is_set, True)],
                                     daemon=True)
    helper_thread.start()
    try:
        probe = Probe(helper, "/reloc_single")
        pub = helper.create_publisher(Image, "/image", RELIABLE)
        assert wait_for(lambda: pub.get_subscription_count() > 0, 20)
        client = helper.create_client(Trigger, "/reloc_single/relocalize")
        assert client.wait_for_service(timeout_sec=10)
        future = client.call_async(Trigger.Request())
        assert wait_for(future.done, 5), "the service blocked the only executor thread"
        assert future.result().success and "started" in future.result().message
        _feed_until(pub, helper, lambda: probe.count("initial") > 0)
        assert probe.count("initial") == 1
    finally:
        stop.set()
        thread.join(5)
        helper_thread.join(5)
        for ex, n in ((executor, node), (helper_exec, helper)):
            ex.remove_node(n)
            n.destroy_node()
            ex.shutdown(timeout_sec=1)
