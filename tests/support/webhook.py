"""A real HTTP webhook receiver on 127.0.0.1 that records every request, for tests.

Usage (the ``webhook`` fixture in ``tests/conftest.py`` runs one per test)::

    async def test_it(webhook: WebhookReceiver) -> None:
        ...                                   # point hubcull's spec.warn at webhook.url
        [warning] = await webhook.wait_for(1)
        assert warning.method == "POST" and warning.json["pod"] == "jupyter-ann"
        webhook.respond(500)                  # from now on: 500
        webhook.hang()                        # from now on: never answer (until release/close)
        webhook.redirect()                    # from now on: 302 to webhook.redirect_path
        await webhook.refuse()                # connection refused ...
        await webhook.accept()                # ... and back on the same port
        webhook.respond(200)

Requests to :attr:`WebhookReceiver.redirect_path` are always answered 200 and recorded, so a
test can tell whether a client followed a redirect.  Plain asyncio + h11 (like
:mod:`tests.support.faultproxy`): one task per connection, keep-alive honoured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final, Literal

import h11

from tests.support.h11read import read_request

__all__ = ["WebhookReceiver", "WebhookRequest", "webhook_receiver"]

Mode = Literal["respond", "hang", "redirect"]

_REASONS: Final = {200: b"OK", 302: b"Found", 500: b"Internal Server Error"}


@dataclass
class WebhookRequest:
    """One request the receiver got, and what it answered."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    time: float
    #: the status answered; None while hanging, or if the connection was dropped unanswered
    status: int | None = None

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split("?", 1)[0]

    @property
    def json(self) -> Any:
        """The body parsed as JSON (``ValueError`` if it is not JSON)."""
        return json.loads(self.body)


class _Drop(Exception):
    """Close the connection without (further) answers."""


class WebhookReceiver:
    """The receiver; :func:`webhook_receiver` (or the ``webhook`` fixture) runs one."""

    def __init__(
        self, *, path: str = "/hook", redirect_path: str = "/redirected", host: str = "127.0.0.1"
    ) -> None:
        self.host = host
        self.port = 0
        self.path = path
        self.redirect_path = redirect_path
        self.requests: list[WebhookRequest] = []
        self.mode: Mode = "respond"
        self.status = 200
        self.redirect_status = 302
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._release = asyncio.Event()
        self._arrived = asyncio.Event()

    # ---- addresses ----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The webhook URL to configure (``base_url`` + :attr:`path`)."""
        return self.base_url + self.path

    # ---- behaviour ----------------------------------------------------------------------

    def respond(self, status: int = 200) -> None:
        """Answer every request with ``status`` and a small JSON body."""
        self.mode, self.status = "respond", status

    def hang(self) -> None:
        """Never answer (the request is recorded) until :meth:`release` or :meth:`close`."""
        self.mode = "hang"

    def redirect(self, status: int = 302) -> None:
        """Answer ``status`` with ``Location:`` :attr:`redirect_path` (which answers 200)."""
        self.mode, self.redirect_status = "redirect", status

    def release(self) -> None:
        """Drop the connections of every hanging request (no answer is ever sent)."""
        self._release.set()
        self._release = asyncio.Event()

    async def refuse(self) -> None:
        """Stop listening and drop every connection: clients get "connection refused"."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self.release()
        for writer in list(self._writers):
            writer.transport.abort()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)

    async def accept(self) -> None:
        """Listen (again, on the same port after :meth:`refuse`)."""
        if self._server is None:
            self._server = await asyncio.start_server(
                self._connection, self.host, self.port, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Refuse, and end every connection task."""
        await self.refuse()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- what arrived -------------------------------------------------------------------

    def received(self, path: str | None = None) -> list[WebhookRequest]:
        """Requests so far (to ``path`` only, if given)."""
        return [r for r in self.requests if path is None or r.path == path]

    async def wait_for(
        self, count: int = 1, *, path: str | None = None, timeout: float = 10.0
    ) -> list[WebhookRequest]:
        """Wait until at least ``count`` requests (to ``path``) have arrived; return them all."""
        deadline = time.monotonic() + timeout
        while len(self.received(path)) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{len(self.received(path))} of {count} requests to {path or 'any path'} "
                    f"after {timeout}s: {[(r.method, r.target) for r in self.requests]}"
                )
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return self.received(path)

    # ---- serving -----------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                read = await read_request(conn, reader)
                if read is None:
                    return
                request = WebhookRequest(*read, time.time())
                self.requests.append(request)
                self._arrived.set()
                await self._answer(conn, reader, writer, request)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (_Drop, ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.transport.abort()

    async def _answer(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: WebhookRequest,
    ) -> None:
        if request.path == self.redirect_path:
            await self._send(conn, writer, request, 200, {})
        elif self.mode == "hang":
            release = asyncio.ensure_future(self._release.wait())
            eof = asyncio.ensure_future(reader.read(1))
            try:
                await asyncio.wait({release, eof}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                release.cancel()
                eof.cancel()
            raise _Drop
        elif self.mode == "redirect":
            await self._send(
                conn, writer, request, self.redirect_status, {"location": self.redirect_path}
            )
        else:
            await self._send(conn, writer, request, self.status, {})

    @staticmethod
    async def _send(
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        request: WebhookRequest,
        status: int,
        headers: dict[str, str],
    ) -> None:
        content = json.dumps({"status": status}).encode()
        pairs = [
            *headers.items(),
            ("content-type", "application/json"),
            ("content-length", str(len(content))),
        ]
        writer.write(
            conn.send(
                h11.Response(status_code=status, headers=pairs, reason=_REASONS.get(status, b""))
            )
        )
        writer.write(conn.send(h11.Data(data=content)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        request.status = status


@contextlib.asynccontextmanager
async def webhook_receiver(**kwargs: Any) -> AsyncIterator[WebhookReceiver]:
    """``async with webhook_receiver() as webhook:`` -- listening on a free port, then closed."""
    receiver = WebhookReceiver(**kwargs)
    await receiver.accept()
    try:
        yield receiver
    finally:
        await receiver.close()
