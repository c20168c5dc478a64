"""The layout's rules, checked on the source: no import circles anywhere, and the engine (`evalkit/`)
reaches tasks and adapters only through the registry (by name, never by an import statement).

Imports are read from the AST, every one of them: module level, inside functions, under
TYPE_CHECKING. An edge goes to the module named (for `from pkg import name`, to `pkg.name` when that
is a module), not to the packages above it."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: source folder -> import path (pyproject's package-dir mapping)
TREES = {"evalkit": "evalkit", "tasks": "evalkit.tasks", "models": "evalkit.models"}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, prefix in TREES.items():
        for f in (ROOT / folder).rglob("*.py"):
            rel = f.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([prefix, *parts])] = f
    return out


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if _is_package(path) else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                if t in modules and t != name:
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_walk_sees_the_tree():
    graph = import_graph()
    assert {"evalkit.engine.runner", "evalkit.tasks.sseu.build", "evalkit.models.eva.kimi"} <= set(graph)
    assert "evalkit.engine.store" in graph["evalkit.engine.runner"]
    assert "evalkit.models.eva.logmel" in graph["evalkit.models.eva.kimi"]  # a relative import resolved


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_engine_imports_no_task_or_adapter_module():
    graph = import_graph()
    bad = {m: sorted(t for t in targets if t.startswith(("evalkit.tasks", "evalkit.models")))
           for m, targets in graph.items()
           if not m.startswith(("evalkit.tasks", "evalkit.models"))}
    assert {m: t for m, t in bad.items() if t} == {}


def test_no_task_imports_another_task():
    """Tasks share code through tasks/base.py and tasks/loaders.py (and official.py's scorers), never
    through another benchmark's module."""
    shared = {"evalkit.tasks", "evalkit.tasks.base", "evalkit.tasks.loaders", "evalkit.tasks.official"}
    graph = import_graph()

    def benchmark(module: str) -> str | None:
        if not module.startswith("evalkit.tasks.") or module in shared:
            return None
        return module.split(".")[2]  # evalkit.tasks.<benchmark>[.<part>]

    crossings = {m: sorted(t for t in targets if benchmark(t) not in (None, benchmark(m)))
                 for m, targets in graph.items() if benchmark(m)}
    assert {m: t for m, t in crossings.items() if t} == {}


def test_adapters_import_no_task_module():
    """Adapters see requests, never datasets: helpers both need (JSONL reading, audio I/O) live in the engine."""
    graph = import_graph()
    crossings = {m: sorted(t for t in targets if t.startswith("evalkit.tasks"))
                 for m, targets in graph.items() if m.startswith("evalkit.models")}
    assert {m: t for m, t in crossings.items() if t} == {}
