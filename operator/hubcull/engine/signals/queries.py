"""The PromQL a sweep sends for ``spec.usage``: at most three instant queries, each covering
every pod of the policy's namespace at once.

* ``cpu`` (with ``busyCPU``): the user's CPU template over ``window``.
* ``gpu`` (with ``busyGPU``): the user's GPU template over ``window``.
* ``gpu-idle`` (with ``cullIdleGPU``): the GPU template over ``idleTimeout``, and whether
  each of its series covers all of it, in one query::

      label_replace(G_T, "hubcull_part", "max", "", "")
      or
      label_replace(count_over_time((G_S)[R:S]) >= scalar(count_over_time(vector(1)[R:S])),
                    "hubcull_part", "covered", "", "")

  where ``G_T`` is the GPU template with ``{window}`` = ``idleTimeout``, ``G_S`` the same with
  ``{window}`` = ``S`` (the step, see :func:`coverage_step`) and ``R`` = ``idleTimeout + S``.
  ``max`` rows give the highest utilisation over ``idleTimeout``; ``covered`` rows name the
  series that had a sample in every step of the subquery (``vector(1)`` counts the steps,
  whatever the engine's alignment). Subquery steps are aligned to multiples of ``S``, so the
  first one lies between ``now - idleTimeout - S`` and ``now - idleTimeout``: a covered series
  is older than ``idleTimeout`` (and had no gap of a step), and one younger never culls. A
  ``max`` row without its ``covered`` row is unknown.

For the ``window`` readings no coverage is needed: a series younger than the window reads
low (``rate()`` divides by the whole window, ``max_over_time`` sees only part of it), never
high, so a reading above the threshold is work done within the window, and a reading at or
below it, young or not, changes nothing (the Hub decides, as without a reading).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..rules.policy import Policy

#: The coverage step: at least this long (GPU metrics must be scraped more often) ...
MIN_STEP_SECONDS = 60.0
#: ... and long enough that the subquery has at most this many steps.
MAX_STEPS = 60
#: The label the gpu-idle query adds to tell its two parts apart.
PART_LABEL = "hubcull_part"

Signal = Literal["cpu", "gpu", "gpu-idle"]


@dataclass(frozen=True)
class UsageQuery:
    """One instant query of a sweep: which signal it reads, and its PromQL."""

    signal: Signal
    promql: str


def promql_duration(seconds: float) -> str:
    """A Prometheus duration: ``600s`` (or ``1500ms`` for a fraction of a second)."""
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def render(template: str, namespace: str, window: float) -> str:
    """The template with ``{namespace}`` and ``{window}`` replaced (no other brace is
    touched: PromQL's own label matchers use braces)."""
    return template.replace("{namespace}", namespace).replace("{window}", promql_duration(window))


def coverage_step(idle_timeout: float) -> float:
    """The subquery step of the gpu-idle query: whole seconds, at least
    :data:`MIN_STEP_SECONDS`, at most :data:`MAX_STEPS` steps per ``idleTimeout``."""
    return float(max(MIN_STEP_SECONDS, math.ceil(idle_timeout / MAX_STEPS)))


def gpu_idle_query(template: str, namespace: str, idle_timeout: float) -> str:
    """The gpu-idle query (see the module doc)."""
    step = coverage_step(idle_timeout)
    over_timeout = render(template, namespace, idle_timeout)
    per_step = render(template, namespace, step)
    span = f"[{promql_duration(idle_timeout + step)}:{promql_duration(step)}]"
    steps = f"scalar(count_over_time(vector(1){span}))"
    covered = f"count_over_time(({per_step}){span}) >= {steps}"
    return (
        f'label_replace({over_timeout}, "{PART_LABEL}", "max", "", "") or '
        f'label_replace({covered}, "{PART_LABEL}", "covered", "", "")'
    )


def usage_queries(policy: Policy, namespace: str) -> list[UsageQuery]:
    """The queries a sweep of ``policy`` sends (one per signal it switches on)."""
    usage = policy.usage
    if usage is None:
        return []
    queries = []
    if usage.busy_cpu > 0:
        queries.append(UsageQuery("cpu", render(usage.cpu_query, namespace, usage.window)))
    if usage.busy_gpu > 0:
        queries.append(UsageQuery("gpu", render(usage.gpu_query, namespace, usage.window)))
    if usage.cull_idle_gpu and policy.idle_timeout > 0:
        idle = gpu_idle_query(usage.gpu_query, namespace, policy.idle_timeout)
        queries.append(UsageQuery("gpu-idle", idle))
    return queries
