"""A Hub's users and servers as the engine sees them: parsed once from the REST API's JSON."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from dateutil.parser import isoparse


class HubDataError(ValueError):
    """A user or server model from the Hub that cannot be read."""


def parse_time(value: object) -> datetime | None:
    """Parse a JupyterHub ISO 8601 timestamp (``None`` stays ``None``); naive means UTC."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise HubDataError(f"not a timestamp: {value!r}")
    try:
        parsed = isoparse(value)
    except ValueError as exc:
        raise HubDataError(f"not a timestamp: {value!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


def server_label(user: str, server: str) -> str:
    """``user/server``, or just ``user`` for a default server: how events, status messages and
    the command line name a server."""
    return f"{user}/{server}" if server else user


class ServerLabelled:
    """For records of one server with ``user`` and ``server`` fields: their :attr:`label`."""

    user: str
    server: str

    @property
    def label(self) -> str:
        """``user/server``, or just ``user`` for a default server."""
        return server_label(self.user, self.server)


@dataclass(frozen=True)
class Server:
    """One server of a user (``name == ""`` is the default server)."""

    user: str
    name: str
    ready: bool
    pending: str | None
    stopped: bool
    started: datetime | None
    last_activity: datetime | None
    profile: str | None
    url: str = ""

    @property
    def key(self) -> tuple[str, str]:
        """``(user, server name)``: how a server is named across sweeps and signals."""
        return (self.user, self.name)

    @property
    def active(self) -> bool:
        """Running or on its way up or down: the Hub counts it as active."""
        return self.ready or self.pending is not None

    @property
    def label(self) -> str:
        """``user/server``, or just ``user`` for a default server, as events show it."""
        return server_label(self.user, self.name)


@dataclass(frozen=True)
class User:
    """A Hub user with the fields the engine reads.

    ``groups`` is ``None`` when the token may not read group membership; ``admin`` likewise.
    """

    name: str
    admin: bool | None
    groups: tuple[str, ...] | None
    last_activity: datetime | None
    created: datetime | None
    servers: tuple[Server, ...]
    has_activity_field: bool = True

    @property
    def active_servers(self) -> tuple[Server, ...]:
        """Servers that are ready or pending."""
        return tuple(s for s in self.servers if s.active)


def _profile(user_options: object) -> str | None:
    if isinstance(user_options, Mapping):
        profile = user_options.get("profile")
        if isinstance(profile, str):
            return profile
    return None


def parse_server(user: str, name: str, model: Mapping[str, Any]) -> Server:
    """Build a :class:`Server` from one entry of a user model's ``servers``."""
    if not isinstance(model, Mapping):
        raise HubDataError(f"server {user}/{name} is not an object")
    pending = model.get("pending")
    return Server(
        user=user,
        name=name,
        ready=bool(model.get("ready")),
        pending=pending if isinstance(pending, str) and pending else None,
        stopped=bool(model.get("stopped")),
        started=parse_time(model.get("started")),
        last_activity=parse_time(model.get("last_activity")),
        profile=_profile(model.get("user_options")),
        url=model["url"] if isinstance(model.get("url"), str) else "",
    )


def parse_user(model: Mapping[str, Any]) -> User:
    """Build a :class:`User` from a JupyterHub user model.

    Raises :class:`HubDataError` when the model has no name or malformed fields.
    """
    if not isinstance(model, Mapping) or not isinstance(model.get("name"), str):
        raise HubDataError(f"not a user model: {str(model)[:200]}")
    name = model["name"]
    servers_model = model.get("servers") or {}
    if not isinstance(servers_model, Mapping):
        raise HubDataError(f"servers of {name} is not an object")
    groups = model.get("groups")
    if groups is not None and not (
        isinstance(groups, list) and all(isinstance(g, str) for g in groups)
    ):
        raise HubDataError(f"groups of {name} is not a list of names")
    admin = model.get("admin")
    return User(
        name=name,
        admin=admin if isinstance(admin, bool) else None,
        groups=tuple(groups) if groups is not None else None,
        last_activity=parse_time(model.get("last_activity")),
        created=parse_time(model.get("created")),
        servers=tuple(parse_server(name, sname, smodel) for sname, smodel in servers_model.items()),
        has_activity_field="last_activity" in model,
    )


@dataclass(frozen=True)
class Snapshot:
    """Everything one sweep judges: the users it listed and the Hub's clock while listing."""

    users: tuple[User, ...]
    now: datetime
    hub_version: str | None = None
    clock_source: str = "hub"

    @classmethod
    def from_users(
        cls,
        users: Iterable[User],
        now: datetime,
        hub_version: str | None = None,
        clock_source: str = "hub",
    ) -> Snapshot:
        """Merge users listed by several queries; the first listing of a name wins."""
        merged: dict[str, User] = {}
        for user in users:
            merged.setdefault(user.name, user)
        return cls(tuple(merged.values()), now, hub_version, clock_source)
