"""The package builds with colcon in a fresh workspace, and its executables run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRACKED_TOP = ("camera_pose_ros", "config", "launch", "models", "resource", "rviz",
               "package.xml", "setup.py", "setup.cfg")


@pytest.fixture(scope="module")
def colcon_ws(tmp_path_factory, venv_bin) -> Path:
    """Build this package with `colcon build` in a temporary workspace (once per module)."""
    colcon = venv_bin / "colcon"
    if not colcon.exists():
        pytest.fail("colcon is not installed in the environment (make venv installs it)")
    ws = tmp_path_factory.mktemp("ws")
    src = ws / "src" / "camera_pose_ros"
    src.mkdir(parents=True)
    for name in TRACKED_TOP:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
        elif p.exists():
            shutil.copy2(p, src / name)
    env = dict(os.environ, PATH=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(
        [str(colcon), "build", "--base-paths", "src", "--event-handlers", "console_direct-"],
        cwd=ws, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, (
        f"colcon build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return ws


def _installed_env(ws: Path) -> dict:
    """Environment that `source install/setup.bash` would give (as far as Python needs)."""
    site = next((ws / "install" / "camera_pose_ros" / "lib").glob("python3*/site-packages"))
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{site}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["AMENT_PREFIX_PATH"] = f"{ws / 'install' / 'camera_pose_ros'}{os.pathsep}" + env.get(
        "AMENT_PREFIX_PATH", "")
    return env


def test_colcon_install_layout(colcon_ws):
    prefix = colcon_ws / "install" / "camera_pose_ros"
    share = prefix / "share" / "camera_pose_ros"
    assert (share / "package.xml").is_file()
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages"
            / "camera_pose_ros").is_file()
    assert (share / "config" / "relocalization.yaml").is_file()
    assert list((share / "launch").glob("*.launch.py")), "no launch files installed"
    lib = prefix / "lib" / "camera_pose_ros"  # where `ros2 run` looks
    for exe in ("camera-pose", "relocalization_node", "recorder_node", "bag_player"):
        assert (lib / exe).is_file(), f"{exe} not installed under lib/camera_pose_ros"


def test_installed_cli_runs_from_install_space(colcon_ws):
    exe = colcon_ws / "install" / "camera_pose_ros" / "lib" / "camera_pose_ros" / "camera-pose"
    code = ("import camera_pose_ros, sys; from camera_pose_ros.cli import main; "
            "print(camera_pose_ros.__file__); sys.exit(main(['--help']))")
    env = _installed_env(colcon_ws)
    where = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           cwd=colcon_ws,
                           text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    assert str(colcon_ws / "install") in where.stdout.splitlines()[0]
    proc = subprocess.run([str(exe), "--help"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    for cmd in ("synth", "dataset", "train", "evaluate", "localize", "export"):
        assert cmd in proc.stdout
