"""A Kubernetes API emulator and helpers to run kopf operators against it in tests.

The pieces:

* :class:`ApiServerEmulator` (in :mod:`tests.support.kube_emulator`): kmock's Kubernetes
  emulator made to behave enough like an API server for kopf.
* :func:`kube_server`: starts the emulator on 127.0.0.1 and yields a :class:`Kube` with the
  URL, a kubeconfig file and async httpx helpers; the ``kube`` fixture in
  ``tests/conftest.py`` wraps it and also points ``KUBECONFIG`` at it (:func:`use_kubeconfig`).
* :func:`run_operator` and :func:`run_operator_process` (in :mod:`tests.support.kube_operator`):
  a real kopf operator in a background thread of this process, or as a subprocess.
* :func:`httpx_client_for`: an httpx client from kopf's :class:`kopf.ConnectionInfo`, for an
  operator's own API calls with the credentials its login handler produced.

Example::

    async def test_it(kube: Kube) -> None:
        registry = kopf.OperatorRegistry()
        kopf.on.login(registry=registry)(kopf.login_with_kubeconfig)
        ...  # @kopf.daemon(..., registry=registry) etc.
        await kube.create_namespace("ns")
        async with run_operator(kube, registry, namespaces=["ns"]):
            await kube.create({"apiVersion": "hubcull.io/v1alpha1", "kind": "CullPolicy", ...})
            await kube.wait_for(lambda: ...)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import kmock
import kopf
import pytest
import yaml

from tests.support.kube_emulator import (
    DEFAULT_RESOURCES,
    ApiServerEmulator,
    ResourceDecl,
    parse_api_path,
)
from tests.support.kube_operator import (
    InProcessOperator,
    OperatorCrashedError,
    SubprocessOperator,
    kopf_run_command,
    run_operator,
    run_operator_process,
)

__all__ = [
    "DEFAULT_RESOURCES",
    "ApiServerEmulator",
    "InProcessOperator",
    "Kube",
    "KubeApiError",
    "OperatorCrashedError",
    "ResourceDecl",
    "SubprocessOperator",
    "httpx_client_for",
    "kopf_run_command",
    "kube_server",
    "parse_api_path",
    "run_operator",
    "run_operator_process",
    "use_kubeconfig",
]

T = TypeVar("T")
Body = dict[str, Any]

# A token is written to the kubeconfig so that clients send an Authorization header,
# as they would to a real cluster. The emulator does not check it.
KUBE_TOKEN = "kube-harness-token"
KUBE_CONTEXT = "kube-harness"


class KubeApiError(Exception):
    """A non-2xx answer of the emulator to one of :class:`Kube`'s helpers."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{method} {path} -> {status}: {message}")
        self.status = status
        self.body = body


class Checkable(Protocol):
    """Anything that can raise if it has failed: a running operator."""

    def check(self) -> None: ...


