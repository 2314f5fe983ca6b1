"""One sweep of one policy from start to status: what ``hubcull sweep`` and the operator share.

:func:`sweep_policy` turns every way a sweep can fail into a ``Ready`` condition instead of an
exception, so callers only print or patch the status it returns.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import SweepError
from .hubclient import HubAPIError, HubClient
from .kernelprobe import KernelProber
from .memory import SweepMemory
from .notify import WarnChannel
from .pods import DemandSource, PodSource
from .policy import Policy
from .probing import KernelInspection, ServerLocator
from .promclient import PrometheusClient, QueryResult
from .status import failure_message, status_after_failure, status_after_sweep
from .sweep import Clock, SweepResult, run_sweep, utcnow
from .usage import UsageInspection

log = logging.getLogger(__name__)

SUSPENDED_MESSAGE = "Sweeps are suspended by spec.suspend; set it to false to resume culling."
#: Seconds added when sweeping again for a warned server's stop: the Hub's ``Date`` header has
#: whole seconds, so the next sweep must not come before the stop time has surely passed.
DUE_MARGIN_SECONDS = 1.0


class TokenError(ValueError):
    """A token that cannot be sent: empty, or with whitespace inside."""


def clean_token(raw: str | bytes, where: str) -> str:
    """Strip surrounding whitespace (Secrets often end in a newline); reject empty tokens and
    tokens with whitespace inside. ``where`` names the source in the error, never the value."""
    token = raw.decode() if isinstance(raw, bytes) else raw
    token = token.strip()
    if not token:
        raise TokenError(f"{where} is empty")
    if any(ch.isspace() for ch in token):
        raise TokenError(f"{where} has whitespace inside the token")
    return token


@dataclass
class SweepOutcome:
    """A sweep's result (``None`` when it could not run), the status to write, and the
    failure reason if any."""

    status: dict[str, Any]
    result: SweepResult | None = None
    reason: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        """True when the sweep ran to the end."""
        return self.result is not None

    def next_sweep_in(self, every: float) -> float:
        """Seconds from the end of this sweep until the next one: ``every``, or less when a
        server warned by ``spec.warn`` may be stopped sooner (then just after that time)."""
        result = self.result
        if result is None or result.next_due is None:
            return every
        due_in = (result.next_due - result.now).total_seconds() + DUE_MARGIN_SECONDS
        return min(every, max(due_in, DUE_MARGIN_SECONDS))


def suspended(
    previous: Mapping[str, Any] | None, generation: int | None, clock: Clock = utcnow
) -> SweepOutcome:
    """The outcome of a sweep skipped because ``spec.suspend`` is true."""
    status = status_after_failure(previous, "Suspended", SUSPENDED_MESSAGE, generation, clock())
    return SweepOutcome(status, reason="Suspended", message=SUSPENDED_MESSAGE)


def failed(
    previous: Mapping[str, Any] | None,
    reason: str,
    detail: str,
    generation: int | None,
    clock: Clock = utcnow,
    advice: str | None = None,
) -> SweepOutcome:
    """The outcome of a sweep that could not run, for ``reason``."""
    message = failure_message(reason, detail, advice)
    status = status_after_failure(previous, reason, message, generation, clock())
    return SweepOutcome(status, reason=reason, message=message)


NEEDS_OPERATOR = (
    "spec.kernels.via: pods and spec.usage need the servers' pods, which only the operator "
    "(hubcull run) can list; with hubcull sweep use spec.kernels.via: proxy and no spec.usage"
)


NEEDS_OPERATOR_DEMAND = (
    "spec.demand watches the servers' pods for ones that cannot start, which only the "
    "operator (hubcull run) can do; remove spec.demand to try the policy with hubcull sweep"
)


def _kernel_inspection(
    policy: Policy,
    token: str,
    ca_pem: str | None,
    locator: ServerLocator,
    memory: SweepMemory,
) -> KernelInspection | None:
    """How this sweep reaches the servers' Jupyter APIs (``None`` without ``spec.kernels``).
    The probes carry the Hub token, which the servers check with the Hub."""
    if policy.kernels is None:
        return None
    prober = KernelProber(
        token, timeout=policy.kernels.timeout, concurrency=policy.concurrency, ca_pem=ca_pem
    )
    return KernelInspection(prober, locator, memory.kernels)


@dataclass(frozen=True)
class PrometheusAccess:
    """What the operator read from the Secrets ``spec.usage.prometheus`` names."""

    token: str | None = None
    ca_pem: str | None = None


def _usage_inspection(
    policy: Policy,
    namespace: str | None,
    access: PrometheusAccess | None,
    locator: ServerLocator,
    on_query: Callable[[QueryResult], None] | None,
) -> UsageInspection | None:
    """How this sweep reads its pods' usage (``None`` without ``spec.usage``). Requests time
    out after ``hub.requestTimeout``. Raises :class:`ssl.SSLError` or :class:`ValueError`
    for a CA bundle that is not PEM."""
    if policy.usage is None or namespace is None:
        return None
    access = access or PrometheusAccess()
    client = PrometheusClient(
        policy.usage.prometheus.url,
        token=access.token,
        ca_pem=access.ca_pem,
        timeout=policy.hub.request_timeout,
        on_query=on_query,
    )
    return UsageInspection(client, locator, namespace)


#: How long a kept client reuses the Hub's version and the token's scopes.
REMEMBER_SECONDS = 300.0


class HubConnection:
    """One policy's Hub client, kept from sweep to sweep while the Hub settings stay the same.

    A new client is made when the URL, token, CA, timeout or concurrency changes (a new page
    size is set on the kept one).
    Between sweeps the kept client reuses the Hub's version and the token's scopes for
    :data:`REMEMBER_SECONDS`, so a steady sweep of a small Hub is a single listing; a sweep
    that fails forgets them, so that a fixed token or role is seen at the next sweep.
    """

    def __init__(self, on_response: Callable[[str], None] | None = None) -> None:
        self.on_response = on_response
        self._client: HubClient | None = None
        self._settings: tuple[Any, ...] | None = None

    async def client(self, policy: Policy, token: str, ca_pem: str | None) -> HubClient:
        """The kept client for these settings (a new one if they changed).

        Raises :class:`ssl.SSLError` or :class:`ValueError` for a CA bundle that is not PEM.
        """
        hub = policy.hub
        settings = (hub.url, token, ca_pem, hub.request_timeout, policy.concurrency)
        if self._client is None or settings != self._settings:
            await self.aclose()
            self._client = _new_client(policy, token, ca_pem, self.on_response, REMEMBER_SECONDS)
            self._settings = settings
        self._client.page_size = policy.page_size
        return self._client

    async def aclose(self) -> None:
        """Close the kept client, if any."""
        client, self._client, self._settings = self._client, None, None
        if client is not None:
            await client.aclose()


def _new_client(
    policy: Policy,
    token: str,
    ca_pem: str | None,
    on_response: Callable[[str], None] | None,
    remember_seconds: float = 0.0,
) -> HubClient:
    return HubClient(
        policy.hub.url,
        token,
        timeout=policy.hub.request_timeout,
        concurrency=policy.concurrency,
        page_size=policy.page_size,
        ca_pem=ca_pem,
        on_response=on_response,
        remember_seconds=remember_seconds,
    )


async def sweep_policy(
    policy: Policy,
    token: str,
    *,
    previous: Mapping[str, Any] | None = None,
    generation: int | None = None,
    ca_pem: str | None = None,
    clock: Clock = utcnow,
    on_response: Callable[[str], None] | None = None,
    connection: HubConnection | None = None,
    pods: PodSource | None = None,
    memory: SweepMemory | None = None,
    channel: WarnChannel | None = None,
    namespace: str | None = None,
    prometheus: PrometheusAccess | None = None,
    on_query: Callable[[QueryResult], None] | None = None,
    demand: DemandSource | None = None,
) -> SweepOutcome:
    """Sweep once (unless suspended) and return the status to write.

    With a ``connection`` its kept client is used (and its ``on_response``); otherwise a
    client is made for this sweep alone. ``pods`` finds the servers' pods (the operator's;
    ``hubcull sweep`` has none), ``memory`` is what the policy keeps between sweeps (without
    it, warned servers are warned again each sweep and never stopped for idleness or maxAge)
    and ``channel`` where ``spec.warn.webhook`` posts go. With ``spec.usage``, ``namespace``
    is the policy's (its pods' series are read), ``prometheus`` the token and CA for
    Prometheus, and ``on_query`` counts each query. With ``spec.demand``, ``demand`` says
    which pods wait for room (the operator's pod watch).
    """
    if policy.suspend:
        return suspended(previous, generation, clock)
    if policy.demand is not None and demand is None:
        return failed(previous, "InvalidSpec", NEEDS_OPERATOR_DEMAND, generation, clock)
    if policy.needs_pods and pods is None:
        return failed(previous, "InvalidSpec", NEEDS_OPERATOR, generation, clock)
    if policy.usage is not None and namespace is None:
        return failed(previous, "InvalidSpec", NEEDS_OPERATOR, generation, clock)
    try:
        if connection is not None:
            client = await connection.client(policy, token, ca_pem)
        else:
            client = _new_client(policy, token, ca_pem, on_response)
    except (ssl.SSLError, ValueError) as exc:
        return failed(
            previous,
            "InvalidSpec",
            f"the CA bundle is not a valid PEM bundle ({exc})",
            generation,
            clock,
        )
    memory = memory or SweepMemory()
    locator = ServerLocator(policy, pods)  # one pod listing per sweep, for kernels and usage
    try:
        usage = _usage_inspection(policy, namespace, prometheus, locator, on_query)
    except (ssl.SSLError, ValueError) as exc:
        if connection is None:
            await client.aclose()
        detail = f"the Prometheus CA bundle is not a valid PEM bundle ({exc})"
        advice = "put a PEM bundle in the Secret named by spec.usage.prometheus.caSecretRef"
        return failed(previous, "InvalidSpec", detail, generation, clock, advice)
    kernels = _kernel_inspection(policy, token, ca_pem, locator, memory)
    try:
        result = await run_sweep(
            policy, client, clock, kernels, memory.warnings, channel, usage, demand
        )
    except SweepError as exc:
        log.debug("sweep failed: %s", exc)
        if isinstance(exc, HubAPIError):
            client.forget()
        return failed(previous, exc.reason, str(exc), generation, clock, exc.advice)
    finally:
        if kernels is not None:
            await kernels.prober.aclose()
        if usage is not None:
            await usage.client.aclose()
        if connection is None:
            await client.aclose()
    status = status_after_sweep(previous, result, policy, generation, clock())
    return SweepOutcome(status, result=result)
