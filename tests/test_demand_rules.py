"""spec.demand's pure rules: quantities, waiting pods, what they lack, and the victims."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubcull.engine.rules.demand import (
    DemandSpec,
    Judged,
    ServerHold,
    WaitingPod,
    choose_victims,
    classify,
    demand_data,
    helps,
    lacking_resources,
    pod_facts,
    pod_requests,
    scale_ups,
)
from hubcull.engine.rules.quantities import QuantityError, format_quantity, parse_quantity
from tests.support.demand_pods import unschedulable_status

NOW = datetime(2026, 12, 6, 2, 0, tzinfo=timezone.utc)
GPU = "nvidia.com/gpu"
GPU_MESSAGE = (
    "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. no new claims to deallocate, "
    "preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
)
SPEC = DemandSpec(min_idle=900, after=30, scale_up_wait=240)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2", Fraction(2)),
        ("500m", Fraction(1, 2)),
        ("1.5", Fraction(3, 2)),
        ("0.1", Fraction(1, 10)),
        (".5", Fraction(1, 2)),
        ("1.", Fraction(1)),
        ("100Ki", Fraction(102400)),
        ("1Gi", Fraction(2**30)),
        ("1.5Gi", Fraction(3 * 2**29)),
        ("1M", Fraction(10**6)),
        ("1k", Fraction(1000)),
        ("1E", Fraction(10**18)),
        ("1e3", Fraction(1000)),
        ("1E3", Fraction(1000)),
        ("1e-3", Fraction(1, 1000)),
        ("12e+2", Fraction(1200)),
        ("+1", Fraction(1)),
        ("-1", Fraction(-1)),
        ("0", Fraction(0)),
        ("250m", Fraction(1, 4)),
        (3, Fraction(3)),
        (0.25, Fraction(1, 4)),
    ],
)
def test_quantities_parse_like_kubernetes(text: object, value: Fraction) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize(
    "bad", ["", "1K", "1e", "1 Gi", "Gi", "1gi", "1.2.3", ".", "1Mi3", "one", None, True, [1]]
)
def test_bad_quantities_are_refused(bad: object) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(bad)


def test_quantities_print_short() -> None:
    assert format_quantity(Fraction(1, 2)) == "500m"
    assert format_quantity(Fraction(2)) == "2"
    assert format_quantity(Fraction(4 * 2**30), "memory") == "4Gi"


def test_pod_requests_sum_containers_default_to_limits_and_name_bad_values() -> None:
    spec = {
        "containers": [
            {"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {GPU: "1"}}},
            {"resources": {"requests": {"cpu": "0.5", "memory": "bad"}}},
        ],
        "initContainers": [{"resources": {"requests": {"cpu": "2"}}}],
    }
    requests, problems = pod_requests(spec)
    assert requests == {"cpu": Fraction(2), "memory": Fraction(2**30), GPU: Fraction(1)}
    assert problems == ["memory: 'bad' is not a quantity (like 500m, 2, 1Gi or 1e3)"]
    assert pod_requests({"containers": [{"name": "x"}, "junk"]}) == ({}, [])


@pytest.mark.parametrize(
    ("message", "lacking"),
    [
        (GPU_MESSAGE, (GPU,)),
        ("0/3 nodes are available: 3 Insufficient cpu.", ("cpu",)),
        ("0/3 nodes are available: 1 Insufficient cpu, 2 Insufficient memory.", ("cpu", "memory")),
        ("0/2 nodes are available: 2 Insufficient example.com/foo-bar.", ("example.com/foo-bar",)),
        (
            "0/1 nodes are available: 1 node(s) had untolerated taint {gpu: true}. preemption: "
            "0/1 nodes are available: 1 Preemption is not helpful for scheduling.",
            (),
        ),
        ("0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.", ()),
        ("", ()),
    ],
)
def test_lacking_resources_come_from_the_scheduler_message(message: str, lacking: tuple) -> None:
    assert lacking_resources(message) == lacking


def pending_pod(
    name: str = "jupyter-newcomer",
    *,
    since: float = 60,
    message: str = GPU_MESSAGE,
    requests: dict | None = None,
    limits: dict | None = None,
    node_selector: dict | None = None,
    labels: dict | None = None,
    nominated: str | None = None,
    deleting: bool = False,
    owner: dict | None = None,
    user: str = "newcomer",
) -> dict:
    metadata: dict = {
        "name": name,
        "labels": {"component": "singleuser-server", **(labels or {})},
        "annotations": {"hub.jupyter.org/username": user},
    }
    if deleting:
        metadata["deletionTimestamp"] = "2026-12-06T01:59:00Z"
    if owner:
        metadata["ownerReferences"] = [owner]
    status = unschedulable_status(message, NOW - timedelta(seconds=since), nominated)
    resources = {"requests": requests or {GPU: "1"}}
    if limits:
        resources["limits"] = limits
    spec = {"containers": [{"name": "notebook", "resources": resources}]}
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {"metadata": metadata, "spec": spec, "status": status}


def test_a_pod_waits_after_after() -> None:
    assert classify(pod_facts(pending_pod(since=31)), SPEC, NOW).state == "waiting"
    later = classify(pod_facts(pending_pod(since=10)), SPEC, NOW)
    assert later.state == "later"
    assert later.due == NOW + timedelta(seconds=20)


@pytest.mark.parametrize(
    ("pod", "why"),
    [
        (pending_pod(nominated="node-2"), "nominated for node node-2"),
        (pending_pod(deleting=True), "being deleted"),
        (
            pending_pod(
                labels={"component": "user-placeholder"},
                owner={"kind": "StatefulSet", "name": "user-placeholder", "controller": True},
            ),
            "a z2jh user placeholder",
        ),
        (
            pending_pod(owner={"kind": "StatefulSet", "name": "user-placeholder"}),
            "a z2jh user placeholder",
        ),
    ],
)
def test_pods_that_do_not_wait(pod: dict, why: str) -> None:
    assert classify(pod_facts(pod), SPEC, NOW).why == why


def test_scale_up_waits_scale_up_wait_and_not_trigger_does_not() -> None:
    facts = pod_facts(pending_pod(since=60))
    triggered = classify(facts, SPEC, NOW, "triggered")
    assert triggered.state == "later"
    assert triggered.due == NOW + timedelta(seconds=180)
    assert classify(facts, SPEC, NOW, "not_triggered").state == "waiting"
    assert classify(facts, DemandSpec(900, 30, 0), NOW, "triggered").state == "waiting"


def test_scale_up_events_the_newest_wins() -> None:
    def event(reason: str, at: str, name: str = "jupyter-newcomer", kind: str = "Pod") -> dict:
        return {
            "reason": reason,
            "involvedObject": {"kind": kind, "name": name},
            "lastTimestamp": at,
        }

    events = [
        event("TriggeredScaleUp", "2026-12-06T01:59:10Z"),
        event("NotTriggerScaleUp", "2026-12-06T01:59:40Z"),
        event("TriggeredScaleUp", "2026-12-06T01:59:00Z", name="jupyter-other"),
        event("FailedScheduling", "2026-12-06T01:59:50Z", name="jupyter-x"),
        event("TriggeredScaleUp", "2026-12-06T01:59:50Z", name="node-1", kind="Node"),
    ]
    assert scale_ups(events) == {"jupyter-newcomer": "not_triggered", "jupyter-other": "triggered"}


def test_demand_data_reads_waiting_pods_holds_and_the_next_due() -> None:
    running = {
        "metadata": {
            "name": "jupyter-alice",
            "labels": {"component": "singleuser-server"},
            "annotations": {"hub.jupyter.org/username": "alice"},
        },
        "spec": {
            "nodeName": "gpu-1",
            "nodeSelector": {"pool": "gpu"},
            "containers": [{"resources": {"limits": {GPU: "1"}}}],
        },
        "status": {"phase": "Running"},
    }
    data = demand_data(
        SPEC,
        [pending_pod(since=100), pending_pod("jupyter-soon", since=5, user="soon"), running],
        [],
        NOW,
    )
    assert [p.name for p in data.waiting] == ["jupyter-newcomer"]
    assert data.waiting[0].lacking == (GPU,)
    assert data.waiting[0].requests == {GPU: Fraction(1)}
    assert data.next_due == NOW + timedelta(seconds=25)
    hold = data.holds[("alice", "")]
    assert hold.scheduled and hold.node == "gpu-1" and hold.requests == {GPU: Fraction(1)}
    assert not data.holds[("soon", "")].scheduled


def test_unfreeable_pods_are_reported_not_helped() -> None:
    message = "0/1 nodes are available: 1 node(s) had volume node affinity conflict."
    data = demand_data(SPEC, [pending_pod(message=message)], [], NOW)
    assert [p.name for p in data.unfreeable] == ["jupyter-newcomer"]
    hold = ServerHold(("alice", ""), "jupyter-alice", "n1", {GPU: Fraction(1)})
    assert choose_victims(data.waiting, {hold.key: hold}, [Judged(hold.key, 99999)], 60) == []


def wait(name: str, need: dict, selector: dict | None = None, minutes: int = 5) -> WaitingPod:
    return WaitingPod(
        name,
        NOW - timedelta(minutes=minutes),
        tuple(need),
        {r: Fraction(v) for r, v in need.items()},
        selector or {},
    )


def hold(
    user: str, node: str = "n1", selector: dict | None = None, **requests: float
) -> ServerHold:
    req = {("nvidia.com/gpu" if r == "gpu" else r): Fraction(v) for r, v in requests.items()}
    return ServerHold((user, ""), f"jupyter-{user}", node, req, selector or {})


def test_the_idlest_gpu_server_is_chosen_not_the_idle_cpu_server() -> None:
    holds = {
        h.key: h for h in [hold("cpu", cpu=4), hold("gpu1", gpu=1, cpu=1), hold("gpu2", gpu=1)]
    }
    judged = [Judged(("cpu", ""), 99999), Judged(("gpu1", ""), 5000), Judged(("gpu2", ""), 8000)]
    victims = choose_victims([wait("p", {GPU: 1})], holds, judged, 900)
    assert [(v.key, v.pod, v.frees) for v in victims] == [(("gpu2", ""), "p", (GPU,))]


def test_protected_young_and_mismatched_servers_are_never_victims() -> None:
    holds = {
        h.key: h
        for h in [
            hold("busy", gpu=1),
            hold("young", gpu=1),
            hold("other-pool", gpu=1, selector={"pool": "b"}),
        ]
    }
    judged = [
        Judged(("busy", ""), 99999, "kernel busy for 2h"),
        Judged(("young", ""), 100),
        Judged(("other-pool", ""), 99999),
    ]
    assert choose_victims([wait("p", {GPU: 1}, {"pool": "a"})], holds, judged, 900) == []


def test_two_waiting_one_idle_server_one_stop() -> None:
    holds = {("a", ""): hold("a", gpu=1)}
    victims = choose_victims(
        [wait("p1", {GPU: 1}, minutes=9), wait("p2", {GPU: 1})],
        holds,
        [Judged(("a", ""), 9999)],
        60,
    )
    assert [(v.key, v.pod) for v in victims] == [(("a", ""), "p1")]


def test_as_few_servers_as_cover_the_request_on_one_node() -> None:
    holds = {
        h.key: h
        for h in [
            hold("one-a", "n1", gpu=1),
            hold("two", "n1", gpu=2),
            hold("one-b", "n2", gpu=1),
        ]
    }
    judged = [Judged(("one-a", ""), 9000), Judged(("two", ""), 5000), Judged(("one-b", ""), 8000)]
    victims = choose_victims([wait("p", {GPU: 2})], holds, judged, 60)
    assert [v.key for v in victims] == [("two", "")]
    # two one-GPU servers on different nodes cannot make room for a two-GPU pod
    del holds[("two", "")]
    assert choose_victims([wait("p", {GPU: 2})], holds, judged, 60) == []


# --- property ---------------------------------------------------------------------------------

RESOURCES = ["cpu", "memory", GPU]


@st.composite
def scenes(draw):
    n_servers = draw(st.integers(0, 8))
    holds, judged = {}, []
    for i in range(n_servers):
        key = (f"u{i}", "")
        requests = {
            r: Fraction(draw(st.integers(0, 3)))
            for r in draw(st.lists(st.sampled_from(RESOURCES), unique=True, max_size=3))
        }
        selector = draw(st.sampled_from([{}, {"pool": "a"}, {"pool": "b"}]))
        holds[key] = ServerHold(
            key,
            f"pod{i}",
            draw(st.sampled_from(["n1", "n2"])),
            requests,
            selector,
            draw(st.booleans()),
        )
        judged.append(
            Judged(
                key,
                draw(st.one_of(st.none(), st.floats(0, 10000))),
                draw(st.sampled_from([None, None, "kernel busy"])),
            )
        )
    waiting = []
    for i in range(draw(st.integers(0, 4))):
        lacking = draw(st.lists(st.sampled_from(RESOURCES), unique=True, max_size=2))
        waiting.append(
            WaitingPod(
                f"w{i}",
                NOW,
                tuple(lacking),
                {r: Fraction(draw(st.integers(0, 4))) for r in lacking},
                draw(st.sampled_from([{}, {"pool": "a"}])),
            )
        )
    return waiting, holds, judged, draw(st.floats(1, 5000))


@settings(max_examples=400, deadline=None)
@given(scenes())
def test_victims_property(scene) -> None:
    waiting, holds, judged, min_idle = scene
    victims = choose_victims(waiting, holds, judged, min_idle)
    by_key = {j.key: j for j in judged}
    pods = {p.name: p for p in waiting}
    assert len({v.key for v in victims}) == len(victims)  # a server at most once
    for v in victims:
        judgement = by_key[v.key]
        assert judgement.idle is not None and judgement.idle >= min_idle
        assert judgement.protected is None
        assert helps(holds[v.key], pods[v.pod])
    for pod in waiting:
        mine = [holds[v.key] for v in victims if v.pod == pod.name]
        if not mine:
            continue
        assert len({h.node for h in mine}) == 1
        for resource in pod.lacking:
            freed = sum(h.requests.get(resource, Fraction(0)) for h in mine)
            assert freed > 0 and freed >= pod.requests[resource]
        for drop in mine:  # no waiting pod gets more victims than it needs
            rest = [h for h in mine if h is not drop]
            assert not rest or not all(
                sum(h.requests.get(r, Fraction(0)) for h in rest)
                >= max(pod.requests[r], Fraction(1, 10**9))
                for r in pod.lacking
            )


def test_hubcull_sweep_refuses_spec_demand_with_one_line(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The example is a valid policy, but only the operator can watch pods."""
    from hubcull.cli import main

    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "x")
    example = Path(__file__).parent.parent / "examples" / "demand.yaml"
    assert main(["sweep", "-f", str(example), "--once"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "spec.demand" in err and "hubcull run" in err, err


def test_each_waiting_pod_gets_its_own_victims() -> None:
    holds = {h.key: h for h in [hold("a", gpu=1), hold("b", gpu=1), hold("c", "n2", cpu=1)]}
    judged = [Judged(("a", ""), 9000), Judged(("b", ""), 8000), Judged(("c", ""), 7000)]
    pods = [wait("p1", {GPU: 1}, minutes=9), wait("p2", {GPU: 1}), wait("p3", {"cpu": 1})]
    victims = choose_victims(pods, holds, judged, 60)
    assert [(v.key[0], v.pod) for v in victims] == [("a", "p1"), ("b", "p2"), ("c", "p3")]


def test_demand_with_pods_in_another_namespace_is_refused() -> None:
    from hubcull.engine.rules.policy import PolicyError, parse_spec

    hub = {"url": "http://hub/hub/api", "tokenSecretRef": {"name": "h", "key": "k"}}
    spec = {
        "hub": hub,
        "kernels": {"protectBusy": True, "podNamespace": "jhub-users"},
        "demand": {"minIdle": "15m"},
    }
    with pytest.raises(PolicyError, match=r"spec\.demand: watches the singleuser pods"):
        parse_spec(spec)
