"""spec.usage in the operator: the real kopf operator on the Kubernetes emulator with
KubeSpawner-shaped pods, a REAL Prometheus (stopped and started again) scraping the pods'
usage series, a real Hub with FakeSpawner servers, and the Prometheus token in a Secret."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest

from hubcull.engine.durations import parse_duration
from tests.support.faultproxy import Fault, fault_proxy
from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.kube import Kube
from tests.support.leaks import Capture, assert_absent
from tests.support.operator_env import (
    condition,
    cullpolicy,
    hubcull_operator,
    policy_status,
    secret,
)
from tests.support.pods import create_pod, singleuser_pod
from tests.support.prometheus import Usage
from tests.support.scenario import populate

pytestmark = [pytest.mark.k8s, pytest.mark.hub, pytest.mark.prometheus]

MIN = 60
HOUR = 3600
PROM_TOKEN = "prom-canary-" + "7f3a9c2e5b8d4016a2c4e6f8"
PROM_SECRET = {"name": "prometheus", "key": "token"}


@pytest.fixture
def logs() -> Iterator[Capture]:
    capture = Capture()
    names = ["", "kopf", "httpx", "httpcore", "hubcull"]
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    logging.getLogger().addHandler(capture)
    try:
        yield capture
    finally:
        logging.getLogger().removeHandler(capture)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


async def gpu_lab(kube: Kube, hub: Hub, usage: Usage) -> str:
    """ann: the Hub sees her active, her GPU idle for 30 min; bob: idle by the Hub, no
    series; cat: idle by the Hub, 2 cores busy. Their pods in the test's namespace. Returns
    the Hub token."""
    ns = usage.namespace
    await populate(
        hub,
        {("ann", ""): 60, ("bob", ""): 2 * HOUR, ("cat", ""): 2 * HOUR},
        started={(user, ""): 3 * HOUR for user in ("ann", "bob", "cat")},
    )
    await usage.gpu("jupyter-ann", 0.0, history=[(30 * MIN, 0.0)])
    await usage.cpu("jupyter-cat", 2.0, history=[(30 * MIN, 2.0)])
    await kube.create_namespace(ns)
    for user in ("ann", "bob", "cat"):
        await create_pod(kube, singleuser_pod(user, namespace=ns))
    return await hub.token(MINIMAL_SCOPES)


def gpu_policy(hub: Hub, usage: Usage, url: str) -> dict:
    prometheus = {"url": url, "tokenSecretRef": PROM_SECRET}
    return cullpolicy(
        hub,
        namespace=usage.namespace,
        every="10s",
        idleTimeout="20m",
        usage={"prometheus": prometheus, "busyCPU": 0.5, "busyGPU": 5, "cullIdleGPU": True},
    )


async def apply(kube: Kube, hub_token: str, policy: dict) -> None:
    ns = policy["metadata"]["namespace"]
    await kube.create(secret(hub_token, namespace=ns))
    await kube.create(secret(PROM_TOKEN, namespace=ns, **PROM_SECRET))
    await kube.create(policy)


async def wait_unavailable(kube: Kube, ns: str) -> dict:
    async def unavailable() -> dict:
        status = await policy_status(kube, namespace=ns)
        assert condition(status, "Ready").get("reason") == "UsageUnavailable", status
        return status

    return await kube.wait_for(unavailable, timeout=30)


async def wait_culled(kube: Kube, ns: str, count: int) -> dict:
    async def swept() -> dict:
        status = await policy_status(kube, namespace=ns)
        assert status.get("culledTotal") == count, status
        return status

    return await kube.wait_for(swept, timeout=40)


async def test_prometheus_down_culls_nothing_and_culling_resumes_when_it_is_back(
    kube: Kube, clean_hub: Hub, usage: Usage, logs: Capture
) -> None:
    hub, ns, prometheus = clean_hub, usage.namespace, usage.prometheus
    populated = time.time()
    hub_token = await gpu_lab(kube, hub, usage)
    await prometheus.stop()
    try:
        async with hubcull_operator(kube, namespaces=(ns,)) as (_, memo):
            await apply(kube, hub_token, gpu_policy(hub, usage, prometheus.url))
            down = await wait_unavailable(kube, ns)
            ready = condition(down, "Ready")
            assert ready["status"] == "False"
            assert f"Prometheus at {prometheus.url} cannot be reached" in ready["message"]
            assert not down.get("culledTotal")
            assert len(await hub.running_servers()) == 3

            async def sweep_failed() -> list[dict]:
                events = await kube.events_for(ns, "default")
                failed = [e for e in events if e["reason"] == "SweepFailed"]
                assert failed and "UsageUnavailable" in failed[0]["message"], events
                return events

            await kube.wait_for(sweep_failed)
            await prometheus.start()
            status = await wait_culled(kube, ns, 2)

            async def culled_events() -> list[str]:  # kopf posts events in the background
                events = await kube.events_for(ns, "default")
                culled = sorted(e["message"] for e in events if e["reason"] == "Culled")
                assert len(culled) == 2, events
                return culled

            culled = await kube.wait_for(culled_events)
            elapsed = time.time() - populated  # bob's idle time grew this much at most
            events = await kube.events_for(ns, "default")
            metrics = generate_latest(memo["metrics"].registry).decode()
    finally:
        await prometheus.start()
    assert condition(status, "Ready")["reason"] == "SweepSucceeded"
    assert {c["user"]: c["reason"] for c in status["recentCulls"]} == {
        "ann": "idleGPU",
        "bob": "idle",
    }
    assert status["serversProtected"] == 1  # cat: 2 cores busy
    assert await hub.running_servers() == {("cat", "")}
    # bob: idle 2 h when populated, and for however long the restarts took since then
    bob = next(c for c in status["recentCulls"] if c["user"] == "bob")
    assert 2 * HOUR - 1 <= bob["idleSeconds"] <= 2 * HOUR + elapsed + 1, (bob, elapsed)
    ann_event, bob_event = culled
    assert ann_event == "stopped ann (GPU idle 20m)"  # the GPU's window: idleTimeout
    said = re.fullmatch(r"stopped bob \(idle (\S+)\)", bob_event)
    assert said, bob_event
    assert abs(parse_duration(said.group(1)) - bob["idleSeconds"]) <= 30  # to the minute
    labels = f'namespace="{ns}",policy="default"'
    assert f'hubcull_servers_culled_total{{{labels},reason="idleGPU"}} 1.0' in metrics
    assert f'hubcull_prometheus_queries_total{{{labels},result="unreachable"}}' in metrics
    success = f'hubcull_prometheus_queries_total{{{labels},result="success"}} '
    assert float(metrics.split(success)[1].split()[0]) >= 3  # cpu, gpu, gpu-idle
    everything = "\n".join([json.dumps(status), json.dumps(events), metrics, *logs.lines])
    assert_absent(PROM_TOKEN, "status, events, metrics or logs", everything)


async def test_prometheus_answering_an_error_culls_nothing_until_it_answers(
    kube: Kube, clean_hub: Hub, usage: Usage
) -> None:
    hub, ns = clean_hub, usage.namespace
    hub_token = await gpu_lab(kube, hub, usage)
    error = {"status": "error", "errorType": "unavailable", "error": "TSDB not ready"}
    async with fault_proxy(usage.prometheus.url) as proxy:
        proxy.inject(Fault("status", r"^GET /api/v1/query", 503, body=json.dumps(error).encode()))
        async with hubcull_operator(kube, namespaces=(ns,)):
            await apply(kube, hub_token, gpu_policy(hub, usage, proxy.url))
            status = await wait_unavailable(kube, ns)
            assert "503 unavailable: TSDB not ready" in condition(status, "Ready")["message"]
            assert len(await hub.running_servers()) == 3
            assert {s.headers["authorization"] for s in proxy.requests()} == {
                f"Bearer {PROM_TOKEN}"
            }
            proxy.clear()
            status = await wait_culled(kube, ns, 2)
    assert {c["user"]: c["reason"] for c in status["recentCulls"]} == {
        "ann": "idleGPU",
        "bob": "idle",
    }
    assert await hub.running_servers() == {("cat", "")}


async def test_a_missing_prometheus_token_secret_is_named(
    kube: Kube, clean_hub: Hub, usage: Usage
) -> None:
    hub, ns = clean_hub, usage.namespace
    hub_token = await gpu_lab(kube, hub, usage)
    async with hubcull_operator(kube, namespaces=(ns,)):
        await kube.create(secret(hub_token, namespace=ns))
        await kube.create(gpu_policy(hub, usage, usage.prometheus.url))

        async def missing() -> dict:
            status = await policy_status(kube, namespace=ns)
            assert condition(status, "Ready").get("reason") == "TokenSecretMissing", status
            return condition(status, "Ready")

        ready = await kube.wait_for(missing, timeout=30)
    assert ready["message"] == (
        f"Prometheus token Secret prometheus with key token is not in namespace {ns}; "
        "create the Secret in the policy's namespace or fix spec.usage.prometheus."
    )
    assert len(await hub.running_servers()) == 3
