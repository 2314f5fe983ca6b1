"""Scenario 4: what kernel-aware culling (``spec.kernels``, issue 11) costs the Hub.

Many running FakeSpawner servers, some idle by the Hub's ``last_activity``. Their Jupyter API
is :mod:`benchmarks.fakejupyter` (one process for all of them, with one token cache per
server, so every probe of a server that does not know the token yet costs the Hub a
``GET /hub/api/user``, as a real singleuser server's does). hubcull sweeps in dry runs (probes
happen, nothing is stopped, the state stays the same) with:

(a) no ``spec.kernels``: the plain sweep, the reference of the ratios;
(b) ``kernels.protectBusy: true``, the servers' token caches empty (a server first probed);
(b') the same again within 5 minutes (token caches warm: the next sweep of a busy server);
(c) ``kernels.idleFrom: kernels``, a first sweep (empty not-before memory, token caches empty);
(d) the second sweep with the memory (:class:`~hubcull.engine.sweep.memory.SweepMemory`) kept from
    (c), within 5 minutes (token caches warm);
(d') the same memory with the token caches expired (sweeps ``every`` 5 minutes or more, such
    as the default 10m).

Rounds repeat the list (every other round as (c), (d), (d'), (b), (b'), (a));
the report gives medians and their ratios to (a) of the same run. Each sweep's decisions are
checked against what the contract says it must decide on this state (who is probed, who is
kept, who would be stopped), computed here from the plan, not from the engine.

Hub CPU is the Hub process's CPU time (``/proc``, user + system) around each sweep; Hub
requests are the Hub's access-log lines in that window (the engine's listing with the
policy's token, the creations of probe tokens the first time a server is probed, and the
servers' token checks with those per-server tokens, which belong to the servers' users); the
token checks among them are what the fake servers counted. One token source is kept for the
whole scenario, as the operator keeps one per policy (scenario 5 measures its cost).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO

import httpx
from tests.support.jhub import CONFIG_NAME, MINIMAL_SCOPES, Hub, launch_hub

from benchmarks.cullers import TOKEN_REF, SweepFailed
from benchmarks.harness import (
    BenchHub,
    HubLog,
    OtherLoad,
    count_by_kind,
    cpu_seconds,
    user_name,
)
from hubcull.engine.rules.policy import Policy, parse_spec
from hubcull.engine.signals.probetokens import ProbeTokens
from hubcull.engine.sweep.memory import SweepMemory
from hubcull.engine.sweep.records import SweepResult
from hubcull.engine.sweep.runner import sweep_policy
from hubcull.engine.sweep.sources import SweepSources

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Kinds of the servers idle by the Hub, and their shares.
IDLE_KINDS = {"busy": 0.2, "none": 0.2, "idle": 0.6}
#: Kinds of the others (active by the Hub), and their shares.
ACTIVE_KINDS = {
    "tab": 0.125,
    "terminal": 0.0625,
    "busy-active": 0.0625,
    "none-active": 0.125,
    "active": 0.625,
}
#: What each kind is, for the report.
KIND_TEXT = {
    "busy": "a kernel busy and silent since the Hub's last activity",
    "none": "no kernel, no terminal",
    "idle": "idle kernels, last active when the Hub last saw activity",
    "tab": "an open tab: fresh Hub activity, kernels idle for more than idleTimeout",
    "terminal": "kernels idle for more than idleTimeout, a terminal with recent output",
    "busy-active": "a kernel busy with recent output",
    "none-active": "no kernel, no terminal",
    "active": "a kernel active recently",
}
#: Share of the servers active by the Hub that have run for at least ``idleTimeout``.
OLD_SHARE = 0.7
#: Seconds kept between an age and a limit it is compared with (the run takes minutes).
MARGIN = 600.0


@dataclass(frozen=True)
class PlannedServer:
    """One server's planned ages (seconds before "now") and Jupyter state."""

    name: str
    kind: str
    hub_age: float
    started_age: float
    #: (execution_state, seconds since the kernel's last_activity)
    kernels: tuple[tuple[str, float], ...] = ()
    #: seconds since each terminal's last_activity
    terminals: tuple[float, ...] = ()

    @property
    def newest(self) -> float | None:
        """Seconds since the newest kernel or terminal activity (``None``: none)."""
        ages = [age for _, age in self.kernels] + list(self.terminals)
        return min(ages) if ages else None

    @property
    def busy(self) -> bool:
        """A kernel is busy."""
        return any(state == "busy" for state, _ in self.kernels)


