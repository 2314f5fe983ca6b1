"""Running a real kopf operator against the emulator: in-process (a thread) or as a subprocess.

In-process (:func:`run_operator`): ``kopf.operator()`` runs unmodified with
``asyncio.run()`` in a background thread with its own event loop, as kopf's own
``kopf.testing.KopfRunner`` does for ``kopf run``. Not in the test's event loop, because at
exit ``kopf.run_tasks()`` treats every task created in its loop after it started as its own:
it waits up to 5 seconds for them and then cancels them. In the test's loop that would be the
emulator's request handlers, the test's own tasks, and the tasks of a second operator.

* Namespaced runs set ``settings.scanning.disabled = True`` (no namespace/CRD watching; the
  namespaces are taken as given); cluster-wide runs keep scanning on.
* ``settings.process.ultimate_exiting_timeout = None``: kopf would otherwise schedule a
  SIGKILL of its thread, which means of the whole pytest process, when it stops for any
  reason other than the stop flag (e.g. a crash).
* Standalone unless ``peering=`` is given (the emulator serves kopf's peering CRDs, and
  without ``standalone=True`` kopf would auto-detect and join the "default" peering).
* Stopping sets kopf's ``stop_flag``; crashes and errors logged in the operator's thread
  (kopf logs handler failures at ERROR) fail the test, also while waiting in
  :meth:`tests.support.kube.Kube.wait_for`.
* Login: kopf runs the registry's ``@kopf.on.login`` handlers. ``kopf.get_default_registry()``
  has kopf's default logins (``kopf.login_via_client`` when ``kubernetes`` is installed); a
  bare ``kopf.OperatorRegistry()`` has none, so register one, e.g.
  ``kopf.on.login(registry=registry)(kopf.login_with_kubeconfig)``. Both read ``KUBECONFIG``,
  which the ``kube`` fixture points at the emulator.

As a subprocess (:func:`run_operator_process`): any command, e.g. :func:`kopf_run_command`
(``python -m kopf run ...``) or a future ``hubcull run``, with ``KUBECONFIG`` set to the
emulator's kubeconfig and stdout+stderr captured to a file; stopped with SIGTERM (or
:meth:`SubprocessOperator.kill` for failover tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any

import kopf

if TYPE_CHECKING:
    from tests.support.kube import Kube

SettingsHook = Callable[[kopf.OperatorSettings], None]
OperatorTarget = kopf.OperatorRegistry | ModuleType | str | None


class OperatorCrashedError(AssertionError):
    """An operator under test exited by itself, failed, logged errors, or did not stop."""


def resolve_registry(target: OperatorTarget) -> kopf.OperatorRegistry:
    """The registry to run: given; a module's ``registry`` attribute; or kopf's default one.

    Modules (or module names, imported here) that use the plain ``@kopf.on...`` decorators
    register into ``kopf.get_default_registry()``, once per process.
    """
    if isinstance(target, kopf.OperatorRegistry):
        return target
    if target is None:
        return kopf.get_default_registry()
    module = importlib.import_module(target) if isinstance(target, str) else target
    registry = getattr(module, "registry", None)
    return registry if isinstance(registry, kopf.OperatorRegistry) else kopf.get_default_registry()


def has_login_handlers(registry: kopf.OperatorRegistry) -> bool:
    """Whether kopf will find a login handler in the registry (best effort: private API)."""
    try:
        from kopf._core.intents.causes import Activity

        return bool(registry._activities.get_handlers(activity=Activity.AUTHENTICATION))
    except (ImportError, AttributeError):  # pragma: no cover - kopf internals moved
        return True


class _ThreadLogHandler(logging.Handler):
    """Collects the log records emitted in one thread (the operator's event loop)."""

    def __init__(self) -> None:
        super().__init__(level=logging.NOTSET)
        self.thread_id: int | None = None
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread_id:
            self.records.append(record)


class InProcessOperator:
    """A kopf operator running in a background thread with its own event loop."""

    def __init__(
        self,
        registry: kopf.OperatorRegistry,
        *,
        namespaces: Sequence[str] = (),
        clusterwide: bool = False,
        settings_hook: SettingsHook | None = None,
        peering: str | None = None,
        priority: int = 0,
        memo: Any = None,
        name: str = "operator",
        allow_errors: bool = False,
    ) -> None:
        self.registry = registry
        self.namespaces = list(namespaces)
        self.clusterwide = clusterwide
        self.settings_hook = settings_hook
        self.peering = peering
        self.priority = priority
        self.memo = memo
        self.name = name
        self.allow_errors = allow_errors
        self.settings: kopf.OperatorSettings | None = None  # as passed to kopf, once started
        self.error: BaseException | None = None  # what kopf.operator() raised, if anything
        self._logs = _ThreadLogHandler()
        self._thread = threading.Thread(target=self._run, name=f"kopf-{name}", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_flag: asyncio.Event | None = None
        self._started = threading.Event()  # the loop runs; the stop flag exists
        self._ready = threading.Event()  # kopf's ready_flag: the startup handlers are done
        self._exited = threading.Event()
        self._stop_requested = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    @property
    def ready(self) -> bool:
        """Whether kopf has finished its startup handlers (watching may still be starting)."""
        return self._ready.is_set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._exited.is_set()

    @property
    def records(self) -> list[logging.LogRecord]:
        """Log records emitted in the operator's thread (as far as logger levels let through)."""
        return list(self._logs.records)

    @property
    def error_records(self) -> list[logging.LogRecord]:
        return [record for record in self._logs.records if record.levelno >= logging.ERROR]

    def start(self) -> None:
        logging.getLogger().addHandler(self._logs)
        self._thread.start()

    def _run(self) -> None:
        self._logs.thread_id = threading.get_ident()
        try:
            asyncio.run(self._main())
        except BaseException as e:  # reported to the test by check() and stop()
            self.error = e
        finally:
            self._exited.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_flag = asyncio.Event()
        self._started.set()
        settings = kopf.OperatorSettings()
        settings.process.ultimate_exiting_timeout = None
        settings.scanning.disabled = not self.clusterwide
        if self.settings_hook is not None:
            self.settings_hook(settings)
        self.settings = settings
        await kopf.operator(
            registry=self.registry,
            settings=settings,
            namespaces=self.namespaces,
            clusterwide=self.clusterwide,
            standalone=self.peering is None,
            peering_name=self.peering,
            priority=self.priority,
            memo=self.memo,
            stop_flag=self._stop_flag,
            ready_flag=self._ready,
        )

    def _describe_errors(self) -> str:
        lines = [f"{record.name}: {record.getMessage()}" for record in self.error_records]
        return "\n".join(lines)

    def check(self) -> None:
        """Raise :class:`OperatorCrashedError` if the operator has failed (see module doc)."""
        if self._exited.is_set() and not self._stop_requested:
            message = f"{self} exited unexpectedly: {self.error!r}"
            raise OperatorCrashedError(message) from self.error
        if self.error_records and not self.allow_errors:
            raise OperatorCrashedError(f"{self} logged errors:\n{self._describe_errors()}")

    async def stop(self, timeout: float = 10.0) -> None:
        """Set kopf's stop flag and wait for the thread to exit; raise if it failed."""
        self._stop_requested = True
        try:
            if not self._exited.is_set():
                await asyncio.to_thread(self._started.wait, timeout)
                loop, flag = self._loop, self._stop_flag
                if loop is not None and flag is not None:
                    with contextlib.suppress(RuntimeError):  # the loop has just closed
                        loop.call_soon_threadsafe(flag.set)
                await asyncio.to_thread(self._exited.wait, timeout)
        finally:
            logging.getLogger().removeHandler(self._logs)
        if not self._exited.is_set():
            raise OperatorCrashedError(f"{self} did not stop within {timeout}s")
        if self.error is not None:
            raise OperatorCrashedError(f"{self} failed: {self.error!r}") from self.error
        if self.error_records and not self.allow_errors:
            raise OperatorCrashedError(f"{self} logged errors:\n{self._describe_errors()}")


@contextlib.asynccontextmanager
async def run_operator(
    kube: Kube,
    target: OperatorTarget = None,
    *,
    namespaces: Sequence[str] = (),
    clusterwide: bool = False,
    settings_hook: SettingsHook | None = None,
    peering: str | None = None,
    priority: int = 0,
    memo: Any = None,
    name: str = "operator",
    startup_timeout: float = 10.0,
    stop_timeout: float = 10.0,
    allow_errors: bool = False,
    log_level: int | None = None,
) -> AsyncIterator[InProcessOperator]:
    """Run a kopf operator in a background thread for the duration of the block.

    ``target``: a :class:`kopf.OperatorRegistry`, a module (or its name) with handlers, or
    None for kopf's default registry. Pass ``namespaces`` or ``clusterwide=True``.
    ``peering``: a peering name to run with (its peering objects are created if missing)
    at ``priority``; standalone if None. ``settings_hook`` adjusts kopf's settings before
    the start. ``memo`` becomes kopf's operator-level memo (per-object memos are shallow
    copies of it). ``allow_errors``: do not fail on ERROR logs of the operator.
    ``log_level``: set the ``kopf`` logger's level meanwhile (e.g. to see INFO records
    in :attr:`InProcessOperator.records`).

    Yields once kopf's startup handlers are done; the watches start concurrently, so poll
    for effects (``kube.wait_for``) or for ``kube.emulator.watching(resource, namespace)``.
    """
    if not namespaces and not clusterwide:
        raise TypeError("pass namespaces=[...] or clusterwide=True")
    registry = resolve_registry(target)
    if not has_login_handlers(registry):
        raise TypeError(
            "the registry has no login handlers: add one, e.g. "
            "kopf.on.login(registry=registry)(kopf.login_with_kubeconfig)"
        )
    if peering is not None:
        for namespace in [None] if clusterwide else list(namespaces):
            await kube.ensure_peering(peering, namespace)

    kopf_logger = logging.getLogger("kopf")
    old_level = kopf_logger.level
    if log_level is not None:
        kopf_logger.setLevel(log_level)
    operator = InProcessOperator(
        registry,
        namespaces=[] if clusterwide else namespaces,
        clusterwide=clusterwide,
        settings_hook=settings_hook,
        peering=peering,
        priority=priority,
        memo=memo,
        name=name,
        allow_errors=allow_errors,
    )
    operator.start()
    try:
        async with _attached(kube, operator, stop_timeout):
            await kube.wait_for(
                lambda: operator.ready, timeout=startup_timeout, message=f"{operator} to start"
            )
            yield operator
    finally:
        if log_level is not None:
            kopf_logger.setLevel(old_level)


@contextlib.asynccontextmanager
async def _attached(
    kube: Kube, operator: InProcessOperator | SubprocessOperator, stop_timeout: float
) -> AsyncIterator[None]:
    """Register a started operator with ``kube`` (so that its waits fail if the operator
    crashes) and stop it on the way out; a crash found while stopping is added as a note to
    an error already on its way."""
    kube.operators.append(operator)
    try:
        yield
    except BaseException as e:
        kube.operators.remove(operator)
        try:
            await operator.stop(timeout=stop_timeout)
        except OperatorCrashedError as stop_error:
            if str(stop_error) != str(e):
                e.add_note(f"Also: {stop_error}")
        raise
    else:
        kube.operators.remove(operator)
        await operator.stop(timeout=stop_timeout)


# --- subprocesses -------------------------------------------------------------------------------


def kopf_run_command(
    *paths: str | os.PathLike[str],
    modules: Sequence[str] = (),
    namespaces: Sequence[str] = (),
    clusterwide: bool = False,
    peering: str | None = None,
    priority: int | None = None,
    verbose: bool = True,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The ``python -m kopf run ...`` command line; standalone unless ``peering`` is given."""
    command = [sys.executable, "-m", "kopf", "run"]
    command += ["--verbose"] if verbose else []
    command += [arg for namespace in namespaces for arg in ("--namespace", namespace)]
    command += ["--all-namespaces"] if clusterwide else []
    command += ["--standalone"] if peering is None else ["--peering", peering]
    command += ["--priority", str(priority)] if priority is not None else []
    command += [arg for module in modules for arg in ("-m", module)]
    command += list(extra_args)
    command += [os.fspath(path) for path in paths]
    return command


class SubprocessOperator:
    """An operator process with its stdout and stderr in :attr:`log_path`."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str],
        cwd: str | os.PathLike[str] | None = None,
        allowed_exit_codes: Sequence[int] = (0, -signal.SIGTERM),
    ) -> None:
        self.command = list(command)
        self.log_path = log_path
        self.env = dict(env)
        self.cwd = cwd
        self.allowed_exit_codes = tuple(allowed_exit_codes)
        self.process: asyncio.subprocess.Process | None = None
        self._log_file: IO[bytes] | None = None
        self._stop_requested = False

    def __repr__(self) -> str:
        pid = self.process.pid if self.process else None
        return f"<{type(self).__name__} pid={pid} {' '.join(self.command[2:4])!r}>"

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process else None

    def output(self) -> str:
        """Everything the process has written so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
        )

    def check(self) -> None:
        """Raise :class:`OperatorCrashedError` if the process exited by itself."""
        if self.returncode is not None and not self._stop_requested:
            raise OperatorCrashedError(
                f"{self} exited with {self.returncode}; its output ends with:\n{self._tail()}"
            )

    async def wait_for_output(self, text: str, timeout: float = 10.0) -> None:
        """Poll the captured output until it contains ``text``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while text not in self.output():
            self.check()
            if loop.time() >= deadline:
                raise AssertionError(f"{text!r} not in the output of {self}:\n{self._tail()}")
            await asyncio.sleep(0.05)

    async def kill(self) -> None:
        """SIGKILL the process (e.g. to test failover): no graceful shutdown, no cleanup."""
        self._stop_requested = True
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, wait; SIGKILL and raise if it does not exit in time or exits badly."""
        already_requested, self._stop_requested = self._stop_requested, True
        try:
            if self.process is None:
                return
            if self.process.returncode is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(self.process.wait(), timeout)
                except asyncio.TimeoutError:
                    self.process.kill()
                    await self.process.wait()
                    raise OperatorCrashedError(
                        f"{self} did not exit within {timeout}s of SIGTERM:\n{self._tail()}"
                    ) from None
            killed = already_requested and self.process.returncode == -signal.SIGKILL
            if self.process.returncode not in self.allowed_exit_codes and not killed:
                raise OperatorCrashedError(
                    f"{self} exited with {self.process.returncode}:\n{self._tail()}"
                )
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None


@contextlib.asynccontextmanager
async def run_operator_process(
    kube: Kube,
    command: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stop_timeout: float = 15.0,
    allowed_exit_codes: Sequence[int] = (0, -signal.SIGTERM),
) -> AsyncIterator[SubprocessOperator]:
    """Run an operator command as a subprocess with ``KUBECONFIG`` pointing to the emulator.

    The environment is this process's, minus in-cluster variables, plus ``KUBECONFIG``,
    ``PYTHONUNBUFFERED=1`` and ``env``. Output goes to ``log_path``. At exit: SIGTERM and
    a check of the exit code. An exit by itself meanwhile fails ``kube.wait_for``.
    For peering, create the peering objects first (``kube.ensure_peering``).
    """
    full_env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"}
    }
    full_env |= {"KUBECONFIG": str(kube.kubeconfig_path), "PYTHONUNBUFFERED": "1"}
    full_env |= dict(env or {})
    operator = SubprocessOperator(
        command, log_path=log_path, env=full_env, cwd=cwd, allowed_exit_codes=allowed_exit_codes
    )
    await operator.start()
    async with _attached(kube, operator, stop_timeout):
        yield operator
