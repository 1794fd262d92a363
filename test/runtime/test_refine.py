"""Geometric refinement against the SfM map: the map file, the refiner, its covariance, CLI.

Uses the session's small synthetic building (real pycolmap SfM, see conftest) and its query
walk, which is never part of the map.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace

import numpy as np
import pycolmap
import pytest
from scipy.spatial.transform import Rotation

from camera_pose_ros.dataset.refmap import build_refinement_map
from camera_pose_ros.errors import ConfigError, RefinementError
from camera_pose_ros.geometry import (
    position_errors,
    quat_wxyz_from_rotmat,
    rotation_errors_deg,
    rotmat_from_quat_wxyz,
)
from camera_pose_ros.io.bags import iter_bag_images, read_camera_info
from camera_pose_ros.io.posecsv import read_poses
from camera_pose_ros.io.refmap import REFINEMENT_MAP, load_refinement_map
from camera_pose_ros.learning.evaluate import compare_with_ground_truth
from camera_pose_ros.metrics import match_by_stamp
from camera_pose_ros.runtime.refine import (
    RefineConfig,
    Refiner,
    find_refinement_map,
    pose_covariance_from_inliers,
)

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def query(sfm_building):
    """(rgb, gt position, gt quaternion) of each query frame, and the bag's camera."""
    synth, _ = sfm_building
    gt = read_poses(synth / "gt_query.csv")
    frames = list(iter_bag_images(synth / "query"))
    ig, _ = match_by_stamp(gt.stamps, np.array([f.stamp for f in frames]), max_dt=1e-6)
    assert len(ig) == len(frames) >= 5
    rows = [(f.image_rgb, gt.positions_N3[i], gt.quats_wxyz_N4[i])
            for f, i in zip(frames, ig, strict=True)]
    return rows, read_camera_info(synth / "query", "/camera/camera_info")


@pytest.fixture(scope="module")
def refinement_map(sfm_building):
    return load_refinement_map(sfm_building[1])


