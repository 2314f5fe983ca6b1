"""Status bookkeeping: conditions in metav1.Condition shape, totals, recent culls."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hubcull.engine.rules.decisions import ServerDecision
from hubcull.engine.rules.policy import Safety
from hubcull.engine.sweep.records import CullRecord, SweepResult
from hubcull.engine.sweep.status import set_condition, status_after_failure, status_after_sweep
from tests.support.scenario import policy_for

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=timezone.utc)
POLICY = policy_for("http://hub/hub/api")


def result(culled: int, dry_run: bool = False, held: int = 0, start: int = 0) -> SweepResult:
    records = [
        CullRecord(
            f"u{start + i}", "", "idle", 4000.0 + i, T0, dry_run, "dryRun" if dry_run else "stopped"
        )
        for i in range(culled)
    ]
    held_back = [ServerDecision(f"h{i}", "", "idle", 3700.0, None) for i in range(held)]
    return SweepResult(
        T0,
        1.5,
        "5.3.0",
        T0,
        "hub",
        dry_run,
        50,
        culled + held,
        0,
        held_back=held_back,
        culls=records,
    )


def test_last_transition_time_moves_only_when_the_status_flips() -> None:
    conditions = set_condition(None, "Ready", True, "SweepSucceeded", "ok", 1, T0)
    later = T0 + timedelta(minutes=10)
    same = set_condition(conditions, "Ready", True, "SweepSucceeded", "ok again", 2, later)
    assert same[0]["lastTransitionTime"] == "2026-11-22T10:00:00Z"
    assert same[0]["message"] == "ok again" and same[0]["observedGeneration"] == 2
    flipped = set_condition(same, "Ready", False, "HubUnreachable", "down", 2, later)
    assert flipped[0]["lastTransitionTime"] == "2026-11-22T10:10:00Z"
    assert set(flipped[0]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }


def test_totals_accumulate_and_never_count_dry_runs() -> None:
    status = status_after_sweep(None, result(3), POLICY, 1, T0)
    status = status_after_sweep(status, result(2, dry_run=True), POLICY, 1, T0)
    assert (status["culledLastSweep"], status["culledTotal"]) == (2, 3)
    status = status_after_sweep(status, result(4, start=10), POLICY, 1, T0)
    assert status["culledTotal"] == 7


def test_recent_culls_are_newest_first_and_capped_at_20() -> None:
    status = None
    for batch in range(5):
        status = status_after_sweep(status, result(6, start=batch * 10), POLICY, 1, T0)
    assert status is not None and len(status["recentCulls"]) == 20
    assert status["recentCulls"][0]["user"] == "u45"  # the longest-idle of the newest sweep
    assert {c["user"] for c in status["recentCulls"][:6]} == {f"u{40 + i}" for i in range(6)}


def test_throttled_says_how_many_were_held_back_and_by_which_limit() -> None:
    from dataclasses import replace

    policy = replace(POLICY, safety=Safety(max_culls_per_sweep=2, max_cull_percent=10))
    status = status_after_sweep(None, result(2, held=5), policy, 1, T0)
    throttled = next(c for c in status["conditions"] if c["type"] == "Throttled")
    assert throttled["status"] == "True" and throttled["reason"] == "SafetyLimit"
    assert "Held back 5 of 7" in throttled["message"]
    assert (
        "maxCullsPerSweep 2" in throttled["message"]
        and "maxCullPercent 10" in (throttled["message"])
    )


def test_a_failure_keeps_the_last_good_counts() -> None:
    good = status_after_sweep(None, result(3), POLICY, 1, T0)
    failed = status_after_failure(good, "HubUnreachable", "Cannot reach the Hub.", 2, T0)
    assert failed["culledTotal"] == 3 and failed["lastSweepTime"] == good["lastSweepTime"]
    ready = next(c for c in failed["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "HubUnreachable")
    assert failed["observedGeneration"] == 2
