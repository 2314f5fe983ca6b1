"""The fault matrix: what hubcull does when the Hub, or the network to it, misbehaves.

A fault-injection proxy (tests/support/faultproxy.py) sits between hubcull and a real
JupyterHub. For every fault the tests check that

* the sweep returns (no exception escapes: the operator keeps running),
* no server is stopped on the strength of a failed or partial read (no DELETE reaches the
  Hub, every server still runs),
* the ``Ready`` reason and message name the fault,
* the next sweep after the fault clears culls exactly the idle servers,

first at the engine level (``sweep_policy`` through the proxy) for the whole matrix, then end to
end with the operator for a representative subset, next to a policy that talks to the Hub
directly and keeps culling meanwhile.

The Hub: six users ``u0``..``u5`` with one server each; ``u1``, ``u3``, ``u5`` idle for 2h,
the others active a minute ago. ``pageSize: 2`` makes the listing three pages (offsets 0, 2
and 4; the last two are fetched concurrently), so a fault can hit the middle of a listing.

Set ``HUBCULL_FAULT_REPORT=path.json`` to write what was observed (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio

from hubcull.engine.sweep.runner import SweepOutcome, sweep_policy
from hubcull.engine.sweep.sources import SweepSources
from tests.support.faultproxy import (
    LISTING,
    RESTARTABLE_SPAWNER_CONFIG,
    Fault,
    FaultProxy,
    Seen,
    fault_proxy,
    page,
    start_hub_process,
    stop_hub_process,
)
from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.kube import Kube
from tests.support.operator_env import (
    CULLPOLICIES,
    NS,
    condition,
    cullpolicy,
    hubcull_operator,
    policy_status,
    secret,
)
from tests.support.scenario import ago, culled_labels, policy_for, populate

pytestmark = pytest.mark.hub

HOUR = 3600
USERS = [f"u{i}" for i in range(6)]
IDLE = {"u1", "u3", "u5"}
ACTIVE = set(USERS) - IDLE
SCOPE_MESSAGE = "Action is not authorized with current scopes; requires any of [list:users]"

#: what each case observed, for docs/reliability.md (HUBCULL_FAULT_REPORT)
OBSERVED: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    path = os.environ.get("HUBCULL_FAULT_REPORT")
    if path and OBSERVED:
        previous = json.loads(open(path).read()) if os.path.exists(path) else {}
        with open(path, "w") as f:
            json.dump({**previous, **OBSERVED}, f, indent=1, sort_keys=True)


async def populate_six(hub: Hub) -> None:
    await populate(hub, {(u, ""): (2 * HOUR if u in IDLE else 60) for u in USERS})


def running(keys: set[tuple[str, str]]) -> set[str]:
    return {user for user, _ in keys}


@pytest_asyncio.fixture
async def proxy(clean_hub: Hub) -> AsyncIterator[FaultProxy]:
    async with fault_proxy(clean_hub.public_url) as running_proxy:
        yield running_proxy


# --------------------------------------------------------------------------------------
# the matrix, at the engine level
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A fault, how it is injected, and what the sweep must say."""

    id: str
    what: str  # the fault, in words (docs)
    faults: Callable[[], list[Fault]]
    reason: str | None  # Ready reason of the faulty sweep; None: the sweep succeeds anyway
    says: str = ""  # text the message must contain
    timeout: str = "1s"  # spec.hub.requestTimeout
    spec: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case(
        "reset",
        "connection closed without an answer, on every try of page 2",
        lambda: [Fault("reset", page(2))],
        "HubUnreachable",
        "RemoteProtocolError",
    ),
    Case(
        "reset-once",
        "connection closed without an answer, once",
        lambda: [Fault("reset", page(2), times=1)],
        None,
    ),
    Case(
        "hang",
        "page 2 never answers",
        lambda: [Fault("hang", page(2))],
        "HubUnreachable",
        "did not answer in time",
    ),
    Case(
        "slow-over-timeout",
        "page 2 answers after 3s, requestTimeout 1s",
        lambda: [Fault("slow", page(2), delay=3)],
        "HubUnreachable",
        "did not answer in time",
    ),
    Case(
        "slow-under-timeout",
        "page 2 answers after 0.5s, requestTimeout 2s",
        lambda: [Fault("slow", page(2), delay=0.5)],
        None,
        timeout="2s",
    ),
    Case(
        "500",
        "page 2 answers 500, every try",
        lambda: [Fault("status", page(2), status=500)],
        "HubError",
        "answered 500",
    ),
    Case(
        "502",
        "page 2 answers 502, every try",
        lambda: [Fault("status", page(2), status=502)],
        "HubError",
        "answered 502",
    ),
    Case(
        "503",
        "page 2 answers 503, every try",
        lambda: [Fault("status", page(2), status=503)],
        "HubError",
        "answered 503",
    ),
    Case(
        "503-once",
        "page 2 answers 503 once, then works",
        lambda: [Fault("status", page(2), status=503, times=1)],
        None,
    ),
    Case(
        "429",
        "page 2 answers 429 (Retry-After: 1), every try",
        lambda: [Fault("status", page(2), status=429)],
        "HubError",
        "answered 429",
    ),
    Case(
        "429-once",
        "page 2 answers 429 (Retry-After: 1) once",
        lambda: [Fault("status", page(2), status=429, times=1)],
        None,
    ),
    Case(
        "404",
        "the listing answers 404",
        lambda: [Fault("status", LISTING, status=404)],
        "HubError",
        "answered 404",
    ),
    Case(
        "malformed",
        "page 2 is not JSON",
        lambda: [Fault("malformed", page(2))],
        "HubError",
        "malformed JSON",
    ),
    Case(
        "truncated",
        "page 2 is cut in half (valid HTTP, broken JSON)",
        lambda: [Fault("truncate", page(2))],
        "HubError",
        "malformed JSON",
    ),
    Case(
        "cut",
        "the connection breaks in the middle of page 2's body",
        lambda: [Fault("cut", page(2))],
        "HubUnreachable",
        "complete message body",
    ),
    Case(
        "html",
        "page 2 is an HTML page (an ingress error or login page)",
        lambda: [Fault("html", page(2))],
        "HubError",
        "text/html",
    ),
    Case(
        "skip",
        "page 1's _pagination.next skips page 2",
        lambda: [Fault("skip", page(0))],
        "HubError",
        "does not follow",
    ),
    Case(
        "offset",
        "page 2 claims another offset",
        lambda: [Fault("offset", page(2))],
        "HubError",
        "offset 3 when asked for 2",
    ),
    Case(
        "401",
        "the listing answers 401",
        lambda: [Fault("status", LISTING, status=401)],
        "Unauthorized",
        "401",
    ),
    Case(
        "403",
        "the listing answers 403 Missing or invalid credentials",
        lambda: [Fault("status", LISTING, status=403)],
        "Unauthorized",
        "Missing or invalid credentials",
    ),
    Case(
        "403-scope",
        "the listing answers 403 requires any of [list:users]",
        lambda: [Fault("status", LISTING, status=403, message=SCOPE_MESSAGE)],
        "Forbidden",
        "list:users",
    ),
    Case(
        "version-503",
        "the first request (GET /hub/api/) answers 503",
        lambda: [Fault("status", r"^GET /hub/api/$", status=503)],
        "HubError",
        "answered 503",
    ),
    Case(
        "token-check-500",
        "the token check (GET /hub/api/user) answers 500",
        lambda: [Fault("status", r"^GET /hub/api/user$", status=500)],
        "HubError",
        "answered 500",
    ),
]


