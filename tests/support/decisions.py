"""Building blocks of the pure decision tests (tests/test_decisions*.py, tests/test_webhook.py):
a fixed NOW, the minimal policy, and users, servers and snapshots idle and running for given
seconds before NOW."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

from hubcull.engine.hub.model import Server, Snapshot, User
from hubcull.engine.rules.policy import WarnSpec, parse_spec

MIN = 60
HOUR = 3600

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=timezone.utc)


BASE = parse_spec(
    {"hub": {"url": "http://hub/hub/api", "tokenSecretRef": {"name": "h", "key": "k"}}}
)


def ago(seconds: float | None) -> datetime | None:
    return None if seconds is None else NOW - timedelta(seconds=seconds)


def server(
    user: str,
    name: str = "",
    idle: float | None = 0,
    age: float | None = 0,
    *,
    pending: str | None = None,
    ready: bool = True,
    profile: str | None = None,
    stopped: bool = False,
) -> Server:
    return Server(
        user,
        name,
        ready and pending is None and not stopped,
        pending,
        stopped,
        ago(age),
        ago(idle),
        profile,
    )


def user(
    name: str,
    *servers: Server,
    admin: bool = False,
    groups: tuple[str, ...] = (),
    idle: float | None = None,
    created: float | None = None,
) -> User:
    return User(name, admin, groups, ago(idle), ago(created), servers)


def snap(*users: User) -> Snapshot:
    return Snapshot.from_users(users, NOW)


def stops(plan) -> set[tuple[str, str, str]]:
    return {(d.user, d.server, d.reason) for d in plan.stops}


# idle after 1h, warned 10 minutes before
WARN = replace(BASE, idle_timeout=HOUR, warn=WarnSpec(before=10 * MIN))


def idle_server(name: str, idle: float, age: float = 9 * HOUR) -> User:
    return user(name, server(name, idle=idle, age=age))
