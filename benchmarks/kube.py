"""A lighter Kubernetes API stand-in for scenario 3: the tests' emulator minus kmock's history.

:class:`tests.support.kube_emulator.ApiServerEmulator` (kmock 0.8 underneath) keeps every
request it has served. kmock used to decide which reaction serves a new request by checking
``request in reaction`` against that whole history, so each request cost time proportional
to all the requests before it; the emulator now answers filter reactions without reading
the history, but still keeps it, and 100 CullPolicies sweeping every 10 s add ~10 status
patches a second to it. :class:`LeanEmulator` forgets the served requests before each new
one (the benchmark never inspects them), so a long run's memory stays flat; the API-server
semantics kopf relies on (resourceVersions, watches, merge and JSON patches, the status
subresource, finalizers) are the emulator's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp.web
import httpx
import kmock
from tests.support.kube import KUBE_TOKEN, Kube, write_kubeconfig
from tests.support.kube_emulator import ApiServerEmulator


class LeanEmulator(ApiServerEmulator):
    """:class:`ApiServerEmulator` without the ever-growing request history."""

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Forget the requests served so far, then serve this one as the emulator does."""
        self._requests.clear()
        for payload in self._payloads:
            payload._requests.clear()
        return await super().__call__(raw_request)


@contextlib.asynccontextmanager
async def lean_kube_server(directory: Path) -> AsyncIterator[Kube]:
    """:func:`tests.support.kube.kube_server` with a :class:`LeanEmulator`."""
    async with (
        LeanEmulator() as emulator,
        kmock.Server(emulator, host="127.0.0.1") as server,
    ):
        url = str(server.url).rstrip("/")
        kubeconfig = write_kubeconfig(directory / "kubeconfig", url)
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {KUBE_TOKEN}"}, timeout=30.0
        ) as client:
            yield Kube(emulator, url, kubeconfig, client)
