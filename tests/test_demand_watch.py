"""The spec.demand pod watch on the emulator: a watch that breaks lists the pods again, so a
pod created while it was down is seen and a pod deleted meanwhile does not linger."""

from __future__ import annotations

import kmock
import pytest

from hubcull.k8s.demand import PodWatch
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
