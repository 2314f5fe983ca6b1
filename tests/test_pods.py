"""Finding servers' pods the way KubeSpawner labels them (spec.kernels via: pods, spec.usage),
through real HTTP against the Kubernetes emulator; refusals decide nothing."""

from __future__ import annotations

import kopf
import pytest

from hubcull.engine.errors import PodsUnavailable
from hubcull.engine.signals.pods import ServerPod
from hubcull.k8s.kubeapi import KubeAPI
from hubcull.k8s.pods import KubePodSource
from tests.support.kube import Kube
from tests.support.pods import PODS, create_pod, singleuser_pod

pytestmark = pytest.mark.k8s
NS = "jhub"


def source() -> KubePodSource:
    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    return KubePodSource(KubeAPI(lambda: info), NS)


async def test_pods_are_matched_to_servers_by_kubespawners_annotations(kube: Kube) -> None:
    await kube.create_namespace(NS)
    await create_pod(kube, singleuser_pod("Alice.Smith@uni.edu"), ip="10.0.0.5")
    await create_pod(kube, singleuser_pod("bob", "gpu", port=9999), ip="10.0.0.6")
    await create_pod(kube, singleuser_pod("carol", port=None), ip="fd00::7")
    await create_pod(kube, singleuser_pod("dave"), ip=None)  # scheduled, no IP yet
    other = singleuser_pod("eve", labels={"component": "hub"})  # not a singleuser pod
    await create_pod(kube, other, ip="10.0.0.9")
    pods = source()
    found = await pods.server_pods()
    await pods.kube.aclose()
    assert found == {
        ("Alice.Smith@uni.edu", ""): ServerPod(
            "jupyter-alice.smith@uni.edu", "http://10.0.0.5:8888"
        ),
        ("bob", "gpu"): ServerPod("jupyter-bob--gpu", "http://10.0.0.6:9999"),
        ("carol", ""): ServerPod("jupyter-carol", "http://[fd00::7]:8888"),
        ("dave", ""): ServerPod("jupyter-dave", None),
    }


@pytest.mark.parametrize("terminating_first", [True, False], ids=["old-first", "new-first"])
async def test_a_running_pod_wins_over_a_terminating_one(
    kube: Kube, terminating_first: bool
) -> None:
    """A restarted server's new pod and its old one, held by a finalizer while it
    terminates, listed in either order: the new pod is the server's."""
    await kube.create_namespace(NS)
    old = singleuser_pod("ann", name="jupyter-ann-old")
    old["metadata"]["finalizers"] = ["test/hold"]
    new = singleuser_pod("ann", name="jupyter-ann-new")
    if terminating_first:
        await create_pod(kube, old, ip="10.0.0.1")
        await create_pod(kube, new, ip="10.0.0.2")
    else:
        await create_pod(kube, new, ip="10.0.0.2")
        await create_pod(kube, old, ip="10.0.0.1")
    await kube.delete(PODS, NS, "jupyter-ann-old")  # stays, with a deletionTimestamp
    # the starting point: both pods listed, running with an IP, the old one terminating
    listed = await kube.list(PODS, NS)
    by_name = {pod["metadata"]["name"]: pod for pod in listed}
    assert set(by_name) == {"jupyter-ann-old", "jupyter-ann-new"}
    assert by_name["jupyter-ann-old"]["metadata"].get("deletionTimestamp")
    assert not by_name["jupyter-ann-new"]["metadata"].get("deletionTimestamp")
    assert {p["status"].get("phase") for p in listed} == {"Running"}
    first = "jupyter-ann-old" if terminating_first else "jupyter-ann-new"
    assert listed[0]["metadata"]["name"] == first
    pods = source()
    found = await pods.server_pods()
    await pods.kube.aclose()
    assert found[("ann", "")] == ServerPod("jupyter-ann-new", "http://10.0.0.2:8888")


@pytest.mark.parametrize(
    ("status", "reason", "says"),
    [(403, "Forbidden", "pods list"), (500, "PodsUnavailable", "500")],
    ids=["refused", "failing"],
)
async def test_a_pod_listing_that_fails_is_named(
    kube: Kube, status: int, reason: str, says: str
) -> None:
    """RBAC's refusal is Forbidden and names the permission and the chart value that grants
    it; any other failure is PodsUnavailable."""
    await kube.create_namespace(NS)
    kube.emulator["list", kube.emulator.resource(PODS)] << status
    pods = source()
    with pytest.raises(PodsUnavailable) as failed:
        await pods.server_pods()
    await pods.kube.aclose()
    assert failed.value.reason == reason
    assert says in str(failed.value)
    if status == 403:
        assert "inspectServers" in (failed.value.advice or "")
