"""`make demo`: the pipeline end to end on a synthetic building the user has never seen.

Today it runs the stages that are built: synthesize a building, build its dataset (frames,
pycolmap SfM, alignment to the map, splits) and compare the recovered camera poses with the
ground truth. Training and the live node join when their issues land.

    python -m camera_pose_ros.demo [--out demo_output] [--frames 300] [--width 640 ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

from camera_pose_ros.dataset.frames import FrameSource
from camera_pose_ros.dataset.pipeline import build_dataset
from camera_pose_ros.dataset.synth import write_synthetic_building
from camera_pose_ros.errors import CameraPoseError
from camera_pose_ros.fileio import write_json_atomic

log = logging.getLogger("camera_pose_ros.demo")


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return the exit status (non-zero when a stage fails)."""
    p = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("demo_output"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--scale", type=float, default=1.0, help="building size factor")
    p.add_argument("--keep", action="store_true", help="keep the work folder (bags, images)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = args.out
    work = out / "work"
    if work.exists():
        shutil.rmtree(work)
    timings = {}
    try:
        t0 = time.perf_counter()
        log.info("1/2 synthesizing a building (%d frames, %dx%d)", args.frames, args.width,
                 args.height)
        synth = write_synthetic_building(work / "synth", seed=args.seed, frames=args.frames,
                                         query_frames=max(10, args.frames // 3),
                                         width=args.width, height=args.height,
                                         scale=args.scale)
        timings["synth_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        log.info("2/2 building the dataset: frames, SfM, alignment, splits")
        report_path = build_dataset(
            FrameSource(bag=synth / "mapping"), synth / "control_points.csv", work / "data",
            floorplan=synth / "floorplan.yaml", ground_truth=synth / "gt_mapping.csv")
        timings["dataset_s"] = time.perf_counter() - t0
    except CameraPoseError as exc:
        sys.stderr.write(f"demo failed: {exc}\n")
        return 2
    report = json.loads(Path(report_path).read_text())
    err = report["pose_error_vs_ground_truth"]
    shutil.copy2(work / "data" / "trajectory.png", out / "dataset_trajectory.png")
    figures = {"dataset": report, "timings_s": timings}
    write_json_atomic(out / "figures.json", figures)
    rows = [
        ("frames registered", f"{report['registered']}/{report['frames']} "
                              f"({report['registration_rate']:.1%})"),
        ("alignment RMS", f"{report['alignment_rms_m'] * 100:.1f} cm over "
                          f"{report['control_points_used']}/{report['control_points']} "
                          "control points"),
        ("camera poses vs ground truth", f"median {err['median_position_m'] * 100:.1f} cm, "
                                         f"{err['median_rotation_deg']:.2f} deg"),
        ("splits", ", ".join(f"{k} {v}" for k, v in report["splits"].items())),
        ("time", f"synth {timings['synth_s']:.0f} s, dataset {timings['dataset_s']:.0f} s"),
        ("not built yet", "training, evaluation and the live relocalization node"),
    ]
    sys.stdout.write("\ncamera_pose_ros demo\n" + _table(rows) + f"\n\nwritten {out}/\n")
    if not args.keep:
        shutil.rmtree(work / "synth" / "mapping", ignore_errors=True)
        shutil.rmtree(work / "synth" / "query", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
