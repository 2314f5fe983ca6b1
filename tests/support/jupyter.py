"""Drive REAL ``jupyterhub-singleuser`` servers the way JupyterLab does, for tests.

The servers come from a Hub started with ``spawner="local"`` (see :mod:`tests.support.jhub`);
every request goes to 127.0.0.1, either straight to the server's own port (standing in for
a pod IP) or through configurable-http-proxy's public URL::

    from tests.support.jupyter import JupyterServer, server_token, start_server

    location = await start_server(hub, "alice", activity_interval=1)
    token = await server_token(hub, "alice")  # access:servers!server=alice/
    async with JupyterServer(location.direct_url, token) as server:
        kernel = await server.start_kernel()
        async with server.connect_kernel(kernel["id"]) as conn:
            await conn.execute("print('hi')")                       # until reply + idle
            run = await conn.execute("import time; time.sleep(1200)", wait=False)  # busy
        term = await server.create_terminal()
        async with server.connect_terminal(term["name"]) as tty:
            await tty.run("echo hi")
        print(await server.status())  # api/status: started, last_activity, kernels, ...

Reads (``list_kernels``, ``get_kernel``, ``list_terminals``, ...) pass
``no_track_activity=1`` by default, as a culler must; :meth:`JupyterServer.touch` is a
``GET api/kernels`` *without* it, which the server counts as activity, like the polling of
an open JupyterLab tab.

Kernels are driven over ``api/kernels/{id}/channels`` with Jupyter messaging protocol 5.3
messages, using the ``v1.kernel.websocket.jupyter.org`` binary framing JupyterLab 4
negotiates (or the legacy JSON framing, ``protocol="legacy"``); terminals over
``terminals/websocket/{name}`` with terminado's ``["stdin", text]`` / ``["stdout", text]``
JSON messages.

Every network wait has a timeout; waits for a state are polls (:func:`poll_until`).
A :class:`JupyterServer` shuts down, when closed, the kernels and terminals it started
(and nothing else).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Final, Literal, TypeVar
from urllib.parse import quote

import aiohttp
import httpx
from dateutil.parser import isoparse

from tests.support.jhub import Hub, HubAPIError

__all__ = [
    "KERNEL_WS_PROTOCOL",
    "Execution",
    "JupyterAPIError",
    "JupyterError",
    "JupyterServer",
    "KernelConnection",
    "KernelExecutionError",
    "ServerLocation",
    "TerminalConnection",
    "locate_server",
    "parse_time",
    "poll_until",
    "response_date",
    "server_token",
    "start_server",
    "wait_steady",
]

#: The websocket subprotocol of jupyter_server >= 2 that JupyterLab 4 asks for.
KERNEL_WS_PROTOCOL: Final = "v1.kernel.websocket.jupyter.org"
#: Jupyter messaging protocol version of the messages sent here.
MESSAGING_VERSION: Final = "5.3"

T = TypeVar("T")

_ANSI_ESCAPE: Final = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[@-Z\\-_])")


class JupyterError(RuntimeError):
    """Base class of this module's errors (timeouts included)."""


class JupyterAPIError(JupyterError):
    """An unexpected HTTP answer from a single-user server."""

    def __init__(self, message: str, response: httpx.Response) -> None:
        super().__init__(message)
        self.response = response
        self.status_code = response.status_code


class KernelExecutionError(JupyterError):
    """Code run by :meth:`KernelConnection.execute` raised (``execute_reply`` status error)."""

    def __init__(self, execution: Execution) -> None:
        reply = execution.reply or {}
        super().__init__(
            f"{reply.get('ename')}: {reply.get('evalue')} while running {execution.code!r}\n"
            + "\n".join(reply.get("traceback") or [])
        )
        self.execution = execution


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------


