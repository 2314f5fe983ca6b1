"""What one sweep saw and did: the records the status, the metrics and the CLI report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from ..hub.model import Server, ServerLabelled
from ..rules.decisions import Judged, Protection, ServerDecision
from ..rules.demand import WaitingPod
from ..rules.keeps import Keep
from ..rules.signals import ServerKey
from ..rules.warn import PendingStop, WarnDecision, Warned
from ..signals.kernels import ProbeOutcome

#: ``hubcull_warnings_total`` results.
EVENT_ONLY, DELIVERED, FAILED = "event_only", "delivered", "failed"


@dataclass(frozen=True)
class PostFailure:
    """A post that was not delivered: ``kind`` ``warning`` or ``culled``, for which server,
    and why (never the URL)."""

    kind: str
    label: str
    error: str


@dataclass
class NotifyReport:
    """What one sweep's warnings and posts came to (``results`` counts
    ``hubcull_warnings_total``: ``event_only``, ``delivered``, ``failed``)."""

    results: Counter[str] = field(default_factory=Counter)
    failures: list[PostFailure] = field(default_factory=list)

    @property
    def posts(self) -> int:
        """Posts attempted (delivered or failed)."""
        return self.results[DELIVERED] + self.results[FAILED]

    def summary(self) -> str | None:
        """``2 of 5 webhook posts failed: HTTP 500 (3 attempts)``, or ``None`` when none
        failed (at most three different reasons are named)."""
        if not self.failures:
            return None
        reasons = sorted({f.error for f in self.failures})
        shown = "; ".join(reasons[:3]) + ("; ..." if len(reasons) > 3 else "")
        return f"{len(self.failures)} of {self.posts} webhook posts failed: {shown}"


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

    @classmethod
    def of(
        cls,
        d: ServerDecision,
        now: datetime,
        outcome: str,
        *,
        dry_run: bool = False,
        error: str | None = None,
    ) -> CullRecord:
        """The record of decision ``d`` carried out (or not) at ``now``."""
        return cls(
            d.user,
            d.server,
            d.reason,
            d.idle_seconds,
            now,
            dry_run,
            outcome,
            d.remove,
            error,
            d.idle_from,
            d.for_pod,
            d.frees,
        )


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
    #: (Ready reason, message) of what made this sweep hold servers it could not judge
    #: (``ProbesFailing``, ``UsageEmpty``): the sweep ran, but Ready is False
    problems: list[tuple[str, str]] = field(default_factory=list)
    #: spec.keep: the keeps that still hold after this sweep (ended ones and those of
    #: servers no longer running are gone), how each running server in scope was judged,
    #: and the warnings that apply (what the users' page shows)
    keeps: list[Keep] = field(default_factory=list)
    judged: list[Judged] = field(default_factory=list)
    warned: dict[ServerKey, Warned] = field(default_factory=dict)
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
