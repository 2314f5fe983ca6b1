"""``python -m benchmarks.demand``: how fast ``spec.demand`` frees room, and what it costs.

Reaction (real parts): a real JupyterHub (the tests' fixture, FakeSpawner) behind the tests'
recording proxy, the tests' Kubernetes API emulator and the real hubcull operator (kopf,
in-process). ``--servers`` idle GPU servers with KubeSpawner-shaped pods; one CullPolicy with
``every: 10m``, ``demand: {minIdle: 15m, after: 5s}``. Then, one after another, ``--pods``
pods become Unschedulable (``Insufficient nvidia.com/gpu``, kube-scheduler v1.36's message);
for each, the reaction is the time from the moment its ``after`` has passed (its
``lastTransitionTime`` plus 5 s, on the API server's clock, which is this machine's) to the
victim's ``DELETE`` reaching the Hub (the proxy's timestamp). The Kubernetes API requests of
the run are counted by kind.

Reference (``--skip-timer`` leaves it out): the same setup without ``spec.demand``, a
timer-only culler with ``every: 30s`` (``--timer-every``), each waiting pod paired with a
server that crosses ``idleTimeout`` exactly when the pod's ``after`` has passed (the timer's
best case); the wait is measured the same way, and printed beside the reaction with the ratio.

Scale (the pure steps, in this process): ``--scale-servers`` running servers, each with a pod
(GPU or CPU, on 50 nodes, two node pools), and ``--scale-waiting`` waiting pods: the time to
classify every pod (``demand_data``) and to decide with and without ``spec.demand``
(``decide``), the CPU time and the peak of Python memory allocated by those steps.

Nothing is asserted; the numbers go to stdout as Markdown (docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import kopf
from tests.support.demand_pods import (
    GPU,
    GPU_MESSAGE,
    running_pod,
    running_status,
    unschedulable_status,
    waiting_pod,
    with_resources,
)
from tests.support.faultproxy import FaultProxy, fault_proxy
from tests.support.jhub import MINIMAL_SCOPES, Hub, start_hub
from tests.support.kube import Kube, kube_server, run_operator
from tests.support.operator_env import NS, cullpolicy, policy_status, secret
from tests.support.pods import singleuser_pod
from tests.support.scenario import populate

from hubcull.engine.hub.model import Server, Snapshot, User
from hubcull.engine.rules.decisions import decide
from hubcull.engine.rules.demand import demand_data, parse_time
from hubcull.engine.rules.policy import parse_spec
from hubcull.k8s import handlers
from hubcull.k8s.metrics import Metrics

AFTER = 5.0
HOUR = 3600


@contextlib.asynccontextmanager
async def hub_and_kube() -> AsyncIterator[tuple[Hub, FaultProxy, Kube]]:
    """A real JupyterHub behind the tests' recording proxy and the tests' Kubernetes API
    emulator, in a temporary directory; ``KUBECONFIG`` points at the emulator (kopf's
    login, and an operator subprocess, read it)."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        async with (
            start_hub(directory / "hub") as hub,
            fault_proxy(hub.public_url) as proxy,
            kube_server(directory) as kube,
        ):
            os.environ["KUBECONFIG"] = str(kube.kubeconfig_path)
            yield hub, proxy, kube


def due(pod: dict[str, Any]) -> datetime:
    """When a waiting pod's ``after`` passes: its ``lastTransitionTime`` (the API server's
    clock, which is this machine's; whole seconds) plus :data:`AFTER`."""
    since = parse_time(pod["status"]["conditions"][0]["lastTransitionTime"])
    assert since is not None
    return since + timedelta(seconds=AFTER)


