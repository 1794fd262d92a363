"""Scaling benchmark: how SfM, the refinement map, memory and latency grow with the building.

For each size, a corridor with N rooms (``camera-pose synth --rooms N``, every room its own
design, about 86 mapping frames per room: the demo loop's frames per metre of walk), in
child processes whose peak resident memory the kernel reports (``wait4``):

1. ``synth`` (not measured beyond its wall time);
2. ``camera-pose dataset`` on the mapping bag: wall time, the SfM stage's time (from its
   report), registered keyframes, peak resident memory of the process;
3. the refinement map: file size, and per keyframe;
4. a localizer process (``benchmarks.bench_refine`` with an untrained network in the
   PoseNet preset's shape, priors 1 m / 10 deg off the truth): per-frame forward pass and
   refinement p50, refined share, refined median error, and its peak resident memory (the
   node holds the same: network, memory-mapped map, SIFT extractor);
5. with ``--compare-mappers``: the mapping step alone, incremental (COLMAP) and global
   (GLOMAP), each from the same features and matches (``camera-pose sfm --mapper`` on a
   copy of the dataset's SfM folder): wall time, peak memory, registered frames, and the
   median distance of the camera path from the truth after a similarity fit.

Ratios in the same run: refinement p50 over forward p50, and each size's figures over the
smallest size's. Curves against keyframes are drawn in ``results/DATE-HOST-scale.png``.
Stages are cached in ``--work DIR`` (a size's figures in ``rooms-N/figures.json``).

    python -m benchmarks.bench_scale [--rooms 2,4] [--work DIR] [--query-frames 40]
                                     [--compare-mappers]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, write_results

FRAMES_PER_ROOM = 300 / 3.5  # the demo loop's frames per metre, at about 21 m per room


#: runs argv[2:] and writes its peak resident memory (kB) to argv[1]: a child's own peak
#: (a process forked from this one would start with this process's high-water mark)
_LAUNCH = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[2:]); "
           "_, st, ru = os.wait4(p.pid, 0); open(sys.argv[1], 'w').write(str(ru.ru_maxrss)); "
           "sys.exit(os.waitstatus_to_exitcode(st))")


def run_child(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run ``cmd`` (output to ``log``); its wall seconds and peak resident memory (MB).

    A small launcher process starts it, so the figure is the command's own (a process
    forked from a large one, pytest say, inherits that one's high-water mark).

    Raises:
        SystemExit: the command failed (the log's tail says why).
    """
    t0 = time.perf_counter()
    peak = log.with_suffix(".peak")
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, "-c", _LAUNCH, str(peak), *cmd], stdout=out,
                              stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"{' '.join(cmd[:5])} ... failed ({proc.returncode}):\n{tail}")
    return wall, int(peak.read_text()) / 1024.0  # Linux: kilobytes

def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "camera_pose_ros.cli", "-q", *args]


def compare_mappers(root: Path) -> dict:
    """Map ``root/data``'s matches again with each mapper (copies; see the module doc)."""
    import numpy as np

    from camera_pose_ros.dataset.frames import read_frames_csv
    from camera_pose_ros.dataset.sfm import load_sfm_model
    from camera_pose_ros.geometry import umeyama_sim3
    from camera_pose_ros.io.posecsv import read_poses
    from camera_pose_ros.metrics import match_by_stamp

    data, out = root / "data", {}
    names, stamps = read_frames_csv(data / "frames.csv")
    row = {n: i for i, n in enumerate(names)}
    gt = read_poses(root / "synth" / "gt_mapping.csv")
    for mapper in ("incremental", "global"):
        copy = root / f"mapper-{mapper}"
        shutil.rmtree(copy, ignore_errors=True)
        copy.mkdir()
        for item in data.iterdir():
            if item.name == "sfm":
                shutil.copytree(item, copy / "sfm", ignore=shutil.ignore_patterns(
                    "model", "models", ".mapping.done", "summary.json"))
            elif item.name == "images":
                (copy / "images").symlink_to(item.resolve())
            elif item.is_file():
                shutil.copy2(item, copy / item.name)
        wall, peak = run_child(_cli("sfm", "--data", str(copy), "--mapper", mapper),
                               root / f"mapper-{mapper}.log")
        model = load_sfm_model(copy)
        fi, gi = match_by_stamp(stamps[[row[n] for n in model.names]] / 1e9, gt.stamps,
                                max_dt=1e-3)
        centres = model.sfm_from_cam[fi, :3, 3]
        fit = umeyama_sim3(centres, gt.positions_N3[gi])
        err = np.linalg.norm(fit.apply(centres) - gt.positions_N3[gi], axis=1)
        out[mapper] = {"mapping_s": wall, "peak_mb": peak, "registered": len(model.names),
                       "frames": len(names), "path_median_m": float(np.median(err)),
                       "path_p90_m": float(np.percentile(err, 90))}
        shutil.rmtree(copy)
    return out


