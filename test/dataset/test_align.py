"""camera_pose_ros.dataset.align: control points, robust Sim(3) alignment, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from camera_pose_ros.dataset import align as align_mod
from camera_pose_ros.dataset.align import AlignConfig, align_dataset, read_control_points
from camera_pose_ros.dataset.sfm import SfMModel
from camera_pose_ros.errors import AlignmentError, ConfigError, InputDataError
from camera_pose_ros.geometry import Sim3, look_at_rotation, pose_matrix, quat_wxyz_from_rotmat
from camera_pose_ros.io.posecsv import read_poses


def _walk(n: int = 40) -> np.ndarray:
    """map_from_cam poses along an L-shaped walk."""
    poses = []
    for i in range(n):
        x, y = (i * 0.2, 0.0) if i < n // 2 else ((n // 2) * 0.2, (i - n // 2) * 0.2)
        poses.append(pose_matrix(look_at_rotation([1.0, 0.3, 0.0]), [x, y, 1.5]))
    return np.array(poses)


@pytest.fixture
def fake_dataset(tmp_path, monkeypatch):
    """A dataset folder with frames.csv and an SfM model that is a known Sim(3) of the walk."""
    map_from_cam = _walk()
    sfm_from_map = Sim3(0.37, Rotation.from_euler("xyz", [20, -40, 75], degrees=True)
                        .as_matrix(), np.array([3.0, -1.0, 2.0]))
    sfm_from_cam = np.array([sfm_from_map.transform_pose(p) for p in map_from_cam])
    names = [f"{i:06d}.jpg" for i in range(len(map_from_cam))]
    stamps = 100.0 + 0.1 * np.arange(len(names))
    (tmp_path / "frames.csv").write_text(
        "image,stamp\n" + "".join(f"{n},{s:.9f}\n" for n, s in zip(names, stamps, strict=True)))
    model = SfMModel(names, sfm_from_cam, np.zeros((0, 3)))
    monkeypatch.setattr(align_mod, "load_sfm_model", lambda data: model)
    return tmp_path, map_from_cam, stamps


def _write_cps(path, rows, header="stamp,x,y,z"):
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def test_alignment_recovers_map_poses(fake_dataset):
    data, map_from_cam, stamps = fake_dataset
    idx = [2, 12, 25, 37]
    cps = _write_cps(data / "cp.csv", [(stamps[i] + 0.0005, *map_from_cam[i, :3, 3])
                                       for i in idx])  # within 1 ms: snaps to the frame
    align_dataset(data, cps)
    poses = read_poses(data / "poses.csv")
    assert np.allclose(poses.positions_N3, map_from_cam[:, :3, 3], atol=1e-6)
    assert np.allclose(poses.quats_wxyz_N4, quat_wxyz_from_rotmat(map_from_cam[:, :3, :3]),
                       atol=1e-6)
    assert poses.images[0] == "000000.jpg"


def test_alignment_rejects_one_bad_control_point(fake_dataset):
    data, map_from_cam, stamps = fake_dataset
    rows = [(stamps[i], *map_from_cam[i, :3, 3]) for i in (2, 12, 20, 30, 37)]
    rows[1] = (rows[1][0], rows[1][1] + 2.0, rows[1][2] - 1.0, rows[1][3])
    align_dataset(data, _write_cps(data / "cp.csv", rows))
    import json
    report = json.loads((data / "alignment.json").read_text())
    assert [cp["inlier"] for cp in report["control_points"]] == [True, False, True, True, True]
    assert report["rms_m"] < 1e-6
    poses = read_poses(data / "poses.csv")
    assert np.allclose(poses.positions_N3, map_from_cam[:, :3, 3], atol=1e-6)


def test_control_points_by_image_name(fake_dataset):
    data, map_from_cam, _ = fake_dataset
    rows = [(f"{i:06d}.jpg", *map_from_cam[i, :3, 3]) for i in (3, 15, 33)]
    align_dataset(data, _write_cps(data / "cp.csv", rows, "image,x,y,z"))
    assert np.allclose(read_poses(data / "poses.csv").positions_N3, map_from_cam[:, :3, 3],
                       atol=1e-6)


def test_too_few_collinear_or_unmatched_control_points(fake_dataset):
    data, map_from_cam, stamps = fake_dataset
    two = _write_cps(data / "two.csv", [(stamps[i], *map_from_cam[i, :3, 3]) for i in (1, 9)])
    with pytest.raises(AlignmentError, match="at least 3"):
        align_dataset(data, two)
    line = _write_cps(data / "line.csv", [(stamps[i], *map_from_cam[i, :3, 3]) for i in (1, 5, 9)])
    with pytest.raises(AlignmentError, match="collinear"):
        align_dataset(data, line)
    far = _write_cps(data / "far.csv", [(stamps[i] + (50 if i == 30 else 0),
                                         *map_from_cam[i, :3, 3]) for i in (1, 25, 30)])
    with pytest.raises(AlignmentError, match="no registered frame within"):
        align_dataset(data, far)
    assert not (data / "poses.csv").exists()  # nothing written by a failed alignment


def test_control_point_file_errors(tmp_path):
    with pytest.raises(InputDataError, match="not found"):
        read_control_points(tmp_path / "none.csv")
    (tmp_path / "bad.csv").write_text("t,x,y\n1,2,3\n")
    with pytest.raises(InputDataError, match="expected columns"):
        read_control_points(tmp_path / "bad.csv")
    cps = _write_cps(tmp_path / "cp.csv", [(1, 0, 0, 0), (2, 1, 0, 0), (3, 0, 1, 0)])
    with pytest.raises(InputDataError, match="run `camera-pose frames` first"):
        align_dataset(tmp_path, cps)  # a folder that is no dataset yet
    with pytest.raises(ConfigError):
        AlignConfig(max_rms=-1)


def test_control_point_between_frames_is_interpolated(fake_dataset, monkeypatch):
    """A control point whose own frame was dropped is placed between its neighbours."""
    data, map_from_cam, stamps = fake_dataset
    model = align_mod.load_sfm_model(data)
    keep = [i for i in range(len(model.names)) if i != 12]  # frame 12 was not kept
    thinned = SfMModel([model.names[i] for i in keep], model.sfm_from_cam[keep],
                       model.points_N3)
    monkeypatch.setattr(align_mod, "load_sfm_model", lambda d: thinned)
    mid = (map_from_cam[11, :3, 3] + map_from_cam[13, :3, 3]) / 2  # straight walk: 12 is mid
    rows = [(stamps[2], *map_from_cam[2, :3, 3]), (stamps[12], *mid),
            (stamps[25], *map_from_cam[25, :3, 3]), (stamps[37], *map_from_cam[37, :3, 3])]
    align_dataset(data, _write_cps(data / "cp.csv", rows))
    import json
    report = json.loads((data / "alignment.json").read_text())
    assert report["control_points"][1]["frame"] == "000011.jpg+000013.jpg"
    assert report["rms_m"] < 1e-6


def _write_priors(data, map_from_cam, stamps, *, noise=0.0, jump=slice(0, 0), seed=0,
                  sigma=0.05, source="tf"):
    """DATA/priors.csv as dataset.references writes it: noisy robot poses, one jump run."""
    import json

    from camera_pose_ros.io.posecsv import PoseTable, seconds_to_ns, write_poses

    rng = np.random.default_rng(seed)
    pos = map_from_cam[:, :3, 3] + rng.normal(0, noise, (len(stamps), 3)) * [1, 1, 0]
    pos[jump] += [1.0, -0.5, 0.0]
    names = [f"{i:06d}.jpg" for i in range(len(stamps))]
    write_poses(data / "priors.csv", PoseTable(
        np.array([seconds_to_ns(s) for s in stamps]), pos,
        quat_wxyz_from_rotmat(map_from_cam[:, :3, :3]), names,
        {"sigma_m": [str(sigma)] * len(stamps)}))
    (data / "priors.json").write_text(json.dumps({"source": source}))


def test_alignment_from_robot_priors_rejects_the_jumps_and_reports_when(fake_dataset):
    import json

    data, map_from_cam, stamps = fake_dataset
    _write_priors(data, map_from_cam, stamps, noise=0.03, jump=slice(10, 16))
    align_dataset(data)  # no control points: the robot's localization alone
    poses = read_poses(data / "poses.csv")
    err = np.linalg.norm(poses.positions_N3 - map_from_cam[:, :3, 3], axis=1)
    assert np.median(err) < 0.03
    report = json.loads((data / "alignment.json").read_text())
    refs = report["robot_references"]
    assert refs["source"] == "tf" and refs["rejected"] == 6 and refs["samples"] == 40
    (a, b), = refs["rejected_time_ranges_s"]
    assert a == pytest.approx(stamps[10]) and b == pytest.approx(stamps[15])
    assert report["z_vertical"] and report["vertical"]["from"] == "trajectory plane"
    assert refs["residual_m"]["max"] > 1.0 > refs["inlier_residual_m"]["max"]


def test_control_points_and_priors_together_weigh_the_survey_more(fake_dataset):
    data, map_from_cam, stamps = fake_dataset
    # every prior 20 cm off to one side (a biased localization): accurate control points win
    biased = map_from_cam.copy()
    biased[:, 1, 3] += 0.2
    _write_priors(data, biased, stamps, sigma=0.2)
    idx = [2, 12, 25, 37]
    cps = _write_cps(data / "cp.csv", [(stamps[i], *map_from_cam[i, :3, 3], 0.002)
                                       for i in idx], header="stamp,x,y,z,sigma")
    align_dataset(data, cps, AlignConfig(inlier_threshold=0.5))
    poses = read_poses(data / "poses.csv")
    err = np.linalg.norm(poses.positions_N3 - map_from_cam[:, :3, 3], axis=1)
    assert np.median(err) < 0.02


def test_references_that_disagree_with_the_reconstruction_stop_the_alignment(fake_dataset):
    data, map_from_cam, stamps = fake_dataset
    _write_priors(data, map_from_cam, stamps, jump=slice(0, 20))  # half of the walk 1 m off
    with pytest.raises(AlignmentError, match=r"disagrees .* on \d+% of the frames.*s from the"):
        align_dataset(data)
    assert (data / "alignment.json").is_file() and not (data / "poses.csv").exists()


def test_alignment_needs_a_reference(fake_dataset):
    data, _, _ = fake_dataset
    with pytest.raises(AlignmentError, match="nothing to align to"):
        align_dataset(data)
    cps = _write_cps(data / "cp.csv", [(100.0, 0, 0, 1.5), (101.0, 2, 0, 1.5),
                                       (103.0, 4, 2, 1.5)])
    with pytest.raises(AlignmentError, match="z_vertical needs"):
        align_dataset(data, cps, AlignConfig(z_vertical="yes"))


def test_control_point_sigma_must_be_metres(tmp_path):
    cp = _write_cps(tmp_path / "cp.csv", [(1.0, 0, 0, 0, 0.01), (2.0, 1, 0, 0, "abc"),
                                         (3.0, 0, 1, 0, 0.01)], header="stamp,x,y,z,sigma")
    with pytest.raises(InputDataError, match="cp.csv:3: sigma"):
        read_control_points(cp)


def _write_odometry(data, map_from_cam, stamps, drift_deg=2.0):
    """DATA/odometry.csv: the true motion seen from a drifting odom frame."""
    from camera_pose_ros.io.posecsv import PoseTable, seconds_to_ns, write_poses

    odom_from_map = pose_matrix(Rotation.from_euler("z", drift_deg, degrees=True).as_matrix(),
                                [0.3, -0.2, 0.0])
    odo = np.array([odom_from_map @ p for p in map_from_cam])
    write_poses(data / "odometry.csv", PoseTable(
        np.array([seconds_to_ns(s) for s in stamps]), odo[:, :3, 3],
        quat_wxyz_from_rotmat(odo[:, :3, :3]), [f"{i:06d}.jpg" for i in range(len(stamps))]))


def _sixty_frames(data):
    """A 60-frame L walk at 10 Hz and its frames.csv in ``data``."""
    map_from_cam = _walk(60)
    stamps = 100.0 + 0.1 * np.arange(60)
    names = [f"{i:06d}.jpg" for i in range(60)]
    (data / "frames.csv").write_text(
        "image,stamp\n" + "".join(f"{n},{s:.9f}\n" for n, s in zip(names, stamps, strict=True)))
    return map_from_cam, stamps, names


def test_a_localization_jump_is_rejected_but_a_folded_stretch_stops_the_dataset(
        tmp_path, monkeypatch):
    import json

    map_from_cam, stamps, names = _sixty_frames(tmp_path)

    def use_model(sfm_map_from_cam):
        model = SfMModel(names, sfm_map_from_cam, np.zeros((0, 3)))
        monkeypatch.setattr(align_mod, "load_sfm_model", lambda data: model)

    _write_odometry(tmp_path, map_from_cam, stamps)
    # 1. the robot's localization jumps 1 m for frames 20-27; SfM and odometry are right
    use_model(map_from_cam)
    _write_priors(tmp_path, map_from_cam, stamps, jump=slice(20, 28))
    align_dataset(tmp_path)
    refs = json.loads((tmp_path / "alignment.json").read_text())["robot_references"]
    assert refs["rejected"] == 8 and refs["folded_time_ranges_from_start_s"] == []
    # 1b. during that jump SfM put one frame in a look-alike place 3 m away: hidden from the
    # references (rejected with the jump), not from the odometry
    one_off = map_from_cam.copy()
    one_off[23, :3, 3] += [0.0, 3.0, 0.0]
    use_model(one_off)
    (tmp_path / "poses.csv").unlink()
    with pytest.raises(AlignmentError, match=r"contradicts the robot's odometry at 2\.3-2\.3 s"):
        align_dataset(tmp_path)
    assert not (tmp_path / "poses.csv").exists()
    # 2. SfM joined look-alike places: frames 35-44 sit 3 m off; the localization is right
    folded = map_from_cam.copy()
    folded[35:45, :3, 3] += [0.0, 3.0, 0.0]
    use_model(folded)
    _write_priors(tmp_path, map_from_cam, stamps)
    with pytest.raises(AlignmentError, match=r"contradicts the robot's odometry at 3\.5-4\.4 s"):
        align_dataset(tmp_path)
    assert not (tmp_path / "poses.csv").exists()
    align_dataset(tmp_path, config=AlignConfig(allow_inconsistent=True))  # the user's call
    refs = json.loads((tmp_path / "alignment.json").read_text())["robot_references"]
    assert refs["folded_time_ranges_from_start_s"] == [[pytest.approx(3.5),
                                                        pytest.approx(4.4)]]


def test_control_points_that_disagree_by_metres_stop_the_alignment(fake_dataset):
    data, map_from_cam, stamps = fake_dataset
    idx = [2, 8, 14, 20, 26, 37]
    rows = [(stamps[i], *map_from_cam[i, :3, 3]) for i in idx]
    rows[1] = (rows[1][0], rows[1][1] + 6.4, rows[1][2], rows[1][3])
    rows[3] = (rows[3][0], rows[3][1], rows[3][2] - 4.4, rows[3][3])
    cps = _write_cps(data / "cp.csv", rows)
    with pytest.raises(AlignmentError, match="2 of 6 control points disagree"):
        align_dataset(data, cps)
    align_dataset(data, cps, AlignConfig(allow_inconsistent=True))
    assert (data / "poses.csv").is_file()


def test_without_odometry_a_stretch_metres_off_is_a_fold_and_a_1m_jump_is_not(
        tmp_path, monkeypatch):
    map_from_cam, stamps, names = _sixty_frames(tmp_path)
    folded = map_from_cam.copy()
    folded[35:45, :3, 3] += [0.0, 3.0, 0.0]
    for sfm, jump, fails in ((map_from_cam, slice(20, 28), False), (folded, slice(0, 0), True)):
        model = SfMModel(names, sfm, np.zeros((0, 3)))
        monkeypatch.setattr(align_mod, "load_sfm_model", lambda data, m=model: m)
        _write_priors(tmp_path, map_from_cam, stamps, jump=jump)  # no odometry.csv
        if fails:
            with pytest.raises(AlignmentError, match=r"at 3\.5-4\.4 s from the start"):
                align_dataset(tmp_path)
        else:
            align_dataset(tmp_path)
