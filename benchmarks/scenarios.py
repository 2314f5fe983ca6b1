"""The first three benchmark scenarios; each returns plain data for :mod:`benchmarks.report`
(scenario 4, kernel-aware culling, is :mod:`benchmarks.kernels`).

1. **Big cull**: many running servers, some idle, every stop taking ``stop_delay`` seconds
   in the FakeSpawner. The reference, hubcull (at the reference's concurrency, at the
   policy's maximum, and optionally above it) and the floor each start from the same state,
   rebuilt in between; each must stop exactly the idle servers.
2. **Steady state**: many running servers, none idle. Hub CPU seconds and requests per
   sweep for each culler, sweeps interleaved, after warm-up sweeps. Plus what single
   requests cost the Hub, to explain the difference.
3. **The operator**: ``hubcull run`` as a subprocess with many CullPolicies on the tests'
   kmock-based Kubernetes API emulator (minus kmock's request history, see
   :mod:`benchmarks.kube`), all sweeping one Hub every few seconds. CPU share and peak RSS
   (``VmHWM``) of the operator process.
"""

from __future__ import annotations

import asyncio
import base64
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
from tests.support.jhub import MINIMAL_SCOPES, PAGINATION_MEDIA_TYPE, launch_hub

from benchmarks.cullers import (
    FloorRun,
    SweepRun,
    direct_stops,
    hubcull_engine_sweep,
    hubcull_sweep,
    reference_sweep,
)
from benchmarks.harness import (
    ActivityPlan,
    BenchHub,
    HubLog,
    OtherLoad,
    count_by_kind,
    cpu_seconds,
    hub_span,
    peak_rss_bytes,
    user_name,
)
from hubcull.engine.sweep.connection import HubConnection

POLICY_MAX_CONCURRENCY = 100


@dataclass
class Config:
    """Sizes and settings of a benchmark run (the command-line flags)."""

    timeout: float = 3600.0
    concurrency: int = 10
    seed: int = 1
    s1_servers: int = 2000
    s1_idle: int = 400
    stop_delay: float = 1.0
    s1_concurrencies: tuple[int, ...] = (100, 400)
    floor_concurrencies: tuple[int, ...] = (100, 0)
    idle_sample: float = 10.0
    s2_servers: int = 5000
    s2_sweeps: int = 4
    s2_warmup: int = 1
    s2_wide_reference: bool = True
    s3_policies: int = 100
    s3_servers: int = 20
    s3_every: float = 10.0
    s3_warmup: float = 15.0
    s3_window: float = 120.0
    s4_servers: int = 1000
    s4_idle: int = 200
    s4_rounds: int = 11
    s5_servers: int = 1000
    s5_minutes: int = 60
    s5_every: float = 60.0
    spawn_concurrency: int = 64


@dataclass
class Measured:
    """One culler's run: wall time, the Hub's and the proxy's CPU, its requests."""

    label: str
    seconds: float
    hub_cpu: float
    proxy_cpu: float
    requests: dict[str, int]
    hub_span: float = 0.0
    other_load: float = 0.0
    stopped: int = 0
    exact: bool | None = None
    note: str = ""

    @property
    def request_count(self) -> int:
        """Requests the culler made (as the Hub logged them)."""
        return sum(self.requests.values())


@dataclass
class Scenario1:
    """Big cull results."""

    servers: int
    idle: int
    stop_delay: float
    runs: list[Measured] = field(default_factory=list)
    #: (stops in flight, the floor's own timing, the meters) of each floor measurement
    floors: list[tuple[int, FloorRun, Measured]] = field(default_factory=list)
    idle_hub_cpu: float = 0.0
    setup_seconds: float = 0.0

    @property
    def floor_seconds(self) -> float | None:
        """The floor: the shortest time the Hub itself took for a listing plus every idle
        server's stop, in the direct measurements (its access log's span, which leaves out
        the client's own overhead: at hundreds of requests in flight on a small machine the
        client, not the Hub, is the bottleneck)."""
        return min((m.hub_span for _, _, m in self.floors), default=None)

    def run(self, label_prefix: str) -> Measured | None:
        """The first run whose label starts with ``label_prefix``."""
        return next((r for r in self.runs if r.label.startswith(label_prefix)), None)


