"""``python -m benchmarks.usage``: what ``spec.usage`` costs Prometheus and the sweep.

A REAL Prometheus (the tests' harness, :mod:`tests.support.prometheus`, here with a 15 s
scrape interval: dcgm-exporter's default) scrapes an exporter publishing, for ``--pods``
notebook pods (1,000 by default), cAdvisor-shaped CPU counters (the notebook container and
the pod's cgroup, as the kubelet publishes them) and one dcgm-exporter-shaped GPU gauge,
each with ``idleTimeout`` plus a quarter of an hour of history written through remote write
(so the windows are full, as in a cluster that has been running for a while). Then:

1. **The queries**: each of the three instant queries a sweep sends (the default templates
   rendered as :func:`hubcull.engine.signals.queries.usage_queries` renders them), repeated:
   its median time seen by the client, Prometheus's own evaluation time and samples
   (``stats=all``), the rows it returns, and the CPU Prometheus spends on it (the process's
   CPU time during the repetitions minus its idle rate, measured just before).
2. **The sweep**: a real JupyterHub (the tests' FakeSpawner Hub) with one running server per
   pod, swept by the engine (:func:`hubcull.engine.sweep.runner.sweep_policy`, dry run, a kept Hub
   client as the operator keeps one) with and without ``spec.usage``, sweeps interleaved:
   median sweep times and their ratio. Pods come from a static pod lookup (the operator's
   pod listing is one ``LIST`` shared with ``spec.kernels``; it is not measured here).

It prints Markdown tables (docs/performance.md). Nothing is asserted about timings; the run
fails if the sweep with usage does not see the pods' readings (the queries must match).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from tests.support.jhub import MINIMAL_SCOPES, launch_hub
from tests.support.prometheus import Prometheus, find_prometheus, serve_exporter
from tests.support.scenario import TOKEN_REF

from benchmarks.harness import ActivityPlan, BenchHub, cpu_seconds, user_name
from benchmarks.run import environment
from hubcull.engine.rules.policy import Policy, parse_spec
from hubcull.engine.rules.signals import ServerKey
from hubcull.engine.signals.pods import ServerPod
from hubcull.engine.signals.queries import usage_queries
from hubcull.engine.sweep.connection import HubConnection
from hubcull.engine.sweep.memory import SweepMemory
from hubcull.engine.sweep.runner import sweep_policy
from hubcull.engine.sweep.sources import SweepSources

NAMESPACE = "jhub"


@dataclasses.dataclass
class UsageConfig:
    """Sizes of a run (the command-line flags)."""

    pods: int = 1000
    scrape_interval: float = 15.0
    window: float = 600.0
    idle_timeout: float = 3600.0
    repeats: int = 50
    sweeps: int = 10
    warmup: int = 2
    idle_seconds: float = 30.0
    seed: int = 1


@dataclasses.dataclass
class QueryCost:
    """One query of a sweep, measured."""

    signal: str
    rows: int
    client_ms: float
    eval_ms: float
    samples: int
    cpu_ms: float


@dataclasses.dataclass
class SweepCost:
    """Sweeps of the same Hub with and without ``spec.usage``."""

    without_ms: list[float] = dataclasses.field(default_factory=list)
    with_ms: list[float] = dataclasses.field(default_factory=list)
    protected: int = 0
    idle_gpu: int = 0

    @property
    def ratio(self) -> float:
        """Median sweep time with usage over median without."""
        return statistics.median(self.with_ms) / statistics.median(self.without_ms)


@dataclasses.dataclass
class UsageResults:
    """Everything one run measured."""

    config: UsageConfig
    series: int
    history_samples: int
    setup_seconds: float
    prometheus_idle_cores: float
    queries: list[QueryCost]
    sweep: SweepCost
    env: dict[str, str] = dataclasses.field(default_factory=dict)


def progress(message: str) -> None:
    """Progress on stderr, with the time."""
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def prometheus_version() -> str:
    """``prometheus --version``'s first line, e.g. ``prometheus, version 2.42.0 (...)``."""
    try:
        out = subprocess.run(
            [find_prometheus(), "--version"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return (out.stdout or out.stderr).splitlines()[0].strip()


def pod_name(index: int) -> str:
    """KubeSpawner's pod name of benchmark user number ``index``."""
    return f"jupyter-{user_name(index)}"


def usage_of(index: int) -> tuple[float, float]:
    """(cores, GPU percent) of pod ``index``: a tenth CPU-busy, a tenth GPU-busy, the rest
    quiet; every fifth GPU at 0 (idle), the other quiet ones at 3 %."""
    cores = 2.0 if index % 10 == 0 else 0.05
    if index % 10 == 1:
        percent = 80.0
    elif index % 5 == 2:
        percent = 0.0
    else:
        percent = 3.0
    return cores, percent


def policy(hub_url: str, prometheus_url: str | None, config: UsageConfig) -> Policy:
    """The benchmark's policy (a dry run), with ``spec.usage`` when ``prometheus_url``."""
    spec: dict[str, Any] = {
        "hub": {"url": hub_url, "tokenSecretRef": TOKEN_REF},
        "idleTimeout": int(config.idle_timeout),
        "dryRun": True,
    }
    if prometheus_url:
        spec["usage"] = {
            "prometheus": {"url": prometheus_url},
            "window": int(config.window),
            "busyCPU": 0.5,
            "busyGPU": 5,
            "cullIdleGPU": True,
        }
    return parse_spec(spec)


class StaticPods:
    """Every benchmark user's default server in pod ``jupyter-<user>``."""

    def __init__(self, count: int) -> None:
        self._pods = {(user_name(i), ""): ServerPod(pod_name(i), None) for i in range(count)}

    async def server_pods(self) -> Mapping[ServerKey, ServerPod]:
        return self._pods


async def fill_prometheus(prom: Prometheus, config: UsageConfig) -> int:
    """Publish every pod's series with their history; returns the samples written."""
    exporter = prom.exporters[0]
    history = config.idle_timeout + 900.0
    written = 0
    batch = 50
    for start in range(0, config.pods, batch):
        for index in range(start, min(start + batch, config.pods)):
            cores, percent = usage_of(index)
            exporter.set_cpu(NAMESPACE, pod_name(index), cores, history=[(history, cores)])
            exporter.set_gpu(NAMESPACE, pod_name(index), percent, history=[(history, percent)])
        written += await prom.write_history()
        progress(f"history of {min(start + batch, config.pods)}/{config.pods} pods written")
    await prom.wait_scraped(timeout=60)
    return written


async def idle_cores(pid: int, seconds: float) -> float:
    """Prometheus's CPU use (cores) while nobody queries it."""
    before, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return (cpu_seconds(pid) - before) / (time.monotonic() - t0)


async def measure_queries(prom: Prometheus, config: UsageConfig, idle: float) -> list[QueryCost]:
    """Each query of a sweep, ``repeats`` times."""
    costs = []
    queries = usage_queries(policy("http://hub", prom.url, config), NAMESPACE)
    async with httpx.AsyncClient(timeout=120.0, trust_env=False) as http:

        async def ask(promql: str, stats: bool = False) -> dict[str, Any]:
            params = {"query": promql, **({"stats": "all"} if stats else {})}
            response = await http.get(f"{prom.url}/api/v1/query", params=params)
            body = response.json()
            if body.get("status") != "success":
                raise RuntimeError(f"{promql}: {body}")
            return body["data"]  # type: ignore[no-any-return]

        for query in queries:
            data = await ask(query.promql, stats=True)
            assert prom.pid is not None
            cpu_before, times = cpu_seconds(prom.pid), []
            t0 = time.monotonic()
            for _ in range(config.repeats):
                started = time.monotonic()
                await ask(query.promql)
                times.append(time.monotonic() - started)
            elapsed = time.monotonic() - t0
            cpu = cpu_seconds(prom.pid) - cpu_before - idle * elapsed
            stats = data["stats"]
            costs.append(
                QueryCost(
                    query.signal,
                    len(data["result"]),
                    1000 * statistics.median(times),
                    1000 * stats["timings"]["evalTotalTime"],
                    int(stats["samples"]["totalQueryableSamples"]),
                    1000 * max(cpu, 0.0) / config.repeats,
                )
            )
            progress(f"query {query.signal}: {costs[-1]}")
    return costs


async def measure_sweeps(prom: Prometheus, config: UsageConfig, workdir: Path) -> SweepCost:
    """Sweeps of a real Hub with one server per pod, with and without ``spec.usage``."""
    progress(f"starting JupyterHub and {config.pods} servers")
    hub = await launch_hub(workdir / "hub")
    try:
        bench = BenchHub(hub)
        await bench.ensure_running(config.pods)
        await bench.apply(ActivityPlan(config.pods, config.pods // 10, config.idle_timeout))
        token = await hub.token(MINIMAL_SCOPES, note="bench-usage")
        pods = StaticPods(config.pods)
        cost = SweepCost()
        plain = (policy(hub.api_url, None, config), HubConnection(), cost.without_ms)
        usage = (policy(hub.api_url, prom.url, config), HubConnection(), cost.with_ms)
        try:
            for round_ in range(config.warmup + config.sweeps):
                for chosen, connection, times in (plain, usage) if round_ % 2 else (usage, plain):
                    started = time.monotonic()
                    outcome = await sweep_policy(
                        chosen,
                        SweepSources(
                            token,
                            connection=connection,
                            pods=pods,
                            memory=SweepMemory(),
                            namespace=NAMESPACE,
                        ),
                    )
                    seconds = time.monotonic() - started
                    if outcome.result is None:
                        raise RuntimeError(f"sweep failed: {outcome.reason}: {outcome.message}")
                    if round_ >= config.warmup:
                        times.append(1000 * seconds)
                    if chosen.usage is not None:
                        cost.protected = len(outcome.result.protected)
                        cost.idle_gpu = sum(c.reason == "idleGPU" for c in outcome.result.culled)
                progress(f"sweep round {round_ + 1}/{config.warmup + config.sweeps}")
        finally:
            for _, connection, _ in (plain, usage):
                await connection.aclose()
        if not (cost.protected and cost.idle_gpu):
            raise RuntimeError(f"the sweep with usage saw no readings: {cost}")
        return cost
    finally:
        await hub.shutdown()


async def run(config: UsageConfig, workdir: Path) -> UsageResults:
    """Set up Prometheus, measure the queries, then the sweeps."""
    started = time.monotonic()
    with serve_exporter(job="bench-usage") as exporter:
        prom = Prometheus(
            workdir / "prometheus", [exporter], scrape_interval=config.scrape_interval
        )
        progress("starting Prometheus")
        await prom.start()
        try:
            samples = await fill_prometheus(prom, config)
            setup = time.monotonic() - started
            series = len(exporter.series())
            assert prom.pid is not None
            idle = await idle_cores(prom.pid, config.idle_seconds)
            queries = await measure_queries(prom, config, idle)
            sweep = await measure_sweeps(prom, config, workdir)
        finally:
            await prom.stop()
    env = {**environment(""), "prometheus": prometheus_version()}
    return UsageResults(config, series, samples, setup, idle, queries, sweep, env)


def report(results: UsageResults) -> str:
    """The results as Markdown."""
    c = results.config
    lines = [f"- {key}: {value}" for key, value in results.env.items() if value != "?"]
    lines += [
        "",
        f"{c.pods} pods, {results.series} series ({c.scrape_interval:g} s scrape interval), "
        f"window {c.window / 60:g}m, idleTimeout {c.idle_timeout / 60:g}m; Prometheus idles "
        f"at {100 * results.prometheus_idle_cores:.2f} % of a core.",
        "",
        "| query | rows | client time (median) | Prometheus eval | samples read | Prometheus CPU |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for q in results.queries:
        lines.append(
            f"| `{q.signal}` | {q.rows} | {q.client_ms:.1f} ms | {q.eval_ms:.1f} ms "
            f"| {q.samples:,} | {q.cpu_ms:.1f} ms |"
        )
    total_cpu = sum(q.cpu_ms for q in results.queries)
    total_client = sum(q.client_ms for q in results.queries)
    total_samples = sum(q.samples for q in results.queries)
    lines.append(
        f"| **per sweep** | | {total_client:.1f} ms (sequential) | | {total_samples:,} "
        f"| {total_cpu:.1f} ms |"
    )
    s = results.sweep
    lines += [
        "",
        "| sweep of the Hub (dry run) | median | sweeps |",
        "|---|---:|---:|",
        f"| without spec.usage | {statistics.median(s.without_ms):.0f} ms | {len(s.without_ms)} |",
        f"| with spec.usage (3 queries) | {statistics.median(s.with_ms):.0f} ms "
        f"| {len(s.with_ms)} |",
        f"| ratio | {s.ratio:.2f} | |",
        "",
        f"The sweep with usage kept {s.protected} working servers and would have stopped "
        f"{s.idle_gpu} for idle GPUs.",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, UsageConfig]:
    """The command line and the :class:`UsageConfig` it makes."""
    defaults = UsageConfig()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.usage", description=__doc__)
    add = parser.add_argument
    for item in dataclasses.fields(UsageConfig):
        flag = "--" + item.name.replace("_", "-")
        add(flag, type=type(getattr(defaults, item.name)), help=f"default {item.default}")
    add("--workdir", type=Path, help="where Prometheus, the Hub and logs go")
    add("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(UsageConfig)
        if getattr(args, f.name) is not None
    }
    return args, UsageConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args, config = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hubcull-bench-usage-"))
    workdir.mkdir(parents=True, exist_ok=True)
    progress(f"work directory {workdir}")
    try:
        results = asyncio.run(run(config, workdir))
    except BaseException:
        progress(f"failed; logs are in {workdir}")
        raise
    print(report(results), flush=True)
    if args.json:
        args.json.write_text(json.dumps(dataclasses.asdict(results), indent=2) + "\n")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
