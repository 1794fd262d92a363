"""Honesty benchmark: can a SLAM/navigation stack believe the published covariances?

For each scene (a synthetic scenario: ``standard``, ``offpath``, ``lookalike``), the whole
command-line path: ``camera-pose synth --scenario S``, ``dataset``, ``train`` from the
shipped PoseNet preset, then on the query walk (never part of the map) ``localize --mode
regress`` and ``--mode refine`` with ``--ground-truth``, and ``evaluate`` on the test split.

Reported per scene and mode: median position/rotation error, the four threshold shares, the
refined share and false acceptance rate (accepted refined poses more than 25 cm off, among
the accepted; refine mode), the share of all published poses (regressed where refinement
failed) whose error lies outside the 99% ellipsoid of their own covariance, the 68% / 95%
coverage, the share of confidently wrong poses (over 1 m off, claiming under 0.5 m), the
median claimed sigma and ms per frame. Ratios: outside-99% share over its nominal 1%, refine
over regress time per frame.

Stages are cached under ``--work DIR``: a finished stage leaves ``.stage-NAME.json`` with
its command line and is skipped on a re-run with the same command; ``--from-stage NAME``
re-runs that stage and every later one (e.g. ``localize_refine`` after changing refinement,
without retraining). A re-run stage re-runs everything after it.

    python -m benchmarks.bench_honesty [--scenes standard,offpath] [--work DIR]
        [--from-stage STAGE] [--device auto|cpu|cuda] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.common import write_results

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "config" / "train_posenet.yaml"
STAGES = ("synth", "dataset", "train", "localize_regress", "localize_refine", "evaluate")
SCENES = ("standard", "offpath", "lookalike")
MODES = ("regress", "refine")
#: nominal share outside the 99% ellipsoid of one block
NOMINAL_OUTSIDE_99 = 0.01

FULL = {"frames": 300, "query_frames": 120, "width": 640, "height": 480, "scale": 1.0,
        "loops": 2.0, "epochs": None}
# the test session's small building (SfM registers it); 2 epochs: a smoke run, not figures
QUICK = {"frames": 110, "query_frames": 10, "width": 320, "height": 240, "scale": 0.7,
         "loops": 1.3, "epochs": 2}

KEYS = ("frames", "median_position_m", "median_rotation_deg", "within_5cm_5deg",
        "within_25cm_2deg", "within_50cm_5deg", "within_100cm_10deg", "refined_share",
        "accepted_frames", "false_acceptance_25cm", "outside_99_position",
        "outside_99_rotation", "outside_99_any", "coverage_68_position",
        "coverage_95_position", "coverage_68_rotation", "coverage_95_rotation",
        "overconfident_1m_0.5m", "wrong_1m", "median_claimed_sigma_m", "invalid_covariance",
        "ms_per_frame")


def scenario_supported(scene: str) -> bool:
    """Whether ``camera-pose synth`` takes ``--scenario scene``."""
    from camera_pose_ros.cli import build_parser

    with contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(SystemExit):
        args = build_parser().parse_args(["synth", "--out", "x", "--scenario", scene])
        return getattr(args, "scenario", None) == scene
    return False


def check_scenes(scenes: list[str]) -> None:
    """Refuse unknown scenes, and scenarios this checkout's ``synth`` cannot render, early."""
    for x in scenes:
        scene_rooms(x)  # refuses a malformed +rooms suffix
        s = scene_seed(x)[0]
        if s not in SCENES:
            raise SystemExit(f"unknown scene {s!r}; known: {', '.join(SCENES)}")
        if s != "standard" and not scenario_supported(s):
            raise SystemExit(f"camera-pose synth has no --scenario {s} in this checkout")


def scene_seed(scene: str) -> tuple[str, int]:
    """``offpath@1`` -> ("offpath", 1): a scenario and the seed of its building (default 0;
    another seed is another building, with other textures: a scene nothing was tuned on).
    A ``+roomsN[xK]`` suffix (see :func:`scene_rooms`) is not part of either."""
    name, _, seed = scene.partition("+")[0].partition("@")
    try:
        return name, int(seed or 0)
    except ValueError:
        raise SystemExit(f"scene {scene!r}: the seed after @ must be an integer") from None


