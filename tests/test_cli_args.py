"""``hubcull``'s argument parsing, manifest loading and summary line, without a Hub."""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from hubcull.cli import (
    API_VERSION,
    CLIError,
    Manifest,
    _parser,
    as_given,
    load_manifests,
    log_level,
    main,
    print_outcome,
    summary_line,
)
from hubcull.engine.rules.policy import parse_spec
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


# ------------------------------------------------------------------ what an admin trips over

ROOT = Path(__file__).resolve().parent.parent


def _refusal(tmp_path: Path, **spec: object) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(policy("p", **spec)))
    with pytest.raises(CLIError) as error:
        load_manifests([str(path)])
    assert error.value.code == 2
    return str(error.value)


PROMETHEUS = {"prometheus": {"url": "http://prometheus:9090"}, "busyCPU": 0.5}


def test_a_policy_only_the_operator_can_sweep_is_refused_naming_what_it_has(
    tmp_path: Path,
) -> None:
    """examples/kernels.yaml (via: pods) is told to use --proxy-url, never about spec.usage;
    a spec.usage policy is told about spec.usage, never about kernels."""
    with pytest.raises(CLIError) as error:
        load_manifests([str(ROOT / "examples" / "kernels.yaml")])
    kernels = str(error.value)
    assert "\n" not in kernels
    assert "spec.kernels.via: pods needs the servers' pods" in kernels
    assert "--proxy-url" in kernels and "spec.usage" not in kernels
    usage = _refusal(tmp_path, usage=PROMETHEUS)
    assert "spec.usage needs the servers' pods" in usage
    assert "kernels" not in usage and "--proxy-url" not in usage
    both = _refusal(tmp_path, usage=PROMETHEUS, kernels={"protectBusy": True})
    assert "spec.kernels.via: pods and spec.usage need the servers' pods" in both
    assert "--proxy-url" in both


def test_proxy_url_probes_the_kernels_of_a_via_pods_policy_through_the_proxy(
    tmp_path: Path,
) -> None:
    """--proxy-url turns each spec.kernels into via: proxy at that URL and keeps the rest
    of the block; policies without spec.kernels are left alone."""
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(policy("plain")))
    proxy = "http://127.0.0.1:8000"
    kernels, other = load_manifests(
        [str(ROOT / "examples" / "kernels.yaml"), str(plain)], proxy_url=proxy
    )
    assert kernels.policy.kernels is not None and other.policy.kernels is None
    assert (kernels.policy.kernels.via, kernels.policy.kernels.proxy_url) == ("proxy", proxy)
    example = yaml.safe_load((ROOT / "examples" / "kernels.yaml").read_text())
    assert example["spec"]["kernels"]["via"] == "pods"  # what the option replaces
    k = kernels.policy.kernels
    assert (k.protect_busy, k.max_busy, k.idle_from, k.timeout) == (True, 86400, "kernels", 10)
    assert kernels.replaced == (("spec.kernels.proxyURL", "--proxy-url"),)
    assert other.replaced == ()


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--proxy-url", "127.0.0.1:8000"], "hubcull: --proxy-url: '127.0.0.1:8000' must be an"),
        (["--proxy-url", "http://127.0.0.1:8000"], "hubcull: --proxy-url: CullPolicy p has no "),
    ],
    ids=["not-a-url", "no-kernels"],
)
def test_proxy_url_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    says: str,
) -> None:
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "x")
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(policy("p")))
    assert main(["sweep", "-f", str(path), "--once", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(says) and err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("api_version", "says"),
    [
        ("example.com/v9", 'no matches for kind "CullPolicy" in version "example.com/v9"'),
        ("hubcull.io/v1", 'no matches for kind "CullPolicy" in version "hubcull.io/v1"'),
        (None, "apiVersion is not set"),
    ],
)
def test_a_cullpolicy_of_another_api_version_is_refused(
    tmp_path: Path, api_version: str | None, says: str
) -> None:
    doc = policy("p")
    if api_version is None:
        del doc["apiVersion"]
    else:
        doc["apiVersion"] = api_version
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(CLIError) as error:
        load_manifests([str(path)])
    assert str(error.value) == f"{path}: CullPolicy p: {says} (hubcull serves only {API_VERSION})"


def test_every_files_errors_are_reported_not_only_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Four bad files and a good one: one line per problem, in file order, exit 2."""
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "x")
    foreign = policy("foreign")
    foreign["apiVersion"] = "example.com/v9"
    files = {
        "foreign.yaml": [foreign],
        "invalid.yaml": [policy("invalid", every="1s"), policy("usage", usage=PROMETHEUS)],
        "good.yaml": [policy("good")],
        "empty.yaml": [{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}],
        "broken.yaml": None,
    }
    argv = ["sweep", "--once"]
    for name, docs in files.items():
        path = tmp_path / name
        path.write_text(yaml.safe_dump_all(docs) if docs else "kind: [CullPolicy\n")
        argv += ["-f", str(path)]
    argv += ["-f", str(tmp_path / "missing.yaml")]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    expected = [
        ("foreign.yaml", 'no matches for kind "CullPolicy" in version "example.com/v9"'),
        ("invalid.yaml", "invalid CullPolicy invalid: spec.every"),
        ("invalid.yaml", "CullPolicy usage: spec.usage needs the servers' pods"),
        ("empty.yaml", "has no CullPolicy"),
        ("broken.yaml", "YAML syntax error"),
        ("missing.yaml", "cannot read"),
    ]
    assert len(lines) == len(expected), lines
    for line, (file, says) in zip(lines, expected, strict=True):
        assert line.startswith("hubcull: ") and file in line and says in line, line


def test_a_failed_sweep_is_one_line_on_stderr_naming_the_options_given(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Printed once (stderr, not also stdout), in every output; with --hub-url, the advice
    names --hub-url, in the line and in the status's Ready condition."""
    given = Manifest("down", "jhub", "p.yaml", parse_spec(policy("down")["spec"]))
    given = dataclasses.replace(given, replaced=(("spec.hub.url", "--hub-url"),))
    outcome = as_given(
        given, failed(None, "HubUnreachable", "the Hub at http://x/hub/api cannot be reached", 1)
    )
    assert "spec.hub.url" not in (outcome.message or "")
    assert "check --hub-url and that the Hub is running" in (outcome.message or "")
    [ready] = outcome.status["conditions"]
    assert ready["message"] == outcome.message
    for output in ("text", "status", "yaml"):
        print_outcome(given, outcome, output)
        out, err = capsys.readouterr()
        assert (
            err
            == f"hubcull: [down] sweep failed, Ready False (HubUnreachable): {ready['message']}\n"
        )
        assert "sweep failed" not in out and "HubUnreachable" not in out.replace(
            "reason: HubUnreachable", ""
        ), (output, out)
    plain = dataclasses.replace(given, replaced=())
    assert as_given(plain, failed(None, "HubUnreachable", "x", 1)).message == (
        "X; check spec.hub.url and that the Hub is running and reachable from hubcull."
    )
