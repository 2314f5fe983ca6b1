"""One CullPolicy's sweep loop in the operator, free of kopf: read the spec and token, sweep,
write the status, post events, count metrics. The kopf daemon only feeds it the live body.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from ..engine.clock import Clock, utcnow
from ..engine.durations import format_duration
from ..engine.rules.keeps import keeps_from_status, keeps_to_status, merge_keeps
from ..engine.rules.policy import DEFAULT_EVERY_SECONDS, Policy, PolicyError, parse_spec
from ..engine.sweep.connection import HubConnection
from ..engine.sweep.logs import sweep_log
from ..engine.sweep.memory import SweepMemory
from ..engine.sweep.notify import WarnChannel
from ..engine.sweep.records import SweepResult
from ..engine.sweep.runner import (
    SweepOutcome,
    TokenError,
    clean_token,
    failed,
    suspended,
    sweep_policy,
)
from ..engine.sweep.sources import PrometheusAccess, SweepSources
from ..engine.sweep.status import describe_cull, throttle_message
from ..engine.sweep.webhook import WebhookURLError, check_url
from .demand import DemandHub
from .keepstatus import change_status
from .kubeapi import KubeAPI, KubeError
from .metrics import Metrics
from .pods import KubePodSource
from .views import PolicyViews

log = logging.getLogger(__name__)

#: Culled events per sweep before the rest are summarised in one event.
MAX_CULL_EVENTS = 10
#: A failure that repeats is posted again as an event at most this often (seconds).
REPEAT_FAILURE_EVENT_AFTER = 600.0

#: A Secret's value is read again after this long (seconds): a rotated token is used within
#: a minute, and at once if the Hub refuses the old one (see RETRY_WITH_NEW_TOKEN).
SECRET_REREAD_SECONDS = 60.0
#: When a sweep with a kept token fails for one of these reasons, the Secrets are read again
#: and, if they changed, the sweep is retried at once with what they hold now.
RETRY_WITH_NEW_TOKEN = frozenset({"Unauthorized", "Forbidden"})

#: What to do when a Secret of spec.usage.prometheus is missing.
PROM_ADVICE = "create the Secret in the policy's namespace or fix spec.usage.prometheus"

PostEvent = Callable[[str, str, str], None]  # (type, reason, message)
#: (object, type, reason, message): an Event on another object than the policy (a pod)
PostObjectEvent = Callable[[Mapping[str, Any], str, str, str], None]


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
    _hub: HubConnection | None = None
    memory: SweepMemory = field(default_factory=SweepMemory)
    #: (Secret name, key) -> (when it was read, its value)
    _secrets: dict[tuple[str, str], tuple[float, str]] = field(default_factory=dict)
    #: spec.keep: where the users' page is told what each sweep saw, and its URL (webhooks)
    views: PolicyViews | None = None
    keep_url: str | None = None
    _keeps_read: list[Any] = field(default_factory=list)

    #: status fields the service writes too: never written from the controller's copy
    KEEP_FIELDS = ("keeps", "keepsToday")
    #: spec.demand: the operator's pod watches, and how to post FreeingRoom on a pod
    demand_hub: DemandHub | None = None
    post_object_event: PostObjectEvent | None = None

    async def close(self) -> None:
        """Delete the probe tokens and close the Hub client kept between sweeps (when the
        policy's loop ends: the policy was deleted, or the operator stops)."""
        if self._hub is not None:
            await self._hub.aclose()

    async def sweep(self, body: Mapping[str, Any]) -> float:
        """Sweep once with the object's current spec; return seconds until the next sweep."""
        if self.status is None:
            self.status = dict(body.get("status") or {})
        generation = (body.get("metadata") or {}).get("generation")
        try:
            policy = parse_spec(body.get("spec"))
        except PolicyError as exc:
            if self.demand_hub is not None:
                self.demand_hub.unregister(self.namespace, self.name)
            await self._finish(failed(self.status, "InvalidSpec", str(exc), generation, self.clock))
            return DEFAULT_EVERY_SECONDS
        if policy.keep is not None or self.status.get("keeps"):
            await self._refresh_keeps(body)
        if self.demand_hub is not None:
            self.demand_hub.register(
                self.namespace, self.name, None if policy.suspend else policy.demand
            )
        if policy.suspend:
            outcome = suspended(self.status, generation, self.clock)
        else:
            if self.demand_hub is not None and policy.demand is not None:
                self.demand_hub.sweep_starts(self.namespace, self.name)
            try:
                outcome = await self._sweep(policy, generation)
            finally:
                if self.demand_hub is not None:
                    self.demand_hub.sweep_ends(self.namespace, self.name)
        await self._finish(outcome, policy)
        return outcome.next_sweep_in(policy.every)

    async def _refresh_keeps(self, body: Mapping[str, Any]) -> None:
        """Sweep with the keeps the policy's status holds now (users add them any time)."""
        assert self.status is not None
        live: Mapping[str, Any] | None = None
        try:
            live = await self.kube.read_policy(self.namespace, self.name)
        except KubeError as exc:
            log.warning("reading %s/%s for its keeps failed: %s", self.namespace, self.name, exc)
        status = (live if live is not None else body).get("status") or {}
        for key in self.KEEP_FIELDS:
            if key in status:
                self.status[key] = status[key]
        self._keeps_read = keeps_from_status(self.status.get("keeps"))

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
        outcome, from_cache = await self._sweep_with(policy, generation)
        retry_reasons = RETRY_WITH_NEW_TOKEN
        if policy.hub.ca_secret is not None:
            retry_reasons |= {"HubUnreachable"}  # a CA that no longer matches the Hub's cert
        if from_cache and outcome.reason in retry_reasons and await self._rotated(policy):
            outcome, _ = await self._sweep_with(policy, generation)
        return outcome

    async def _rotated(self, policy: Policy) -> bool:
        """Read the policy's Secrets again; True if a value changed since it was kept."""
        refs = [policy.hub.token_secret]
        if policy.hub.ca_secret is not None:
            refs.append(policy.hub.ca_secret)
        changed = False
        for ref in refs:
            kept = self._secrets.get((ref.name, ref.key))
            try:
                value, _ = await self._secret(ref.name, ref.key, fresh=True)
            except KubeError:
                return False
            changed = changed or kept is None or value != kept[1]
        return changed

    async def _sweep_with(
        self, policy: Policy, generation: int | None
    ) -> tuple[SweepOutcome, bool]:
        """Sweep with the token (and CA) from the Secrets; also say whether either was kept
        from an earlier read."""
        ref = policy.hub.token_secret
        ca = policy.hub.ca_secret
        try:
            raw, token_cached = await self._secret(ref.name, ref.key)
            if raw is None:
                where = f"Secret {ref.name} with key {ref.key}"
                return self._failed("TokenSecretMissing", where, generation), False
            token = clean_token(raw, f"Secret {ref.name} key {ref.key}")
            ca_pem, ca_cached = None, False
            if ca is not None:
                ca_pem, ca_cached = await self._secret(ca.name, ca.key)
                if ca_pem is None:
                    where = f"CA Secret {ca.name} with key {ca.key}"
                    return self._failed("TokenSecretMissing", where, generation), False
            prometheus = await self._prometheus_access(policy)
            if isinstance(prometheus, str):
                missing = f"{prometheus} is not in namespace {self.namespace}"
                failure = failed(
                    self.status, "TokenSecretMissing", missing, generation, self.clock, PROM_ADVICE
                )
                return failure, False
        except (TokenError, KubeError) as exc:
            failure = failed(self.status, "TokenSecretMissing", str(exc), generation, self.clock)
            return failure, False
        if self._hub is None:
            self._hub = HubConnection(self.metrics.hub_request_counter(self.namespace, self.name))
        channel = await self._warn_channel(policy)
        pod_namespace = policy.pod_namespace or self.namespace
        sources = SweepSources(
            token,
            ca_pem=ca_pem,
            clock=self.clock,
            connection=self._hub,
            pods=(
                KubePodSource(
                    self.kube,
                    pod_namespace,
                    self.demand_hub.cached_pods if self.demand_hub is not None else None,
                )
                if policy.needs_pods
                else None
            ),
            namespace=self.namespace,
            pod_namespace=pod_namespace,
            memory=self.memory,
            channel=channel,
            prometheus=prometheus,
            on_query=self.metrics.prometheus_query_counter(self.namespace, self.name),
            demand=(
                self.demand_hub.source(self.namespace, self.name)
                if policy.demand is not None and self.demand_hub is not None
                else None
            ),
        )
        outcome = await sweep_policy(policy, sources, previous=self.status, generation=generation)
        return outcome, token_cached or ca_cached

    async def _warn_channel(self, policy: Policy) -> WarnChannel | None:
        """Where ``spec.warn.webhook`` posts go: the URL from its Secret, or why there is none
        (a missing or bad Secret fails the posts, never the sweep). The URL is never logged."""
        ref = policy.warn.webhook_url_secret if policy.warn is not None else None
        if ref is None:
            return None
        channel = await self._webhook_channel(ref)
        if policy.keep is not None and self.keep_url:
            channel = replace(channel, keep_url=self.keep_url)
        return channel

    async def _webhook_channel(self, ref: Any) -> WarnChannel:
        where = f"webhook Secret {ref.name} key {ref.key}"
        try:
            raw, _ = await self._secret(ref.name, ref.key)
        except KubeError as exc:
            return WarnChannel(self.name, self.namespace, problem=str(exc))
        if raw is None:
            problem = f"{where} is not in namespace {self.namespace}"
            return WarnChannel(self.name, self.namespace, problem=problem)
        try:
            url = check_url(raw, where)
        except WebhookURLError as exc:
            return WarnChannel(self.name, self.namespace, problem=str(exc))
        return WarnChannel(self.name, self.namespace, url=url)

    async def _prometheus_access(self, policy: Policy) -> PrometheusAccess | str | None:
        """The Prometheus token and CA of ``spec.usage`` from their Secrets (``None`` without
        spec.usage; a string naming the Secret that is missing). Raises ``TokenError``."""
        if policy.usage is None:
            return None
        prometheus = policy.usage.prometheus
        token = ca_pem = None
        if prometheus.token_secret is not None:
            ref = prometheus.token_secret
            raw, _ = await self._secret(ref.name, ref.key)
            if raw is None:
                return f"Prometheus token Secret {ref.name} with key {ref.key}"
            token = clean_token(raw, f"Secret {ref.name} key {ref.key}")
        if prometheus.ca_secret is not None:
            ref = prometheus.ca_secret
            ca_pem, _ = await self._secret(ref.name, ref.key)
            if ca_pem is None:
                return f"Prometheus CA Secret {ref.name} with key {ref.key}"
        return PrometheusAccess(token, ca_pem)

    def _failed(self, reason: str, where: str, generation: int | None) -> SweepOutcome:
        detail = f"{where} is not in namespace {self.namespace}"
        return failed(self.status, reason, detail, generation, self.clock)

    async def _secret(self, name: str, key: str, fresh: bool = False) -> tuple[str | None, bool]:
        """A Secret's value, read again when older than :data:`SECRET_REREAD_SECONDS` (or
        when ``fresh``); and whether it is the value kept from an earlier read."""
        kept = self._secrets.get((name, key))
        now = time.monotonic()
        if not fresh and kept is not None and now - kept[0] < SECRET_REREAD_SECONDS:
            return kept[1], True
        value = await self.kube.read_secret_key(self.namespace, name, key)
        if value is None:
            self._secrets.pop((name, key), None)
        else:
            self._secrets[(name, key)] = (now, value)
        return value, False

    async def _finish(self, outcome: SweepOutcome, policy: Policy | None = None) -> None:
        self.status = outcome.status
        plain = {k: v for k, v in outcome.status.items() if k not in self.KEEP_FIELDS}
        await self.kube.patch_status(self.namespace, self.name, plain)
        result = outcome.result
        if result is not None and "keeps" in outcome.status:
            await self._write_keeps(outcome.status["keeps"])
        if result is not None and policy is not None and self.views is not None:
            self.views.record(self.namespace, self.name, policy, result)
        if result is None:
            self.metrics.record_failure(
                self.namespace, self.name, skipped=outcome.reason == "Suspended"
            )
            if outcome.reason != "Suspended":
                log.warning(
                    "%s/%s: sweep failed: %s: %s",
                    self.namespace,
                    self.name,
                    outcome.reason,
                    outcome.message,
                    extra={"fields": self._fields(event="sweepFailed", reason=outcome.reason)},
                )
                self._failure_event(outcome)
            return
        if policy is not None:
            self._log(policy, result)
        if result.problems:
            self._problem_event(outcome)
        else:
            self._last_failure = (None, 0.0)
        self.metrics.record_sweep(self.namespace, self.name, result)
        self._warning_events(outcome)
        self._cull_events(outcome)
        self._demand_events(outcome)
        if result.held_back and policy is not None:
            self.post_event("Warning", "Throttled", throttle_message(result, policy))

    async def _write_keeps(self, written: list[dict[str, Any]]) -> None:
        """Write the sweep's keeps (ended ones dropped), merged with keeps users made,
        changed or ended while it ran: a keep is never lost to a sweep."""
        swept = keeps_from_status(written)

        def change(body: Mapping[str, Any]) -> dict[str, Any] | None:
            live = keeps_from_status((body.get("status") or {}).get("keeps"))
            merged = keeps_to_status(merge_keeps(self._keeps_read, swept, live))
            if merged == (body.get("status") or {}).get("keeps"):
                return None
            return {"keeps": merged}

        try:
            fields = await change_status(self.kube, self.namespace, self.name, change)
        except KubeError as exc:
            log.warning("writing the keeps of %s/%s failed: %s", self.namespace, self.name, exc)
            return
        if fields is not None and self.status is not None:
            self.status["keeps"] = fields["keeps"]

    def _fields(self, **fields: Any) -> dict[str, Any]:
        return {"namespace": self.namespace, "policy": self.name, **fields}

    def _log(self, policy: Policy, result: SweepResult) -> None:
        """One line per action and one for the sweep (see :mod:`hubcull.engine.sweep.logs`)."""
        for line in sweep_log(policy, result):
            log.log(
                line.level,
                "%s/%s: %s",
                self.namespace,
                self.name,
                line.message,
                extra={"fields": self._fields(**line.fields)},
            )

    def _repeated(self, reason: str | None) -> bool:
        """True when a failure of ``reason`` was posted as an event recently; else note it."""
        last_reason, last = self._last_failure
        now = time.monotonic()
        if reason == last_reason and now - last < REPEAT_FAILURE_EVENT_AFTER:
            return True
        self._last_failure = (reason, now)
        return False

    def _failure_event(self, outcome: SweepOutcome) -> None:
        if not self._repeated(outcome.reason):
            self.post_event("Warning", "SweepFailed", f"{outcome.reason}: {outcome.message}")

    def _problem_event(self, outcome: SweepOutcome) -> None:
        """A Warning event for what held servers in a sweep that ran (``ProbesFailing``,
        ``UsageEmpty``), with the Ready message; repeated at most every
        :data:`REPEAT_FAILURE_EVENT_AFTER`."""
        ready = next(c for c in outcome.status["conditions"] if c["type"] == "Ready")
        if not self._repeated(ready["reason"]):
            self.post_event("Warning", ready["reason"], ready["message"])

    def _warning_events(self, outcome: SweepOutcome) -> None:
        """One ``CullWarning`` per warning (all of them: users rely on each)."""
        result = outcome.result
        assert result is not None
        for warning in result.warnings:
            prefix = "would warn: " if result.dry_run else ""
            self.post_event("Normal", "CullWarning", prefix + warning.text)
        if result.notify.failures:
            log.warning("webhook of %s/%s: %s", self.namespace, self.name, result.notify.summary())

    def _demand_events(self, outcome: SweepOutcome) -> None:
        """A Normal ``FreeingRoom`` Event on the waiting pod for each real demand stop, which
        KubeSpawner shows its user (the log lines come from the sweep's log)."""
        result = outcome.result
        assert result is not None
        if result.dry_run or self.post_object_event is None:
            return
        pods = {p.name: p for p in result.waiting}
        for record in result.freed:
            waiting = pods.get(record.for_pod or "")
            if waiting is None:
                continue
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": waiting.name,
                    "namespace": self.namespace,
                    **({"uid": waiting.uid} if waiting.uid else {}),
                },
            }
            message = (
                f"stopping an idle server ({record.label}, idle "
                f"{format_duration(record.idle_seconds)}) to free {', '.join(record.frees)} "
                "for this server"
            )
            self.post_object_event(pod, "Normal", "FreeingRoom", message)

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
