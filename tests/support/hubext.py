"""Test-only JupyterHub API extension: set activity timestamps to explicit values.

Loaded into the Hub process with ``c.JupyterHub.extra_handlers = hubext.handlers()``
(``tests.support.jhub`` does that).  JupyterHub's own ``POST /users/{name}/activity``
only ever moves ``last_activity`` forward and spawning sets it to "now", so tests that
need an idle-looking server use this endpoint to backdate it.

Endpoints (under ``/hub/api``), all requiring a token with the *unfiltered*
``admin:users`` and ``admin:servers`` scopes (e.g. the ``admin`` role):

``POST /_harness/times``
    Body: one update object, a list of them, or ``{"updates": [...]}``.  An update is::

        {"user": "ann", "server": "",            # "" = the default server
         "last_activity": "2024-01-01T00:00:00Z",  # server's last_activity
         "started": null,                          # server's started
         "user_last_activity": "2024-01-01T00:00:00Z"}  # the user's last_activity

    Each timestamp key is optional: absent = leave alone, ``null`` = set to NULL,
    string = ISO 8601 (naive means UTC).  ``server`` may be omitted when only
    ``user_last_activity`` is set.  All updates are validated before any is applied and
    committed in one transaction.  Answers ``200`` with ``{"updated": [...]}``, each entry
    echoing the stored values as the REST API renders them.

``POST /_harness/release-delays``
    Cut short every pending ``FakeSpawner`` start/stop delay.  Answers ``204``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from dateutil.parser import isoparse
from jupyterhub import orm
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.scopes import Scope
from jupyterhub.utils import isoformat
from sqlalchemy.orm import selectinload
from tornado import web

__all__ = ["REQUIRED_SCOPES", "ReleaseDelaysHandler", "TimesHandler", "handlers"]

REQUIRED_SCOPES = ("admin:users", "admin:servers")
_TIME_KEYS = ("last_activity", "started", "user_last_activity")
_ALL_KEYS = {"user", "server", *_TIME_KEYS}


def _parse_time(key: str, value: Any) -> datetime | None:
    """Parse an ISO 8601 string (or None) into the Hub's naive-UTC representation."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise web.HTTPError(400, f"{key} must be an ISO 8601 string or null, not {value!r}")
    try:
        dt = isoparse(value)
    except ValueError as e:
        raise web.HTTPError(400, f"{key}: not an ISO 8601 timestamp: {value!r}") from e
    if dt.tzinfo is not None:
        dt = dt.astimezone(timezone.utc).replace(tzinfo=None)
    return dt


class _AdminOnly(APIHandler):
    """Base: refuse anyone without the unfiltered admin scopes."""

    def _require_admin(self) -> None:
        if self.current_user is None:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        missing = [s for s in REQUIRED_SCOPES if self.parsed_scopes.get(s) is not Scope.ALL]
        if missing:
            raise web.HTTPError(403, f"Requires unfiltered scopes {missing}")


class TimesHandler(_AdminOnly):
    """``POST /hub/api/_harness/times``: set last_activity/started to explicit values."""

    def _updates_from_body(self) -> list[dict[str, Any]]:
        body = self.get_json_body()
        if isinstance(body, dict) and "updates" in body:
            body = body["updates"]
        if isinstance(body, dict):
            body = [body]
        if not isinstance(body, list) or not all(isinstance(u, dict) for u in body):
            raise web.HTTPError(400, "Body must be an update object, a list, or {updates: []}")
        return body

    def _load_users(self, names: set[str]) -> dict[str, orm.User]:
        """The named users with their spawners, in a few queries (not one per update)."""
        found: dict[str, orm.User] = {}
        ordered = sorted(names)
        for i in range(0, len(ordered), 500):
            query = (
                self.db.query(orm.User)
                .filter(orm.User.name.in_(ordered[i : i + 500]))
                .options(selectinload(orm.User._orm_spawners))
            )
            found.update((u.name, u) for u in query)
        return found

    def post(self) -> None:
        """Validate every update, apply them all, commit once, echo the stored values."""
        self._require_admin()
        updates = self._updates_from_body()
        for update in updates:
            unknown = set(update) - _ALL_KEYS
            if unknown:
                raise web.HTTPError(400, f"Unknown keys {sorted(unknown)} in {update!r}")
            if not isinstance(update.get("user"), str):
                raise web.HTTPError(400, f"user must be a string in {update!r}")
        users = self._load_users({u["user"] for u in updates})
        planned: list[tuple[orm.User, orm.Spawner | None, dict[str, datetime | None]]] = []
        for update in updates:
            name = update["user"]
            orm_user = users.get(name)
            if orm_user is None:
                raise web.HTTPError(404, f"No such user: {name!r}")
            times = {k: _parse_time(k, update[k]) for k in _TIME_KEYS if k in update}
            orm_spawner = None
            if "server" in update or "last_activity" in times or "started" in times:
                server = update.get("server", "")
                if not isinstance(server, str):
                    raise web.HTTPError(400, f"server must be a string in {update!r}")
                orm_spawner = orm_user.orm_spawners.get(server)
                if orm_spawner is None:
                    raise web.HTTPError(404, f"User {name!r} has no server {server!r}")
            planned.append((orm_user, orm_spawner, times))

        result = []
        for orm_user, orm_spawner, times in planned:
            if "user_last_activity" in times:
                orm_user.last_activity = times["user_last_activity"]
            if orm_spawner is not None:
                if "last_activity" in times:
                    orm_spawner.last_activity = times["last_activity"]
                if "started" in times:
                    orm_spawner.started = times["started"]
            entry: dict[str, Any] = {
                "user": orm_user.name,
                "user_last_activity": isoformat(orm_user.last_activity),
            }
            if orm_spawner is not None:
                entry.update(
                    server=orm_spawner.name,
                    last_activity=isoformat(orm_spawner.last_activity),
                    started=isoformat(orm_spawner.started),
                )
            result.append(entry)
        self.db.commit()
        self.log.info("harness: set times on %d entries", len(result))
        self.write(json.dumps({"updated": result}))


class ReleaseDelaysHandler(_AdminOnly):
    """``POST /hub/api/_harness/release-delays``: finish pending FakeSpawner delays now."""

    def post(self) -> None:
        """Release every sleeping fake start/stop."""
        self._require_admin()
        from tests.support.jhub_spawner import release_delays

        release_delays()
        self.set_status(204)


def handlers() -> list[tuple[str, type[APIHandler]]]:
    """The handler list for ``c.JupyterHub.extra_handlers`` (prefixed by the Hub)."""
    return [
        (r"/api/_harness/times", TimesHandler),
        (r"/api/_harness/release-delays", ReleaseDelaysHandler),
    ]
