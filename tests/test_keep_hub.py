"""spec.keep against a real JupyterHub: a kept server survives sweeps until its keep ends,
keeps of stopped or restarted servers end, and the status carries the keeps on."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from hubcull.engine.rules.keeps import Keep, keeps_from_status, keeps_to_status
from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.scenario import culled_labels, populate, sweep

pytestmark = pytest.mark.hub

HOUR = 3600


def _started(model: dict, server: str = "") -> datetime:
    return datetime.fromisoformat(model["servers"][server]["started"].replace("Z", "+00:00"))


async def test_a_kept_server_survives_sweeps_until_its_keep_ends(hub: Hub) -> None:
    await populate(
        hub,
        {("alice", ""): 2 * HOUR, ("bob", ""): 2 * HOUR, ("carol", ""): 2 * HOUR},
    )
    now = datetime.now(timezone.utc)
    alice = _started(await hub.get_user("alice"))
    bob = _started(await hub.get_user("bob"))
    previous = {
        "keeps": keeps_to_status(
            [
                Keep("alice", "", now + timedelta(hours=1), alice, now),
                # a keep made for an earlier run of bob's server does not hold
                Keep("bob", "", now + timedelta(hours=1), bob - timedelta(hours=5), now),
                Keep("carol", "", now - timedelta(seconds=5), None, now),  # ended
            ]
        ),
        "keepsToday": {"day": now.strftime("%Y-%m-%d"), "users": {"alice": 1}},
    }
    token = await hub.token(MINIMAL_SCOPES)
    outcome = await sweep(hub, token, previous=previous, idleTimeout="1h", keep={"max": "8h"})
    assert culled_labels(outcome) == {"bob", "carol"}
    assert await hub.running_servers() == {("alice", "")}
    status = outcome.status
    assert status["serversProtected"] == 1
    assert [k.user for k in keeps_from_status(status["keeps"])] == ["alice"]
    assert status["keepsToday"] == previous["keepsToday"]

    # the next sweep, with the status the first one wrote: still kept
    outcome = await sweep(hub, token, previous=status, idleTimeout="1h", keep={"max": "8h"})
    assert culled_labels(outcome) == set()
    assert await hub.running_servers() == {("alice", "")}

    # the keep ends: the next sweep stops the server and drops the keep
    ended = dict(outcome.status)
    ended["keeps"] = [{**ended["keeps"][0], "until": _iso(datetime.now(timezone.utc))}]
    outcome = await sweep(hub, token, previous=ended, idleTimeout="1h", keep={"max": "8h"})
    assert culled_labels(outcome) == {"alice"}
    assert outcome.status["keeps"] == []


async def test_a_keep_does_not_outlive_max_age_nor_its_server(hub: Hub) -> None:
    await populate(hub, {("dora", ""): 60}, started={("dora", ""): 3 * HOUR})
    now = datetime.now(timezone.utc)
    started = _started(await hub.get_user("dora"))
    previous = {"keeps": keeps_to_status([Keep("dora", "", now + timedelta(hours=4), started)])}
    token = await hub.token(MINIMAL_SCOPES)
    outcome = await sweep(
        hub, token, previous=previous, idleTimeout="1h", maxAge="2h", keep={"max": "8h"}
    )
    assert outcome.result is not None
    assert {(c.label, c.reason) for c in outcome.result.culled} == {("dora", "maxAge")}
    assert outcome.status["keeps"] == []  # the keep ended with its server


async def test_without_spec_keep_keeps_protect_nothing_and_are_cleared(hub: Hub) -> None:
    await populate(hub, {("erin", ""): 2 * HOUR})
    now = datetime.now(timezone.utc)
    previous = {"keeps": keeps_to_status([Keep("erin", "", now + timedelta(hours=1))])}
    outcome = await sweep(hub, await hub.token(MINIMAL_SCOPES), previous=previous)
    assert culled_labels(outcome) == {"erin"}
    assert outcome.status["keeps"] == []


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")
