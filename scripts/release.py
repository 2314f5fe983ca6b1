#!/usr/bin/env python3
"""Checks and texts of a hubcull release, for .github/workflows/release.yml.

Usage::

    python3 scripts/release.py version v0.2.0      # prints "version=0.2.0" or fails
    python3 scripts/release.py notes 0.2.0 OWNER [DIGEST]   # the release notes (Markdown)

``version`` takes the pushed tag and fails, saying what to fix, unless the tag is ``v``
followed by a SemVer version that is the chart's ``version`` and ``appVersion`` in
deploy/helm/hubcull/Chart.yaml and the package's ``version`` in pyproject.toml (PEP 440
spelling for pre-releases, e.g. 0.2.0rc1 for 0.2.0-rc.1), and unless CHANGELOG.md has a
``## [VERSION]`` section. Its output line is meant for ``$GITHUB_OUTPUT``.

``notes`` prints that CHANGELOG section followed by how to install the release from the
repository owner's registry namespace. Standard library only (the runner's python3).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHART_YAML = REPO / "deploy" / "helm" / "hubcull" / "Chart.yaml"
PYPROJECT = REPO / "pyproject.toml"
CHANGELOG = REPO / "CHANGELOG.md"
CRD = "deploy/crds/cullpolicies.hubcull.io.yaml"

#: SemVer 2 (what Helm requires of a chart version), without build metadata.
SEMVER = re.compile(
    r"(?P<core>0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
)
#: SemVer pre-release -> PEP 440 pre-release: rc.1 -> rc1, beta.2 -> b2, alpha.3 -> a3.
PEP440_PRE = {"alpha": "a", "a": "a", "beta": "b", "b": "b", "rc": "rc"}


class ReleaseError(Exception):
    """A release check failed; the message says what to fix."""


def top_level_field(text: str, key: str, where: str) -> str:
    """A top-level ``key: value`` of a YAML or TOML file (quotes removed)."""
    match = re.search(rf"^{re.escape(key)}\s*[:=]\s*(.+?)\s*$", text, re.M)
    if not match:
        raise ReleaseError(f"{where} has no top-level {key}")
    return match.group(1).strip().strip("\"'")


def pep440(version: str) -> str:
    """The PEP 440 spelling of a SemVer version (0.2.0-rc.1 -> 0.2.0rc1)."""
    match = SEMVER.fullmatch(version)
    assert match is not None
    if not match.group("pre"):
        return version
    pre = re.fullmatch(r"([A-Za-z]+)\.?(\d+)", match.group("pre"))
    if not pre or pre.group(1).lower() not in PEP440_PRE:
        raise ReleaseError(
            f"pre-release {match.group('pre')!r}: use alpha.N, beta.N or rc.N, which Python "
            "packaging can spell too"
        )
    return f"{version.split('-', 1)[0]}{PEP440_PRE[pre.group(1).lower()]}{pre.group(2)}"


def check_version(tag: str) -> str:
    """The version a tag releases, after checking it against the chart, package and changelog."""
    if not tag.startswith("v") or not SEMVER.fullmatch(tag[1:]):
        raise ReleaseError(f"tag {tag!r} is not v<SemVer>, e.g. v0.2.0 or v0.2.0-rc.1")
    version = tag[1:]
    chart = CHART_YAML.read_text(encoding="utf-8")
    problems = []
    for key in ("version", "appVersion"):
        found = top_level_field(chart, key, "Chart.yaml")
        if found != version:
            problems.append(f"Chart.yaml {key} is {found}")
    package = top_level_field(PYPROJECT.read_text(encoding="utf-8"), "version", "pyproject.toml")
    if package != pep440(version):
        problems.append(f"pyproject.toml version is {package} (want {pep440(version)})")
    if not re.search(rf"^## \[{re.escape(version)}\]", changelog(), re.M):
        problems.append(f"CHANGELOG.md has no '## [{version}]' section")
    if problems:
        raise ReleaseError(f"tag {tag} does not match the sources: " + "; ".join(problems))
    return version


def changelog() -> str:
    """CHANGELOG.md's text."""
    return CHANGELOG.read_text(encoding="utf-8")


def notes(version: str, owner: str, digest: str = "") -> str:
    """The release notes: the version's CHANGELOG section and the install commands."""
    match = re.search(
        rf"^## \[{re.escape(version)}\][^\n]*\n(.*?)(?=^## \[|^\[[^\]]+\]: |\Z)",
        changelog(),
        re.M | re.S,
    )
    if not match:
        raise ReleaseError(f"CHANGELOG.md has no '## [{version}]' section")
    owner = owner.lower()
    install = f"""
## Install

```sh
helm install hubcull oci://ghcr.io/{owner}/charts/hubcull --version {version} --namespace jhub
```

The chart runs the image `ghcr.io/{owner}/hubcull:{version}` (linux/amd64 and linux/arm64{
        f"; digest `{digest}`" if digest else ""
    }) and installs the CullPolicy CRD. `helm upgrade` does not update CRDs: before upgrading, apply
the CRD attached to this release (`{Path(CRD).name}`) with
`kubectl apply --server-side -f {Path(CRD).name}`.
"""
    return match.group(1).strip() + "\n" + install


def main(argv: list[str]) -> int:
    """Run one subcommand; print what failed and return 1 on a failed check."""
    try:
        if len(argv) == 2 and argv[0] == "version":
            print(f"version={check_version(argv[1])}")
            return 0
        if len(argv) in (3, 4) and argv[0] == "notes":
            print(notes(*argv[1:]), end="")
            return 0
    except ReleaseError as exc:
        print(f"release: {exc}", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
