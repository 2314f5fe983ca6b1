"""spec.warn's rules as pure functions: who is warned, who waits, who stops, and the guarantee
that a stop for idleness or maxAge never comes sooner than ``before`` after its warning."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from hubcull.engine.hub.model import Server, Snapshot, User
from hubcull.engine.rules.decisions import Plan, decide
from hubcull.engine.rules.policy import Capacity, KernelsSpec, Safety, WarnSpec
from hubcull.engine.rules.signals import KernelActivity, ServerSignals
from hubcull.engine.rules.warn import Warned, needs_warning, verdict
from hubcull.engine.sweep.memory import WarnMemory
from tests.support.decisions import (
    BASE,
    NOW,
    WARN,
    ago,
    idle_server,
    server,
    snap,
    stops,
    user,
)

MIN = 60
HOUR = 3600


def later(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def warnings(plan: Plan) -> set[tuple[str, str, str]]:
    return {(w.user, w.server, w.reason) for w in plan.warnings}


def pending(plan: Plan) -> set[tuple[str, str, str]]:
    return {(p.user, p.server, p.reason) for p in plan.pending}


def test_verdict_table() -> None:
    record = Warned("idle", NOW, later(600), ago(HOUR), ago(0))
    assert verdict(600, NOW, None, None) == "none"  # nothing can stop it
    assert verdict(600, NOW, 601, None) == "none"  # not within `before` yet
    assert verdict(600, NOW, 600, None) == "warn"
    assert verdict(600, NOW, -5, None) == "warn"  # over the limit but never warned
    assert verdict(600, NOW, 100, record) == "wait"
    assert verdict(600, later(599), -1, record) == "wait"  # over, but warned too recently
    assert verdict(600, later(600), -1, record) == "stop"
    assert verdict(600, later(900), 100, record) == "wait"  # due, but not over its limit
    assert needs_warning("idle") and needs_warning("maxAge") and needs_warning("idleGPU")
    assert not needs_warning("capacity")


def test_servers_within_before_of_the_idle_limit_are_warned_once_and_not_stopped() -> None:
    snapshot = snap(
        idle_server("near", 51 * MIN),  # stops in 9m: within 10m
        idle_server("far", 49 * MIN),  # 11m to go: not yet
        idle_server("over", 2 * HOUR),  # over the limit but never warned
    )
    plan = decide(WARN, snapshot)
    assert stops(plan) == set()
    assert warnings(plan) == {("near", "", "idle"), ("over", "", "idle")}
    near, over = plan.warnings
    assert near.stop_after == over.stop_after == later(10 * MIN)
    assert near.text == "near will be stopped in about 10m if it stays idle"
    assert (near.over_limit, over.over_limit) == (False, True)
    assert plan.over_limit == 1  # "over" is over a limit, waiting for its warning
    assert plan.next_due == later(10 * MIN)
    assert set(plan.warned) == {("near", ""), ("over", "")}
    # the next sweep, 5 minutes later: nobody is warned twice, nobody stops yet, and "far"
    # is now within 10 minutes of its stop
    snapshot5 = Snapshot.from_users(snapshot.users, later(5 * MIN))
    plan5 = decide(WARN, snapshot5, warned=plan.warned)
    assert warnings(plan5) == {("far", "", "idle")} and stops(plan5) == set()
    assert pending(plan5) == {("near", "", "idle"), ("over", "", "idle")}
    assert plan5.next_due == later(10 * MIN)
    # at the first warning's stop time those two stop; "far" waits for its own
    snapshot10 = Snapshot.from_users(snapshot.users, later(10 * MIN))
    plan10 = decide(WARN, snapshot10, warned=plan5.warned)
    assert stops(plan10) == {("near", "", "idle"), ("over", "", "idle")}
    assert plan10.warnings == [] and pending(plan10) == {("far", "", "idle")}
    assert plan10.next_due == later(15 * MIN)


def test_a_warning_counts_from_when_it_reached_people() -> None:
    """A sweep that took 30 seconds before its warnings went out moves them 30s later, and
    their stop times with them; warnings given earlier stay as they are."""
    first = decide(WARN, snap(idle_server("old", 55 * MIN)))
    both = snap(idle_server("old", 55 * MIN), idle_server("new", 55 * MIN)).users
    plan = decide(WARN, Snapshot.from_users(both, later(MIN)), warned=first.warned)
    assert warnings(plan) == {("new", "", "idle")} and pending(plan) == {("old", "", "idle")}
    plan.delay_warnings(30)
    (warning,) = plan.warnings
    assert (warning.warned.at, warning.stop_after) == (later(MIN + 30), later(11 * MIN + 30))
    assert plan.warned[("new", "")] == warning.warned
    assert plan.warned[("old", "")] == first.warned[("old", "")]
    assert warning.text == "new will be stopped in about 10m if it stays idle"
    assert plan.next_due == later(10 * MIN)


def test_a_coarse_sweep_interval_never_shortens_the_wait() -> None:
    """Warned 1 minute before the limit, swept again an hour later: stopped then, not before;
    but a sweep 9 minutes after the warning (over the limit already) still waits."""
    snapshot = snap(idle_server("ann", 59 * MIN))
    first = decide(WARN, snapshot)
    assert warnings(first) == {("ann", "", "idle")}
    soon = decide(WARN, Snapshot.from_users(snapshot.users, later(9 * MIN)), warned=first.warned)
    assert stops(soon) == set() and pending(soon) == {("ann", "", "idle")}
    hour = decide(WARN, Snapshot.from_users(snapshot.users, later(HOUR)), warned=soon.warned)
    assert stops(hour) == {("ann", "", "idle")}


def test_activity_ends_the_warning_and_the_next_idle_stretch_is_warned_again() -> None:
    first = decide(WARN, snap(idle_server("ann", 55 * MIN)))
    (warning,) = first.warnings
    # ann was active 1 minute before the next sweep: no longer near a stop, warning forgotten
    active = decide(WARN, snap(idle_server("ann", 1 * MIN)), warned=first.warned)
    assert active.warned == {} and stops(active) == set() and active.pending == []
    # given the old warning, a server active since then is warned anew, not stopped
    newer = snap(user("ann", server("ann", idle=50 * MIN, age=9 * HOUR)))
    fresh = decide(WARN, Snapshot.from_users(newer.users, later(20 * MIN)), warned=first.warned)
    assert stops(fresh) == set() and warnings(fresh) == {("ann", "", "idle")}
    assert fresh.warnings[0].warned.at == later(20 * MIN) != warning.warned.at


def test_the_same_idle_stretch_keeps_its_warning() -> None:
    first = decide(WARN, snap(idle_server("ann", 55 * MIN)))
    same = snap(idle_server("ann", 55 * MIN))  # the same last_activity, judged 10 minutes on
    plan = decide(WARN, Snapshot.from_users(same.users, later(10 * MIN)), warned=first.warned)
    assert stops(plan) == {("ann", "", "idle")} and plan.warnings == []


def test_a_restarted_server_is_a_new_run_and_is_warned_again() -> None:
    first = decide(WARN, snap(idle_server("ann", 55 * MIN, age=2 * HOUR)))
    restarted = snap(idle_server("ann", 55 * MIN, age=56 * MIN))
    plan = decide(WARN, Snapshot.from_users(restarted.users, NOW), warned=first.warned)
    assert warnings(plan) == {("ann", "", "idle")}


def test_a_warning_remembered_from_a_dry_run_does_not_let_a_real_run_stop() -> None:
    dry = decide(replace(WARN, dry_run=True), snap(idle_server("ann", 55 * MIN)))
    assert dry.warnings[0].warned.dry_run
    due = Snapshot.from_users(snap(idle_server("ann", 55 * MIN)).users, later(10 * MIN))
    assert stops(decide(replace(WARN, dry_run=True), due, warned=dry.warned)) == {
        ("ann", "", "idle")
    }
    real = decide(WARN, due, warned=dry.warned)
    assert stops(real) == set() and warnings(real) == {("ann", "", "idle")}


def test_max_age_warns_even_active_servers_and_activity_does_not_end_it() -> None:
    policy = replace(WARN, max_age=8 * HOUR)
    snapshot = snap(user("ann", server("ann", idle=30, age=8 * HOUR - 5 * MIN)))
    plan = decide(policy, snapshot)
    (warning,) = plan.warnings
    assert (warning.reason, warning.over_limit) == ("maxAge", False)
    assert warning.text == "ann will be stopped in about 10m: servers may run at most 8h"
    # the same run, active a moment ago (last_activity = the next sweep's time)
    later_snap = snap(user("ann", server("ann", idle=-10 * MIN, age=8 * HOUR - 5 * MIN)))
    due = decide(policy, Snapshot.from_users(later_snap.users, later(10 * MIN)), warned=plan.warned)
    assert stops(due) == {("ann", "", "maxAge")}


def test_capacity_stops_at_once_and_is_never_warned() -> None:
    policy = replace(WARN, capacity=Capacity(max_active_servers=1, min_idle=10 * MIN))
    snapshot = snap(
        idle_server("a", 30 * MIN),
        idle_server("b", 20 * MIN),
        idle_server("c", 55 * MIN),  # within `before` of idleness
    )
    plan = decide(policy, snapshot)
    assert stops(plan) == {("c", "", "capacity"), ("a", "", "capacity")}
    assert plan.warnings == [] and plan.warned == {}  # c is stopped, not warned


def test_capacity_takes_a_server_that_waits_for_its_warning() -> None:
    policy = replace(WARN, capacity=Capacity(max_active_servers=1, min_idle=10 * MIN))
    first = decide(WARN, snap(idle_server("a", 2 * HOUR)))
    assert warnings(first) == {("a", "", "idle")}
    plan = decide(
        policy, snap(idle_server("a", 2 * HOUR), idle_server("b", 1 * MIN)), warned=first.warned
    )
    assert stops(plan) == {("a", "", "capacity")}
    assert plan.pending == [] and plan.warned == {}


def test_a_busy_kernel_keeps_a_server_from_being_warned_for_idleness() -> None:
    policy = replace(WARN, kernels=KernelsSpec(protect_busy=True))
    busy = ServerSignals(KernelActivity(NOW, ago(60), busy_silent_seconds=60, kernels=1))
    first = decide(policy, snap(idle_server("ann", 55 * MIN)))
    plan = decide(
        policy, snap(idle_server("ann", 55 * MIN)), signals={("ann", ""): busy}, warned=first.warned
    )
    assert plan.warnings == [] and plan.pending == [] and plan.warned == {}
    # ...but not from maxAge
    aged = replace(policy, max_age=8 * HOUR)
    plan = decide(
        aged, snap(idle_server("ann", 2 * HOUR, age=8 * HOUR - MIN)), signals={("ann", ""): busy}
    )
    assert warnings(plan) == {("ann", "", "maxAge")}


def test_kernel_idle_time_warns_and_new_kernel_activity_is_a_new_stretch() -> None:
    policy = replace(WARN, kernels=KernelsSpec(idle_from="kernels"))

    def kernels(idle: float, at: datetime = NOW) -> dict:
        seen = KernelActivity(at, at - timedelta(seconds=idle), kernels=1)
        return {("ann", ""): ServerSignals(seen)}

    tab_open = snap(user("ann", server("ann", idle=10, age=9 * HOUR)))  # the Hub sees a tab
    first = decide(policy, tab_open, signals=kernels(55 * MIN))
    assert warnings(first) == {("ann", "", "idle")}
    assert first.warnings[0].idle_from == "kernels"
    at10 = Snapshot.from_users(tab_open.users, later(10 * MIN))
    assert stops(
        decide(policy, at10, signals=kernels(65 * MIN, later(10 * MIN)), warned=first.warned)
    ) == {("ann", "", "idle")}
    rerun = decide(policy, at10, signals=kernels(MIN, later(10 * MIN)), warned=first.warned)
    assert stops(rerun) == set() and rerun.warned == {}
    # the server's clock lags the Hub's: by its kernels it is idle 59m20s, 40s short of the
    # limit although the warning's stop time has come; the next sweep is due in 40s
    lagging = {("ann", ""): ServerSignals(KernelActivity(later(4 * MIN + 20), ago(55 * MIN)))}
    waits = decide(policy, at10, signals=lagging, warned=first.warned)
    assert stops(waits) == set() and waits.warnings == []
    assert waits.next_due == later(10 * MIN + 40)


def test_safety_limits_hold_back_a_due_server_and_keep_its_warning() -> None:
    policy = replace(WARN, safety=Safety(max_culls_per_sweep=1))
    first = decide(policy, snap(idle_server("a", 2 * HOUR), idle_server("b", 3 * HOUR)))
    due = Snapshot.from_users(
        snap(idle_server("a", 2 * HOUR), idle_server("b", 3 * HOUR)).users, later(10 * MIN)
    )
    plan = decide(policy, due, warned=first.warned)
    assert stops(plan) == {("b", "", "idle")}
    assert [d.user for d in plan.held_back] == ["a"]
    assert set(plan.warned) == {("a", ""), ("b", "")}


def test_without_before_nothing_waits() -> None:
    for policy in (replace(WARN, warn=WarnSpec(before=0)), replace(WARN, warn=None)):
        plan = decide(policy, snap(idle_server("a", 2 * HOUR), idle_server("b", 55 * MIN)))
        assert stops(plan) == {("a", "", "idle")}
        assert plan.warnings == [] and plan.warned == {} and plan.next_due is None


def test_pending_and_excluded_servers_are_never_warned() -> None:
    policy = replace(WARN, exclude=replace(WARN.exclude, users=("ex",)))
    snapshot = snap(
        user("p", server("p", idle=2 * HOUR, age=9 * HOUR, pending="stop")),
        idle_server("ex", 2 * HOUR),
    )
    plan = decide(policy, snapshot)
    assert plan.warnings == [] and plan.skipped_pending == 1


def test_warn_memory_keeps_exactly_what_the_last_sweep_decided() -> None:
    memory = WarnMemory()
    plan = decide(WARN, snap(idle_server("a", 55 * MIN), idle_server("b", 2 * HOUR)))
    memory.keep(plan.warned)
    assert set(memory.recall()) == {("a", ""), ("b", "")}
    memory.keep({})
    assert memory.recall() == {}


# --------------------------------------------------------------------------- the guarantee


#: The sweep interval once the server stays idle.
TICK = 30


@settings(max_examples=300, deadline=None)
@given(
    before=st.integers(min_value=10, max_value=1800),
    idle_timeout=st.integers(min_value=1801, max_value=7200),
    max_age=st.one_of(st.just(0), st.integers(min_value=1801, max_value=20000)),
    steps=st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=4000),  # seconds to the next sweep
            st.booleans(),  # activity happened just before it
            st.booleans(),  # the operator restarted (memory lost) before it
        ),
        min_size=1,
        max_size=25,
    ),
)
def test_no_stop_for_idleness_or_max_age_comes_sooner_than_before_after_a_warning(
    before: int, idle_timeout: int, max_age: int, steps: list[tuple[int, bool, bool]]
) -> None:
    """One server, swept at arbitrary (coarse or fine) intervals, with activity and restarts
    in between: whenever it is stopped, a warning of the current run was given at least
    ``before`` earlier, after the last activity if the reason is idleness. Then it stays
    idle, swept every TICK seconds: it must be stopped, at the latest 2 ticks after the
    first limit (idleTimeout, maxAge) plus ``before`` from its warning."""
    policy = replace(BASE, idle_timeout=idle_timeout, max_age=max_age, warn=WarnSpec(before))
    started = NOW
    last_activity = NOW
    clock = NOW
    memory = WarnMemory()
    given: list[tuple[datetime, str]] = []  # warnings actually given (reported): when, why

    def sweep(gap: int, active: bool, restart: bool) -> bool:
        """Sweep ``gap`` seconds after the last one; whether it stopped the server."""
        nonlocal started, last_activity, clock, memory, given
        clock += timedelta(seconds=gap)
        if active:
            last_activity = clock - timedelta(seconds=1)
        if restart:
            memory = WarnMemory()
        srv = Server("ann", "", True, None, False, started, last_activity, None)
        snapshot = Snapshot.from_users([User("ann", False, (), None, None, (srv,))], clock)
        plan = decide(policy, snapshot, warned=memory.recall())
        memory.keep(plan.warned)
        given += [(w.warned.at, w.reason) for w in plan.warnings]
        if plan.stops:
            (stop,) = plan.stops
            assert stop.reason in ("idle", "maxAge")
            # a warning of this run, `before` ago or more; one about idleness must be about
            # this idle stretch (given after the last activity)
            enough = [
                (t, why)
                for t, why in given
                if t <= clock - timedelta(seconds=before) and (why != "idle" or t >= last_activity)
            ]
            assert enough, (stop, given, clock)
            # a stopped server is started again at once: a new run
            started = last_activity = clock
            memory = WarnMemory()
            given = []
            return True
        waiting = [*plan.warnings, *plan.pending]
        if waiting:
            assert plan.next_due is not None and plan.next_due > clock
        return False

    for gap, active, restart in steps:
        sweep(gap, active, restart)
    # the positive case: idle from now on, the server is stopped, and not much later than due
    limits = [last_activity + timedelta(seconds=idle_timeout)]
    if max_age:
        limits.append(started + timedelta(seconds=max_age))
    warn_from = max(clock, min(limits) - timedelta(seconds=before))
    deadline = warn_from + timedelta(seconds=before + 2 * TICK)
    while not sweep(TICK, False, False):
        assert clock <= deadline, f"not stopped {clock - deadline} after {deadline}"
