"""Where each server runs: the small interface the engine calls to find servers' pods.

The engine knows no Kubernetes. The operator passes a :class:`PodSource` (its implementation,
:class:`hubcull.k8s.pods.KubePodSource`, lists KubeSpawner's pods); ``hubcull sweep`` has none,
so policies that need pods (``spec.kernels.via: pods``, ``spec.usage``) need the operator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from ..errors import PodsUnavailable
from ..hub.model import Server
from ..rules.policy import Policy
from ..rules.signals import ServerKey


@dataclass(frozen=True)
class ServerPod:
    """The pod of one server: its name, and its address (``http://IP:port``, ``None`` while
    it has no IP)."""

    name: str
    address: str | None


class PodSource(Protocol):
    """Lists the pods of the singleuser servers in a policy's namespace."""

    async def server_pods(self) -> Mapping[ServerKey, ServerPod]:
        """The running servers' pods by ``(user, server name)``.

        Raises :class:`~hubcull.engine.errors.PodsUnavailable` (``reason`` Forbidden when
        refused) when they cannot be listed: the sweep then decides nothing.
        """
        ...


class ServerLocator:
    """Where a server's Jupyter API is: through the proxy, or at its pod (pods are listed
    once per sweep, and only when a server needs them)."""

    def __init__(self, policy: Policy, pods: PodSource | None) -> None:
        self._policy = policy
        self._source = pods
        self._pods: Mapping[ServerKey, ServerPod] | None = None

    async def pods(self) -> Mapping[ServerKey, ServerPod]:
        """The servers' pods (listed at the first call). Raises
        :class:`~hubcull.engine.errors.PodsUnavailable`."""
        if self._pods is None:
            if self._source is None:
                raise PodsUnavailable(
                    "this policy needs the servers' pods, which only the operator can list"
                )
            self._pods = await self._source.server_pods()
        return self._pods

    async def url(self, server: Server) -> tuple[str | None, str]:
        """The server's base URL, or ``None`` and why there is none."""
        if not server.url:
            return None, "the Hub gave no URL for this server"
        kernels = self._policy.kernels
        if kernels is not None and kernels.via == "proxy":
            return kernels.proxy_url + server.url, ""
        pod = (await self.pods()).get(server.key)
        if pod is None:
            return None, "no pod labelled component=singleuser-server for this server"
        if pod.address is None:
            return None, f"pod {pod.name} has no IP address yet"
        return pod.address + server.url, ""
