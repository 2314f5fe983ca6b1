"""One sweep: list a complete snapshot of the Hub, decide, then act concurrently.

Nothing is stopped or deleted unless the whole listing succeeded: a failed or partial read
raises before :func:`~hubcull.engine.decisions.decide` runs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .decisions import Plan, Protection, ServerDecision, UserDecision, decide
from .errors import SweepError
from .hubclient import HubAPIError, HubClient, HubError, HubForbidden
from .hubmodel import HubDataError, ServerLabelled, Snapshot, User, parse_user
from .memory import WarnMemory
from .notify import NotifyReport, WarnChannel, notify
from .pods import DemandSource
from .policy import Policy
from .probing import KernelInspection, ProbeFailure, ProbeStats, decide_with_kernels
from .rules.demand import DemandData, DemandSpec, WaitingPod, classify, demand_data, pod_facts
from .usage import UsageInspection, UsageRead
from .warnrules import PendingStop, WarnDecision

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The local clock, in UTC."""
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class CullRecord(ServerLabelled):
    """A server the sweep stopped (or removed), would have in a dry run, or failed to."""

    user: str
    server: str
    reason: str
    idle_seconds: float
    time: datetime
    dry_run: bool
    outcome: str
    removed: bool = False
    error: str | None = None
    idle_from: str = "hub"
    #: reason demand: the waiting pod this server was stopped for, and what it frees
    for_pod: str | None = None
    frees: tuple[str, ...] = ()


@dataclass(frozen=True)
class DemandSkip(ServerLabelled):
    """A demand stop not made: the check just before it found things changed."""

    user: str
    server: str
    for_pod: str
    why: str


@dataclass(frozen=True)
class UserCullRecord:
    """A user the sweep deleted (or would have, or failed to)."""

    user: str
    idle_seconds: float
    time: datetime
    dry_run: bool
    outcome: str
    error: str | None = None


@dataclass
class SweepResult:
    """What one sweep saw and did: the numbers the status and the CLI report."""

    started: datetime
    duration: float
    hub_version: str | None
    now: datetime
    clock_source: str
    dry_run: bool
    running: int
    over_limit: int
    skipped_pending: int
    held_back: list[ServerDecision] = field(default_factory=list)
    culls: list[CullRecord] = field(default_factory=list)
    removals: list[CullRecord] = field(default_factory=list)
    user_culls: list[UserCullRecord] = field(default_factory=list)
    protected: list[Protection] = field(default_factory=list)
    probes: ProbeStats = field(default_factory=ProbeStats)
    #: spec.warn: warnings given, servers still waiting for theirs, the earliest time one of
    #: those may be stopped (the Hub's clock), and the webhook posts
    warnings: list[WarnDecision] = field(default_factory=list)
    pending: list[PendingStop] = field(default_factory=list)
    next_due: datetime | None = None
    notify: NotifyReport = field(default_factory=NotifyReport)
    #: spec.demand: the pods waiting for room, those no stop of this sweep helps, and the
    #: demand stops the last check called off
    waiting: tuple[WaitingPod, ...] = ()
    unhelped: tuple[WaitingPod, ...] = ()
    demand_skipped: list[DemandSkip] = field(default_factory=list)

    @property
    def freed(self) -> list[CullRecord]:
        """Servers stopped (or that would have been) to make room for waiting pods."""
        return [c for c in self.culled if c.reason == "demand"]

    @property
    def probe_failures(self) -> list[ProbeFailure]:
        """Servers whose probe failed this sweep (the Hub decided for them)."""
        return self.probes.failures

    @property
    def culled(self) -> list[CullRecord]:
        """Running servers stopped (or stopping), or that would have been in a dry run."""
        return [c for c in self.culls if c.error is None]

    @property
    def failed(self) -> list[CullRecord | UserCullRecord]:
        """Every action that failed."""
        every: list[CullRecord | UserCullRecord] = [*self.culls, *self.removals, *self.user_culls]
        return [c for c in every if c.error is not None]

    @property
    def users_culled(self) -> list[UserCullRecord]:
        """Users deleted, or that would have been in a dry run."""
        return [u for u in self.user_culls if u.error is None]


