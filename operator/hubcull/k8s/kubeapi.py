"""The few Kubernetes API calls the operator makes itself: read a Secret, patch a status,
drop a finalizer. Credentials are kopf's own (a ``kopf.ConnectionInfo`` from its login),
looked up again after a 401 so that re-logins and rotated tokens are picked up.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import httpx

GROUP, VERSION, PLURAL = "hubcull.io", "v1alpha1", "cullpolicies"


def client_for(info: Any, timeout: float) -> httpx.AsyncClient:
    """An httpx client with the credentials of a kopf login (a ``kopf.ConnectionInfo``)."""
    return httpx.AsyncClient(
        base_url=str(info.server).rstrip("/"),
        headers=info.as_http_headers(),
        verify=info.as_ssl_context(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
        timeout=httpx.Timeout(timeout),
    )


class KubeError(Exception):
    """An unexpected answer from the Kubernetes API (never carries Secret contents)."""


class KubeForbidden(KubeError):
    """RBAC refused the request."""


class KubeConflict(KubeError):
    """A write with a ``resourceVersion`` that is no longer the object's (HTTP 409)."""


class WatchExpired(KubeError):
    """A watch's resourceVersion is too old (410 Gone): list again."""


class KubeAPI:
    """A small async Kubernetes client on httpx; ``connect`` returns a kopf ConnectionInfo."""

    def __init__(self, connect: Callable[[], Any], timeout: float = 30.0) -> None:
        self._connect = connect
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None

    def _new_client(self) -> httpx.AsyncClient:
        info = self._connect()
        if info is None:
            raise KubeError("not logged in to Kubernetes: no service account and no kubeconfig")
        return client_for(info, self._timeout)

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(2):
            if self._client is None:
                self._client = self._new_client()
            response = await self._client.request(method, path, **kwargs)
            if response.status_code != 401 or attempt:
                return response
            await self._client.aclose()
            self._client = None
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str | None:
        """The decoded value of one key of a Secret, or ``None`` if the Secret or key is
        missing. Raises :class:`KubeError` if the operator may not read it."""
        path = f"/api/v1/namespaces/{quote(namespace)}/secrets/{quote(name)}"
        response = await self._request("GET", path)
        if response.status_code == 404:
            return None
        if response.status_code == 403:
            raise KubeError(f"the operator may not read Secret {namespace}/{name} (403)")
        if response.status_code >= 400:
            raise KubeError(f"reading Secret {namespace}/{name} failed ({response.status_code})")
        data = (response.json().get("data") or {}).get(key)
        if data is None:
            return None
        try:
            return base64.b64decode(data).decode()
        except (ValueError, UnicodeDecodeError):
            raise KubeError(f"Secret {namespace}/{name} key {key} is not valid base64") from None

    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """Every pod in ``namespace`` matching ``label_selector``, following ``continue``.

        Raises :class:`KubeForbidden` when RBAC refuses and :class:`KubeError` otherwise."""
        items, _, _ = await self.list_pods_at(namespace, label_selector)
        return items

    async def list_pods_at(
        self, namespace: str, label_selector: str
    ) -> tuple[list[dict[str, Any]], str | None, str | None]:
        """Every pod matching ``label_selector``, the list's ``resourceVersion`` (to watch
        from) and the response's ``Date`` header. Raises :class:`KubeForbidden` naming
        ``pods list`` when RBAC refuses."""
        path = f"/api/v1/namespaces/{quote(namespace)}/pods"
        items: list[dict[str, Any]] = []
        params = {"labelSelector": label_selector, "limit": "500"}
        while True:
            response = await self._request("GET", path, params=params)
            if response.status_code == 403:
                raise KubeForbidden(f"the operator may not list pods in namespace {namespace}")
            if response.status_code >= 400:
                raise KubeError(f"listing pods in {namespace} failed ({response.status_code})")
            body = response.json()
            items.extend(body.get("items") or [])
            metadata = body.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                return items, metadata.get("resourceVersion"), response.headers.get("date")
            params = {**params, "continue": token}

    async def watch_pods(
        self,
        namespace: str,
        label_selector: str,
        resource_version: str | None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[dict[str, Any]]:
        """The watch events of pods from ``resource_version`` until the server ends the
        stream (after ``timeout_seconds``). Raises :class:`KubeForbidden` (``pods watch``),
        :class:`WatchExpired` (410: list again) or :class:`KubeError`."""
        path = f"/api/v1/namespaces/{quote(namespace)}/pods"
        params = {
            "watch": "true",
            "labelSelector": label_selector,
            "timeoutSeconds": str(timeout_seconds),
            "allowWatchBookmarks": "true",
        }
        if resource_version:
            params["resourceVersion"] = resource_version
        if self._client is None:
            self._client = self._new_client()
        timeout = httpx.Timeout(self._timeout, read=timeout_seconds + self._timeout)
        async with self._client.stream("GET", path, params=params, timeout=timeout) as response:
            if response.status_code == 403:
                raise KubeForbidden(f"the operator may not watch pods in namespace {namespace}")
            if response.status_code == 410:
                raise WatchExpired("the pod watch's resourceVersion is too old")
            if response.status_code == 401:
                await self.aclose()
                raise KubeError("the API server refused the credentials (401)")
            if response.status_code >= 400:
                raise KubeError(f"watching pods in {namespace} failed ({response.status_code})")
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    code = (event.get("object") or {}).get("code")
                    if code == 410:
                        raise WatchExpired("the pod watch's resourceVersion is too old")
                    raise KubeError(f"the pod watch ended with an error ({code})")
                yield event

    async def list_events(
        self, namespace: str, field_selector: str
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Core v1 Events matching ``field_selector`` and the response's ``Date`` header.
        Raises :class:`KubeForbidden` naming ``events list`` when RBAC refuses."""
        path = f"/api/v1/namespaces/{quote(namespace)}/events"
        response = await self._request("GET", path, params={"fieldSelector": field_selector})
        if response.status_code == 403:
            raise KubeForbidden(f"the operator may not list events in namespace {namespace}")
        if response.status_code >= 400:
            raise KubeError(f"listing events in {namespace} failed ({response.status_code})")
        return list(response.json().get("items") or []), response.headers.get("date")

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One pod (``None`` if it is gone). Raises :class:`KubeForbidden` (``pods get``)."""
        path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}"
        response = await self._request("GET", path)
        if response.status_code == 404:
            return None
        if response.status_code == 403:
            raise KubeForbidden(f"the operator may not get pods in namespace {namespace}")
        if response.status_code >= 400:
            raise KubeError(f"reading pod {namespace}/{name} failed ({response.status_code})")
        body = response.json()
        return body if isinstance(body, dict) else None

    async def may(self, namespace: str, verb: str, resource: str) -> bool | None:
        """Whether RBAC lets the operator ``verb`` core ``resource`` in ``namespace``, by a
        SelfSubjectAccessReview (``None``: unknown, the review itself failed)."""
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": verb,
                    "group": "",
                    "resource": resource,
                }
            },
        }
        path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
        try:
            response = await self._request("POST", path, json=review)
            if response.status_code >= 300:
                return None
            allowed = (response.json().get("status") or {}).get("allowed")
        except (httpx.HTTPError, ValueError):
            return None
        return allowed if isinstance(allowed, bool) else None

    def _policy_path(self, namespace: str, name: str) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{PLURAL}/{quote(name)}"

    async def read_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A CullPolicy as the API server has it now (``None`` if it is gone)."""
        response = await self._request("GET", self._policy_path(namespace, name))
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise KubeError(f"reading CullPolicy {namespace}/{name} failed: {response.status_code}")
        return response.json()

    async def list_policies(self, namespaces: list[str]) -> list[dict[str, Any]]:
        """Every CullPolicy in ``namespaces`` (all namespaces when empty)."""
        if namespaces:
            base = f"/apis/{GROUP}/{VERSION}/namespaces"
            paths = [f"{base}/{quote(ns)}/{PLURAL}" for ns in namespaces]
        else:
            paths = [f"/apis/{GROUP}/{VERSION}/{PLURAL}"]
        items: list[dict[str, Any]] = []
        for path in paths:
            response = await self._request("GET", path)
            if response.status_code >= 400:
                raise KubeError(f"listing CullPolicies failed: {response.status_code}")
            items.extend(response.json().get("items") or [])
        return items

    async def patch_status(
        self,
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> bool:
        """Merge-patch a CullPolicy's status; ``False`` if the policy is gone. With
        ``resource_version``, raise :class:`KubeConflict` if the object changed since."""
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        response = await self._request(
            "PATCH",
            self._policy_path(namespace, name) + "/status",
            json=body,
            headers={"Content-Type": "application/merge-patch+json"},
        )
        if response.status_code == 404:
            return False
        if response.status_code == 409:
            raise KubeConflict(f"CullPolicy {namespace}/{name} changed meanwhile")
        if response.status_code >= 400:
            raise KubeError(f"patching status of {namespace}/{name} failed: {response.status_code}")
        return True

    async def post_event(
        self, obj: dict[str, Any], type_: str, reason: str, message: str, now: str
    ) -> None:
        """Post a core/v1 Event about a CullPolicy (``now``: RFC 3339). Failures are
        raised as :class:`KubeError`; events are a courtesy, callers log and go on."""
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace", "default")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{meta.get('name', 'cullpolicy')}.",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", f"{GROUP}/{VERSION}"),
                "kind": obj.get("kind", "CullPolicy"),
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "hubcull"},
            "reportingComponent": "hubcull",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        response = await self._request(
            "POST", f"/api/v1/namespaces/{quote(namespace)}/events", json=event
        )
        if response.status_code >= 400:
            raise KubeError(f"posting an event failed: {response.status_code}")

    async def remove_finalizer(self, namespace: str, name: str, finalizer: str) -> None:
        """Drop ``finalizer`` from a CullPolicy (a JSON patch guarded by a ``test``)."""
        path = self._policy_path(namespace, name)
        response = await self._request("GET", path)
        if response.status_code == 404:
            return
        finalizers = (response.json().get("metadata") or {}).get("finalizers") or []
        if finalizer not in finalizers:
            return
        index = finalizers.index(finalizer)
        await self._request(
            "PATCH",
            path,
            json=[
                {"op": "test", "path": f"/metadata/finalizers/{index}", "value": finalizer},
                {"op": "remove", "path": f"/metadata/finalizers/{index}"},
            ],
            headers={"Content-Type": "application/json-patch+json"},
        )
