"""SfM / dataset throughput: frames per second of the whole `camera-pose dataset` command.

Baseline in the same run: reading and decoding the same bag's frames (the I/O floor every
dataset build pays). Reported: absolute seconds per stage, frames/s of the whole command,
and the ratio dataset time / decode time.

    python -m benchmarks.bench_dataset [--frames 300 --width 640 --height 480]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from benchmarks.common import timed, write_results
from camera_pose_ros.dataset.frames import FrameSource
from camera_pose_ros.dataset.pipeline import build_dataset
from camera_pose_ros.dataset.synth import write_synthetic_building
from camera_pose_ros.io.bags import iter_bag_images


def run(frames: int, width: int, height: int, seed: int = 0, workdir: Path | None = None,
        query_frames: int = 1, scale: float = 1.0, loops: float = 2.0) -> dict:
    """Synthesize, time the decode baseline and the dataset command; return the figures.

    ``workdir`` keeps ``synth/`` and ``data/`` there (for the refinement benchmark).
    """
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(workdir or tmp)
        t_synth, _ = timed(lambda: write_synthetic_building(
            root / "synth", seed=seed, frames=frames, query_frames=query_frames, width=width,
            height=height, scale=scale, loops=loops, progress=False))
        t_decode, n = timed(lambda: sum(1 for _ in iter_bag_images(root / "synth/mapping")))
        t_dataset, report_path = timed(lambda: build_dataset(
            FrameSource(bag=root / "synth/mapping"), root / "data",
            control_points=root / "synth/control_points.csv",
            floorplan=root / "synth/floorplan.yaml",
            ground_truth=root / "synth/gt_mapping.csv", progress=False))
        report = json.loads(Path(report_path).read_text())
    return {
        "size": {"frames": frames, "width": width, "height": height},
        "synth_s": t_synth,
        "synth_ms_per_frame": 1000 * t_synth / frames,
        "decode_baseline_s": t_decode,
        "dataset_s": t_dataset,
        "dataset_frames_per_s": n / t_dataset,
        "ratio_dataset_over_decode": t_dataset / t_decode,
        "stages_s": report["timings_s"],
        "registration_rate": report["registration_rate"],
        "alignment_rms_m": report["alignment_rms_m"],
        "pose_error_vs_ground_truth": report.get("pose_error_vs_ground_truth"),
    }


def main(argv: list[str] | None = None) -> dict:
    """Command line entry; prints and writes the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    res = run(args.frames, args.width, args.height)
    path = write_results("dataset", res)
    print(json.dumps(res, indent=2))
    print(f"written {path}")
    return res


if __name__ == "__main__":
    main()
