"""``python -m benchmarks.demand_scale``: the operator's cost of ``spec.demand`` at scale.

Real parts on loopback: a real JupyterHub (the tests' fixture, FakeSpawner) holding
``--servers`` running servers behind the tests' recording proxy, the tests' Kubernetes API
emulator with one KubeSpawner-shaped pod per server (a quarter GPU servers on a GPU pool, the
rest on a CPU pool, 50 nodes) and ``--waiting`` Unschedulable pods (half ``Insufficient
nvidia.com/gpu``, half ``Insufficient cpu``), and the real operator as a subprocess
(``hubcull run --log-format json``), so that its CPU time and peak RSS are its own.

Two variants in the same run, on the same Hub and API server, each with a fresh operator
process and the same CullPolicy (``idleTimeout: 24h``) except:

- **timer only** (the reference): no ``spec.demand``, ``every: 30s``. After its first sweep
  the waiting pods appear (nothing reacts to them) and the ``--waiting`` idlest servers are
  pushed past ``idleTimeout``; the next sweep stops them.
- **spec.demand**: ``every: 10m``, ``demand: {minIdle: 15m, after: 5s}``. After its first
  sweep the waiting pods appear; the sweeps they wake stop one server for each.

Measured from the first sweep's end to the last stop (startup and the first sweep left out):
the operator's CPU seconds (user + system, psutil) and the number of sweeps (its JSON sweep
lines), so CPU per sweep; every Kubernetes API request of the operator by kind (the emulator
records them; the benchmark's own writes of pods left out); the sweep's
``durationSeconds``; the time from the Hub's listing answer to the sweep's first stop request
(what the operator spends between them: pods from its watch cache, victim choice,
``decide()``), from the proxy's timestamps; the operator's peak RSS (VmHWM) over its life.
Nothing is asserted; Markdown goes to stdout (docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psutil
from tests.support.demand_pods import CPU_MESSAGE, GPU, GPU_MESSAGE, running_pod, waiting_pod
from tests.support.faultproxy import FaultProxy
from tests.support.jhub import MINIMAL_SCOPES
from tests.support.kube import Kube, run_operator_process
from tests.support.operator_env import NS, cullpolicy, secret
from tests.support.pods import PODS
from tests.support.scenario import populate

from benchmarks.demand import AFTER, due, hub_and_kube, request_kinds

HUBCULL = str(Path(sys.executable).with_name("hubcull"))
HOUR = 3600.0


def _user(i: int) -> str:
    return f"u{i:05d}"


def _idle(i: int, servers: int) -> float:
    """Idle 1 h to 3 h; server 0 the idlest."""
    return HOUR + 2 * HOUR * (servers - i) / servers


async def _bounded(coros: list[Any], limit: int = 32) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(coro: Any) -> None:
        async with gate:
            await coro

    await asyncio.gather(*(one(c) for c in coros))


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _sweep_lines(log: str) -> list[dict[str, Any]]:
    lines = []
    for text in log.splitlines():
        if '"sweep"' not in text:
            continue
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if line.get("event") == "sweep":
            lines.append(line)
    return lines


def _choice_seconds(proxy: FaultProxy, mark: int) -> list[float]:
    """For each sweep that stopped servers: the Hub's last listing answer before its first
    stop request, to the first request after that answer (a re-check or the DELETE)."""
    seen = proxy.requests("", mark)
    gaps = []
    for i, request in enumerate(seen):
        if request.method != "DELETE" or (i and seen[i - 1].method == "DELETE"):
            continue
        listings = [
            s
            for s in seen[:i]
            if s.method == "GET" and s.path.endswith("/users") and s.finished is not None
        ]
        if not listings:
            continue
        answered = listings[-1].finished
        assert answered is not None
        after = [s for s in seen[: i + 1] if s.started >= answered]
        gaps.append(after[0].started - answered)
    return gaps


async def _waiting_pods(kube: Kube, waiting: int) -> dict[str, float]:
    """Create the waiting pods; each pod's name and when its ``after`` passes (:func:`due`)."""
    names = [f"new{i:04d}" for i in range(waiting)]
    dues: dict[str, float] = {}

    async def one(i: int, name: str) -> None:
        pod = await waiting_pod(
            kube,
            name,
            since=0,
            message=GPU_MESSAGE if i % 2 == 0 else CPU_MESSAGE,
            requests={"cpu": "500m"},
            limits={GPU: "1"} if i % 2 == 0 else None,
            node_selector={"pool": "gpu" if i % 2 == 0 else "cpu"},
        )
        dues[pod["metadata"]["name"]] = due(pod).timestamp()

    await _bounded([one(i, name) for i, name in enumerate(names)])
    return dues


