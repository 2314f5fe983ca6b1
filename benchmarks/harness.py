"""Hub-side plumbing of the benchmarks: identical Hub state for every culler, and meters.

* :class:`BenchHub` wraps a real JupyterHub started by :mod:`tests.support.jhub` (the same
  fixture the tests use, with :class:`~tests.support.jhub_spawner.FakeSpawner`): it creates
  users ``bench00000``, ``bench00001``, ... each with one running default server, backdates
  their activity from an :class:`ActivityPlan`, and after a culler has run restarts exactly
  the servers it stopped and backdates everything again, so the next culler sees the same
  state.
* :func:`cpu_seconds` reads a process's CPU time (user + system) with psutil.
* :class:`HubLog` counts the requests a culler made, from the Hub's own access log: every
  culler uses a token owned by the Hub's admin user, logged as ``(admin@127.0.0.1)``, while
  the harness's own requests are logged as ``(harness@...)``. Counting on the Hub's side is
  fair to both cullers (retries and redirects included) and costs neither anything extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil
from tests.support.jhub import Hub

#: The Hub's access-log line: ``[I ... log:192] 200 GET /hub/api/users?... (admin@127.0.0.1) 5.1ms``
ACCESS_LINE = re.compile(
    r"^\[\w (?P<when>\S+ \S+) \S+ \S+\] (?P<status>\d{3}) (?P<method>[A-Z]+) (?P<uri>\S+) "
    r"\((?P<who>[^@)]*)@[^)]*\) (?P<ms>[\d.]+)ms$",
    re.MULTILINE,
)
#: Who the cullers' tokens belong to, as the Hub logs it.
CULLER_IDENTITY = "admin"


def user_name(index: int) -> str:
    """The name of benchmark user number ``index``."""
    return f"bench{index:05d}"


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def system_busy_seconds() -> float:
    """CPU seconds all processes of the machine have used (every core, since boot)."""
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0) + getattr(times, "steal", 0.0)
    return float(sum(times) - idle)


class OtherLoad:
    """How much CPU processes other than ``pids`` used meanwhile, in cores: other jobs on
    the machine disturb a benchmark, so the report says when there were any."""

    def __init__(self, pids: Iterable[int | None]) -> None:
        self.pids = [pid for pid in pids if pid]
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        ours = 0.0
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                ours += cpu_seconds(pid)
        return time.monotonic(), system_busy_seconds(), ours

    def cores(self) -> float:
        """Average CPU (1.0 = one core) of other processes since this meter started."""
        wall0, busy0, ours0 = self._start
        wall1, busy1, ours1 = self._sample()
        return max(0.0, ((busy1 - busy0) - (ours1 - ours0)) / max(wall1 - wall0, 1e-9))


def peak_rss_bytes(pid: int) -> int:
    """The peak resident set size of a process since it started (``VmHWM``), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return int(psutil.Process(pid).memory_info().rss)


