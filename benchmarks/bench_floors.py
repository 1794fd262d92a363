"""Floors benchmark: is the floor recognised, and how good is the pose refined there?

A building of ``--floors`` floors, each a corridor with ``--rooms`` rooms
(``camera-pose synth --rooms N --floors F``, ``--room-designs K`` for rooms that look alike
within a floor, ``--alike-floors`` for the same rooms on every floor, ``--lift`` for a lift
cabin, the same on every floor, where every walk starts and ends; about 86 mapping
frames per room, as ``bench_scale``), a dataset per floor (``camera-pose dataset``, its wall
time and peak memory), then every floor's query walk (other
paths, backwards, the scenario's head motion and light) with no floor given and no regressed
prior: :func:`camera_pose_ros.runtime.floors.recognise_floor` against every floor's map.

Reported per floor and in all: recognised on the right floor / on a wrong floor / none,
the refined pose's error (median, share within (25 cm, 2 deg)), the share outside its own
99% ellipsoid (confidently wrong), and latency. In the same run, the baseline is each frame
refined on its true floor alone from retrieval (what a node told the floor does): recognition
over the floors' refinement latency is the ratio reported, and the refined share it gives up.

    python -m benchmarks.bench_floors [--rooms 4] [--floors 2] [--room-designs 0]
                                      [--alike-floors] [--lift] [--query-frames 60]
                                      [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.bench_scale import FRAMES_PER_ROOM, _cli, run_child
from benchmarks.common import write_results


def build(root: Path, *, rooms: int, floors: int, designs: int, query_frames: int,
          seed: int, scenario: str, alike_floors: bool = False, lift: bool = False) -> dict:
    """Synthesize the building and a dataset per floor (cached in ``root``)."""
    cached = root / "build.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    root.mkdir(parents=True, exist_ok=True)
    frames = round(FRAMES_PER_ROOM * rooms)
    out: dict = {"rooms": rooms, "floors": floors, "room_designs": designs, "frames": frames,
                 "query_frames": query_frames, "seed": seed, "scenario": scenario,
                 "alike_floors": alike_floors, "lift": lift}
    out["synth_s"], _ = run_child(_cli(
        "synth", "--out", str(root / "synth"), "--rooms", str(rooms), "--floors", str(floors),
        "--room-designs", str(designs), "--frames", str(frames), "--query-frames",
        str(query_frames), "--seed", str(seed), "--scenario", scenario,
        *(["--alike-floors"] if alike_floors else []), *(["--lift"] if lift else [])),
        root / "synth.log")
    out["datasets"] = []
    for f in range(floors):
        synth = root / "synth" / f"floor_{f}"
        wall, peak = run_child(_cli(
            "dataset", "--bag", str(synth / "mapping"), "--control-points",
            str(synth / "control_points.csv"), "--floorplan", str(synth / "floorplan.yaml"),
            "--ground-truth", str(synth / "gt_mapping.csv"), "--out", str(root / f"data_{f}")),
            root / f"dataset_{f}.log")
        report = json.loads((root / f"data_{f}" / "report.json").read_text())
        out["datasets"].append({"floor": f, "dataset_s": wall, "peak_mb": peak,
                                "sfm_s": report["timings_s"]["sfm"],
                                "keyframes": report["registered"],
                                "frames": report["frames"]})
    cached.write_text(json.dumps(out, indent=2))
    return out


def evaluate(root: Path, floors: int) -> dict:
    """Recognise every floor's query frames against all floors' maps (see module doc)."""
    from camera_pose_ros.geometry import position_errors, rotation_errors_deg
    from camera_pose_ros.io.bags import iter_bag_images
    from camera_pose_ros.io.posecsv import read_poses
    from camera_pose_ros.io.refmap import REFINEMENT_MAP, load_refinement_map
    from camera_pose_ros.metrics import honesty_summary, match_by_stamp, pose_error_vectors
    from camera_pose_ros.runtime.floors import recognise_floor
    from camera_pose_ros.runtime.refine import Refiner

    refiners = {str(f): Refiner(load_refinement_map(root / f"data_{f}" / REFINEMENT_MAP))
                for f in range(floors)}
    rows: list[dict] = []
    for fid, refiner in refiners.items():
        synth = root / "synth" / f"floor_{fid}"
        gt = read_poses(synth / "gt_query.csv")
        frames = list(iter_bag_images(synth / "query"))
        ig, _ = match_by_stamp(gt.stamps, np.array([f.stamp for f in frames]), max_dt=1e-6)
        for frame, i in zip(frames, ig, strict=True):
            told = recognise_floor({fid: refiner}, frame.image_rgb)  # its floor alone
            v = recognise_floor(refiners, frame.image_rgb)
            row = {"floor": fid, "recognised": v.floor, "inliers": v.inliers,
                   "refused": v.refused, "reason": v.reason,
                   "recognise_s": v.seconds, "alone_s": told.seconds,
                   "alone_ok": told.floor is not None}
            for key, out in (("alone", told.estimate), ("pose", v.estimate)):
                if out is None:
                    continue
                q = out.quat_wxyz
                row[f"{key}_err_m"] = float(position_errors(out.position[None],
                                                            gt.positions_N3[i][None])[0])
                row[f"{key}_err_deg"] = float(rotation_errors_deg(q[None],
                                                                  gt.quats_wxyz_N4[i][None])[0])
                row[f"{key}_err6"] = pose_error_vectors(out.position[None], q[None],
                                                        gt.positions_N3[i][None],
                                                        gt.quats_wxyz_N4[i][None])[0].tolist()
                row[f"{key}_cov"] = np.asarray(out.covariance).tolist()
            rows.append(row)
    return {"per_frame": rows, **summarise(rows, honesty_summary), "node_walk": node_walk(rows)}


def summarise(rows: list[dict], honesty) -> dict:
    """Shares, errors and latency over ``rows`` (all floors, and per floor)."""

    def block(sel: list[dict]) -> dict:
        n = len(sel)
        right = [r for r in sel if r["recognised"] == r["floor"]]
        wrong = [r for r in sel if r["recognised"] not in (None, r["floor"])]
        err_m = np.array([r["pose_err_m"] for r in right])
        err_deg = np.array([r["pose_err_deg"] for r in right])
        alone = [r for r in sel if r["alone_ok"]]
        out = {"frames": n, "recognised": len(right) / max(1, n),
               "wrong_floor": len(wrong) / max(1, n),
               "unrecognised": (n - len(right) - len(wrong)) / max(1, n),
               "refined_alone": len(alone) / max(1, n),
               "recognise_ms_p50": float(np.median([r["recognise_s"] for r in sel]) * 1e3),
               "alone_ms_p50": float(np.median([r["alone_s"] for r in sel]) * 1e3)}
        out["ratio_recognise_over_alone"] = out["recognise_ms_p50"] / out["alone_ms_p50"]
        if right:
            out["median_m"] = float(np.median(err_m))
            out["median_deg"] = float(np.median(err_deg))
            # of all query frames (unrecognised ones count as not within)
            out["within_25cm_2deg"] = float(np.sum((err_m <= 0.25) & (err_deg <= 2.0))
                                            / max(1, n))
            h = honesty(np.array([r["pose_err6"] for r in right]),
                        np.array([r["pose_cov"] for r in right]))
            out["outside_99_any"] = h["outside_99_any"]
            out["false_acceptance_25cm"] = float(np.mean(err_m > 0.25))
        if alone:
            out["alone_median_m"] = float(np.median([r["alone_err_m"] for r in alone]))
        return out

    floors = sorted({r["floor"] for r in rows})
    return {"all": block(rows), "by_floor": {f: block([r for r in rows if r["floor"] == f])
                                             for f in floors}}


def node_walk(rows: list[dict], recheck_after: int = 5) -> dict:
    """The node's floor over the floors' query walks played one after the other (a lift
    ride between), by :class:`~camera_pose_ros.runtime.floors.FloorSet`'s rules: recognise
    while unknown or lost; on a known floor, a frame its map does not solve (from retrieval
    alone: no regressor, so the node with one does better) counts as a failed refinement.

    Returns the share of frames on which the node holds the right floor, and per floor how
    many frames it took to hold it (the first floor: from the start; the others: from the
    ride).
    """
    from camera_pose_ros.io.floors import FloorSpec
    from camera_pose_ros.runtime.floors import FloorSet

    ids = list(dict.fromkeys(r["floor"] for r in rows))
    floors = FloorSet([(FloorSpec(f, 0.0, f), None) for f in ids],  # type: ignore[misc]
                      recheck_after=recheck_after)
    right, took = 0, {}
    for k, r in enumerate(rows):
        if floors.lost:
            if r["recognised"] is not None and not floors.select(r["recognised"]):
                floors.refined(True)
        else:
            floors.refined(r["inliers"].get(floors.current, 0) > 0)
        right += floors.current == r["floor"]
        start = next(j for j, q in enumerate(rows) if q["floor"] == r["floor"])
        if floors.current == r["floor"] and r["floor"] not in took:
            took[r["floor"]] = k - start + 1
    return {"recheck_after": recheck_after, "held_right_floor": right / max(1, len(rows)),
            "frames_to_hold_floor": took}


def markdown(res: dict) -> str:
    """The results table."""
    lines = ["| floor | query frames | right floor | wrong floor | none | median | within "
             "(25 cm, 2 deg) | outside 99% | refined told the floor | recognise p50 ms "
             "| one floor p50 ms | ratio |", "|" + "---|" * 12]
    for name, b in [*res["by_floor"].items(), ("all", res["all"])]:
        med = (f"{b['median_m'] * 100:.1f} cm, {b['median_deg']:.2f} deg"
               if "median_m" in b else "-")
        lines.append(
            f"| {name} | {b['frames']} | {b['recognised']:.1%} | {b['wrong_floor']:.1%} "
            f"| {b['unrecognised']:.1%} | {med} | {b.get('within_25cm_2deg', 0):.1%} "
            f"| {b.get('outside_99_any', 0):.1%} | {b['refined_alone']:.1%} "
            f"| {b['recognise_ms_p50']:.0f} | {b['alone_ms_p50']:.0f} "
            f"| {b['ratio_recognise_over_alone']:.2f} |")
    walk = res.get("node_walk")
    if walk:
        lines += ["", f"Node over the floors' walks in a row (recognise while unknown, and "
                      f"again after {walk['recheck_after']} failures in a row): the right floor "
                      f"held on {walk['held_right_floor']:.1%} of frames; frames to hold each "
                      f"floor: " + ", ".join(f"{f}: {n}" for f, n in
                                             walk["frames_to_hold_floor"].items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and write the results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rooms", type=int, default=4)
    ap.add_argument("--floors", type=int, default=2)
    ap.add_argument("--room-designs", type=int, default=0)
    ap.add_argument("--query-frames", type=int, default=60, help="per floor")
    ap.add_argument("--scenario", default="offpath")
    ap.add_argument("--alike-floors", action="store_true",
                    help="every floor the same rooms behind other corridors")
    ap.add_argument("--lift", action="store_true",
                    help="a lift cabin (the same on every floor) where every walk starts and "
                         "ends: the node's walk rides it from floor to floor")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="cache folder (default: a temp)")
    ap.add_argument("--quick", action="store_true", help="2 rooms, 2 floors, 10 query frames")
    args = ap.parse_args(argv)
    if args.quick:
        args.rooms, args.floors, args.query_frames = 2, 2, 10
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-floors-"))
    built = build(work, rooms=args.rooms, floors=args.floors, designs=args.room_designs,
                  query_frames=args.query_frames, seed=args.seed, scenario=args.scenario,
                  alike_floors=args.alike_floors, lift=args.lift)
    res = evaluate(work, args.floors)
    table = markdown(res)
    print(table)
    name = (f"floors-{args.scenario}-{args.floors}x{args.rooms}"
            + (f"x{args.room_designs}" if args.room_designs else "")
            + ("-alike" if args.alike_floors else "") + ("-lift" if args.lift else ""))
    path = write_results(name, {"build": built, **{k: v for k, v in res.items()
                                                     if k != "per_frame"}}, table)
    (work / "per_frame.json").write_text(json.dumps(res["per_frame"]))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
