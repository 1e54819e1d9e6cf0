"""The structure of expkit: layers whose imports point down only, no circle, imports at the top,
one atomic-write helper, one name per constant (../shared/DESIGN.md, "Layers of expkit/")."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "expkit"

#: Every module of expkit and its layer; a module imports only from its own layer or below.
LAYERS: dict[str, int] = {
    # 0: no expkit imports but each other
    "expkit": 0, "expkit.errors": 0, "expkit.version": 0, "expkit.files": 0, "expkit.numbers": 0, "expkit.times": 0,
    "expkit.names": 0,
    # 1: formats and schemas
    "expkit.record": 1, "expkit.status": 1, "expkit.problem": 1, "expkit.config": 1, "expkit.claims": 1, "expkit.tasks": 1,
    # 2: where things are, and the side effects the layers above share (git, templates, SwanLab)
    "expkit.workspace": 2, "expkit.store": 2, "expkit.gitops": 2, "expkit.render": 2, "expkit.tracking": 2, "expkit.procs": 2,
    "expkit.slurm": 2,
    # 3: pure computation on data and the files handed in
    "expkit.metrics": 3, "expkit.samples": 3, "expkit.anomalies": 3, "expkit.verdicts": 3, "expkit.comparison": 3,
    "expkit.diagnosis": 3, "expkit.evidence": 3, "expkit.citations": 3, "expkit.charts": 3, "expkit.plots": 3,
    "expkit.report": 3, "expkit.pages": 3, "expkit.intervals": 3, "expkit.replicates": 3,
    # 4: services
    "expkit.records": 4, "expkit.view": 4, "expkit.catalog": 4, "expkit.approval": 4, "expkit.commit": 4,
    "expkit.results": 4, "expkit.review": 4, "expkit.lifecycle": 4, "expkit.preflight": 4, "expkit.script": 4,
    "expkit.runner": 4, "expkit.watch": 4, "expkit.reporting": 4, "expkit.remote": 4, "expkit.site": 4,
    "expkit.groups": 4, "expkit.sweep": 4, "expkit.grouping": 4, "expkit.queue": 4, "expkit.summary": 4,
    # 5: the command line
    "expkit.cli": 5, "expkit.commands": 5, "expkit.commands.workspace": 5, "expkit.commands.authoring": 5,
    "expkit.commands.catalog": 5, "expkit.commands.reporting": 5, "expkit.commands.results": 5,
    "expkit.commands.running": 5, "expkit.commands.reviewing": 5, "expkit.commands.site": 5, "expkit.commands.data": 5, "expkit.commands.summary": 5,
}
#: Third-party modules that may be imported inside a function: each costs the CLI's start-up
#: more than 20 ms on the 2-core reference machine, and most commands never need it.
HEAVY = {"torch", "transformers", "swanlab", "PIL", "numpy", "git", "yaml", "jinja2", "rich", "typer", "requests", "orjson", "markdown_it",
         "model"}  # model: the trainer package (torch, transformers), imported only by `exp data prepare`


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path) -> list[tuple[ast.AST, str, bool]]:
    """(node, imported expkit module or third-party top name, inside a function?) for every import."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    inside: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(n) for n in ast.walk(fn) if n is not fn)
    known = modules()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] + [f"{target}.{a.name}" for a in node.names]
                found = [n for n in names if n in known] or [target]
            else:
                found = [node.module or ""]
        elif isinstance(node, ast.Import):
            found = [a.name for a in node.names]
        else:
            continue
        for target in found:
            if target.split(".")[0] == "expkit" and target not in known:
                target = target.rsplit(".", 1)[0]
            out.append((node, target, id(node) in inside))
    return out


def test_every_module_has_a_layer():
    assert set(modules()) == set(LAYERS), set(modules()) ^ set(LAYERS)


def test_imports_point_down_only():
    wrong = []
    for name, path in modules().items():
        for node, target, _ in imports(name, path):
            if target in LAYERS and target != name and LAYERS[target] > LAYERS[name]:
                wrong.append(f"{path.relative_to(REPO)}:{node.lineno}: {name} (layer {LAYERS[name]}) imports {target} (layer {LAYERS[target]})")
    assert not wrong, "\n".join(wrong)


def test_no_import_circle_counting_imports_inside_functions():
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules().items():
        graph[name] |= {t for _, t, _ in imports(name, path) if t in LAYERS and t != name and not name.startswith(t + ".")}
    seen: set[str] = set()
    stack: list[str] = []

    def visit(u: str) -> None:
        seen.add(u)
        stack.append(u)
        for v in sorted(graph[u]):
            assert v not in stack, " -> ".join(stack[stack.index(v):] + [v])
            if v not in seen:
                visit(v)
        stack.pop()

    for name in sorted(graph):
        if name not in seen:
            visit(name)


def test_only_heavy_third_party_modules_are_imported_inside_functions():
    wrong = []
    for name, path in modules().items():
        for node, target, in_function in imports(name, path):
            if in_function and target.split(".")[0] not in HEAVY:
                wrong.append(f"{path.relative_to(REPO)}:{node.lineno}: {target} imported inside a function")
    assert not wrong, "\n".join(wrong)


def test_one_atomic_write_helper():
    """Files are replaced only by expkit.files (records, state, scripts, PNGs, CSV, JSON, checkpoints)."""
    wrong = []
    for path in [*PACKAGE.rglob("*.py"), *(REPO / "model").rglob("*.py"), *(REPO / "scripts").rglob("*.py")]:
        if path == PACKAGE / "files.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("replace", "rename"):
                base = node.func.value
                if isinstance(base, ast.Name) and base.id == "os":
                    wrong.append(f"{path.relative_to(REPO)}:{node.lineno}: os.{node.func.attr}")
    assert not wrong, "\n".join(wrong)


def test_one_name_per_constant():
    """A constant's name means one thing across the package (there were two SUMMARY_KEYS)."""
    defined: dict[str, list[str]] = defaultdict(list)
    for name, path in modules().items():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)] if isinstance(node, ast.Assign) else (
                [node.target.id] if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) else [])
            for t in targets:
                if t.lstrip("_").isupper():
                    defined[t.lstrip("_")].append(name)
    twice = {k: v for k, v in defined.items() if len(v) > 1}
    assert not twice, twice
