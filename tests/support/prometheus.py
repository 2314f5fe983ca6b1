"""A REAL Prometheus server scraping a test exporter of pod CPU/GPU usage, for tests.

Usage from pytest (fixtures in ``tests/conftest.py``)::

    async def test_it(usage: Usage) -> None:
        ns = usage.namespace                                  # a namespace of this test's own
        await usage.cpu("jupyter-ann", 2.0, history=[(30 * 60, 2.0)])    # busy for 30 min
        await usage.gpu("jupyter-ann", 0.0, history=[(25 * 60, 0.0)])    # GPU idle for 25 min
        await usage.cpu("jupyter-bob", 0.0)                   # a series with no past at all
        await usage.scraped()                                 # live values are in Prometheus
        cpu = f'{CPU_METRIC}{{namespace="{ns}", pod="jupyter-ann", container!=""}}'
        cores = await usage.prometheus.value(f"sum(rate({cpu}[10m]))")   # 2.0
        usage.exporter.set_gpu(ns, "jupyter-ann", 80.0)       # change a value (next scrape)
        usage.exporter.remove_pod(ns, "jupyter-bob")          # its series go stale

or without the fixtures::

    with serve_exporter() as exporter:
        async with start_prometheus(tmp_path, [exporter]) as prom:   # ~6 s, see below
            ...
            await prom.stop(); await prom.start()            # Prometheus down, then back

The pieces:

:class:`Exporter`
    A ``prometheus_client`` collector with its own ``CollectorRegistry``, served on a free
    127.0.0.1 port, publishing cAdvisor-shaped ``container_cpu_usage_seconds_total`` counters
    (one per container plus the pod cgroup's, ``container=""``, as the kubelet does) whose
    rate the test sets in cores, and dcgm-exporter-shaped ``DCGM_FI_DEV_GPU_UTIL`` gauges
    (percent), optionally with the pod's labels as ``exported_namespace``/``exported_pod``/
    ``exported_container`` next to the dcgm-exporter's own ``namespace``/``pod``/``container``
    (what a scrape without ``honor_labels`` produces).
:class:`Prometheus`
    The ``prometheus`` binary from PATH (Debian's package, installed by ``scripts/setup``)
    with a generated config (``scrape_interval`` 1 s, one job per exporter, ``honor_labels``),
    its own data dir and a free port; stoppable and startable again on the same data dir and
    port.  Only the process it started is ever signalled; an ``atexit`` hook stops leftovers.
:class:`Usage`
    One test's pods on the shared exporter and Prometheus, in a namespace of its own.

History without waiting
-----------------------
A series created with ``history=[(seconds_ago, value), ...]`` (each value holds from that
many seconds ago until the next step, the last one until now) is held back by the exporter
until :meth:`Prometheus.write_history` has written its past, one sample per scrape interval,
through Prometheus's remote-write receiver (``--web.enable-remote-write-receiver``); then
the exporter publishes it and the live scrapes continue the same series (counters continue
from their last historical value).  Range queries over the last 10-30 minutes (or hours:
the config sets ``storage.tsdb.out_of_order_time_window: 1d`` so that samples older than
the head's 1 h append window are accepted) see the history right away, merged with the
live samples.  History can only be given to a series Prometheus has never seen (a pod name
not used before in the Prometheus's lifetime for GPU series; a new pod for CPU series,
whose ``id``/``name`` labels change with every pod), since it must come before its samples.
A sample older than the out-of-order window is refused with HTTP 500 "too old sample"
(2.42 maps only "out of bounds"/"out of order" to 400).

Why not ``promtool tsdb create-blocks-from openmetrics``?  It works (Prometheus 2.42 loads
the blocks at startup and merges overlapping ones vertically with only a warning), but it
needs a restart, and a restart costs at least 5 s before the first scrape (the scrape
manager applies discovered targets on a fixed 5 s tick), and backfilled blocks reaching
"now" make Prometheus *silently drop* every WAL sample older than the newest block's end
when it replays the WAL (``tsdb/head_wal.go``: "Before minValidTime: discard"), i.e. the
live data of all series scraped before the restart.

Series age / coverage
---------------------
Prometheus 2.42 has no ``first_over_time``.  Measured in tests/test_prometheus_harness.py
(``W`` the window, ``S`` a subquery step):

* ``time() - min_over_time(timestamp(SEL)[W:S])``: how long ago the series' first sample in
  the window was.  Subquery steps are aligned to multiples of ``S``, so it is low by up to
  ``S``, capped at ``W`` (plus at most one scrape interval), and a series younger than one
  step has no value at all (absent: treat as too young).  "Covers the idle timeout W" is
  ``>= W - S``.  E.g. 25, 5 and 0 min old series, ``[20m:1m]``: 1181.8, 281.7, absent;
  ``[20m:1s]``: 1199.8, 301.8, 1.1.
* ``count_over_time(SEL[W])``: samples in the window (1200, 302, 2 above); times the
  scrape interval, the covered part of ``W`` (needs the interval).
* ``present_over_time(SEL[S] offset (W - S))``: 1 if the series had a sample at the start
  of the window, else absent; the cheapest, interval-free boolean.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import itertools
import math
import os
import re
import secrets
import shutil
import signal
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import (
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.support.jhub import _free_ports, _set_pdeathsig, _tail

__all__ = [
    "CPU_METRIC",
    "DCGM_TARGET_LABELS",
    "GPU_METRIC",
    "Exporter",
    "History",
    "Prometheus",
    "PrometheusError",
    "PrometheusQueryError",
    "PrometheusStartError",
    "Sample",
    "Usage",
    "encode_write_request",
    "find_prometheus",
    "serve_exporter",
    "snappy_literal",
    "start_prometheus",
    "unique_namespace",
]

CPU_METRIC: Final = "container_cpu_usage_seconds_total"
GPU_METRIC: Final = "DCGM_FI_DEV_GPU_UTIL"
#: What the dcgm-exporter's own pod contributes to a series scraped without honor_labels
#: (the notebook pod's labels then appear as ``exported_<name>``).
DCGM_TARGET_LABELS: Final[Mapping[str, str]] = {
    "namespace": "gpu-operator",
    "pod": "nvidia-dcgm-exporter-7xk2p",
    "container": "nvidia-dcgm-exporter",
}

#: ``[(seconds_ago, value), ...]``: each value holds from ``seconds_ago`` until the next
#: step's time (the last one until now); ``seconds_ago`` strictly decreasing.
History = Sequence[tuple[float, float]]

LOG_NAME: Final = "prometheus.log"
CONFIG_NAME: Final = "prometheus.yml"


class PrometheusError(RuntimeError):
    """Base class of the harness's Prometheus errors."""


