"""Every model and mode side by side on the demo building: PoseNet, MapNet, structure-aware.

The whole command-line path, as a user runs it: ``camera-pose synth`` (the demo building:
300 mapping + 120 query frames at 640x480), ``dataset`` (SfM, aligned with the control
points and the robot's TF), ``train`` from each shipped preset (CPU unless ``--device``),
then for each model ``evaluate`` on the test split (every mode it has: regress, refine, and
scr-pnp for a structure-aware model) and ``localize`` on the query walk (a path never
trained on) in each mode with ``--ground-truth``.

Reported per model and mode, on the test split and on the query walk: median errors, the
four threshold shares, the share outside the 99% ellipsoid of the pose's own covariance
(either block), the 68% position coverage, ms per frame; per model the training time (the
``train`` stage's wall time, data loading and calibration included). Ratios: the PoseNet
preset's median query position error over the structure-aware model's (direct and
scr-pnp), measured in the same run.

Stages are cached under ``--work DIR`` as in ``bench_honesty`` (``--from-stage NAME``
re-runs from there).

    python -m benchmarks.bench_models [--models posenet,mapnet,structure_aware]
        [--work DIR] [--from-stage STAGE] [--device auto|cpu|cuda] [--quick]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.bench_honesty import FULL, QUICK, _cli, _workdir, run_stages
from benchmarks.common import write_results

REPO = Path(__file__).resolve().parents[1]
PRESETS = {"posenet": "train_posenet.yaml", "mapnet": "train_mapnet.yaml",
           "structure_aware": "train_structure_aware.yaml"}
KEYS = ("frames", "median_position_m", "median_rotation_deg", "within_5cm_5deg",
        "within_25cm_2deg", "within_50cm_5deg", "within_100cm_10deg", "refined_share",
        "solved_share", "outside_99_any", "coverage_68_position", "coverage_95_position",
        "overconfident_1m_0.5m", "median_claimed_sigma_m", "ms_per_frame")


def modes(model: str) -> tuple[str, ...]:
    """The modes a model runs in: the network alone, refined, and scr-pnp where it can."""
    return ("regress", "refine", "scr-pnp") if model == "structure_aware" else (
        "regress", "refine")


def commands(root: Path, models: list[str], size: dict, device: str
             ) -> dict[str, tuple[list, list]]:
    """Per stage, in order: (command line, outputs removed before it runs)."""
    synth, data = root / "synth", root / "data"
    epochs = ["--epochs", str(size["epochs"])] if size["epochs"] else []
    out: dict[str, tuple[list, list]] = {
        "synth": (_cli("synth", "--out", str(synth), "--frames", str(size["frames"]),
                       "--query-frames", str(size["query_frames"]), "--width",
                       str(size["width"]), "--height", str(size["height"]), "--scale",
                       str(size["scale"]), "--loops", str(size["loops"])), [synth]),
        "dataset": (_cli("dataset", "--bag", str(synth / "mapping"), "--control-points",
                         str(synth / "control_points.csv"), "--out", str(data),
                         "--floorplan", str(synth / "floorplan.yaml"), "--ground-truth",
                         str(synth / "gt_mapping.csv")), [data])}
    for model in models:
        run = root / f"run_{model}"
        preset = REPO / "config" / PRESETS[model]
        extra = list(epochs)
        if size["epochs"] and model == "structure_aware":  # the stages must fit the epochs
            cfg = root / "structure_quick.yaml"
            text = preset.read_text()
            cfg.parent.mkdir(parents=True, exist_ok=True)
            cfg.write_text("\n".join(
                f"geometry_epochs: {max(size['epochs'] - 1, 0)}" if line.startswith(
                    "geometry_epochs:") else line for line in text.splitlines()) + "\n")
            preset = cfg
        out[f"train_{model}"] = (_cli("train", "--data", str(data), "--config", str(preset),
                                      "--out", str(run), "--device", device, *extra), [run])
        ckpt = str(run / "model.pt")
        out[f"evaluate_{model}"] = (_cli("evaluate", "--checkpoint", ckpt, "--data", str(data),
                                         "--split", "test", "--out",
                                         str(root / f"eval_{model}"), "--device", device,
                                         "--mode", "auto"), [root / f"eval_{model}"])
        for mode in modes(model):
            stem = root / f"query_{model}_{mode}"
            out[f"query_{model}_{mode}"] = (
                _cli("localize", "--checkpoint", ckpt, "--bag", str(synth / "query"),
                     "--ground-truth", str(synth / "gt_query.csv"), "--device", device,
                     "--out", f"{stem}.csv", "--mode", mode),
                [Path(f"{stem}.csv"), Path(f"{stem}.metrics.json")])
    return out


def _pick(m: dict) -> dict:
    return {k: m[k] for k in KEYS if k in m}


def results(root: Path, models: list[str]) -> dict:
    """Figures of a finished work folder."""
    out: dict = {"models": {}}
    for model in models:
        ev = json.loads((root / f"eval_{model}" / "metrics.json").read_text())
        test = {mode: _pick(m) for mode, m in (ev.get("modes") or {"regress": ev}).items()}
        query = {mode: _pick(json.loads((root / f"query_{model}_{mode}.metrics.json")
                                        .read_text())) for mode in modes(model)}
        marker = root / f".stage-train_{model}.json"
        train_s = json.loads(marker.read_text()).get("seconds") if marker.is_file() else None
        ckpt = root / f"run_{model}" / "model.pt"
        out["models"][model] = {"preset": PRESETS[model], "train_seconds": train_s,
                                "test_split": test, "query_walk": query,
                                "checkpoint_bytes": ckpt.stat().st_size if ckpt.is_file()
                                else None}
    m = out["models"]
    if "posenet" in m and "structure_aware" in m:
        pn = m["posenet"]["query_walk"]["regress"]["median_position_m"]
        sa = m["structure_aware"]["query_walk"]
        out["ratios"] = {
            "query_posenet_over_structure_direct": pn / max(
                sa["regress"]["median_position_m"], 1e-9),
            "query_posenet_over_structure_scr_pnp": pn / max(
                sa["scr-pnp"]["median_position_m"], 1e-9)}
    return out


def run(models: list[str], *, work: Path | None = None, from_stage: str | None = None,
        device: str = "auto", quick: bool = False) -> dict:
    """Run (or resume) every stage; return the figures."""
    unknown = sorted(set(models) - set(PRESETS))
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(PRESETS)}")
    size = QUICK if quick else FULL
    with _workdir(work) as root:
        cmds = commands(root, models, size, device)
        if from_stage is not None and from_stage not in cmds:
            raise SystemExit(f"unknown stage {from_stage!r}; stages: {', '.join(cmds)}")
        ran: list[str] = []
        run_stages(root, cmds, from_stage, ran)
        return {"quick": quick, "size": size, "device": device, "stages_run_now": ran,
                **results(root, models)}


def _pct(m: dict, key: str) -> str:
    return "-" if m.get(key) is None else f"{100 * m[key]:.0f}%"


def markdown(res: dict) -> str:
    """One table: every model and mode, test split and query walk."""
    s = res["size"]
    lines = [f"Models benchmark ({'quick smoke run' if res['quick'] else 'full'}: "
             f"{s['frames']} mapping + {s['query_frames']} query frames at {s['width']}x"
             f"{s['height']}, device {res['device']})", "",
             "| model (train time) | mode | where | median | 5cm,5deg / 25cm,2deg / "
             "50cm,5deg / 1m,10deg | outside 99% | coverage 68% pos | solved or refined "
             "| ms/frame |", "|" + "---|" * 9]
    for model, m in res["models"].items():
        t = m["train_seconds"]
        name = f"{model} ({t / 60:.1f} min)" if t else model
        for where, key in (("test split", "test_split"), ("query walk", "query_walk")):
            for mode, f in m[key].items():
                share = f.get("solved_share", f.get("refined_share"))
                lines.append(
                    f"| {name} | {mode} | {where} | {f['median_position_m']:.3f} m, "
                    f"{f['median_rotation_deg']:.2f} deg | {_pct(f, 'within_5cm_5deg')} / "
                    f"{_pct(f, 'within_25cm_2deg')} / {_pct(f, 'within_50cm_5deg')} / "
                    f"{_pct(f, 'within_100cm_10deg')} | {_pct(f, 'outside_99_any')} | "
                    f"{_pct(f, 'coverage_68_position')} | "
                    f"{'-' if share is None else f'{100 * share:.0f}%'} | "
                    f"{f.get('ms_per_frame', float('nan')):.0f} |")
    if "ratios" in res:
        r = res["ratios"]
        lines += ["", f"Query walk, PoseNet median position over structure-aware: direct "
                  f"{r['query_posenet_over_structure_direct']:.1f}x, scr-pnp "
                  f"{r['query_posenet_over_structure_scr_pnp']:.1f}x (same run)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    """Command line entry; prints the table and writes the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(PRESETS),
                   help=f"comma-separated, of {', '.join(PRESETS)}")
    p.add_argument("--work", type=Path,
                   help="keep every stage's output here and skip finished stages on a re-run")
    p.add_argument("--from-stage", help="re-run this stage and the later ones")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="small sizes, 2 epochs (a smoke run)")
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    res = run(models, work=args.work, from_stage=args.from_stage, device=args.device,
              quick=args.quick)
    md = markdown(res)
    path = write_results("models", res, markdown=md)
    print(md)
    print(f"written {path} and {path.with_suffix('.md')}")
    return res


if __name__ == "__main__":
    main()
