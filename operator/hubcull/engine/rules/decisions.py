"""The pure decision step: (policy, Hub snapshot, signals, now) -> what to stop, remove, delete.

Nothing here talks to the Hub or a server or reads a clock, so every rule can be tested on its
own and ``hubcull sweep`` and the operator decide identically. What the servers themselves say
(kernel probes) and what their pods do (Prometheus) is gathered before and comes in as
:mod:`~hubcull.engine.rules.signals`; warnings given in earlier sweeps (``spec.warn``) come in as
:class:`~hubcull.engine.rules.warn.Warned`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from ..durations import format_duration
from ..hub.model import Server, ServerLabelled, Snapshot, User
from .policy import Policy
from .selection import server_in_scope, user_in_scope_for_deletion
from .signals import ServerKey, ServerSignals, Signals
from .usage import gpu_idle, usage_protection
from .warn import PendingStop, WarnDecision, Warned, needs_warning, verdict

Reason = Literal["idle", "maxAge", "capacity", "idleGPU"]
IdleSource = Literal["hub", "kernels"]


@dataclass(frozen=True)
class ServerDecision(ServerLabelled):
    """Stop (or, for an already stopped named server, remove) one server."""

    user: str
    server: str
    reason: Reason
    idle_seconds: float
    age_seconds: float | None
    remove: bool = False
    already_stopped: bool = False
    idle_from: IdleSource = "hub"


@dataclass(frozen=True)
class Protection(ServerLabelled):
    """A server kept although a limit (idleness or capacity) would stop it; ``why`` says
    what it is doing (``kernel busy for 2h10m``)."""

    user: str
    server: str
    why: str


@dataclass(frozen=True)
class _Running:
    """A running server in scope, as this sweep judges it."""

    server: Server
    idle: float | None
    age: float | None
    idle_from: IdleSource
    protection: str | None
    idle_since: datetime | None = None
    gpu_idle: bool = False
    #: what decides this server is unknown this sweep: no stop for idleness or capacity
    held: bool = False

    @property
    def spared(self) -> bool:
        """Not to be stopped for idleness or capacity (protected or held)."""
        return self.protection is not None or self.held


@dataclass(frozen=True)
class UserDecision:
    """Delete one idle user; ``after_stops`` names servers that must stop first."""

    user: str
    idle_seconds: float
    after_stops: tuple[str, ...] = ()


@dataclass
class Plan:
    """What one sweep decided. ``actions`` is empty in a dry run."""

    now: datetime
    dry_run: bool
    running: int = 0
    skipped_pending: int = 0
    stops: list[ServerDecision] = field(default_factory=list)
    held_back: list[ServerDecision] = field(default_factory=list)
    removals: list[ServerDecision] = field(default_factory=list)
    user_deletions: list[UserDecision] = field(default_factory=list)
    protected: list[Protection] = field(default_factory=list)
    #: spec.warn: warnings given this sweep, servers warned earlier that wait, and every
    #: warning that still applies (what the policy remembers for its next sweep)
    warnings: list[WarnDecision] = field(default_factory=list)
    pending: list[PendingStop] = field(default_factory=list)
    warned: dict[ServerKey, Warned] = field(default_factory=dict)

    @property
    def over_limit(self) -> int:
        """Running servers over a limit (idle, maxAge or capacity), held back or waiting for
        their warning or not."""
        waiting = [w for w in [*self.warnings, *self.pending] if w.over_limit]
        return len(self.stops) + len(self.held_back) + len(waiting)

    @property
    def next_due(self) -> datetime | None:
        """The earliest time a warned server that waits may be stopped (the Hub's clock)."""
        times = [w.stop_after for w in self.warnings] + [p.due_at for p in self.pending]
        return min(times, default=None)

    def delay_warnings(self, seconds: float) -> None:
        """Move this sweep's new warnings (and their stop times) ``seconds`` later: a warning
        counts from when it reached people, at the end of the sweep that gave it."""
        if seconds <= 0 or not self.warnings:
            return
        self.warnings = [replace(w, warned=w.warned.delayed(seconds)) for w in self.warnings]
        for w in self.warnings:
            self.warned[(w.user, w.server)] = w.warned

    @property
    def actions(self) -> list[ServerDecision | UserDecision]:
        """What the executor must do: every decision, or nothing in a dry run."""
        if self.dry_run:
            return []
        return [*self.stops, *self.removals, *self.user_deletions]


def _seconds_since(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else (now - then).total_seconds()


def idle_seconds(server: Server, now: datetime) -> float | None:
    """Seconds since the server's last activity (or start); ``None`` if it has neither."""
    return _seconds_since(now, server.last_activity or server.started)


def judged_idle(
    policy: Policy, server: Server, signals: ServerSignals | None, now: datetime
) -> tuple[float | None, IdleSource]:
    """A server's idle seconds and where they come from: its kernels and terminals with
    ``kernels.idleFrom: kernels`` when a probe saw any, else the Hub's ``last_activity``."""
    kernels = signals.kernels if signals is not None else None
    if (
        policy.kernels is not None
        and policy.kernels.idle_from == "kernels"
        and kernels is not None
        and kernels.last_activity is not None
    ):
        seen_at = kernels.seen_at or now
        return max(0.0, (seen_at - kernels.last_activity).total_seconds()), "kernels"
    return idle_seconds(server, now), "hub"


def protection(policy: Policy, signals: ServerSignals | None) -> str | None:
    """Why a server must not be stopped for idleness or capacity (``None``: nothing keeps it).

    With ``kernels.protectBusy`` a busy kernel keeps its server unless it has been busy and
    silent longer than ``kernels.maxBusy``; with ``spec.usage`` so does a pod that is working
    (:mod:`~hubcull.engine.rules.usage`).
    """
    if signals is None:
        return None
    return _busy_kernel(policy, signals) or usage_protection(policy.usage, signals.usage)


def _busy_kernel(policy: Policy, signals: ServerSignals) -> str | None:
    kernels, activity = policy.kernels, signals.kernels
    if kernels is None or not kernels.protect_busy or activity is None:
        return None
    busy = activity.busy_silent_seconds
    if busy is None or (kernels.max_busy > 0 and busy > kernels.max_busy):
        return None
    return f"kernel busy for {format_duration(busy)}"


def _limit_reason(policy: Policy, item: _Running) -> Reason | None:
    if _over_idle_timeout(policy, item) and not item.spared:
        return "idle"
    if item.gpu_idle and not item.spared:
        return "idleGPU"
    if policy.max_age > 0 and item.age is not None and item.age >= policy.max_age:
        return "maxAge"  # a hard limit: a busy kernel does not keep a server past it
    return None


def _capacity_pick(policy: Policy, remaining: list[_Running], protect: bool) -> list[_Running]:
    """The longest-idle servers (each idle at least ``minIdle``) above the capacity limit;
    with ``protect``, protected servers are never picked."""
    limit = policy.capacity.max_active_servers
    excess = len(remaining) - limit
    if limit <= 0 or excess <= 0:
        return []
    pool = [
        item
        for item in remaining
        if item.idle is not None
        and item.idle >= policy.capacity.min_idle
        and not item.held
        and not (protect and item.protection)
    ]
    pool.sort(key=lambda item: (-(item.idle or 0.0), item.server.user, item.server.name))
    return pool[:excess]


def _decision(policy: Policy, item: _Running, reason: Reason) -> ServerDecision:
    s = item.server
    if reason == "idleGPU":  # its GPUs were idle at least idleTimeout; the Hub saw less
        return ServerDecision(
            s.user, s.name, reason, policy.idle_timeout, item.age, remove=_removes(policy, s)
        )
    return ServerDecision(
        s.user,
        s.name,
        reason,
        item.idle or 0.0,
        item.age,
        remove=_removes(policy, s),
        idle_from=item.idle_from,
    )


def _removes(policy: Policy, server: Server) -> bool:
    return policy.servers.remove_named and server.name != ""


def _allowed_culls(policy: Policy, running: int) -> int | None:
    allowed: int | None = None
    if policy.safety.max_culls_per_sweep > 0:
        allowed = policy.safety.max_culls_per_sweep
    if policy.safety.max_cull_percent < 100:
        by_percent = running * policy.safety.max_cull_percent // 100
        allowed = by_percent if allowed is None else min(allowed, by_percent)
    return allowed


def _user_idle(user: User, now: datetime) -> float | None:
    return _seconds_since(now, user.last_activity or user.created)


def _user_deletions(
    policy: Policy, users: tuple[User, ...], now: datetime, stops: list[ServerDecision]
) -> list[UserDecision]:
    if not policy.users.cull or policy.idle_timeout <= 0:
        return []
    stopping = {(d.user, d.server) for d in stops}
    deletions = []
    for user in users:
        if not user_in_scope_for_deletion(policy, user):
            continue
        idle = _user_idle(user, now)
        if idle is None or idle < policy.idle_timeout:
            continue
        active = user.active_servers
        if any(s.pending or (s.user, s.name) not in stopping for s in active):
            continue
        deletions.append(UserDecision(user.name, idle, tuple(s.name for s in active)))
    return deletions


def decide(
    policy: Policy,
    snapshot: Snapshot,
    now: datetime | None = None,
    signals: Signals | None = None,
    warned: Mapping[ServerKey, Warned] | None = None,
    hold: Collection[ServerKey] = (),
) -> Plan:
    """Decide what one sweep does with ``snapshot``, judged at ``now`` (the Hub's clock).

    Running servers over ``idleTimeout`` or ``maxAge`` are candidates, then capacity mode adds
    the longest-idle servers above ``capacity.maxActiveServers``; safety limits keep the
    longest-idle candidates and hold back the rest. Pending servers are skipped. ``signals``
    (kernel probes) change a server's idle time (``kernels.idleFrom``) and keep busy servers
    from idleness and capacity culls (``kernels.protectBusy``), never from ``maxAge``; usage
    readings (``spec.usage``) keep working servers the same way and, with ``cullIdleGPU``,
    make servers whose GPUs stayed idle for ``idleTimeout`` candidates (reason ``idleGPU``).

    With ``spec.warn.before``, ``warned`` holds the warnings given in earlier sweeps: a
    candidate for idleness or ``maxAge`` is stopped only once its warning is ``before`` old,
    and servers that such a limit would stop within ``before`` are warned
    (:mod:`~hubcull.engine.rules.warn`); capacity stops do not wait.

    Servers in ``hold`` are those a signal should have judged but could not (a systemic probe
    failure, a usage query without series): they are not stopped, warned or picked for
    idleness or capacity this sweep; ``maxAge`` still applies.
    """
    now = now or snapshot.now
    signals = signals or {}
    plan = Plan(now=now, dry_run=policy.dry_run)
    running: list[_Running] = []
    candidates: list[ServerDecision] = []
    protected: dict[tuple[str, str], str] = {}
    for user in snapshot.users:
        for server in user.servers:
            if not server_in_scope(policy, user, server):
                continue
            if server.pending:
                plan.skipped_pending += 1
            elif server.ready:
                item = _judge(policy, server, signals.get(server.key), now)
                if server.key in hold:
                    item = replace(item, held=True)
                running.append(item)
                reason = _limit_reason(policy, item)
                if reason is not None:
                    candidates.append(_decision(policy, item, reason))
                elif item.protection and (_over_idle_timeout(policy, item) or item.gpu_idle):
                    protected[server.key] = item.protection
            elif _removable(policy, server, now):
                plan.removals.append(
                    ServerDecision(
                        user.name,
                        server.name,
                        "idle",
                        idle_seconds(server, now) or 0.0,
                        None,
                        remove=True,
                        already_stopped=True,
                    )
                )
    plan.running = len(running)
    if policy.warn is not None and policy.warn.before > 0:
        candidates = _warn_first(policy, plan, running, candidates, warned or {}, now)
    chosen = {(d.user, d.server) for d in candidates}
    not_chosen = [item for item in running if item.server.key not in chosen]
    picked = _capacity_pick(policy, not_chosen, protect=True)
    candidates += [_decision(policy, item, "capacity") for item in picked]
    _capacity_ends_waiting(plan, {item.server.key for item in picked})
    for item in _capacity_pick(policy, not_chosen, protect=False):
        if item.protection:
            protected[item.server.key] = item.protection
    plan.protected = [Protection(u, s, why) for (u, s), why in sorted(protected.items())]
    candidates.sort(key=lambda d: (-d.idle_seconds, d.user, d.server))
    allowed = _allowed_culls(policy, plan.running)
    if allowed is None:
        plan.stops = candidates
    else:
        plan.stops, plan.held_back = candidates[:allowed], candidates[allowed:]
    plan.user_deletions = _user_deletions(policy, snapshot.users, now, plan.stops)
    return plan


def _judge(
    policy: Policy, server: Server, signals: ServerSignals | None, now: datetime
) -> _Running:
    idle, source = judged_idle(policy, server, signals, now)
    age = _seconds_since(now, server.started)
    if source == "kernels" and signals is not None and signals.kernels is not None:
        since = signals.kernels.last_activity
    else:
        since = server.last_activity or server.started
    usage = signals.usage if signals is not None else None
    return _Running(
        server,
        idle,
        age,
        source,
        protection(policy, signals),
        since,
        gpu_idle(policy, usage, age),
    )


def _next_limit(policy: Policy, item: _Running) -> tuple[Reason, float] | None:
    """The limit that waits for a warning and would stop a server soonest, if nothing
    changes, and the seconds until then (``None``: no such limit can stop it)."""
    limits: list[tuple[float, Reason]] = []
    if policy.idle_timeout > 0 and item.idle is not None and not item.spared:
        limits.append((policy.idle_timeout - item.idle, "idle"))
    if policy.max_age > 0 and item.age is not None:
        limits.append((policy.max_age - item.age, "maxAge"))
    if not limits:
        return None
    remaining, reason = min(limits)
    return reason, remaining


def _warn_first(
    policy: Policy,
    plan: Plan,
    running: list[_Running],
    candidates: list[ServerDecision],
    warned: Mapping[ServerKey, Warned],
    now: datetime,
) -> list[ServerDecision]:
    """The candidates that may stop now; warn or keep waiting the others (and servers that a
    limit would stop within ``warn.before``), recording it all in ``plan``."""
    assert policy.warn is not None
    before = policy.warn.before
    over = {(d.user, d.server): d for d in candidates}
    stops = [d for d in candidates if not needs_warning(d.reason)]
    for item in running:
        key = item.server.key
        decision = over.get(key)
        if decision is not None and not needs_warning(decision.reason):
            continue
        if decision is not None:
            limit: tuple[str, float] | None = (decision.reason, 0.0)
        else:
            limit = _next_limit(policy, item)
        record = warned.get(key)
        if record is not None and not record.applies(
            item.server.started, item.idle_since, policy.dry_run
        ):
            record = None
        what = verdict(before, now, None if limit is None else limit[1], record)
        if what == "none" or limit is None:
            continue
        reason = limit[0]
        over_limit = decision is not None
        if what == "stop":
            if decision is not None:
                stops.append(decision)
        elif what == "wait" and record is not None:
            due = max(record.stop_after, now + timedelta(seconds=max(limit[1], 0.0)))
            plan.pending.append(
                PendingStop(
                    item.server.user,
                    item.server.name,
                    reason,
                    item.idle or 0.0,
                    record,
                    over_limit,
                    due,
                )
            )
        else:
            record = Warned(
                reason,
                now,
                now + timedelta(seconds=before),
                item.server.started,
                item.idle_since,
                policy.dry_run,
            )
            plan.warnings.append(
                WarnDecision(
                    item.server.user,
                    item.server.name,
                    reason,
                    item.idle or 0.0,
                    policy.max_age if reason == "maxAge" else policy.idle_timeout,
                    record,
                    over_limit,
                    item.idle_from,
                )
            )
        plan.warned[key] = record
    plan.warnings.sort(key=lambda w: (w.user, w.server))
    plan.pending.sort(key=lambda w: (w.user, w.server))
    return stops


def _capacity_ends_waiting(plan: Plan, picked: set[ServerKey]) -> None:
    """Servers capacity stops now no longer wait for a warning (nor get one)."""
    if not picked:
        return
    plan.warnings = [w for w in plan.warnings if (w.user, w.server) not in picked]
    plan.pending = [w for w in plan.pending if (w.user, w.server) not in picked]
    for key in picked:
        plan.warned.pop(key, None)


def _over_idle_timeout(policy: Policy, item: _Running) -> bool:
    return policy.idle_timeout > 0 and item.idle is not None and item.idle >= policy.idle_timeout


def _removable(policy: Policy, server: Server, now: datetime) -> bool:
    """A stopped named server that ``servers.removeNamed`` deletes once idle long enough."""
    idle = idle_seconds(server, now)
    return (
        _removes(policy, server)
        and policy.idle_timeout > 0
        and idle is not None
        and idle >= policy.idle_timeout
    )
