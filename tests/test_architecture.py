"""The layering of the package, as a test: a lower layer never imports a higher one, and no module
imports itself back through others (no import cycles), lazy imports inside functions included.

``LAYERS`` is the allowed order, written once (``docs/architecture.md`` draws it and a test below
checks that the drawing lists the same order). Packages in one layer are independent: they may
not import each other.
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "latentsurgeon"

#: Low to high. "<root>" is ``latentsurgeon/__init__.py`` (the version and the base errors).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("<root>",),
    ("_validation", "_aliases", "_io", "_vocabulary"),
    ("_estimator",),
    ("hooks",),
    ("activations",),
    ("data",),
    ("metrics",),
    ("training",),
    ("report",),
    ("models",),
    ("concepts",),
    ("intervene",),
    ("explain",),
    ("discover",),
    ("correct",),
    ("cbm", "verify"),
    ("experiments",),
    ("compat",),
    ("demo_stages",),
    ("demo",),
    ("cli",),
    ("__main__",),
)


def _module_names() -> dict[str, Path]:
    modules = {}
    for file in PACKAGE.rglob("*.py"):
        parts = file.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = file
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module ``name`` refers to: itself, or the package that defines the attribute."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}`` over every import statement, however deep in a function."""
    modules = _module_names()
    graph: dict[str, set[str]] = defaultdict(set)
    for module, file in modules.items():
        package = module if file.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                if not base.startswith("latentsurgeon"):
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in modules else base)
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("latentsurgeon")]
            for target in targets:
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != module:
                    graph[module].add(resolved)
        graph.setdefault(module, set())
    return dict(graph)


def top_package(module: str) -> str:
    parts = module.split(".")
    return "<root>" if len(parts) == 1 else parts[1]


def layer_violations(graph: dict[str, set[str]], layers: tuple[tuple[str, ...], ...]
                     ) -> list[str]:
    """Every import that runs upward or sideways between layers, and packages not in ``layers``."""
    rank = {pkg: i for i, layer in enumerate(layers) for pkg in layer}
    problems = []
    for module, targets in sorted(graph.items()):
        own = top_package(module)
        if own not in rank:
            problems.append(f"{module}: package {own!r} is not in LAYERS")
            continue
        for target in sorted(targets):
            other = top_package(target)
            if other == own or other not in rank:
                continue
            if rank[other] > rank[own]:
                problems.append(f"{module} imports {target}: {own!r} is below {other!r}")
            elif rank[other] == rank[own]:
                problems.append(f"{module} imports {target}: {own!r} and {other!r} share a layer")
    return problems


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
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
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_no_import_runs_upward(graph):
    assert layer_violations(graph, LAYERS) == []


def test_no_import_cycles(graph):
    assert import_cycles(graph) == []


def test_a_planted_upward_import_is_caught(graph):
    planted = {k: set(v) for k, v in graph.items()}
    planted["latentsurgeon.metrics.relevance"].add("latentsurgeon.correct.rrr")
    found = layer_violations(planted, LAYERS)
    assert found == ["latentsurgeon.metrics.relevance imports latentsurgeon.correct.rrr: "
                     "'metrics' is below 'correct'"]


def test_a_planted_cycle_is_caught(graph):
    planted = {k: set(v) for k, v in graph.items()}
    planted["latentsurgeon.activations.store_reader"].add("latentsurgeon.activations.store")
    cycles = import_cycles(planted)
    assert any({"latentsurgeon.activations.store", "latentsurgeon.activations.store_reader"}
               <= set(c) for c in cycles), cycles


