"""The installed `camera-pose` command: help, version, clear one-line errors."""

from __future__ import annotations

import subprocess
from pathlib import Path


def run(venv_bin: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv_bin / "camera-pose"), *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def test_help_lists_every_command(venv_bin):
    proc = run(venv_bin, "--help")
    assert proc.returncode == 0
    for cmd in ("synth", "dataset", "frames", "sfm", "align", "split", "train", "evaluate",
                "localize", "export"):
        assert cmd in proc.stdout


def test_missing_input_is_one_line_error(venv_bin, tmp_path):
    proc = run(venv_bin, "-q", "dataset", "--bag", str(tmp_path / "nope"), "--control-points",
               str(tmp_path / "cp.csv"), "--out", str(tmp_path / "data"))
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert err and "bag not found" in err[-1]
    assert "Traceback" not in proc.stderr


def test_unknown_config_key_is_an_error(venv_bin, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sfm:\n  matchr: sequential\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "frames.csv").write_text("image,stamp\n")
    proc = run(venv_bin, "sfm", "--data", str(tmp_path / "data"), "--config", str(cfg))
    assert proc.returncode == 2
    assert "unknown key(s) matchr" in proc.stderr
