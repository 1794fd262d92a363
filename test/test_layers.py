"""The package's layers and their never-arrows, checked on the source and at import time.

Layers, lowest first, and what each may import from the package:

- core (``errors``, ``config``, ``fileio``, ``geometry``, ``camera``, ``metrics``): core only;
- ``io`` (formats): core; ``dataset`` (offline stages): core and io;
- ``learning`` (torch): core and io; ``runtime``: core, io and learning;
- ``dashboard``: core, io, learning and runtime;
- ``ros`` (the only place for rclpy and message packages) and the applications (``cli``,
  ``demo``): anything.

The static tests parse every import statement with :mod:`ast`, those inside functions
included (a lazy import is still an arrow). The import tests load each layer in a fresh
interpreter and look at what ended up in ``sys.modules``: core, io and dataset load neither
torch nor rclpy, learning, runtime and the dashboard do not load rclpy, and ``camera_pose_ros.cli``
loads neither until a command runs.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "camera_pose_ros"

CORE = frozenset({PACKAGE, *(f"{PACKAGE}.{name}" for name in
                            ("errors", "config", "fileio", "geometry", "camera", "metrics"))})
APPS = frozenset({f"{PACKAGE}.cli", f"{PACKAGE}.demo"})
SUBPACKAGES = ("io", "dataset", "learning", "runtime", "dashboard", "ros")

#: The layers each layer may import from the package (itself included); None: anything.
ALLOWED: dict[str, frozenset[str] | None] = {
    "core": frozenset({"core"}),
    "io": frozenset({"core", "io"}),
    "dataset": frozenset({"core", "io", "dataset"}),
    "learning": frozenset({"core", "io", "learning"}),
    "runtime": frozenset({"core", "io", "learning", "runtime"}),
    "dashboard": frozenset({"core", "io", "learning", "runtime", "dashboard"}),
    "ros": None,
    "app": None,
}
#: Layers that must not import torch at all, not even inside a function.
NO_TORCH = frozenset({"core", "io", "dataset"})


def is_ros(top: str) -> bool:
    """Whether a top-level module name is rclpy or a ROS 2 interface (message) package."""
    return (top == "rclpy" or top.startswith("rosidl")
            or top.endswith(("_msgs", "_srvs", "_interfaces")))


def is_torch(top: str) -> bool:
    """Whether a top-level module name is torch or one of its companions."""
    return top in {"torch", "torchvision"}


def layer_of(module: str) -> str | None:
    """The layer of a module of the package, or None for a module no layer claims."""
    if module in CORE:
        return "core"
    if module in APPS:
        return "app"
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in SUBPACKAGES:
        return parts[1]
    return None


def package_modules() -> dict[str, Path]:
    """Every module of the package, by dotted name, from the source tree."""
    modules = {}
    for path in sorted((REPO / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = package_modules()


@dataclass(frozen=True)
class Import:
    """One imported name: the module it comes from and where the statement is."""

    target: str
    line: int
    top_level: bool
    type_only: bool


def _is_type_checking(test: ast.expr) -> bool:
    return ast.unparse(test) in {"TYPE_CHECKING", "typing.TYPE_CHECKING"}


def imports_of(module: str) -> Iterator[Import]:
    """Every import in a module's source, resolved to the module it loads.

    ``from pkg import name`` resolves to ``pkg.name`` when that is a module of the package,
    else to ``pkg``. Relative imports are resolved against the module's package.
    """
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]

    def targets(node: ast.Import | ast.ImportFrom) -> Iterator[str]:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
            return
        if node.level:
            base = package[: len(package) - node.level + 1]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            yield sub if sub in MODULES else source

    def walk(body: list[ast.stmt], top_level: bool, type_only: bool) -> Iterator[Import]:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in dict.fromkeys(targets(node)):
                    yield Import(target, node.lineno, top_level, type_only)
                continue
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield from walk(node.body, False, type_only)
                continue
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                yield from walk(node.body, top_level, True)
                yield from walk(node.orelse, top_level, type_only)
                continue
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    yield from walk([child], top_level, type_only)
                elif isinstance(child, ast.excepthandler):
                    yield from walk(child.body, top_level, type_only)

    yield from walk(ast.parse(path.read_text(), filename=str(path)).body, True, False)


def where(module: str, imp: Import) -> str:
    return f"{MODULES[module].relative_to(REPO)}:{imp.line} imports {imp.target}"


def test_every_module_belongs_to_a_layer():
    assert len(MODULES) > 40, "the package's source tree was not found"
    orphans = sorted(module for module in MODULES if layer_of(module) is None)
    assert not orphans, f"modules no layer claims (add them to CORE or APPS): {orphans}"


def test_layers_import_only_the_layers_below():
    violations = []
    for module in MODULES:
        allowed = ALLOWED[layer_of(module) or "app"]
        if allowed is None:
            continue
        for imp in imports_of(module):
            if imp.target.split(".")[0] != PACKAGE:
                continue
            target_layer = layer_of(imp.target)
            if target_layer not in allowed:
                violations.append(f"{where(module, imp)} ({layer_of(module)} -> {target_layer})")
    assert not violations, "never-arrows crossed:\n" + "\n".join(violations)


def test_only_ros_imports_rclpy_and_message_packages():
    violations = [where(module, imp) for module in MODULES
                  if layer_of(module) != "ros"
                  for imp in imports_of(module) if is_ros(imp.target.split(".")[0])]
    assert not violations, "ROS imports outside ros/:\n" + "\n".join(violations)


def test_core_io_and_dataset_never_import_torch():
    violations = [where(module, imp) for module in MODULES
                  if layer_of(module) in NO_TORCH
                  for imp in imports_of(module) if is_torch(imp.target.split(".")[0])]
    assert not violations, "torch imported below learning/:\n" + "\n".join(violations)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def module_graph(*, lazy: bool) -> dict[str, set[str]]:
    """Module -> the package modules it imports at run time (type-only imports left out).

    With ``lazy`` the imports inside functions count too.
    """
    return {module: {imp.target for imp in imports_of(module)
                     if imp.target in MODULES and imp.target != module and not imp.type_only
                     and (lazy or imp.top_level)}
            for module in MODULES}


def test_find_cycles_finds_a_cycle_and_only_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_at_import_time():
    cycles = find_cycles(module_graph(lazy=False))
    assert not cycles, f"modules importing each other at module level: {cycles}"


def test_no_import_cycle_through_lazy_imports():
    # an import inside a function defers a cycle to run time; it does not remove it
    cycles = find_cycles(module_graph(lazy=True))
    assert not cycles, f"modules depending on each other (lazy imports included): {cycles}"


_PROBE = """
import importlib, json, sys
loaded = {}
def top_level_names():
    return {name.split(".")[0] for name in sys.modules}
