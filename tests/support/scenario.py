"""Helpers shared by the engine, CLI and operator tests: policies for a test Hub, and Hub
state made of users whose servers have been idle for given times."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from hubcull.engine.clock import Clock, utcnow
from hubcull.engine.rules.policy import Policy, parse_spec
from hubcull.engine.sweep.runner import SweepOutcome, sweep_policy
from hubcull.engine.sweep.sources import SweepSources
from tests.support.jhub import Hub

TOKEN_REF = {"name": "hub", "key": "hub.services.hubcull.apiToken"}


def spec_for(target: Hub | str, **fields: Any) -> dict[str, Any]:
    """A CullPolicy spec for the test Hub; keyword arguments are spec fields."""
    url = target if isinstance(target, str) else target.api_url
    hub_fields = fields.pop("hub", {})
    return {"hub": {"url": url, "tokenSecretRef": TOKEN_REF, **hub_fields}, **fields}


def policy_for(target: Hub | str, **fields: Any) -> Policy:
    """A parsed policy for the test Hub."""
    return parse_spec(spec_for(target, **fields))


async def sweep(
    hub: Hub,
    token: str,
    clock: Clock = utcnow,
    previous: Mapping[str, Any] | None = None,
    **fields: Any,
) -> SweepOutcome:
    """One sweep of the test Hub with a policy made of ``fields``."""
    return await sweep_policy(
        policy_for(hub, **fields), SweepSources(token, clock=clock), previous=previous
    )


def ago(seconds: float) -> datetime:
    """A UTC time ``seconds`` before now."""
    return datetime.now(timezone.utc) - timedelta(seconds=seconds)


async def populate(
    hub: Hub,
    servers: Mapping[tuple[str, str], float | None],
    *,
    options: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
    started: Mapping[tuple[str, str], float] | None = None,
    concurrency: int = 32,
) -> None:
    """Create users, start their servers and backdate them.

    ``servers`` maps (user, server) to seconds idle (``None`` leaves last_activity as the
    Hub set it, i.e. now). ``started`` optionally backdates the start time (default: the
    idle time, or now). The user's own last_activity is set to the newest of its servers.
    """
    options = options or {}
    started = started or {}
    users = sorted({user for user, _ in servers})
    await hub.create_users(users)
    await hub.spawn_many([(u, s, options.get((u, s))) for u, s in servers], concurrency=concurrency)
    newest: dict[str, float] = {}
    updates = []
    for (user, server), idle in servers.items():
        update: dict[str, Any] = {"user": user, "server": server}
        if idle is not None:
            update["last_activity"] = ago(idle)
            newest[user] = min(newest.get(user, idle), idle)
        if (user, server) in started or idle is not None:
            update["started"] = ago(started.get((user, server), idle or 0))
        updates.append(update)
    for user, idle in newest.items():
        if not any(s is None for (u, _), s in servers.items() if u == user):
            updates.append({"user": user, "user_last_activity": ago(idle)})
    await hub.set_times_bulk(updates)


def culled_labels(outcome: SweepOutcome) -> set[str]:
    """``user`` / ``user/server`` of every server the sweep culled."""
    assert outcome.result is not None, outcome.message
    return {c.label for c in outcome.result.culled}


def labels(keys: Iterable[tuple[str, str]]) -> set[str]:
    """``user`` / ``user/server`` labels of (user, server) pairs."""
    return {f"{u}/{s}" if s else u for u, s in keys}
