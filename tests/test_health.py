"""The operator's liveness signal (hubcull.k8s.health) and its kopf probe, without kopf
running: what turns ``/healthz`` red, and what turns it green again."""

from __future__ import annotations

import logging
from pathlib import Path

import kopf
import pytest

from hubcull.k8s.handlers import api_server_probe
from hubcull.k8s.health import (
    DEFAULT_GRACE_SECONDS,
    GRACE_ENV,
    HEARTBEAT_SECONDS,
    ApiHealth,
    NoCredentialsError,
    find_credentials,
    grace_from_env,
)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_healthy_until_the_grace_period_passes_without_contact() -> None:
    clock = Clock()
    health = ApiHealth(grace=30, clock=clock)
    assert health.problem() is None  # a fresh operator gets the grace period
    clock.now += 30
    assert health.problem() is None
    health.lost("cannot reach the Kubernetes API server at https://k8s: ConnectError: refused")
    clock.now += 0.5
    problem = health.problem()
    assert problem is not None
    assert problem.startswith("no successful contact with the Kubernetes API server (not for 30s)")
    assert problem.endswith("ConnectError: refused")
    health.contact()
    assert health.problem() is None and health.last_problem is None


def test_a_failed_login_is_unhealthy_at_once_until_a_login_works() -> None:
    clock = Clock()
    health = ApiHealth(grace=30, clock=clock)
    health.contact()
    health.login_failed("no Kubernetes credentials: no in-cluster service account")
    assert health.problem() == (
        "cannot log in to Kubernetes: no Kubernetes credentials: no in-cluster service account"
    )
    health.contact()  # a round with the old credentials does not clear a failed login
    assert health.problem() is not None
    health.login_succeeded()
    assert health.problem() is None


def test_rounds_run_often_enough_to_see_the_grace_period() -> None:
    assert ApiHealth(grace=3).interval == 1
    assert ApiHealth(grace=DEFAULT_GRACE_SECONDS).interval == HEARTBEAT_SECONDS


def test_the_probe_raises_so_that_kopf_answers_500(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    health = ApiHealth(grace=10, clock=clock)
    memo = kopf.Memo(health=health)
    assert api_server_probe(memo=memo) == {"lastContactSecondsAgo": 0.0, "graceSeconds": 10}
    clock.now += 11
    with pytest.raises(kopf.PermanentError, match="no successful contact"):
        api_server_probe(memo=memo)
    assert api_server_probe(memo=kopf.Memo()) == {"monitored": False}


@pytest.mark.parametrize(
    ("value", "grace"),
    [
        (None, DEFAULT_GRACE_SECONDS),
        ("", DEFAULT_GRACE_SECONDS),
        ("5", 5.0),
        ("0.5", 2.0),
        ("soon", DEFAULT_GRACE_SECONDS),
    ],
)
def test_grace_from_the_environment(value: str | None, grace: float) -> None:
    assert grace_from_env({} if value is None else {GRACE_ENV: value}) == grace


def test_no_credentials_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kubernetes.config.kube_config

    missing = str(tmp_path / "nonexistent" / "kubeconfig")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config either
    monkeypatch.setenv("KUBECONFIG", missing)
    # the kubernetes client reads $KUBECONFIG once, at import
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", missing)
    with pytest.raises(NoCredentialsError) as error:
        find_credentials(kopf.OperatorSettings(), logging.getLogger("test"))
    message = str(error.value)
    assert message.startswith("no Kubernetes credentials: no in-cluster service account")
    assert missing in message and "\n" not in message
