"""One version everywhere: what an admin installs is what the docs describe.

pyproject.toml's version (what ``hubcull --version`` prints), the chart's ``version`` and
``appVersion`` (the image tag it runs by default), every hubcull chart ``--version`` and image
tag in README.md and docs/, and the newest released section of CHANGELOG.md are the same
version. A release bumps them together (README, "Releasing"); this test names the one left
behind.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART_YAML = REPO / "deploy" / "helm" / "hubcull" / "Chart.yaml"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: A released version (SemVer, optionally a pre-release).
VERSION = r"\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?"


def _pyproject_version() -> str:
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^version = "([^"]+)"$', text, re.M)
    assert match, "pyproject.toml has no version"
    return match.group(1)


def _chart() -> dict:
    return yaml.safe_load(CHART_YAML.read_text(encoding="utf-8"))


def _commands(text: str) -> list[str]:
    """The shell lines of a page, with backslash continuations joined."""
    return text.replace("\\\n", " ").splitlines()


def _released_sections() -> list[str]:
    """CHANGELOG.md's version headings, newest first (``Unreleased`` left out)."""
    text = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    return re.findall(r"^## \[([^\]]+)\]", text, re.M)


def test_package_and_chart_have_one_version():
    """pyproject.toml version == Chart.yaml version == Chart.yaml appVersion."""
    chart = _chart()
    version = _pyproject_version()
    assert re.fullmatch(VERSION, version), version
    assert (chart["version"], str(chart["appVersion"])) == (version, version)


def test_hubcull_version_prints_the_installed_version():
    """``hubcull --version`` (the console script) prints ``hubcull X`` from the installed
    package's metadata, which is pyproject.toml's version."""
    script = Path(sys.executable).with_name("hubcull")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "hubcull.cli"]
    proc = subprocess.run(
        [*argv, "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"hubcull {_pyproject_version()}\n", (
        "the installed metadata is stale: `pip install -e .` again after a version bump"
    )


def test_changelog_newest_release_is_the_version():
    """An ``Unreleased`` section on top, then ``## [X] - YYYY-MM-DD`` for this version, and
    the link references of both."""
    headings = _released_sections()
    version = _pyproject_version()
    assert headings[:2] == ["Unreleased", version], headings[:3]
    text = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## \[{re.escape(version)}\] - \d{{4}}-\d\d-\d\d$", text, re.M)
    assert re.search(rf"^\[Unreleased\]: \S+/compare/v{re.escape(version)}\.\.\.HEAD$", text, re.M)
    assert re.search(rf"^\[{re.escape(version)}\]: \S+v{re.escape(version)}$", text, re.M)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_docs_install_the_current_version(page: Path):
    """Every hubcull chart install or upgrade from the registry pins ``--version`` to this
    version (``NEW`` in upgrade instructions), and every hubcull image tag that is a
    version is this one."""
    version = _pyproject_version()
    text = page.read_text(encoding="utf-8")
    for line in _commands(text):
        if "oci://ghcr.io/hubcull/charts/hubcull" not in line or "helm " not in line:
            continue
        pinned = re.search(r"--version (\S+)", line)
        assert pinned, f"{page.name}: no --version in: {line.strip()}"
        assert pinned.group(1) in (version, "NEW"), f"{page.name}: {line.strip()}"
    for tag in re.findall(rf"ghcr\.io/hubcull/hubcull:({VERSION})\b", text):
        assert tag == version, f"{page.name}: image ghcr.io/hubcull/hubcull:{tag}"
    for tag in re.findall(rf"image\.tag[=:]\s*\"?({VERSION})\b", text):
        assert tag == version, f"{page.name}: image.tag {tag}"


def test_readme_installs_this_version():
    """README's install from a release names this version (not only no other one)."""
    command = (
        "helm install hubcull oci://ghcr.io/hubcull/charts/hubcull "
        f"--version {_pyproject_version()} --namespace jhub"
    )
    assert command in (REPO / "README.md").read_text(encoding="utf-8")
