"""What a policy remembers from one sweep to the next (kept by the operator's controller and
by the ``hubcull sweep`` loop; lost on restart, which only costs a probe or a warning more)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..hub.model import Server
from ..rules.signals import KernelActivity, ServerKey
from ..rules.warn import Warned

_ServerRun = tuple[str, str, str]  # (user, server, started): a restarted server is a new run


def _run(server: Server) -> _ServerRun:
    return (server.user, server.name, server.started.isoformat() if server.started else "")


@dataclass
class KernelMemory:
    """The newest kernel or terminal activity seen on each running server.

    Kernel activity only moves forward, so a server whose kernels were last active at ``t``
    cannot be idle by them before ``t + idleTimeout``: it need not be probed again until then.
    """

    _active: dict[_ServerRun, datetime] = field(default_factory=dict)

    def recall(self, server: Server, now: datetime, idle_timeout: float) -> KernelActivity | None:
        """The remembered activity if the server cannot be idle by its kernels yet."""
        last = self._active.get(_run(server))
        if last is None or now >= last + timedelta(seconds=idle_timeout):
            return None
        return KernelActivity(seen_at=None, last_activity=last)

    def note(self, server: Server, activity: KernelActivity) -> None:
        """Remember what a probe of ``server`` saw."""
        run = _run(server)
        if activity.last_activity is None:
            self._active.pop(run, None)
        else:
            known = self._active.get(run)
            self._active[run] = (
                max(known, activity.last_activity) if known else activity.last_activity
            )

    def keep_only(self, running: Iterable[Server]) -> None:
        """Forget servers that are no longer running."""
        keep = {_run(server) for server in running}
        for run in set(self._active) - keep:
            del self._active[run]


@dataclass
class WarnMemory:
    """The warnings (``spec.warn``) that still apply, as the last sweep left them.

    Lost on restart: a server whose warning is forgotten is warned again and waits
    ``warn.before`` from then, so a restart can delay a stop but never hasten it.
    """

    _warned: dict[ServerKey, Warned] = field(default_factory=dict)

    def recall(self) -> Mapping[ServerKey, Warned]:
        """The warnings to decide with."""
        return dict(self._warned)

    def keep(self, warned: Mapping[ServerKey, Warned]) -> None:
        """Remember exactly ``warned`` (a sweep's decision); everything else is forgotten."""
        self._warned = dict(warned)


@dataclass
class SweepMemory:
    """Everything one policy keeps between sweeps."""

    kernels: KernelMemory = field(default_factory=KernelMemory)
    warnings: WarnMemory = field(default_factory=WarnMemory)