def _kinds(count: int, shares: dict[str, float], rng: random.Random) -> list[str]:
    """``count`` kinds in the given shares (the last kind takes the rounding), shuffled."""
    kinds: list[str] = []
    names = list(shares)
    for kind in names[:-1]:
        kinds += [kind] * round(count * shares[kind])
    kinds += [names[-1]] * max(0, count - len(kinds))
    kinds = kinds[:count]
    rng.shuffle(kinds)
    return kinds


@dataclass(frozen=True)
class KernelPlan:
    """Every server's Hub activity, start and kernels, relative to the moment applied.

    The servers idle by the Hub (spread evenly over the user list) were last active between
    ``timeout`` + 10 minutes and ``timeout`` + 10 hours ago; the others within half the
    timeout. Servers and kernels are at least :data:`MARGIN` away from ``timeout`` wherever
    it matters, so that the minutes the run takes change no decision.
    """

    count: int
    idle_count: int
    timeout: float
    seed: int = 4
    servers: tuple[PlannedServer, ...] = field(init=False)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        t = self.timeout
        idle_indices = (
            {(k * self.count) // self.idle_count for k in range(self.idle_count)}
            if self.idle_count
            else set()
        )
        idle_kinds = iter(_kinds(len(idle_indices), IDLE_KINDS, rng))
        active_kinds = iter(_kinds(self.count - len(idle_indices), ACTIVE_KINDS, rng))
        servers = []
        for index in range(self.count):
            name = user_name(index)
            if index in idle_indices:
                kind = next(idle_kinds)
                hub = t + rng.uniform(MARGIN, 36000.0)
                started = hub + rng.uniform(0.0, 7200.0)  # old, as it was idle that long
                servers.append(self._idle_server(name, kind, hub, started, rng))
            else:
                kind = next(active_kinds)
                hub = rng.uniform(0.0, t / 2)
                if rng.random() < OLD_SHARE:
                    started = t + MARGIN + rng.uniform(MARGIN, 7200.0)
                else:
                    started = rng.uniform(hub, max(hub, t - MARGIN))
                servers.append(self._active_server(name, kind, hub, started, rng))
        object.__setattr__(self, "servers", tuple(servers))

    def _idle_server(
        self, name: str, kind: str, hub: float, started: float, rng: random.Random
    ) -> PlannedServer:
        if kind == "none":
            return PlannedServer(name, kind, hub, started)
        older = [("idle", rng.uniform(hub, started))] if rng.random() < 0.5 else []
        state = "busy" if kind == "busy" else "idle"
        return PlannedServer(name, kind, hub, started, ((state, hub), *older))

    def _active_server(
        self, name: str, kind: str, hub: float, started: float, rng: random.Random
    ) -> PlannedServer:
        t = self.timeout
        if kind == "none-active":
            return PlannedServer(name, kind, hub, started)
        if kind in ("active", "busy-active"):
            state = "busy" if kind == "busy-active" else "idle"
            return PlannedServer(name, kind, hub, started, ((state, hub),))
        # tab and terminal: kernels idle since long before the Hub's activity
        if started >= t + MARGIN:
            kernel = rng.uniform(t + MARGIN, started)
        else:
            kernel = rng.uniform(hub, started)  # too young to be probed: never idle by kernels
        terminals = (hub,) if kind == "terminal" else ()
        return PlannedServer(name, kind, hub, started, (("idle", kernel),), terminals)

    @property
    def names(self) -> list[str]:
        """Every user, in creation (and listing) order."""
        return [s.name for s in self.servers]

    @property
    def hub_idle(self) -> frozenset[str]:
        """Servers idle by the Hub's ``last_activity``."""
        return frozenset(s.name for s in self.servers if s.hub_age >= self.timeout)

    def kind_counts(self) -> dict[str, tuple[int, int]]:
        """Per kind: (servers, of which running for at least ``timeout``)."""
        counts = {kind: (0, 0) for kind in [*IDLE_KINDS, *ACTIVE_KINDS]}
        for s in self.servers:
            total, old = counts.get(s.kind, (0, 0))
            counts[s.kind] = (total + 1, old + (s.started_age >= self.timeout))
        return counts

    def hub_updates(self, now: datetime) -> list[dict[str, object]]:
        """``set_times_bulk`` updates putting every server at its planned Hub ages."""
        return [
            {
                "user": s.name,
                "server": "",
                "last_activity": now - timedelta(seconds=s.hub_age),
                "started": now - timedelta(seconds=s.started_age),
                "user_last_activity": now - timedelta(seconds=s.hub_age),
            }
            for s in self.servers
        ]

    def jupyter_models(self, now: datetime) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Every server's ``api/kernels`` and ``api/terminals`` answers, as jupyter_server
        renders them (times in ISO 8601 with ``Z``)."""
        rng = random.Random(self.seed + 1)
        models: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for s in self.servers:
            kernels = [
                {
                    "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "name": "python3",
                    "last_activity": _iso(now - timedelta(seconds=age)),
                    "execution_state": state,
                    "connections": 1 if s.kind in ("tab", "active", "busy-active") else 0,
                }
                for state, age in s.kernels
            ]
            terminals = [
                {"name": str(number + 1), "last_activity": _iso(now - timedelta(seconds=age))}
                for number, age in enumerate(s.terminals)
            ]
            models[s.name] = {"kernels": kernels, "terminals": terminals}
        return models

    def expected(self, variant: str, elapsed: float) -> Expected:
        """What the contract says variant ``variant`` must do, ``elapsed`` seconds after the
        plan was applied (docs/cullpolicy-api.md, "spec.kernels")."""
        t = self.timeout
        old = {s.name for s in self.servers if s.started_age + elapsed >= t}
        hub_idle = {s.name for s in self.servers if s.hub_age + elapsed >= t}
        if variant == "a":
            return Expected(frozenset(), frozenset(hub_idle), frozenset())
        if variant in ("b", "b2"):
            busy = {s.name for s in self.servers if s.name in hub_idle and s.busy}
            return Expected(frozenset(hub_idle), frozenset(hub_idle - busy), frozenset(busy))
        by_kernels = set()
        for s in self.servers:
            newest = s.newest
            if s.name in old and newest is not None:
                idle = newest + elapsed >= t
            else:
                idle = s.name in hub_idle
            if idle:
                by_kernels.add(s.name)
        if variant == "c":
            probed = old
        else:  # d, d2: the not-before memory skips servers whose kernels cannot be idle yet
            probed = {
                s.name
                for s in self.servers
                if s.name in old and (s.newest is None or s.newest + elapsed >= t)
            }
        return Expected(frozenset(probed), frozenset(by_kernels), frozenset())


@dataclass(frozen=True)
class Expected:
    """Who a variant probes, would stop and keeps because of a busy kernel."""

    probed: frozenset[str]
    stops: frozenset[str]
    protected: frozenset[str]


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Variant:
    """One way of sweeping: its ``spec.kernels``, and what happens before it."""

    key: str
    label: str
    kernels: dict[str, Any] | None
    forget_tokens: bool = False
    new_memory: bool = False


VARIANTS = (
    Variant("a", "(a) no spec.kernels (the plain sweep)", None),
    Variant("b", "(b) protectBusy: true", {"protectBusy": True}, forget_tokens=True),
    Variant(
        "b2", "(b') protectBusy, again within 5 min (token checks cached)", {"protectBusy": True}
    ),
    Variant(
        "c",
        "(c) idleFrom: kernels, first sweep",
        {"idleFrom": "kernels"},
        forget_tokens=True,
        new_memory=True,
    ),
    Variant("d", "(d) idleFrom: kernels, second sweep within 5 min", {"idleFrom": "kernels"}),
    Variant(
        "d2",
        "(d') idleFrom: kernels, a later sweep, token checks expired (every >= 5 min)",
        {"idleFrom": "kernels"},
        forget_tokens=True,
    ),
)


@dataclass
class KernelSweep:
    """One measured sweep."""

    variant: str
    round: int
    seconds: float
    hub_cpu: float
    proxy_cpu: float
    fake_cpu: float
    requests: dict[str, int]
    token_checks: int
    probe_requests: dict[str, int]
    probed: int
    probe_results: dict[str, int]
    stops: int
    protected: int
    other_load: float
    problems: list[str] = field(default_factory=list)

    @property
    def hub_requests(self) -> int:
        """Every request the Hub logged for the token's owner in the sweep's window."""
        return sum(self.requests.values())

    @property
    def engine_requests(self) -> int:
        """The engine's own requests to the Hub (the rest are the servers' token checks)."""
        return self.hub_requests - self.token_checks


@dataclass
class Scenario4:
    """Kernel-aware culling results."""

    servers: int
    idle: int
    timeout: float
    concurrency: int
    rounds: int
    kinds: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: per variant, the servers its first sweep probed, by kind
    probed_kinds: dict[str, dict[str, int]] = field(default_factory=dict)
    sweeps: list[KernelSweep] = field(default_factory=list)
    idle_hub_cpu: float = 0.0
    setup_seconds: float = 0.0

    def of(self, variant: str) -> list[KernelSweep]:
        """The measured sweeps of one variant."""
        return [s for s in self.sweeps if s.variant == variant]

    def median(self, variant: str, attribute: str) -> float:
        """Median of one attribute over a variant's sweeps."""
        return float(statistics.median(getattr(s, attribute) for s in self.of(variant)))

    @property
    def correct(self) -> bool:
        """Every sweep decided what it should."""
        return bool(self.sweeps) and not any(s.problems for s in self.sweeps)