async def take_snapshot(policy: Policy, client: HubClient, clock: Clock = utcnow) -> Snapshot:
    """List every user the policy may act on and read the Hub's clock while doing so.

    Running servers come from ``state=ready``; users without running servers (for user
    culling and for removing stopped named servers) from ``state=inactive``.
    """
    client.start_clock()
    info = await client.info()
    check_scopes(policy, await client.token_scopes())
    include_stopped = policy.servers.remove_named
    models = await client.list_users("ready", include_stopped_servers=include_stopped)
    if policy.users.cull or policy.servers.remove_named:
        models += await client.list_users("inactive", include_stopped_servers=include_stopped)
    try:
        users = [parse_user(m) for m in models]
    except HubDataError as exc:
        raise HubError(f"the Hub sent a user model hubcull cannot read: {exc}") from None
    check_visibility(policy, models, users)
    hub_now = client.hub_now
    now, source = (hub_now, "hub") if hub_now is not None else (clock(), "local")
    version = info.get("version")
    return Snapshot.from_users(users, now, str(version) if version else None, source)


def required_scopes(policy: Policy) -> list[tuple[str, str]]:
    """(scope the token must hold, scope to name when it doesn't) for this policy."""
    needed = [("list:users", "list:users"), ("read:servers", "read:servers")]
    if not policy.dry_run:
        needed.append(("delete:servers", "delete:servers"))
    if policy.needs_groups:
        needed.append(("read:users:groups", "read:users:groups"))
    if policy.users.cull:
        needed.append(("read:users:activity", "read:users:activity"))
        if not policy.dry_run:
            needed.append(("delete:users", "admin:users"))
    if policy.kernels is not None:
        needed.append(("access:servers", "access:servers"))  # the servers' own APIs
    return needed


def check_scopes(policy: Policy, scopes: list[str] | None) -> None:
    """Raise :class:`HubForbidden` naming the first scope the policy needs that the token
    lacks (a filtered scope such as ``delete:servers!group=x`` counts as held)."""
    if scopes is None:
        return
    held = {s.split("!", 1)[0] for s in scopes}
    for scope, name in required_scopes(policy):
        if scope not in held:
            raise HubForbidden(f"the token lacks the scope {name}, which this policy needs", name)


def check_visibility(policy: Policy, models: list[dict], users: list[User]) -> None:
    """Raise :class:`HubForbidden` when the token hides a field the policy depends on.

    Without it a group exclude would silently match nobody and cull protected users.
    """
    if not models:
        return
    if any("servers" not in m for m in models):
        raise HubForbidden(
            "the token cannot read users' servers; grant read:servers", "read:servers"
        )
    if policy.needs_groups and any(u.groups is None for u in users):
        raise HubForbidden(
            "the policy selects or excludes by group but the token cannot read group "
            "membership; grant read:users:groups",
            "read:users:groups",
        )
    if (policy.exclude.admins or policy.users.cull) and any(u.admin is None for u in users):
        raise HubForbidden(
            "the policy needs to know which users are admins; grant list:users", "list:users"
        )
    if policy.users.cull and any(not u.has_activity_field for u in users):
        raise HubForbidden(
            "user culling needs users' last activity; grant read:users:activity",
            "read:users:activity",
        )


async def _stop(client: HubClient, d: ServerDecision, now: datetime) -> CullRecord:
    try:
        outcome = await client.stop_server(d.user, d.server, remove=d.remove)
    except HubAPIError as exc:
        log.warning("failed to stop %s: %s", d.label, exc)
        return CullRecord(
            d.user,
            d.server,
            d.reason,
            d.idle_seconds,
            now,
            False,
            "failed",
            d.remove,
            str(exc),
            d.idle_from,
            d.for_pod,
            d.frees,
        )
    return CullRecord(
        d.user,
        d.server,
        d.reason,
        d.idle_seconds,
        now,
        False,
        outcome,
        d.remove,
        None,
        d.idle_from,
        d.for_pod,
        d.frees,
    )


