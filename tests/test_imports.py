"""The package's imports form no cycle (between modules at module level, and between its
rooms counting every import, function-level ones too), `commands/` is imported by nothing
but the CLI, and the pure layers stay pure: `loss/` and `tokens/` import nothing from
Axolotl, the HF Trainer, the engines or the layers above them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "axolotl_dskd"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> every module it imports at module level (inside functions is lazy by design)."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        graph[name] = {target for target in found if target in modules and target != name}
    return graph


def _room(module: str) -> str:
    """The room a module lives in: its folder under the package, or its own name at the root."""
    return module.split(".")[1] if module.count(".") >= 1 else module


def _every_import(path: Path) -> set[str]:
    """Every axolotl_dskd module `path` imports, anywhere in it (function level included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "axolotl_dskd":
            found |= {f"axolotl_dskd.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("axolotl_dskd."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("axolotl_dskd.")}
    return found


def _room_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        source = _room(_module_name(path))
        targets = {_room(name) for name in _every_import(path) if name.count(".") >= 1}
        graph.setdefault(source, set()).update(targets - {source})
    return graph


def _external_imports(layer: str) -> set[str]:
    roots: set[str] = set()
    for path in (PACKAGE / layer).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                roots.add(node.module)
            elif isinstance(node, ast.Import):
                roots |= {alias.name for alias in node.names}
    return roots


def test_module_level_imports_have_no_cycle() -> None:
    graph, state, cycles = _imports(), {}, []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_rooms_have_no_cycle_counting_function_level_imports() -> None:
    """The package root (`axolotl_dskd/__init__.py`, which loads the plugin on demand) aside."""
    graph = {room: targets - {"axolotl_dskd"} for room, targets in _room_graph().items() if room != "axolotl_dskd"}
    cycles = []

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(t == goal or (t not in seen and reaches(t, goal, seen | {t})) for t in graph.get(start, ()))

    for room, targets in graph.items():
        cycles += [(room, target) for target in targets if reaches(target, room, {target})]
    assert not cycles, cycles


def test_commands_are_imported_by_the_cli_alone() -> None:
    importers = sorted(
        _module_name(path)
        for path in PACKAGE.rglob("*.py")
        if _room(_module_name(path)) != "commands"
        and any(name.startswith("axolotl_dskd.commands") for name in _every_import(path))
    )
    assert importers == [], importers


def test_loss_and_tokens_import_no_framework_and_no_upper_layer() -> None:
    forbidden = ("axolotl.", "transformers.trainer", "accelerate", "deepspeed", "axolotl_dskd.engines")
    upper = ("axolotl_dskd.integration", "axolotl_dskd.collate", "axolotl_dskd.teacher", "axolotl_dskd.distill")
    for layer in ("loss", "tokens"):
        imported = _external_imports(layer)
        bad = [name for name in imported if name == "axolotl" or name.startswith(forbidden + upper)]
        assert not bad, (layer, bad)


def test_the_loss_and_distillation_layers_load_without_axolotl() -> None:
    """Importing the package runs no Axolotl code until DSKDPlugin is asked for, so the
    GPU step check (benchmarks/gpu_step.py) runs where Axolotl is not installed."""
    code = (
        "import sys; import axolotl_dskd.distill.step, axolotl_dskd.loss.chunked, axolotl_dskd.planning.memory; "
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('axolotl', 'pydantic') "
        "or name == 'axolotl_dskd.integration.compat'))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
    plugin = subprocess.run(
        [sys.executable, "-c", "import axolotl_dskd; print(axolotl_dskd.DSKDPlugin.__module__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert plugin.stdout.strip() == "axolotl_dskd.integration.plugin"
