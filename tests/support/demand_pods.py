"""Pods for spec.demand tests: KubeSpawner-shaped singleuser pods with resource requests and
nodeSelectors, scheduled on a node, or Pending the way kube-scheduler v1.36 reports a pod it
cannot place (``PodScheduled`` False, reason ``Unschedulable``, its message), and the cluster
autoscaler's Events about them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from tests.support.kube import Kube
from tests.support.pods import PODS, singleuser_pod

GPU = "nvidia.com/gpu"
#: kube-scheduler v1.36's messages for a pod no node has room for.
GPU_MESSAGE = (
    "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. no new claims to deallocate, "
    "preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
)
CPU_MESSAGE = (
    "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: "
    "3 No preemption victims found for incoming pod."
)
MEMORY_MESSAGE = (
    "0/3 nodes are available: 1 Insufficient cpu, 2 Insufficient memory. preemption: 0/3 "
    "nodes are available: 3 No preemption victims found for incoming pod."
)
#: A message no stop can help: a taint, not a lack of resources.
TAINT_MESSAGE = (
    "0/1 nodes are available: 1 node(s) had untolerated taint {hub.jupyter.org/dedicated: "
    "user}. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
)


def k8s_time(when: datetime) -> str:
    """RFC 3339 with whole seconds, as the API server writes times."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def with_resources(
    pod: dict[str, Any],
    requests: dict[str, str] | None = None,
    limits: dict[str, str] | None = None,
    node_selector: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Set the notebook container's requests and limits (KubeSpawner puts a GPU in limits
    only, from ``extra_resource_limits``; the API server copies it to requests) and the pod's
    nodeSelector."""
    container = pod["spec"]["containers"][0]
    container["resources"] = {
        **({"requests": requests} if requests else {}),
        **({"limits": limits} if limits else {}),
    }
    if node_selector:
        pod["spec"]["nodeSelector"] = dict(node_selector)
    return pod


def running_status() -> dict[str, Any]:
    """A scheduled, Running pod's status (its IP is this machine's)."""
    return {
        "phase": "Running",
        "podIP": "127.0.0.1",
        "conditions": [{"type": "PodScheduled", "status": "True"}],
    }


def unschedulable_status(
    message: str, when: datetime, nominated: str | None = None
) -> dict[str, Any]:
    """A Pending pod's status when the scheduler has found no node for it since ``when``:
    ``PodScheduled`` False, reason ``Unschedulable``, the scheduler's ``message``."""
    status: dict[str, Any] = {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
                "lastProbeTime": None,
                "lastTransitionTime": k8s_time(when),
            }
        ],
    }
    if nominated:
        status["nominatedNodeName"] = nominated
    return status


async def running_pod(
    kube: Kube,
    user: str,
    *,
    node: str = "gpu-node-1",
    namespace: str = "jhub",
    requests: dict[str, str] | None = None,
    limits: dict[str, str] | None = None,
    node_selector: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A scheduled, Running server pod."""
    pod = with_resources(singleuser_pod(user, namespace=namespace), requests, limits, node_selector)
    pod["spec"]["nodeName"] = node
    created = await kube.create(pod)
    return await kube.patch(
        PODS,
        namespace,
        created["metadata"]["name"],
        {"status": running_status()},
        subresource="status",
    )


async def waiting_pod(
    kube: Kube,
    user: str,
    *,
    since: float = 120.0,
    message: str = GPU_MESSAGE,
    namespace: str = "jhub",
    requests: dict[str, str] | None = None,
    limits: dict[str, str] | None = None,
    node_selector: dict[str, str] | None = None,
    nominated: str | None = None,
    labels: dict[str, str] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """A Pending pod the scheduler marked Unschedulable ``since`` seconds ago."""
    if requests is None and limits is None:
        limits = {GPU: "1"}
    pod = singleuser_pod(user, namespace=namespace, name=name, labels=labels)
    pod = with_resources(pod, requests, limits, node_selector)
    created = await kube.create(pod)
    when = datetime.now(timezone.utc) - timedelta(seconds=since)
    status = unschedulable_status(message, when, nominated)
    return await kube.patch(
        PODS, namespace, created["metadata"]["name"], {"status": status}, subresource="status"
    )


async def autoscaler_event(
    kube: Kube, pod: dict[str, Any], reason: str = "TriggeredScaleUp"
) -> dict[str, Any]:
    """An Event of the cluster autoscaler about ``pod`` (``TriggeredScaleUp`` or
    ``NotTriggerScaleUp``), shaped like the ones it posts."""
    meta = pod["metadata"]
    message = (
        "pod triggered scale-up: [{gpu-pool 0->1 (max: 4)}]"
        if reason == "TriggeredScaleUp"
        else "pod didn't trigger scale-up: 1 max node group size reached"
    )
    now = k8s_time(datetime.now(timezone.utc))
    return await kube.create(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message,
            "source": {"component": "cluster-autoscaler"},
            "type": "Normal",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
    )
