"""Reading what the servers' pods do from Prometheus before deciding (``spec.usage``).

One instant query per signal per sweep covers every pod of the namespace
(:mod:`~hubcull.engine.usagequeries`); its rows are mapped to servers through the same pod
listing as ``spec.kernels`` (pod name -> server), by the rows' ``namespace`` and ``pod``
labels, else ``exported_namespace`` and ``exported_pod``. A server without rows gets no
reading: unknown, so the Hub (and ``spec.kernels``) decide for it. A query that fails
raises :class:`~hubcull.engine.errors.UsageUnavailable` and the sweep decides nothing.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .hubmodel import Snapshot
from .policy import Policy
from .probing import ServerLocator, running_in_scope
from .promclient import PrometheusClient, PromSample
from .signals import ServerKey, UsageReading
from .usagequeries import PART_LABEL, Signal, usage_queries

#: How errors name each query.
QUERY_NAMES: Mapping[Signal, str] = {
    "cpu": "the CPU query (spec.usage.queries.cpu)",
    "gpu": "the GPU query (spec.usage.queries.gpu)",
    "gpu-idle": "the GPU idle query (spec.usage.queries.gpu over idleTimeout)",
}
#: Where a row names its pod: the pod's own labels, else those of a scrape without
#: honor_labels (dcgm-exporter's own pod then holds ``namespace`` and ``pod``).
POD_LABELS = (("namespace", "pod"), ("exported_namespace", "exported_pod"))


@dataclass
class UsageInspection:
    """What a sweep of a policy with ``spec.usage`` needs: a Prometheus client, the pod
    lookup (shared with ``spec.kernels``) and the namespace whose pods are read."""

    client: PrometheusClient
    locator: ServerLocator
    namespace: str


class _PodIndex:
    """Finds the server a row belongs to."""

    def __init__(self, pods: Mapping[str, ServerKey], namespace: str) -> None:
        self._pods = pods
        self._namespace = namespace

    def server(self, labels: Mapping[str, str]) -> ServerKey | None:
        for namespace_label, pod_label in POD_LABELS:
            pod = labels.get(pod_label)
            namespace = labels.get(namespace_label, self._namespace)
            if pod and namespace == self._namespace and pod in self._pods:
                return self._pods[pod]
        return None

    def group(self, samples: Iterable[PromSample]) -> dict[ServerKey, list[PromSample]]:
        """Rows by server; rows of pods that are no server of this sweep are dropped."""
        grouped: dict[ServerKey, list[PromSample]] = {}
        for sample in samples:
            key = self.server(sample.labels)
            if key is not None:
                grouped.setdefault(key, []).append(sample)
        return grouped


def _values(rows: list[PromSample]) -> list[float] | None:
    values = [row.value for row in rows]
    return None if any(math.isnan(v) for v in values) else values


def cpu_readings(rows: Mapping[ServerKey, list[PromSample]]) -> dict[ServerKey, float]:
    """Cores per server: several rows of one pod (one per container) add up."""
    readings = {}
    for key, samples in rows.items():
        values = _values(samples)
        if values is not None:
            readings[key] = sum(values)
    return readings


def gpu_readings(rows: Mapping[ServerKey, list[PromSample]]) -> dict[ServerKey, float]:
    """Percent per server: of several rows of one pod (one per GPU), the highest."""
    readings = {}
    for key, samples in rows.items():
        values = _values(samples)
        if values is not None:
            readings[key] = max(values)
    return readings


def _series(labels: Mapping[str, str]) -> frozenset[tuple[str, str]]:
    return frozenset((k, v) for k, v in labels.items() if k not in (PART_LABEL, "__name__"))


def gpu_idle_readings(rows: Mapping[ServerKey, list[PromSample]]) -> dict[ServerKey, float]:
    """The highest GPU utilisation over idleTimeout per server whose every ``max`` row has
    its ``covered`` row (servers with a series that does not cover it are left out)."""
    readings = {}
    for key, samples in rows.items():
        maxima = [s for s in samples if s.labels.get(PART_LABEL) == "max"]
        covered = {_series(s.labels) for s in samples if s.labels.get(PART_LABEL) == "covered"}
        values = _values(maxima)
        if values and all(_series(s.labels) in covered for s in maxima):
            readings[key] = max(values)
    return readings


async def read_usage(
    policy: Policy, snapshot: Snapshot, inspection: UsageInspection
) -> dict[ServerKey, UsageReading]:
    """The usage readings of the running servers in scope (only servers with at least one).

    Lists the pods (once per sweep, through the shared locator) and sends the queries
    concurrently. Raises :class:`~hubcull.engine.errors.UsageUnavailable` (or
    ``PodsUnavailable``) when any of them fails: then nothing may be decided.
    """
    running = {server.key for server in running_in_scope(policy, snapshot)}
    queries = usage_queries(policy, inspection.namespace)
    if not running or not queries:
        return {}
    client = inspection.client
    answers = await asyncio.gather(
        inspection.locator.pods(),
        *(client.query(query.promql, QUERY_NAMES[query.signal]) for query in queries),
        return_exceptions=True,
    )
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
    pods, *results = answers
    assert isinstance(pods, Mapping)
    index = _PodIndex(
        {pod.name: key for key, pod in pods.items() if key in running}, inspection.namespace
    )
    by_signal: dict[Signal, dict[ServerKey, float]] = {}
    for query, samples in zip(queries, results, strict=True):
        assert isinstance(samples, list)
        rows = index.group(samples)
        reader = {"cpu": cpu_readings, "gpu": gpu_readings, "gpu-idle": gpu_idle_readings}
        by_signal[query.signal] = reader[query.signal](rows)
    keys = set().union(*(readings.keys() for readings in by_signal.values()))
    return {
        key: UsageReading(
            cpu_cores=by_signal.get("cpu", {}).get(key),
            gpu_percent=by_signal.get("gpu", {}).get(key),
            gpu_idle_percent=by_signal.get("gpu-idle", {}).get(key),
        )
        for key in keys
    }
