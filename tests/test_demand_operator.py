"""spec.demand in the operator: the real kopf operator on the Kubernetes emulator, a real Hub,
KubeSpawner-shaped pods with requests and nodeSelectors, and Pending pods the way
kube-scheduler v1.36 reports them. Every policy here sweeps every 10 minutes: whatever is
stopped within seconds was stopped because a pod waited."""

from __future__ import annotations

import logging
import time

import kmock
import pytest
from prometheus_client import generate_latest

import hubcull.k8s.demand as demand_module
from tests.support.demand_pods import (
    CPU_MESSAGE,
    GPU,
    TAINT_MESSAGE,
    autoscaler_event,
    running_pod,
    waiting_pod,
)
from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.kube import Kube
from tests.support.operator_env import (
    CULLPOLICIES,
    NS,
    condition,
    cullpolicy,
    hubcull_operator,
    secret,
    wait_status,
)
from tests.support.pods import PODS
from tests.support.scenario import populate

pytestmark = [pytest.mark.k8s, pytest.mark.hub]

HOUR = 3600
DEMAND = {"minIdle": "15m", "after": "5s"}
GPU_POOL = {"pool": "gpu"}


def gpu_policy(hub: Hub, **spec) -> dict:
    """Every 10 minutes, idle after a day: only demand stops anything in these tests."""
    fields = {"every": "10m", "idleTimeout": "24h", "demand": DEMAND, **spec}
    return cullpolicy(hub, **fields)


async def gpu_servers(kube: Kube, hub: Hub, idle: dict[str, float], cpu_only=()) -> None:
    """Running servers idle for the given seconds, each with a GPU pod in the gpu pool
    (or, for ``cpu_only``, a CPU pod on a CPU node)."""
    await populate(hub, {(user, ""): seconds for user, seconds in idle.items()})
    await kube.create_namespace(NS)
    for user in idle:
        if user in cpu_only:
            await running_pod(kube, user, node="cpu-1", requests={"cpu": "4", "memory": "8Gi"})
        else:
            await running_pod(
                kube,
                user,
                node="gpu-1",
                requests={"cpu": "500m", "memory": "1Gi"},
                limits={GPU: "1"},
                node_selector=GPU_POOL,
            )


async def pod_events(kube: Kube, pod: str, reason: str = "FreeingRoom") -> list[dict]:
    return [e for e in await kube.events_for(NS, pod, kind="Pod") if e["reason"] == reason]


