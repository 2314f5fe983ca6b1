"""Reading what the servers' pods do from Prometheus before deciding (``spec.usage``).

One instant query per signal per sweep covers every pod of the namespace
(:mod:`~hubcull.engine.signals.queries`); its rows are mapped to servers through the same pod
listing as ``spec.kernels`` (pod name -> server), by the rows' ``namespace`` and ``pod``
labels, else ``exported_namespace`` and ``exported_pod``. A server without rows gets no
reading: unknown, so the Hub (and ``spec.kernels``) decide for it. A query that fails
raises :class:`~hubcull.engine.errors.UsageUnavailable` and the sweep decides nothing. The
queries and the pod listing run while the Hub is listed (:class:`UsageRead`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..hub.model import Snapshot
from ..rules.needs import running_in_scope
from ..rules.policy import Policy
from ..rules.signals import ServerKey, ServerSignals, UsageReading
from .pods import ServerLocator, ServerPod
from .prometheus import PrometheusClient, PromSample
from .queries import PART_LABEL, Signal, usage_queries

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


@dataclass
class _Answers:
    """What Prometheus and the pod listing said, before mapping to servers."""

    pods: Mapping[ServerKey, ServerPod]
    results: list[tuple[Signal, list[PromSample]]]


async def _fetch(policy: Policy, inspection: UsageInspection) -> _Answers:
    """List the pods (once per sweep, through the shared locator) and send the queries, all
    concurrently; the first failure (pods first, then the queries in order) is raised."""
    queries = usage_queries(policy, inspection.namespace)
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
    signals = [query.signal for query in queries]
    return _Answers(pods, list(zip(signals, results, strict=True)))


def readings(
    policy: Policy, snapshot: Snapshot, answers: _Answers, namespace: str
) -> dict[ServerKey, UsageReading]:
    """The readings of the running servers in scope (only servers with at least one)."""
    running = {server.key for server in running_in_scope(policy, snapshot)}
    index = _PodIndex(
        {pod.name: key for key, pod in answers.pods.items() if key in running}, namespace
    )
    reader = {"cpu": cpu_readings, "gpu": gpu_readings, "gpu-idle": gpu_idle_readings}
    by_signal = {signal: reader[signal](index.group(rows)) for signal, rows in answers.results}
    keys = set().union(*(found.keys() for found in by_signal.values()))
    return {
        key: UsageReading(
            cpu_cores=by_signal.get("cpu", {}).get(key),
            gpu_percent=by_signal.get("gpu", {}).get(key),
            gpu_idle_percent=by_signal.get("gpu-idle", {}).get(key),
        )
        for key in keys
    }


@dataclass(frozen=True)
class UsageSignals:
    """The usage signals of a sweep's servers, and ``empty``: why a query is judged broken
    (it answered, but with no series for any of two or more running servers), or ``None``."""

    signals: dict[ServerKey, ServerSignals]
    empty: str | None = None


def silent_query(
    policy: Policy,
    snapshot: Snapshot,
    answers: _Answers,
    found: Mapping[ServerKey, UsageReading],
    namespace: str,
) -> str | None:
    """Why a query that answered is broken: no series for any of the sweep's running servers
    (two or more; one server without a series among others goes to the Hub), or ``None``."""
    running = [server.key for server in running_in_scope(policy, snapshot)]
    if len(running) < 2:
        return None
    field_of = {"cpu": "cpu_cores", "gpu": "gpu_percent"}
    for signal, _rows in answers.results:
        attribute = field_of.get(signal)
        if attribute is None:
            continue  # gpu-idle: a server without full coverage is simply not idle by GPU
        if not any(getattr(found.get(key), attribute, None) is not None for key in running):
            return (
                f"{QUERY_NAMES[signal]} returned no series for any of the {len(running)} "
                f"running servers' pods in namespace {namespace}"
            )
    return None


class UsageRead:
    """One sweep's reading of Prometheus and the pods, started at once so that it runs while
    the Hub is listed (it does not depend on the listing, only its mapping to servers does).
    """

    def __init__(self, policy: Policy, inspection: UsageInspection) -> None:
        self._policy = policy
        self._namespace = inspection.namespace
        self._task = asyncio.ensure_future(_fetch(policy, inspection))

    async def signals(self, snapshot: Snapshot) -> UsageSignals:
        """The servers' usage signals. Raises
        :class:`~hubcull.engine.errors.UsageUnavailable` (or ``PodsUnavailable``) when
        Prometheus or the pods could not be read: then nothing may be decided."""
        answers = await self._task
        found = readings(self._policy, snapshot, answers, self._namespace)
        return UsageSignals(
            {key: ServerSignals(usage=reading) for key, reading in found.items()},
            silent_query(self._policy, snapshot, answers, found, self._namespace),
        )

    async def cancel(self) -> None:
        """Stop reading (the sweep failed before it needed the readings)."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
