"""``spec.warn``'s rules, as pure functions: when a server is warned, and when a warned server
may be stopped.

A warning given in one sweep is remembered (:class:`Warned`, kept by
:class:`~hubcull.engine.sweep.memory.WarnMemory`) and comes back into
:func:`~hubcull.engine.rules.decisions.decide` as data. The rules:

* a server that would be stopped for idleness, ``idleGPU`` or ``maxAge`` within ``before`` (if
  nothing changes) and has no warning that still applies is warned now, and may be stopped
  ``before`` from now at the earliest;
* a server with a warning that applies is stopped once it is over its limit and the warning's
  ``stop_after`` has passed; until then it waits;
* a warning applies to the same run of the server (a restarted server is a new run) and, for
  idleness, to the same idle stretch: activity since (a newer last activity) ends it, and the
  next idle stretch gets a new warning. A warning given in a dry run does not let a real run
  stop the server;
* capacity stops never wait and are never warned (see :func:`needs_warning`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from ..durations import format_duration
from ..hub.model import ServerLabelled

Verdict = Literal["none", "warn", "wait", "stop"]


def needs_warning(reason: str) -> bool:
    """True for the stop reasons that wait for a warning: all but ``capacity`` (a full
    cluster cannot wait)."""
    return reason != "capacity"


@dataclass(frozen=True)
class Warned:
    """A warning given to one server, remembered between sweeps.

    ``at`` and ``stop_after`` are on the Hub's clock. ``started`` names the server's run and
    ``idle_since`` the start of the idle stretch the warning was about (the last activity the
    sweep judged the server by, ``None`` if unknown).
    """

    reason: str
    at: datetime
    stop_after: datetime
    started: datetime | None
    idle_since: datetime | None
    dry_run: bool = False

    def delayed(self, seconds: float) -> Warned:
        """The same warning, given ``seconds`` later (it reached people that much later)."""
        shift = timedelta(seconds=seconds)
        return replace(self, at=self.at + shift, stop_after=self.stop_after + shift)

    def applies(self, started: datetime | None, idle_since: datetime | None, dry_run: bool) -> bool:
        """Whether this warning still covers a server that started at ``started`` and is idle
        since ``idle_since``, in a sweep that is (or is not) a dry run."""
        if started != self.started or (self.dry_run and not dry_run):
            return False
        if self.reason != "idle":
            return True  # maxAge ignores activity; idleGPU is kept only while it is a candidate
        return (
            idle_since is not None and self.idle_since is not None and idle_since <= self.idle_since
        )


def verdict(
    before: float, now: datetime, remaining: float | None, warned: Warned | None
) -> Verdict:
    """What to do with one server this sweep.

    ``remaining`` is how many seconds until a limit that waits for a warning would stop it (0
    or less: over it now; ``None``: no such limit can stop it). ``warned`` is its warning, if
    one still applies. ``none``: nothing (a warning, if any, is forgotten); ``warn``: warn it
    now; ``wait``: warned, not due yet; ``stop``: warned at least ``before`` ago and over its
    limit.
    """
    if remaining is None or remaining > before:
        return "none"
    if warned is None:
        return "warn"
    if remaining <= 0 and now >= warned.stop_after:
        return "stop"
    return "wait"


@dataclass(frozen=True)
class WarnDecision(ServerLabelled):
    """A warning given this sweep. ``limit`` is the limit in seconds that will stop the server
    (``idleTimeout``, or ``maxAge`` for reason ``maxAge``); ``over_limit`` is True when the
    server is over it already and waits only for this warning."""

    user: str
    server: str
    reason: str
    idle_seconds: float
    limit: float
    warned: Warned
    over_limit: bool = False
    idle_from: str = "hub"

    @property
    def stop_after(self) -> datetime:
        """The earliest time the server can be stopped (the Hub's clock)."""
        return self.warned.stop_after

    @property
    def text(self) -> str:
        """``alice/gpu will be stopped in about 10m if it stays idle``: what events, the
        command line and the webhook say."""
        return warning_text(self)


@dataclass(frozen=True)
class PendingStop(ServerLabelled):
    """A server warned in an earlier sweep that may not be stopped yet. ``due`` is when it
    may be, if nothing changes: its warning's ``stop_after``, or later if it will not be over
    its limit by then (the server's own clock, for kernel idle times, may lag the Hub's)."""

    user: str
    server: str
    reason: str
    idle_seconds: float
    warned: Warned
    over_limit: bool = False
    due: datetime | None = None

    @property
    def due_at(self) -> datetime:
        """``due``, or the warning's ``stop_after`` when not given."""
        return self.due or self.warned.stop_after


def warning_text(warning: WarnDecision) -> str:
    """One sentence for a user: which server stops, in about how long, and on what
    condition."""
    seconds = (warning.warned.stop_after - warning.warned.at).total_seconds()
    head = f"{warning.label} will be stopped in about {format_duration(seconds)}"
    if warning.reason == "maxAge":
        return f"{head}: servers may run at most {format_duration(warning.limit)}"
    if warning.reason == "idleGPU":
        return f"{head} if its GPU stays idle"
    return f"{head} if it stays idle"
