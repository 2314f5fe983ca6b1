"""POSTing JSON to a webhook URL that is a credential (Slack, Teams and most chat webhooks
grant posting to whoever knows the URL).

Each post is bounded: :data:`ATTEMPTS` attempts of at most :data:`TIMEOUT_SECONDS` each, with
short pauses between them; redirects are not followed. Errors are short texts that never
contain the URL or any part of its path or query. Requests go straight to httpx's transport:
``httpx.AsyncClient`` logs every request's URL (at INFO), the transport logs none.
Proxies from the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``) are honoured.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Mapping
from typing import Any

import httpx

#: Seconds one attempt may take, connecting and answering included.
TIMEOUT_SECONDS = 5.0
#: Attempts per post (one, and two retries).
ATTEMPTS = 3
#: Pause before the second and third attempt.
RETRY_PAUSES = (0.5, 1.0)
#: Answers worth another attempt (besides connection failures and timeouts).
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: Bytes of an answer read before the connection is closed (the body is never used).
_DRAIN_BYTES = 64 * 1024
#: Longest error text kept from an exception (after masking).
_DETAIL_CHARS = 120


class WebhookURLError(ValueError):
    """A webhook URL that cannot be used; the message names where it came from, never it."""


def check_url(raw: str | bytes, where: str) -> str:
    """The URL in ``raw`` without surrounding whitespace; raise :class:`WebhookURLError`
    naming ``where`` (never the value) unless it is one absolute http or https URL."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    url = text.strip()
    if not url:
        raise WebhookURLError(f"{where} is empty")
    if any(ch.isspace() for ch in url):
        raise WebhookURLError(f"{where} has whitespace inside the URL")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise WebhookURLError(f"{where} does not hold a URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise WebhookURLError(f"{where} does not hold an http or https URL")
    return url


def mask(text: str, url: str) -> str:
    """``text`` with the URL, and the parts of it that may be secret, replaced by ``***``."""
    parsed = httpx.URL(url)
    secrets = [url, str(parsed), parsed.raw_path.decode(errors="replace"), parsed.path]
    if parsed.query:
        secrets.append(parsed.query.decode(errors="replace"))
    if parsed.userinfo:
        secrets.append(parsed.userinfo.decode(errors="replace"))
    for secret in sorted({s for s in secrets if len(s) > 1}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _env_proxy(url: httpx.URL) -> str | None:
    """The proxy the environment names for ``url``, unless ``NO_PROXY`` exempts its host."""
    proxy = urllib.request.getproxies().get(url.scheme)
    if not proxy or urllib.request.proxy_bypass(url.host):
        return None
    return proxy


class Webhook:
    """One webhook URL; :meth:`post` delivers a JSON document with bounded retries."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float | None = None,
        attempts: int | None = None,
        pauses: tuple[float, ...] | None = None,
    ) -> None:
        """``url`` must have passed :func:`check_url`; the others default to
        :data:`TIMEOUT_SECONDS`, :data:`ATTEMPTS` and :data:`RETRY_PAUSES`."""
        self._raw = url
        self._url = httpx.URL(url)
        self._timeout = TIMEOUT_SECONDS if timeout is None else timeout
        self._attempts = max(1, ATTEMPTS if attempts is None else attempts)
        self._pauses = RETRY_PAUSES if pauses is None else pauses
        self._transport = httpx.AsyncHTTPTransport(retries=0, proxy=_env_proxy(self._url))

    async def __aenter__(self) -> Webhook:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the transport's connections."""
        await self._transport.aclose()

    async def post(self, payload: Mapping[str, Any]) -> str | None:
        """POST ``payload`` as JSON; ``None`` when it was accepted (2xx), else why not (after
        every attempt worth making)."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        error = "not attempted"
        for attempt in range(self._attempts):
            if attempt:
                pause = self._pauses[min(attempt, len(self._pauses)) - 1] if self._pauses else 0
                await asyncio.sleep(pause)
            error_or_none, retry = await self._attempt(body)
            if error_or_none is None:
                return None
            error = error_or_none
            if not retry:
                return error
        tries = "attempt" if self._attempts == 1 else "attempts"
        return f"{error} ({self._attempts} {tries})"

    async def _attempt(self, body: bytes) -> tuple[str | None, bool]:
        """One POST: (``None`` or the error, whether another attempt may help)."""
        request = httpx.Request(
            "POST",
            self._url,
            content=body,
            headers={"Content-Type": "application/json", "User-Agent": "hubcull"},
            extensions={"timeout": httpx.Timeout(self._timeout).as_dict()},
        )
        try:
            status = await asyncio.wait_for(self._send(request), self._timeout)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            return f"no answer within {self._timeout:g}s", True
        except httpx.ConnectError as exc:
            return f"cannot connect ({self._detail(exc)})", True
        except (httpx.HTTPError, OSError) as exc:
            return f"{type(exc).__name__} ({self._detail(exc)})", True
        if 200 <= status < 300:
            return None, False
        if 300 <= status < 400:
            return f"HTTP {status}: redirects are not followed", False
        return f"HTTP {status}", status in RETRY_STATUSES

    async def _send(self, request: httpx.Request) -> int:
        response = await self._transport.handle_async_request(request)
        try:
            read = 0
            async for chunk in response.aiter_raw():  # drain a little, for keep-alive
                read += len(chunk)
                if read > _DRAIN_BYTES:
                    break
        finally:
            await response.aclose()
        return response.status_code

    def _detail(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split()) or type(exc).__name__
        return mask(text, self._raw)[:_DETAIL_CHARS]