def scene_rooms(scene: str) -> tuple[int, int]:
    """``offpath@1+rooms6x2`` -> (6, 2): ``synth --rooms 6 --room-designs 2`` (the corridor
    with rooms instead of the loop; ``x2`` repeats two room designs); (0, 0) without it."""
    _, plus, rooms = scene.partition("+")
    if not plus:
        return 0, 0
    n, _, k = rooms.removeprefix("rooms").partition("x")
    try:
        if not rooms.startswith("rooms") or int(n) < 2 or int(k or 0) < 0:
            raise ValueError
        return int(n), int(k or 0)
    except ValueError:
        raise SystemExit(f"scene {scene!r}: the suffix must be +roomsN or +roomsNxK "
                         "(N >= 2 rooms, K room designs)") from None


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "camera_pose_ros.cli", "-q", *args]


def _commands(root: Path, scene: str, size: dict, device: str) -> dict[str, tuple[list, list]]:
    """Per stage: (command line, outputs removed before it runs)."""
    synth, data, run = root / "synth", root / "data", root / "run"
    name, seed = scene_seed(scene)
    scen = [] if name == "standard" else ["--scenario", name]  # standard: the default
    scen += ["--seed", str(seed)] if seed else []
    rooms, designs = scene_rooms(scene)
    frames, query_frames = size["frames"], size["query_frames"]
    if rooms:  # the tour is about 21 m of walk per room: keep the loop's frames per metre
        scen += ["--rooms", str(rooms), "--room-designs", str(designs)]
        frames, query_frames = round(frames * rooms / 3.5), round(query_frames * rooms / 3.5)
    epochs = ["--epochs", str(size["epochs"])] if size["epochs"] else []
    query = ["--checkpoint", str(run / "model.pt"), "--bag", str(synth / "query"),
             "--ground-truth", str(synth / "gt_query.csv"), "--device", device]
    return {
        "synth": (_cli("synth", "--out", str(synth), "--frames", str(frames),
                       "--query-frames", str(query_frames), "--width",
                       str(size["width"]), "--height", str(size["height"]), "--scale",
                       str(size["scale"]), "--loops", str(size["loops"]), *scen), [synth]),
        "dataset": (_cli("dataset", "--bag", str(synth / "mapping"), "--control-points",
                         str(synth / "control_points.csv"), "--out", str(data),
                         "--floorplan", str(synth / "floorplan.yaml"), "--ground-truth",
                         str(synth / "gt_mapping.csv")), [data]),
        "train": (_cli("train", "--data", str(data), "--config", str(PRESET), "--out",
                       str(run), "--device", device, *epochs), [run]),
        "localize_regress": (_cli("localize", *query, "--out", str(root / "regress.csv"),
                                  "--mode", "regress"),
                             [root / "regress.csv", root / "regress.metrics.json"]),
        "localize_refine": (_cli("localize", *query, "--out", str(root / "refine.csv"),
                                 "--mode", "refine"),
                            [root / "refine.csv", root / "refine.metrics.json"]),
        "evaluate": (_cli("evaluate", "--checkpoint", str(run / "model.pt"), "--data",
                          str(data), "--split", "test", "--out", str(root / "eval"),
                          "--device", device, "--mode", "both"), [root / "eval"]),
    }


