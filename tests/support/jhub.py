"""Start a REAL JupyterHub (with the real configurable-http-proxy) for tests and benchmarks.

Usage from pytest or a plain asyncio script::

    from tests.support.jhub import MINIMAL_SCOPES, start_hub

    async with start_hub(tmp_path) as hub:
        await hub.create_users(["ann"])
        await hub.spawn("ann")
        await hub.set_times("ann", "", last_activity="2020-01-01T00:00:00Z")
        token = await hub.token(MINIMAL_SCOPES)
        ...

or, without a context manager (benchmarks)::

    hub = await launch_hub(workdir, spawner="fake")
    try: ...
    finally: await stop_hub(hub)  # = await hub.shutdown()

The Hub runs as ``python -m jupyterhub`` (by default through an equivalent ``runpy``
bootstrap that skips one slow import, see ``launch_hub(fast_startup=)``) from the project's
``.venv``, in ``workdir`` (sqlite database, cookie secret, pid files, the generated
``jupyterhub_config.py`` and the combined Hub/proxy log ``jupyterhub.log`` all live there),
listening on free ports of 127.0.0.1.
``hub.api_url`` goes through the proxy's public URL, like a real client's would.

Servers are, by default, served by :class:`tests.support.jhub_spawner.FakeSpawner` (no
process per server; thousands per Hub are fine).  ``spawner="local"`` runs real
``jupyterhub-singleuser`` servers with ``SimpleLocalProcessSpawner``.

Only processes started here are ever signalled: the Hub, and at shutdown whatever of its
descendants (configurable-http-proxy, single-user servers) outlive it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import httpx

__all__ = [
    "FULL_SCOPES",
    "MINIMAL_SCOPES",
    "PAGINATION_MEDIA_TYPE",
    "UNSET",
    "Hub",
    "HubAPIError",
    "HubError",
    "HubStartError",
    "find_configurable_http_proxy",
    "find_python",
    "isoformat",
    "launch_hub",
    "process_alive",
    "start_hub",
    "stop_hub",
]

#: Scopes a culler needs: list users, read their and their servers' activity, stop servers.
MINIMAL_SCOPES: Final[list[str]] = [
    "list:users",
    "read:users:activity",
    "read:servers",
    "delete:servers",
]
#: MINIMAL_SCOPES plus group membership and user administration (e.g. deleting users).
FULL_SCOPES: Final[list[str]] = [*MINIMAL_SCOPES, "read:users:groups", "admin:users"]

PAGINATION_MEDIA_TYPE: Final = "application/jupyterhub-pagination+json"

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
LOG_NAME: Final = "jupyterhub.log"
CONFIG_NAME: Final = "jupyterhub_config.py"
PROXY_PID_NAME: Final = "jupyterhub-proxy.pid"
SERVICE_NAME: Final = "harness"


# `python -m jupyterhub`, minus the import of rfc3987_syntax: jsonschema imports it (only
# for the "iri"/"iri-reference" formats, unused by JupyterHub's event schemas) and it
# builds a grammar at import time that takes ~1.5 s, half of the Hub's startup.
def _fast_boot(module: str) -> list[str]:
    """``python -c`` arguments equivalent to ``python -m module`` without rfc3987_syntax."""
    return [
        "-c",
        "import runpy, sys; "
        "sys.modules['rfc3987_syntax'] = None; "
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)",
    ]


# Same scopes as JupyterHub's built-in "admin" role, for the harness service.
_ADMIN_SCOPES: Final = [
    "admin-ui",
    "admin:users",
    "admin:servers",
    "admin:services",
    "tokens",
    "admin:groups",
    "list:services",
    "read:services",
    "read:hub",
    "proxy",
    "shutdown",
    "access:services",
    "access:servers",
    "read:roles",
    "read:metrics",
    "shares",
]


class _Unset:
    """Marker for "leave this field alone" in :meth:`Hub.set_times`."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()

TimeValue = datetime | str | None


class HubError(RuntimeError):
    """Base class of the harness's errors."""


class HubStartError(HubError):
    """The Hub did not start; the message includes the tail of its log."""


class HubAPIError(HubError):
    """An unexpected answer from the Hub's REST API."""

    def __init__(self, message: str, response: httpx.Response | None = None) -> None:
        super().__init__(message)
        self.response = response
        self.status_code = response.status_code if response is not None else None


# --------------------------------------------------------------------------------------
# locating executables, ports, processes
# --------------------------------------------------------------------------------------


def find_python() -> str:
    """The Python that runs the Hub: the project's ``.venv``, else the current one."""
    venv_python = REPO_ROOT / ".venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def find_configurable_http_proxy() -> str:
    """``configurable-http-proxy`` from PATH, else from ``.tools/node`` of the repository."""
    found = shutil.which("configurable-http-proxy")
    if found:
        return found
    local = REPO_ROOT / ".tools" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
    if local.exists():
        return str(local)
    raise HubStartError(
        f"configurable-http-proxy not found on PATH nor at {local}; run scripts/setup to install it"
    )