Progress = Callable[[str], None]


def hub_api_direct(hub: Hub) -> str:
    """The Hub's own API URL, as singleuser servers get it (``JUPYTERHUB_API_URL``: the Hub's
    port, not through the proxy)."""
    config = (hub.workdir / CONFIG_NAME).read_text()
    match = re.search(r"^c\.JupyterHub\.hub_port = (\d+)$", config, re.MULTILINE)
    if not match:
        raise RuntimeError("the Hub's port is not in its generated config")
    return f"http://127.0.0.1:{match[1]}/hub/api"


@dataclass
class FakeJupyterProcess:
    """The running :mod:`benchmarks.fakejupyter` process and a client for its controls."""

    process: asyncio.subprocess.Process
    url: str
    client: httpx.AsyncClient

    @property
    def pid(self) -> int:
        """Its process id."""
        return self.process.pid

    async def set_servers(self, models: dict[str, Any]) -> None:
        """Replace every server's kernels and terminals (and empty the token caches)."""
        response = await self.client.put("/_bench/servers", json=models)
        response.raise_for_status()

    async def forget_tokens(self) -> None:
        """Empty every server's token cache."""
        (await self.client.post("/_bench/forget-tokens")).raise_for_status()

    async def stats(self, reset: bool = False) -> dict[str, Any]:
        """Counters since the last reset."""
        response = await self.client.get("/_bench/stats", params={"reset": "1" if reset else ""})
        response.raise_for_status()
        return dict(response.json())


