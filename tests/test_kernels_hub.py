"""Kernel-aware culling (spec.kernels) against REAL single-user servers.

One Hub with real ``jupyterhub-singleuser`` servers (ipykernel kernels, bash terminals),
shared by the module. Kernels are started and run over the servers' REST and websocket
APIs as JupyterLab does (tests/support/jupyter.py); hubcull's engine sweeps the Hub and
probes the servers through the real configurable-http-proxy (``via: proxy``) or at their own
port (``via: pods``, with pods mapped to 127.0.0.1 the way the operator maps pod IPs).
Kernel times are real: a kernel "idle 4s" has really been idle 4 s by its server's clock, so
these policies use idleTimeouts of seconds; the Hub's own last_activity is backdated.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from hubcull.engine.rules.signals import ServerKey
from hubcull.engine.signals.pods import ServerPod
from hubcull.engine.sweep.memory import SweepMemory
from hubcull.engine.sweep.runner import SweepOutcome, sweep_policy
from hubcull.engine.sweep.sources import SweepSources
from tests.support.cli import hubcull, manifest, readme_section
from tests.support.faultproxy import Fault, fault_proxy
from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.jupyter import (
    JupyterServer,
    ServerLocation,
    parse_time,
    poll_until,
    start_server,
)
from tests.support.scenario import ago, policy_for

pytestmark = pytest.mark.hub

USERS = ("ann", "bob", "cat")
TAB = "tab"  # reports its activity to the Hub often, like a server with an open tab
TAB_REPORTS = 1  # seconds between the tab server's activity reports to the Hub
SILENT = "import time; time.sleep(1200)"
QUIET = 8  # seconds the tab's kernels stay quiet before its activity moves again
HOURS_2 = 7200.0 + 20  # clear of the Hub Date header's whole seconds: reads "2h"


@dataclass
class Lab:
    """The module's Hub, its servers' addresses, a culler token (with ``tokens``: it makes
    the per-server probe tokens, it never reaches a server) and the test's own token for
    driving the servers (``access:servers``)."""

    hub: Hub
    token: str
    locations: dict[str, ServerLocation]
    driver_token: str = ""
    clients: dict[str, JupyterServer] = field(default_factory=dict)

    def pods(self, **overrides: str) -> StaticPods:
        """Pods at the servers' own ports (as pod IPs would be); ``overrides`` maps a user to
        another address."""
        pods = {
            (user, ""): ServerPod(f"jupyter-{user}", f"http://127.0.0.1:{loc.port}")
            for user, loc in self.locations.items()
        }
        for user, address in overrides.items():
            pods[(user, "")] = ServerPod(f"jupyter-{user}", address)
        return StaticPods(pods)

    def client(self, user: str) -> JupyterServer:
        """The test's client of the user's server (its own port, the test's token); the
        kernels and terminals it starts are deleted after the test."""
        if user not in self.clients:
            self.clients[user] = JupyterServer(self.locations[user].direct_url, self.driver_token)
        return self.clients[user]


class StaticPods:
    """The engine's PodSource for servers on 127.0.0.1: what the operator's KubePodSource
    finds in pods' ``status.podIP`` (tests/test_kernels_operator.py uses the real one)."""

    def __init__(self, pods: Mapping[ServerKey, ServerPod]) -> None:
        self._pods = dict(pods)
        self.listings = 0

    async def server_pods(self) -> Mapping[ServerKey, ServerPod]:
        self.listings += 1
        return self._pods


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab_servers(jupyter_hub: Hub) -> Lab:
    hub = jupyter_hub
    await hub.create_users([*USERS, TAB])
    started = await asyncio.gather(
        *(start_server(hub, user) for user in USERS),
        start_server(hub, TAB, activity_interval=TAB_REPORTS),
    )
    token = await hub.token([*MINIMAL_SCOPES, "tokens"])
    driver = await hub.token(["access:servers"], note="test driver")
    return Lab(hub, token, {loc.user: loc for loc in started}, driver_token=driver)


@pytest_asyncio.fixture
async def lab(lab_servers: Lab) -> AsyncIterator[Lab]:
    """Every server running with no kernel and no terminal, the Hub's activity fresh."""
    hub = lab_servers.hub
    for user in [*USERS, TAB]:
        model = (await hub.get_user(user))["servers"].get("")
        if not (model and model.get("ready")):
            await hub.wait_stopped(user)  # a cull answered 202: the stop may still run
            lab_servers.locations[user] = await start_server(
                hub, user, activity_interval=TAB_REPORTS if user == TAB else None
            )
    await asyncio.gather(*(backdate(hub, user, 0) for user in [*USERS, TAB]))
    yield lab_servers
    clients, lab_servers.clients = lab_servers.clients, {}
    for user, client in clients.items():
        if await running(hub, user):
            await client.aclose()


async def backdate(hub: Hub, user: str, seconds: float) -> None:
    """Set the Hub's last_activity of the user's default server ``seconds`` ago."""
    await hub.set_times(user, "", last_activity=ago(seconds))


async def idle_kernel(client: JupyterServer, seconds: float) -> dict[str, Any]:
    """Start a kernel, run a cell, and wait until it has been quiet ``seconds`` by its
    server's clock."""
    kernel = await client.start_kernel()
    await client.run_code(kernel["id"], "x = 1")
    model = await client.wait_kernel_quiet(kernel["id"])
    await client.wait_server_time(parse_time(model["last_activity"]) + timedelta(seconds=seconds))
    return model


async def busy_kernel(client: JupyterServer, silent_for: float = 0) -> dict[str, Any]:
    """Start a kernel running a silent computation (and wait ``silent_for`` seconds)."""
    kernel = await client.start_kernel()
    await client.run_code(kernel["id"], SILENT, wait=False)
    model = await client.wait_kernel(kernel["id"], "busy")
    if silent_for:
        since = parse_time(model["last_activity"]) + timedelta(seconds=silent_for)
        await client.wait_server_time(since)
    return model


async def sweep(lab: Lab, pods: StaticPods | None = None, **spec: Any) -> SweepOutcome:
    """One sweep of the users' default servers (``selector.users`` defaults to USERS)."""
    spec.setdefault("selector", {"users": list(USERS)})
    policy = policy_for(lab.hub, **spec)
    sources = SweepSources(lab.token, pods=pods, memory=SweepMemory(), namespace="jhub")
    return await sweep_policy(policy, sources)


def culled(outcome: SweepOutcome) -> dict[str, str]:
    assert outcome.result is not None, outcome.message
    return {c.user: c.reason for c in outcome.result.culled}


async def hub_activity(hub: Hub, user: str) -> datetime:
    """The Hub's last_activity of the user's default server."""
    return parse_time((await hub.get_user(user))["servers"][""]["last_activity"])


async def hub_sees(hub: Hub, user: str, activity: datetime, timeout: float = 15) -> datetime:
    """Poll until the Hub's last_activity of the server is ``activity`` or later (the
    server's report arrived); return it."""

    async def seen() -> datetime | None:
        found = await hub_activity(hub, user)
        return found if found >= activity else None

    return await poll_until(seen, f"{user}'s activity {activity} to reach the Hub", timeout)


async def running(hub: Hub, user: str) -> bool:
    return bool(((await hub.get_user(user))["servers"].get("") or {}).get("ready"))


# ---------------------------------------------------------------------------- protectBusy


async def test_a_busy_kernel_keeps_its_server_and_an_idle_kernel_does_not(lab: Lab) -> None:
    """Both servers look idle to the Hub (2 h); ann's kernel runs a silent computation."""
    ann, bob = lab.client("ann"), lab.client("bob")
    await busy_kernel(ann, silent_for=2)
    await idle_kernel(bob, 1)
    for user in USERS:
        await backdate(lab.hub, user, HOURS_2)
    outcome = await sweep(
        lab, lab.pods(), idleTimeout="1h", kernels={"protectBusy": True}, dryRun=False
    )
    assert culled(outcome) == {"bob": "idle", "cat": "idle"}
    assert outcome.result is not None
    [kept] = outcome.result.protected
    assert kept.label == "ann" and kept.why.startswith("kernel busy for ")
    assert outcome.status["serversProtected"] == 1
    assert outcome.status["probeFailedLastSweep"] == 0
    assert await running(lab.hub, "ann")
    assert not await running(lab.hub, "bob")


async def test_a_kernel_busy_and_silent_longer_than_max_busy_no_longer_protects(
    lab: Lab,
) -> None:
    """The probe sees the busy kernel both times: within maxBusy it keeps the server, past
    maxBusy it no longer does."""
    ann = lab.client("ann")
    await busy_kernel(ann, silent_for=3)
    await backdate(lab.hub, "ann", HOURS_2)
    spec = {"idleTimeout": "1h", "selector": {"users": ["ann"]}}
    kept = await sweep(lab, lab.pods(), kernels={"protectBusy": True, "maxBusy": "1h"}, **spec)
    assert culled(kept) == {}
    assert kept.result is not None and kept.result.probes.results == {"ok": 1}
    [protection] = kept.result.protected
    assert protection.label == "ann" and protection.why.startswith("kernel busy for ")
    stopped = await sweep(lab, lab.pods(), kernels={"protectBusy": True, "maxBusy": 2}, **spec)
    assert culled(stopped) == {"ann": "idle"}
    assert stopped.result is not None and stopped.result.probes.results == {"ok": 1}
    assert stopped.result.protected == [] and stopped.result.probe_failures == []


async def test_max_age_stops_a_server_with_a_busy_kernel(lab: Lab) -> None:
    """The same server without maxAge: the probe sees the busy kernel and it is kept."""
    ann = lab.client("ann")
    await busy_kernel(ann)
    await lab.hub.set_times("ann", "", started=ago(2 * 86400), last_activity=ago(HOURS_2))
    spec = {"idleTimeout": "1h", "kernels": {"protectBusy": True}, "selector": {"users": ["ann"]}}
    kept = await sweep(lab, lab.pods(), dryRun=True, **spec)
    assert culled(kept) == {}
    assert kept.result is not None and kept.result.probes.results == {"ok": 1}
    assert [p.label for p in kept.result.protected] == ["ann"]
    outcome = await sweep(lab, lab.pods(), maxAge="1d", **spec)
    assert culled(outcome) == {"ann": "maxAge"}
    assert outcome.result is not None and outcome.result.protected == []


async def test_capacity_skips_a_busy_server_and_stops_the_next_longest_idle(lab: Lab) -> None:
    ann = lab.client("ann")
    await busy_kernel(ann)
    await backdate(lab.hub, "ann", 3 * 3600)
    await backdate(lab.hub, "bob", 2 * 3600)
    await backdate(lab.hub, "cat", 3600)
    outcome = await sweep(
        lab,
        lab.pods(),
        idleTimeout=0,
        capacity={"maxActiveServers": 2, "minIdle": "10m"},
        kernels={"protectBusy": True},
        dryRun=True,
    )
    assert culled(outcome) == {"bob": "capacity"}
    assert outcome.result is not None
    assert [p.label for p in outcome.result.protected] == ["ann"]
    # ann (the busy one) and then bob were probed; cat, never a candidate, was not
    assert outcome.result.probes.results == {"ok": 2}


async def test_safety_limits_hold_back_culls_decided_by_kernels(lab: Lab) -> None:
    ann, bob = lab.client("ann"), lab.client("bob")
    await asyncio.gather(idle_kernel(ann, 4), idle_kernel(bob, 4))
    outcome = await sweep(
        lab,
        lab.pods(),
        idleTimeout=3,
        kernels={"idleFrom": "kernels"},
        safety={"maxCullsPerSweep": 1},
        selector={"users": ["ann", "bob"]},
        dryRun=True,
    )
    assert outcome.result is not None
    assert len(outcome.result.culled) == 1
    assert [(d.user, d.idle_from) for d in outcome.result.held_back] in (
        [("ann", "kernels")],
        [("bob", "kernels")],
    )
    throttled = next(c for c in outcome.status["conditions"] if c["type"] == "Throttled")
    assert throttled["status"] == "True"


async def test_a_dry_run_probes_and_stops_nothing(lab: Lab) -> None:
    ann, bob = lab.client("ann"), lab.client("bob")
    await busy_kernel(ann)
    await idle_kernel(bob, 0)
    for user in USERS:
        await backdate(lab.hub, user, HOURS_2)
    outcome = await sweep(
        lab, lab.pods(), idleTimeout="1h", kernels={"protectBusy": True}, dryRun=True
    )
    assert culled(outcome) == {"bob": "idle", "cat": "idle"}
    assert outcome.result is not None and outcome.result.dry_run
    assert [p.label for p in outcome.result.protected] == ["ann"]
    assert outcome.result.probes.results == {"ok": 3}
    assert all([await running(lab.hub, user) for user in USERS])
    assert outcome.status["culledTotal"] == 0


# ---------------------------------------------------------------------------- idleFrom


async def test_an_open_tab_keeps_the_hub_fresh_but_idle_kernels_cull_with_idle_from_kernels(
    lab: Lab,
) -> None:
    """JupyterLab's polling moves the server's activity, which reaches the Hub; the kernels
    have done nothing for longer than idleTimeout. idleTimeout comes from the run: just
    under the kernels' idle time, which stays QUIET seconds ahead of the Hub's."""
    tab = lab.client(TAB)
    kernel = await idle_kernel(tab, QUIET)
    quiet_since = parse_time(kernel["last_activity"])
    await backdate(lab.hub, TAB, HOURS_2)  # the tab's next report makes the Hub fresh again
    await tab.touch()  # a tab's poll: GET api/kernels, tracked as activity
    server_activity = await tab.last_activity()
    await hub_sees(lab.hub, TAB, server_activity)
    selector = {"users": [TAB]}

    async def timeout() -> float:
        """The kernels' idle seconds by the server's clock now, less half a second (a
        tenth of a second: what a duration like "8.5s" can say)."""
        idle = (await tab.server_time() - quiet_since).total_seconds()
        return math.floor((idle - 0.5) * 10) / 10

    idle_timeout = await timeout()
    by_hub = await sweep(
        lab, lab.pods(), idleTimeout=f"{idle_timeout}s", selector=selector, dryRun=True
    )
    assert culled(by_hub) == {}
    protect = {"protectBusy": True}  # protectBusy alone: the Hub still decides idleness
    idle_timeout = await timeout()
    by_hub = await sweep(
        lab, lab.pods(), idleTimeout=f"{idle_timeout}s", kernels=protect, selector=selector
    )
    assert culled(by_hub) == {}
    by_kernels = await sweep(
        lab,
        lab.pods(),
        idleTimeout=f"{idle_timeout}s",
        kernels={"idleFrom": "kernels"},
        selector=selector,
    )
    assert culled(by_kernels) == {TAB: "idle"}
    [entry] = by_kernels.status["recentCulls"]
    assert entry["idleFrom"] == "kernels"
    assert entry["idleSeconds"] < 60  # the kernels' idle time, not the Hub's
    assert by_kernels.result is not None
    [decision] = by_kernels.result.culls
    assert decision.idle_seconds >= idle_timeout
    assert not await running(lab.hub, TAB)


async def test_a_terminal_with_recent_output_keeps_its_server(lab: Lab) -> None:
    """Idle 2 h by the Hub: kept while the terminal's output is under a minute old (a
    bound no loaded machine reaches between the output and the sweep), stopped once the
    terminal has been quiet for a 4 s idleTimeout."""
    await lab.hub.set_times("ann", "", started=ago(HOURS_2), last_activity=ago(HOURS_2))
    spec = {
        "kernels": {"idleFrom": "kernels"},
        "selector": {"users": ["ann"]},
        "dryRun": True,
    }
    ann = lab.client("ann")
    terminal = await ann.create_terminal()
    async with ann.connect_terminal(terminal["name"]) as shell:
        await shell.run("echo training step 1")
    kept = await sweep(lab, lab.pods(), idleTimeout=60, **spec)
    assert culled(kept) == {}
    assert kept.result is not None and kept.result.probes.results == {"ok": 1}
    quiet = await ann.wait_terminal_quiet(terminal["name"])
    await ann.wait_server_time(parse_time(quiet["last_activity"]) + timedelta(seconds=4))
    stopped = await sweep(lab, lab.pods(), idleTimeout=4, **spec)
    assert culled(stopped) == {"ann": "idle"}
    assert stopped.result is not None
    [decision] = stopped.result.culls
    assert decision.idle_from == "kernels" and decision.idle_seconds < 60


async def test_no_kernel_and_no_terminal_is_judged_by_the_hub(lab: Lab) -> None:
    await lab.hub.set_times("ann", "", started=ago(HOURS_2), last_activity=ago(HOURS_2))
    await lab.hub.set_times("bob", "", started=ago(HOURS_2), last_activity=ago(0))
    outcome = await sweep(
        lab,
        lab.pods(),
        idleTimeout="1h",
        kernels={"idleFrom": "kernels"},
        selector={"users": ["ann", "bob"]},
        dryRun=True,
    )
    assert culled(outcome) == {"ann": "idle"}
    assert outcome.result is not None
    assert outcome.result.probes.results == {"ok": 2}  # probed: neither has a kernel
    [decision] = outcome.result.culls
    assert decision.idle_from == "hub" and decision.idle_seconds > HOURS_2 - 60


async def test_idle_from_kernels_probes_a_server_again_only_once_it_could_be_idle(
    lab: Lab,
) -> None:
    """The not-before memory: kernels active at t are not probed again before t + idleTimeout."""
    ann = lab.client("ann")
    await idle_kernel(ann, 0)
    policy = policy_for(
        lab.hub, idleTimeout="1h", kernels={"idleFrom": "kernels"}, selector={"users": ["ann"]}
    )
    await lab.hub.set_times("ann", "", started=ago(HOURS_2))
    memory, pods = SweepMemory(), lab.pods()
    first = await sweep_policy(policy, SweepSources(lab.token, pods=pods, memory=memory))
    second = await sweep_policy(policy, SweepSources(lab.token, pods=pods, memory=memory))
    assert first.result is not None and second.result is not None
    assert (first.result.probes.results, second.result.probes.results) == ({"ok": 1}, {})
    assert pods.listings == 1  # the second sweep needed no pod at all
    assert culled(second) == {}


# ---------------------------------------------------------------------------- failures


async def test_a_failed_probe_leaves_its_server_to_the_hub_and_the_sweep_ends_in_time(
    lab: Lab,
) -> None:
    """ann's address answers 404 (not Jupyter), cat's hangs, bob's works: ann and cat are
    judged by the Hub (idle 2 h: culled even though each runs a busy kernel), bob is kept."""
    for user in USERS:
        await backdate(lab.hub, user, HOURS_2)
    for user in USERS:
        await busy_kernel(lab.client(user))
    upstream = {user: f"http://127.0.0.1:{lab.locations[user].port}" for user in USERS}
    async with (
        fault_proxy(upstream["ann"]) as not_jupyter,
        fault_proxy(upstream["cat"]) as hung,
    ):
        not_jupyter.inject(Fault("status", r"api/kernels", status=404))
        hung.inject(Fault("hang", r"api/kernels"))
        pods = lab.pods(ann=not_jupyter.url, cat=hung.url)
        started = time.monotonic()
        outcome = await sweep(
            lab, pods, idleTimeout="1h", kernels={"protectBusy": True, "timeout": 2}, dryRun=True
        )
        took = time.monotonic() - started
        hung.clear()
    assert culled(outcome) == {"ann": "idle", "cat": "idle"}
    assert outcome.result is not None
    failures = {f.user: f.result for f in outcome.result.probe_failures}
    assert failures == {"ann": "http_error", "cat": "timeout"}
    assert outcome.result.probes.results["ok"] == 1
    assert outcome.status["probeFailedLastSweep"] == 2
    assert outcome.status["conditions"][0]["reason"] == "SweepSucceeded"
    assert took < 2 + 3, f"the sweep took {took:.1f}s with a 2s probe timeout"


async def test_every_probe_failing_holds_the_servers_and_says_so(lab: Lab) -> None:
    """ann's address answers 404, bob's refuses, cat's hangs: every probe failed, so the
    setup is broken (a NetworkPolicy, a wrong namespace), not the servers. Nothing that
    needed a probe is stopped, and Ready says why with the first error."""
    for user in USERS:
        await backdate(lab.hub, user, HOURS_2)
    upstream = {user: f"http://127.0.0.1:{lab.locations[user].port}" for user in USERS}
    async with (
        fault_proxy(upstream["ann"]) as not_jupyter,
        fault_proxy(upstream["bob"]) as refused,
        fault_proxy(upstream["cat"]) as hung,
    ):
        not_jupyter.inject(Fault("status", r"api/kernels", status=404))
        await refused.refuse()
        hung.inject(Fault("hang", r"api/kernels"))
        pods = lab.pods(ann=not_jupyter.url, bob=refused.url, cat=hung.url)
        outcome = await sweep(
            lab, pods, idleTimeout="1h", kernels={"protectBusy": True, "timeout": 2}
        )
        hung.clear()
    assert culled(outcome) == {}
    assert all([await running(lab.hub, user) for user in USERS])
    assert outcome.result is not None
    assert sorted(outcome.result.probes.results.elements()) == [
        "http_error",
        "timeout",
        "unreachable",
    ]
    ready = outcome.status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "ProbesFailing")
    assert (
        "Every probe of this sweep failed (3 servers, pods searched in namespace jhub)"
        in ready["message"]
    )
    assert "first error: ann: " in ready["message"]
    assert outcome.status["serversRunning"] == 3


