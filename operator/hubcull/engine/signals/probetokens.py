"""Per-server probe tokens: what a kernel probe carries instead of the policy's own token.

A user's server runs code its user controls, so whatever a probe sends it, that user can keep.
Each probe therefore carries a token *owned by the server's user* with the single scope
``access:servers!server=<user>/<server>`` (nothing the user does not already have), made
through the Hub API (``POST /users/{user}/tokens``, note ``hubcull probe``) with the policy's
token, which needs the ``tokens`` scope for that user.

Tokens are kept in memory only (a restart leaves at most the previous run's tokens, which
expire on their own), reused until :attr:`ProbeTokens.renew_before` seconds before they
expire, and deleted when their server stops or leaves the policy's scope (at the next sweep),
when the policy goes or changes Hub, and at shutdown (best effort, within a time bound).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

from ..errors import SweepError
from ..hub.client import HubAPIError, HubTokenRefused
from ..hub.model import HubDataError, parse_time
from ..rules.signals import ServerKey

log = logging.getLogger(__name__)

#: The note of every probe token, so that an admin can find them in the Hub's token lists.
PROBE_NOTE = "hubcull probe"
#: The longest a probe token lives (the contract's bound: 1 h).
MAX_LIFETIME_SECONDS = 3600
#: A token is replaced this long before it expires (at most a quarter of its lifetime).
RENEW_BEFORE_SECONDS = 300.0
#: A refusal for one user is remembered this long before the Hub is asked again.
REFUSAL_MEMORY_SECONDS = 300.0
#: How long deleting every token may take when the policy goes or the operator stops.
RELEASE_TIMEOUT_SECONDS = 5.0


def probe_scope(user: str, server: str) -> str:
    """The one scope a probe token holds: use of this one server (``server`` is ``""`` for
    the default server, as JupyterHub writes it: ``access:servers!server=alice/``)."""
    return f"access:servers!server={user}/{server}"


class TokenMinter(Protocol):
    """What the token source needs of a Hub client (a HubClient)."""

    async def create_token(
        self, user: str, scopes: list[str], expires_in: int, note: str
    ) -> dict[str, object]: ...

    async def delete_token(self, user: str, token_id: str) -> str: ...


class ProbeTokenRefused(Exception):
    """The Hub will not make a probe token for this server's user: the probe fails for that
    server alone (result ``token_refused``) and the Hub's ``last_activity`` decides for it."""


@dataclass
class _Held:
    user: str
    token: str
    token_id: str
    renew_at: float  # on the source's clock
    expires_at: float


@dataclass
class TokenCounts:
    """What the source asked of the Hub since it was made (for benchmarks and tests)."""

    created: int = 0
    refused: int = 0
    deleted: int = 0
    delete_failed: int = 0


