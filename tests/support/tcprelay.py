"""A TCP relay on 127.0.0.1 that can make an upstream server refuse requests or vanish.

Put it between a client and a server (e.g. an operator and the Kubernetes API emulator) to
take the server away without stopping it::

    async with tcp_relay(port_of_the_emulator) as relay:
        url = relay.url                 # give the client this address
        relay.answer(503)               # every new connection gets "503 Service Unavailable"
        relay.refuse()                  # the port is closed: "connection refused"
        await relay.forward()           # transparent again, on the same port

Every mode change closes the connections open until then (as a restarting server would),
so long-lived requests such as watches break at once. Bytes are relayed as they come, so
streaming responses (watches) work through it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["TcpRelay", "tcp_relay"]

_REASONS = {
    401: "Unauthorized",
    403: "Forbidden",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _error_response(status: int) -> bytes:
    """A complete HTTP/1.1 answer with a Kubernetes ``Status`` body, closing the connection."""
    reason = _REASONS.get(status, "Error")
    body = (
        f'{{"kind":"Status","apiVersion":"v1","status":"Failure","message":"relay: {reason}",'
        f'"reason":"{reason.replace(" ", "")}","code":{status}}}'
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


class TcpRelay:
    """Relays 127.0.0.1:``port`` to 127.0.0.1:``upstream_port``; see the module docstring."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.mode = "forward"
        self.status = 503  # what mode "answer" answers
        self.connections = 0  # connections accepted, in any mode
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, the address clients should use."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen (on a free port the first time, on the same port afterwards)."""
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def forward(self) -> None:
        """Relay transparently again (listening again if :meth:`refuse` closed the port)."""
        self._drop_open()
        self.mode = "forward"
        if self._server is None:
            await self.start()

    def answer(self, status: int = 503) -> None:
        """Answer every new connection's first request with ``status`` (a Kubernetes
        ``Status`` body) and close it; drop the open connections."""
        self._drop_open()
        self.mode = "answer"
        self.status = status

    def refuse(self) -> None:
        """Close the listening socket and every open connection: "connection refused"."""
        self._drop_open()
        self.mode = "refuse"
        if self._server is not None:
            self._server.close()
            self._server = None

    async def aclose(self) -> None:
        """Stop listening, close everything and wait for the relaying tasks."""
        self.refuse()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _drop_open(self) -> None:
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            if self.mode == "answer":
                with contextlib.suppress(OSError):
                    await reader.read(65536)
                    writer.write(_error_response(self.status))
                    await writer.drain()
                writer.close()
                return
            if self.mode != "forward":
                writer.transport.abort()
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    "127.0.0.1", self.upstream_port
                )
            except OSError:
                writer.transport.abort()
                return
            self._open |= {writer, up_writer}
            await asyncio.gather(
                _pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True
            )
            self._open -= {writer, up_writer}
        finally:
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.transport.abort()


@contextlib.asynccontextmanager
async def tcp_relay(upstream_port: int) -> AsyncIterator[TcpRelay]:
    """A started :class:`TcpRelay` to ``upstream_port``, closed on the way out."""
    relay = TcpRelay(upstream_port)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.aclose()
