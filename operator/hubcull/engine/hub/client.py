"""An async JupyterHub REST API client: paginated listing, stops, deletes, the Hub's clock.

Every request has a timeout and goes through one semaphore (``concurrency`` in flight);
GETs are retried with backoff on connection errors, 429 and 5xx. The token is sent only in
the ``Authorization`` header and never appears in messages or logs.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import random
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import httpx

from ..errors import SweepError

log = logging.getLogger(__name__)

PAGINATION_ACCEPT = "application/jupyterhub-pagination+json"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_SCOPE_RE = re.compile(r"requires any of \[([^\]]*)\]")
#: JupyterHub's answer to an ``expires_in`` above ``token_expires_in_max_seconds``.
_EXPIRES_MAX_RE = re.compile(r"expires_in: \d+ must not exceed (\d+)")

StopOutcome = Literal["stopped", "stopping", "gone"]


class HubAPIError(SweepError):
    """Base class of the Hub failures a sweep reports; ``reason`` is the Ready reason."""

    reason = "HubError"


class HubUnreachable(HubAPIError):
    """The Hub did not answer (connection refused, timeout, broken connection)."""

    reason = "HubUnreachable"


class HubUnauthorized(HubAPIError):
    """The Hub refuses the token (403 "Missing or invalid credentials", or 401)."""

    reason = "Unauthorized"


class HubForbidden(HubAPIError):
    """The token is valid but lacks a scope; ``scope`` names it."""

    reason = "Forbidden"

    def __init__(self, message: str, scope: str) -> None:
        super().__init__(message)
        self.scope = scope


class HubTokenRefused(HubAPIError):
    """The Hub would not make a token for this one user (the ``tokens`` filter does not cover
    them, the user lacks the scope asked for, or the user is gone): that user's own problem,
    not the sweep's."""

    reason = "Forbidden"


class HubError(HubAPIError):
    """The Hub answered, but not with what the API promises (5xx, 404, malformed JSON)."""

    reason = "HubError"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Page:
    """One page of a paginated listing."""

    items: list[dict[str, Any]]
    offset: int
    limit: int
    total: int | None
    next_offset: int | None


def quote_name(name: str) -> str:
    """URL-quote a user or server name as one path segment."""
    return quote(name, safe="")


def _error_message(response: httpx.Response, secret: str = "") -> str:
    """The Hub's error message, with ``secret`` (the token) masked before it is cut short:
    an upstream that echoes request headers must not put the token into a status."""

    def masked(text: str) -> str:
        return text.replace(secret, "***") if secret else text

    try:
        body = response.json()
    except ValueError:
        return masked(response.text)[:200].strip()
    if isinstance(body, dict) and "message" in body:
        return masked(body["message"]) if isinstance(body["message"], str) else ""
    return masked(str(body))[:200]


@functools.lru_cache(maxsize=64)
def make_ssl_context(ca_pem: str | None) -> ssl.SSLContext:
    """An SSL context trusting ``ca_pem`` (a PEM bundle), or the system's CAs.

    Cached: building a context loads a CA store, which costs more CPU than a whole sweep of a
    small Hub, and every sweep makes a new client.
    """
    if not ca_pem:
        return httpx.create_ssl_context()
    return ssl.create_default_context(cadata=ca_pem)


def api_root_hint(url: str) -> str:
    """What to check when ``url`` is not the Hub's REST API root."""
    if not urlsplit(url).path.rstrip("/").endswith("/hub/api"):
        return "it should end in /hub/api, like http://hub:8081/hub/api"
    return (
        "the path ends in /hub/api, so check the host and port (the Hub's, like "
        "http://hub:8081, or its proxy's, not a single-user server's) and the Hub's base URL "
        "(with JupyterHub.base_url /jupyter/, z2jh's hub.baseUrl, the API is at "
        "/jupyter/hub/api)"
    )


