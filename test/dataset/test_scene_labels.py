"""camera_pose_ros.dataset.scene_labels against the SfM model and the aligned poses."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pycolmap
import pytest

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.dataset.scene_labels import build_scene_labels
from camera_pose_ros.errors import BagError, FormatError, InputDataError
from camera_pose_ros.io.posecsv import read_poses
from camera_pose_ros.io.scenelabels import SCENE_LABELS, load_scene_labels, save_scene_labels

pytestmark = pytest.mark.slow


def test_labels_are_the_models_observations_in_the_map_frame(sfm_building):
    synth, data = sfm_building
    labels = load_scene_labels(data)  # the dataset command wrote them
    rec = pycolmap.Reconstruction(data / "sfm" / "model")
    registered = sorted(im.name for im in rec.images.values() if im.has_pose)
    assert list(labels.names) == registered
    observed = sum(sum(p.has_point3D() for p in im.points2D) for im in rec.images.values()
                   if im.has_pose)
    assert 0.95 * observed <= labels.offsets[-1] <= observed
    assert labels.image_size == (320, 240)
    # each label projects onto its pixel through the frame's aligned pose and the lens, and
    # its depth is the point's z in that camera
    camera = PinholeCamera.from_dict(json.loads((data / "camera.json").read_text()))
    poses = read_poses(data / "poses.csv")
    row = {n: i for i, n in enumerate(poses.images)}
    errors, depth_err = [], []
    for i, name in enumerate(labels.names):
        uv, xyz, depth = labels.frame(i)
        k = row[name]
        from camera_pose_ros.geometry import rotmat_from_quat_wxyz

        rot = rotmat_from_quat_wxyz(poses.quats_wxyz_N4[k])
        p_cam = (xyz - poses.positions_N3[k]) @ rot
        xy = camera.distort_normalized(p_cam[:, :2] / p_cam[:, 2:3])
        px = xy * [camera.fx, camera.fy] + [camera.cx, camera.cy]
        errors.append(np.linalg.norm(px - uv, axis=1))
        depth_err.append(np.abs(p_cam[:, 2] - depth))
    errors, depth_err = np.concatenate(errors), np.concatenate(depth_err)
    assert np.median(errors) < 1.0 and errors.max() <= 4.0 + 1e-3
    assert depth_err.max() < 1e-3
    # and the map points are where the building is: against the synthetic ground truth
    gt = read_poses(synth / "gt_mapping.csv")
    assert np.all(labels.depth > 0)
    lo, hi = gt.positions_N3.min(0) - 8, gt.positions_N3.max(0) + 8
    inside = np.all((labels.xyz >= lo) & (labels.xyz <= hi), axis=1)
    assert inside.mean() > 0.99  # SfM keeps a few stray points; the labels are the model's


def test_the_command_recomputes_labels_and_refuses_without_a_model(sfm_building, tmp_path,
                                                                   venv_bin):
    _, data = sfm_building
    copy = tmp_path / "data"
    shutil.copytree(data, copy, ignore=shutil.ignore_patterns("images"))
    (copy / SCENE_LABELS).unlink()
    out = subprocess.run([str(venv_bin / "camera-pose"), "-q", "scene-labels", "--data",
                          str(copy)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    again = load_scene_labels(copy)
    assert np.array_equal(again.uv, load_scene_labels(data).uv)
    out = subprocess.run([str(venv_bin / "camera-pose"), "scene-labels", "--data", str(copy),
                          "--depth-topic", "/camera/nope"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert "no depth topic '/camera/nope'" in out.stderr
    shutil.rmtree(copy / "sfm")
    out = subprocess.run([str(venv_bin / "camera-pose"), "scene-labels", "--data", str(copy)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "camera-pose sfm" in out.stderr
    with pytest.raises(InputDataError, match="camera-pose sfm"):
        build_scene_labels(copy)


def test_damaged_or_foreign_label_files_are_refused(sfm_building, tmp_path):
    _, data = sfm_building
    labels = load_scene_labels(data)
    with pytest.raises(InputDataError, match="camera-pose scene-labels"):
        load_scene_labels(tmp_path)
    (tmp_path / SCENE_LABELS).write_bytes(b"not a zip")
    with pytest.raises(FormatError):
        load_scene_labels(tmp_path)
    labels.offsets = labels.offsets.copy()
    labels.offsets[-1] += 5
    save_scene_labels(tmp_path / "bad.npz", labels)
    with pytest.raises(FormatError, match="do not fit"):
        load_scene_labels(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", names=np.array(["a"]))
    with pytest.raises(FormatError, match="not a scene-label file"):
        load_scene_labels(tmp_path / "other.npz")


def _fixture_renderer():
    """The renderer of the ``sfm_building`` fixture's building and lens (see conftest)."""
    from camera_pose_ros.dataset.synth import Building, BuildingSpec, Renderer
    from test.conftest import LENS_DISTORTION

    f = 0.82 * 320
    camera = PinholeCamera(320, 240, f, f, 159.5, 119.5,
                           tuple(float(v) for v in LENS_DISTORTION))
    return Renderer(Building(BuildingSpec(scale=0.7, seed=1)), camera), camera


