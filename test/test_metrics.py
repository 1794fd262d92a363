"""Honesty of covariances: coverage, outside-99% shares, confidently wrong frames.

The metric itself on seeded Gaussian errors drawn from known covariances and hand-built
cases; then where it is reported: ``localize --ground-truth`` and ``evaluate``.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from camera_pose_ros.io.posecsv import read_poses
from camera_pose_ros.metrics import (
    CHI2_3_99,
    block_mahalanobis_sq,
    covariance_columns,
    covariances_from_columns,
    honesty_summary,
    pose_error_vectors,
    refinement_summary,
)
from test.conftest import write_random_checkpoint

HONESTY_KEYS = {"outside_99_position", "outside_99_rotation", "outside_99_any",
                "coverage_68_position", "coverage_95_position", "coverage_68_rotation",
                "coverage_95_rotation", "overconfident_1m_0.5m", "median_claimed_sigma_m"}


def _random_spd(rng: np.random.Generator, scale: float) -> np.ndarray:
    a = rng.normal(size=(3, 3))
    return scale * (a @ a.T + 0.3 * np.eye(3))


def _samples(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 6) errors drawn from (N, 6, 6) block covariances (position m, rotation rad)."""
    cov = np.zeros((n, 6, 6))
    err = np.zeros((n, 6))
    for i in range(n):
        cp, cr = _random_spd(rng, 0.2), _random_spd(rng, 1e-3)
        cov[i, :3, :3], cov[i, 3:, 3:] = cp, cr
        err[i, :3] = rng.multivariate_normal(np.zeros(3), cp)
        err[i, 3:] = rng.multivariate_normal(np.zeros(3), cr)
    return err, cov


def test_gaussian_errors_from_their_own_covariance_cover_nominally():
    err, cov = _samples(np.random.default_rng(7), 4000)
    h = honesty_summary(err, cov)
    for block in ("position", "rotation"):
        assert h[f"coverage_68_{block}"] == pytest.approx(0.683, abs=0.03)
        assert h[f"coverage_95_{block}"] == pytest.approx(0.954, abs=0.015)
        assert h[f"outside_99_{block}"] == pytest.approx(0.01, abs=0.006)
    # either block outside: 1 - 0.99^2 for independent blocks
    assert h["outside_99_any"] == pytest.approx(0.0199, abs=0.008)
    assert h["invalid_covariance"] == 0.0
    assert h["frames"] == 4000


def test_a_scaled_down_covariance_is_mostly_outside_99():
    err, cov = _samples(np.random.default_rng(3), 1000)
    small = cov.copy()
    small[:, :3, :3] /= 25.0  # claims 5x smaller position sigma than the errors have
    h = honesty_summary(err, small)
    assert h["outside_99_position"] > 0.6
    assert h["coverage_68_position"] < 0.25
    assert h["outside_99_any"] >= h["outside_99_position"]
    # the rotation block was left honest
    assert h["outside_99_rotation"] < 0.03


def test_singular_and_non_finite_covariances_count_as_outside_never_nan():
    err = np.full((4, 6), 1e-3)
    cov = np.stack([np.eye(6) * 0.01] * 4)
    cov[0, :3, :3] = 0.0  # singular position block (a zero covariance)
    cov[1, 2, 2] = 0.0  # rank 2: z variance zero
    cov[2, 3, 3] = np.nan  # non-finite rotation block
    # frame 3 is honest: tiny error, 10 cm sigma
    d_pos, d_rot = block_mahalanobis_sq(err, cov)
    assert np.isinf(d_pos[0]) and np.isinf(d_pos[1]) and np.isfinite(d_pos[2:]).all()
    assert np.isinf(d_rot[2]) and np.isfinite(d_rot[[0, 1, 3]]).all()
    h = honesty_summary(err, cov)
    assert h["outside_99_position"] == pytest.approx(0.5)
    assert h["outside_99_rotation"] == pytest.approx(0.25)
    assert h["outside_99_any"] == pytest.approx(0.75)
    assert h["coverage_68_position"] == pytest.approx(0.5)
    assert h["invalid_covariance"] == pytest.approx(0.75)
    text = json.dumps(h, allow_nan=False)  # raises on NaN or infinity
    assert "NaN" not in text
    # a non-finite error vector (a NaN prediction) is outside as well
    err[3, 0] = np.nan
    assert honesty_summary(err, cov)["outside_99_any"] == pytest.approx(1.0)


