"""The servers' pods, found the way KubeSpawner labels and annotates them: the operator's
implementation of the engine's :class:`~hubcull.engine.signals.pods.PodSource`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import httpx

from ..engine.errors import PodsUnavailable
from ..engine.rules.signals import ServerKey
from ..engine.signals.pods import ServerPod
from .kubeapi import KubeAPI, KubeError, KubeForbidden

#: KubeSpawner's labels and annotations (kubespawner/spawner.py): the component label, the
#: user's name as is (the label holds an escaped one), and the server's name, which is set
#: only for named servers.
SERVER_SELECTOR = "component=singleuser-server"
USERNAME_ANNOTATION = "hub.jupyter.org/username"
SERVERNAME_ANNOTATION = "hub.jupyter.org/servername"
PORT_NAME = "notebook-port"
DEFAULT_PORT = 8888

FORBIDDEN_ADVICE = (
    "give the operator's ServiceAccount get and list on pods in this namespace "
    "(Helm: --set inspectServers=true)"
)


def server_pod(pod: Mapping[str, Any]) -> tuple[ServerKey, ServerPod] | None:
    """The server a KubeSpawner pod belongs to and how to reach it (``None``: not a server)."""
    metadata = pod.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    user = annotations.get(USERNAME_ANNOTATION)
    if not isinstance(user, str) or not user:
        return None
    server = annotations.get(SERVERNAME_ANNOTATION) or ""
    ip = (pod.get("status") or {}).get("podIP")
    address = None
    if isinstance(ip, str) and ip:
        host = f"[{ip}]" if ":" in ip else ip
        address = f"http://{host}:{_port(pod)}"
    return (user, str(server)), ServerPod(str(metadata.get("name", "")), address)


def _port(pod: Mapping[str, Any]) -> int:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == PORT_NAME and isinstance(port.get("containerPort"), int):
                return int(port["containerPort"])
    return DEFAULT_PORT


def _rank(pod: Mapping[str, Any]) -> tuple[bool, bool]:
    """Prefer a running pod that is not being deleted when a server has two."""
    metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
    return (not metadata.get("deletionTimestamp"), status.get("phase") == "Running")


#: The pods of a namespace from a watch that is in sync (``None``: no such watch).
CachedPods = Callable[[str], Awaitable[Iterable[Mapping[str, Any]] | None]]


class KubePodSource:
    """The singleuser pods of one namespace: from the ``spec.demand`` pod watch when one is
    in sync there (no request), else listed (one request per sweep that needs them)."""

    def __init__(self, kube: KubeAPI, namespace: str, cached: CachedPods | None = None) -> None:
        self.kube = kube
        self.namespace = namespace
        self.cached = cached

    async def server_pods(self) -> Mapping[ServerKey, ServerPod]:
        """The servers' pods by ``(user, server)``; raises ``PodsUnavailable``."""
        pods = await self.cached(self.namespace) if self.cached is not None else None
        if pods is None:
            pods = await self._list()
        found: dict[ServerKey, tuple[Mapping[str, Any], ServerPod]] = {}
        for pod in sorted(pods, key=_rank):
            entry = server_pod(pod)
            if entry is not None:
                found[entry[0]] = (pod, entry[1])  # the best-ranked pod comes last and wins
        return {key: server for key, (_, server) in found.items()}

    async def _list(self) -> list[Mapping[str, Any]]:
        try:
            return await self.kube.list_pods(self.namespace, SERVER_SELECTOR)
        except KubeForbidden as exc:
            raise PodsUnavailable(
                f"{exc} (RBAC refused pods list)", reason="Forbidden", advice=FORBIDDEN_ADVICE
            ) from None
        except (KubeError, httpx.HTTPError, ValueError) as exc:
            detail = str(exc) or type(exc).__name__
            raise PodsUnavailable(f"listing the servers' pods failed: {detail}") from None
