"""The single-user server harness (tests/support/jupyter.py) against REAL servers.

One Hub (``jupyter_hub``) with two real ``jupyterhub-singleuser`` servers of user ann:
``ann/`` (JupyterHub's default activity reporting, every 300 s) and ``ann/lab`` (reports
its activity to the Hub every second).  Besides showing that the harness drives kernels,
terminals and the REST API, the tests pin down what jupyter_server does that a culler
judging kernels and terminals relies on: which requests count as activity, what a busy
silent kernel looks like, which tokens the servers accept, what answers carry.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import httpx
import pytest
import pytest_asyncio

from tests.support.jhub import MINIMAL_SCOPES, Hub, find_python
from tests.support.jupyter import (
    KERNEL_WS_PROTOCOL,
    JupyterServer,
    KernelExecutionError,
    ServerLocation,
    parse_time,
    poll_until,
    response_date,
    server_token,
    start_server,
)

pytestmark = pytest.mark.hub


@dataclass(frozen=True)
class Servers:
    """The module's two running servers and tokens for them."""

    ann: ServerLocation  # /user/ann/, default activity interval
    lab: ServerLocation  # /user/ann/lab/, activity reported to the Hub every second
    ann_token: str  # ann's own token for ann/ only
    lab_token: str  # ann's own token for ann/lab only
    access_token: str  # an admin-owned Hub token with access:servers (what a culler holds)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def servers(jupyter_hub: Hub) -> Servers:
    """Spawn ann/ and ann/lab once for the module."""
    hub = jupyter_hub
    await hub.create_users(["ann"])
    ann, lab = await asyncio.gather(
        start_server(hub, "ann"), start_server(hub, "ann", "lab", activity_interval=1)
    )
    return Servers(
        ann=ann,
        lab=lab,
        ann_token=await server_token(hub, "ann"),
        lab_token=await server_token(hub, "ann", "lab"),
        access_token=await hub.token(["access:servers"]),
    )


@pytest_asyncio.fixture
async def ann(servers: Servers) -> AsyncIterator[JupyterServer]:
    """ann's client of ann/ (direct address); stops the kernels/terminals it started."""
    async with JupyterServer(servers.ann.direct_url, servers.ann_token) as client:
        yield client


@pytest_asyncio.fixture
async def lab(servers: Servers) -> AsyncIterator[JupyterServer]:
    """ann's client of ann/lab (direct address); stops the kernels/terminals it started."""
    async with JupyterServer(servers.lab.direct_url, servers.lab_token) as client:
        yield client


async def hub_last_activity(hub: Hub, user: str, name: str) -> datetime:
    """The Hub's last_activity of a server."""
    return parse_time((await hub.get_user(user))["servers"][name]["last_activity"])


async def wait_hub_activity(hub: Hub, user: str, name: str, minimum: datetime) -> datetime:
    """Poll until the Hub's last_activity of a server is at least ``minimum``; return it."""

    async def reached() -> datetime | None:
        value = await hub_last_activity(hub, user, name)
        return value if value >= minimum else None

    return await poll_until(reached, f"the Hub to get {user}/{name}'s activity", timeout=10)


def assert_recent_date(resp: httpx.Response) -> None:
    """The answer has a ``Date`` header showing the current time (same host, 1 s resolution)."""
    now = datetime.now(timezone.utc)
    assert now - timedelta(seconds=10) <= response_date(resp) <= now, resp.headers.get("Date")


# --------------------------------------------------------------------------------------


async def test_servers_are_found_through_the_hub(jupyter_hub: Hub, servers: Servers) -> None:
    assert (servers.ann.path, servers.lab.path) == ("/user/ann/", "/user/ann/lab/")
    assert servers.ann.port != servers.lab.port
    assert servers.lab.proxy_url == f"{jupyter_hub.public_url}/user/ann/lab/"
    assert servers.lab.direct_url == f"http://127.0.0.1:{servers.lab.port}/user/ann/lab/"

    started = {}
    for location in (servers.ann, servers.lab):
        for via in ("direct", "proxy"):
            async with JupyterServer(location.url(via), servers.access_token) as client:
                started[location.name, via] = (await client.status())["started"]
    # The same server answers at its own port and through the proxy; the two differ.
    assert started["", "direct"] == started["", "proxy"]
    assert started["lab", "direct"] == started["lab", "proxy"]
    assert started["", "direct"] != started["lab", "direct"]

    # A client for a server by its name alone, with a fresh token of its user; through
    # the proxy, as JupyterLab in a browser, websockets included.
    client = await JupyterServer.for_server(jupyter_hub, "ann", "lab", via="proxy")
    async with client:
        assert client.base_url == servers.lab.proxy_url
        assert (await client.status())["started"] == started["lab", "proxy"]
        kernel = await client.start_kernel()
        assert (await client.run_code(kernel["id"], "print('via the proxy')")).stdout == (
            "via the proxy\n"
        )