def test_overconfident_counts_frames_over_1m_off_claiming_under_half_a_metre():
    err = np.zeros((5, 6))
    cov = np.zeros((5, 6, 6))
    cov[:, 3:, 3:] = np.eye(3) * 1e-4
    # 0: 2 m off, claims 0.3 m (largest axis)         -> confidently wrong
    # 1: 2 m off, claims 0.2 m on x but 0.8 m on y     -> not (largest sigma 0.8 m)
    # 2: 0.5 m off, claims 0.1 m                      -> not (not over 1 m off)
    # 3: 1.5 m off along z, claims 0.49 m             -> confidently wrong
    # 4: 3 m off, singular covariance (claims 0 m)    -> confidently wrong
    err[0, 0], err[1, 1], err[2, 0], err[3, 2], err[4, 0] = 2.0, 2.0, 0.5, 1.5, 3.0
    cov[0, :3, :3] = np.diag([0.3, 0.1, 0.1]) ** 2
    cov[1, :3, :3] = np.diag([0.2, 0.8, 0.1]) ** 2
    cov[2, :3, :3] = np.diag([0.1, 0.1, 0.1]) ** 2
    cov[3, :3, :3] = np.diag([0.2, 0.2, 0.49]) ** 2
    h = honesty_summary(err, cov)
    assert h["overconfident_1m_0.5m"] == pytest.approx(3 / 5)
    assert h["wrong_1m"] == pytest.approx(4 / 5)
    assert h["median_claimed_sigma_m"] == pytest.approx(0.3)


def test_errors_and_covariances_of_different_frames_are_a_named_error():
    from camera_pose_ros.errors import InputDataError

    with pytest.raises(InputDataError, match="3 errors but 2 covariances"):
        honesty_summary(np.zeros((3, 6)), np.stack([np.eye(6)] * 2))


def test_empty_input_gives_zeros_not_nan():
    h = honesty_summary(np.zeros((0, 6)), np.zeros((0, 6, 6)))
    assert h["frames"] == 0
    json.dumps(h, allow_nan=False)


def test_error_vectors_are_position_difference_and_map_frame_rotation_vector():
    gt_q = Rotation.from_euler("xyz", [10, -20, 30], degrees=True)
    d = Rotation.from_rotvec([0.0, 0.0, 0.1])  # 0.1 rad about the map's z axis
    pred_q = d * gt_q
    xyzw = np.stack([pred_q.as_quat(), gt_q.as_quat()])
    wxyz = np.concatenate([xyzw[:, 3:], xyzw[:, :3]], 1)
    e = pose_error_vectors(np.array([[1.0, 2.0, 3.0]]), -wxyz[:1],  # sign-blind
                           np.array([[1.5, 2.0, 2.0]]), wxyz[1:])
    assert np.allclose(e[0, :3], [-0.5, 0.0, 1.0])
    assert np.allclose(e[0, 3:], [0.0, 0.0, 0.1], atol=1e-9)


def test_covariance_columns_round_trip():
    rng = np.random.default_rng(0)
    cov = np.stack([np.block([[_random_spd(rng, 1.0), np.zeros((3, 3))],
                              [np.zeros((3, 3)), _random_spd(rng, 0.1)]]) for _ in range(3)])
    cols = covariance_columns(cov)
    assert len(cols) == 21 and set(cols) >= {"cov_00", "cov_05", "cov_55"}
    back = covariances_from_columns(cols)
    assert np.allclose(back, cov, rtol=1e-8)
    assert covariances_from_columns({"refined": ["1"]}) is None
    cols["cov_11"][1] = "nan"
    assert np.isnan(covariances_from_columns(cols)[1, 1, 1])


def test_refinement_summary_false_acceptance_among_accepted():
    t_err = np.array([0.01, 0.02, 0.30, 2.0, 0.01])
    accepted = np.array([True, True, True, False, False])
    r = refinement_summary(t_err, accepted)
    assert r["refined_share"] == pytest.approx(3 / 5)
    assert r["accepted_frames"] == 3
    assert r["false_acceptance_25cm"] == pytest.approx(1 / 3)
    none = refinement_summary(t_err, np.zeros(5, bool))
    assert none["false_acceptance_25cm"] == 0.0 and none["accepted_frames"] == 0


def test_chi2_bound_is_the_99_percent_quantile_of_3_dof():
    assert CHI2_3_99 == pytest.approx(11.345, abs=1e-3)


# --- where the metric is reported -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_query(tmp_path_factory):
    """A small synthetic query walk and a random tiny network (metres off, as a rule)."""
    from camera_pose_ros.dataset.synth import write_synthetic_building

    root = tmp_path_factory.mktemp("honesty")
    synth = write_synthetic_building(root / "synth", seed=4, frames=10, query_frames=6,
                                     width=128, height=96, progress=False)
    ckpt = write_random_checkpoint(root / "model.pt", seed=0)
    return synth, ckpt


def _expected(pred_csv, gt_csv) -> dict:
    """Honesty figures recomputed here from the two CSV files."""
    pred, gt = read_poses(pred_csv), read_poses(gt_csv)
    from camera_pose_ros.metrics import match_by_stamp

    ip, ig = match_by_stamp(pred.stamps, gt.stamps)
    err = pose_error_vectors(pred.positions_N3[ip], pred.quats_wxyz_N4[ip],
                             gt.positions_N3[ig], gt.quats_wxyz_N4[ig])
    cov = covariances_from_columns(pred.extra)[ip]
    return honesty_summary(err, cov)