def test_dense_labels_from_a_registered_depth_topic_lie_on_the_true_surfaces(
        sfm_building, tmp_path):
    from camera_pose_ros.geometry import rotmat_from_quat_wxyz
    from camera_pose_ros.io.bags import BagImageWriter, depth_image_message

    synth, data = sfm_building
    renderer, camera = _fixture_renderer()
    gt = read_poses(synth / "gt_mapping.csv")
    bag = tmp_path / "depth_bag"
    with BagImageWriter(bag) as writer:  # a depth camera beside the mapping walk's frames
        for stamp, pos, q in zip(gt.stamps_ns, gt.positions_N3, gt.quats_wxyz_N4,
                                 strict=True):
            pose = np.eye(4)
            pose[:3, :3], pose[:3, 3] = rotmat_from_quat_wxyz(q), pos
            _, depth = renderer.render_with_depth(pose)
            writer.write_message("/camera/depth/image_raw", "sensor_msgs/msg/Image",
                                 int(stamp), depth_image_message(int(stamp), "cam", depth))
    out = build_scene_labels(data, out=tmp_path / "labels.npz", depth_bag=bag)  # auto topic
    labels, sparse = load_scene_labels(out), load_scene_labels(data)
    assert labels.source == "sfm+depth" and sparse.source == "sfm"
    assert list(labels.names) == list(sparse.names)
    added = np.diff(labels.offsets) - np.diff(sparse.offsets)
    assert np.all(added > 0.9 * (320 // 8) * (240 // 8))  # one per 8x8 cell, nearly all
    # every dense label, seen from the frame's true pose through the true lens, has the
    # depth the depth camera measured: the aligned pose and the SfM camera carry it there
    gt_row = {int(s): i for i, s in enumerate(gt.stamps_ns)}
    from camera_pose_ros.dataset.frames import read_frames_csv

    names, stamps = read_frames_csv(data / "frames.csv")
    stamp_of = dict(zip(names, stamps, strict=True))
    errs = []
    for i, name in enumerate(labels.names):
        a = int(sparse.offsets[i + 1] - sparse.offsets[i])
        uv, xyz, depth = (v[a:] for v in labels.frame(i))
        k = gt_row[int(stamp_of[name])]
        rot = rotmat_from_quat_wxyz(gt.quats_wxyz_N4[k])
        p_cam = (xyz - gt.positions_N3[k]) @ rot
        errs.append(np.abs(p_cam[:, 2] - depth))
        xy = camera.distort_normalized(p_cam[:, :2] / p_cam[:, 2:3])
        px = xy * [camera.fx, camera.fy] + [camera.cx, camera.cy]
        errs.append(np.linalg.norm(px - uv, axis=1) * depth / camera.fx)  # metres sideways
    err = np.concatenate(errs)
    assert np.median(err) < 0.03 and np.percentile(err, 95) < 0.10
    # a depth topic that is not there is an error when named, quietly skipped on auto
    with pytest.raises(BagError, match="no depth topic"):
        build_scene_labels(data, out=tmp_path / "x.npz", depth_bag=bag,
                           depth_topic="/camera/other/depth")
    build_scene_labels(data, out=tmp_path / "y.npz", depth_bag=synth / "mapping")
    assert load_scene_labels(tmp_path / "y.npz").source == "sfm"