async def test_kernels_run_ipykernel_from_the_venv(ann: JupyterServer, lab: JupyterServer) -> None:
    specs = (await ann.request("GET", "api/kernelspecs")).json()
    assert specs["default"] == "python3"
    assert specs["kernelspecs"]["python3"]["spec"]["language"] == "python"

    code = "import os, sys\nprint(sys.executable, os.environ.get('JUPYTERHUB_ACTIVITY_INTERVAL'))"
    seen = {}
    for client in (ann, lab):
        kernel = await client.start_kernel()
        seen[client] = (await client.run_code(kernel["id"], code)).stdout.split()
    # Kernels inherit the server's environment: ann/ keeps JupyterHub's default interval.
    assert seen[ann] == [find_python(), "None"]
    assert seen[lab] == [find_python(), "1"]


async def test_kernel_lifecycle(ann: JupyterServer) -> None:
    kernel = await ann.start_kernel()
    kernel_id = kernel["id"]
    assert kernel["execution_state"] == "idle"
    assert kernel_id in [k["id"] for k in await ann.list_kernels()]

    async with ann.connect_kernel(kernel_id) as conn:
        assert conn.protocol == KERNEL_WS_PROTOCOL
        await ann.wait_kernel(kernel_id, lambda model: model["connections"] == 1)
        status = await ann.status()
        assert (status["kernels"], status["connections"]) == (1, 1)
        run = await conn.execute("x = 6 * 7\nprint(x)")
        assert (run.status, run.stdout) == ("ok", "42\n")
        with pytest.raises(KernelExecutionError, match="ZeroDivisionError"):
            await conn.execute("1 / 0")
        sleeping = await conn.execute("import time; time.sleep(1200)", wait=False)
        assert (await ann.wait_kernel(kernel_id, "busy"))["execution_state"] == "busy"
        await ann.interrupt_kernel(kernel_id)
        await sleeping.wait(raise_on_error=False)
        assert sleeping.reply is not None and sleeping.reply["ename"] == "KeyboardInterrupt"
        assert (await ann.wait_kernel(kernel_id, "idle"))["execution_state"] == "idle"
    await ann.wait_kernel(kernel_id, lambda model: model["connections"] == 0)

    async with ann.connect_kernel(kernel_id, protocol="legacy") as conn:
        assert conn.protocol == ""  # JSON text frames
        assert (await conn.execute("print(x + 1)")).stdout == "43\n"

    await ann.delete_kernel(kernel_id)
    assert await ann.list_kernels() == []
    missing = await ann.request("GET", f"api/kernels/{kernel_id}", expected=(404,))
    assert missing.status_code == 404
    assert (await ann.status())["kernels"] == 0


async def test_silent_busy_kernel_keeps_its_last_activity(
    jupyter_hub: Hub, lab: JupyterServer, ann: JupyterServer, tmp_path: Path
) -> None:
    """A kernel busy without output looks idle by time: only execution_state tells."""
    kernel = await lab.start_kernel()
    # On the other server: a kernel started over REST that no client ever connects to.
    unconnected = await ann.start_kernel(wait_ready=False)
    go = tmp_path / "go"
    code = (
        "import os, sys, time\n"
        f"while not os.path.exists({str(go)!r}):\n"
        "    time.sleep(0.05)\n"
        "sys.stdout.write('woke up\\n')\n"  # one write, one flush: one stream message
        "sys.stdout.flush()\n"
        "time.sleep(1200)\n"
    )
    # Start the cell and close the websocket, as when the browser tab is closed.
    await lab.run_code(kernel["id"], code, wait=False)
    busy = await lab.wait_kernel_quiet(kernel["id"])  # busy + execute_input recorded
    assert (busy["execution_state"], busy["connections"]) == ("busy", 0)
    quiet_since = parse_time(busy["last_activity"])
    assert await lab.last_activity() == quiet_since  # the server's is the kernel's

    await lab.wait_server_time(quiet_since + timedelta(seconds=2))
    still = await lab.get_kernel(kernel["id"])
    assert still["execution_state"] == "busy"
    assert parse_time(still["last_activity"]) == quiet_since
    assert await lab.last_activity() == quiet_since
    # ann/lab reports its activity every second; the Hub has nothing newer either.
    assert await hub_last_activity(jupyter_hub, "ann", "lab") <= quiet_since
    # Meanwhile the never-connected kernel is still "starting", not "idle".
    assert (await ann.get_kernel(unconnected["id"]))["execution_state"] == "starting"

    # Output moves it, although nobody is connected to see it; the kernel stays busy.
    go.touch()
    printed = await lab.wait_kernel(
        kernel["id"], lambda model: parse_time(model["last_activity"]) > quiet_since
    )
    assert printed["execution_state"] == "busy"
    moved = parse_time(printed["last_activity"])
    assert await lab.last_activity() == moved
    assert await wait_hub_activity(jupyter_hub, "ann", "lab", moved) == moved


async def test_only_tracked_requests_count_as_activity(ann: JupyterServer) -> None:
    assert await ann.list_kernels() == []  # nothing else moves ann/'s activity meanwhile
    before = await ann.last_activity()
    for path in ("api/kernels", "api/terminals", "api/sessions"):
        await ann.request("GET", path, track_activity=False)
    await ann.status()  # api/status itself never counts
    assert await ann.last_activity() == before

    polled = await ann.touch()  # GET api/kernels, as a JupyterLab tab polls
    moved = await ann.last_activity()
    assert moved > before
    assert response_date(polled) <= moved < response_date(polled) + timedelta(seconds=2)


