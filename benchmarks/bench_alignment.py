"""Alignment to the map without a tape measure: the robot's TF / /amcl_pose vs control points.

For each scene (``--seeds``), one synthetic building is rendered with the robot's own
localization in the mapping bag (AMCL-like noise of 5 cm and 1 deg, correlated over 1 s,
odometry drift, and 1 m jumps: :mod:`camera_pose_ros.dataset.synth_robot`) and its SfM is
built once; the alignment is then redone from each reference and the aligned camera poses
are compared with the ground truth:

- ``control points``: the 6 surveyed points of ``control_points.csv`` (1 cm survey error);
- ``tf``: the bag's ``/tf`` + ``/tf_static`` alone, z vertical (the default);
- ``tf, z free``: the same with a full 7-DoF similarity;
- ``amcl_pose``: ``/amcl_pose`` carried forward by odometry, plus the mount from
  ``/tf_static``;
- ``tf + control points``: both, weighed by their accuracy.

Beside them, the **floor** that no alignment from the robot's localization alone can beat:
the ground-truth walk fitted (z vertical, jumps rejected) to the camera poses that the
synthetic robot's ``/tf`` gives at the same stamps, i.e. an alignment with a perfect SfM.
What is left there is the localization's own error averaged over the walk. It is computed
for the scene's own noise draw (the ``tf`` row should sit on it) and, with ``--draws N``, for
N other draws of the same noise model on the same walk (no rendering, no SfM), so one
scene's luck can be told from the method's.

    python -m benchmarks.bench_alignment [--seeds 0 1 2] [--frames 300] [--width 640] [--rate 10]
        [--draws 50]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from benchmarks.common import timed, write_results
from camera_pose_ros.dataset.align import AlignConfig, align_dataset
from camera_pose_ros.dataset.frames import FrameSource
from camera_pose_ros.dataset.pipeline import build_dataset
from camera_pose_ros.dataset.references import ReferenceConfig, extract_priors
from camera_pose_ros.dataset.synth import ROBOT_SEED_OFFSET, write_synthetic_building
from camera_pose_ros.dataset.synth_robot import RobotSpec, robot_messages
from camera_pose_ros.geometry import fit_sim3_samples, pose_matrix, rotmat_from_quat_wxyz
from camera_pose_ros.io.posecsv import PoseTable, read_poses
from camera_pose_ros.io.tf import TfTree
from camera_pose_ros.metrics import error_summary, match_by_stamp

VARIANTS = {
    "control points": ("none", True, "no"),
    "tf": ("tf", False, "auto"),
    "tf, z free": ("tf", False, "no"),
    "amcl_pose": ("pose", False, "auto"),
    "tf + control points": ("tf", True, "auto"),
}


def localization_floor(gt: PoseTable, noise_seeds: Iterable[int],
                       spec: RobotSpec = RobotSpec()) -> list[float]:
    """Per noise draw, the median position error (m) of the truth fitted to the robot's TF.

    The synthetic robot's ``/tf`` is drawn anew for each seed of ``noise_seeds`` along the
    walk ``gt``; ``map -> camera`` is looked up at the walk's stamps as the dataset builder
    does, and the truth is aligned to it (z vertical, samples over 25 cm rejected as jumps).
    """
    stamps = [int(s) for s in gt.stamps_ns]
    poses = [pose_matrix(rotmat_from_quat_wxyz(q), p)
             for p, q in zip(gt.positions_N3, gt.quats_wxyz_N4, strict=True)]
    out = []
    for seed in noise_seeds:
        tree = TfTree()
        for topic, _, _, msg, _ in robot_messages(stamps, poses, np.random.default_rng(seed),
                                                  spec):
            if topic in ("/tf", "/tf_static"):
                tree.add_message(msg.transforms, static=topic == "/tf_static")
        tf, ok = tree.lookup(spec.map_frame, spec.camera_frame, gt.stamps_ns)
        truth = gt.positions_N3[ok]
        sim, _ = fit_sim3_samples(truth, tf[ok, :3, 3], inlier_threshold=0.25,
                                  up_src=[0.0, 0.0, 1.0])
        out.append(float(np.median(np.linalg.norm(sim.apply(truth) - truth, axis=1))))
    return out


def run_scene(root: Path, seed: int, frames: int, width: int, height: int,
              rate_hz: float = 10.0, draws: int = 0) -> dict:
    """One building: SfM once, then every alignment variant; errors against the truth.

    ``rate_hz`` sets the walk's pace: the same 300 frames over 30 s at 10 Hz (2.4 m/s, a
    brisk hand-held walk) or over 150 s at 2 Hz (0.5 m/s, a robot's pace).
    """
    synth = write_synthetic_building(root / "synth", seed=seed, frames=frames, query_frames=1,
                                     width=width, height=height, rate_hz=rate_hz,
                                     progress=False)
    t_build, _ = timed(lambda: build_dataset(
        FrameSource(bag=synth / "mapping"), root / "data",
        control_points=synth / "control_points.csv", progress=False))
    gt = read_poses(synth / "gt_mapping.csv")
    out: dict = {"seed": seed, "rate_hz": rate_hz, "dataset_s": t_build, "variants": {},
                 "floor_m": localization_floor(gt, [seed + ROBOT_SEED_OFFSET])[0]}
    if draws:
        floors = np.array(localization_floor(gt, range(1000, 1000 + draws)))
        out["floor_draws"] = {"draws": draws, "median_m": float(np.median(floors)),
                              "p90_m": float(np.percentile(floors, 90)),
                              "max_m": float(floors.max()),
                              "share_within_3cm": float(np.mean(floors <= 0.03))}
    for name, (source, with_cp, z) in VARIANTS.items():
        extract_priors(root / "data", ReferenceConfig(source=source))
        t_align, _ = timed(lambda: align_dataset(  # noqa: B023 -- called at once
            root / "data", synth / "control_points.csv" if with_cp else None,  # noqa: B023
            AlignConfig(z_vertical=z)))  # noqa: B023
        poses = read_poses(root / "data" / "poses.csv")
        ip, ig = match_by_stamp(poses.stamps_ns, gt.stamps_ns, max_dt=1e-3)
        err = error_summary(poses.positions_N3[ip], poses.quats_wxyz_N4[ip],
                            gt.positions_N3[ig], gt.quats_wxyz_N4[ig])
        report = json.loads((root / "data" / "alignment.json").read_text())
        refs = report.get("robot_references") or {}
        out["variants"][name] = {
            "median_position_m": err["median_position_m"],
            "median_rotation_deg": err["median_rotation_deg"],
            "align_s": t_align,
            "references": refs.get("samples"),
            "rejected": refs.get("rejected"),
            "rejected_time_ranges_from_start_s": refs.get("rejected_time_ranges_from_start_s"),
            "control_points_used": report["inliers"],
            "vertical": report.get("vertical"),
        }
    return out


def markdown(results: dict) -> str:
    """The README table: median error of the aligned poses per reference, per seed."""
    seeds = [s["seed"] for s in results["scenes"]]
    head = "| reference | " + " | ".join(f"seed {s}" for s in seeds) + " |\n"
    head += "|---|" + "---|" * len(seeds) + "\n"
    rows = []
    for name in VARIANTS:
        cells = []
        for scene in results["scenes"]:
            v = scene["variants"][name]
            rej = f", {v['rejected']} rejected" if v["rejected"] else ""
            cells.append(f"{v['median_position_m'] * 100:.1f} cm, "
                         f"{v['median_rotation_deg']:.2f} deg{rej}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    rows.append("| floor: the truth fitted to the robot's `/tf` (a perfect SfM) | " + " | ".join(
        f"{s['floor_m'] * 100:.1f} cm" for s in results["scenes"]) + " |")
    if all("floor_draws" in s for s in results["scenes"]):
        rows.append("| the floor over other noise draws: median (90th percentile, max; share "
                    "within 3 cm) | " + " | ".join(
                        "{:.1f} cm ({:.1f}, {:.1f}; {:.0%})".format(
                            d["median_m"] * 100, d["p90_m"] * 100, d["max_m"] * 100,
                            d["share_within_3cm"])
                        for d in (s["floor_draws"] for s in results["scenes"])) + " |")
    return head + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> dict:
    """Command line entry; prints and writes the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--rate", type=float, default=10.0,
                   help="frames per second of the walk (10: 2.4 m/s; 2: a robot's 0.5 m/s)")
    p.add_argument("--workdir", type=Path, help="keep the scenes here")
    p.add_argument("--draws", type=int, default=0,
                   help="also the floor over this many other draws of the robot's noise")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    scenes = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            root = (args.workdir / f"seed{seed}") if args.workdir else Path(tmp)
            scenes.append(run_scene(root, seed, args.frames, args.width, args.height,
                                    args.rate, args.draws))
            print(json.dumps(scenes[-1]["variants"], indent=1), flush=True)
    res = {"size": {"frames": args.frames, "width": args.width, "height": args.height},
           "rate_hz": args.rate, "scenes": scenes}
    table = markdown(res)
    name = "alignment" if args.rate == 10.0 else f"alignment-{args.rate:g}hz"
    path = write_results(name, res, table)
    print(table)
    print(f"written {path}")
    return res


if __name__ == "__main__":
    main()
