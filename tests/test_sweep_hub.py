"""The sweep engine against a real JupyterHub: what jupyterhub-idle-culler does, and more.

Every test starts a real Hub (tests/support/jhub.py) with configurable-http-proxy; servers
are made idle by backdating last_activity through the test Hub's extension.
"""

from __future__ import annotations

import pytest

from hubcull.engine.hub.client import HubClient
from tests.support.jhub import FULL_SCOPES, MINIMAL_SCOPES, Hub
from tests.support.scenario import ago, culled_labels, populate, sweep

pytestmark = pytest.mark.hub

HOUR = 3600


async def test_idle_servers_are_culled_and_active_ones_kept(hub: Hub) -> None:
    await populate(
        hub,
        {
            ("idle1", ""): 2 * HOUR,
            ("idle2", ""): HOUR + 60,
            ("active", ""): 60,
            ("fresh", ""): None,
        },
    )
    token = await hub.token(MINIMAL_SCOPES)
    outcome = await sweep(hub, token, idleTimeout="1h")
    assert culled_labels(outcome) == {"idle1", "idle2"}
    assert await hub.running_servers() == {("active", ""), ("fresh", "")}
    status = outcome.status
    assert status["serversRunning"] == 4
    assert status["serversIdle"] == 2
    assert status["culledLastSweep"] == 2 and status["culledTotal"] == 2
    assert status["failedLastSweep"] == 0
    assert status["hubVersion"] == (await hub.request("GET", "/")).json()["version"]
    first = status["recentCulls"][0]
    assert (first["user"], first["server"], first["reason"], first["dryRun"]) == (
        "idle1",
        "",
        "idle",
        False,
    )
    assert 2 * HOUR - 5 <= first["idleSeconds"] <= 2 * HOUR + 60
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "SweepSucceeded")


async def test_started_is_used_when_last_activity_is_null(hub: Hub) -> None:
    await populate(hub, {("nulled", ""): None, ("recent", ""): None})
    await hub.set_times("nulled", "", last_activity=None, started=ago(2 * HOUR))
    await hub.set_times("recent", "", last_activity=None, started=ago(60))
    outcome = await sweep(hub, await hub.token(MINIMAL_SCOPES), idleTimeout="1h")
    assert culled_labels(outcome) == {"nulled"}


async def test_max_age_culls_old_servers_even_when_active(hub: Hub) -> None:
    await populate(
        hub,
        {("old", ""): 30, ("young", ""): 30},
        started={("old", ""): 3 * 86400, ("young", ""): HOUR},
    )
    outcome = await sweep(hub, await hub.token(MINIMAL_SCOPES), idleTimeout="1h", maxAge="2d")
    assert outcome.result is not None
    assert {(c.label, c.reason) for c in outcome.result.culled} == {("old", "maxAge")}
    assert await hub.running_servers() == {("young", "")}


async def test_default_and_named_server_switches(hub: Hub) -> None:
    idle = {("ann", ""): 2 * HOUR, ("ann", "gpu"): 2 * HOUR, ("bob", "big"): 2 * HOUR}
    await populate(hub, idle)
    token = await hub.token(MINIMAL_SCOPES)
    outcome = await sweep(hub, token, servers={"default": False})
    assert culled_labels(outcome) == {"ann/gpu", "bob/big"}
    outcome = await sweep(hub, token, servers={"named": False})
    assert culled_labels(outcome) == {"ann"}
    assert await hub.running_servers() == set()
    # stopped named servers are kept without removeNamed
    models = (await hub.get_user("ann"))["servers"]
    assert "gpu" not in models  # not active; still known to the Hub:
    stopped = await hub.request("GET", "/users/ann", params={"include_stopped_servers": "1"})
    assert "gpu" in stopped.json()["servers"]


async def test_remove_named_deletes_named_servers_stopped_or_running(hub: Hub) -> None:
    await populate(
        hub,
        {
            ("ann", ""): 2 * HOUR,
            ("ann", "gpu"): 2 * HOUR,
            ("ann", "old"): 2 * HOUR,
            ("ann", "keep"): 60,
        },
    )
    token = await hub.token(MINIMAL_SCOPES)
    await hub.stop("ann", "old")  # stopped earlier, idle past the timeout
    await hub.set_times("ann", "old", last_activity=ago(2 * HOUR))
    outcome = await sweep(hub, token, servers={"removeNamed": True})
    assert culled_labels(outcome) == {"ann", "ann/gpu"}
    assert outcome.result is not None
    assert {c.label for c in outcome.result.removals if c.error is None} == {"ann/old"}
    known = await hub.request("GET", "/users/ann", params={"include_stopped_servers": "1"})
    assert set(known.json()["servers"]) == {"", "keep"}