async def test_activity_reaches_the_hub_at_the_configured_interval(
    jupyter_hub: Hub, lab: JupyterServer
) -> None:
    await lab.touch()
    moved = await lab.last_activity()
    # The Hub stores the server's own timestamp.
    assert await wait_hub_activity(jupyter_hub, "ann", "lab", moved) == moved


async def test_terminal_activity(ann: JupyterServer, tmp_path: Path) -> None:
    created = await ann.create_terminal()
    name = created["name"]
    assert name in [t["name"] for t in await ann.list_terminals()]

    async with ann.connect_terminal(name) as tty:
        assert await tty.run("echo hi-$((40 + 2))") == "hi-42"
    listed = await ann.request("GET", "api/terminals", track_activity=False)
    entry = next(t for t in listed.json() if t["name"] == name)
    fresh = parse_time(entry["last_activity"])
    assert fresh > parse_time(created["last_activity"])
    assert response_date(listed) - timedelta(seconds=5) <= fresh  # recent by the server's clock

    # Output of a terminal nobody is connected to moves the terminal's last_activity,
    # but not the server's (api/status).
    go = tmp_path / "go"
    async with ann.connect_terminal(name) as tty:
        await tty.run(f"(while [ ! -e {go} ]; do sleep 0.05; done; echo woke-$((1 + 1))) &")
    quiet = parse_time((await ann.wait_terminal_quiet(name))["last_activity"])  # prompt is in
    server_activity = await ann.last_activity()
    go.touch()
    printed = await poll_until(
        lambda: _terminal_after(ann, name, quiet), "the terminal's output", timeout=10
    )
    assert printed > quiet
    assert await ann.last_activity() == server_activity
    async with ann.connect_terminal(name) as tty:  # the terminal replays what it wrote
        await tty.expect("woke-2")

    await ann.delete_terminal(name)
    assert name not in [t["name"] for t in await ann.list_terminals()]
    assert (await ann.request("GET", f"api/terminals/{name}", expected=(404,))).status_code == 404


async def _terminal_after(client: JupyterServer, name: str, moment: datetime) -> datetime | None:
    value = parse_time((await client.get_terminal(name))["last_activity"])
    return value if value > moment else None


async def test_tokens(jupyter_hub: Hub, servers: Servers) -> None:
    hub = jupyter_hub
    no_access = await hub.token(MINIMAL_SCOPES)  # a culler's Hub scopes, no access:servers
    cases = [
        (servers.access_token, servers.ann, 200),
        (servers.access_token, servers.lab, 200),
        (servers.ann_token, servers.ann, 200),
        (servers.ann_token, servers.lab, 403),  # ann's token for ann/ only
        (no_access, servers.ann, 403),
        (None, servers.ann, 403),
        ("not-a-token", servers.ann, 403),
    ]
    for token, location, status in cases:
        for via in ("direct", "proxy"):
            async with JupyterServer(location.url(via), token) as client:
                resp = await client.request(
                    "GET", "api/kernels", track_activity=False, expected=None
                )
            assert resp.status_code == status, (token, location.path, via, resp.text)
            assert_recent_date(resp)
            if status == 200:
                assert resp.json() == []

    async with JupyterServer(servers.ann.direct_url, no_access) as client:
        for connect in (
            client.connect_kernel("00000000-0000-0000-0000-000000000000"),
            client.connect_terminal("1"),
        ):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                async with connect:
                    pass
            assert refused.value.status == 403


async def test_non_jupyter_urls(jupyter_hub: Hub, servers: Servers) -> None:
    hub = jupyter_hub
    headers = {"Authorization": f"token {servers.access_token}"}
    ann = servers.ann
    not_found = [
        ann.direct_url + "api/no-such-thing",
        ann.proxy_url + "api/no-such-thing",
        # Another server's path on ann/'s port; paths outside any server.
        f"http://127.0.0.1:{ann.port}/user/ann/lab/api/kernels",
        f"http://127.0.0.1:{ann.port}/api/kernels",
        f"{hub.public_url}/hub/api/kernels",  # the Hub is no Jupyter server
    ]
    async with httpx.AsyncClient(timeout=30) as client:
        for url in not_found:
            resp = await client.get(url, headers=headers)
            assert resp.status_code == 404, (url, resp.text[:300])
            assert_recent_date(resp)

        # Through the proxy, the URL of a server that is not running is the Hub's: a
        # redirect, then 424 for a user without a running server.
        await hub.create_users(["stopped"])
        resp = await client.get(f"{hub.public_url}/user/stopped/api/kernels", headers=headers)
        assert (resp.status_code, resp.headers["Location"]) == (
            302,
            "/hub/user/stopped/api/kernels",
        )
        resp = await client.get(f"{hub.public_url}/hub/user/stopped/api/kernels", headers=headers)
        assert resp.status_code == 424, resp.text