def request_kinds(requests: Iterable[Any]) -> Counter[str]:
    """Kubernetes API requests by method and resource (watches apart)."""
    return Counter(
        f"{r.method} {r.resource.plural if r.resource else r.url.path}"
        + (" (watch)" if r.params.get("watch") else "")
        for r in requests
    )


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def gpu_pods(kube: Any, users: Iterable[str]) -> None:
    """A running KubeSpawner-shaped pod with one GPU for each user, on four nodes in turn."""
    for i, user in enumerate(users):
        await running_pod(
            kube,
            user,
            node=f"gpu-{i % 4}",
            requests={"cpu": "500m", "memory": "1Gi"},
            limits={GPU: "1"},
        )


async def reaction(servers: int, pods: int) -> dict[str, Any]:
    """Run the reaction measurement; returns the samples and the request counts."""
    async with hub_and_kube() as (hub, proxy, kube):
        users = {f"gpu{i:03d}": 3 * HOUR + 60 * i for i in range(servers)}
        await populate(hub, {(u, ""): idle for u, idle in users.items()})
        await kube.create_namespace(NS)
        await gpu_pods(kube, users)
        memo = kopf.Memo(metrics=Metrics(), controllers={}, served=set())
        async with run_operator(kube, handlers, namespaces=[NS], memo=memo):
            await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
            policy = cullpolicy(
                proxy.api_url,
                every="10m",
                idleTimeout="24h",
                demand={"minIdle": "15m", "after": f"{AFTER:g}s"},
            )
            await kube.create(policy)

            async def first_sweep() -> bool:
                return (await policy_status(kube)).get("serversWaiting") == 0

            await kube.wait_for(first_sweep, timeout=60)
            requests_before = len(list(kube.emulator))
            samples: list[float] = []
            for i in range(pods):
                mark = proxy.mark()
                pod = await waiting_pod(kube, f"new{i:03d}", since=0, message=GPU_MESSAGE)
                due_at = due(pod).timestamp()

                def stopped(mark: int = mark) -> bool:
                    return bool(proxy.stops(mark))

                await kube.wait_for(stopped, timeout=60, interval=0.01)
                samples.append(proxy.stops(mark)[0].started - due_at)
            requests = list(kube.emulator)[requests_before:]
            status = await policy_status(kube)
            sweeps = memo["metrics"].sweeps.labels(NS, "default", "success")._value.get()
    return {
        "samples": samples,
        "kinds": request_kinds(requests),
        "culled": status.get("culledTotal"),
        "sweeps": sweeps,
    }


async def timer_reaction(pods: int, every: float, idle_timeout: float) -> dict[str, Any]:
    """The same setup without ``spec.demand``: a timer-only culler (``every``, ``idleTimeout``).

    Each waiting pod is paired with one idle GPU server whose ``last_activity`` is set, right
    after the pod turns Unschedulable, so that it crosses ``idleTimeout`` exactly when the
    pod's ``after`` (5 s, as in the demand run) has passed: the best case for a timer, where
    a server becomes stoppable the moment the pod is due and only the sweep phase remains.
    Pods start one every ``every / pods`` seconds, so their due times spread evenly over one
    sweep period. The wait is the time from that moment to the server's ``DELETE`` at the Hub.
    """
    async with hub_and_kube() as (hub, proxy, kube):
        users = [f"tmr{i:03d}" for i in range(pods)]
        await populate(hub, {(u, ""): None for u in users})
        await kube.create_namespace(NS)
        await gpu_pods(kube, users)
        memo = kopf.Memo(metrics=Metrics(), controllers={}, served=set())
        async with run_operator(kube, handlers, namespaces=[NS], memo=memo):
            await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
            policy = cullpolicy(
                proxy.api_url, every=f"{every:g}s", idleTimeout=f"{idle_timeout:g}s"
            )
            await kube.create(policy)

            async def first_sweep() -> bool:
                return (await policy_status(kube)).get("lastSweepTime") is not None

            await kube.wait_for(first_sweep, timeout=60)
            mark = proxy.mark()
            dues: dict[str, float] = {}
            for i, user in enumerate(users):
                pod = await waiting_pod(kube, f"new{i:03d}", since=0, message=GPU_MESSAGE)
                when = due(pod)
                dues[user] = when.timestamp()
                crossing = when - timedelta(seconds=idle_timeout)
                await hub.set_times_bulk([{"user": user, "server": "", "last_activity": crossing}])
                await asyncio.sleep(every / pods)  # pods arrive at a steady pace

            def all_stopped() -> bool:
                return len(proxy.stops(mark)) >= len(users)

            await kube.wait_for(all_stopped, timeout=every * 3 + 60, interval=0.05)
            stops = proxy.stops(mark)
            sweeps = memo["metrics"].sweeps.labels(NS, "default", "success")._value.get()
    samples = []
    for user, due_at in dues.items():
        stop = next(s for s in stops if f"/users/{user}/" in s.path)
        samples.append(stop.started - due_at)
    return {"samples": samples, "sweeps": sweeps, "every": every, "idle_timeout": idle_timeout}


