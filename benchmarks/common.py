"""Shared helpers of the benchmarks: machine description, timing, result files."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """What the figures were measured on."""
    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        info["memory_gib"] = round(mem_kb / 2**20, 1)
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """Wall time of one call and its result."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median_ms(samples_s: list[float]) -> float:
    """Median of samples in seconds, as milliseconds."""
    return 1000.0 * statistics.median(samples_s)


def write_results(name: str, results: dict, markdown: str | None = None) -> Path:
    """Write ``results/<date>-<host>-<name>.json`` (and ``.md`` with ``markdown``).

    Returns the JSON path.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    host = socket.gethostname().split(".")[0][:20] or "machine"
    path = RESULTS / f"{stamp}-{host}-{name}.json"
    payload = {"benchmark": name, "date": stamp, "machine": machine(), **results}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    if markdown is not None:
        m = payload["machine"]
        path.with_suffix(".md").write_text(
            f"Measured {stamp} on {m.get('cpu')} ({m.get('cores')} cores), torch "
            f"{m.get('torch')}, GPU: {m.get('cuda')}\n\n{markdown}")
    return path