def parse_time(value: str) -> datetime:
    """Parse a Jupyter/JupyterHub ISO 8601 timestamp (``...Z``) into an aware UTC datetime."""
    parsed = isoparse(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def response_date(response: httpx.Response) -> datetime:
    """The ``Date`` header of a response as an aware UTC datetime (1 s resolution).

    Raises :class:`JupyterError` if the response has none.
    """
    value = response.headers.get("Date")
    if not value:
        raise JupyterError(f"no Date header in the answer to {response.request.url}")
    return parsedate_to_datetime(value).astimezone(timezone.utc)


async def poll_until(
    check: Callable[[], Awaitable[T] | T],
    what: str,
    timeout: float = 30.0,
    *,
    interval: float = 0.02,
    max_interval: float = 0.25,
) -> T:
    """Call (and await, if needed) ``check()`` at growing intervals until it returns truthy.

    Returns that value; raises :class:`JupyterError` naming ``what`` after ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise JupyterError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, max_interval)


async def wait_steady(
    fetch: Callable[[], Awaitable[dict[str, Any]]],
    what: str,
    quiet: float = 0.3,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Poll ``fetch()`` until the model's ``last_activity`` held still for ``quiet`` s.

    Returns the last model fetched.
    """
    since: tuple[float, str] | None = None

    async def still() -> dict[str, Any] | None:
        nonlocal since
        model = await fetch()
        now = time.monotonic()
        if since is None or since[1] != model["last_activity"]:
            since = (now, model["last_activity"])
            return None
        return model if now - since[0] >= quiet else None

    return await poll_until(still, f"{what} to be quiet for {quiet}s", timeout)


# --------------------------------------------------------------------------------------
# finding a server through the Hub
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerLocation:
    """Where a running single-user server answers.

    ``path`` is its base URL path (``/user/alice/``, ``/user/alice/gpu/``), ``port`` its own
    port on 127.0.0.1 (the Hub's proxy route target).
    """

    user: str
    name: str
    path: str
    port: int
    proxy_url: str

    @property
    def direct_url(self) -> str:
        """The server's base URL on its own port, bypassing the proxy (like a pod IP)."""
        return f"http://127.0.0.1:{self.port}{self.path}"

    def url(self, via: Literal["direct", "proxy"] = "direct") -> str:
        """:attr:`direct_url` or :attr:`proxy_url`."""
        if via == "direct":
            return self.direct_url
        if via == "proxy":
            return self.proxy_url
        raise ValueError(f"via must be 'direct' or 'proxy', not {via!r}")


async def locate_server(hub: Hub, user: str, name: str = "") -> ServerLocation:
    """Find a ready server's URL path (user model) and port (``GET /hub/api/proxy``).

    Uses the harness admin token (``proxy`` scope).  Raises :class:`JupyterError` if the
    server is not ready or has no proxy route.
    """
    model = ((await hub.get_user(user)).get("servers") or {}).get(name)
    if not model or not model.get("ready"):
        raise JupyterError(f"server {user!r}/{name!r} is not ready: {model!r}")
    path = model["url"]
    routes = (await hub.request("GET", "/proxy")).json()
    route = routes.get(path)
    if route is None:
        raise JupyterError(f"no proxy route for {path!r}; routes: {sorted(routes)}")
    target = httpx.URL(route["target"])
    if target.host != "127.0.0.1" or target.port is None:
        raise JupyterError(f"unexpected route target {route['target']!r} for {path!r}")
    return ServerLocation(
        user=user,
        name=name,
        path=path,
        port=target.port,
        proxy_url=hub.public_url.rstrip("/") + path,
    )


async def server_token(
    hub: Hub,
    user: str,
    name: str = "",
    *,
    scopes: Sequence[str] | None = None,
    note: str = "tests.support.jupyter",
) -> str:
    """Create a token owned by ``user`` (``POST /hub/api/users/{user}/tokens``).

    ``scopes`` default to ``access:servers!server={user}/{name}``: what the user's own
    browser session holds for that one server.  The Hub refuses scopes the user lacks.
    """
    body = {"scopes": list(scopes or [f"access:servers!server={user}/{name}"]), "note": note}
    resp = await hub.request(
        "POST", f"/users/{quote(user, safe='')}/tokens", json_body=body, expected=(201,)
    )
    return resp.json()["token"]


async def start_server(
    hub: Hub,
    user: str,
    name: str = "",
    *,
    activity_interval: int | None = None,
    timeout: float = 120.0,
) -> ServerLocation:
    """Create ``user`` if needed, spawn its server ``name`` and return where it answers.

    The Hub must run real servers (``spawner="local"``).  ``activity_interval`` sets the
    server's ``JUPYTERHUB_ACTIVITY_INTERVAL`` (seconds between its activity reports to the
    Hub; ``0`` = never) through the spawn's ``user_options``; ``None`` keeps the Hub's
    setting (``launch_hub(activity_interval=)``, else JupyterHub's 300 s).
    """
    if hub.spawner != "local":
        raise JupyterError(f"start_server needs a Hub with spawner='local', not {hub.spawner!r}")
    await hub.create_users([user])
    options = None if activity_interval is None else {"activity_interval": activity_interval}
    try:
        await hub.spawn(user, name, user_options=options, timeout=timeout)
    except HubAPIError as e:
        raise JupyterError(f"spawning {user!r}/{name!r} failed: {e}\n{hub.log_tail()}") from e
    return await locate_server(hub, user, name)


# --------------------------------------------------------------------------------------
# kernel messages
# --------------------------------------------------------------------------------------


def _new_message(
    msg_type: str, content: Mapping[str, Any], session_id: str, channel: str
) -> dict[str, Any]:
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "username": "hubcull-tests",
            "session": session_id,
            "date": datetime.now(timezone.utc).isoformat(),
            "version": MESSAGING_VERSION,
        },
        "parent_header": {},
        "metadata": {},
        "content": dict(content),
        "channel": channel,
        "buffers": [],
    }