class PrometheusStartError(PrometheusError):
    """Prometheus did not start (or did not scrape); the message has the tail of its log."""


class PrometheusQueryError(PrometheusError):
    """The HTTP API answered ``status: error`` (``error_type``: bad_data, execution, ...)."""

    def __init__(self, message: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type


def find_prometheus() -> str:
    """The ``prometheus`` binary on PATH; the error names ``scripts/setup``, which installs it."""
    found = shutil.which("prometheus")
    if found is None:
        raise PrometheusStartError(
            "prometheus not found on PATH; run scripts/setup (it installs Debian's "
            "'prometheus' package, which provides /usr/bin/prometheus and promtool)"
        )
    return found


# ------------------------------------------------------------------------------------------
# remote write: protobuf WriteRequest + snappy, by hand (no protobuf/snappy dependency)
# ------------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 as protobuf encodes it (two's complement)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _delimited(field_number: int, payload: bytes) -> bytes:
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


_SAMPLE = struct.Struct("<Bd")


def encode_write_request(
    series: Iterable[tuple[Mapping[str, str], Iterable[tuple[int, float]]]],
) -> bytes:
    """A remote-write ``prometheus.WriteRequest`` (protobuf) of ``(labels, [(ms, value)])``.

    ``labels`` include ``__name__``; they are sorted by name as Prometheus expects.
    """
    out = bytearray()
    for labels, samples in series:
        ts = bytearray()
        for name in sorted(labels):
            pair = _delimited(1, name.encode()) + _delimited(2, labels[name].encode())
            ts += _delimited(1, pair)  # TimeSeries.labels = 1
        for stamp, value in samples:
            # Sample{double value = 1; int64 timestamp = 2;}
            ts += _delimited(2, _SAMPLE.pack(0x09, value) + b"\x10" + _varint(stamp))
        out += _delimited(1, bytes(ts))  # WriteRequest.timeseries = 1
    return bytes(out)


def snappy_literal(data: bytes) -> bytes:
    """``data`` in the snappy block format, as literals only (valid, just not compressed)."""
    out = bytearray(_varint(len(data)))
    for i in range(0, len(data), 65536):
        chunk = data[i : i + 65536]
        n = len(chunk) - 1
        if n < 60:
            out.append(n << 2)
        elif n < 256:
            out += bytes((60 << 2, n))
        else:
            out += bytes((61 << 2,)) + struct.pack("<H", n)
        out += chunk
    return bytes(out)


# ------------------------------------------------------------------------------------------
# history
# ------------------------------------------------------------------------------------------


def _check_history(history: History, *, minimum: float = 0.0) -> tuple[tuple[float, float], ...]:
    steps = tuple((float(a), float(v)) for a, v in history)
    for (a, _), (b, _) in itertools.pairwise(steps):
        if not a > b:
            raise ValueError(f"history steps must go from older to newer (seconds ago): {steps}")
    if steps and steps[-1][0] <= 0:
        raise ValueError(f"history steps must be in the past (seconds_ago > 0): {steps}")
    if any(v < minimum or math.isnan(v) for _, v in steps):
        raise ValueError(f"history values must be >= {minimum}: {steps}")
    return steps


def _grid(steps: tuple[tuple[float, float], ...], now: float, end: float, step: float) -> list:
    """Sample times ``end - k * step`` (k >= 0) not before the history's start, ascending."""
    start = now - steps[0][0]
    if end < start:
        return []
    n = int((end - start) // step) + 1
    return [end - (n - 1 - j) * step for j in range(n)]


def _value_at(steps: tuple[tuple[float, float], ...], now: float, t: float) -> float:
    """The step value in effect at time ``t``."""
    value = steps[0][1]
    for ago, v in steps:
        if t >= now - ago:
            value = v
    return value


def _integral(steps: tuple[tuple[float, float], ...], now: float, a: float, b: float) -> float:
    """Integral of the step function over ``[a, b]`` (for counters: cores x seconds)."""
    total = 0.0
    for i, (ago, v) in enumerate(steps):
        lo = now - ago
        hi = now - steps[i + 1][0] if i + 1 < len(steps) else math.inf
        overlap = min(b, hi) - max(a, lo)
        if overlap > 0:
            total += v * overlap
    return total


# ------------------------------------------------------------------------------------------
# the exporter
# ------------------------------------------------------------------------------------------

_HELD, _WRITING, _LIVE = "held", "writing", "live"


def _short_hash(*parts: str, length: int = 64) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:length]


@dataclass(eq=False)
class _Container:
    name: str
    container_id: str
    image: str
    rate: float
    base_value: float
    base_time: float
    history: tuple[tuple[float, float], ...] = ()
    state: str = _LIVE

    def value(self, t: float) -> float:
        return self.base_value + self.rate * max(0.0, t - self.base_time)

    def set_rate(self, rate: float, t: float) -> None:
        self.base_value = self.value(t)
        self.base_time = max(t, self.base_time)
        self.rate = rate


@dataclass(eq=False)
class _Gpu:
    index: int
    uuid: str
    percent: float
    exported: bool
    container: str
    history: tuple[tuple[float, float], ...] = ()
    state: str = _LIVE


@dataclass(eq=False)
class _Pod:
    namespace: str
    name: str
    uid: str
    containers: dict[str, _Container] = field(default_factory=dict)
    gpus: dict[int, _Gpu] = field(default_factory=dict)
    #: CPU seconds of removed containers: the pod cgroup's counter keeps them
    retired: float = 0.0
    #: whether the pod cgroup series has been published (then it cannot get a history)
    cgroup_published: bool = False

    def cgroup_state(self) -> str:
        states = {c.state for c in self.containers.values()}
        return _LIVE if states == {_LIVE} else (_WRITING if _WRITING in states else _HELD)


@dataclass
class _PendingHistory:
    """Histories being written: the remote-write series and what to release afterwards."""

    series: list[tuple[dict[str, str], list[tuple[int, float]]]]
    containers: list[_Container]
    gpus: list[_Gpu]
    pods: list[_Pod]

    @property
    def samples(self) -> int:
        return sum(len(s) for _, s in self.series)


class Exporter:
    """cAdvisor- and dcgm-exporter-shaped usage metrics of test pods (see the module doc).

    Setters take effect at the next scrape; they are thread-safe (scrapes are served by a
    thread of ``prometheus_client``'s HTTP server).  ``cadvisor_timestamps`` (read at every
    scrape) makes CPU samples carry explicit timestamps like the kubelet's
    ``/metrics/cadvisor``: Prometheus 2.42 then writes no staleness markers for them.
    """

    def __init__(
        self,
        *,
        job: str = "usage-exporter",
        pod_cgroup_series: bool = True,
        cadvisor_timestamps: bool = False,
        node: str = "gpu-node-1",
        gpu_model: str = "NVIDIA A100-SXM4-40GB",
        driver_version: str = "535.129.03",
        image: str = "quay.io/jupyter/base-notebook:2024-12-02",
    ) -> None:
        if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_-]*", job):
            raise ValueError(f"job names are letters, digits, '_' and '-': {job!r}")
        self.job = job
        self.pod_cgroup_series = pod_cgroup_series
        self.cadvisor_timestamps = cadvisor_timestamps
        self.node = node
        self.gpu_model = gpu_model
        self.driver_version = driver_version
        self.image = image
        self.host = "127.0.0.1"
        self.port = 0
        #: scrapes served so far, and the wall time of the last one
        self.scrapes = 0
        self.last_scrape: float | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # type: ignore[arg-type]
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._published: set[frozenset[tuple[str, str]]] = set()
        self._lock = threading.RLock()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # ---- serving -------------------------------------------------------------------------

    @property
    def target(self) -> str:
        """``host:port``, also the ``instance`` label Prometheus gives its series."""
        if not self.port:
            raise RuntimeError("the exporter has not been started")
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The metrics URL."""
        return f"http://{self.target}/metrics"

    @property
    def running(self) -> bool:
        """Whether the HTTP server is listening."""
        return self._server is not None

    def start(self) -> None:
        """Serve on a free port, or on the same port again after :meth:`stop`."""
        if self._server is not None:
            return
        self._server, self._thread = start_http_server(
            self.port, addr=self.host, registry=self.registry
        )
        self.port = self._server.server_address[1]

    def stop(self) -> None:
        """Stop serving (scrapes fail: ``up`` becomes 0); the series are kept."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    # ---- setting values ------------------------------------------------------------------

    def _pod(self, namespace: str, pod: str) -> _Pod:
        key = (namespace, pod)
        if key not in self._pods:
            self._pods[key] = _Pod(namespace, pod, str(uuid.uuid4()))
        return self._pods[key]

    def set_cpu(
        self,
        namespace: str,
        pod: str,
        cores: float,
        *,
        container: str = "notebook",
        history: History = (),
    ) -> None:
        """Set a container's CPU usage rate in cores (creating the pod/container if new).

        ``history`` (only for a new container of a pod whose cgroup series has not been
        published yet) holds the series back until :meth:`Prometheus.write_history`.
        """
        if cores < 0 or math.isnan(cores):
            raise ValueError(f"cores must be >= 0, not {cores}")
        steps = _check_history(history)
        now = time.time()
        with self._lock:
            p = self._pod(namespace, pod)
            existing = p.containers.get(container)
            if existing is not None:
                if steps:
                    raise ValueError(f"{namespace}/{pod}/{container} exists: history comes first")
                existing.set_rate(cores, now)
                return
            if steps and self.pod_cgroup_series and p.cgroup_published:
                raise ValueError(
                    f"pod {namespace}/{pod} already has a published cgroup series: give every "
                    "container's history before the first write_history(), or use a new pod"
                )
            cid = _short_hash(p.uid, container, str(now))
            p.containers[container] = _Container(
                container, cid, self.image, cores, 0.0, now, steps, _HELD if steps else _LIVE
            )
            if p.cgroup_state() == _LIVE:
                p.cgroup_published = True

    def set_gpu(
        self,
        namespace: str,
        pod: str,
        percent: float,
        *,
        gpu: int = 0,
        exported: bool = False,
        container: str = "notebook",
        history: History = (),
    ) -> None:
        """Set the utilization (percent) of GPU ``gpu`` of a pod (creating it if new).

        ``exported`` publishes the pod's labels as ``exported_*`` next to
        :data:`DCGM_TARGET_LABELS` (fixed when the GPU series is created).  ``history``
        (only for a series never published) holds the series back until
        :meth:`Prometheus.write_history`.
        """
        if percent < 0 or math.isnan(percent):
            raise ValueError(f"percent must be >= 0, not {percent}")
        steps = _check_history(history)
        with self._lock:
            p = self._pod(namespace, pod)
            existing = p.gpus.get(gpu)
            if existing is not None:
                if steps:
                    raise ValueError(f"{namespace}/{pod} GPU {gpu} exists: history comes first")
                existing.percent = percent
                return
            g = _Gpu(
                gpu,
                "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{pod}/{gpu}")),
                percent,
                exported,
                container,
                steps,
                _HELD if steps else _LIVE,
            )
            if steps and frozenset(self._gpu_labels(p, g).items()) in self._published:
                raise ValueError(
                    f"{namespace}/{pod} GPU {gpu} was published before (its series may still "
                    "be in Prometheus): history must come first; use another pod name"
                )
            p.gpus[gpu] = g

    def remove_cpu(self, namespace: str, pod: str, container: str = "notebook") -> None:
        """Stop publishing a container's CPU series (the pod cgroup's stays while it has any)."""
        with self._lock:
            p = self._pods.get((namespace, pod))
            c = p.containers.pop(container, None) if p else None
            if p is None or c is None:
                raise KeyError(f"no CPU series for {namespace}/{pod}/{container}")
            p.retired += c.value(time.time())
            self._forget_if_empty(p)

    def remove_gpu(self, namespace: str, pod: str, gpu: int = 0) -> None:
        """Stop publishing a pod's GPU series (it goes stale at the next scrape)."""
        with self._lock:
            p = self._pods.get((namespace, pod))
            if p is None or p.gpus.pop(gpu, None) is None:
                raise KeyError(f"no GPU {gpu} series for {namespace}/{pod}")
            self._forget_if_empty(p)

    def remove_pod(self, namespace: str, pod: str) -> None:
        """Stop publishing every series of a pod (a later ``set_*`` makes a new pod: new uid)."""
        with self._lock:
            if self._pods.pop((namespace, pod), None) is None:
                raise KeyError(f"no series for pod {namespace}/{pod}")

    def clear(self, namespace: str | None = None) -> None:
        """Remove every pod (of ``namespace``)."""
        with self._lock:
            for key in [k for k in self._pods if namespace is None or k[0] == namespace]:
                del self._pods[key]

    def _forget_if_empty(self, p: _Pod) -> None:
        if not p.containers and not p.gpus:
            del self._pods[(p.namespace, p.name)]

    # ---- labels --------------------------------------------------------------------------

    def _cpu_labels(self, p: _Pod, c: _Container | None) -> dict[str, str]:
        cgroup = f"/kubepods/burstable/pod{p.uid}"
        return {
            "__name__": CPU_METRIC,
            "container": c.name if c else "",
            "cpu": "total",
            "id": f"{cgroup}/{c.container_id}" if c else cgroup,
            "image": c.image if c else "",
            "name": c.container_id if c else "",
            "namespace": p.namespace,
            "pod": p.name,
        }

    def _gpu_labels(self, p: _Pod, g: _Gpu) -> dict[str, str]:
        pod_labels = {"namespace": p.namespace, "pod": p.name, "container": g.container}
        if g.exported:
            pod_labels = {
                **{f"exported_{k}": v for k, v in pod_labels.items()},
                **DCGM_TARGET_LABELS,
            }
        return {
            "__name__": GPU_METRIC,
            "gpu": str(g.index),
            "UUID": g.uuid,
            "device": f"nvidia{g.index}",
            "modelName": self.gpu_model,
            "Hostname": self.node,
            "DCGM_FI_DRIVER_VERSION": self.driver_version,
            **pod_labels,
        }

    # ---- what is published ---------------------------------------------------------------

    def _current(self, now: float) -> list[tuple[dict[str, str], float]]:
        """(labels, value) of every published series at ``now`` (caller holds the lock)."""
        out: list[tuple[dict[str, str], float]] = []
        for p in self._pods.values():
            live = [c for c in p.containers.values() if c.state == _LIVE]
            for c in live:
                out.append((self._cpu_labels(p, c), c.value(now)))
            if self.pod_cgroup_series and p.containers and p.cgroup_state() == _LIVE:
                total = p.retired + sum(c.value(now) for c in p.containers.values())
                out.append((self._cpu_labels(p, None), total))
            for g in p.gpus.values():
                if g.state == _LIVE:
                    out.append((self._gpu_labels(p, g), g.percent))
        return out

    def series(self) -> list[dict[str, str]]:
        """Label sets (with ``__name__``) of the series currently published."""
        with self._lock:
            return [labels for labels, _ in self._current(time.time())]

    def collect(self) -> Iterator[Metric]:
        """``prometheus_client`` collector protocol: the current samples."""
        now = time.time()
        cpu = Metric(CPU_METRIC.removesuffix("_total"), "Cumulative cpu time consumed", "counter")
        gpu = Metric(GPU_METRIC, "GPU utilization (in %).", "gauge")
        with self._lock:
            self.scrapes += 1
            self.last_scrape = now
            stamp = now if self.cadvisor_timestamps else None
            for labels, value in self._current(now):
                self._published.add(frozenset(labels.items()))
                name = labels.pop("__name__")
                if name == CPU_METRIC:
                    cpu.add_sample(name, labels, value, stamp)
                else:
                    gpu.add_sample(name, labels, value)
        yield cpu
        yield gpu

    # ---- history ---------------------------------------------------------------------------

    def take_history(self, now: float, end: float, step: float) -> _PendingHistory:
        """The held series' past samples up to ``end``; marks them as being written.

        Counters are anchored so that live values continue from the last historical one.
        Used by :meth:`Prometheus.write_history`, which then calls :meth:`release`.
        """
        pending = _PendingHistory([], [], [], [])
        with self._lock:
            for p in self._pods.values():
                held = [c for c in p.containers.values() if c.state == _HELD]
                for c in held:
                    grid = _grid(c.history, now, end, step)
                    t0 = grid[0] if grid else end
                    samples = [(t, _integral(c.history, now, t0, t)) for t in grid]
                    pending.series.append(
                        (self._cpu_labels(p, c), [(round(t * 1000), v) for t, v in samples])
                    )
                    c.base_value, c.base_time = _integral(c.history, now, t0, end), end
                    c.state = _WRITING
                    pending.containers.append(c)
                if held and self.pod_cgroup_series and p.cgroup_state() == _WRITING:
                    pending.series.append(
                        (self._cpu_labels(p, None), self._cgroup_history(p, now, end, step))
                    )
                    pending.pods.append(p)
                for g in p.gpus.values():
                    if g.state == _HELD:
                        grid = _grid(g.history, now, end, step)
                        pending.series.append(
                            (
                                self._gpu_labels(p, g),
                                [(round(t * 1000), _value_at(g.history, now, t)) for t in grid],
                            )
                        )
                        g.state = _WRITING
                        pending.gpus.append(g)
        return pending

    @staticmethod
    def _cgroup_history(p: _Pod, now: float, end: float, step: float) -> list[tuple[int, float]]:
        totals: dict[int, float] = {}
        for c in p.containers.values():
            grid = _grid(c.history, now, end, step) if c.history else []
            t0 = grid[0] if grid else end
            for t in grid:
                ms = round(t * 1000)
                totals[ms] = totals.get(ms, 0.0) + _integral(c.history, now, t0, t)
        return sorted(totals.items())

    def release(self, pending: _PendingHistory, *, written: bool) -> None:
        """Publish the series of ``pending`` (``written``) or hold them back again."""
        with self._lock:
            state = _LIVE if written else _HELD
            for c in pending.containers:
                c.state = state
            for g in pending.gpus:
                g.state = state
            for p in pending.pods:
                if written and p.cgroup_state() == _LIVE:
                    p.cgroup_published = True
            if written:
                self._published.update(frozenset(labels.items()) for labels, _ in pending.series)


