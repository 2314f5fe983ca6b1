"""One sweep: read the Hub, gather the signals its servers need, decide once, act, report.

Nothing is stopped or deleted unless the whole listing succeeded: a failed or partial read
raises before :func:`~hubcull.engine.rules.decisions.decide` runs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import datetime

from ..clock import Clock, utcnow
from ..errors import SweepError
from ..hub.client import HubAPIError, HubClient
from ..hub.model import HubDataError, Snapshot, parse_user
from ..rules.decisions import Plan, ServerDecision, UserDecision, decide
from ..rules.demand import DemandData, DemandSpec, classify, demand_data, pod_facts
from ..rules.keeps import Keep, kept_until, live_keeps
from ..rules.needs import running_in_scope
from ..rules.policy import Policy
from ..rules.signals import ServerKey, Signals
from ..signals.pods import DemandSource
from ..signals.usage import UsageInspection, UsageRead
from .gather import KernelInspection, read_kernels
from .memory import WarnMemory
from .notify import WarnChannel, notify
from .records import CullRecord, DemandSkip, ProbeStats, SweepResult, UserCullRecord
from .snapshot import take_snapshot

log = logging.getLogger(__name__)


async def _stop(client: HubClient, d: ServerDecision, now: datetime) -> CullRecord:
    try:
        outcome = await client.stop_server(d.user, d.server, remove=d.remove)
    except HubAPIError as exc:
        return CullRecord.of(d, now, "failed", error=str(exc))
    return CullRecord.of(d, now, outcome)


#: Re-classifying a pod at its own Unschedulable time, with no wait: whether it still waits.
_NO_WAIT = DemandSpec(min_idle=1.0, after=0.0, scale_up_wait=0.0)


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


async def _no_change() -> None:
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
        culls = [CullRecord.of(d, now, "dryRun", dry_run=True) for d in plan.stops]
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
    where: str = "",
    keeps: list[Keep] | None = None,
    demand: DemandSource | None = None,
) -> SweepResult:
    """List, gather, decide and act once. Raises :class:`~hubcull.engine.errors.SweepError`
    (and culls nothing) when the Hub, the servers' pods or Prometheus cannot be read completely.

    The steps, in order: the Hub's snapshot (Prometheus is read meanwhile); the signals the
    servers need (:mod:`~hubcull.engine.rules.needs` picks which, :mod:`.gather` probes);
    one :func:`~hubcull.engine.rules.decisions.decide` on all of it; the stops; the warnings.

    With ``spec.kernels``, ``kernels`` says how to reach the servers to probe them (``where``
    names where their pods are, for messages); with ``spec.usage``, ``usage`` how to read what
    their pods do. With ``spec.warn``, ``warnings`` holds the warnings of earlier sweeps (none:
    every server is warned anew) and ``channel`` where webhook posts go; they are posted after
    acting. ``keeps`` (``spec.keep``) are the keeps of the previous status: those that still
    hold protect their servers, and the result carries them on (ended ones and those of
    servers no longer running dropped). With ``spec.demand``, ``demand`` says which pods
    wait for room (read after the Hub's listing; its failure decides nothing, like a failed
    listing)."""
    started = clock()
    t0 = time.monotonic()
    reading = UsageRead(policy, usage) if policy.usage is not None and usage is not None else None
    try:
        snapshot = await take_snapshot(policy, client, clock)
    except BaseException:
        if reading is not None:
            await reading.cancel()
        raise
    warned = warnings.recall() if warnings is not None else {}
    try:
        data, demand_due = await _demand_data(policy, demand, snapshot.now)
    except BaseException:
        if reading is not None:
            await reading.cancel()
        raise
    signals: Signals = {}
    hold: set[ServerKey] = set()
    problems: list[tuple[str, str]] = []
    if reading is not None:
        found = await reading.signals(snapshot)
        signals = found.signals
        if found.empty is not None:
            hold |= {server.key for server in running_in_scope(policy, snapshot)}
            problems.append(("UsageEmpty", found.empty))
    probes = ProbeStats()
    if policy.kernels is not None and kernels is not None:
        inspected = await read_kernels(
            policy, snapshot, kernels, warned, signals, where, demand=data
        )
        signals, probes, hold = inspected.signals, inspected.stats, hold | inspected.hold
        if inspected.problem is not None:
            problems.append(("ProbesFailing", inspected.problem))
    held = live_keeps(keeps or [], _active_servers(snapshot), snapshot.now)
    plan = decide(
        policy,
        snapshot,
        signals=signals,
        warned=warned,
        hold=hold,
        keeps=kept_until(held, snapshot.now),
        demand=data,
    )
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
        problems=problems,
        keeps=_not_stopped(held, culls),
        judged=plan.judged,
        warned=dict(plan.warned),
        waiting=plan.waiting,
        unhelped=plan.unhelped,
        demand_skipped=skipped,
    )


def _active_servers(snapshot: Snapshot) -> dict[ServerKey, datetime | None]:
    """Every server the Hub lists as running or pending, with its ``started`` time."""
    return {
        server.key: server.started
        for user in snapshot.users
        for server in user.servers
        if server.ready or server.pending
    }


def _not_stopped(keeps: list[Keep], culls: list[CullRecord]) -> list[Keep]:
    """A keep ends when its server stops (here: by ``maxAge``)."""
    stopped = {(c.user, c.server) for c in culls if c.error is None and not c.dry_run}
    return [k for k in keeps if k.key not in stopped]


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
