"""kopf handlers: thin glue from CullPolicy objects to :class:`PolicyController` loops.

One daemon per CullPolicy sweeps on the policy's own ``spec.every``. A raw-event handler,
filtered to run only when ``metadata.generation`` moves past what the daemon swept, wakes it
so that a spec edit takes effect at once (the daemon's body is kopf's live view of the
object, so it sweeps with the new spec).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import kopf

from .controller import PolicyController
from .health import ApiHealth, NoCredentialsError, find_credentials
from .kubeapi import GROUP, PLURAL, VERSION, KubeAPI

FINALIZER = "hubcull.io/sweeper"
#: Pause after an unexpected error before sweeping again.
ERROR_RETRY_SECONDS = 30.0
#: With peering, a new sweep loop waits this long before its first sweep, so that operators
#: starting together see each other (kopf pauses the lower priority) before either sweeps.
PEERING_SETTLE_SECONDS = 5.0
#: kopf's peering lifetime in seconds (kopf's default: 60): how long after its last keep-alive
#: a peer that died without a goodbye (SIGKILL, lost node) still holds off the standbys.
PEERING_LIFETIME_ENV = "HUBCULL_PEERING_LIFETIME"
#: Finalizers released at once on shutdown.
RELEASE_CONCURRENCY = 20


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Operator-wide settings; the Kubernetes client and metrics are prepared in ``memo``."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="hubcull.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="hubcull.io", key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    if not memo.get("clusterwide", False):
        settings.scanning.disabled = True
    lifetime = os.environ.get(PEERING_LIFETIME_ENV, "").strip()
    if lifetime:
        try:
            settings.peering.lifetime = max(2, int(lifetime))
        except ValueError:
            logging.getLogger(__name__).warning(
                "ignoring %s=%r: not a whole number of seconds", PEERING_LIFETIME_ENV, lifetime
            )
    memo.setdefault("peering", not settings.peering.standalone)
    memo.setdefault("controllers", {})
    memo.setdefault("loops", {})
    memo.setdefault("served", set())
    box = memo.setdefault("login", LoginBox())
    if "kube" not in memo:
        memo["kube"] = KubeAPI(lambda: box.info)


@dataclass
class LoginBox:
    """kopf's current credentials, shared by every per-object memo (they are shallow copies)."""

    info: kopf.ConnectionInfo | None = None


#: Seconds before kopf tries the login handler again after it found no credentials.
LOGIN_RETRY_SECONDS = 10.0


@kopf.on.login()
def login(memo: kopf.Memo, logger: logging.Logger, **kwargs: Any) -> kopf.ConnectionInfo:
    """Log in as kopf would by default, and keep the credentials for our own API calls.

    kopf calls this again when the API server rejects the credentials, so rotated service
    account tokens reach :class:`KubeAPI` too. Without credentials it fails with one line
    (no traceback), marks the operator unhealthy and is tried again after
    :data:`LOGIN_RETRY_SECONDS`.
    """
    health: ApiHealth | None = memo.get("health")
    try:
        info = find_credentials(kwargs["settings"], logger)
    except NoCredentialsError as exc:
        if health is not None:
            health.login_failed(str(exc))
        raise kopf.TemporaryError(str(exc), delay=LOGIN_RETRY_SECONDS) from None
    if health is not None:
        health.login_succeeded()
    memo.setdefault("login", LoginBox()).info = info
    return info


