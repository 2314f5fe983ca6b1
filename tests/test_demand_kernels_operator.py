"""spec.demand never stops a protected server: the real operator on the emulator, a real Hub
with REAL single-user servers (a kernel running code in one of them), pods that point at
them, and a pod waiting for a GPU."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.demand_pods import GPU, running_pod, waiting_pod
from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.jupyter import JupyterServer, start_server
from tests.support.kube import Kube
from tests.support.operator_env import NS, cullpolicy, hubcull_operator, secret, wait_status
from tests.support.pods import PODS
from tests.support.scenario import ago

pytestmark = [pytest.mark.k8s, pytest.mark.hub]

SILENT = "import time; time.sleep(1200)"


async def test_a_busy_server_is_never_stopped_for_demand(kube: Kube, jupyter_hub: Hub) -> None:
    """ann's server is the idlest by the Hub but runs code: bob's is stopped instead."""
    hub = jupyter_hub
    ann, bob = await asyncio.gather(start_server(hub, "ann"), start_server(hub, "bob"))
    token = await hub.token([*MINIMAL_SCOPES, "tokens"])
    driver = await hub.token(["access:servers"], note="test driver")
    async with JupyterServer(ann.direct_url, driver) as ann_api:
        kernel = await ann_api.start_kernel()
        await ann_api.run_code(kernel["id"], SILENT, wait=False)
        await ann_api.wait_kernel(kernel["id"], "busy")
        await hub.set_times("ann", "", last_activity=ago(5 * 3600))
        await hub.set_times("bob", "", last_activity=ago(2 * 3600))
        await kube.create_namespace(NS)
        for location in (ann, bob):
            pod = await running_pod(kube, location.user, limits={GPU: "1"})
            ports = [{"name": "notebook-port", "containerPort": location.port}]
            containers = [{**pod["spec"]["containers"][0], "ports": ports}]
            await kube.patch(
                PODS, NS, pod["metadata"]["name"], {"spec": {"containers": containers}}
            )
        await waiting_pod(kube, "carol", since=120)
        async with hubcull_operator(kube):
            await kube.create(secret(token))
            await kube.create(
                cullpolicy(
                    hub,
                    every="10m",
                    idleTimeout="24h",
                    kernels={"protectBusy": True},
                    demand={"minIdle": "15m", "after": "5s"},
                    selector={"users": ["ann", "bob"]},
                )
            )
            status = await wait_status(kube, lambda s: s.get("culledTotal") == 1, timeout=60)
        running = await hub.running_servers()
    assert ("ann", "") in running and ("bob", "") not in running
    [record] = status["recentCulls"]
    assert (record["user"], record["reason"], record["for"]) == ("bob", "demand", "jupyter-carol")
    # the probes found the pods in the demand watch's cache: its one listing, no other
    listings = [
        r
        for r in kube.emulator
        if r.method == "GET"
        and r.resource is not None
        and r.resource.plural == "pods"
        and r.name is None
        and not r.params.get("watch")
    ]
    assert len(listings) == 1, [str(r.url) for r in listings]
