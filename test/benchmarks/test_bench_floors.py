"""bench_floors' summary: recognised, wrong-floor and unrecognised shares, errors, ratio."""

from __future__ import annotations

import numpy as np

from benchmarks.bench_floors import markdown, node_walk, summarise
from camera_pose_ros.metrics import honesty_summary


def _row(floor: str, recognised: str | None, err_m: float = 0.0, alone: bool = True) -> dict:
    row = {"floor": floor, "recognised": recognised, "recognise_s": 0.3, "alone_s": 0.2,
           "alone_ok": alone}
    if alone:
        row["alone_err_m"] = 0.01
    if recognised is not None:
        cov = np.diag([0.01**2] * 3 + [np.radians(0.5) ** 2] * 3)
        row.update(pose_err_m=err_m, pose_err_deg=0.1, pose_err6=[err_m, 0, 0, 0, 0, 0],
                   pose_cov=cov.tolist())
    return row


def test_shares_errors_and_the_ratio_per_floor_and_in_all():
    rows = [_row("0", "0", 0.01), _row("0", "0", 0.5), _row("0", None, alone=False),
            _row("1", "1", 0.02), _row("1", "0", 0.03)]
    res = summarise(rows, honesty_summary)
    a, f0, f1 = res["all"], res["by_floor"]["0"], res["by_floor"]["1"]
    assert (a["frames"], a["recognised"], a["wrong_floor"], a["unrecognised"]) == (
        5, 0.6, 0.2, 0.2)
    assert f0["recognised"] == 2 / 3 and f0["unrecognised"] == 1 / 3
    assert f1["wrong_floor"] == 0.5 and f1["median_m"] == 0.02
    # within (25 cm, 2 deg) over all frames of the floor; the 0.5 m one is confidently wrong
    assert f0["within_25cm_2deg"] == 1 / 3
    assert f0["outside_99_any"] == 0.5 and f0["false_acceptance_25cm"] == 0.5
    assert a["refined_alone"] == 0.8 and a["ratio_recognise_over_alone"] == 1.5
    table = markdown(res)
    assert table.count("\n") == 2 + 3 and "| all | 5 | 60.0% | 20.0% | 20.0% |" in table


def test_the_node_holds_a_floor_until_its_map_keeps_failing():
    def row(floor: str, recognised: str | None, solves: set[str]) -> dict:
        return {"floor": floor, "recognised": recognised,
                "inliers": {f: (50 if f in solves else 0) for f in ("0", "1")}}

    rows = ([row("0", None, set()), row("0", "0", {"0"}), row("0", None, set()),
             row("0", "0", {"0"})]
            + [row("1", "1", {"1"})] * 2 + [row("1", None, set()), row("1", "1", {"1"})])
    walk = node_walk(rows, recheck_after=2)
    # unknown on the first frame; floor 0 from the second (one failure does not lose it);
    # after the ride, two failures on floor 0's map lose it, the next frame is not
    # recognised (floor 0 is kept), the one after is
    assert walk["frames_to_hold_floor"] == {"0": 2, "1": 4}
    assert walk["held_right_floor"] == (3 + 1) / 8