def _encode_v1(msg: Mapping[str, Any]) -> bytes:
    """``v1.kernel.websocket.jupyter.org`` framing: offsets, channel, then the JSON parts."""
    parts = [
        json.dumps(msg[key]).encode() for key in ("header", "parent_header", "metadata", "content")
    ]
    channel = msg["channel"].encode()
    offsets = [8 * (1 + 1 + len(parts) + 1)]
    offsets.append(offsets[-1] + len(channel))
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    head = len(offsets).to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in offsets)
    return head + channel + b"".join(parts)


def _decode_v1(data: bytes) -> dict[str, Any]:
    count = int.from_bytes(data[:8], "little")
    offsets = [int.from_bytes(data[8 * (i + 1) : 8 * (i + 2)], "little") for i in range(count)]
    channel = data[offsets[0] : offsets[1]].decode()
    parts = [data[offsets[i] : offsets[i + 1]] for i in range(1, count - 1)]
    header, parent_header, metadata, content = (json.loads(part) for part in parts[:4])
    return {
        "channel": channel,
        "header": header,
        "parent_header": parent_header,
        "metadata": metadata,
        "content": content,
        "buffers": parts[4:],
    }


def _decode_legacy_binary(data: bytes) -> dict[str, Any]:
    """Legacy framing of a message with buffers: offsets, JSON message, buffers."""
    count = int.from_bytes(data[:4], "big")
    offsets = [int.from_bytes(data[4 * (i + 1) : 4 * (i + 2)], "big") for i in range(count)]
    offsets.append(len(data))
    msg = json.loads(data[offsets[0] : offsets[1]])
    msg["buffers"] = [data[offsets[i] : offsets[i + 1]] for i in range(1, count)]
    return msg