@pytest.mark.slow
def test_cli_localize_with_ground_truth_writes_honesty_metrics(tiny_query, venv_bin, tmp_path):
    synth, ckpt = tiny_query
    cli = str(venv_bin / "camera-pose")
    out = tmp_path / "pred.csv"
    proc = subprocess.run([cli, "-q", "localize", "--checkpoint", str(ckpt), "--bag",
                           str(synth / "query"), "--out", str(out), "--device", "cpu",
                           "--ground-truth", str(synth / "gt_query.csv")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file()
    text = (tmp_path / "pred.metrics.json").read_text()
    m = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the metrics"))
    assert HONESTY_KEYS <= set(m)
    assert m["frames"] == 6 and m["mode"] == "regress" and m["ms_per_frame"] > 0
    for key in ("median_position_m", "within_25cm_2deg", "within_100cm_10deg"):
        assert key in m
    assert "refined_share" not in m
    exp = _expected(out, synth / "gt_query.csv")
    for key in HONESTY_KEYS:
        assert m[key] == pytest.approx(exp[key], abs=1e-6), key
    assert "outside 99%" in proc.stderr  # the one-line summary

    # a random network claiming centimetres while metres off is confidently wrong
    assert m["median_claimed_sigma_m"] < 0.5 and m["median_position_m"] > 1.0
    assert m["overconfident_1m_0.5m"] > 0.5 and m["outside_99_any"] > 0.5

    # ground truth of other stamps: nothing to compare, a named error (CLI: status 2)
    from camera_pose_ros.dataset.frames import FrameSource
    from camera_pose_ros.errors import InputDataError
    from camera_pose_ros.io.posecsv import PoseTable, write_poses
    from camera_pose_ros.runtime.batch import localize_source
    from camera_pose_ros.runtime.localizer import Localizer

    gt = read_poses(synth / "gt_query.csv")
    write_poses(tmp_path / "other.csv", PoseTable(gt.stamps_ns + 10**9, gt.positions_N3,
                                                  gt.quats_wxyz_N4))
    with pytest.raises(InputDataError, match="stamp"):
        localize_source(Localizer(ckpt, device="cpu"), FrameSource(bag=synth / "query"),
                        tmp_path / "p2.csv", progress=False,
                        ground_truth=tmp_path / "other.csv")
    assert not (tmp_path / "p2.metrics.json").exists()


@pytest.mark.slow
def test_localize_refine_with_ground_truth_reports_refined_share_and_false_acceptance(
        sfm_building, map_checkpoint, venv_bin, tmp_path):
    synth, _ = sfm_building
    ckpt, cfg = map_checkpoint
    out = tmp_path / "refined.csv"
    proc = subprocess.run([str(venv_bin / "camera-pose"), "-q", "localize", "--checkpoint",
                           str(ckpt), "--bag", str(synth / "query"), "--out", str(out),
                           "--mode", "refine", "--refine-config", str(cfg),
                           "--ground-truth", str(synth / "gt_query.csv")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((tmp_path / "refined.metrics.json").read_text())
    table = read_poses(out)
    refined = np.array([v == "1" for v in table.extra["refined"]])
    assert m["mode"] == "refine" and m["frames"] == len(table)
    assert m["refined_share"] == pytest.approx(refined.mean())
    assert m["accepted_frames"] == int(refined.sum()) > 0
    gt = read_poses(synth / "gt_query.csv")
    t_err = np.linalg.norm(table.positions_N3 - gt.positions_N3, axis=1)
    assert m["false_acceptance_25cm"] == pytest.approx(np.mean(t_err[refined] > 0.25))
    # honesty over every published pose (regressed ones where refinement failed)
    exp = _expected(out, synth / "gt_query.csv")
    for key in HONESTY_KEYS:
        assert m[key] == pytest.approx(exp[key], abs=1e-6), key


@pytest.mark.slow
def test_evaluate_reports_honesty_for_both_modes(sfm_building, map_checkpoint, tmp_path,
                                                 caplog):
    import logging

    from camera_pose_ros.config import load_yaml
    from camera_pose_ros.io.refmap import load_refinement_map
    from camera_pose_ros.learning.evaluate import evaluate
    from camera_pose_ros.runtime.refine import RefineConfig, Refiner

    _, data = sfm_building
    ckpt, cfg = map_checkpoint
    refiner = Refiner(load_refinement_map(data), RefineConfig.from_dict(load_yaml(cfg)))
    with caplog.at_level(logging.INFO, logger="camera_pose_ros"):
        path = evaluate(ckpt, data, out=tmp_path / "eval", device="cpu", progress=False,
                        refiner=refiner)
    m = json.loads(path.read_text())
    assert HONESTY_KEYS <= set(m)  # the top level stays the regressed figures
    for mode in ("regress", "refine"):
        assert HONESTY_KEYS <= set(m["modes"][mode]), mode
        assert m["modes"][mode]["frames"] == m["frames"]
    ref = m["modes"]["refine"]
    assert {"false_acceptance_25cm", "accepted_frames", "refined_share"} <= set(ref)
    # the regressed figures agree with the predictions CSV evaluate wrote
    exp = _expected(path.parent / "predictions_test.csv", data / "test.csv")
    for key in HONESTY_KEYS:
        assert m[key] == pytest.approx(exp[key], abs=1e-6), key
    log_text = "\n".join(r.getMessage() for r in caplog.records)
    assert "| regress |" in log_text and "| refine |" in log_text
