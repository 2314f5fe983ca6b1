"""One sweep of each culler, timed the same way, in this process.

* :func:`reference_sweep` awaits ``jupyterhub_idle_culler.cull_idle`` once: the coroutine the
  reference's ``PeriodicCallback`` runs every ``--cull-every`` seconds, with the arguments
  ``IdleCuller.start()`` passes for ``--timeout``, ``--concurrency`` and ``--api-page-size``.
  Calling it directly times exactly one sweep with no process startup and no guessing from
  logs when a sweep ended.
* :func:`hubcull_sweep` awaits :func:`~hubcull.engine.sweep.runner.sweep_policy`, the
  function behind both ``hubcull sweep --once`` and each of the operator's sweeps, with a
  policy made of the same settings. :func:`hubcull_engine_sweep` runs the same engine with a
  client whose concurrency is above what the CullPolicy schema allows (100), to show what a
  separate, larger limit for stops would give.
* :func:`direct_stops` is the floor: the fastest listing (pages of 200, all in flight) and
  then every idle server stopped with many requests in flight, to find the Hub's maximum
  stop throughput.

Both cullers get the same token, the same timeout and the same concurrency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubcull.engine.hub.client import HubClient
from hubcull.engine.rules.policy import Policy, parse_spec
from hubcull.engine.sweep.connection import HubConnection
from hubcull.engine.sweep.records import SweepResult
from hubcull.engine.sweep.run import run_sweep
from hubcull.engine.sweep.runner import sweep_policy
from hubcull.engine.sweep.sources import SweepSources

TOKEN_REF = {"name": "hub", "key": "token"}


class SweepFailed(RuntimeError):
    """A culler reported an error during the sweep."""


@dataclass
class SweepRun:
    """What one culler did in one sweep, as seen by the culler itself."""

    seconds: float
    stopped: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)


class _Collector(logging.Handler):
    """Keeps the reference culler's "Culling server" lines and its errors."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.culled: set[str] = set()
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Culling server "):
            self.culled.add(message.split()[2])
        if record.levelno >= logging.ERROR:
            self.errors.append(message)


def reference_logger(log_file: Path) -> tuple[logging.Logger, _Collector]:
    """A logger for the reference culler: INFO to a file (as it logs by default) and a
    collector of what it culled and its errors."""
    logger = logging.getLogger(f"bench.reference.{log_file.stem}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    file_handler = logging.FileHandler(log_file)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(file_handler)
    collector = _Collector()
    logger.addHandler(collector)
    return logger, collector


async def reference_sweep(
    url: str,
    token: str,
    *,
    timeout: float,
    concurrency: int,
    page_size: int,
    log_file: Path,
) -> SweepRun:
    """One sweep of jupyterhub-idle-culler (``cull_idle``), like
    ``python -m jupyterhub_idle_culler --url=URL --timeout=T --concurrency=C
    --api-page-size=P`` does on each ``--cull-every`` tick."""
    from jupyterhub_idle_culler import cull_idle

    logger, collector = reference_logger(log_file)
    started = time.monotonic()
    await cull_idle(
        url=url,
        api_token=token,
        inactive_limit=int(timeout),
        logger=logger,
        concurrency=concurrency,
        api_page_size=page_size,
    )
    seconds = time.monotonic() - started
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    return SweepRun(seconds, collector.culled, collector.errors)


def bench_policy(url: str, *, timeout: float, concurrency: int, page_size: int) -> Policy:
    """The hubcull policy equivalent to the reference's command line."""
    spec: dict[str, Any] = {
        "hub": {"url": url, "tokenSecretRef": TOKEN_REF},
        "idleTimeout": int(timeout),
        "concurrency": concurrency,
        "pageSize": page_size,
    }
    return parse_spec(spec)


def _stopped(result: SweepResult) -> SweepRun:
    errors = [f"{c.label}: {c.error}" for c in result.failed]
    return SweepRun(result.duration, {c.label for c in result.culled}, errors)


async def hubcull_sweep(
    url: str,
    token: str,
    *,
    timeout: float,
    concurrency: int,
    page_size: int = 200,
    connection: HubConnection | None = None,
) -> SweepRun:
    """One sweep with :func:`~hubcull.engine.sweep.runner.sweep_policy` (what ``hubcull sweep``
    and the operator run); with ``connection``, on its kept client, as the operator's repeated
    sweeps of one policy do."""
    policy = bench_policy(url, timeout=timeout, concurrency=concurrency, page_size=page_size)
    started = time.monotonic()
    outcome = await sweep_policy(policy, SweepSources(token, connection=connection))
    seconds = time.monotonic() - started
    if outcome.result is None:
        raise SweepFailed(f"hubcull sweep failed: {outcome.reason}: {outcome.message}")
    run = _stopped(outcome.result)
    run.seconds = seconds
    return run


async def hubcull_engine_sweep(
    url: str, token: str, *, timeout: float, concurrency: int, page_size: int = 200
) -> SweepRun:
    """One sweep of the same engine (:func:`~hubcull.engine.sweep.run_sweep`) with a client
    allowed ``concurrency`` requests in flight, which may exceed the policy's maximum of 100."""
    policy = bench_policy(url, timeout=timeout, concurrency=10, page_size=page_size)
    started = time.monotonic()
    async with HubClient(
        url, token, concurrency=concurrency, page_size=page_size, timeout=120.0
    ) as client:
        result = await run_sweep(policy, client)
    run = _stopped(result)
    run.seconds = time.monotonic() - started
    return run


@dataclass
class FloorRun:
    """The Hub's own limit: the fastest listing, then every idle server stopped at once."""

    list_seconds: float
    stop_seconds: float
    listed: int
    outcomes: dict[str, int]

    @property
    def seconds(self) -> float:
        """Listing plus stopping: the floor of a sweep."""
        return self.list_seconds + self.stop_seconds


async def direct_stops(
    url: str, token: str, names: list[str], *, concurrency: int, page_size: int = 200
) -> FloorRun:
    """Time the Hub's best listing (all pages in flight) and then ``DELETE`` of every
    server in ``names``, ``concurrency`` at a time (one request each)."""
    async with HubClient(
        url, token, concurrency=concurrency, page_size=page_size, timeout=300.0
    ) as client:
        started = time.monotonic()
        listed = await client.list_users("ready")
        listed_at = time.monotonic()
        results = await asyncio.gather(*(client.stop_server(name, "") for name in names))
        stopped_at = time.monotonic()
    outcomes: dict[str, int] = {}
    for outcome in results:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return FloorRun(listed_at - started, stopped_at - listed_at, len(listed), outcomes)
