"""The code's shape: imports flow one way (no module imports another in a loop, lazy imports
inside functions included), the worker's sub-packages form layers that import only downward,
the production path loads no tool and no terminal UI, and the message contract imports nothing
of the worker."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("worker", "shared")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(everywhere: bool = False) -> dict[str, set[str]]:
    modules = {
        module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree) if everywhere else tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                candidates = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            targets |= {c for c in candidates if c in modules and c != name}
        graph[name] = targets
    return graph


def test_no_module_imports_another_in_a_loop():
    graph = imports_of(everywhere=True)
    cycles = []

    def visit(node: str, path: list[str], state: dict[str, int]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target], state)
        state[node] = 2

    state: dict[str, int] = {}
    for start in sorted(graph):
        if start not in state:
            visit(start, [start], state)
    # a package importing its own submodules (re-exports) is not a loop of concerns
    cycles = [c for c in cycles if not all(m.startswith(c[0]) or c[0].startswith(m) for m in c)]
    assert cycles == []


def test_the_contract_imports_nothing_of_the_worker():
    graph = imports_of(everywhere=True)
    assert all(
        not t.startswith("worker") for m, ts in graph.items() if m.startswith("shared") for t in ts
    )


# Bottom to top; a package imports only packages of lower layers (peers do not import each other).
LAYERS = [
    {"shared"},
    {"worker.errors", "worker.files", "worker.settings", "worker.vectors"},
    {"worker.observability"},
    {"worker.vision", "worker.index"},
    {"worker.training"},
    {"worker.matching"},
    {"worker.pipeline"},
    {"worker.amqp"},
    {"worker.service", "worker.review"},
    {"worker.tools"},
    {"worker.cli"},
    {"worker.__main__"},
]


def layer_of(module: str) -> tuple[int, str]:
    """The rank of the module's layer, and its package."""
    for rank, packages in enumerate(LAYERS):
        for package in packages:
            if module == package or module.startswith(package + "."):
                return rank, package
    raise AssertionError(f"{module} belongs to no layer: add its package to LAYERS")


def test_sub_packages_import_only_lower_layers():
    graph = imports_of(everywhere=True)
    upward = [
        (module, target)
        for module, targets in graph.items()
        if module != "worker"
        for target in targets
        if layer_of(target)[1] != layer_of(module)[1] and layer_of(target) >= layer_of(module)
    ]
    assert upward == []


def modules_loaded_by(imports: list[str]) -> set[str]:
    """Every module a fresh interpreter holds after importing these."""
    code = f"import sys, {', '.join(imports)}; print('\\n'.join(sys.modules))"
    listing = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return set(listing.split())


def test_matching_loads_no_model_and_no_qdrant_code():
    """Ranking and learning are numpy: importing every module of worker/matching loads
    neither torch, open_clip nor a Qdrant client (its tests run without them)."""
    matching = sorted(
        module_name(path)
        for path in (ROOT / "worker" / "matching").rglob("*.py")
        if path.name != "__init__.py"
    )
    loaded = modules_loaded_by(matching)
    heavy = {m for m in loaded if m.split(".")[0] in {"torch", "open_clip", "qdrant_client"}}
    assert heavy == set()
    assert not {"qdrant_edge", "openvino", "onnxruntime"} & loaded


def test_no_function_is_longer_than_80_lines_and_no_class_than_300():
    too_long = []
    for path in (ROOT / "worker").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            limit = 300 if isinstance(node, ast.ClassDef) else 80
            kinds = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
            if isinstance(node, kinds) and node.end_lineno - node.lineno + 1 > limit:
                too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert too_long == []


def test_the_worker_command_loads_no_tool():
    """`jewelmatch worker` and the client import the production path only: no demo, no
    benchmark, no terminal command."""
    loaded = modules_loaded_by(["worker.service.app", "worker.amqp.client"])
    assert not {m for m in loaded if m.startswith(("worker.tools", "worker.cli"))}


def test_only_the_command_line_and_tools_use_terminal_ui():
    """Core code reports progress through callbacks, never through rich or tqdm."""
    users = []
    for path in (ROOT / "worker").rglob("*.py"):
        if {"cli", "tools"} & set(path.relative_to(ROOT / "worker").parts):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            if any(n.split(".")[0] in ("rich", "tqdm") for n in names):
                users.append(str(path.relative_to(ROOT)))
    assert users == []


def test_the_client_and_the_review_desk_load_no_model_code():
    """Integrators import the client, and the review desk runs, without torch or open_clip
    (a small image: no model, no weights)."""
    assert not {"torch", "open_clip"} & modules_loaded_by(["worker.amqp.client"])
    loaded = modules_loaded_by(["worker.review.web"])
    assert not {"torch", "open_clip", "qdrant_client", "qdrant_edge"} & loaded
    assert not {m for m in loaded if m.startswith(("worker.vision", "worker.matching"))}
