"""The layers hold: storage imports no engine module, nothing imports upward or in a circle, product code never
imports tests, and every product module imports without the test doubles."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.results import FAILED, FINAL, SKIPPED, Status
from storage import tables

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "storage")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts or "templates" in path.parts:  # Alembic's scripts; the Space's own app
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module `name` imports, at the top or inside a function: `from a import b` names a.b when b is a
    module, else a (a parent package runs on import, but it is its own module with its own edges)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return found


GRAPH = {name: {m for m in _imports(name, path) if m in MODULES and m != name} for name, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in GRAPH[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read() -> None:
    assert "engine.worker" in GRAPH and "storage.queue" in GRAPH
    assert "engine.job" in GRAPH["engine.worker"] and "storage.tables" in GRAPH["storage.queue"]


def test_storage_imports_no_engine_module() -> None:
    upward = {name: sorted(m for m in deps if m.startswith("engine")) for name, deps in GRAPH.items()
              if name.startswith("storage")}
    assert not {k: v for k, v in upward.items() if v}


def test_no_module_imports_in_a_circle() -> None:
    assert _cycles() == []


def test_product_code_never_imports_tests_or_pages() -> None:
    for name, path in MODULES.items():
        bad = sorted(m for m in _imports(name, path) if m.split(".")[0] in ("tests", "pages", "benchmarks"))
        assert not bad, f"{name} imports {bad}"


def test_every_product_module_imports_without_the_test_doubles(tmp_path: Path) -> None:
    """A fresh interpreter outside the checkout, with no plugin and no path to tests/: every module imports."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PARETOSCOPE_PLUGINS")}
    env["PARETOSCOPE_DATA_DIR"] = str(tmp_path / "data")
    script = ("import importlib, sys\n"
              f"for name in {sorted(MODULES)!r}:\n"
              "    importlib.import_module(name)\n"
              "assert not [m for m in sys.modules if m == 'tests' or m.startswith('tests.')]\n"
              "from engine.runtimes import REGISTRY\n"
              "assert not [r for r in REGISTRY if r.startswith('test-')], list(REGISTRY)\n"
              "print('imported', len(sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("imported")


def test_the_queue_speaks_the_same_statuses_as_the_results_contract() -> None:
    assert set(tables.JOB_STATUSES) == {str(s) for s in Status}
    assert set(tables.FINAL_STATUSES) == {str(s) for s in FINAL}
    assert set(tables.FAILED_STATUSES) == {str(s) for s in FAILED}
    assert set(tables.SKIPPED_STATUSES) == {str(s) for s in SKIPPED}


def test_a_plugin_registers_its_runtimes_in_the_processes_that_name_it(tmp_path: Path) -> None:
    """The worker's tests name the runtime doubles in PARETOSCOPE_PLUGINS for the processes they start; this one
    (the test process, whose pages and studies must not offer them) never has them."""
    from engine.runtimes import REGISTRY

    assert not [r for r in REGISTRY if r.startswith("test-")]
    env = {**os.environ, "PARETOSCOPE_PLUGINS": "tests.engine.runtime_doubles",
           "PARETOSCOPE_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "-m", "engine", "runtimes"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"test-hang", "test-slow", "test-segfault"} <= {line.split()[0] for line in done.stdout.splitlines()}


def test_a_missing_plugin_is_one_line_that_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.errors import UserError
    from engine.plugins import ENV, load_plugins

    monkeypatch.setenv(ENV, "no_such_plugin_module")
    with pytest.raises(UserError, match="install it or remove it from PARETOSCOPE_PLUGINS"):
        load_plugins()
