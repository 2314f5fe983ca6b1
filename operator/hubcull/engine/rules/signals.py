"""What a sweep learns about servers besides the Hub's listing, gathered before deciding.

:func:`~hubcull.engine.rules.decisions.decide` stays pure: probes of the servers' kernels (and, with
``spec.usage``, Prometheus readings) happen first, and their results reach it as these values.
A server with no signal, or a failed probe, is judged by the Hub's ``last_activity`` alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

ServerKey = tuple[str, str]  # (user, server name); "" is the default server


@dataclass(frozen=True)
class KernelActivity:
    """What a server's Jupyter API said about its kernels and terminals.

    ``seen_at`` is the ``Date`` header of that server's answer (kernel times are compared with
    the server's own clock), or ``None`` for activity remembered from an earlier sweep.
    ``last_activity`` is the newest kernel or terminal activity (``None``: no kernel and no
    terminal). ``busy_silent_seconds`` is, of the busy kernels, the shortest time since one
    last said anything (``None``: no kernel is busy, or not known).
    """

    seen_at: datetime | None
    last_activity: datetime | None
    busy_silent_seconds: float | None = None
    kernels: int = 0
    terminals: int = 0


@dataclass(frozen=True)
class UsageReading:
    """What Prometheus said about a server's pod (``spec.usage``); ``None``: no reading.

    ``cpu_cores`` is the average CPU over ``usage.window`` and ``gpu_percent`` the highest GPU
    utilisation in it. ``gpu_idle_percent`` is the highest GPU utilisation over the whole
    ``idleTimeout``, set only when the pod's GPU series cover all of it (``cullIdleGPU``).
    """

    cpu_cores: float | None = None
    gpu_percent: float | None = None
    gpu_idle_percent: float | None = None


@dataclass(frozen=True)
class ServerSignals:
    """Everything known about one server besides the Hub's model of it."""

    kernels: KernelActivity | None = None
    usage: UsageReading | None = None


Signals = Mapping[ServerKey, ServerSignals]
