"""``camera-pose evaluate`` and ``camera-pose localize``.

Evaluation predicts every frame of a split, compares with its poses, and writes JSON
metrics (medians, means, threshold shares, the trivial baseline of always predicting the
mean training pose, uncertainty coverage), the predictions CSV, the cumulative error plot
and the predicted trajectory over the floor plan beside the ground truth.
Localization predicts every frame of a bag, video or image folder into a pose CSV.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from camera_pose_ros.dataset.frames import FrameSource
from camera_pose_ros.dataset.maps import FloorPlan
from camera_pose_ros.dataset.plots import plot_trajectories
from camera_pose_ros.dataset.posecsv import PoseTable, read_poses, write_poses
from camera_pose_ros.errors import InputDataError
from camera_pose_ros.fileio import atomic_path, write_json_atomic
from camera_pose_ros.geometry import rotation_errors_deg
from camera_pose_ros.learning.checkpoint import load_checkpoint
from camera_pose_ros.learning.data import load_split, poses_tensor
from camera_pose_ros.learning.predict import Predictor
from camera_pose_ros.learning.uncertainty import coverage, error_vectors
from camera_pose_ros.metrics import error_summary

__all__ = ["evaluate", "localize", "prediction_table", "plot_error_cdf", "COV_COLUMNS",
           "compare_with_ground_truth"]

log = logging.getLogger(__name__)

COV_COLUMNS = [f"cov_{i}{j}" for i in range(6) for j in range(i, 6)]


def prediction_table(stamps_ns: np.ndarray, poses_N7: np.ndarray, cov_N66: np.ndarray,
                     images: list[str] | None = None) -> PoseTable:
    """A pose table with the upper triangle of each covariance as ``cov_ij`` columns."""
    iu = np.triu_indices(6)
    extra = {name: [f"{v:.9g}" for v in cov_N66[:, i, j]]
             for name, i, j in zip(COV_COLUMNS, *iu, strict=True)}
    return PoseTable(np.asarray(stamps_ns, np.int64), poses_N7[:, :3], poses_N7[:, 3:],
                     images, extra)


def plot_error_cdf(path: str | os.PathLike, curves: dict[str, tuple[np.ndarray, np.ndarray]]
                   ) -> Path:
    """Cumulative distributions of position (m) and rotation (deg) errors, one line a curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    for name, (t_err, r_err) in curves.items():
        share = np.arange(1, len(t_err) + 1) / max(len(t_err), 1)
        ax1.plot(np.sort(t_err), share, label=name)
        ax2.plot(np.sort(r_err), share, label=name)
    ax1.set_xlabel("position error (m)")
    ax2.set_xlabel("rotation error (deg)")
    ax1.set_ylabel("share of frames")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def _predict_batches(predictor: Predictor, images, batch: int, desc: str, progress: bool
                     ) -> tuple[np.ndarray, np.ndarray, float]:
    poses, covs, seconds = [], [], 0.0
    buf: list[np.ndarray] = []

    def flush() -> None:
        nonlocal seconds
        t0 = time.perf_counter()
        p, c = predictor.predict(buf)
        seconds += time.perf_counter() - t0
        poses.append(p)
        covs.append(c)
        buf.clear()

    for img in tqdm(images, desc=desc, unit="frame", disable=not progress):
        buf.append(img)
        if len(buf) == batch:
            flush()
    if buf:
        flush()
    if not poses:
        return np.zeros((0, 7)), np.zeros((0, 6, 6)), 0.0
    return np.concatenate(poses), np.concatenate(covs), seconds