@dataclass
class RequestCost:
    """Hub CPU of one kind of request, averaged over repetitions."""

    label: str
    repeats: int
    hub_cpu_ms: float
    wall_ms: float


@dataclass
class Scenario2:
    """Steady-state results: per-sweep medians for each culler."""

    servers: int
    sweeps: int
    per_culler: dict[str, list[Measured]] = field(default_factory=dict)
    request_costs: list[RequestCost] = field(default_factory=list)
    setup_seconds: float = 0.0

    def median(self, label: str, attribute: str) -> float:
        """Median of one attribute over the measured sweeps of a culler."""
        return float(statistics.median(getattr(m, attribute) for m in self.per_culler[label]))


@dataclass
class OperatorRun:
    """One operator process measured over the window."""

    label: str
    window: float = 0.0
    operator_cpu: float = 0.0
    operator_peak_rss: int = 0
    operator_rss_end: int = 0
    first_sweeps_seconds: float = 0.0
    sweeps_in_window: int = 0
    hub_cpu: float = 0.0
    emulator_cpu: float = 0.0
    hub_requests: int = 0
    other_load: float = 0.0

    @property
    def cpu_share(self) -> float:
        """Operator CPU seconds per wall second in the window (1.0 = one core)."""
        return self.operator_cpu / self.window if self.window else 0.0


@dataclass
class Scenario3:
    """Operator results (one run of ``hubcull run``)."""

    policies: int
    servers: int
    every: float
    runs: list[OperatorRun] = field(default_factory=list)

    def expected_sweeps(self, run: OperatorRun) -> float:
        """Sweeps the policies' ``every`` asks for in a run's window."""
        return self.policies * run.window / self.every


Progress = Callable[[str], None]


def _names(names: set[str]) -> str:
    shown = ", ".join(sorted(names)[:5])
    return f"{len(names)} ({shown}{', ...' if len(names) > 5 else ''})"


async def measure(
    bench: BenchHub,
    log: HubLog,
    label: str,
    sweep: Callable[[], Awaitable[SweepRun]],
) -> tuple[Measured, SweepRun]:
    """Run one sweep with the Hub's and proxy's CPU meters and request log around it."""
    await asyncio.sleep(1.0)  # let the Hub finish whatever the setup left in flight
    mark = log.mark()
    proxy = bench.proxy_pid
    others = OtherLoad([os.getpid(), bench.pid, proxy])
    hub0, proxy0 = cpu_seconds(bench.pid), cpu_seconds(proxy) if proxy else 0.0
    run = await sweep()
    hub1, proxy1 = cpu_seconds(bench.pid), cpu_seconds(proxy) if proxy else 0.0
    other_load = others.cores()
    requests = await log.requests_since(mark)
    if run.errors:
        raise RuntimeError(f"{label}: the culler reported errors: {run.errors[:5]}")
    measured = Measured(
        label,
        run.seconds,
        hub1 - hub0,
        proxy1 - proxy0,
        count_by_kind(requests),
        hub_span(requests),
        other_load,
        len(run.stopped),
    )
    return measured, run


