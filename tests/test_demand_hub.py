"""spec.demand's last check against a real JupyterHub: a victim that became active between the
listing and its stop (the Hub's ``last_activity`` moved) is not stopped, as a user that became
active is not deleted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from typing import Any

import pytest

from hubcull.engine.rules.decisions import decide
from hubcull.engine.rules.demand import DemandData, ServerHold, WaitingPod
from hubcull.engine.sweep.connection import new_client
from hubcull.engine.sweep.records import DemandSkip
from hubcull.engine.sweep.run import execute
from hubcull.engine.sweep.snapshot import take_snapshot
from tests.support.demand_pods import GPU, GPU_MESSAGE, unschedulable_status, with_resources
from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.pods import singleuser_pod
from tests.support.scenario import ago, policy_for, populate

pytestmark = pytest.mark.hub

HOUR = 3600
POD = "jupyter-newcomer"


class PodsAsTheyAre:
    """The API server's answer for the waiting pod: still Pending and Unschedulable."""

    def __init__(self, pod: Mapping[str, Any] | None) -> None:
        self.pod = pod

    async def observe(self) -> Any:  # not used by execute()
        raise AssertionError("execute() only reads the pod again")

    def freed(self, pods: Sequence[str]) -> None:
        pass

    async def read_pod(self, name: str) -> Mapping[str, Any] | None:
        return self.pod if name == POD else None


def pending(since: datetime) -> dict[str, Any]:
    pod = with_resources(singleuser_pod("newcomer", name=POD), limits={GPU: "1"})
    return {**pod, "status": unschedulable_status(GPU_MESSAGE, since)}


async def plan_for_one_waiting_pod(hub: Hub, token: str):
    policy = policy_for(hub, idleTimeout="24h", demand={"minIdle": "15m"})
    async with new_client(policy, token, None, None) as client:
        snapshot = await take_snapshot(policy, client)
    hold = ServerHold(("gpu-old", ""), "jupyter-gpu-old", "gpu-1", {GPU: Fraction(1)})
    waiting = WaitingPod(
        POD, snapshot.now - timedelta(minutes=2), (GPU,), {GPU: Fraction(1)}, message=GPU_MESSAGE
    )
    data = DemandData((waiting,), {hold.key: hold})
    plan = decide(policy, snapshot, demand=data)
    assert [(d.user, d.reason, d.for_pod) for d in plan.stops] == [("gpu-old", "demand", POD)]
    return policy, plan


@pytest.mark.parametrize("active_meanwhile", [False, True], ids=["idle", "active-meanwhile"])
async def test_a_victim_active_since_the_listing_is_not_stopped(
    hub: Hub, active_meanwhile: bool
) -> None:
    await populate(hub, {("gpu-old", ""): 3 * HOUR})
    token = await hub.token(MINIMAL_SCOPES)
    policy, plan = await plan_for_one_waiting_pod(hub, token)
    if active_meanwhile:
        await hub.set_times("gpu-old", "", last_activity=ago(1))
    skipped: list[DemandSkip] = []
    source = PodsAsTheyAre(pending(datetime(2026, 12, 6, 2, tzinfo=timezone.utc)))
    async with new_client(policy, token, None, None) as client:
        culls, _, _ = await execute(plan, policy, client, demand=source, skipped=skipped)
    running = ("gpu-old", "") in await hub.running_servers()
    if active_meanwhile:
        assert running and not culls
        assert [s.why for s in skipped] == ["gpu-old was active since the listing"]
    else:
        assert not running and [c.for_pod for c in culls] == [POD] and not skipped


async def test_a_pod_gone_before_the_stop_gets_nothing_stopped(hub: Hub) -> None:
    await populate(hub, {("gpu-old", ""): 3 * HOUR})
    token = await hub.token(MINIMAL_SCOPES)
    policy, plan = await plan_for_one_waiting_pod(hub, token)
    skipped: list[DemandSkip] = []
    async with new_client(policy, token, None, None) as client:
        culls, _, _ = await execute(
            plan, policy, client, demand=PodsAsTheyAre(None), skipped=skipped
        )
    assert not culls and ("gpu-old", "") in await hub.running_servers()
    assert [s.why for s in skipped] == [f"pod {POD} is gone"]
