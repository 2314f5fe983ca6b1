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

from .hubclient import HubAPIError, HubClient
from .policy import Policy
from .status import failure_message, status_after_failure, status_after_sweep
from .sweep import Clock, SweepResult, run_sweep, utcnow

log = logging.getLogger(__name__)

SUSPENDED_MESSAGE = "Sweeps are suspended by spec.suspend; set it to false to resume culling."


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
) -> SweepOutcome:
    """The outcome of a sweep that could not run, for ``reason``."""
    message = failure_message(reason, detail)
    status = status_after_failure(previous, reason, message, generation, clock())
    return SweepOutcome(status, reason=reason, message=message)


async def sweep_policy(
    policy: Policy,
    token: str,
    *,
    previous: Mapping[str, Any] | None = None,
    generation: int | None = None,
    ca_pem: str | None = None,
    clock: Clock = utcnow,
    on_response: Callable[[str], None] | None = None,
) -> SweepOutcome:
    """Sweep once (unless suspended) and return the status to write."""
    if policy.suspend:
        return suspended(previous, generation, clock)
    try:
        client = HubClient(
            policy.hub.url,
            token,
            timeout=policy.hub.request_timeout,
            concurrency=policy.concurrency,
            page_size=policy.page_size,
            ca_pem=ca_pem,
            on_response=on_response,
        )
    except (ssl.SSLError, ValueError) as exc:
        return failed(
            previous,
            "InvalidSpec",
            f"the CA bundle is not a valid PEM bundle ({exc})",
            generation,
            clock,
        )
    try:
        async with client:
            result = await run_sweep(policy, client, clock)
    except HubAPIError as exc:
        log.debug("sweep failed: %s", exc)
        return failed(previous, exc.reason, str(exc), generation, clock)
    status = status_after_sweep(previous, result, policy, generation, clock())
    return SweepOutcome(status, result=result)