@dataclass(eq=False)
class Execution:
    """One ``execute_request`` and what the kernel answered to it so far.

    ``messages`` are the iopub messages whose parent is the request; ``reply`` is the
    ``execute_reply`` content once it came.  Once the websocket closes nothing more is
    received: :attr:`error` then says so, and :meth:`wait` raises it if still unfinished.
    """

    msg_id: str
    code: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    reply: dict[str, Any] | None = None
    busy: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    replied: asyncio.Event = field(default_factory=asyncio.Event)
    error: JupyterError | None = None

    @property
    def done(self) -> bool:
        """Whether both the ``execute_reply`` and the iopub ``idle`` status came."""
        return self.replied.is_set() and self.idle.is_set()

    @property
    def status(self) -> str | None:
        """``ok``, ``error`` or ``aborted`` once replied, else None."""
        return None if self.reply is None else self.reply.get("status")

    def stream(self, name: Literal["stdout", "stderr"] = "stdout") -> str:
        """Text the code wrote to ``name`` so far."""
        return "".join(
            m["content"]["text"]
            for m in self.messages
            if m["header"]["msg_type"] == "stream" and m["content"].get("name") == name
        )

    @property
    def stdout(self) -> str:
        """Text the code printed so far."""
        return self.stream("stdout")

    async def wait(self, timeout: float = 60.0, *, raise_on_error: bool = True) -> Execution:
        """Wait for the reply and the idle status; raise if the code failed (by default)."""
        try:
            await asyncio.wait_for(
                asyncio.gather(self.replied.wait(), self.idle.wait()), timeout=timeout
            )
        except asyncio.TimeoutError:
            raise JupyterError(
                f"timed out after {timeout}s waiting for {self.code!r} to finish"
            ) from None
        if not self.done and self.error is not None:
            raise self.error
        if raise_on_error and self.status != "ok":
            raise KernelExecutionError(self)
        return self

    def _feed(self, msg: dict[str, Any]) -> None:
        if msg["channel"] == "shell" and msg["header"]["msg_type"] == "execute_reply":
            self.reply = msg["content"]
            self.replied.set()
            return
        if msg["channel"] != "iopub":
            return
        self.messages.append(msg)
        if msg["header"]["msg_type"] == "status":
            state = msg["content"].get("execution_state")
            if state == "busy":
                self.busy.set()
            elif state == "idle":
                self.busy.set()
                self.idle.set()

    def _abort(self, error: JupyterError) -> None:
        """The connection closed: wake every waiter (:meth:`wait` raises ``error``)."""
        self.error = error
        for event in (self.busy, self.idle, self.replied):
            event.set()