@contextlib.asynccontextmanager
async def fake_jupyter(hub_api: str, log_path: Path) -> AsyncIterator[FakeJupyterProcess]:
    """Start :mod:`benchmarks.fakejupyter` on 127.0.0.1 (a free port); stop it at the end."""
    with _append(log_path) as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.fakejupyter",
            "--hub-api",
            hub_api,
            cwd=str(REPO_ROOT),
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30.0)
        match = re.fullmatch(rb"listening on (\d+)\s*", line)
        if not match:
            raise RuntimeError(f"the fake Jupyter server did not start (see {log_path})")
        url = f"http://127.0.0.1:{int(match[1])}"
        async with httpx.AsyncClient(base_url=url, timeout=60.0) as client:
            yield FakeJupyterProcess(process, url, client)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10.0)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()


def _append(path: Path) -> BinaryIO:
    return path.open("ab")


def kernel_policy(
    hub_url: str,
    kernels: dict[str, Any] | None,
    proxy_url: str,
    *,
    timeout: float,
    concurrency: int,
) -> Policy:
    """A dry-run policy of the benchmark, with ``spec.kernels`` (via the fake servers)."""
    spec: dict[str, Any] = {
        "hub": {"url": hub_url, "tokenSecretRef": TOKEN_REF},
        "idleTimeout": int(timeout),
        "concurrency": concurrency,
        "pageSize": 200,
        "dryRun": True,
    }
    if kernels is not None:
        spec["kernels"] = {**kernels, "via": "proxy", "proxyURL": proxy_url}
    return parse_spec(spec)


