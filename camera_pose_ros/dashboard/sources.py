"""What the offline pages show: a checkpoint, its dataset, floor plan and evaluations.

:func:`find_sources` resolves what the dashboard was given (any of a checkpoint, a dataset
folder, a floor plan, evaluation folders) and fills in the rest from the checkpoint's
provenance. :func:`dataset_summary` and :func:`model_summary` turn what ``camera-pose
dataset`` and ``camera-pose evaluate`` wrote into the JSON the pages plot, including which
parts of the floor plan the mapping walk saw
(:func:`camera_pose_ros.io.coverage.view_coverage`). Nothing is written.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import chi2

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.errors import (
    CameraModelError,
    CameraPoseError,
    CheckpointError,
    InputDataError,
)
from camera_pose_ros.io.coverage import view_coverage
from camera_pose_ros.io.floorplan import FloorPlan
from camera_pose_ros.io.posecsv import PoseTable, read_poses
from camera_pose_ros.metrics import (
    block_mahalanobis_sq,
    covariances_from_columns,
    match_by_stamp,
    pose_error_vectors,
)

__all__ = ["DashboardSources", "find_sources", "dataset_summary", "model_summary",
           "floorplan_meta", "SPLITS"]

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
#: coverage levels of the calibration curve (share of errors inside the ellipsoid)
CALIBRATION_LEVELS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.683, 0.7, 0.8, 0.9, 0.954, 0.99)
#: checkpoint sections shown on the model page (the weights are not)
_CHECKPOINT_KEYS = ("model", "input", "map_frame", "created", "package_version",
                    "format_version", "pretrained", "weights_source", "provenance",
                    "metrics", "calibration", "config_id")


@dataclass
class DashboardSources:
    """The files behind the offline pages; ``problems`` says what is missing and why.

    Attributes:
        checkpoint: model file (``model.pt``), or None.
        checkpoint_meta: its sections without the weights, or None when it cannot be read.
        data: dataset folder (``camera-pose dataset`` output), or None.
        floorplan: map_server YAML, or None.
        evaluations: ``metrics.json`` files written by ``camera-pose evaluate``.
        refinement_map: explicit refinement map (file or dataset folder), or None.
        problems: one line per input that was given or expected but cannot be used.
    """

    checkpoint: Path | None = None
    checkpoint_meta: dict | None = None
    data: Path | None = None
    floorplan: Path | None = None
    evaluations: list[Path] = field(default_factory=list)
    refinement_map: Path | None = None
    problems: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        """JSON-safe summary (paths as strings)."""
        return {"checkpoint": _str(self.checkpoint), "data": _str(self.data),
                "floorplan": _str(self.floorplan),
                "evaluations": [str(p) for p in self.evaluations],
                "refinement_map": _str(self.refinement_map), "problems": list(self.problems)}


def _str(p: Path | None) -> str | None:
    return None if p is None else str(p)


def _checkpoint_meta(path: Path) -> dict:
    """The checkpoint's sections without its weights (validated by loading it)."""
    from camera_pose_ros.learning.checkpoint import load_checkpoint

    data = load_checkpoint(path).meta.to_payload()
    return {k: _plain(data[k]) for k in _CHECKPOINT_KEYS if k in data}


