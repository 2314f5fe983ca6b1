"""Kernel-aware deciding (``spec.kernels``): which servers to probe, probing them, and deciding
with what they said.

The Hub pays for every probe (each server asks it to resolve the token), so only servers
whose decision can depend on their kernels are probed:

* with ``idleFrom: kernels``, in-scope servers running for at least ``idleTimeout``, except
  those whose kernels were active so recently that they cannot be idle yet
  (:class:`~hubcull.engine.memory.KernelMemory`); with ``spec.warn``, ``warn.before`` earlier,
  so that a warning is given by the kernels' idle time too;
* with ``protectBusy``, the servers the decision would stop (or warn) for idleness or
  capacity; when a busy one is kept, capacity picks another server, which is probed in turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from .decisions import Plan, decide
from .errors import PodsUnavailable
from .hubmodel import Server, ServerLabelled, Snapshot
from .kernelprobe import KernelProber, ProbeOutcome
from .memory import KernelMemory
from .pods import PodSource, ServerPod
from .policy import Policy
from .rules.demand import DemandData
from .selection import server_in_scope
from .signals import KernelActivity, ServerKey, ServerSignals, Signals
from .warnrules import Warned

log = logging.getLogger(__name__)

#: Rounds of "decide, probe the new candidates" before giving up on the rest (capacity mode
#: with many busy servers); candidates still unprobed then wait for the next sweep.
MAX_PROBE_ROUNDS = 20


@dataclass(frozen=True)
class ProbeFailure(ServerLabelled):
    """A server whose probe failed (the Hub decided for it)."""

    user: str
    server: str
    result: str
    detail: str


@dataclass
class ProbeStats:
    """Probes of one sweep: how many ended how, and which failed."""

    results: Counter[str] = field(default_factory=Counter)
    failures: list[ProbeFailure] = field(default_factory=list)

    def count(self, server: Server, outcome: ProbeOutcome) -> None:
        """Count one probe's outcome."""
        self.results[outcome.result] += 1
        if not outcome.ok:
            self.failures.append(
                ProbeFailure(server.user, server.name, outcome.result, outcome.detail)
            )


class ServerLocator:
    """Where a server's Jupyter API is: through the proxy, or at its pod (pods are listed
    once per sweep, and only when a server needs them)."""

    def __init__(self, policy: Policy, pods: PodSource | None) -> None:
        self._policy = policy
        self._source = pods
        self._pods: Mapping[ServerKey, ServerPod] | None = None

    async def pods(self) -> Mapping[ServerKey, ServerPod]:
        """The servers' pods (listed at the first call). Raises
        :class:`~hubcull.engine.errors.PodsUnavailable`."""
        if self._pods is None:
            if self._source is None:
                raise PodsUnavailable(
                    "this policy needs the servers' pods, which only the operator can list"
                )
            self._pods = await self._source.server_pods()
        return self._pods

    async def url(self, server: Server) -> tuple[str | None, str]:
        """The server's base URL, or ``None`` and why there is none."""
        if not server.url:
            return None, "the Hub gave no URL for this server"
        kernels = self._policy.kernels
        if kernels is not None and kernels.via == "proxy":
            return kernels.proxy_url + server.url, ""
        pod = (await self.pods()).get(server.key)
        if pod is None:
            return None, "no pod labelled component=singleuser-server for this server"
        if pod.address is None:
            return None, f"pod {pod.name} has no IP address yet"
        return pod.address + server.url, ""


@dataclass
class KernelInspection:
    """What a sweep of a policy with ``spec.kernels`` needs to look into its servers."""

    prober: KernelProber
    locator: ServerLocator
    memory: KernelMemory


def running_in_scope(policy: Policy, snapshot: Snapshot) -> list[Server]:
    """The ready servers the policy governs."""
    return [
        server
        for user in snapshot.users
        for server in user.servers
        if server.ready and not server.pending and server_in_scope(policy, user, server)
    ]


