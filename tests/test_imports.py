"""The import graph of course_utils: no cycles, and no private name taken from another module.

Every import counts, also those inside functions (a lazy import hides a cycle from the reader, not
from Python). Read with ``ast`` from the source files, so nothing of the package is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "course_utils"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, name: str, known: set[str]) -> list[tuple[str, str, int]]:
    """(imported module, imported name or "", line) for every course_utils import in ``path``."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: list[tuple[str, str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "course_utils"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "course_utils":
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                # `from course_utils import runner` imports a module, not a name
                found.append((sub, "", node.lineno) if sub in known else (module, alias.name, node.lineno))
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the course_utils modules it imports (anywhere in the file)."""
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {m for m, _, _ in _imports(path, name, known) if m in known and m != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted.

    >>> find_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}})
    [['a', 'b']]
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph.get(v, ()):
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups)


def test_the_graph_is_read() -> None:
    graph = import_graph()
    assert "course_utils.devices" in graph["course_utils.loading"]
    assert "course_utils.saving" in graph["course_utils.runner"]  # an import inside a function counts


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, f"course_utils has import cycles (move the shared piece to a lower module): {cycles}"


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"a"}}, [["a"]]),
    ],
)
def test_find_cycles(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert find_cycles(graph) == expected


def test_no_private_names_across_modules() -> None:
    modules = _modules()
    known = set(modules)
    bad = [
        f"{_module_name(path)}:{line} imports {name} from {module}"
        for path in modules.values()
        for module, name, line in _imports(path, _module_name(path), known)
        if name.startswith("_") and module != _module_name(path)
    ]
    assert not bad, "private names imported from another module (make them public or move them):\n" + "\n".join(bad)