async def scenario1(
    config: Config, bench: BenchHub, token: str, workdir: Path, progress: Progress
) -> Scenario1:
    """Big cull: each culler from the same state; verify each stopped exactly the idle."""
    plan = ActivityPlan(config.s1_servers, config.s1_idle, config.timeout, config.seed)
    result = Scenario1(config.s1_servers, config.s1_idle, config.stop_delay)
    setup0 = bench.setup_seconds
    progress(f"scenario 1: starting {plan.count} servers")
    await bench.ensure_running(plan.count)
    await bench.apply(plan)
    url, log = bench.hub.api_url, HubLog(bench.hub)
    await asyncio.sleep(2.0)
    idle0, wall0 = cpu_seconds(bench.pid), time.monotonic()
    await asyncio.sleep(config.idle_sample)
    result.idle_hub_cpu = (cpu_seconds(bench.pid) - idle0) / (time.monotonic() - wall0)
    common: dict[str, Any] = {"timeout": config.timeout}
    c = config.concurrency

    sweeps: list[tuple[str, Callable[[], Awaitable[SweepRun]]]] = [
        (
            f"jupyterhub-idle-culler (concurrency {c})",
            lambda: reference_sweep(
                url,
                token,
                concurrency=c,
                page_size=0,
                log_file=workdir / "reference-s1.log",
                **common,
            ),
        ),
        (
            f"hubcull (concurrency {c})",
            lambda: hubcull_sweep(url, token, concurrency=c, **common),
        ),
    ]
    for extra in config.s1_concurrencies:
        if extra <= POLICY_MAX_CONCURRENCY:
            sweeps.append(
                (
                    f"hubcull (concurrency {extra})",
                    lambda extra=extra: hubcull_sweep(url, token, concurrency=extra, **common),
                )
            )
        else:
            sweeps.append(
                (
                    f"hubcull engine, client concurrency {extra} (above the policy maximum)",
                    lambda extra=extra: hubcull_engine_sweep(
                        url, token, concurrency=extra, **common
                    ),
                )
            )
    everyone = set(plan.names)
    for index, (label, sweep) in enumerate(sweeps):
        if index:
            progress("scenario 1: restoring the state")
            await bench.restore(plan, everyone)
        before = await bench.ready_users()
        if not everyone <= before:
            raise RuntimeError(f"{len(everyone - before)} servers did not restart")
        progress(f"scenario 1: {label}")
        measured, run = await measure(bench, log, label, sweep)
        await bench.wait_no_pending()
        stopped = before - await bench.ready_users()
        measured.exact = stopped == plan.idle and run.stopped == plan.idle
        if not measured.exact:
            measured.note = (
                f"stopped {_names(stopped)}; missed {_names(plan.idle - stopped)}; "
                f"wrongly stopped {_names(stopped - plan.idle)}"
            )
        result.runs.append(measured)
        progress(f"  {measured.seconds:.1f} s, exact: {measured.exact}")

    for concurrency in config.floor_concurrencies:
        in_flight = concurrency or len(plan.idle)
        progress(f"scenario 1: restoring the state for the floor at {in_flight} in flight")
        await bench.restore(plan, everyone)
        before = await bench.ready_users()
        progress(f"scenario 1: floor: best listing, then the idle servers, {in_flight} at once")
        floor_run: dict[str, FloorRun] = {}

        async def floor_sweep(
            in_flight: int = in_flight, store: dict[str, FloorRun] = floor_run
        ) -> SweepRun:
            floor = await direct_stops(url, token, sorted(plan.idle), concurrency=in_flight)
            store["floor"] = floor
            return SweepRun(floor.seconds, set(plan.idle))

        measured, _ = await measure(bench, log, f"floor ({in_flight} stops in flight)", floor_sweep)
        await bench.wait_no_pending()
        stopped = before - await bench.ready_users()
        measured.exact = stopped == plan.idle
        result.floors.append((in_flight, floor_run["floor"], measured))
        progress(f"  {measured.seconds:.1f} s, exact: {measured.exact}")
    result.setup_seconds = bench.setup_seconds - setup0
    return result


