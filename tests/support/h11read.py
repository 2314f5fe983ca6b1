"""Reading one HTTP/1.1 request with h11 from an asyncio stream: the part the test servers
(tests/support/faultproxy.py, tests/support/webhook.py) share."""

from __future__ import annotations

import asyncio

import h11


async def read_request(
    conn: h11.Connection, reader: asyncio.StreamReader
) -> tuple[str, str, dict[str, str], bytes] | None:
    """``(method, target, headers, body)`` of the next request on ``conn``, or ``None`` when
    the client closed the connection. Header names are lower case; repeated headers are
    joined with ", "."""
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            conn.receive_data(data)
            if not data and head is None and conn.their_state is h11.IDLE:
                return None
            continue
        if isinstance(event, h11.ConnectionClosed):
            return None
        if isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            headers: dict[str, str] = {}
            for name, value in head.headers:
                key = name.decode().lower()
                headers[key] = (
                    f"{headers[key]}, {value.decode()}" if key in headers else value.decode()
                )
            return head.method.decode(), head.target.decode(), headers, bytes(body)