def _rotate(q_wxyz: np.ndarray, deg: float) -> np.ndarray:
    """``q`` turned by ``deg`` about the map's z axis."""
    from camera_pose_ros.geometry import quat_wxyz_from_rotmat

    a = np.radians(deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return quat_wxyz_from_rotmat(rz @ rotmat_from_quat_wxyz(q_wxyz))


def test_dataset_writes_a_refinement_map_in_the_map_frame(sfm_building, refinement_map):
    _, data = sfm_building
    assert (data / REFINEMENT_MAP).is_file()
    m = refinement_map
    poses = read_poses(data / "poses.csv")
    assert sorted(poses.images) == [str(n) for n in m.names]
    order = np.argsort(poses.images)
    np.testing.assert_allclose(m.centres, poses.positions_N3[order], atol=1e-5)
    assert len(m.frame_points) == m.offsets[-1] and m.desc_codes.shape == (len(m.points), 64)
    # each frame's observed points lie in front of it, within the building
    for i in range(0, len(m), max(1, len(m) // 10)):
        pts, _ = m.observations(np.array([i]))
        cam = (m.points[pts] - m.centres[i]) @ m.map_from_cam[i, :3, :3]
        assert np.mean(cam[:, 2] > 0) > 0.95
    assert m.global_desc.shape == (len(m), len(m.vocabulary))
    rms = json.loads((data / "alignment.json").read_text())["rms_m"]
    assert m.alignment_rms_m == pytest.approx(rms) and rms > 0


def test_refinement_recovers_query_poses_from_a_metre_off(refinement_map, query):
    rows, camera = query
    refiner = Refiner(refinement_map)
    rng = np.random.default_rng(0)
    t_err, r_err = [], []
    for rgb, pos, q in rows:
        offset = rng.normal(size=3) * [0.6, 0.6, 0.1]
        prior_cov = np.diag([1.0, 1.0, 0.1, 0.05, 0.05, 0.05])
        out = refiner.refine(rgb, pos + offset, _rotate(q, 8.0), prior_cov, camera)
        assert out.success, out.reason
        assert out.inliers >= 30 and len(out.frames) >= 1
        t_err.append(position_errors(out.position[None], pos[None])[0])
        r_err.append(rotation_errors_deg(out.quat_wxyz[None], q[None])[0])
        assert np.all(np.linalg.eigvalsh(out.covariance) > 0)
        assert np.sqrt(out.covariance[0, 0]) < 0.1
        # the map's own error (its alignment RMS) bounds the refined pose's certainty
        assert out.covariance[0, 0] >= refinement_map.alignment_rms_m ** 2
    assert np.median(t_err) < 0.05, t_err
    assert np.median(r_err) < 1.0, r_err
    # the verification's disagreement is in the covariance, and only there
    rgb, pos, q = rows[0]
    args = (rgb, pos, q, np.diag([1.0, 1.0, 0.1, 0.05, 0.05, 0.05]), camera)
    with_d = refiner.refine(*args)
    without = Refiner(refinement_map, RefineConfig(disagreement_cov=False)).refine(*args)
    d_m, d_deg = with_d.disagreement
    assert with_d.success and 0 < d_m < 0.15 and 0 < d_deg < 2.0
    np.testing.assert_allclose(with_d.position, without.position)
    np.testing.assert_allclose(with_d.covariance - without.covariance,
                               np.diag([d_m**2] * 3 + [np.radians(d_deg) ** 2] * 3), atol=1e-12)


def _with_a_copy(m, shift: np.ndarray):
    """The map and a copy of it moved by ``shift``: a look-alike building next door."""
    moved = np.array(m.map_from_cam)
    moved[:, :3, 3] += shift
    n_points = len(m.points)
    return replace(
        m, names=np.concatenate([m.names, [f"copy-{n}" for n in m.names]]),
        map_from_cam=np.concatenate([m.map_from_cam, moved]),
        points=np.concatenate([m.points, np.asarray(m.points) + shift.astype(np.float32)]),
        offsets=np.concatenate([m.offsets, m.offsets[1:] + m.offsets[-1]]),
        frame_points=np.concatenate([m.frame_points, np.asarray(m.frame_points) + n_points]),
        desc_codes=np.concatenate([m.desc_codes, m.desc_codes]),
        global_desc=np.concatenate([m.global_desc, m.global_desc]))


def test_an_image_that_fits_a_look_alike_place_as_well_is_not_refined(refinement_map, query):
    """With an exact copy of the map 12 m away (look-alike rooms), each query image fits
    both places and passes the verification in either: refinement refuses to guess, and
    says why. Without the copy it refines, and the check finds no twin."""
    rows, camera = query
    copy = _with_a_copy(refinement_map, np.array([12.0, 0.0, 0.0]))
    # matched only against the frames around the prior (no retrieval, which would also
    # pick the copy's frames and lose the matches to the ratio test): the check's case
    near_prior = RefineConfig(k_retrieval=0, retrieval_rounds=1)
    doubled, single = Refiner(copy, near_prior), Refiner(refinement_map, near_prior)
    prior_cov = np.diag([1.0, 1.0, 0.1, 0.05, 0.05, 0.05])
    for rgb, pos, q in rows:
        one = single.refine(rgb, pos + [0.3, -0.3, 0.0], q, prior_cov, camera)
        both = doubled.refine(rgb, pos + [0.3, -0.3, 0.0], q, prior_cov, camera)
        assert one.success and "lookalike" in one.stages_s, one.reason  # checked, no twin
        assert not both.success and "ambiguous: a look-alike place 12.0 m away" in both.reason
        # with retrieval too it never refines either
        assert not Refiner(copy).refine(rgb, pos, q, prior_cov, camera).success
    off = Refiner(copy, replace(near_prior, lookalike_check=False))
    rgb, pos, q = rows[0]
    assert off.refine(rgb, pos, q, prior_cov, camera).success  # the check is what refuses
    with pytest.raises(ConfigError, match="lookalike"):
        RefineConfig(lookalike_ratio=0.0)


def test_sift_on_a_shrunk_query_keeps_full_size_keypoints(refinement_map, query):
    rows, camera = query
    full, small = Refiner(refinement_map), Refiner(refinement_map,
                                                   RefineConfig(max_image_size=240))
    t_err = []
    for rgb, pos, q in rows:
        prior_cov = np.diag([1.0, 1.0, 0.1, 0.05, 0.05, 0.05])
        a = full.refine(rgb, pos + [0.3, -0.3, 0.0], q, prior_cov, camera)
        b = small.refine(rgb, pos + [0.3, -0.3, 0.0], q, prior_cov, camera)
        assert b.stages_s["features"] > 0
        if b.success:  # the keypoints were scaled back: the same pose as at full size
            t_err.append(position_errors(b.position[None], pos[None])[0])
            if a.success:
                assert position_errors(a.position[None], b.position[None])[0] < 0.1
    assert len(t_err) >= len(rows) // 2 and np.median(t_err) < 0.05, t_err
    with pytest.raises(ConfigError, match="max_image_size"):
        RefineConfig(max_image_size=10)


def test_refinement_models_the_lens_distortion(refinement_map, query):
    """The same query frames refined as if the lens were an ideal pinhole land decimetres off."""
    rows, camera = query
    assert camera.distortion and refinement_map.camera.distortion == camera.distortion
    errors = {}
    for label, cam in (("lens", camera), ("pinhole", replace(camera, distortion=()))):
        refiner = Refiner(refinement_map)
        errors[label] = np.median([position_errors(refiner.refine(
            rgb, pos, q, np.diag([1.0, 1.0, 0.1, 0.05, 0.05, 0.05]), cam).position[None],
            pos[None])[0] for rgb, pos, q in rows])
    assert errors["lens"] < 0.05 and errors["pinhole"] > 2 * errors["lens"] + 0.05, errors


def test_refinement_failures_return_the_prior_with_a_reason(refinement_map, query):
    rows, camera = query
    rgb, pos, q = rows[0]
    cov = np.eye(6) * 0.01
    noise = np.random.default_rng(1).integers(0, 256, rgb.shape, dtype=np.uint8)
    flat = np.full_like(rgb, 128)
    for img in (flat, noise):
        out = Refiner(refinement_map).refine(img, pos + 0.3, q, cov, camera)
        assert not out.success and out.reason
        np.testing.assert_allclose(out.position, pos + 0.3)
        # the position as claimed; the rotation not confirmed by the map: heading unknown
        np.testing.assert_allclose(out.covariance[:3, :], cov[:3, :])
        np.testing.assert_allclose(np.sqrt(np.diag(out.covariance)[3:]), np.pi, rtol=1e-6)
    kept = Refiner(refinement_map, RefineConfig(unrefined_rotation_sigma_deg=0.0))
    np.testing.assert_allclose(kept.refine(flat, pos, q, cov, camera).covariance, cov)
    some = Refiner(refinement_map, RefineConfig(unrefined_rotation_sigma_deg=10.0))
    np.testing.assert_allclose(np.degrees(np.sqrt(np.diag(
        some.refine(flat, pos, q, cov, camera).covariance)[3:])), 10.0)
    # the optional gate on the regressed pose: a prior 1.5 m off with a tight covariance
    strict = Refiner(refinement_map, RefineConfig(gate_sigma=4.0, gate_min_m=0.5))
    out = strict.refine(rgb, pos + [1.5, 0, 0], q, cov, camera)
    assert not out.success and "from the regressed one" in out.reason


def test_refinement_rests_on_the_map_not_on_a_wrong_prior(refinement_map, query):
    """A prior metres off, turned away and claiming a tight covariance does not stop a pose
    the map supports: retrieval picks the frames and verification around the solution
    confirms it (by default the regressed pose only proposes candidate frames)."""
    rows, camera = query
    refiner = Refiner(refinement_map)
    turned = Rotation.from_euler("z", 120, degrees=True).as_matrix()
    accepted = []
    for rgb, pos, q in rows:
        far = pos + np.array([4.0, -3.0, 0.5])
        q_far = quat_wxyz_from_rotmat(turned @ rotmat_from_quat_wxyz(q))
        out = refiner.refine(rgb, far, q_far, np.eye(6) * 0.01, camera)
        if out.success:
            accepted.append(position_errors(out.position[None], pos[None])[0])
    assert len(accepted) >= 0.8 * len(rows), f"{len(accepted)}/{len(rows)} refined"
    assert max(accepted) < 0.25, accepted


def test_a_pose_carried_by_part_of_the_image_is_refused(refinement_map, query):
    """Inliers from the top half of the image only cover 8 of 16 grid cells: refused when
    the configured spread asks for more, accepted (and right) when it does not."""
    rows, camera = query
    rgb, pos, q = rows[len(rows) // 2]
    half = np.zeros_like(rgb)
    half[: rgb.shape[0] // 2] = rgb[: rgb.shape[0] // 2]
    cov = np.eye(6) * 0.01
    out = Refiner(refinement_map, RefineConfig(min_inliers=12, min_spread=0.6)).refine(
        half, pos, q, cov, camera)
    assert not out.success and "cover" in out.reason, out.reason
    out = Refiner(refinement_map, RefineConfig(min_inliers=12, min_spread=0.25)).refine(
        half, pos, q, cov, camera)
    assert out.success, out.reason
    assert position_errors(out.position[None], pos[None])[0] < 0.25


def test_covariance_from_inliers_matches_the_spread_of_noisy_solutions():
    """The Gauss-Newton covariance predicts how much PnP solutions scatter under pixel noise."""
    rng = np.random.default_rng(3)
    params = np.array([300.0, 300.0, 160.5, 120.5])
    cam = pycolmap.Camera(model="PINHOLE", width=320, height=240, params=params)
    rot = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])  # map_from_cam, looking along +y
    centre = np.array([1.0, 2.0, 1.5])
    pts_cam = np.column_stack([rng.uniform(-2, 2, 80), rng.uniform(-1.5, 1.5, 80),
                               rng.uniform(3, 8, 80)])
    pts = pts_cam @ rot.T + centre
    clean = pts_cam[:, :2] / pts_cam[:, 2:] * params[:2] + params[2:]
    centres, cov = [], None
    for _ in range(60):
        noisy = clean + rng.normal(scale=1.0, size=clean.shape)
        res = pycolmap.estimate_and_refine_absolute_pose(noisy, pts, cam)
        m = np.eye(4)
        m[:3, :] = res["cam_from_world"].matrix()
        r = m[:3, :3].T
        c = -r @ m[:3, 3]
        centres.append(c)
        if cov is None:
            cov = pose_covariance_from_inliers(noisy, pts, r, c, params)
    spread = np.std(np.array(centres), axis=0)
    predicted = np.sqrt(np.diag(cov)[:3])
    assert np.all(spread < 2.0 * predicted) and np.all(spread > 0.5 * predicted), (
        spread, predicted)


def test_config_and_map_errors(tmp_path, sfm_building):
    with pytest.raises(ConfigError, match="unknown"):
        RefineConfig.from_dict({"k_poses": 3})
    with pytest.raises(ConfigError, match="min_inliers"):
        RefineConfig(min_inliers=2)
    with pytest.raises(ConfigError, match="unrefined_rotation_sigma_deg"):
        RefineConfig(unrefined_rotation_sigma_deg=200.0)
    with pytest.raises(RefinementError, match="refinement-map"):
        load_refinement_map(tmp_path)
    with pytest.raises(RefinementError, match="camera-pose sfm"):
        build_refinement_map(tmp_path)
    (tmp_path / REFINEMENT_MAP).write_bytes(b"not an npz")
    with pytest.raises(RefinementError, match="cannot read"):
        load_refinement_map(tmp_path)
    with pytest.raises(RefinementError, match="looked at"):
        find_refinement_map(tmp_path / "sub" / "model.pt", {"dataset": str(tmp_path / "x")})
    # beside the checkpoint wins, then the provenance dataset
    assert find_refinement_map(tmp_path / "model.pt", {}) == tmp_path / REFINEMENT_MAP
    _, data = sfm_building
    assert find_refinement_map(tmp_path / "sub" / "model.pt", {"dataset": str(data)}) == (
        data / REFINEMENT_MAP)


def test_cli_localize_refine_and_evaluate_both_modes(sfm_building, map_checkpoint, venv_bin,
                                                     tmp_path):
    synth, data = sfm_building
    ckpt, cfg = map_checkpoint
    cli = str(venv_bin / "camera-pose")
    out = tmp_path / "refined.csv"
    proc = subprocess.run([cli, "-q", "localize", "--checkpoint", str(ckpt), "--bag",
                           str(synth / "query"), "--out", str(out), "--mode", "refine",
                           "--refine-config", str(cfg)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = read_poses(out)
    assert {"refined", "inliers", "cov_00"} <= set(table.extra)
    assert np.mean([v == "1" for v in table.extra["refined"]]) >= 0.75
    err = compare_with_ground_truth(out, synth / "gt_query.csv")
    assert err["median_position_m"] < 0.05 and err["median_rotation_deg"] < 1.0, err

    metrics_path = tmp_path / "eval" / "metrics.json"
    proc = subprocess.run([cli, "-q", "evaluate", "--checkpoint", str(ckpt), "--data",
                           str(data), "--out", str(metrics_path.parent), "--refine-config",
                           str(cfg)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads(metrics_path.read_text())
    modes = metrics["modes"]
    assert set(modes) == {"regress", "refine"}
    assert modes["refine"]["median_position_m"] < modes["regress"]["median_position_m"]
    assert modes["refine"]["split_frames_excluded_from_matching"] is True
    assert (metrics_path.parent / "predictions_test_refined.csv").is_file()

    # refine mode without any map: a one-line error, exit status 2
    proc = subprocess.run([cli, "-q", "localize", "--checkpoint", str(ckpt), "--bag",
                           str(synth / "query"), "--out", str(tmp_path / "x.csv"), "--mode",
                           "refine", "--map", str(tmp_path / "nowhere")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "refinement map" in proc.stderr
    assert not (tmp_path / "x.csv").exists()


def test_verification_frames_are_those_that_see_what_the_solution_sees():
    """Frames are picked by what they observe inside the solution's view, not by distance:
    a frame facing the camera, one behind the wall it looks at and one looking away are
    not verification frames, however near."""
    from camera_pose_ros.camera import PinholeCamera
    from camera_pose_ros.io.refmap import RefinementMap, compact_descriptors
    from camera_pose_ros.runtime.refine import _Solution

    g = np.linspace(-1.0, 1.0, 5)
    wall = np.array([(x, y, 4.0) for x in g for y in g])  # seen by a camera at 0 looking +z
    beyond = wall + [0.0, 0.0, 4.0]  # the next room, behind the wall
    aside = np.array([(5.0, y, z) for y in g for z in g])  # off to the side (+x)
    points = np.concatenate([wall, beyond, aside]).astype(np.float32)
    looks = {"+z": np.eye(3), "-z": np.diag([-1.0, 1.0, -1.0]),
             "+x": np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])}
    frames = [  # (centre, looks, points observed)
        ((0.0, 0.0, 0.2), "+x", np.arange(50, 75)),  # nearest, looking away
        ((0.0, 0.0, 6.0), "-z", np.arange(0, 25)),  # facing the camera: the wall's far side
        ((0.0, 0.0, 5.0), "+z", np.arange(25, 50)),  # behind the wall
        ((0.0, 0.0, -1.0), "+z", np.arange(0, 25)),  # sees all of the wall
        ((0.5, 0.0, 0.5), "+z", np.arange(0, 25, 4)),  # sees some of it
    ]
    poses = np.tile(np.eye(4), (len(frames), 1, 1))
    for i, (c, way, _) in enumerate(frames):
        poses[i, :3, :3], poses[i, :3, 3] = looks[way], c
    rng = np.random.default_rng(0)
    codes, mean, basis, scale = compact_descriptors(
        np.arange(len(points)), rng.integers(0, 255, (len(points), 128)).astype(np.uint8),
        len(points))
    obs = [f[2] for f in frames]
    rmap = RefinementMap(
        names=np.array([f"{i}.png" for i in range(len(frames))]), map_from_cam=poses,
        camera=PinholeCamera(320, 240, 260.0, 260.0, 159.5, 119.5), points=points,
        offsets=np.concatenate([[0], np.cumsum([len(o) for o in obs])]),
        frame_points=np.concatenate(obs).astype(np.int32), desc_codes=codes, desc_mean=mean,
        desc_basis=basis, desc_scale=scale,
        vocabulary=rng.normal(size=(4, 128)).astype(np.float32), idf=np.ones(4, np.float32),
        global_desc=np.eye(len(frames), 4, dtype=np.float32))
    cam = pycolmap.Camera(model="PINHOLE", width=320, height=240,
                          params=[260.0, 260.0, 159.5, 119.5])
    sol = _Solution(np.eye(3), np.zeros(3), np.zeros((25, 2)), wall, 25, np.arange(25))
    pick = Refiner(rmap, RefineConfig(k_verify=4)).verification_frames
    assert pick(sol, cam).tolist() == [3, 4]  # most of the view first; none seeing nothing
    assert pick(sol, cam, frozenset({3})).tolist() == [4]
    assert Refiner(rmap, RefineConfig(k_verify=1)).verification_frames(sol, cam).tolist() == [3]
    turned = _Solution(looks["+x"], np.zeros(3), np.zeros((25, 2)), aside, 25, np.arange(25))
    assert pick(turned, cam).tolist() == [0]  # looking at the side wall: the frame that does


def test_a_refused_pose_sends_the_search_on_unless_the_image_is_ambiguous(refinement_map,
                                                                          query):
    """The first frames' pose refused by the map's checks: the next retrieved frames are
    tried (and the strongest refused pose is reported when none passes); a look-alike
    refusal ends the search."""
    rows, camera = query
    rgb, pos, q = rows[len(rows) // 3]
    cov = np.diag([1.0, 1.0, 0.1, 0.05, 0.05, 0.05])

    class RefusesFirst(Refiner):
        """The real checks, after refusing the first pose that reaches them."""

        def __init__(self, *args, reason: str = "refused for the test", **kwargs):
            super().__init__(*args, **kwargs)
            self.reason, self.checked = reason, []

        def _check(self, sol, frames, *args):
            self.checked.append(frames.tolist())
            if len(self.checked) == 1:
                return self.reason, None
            return super()._check(sol, frames, *args)

    on = RefusesFirst(refinement_map, RefineConfig(retrieval_rounds=2))
    out = on.refine(rgb, pos, q, cov, camera)
    assert out.success and len(on.checked) == 2 and on.checked[0] != on.checked[1]
    assert position_errors(out.position[None], pos[None])[0] < 0.1
    one_round = RefusesFirst(refinement_map, RefineConfig(retrieval_rounds=1))
    out = one_round.refine(rgb, pos, q, cov, camera)
    assert not out.success and out.reason == "refused for the test" and out.inliers >= 30
    twins = RefusesFirst(refinement_map, RefineConfig(retrieval_rounds=2),
                         reason="ambiguous: a look-alike place 6.0 m away fits too")
    out = twins.refine(rgb, pos, q, cov, camera)
    assert not out.success and out.reason.startswith("ambiguous") and len(twins.checked) == 1
