"""spec.keep, pure: parsing the spec, keep requests, and what a keep protects from."""

from __future__ import annotations

from datetime import datetime, timedelta
from fractions import Fraction

import pytest

from hubcull.engine.rules.decisions import decide
from hubcull.engine.rules.demand import DemandData, ServerHold, WaitingPod
from hubcull.engine.rules.keeps import (
    Keep,
    KeepCounts,
    KeepRefused,
    check_keep,
    keeps_from_status,
    keeps_to_status,
    live_keeps,
    merge_keeps,
    requested_until,
)
from hubcull.engine.rules.policy import PolicyError, parse_spec
from hubcull.engine.rules.signals import ServerSignals, UsageReading
from tests.support.decisions import NOW, ago, server, snap, stops, user

HUB = {"url": "http://hub/hub/api", "tokenSecretRef": {"name": "h", "key": "k"}}


def policy(**spec):
    return parse_spec({"hub": HUB, "keep": {"max": "8h"}, **spec})


def later(hours: float) -> datetime:
    return NOW + timedelta(hours=hours)


def test_keep_spec_defaults_and_required_max() -> None:
    keep = policy().keep
    assert keep is not None and keep.max == 8 * 3600 and keep.per_day == 0
    assert parse_spec({"hub": HUB}).keep is None
    with pytest.raises(PolicyError, match=r"spec.keep.max: is required"):
        parse_spec({"hub": HUB, "keep": {"perDay": 2}})
    with pytest.raises(PolicyError, match=r"spec.keep.max: must be more than 0"):
        parse_spec({"hub": HUB, "keep": {"max": 0}})
    with pytest.raises(PolicyError, match=r"spec.keep.perDay"):
        parse_spec({"hub": HUB, "keep": {"max": "1h", "perDay": -1}})
    with pytest.raises(PolicyError, match=r"spec.keep: unknown field"):
        parse_spec({"hub": HUB, "keep": {"max": "1h", "forever": True}})


def test_a_kept_server_is_protected_from_idleness_but_not_from_max_age() -> None:
    p = policy(maxAge="10h")
    hub = snap(
        user("alice", server("alice", idle=7200, age=7300)),
        user("bob", server("bob", idle=7200, age=11 * 3600)),
        user("carol", server("carol", idle=7200, age=7300)),
    )
    keeps = {("alice", ""): later(2), ("bob", ""): later(2)}
    plan = decide(p, hub, keeps=keeps)
    assert stops(plan) == {("bob", "", "maxAge"), ("carol", "", "idle")}
    assert [(x.user, x.why) for x in plan.protected] == [
        ("alice", "kept until 2026-11-22T12:00:00Z")
    ]
    # without the keep alice is stopped: the keep is what protects her
    assert ("alice", "", "idle") in stops(decide(p, hub))


def test_an_ended_keep_protects_nothing() -> None:
    hub = snap(user("alice", server("alice", idle=7200, age=7300)))
    plan = decide(policy(), hub, keeps={("alice", ""): NOW})
    assert stops(plan) == {("alice", "", "idle")}


def test_a_kept_server_is_protected_from_capacity_and_idle_gpu() -> None:
    p = policy(capacity={"maxActiveServers": 1, "minIdle": "1m"}, idleTimeout="5h")
    hub = snap(
        user("alice", server("alice", idle=3000, age=9000)),
        user("bob", server("bob", idle=600, age=9000)),
    )
    assert stops(decide(p, hub)) == {("alice", "", "capacity")}
    plan = decide(p, hub, keeps={("alice", ""): later(1)})
    assert stops(plan) == {("bob", "", "capacity")}
    assert [x.user for x in plan.protected] == ["alice"]

    gpu = policy(
        usage={"prometheus": {"url": "http://prom:9090"}, "cullIdleGPU": True, "busyGPU": 5}
    )
    idle_gpu = {("alice", ""): ServerSignals(usage=UsageReading(gpu_idle_percent=0.0))}
    hub = snap(user("alice", server("alice", idle=60, age=9000)))
    assert stops(decide(gpu, hub, signals=idle_gpu)) == {("alice", "", "idleGPU")}
    assert stops(decide(gpu, hub, signals=idle_gpu, keeps={("alice", ""): later(1)})) == set()


def test_a_kept_server_is_judged_protected_for_everyone_who_reads_the_plan() -> None:
    plan = decide(
        policy(), snap(user("alice", server("alice", idle=60))), keeps={("alice", ""): later(1)}
    )
    (judged,) = plan.judged
    assert judged.protection == "kept until 2026-11-22T11:00:00Z"
    assert judged.idle_seconds == 60


def test_live_keeps_drop_ended_stopped_and_restarted_servers() -> None:
    started = ago(3600)
    keeps = [
        Keep("alice", "", later(1), started),
        Keep("bob", "", later(1), started),  # bob's server stopped
        Keep("carol", "", NOW, started),  # ended
        Keep("dave", "gpu", later(1), started),  # restarted since
    ]
    running = {("alice", ""): started, ("carol", ""): started, ("dave", "gpu"): ago(60)}
    assert [k.user for k in live_keeps(keeps, running, NOW)] == ["alice"]