def measure(root: Path, rooms: int, query_frames: int, seed: int = 0,
            mappers: bool = False, mapper: str = "incremental") -> dict:
    """The figures of one size (cached in ``root/figures.json``; the synthetic building in
    ``root/synth.json``, the dataset's stages in ``root/data`` as ``dataset`` keeps them)."""
    cached = root / "figures.json"
    if cached.is_file():
        fig = json.loads(cached.read_text())
        if mappers and "mappers" not in fig:
            fig["mappers"] = compare_mappers(root)
            cached.write_text(json.dumps(fig, indent=2))
        return fig
    root.mkdir(parents=True, exist_ok=True)
    synth, data = root / "synth", root / "data"
    frames = round(FRAMES_PER_ROOM * rooms)
    fig: dict = {"rooms": rooms, "frames": frames, "mapper": mapper}
    made = root / "synth.json"
    if not made.is_file():
        synth_s, _ = run_child(_cli(
            "synth", "--out", str(synth), "--rooms", str(rooms), "--frames", str(frames),
            "--query-frames", str(query_frames), "--seed", str(seed)), root / "synth.log")
        made.write_text(json.dumps({"synth_s": synth_s}))
    fig["synth_s"] = json.loads(made.read_text())["synth_s"]
    fig["dataset_s"], fig["dataset_peak_mb"] = run_child(_cli(
        "dataset", "--bag", str(synth / "mapping"), "--control-points",
        str(synth / "control_points.csv"), "--floorplan", str(synth / "floorplan.yaml"),
        "--ground-truth", str(synth / "gt_mapping.csv"), "--mapper", mapper, "--out",
        str(data)), root / "dataset.log")
    report = json.loads((data / "report.json").read_text())
    fig["sfm_s"] = report["timings_s"]["sfm"]
    fig["keyframes"] = report["registered"]
    fig["points3D"] = report["points3D"]
    size = (data / "refinement_map.npz").stat().st_size
    fig["refinement_map_mb"] = size / 1e6
    fig["refinement_map_kb_per_keyframe"] = size / 1e3 / max(1, report["registered"])
    out = root / "refine.json"
    _, fig["localizer_peak_mb"] = run_child(
        [sys.executable, "-c", "import json, sys; from pathlib import Path; "
         "from benchmarks.bench_refine import run; "
         f"res = run(Path({str(data)!r}), Path({str(synth / 'query')!r}), "
         f"Path({str(synth / 'gt_query.csv')!r})); "
         f"Path({str(out)!r}).write_text(json.dumps(res))"], root / "refine.log")
    res = json.loads(out.read_text())
    fig["forward_ms_p50"] = res["forward_ms_p50"]
    fig["refine_ms_p50"] = res["refine_ms_p50"]
    fig["refine_stages_ms_p50"] = res["refine_stages_ms_p50"]
    fig["refined_share"] = res["refined_share"]
    fig["refined_median_m"] = res.get("refine_errors", {}).get("median_position_m")
    fig["ratio_refine_over_forward"] = res["ratio_refine_over_forward"]
    if mappers:
        fig["mappers"] = compare_mappers(root)
    cached.write_text(json.dumps(fig, indent=2))
    return fig


