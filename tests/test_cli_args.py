"""``hubcull``'s argument parsing, manifest loading and summary line, without a Hub."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from hubcull.cli import _parser, load_manifests, log_level, summary_line
from hubcull.engine.sweep.records import SweepResult
from hubcull.engine.sweep.runner import SweepOutcome, failed, suspended
from tests.support.scenario import TOKEN_REF

CLUSTER_URL = "http://hub:8081/hub/api"


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["sweep", "-f", "p.yaml"], logging.WARNING),
        (["-v", "sweep", "-f", "p.yaml"], logging.INFO),
        (["sweep", "-f", "p.yaml", "-v"], logging.INFO),  # refused before: -v after sweep
        (["sweep", "-v", "-f", "p.yaml"], logging.INFO),
        (["sweep", "-f", "p.yaml", "-vv"], logging.DEBUG),
        (["-v", "sweep", "-f", "p.yaml", "--verbose"], logging.DEBUG),  # they add up
        (["run", "--namespace", "jhub"], logging.INFO),  # the operator: a line per action
        (["run", "--namespace", "jhub", "-v"], logging.DEBUG),
        (["-vvv", "run"], logging.DEBUG),
    ],
)
def test_verbose_works_before_and_after_the_subcommand(argv: list[str], level: int) -> None:
    assert log_level(_parser().parse_args(argv)) == level


def policy(name: str, url: str = CLUSTER_URL, **spec: object) -> dict:
    return {
        "apiVersion": "hubcull.io/v1alpha1",
        "kind": "CullPolicy",
        "metadata": {"name": name, "namespace": "jhub"},
        "spec": {"hub": {"url": url, "tokenSecretRef": TOKEN_REF}, **spec},
    }


def test_every_cullpolicy_of_every_file_is_loaded_in_order(tmp_path: Path) -> None:
    pair = tmp_path / "pair.yaml"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hub"}}
    pair.write_text(
        yaml.safe_dump_all([policy("gpu", every="1m"), secret, None, policy("everyone")])
    )
    listed = tmp_path / "list.yaml"  # as `kubectl get cullpolicies -o yaml` writes them
    listed.write_text(yaml.safe_dump({"kind": "List", "items": [policy("research")]}))
    manifests = load_manifests([str(pair), str(listed)])
    assert [(m.name, m.path) for m in manifests] == [
        ("gpu", str(pair)),
        ("everyone", str(pair)),
        ("research", str(listed)),
    ]
    assert [m.policy.every for m in manifests] == [60, 600, 600]
    assert {m.policy.hub.url for m in manifests} == {CLUSTER_URL}


def test_hub_url_replaces_every_policys_url_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    no_hub = policy("bare")
    del no_hub["spec"]["hub"]["url"]
    path.write_text(
        yaml.safe_dump_all(
            [
                policy(
                    "a",
                    hub={"url": CLUSTER_URL, "tokenSecretRef": TOKEN_REF, "requestTimeout": "5s"},
                ),
                no_hub,
            ]
        )
    )
    local = "http://127.0.0.1:8081/hub/api"
    first, bare = load_manifests([str(path)], hub_url=local)
    assert first.policy.hub.url == local and first.policy.hub.request_timeout == 5
    assert bare.policy.hub.url == local  # a policy without spec.hub.url works with --hub-url


def _result(dry_run: bool) -> SweepResult:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return SweepResult(now, 0.1, "5.3.0", now, "hub", dry_run, 14, 3, 0)


@pytest.mark.parametrize(
    ("outcome", "line"),
    [
        (
            SweepOutcome(
                {
                    "serversRunning": 14,
                    "serversIdle": 3,
                    "culledLastSweep": 2,
                    "failedLastSweep": 1,
                },
                result=_result(False),
            ),
            "swept 14 running servers: 3 over a limit, culled 2, 1 failed",
        ),
        (
            SweepOutcome(
                {
                    "serversRunning": 1,
                    "serversIdle": 1,
                    "culledLastSweep": 1,
                    "serversProtected": 2,
                },
                result=_result(True),
            ),
            "swept 1 running server: 1 over a limit, would cull 1, 0 failed, 2 protected (dry run)",
        ),
        (
            failed(None, "Forbidden", "the token lacks list:users", None),
            "sweep failed, Ready False (Forbidden): The token lacks list:users; add the scope",
        ),
        (suspended(None, None), "suspended: Sweeps are suspended by spec.suspend"),
    ],
    ids=["culled", "dry-run", "failed", "suspended"],
)
def test_summary_line(outcome: SweepOutcome, line: str) -> None:
    assert summary_line(outcome).startswith(line)
