"""Refinement latency per frame against the regression forward pass, and accuracy of both.

In one run on one machine, for each frame of a query bag: the regressed pose (preprocessing,
network and dropout samples for the covariance: the node's per-frame work in ``regress``
mode) is timed, then its geometric refinement against the dataset's refinement map (SIFT,
retrieval and matching, RANSAC absolute pose, covariance). Reported: p50/p90 of each, the
refinement's stages, the ratio refine / forward, the share refined and, when ground truth is
given, both modes' errors.

With a trained checkpoint the priors are its regressed poses (the real hybrid). Without
one, an untrained network in the PoseNet preset's shape is timed and the priors are the
ground truth moved by 1 m and 10 degrees (the regressor's typical error on a new path).

    python -m benchmarks.bench_refine --data DATA --bag QUERY_BAG [--gt gt_query.csv]
                                      [--checkpoint RUN/model.pt] [--frames 100]
                                      [--refine-config refine.yaml]
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_node import _tiny_checkpoint
from benchmarks.common import write_results
from camera_pose_ros.config import load_yaml
from camera_pose_ros.geometry import quat_wxyz_from_rotmat, rotmat_from_quat_wxyz
from camera_pose_ros.io.bags import (
    camera_info_topic_for,
    iter_bag_images,
    read_camera_info,
)
from camera_pose_ros.io.posecsv import read_poses
from camera_pose_ros.learning.uncertainty import coverage, error_vectors
from camera_pose_ros.metrics import error_summary, match_by_stamp
from camera_pose_ros.runtime.estimate import PoseEstimate
from camera_pose_ros.runtime.localizer import Localizer
from camera_pose_ros.runtime.refine import RefineConfig


def _perturbed(pos: np.ndarray, q: np.ndarray, rng: np.random.Generator) -> PoseEstimate:
    """Ground truth moved 1 m in a random horizontal direction and turned 10 deg about z."""
    a = rng.uniform(0, 2 * np.pi)
    b = np.radians(10.0) * rng.choice([-1, 1])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    cov = np.diag([1.0, 1.0, 0.1, 0.05, 0.05, 0.05])
    return PoseEstimate(pos + [np.cos(a), np.sin(a), 0.0],
                        quat_wxyz_from_rotmat(rz @ rotmat_from_quat_wxyz(q)), cov)


def run(data: Path, bag: Path, gt_csv: Path | None = None, checkpoint: Path | None = None,
        frames: int | None = None, topic: str = "/camera/image_raw",
        config: RefineConfig = RefineConfig()) -> dict:
    """Time regression and refinement of each query frame; return the figures."""
    with tempfile.TemporaryDirectory() as tmp:
        trained = checkpoint is not None
        ckpt = checkpoint or _tiny_checkpoint(Path(tmp))
        loc = Localizer(ckpt, device="cpu")
        loc.enable_refinement(data, config if trained else RefineConfig(
            **{**config.__dict__, "gate_min_m": 100.0}))
    camera = read_camera_info(bag, camera_info_topic_for(topic))
    gt = read_poses(gt_csv) if gt_csv else None
    rng = np.random.default_rng(0)
    t_fwd, t_ref, ok, stages = [], [], [], {}
    reasons: dict[str, int] = {}
    stamps, reg, ref, covs = [], [], [], []
    for n, fr in enumerate(iter_bag_images(bag, topic)):
        if frames is not None and n >= frames:
            break
        if n == 0:  # warm-up: first-call allocations are not per-frame cost
            loc.localize(fr.image_rgb)
            loc.refine(fr.image_rgb, loc.localize(fr.image_rgb), camera)
        t0 = time.perf_counter()
        est = loc.localize(fr.image_rgb)
        t_fwd.append(time.perf_counter() - t0)
        if not trained:
            if gt is None:
                raise SystemExit("an untrained checkpoint needs --gt for its priors")
            i = int(np.argmin(np.abs(gt.stamps_ns - fr.stamp_ns)))
            est = _perturbed(gt.positions_N3[i], gt.quats_wxyz_N4[i], rng)
        reg.append(np.concatenate([est.position, est.quat_wxyz]))
        out = loc.refiner.refine(fr.image_rgb, est.position, est.quat_wxyz, est.covariance,
                                 camera)
        t_ref.append(out.latency_s)
        ok.append(out.success)
        if not out.success:  # the reason with its numbers taken out, counted
            why = re.sub(r"-?\d+(\.\d+)?", "N", out.reason)
            reasons[why] = reasons.get(why, 0) + 1
        for k, v in out.stages_s.items():
            stages.setdefault(k, []).append(v)
        stamps.append(fr.stamp)
        ref.append(np.concatenate([out.position, out.quat_wxyz]))
        covs.append(out.covariance)
    ms = lambda x, q: float(1000 * np.percentile(x, q))  # noqa: E731
    res = {
        "frames": len(t_fwd), "image": f"{camera.width}x{camera.height}" if camera else "",
        "checkpoint": "trained" if trained else "untrained (priors: ground truth + 1 m, 10 deg)",
        "forward_ms_p50": ms(t_fwd, 50), "forward_ms_p90": ms(t_fwd, 90),
        "refine_ms_p50": ms(t_ref, 50), "refine_ms_p90": ms(t_ref, 90),
        "refine_stages_ms_p50": {k: ms(v, 50) for k, v in stages.items()},
        "ratio_refine_over_forward": float(np.median(t_ref) / np.median(t_fwd)),
        "refined_share": float(np.mean(ok)),
        "refine_fail_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "config": config.__dict__,
    }
    if gt is not None:
        ip, ig = match_by_stamp(np.array(stamps), gt.stamps, 1e-3)
        for name, poses in (("regress", np.array(reg)), ("refine", np.array(ref))):
            res[f"{name}_errors"] = error_summary(poses[ip, :3], poses[ip, 3:],
                                                  gt.positions_N3[ig], gt.quats_wxyz_N4[ig])
        # how honest the refined covariance is: errors inside its 1- and 2-sigma regions
        done = np.array(ok)[ip]
        g7 = np.concatenate([gt.positions_N3[ig], gt.quats_wxyz_N4[ig]], 1)
        res["refined_covariance_coverage"] = coverage(
            error_vectors(np.array(ref)[ip][done], g7[done]), np.array(covs)[ip][done])
    return res


def main(argv: list[str] | None = None) -> dict:
    """Command line entry; prints and writes the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="dataset with refinement_map.npz")
    p.add_argument("--bag", type=Path, required=True, help="query bag")
    p.add_argument("--gt", type=Path, help="ground-truth pose CSV of the query bag")
    p.add_argument("--checkpoint", type=Path, help="trained model.pt (default: untrained)")
    p.add_argument("--frames", type=int)
    p.add_argument("--refine-config", type=Path, help="RefineConfig YAML (default: defaults)")
    args = p.parse_args(argv)
    config = (RefineConfig.from_dict(load_yaml(args.refine_config)) if args.refine_config
              else RefineConfig())
    res = run(args.data, args.bag, args.gt, args.checkpoint, args.frames, config=config)
    print(json.dumps(res, indent=2))
    print(f"written {write_results('refine', res)}")
    return res


if __name__ == "__main__":
    main()
