"""High availability and restarts: two `hubcull run` processes with kopf peering, and an
operator killed in the middle of a sweep.

Every Hub request goes through the fault proxy (tests/support/faultproxy.py) in plain
pass-through mode: it records each request and which operator process sent it, so "who
swept when" and "how often was each server stopped" are read from what the Hub was asked.
Every sweep lists the first page of running servers (``state=ready``, offset 0), so those
requests are the sweeps (the Hub's version and the token's scopes are read only now and then:
the operator keeps them for a few minutes).
"""

from __future__ import annotations

import itertools
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from hubcull.k8s.controller import PolicyController
from hubcull.k8s.handlers import FINALIZER
from tests.support.faultproxy import Fault, FaultProxy, Seen, fault_proxy
from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.kube import Kube, SubprocessOperator, run_operator_process
from tests.support.operator_env import (
    CULLPOLICIES,
    NS,
    condition,
    cullpolicy,
    policy_status,
    secret,
)
from tests.support.scenario import TOKEN_REF, ago, populate

HUBCULL = str(Path(sys.executable).with_name("hubcull"))
PEERING = "hubcull"
EVERY = 10.0
#: kopf's peering lifetime for these operators (kopf's default is 60s): a SIGKILLed peer is
#: presumed dead this long after its last keep-alive. Set with HUBCULL_PEERING_LIFETIME.
LIFETIME = 3
SWEEP_START = r"^GET /hub/api/users\?state=ready&(.*&)?offset=0(&|$)"
HOUR = 3600


def run_command(*extra: str) -> list[str]:
    return [HUBCULL, "-vv", "run", "--namespace", NS, *extra]  # -vv: httpx logs each request


def sweeps(proxy: FaultProxy, since: int = 0) -> list[Seen]:
    return proxy.requests(SWEEP_START, since)


def stops_per_server(proxy: FaultProxy) -> dict[str, int]:
    """How many DELETEs per server path the Hub accepted (202 or 204)."""
    counts: dict[str, int] = {}
    for seen in proxy.stops():
        counts[seen.path] = counts.get(seen.path, 0) + 1
    return counts


def gaps(seen: list[Seen]) -> list[float]:
    starts = sorted(s.started for s in seen)
    return [b - a for a, b in itertools.pairwise(starts)]


@pytest.mark.k8s
@pytest.mark.hub
async def test_two_peered_operators_exactly_one_sweeps_and_the_other_takes_over(
    kube: Kube, hub: Hub, tmp_path: Path
) -> None:
    await populate(hub, {("idle1", ""): 2 * HOUR, ("busy1", ""): 60, ("busy2", ""): 60})
    await kube.create_namespace(NS)
    await kube.ensure_peering(PEERING, NS)
    await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
    env = {"HUBCULL_PEERING_LIFETIME": str(LIFETIME)}

    def operator(priority: int, name: str):
        command = run_command("--peering", PEERING, "--priority", str(priority))
        return run_operator_process(kube, command, log_path=tmp_path / f"{name}.log", env=env)

    async with fault_proxy(hub.public_url) as proxy:
        await kube.create(cullpolicy(proxy.api_url, every=f"{EVERY:g}s"))

        def sweepers(since: int = 0) -> list[int | None]:
            return [s.client_pid for s in sweeps(proxy, since)]

        async def swept_by(pid: int, times: int, since: int = 0) -> None:
            async def enough() -> bool:
                return sweepers(since).count(pid) >= times

            await kube.wait_for(enough, timeout=LIFETIME + 3 * EVERY + 10)

        # 1. A (priority 100) alone: it sweeps
        async with operator(100, "a") as a:
            assert a.process is not None
            proxy.identify.add(a.process.pid)
            await swept_by(a.process.pid, 1)
            # 2. B (priority 200) joins: A stands by, B sweeps, on A's schedule
            async with operator(200, "b") as b:
                assert b.process is not None
                proxy.identify.add(b.process.pid)
                await a.wait_for_output("Pausing operations in favour of", timeout=30)
                joined = proxy.mark()  # from A's pause on, only B sweeps
                await swept_by(b.process.pid, 2, joined)
                assert set(sweepers(joined)) == {b.process.pid}
                # 3. the standby A stops (SIGTERM): it leaves B's policy alone (no finalizer
                # release: httpx logs every request A makes at -vv)
                await a.stop()
                assert not re.search(r"(GET|PATCH) \S+/cullpolicies/default ", a.output())
                policy = await kube.get(CULLPOLICIES, NS, "default")
                assert policy is not None and FINALIZER in policy["metadata"]["finalizers"]
                # 4. C (priority 150) becomes the standby; B dies without a goodbye
                async with operator(150, "c") as c:
                    assert c.process is not None
                    proxy.identify.add(c.process.pid)
                    await hub.set_times("busy1", last_activity=ago(2 * HOUR))

                    async def b_culled_busy1() -> bool:
                        return (await policy_status(kube)).get("culledTotal") == 2

                    # kill B between sweeps (a sweep killed midway leaves no lastSweepTime:
                    # see test_operator_killed_mid_sweep_culls_nothing_twice)
                    await kube.wait_for(b_culled_busy1, timeout=3 * EVERY)
                    assert set(sweepers(joined)) == {b.process.pid}
                    killed_at, killed = time.time(), proxy.mark()
                    await b.kill()
                    await swept_by(c.process.pid, 1, killed)
                    after_kill = sweepers(killed)
                    assert set(after_kill) == {c.process.pid}, after_kill
                    takeover = sweeps(proxy, killed)[0].started - killed_at
                    print(f"takeover {takeover:.1f}s after SIGKILL (peering lifetime {LIFETIME}s)")
                    assert "Resuming operations after the pause" in c.output()
                    assert await hub.running_servers() == {("busy2", "")}
        # at any time one operator swept; every server was stopped once
        owners = sweepers()
        print(
            "sweeps by operator:",
            [
                {a.process.pid: "A", b.process.pid: "B", c.process.pid: "C"}.get(p, "?")
                for p in owners
            ],
        )
        assert stops_per_server(proxy) == {
            "/hub/api/users/idle1/server": 1,
            "/hub/api/users/busy1/server": 1,
        }
        # never two sweeps of the policy within one interval, across the operators
        # (lastSweepTime has whole seconds: resume_delay adds one)
        all_gaps = gaps(sweeps(proxy))
        print("gaps between sweeps:", [round(g, 1) for g in all_gaps])
        assert min(all_gaps) >= EVERY - 0.5, all_gaps
        status = await policy_status(kube)
        assert condition(status, "Ready")["status"] == "True"
        assert status["culledTotal"] == 2