async def test_a_token_without_tokens_fails_before_anything_is_probed_or_stopped(
    lab: Lab,
) -> None:
    for user in USERS:
        await backdate(lab.hub, user, HOURS_2)
    # the old role (access:servers) is not enough: the probes no longer use the policy's token
    token = await lab.hub.token([*MINIMAL_SCOPES, "access:servers"])
    pods = lab.pods()
    policy = policy_for(lab.hub, idleTimeout="1h", kernels={"protectBusy": True})
    outcome = await sweep_policy(policy, SweepSources(token, pods=pods))
    assert outcome.result is None
    assert outcome.reason == "Forbidden"
    assert "lacks the scope tokens" in (outcome.message or "")
    assert pods.listings == 0
    assert all([await running(lab.hub, user) for user in USERS])


async def test_probes_move_neither_the_servers_nor_the_hubs_activity(lab: Lab) -> None:
    """Both ways: at the server's own port and through the proxy (this Hub runs with
    last_activity_interval = 0, as docs/z2jh.md requires for via: proxy). The tab's server
    reports its activity to the Hub every TAB_REPORTS seconds, so activity a probe caused
    would reach the Hub: after the probes, nothing reaches it for three report intervals;
    then a tracked request does."""
    tab = lab.client(TAB)
    await idle_kernel(tab, 0)
    await lab.hub.set_times(TAB, "", started=ago(HOURS_2))  # old enough to be probed
    before_server = await tab.last_activity()
    before_hub = await hub_sees(lab.hub, TAB, before_server)
    spec = {"idleTimeout": "1h", "selector": {"users": [TAB]}, "dryRun": True}
    by_pod = await sweep(lab, lab.pods(), kernels={"idleFrom": "kernels"}, **spec)
    proxy = {"idleFrom": "kernels", "via": "proxy", "proxyURL": lab.hub.public_url}
    by_proxy = await sweep(lab, kernels=proxy, **spec)
    assert by_pod.result is not None and by_proxy.result is not None
    assert by_pod.result.probes.results == by_proxy.result.probes.results == {"ok": 1}
    # the server's clock moves past three of its reports (1 s resolution: one more second)
    window = timedelta(seconds=3 * TAB_REPORTS + 1)
    await tab.wait_server_time(await tab.server_time() + window)
    assert await hub_activity(lab.hub, TAB) == before_hub
    assert await tab.last_activity() == before_server
    # what a probe is not: a tracked request, which the next report brings to the Hub
    await tab.touch()
    touched = await tab.last_activity()
    assert touched > before_server
    await hub_sees(lab.hub, TAB, touched, timeout=window.total_seconds() + 10)


