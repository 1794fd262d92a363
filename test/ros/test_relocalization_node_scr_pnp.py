"""relocalization_node with a structure-aware model over real DDS: the direct (Kabsch) and
the scr-pnp modes publish finite poses with covariances in the map frame; a regressor in
scr-pnp mode is refused at configuration with one line."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from camera_pose_ros.io.bags import iter_bag_images
from test.conftest import wait_for, write_random_checkpoint

rclpy = pytest.importorskip("rclpy")
from geometry_msgs.msg import PoseWithCovarianceStamped  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from camera_pose_ros.ros.relocalization_node import RelocalizationNode  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


def _params(ckpt, mode: str) -> list:
    return [Parameter("model_path", value=str(ckpt)), Parameter("device", value="cpu"),
            Parameter("max_image_age", value=30.0), Parameter("mode", value=mode),
            Parameter("path_period", value=0.0),
            Parameter("qos_overrides./image.subscription.reliability", value="reliable")]


@pytest.mark.parametrize("mode", ["regress", "scr-pnp"])
def test_structure_aware_node_publishes_finite_poses(mode, ros_context, spinner,
                                                     sfm_building, structure_checkpoint):
    synth, _ = sfm_building
    node = RelocalizationNode(context=ros_context,
                              parameter_overrides=_params(structure_checkpoint, mode))
    spinner.add(node)
    assert wait_for(lambda: node.localizer is not None, 30), "node did not configure"
    assert node.localizer.predictor.solver == ("pnp" if mode == "scr-pnp" else "kabsch")
    helper = spinner.add(rclpy.create_node(f"sa_probe_{mode.replace('-', '_')}",
                                           context=ros_context))
    got: list = []
    lock = threading.Lock()
    helper.create_subscription(PoseWithCovarianceStamped,
                               "/relocalization/pose_with_covariance",
                               lambda m: (lock.acquire(), got.append(m), lock.release()),
                               RELIABLE)
    pub = helper.create_publisher(Image, "/image", RELIABLE)
    assert wait_for(lambda: pub.get_subscription_count() > 0, 30), "node did not subscribe"
    frames = list(iter_bag_images(synth / "query"))[:4]
    for f in frames:
        rgb = f.image_rgb
        msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8",
                    step=rgb.shape[1] * 3, data=rgb.tobytes())
        msg.header.stamp = helper.get_clock().now().to_msg()
        msg.header.frame_id = "camera_optical_frame"
        n0 = len(got)
        pub.publish(msg)
        wait_for(lambda n0=n0: len(got) > n0, 20)
    assert wait_for(lambda: len(got) >= len(frames), 20), dict(node.stats.counts)
    with lock:
        for m in got:
            assert m.header.frame_id == "map"
            p = m.pose.pose.position
            assert np.all(np.isfinite([p.x, p.y, p.z]))
            cov = np.array(m.pose.covariance).reshape(6, 6)
            assert np.all(np.isfinite(cov)) and np.all(np.diag(cov) > 0)


def test_a_regressor_in_scr_pnp_mode_leaves_the_node_unconfigured(ros_context, spinner,
                                                                    tmp_path):
    ckpt = write_random_checkpoint(tmp_path / "posenet.pt")
    node = RelocalizationNode(context=ros_context, parameter_overrides=_params(ckpt, "scr-pnp"))
    spinner.add(node)
    assert wait_for(lambda: node._state_machine.current_state[1] == "unconfigured", 5)
    assert not wait_for(lambda: node.localizer is not None, 3)
    assert node._state_machine.current_state[1] == "unconfigured"
