"""spec.usage against a REAL Prometheus (tests/support/prometheus.py: it scrapes an exporter of
cAdvisor- and dcgm-exporter-shaped series whose values and past the tests set) and a REAL
Hub (FakeSpawner servers: usage comes from Prometheus, not from the servers). The engine
sweeps with a pod lookup that maps each server to its pod name, as the operator's does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
from base64 import b64encode
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from hubcull.cli import decision_lines
from hubcull.engine.rules.signals import ServerKey
from hubcull.engine.signals.pods import ServerPod
from hubcull.engine.sweep.memory import SweepMemory
from hubcull.engine.sweep.runner import SweepOutcome, sweep_policy
from hubcull.engine.sweep.sources import PrometheusAccess, SweepSources
from tests.support.faultproxy import LISTING, Fault, fault_proxy
from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.jupyter import JupyterError, poll_until
from tests.support.prometheus import GPU_METRIC, Usage
from tests.support.scenario import TOKEN_REF, policy_for, populate
from tests.support.tls import tls_terminator

pytestmark = [pytest.mark.hub, pytest.mark.prometheus]

MIN = 60
HOUR = 3600
#: Hub state: idle for two hours (the Hub would stop it), or active a minute ago.
HUB_IDLE = 2 * HOUR
HUB_FRESH = 60
QUERY = r"^GET /api/v1/query\?"
#: How late the Hub's listing and Prometheus answer in the concurrency test (seconds).
DELAY = 4.0
#: The Prometheus (and Hub) request timeout in the cancel test (seconds).
TIMEOUT = 30


class PodNames:
    """The engine's PodSource as the operator's finds pods: server -> pod name."""

    def __init__(self, pods: Mapping[ServerKey, str]) -> None:
        self._pods = {key: ServerPod(name, None) for key, name in pods.items()}
        self.listings = 0

    async def server_pods(self) -> Mapping[ServerKey, ServerPod]:
        self.listings += 1
        return self._pods


@dataclass
class Lab:
    """The module's Hub (reset), this test's Prometheus namespace and a culler token."""

    hub: Hub
    usage: Usage
    token: str
    queries: dict[str, int] = field(default_factory=dict)

    async def servers(self, idle: Mapping[str, float]) -> None:
        """Start the users' default servers, running for 3 h, idle as given (seconds)."""
        await populate(
            self.hub,
            {(user, ""): seconds for user, seconds in idle.items()},
            started={(user, ""): 3 * HOUR for user in idle},
        )

    def count(self, result: str) -> None:
        self.queries[result] = self.queries.get(result, 0) + 1

    async def sweep(
        self,
        usage: Mapping[str, Any],
        *,
        pods: PodNames | None = None,
        url: str | None = None,
        prometheus: PrometheusAccess | None = None,
        hub_url: str | None = None,
        **spec: Any,
    ) -> SweepOutcome:
        """One sweep of every user's default server, each with its pod ``jupyter-<user>``
        (``hub_url``: the Hub's API at another address, e.g. a fault proxy)."""
        users = sorted(u for u, _ in await self.hub.running_servers())
        spec.setdefault("idleTimeout", "1h")
        prometheus_spec = {"url": url or self.usage.prometheus.url}
        target = hub_url or self.hub
        policy = policy_for(target, usage={"prometheus": prometheus_spec, **usage}, **spec)
        pods = pods or PodNames({(user, ""): f"jupyter-{user}" for user in users})
        return await sweep_policy(
            policy,
            SweepSources(
                self.token,
                pods=pods,
                memory=SweepMemory(),
                namespace=self.usage.namespace,
                prometheus=prometheus,
                on_query=self.count,
            ),
        )


@pytest.fixture
async def lab(clean_hub: Hub, usage: Usage) -> Lab:
    return Lab(clean_hub, usage, await clean_hub.token(MINIMAL_SCOPES))


def culled(outcome: SweepOutcome) -> dict[str, str]:
    assert outcome.result is not None, outcome.message
    return {c.user: c.reason for c in outcome.result.culled}


def kept(outcome: SweepOutcome) -> dict[str, str]:
    assert outcome.result is not None, outcome.message
    return {p.user: p.why for p in outcome.result.protected}


def keep_line(outcome: SweepOutcome, user: str) -> str:
    [line] = [line for line in decision_lines(outcome) if line.startswith(f"KEEP     {user}:")]
    return line


# ---------------------------------------------------------------------------- working servers


