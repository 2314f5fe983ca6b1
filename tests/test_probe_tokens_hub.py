"""Probe credentials (spec.kernels) against a REAL Hub and REAL single-user servers.

Each probe carries a token owned by the server's user and scoped to that one server, made by
hubcull through ``POST /users/{user}/tokens``; the policy's own token never reaches a server.
The servers' requests are captured by a recording proxy in front of each real server (what a
``jupyter_server_config.py`` logging its request headers would see), and the captured token is
then tried against the Hub and the other servers, as a curious user would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio

from hubcull.engine.hub.client import HubClient
from hubcull.engine.rules.signals import ServerKey
from hubcull.engine.signals.pods import ServerPod
from hubcull.engine.signals.probetokens import PROBE_NOTE, ProbeTokenRefused, ProbeTokens
from hubcull.engine.sweep.connection import HubConnection
from hubcull.engine.sweep.memory import SweepMemory
from hubcull.engine.sweep.runner import SweepOutcome, sweep_policy
from hubcull.engine.sweep.sources import SweepSources
from tests.support.faultproxy import Fault, FaultProxy, Seen, fault_proxy
from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.jupyter import JupyterServer, ServerLocation, parse_time, start_server
from tests.support.scenario import ago, policy_for

pytestmark = pytest.mark.hub

USERS = ("ann", "bob", "cat")
SILENT = "import time; time.sleep(1200)"
HOURS_2 = 7200.0 + 20


class Pods:
    """The engine's PodSource: each user's pod address is a recording proxy in front of that
    user's real server (as a pod IP would be)."""

    def __init__(self, pods: Mapping[ServerKey, ServerPod]) -> None:
        self._pods = dict(pods)

    async def server_pods(self) -> Mapping[ServerKey, ServerPod]:
        return self._pods


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def locations(jupyter_hub: Hub) -> dict[str, ServerLocation]:
    await jupyter_hub.create_users(list(USERS))
    started = await asyncio.gather(*(start_server(jupyter_hub, user) for user in USERS))
    return {location.user: location for location in started}


@pytest_asyncio.fixture
async def servers(
    jupyter_hub: Hub, locations: dict[str, ServerLocation]
) -> AsyncIterator[dict[str, ServerLocation]]:
    """Every server running, the Hub's activity fresh; no probe token left from a test."""
    hub = jupyter_hub
    for user in USERS:
        model = (await hub.get_user(user))["servers"].get("")
        if not (model and model.get("ready")):
            await hub.wait_stopped(user)
            locations[user] = await start_server(hub, user)
        await hub.set_times(user, "", last_activity=ago(0))
    yield locations
    for user in USERS:
        for model in await probe_tokens(hub, user):
            await hub.request("DELETE", f"/users/{user}/tokens/{model['id']}", expected=(204,))


@pytest_asyncio.fixture
async def capturing(servers: dict[str, ServerLocation]) -> AsyncIterator[dict[str, FaultProxy]]:
    """A recording proxy in front of each user's real server."""
    proxies: dict[str, FaultProxy] = {}
    async with contextlib.AsyncExitStack() as stack:
        for user, location in servers.items():
            proxies[user] = await stack.enter_async_context(
                fault_proxy(f"http://127.0.0.1:{location.port}")
            )
        yield proxies


def pods_for(proxies: Mapping[str, FaultProxy]) -> Pods:
    return Pods({(user, ""): ServerPod(f"jupyter-{user}", p.url) for user, p in proxies.items()})


async def probe_tokens(hub: Hub, user: str) -> list[dict[str, Any]]:
    """The user's tokens noted ``hubcull probe`` (the Hub's own list)."""
    answer = await hub.request("GET", f"/users/{user}/tokens")
    return [t for t in answer.json()["api_tokens"] if t.get("note") == PROBE_NOTE]


def auth_tokens(seen: list[Seen]) -> list[str]:
    """The tokens of the ``Authorization: token ...`` headers of these requests."""
    found = []
    for request in seen:
        value = request.headers.get("authorization", "")
        assert value.startswith("token "), f"a probe without a token: {request.line}"
        found.append(value.removeprefix("token "))
    return found


def anywhere(secret: str, seen: list[Seen]) -> list[str]:
    """The requests where ``secret`` appears in the target or any header."""
    return [
        s.line for s in seen if secret in s.target or any(secret in v for v in s.headers.values())
    ]