class KernelConnection:
    """A websocket on ``api/kernels/{id}/channels``: see :meth:`JupyterServer.connect_kernel`.

    A background task reads every message; those answering a request sent here go to its
    :class:`Execution` (or reply future), all are kept in :attr:`received`.
    """

    def __init__(
        self,
        kernel_id: str,
        ws: aiohttp.ClientWebSocketResponse,
        session: aiohttp.ClientSession,
        session_id: str,
    ) -> None:
        self.kernel_id = kernel_id
        self.session_id = session_id
        #: the framing the server chose: KERNEL_WS_PROTOCOL or "" (legacy JSON)
        self.protocol: str = ws.protocol or ""
        #: every message received, in order
        self.received: list[dict[str, Any]] = []
        self._ws = ws
        self._session = session
        self._executions: dict[str, Execution] = {}
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._closed_error: BaseException | None = None
        self._reader = asyncio.create_task(self._read())

    @property
    def closed(self) -> bool:
        """Whether the websocket is closed."""
        return self._ws.closed or self._reader.done()

    async def _read(self) -> None:
        try:
            async for frame in self._ws:
                if frame.type == aiohttp.WSMsgType.BINARY:
                    msg = (
                        _decode_v1(frame.data)
                        if self.protocol == KERNEL_WS_PROTOCOL
                        else _decode_legacy_binary(frame.data)
                    )
                elif frame.type == aiohttp.WSMsgType.TEXT:
                    msg = json.loads(frame.data)
                else:
                    break
                self._dispatch(msg)
        except Exception as e:  # surfaced to waiters below
            self._closed_error = e
        finally:
            error = JupyterError(
                f"websocket of kernel {self.kernel_id} closed ({self._ws.close_code})"
                + (f": {self._closed_error!r}" if self._closed_error else "")
            )
            for future in self._replies.values():
                if not future.done():
                    future.set_exception(error)
            for execution in self._executions.values():
                if not execution.done:
                    execution._abort(error)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        self.received.append(msg)
        parent_id = (msg.get("parent_header") or {}).get("msg_id")
        execution = self._executions.get(parent_id)
        if execution is not None:
            execution._feed(msg)
        future = self._replies.get(parent_id)
        if future is not None and not future.done() and msg["channel"] in ("shell", "control"):
            future.set_result(msg)

    async def send(self, msg: Mapping[str, Any]) -> None:
        """Send one message (``channel`` key included) in the negotiated framing."""
        if self.closed:
            raise JupyterError(f"websocket of kernel {self.kernel_id} is closed")
        if self.protocol == KERNEL_WS_PROTOCOL:
            await self._ws.send_bytes(_encode_v1(msg))
        else:
            await self._ws.send_str(json.dumps(msg))

    async def request(
        self,
        msg_type: str,
        content: Mapping[str, Any] | None = None,
        *,
        channel: Literal["shell", "control"] = "shell",
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Send a request (e.g. ``kernel_info_request``) and return its reply message."""
        msg = _new_message(msg_type, content or {}, self.session_id, channel)
        msg_id = msg["header"]["msg_id"]
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[msg_id] = future
        try:
            await self.send(msg)
            return await asyncio.wait_for(future, timeout=timeout)
        except asyncio.TimeoutError:
            raise JupyterError(f"no reply to {msg_type} within {timeout}s") from None
        finally:
            self._replies.pop(msg_id, None)

    async def execute(
        self,
        code: str,
        *,
        wait: bool = True,
        timeout: float = 60.0,
        silent: bool = False,
        store_history: bool = True,
        raise_on_error: bool = True,
    ) -> Execution:
        """Run ``code`` (``execute_request`` on the shell channel), as a notebook cell does.

        ``wait=True``: return once the kernel replied and went idle (raising
        :class:`KernelExecutionError` if the code failed, unless ``raise_on_error`` is
        false).  ``wait=False``: return as soon as iopub shows the kernel ``busy`` with this
        request; the code keeps running, even after this connection is closed.
        """
        msg = _new_message(
            "execute_request",
            {
                "code": code,
                "silent": silent,
                "store_history": store_history,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
            self.session_id,
            "shell",
        )
        execution = Execution(msg_id=msg["header"]["msg_id"], code=code)
        self._executions[execution.msg_id] = execution
        await self.send(msg)
        if wait:
            return await execution.wait(timeout, raise_on_error=raise_on_error)
        try:
            await asyncio.wait_for(execution.busy.wait(), timeout=timeout)
        except asyncio.TimeoutError:
            raise JupyterError(f"kernel did not get busy with {code!r} within {timeout}s") from None
        if execution.error is not None:
            raise execution.error
        return execution

    async def close(self) -> None:
        """Close the websocket (the kernel keeps running)."""
        await self._ws.close()
        await self._session.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class TerminalConnection:
    """A websocket on ``terminals/websocket/{name}``: see :meth:`JupyterServer.connect_terminal`.

    Collects everything the terminal writes in :attr:`output`.
    """

    _markers = itertools.count(1)

    def __init__(
        self, name: str, ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession
    ) -> None:
        self.name = name
        #: everything the terminal sent as ``stdout`` since the connection opened
        self.output = ""
        self._ws = ws
        self._session = session
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for frame in self._ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    break
                kind, *args = json.loads(frame.data)
                if kind == "stdout":
                    self.output += args[0]
                self._changed.set()
        finally:
            self._changed.set()

    async def send(self, text: str) -> None:
        """Type ``text`` (``["stdin", text]``); end a command line with ``"\\r"``."""
        await self._ws.send_str(json.dumps(["stdin", text]))

    async def expect(
        self, pattern: str | re.Pattern[str], *, start: int = 0, timeout: float = 30.0
    ) -> re.Match[str]:
        """Wait until ``output[start:]`` matches ``pattern`` (a regex); return the match.

        Mind that the terminal echoes what is typed: expect text the command *prints*.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()
            found = regex.search(self.output, start)
            if found:
                return found
            if self._reader.done():
                raise JupyterError(f"terminal {self.name} closed; output: {self.output[-2000:]!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JupyterError(
                    f"timed out after {timeout}s waiting for {regex.pattern!r} in terminal"
                    f" {self.name}; output: {self.output[-2000:]!r}"
                )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=remaining)

    async def run(self, command: str, *, timeout: float = 30.0) -> str:
        """Type ``command`` + Enter; once the shell ran it, return what it printed.

        The line typed ends with ``echo`` of a marker that the shell computes
        (``$((n+1))``): the output is what lies between the last echo of the typed line
        (a line typed before the shell is ready is echoed twice: by the terminal, then by
        readline after its prompt) and the computed marker.  Terminal control sequences
        and carriage returns are removed.
        """
        number = next(self._markers)
        typed = f"echo hubcull-done-$(({number}+1))"
        start = len(self.output)
        separator = " " if command.rstrip().endswith("&") else "; "  # `cmd &; x` is an error
        await self.send(f"{command}{separator}{typed}\r")
        end = await self.expect(rf"hubcull-done-{number + 1}\r?\n", start=start, timeout=timeout)
        echoed = self.output.rfind(typed, start, end.start())
        if echoed < 0:
            raise JupyterError(f"the terminal did not echo {typed!r}: {self.output[start:]!r}")
        line_end = self.output.find("\n", echoed, end.start())
        printed = self.output[line_end + 1 : end.start()] if line_end >= 0 else ""
        return _ANSI_ESCAPE.sub("", printed).replace("\r", "").strip("\n")

    async def close(self) -> None:
        """Close the websocket (the terminal keeps running)."""
        await self._ws.close()
        await self._session.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