class ProbeTokens:
    """The probe tokens of one policy, kept from sweep to sweep.

    ``lifetime`` (at most :data:`MAX_LIFETIME_SECONDS`) and ``renew_before`` are seconds;
    ``clock`` is a monotonic clock in seconds (a benchmark drives its own).
    """

    def __init__(
        self,
        *,
        lifetime: int = MAX_LIFETIME_SECONDS,
        renew_before: float = RENEW_BEFORE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lifetime = max(1, min(int(lifetime), MAX_LIFETIME_SECONDS))
        self.renew_before = renew_before
        self.clock = clock
        self.counts = TokenCounts()
        self._held: dict[ServerKey, _Held] = {}
        self._refused: dict[ServerKey, tuple[float, str]] = {}
        self._pending: dict[ServerKey, asyncio.Future[_Held]] = {}
        #: tokens whose deletion failed, retried at the next sweep until they expire
        self._doomed: list[_Held] = []

    @property
    def held(self) -> int:
        """How many tokens the source holds now."""
        return len(self._held) + len(self._doomed)

    def token_ids(self) -> dict[ServerKey, str]:
        """The ids of the tokens held, by server (never the tokens themselves)."""
        return {key: held.token_id for key, held in self._held.items()}

    async def token_for(self, hub: TokenMinter, key: ServerKey) -> str:
        """The token to probe server ``key`` with: the one held if it is not due for renewal,
        else a new one. Raises :class:`ProbeTokenRefused` when the Hub refuses this user, and
        :class:`~hubcull.engine.hubclient.HubAPIError` when the Hub cannot be asked."""
        now = self.clock()
        held = self._held.get(key)
        if held is not None and now < held.renew_at:
            return held.token
        refused = self._refused.get(key)
        if refused is not None:
            if now < refused[0]:
                raise ProbeTokenRefused(refused[1])
            del self._refused[key]
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._renew(hub, key, held))
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        return (await asyncio.shield(pending)).token

    async def _renew(self, hub: TokenMinter, key: ServerKey, old: _Held | None) -> _Held:
        user, server = key
        started = self.clock()
        try:
            model = await hub.create_token(
                user, [probe_scope(user, server)], self.lifetime, PROBE_NOTE
            )
        except HubTokenRefused as exc:
            self.counts.refused += 1
            self._refused[key] = (started + REFUSAL_MEMORY_SECONDS, str(exc))
            await self._forget(hub, key)
            raise ProbeTokenRefused(str(exc)) from None
        self.counts.created += 1
        valid = self._validity(model)
        margin = min(self.renew_before, valid / 4)
        held = _Held(
            user, str(model["token"]), str(model["id"]), started + valid - margin, started + valid
        )
        if old is not None and self._held.get(key) is old:
            await self._delete([old], hub)
        self._held[key] = held
        return held

    def _validity(self, model: dict[str, object]) -> float:
        """Seconds the new token is valid: what was asked for, or less when the Hub says
        ``expires_at`` sooner (its ``token_expires_in_max_seconds``)."""
        valid = float(self.lifetime)
        expires, created = model.get("expires_at"), model.get("created")
        try:
            expires_at = parse_time(expires) if isinstance(expires, str) else None
            created_at = parse_time(created) if isinstance(created, str) else None
        except HubDataError:
            return valid
        if expires_at is not None:
            base = created_at or datetime.now(timezone.utc)
            valid = min(valid, max((expires_at - base).total_seconds(), 0.0))
        return valid

    async def keep_only(self, hub: TokenMinter, keys: Iterable[ServerKey]) -> None:
        """Delete the tokens of servers not in ``keys`` (stopped, or out of scope), and retry
        the deletions that failed before."""
        keep = set(keys)
        gone = [key for key in self._held if key not in keep]
        retired = [self._held.pop(key) for key in gone]
        for key in [k for k in self._refused if k not in keep]:
            del self._refused[key]
        now = self.clock()
        retry = [held for held in self._doomed if held.expires_at > now]
        self._doomed = []
        if retired or retry:
            await self._delete([*retired, *retry], hub)

    async def release(
        self, hub: TokenMinter | None, timeout: float = RELEASE_TIMEOUT_SECONDS
    ) -> None:
        """Delete every token (the policy went, changed Hub, or the operator stops), within
        ``timeout`` seconds; what is not deleted by then expires on its own."""
        every = [*self._held.values(), *self._doomed]
        for pending in list(self._pending.values()):
            pending.cancel()
        self._held, self._doomed, self._refused = {}, [], {}
        if not every or hub is None:
            return
        try:
            await asyncio.wait_for(self._delete(every, hub), timeout)
        except asyncio.TimeoutError:
            log.warning(
                "could not delete %d probe tokens within %gs; they expire on their own (note %r)",
                len(every),
                timeout,
                PROBE_NOTE,
            )

    async def _forget(self, hub: TokenMinter, key: ServerKey) -> None:
        held = self._held.pop(key, None)
        if held is not None:
            await self._delete([held], hub)

    async def _delete(self, tokens: list[_Held], hub: TokenMinter) -> None:
        async def one(held: _Held) -> None:
            try:
                await hub.delete_token(held.user, held.token_id)
            except (HubAPIError, SweepError) as exc:
                self.counts.delete_failed += 1
                self._doomed.append(held)
                log.info("could not delete a probe token of %s (retried later): %s", held.user, exc)
            else:
                self.counts.deleted += 1

        await asyncio.gather(*(one(held) for held in tokens))