def check(
    expected: Expected, result: SweepResult, stats: dict[str, Any], sweep: KernelSweep
) -> list[str]:
    """What a sweep did differently from what it should have."""
    problems = []
    stops = {c.label for c in result.culled}
    protected = {p.user for p in result.protected}
    probed = set(stats["probed"])

    def differ(what: str, got: set[str], want: frozenset[str]) -> None:
        if got != want:
            extra, missing = sorted(got - want), sorted(want - got)
            problems.append(
                f"{what}: {len(got)} instead of {len(want)} (extra {extra[:3]}, "
                f"missing {missing[:3]})"
            )

    differ("would stop", stops, expected.stops)
    differ("protected", protected, expected.protected)
    differ("probed", probed, expected.probed)
    if result.probes.failures:
        problems.append(f"{len(result.probes.failures)} probes failed")
    if result.culls and not all(c.dry_run for c in result.culls):
        problems.append("a cull was not a dry run")
    if stats["tracked"]:
        problems.append(f"{stats['tracked']} probe requests without no_track_activity=1")
    if stats["forbidden"] or stats["token_check_failures"]:
        problems.append(f"{stats['forbidden']} probe requests refused")
    user_gets = sweep.requests.get("GET /user", 0)
    if user_gets - sweep.token_checks not in (0, 1):
        problems.append(
            f"the Hub logged {user_gets} GET /user, the servers counted "
            f"{sweep.token_checks} token checks"
        )
    return problems


async def _sweep_once(
    bench: BenchHub,
    log: HubLog,
    fake: FakeJupyterProcess,
    policy: Policy,
    token: str,
    memory: SweepMemory,
    probe_tokens: ProbeTokens,
) -> tuple[KernelSweep, SweepResult, dict[str, Any]]:
    """One dry-run sweep with the meters around it (the same as scenarios 1 and 2, plus the
    fake servers' CPU and counters)."""
    await asyncio.sleep(1.0)  # let the Hub finish whatever came before
    await fake.stats(reset=True)
    mark = log.mark()
    proxy = bench.proxy_pid
    others = OtherLoad([os.getpid(), bench.pid, proxy, fake.pid])
    hub0, fake0 = cpu_seconds(bench.pid), cpu_seconds(fake.pid)
    proxy0 = cpu_seconds(proxy) if proxy else 0.0
    started = time.monotonic()
    sources = SweepSources(token, memory=memory, probe_tokens=probe_tokens)
    outcome = await sweep_policy(policy, sources)
    seconds = time.monotonic() - started
    hub1, fake1 = cpu_seconds(bench.pid), cpu_seconds(fake.pid)
    proxy1 = cpu_seconds(proxy) if proxy else 0.0
    other_load = others.cores()
    if outcome.result is None:
        raise SweepFailed(f"hubcull sweep failed: {outcome.reason}: {outcome.message}")
    result = outcome.result
    stats = await fake.stats()
    # anyone: the servers check the probe tokens, which belong to the servers' users
    requests = await log.requests_since(mark, who=None)
    sweep = KernelSweep(
        variant="",
        round=0,
        seconds=seconds,
        hub_cpu=hub1 - hub0,
        proxy_cpu=proxy1 - proxy0,
        fake_cpu=fake1 - fake0,
        requests=count_by_kind(requests),
        token_checks=int(stats["token_checks"]),
        probe_requests=dict(stats["requests"]),
        probed=len(stats["probed"]),
        probe_results=dict(result.probes.results),
        stops=len(result.culled),
        protected=len(result.protected),
        other_load=other_load,
    )
    return sweep, result, stats