def _scale_inputs(servers: int, waiting: int) -> tuple[Any, Snapshot, list[dict], datetime]:
    now = datetime(2026, 12, 6, 3, 0, tzinfo=timezone.utc)
    policy = parse_spec(
        {
            "hub": {"url": "http://hub/hub/api", "tokenSecretRef": {"name": "h", "key": "k"}},
            "idleTimeout": "24h",
            "demand": {"minIdle": "15m"},
        }
    )
    users, pods = [], []
    for i in range(servers):
        name = f"user{i:05d}"
        idle = 60.0 * (i % 600)
        started = now - timedelta(hours=30)
        server = Server(name, "", True, None, False, started, now - timedelta(seconds=idle), None)
        users.append(User(name, False, (), server.last_activity, started, (server,)))
        gpu = i % 4 == 0
        pod = with_resources(
            singleuser_pod(name),
            {"cpu": "500m", "memory": "2Gi"},
            {GPU: "1"} if gpu else None,
            {"pool": "gpu" if gpu else "cpu"},
        )
        pod["spec"]["nodeName"] = f"{'gpu' if gpu else 'cpu'}-{i % 50}"
        pods.append({**pod, "status": running_status()})
    for i in range(waiting):
        gpu = i % 2 == 0
        pod = with_resources(
            singleuser_pod(f"new{i:04d}"),
            {"cpu": "500m" if gpu else "2"},
            {GPU: "1"} if gpu else None,
            {"pool": "gpu" if gpu else "cpu"},
        )
        message = GPU_MESSAGE if gpu else "0/50 nodes are available: 50 Insufficient cpu."
        pods.append({**pod, "status": unschedulable_status(message, now - timedelta(minutes=2))})
    snapshot = Snapshot.from_users(users, now, "5.3.0", "hub")
    return policy, snapshot, pods, now