@pytest.mark.hub(extra_config="c.Authenticator.admin_users.add('boss')")
async def test_user_culling_deletes_idle_users_but_not_admins(hub: Hub) -> None:
    await hub.create_users(["gone", "sleepy-admin"])
    assert (await hub.get_user("boss"))["admin"] is True
    await populate(hub, {("withserver", ""): 2 * HOUR, ("busy", ""): 60})
    for name in ("gone", "boss"):
        await hub.set_times(name, user_last_activity=ago(3 * HOUR))
    await hub.set_times("sleepy-admin", user_last_activity=ago(60))
    token = await hub.token(FULL_SCOPES)
    outcome = await sweep(hub, token, users={"cull": True})
    assert outcome.result is not None, outcome.message
    assert {u.user for u in outcome.result.users_culled} == {"gone", "withserver"}
    remaining = {u["name"] for u in await hub.list_users()}
    assert {"boss", "busy", "sleepy-admin"} <= remaining
    assert not {"gone", "withserver"} & remaining
    assert outcome.status["usersCulledTotal"] == 2
    outcome = await sweep(hub, token, users={"cull": True, "includeAdmins": True})
    assert {u.user for u in outcome.result.users_culled} == {"boss"}  # type: ignore[union-attr]


async def test_user_culling_without_admin_scope_is_forbidden_and_names_it(hub: Hub) -> None:
    await hub.create_users(["gone"])
    await hub.set_times("gone", user_last_activity=ago(3 * HOUR))
    outcome = await sweep(hub, await hub.token(MINIMAL_SCOPES), users={"cull": True})
    assert outcome.result is None
    assert outcome.reason == "Forbidden" and "admin:users" in (outcome.message or "")
    assert "gone" in {u["name"] for u in await hub.list_users()}


@pytest.mark.hub(stop_delay=5.0)
async def test_pending_servers_are_skipped_and_a_202_counts_as_culled(hub: Hub) -> None:
    await populate(hub, {("slow", ""): 2 * HOUR, ("slow", "stopping"): 2 * HOUR})
    token = await hub.token(MINIMAL_SCOPES)
    # the Hub now reports pending "stop" (listed because the user has a ready server too)
    assert await hub.stop("slow", "stopping", wait=False) == 202
    outcome = await sweep(hub, token)
    assert outcome.result is not None
    assert outcome.result.skipped_pending == 1
    [cull] = outcome.result.culled
    assert (cull.label, cull.outcome) == ("slow", "stopping")  # 202: the Hub finishes it
    assert outcome.status["culledLastSweep"] == 1
    await hub.release_delays()


async def test_a_server_gone_already_is_not_an_error(hub: Hub) -> None:
    await hub.create_users(["ann"])
    async with HubClient(hub.api_url, await hub.token(MINIMAL_SCOPES)) as client:
        assert await client.stop_server("ann", "nothing") == "gone"
        assert await client.stop_server("nobody", "") == "gone"


async def test_user_names_with_special_characters(hub: Hub) -> None:
    names = ["ann@example.org", "bob.o'neil", "carl+test", "dé", "e%f", "g h"]
    created = await hub.create_users(names)
    await populate(
        hub, {(n, ""): 2 * HOUR for n in created} | {(n, "lab"): 2 * HOUR for n in created}
    )
    outcome = await sweep(hub, await hub.token(MINIMAL_SCOPES), servers={"removeNamed": True})
    assert culled_labels(outcome) == set(created) | {f"{n}/lab" for n in created}
    assert outcome.status["failedLastSweep"] == 0
    assert await hub.running_servers() == set()


async def test_wrong_token_is_unauthorized(hub: Hub) -> None:
    await populate(hub, {("ann", ""): 2 * HOUR})
    outcome = await sweep(hub, "not-a-token")
    assert outcome.result is None and outcome.reason == "Unauthorized"
    assert "not-a-token" not in str(outcome.status)
    assert await hub.running_servers() == {("ann", "")}


