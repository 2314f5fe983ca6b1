"""A process-less JupyterHub Spawner for tests and benchmarks (and a hook for real ones).

This module is imported *inside the JupyterHub process* (``tests.support.jhub`` puts the
repository root on the Hub's ``PYTHONPATH`` and sets
``c.JupyterHub.spawner_class = "tests.support.jhub_spawner.FakeSpawner"``).

Every "server" started by :class:`FakeSpawner` is served by ONE small shared HTTP server
that lives inside the Hub process and answers ``200`` (with an ``X-JupyterHub-Version``
header) to any request, so the Hub's ``wait_up`` check and requests routed through
configurable-http-proxy succeed without any process per server.  That is what lets a
single Hub hold thousands of running servers on a small machine.

Per-spawn knobs, read from ``user_options`` (the JSON body of
``POST /hub/api/users/{name}/servers/{server}``):

``start_delay`` / ``stop_delay``
    seconds that ``start()`` / ``stop()`` take, overriding the configured
    :attr:`FakeSpawner.start_delay` / :attr:`FakeSpawner.stop_delay`.  A large value keeps
    the server ``pending: "spawn"`` or ``pending: "stop"``.
``fail_start``
    if true, ``start()`` raises after its delay (a failed spawn).

All pending delays can be cut short with :func:`release_delays` (exposed over HTTP by
``tests.support.hubext``), so a harness can tear a Hub down quickly.

For real servers (``spawner="local"``), :func:`apply_local_user_options` is the
``apply_user_options`` hook: ``{"activity_interval": N}`` sets that server's
``JUPYTERHUB_ACTIVITY_INTERVAL``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from jupyterhub import __version__ as jupyterhub_version
from jupyterhub.spawner import Spawner
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from traitlets import Float, Unicode, default

__all__ = [
    "ACTIVITY_INTERVAL_OPTION",
    "FakeSpawner",
    "apply_local_user_options",
    "release_delays",
    "shared_server_port",
]

# A random id for this Hub process: state saved by a previous Hub process (whose shared
# server is gone) is recognised as "not running".
_BOOT_ID = os.urandom(8).hex()

_shared: dict[str, Any] = {}


class _OkHandler(web.RequestHandler):
    """Answer 200 to every request on every path."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")

    def check_xsrf_cookie(self) -> None:
        """No XSRF checks: this is a stand-in for a single-user server."""

    async def prepare(self) -> None:
        """Finish every request immediately with a small JSON body."""
        self.set_header("X-JupyterHub-Version", jupyterhub_version)
        self.set_header("Content-Type", "application/json")
        if self.request.method != "HEAD":
            self.write(b'{"fake": true}')
        self.finish()


def shared_server_port(ip: str = "127.0.0.1") -> int:
    """Return the port of the shared fake server, starting it on first use.

    Must be called from the Hub's event loop thread.
    """
    port = _shared.get("port")
    if port is None:
        sockets = bind_sockets(0, ip, family=socket.AF_INET)
        app = web.Application([(r".*", _OkHandler)], log_function=lambda _handler: None)
        server = HTTPServer(app, xheaders=False)
        server.add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        _shared["server"] = server
        _shared["port"] = port
    return port


def _release_event() -> asyncio.Event:
    event = _shared.get("release")
    if event is None:
        event = _shared["release"] = asyncio.Event()
    return event


def release_delays() -> None:
    """Let every currently sleeping fake start/stop finish now.

    Delays begun after this call are honoured again.
    """
    event = _shared.pop("release", None)
    if event is not None:
        event.set()


async def _delay(seconds: float) -> None:
    """Sleep ``seconds``, or less if :func:`release_delays` is called meanwhile."""
    if seconds <= 0:
        return
    event = _release_event()
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass


class FakeSpawner(Spawner):
    """A Spawner whose servers are all served by one shared in-process HTTP server."""

    start_delay = Float(0.0, help="Seconds start() takes (user_options start_delay wins).").tag(
        config=True
    )
    stop_delay = Float(0.0, help="Seconds stop() takes (user_options stop_delay wins).").tag(
        config=True
    )
    fake_ip = Unicode("127.0.0.1", help="Interface of the shared fake server.").tag(config=True)

    _fake_running = False

    if "apply_user_options" in Spawner.class_trait_names():  # JupyterHub >= 5.3

        @default("apply_user_options")
        def _default_apply_user_options(self) -> Any:
            # Accept any user_options silently (the delays are read in start()/stop()),
            # instead of JupyterHub's "Received unhandled user_options" warning.
            def accept_all(spawner: Spawner, user_options: dict[str, Any]) -> None:
                return None

            return accept_all

    @default("poll_interval")
    def _default_poll_interval(self) -> int:
        # No periodic per-server polling: it is noise in CPU measurements with thousands of
        # servers. The Hub still polls on demand (e.g. before DELETE of a server).
        return 0

    def _option_seconds(self, key: str, configured: float) -> float:
        value = (self.user_options or {}).get(key)
        if value is None:
            return configured
        try:
            return float(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"user_options[{key!r}] must be a number, not {value!r}") from e

    async def start(self) -> str:
        """Wait ``start_delay`` then "start" on the shared server; return its URL."""
        await _delay(self._option_seconds("start_delay", self.start_delay))
        if (self.user_options or {}).get("fail_start"):
            raise RuntimeError("FakeSpawner: start failed on request (user_options fail_start)")
        port = shared_server_port(self.fake_ip)
        self._fake_running = True
        return f"http://{self.fake_ip}:{port}"

    async def stop(self, now: bool = False) -> None:
        """Wait ``stop_delay`` (unless ``now``) then mark the server stopped."""
        if not now:
            await _delay(self._option_seconds("stop_delay", self.stop_delay))
        self._fake_running = False

    async def poll(self) -> int | None:
        """None while running, 0 once stopped (or if started by an earlier Hub process)."""
        return None if self._fake_running else 0

    def get_state(self) -> dict[str, Any]:
        """Save whether the server runs, tagged with this Hub process's boot id."""
        state = super().get_state()
        if self._fake_running:
            state["fake_boot_id"] = _BOOT_ID
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore the running flag, if it was saved by this same Hub process."""
        super().load_state(state)
        self._fake_running = state.get("fake_boot_id") == _BOOT_ID

    def clear_state(self) -> None:
        """Forget the running flag."""
        super().clear_state()
        self._fake_running = False


#: ``user_options`` key read by :func:`apply_local_user_options`.
ACTIVITY_INTERVAL_OPTION = "activity_interval"


def apply_local_user_options(spawner: Spawner, user_options: dict[str, Any]) -> None:
    """``apply_user_options`` hook for real single-user servers (``spawner="local"``).

    ``{"activity_interval": N}`` sets the server's ``JUPYTERHUB_ACTIVITY_INTERVAL``: every
    how many seconds (an integer, 0 = never) ``jupyterhub-singleuser`` reports its own
    last activity to the Hub.  Other keys are refused (the spawn answers 400).
    """
    unknown = set(user_options) - {ACTIVITY_INTERVAL_OPTION}
    if unknown:
        raise ValueError(f"unsupported user_options {sorted(unknown)}")
    if ACTIVITY_INTERVAL_OPTION in user_options:
        value = user_options[ACTIVITY_INTERVAL_OPTION]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{ACTIVITY_INTERVAL_OPTION} must be an integer >= 0, not {value!r}")
        spawner.environment = {**spawner.environment, "JUPYTERHUB_ACTIVITY_INTERVAL": str(value)}
