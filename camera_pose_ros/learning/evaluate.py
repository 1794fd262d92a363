"""``camera-pose evaluate``, and the pose-table metrics ``camera-pose localize`` reports.

Evaluation predicts every frame of a split, compares with its poses, and writes JSON
metrics (medians, means, threshold shares, the trivial baseline of always predicting the
mean training pose, uncertainty coverage), the predictions CSV, the cumulative error plot
and the predicted trajectory over the floor plan beside the ground truth. It takes an
optional refiner (``runtime.refine.Refiner``, made by ``runtime.localizer.load_refiner``
and handed in by the caller: this layer does not import the runtime) for the ``refine``
mode: each regressed pose is then refined against the SfM map, and evaluation reports both
modes side by side.

Localizing a bag, video or image folder is the runtime's job
(:mod:`camera_pose_ros.runtime.batch`, through the same ``Localizer`` as the node); it
writes its pose CSV with :func:`prediction_table` and compares it with ground truth with
:func:`table_metrics`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from camera_pose_ros.errors import CameraPoseError, InputDataError
from camera_pose_ros.fileio import atomic_path, write_json_atomic
from camera_pose_ros.geometry import rotation_errors_deg
from camera_pose_ros.io.coverage import NearestViews, load_mapped_views, nearest_view_summary
from camera_pose_ros.io.figures import plot_trajectories
from camera_pose_ros.io.floorplan import FloorPlan
from camera_pose_ros.io.posecsv import PoseTable, read_poses, write_poses
from camera_pose_ros.learning.checkpoint import load_checkpoint
from camera_pose_ros.learning.data import load_split, poses_tensor
from camera_pose_ros.learning.predict import Predictor
from camera_pose_ros.learning.uncertainty import coverage, error_vectors
from camera_pose_ros.metrics import (
    covariances_from_columns,
    error_summary,
    honesty_summary,
    match_by_stamp,
    pose_error_vectors,
    refinement_summary,
    summary_table,
)

__all__ = ["evaluate", "prediction_table", "plot_error_cdf", "COV_COLUMNS",
           "compare_with_ground_truth", "table_metrics", "PoseRefiner", "EVAL_MODES"]

log = logging.getLogger(__name__)

COV_COLUMNS = [f"cov_{i}{j}" for i in range(6) for j in range(i, 6)]
EVAL_MODES = ("regress", "refine", "both")


class PoseRefiner(Protocol):
    """What evaluation needs of a refiner (``runtime.refine.Refiner`` is one)."""

    def refine(self, image_rgb: np.ndarray, position: np.ndarray, quat_wxyz: np.ndarray,
               covariance: np.ndarray, camera: Any = None, exclude: tuple[str, ...] = ()
               ) -> Any:
        """An outcome with success, position, quat_wxyz, covariance, inliers, latency_s."""


class _Refined:
    """Refined poses collected batch by batch."""

    def __init__(self, refiner: PoseRefiner, camera: Any = None,
                 exclude: tuple[str, ...] = ()) -> None:
        self.refiner, self.camera, self.exclude = refiner, camera, exclude
        self.poses: list[np.ndarray] = []
        self.covs: list[np.ndarray] = []
        self.success: list[bool] = []
        self.inliers: list[int] = []
        self.seconds = 0.0

    def __call__(self, images: list[np.ndarray], poses: np.ndarray, covs: np.ndarray) -> None:
        for img, pose, cov in zip(images, poses, covs, strict=True):
            out = self.refiner.refine(img, pose[:3], pose[3:], cov, self.camera, self.exclude)
            self.poses.append(np.concatenate([out.position, out.quat_wxyz]))
            self.covs.append(out.covariance)
            self.success.append(bool(out.success))
            self.inliers.append(int(out.inliers))
            self.seconds += out.latency_s

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(N, 7) poses and (N, 6, 6) covariances."""
        return np.array(self.poses).reshape(-1, 7), np.array(self.covs).reshape(-1, 6, 6)

    def columns(self) -> dict[str, list[str]]:
        """Extra CSV columns: refined (0/1) and inliers."""
        return {"refined": [str(int(v)) for v in self.success],
                "inliers": [str(v) for v in self.inliers]}


