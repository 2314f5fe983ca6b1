"""Writing ``status.keeps`` (spec.keep) without losing a keep: every change is a read of the
CullPolicy, a pure change of its keeps, and a status patch guarded by the ``resourceVersion``
that was read, tried again when a sweep or another keep wrote in between."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from .kubeapi import KubeAPI, KubeConflict

log = logging.getLogger(__name__)

#: Reads and patches before giving up when the policy keeps changing under us.
ATTEMPTS = 8

#: (the policy as read) -> the status fields to write, or None to write nothing
Change = Callable[[Mapping[str, Any]], "dict[str, Any] | None"]


async def change_status(kube: KubeAPI, namespace: str, name: str, change: Change) -> Any:
    """Apply ``change`` to the live policy; returns what was written (``None``: nothing, or
    the policy is gone). ``change`` may raise to refuse; it may be called more than once."""
    for _ in range(ATTEMPTS):
        body = await kube.read_policy(namespace, name)
        if body is None:
            return None
        fields = change(body)
        if fields is None:
            return None
        version = (body.get("metadata") or {}).get("resourceVersion")
        try:
            if not await kube.patch_status(namespace, name, fields, resource_version=version):
                return None
        except KubeConflict:
            continue
        return fields
    raise KubeConflict(f"CullPolicy {namespace}/{name} kept changing; try again")