def _free_ports(count: int) -> list[int]:
    """Distinct currently free TCP ports on 127.0.0.1."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def isoformat(value: datetime | str | None) -> str | None:
    """Render a datetime as the Hub does (UTC, ``Z`` suffix); strings pass through.

    Naive datetimes are taken to be UTC.
    """
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value.isoformat() + "Z"


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, starttime) of a process from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = data[data.rfind(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def _descendants(root: int) -> list[tuple[int, int]]:
    """(pid, starttime) of every live descendant of ``root``."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _proc_stat(int(entry))
        if stat is None:
            continue
        children.setdefault(stat[1], []).append((int(entry), stat[2]))
    result: list[tuple[int, int]] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            result.append(child)
            todo.append(child[0])
    return result


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    return _is_alive(pid, None)


def _is_alive(pid: int, starttime: int | None) -> bool:
    """Whether ``pid`` is still the same (non-zombie) process."""
    stat = _proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    return starttime is None or stat[2] == starttime


def _kill_leftovers(procs: Iterable[tuple[int, int | None]], grace: float = 3.0) -> list[int]:
    """SIGTERM then SIGKILL processes (identified by pid+starttime) still alive.

    Returns the pids that had to be signalled.
    """
    alive = [(pid, st) for pid, st in procs if _is_alive(pid, st)]
    for pid, _ in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    delay = 0.01
    while any(_is_alive(pid, st) for pid, st in alive) and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    for pid, st in alive:
        if _is_alive(pid, st):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return [pid for pid, _ in alive]


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the Hub if the process that started it dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _tail(path: Path, max_bytes: int = 6000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return f.read().decode(errors="replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ports:
    public: int
    api: int
    hub: int


def _render_config(
    workdir: Path,
    ports: _Ports,
    *,
    admin_user: str,
    admin_token: str,
    spawner: str,
    start_delay: float,
    stop_delay: float,
    slow_spawn_timeout: float,
    slow_stop_timeout: float,
    log_level: str,
    extra_config: str,
    fast_startup: bool,
    fast_db: bool,
    activity_interval: int | None = None,
) -> str:
    chp = find_configurable_http_proxy()
    lines = [
        "# Generated by tests/support/jhub.py -- do not edit.",
        "import sys",
        f"sys.path.insert(0, {str(REPO_ROOT)!r})",
        "from tests.support import hubext",
        "c = get_config()  # noqa: F821",
        f"c.JupyterHub.bind_url = 'http://127.0.0.1:{ports.public}'",
        "c.JupyterHub.hub_ip = '127.0.0.1'",
        f"c.JupyterHub.hub_port = {ports.hub}",
        f"c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{ports.api}'",
        f"c.ConfigurableHTTPProxy.command = [{chp!r}]",
        f"c.ConfigurableHTTPProxy.pid_file = {str(workdir / PROXY_PID_NAME)!r}",
        f"c.JupyterHub.pid_file = {str(workdir / 'jupyterhub.pid')!r}",
        f"c.JupyterHub.db_url = {'sqlite:///' + str(workdir / 'jupyterhub.sqlite')!r}",
        f"c.JupyterHub.cookie_secret_file = {str(workdir / 'jupyterhub_cookie_secret')!r}",
        f"c.JupyterHub.log_level = {log_level!r}",
        # API-only: tokens, no logins.
        "c.JupyterHub.authenticator_class = 'null'",
        "c.Authenticator.allow_all = True",
        f"c.Authenticator.admin_users = {{{admin_user!r}}}",
        f"c.JupyterHub.services = [{{'name': {SERVICE_NAME!r}, 'api_token': {admin_token!r}}}]",
        # The admin token is random: hash it with 1 round like generated tokens, not
        # 16384 (which costs the Hub CPU on every request made with it).
        "c.JupyterHub.trust_user_provided_tokens = True",
        "c.JupyterHub.load_roles = [{",
        "    'name': 'harness-admin',",
        "    'description': 'test harness: same scopes as the admin role',",
        f"    'scopes': {_ADMIN_SCOPES!r},",
        f"    'services': [{SERVICE_NAME!r}],",
        "}]",
        "c.JupyterHub.extra_handlers = hubext.handlers()",
        # Scale: no limits, named servers, no background activity sync that would
        # overwrite backdated last_activity (0 disables the periodic proxy poll).
        "c.JupyterHub.allow_named_servers = True",
        "c.JupyterHub.named_server_limit_per_user = 0",
        "c.JupyterHub.concurrent_spawn_limit = 0",
        "c.JupyterHub.active_server_limit = 0",
        "c.JupyterHub.last_activity_interval = 0",
        "c.JupyterHub.tornado_settings = {",
        f"    'slow_spawn_timeout': {slow_spawn_timeout!r},",
        f"    'slow_stop_timeout': {slow_stop_timeout!r},",
        "}",
    ]
    if fast_db:
        # A throwaway database: don't fsync on every commit (~2x faster spawns/user
        # creation on a disk-backed /tmp; the Hub's CPU work is unchanged).
        lines += [
            "from sqlalchemy import event as _sa_event",
            "from sqlalchemy.engine import Engine as _SAEngine",
            "@_sa_event.listens_for(_SAEngine, 'connect')",
            "def _harness_sqlite_no_fsync(dbapi_connection, _record):",
            "    if type(dbapi_connection).__module__.startswith('sqlite3'):",
            "        cursor = dbapi_connection.cursor()",
            "        cursor.execute('PRAGMA synchronous=OFF')",
            "        cursor.close()",
        ]
    if spawner == "fake":
        lines += [
            "c.JupyterHub.spawner_class = 'tests.support.jhub_spawner.FakeSpawner'",
            f"c.FakeSpawner.start_delay = {float(start_delay)!r}",
            f"c.FakeSpawner.stop_delay = {float(stop_delay)!r}",
            "c.Spawner.start_timeout = 24 * 3600",
            "c.Spawner.http_timeout = 600",
            # The fake servers vanish with the Hub; don't wait for stop_delay at shutdown.
            "c.JupyterHub.cleanup_servers = False",
        ]
    elif spawner == "local":
        venv_bin = Path(find_python()).parent
        if fast_startup:
            singleuser_cmd = [find_python(), *_fast_boot("jupyterhub.singleuser")]
        else:
            singleuser_cmd = [str(venv_bin / "jupyterhub-singleuser")]
        args = ["--allow-root"] if os.geteuid() == 0 else []
        (workdir / "home").mkdir(exist_ok=True)
        (workdir / "notebooks").mkdir(exist_ok=True)
        lines += [
            "c.JupyterHub.spawner_class = 'jupyterhub.spawner.SimpleLocalProcessSpawner'",
            f"c.SimpleLocalProcessSpawner.home_dir_template = "
            f"{str(workdir / 'home' / '{username}')!r}",
            f"c.Spawner.cmd = {singleuser_cmd!r}",
            f"c.Spawner.args = {args!r}",
            f"c.Spawner.notebook_dir = {str(workdir / 'notebooks')!r}",
            "c.Spawner.default_url = '/api'",
            "c.Spawner.start_timeout = 120",
            "c.Spawner.http_timeout = 120",
            "c.JupyterHub.cleanup_servers = True",
            # user_options {"activity_interval": N} -> JUPYTERHUB_ACTIVITY_INTERVAL=N
            "from tests.support.jhub_spawner import apply_local_user_options",
            "c.Spawner.apply_user_options = apply_local_user_options",
        ]
        if activity_interval is not None:
            environment = {"JUPYTERHUB_ACTIVITY_INTERVAL": str(int(activity_interval))}
            lines.append(f"c.Spawner.environment = {environment!r}")
    else:
        lines.append(f"c.JupyterHub.spawner_class = {spawner!r}")
    if extra_config:
        lines += ["", "# extra_config", extra_config]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# the Hub handle
# --------------------------------------------------------------------------------------

_RUNNING_HUBS: set[Hub] = set()


@atexit.register
def _kill_forgotten_hubs() -> None:  # pragma: no cover - only on abnormal exits
    for hub in list(_RUNNING_HUBS):
        hub.shutdown_sync()


@dataclass(eq=False)
class Hub:
    """A running JupyterHub and async helpers to drive its REST API.

    Attributes are set by :func:`launch_hub`; do not construct directly.
    """

    workdir: Path
    public_url: str
    api_url: str
    admin_token: str
    admin_user: str
    spawner: str
    log_path: Path
    process: subprocess.Popen[bytes]
    proxy_pid: int | None = None
    version: str = ""
    startup_seconds: float = 0.0
    #: pids killed at shutdown because they outlived the Hub (should stay empty).
    orphans_killed: list[int] = field(default_factory=list)
    request_timeout: float = 120.0
    max_connections: int = 64
    _proxy_starttime: int | None = None
    _client: httpx.AsyncClient | None = None
    _client_loop: asyncio.AbstractEventLoop | None = None
    _token_ids: list[str] = field(default_factory=list)
    _shutdown_lock: threading.Lock = field(default_factory=threading.Lock)

    # ---- process -------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """pid of the Hub process (``python -m jupyterhub``)."""
        return self.process.pid

    @property
    def running(self) -> bool:
        """Whether the Hub process is still alive."""
        return self.process.poll() is None

    def log_tail(self, max_bytes: int = 6000) -> str:
        """The last ``max_bytes`` of the Hub's (and proxy's) log."""
        return _tail(self.log_path, max_bytes)

    async def shutdown(self, timeout: float = 20.0) -> None:
        """Stop the Hub (SIGTERM, then SIGKILL after ``timeout``) and anything it left behind.

        Idempotent.  After it returns, neither the Hub nor the proxy nor any single-user
        server started by this Hub is running (see :attr:`orphans_killed`).
        """
        await self._close_client()
        await asyncio.to_thread(self.shutdown_sync, timeout)

    def shutdown_sync(self, timeout: float = 20.0) -> None:
        """Blocking version of :meth:`shutdown` (used at interpreter exit)."""
        with self._shutdown_lock:
            _RUNNING_HUBS.discard(self)
            proc = self.process
            tracked: list[tuple[int, int | None]] = []
            if self.proxy_pid is not None:
                tracked.append((self.proxy_pid, self._proxy_starttime))
            if proc.poll() is None:
                tracked.extend(_descendants(proc.pid))
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    tracked.extend(_descendants(proc.pid))
                    proc.kill()
                    proc.wait()
            self.orphans_killed.extend(_kill_leftovers(dict(tracked).items()))

    # ---- HTTP plumbing ---------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        """The admin client for the running event loop (one per loop)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop or self._client.is_closed:
            self._client = httpx.AsyncClient(
                headers={"Authorization": f"token {self.admin_token}"},
                timeout=httpx.Timeout(self.request_timeout, connect=10.0, pool=None),
                limits=httpx.Limits(
                    max_connections=self.max_connections,
                    max_keepalive_connections=self.max_connections,
                ),
            )
            self._client_loop = loop
        return self._client

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            same_loop = self._client_loop is asyncio.get_running_loop()
        except RuntimeError:
            same_loop = False
        if same_loop:
            await client.aclose()

    def url(self, path: str) -> str:
        """Absolute URL of an API path such as ``/users`` (already quoted)."""
        return self.api_url + "/" + path.lstrip("/")

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        expected: Sequence[int] | None = (200,),
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Call the Hub API (``path`` relative to :attr:`api_url`, already URL-quoted).

        Uses the admin token unless ``token`` is given.  Raises :class:`HubAPIError` if
        the status is not in ``expected`` (``None`` accepts anything).
        """
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"token {token}"
        content = None
        if json_body is not None:
            content = json.dumps(json_body).encode()
            hdrs["Content-Type"] = "application/json"
        resp = await self._http().request(
            method, self.url(path), content=content, params=params, headers=hdrs
        )
        if expected is not None and resp.status_code not in expected:
            raise HubAPIError(
                f"{method} {path} -> {resp.status_code} (expected {list(expected)}): "
                f"{resp.text[:2000]}",
                resp,
            )
        return resp

    @staticmethod
    def _user_path(user: str) -> str:
        return f"/users/{quote(user, safe='')}"

    @classmethod
    def _server_path(cls, user: str, server: str) -> str:
        if server == "":
            return f"{cls._user_path(user)}/server"
        return f"{cls._user_path(user)}/servers/{quote(server, safe='')}"

    async def poll_until(
        self,
        check: Callable[[], Awaitable[bool] | bool],
        what: str,
        timeout: float = 60.0,
    ) -> None:
        """Call (and await, if needed) ``check()`` at short growing intervals until true.

        Raises :class:`HubError` (with the log tail) on timeout or if the Hub exits.
        """
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            if not self.running:
                raise HubError(f"Hub exited while waiting for {what}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise HubError(f"timed out after {timeout}s waiting for {what}\n{self.log_tail()}")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    # ---- tokens, users, groups ---------------------------------------------------------

    async def token(
        self, scopes: Sequence[str], *, note: str = "harness", expires_in: int | None = None
    ) -> str:
        """Create an API token with exactly ``scopes`` (owned by the admin user)."""
        body: dict[str, Any] = {"scopes": list(scopes), "note": note}
        if expires_in is not None:
            body["expires_in"] = expires_in
        resp = await self.request(
            "POST", f"{self._user_path(self.admin_user)}/tokens", json_body=body, expected=(201,)
        )
        model = resp.json()
        self._token_ids.append(model["id"])
        return model["token"]

    async def create_users(
        self, names: Iterable[str], admin: bool = False, *, exist_ok: bool = True
    ) -> list[str]:
        """Create users in bulk (``POST /users``); returns the names the Hub created.

        Names are normalized by the Hub (lowercased).  Existing users are skipped when
        ``exist_ok`` (the Hub answers 409 only if *all* of a batch exist).
        """
        names = list(names)
        created: list[str] = []
        for i in range(0, len(names), 1000):
            batch = names[i : i + 1000]
            resp = await self.request(
                "POST",
                "/users",
                json_body={"usernames": batch, "admin": admin},
                expected=(201, 409) if exist_ok else (201,),
            )
            if resp.status_code == 201:
                created.extend(u["name"] for u in resp.json())
        return created

    async def delete_user(self, name: str) -> None:
        """Delete a user (``DELETE /users/{name}``); its servers should be stopped first."""
        await self.request("DELETE", self._user_path(name), expected=(204,))

    async def create_group(self, name: str, users: Iterable[str] = ()) -> None:
        """Create group ``name`` with ``users`` (or add them if the group exists)."""
        users = list(users)
        path = f"/groups/{quote(name, safe='')}"
        resp = await self.request("POST", path, json_body={"users": users}, expected=(201, 409))
        if resp.status_code == 409 and users:
            await self.request("POST", f"{path}/users", json_body={"users": users})

    async def get_user(self, name: str) -> dict[str, Any]:
        """The user model (``GET /users/{name}``) as the admin sees it."""
        return (await self.request("GET", self._user_path(name))).json()

    async def paginate(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        page_size: int = 200,
    ) -> list[dict[str, Any]]:
        """All items of a paginated list endpoint (``/users``, ``/groups``, ...).

        Sends ``Accept: application/jupyterhub-pagination+json`` and follows
        ``_pagination.next`` (pages may be short, even empty, with a next page: the Hub
        applies ``?state=ready`` after ``limit``).
        """
        items: list[dict[str, Any]] = []
        offset = 0
        while True:
            resp = await self.request(
                "GET",
                path,
                params={**(params or {}), "offset": offset, "limit": page_size},
                token=token,
                headers={"Accept": PAGINATION_MEDIA_TYPE},
            )
            page = resp.json()
            items.extend(page["items"])
            nxt = page["_pagination"]["next"]
            if not nxt:
                return items
            offset = nxt["offset"]

    async def list_users(
        self, state: str | None = None, *, token: str | None = None
    ) -> list[dict[str, Any]]:
        """All user models, following pagination (``state``: active, ready, inactive)."""
        return await self.paginate("/users", {"state": state} if state else None, token=token)

    async def list_groups(self) -> list[dict[str, Any]]:
        """All group models."""
        return await self.paginate("/groups")

    # ---- servers -----------------------------------------------------------------------

    async def servers(self, state: str = "active") -> dict[tuple[str, str], dict[str, Any]]:
        """Server models of all users with a ``state`` (active/ready) server, by (user, name).

        With ``state="ready"`` the Hub lists users having *any* ready server, with all
        their active servers; filter on ``model["ready"]`` if needed.
        """
        return {
            (u["name"], name): model
            for u in await self.list_users(state)
            for name, model in (u.get("servers") or {}).items()
        }

    async def running_servers(self) -> set[tuple[str, str]]:
        """(user, server) of every *ready* server (``GET /users?state=ready``, paginated)."""
        return {key for key, model in (await self.servers("ready")).items() if model["ready"]}

    async def _start(self, user: str, server: str, user_options: Mapping[str, Any] | None) -> int:
        resp = await self.request(
            "POST",
            self._server_path(user, server),
            json_body=dict(user_options) if user_options else None,
            expected=(201, 202),
        )
        return resp.status_code

    async def _server_model(self, user: str, server: str) -> dict[str, Any] | None:
        model = await self.get_user(user)
        return (model.get("servers") or {}).get(server)

    async def wait_ready(self, user: str, server: str = "", timeout: float = 300.0) -> None:
        """Poll until the server is ready; raise if it stops existing (spawn failed)."""

        async def check() -> bool:
            model = await self._server_model(user, server)
            if model is None:
                raise HubAPIError(
                    f"server {user!r}/{server!r} is gone: spawn failed?\n{self.log_tail()}"
                )
            return bool(model["ready"])

        await self.poll_until(check, f"{user!r}/{server!r} to be ready", timeout)

    async def spawn(
        self,
        user: str,
        server: str = "",
        user_options: Mapping[str, Any] | None = None,
        wait: bool = True,
        timeout: float = 300.0,
    ) -> int:
        """Start a server (``POST /users/{user}/servers/{server}``, body = user_options).

        Returns the HTTP status (201 ready, 202 pending).  With ``wait`` it returns once
        the server is ready.  The user must exist.  JupyterHub 6 server names must be
        "safe slugs": lowercase ASCII letters, digits and single hyphens, starting with a
        letter, at most 30 characters.
        """
        status = await self._start(user, server, user_options)
        if wait and status == 202:
            await self.wait_ready(user, server, timeout)
        return status

    async def spawn_many(
        self,
        specs: Iterable[tuple[str, str] | tuple[str, str, Mapping[str, Any] | None]],
        *,
        concurrency: int = 32,
        wait: bool = True,
        timeout: float = 600.0,
    ) -> list[tuple[str, str]]:
        """Start many servers with at most ``concurrency`` requests in flight.

        ``specs`` are ``(user, server)`` or ``(user, server, user_options)``.  With
        ``wait``, returns once all are ready (polling the user list, not each user).
        """
        sem = asyncio.Semaphore(concurrency)
        pending: list[tuple[str, str]] = []

        async def one(spec: tuple[Any, ...]) -> None:
            user, server = spec[0], spec[1]
            options = spec[2] if len(spec) > 2 else None
            async with sem:
                if await self._start(user, server, options) == 202:
                    pending.append((user, server))

        specs = [tuple(s) for s in specs]
        keys = [(s[0], s[1]) for s in specs]
        await asyncio.gather(*(one(s) for s in specs))
        if wait and pending:
            waiting = set(pending)

            async def check() -> bool:
                models = await self.servers("active")
                for key in list(waiting):
                    model = models.get(key)
                    if model is None:
                        raise HubAPIError(f"server {key} is gone: spawn failed?\n{self.log_tail()}")
                    if model["ready"]:
                        waiting.discard(key)
                return not waiting

            await self.poll_until(check, f"{len(waiting)} servers to be ready", timeout)
        return keys

    async def stop(
        self,
        user: str,
        server: str = "",
        *,
        wait: bool = True,
        remove: bool = False,
        timeout: float = 300.0,
    ) -> int:
        """Stop a server (``DELETE``); returns 204 (stopped) or 202 (stop pending).

        With ``wait``, a 202 is followed by polling until the server is no longer active.
        ``remove`` also deletes a named server.  Note the Hub holds the DELETE for up to
        ``slow_stop_timeout`` seconds before answering 202.
        """
        resp = await self.request(
            "DELETE",
            self._server_path(user, server),
            json_body={"remove": True} if remove else None,
            expected=(202, 204),
        )
        if wait and resp.status_code == 202:
            await self.wait_stopped(user, server, timeout)
        return resp.status_code

    async def wait_stopped(self, user: str, server: str = "", timeout: float = 300.0) -> None:
        """Poll until the server is no longer active (not listed in the user model)."""

        async def check() -> bool:
            return await self._server_model(user, server) is None

        await self.poll_until(check, f"{user!r}/{server!r} to stop", timeout)

    async def release_delays(self) -> None:
        """Make every pending FakeSpawner start/stop delay finish now."""
        await self.request("POST", "/_harness/release-delays", expected=(204,))

    # ---- activity ------------------------------------------------------------------------

    async def set_times(
        self,
        user: str,
        server: str = "",
        *,
        last_activity: TimeValue | _Unset = UNSET,
        started: TimeValue | _Unset = UNSET,
        user_last_activity: TimeValue | _Unset = UNSET,
    ) -> dict[str, Any]:
        """Set a server's ``last_activity``/``started`` and/or the user's ``last_activity``.

        Each value is a datetime (naive = UTC), an ISO 8601 string, ``None`` (NULL) or
        :data:`UNSET` (leave alone).  Unlike the activity API it can move time backwards.
        Returns the stored values as the API renders them.
        """
        update: dict[str, Any] = {"user": user}
        if last_activity is not UNSET or started is not UNSET:
            update["server"] = server
        for key, value in (
            ("last_activity", last_activity),
            ("started", started),
            ("user_last_activity", user_last_activity),
        ):
            if value is not UNSET:
                update[key] = isoformat(value)  # type: ignore[arg-type]
        return (await self.set_times_bulk([update]))[0]

    async def set_times_bulk(
        self, updates: Iterable[Mapping[str, Any]], *, chunk: int = 2000
    ) -> list[dict[str, Any]]:
        """Apply many ``{user, server, last_activity, started, user_last_activity}`` updates.

        Absent keys are left alone; datetimes are converted to ISO strings.  Sent in
        requests of ``chunk`` updates, each applied atomically by the Hub extension.
        """
        items = [
            {k: (isoformat(v) if isinstance(v, datetime) else v) for k, v in u.items()}
            for u in updates
        ]
        result: list[dict[str, Any]] = []
        for i in range(0, len(items), chunk):
            resp = await self.request(
                "POST", "/_harness/times", json_body={"updates": items[i : i + chunk]}
            )
            result.extend(resp.json()["updated"])
        return result

    async def post_activity(
        self,
        user: str,
        server: str = "",
        last_activity: TimeValue = None,
        *,
        include_user: bool = True,
        token: str | None = None,
    ) -> None:
        """Report activity like a single-user server does (``POST /users/{user}/activity``).

        ``last_activity`` defaults to now.  The Hub only moves timestamps forward and
        rejects those more than an hour in the future.  Needs ``users:activity`` on that
        user (the admin token has it).
        """
        stamp = isoformat(last_activity or datetime.now(timezone.utc))
        body: dict[str, Any] = {"servers": {server: {"last_activity": stamp}}}
        if include_user:
            body["last_activity"] = stamp
        await self.request("POST", f"{self._user_path(user)}/activity", json_body=body, token=token)

    # ---- cleanup -------------------------------------------------------------------------

    async def reset(self, timeout: float = 120.0) -> None:
        """Stop every server, delete non-admin users, groups and harness-made tokens.

        For reusing one Hub across tests (see the ``shared_hub`` fixture).
        """
        await self.release_delays()
        active = await self.servers("active")
        sem = asyncio.Semaphore(32)

        async def stop_one(key: tuple[str, str]) -> None:
            async with sem:
                with contextlib.suppress(HubAPIError):
                    await self.stop(*key, wait=False)

        await asyncio.gather(*(stop_one(k) for k in active))

        async def none_active() -> bool:
            await self.release_delays()
            return not await self.servers("active")

        await self.poll_until(none_active, "all servers to stop", timeout)
        users = [u for u in await self.list_users() if not u.get("admin")]

        async def delete_one(name: str) -> None:
            async with sem:
                await self.delete_user(name)

        await asyncio.gather(*(delete_one(u["name"]) for u in users))
        for group in await self.list_groups():
            await self.request(
                "DELETE", f"/groups/{quote(group['name'], safe='')}", expected=(204,)
            )
        token_ids, self._token_ids = self._token_ids, []
        for token_id in token_ids:
            await self.request(
                "DELETE",
                f"{self._user_path(self.admin_user)}/tokens/{token_id}",
                expected=(204, 404),
            )


# --------------------------------------------------------------------------------------
# starting
# --------------------------------------------------------------------------------------


async def _wait_until_up(hub: Hub, timeout: float) -> None:
    """Poll the public API URL until the Hub answers, then check the admin token."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    async with httpx.AsyncClient(timeout=5.0) as client:
        while True:
            if not hub.running:
                raise HubStartError(
                    f"JupyterHub exited with code {hub.process.returncode} during startup;"
                    f" log {hub.log_path}:\n{hub.log_tail()}"
                )
            try:
                resp = await client.get(hub.api_url + "/")
                if resp.status_code == 200 and "version" in resp.json():
                    hub.version = resp.json()["version"]
                    break
            except (httpx.TransportError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise HubStartError(
                    f"JupyterHub did not answer at {hub.api_url} within {timeout}s;"
                    f" log {hub.log_path}:\n{hub.log_tail()}"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.05)
        resp = await client.get(
            hub.api_url + "/user", headers={"Authorization": f"token {hub.admin_token}"}
        )
        if resp.status_code != 200:
            raise HubStartError(
                f"admin token rejected ({resp.status_code} {resp.text});\n{hub.log_tail()}"
            )


def _read_proxy_pid(workdir: Path) -> tuple[int | None, int | None]:
    try:
        pid = int((workdir / PROXY_PID_NAME).read_text().strip())
    except (OSError, ValueError):
        return None, None
    stat = _proc_stat(pid)
    return pid, (stat[2] if stat else None)


def _prepare_workdir(workdir: str | os.PathLike[str]) -> Path:
    path = Path(workdir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _start_process(
    workdir: Path, config: str, env: dict[str, str], attempt: int, fast_startup: bool
) -> tuple[subprocess.Popen[bytes], int]:
    """Write the config and start the Hub, its output appended to the log.

    Returns the process and the log's size before it started.
    """
    (workdir / CONFIG_NAME).write_text(config)
    boot = _fast_boot("jupyterhub") if fast_startup else ["-m", "jupyterhub"]
    in_main_thread = threading.current_thread() is threading.main_thread()
    with open(workdir / LOG_NAME, "ab") as log:
        offset = log.tell()
        log.write(f"\n===== harness: starting JupyterHub (attempt {attempt}) =====\n".encode())
        log.flush()
        return subprocess.Popen(
            [find_python(), *boot, "-f", str(workdir / CONFIG_NAME)],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # pdeathsig is tied to the forking *thread*: only safe from the main thread.
            preexec_fn=_set_pdeathsig if in_main_thread else None,
        ), offset


def _port_clash(log_path: Path, offset: int) -> bool:
    """Whether the log written since ``offset`` shows a port already in use."""
    with open(log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace").lower()
    return "address already in use" in text or "eaddrinuse" in text


async def launch_hub(
    workdir: str | os.PathLike[str],
    *,
    spawner: str = "fake",
    stop_delay: float = 0.0,
    start_delay: float = 0.0,
    extra_config: str = "",
    slow_spawn_timeout: float = 2.0,
    slow_stop_timeout: float = 2.0,
    log_level: str = "INFO",
    admin_user: str = "admin",
    startup_timeout: float = 60.0,
    attempts: int = 3,
    fast_startup: bool = True,
    fast_db: bool = True,
    activity_interval: int | None = None,
) -> Hub:
    """Start JupyterHub + configurable-http-proxy in ``workdir``; return a ready :class:`Hub`.

    ``spawner``: ``"fake"`` (:class:`~tests.support.jhub_spawner.FakeSpawner`; its
    ``start_delay``/``stop_delay`` are the given ones unless a spawn's user_options say
    otherwise), ``"local"`` (real ``jupyterhub-singleuser`` processes), or any
    ``spawner_class`` string.  ``extra_config`` is appended to the generated
    ``jupyterhub_config.py`` (``c`` is in scope).  ``slow_*_timeout`` are how long the Hub
    holds a spawn/stop request before answering 202 (JupyterHub's default is 10s).

    ``fast_startup`` runs ``python -c <runpy of the jupyterhub module>``, which skips one
    slow, unneeded import (see ``_fast_boot``; also used for single-user servers), instead
    of plain ``python -m jupyterhub``.

    ``fast_db`` turns off sqlite's fsync (``PRAGMA synchronous=OFF``) for the throwaway
    database.

    ``activity_interval`` (``spawner="local"`` only) sets ``JUPYTERHUB_ACTIVITY_INTERVAL``
    of every single-user server: seconds between its reports of its own last activity to
    the Hub (0 = never); None keeps JupyterHub's default, 300.  A spawn's
    ``user_options={"activity_interval": N}`` overrides it for that server (see
    :func:`tests.support.jhub_spawner.apply_local_user_options`).

    Retries with fresh ports if a port was taken meanwhile.  Call :meth:`Hub.shutdown`.
    """
    if activity_interval is not None and spawner != "local":
        raise ValueError("activity_interval applies to real servers only (spawner='local')")
    workdir = _prepare_workdir(workdir)
    log_path = workdir / LOG_NAME
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JUPYTERHUB_", "JPY_")) and k != "CONFIGPROXY_AUTH_TOKEN"
    }
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    admin_token = secrets.token_hex(32)

    for attempt in range(1, attempts + 1):
        public, api, hub_port = _free_ports(3)
        config = _render_config(
            workdir,
            _Ports(public, api, hub_port),
            admin_user=admin_user,
            admin_token=admin_token,
            spawner=spawner,
            start_delay=start_delay,
            stop_delay=stop_delay,
            slow_spawn_timeout=slow_spawn_timeout,
            slow_stop_timeout=slow_stop_timeout,
            log_level=log_level,
            extra_config=extra_config,
            fast_startup=fast_startup,
            fast_db=fast_db,
            activity_interval=activity_interval,
        )
        started = time.monotonic()
        process, log_offset = _start_process(workdir, config, env, attempt, fast_startup)
        hub = Hub(
            workdir=workdir,
            public_url=f"http://127.0.0.1:{public}",
            api_url=f"http://127.0.0.1:{public}/hub/api",
            admin_token=admin_token,
            admin_user=admin_user,
            spawner=spawner,
            log_path=log_path,
            process=process,
        )
        _RUNNING_HUBS.add(hub)
        try:
            await _wait_until_up(hub, startup_timeout)
        except BaseException as e:
            await hub.shutdown()
            retry = (
                isinstance(e, HubStartError)
                and attempt < attempts
                and _port_clash(log_path, log_offset)
            )
            if not retry:
                raise
            continue
        hub.startup_seconds = time.monotonic() - started
        hub.proxy_pid, hub._proxy_starttime = _read_proxy_pid(workdir)
        return hub
    raise AssertionError("unreachable")  # pragma: no cover


async def stop_hub(hub: Hub, timeout: float = 20.0) -> None:
    """Counterpart of :func:`launch_hub`: same as ``await hub.shutdown(timeout)``."""
    await hub.shutdown(timeout)


@contextlib.asynccontextmanager
async def start_hub(
    workdir: str | os.PathLike[str],
    *,
    spawner: str = "fake",
    stop_delay: float = 0.0,
    start_delay: float = 0.0,
    extra_config: str = "",
    **kwargs: Any,
) -> AsyncIterator[Hub]:
    """``async with start_hub(workdir) as hub:`` -- :func:`launch_hub` + :meth:`Hub.shutdown`."""
    hub = await launch_hub(
        workdir,
        spawner=spawner,
        stop_delay=stop_delay,
        start_delay=start_delay,
        extra_config=extra_config,
        **kwargs,
    )
    try:
        yield hub
    finally:
        await hub.shutdown()
