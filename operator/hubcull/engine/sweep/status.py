"""CullPolicy ``status``: counts, recent culls and metav1.Condition-shaped conditions.

Both ``hubcull sweep`` (which prints it) and the operator (which patches it) build the status
here, from the previous status and a sweep result or failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from ..durations import format_duration
from ..rules.policy import Policy
from .records import SweepResult

RECENT_CULLS_LIMIT = 20

#: What an admin should do about each reason ``Ready`` can be False for.
ADVICE = {
    "HubUnreachable": "check spec.hub.url and that the Hub is running and reachable from hubcull",
    "Unauthorized": "put a token the Hub accepts in the Secret named by spec.hub.tokenSecretRef",
    "Forbidden": "add the scope to the role of hubcull's service in the Hub "
    "(z2jh: hub.loadRoles.hubcull.scopes)",
    "TokenSecretMissing": "create the Secret in the policy's namespace or fix the reference "
    "in spec.hub",
    "InvalidSpec": "fix the fields named and apply the CullPolicy again",
    "HubError": "check the Hub's logs and spec.hub.url",
    "PodsUnavailable": "check that the Kubernetes API server answers the operator",
    "ProbesFailing": "set spec.kernels.podNamespace to where the servers' pods run, let "
    "hubcull reach the servers (NetworkPolicy, spec.kernels.via) and let its token make "
    "tokens for their users (the tokens scope); nothing that needed a probe is stopped for "
    "idleness or capacity until then",
    "UsageEmpty": "check spec.usage.queries and that Prometheus keeps the pods' namespace and "
    "pod labels; no server is stopped for idleness or capacity until then",
}


def isotime(when: datetime) -> str:
    """RFC 3339 in UTC with seconds, as Kubernetes writes times: ``2026-11-22T10:00:00Z``."""
    return when.astimezone(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def failure_message(reason: str, detail: str, advice: str | None = None) -> str:
    """One sentence: what is wrong, then what to do (``advice``, else the reason's usual)."""
    advice = advice or ADVICE.get(reason)
    detail = detail.rstrip(". ")
    if not detail.startswith("spec"):
        detail = detail[:1].upper() + detail[1:]
    return f"{detail}; {advice}." if advice else f"{detail}."


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """Return ``conditions`` with ``type_`` set; ``lastTransitionTime`` moves only when the
    status flips."""
    value = "True" if status else "False"
    result: list[dict[str, Any]] = []
    previous = None
    for condition in conditions or []:
        if condition.get("type") == type_:
            previous = condition
        else:
            result.append(dict(condition))
    changed = previous is None or previous.get("status") != value
    condition = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": isotime(now)
        if changed
        else previous.get("lastTransitionTime", isotime(now)),  # type: ignore[union-attr]
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    result.append(condition)
    order = {"Ready": 0, "Throttled": 1}
    return sorted(result, key=lambda c: order.get(c.get("type", ""), len(order)))


def recent_culls(result: SweepResult, previous: list[Any] | None) -> list[dict[str, Any]]:
    """This sweep's culls first, then earlier ones, at most :data:`RECENT_CULLS_LIMIT`."""
    entries = [
        {
            "user": c.user,
            "server": c.server,
            "reason": c.reason,
            "idleSeconds": int(c.idle_seconds),
            "time": isotime(c.time),
            "dryRun": c.dry_run,
            **({"idleFrom": c.idle_from} if c.idle_from != "hub" else {}),
        }
        for c in sorted(result.culled, key=lambda c: -c.idle_seconds)
    ]
    return (entries + list(previous or []))[:RECENT_CULLS_LIMIT]


def throttle_message(result: SweepResult, policy: Policy) -> str:
    """Say how many culls the safety limits held back and which limits those are."""
    limits = []
    if policy.safety.max_culls_per_sweep:
        limits.append(f"maxCullsPerSweep {policy.safety.max_culls_per_sweep}")
    if policy.safety.max_cull_percent < 100:
        limits.append(f"maxCullPercent {policy.safety.max_cull_percent}")
    return (
        f"Held back {len(result.held_back)} of {result.over_limit} servers over a limit "
        f"({', '.join(limits)}); they wait for the next sweep."
    )


def status_after_sweep(
    previous: Mapping[str, Any] | None,
    result: SweepResult,
    policy: Policy,
    generation: int | None,
    now: datetime,
) -> dict[str, Any]:
    """The status after a successful sweep (totals never count dry runs)."""
    previous = previous or {}
    culled = 0 if result.dry_run else len(result.culled)
    users_culled = 0 if result.dry_run else len(result.users_culled)
    verb = "would cull" if result.dry_run else "culled"
    ready_message = (
        f"Swept {result.running} running servers at {isotime(result.now)}: {verb} "
        f"{len(result.culled)}, {len(result.failed)} failed"
        + warn_summary(result)
        + (" (dry run)." if result.dry_run else ".")
    )
    if result.problems:
        reason, detail = result.problems[0]
        conditions = set_condition(
            previous.get("conditions"),
            "Ready",
            False,
            reason,
            failure_message(reason, detail),
            generation,
            now,
        )
    else:
        conditions = set_condition(
            previous.get("conditions"),
            "Ready",
            True,
            "SweepSucceeded",
            ready_message,
            generation,
            now,
        )
    if result.held_back:
        conditions = set_condition(
            conditions,
            "Throttled",
            True,
            "SafetyLimit",
            throttle_message(result, policy),
            generation,
            now,
        )
    else:
        conditions = set_condition(
            conditions,
            "Throttled",
            False,
            "WithinLimits",
            "No cull was held back by the safety limits.",
            generation,
            now,
        )
    return {
        "observedGeneration": generation,
        "hubVersion": result.hub_version,
        "lastSweepTime": isotime(result.started),
        "lastSweepDurationSeconds": round(result.duration, 3),
        "serversRunning": result.running,
        "serversIdle": result.over_limit,
        "culledLastSweep": len(result.culled),
        "culledTotal": int(previous.get("culledTotal") or 0) + culled,
        "usersCulledTotal": int(previous.get("usersCulledTotal") or 0) + users_culled,
        "failedLastSweep": len(result.failed),
        "serversProtected": len(result.protected),
        "probeFailedLastSweep": len(result.probe_failures),
        "warnedLastSweep": len(result.warnings),
        "recentCulls": recent_culls(result, previous.get("recentCulls")),
        "conditions": conditions,
    }


def warn_summary(result: SweepResult) -> str:
    """``, warned 2; 1 of 3 webhook posts failed (HTTP 500)`` for the Ready message (empty
    when nothing was warned and no post failed)."""
    text = ""
    if result.warnings:
        text += f", {'would warn' if result.dry_run else 'warned'} {len(result.warnings)}"
    failed = result.notify.summary()
    if failed:
        text += f"; {failed}"
    return text


def status_after_failure(
    previous: Mapping[str, Any] | None,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> dict[str, Any]:
    """The status when no sweep could run: counts of the last good sweep stay, ``Ready`` is
    False with ``reason`` (``Suspended`` included)."""
    status = {k: v for k, v in (previous or {}).items() if k != "conditions"}
    status["observedGeneration"] = generation
    status["conditions"] = set_condition(
        (previous or {}).get("conditions"), "Ready", False, reason, message, generation, now
    )
    return status


def describe_cull(record: Any) -> str:
    """``alice/gpu (idle 1h12m)``: the words events and the CLI use for a cull."""
    idle = format_duration(record.idle_seconds)
    if getattr(record, "idle_from", "hub") == "kernels":
        idle += " by its kernels"
    why = {
        "idle": f"idle {idle}",
        "maxAge": f"maxAge, idle {idle}",
        "capacity": f"capacity, idle {idle}",
        "idleGPU": f"GPU idle {format_duration(record.idle_seconds)}",
    }.get(record.reason, record.reason)
    return f"{record.label} ({why})"
