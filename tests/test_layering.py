"""Imports point down the layers, never up and never sideways (docs: README "Layout").

Every `fgsn.*` import in src/fgsn, at module level or inside a function, is checked against the
table below: the importing module's layer must list the imported module's layer. From top to
bottom:

    cli (fgsn.cli.*: the command line, one module per command)
      ->  orchestration (fgsn.pipeline.*: project, the method registry, compare and the commands
          built on it; fgsn.api)
      ->  stages (locate, edit, evaluate, baselines, organism)
      ->  models, data, artifacts, direction  ->  foundation (config, atomic, errors, hardware, memory, disk)

No module outside fgsn.cli imports it (a stage's command line lives there too, not in the stage),
and no stage imports fgsn.pipeline.

`report` renders artifacts and imports only them and the foundation. A stage imports no other
stage except along the data flow: the edit reuses locate's probes (edit -> locate), the baselines
are edits built from both (baselines -> locate, edit); everything else a stage hands on goes
through `fgsn.artifacts`.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

LOWER = {"models", "data", "artifacts", "direction", "foundation"}
STAGES = {"locate", "edit", "evaluate", "baselines", "organism"}
# layer -> the layers it may import (its own layer always included)
ALLOWED: dict[str, set[str]] = {
    "cli": {"*"},
    "orchestration": STAGES | LOWER | {"report"},
    "locate": LOWER,
    "edit": LOWER | {"locate"},
    "baselines": LOWER | {"locate", "edit"},
    "evaluate": LOWER,
    "organism": LOWER,
    "report": {"artifacts", "foundation"},
    "models": {"foundation"},
    "data": {"foundation"},
    "artifacts": {"models", "foundation"},
    "direction": {"foundation"},
    "foundation": set(),
}
# module (or package prefix) -> layer; the longest match wins.
LAYER_OF: dict[str, str] = {
    "fgsn": "foundation",  # the package root: __version__
    "fgsn.config": "foundation", "fgsn.atomic": "foundation", "fgsn.errors": "foundation",
    "fgsn.hardware": "foundation", "fgsn.memory": "foundation", "fgsn.disk": "foundation",
    "fgsn.models": "models", "fgsn.data": "data", "fgsn.artifacts": "artifacts", "fgsn.direction": "direction",
    "fgsn.locate": "locate", "fgsn.edit": "edit", "fgsn.evaluate": "evaluate", "fgsn.baselines": "baselines",
    "fgsn.organism": "organism", "fgsn.report": "report",
    "fgsn.pipeline": "orchestration", "fgsn.api": "orchestration",
    "fgsn.cli": "cli", "fgsn.__main__": "cli",
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        layer = LAYER_OF.get(".".join(parts[:n]))
        if layer is not None:
            return layer
    raise KeyError(f"{module} is in no layer: add it (or its package) to LAYER_OF in tests/test_layering.py")


def _is_module(name: str) -> bool:
    """Whether `name` is a module or package of the source tree (else `from fgsn.X import name`
    names an attribute); read from the files, nothing is imported."""
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, imported fgsn module) for every import in `source`, module level and inside
    functions; `from fgsn.a import b` names fgsn.a.b when that is a module, relative imports are
    resolved against `module`."""
    package = module if is_package else module.rsplit(".", 1)[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "fgsn"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "fgsn":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((node.lineno, sub if a.name != "*" and _is_module(sub) else target))
    return list(dict.fromkeys(out))  # one entry per (line, module), not per imported name


def violations(modules: dict[str, tuple[str, str, bool]]) -> list[str]:
    """'file:line: importer (layer) imports target (layer)' for every arrow the table forbids;
    `modules`: module name -> (file shown, source, is a package __init__)."""
    bad = []
    for module, (shown, source, is_package) in sorted(modules.items()):
        src_layer = layer_of(f"{module}.__init__" if is_package and f"{module}.__init__" in LAYER_OF else module)
        allowed = ALLOWED[src_layer]
        for line, target in imports_of(source, module, is_package):
            dst_layer = layer_of(target)
            if "*" in allowed or dst_layer == src_layer or dst_layer in allowed:
                continue
            bad.append(f"{shown}:{line}: {module} ({src_layer}) imports {target} ({dst_layer})")
    return bad


def source_modules() -> dict[str, tuple[str, str, bool]]:
    out = {}
    for path in sorted((SRC / "fgsn").rglob("*.py")):
        rel = path.relative_to(SRC)
        is_package = path.name == "__init__.py"
        parts = rel.parent.parts if is_package else rel.with_suffix("").parts
        out[".".join(parts)] = (str(rel), path.read_text(encoding="utf-8"), is_package)
    return out


def test_no_import_points_against_the_flow():
    modules = source_modules()
    assert len(modules) > 50  # the walk found the package
    bad = violations(modules)
    assert not bad, "imports against the layering (tests/test_layering.py):\n" + "\n".join(bad)


def test_every_module_has_a_layer():
    for module in source_modules():
        layer_of(module)


def import_cycle(modules: dict[str, tuple[str, str, bool]]) -> list[str] | None:
    """A chain of modules that import each other in a circle (module level or in functions), or None."""
    graph = {m: sorted({t for _, t in imports_of(src, m, pkg) if t in modules and t != m})
             for m, (_, src, pkg) in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in graph[m]:
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_two_modules_import_each_other():
    """Within a layer too: a circle of imports (e.g. prompts <-> benchmarks) means neither module
    can be read, tested or moved without the other."""
    cycle = import_cycle(source_modules())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_fails_on_an_arrow_against_the_flow():
    """The checker is not vacuous: synthetic modules with forbidden arrows are each reported,
    with file and line; allowed arrows are not."""
    fake = {
        "fgsn.locate.fake": ("locate/fake.py", "import torch\nfrom fgsn.edit.projection import check_finite\n", False),
        "fgsn.report.fake": ("report/fake.py", "def f():\n    from fgsn.evaluate.metrics import rate\n", False),
        "fgsn.evaluate.fake": ("evaluate/fake.py", "from fgsn import report\n", False),
        "fgsn.models.fake": ("models/fake.py", "from ..artifacts import masks\n", False),
        "fgsn.data.fake": ("data/fake.py", "from fgsn.cli import main\n", False),
        "fgsn.edit.fine": ("edit/fine.py", "from fgsn.locate.masks import safety_mask\nfrom fgsn.artifacts.masks "
                                           "import PackedMasks\nfrom fgsn.errors import InputError\n", False),
        "fgsn.pipeline.fine": ("pipeline/fine.py", "from fgsn.report import write_report\n", False),
        "fgsn.pipeline.fake": ("pipeline/fake.py", "def f():\n    from fgsn.cli.common import HELPS\n", False),
        "fgsn.edit.fake": ("edit/fake.py", "from fgsn.pipeline.registry import option_class\n", False),
        "fgsn.evaluate.cli": ("evaluate/cli.py", "from fgsn.cli import main\n", False),
        "fgsn.cli.fine": ("cli/fine.py", "from fgsn.pipeline.compare import run_compare\nimport fgsn.edit.stream\n",
                          False),
    }
    assert import_cycle({"fgsn.data.a": ("a.py", "from fgsn.data.b import x\n", False),
                         "fgsn.data.b": ("b.py", "def f():\n    import fgsn.data.a\n", False)}) == [
        "fgsn.data.a", "fgsn.data.b", "fgsn.data.a"]
    bad = violations(fake)
    assert bad == [
        "data/fake.py:1: fgsn.data.fake (data) imports fgsn.cli (cli)",
        "edit/fake.py:1: fgsn.edit.fake (edit) imports fgsn.pipeline.registry (orchestration)",
        "evaluate/cli.py:1: fgsn.evaluate.cli (evaluate) imports fgsn.cli (cli)",
        "evaluate/fake.py:1: fgsn.evaluate.fake (evaluate) imports fgsn.report (report)",
        "locate/fake.py:2: fgsn.locate.fake (locate) imports fgsn.edit.projection (edit)",
        "models/fake.py:1: fgsn.models.fake (models) imports fgsn.artifacts.masks (artifacts)",
        "pipeline/fake.py:2: fgsn.pipeline.fake (orchestration) imports fgsn.cli.common (cli)",
        "report/fake.py:2: fgsn.report.fake (report) imports fgsn.evaluate.metrics (evaluate)",
    ]
