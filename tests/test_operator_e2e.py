"""The operator end to end: the real kopf operator (kmock-based API emulator) and a real Hub.

A user's view: apply a Secret and a CullPolicy, see idle servers stop, and read the status,
conditions and events that `kubectl get/describe cullpolicies` would show.
"""

from __future__ import annotations

import re

import httpx
import pytest
import trustme

from tests.support.jhub import FULL_SCOPES, MINIMAL_SCOPES, Hub
from tests.support.kube import Kube
from tests.support.operator_env import (
    CULLPOLICIES,
    NS,
    condition,
    cullpolicy,
    hubcull_operator,
    policy_status,
    secret,
    wait_status,
)
from tests.support.scenario import ago, populate
from tests.support.tls import tls_terminator

pytestmark = [pytest.mark.k8s, pytest.mark.hub]

HOUR = 3600
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


async def test_policy_culls_idle_servers_and_reports_everything(kube: Kube, hub: Hub) -> None:
    await populate(
        # 2h5m and 3h5m, a few seconds more when the sweep reads them: rounded to the minute
        hub,
        {("idle1", ""): 2 * HOUR + 300, ("idle2", "gpu"): 3 * HOUR + 300, ("active", ""): 60},
    )
    async with hubcull_operator(kube):
        await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
        await kube.create(cullpolicy(hub, idleTimeout="1h", every="10m"))
        status = await wait_status(kube, lambda s: condition(s, "Ready").get("status") == "True")

        async def culled_events() -> list[str]:
            events = await kube.events_for(NS, "default")
            messages = sorted(e["message"] for e in events if e["reason"] == "Culled")
            assert len(messages) == 2, messages
            return messages

        # kopf posts events in the background: wait for them while the operator runs
        messages = await kube.wait_for(culled_events)
    assert messages[0].startswith("stopped idle1 (idle 2h5m)")
    assert messages[1].startswith("stopped idle2/gpu (idle 3h5m)")
    assert await hub.running_servers() == {("active", "")}
    assert status["observedGeneration"] == 1
    assert status["hubVersion"] == (await hub.request("GET", "/")).json()["version"]
    assert RFC3339.match(status["lastSweepTime"])
    assert status["lastSweepDurationSeconds"] >= 0
    assert (status["serversRunning"], status["serversIdle"]) == (3, 2)
    assert (status["culledLastSweep"], status["culledTotal"], status["failedLastSweep"]) == (
        2,
        2,
        0,
    )
    assert status["usersCulledTotal"] == 0
    assert [(c["user"], c["server"], c["reason"], c["dryRun"]) for c in status["recentCulls"]] == [
        ("idle2", "gpu", "idle", False),
        ("idle1", "", "idle", False),
    ]
    ready, throttled = condition(status, "Ready"), condition(status, "Throttled")
    assert ready["reason"] == "SweepSucceeded" and ready["observedGeneration"] == 1
    assert RFC3339.match(ready["lastTransitionTime"]) and ready["message"]
    assert (throttled["status"], throttled["reason"]) == ("False", "WithinLimits")


async def test_spec_edits_take_effect_without_a_restart(kube: Kube, hub: Hub) -> None:
    await populate(hub, {("old", ""): 2 * HOUR, ("mid", ""): 30 * 60, ("new", ""): 60})
    async with hubcull_operator(kube):
        await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
        await kube.create(cullpolicy(hub, idleTimeout="1h", every="10m"))
        first = await wait_status(kube, lambda s: s.get("culledTotal") == 1)
        assert await hub.running_servers() == {("mid", ""), ("new", "")}
        # a shorter timeout: the edit wakes the loop at once (every is still 10m)
        await kube.patch(CULLPOLICIES, NS, "default", {"spec": {"idleTimeout": "20m"}})
        status = await wait_status(kube, lambda s: s.get("culledTotal") == 2)
        assert status["observedGeneration"] == 2
        assert condition(status, "Ready")["observedGeneration"] == 2
        assert await hub.running_servers() == {("new", "")}
        # a shorter interval: sweeps now follow each other every 10s
        await kube.patch(CULLPOLICIES, NS, "default", {"spec": {"every": "10s"}})
        seen = await wait_status(kube, lambda s: s.get("observedGeneration") == 3)
        await hub.set_times("new", last_activity=ago(HOUR))
        await wait_status(kube, lambda s: s.get("culledTotal") == 3, timeout=25)
        assert seen["lastSweepTime"] >= first["lastSweepTime"]
        assert await hub.running_servers() == set()