async def test_a_cpu_busy_server_is_kept_although_the_hub_sees_it_idle(lab: Lab) -> None:
    """A training started with nohup from a terminal: no kernel, nothing reaches the Hub."""
    await lab.servers({"ann": HUB_IDLE, "bob": HUB_IDLE})
    await lab.usage.cpu("jupyter-ann", 2.0, history=[(15 * MIN, 2.0)])
    await lab.usage.cpu("jupyter-bob", 0.05, history=[(15 * MIN, 0.05)])
    outcome = await lab.sweep({"busyCPU": 0.5, "window": "10m"})
    assert culled(outcome) == {"bob": "idle"}
    line = keep_line(outcome, "ann")
    cores = re.fullmatch(r"KEEP     ann: CPU ([0-9.]+) cores over the last 10m", line)
    assert cores and float(cores.group(1)) == pytest.approx(2.0, abs=0.02), line
    assert outcome.status["serversProtected"] == 1
    assert await lab.hub.running_servers() == {("ann", "")}
    assert lab.queries == {"success": 1}  # one query for every pod, not one per server


async def test_a_gpu_busy_server_is_kept(lab: Lab) -> None:
    await lab.servers({"ann": HUB_IDLE, "bob": HUB_IDLE})
    await lab.usage.gpu("jupyter-ann", 5.0, history=[(15 * MIN, 5.0)])
    await lab.usage.gpu("jupyter-bob", 0.0, history=[(15 * MIN, 0.0), (3 * MIN, 87.0)])
    await lab.usage.scraped()
    lab.usage.exporter.set_gpu(lab.usage.namespace, "jupyter-bob", 12.0)  # peak in the past
    outcome = await lab.sweep({"busyGPU": 20})
    assert culled(outcome) == {"ann": "idle"}
    assert keep_line(outcome, "bob") == "KEEP     bob: GPU 87% in the last 10m"
    assert outcome.status["serversProtected"] == 1
    assert await lab.hub.running_servers() == {("bob", "")}


async def test_thresholds_at_their_bounds(lab: Lab) -> None:
    """Exactly busyCPU or busyGPU is not working; just above is. cAdvisor rates read like
    0.5000023 cores: the CPU query rounds them to hundredths of a core, as an admin might."""
    users = {"cpu-at": HUB_IDLE, "cpu-above": HUB_IDLE, "gpu-at": HUB_IDLE, "gpu-above": HUB_IDLE}
    await lab.servers(users)
    await lab.usage.cpu("jupyter-cpu-at", 0.5, history=[(15 * MIN, 0.5)])
    await lab.usage.cpu("jupyter-cpu-above", 0.51, history=[(15 * MIN, 0.51)])
    await lab.usage.gpu("jupyter-gpu-at", 50.0, history=[(15 * MIN, 50.0)])
    await lab.usage.gpu("jupyter-gpu-above", 50.5, history=[(15 * MIN, 50.5)])
    rounded = (
        "round(sum by (namespace, pod) (rate(container_cpu_usage_seconds_total"
        '{namespace="{namespace}", container!=""}[{window}])), 0.01)'
    )
    outcome = await lab.sweep({"busyCPU": 0.5, "busyGPU": 50, "queries": {"cpu": rounded}})
    assert culled(outcome) == {"cpu-at": "idle", "gpu-at": "idle"}
    assert kept(outcome) == {
        "cpu-above": "CPU 0.51 cores over the last 10m",
        "gpu-above": "GPU 50.5% in the last 10m",
    }


# ---------------------------------------------------------------------------- cullIdleGPU


async def test_an_idle_gpu_is_culled_with_cull_idle_gpu_despite_fresh_hub_activity(
    lab: Lab,
) -> None:
    """A browser tab keeps the Hub's last_activity fresh; ann's GPU has done nothing for
    30 min (idleTimeout 20m), bob's has worked for the last 5."""
    await lab.servers({"ann": HUB_FRESH, "bob": HUB_FRESH})
    await lab.usage.gpu("jupyter-ann", 0.0, history=[(30 * MIN, 0.0)])
    await lab.usage.gpu("jupyter-bob", 95.0, history=[(30 * MIN, 0.0), (5 * MIN, 95.0)])
    spec = {"idleTimeout": "20m"}
    without = await lab.sweep({"busyGPU": 5}, **spec)
    assert culled(without) == {}
    outcome = await lab.sweep({"busyGPU": 5, "cullIdleGPU": True}, **spec)
    assert culled(outcome) == {"ann": "idleGPU"}
    assert kept(outcome) == {}  # bob works, but no limit would stop him: not counted
    [entry] = outcome.status["recentCulls"]
    assert (entry["user"], entry["reason"], entry["idleSeconds"]) == ("ann", "idleGPU", 1200)
    assert "CULLED   stopped ann (GPU idle 20m)" in decision_lines(outcome)
    assert await lab.hub.running_servers() == {("bob", "")}
    assert lab.queries == {"success": 3}  # GPU in window twice, GPU over idleTimeout once