async def demand_changed(
    client: HubClient, d: ServerDecision, demand: DemandSource | None
) -> str | None:
    """Why a demand stop must not happen now (``None``: go ahead): the server was active
    since the listing (the Hub's ``last_activity`` moved), or its waiting pod no longer
    waits (gone, scheduled, nominated, being deleted). A failed check calls the stop off."""
    try:
        model = await client.get_user(d.user)
        user = parse_user(model) if model is not None else None
        server = next((s for s in user.servers if s.name == d.server), None) if user else None
        if server is None or not server.ready or server.pending:
            return f"{d.label} is no longer running"
        if server.last_activity != d.seen_activity:
            return f"{d.label} was active since the listing"
        if demand is None or d.for_pod is None:
            return None
        pod = await demand.read_pod(d.for_pod)
    except (HubAPIError, HubDataError, SweepError) as exc:
        return f"the check before stopping {d.label} failed: {exc}"
    if pod is None:
        return f"pod {d.for_pod} is gone"
    facts = pod_facts(pod)
    if facts.unschedulable_since is None:
        return f"pod {d.for_pod} no longer waits"
    wait = classify(facts, _NO_WAIT, facts.unschedulable_since)
    if wait.state != "waiting":
        return f"pod {d.for_pod} no longer waits ({wait.why})"
    return None


async def _still_deletable(
    client: HubClient, d: UserDecision, policy: Policy, now: datetime
) -> str | None:
    """Re-read the user just before deleting: it may have started a server meanwhile."""
    model = await client.get_user(d.user)
    if model is None:
        return None
    user = parse_user(model)
    if user.active_servers:
        return f"{d.user} has an active server again"
    if d.after_stops:
        return None  # stopping its servers just moved the user's last_activity: not the user
    last = user.last_activity or user.created
    if last is not None and (now - last).total_seconds() < policy.idle_timeout:
        return f"{d.user} was active since the listing"
    return None


async def _delete_user(
    client: HubClient,
    d: UserDecision,
    policy: Policy,
    now: datetime,
    stops: dict[tuple[str, str], CullRecord],
) -> UserCullRecord | None:
    outcomes = [stops.get((d.user, name)) for name in d.after_stops]
    if any(o is None or o.outcome not in ("stopped", "gone") for o in outcomes):
        return None  # a stop failed or is still in progress: the next sweep tries again
    try:
        changed = await _still_deletable(client, d, policy, now)
        if changed:
            log.info("not deleting user %s: %s", d.user, changed)
            return None
        outcome = await client.delete_user(d.user)
    except (HubAPIError, HubDataError) as exc:
        log.warning("failed to delete user %s: %s", d.user, exc)
        return UserCullRecord(d.user, d.idle_seconds, now, False, "failed", str(exc))
    return UserCullRecord(d.user, d.idle_seconds, now, False, outcome)


async def execute(
    plan: Plan,
    policy: Policy,
    client: HubClient,
    clock: Clock = utcnow,
    demand: DemandSource | None = None,
    skipped: list[DemandSkip] | None = None,
) -> tuple[list[CullRecord], list[CullRecord], list[UserCullRecord]]:
    """Carry out a plan: all stops and removals concurrently (the client bounds how many are
    in flight), then user deletions whose servers stopped. A dry run only records.

    A demand stop is checked again just before it (:func:`demand_changed`); the ones called
    off are added to ``skipped``."""
    if not plan.dry_run and any(d.reason == "demand" for d in plan.stops):
        checks = await asyncio.gather(
            *(
                demand_changed(client, d, demand) if d.reason == "demand" else _no_change()
                for d in plan.stops
            )
        )
        kept = []
        for d, why in zip(plan.stops, checks, strict=True):
            if why is None:
                kept.append(d)
                continue
            log.info("not stopping %s for pod %s: %s", d.label, d.for_pod, why)
            if skipped is not None:
                skipped.append(DemandSkip(d.user, d.server, d.for_pod or "", why))
        plan.stops = kept
    now = clock()
    if plan.dry_run:
        culls = [
            CullRecord(
                d.user,
                d.server,
                d.reason,
                d.idle_seconds,
                now,
                True,
                "dryRun",
                d.remove,
                idle_from=d.idle_from,
                for_pod=d.for_pod,
                frees=d.frees,
            )
            for d in plan.stops
        ]
        removals = [
            CullRecord(d.user, d.server, d.reason, d.idle_seconds, now, True, "dryRun", True)
            for d in plan.removals
        ]
        users = [
            UserCullRecord(d.user, d.idle_seconds, now, True, "dryRun") for d in plan.user_deletions
        ]
        return culls, removals, users
    records = await asyncio.gather(*(_stop(client, d, now) for d in [*plan.stops, *plan.removals]))
    culls, removals = list(records[: len(plan.stops)]), list(records[len(plan.stops) :])
    by_server = {(c.user, c.server): c for c in culls}
    deleted = await asyncio.gather(
        *(_delete_user(client, d, policy, plan.now, by_server) for d in plan.user_deletions)
    )
    return culls, removals, [u for u in deleted if u is not None]


