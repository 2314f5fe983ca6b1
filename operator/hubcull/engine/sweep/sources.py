"""Everything a sweep reads besides the policy, as one object: the Hub's credentials and kept
client, the servers' pods, Prometheus, what the policy remembers, where posts go."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..clock import Clock, utcnow
from ..signals.pods import PodSource
from ..signals.probetokens import ProbeTokens
from ..signals.prometheus import QueryResult
from .connection import HubConnection
from .memory import SweepMemory
from .notify import WarnChannel


@dataclass(frozen=True)
class PrometheusAccess:
    """What the operator read from the Secrets ``spec.usage.prometheus`` names."""

    token: str | None = None
    ca_pem: str | None = None


@dataclass
class SweepSources:
    """What one sweep of a policy reads from and reports to.

    ``token`` and ``ca_pem`` reach the Hub, through ``connection``'s kept client when there is
    one (its ``on_response`` counts responses), else a client made for this sweep alone
    (``on_response`` here). ``pods`` finds the servers' pods (the operator's; ``hubcull
    sweep`` has none) in ``pod_namespace``; ``namespace`` is the policy's. ``memory`` is what
    the policy keeps between sweeps (a fresh one: warned servers are warned again and never
    stopped for idleness or maxAge) and ``channel`` where ``spec.warn.webhook`` posts go.
    ``prometheus`` holds the token and CA for ``spec.usage``; ``on_query`` counts its queries.
    ``probe_tokens`` are the per-server tokens of ``spec.kernels``' probes: by default the
    ``connection``'s (kept between sweeps), or without a connection made for this sweep and
    deleted at its end.
    """

    token: str
    ca_pem: str | None = None
    clock: Clock = utcnow
    connection: HubConnection | None = None
    on_response: Callable[[str], None] | None = None
    pods: PodSource | None = None
    namespace: str | None = None
    pod_namespace: str | None = None
    memory: SweepMemory = field(default_factory=SweepMemory)
    channel: WarnChannel | None = None
    prometheus: PrometheusAccess | None = None
    on_query: Callable[[QueryResult], None] | None = None
    probe_tokens: ProbeTokens | None = None

    def probe_tokens_for_sweep(self) -> ProbeTokens:
        """The probe tokens this sweep uses (see the class's docstring)."""
        if self.probe_tokens is not None:
            return self.probe_tokens
        if self.connection is not None:
            return self.connection.probe_tokens
        return ProbeTokens()

    @property
    def pods_namespace(self) -> str | None:
        """Where the servers' pods are: ``pod_namespace``, else the policy's namespace."""
        return self.pod_namespace or self.namespace
