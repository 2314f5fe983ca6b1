"""Reading one notebook server's kernels and terminals through its Jupyter REST API.

Every request carries ``?no_track_activity=1`` (jupyter_server then leaves the server's own
``last_activity`` alone) and that server's probe token: owned by the server's user and scoped
to that one server (:mod:`~hubcull.engine.signals.probetokens`), never the policy's own token. The
server asks the Hub whether the token may use it. A probe never raises: whatever goes wrong
comes back as a failed :class:`ProbeOutcome`, and the Hub's ``last_activity`` decides for that
server.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import httpx

from ..hub.client import make_ssl_context
from ..hub.model import HubDataError, parse_time
from ..rules.signals import KernelActivity

#: Answers larger than this are refused (a server with thousands of kernels, or not Jupyter).
MAX_ANSWER_BYTES = 1 << 20

ProbeResult = Literal[
    "ok",
    "no_pod",
    "token_refused",
    "unreachable",
    "timeout",
    "http_error",
    "invalid",
    "too_large",
]


@dataclass(frozen=True)
class ProbeOutcome:
    """``result`` is ``ok`` (with ``activity``) or why the probe failed (with ``detail``)."""

    result: ProbeResult
    activity: KernelActivity | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True when the server answered what a Jupyter server answers."""
        return self.result == "ok"


class _Failed(Exception):
    def __init__(self, result: ProbeResult, detail: str) -> None:
        super().__init__(detail)
        self.result = result
        self.detail = detail


@dataclass(frozen=True)
class _Answer:
    body: Any
    date: datetime | None


def _date(response: httpx.Response) -> datetime | None:
    try:
        when = email.utils.parsedate_to_datetime(response.headers.get("date", ""))
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _times(items: list[Any], what: str) -> list[tuple[datetime | None, Mapping[str, Any]]]:
    if not all(isinstance(item, Mapping) for item in items):
        raise _Failed("invalid", f"its {what} are not objects: not a Jupyter server")
    try:
        return [(parse_time(item.get("last_activity")), item) for item in items]
    except HubDataError as exc:
        raise _Failed("invalid", f"a {what[:-1]} has a bad last_activity ({exc})") from None


def activity_from(kernels: list[Any], terminals: list[Any], seen_at: datetime) -> KernelActivity:
    """Summarise ``GET api/kernels`` and ``GET api/terminals`` answers seen at ``seen_at``.

    Raises ``_Failed`` when they do not look like jupyter_server's models.
    """
    kernel_times = _times(kernels, "kernels")
    terminal_times = _times(terminals, "terminals")
    stamps = [t for t, _ in [*kernel_times, *terminal_times] if t is not None]
    busy = [
        max(0.0, (seen_at - t).total_seconds())
        for t, kernel in kernel_times
        if kernel.get("execution_state") == "busy" and t is not None
    ]
    return KernelActivity(
        seen_at=seen_at,
        last_activity=max(stamps) if stamps else None,
        busy_silent_seconds=min(busy) if busy else None,
        kernels=len(kernels),
        terminals=len(terminals),
    )


class KernelProber:
    """Probes notebook servers, at most ``concurrency`` at a time, each within ``timeout``.

    The client has no credentials of its own: each probe is given its server's token."""

    def __init__(
        self,
        *,
        timeout: float,
        concurrency: int,
        ca_pem: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.timeout = timeout
        self._semaphore = asyncio.Semaphore(concurrency)
        self._http = httpx.AsyncClient(
            headers={"User-Agent": "hubcull"},
            timeout=httpx.Timeout(timeout),
            verify=make_ssl_context(ca_pem),
            limits=httpx.Limits(
                max_connections=2 * concurrency, max_keepalive_connections=2 * concurrency
            ),
            follow_redirects=False,
            transport=transport,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def probe(self, server_url: str, terminals: bool, token: str) -> ProbeOutcome:
        """Read the kernels (and with ``terminals`` the terminals) of the server whose base
        URL is ``server_url`` (``http://10.0.0.5:8888/user/alice/``), with ``token``: that
        server's own probe token."""
        base = server_url if server_url.endswith("/") else server_url + "/"
        auth = {"Authorization": f"token {token}"}
        try:
            async with self._semaphore:
                return await asyncio.wait_for(self._probe(base, terminals, auth), self.timeout)
        except _Failed as failed:
            return ProbeOutcome(failed.result, detail=failed.detail)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            return ProbeOutcome("timeout", detail=f"no answer within {self.timeout:g}s")

    async def _probe(
        self, base: str, with_terminals: bool, auth: Mapping[str, str]
    ) -> ProbeOutcome:
        # One after the other, not at once: a server that does not know the token yet asks
        # the Hub about it for every request that arrives before the Hub's answer (its cache
        # does not wait for a lookup in flight), so two requests at once cost the Hub up to
        # two token checks; in sequence the second finds the first's answer in the cache
        # (benchmark scenario 4, docs/performance.md).
        kernels = await self._get(base + "api/kernels", "kernels", auth)
        if with_terminals:
            terminals = await self._get(
                base + "api/terminals", "terminals", auth, missing_is_empty=True
            )
        else:
            terminals = _Answer([], kernels.date)
        if kernels.date is None:
            raise _Failed("invalid", "its answer has no Date header to compare kernel times with")
        activity = activity_from(kernels.body, terminals.body, kernels.date)
        return ProbeOutcome("ok", activity)

    async def _get(
        self, url: str, what: str, auth: Mapping[str, str], missing_is_empty: bool = False
    ) -> _Answer:
        params = {"no_track_activity": "1"}
        try:
            async with self._http.stream("GET", url, params=params, headers=auth) as response:
                if response.status_code == 404 and missing_is_empty:
                    return _Answer([], _date(response))  # terminals switched off
                if response.status_code != 200:
                    raise _Failed("http_error", _status_detail(response.status_code, what))
                body = await _read_limited(response)
                date = _date(response)
        except httpx.TimeoutException:
            raise
        except httpx.TransportError as exc:
            raise _Failed("unreachable", f"cannot be reached ({type(exc).__name__})") from None
        try:
            parsed = json.loads(body)
        except ValueError:
            raise _Failed("invalid", f"GET api/{what} did not answer JSON") from None
        if not isinstance(parsed, list):
            raise _Failed("invalid", f"GET api/{what} did not answer a list: not a Jupyter server")
        return _Answer(parsed, date)


async def _read_limited(response: httpx.Response) -> bytes:
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_ANSWER_BYTES:
        raise _Failed("too_large", f"its answer has {int(length)} bytes, over 1 MiB")
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise _Failed("too_large", "its answer is over 1 MiB")
        chunks.append(chunk)
    return b"".join(chunks)


def _status_detail(status: int, what: str) -> str:
    if status == 404:
        return f"GET api/{what} answered 404: not a Jupyter server at that address"
    if status == 403:
        return f"GET api/{what} answered 403: the server refused its probe token"
    if 300 <= status < 400:
        return f"GET api/{what} answered a redirect ({status}), not followed"
    return f"GET api/{what} answered {status}"
