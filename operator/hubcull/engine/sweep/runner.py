"""One sweep of one policy from start to status: what ``hubcull sweep`` and the operator share.

:func:`sweep_policy` turns every way a sweep can fail into a ``Ready`` condition instead of an
exception, so callers only print or patch the status it returns.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..clock import Clock, utcnow
from ..errors import SweepError
from ..hub.client import HubAPIError, HubClient
from ..rules.policy import Policy
from ..signals.kernels import KernelProber
from ..signals.pods import ServerLocator
from ..signals.probetokens import ProbeTokens
from ..signals.prometheus import PrometheusClient
from ..signals.usage import UsageInspection
from .connection import new_client
from .gather import KernelInspection
from .records import SweepResult
from .run import run_sweep
from .sources import PrometheusAccess, SweepSources
from .status import failure_message, status_after_failure, status_after_sweep

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


def _kernel_inspection(
    policy: Policy,
    sources: SweepSources,
    locator: ServerLocator,
    client: HubClient,
    tokens: ProbeTokens,
) -> KernelInspection | None:
    """How this sweep reaches the servers' Jupyter APIs (``None`` without ``spec.kernels``).
    Each probe carries its server's own probe token (``tokens``, made through ``client``),
    never the policy's token."""
    if policy.kernels is None:
        return None
    prober = KernelProber(
        timeout=policy.kernels.timeout,
        concurrency=policy.concurrency,
        ca_pem=sources.ca_pem,
    )
    return KernelInspection(prober, locator, sources.memory.kernels, tokens, client)


def _usage_inspection(
    policy: Policy, sources: SweepSources, locator: ServerLocator
) -> UsageInspection | None:
    """How this sweep reads its pods' usage (``None`` without ``spec.usage``). Requests time
    out after ``hub.requestTimeout``. Raises :class:`ssl.SSLError` or :class:`ValueError`
    for a CA bundle that is not PEM."""
    namespace = sources.pods_namespace
    if policy.usage is None or namespace is None:
        return None
    access = sources.prometheus or PrometheusAccess()
    client = PrometheusClient(
        policy.usage.prometheus.url,
        token=access.token,
        ca_pem=access.ca_pem,
        timeout=policy.hub.request_timeout,
        on_query=sources.on_query,
    )
    return UsageInspection(client, locator, namespace)


def _where(policy: Policy, sources: SweepSources) -> str:
    """Where the probes looked for the servers, for messages."""
    if policy.kernels is not None and policy.kernels.via == "proxy":
        return f"through the proxy at {policy.kernels.proxy_url}"
    return f"pods searched in namespace {sources.pods_namespace}"


async def sweep_policy(
    policy: Policy,
    sources: SweepSources,
    *,
    previous: Mapping[str, Any] | None = None,
    generation: int | None = None,
) -> SweepOutcome:
    """Sweep once (unless suspended) with what ``sources`` carries and return the status to
    write (``previous``: the status before; ``generation``: the spec's)."""
    clock = sources.clock
    if policy.suspend:
        return suspended(previous, generation, clock)
    if policy.needs_pods and sources.pods is None:
        return failed(previous, "InvalidSpec", NEEDS_OPERATOR, generation, clock)
    if policy.usage is not None and sources.pods_namespace is None:
        return failed(previous, "InvalidSpec", NEEDS_OPERATOR, generation, clock)
    connection = sources.connection
    try:
        if connection is not None:
            client = await connection.client(policy, sources.token, sources.ca_pem)
        else:
            client = new_client(policy, sources.token, sources.ca_pem, sources.on_response)
    except (ssl.SSLError, ValueError) as exc:
        return failed(
            previous,
            "InvalidSpec",
            f"the CA bundle is not a valid PEM bundle ({exc})",
            generation,
            clock,
        )
    tokens = sources.probe_tokens_for_sweep()
    if policy.kernels is None and tokens.held:
        await tokens.release(client)  # spec.kernels was removed: its tokens go
    locator = ServerLocator(policy, sources.pods)  # one pod listing per sweep, kernels and usage
    try:
        usage = _usage_inspection(policy, sources, locator)
    except (ssl.SSLError, ValueError) as exc:
        if connection is None:
            await client.aclose()
        detail = f"the Prometheus CA bundle is not a valid PEM bundle ({exc})"
        advice = "put a PEM bundle in the Secret named by spec.usage.prometheus.caSecretRef"
        return failed(previous, "InvalidSpec", detail, generation, clock, advice)
    kernels = _kernel_inspection(policy, sources, locator, client, tokens)
    memory = sources.memory
    try:
        result = await run_sweep(
            policy,
            client,
            clock,
            kernels,
            memory.warnings,
            sources.channel,
            usage,
            _where(policy, sources),
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
        if sources.probe_tokens is None and connection is None:
            await tokens.release(client)  # a sweep alone keeps no token
        if connection is None:
            await client.aclose()
    status = status_after_sweep(previous, result, policy, generation, clock())
    return SweepOutcome(status, result=result)
