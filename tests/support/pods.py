"""KubeSpawner-shaped Pod objects for the Kubernetes emulator.

They carry what KubeSpawner puts on a singleuser pod (kubespawner/spawner.py): the label
``component: singleuser-server``, the annotations ``hub.jupyter.org/username`` (the user's
name as is) and, for named servers only, ``hub.jupyter.org/servername``, and a container port
named ``notebook-port``. ``status.podIP`` may point at a real singleuser server on 127.0.0.1.
"""

from __future__ import annotations

from typing import Any

from tests.support.kube import Kube

PODS = "v1/pods"


def singleuser_pod(
    user: str,
    server: str = "",
    *,
    namespace: str = "jhub",
    name: str | None = None,
    port: int | None = 8888,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A pod as KubeSpawner makes it (``port=None``: no ``notebook-port`` declared)."""
    annotations = {"hub.jupyter.org/username": user}
    if server:
        annotations["hub.jupyter.org/servername"] = server
    pod_name = name or f"jupyter-{user.lower()}" + (f"--{server.lower()}" if server else "")
    ports = [{"name": "notebook-port", "containerPort": port}] if port is not None else []
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name,
            "namespace": namespace,
            "labels": {
                "app": "jupyterhub",
                "component": "singleuser-server",
                "hub.jupyter.org/username": user.lower(),
                **(labels or {}),
            },
            "annotations": annotations,
        },
        "spec": {"containers": [{"name": "notebook", "image": "jupyter/base", "ports": ports}]},
    }


async def create_pod(kube: Kube, pod: dict[str, Any], ip: str | None = "127.0.0.1") -> dict:
    """Create ``pod`` and, like the kubelet, give it a phase and ``status.podIP``."""
    created = await kube.create(pod)
    status: dict[str, Any] = {"phase": "Running" if ip else "Pending"}
    if ip:
        status["podIP"] = ip
    meta = created["metadata"]
    return await kube.patch(
        PODS, meta["namespace"], meta["name"], {"status": status}, subresource="status"
    )