@contextlib.contextmanager
def serve_exporter(**kwargs: Any) -> Iterator[Exporter]:
    """``with serve_exporter() as exporter:`` -- a started :class:`Exporter`, stopped after."""
    exporter = Exporter(**kwargs)
    exporter.start()
    try:
        yield exporter
    finally:
        exporter.stop()


# ------------------------------------------------------------------------------------------
# Prometheus
# ------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One element of an instant vector: labels (with ``__name__`` if kept), value, time."""

    labels: dict[str, str]
    value: float
    time: float


_RUNNING: set[Prometheus] = set()


def _is_ready(resp: httpx.Response) -> bool:
    return resp.status_code == 200


@atexit.register
def _stop_forgotten() -> None:  # pragma: no cover - only on abnormal exits
    for prom in list(_RUNNING):
        prom.stop_sync()


class Prometheus:
    """A real Prometheus server scraping ``exporters`` (see the module doc).

    ``workdir`` holds ``prometheus.yml``, ``prometheus.log`` and the ``data`` dir.  Start
    it with :meth:`start` (or :meth:`start_sync`), stop it with :meth:`stop`; it can be
    started again on the same data dir and port.  Exporters must have been started once
    (their ports are in the config); they may be down while Prometheus runs.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        exporters: Sequence[Exporter] = (),
        *,
        scrape_interval: float = 1.0,
        out_of_order_time_window: str | None = "1d",
        extra_args: Sequence[str] = (),
        startup_timeout: float = 30.0,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / CONFIG_NAME
        self.log_path = self.workdir / LOG_NAME
        self.exporters = list(exporters)
        self.scrape_interval = scrape_interval
        self.out_of_order_time_window = out_of_order_time_window
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        #: seconds from process start to ready, and to the first scrape of every target
        self.ready_seconds: float | None = None
        self.first_scrape_seconds: float | None = None
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        jobs = [e.job for e in self.exporters]
        if len(set(jobs)) != len(jobs):
            raise ValueError(f"exporters need distinct job names: {jobs}")

    # ---- process -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL of the HTTP API (``/api/v1/query`` etc. are under it)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the Prometheus process is alive."""
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        """pid of the running process, if any."""
        return self.process.pid if self.running and self.process else None

    def log_tail(self, max_bytes: int = 6000) -> str:
        """The end of Prometheus's log (all runs are appended to one file)."""
        return _tail(self.log_path, max_bytes)

    def log_problems(self) -> list[str]:
        """Log lines at level warn or error (all runs), except the one every stop logs."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [
            line
            for line in text.splitlines()
            if re.search(r"level=(warn|error)", line) and "Received SIGTERM" not in line
        ]

    def render_config(self) -> str:
        """The generated ``prometheus.yml``."""
        interval = f"{round(self.scrape_interval * 1000)}ms"
        lines = [
            "# Generated by tests/support/prometheus.py -- do not edit.",
            "global:",
            f"  scrape_interval: {interval}",
            f"  scrape_timeout: {interval}",
            f"  evaluation_interval: {interval}",
            "scrape_configs:",
        ]
        for exporter in self.exporters:
            lines += [
                f"  - job_name: {exporter.job!r}",
                "    honor_labels: true",
                "    static_configs:",
                f"      - targets: [{exporter.target!r}]",
            ]
        if not self.exporters:
            lines[-1] = "scrape_configs: []"
        if self.out_of_order_time_window:
            lines += [
                "storage:",
                "  tsdb:",
                f"    out_of_order_time_window: {self.out_of_order_time_window}",
            ]
        return "\n".join(lines) + "\n"

    def _command(self) -> list[str]:
        return [
            find_prometheus(),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-remote-write-receiver",
            "--log.level=info",
            *self.extra_args,
        ]

    # A start (start_sync; start runs it in a thread) is: _spawn (config, port, process),
    # then polls of /-/ready and, with wait_for_scrape, of a query showing every target
    # scraped since the spawn.

    def start_sync(self, *, wait_for_scrape: bool = True, timeout: float | None = None) -> None:
        """Start Prometheus; return once it is ready and (``wait_for_scrape``) every target
        has been scraped.  The first start picks a free port (retrying on a clash); later
        ones reuse it and the data dir.  Expect <0.5 s to ready and ~5-6 s to the first
        scrape (Prometheus applies scrape targets on a 5 s tick).  Blocks: in async code
        use :meth:`start`."""
        if self.running:
            return
        timeout = self.startup_timeout if timeout is None else timeout
        first = self.port == 0
        for attempt in range(1, 4):
            started, offset = self._spawn(attempt, first)
            try:
                self._poll_sync("/-/ready", None, _is_ready, "/-/ready", timeout)
            except PrometheusStartError:
                if self._retry(first, attempt, offset):
                    continue
                raise
            self.ready_seconds = time.time() - started
            break
        if wait_for_scrape and self.exporters:
            query = {"query": self._scraped_query(started)}
            check = self._all_scraped
            self._poll_sync("/api/v1/query", query, check, "the first scrapes", timeout)
            self.first_scrape_seconds = time.time() - started

    async def start(self, *, wait_for_scrape: bool = True, timeout: float | None = None) -> None:
        """:meth:`start_sync` without blocking the event loop (in a worker thread)."""
        await asyncio.to_thread(self.start_sync, wait_for_scrape=wait_for_scrape, timeout=timeout)

    def _spawn(self, attempt: int, first: bool) -> tuple[float, int]:
        """Write the config and start the process; returns its start time and log offset."""
        if first:
            (self.port,) = _free_ports(1)
        self.config_path.write_text(self.render_config())
        in_main_thread = threading.current_thread() is threading.main_thread()
        with open(self.log_path, "ab") as log:
            offset = log.tell()
            log.write(f"\n===== harness: starting Prometheus (attempt {attempt}) =====\n".encode())
            log.flush()
            started = time.time()
            self.process = subprocess.Popen(
                self._command(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # pdeathsig is tied to the forking thread: only safe from the main thread.
                preexec_fn=_set_pdeathsig if in_main_thread else None,
            )
        _RUNNING.add(self)
        return started, offset

    def _retry(self, first: bool, attempt: int, offset: int) -> bool:
        """After a failed start: stop, and whether to try again (a port taken meanwhile)."""
        self.stop_sync()
        if not (first and attempt < 3):
            return False
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return b"address already in use" in f.read().lower()

    def _scraped_query(self, since: float) -> str:
        jobs = "|".join(e.job for e in self.exporters)  # plain names, see Exporter
        return f'count(timestamp(up{{job=~"{jobs}"}}) > {since:.3f})'

    def _all_scraped(self, resp: httpx.Response) -> bool:
        body = resp.json()
        if body.get("status") != "success":
            raise PrometheusQueryError(f"{body}", body.get("errorType"))
        result = body["data"]["result"]
        return bool(result) and float(result[0]["value"][1]) >= len(self.exporters)

    def _not_running(self, what: str) -> PrometheusStartError:
        code = self.process.returncode if self.process else None
        return PrometheusStartError(
            f"Prometheus exited ({code}) while waiting for {what}; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def _timed_out(self, what: str, timeout: float) -> PrometheusStartError:
        return PrometheusStartError(
            f"timed out after {timeout}s waiting for {what} at {self.url}; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def _poll_sync(
        self,
        path: str,
        params: dict[str, str] | None,
        check: Callable[[httpx.Response], bool],
        what: str,
        timeout: float,
    ) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.02
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            while True:
                if not self.running:
                    raise self._not_running(what)
                with contextlib.suppress(httpx.TransportError):
                    if check(client.get(self.url + path, params=params)):
                        return
                if time.monotonic() > deadline:
                    raise self._timed_out(what, timeout)
                time.sleep(delay)
                delay = min(delay * 1.5, 0.1)

    def stop_sync(self, timeout: float = 15.0) -> None:
        """Stop Prometheus (SIGTERM, SIGKILL after ``timeout``); the data dir is kept."""
        _RUNNING.discard(self)
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    async def stop(self, timeout: float = 15.0) -> None:
        """Async :meth:`stop_sync` (closes this loop's HTTP client too)."""
        await self._close_client()
        await asyncio.to_thread(self.stop_sync, timeout)

    # ---- HTTP API --------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop or self._client.is_closed:
            self._client = httpx.AsyncClient(timeout=30.0, trust_env=False)
            self._client_loop = loop
        return self._client

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        with contextlib.suppress(RuntimeError):
            if client is not None and self._client_loop is asyncio.get_running_loop():
                await client.aclose()

    async def query_raw(self, promql: str, at: float | None = None) -> dict[str, Any]:
        """``GET /api/v1/query``: the ``data`` object (``resultType``, ``result``).

        Raises :class:`PrometheusQueryError` for ``status: error``.
        """
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        resp = await self._http().get(f"{self.url}/api/v1/query", params=params)
        try:
            body = resp.json()
        except ValueError:
            raise PrometheusQueryError(f"{resp.status_code} {resp.text[:500]}") from None
        if body.get("status") != "success":
            raise PrometheusQueryError(
                f"{promql!r}: {body.get('errorType')}: {body.get('error')}", body.get("errorType")
            )
        return body["data"]

    async def query(self, promql: str, at: float | None = None) -> list[Sample]:
        """An instant query whose result is a vector (or scalar): its samples."""
        data = await self.query_raw(promql, at)
        if data["resultType"] == "scalar":
            t, v = data["result"]
            return [Sample({}, float(v), float(t))]
        if data["resultType"] != "vector":
            raise PrometheusQueryError(f"{promql!r} gave a {data['resultType']}, not a vector")
        return [
            Sample(r["metric"], float(r["value"][1]), float(r["value"][0])) for r in data["result"]
        ]

    async def value(self, promql: str, at: float | None = None) -> float | None:
        """The value of a query giving at most one sample (``None``: no sample)."""
        samples = await self.query(promql, at)
        if len(samples) > 1:
            raise PrometheusQueryError(f"{promql!r} gave {len(samples)} samples: {samples}")
        return samples[0].value if samples else None

    async def samples(
        self, selector: str, window: str
    ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        """Raw samples of ``selector`` over the last ``window`` (``selector[window]``)."""
        data = await self.query_raw(f"{selector}[{window}]")
        return [
            (r["metric"], [(float(t), float(v)) for t, v in r["values"]]) for r in data["result"]
        ]

    async def wait_until(
        self,
        promql: str,
        check: Callable[[list[Sample]], bool],
        what: str = "",
        timeout: float = 15.0,
    ) -> list[Sample]:
        """Poll an instant query until ``check(samples)``; returns those samples."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            samples = await self.query(promql)
            if check(samples):
                return samples
            if not self.running:
                raise PrometheusError(f"Prometheus exited while waiting for {what or promql}")
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"timed out after {timeout}s waiting for {what or promql}; last: {samples}"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.1)

    async def wait_scraped(self, timeout: float = 15.0) -> None:
        """Return once every exporter has been scraped after this call started, so that the
        values set before it are in Prometheus (~0-1.1 s with a 1 s interval)."""
        since = time.time()
        want = len(self.exporters)
        if not want:
            return
        await self.wait_until(
            self._scraped_query(since),
            lambda s: bool(s) and s[0].value >= want,
            "a scrape of every target",
            timeout,
        )

    async def self_metrics(self) -> dict[str, float]:
        """Prometheus's own ``/metrics``, each sample name summed over its label sets."""
        resp = await self._http().get(f"{self.url}/metrics")
        resp.raise_for_status()
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(resp.text):
            for s in family.samples:
                totals[s.name] = totals.get(s.name, 0.0) + s.value
        return totals

    # ---- writing samples -----------------------------------------------------------------

    async def remote_write(
        self,
        series: Iterable[tuple[Mapping[str, str], Sequence[tuple[int, float]]]],
    ) -> None:
        """Write ``(labels, [(timestamp_ms, value), ...])`` through ``/api/v1/write``.

        Each series' samples must be in time order; Prometheus rejects a request (400, and
        appends none of it) with samples out of bounds or out of order.
        """
        body = snappy_literal(encode_write_request(series))
        resp = await self._http().post(
            f"{self.url}/api/v1/write",
            content=body,
            headers={
                "Content-Encoding": "snappy",
                "Content-Type": "application/x-protobuf",
                "X-Prometheus-Remote-Write-Version": "0.1.0",
            },
        )
        if resp.status_code // 100 != 2:
            raise PrometheusError(f"remote write rejected: {resp.status_code} {resp.text.strip()}")

    async def write_history(self) -> int:
        """Write the past of every held-back series of the exporters, then publish them.

        Histories end one scrape interval before now, one sample per scrape interval.
        Returns the number of samples written.
        """
        written = 0
        for exporter in self.exporters:
            now = time.time()
            end = now - self.scrape_interval
            pending = exporter.take_history(now, end, self.scrape_interval)
            if not pending.series:
                continue
            extra = {"job": exporter.job, "instance": exporter.target}
            ok = False
            try:
                await self.remote_write(
                    ({**labels, **extra}, samples) for labels, samples in pending.series
                )
                ok = True
            finally:
                exporter.release(pending, written=ok)
            written += pending.samples
        return written


@contextlib.asynccontextmanager
async def start_prometheus(
    workdir: str | os.PathLike[str], exporters: Sequence[Exporter] = (), **kwargs: Any
) -> AsyncIterator[Prometheus]:
    """``async with start_prometheus(tmp_path, [exporter]) as prom:`` -- started, then stopped.

    Keywords go to :class:`Prometheus`, except ``wait_for_scrape`` (default True).
    """
    wait = kwargs.pop("wait_for_scrape", True)
    prom = Prometheus(workdir, exporters, **kwargs)
    try:
        await prom.start(wait_for_scrape=wait)
        yield prom
    finally:
        await prom.stop()


# ------------------------------------------------------------------------------------------
# one test's view
# ------------------------------------------------------------------------------------------

_NAMESPACES = itertools.count(1)


def unique_namespace(prefix: str = "usage") -> str:
    """A fresh Kubernetes-style namespace name (series of one test never mix with another's)."""
    return f"{prefix}-{next(_NAMESPACES)}-{secrets.token_hex(2)}"


@dataclass
class Usage:
    """One test's pods, in namespace :attr:`namespace`, on a shared exporter and Prometheus."""

    prometheus: Prometheus
    exporter: Exporter
    namespace: str = field(default_factory=unique_namespace)

    async def cpu(
        self, pod: str, cores: float, *, container: str = "notebook", history: History = ()
    ) -> None:
        """:meth:`Exporter.set_cpu` in this namespace, writing the history if any."""
        self.exporter.set_cpu(self.namespace, pod, cores, container=container, history=history)
        if history:
            await self.prometheus.write_history()

    async def gpu(
        self,
        pod: str,
        percent: float,
        *,
        gpu: int = 0,
        exported: bool = False,
        history: History = (),
    ) -> None:
        """:meth:`Exporter.set_gpu` in this namespace, writing the history if any."""
        self.exporter.set_gpu(
            self.namespace, pod, percent, gpu=gpu, exported=exported, history=history
        )
        if history:
            await self.prometheus.write_history()

    def remove(self, pod: str) -> None:
        """Remove every series of ``pod`` (they go stale at the next scrape)."""
        self.exporter.remove_pod(self.namespace, pod)

    async def scraped(self, timeout: float = 15.0) -> None:
        """Wait until the values set so far are in Prometheus."""
        await self.prometheus.wait_scraped(timeout)

    def close(self) -> None:
        """Remove this namespace's series from the exporter."""
        self.exporter.clear(self.namespace)
