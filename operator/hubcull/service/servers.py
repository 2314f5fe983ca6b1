"""What the page and the JSON say about each of a user's running servers: which policies
govern it, what they judge it by, how idle it was at their last sweep, whether it was warned,
and when it would be stopped or why it is kept. Built from the user's model (the Hub), the
CullPolicy objects (spec and status, the Kubernetes API) and the operator's memory of each
policy's last sweep (:class:`~hubcull.k8s.views.PolicyViews`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from ..engine.hub.model import Server, User, parse_user
from ..engine.rules.keeps import KeepCounts, keeps_from_status
from ..engine.rules.policy import Policy, PolicyError, parse_spec
from ..engine.rules.selection import server_in_scope
from ..k8s.views import PolicyViews
from .config import same_api_url


def iso(when: datetime | None) -> str | None:
    """RFC 3339 in UTC with seconds, or None."""
    if when is None:
        return None
    return when.astimezone(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Governing:
    """One policy's judgement of one server."""

    namespace: str
    name: str
    judged_by: tuple[str, ...]
    keep_max: float | None  # None: this policy has no spec.keep (it may still stop the server)
    keep_per_day: int
    keeps_used_today: int
    kept_until: datetime | None
    swept_at: datetime | None
    idle_seconds: float | None
    protection: str | None
    warned_stop_after: datetime | None
    stop_at: datetime | None
    stop_reason: str | None
    dry_run: bool

    def to_json(self) -> dict[str, Any]:
        """The JSON form (``GET /api/servers``)."""
        keep = None
        if self.keep_max is not None:
            keep = {
                "maxSeconds": int(self.keep_max),
                "perDay": self.keep_per_day,
                "usedToday": self.keeps_used_today,
            }
        return {
            "namespace": self.namespace,
            "policy": self.name,
            "judgedBy": list(self.judged_by),
            "keep": keep,
            "keptUntil": iso(self.kept_until),
            "lastSweep": iso(self.swept_at),
            "idleSeconds": None if self.idle_seconds is None else int(self.idle_seconds),
            "protectedBy": self.protection,
            "warned": self.warned_stop_after is not None,
            "warningStopAfter": iso(self.warned_stop_after),
            "stopAt": iso(self.stop_at),
            "stopReason": self.stop_reason,
            "dryRun": self.dry_run,
        }


@dataclass(frozen=True)
class ServerView:
    """One of the user's running servers and every policy that governs it."""

    user: str
    server: str
    url: str
    started: datetime | None
    policies: list[Governing] = field(default_factory=list)

    @property
    def kept_until(self) -> datetime | None:
        """The end of the keep, if any policy records one."""
        ends = [g.kept_until for g in self.policies if g.kept_until is not None]
        return min(ends) if ends else None

    @property
    def keep_max(self) -> float | None:
        """The longest keep every keeping policy allows (None: no policy has spec.keep)."""
        maxes = [g.keep_max for g in self.policies if g.keep_max is not None]
        return min(maxes) if maxes else None

    @property
    def unkept_by(self) -> list[Governing]:
        """Policies without spec.keep that govern the server: they may stop it anyway."""
        return [g for g in self.policies if g.keep_max is None]

    def to_json(self) -> dict[str, Any]:
        """The JSON form (``GET /api/servers``)."""
        return {
            "server": self.server,
            "url": self.url,
            "started": iso(self.started),
            "keptUntil": iso(self.kept_until),
            "keepMaxSeconds": None if self.keep_max is None else int(self.keep_max),
            "policies": [g.to_json() for g in self.policies],
        }


@dataclass(frozen=True)
class PolicyObject:
    """A CullPolicy of this Hub as the Kubernetes API has it."""

    namespace: str
    name: str
    policy: Policy
    status: Mapping[str, Any]


def hub_policies(bodies: list[Mapping[str, Any]], api_url: str) -> list[PolicyObject]:
    """The CullPolicies whose ``spec.hub.url`` is this Hub's API (unreadable ones skipped)."""
    found = []
    for body in bodies:
        meta = body.get("metadata") or {}
        try:
            policy = parse_spec(body.get("spec"))
        except PolicyError:
            continue
        if not same_api_url(policy.hub.url, api_url) or policy.suspend:
            continue
        status = body.get("status") or {}
        found.append(PolicyObject(meta.get("namespace", ""), meta.get("name", ""), policy, status))
    return sorted(found, key=lambda p: (p.namespace, p.name))


