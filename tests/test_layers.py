"""The import rules of docs/architecture.md, read from the source with ast (nothing is imported).

1. kernels import nothing of winnow outside kernels, and never ray;
2. stages import kernels and stages only (never pipeline, never ray); a family (a folder under stages/)
   imports the SDK (files at the root of stages/), models/ and its own folder, never another family;
3. the two runners never import each other; ray is imported only under runners/ray_data/ and in submit;
4. no import cycles between modules, counting function-level imports too;
and pyproject's package list names every folder that has an __init__.py.
"""
from __future__ import annotations

import ast
import pathlib
import tomllib

from tests.conftest import REPO

ROOTS = ("pipeline", "stages", "kernels")
FAMILIES_ALLOWED_ANYWHERE = ("models", "storage")  # shared model loading and file access: part of the SDK


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return "winnow." + ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for root in ROOTS for p in (REPO / root).rglob("*.py")}


def _imports(path: pathlib.Path) -> set[str]:
    """Every module this file imports (``from a import b`` counts a.b when that is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


GRAPH = {name: _imports(path) for name, path in _modules().items()}
MODULES = set(GRAPH)


def _winnow_imports(name: str) -> set[str]:
    return {m for m in GRAPH[name] if m in MODULES}


def _violations(rule) -> list[str]:
    return sorted(f"{mod} imports {dep}" for mod in GRAPH for dep in GRAPH[mod] if rule(mod, dep))


def _family(module: str) -> str | None:
    """``download`` for winnow.stages.download.fetch; None for the SDK (winnow.stages.base, ...)."""
    parts = module.split(".")
    is_package = (REPO / "/".join(parts[1:]) / "__init__.py").exists()
    return parts[2] if len(parts) > 3 or (len(parts) == 3 and is_package) else None


def test_kernels_import_only_kernels_and_never_ray():
    assert _violations(lambda m, d: m.startswith("winnow.kernels") and (
        (d.startswith("winnow.") and not d.startswith("winnow.kernels")) or d.split(".")[0] == "ray")) == []


def test_stages_never_import_pipeline_or_ray():
    assert _violations(lambda m, d: m.startswith("winnow.stages") and (
        d.startswith("winnow.pipeline") or d.split(".")[0] == "ray")) == []


def test_stage_families_never_import_each_other():
    def crosses(mod: str, dep: str) -> bool:
        if not (mod.startswith("winnow.stages.") and dep.startswith("winnow.stages.") and dep in MODULES):
            return False
        mine, theirs = _family(mod), _family(dep)
        return mine is not None and theirs is not None and mine != theirs and theirs not in FAMILIES_ALLOWED_ANYWHERE
    assert _violations(crosses) == []


def test_the_two_runners_never_import_each_other():
    local, ray_data = "winnow.pipeline.runners.local", "winnow.pipeline.runners.ray_data"
    assert _violations(lambda m, d: (m.startswith(local) and d.startswith(ray_data))
                       or (m.startswith(ray_data) and d.startswith(local))) == []


def test_ray_only_in_the_ray_runner_and_submit():
    allowed = ("winnow.pipeline.runners.ray_data", "winnow.pipeline.submit")
    assert _violations(lambda m, d: d.split(".")[0] == "ray" and not m.startswith(allowed)) == []


def test_no_import_cycles():
    """Tarjan-free: a depth-first search over module edges; any back edge is a cycle."""
    edges = {m: {d for d in _winnow_imports(m) if d != m and not m.startswith(d + ".")} for m in GRAPH}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(
                    " -> ".join(stack[stack.index(nxt) :] + [node, nxt]) if nxt in stack else f"{node} -> {nxt}"
                )
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    assert cycles == []


def test_pyproject_lists_every_package():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {_module_name(p) for root in ROOTS for p in (REPO / root).rglob("__init__.py")}
    assert set(config["packages"]) == folders
    assert config["package-dir"] == {f"winnow.{r}": r for r in ROOTS}


def test_the_rules_can_fail():
    """The checks see real edges: the Ray runner does import ray, a family does import the SDK."""
    assert "ray" in {d.split(".")[0] for d in GRAPH["winnow.pipeline.runners.ray_data.session"]}
    assert "winnow.stages.base" in _winnow_imports("winnow.stages.filter.basic")
    assert _family("winnow.stages.filter.basic") == "filter" and _family("winnow.stages.base") is None
