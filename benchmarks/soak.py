"""Soak run: the operator sweeping every 10s for 30 minutes against a Hub with churn.

    .venv/bin/python -m benchmarks.soak                 # 30 minutes (not run in CI)
    .venv/bin/python -m benchmarks.soak --quick         # 2 minutes, fewer users
    .venv/bin/python -m benchmarks.soak --minutes 5 --users 80 --out soak.json

What runs: a real JupyterHub (tests/support/jhub.py, FakeSpawner), the Kubernetes API
emulator (tests/support/kube.py), and ``hubcull run`` as a subprocess with one CullPolicy
(``every: 10s``, ``idleTimeout: 60s`` by default) whose Hub URL goes through the fault proxy
of tests/support/faultproxy.py in pass-through mode, which records every request.

The churn driver plays the users, once a second, talking to the Hub directly: stopped
servers start again, running servers of "active" users report activity every few seconds,
users switch between active and idle (so servers become idle, and some active again just
before the timeout), and some users stop their own servers. It keeps its own record of every
activity it reported and when each server became ready.

Reported:

* memory: the operator's RSS, sampled every 10s; the baseline is the median of the samples
  in the second minute (first 30s in --quick), growth = last - baseline, and the slope of a
  least-squares line over the second half of the run (KiB per minute);
* wrong culls: stops the Hub accepted (202/204, seen at the proxy) of a server whose last
  activity reported by the driver, or whose start, was less than idleTimeout before the stop
  by the Hub's clock (the same host's clock here). ``raced`` counts those where that activity
  came after the sweep's listing (no culler can know it; reported, not hidden);
* overdue: running servers idle longer than idleTimeout + every + 5s (culls missed);
* sweeps, failed sweeps, culls, and whether status.culledTotal equals the accepted stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
from tests.support.faultproxy import FaultProxy, fault_proxy
from tests.support.jhub import MINIMAL_SCOPES, Hub, HubAPIError, launch_hub
from tests.support.kube import kube_server, run_operator_process
from tests.support.operator_env import NS, condition, cullpolicy, policy_status, secret

HUBCULL = str(Path(sys.executable).with_name("hubcull"))


@dataclass
class Server:
    """The driver's record of one user's default server."""

    user: str
    running: bool = False
    active_mode: bool = True
    #: epoch seconds of every start (when it was ready) and every activity reported, in order
    marks: list[float] = field(default_factory=list)

    def last_activity(self, at: float) -> float:
        """When it was last started or reported active, at time ``at`` (0: never)."""
        return max((t for t in self.marks if t <= at), default=0.0)


@dataclass
class Options:
    minutes: float
    users: int
    every: int
    idle_timeout: int
    seed: int
    out: Path | None
    workdir: Path


class Churn:
    """Plays the users; one step a second."""

    def __init__(self, hub: Hub, opts: Options) -> None:
        self.hub = hub
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.servers = {f"soak{i:03d}": Server(f"soak{i:03d}") for i in range(opts.users)}
        self.actions = {"start": 0, "activity": 0, "user_stop": 0, "switch": 0, "errors": 0}
        self.overdue: list[float] = []  # idle seconds of servers past the deadline, per look

    async def setup(self) -> None:
        await self.hub.create_users(list(self.servers))

    async def sync(self) -> None:
        """Learn which servers the culler stopped."""
        active = await self.hub.servers("active")
        for name, server in self.servers.items():
            server.running = (name, "") in active

    async def step(self) -> None:
        await self.sync()
        now = time.time()
        tasks = []
        deadline = self.opts.idle_timeout + self.opts.every + 5
        for server in self.servers.values():
            roll = self.rng.random()
            if not server.running:
                if roll < 0.05:
                    tasks.append(self.start(server))
                continue
            idle = now - server.last_activity(now)
            if idle > deadline:
                self.overdue.append(idle)
            if roll < 0.004:
                tasks.append(self.user_stop(server))
            elif roll < 0.03:
                server.active_mode = not server.active_mode
                self.actions["switch"] += 1
            elif server.active_mode and roll < 0.35:
                tasks.append(self.activity(server))
        await asyncio.gather(*tasks)

    async def start(self, server: Server) -> None:
        try:
            await self.hub.spawn(server.user, wait=True, timeout=30)
        except HubAPIError:
            self.actions["errors"] += 1
            return
        server.marks.append(time.time())
        server.running = True
        server.active_mode = self.rng.random() < 0.7
        self.actions["start"] += 1

    async def user_stop(self, server: Server) -> None:
        try:
            await self.hub.stop(server.user, wait=True, timeout=30)
        except HubAPIError:
            self.actions["errors"] += 1
            return
        server.running = False
        self.actions["user_stop"] += 1

    async def activity(self, server: Server) -> None:
        stamp = time.time()
        try:
            await self.hub.post_activity(
                server.user, "", datetime.fromtimestamp(stamp, timezone.utc)
            )
        except HubAPIError:
            self.actions["errors"] += 1  # stopped meanwhile (culled or by its user)
            return
        server.marks.append(stamp)
        self.actions["activity"] += 1


def judge_culls(proxy: FaultProxy, churn: Churn, idle_timeout: float) -> dict[str, Any]:
    """Classify every stop the Hub accepted from hubcull."""
    listings = sorted(s.started for s in proxy.requests(r"^GET /hub/api/users\?.*offset=0"))
    wrong: list[dict[str, Any]] = []
    raced = 0
    stops = proxy.stops()
    for stop in stops:
        user = stop.path.split("/")[4]
        server = churn.servers[user]
        idle_at_stop = stop.started - server.last_activity(stop.started)
        if idle_at_stop >= idle_timeout:
            continue
        listing = max((t for t in listings if t <= stop.started), default=0.0)
        idle_at_listing = listing - server.last_activity(listing)
        entry = {
            "user": user,
            "idle_at_stop": round(idle_at_stop, 2),
            "idle_at_listing": round(idle_at_listing, 2),
        }
        if idle_at_listing >= idle_timeout or server.last_activity(listing) == 0.0:
            raced += 1
            entry["raced"] = True
        wrong.append(entry)
    return {"stops": len(stops), "wrong": len(wrong), "raced": raced, "details": wrong[:20]}


def memory_summary(samples: list[tuple[float, int]], baseline_after: float) -> dict[str, Any]:
    t0 = samples[0][0]
    mib = [(t - t0, rss / 2**20) for t, rss in samples]
    window = [m for t, m in mib if baseline_after <= t < baseline_after + 60] or [mib[0][1]]
    baseline = statistics.median(window)
    half = [(t, m) for t, m in mib if t >= mib[-1][0] / 2]
    slope = 0.0
    if len(half) >= 3:
        mean_t = statistics.fmean(t for t, _ in half)
        mean_m = statistics.fmean(m for _, m in half)
        num = sum((t - mean_t) * (m - mean_m) for t, m in half)
        den = sum((t - mean_t) ** 2 for t, _ in half)
        slope = num / den * 60 * 1024 if den else 0.0
    return {
        "samples": len(mib),
        "baseline_mib": round(baseline, 1),
        "last_mib": round(mib[-1][1], 1),
        "max_mib": round(max(m for _, m in mib), 1),
        "growth_mib": round(mib[-1][1] - baseline, 1),
        "slope_kib_per_min_second_half": round(slope, 1),
    }


async def soak(opts: Options) -> dict[str, Any]:
    hub = await launch_hub(opts.workdir / "hub")
    try:
        async with (
            kube_server(opts.workdir / "kube") as kube,
            fault_proxy(hub.public_url) as proxy,
        ):
            churn = Churn(hub, opts)
            await churn.setup()
            await kube.create_namespace(NS)
            await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
            await kube.create(
                cullpolicy(
                    proxy.api_url,
                    name="soak",
                    every=f"{opts.every}s",
                    idleTimeout=f"{opts.idle_timeout}s",
                )
            )
            log = opts.workdir / "operator.log"
            command = [HUBCULL, "run", "--namespace", NS]
            async with run_operator_process(kube, command, log_path=log) as operator:
                assert operator.process is not None
                process = psutil.Process(operator.process.pid)
                samples: list[tuple[float, int]] = []
                started = time.monotonic()
                end = started + opts.minutes * 60
                next_sample = started
                while time.monotonic() < end:
                    operator.check()
                    tick = time.monotonic()
                    await churn.step()
                    if tick >= next_sample:
                        samples.append((time.time(), process.memory_info().rss))
                        next_sample += 10
                        elapsed = (tick - started) / 60
                        print(
                            f"{elapsed:5.1f} min  rss {samples[-1][1] / 2**20:6.1f} MiB  "
                            f"culls {len(proxy.stops()):4d}  "
                            f"sweeps {proxy.count(r'^GET /hub/api/$'):4d}",
                            flush=True,
                        )
                    await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
                status = await policy_status(kube, "soak")
                events = await kube.events_for(NS, "soak")
            culls = judge_culls(proxy, churn, opts.idle_timeout)
            sweeps = proxy.count(r"^GET /hub/api/$")
            failed_events = [e for e in events if e["reason"] == "SweepFailed"]
            baseline_after = 30.0 if opts.minutes <= 3 else 60.0
            return {
                "options": {k: str(v) for k, v in vars(opts).items()},
                "minutes": opts.minutes,
                "memory": memory_summary(samples, baseline_after),
                "culls": culls,
                "sweeps": sweeps,
                "sweep_failed_events": len(failed_events),
                "ready": condition(status, "Ready").get("status"),
                "culled_total": status.get("culledTotal"),
                "culled_total_matches_stops": status.get("culledTotal") == culls["stops"],
                "overdue_looks": len(churn.overdue),
                "max_overdue_idle_s": round(max(churn.overdue, default=0.0), 1),
                "churn": churn.actions,
                "hub_requests": len(proxy.seen),
            }
    finally:
        await hub.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--quick", action="store_true", help="2 minutes, 30 users")
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--every", type=int, default=10, help="spec.every, seconds")
    parser.add_argument("--idle-timeout", type=int, default=60, help="spec.idleTimeout, seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--workdir", type=Path, help="keep the Hub and operator logs here")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.users = 2.0, 30
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hubcull-soak-"))
    opts = Options(
        args.minutes, args.users, args.every, args.idle_timeout, args.seed, args.out, workdir
    )
    result = asyncio.run(soak(opts))
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    ok = result["culls"]["wrong"] - result["culls"]["raced"] == 0 and result["ready"] == "True"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