@dataclass(frozen=True)
class ActivityPlan:
    """How long ago each server was last active and started, relative to "now".

    ``idle`` servers have been idle between 5 minutes and 10 hours longer than ``timeout``;
    the others were active within the last half ``timeout``. The idle ones are spread evenly
    over the user list (so over every page of a listing). The same seed gives the same plan.
    """

    count: int
    idle_count: int
    timeout: float
    seed: int = 1
    ages: dict[str, tuple[float, float]] = field(init=False, repr=False)
    idle: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        idle_indices = (
            {(k * self.count) // self.idle_count for k in range(self.idle_count)}
            if self.idle_count
            else set()
        )
        ages: dict[str, tuple[float, float]] = {}
        for index in range(self.count):
            if index in idle_indices:
                last = self.timeout + rng.uniform(300.0, 36000.0)
            else:
                last = rng.uniform(0.0, self.timeout / 2)
            started = last + rng.uniform(0.0, 7200.0)
            ages[user_name(index)] = (last, started)
        object.__setattr__(self, "ages", ages)
        object.__setattr__(self, "idle", frozenset(user_name(i) for i in idle_indices))

    @property
    def names(self) -> list[str]:
        """Every user of the plan, in creation (and listing) order."""
        return [user_name(i) for i in range(self.count)]

    def updates(self, now: datetime | None = None) -> list[dict[str, object]]:
        """``set_times_bulk`` updates putting every server (and user) at its planned age."""
        now = now or datetime.now(timezone.utc)
        result: list[dict[str, object]] = []
        for name, (last, started) in self.ages.items():
            last_activity = now - timedelta(seconds=last)
            result.append(
                {
                    "user": name,
                    "server": "",
                    "last_activity": last_activity,
                    "started": now - timedelta(seconds=started),
                    "user_last_activity": last_activity,
                }
            )
        return result


@dataclass
class BenchHub:
    """A running test Hub plus what the benchmark has built on it."""

    hub: Hub
    spawn_concurrency: int = 64
    users_created: int = 0
    setup_seconds: float = 0.0

    @property
    def pid(self) -> int:
        """The Hub process."""
        return self.hub.pid

    @property
    def proxy_pid(self) -> int | None:
        """The configurable-http-proxy process (started by the Hub)."""
        return self.hub.proxy_pid

    async def ensure_running(self, count: int) -> None:
        """Users ``0..count-1`` exist and each has a running default server."""
        started = time.monotonic()
        if count > self.users_created:
            await self.hub.create_users(user_name(i) for i in range(self.users_created, count))
            self.users_created = count
        running = await self.ready_users()
        missing = [user_name(i) for i in range(count) if user_name(i) not in running]
        await self.spawn(missing)
        self.setup_seconds += time.monotonic() - started

    async def spawn(self, names: Iterable[str]) -> None:
        """Start the default servers of ``names`` and wait until they are ready."""
        specs = [(name, "") for name in names]
        if specs:
            await self.hub.spawn_many(specs, concurrency=self.spawn_concurrency)

    async def apply(self, plan: ActivityPlan) -> None:
        """Backdate every server of the plan to its planned age, relative to now."""
        started = time.monotonic()
        await self.hub.set_times_bulk(plan.updates())
        self.setup_seconds += time.monotonic() - started

    async def ready_users(self) -> set[str]:
        """Users with a ready default server."""
        return {user for user, server in await self.hub.running_servers() if server == ""}

    async def wait_no_pending(self, timeout: float = 120.0) -> None:
        """Wait until no server is starting or stopping."""

        async def settled() -> bool:
            servers = await self.hub.servers("active")
            return not any(model.get("pending") for model in servers.values())

        await self.hub.poll_until(settled, "pending starts/stops to finish", timeout)

    async def restore(self, plan: ActivityPlan, before: set[str]) -> None:
        """Restart what a culler stopped (servers in ``before`` no longer running), then
        backdate everything again: the next culler sees the state the previous one saw."""
        started = time.monotonic()
        await self.wait_no_pending()
        now_running = await self.ready_users()
        await self.spawn(sorted(before - now_running))
        self.setup_seconds += time.monotonic() - started
        await self.apply(plan)


@dataclass(frozen=True)
class Request:
    """One request in the Hub's access log."""

    status: int
    method: str
    uri: str
    who: str
    ms: float
    #: when the Hub finished it (the Hub's local clock, as it logs)
    end: datetime

    @property
    def start(self) -> datetime:
        """When the Hub started handling it."""
        return self.end - timedelta(milliseconds=self.ms)


class HubLog:
    """Reads the requests the Hub logged after a mark."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.path: Path = hub.log_path

    def mark(self) -> int:
        """The current end of the log."""
        return self.path.stat().st_size

    async def flush(self, timeout: float = 30.0) -> None:
        """Make sure every request answered so far is in the log: send a sentinel request
        and wait for its line (the Hub logs requests as it finishes them, in order)."""
        sentinel = secrets.token_hex(6)
        start = self.mark()
        await self.hub.request("GET", f"/?bench-sentinel={sentinel}")
        deadline = time.monotonic() + timeout
        while sentinel not in self._read(start):
            if time.monotonic() > deadline:
                raise TimeoutError("the Hub did not log the sentinel request")
            await asyncio.sleep(0.05)

    def _read(self, start: int) -> str:
        with open(self.path, "rb") as log:
            log.seek(start)
            return log.read().decode(errors="replace")

    async def requests_since(self, start: int, who: str | None = CULLER_IDENTITY) -> list[Request]:
        """Requests by ``who`` (``None``: anyone) logged since ``start`` (flushes the log
        first; the flushes' own sentinel requests are left out)."""
        await self.flush()
        requests = []
        for match in ACCESS_LINE.finditer(self._read(start)):
            if "bench-sentinel=" in match["uri"]:
                continue
            if who is None or match["who"] == who:
                requests.append(
                    Request(
                        int(match["status"]),
                        match["method"],
                        match["uri"],
                        match["who"],
                        float(match["ms"]),
                        datetime.strptime(match["when"], "%Y-%m-%d %H:%M:%S.%f"),
                    )
                )
        return requests


def hub_span(requests: Sequence[Request]) -> float:
    """Seconds from the start of the first request to the end of the last, as the Hub saw
    them: a sweep's duration without the client's own overhead."""
    if not requests:
        return 0.0
    first = min(r.start for r in requests)
    last = max(r.end for r in requests)
    return (last - first).total_seconds()


def count_by_kind(requests: Sequence[Request]) -> dict[str, int]:
    """Requests grouped as ``GET /users``, ``DELETE 204``, ... for reports."""
    counts: dict[str, int] = {}
    for request in requests:
        path = request.uri.split("?", 1)[0].removeprefix("/hub/api")
        if request.method == "GET" and path == "/users":
            kind = "GET /users (page)"
        elif request.method == "DELETE":
            kind = f"DELETE {request.status}"
        else:
            kind = f"{request.method} {path or '/'}"
        counts[kind] = counts.get(kind, 0) + 1
    return counts
