"""Scenario 5: what the per-server probe tokens of ``spec.kernels`` (issue 17) cost the Hub.

Each probe carries a token owned by the server's user and scoped to that server, made by
hubcull's token source (:mod:`hubcull.engine.signals.probetokens`) through
``POST /hub/api/users/{user}/tokens``, reused until 5 minutes before it expires (1 h) and
then replaced (a new one made, the old one deleted). This scenario measures the Hub requests
and Hub CPU of that source for every server probed at every sweep (the most a policy can
probe: ``idleFrom: kernels`` with servers that have no kernel) over an hour of sweeps every
minute, on a real Hub with FakeSpawner servers. An hour is simulated: the token source runs
on a clock the benchmark moves by ``every`` seconds per sweep, so the hour takes seconds;
the Hub's own clock is not moved (the tokens' real lifetime does not matter here, since the
source renews by its own clock).

The reference, measured in the same run on the same Hub: the token checks a probe already
costs. A singleuser server asks the Hub who a token belongs to (``GET /hub/api/user`` with
the token) and caches the answer for 5 minutes, so probing every server every minute for an
hour costs the Hub 12 checks per server; the benchmark makes those checks itself, with the
servers' real probe tokens, 12 rounds of one check per server.

Hub CPU is the Hub process's CPU time (``/proc``, user + system) around each phase; Hub
requests are the Hub's access-log lines in that phase.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tests.support.jhub import MINIMAL_SCOPES, launch_hub

from benchmarks.harness import ACCESS_LINE, BenchHub, HubLog, cpu_seconds, user_name
from hubcull.engine.hub.client import HubClient
from hubcull.engine.signals.probetokens import ProbeTokens

Progress = Callable[[str], None]

#: How long a singleuser server trusts a token check (JupyterHub's HubAuth.cache_max_age).
SERVER_CACHE_SECONDS = 300.0


@dataclass
class Phase:
    """One measured phase: wall time, the Hub's CPU, the requests it logged (by kind)."""

    label: str
    seconds: float = 0.0
    hub_cpu: float = 0.0
    requests: dict[str, int] = field(default_factory=dict)

    @property
    def request_count(self) -> int:
        """Requests the Hub logged in the phase."""
        return sum(self.requests.values())


@dataclass
class Scenario5:
    """Results of scenario 5."""

    servers: int
    minutes: int
    every: float
    lifetime: int
    renew_before: float
    concurrency: int
    check_rounds: int = 0
    source: Phase | None = None
    checks: Phase | None = None
    #: sweep number -> (tokens made, tokens deleted, Hub CPU seconds, wall seconds) of the
    #: sweeps that made or deleted any
    busy_sweeps: dict[int, tuple[int, int, float, float]] = field(default_factory=dict)
    steady_sweep_seconds: float = 0.0
    idle_hub_cpu: float = 0.0
    setup_seconds: float = 0.0


def _kinds(text: str) -> dict[str, int]:
    """The Hub's access-log lines of ``text`` by kind (``POST /users/{name}/tokens``...)."""
    counts: Counter[str] = Counter()
    for match in ACCESS_LINE.finditer(text):
        path = match["uri"].split("?", 1)[0].removeprefix("/hub/api")
        parts = path.split("/")
        if len(parts) > 2 and parts[1] == "users":
            parts[2] = "{name}"
        if len(parts) > 4 and parts[3] == "tokens":
            parts[4] = "{id}"
        if "bench-sentinel" in match["uri"]:
            continue
        counts[f"{match['method']} {'/'.join(parts)} {match['status']}"] += 1
    return dict(counts)


async def _phase(log: HubLog, pid: int, label: str, work: Callable[[], Any]) -> Phase:
    await log.flush()
    start = log.mark()
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    await work()
    seconds = time.monotonic() - t0
    await log.flush()
    cpu1 = cpu_seconds(pid)
    text = log._read(start)
    return Phase(label, seconds, cpu1 - cpu0, _kinds(text))


