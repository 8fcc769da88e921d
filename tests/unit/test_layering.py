"""The rooms import one way: a lower room never imports a higher one, and no module imports itself back.

Ranks, lowest first (docs/architecture.md draws them): the manifest's schemas; the errors
every room raises; the loop (decisions, and the interface outer rooms implement); pure
specs; clients (transports); claims; jobs; drivers and the local default; the operator
process; the CLI. A room may import its own modules and any lower room's.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RANKS = {
    "schemas": 0,
    "controller.errors": 1,
    "controller.loop": 2,
    "controller.specs": 3,
    "controller.clients": 4,
    "controller.claims": 5,
    "controller.jobs": 6,
    "controller.drivers": 7,
    "controller.local": 7,
    "controller.operator": 8,
    "controller.cli": 9,
    "controller.__main__": 10,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room_of(module: str) -> str | None:
    """The room a module belongs to: the longest rank key it starts with."""
    matches = [room for room in RANKS if module == room or module.startswith(room + ".")]
    return max(matches, key=len) if matches else None


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every first-party module a file imports, at any depth of the file (function-level imports count)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from controller.loop import naming` imports the module controller.loop.naming.
            found |= {f"{node.module}.{alias.name}" for alias in node.names} & modules
    return {name for name in found if name in modules}


def graph() -> dict[str, set[str]]:
    files = [*ROOT.joinpath("controller").rglob("*.py"), *ROOT.joinpath("schemas").rglob("*.py")]
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, modules) for f in files}


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    wrong = []
    for importer, imported in edges.items():
        if importer == "controller":
            continue  # the package itself: empty
        room = room_of(importer)
        assert room is not None, f"{importer} belongs to no room: add it to RANKS or move it"
        for target in imported:
            other = room_of(target)
            if other is None or other == room:
                continue
            if RANKS[other] >= RANKS[room]:
                wrong.append(f"{importer} ({room}) imports {target} ({other})")
    return sorted(wrong)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle once, found by depth-first search (packages' own __init__ excluded as targets)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if target in node.split(".") or node.startswith(target + "."):
                continue  # a module naming its own package
            if state.get(target) == 1:
                found.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    return found


def test_no_room_imports_a_higher_one() -> None:
    assert upward_imports(graph()) == []


def test_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_the_check_catches_what_it_forbids() -> None:
    """The rule itself: a spec importing a driver, and two modules importing each other, are caught."""
    edges = {
        "controller.specs.quadlet": {"controller.drivers.quadlet"},
        "controller.drivers.quadlet": {"controller.specs.quadlet"},
    }
    assert upward_imports(edges) == [
        "controller.specs.quadlet (controller.specs) imports controller.drivers.quadlet (controller.drivers)"
    ]
    assert cycles(edges) == [["controller.drivers.quadlet", "controller.specs.quadlet", "controller.drivers.quadlet"]]


@pytest.mark.parametrize("room", sorted(RANKS))
def test_every_room_exists(room: str) -> None:
    """A rank for a room that is gone would hide a move that went wrong."""
    path = ROOT.joinpath(*room.split("."))
    assert path.is_dir() or path.with_suffix(".py").is_file()


MODULE_LINES = 460  # "about 450": a module past it has two jobs; split it by role, not by line count


def test_no_module_outgrows_one_job() -> None:
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for path in [*ROOT.joinpath("controller").rglob("*.py"), *ROOT.joinpath("schemas").rglob("*.py")]
    }
    assert {path: lines for path, lines in sizes.items() if lines > MODULE_LINES} == {}
