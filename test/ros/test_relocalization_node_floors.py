"""relocalization_node on a building with two floors, over real DDS.

Each floor has its own map and (random) network; the node starts without knowing the floor,
recognises it from the images, publishes in that floor's frame, and moves to the other floor
when the images come from there (a lift ride), or when told on ``~/set_floor``.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from camera_pose_ros.io.bags import iter_bag_images, read_camera_info
from camera_pose_ros.io.floors import FLOORS_FILE, load_floors, write_floors
from camera_pose_ros.io.posecsv import read_poses
from test.conftest import wait_for, write_random_checkpoint

rclpy = pytest.importorskip("rclpy")
from geometry_msgs.msg import PoseWithCovarianceStamped  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from camera_pose_ros.ros.relocalization_node import RelocalizationNode  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


@pytest.fixture
def floors_file(floors_building, tmp_path):
    """The building's floors file with a random network per floor (whose provenance names
    the floor's dataset, where its refinement map is found)."""
    root, datas = floors_building
    floors = load_floors(root / FLOORS_FILE)
    specs = [type(f)(f.id, f.elevation, f.frame_id, str(write_random_checkpoint(
        tmp_path / f"model_{f.id}.pt", seed=k, provenance={"dataset": str(datas[k])})))
        for k, f in enumerate(floors)]
    return write_floors(tmp_path / FLOORS_FILE, specs)


def test_node_recognises_the_floor_and_follows_the_camera_to_the_next(
        ros_context, spinner, floors_building, floors_file):
    root, _ = floors_building
    params = [Parameter("floors_file", value=str(floors_file)), Parameter("device", value="cpu"),
              Parameter("max_image_age", value=60.0), Parameter("mc_samples", value=4),
              Parameter("mode", value="refine"), Parameter("refine_every_n", value=1),
              Parameter("floor_recheck_after", value=2),
              Parameter("qos_overrides./image.subscription.reliability", value="reliable")]
    node = spinner.add(RelocalizationNode(context=ros_context, parameter_overrides=params))
    helper = spinner.add(rclpy.create_node("floors_probe", context=ros_context))
    got: dict[str, list] = {"refined": [], "floor": [], "static": []}
    lock = threading.Lock()

    def keep(key: str):
        return lambda m: (lock.acquire(), got[key].append(m), lock.release())

    helper.create_subscription(PoseWithCovarianceStamped, "/relocalization/pose_refined",
                               keep("refined"), RELIABLE)
    helper.create_subscription(String, "/relocalization/floor", keep("floor"), LATCHED)
    helper.create_subscription(TFMessage, "/tf_static", keep("static"), LATCHED)
    pub = helper.create_publisher(Image, "/image", RELIABLE)
    set_floor = helper.create_publisher(String, "/relocalization/set_floor", RELIABLE)
    info_pub = helper.create_publisher(CameraInfo, "/camera_info", RELIABLE)
    assert wait_for(lambda: pub.get_subscription_count() > 0, 60), "node did not subscribe"
    cam = read_camera_info(root / "floor_0" / "query", "/camera/camera_info")
    model, d = cam.camera_info_distortion()
    info = CameraInfo(width=cam.width, height=cam.height, distortion_model=model, d=d)
    info.k = [cam.fx, 0.0, cam.cx, 0.0, cam.fy, cam.cy, 0.0, 0.0, 1.0]
    info_pub.publish(info)
    assert wait_for(lambda: node.pipeline.camera is not None, 10), "camera_info not received"
    # the floors' frames hang below the building's map frame, raised by their elevations
    assert wait_for(lambda: got["static"], 10)
    lifts = {t.child_frame_id: t.transform.translation.z for t in got["static"][-1].transforms}
    assert lifts == {"map_0": 0.0, "map_1": pytest.approx(3.2)}
    assert wait_for(lambda: got["floor"] and got["floor"][-1].data == "", 10)

    def outcomes() -> int:
        c = node.stats.counts
        return c["refined"] + c["refine_failed"] + c["floor_unrecognised"]

    def play(fid: str) -> dict[tuple[int, int], np.ndarray]:
        gt = read_poses(root / f"floor_{fid}" / "gt_query.csv")
        sent = {}
        for i, f in enumerate(iter_bag_images(root / f"floor_{fid}" / "query")):
            rgb = f.image_rgb
            msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8",
                        step=rgb.shape[1] * 3, data=rgb.tobytes())
            msg.header.stamp = helper.get_clock().now().to_msg()
            sent[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = gt.positions_N3[i]
            n0 = outcomes()
            pub.publish(msg)
            wait_for(lambda n0=n0: outcomes() > n0, 30)  # one at a time: each is refined
        return sent

    def refined_on(frame: str, sent: dict) -> list[float]:
        with lock:
            msgs = [m for m in got["refined"] if m.header.frame_id == frame]
        return [float(np.linalg.norm(np.array([m.pose.pose.position.x, m.pose.pose.position.y,
                                               m.pose.pose.position.z])
                                     - sent[(m.header.stamp.sec, m.header.stamp.nanosec)]))
                for m in msgs if (m.header.stamp.sec, m.header.stamp.nanosec) in sent]

    sent0 = play("0")
    assert wait_for(lambda: got["floor"][-1].data == "0", 10), [m.data for m in got["floor"]]
    errors0 = refined_on("map_0", sent0)
    assert len(errors0) >= 0.75 * len(sent0) and np.median(errors0) < 0.05, errors0
    assert node.stats.counts["dropped_no_floor"] >= 1  # nothing went out before the floor
    # the camera rides to floor 1: floor 0's map stops fitting, the floor is recognised again
    sent1 = play("1")
    assert wait_for(lambda: got["floor"][-1].data == "1", 10), [m.data for m in got["floor"]]
    errors1 = refined_on("map_1", sent1)
    assert len(errors1) >= 0.5 * len(sent1) and np.median(errors1) < 0.05, errors1
    assert not refined_on("map_0", sent1), "a floor-1 image refined on floor 0"
    # told by hand; a floor that does not exist is refused and the node goes on
    bad = node.stats.counts["rejected_other"]
    set_floor.publish(String(data="attic"))
    assert wait_for(lambda: node.stats.counts["rejected_other"] > bad, 10)
    set_floor.publish(String(data="0"))
    assert wait_for(lambda: got["floor"][-1].data == "0", 10)
    assert node.pipeline.floors.current == "0" and node.pipeline.workers_alive()
    diag = node.pipeline.diagnostics()
    assert diag.values["floor"] == "0"
