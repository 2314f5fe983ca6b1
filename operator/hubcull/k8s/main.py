"""``hubcull run``: the operator process (kopf, the handlers, metrics, liveness)."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

import kopf

from . import handlers  # noqa: F401 - registers the kopf handlers
from .metrics import Metrics

SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class OperatorConfigError(Exception):
    """The operator cannot start with these arguments."""


def watched_namespaces(args: argparse.Namespace) -> list[str]:
    """The namespaces to watch: ``--namespace``s, else ``$POD_NAMESPACE``, else the service
    account's namespace. Empty means all namespaces."""
    if args.all_namespaces:
        return []
    if args.namespace:
        return list(args.namespace)
    own = os.environ.get("POD_NAMESPACE", "").strip()
    if not own and SA_NAMESPACE_FILE.exists():
        own = SA_NAMESPACE_FILE.read_text().strip()
    if not own:
        raise OperatorConfigError(
            "no namespace to watch: pass --namespace NS (repeatable) or --all-namespaces"
        )
    return [own]


async def operate(
    args: argparse.Namespace,
    metrics: Metrics | None = None,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
) -> None:
    """Run the operator until ``stop_flag`` is set (or a signal arrives)."""
    namespaces = watched_namespaces(args)
    metrics = metrics or Metrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    memo = kopf.Memo(metrics=metrics, clusterwide=not namespaces)
    await kopf.operator(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=not args.peering,
        peering_name=args.peering,
        priority=args.priority,
        liveness_endpoint=args.liveness,
        memo=memo,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def run_operator(args: argparse.Namespace) -> int:
    """Entry point of ``hubcull run``. Raises :class:`OperatorConfigError` for arguments it
    cannot start with."""
    asyncio.run(operate(args))
    return 0