async def test_a_waiting_gpu_pod_gets_the_idlest_gpu_server_stopped(
    kube: Kube, clean_hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    """Two pods wait for a GPU; the idlest GPU server is stopped for the one that waited
    longest, and only that one: the idle CPU server holds no GPU and the other GPU server
    has not been idle for minIdle."""
    caplog.set_level(logging.INFO, logger="hubcull")
    hub = clean_hub
    await gpu_servers(
        kube,
        hub,
        {"gpu-old": 3 * HOUR + 300, "gpu-young": 300, "cpu-idle": 5 * HOUR},
        cpu_only={"cpu-idle"},
    )
    await waiting_pod(kube, "newcomer", since=120, node_selector=GPU_POOL)
    await waiting_pod(kube, "later", since=60, node_selector=GPU_POOL)
    async with hubcull_operator(kube) as (_, memo):
        await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
        await kube.create(gpu_policy(hub))
        status = await wait_status(kube, lambda s: s.get("culledTotal") == 1)
        [freeing] = await kube.wait_for(lambda: pod_events(kube, "jupyter-newcomer"))
        culled = [e for e in await kube.events_for(NS, "default") if e["reason"] == "Culled"]
        metrics = generate_latest(memo["metrics"].registry).decode()
    assert ("gpu-old", "") not in await hub.running_servers()
    assert {("gpu-young", ""), ("cpu-idle", "")} <= await hub.running_servers()
    [record] = status["recentCulls"]
    assert record["reason"] == "demand" and record["for"] == "jupyter-newcomer"
    assert record["user"] == "gpu-old" and record["idleSeconds"] >= 3 * HOUR
    assert (status["serversWaiting"], status["freedLastSweep"]) == (2, 1)
    assert "2 pods waiting for room, freed 1" in condition(status, "Ready")["message"]
    assert (
        "no idle server can make room for: jupyter-later" in condition(status, "Ready")["message"]
    )
    assert freeing["type"] == "Normal"
    assert freeing["message"].startswith("stopping an idle server (gpu-old, idle 3h")
    assert freeing["message"].endswith(f"to free {GPU} for this server")
    assert [e["message"] for e in culled] == [
        culled[0]["message"]
    ] and "gpu-old (demand, idle 3h" in culled[0]["message"]
    assert not await pod_events(kube, "jupyter-later")
    labels = f'namespace="{NS}",policy="default"'
    assert f"hubcull_servers_waiting{{{labels}}} 2.0" in metrics
    assert f'hubcull_servers_culled_total{{{labels},reason="demand"}} 1.0' in metrics
    assert f"hubcull_demand_seconds_count{{{labels}}} 1.0" in metrics
    # the operator's log: one line for the stop, naming the pod it was for and the limit
    stops = [r.getMessage() for r in caplog.records if "stopped gpu-old" in r.getMessage()]
    assert len(stops) == 1, stops
    assert stops[0].startswith(f"{NS}/default: stopped gpu-old: demand (idle 3h")
    assert stops[0].endswith(f"demand.minIdle 15m; frees {GPU} for pod jupyter-newcomer)")


async def test_pods_that_do_not_wait_stop_nothing(
    kube: Kube, clean_hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    """A pod nominated for a node (a preemption makes room), a z2jh user placeholder, a pod
    the autoscaler is adding a node for (scaleUpWait), a pod Unschedulable for less than
    ``after``, and a pod no stop can help (a taint) never get a server stopped; the last is
    reported as unfreeable."""
    caplog.set_level(logging.INFO, logger="hubcull")
    hub = clean_hub
    await gpu_servers(kube, hub, {"gpu-old": 3 * HOUR + 300})
    await waiting_pod(kube, "nominated", since=600, nominated="gpu-2")
    await waiting_pod(
        kube,
        "placeholder",
        since=600,
        name="user-placeholder-0",
        labels={"component": "user-placeholder"},
    )
    scaling = await waiting_pod(kube, "scaling", since=60)
    await autoscaler_event(kube, scaling, "TriggeredScaleUp")
    await waiting_pod(kube, "fresh", since=0)
    await waiting_pod(kube, "tainted", since=600, message=TAINT_MESSAGE)
    async with hubcull_operator(kube):
        await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
        await kube.create(gpu_policy(hub, demand={**DEMAND, "after": "30s", "scaleUpWait": "4m"}))
        status = await wait_status(kube, lambda s: "serversWaiting" in s)
    assert ("gpu-old", "") in await hub.running_servers()
    assert (status["serversWaiting"], status["freedLastSweep"], status["culledTotal"]) == (1, 0, 0)
    ready = condition(status, "Ready")
    assert ready["status"] == "True"
    assert "unfreeable (no stop can help): jupyter-tainted" in ready["message"]
    logged = [r.getMessage() for r in caplog.records if "unfreeable" in r.getMessage()]
    assert logged and logged[0] == (
        f"{NS}/default: pod jupyter-tainted waits but is unfreeable (no stop can help): "
        + TAINT_MESSAGE
    )


async def test_a_policy_sweeping_every_ten_minutes_frees_room_seconds_after_after(
    kube: Kube, clean_hub: Hub
) -> None:
    """The pod's Unschedulable starts while the operator runs; the stop comes once ``after``
    (5 s) has passed, not before and not at the next sweep."""
    hub = clean_hub
    await gpu_servers(kube, hub, {"gpu-old": 3 * HOUR + 300})
    async with hubcull_operator(kube):
        await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
        await kube.create(gpu_policy(hub))
        await wait_status(kube, lambda s: s.get("serversWaiting") == 0)
        await waiting_pod(kube, "newcomer", since=0)
        started = time.monotonic()
        status = await wait_status(kube, lambda s: s.get("culledTotal") == 1, timeout=30)
        took = time.monotonic() - started
    assert 3.5 <= took < 15, took  # after is 5 s (condition times have whole seconds)
    assert status["recentCulls"][0]["for"] == "jupyter-newcomer"
    assert ("gpu-old", "") not in await hub.running_servers()


async def test_safety_limits_hold_back_demand_stops(kube: Kube, clean_hub: Hub) -> None:
    """Ten pods wait, ten idle GPU servers could make room: maxCullsPerSweep 3 stops three
    (the idlest), holds back the rest and says so."""
    hub = clean_hub
    idle = {f"gpu{i}": (2 + i) * HOUR for i in range(10)}
    await gpu_servers(kube, hub, idle)
    for i in range(10):
        await waiting_pod(
            kube, f"waiting{i}", since=300 - i, requests={"cpu": "100m"}, limits={GPU: "1"}
        )
    async with hubcull_operator(kube):
        await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
        await kube.create(gpu_policy(hub, safety={"maxCullsPerSweep": 3}))
        status = await wait_status(kube, lambda s: s.get("culledTotal") == 3)
    assert condition(status, "Throttled")["status"] == "True"
    assert "Held back 7 of 10" in condition(status, "Throttled")["message"]
    stopped = sorted(r["user"] for r in status["recentCulls"])
    assert stopped == ["gpu7", "gpu8", "gpu9"]
    assert {r["reason"] for r in status["recentCulls"]} == {"demand"}
    assert len({r["for"] for r in status["recentCulls"]}) == 3
    assert len(await hub.running_servers() & {(u, "") for u in idle}) == 7


async def test_a_dry_run_reports_what_it_would_free(kube: Kube, clean_hub: Hub) -> None:
    hub = clean_hub
    await gpu_servers(kube, hub, {"gpu-old": 3 * HOUR + 300})
    await waiting_pod(kube, "newcomer", since=120, message=CPU_MESSAGE, requests={"cpu": "1"})
    # the GPU server requests 500m: it cannot cover a whole core, so ask for half of one
    await kube.patch(
        PODS,
        NS,
        "jupyter-newcomer",
        {
            "spec": {
                "containers": [{"name": "notebook", "resources": {"requests": {"cpu": "250m"}}}]
            }
        },
    )
    async with hubcull_operator(kube):
        await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
        await kube.create(gpu_policy(hub, dryRun=True))
        status = await wait_status(kube, lambda s: s.get("culledLastSweep") == 1)
    assert ("gpu-old", "") in await hub.running_servers()
    [record] = status["recentCulls"]
    assert (record["reason"], record["dryRun"], record["for"]) == (
        "demand",
        True,
        "jupyter-newcomer",
    )
    assert status["culledTotal"] == 0
    assert "would free 1" in condition(status, "Ready")["message"]
    assert not await pod_events(kube, "jupyter-newcomer")


async def test_a_pod_scheduled_before_the_stop_gets_nothing_stopped(
    kube: Kube, clean_hub: Hub
) -> None:
    """The check just before the stop reads the pod again: the scheduler placed it meanwhile
    (the API server answers that read with the pod bound to a node), so nothing is stopped."""
    hub = clean_hub
    await gpu_servers(kube, hub, {"gpu-old": 3 * HOUR + 300})
    pod = await waiting_pod(kube, "newcomer", since=120)
    scheduled = {
        **pod,
        "spec": {**pod["spec"], "nodeName": "gpu-2"},
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]},
    }
    emulator = kube.emulator
    pod_read = emulator[
        kmock.action.FETCH,
        emulator.resource(PODS),
        kmock.namespace(NS),
        kmock.name("jupyter-newcomer"),
    ]
    pod_read << scheduled
    async with hubcull_operator(kube):
        await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
        await kube.create(gpu_policy(hub))
        status = await wait_status(kube, lambda s: s.get("serversWaiting") == 1)
    assert ("gpu-old", "") in await hub.running_servers()
    assert status["culledTotal"] == 0 and status["freedLastSweep"] == 0
    assert "1 demand stops called off at the last check" in condition(status, "Ready")["message"]