def only_own(scopes: list[str], user: str, server: str = "") -> bool:
    """The token's scopes, as the Hub expands them: the use of this one server and the
    identity reads that come with it, every one filtered to this user."""
    own = (f"!user={user}", f"!server={user}/{server}")
    return f"access:servers!server={user}/{server}" in scopes and all(
        scope.endswith(own) for scope in scopes
    )


def culled(outcome: SweepOutcome) -> dict[str, str]:
    assert outcome.result is not None, outcome.message
    return {c.user: c.reason for c in outcome.result.culled}


async def busy(hub: Hub, location: ServerLocation) -> JupyterServer:
    driver = await hub.token(["access:servers"], note="test driver")
    client = JupyterServer(location.direct_url, driver)
    kernel = await client.start_kernel()
    await client.run_code(kernel["id"], SILENT, wait=False)
    await client.wait_kernel(kernel["id"], "busy")
    return client


async def running(hub: Hub, user: str) -> bool:
    return bool(((await hub.get_user(user))["servers"].get("") or {}).get("ready"))


# ------------------------------------------------------------------------- the probe works


async def test_probes_carry_per_server_tokens_and_a_captured_one_cannot_escalate(
    jupyter_hub: Hub, servers: dict[str, ServerLocation], capturing: dict[str, FaultProxy]
) -> None:
    """ann's kernel is busy (kept), bob's and cat's servers are idle (culled). Each server
    received only its own user's token; with ann's, a curious ann can do nothing more than
    she could already: not list users, not stop or delete cat's server or cat, not use cat's
    server through the proxy. When her server stops, the next sweep deletes the token."""
    hub = jupyter_hub
    policy_token = await hub.token([*MINIMAL_SCOPES, "tokens"])
    ann_client = await busy(hub, servers["ann"])
    for user in USERS:
        await hub.set_times(user, "", last_activity=ago(HOURS_2))
    connection = HubConnection()
    memory = SweepMemory()
    pods = pods_for(capturing)
    try:
        policy = policy_for(
            hub,
            idleTimeout="1h",
            kernels={"protectBusy": True},
            selector={"users": ["ann", "bob"]},
        )
        sources = SweepSources(policy_token, pods=pods, memory=memory, connection=connection)
        outcome = await sweep_policy(policy, sources)
        assert culled(outcome) == {"bob": "idle"}
        assert outcome.result is not None
        assert [p.label for p in outcome.result.protected] == ["ann"]
        assert outcome.result.probes.results == {"ok": 2}
        assert await running(hub, "ann") and not await running(hub, "bob")

        # what each server received: one token of its own, never the policy's
        every = [s for p in capturing.values() for s in p.seen]
        assert every, "no probe reached the servers"
        assert anywhere(policy_token, every) == []
        [ann_token] = set(auth_tokens(capturing["ann"].seen))
        [bob_token] = set(auth_tokens(capturing["bob"].seen))
        assert capturing["cat"].seen == []  # out of scope: never probed
        assert ann_token != bob_token
        [ann_model] = await probe_tokens(hub, "ann")
        assert only_own(ann_model["scopes"], "ann"), ann_model["scopes"]
        expires = parse_time(ann_model["expires_at"]) - parse_time(ann_model["created"])
        assert timedelta(minutes=55) <= expires <= timedelta(hours=1)

        # the captured token: who it is, and what it cannot do
        me = await hub.request("GET", "/user", token=ann_token)
        assert me.json()["name"] == "ann"
        assert only_own(me.json()["scopes"], "ann"), me.json()["scopes"]
        listing = await hub.request("GET", "/users", token=ann_token, expected=None)
        assert listing.status_code == 403
        stop_cat = await hub.request("DELETE", "/users/cat/server", token=ann_token, expected=None)
        assert stop_cat.status_code == 403
        delete_cat = await hub.request("DELETE", "/users/cat", token=ann_token, expected=None)
        assert delete_cat.status_code == 403
        new_token = await hub.request(
            "POST", "/users/ann/tokens", token=ann_token, json_body={}, expected=None
        )
        assert new_token.status_code == 403  # it cannot mint itself a broader token either
        assert await running(hub, "cat")
        async with httpx.AsyncClient(follow_redirects=False, timeout=30) as http:
            header = {"Authorization": f"token {ann_token}"}
            others = await http.get(f"{hub.public_url}/user/cat/api/kernels", headers=header)
            own = await http.get(f"{hub.public_url}/user/ann/api/kernels", headers=header)
            direct = await http.get(f"{servers['cat'].direct_url}api/kernels", headers=header)
        assert others.status_code in (302, 403), others.text[:200]
        assert direct.status_code in (302, 403), direct.text[:200]
        assert own.status_code == 200  # the token does work where it is meant to

        # bob's server was culled: its token goes at the next sweep; ann's stays in use
        assert await probe_tokens(hub, "bob") != []
        await ann_client.aclose()
        await hub.stop("ann")
        await hub.wait_stopped("ann")
        again = await sweep_policy(policy, sources)
        assert again.result is not None, again.message
        assert await probe_tokens(hub, "ann") == []
        assert await probe_tokens(hub, "bob") == []
        gone = await hub.request("GET", "/user", token=ann_token, expected=None)
        assert gone.status_code == 403
    finally:
        await connection.aclose()