# ---------------------------------------------------------------------------- hubcull sweep


async def test_hubcull_sweep_prints_kept_servers_and_failed_probes(
    lab: Lab, tmp_path: Path
) -> None:
    """The command line with via: proxy (it has no pods): one line per protected server and
    per failed probe; via: pods is refused with exit status 2 and says what to use."""
    await busy_kernel(lab.client("ann"))
    for user in USERS:
        await backdate(lab.hub, user, HOURS_2)
    async with fault_proxy(lab.hub.public_url) as proxy:
        proxy.inject(Fault("status", r"^GET /user/bob/api/kernels", status=503))
        kernels = {"protectBusy": True, "via": "proxy", "proxyURL": proxy.url}
        path = tmp_path / "p.yaml"
        manifest(
            path,
            lab.hub.api_url,
            idleTimeout="1h",
            kernels=kernels,
            selector={"users": list(USERS)},
        )
        code, out, err = await hubcull(
            "sweep", "-f", str(path), "--once", "--dry-run", token=lab.token
        )
        probes = proxy.requests(r"^GET /user/")
    assert code == 0, err
    # the probes carried the users' own tokens, which the run deleted at its end
    assert probes and all(lab.token not in str(seen.headers) for seen in probes)
    [ann_token] = {s.headers["authorization"] for s in probes if s.path.startswith("/user/ann/")}
    gone = await lab.hub.request(
        "GET", "/user", headers={"Authorization": ann_token}, expected=None
    )
    assert gone.status_code == 403
    for user in USERS:
        listed = (await lab.hub.request("GET", f"/users/{user}/tokens")).json()["api_tokens"]
        assert [t for t in listed if t["note"] == "hubcull probe"] == []
    assert "KEEP     ann: kernel busy for " in out
    assert "UNKNOWN  bob: probe failed (http_error: GET api/kernels answered 503)" in out
    assert "WOULD    stop bob (idle 2h" in out and "WOULD    stop cat (idle 2h" in out
    assert "stop ann" not in out

    pods = manifest(tmp_path / "pods.yaml", lab.hub.api_url, kernels={"protectBusy": True})
    code, out, err = await hubcull("sweep", "-f", str(pods), "--once", token=lab.token)
    assert code == 2
    assert "via: proxy" in err and "operator" in err and len(err.strip().splitlines()) == 1
    assert "--proxy-url" in err and "spec.usage" not in err  # it names what the policy has


