"""The package's shape: one subpackage per stage, imports only down the stack, no import cycles.

Every ``import`` of a graphprune module is read from the source (the late ones inside functions too,
since a late import is how a cycle hides), so the test fails on an import pointing up even where it
would happen to work at run time.
"""

import ast
import inspect
from pathlib import Path

import networkx as nx
import pytest

import graphprune

PACKAGE = Path(graphprune.__file__).parent

# Bottom to top. A module may import its own layer and the layers below it, never one above.
STACK = ["base", "capture", "coupling", "measure", "planning", "rewrite", "storage", "api", "workflows", "report",
         "cli"]
TOP = {"__init__", "__main__"}  # the package's face: it may import anything


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:]) if "." in name else Path()
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative / "__init__.py").is_file()


def _imports(path: Path, source: str | None = None) -> set[str]:
    """The graphprune modules ``path`` imports (its ``source``, read from the file by default), as dotted
    names; a name imported from a package counts as its submodule when there is one."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "graphprune"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "graphprune":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if _is_module(sub) else target)
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_every_module_belongs_to_a_layer_of_the_stack():
    unplaced = sorted(m for m in MODULES if _layer(m) not in STACK and _layer(m) not in TOP)
    assert not unplaced, f"modules outside the stack {STACK}: {unplaced}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) in STACK))
def test_imports_point_down_the_stack(module):
    rank = STACK.index(_layer(module))
    upward = sorted(i for i in _imports(MODULES[module])
                    if _layer(i) in TOP or (_layer(i) in STACK and STACK.index(_layer(i)) > rank))
    assert not upward, f"{module} (layer {_layer(module)!r}) imports {upward}, which sit above it"


def test_no_import_cycles():
    graph = nx.DiGraph()
    for module, path in MODULES.items():
        graph.add_node(module)
        graph.add_edges_from((module, i) for i in _imports(path) if i != module and i in MODULES)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_the_import_check_sees_a_late_upward_import():
    """The checker itself: a stage module that imports the API inside a function is reported."""
    knapsack = PACKAGE / "planning" / "knapsack.py"
    assert "graphprune.api" not in _imports(knapsack)
    late = knapsack.read_text() + "\n\ndef _late():\n    from ..api import plan\n    from graphprune import rewrite\n"
    found = _imports(knapsack, late)
    assert {"graphprune.api", "graphprune.rewrite"} <= found


@pytest.mark.parametrize("verb", [graphprune.plan, graphprune.shrink])
def test_the_verbs_take_few_parameters(verb):
    assert len(inspect.signature(verb).parameters) <= 7


def test_importing_graphprune_leaves_the_heavy_and_optional_libraries_alone():
    """``import graphprune`` (and so ``graphprune --help``) must stay cheap and quiet: torchvision imports
    torch._dynamo (a second), torch.utils.benchmark warns without CUDA, torch's flop counter imports triton and
    networkx takes a twelfth of a second (both are imported where they are used), the rest are optional extras."""
    import subprocess
    import sys

    heavy = ["torchvision", "torch._dynamo", "torch.utils.benchmark", "matplotlib", "onnx", "onnxruntime", "timm",
             "transformers", "ultralytics", "torch.utils.flop_counter", "triton", "networkx"]
    code = ("import sys, graphprune; print(' '.join(m for m in " + repr(heavy) + " if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "" and result.stderr == ""