def httpx_client_for(info: kopf.ConnectionInfo, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx client for the API server with the credentials of a kopf login.

    kopf's login handlers (``kopf.login_with_kubeconfig``, ``login_with_service_account``,
    ``login_via_client``) return a :class:`kopf.ConnectionInfo`; its public
    ``as_http_headers()`` and ``as_ssl_context()`` give the Authorization header (token or
    basic auth) and the TLS setup (CA, client certificates, insecure), as kopf's own
    aiohttp session uses them.
    """
    return httpx.AsyncClient(
        base_url=info.server,
        headers=info.as_http_headers(),
        verify=info.as_ssl_context(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
        **kwargs,
    )


def write_kubeconfig(path: Path, server: str, *, namespace: str = "default") -> Path:
    """Write a kubeconfig with one context for ``server`` (plain HTTP, a dummy token)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": KUBE_CONTEXT,
        "clusters": [{"name": KUBE_CONTEXT, "cluster": {"server": server}}],
        "users": [{"name": KUBE_CONTEXT, "user": {"token": KUBE_TOKEN}}],
        "contexts": [
            {
                "name": KUBE_CONTEXT,
                "context": {"cluster": KUBE_CONTEXT, "user": KUBE_CONTEXT, "namespace": namespace},
            }
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


class Kube:
    """The running emulator: its URL, a kubeconfig for it, and async API helpers.

    Resources are named as kmock names them: ``"v1/secrets"``,
    ``"hubcull.io/v1alpha1/cullpolicies"``. Every helper is a real HTTP request.
    """

    def __init__(
        self,
        emulator: ApiServerEmulator,
        url: str,
        kubeconfig_path: Path,
        client: httpx.AsyncClient,
    ) -> None:
        self.emulator = emulator
        self.url = url
        self.kubeconfig_path = kubeconfig_path
        self.client = client
        # Operators started with run_operator*(); wait_for() fails fast if one has crashed.
        self.operators: list[Checkable] = []

    # --- addressing ---

    def resource_for(self, api_version: str, kind: str) -> str:
        """The declared resource of an ``apiVersion`` and ``kind``, e.g. ``v1/secrets``."""
        group, _, version = api_version.rpartition("/")
        for resource in self.emulator.resources:
            info = self.emulator.resources[resource]
            if (resource.group, resource.version, info.kind) == (group, version, kind):
                return f"{api_version}/{resource.plural}"
        raise LookupError(f"{kind} of {api_version} is not declared in the emulator")

    def path(
        self,
        resource: str,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        """The URL path of a collection or an object of a resource."""
        res = kmock.resource(resource)
        if res.group is None or res.version is None or res.plural is None:
            raise ValueError(f"not a group/version/plural resource: {resource!r}")
        parts = ["api", res.version] if not res.group else ["apis", res.group, res.version]
        if namespace is not None:
            parts += ["namespaces", namespace]
        parts.append(res.plural)
        parts += [part for part in (name, subresource) if part is not None]
        return "/" + "/".join(parts)

    # --- requests ---

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One API request; the decoded JSON of a 2xx answer, else :class:`KubeApiError`."""
        response = await self.client.request(
            method,
            path,
            json=json,
            params=params,
            headers={"Content-Type": content_type} if json is not None else None,
        )
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if not response.is_success:
            raise KubeApiError(method, path, response.status_code, body)
        return body

    async def create(self, obj: Body, *, resource: str | None = None) -> Body:
        """Create an object; its resource is found by ``apiVersion`` and ``kind`` if not given."""
        resource = resource or self.resource_for(obj["apiVersion"], obj["kind"])
        namespaced = self.emulator.resources[resource].namespaced
        namespace = (obj.get("metadata") or {}).get("namespace") if namespaced else None
        body: Body = await self.request("POST", self.path(resource, namespace), json=obj)
        return body

    async def get(
        self, resource: str, namespace: str | None, name: str, *, subresource: str | None = None
    ) -> Body | None:
        """An object, or None if it does not exist (any other error raises)."""
        try:
            body: Body = await self.request(
                "GET", self.path(resource, namespace, name, subresource)
            )
        except KubeApiError as e:
            if e.status == 404:
                return None
            raise
        return body

    async def patch(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        merge_patch: Body | None = None,
        *,
        json_patch: list[Body] | None = None,
        subresource: str | None = None,
    ) -> Body:
        """Merge-patch (or JSON-patch) an object or its ``status`` subresource."""
        if (merge_patch is None) == (json_patch is None):
            raise TypeError("pass either merge_patch or json_patch")
        body: Body = await self.request(
            "PATCH",
            self.path(resource, namespace, name, subresource),
            json=merge_patch if merge_patch is not None else json_patch,
            content_type=(
                "application/merge-patch+json"
                if merge_patch is not None
                else "application/json-patch+json"
            ),
        )
        return body

    async def delete(
        self, resource: str, namespace: str | None, name: str, *, missing_ok: bool = False
    ) -> Body | None:
        """Delete an object: its last state, or its state marked for deletion (finalizers)."""
        try:
            body: Body = await self.request("DELETE", self.path(resource, namespace, name))
        except KubeApiError as e:
            if e.status == 404 and missing_ok:
                return None
            raise
        return body

    async def list(
        self,
        resource: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[Body]:
        """The objects of a resource, in a namespace or in all namespaces."""
        params = {
            key: value
            for key, value in {
                "labelSelector": label_selector,
                "fieldSelector": field_selector,
            }.items()
            if value
        }
        body = await self.request("GET", self.path(resource, namespace), params=params)
        items: list[Body] = body["items"]
        return items

    async def events_for(self, namespace: str, name: str, *, kind: str | None = None) -> list[Body]:
        """The ``v1`` Events whose involvedObject is the named object (optionally of a kind)."""
        events = await self.list("v1/events", namespace)
        return [
            event
            for event in events
            if event.get("involvedObject", {}).get("name") == name
            and (kind is None or event.get("involvedObject", {}).get("kind") == kind)
        ]

    async def create_namespace(self, name: str) -> Body:
        """Create a namespace, or get it if it exists."""
        try:
            return await self.create(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            )
        except KubeApiError as e:
            if e.status != 409:
                raise
        existing = await self.get("v1/namespaces", None, name)
        assert existing is not None
        return existing

    async def ensure_peering(self, name: str, namespace: str | None = None) -> Body:
        """Create kopf's peering object (namespaced, or cluster-wide if no namespace).

        kopf only patches the peering object; it must exist before operators start.
        """
        kind, resource = (
            ("ClusterKopfPeering", "kopf.dev/v1/clusterkopfpeerings")
            if namespace is None
            else ("KopfPeering", "kopf.dev/v1/kopfpeerings")
        )
        existing = await self.get(resource, namespace, name)
        if existing is not None:
            return existing
        metadata = {"name": name} | ({"namespace": namespace} if namespace else {})
        return await self.create({"apiVersion": "kopf.dev/v1", "kind": kind, "metadata": metadata})

    # --- polling ---

    def check_operators(self) -> None:
        """Raise :class:`OperatorCrashedError` if an operator started on this Kube has failed."""
        for operator in list(self.operators):
            operator.check()

    async def wait_for(
        self,
        predicate: Callable[[], Awaitable[T] | T],
        timeout: float = 10.0,
        *,
        interval: float = 0.02,
        message: str | None = None,
    ) -> T:
        """Poll ``predicate`` until it returns a truthy value, and return that value.

        The predicate may be sync or async. An ``AssertionError`` it raises counts as "not
        yet" (so predicates can use ``assert``), and the last one is re-raised at the
        deadline. A crashed operator (see :meth:`check_operators`) fails the wait at once.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last_error: AssertionError | None = None
        result: Any = None
        while True:
            self.check_operators()
            try:
                result = predicate()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return result  # type: ignore[no-any-return]
                last_error = None
            except AssertionError as e:
                last_error = e
            if loop.time() >= deadline:
                what = message or getattr(predicate, "__name__", repr(predicate))
                error = AssertionError(
                    f"timed out after {timeout}s waiting for {what}; last result: {result!r}"
                )
                raise error from last_error
            await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def kube_server(directory: Path, *, declare_defaults: bool = True) -> AsyncIterator[Kube]:
    """Run an :class:`ApiServerEmulator` on 127.0.0.1 with a kubeconfig in ``directory``.

    At exit, errors of the emulator itself (bugs, as opposed to the 4xx answers it gives)
    fail the test.
    """
    async with (
        ApiServerEmulator(declare_defaults=declare_defaults) as emulator,
        kmock.Server(emulator, host="127.0.0.1") as server,
    ):
        url = str(server.url).rstrip("/")
        kubeconfig = write_kubeconfig(directory / "kubeconfig", url)
        async with httpx.AsyncClient(
            base_url=url,
            headers={"Authorization": f"Bearer {KUBE_TOKEN}"},
            timeout=10.0,
        ) as client:
            kube = Kube(emulator, url, kubeconfig, client)
            yield kube
            if emulator.internal_errors:
                raise AssertionError(f"the emulator failed: {emulator.internal_errors!r}")


def use_kubeconfig(kube: Kube, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point this process's Kubernetes logins at the emulator, for one test.

    * ``KUBECONFIG`` is what ``kopf.login_with_kubeconfig`` and subprocesses read.
    * ``KUBERNETES_SERVICE_HOST``/``PORT`` are removed, so no in-cluster login is tried.
    * The ``kubernetes`` client reads ``$KUBECONFIG`` once, at import, into
      ``kube_config.KUBE_CONFIG_DEFAULT_LOCATION``: kopf's default login for registries
      from ``kopf.get_default_registry()`` (``kopf.login_via_client`` when ``kubernetes`` is
      installed, as here) would otherwise use the value from before the test. It is patched,
      and the client's global default configuration, which that login overwrites, is
      restored after the test.
    """
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    try:
        import kubernetes.client
        import kubernetes.config.kube_config
    except ImportError:  # pragma: no cover - kubernetes is a dependency of hubcull
        return
    monkeypatch.setattr(
        kubernetes.config.kube_config,
        "KUBE_CONFIG_DEFAULT_LOCATION",
        os.fspath(kube.kubeconfig_path),
    )
    configuration = kubernetes.client.Configuration
    monkeypatch.setattr(configuration, "_default", getattr(configuration, "_default", None))
