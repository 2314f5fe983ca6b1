"""A small client of the Prometheus HTTP API: instant queries (``GET /api/v1/query``).

Every request has a timeout (also sent to Prometheus as the query's own ``timeout``, so that
it stops evaluating too), follows no redirect and reads at most :data:`MAX_ANSWER_BYTES`.
Whatever goes wrong raises :class:`UsageUnavailable`: a sweep that cannot read usage decides
nothing. The bearer token (or a ``user:password@`` of the URL, sent as basic auth) goes only
into the ``Authorization`` header and never appears in messages or logs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from ..errors import UsageUnavailable
from ..hub.client import make_ssl_context

#: Answers larger than this are refused (one namespace's pods fit many times over).
MAX_ANSWER_BYTES = 16 << 20

QueryResult = str  # "success", "error" or "unreachable": hubcull_prometheus_queries_total


@dataclass(frozen=True)
class PromSample:
    """One element of an instant vector: its labels and value."""

    labels: dict[str, str]
    value: float


def display_url(url: str) -> str:
    """``scheme://host[:port]/path`` without a ``user:password@`` part, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}".rstrip("/")


class PrometheusClient:
    """Instant queries against one Prometheus (or a compatible API such as Thanos Query)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        ca_pem: str | None = None,
        timeout: float = 60.0,
        on_query: Callable[[QueryResult], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.url = display_url(url)  # requests go here; the user:password become basic auth
        self.where = f"Prometheus at {self.url}"
        self.timeout = timeout
        self._token = token
        self._on_query = on_query
        headers = {"User-Agent": "hubcull", "Accept": "application/json"}
        auth = None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        elif parts.username is not None:
            auth = httpx.BasicAuth(unquote(parts.username), unquote(parts.password or ""))
        self._http = httpx.AsyncClient(
            auth=auth,
            headers=headers,
            timeout=httpx.Timeout(timeout),
            verify=make_ssl_context(ca_pem),
            follow_redirects=False,
            transport=transport,
            trust_env=False,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    def _count(self, result: QueryResult) -> None:
        if self._on_query is not None:
            self._on_query(result)

    async def query(self, promql: str, what: str) -> list[PromSample]:
        """Evaluate ``promql`` now; ``what`` names the query in errors (``the GPU query``).

        Raises :class:`UsageUnavailable` when Prometheus cannot be reached, does not answer
        within the timeout, or answers anything but a successful instant vector.
        """
        try:
            status, body = await asyncio.wait_for(self._get(promql, what), self.timeout)
        except (httpx.TimeoutException, asyncio.TimeoutError):
            self._count("unreachable")
            raise UsageUnavailable(
                f"{self.where} did not answer {what} within {self.timeout:g}s"
            ) from None
        except httpx.TransportError as exc:
            self._count("unreachable")
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise UsageUnavailable(f"{self.where} cannot be reached ({detail[:200]})") from None
        try:
            samples = self._samples(status, body, what)
        except UsageUnavailable:
            self._count("error")
            raise
        self._count("success")
        return samples

    async def _get(self, promql: str, what: str) -> tuple[int, bytes]:
        # Prometheus stops evaluating at its own ``timeout`` too
        params = {"query": promql, "timeout": f"{max(1, int(self.timeout))}s"}
        async with self._http.stream("GET", f"{self.url}/api/v1/query", params=params) as answer:
            return answer.status_code, await self._read(answer, what)

    async def _read(self, response: httpx.Response, what: str) -> bytes:
        if 300 <= response.status_code < 400:
            return b""  # reported by _samples; the body of a redirect is of no use
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_ANSWER_BYTES:
            self._count("error")
            raise UsageUnavailable(f"{self.where} answered {what} with over 16 MiB")
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                self._count("error")
                raise UsageUnavailable(f"{self.where} answered {what} with over 16 MiB")
            chunks.append(chunk)
        return b"".join(chunks)

    def _samples(self, status: int, body: bytes, what: str) -> list[PromSample]:
        if 300 <= status < 400:
            raise UsageUnavailable(
                f"{self.where} answered {what} with a redirect ({status}), which hubcull does "
                "not follow: set spec.usage.prometheus.url to the address it redirects to"
            )
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            raise UsageUnavailable(
                f"{self.where} answered {what} with {status} and no JSON: "
                "is spec.usage.prometheus.url the Prometheus HTTP API?"
            ) from None
        if not isinstance(parsed, dict):
            raise UsageUnavailable(f"{self.where} answered {what} with JSON that is no object")
        if status != 200 or parsed.get("status") != "success":
            raise UsageUnavailable(f"{self.where} refused {what}: {self._error(status, parsed)}")
        data = parsed.get("data")
        if not isinstance(data, dict) or data.get("resultType") != "vector":
            kind = data.get("resultType") if isinstance(data, dict) else None
            raise UsageUnavailable(
                f"{what} gave a {kind or 'malformed result'}, not an instant vector: "
                "a query template must give one value per pod"
            )
        try:
            return [_sample(item) for item in data.get("result") or []]
        except (TypeError, ValueError, KeyError, IndexError):
            malformed = f"{self.where} answered {what} with a malformed vector"
            raise UsageUnavailable(malformed) from None

    def _error(self, status: int, body: dict[str, Any]) -> str:
        """Prometheus's ``errorType: error``, else the start of the answer; the token masked
        (an upstream may echo the request's headers)."""
        kind, error = body.get("errorType"), body.get("error")
        text = f"{kind}: {error}" if kind and error else json.dumps(body)
        if self._token:
            text = text.replace(self._token, "***")
        return f"{status} {text[:300].rstrip()}"


def _sample(item: dict[str, Any]) -> PromSample:
    labels = item["metric"]
    if not isinstance(labels, dict):
        raise ValueError("metric is not an object")
    return PromSample({str(k): str(v) for k, v in labels.items()}, float(item["value"][1]))
