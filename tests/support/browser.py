"""A real headless Chromium for the web-page tests: Debian's ``chromium`` (scripts/setup
installs it) driven by Playwright, which never downloads a browser here. Without Chromium or
Playwright the tests skip, except under ``CI=true``, where they fail."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("HUBCULL_CHROMIUM", "/usr/bin/chromium")
#: The flags the developers' guide asks for (the network here is closed).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AXE = Path(__file__).resolve().parents[2] / ".tools" / "node" / "node_modules" / "axe-core"


def _missing(what: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what}: scripts/setup installs it, and CI must run the browser tests")
    pytest.skip(f"{what} (scripts/setup installs it)")


def require_browser() -> None:
    """Skip (fail under CI=true) without Chromium, Playwright or axe-core."""
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        _missing(f"no Chromium at {CHROMIUM}")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        _missing("the Python package playwright is not installed")
    if not (AXE / "axe.min.js").exists():
        _missing(f"axe-core is not in {AXE}")


def _executable() -> str | None:
    return CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")


@asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[Any]:
    """A fresh browser context (its own ``--user-data-dir``)."""
    require_browser()
    from playwright.async_api import async_playwright

    executable = _executable()
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile), executable_path=executable, args=FLAGS, headless=True
        )
        try:
            yield context
        finally:
            await context.close()


async def axe_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's violations on the page (injected through the DevTools protocol, which the
    page's Content-Security-Policy does not apply to)."""
    await page.evaluate((AXE / "axe.min.js").read_text())
    return await page.evaluate(
        """async () => (await axe.run(document)).violations.map(v => ({
            id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.map(n => n.target.join(' '))}))"""
    )
