"""A stand-in for many singleuser servers' Jupyter REST API, for the kernel benchmark only.

The benchmark's servers are FakeSpawner servers (no process each), so hubcull's kernel probes
(``spec.kernels`` with ``via: proxy``) are pointed at this one aiohttp server instead. It
answers, for every server the benchmark declares,

* ``GET /user/{name}/api/kernels`` with jupyter_server's kernel models (``id``, ``name``,
  ``last_activity``, ``execution_state``, ``connections``), and
* ``GET /user/{name}/api/terminals`` with terminal models (``name``, ``last_activity``),

with the ``Date`` header aiohttp always sends. Only for benchmarks: the behaviour tests use
real ``jupyterhub-singleuser`` servers (issue 11).

**It costs the Hub what real servers cost.** A real singleuser server does not know the
probe's token: ``HubAuth.user_for_token`` (jupyterhub/services/auth.py) asks the Hub with
``GET {JUPYTERHUB_API_URL}/user`` and ``Authorization: token <the token>``, and keeps the
answer in its own ``_ExpiringDict`` cache (key ``token:{session id}:{sha256 of the token}``,
the session id being empty for a token request, ``cache_max_age`` 300 s). Each server has its
own cache (one process each), and concurrent requests that miss the cache each ask the Hub
(nothing waits for a lookup already in flight). This server keeps one such cache per server
name and asks the Hub the same way, on a new connection each time (jupyterhub's aiohttp
client keeps idle connections 15 s, far less than the 300 s a cached answer lives). Then,
like ``JupyterHubIdentityProvider.get_user``, it requires ``access:servers`` for that server
in the answer's scopes, else 403.

Controlled by the benchmark over HTTP on the same port (paths under ``/_bench/``). Run as
``python -m benchmarks.fakejupyter --hub-api http://127.0.0.1:8081/hub/api``; it prints
``listening on PORT`` once ready.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientSession, TCPConnector, web

#: ``HubAuth.auth_header_pat``
AUTH_HEADER = re.compile(r"(?:token|bearer)\s+(.+)", re.IGNORECASE)
#: ``HubAuth.cache_max_age``'s default
CACHE_MAX_AGE = 300.0

_NOT_CACHED = object()


@dataclass
class TokenCache:
    """One server's ``HubAuth.cache``: answers of the Hub by token hash, for ``max_age``."""

    max_age: float
    values: dict[str, tuple[float, dict[str, Any] | None]] = field(default_factory=dict)

    def get(self, key: str) -> object:
        """The cached answer (``None`` for "no such user"), or ``_NOT_CACHED``."""
        entry = self.values.get(key)
        if entry is None:
            return _NOT_CACHED
        stamp, value = entry
        if self.max_age > 0 and stamp + self.max_age < time.monotonic():
            del self.values[key]
            return _NOT_CACHED
        return value

    def put(self, key: str, value: dict[str, Any] | None) -> None:
        """Cache an answer of the Hub."""
        self.values[key] = (time.monotonic(), value)


@dataclass
class Stats:
    """What the servers were asked and what they asked the Hub, since the last reset."""

    requests: Counter[str] = field(default_factory=Counter)
    probed: set[str] = field(default_factory=set)
    token_checks: int = 0
    token_check_seconds: float = 0.0
    token_check_failures: int = 0
    forbidden: int = 0
    tracked: int = 0  # requests without ?no_track_activity=1 (a probe would move activity)

    def as_json(self) -> dict[str, Any]:
        """For ``GET /_bench/stats``."""
        return {
            "requests": dict(self.requests),
            "probed": sorted(self.probed),
            "token_checks": self.token_checks,
            "token_check_seconds": self.token_check_seconds,
            "token_check_failures": self.token_check_failures,
            "forbidden": self.forbidden,
            "tracked": self.tracked,
        }


