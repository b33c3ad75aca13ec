"""The package's import graph, read from the source: no cycles, and foundations import no stage.

Every ``import`` / ``from … import`` counts, wherever it sits (module level or inside a function:
a function-level import only postpones a cycle, it does not remove it). An edge goes to the
module named: ``from pw_ray.evaluate import grid`` → ``pw_ray.evaluate.grid`` when ``grid`` is a
module, else to the package ``pw_ray.evaluate`` (its ``__init__``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "pw_ray"

#: Modules every stage builds on; they may import each other but nothing else of pw_ray.
FOUNDATIONS = {"pw_ray", "pw_ray.config", "pw_ray.storage", "pw_ray.bands", "pw_ray.regions"}


def module_name(path: Path, package_dir: Path = PACKAGE_DIR) -> str:
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Module name → source file, for every ``.py`` under the package."""
    return {module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` (source file ``path``) imports, anywhere in its body."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                # ``import a.b.c`` binds ``a`` but runs a.b.c: the edge goes to the deepest known module.
                parts = alias.name.split(".")
                for k in range(len(parts), 0, -1):
                    if ".".join(parts[:k]) in known:
                        out.add(".".join(parts[:k]))
                        break
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in known:
                    out.add(sub)
                elif source in known:
                    out.add(source)
    out.discard(name)
    return out


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    found = modules(package_dir)
    known = set(found)
    return {name: imported_modules(name, path, known) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_graph_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "pw_ray"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import f\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from pw_ray.sub import b\n    return b\n")
    (pkg / "sub" / "b.py").write_text("from pw_ray.sub.a import f\nimport pw_ray.c\n")
    (pkg / "c.py").write_text("from pw_ray import sub\n")
    graph = import_graph(pkg)
    assert graph == {"pw_ray": set(), "pw_ray.sub": {"pw_ray.sub.a"}, "pw_ray.sub.a": {"pw_ray.sub.b"},
                     "pw_ray.sub.b": {"pw_ray.sub.a", "pw_ray.c"}, "pw_ray.c": {"pw_ray.sub"}}
    assert cycles(graph) == [["pw_ray.c", "pw_ray.sub", "pw_ray.sub.a", "pw_ray.sub.b"]]


def test_pw_ray_has_no_import_cycle():
    found = cycles(import_graph())
    assert found == [], "import cycles (each a group of modules that import one another): " + "; ".join(
        " ↔ ".join(c) for c in found)


@pytest.mark.parametrize("foundation", sorted(FOUNDATIONS))
def test_foundations_import_no_stage(foundation):
    graph = import_graph()
    assert foundation in graph, f"{foundation} is listed as a foundation but is not a module of pw_ray"
    assert graph[foundation] <= FOUNDATIONS, (
        f"{foundation} imports {sorted(graph[foundation] - FOUNDATIONS)}; foundations import only "
        f"{sorted(FOUNDATIONS)}")


def test_every_package_folder_has_an_init():
    missing = [str(d.relative_to(PACKAGE_DIR.parent)) for d in sorted(PACKAGE_DIR.rglob("*"))
               if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py")) and not (d / "__init__.py").exists()]
    assert missing == []