def _plain(value: object) -> object:
    """JSON-friendly copy: small arrays and tensors as lists, large ones as a description."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "shape") and hasattr(value, "tolist"):  # numpy array or torch tensor
        size = int(np.prod(tuple(value.shape)))
        return value.tolist() if size <= 16 else f"array of shape {tuple(value.shape)}"
    return value


def find_sources(checkpoint: str | os.PathLike | None = None,
                 data: str | os.PathLike | None = None,
                 floorplan: str | os.PathLike | None = None,
                 evaluations: list[str | os.PathLike] | tuple = (),
                 refinement_map: str | os.PathLike | None = None, *,
                 strict: bool = False) -> DashboardSources:
    """Resolve the dashboard's inputs; what is not given is found where possible.

    The dataset comes from the checkpoint's provenance, the floor plan from
    ``DATA/floorplan.yaml``, the evaluations from ``DATA/eval_*/metrics.json`` and
    ``eval_*/metrics.json`` beside the checkpoint. An input that was given but cannot be
    used raises with ``strict`` (the command line) and is listed in ``problems`` otherwise
    (a robot's dashboard starts anyway and says what is missing).

    Raises:
        CameraPoseError: with ``strict``, an explicit input is missing or unreadable.
    """
    src = DashboardSources()

    def problem(exc: CameraPoseError) -> None:
        if strict:
            raise exc
        src.problems.append(str(exc))
        log.warning("%s", exc)

    if checkpoint:
        src.checkpoint = Path(checkpoint)
        try:
            src.checkpoint_meta = _checkpoint_meta(src.checkpoint)
        except CheckpointError as exc:
            problem(exc)
    if data:
        src.data = Path(data)
        if not src.data.is_dir():
            problem(InputDataError(f"dataset folder not found: {src.data}"))
    elif src.checkpoint_meta is not None:
        prov = src.checkpoint_meta.get("provenance") or {}
        if prov.get("dataset"):
            guess = Path(prov["dataset"])
            if guess.is_dir():
                src.data = guess
            else:
                src.problems.append(f"the checkpoint's dataset {guess} is not on this machine: "
                                    "give it with --data")
    if floorplan:
        src.floorplan = Path(floorplan)
        try:
            FloorPlan.load(src.floorplan)
        except InputDataError as exc:
            problem(exc)
            src.floorplan = None
    elif src.data is not None and (src.data / "floorplan.yaml").is_file():
        src.floorplan = src.data / "floorplan.yaml"
    if refinement_map:
        src.refinement_map = Path(refinement_map)
        if not src.refinement_map.exists():
            problem(InputDataError(f"refinement map not found: {src.refinement_map}"))
    for e in evaluations:
        path = Path(e)
        path = path / "metrics.json" if path.is_dir() else path
        if path.is_file():
            src.evaluations.append(path)
        else:
            problem(InputDataError(f"no evaluation at {path}: run `camera-pose evaluate` "
                                   "first"))
    if not evaluations:
        roots = [r for r in (src.data, src.checkpoint.parent if src.checkpoint else None)
                 if r is not None and r.is_dir()]
        found = {p.resolve(): p for r in roots for p in sorted(r.glob("eval_*/metrics.json"))}
        src.evaluations = list(found.values())
    return src


# -- floor plan and dataset ------------------------------------------------------------------
def floorplan_meta(plan: FloorPlan) -> dict:
    """Placement of the plan's picture in the map frame (the PNG's top row is largest y)."""
    h, w = plan.occupancy.shape
    xmin, xmax, ymin, ymax = plan.extent()
    return {"width": int(w), "height": int(h), "resolution": float(plan.resolution),
            "origin": [float(plan.origin[0]), float(plan.origin[1])],
            "extent": [float(xmin), float(xmax), float(ymin), float(ymax)]}


def _xy(table: PoseTable, breaks: bool = False) -> list:
    """[[x, y], ...] rounded to mm; with ``breaks`` a None wherever time jumps."""
    xy = np.round(table.positions_N3[:, :2], 3).tolist()
    if breaks and len(table) > 2:
        dt = np.diff(table.stamps_ns.astype(float))
        med = float(np.median(dt))
        for i in sorted(np.flatnonzero(dt > 3 * med) + 1, reverse=True):
            xy.insert(int(i), None)
    return xy


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InputDataError(f"{what} not found: {path}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputDataError(f"{path}: unreadable {what} ({exc})") from exc


def _camera(data: Path) -> PinholeCamera | None:
    try:
        return PinholeCamera.from_dict(json.loads((data / "camera.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError, CameraModelError):
        return None


def dataset_summary(data: Path, plan: FloorPlan | None) -> dict:
    """What ``camera-pose dataset`` wrote into ``data``, for the dataset page.

    Raises:
        InputDataError: ``data`` lacks ``report.json`` or ``poses.csv``.
    """
    report = _read_json(data / "report.json", "dataset report (was `camera-pose dataset` "
                                              "run to the end?)")
    out: dict = {"data": str(data), "report": report}
    try:
        alignment = _read_json(data / "alignment.json", "alignment")
        out["control_points"] = [
            {"key": str(cp.get("key")), "frame": cp.get("frame"),
             "x": float(cp["xyz"][0]), "y": float(cp["xyz"][1]), "z": float(cp["xyz"][2]),
             "residual_m": float(cp["residual_m"]), "inlier": bool(cp.get("inlier", True))}
            for cp in alignment.get("control_points", [])]
        out["alignment_rms_m"] = alignment.get("rms_m")
    except (InputDataError, KeyError, TypeError, ValueError, IndexError) as exc:
        out["control_points"] = []
        out.setdefault("problems", []).append(f"alignment: {exc}")
    poses = read_poses(data / "poses.csv")
    out["registered"] = {"count": len(poses), "xy": _xy(poses)}
    out["splits"] = {}
    for name in SPLITS:
        if (data / f"{name}.csv").is_file():
            t = read_poses(data / f"{name}.csv")
            out["splits"][name] = {"count": len(t), "xy": _xy(t, breaks=True)}
    if plan is not None and len(poses):
        cam = _camera(data)
        hfov = 2 * math.atan(cam.width / (2 * cam.fx)) if cam else math.radians(60.0)
        out["coverage"] = view_coverage(plan, poses.positions_N3, poses.quats_wxyz_N4, hfov)
    else:
        out["coverage"] = None
    return out


# -- model -----------------------------------------------------------------------------------
def _training_curve(run: Path) -> list[dict] | None:
    path = run / "metrics.csv"
    if not path.is_file():
        return None
    rows = []
    try:
        with path.open(newline="") as fh:
            for r in csv.DictReader(fh):
                row = {}
                for k, v in r.items():
                    try:
                        f = float(v)
                    except (TypeError, ValueError):
                        continue
                    if math.isfinite(f):
                        row[k] = f
                rows.append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None
    return rows


def _calibration(err_N6: np.ndarray, cov_N66: np.ndarray) -> dict:
    """Observed share of errors inside each nominal ellipsoid, position and rotation."""
    d_pos, d_rot = block_mahalanobis_sq(err_N6, cov_N66)
    out = {"levels": list(CALIBRATION_LEVELS)}
    for name, d in (("position", d_pos), ("rotation", d_rot)):
        out[name] = [float(np.mean(d <= chi2.ppf(lv, 3))) if len(d) else 0.0
                     for lv in CALIBRATION_LEVELS]
    return out


def _mode_curves(pred: PoseTable, gt: PoseTable) -> dict:
    ip, ig = match_by_stamp(pred.stamps, gt.stamps, 1e-3)
    err = pose_error_vectors(pred.positions_N3[ip], pred.quats_wxyz_N4[ip],
                             gt.positions_N3[ig], gt.quats_wxyz_N4[ig])
    t_err = np.linalg.norm(err[:, :3], axis=1)
    r_err = np.degrees(np.linalg.norm(err[:, 3:], axis=1))
    out = {"frames": int(len(ip)),
           "position_errors_m": np.round(np.sort(t_err), 5).tolist(),
           "rotation_errors_deg": np.round(np.sort(r_err), 4).tolist(),
           "xy": _xy(pred.subset(ip))}
    cov = covariances_from_columns(pred.extra)
    if cov is not None and len(ip):
        out["calibration"] = _calibration(err, cov[ip])
    if "refined" in pred.extra:
        out["refined"] = [pred.extra["refined"][i].strip() == "1" for i in ip]
    return out


def _evaluation(path: Path, data: Path | None, checkpoint: Path | None) -> dict:
    metrics = _read_json(path, "evaluation metrics")
    split = str(metrics.get("split", "test"))
    out: dict = {"path": str(path), "split": split, "metrics": metrics,
                 "checkpoint": metrics.get("checkpoint")}
    if checkpoint is not None and metrics.get("checkpoint"):
        other = Path(metrics["checkpoint"])
        out["same_checkpoint"] = (other.name == checkpoint.name if not other.exists()
                                  else other.resolve() == checkpoint.resolve())
    gt_dir = next((d for d in (path.parent.parent, data)
                   if d is not None and (d / f"{split}.csv").is_file()), None)
    if gt_dir is None:
        out["problem"] = f"the {split} split's poses were not found: give the dataset"
        return out
    gt = read_poses(gt_dir / f"{split}.csv")
    out["ground_truth_xy"] = _xy(gt)
    out["modes"] = {}
    for mode, name in (("regress", f"predictions_{split}.csv"),
                       ("refine", f"predictions_{split}_refined.csv")):
        if (path.parent / name).is_file():
            out["modes"][mode] = _mode_curves(read_poses(path.parent / name), gt)
    return out


def model_summary(src: DashboardSources) -> dict:
    """The checkpoint's provenance, training curve and evaluations, for the model page."""
    out: dict = {"checkpoint": _str(src.checkpoint), "meta": src.checkpoint_meta,
                 "training_curve": None, "evaluations": [], "problems": []}
    if src.checkpoint is None:
        out["problems"].append("no checkpoint given: start with --checkpoint RUN/model.pt")
    elif src.checkpoint_meta is None:
        out["problems"].append(f"checkpoint {src.checkpoint} cannot be used (see above)")
    if src.checkpoint is not None:
        out["training_curve"] = _training_curve(src.checkpoint.parent)
    for path in src.evaluations:
        try:
            out["evaluations"].append(_evaluation(path, src.data, src.checkpoint))
        except CameraPoseError as exc:
            out["problems"].append(str(exc))
    if not src.evaluations:
        out["problems"].append("no evaluation found: run `camera-pose evaluate --checkpoint "
                               "RUN/model.pt --data DATA` (or give --eval)")
    return out