for module in sys.argv[1:]:
    before = top_level_names()
    importlib.import_module(module)
    loaded[module] = sorted(top_level_names() - before)
print(json.dumps(loaded))
"""

#: layer -> (modules imported in a fresh interpreter, what they must not load)
IMPORT_CASES = {
    "core": (sorted(CORE), ("torch", "ros")),
    "io": ([m for m in MODULES if layer_of(m) == "io"], ("torch", "ros")),
    "dataset": ([m for m in MODULES if layer_of(m) == "dataset"], ("torch", "ros")),
    "learning": ([m for m in MODULES if layer_of(m) == "learning"], ("ros",)),
    "runtime": ([m for m in MODULES if layer_of(m) == "runtime"], ("ros",)),
    # the node's frame path without the network: torch loads when a checkpoint does
    "runtime-frame-path": ([f"{PACKAGE}.runtime.{m}" for m in (
        "estimate", "odometry", "workers", "relocalize", "diagnostics", "pipeline", "refine")],
        ("torch", "ros")),
    "dashboard": ([m for m in MODULES if layer_of(m) == "dashboard"], ("ros",)),
    # the offline pages (`camera-pose dashboard`) start without torch: it loads on a request
    "dashboard-server": ([f"{PACKAGE}.dashboard.server", f"{PACKAGE}.dashboard.sources"],
                         ("torch", "ros")),
    "cli": ([f"{PACKAGE}.cli"], ("torch", "ros")),
}


@pytest.mark.slow  # one interpreter per layer: learning's and runtime's import torch
@pytest.mark.parametrize("layer", sorted(IMPORT_CASES))
def test_layer_loads_no_forbidden_package_in_a_fresh_interpreter(layer):
    modules, forbidden = IMPORT_CASES[layer]
    assert modules, f"no modules found for layer {layer}"
    proc = subprocess.run([sys.executable, "-c", _PROBE, *modules], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(loaded) == sorted(modules)
    checks = {"torch": is_torch, "ros": is_ros}
    culprits = {module: bad for module, new in loaded.items()
                if (bad := [top for top in new if any(checks[k](top) for k in forbidden)])}
    assert not culprits, f"{layer} loads {'/'.join(forbidden)} (first loaded by): {culprits}"