# --------------------------------------------------------------------------------------
# the REST client
# --------------------------------------------------------------------------------------


class JupyterServer:
    """Async client of one single-user server's REST and websocket API.

    ``base_url`` is the server's base URL (:attr:`ServerLocation.direct_url` or
    :attr:`~ServerLocation.proxy_url`), ``token`` a Hub token with access to it (sent as
    ``Authorization: token ...``).  Use ``async with``; the client belongs to the event
    loop it is used in first.
    """

    def __init__(self, base_url: str, token: str | None, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.token = token
        self.timeout = timeout
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0))
        self._kernels: set[str] = set()
        self._terminals: set[str] = set()

    @classmethod
    async def for_server(
        cls,
        hub: Hub,
        user: str,
        name: str = "",
        *,
        via: Literal["direct", "proxy"] = "direct",
        token: str | None = None,
        timeout: float = 30.0,
    ) -> JupyterServer:
        """A client of ``user``'s running server ``name``, with a fresh user token by default."""
        location = await locate_server(hub, user, name)
        if token is None:
            token = await server_token(hub, user, name)
        return cls(location.url(via), token, timeout=timeout)

    async def __aenter__(self) -> JupyterServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Shut down the kernels and terminals started by this client, then close it."""
        try:
            for kernel_id in list(self._kernels):
                await self.delete_kernel(kernel_id, missing_ok=True)
            for name in list(self._terminals):
                await self.delete_terminal(name, missing_ok=True)
        finally:
            await self._http.aclose()

    # ---- plumbing ----------------------------------------------------------------------

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` relative to the server's base URL (``api/status``)."""
        return self.base_url + path.lstrip("/")

    def _headers(self, token: str | None) -> dict[str, str]:
        return {"Authorization": f"token {token}"} if token else {}

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        expected: Sequence[int] | None = (200,),
        token: str | Literal[False] | None = False,
        track_activity: bool = True,
    ) -> httpx.Response:
        """Call ``path`` (relative to the base URL) and check the status.

        ``token``: False = this client's token, None = no ``Authorization`` header, else
        that token.  ``track_activity=False`` adds ``no_track_activity=1``.  ``expected``
        None accepts any status; otherwise :class:`JupyterAPIError` is raised.
        """
        query = dict(params or {})
        if not track_activity:
            query["no_track_activity"] = "1"
        resp = await self._http.request(
            method,
            self.url(path),
            params=query or None,
            json=json_body,
            headers=self._headers(self.token if token is False else token),
        )
        if expected is not None and resp.status_code not in expected:
            raise JupyterAPIError(
                f"{method} {resp.request.url} -> {resp.status_code} (expected {list(expected)}):"
                f" {resp.text[:2000]}",
                resp,
            )
        return resp

    def _ws_url(self, path: str) -> str:
        return "ws" + self.url(path)[len("http") :]

    async def _ws_connect(
        self, path: str, *, protocols: Sequence[str] = ()
    ) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=self.timeout)
        )
        try:
            ws = await asyncio.wait_for(
                session.ws_connect(
                    self._ws_url(path),
                    headers=self._headers(self.token),
                    protocols=tuple(protocols),
                    max_msg_size=0,
                    autoping=True,
                ),
                timeout=self.timeout,
            )
        except BaseException:
            await session.close()
            raise
        return session, ws

    # ---- server ------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """``GET api/status``: ``started``, ``last_activity``, ``kernels``, ``connections``.

        The server never counts this request as activity.
        """
        return (await self.request("GET", "api/status")).json()

    async def last_activity(self) -> datetime:
        """The server's own ``last_activity`` (``api/status``) as an aware datetime."""
        return parse_time((await self.status())["last_activity"])

    async def touch(self) -> httpx.Response:
        """``GET api/kernels`` without ``no_track_activity``: counts as activity.

        What an open JupyterLab tab's periodic polling does.
        """
        return await self.request("GET", "api/kernels")

    async def server_time(self) -> datetime:
        """The server's clock, from the ``Date`` header of ``api/status`` (1 s resolution)."""
        return response_date(await self.request("GET", "api/status"))

    async def wait_server_time(self, moment: datetime, timeout: float = 30.0) -> datetime:
        """Poll until the server's clock (``Date`` header) reads ``moment`` or later.

        For "X did not change while time passed" checks: it returns once at least
        ``moment`` is past on the server, judged by the server itself.
        """

        async def reached() -> datetime | None:
            now = await self.server_time()
            return now if now >= moment else None

        return await poll_until(reached, f"the server's clock to reach {moment}", timeout)

    # ---- kernels -----------------------------------------------------------------------

    async def list_kernels(self, *, track_activity: bool = False) -> list[dict[str, Any]]:
        """``GET api/kernels`` (with ``no_track_activity=1`` unless ``track_activity``)."""
        return (await self.request("GET", "api/kernels", track_activity=track_activity)).json()

    async def get_kernel(self, kernel_id: str, *, track_activity: bool = False) -> dict[str, Any]:
        """``GET api/kernels/{id}``: ``execution_state``, ``last_activity``, ``connections``."""
        resp = await self.request("GET", f"api/kernels/{kernel_id}", track_activity=track_activity)
        return resp.json()

    async def start_kernel(
        self, name: str | None = None, *, wait_ready: bool = True, timeout: float = 60.0
    ) -> dict[str, Any]:
        """``POST api/kernels``; returns the kernel model.

        The server answers while the kernel is still ``starting``; with ``wait_ready`` a
        websocket is opened once (as JupyterLab does on opening a notebook), which makes
        the server check the kernel answers, and the model returned is the ``idle`` one.
        """
        body = {"name": name} if name else {}
        model = (await self.request("POST", "api/kernels", json_body=body, expected=(201,))).json()
        self._kernels.add(model["id"])
        if wait_ready:
            async with self.connect_kernel(model["id"]) as conn:
                await conn.request("kernel_info_request", timeout=timeout)
            model = await self.wait_kernel(model["id"], "idle", timeout=timeout)
        return model

    async def wait_kernel(
        self,
        kernel_id: str,
        state: str | Callable[[dict[str, Any]], bool],
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Poll ``GET api/kernels/{id}?no_track_activity=1`` until ``execution_state == state``.

        ``state`` may be a predicate on the model instead.  Returns the model.
        """
        check = state if callable(state) else (lambda m: m["execution_state"] == state)

        async def matches() -> dict[str, Any] | None:
            model = await self.get_kernel(kernel_id)
            return model if check(model) else None

        return await poll_until(matches, f"kernel {kernel_id} to be {state}", timeout)

    async def wait_kernel_quiet(
        self, kernel_id: str, quiet: float = 0.3, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Poll the kernel's model until its ``last_activity`` held still for ``quiet`` s.

        E.g. after starting a silent cell: its ``busy`` status and ``execute_input`` are
        then both recorded, so any later change of ``last_activity`` is new activity.
        Returns the model.
        """
        return await wait_steady(
            lambda: self.get_kernel(kernel_id), f"kernel {kernel_id}", quiet, timeout
        )

    async def interrupt_kernel(self, kernel_id: str) -> None:
        """``POST api/kernels/{id}/interrupt`` (SIGINT for ipykernel)."""
        await self.request("POST", f"api/kernels/{kernel_id}/interrupt", expected=(204,))

    async def delete_kernel(self, kernel_id: str, *, missing_ok: bool = False) -> None:
        """``DELETE api/kernels/{id}``: shut the kernel down."""
        expected = (204, 404) if missing_ok else (204,)
        await self.request("DELETE", f"api/kernels/{kernel_id}", expected=expected)
        self._kernels.discard(kernel_id)

    @contextlib.asynccontextmanager
    async def connect_kernel(
        self, kernel_id: str, *, protocol: Literal["v1", "legacy"] = "v1"
    ) -> AsyncIterator[KernelConnection]:
        """Open ``api/kernels/{id}/channels?session_id=...`` as JupyterLab does.

        ``protocol="v1"`` offers the ``v1.kernel.websocket.jupyter.org`` subprotocol
        (JupyterLab 4), ``"legacy"`` none (JSON text frames).
        """
        session_id = uuid.uuid4().hex
        protocols = [KERNEL_WS_PROTOCOL] if protocol == "v1" else []
        session, ws = await self._ws_connect(
            f"api/kernels/{kernel_id}/channels?session_id={session_id}", protocols=protocols
        )
        conn = KernelConnection(kernel_id, ws, session, session_id)
        try:
            yield conn
        finally:
            await conn.close()

    async def run_code(
        self, kernel_id: str, code: str, *, wait: bool = True, timeout: float = 60.0
    ) -> Execution:
        """Connect, :meth:`KernelConnection.execute` ``code``, disconnect.

        With ``wait=False`` it returns once the kernel is busy with the code, and the code
        keeps running after the websocket closes (like closing the browser tab).
        """
        async with self.connect_kernel(kernel_id) as conn:
            return await conn.execute(code, wait=wait, timeout=timeout)

    # ---- terminals ---------------------------------------------------------------------

    async def create_terminal(self) -> dict[str, Any]:
        """``POST api/terminals``; returns ``{"name", "last_activity"}``."""
        model = (await self.request("POST", "api/terminals", json_body={})).json()
        self._terminals.add(model["name"])
        return model

    async def list_terminals(self, *, track_activity: bool = False) -> list[dict[str, Any]]:
        """``GET api/terminals`` (with ``no_track_activity=1`` unless ``track_activity``)."""
        return (await self.request("GET", "api/terminals", track_activity=track_activity)).json()

    async def get_terminal(self, name: str, *, track_activity: bool = False) -> dict[str, Any]:
        """``GET api/terminals/{name}``."""
        resp = await self.request("GET", f"api/terminals/{name}", track_activity=track_activity)
        return resp.json()

    async def wait_terminal_quiet(
        self, name: str, quiet: float = 0.3, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Poll the terminal's model until its ``last_activity`` held still for ``quiet`` s.

        E.g. after a command: the shell's next prompt is then written too.
        """
        return await wait_steady(
            lambda: self.get_terminal(name), f"terminal {name}", quiet, timeout
        )

    async def delete_terminal(self, name: str, *, missing_ok: bool = False) -> None:
        """``DELETE api/terminals/{name}``: end the terminal's shell."""
        expected = (204, 404) if missing_ok else (204,)
        await self.request("DELETE", f"api/terminals/{name}", expected=expected)
        self._terminals.discard(name)

    @contextlib.asynccontextmanager
    async def connect_terminal(self, name: str) -> AsyncIterator[TerminalConnection]:
        """Open ``terminals/websocket/{name}`` (what a JupyterLab terminal tab does)."""
        session, ws = await self._ws_connect(f"terminals/websocket/{name}")
        conn = TerminalConnection(name, ws, session)
        try:
            # A wide terminal, so that the shell does not wrap the echo of long lines.
            await ws.send_str(json.dumps(["set_size", 24, 500, 480, 5000]))
            yield conn
        finally:
            await conn.close()
