"""SfM stage: image pairs checked against the robot's rough poses (``DATA/priors.csv``)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from camera_pose_ros.dataset.consistency import find_disagreements
from camera_pose_ros.dataset.frames import FrameSource, extract_frames, read_frames_csv
from camera_pose_ros.dataset.sfm import (
    PRIORS_CSV,
    FramePriors,
    SfMConfig,
    check_pairs,
    load_frame_priors,
    load_sfm_model,
    run_sfm,
    with_floorplan_views,
)
from camera_pose_ros.dataset.synth import write_synthetic_building
from camera_pose_ros.errors import ConfigError
from camera_pose_ros.geometry import look_at_rotation, quat_wxyz_from_rotmat, umeyama_sim3
from camera_pose_ros.io.floorplan import FloorPlan
from camera_pose_ros.io.posecsv import PoseTable, read_poses, write_poses
from camera_pose_ros.metrics import match_by_stamp

T0_NS = 1_700_000_000_000_000_000


def _frames_csv(data, n: int, period_ns: int = 100_000_000) -> list[str]:
    names = [f"{i:06d}.jpg" for i in range(n)]
    data.mkdir(parents=True, exist_ok=True)
    (data / "frames.csv").write_text("image,stamp\n" + "".join(
        f"{name},{(T0_NS + i * period_ns) / 1e9:.9f}\n" for i, name in enumerate(names)))
    return names


def _facing(yaw_deg: float) -> np.ndarray:
    """``map_from_cam`` of a level camera looking along ``yaw_deg``."""
    yaw = np.radians(yaw_deg)
    return look_at_rotation(np.array([np.cos(yaw), np.sin(yaw), 0.0]))


def test_priors_are_matched_by_name_and_interpolated_over_short_gaps(tmp_path):
    names = _frames_csv(tmp_path, 10)
    rows = [0, 1, 2, 4, 8, 9]  # frame 3: a dropped message; 5-7: 0.4 s without localization
    write_poses(tmp_path / PRIORS_CSV, PoseTable(
        np.array([T0_NS + i * 100_000_000 for i in rows]),
        np.array([[float(i), 0.0, 1.5] for i in rows]),
        np.array([quat_wxyz_from_rotmat(_facing(10.0 * i)) for i in rows]),
        [names[i] for i in rows]))
    priors = load_frame_priors(tmp_path, max_gap_s=0.25)
    assert priors is not None and priors.names == names
    assert priors.known.tolist() == [True] * 5 + [False] * 3 + [True] * 2
    assert priors.centres_N3[3] == pytest.approx([3.0, 0.0, 1.5])
    axis = priors.map_from_cam_N33[3][:, 2]
    assert np.degrees(np.arctan2(axis[1], axis[0])) == pytest.approx(30.0, abs=1e-3)
    # with a longer allowed gap the stretch without localization is bridged too
    assert load_frame_priors(tmp_path, max_gap_s=0.5).known.all()


def test_priors_without_an_image_column_are_matched_by_stamp(tmp_path):
    _frames_csv(tmp_path, 4)
    write_poses(tmp_path / PRIORS_CSV, PoseTable(
        np.array([T0_NS + 3 * 100_000_000 + 4_000_000, T0_NS + 100_000_000 - 3_000_000]),
        np.array([[3.0, 0.0, 0.0], [1.0, 0.0, 0.0]]),
        np.array([[1.0, 0, 0, 0], [1.0, 0, 0, 0]])))
    priors = load_frame_priors(tmp_path, max_dt=0.005, max_gap_s=0.0)
    assert priors.known.tolist() == [False, True, False, True]
    assert priors.centres_N3[1, 0] == 1.0 and priors.centres_N3[3, 0] == 3.0
    assert load_frame_priors(tmp_path / "nowhere") is None


def _line_priors(n: int = 40, spacing: float = 0.5) -> FramePriors:
    """Frames walking along x, every ``spacing`` m, all looking along +x."""
    return FramePriors([f"{i:06d}.jpg" for i in range(n)],
                       np.array([[spacing * i, 0.0, 1.5] for i in range(n)]),
                       np.array([_facing(0.0)] * n))


def _relative(priors: FramePriors, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """The true ``cam2_from_cam1`` (camera 1 = frame a) as a verified pair would give it."""
    ra, rb = priors.map_from_cam_N33[a], priors.map_from_cam_N33[b]
    t = rb.T @ (priors.centres_N3[a] - priors.centres_N3[b])
    return rb.T @ ra, t / np.linalg.norm(t)  # two-view geometry has no scale


def test_pairs_far_apart_or_facing_away_are_dropped_outside_the_sequential_chain():
    priors = _line_priors()
    priors.map_from_cam_N33[30] = _facing(180.0)  # turned round
    cfg = SfMConfig(sequential_overlap=6)
    n = priors.names
    reasons = check_pairs([(n[0], n[6]), (n[0], n[10]), (n[0], n[13]), (n[20], n[30]),
                           (n[25], n[30])], priors, cfg)
    # 3 m and 5 m apart are kept (a corridor's far end); 6.5 m apart is too far; a camera
    # turned round sees other walls; the chain (6 frames) is not checked for either
    assert reasons == ["", "", "far", "facing", ""]


def test_a_frame_without_prior_keeps_only_its_sequential_pairs():
    priors = _line_priors()
    priors.centres_N3[12] = np.nan
    n = priors.names
    assert check_pairs([(n[12], n[15]), (n[12], n[19]), (n[30], n[31]), ("other.jpg", n[0])],
                       priors, SfMConfig(sequential_overlap=6)) == ["", "unchecked", "", ""]


def test_verified_pairs_whose_relative_pose_contradicts_the_priors_are_dropped():
    priors = _line_priors()
    n = priors.names
    pairs = [(n[0], n[8]), (n[2], n[10]), (n[4], n[12]), (n[6], n[8])]
    good = [_relative(priors, 0, 8), _relative(priors, 2, 10), _relative(priors, 4, 12),
            _relative(priors, 6, 8)]
    turned = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    poses = [good[0],
             (good[1][0] @ turned, good[1][1]),  # matched as if turned a quarter round
             (good[2][0], np.array([1.0, 0.0, 0.0])),  # the other camera seen sideways
             (good[3][0], np.array([1.0, 0.0, 0.0]))]  # the same, 1 m apart: not checked
    assert check_pairs(pairs, priors, SfMConfig(), cam2_from_cam1=poses) == [
        "", "rotation", "direction", ""]
    # the sequential chain is not exempt from the relative-pose checks
    assert check_pairs([(n[6], n[8])], priors, SfMConfig(),
                       cam2_from_cam1=[(good[3][0] @ turned, good[3][1])]) == ["rotation"]


def test_a_one_metre_localization_jump_does_not_drop_a_true_pair():
    priors = _line_priors()
    n = priors.names
    truth = _relative(priors, 0, 8)  # 4 m apart
    priors.centres_N3[8] += [0.0, 1.0, 0.0]  # AMCL put frame 8 a metre to the side
    priors.centres_N3[0] += [0.0, -1.0, 0.0]  # and frame 0 a metre to the other
    priors.map_from_cam_N33[8] = _facing(3.0)  # and turned it by 3 degrees
    assert check_pairs([(n[0], n[8])], priors, SfMConfig(), cam2_from_cam1=[truth]) == [""]


def test_pairs_with_a_wall_between_them_are_dropped_when_the_dataset_has_a_floor_plan(tmp_path):
    """Look-alike rooms side by side: cameras 3 m apart looking the same way, close enough
    and turned alike enough for the prior checks, but a wall between them: no common floor."""
    occ = np.zeros((40, 80), np.int8)  # 4 x 8 m at 10 cm, a wall at x = 4 m
    occ[[0, -1], :] = 100
    occ[:, [0, -1, 40]] = 100
    n = 20
    centres = np.array([[2.5 + 3.0 * (i >= 10), 0.5 + 0.1 * (i % 10), 1.5] for i in range(n)])
    priors = FramePriors([f"{i:06d}.jpg" for i in range(n)], centres,
                         np.array([_facing(80.0)] * n))
    names = priors.names
    pairs = [(names[0], names[10]), (names[0], names[9]), (names[5], names[10]),
             (names[10], names[19])]
    assert check_pairs(pairs, priors, SfMConfig()) == ["", "", "", ""]  # no plan
    assert with_floorplan_views(tmp_path, priors) is priors  # the dataset has none
    FloorPlan(occ, 0.1, (0.0, 0.0)).save(tmp_path / "floorplan.yaml")
    walled = with_floorplan_views(tmp_path, priors)
    assert walled.digest != priors.digest  # another plan matches again
    # across the wall: dropped; the same room: kept; the sequential chain: kept
    assert check_pairs(pairs, walled, SfMConfig()) == ["walls", "", "", ""]
    assert check_pairs(pairs, walled, SfMConfig(sequential_overlap=10)) == ["", "", "", ""]


@pytest.mark.parametrize("key", ["prior_max_distance", "prior_max_angle_deg",
                                 "prior_max_rotation_deg", "prior_min_baseline"])
def test_prior_thresholds_must_be_positive(key):
    with pytest.raises(ConfigError, match=key):
        SfMConfig(**{key: 0.0})


@pytest.mark.slow
def test_priors_keep_a_building_with_twin_corridors_from_folding(tmp_path):
    """The twin building's far corridor repeats the near one: without priors SfM joins them
    (a fold that registers every frame at a sub-pixel error); with the robot's rough poses
    (5 cm, 1 deg, two 1 m jumps, a few frames without) the look-alike pairs are dropped and
    every frame lies where it was."""
    synth = write_synthetic_building(tmp_path / "synth", scenario="twin", frames=160,
                                     query_frames=1, width=320, height=240, progress=False)
    data = tmp_path / "data"
    extract_frames(FrameSource(bag=synth / "mapping"), data, progress=False)
    names, stamps = read_frames_csv(data / "frames.csv")
    gt = read_poses(synth / "gt_mapping.csv")
    fi, gi = match_by_stamp(stamps / 1e9, gt.stamps, max_dt=1e-3)
    assert len(fi) == len(names)
    rng = np.random.default_rng(0)
    pos = gt.positions_N3[gi] + rng.normal(0, 0.05, (len(gi), 3))
    pos[20:40] += [1.0, 0.0, 0.0]
    pos[100:110] += [0.0, -1.0, 0.0]
    rot = Rotation.from_rotvec(np.radians(1.0) * rng.normal(0, 1, (len(gi), 3))) * (
        Rotation.from_quat(gt.quats_wxyz_N4[gi][:, [1, 2, 3, 0]]))
    keep = np.ones(len(gi), bool)
    keep[[5, 50, 51, 120]] = False
    write_poses(data / PRIORS_CSV, PoseTable(
        stamps[fi][keep], pos[keep], rot.as_quat()[keep][:, [3, 0, 1, 2]],
        [names[i] for i in fi[keep]]))

    def folds(folder):
        model = load_sfm_model(folder)
        row = {name: i for i, name in enumerate(names)}
        idx = np.array([row[name] for name in model.names])
        truth = gt.positions_N3[gi[np.searchsorted(fi, idx)]]
        found = find_disagreements(stamps[idx], model.sfm_from_cam[:, :3, 3], truth,
                                   threshold_m=1.0)
        return len(model.names), found

    run_sfm(data)
    without = tmp_path / "without"
    shutil.copytree(data, without)
    (without / PRIORS_CSV).unlink()  # the same features, matched and mapped again
    run_sfm(without)

    summary = json.loads((data / "sfm" / "summary.json").read_text())
    registered, found = folds(data)
    assert registered == len(names) and summary["registered_ratio"] == 1.0
    assert found.segments == [] and not found.isolated.any()
    assert sum(summary["priors"]["pairs_dropped"].values()) > 0
    assert summary["priors"]["frames_with_prior"] == len(names)  # 4 gaps interpolated
    registered, found = folds(without)
    assert json.loads((without / "sfm" / "summary.json").read_text())["priors"] is None
    # folded: a stretch of the walk over 1 m from the truth (its length depends on which
    # frames keyframing keeps at the turns)
    assert sum(s.frames for s in found.segments) >= 0.1 * len(names)


@pytest.mark.slow
def test_an_exif_focal_length_is_a_prior_the_mapping_refines(tmp_path):
    """Photos whose EXIF says 30 mm (277 px at 320x240) of a lens that has 262.4 px: the SfM
    starts from it, refines it, and camera.json then holds the refined intrinsics (the prior
    kept beside them); the report names the source."""
    from PIL import Image

    from camera_pose_ros.io.bags import iter_bag_images

    synth = write_synthetic_building(tmp_path / "synth", frames=50, query_frames=1,
                                     width=320, height=240, loops=0.6, progress=False)
    photos = tmp_path / "photos"
    photos.mkdir()
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 30
    for i, frame in enumerate(iter_bag_images(synth / "mapping", "/camera/image_raw")):
        Image.fromarray(frame.image_rgb).save(photos / f"IMG_{i:04d}.jpg", quality=95,
                                              exif=exif.tobytes())
    data = tmp_path / "data"
    extract_frames(FrameSource(images=photos), data, progress=False)
    prior_fx = json.loads((data / "camera.json").read_text())["fx"]
    assert prior_fx == pytest.approx(30 * 400 / np.hypot(36, 24))
    run_sfm(data)
    summary = json.loads((data / "sfm" / "summary.json").read_text())
    cam = json.loads((data / "camera.json").read_text())
    true_fx = 0.82 * 320
    assert summary["intrinsics_source"] == "exif" and cam["source"] == "exif"
    assert cam["prior"]["fx"] == prior_fx and cam["refined_by"] == "sfm"
    assert cam["fx"] == summary["camera"]["fx"]
    assert abs(cam["fx"] - true_fx) < 0.3 * abs(prior_fx - true_fx)


@pytest.mark.slow
def test_the_global_mapper_maps_the_same_walk_from_the_same_matches(sfm_building, tmp_path):
    """``mapper: global`` (GLOMAP) maps the test building again from the incremental run's
    features and matches: every frame registered, the camera path within centimetres of the
    truth after a similarity alignment, as the incremental model is."""
    synth, built = sfm_building
    data = tmp_path / "data"
    shutil.copytree(built, data)
    names, stamps = read_frames_csv(data / "frames.csv")
    gt = read_poses(synth / "gt_mapping.csv")

    def path_error_m(folder) -> tuple[int, float]:
        model = load_sfm_model(folder)
        row = {name: i for i, name in enumerate(names)}
        fi, gi = match_by_stamp(stamps[[row[n] for n in model.names]] / 1e9, gt.stamps,
                                max_dt=1e-3)
        centres = model.sfm_from_cam[fi, :3, 3]
        sim = umeyama_sim3(centres, gt.positions_N3[gi])
        return len(model.names), float(np.median(np.linalg.norm(
            sim.apply(centres) - gt.positions_N3[gi], axis=1)))

    registered_inc, err_inc = path_error_m(data)
    with pytest.raises(ConfigError, match="mapper"):
        SfMConfig(mapper="magic")
    run_sfm(data, SfMConfig(mapper="global"))
    summary = json.loads((data / "sfm" / "summary.json").read_text())
    assert summary["mapper"] == "global" and summary["registered_ratio"] >= 0.95
    registered, err = path_error_m(data)
    assert registered >= 0.95 * registered_inc
    assert err < 0.05 and err_inc < 0.05, (err, err_inc)


@pytest.mark.parametrize(("mapper", "frames", "registered", "hint"), [
    ("incremental", 2919, 418, True), ("incremental", 100, 70, False),
    ("global", 2919, 418, False)])
def test_a_stalled_incremental_mapping_is_refused_with_the_global_mapper_as_the_way_out(
        tmp_path, mapper, frames, registered, hint):
    """Too few frames registered stops the dataset; when the incremental mapper left most of
    a walk out (it stops at the first weak link), the reason names the global mapper."""
    from camera_pose_ros.errors import SfMError

    data = tmp_path / "data"
    (data / "sfm").mkdir(parents=True)
    (data / "frames.csv").write_text("image,stamp\n" + "".join(
        f"{i:06d}.jpg,{100 + i}.0\n" for i in range(frames)))
    for step, info in (("features", {}), ("matches", {"priors": None}),
                       ("mapping", {"mapper": mapper})):
        (data / "sfm" / f".{step}.done").write_text(json.dumps(info))
    (data / "sfm" / "summary.json").write_text(json.dumps({
        "mapper": mapper, "frames": frames, "registered": registered,
        "registered_ratio": registered / frames}))
    with pytest.raises(SfMError, match=f"registered only {registered} of {frames}") as err:
        run_sfm(data, SfMConfig(mapper=mapper, use_priors=False))
    assert ("`--mapper global`" in str(err.value)) == hint
