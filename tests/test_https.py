"""An https Hub: the CA bundle of `hub.caSecretRef` (or `--ca-file`) is what hubcull trusts."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import pytest
import trustme

from hubcull.engine import sweep_policy
from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.scenario import culled_labels, policy_for, populate

pytestmark = pytest.mark.hub


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


@asynccontextmanager
async def tls_terminator(target: str, cert: trustme.LeafCert) -> AsyncIterator[int]:
    """An https front on 127.0.0.1 for the plain-http Hub at ``target``; yields its port."""
    host, port = urlsplit(target).hostname, urlsplit(target).port
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_https_hub_with_a_private_ca(hub: Hub) -> None:
    await populate(hub, {("ann", ""): 7200})
    token = await hub.token(MINIMAL_SCOPES)
    ca = trustme.CA()
    async with tls_terminator(hub.api_url, ca.issue_cert("127.0.0.1")) as port:
        url = f"https://127.0.0.1:{port}/hub/api"
        untrusted = await sweep_policy(policy_for(url, hub={"requestTimeout": "5s"}), token)
        assert untrusted.reason == "HubUnreachable" and "CERTIFICATE" in (untrusted.message or "")
        assert await hub.running_servers() == {("ann", "")}
        ca_pem = ca.cert_pem.bytes().decode()
        trusted = await sweep_policy(policy_for(url), token, ca_pem=ca_pem)
        assert culled_labels(trusted) == {"ann"}
        bad = await sweep_policy(policy_for(url), token, ca_pem="not a pem")
        assert bad.reason == "InvalidSpec" and "CA bundle" in (bad.message or "")