@kopf.on.probe(id="apiserver")
def api_server_probe(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    """Liveness: fail (``/healthz`` answers 500) while the operator cannot log in to the API
    server or has not listed and watched its CullPolicies for the grace period."""
    health: ApiHealth | None = memo.get("health")
    if health is None:  # operators started without hubcull run's heartbeat (tests)
        return {"monitored": False}
    problem = health.problem()
    if problem is not None:
        raise kopf.PermanentError(problem)
    return health.report()


@kopf.daemon(GROUP, VERSION, PLURAL, id="sweeper", cancellation_timeout=10.0)
async def sweeper(
    body: kopf.Body,
    meta: kopf.Meta,
    name: str,
    namespace: str,
    stopped: kopf.DaemonStopped,
    memo: kopf.Memo,
    logger: logging.Logger,
    **_: Any,
) -> None:
    """Sweep the policy every ``spec.every`` until it is deleted or the operator stops."""

    def post(type_: str, reason: str, message: str) -> None:
        kopf.event(body, type=type_, reason=reason, message=message)

    controller = PolicyController(namespace, name, memo["kube"], memo["metrics"], post)
    loop = SweepLoop(meta.get("generation"))
    memo["controllers"][(namespace, name)] = controller
    memo["loops"][(namespace, name)] = loop
    memo["served"].add((namespace, name))
    try:
        # A (re)started loop keeps the schedule of status.lastSweepTime: a failover or restart
        # does not sweep a policy twice in one interval.
        await loop.pause(stopped, PEERING_SETTLE_SECONDS if memo.get("peering") else 0.0)
        await loop.pause(stopped, controller.resume_delay(body))
        while not stopped:
            loop.wake.clear()
            loop.generation = meta.get("generation")
            try:
                delay = await controller.sweep(body)
            except Exception:
                # A bug or an API-server hiccup must not end this policy's loop.
                logger.exception("sweep of %s/%s failed unexpectedly", namespace, name)
                delay = ERROR_RETRY_SECONDS
            await loop.pause(stopped, delay)
    finally:
        memo["controllers"].pop((namespace, name), None)
        memo["loops"].pop((namespace, name), None)
        await _close(controller)
        reason = stopped.reason
        if reason is not None and kopf.DaemonStoppingReason.OPERATOR_PAUSING in reason:
            # a higher-priority peer serves it now: a standby's shutdown must not release it
            memo["served"].discard((namespace, name))
        if reason is not None and kopf.DaemonStoppingReason.RESOURCE_DELETED in reason:
            memo["served"].discard((namespace, name))
            memo["metrics"].forget(namespace, name)


async def _close(controller: PolicyController) -> None:
    """Close the policy's controller (its probe tokens are deleted, within a bound) even when
    kopf cancels the daemon to stop it: kopf cancels once, then waits ``cancellation_timeout``
    for the daemon to end, which is longer than deleting the tokens may take."""
    closing = asyncio.ensure_future(controller.close())
    try:
        await asyncio.shield(closing)
    except asyncio.CancelledError:
        await closing
        raise


@dataclass
class SweepLoop:
    """A policy's daemon between sweeps: the generation it swept, and what wakes it early."""

    generation: Any
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    async def pause(self, stopped: kopf.DaemonStopped, seconds: float) -> None:
        """Wait ``seconds``; less if the operator stops or the spec changes meanwhile."""
        if stopped or seconds <= 0 or self.wake.is_set():
            return
        waits = [
            asyncio.ensure_future(_until_stopped(stopped, seconds)),
            asyncio.ensure_future(self.wake.wait()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()


async def _until_stopped(stopped: kopf.DaemonStopped, seconds: float) -> None:
    await stopped.wait(seconds)


def _spec_moved(meta: kopf.Meta, namespace: str, name: str, memo: kopf.Memo, **_: Any) -> bool:
    """True when the policy's generation differs from the one its daemon last swept."""
    loop = memo.get("loops", {}).get((namespace, name))
    return loop is not None and meta.get("generation") != loop.generation


@kopf.on.event(GROUP, VERSION, PLURAL, id="spec-change", when=_spec_moved)
def wake_on_spec_change(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    """Wake the policy's daemon so that it sweeps with the new spec at once."""
    loop = memo.get("loops", {}).get((namespace, name))
    if loop is not None:
        loop.wake.set()


@kopf.on.cleanup()
async def release_policies(memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """On a clean shutdown, drop our finalizer so that deleting policies (or uninstalling
    hubcull) never leaves them stuck in Terminating; the next operator adds it back."""
    kube: KubeAPI = memo["kube"]
    in_flight = asyncio.Semaphore(RELEASE_CONCURRENCY)

    async def release(namespace: str, name: str) -> None:
        async with in_flight:
            try:
                await kube.remove_finalizer(namespace, name, FINALIZER)
            except Exception as exc:
                logger.warning("could not drop the finalizer of %s/%s: %s", namespace, name, exc)

    # concurrently: an operator serving many policies must stop within its grace period
    await asyncio.gather(*(release(ns, name) for ns, name in sorted(memo.get("served", ()))))
    await kube.aclose()
