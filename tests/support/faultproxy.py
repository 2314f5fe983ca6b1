"""A fault-injecting HTTP reverse proxy between hubcull and a real JupyterHub, for tests.

Usage::

    async with fault_proxy(hub.public_url) as proxy:
        policy = policy_for(proxy.api_url, pageSize=2)       # hubcull talks to the proxy
        proxy.inject(Fault("status", page(2), status=503))   # the 2nd page fails with 503
        ...
        proxy.clear()                                        # back to a transparent proxy
        assert proxy.count("DELETE") == 0                    # every request is recorded

The proxy is plain asyncio + h11 on 127.0.0.1 (one task per client connection, keep-alive
honoured) and forwards with httpx to ``upstream``. Faults are matched in order against
``"METHOD /path?query"`` with a regular expression; a fault lets ``skip`` matching requests
through first and then applies to ``times`` of them (``None``: all). Kinds:

=============  ==================================================================================
``status``     answer ``status`` (500, 502, 503, 429 with ``Retry-After``, 401, 403, 404...) with a
               JupyterHub-style JSON body ``{"status": ..., "message": ...}``; nothing forwarded
``reset``      close the connection without an answer (a crashed upstream, a dropped connection)
``hang``       never answer: hold the request until :meth:`FaultProxy.clear` or the client gives up
``slow``       wait ``delay`` seconds, then forward
``malformed``  200 with a body that is not JSON (``body`` or a broken JSON text)
``html``       200 with an HTML page (what an ingress or a login redirect target would serve)
``truncate``   forward, then answer the first half of the real body (valid HTTP, truncated JSON)
``cut``        forward, announce the full ``Content-Length``, send half the body, drop the
               connection (the transfer breaks mid-body)
``drop``       forward a listing page with its ``items`` removed but ``_pagination`` intact (a
               page that lost users and looks legitimate: the Hub's ``state=ready`` pages may be
               short)
``skip``       forward a listing page whose ``_pagination.next`` jumps over the following page
``offset``     forward a listing page that claims another ``offset`` than asked for
``echo``       401 whose body echoes the request headers back (an upstream that leaks them)
``hook``       ``await hook(seen)`` (e.g. restart the Hub, kill an operator), then forward
=============  ==================================================================================

A fault of another kind with a ``hook`` awaits it first, then applies (e.g. answer 403 once
another request has arrived).

:meth:`FaultProxy.refuse` closes the listening socket and every open connection (clients get
"connection refused"); :meth:`FaultProxy.accept` opens it again on the same port.

:func:`restart_hub` stops and starts the same JupyterHub (same ports, same database);
with :data:`RESTARTABLE_SPAWNER_CONFIG` in the Hub's ``extra_config`` its fake servers survive
the restart the way Kubernetes pods survive a Hub pod restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import httpx

from tests.support.h11read import read_request

__all__ = [
    "LISTING",
    "RESTARTABLE_SPAWNER_CONFIG",
    "Fault",
    "FaultProxy",
    "Seen",
    "fault_proxy",
    "page",
    "restart_hub",
    "socket_owner",
    "start_hub_process",
    "stop_hub_process",
]

#: Every request of a user listing (``GET /hub/api/users?...``).
LISTING = r"^GET /hub/api/users\?"

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
    "content-encoding",
    "accept-encoding",
}

_REASONS = {
    401: "Unauthorized",
    403: "Missing or invalid credentials.",
    404: "Not Found",
    429: "Too many requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def page(offset: int) -> str:
    """The pattern of the listing page that starts at ``offset``."""
    return rf"^GET /hub/api/users\?(?:.*&)?offset={offset}(?:&|$)"


@dataclass
class Fault:
    """One fault: ``kind`` (see the module doc) for requests matching ``match``."""

    kind: str
    match: str = r""
    status: int = 500
    message: str | None = None
    delay: float = 0.0
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    skip: int = 0
    times: int | None = None
    hook: Callable[[Seen], Awaitable[None]] | None = None
    #: matching requests seen so far, and how many of them the fault applied to
    hits: int = 0
    applied: int = 0

    KINDS = frozenset(
        "status reset hang slow malformed html truncate cut drop skip offset echo hook".split()
    )

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")
        self._pattern = re.compile(self.match)

    def take(self, line: str) -> bool:
        """Whether this fault applies to the request ``line`` (and count it)."""
        if not self._pattern.search(line):
            return False
        self.hits += 1
        if self.hits <= self.skip:
            return False
        if self.times is not None and self.applied >= self.times:
            return False
        self.applied += 1
        return True


@dataclass
class Seen:
    """One request the proxy received and what became of it."""

    method: str
    target: str
    headers: dict[str, str]
    started: float
    peer: tuple[str, int]
    client_pid: int | None = None
    fault: str | None = None
    status: int | None = None  # what the client got; None: no (complete) answer
    upstream_status: int | None = None  # what the Hub answered, if it was asked
    finished: float | None = None

    @property
    def line(self) -> str:
        return f"{self.method} {self.target}"

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


class _Drop(Exception):
    """Close the client connection without (finishing) an answer."""


class FaultProxy:
    """The proxy; use :func:`fault_proxy` to run one."""

    def __init__(
        self, upstream: str, *, host: str = "127.0.0.1", identify: Collection[int] = ()
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.host = host
        self.port = 0
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        #: pids whose connections are attributed (``Seen.client_pid``), e.g. two operators
        self.identify: set[int] = set(identify)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._release = asyncio.Event()
        self._client = httpx.AsyncClient(
            base_url=self.upstream,
            timeout=httpx.Timeout(300.0),
            trust_env=False,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )

    # -- addresses ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        """The Hub API root through the proxy."""
        return f"{self.url}/hub/api"

    # -- faults -----------------------------------------------------------------------------
    def inject(self, *faults: Fault) -> list[Fault]:
        """Add faults (checked in order, after those already there)."""
        self.faults.extend(faults)
        return list(faults)

    def clear(self) -> None:
        """Remove every fault and let every hanging request go (its connection is dropped)."""
        self.faults.clear()
        self._release.set()
        self._release = asyncio.Event()

    # -- what went through --------------------------------------------------------------------
    def requests(self, pattern: str = "", since: int = 0) -> list[Seen]:
        """Requests whose ``METHOD target`` matches ``pattern``, from index ``since`` on."""
        regex = re.compile(pattern)
        return [s for s in self.seen[since:] if regex.search(s.line)]

    def count(self, pattern: str = "", since: int = 0) -> int:
        return len(self.requests(pattern, since))

    def mark(self) -> int:
        """An index into :attr:`seen` for ``since=`` arguments."""
        return len(self.seen)

    def stops(self, since: int = 0) -> list[Seen]:
        """DELETE requests that reached the Hub and that it accepted (202/204)."""
        return [s for s in self.requests("^DELETE ", since) if s.upstream_status in (202, 204)]

    # -- listening ------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.accept()

    async def accept(self) -> None:
        """Listen (again, on the same port)."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._connection, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def refuse(self) -> None:
        """Stop listening and drop every open connection: clients get connection refused."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)

    async def close(self) -> None:
        self.clear()
        await self.refuse()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()

    # -- serving --------------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        peer = writer.get_extra_info("peername") or ("", 0)
        pid = socket_owner(peer[1], self.port, self.identify) if self.identify else None
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await read_request(conn, reader)
                if request is None:
                    return
                method, target, headers, body = request
                seen = Seen(method, target, headers, time.time(), peer[:2], pid)
                self.seen.append(seen)
                try:
                    await self._answer(conn, reader, writer, seen, body)
                finally:
                    seen.finished = time.time()
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (_Drop, ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.transport.abort()

    def _fault_for(self, line: str) -> Fault | None:
        for fault in self.faults:
            if fault.take(line):
                return fault
        return None

    async def _answer(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        seen: Seen,
        body: bytes,
    ) -> None:
        fault = self._fault_for(seen.line)
        kind = fault.kind if fault else None
        seen.fault = kind
        if fault is not None and fault.hook is not None and kind != "hook":
            await fault.hook(seen)  # first, then the fault (e.g. fail once X has happened)
        if fault is None or kind in ("truncate", "cut", "drop", "skip", "offset", "slow", "hook"):
            if kind == "slow":
                await asyncio.sleep(fault.delay)  # type: ignore[union-attr]
            elif kind == "hook":
                await fault.hook(seen)  # type: ignore[misc,union-attr]
            status, headers, content = await self._forward(seen, body)
            if kind == "truncate":
                content = content[: len(content) // 2]
            elif kind == "cut":
                await self._send_cut(conn, writer, seen, status, headers, content)
            elif kind in ("drop", "skip", "offset"):
                content = _rewrite_page(kind, content)
            await self._send(conn, writer, seen, status, headers, content)
            return
        assert fault is not None
        if kind == "reset":
            raise _Drop
        if kind == "hang":
            await self._hang(reader)
            raise _Drop
        if kind == "status":
            message = fault.message or _REASONS.get(fault.status, "error")
            error = {"status": fault.status, "message": message}
            content = fault.body or json.dumps(error).encode()
            headers = {"content-type": "application/json", **fault.headers}
            if fault.status == 429:
                headers.setdefault("retry-after", "1")
            await self._send(conn, writer, seen, fault.status, headers, content)
        elif kind == "malformed":
            content = fault.body or b'{"items": [{"name": "ann", "servers": {}},, "_pagination"'
            await self._send(conn, writer, seen, 200, {"content-type": "application/json"}, content)
        elif kind == "html":
            content = fault.body or b"<!DOCTYPE html><html><body><h1>Sign in</h1></body></html>"
            await self._send(conn, writer, seen, 200, {"content-type": "text/html"}, content)
        elif kind == "echo":
            lines = [seen.line, *(f"{k}: {v}" for k, v in seen.headers.items())]
            content = json.dumps({"status": 401, "message": "\n".join(lines)}).encode()
            await self._send(conn, writer, seen, 401, {"content-type": "application/json"}, content)

    async def _hang(self, reader: asyncio.StreamReader) -> None:
        """Wait until the faults are cleared or the client closes the connection."""
        release = asyncio.ensure_future(self._release.wait())
        eof = asyncio.ensure_future(reader.read(1))
        try:
            await asyncio.wait({release, eof}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (release, eof):
                waiter.cancel()

    async def _forward(self, seen: Seen, body: bytes) -> tuple[int, dict[str, str], bytes]:
        headers = {k: v for k, v in seen.headers.items() if k not in _HOP_BY_HOP}
        headers["accept-encoding"] = "identity"
        try:
            response = await self._client.request(
                seen.method, seen.target, headers=headers, content=body or None
            )
        except httpx.TransportError:
            raise _Drop from None  # the Hub is down: like a TCP passthrough, drop the client
        seen.upstream_status = response.status_code
        out = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP}
        return response.status_code, out, response.content

    @staticmethod
    def _head(status: int, headers: dict[str, str], length: int) -> h11.Response:
        pairs = [(k, v) for k, v in headers.items() if k.lower() != "content-length"]
        pairs.append(("content-length", str(length)))
        return h11.Response(status_code=status, headers=pairs)

    async def _send(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        seen: Seen,
        status: int,
        headers: dict[str, str],
        content: bytes,
    ) -> None:
        writer.write(conn.send(self._head(status, headers, len(content))))
        if content:
            writer.write(conn.send(h11.Data(data=content)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        seen.status = status

    async def _send_cut(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        seen: Seen,
        status: int,
        headers: dict[str, str],
        content: bytes,
    ) -> None:
        writer.write(conn.send(self._head(status, headers, len(content))))
        writer.write(conn.send(h11.Data(data=content[: len(content) // 2])))
        await writer.drain()
        raise _Drop


def _rewrite_page(kind: str, content: bytes) -> bytes:
    try:
        data = json.loads(content)
    except ValueError:
        return content
    if not isinstance(data, dict) or not isinstance(data.get("_pagination"), dict):
        return content
    pagination = data["_pagination"]
    if kind == "drop":
        data["items"] = []
    elif kind == "skip" and isinstance(pagination.get("next"), dict):
        pagination["next"]["offset"] += pagination.get("limit") or 0
    elif kind == "offset":
        pagination["offset"] = int(pagination.get("offset") or 0) + 1
    return json.dumps(data).encode()


@contextlib.asynccontextmanager
async def fault_proxy(upstream: str, **kwargs: Any) -> AsyncIterator[FaultProxy]:
    """Run a :class:`FaultProxy` in front of ``upstream`` (a Hub's ``public_url``)."""
    proxy = FaultProxy(upstream, **kwargs)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


# ------------------------------------------------------------------------------------------
# which process owns a client connection (for HA tests: which operator made the request)
# ------------------------------------------------------------------------------------------


def _socket_inode(local_port: int, remote_port: int) -> str | None:
    """The inode of the IPv4 TCP socket 127.0.0.1:local_port -> 127.0.0.1:remote_port."""
    want_local, want_remote = f":{local_port:04X}", f":{remote_port:04X}"
    with contextlib.suppress(OSError), open("/proc/net/tcp") as table:
        next(table)
        for row in table:
            cols = row.split()
            if cols[1].endswith(want_local) and cols[2].endswith(want_remote):
                return cols[9]
    return None


def socket_owner(client_port: int, server_port: int, pids: Collection[int]) -> int | None:
    """Which of ``pids`` holds the client end of a connection to ``server_port`` (Linux)."""
    inode = _socket_inode(client_port, server_port)
    if inode is None:
        return None
    needle = f"socket:[{inode}]"
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == needle:
                        return pid
    return None


# ------------------------------------------------------------------------------------------
# restarting the test Hub (tests/support/jhub.py starts it; this stops and starts it again)
# ------------------------------------------------------------------------------------------

#: ``extra_config`` for :func:`tests.support.jhub.launch_hub`: fake servers that survive a Hub
#: restart (FakeSpawner's servers die with the Hub process that started them).
RESTARTABLE_SPAWNER_CONFIG = (
    "c.JupyterHub.spawner_class = 'tests.support.faultproxy.RestartableFakeSpawner'"
)

_spawner_class: Any = None


def __getattr__(name: str) -> Any:
    """``RestartableFakeSpawner``, defined on first use: importing jupyterhub is slow and only
    the Hub process needs it."""
    global _spawner_class
    if name != "RestartableFakeSpawner":
        raise AttributeError(name)
    if _spawner_class is None:
        from tests.support.jhub_spawner import FakeSpawner, shared_server_port

        class RestartableFakeSpawner(FakeSpawner):  # type: ignore[misc,valid-type]
            """A FakeSpawner whose running servers are still running after a Hub restart."""

            def load_state(self, state: dict[str, Any]) -> None:
                super().load_state(state)
                if state.get("fake_boot_id"):
                    self._fake_running = True

            async def get_url(self) -> str:
                # the shared fake server of this Hub process (a new port after a restart)
                return f"http://{self.fake_ip}:{shared_server_port(self.fake_ip)}"

        _spawner_class = RestartableFakeSpawner
    return _spawner_class


async def stop_hub_process(hub: Any, timeout: float = 20.0) -> None:
    """SIGTERM the Hub and wait for it and its configurable-http-proxy to exit."""
    from tests.support.jhub import process_alive

    await hub._close_client()
    process: subprocess.Popen[bytes] = hub.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)
    deadline = time.monotonic() + timeout
    while hub.proxy_pid is not None and process_alive(hub.proxy_pid):
        if time.monotonic() > deadline:
            os.kill(hub.proxy_pid, signal.SIGKILL)
        await asyncio.sleep(0.05)


async def start_hub_process(hub: Any, timeout: float = 60.0) -> None:
    """Start the same Hub again: same config file, ports, database and admin token."""
    from tests.support import jhub

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JUPYTERHUB_", "JPY_")) and k != "CONFIGPROXY_AUTH_TOKEN"
    }
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(jhub.REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    config = (hub.workdir / jhub.CONFIG_NAME).read_text()
    process, _ = jhub._start_process(hub.workdir, config, env, 0, True)
    hub.process = process
    await jhub._wait_until_up(hub, timeout)
    hub.proxy_pid, hub._proxy_starttime = jhub._read_proxy_pid(hub.workdir)


async def restart_hub(hub: Any, down_for: float = 0.0) -> None:
    """Stop the Hub, stay down ``down_for`` seconds, start it again on the same ports."""
    await stop_hub_process(hub)
    if down_for:
        await asyncio.sleep(down_for)
    await start_hub_process(hub)
