"""`make demo`: the whole mission on a synthetic building the user has never seen.

1. synthesize a building (mapping and query bags, ground truth, floor plan);
2. record the mapping walk through ``recorder_node`` from a ``bag_player`` stream (the real
   ROS path: DDS in, rosbags out);
3. build the dataset (frames, pycolmap SfM, alignment to the map, splits);
4. train a model from a shipped preset;
5. evaluate it offline (test split, and ``camera-pose localize`` on the query bag), in
   both modes: regressed, and refined against the SfM map;
6. start ``relocalization_node`` on the checkpoint, play the query bag into it, and compare
   what it publishes with the ground truth.

Prints a table and writes ``demo_output/`` (figures.json, trajectory and error CDF plots).
Exits non-zero when a stage fails.

    python -m camera_pose_ros.demo [--frames 300] [--preset config/train_posenet.yaml]
        [--device auto|cpu|cuda] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from camera_pose_ros.errors import CameraPoseError

log = logging.getLogger("camera_pose_ros.demo")
REPO = Path(__file__).resolve().parents[1]


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _honesty(m: dict) -> str:
    """Covariance honesty of one report entry, as a table cell."""
    if "outside_99_any" not in m:
        return "no covariance"
    text = (f"outside 99% {m['outside_99_any']:.0%} (position {m['outside_99_position']:.0%}),"
            f" position coverage 68/95 {m['coverage_68_position']:.0%}/"
            f"{m['coverage_95_position']:.0%}, confidently wrong "
            f"{m['overconfident_1m_0.5m']:.0%}, claimed sigma "
            f"{m['median_claimed_sigma_m']:.2f} m")
    if "false_acceptance_25cm" in m:
        text += f", false acceptance {m['false_acceptance_25cm']:.0%}"
    return text


def _ros_env() -> dict:
    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(50 + os.getpid() % 40))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    return env


def record_through_ros(bag: Path, out: Path, env: dict) -> int:
    """Play ``bag`` with bag_player into recorder_node writing ``out``; return frames kept."""
    from camera_pose_ros.io.bags import iter_bag_images

    rec = subprocess.Popen(
        [sys.executable, "-m", "camera_pose_ros.ros.recorder_node", "--ros-args", "-p",
         f"output:={out}"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)
        play = subprocess.run(
            [sys.executable, "-m", "camera_pose_ros.ros.bag_player", str(bag), "--rate", "1.0",
             "--wait", "20"], env=env, capture_output=True, text=True, timeout=900)
        if play.returncode != 0:
            raise CameraPoseError(f"bag_player failed: {play.stderr.strip()[-300:]}")
        time.sleep(2.0)
    finally:
        rec.send_signal(signal.SIGINT)
        _, err = rec.communicate(timeout=60)
    if rec.returncode != 0 or not (out / "metadata.yaml").exists():
        raise CameraPoseError(f"recorder_node failed: {err.strip()[-300:]}")
    return sum(1 for _ in iter_bag_images(out))


def _alignment_line(report: dict) -> str:
    """How the dataset was aligned to the map, and how well (against the ground truth)."""
    refs = report.get("robot_references") or {}
    how = (f"from the bag's {refs.get('source')} ({refs.get('inliers')}/{refs.get('samples')} "
           f"frames agree, {refs.get('rejected')} rejected as localization jumps)"
           if refs else f"from {report['control_points_used']} control points")
    gt = report.get("pose_error_vs_ground_truth") or {}
    if gt:
        how += (f"; poses vs truth: median {gt['median_position_m'] * 100:.1f} cm, "
                f"{gt['median_rotation_deg']:.2f} deg")
    return how


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return the exit status (non-zero when a stage fails)."""
    p = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("demo_output"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=300, help="mapping frames")
    p.add_argument("--query-frames", type=int, default=100)
    p.add_argument("--scale", type=float, default=1.0, help="building size factor")
    p.add_argument("--preset", type=Path, default=REPO / "config" / "train_posenet.yaml")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--keep", action="store_true", help="keep bags and images in OUT/work")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except CameraPoseError as exc:
        sys.stderr.write(f"demo failed: {exc}\n")
        return 2


