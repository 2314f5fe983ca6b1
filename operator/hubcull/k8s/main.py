"""``hubcull run``: the operator process (kopf, the handlers, metrics, liveness)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import kopf

from . import handlers  # registers the kopf handlers
from .health import (
    ApiHealth,
    NoCredentialsError,
    check_api_server,
    find_credentials,
    grace_from_env,
)
from .kubeapi import KubeAPI, client_for
from .metrics import Metrics
from .views import PolicyViews

log = logging.getLogger(__name__)

SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class OperatorConfigError(Exception):
    """The operator cannot start with these arguments; ``code`` is the exit status."""

    code = 2


class NoApiAccessError(OperatorConfigError):
    """No usable credentials, or the API server cannot be used with them (exit status 1)."""

    code = 1


class FailedProbeFilter(logging.Filter):
    """Drops aiohttp's traceback for a liveness probe that failed on purpose: kopf's health
    endpoint answers 500 by raising, and kopf has already logged why in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for aiohttp's "Error handling request" record of a failed probe."""
        error = record.exc_info[1] if record.exc_info else None
        return type(error).__name__ != "ActivityError"


#: Timeout of the start-up check of the API server (seconds).
STARTUP_CHECK_TIMEOUT = 10.0


async def startup_check(namespaces: list[str]) -> kopf.ConnectionInfo:
    """Log in and list and watch the CullPolicies once, before kopf starts.

    Raises :class:`NoApiAccessError` with one line when there are no credentials or the API
    server cannot be used with them (kopf would otherwise retry forever, with tracebacks).
    """
    try:
        info = find_credentials(kopf.OperatorSettings(), log)
    except NoCredentialsError as exc:
        raise NoApiAccessError(str(exc)) from None
    async with client_for(info, STARTUP_CHECK_TIMEOUT) as client:
        problem = await check_api_server(client, str(info.server), namespaces)
    if problem is not None:
        raise NoApiAccessError(problem)
    return info


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
    config = service_config(args)
    info = await startup_check(namespaces)
    logging.getLogger("aiohttp.server").addFilter(FailedProbeFilter())
    health = ApiHealth(grace_from_env())
    health.contact()
    login = handlers.LoginBox(info)
    metrics = metrics or Metrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    memo = kopf.Memo(metrics=metrics, clusterwide=not namespaces, login=login, health=health)
    memo["kube"] = KubeAPI(lambda: login.info)
    memo["views"] = PolicyViews()
    if config is not None:  # served by a startup handler, on kopf's event loop
        memo["service_config"] = config
        memo["keep_url"] = config.page_url
        memo["namespaces"] = namespaces
    # started before kopf, so kopf's shutdown does not wait for it; cancelled below
    heartbeat = asyncio.create_task(health.heartbeat(lambda: login.info, namespaces))
    try:
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
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat


def service_config(args: argparse.Namespace) -> Any:
    """The users' page settings with ``--service`` (``None`` without); raises
    :class:`OperatorConfigError` when the JUPYTERHUB_* variables do not describe one."""
    if not getattr(args, "service", False):
        return None
    from ..service.config import ServiceConfig, ServiceConfigError

    try:
        return ServiceConfig.from_env()
    except ServiceConfigError as exc:
        raise OperatorConfigError(str(exc)) from None


def run_operator(args: argparse.Namespace) -> int:
    """Entry point of ``hubcull run``. Raises :class:`OperatorConfigError` for arguments it
    cannot start with."""
    asyncio.run(operate(args))
    return 0