def test_status_round_trip_skips_unreadable_entries() -> None:
    keeps = [Keep("alice", "gpu", later(2), ago(60), NOW)]
    entries = keeps_to_status(keeps)
    assert entries == [
        {
            "user": "alice",
            "server": "gpu",
            "until": "2026-11-22T12:00:00Z",
            "started": "2026-11-22T09:59:00Z",
            "made": "2026-11-22T10:00:00Z",
        }
    ]
    assert keeps_from_status([*entries, {"user": "x", "until": "soon"}, "junk"]) == keeps


@pytest.mark.parametrize(
    ("body", "until"),
    [
        ({"hours": 2}, NOW + timedelta(hours=2)),
        ({"hours": 0.5}, NOW + timedelta(minutes=30)),
        ({"hours": 0}, None),
        ({"until": "2026-11-22T13:00:00Z"}, NOW + timedelta(hours=3)),
        ({"until": "2026-11-22T14:00:00+01:00"}, NOW + timedelta(hours=3)),
    ],
)
def test_keep_requests(body, until) -> None:
    assert requested_until(body, NOW) == until


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"hours": -1}, "hours cannot be negative"),
        ({"hours": "two"}, "hours must be a number"),
        ({"hours": True}, "hours must be a number"),
        ({"until": "tomorrow"}, "not an RFC 3339 time"),
        ({"until": "2026-11-22T13:00:00"}, "needs a zone"),
        ({"until": "2026-11-22T09:00:00Z"}, "must be in the future"),
        ({"until": "2026-11-22T13:00:00Z", "hours": 1}, "exactly one"),
        ([], "JSON object"),
    ],
)
def test_malformed_keep_requests_are_refused_in_one_sentence(body, message) -> None:
    with pytest.raises(KeepRefused, match=message) as info:
        requested_until(body, NOW)
    assert info.value.status == 400
    assert str(info.value).count(". ") == 0 and str(info.value).endswith(".")


def test_over_max_is_400_and_over_per_day_is_429_never_clamped() -> None:
    check_keep(later(8), NOW, 8 * 3600, 0, 99)
    with pytest.raises(KeepRefused, match=r"at most 8h from now") as info:
        check_keep(later(8.01), NOW, 8 * 3600, 0, 0)
    assert info.value.status == 400
    check_keep(later(1), NOW, 8 * 3600, 2, 1)
    with pytest.raises(KeepRefused, match=r"all 2 keeps allowed per day") as info:
        check_keep(later(1), NOW, 8 * 3600, 2, 2)
    assert info.value.status == 429


def test_keep_counts_start_again_each_utc_day() -> None:
    counts = KeepCounts().add("alice", NOW).add("alice", NOW).add("bob", NOW)
    assert counts.made("alice", NOW) == 2 and counts.made("bob", NOW) == 1
    tomorrow = NOW + timedelta(days=1)
    assert counts.made("alice", tomorrow) == 0
    assert counts.add("alice", tomorrow).to_status() == {"day": "2026-11-23", "users": {"alice": 1}}
    assert KeepCounts.from_status(counts.to_status()) == counts
    assert KeepCounts.from_status("junk") == KeepCounts()


def test_a_keep_made_during_a_sweep_is_not_lost() -> None:
    a = Keep("alice", "", later(1))
    b = Keep("bob", "", later(1))
    b2 = Keep("bob", "", later(2))
    c = Keep("carol", "", later(1))
    # the sweep read a and b, dropped b (server stopped); meanwhile carol kept, alice ended
    assert merge_keeps([a, b], [a], [b, c]) == [c]
    # bob extended his keep during the sweep that dropped it: the extension stays
    assert merge_keeps([a, b], [a], [a, b2]) == [a, b2]
    # nothing happened meanwhile: the sweep's list is written
    assert merge_keeps([a, b], [a], [a, b]) == [a]


def test_a_kept_server_is_never_stopped_for_demand() -> None:
    """A GPU pod waits; alice's GPU server is the idlest but kept, so bob's is the victim.
    Without the keep alice's would be chosen: the keep is what protects her."""
    gpu = "nvidia.com/gpu"
    p = policy(idleTimeout="10h", demand={"minIdle": "15m"})
    hub = snap(
        user("alice", server("alice", idle=5 * 3600, age=6 * 3600)),
        user("bob", server("bob", idle=3600, age=6 * 3600)),
    )
    holds = {
        (u, ""): ServerHold((u, ""), f"jupyter-{u}", "gpu-1", {gpu: Fraction(1)})
        for u in ("alice", "bob")
    }
    waiting = WaitingPod("jupyter-carol", NOW, (gpu,), {gpu: Fraction(1)}, {})
    demand = DemandData(waiting=(waiting,), holds=holds)
    kept = decide(p, hub, keeps={("alice", ""): later(2)}, demand=demand)
    assert stops(kept) == {("bob", "", "demand")}
    assert stops(decide(p, hub, demand=demand)) == {("alice", "", "demand")}
