"""The policy model: every spec field, its default, and a clear error for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hubcull.engine.durations import DurationError, format_duration, parse_duration
from hubcull.engine.rules.policy import PolicyError, parse_spec

HUB = {"url": "http://hub:8081/hub/api", "tokenSecretRef": {"name": "hub", "key": "token"}}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0),
        (3600, 3600),
        ("0", 0),
        ("90s", 90),
        ("10m", 600),
        ("1h30m", 5400),
        ("2d", 172800),
        ("1.5h", 5400),
        ("1d2h3m4s", 93784),
    ],
)
def test_durations_parse_ints_and_go_style_strings(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value", [-1, "-5m", "5w", "10 m", "1h 30m", "", "m", "1.5", True, None, [], "1e3s", 1.5]
)
def test_durations_reject_what_the_crd_rejects(value: object) -> None:
    with pytest.raises(DurationError):
        parse_duration(value)


def test_format_duration_reads_like_an_idle_time() -> None:
    assert format_duration(4320) == "1h12m"
    assert format_duration(45) == "45s"
    assert format_duration(2 * 86400 + 3600) == "2d1h"


def test_minimal_spec_gets_every_contract_default() -> None:
    policy = parse_spec({"hub": HUB})
    assert policy.hub.url == "http://hub:8081/hub/api"
    assert (policy.hub.token_secret.name, policy.hub.token_secret.key) == ("hub", "token")
    assert policy.hub.ca_secret is None
    assert policy.hub.request_timeout == 60
    assert policy.every == 600
    assert policy.idle_timeout == 3600
    assert policy.max_age == 0
    assert (policy.servers.default, policy.servers.named, policy.servers.remove_named) == (
        True,
        True,
        False,
    )
    assert (policy.users.cull, policy.users.include_admins) == (False, False)
    assert policy.selector.users == policy.selector.groups == ()
    assert policy.selector.servers == policy.selector.profiles == ()
    assert policy.exclude.users == policy.exclude.groups == ()
    assert policy.exclude.admins is False
    assert (policy.safety.max_culls_per_sweep, policy.safety.max_cull_percent) == (0, 100)
    assert (policy.capacity.max_active_servers, policy.capacity.min_idle) == (0, 600)
    assert (policy.concurrency, policy.page_size) == (10, 200)
    assert (policy.dry_run, policy.suspend) == (False, False)


def test_full_spec_is_read_field_by_field() -> None:
    policy = parse_spec(
        {
            "hub": {**HUB, "caSecretRef": {"name": "ca", "key": "ca.crt"}, "requestTimeout": "5s"},
            "every": "30s",
            "idleTimeout": "15m",
            "maxAge": "1d",
            "servers": {"default": False, "named": True, "removeNamed": True},
            "users": {"cull": True, "includeAdmins": True},
            "selector": {
                "users": ["a*"],
                "groups": ["g"],
                "servers": ["", "gpu*"],
                "profiles": ["gpu"],
            },
            "exclude": {
                "users": ["root"],
                "groups": ["staff"],
                "servers": ["keep"],
                "profiles": ["cpu"],
                "admins": True,
            },
            "safety": {"maxCullsPerSweep": 5, "maxCullPercent": 20},
            "capacity": {"maxActiveServers": 50, "minIdle": "5m"},
            "concurrency": 20,
            "pageSize": 50,
            "dryRun": True,
            "suspend": True,
        }
    )
    assert policy.hub.ca_secret is not None and policy.hub.ca_secret.key == "ca.crt"
    assert policy.hub.request_timeout == 5
    assert (policy.every, policy.idle_timeout, policy.max_age) == (30, 900, 86400)
    assert policy.servers.default is False and policy.servers.remove_named is True
    assert policy.users.include_admins is True
    assert policy.selector.servers == ("", "gpu*") and policy.selector.profiles == ("gpu",)
    assert policy.exclude.admins is True and policy.exclude.profiles == ("cpu",)
    assert policy.safety.max_cull_percent == 20 and policy.capacity.min_idle == 300
    assert (policy.concurrency, policy.page_size, policy.dry_run, policy.suspend) == (
        20,
        50,
        True,
        True,
    )
    assert policy.needs_groups


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "spec.hub.url: is required"),
        ({"hub": {**HUB, "url": "hub:8081/hub/api"}}, "must be an http:// or https:// URL"),
        ({"hub": {**HUB, "url": "ftp://hub/hub/api"}}, "must be an http:// or https:// URL"),
        ({"hub": {"url": HUB["url"]}}, "spec.hub.tokenSecretRef: is required"),
        ({"hub": {**HUB, "tokenSecretRef": {"name": "hub"}}}, "tokenSecretRef.key: is required"),
        ({"hub": HUB, "every": "5s"}, "spec.every: must be at least 10s"),
        ({"hub": HUB, "idleTimeout": "5w"}, "spec.idleTimeout: '5w' is not a duration"),
        ({"hub": HUB, "idleTimeout": -1}, "spec.idleTimeout: -1 is negative"),
        ({"hub": HUB, "safety": {"maxCullPercent": 101}}, "maxCullPercent: must be 0 to 100"),
        ({"hub": HUB, "concurrency": 0}, "spec.concurrency: must be 1 to 100"),
        ({"hub": HUB, "pageSize": 0}, "spec.pageSize: must be 1 to 1000"),
        (
            {"hub": HUB, "servers": {"default": "yes"}},
            "spec.servers.default: must be true or false",
        ),
        ({"hub": HUB, "selector": {"users": "alice"}}, "selector.users: must be a list of strings"),
        ({"hub": HUB, "users": {"includeAdmins": True}}, "only has a meaning with"),
        ({"hub": HUB, "idleTimout": "1h"}, "spec: unknown field(s) idleTimout"),
        (
            {"hub": HUB, "servers": {"named": False, "removeNamed": True}},
            "needs spec.servers.named",
        ),
        ({"hub": HUB, "servers": {"named": False, "default": False}}, "the policy culls nothing"),
        ({"hub": HUB, "idleTimeout": 0}, "idleTimeout, maxAge and capacity.maxActiveServers"),
        ({"hub": HUB, "every": "0d9s"}, "spec.every: must be at least 10s"),
        ({"hub": {**HUB, "requestTimeout": 0}}, "requestTimeout: must be at least 1s"),
        ({"hub": HUB, "selector": {"admins": True}}, "spec.selector: unknown field(s) admins"),
    ],
)
def test_bad_specs_name_the_field(spec: dict, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_spec(spec)
    assert message in str(info.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(PolicyError) as info:
        parse_spec({"hub": HUB, "every": "1s", "concurrency": -3, "maxAge": "x"})
    assert len(info.value.problems) == 3


EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_policy_parses_in_the_engine(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert doc["kind"] == "CullPolicy"
    parse_spec(doc["spec"])
