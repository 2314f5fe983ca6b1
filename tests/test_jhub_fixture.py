"""The real-JupyterHub harness (tests/support/jhub.py) works, quickly."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from tests.support.jhub import (
    FULL_SCOPES,
    MINIMAL_SCOPES,
    Hub,
    HubAPIError,
    isoformat,
    process_alive,
    start_hub,
)

pytestmark = pytest.mark.hub

NAMES = ["ann@example.org", "bob.o'neil", "a b"]
CULLER_SERVER_KEYS = {"last_activity", "started", "pending", "ready", "user_options"}


async def test_three_servers_ready_and_visible_with_minimal_scopes(hub: Hub) -> None:
    await hub.create_users(NAMES)
    await hub.spawn("ann@example.org")
    await hub.spawn("bob.o'neil", "lab")
    await hub.spawn("a b", user_options={"profile": "gpu"})

    assert await hub.running_servers() == {
        ("ann@example.org", ""),
        ("bob.o'neil", "lab"),
        ("a b", ""),
    }
    assert (await hub.get_user("a b"))["servers"][""]["user_options"] == {"profile": "gpu"}

    token = await hub.token(MINIMAL_SCOPES)
    users = {u["name"]: u for u in await hub.list_users("ready", token=token)}
    assert set(users) == set(NAMES)
    for user in users.values():
        assert user["last_activity"]
        assert "groups" not in user  # needs read:users:groups
        for server in user["servers"].values():
            assert server.keys() >= CULLER_SERVER_KEYS
            assert server["ready"] is True
            assert server["pending"] is None
            assert "state" not in server  # needs admin:server_state
    assert users["a b"]["servers"][""]["user_options"] == {"profile": "gpu"}


async def test_scopes_are_enforced(clean_hub: Hub) -> None:
    hub = clean_hub
    await hub.create_users(["ann"])
    await hub.create_group("team", ["ann"])
    await hub.spawn("ann")

    no_list = await hub.token(["read:users:activity", "read:servers", "delete:servers"])
    resp = await hub.request("GET", "/users", token=no_list, expected=(403,))
    assert "list:users" in resp.text

    full = await hub.token(FULL_SCOPES)
    (ann,) = await hub.list_users("ready", token=full)
    assert ann["groups"] == ["team"]

    body = {"user": "ann", "last_activity": None}
    for token in (await hub.token(MINIMAL_SCOPES), full):  # full lacks admin:servers
        await hub.request("POST", "/_harness/times", token=token, json_body=body, expected=(403,))
    await hub.request("POST", "/_harness/times", json_body=body)


async def test_user_names_and_server_names(clean_hub: Hub) -> None:
    hub = clean_hub
    assert await hub.list_users() == [await hub.get_user(hub.admin_user)]  # reset worked
    created = await hub.create_users(["Ann@Example.ORG", "a b", "bob.o'neil"])
    assert created == ["ann@example.org", "a b", "bob.o'neil"]  # lowercased
    for bad in (" lead", "trail ", "..", "x/y"):
        with pytest.raises(HubAPIError) as info:
            await hub.create_users([bad], exist_ok=False)
        assert info.value.status_code == 400
    with pytest.raises(HubAPIError) as info:
        await hub.spawn("a b", "My_Server")  # JupyterHub 6: server names are safe slugs
    assert info.value.status_code == 400


async def test_backdate_and_report_activity(hub: Hub) -> None:
    await hub.create_users(["ann", "bob"])
    await hub.spawn_many([("ann", ""), ("bob", "lab")])
    t0 = datetime(2020, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)

    stored = await hub.set_times(
        "ann", last_activity=t0, started=t0 - timedelta(hours=1), user_last_activity=t0
    )
    assert stored["last_activity"] == "2020-01-02T03:04:05.123456Z"
    ann = await hub.get_user("ann")
    assert ann["last_activity"] == "2020-01-02T03:04:05.123456Z"
    assert ann["servers"][""]["last_activity"] == "2020-01-02T03:04:05.123456Z"
    assert ann["servers"][""]["started"] == "2020-01-02T02:04:05.123456Z"

    await hub.set_times("ann", last_activity=None)
    ann = await hub.get_user("ann")
    assert ann["servers"][""]["last_activity"] is None
    assert ann["servers"][""]["started"] == "2020-01-02T02:04:05.123456Z"  # untouched

    await hub.set_times_bulk(
        [
            {"user": "ann", "server": "", "last_activity": t0},
            {"user": "bob", "server": "lab", "last_activity": "2021-06-01T00:00:00Z"},
            {"user": "bob", "user_last_activity": None},
        ]
    )
    bob = await hub.get_user("bob")
    assert bob["servers"]["lab"]["last_activity"] == "2021-06-01T00:00:00Z"
    assert bob["last_activity"] is None
    await hub.set_times("bob", user_last_activity="2022-01-01T12:00:00+02:00")
    assert (await hub.get_user("bob"))["last_activity"] == "2022-01-01T10:00:00Z"

    # The real activity API only moves forward.
    await hub.post_activity("bob", "lab", t0)
    assert (await hub.get_user("bob"))["servers"]["lab"]["last_activity"] == (
        "2021-06-01T00:00:00Z"
    )
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    await hub.post_activity("bob", "lab", now)
    bob = await hub.get_user("bob")
    assert bob["servers"]["lab"]["last_activity"] == isoformat(now)
    assert bob["last_activity"] == isoformat(now)


@pytest.mark.hub(slow_spawn_timeout=0.2, slow_stop_timeout=0.2)
async def test_pending_stop_and_pending_spawn(hub: Hub) -> None:
    await hub.create_users(["ann", "bob"])
    await hub.spawn("ann", user_options={"stop_delay": 600})
    await hub.spawn("bob", "lab")
    assert await hub.spawn("bob", "slow", {"start_delay": 600}, wait=False) == 202
    assert await hub.stop("ann", wait=False) == 202

    ann = (await hub.get_user("ann"))["servers"][""]
    assert (ann["pending"], ann["ready"]) == ("stop", False)
    slow = (await hub.get_user("bob"))["servers"]["slow"]
    assert (slow["pending"], slow["ready"]) == ("spawn", False)
    assert await hub.running_servers() == {("bob", "lab")}
    # ?state=ready lists users with *any* ready server, with all their active servers:
    # ann (only a stopping server) is not listed, bob's pending server is.
    ready_users = {u["name"]: u for u in await hub.list_users("ready")}
    assert set(ready_users) == {"bob"}
    assert set(ready_users["bob"]["servers"]) == {"lab", "slow"}

    await hub.release_delays()
    await hub.wait_stopped("ann")
    await hub.wait_ready("bob", "slow")
    assert await hub.running_servers() == {("bob", "lab"), ("bob", "slow")}


async def test_300_spawns(hub: Hub, record_property: pytest.RecordProperty) -> None:
    users = [f"user-{i:03d}" for i in range(150)]
    specs = [(u, "") for u in users] + [(u, f"named-{i % 3}") for i, u in enumerate(users)]
    await hub.create_users(users)
    started = time.monotonic()
    await hub.spawn_many(specs, concurrency=32)
    elapsed = time.monotonic() - started
    record_property("spawn_300_seconds", round(elapsed, 2))
    print(f"\n300 spawns: {elapsed:.2f}s")
    assert await hub.running_servers() == set(specs)
    assert elapsed < 120


@pytest.mark.hub(spawner="local")
async def test_real_singleuser_server(hub: Hub) -> None:
    await hub.create_users(["lou"])
    await hub.spawn("lou", timeout=120)
    model = (await hub.get_user("lou"))["servers"][""]
    assert model["ready"] is True
    pid = model["state"]["pid"]
    assert process_alive(pid)

    async with httpx.AsyncClient(timeout=30) as client:
        resp = await client.get(
            f"{hub.public_url}/user/lou/api",
            headers={"Authorization": f"token {hub.admin_token}"},
        )
    assert resp.status_code == 200
    assert "version" in resp.json()  # jupyter_server's /api, through the proxy

    await hub.stop("lou")
    assert await hub.running_servers() == set()
    await hub.poll_until(lambda: not process_alive(pid), "the single-user server to exit", 10)


async def test_shutdown_leaves_no_process_behind(tmp_path) -> None:
    async with start_hub(tmp_path, stop_delay=600, slow_stop_timeout=0.1) as hub:
        await hub.create_users(["ann"])
        await hub.spawn("ann")
        assert await hub.stop("ann", wait=False) == 202  # left pending at shutdown
        pids = [hub.pid, hub.proxy_pid]
        assert all(pid and process_alive(pid) for pid in pids)
    assert not any(process_alive(pid) for pid in pids)
    assert hub.orphans_killed == []  # JupyterHub stopped its proxy itself
    assert "Cleaning up proxy" in hub.log_path.read_text()
