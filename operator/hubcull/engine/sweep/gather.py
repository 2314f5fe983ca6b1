"""Gathering what the servers say about themselves (``spec.kernels``): probe the servers that
:mod:`~hubcull.engine.rules.needs` picks, in rounds, and judge whether the probes failed as a
whole (a broken setup) or one by one (those servers go to the Hub's ``last_activity``).

Nothing here decides: the sweep (:mod:`~hubcull.engine.sweep.run`) calls
:func:`~hubcull.engine.rules.decisions.decide` once, on everything gathered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from ..hub.model import Server, Snapshot
from ..rules import needs
from ..rules.policy import Policy
from ..rules.signals import KernelActivity, ServerKey, ServerSignals, Signals
from ..rules.warn import Warned
from ..signals.kernels import KernelProber, ProbeOutcome
from ..signals.pods import ServerLocator
from ..signals.probetokens import ProbeTokenRefused, ProbeTokens, TokenMinter
from .memory import KernelMemory
from .records import ProbeStats

log = logging.getLogger(__name__)

#: Rounds of "find the new candidates, probe them" before giving up on the rest (capacity mode
#: with many busy servers); candidates still unprobed then wait for the next sweep.
MAX_PROBE_ROUNDS = 20


@dataclass
class KernelInspection:
    """What a sweep of a policy with ``spec.kernels`` needs to look into its servers: the
    prober, where the servers are, what earlier sweeps saw, and the probe tokens (made through
    ``hub``, the policy's Hub client)."""

    prober: KernelProber
    locator: ServerLocator
    memory: KernelMemory
    tokens: ProbeTokens
    hub: TokenMinter

    async def probe(self, server: Server, terminals: bool) -> ProbeOutcome:
        """Probe one server with its own probe token. Raises
        :class:`~hubcull.engine.hub.client.HubAPIError` when the Hub cannot be asked for the
        token (a refusal for this user is a failed probe of this server alone)."""
        url, problem = await self.locator.url(server)
        if url is None:
            return ProbeOutcome("no_pod", detail=problem)
        try:
            token = await self.tokens.token_for(self.hub, server.key)
        except ProbeTokenRefused as exc:
            return ProbeOutcome("token_refused", detail=str(exc))
        return await self.prober.probe(url, terminals=terminals, token=token)


@dataclass
class KernelReading:
    """What the probes of one sweep found.

    ``signals`` adds the probes' kernel activity to the signals known before; ``needed`` are
    the servers that needed a probe; ``hold`` the servers that must not be stopped for
    idleness or capacity this sweep because what decides them is unknown (probes failing as
    a whole, or candidates left unprobed after :data:`MAX_PROBE_ROUNDS`); ``problem`` says
    why when the probes failed as a whole.
    """

    signals: dict[ServerKey, ServerSignals]
    stats: ProbeStats = field(default_factory=ProbeStats)
    needed: set[ServerKey] = field(default_factory=set)
    hold: set[ServerKey] = field(default_factory=set)
    problem: str | None = None


async def read_kernels(
    policy: Policy,
    snapshot: Snapshot,
    inspection: KernelInspection,
    warned: Mapping[ServerKey, Warned],
    known: Signals,
    where: str,
) -> KernelReading:
    """Probe the servers whose decision depends on their kernels (``where`` names where their
    pods were looked for, for the message of a systemic failure).

    Raises :class:`~hubcull.engine.errors.PodsUnavailable` (before any probe) when the pods
    cannot be listed; a failed probe only leaves its server to the Hub's ``last_activity``.
    """
    kernels = policy.kernels
    assert kernels is not None
    locator, memory = inspection.locator, inspection.memory
    reading = KernelReading(dict(known))
    by_kernels = kernels.idle_from == "kernels"

    def note(key: ServerKey, activity: KernelActivity) -> None:
        reading.signals[key] = replace(reading.signals.get(key, ServerSignals()), kernels=activity)

    async def probe(servers: Iterable[Server]) -> None:
        servers = [s for s in servers if s.key not in reading.needed]
        reading.needed.update(s.key for s in servers)
        for server in servers:
            await locator.url(server)  # pods listed once, before any probe or token
        outcomes = await asyncio.gather(
            *(inspection.probe(server, terminals=by_kernels) for server in servers)
        )
        for server, outcome in zip(servers, outcomes, strict=True):
            reading.stats.count(server, outcome)
            if outcome.activity is not None:
                note(server.key, outcome.activity)
                if by_kernels:
                    memory.note(server, outcome.activity)

    running = needs.running_in_scope(policy, snapshot)
    # the tokens of servers that stopped or left the scope are deleted
    await inspection.tokens.keep_only(inspection.hub, (server.key for server in running))
    if by_kernels:
        memory.keep_only(running)
        horizon = needs.idle_horizon(policy)
        remembered = {
            server.key: activity
            for server in running
            if (activity := memory.recall(server, snapshot.now, horizon)) is not None
        }
        for key, activity in remembered.items():
            note(key, activity)
        await probe(needs.first_probes(policy, snapshot, remembered))
    for _ in range(MAX_PROBE_ROUNDS):
        due = needs.next_probes(policy, snapshot, reading.signals, warned, reading.needed)
        if not due:
            break
        await probe(due)
    else:
        unprobed = {server.key for server in running} - reading.needed
        log.warning("%d servers could not be probed in this sweep; they wait", len(unprobed))
        reading.hold |= unprobed
    reading.problem = systemic_failure(reading, where)
    if reading.problem is not None:
        reading.hold |= {server.key for server in running}
    return reading


def systemic_failure(reading: KernelReading, where: str) -> str | None:
    """Why the probes failed as a whole (``None``: they did not): every probe failed, two or
    more, or servers needed a probe and none of them had a pod. That is the setup (wrong
    namespace, a NetworkPolicy, a token the servers refuse), not the servers."""
    results = reading.stats.results
    tried = sum(results.values())
    failures = reading.stats.failures
    if not failures or len(failures) < tried:
        return None
    no_pod = all(f.result == "no_pod" for f in failures)
    if tried < 2 and not no_pod:
        return None
    first = failures[0]
    if no_pod:
        what = f"none of the {tried} servers that needed a probe had a pod ({where})"
    else:
        what = f"every probe of this sweep failed ({tried} servers, {where})"
    return f"{what}; first error: {first.label}: {first.detail}"

