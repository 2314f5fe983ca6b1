"""The spec.demand pod watch on the emulator: a watch that breaks lists the pods again, so a
pod created while it was down is seen and a pod deleted meanwhile does not linger."""

from __future__ import annotations

import asyncio

import kmock
import pytest

import hubcull.k8s.demand as demand_module
from hubcull.engine.rules.demand import DemandSpec
from hubcull.k8s.demand import DemandHub, PodWatch
from hubcull.k8s.kubeapi import KubeAPI
from tests.support.demand_pods import running_pod, waiting_pod
from tests.support.kube import Kube
from tests.support.operator_env import NS
from tests.support.pods import PODS

pytestmark = pytest.mark.k8s


class Login:
    """kopf's ConnectionInfo for the emulator, as the operator's login would give it."""

    def __init__(self, kube: Kube) -> None:
        import kopf

        self.info = kopf.ConnectionInfo(server=kube.url, token="emulator", insecure=True)


async def test_a_broken_watch_lists_again_and_loses_nothing(kube: Kube) -> None:
    await kube.create_namespace(NS)
    await running_pod(kube, "ann")
    await waiting_pod(kube, "bob", since=60)
    login = Login(kube)
    api = KubeAPI(lambda: login.info)
    changes: list[str | None] = []
    watch = PodWatch(api, NS, changes.append)
    watch.watch_seconds = 1  # streams end every second: the next request meets the fault
    watch.start()
    try:
        await kube.wait_for(lambda: set(watch.pods) == {"jupyter-ann", "jupyter-bob"})
        lists = watch.lists
        broken = [True]
        watches = kube.emulator[kmock.action.WATCH, kube.emulator.resource(PODS)]
        watches[lambda request: broken[0]] << 500
        await kube.wait_for(lambda: watch.lists > lists, timeout=30)  # a watch failed
        lists = watch.lists
        # while the watch fails: one pod goes, one comes
        await kube.delete(PODS, NS, "jupyter-bob")
        await waiting_pod(kube, "carol", since=0)
        await kube.wait_for(lambda: set(watch.pods) == {"jupyter-ann", "jupyter-carol"}, timeout=30)
        assert watch.lists > lists, (watch.lists, watch.watches)  # listed again after the errors
        assert watch.problem is None
        broken[0] = False
        # and watches again: a change now arrives as an event
        await kube.delete(PODS, NS, "jupyter-carol")
        await kube.wait_for(lambda: set(watch.pods) == {"jupyter-ann"}, timeout=10)
    finally:
        await watch.stop()
        await api.aclose()


async def test_a_failed_sweep_is_retried_while_a_pod_waits_backing_off(
    kube: Kube, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a sweep that could not read what spec.demand needs, a pod that still waits wakes
    the policy again: after 30 s, then 60 s, ... up to 5 min (0.2 s doubling to 0.8 s here),
    and not at all once no pod waits."""
    monkeypatch.setattr(demand_module, "RETRY_AFTER_FAILURE_SECONDS", 0.2)
    monkeypatch.setattr(demand_module, "MAX_RETRY_AFTER_FAILURE_SECONDS", 0.8)
    await kube.create_namespace(NS)
    await waiting_pod(kube, "bob", since=60)
    login = Login(kube)
    api = KubeAPI(lambda: login.info)
    loop = asyncio.get_running_loop()
    wakes: list[float] = []
    hub = DemandHub(api, lambda namespace, name: wakes.append(loop.time()))
    hub.register(NS, "default", DemandSpec(min_idle=60, after=5))
    try:
        await kube.wait_for(lambda: wakes)  # the pod woke the policy once
        failed_at = [loop.time()]
        hub.failed(NS, "default")
        for _ in range(4):  # each woken sweep fails again
            count = len(wakes)
            await kube.wait_for(lambda count=count: len(wakes) > count)
            failed_at.append(loop.time())
            hub.failed(NS, "default")
        gaps = [wake - failed for wake, failed in zip(wakes[1:], failed_at[:-1], strict=True)]
        for gap, delay in zip(gaps, [0.2, 0.4, 0.8, 0.8], strict=True):
            assert gap >= delay, gaps
        await kube.delete(PODS, NS, "jupyter-bob")
        await kube.wait_for(lambda: not hub.watches[NS].pods)
        count = len(wakes)
        hub.observed(NS, "default")
        hub.failed(NS, "default")  # a failure with no pod waiting: no wake-up
        await asyncio.sleep(0.6)  # a negative: past the retry's 0.2 s, nothing to poll for
        assert len(wakes) == count
    finally:
        await hub.close()
        await api.aclose()
