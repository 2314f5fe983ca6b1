"""``spec.demand``: which pods wait for room, what they lack, and which idle servers to stop.

Everything here is pure: it reads Pod and Event objects as the Kubernetes API returns them
(plain mappings) and the policy's judgement of each server, and says what to do. The operator
gathers the objects; :func:`~hubcull.engine.decisions.decide` applies the choice.

* A **waiting pod** is a singleuser pod, ``Pending``, whose ``PodScheduled`` condition has been
  False with reason ``Unschedulable`` for at least ``after`` (by its ``lastTransitionTime``,
  the API server's clock), not being deleted, without ``status.nominatedNodeName`` (a
  preemption is already making room), and, when the cluster autoscaler triggered a scale-up
  for it (a ``TriggeredScaleUp`` Event newer than any ``NotTriggerScaleUp``), Unschedulable for
  at least ``scaleUpWait``. Pods of z2jh's ``user-placeholder`` StatefulSet never wait.
* What it **lacks** is what the scheduler's message names as ``Insufficient <resource>``; a
  message naming none (taints, affinity, volumes) cannot be helped by a stop: ``unfreeable``.
* A **victim** is a scheduled server pod that requests more than 0 of every lacking resource,
  carries every ``nodeSelector`` entry of the waiting pod, is idle at least ``minIdle`` and
  not protected. Longest-idle first; per waiting pod, as few servers (on one node) as cover
  its requests of the lacking resources; each server at most once. A pod a server was
  stopped for lately (``helped``) gets no second one while that room is on its way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from typing import Any, Literal

from .quantities import parse_resources
from .signals import ServerKey

#: KubeSpawner's label and annotations on singleuser pods, and z2jh's placeholder pods.
SERVER_COMPONENT = "singleuser-server"
PLACEHOLDER_COMPONENT = "user-placeholder"
USERNAME_ANNOTATION = "hub.jupyter.org/username"
SERVERNAME_ANNOTATION = "hub.jupyter.org/servername"

#: ``Insufficient cpu``, ``Insufficient nvidia.com/gpu``: a resource name ends with a letter
#: or digit, so the sentence's full stop or comma is not part of it.
_INSUFFICIENT_RE = re.compile(r"Insufficient ([A-Za-z0-9](?:[-A-Za-z0-9_./]*[A-Za-z0-9])?)")


@dataclass(frozen=True)
class DemandSpec:
    """``spec.demand``: stop idle servers for pods that cannot be scheduled."""

    min_idle: float
    after: float = 30.0
    scale_up_wait: float = 240.0


@dataclass(frozen=True)
class PodFacts:
    """What the demand rules read from one Pod object."""

    name: str
    key: ServerKey | None = None
    component: str | None = None
    phase: str = ""
    deleting: bool = False
    node_name: str | None = None
    nominated_node: str | None = None
    owner: tuple[str, str] | None = None  # (kind, name) of the controlling owner
    node_selector: Mapping[str, str] = field(default_factory=dict)
    requests: Mapping[str, Fraction] = field(default_factory=dict)
    unschedulable_since: datetime | None = None
    message: str = ""
    problems: tuple[str, ...] = ()
    uid: str | None = None

    @property
    def placeholder(self) -> bool:
        """A z2jh user placeholder: never waiting, never a victim."""
        return self.component == PLACEHOLDER_COMPONENT or self.owner == (
            "StatefulSet",
            "user-placeholder",
        )

    @property
    def scheduled(self) -> bool:
        """Bound to a node and not being deleted (what it requests is held there)."""
        return bool(self.node_name) and not self.deleting and self.phase in ("Pending", "Running")


def parse_time(value: object) -> datetime | None:
    """A Kubernetes timestamp (RFC 3339, ``Z`` or an offset), ``None`` if absent or bad."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def pod_requests(spec: Mapping[str, Any]) -> tuple[dict[str, Fraction], list[str]]:
    """A pod's effective requests as the scheduler counts them: the sum over its containers
    (a resource with only a limit requests the limit, as the API server defaults it), at
    least the largest init container's, plus ``overhead``. Bad quantities are named."""
    problems: list[str] = []

    def of(container: Mapping[str, Any]) -> dict[str, Fraction]:
        resources = container.get("resources") if isinstance(container, Mapping) else None
        resources = resources if isinstance(resources, Mapping) else {}
        limits, bad_limits = parse_resources(resources.get("limits"))
        requests, bad_requests = parse_resources(resources.get("requests"))
        problems.extend(bad_limits + bad_requests)
        return {**limits, **requests}

    total: dict[str, Fraction] = {}
    for container in _list(spec.get("containers")):
        for name, value in of(container).items():
            total[name] = total.get(name, Fraction(0)) + value
    for container in _list(spec.get("initContainers")):
        for name, value in of(container).items():
            total[name] = max(total.get(name, Fraction(0)), value)
    overhead, bad = parse_resources(spec.get("overhead"))
    problems.extend(bad)
    for name, value in overhead.items():
        total[name] = total.get(name, Fraction(0)) + value
    return total, problems


