"""camera_pose_ros.fileio: outputs appear whole or not at all, and temporaries are cleaned."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from camera_pose_ros.errors import OutputError
from camera_pose_ros.fileio import (
    atomic_dir,
    atomic_path,
    check_output_dir,
    check_output_file,
    remove_stale_temporaries,
    write_json_atomic,
)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".csv" and tmp.parent == tmp_path
        tmp.write_text("new\n")
    assert target.read_text() == "new\n"


def test_a_folder_is_replaced_whole(tmp_path):
    final = tmp_path / "run"
    final.mkdir()
    (final / "old.txt").write_text("x")
    with pytest.raises(KeyboardInterrupt), atomic_dir(final) as tmp:
        (tmp / "part.txt").write_text("y")
        raise KeyboardInterrupt
    assert sorted(p.name for p in final.iterdir()) == ["old.txt"]
    with atomic_dir(final) as tmp:
        (tmp / "new.txt").write_text("z")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".poses.csv.tmp-{dead}-0123abcd.csv"
    stale.write_text("killed")
    live = tmp_path / f".poses.csv.tmp-{os.getpid()}-89abcdef.csv"
    live.write_text("still writing")
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert live.exists() and other.exists() and not stale.exists()


def test_write_json_atomic_writes_indented_json(tmp_path):
    path = write_json_atomic(tmp_path / "a" / "b.json", {"x": [1, 2]})
    assert json.loads(path.read_text()) == {"x": [1, 2]}


def test_outputs_are_checked_before_any_work(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="it is a folder"):
        check_output_file(tmp_path)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_file(tmp_path / "file" / "x.csv")
    with pytest.raises(OutputError, match="it is a file"):
        check_output_dir(tmp_path / "file")
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing
