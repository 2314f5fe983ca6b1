"""Prometheus metrics of the operator, with the contract's names and labels."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from ..engine.sweep.records import SweepResult


class Metrics:
    """The operator's metrics in their own registry (tests can make several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ("namespace", "policy")
        self.servers_culled = Counter(
            "hubcull_servers_culled",
            "Servers stopped by a policy (dry runs not counted)",
            (*labels, "reason"),
            registry=self.registry,
        )
        self.users_culled = Counter(
            "hubcull_users_culled",
            "Users deleted by a policy (dry runs not counted)",
            labels,
            registry=self.registry,
        )
        self.sweeps = Counter(
            "hubcull_sweeps",
            "Sweeps by result: success, failure or skipped (suspended)",
            (*labels, "result"),
            registry=self.registry,
        )
        self.sweep_duration = Histogram(
            "hubcull_sweep_duration_seconds",
            "Duration of successful sweeps",
            labels,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.servers_running = Gauge(
            "hubcull_servers_running",
            "Running servers in scope at the last sweep",
            labels,
            registry=self.registry,
        )
        self.servers_idle = Gauge(
            "hubcull_servers_idle",
            "Servers over a limit at the last sweep",
            labels,
            registry=self.registry,
        )
        self.hub_requests = Counter(
            "hubcull_hub_requests",
            "Hub API requests by HTTP status (or timeout/error)",
            (*labels, "code"),
            registry=self.registry,
        )

        self.servers_protected = Gauge(
            "hubcull_servers_protected",
            "Servers kept at the last sweep because a kernel was busy or usage showed work",
            labels,
            registry=self.registry,
        )
        self.probes = Counter(
            "hubcull_probes",
            "Probes of servers' kernels by result: ok, no_pod, token_refused, unreachable, "
            "timeout, http_error, invalid, too_large",
            (*labels, "result"),
            registry=self.registry,
        )
        self.warnings = Counter(
            "hubcull_warnings",
            "Warnings and webhook posts (spec.warn) by result: event_only (no webhook), "
            "delivered, failed",
            (*labels, "result"),
            registry=self.registry,
        )

        self.prometheus_queries = Counter(
            "hubcull_prometheus_queries",
            "Prometheus queries of spec.usage by result: success, error, unreachable",
            (*labels, "result"),
            registry=self.registry,
        )

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` in a background thread."""
        start_http_server(port, addr=addr, registry=self.registry)

    def hub_request_counter(self, namespace: str, policy: str) -> Callable[[str], None]:
        """A callback for the Hub client that counts one request by status code."""

        def count(code: str) -> None:
            self.hub_requests.labels(namespace, policy, code).inc()

        return count

    def prometheus_query_counter(self, namespace: str, policy: str) -> Callable[[str], None]:
        """A callback for the Prometheus client that counts one query by result."""

        def count(result: str) -> None:
            self.prometheus_queries.labels(namespace, policy, result).inc()

        return count

    def record_sweep(self, namespace: str, policy: str, result: SweepResult) -> None:
        """Count a successful sweep and what it culled."""
        self.sweeps.labels(namespace, policy, "success").inc()
        self.sweep_duration.labels(namespace, policy).observe(result.duration)
        self.servers_running.labels(namespace, policy).set(result.running)
        self.servers_idle.labels(namespace, policy).set(result.over_limit)
        self.servers_protected.labels(namespace, policy).set(len(result.protected))
        for outcome, count in result.probes.results.items():
            self.probes.labels(namespace, policy, outcome).inc(count)
        for outcome, count in result.notify.results.items():
            self.warnings.labels(namespace, policy, outcome).inc(count)
        if result.dry_run:
            return
        for cull in result.culled:
            self.servers_culled.labels(namespace, policy, cull.reason).inc()
        if result.users_culled:
            self.users_culled.labels(namespace, policy).inc(len(result.users_culled))

    def record_failure(self, namespace: str, policy: str, skipped: bool = False) -> None:
        """Count a sweep that failed, or was skipped while suspended."""
        self.sweeps.labels(namespace, policy, "skipped" if skipped else "failure").inc()

    def forget(self, namespace: str, policy: str) -> None:
        """Drop a deleted policy's gauges so they don't report stale numbers."""
        for gauge in (self.servers_running, self.servers_idle, self.servers_protected):
            try:
                gauge.remove(namespace, policy)
            except KeyError:
                pass
