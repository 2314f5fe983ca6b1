"""Deciding with kernel signals (spec.kernels), as pure functions: busy kernels protect from
idleness and capacity but not maxAge, idle time from kernels, and what is counted as kept."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from hubcull.engine.hub.model import Server
from hubcull.engine.rules.decisions import decide
from hubcull.engine.rules.policy import Capacity, KernelsSpec
from hubcull.engine.rules.signals import KernelActivity, ServerSignals
from hubcull.engine.sweep.memory import KernelMemory
from tests.support.decisions import BASE, NOW, ago, server, snap, stops, user

PROTECT = replace(BASE, kernels=KernelsSpec(protect_busy=True))
BY_KERNELS = replace(BASE, kernels=KernelsSpec(idle_from="kernels"))


def busy(silent: float) -> ServerSignals:
    """A kernel busy and silent for ``silent`` seconds, seen at NOW."""
    return ServerSignals(KernelActivity(NOW, ago(silent), busy_silent_seconds=silent, kernels=1))


def idle_kernels(idle: float) -> ServerSignals:
    return ServerSignals(KernelActivity(NOW, ago(idle), kernels=1))


def test_a_busy_kernel_keeps_an_idle_server_and_is_counted_as_protected() -> None:
    snapshot = snap(
        user("a", server("a", idle=7200, age=9000)), user("b", server("b", idle=7200, age=9000))
    )
    plan = decide(PROTECT, snapshot, signals={("a", ""): busy(7020)})
    assert stops(plan) == {("b", "", "idle")}
    assert [(p.label, p.why) for p in plan.protected] == [("a", "kernel busy for 1h57m")]
    assert plan.over_limit == 1


def test_without_protect_busy_a_busy_kernel_does_not_keep_its_server() -> None:
    snapshot = snap(user("a", server("a", idle=7200, age=9000)))
    plan = decide(BASE, snapshot, signals={("a", ""): busy(60)})
    assert stops(plan) == {("a", "", "idle")}
    assert plan.protected == []


def test_max_busy_ends_the_protection_of_a_kernel_busy_and_silent_too_long() -> None:
    policy = replace(BASE, kernels=KernelsSpec(protect_busy=True, max_busy=3600))
    snapshot = snap(
        user("a", server("a", idle=7200, age=9000)), user("b", server("b", idle=7200, age=9000))
    )
    plan = decide(policy, snapshot, signals={("a", ""): busy(3600), ("b", ""): busy(3601)})
    assert stops(plan) == {("b", "", "idle")}


def test_max_age_stops_a_busy_server() -> None:
    policy = replace(PROTECT, max_age=86400)
    snapshot = snap(user("a", server("a", idle=7200, age=90000)))
    plan = decide(policy, snapshot, signals={("a", ""): busy(60)})
    assert stops(plan) == {("a", "", "maxAge")}


def test_capacity_skips_busy_servers_and_takes_the_next_longest_idle() -> None:
    policy = replace(PROTECT, idle_timeout=0, capacity=Capacity(max_active_servers=2, min_idle=60))
    snapshot = snap(
        user("a", server("a", idle=5000, age=9000)),
        user("b", server("b", idle=4000, age=9000)),
        user("c", server("c", idle=3000, age=9000)),
    )
    plan = decide(policy, snapshot, signals={("a", ""): busy(100)})
    assert stops(plan) == {("b", "", "capacity")}
    assert [p.label for p in plan.protected] == ["a"]


def test_idle_from_kernels_judges_by_the_newest_kernel_activity() -> None:
    """The open-tab case: the Hub saw activity a minute ago, the kernels 2 h ago."""
    snapshot = snap(
        user("a", server("a", idle=60, age=9000)), user("b", server("b", idle=60, age=9000))
    )
    signals = {("a", ""): idle_kernels(7200), ("b", ""): idle_kernels(600)}
    plan = decide(BY_KERNELS, snapshot, signals=signals)
    assert stops(plan) == {("a", "", "idle")}
    (decision,) = plan.stops
    assert (decision.idle_seconds, decision.idle_from) == (7200, "kernels")
    assert stops(decide(BASE, snapshot, signals=signals)) == set()  # idleFrom: hub


def test_idle_from_kernels_with_no_kernel_and_no_terminal_falls_back_to_the_hub() -> None:
    snapshot = snap(user("a", server("a", idle=7200, age=9000)))
    none = ServerSignals(KernelActivity(NOW, None))
    plan = decide(BY_KERNELS, snapshot, signals={("a", ""): none})
    assert [(d.reason, d.idle_seconds, d.idle_from) for d in plan.stops] == [("idle", 7200, "hub")]


def test_kernel_times_are_judged_by_the_servers_clock() -> None:
    """Servers whose clocks run 10 minutes behind the Hub: their kernel times are compared
    with their own Date header, so a is not seen idle 10 minutes early (3000 s by its clock,
    3600 s by the Hub's) and b, idle 3700 s by its own clock, is."""
    behind = NOW - timedelta(minutes=10)
    quiet = {
        ("a", ""): KernelActivity(behind, behind - timedelta(seconds=3000), kernels=1),
        ("b", ""): KernelActivity(behind, behind - timedelta(seconds=3700), kernels=1),
    }
    snapshot = snap(
        user("a", server("a", idle=60, age=9000)), user("b", server("b", idle=60, age=9000))
    )
    signals = {key: ServerSignals(activity) for key, activity in quiet.items()}
    plan = decide(BY_KERNELS, snapshot, signals=signals)
    assert stops(plan) == {("b", "", "idle")}
    (decision,) = plan.stops
    assert (decision.idle_seconds, decision.idle_from) == (3700, "kernels")


def test_safety_limits_still_apply_to_kernel_decisions() -> None:
    policy = replace(BY_KERNELS, safety=replace(BASE.safety, max_culls_per_sweep=1))
    snapshot = snap(
        user("a", server("a", idle=60, age=9000)), user("b", server("b", idle=60, age=9000))
    )
    signals = {("a", ""): idle_kernels(7200), ("b", ""): idle_kernels(8000)}
    plan = decide(policy, snapshot, signals=signals)
    assert stops(plan) == {("b", "", "idle")}
    assert [(d.user, d.idle_from) for d in plan.held_back] == [("a", "kernels")]


def test_kernel_memory_skips_servers_that_cannot_be_idle_yet() -> None:
    memory = KernelMemory()
    srv: Server = server("a", idle=0, age=9000)
    memory.note(srv, KernelActivity(NOW, ago(600), kernels=1))
    assert memory.recall(srv, NOW, 3600) is not None
    assert memory.recall(srv, NOW + timedelta(seconds=3000), 3600) is None
    memory.note(srv, KernelActivity(NOW, ago(900), kernels=1))  # older: activity only moves on
    assert memory.recall(srv, NOW + timedelta(seconds=2999), 3600) is not None
    restarted = replace(srv, started=NOW)
    assert memory.recall(restarted, NOW, 3600) is None
    memory.keep_only([restarted])
    assert memory.recall(srv, NOW, 3600) is None