async def test_token_rotation_and_bad_credentials(kube: Kube, hub: Hub) -> None:
    await populate(hub, {("idle", ""): 2 * HOUR})
    async with hubcull_operator(kube):
        await kube.create(cullpolicy(hub, every="10s"))
        status = await wait_status(
            kube, lambda s: condition(s, "Ready").get("reason") == "TokenSecretMissing"
        )
        assert (
            "Secret hub with key hub.services.hubcull.apiToken"
            in condition(status, "Ready")["message"]
        )
        await kube.create(secret("wrong-token"))
        status = await wait_status(
            kube, lambda s: condition(s, "Ready").get("reason") == "Unauthorized"
        )
        assert condition(status, "Ready")["status"] == "False"
        assert await hub.running_servers() == {("idle", "")}
        token = await hub.token(["read:servers", "delete:servers", "read:users:activity"])
        await kube.patch("v1/secrets", NS, "hub", {"data": secret(token)["data"]})
        status = await wait_status(
            kube, lambda s: condition(s, "Ready").get("reason") == "Forbidden"
        )
        assert "list:users" in condition(status, "Ready")["message"]
        good = await hub.token(MINIMAL_SCOPES)
        await kube.patch("v1/secrets", NS, "hub", {"data": secret(good)["data"]})
        await wait_status(kube, lambda s: s.get("culledTotal") == 1)
        events = await kube.events_for(NS, "default")
        failed = [e for e in events if e["reason"] == "SweepFailed"]
        assert {e["type"] for e in failed} == {"Warning"}
        assert any("Unauthorized" in e["message"] for e in failed)
        for text in (good, token, "wrong-token"):
            assert all(text not in str(e) for e in events)
            assert text not in str(await policy_status(kube))


async def test_suspend_stops_sweeping_until_resumed(kube: Kube, hub: Hub) -> None:
    await populate(hub, {("idle", ""): 2 * HOUR})
    async with hubcull_operator(kube):
        await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
        await kube.create(cullpolicy(hub, every="10s", suspend=True))
        status = await wait_status(
            kube, lambda s: condition(s, "Ready").get("reason") == "Suspended"
        )
        assert condition(status, "Ready")["status"] == "False"
        assert "spec.suspend" in condition(status, "Ready")["message"]
        assert await hub.running_servers() == {("idle", "")}
        await kube.patch(CULLPOLICIES, NS, "default", {"spec": {"suspend": False}})
        await wait_status(kube, lambda s: s.get("culledTotal") == 1)


async def test_deleting_a_policy_stops_its_loop_at_once(kube: Kube, hub: Hub) -> None:
    async with hubcull_operator(kube) as (_, memo):
        await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
        await kube.create(cullpolicy(hub, every="10s"))
        await wait_status(kube, lambda s: condition(s, "Ready").get("status") == "True")
        assert ("jhub", "default") in memo["controllers"]
        await kube.delete(CULLPOLICIES, NS, "default")
        await kube.wait_for(lambda: ("jhub", "default") not in memo["controllers"])

        async def gone() -> bool:
            return await kube.get(CULLPOLICIES, NS, "default") is None

        await kube.wait_for(gone)


async def test_failures_are_reported_and_other_policies_keep_working(kube: Kube, hub: Hub) -> None:
    await populate(hub, {("idle", ""): 2 * HOUR})
    async with hubcull_operator(kube):
        await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
        await kube.create(
            cullpolicy(
                "http://127.0.0.1:9/hub/api", name="down", every="10s", hub={"requestTimeout": "2s"}
            )
        )
        await kube.create(
            cullpolicy(hub, name="groups", every="10s", selector={"groups": ["research"]})
        )
        await kube.create(cullpolicy(hub, name="invalid", every="0d5s"))
        await kube.create(cullpolicy(hub, name="good", every="10s"))
        await wait_status(kube, lambda s: s.get("culledTotal") == 1, name="good")
        expected = {"down": "HubUnreachable", "groups": "Forbidden", "invalid": "InvalidSpec"}
        for name, reason in expected.items():
            status = await wait_status(
                kube, lambda s, r=reason: condition(s, "Ready").get("reason") == r, name=name
            )
            message = condition(status, "Ready")["message"]
            assert condition(status, "Ready")["status"] == "False" and message.endswith(".")
        assert (
            "read:users:groups"
            in condition(await policy_status(kube, "groups"), "Ready")["message"]
        )
        assert "spec.every" in condition(await policy_status(kube, "invalid"), "Ready")["message"]


async def test_safety_limit_sets_throttled_and_big_sweeps_summarise_events(
    kube: Kube, hub: Hub
) -> None:
    await populate(hub, {(f"u{i:02d}", ""): 2 * HOUR + i * 60 for i in range(15)})
    async with hubcull_operator(kube):
        await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
        await kube.create(cullpolicy(hub, name="brake", safety={"maxCullsPerSweep": 3}))
        status = await wait_status(kube, lambda s: s.get("culledTotal") == 3, name="brake")
        throttled = condition(status, "Throttled")
        assert (throttled["status"], throttled["reason"]) == ("True", "SafetyLimit")
        assert "Held back 12 of 15" in throttled["message"]
        # the longest-idle went first
        assert {c["user"] for c in status["recentCulls"]} == {"u14", "u13", "u12"}
        await kube.wait_for(lambda: _has_event(kube, "brake", "Throttled", "Warning"))
        await kube.create(cullpolicy(hub, name="all"))
        await wait_status(kube, lambda s: s.get("culledTotal") == 12, name="all")

        async def summary() -> list[str]:
            culled = [
                e["message"] for e in await kube.events_for(NS, "all") if e["reason"] == "Culled"
            ]
            assert len(culled) == 11, culled
            return culled

        culled = await kube.wait_for(summary)
        assert any("2 more servers" in m for m in culled)