def _list(value: object) -> list[Any]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def pod_facts(pod: Mapping[str, Any]) -> PodFacts:
    """Read one Pod object; odd or missing fields give empty values, never an exception."""
    metadata, spec, status = (
        _map(pod.get("metadata")),
        _map(pod.get("spec")),
        _map(pod.get("status")),
    )
    labels, annotations = _map(metadata.get("labels")), _map(metadata.get("annotations"))
    user = annotations.get(USERNAME_ANNOTATION)
    key = None
    if isinstance(user, str) and user:
        server = annotations.get(SERVERNAME_ANNOTATION)
        key = (user, server if isinstance(server, str) else "")
    owner = None
    for ref in _list(metadata.get("ownerReferences")):
        if ref.get("controller") or owner is None:
            owner = (str(ref.get("kind", "")), str(ref.get("name", "")))
    since, message = None, ""
    for condition in _list(status.get("conditions")):
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            since = parse_time(condition.get("lastTransitionTime"))
            message = str(condition.get("message") or "")
    selector = {
        str(k): str(v) for k, v in _map(spec.get("nodeSelector")).items() if isinstance(v, str)
    }
    requests, problems = pod_requests(spec)
    component = labels.get("component")
    return PodFacts(
        name=str(metadata.get("name", "")),
        key=key,
        component=component if isinstance(component, str) else None,
        phase=str(status.get("phase") or ""),
        deleting=bool(metadata.get("deletionTimestamp")),
        node_name=spec.get("nodeName") or None,
        nominated_node=status.get("nominatedNodeName") or None,
        owner=owner,
        node_selector=selector,
        requests=requests,
        unschedulable_since=since,
        message=message,
        problems=tuple(problems),
        uid=metadata.get("uid") if isinstance(metadata.get("uid"), str) else None,
    )


def lacking_resources(message: str) -> tuple[str, ...]:
    """The resources a scheduler message names as ``Insufficient``, in order, once each."""
    found: list[str] = []
    for name in _INSUFFICIENT_RE.findall(message or ""):
        if name not in found:
            found.append(name)
    return tuple(found)


ScaleUp = Literal["triggered", "not_triggered"]


def scale_ups(events: Iterable[Mapping[str, Any]]) -> dict[str, ScaleUp]:
    """Per pod name, what the cluster autoscaler said last: ``TriggeredScaleUp`` or
    ``NotTriggerScaleUp`` (Events on other objects, or with other reasons, are ignored)."""
    latest: dict[str, tuple[datetime, int, ScaleUp]] = {}
    for index, event in enumerate(events):
        reason = event.get("reason")
        if reason not in ("TriggeredScaleUp", "NotTriggerScaleUp"):
            continue
        involved = _map(event.get("involvedObject") or event.get("regarding"))
        if involved.get("kind", "Pod") != "Pod" or not involved.get("name"):
            continue
        when = (
            parse_time(event.get("lastTimestamp"))
            or parse_time(event.get("eventTime"))
            or parse_time(_map(event.get("metadata")).get("creationTimestamp"))
            or datetime.min.replace(tzinfo=timezone.utc)
        )
        state: ScaleUp = "triggered" if reason == "TriggeredScaleUp" else "not_triggered"
        name = str(involved["name"])
        if name not in latest or (when, index) >= latest[name][:2]:
            latest[name] = (when, index, state)
    return {name: value[2] for name, value in latest.items()}


