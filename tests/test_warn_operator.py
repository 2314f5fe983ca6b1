"""spec.warn in the operator (the real kopf operator on the Kubernetes emulator, a real Hub and
a real webhook receiver): CullWarning events, the webhook URL from a Secret, the next sweep at
a warned server's stop time, and a restart that loses the warnings."""

from __future__ import annotations

import time

import pytest
from dateutil.parser import isoparse
from prometheus_client import generate_latest

from hubcull.k8s.controller import PolicyController
from hubcull.k8s.metrics import Metrics
from tests.support.controller_env import SecretsAndStatus
from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.kube import Kube
from tests.support.operator_env import (
    NS,
    cullpolicy,
    hubcull_operator,
    policy_status,
    secret,
    wait_status,
)
from tests.support.scenario import populate, spec_for
from tests.support.warn_env import WEBHOOK_REF, secret_url, warn
from tests.support.webhook import WebhookReceiver

pytestmark = [pytest.mark.k8s, pytest.mark.hub]


async def events(kube: Kube, reason: str, count: int, name: str = "default") -> list[dict]:
    """Wait until the policy has ``count`` events with ``reason``; return them, oldest first."""

    async def posted() -> list[dict]:
        found = [e for e in await kube.events_for(NS, name) if e["reason"] == reason]
        assert len(found) >= count, found
        return found

    found = await kube.wait_for(posted, timeout=30)
    return sorted(found, key=lambda e: e.get("firstTimestamp") or e["metadata"]["name"])


async def test_the_operator_warns_by_event_and_webhook_then_culls_at_the_stop_time(
    kube: Kube, hub: Hub, webhook: WebhookReceiver
) -> None:
    """every is an hour: the cull ten seconds after the warning shows that the operator
    schedules its next sweep at the warned server's stop time."""
    await populate(hub, {("ann", "gpu"): 120, ("bob", ""): None})
    async with hubcull_operator(kube) as (_, memo):
        await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
        await kube.create(secret(secret_url(webhook), **WEBHOOK_REF))
        await kube.create(cullpolicy(hub, every="1h", idleTimeout="1m", warn=warn("10s")))
        [warning_event] = await events(kube, "CullWarning", 1)
        assert warning_event["type"] == "Normal"
        assert warning_event["message"] == "ann/gpu will be stopped in about 10s if it stays idle"
        status = await wait_status(kube, lambda s: s.get("warnedLastSweep") == 1)
        assert status["culledTotal"] == 0 and status["serversIdle"] == 1
        warned_at = time.monotonic()
        status = await wait_status(kube, lambda s: s.get("culledTotal") == 1, timeout=30)
        assert time.monotonic() - warned_at < 20  # not an hour later
        assert status["warnedLastSweep"] == 0
        [culled_event] = await events(kube, "Culled", 1)
        assert culled_event["message"].startswith("stopped ann/gpu (idle ")
        metrics = generate_latest(memo["metrics"].registry).decode()
    warning, culled = (r.json for r in webhook.requests)
    assert (warning["type"], culled["type"]) == ("warning", "culled")
    assert warning["text"] == (
        "ann/gpu will be stopped in about 10s if it stays idle (policy jhub/default)"
    )
    assert isoparse(culled["time"]) >= isoparse(culled["stopAfter"])
    gap = isoparse(culled["stopAfter"]) - isoparse(warning["stopAfter"])
    assert 0 <= gap.total_seconds() <= 2
    assert await hub.running_servers() == {("bob", "")}
    labels = 'namespace="jhub",policy="default"'
    assert f'hubcull_warnings_total{{{labels},result="delivered"}} 2.0' in metrics


async def test_a_restart_between_warning_and_stop_warns_again_and_waits(
    kube: Kube, hub: Hub, webhook: WebhookReceiver
) -> None:
    """Warnings live in the operator's memory. An operator restarted after a warning does not
    know it: it warns again and waits ``before`` from the new warning."""
    await populate(hub, {("ann", ""): 60})
    await kube.create_namespace(NS)
    await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
    await kube.create(secret(secret_url(webhook), **WEBHOOK_REF))
    await kube.create(cullpolicy(hub, every="10s", idleTimeout="20s", warn=warn("10s")))
    async with hubcull_operator(kube):
        await events(kube, "CullWarning", 1)
    assert await hub.running_servers() == {("ann", "")}  # stopped before the stop time
    async with hubcull_operator(kube):
        second = (await events(kube, "CullWarning", 2))[-1]
        assert await hub.running_servers() == {("ann", "")}
        await wait_status(kube, lambda s: s.get("culledTotal") == 1, timeout=40)
    first_post, second_post, culled = (r.json for r in webhook.requests)
    assert [first_post["type"], second_post["type"], culled["type"]] == [
        "warning",
        "warning",
        "culled",
    ]
    # the stop waited for the second warning, not the first
    assert isoparse(second_post["stopAfter"]) > isoparse(first_post["stopAfter"])
    gap = isoparse(culled["stopAfter"]) - isoparse(second_post["stopAfter"])
    assert 0 <= gap.total_seconds() <= 2
    assert isoparse(culled["time"]) >= isoparse(culled["stopAfter"])
    assert second["message"] == "ann will be stopped in about 10s if it stays idle"
    status = await policy_status(kube)
    assert status["culledTotal"] == 1


async def test_the_controller_says_would_warn_in_a_dry_run_and_names_a_missing_secret(
    hub: Hub, webhook: WebhookReceiver
) -> None:
    """One policy's controller (no kopf; Secrets and status recorded): a dry run posts a
    "would warn" event and nothing to the webhook; without the webhook Secret a real run
    still warns by event, fails the post by name and succeeds."""
    await populate(hub, {("ann", ""): 60})
    kube = SecretsAndStatus(await hub.token(MINIMAL_SCOPES))
    kube.values[(WEBHOOK_REF["name"], WEBHOOK_REF["key"])] = secret_url(webhook)
    posted: list[tuple[str, str, str]] = []
    metrics = Metrics()

    def controller() -> PolicyController:
        return PolicyController(
            "jhub",
            "default",
            kube,  # type: ignore[arg-type]
            metrics,
            lambda *event: posted.append(event),
        )

    spec = spec_for(hub, idleTimeout="20s", every="1h", warn=warn())
    dry = controller()
    try:
        delay = await dry.sweep({"metadata": {"generation": 1}, "spec": {**spec, "dryRun": True}})
    finally:
        await dry.close()
    would = "would warn: ann will be stopped in about 5s if it stays idle"
    assert posted == [("Normal", "CullWarning", would)]
    assert 6 <= delay <= 10  # the next sweep at the would-be stop time, not in an hour
    assert webhook.requests == []
    del kube.values[(WEBHOOK_REF["name"], WEBHOOK_REF["key"])]
    posted.clear()
    real = controller()  # a new controller (Secrets are kept for a minute)
    try:
        await real.sweep({"metadata": {"generation": 2}, "spec": spec})
    finally:
        await real.close()
    assert posted == [("Normal", "CullWarning", "ann will be stopped in about 5s if it stays idle")]
    ready = kube.statuses[-1]["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("True", "SweepSucceeded")
    assert ready["message"].endswith(
        "warned 1; 1 of 1 webhook posts failed: webhook Secret cull-webhook key url is not in "
        "namespace jhub."
    )
    text = generate_latest(metrics.registry).decode()
    assert 'hubcull_warnings_total{namespace="jhub",policy="default",result="failed"} 1.0' in text