def test_lazy_imports_are_read(tmp_path, monkeypatch):
    """An import inside a function counts as much as one at the top of the file."""
    fake = tmp_path / "latentsurgeon"
    (fake / "metrics").mkdir(parents=True)
    (fake / "correct").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "metrics" / "__init__.py").write_text(
        "def f():\n    from latentsurgeon.correct import thing\n")
    (fake / "correct" / "__init__.py").write_text("thing = 1\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    planted = import_graph()
    assert planted["latentsurgeon.metrics"] == {"latentsurgeon.correct"}
    assert layer_violations(planted, LAYERS)


def test_every_package_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    placed = {pkg for layer in LAYERS for pkg in layer}
    assert (packages | modules | {"<root>"}) == placed


def test_the_architecture_page_draws_the_same_order():
    """``docs/architecture.md``'s layout table lists the packages low to high in this order."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text[text.index("## Layout"):]
    table = table[:table.index("\n## ", 3)]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    drawn: list[str] = []
    for row in rows[1:]:
        first_cell = row.split("|")[1]
        for name in re.findall(r"`([A-Za-z_<>]+)(?:/|\.py)?`", first_cell):
            drawn.append(name)
    order = [pkg for layer in LAYERS for pkg in layer]
    assert [p for p in drawn if p in order] == order


# -- one mechanism per job -------------------------------------------------------------------------
#: Names a model is called under in library code.
MODEL_NAMES = {"model", "encoder", "net", "network"}
#: Where the model is called with a batch: the one dispatch, and the packages that *define*
#: models (their forward and their own training steps call their submodules).
CALLS_ALLOWED = ("latentsurgeon/activations/access.py", "latentsurgeon/models/",
                 "latentsurgeon/cbm/models.py")
#: Where the early stop is used: its module, the access object, and capture (whose blocks the
#: user runs the model in).
STOP_ALLOWED = ("latentsurgeon/hooks/", "latentsurgeon/activations/access.py",
                "latentsurgeon/activations/capture.py")


def _mechanism_uses(root: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"call": [], "functional_call": [], "stop": [], "probe": []}
    for file in sorted((root / "latentsurgeon").rglob("*.py")):
        where = file.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(file.read_text(), where)):
            if isinstance(node, ast.Call):
                fn = node.func
                name = (fn.id if isinstance(fn, ast.Name)
                        else fn.attr if isinstance(fn, ast.Attribute) else None)
                if name in MODEL_NAMES and not where.startswith(CALLS_ALLOWED):
                    found["call"].append(f"{where}:{node.lineno}: {ast.unparse(node)[:60]}")
                if name == "zeros_like" and any(
                        k.arg == "requires_grad" for k in node.keywords) \
                        and where != "latentsurgeon/activations/access.py":
                    found["probe"].append(f"{where}:{node.lineno}")
            if isinstance(node, ast.Attribute) and node.attr == "functional_call" \
                    and where != "latentsurgeon/activations/access.py":
                found["functional_call"].append(f"{where}:{node.lineno}")
            name = (node.id if isinstance(node, ast.Name)
                    else node.attr if isinstance(node, ast.Attribute) else None)
            if name in ("ForwardStopper", "_StopForward") and not where.startswith(STOP_ALLOWED):
                found["stop"].append(f"{where}:{node.lineno}")
    return found


def test_one_model_call_one_stop_one_gradient_probe():
    """Library code calls the model only through ``ModelAccess`` (one dispatch: device, dtype,
    dict inputs, forward_fn, other weights), stops passes only through the one stopper, and
    takes gradients at a layer only through ``ModelAccess.offsets``."""
    assert _mechanism_uses(ROOT) == {"call": [], "functional_call": [], "stop": [], "probe": []}


def test_a_planted_direct_model_call_is_caught(tmp_path):
    package = tmp_path / "latentsurgeon" / "metrics"
    package.mkdir(parents=True)
    (package / "planted.py").write_text(
        "import torch\n\n"
        "def predict(model, x):\n"
        "    return model(x).argmax(1)\n\n"
        "def grad_at(tensor):\n"
        "    return torch.zeros_like(tensor, requires_grad=True)\n\n"
        "def other(model, state, x):\n"
        "    return torch.func.functional_call(model, state, (x,))\n")
    found = _mechanism_uses(tmp_path)
    assert found["call"] == ["latentsurgeon/metrics/planted.py:4: model(x)"]
    assert found["probe"] == ["latentsurgeon/metrics/planted.py:7"]
    assert found["functional_call"] == ["latentsurgeon/metrics/planted.py:10"]
