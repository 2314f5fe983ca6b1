"""The package's layers: the engine never imports the operator layer, kopf or a Kubernetes
client; inside the engine, imports follow a sweep's data flow (hub, rules -> signals ->
sweep); the operator layer never imports the command line."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "operator" / "hubcull"


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    module_parts = ["hubcull", *path.relative_to(PACKAGE).with_suffix("").parts]
    if module_parts[-1] == "__init__":
        module_parts.pop()
    package = module_parts if path.name == "__init__.py" else module_parts[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def _layer_files(layer: str) -> list[Path]:
    return sorted((PACKAGE / layer).rglob("*.py"))


def _engine_imports(path: Path) -> set[str]:
    return {n for n in _imports(path) if n.startswith("hubcull.engine.")}


#: What each folder of the engine may import from the engine, following a sweep's data flow:
#: the Hub and the pure rules know nothing of signals or the sweep; signals know the Hub and
#: the rules; the sweep wires everything. errors, durations and clock are shared basics.
BASICS = ("hubcull.engine.errors", "hubcull.engine.durations", "hubcull.engine.clock")
ALLOWED = {
    "hub": (*BASICS, "hubcull.engine.hub"),
    "rules": (*BASICS, "hubcull.engine.hub.model", "hubcull.engine.rules"),
    "signals": (*BASICS, "hubcull.engine.hub", "hubcull.engine.rules", "hubcull.engine.signals"),
    "sweep": ("hubcull.engine",),
}


def _folder(path: Path) -> str:
    parts = path.relative_to(PACKAGE / "engine").parts
    return parts[0] if len(parts) > 1 else ""


@pytest.mark.parametrize("path", _layer_files("engine"), ids=lambda p: p.name)
def test_the_engine_imports_no_kopf_no_kubernetes_and_no_operator_layer(path: Path) -> None:
    forbidden = ("kopf", "kubernetes", "hubcull.k8s", "hubcull.cli", "hubcull.service")
    bad = sorted(
        n for n in _imports(path) if n.split(".")[0] in forbidden or n.startswith(forbidden)
    )
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize(
    "path", _layer_files("engine"), ids=lambda p: str(p.relative_to(PACKAGE / "engine"))
)
def test_engine_folders_import_one_way(path: Path) -> None:
    folder = _folder(path)
    allowed = ALLOWED.get(folder, BASICS)
    bad = sorted(
        n
        for n in _engine_imports(path)
        if not any(n == a or n.startswith(a + ".") for a in allowed)
    )
    assert not bad, f"engine/{folder or '.'} may not import {bad}"


def test_the_rules_do_no_io() -> None:
    """The rules are pure: no network, no asyncio, no clock."""
    banned = ("httpx", "asyncio", "time", "socket", "ssl")
    for path in _layer_files("engine/rules"):
        bad = sorted(n for n in _imports(path) if n.split(".")[0] in banned)
        assert not bad, f"{path.name} imports {bad}"
        assert "datetime.now(" not in path.read_text(), f"{path.name} reads the clock"


def test_every_engine_module_is_in_a_folder_but_the_basics() -> None:
    flat = sorted(p.name for p in (PACKAGE / "engine").glob("*.py"))
    assert flat == ["__init__.py", "clock.py", "durations.py", "errors.py"]


@pytest.mark.parametrize("path", _layer_files("k8s"), ids=lambda p: p.name)
def test_the_operator_layer_never_imports_the_command_line(path: Path) -> None:
    assert not [n for n in _imports(path) if n.startswith("hubcull.cli")]


def test_hubcull_sweep_does_not_load_kopf() -> None:
    """``hubcull sweep`` (the engine and the CLI) runs without importing kopf at all."""
    code = (
        "import sys, hubcull.cli, hubcull.engine.sweep.runner; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kopf', 'kubernetes') "
        "or m.startswith('hubcull.k8s')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
