"""One policy's controller between sweeps, on a real Hub: how often it reads its token Secret
and what it does when the Hub refuses the token it kept. The Kubernetes side is a small
recorder of Secret reads and status patches (the kopf operator on kmock is in
tests/test_operator_e2e.py)."""

from __future__ import annotations

from typing import Any

import pytest

import hubcull.k8s.controller as controller_module
from hubcull.k8s.controller import SECRET_REREAD_SECONDS, PolicyController
from hubcull.k8s.metrics import Metrics
from tests.support.controller_env import SecretsAndStatus
from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.scenario import ago, populate, spec_for

pytestmark = pytest.mark.hub

HOUR = 3600


def ready(status: dict[str, Any]) -> dict[str, Any]:
    """The Ready condition of a status."""
    return next(c for c in status["conditions"] if c["type"] == "Ready")


async def test_the_token_is_read_again_after_a_minute_or_when_refused(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(controller_module.time, "monotonic", lambda: now[0])
    await populate(hub, {("ann", ""): 60, ("bob", ""): 60})
    first, second = await hub.token(MINIMAL_SCOPES), await hub.token(MINIMAL_SCOPES)
    kube = SecretsAndStatus(first)
    events: list[tuple[str, str, str]] = []
    controller = PolicyController(
        "jhub",
        "default",
        kube,
        Metrics(),
        lambda *event: events.append(event),  # type: ignore[arg-type]
    )
    body = {"metadata": {"generation": 1}, "spec": spec_for(hub, idleTimeout="1h")}
    try:
        await controller.sweep(body)
        await controller.sweep(body)
        assert kube.reads == 1  # kept between sweeps
        now[0] += SECRET_REREAD_SECONDS + 1
        kube.rotate(second)
        await controller.sweep(body)
        assert kube.reads == 2  # a minute later: read again, and the new token is used

        kube.rotate("revoked-or-wrong")
        await controller.sweep(body)
        assert kube.reads == 2 and ready(kube.statuses[-1])["status"] == "True"
        kube.rotate(first)
        await hub.set_times("ann", "", last_activity=ago(2 * HOUR))
        await controller.sweep(body)  # still `second`, which works: nothing to re-read
        assert kube.reads == 2 and await hub.running_servers() == {("bob", "")}

        kube.rotate("wrong")
        now[0] += SECRET_REREAD_SECONDS + 1
        await controller.sweep(body)
        condition = ready(kube.statuses[-1])
        assert (condition["status"], condition["reason"]) == ("False", "Unauthorized")
        reads = kube.reads
        kube.rotate(first)
        await hub.set_times("bob", "", last_activity=ago(2 * HOUR))
        await controller.sweep(body)  # the kept token is refused: read again, sweep again
        assert kube.reads == reads + 1
        condition = ready(kube.statuses[-1])
        assert (condition["status"], condition["reason"]) == ("True", "SweepSucceeded")
        assert await hub.running_servers() == set()
        assert [e[1] for e in events].count("SweepFailed") == 1  # the deliberately wrong one
    finally:
        await controller.close()
