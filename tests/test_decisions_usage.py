"""Deciding with usage readings (spec.usage), as pure functions: working servers are kept
from idleness and capacity but not maxAge, thresholds are exclusive, missing readings change
nothing, and cullIdleGPU stops servers whose GPUs stayed idle for the whole idleTimeout."""

from __future__ import annotations

from dataclasses import replace

from hubcull.engine.rules.decisions import decide
from hubcull.engine.rules.policy import Capacity, KernelsSpec, PrometheusSpec, Safety, UsageSpec
from hubcull.engine.rules.signals import KernelActivity, ServerSignals, UsageReading
from hubcull.engine.sweep.status import describe_cull
from tests.support.decisions import BASE, NOW, ago, server, snap, stops, user

PROM = PrometheusSpec(url="http://prometheus:9090")
WORKING = replace(BASE, usage=UsageSpec(PROM, window=600, busy_cpu=0.5, busy_gpu=10))
GPU_CULL = replace(BASE, usage=UsageSpec(PROM, window=600, busy_gpu=10, cull_idle_gpu=True))
HUB_IDLE = {"idle": 7200, "age": 9000}
HUB_FRESH = {"idle": 30, "age": 9000}


def reading(
    cpu: float | None = None, gpu: float | None = None, gpu_idle: float | None = None
) -> ServerSignals:
    return ServerSignals(usage=UsageReading(cpu, gpu, gpu_idle))


def test_a_working_server_is_kept_from_idleness_and_counted_with_why() -> None:
    snapshot = snap(
        user("cpu", server("cpu", **HUB_IDLE)),
        user("gpu", server("gpu", **HUB_IDLE)),
        user("quiet", server("quiet", **HUB_IDLE)),
    )
    signals = {("cpu", ""): reading(cpu=1.5), ("gpu", ""): reading(gpu=87.0)}
    plan = decide(WORKING, snapshot, signals=signals)
    assert stops(plan) == {("quiet", "", "idle")}
    assert [(p.label, p.why) for p in plan.protected] == [
        ("cpu", "CPU 1.5 cores over the last 10m"),
        ("gpu", "GPU 87% in the last 10m"),
    ]


def test_thresholds_are_exclusive() -> None:
    """Exactly busyCPU (busyGPU) is not working; just above is."""
    snapshot = snap(*(user(name, server(name, **HUB_IDLE)) for name in "abcd"))
    signals = {
        ("a", ""): reading(cpu=0.5),
        ("b", ""): reading(cpu=0.5001),
        ("c", ""): reading(gpu=10.0),
        ("d", ""): reading(gpu=10.01),
    }
    plan = decide(WORKING, snapshot, signals=signals)
    assert stops(plan) == {("a", "", "idle"), ("c", "", "idle")}
    assert [p.label for p in plan.protected] == ["b", "d"]


def test_a_threshold_of_zero_is_off() -> None:
    policy = replace(BASE, usage=UsageSpec(PROM, busy_cpu=0, busy_gpu=0, cull_idle_gpu=True))
    snapshot = snap(user("a", server("a", **HUB_IDLE)))
    plan = decide(policy, snapshot, signals={("a", ""): reading(cpu=8.0, gpu=100.0)})
    assert stops(plan) == {("a", "", "idle")}


def test_no_reading_leaves_the_decision_to_the_hub() -> None:
    snapshot = snap(user("idle", server("idle", **HUB_IDLE)), user("fresh", server("fresh")))
    plan = decide(GPU_CULL, snapshot, signals={("idle", ""): reading()})
    assert stops(plan) == {("idle", "", "idle")}
    assert plan.protected == []


def test_max_age_stops_a_working_server() -> None:
    policy = replace(WORKING, max_age=86400)
    snapshot = snap(user("a", server("a", idle=7200, age=90000)))
    plan = decide(policy, snapshot, signals={("a", ""): reading(gpu=99.0)})
    assert stops(plan) == {("a", "", "maxAge")}


def test_capacity_skips_working_servers_and_takes_the_next_longest_idle() -> None:
    policy = replace(WORKING, idle_timeout=0, capacity=Capacity(max_active_servers=2, min_idle=60))
    snapshot = snap(
        user("a", server("a", idle=5000, age=9000)),
        user("b", server("b", idle=4000, age=9000)),
        user("c", server("c", idle=3000, age=9000)),
    )
    plan = decide(policy, snapshot, signals={("a", ""): reading(cpu=2.0)})
    assert stops(plan) == {("b", "", "capacity")}
    assert [p.label for p in plan.protected] == ["a"]