async def test_missing_scope_is_forbidden_and_named(hub: Hub) -> None:
    await populate(hub, {("ann", ""): 2 * HOUR})
    token = await hub.token(["read:users:activity", "read:servers", "delete:servers"])
    outcome = await sweep(hub, token)
    assert outcome.reason == "Forbidden"
    assert "list:users" in (outcome.message or "")
    token = await hub.token(["list:users", "read:users:activity", "read:servers"])
    outcome = await sweep(hub, token)
    assert outcome.reason == "Forbidden" and "delete:servers" in (outcome.message or "")
    outcome = await sweep(hub, token, dryRun=True)  # a dry run needs no delete scope
    assert culled_labels(outcome) == {"ann"}
    token = await hub.token(MINIMAL_SCOPES)
    outcome = await sweep(hub, token, selector={"groups": ["class"]})
    assert outcome.reason == "Forbidden" and "read:users:groups" in (outcome.message or "")
    assert await hub.running_servers() == {("ann", "")}


async def test_hub_down_is_unreachable_and_culls_nothing(hub: Hub) -> None:
    token = await hub.token(MINIMAL_SCOPES)
    url = hub.api_url
    await hub.shutdown()
    from hubcull.engine.sweep.runner import sweep_policy
    from hubcull.engine.sweep.sources import SweepSources
    from tests.support.scenario import policy_for

    outcome = await sweep_policy(policy_for(url, hub={"requestTimeout": "2s"}), SweepSources(token))
    assert outcome.result is None and outcome.reason == "HubUnreachable"
    assert "check spec.hub.url" in (outcome.message or "")


async def test_pagination_300_idle_of_600_running_all_culled_in_one_sweep(hub: Hub) -> None:
    servers = {(f"user{i:03d}", ""): (2 * HOUR if i % 2 else 60) for i in range(600)}
    await populate(hub, servers, concurrency=64)
    outcome = await sweep(hub, await hub.token(MINIMAL_SCOPES), pageSize=50, concurrency=20)
    expected = {u for (u, _), idle in servers.items() if idle > HOUR}
    assert len(expected) == 300
    assert culled_labels(outcome) == expected
    assert outcome.status["serversRunning"] == 600
    assert {u for u, _ in await hub.running_servers()} == {u for (u, _) in servers} - expected


async def test_a_kept_connection_reads_version_and_scopes_once_and_again_after_a_failure(
    hub: Hub,
) -> None:
    from hubcull.engine.sweep.connection import HubConnection
    from hubcull.engine.sweep.runner import sweep_policy
    from hubcull.engine.sweep.sources import SweepSources
    from tests.support.scenario import policy_for

    await populate(hub, {("ann", ""): 60, ("bob", ""): 60})
    token = await hub.token(MINIMAL_SCOPES)
    responses: list[str] = []
    connection = HubConnection(on_response=responses.append)
    policy = policy_for(hub, idleTimeout="1h")

    async def sweep_counting(policy: object = policy, token: str = token) -> tuple[int, object]:
        before = len(responses)
        outcome = await sweep_policy(policy, SweepSources(token, connection=connection))  # type: ignore[arg-type]
        return len(responses) - before, outcome

    try:
        count, outcome = await sweep_counting()
        assert count == 3 and culled_labels(outcome) == set()  # version, scopes, one page
        await hub.set_times("ann", "", last_activity=ago(2 * HOUR))
        count, outcome = await sweep_counting()
        assert count == 2 and culled_labels(outcome) == {"ann"}  # one page, one stop
        needs_groups = policy_for(hub, idleTimeout="1h", selector={"groups": ["class"]})
        count, outcome = await sweep_counting(needs_groups)
        # the kept version and scopes, then a listing that shows the groups are hidden
        assert outcome.reason == "Forbidden" and count == 1
        count, outcome = await sweep_counting()
        assert count == 3 and outcome.result is not None  # asked again after the failure
        other = await hub.token(MINIMAL_SCOPES)
        count, outcome = await sweep_counting(token=other)
        assert count == 3 and outcome.result is not None  # a new token: a new client
    finally:
        await connection.aclose()
    assert await hub.running_servers() == {("bob", "")}
