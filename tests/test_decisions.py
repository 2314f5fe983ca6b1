"""The pure decision function: rules from the contract, and properties that always hold."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from hubcull.engine.hub.model import Snapshot
from hubcull.engine.rules.decisions import decide
from hubcull.engine.rules.policy import (
    Capacity,
    Matcher,
    Policy,
    Safety,
    ServerScope,
    UserCulling,
)
from tests.support.decisions import BASE, server, snap, stops, user


def test_idle_uses_last_activity_then_started_then_never() -> None:
    plan = decide(
        BASE,
        snap(
            user("a", server("a", idle=3600, age=9000)),
            user("b", server("b", idle=3599, age=9000)),
            user("c", server("c", idle=None, age=4000)),
            user("d", server("d", idle=None, age=None)),
        ),
    )
    assert stops(plan) == {("a", "", "idle"), ("c", "", "idle")}
    assert plan.running == 4 and plan.over_limit == 2


def test_max_age_culls_active_servers_and_zero_turns_features_off() -> None:
    policy = replace(BASE, max_age=86400)
    plan = decide(policy, snap(user("a", server("a", idle=10, age=90000))))
    assert stops(plan) == {("a", "", "maxAge")}
    off = replace(BASE, idle_timeout=0)
    assert decide(off, snap(user("a", server("a", idle=10**6, age=10**6)))).stops == []


def test_pending_servers_are_skipped_and_counted() -> None:
    plan = decide(
        BASE,
        snap(
            user("a", server("a", idle=10**5, pending="stop")),
            user("b", server("b", idle=10**5, pending="spawn")),
        ),
    )
    assert plan.stops == [] and plan.skipped_pending == 2 and plan.running == 0


def test_default_and_named_flags_and_remove_named() -> None:
    u = user("a", server("a", "", idle=7200), server("a", "gpu", idle=7200))
    assert stops(decide(replace(BASE, servers=ServerScope(default=False)), snap(u))) == {
        ("a", "gpu", "idle")
    }
    assert stops(decide(replace(BASE, servers=ServerScope(named=False)), snap(u))) == {
        ("a", "", "idle")
    }
    plan = decide(replace(BASE, servers=ServerScope(remove_named=True)), snap(u))
    assert {(d.server, d.remove) for d in plan.stops} == {("", False), ("gpu", True)}


def test_remove_named_also_removes_stopped_named_servers_idle_past_the_timeout() -> None:
    u = user(
        "a",
        server("a", "old", idle=7200, stopped=True),
        server("a", "recent", idle=60, stopped=True),
    )
    plan = decide(replace(BASE, servers=ServerScope(remove_named=True)), snap(u))
    assert [(d.server, d.already_stopped) for d in plan.removals] == [("old", True)]
    assert decide(BASE, snap(u)).removals == []


def test_user_culling_respects_admins_activity_and_running_servers() -> None:
    policy = replace(BASE, users=UserCulling(cull=True))
    plan = decide(
        policy,
        snap(
            user("idle", idle=7200),
            user("fresh", idle=60),
            user("admin", idle=7200, admin=True),
            user("never", idle=None, created=7200),
            user("busy", server("busy", idle=60), idle=7200),
            user("culled", server("culled", idle=7200), idle=7200),
        ),
    )
    assert {(d.user, d.after_stops) for d in plan.user_deletions} == {
        ("idle", ()),
        ("never", ()),
        ("culled", ("",)),
    }
    with_admins = replace(policy, users=UserCulling(cull=True, include_admins=True))
    assert "admin" in {
        d.user
        for d in decide(with_admins, snap(user("admin", idle=7200, admin=True))).user_deletions
    }


def test_selectors_and_excludes() -> None:
    users = snap(
        user("alice", server("alice", "", idle=7200, profile="gpu"), groups=("research",)),
        user("bob", server("bob", "", idle=7200, profile="cpu"), groups=("class",)),
        user("carol", server("carol", "big", idle=7200), admin=True),
    )

    def culled(**kw) -> set[str]:
        sel = Matcher(**kw.pop("sel", {}))
        exc = Matcher(**kw.pop("exc", {}))
        return {d.label for d in decide(replace(BASE, selector=sel, exclude=exc), users).stops}

    assert culled() == {"alice", "bob", "carol/big"}
    assert culled(sel={"users": ["a*", "b?b"]}) == {"alice", "bob"}
    assert culled(sel={"groups": ["research"]}) == {"alice"}
    assert culled(sel={"servers": [""]}) == {"alice", "bob"}
    assert culled(sel={"servers": ["b*"]}) == {"carol/big"}
    assert culled(sel={"profiles": ["gpu"]}) == {"alice"}
    assert culled(sel={"profiles": [""]}) == {"carol/big"}
    assert culled(sel={"users": ["alice", "bob"], "profiles": ["cpu"]}) == {"bob"}
    assert culled(exc={"users": ["al*"]}) == {"bob", "carol/big"}
    assert culled(exc={"groups": ["class"]}) == {"alice", "carol/big"}
    assert culled(exc={"servers": ["big"]}) == {"alice", "bob"}
    assert culled(exc={"profiles": ["gpu", "cpu"]}) == {"carol/big"}
    assert culled(exc={"admins": True}) == {"alice", "bob"}


def test_safety_keeps_longest_idle_and_holds_back_the_rest() -> None:
    users = snap(*(user(f"u{i}", server(f"u{i}", idle=3600 + i * 60)) for i in range(10)))
    plan = decide(replace(BASE, safety=Safety(max_culls_per_sweep=3)), users)
    assert [d.user for d in plan.stops] == ["u9", "u8", "u7"]
    assert len(plan.held_back) == 7 and plan.over_limit == 10
    plan = decide(replace(BASE, safety=Safety(max_cull_percent=25)), users)
    assert [d.user for d in plan.stops] == ["u9", "u8"]  # floor(10 * 25%) = 2


def test_capacity_stops_longest_idle_above_min_idle_down_to_the_limit() -> None:
    users = snap(*(user(f"u{i}", server(f"u{i}", idle=i * 60)) for i in range(10)))
    policy = replace(BASE, capacity=Capacity(max_active_servers=6, min_idle=300))
    assert [(d.user, d.reason) for d in decide(policy, users).stops] == [
        ("u9", "capacity"),
        ("u8", "capacity"),
        ("u7", "capacity"),
        ("u6", "capacity"),
    ]
    policy = replace(BASE, capacity=Capacity(max_active_servers=2, min_idle=420))
    assert [d.user for d in decide(policy, users).stops] == ["u9", "u8", "u7"]
    mixed = snap(user("old", server("old", idle=7200)), *users.users[:5])
    policy = replace(BASE, capacity=Capacity(max_active_servers=4, min_idle=60))
    assert [(d.user, d.reason) for d in decide(policy, mixed).stops] == [
        ("old", "idle"),
        ("u4", "capacity"),
    ]


def test_dry_run_decides_everything_and_acts_on_nothing() -> None:
    users = snap(user("a", server("a", idle=7200), idle=7200))
    plan = decide(replace(BASE, dry_run=True, users=UserCulling(cull=True)), users)
    assert len(plan.stops) == 1 and len(plan.user_deletions) == 1 and plan.actions == []


# -- properties ---------------------------------------------------------------------------

names = st.sampled_from(["ann", "bob", "cy", "dee", "eve"])
servers_st = st.builds(
    lambda idle, age, pending, profile, name: (idle, age, pending, profile, name),
    st.one_of(st.none(), st.integers(0, 20000)),
    st.one_of(st.none(), st.integers(0, 40000)),
    st.sampled_from([None, None, None, "spawn", "stop"]),
    st.sampled_from([None, "gpu", "cpu"]),
    st.sampled_from(["", "", "a", "b"]),
)


@st.composite
def snapshots(draw) -> Snapshot:
    result = []
    for uname in draw(st.lists(names, unique=True, max_size=5)):
        specs = draw(st.lists(servers_st, max_size=3, unique_by=lambda s: s[4]))
        srv = [server(uname, n, idle=i, age=a, pending=p, profile=pr) for i, a, p, pr, n in specs]
        result.append(
            user(
                uname,
                *srv,
                admin=draw(st.booleans()),
                groups=tuple(draw(st.lists(st.sampled_from(["g1", "g2"]), unique=True))),
                idle=draw(st.one_of(st.none(), st.integers(0, 20000))),
            )
        )
    return snap(*result)


policies = st.builds(
    lambda idle, age, cap, min_idle, mcs, pct, exc_users, exc_groups, exc_admins, dry, ucull: (
        replace(
            BASE,
            idle_timeout=idle,
            max_age=age,
            capacity=Capacity(cap, min_idle),
            safety=Safety(mcs, pct),
            exclude=Matcher(users=exc_users, groups=exc_groups, admins=exc_admins),
            dry_run=dry,
            users=UserCulling(cull=ucull),
        )
    ),
    st.sampled_from([0, 600, 3600]),
    st.sampled_from([0, 7200]),
    st.integers(0, 6),
    st.sampled_from([0, 300]),
    st.integers(0, 5),
    st.integers(0, 100),
    st.lists(names, max_size=2).map(tuple),
    st.lists(st.just("g1"), max_size=1).map(tuple),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)


@settings(max_examples=400, deadline=None)
@given(policies, snapshots())
def test_properties_of_every_plan(policy: Policy, snapshot: Snapshot) -> None:
    plan = decide(policy, snapshot)
    by_key = {(s.user, s.name): (u, s) for u in snapshot.users for s in u.servers}
    for d in plan.stops + plan.held_back:
        u, s = by_key[(d.user, d.server)]
        # an excluded server is never a candidate
        assert d.user not in policy.exclude.users
        assert not (set(u.groups or ()) & set(policy.exclude.groups))
        assert not (policy.exclude.admins and u.admin)
        # pending servers are never touched
        assert s.pending is None and s.ready
        # active within idleTimeout: only maxAge or capacity
        if d.reason == "idle":
            assert policy.idle_timeout > 0 and d.idle_seconds >= policy.idle_timeout
        elif d.reason == "maxAge":
            assert policy.max_age > 0 and d.age_seconds is not None
            assert d.age_seconds >= policy.max_age
        else:
            assert d.reason == "capacity" and policy.capacity.max_active_servers > 0
            assert d.idle_seconds >= policy.capacity.min_idle
    # safety caps always hold
    if policy.safety.max_culls_per_sweep:
        assert len(plan.stops) <= policy.safety.max_culls_per_sweep
    assert len(plan.stops) <= plan.running * policy.safety.max_cull_percent // 100 or (
        policy.safety.max_cull_percent == 100
    )
    held = {d.idle_seconds for d in plan.held_back}
    assert all(d.idle_seconds >= max(held) for d in plan.stops) if held else True
    # dry run never produces an action
    if policy.dry_run:
        assert plan.actions == []
    # users are deleted only when idle, allowed and without a server left running
    for d in plan.user_deletions:
        u = next(x for x in snapshot.users if x.name == d.user)
        assert policy.users.cull and (policy.users.include_admins or not u.admin)
        assert d.idle_seconds >= policy.idle_timeout > 0