def test_cull_idle_gpu_stops_a_hub_active_server_whose_gpu_stayed_idle() -> None:
    snapshot = snap(
        user("idle", server("idle", **HUB_FRESH)),
        user("busy", server("busy", **HUB_FRESH)),
        user("unknown", server("unknown", **HUB_FRESH)),
        user("cpu-only", server("cpu-only", **HUB_FRESH)),
    )
    signals = {
        ("idle", ""): reading(gpu_idle=10.0),  # exactly busyGPU: idle
        ("busy", ""): reading(gpu_idle=10.5),
        ("unknown", ""): reading(gpu=0.0),  # series too young to cover idleTimeout
    }
    plan = decide(GPU_CULL, snapshot, signals=signals)
    assert stops(plan) == {("idle", "", "idleGPU")}
    [decision] = plan.stops
    assert decision.idle_seconds == GPU_CULL.idle_timeout
    assert plan.over_limit == 1


def test_without_cull_idle_gpu_an_idle_gpu_changes_nothing() -> None:
    snapshot = snap(user("a", server("a", **HUB_FRESH)))
    assert stops(decide(WORKING, snapshot, signals={("a", ""): reading(gpu_idle=0.0)})) == set()


def test_cull_idle_gpu_needs_the_server_running_for_the_idle_timeout() -> None:
    """A restarted server keeps its pod name: the series may come from the previous run."""
    snapshot = snap(
        user("new", server("new", idle=30, age=3599)), user("old", server("old", idle=30, age=3600))
    )
    signals = {("new", ""): reading(gpu_idle=0.0), ("old", ""): reading(gpu_idle=0.0)}
    assert stops(decide(GPU_CULL, snapshot, signals=signals)) == {("old", "", "idleGPU")}


def test_busy_cpu_or_a_busy_kernel_keeps_an_idle_gpu_server() -> None:
    usage = replace(GPU_CULL.usage, busy_cpu=1.0)
    policy = replace(GPU_CULL, usage=usage, kernels=KernelsSpec(protect_busy=True))
    snapshot = snap(
        user("cpu", server("cpu", **HUB_FRESH)),
        user("kernel", server("kernel", **HUB_FRESH)),
        user("idle", server("idle", **HUB_FRESH)),
    )
    busy = KernelActivity(NOW, ago(60), busy_silent_seconds=60, kernels=1)
    signals = {
        ("cpu", ""): reading(cpu=3.0, gpu_idle=0.0),
        ("kernel", ""): ServerSignals(busy, UsageReading(gpu_idle_percent=0.0)),
        ("idle", ""): reading(cpu=0.2, gpu_idle=0.0),
    }
    plan = decide(policy, snapshot, signals=signals)
    assert stops(plan) == {("idle", "", "idleGPU")}
    assert [(p.label, p.why) for p in plan.protected] == [
        ("cpu", "CPU 3 cores over the last 10m"),
        ("kernel", "kernel busy for 1m"),
    ]


def test_gpu_busy_in_the_window_keeps_a_server_idle_over_the_timeout() -> None:
    """A window longer than idleTimeout can see work that idleTimeout no longer covers."""
    usage = replace(GPU_CULL.usage, window=7200)
    snapshot = snap(user("a", server("a", **HUB_FRESH)))
    plan = decide(replace(GPU_CULL, usage=usage), snapshot, signals={("a", ""): reading(40, 50, 5)})
    assert stops(plan) == set()
    assert [p.why for p in plan.protected] == ["GPU 50% in the last 2h"]


def test_hub_idleness_wins_the_reason_over_an_idle_gpu() -> None:
    snapshot = snap(user("a", server("a", **HUB_IDLE)))
    plan = decide(GPU_CULL, snapshot, signals={("a", ""): reading(gpu_idle=0.0)})
    assert stops(plan) == {("a", "", "idle")}


def test_idle_gpu_culls_obey_safety_limits_longest_idle_first() -> None:
    policy = replace(GPU_CULL, safety=Safety(max_culls_per_sweep=1))
    snapshot = snap(user("hub", server("hub", **HUB_IDLE)), user("gpu", server("gpu", **HUB_FRESH)))
    plan = decide(policy, snapshot, signals={("gpu", ""): reading(gpu_idle=0.0)})
    assert stops(plan) == {("hub", "", "idle")}
    assert [(d.user, d.reason) for d in plan.held_back] == [("gpu", "idleGPU")]


def test_an_idle_gpu_cull_is_described_by_its_gpu() -> None:
    snapshot = snap(user("bob", server("bob", "gpu", **HUB_FRESH)))
    plan = decide(GPU_CULL, snapshot, signals={("bob", "gpu"): reading(gpu_idle=0.0)})
    [decision] = plan.stops
    assert describe_cull(decision) == "bob/gpu (GPU idle 1h)"
