"""`hubcull run` as the container runs it, and what uninstalling leaves behind."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from hubcull.k8s.handlers import FINALIZER
from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.kube import Kube, run_operator_process
from tests.support.operator_env import (
    CULLPOLICIES,
    NS,
    condition,
    cullpolicy,
    hubcull_operator,
    policy_status,
    secret,
)
from tests.support.scenario import populate

pytestmark = [pytest.mark.k8s, pytest.mark.hub]

HUBCULL = str(Path(sys.executable).with_name("hubcull"))


async def test_hubcull_run_serves_liveness_metrics_and_culls(
    kube: Kube, hub: Hub, tmp_path: Path, unused_tcp_port_factory
) -> None:
    await populate(hub, {("idle", ""): 7200, ("busy", ""): 60})
    await kube.create_namespace(NS)
    await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
    await kube.create(cullpolicy(hub))
    health, metrics = unused_tcp_port_factory(), unused_tcp_port_factory()
    command = [
        HUBCULL,
        "run",
        "--namespace",
        NS,
        "--metrics-port",
        str(metrics),
        "--liveness",
        f"http://127.0.0.1:{health}/healthz",
    ]
    async with (
        run_operator_process(kube, command, log_path=tmp_path / "op.log"),
        httpx.AsyncClient() as client,
    ):

        async def culled() -> bool:
            return (await policy_status(kube)).get("culledTotal") == 1

        await kube.wait_for(culled, timeout=60)

        async def healthy() -> bool:
            return (await client.get(f"http://127.0.0.1:{health}/healthz")).status_code == 200

        await kube.wait_for(healthy, timeout=30)
        text = (await client.get(f"http://127.0.0.1:{metrics}/metrics")).text
        assert (
            'hubcull_servers_culled_total{namespace="jhub",policy="default",reason="idle"} 1.0'
            in text
        )
    assert await hub.running_servers() == {("busy", "")}


async def test_hubcull_run_without_a_namespace_says_what_to_do(tmp_path: Path) -> None:
    import asyncio
    import os

    env = {k: v for k, v in os.environ.items() if k != "POD_NAMESPACE"}
    proc = await asyncio.create_subprocess_exec(
        HUBCULL, "run", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "--namespace" in err.decode() and "--all-namespaces" in err.decode()


async def test_stopping_the_operator_leaves_no_policy_stuck_in_terminating(
    kube: Kube, hub: Hub
) -> None:
    async with hubcull_operator(kube):
        await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
        await kube.create(cullpolicy(hub))

        async def swept() -> bool:
            status = await policy_status(kube)
            return condition(status, "Ready").get("status") == "True"

        await kube.wait_for(swept)
        policy = await kube.get(CULLPOLICIES, NS, "default")
        assert policy is not None and FINALIZER in policy["metadata"]["finalizers"]
    policy = await kube.get(CULLPOLICIES, NS, "default")
    assert policy is not None and FINALIZER not in (policy["metadata"].get("finalizers") or [])
    await kube.delete(CULLPOLICIES, NS, "default")
    assert await kube.get(CULLPOLICIES, NS, "default") is None