@pytest.mark.k8s
@pytest.mark.hub(stop_delay=3)  # a stop takes 3s: the Hub answers 202 after 2s, ends later
async def test_operator_killed_mid_sweep_culls_nothing_twice(
    kube: Kube, hub: Hub, tmp_path: Path
) -> None:
    """SIGKILL while stops are in flight; a new operator finishes the job. Each server is
    stopped once; culledTotal counts what the new operator stopped (the killed sweep never
    wrote its status)."""
    idle = [f"idle{i}" for i in range(6)]
    await populate(hub, {**{(u, ""): 2 * HOUR for u in idle}, ("busy", ""): 60})
    await kube.create_namespace(NS)
    await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
    first: list[SubprocessOperator] = []

    async def kill_first(_: Seen) -> None:
        await first[0].kill()

    async with fault_proxy(hub.public_url) as proxy:
        # the third stop of the first operator arrives: kill it (the request still reaches
        # the Hub, as one already on the wire would)
        proxy.inject(Fault("hook", r"^DELETE ", skip=2, times=1, hook=kill_first))
        await kube.create(cullpolicy(proxy.api_url, every="10s", concurrency=1))
        async with run_operator_process(
            kube, run_command(), log_path=tmp_path / "first.log"
        ) as operator:
            first.append(operator)
            await kube.wait_for(lambda: operator.returncode is not None, timeout=60)
        assert first[0].returncode == -9
        killed_stops = proxy.count("^DELETE ")
        assert killed_stops == 3
        status = await policy_status(kube)
        assert "culledTotal" not in status  # the killed sweep wrote nothing
        async with run_operator_process(kube, run_command(), log_path=tmp_path / "second.log"):

            async def all_idle_stopped() -> bool:
                return await hub.running_servers() == {("busy", "")}

            await kube.wait_for(all_idle_stopped, timeout=60)

            async def counted() -> dict:
                status = await policy_status(kube)
                assert status.get("culledTotal") is not None
                return status

            status = await kube.wait_for(counted, timeout=30)
    per_server = stops_per_server(proxy)
    assert per_server == {f"/hub/api/users/{u}/server": 1 for u in idle}
    # the second operator stopped the three servers the first one never got to; the three
    # the killed sweep stopped are in no total (status is written at the end of a sweep)
    assert status["culledTotal"] == len(idle) - killed_stops
    assert status["culledLastSweep"] == len(idle) - killed_stops


# --------------------------------------------------------------------------------------
# the schedule a (re)started sweep loop resumes (PolicyController.resume_delay)
# --------------------------------------------------------------------------------------

NOW = datetime(2026, 11, 22, 10, 0, 0, tzinfo=timezone.utc)


def body(last: str | None, generation: int = 2, observed: int | None = 2, **spec: Any) -> dict:
    status: dict[str, Any] = {"observedGeneration": observed}
    if last is not None:
        status["lastSweepTime"] = last
    return {
        "metadata": {"generation": generation},
        "spec": {
            "hub": {"url": "http://hub:8081/hub/api", "tokenSecretRef": TOKEN_REF},
            "every": "10m",
            **spec,
        },
        "status": status,
    }


def controller() -> PolicyController:
    return PolicyController(NS, "p", None, None, lambda *_: None, clock=lambda: NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("policy", "delay"),
    [
        (body("2026-11-22T09:58:00Z"), 8 * 60 + 1),  # 2 of 10 minutes gone: 8 (+1s) to go
        (body("2026-11-22T09:49:00Z"), 0),  # overdue: sweep now
        (body("2026-11-22T10:05:00Z"), 10 * 60 + 1),  # a clock ahead: at most one interval
        (body(None), 0),  # never swept
        (body("2026-11-22T09:58:00Z", generation=3), 0),  # the spec changed: sweep now
        (body("2026-11-22T09:58:00Z", every="bad"), 0),  # invalid: the loop reports it now
        (body("yesterday"), 0),
    ],
    ids=["mid-interval", "overdue", "future", "never", "edited", "invalid", "garbled"],
)
def test_resume_delay_keeps_the_interval(policy: dict, delay: float) -> None:
    assert controller().resume_delay(policy) == pytest.approx(delay)
