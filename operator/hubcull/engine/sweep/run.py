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
from ..hub.client import HubAPIError, HubClient
from ..hub.model import HubDataError, parse_user
from ..rules.decisions import Plan, ServerDecision, UserDecision, decide
from ..rules.needs import running_in_scope
from ..rules.policy import Policy
from ..rules.signals import ServerKey, Signals
from ..signals.usage import UsageInspection, UsageRead
from .gather import KernelInspection, read_kernels
from .memory import WarnMemory
from .notify import WarnChannel, notify
from .records import CullRecord, ProbeStats, SweepResult, UserCullRecord
from .snapshot import take_snapshot

log = logging.getLogger(__name__)


async def _stop(client: HubClient, d: ServerDecision, now: datetime) -> CullRecord:
    try:
        outcome = await client.stop_server(d.user, d.server, remove=d.remove)
    except HubAPIError as exc:
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
        )
    return CullRecord(
        d.user, d.server, d.reason, d.idle_seconds, now, False, outcome, d.remove, None, d.idle_from
    )


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
    plan: Plan, policy: Policy, client: HubClient, clock: Clock = utcnow
) -> tuple[list[CullRecord], list[CullRecord], list[UserCullRecord]]:
    """Carry out a plan: all stops and removals concurrently (the client bounds how many are
    in flight), then user deletions whose servers stopped. A dry run only records."""
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
    acting."""
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
        inspected = await read_kernels(policy, snapshot, kernels, warned, signals, where)
        signals, probes, hold = inspected.signals, inspected.stats, hold | inspected.hold
        if inspected.problem is not None:
            problems.append(("ProbesFailing", inspected.problem))
    plan = decide(policy, snapshot, signals=signals, warned=warned, hold=hold)
    culls, removals, user_culls = await execute(plan, policy, client, clock)
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
        next_due=plan.next_due,
        notify=report,
        problems=problems,
    )