async def test_via_proxy_the_policy_token_reaches_no_server(
    jupyter_hub: Hub, servers: dict[str, ServerLocation]
) -> None:
    """Through configurable-http-proxy (a recording proxy in front of the Hub's public URL):
    every probe carries its user's token; none carries the policy's. A sweep without a kept
    connection deletes its tokens at its end."""
    hub = jupyter_hub
    policy_token = await hub.token([*MINIMAL_SCOPES, "tokens"])
    async with fault_proxy(hub.public_url) as recorder:
        kernels = {"idleFrom": "kernels", "via": "proxy", "proxyURL": recorder.url}
        policy = policy_for(hub, idleTimeout="1h", kernels=kernels, dryRun=True)
        await asyncio.gather(*(hub.set_times(u, "", started=ago(HOURS_2)) for u in USERS))
        outcome = await sweep_policy(policy, SweepSources(policy_token))
    assert outcome.result is not None, outcome.message
    assert outcome.result.probes.results == {"ok": 3}
    assert anywhere(policy_token, recorder.seen) == []
    by_user: dict[str, set[str]] = {}
    for request in recorder.seen:
        user = request.path.split("/")[2]
        by_user.setdefault(user, set()).update(auth_tokens([request]))
    assert set(by_user) == set(USERS)
    assert all(len(tokens) == 1 for tokens in by_user.values())
    assert len(set().union(*by_user.values())) == 3  # one token per server
    for user in USERS:
        assert await probe_tokens(hub, user) == []  # the sweep alone kept none


# ------------------------------------------------------------------- refusals and renewal


async def test_a_filtered_tokens_scope_leaves_uncovered_servers_to_the_hub(
    jupyter_hub: Hub, servers: dict[str, ServerLocation], capturing: dict[str, FaultProxy]
) -> None:
    """``tokens!group=probed`` covers ann only: bob's probe fails (token_refused, counted),
    the Hub decides for bob (idle 2 h: would be stopped though his kernel is busy), and the
    sweep goes on."""
    hub = jupyter_hub
    await hub.create_group("probed", ["ann"])
    clients = [await busy(hub, servers[user]) for user in ("ann", "bob")]
    try:
        for user in ("ann", "bob"):
            await hub.set_times(user, "", last_activity=ago(HOURS_2))
        token = await hub.token([*MINIMAL_SCOPES, "tokens!group=probed"])
        policy = policy_for(
            hub,
            idleTimeout="1h",
            kernels={"protectBusy": True},
            selector={"users": ["ann", "bob"]},
            dryRun=True,
        )
        outcome = await sweep_policy(policy, SweepSources(token, pods=pods_for(capturing)))
    finally:
        for client in clients:
            await client.aclose()
    assert culled(outcome) == {"bob": "idle"}
    assert outcome.result is not None
    assert outcome.result.probes.results == {"ok": 1, "token_refused": 1}
    [failure] = outcome.result.probe_failures
    assert (failure.user, failure.result) == ("bob", "token_refused")
    assert "no permissions to generate tokens" in failure.detail
    assert outcome.status["probeFailedLastSweep"] == 1
    assert capturing["bob"].seen == []  # never probed without a token of its own
    assert [p.label for p in outcome.result.protected] == ["ann"]


