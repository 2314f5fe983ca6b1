"""spec.kernels in the operator (via: pods): the real kopf operator on the Kubernetes
emulator, KubeSpawner-shaped Pod objects whose ``status.podIP`` and ``notebook-port`` point
at REAL single-user servers on 127.0.0.1, and a real Hub."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from prometheus_client import generate_latest

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
    token = await hub.token([*MINIMAL_SCOPES, "access:servers"])
    async with JupyterServer(servers["ann"].direct_url, token) as ann:
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
            metrics = generate_latest(memo["metrics"].registry).decode()
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
        await kube.create(secret(await hub.token([*MINIMAL_SCOPES, "access:servers"])))
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
    token = await hub.token([*MINIMAL_SCOPES, "access:servers"])
    await kube.create_namespace(users_ns)
    for user, location in servers.items():
        pod = singleuser_pod(user, port=location.port, namespace=users_ns)
        await create_pod(kube, pod, ip="127.0.0.1")
    async with JupyterServer(servers["ann"].direct_url, token) as ann:
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
