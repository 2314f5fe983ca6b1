"""The PromQL of spec.usage, as pure functions: durations, the coverage step, template
rendering, which queries a policy sends, and that the reference shows exactly what is sent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hubcull.engine.rules.policy import parse_spec
from hubcull.engine.signals.queries import (
    coverage_step,
    promql_duration,
    render,
    usage_queries,
)

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "cullpolicy-api.md"
HUB = {"url": "http://hub:8081/hub/api", "tokenSecretRef": {"name": "hub", "key": "t"}}


def usage_policy(idle_timeout: str = "1h", **usage: object):
    return parse_spec(
        {
            "hub": HUB,
            "idleTimeout": idle_timeout,
            "usage": {"prometheus": {"url": "http://p"}, **usage},
        }
    )


@pytest.mark.parametrize(
    ("seconds", "text"), [(600, "600s"), (60, "60s"), (90.5, "90500ms"), (86400, "86400s")]
)
def test_durations_are_prometheus_durations(seconds: float, text: str) -> None:
    assert promql_duration(seconds) == text


@pytest.mark.parametrize(
    ("idle_timeout", "step"), [(600, 60), (3600, 60), (3601, 61), (7200, 120), (86400, 1440)]
)
def test_the_coverage_step_is_a_minute_or_a_sixtieth_of_the_timeout(
    idle_timeout: float, step: float
) -> None:
    assert coverage_step(idle_timeout) == step


def test_render_replaces_only_the_two_placeholders() -> None:
    template = 'sum by (pod) (rate(x{namespace="{namespace}", a=~"{b}"}[{window}]))'
    assert (
        render(template, "jhub", 300) == 'sum by (pod) (rate(x{namespace="jhub", a=~"{b}"}[300s]))'
    )


def test_a_policy_sends_one_query_per_signal_it_switches_on() -> None:
    assert [q.signal for q in usage_queries(usage_policy(busyCPU=1), "jhub")] == ["cpu"]
    assert [q.signal for q in usage_queries(usage_policy(busyGPU=5), "jhub")] == ["gpu"]
    both = usage_policy(busyCPU=1, busyGPU=5, cullIdleGPU=True)
    assert [q.signal for q in usage_queries(both, "jhub")] == ["cpu", "gpu", "gpu-idle"]


def test_the_reference_shows_the_promql_hubcull_sends() -> None:
    """docs/cullpolicy-api.md: window 10m, idleTimeout 1h, namespace jhub."""
    [block] = re.findall(r"```promql\n(.*?)```", REFERENCE.read_text(encoding="utf-8"), re.S)
    documented = [part for part in re.split(r"(?:^#.*\n)+", block, flags=re.M) if part.strip()]
    policy = usage_policy(busyCPU=1, busyGPU=5, cullIdleGPU=True, window="10m")
    sent = [" ".join(q.promql.split()) for q in usage_queries(policy, "jhub")]
    assert [" ".join(part.split()) for part in documented] == sent