async def test_a_token_that_may_mint_for_no_server_holds_every_server(
    jupyter_hub: Hub, servers: dict[str, ServerLocation], capturing: dict[str, FaultProxy]
) -> None:
    """``tokens!group=nobody`` covers neither user: every probe fails (token_refused), which
    is the setup, not the servers. Nothing is stopped (bob's kernel is idle, ann's busy:
    without the rule both would be culled by the Hub's 2 h), and Ready says ProbesFailing."""
    hub = jupyter_hub
    await hub.create_group("nobody", [])
    clients = [await busy(hub, servers["ann"])]
    try:
        for user in ("ann", "bob"):
            await hub.set_times(user, "", last_activity=ago(HOURS_2))
        token = await hub.token([*MINIMAL_SCOPES, "tokens!group=nobody"])
        policy = policy_for(
            hub, idleTimeout="1h", kernels={"protectBusy": True}, selector={"users": ["ann", "bob"]}
        )
        sources = SweepSources(token, pods=pods_for(capturing), namespace="jhub")
        outcome = await sweep_policy(policy, sources)
    finally:
        for client in clients:
            await client.aclose()
    assert culled(outcome) == {}
    assert {("ann", ""), ("bob", "")} <= await hub.running_servers()
    assert outcome.result is not None
    assert outcome.result.probes.results == {"token_refused": 2}
    ready = outcome.status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "ProbesFailing")
    assert "Every probe of this sweep failed (2 servers" in ready["message"]
    assert "no permissions to generate tokens" in ready["message"]


async def test_tokens_are_reused_while_valid_renewed_before_expiry_and_the_old_one_deleted(
    jupyter_hub: Hub, servers: dict[str, ServerLocation], capturing: dict[str, FaultProxy]
) -> None:
    """A 20 s lifetime renewed 5 s before expiry, on a clock the test moves: sweeps within
    the validity reuse the token (one creation), the sweep after renews it, and the old
    token no longer works at the Hub."""
    hub = jupyter_hub
    policy_token = await hub.token([*MINIMAL_SCOPES, "tokens"])
    now = [0.0]
    tokens = ProbeTokens(lifetime=20, renew_before=5, clock=lambda: now[0])
    connection = HubConnection(probe_tokens=tokens)
    policy = policy_for(
        hub, idleTimeout="1h", kernels={"idleFrom": "kernels"}, selector={"users": ["ann"]}
    )
    await hub.set_times("ann", "", started=ago(HOURS_2))
    sources = SweepSources(policy_token, pods=pods_for(capturing), connection=connection)
    try:
        for moment in (0.0, 5.0, 14.0):
            now[0] = moment
            outcome = await sweep_policy(policy, sources)
            assert outcome.result is not None and outcome.result.probes.results == {"ok": 1}
        first = set(auth_tokens(capturing["ann"].seen))
        assert len(first) == 1 and tokens.counts.created == 1
        [model] = await probe_tokens(hub, "ann")
        lived = parse_time(model["expires_at"]) - parse_time(model["created"])
        assert timedelta(seconds=19) <= lived <= timedelta(seconds=21)
        mark = capturing["ann"].mark()
        now[0] = 16.0  # within 5 s of its expiry
        outcome = await sweep_policy(policy, sources)
        assert outcome.result is not None and outcome.result.probes.results == {"ok": 1}
        second = set(auth_tokens(capturing["ann"].seen[mark:]))
        assert len(second) == 1 and second != first
        assert tokens.counts.created == 2 and tokens.counts.deleted == 1
        [old] = first
        refused = await hub.request("GET", "/user", token=old, expected=None)
        assert refused.status_code == 403
        assert len(await probe_tokens(hub, "ann")) == 1
    finally:
        await connection.aclose()
    assert await probe_tokens(hub, "ann") == []  # closing the connection deleted it