async def test_a_gpu_series_younger_than_the_idle_timeout_never_culls(lab: Lab) -> None:
    """idleTimeout 20m: GPU series 15 and 19 minutes old, one just started, one with a 5 min
    hole (the exporter was down): unknown. Only the 22-minute-old one is culled."""
    users = ["young", "nearly", "new", "holed", "old"]
    await lab.servers(dict.fromkeys(users, HUB_FRESH))
    await lab.usage.gpu("jupyter-young", 0.0, history=[(15 * MIN, 0.0)])
    await lab.usage.gpu("jupyter-nearly", 0.0, history=[(19 * MIN, 0.0)])
    await lab.usage.gpu("jupyter-new", 0.0)
    await lab.usage.gpu("jupyter-old", 0.0, history=[(22 * MIN, 0.0)])
    await write_gpu_with_hole(lab.usage, "jupyter-holed", span=30 * MIN, hole=(12 * MIN, 7 * MIN))
    await lab.usage.scraped()
    outcome = await lab.sweep({"cullIdleGPU": True}, idleTimeout="20m")
    assert culled(outcome) == {"old": "idleGPU"}


async def write_gpu_with_hole(
    usage: Usage, pod: str, span: float, hole: tuple[float, float]
) -> None:
    """A dcgm-shaped GPU series at 0 % for the last ``span`` seconds, one sample a second,
    without samples from ``hole[0]`` to ``hole[1]`` seconds ago (written straight into
    Prometheus: the exporter does not publish it)."""
    now = time.time()
    stamps = [now - ago for ago in range(int(span), 0, -1) if not hole[1] <= ago <= hole[0]]
    labels = {"__name__": GPU_METRIC, "namespace": usage.namespace, "pod": pod, "gpu": "0"}
    await usage.prometheus.remote_write([(labels, [(round(t * 1000), 0.0) for t in stamps])])


# ---------------------------------------------------------------------------- no data


async def test_a_pod_without_series_is_left_to_the_hub(lab: Lab) -> None:
    """ann has a pod but no series, cat not even a pod, dan's series name another pod: the
    Hub decides for them, since bob's series show the queries themselves work."""
    await lab.servers({"ann": HUB_IDLE, "bob": HUB_FRESH, "cat": HUB_IDLE, "dan": HUB_IDLE})
    await lab.usage.cpu("jupyter-bob", 0.1, history=[(15 * MIN, 0.1)])
    await lab.usage.gpu("jupyter-bob", 1.0, history=[(15 * MIN, 1.0)])  # < idleTimeout
    await lab.usage.cpu("jupyter-dan", 3.0, history=[(15 * MIN, 3.0)])
    pods = PodNames({("ann", ""): "jupyter-ann", ("bob", ""): "jupyter-bob", ("dan", ""): "d"})
    usage = {"busyCPU": 0.5, "busyGPU": 5, "cullIdleGPU": True}
    outcome = await lab.sweep(usage, pods=pods, idleTimeout="20m")
    # dan's series belong to pod jupyter-dan, but his pod is "d": nothing maps to him
    assert culled(outcome) == {"ann": "idle", "cat": "idle", "dan": "idle"}
    assert kept(outcome) == {}
    assert outcome.status["conditions"][0]["reason"] == "SweepSucceeded"
    assert pods.listings == 1


