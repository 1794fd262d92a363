"""`make bench`: run every benchmark and write one JSON plus a Markdown table.

    python -m benchmarks.run_all [--quick] [--honesty-scenes standard,offpath]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import socket
import tempfile
from pathlib import Path

from benchmarks import (
    bench_dashboard,
    bench_dataset,
    bench_honesty,
    bench_node,
    bench_refine,
    bench_training,
)
from benchmarks.common import RESULTS, machine


def _markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"Measured {results['date']} on {m.get('cpu')} ({m.get('cores')} cores, "
             f"{m.get('memory_gib')} GiB), torch {m.get('torch')}, GPU: {m.get('cuda')}", ""]
    d = results.get("dataset")
    if d:
        s = d["size"]
        lines += [
            "| dataset benchmark | value |", "|---|---|",
            f"| size | {s['frames']} frames, {s['width']}x{s['height']} |",
            f"| whole `camera-pose dataset` | {d['dataset_s']:.0f} s "
            f"({d['dataset_frames_per_s']:.2f} frames/s) |",
            "| stages (s) | " + ", ".join(f"{k} {v:.0f}" for k, v in d["stages_s"].items())
            + " |",
            f"| baseline: decode the bag | {d['decode_baseline_s']:.1f} s |",
            f"| ratio dataset / decode | {d['ratio_dataset_over_decode']:.0f}x |",
            f"| synthetic rendering | {d['synth_ms_per_frame']:.0f} ms/frame |",
            f"| registered | {d['registration_rate']:.1%} |",
            f"| alignment RMS | {d['alignment_rms_m'] * 100:.1f} cm |",
        ]
        e = d.get("pose_error_vs_ground_truth") or {}
        if e:
            lines.append(f"| camera poses vs ground truth (median) | "
                         f"{e['median_position_m'] * 100:.1f} cm, "
                         f"{e['median_rotation_deg']:.2f} deg |")
    tr = results.get("training")
    if tr:
        lines += [
            "", "| training benchmark | value |", "|---|---|",
            f"| backbone, input | {tr['backbone']}, {tr['input'][0]}x{tr['input'][1]} |",
            f"| full fine-tuning | {tr['full_images_per_s']:.1f} images/s |",
            f"| frozen backbone, cached features | {tr['cached_images_per_s']:.0f} images/s "
            f"(+ one-off extraction at {tr['feature_extraction_images_per_s']:.1f} images/s) |",
            f"| ratio cached / full | {tr['ratio_cached_over_full']:.0f}x |",
        ]
    nd = results.get("node")
    if nd:
        lines += [
            "", "| node latency ({} frames at {:g} Hz, {}, {}) | p50 | p99 |".format(
                nd["frames"], nd["rate_hz"], nd["image"], nd["device"]), "|---|---|---|",
            f"| relocalization_node, image published -> pose received | "
            f"{nd['node_ms_p50']:.1f} ms | {nd['node_ms_p99']:.1f} ms |",
            f"| echo node (transport floor) | {nd['echo_ms_p50']:.1f} ms | "
            f"{nd['echo_ms_p99']:.1f} ms |",
            f"| bare forward pass (same checkpoint) | {nd['forward_ms_p50']:.1f} ms | |",
            f"| node / (echo + forward) | {nd['ratio_node_over_echo_plus_forward']:.2f} | |",
        ]
    rf = results.get("refine")
    if rf:
        st = rf["refine_stages_ms_p50"]
        lines += [
            "", f"| refinement ({rf['frames']} query frames, {rf['image']}, "
            f"{rf['checkpoint']}) | p50 | p90 |", "|---|---|---|",
            f"| regression forward pass (with covariance samples) | "
            f"{rf['forward_ms_p50']:.1f} ms | {rf['forward_ms_p90']:.1f} ms |",
            f"| refinement | {rf['refine_ms_p50']:.1f} ms | {rf['refine_ms_p90']:.1f} ms |",
            "| refinement stages (p50) | " + ", ".join(f"{k} {v:.0f} ms" for k, v in st.items())
            + " | |",
            f"| ratio refine / forward | {rf['ratio_refine_over_forward']:.1f} | |",
            f"| refined | {rf['refined_share']:.0%} | |",
        ]
        e = rf.get("refine_errors")
        if e:
            lines.append(f"| refined error (median) | {e['median_position_m'] * 100:.1f} cm, "
                         f"{e['median_rotation_deg']:.2f} deg; "
                         f"{e['within_25cm_2deg']:.0%} within 25 cm, 2 deg | |")
        c = rf.get("refined_covariance_coverage")
        if c:
            lines.append(f"| refined position errors inside 1 / 2 sigma | "
                         f"{c['position_inside_1sigma']:.0%} / {c['position_inside_2sigma']:.0%}"
                         f" (expected 68% / 95%) | |")
    ho = results.get("honesty")
    if ho:
        lines += ["", bench_honesty.markdown(ho).rstrip("\n")]
    da = results.get("dashboard")
    if da:
        lines += ["", bench_dashboard.markdown(da).rstrip("\n")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Run the benchmarks and write results/<date>-<machine>.json and .md."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p.add_argument("--checkpoint", type=Path,
                   help="model for the node benchmark (default: untrained, preset shape)")
    p.add_argument("--honesty-scenes", default="standard,offpath",
                   help="scenes of the honesty benchmark (empty: skip it)")
    args = p.parse_args(argv)
    scenes = [s.strip() for s in args.honesty_scenes.split(",") if s.strip()]
    bench_honesty.check_scenes(scenes)  # before an hour of other benchmarks
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    results = {"date": date, "machine": machine()}
    keep = tempfile.TemporaryDirectory()
    work = Path(keep.name)
    results["dataset"] = (bench_dataset.run(110, 320, 240, workdir=work, query_frames=10,
                                            scale=0.7, loops=1.3)
                          if args.quick else
                          bench_dataset.run(300, 640, 480, workdir=work, query_frames=50))
    results["refine"] = bench_refine.run(work / "data", work / "synth" / "query",
                                         work / "synth" / "gt_query.csv")
    keep.cleanup()
    results["training"] = bench_training.run("resnet18", 96, 128, images=32 if args.quick
                                             else 64)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or bench_node._tiny_checkpoint(Path(tmp))
        results["node"] = bench_node.run(ckpt, frames=30 if args.quick else 200)
    results["dashboard"] = bench_dashboard.run(messages=30 if args.quick else 200)
    if scenes:
        results["honesty"] = bench_honesty.run(scenes, quick=args.quick)
    host = socket.gethostname().split(".")[0][:20] or "machine"
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = RESULTS / f"{date}-{host}"
    base.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    base.with_suffix(".md").write_text(_markdown(results))
    print(_markdown(results))
    print(f"written {base}.json and {base}.md")


if __name__ == "__main__":
    main()