class _Solved:
    """A structure-aware model's scr-pnp poses (PnP on its scene coordinates), collected
    batch by batch beside the direct poses."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.poses: list[np.ndarray] = []
        self.covs: list[np.ndarray] = []
        self.solved: list[np.ndarray] = []
        self.seconds = 0.0

    def __call__(self, images: list[np.ndarray], poses: np.ndarray, covs: np.ndarray) -> None:
        t0 = time.perf_counter()
        p, c = self.predictor.predict(images)
        self.seconds += time.perf_counter() - t0
        self.poses.append(p)
        self.covs.append(c)
        self.solved.append(self.predictor.last_solved.copy())

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, 7) poses, (N, 6, 6) covariances and (N,) solved flags."""
        if not self.poses:
            return np.zeros((0, 7)), np.zeros((0, 6, 6)), np.zeros(0, bool)
        return (np.concatenate(self.poses), np.concatenate(self.covs),
                np.concatenate(self.solved))


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


def _predict_batches(predictor: Predictor, images: Iterable[np.ndarray], batch: int, desc: str,
                     progress: bool, on_batch: Callable | None = None
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
        if on_batch is not None:
            on_batch(buf, p, c)
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
             progress: bool = True, refiner: PoseRefiner | None = None,
             exclude_split_from_map: bool = True, scr_pnp: bool = False) -> Path:
    """Evaluate ``checkpoint`` on ``DATA/<split>.csv``; write metrics JSON and figures.

    With a ``refiner`` every regressed pose is also refined and the JSON gains ``modes``:
    ``regress`` and ``refine`` side by side (the top level stays the regressed figures).
    ``exclude_split_from_map`` keeps refinement from matching the split's own frames, which
    are in the SfM map (their 3D points remain: a mild optimism, noted in the JSON).

    Each frame's distance from its true position to the nearest mapped view (the dataset's
    registered frames outside the split: :func:`camera_pose_ros.io.coverage.load_mapped_views`)
    goes into the predictions CSVs (``nearest_view_m``, ``nearest_view_angle_deg``,
    ``nearest_same_way_view_m``) and, summarised with the median error near and far from the
    map, into ``nearest_view`` of the JSON (and of ``modes.refine``).

    ``out`` is a folder (default ``DATA/eval_<split>/``): ``metrics.json``, the predictions
    CSVs and the figures go inside it; a refined-predictions CSV of an earlier run that this
    run does not write is removed, so the folder never mixes two runs.

    With ``scr_pnp`` (a structure-aware checkpoint) the poses PnP + RANSAC solves from the
    predicted scene coordinates are reported too, as ``modes.scr-pnp`` (the top level stays
    the network's direct pose), with ``predictions_<split>_scr_pnp.csv``.

    Returns the metrics JSON path (``OUT/metrics.json``).
    """
    import cv2

    data = Path(data)
    out = (Path(out) if out else data / f"eval_{split}") / "metrics.json"
    predictor_loaded = load_checkpoint(checkpoint)
    predictor = Predictor(predictor_loaded, device=device)
    table = load_split(data, split)
    gt = poses_tensor(table).double().numpy()

    def images():
        for name in table.images:
            bgr = cv2.imread(str(data / "images" / name), cv2.IMREAD_COLOR)
            if bgr is None:
                raise InputDataError(f"cannot read image {data / 'images' / name}")
            yield bgr[:, :, ::-1]

    refined = None
    if refiner is not None:
        refined = _Refined(refiner, exclude=tuple(table.images or ()) if exclude_split_from_map
                           else ())
    solved = _Solved(Predictor(predictor_loaded, device=device, solver="pnp")) if (
        scr_pnp) else None

    def on_batch(images: list[np.ndarray], poses: np.ndarray, covs: np.ndarray) -> None:
        for hook in (refined, solved):
            if hook is not None:
                hook(images, poses, covs)

    pred, cov, seconds = _predict_batches(predictor, images(), 16, f"evaluate {split}",
                                          progress, on_batch)
    metrics = {"split": split, "checkpoint": str(checkpoint),
               **error_summary(pred[:, :3], pred[:, 3:], gt[:, :3], gt[:, 3:])}
    metrics["ms_per_frame"] = 1000.0 * seconds / max(len(pred), 1)
    t_err = np.linalg.norm(pred[:, :3] - gt[:, :3], axis=1)
    curves = {"regressed": (t_err, rotation_errors_deg(pred[:, 3:], gt[:, 3:]))}
    tracks = {"ground truth": gt[:, :3], "regressed": pred[:, :3]}
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
    metrics.update(honesty_summary(_errors(pred, gt), cov))
    near = _nearest_views(data, table, gt)
    if near is not None:
        metrics["nearest_view"] = near[1] | nearest_view_summary(near[0],
                                                                 position_errors_m=t_err)
    table_rows = {"regress": metrics}
    out.parent.mkdir(parents=True, exist_ok=True)
    for hook, suffix in ((refined, "refined"), (solved, "scr_pnp")):
        stale = out.parent / f"predictions_{split}_{suffix}.csv"
        if hook is None and stale.exists():  # an earlier run's poses of that mode
            stale.unlink()
    table_p = prediction_table(table.stamps_ns, pred, cov, table.images)
    if near is not None:
        table_p.extra.update(near[0].columns())
    write_poses(out.parent / f"predictions_{split}.csv", table_p)
    title = (f"{split}: median {metrics['median_position_m']:.2f} m, "
             f"{metrics['median_rotation_deg']:.1f} deg")
    def add_mode(mode: str, label: str, suffix: str, poses: np.ndarray, covs: np.ndarray,
                 figures: dict, columns: dict[str, list[str]]) -> dict:
        """Metrics, curves, track and predictions CSV of one more mode beside regress."""
        nonlocal title
        m = {**error_summary(poses[:, :3], poses[:, 3:], gt[:, :3], gt[:, 3:]), **figures,
             "uncertainty": coverage(error_vectors(poses, gt), covs),
             **honesty_summary(_errors(poses, gt), covs)}
        table_rows[mode] = m
        metrics.setdefault("modes", {"regress": {k: v for k, v in metrics.items()
                                                 if k not in ("split", "checkpoint")}})
        metrics["modes"][mode] = m
        curves[label] = (np.linalg.norm(poses[:, :3] - gt[:, :3], axis=1),
                         rotation_errors_deg(poses[:, 3:], gt[:, 3:]))
        tracks[label] = poses[:, :3]
        rows = prediction_table(table.stamps_ns, poses, covs, table.images)
        rows.extra.update(columns)
        if near is not None:
            m["nearest_view"] = near[1] | nearest_view_summary(
                near[0], position_errors_m=curves[label][0])
            rows.extra.update(near[0].columns())
        write_poses(out.parent / f"predictions_{split}_{suffix}.csv", rows)
        title += (f"; {label} {m['median_position_m'] * 100:.1f} cm, "
                  f"{m['median_rotation_deg']:.2f} deg")
        return m

    if refined is not None:
        rp, rc = refined.arrays()
        ref = add_mode("refine", "refined", "refined", rp, rc, {
            "refined_share": float(np.mean(refined.success)) if refined.success else 0.0,
            "median_inliers": float(np.median(refined.inliers)) if refined.inliers else 0.0,
            "ms_per_frame": 1000.0 * (seconds + refined.seconds) / max(len(rp), 1),
            **refinement_summary(np.linalg.norm(rp[:, :3] - gt[:, :3], axis=1),
                                 np.array(refined.success, bool)),
            "split_frames_excluded_from_matching": bool(exclude_split_from_map)},
            refined.columns())
        log.info("evaluate %s refined: median %.3f m, %.2f deg, %.0f%% refined", split,
                 ref["median_position_m"], ref["median_rotation_deg"],
                 100 * ref["refined_share"])
    if solved is not None:
        sp, sc, ok = solved.arrays()
        spnp = add_mode("scr-pnp", "scr-pnp", "scr_pnp", sp, sc, {
            "solved_share": float(np.mean(ok)) if len(ok) else 0.0,
            "ms_per_frame": 1000.0 * solved.seconds / max(len(sp), 1)},
            {"pnp_solved": [str(int(v)) for v in ok]})
        log.info("evaluate %s scr-pnp: median %.3f m, %.2f deg, %.0f%% solved", split,
                 spnp["median_position_m"], spnp["median_rotation_deg"],
                 100 * spnp["solved_share"])
    plot_error_cdf(out.parent / f"error_cdf_{split}.png", curves)
    plan_path = data / "floorplan.yaml"
    plan = FloorPlan.load(plan_path) if plan_path.exists() else None
    plot_trajectories(out.parent / f"trajectory_{split}.png", tracks, floorplan=plan,
                      title=title)
    log.info("evaluate %s: median %.3f m, %.2f deg over %d frames", split,
             metrics["median_position_m"], metrics["median_rotation_deg"], len(pred))
    log.info("evaluate %s summary:\n%s", split, summary_table(table_rows))
    return write_json_atomic(out, metrics)


