"""One CullPolicy's sweep loop in the operator, free of kopf: read the spec and token, sweep,
write the status, post events, count metrics. The kopf daemon only feeds it the live body.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from .durations import format_duration
from .engine import SweepOutcome, TokenError, clean_token, failed, suspended, sweep_policy
from .kubeapi import KubeAPI, KubeError
from .metrics import Metrics
from .policy import DEFAULT_EVERY_SECONDS, Policy, PolicyError, parse_spec
from .status import describe_cull, throttle_message
from .sweep import Clock, utcnow

log = logging.getLogger(__name__)

#: Culled events per sweep before the rest are summarised in one event.
MAX_CULL_EVENTS = 10
#: A failure that repeats is posted again as an event at most this often (seconds).
REPEAT_FAILURE_EVENT_AFTER = 600.0

PostEvent = Callable[[str, str, str], None]  # (type, reason, message)


@dataclass
class PolicyController:
    """Sweeps one CullPolicy; keeps the status it last wrote so totals accumulate."""

    namespace: str
    name: str
    kube: KubeAPI
    metrics: Metrics
    post_event: PostEvent
    clock: Clock = utcnow
    status: dict[str, Any] | None = None
    _last_failure: tuple[str | None, float] = field(default=(None, 0.0))

    async def sweep(self, body: Mapping[str, Any]) -> float:
        """Sweep once with the object's current spec; return seconds until the next sweep."""
        if self.status is None:
            self.status = dict(body.get("status") or {})
        generation = (body.get("metadata") or {}).get("generation")
        try:
            policy = parse_spec(body.get("spec"))
        except PolicyError as exc:
            await self._finish(failed(self.status, "InvalidSpec", str(exc), generation, self.clock))
            return DEFAULT_EVERY_SECONDS
        if policy.suspend:
            outcome = suspended(self.status, generation, self.clock)
        else:
            outcome = await self._sweep(policy, generation)
        await self._finish(outcome, policy)
        return policy.every

    def resume_delay(self, body: Mapping[str, Any]) -> float:
        """Seconds until the next sweep is due by ``status.lastSweepTime``, for a loop that
        (re)starts after a failover or restart; 0 if the spec changed since that sweep (an
        edit takes effect at once) or there was none. ``lastSweepTime`` has whole seconds:
        one second is added so that the interval is never cut short."""
        status = body.get("status") or {}
        generation = (body.get("metadata") or {}).get("generation")
        try:
            every = parse_spec(body.get("spec")).every
            last = datetime.strptime(status["lastSweepTime"], "%Y-%m-%dT%H:%M:%SZ")
        except (PolicyError, KeyError, TypeError, ValueError):
            return 0.0
        if status.get("observedGeneration") != generation:
            return 0.0
        due = last.replace(tzinfo=timezone.utc) + timedelta(seconds=every + 1)
        return min(max((due - self.clock()).total_seconds(), 0.0), every + 1)

    async def _sweep(self, policy: Policy, generation: int | None) -> SweepOutcome:
        ref = policy.hub.token_secret
        try:
            raw = await self.kube.read_secret_key(self.namespace, ref.name, ref.key)
            if raw is None:
                return failed(
                    self.status,
                    "TokenSecretMissing",
                    f"Secret {ref.name} with key {ref.key} is not in namespace {self.namespace}",
                    generation,
                    self.clock,
                )
            token = clean_token(raw, f"Secret {ref.name} key {ref.key}")
            ca_pem = None
            if policy.hub.ca_secret is not None:
                ca = policy.hub.ca_secret
                ca_pem = await self.kube.read_secret_key(self.namespace, ca.name, ca.key)
                if ca_pem is None:
                    return failed(
                        self.status,
                        "TokenSecretMissing",
                        f"CA Secret {ca.name} with key {ca.key} is not in namespace "
                        f"{self.namespace}",
                        generation,
                        self.clock,
                    )
        except TokenError as exc:
            return failed(self.status, "TokenSecretMissing", str(exc), generation, self.clock)
        except KubeError as exc:
            return failed(self.status, "TokenSecretMissing", str(exc), generation, self.clock)
        return await sweep_policy(
            policy,
            token,
            previous=self.status,
            generation=generation,
            ca_pem=ca_pem,
            clock=self.clock,
            on_response=self.metrics.hub_request_counter(self.namespace, self.name),
        )

    async def _finish(self, outcome: SweepOutcome, policy: Policy | None = None) -> None:
        self.status = outcome.status
        await self.kube.patch_status(self.namespace, self.name, outcome.status)
        result = outcome.result
        if result is None:
            self.metrics.record_failure(
                self.namespace, self.name, skipped=outcome.reason == "Suspended"
            )
            if outcome.reason != "Suspended":
                log.warning(
                    "sweep of %s/%s failed: %s: %s",
                    self.namespace,
                    self.name,
                    outcome.reason,
                    outcome.message,
                )
                self._failure_event(outcome)
            return
        self._last_failure = (None, 0.0)
        self.metrics.record_sweep(self.namespace, self.name, result)
        self._cull_events(outcome)
        if result.held_back and policy is not None:
            self.post_event("Warning", "Throttled", throttle_message(result, policy))

    def _failure_event(self, outcome: SweepOutcome) -> None:
        reason, last = self._last_failure
        now = time.monotonic()
        if reason == outcome.reason and now - last < REPEAT_FAILURE_EVENT_AFTER:
            return
        self._last_failure = (outcome.reason, now)
        self.post_event("Warning", "SweepFailed", f"{outcome.reason}: {outcome.message}")

    def _cull_events(self, outcome: SweepOutcome) -> None:
        result = outcome.result
        assert result is not None
        prefix = "would stop" if result.dry_run else "stopped"
        culled = result.culled
        for record in culled[:MAX_CULL_EVENTS]:
            self.post_event("Normal", "Culled", f"{prefix} {describe_cull(record)}")
        if len(culled) > MAX_CULL_EVENTS:
            self.post_event(
                "Normal",
                "Culled",
                f"{prefix} {len(culled) - MAX_CULL_EVENTS} more servers in this sweep "
                "(see status.recentCulls and the hubcull_servers_culled_total metric)",
            )
        for removal in result.removals:
            if removal.error is None:
                verb = "would remove" if result.dry_run else "removed"
                self.post_event("Normal", "Culled", f"{verb} stopped server {removal.label}")
        for user in result.users_culled:
            verb = "would delete" if result.dry_run else "deleted"
            self.post_event(
                "Normal",
                "UserCulled",
                f"{verb} user {user.user} (idle {format_duration(user.idle_seconds)})",
            )