@dataclass(frozen=True)
class WaitingPod:
    """A pod that waits for room: what it lacks, how much of it, and where it may run."""

    name: str
    since: datetime
    lacking: tuple[str, ...]
    requests: Mapping[str, Fraction]
    node_selector: Mapping[str, str] = field(default_factory=dict)
    key: ServerKey | None = None
    message: str = ""
    uid: str | None = None

    @property
    def unfreeable(self) -> bool:
        """No stop can help: the scheduler named no resource that is short."""
        return not self.lacking


@dataclass(frozen=True)
class PodWait:
    """How the demand rules see one pod: ``waiting`` now, ``later`` (at ``due``), or ``no``."""

    state: Literal["waiting", "later", "no"]
    due: datetime | None = None
    why: str = ""


def classify(
    facts: PodFacts, spec: DemandSpec, now: datetime, scale_up: ScaleUp | None = None
) -> PodWait:
    """Whether ``facts`` is a waiting pod at ``now`` (the API server's clock)."""
    if facts.placeholder:
        return PodWait("no", why="a z2jh user placeholder")
    if facts.component not in (None, SERVER_COMPONENT):
        return PodWait("no", why="not a singleuser server")
    if facts.phase != "Pending" or facts.node_name:
        return PodWait("no", why="scheduled")
    if facts.deleting:
        return PodWait("no", why="being deleted")
    if facts.nominated_node:
        return PodWait("no", why=f"nominated for node {facts.nominated_node}")
    if facts.unschedulable_since is None:
        return PodWait("no", why="not Unschedulable")
    wait = spec.after
    if scale_up == "triggered" and spec.scale_up_wait > 0:
        wait = max(wait, spec.scale_up_wait)
    due = facts.unschedulable_since + timedelta(seconds=wait)
    if now < due:
        return PodWait("later", due=due, why="not Unschedulable long enough")
    return PodWait("waiting", due=due)


def waiting_pod(facts: PodFacts) -> WaitingPod:
    """The waiting pod ``facts`` describes (classified as waiting before)."""
    assert facts.unschedulable_since is not None
    lacking = lacking_resources(facts.message)
    return WaitingPod(
        name=facts.name,
        since=facts.unschedulable_since,
        lacking=lacking,
        requests={r: facts.requests.get(r, Fraction(0)) for r in lacking},
        node_selector=dict(facts.node_selector),
        key=facts.key,
        message=facts.message,
        uid=facts.uid,
    )


@dataclass(frozen=True)
class ServerHold:
    """What one server's pod holds: the victim side of the rules."""

    key: ServerKey
    pod: str
    node: str | None
    requests: Mapping[str, Fraction]
    node_selector: Mapping[str, str] = field(default_factory=dict)
    scheduled: bool = True


@dataclass(frozen=True)
class DemandData:
    """What the pods say this sweep: pods that wait (helpable or not), when the next pod will
    wait (``next_due``, the API server's clock) and what each server's pod holds."""

    waiting: tuple[WaitingPod, ...] = ()
    holds: Mapping[ServerKey, ServerHold] = field(default_factory=dict)
    next_due: datetime | None = None
    #: waiting pods room is already being freed for (a server was stopped for them lately)
    helped: frozenset[str] = frozenset()

    @property
    def unfreeable(self) -> tuple[WaitingPod, ...]:
        """Waiting pods that no stop can help."""
        return tuple(p for p in self.waiting if p.unfreeable)


