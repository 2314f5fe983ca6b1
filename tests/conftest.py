"""Shared pytest fixtures."""

# ---------------------------------------------------------------------------------------
# hub: a real JupyterHub + configurable-http-proxy (tests/support/jhub.py)
#
#   hub         function scope, a fresh Hub per test (~1.7 s startup + ~0.5 s shutdown)
#   shared_hub  one Hub per test module; use it through `clean_hub`, which resets it
#               (stops all servers, deletes non-admin users, groups and harness tokens)
#   jupyter_hub one Hub per test module whose servers are REAL jupyterhub-singleuser
#               processes (spawner="local", ~1 s per spawn): start them once per module
#               with tests.support.jupyter.start_server and drive them with
#               tests.support.jupyter.JupyterServer (kernels, terminals, api/status)
#
# Mark tests that use them with `pytest.mark.hub` (e.g. `pytestmark = pytest.mark.hub`).
# Keywords of the closest `hub` marker are passed to tests.support.jhub.launch_hub by the
# `hub` fixture, e.g. `@pytest.mark.hub(spawner="local")` or `(stop_delay=5)`.
# ---------------------------------------------------------------------------------------
from collections.abc import AsyncIterator as _AsyncIterator
from pathlib import Path as _Path

import pytest
import pytest_asyncio

from tests.support.jhub import Hub, start_hub


@pytest_asyncio.fixture
async def hub(request: pytest.FixtureRequest, tmp_path: _Path) -> _AsyncIterator[Hub]:
    """A fresh real JupyterHub (FakeSpawner unless the `hub` marker's keywords say otherwise)."""
    marker = request.node.get_closest_marker("hub")
    options = dict(marker.kwargs) if marker else {}
    async with start_hub(tmp_path / "hub", **options) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_hub(tmp_path_factory: pytest.TempPathFactory) -> _AsyncIterator[Hub]:
    """One real JupyterHub for a whole test module; prefer `clean_hub` in tests."""
    async with start_hub(tmp_path_factory.mktemp("shared-hub")) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def jupyter_hub(tmp_path_factory: pytest.TempPathFactory) -> _AsyncIterator[Hub]:
    """One real JupyterHub per test module that spawns real single-user servers.

    Its servers report their activity to the Hub every 300 s (JupyterHub's default) unless
    spawned with ``tests.support.jupyter.start_server(..., activity_interval=N)``.
    """
    async with start_hub(tmp_path_factory.mktemp("jupyter-hub"), spawner="local") as running:
        yield running


@pytest_asyncio.fixture
async def clean_hub(shared_hub: Hub) -> Hub:
    """The module's shared Hub, reset to no servers/users/groups before the test."""
    await shared_hub.reset()
    return shared_hub


# ---------------------------------------------------------------------------------------
# kube: a Kubernetes API emulator (kmock-based) on 127.0.0.1 (tests/support/kube.py)
#
#   kube        function scope; a fresh emulator per test (setup ~50 ms). It yields a
#               tests.support.kube.Kube (url, kubeconfig_path, create/get/patch/delete/list,
#               events_for, wait_for) and points KUBECONFIG (and the kubernetes client's
#               default kubeconfig location) at it for the test's duration.
#
# Run operators against it with tests.support.kube.run_operator (in-process, in a thread)
# or run_operator_process (a subprocess). Mark such tests with `pytest.mark.k8s`.
# ---------------------------------------------------------------------------------------
from typing import TYPE_CHECKING as _TYPE_CHECKING  # noqa: E402

if _TYPE_CHECKING:  # imported lazily: kopf takes seconds to import (it imports kubernetes)
    from tests.support.kube import Kube as _Kube


@pytest_asyncio.fixture
async def kube(tmp_path: _Path, monkeypatch: pytest.MonkeyPatch) -> "_AsyncIterator[_Kube]":
    """A fresh Kubernetes API emulator, with KUBECONFIG pointing at it."""
    from tests.support.kube import kube_server, use_kubeconfig

    async with kube_server(tmp_path / "kube") as running:
        use_kubeconfig(running, monkeypatch)
        yield running


# ---------------------------------------------------------------------------------------
# usage: a real Prometheus scraping a test exporter (tests/support/prometheus.py)
#
#   usage_exporter  module scope; an Exporter of cAdvisor/dcgm-exporter-shaped pod metrics
#   prometheus      module scope; a real Prometheus (scrape interval 1 s) scraping it. Ready
#                   in <0.5 s, but Prometheus 2.42 scrapes its targets first ~5.5 s after
#                   it starts, which the fixture waits for: one per module.
#   usage           function scope; a tests.support.prometheus.Usage: this test's pods in a
#                   namespace of its own on the two above (their series removed afterwards)
#
# Mark tests that use them with `pytest.mark.prometheus`.
#
# webhook: a real HTTP receiver on 127.0.0.1 (tests/support/webhook.py)
#
#   webhook         function scope; a WebhookReceiver recording every request, switchable
#                   to answer 200/500, hang, redirect, or refuse connections
# ---------------------------------------------------------------------------------------
from collections.abc import Iterator as _Iterator  # noqa: E402

if _TYPE_CHECKING:  # imported lazily, like the kube harness
    from tests.support.prometheus import Exporter as _Exporter
    from tests.support.prometheus import Prometheus as _Prometheus
    from tests.support.prometheus import Usage as _Usage
    from tests.support.webhook import WebhookReceiver as _WebhookReceiver


@pytest.fixture(scope="module")
def usage_exporter() -> "_Iterator[_Exporter]":
    """An exporter of test pods' CPU/GPU usage, shared by a test module."""
    from tests.support.prometheus import serve_exporter

    with serve_exporter() as exporter:
        yield exporter


@pytest.fixture(scope="module")
def prometheus(
    usage_exporter: "_Exporter", tmp_path_factory: pytest.TempPathFactory
) -> "_Iterator[_Prometheus]":
    """A real Prometheus scraping `usage_exporter`, shared by a test module."""
    from tests.support.prometheus import Prometheus

    prom = Prometheus(tmp_path_factory.mktemp("prometheus"), [usage_exporter])
    prom.start_sync()
    try:
        yield prom
    finally:
        prom.stop_sync()


@pytest.fixture
def usage(prometheus: "_Prometheus", usage_exporter: "_Exporter") -> "_Iterator[_Usage]":
    """This test's pods, in a namespace of its own, on the module's exporter and Prometheus."""
    from tests.support.prometheus import Usage

    view = Usage(prometheus, usage_exporter)
    try:
        yield view
    finally:
        view.close()


@pytest_asyncio.fixture
async def webhook() -> "_AsyncIterator[_WebhookReceiver]":
    """A webhook receiver on a free 127.0.0.1 port, answering 200 until told otherwise."""
    from tests.support.webhook import webhook_receiver

    async with webhook_receiver() as receiver:
        yield receiver
