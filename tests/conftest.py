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
