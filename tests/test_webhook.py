"""Webhook delivery (spec.warn.webhook) against a real HTTP receiver on 127.0.0.1: bounded
retries, a timeout, no redirects, and error texts that never contain the URL."""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from dataclasses import replace

import pytest

from hubcull.engine.rules.decisions import decide
from hubcull.engine.rules.policy import SecretKeyRef, WarnSpec
from hubcull.engine.sweep import notify as notify_module
from hubcull.engine.sweep import webhook as webhook_module
from hubcull.engine.sweep.notify import WarnChannel, notify
from hubcull.engine.sweep.webhook import Webhook, WebhookURLError, check_url, mask
from tests.support.decisions import WARN, idle_server, snap
from tests.support.webhook import WebhookReceiver

PAYLOAD = {"type": "warning", "user": "ann", "text": "ann will be stopped in about 10m"}


def secret_url(webhook: WebhookReceiver) -> str:
    """The receiver's URL with a path and query only the webhook's owner knows."""
    return f"{webhook.url}/T0/B0/{secrets.token_hex(12)}?sig={secrets.token_hex(8)}"


def assert_masked(text: str, url: str) -> None:
    assert url not in text
    assert url.split("/T0/", 1)[1].split("?")[0] not in text
    assert "sig=" not in text


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shorter pauses between attempts (the attempts and the timeout stay as shipped)."""
    monkeypatch.setattr(webhook_module, "RETRY_PAUSES", (0.05, 0.1))


async def test_a_post_is_one_json_request(webhook: WebhookReceiver) -> None:
    url = secret_url(webhook)
    async with Webhook(check_url(url + "\n", "test")) as hook:
        assert await hook.post(PAYLOAD) is None
    [request] = webhook.requests
    assert request.method == "POST" and request.json == PAYLOAD
    assert request.target == url.removeprefix(webhook.base_url)
    assert request.headers["content-type"] == "application/json"


async def test_500_is_tried_three_times_then_reported(
    webhook: WebhookReceiver, quick: None
) -> None:
    webhook.respond(500)
    url = secret_url(webhook)
    async with Webhook(url) as hook:
        error = await hook.post(PAYLOAD)
    assert error == "HTTP 500 (3 attempts)"
    assert [r.status for r in webhook.requests] == [500, 500, 500]


async def test_a_hanging_receiver_costs_at_most_the_timeout_per_attempt(
    webhook: WebhookReceiver, quick: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhook_module, "TIMEOUT_SECONDS", 0.5)
    webhook.hang()
    url = secret_url(webhook)
    started = time.monotonic()
    async with Webhook(url) as hook:
        error = await hook.post(PAYLOAD)
    elapsed = time.monotonic() - started
    assert error == "no answer within 0.5s (3 attempts)"
    assert len(webhook.requests) == 3
    assert 1.5 <= elapsed < 3.5
    webhook.release()


async def test_a_refused_connection_is_reported_without_the_url(
    webhook: WebhookReceiver, quick: None
) -> None:
    url = secret_url(webhook)
    await webhook.refuse()
    async with Webhook(url) as hook:
        error = await hook.post(PAYLOAD)
    assert error is not None and error.startswith("cannot connect (") and "3 attempts" in error
    assert_masked(error, url)


async def test_redirects_are_not_followed_nor_retried(webhook: WebhookReceiver) -> None:
    webhook.redirect()
    async with Webhook(secret_url(webhook)) as hook:
        error = await hook.post(PAYLOAD)
    assert error == "HTTP 302: redirects are not followed"
    assert len(webhook.requests) == 1 and webhook.received(webhook.redirect_path) == []


async def test_a_client_error_is_not_retried(webhook: WebhookReceiver) -> None:
    webhook.respond(404)
    async with Webhook(secret_url(webhook)) as hook:
        assert await hook.post(PAYLOAD) == "HTTP 404"
    assert len(webhook.requests) == 1


async def test_no_log_record_names_the_url(
    webhook: WebhookReceiver, quick: None, caplog: pytest.LogCaptureFixture
) -> None:
    url = secret_url(webhook)
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="httpcore"):
        async with Webhook(url) as hook:
            assert await hook.post(PAYLOAD) is None
            webhook.respond(500)
            assert await hook.post(PAYLOAD) is not None
    text = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert "httpcore" in text  # the transport logs at DEBUG; the URL is in none of it
    assert_masked(text, url)


def test_urls_are_checked_without_printing_them() -> None:
    where = "Secret hook key url"
    for bad, why in [
        ("", "is empty"),
        ("  \n", "is empty"),
        ("hooks.slack.com/services/SECRET", "does not hold an http or https URL"),
        ("ftp://host/SECRET", "does not hold an http or https URL"),
        ("https://hooks.slack.com/SECRET more", "has whitespace inside the URL"),
        ("http://[::1/SECRET", "does not hold a URL"),
    ]:
        with pytest.raises(WebhookURLError) as info:
            check_url(bad, where)
        assert str(info.value) == f"{where} {why}" and "SECRET" not in str(info.value)
    assert check_url(b" https://hooks.slack.com/services/T/B/X\n", where).endswith("/X")


def test_mask_hides_the_url_and_its_secret_parts() -> None:
    url = "https://user:pw@hooks.example.org/services/T0/B0/abcdef?token=xyz"
    text = f"failed POST {url}; path /services/T0/B0/abcdef; query token=xyz; user:pw"
    masked = mask(text, url)
    for part in ("abcdef", "token=xyz", "user:pw"):
        assert part not in masked


async def test_a_sweeps_posts_share_a_time_budget(
    webhook: WebhookReceiver, quick: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many warnings to a hanging receiver: the sweep's posts end within the budget, each
    counted as failed, and never more than the concurrency limit in flight."""
    monkeypatch.setattr(notify_module, "BUDGET_SECONDS", 1.0)
    webhook.hang()
    policy = replace(WARN, warn=WarnSpec(600, SecretKeyRef("hook", "url")))
    plan = decide(policy, snap(*(idle_server(f"u{i}", 55 * 60) for i in range(10))))
    channel = WarnChannel("p", "ns", url=secret_url(webhook))
    started = time.monotonic()
    report = await notify(policy, channel, plan.warnings, [], plan.warned)
    assert time.monotonic() - started < 3
    assert report.results == Counter(failed=10)
    assert len(webhook.requests) == notify_module.CONCURRENCY
    assert {f.error for f in report.failures} == {"not sent within the sweep's 1s for posts"}
    assert report.summary() == (
        "10 of 10 webhook posts failed: not sent within the sweep's 1s for posts"
    )
    webhook.release()


async def test_without_a_url_every_post_fails_with_the_reason(webhook: WebhookReceiver) -> None:
    policy = replace(WARN, warn=WarnSpec(600, SecretKeyRef("hook", "url")))
    plan = decide(policy, snap(idle_server("ann", 55 * 60)))
    problem = "webhook Secret hook key url is not in namespace jhub"
    channel = WarnChannel("p", "jhub", problem=problem)
    report = await notify(policy, channel, plan.warnings, [], plan.warned)
    assert report.results == Counter(failed=1)
    assert report.summary() == f"1 of 1 webhook posts failed: {problem}"
    # without a webhook in the policy, warnings are events only; dry runs count nothing
    plain = replace(WARN, warn=WarnSpec(600))
    report = await notify(plain, None, plan.warnings, [], plan.warned)
    assert report.results == Counter(event_only=1)
    dry = replace(policy, dry_run=True)
    assert (await notify(dry, channel, plan.warnings, [], plan.warned)).results == Counter()
    assert webhook.requests == []
