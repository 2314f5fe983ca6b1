"""spec.kernels in the operator (via: pods): the real kopf operator on the Kubernetes
emulator, KubeSpawner-shaped Pod objects whose ``status.podIP`` and ``notebook-port`` point
at REAL single-user servers on 127.0.0.1, and a real Hub."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
import pytest_asyncio
from prometheus_client import generate_latest

from hubcull.engine.signals.probetokens import PROBE_NOTE
from tests.support.faultproxy import fault_proxy
from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.jupyter import JupyterServer, ServerLocation, start_server
from tests.support.kube import Kube
from tests.support.operator_env import (
    CULLPOLICIES,
    NS,
    condition,
    cullpolicy,
    hubcull_operator,
    policy_status,
    secret,
)
from tests.support.pods import PODS, create_pod, singleuser_pod
from tests.support.scenario import ago

pytestmark = [pytest.mark.k8s, pytest.mark.hub]

USERS = ("ann", "bob")
SILENT = "import time; time.sleep(1200)"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def servers(jupyter_hub: Hub) -> dict[str, ServerLocation]:
    started = await asyncio.gather(*(start_server(jupyter_hub, user) for user in USERS))
    return {location.user: location for location in started}


async def add_pods(kube: Kube, servers: dict[str, ServerLocation]) -> None:
    await kube.create_namespace(NS)
    for user, location in servers.items():
        await create_pod(kube, singleuser_pod(user, port=location.port), ip="127.0.0.1")


async def test_busy_kernels_keep_their_servers_through_their_pods(
    kube: Kube, jupyter_hub: Hub, servers: dict[str, ServerLocation]
) -> None:
    hub = jupyter_hub
    token = await hub.token([*MINIMAL_SCOPES, "tokens"])
    driver = await hub.token(["access:servers"], note="test driver")
    async with JupyterServer(servers["ann"].direct_url, driver) as ann:
        kernel = await ann.start_kernel()
        await ann.run_code(kernel["id"], SILENT, wait=False)
        await ann.wait_kernel(kernel["id"], "busy")
        for user in USERS:
            await hub.set_times(user, "", last_activity=ago(7200))
        await add_pods(kube, servers)
        async with hubcull_operator(kube) as (_, memo):
            await kube.create(secret(token))
            await kube.create(
                cullpolicy(
                    hub,
                    idleTimeout="1h",
                    kernels={"protectBusy": True},
                    selector={"users": list(USERS)},
                )
            )

            async def swept() -> dict:
                status = await policy_status(kube)
                assert status.get("culledTotal") == 1, status
                return status

            status = await kube.wait_for(swept, timeout=30)

            async def counted() -> str:  # the metrics follow the status patch
                text = generate_latest(memo["metrics"].registry).decode()
                assert "hubcull_servers_protected{" in text, text
                return text

            metrics = await kube.wait_for(counted, timeout=10)
        assert await hub.running_servers() >= {("ann", "")}
        assert ("bob", "") not in await hub.running_servers()
    assert (status["serversProtected"], status["probeFailedLastSweep"]) == (1, 0)
    assert [c["user"] for c in status["recentCulls"]] == ["bob"]
    labels = f'namespace="{NS}",policy="default"'
    assert f"hubcull_servers_protected{{{labels}}} 1.0" in metrics
    assert f'hubcull_probes_total{{{labels},result="ok"}} 2.0' in metrics


async def test_a_refused_pod_listing_culls_nothing_and_names_the_permission(
    kube: Kube, jupyter_hub: Hub, servers: dict[str, ServerLocation]
) -> None:
    hub = jupyter_hub
    for user in USERS:
        if not ((await hub.get_user(user))["servers"].get("") or {}).get("ready"):
            servers[user] = await start_server(hub, user)  # culled by the test before
        await hub.set_times(user, "", last_activity=ago(7200))
    await add_pods(kube, servers)
    kube.emulator["list", kube.emulator.resource(PODS)] << 403
    async with hubcull_operator(kube):
        await kube.create(secret(await hub.token([*MINIMAL_SCOPES, "tokens"])))
        await kube.create(
            cullpolicy(
                hub,
                idleTimeout="1h",
                every="10s",
                kernels={"protectBusy": True},
                selector={"users": list(USERS)},
            )
        )

        async def refused() -> dict:
            status = await policy_status(kube)
            assert condition(status, "Ready").get("reason") == "Forbidden", status
            return status

        status = await kube.wait_for(refused, timeout=30)
        ready = condition(status, "Ready")
        assert ready["status"] == "False"
        assert "pods list" in ready["message"] and "inspectServers" in ready["message"]
        assert {("ann", ""), ("bob", "")} <= await hub.running_servers()

        async def sweep_failed_event() -> list[dict]:
            events = [e for e in await kube.events_for(NS, "default") if e["type"] == "Warning"]
            assert any("pods list" in e["message"] for e in events), events
            return events

        await kube.wait_for(sweep_failed_event)


async def test_probe_tokens_live_with_the_policy_and_the_operator(
    kube: Kube, jupyter_hub: Hub, servers: dict[str, ServerLocation]
) -> None:
    """The operator probes through the pods with per-server tokens (recorded in front of each
    real server: never the policy's token), and deletes them when the policy is deleted and
    when it shuts down; a restarted operator makes new ones."""
    hub = jupyter_hub
    for user in USERS:
        if not ((await hub.get_user(user))["servers"].get("") or {}).get("ready"):
            servers[user] = await start_server(hub, user)
        await hub.set_times(user, "", started=ago(7200), last_activity=ago(0))
    token = await hub.token([*MINIMAL_SCOPES, "tokens"])
    policy = cullpolicy(
        hub,
        idleTimeout="1h",
        every="10s",
        dryRun=True,
        kernels={"idleFrom": "kernels"},
        selector={"users": list(USERS)},
    )

    async def probe_token_ids() -> dict[str, list[str]]:
        found = {}
        for user in USERS:
            answer = await hub.request("GET", f"/users/{user}/tokens")
            found[user] = [t["id"] for t in answer.json()["api_tokens"] if t["note"] == PROBE_NOTE]
        return found

    async def one_each() -> dict[str, list[str]]:
        found = await probe_token_ids()
        assert all(len(ids) == 1 for ids in found.values()), found
        return found

    async def none_left() -> dict[str, list[str]]:
        found = await probe_token_ids()
        assert all(ids == [] for ids in found.values()), found
        return found

    await kube.create_namespace(NS)
    async with contextlib.AsyncExitStack() as stack:
        recorders = {
            user: await stack.enter_async_context(
                fault_proxy(f"http://127.0.0.1:{servers[user].port}")
            )
            for user in USERS
        }
        for user, recorder in recorders.items():
            await create_pod(kube, singleuser_pod(user, port=recorder.port), ip="127.0.0.1")
        logs: list[str] = []
        engine_log = logging.getLogger("hubcull")
        level = engine_log.level
        engine_log.setLevel(logging.DEBUG)  # every line the operator writes, checked below
        stack.callback(engine_log.setLevel, level)
        async with hubcull_operator(kube) as (operator, _):
            await kube.create(secret(token))
            await kube.create(policy)
            first = await kube.wait_for(one_each, timeout=60)
            await kube.delete(CULLPOLICIES, NS, "default")
            await kube.wait_for(none_left, timeout=30)

            async def policy_gone() -> bool:
                assert await kube.get(CULLPOLICIES, NS, "default") is None
                return True

            await kube.wait_for(policy_gone, timeout=30)
            await kube.create(policy)
            second = await kube.wait_for(one_each, timeout=60)
            logs += [record.getMessage() for record in operator.records]
        assert await none_left() == {user: [] for user in USERS}  # deleted at shutdown
        async with hubcull_operator(kube) as (operator, _):  # a restart makes its own
            third = await kube.wait_for(one_each, timeout=60)
            logs += [record.getMessage() for record in operator.records]
        assert await none_left() == {user: [] for user in USERS}
        seen = [request for recorder in recorders.values() for request in recorder.seen]
    assert first.keys() == second.keys() == third.keys() == set(USERS)
    assert seen and all(token not in str(request.headers) for request in seen)
    probes = [r.headers.get("authorization", "") for r in seen]
    assert all(value.startswith("token ") for value in probes)
    # a new token per user in each of the three lives: first, re-created policy, restart
    # (the Hub may give a new token a deleted one's id, so the tokens themselves are compared)
    for user, recorder in recorders.items():
        used = {r.headers["authorization"] for r in recorder.seen}
        assert len(used) == 3, (user, len(used))
        # no probe token (nor the policy's) in the operator's log lines
        for value in used:
            assert not [line for line in logs if value.removeprefix("token ") in line]
    assert logs and not [line for line in logs if token in line]


async def test_pods_in_another_namespace_hold_the_servers_until_pod_namespace_says_where(
    kube: Kube, jupyter_hub: Hub, servers: dict[str, ServerLocation]
) -> None:
    """A common layout: the CullPolicy in the operator's namespace, the servers' pods in the
    Hub's. Without spec.kernels.podNamespace no server has a pod where the operator looks:
    that is the setup, not the servers, so nothing is stopped (not even bob, idle with no
    kernel), Ready is False with ProbesFailing and a Warning Event says the same. With
    podNamespace the probes work: ann's busy kernel keeps her server, bob is culled."""
    hub = jupyter_hub
    users_ns = "jhub-users"
    for user in USERS:
        if not ((await hub.get_user(user))["servers"].get("") or {}).get("ready"):
            servers[user] = await start_server(hub, user)
        await hub.set_times(user, "", last_activity=ago(7200))
    token = await hub.token([*MINIMAL_SCOPES, "tokens"])
    driver = await hub.token(["access:servers"], note="test driver")
    await kube.create_namespace(users_ns)
    for user, location in servers.items():
        pod = singleuser_pod(user, port=location.port, namespace=users_ns)
        await create_pod(kube, pod, ip="127.0.0.1")
    async with JupyterServer(servers["ann"].direct_url, driver) as ann:
        kernel = await ann.start_kernel()
        await ann.run_code(kernel["id"], SILENT, wait=False)
        await ann.wait_kernel(kernel["id"], "busy")
        async with hubcull_operator(kube):
            await kube.create(secret(token))
            spec = {"idleTimeout": "1h", "every": "10s", "selector": {"users": list(USERS)}}
            await kube.create(cullpolicy(hub, kernels={"protectBusy": True}, **spec))

            async def holding() -> dict:
                status = await policy_status(kube)
                assert condition(status, "Ready").get("reason") == "ProbesFailing", status
                return status

            status = await kube.wait_for(holding, timeout=30)
            ready = condition(status, "Ready")
            assert ready["status"] == "False"
            assert f"namespace {NS}" in ready["message"] and "podNamespace" in ready["message"]
            assert "first error: " in ready["message"]
            assert status["probeFailedLastSweep"] == 2 and status["culledLastSweep"] == 0
            assert {("ann", ""), ("bob", "")} <= await hub.running_servers()

            async def warned() -> list[dict]:
                events = await kube.events_for(NS, "default")
                found = [e for e in events if e["reason"] == "ProbesFailing"]
                assert found and found[0]["type"] == "Warning", events
                return found

            assert "podNamespace" in (await kube.wait_for(warned))[0]["message"]
            patch = {"spec": {"kernels": {"protectBusy": True, "podNamespace": users_ns}}}
            await kube.patch(CULLPOLICIES, NS, "default", patch)

            async def culled() -> dict:
                status = await policy_status(kube)
                assert status.get("culledTotal") == 1, status
                return status

            status = await kube.wait_for(culled, timeout=30)
        assert condition(status, "Ready")["reason"] == "SweepSucceeded"
        assert (status["serversProtected"], status["probeFailedLastSweep"]) == (1, 0)
        assert [c["user"] for c in status["recentCulls"]] == ["bob"]
        assert ("ann", "") in await hub.running_servers()