async def test_a_restarted_operator_frees_room_for_a_pod_that_already_waits(
    kube: Kube, clean_hub: Hub
) -> None:
    """The policy swept a minute ago (every 10m): after a restart the loop would resume that
    schedule, but the pod already waiting wakes it at once."""
    hub = clean_hub
    await gpu_servers(kube, hub, {"gpu-old": 3 * HOUR + 300})
    await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
    async with hubcull_operator(kube):
        await kube.create(gpu_policy(hub))
        await wait_status(kube, lambda s: s.get("serversWaiting") == 0)
    await waiting_pod(kube, "newcomer", since=120)
    async with hubcull_operator(kube):
        started = time.monotonic()
        status = await wait_status(kube, lambda s: s.get("culledTotal") == 1)
    assert time.monotonic() - started < 15
    assert status["recentCulls"][0]["for"] == "jupyter-newcomer"


@pytest.mark.parametrize(
    ("verb", "reaction"),
    [
        ("pods list", (kmock.action.LIST, PODS)),
        ("pods watch", (kmock.action.WATCH, PODS)),
        ("events list", (kmock.action.LIST, "v1/events")),
    ],
    ids=["pods-list", "pods-watch", "events-list"],
)
async def test_missing_rbac_names_the_verb_and_stops_nothing(
    kube: Kube, clean_hub: Hub, verb: str, reaction: tuple[str, str]
) -> None:
    hub = clean_hub
    await gpu_servers(kube, hub, {"gpu-old": 3 * HOUR + 300})
    await waiting_pod(kube, "newcomer", since=120)
    action, resource = reaction
    kube.emulator[action, kube.emulator.resource(resource)] << 403
    async with hubcull_operator(kube, allow_errors=True):
        await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
        await kube.create(gpu_policy(hub))
        status = await wait_status(
            kube, lambda s: condition(s, "Ready").get("reason") == "Forbidden"
        )
    ready = condition(status, "Ready")
    assert ready["status"] == "False"
    assert verb in ready["message"] and "inspectServers" in ready["message"]
    assert ("gpu-old", "") in await hub.running_servers()
    assert (await kube.get(CULLPOLICIES, NS, "default"))["status"].get("culledTotal", 0) == 0


