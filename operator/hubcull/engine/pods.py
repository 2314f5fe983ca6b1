"""Where each server runs: the small interface the engine calls to find servers' pods.

The engine knows no Kubernetes. The operator passes a :class:`PodSource` (its implementation,
:class:`hubcull.k8s.pods.KubePodSource`, lists KubeSpawner's pods); ``hubcull sweep`` has none,
so policies that need pods (``spec.kernels.via: pods``, ``spec.usage``) need the operator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from .signals import ServerKey


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