EXAMPLE_KERNELS = Path(__file__).resolve().parents[1] / "examples" / "kernels.yaml"


async def test_examples_kernels_yaml_works_with_hubcull_sweep_and_proxy_url(
    lab: Lab, tmp_path: Path
) -> None:
    """README's command: examples/kernels.yaml (via: pods, for the operator) tried with
    ``--hub-url`` and ``--proxy-url`` probes the real servers through the real proxy. The Hub
    says all three have been idle 2 h; by their kernels (``idleFrom: kernels``) ann (busy)
    and bob (a cell run seconds ago) are not, so only cat (no kernel: the Hub decides) would
    be stopped. Had a probe failed, the Hub would have decided for ann and bob too."""
    await busy_kernel(lab.client("ann"))
    await idle_kernel(lab.client("bob"), 1)
    for user in USERS:
        await backdate(lab.hub, user, HOURS_2)
    section = readme_section("Try a policy against your Hub").replace("\\\n", " ")
    [command] = [
        line.split()
        for line in section.splitlines()
        if line.split()[:4] == [".venv/bin/hubcull", "sweep", "-f", "examples/kernels.yaml"]
    ]
    # README's port-forwarded Hub and proxy -> the test Hub's
    forwarded = {
        "http://127.0.0.1:8081/hub/api": lab.hub.api_url,
        "http://127.0.0.1:8000": lab.hub.public_url,
    }
    assert set(forwarded) <= set(command) and "--proxy-url" in command, command
    args = [forwarded.get(a, a) for a in command[2:]]
    args = [str(EXAMPLE_KERNELS) if a == "examples/kernels.yaml" else a for a in args]
    assert "--dry-run" in args and "--once" in args
    code, out, err = await hubcull("sweep", *args, "--status", token=lab.token)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[:2] == [
        "[kernels] WOULD    stop cat (idle 2h)",
        "[kernels] swept 4 running servers: 1 over a limit, would cull 1, 0 failed (dry run)",
    ], out
    status = yaml.safe_load("\n".join(lines[2:]))["status"]
    assert status["probeFailedLastSweep"] == 0
    assert await running(lab.hub, "ann") and await running(lab.hub, "bob")