def _rank_pods(pods: Iterable[PodFacts]) -> dict[ServerKey, PodFacts]:
    """One pod per server: a scheduled one that is not being deleted wins."""
    best: dict[ServerKey, PodFacts] = {}
    for facts in pods:
        if facts.key is None or facts.placeholder:
            continue
        kept = best.get(facts.key)
        if kept is None or (facts.scheduled, facts.phase == "Running") > (
            kept.scheduled,
            kept.phase == "Running",
        ):
            best[facts.key] = facts
    return best


def demand_data(
    spec: DemandSpec,
    pods: Iterable[Mapping[str, Any]],
    events: Iterable[Mapping[str, Any]],
    now: datetime,
    helped: frozenset[str] = frozenset(),
) -> DemandData:
    """Classify every pod at ``now`` (the API server's clock) with what the autoscaler said
    (``events``), and read what each server's pod holds."""
    facts = [pod_facts(pod) for pod in pods]
    said = scale_ups(events)
    waiting: list[WaitingPod] = []
    dues: list[datetime] = []
    for item in facts:
        wait = classify(item, spec, now, said.get(item.name))
        if wait.state == "waiting":
            waiting.append(waiting_pod(item))
        elif wait.state == "later" and wait.due is not None:
            dues.append(wait.due)
    waiting.sort(key=lambda p: (p.since, p.name))
    holds = {
        key: ServerHold(key, f.name, f.node_name, f.requests, f.node_selector, f.scheduled)
        for key, f in _rank_pods(facts).items()
    }
    return DemandData(tuple(waiting), holds, min(dues, default=None), helped)


@dataclass(frozen=True)
class Judged:
    """The policy's judgement of one running server in scope: idle seconds by all its
    signals (``None``: never idle), and why it is protected (``None``: it is not)."""

    key: ServerKey
    idle: float | None
    protected: str | None = None


@dataclass(frozen=True)
class Victim:
    """Stop ``key`` (idle ``idle`` seconds) to free ``frees`` for waiting pod ``pod``."""

    key: ServerKey
    pod: str
    idle: float
    frees: tuple[str, ...]


def helps(hold: ServerHold, pod: WaitingPod) -> bool:
    """Whether stopping the server of ``hold`` frees something ``pod`` lacks where it may run."""
    return (
        hold.scheduled
        and not pod.unfreeable
        and all(hold.requests.get(r, Fraction(0)) > 0 for r in pod.lacking)
        and all(hold.node_selector.get(k) == v for k, v in pod.node_selector.items())
    )


def _cover(pool: Sequence[tuple[Judged, ServerHold]], pod: WaitingPod) -> list[int] | None:
    """Indexes into ``pool`` (longest-idle first) of as few servers as cover ``pod``: take
    servers in order until covered (running totals), then drop every one not needed, least
    idle first."""
    need = {r: pod.requests.get(r, Fraction(0)) for r in pod.lacking}
    freed = dict.fromkeys(pod.lacking, Fraction(0))
    chosen: list[int] = []
    for index, (_, hold) in enumerate(pool):
        chosen.append(index)
        for resource in pod.lacking:
            freed[resource] += hold.requests.get(resource, Fraction(0))
        if all(freed[r] > 0 and freed[r] >= need[r] for r in pod.lacking):
            break
    else:
        return None
    for index in reversed(chosen[:] if len(chosen) > 1 else []):
        hold = pool[index][1]
        left = {r: freed[r] - hold.requests.get(r, Fraction(0)) for r in pod.lacking}
        if len(chosen) > 1 and all(left[r] > 0 and left[r] >= need[r] for r in pod.lacking):
            chosen.remove(index)
            freed = left
    return chosen