def _user_of(stop: Any) -> str:
    """The user whose server a stop request (``DELETE .../users/{name}/server``) stops."""
    return str(stop.path.split("/users/", 1)[1].split("/", 1)[0])


def _reactions(
    log: list[dict[str, Any]], proxy: FaultProxy, mark: int, dues: dict[str, float]
) -> list[float]:
    """For each waiting pod a server was stopped for: from its ``after`` passing to the stop
    request at the Hub (the operator's JSON stop lines say which server was for which pod)."""
    stops = {_user_of(s): s.started for s in proxy.stops(mark)}
    found = []
    for line in log:
        pod, user = line.get("for"), line.get("user")
        if line.get("event") == "stop" and pod in dues and user in stops:
            found.append(stops[user] - dues[pod])
    return found


def _operators(request: Any) -> bool:
    """Whether the operator made this request: the benchmark only writes pods (creates the
    waiting ones and sets their status), which the operator never does."""
    pods = request.resource is not None and request.resource.plural == "pods"
    return not (pods and request.method.upper() in ("POST", "PATCH", "PUT", "DELETE"))


async def variant(
    name: str, hub: Any, proxy: FaultProxy, kube: Kube, directory: Path, waiting: int
) -> dict[str, Any]:
    """One operator process, one policy; see the module docstring."""
    demand = name == "demand"
    spec: dict[str, Any] = {"every": "10m" if demand else "30s", "idleTimeout": "24h"}
    if demand:
        spec["demand"] = {"minIdle": "15m", "after": f"{AFTER:g}s"}
    command = [HUBCULL, "run", "--namespace", NS, "--log-format", "json"]
    log_path = directory / f"{name}.log"
    life0 = len(list(kube.emulator))
    async with run_operator_process(kube, command, log_path=log_path) as operator:
        assert operator.process is not None
        process = psutil.Process(operator.process.pid)
        await kube.create(cullpolicy(proxy.api_url, name=name, **spec))

        def swept() -> list[dict[str, Any]]:
            return _sweep_lines(operator.output())

        await kube.wait_for(lambda: len(swept()) >= 1, timeout=300, interval=0.1)
        first = swept()[0]
        cpu = process.cpu_times()
        cpu0 = cpu.user + cpu.system
        requests0 = len(list(kube.emulator))
        mark = proxy.mark()
        t0 = time.monotonic()
        dues = await _waiting_pods(kube, waiting)
        if not demand:
            past = datetime.now(timezone.utc) - timedelta(hours=25)
            await hub.set_times_bulk(
                [{"user": _user(i), "server": "", "last_activity": past} for i in range(waiting)]
            )

        def all_stopped() -> bool:
            return len(proxy.stops(mark)) >= waiting

        await kube.wait_for(all_stopped, timeout=300, interval=0.1)
        # the sweep that made the last stop writes its line after it
        count = len(proxy.stops(mark))
        await kube.wait_for(
            lambda: sum(s["culled"] for s in swept()[1:]) >= count, timeout=60, interval=0.1
        )
        # and its Events and status patch after that: until the API is quiet for 2 s
        quiet = [len(list(kube.emulator)), time.monotonic()]

        def settled() -> bool:
            count = len(list(kube.emulator))
            if count != quiet[0]:
                quiet[:] = [count, time.monotonic()]
            return time.monotonic() - quiet[1] >= 2.0

        await kube.wait_for(settled, timeout=60, interval=0.1)
        elapsed = time.monotonic() - t0
        cpu = process.cpu_times()
        cpu1 = cpu.user + cpu.system
        peak = _peak_rss_mib(process.pid)
        everything = list(kube.emulator)
        requests = [r for r in everything[requests0:] if _operators(r)]
        life = [r for r in everything[life0:] if _operators(r)]
        lines = swept()[1:]
        choice = _choice_seconds(proxy, mark)
        stopped = {_user_of(s) for s in proxy.stops(mark)}
        events = [
            json.loads(text)
            for text in operator.output().splitlines()
            if text.startswith("{") and '"stop"' in text
        ]
        reactions = _reactions(events, proxy, mark, dues) if demand else []
    await _bounded([kube.delete(PODS, NS, pod, missing_ok=True) for pod in dues])
    await kube.delete("hubcull.io/v1alpha1/cullpolicies", NS, name, missing_ok=True)
    kinds = request_kinds(requests)
    listings = sum(
        1
        for r in life
        if r.method == "GET" and r.resource and r.resource.plural == "pods" and r.name is None
    )
    return {
        "pod_listings": listings,
        "first_sweep": first,
        "sweeps": lines,
        "cpu": cpu1 - cpu0,
        "elapsed": elapsed,
        "peak_rss": peak,
        "kinds": kinds,
        "requests": len(requests),
        "choice": choice,
        "stopped": stopped,
        "reactions": reactions,
    }


