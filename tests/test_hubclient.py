"""The Hub client's mechanics that a real Hub cannot be made to show on demand: the
concurrency bound, retries and their limits, headers and quoting (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from hubcull.engine.hub.client import HubAPIError, HubClient, HubError, HubUnreachable

URL = "http://hub.test/hub/api"


def page(items: list[dict], offset: int, limit: int, total: int) -> httpx.Response:
    nxt = {"offset": offset + limit, "limit": limit} if offset + limit < total else None
    body = {
        "items": items,
        "_pagination": {"offset": offset, "limit": limit, "total": total, "next": nxt},
    }
    return httpx.Response(200, json=body, headers={"Date": "Sun, 22 Nov 2026 10:00:00 GMT"})


async def test_no_more_than_concurrency_requests_in_flight() -> None:
    in_flight = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return httpx.Response(204)

    async with HubClient(URL, "t", concurrency=3, transport=httpx.MockTransport(handler)) as client:
        await asyncio.gather(*(client.stop_server(f"u{i}", "") for i in range(20)))
    assert peak == 3


async def test_gets_are_retried_on_5xx_and_429_but_deletes_are_not() -> None:
    calls: dict[str, int] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        calls[request.method] = calls.get(request.method, 0) + 1
        if request.method == "GET" and calls["GET"] < 3:
            return httpx.Response(503 if calls["GET"] == 1 else 429, headers={"Retry-After": "0"})
        if request.method == "DELETE":
            return httpx.Response(503, json={"message": "busy"})
        return httpx.Response(200, json={"version": "5.3.0"})

    async with HubClient(URL, "t", backoff=0.001, transport=httpx.MockTransport(handler)) as c:
        assert (await c.info())["version"] == "5.3.0"
        with pytest.raises(HubError, match="503"):
            await c.stop_server("ann", "")
    assert calls == {"GET": 3, "DELETE": 1}


async def test_retries_are_bounded() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with HubClient(
        URL, "t", retries=2, backoff=0.001, transport=httpx.MockTransport(handler)
    ) as client:
        with pytest.raises(HubUnreachable, match="cannot be reached"):
            await client.info()


async def test_listing_headers_quoting_and_pages_by_offset() -> None:
    seen: list[httpx.Request] = []
    users = [{"name": f"u{i}", "servers": {}} for i in range(5)]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "DELETE":
            return httpx.Response(202)
        offset, limit = int(request.url.params["offset"]), int(request.url.params["limit"])
        return page(users[offset : offset + limit], offset, limit, len(users))

    async with HubClient(
        URL, "s3cret", page_size=2, transport=httpx.MockTransport(handler)
    ) as client:
        listed = await client.list_users("ready", include_stopped_servers=True)
        assert [u["name"] for u in listed] == ["u0", "u1", "u2", "u3", "u4"]
        assert await client.stop_server("ann@x.org", "my lab", remove=True) == "stopping"
    lists = [r for r in seen if r.method == "GET"]
    assert sorted(int(r.url.params["offset"]) for r in lists) == [0, 2, 4]
    for request in lists:
        assert request.headers["Accept"] == "application/jupyterhub-pagination+json"
        assert request.url.params["state"] == "ready"
        assert request.url.params["include_stopped_servers"] == "1"
        assert request.headers["Authorization"] == "token s3cret"
    delete = seen[-1]
    assert delete.url.raw_path == b"/hub/api/users/ann%40x.org/servers/my%20lab"
    assert json.loads(delete.content) == {"remove": True}
    assert client.hub_now is not None and client.hub_now.hour == 10


async def test_a_plain_list_or_a_broken_page_is_an_error_not_a_partial_listing() -> None:
    def plain(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=[{"name": "u0"}])

    async with HubClient(URL, "t", transport=httpx.MockTransport(plain)) as client:
        with pytest.raises(HubError, match="plain list"):
            await client.list_users("ready")

    def shifted(request: httpx.Request) -> httpx.Response:
        return page([{"name": "x"}], 0, 1, 3)  # answers offset 0 whatever was asked

    async with HubClient(URL, "t", page_size=1, transport=httpx.MockTransport(shifted)) as client:
        with pytest.raises(HubError, match="offset"):
            await client.list_users("ready")


async def test_version_and_scopes_are_remembered_for_a_while_and_forgotten_on_403(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import hubcull.engine.hub.client as hubclient

    now = [1000.0]
    monkeypatch.setattr(hubclient.time, "monotonic", lambda: now[0])
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(f"{request.method} {request.url.path}")
        if request.method == "DELETE":
            return httpx.Response(403, json={"message": "Missing or invalid credentials."})
        if request.url.path.endswith("/user"):
            return httpx.Response(200, json={"name": "culler", "scopes": ["list:users"]})
        return httpx.Response(200, json={"version": "5.3.0"})

    transport = httpx.MockTransport(handler)
    async with HubClient(URL, "t", remember_seconds=300, transport=transport) as client:
        for _ in range(3):
            assert (await client.info())["version"] == "5.3.0"
            assert await client.token_scopes() == ["list:users"]
        assert asked == ["GET /hub/api/", "GET /hub/api/user"]
        now[0] += 301
        await client.info()
        await client.token_scopes()
        assert len(asked) == 4
        with pytest.raises(HubAPIError):
            await client.stop_server("ann", "")
        await client.info()
        await client.token_scopes()
        assert asked[-2:] == ["GET /hub/api/", "GET /hub/api/user"] and len(asked) == 7
    async with HubClient(URL, "t", transport=transport) as client:  # the default: no memory
        await client.info()
        await client.info()
    assert asked.count("GET /hub/api/") == 5