async def request_costs(bench: BenchHub, token: str, servers: int) -> list[RequestCost]:
    """Hub CPU per request of each kind a culler sends, one request at a time."""
    url = bench.hub.api_url
    last_page = max(servers - 200, 0)
    kinds: list[tuple[str, str, dict[str, str], int]] = [
        ("GET / (version)", "/", {}, 40),
        ("GET /user (token scopes)", "/user", {}, 40),
        ("GET /users/{name} (one user)", f"/users/{user_name(0)}", {}, 40),
        ("GET /users?state=ready, page of 50 at offset 0", "/users", _page(0, 50), 10),
        ("GET /users?state=ready, page of 200 at offset 0", "/users", _page(0, 200), 10),
        (
            f"GET /users?state=ready, page of 200 at offset {last_page}",
            "/users",
            _page(last_page, 200),
            10,
        ),
    ]
    costs = []
    headers = {"Authorization": f"token {token}", "Accept": PAGINATION_MEDIA_TYPE}
    async with httpx.AsyncClient(headers=headers, timeout=120.0) as client:
        for label, path, params, repeats in kinds:
            await client.get(url + path, params=params)  # warm
            hub0, wall0 = cpu_seconds(bench.pid), time.monotonic()
            for _ in range(repeats):
                response = await client.get(url + path, params=params)
                response.raise_for_status()
            hub1, wall1 = cpu_seconds(bench.pid), time.monotonic()
            costs.append(
                RequestCost(
                    label, repeats, 1000 * (hub1 - hub0) / repeats, 1000 * (wall1 - wall0) / repeats
                )
            )
    return costs


def _page(offset: int, limit: int) -> dict[str, str]:
    return {"state": "ready", "offset": str(offset), "limit": str(limit)}


async def scenario2(
    config: Config, bench: BenchHub, token: str, workdir: Path, progress: Progress
) -> Scenario2:
    """Steady state: nothing idle; Hub CPU and requests per sweep, sweeps interleaved."""
    count = max(config.s2_servers, bench.users_created)
    plan = ActivityPlan(count, 0, config.timeout, config.seed + 1)
    result = Scenario2(count, config.s2_sweeps)
    setup0 = bench.setup_seconds
    progress(f"scenario 2: starting {count} servers")
    await bench.ensure_running(count)
    await bench.apply(plan)
    url, log = bench.hub.api_url, HubLog(bench.hub)
    c, timeout = config.concurrency, config.timeout
    # hubcull sweeps as the operator repeats them: one kept client (version and token scopes
    # read on the warm-up sweep, then reused)
    kept_connection = HubConnection()
    cullers: list[tuple[str, Callable[[], Awaitable[SweepRun]]]] = [
        (
            "jupyterhub-idle-culler",
            lambda: reference_sweep(
                url,
                token,
                timeout=timeout,
                concurrency=c,
                page_size=0,
                log_file=workdir / "reference-s2.log",
            ),
        ),
        (
            "hubcull",
            lambda: hubcull_sweep(
                url, token, timeout=timeout, concurrency=c, connection=kept_connection
            ),
        ),
    ]
    if config.s2_wide_reference:
        cullers.append(
            (
                "jupyterhub-idle-culler --api-page-size=200",
                lambda: reference_sweep(
                    url,
                    token,
                    timeout=timeout,
                    concurrency=c,
                    page_size=200,
                    log_file=workdir / "reference-s2-200.log",
                ),
            )
        )
    result.per_culler = {label: [] for label, _ in cullers}
    before = await bench.ready_users()
    rounds = config.s2_warmup + config.s2_sweeps
    try:
        for round_ in range(rounds):
            order = cullers if round_ % 2 == 0 else list(reversed(cullers))
            for label, sweep in order:
                progress(f"scenario 2: sweep {round_ + 1}/{rounds}: {label}")
                measured, run = await measure(bench, log, label, sweep)
                if run.stopped:
                    stopped = run.stopped
                    raise RuntimeError(f"{label} stopped servers in the steady state: {stopped}")
                if round_ >= config.s2_warmup:
                    result.per_culler[label].append(measured)
    finally:
        await kept_connection.aclose()
    after = await bench.ready_users()
    if before != after:
        raise RuntimeError(f"servers stopped during the steady state: {_names(before - after)}")
    progress("scenario 2: Hub CPU per request")
    result.request_costs = await request_costs(bench, token, count)
    result.setup_seconds = bench.setup_seconds - setup0
    return result


def _secret(token: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "hub", "namespace": namespace},
        "data": {"token": base64.b64encode(token.encode()).decode()},
    }


def _policy(url: str, name: str, namespace: str, every: float, timeout: float) -> dict[str, Any]:
    return {
        "apiVersion": "hubcull.io/v1alpha1",
        "kind": "CullPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "hub": {"url": url, "tokenSecretRef": {"name": "hub", "key": "token"}},
            "every": int(every),
            "idleTimeout": int(timeout),
        },
    }


