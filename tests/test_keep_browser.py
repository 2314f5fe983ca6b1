"""The users' page (spec.keep) in a real headless Chromium: log in through the Hub, see the
server's line, keep it (by keyboard and by mouse), see the new deadline; a server named like
HTML stays text; a form posted from another origin is refused; axe-core finds no serious or
critical accessibility violation. Also takes the README's screenshot (docs/img/keep-page.png)
when HUBCULL_SCREENSHOT=1."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from aiohttp import web

from tests.support.browser import axe_violations, chromium, require_browser
from tests.support.jhub import start_hub
from tests.support.keep_env import (
    PASSWORD,
    PREFIX,
    free_port,
    new_service,
    operator_with_service,
    swept_after,
)
from tests.support.kube import Kube
from tests.support.operator_env import NS, cullpolicy, policy_status, secret

pytestmark = [pytest.mark.k8s, pytest.mark.hub]

XSS = "<img src=x onerror=alert(1)>"
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "img" / "keep-page.png"


async def attacker_site(target: str) -> web.AppRunner:
    """Another origin (same site: 127.0.0.1) with a form that posts to the keep URL."""

    async def page(_: web.Request) -> web.Response:
        return web.Response(
            content_type="text/html",
            text=(
                '<!DOCTYPE html><html lang="en"><head><title>win a prize</title></head><body>'
                f'<form method="post" action="{target}"><input type="hidden" name="hours" '
                'value="1"><button id="go" type="submit">Claim</button></form></body></html>'
            ),
        )

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    return runner


async def test_keep_a_server_in_a_real_browser(kube: Kube, tmp_path: Path) -> None:
    require_browser()
    service = new_service()
    async with start_hub(tmp_path / "hub", extra_config=service.hub_config()) as hub:
        await hub.create_users(["alice", XSS])
        for user, server in (("alice", ""), ("alice", "exp"), (XSS, "")):
            await hub.spawn(user, server)
        policy = cullpolicy(
            hub, idleTimeout="1h", every="10s", keep={"max": "8h"}, warn={"before": "10m"}
        )
        async with operator_with_service(kube, hub, service), chromium(tmp_path / "p") as ctx:
            await kube.create(secret(service.token))
            await kube.create(policy)
            await swept_after(kube, None)
            page = await ctx.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda d: dialogs.append(d.message))

            # log in through the Hub's own login form and OAuth redirects
            await log_in(page, hub.public_url, "alice")
            assert await page.locator("h1").inner_text() == "Your running servers"

            # the server's line: its policy, what judges it, and that it is not kept
            default = server_section(page, "Your default server")
            row = default.locator("tbody tr")
            assert f"{NS}/default" in await row.inner_text()
            assert "Hub activity" in await row.inner_text()
            assert "Not kept." in await default.inner_text()

            # keep it with the keyboard: type the hours in the labelled field, press Enter
            hours = default.get_by_label("Keep your default server running for")
            await hours.fill("3")
            await hours.press("Enter")
            await page.wait_for_url(f"**{PREFIX}?done=*")
            notice = await page.get_by_role("status").inner_text()
            keeps = (await policy_status(kube))["keeps"]
            until = next(k["until"] for k in keeps if k["server"] == "")
            assert notice == f"Your default server is kept until {until}."
            kept_state = server_section(page, "Your default server")
            shown = await kept_state.locator("p.state time").get_attribute("datetime")
            assert shown == until
            if os.environ.get("HUBCULL_SCREENSHOT") == "1":
                shot = tmp_path / "keep-page.png"
                await page.set_viewport_size({"width": 1100, "height": 800})
                await page.screenshot(path=str(shot), full_page=True)
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, SCREENSHOT)

            # and with the mouse, for the other server
            other = server_section(page, "Server exp")
            await other.get_by_role("spinbutton").fill("1")
            await other.get_by_role("button", name="Keep").click()
            await page.wait_for_url(f"**{PREFIX}?done=*")
            assert "is kept until" in await page.get_by_role("status").inner_text()
            assert len((await policy_status(kube))["keeps"]) == 2

            # no serious or critical accessibility problem
            violations = await axe_violations(page)
            serious = [v for v in violations if v["impact"] in ("serious", "critical")]
            assert serious == [], serious

            # a form on another origin cannot keep: the CSRF check refuses it
            runner = await attacker_site(f"{hub.public_url}{PREFIX}servers/~/keep")
            port = free_port()
            site = web.TCPSite(runner, "127.0.0.1", port)
            await site.start()
            try:
                before = (await policy_status(kube))["keeps"]
                await page.goto(f"http://127.0.0.1:{port}/")
                async with page.expect_navigation() as navigation:
                    await page.click("#go")
                response = await navigation.value
                assert response is not None and response.status == 403
                assert "CSRF" in await page.locator("main").inner_text()
                assert (await policy_status(kube))["keeps"] == before
            finally:
                await runner.cleanup()

            # a user named like HTML sees the name as text: no element made of it, nothing ran
            await ctx.clear_cookies()
            await log_in(page, hub.public_url, XSS)
            signed_in = await page.locator("nav strong").inner_text()
            assert signed_in == XSS
            assert await page.locator("img").count() == 0
            assert "Your default server" in await page.locator("main").inner_text()
            assert dialogs == []


def server_section(page, title: str):
    """The section of the server whose heading is ``title``."""
    return page.locator("section", has=page.get_by_role("heading", name=title))


async def log_in(page, public_url: str, user: str) -> None:
    """Open the page and log in with the Hub's own form; back on the page."""
    await page.goto(public_url + PREFIX)
    assert "/hub/login" in page.url
    await page.fill("input[name=username]", user)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("input[type=submit], button[type=submit]")
    await page.wait_for_url(f"**{PREFIX}")
