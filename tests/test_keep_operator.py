"""spec.keep end to end: a real Hub with hubcull registered as its service, the real kopf
operator (on the Kubernetes emulator) serving the page, users logging in through the Hub's
real OAuth flow. A kept server survives sweeps, the keep outlives an operator restart, ends
when its user ends it, and then the server is stopped."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest

from tests.support.faultproxy import Fault, Seen, fault_proxy
from tests.support.jhub import Hub, start_hub
from tests.support.keep_env import (
    PREFIX,
    form_value,
    login,
    new_service,
    operator_with_service,
    swept_after,
    user_token,
)
from tests.support.kube import Kube
from tests.support.operator_env import NS, cullpolicy, policy_status, secret
from tests.support.scenario import ago

pytestmark = [pytest.mark.k8s, pytest.mark.hub]


async def api(hub: Hub, method: str, path: str, token: str, **kwargs) -> httpx.Response:
    async with httpx.AsyncClient(base_url=hub.public_url, timeout=30) as client:
        return await client.request(
            method, PREFIX + path, headers={"Authorization": f"token {token}"}, **kwargs
        )


async def test_a_user_keeps_a_server_through_the_page_and_it_survives_until_the_keep_ends(
    kube: Kube, tmp_path: Path
) -> None:
    service = new_service()
    async with start_hub(tmp_path / "hub", extra_config=service.hub_config()) as hub:
        await hub.create_users(["alice", "bob"])
        for user, server in (("alice", ""), ("alice", "exp"), ("bob", "")):
            await hub.spawn(user, server)
        policy = cullpolicy(hub, idleTimeout="1h", every="10s", keep={"max": "1h", "perDay": 4})
        async with operator_with_service(kube, hub, service) as memo:
            await kube.create(secret(service.token))
            await kube.create(policy)
            first = await swept_after(kube, None)
            assert first["culledTotal"] == 0

            # alice logs in through the Hub's OAuth flow and sees her servers
            browser, page = await login(hub, "alice")
            try:
                assert "Your running servers" in page.text
                assert "Your default server" in page.text and "Server exp" in page.text
                assert f"{NS}/default" in page.text and "Hub activity" in page.text
                csrf = form_value(page.text, "_xsrf")
                cookie = next(c for c in browser.cookies.jar if c.name == "hubcull-session")
                assert cookie.has_nonstandard_attr("HttpOnly")
                assert cookie.path == PREFIX

                # without the page's CSRF token the form does nothing
                forged = await browser.post(f"{PREFIX}servers/~/keep", data={"hours": "1"})
                assert forged.status_code == 403
                assert not (await policy_status(kube)).get("keeps")

                # the JSON API with the login cookie: reading works, a POST needs the token
                mine = await browser.get(f"{PREFIX}api/servers")
                assert mine.status_code == 200 and mine.json()["user"] == "alice"
                no_header = await browser.post(f"{PREFIX}api/servers/~/keep", json={"hours": 1})
                assert no_header.status_code == 403
                assert not (await policy_status(kube)).get("keeps")

                kept = await browser.post(
                    f"{PREFIX}servers/~/keep", data={"hours": "1", "_xsrf": csrf}
                )
                assert kept.status_code == 200 and kept.url.path == PREFIX
                assert "Your default server is kept until" in kept.text
                status = await policy_status(kube)
                assert [(k["user"], k["server"]) for k in status["keeps"]] == [("alice", "")]
                assert status["keepsToday"]["users"] == {"alice": 1}

                # both default servers go idle for two hours: only bob's is stopped
                for user in ("alice", "bob"):
                    await hub.set_times(user, "", last_activity=ago(7200))
                status = await swept_after(kube, status.get("lastSweepTime"))
                if status["culledTotal"] == 0:  # that sweep started before the backdating
                    status = await swept_after(kube, status["lastSweepTime"])
                assert await hub.running_servers() == {("alice", ""), ("alice", "exp")}
                assert status["serversProtected"] == 1
                assert [c["user"] for c in status["recentCulls"]] == ["bob"]

                # JSON: the same, for her own token; another user's token sees 404
                alice_token = await user_token(hub, "alice")
                listing = await api(hub, "GET", "api/servers", alice_token)
                assert listing.status_code == 200
                body = listing.json()
                assert body["user"] == "alice"
                default = next(s for s in body["servers"] if s["server"] == "")
                assert default["keptUntil"] is not None
                (judged,) = default["policies"]
                assert judged["protectedBy"].startswith("kept until")
                assert judged["idleSeconds"] >= 7000

                bob_token = await user_token(hub, "bob")
                one_hour = {"json": {"hours": 1}}
                theirs = await api(hub, "POST", "api/servers/exp/keep", bob_token, **one_hour)
                missing = await api(hub, "POST", "api/servers/nope/keep", bob_token, **one_hour)
                assert theirs.status_code == missing.status_code == 404
                assert theirs.json() == missing.json()

                # over max: refused in one sentence, nothing recorded
                over = await api(
                    hub, "POST", "api/servers/exp/keep", alice_token, json={"hours": 2}
                )
                assert over.status_code == 400
                assert over.json()["error"].startswith("A keep may last at most 1h from now")
                negative = await api(
                    hub, "POST", "api/servers/exp/keep", alice_token, json={"hours": -1}
                )
                assert negative.status_code == 400
                # perDay 4: three more keeps of exp fit, the next is 429
                for _ in range(3):
                    ok = await api(
                        hub, "POST", "api/servers/exp/keep", alice_token, json={"hours": 0.5}
                    )
                    assert ok.status_code == 200, ok.text
                too_many = await api(
                    hub, "POST", "api/servers/exp/keep", alice_token, json={"hours": 0.5}
                )
                assert too_many.status_code == 429
                assert "4 keeps allowed per day" in too_many.json()["error"]

                events = await kube.events_for(NS, "default")
                assert any(
                    e["reason"] == "Kept" and e["message"].startswith("alice kept until")
                    for e in events
                ), events
                metrics = generate_latest(memo["metrics"].registry).decode()
                labels = f'namespace="{NS}",policy="default"'
                assert f'hubcull_keeps_total{{{labels},result="kept"}} 4.0' in metrics
                assert f'hubcull_keeps_total{{{labels},result="refused"}} 3.0' in metrics
                last = status["lastSweepTime"]
            finally:
                await browser.aclose()

            # the operator restarts: the keep lives in status and still holds
        async with operator_with_service(kube, hub, service):
            status = await swept_after(kube, last)
            status = await swept_after(kube, status["lastSweepTime"])
            assert ("alice", "") in await hub.running_servers()
            assert [k["server"] for k in status["keeps"]] == ["", "exp"]

            # the keep ends (her login cookie still works on the new operator): stopped
            ended = await api(hub, "POST", "api/servers/~/keep", alice_token, json={"hours": 0})
            assert ended.status_code == 200 and ended.json()["until"] is None
            status = await swept_after(kube, status["lastSweepTime"])
            if ("alice", "") in await hub.running_servers():
                status = await swept_after(kube, status["lastSweepTime"])
            assert ("alice", "") not in await hub.running_servers()
            assert [k["server"] for k in status["keeps"]] == ["exp"]


SWEEP_START = r"^GET /hub/api/users\?state=ready&(.*&)?offset=0(&|$)"


async def test_a_keep_made_while_a_sweep_runs_is_not_lost(kube: Kube, tmp_path: Path) -> None:
    """The sweep reads the keeps, then (while it lists the Hub) a user keeps another server;
    what the sweep writes afterwards keeps both."""
    service = new_service()
    async with start_hub(tmp_path / "hub", extra_config=service.hub_config()) as hub:
        await hub.create_users(["alice", "bob"])
        for user in ("alice", "bob"):
            await hub.spawn(user, "")
        async with fault_proxy(hub.public_url) as proxy:
            policy = cullpolicy(proxy.api_url, idleTimeout="1h", every="10s", keep={"max": "1h"})
            async with operator_with_service(kube, hub, service, proxy.api_url):
                await kube.create(secret(service.token))
                await kube.create(policy)
                status = await swept_after(kube, None)
                alice, bob = await user_token(hub, "alice"), await user_token(hub, "bob")
                first = await api(hub, "POST", "api/servers/~/keep", alice, json={"hours": 1})
                assert first.status_code == 200, first.text
                answers: list[int] = []

                async def keep_meanwhile(_: Seen) -> None:
                    during = await api(hub, "POST", "api/servers/~/keep", bob, json={"hours": 1})
                    answers.append(during.status_code)

                (fault,) = proxy.inject(Fault("hook", SWEEP_START, hook=keep_meanwhile, times=1))

                async def swept_through_the_keep() -> dict:
                    assert fault.applied == 1 and answers == [200], answers
                    current = await policy_status(kube)
                    assert current["lastSweepTime"] != status["lastSweepTime"]
                    return current

                await kube.wait_for(swept_through_the_keep, timeout=40)
                after = await swept_after(kube, (await policy_status(kube))["lastSweepTime"])
                assert [k["user"] for k in after["keeps"]] == ["alice", "bob"]