class HubClient:
    """A client for one Hub's REST API root (``.../hub/api``)."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 60.0,
        concurrency: int = 10,
        page_size: int = 200,
        ca_pem: str | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        on_response: Callable[[str], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        remember_seconds: float = 0.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.remember_seconds = remember_seconds
        self._remembered: dict[str, tuple[float, Any]] = {}
        self._token = token
        self.page_size = page_size
        self.retries = retries
        self.backoff = backoff
        self._on_response = on_response
        self._semaphore = asyncio.Semaphore(concurrency)
        self._hub_now: datetime | None = None
        self._http = httpx.AsyncClient(
            headers={"Authorization": f"token {token}", "User-Agent": "hubcull"},
            timeout=httpx.Timeout(timeout),
            verify=make_ssl_context(ca_pem),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            transport=transport,
            follow_redirects=False,
        )

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # -- answers kept between sweeps ------------------------------------------------------
    def _recall(self, what: str) -> tuple[bool, Any]:
        kept = self._remembered.get(what)
        if kept is None or time.monotonic() - kept[0] >= self.remember_seconds:
            return False, None
        return True, kept[1]

    def _remember(self, what: str, value: Any) -> None:
        if self.remember_seconds > 0:
            self._remembered[what] = (time.monotonic(), value)

    def forget(self) -> None:
        """Drop the remembered Hub version and token scopes: the next sweep asks again."""
        self._remembered.clear()

    # -- the Hub's clock -----------------------------------------------------------------
    def start_clock(self) -> None:
        """Forget the Hub time seen so far; :attr:`hub_now` then reports the earliest after."""
        self._hub_now = None

    @property
    def hub_now(self) -> datetime | None:
        """The earliest ``Date`` header seen since :meth:`start_clock`, or ``None``."""
        return self._hub_now

    def _note_date(self, response: httpx.Response) -> None:
        header = response.headers.get("date")
        if not header:
            return
        try:
            when = email.utils.parsedate_to_datetime(header)
        except (TypeError, ValueError):
            return
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        if self._hub_now is None or when < self._hub_now:
            self._hub_now = when

    # -- requests ------------------------------------------------------------------------
    def _count(self, code: str) -> None:
        if self._on_response is not None:
            self._on_response(code)

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempts = self.retries + 1 if method == "GET" else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            response, error = await self._attempt(method, path, **kwargs)
            if response is not None and (response.status_code not in RETRY_STATUSES or last):
                return response
            if error is not None and last:
                raise error
            await asyncio.sleep(self._retry_delay(attempt, response))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self, method: str, path: str, **kwargs: Any
    ) -> tuple[httpx.Response | None, HubUnreachable | None]:
        try:
            async with self._semaphore:
                response = await self._http.request(method, f"{self.url}{path}", **kwargs)
        except httpx.TransportError as exc:
            if isinstance(exc, httpx.TimeoutException):
                self._count("timeout")
                problem = f"did not answer in time ({type(exc).__name__})"
            else:
                self._count("error")
                problem = f"cannot be reached: {type(exc).__name__}: {exc}"
            return None, HubUnreachable(f"the Hub at {self.url} {problem}")
        self._count(str(response.status_code))
        self._note_date(response)
        return response, None

    def _retry_delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None and response.status_code == 429:
            retry_after = response.headers.get("retry-after", "")
            if retry_after.isdigit():
                return min(float(retry_after), 30.0)
        return self.backoff * (2**attempt) * (0.5 + random.random())

    def _raise_for_status(self, response: httpx.Response, what: str) -> None:
        status = response.status_code
        if status < 400:
            return
        if status in (401, 403):
            self.forget()  # the token or its scopes changed: check them again next time
        message = _error_message(response, self._token)
        scope_match = _SCOPE_RE.search(message) if status == 403 else None
        if scope_match:
            scope = scope_match.group(1).split(",")[0].strip(" '\"")
            raise HubForbidden(
                f"the token lacks the scope {scope} needed to {what} ({message})", scope
            )
        if status in (401, 403):
            # JupyterHub: 403 "Missing or invalid credentials." (or no message at all)
            detail = message or "no reason given"
            raise HubUnauthorized(f"the Hub refused the token ({status}: {detail})")
        raise HubError(f"the Hub answered {status} while trying to {what}: {message}", status)

    def _json(self, response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise HubError(
                f"the Hub sent malformed JSON while trying to {what} "
                f"({response.headers.get('content-type', 'no content type')})",
                response.status_code,
            ) from None

    # -- API calls -----------------------------------------------------------------------
    async def info(self) -> dict[str, Any]:
        """``GET /`` of the API: the Hub's version. Checks that the URL is the API root.

        With ``remember_seconds`` the answer is reused for that long."""
        known, body = self._recall("info")
        if known:
            return body  # type: ignore[no-any-return]
        response = await self._send("GET", "/")
        status = response.status_code
        if status in (401, 403) or status >= 500:
            self._raise_for_status(response, "read the Hub version")
        what = None
        if 300 <= status < 400:
            what = f"it redirects to {response.headers.get('location', 'another page')}"
        elif status >= 400:
            what = f"it answers {status}"
        else:
            try:
                body = response.json()
            except ValueError:
                kind = response.headers.get("content-type", "no content type").split(";")[0]
                body, what = None, f"it answers {kind}, not JSON"
            if what is None and (not isinstance(body, dict) or "version" not in body):
                what = "no version in its answer"
        if what is not None:
            raise HubError(
                f"spec.hub.url {self.url} is not the JupyterHub REST API root ({what}): "
                + api_root_hint(self.url),
                status,
            )
        self._remember("info", body)
        return body

    async def token_scopes(self) -> list[str] | None:
        """The token's expanded scopes (``GET /user``), or ``None`` if the Hub doesn't say.

        With ``remember_seconds`` the answer is reused for that long; a 401 or 403 from any
        request forgets it."""
        known, scopes = self._recall("scopes")
        if known:
            return scopes  # type: ignore[no-any-return]
        response = await self._send("GET", "/user")
        self._raise_for_status(response, "identify the token")
        body = self._json(response, "identify the token")
        scopes = body.get("scopes") if isinstance(body, dict) else None
        held = [s for s in scopes if isinstance(s, str)] if isinstance(scopes, list) else None
        self._remember("scopes", held)
        return held

    async def _page(self, params: dict[str, str], offset: int, limit: int) -> Page:
        what = "list users"
        response = await self._send(
            "GET",
            "/users",
            params={**params, "offset": str(offset), "limit": str(limit)},
            headers={"Accept": PAGINATION_ACCEPT},
        )
        self._raise_for_status(response, what)
        body = self._json(response, what)
        if isinstance(body, list):
            raise HubError("the Hub answered a plain list, not pages: JupyterHub 2.0+ is required")
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise HubError("the Hub's user listing has no items: not a JupyterHub API answer")
        pagination = body.get("_pagination")
        if not isinstance(pagination, dict):
            raise HubError("the Hub's user listing has no _pagination")
        try:
            got_offset = int(pagination.get("offset", offset))
            got_limit = int(pagination.get("limit", limit))
            total = pagination.get("total")
            total = int(total) if total is not None else None
            nxt = pagination.get("next")
            next_offset = int(nxt["offset"]) if isinstance(nxt, dict) else None
        except (TypeError, ValueError, KeyError):
            raise HubError("the Hub's _pagination is malformed") from None
        items = body["items"]
        if got_offset != offset:
            raise HubError(f"the Hub answered offset {got_offset} when asked for {offset}")
        if next_offset is not None and next_offset != got_offset + got_limit:
            raise HubError(f"the Hub's next page offset {next_offset} does not follow {offset}")
        return Page(items, got_offset, got_limit, total, next_offset)

    async def list_users(
        self, state: str | None = None, include_stopped_servers: bool = False
    ) -> list[dict[str, Any]]:
        """Every user model matching ``state``, following the Hub's pagination to the end.

        After the first page the remaining pages (known from ``total``) are fetched
        concurrently; a listing that cannot be completed raises instead of returning part.
        """
        params: dict[str, str] = {}
        if state:
            params["state"] = state
        if include_stopped_servers:
            params["include_stopped_servers"] = "1"
        first = await self._page(params, 0, self.page_size)
        items = list(first.items)
        if first.next_offset is None:
            return items
        limit = first.limit or self.page_size
        total = first.total if first.total is not None else first.next_offset + limit
        offsets = list(range(first.next_offset, total, limit))
        pages = await asyncio.gather(*(self._page(params, o, limit) for o in offsets))
        next_offset = first.next_offset
        for page in pages:
            items.extend(page.items)
            next_offset = page.next_offset
        while next_offset is not None:
            page = await self._page(params, next_offset, limit)
            items.extend(page.items)
            next_offset = page.next_offset
        return items

    async def get_user(self, name: str) -> dict[str, Any] | None:
        """One user's model, or ``None`` if the user does not exist."""
        response = await self._send("GET", f"/users/{quote_name(name)}")
        if response.status_code == 404:
            return None
        self._raise_for_status(response, f"read user {name}")
        body = self._json(response, f"read user {name}")
        if not isinstance(body, dict):
            raise HubError(f"the Hub's model of user {name} is not an object")
        return body

    async def stop_server(self, user: str, server: str, remove: bool = False) -> StopOutcome:
        """Stop (and with ``remove`` delete) a server: ``stopped`` (204), ``stopping`` (202,
        the Hub finishes it), or ``gone`` (404: nothing to stop)."""
        path = f"/users/{quote_name(user)}/server"
        if server:
            path = f"/users/{quote_name(user)}/servers/{quote_name(server)}"
        kwargs: dict[str, Any] = {"json": {"remove": True}} if remove else {}
        response = await self._send("DELETE", path, **kwargs)
        if response.status_code == 404:
            return "gone"
        self._raise_for_status(response, f"stop {user}/{server}" if server else f"stop {user}")
        return "stopping" if response.status_code == 202 else "stopped"

    async def delete_user(self, name: str) -> Literal["deleted", "gone"]:
        """Delete a user (``gone`` if it no longer exists)."""
        response = await self._send("DELETE", f"/users/{quote_name(name)}")
        if response.status_code == 404:
            return "gone"
        self._raise_for_status(response, f"delete user {name}")
        return "deleted"

    async def create_token(
        self, user: str, scopes: list[str], expires_in: int, note: str
    ) -> dict[str, Any]:
        """Make a token owned by ``user`` with exactly ``scopes``, valid ``expires_in`` seconds
        (``POST /users/{user}/tokens``); the Hub's token model, with ``token`` and ``id``.

        When the Hub caps token lifetimes (``token_expires_in_max_seconds``) below
        ``expires_in``, the token is made with the Hub's maximum. Raises
        :class:`HubTokenRefused` when the Hub will not make a token for this user, other
        :class:`HubAPIError` when it cannot be asked at all.
        """
        path = f"/users/{quote_name(user)}/tokens"
        body: dict[str, Any] = {"scopes": scopes, "expires_in": expires_in, "note": note}
        response = await self._send("POST", path, json=body)
        if response.status_code == 400:
            capped = _EXPIRES_MAX_RE.search(_error_message(response, self._token))
            if capped and 0 < int(capped.group(1)) < expires_in:
                body["expires_in"] = int(capped.group(1))
                response = await self._send("POST", path, json=body)
        what = f"make a probe token for {user}"
        if response.status_code in (400, 403, 404):
            message = _error_message(response, self._token)
            refused = response.status_code == 404 or (
                response.status_code == 403 and "no permissions to generate tokens" in message
            )
            refused = refused or (response.status_code == 400 and "not held by" in message)
            if refused:
                raise HubTokenRefused(
                    f"the Hub refused to make a token for {user} ({response.status_code}: "
                    f"{message or 'no reason given'})"
                )
        self._raise_for_status(response, what)
        model = self._json(response, what)
        if not isinstance(model, dict) or not isinstance(model.get("token"), str):
            raise HubError(f"the Hub's answer has no token while trying to {what}")
        if not isinstance(model.get("id"), str):
            raise HubError(f"the Hub's answer has no token id while trying to {what}")
        return model

    async def delete_token(self, user: str, token_id: str) -> Literal["deleted", "gone"]:
        """Delete one of ``user``'s tokens by its id (``gone`` if it no longer exists)."""
        path = f"/users/{quote_name(user)}/tokens/{quote_name(token_id)}"
        response = await self._send("DELETE", path)
        if response.status_code == 404:
            return "gone"
        self._raise_for_status(response, f"delete a probe token of {user}")
        return "deleted"
