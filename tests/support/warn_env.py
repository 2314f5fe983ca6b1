"""Helpers for the spec.warn tests: policies that warn, the Hub's clock, a policy swept again
and again with the memory the operator and ``hubcull sweep`` keep between sweeps."""

from __future__ import annotations

import asyncio
import email.utils
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hubcull.engine.rules.policy import Policy
from hubcull.engine.sweep.memory import SweepMemory
from hubcull.engine.sweep.notify import WarnChannel
from hubcull.engine.sweep.runner import SweepOutcome, sweep_policy
from hubcull.engine.sweep.sources import SweepSources
from tests.support.jhub import Hub
from tests.support.scenario import policy_for
from tests.support.webhook import WebhookReceiver

WEBHOOK_REF = {"name": "cull-webhook", "key": "url"}


def warn(before: str = "5s", webhook: bool = True) -> dict[str, Any]:
    """A ``spec.warn`` block (with the webhook Secret reference unless ``webhook`` is False)."""
    block: dict[str, Any] = {"before": before}
    if webhook:
        block["webhook"] = {"urlSecretRef": WEBHOOK_REF}
    return block


def secret_url(webhook: WebhookReceiver) -> str:
    """The receiver's URL with a path only the webhook's owner knows (like Slack's)."""
    return f"{webhook.url}/T0/B0/{secrets.token_hex(12)}"


async def hub_now(hub: Hub) -> datetime:
    """The Hub's clock: the ``Date`` header of an answer (whole seconds)."""
    response = await hub.request("GET", "/")
    return email.utils.parsedate_to_datetime(response.headers["date"])


async def wait_hub_time(hub: Hub, when: datetime, timeout: float = 30.0) -> None:
    """Poll the Hub's clock until it shows ``when`` or later."""

    async def reached() -> bool:
        return await hub_now(hub) >= when

    await hub.poll_until(reached, f"the Hub's clock to reach {when}", timeout=timeout)


@dataclass
class Sweeper:
    """One policy swept repeatedly, remembering between sweeps as the operator does."""

    policy: Policy
    token: str
    channel: WarnChannel | None = None
    memory: SweepMemory = field(default_factory=SweepMemory)
    status: dict[str, Any] | None = None

    @classmethod
    def of(cls, hub: Hub, token: str, url: str | None = None, **fields: Any) -> Sweeper:
        """A sweeper of a policy made of ``fields`` whose webhook (if any) posts to ``url``."""
        channel = WarnChannel("warn", "jhub", url=url) if url is not None else None
        return cls(policy_for(hub, **fields), token, channel)

    def forget(self) -> None:
        """Lose the memory, as a restarted operator does."""
        self.memory = SweepMemory()

    async def sweep(self) -> SweepOutcome:
        """Sweep once; the status accumulates like the operator's."""
        outcome = await sweep_policy(
            self.policy,
            SweepSources(self.token, memory=self.memory, channel=self.channel),
            previous=self.status,
        )
        assert outcome.result is not None, outcome.message
        self.status = outcome.status
        return outcome

    async def sweep_until(
        self, hub: Hub, check: Any, what: str, timeout: float = 30.0
    ) -> list[SweepOutcome]:
        """Sweep (about every half second) until ``check(outcome)`` holds; return every
        outcome."""
        outcomes: list[SweepOutcome] = []

        async def done() -> bool:
            outcomes.append(await self.sweep())
            if check(outcomes[-1]):
                return True
            await asyncio.sleep(0.5)
            return False

        await hub.poll_until(done, what, timeout=timeout)
        return outcomes
