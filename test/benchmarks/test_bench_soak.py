"""benchmarks/bench_soak.py: resident memory of a process, and the soak's memory summary."""

from __future__ import annotations

import os

import numpy as np
import pytest

from benchmarks.bench_soak import markdown, memory_summary, resident_mb


def test_resident_memory_sees_anonymous_memory_grow():
    before = resident_mb(os.getpid())
    assert set(before) == {"total", "anon", "file"}
    ballast = np.ones(200 * 2**20 // 8)  # 200 MB, touched
    after = resident_mb(os.getpid())
    assert after["anon"] - before["anon"] > 150 and ballast.sum() > 0
    assert abs(after["total"] - after["anon"] - after["file"]) < 50  # + shared memory


def test_memory_summary_slopes_after_the_warm_up():
    t = np.arange(0.0, 600.0, 10.0)
    leak = [{"total": 900.0 + 2.0 * s / 60, "anon": 500.0 + 2.0 * s / 60, "file": 400.0}
            for s in t]
    leak[0] = {"total": 100.0, "anon": 100.0, "file": 0.0}  # loading: before the warm-up
    m = memory_summary(t, leak, warmup_s=60.0)
    assert m["samples"] == 54 and m["anon_mb_per_min"] == pytest.approx(2.0)
    assert m["file_mb_per_min"] == pytest.approx(0.0, abs=1e-9)
    assert m["total_mb_after_warmup"] == pytest.approx(902.0)
    assert m["total_mb_max"] == pytest.approx(900.0 + 2.0 * 590 / 60)
    with pytest.raises(ValueError, match="fewer than 2 memory samples after the 60 s"):
        memory_summary(t[:6], leak[:6], warmup_s=60.0)
    res = {"minutes": 10.0, "map_mb": 47.5, "sent": 3000, "refined": 1200,
           "refined_share_of_sent": 0.4, "refined_median_m": 0.021, "memory": m,
           "honesty": {"outside_99_any": 0.012}, "diagnostics": {"refine_ms_p50": "301.0"}}
    row = markdown(res).splitlines()[2]
    assert row == ("| 10 | 47.5 | 3000 | 1200 (40%) | 2.1 cm | 1.2% | 301.0 | 902 | 920 "
                   "| +2.00 | +2.00 |")
