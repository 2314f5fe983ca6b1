"""What usage readings mean for a decision (``spec.usage``), as pure functions.

* **Working**: average CPU over ``window`` above ``busyCPU``, or GPU utilisation in
  ``window`` above ``busyGPU`` (each only when set above 0). Exactly the threshold is not
  working. A working server is kept from idleness and capacity culls, never from ``maxAge``.
* **Idle GPU** (``cullIdleGPU``): the GPU series cover the whole ``idleTimeout`` and never
  exceed ``busyGPU`` in it, and the server itself has been running that long (a restarted
  server keeps its pod name, so the series may hold a previous run).

No reading is no information: neither working nor idle.
"""

from __future__ import annotations

from ..durations import format_duration
from .policy import Policy, UsageSpec
from .signals import UsageReading


def _number(value: float, digits: int) -> str:
    return f"{round(value, digits):g}"


def usage_protection(usage: UsageSpec | None, reading: UsageReading | None) -> str | None:
    """Why a server is working (``GPU 87% in the last 10m``), or ``None``."""
    if usage is None or reading is None:
        return None
    window = format_duration(usage.window)
    gpu, cpu = reading.gpu_percent, reading.cpu_cores
    if usage.busy_gpu > 0 and gpu is not None and gpu > usage.busy_gpu:
        return f"GPU {_number(gpu, 1)}% in the last {window}"
    if usage.busy_cpu > 0 and cpu is not None and cpu > usage.busy_cpu:
        return f"CPU {_number(cpu, 2)} cores over the last {window}"
    return None


def gpu_idle(policy: Policy, reading: UsageReading | None, age: float | None) -> bool:
    """True when ``cullIdleGPU`` would stop the server: its GPUs stayed at or below
    ``busyGPU`` for the whole ``idleTimeout`` and it has been running at least that long."""
    usage = policy.usage
    if usage is None or not usage.cull_idle_gpu or policy.idle_timeout <= 0 or reading is None:
        return False
    idle = reading.gpu_idle_percent
    return (
        idle is not None
        and idle <= usage.busy_gpu
        and age is not None
        and age >= policy.idle_timeout
    )