def _nearest_views(data: Path, table: PoseTable, gt_N7: np.ndarray
                   ) -> tuple[NearestViews, dict] | None:
    """Distances from each frame's true pose to the nearest mapped view of the dataset (its
    refinement map's frames, else ``poses.csv``) other than the split's own frames, and what
    they were measured against; None (logged) when the dataset has no mapped view left."""
    try:
        views = load_mapped_views(data).excluding(table.images or ())
    except CameraPoseError as exc:
        log.warning("no distance to the nearest mapped view: %s", exc)
        return None
    if len(views) == 0:
        log.warning("no distance to the nearest mapped view: every mapped frame is in the "
                    "evaluated split")
        return None
    return views.nearest(gt_N7[:, :3], gt_N7[:, 3:]), {
        "measured_from": "ground truth", "mapped_views": len(views), "source": views.source,
        "excluded": "the split's own frames"}


def _errors(pred_N7: np.ndarray, gt_N7: np.ndarray) -> np.ndarray:
    """(N, 6) position and rotation-vector errors (metrics.pose_error_vectors)."""
    return pose_error_vectors(pred_N7[:, :3], pred_N7[:, 3:], gt_N7[:, :3], gt_N7[:, 3:])


def _mean_quat(q_N4: np.ndarray) -> np.ndarray:
    """Average rotation (principal eigenvector of sum q q^T), canonical sign."""
    m = q_N4.T @ q_N4
    w, v = np.linalg.eigh(m)
    q = v[:, -1]
    return q if q[0] >= 0 else -q