async def _has_event(kube: Kube, name: str, reason: str, type_: str) -> bool:
    return any(
        e["reason"] == reason and e["type"] == type_ for e in await kube.events_for(NS, name)
    )


async def test_user_culling_and_metrics_endpoint(
    kube: Kube, hub: Hub, unused_tcp_port: int
) -> None:
    await populate(hub, {("idle", ""): 2 * HOUR})
    await hub.create_users(["ghost"])
    await hub.set_times("ghost", user_last_activity=ago(3 * HOUR))
    async with hubcull_operator(kube) as (_, memo):
        memo["metrics"].serve(unused_tcp_port, addr="127.0.0.1")
        await kube.create(secret(await hub.token(FULL_SCOPES)))
        await kube.create(cullpolicy(hub, users={"cull": True}))
        status = await wait_status(kube, lambda s: s.get("usersCulledTotal") == 2)
        assert status["culledTotal"] == 1
        await kube.wait_for(lambda: _has_event(kube, "default", "UserCulled", "Normal"))
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{unused_tcp_port}/metrics")).text
    labels = 'namespace="jhub",policy="default"'
    assert f'hubcull_servers_culled_total{{{labels},reason="idle"}} 1.0' in text
    assert f"hubcull_users_culled_total{{{labels}}} 2.0" in text
    assert f'hubcull_sweeps_total{{{labels},result="success"}}' in text
    assert f"hubcull_sweep_duration_seconds_count{{{labels}}}" in text
    assert f"hubcull_servers_running{{{labels}}} 1.0" in text
    assert f"hubcull_servers_idle{{{labels}}} 1.0" in text
    assert f'hubcull_hub_requests_total{{code="200",{labels}}}' in text or (
        f'hubcull_hub_requests_total{{{labels},code="200"}}' in text
    )


async def test_https_hub_with_the_ca_from_a_secret(kube: Kube, hub: Hub) -> None:
    await populate(hub, {("idle", ""): 2 * HOUR})
    ca = trustme.CA()
    async with (
        tls_terminator(hub.api_url, ca.issue_cert("127.0.0.1")) as port,
        hubcull_operator(kube),
    ):
        await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
        https = f"https://127.0.0.1:{port}/hub/api"
        await kube.create(
            cullpolicy(https, every="10s", hub={"caSecretRef": {"name": "hub-ca", "key": "ca.crt"}})
        )
        status = await wait_status(
            kube, lambda s: condition(s, "Ready").get("reason") == "TokenSecretMissing"
        )
        assert "CA Secret hub-ca" in condition(status, "Ready")["message"]
        await kube.create(secret(ca.cert_pem.bytes().decode(), name="hub-ca", key="ca.crt"))
        await wait_status(kube, lambda s: s.get("culledTotal") == 1)
    assert await hub.running_servers() == set()


async def test_a_rotated_token_takes_over_without_a_failed_sweep(kube: Kube, hub: Hub) -> None:
    """The token is kept between sweeps; when the Hub refuses it (revoked after rotation),
    the Secret is read again and the same sweep goes on with the new token."""
    await populate(hub, {("first", ""): 2 * HOUR})
    old = await hub.token(MINIMAL_SCOPES, note="rotate-me")
    async with hubcull_operator(kube):
        await kube.create(secret(old))
        await kube.create(cullpolicy(hub, every="10s"))
        await wait_status(kube, lambda s: s.get("culledTotal") == 1)
        new = await hub.token(MINIMAL_SCOPES)
        await kube.patch("v1/secrets", NS, "hub", {"data": secret(new)["data"]})
        path = f"/users/{hub.admin_user}/tokens"
        tokens = (await hub.request("GET", path)).json()["api_tokens"]
        (old_id,) = [t["id"] for t in tokens if t["note"] == "rotate-me"]
        await hub.request("DELETE", f"{path}/{old_id}", expected=(204,))
        await populate(hub, {("second", ""): 2 * HOUR})
        status = await wait_status(kube, lambda s: s.get("culledTotal") == 2)
        assert condition(status, "Ready")["status"] == "True"
        events = await kube.events_for(NS, "default")
        assert [e for e in events if e["reason"] == "SweepFailed"] == []
    assert await hub.running_servers() == set()
