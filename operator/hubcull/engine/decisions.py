"""The pure decision step: (policy, Hub snapshot, now) -> what to stop, remove and delete.

Nothing here talks to the Hub or reads a clock, so every rule can be tested on its own and
``hubcull sweep`` and the operator decide identically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from .hubmodel import Server, Snapshot, User
from .policy import Policy
from .selection import server_in_scope, user_in_scope_for_deletion

Reason = Literal["idle", "maxAge", "capacity"]


@dataclass(frozen=True)
class ServerDecision:
    """Stop (or, for an already stopped named server, remove) one server."""

    user: str
    server: str
    reason: Reason
    idle_seconds: float
    age_seconds: float | None
    remove: bool = False
    already_stopped: bool = False

    @property
    def label(self) -> str:
        """``user/server``, or just ``user`` for a default server."""
        return f"{self.user}/{self.server}" if self.server else self.user


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

    @property
    def over_limit(self) -> int:
        """Running servers over a limit (idle, maxAge or capacity), held back or not."""
        return len(self.stops) + len(self.held_back)

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


def _limit_reason(policy: Policy, idle: float | None, age: float | None) -> Reason | None:
    if policy.idle_timeout > 0 and idle is not None and idle >= policy.idle_timeout:
        return "idle"
    if policy.max_age > 0 and age is not None and age >= policy.max_age:
        return "maxAge"
    return None


def _capacity_culls(
    policy: Policy, remaining: list[tuple[Server, float | None, float | None]]
) -> list[ServerDecision]:
    """The longest-idle servers (each idle at least ``minIdle``) above the capacity limit."""
    limit = policy.capacity.max_active_servers
    excess = len(remaining) - limit
    if limit <= 0 or excess <= 0:
        return []
    pool = [
        (server, idle, age)
        for server, idle, age in remaining
        if idle is not None and idle >= policy.capacity.min_idle
    ]
    pool.sort(key=lambda item: (-item[1], item[0].user, item[0].name))
    return [
        ServerDecision(s.user, s.name, "capacity", idle, age, remove=_removes(policy, s))
        for s, idle, age in pool[:excess]
    ]


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


def decide(policy: Policy, snapshot: Snapshot, now: datetime | None = None) -> Plan:
    """Decide what one sweep does with ``snapshot``, judged at ``now`` (the Hub's clock).

    Running servers over ``idleTimeout`` or ``maxAge`` are candidates, then capacity mode adds
    the longest-idle servers above ``capacity.maxActiveServers``; safety limits keep the
    longest-idle candidates and hold back the rest. Pending servers are skipped.
    """
    now = now or snapshot.now
    plan = Plan(now=now, dry_run=policy.dry_run)
    running: list[tuple[Server, float | None, float | None]] = []
    candidates: list[ServerDecision] = []
    for user in snapshot.users:
        for server in user.servers:
            if not server_in_scope(policy, user, server):
                continue
            idle = idle_seconds(server, now)
            if server.pending:
                plan.skipped_pending += 1
            elif server.ready:
                age = _seconds_since(now, server.started)
                running.append((server, idle, age))
                reason = _limit_reason(policy, idle, age)
                if reason is not None:
                    candidates.append(
                        ServerDecision(
                            user.name,
                            server.name,
                            reason,
                            idle or 0.0,
                            age,
                            remove=_removes(policy, server),
                        )
                    )
            elif (
                _removes(policy, server)
                and policy.idle_timeout > 0
                and idle is not None
                and idle >= policy.idle_timeout
            ):
                plan.removals.append(
                    ServerDecision(
                        user.name,
                        server.name,
                        "idle",
                        idle,
                        None,
                        remove=True,
                        already_stopped=True,
                    )
                )
    plan.running = len(running)
    chosen = {(d.user, d.server) for d in candidates}
    not_chosen = [item for item in running if (item[0].user, item[0].name) not in chosen]
    candidates += _capacity_culls(policy, not_chosen)
    candidates.sort(key=lambda d: (-d.idle_seconds, d.user, d.server))
    allowed = _allowed_culls(policy, plan.running)
    if allowed is None:
        plan.stops = candidates
    else:
        plan.stops, plan.held_back = candidates[:allowed], candidates[allowed:]
    plan.user_deletions = _user_deletions(policy, snapshot.users, now, plan.stops)
    return plan
