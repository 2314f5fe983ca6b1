"""The hubcull operator on the Kubernetes emulator, pointed at a real test Hub."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import kopf

from hubcull.k8s import handlers
from hubcull.k8s.metrics import Metrics
from tests.support.jhub import Hub
from tests.support.kube import InProcessOperator, Kube, run_operator
from tests.support.scenario import TOKEN_REF, spec_for

CULLPOLICIES = "hubcull.io/v1alpha1/cullpolicies"
NS = "jhub"


def secret(
    token: str, name: str = TOKEN_REF["name"], key: str = TOKEN_REF["key"], namespace: str = NS
) -> dict[str, Any]:
    """A Secret holding a Hub token the way z2jh stores it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {key: base64.b64encode(token.encode()).decode()},
    }


def cullpolicy(
    target: Hub | str, name: str = "default", namespace: str = NS, **spec: Any
) -> dict[str, Any]:
    """A CullPolicy for the test Hub (or a URL)."""
    return {
        "apiVersion": "hubcull.io/v1alpha1",
        "kind": "CullPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec_for(target, **spec),
    }


@asynccontextmanager
async def hubcull_operator(
    kube: Kube, namespaces: tuple[str, ...] = (NS,), **kwargs: Any
) -> AsyncIterator[tuple[InProcessOperator, kopf.Memo]]:
    """Run the real hubcull handlers (kopf's default registry) in-process; yields the
    operator and its memo (``memo["metrics"]``, ``memo["controllers"]``)."""
    for namespace in namespaces:
        await kube.create_namespace(namespace)
    memo = kopf.Memo(metrics=Metrics(), controllers={}, served=set())
    async with run_operator(kube, handlers, namespaces=namespaces, memo=memo, **kwargs) as op:
        yield op, memo


async def policy_status(kube: Kube, name: str = "default", namespace: str = NS) -> dict:
    """The CullPolicy's status (empty if none yet)."""
    obj = await kube.get(CULLPOLICIES, namespace, name)
    assert obj is not None, f"CullPolicy {namespace}/{name} is gone"
    return obj.get("status") or {}


def condition(status: dict, type_: str) -> dict:
    """One condition of a status, or {}."""
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


async def wait_status(kube: Kube, check, name: str = "default", timeout: float = 30.0) -> dict:
    """Poll the policy's status until ``check(status)`` holds; return the status."""

    async def ready() -> dict:
        status = await policy_status(kube, name)
        assert check(status), status
        return status

    return await kube.wait_for(ready, timeout=timeout)