def run_stages(root: Path, commands: dict[str, tuple[list, list]], from_stage: str | None,
               log: list[str] | None = None) -> dict[str, float]:
    """Run the stages in order, skipping finished ones; return seconds per stage run now.

    A stage is finished when its marker holds the same command line. ``from_stage`` and
    every stage after a re-run one run again.
    """
    root.mkdir(parents=True, exist_ok=True)
    forced = False
    seconds: dict[str, float] = {}
    order = list(commands)  # the stages in the order the commands were given
    for i, name in enumerate(order):
        argv, outputs = commands[name]
        marker = root / f".stage-{name}.json"
        forced = forced or (from_stage is not None and i >= order.index(from_stage))
        if not forced and marker.is_file():
            with contextlib.suppress(ValueError):
                if json.loads(marker.read_text()).get("argv") == argv:
                    continue
        forced = True  # everything after a re-run stage depends on it
        marker.unlink(missing_ok=True)
        for path in outputs:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:  # a file, or a link (to another run's folder: its target is kept)
                path.unlink(missing_ok=True)
        if log is not None:
            log.append(name)
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True)
        seconds[name] = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{root.name}: stage {name} failed ({proc.returncode}): "
                             f"{proc.stderr.strip()[-1500:]}")
        marker.write_text(json.dumps({"argv": argv, "seconds": seconds[name]}) + "\n")
    return seconds


def _pick(m: dict) -> dict:
    return {k: m[k] for k in KEYS if k in m}


def scene_results(root: Path) -> dict:
    """Figures of one finished scene folder."""
    out: dict = {"query": {}, "test_split": {}}
    for mode in MODES:
        m = json.loads((root / f"{mode}.metrics.json").read_text())
        out["query"][mode] = {**_pick(m), "outside_99_position_over_nominal":
                              m["outside_99_position"] / NOMINAL_OUTSIDE_99}
    q = out["query"]
    pub = json.loads((root / "refine.metrics.json").read_text()).get("regressed_as_published")
    if pub:  # the node's regressed poses in refine mode, widened by the map's verdicts
        q["refine: regressed as published"] = {
            **_pick(pub), "ms_per_frame": q["regress"]["ms_per_frame"],
            "outside_99_position_over_nominal": pub["outside_99_position"] / NOMINAL_OUTSIDE_99}
    q["refine"]["ms_ratio_refine_over_regress"] = (q["refine"]["ms_per_frame"]
                                                   / max(q["regress"]["ms_per_frame"], 1e-9))
    ev = json.loads((root / "eval" / "metrics.json").read_text())
    for mode, m in (ev.get("modes") or {"regress": ev}).items():
        out["test_split"][mode] = _pick(m)
    if "improvement_over_baseline" in ev:
        out["test_split"]["regress_over_mean_pose_baseline"] = ev["improvement_over_baseline"]
    stages = {}
    for name in STAGES:
        marker = root / f".stage-{name}.json"
        if marker.is_file():
            stages[name] = json.loads(marker.read_text()).get("seconds")
    out["stage_seconds"] = stages
    return out