@dataclass
class _Group:
    """The eligible servers that help one kind of waiting pod, by node (in the order of each
    node's longest-idle server), with the most each node's server frees of each resource."""

    pools: dict[str | None, list[tuple[Judged, ServerHold]]]
    most: dict[str | None, dict[str, Fraction]]
    seen_used: int = 0

    @classmethod
    def of(
        cls,
        eligible: Sequence[tuple[Judged, ServerHold]],
        offers: Mapping[ServerKey, tuple[frozenset[str], frozenset[tuple[str, str]]]],
        lacking: frozenset[str],
        selector: frozenset[tuple[str, str]],
    ) -> _Group:
        pools: dict[str | None, list[tuple[Judged, ServerHold]]] = {}
        for item in eligible:
            offer = offers.get(item[0].key)
            if offer is not None and lacking <= offer[0] and selector <= offer[1]:
                pools.setdefault(item[1].node, []).append(item)
        most = {
            node: {r: max(h.requests.get(r, Fraction(0)) for _, h in pool) for r in lacking}
            for node, pool in pools.items()
        }
        return cls(pools, most)

    def order(self, used: set[ServerKey]) -> list[str | None]:
        """The nodes with a server left, by their longest-idle server left (servers in
        ``used`` are dropped first)."""
        if len(used) != self.seen_used:
            for node, pool in list(self.pools.items()):
                pool[:] = [item for item in pool if item[0].key not in used]
                if not pool:
                    del self.pools[node]
            self.seen_used = len(used)
        return sorted(
            self.pools, key=lambda n: (-(self.pools[n][0][0].idle or 0.0), self.pools[n][0][0].key)
        )

    def fewest(self, node: str | None, pod: WaitingPod) -> int:
        """At least how many of ``node``'s servers it takes to cover ``pod``."""
        counts = [
            -(-pod.requests.get(r, Fraction(0)) // most) if most > 0 else 1
            for r, most in self.most[node].items()
        ]
        return max([1, *(int(c) for c in counts)])


def choose_victims(
    waiting: Sequence[WaitingPod],
    holds: Mapping[ServerKey, ServerHold],
    judged: Sequence[Judged],
    min_idle: float,
    helped: frozenset[str] = frozenset(),
) -> list[Victim]:
    """Which servers to stop for which waiting pod (see the module's rules). Waiting pods
    are served in order (longest waiting first, as :func:`demand_data` sorts them); a pod
    that cannot be covered gets no victim at all (a partial stop would not let it start)."""
    eligible = [
        (j, holds[j.key])
        for j in judged
        if j.idle is not None and j.idle >= min_idle and j.protected is None and j.key in holds
    ]
    eligible.sort(key=lambda item: (-(item[0].idle or 0.0), item[0].key))
    # what each eligible server frees and where it runs, as sets: the test of :func:`helps`
    # for thousands of servers and many waiting pods in set operations
    offers = {
        j.key: (
            frozenset(r for r, v in h.requests.items() if v > 0),
            frozenset(h.node_selector.items()),
        )
        for j, h in eligible
        if h.scheduled
    }
    used: set[ServerKey] = set()
    victims: list[Victim] = []
    # per (lacking, nodeSelector): the helping servers by node, each list longest-idle
    # first, built once; servers are dropped from a list as they are used
    groups: dict[tuple[frozenset[str], frozenset[tuple[str, str]]], _Group] = {}
    for pod in waiting:
        if pod.unfreeable or pod.name in helped:
            continue
        signature = (frozenset(pod.lacking), frozenset(pod.node_selector.items()))
        group = groups.get(signature)
        if group is None:
            group = groups[signature] = _Group.of(eligible, offers, *signature)
        best: list[tuple[Judged, ServerHold]] | None = None
        best_rank: tuple[int, float] | None = None
        for node in group.order(used):
            pool = group.pools[node]
            if best_rank is not None and (
                group.fewest(node, pod) >= best_rank[0]
                and -(pool[0][0].idle or 0.0) >= best_rank[1]
            ):
                continue  # it cannot take fewer servers, nor more idle ones
            picked = _cover(pool, pod)
            if picked is None:
                continue
            cover = [pool[i] for i in picked]
            rank = (len(cover), -max(j.idle or 0.0 for j, _ in cover))
            if best_rank is None or rank < best_rank:
                best, best_rank = cover, rank
        for judgement, hold in best or []:
            used.add(judgement.key)
            frees = tuple(r for r in pod.lacking if hold.requests.get(r, Fraction(0)) > 0)
            victims.append(Victim(judgement.key, pod.name, judgement.idle or 0.0, frees))
    return victims