class FakeJupyter:
    """Every declared server's kernels, terminals and token cache."""

    def __init__(self, hub_api: str, cache_max_age: float = CACHE_MAX_AGE) -> None:
        self.hub_api = hub_api.rstrip("/")
        self.cache_max_age = cache_max_age
        #: name -> (kernels JSON, terminals JSON), rendered when the benchmark sets them
        self.servers: dict[str, tuple[bytes, bytes]] = {}
        self.caches: dict[str, TokenCache] = {}
        self.stats = Stats()
        self._session: ClientSession | None = None

    async def session(self) -> ClientSession:
        """The client for the Hub: a new connection per request (see the module doc)."""
        if self._session is None:
            self._session = ClientSession(connector=TCPConnector(force_close=True, limit=0))
        return self._session

    async def close(self) -> None:
        """Close the Hub client."""
        if self._session is not None:
            await self._session.close()

    async def user_for_token(self, name: str, token: str) -> dict[str, Any] | None:
        """``HubAuth.user_for_token`` of server ``name``, with its own cache."""
        cache = self.caches.setdefault(name, TokenCache(self.cache_max_age))
        key = "token::" + hashlib.sha256(token.encode("utf8", "replace")).hexdigest()
        cached = cache.get(key)
        if cached is not _NOT_CACHED:
            return cached  # type: ignore[return-value]
        started = time.monotonic()
        self.stats.token_checks += 1
        session = await self.session()
        try:
            async with session.get(
                self.hub_api + "/user", headers={"Authorization": "token " + token}
            ) as response:
                text = await response.text()
                status = response.status
        finally:
            self.stats.token_check_seconds += time.monotonic() - started
        if status == 403:
            data = None
        elif status >= 400:
            self.stats.token_check_failures += 1
            raise web.HTTPInternalServerError(text="Failed to check authorization")
        else:
            data = json.loads(text)
        cache.put(key, data)
        return data

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /user/{name}/api/{kernels,terminals}``."""
        name, what = request.match_info["name"], request.match_info["what"]
        self.stats.requests[what] += 1
        if request.query.get("no_track_activity") != "1":
            self.stats.tracked += 1
        state = self.servers.get(name)
        if state is None:
            raise web.HTTPNotFound()
        match = AUTH_HEADER.fullmatch(request.headers.get("Authorization", "").strip())
        user = await self.user_for_token(name, match.group(1)) if match else None
        if user is None or not _may_access(user.get("scopes") or [], name):
            self.stats.forbidden += 1
            raise web.HTTPForbidden()
        self.stats.probed.add(name)
        body = state[0] if what == "kernels" else state[1]
        return web.Response(body=body, content_type="application/json")

    async def set_servers(self, request: web.Request) -> web.Response:
        """``PUT /_bench/servers``: ``{name: {"kernels": [...], "terminals": [...]}}``
        replaces every server's models (models as jupyter_server sends them)."""
        body = await request.json()
        self.servers = {
            name: (
                json.dumps(models.get("kernels", [])).encode(),
                json.dumps(models.get("terminals", [])).encode(),
            )
            for name, models in body.items()
        }
        self.caches.clear()
        return web.json_response({"servers": len(self.servers)})

    async def forget_tokens(self, request: web.Request) -> web.Response:
        """``POST /_bench/forget-tokens``: every cache empty, as 5 minutes later."""
        self.caches.clear()
        return web.json_response({})

    async def get_stats(self, request: web.Request) -> web.Response:
        """``GET /_bench/stats`` (``?reset=1`` starts counting again)."""
        answer = self.stats.as_json()
        if request.query.get("reset") == "1":
            self.stats = Stats()
        return web.json_response(answer)

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application()
        app.router.add_get(r"/user/{name}/api/{what:kernels|terminals}", self.handle)
        app.router.add_put("/_bench/servers", self.set_servers)
        app.router.add_post("/_bench/forget-tokens", self.forget_tokens)
        app.router.add_get("/_bench/stats", self.get_stats)
        return app


def _may_access(scopes: list[str], name: str) -> bool:
    """``access:servers`` for this user's default server (plain or filtered to it), as the
    singleuser server's ``access_scopes`` require."""
    allowed = {"access:servers", f"access:servers!user={name}", f"access:servers!server={name}/"}
    return any(scope in allowed for scope in scopes)


async def serve(hub_api: str, host: str, port: int, cache_max_age: float) -> None:
    """Serve until killed; print ``listening on PORT`` when ready."""
    fake = FakeJupyter(hub_api, cache_max_age)
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    site = web.SockSite(runner, sock, backlog=1024)
    await site.start()
    print(f"listening on {sock.getsockname()[1]}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.close()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fakejupyter")
    parser.add_argument("--hub-api", required=True, help="the Hub's API URL (JUPYTERHUB_API_URL)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cache-max-age", type=float, default=CACHE_MAX_AGE)
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.hub_api, args.host, args.port, args.cache_max_age))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
