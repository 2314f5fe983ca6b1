"""One sweep's webhook posts (``spec.warn.webhook``): a ``warning`` per warning given and a
``culled`` per server stopped, so whoever receives them can tell the user what happens and why.

Posts never delay a cull: they are sent after the sweep has acted. They never fail the sweep:
what went wrong is counted and reported (:class:`NotifyReport`). All of a sweep's posts share
:data:`BUDGET_SECONDS`; posts still unsent then count as failed. Dry runs post nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..durations import format_duration
from ..rules.policy import Policy
from ..rules.signals import ServerKey
from ..rules.warn import WarnDecision, Warned
from .records import DELIVERED, EVENT_ONLY, FAILED, CullRecord, NotifyReport, PostFailure
from .webhook import Webhook

#: Posts in flight at a time (chat webhooks rate-limit: Slack about one message a second).
CONCURRENCY = 4
#: Seconds all of one sweep's posts may take together.
BUDGET_SECONDS = 60.0


@dataclass(frozen=True)
class WarnChannel:
    """Where a policy's posts go: its name and namespace for the payloads, and the webhook
    URL (``None``: none could be read, and ``problem`` says why, without the URL)."""

    policy: str
    namespace: str = ""
    url: str | None = None
    problem: str | None = None

    @property
    def label(self) -> str:
        """``namespace/policy``, or ``policy`` without a namespace (``hubcull sweep``)."""
        return f"{self.namespace}/{self.policy}" if self.namespace else self.policy


def isotime(when: datetime) -> str:
    """RFC 3339 in UTC with seconds: ``2026-11-22T10:10:00Z``."""
    return when.astimezone(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def warning_payload(channel: WarnChannel, warning: WarnDecision) -> dict[str, Any]:
    """The ``warning`` document for one warning."""
    return {
        "type": "warning",
        "policy": channel.policy,
        "namespace": channel.namespace,
        "user": warning.user,
        "server": warning.server,
        "reason": warning.reason,
        "idleSeconds": int(warning.idle_seconds),
        "stopAfter": isotime(warning.stop_after),
        "text": f"{warning.text} (policy {channel.label})",
    }


def culled_text(policy: Policy, cull: CullRecord) -> str:
    """``alice/gpu was stopped after 1h12m idle``: why a server was stopped, for its user."""
    idle = format_duration(cull.idle_seconds)
    if cull.reason == "maxAge":
        why = f"it ran for the longest time allowed ({format_duration(policy.max_age)})"
    elif cull.reason == "capacity":
        why = f"to free capacity (idle {idle})"
    elif cull.reason == "idleGPU":
        why = "its GPU stayed idle"
    else:
        why = f"after {idle} idle"
    sep = ": " if cull.reason in ("maxAge", "idleGPU") else " "
    return f"{cull.label} was stopped{sep}{why}"


def culled_payload(
    channel: WarnChannel, policy: Policy, cull: CullRecord, warned: Warned | None
) -> dict[str, Any]:
    """The ``culled`` document for one stopped server (``stopAfter``: of its warning, if it
    had one; capacity stops have none)."""
    return {
        "type": "culled",
        "policy": channel.policy,
        "namespace": channel.namespace,
        "user": cull.user,
        "server": cull.server,
        "reason": cull.reason,
        "idleSeconds": int(cull.idle_seconds),
        "stopAfter": isotime(warned.stop_after) if warned is not None else None,
        "time": isotime(cull.time),
        "text": f"{culled_text(policy, cull)} (policy {channel.label})",
    }


async def notify(
    policy: Policy,
    channel: WarnChannel | None,
    warnings: Iterable[WarnDecision],
    culls: Iterable[CullRecord],
    warned: Mapping[ServerKey, Warned],
) -> NotifyReport:
    """Post a sweep's warnings and culls to the policy's webhook, if it has one; count
    warnings without one as ``event_only``. Dry runs post and count nothing."""
    report = NotifyReport()
    warnings = list(warnings)
    if policy.dry_run:
        return report
    if policy.warn is None or policy.warn.webhook_url_secret is None:
        report.results[EVENT_ONLY] += len(warnings)
        return report
    posts: list[tuple[str, str, dict[str, Any]]] = []
    if channel is None:
        channel = WarnChannel("", problem="no webhook URL was given")
    posts += [("warning", w.label, warning_payload(channel, w)) for w in warnings]
    posts += [
        ("culled", c.label, culled_payload(channel, policy, c, warned.get((c.user, c.server))))
        for c in culls
        if c.error is None and not c.dry_run
    ]
    if not posts:
        return report
    if channel.url is None:
        problem = channel.problem or "no webhook URL"
        for kind, label, _ in posts:
            report.results[FAILED] += 1
            report.failures.append(PostFailure(kind, label, problem))
        return report
    await _deliver(channel.url, posts, report)
    return report


async def _deliver(
    url: str, posts: list[tuple[str, str, dict[str, Any]]], report: NotifyReport
) -> None:
    limit = asyncio.Semaphore(CONCURRENCY)
    async with Webhook(url) as hook:

        async def post(payload: dict[str, Any]) -> str | None:
            async with limit:
                return await hook.post(payload)

        tasks = [asyncio.ensure_future(post(payload)) for _, _, payload in posts]
        try:
            await asyncio.wait(tasks, timeout=BUDGET_SECONDS)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for (kind, label, _), task in zip(posts, tasks, strict=True):
            if task.cancelled() or not task.done():
                error: str | None = f"not sent within the sweep's {BUDGET_SECONDS:g}s for posts"
            elif task.exception() is not None:
                error = f"unexpected {type(task.exception()).__name__}"
            else:
                error = task.result()
            if error is None:
                report.results[DELIVERED] += 1
            else:
                report.results[FAILED] += 1
                report.failures.append(PostFailure(kind, label, error))
