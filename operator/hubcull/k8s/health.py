"""Is the operator in touch with the Kubernetes API server? Credentials, a start-up check, and
the signal behind ``/healthz``.

* :func:`find_credentials`: the login ``hubcull run`` uses (in-cluster service account, then
  kubeconfig), with a one-line reason when there is none.
* :func:`check_api_server`: one round of what the operator needs from the API server, with
  the credentials kopf logged in with: list the CullPolicies of every watched namespace and
  watch them for a second. ``None`` when it worked, else one line saying what failed.
* :class:`ApiHealth`: when such a round last worked, whether kopf's last login failed, and
  :meth:`ApiHealth.heartbeat`, the loop that runs a round every few seconds. kopf's liveness
  endpoint asks it (``@kopf.on.probe`` in :mod:`hubcull.k8s.handlers`): ``/healthz`` fails
  while no round has worked for :attr:`ApiHealth.grace` seconds, or at once after a failed
  login, and answers 200 again as soon as a round works.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

import httpx
import kopf

from .kubeapi import GROUP, PLURAL, VERSION, client_for

log = logging.getLogger(__name__)

#: Seconds without a successful round before ``/healthz`` fails (``$HUBCULL_LIVENESS_GRACE``).
DEFAULT_GRACE_SECONDS = 30.0
GRACE_ENV = "HUBCULL_LIVENESS_GRACE"
#: At most this long between two rounds (less when the grace is short).
HEARTBEAT_SECONDS = 10.0
#: How long the round's watch stays open (``timeoutSeconds``).
WATCH_SECONDS = 1


class NoCredentialsError(Exception):
    """Neither an in-cluster service account nor a usable kubeconfig."""


def grace_from_env(environ: dict[str, str] | None = None) -> float:
    """The grace period from ``$HUBCULL_LIVENESS_GRACE`` (seconds, at least 2), else the
    default; a value that is not a number is reported and ignored."""
    raw = (os.environ if environ is None else environ).get(GRACE_ENV, "").strip()
    if not raw:
        return DEFAULT_GRACE_SECONDS
    try:
        return max(2.0, float(raw))
    except ValueError:
        log.warning("ignoring %s=%r: not a number of seconds", GRACE_ENV, raw)
        return DEFAULT_GRACE_SECONDS


def find_credentials(
    settings: kopf.OperatorSettings, logger: logging.Logger | logging.LoggerAdapter[Any]
) -> kopf.ConnectionInfo:
    """Log in as the operator does: the Kubernetes client's own loading (in-cluster, then
    kubeconfig), then kopf's minimal service-account and kubeconfig logins.

    Raises :class:`NoCredentialsError` with one line when none of them gives credentials.
    """
    problems: list[str] = []
    for login in (
        kopf.login_via_client,
        kopf.login_with_service_account,
        kopf.login_with_kubeconfig,
    ):
        try:
            info = login(settings=settings, logger=logger)
        except Exception as exc:  # a broken kubeconfig raises anything from yaml to KeyError
            problems.append(" ".join(str(exc).split()) or type(exc).__name__)
            continue
        if info is not None:
            return info
    where = "no in-cluster service account and no usable kubeconfig ($KUBECONFIG, ~/.kube/config)"
    detail = f" ({problems[-1]})" if problems and "neither" not in problems[-1] else ""
    raise NoCredentialsError(f"no Kubernetes credentials: {where}{detail}")


def policies_path(namespace: str | None) -> str:
    """The CullPolicy collection of a namespace, or of all namespaces for ``None``."""
    where = f"/namespaces/{quote(namespace)}" if namespace else ""
    return f"/apis/{GROUP}/{VERSION}{where}/{PLURAL}"


def _answer_problem(server: str, what: str, where: str, response: httpx.Response) -> str:
    code = response.status_code
    if code == 401:
        return f"the Kubernetes API server at {server} refused the credentials (401 Unauthorized)"
    if code == 403:
        return (
            f"the Kubernetes API server at {server} does not let the operator {what} "
            f"cullpolicies {where} (403 Forbidden): grant the RBAC of deploy/rbac/"
        )
    if code == 404:
        return (
            f"the Kubernetes API server at {server} has no cullpolicies.{GROUP} (404): install "
            "the CRD from deploy/crds/"
        )
    return f"the Kubernetes API server at {server} answered {code} to {what} cullpolicies {where}"


async def check_api_server(
    client: httpx.AsyncClient, server: str, namespaces: Sequence[str]
) -> str | None:
    """List and briefly watch the CullPolicies of each namespace (all namespaces if none).

    Returns ``None`` if the API server answered every request, else one line naming what
    failed: unreachable, no answer in time, credentials refused, RBAC, no CRD.
    """
    for namespace in namespaces or [None]:
        where = f"in namespace {namespace}" if namespace else "in all namespaces"
        path = policies_path(namespace)
        try:
            listed = await client.get(path, params={"limit": "1"})
            if listed.status_code != 200:
                return _answer_problem(server, "list", where, listed)
            version = (listed.json().get("metadata") or {}).get("resourceVersion")
            params = {"watch": "true", "timeoutSeconds": str(WATCH_SECONDS)}
            if version:
                params["resourceVersion"] = str(version)
            async with client.stream("GET", path, params=params) as watched:
                if watched.status_code != 200:
                    await watched.aread()
                    return _answer_problem(server, "watch", where, watched)
                async for _ in watched.aiter_bytes():
                    pass
        except httpx.TimeoutException:
            return f"the Kubernetes API server at {server} did not answer in time"
        except (httpx.HTTPError, ValueError) as exc:
            detail = f"{type(exc).__name__}: {' '.join(str(exc).split()) or 'no detail'}"
            return f"cannot reach the Kubernetes API server at {server}: {detail}"
    return None


class ApiHealth:
    """The operator's contact with the API server, as ``/healthz`` reports it.

    Healthy while the last successful :func:`check_api_server` round is at most
    :attr:`grace` seconds old and kopf's last login did not fail.
    """

    def __init__(
        self,
        grace: float = DEFAULT_GRACE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grace = grace
        self.clock = clock
        self.last_contact: float | None = clock()  # a fresh operator gets the grace period
        self.last_problem: str | None = None
        self.login_problem: str | None = None

    @property
    def interval(self) -> float:
        """Seconds between two rounds: a third of the grace, at most :data:`HEARTBEAT_SECONDS`."""
        return min(HEARTBEAT_SECONDS, self.grace / 3)

    def contact(self) -> None:
        """A round worked."""
        if self.last_problem is not None:
            log.warning("in touch with the Kubernetes API server again")
        self.last_contact = self.clock()
        self.last_problem = None

    def lost(self, problem: str) -> None:
        """A round failed: remember why (logged once per change)."""
        if problem != self.last_problem:
            log.warning("%s; /healthz fails if this lasts %ss", problem, f"{self.grace:g}")
        self.last_problem = problem

    def login_failed(self, problem: str) -> None:
        """kopf's login handler found no credentials: unhealthy until a login works."""
        self.login_problem = problem

    def login_succeeded(self) -> None:
        """kopf's login handler returned credentials."""
        self.login_problem = None

    def problem(self) -> str | None:
        """Why the operator is unhealthy now, or ``None``."""
        if self.login_problem is not None:
            return f"cannot log in to Kubernetes: {self.login_problem}"
        age = self.since_contact()
        if age is None or age > self.grace:
            never = "never" if age is None else f"not for {age:.0f}s"
            last = f": {self.last_problem}" if self.last_problem else ""
            return f"no successful contact with the Kubernetes API server ({never}){last}"
        return None

    def since_contact(self) -> float | None:
        """Seconds since the last successful round (``None``: none yet)."""
        return None if self.last_contact is None else self.clock() - self.last_contact

    def report(self) -> dict[str, Any]:
        """What ``/healthz`` shows when healthy."""
        age = self.since_contact()
        return {
            "lastContactSecondsAgo": None if age is None else round(age, 1),
            "graceSeconds": self.grace,
        }

    async def heartbeat(
        self, credentials: Callable[[], kopf.ConnectionInfo | None], namespaces: Sequence[str]
    ) -> None:
        """Run a round every :attr:`interval` seconds, forever, with the credentials kopf
        logged in with (``credentials()``, read again each round)."""
        client: httpx.AsyncClient | None = None
        used: kopf.ConnectionInfo | None = None
        timeout = max(WATCH_SECONDS + 1.0, min(HEARTBEAT_SECONDS, self.grace / 2))
        try:
            while True:
                info = credentials()
                if info is None:
                    self.lost("not logged in to Kubernetes")
                else:
                    if client is None or info is not used:
                        if client is not None:
                            await client.aclose()
                        client, used = client_for(info, timeout), info
                    problem = await check_api_server(client, str(info.server), namespaces)
                    if problem is None:
                        self.contact()
                    else:
                        self.lost(problem)
                await asyncio.sleep(self.interval)
        finally:
            if client is not None:
                await client.aclose()
