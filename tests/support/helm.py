"""Run the real ``helm`` CLI on the hubcull chart, for tests/test_helm.py.

``helm`` is found at ``.tools/bin/helm`` (``scripts/setup`` installs it there with
``scripts/install_helm.py``) or else on PATH. When it is missing the helm tests skip on a
developer's machine, but fail under CI (``CI=true``) and scripts/test, where a skipped chart
test would pass unnoticed (tests/support/tools.py).

Renders are cached per (values, namespace, extra args): ``helm template`` is fast (~50 ms)
but the suite asks for the same render many times.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.tools import missing_tool

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "hubcull"
TOOLS_HELM = REPO / ".tools" / "bin" / "helm"
RELEASE = "hubcull"
NAMESPACE = "jhub"


def helm_binary() -> Path | None:
    """The helm to use: .tools/bin/helm, else the one on PATH, else None."""
    if TOOLS_HELM.is_file() and os.access(TOOLS_HELM, os.X_OK):
        return TOOLS_HELM
    found = shutil.which("helm")
    return Path(found) if found else None


def require_helm() -> Path:
    """Return helm's path; skip the test without it (fail instead when tools are required)."""
    helm = helm_binary()
    if helm is None:
        reason = (
            f"helm is not installed at {TOOLS_HELM.relative_to(REPO)} nor on PATH; "
            "run `.venv/bin/python scripts/install_helm.py .tools/bin`"
        )
        missing_tool(reason)
    return helm


@dataclass(frozen=True)
class HelmResult:
    """What one helm command did."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout and stderr together, for assertions on messages."""
        return f"{self.stdout}\n{self.stderr}"


def run_helm(args: Iterable[str], values: Mapping[str, Any] | None = None) -> HelmResult:
    """Run helm with ``args`` (plus ``-f VALUES`` when values are given)."""
    helm = require_helm()
    with tempfile.TemporaryDirectory(prefix="hubcull-helm-") as tmp:
        argv = [str(helm), *args]
        if values is not None:
            values_file = Path(tmp) / "values.yaml"
            values_file.write_text(yaml.safe_dump(dict(values)), encoding="utf-8")
            argv += ["-f", str(values_file)]
        env = {**os.environ, "HELM_CACHE_HOME": tmp, "HELM_CONFIG_HOME": tmp}
        env["HELM_DATA_HOME"] = tmp
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=120, env=env, check=False
        )
    return HelmResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)


def template(
    values: Mapping[str, Any] | None = None,
    *,
    namespace: str = NAMESPACE,
    extra: Iterable[str] = (),
) -> HelmResult:
    """``helm template`` the chart (not cached; use :func:`render` for the objects)."""
    args = ["template", RELEASE, str(CHART), "--namespace", namespace, *extra]
    return run_helm(args, values or {})


def lint(values: Mapping[str, Any] | None = None, *, namespace: str = NAMESPACE) -> HelmResult:
    """``helm lint --strict`` the chart with the values."""
    return run_helm(["lint", "--strict", str(CHART), "--namespace", namespace], values or {})


@functools.cache
def _render_cached(values_json: str, namespace: str, extra: tuple[str, ...]) -> tuple[str, ...]:
    result = template(json.loads(values_json), namespace=namespace, extra=extra)
    if result.returncode != 0:
        raise AssertionError(f"helm template failed:\n{result.output}")
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    # Cache JSON text so that callers get fresh, mutable copies.
    return tuple(json.dumps(doc) for doc in docs)


def render(
    values: Mapping[str, Any] | None = None,
    *,
    namespace: str = NAMESPACE,
    extra: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """The objects ``helm template`` renders for the values (fails the test on an error)."""
    key = json.dumps(values or {}, sort_keys=True)
    return [json.loads(doc) for doc in _render_cached(key, namespace, tuple(extra))]


def find(objects: Iterable[Mapping[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The objects of a kind, in render order."""
    return [dict(obj) for obj in objects if obj.get("kind") == kind]


def one(objects: Iterable[Mapping[str, Any]], kind: str) -> dict[str, Any]:
    """The single object of a kind (fails unless there is exactly one)."""
    found = find(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def workload(objects: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The operator's Deployment or StatefulSet (exactly one of them)."""
    found = [o for o in objects if o.get("kind") in {"Deployment", "StatefulSet"}]
    assert len(found) == 1, f"expected one workload, got {[o['kind'] for o in found]}"
    return dict(found[0])


def container(objects: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The operator container of the workload."""
    containers = workload(objects)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["hubcull"]
    return containers[0]


def chart_values() -> dict[str, Any]:
    """The chart's default values.yaml."""
    return yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))


def values_schema() -> dict[str, Any]:
    """The chart's values.schema.json."""
    return json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
