"""The honesty benchmark's stage cache: finished stages are skipped, later ones re-run.

Stages here are tiny Python commands that append their name to a log file, so the test
sees exactly which ran.
"""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks.bench_honesty import (
    KEYS,
    STAGES,
    check_scenes,
    markdown,
    run_stages,
    scene_results,
)


def _commands(root, log, tag: str = "") -> dict:
    out = {}
    for name in STAGES:
        code = (f"import pathlib; p = pathlib.Path({str(log)!r}); "
                f"p.write_text(p.read_text() + '{name}\\n' if p.exists() else '{name}\\n'); "
                f"pathlib.Path({str(root / name)!r}).write_text('{tag}')")
        out[name] = ([sys.executable, "-c", code, tag], [root / name])
    return out


def _ran(log) -> list[str]:
    text = log.read_text() if log.exists() else ""
    log.unlink(missing_ok=True)
    return text.split()


def test_finished_stages_are_skipped_and_from_stage_reruns_the_rest(tmp_path):
    root, log = tmp_path / "scene", tmp_path / "ran.txt"
    ran_now: list[str] = []
    run_stages(root, _commands(root, log), None, ran_now)
    assert _ran(log) == list(STAGES) == ran_now
    run_stages(root, _commands(root, log), None)
    assert _ran(log) == []  # all cached
    run_stages(root, _commands(root, log), "localize_refine")
    assert _ran(log) == ["localize_refine", "evaluate"]
    # a stage whose command changed runs again, and so does everything after it
    cmds = _commands(root, log)
    cmds["train"] = _commands(root, log, tag="more-epochs")["train"]
    run_stages(root, cmds, None)
    assert _ran(log) == list(STAGES[STAGES.index("train"):])
    assert (root / "train").read_text() == "more-epochs"
    # an interrupted stage (no marker) runs again with the rest
    (root / ".stage-localize_regress.json").unlink()
    run_stages(root, cmds, None)
    assert _ran(log) == ["localize_regress", "localize_refine", "evaluate"]


def test_a_failing_stage_stops_the_run_without_a_marker(tmp_path):
    root, log = tmp_path / "scene", tmp_path / "ran.txt"
    cmds = _commands(root, log)
    cmds["dataset"] = ([sys.executable, "-c", "import sys; sys.exit('SfM failed')"], [])
    with pytest.raises(SystemExit, match="dataset failed.*SfM failed"):
        run_stages(root, cmds, None)
    assert _ran(log) == ["synth"]
    assert not (root / ".stage-dataset.json").exists()
    assert (root / ".stage-synth.json").exists()


def test_unknown_scenes_are_refused_before_any_work():
    with pytest.raises(SystemExit, match="unknown scene"):
        check_scenes(["standard", "upside-down"])
    check_scenes(["standard"])


def _metrics(median_m: float, outside: float, **extra) -> dict:
    keys = dict.fromkeys(KEYS, 0.5)
    return {**keys, "median_position_m": median_m, "outside_99_position": outside,
            "outside_99_any": outside, **extra}


def test_the_regressed_poses_as_published_in_refine_mode_get_their_own_row(tmp_path):
    root = tmp_path / "offpath"
    (root / "eval").mkdir(parents=True)
    (root / "regress.metrics.json").write_text(json.dumps(_metrics(2.7, 0.37)))
    (root / "refine.metrics.json").write_text(json.dumps(_metrics(
        0.01, 0.0, refined_share=0.94,
        regressed_as_published=_metrics(2.7, 0.02))))
    (root / "eval" / "metrics.json").write_text(json.dumps(_metrics(1.4, 0.0)))
    res = scene_results(root)
    rows = res["query"]
    assert list(rows) == ["regress", "refine", "refine: regressed as published"]
    assert rows["refine: regressed as published"]["outside_99_any"] == 0.02
    assert rows["refine: regressed as published"]["outside_99_position_over_nominal"] == (
        pytest.approx(2.0))
    table = markdown({"quick": True, "size": {"frames": 1, "query_frames": 1, "width": 1,
                                              "height": 1}, "preset": "p",
                      "scenes": {"offpath": res}})
    line = next(x for x in table.splitlines() if "regressed as published" in x)
    assert "| offpath | refine: regressed as published | 2.70 m" in line and "2% (2%" in line


def test_a_rerun_stage_unlinks_a_linked_output_and_keeps_its_target(tmp_path):
    root, log = tmp_path / "scene", tmp_path / "log"
    root.mkdir()
    elsewhere = tmp_path / "other_run"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("another run's output")
    commands = _commands(root, log)
    commands["synth"] = (commands["synth"][0], [root / "linked"])
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    run_stages(root, commands, None)
    assert not (root / "linked").exists() and (elsewhere / "keep.txt").is_file()
    assert _ran(log) == list(STAGES)