def scale(servers: int, waiting: int, rounds: int = 5) -> dict[str, Any]:
    """Time and memory of the pure steps at scale (medians of ``rounds``)."""
    policy, snapshot, pods, now = _scale_inputs(servers, waiting)
    assert policy.demand is not None
    classify_t, with_t, without_t, cpu_t = [], [], [], []
    stops = 0
    for _ in range(rounds):
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        data = demand_data(policy.demand, pods, [], now)
        t1 = time.perf_counter()
        plan = decide(policy, snapshot, demand=data)
        t2 = time.perf_counter()
        cpu_t.append(time.process_time() - cpu0)
        decide(policy, snapshot)
        t3 = time.perf_counter()
        classify_t.append(t1 - t0)
        with_t.append(t2 - t1)
        without_t.append(t3 - t2)
        stops = len(plan.stops)
    tracemalloc.start()
    data = demand_data(policy.demand, pods, [], now)
    decide(policy, snapshot, demand=data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "classify": statistics.median(classify_t),
        "decide_with": statistics.median(with_t),
        "decide_without": statistics.median(without_t),
        "cpu": statistics.median(cpu_t),
        "peak_mib": peak / 2**20,
        "waiting": len(data.waiting),
        "stops": stops,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=24)
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--scale-servers", type=int, default=2000)
    parser.add_argument("--scale-waiting", type=int, default=100)
    parser.add_argument("--skip-reaction", action="store_true")
    parser.add_argument("--skip-scale", action="store_true", help="no pure-step scale run")
    parser.add_argument("--skip-timer", action="store_true", help="no timer-only reference")
    parser.add_argument("--timer-every", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument("--timer-idle", type=float, default=120.0, help="idleTimeout, seconds")
    args = parser.parse_args()
    print(f"# spec.demand benchmark ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)\n")
    if not args.skip_reaction:
        result = asyncio.run(reaction(args.servers, args.pods))
        samples = result["samples"]
        print(f"## Reaction: {len(samples)} waiting pods, every: 10m, after: {AFTER:g}s\n")
        print("| median | p95 | min | max |\n|---|---|---|---|")
        print(
            f"| {statistics.median(samples):.2f} s | {_percentile(samples, 0.95):.2f} s "
            f"| {min(samples):.2f} s | {max(samples):.2f} s |\n"
        )
        print(f"servers stopped: {result['culled']}, sweeps: {result['sweeps']:g}\n")
        print("Kubernetes API requests during the reaction run:\n")
        for kind, count in sorted(result["kinds"].items()):
            print(f"- {kind}: {count}")
        print()
        if not args.skip_timer:
            timer = asyncio.run(timer_reaction(args.pods, args.timer_every, args.timer_idle))
            waits = timer["samples"]
            print(
                f"## Reference: timer only (no spec.demand), every: {timer['every']:g}s, "
                f"idleTimeout: {timer['idle_timeout']:g}s, {len(waits)} waiting pods\n"
            )
            print("| culler | median | p95 | min | max |\n|---|---|---|---|---|")
            for name, values in (("spec.demand, every: 10m", samples), ("timer only", waits)):
                print(
                    f"| {name} | {statistics.median(values):.2f} s "
                    f"| {_percentile(values, 0.95):.2f} s | {min(values):.2f} s "
                    f"| {max(values):.2f} s |"
                )
            print(
                f"\ntimer only / spec.demand: median "
                f"{statistics.median(waits) / statistics.median(samples):.0f}x, p95 "
                f"{_percentile(waits, 0.95) / _percentile(samples, 0.95):.0f}x "
                f"(timer sweeps: {timer['sweeps']:g})\n"
            )
            scaled = 600 / timer["every"]
            late = sum(1 for w in waits if w * scaled > 300 - AFTER)
            print(
                f"timer waits, sorted (s): {', '.join(f'{w:.2f}' for w in sorted(waits))}\n\n"
                f"extrapolated to every: 10m (x{scaled:g}, not measured): median "
                f"{statistics.median(waits) * scaled / 60:.1f} min, p95 "
                f"{_percentile(waits, 0.95) * scaled / 60:.1f} min; {late} of {len(waits)} "
                f"past KubeSpawner's 300 s start timeout\n"
            )
    if args.skip_scale:
        return
    found = scale(args.scale_servers, args.scale_waiting)
    print(
        f"## Scale: {args.scale_servers} running servers with pods, "
        f"{args.scale_waiting} waiting pods (pure steps, medians of 5)\n"
    )
    print("| step | time |\n|---|---|")
    print(f"| classify every pod (`demand_data`) | {found['classify'] * 1000:.1f} ms |")
    print(f"| `decide()` with demand | {found['decide_with'] * 1000:.1f} ms |")
    print(f"| `decide()` without demand | {found['decide_without'] * 1000:.1f} ms |")
    print(f"| CPU of classify + decide | {found['cpu'] * 1000:.1f} ms |")
    print(f"| peak Python memory of classify + decide | {found['peak_mib']:.1f} MiB |")
    print(f"\nwaiting pods: {found['waiting']}, demand stops chosen: {found['stops']}")


if __name__ == "__main__":
    main()
