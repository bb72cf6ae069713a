"""The package's imports run one way: no module reaches, however lazily, a module that reaches it.

Read from the source (every `import`, module-level or inside a function), not by importing, so a
lazy import in the wrong direction counts too: it is the same knot, only tied later.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lorsp"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of the package that `path` imports (a name imported from a package counts as that
    package unless the name is itself one of its modules)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue  # annotations only: never imported at run time
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            targets = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules else origin
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and target != "lorsp":
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(f) for f in files}
    return {_module_name(f): _imports(f, modules) for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_inside_the_package():
    graph = import_graph()
    assert "lorsp.tune" in graph and "lorsp.search" in graph["lorsp.tune"]  # the graph is really read
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_method_layer_knows_nothing_of_ray_mlflow_or_optuna():
    """prompts, model, train and the gallery it draws run where only torch is (the GPU machine, a notebook)."""
    for path in [*PACKAGE.joinpath("prompts").glob("*.py"), PACKAGE / "model.py", PACKAGE / "train.py",
                 PACKAGE / "gallery.py"]:
        imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.Import) for alias in node.names}
        imported |= {(node.module or "").split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                     if isinstance(node, ast.ImportFrom) and not node.level}
        assert not imported & {"ray", "mlflow", "optuna"}, (path.name, imported & {"ray", "mlflow", "optuna"})


def _imports_ray(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "ray" for alias in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "ray":
            return True
    return False


def test_reading_mlflow_needs_no_ray():
    """Only the Tune callback of lorsp.tracking imports Ray: the store, the study's record, `relog` and
    the export read MLflow where Ray is not installed (no module they reach, however lazily, imports it)."""
    graph = import_graph()
    assert _imports_ray("lorsp.tracking.callback")  # the check really reads imports
    for start in ("lorsp.tracking", "lorsp.export"):
        reached, todo = set(), [start]
        while todo:
            module = todo.pop()
            if module not in reached:
                reached.add(module)
                todo.extend(graph.get(module, ()))
        assert "lorsp.tracking.callback" not in reached, start
        assert not [m for m in sorted(reached) if _imports_ray(m)], start


# ---------------------------------------------------------------- floors
# The floor order assumed (low to high): leaves that import no lorsp module (keys, metrics, errors,
# outcome, relocate, the Pareto maths); the study's description and method (config, data, prompts,
# model, gallery, layout); its stores (search: Optuna, tracking: MLflow) and what reads them
# (report, bundle, confirmations, ray_session); the commands (COMMANDS), which only entry points
# (`__main__`) import. The cycle test above keeps every other pair in one direction.
LEAVES = ("lorsp.keys", "lorsp.metrics", "lorsp.errors", "lorsp.outcome", "lorsp.relocate")
COMMANDS = ("lorsp.tune", "lorsp.confirm", "lorsp.export", "lorsp.fronts", "lorsp.pretrain", "lorsp.ui")


def test_the_leaves_import_no_lorsp_module():
    graph = import_graph()
    for module in LEAVES:
        assert module in graph and not graph[module], (module, graph.get(module))


def test_the_pareto_maths_imports_nothing_above_it():
    """lorsp.pareto is pure numpy that search, report and progress build on: none of its modules may
    import another lorsp module (its command line is lorsp.fronts, reached only by `__main__`)."""
    graph = import_graph()
    maths = [m for m in graph if (m == "lorsp.pareto" or m.startswith("lorsp.pareto.")) and not m.endswith("__main__")]
    assert {"lorsp.pareto", "lorsp.pareto.halving"} <= set(maths)
    assert "lorsp.fronts" in graph["lorsp.pareto.__main__"]  # the entry point really is read, and may climb
    for module in maths:
        above = {m for m in graph[module] if m != "lorsp.pareto" and not m.startswith("lorsp.pareto.")}
        assert not above, f"{module} imports {sorted(above)}"


def test_only_entry_points_import_a_command():
    """A command (argument parsing, printing, exit codes) is the top floor: a module below that
    imported one would climb back up, and every import of the command would drag the rest along."""
    graph = import_graph()
    for module, imported in graph.items():
        if module.endswith("__main__"):
            continue
        climbs = sorted(imported & set(COMMANDS))
        assert not climbs, f"{module} imports the command(s) {climbs}"


def _imports_any(module: str, packages: set[str]) -> set[str]:
    path = PACKAGE.parent.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.add((node.module or "").split(".")[0])
    return found & packages


def test_loading_an_export_needs_no_ray_mlflow_or_optuna():
    """`lorsp.load` (lorsp.bundle) runs where only torch and timm are: no module it reaches imports them."""
    graph = import_graph()
    assert _imports_any("lorsp.search", {"optuna"})  # the check really reads imports
    reached, todo = set(), ["lorsp.bundle"]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(graph.get(module, ()))
    heavy = {m: _imports_any(m, {"ray", "mlflow", "optuna"}) for m in sorted(reached)}
    assert not {m: p for m, p in heavy.items() if p}