def judged_by(policy: Policy) -> tuple[str, ...]:
    """What the policy looks at to call a server idle or working, in users' words."""
    what = []
    kernels = policy.kernels
    if kernels is not None and kernels.idle_from == "kernels":
        what.append("kernel and terminal activity")
    else:
        what.append("Hub activity")
    if kernels is not None and kernels.protect_busy:
        what.append("busy kernels")
    usage = policy.usage
    if usage is not None and usage.busy_cpu:
        what.append("CPU")
    if usage is not None and (usage.busy_gpu or usage.cull_idle_gpu):
        what.append("GPU")
    if policy.max_age:
        what.append("age")
    return tuple(what)


def _stop_estimate(
    policy: Policy,
    server: Server,
    kept_until: datetime | None,
    idle: float | None,
    swept_at: datetime | None,
    protection: str | None,
    warned_after: datetime | None,
) -> tuple[datetime | None, str | None]:
    """When the server would be stopped if nothing changes, and why (idle or maxAge)."""
    options: list[tuple[datetime, str]] = []
    if policy.max_age and server.started is not None:
        options.append((server.started + timedelta(seconds=policy.max_age), "maxAge"))
    if policy.idle_timeout and idle is not None and swept_at is not None:
        idle_at = swept_at + timedelta(seconds=max(policy.idle_timeout - idle, 0.0))
        if kept_until is not None:
            idle_at = max(idle_at, kept_until)
        if protection is None or kept_until is not None:
            options.append((idle_at, "idle"))
    if not options:
        return None, None
    when, why = min(options)
    if warned_after is not None and warned_after > when:
        when = warned_after
    return when, why


def _governing(
    obj: PolicyObject, user: str, server: Server, views: PolicyViews, now: datetime
) -> Governing:
    policy = obj.policy
    key = (user, server.name)
    kept_until = None
    for keep in keeps_from_status(obj.status.get("keeps")):
        started_ok = (
            keep.started is None
            or server.started is None
            or abs((keep.started - server.started).total_seconds()) < 1.0
        )
        if keep.key == key and keep.until > now and started_ok:
            kept_until = keep.until
    view = views.get(obj.namespace, obj.name)
    judged = view.judged.get(key) if view is not None else None
    warned = view.warned.get(key) if view is not None else None
    swept_at = view.swept_at if view is not None else None
    idle = judged.idle_seconds if judged is not None else None
    protection = judged.protection if judged is not None else None
    if kept_until is not None:
        protection = f"kept until {iso(kept_until)}"
    elif protection is not None and protection.startswith("kept until"):
        protection = None  # that keep has ended since the sweep
    warned_after = warned.stop_after if warned is not None else None
    stop_at, why = _stop_estimate(
        policy, server, kept_until, idle, swept_at, protection, warned_after
    )
    counts = KeepCounts.from_status(obj.status.get("keepsToday"))
    return Governing(
        namespace=obj.namespace,
        name=obj.name,
        judged_by=judged_by(policy),
        keep_max=policy.keep.max if policy.keep is not None else None,
        keep_per_day=policy.keep.per_day if policy.keep is not None else 0,
        keeps_used_today=counts.made(user, now),
        kept_until=kept_until,
        swept_at=swept_at,
        idle_seconds=idle,
        protection=protection,
        warned_stop_after=warned_after,
        stop_at=stop_at,
        stop_reason=why,
        dry_run=policy.dry_run,
    )


def running_servers(
    model: Mapping[str, Any], policies: list[PolicyObject], views: PolicyViews, now: datetime
) -> list[ServerView]:
    """The user's running servers, each with the policies that govern it."""
    user: User = parse_user(model)
    servers = []
    for server in sorted(user.servers, key=lambda s: s.name):
        if not (server.ready or server.pending):
            continue
        governing = [
            _governing(obj, user.name, server, views, now)
            for obj in policies
            if server_in_scope(obj.policy, user, server)
        ]
        url = ((model.get("servers") or {}).get(server.name) or {}).get("url") or ""
        servers.append(ServerView(user.name, server.name, url, server.started, governing))
    return servers


def find_server(servers: list[ServerView], name: str) -> ServerView | None:
    """The user's running server of that name (``~`` is the default server)."""
    name = "" if name == "~" else name
    return next((s for s in servers if s.server == name), None)