async def sweep_through(
    proxy: FaultProxy,
    token: str,
    timeout: str = "1s",
    previous: dict[str, Any] | None = None,
    **spec: Any,
) -> SweepOutcome:
    """One sweep through the proxy; ``spec`` fields override pageSize 2 and the timeout."""
    spec = {"pageSize": 2, "hub": {"requestTimeout": timeout}, **spec}
    return await sweep_policy(
        policy_for(proxy.api_url, **spec), SweepSources(token), previous=previous
    )


def note(case_id: str, **values: Any) -> None:
    OBSERVED[case_id] = values


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_fault_during_listing(clean_hub: Hub, proxy: FaultProxy, case: Case) -> None:
    hub = clean_hub
    await populate_six(hub)
    token = await hub.token(MINIMAL_SCOPES)
    proxy.inject(*case.faults())
    t0 = time.monotonic()
    outcome = await sweep_through(proxy, token, case.timeout, **case.spec)
    took = time.monotonic() - t0
    proxy.clear()
    if case.reason is None:
        # a transient fault: retried, and the sweep is complete and correct
        assert outcome.reason is None, outcome.message
        assert culled_labels(outcome) == IDLE
        assert running(await hub.running_servers()) == ACTIVE
        note(
            case.id,
            what=case.what,
            reason="SweepSucceeded",
            took=round(took, 1),
            culled=sorted(culled_labels(outcome)),
            stops=len(proxy.stops()),
        )
        return
    assert outcome.result is None and outcome.reason == case.reason, outcome
    assert case.says in (outcome.message or ""), outcome.message
    assert proxy.count("^DELETE ") == 0, "a stop on the strength of a failed read"
    assert running(await hub.running_servers()) == set(USERS)
    ready = condition(outcome.status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", case.reason)
    # the fault is gone: the next sweep culls exactly the idle servers
    after = await sweep_through(proxy, token, case.timeout, **case.spec)
    assert culled_labels(after) == IDLE
    assert running(await hub.running_servers()) == ACTIVE
    note(
        case.id,
        what=case.what,
        reason=outcome.reason,
        message=outcome.message,
        took=round(took, 1),
        stops_during_fault=0,
        culled_after=sorted(culled_labels(after)),
    )


async def test_refused_connections(clean_hub: Hub, proxy: FaultProxy) -> None:
    hub = clean_hub
    await populate_six(hub)
    token = await hub.token(MINIMAL_SCOPES)
    await proxy.refuse()
    t0 = time.monotonic()
    outcome = await sweep_through(proxy, token)
    took = time.monotonic() - t0
    assert outcome.reason == "HubUnreachable" and "ConnectError" in (outcome.message or "")
    assert running(await hub.running_servers()) == set(USERS)
    await proxy.accept()
    after = await sweep_through(proxy, token, previous=outcome.status)
    assert culled_labels(after) == IDLE
    # a failed sweep keeps the counts of the last good one; the next one adds to them
    assert after.status["culledTotal"] == 3
    note(
        "refuse",
        what="connection refused (nothing listens)",
        reason=outcome.reason,
        message=outcome.message,
        took=round(took, 1),
        stops_during_fault=0,
        culled_after=sorted(culled_labels(after)),
    )


async def test_dropped_page_never_stops_a_server_it_did_not_see(
    clean_hub: Hub, proxy: FaultProxy
) -> None:
    """A page that lost its users but whose _pagination is consistent cannot be told from a
    legitimately short page (the Hub filters state=ready after paging). The users on it are
    not seen, so not judged: only servers the sweep saw, each with its own model, are
    stopped, and limits that count servers (capacity, maxCullPercent) only get stricter."""
    hub = clean_hub
    await populate_six(hub)
    token = await hub.token(MINIMAL_SCOPES)
    proxy.inject(Fault("drop", page(2)))  # u2 (active) and u3 (idle) vanish from the listing
    outcome = await sweep_through(proxy, token)
    proxy.clear()
    assert outcome.result is not None
    assert culled_labels(outcome) == {"u1", "u5"}
    assert outcome.result.running == 4
    assert {s.path for s in proxy.stops()} == {
        "/hub/api/users/u1/server",
        "/hub/api/users/u5/server",
    }
    after = await sweep_through(proxy, token)
    assert culled_labels(after) == {"u3"}
    assert running(await hub.running_servers()) == ACTIVE
    # with a capacity limit the dropped page makes the sweep cull less, never more
    await hub.reset()
    await populate(hub, {(u, ""): (2 * HOUR if u in IDLE else 20 * 60) for u in USERS})
    token = await hub.token(MINIMAL_SCOPES)
    proxy.inject(Fault("drop", page(2)))
    capped = await sweep_through(
        proxy, token, idleTimeout="3h", capacity={"maxActiveServers": 3, "minIdle": "10m"}
    )
    proxy.clear()
    assert capped.result is not None and capped.result.running == 4
    assert len(capped.result.culled) == 1  # 4 seen -> 3; with all 6 seen it would be 3
    full = await sweep_through(
        proxy, token, idleTimeout="3h", capacity={"maxActiveServers": 3, "minIdle": "10m"}
    )
    assert len(full.result.culled) == 2  # the 5 left -> 3
    note(
        "drop",
        what="page 2 comes back empty with consistent _pagination",
        reason="SweepSucceeded",
        culled=sorted(culled_labels(outcome)),
        culled_after=sorted(culled_labels(after)),
    )


async def test_failed_stops_are_retried_by_the_next_sweep(
    clean_hub: Hub, proxy: FaultProxy
) -> None:
    """Faults while stopping: the stop is not retried within the sweep (it may have
    happened), it is reported, and the next sweep, which lists again, stops it."""
    hub = clean_hub
    for kind, says in (("status", "answered 503"), ("hang", "did not answer in time")):
        await hub.reset()
        await populate_six(hub)
        token = await hub.token(MINIMAL_SCOPES)
        proxy.inject(Fault(kind, r"^DELETE /hub/api/users/u3/", status=503))
        outcome = await sweep_through(proxy, token)
        proxy.clear()
        assert outcome.result is not None, outcome.message
        assert culled_labels(outcome) == {"u1", "u5"}
        (failure,) = outcome.result.failed
        assert failure.user == "u3" and says in (failure.error or "")
        assert outcome.status["failedLastSweep"] == 1
        assert "1 failed" in condition(outcome.status, "Ready")["message"]
        assert running(await hub.running_servers()) == ACTIVE | {"u3"}
        after = await sweep_through(proxy, token, previous=outcome.status)
        assert culled_labels(after) == {"u3"}
        assert after.status["culledTotal"] == 3 and after.status["failedLastSweep"] == 0
        what = "answers 503" if kind == "status" else "never answers"
        note(
            f"delete-{kind}",
            what=f"the stop of u3 {what}",
            reason="SweepSucceeded",
            failed=1,
            error=failure.error,
            culled=sorted(culled_labels(outcome)),
            culled_after=sorted(culled_labels(after)),
        )


# --------------------------------------------------------------------------------------
# restarting the Hub in the middle of a sweep
# --------------------------------------------------------------------------------------


@pytest.mark.hub(extra_config=RESTARTABLE_SPAWNER_CONFIG)
async def test_hub_restart_mid_listing(hub: Hub) -> None:
    """The Hub goes down while page 2 is asked for (pageSize 3: two pages, so that no other
    request is in flight during the restart). Down longer than the retries: the sweep
    fails, nothing stopped. Back within the retries: the sweep completes, correctly. The
    servers survive the restarts (as pods do when the Hub pod restarts)."""
    await populate_six(hub)
    token = await hub.token(MINIMAL_SCOPES)

    async def stop_hub(_: Seen) -> None:
        await stop_hub_process(hub)

    async def restart(_: Seen) -> None:
        await stop_hub_process(hub)
        await start_hub_process(hub)

    async with fault_proxy(hub.public_url) as proxy:
        proxy.inject(Fault("hook", page(3), times=1, hook=stop_hub))
        outcome = await sweep_through(proxy, token, pageSize=3)
        assert outcome.reason == "HubUnreachable", outcome
        assert proxy.count("^DELETE ") == 0
        await start_hub_process(hub)
        assert running(await hub.running_servers()) == set(USERS)
        # down and up again while page 2 waits: the retry reaches the new Hub process
        proxy.inject(Fault("hook", page(3), times=1, hook=restart))
        t0 = time.monotonic()
        during = await sweep_through(proxy, token, timeout="30s", pageSize=3, dryRun=True)
        took = time.monotonic() - t0
        assert during.reason is None, during.message
        assert {c.label for c in during.result.culled} == IDLE
        after = await sweep_through(proxy, token)
        assert culled_labels(after) == IDLE
        assert running(await hub.running_servers()) == ACTIVE
    note(
        "hub-restart-down",
        what="the Hub stops while page 2 is asked for (and stays down)",
        reason=outcome.reason,
        message=outcome.message,
        stops_during_fault=0,
        culled_after=sorted(culled_labels(after)),
    )
    note(
        "hub-restart-up",
        what="the Hub restarts (about 3s) while page 2 waits",
        reason="SweepSucceeded",
        took=round(took, 1),
        would_cull=sorted(c.label for c in during.result.culled),
    )


@pytest.mark.hub(extra_config=RESTARTABLE_SPAWNER_CONFIG)
async def test_hub_restart_while_stopping(hub: Hub) -> None:
    """The Hub goes down after the listing, as the stops go out: those stops fail and are
    reported; the next sweep after the restart stops them."""
    await populate_six(hub)
    token = await hub.token(MINIMAL_SCOPES)

    async def stop_hub(_: Seen) -> None:
        await stop_hub_process(hub)

    async with fault_proxy(hub.public_url) as proxy:
        proxy.inject(Fault("hook", r"^DELETE ", times=1, hook=stop_hub))
        outcome = await sweep_through(proxy, token, concurrency=1)
        assert outcome.result is not None
        assert outcome.result.culled == [] and len(outcome.result.failed) == 3
        await start_hub_process(hub)
        assert running(await hub.running_servers()) == set(USERS)
        after = await sweep_through(proxy, token, previous=outcome.status)
        assert culled_labels(after) == IDLE
        assert after.status["culledTotal"] == 3
    note(
        "hub-restart-stopping",
        what="the Hub stops as the first stop goes out",
        reason="SweepSucceeded",
        failed=3,
        culled_after=sorted(culled_labels(after)),
    )


# --------------------------------------------------------------------------------------
# the operator: one policy sees the faults, another keeps culling
# --------------------------------------------------------------------------------------

OPERATOR_STEPS: list[tuple[str, Callable[[], list[Fault]], str, str]] = [
    ("refuse", list, "HubUnreachable", "ConnectError"),
    ("hang", lambda: [Fault("hang", page(2))], "HubUnreachable", "did not answer in time"),
    ("503", lambda: [Fault("status", page(2), status=503)], "HubError", "answered 503"),
    ("truncated", lambda: [Fault("truncate", page(2))], "HubError", "malformed JSON"),
    ("401", lambda: [Fault("status", LISTING, status=401)], "Unauthorized", "401"),
    (
        "403-scope",
        lambda: [Fault("status", LISTING, status=403, message=SCOPE_MESSAGE)],
        "Forbidden",
        "list:users",
    ),
]


@pytest.mark.k8s
async def test_operator_keeps_serving_other_policies_and_recovers(kube: Kube, hub: Hub) -> None:
    faulty_users = {f"f{i}": (2 * HOUR if i % 2 else 60) for i in range(6)}
    await populate(
        hub,
        {
            **{(u, ""): t for u, t in faulty_users.items()},
            ("d-idle", ""): 2 * HOUR,
            ("d-late", ""): 60,
        },
    )
    async with fault_proxy(hub.public_url) as proxy, hubcull_operator(kube) as (_, memo):
        await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
        await kube.create(cullpolicy(hub, name="direct", every="10s", selector={"users": ["d-*"]}))
        await kube.create(
            cullpolicy(
                proxy.api_url,
                name="faulty",
                every="10m",
                pageSize=2,
                selector={"users": ["f*"]},
                hub={"requestTimeout": "1s"},
            )
        )

        async def status_of(name: str, check: Callable[[dict], bool]) -> dict:
            async def ready() -> dict:
                status = await policy_status(kube, name)
                assert check(status), status
                return status

            return await kube.wait_for(ready, timeout=30)

        # a first clean sweep of each, then the faults, one after the other
        first = await status_of("faulty", lambda s: s.get("culledTotal") == 3)
        await status_of("direct", lambda s: s.get("culledTotal") == 1)
        generation = first["observedGeneration"]
        idle_now = [{"user": u, "server": "", "last_activity": ago(2 * HOUR)} for u in ("f0", "f2")]
        await hub.set_times_bulk(idle_now)  # idle now: for the first sweep after the faults
        await hub.set_times("d-late", last_activity=ago(2 * HOUR))  # the direct policy's
        seen: dict[str, str] = {}
        for step, faults, reason, says in OPERATOR_STEPS:
            if step == "refuse":
                await proxy.refuse()
            proxy.inject(*faults())
            generation += 1  # an edit sweeps at once: toggle the concurrency
            await kube.patch(CULLPOLICIES, NS, "faulty", {"spec": {"concurrency": generation}})
            status = await status_of(
                "faulty",
                lambda s, g=generation, r=reason: (
                    s.get("observedGeneration") == g and condition(s, "Ready").get("reason") == r
                ),
            )
            message = condition(status, "Ready")["message"]
            assert condition(status, "Ready")["status"] == "False" and says in message, message
            assert status["culledTotal"] == 3  # the last good sweep's counts stay
            seen[step] = message
            proxy.clear()
            await proxy.accept()
            assert proxy.count("^DELETE ") == 3  # only those of the first, clean sweep
        assert running(await hub.running_servers()) >= {"f0", "f2"}
        # meanwhile the other policy kept sweeping, and culled the server that went idle
        direct = await status_of("direct", lambda s: s.get("culledTotal") == 2)
        assert condition(direct, "Ready")["status"] == "True"
        # the faults clear: the next sweep culls what is idle
        await kube.patch(CULLPOLICIES, NS, "faulty", {"spec": {"concurrency": 1}})
        recovered = await status_of("faulty", lambda s: s.get("culledTotal") == 5)
        assert condition(recovered, "Ready")["reason"] == "SweepSucceeded"
        assert running(await hub.running_servers()) == {"f4"}
        failures = memo["metrics"].registry.get_sample_value(
            "hubcull_sweeps_total", {"namespace": NS, "policy": "faulty", "result": "failure"}
        )
        assert failures == len(OPERATOR_STEPS)
        events = await kube.events_for(NS, "faulty")
        warned = {e["message"].split(":")[0] for e in events if e["reason"] == "SweepFailed"}
        assert warned == {"HubUnreachable", "HubError", "Unauthorized", "Forbidden"}
    for step, message in seen.items():
        OBSERVED.setdefault(f"operator-{step}", {"what": step, "message": message})
