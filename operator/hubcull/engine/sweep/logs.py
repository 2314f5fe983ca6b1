"""What the operator's log says about one sweep: one line for the sweep and one per action
(stop, removal, user deletion, warning), each with the figures behind it.

Each line is a level, a message an admin reads, and the same facts as fields (for
``--log-format json``). No token, URL or webhook ever reaches a line: only names, reasons,
times and counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..durations import format_duration
from ..rules.policy import Policy
from .records import CullRecord, SweepResult, UserCullRecord
from .status import isotime


@dataclass(frozen=True)
class LogLine:
    """One line of the log: ``level``, ``message`` and ``fields`` (``event`` says which kind)."""

    level: int
    message: str
    fields: dict[str, Any]


def _limit(policy: Policy, reason: str) -> str:
    """The limit a reason stands for, as the line shows it (``idleTimeout 1h``)."""
    if reason == "maxAge":
        return f"maxAge {format_duration(policy.max_age)}"
    if reason == "capacity":
        return (
            f"capacity.maxActiveServers {policy.capacity.max_active_servers}, "
            f"minIdle {format_duration(policy.capacity.min_idle)}"
        )
    if reason == "idleGPU":
        return f"GPU idle for idleTimeout {format_duration(policy.idle_timeout)}"
    if reason == "demand" and policy.demand is not None:
        return f"demand.minIdle {format_duration(policy.demand.min_idle)}"
    return f"idleTimeout {format_duration(policy.idle_timeout)}"


def _stop_line(policy: Policy, c: CullRecord, dry_run: bool) -> LogLine:
    idle = format_duration(c.idle_seconds)
    by = " by its kernels" if c.idle_from == "kernels" else ""
    what = "removed stopped server" if c.removed and c.outcome == "gone" else "stopped"
    if dry_run:
        what = "would stop"
    fields = {
        "event": "stop",
        "user": c.user,
        "server": c.server,
        "reason": c.reason,
        "idleSeconds": int(c.idle_seconds),
        "idleFrom": c.idle_from,
        "outcome": c.outcome,
        "remove": c.removed,
        "dryRun": dry_run,
    }
    figures = f"idle {idle}{by}, {_limit(policy, c.reason)}"
    if c.reason == "demand":
        fields["for"], fields["frees"] = c.for_pod, list(c.frees)
        figures += f"; frees {', '.join(c.frees) or 'nothing'} for pod {c.for_pod}"
    if c.error is not None:
        fields["error"] = c.error
        return LogLine(
            logging.WARNING,
            f"failed to stop {c.label} ({c.reason}: {figures}): {c.error}",
            fields,
        )
    return LogLine(logging.INFO, f"{what} {c.label}: {c.reason} ({figures})", fields)


def _removal_line(c: CullRecord, dry_run: bool) -> LogLine:
    fields = {
        "event": "removal",
        "user": c.user,
        "server": c.server,
        "reason": c.reason,
        "idleSeconds": int(c.idle_seconds),
        "dryRun": dry_run,
    }
    idle = format_duration(c.idle_seconds)
    if c.error is not None:
        fields["error"] = c.error
        return LogLine(
            logging.WARNING, f"failed to remove stopped server {c.label}: {c.error}", fields
        )
    verb = "would remove" if dry_run else "removed"
    return LogLine(logging.INFO, f"{verb} stopped server {c.label}: idle {idle}", fields)


def _user_line(u: UserCullRecord, dry_run: bool) -> LogLine:
    fields = {
        "event": "userDeletion",
        "user": u.user,
        "idleSeconds": int(u.idle_seconds),
        "dryRun": dry_run,
    }
    if u.error is not None:
        fields["error"] = u.error
        return LogLine(logging.WARNING, f"failed to delete user {u.user}: {u.error}", fields)
    verb = "would delete" if dry_run else "deleted"
    idle = format_duration(u.idle_seconds)
    return LogLine(logging.INFO, f"{verb} user {u.user}: idle {idle}, no server", fields)


def sweep_log(policy: Policy, result: SweepResult) -> list[LogLine]:
    """The lines for one sweep that ran: the actions first, then the sweep's own line, then
    what held servers back (problems that make Ready False)."""
    dry = result.dry_run
    lines = [_stop_line(policy, c, dry) for c in result.culls]
    lines += [_removal_line(c, dry) for c in result.removals]
    lines += [_user_line(u, dry) for u in result.user_culls]
    for w in result.warnings:
        lines.append(
            LogLine(
                logging.INFO,
                f"{'would warn' if dry else 'warned'} {w.label}: {w.reason} (idle "
                f"{format_duration(w.idle_seconds)}, {_limit(policy, w.reason)}); "
                f"stop after {isotime(w.stop_after)}",
                {
                    "event": "warning",
                    "user": w.user,
                    "server": w.server,
                    "reason": w.reason,
                    "idleSeconds": int(w.idle_seconds),
                    "stopAfter": isotime(w.stop_after),
                    "dryRun": dry,
                },
            )
        )
    if result.held_back:
        lines.append(
            LogLine(
                logging.INFO,
                f"held back {len(result.held_back)} servers over a limit by the safety limits; "
                "they wait for the next sweep",
                {"event": "throttled", "heldBack": len(result.held_back)},
            )
        )
    summary = {
        "event": "sweep",
        "running": result.running,
        "idle": result.over_limit,
        "culled": len(result.culled),
        "protected": len(result.protected),
        "failed": len(result.failed),
        "warned": len(result.warnings),
        "probeFailed": len(result.probe_failures),
        "usersCulled": len(result.users_culled),
        "durationSeconds": round(result.duration, 3),
        "dryRun": dry,
    }
    verb = "would cull" if dry else "culled"
    probes = f", {len(result.probe_failures)} probes failed" if result.probe_failures else ""
    lines.append(
        LogLine(
            logging.INFO,
            f"swept {result.running} running servers: {result.over_limit} idle, {verb} "
            f"{len(result.culled)}, {len(result.protected)} protected, {len(result.failed)} "
            f"failed{probes} in {result.duration:.2f}s",
            summary,
        )
    )
    for pod in result.unhelped:
        if pod.unfreeable:
            lines.append(
                LogLine(
                    logging.INFO,
                    f"pod {pod.name} waits but is unfreeable (no stop can help): "
                    f"{pod.message or 'no scheduler message'}",
                    {"event": "unfreeable", "pod": pod.name},
                )
            )
    for reason, detail in result.problems:
        lines.append(
            LogLine(logging.WARNING, f"{reason}: {detail}", {"event": "problem", "reason": reason})
        )
    return lines
