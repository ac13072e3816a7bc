"""The import graph of the whole tree: no cycle anywhere, and every arrow points down the layers.

    acceld_project  ->  conversions  ->  drivers  ->  acceleration_sdk
    (settings, urls)    (Django app)     (formats)    (library)

- ``acceleration_sdk`` imports none of the others;
- ``drivers`` import only ``acceleration_sdk``;
- ``conversions`` imports ``acceleration_sdk`` only: it reaches a driver through the SDK's lookup (by name,
  from the entry-point table), never by importing ``drivers``; and it reads what the project decides
  from ``django.conf.settings``, never by importing ``acceld_project``;
- nothing imports ``acceld_project`` but itself (and ``manage.py``), and no layer imports ``tests`` or ``bench``.

The modules are found by walking the tree and parsed with ``ast`` (nothing is imported), so a new module,
package or layer-crossing import is checked without a list to keep up to date. Every ``import`` statement
counts, also those inside functions: a lazy import is still an arrow, and a cycle hidden in a function
still means the two modules cannot be understood (or tested) one without the other. An import points at
the most specific module it names (``from pkg import mod`` -> ``pkg.mod``; ``from pkg.mod import name`` ->
``pkg.mod``): Python runs the parent packages' ``__init__`` too, but a package that re-exports its own
modules would otherwise look like a cycle with each of them.
"""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".venv", "venv", "build", "dist", "node_modules", "__pycache__"}

# Which top-level names each layer may import (besides the stdlib and third-party packages).
LAYERS = {
    "acceleration_sdk": {"acceleration_sdk"},
    "drivers": {"drivers", "acceleration_sdk"},
    "conversions": {"conversions", "acceleration_sdk"},
    "acceld_project": {"acceld_project", "conversions", "acceleration_sdk"},
    "manage": {"acceld_project", "conversions", "acceleration_sdk"},
}


def _python_files(root: Path) -> list[Path]:
    """Every ``.py`` of the project: tracked or new, not git-ignored (``bench/cache`` holds a whole Debian
    rootfs with Python files of its own); every file under ``root`` when this is not a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "*.py"],
                             cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return sorted(root.rglob("*.py"))
    return sorted(root / line for line in out.splitlines() if (root / line).is_file())


def module_files(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is_package) for every ``.py`` under ``root`` (hidden and venv dirs skipped)."""
    found: dict[str, tuple[Path, bool]] = {}
    for path in _python_files(root):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS or part.startswith(".") or part.endswith(".egg-info") for part in rel.parts[:-1]):
            continue
        parts = list(rel.with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        if parts and all(p.isidentifier() for p in parts):
            found[".".join(parts)] = (path, is_package)
    return found


def _target(name: str, modules: dict) -> str | None:
    """The longest prefix of ``name`` that is one of our modules (None: stdlib or third party)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, path: Path, is_package: bool, modules: dict) -> list[tuple[str, int]]:
    """(imported module of ours, line) for every import statement in the file, at any depth."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                if node.level - 1 > len(base_parts):
                    raise AssertionError(f"{path}:{node.lineno}: relative import beyond the top of the tree")
                base = ".".join(base_parts[:len(base_parts) - (node.level - 1)])
                base = ".".join(p for p in (base, node.module or "") if p)
            else:
                base = node.module or ""
            # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name`` only mod.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for name in names:
            target = _target(name, modules)
            if target is not None and target != module:
                found.append((target, node.lineno))
    return found


def import_graph(root: Path) -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    """module -> {imported module: first line}, and module -> file."""
    modules = module_files(root)
    graph: dict[str, dict[str, int]] = {}
    for module, (path, is_package) in modules.items():
        edges: dict[str, int] = {}
        for target, line in imports_of(module, path, is_package, modules):
            edges.setdefault(target, line)
        graph[module] = edges
    return graph, {m: p for m, (p, _) in modules.items()}


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def layering_violations(graph: dict[str, dict[str, int]], files: dict[str, Path], root: Path) -> list[str]:
    out = []
    for module, edges in sorted(graph.items()):
        layer = module.split(".")[0]
        allowed = LAYERS.get(layer)
        if allowed is None:  # tests, bench, scripts: may use any layer
            continue
        for target, line in sorted(edges.items()):
            if target.split(".")[0] not in allowed:
                out.append(f"{files[module].relative_to(root)}:{line}: {module} imports {target} "
                           f"({layer} may import only {', '.join(sorted(allowed))})")
    return out


def _describe(component: list[str], graph: dict[str, dict[str, int]], files: dict[str, Path], root: Path) -> str:
    members = set(component)
    arrows = [f"{files[m].relative_to(root)}:{line} -> {t}"
              for m in component for t, line in sorted(graph[m].items()) if t in members]
    return "cycle between " + ", ".join(component) + ":\n    " + "\n    ".join(arrows)


def test_no_import_cycle_anywhere_in_the_tree():
    graph, files = import_graph(ROOT)
    assert {"acceleration_sdk", "conversions.services", "conversions.tasks", "acceld_project.settings",
            "drivers"} <= set(graph)  # the walk found the tree
    found = cycles(graph)
    assert not found, "\n".join(_describe(c, graph, files, ROOT) for c in found)


def test_every_arrow_points_down_the_layers():
    graph, files = import_graph(ROOT)
    problems = layering_violations(graph, files, ROOT)
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- the checker itself


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_checker_finds_a_cycle_through_a_lazy_relative_import(tmp_path):
    root = _tree(tmp_path, {
        "conversions/__init__.py": "",
        "conversions/services.py": "def enqueue():\n    from . import tasks\n",
        "conversions/tasks.py": "from .services import enqueue\n",
        "conversions/models.py": "from conversions import services\n",
        ".venv/lib/conversions/x.py": "import conversions.models\n",  # not part of the tree
    })
    graph, _ = import_graph(root)
    assert graph["conversions.services"] == {"conversions.tasks": 2}
    assert graph["conversions.models"] == {"conversions.services": 1}
    assert cycles(graph) == [["conversions.services", "conversions.tasks"]]


def test_checker_allows_a_package_that_re_exports_its_modules(tmp_path):
    root = _tree(tmp_path, {
        "acceleration_sdk/__init__.py": "from .engine import convert\nfrom acceleration_sdk.errors import E\n",
        "acceleration_sdk/engine.py": "from acceleration_sdk.errors import E\nimport acceleration_sdk.errors\n",
        "acceleration_sdk/errors.py": "class E(Exception):\n    pass\n",
    })
    graph, _ = import_graph(root)
    assert graph["acceleration_sdk.engine"] == {"acceleration_sdk.errors": 1}
    assert cycles(graph) == []


def test_checker_refuses_arrows_against_the_layers(tmp_path):
    root = _tree(tmp_path, {
        "acceleration_sdk/__init__.py": "",
        "acceleration_sdk/driver.py": "def lookup():\n    import drivers\n",
        "drivers/__init__.py": "from acceleration_sdk import driver\n",
        "conversions/__init__.py": "",
        "conversions/api.py": "from acceld_project.runtime import X\nfrom drivers import y\n",
        "acceld_project/__init__.py": "",
        "acceld_project/runtime.py": "from conversions import api\n",
        "tests/test_x.py": "import acceld_project.runtime, drivers\n",
    })
    graph, files = import_graph(root)
    problems = layering_violations(graph, files, root)
    assert [p.split(":")[0] + ":" + p.split(":")[1] for p in problems] == [
        "acceleration_sdk/driver.py:2", "conversions/api.py:1", "conversions/api.py:2"]
    assert "acceleration_sdk.driver imports drivers" in problems[0]