def run(scenes: list[str] | tuple[str, ...] = ("standard", "offpath"), *,
        work: Path | None = None, from_stage: str | None = None, device: str = "auto",
        quick: bool = False, progress: bool = True) -> dict:
    """Run (or resume) every scene's stages; return the figures."""
    check_scenes(list(scenes))
    if from_stage is not None and from_stage not in STAGES:
        raise SystemExit(f"unknown stage {from_stage!r}; stages: {', '.join(STAGES)}")
    size = QUICK if quick else FULL
    res: dict = {"quick": quick, "size": size, "preset": PRESET.name, "device": device,
                 "scenes": {}}
    with _workdir(work) as base:
        for scene in scenes:
            root = base / scene
            ran: list[str] = []
            t0 = time.perf_counter()
            run_stages(root, _commands(root, scene, size, device), from_stage, ran)
            if progress:
                print(f"{scene}: ran {', '.join(ran) or 'nothing (cached)'} in "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
            res["scenes"][scene] = {**scene_results(root), "stages_run_now": ran}
    return res


@contextlib.contextmanager
def _workdir(work: Path | None) -> Iterator[Path]:
    if work is not None:
        Path(work).mkdir(parents=True, exist_ok=True)
        yield Path(work)
        return
    with tempfile.TemporaryDirectory(prefix="bench_honesty_") as tmp:
        yield Path(tmp)


def _pct(m: dict, key: str) -> str:
    return "-" if m.get(key) is None else f"{100 * m[key]:.0f}%"


def markdown(res: dict) -> str:
    """Markdown tables: the query walk per scene and mode, then the test split."""
    lines = [
        f"Honesty benchmark ({'quick smoke run' if res.get('quick') else 'full'}: "
        f"{res['size']['frames']} mapping + {res['size']['query_frames']} query frames at "
        f"{res['size']['width']}x{res['size']['height']}, preset {res['preset']})", "",
        "| query walk | mode | median | 5cm,5deg / 25cm,2deg / 50cm,5deg / 1m,10deg "
        "| refined | false accept | outside 99% any (pos, x nominal) | coverage 68/95 pos "
        "| coverage 68/95 rot | confidently wrong | claimed sigma | ms/frame |",
        "|" + "---|" * 12,
    ]
    for scene, s in res["scenes"].items():
        for mode, m in s["query"].items():
            lines.append(
                f"| {scene} | {mode} | {m['median_position_m']:.2f} m, "
                f"{m['median_rotation_deg']:.1f} deg | {_pct(m, 'within_5cm_5deg')} / "
                f"{_pct(m, 'within_25cm_2deg')} / {_pct(m, 'within_50cm_5deg')} / "
                f"{_pct(m, 'within_100cm_10deg')} | {_pct(m, 'refined_share')} | "
                f"{_pct(m, 'false_acceptance_25cm')} | {_pct(m, 'outside_99_any')} "
                f"({_pct(m, 'outside_99_position')}, "
                f"{m['outside_99_position_over_nominal']:.0f}x) | "
                f"{_pct(m, 'coverage_68_position')} / {_pct(m, 'coverage_95_position')} | "
                f"{_pct(m, 'coverage_68_rotation')} / {_pct(m, 'coverage_95_rotation')} | "
                f"{_pct(m, 'overconfident_1m_0.5m')} | {m['median_claimed_sigma_m']:.2f} m | "
                f"{m['ms_per_frame']:.0f} |")
    lines += ["", "Nominal: 1% of one block outside its 99% ellipsoid (about 2% for either), "
              "coverage 68% / 95%, 0% confidently wrong (over 1 m off claiming under "
              "0.5 m).", "",
              "| test split | mode | median | 25cm,2deg | outside 99% any | coverage 68/95 "
              "pos | confidently wrong | claimed sigma |", "|" + "---|" * 8]
    for scene, s in res["scenes"].items():
        for mode in MODES:
            m = s["test_split"].get(mode)
            if not m:
                continue
            lines.append(
                f"| {scene} | {mode} | {m['median_position_m']:.2f} m, "
                f"{m['median_rotation_deg']:.1f} deg | {_pct(m, 'within_25cm_2deg')} | "
                f"{_pct(m, 'outside_99_any')} | {_pct(m, 'coverage_68_position')} / "
                f"{_pct(m, 'coverage_95_position')} | {_pct(m, 'overconfident_1m_0.5m')} | "
                f"{m['median_claimed_sigma_m']:.2f} m |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    """Command line entry; prints the table and writes the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", default="standard,offpath",
                   help=f"comma-separated, of {', '.join(SCENES)}; NAME@SEED renders "
                        "another building (e.g. offpath@1)")
    p.add_argument("--work", type=Path,
                   help="keep every stage's output here and skip finished stages on a re-run "
                        "(default: a temporary folder, nothing cached)")
    p.add_argument("--from-stage", choices=STAGES, help="re-run this stage and the later ones")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="small sizes, 2 epochs (a smoke run)")
    args = p.parse_args(argv)
    scenes = [s.strip() for s in args.scenes.split(",") if s.strip()]
    res = run(scenes, work=args.work, from_stage=args.from_stage, device=args.device,
              quick=args.quick)
    md = markdown(res)
    path = write_results("honesty", res, markdown=md)
    print(md)
    print(f"written {path} and {path.with_suffix('.md')}")
    return res


if __name__ == "__main__":
    main()