@pytest.mark.hub(extra_config="c.JupyterHub.token_expires_in_max_seconds = 20")
async def test_the_hubs_maximum_token_lifetime_is_honoured(hub: Hub) -> None:
    """With token_expires_in_max_seconds = 20 the Hub refuses an hour; the source asks for
    what the Hub allows and renews by that lifetime (a quarter of it before expiry)."""
    await hub.create_users(["ann", "bob"])
    policy_token = await hub.token([*MINIMAL_SCOPES, "tokens"], expires_in=20)
    now = [0.0]
    async with HubClient(hub.api_url, policy_token) as client:
        tokens = ProbeTokens(clock=lambda: now[0])  # asks for 1 h, renews 5 min before
        await tokens.token_for(client, ("ann", ""))
        [model] = await probe_tokens(hub, "ann")
        assert only_own(model["scopes"], "ann"), model["scopes"]
        lived = parse_time(model["expires_at"]) - parse_time(model["created"])
        assert timedelta(seconds=19) <= lived <= timedelta(seconds=21)
        now[0] = 14.0
        await tokens.token_for(client, ("ann", ""))
        assert tokens.counts.created == 1
        now[0] = 15.5
        await tokens.token_for(client, ("ann", ""))
        assert tokens.counts.created == 2 and tokens.counts.deleted == 1
        # a named server's scope, and a user the Hub does not know
        await tokens.token_for(client, ("bob", "gpu"))
        [named] = await probe_tokens(hub, "bob")
        assert only_own(named["scopes"], "bob", "gpu"), named["scopes"]
        with pytest.raises(ProbeTokenRefused):
            await tokens.token_for(client, ("nobody", ""))
        await tokens.release(client)
    assert await probe_tokens(hub, "ann") == [] and await probe_tokens(hub, "bob") == []


async def test_a_rotated_policy_token_or_dropped_spec_kernels_deletes_the_probe_tokens(
    jupyter_hub: Hub, servers: dict[str, ServerLocation], capturing: dict[str, FaultProxy]
) -> None:
    """The kept connection: when the policy's token changes (a rotation), the probe tokens
    made with the old one are deleted and new ones made; when spec.kernels goes, so do they."""
    hub = jupyter_hub
    old_token = await hub.token([*MINIMAL_SCOPES, "tokens"])
    new_token = await hub.token([*MINIMAL_SCOPES, "tokens"])
    await hub.set_times("ann", "", started=ago(HOURS_2))
    spec: dict[str, Any] = {"idleTimeout": "1h", "selector": {"users": ["ann"]}, "dryRun": True}
    with_kernels = policy_for(hub, kernels={"idleFrom": "kernels"}, **spec)
    connection = HubConnection()
    pods = pods_for(capturing)
    try:
        first = await sweep_policy(
            with_kernels, SweepSources(old_token, pods=pods, connection=connection)
        )
        assert first.result is not None and first.result.probes.results == {"ok": 1}
        [used] = set(auth_tokens(capturing["ann"].seen))
        mark = capturing["ann"].mark()
        rotated = await sweep_policy(
            with_kernels, SweepSources(new_token, pods=pods, connection=connection)
        )
        assert rotated.result is not None and rotated.result.probes.results == {"ok": 1}
        [renewed] = set(auth_tokens(capturing["ann"].seen[mark:]))
        assert renewed != used
        assert (await hub.request("GET", "/user", token=used, expected=None)).status_code == 403
        assert len(await probe_tokens(hub, "ann")) == 1
        dropped = await sweep_policy(
            policy_for(hub, **spec), SweepSources(new_token, pods=pods, connection=connection)
        )
        assert dropped.result is not None, dropped.message
        assert await probe_tokens(hub, "ann") == []
        assert connection.probe_tokens.held == 0
    finally:
        await connection.aclose()


async def test_a_hub_that_cannot_make_tokens_fails_the_sweep_and_stops_nothing(
    jupyter_hub: Hub, servers: dict[str, ServerLocation], capturing: dict[str, FaultProxy]
) -> None:
    """Not a refusal for one user but the Hub failing (503 on every token creation): the
    sweep fails like a failed listing, names the Hub's answer, probes and stops nothing."""
    hub = jupyter_hub
    for user in ("ann", "bob"):
        await hub.set_times(user, "", last_activity=ago(HOURS_2))
    token = await hub.token([*MINIMAL_SCOPES, "tokens"])
    async with fault_proxy(hub.public_url) as hub_proxy:
        hub_proxy.inject(Fault("status", r"^POST /hub/api/users/[^/]+/tokens", status=503))
        policy = policy_for(
            hub_proxy.api_url,
            idleTimeout="1h",
            kernels={"protectBusy": True},
            selector={"users": ["ann", "bob"]},
        )
        outcome = await sweep_policy(policy, SweepSources(token, pods=pods_for(capturing)))
        assert hub_proxy.stops() == []
    assert outcome.result is None
    assert outcome.reason == "HubError"
    assert "503" in (outcome.message or "") and "probe token" in (outcome.message or "")
    assert all(proxy.seen == [] for proxy in capturing.values())
    assert await running(hub, "ann") and await running(hub, "bob")
