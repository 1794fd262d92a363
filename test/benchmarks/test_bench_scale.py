"""benchmarks/bench_scale.py: child processes' peak memory, failures, the table and plot."""

from __future__ import annotations

import sys

import pytest

from benchmarks.bench_scale import main, markdown, plot, run_child


def test_a_childs_peak_memory_and_a_failed_child(tmp_path):
    import numpy as np

    ballast = np.ones(400 * 2**20 // 8)  # this process's peak is no child's
    grab = "import numpy as np; a = np.ones(300 * 2**20 // 8); print(a.sum())"
    wall, peak = run_child([sys.executable, "-c", grab], tmp_path / "big.log")
    _, small = run_child([sys.executable, "-c", "print(1)"], tmp_path / "small.log")
    assert small < 100 < ballast.sum() and wall > 0  # MB
    assert peak > small + 250  # the child's 300 MB array
    assert "39321600" in (tmp_path / "big.log").read_text()  # its output is in the log
    with pytest.raises(SystemExit, match="no such thing"):
        run_child([sys.executable, "-c", "raise SystemExit('no such thing')"],
                  tmp_path / "bad.log")
    with pytest.raises(SystemExit, match="at least 2 rooms"):
        main(["--rooms", "1,4"])


def test_table_and_curves_from_figures(tmp_path):
    def row(rooms: int, keyframes: int, median: float | None) -> dict:
        return {"rooms": rooms, "keyframes": keyframes, "points3D": 90 * keyframes,
                "sfm_s": keyframes * 0.8, "dataset_s": keyframes, "dataset_peak_mb": 900.0,
                "refinement_map_mb": keyframes * 0.013, "refinement_map_kb_per_keyframe": 13.0,
                "localizer_peak_mb": 700.0, "forward_ms_p50": 70.0, "refine_ms_p50": 150.0,
                "ratio_refine_over_forward": 150 / 70, "refined_share": 0.95,
                "refined_median_m": median}

    rows = [row(2, 170, 0.012), row(4, 340, None)]
    table = markdown(rows).splitlines()
    assert len(table) == 4 and table[2].startswith("| 2 | 170 |")
    assert "| 1.2 |" in table[2] and table[3].endswith("| - |")
    assert table[2].startswith("| 2 | 170 | 15300 | incremental | 136 |")
    rows[1]["mappers"] = {m: {"mapping_s": s, "peak_mb": 800.0, "registered": 330,
                              "frames": 340, "path_median_m": 0.011, "path_p90_m": 0.03}
                          for m, s in (("incremental", 200.0), ("global", 50.0))}
    table = markdown(rows).splitlines()
    assert table[-1] == "| 4 | global | 50 | 800 | 330/340 | 1.1 | 3.0 |"
    out = plot(rows, tmp_path / "scale.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
