"""Launch files and parameter files name only things the package has.

The launch library is not installable from PyPI, so the launch files are checked as source:
every executable, config file and launch argument they use must exist.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from camera_pose_ros.ros.params import RELOCALIZATION_PARAMS

REPO = Path(__file__).resolve().parents[2]
SETUP = (REPO / "setup.py").read_text()
EXECUTABLES = set(re.findall(r'"\s*([\w-]+)\s*=\s*camera_pose_ros', SETUP))


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and (
        getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name)]


def _kw(call: ast.Call, key: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == key), None)


def test_launch_files_name_existing_things():
    files = sorted((REPO / "launch").glob("*.launch.py"))
    assert files
    for path in files:
        tree = ast.parse(path.read_text())
        declared = {c.args[0].value for c in _calls(tree, "DeclareLaunchArgument")}
        used = {c.args[0].value for c in _calls(tree, "LaunchConfiguration")}
        assert used <= declared, f"{path.name}: undeclared arguments {used - declared}"
        for node in _calls(tree, "Node"):
            pkg, exe = _kw(node, "package"), _kw(node, "executable")
            if pkg.value == "rviz2":  # RViz itself, from the user's ROS installation
                continue
            assert pkg.value == "camera_pose_ros"
            assert exe.value in EXECUTABLES, f"{path.name}: no executable {exe.value}"
        for const in ast.walk(tree):
            if isinstance(const, ast.Constant) and isinstance(const.value, str) and (
                    const.value.endswith((".yaml", ".rviz"))):
                assert list(REPO.rglob(const.value)), f"{path.name}: {const.value} missing"
        configs = [c for c in ast.walk(tree) if isinstance(c, ast.Call)
                   and getattr(c.func, "attr", None) == "join"]
        for c in configs:
            parts = [a.value for a in c.args if isinstance(a, ast.Constant)]
            if parts and parts[0] in ("config", "rviz"):
                assert (REPO / Path(*parts)).exists(), f"{path.name}: {parts} missing"


def test_relocalization_launch_arguments():
    tree = ast.parse((REPO / "launch" / "relocalization.launch.py").read_text())
    declared = {c.args[0].value for c in _calls(tree, "DeclareLaunchArgument")}
    assert {"model", "camera_topic", "config", "use_sim_time", "namespace"} <= declared


def test_parameter_file_matches_the_declared_schema():
    data = yaml.safe_load((REPO / "config" / "relocalization.yaml").read_text())
    params = data["relocalization"]["ros__parameters"]
    schema = {p.name: p.default for p in RELOCALIZATION_PARAMS}
    assert set(params) == set(schema), set(params) ^ set(schema)
    for name, value in params.items():
        assert value == schema[name], f"{name}: yaml {value!r} vs declared {schema[name]!r}"
