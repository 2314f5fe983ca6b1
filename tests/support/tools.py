"""The external tools some tests run (helm, promtool, actionlint, shellcheck).

Without a tool its tests skip on a developer's machine (pytest ``-rs`` prints why), but they
fail when the run must be complete: under ``CI=true`` and under ``scripts/test``, which sets
``HUBCULL_REQUIRE_TOOLS=1`` so that the README's test command is as strict as CI
(``HUBCULL_REQUIRE_TOOLS=0 scripts/test`` lets them skip).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import NoReturn

import pytest

#: Set to 1 (scripts/test does) to fail, not skip, a test whose tool is missing.
REQUIRE_ENV = "HUBCULL_REQUIRE_TOOLS"


def tools_required() -> bool:
    """Whether a missing tool fails its test: ``CI=true`` or ``HUBCULL_REQUIRE_TOOLS=1``."""
    return (
        os.environ.get("CI", "").lower() == "true" or os.environ.get(REQUIRE_ENV, "").strip() == "1"
    )


def missing_tool(reason: str) -> NoReturn:
    """Skip the test because ``reason`` (a tool is missing), or fail it when tools are
    required (:func:`tools_required`)."""
    if tools_required():
        why = "CI=true" if os.environ.get("CI", "").lower() == "true" else f"{REQUIRE_ENV}=1"
        pytest.fail(f"{why} but {reason}", pytrace=False)
    pytest.skip(reason)


def require_promtool() -> str:
    """promtool's path; skip without it, fail when tools are required."""
    found = shutil.which("promtool")
    if found is None:
        reason = "promtool is not installed (Debian's prometheus package: scripts/setup)"
        missing_tool(reason)
    return found


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_promtool(), *args], capture_output=True, text=True, timeout=120, check=False
    )
