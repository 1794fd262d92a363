"""camera_pose_ros.dataset.references (+ synth_robot): the robot's map pose of every frame."""

from __future__ import annotations

import numpy as np
import pytest

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.dataset.references import (
    ReferenceConfig,
    check_references,
    compute_priors,
)
from camera_pose_ros.dataset.synth_robot import RobotSpec, robot_messages
from camera_pose_ros.errors import AlignmentError, ConfigError
from camera_pose_ros.geometry import look_at_rotation, pose_matrix
from camera_pose_ros.io.bags import BagImageWriter

S = 1_000_000_000
CLEAN = RobotSpec(position_sigma=1e-9, yaw_sigma_deg=1e-9, jumps=0, odom_scale_error=0.0,
                  odom_yaw_rate_error=0.0)


def _walk(n: int = 60) -> tuple[list[int], list[np.ndarray]]:
    """Camera poses of a walk along a quarter circle, 10 Hz."""
    stamps, poses = [], []
    for i in range(n):
        a = i / n * np.pi / 2
        pos = [4 * np.cos(a), 4 * np.sin(a), 1.5]
        poses.append(pose_matrix(look_at_rotation([-np.sin(a), np.cos(a), 0.0]), pos))
        stamps.append(100 * S + i * S // 10)
    return stamps, poses


def _bag(path, stamps, poses, spec: RobotSpec = CLEAN, *, keep=lambda topic, msg, t: True,
         seed: int = 0):
    cam = PinholeCamera(32, 24, 30.0, 30.0, 15.5, 11.5)
    extra = [m for m in robot_messages(stamps, poses, np.random.default_rng(seed), spec)
             if keep(m[0], m[3], m[2])]
    img = np.full((24, 32, 3), 128, np.uint8)
    with BagImageWriter(path) as w:
        k = 0
        for stamp in stamps:
            while k < len(extra) and extra[k][2] <= stamp:
                topic, msgtype, t, msg, latched = extra[k]
                w.write_message(topic, msgtype, t, msg, latched=latched)
                k += 1
            w.write(stamp, img, cam)
    return path


@pytest.mark.parametrize("source", ["tf", "pose"])
def test_priors_match_the_true_camera_poses(tmp_path, source):
    stamps, poses = _walk()
    bag = _bag(tmp_path / "bag", stamps, poses)
    names = [f"{i}.jpg" for i in range(len(stamps))]
    priors = compute_priors(bag, "/camera/image_raw", names, np.array(stamps),
                            ReferenceConfig(source=source))
    assert priors is not None and priors.source == source and priors.names == names
    err = np.linalg.norm(priors.map_from_cam_N44[:, :3, 3] - np.array(poses)[:, :3, 3], axis=1)
    assert err.max() < 0.01  # the mount and the chain are composed right
    rot = np.einsum("nji,njk->nik", priors.map_from_cam_N44[:, :3, :3],
                    np.array(poses)[:, :3, :3])
    assert np.allclose(rot, np.eye(3), atol=0.01)
    if source == "pose":  # the covariance of /amcl_pose becomes the prior's sigma
        assert np.allclose(priors.sigma_N, 0.01)  # 1e-9 claimed: raised to min_sigma


def test_noisy_localization_with_jumps_is_what_the_spec_says(tmp_path):
    stamps, poses = _walk(200)
    spec = RobotSpec(jumps=2)
    bag = _bag(tmp_path / "bag", stamps, poses, spec, seed=3)
    priors = compute_priors(bag, "/camera/image_raw", [str(i) for i in range(200)],
                            np.array(stamps), ReferenceConfig(source="pose"))
    assert priors is not None
    err = np.linalg.norm(priors.map_from_cam_N44[:, :2, 3] - np.array(poses)[:, :2, 3], axis=1)
    assert 0.02 < np.median(err) < 0.15  # about the 5 cm per axis AMCL noise
    assert 0.05 < (err > 0.6).mean() < 0.4  # the jumps: 1 m off for a while
    assert np.allclose(priors.sigma_N, spec.position_sigma)


def test_tf_covering_part_of_the_walk_gives_priors_for_that_part(tmp_path):
    stamps, poses = _walk()
    cut = stamps[30]
    bag = _bag(tmp_path / "bag", stamps, poses,
               keep=lambda topic, msg, t: topic != "/tf" or t <= cut)
    priors = compute_priors(bag, "/camera/image_raw", [str(i) for i in range(60)],
                            np.array(stamps), ReferenceConfig(source="tf"))
    assert priors is not None and priors.names == [str(i) for i in range(31)]
    (a, b), = priors.info["time_ranges_without_prior_s"]
    assert a == pytest.approx(stamps[31] / 1e9) and b == pytest.approx(stamps[-1] / 1e9)


def test_tf_with_a_missing_link_is_a_clear_error(tmp_path):
    stamps, poses = _walk(20)

    def no_odom_base(topic, msg, t):  # AMCL's map -> odom only: odometry not recorded
        if topic == "/tf":
            msg.transforms = [tr for tr in msg.transforms if tr.child_frame_id != "base_link"]
        return topic != "/amcl_pose"

    bag = _bag(tmp_path / "bag", stamps, poses, keep=no_odom_base)
    with pytest.raises(AlignmentError, match="no transform chain.*base_link"):
        compute_priors(bag, "/camera/image_raw", ["a"], np.array(stamps[:1]),
                       ReferenceConfig(source="tf"))
    # auto falls through to the pose topic, which the bag lacks: nothing to align to
    with pytest.raises(AlignmentError, match="--control-points"):
        check_references(bag, "/camera/image_raw")


def test_a_bag_without_tf_names_the_options(tmp_path):
    stamps, poses = _walk(10)
    bag = _bag(tmp_path / "bag", stamps, poses, keep=lambda *a: False)
    assert compute_priors(bag, "/camera/image_raw", ["a"], np.array(stamps[:1])) is None
    with pytest.raises(AlignmentError, match="--control-points.*--map-frame"):
        check_references(bag, "/camera/image_raw")
    with pytest.raises(AlignmentError, match="cannot align from TF.*--reference pose"):
        compute_priors(bag, "/camera/image_raw", ["a"], np.array(stamps[:1]),
                       ReferenceConfig(source="tf"))


def test_pose_topic_without_a_mount_asks_for_base_to_camera(tmp_path):
    stamps, poses = _walk(60)
    bag = _bag(tmp_path / "bag", stamps, poses, keep=lambda topic, m, t: topic == "/amcl_pose")
    with pytest.raises(AlignmentError, match="--base-to-camera"):
        compute_priors(bag, "/camera/image_raw", ["a"], np.array(stamps[5:6]),
                       ReferenceConfig(source="pose"))
    mount = (0.1, 0.0, 1.5, -0.5, 0.5, -0.5, 0.5)  # the optical frame in the base frame
    priors = compute_priors(bag, "/camera/image_raw", [str(i) for i in range(60)],
                            np.array(stamps), ReferenceConfig(source="pose",
                                                              base_to_camera=mount))
    # interpolated between the 2 Hz poses (no odometry in /tf); not beyond the last one
    assert priors is not None and 50 <= len(priors.names) < 60
    idx = [int(n) for n in priors.names]
    err = np.linalg.norm(priors.map_from_cam_N44[:, :3, 3] - np.array(poses)[idx, :3, 3],
                         axis=1)
    assert err.max() < 0.03  # chords of a 4 m radius walk, 0.5 m apart


def test_reference_config_refuses_bad_values():
    with pytest.raises(ConfigError):
        ReferenceConfig(source="gps")
    with pytest.raises(ConfigError):
        ReferenceConfig(base_to_camera=(1.0, 2.0))
    with pytest.raises(ConfigError):
        ReferenceConfig(max_gap=0)


def test_extract_priors_writes_priors_and_odometry_beside_the_frames(tmp_path):
    import json

    from camera_pose_ros.dataset.references import extract_priors, read_priors
    from camera_pose_ros.io.posecsv import read_poses

    stamps, poses = _walk(30)
    bag = _bag(tmp_path / "bag", stamps, poses)
    data = tmp_path / "data"
    data.mkdir()
    (data / "source.json").write_text(json.dumps({"bag": str(bag),
                                                  "topic": "/camera/image_raw"}))
    names = [f"{i:06d}.jpg" for i in range(30)]
    (data / "frames.csv").write_text("image,stamp\n" + "".join(
        f"{n},{s / 1e9:.9f}\n" for n, s in zip(names, stamps, strict=True)))
    assert extract_priors(data) == data / "priors.csv"
    table, sigma, info = read_priors(data)
    assert table.images == names and info["source"] == "tf" and np.allclose(sigma, 0.05)
    odo = read_poses(data / "odometry.csv")
    step = np.linalg.norm(np.diff(odo.positions_N3, axis=0), axis=1)
    true_step = np.linalg.norm(np.diff(np.array(poses)[:, :3, 3], axis=0), axis=1)
    assert np.allclose(step, true_step, atol=1e-3)  # odometry: the true motion (clean spec)
    # the same dataset told to use no robot reference: stale priors are removed
    assert extract_priors(data, ReferenceConfig(source="none")) is None
    assert read_priors(data) is None and not (data / "odometry.csv").exists()


def test_with_control_points_a_broken_robot_reference_is_only_a_warning(tmp_path, caplog):
    import json

    from camera_pose_ros.dataset.pipeline import robot_priors

    stamps, poses = _walk(20)
    bag = _bag(tmp_path / "bag", stamps, poses, keep=lambda topic, m, t: topic == "/amcl_pose")
    data = tmp_path / "data"
    data.mkdir()
    (data / "source.json").write_text(json.dumps({"bag": str(bag)}))
    (data / "frames.csv").write_text("image,stamp\n" + "".join(
        f"{i}.jpg,{s / 1e9:.9f}\n" for i, s in enumerate(stamps)))
    with pytest.raises(AlignmentError, match="--base-to-camera"):  # nothing else to align to
        robot_priors(data, ReferenceConfig(), optional=False)
    assert robot_priors(data, ReferenceConfig(), optional=True) is None
    assert "control points alone" in caplog.text and not (data / "priors.csv").exists()
    with pytest.raises(AlignmentError):  # asked for explicitly: still an error
        robot_priors(data, ReferenceConfig(source="pose"), optional=True)
