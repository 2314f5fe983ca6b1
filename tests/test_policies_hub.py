"""Policies beyond one timeout, against a real JupyterHub: selectors, excludes, several
policies on one Hub, dry run, suspend, safety brakes, capacity mode and the Hub's clock."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.support.jhub import FULL_SCOPES, MINIMAL_SCOPES, Hub
from tests.support.scenario import culled_labels, labels, populate, sweep, utcnow

pytestmark = pytest.mark.hub

HOUR = 3600
MIN = 60

# Everyone idle for 2 hours; profiles and groups differ.
POPULATION = {
    ("alice", ""): 2 * HOUR,  # research, gpu profile
    ("alice", "lab"): 2 * HOUR,  # research, no profile
    ("bob", ""): 2 * HOUR,  # class, cpu profile
    ("carol", "gpu1"): 2 * HOUR,  # class + staff, gpu profile
    ("dave", ""): 2 * HOUR,  # no group, no profile, admin
}
PROFILES = {
    ("alice", ""): {"profile": "gpu"},
    ("bob", ""): {"profile": "cpu"},
    ("carol", "gpu1"): {"profile": "gpu"},
}


async def setup_population(hub: Hub) -> str:
    await populate(hub, POPULATION, options=PROFILES)
    await hub.create_group("research", ["alice"])
    await hub.create_group("class", ["bob", "carol"])
    await hub.create_group("staff", ["carol"])
    return await hub.token(FULL_SCOPES)


@pytest.mark.hub(extra_config="c.Authenticator.admin_users.add('dave')")
async def test_each_selector_and_exclude_field_alone_and_combined(hub: Hub) -> None:
    token = await setup_population(hub)
    cases: list[tuple[dict, set[str]]] = [
        ({}, {"alice", "alice/lab", "bob", "carol/gpu1", "dave"}),
        ({"selector": {"users": ["a*", "b?b"]}}, {"alice", "alice/lab", "bob"}),
        ({"selector": {"groups": ["research", "staff"]}}, {"alice", "alice/lab", "carol/gpu1"}),
        ({"selector": {"servers": [""]}}, {"alice", "bob", "dave"}),
        ({"selector": {"servers": ["gpu*", "lab"]}}, {"alice/lab", "carol/gpu1"}),
        ({"selector": {"profiles": ["gpu"]}}, {"alice", "carol/gpu1"}),
        ({"selector": {"profiles": [""]}}, {"alice/lab", "dave"}),
        ({"selector": {"groups": ["class"], "profiles": ["gpu"]}}, {"carol/gpu1"}),
        ({"selector": {"users": ["alice"], "servers": [""]}}, {"alice"}),
        ({"exclude": {"users": ["a*"]}}, {"bob", "carol/gpu1", "dave"}),
        ({"exclude": {"groups": ["class"]}}, {"alice", "alice/lab", "dave"}),
        ({"exclude": {"servers": ["", "lab"]}}, {"carol/gpu1"}),
        ({"exclude": {"profiles": ["gpu", "cpu"]}}, {"alice/lab", "dave"}),
        ({"exclude": {"admins": True}}, {"alice", "alice/lab", "bob", "carol/gpu1"}),
        ({"selector": {"groups": ["class"]}, "exclude": {"groups": ["staff"]}}, {"bob"}),
        (
            {"selector": {"profiles": ["gpu"]}, "exclude": {"users": ["carol"], "admins": True}},
            {"alice"},
        ),
    ]
    for fields, expected in cases:
        outcome = await sweep(hub, token, dryRun=True, **fields)
        assert culled_labels(outcome) == expected, fields
    assert len(await hub.running_servers()) == 5  # dry runs stopped nothing


async def test_two_policies_by_profile_and_by_group_act_independently(hub: Hub) -> None:
    await populate(
        hub,
        {
            ("gina", ""): 30 * MIN,
            ("hugo", ""): 30 * MIN,
            ("ivan", ""): 5 * HOUR,
            ("jane", ""): 9 * HOUR,
            ("kim", ""): 5 * HOUR,
        },
        options={("gina", ""): {"profile": "gpu"}, ("hugo", ""): {"profile": "cpu"}},
    )
    await hub.create_group("research", ["ivan", "kim"])
    token = await hub.token(FULL_SCOPES)
    gpu = await sweep(hub, token, idleTimeout="20m", selector={"profiles": ["gpu"]})
    assert culled_labels(gpu) == {"gina"}
    research = await sweep(hub, token, idleTimeout="4h", selector={"groups": ["research"]})
    assert culled_labels(research) == {"ivan", "kim"}
    everyone = await sweep(
        hub, token, idleTimeout="8h", exclude={"profiles": ["gpu"], "groups": ["research"]}
    )
    assert culled_labels(everyone) == {"jane"}
    assert await hub.running_servers() == {("hugo", "")}


async def test_dry_run_decides_and_reports_but_stops_and_deletes_nothing(hub: Hub) -> None:
    await populate(hub, {("a", ""): 2 * HOUR, ("a", "lab"): 2 * HOUR, ("b", ""): 60})
    await hub.create_users(["ghost"])
    await hub.set_times("ghost", user_last_activity=utcnow() - timedelta(hours=3))
    token = await hub.token(FULL_SCOPES)
    outcome = await sweep(
        hub, token, dryRun=True, users={"cull": True}, servers={"removeNamed": True}
    )
    assert culled_labels(outcome) == {"a", "a/lab"}
    assert outcome.result is not None and {u.user for u in outcome.result.users_culled} == {
        "a",
        "ghost",
    }
    status = outcome.status
    assert status["culledLastSweep"] == 2 and status["culledTotal"] == 0
    assert status["usersCulledTotal"] == 0
    assert all(c["dryRun"] for c in status["recentCulls"])
    assert await hub.running_servers() == {("a", ""), ("a", "lab"), ("b", "")}
    assert "ghost" in {u["name"] for u in await hub.list_users()}


async def test_suspend_does_nothing(hub: Hub) -> None:
    await populate(hub, {("a", ""): 2 * HOUR})
    outcome = await sweep(hub, await hub.token(MINIMAL_SCOPES), suspend=True)
    assert outcome.result is None and outcome.reason == "Suspended"
    assert await hub.running_servers() == {("a", "")}


async def test_safety_limits_hold_back_exact_counts_longest_idle_first(hub: Hub) -> None:
    servers = {(f"u{i:02d}", ""): HOUR + (i + 1) * MIN for i in range(20)}
    await populate(hub, servers | {(f"busy{i}", ""): 60 for i in range(20)})
    token = await hub.token(MINIMAL_SCOPES)
    outcome = await sweep(hub, token, safety={"maxCullsPerSweep": 4})
    assert culled_labels(outcome) == {"u19", "u18", "u17", "u16"}
    assert outcome.result is not None and len(outcome.result.held_back) == 16
    assert outcome.status["serversIdle"] == 20
    throttled = next(c for c in outcome.status["conditions"] if c["type"] == "Throttled")
    assert (throttled["status"], throttled["reason"]) == ("True", "SafetyLimit")
    # 36 running now; 25 % of them is 9
    outcome = await sweep(hub, token, safety={"maxCullPercent": 25}, previous=outcome.status)
    assert culled_labels(outcome) == {f"u{i:02d}" for i in range(7, 16)}
    assert outcome.status["culledTotal"] == 13
    outcome = await sweep(hub, token, previous=outcome.status)
    assert culled_labels(outcome) == {f"u{i:02d}" for i in range(7)}
    throttled = next(c for c in outcome.status["conditions"] if c["type"] == "Throttled")
    assert (throttled["status"], throttled["reason"]) == ("False", "WithinLimits")


async def test_capacity_mode_stops_exactly_the_longest_idle_down_to_the_limit(hub: Hub) -> None:
    servers = {(f"u{i}", ""): i * 4 * MIN for i in range(10)}  # 0..36 minutes idle
    await populate(hub, servers)
    outcome = await sweep(
        hub,
        await hub.token(MINIMAL_SCOPES),
        idleTimeout="1h",
        capacity={"maxActiveServers": 5, "minIdle": "10m"},
    )
    assert outcome.result is not None
    assert {(c.label, c.reason) for c in outcome.result.culled} == {
        (f"u{i}", "capacity") for i in (9, 8, 7, 6, 5)
    }
    assert labels(await hub.running_servers()) == {f"u{i}" for i in range(5)}
    # below minIdle nobody goes, even above the limit
    outcome = await sweep(
        hub,
        await hub.token(MINIMAL_SCOPES),
        idleTimeout="1h",
        capacity={"maxActiveServers": 1, "minIdle": "10m"},
    )
    assert culled_labels(outcome) == {"u4", "u3"}


async def test_a_fast_local_clock_culls_nothing_early(hub: Hub) -> None:
    await populate(hub, {("ann", ""): 50 * MIN, ("bob", ""): 70 * MIN})
    token = await hub.token(MINIMAL_SCOPES)

    def skewed() -> object:
        return utcnow() + timedelta(hours=2)

    outcome = await sweep(hub, token, clock=skewed)
    assert culled_labels(outcome) == {"bob"}
    assert outcome.result is not None and outcome.result.clock_source == "hub"
    assert abs((outcome.result.now - utcnow()).total_seconds()) < 30
    assert await hub.running_servers() == {("ann", "")}
