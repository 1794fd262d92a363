"""recorder_node's live coverage over DDS: a walk in one room of a two-room plan, camera poses
from /tf + /tf_static, coverage published on ~/coverage_map and /diagnostics; hostile maps
and transforms are logged and ignored while the recording goes on."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from camera_pose_ros.geometry import quat_wxyz_from_rotmat
from camera_pose_ros.io.bags import iter_bag_images
from camera_pose_ros.io.floorplan import FloorPlan
from test.conftest import wait_for

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from nav_msgs.msg import OccupancyGrid  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from camera_pose_ros.ros import conversions as conv  # noqa: E402
from camera_pose_ros.ros.recorder_node import RecorderNode  # noqa: E402

pytestmark = pytest.mark.ros
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
#: camera optical frame in base_link: looking along base x (REP 103 -> optical)
BASE_TO_CAMERA_WXYZ = np.array([0.5, -0.5, 0.5, -0.5])


def two_rooms() -> FloorPlan:
    """4 x 8 m at 10 cm: two rooms split by a wall at x = 4 m."""
    occ = np.zeros((40, 80), np.int8)
    occ[[0, -1], :] = 100
    occ[:, [0, -1, 40]] = 100
    return FloorPlan(occ, 0.1, (0.0, 0.0))


def yaw_quat(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return quat_wxyz_from_rotmat(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]))


def image(i: int) -> Image:
    m = Image()
    m.header.stamp.sec = 100 + i
    m.height, m.width, m.encoding, m.step = 24, 32, "rgb8", 96
    m.data = np.full(24 * 96, i % 256, np.uint8).tobytes()
    return m


class Robot:
    """Publishes images, /tf (map -> odom -> base_link) and /tf_static (base -> camera)."""

    def __init__(self, node) -> None:
        self.node = node
        self.images = node.create_publisher(Image, "/camera/image_raw", RELIABLE)
        self.tf = node.create_publisher(TFMessage, "/tf", QoSProfile(
            depth=100, reliability=ReliabilityPolicy.RELIABLE))
        self.tf_static = node.create_publisher(TFMessage, "/tf_static", LATCHED)
        self.map = node.create_publisher(OccupancyGrid, "/map", LATCHED)
        self.coverage: list[OccupancyGrid] = []
        self.status: list = []
        node.create_subscription(OccupancyGrid, "/recorder/coverage_map", self.coverage.append,
                                 LATCHED)
        node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self.status.extend(
            s for s in m.status if s.name == "recorder: coverage"), 10)
        self.i = 0

    def stamp(self):
        return self.node.get_clock().now().to_msg()

    def static(self) -> None:
        self.tf_static.publish(TFMessage(transforms=[conv.transform_stamped(
            self.stamp(), "base_link", "camera_optical_frame", np.array([0.1, 0.0, 1.2]),
            BASE_TO_CAMERA_WXYZ)]))

    def step(self, x: float, y: float, yaw: float) -> None:
        """The robot at (x, y, yaw) in the map (odom 0.5 m off the map), one image."""
        s = self.stamp()
        self.tf.publish(TFMessage(transforms=[
            conv.transform_stamped(s, "map", "odom", np.array([0.5, 0.0, 0.0]), yaw_quat(0.0)),
            conv.transform_stamped(s, "odom", "base_link", np.array([x - 0.5, y, 0.0]),
                                   yaw_quat(yaw))]))
        self.images.publish(image(self.i))
        self.i += 1

    def walk_west_room(self, laps: int = 1) -> None:
        for _ in range(laps):
            for a in np.linspace(0, 2 * np.pi, 16, endpoint=False):
                self.step(2.0 + math.cos(a), 2.0 + 0.8 * math.sin(a), a + math.pi / 2)
                time.sleep(0.06)

    def latest_grid(self) -> np.ndarray:
        msg = self.coverage[-1]
        return np.array(msg.data, np.int8).reshape(msg.info.height, msg.info.width)


def recorder(ros_context, tmp_path, **params) -> RecorderNode:
    values = {"output": str(tmp_path / "rec"), "topics": ["/camera/image_raw", "/tf"],
              "coverage_period": 0.1, "coverage_publish_period": 0.3, "camera_hfov_deg": 90.0,
              **params}
    return RecorderNode(context=ros_context, parameter_overrides=[
        Parameter(k, value=v) for k, v in values.items()])


def test_coverage_of_a_walk_in_one_room_is_published_and_the_other_room_is_the_gap(
        ros_context, spinner, tmp_path):
    two_rooms().save(tmp_path / "plan.yaml")
    rec = spinner.add(recorder(ros_context, tmp_path, floorplan=str(tmp_path / "plan.yaml")))
    robot = Robot(spinner.add(rclpy.create_node("robot", context=ros_context)))
    assert wait_for(lambda: robot.images.get_subscription_count() > 0
                    and robot.tf.get_subscription_count() >= 2, 15)  # recorded and followed
    robot.static()
    robot.walk_west_room(laps=2)
    assert wait_for(lambda: rec.coverage.live.poses >= 16, 10), rec.coverage.problem
    n = len(robot.coverage)
    assert wait_for(lambda: len(robot.coverage) > n + 1, 10)
    grid = robot.latest_grid()
    assert grid.shape == (40, 80) and robot.coverage[-1].header.frame_id == "map"
    assert (grid[1:-1, 41:-1] == 100).all(), "the east room is never seen"
    assert (grid[1:-1, 1:40] < 100).mean() > 0.9, "the walked room is seen"
    assert (grid[:, 40] == -1).all()
    assert wait_for(lambda: robot.status, 5)
    status = robot.status[-1]
    values = {kv.key: kv.value for kv in status.values}
    assert 0.4 < float(values["walkable_seen"]) < 0.55, values
    gap_x = float(values["gaps"].split()[0].split(",")[0])
    assert gap_x > 4.0 and "largest gaps" in status.message
    assert values["pose_source"] == "tf" and values["problem"] == ""
    rec.close()
    assert len(list(iter_bag_images(rec.bags[0]))) == robot.i  # every image still recorded


def bad_grid(**changes) -> OccupancyGrid:
    msg = conv.occupancy_grid(rclpy.time.Time().to_msg(), "map", two_rooms().occupancy, 0.1,
                              (0.0, 0.0))
    for key, value in changes.items():
        target = msg.info if key in ("width", "height", "resolution") else msg
        if key == "rotated":
            msg.info.origin.orientation.z, msg.info.origin.orientation.w = 0.7071, 0.7071
        elif key == "frame":
            msg.header.frame_id = value
        else:
            setattr(target, key, value)
    return msg


def test_hostile_maps_and_transforms_are_logged_and_ignored(ros_context, spinner, tmp_path):
    rec = spinner.add(recorder(ros_context, tmp_path))  # no floorplan: the plan is /map's
    robot = Robot(spinner.add(rclpy.create_node("robot2", context=ros_context)))
    assert wait_for(lambda: robot.map.get_subscription_count() > 0
                    and robot.images.get_subscription_count() > 0, 15)
    hostile_maps = [bad_grid(width=81), bad_grid(resolution=float("nan")),
                    bad_grid(width=100_000, height=100_000), bad_grid(rotated=True),
                    bad_grid(frame="odom")]
    for k, msg in enumerate(hostile_maps, 1):
        robot.map.publish(msg)
        assert wait_for(lambda k=k: rec.coverage.rejected.get("map", 0) >= k, 5), k
    s = robot.stamp()
    t_nan = conv.transform_stamped(s, "odom", "base_link", np.array([np.nan, 0, 0]),
                                   yaw_quat(0))
    t_zero = conv.transform_stamped(s, "odom", "base_link", np.zeros(3), yaw_quat(0))
    t_zero.transform.rotation.w = 0.0
    t_self = conv.transform_stamped(s, "odom", "odom", np.zeros(3), yaw_quat(0))
    loop = [conv.transform_stamped(s, "a", "b", np.zeros(3), yaw_quat(0)),
            conv.transform_stamped(s, "b", "a", np.zeros(3), yaw_quat(0))]
    for transforms in ([t_nan], [t_zero], [t_self], loop):
        robot.tf.publish(TFMessage(transforms=transforms))
        robot.images.publish(image(robot.i))
        robot.i += 1
        time.sleep(0.15)
    assert wait_for(lambda: rec.coverage.rejected.get("tf", 0) >= 3, 5), rec.coverage.rejected
    assert rec.coverage.live.poses == 0  # no pose from any of that
    # the recorder kept recording, and a valid map and walk give coverage as usual
    robot.map.publish(bad_grid())
    robot.static()
    robot.walk_west_room()
    assert wait_for(lambda: rec.coverage.live.poses >= 8, 10), rec.coverage.problem
    assert wait_for(lambda: robot.coverage and (robot.latest_grid()[1:-1, 1:40] < 100).any(),
                    10)
    assert (robot.latest_grid()[1:-1, 41:-1] == 100).all()
    assert wait_for(lambda: rec.counts.get("/camera/image_raw", 0) == robot.i, 10)


def test_camera_pose_from_amcl_pose_and_a_fixed_extrinsic(ros_context, spinner, tmp_path):
    from geometry_msgs.msg import PoseWithCovarianceStamped

    two_rooms().save(tmp_path / "plan.yaml")
    # base_to_camera as x y z qx qy qz qw: no /tf_static needed
    q = BASE_TO_CAMERA_WXYZ
    rec = spinner.add(recorder(ros_context, tmp_path, floorplan=str(tmp_path / "plan.yaml"),
                               pose_topic="/amcl_pose",
                               base_to_camera=[0.1, 0.0, 1.2, q[1], q[2], q[3], q[0]]))
    node = spinner.add(rclpy.create_node("amcl", context=ros_context))
    robot = Robot(node)
    amcl = node.create_publisher(PoseWithCovarianceStamped, "/amcl_pose", RELIABLE)
    assert wait_for(lambda: robot.images.get_subscription_count() > 0, 15)
    for i, a in enumerate(np.linspace(0, 4 * np.pi, 40, endpoint=False)):
        amcl.publish(conv.pose_with_covariance(
            robot.stamp(), "map", np.array([2.0 + math.cos(a), 2.0 + 0.8 * math.sin(a), 0.0]),
            yaw_quat(a + math.pi / 2), np.eye(6) * 0.01))
        if i % 10 == 0:  # a pose in another frame is refused, counted, logged
            amcl.publish(conv.pose_with_covariance(robot.stamp(), "odom", np.zeros(3),
                                                   yaw_quat(0.0), np.eye(6)))
        robot.images.publish(image(i))
        time.sleep(0.06)
    assert wait_for(lambda: rec.coverage.live.poses >= 10, 10), rec.coverage.problem
    assert rec.coverage.rejected.get("pose", 0) >= 1
    n = len(robot.coverage)
    assert wait_for(lambda: len(robot.coverage) > n, 10)
    grid = robot.latest_grid()
    assert (grid[1:-1, 41:-1] == 100).all() and (grid[1:-1, 1:40] < 100).mean() > 0.9
    values = {kv.key: kv.value for kv in robot.status[-1].values}
    assert values["pose_source"] == "/amcl_pose"


def test_an_unreadable_floorplan_fails_before_a_bag_is_created(ros_context, tmp_path):
    from camera_pose_ros.errors import ConfigError

    (tmp_path / "plan.yaml").write_text("image: missing.pgm\nresolution: 0.1\n")
    with pytest.raises(ConfigError, match="floorplan"):
        recorder(ros_context, tmp_path, floorplan=str(tmp_path / "plan.yaml"))
    assert not (tmp_path / "rec").exists()
