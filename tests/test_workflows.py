"""The GitHub Actions workflows: actionlint finds nothing, and the release workflow does what
README and the chart promise (image and chart under ghcr.io/<owner>, the CRD on the release).

GitHub cannot run here, so these tests lint the workflow files with ``actionlint`` (with
shellcheck for the ``run:`` scripts), read the release workflow, and run
``scripts/release.py``, which the workflow calls for its version check and notes, on this
checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.helm import CHART, REPO
from tests.support.tools import missing_tool

WORKFLOWS = REPO / ".github" / "workflows"
RELEASE = WORKFLOWS / "release.yml"
VENV_BIN = Path(sys.executable).parent


def _require(tool: str) -> str:
    """The path of a linting tool (the venv's first); skip without it, fail when tools are
    required (tests/support/tools.py)."""
    found = shutil.which(tool, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        reason = f"{tool} is not installed: run scripts/setup"
        missing_tool(reason)
    return found


def _workflow_files() -> list[Path]:
    return sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])


def _release() -> dict[Any, Any]:
    return yaml.safe_load(RELEASE.read_text(encoding="utf-8"))


def _on(workflow: dict[Any, Any]) -> dict[str, Any]:
    # PyYAML reads the bare key `on` as the boolean True (YAML 1.1).
    return workflow.get("on", workflow.get(True))


def _steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job["steps"]


def _runs(job: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in _steps(job))


def _chart_yaml() -> dict[str, Any]:
    return yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))


def test_actionlint_finds_nothing_in_any_workflow():
    """actionlint (expressions, permissions, action inputs, shellcheck of `run:`) is clean."""
    files = _workflow_files()
    assert RELEASE in files
    actionlint = _require("actionlint")
    shellcheck = _require("shellcheck")
    proc = subprocess.run(
        [actionlint, "-color=false", "-shellcheck", shellcheck, *map(str, files)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"actionlint:\n{proc.stdout}{proc.stderr}"


def test_actionlint_reports_a_broken_workflow(tmp_path):
    """The lint step is not a no-op: a typo in a permission and an unquoted variable fail."""
    actionlint = _require("actionlint")
    shellcheck = _require("shellcheck")
    broken = RELEASE.read_text(encoding="utf-8").replace("packages: write", "packagez: write", 1)
    broken = broken.replace('inspect "$IMAGE"', "inspect $IMAGE")
    (tmp_path / "release.yml").write_text(broken, encoding="utf-8")
    proc = subprocess.run(
        [actionlint, "-color=false", "-shellcheck", shellcheck, str(tmp_path / "release.yml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    assert 'unknown permission scope "packagez"' in proc.stdout
    assert "SC2086" in proc.stdout


def test_release_runs_on_version_tags_only():
    """Pushing a tag v* (and nothing else) releases."""
    assert _on(_release()) == {"push": {"tags": ["v*"]}}


def test_release_permissions_are_least_privilege():
    """No default permissions; packages: write only where something is pushed, contents:
    write only to create the release; no other scope anywhere."""
    workflow = _release()
    assert workflow["permissions"] == {}
    jobs = workflow["jobs"]
    expected = {
        "version": {"contents": "read"},
        "image": {"contents": "read", "packages": "write"},
        "chart": {"contents": "read", "packages": "write"},
        "release": {"contents": "write"},
    }
    assert {name: job["permissions"] for name, job in jobs.items()} == expected
    text = RELEASE.read_text(encoding="utf-8")
    assert "secrets." not in text.replace("secrets.GITHUB_TOKEN", ""), "only GITHUB_TOKEN"
    for job in jobs.values():
        for step in _steps(job):
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False


def test_every_action_is_pinned_by_commit_sha():
    """`uses: owner/repo@<40 hex>  # vX.Y.Z` for every step of every workflow."""
    for path in _workflow_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        uses = [line for line in lines if re.match(r"\s*(- )?uses:", line)]
        assert uses, path.name
        for line in uses:
            assert re.search(r"uses: [\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+$", line), (
                f"{path.name}: {line.strip()!r} is not pinned by a full commit SHA"
            )


def test_image_is_multi_platform_and_in_the_owners_namespace():
    """linux/amd64 and linux/arm64, pushed as ghcr.io/<owner>/hubcull:<version>."""
    job = _release()["jobs"]["image"]
    assert job["env"]["IMAGE"] == (
        "ghcr.io/${{ needs.version.outputs.owner }}/hubcull:${{ needs.version.outputs.version }}"
    )
    (build,) = [s for s in _steps(job) if s.get("uses", "").startswith("docker/build-push-action")]
    assert build["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert build["with"]["push"] is True and build["with"]["tags"] == "${{ env.IMAGE }}"
    (qemu,) = [s for s in _steps(job) if s.get("uses", "").startswith("docker/setup-qemu-action")]
    assert qemu["with"]["platforms"] == "arm64"
    (login,) = [s for s in _steps(job) if s.get("uses", "").startswith("docker/login-action")]
    assert login["with"] == {
        "registry": "ghcr.io",
        "username": "${{ github.actor }}",
        "password": "${{ secrets.GITHUB_TOKEN }}",
    }
    owner_step = _release()["jobs"]["version"]["steps"][-1]["run"]
    assert "${GITHUB_REPOSITORY_OWNER,,}" in owner_step, "ghcr.io wants a lower-case namespace"


def test_chart_is_packaged_with_the_tags_version_and_pushed_as_oci():
    """helm package --version/--app-version from the tag, helm push oci://ghcr.io/<owner>/charts."""
    job = _release()["jobs"]["chart"]
    assert job["needs"] == ["version", "image"], "the chart must not name an image not pushed"
    script = _runs(job)
    assert 'helm package "$CHART_DIR" --version "$VERSION" --app-version "$VERSION"' in script
    assert 'helm push "dist/hubcull-${VERSION}.tgz" "oci://ghcr.io/${OWNER}/charts"' in script
    assert "helm registry login ghcr.io" in script and "--password-stdin" in script
    assert _release()["env"]["CHART_DIR"] == str(CHART.relative_to(REPO))


def test_fork_releases_point_the_chart_at_their_own_image(tmp_path):
    """The sed of the chart job rewrites values.yaml's image.repository (and fails otherwise)."""
    job = _release()["jobs"]["chart"]
    (step,) = [s for s in _steps(job) if "sed -i" in s.get("run", "")]
    assert step["if"] == "needs.version.outputs.owner != 'hubcull'"
    chart_dir = tmp_path / "chart"
    chart_dir.mkdir()
    shutil.copy(CHART / "values.yaml", chart_dir / "values.yaml")
    shutil.copy(CHART / "Chart.yaml", chart_dir / "Chart.yaml")
    env = {
        **os.environ,
        "OWNER": "someone",
        "CHART_DIR": str(chart_dir),
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REPOSITORY": "someone/hubcull",
    }
    subprocess.run(["bash", "-euo", "pipefail", "-c", step["run"]], env=env, check=True)
    values = yaml.safe_load((chart_dir / "values.yaml").read_text(encoding="utf-8"))
    assert values["image"]["repository"] == "ghcr.io/someone/hubcull"
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["sources"] == ["https://github.com/someone/hubcull"]
    assert _chart_yaml()["sources"] == ["https://github.com/hubcull/hubcull"]


def test_release_attaches_the_crd_and_uses_the_changelog():
    """gh release create for the tag with deploy/crds' CRD and notes from CHANGELOG.md."""
    jobs = _release()["jobs"]
    job = jobs["release"]
    assert set(job["needs"]) == {"version", "image", "chart"}
    script = _runs(job)
    crd = "deploy/crds/cullpolicies.hubcull.io.yaml"
    assert (REPO / crd).is_file()
    assert f'gh release create "$GITHUB_REF_NAME" {crd}' in script
    assert "scripts/release.py notes" in script and "--notes-file" in script
    assert "scripts/release.py version" in _runs(jobs["version"])


def _release_py(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "release.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_release_version_check_accepts_the_charts_version():
    """The tag of the current Chart.yaml version passes and gives the version output."""
    version = _chart_yaml()["version"]
    proc = _release_py("version", f"v{version}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"version={version}\n"


@pytest.mark.parametrize(
    "tag, message",
    [
        ("0.1.0", "is not v<SemVer>"),
        ("v0.1", "is not v<SemVer>"),
        ("v9.9.9", "Chart.yaml version is"),
        ("v9.9.9", "CHANGELOG.md has no '## [9.9.9]' section"),
        ("v9.9.9-rc.1", "pyproject.toml version is"),
    ],
)
def test_release_version_check_refuses_a_tag_that_does_not_match(tag, message):
    """A tag that is no SemVer, or that the sources do not carry, stops the release."""
    proc = _release_py("version", tag)
    assert proc.returncode == 1
    assert message in proc.stderr


def test_release_notes_are_the_changelog_section_and_the_install_commands():
    """Notes: the version's CHANGELOG entries, the OCI chart and image of the owner."""
    version = _chart_yaml()["version"]
    proc = _release_py("notes", version, "Some-Owner", "sha256:" + "0" * 64)
    assert proc.returncode == 0, proc.stderr
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    section = changelog.split(f"## [{version}]", 1)[1].split("\n## [", 1)[0]
    first_entry = next(line for line in section.splitlines() if line.startswith("- "))
    assert first_entry in proc.stdout
    assert "## [Unreleased]" not in proc.stdout
    assert (
        f"helm install hubcull oci://ghcr.io/some-owner/charts/hubcull --version {version}"
        in proc.stdout
    )
    assert f"ghcr.io/some-owner/hubcull:{version}" in proc.stdout
    assert "sha256:" + "0" * 64 in proc.stdout