async def run(servers: int, waiting: int) -> dict[str, Any]:
    """Set up the Hub and the API server once, then run both variants."""
    with tempfile.TemporaryDirectory() as logs:
        async with hub_and_kube() as (hub, proxy, kube):
            t0 = time.monotonic()
            await populate(hub, {(_user(i), ""): _idle(i, servers) for i in range(servers)})
            await kube.create_namespace(NS)
            await _bounded(
                [
                    running_pod(
                        kube,
                        _user(i),
                        node=f"{'gpu' if i % 4 == 0 else 'cpu'}-{i % 50}",
                        requests={"cpu": "500m", "memory": "2Gi"},
                        limits={GPU: "1"} if i % 4 == 0 else None,
                        node_selector={"pool": "gpu" if i % 4 == 0 else "cpu"},
                    )
                    for i in range(servers)
                ]
            )
            await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
            setup = time.monotonic() - t0
            results: dict[str, Any] = {"setup": setup}
            for name in ("timer", "demand"):
                results[name] = await variant(name, hub, proxy, kube, Path(logs), waiting)
                stopped = sorted(results[name]["stopped"])
                if stopped:  # start them again, idle as before: the next variant sees the same
                    await hub.spawn_many([(u, "") for u in stopped])
                    await hub.set_times_bulk(
                        [
                            {
                                "user": u,
                                "server": "",
                                "last_activity": datetime.now(timezone.utc)
                                - timedelta(seconds=_idle(int(u[1:]), servers)),
                            }
                            for u in stopped
                        ]
                    )
    return results


def _ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    return f"{ordered[len(ordered) // 2] * 1000:.0f} ms" + (
        f" (of {len(values)}: {', '.join(f'{v * 1000:.0f}' for v in values)} ms)"
        if len(values) > 1
        else ""
    )


def _reaction(result: dict[str, Any]) -> str:
    values = sorted(result["reactions"])
    if not values:
        return "n/a"
    p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
    return f"{values[len(values) // 2]:.2f} / {p95:.2f} / {values[-1]:.2f} s (of {len(values)})"


def _median_duration(result: dict[str, Any]) -> str:
    durations = sorted(s["durationSeconds"] for s in result["sweeps"])
    return f"{durations[len(durations) // 2]:.2f} s" if durations else "n/a"


def report(results: dict[str, Any], servers: int, waiting: int) -> None:
    """Print the results as Markdown."""
    timer, demand = results["timer"], results["demand"]
    print(
        f"## Scale: {servers} running servers with pods, {waiting} waiting pods, "
        f"operator as a subprocess\n\nsetup (Hub servers, pods): {results['setup']:.0f} s\n"
    )
    rows = [
        ("sweeps measured (after the first)", lambda r: f"{len(r['sweeps'])}"),
        ("servers stopped", lambda r: f"{len(r['stopped'])}"),
        ("operator CPU, total", lambda r: f"{r['cpu']:.2f} s"),
        ("operator CPU per sweep", lambda r: f"{r['cpu'] / max(1, len(r['sweeps'])):.2f} s"),
        ("operator peak RSS (VmHWM)", lambda r: f"{r['peak_rss']:.0f} MiB"),
        ("Kubernetes API requests, total", lambda r: f"{r['requests']}"),
        (
            "Kubernetes API requests per sweep",
            lambda r: f"{r['requests'] / max(1, len(r['sweeps'])):.1f}",
        ),
        ("sweep durationSeconds (median)", _median_duration),
        ("pod listings over the operator's life (incl. watch)", lambda r: f"{r['pod_listings']}"),
        ("Hub listing answered -> first stop request", lambda r: _ms(r["choice"])),
        ("first sweep durationSeconds", lambda r: f"{r['first_sweep']['durationSeconds']:.2f} s"),
        ("pod due -> its server's stop request (median / p95 / max)", _reaction),
    ]
    print("| | timer only (reference) | spec.demand |\n|---|---|---|")
    for label, cell in rows:
        print(f"| {label} | {cell(timer)} | {cell(demand)} |")
    per = [r["cpu"] / max(1, len(r["sweeps"])) for r in (timer, demand)]
    print(f"\nCPU per sweep, spec.demand / timer only: {per[1] / per[0]:.2f}x\n")
    for name, r in (("timer only", timer), ("spec.demand", demand)):
        print(f"Kubernetes API requests, {name}:\n")
        for kind, count in sorted(r["kinds"].items()):
            print(f"- {kind}: {count}")
        print()
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=2000)
    parser.add_argument("--waiting", type=int, default=100)
    args = parser.parse_args()
    print(f"# spec.demand at scale ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)\n")
    results = asyncio.run(run(args.servers, args.waiting))
    report(results, args.servers, args.waiting)


if __name__ == "__main__":
    main()