async def scenario4(config: Any, workdir: Path, progress: Progress) -> Scenario4:
    """Kernel-aware culling on its own Hub: the variants in rounds, each checked."""
    plan = KernelPlan(config.s4_servers, config.s4_idle, config.timeout, config.seed + 3)
    result = Scenario4(
        config.s4_servers, config.s4_idle, config.timeout, config.concurrency, config.s4_rounds
    )
    result.kinds = plan.kind_counts()
    kind_of = {server.name: server.kind for server in plan.servers}
    progress(f"scenario 4: a Hub with {plan.count} servers, {len(plan.hub_idle)} idle by the Hub")
    hub = await launch_hub(workdir / "hub-s4", slow_stop_timeout=10.0, slow_spawn_timeout=10.0)
    try:
        bench = BenchHub(hub, spawn_concurrency=config.spawn_concurrency)
        await bench.ensure_running(plan.count)
        # the probes carry per-server tokens, kept for the whole scenario as the operator
        # keeps them: one source per policy, as in the operator (a sweep without
        # spec.kernels deletes its source's tokens; scenario 5 measures what making them
        # costs). (b) and (b') are one policy, (c), (d) and (d') another.
        token = await hub.token([*MINIMAL_SCOPES, "tokens"], note="bench-kernels")
        probe_tokens: dict[str, ProbeTokens] = {}
        log = HubLog(hub)
        async with fake_jupyter(hub_api_direct(hub), workdir / "fakejupyter.log") as fake:
            setup0 = time.monotonic()
            now, applied = datetime.now(timezone.utc), time.monotonic()
            await hub.set_times_bulk(plan.hub_updates(now))
            await fake.set_servers(plan.jupyter_models(now))
            result.setup_seconds = bench.setup_seconds + time.monotonic() - setup0
            before = await bench.ready_users()
            await asyncio.sleep(2.0)
            idle0, wall0 = cpu_seconds(bench.pid), time.monotonic()
            await asyncio.sleep(config.idle_sample)
            result.idle_hub_cpu = (cpu_seconds(bench.pid) - idle0) / (time.monotonic() - wall0)
            c, t = config.concurrency, config.timeout
            policies = {
                v.key: kernel_policy(hub.api_url, v.kernels, fake.url, timeout=t, concurrency=c)
                for v in VARIANTS
            }
            memory = SweepMemory()
            for round_ in range(config.s4_rounds):
                order = list(VARIANTS)
                if round_ % 2:  # the other way round, but (b') after (b), (d) and (d') after (c)
                    order = [*order[3:], order[1], order[2], order[0]]
                for variant in order:
                    if variant.forget_tokens:
                        await fake.forget_tokens()
                    if variant.new_memory:
                        memory = SweepMemory()
                    progress(f"scenario 4: round {round_ + 1}/{config.s4_rounds}: {variant.label}")
                    tokens = probe_tokens.setdefault(
                        json.dumps(variant.kernels, sort_keys=True), ProbeTokens()
                    )
                    sweep, swept, stats = await _sweep_once(
                        bench, log, fake, policies[variant.key], token, memory, tokens
                    )
                    sweep.variant, sweep.round = variant.key, round_ + 1
                    elapsed = time.monotonic() - applied
                    sweep.problems = check(plan.expected(variant.key, elapsed), swept, stats, sweep)
                    if variant.key not in result.probed_kinds:
                        result.probed_kinds[variant.key] = dict(
                            Counter(kind_of[name] for name in stats["probed"])
                        )
                    result.sweeps.append(sweep)
                    progress(
                        f"  {sweep.seconds:.2f} s, Hub CPU {sweep.hub_cpu:.2f} s, "
                        f"{sweep.hub_requests} Hub requests ({sweep.token_checks} token checks), "
                        f"{sweep.probed} probed, would stop {sweep.stops}, "
                        f"protected {sweep.protected}"
                        + (f"; PROBLEMS: {'; '.join(sweep.problems)}" if sweep.problems else "")
                    )
            after = await bench.ready_users()
            if before != after:
                raise RuntimeError(f"dry runs changed the running servers: {before ^ after}")
    finally:
        await hub.shutdown()
    return result
