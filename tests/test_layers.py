"""The import graph of src/ follows the layers of docs/code_map.md: a module imports only from
its own package and what is listed before it, and no two modules import each other, directly
or not."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layers() -> list[list[str]]:
    """The layers as docs/code_map.md lists them, bottom first: each line `N. `a`, `b`: ...`."""
    text = (ROOT / "docs" / "code_map.md").read_text()
    rows = re.findall(r"^\d+\. (.+?):", text, flags=re.M)
    return [re.findall(r"`([\w/]+)`", row) for row in rows]


def ranks() -> dict[str, int]:
    """Each package or module's place, bottom first; within a layer in the order listed."""
    return {name.strip("/"): i for i, name in enumerate(n for layer in layers() for n in layer)}


def unit(module: str) -> str:
    """src.metrics.pixel_error -> metrics; src.config -> config (a package or a top-level module)."""
    return module.split(".")[1]


def imports() -> dict[str, set[str]]:
    """Every src module and the src modules it imports (at any depth of its code)."""
    out = {}
    for path in (ROOT / "src").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        out[name] = {m for m in found if m.startswith("src.") and m != name}
    return out


def test_every_package_has_a_layer_and_imports_point_down():
    rank = ranks()
    graph = imports()
    units = {unit(m) for m in graph if m != "src"}
    assert units <= set(rank), f"not in docs/code_map.md's layers: {sorted(units - set(rank))}"
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() if a != "src" for b in targets
                    if unit(b) in rank and unit(b) != unit(a) and rank[unit(b)] >= rank[unit(a)])
    assert not upward, "imports that do not point to a lower layer:\n" + "\n".join(upward)


def test_no_import_cycle_between_modules():
    graph = imports()
    known = {m: {t for t in targets if t in graph} for m, targets in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in known[m]:
            assert state.get(t) != 1, "import cycle: " + " -> ".join(path[path.index(t):] + [m, t])
            if t not in state:
                visit(t, path + [m])
        state[m] = 2

    for m in known:
        if m not in state:
            visit(m, [])


def test_the_checks_see_an_upward_import():
    """The layer check is not vacuous: metrics sits below train, so train -> metrics passes and
    the reverse would be reported."""
    rank = ranks()
    assert rank["metrics"] < rank["train"] < rank["pipelines"] < rank["commands"]
    assert any(unit(t) == "metrics" for t in imports()["src.train.loop"])


def test_every_command_has_one_shape_and_its_summary_in_its_docstring():
    """build_parser(), run(args) and main(argv) in every command module; run.py's summary is
    the first line of the module's docstring, which starts with the command's name."""
    import importlib

    import run

    for name, module_name in run.COMMANDS.items():
        module = importlib.import_module(module_name)
        assert all(callable(getattr(module, f, None)) for f in ("build_parser", "run", "main")), module_name
        assert module.__doc__.startswith(f"{name}: "), module_name
        assert module.build_parser().prog.endswith(name)
        assert run.summary(module_name) in run.usage()
