"""``spec.keep``: a user keeps one of their running servers until a time (pure rules).

A keep protects a server from idleness, ``idleGPU``, capacity and demand stops until it ends;
``maxAge`` still applies. Keeps live in the policy's status (``status.keeps[]``), so they
survive restarts; they end at ``until`` or when the server stops (a keep belongs to one run of
the server, recorded by its ``started`` time). Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from dateutil.parser import isoparse

from ..durations import format_duration

ServerKey = tuple[str, str]  # (user, server name); "" is the default server

#: The longest a keep request may name in hours: anything more is surely a mistake.
MAX_HOURS = 24 * 366


@dataclass(frozen=True)
class Keep:
    """One server kept by its user until ``until`` (UTC)."""

    user: str
    server: str
    until: datetime
    started: datetime | None = None
    made: datetime | None = None

    @property
    def key(self) -> ServerKey:
        """``(user, server)``."""
        return (self.user, self.server)


class KeepRefused(ValueError):
    """A keep request that cannot be granted; ``status`` is the HTTP status to answer with
    (400 malformed or over ``max``, 429 over ``perDay``), the message one sentence."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: object) -> datetime:
    """An RFC 3339 time with a zone (``2026-12-06T10:00:00Z``), in UTC. Raises ValueError."""
    if not isinstance(value, str) or "T" not in value.upper():
        raise ValueError(f"not an RFC 3339 time: {value!r}")
    try:
        parsed = isoparse(value.strip())
    except (ValueError, OverflowError):
        raise ValueError(f"not an RFC 3339 time: {value!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"an RFC 3339 time needs a zone (Z or +01:00): {value!r}")
    return parsed.astimezone(timezone.utc)


def keeps_from_status(entries: object) -> list[Keep]:
    """The keeps in ``status.keeps`` (entries that cannot be read are left out)."""
    keeps: list[Keep] = []
    if not isinstance(entries, list):
        return keeps
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        user, server = entry.get("user"), entry.get("server", "")
        if not isinstance(user, str) or not isinstance(server, str):
            continue
        try:
            until = parse_rfc3339(entry.get("until"))
            started = parse_rfc3339(entry["started"]) if entry.get("started") else None
            made = parse_rfc3339(entry["made"]) if entry.get("made") else None
        except ValueError:
            continue
        keeps.append(Keep(user, server, until, started, made))
    return keeps


def keeps_to_status(keeps: Iterable[Keep]) -> list[dict[str, Any]]:
    """``status.keeps``: one entry per kept server, sorted by user and server."""
    entries = []
    for keep in sorted(keeps, key=lambda k: k.key):
        entry: dict[str, Any] = {
            "user": keep.user,
            "server": keep.server,
            "until": _iso(keep.until),
        }
        if keep.started is not None:
            entry["started"] = _iso(keep.started)
        if keep.made is not None:
            entry["made"] = _iso(keep.made)
        entries.append(entry)
    return entries


def _same_run(keep: Keep, started: datetime | None) -> bool:
    if keep.started is None or started is None:
        return True
    return abs((keep.started - started).total_seconds()) < 1.0


def live_keeps(
    keeps: Iterable[Keep], running: Mapping[ServerKey, datetime | None], now: datetime
) -> list[Keep]:
    """The keeps that still hold at ``now``: not ended, and their server still running the
    run they were made for. ``running`` maps each running (or pending) server to its
    ``started`` time."""
    live = []
    for keep in keeps:
        if keep.until <= now or keep.key not in running:
            continue
        if not _same_run(keep, running[keep.key]):
            continue
        live.append(keep)
    return live


def kept_until(keeps: Iterable[Keep], now: datetime) -> dict[ServerKey, datetime]:
    """Server -> the time its keep ends, for the keeps that hold at ``now`` (``decide``)."""
    return {k.key: k.until for k in keeps if k.until > now}


def keep_protection(until: datetime | None, now: datetime) -> str | None:
    """``kept until 2026-12-06T10:00:00Z`` while a keep holds, else ``None``."""
    if until is None or until <= now:
        return None
    return f"kept until {_iso(until)}"


def requested_until(body: object, now: datetime) -> datetime | None:
    """The end a keep request asks for: ``{"until": RFC 3339}`` or ``{"hours": n}``;
    ``None`` ends the keep (``{"hours": 0}``). Raises :class:`KeepRefused` (400)."""
    if not isinstance(body, Mapping):
        raise KeepRefused('Send a JSON object: {"until": "<RFC 3339 time>"} or {"hours": n}.')
    if ("until" in body) == ("hours" in body):
        raise KeepRefused('Send exactly one of "until" (an RFC 3339 time) or "hours" (a number).')
    if "hours" in body:
        hours = body["hours"]
        if isinstance(hours, str):
            try:
                hours = float(hours)
            except ValueError:
                raise KeepRefused(f"hours must be a number, not {body['hours']!r}.") from None
        if (
            isinstance(hours, bool)
            or not isinstance(hours, (int, float))
            or not math.isfinite(hours)
        ):
            raise KeepRefused(f"hours must be a number, not {body['hours']!r}.")
        if hours < 0:
            raise KeepRefused("hours cannot be negative (0 ends the keep).")
        if hours > MAX_HOURS:
            raise KeepRefused(f"hours must be at most {MAX_HOURS}.")
        if hours == 0:
            return None
        return now + timedelta(hours=hours)
    try:
        until = parse_rfc3339(body["until"])
    except ValueError as exc:
        raise KeepRefused(f"until: {exc}.") from None
    if until <= now:
        raise KeepRefused(f"until must be in the future (it is {_iso(now)} now).")
    return until


def check_keep(
    until: datetime, now: datetime, max_seconds: float, per_day: int, made_today: int
) -> None:
    """Refuse a keep beyond ``spec.keep.max`` (400) or ``perDay`` (429); never clamp."""
    if (until - now).total_seconds() > max_seconds + 1.0:  # a second for rounding in forms
        latest = now + timedelta(seconds=max_seconds)
        raise KeepRefused(
            f"A keep may last at most {format_duration(max_seconds)} from now "
            f"(until {_iso(latest)} at the latest).",
            400,
        )
    if per_day and made_today >= per_day:
        raise KeepRefused(
            f"You have used all {per_day} keeps allowed per day; try again after 00:00 UTC.", 429
        )


@dataclass(frozen=True)
class KeepCounts:
    """Keeps made per user on one UTC day (``status.keepsToday``), for ``perDay``."""

    day: str = ""
    users: tuple[tuple[str, int], ...] = ()

    @staticmethod
    def from_status(value: object) -> KeepCounts:
        """Read ``status.keepsToday`` (anything unreadable counts as none)."""
        if not isinstance(value, Mapping) or not isinstance(value.get("day"), str):
            return KeepCounts()
        users = value.get("users")
        if not isinstance(users, Mapping):
            return KeepCounts(value["day"])
        pairs = tuple(
            sorted(
                (u, n)
                for u, n in users.items()
                if isinstance(u, str) and isinstance(n, int) and not isinstance(n, bool)
            )
        )
        return KeepCounts(value["day"], pairs)

    def made(self, user: str, now: datetime) -> int:
        """How many keeps ``user`` made on ``now``'s UTC day."""
        if self.day != day_of(now):
            return 0
        return dict(self.users).get(user, 0)

    def add(self, user: str, now: datetime) -> KeepCounts:
        """These counts with one more keep by ``user`` at ``now`` (a new day starts at 0)."""
        day = day_of(now)
        users = dict(self.users) if self.day == day else {}
        users[user] = users.get(user, 0) + 1
        return replace(self, day=day, users=tuple(sorted(users.items())))

    def to_status(self) -> dict[str, Any]:
        """``status.keepsToday``."""
        return {"day": self.day, "users": dict(self.users)}


def day_of(now: datetime) -> str:
    """The UTC day of ``now``, ``2026-12-06``."""
    return now.astimezone(timezone.utc).strftime("%Y-%m-%d")


def set_keep(
    keeps: Iterable[Keep], user: str, server: str, until: datetime | None, **fields: Any
) -> list[Keep]:
    """``keeps`` with the keep of ``user``'s ``server`` set to ``until`` (``None``: ended)."""
    rest = [k for k in keeps if k.key != (user, server)]
    if until is None:
        return rest
    return [*rest, Keep(user, server, until, **fields)]


def merge_keeps(read: Iterable[Keep], written: Iterable[Keep], live: Iterable[Keep]) -> list[Keep]:
    """The keeps to write after a sweep that started from ``read`` and ended with ``written``,
    when the status holds ``live`` now: a keep made, changed or ended meanwhile (by a user,
    through the service) wins over the sweep's copy, so no keep is lost."""
    before = {k.key: k for k in read}
    after = {k.key: k for k in written}
    now_held = {k.key: k for k in live}
    merged: dict[ServerKey, Keep] = {}
    for key in {*before, *after, *now_held}:
        changed = now_held.get(key) != before.get(key)
        keep = now_held.get(key) if changed else after.get(key)
        if keep is not None:
            merged[key] = keep
    return [merged[key] for key in sorted(merged)]