def table_metrics(pred: PoseTable, gt: PoseTable, max_dt: float = 1e-3) -> dict:
    """Errors of ``pred`` against ``gt`` matched by stamp (within ``max_dt`` seconds).

    With covariance columns (``cov_ij``) the covariance honesty figures are added
    (:func:`camera_pose_ros.metrics.honesty_summary`), with a ``refined`` column the refined
    share and false acceptance rate (:func:`camera_pose_ros.metrics.refinement_summary`).
    """
    ip, ig = match_by_stamp(pred.stamps, gt.stamps, max_dt)
    out = error_summary(pred.positions_N3[ip], pred.quats_wxyz_N4[ip], gt.positions_N3[ig],
                        gt.quats_wxyz_N4[ig])
    if len(ip) == 0:
        return out
    cov = covariances_from_columns(pred.extra)
    if cov is not None:
        err = pose_error_vectors(pred.positions_N3[ip], pred.quats_wxyz_N4[ip],
                                 gt.positions_N3[ig], gt.quats_wxyz_N4[ig])
        out.update(honesty_summary(err, cov[ip]))
    if "refined" in pred.extra:
        accepted = np.array([pred.extra["refined"][i].strip() == "1" for i in ip], bool)
        t_err = np.linalg.norm(pred.positions_N3[ip] - gt.positions_N3[ig], axis=1)
        out.update(refinement_summary(t_err, accepted))
    return out


def compare_with_ground_truth(pred_csv: str | os.PathLike, gt_csv: str | os.PathLike,
                              max_dt: float = 1e-3) -> dict:
    """Error summary of a prediction CSV against a ground-truth CSV, matched by stamp.

    With covariance columns (``cov_ij``) the covariance honesty figures are added
    (:func:`camera_pose_ros.metrics.honesty_summary`), with a ``refined`` column the refined
    share and false acceptance rate (:func:`camera_pose_ros.metrics.refinement_summary`).
    """
    return table_metrics(read_poses(pred_csv), read_poses(gt_csv), max_dt)
