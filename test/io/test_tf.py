"""camera_pose_ros.io.tf: TF tree lookups (interpolation, gaps, chains), bag readers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from camera_pose_ros.errors import BagError
from camera_pose_ros.io.bags import TYPESTORE, BagImageWriter
from camera_pose_ros.io.tf import TfTree, read_pose_topic, read_tf

S = 1_000_000_000


def _pose(rotvec, trans) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    m[:3, 3] = trans
    return m


def _add(tree: TfTree, parent: str, child: str, stamp_ns: int, pose: np.ndarray,
         static: bool = False) -> bool:
    return tree.add(parent, child, stamp_ns, pose[:3, 3],
                    Rotation.from_matrix(pose[:3, :3]).as_quat(), static=static)


def test_interpolates_between_samples_and_refuses_gaps_and_extrapolation():
    tree = TfTree()
    a, b = _pose([0, 0, 0.0], [0, 0, 0]), _pose([0, 0, 0.4], [1.0, 2.0, 0])
    _add(tree, "odom", "base_link", 10 * S, a)
    _add(tree, "odom", "base_link", 10 * S + S // 5, b)  # 0.2 s later
    _add(tree, "odom", "base_link", 12 * S, b)  # after a 1.8 s gap
    query = [10 * S + S // 10, 11 * S, 10 * S - S // 50, 10 * S - S // 10, 12 * S + S // 25,
             12 * S + S // 5]
    poses, ok = tree.lookup("odom", "base_link", query, max_gap_s=0.5)
    assert ok.tolist() == [True, False, True, False, True, False]
    assert np.allclose(poses[0][:3, 3], [0.5, 1.0, 0.0])  # halfway
    assert np.isclose(Rotation.from_matrix(poses[0][:3, :3]).as_rotvec()[2], 0.2)  # slerp
    assert np.allclose(poses[2], a) and np.allclose(poses[4], b)  # held up to 50 ms


def test_composes_a_chain_and_its_inverse():
    tree = TfTree()
    m_o = _pose([0, 0, 0.3], [5.0, -1.0, 0.0])
    o_b = _pose([0, 0, -0.1], [1.0, 0.5, 0.0])
    b_c = _pose([-np.pi / 2, 0, -np.pi / 2], [0.1, 0.0, 1.5])
    for t in (0, 4 * S // 10):
        _add(tree, "map", "odom", t, m_o)
        _add(tree, "/odom", "base_link", t, o_b)  # a tf1-style leading slash is the same frame
    _add(tree, "base_link", "camera", 0, b_c, static=True)
    poses, ok = tree.lookup("map", "camera", [S // 5, 5 * S])
    assert ok.tolist() == [True, False]  # static links hold; dynamic ones do not extrapolate
    assert np.allclose(poses[0], m_o @ o_b @ b_c)
    inv, ok_inv = tree.lookup("camera", "map", [S // 5])
    assert ok_inv[0] and np.allclose(inv[0], np.linalg.inv(m_o @ o_b @ b_c))
    sib, _ = tree.lookup("odom", "camera", [S // 5])
    assert np.allclose(sib[0], o_b @ b_c)


def test_a_missing_link_names_where_the_chain_breaks():
    tree = TfTree()
    _add(tree, "map", "odom", 0, np.eye(4))
    _add(tree, "base_link", "camera", 0, np.eye(4), static=True)
    with pytest.raises(BagError, match="'odom' has no parent|'base_link' has no parent"):
        tree.lookup("map", "camera", [0])


def test_hostile_transforms_are_skipped_not_stored():
    tree = TfTree()
    assert not tree.add("map", "odom", 0, [np.nan, 0, 0], [0, 0, 0, 1])
    assert not tree.add("map", "odom", 0, [0, 0, 0], [0, 0, 0, 0])  # zero quaternion
    assert not tree.add("", "odom", 0, [0, 0, 0], [0, 0, 0, 1])
    assert not tree.add("odom", "odom", 0, [0, 0, 0], [0, 0, 0, 1])
    assert not tree.add("map", "odom", 0, [0, 0, 0], [0, 0, 0, 2])  # tf2 refuses it too
    assert tree.add("map", "odom", 0, [1, 0, 0], [0, 0, 0, 1.01])  # rounding: normalised
    assert not tree.add("world", "odom", 0, [0, 0, 0], [0, 0, 0, 1])  # a second parent
    assert tree.skipped == 6
    poses, ok = tree.lookup("map", "odom", [0])
    assert ok[0] and np.allclose(poses[0], _pose([0, 0, 0], [1, 0, 0]))


def _header(stamp_ns: int, frame: str):
    from camera_pose_ros.io.bags import ros_header

    return ros_header(stamp_ns, frame)


def test_bag_readers_read_tf_and_pose_topics(tmp_path):
    t = TYPESTORE.types
    bag = tmp_path / "bag"
    with BagImageWriter(bag) as w:
        for k in range(5):
            stamp = 10 * S + k * S // 10
            tr = t["geometry_msgs/msg/TransformStamped"](
                header=_header(stamp, "map"), child_frame_id="odom",
                transform=t["geometry_msgs/msg/Transform"](
                    translation=t["geometry_msgs/msg/Vector3"](x=float(k), y=0.0, z=0.0),
                    rotation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)))
            w.write_message("/tf", "tf2_msgs/msg/TFMessage", stamp,
                            t["tf2_msgs/msg/TFMessage"](transforms=[tr]))
            cov = np.diag([0.04, 0.09, 0, 0, 0, 0.01]).reshape(-1)
            pose = t["geometry_msgs/msg/Pose"](
                position=t["geometry_msgs/msg/Point"](x=float(k), y=1.0, z=0.0),
                orientation=t["geometry_msgs/msg/Quaternion"](
                    x=0.0, y=0.0, z=0.0, w=0.0 if k == 2 else 1.0))  # k=2: unusable
            w.write_message("/amcl_pose", "geometry_msgs/msg/PoseWithCovarianceStamped", stamp,
                            t["geometry_msgs/msg/PoseWithCovarianceStamped"](
                                header=_header(stamp, "map"),
                                pose=t["geometry_msgs/msg/PoseWithCovariance"](
                                    pose=pose, covariance=cov)))
    tree = read_tf(bag)
    assert tree is not None and tree.parent_of("odom") == "map"
    poses, ok = tree.lookup("map", "odom", [10 * S + S // 20])
    assert ok[0] and np.isclose(poses[0][0, 3], 0.5)
    series = read_pose_topic(bag, "/amcl_pose")
    assert series is not None and series.frame_id == "map"
    assert series.poses_N44[:, 0, 3].tolist() == [0.0, 1.0, 3.0, 4.0]
    assert np.allclose(series.covariances_N66[:, 1, 1], 0.09)
    assert read_pose_topic(bag, "/nothing") is None
    with pytest.raises(BagError, match="not a pose|must be one of"):
        read_pose_topic(bag, "/tf")
    assert read_tf(bag, topics=("/other_tf",)) is None


def test_a_tf_loop_is_refused_not_composed():
    tree = TfTree()
    _add(tree, "map", "odom", 0, _pose([0, 0, 0], [1.0, 0, 0]))
    _add(tree, "odom", "base_link", 0, _pose([0, 0, 0], [0, 2.0, 0]))
    _add(tree, "base_link", "camera", 0, np.eye(4), static=True)
    _add(tree, "camera", "map", 0, _pose([0, 0, 0.3], [5.0, 0, 0]))  # closes a cycle
    with pytest.raises(BagError, match="TF has a loop"):
        tree.lookup("map", "camera", [0])


def test_frame_names_with_a_leading_slash_are_the_same_frames():
    from camera_pose_ros.dataset.references import ReferenceConfig

    cfg = ReferenceConfig(map_frame="/map", camera_frame="/camera_optical_frame")
    assert (cfg.map_frame, cfg.camera_frame) == ("map", "camera_optical_frame")