async def scenario3(config: Config, workdir: Path, progress: Progress) -> Scenario3:
    """``hubcull run`` with many CullPolicies against one small Hub: operator CPU and RSS."""
    from tests.support.kube import run_operator_process

    from benchmarks.kube import lean_kube_server

    result = Scenario3(config.s3_policies, config.s3_servers, config.s3_every)
    progress(f"scenario 3: a Hub with {config.s3_servers} servers")
    hub = await launch_hub(workdir / "hub-s3", slow_stop_timeout=10.0, slow_spawn_timeout=10.0)
    try:
        bench = BenchHub(hub, spawn_concurrency=config.spawn_concurrency)
        plan = ActivityPlan(config.s3_servers, 0, config.timeout, config.seed + 2)
        await bench.ensure_running(plan.count)
        await bench.apply(plan)
        token = await hub.token(MINIMAL_SCOPES, note="bench-operator")
        log = HubLog(hub)
        async with lean_kube_server(workdir / "kube") as kube:
            namespace = "bench"
            await kube.create_namespace(namespace)
            await kube.create(_secret(token, namespace))
            for number in range(config.s3_policies):
                policy = _policy(
                    hub.api_url, f"p{number:03d}", namespace, config.s3_every, config.timeout
                )
                await kube.create(policy)
            run = OperatorRun("hubcull run")
            command = [sys.executable, "-m", "hubcull.cli", "run", "--namespace", namespace]
            progress(f"scenario 3: hubcull run, {config.s3_policies} CullPolicies")
            started, since = time.monotonic(), datetime.now(timezone.utc)
            async with run_operator_process(
                kube, command, log_path=workdir / "operator.log", stop_timeout=90.0
            ) as operator:
                assert operator.process is not None
                pid = operator.process.pid

                async def all_swept() -> bool:
                    policies = await kube.list("hubcull.io/v1alpha1/cullpolicies", namespace)
                    return len(policies) == config.s3_policies and all(
                        _swept_since(p, since) for p in policies
                    )

                await kube.wait_for(all_swept, timeout=300.0, interval=0.5)
                run.first_sweeps_seconds = time.monotonic() - started
                progress(
                    f"scenario 3: every policy swept after {run.first_sweeps_seconds:.1f} s;"
                    f" warm-up {config.s3_warmup:.0f} s, then measuring"
                )
                await asyncio.sleep(config.s3_warmup)
                mark = log.mark()
                others = OtherLoad([pid, hub.pid, hub.proxy_pid, os.getpid()])
                op0, hub0 = cpu_seconds(pid), cpu_seconds(hub.pid)
                me0, wall0 = cpu_seconds(os.getpid()), time.monotonic()
                await asyncio.sleep(config.s3_window)
                op1, hub1 = cpu_seconds(pid), cpu_seconds(hub.pid)
                me1, wall1 = cpu_seconds(os.getpid()), time.monotonic()
                run.other_load = others.cores()
                run.window = wall1 - wall0
                run.operator_cpu = op1 - op0
                run.hub_cpu = hub1 - hub0
                run.emulator_cpu = me1 - me0
                run.operator_peak_rss = peak_rss_bytes(pid)
                run.operator_rss_end = _rss(pid)
                operator.check()
                requests = await log.requests_since(mark)
                run.hub_requests = len(requests)
                run.sweeps_in_window = sum(
                    1 for r in requests if r.method == "GET" and r.uri.startswith("/hub/api/users?")
                )
            result.runs.append(run)
            progress(
                f"  operator CPU {100 * run.cpu_share:.1f} % of a core, peak RSS "
                f"{run.operator_peak_rss / 2**20:.0f} MiB"
            )
    finally:
        await hub.shutdown()
    return result


def _swept_since(policy: dict[str, Any], since: datetime) -> bool:
    stamp = (policy.get("status") or {}).get("lastSweepTime")
    if not stamp:
        return False
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")) >= since - timedelta(seconds=1)


def _rss(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)
