"""``hubcull run`` with a proposed engine change patched in, to measure its effect.

Scenario 3 runs the operator as it is (``python -m hubcull.cli run ...``) and, for
comparison, through this module::

    python -m benchmarks.operator_variants cached-ssl run --namespace NS

The patch lives here, not in the engine: it only shows what the change recommended in
``docs/performance.md`` would save.

``cached-ssl``
    :class:`hubcull.hubclient.HubClient` builds a new ``httpx.AsyncClient`` for every sweep,
    and with the default ``verify=True`` httpx loads certifi's whole CA bundle into a new SSL
    context each time (about 40 ms of CPU), even for an ``http://`` Hub. The variant makes
    ``make_ssl_context`` return one cached context per CA bundle. (The engine does this
    itself since commit bee7c1a; the variant then changes nothing.)
``reuse``
    ``cached-ssl``, plus: the ``httpx.AsyncClient`` of a HubClient is kept for the next sweep
    with the same settings (same URL, token, CA, limits: the same policy), so connections
    stay open; and the answers of ``GET /`` (version) and ``GET /user`` (token scopes) are
    reused for 5 minutes per Hub URL and token, so a sweep of a small Hub is one request.
``lean``
    ``reuse``, plus: the token Secret is read again only after 60 seconds (instead of on
    every sweep); each policy's loop wakes once per sweep instead of every second to look
    for a spec change (as if kopf's own ``on.field('spec')`` woke it); and a stand-in
    ``sniffio`` module, which httpcore otherwise tries (and fails) to import on every
    request, searching ``sys.path`` each time (``pip install sniffio`` does the same).
"""

from __future__ import annotations

import functools
import ssl
import sys
from collections.abc import Callable, Sequence


def _cache_ssl_contexts() -> None:
    import certifi

    from hubcull import hubclient

    original = hubclient.make_ssl_context
    if hasattr(original, "cache_info"):
        return  # the engine caches its SSL contexts itself (since bee7c1a)

    @functools.lru_cache(maxsize=16)
    def cached(ca_pem: str | None) -> ssl.SSLContext | bool:
        if not ca_pem:
            return ssl.create_default_context(cafile=certifi.where())
        return original(ca_pem)

    hubclient.make_ssl_context = cached


INFO_TTL_SECONDS = 300.0


def _reuse_clients_and_info() -> None:
    import time
    import types
    from typing import Any

    import httpx

    from hubcull import hubclient

    _cache_ssl_contexts()

    class KeptClient(httpx.AsyncClient):
        """A client that outlives the HubClient that asked for it."""

        async def aclose(self) -> None:
            """Keep the connections for the next sweep."""

    clients: dict[str, httpx.AsyncClient] = {}

    def client_for(**kwargs: Any) -> httpx.AsyncClient:
        key = repr(sorted((k, repr(v)) for k, v in kwargs.items() if k != "verify"))
        key += f"|{id(kwargs.get('verify'))}"
        if key not in clients:
            clients[key] = KeptClient(**kwargs)
        return clients[key]

    shim = types.ModuleType("httpx_with_kept_clients")
    shim.__dict__.update(httpx.__dict__)
    shim.AsyncClient = client_for  # type: ignore[attr-defined]
    hubclient.httpx = shim  # type: ignore[attr-defined]

    answers: dict[tuple[str, str, str], tuple[float, Any]] = {}

    def cached(name: str) -> Callable[..., Any]:
        original = getattr(hubclient.HubClient, name)

        async def method(self: hubclient.HubClient) -> Any:
            key = (name, self.url, str(self._http.headers.get("authorization")))
            hit = answers.get(key)
            if hit is not None and time.monotonic() - hit[0] < INFO_TTL_SECONDS:
                return hit[1]
            value = await original(self)
            answers[key] = (time.monotonic(), value)
            return value

        return method

    for name in ("info", "token_scopes"):
        setattr(hubclient.HubClient, name, cached(name))


SECRET_TTL_SECONDS = 60.0


def _lean() -> None:
    import asyncio
    import time
    import types
    from typing import Any

    _reuse_clients_and_info()

    sniffio = types.ModuleType("sniffio")

    def current_async_library() -> str:
        asyncio.get_running_loop()
        return "asyncio"

    sniffio.current_async_library = current_async_library  # type: ignore[attr-defined]
    sys.modules.setdefault("sniffio", sniffio)

    from hubcull import handlers, kubeapi

    handlers.SPEC_POLL_SECONDS = 3600.0  # type: ignore[misc]
    original = kubeapi.KubeAPI.read_secret_key
    secrets: dict[tuple[str, str, str], tuple[float, Any]] = {}

    async def read_secret_key(
        self: kubeapi.KubeAPI, namespace: str, name: str, key: str
    ) -> str | None:
        hit = secrets.get((namespace, name, key))
        if hit is not None and time.monotonic() - hit[0] < SECRET_TTL_SECONDS:
            return hit[1]  # type: ignore[no-any-return]
        value = await original(self, namespace, name, key)
        secrets[(namespace, name, key)] = (time.monotonic(), value)
        return value

    kubeapi.KubeAPI.read_secret_key = read_secret_key  # type: ignore[method-assign]


VARIANTS: dict[str, Callable[[], None]] = {
    "cached-ssl": _cache_ssl_contexts,
    "reuse": _reuse_clients_and_info,
    "lean": _lean,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Apply the named variant, then run the ``hubcull`` command line with the rest."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in VARIANTS:
        print(f"usage: {__name__} {{{','.join(VARIANTS)}}} HUBCULL-ARGS...", file=sys.stderr)
        return 2
    VARIANTS[args[0]]()
    from hubcull.cli import main as hubcull_main

    return hubcull_main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
