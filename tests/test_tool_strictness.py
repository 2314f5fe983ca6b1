"""scripts/test is as strict as CI: a test whose tool is missing fails there instead of
skipping, and every skip says why (tests/support/tools.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helm import REPO
from tests.support.tools import REQUIRE_ENV

SCRIPT = REPO / "scripts" / "test"
#: A test that runs promtool and nothing else.
PROMTOOL_TEST = "tests/test_monitoring.py::test_rules_pass_promtool_check"


def _run_without_tools(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The promtool test in a pytest whose PATH holds only Python (no promtool)."""
    bare = tmp_path / "bin"
    bare.mkdir(exist_ok=True)
    (bare / "python").symlink_to(sys.executable)
    base = {k: v for k, v in os.environ.items() if k not in ("CI", REQUIRE_ENV)}
    argv = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-n", "0"]
    return subprocess.run(
        [*argv, PROMTOOL_TEST],
        cwd=REPO,
        env={**base, "PATH": str(bare), **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_scripts_test_requires_the_tools_and_shows_skip_reasons() -> None:
    script = SCRIPT.read_text(encoding="utf-8")
    assert f'export {REQUIRE_ENV}="${{{REQUIRE_ENV}:-1}}"' in script
    [pytest_line] = [line for line in script.splitlines() if "-m pytest" in line]
    assert " -rs " in pytest_line
    assert script.index(f"export {REQUIRE_ENV}") < script.index(pytest_line)


@pytest.mark.parametrize(
    ("env", "outcome", "says"),
    [
        ({REQUIRE_ENV: "1"}, "1 failed", f"{REQUIRE_ENV}=1 but promtool is not installed"),
        ({"CI": "true"}, "1 failed", "CI=true but promtool is not installed"),
        ({REQUIRE_ENV: "0"}, "1 skipped", "SKIPPED [1] "),
        ({}, "1 skipped", ": promtool is not installed (Debian's prometheus package"),
    ],
    ids=["required", "ci", "opted-out", "developer"],
)
def test_a_missing_tool_fails_when_required_and_skips_with_its_reason_otherwise(
    tmp_path: Path, env: dict[str, str], outcome: str, says: str
) -> None:
    done = _run_without_tools(tmp_path, **env)
    output = done.stdout + done.stderr
    assert outcome in output, output
    assert says in output, output
    assert done.returncode == (1 if "failed" in outcome else 0), output
