"""The architecture as the code has it: every module imports, imports run one way, modules stay small.

The import graph is read from the source (module-level ``import`` statements, not those inside
functions or under ``if TYPE_CHECKING:``), so a cycle is found even where Python's import order
happens to hide it today.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import lmserv

SRC = Path(lmserv.__file__).resolve().parent
MAX_LINES = 600
# The mirror of llama.h: one declaration per C function, long by nature.
TOO_LONG_BY_NATURE = {"lmserv._bindings._llama_h"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: top level, and inside module-level
    ``if``/``try`` blocks, but not under ``if TYPE_CHECKING:`` or inside a function or class."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                pending += node.body
            pending += node.orelse
        elif isinstance(node, ast.Try):
            pending += node.body + node.orelse + node.finalbody
            for handler in node.handlers:
                pending += handler.body
    return found


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in _module_level_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    package = name if is_package else name.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}".rstrip(".")
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_imports() -> None:
    names = [m.name for m in pkgutil.walk_packages(lmserv.__path__, "lmserv.")]
    assert set(names) | {"lmserv"} == set(_modules()), "the source walk and pkgutil disagree"
    for name in names:
        importlib.import_module(name)


def test_no_import_cycle_among_module_level_imports() -> None:
    graph = _import_graph()
    assert graph["lmserv.cli._serve"] >= {"lmserv.server", "lmserv.cli._common"}  # sees edges
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_lower_layers_never_import_the_command_line() -> None:
    def in_cli(name: str) -> bool:
        return name == "lmserv.cli" or name.startswith("lmserv.cli.")

    entry_points = {"lmserv.__main__"}  # `python -m lmserv` is the command line itself
    for name, targets in _import_graph().items():
        if not in_cli(name) and name not in entry_points:
            assert not {t for t in targets if in_cli(t)}, name


def test_no_module_over_600_lines() -> None:
    long = {
        name: n
        for name, path in _modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES and name not in TOO_LONG_BY_NATURE
    }
    assert long == {}, f"split these modules (over {MAX_LINES} lines): {long}"