async def test_a_query_with_no_series_for_any_server_holds_them_all(lab: Lab) -> None:
    """The CPU query answers, but for no running server (wrong labels, another namespace):
    that is a broken setup, not idle servers. Nothing the Hub would stop is stopped, and
    Ready says which query and which namespace."""
    await lab.servers({"ann": HUB_IDLE, "bob": HUB_IDLE, "cat": HUB_FRESH})
    await lab.usage.cpu("someone-else", 0.0, history=[(15 * MIN, 0.0)])
    pods = PodNames({(u, ""): f"jupyter-{u}" for u in ("ann", "bob", "cat")})
    outcome = await lab.sweep({"busyCPU": 0.5}, pods=pods, idleTimeout="20m")
    assert culled(outcome) == {}
    ready = outcome.status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "UsageEmpty")
    assert "The CPU query (spec.usage.queries.cpu) returned no series" in ready["message"]
    assert f"namespace {lab.usage.namespace}" in ready["message"]
    assert outcome.status["serversRunning"] == 3  # the sweep ran and reported
    # one series for one of the servers is enough to trust the query again
    await lab.usage.cpu("jupyter-cat", 0.1, history=[(15 * MIN, 0.1)])
    again = await lab.sweep({"busyCPU": 0.5}, pods=pods, idleTimeout="20m")
    assert culled(again) == {"ann": "idle", "bob": "idle"}
    assert again.status["conditions"][0]["reason"] == "SweepSucceeded"


async def test_custom_queries_with_exported_pod_labels(lab: Lab) -> None:
    """dcgm-exporter scraped without honorLabels: its own pod holds namespace and pod, the
    notebook's are exported_namespace and exported_pod. The default query finds nothing."""
    await lab.servers({"ann": HUB_FRESH, "bob": HUB_IDLE})
    await lab.usage.gpu("jupyter-ann", 0.0, exported=True, history=[(25 * MIN, 0.0)])
    await lab.usage.gpu("jupyter-bob", 60.0, exported=True, history=[(25 * MIN, 60.0)])
    settings = {"busyGPU": 10, "cullIdleGPU": True}
    by_default = await lab.sweep(settings, idleTimeout="20m", dryRun=True)
    assert culled(by_default) == {}  # no series for either server: a broken query holds
    assert by_default.status["conditions"][0]["reason"] == "UsageEmpty"
    assert "The GPU query" in by_default.status["conditions"][0]["message"]
    exported = (
        "max by (exported_namespace, exported_pod) (max_over_time("
        'DCGM_FI_DEV_GPU_UTIL{exported_namespace="{namespace}"}[{window}]))'
    )
    outcome = await lab.sweep({**settings, "queries": {"gpu": exported}}, idleTimeout="20m")
    assert culled(outcome) == {"ann": "idleGPU"}
    assert kept(outcome) == {"bob": "GPU 60% in the last 10m"}


# ---------------------------------------------------------------------------- outages


async def test_prometheus_down_or_answering_errors_decides_nothing(lab: Lab) -> None:
    """Every way of not answering makes the sweep fail with UsageUnavailable and cull
    nothing; with the same Prometheus healthy again, the next sweep culls."""
    await lab.servers({"ann": HUB_IDLE, "bob": HUB_FRESH})
    await lab.usage.gpu("jupyter-ann", 0.0, history=[(25 * MIN, 0.0)])
    await lab.usage.gpu("jupyter-bob", 0.0, history=[(25 * MIN, 0.0)])
    settings = {"busyGPU": 10, "cullIdleGPU": True}
    spec = {"idleTimeout": "20m", "hub": {"requestTimeout": "2s"}}
    redirect = {"location": "http://prometheus.example/login"}
    faults = {
        "503": (
            Fault("status", QUERY, status=503),
            "refused the GPU query (spec.usage.queries.gpu): 503 {",
        ),
        "not JSON": (Fault("html", QUERY), "and no JSON"),
        "truncated": (Fault("truncate", QUERY), "and no JSON"),
        "hangs": (
            Fault("hang", QUERY),
            "did not answer the GPU query (spec.usage.queries.gpu) within 2s",
        ),
        "redirect": (Fault("status", QUERY, status=302, headers=redirect), "a redirect (302)"),
        "too large": (Fault("status", QUERY, status=200, body=b" " * (17 << 20)), "over 16 MiB"),
        "broken": (Fault("cut", QUERY), "cannot be reached"),
    }
    async with fault_proxy(lab.usage.prometheus.url) as proxy:
        for name, (fault, message) in faults.items():
            proxy.clear()
            proxy.inject(fault)
            outcome = await lab.sweep(settings, url=proxy.url, **spec)
            assert outcome.reason == "UsageUnavailable", (name, outcome.message)
            assert message in (outcome.message or ""), (name, outcome.message)
        proxy.clear()
        await proxy.refuse()
        down = await lab.sweep(settings, url=proxy.url, **spec)
        assert down.reason == "UsageUnavailable"
        assert "cannot be reached" in (down.message or "")
        assert await lab.hub.running_servers() == {("ann", ""), ("bob", "")}
        await proxy.accept()
        back = await lab.sweep(settings, url=proxy.url, **spec)
    assert culled(back) == {"ann": "idle", "bob": "idleGPU"}
    assert lab.queries["unreachable"] >= 2 and lab.queries["error"] >= 4


