"""Which servers need which signal this sweep: the pure first step of a sweep.

The Hub pays for every probe (each server asks it to resolve the token), so only servers whose
decision can depend on their kernels are probed:

* with ``idleFrom: kernels``, in-scope servers running for at least ``idleTimeout``, except
  those whose kernels were active so recently that they cannot be idle yet; with
  ``spec.warn``, ``warn.before`` earlier, so that a warning is given by the kernels' idle
  time too;
* with ``protectBusy``, the servers the decision would stop (or warn) for idleness or
  capacity; when a busy one is kept, capacity picks another server, which is probed in turn.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime

from ..hub.model import Server, Snapshot
from .decisions import Plan, decide
from .policy import Policy
from .selection import server_in_scope
from .signals import KernelActivity, ServerKey, Signals
from .warn import Warned


def running_in_scope(policy: Policy, snapshot: Snapshot) -> list[Server]:
    """The ready servers the policy governs."""
    return [
        server
        for user in snapshot.users
        for server in user.servers
        if server.ready and not server.pending and server_in_scope(policy, user, server)
    ]


def idle_horizon(policy: Policy) -> float:
    """How long a server must be idle before its kernels matter: ``idleTimeout``, less
    ``warn.before`` (a server is warned that long before it can be idle enough)."""
    before = policy.warn.before if policy.warn is not None else 0.0
    return max(policy.idle_timeout - before, 0.0)


def old_enough(policy: Policy, server: Server, now: datetime) -> bool:
    """Running for at least the idle horizon (an unknown start counts as old enough)."""
    if server.started is None:
        return True
    return (now - server.started).total_seconds() >= idle_horizon(policy)


def idle_or_capacity(plan: Plan) -> list[ServerKey]:
    """Servers stopped, held back, warned or waiting for a reason a busy kernel prevents."""
    every = [*plan.stops, *plan.held_back, *plan.warnings, *plan.pending]
    return [(d.user, d.server) for d in every if d.reason != "maxAge"]


def first_probes(
    policy: Policy, snapshot: Snapshot, remembered: Mapping[ServerKey, KernelActivity]
) -> list[Server]:
    """With ``idleFrom: kernels``: the running servers to probe before deciding, those old
    enough to be idle whose kernels are not ``remembered`` as active too recently."""
    kernels = policy.kernels
    if kernels is None or kernels.idle_from != "kernels":
        return []
    return [
        server
        for server in running_in_scope(policy, snapshot)
        if old_enough(policy, server, snapshot.now) and server.key not in remembered
    ]


def next_probes(
    policy: Policy,
    snapshot: Snapshot,
    signals: Signals,
    warned: Mapping[ServerKey, Warned],
    tried: Collection[ServerKey],
) -> list[Server]:
    """With ``protectBusy``: the servers that a decision on what is known so far would stop,
    warn or keep waiting for idleness or capacity, and that were not probed yet (empty once
    every such server has been)."""
    kernels = policy.kernels
    if kernels is None or not kernels.protect_busy:
        return []
    plan = decide(policy, snapshot, signals=signals, warned=warned)
    running = {server.key: server for server in running_in_scope(policy, snapshot)}
    return [running[key] for key in idle_or_capacity(plan) if key in running and key not in tried]
