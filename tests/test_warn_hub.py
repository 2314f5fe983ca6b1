"""spec.warn against a real JupyterHub and a real webhook receiver: the warning comes first,
once per idle stretch, and the stop follows no sooner than ``before`` after it.

Servers are made idle by backdating the Hub's activity; ``before`` is 5 seconds, so each
test waits a few seconds of real time for a warned server's stop to come due.
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import timedelta

import pytest
from dateutil.parser import isoparse

from hubcull.cli import decision_lines
from hubcull.engine.sweep import webhook as webhook_module
from hubcull.engine.sweep.notify import isotime
from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.scenario import ago, populate
from tests.support.warn_env import Sweeper, hub_now, secret_url, wait_hub_time, warn
from tests.support.webhook import WebhookReceiver

pytestmark = pytest.mark.hub

BEFORE = 5.0


def posts(webhook: WebhookReceiver, type_: str | None = None) -> list[dict]:
    """The JSON documents the receiver got (of one ``type``)."""
    docs = [r.json for r in webhook.requests]
    return [d for d in docs if type_ is None or d["type"] == type_]


def culled(outcome) -> set[str]:
    return {c.label for c in outcome.result.culled}


async def test_warned_once_then_stopped_no_sooner_than_before_after_the_warning(
    hub: Hub, webhook: WebhookReceiver
) -> None:
    populated = time.monotonic()
    await populate(hub, {("ann", "lab"): 17, ("bob", ""): None})  # ann: 3s from idleTimeout
    url = secret_url(webhook)
    sweeper = Sweeper.of(
        hub, await hub.token(MINIMAL_SCOPES), url, idleTimeout="20s", every="1h", warn=warn()
    )
    started = time.monotonic()
    first = await sweeper.sweep()
    swept, took = time.monotonic() - populated, time.monotonic() - started
    assert culled(first) == set()
    (warning,) = first.result.warnings
    assert warning.label == "ann/lab" and warning.reason == "idle"
    assert first.status["warnedLastSweep"] == 1
    assert "warned 1" in first.status["conditions"][0]["message"]
    [doc] = posts(webhook)
    assert doc == {
        "type": "warning",
        "policy": "warn",
        "namespace": "jhub",
        "user": "ann",
        "server": "lab",
        "reason": "idle",
        "idleSeconds": doc["idleSeconds"],
        "stopAfter": doc["stopAfter"],
        "text": "ann/lab will be stopped in about 5s if it stays idle (policy jhub/warn)",
    }
    # idle 17 s when populated, and since then for as long as this test ran (the Hub's
    # clock has whole seconds: one more either way)
    assert 17 - 1 <= doc["idleSeconds"] <= 17 + swept + 1, (doc["idleSeconds"], swept)
    # `before` counts from the end of the sweep that gave the warning (whole seconds, plus
    # one for the Hub's clock); the post says when the stop may come at the earliest
    stop_after = warning.stop_after
    lag = math.ceil(took) + 1
    assert BEFORE + 1 <= (stop_after - first.result.now).total_seconds() <= BEFORE + lag
    assert isoparse(doc["stopAfter"]) <= stop_after
    # swept again and again: no second warning, no stop before stop_after
    outcomes = await sweeper.sweep_until(hub, lambda o: bool(culled(o)), "ann/lab stopped")
    for outcome in outcomes[:-1]:
        assert outcome.result.warnings == [] and outcome.result.now < stop_after
        assert [p.label for p in outcome.result.pending] == ["ann/lab"]
        assert outcome.status["warnedLastSweep"] == 0
        (line,) = decision_lines(outcome)  # what `hubcull sweep` prints meanwhile
        assert line.startswith("WAIT     ann/lab (idle, idle ")
        assert line.endswith(f"not stopped before {isotime(stop_after)}")
    last = outcomes[-1].result
    assert culled(outcomes[-1]) == {"ann/lab"} and last.now >= stop_after
    # the first sweep at or after stop_after stopped it (the one before was still earlier)
    assert len(outcomes) >= 2 and outcomes[-2].result.now < stop_after
    assert await hub.running_servers() == {("bob", "")}
    warnings, culls = posts(webhook, "warning"), posts(webhook, "culled")
    assert len(warnings) == 1 and len(culls) == 1
    (cull,) = culls
    assert (cull["user"], cull["server"], cull["reason"]) == ("ann", "lab", "idle")
    assert cull["stopAfter"] == isotime(stop_after) and isoparse(cull["time"]) >= stop_after
    assert cull["text"].startswith("ann/lab was stopped after ")
    assert outcomes[-1].result.notify.results == {"delivered": 1}


async def test_a_coarse_every_still_waits_and_sweeps_again_at_the_stop_time(
    hub: Hub, webhook: WebhookReceiver
) -> None:
    """every is an hour; a server found over idleTimeout is warned, not stopped, and the
    sweep asks to run again just after the stop time, when it stops the server."""
    await populate(hub, {("ann", ""): 60})
    sweeper = Sweeper.of(
        hub,
        await hub.token(MINIMAL_SCOPES),
        secret_url(webhook),
        idleTimeout="20s",
        every="1h",
        warn=warn(),
    )
    started = time.monotonic()
    first = await sweeper.sweep()
    took = time.monotonic() - started
    assert culled(first) == set() and [w.label for w in first.result.warnings] == ["ann"]
    assert first.status["serversIdle"] == 1 and first.status["culledLastSweep"] == 0
    # the stop time (before, from the end of the sweep: its whole seconds plus one), plus a
    # second's margin
    delay = first.next_sweep_in(sweeper.policy.every)
    assert BEFORE + 1 <= delay <= BEFORE + math.ceil(took) + 1 + 1, (delay, took)
    await asyncio.sleep(delay)  # what the controller and `hubcull sweep` do
    second = await sweeper.sweep()
    assert culled(second) == {"ann"}
    assert second.result.now >= first.result.warnings[0].stop_after
    assert second.next_sweep_in(sweeper.policy.every) == 3600
    assert [d["type"] for d in posts(webhook)] == ["warning", "culled"]


async def test_activity_cancels_the_stop_and_the_next_idle_stretch_is_warned_again(
    hub: Hub, webhook: WebhookReceiver
) -> None:
    await populate(hub, {("ann", ""): 17})
    sweeper = Sweeper.of(
        hub, await hub.token(MINIMAL_SCOPES), secret_url(webhook), idleTimeout="20s", warn=warn()
    )
    first = await sweeper.sweep()
    (warning,) = first.result.warnings
    # past the warning's stop time, ann turns out to have been active after the warning
    # (but idle again, over idleTimeout): that is a new idle stretch, not the warned one
    await wait_hub_time(hub, warning.stop_after.replace(microsecond=0) + timedelta(seconds=1))
    await hub.set_times("ann", last_activity=ago(20.5))
    second = await sweeper.sweep()
    assert culled(second) == set()
    assert [w.label for w in second.result.warnings] == ["ann"]  # warned again
    assert second.result.warnings[0].warned.at > warning.warned.at
    # activity now: nothing waits any more; then idle again: a third warning, no stop
    await hub.post_activity("ann")
    third = await sweeper.sweep()
    assert culled(third) == set() and third.result.warnings == [] and third.result.pending == []
    assert sweeper.memory.warnings.recall() == {}
    await hub.set_times("ann", last_activity=ago(60))
    fourth = await sweeper.sweep()
    assert culled(fourth) == set() and [w.label for w in fourth.result.warnings] == ["ann"]
    assert len(posts(webhook, "warning")) == 3 and posts(webhook, "culled") == []
    assert await hub.running_servers() == {("ann", "")}


async def test_max_age_warns_active_servers_and_stops_them_after_the_warning(
    hub: Hub, webhook: WebhookReceiver
) -> None:
    await populate(hub, {("ann", ""): None}, started={("ann", ""): 22})
    sweeper = Sweeper.of(
        hub,
        await hub.token(MINIMAL_SCOPES),
        secret_url(webhook),
        idleTimeout=0,
        maxAge="25s",
        warn=warn(),
    )
    first = await sweeper.sweep()
    (warning,) = first.result.warnings
    # 22 s old when populated: under maxAge (25 s) unless this machine took 3 s to sweep
    started = isoparse((await hub.get_user("ann"))["servers"][""]["started"])
    age = (first.result.now - started).total_seconds()
    assert (warning.reason, warning.over_limit) == ("maxAge", age >= 25), age
    assert warning.text == "ann will be stopped in about 5s: servers may run at most 25s"
    await wait_hub_time(hub, warning.stop_after)
    await hub.post_activity("ann")  # activity does not end a maxAge warning
    outcome = await sweeper.sweep()
    assert [(c.label, c.reason) for c in outcome.result.culled] == [("ann", "maxAge")]
    assert [(d["type"], d["reason"]) for d in posts(webhook)] == [
        ("warning", "maxAge"),
        ("culled", "maxAge"),
    ]
    assert posts(webhook, "culled")[0]["text"] == (
        "ann was stopped: it ran for the longest time allowed (25s) (policy jhub/warn)"
    )


async def test_capacity_does_not_wait_and_is_not_warned(hub: Hub, webhook: WebhookReceiver) -> None:
    await populate(hub, {("a", ""): 300, ("b", ""): 200, ("c", ""): None})
    sweeper = Sweeper.of(
        hub,
        await hub.token(MINIMAL_SCOPES),
        secret_url(webhook),
        idleTimeout="1h",
        warn=warn("10m"),
        capacity={"maxActiveServers": 2, "minIdle": "1m"},
    )
    outcome = await sweeper.sweep()
    assert [(c.label, c.reason) for c in outcome.result.culled] == [("a", "capacity")]
    assert outcome.result.warnings == [] and outcome.status["warnedLastSweep"] == 0
    [doc] = posts(webhook)
    assert (doc["type"], doc["user"], doc["reason"], doc["stopAfter"]) == (
        "culled",
        "a",
        "capacity",
        None,
    )
    assert doc["text"].startswith("a was stopped to free capacity (idle ")
    assert doc["text"].endswith(") (policy jhub/warn)")


async def test_dry_run_warns_remembers_and_posts_nothing(
    hub: Hub, webhook: WebhookReceiver
) -> None:
    await populate(hub, {("ann", ""): 60})
    sweeper = Sweeper.of(
        hub,
        await hub.token(MINIMAL_SCOPES),
        secret_url(webhook),
        idleTimeout="20s",
        dryRun=True,
        warn=warn(),
    )
    first = await sweeper.sweep()
    assert [w.label for w in first.result.warnings] == ["ann"] and culled(first) == set()
    assert first.status["warnedLastSweep"] == 1
    assert "would warn 1" in first.status["conditions"][0]["message"]
    second = await sweeper.sweep()  # remembered: not warned twice
    assert second.result.warnings == [] and [p.label for p in second.result.pending] == ["ann"]
    await wait_hub_time(hub, first.result.warnings[0].stop_after)
    third = await sweeper.sweep()
    assert culled(third) == {"ann"} and third.result.culled[0].dry_run
    assert third.result.warnings == []
    assert webhook.requests == []
    assert await hub.running_servers() == {("ann", "")}


@pytest.mark.parametrize("failure", ["500", "hang", "refused"])
async def test_webhook_failures_never_block_culls_and_are_counted(
    clean_hub: Hub,
    webhook: WebhookReceiver,
    failure: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One sweep stops a server (capacity) and warns another while the webhook fails: the
    stop happens, the sweep succeeds, both posts count as failed and Ready names why."""
    monkeypatch.setattr(webhook_module, "TIMEOUT_SECONDS", 1.0)
    monkeypatch.setattr(webhook_module, "RETRY_PAUSES", (0.1, 0.1))
    hub = clean_hub
    await populate(hub, {("full", ""): 300, ("near", ""): 57})
    url = secret_url(webhook)
    if failure == "500":
        webhook.respond(500)
    elif failure == "hang":
        webhook.hang()
    else:
        await webhook.refuse()
    sweeper = Sweeper.of(
        hub,
        await hub.token(MINIMAL_SCOPES),
        url,
        idleTimeout="1m",
        warn=warn("10s"),
        capacity={"maxActiveServers": 1, "minIdle": "2m"},
    )
    started = await hub_now(hub)
    outcome = await sweeper.sweep()
    assert culled(outcome) == {"full"} and await hub.running_servers() == {("near", "")}
    assert [w.label for w in outcome.result.warnings] == ["near"]
    assert outcome.result.notify.results == {"failed": 2}
    expected = {"500": "HTTP 500", "hang": "no answer within 1s", "refused": "cannot connect"}
    assert all(expected[failure] in f.error for f in outcome.result.notify.failures)
    ready = outcome.status["conditions"][0]
    assert (ready["type"], ready["status"]) == ("Ready", "True")
    assert "2 of 2 webhook posts failed: " + expected[failure] in ready["message"]
    assert url not in str(outcome.status)
    lines = decision_lines(outcome)
    assert f"FAILED   webhook warning post for near: {expected[failure]}" in "\n".join(lines)
    assert f"FAILED   webhook culled post for full: {expected[failure]}" in "\n".join(lines)
    assert outcome.result.duration < 10  # 3 attempts of at most 1s, posts side by side
    assert (await hub_now(hub) - started).total_seconds() < 12
    webhook.release()