async def test_a_query_prometheus_cannot_parse_is_named_with_its_error(lab: Lab) -> None:
    await lab.servers({"ann": HUB_IDLE})
    outcome = await lab.sweep({"busyCPU": 1, "queries": {"cpu": "sum by (pod) (rate(x[{window}]"}})
    assert outcome.reason == "UsageUnavailable"
    message = outcome.message or ""
    assert "the CPU query (spec.usage.queries.cpu)" in message and "bad_data" in message
    assert message.endswith("culling resumes when it does.")
    assert await lab.hub.running_servers() == {("ann", "")}


async def test_the_token_goes_only_into_the_authorization_header(lab: Lab) -> None:
    """Even a Prometheus (or proxy) that echoes the token back in its error does not get it
    into the status or the outcome's message."""
    await lab.servers({"ann": HUB_IDLE})
    token = "prom-token-4b1d2e"
    access = PrometheusAccess(token=token)
    async with fault_proxy(lab.usage.prometheus.url) as proxy:
        ok = await lab.sweep({"busyCPU": 1}, url=proxy.url, prometheus=access, dryRun=True)
        assert ok.result is not None, ok.message
        [request] = proxy.requests(QUERY)
        assert request.headers["authorization"] == f"Bearer {token}"
        echo = {"status": "error", "errorType": "unauthorized", "error": f"bad token {token}"}
        proxy.inject(Fault("status", QUERY, status=401, body=json.dumps(echo).encode()))
        echoed = await lab.sweep({"busyCPU": 1}, url=proxy.url, prometheus=access)
    assert echoed.reason == "UsageUnavailable"
    assert token not in repr(echoed.status) + (echoed.message or "")
    assert "***" in (echoed.message or "")


async def test_a_user_and_password_in_the_url_are_basic_auth_and_never_shown(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    await lab.servers({"ann": HUB_IDLE})
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="httpx")  # `hubcull run` keeps it at WARNING
    async with fault_proxy(lab.usage.prometheus.url) as proxy:
        url = proxy.url.replace("http://", "http://admin:s3cret@") + "/"
        ok = await lab.sweep({"busyCPU": 1}, url=url, dryRun=True)
        assert ok.result is not None, ok.message
        [request] = proxy.requests(QUERY)
        assert request.headers["authorization"] == "Basic " + b64encode(b"admin:s3cret").decode()
        await proxy.refuse()
        down = await lab.sweep({"busyCPU": 1}, url=url)
    message = down.message or ""
    assert f"Prometheus at {proxy.url} cannot be reached" in message
    assert "s3cret" not in message + caplog.text
    assert "HTTP Request: GET " + proxy.url in caplog.text  # httpx logs the URL it used


async def test_https_prometheus_with_a_private_ca(lab: Lab) -> None:
    """The CA comes from caSecretRef (the operator reads the Secret); without it the
    certificate is not trusted, and the sweep says so and culls nothing."""
    await lab.servers({"ann": HUB_IDLE})
    await lab.usage.cpu("jupyter-ann", 2.0, history=[(15 * MIN, 2.0)])
    ca = trustme.CA()
    async with tls_terminator(lab.usage.prometheus.url, ca.issue_cert("127.0.0.1")) as port:
        url = f"https://127.0.0.1:{port}"
        untrusted = await lab.sweep({"busyCPU": 0.5}, url=url)
        trusted = await lab.sweep(
            {"busyCPU": 0.5},
            url=url,
            prometheus=PrometheusAccess(ca_pem=ca.cert_pem.bytes().decode()),
        )
        not_pem = await lab.sweep(
            {"busyCPU": 0.5}, url=url, prometheus=PrometheusAccess(ca_pem="not a certificate")
        )
    assert untrusted.reason == "UsageUnavailable"
    assert "CERTIFICATE_VERIFY_FAILED" in (untrusted.message or "")
    assert kept(trusted) == {"ann": "CPU 2 cores over the last 10m"}
    assert not_pem.reason == "InvalidSpec"
    assert (not_pem.message or "").startswith("The Prometheus CA bundle is not a valid PEM")
    assert (not_pem.message or "").endswith("spec.usage.prometheus.caSecretRef.")
    assert await lab.hub.running_servers() == {("ann", "")}