def _idle_horizon(policy: Policy) -> float:
    """How long a server must be idle before its kernels matter: ``idleTimeout``, less
    ``warn.before`` (a server is warned that long before it can be idle enough)."""
    before = policy.warn.before if policy.warn is not None else 0.0
    return max(policy.idle_timeout - before, 0.0)


def _old_enough(policy: Policy, server: Server, now: datetime) -> bool:
    """Running for at least the idle horizon (an unknown start counts as old enough)."""
    if server.started is None:
        return True
    return (now - server.started).total_seconds() >= _idle_horizon(policy)


async def decide_with_kernels(
    policy: Policy,
    snapshot: Snapshot,
    inspection: KernelInspection,
    warned: Mapping[ServerKey, Warned] | None = None,
    known: Signals | None = None,
    demand: DemandData | None = None,
) -> tuple[Plan, ProbeStats]:
    """Probe the servers whose decision depends on their kernels, then decide (``warned``:
    the warnings of earlier sweeps, see :func:`~hubcull.engine.decisions.decide`).

    ``known`` are the signals gathered before (usage readings); probes add to them.
    Raises :class:`~hubcull.engine.errors.PodsUnavailable` (before any probe) when the pods
    cannot be listed; a failed probe only leaves its server to the Hub's ``last_activity``.
    """
    kernels = policy.kernels
    assert kernels is not None
    prober, locator, memory = inspection.prober, inspection.locator, inspection.memory
    now = snapshot.now
    stats = ProbeStats()
    signals: dict[ServerKey, ServerSignals] = dict(known or {})
    tried: set[ServerKey] = set()

    def note(key: ServerKey, activity: KernelActivity) -> None:
        signals[key] = replace(signals.get(key, ServerSignals()), kernels=activity)

    running = {server.key: server for server in running_in_scope(policy, snapshot)}
    by_kernels = kernels.idle_from == "kernels"

    async def probe(servers: Iterable[Server]) -> None:
        servers = [s for s in servers if s.key not in tried]
        tried.update(s.key for s in servers)
        urls = [await locator.url(server) for server in servers]  # pods listed once, first
        outcomes = await asyncio.gather(
            *(
                prober.probe(url, terminals=by_kernels) if url is not None else _no_address(problem)
                for url, problem in urls
            )
        )
        for server, outcome in zip(servers, outcomes, strict=True):
            stats.count(server, outcome)
            if outcome.activity is not None:
                note(server.key, outcome.activity)
                if by_kernels:
                    memory.note(server, outcome.activity)

    if by_kernels:
        memory.keep_only(running.values())
        due = []
        for server in running.values():
            if not _old_enough(policy, server, now):
                continue
            remembered = memory.recall(server, now, _idle_horizon(policy))
            if remembered is not None:
                note(server.key, remembered)
            else:
                due.append(server)
        await probe(due)
    plan = decide(policy, snapshot, signals=signals, warned=warned, demand=demand)
    if not kernels.protect_busy:
        return plan, stats
    for _ in range(MAX_PROBE_ROUNDS):
        due = [running[key] for key in _idle_or_capacity(plan) if key not in tried]
        if not due:
            return plan, stats
        await probe(due)
        plan = decide(policy, snapshot, signals=signals, warned=warned, demand=demand)
    unprobed = {key for key in _idle_or_capacity(plan) if key not in tried}
    if unprobed:
        log.warning("%d servers could not be probed in this sweep; they wait", len(unprobed))
        plan.stops = [d for d in plan.stops if (d.user, d.server) not in unprobed]
        plan.held_back = [d for d in plan.held_back if (d.user, d.server) not in unprobed]
    return plan, stats


def _idle_or_capacity(plan: Plan) -> list[ServerKey]:
    """Servers stopped, held back, warned or waiting for a reason a busy kernel prevents."""
    every = [*plan.stops, *plan.held_back, *plan.warnings, *plan.pending]
    return [(d.user, d.server) for d in every if d.reason != "maxAge"]


async def _no_address(problem: str) -> ProbeOutcome:
    return ProbeOutcome("no_pod", detail=problem)
