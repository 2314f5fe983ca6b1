"""The Prometheus harness (tests/support/prometheus.py): a real Prometheus 2.42 answers
instant queries with the values the test exporter was given, live and historical."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest

from tests.support.prometheus import (
    CPU_METRIC,
    DCGM_TARGET_LABELS,
    GPU_METRIC,
    Exporter,
    PrometheusError,
    PrometheusStartError,
    Sample,
    Usage,
    find_prometheus,
    serve_exporter,
    start_prometheus,
    unique_namespace,
)

pytestmark = pytest.mark.prometheus

# The queries hubcull's spec.usage will send (one per signal per sweep).
CPU_QUERY = (
    "sum by (namespace, pod) (rate(container_cpu_usage_seconds_total"
    '{namespace="{namespace}", container!=""}[{window}]))'
)
GPU_QUERY = (
    'max by (namespace, pod) (max_over_time(DCGM_FI_DEV_GPU_UTIL{namespace="{namespace}"}'
    "[{window}]))"
)
MIN = 60.0
# Live samples are stamped with the scrape's start but valued when the exporter collects
# them, a few ms later (more on a loaded machine): rates over a 1-3 s span get that jitter.
LIVE = 0.1


def render(template: str, namespace: str, window: str) -> str:
    """Fill a query template the way hubcull will (plain replacement, PromQL keeps braces)."""
    return template.replace("{namespace}", namespace).replace("{window}", window)


def by_pod(samples: Iterable[Sample], label: str = "pod") -> dict[str, float]:
    """{pod: value} of a result with one sample per pod."""
    result: dict[str, float] = {}
    for s in samples:
        assert s.labels[label] not in result, f"two samples for {s.labels[label]}"
        result[s.labels[label]] = s.value
    return result


# ------------------------------------------------------------------------------------------
# live values
# ------------------------------------------------------------------------------------------


async def test_live_values_come_out_of_prometheus_as_set(usage: Usage) -> None:
    ns, prom = usage.namespace, usage.prometheus
    await usage.cpu("jupyter-ann", 1.5)
    await usage.cpu("jupyter-ann", 0.5, container="sidecar")
    await usage.gpu("jupyter-ann", 37.5)
    await usage.gpu("jupyter-ann", 12.25, gpu=1)
    await usage.cpu("jupyter-bob", 0.0)

    # a rate needs a few samples of these brand-new series: 3 scrapes, ~2-3 s
    notebook = f'{CPU_METRIC}{{namespace="{ns}", pod="jupyter-ann", container="notebook"}}'
    await prom.wait_until(f"count_over_time({notebook}[1m])", lambda s: bool(s) and s[0].value >= 3)
    cores = by_pod(await prom.query(render(CPU_QUERY, ns, "3s")))
    assert cores["jupyter-ann"] == pytest.approx(2.0, rel=LIVE)
    assert cores["jupyter-bob"] == 0.0
    # kubelet-shaped: the pod cgroup's series (container="") is the sum of its containers',
    # which is why the template needs container!="" (without it, the pod counts twice)
    pod_cgroup = f'rate({CPU_METRIC}{{namespace="{ns}", pod="jupyter-ann", container=""}}[3s])'
    assert await prom.value(pod_cgroup) == pytest.approx(2.0, rel=LIVE)
    unfiltered = f'sum(rate({CPU_METRIC}{{namespace="{ns}", pod="jupyter-ann"}}[3s]))'
    assert await prom.value(unfiltered) == pytest.approx(4.0, rel=LIVE)

    gpus = await prom.query(f'{GPU_METRIC}{{namespace="{ns}", pod="jupyter-ann"}}')
    assert {s.labels["gpu"]: s.value for s in gpus} == {"0": 37.5, "1": 12.25}
    assert by_pod(await prom.query(render(GPU_QUERY, ns, "1m"))) == {"jupyter-ann": 37.5}
    assert {s.labels["container"] for s in gpus} == {"notebook"}
    assert len({s.labels["UUID"] for s in gpus}) == 2

    usage.exporter.set_cpu(ns, "jupyter-ann", 0.25)  # notebook: 1.5 -> 0.25 cores
    usage.exporter.set_gpu(ns, "jupyter-ann", 80.0)
    await prom.wait_until(f"irate({notebook}[5s])", lambda s: abs(s[0].value - 0.25) < 0.025)
    gpu0 = f'{GPU_METRIC}{{namespace="{ns}", pod="jupyter-ann", gpu="0"}}'
    assert await prom.value(gpu0) == 80.0


# ------------------------------------------------------------------------------------------
# history
# ------------------------------------------------------------------------------------------


async def test_history_is_visible_over_10m_and_30m_windows_at_once(usage: Usage) -> None:
    ns, prom = usage.namespace, usage.prometheus
    started = time.monotonic()
    await usage.cpu("busy", 2.0, history=[(30 * MIN, 2.0)])
    await usage.cpu("idle", 0.0, history=[(30 * MIN, 0.0)])
    await usage.cpu("woke", 2.0, history=[(30 * MIN, 0.0), (5 * MIN, 2.0)])
    await usage.gpu("busy", 90.0, history=[(30 * MIN, 90.0)])
    await usage.gpu("idle", 0.0, history=[(25 * MIN, 0.0)])
    await usage.gpu("woke", 100.0, history=[(25 * MIN, 0.0), (2 * MIN, 100.0)])
    assert time.monotonic() - started < 3  # no waiting for the past to happen

    # right away, before any live scrape of these series
    cpu10 = by_pod(await prom.query(render(CPU_QUERY, ns, "10m")))
    assert cpu10 == pytest.approx({"busy": 2.0, "idle": 0.0, "woke": 1.0}, rel=0.01)
    cpu30 = by_pod(await prom.query(render(CPU_QUERY, ns, "30m")))
    assert cpu30 == pytest.approx({"busy": 2.0, "idle": 0.0, "woke": 1 / 3}, rel=0.01)
    assert by_pod(await prom.query(render(GPU_QUERY, ns, "20m"))) == {
        "busy": 90.0,
        "idle": 0.0,
        "woke": 100.0,
    }
    gpu_avg = f'avg_over_time({GPU_METRIC}{{namespace="{ns}", pod="woke"}}[20m])'
    assert await prom.value(gpu_avg) == pytest.approx(10.0, abs=0.2)  # 2 of 20 min at 100 %

    # then the live scrapes continue the same series: one sample per second, no gap
    # beyond a scrape or two, the counter continuous (no reset) across the seam
    await usage.scraped()
    selector = f'{CPU_METRIC}{{namespace="{ns}", pod="busy", container="notebook"}}'
    [(_, samples)] = await prom.samples(selector, "30m")
    times = [t for t, _ in samples]
    assert times == sorted(set(times))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) < 3.5 and min(gaps) > 0.5
    assert samples[-1][0] > time.time() - 3  # a live sample
    values = [v for _, v in samples]
    assert values == sorted(values)
    assert await prom.value(f"resets({selector}[30m])") == 0
    for (t0, v0), (t1, v1) in zip(samples[-3:], samples[-2:], strict=False):
        assert (v1 - v0) / (t1 - t0) == pytest.approx(2.0, rel=LIVE)
    assert len(samples) >= 30 * 60 - 5

    problems = await prom.self_metrics()
    for rejected in (
        "prometheus_target_scrapes_sample_out_of_order_total",
        "prometheus_target_scrapes_sample_out_of_bounds_total",
        "prometheus_target_scrapes_sample_duplicate_timestamp_total",
        "prometheus_tsdb_out_of_order_samples_total",
        "prometheus_tsdb_out_of_bound_samples_total",
    ):
        assert problems[rejected] == 0, rejected
    assert prom.log_problems() == []


async def test_history_longer_than_the_heads_hour(usage: Usage) -> None:
    ns, prom = usage.namespace, usage.prometheus
    before = (await prom.self_metrics())["prometheus_tsdb_head_out_of_order_samples_appended_total"]
    await usage.cpu("marathon", 1.0, history=[(3 * 3600, 1.0)])
    assert by_pod(await prom.query(render(CPU_QUERY, ns, "3h"))) == pytest.approx(
        {"marathon": 1.0}, rel=0.01
    )
    count = f'count_over_time({CPU_METRIC}{{namespace="{ns}", container="notebook"}}[3h])'
    assert await prom.value(count) == pytest.approx(3 * 3600, abs=3)
    # what is older than the head's append window (1 h) went in through the
    # out-of-order window of the harness's config
    after = (await prom.self_metrics())["prometheus_tsdb_head_out_of_order_samples_appended_total"]
    assert after > before


async def test_series_age_and_coverage_of_the_window(usage: Usage) -> None:
    """How to tell a series younger than the window (hubcull: "unknown"), in PromQL 2.42."""
    ns, prom = usage.namespace, usage.prometheus
    await usage.gpu("old", 0.0, history=[(25 * MIN, 0.0)])
    await usage.gpu("young", 0.0, history=[(5 * MIN, 0.0)])
    await usage.gpu("new", 0.0)
    await usage.scraped()
    await usage.scraped()  # "new" has been scraped for at least a second now
    selector = f'{GPU_METRIC}{{namespace="{ns}"}}'

    # A: age within the window = time() - first sample's time found by a subquery of
    # timestamp(); to within one subquery step, capped at the window (plus a sample)
    ages = {}
    for step in ("1m", "10s", "1s"):
        query = f"min by (pod) (time() - min_over_time(timestamp({selector})[20m:{step}]))"
        ages[step] = by_pod(await prom.query(query))
        print(f"age over [20m:{step}]:", {k: round(v, 1) for k, v in ages[step].items()})
    for step, seconds in (("1m", 60), ("10s", 10), ("1s", 1)):
        assert ages[step]["old"] == pytest.approx(20 * MIN, abs=seconds + 2)
        assert ages[step]["young"] == pytest.approx(5 * MIN, abs=seconds + 2)
    # a series younger than the step can have no value at any (aligned) step: absent
    assert ages["1s"]["new"] < 5
    assert "new" not in ages["1m"] or ages["1m"]["new"] < 60

    # B: samples in the window: count_over_time x the scrape interval (1 s here)
    counts = by_pod(await prom.query(f"sum by (pod) (count_over_time({selector}[20m]))"))
    print("count_over_time[20m]:", counts)
    assert counts["old"] == pytest.approx(20 * MIN, abs=2)
    assert counts["young"] == pytest.approx(5 * MIN, abs=3)
    assert 1 <= counts["new"] <= 5

    # C: present at the window's start, interval-free and cheapest: only "old"
    present = by_pod(await prom.query(f"present_over_time({selector}[1m] offset 19m)"))
    print("present_over_time([1m] offset 19m):", present)
    assert present == {"old": 1.0}


# ------------------------------------------------------------------------------------------
# staleness, labels, errors
# ------------------------------------------------------------------------------------------


async def test_removed_series_go_stale_at_the_next_scrape(usage: Usage) -> None:
    ns, prom = usage.namespace, usage.prometheus
    await usage.cpu("gone", 1.0, history=[(5 * MIN, 1.0)])
    await usage.gpu("gone", 50.0)
    await usage.cpu("stays", 1.0, history=[(5 * MIN, 1.0)])
    await usage.scraped()
    pod = f'{{namespace="{ns}", pod="gone"}}'
    assert len(await prom.query(CPU_METRIC + pod)) == 2  # container + pod cgroup
    assert await prom.value(GPU_METRIC + pod) == 50.0

    usage.remove("gone")
    await usage.scraped()
    assert await prom.query(CPU_METRIC + pod) == []
    assert await prom.query(GPU_METRIC + pod) == []
    # range queries still see its past: a deleted pod keeps a rate for one window
    assert by_pod(await prom.query(render(CPU_QUERY, ns, "5m"))) == pytest.approx(
        {"gone": 1.0, "stays": 1.0}, rel=0.05
    )
    assert len(await prom.query(f'{CPU_METRIC}{{namespace="{ns}", pod="stays"}}')) == 2


async def test_explicit_timestamps_like_the_kubelet_get_no_staleness_marker(
    usage: Usage,
) -> None:
    ns, prom = usage.namespace, usage.prometheus
    usage.exporter.cadvisor_timestamps = True
    try:
        await usage.cpu("stamped", 1.0)
        await usage.scraped()
        usage.remove("stamped")
        await usage.scraped()
        # Prometheus < 2.48 writes no staleness marker for samples with explicit
        # timestamps: the series stays visible for the 5 m lookback delta
        lingering = await prom.query(f'{CPU_METRIC}{{namespace="{ns}", pod="stamped"}}')
        assert len(lingering) == 2
    finally:
        usage.exporter.cadvisor_timestamps = False


async def test_exported_labels_when_dcgm_exporter_is_scraped_without_honor_labels(
    usage: Usage,
) -> None:
    ns, prom = usage.namespace, usage.prometheus
    await usage.gpu("ann", 42.0, exported=True, history=[(10 * MIN, 0.0)])
    await usage.scraped()

    assert await prom.query(render(GPU_QUERY, ns, "10m")) == []  # namespace= finds nothing
    [series] = await prom.query(f'{GPU_METRIC}{{exported_namespace="{ns}"}}')
    assert series.value == 42.0
    assert series.labels["exported_pod"] == "ann"
    assert series.labels["exported_container"] == "notebook"
    assert {k: series.labels[k] for k in DCGM_TARGET_LABELS} == DCGM_TARGET_LABELS
    by_exported = (
        GPU_QUERY.replace("namespace=", "exported_namespace=")
        .replace("(namespace, pod)", "(exported_namespace, exported_pod)")
        .replace("max_over_time", "min_over_time")
    )
    samples = await prom.query(render(by_exported, ns, "10m"))
    assert by_pod(samples, "exported_pod") == {"ann": 0.0}  # the history is there too


async def test_rejected_remote_write_raises_with_prometheus_message(usage: Usage) -> None:
    two_days_ago = round((time.time() - 2 * 86400) * 1000)
    labels = {"__name__": "harness_probe", "namespace": usage.namespace}
    # older than the out-of-order window (1d): Prometheus 2.42 answers 500 "too old sample"
    with pytest.raises(PrometheusError, match="500 too old sample"):
        await usage.prometheus.remote_write([(labels, [(two_days_ago, 1.0)])])
    assert await usage.prometheus.query(f'harness_probe{{namespace="{usage.namespace}"}}') == []


def test_history_only_before_the_series_is_published() -> None:
    exporter = Exporter()
    exporter.set_gpu("ns", "ann", 10.0)
    with pytest.raises(ValueError, match="history comes first"):
        exporter.set_gpu("ns", "ann", 10.0, history=[(60, 0.0)])
    list(exporter.collect())  # a scrape publishes it
    exporter.remove_pod("ns", "ann")
    with pytest.raises(ValueError, match="published before"):
        exporter.set_gpu("ns", "ann", 10.0, history=[(60, 0.0)])
    exporter.set_cpu("ns", "bob", 1.0)
    with pytest.raises(ValueError, match="cgroup series"):
        exporter.set_cpu("ns", "bob", 1.0, container="sidecar", history=[(60, 1.0)])
    with pytest.raises(ValueError, match="older to newer"):
        exporter.set_cpu("ns", "eve", 1.0, history=[(60, 1.0), (120, 0.0)])
    assert {s["pod"] for s in exporter.series()} == {"bob"}


# ------------------------------------------------------------------------------------------
# the runner
# ------------------------------------------------------------------------------------------


async def test_stop_and_start_again_keep_the_data(tmp_path: Path) -> None:
    with serve_exporter(job="restarted") as exporter:
        # no wait for the first scrape (~5.5 s): the history is in the same WAL as scrapes
        async with start_prometheus(tmp_path, [exporter], wait_for_scrape=False) as prom:
            ns = unique_namespace()
            exporter.set_cpu(ns, "ann", 1.0, history=[(10 * MIN, 1.0)])
            await prom.write_history()
            selector = f'{CPU_METRIC}{{namespace="{ns}", container="notebook"}}'
            [(_, before)] = await prom.samples(selector, "15m")
            assert len(before) >= 10 * 60 - 2
            port, pid = prom.port, prom.pid

            started = time.monotonic()
            await prom.stop()
            stopped = time.monotonic()
            assert not prom.running
            with pytest.raises(httpx.ConnectError):  # what a client sees while it is down
                await prom.query("up")

            await prom.start()  # waits for the first scrape again
            print(
                f"stop {stopped - started:.2f}s; start: ready {prom.ready_seconds:.2f}s, "
                f"first scrape {prom.first_scrape_seconds:.2f}s"
            )
            assert (prom.port, prom.data_dir) == (port, tmp_path / "data")
            assert prom.pid != pid
            [(_, after)] = await prom.samples(selector, "15m")
            assert after[: len(before)] == before
            assert after[-1][0] > time.time() - 3  # and the live scrapes continue the series
            assert await prom.value(f"resets({selector}[15m])") == 0
            assert await prom.value(render(CPU_QUERY, ns, "10m")) == pytest.approx(1.0, rel=0.02)
    assert not prom.running


def test_missing_binary_error_names_scripts_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(PrometheusStartError, match="scripts/setup"):
        find_prometheus()