async def test_prometheus_is_read_while_the_hub_is_listed(lab: Lab) -> None:
    """The Hub's listing and Prometheus each answer DELAY seconds late: the query reaches
    Prometheus while the listing is held, and the sweep takes one DELAY longer than the same
    sweep without delays, not two."""
    await lab.servers({"ann": HUB_IDLE})
    await lab.usage.cpu("jupyter-ann", 2.0, history=[(15 * MIN, 2.0)])
    async with (
        fault_proxy(lab.hub.public_url) as hub,
        fault_proxy(lab.usage.prometheus.url) as prometheus,
    ):

        async def timed() -> tuple[SweepOutcome, float]:
            started = time.monotonic()
            outcome = await lab.sweep(
                {"busyCPU": 0.5}, url=prometheus.url, hub_url=hub.api_url, dryRun=True
            )
            return outcome, time.monotonic() - started

        fast, baseline = await timed()
        since_hub, since_prometheus = hub.mark(), prometheus.mark()
        hub.inject(Fault("slow", LISTING, delay=DELAY))
        prometheus.inject(Fault("slow", QUERY, delay=DELAY))
        slow, took = await timed()
    assert kept(fast) == kept(slow) == {"ann": "CPU 2 cores over the last 10m"}
    [listing] = hub.requests(LISTING, since_hub)
    [query] = prometheus.requests(QUERY, since_prometheus)
    assert listing.finished is not None and query.finished is not None
    assert query.started < listing.finished and listing.started < query.finished
    assert DELAY <= took < baseline + 1.5 * DELAY, (took, baseline)


async def test_a_hub_failure_wins_and_abandons_the_prometheus_read(lab: Lab) -> None:
    """Prometheus holds the query (no answer until its timeout); the Hub answers the listing
    404 once the query has arrived: the sweep fails at once with the Hub's reason, and the
    held query is abandoned (its connection closed long before the timeout), neither
    answered nor failed."""
    await lab.servers({"ann": HUB_IDLE})
    arrived: list[bool] = []
    async with (
        fault_proxy(lab.hub.public_url) as hub,
        fault_proxy(lab.usage.prometheus.url) as prometheus,
    ):

        async def after_the_query(_: object) -> None:
            """Hold the listing until Prometheus has the query (at most TIMEOUT / 3)."""
            try:
                await poll_until(lambda: prometheus.count(QUERY), "the query", TIMEOUT / 3)
            except JupyterError:
                arrived.append(False)
            else:
                arrived.append(True)

        prometheus.inject(Fault("hang", QUERY))
        hub.inject(Fault("status", LISTING, status=404, hook=after_the_query))
        started = time.monotonic()
        outcome = await lab.sweep(
            {"busyCPU": 0.5},
            url=prometheus.url,
            hub_url=hub.api_url,
            hub={"requestTimeout": TIMEOUT},
        )
        took = time.monotonic() - started
        assert arrived == [True], "the query was not sent while the Hub was listed"
        [query] = prometheus.requests(QUERY)
        await poll_until(lambda: query.finished, "the query to be abandoned", TIMEOUT / 3)
        assert query.finished is not None
        held = query.finished - query.started
    assert outcome.reason == "HubError", outcome.message
    assert "404" in (outcome.message or "")
    assert took < TIMEOUT / 3, f"the sweep waited {took:.1f}s for Prometheus"
    assert held < TIMEOUT / 3, f"the query was held {held:.1f}s"
    assert query.status is None  # no answer reached hubcull
    assert lab.queries == {}  # cancelled: neither answered nor failed
    assert await lab.hub.running_servers() == {("ann", "")}


# ---------------------------------------------------------------------------- hubcull sweep


def test_hubcull_sweep_refuses_a_policy_with_usage(tmp_path: Path) -> None:
    doc = {
        "apiVersion": "hubcull.io/v1alpha1",
        "kind": "CullPolicy",
        "metadata": {"name": "gpu", "namespace": "jhub"},
        "spec": {
            "hub": {"url": "http://127.0.0.1:9/hub/api", "tokenSecretRef": TOKEN_REF},
            "usage": {"prometheus": {"url": "http://127.0.0.1:9"}, "cullIdleGPU": True},
        },
    }
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "JUPYTERHUB_API_TOKEN": "x"}
    done = asyncio.run(_run([sys.executable, "-m", "hubcull.cli", "sweep", "-f", str(path)], env))
    code, err = done
    assert code == 2
    assert err.count("\n") == 1 and "spec.usage" in err and "operator" in err


async def _run(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, err.decode()