async def scenario5(config: Any, workdir: Path, progress: Progress) -> Scenario5:
    """The token source over ``s5_minutes`` sweeps every ``s5_every`` seconds, then the
    reference token checks, on one Hub with ``s5_servers`` running servers."""
    n, minutes, every = config.s5_servers, config.s5_minutes, config.s5_every
    result = Scenario5(n, minutes, every, 3600, 300.0, config.concurrency)
    progress(f"scenario 5: a Hub with {n} servers, the probe tokens of {minutes} sweeps")
    hub = await launch_hub(workdir / "hub-s5", slow_stop_timeout=10.0, slow_spawn_timeout=10.0)
    try:
        bench = BenchHub(hub, spawn_concurrency=config.spawn_concurrency)
        setup0 = time.monotonic()
        await bench.ensure_running(n)
        result.setup_seconds = time.monotonic() - setup0
        token = await hub.token([*MINIMAL_SCOPES, "tokens"], note="bench-probe-tokens")
        log = HubLog(hub)
        await asyncio.sleep(2.0)
        idle0, wall0 = cpu_seconds(bench.pid), time.monotonic()
        await asyncio.sleep(config.idle_sample)
        result.idle_hub_cpu = (cpu_seconds(bench.pid) - idle0) / (time.monotonic() - wall0)
        keys = [(user_name(i), "") for i in range(n)]
        now = [0.0]
        tokens = ProbeTokens(
            lifetime=result.lifetime, renew_before=result.renew_before, clock=lambda: now[0]
        )
        held: dict[tuple[str, str], str] = {}
        steady: list[float] = []
        async with HubClient(hub.api_url, token, concurrency=config.concurrency) as client:

            async def sweeps() -> None:
                for sweep in range(minutes):
                    now[0] = sweep * every
                    made, deleted = tokens.counts.created, tokens.counts.deleted
                    t0, cpu0 = time.monotonic(), cpu_seconds(bench.pid)
                    await tokens.keep_only(client, keys)
                    got = await asyncio.gather(*(tokens.token_for(client, k) for k in keys))
                    held.update(zip(keys, got, strict=True))
                    made, deleted = tokens.counts.created - made, tokens.counts.deleted - deleted
                    if made or deleted:
                        cpu, wall = cpu_seconds(bench.pid) - cpu0, time.monotonic() - t0
                        result.busy_sweeps[sweep] = (made, deleted, cpu, wall)
                        progress(
                            f"  sweep {sweep}: {made} tokens made, {deleted} deleted, "
                            f"Hub CPU {cpu:.2f} s, {wall:.1f} s"
                        )
                    else:
                        steady.append(time.monotonic() - t0)

            result.source = await _phase(log, bench.pid, "token source", sweeps)
            result.steady_sweep_seconds = sorted(steady)[len(steady) // 2] if steady else 0.0
            progress(
                f"  token source: {result.source.request_count} Hub requests, Hub CPU "
                f"{result.source.hub_cpu:.2f} s"
            )
            result.check_rounds = max(1, round(minutes * every / SERVER_CACHE_SECONDS))
            limit = asyncio.Semaphore(config.concurrency)
            async with httpx.AsyncClient(timeout=60) as http:

                async def check(probe_token: str) -> None:
                    async with limit:
                        answer = await http.get(
                            f"{hub.api_url}/user",
                            headers={"Authorization": f"token {probe_token}"},
                        )
                    if answer.status_code != 200:
                        raise RuntimeError(f"a token check answered {answer.status_code}")

                async def checks() -> None:
                    for _ in range(result.check_rounds):
                        await asyncio.gather(*(check(t) for t in held.values()))

                result.checks = await _phase(log, bench.pid, "token checks", checks)
            progress(
                f"  reference: {result.checks.request_count} token checks, Hub CPU "
                f"{result.checks.hub_cpu:.2f} s"
            )
            await tokens.release(client, timeout=600)
    finally:
        await hub.shutdown()
    return result


def scenario5_table(s5: Scenario5) -> str:
    """The Markdown table of scenario 5: the token source against the reference."""
    assert s5.source is not None and s5.checks is not None
    ref = s5.checks

    def row(phase: Phase, what: str) -> str:
        requests = ", ".join(f"{count} {kind}" for kind, count in sorted(phase.requests.items()))
        return (
            f"| {what} | {phase.request_count} | "
            f"{phase.request_count / max(ref.request_count, 1):.2f}x | "
            f"{phase.hub_cpu:.2f} s | {phase.hub_cpu / max(ref.hub_cpu, 1e-9):.2f}x | "
            f"{phase.seconds:.1f} s | {requests} |"
        )

    lines = [
        "| phase | Hub requests | ratio | Hub CPU | ratio | wall time | requests by kind |",
        "|---|---|---|---|---|---|---|",
        row(ref, f"reference: the probes' token checks ({s5.check_rounds} per server)"),
        row(s5.source, f"the token source, {s5.minutes} sweeps every {s5.every:g} s"),
    ]
    busy = "; ".join(
        f"sweep {k}: {m} made, {d} deleted, Hub CPU {cpu:.2f} s, {wall:.1f} s"
        for k, (m, d, cpu, wall) in s5.busy_sweeps.items()
    )
    lines += [
        "",
        f"Sweeps that made or deleted tokens: {busy or 'none'}; every other sweep asked the "
        f"Hub nothing (median {1000 * s5.steady_sweep_seconds:.1f} ms for {s5.servers} "
        "servers' tokens).",
    ]
    return "\n".join(lines)