def _run(args: argparse.Namespace) -> int:
    import json

    from camera_pose_ros.dataset.frames import FrameSource
    from camera_pose_ros.dataset.pipeline import build_dataset
    from camera_pose_ros.dataset.synth import write_synthetic_building
    from camera_pose_ros.fileio import write_json_atomic
    from camera_pose_ros.geometry import rotation_errors_deg
    from camera_pose_ros.io.bags import read_camera_info
    from camera_pose_ros.io.figures import plot_trajectories
    from camera_pose_ros.io.floorplan import FloorPlan
    from camera_pose_ros.io.posecsv import read_poses
    from camera_pose_ros.learning.evaluate import (
        compare_with_ground_truth,
        evaluate,
        plot_error_cdf,
    )
    from camera_pose_ros.learning.train import load_train_config, train
    from camera_pose_ros.metrics import (
        error_summary,
        honesty_summary,
        match_by_stamp,
        pose_error_vectors,
    )
    from camera_pose_ros.runtime.batch import localize_source
    from camera_pose_ros.runtime.localizer import Localizer, load_refiner

    out, work = args.out, args.out / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    env = _ros_env()
    t: dict[str, float] = {}
    t0 = time.perf_counter()

    def stage(name: str, text: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        if t:
            t[list(t)[-1]] = now - t0
        t[name] = 0.0
        t0 = now
        if text:
            log.info("[%d/6] %s", len(t), text)

    stage("synth", f"synthesizing a building ({args.frames} + {args.query_frames} frames)")
    synth = write_synthetic_building(work / "synth", seed=args.seed, frames=args.frames,
                                     query_frames=args.query_frames, scale=args.scale)
    stage("record", "recording the mapping walk: bag_player -> DDS -> recorder_node")
    recorded = record_through_ros(synth / "mapping", work / "recorded", env)
    log.info("recorded %d of %d frames", recorded, args.frames)
    stage("dataset", "building the dataset: frames, SfM, alignment to the map from the "
                     "robot's own TF in the bag (no control points), splits")
    report_path = build_dataset(
        FrameSource(bag=work / "recorded"), work / "data",
        floorplan=synth / "floorplan.yaml", ground_truth=synth / "gt_mapping.csv")
    report = json.loads(Path(report_path).read_text())
    stage("train", f"training from {Path(args.preset).name}")
    cfg = load_train_config(args.preset, device=args.device)
    ckpt = train(work / "data", cfg, work / "run")
    stage("offline", "evaluating offline: test split and the query bag, regressed and refined")
    refiner, _ = load_refiner(ckpt, work / "data")
    structure = cfg.model.value == "structure_aware"
    test = json.loads(evaluate(ckpt, work / "data", split="test", device=args.device,
                               progress=False, refiner=refiner,
                               scr_pnp=structure).read_text())
    scr_pnp: dict = {}
    if structure:  # the network alone, no map: PnP on its scene coordinates
        localize_source(Localizer(ckpt, device=args.device, solver="pnp"),
                        FrameSource(bag=synth / "query"), work / "query_scr_pnp.csv",
                        progress=False)
        scr_pnp = compare_with_ground_truth(work / "query_scr_pnp.csv",
                                            synth / "gt_query.csv")
    localizer = Localizer(ckpt, device=args.device)
    localize_source(localizer, FrameSource(bag=synth / "query"), work / "query_offline.csv",
                    progress=False)
    offline = compare_with_ground_truth(work / "query_offline.csv", synth / "gt_query.csv")
    localizer.refiner = refiner
    localize_source(localizer, FrameSource(bag=synth / "query"), work / "query_refined.csv",
                    camera=read_camera_info(synth / "query", "/camera/camera_info"),
                    progress=False)
    refined = compare_with_ground_truth(work / "query_refined.csv", synth / "gt_query.csv")
    ref_table = read_poses(work / "query_refined.csv")
    refined["refined_share"] = float(np.mean([v == "1" for v in ref_table.extra["refined"]]))
    stage("live", "running relocalization_node on the query bag")
    from camera_pose_ros.ros.demo_probe import run_live_node  # rclpy: only for this stage

    got, latency = run_live_node(ckpt, synth / "query", synth / "floorplan.yaml",
                                 args.device, env)
    stage("done", "")
    gt = read_poses(synth / "gt_query.csv")
    idx = [i for i, s in enumerate(gt.stamps_ns) if int(s) in got]
    if not idx:
        raise CameraPoseError("the node published no pose for the query frames")
    live_full = np.array([got[int(gt.stamps_ns[i])] for i in idx])
    live, live_cov = live_full[:, :7], live_full[:, 7:].reshape(-1, 6, 6)
    g = np.concatenate([gt.positions_N3, gt.quats_wxyz_N4], 1)[idx]
    live_err = error_summary(live[:, :3], live[:, 3:], g[:, :3], g[:, 3:])
    live_err.update(honesty_summary(
        pose_error_vectors(live[:, :3], live[:, 3:], g[:, :3], g[:, 3:]), live_cov))
    lat_ms = np.array(latency) * 1000.0
    out.mkdir(parents=True, exist_ok=True)
    plan = FloorPlan.load(synth / "floorplan.yaml")
    plot_trajectories(out / "query_trajectory.png",
                      {"ground truth": gt.positions_N3, "relocalization_node": live[:, :3],
                       "refined (offline)": ref_table.positions_N3},
                      floorplan=plan, title="query walk: live node output vs ground truth")
    ir, ig = match_by_stamp(ref_table.stamps, gt.stamps, 1e-3)
    plot_error_cdf(out / "query_error_cdf.png", {
        "relocalization_node (live, regress)": (
            np.linalg.norm(live[:, :3] - g[:, :3], axis=1),
            rotation_errors_deg(live[:, 3:], g[:, 3:])),
        "refined (offline)": (
            np.linalg.norm(ref_table.positions_N3[ir] - gt.positions_N3[ig], axis=1),
            rotation_errors_deg(ref_table.quats_wxyz_N4[ir], gt.quats_wxyz_N4[ig]))})
    shutil.copy2(work / "data" / "trajectory.png", out / "dataset_trajectory.png")
    figures = {
        "dataset": report, "test_split": test, "query_offline": offline,
        "query_offline_refined": refined, **({"query_offline_scr_pnp": scr_pnp} if scr_pnp
                                             else {}),
        "query_live_node": {**live_err, "frames_sent": len(gt), "frames_answered": len(idx),
                            "latency_ms_p50": float(np.percentile(lat_ms, 50)),
                            "latency_ms_p99": float(np.percentile(lat_ms, 99))},
        "recorded_frames": recorded, "timings_s": t, "preset": str(args.preset),
    }
    write_json_atomic(out / "figures.json", figures)
    lv = figures["query_live_node"]
    rows = [
        ("frames registered", f"{report['registered']}/{report['frames']} "
                              f"({report['registration_rate']:.1%})"),
        ("alignment", _alignment_line(report)),
        ("test split (offline)", f"median {test['median_position_m']:.2f} m, "
                                 f"{test['median_rotation_deg']:.1f} deg; mean-pose baseline "
                                 f"{test['baseline_mean_pose']['median_position_m']:.2f} m"),
        ("query bag, offline", f"median {offline['median_position_m']:.2f} m, "
                               f"{offline['median_rotation_deg']:.1f} deg"),
        ("query bag, offline refined", f"median {refined['median_position_m'] * 100:.1f} cm, "
                                       f"{refined['median_rotation_deg']:.2f} deg; "
                                       f"{refined['within_25cm_2deg']:.0%} within 25cm,2deg "
                                       f"({refined['refined_share']:.0%} refined)"),
        *([("query bag, offline scr-pnp", f"median {scr_pnp['median_position_m'] * 100:.1f} "
                                          f"cm, {scr_pnp['median_rotation_deg']:.2f} deg; "
                                          f"{scr_pnp['within_25cm_2deg']:.0%} within 25cm,"
                                          f"2deg")] if scr_pnp else []),
        ("query bag, live node", f"median {lv['median_position_m']:.2f} m, "
                                 f"{lv['median_rotation_deg']:.1f} deg "
                                 f"({lv['frames_answered']}/{lv['frames_sent']} frames)"),
        ("live within 25cm,2deg / 50cm,5deg / 1m,10deg",
         f"{lv['within_25cm_2deg']:.0%} / {lv['within_50cm_5deg']:.0%} / "
         f"{lv['within_100cm_10deg']:.0%}"),
        ("honesty, test split", _honesty(test)),
        ("honesty, test split refined", _honesty(test.get("modes", {}).get("refine", {}))),
        ("honesty, query bag offline", _honesty(offline)),
        ("honesty, query bag offline refined", _honesty(refined)),
        ("honesty, query bag live node", _honesty(lv)),
        ("node latency p50 / p99", f"{lv['latency_ms_p50']:.0f} / {lv['latency_ms_p99']:.0f} ms"),
        ("time", ", ".join(f"{k} {v:.0f} s" for k, v in t.items() if k != "done")),
    ]
    sys.stdout.write("\ncamera_pose_ros demo\n" + _table(rows) + f"\n\nwritten {out}/\n")
    if not args.keep:  # the bags and renders go; the dataset and the model stay for the dashboard
        for child in work.iterdir():
            if child.is_dir() and child.name not in ("data", "run"):
                shutil.rmtree(child, ignore_errors=True)
            elif not child.is_dir():
                child.unlink()
    sys.stdout.write(f"\nsee it in a browser (the floor plan, the dataset, the model, upload a "
                     f"photo):\n  camera-pose dashboard --checkpoint {work / 'run' / 'model.pt'}"
                     "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