def access_reviews(kube: Kube) -> list[dict]:
    """The SelfSubjectAccessReviews the operator posted, oldest first."""
    return [
        r.data["spec"]["resourceAttributes"]
        for r in kube.emulator
        if r.resource is not None and r.resource.plural == "selfsubjectaccessreviews"
    ]


async def test_a_refused_events_create_stops_nothing_until_rbac_grants_it(
    kube: Kube, clean_hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RBAC lets the operator watch pods and list Events but not create Events (the
    FreeingRoom Event a waiting user sees on the spawn page): it asks RBAC first, stops no
    server, and Ready says which verb is missing and how to grant it. The pod still waits,
    so the policy is woken again (every 30 s, doubling to 5 min; 1 s here) and once a role
    grants the verb, room is freed with no edit and long before ``every: 10m``."""
    monkeypatch.setattr(demand_module, "RETRY_AFTER_FAILURE_SECONDS", 1.0)
    hub = clean_hub
    await gpu_servers(kube, hub, {"gpu-old": 3 * HOUR + 300})
    await waiting_pod(kube, "newcomer", since=120)
    kube.emulator.deny("create", "events", NS)
    async with hubcull_operator(kube, allow_errors=True):
        await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
        await kube.create(gpu_policy(hub))
        status = await wait_status(
            kube, lambda s: condition(s, "Ready").get("reason") == "Forbidden"
        )
        ready = condition(status, "Ready")
        assert ready["status"] == "False"
        assert f"RBAC refused events create in namespace {NS}" in ready["message"]
        assert "create and list on events" in ready["message"]
        assert "inspectServers=true" in ready["message"]
        assert {"namespace": NS, "verb": "create", "group": "", "resource": "events"} in (
            access_reviews(kube)
        )
        assert ("gpu-old", "") in await hub.running_servers()
        assert status.get("culledTotal", 0) == 0 and not status.get("recentCulls")

        reviews = len(access_reviews(kube))
        await kube.wait_for(lambda: len(access_reviews(kube)) > reviews)  # woken, refused again
        assert ("gpu-old", "") in await hub.running_servers()

        kube.emulator.allow("create", "events", NS)
        status = await wait_status(kube, lambda s: s.get("culledTotal") == 1)
        [freeing] = await kube.wait_for(lambda: pod_events(kube, "jupyter-newcomer"))
    assert condition(status, "Ready")["status"] == "True"
    assert ("gpu-old", "") not in await hub.running_servers()
    [record] = status["recentCulls"]
    assert (record["user"], record["reason"], record["for"]) == (
        "gpu-old",
        "demand",
        "jupyter-newcomer",
    )
    assert freeing["message"].startswith("stopping an idle server (gpu-old")


async def test_room_on_its_way_is_not_made_twice(kube: Kube, clean_hub: Hub) -> None:
    """The pod stays Unschedulable while the stopped server's pod terminates: a sweep soon
    after (here: a spec edit) stops no second server for it."""
    hub = clean_hub
    await gpu_servers(kube, hub, {"gpu-old": 3 * HOUR + 300, "gpu-older": 4 * HOUR + 300})
    await waiting_pod(kube, "newcomer", since=120)
    async with hubcull_operator(kube):
        await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
        await kube.create(gpu_policy(hub))
        await wait_status(kube, lambda s: s.get("culledTotal") == 1)
        await kube.patch(CULLPOLICIES, NS, "default", {"spec": {"idleTimeout": "23h"}})
        status = await wait_status(kube, lambda s: s.get("observedGeneration") == 2)
    assert status["culledTotal"] == 1 and status["serversWaiting"] == 1
    assert status["recentCulls"][0]["user"] == "gpu-older"
    assert ("gpu-old", "") in await hub.running_servers()
