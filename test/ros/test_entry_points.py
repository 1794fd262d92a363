"""The installed node executables start, report a bad setup in one line, and stop cleanly."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import pytest

from test.conftest import wait_for

pytestmark = pytest.mark.slow


def test_relocalization_node_survives_a_missing_checkpoint_and_stops_on_sigterm(
        venv_bin, tmp_path):
    proc = subprocess.Popen(
        [str(venv_bin / "relocalization_node"), "--ros-args", "-p",
         f"model_path:={tmp_path / 'missing.pt'}", "-p", "device:=cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        assert wait_for(lambda: any("configure failed" in ln for ln in lines), 90), lines
        time.sleep(0.5)
        assert proc.poll() is None, "the node exited instead of waiting to be configured"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=5)
    failure = next(ln for ln in lines if "configure failed" in ln)
    assert "missing.pt" in failure
    assert not any("Traceback" in ln for ln in lines), "".join(lines)


def test_recorder_node_closes_a_valid_bag_on_sigterm(venv_bin, tmp_path):
    from camera_pose_ros.io.bags import open_bag

    out = tmp_path / "walk"
    proc = subprocess.Popen([str(venv_bin / "recorder_node"), "--ros-args", "-p",
                             f"output:={out}", "-p", "topics:=['/entry_points/image']"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(lambda: any(out.parent.glob("walk*")), 90)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        text = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, text
    assert "closed" in text and "Traceback" not in text
    bag = next(p for p in out.parent.iterdir() if (p / "metadata.yaml").is_file())
    reader = open_bag(bag)  # readers refuse a bag that was not closed
    try:
        assert reader.message_count == 0
    finally:
        reader.close()


def test_recorder_node_refuses_an_unwritable_output_in_one_line(venv_bin, tmp_path):
    (tmp_path / "file").write_text("")
    proc = subprocess.run(
        [str(venv_bin / "recorder_node"), "--ros-args", "-p",
         f"output:={tmp_path / 'file' / 'bag'}"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("recorder_node: ") and "file" in last