def evaluate(checkpoint: str | os.PathLike, data: str | os.PathLike, *, split: str = "test",
             out: str | os.PathLike | None = None, device: str = "auto",
             progress: bool = True) -> Path:
    """Evaluate ``checkpoint`` on ``DATA/<split>.csv``; write metrics JSON and figures.

    Returns the metrics JSON path (``out``, default ``DATA/eval_<split>/metrics.json``).
    """
    import cv2

    data = Path(data)
    out = Path(out) if out else data / f"eval_{split}" / "metrics.json"
    loaded = load_checkpoint(checkpoint)
    predictor = Predictor(loaded, device=device)
    table = load_split(data, split)
    gt = poses_tensor(table).double().numpy()

    def images():
        for name in table.images:
            bgr = cv2.imread(str(data / "images" / name), cv2.IMREAD_COLOR)
            if bgr is None:
                raise InputDataError(f"cannot read image {data / 'images' / name}")
            yield bgr[:, :, ::-1]

    pred, cov, seconds = _predict_batches(predictor, images(), 16, f"evaluate {split}",
                                          progress)
    metrics = {"split": split, "checkpoint": str(checkpoint),
               **error_summary(pred[:, :3], pred[:, 3:], gt[:, :3], gt[:, 3:])}
    metrics["ms_per_frame"] = 1000.0 * seconds / max(len(pred), 1)
    t_err = np.linalg.norm(pred[:, :3] - gt[:, :3], axis=1)
    curves = {"model": (t_err, rotation_errors_deg(pred[:, 3:], gt[:, 3:]))}
    if (data / "train.csv").exists():  # trivial baseline: always the mean training pose
        train = poses_tensor(load_split(data, "train")).double().numpy()
        mean = np.concatenate([train[:, :3].mean(0), _mean_quat(train[:, 3:])])
        base = np.repeat(mean[None], len(gt), 0)
        metrics["baseline_mean_pose"] = error_summary(base[:, :3], base[:, 3:], gt[:, :3],
                                                      gt[:, 3:])
        metrics["improvement_over_baseline"] = (
            metrics["baseline_mean_pose"]["median_position_m"]
            / max(metrics["median_position_m"], 1e-9))
        curves["mean training pose"] = (
            np.linalg.norm(base[:, :3] - gt[:, :3], axis=1),
            rotation_errors_deg(base[:, 3:], gt[:, 3:]))
    metrics["uncertainty"] = coverage(error_vectors(pred, gt), cov)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_poses(out.parent / f"predictions_{split}.csv",
                prediction_table(table.stamps_ns, pred, cov, table.images))
    plot_error_cdf(out.parent / f"error_cdf_{split}.png", curves)
    plan_path = data / "floorplan.yaml"
    plan = FloorPlan.load(plan_path) if plan_path.exists() else None
    plot_trajectories(out.parent / f"trajectory_{split}.png",
                      {"ground truth": gt[:, :3], "predicted": pred[:, :3]}, floorplan=plan,
                      title=f"{split}: median {metrics['median_position_m']:.2f} m, "
                            f"{metrics['median_rotation_deg']:.1f} deg")
    log.info("evaluate %s: median %.3f m, %.2f deg over %d frames", split,
             metrics["median_position_m"], metrics["median_rotation_deg"], len(pred))
    return write_json_atomic(out, metrics)


def _mean_quat(q_N4: np.ndarray) -> np.ndarray:
    """Average rotation (principal eigenvector of sum q q^T), canonical sign."""
    m = q_N4.T @ q_N4
    w, v = np.linalg.eigh(m)
    q = v[:, -1]
    return q if q[0] >= 0 else -q


def localize(checkpoint: str | os.PathLike, source: FrameSource, out: str | os.PathLike, *,
             device: str = "auto", batch: int = 16, progress: bool = True) -> Path:
    """Predict every frame of ``source`` into a pose CSV with covariance columns."""
    predictor = Predictor(load_checkpoint(checkpoint), device=device)
    stamps: list[int] = []

    def images():
        for stamp_ns, rgb in source.frames():
            stamps.append(stamp_ns)
            yield rgb

    pred, cov, seconds = _predict_batches(predictor, images(), batch, "localize", progress)
    if len(pred) == 0:
        raise InputDataError("the source has no frames to localize")
    path = write_poses(out, prediction_table(np.array(stamps), pred, cov))
    log.info("localized %d frames (%.1f ms per frame)", len(pred),
             1000 * seconds / len(pred))
    return path


def compare_with_ground_truth(pred_csv: str | os.PathLike, gt_csv: str | os.PathLike,
                              max_dt: float = 1e-3) -> dict:
    """Error summary of a prediction CSV against a ground-truth CSV, matched by stamp."""
    from camera_pose_ros.metrics import match_by_stamp

    pred, gt = read_poses(pred_csv), read_poses(gt_csv)
    ip, ig = match_by_stamp(pred.stamps, gt.stamps, max_dt)
    return error_summary(pred.positions_N3[ip], pred.quats_wxyz_N4[ip], gt.positions_N3[ig],
                         gt.quats_wxyz_N4[ig])