#: Re-classifying a pod at its own Unschedulable time, with no wait: whether it still waits.
_NO_WAIT = DemandSpec(min_idle=1.0, after=0.0, scale_up_wait=0.0)


async def _no_change() -> None:
    return None


def _warning_lag(t0: float) -> int:
    """Whole seconds from the start of the sweep until now, plus one: the Hub's clock, read
    during the listing, has whole seconds."""
    return math.ceil(time.monotonic() - t0) + 1


async def run_sweep(
    policy: Policy,
    client: HubClient,
    clock: Clock = utcnow,
    kernels: KernelInspection | None = None,
    warnings: WarnMemory | None = None,
    channel: WarnChannel | None = None,
    usage: UsageInspection | None = None,
    demand: DemandSource | None = None,
) -> SweepResult:
    """List, decide and act once. Raises :class:`~hubcull.engine.errors.SweepError` (and culls
    nothing) when the Hub, the servers' pods or Prometheus cannot be read completely.

    With ``spec.kernels``, ``kernels`` says how to reach the servers to probe them; with
    ``spec.usage``, ``usage`` how to read what their pods do. With ``spec.warn``,
    ``warnings`` holds the warnings of earlier sweeps (none: every server is warned anew) and
    ``channel`` where webhook posts go; they are posted after acting. With ``spec.demand``,
    ``demand`` says which pods wait for room (read after the Hub's listing)."""
    started = clock()
    t0 = time.monotonic()
    reading = UsageRead(policy, usage) if policy.usage is not None and usage is not None else None
    try:
        snapshot = await take_snapshot(policy, client, clock)
    except BaseException:
        if reading is not None:
            await reading.cancel()
        raise
    probes = ProbeStats()
    warned = warnings.recall() if warnings is not None else {}
    try:
        needs = await _demand_data(policy, demand, snapshot.now)
    except BaseException:
        if reading is not None:
            await reading.cancel()
        raise
    data, demand_due = needs
    signals = await reading.signals(snapshot) if reading is not None else {}
    if policy.kernels is not None and kernels is not None:
        plan, probes = await decide_with_kernels(
            policy, snapshot, kernels, warned, signals, demand=data
        )
    else:
        plan = decide(policy, snapshot, signals=signals, warned=warned, demand=data)
    skipped: list[DemandSkip] = []
    culls, removals, user_culls = await execute(plan, policy, client, clock, demand, skipped)
    if demand is not None and not plan.dry_run:
        demand.freed([c.for_pod for c in culls if c.for_pod and c.error is None])
    # warnings reach people after the stops (posts) or after the sweep (events): they count
    # from then, so `before` is never cut short by a long sweep
    shifted = _warning_lag(t0)
    plan.delay_warnings(shifted)
    report = await notify(policy, channel, plan.warnings, culls, plan.warned)
    plan.delay_warnings(_warning_lag(t0) - shifted)
    if warnings is not None:
        warnings.keep(plan.warned)
    return SweepResult(
        started=started,
        duration=time.monotonic() - t0,
        hub_version=snapshot.hub_version,
        now=snapshot.now,
        clock_source=snapshot.clock_source,
        dry_run=policy.dry_run,
        running=plan.running,
        over_limit=plan.over_limit,
        skipped_pending=plan.skipped_pending,
        held_back=plan.held_back,
        culls=culls,
        removals=removals,
        user_culls=user_culls,
        protected=plan.protected,
        probes=probes,
        warnings=plan.warnings,
        pending=plan.pending,
        next_due=min((t for t in (plan.next_due, demand_due) if t is not None), default=None),
        notify=report,
        waiting=plan.waiting,
        unhelped=plan.unhelped,
        demand_skipped=skipped,
    )


async def _demand_data(
    policy: Policy, demand: DemandSource | None, hub_now: datetime
) -> tuple[DemandData | None, datetime | None]:
    """The waiting pods (``spec.demand``), and when the next pod will wait, on the Hub's
    clock (the pods' times are on the API server's)."""
    if policy.demand is None or demand is None:
        return None, None
    seen = await demand.observe()
    data = demand_data(policy.demand, seen.pods, seen.events, seen.now, seen.helped)
    due = None
    if data.next_due is not None:
        due = hub_now + (data.next_due - seen.now)
    return data, due