def plot(rows: list[dict], path: Path) -> Path:
    """One panel per curve, against registered keyframes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = [r["keyframes"] for r in rows]
    panels = (("SfM time (s)", ["sfm_s"]), ("peak memory (MB)",
                                             ["dataset_peak_mb", "localizer_peak_mb"]),
              ("refinement map (MB)", ["refinement_map_mb"]),
              ("per frame (ms, p50)", ["forward_ms_p50", "refine_ms_p50"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            ax.plot(k, [r[key] for r in rows], "o-", label=key)
        ax.set_title(title)
        ax.set_xlabel("keyframes")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(rows: list[dict]) -> str:
    """The results table."""
    lines = ["| rooms | keyframes | 3D points | mapper | SfM s | dataset s | dataset peak MB "
             "| map MB | map KB/keyframe | localizer peak MB | forward p50 ms | refine p50 ms "
             "| refine/forward | refined | refined median cm |",
             "|" + "---|" * 15]
    for r in rows:
        med = r["refined_median_m"]
        lines.append(
            f"| {r['rooms']} | {r['keyframes']} | {r['points3D']} "
            f"| {r.get('mapper', 'incremental')} | {r['sfm_s']:.0f} "
            f"| {r['dataset_s']:.0f} | {r['dataset_peak_mb']:.0f} "
            f"| {r['refinement_map_mb']:.1f} | {r['refinement_map_kb_per_keyframe']:.1f} "
            f"| {r['localizer_peak_mb']:.0f} | {r['forward_ms_p50']:.0f} "
            f"| {r['refine_ms_p50']:.0f} | {r['ratio_refine_over_forward']:.2f} "
            f"| {r['refined_share']:.0%} | {'-' if med is None else f'{100 * med:.1f}'} |")
    compared = [r for r in rows if r.get("mappers")]
    if compared:
        lines += ["", "| rooms | mapper | mapping s | peak MB | registered | path median cm "
                  "| path p90 cm |", "|" + "---|" * 7]
        for r in compared:
            for name, m in r["mappers"].items():
                lines.append(f"| {r['rooms']} | {name} | {m['mapping_s']:.0f} "
                             f"| {m['peak_mb']:.0f} | {m['registered']}/{m['frames']} "
                             f"| {100 * m['path_median_m']:.1f} | {100 * m['path_p90_m']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    """Command line entry; prints and writes the results (JSON, Markdown, plot)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rooms", default="2,4", help="comma-separated room counts (>= 2)")
    p.add_argument("--work", type=Path, help="cache folder (default: a temporary one)")
    p.add_argument("--query-frames", type=int, default=40)
    p.add_argument("--mapper", choices=("incremental", "global"), default="incremental",
                   help="the dataset's SfM mapper at the sizes not cached yet")
    p.add_argument("--compare-mappers", action="store_true",
                   help="also map each size's matches with the incremental and the global "
                        "mapper (the mapping step alone)")
    args = p.parse_args(argv)
    try:
        sizes = sorted({int(x) for x in args.rooms.split(",")})
    except ValueError:
        raise SystemExit(f"--rooms: comma-separated integers, not {args.rooms!r}") from None
    if sizes[0] < 2:
        raise SystemExit("--rooms: every size needs at least 2 rooms")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        rows = [measure(work / f"rooms-{n}", n, args.query_frames,
                        mappers=args.compare_mappers, mapper=args.mapper) for n in sizes]
    base = rows[0]
    for r in rows:
        r["ratio_to_smallest"] = {k: r[k] / base[k] for k in (
            "keyframes", "sfm_s", "dataset_peak_mb", "refinement_map_mb",
            "localizer_peak_mb", "refine_ms_p50")}
    res = {"sizes": rows}
    print(markdown(rows))
    path = write_results("scale", res, markdown(rows))
    print(f"written {path} and {plot(rows, RESULTS / (path.stem + '.png'))}")
    return res


if __name__ == "__main__":
    main()
