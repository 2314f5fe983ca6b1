"""The package's two layers: the engine never imports the operator layer, kopf or a
Kubernetes client, and the operator layer never imports the command line."""

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
    return sorted((PACKAGE / layer).glob("*.py"))


@pytest.mark.parametrize("path", _layer_files("engine"), ids=lambda p: p.name)
def test_the_engine_imports_no_kopf_no_kubernetes_and_no_operator_layer(path: Path) -> None:
    forbidden = ("kopf", "kubernetes", "hubcull.k8s", "hubcull.cli")
    bad = sorted(
        n for n in _imports(path) if n.split(".")[0] in forbidden or n.startswith(forbidden)
    )
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", _layer_files("k8s"), ids=lambda p: p.name)
def test_the_operator_layer_never_imports_the_command_line(path: Path) -> None:
    assert not [n for n in _imports(path) if n.startswith("hubcull.cli")]


def test_hubcull_sweep_does_not_load_kopf() -> None:
    """``hubcull sweep`` (the engine and the CLI) runs without importing kopf at all."""
    code = (
        "import sys, hubcull.cli, hubcull.engine.runner; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kopf', 'kubernetes') "
        "or m.startswith('hubcull.k8s')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
