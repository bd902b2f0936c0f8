"""The package's layout holds: few modules at the top, one job per folder
(said in its docstring), imports pointing one way, and no cycles.

Read from the source with ast, so an import inside a function counts too.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "codex_ingest"
# The folders that hold a concern each, and the codex_ingest folders each may import.
# Top-level modules (settings, errors, events) are for all; web/ sits on top.
ALLOWED = {
    "web": {"delivery", "intake", "storage", "telemetry"},
    "delivery": {"intake", "storage", "telemetry"},
    "intake": {"telemetry"},
    "storage": {"telemetry"},
    "telemetry": set(),
}
# Top-level modules the concerns may use: process-wide ones.
SHARED = {"codex_ingest", "codex_ingest.errors", "codex_ingest.events", "codex_ingest.settings"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path) -> set[str]:
    """The codex_ingest modules ``path`` imports (a name imported from a package counts as its submodule if it is one)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("codex_ingest")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("codex_ingest"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    return found


GRAPH = {name: imports_of(path) - {name} for name, path in MODULES.items()}


def concern(module: str) -> str | None:
    """The concern folder a module is in; None for the process-wide rest (top-level modules, cli/)."""
    parts = module.split(".")
    return parts[1] if len(parts) >= 2 and parts[1] in ALLOWED else None


def test_the_graph_sees_the_imports_that_exist() -> None:
    # Guards the checks below against reading nothing: the app factory
    # imports from every concern.
    assert {"codex_ingest.intake.reader", "codex_ingest.storage.store", "codex_ingest.telemetry.metrics"} <= GRAPH[
        "codex_ingest.web.app"
    ] | GRAPH["codex_ingest.web.appkeys"]


def test_at_most_eight_modules_at_the_top() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top


@pytest.mark.parametrize("folder", sorted({p.parent for p in PACKAGE.rglob("__init__.py")} - {PACKAGE}), ids=lambda p: p.name)
def test_every_folder_says_what_it_holds(folder: Path) -> None:
    docstring = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
    assert docstring and len(docstring.split()) >= 8, f"{folder.name}/__init__.py needs a docstring stating its job"


def test_imports_point_one_way() -> None:
    wrong = []
    for module, imported in GRAPH.items():
        own = concern(module)
        if own is None:
            continue
        for target in imported:
            other = concern(target)
            if other is None:
                if target not in SHARED:
                    wrong.append(f"{module} imports the top-level {target}")
            elif other != own and other not in ALLOWED[own]:
                wrong.append(f"{module} ({own}/) imports {target} ({other}/)")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], target] if target in path else [module, target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    # A package's __init__ is imported by its submodules' imports; that is not a cycle.
    cycles = [c for c in cycles if not all(a.startswith(b + ".") or b.startswith(a + ".") for a, b in itertools.pairwise(c))]
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


# -- bench/: the same rule, no import cycles among its modules -------------------

BENCH = PACKAGE.parent / "bench"


def bench_module_name(path: Path) -> str:
    parts = path.relative_to(BENCH.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


BENCH_MODULES = {bench_module_name(p): p for p in sorted(BENCH.rglob("*.py"))}


def bench_imports(source: str, module: str, is_package: bool = False) -> set[str]:
    """The bench modules ``source`` (the text of ``module``) imports, wherever the
    import stands (at the top, in a function, under ``if``); relative imports
    resolved; ``from bench import floor`` counts as bench.floor."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x, from .x import y
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in BENCH_MODULES else base)
    return {name for name in found if name in BENCH_MODULES} - {module}


BENCH_GRAPH = {
    name: bench_imports(path.read_text(), name, path.name == "__init__.py") for name, path in BENCH_MODULES.items()
}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each group of modules that reach one another through imports, sorted; empty when there is no cycle."""
    reach: dict[str, set[str]] = {}
    for start in graph:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for target in graph.get(todo.pop(), ()):
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        reach[start] = seen
    groups = {frozenset({m} | {n for n in reach[m] if m in reach.get(n, ())}) for m in graph if m in reach[m]}
    return sorted(sorted(g) for g in groups)


def test_the_bench_graph_sees_every_kind_of_import() -> None:
    # Guards the check below against reading nothing: an import inside a
    # function (how floor and throughput once imported each other), a module
    # imported from its package, and a relative import all count.
    source = "import os\nfrom bench import floor\n\ndef main():\n    from bench.plan import build_plan\n    from .api import HEADERS\n"
    assert bench_imports(source, "bench.read_side.run") == {"bench.floor", "bench.plan", "bench.read_side.api"}
    assert sum(len(targets) for targets in BENCH_GRAPH.values()) >= len(BENCH_GRAPH)


def test_import_cycles_are_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert import_cycles(graph) == [["a", "b", "c"], ["e"]]


def test_no_import_cycles_in_bench() -> None:
    cycles = import_cycles(BENCH_GRAPH)
    assert not cycles, "import cycles among bench modules:\n" + "\n".join(" <-> ".join(c) for c in cycles)
