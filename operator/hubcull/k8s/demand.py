"""``spec.demand`` in the operator: a watch of each namespace's singleuser pods, wake-ups of
the policies when a pod has waited long enough, and the engine's
:class:`~hubcull.engine.pods.DemandSource` on top of the watch.

The watch is our own list-then-watch loop rather than a kopf handler: it runs only in
namespaces that have a policy with ``spec.demand`` (kopf would watch pods for every policy
and need the RBAC everywhere), a refusal names the verb that RBAC refused (kopf only logs
it), and every reconnect after an error lists the pods again and replaces the index, so a
pod deleted while the watch was down does not linger. A stream the API server ends normally
(``timeoutSeconds``) is resumed from its last ``resourceVersion``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from ..engine.errors import PodsUnavailable
from ..engine.rules.demand import DemandSpec, classify, pod_facts
from ..engine.signals.pods import DemandObservation
from .kubeapi import KubeAPI, KubeError, KubeForbidden, WatchExpired
from .pods import SERVER_SELECTOR

log = logging.getLogger(__name__)

FORBIDDEN_ADVICE = (
    "give the operator's ServiceAccount get, list and watch on pods and create and list on "
    "events in this namespace (Helm: --set inspectServers=true)"
)
#: How long one watch request lasts (the API server ends it; the watch resumes from there).
WATCH_SECONDS = 300
#: How long a sweep waits for a new watch's first listing before it gives up.
SYNC_TIMEOUT_SECONDS = 10.0
#: Pause before listing again after a failure (doubling up to the maximum).
RETRY_SECONDS, MAX_RETRY_SECONDS = 1.0, 30.0
#: How long RBAC's yes to ``events create`` is trusted. A no (or no answer) is asked again
#: at the next sweep, so a role granted after a ``Forbidden`` takes effect at once.
ACCESS_REVIEW_SECONDS = 300.0
#: After a server was stopped for a pod, no other is stopped for it for this long: the Hub's
#: stop and the pod's termination (30 s grace by default) take time, and the pod stays
#: Unschedulable until the scheduler places it in the room made.
HELPED_SECONDS = 300.0
#: After a sweep could not read what spec.demand needs (RBAC refused a verb, the API server
#: failed), a pod that still waits wakes the policy again after this long, doubling up to the
#: maximum: room is freed soon after a role is granted, without a sweep every few seconds
#: while it is not.
RETRY_AFTER_FAILURE_SECONDS, MAX_RETRY_AFTER_FAILURE_SECONDS = 30.0, 300.0
#: The autoscaler's Events about pods that the demand rules read.
SCALE_UP_REASONS = ("TriggeredScaleUp", "NotTriggerScaleUp")


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class PodWatch:
    """The singleuser pods of one namespace, kept current by a list and a watch."""

    def __init__(
        self, kube: KubeAPI, namespace: str, on_change: Callable[[str | None], None]
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.on_change = on_change  # a pod's name, or None after a (re)listing
        self.on_deleted: Callable[[str], None] = lambda name: None
        self.pods: dict[str, dict[str, Any]] = {}
        self.synced = asyncio.Event()
        #: (verb RBAC refused, message) while the watch cannot run
        self.problem: tuple[str, str] | None = None
        self.lists = 0
        self.watches = 0
        self._offsets: deque[float] = deque(maxlen=20)
        self._task: asyncio.Task[None] | None = None
        #: how long the API server keeps one watch stream open before it ends it
        self.watch_seconds = WATCH_SECONDS

    def start(self) -> None:
        """Start listing and watching in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"pod-watch-{self.namespace}")

    def cancel(self) -> None:
        """Stop watching (without waiting for the watch to end)."""
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        """Stop watching and wait until it has."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def note_date(self, header: str | None) -> None:
        """Learn the API server's clock from a response's ``Date`` header."""
        if not header:
            return
        try:
            server = parsedate_to_datetime(header)
        except (TypeError, ValueError):
            return
        if server.tzinfo is None:
            server = server.replace(tzinfo=timezone.utc)
        self._offsets.append((server - _utcnow()).total_seconds())

    def api_now(self) -> datetime:
        """The API server's clock now, as best known: ``Date`` has whole seconds, so the
        largest recent offset is the closest (it never runs ahead of the server)."""
        offset = max(self._offsets, default=0.0)
        return _utcnow() + timedelta(seconds=offset)

    async def _run(self) -> None:
        retry = RETRY_SECONDS
        while True:
            try:
                await self._list_and_watch()
            except asyncio.CancelledError:
                raise
            except WatchExpired:
                continue  # list again at once
            except KubeForbidden as exc:
                verb = "pods watch" if "watch" in str(exc) else "pods list"
                if self.problem is None:
                    log.warning("pod watch in %s: RBAC refused %s", self.namespace, verb)
                self.problem = (verb, str(exc))
                self.synced.set()
                await asyncio.sleep(MAX_RETRY_SECONDS)
                continue
            except (KubeError, httpx.HTTPError, ValueError) as exc:
                log.warning(
                    "pod watch in %s broke (%s); listing again in %gs",
                    self.namespace,
                    str(exc) or type(exc).__name__,
                    retry,
                )
            await asyncio.sleep(retry)
            retry = min(retry * 2, MAX_RETRY_SECONDS)

    async def _list_and_watch(self) -> None:
        items, version, date = await self.kube.list_pods_at(self.namespace, SERVER_SELECTOR)
        self.lists += 1
        self.note_date(date)
        self.pods = {
            str(p["metadata"]["name"]): p for p in items if (p.get("metadata") or {}).get("name")
        }
        self.problem = None
        self.synced.set()
        self.on_change(None)
        while True:
            self.watches += 1
            stream = self.kube.watch_pods(
                self.namespace, SERVER_SELECTOR, version, self.watch_seconds
            )
            async for event in stream:
                pod = event.get("object") or {}
                metadata = pod.get("metadata") or {}
                version = metadata.get("resourceVersion") or version
                name = metadata.get("name")
                if event.get("type") == "BOOKMARK" or not name:
                    continue
                if event.get("type") == "DELETED":
                    self.pods.pop(name, None)
                    self.on_deleted(name)
                else:
                    self.pods[name] = pod
                self.on_change(name)


Waker = Callable[[str, str], None]  # (namespace, policy name)


class DemandHub:
    """The policies with ``spec.demand``, one pod watch per namespace that has any, and the
    timers that wake a policy when one of its pods has waited ``after``."""

    def __init__(self, kube: KubeAPI, wake: Waker) -> None:
        self.kube = kube
        self.wake = wake
        self.policies: dict[tuple[str, str], DemandSpec] = {}
        self.watches: dict[str, PodWatch] = {}
        self._timers: dict[tuple[str, str, str], asyncio.TimerHandle] = {}
        self._woken: set[tuple[str, str, str, datetime | None]] = set()
        self._allowed_at: dict[str, float] = {}  # namespace -> when RBAC last said yes
        #: policies in a sweep that has not read the pods yet: that sweep will see a pod
        #: that starts waiting now, so it needs no wake-up (which would sweep twice)
        self._unread: set[tuple[str, str]] = set()
        self._freed: dict[tuple[str, str, str], float] = {}
        #: policies whose last demand observation failed: the delay and its wake-up timer
        self._retries: dict[tuple[str, str], tuple[float, asyncio.TimerHandle]] = {}

    def sweep_starts(self, namespace: str, name: str) -> None:
        """A sweep of the policy begins (it will read the pods)."""
        self._unread.add((namespace, name))

    def sweep_ends(self, namespace: str, name: str) -> None:
        """The sweep has ended (if it never read the pods, wake-ups go through again)."""
        self._unread.discard((namespace, name))

    def register(self, namespace: str, name: str, spec: DemandSpec | None) -> None:
        """The policy's current ``spec.demand`` (``None``: it has none, or no longer)."""
        key = (namespace, name)
        if spec is None:
            self.unregister(namespace, name)
            return
        changed = self.policies.get(key) != spec
        self.policies[key] = spec
        watch = self.watches.get(namespace)
        if watch is None:
            watch = PodWatch(self.kube, namespace, lambda pod: self._changed(namespace, pod))
            watch.on_deleted = lambda pod: self._forget(namespace, pod)
            self.watches[namespace] = watch
            watch.start()
        elif changed:
            self._changed(namespace, None)

    def unregister(self, namespace: str, name: str) -> None:
        """Forget a policy (deleted, or without ``spec.demand`` now)."""
        if self.policies.pop((namespace, name), None) is None:
            return
        for key in [k for k in self._timers if k[:2] == (namespace, name)]:
            self._timers.pop(key).cancel()
        self.observed(namespace, name)
        if not any(ns == namespace for ns, _ in self.policies):
            watch = self.watches.pop(namespace, None)
            if watch is not None:
                watch.cancel()

    async def close(self) -> None:
        """Stop every watch and timer (operator shutdown)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for _, retry in self._retries.values():
            retry.cancel()
        self._retries.clear()
        watches, self.watches = list(self.watches.values()), {}
        await asyncio.gather(*(w.stop() for w in watches))

    def _forget(self, namespace: str, pod: str) -> None:
        self._woken = {w for w in self._woken if w[0] != namespace or w[2] != pod}

    def _changed(self, namespace: str, pod: str | None) -> None:
        watch = self.watches.get(namespace)
        if watch is None:
            return
        pods = list(watch.pods) if pod is None else [pod]
        if pod is None:  # a new listing: pods gone meanwhile lose their timers
            for key in [k for k in self._timers if k[0] == namespace and k[2] not in watch.pods]:
                self._timers.pop(key).cancel()
        for (ns, name), spec in list(self.policies.items()):
            if ns == namespace:
                for pod_name in pods:
                    self._evaluate(ns, name, spec, pod_name)

    def _evaluate(self, namespace: str, name: str, spec: DemandSpec, pod_name: str) -> None:
        """Wake the policy if the pod waits now (once per Unschedulable stretch), or set a
        timer for when it will."""
        watch = self.watches.get(namespace)
        key = (namespace, name, pod_name)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        pod = watch.pods.get(pod_name) if watch is not None else None
        if watch is None or pod is None or self.policies.get((namespace, name)) != spec:
            return
        facts = pod_facts(pod)
        wait = classify(facts, spec, watch.api_now())
        if wait.state == "waiting":
            stretch = (namespace, name, pod_name, facts.unschedulable_since)
            if stretch not in self._woken:
                self._woken.add(stretch)
                if (namespace, name) in self._unread:
                    return  # the sweep under way reads the pods after this
                log.info("pod %s/%s waits for room: waking policy %s", namespace, pod_name, name)
                self.wake(namespace, name)
        elif wait.state == "later" and wait.due is not None:
            delay = max((wait.due - watch.api_now()).total_seconds(), 0.0)
            loop = asyncio.get_running_loop()
            self._timers[key] = loop.call_later(
                delay, self._evaluate, namespace, name, spec, pod_name
            )

    def failed(self, namespace: str, name: str) -> None:
        """The policy's sweep could not observe the pods: wake it again later if a pod
        still waits then (a pod that woke it once would not wake it again)."""
        key = (namespace, name)
        loop = asyncio.get_running_loop()
        delay, timer = self._retries.get(key, (0.0, None))
        if timer is not None and not timer.cancelled() and timer.when() > loop.time():
            return  # a retry is already due (several failures in one sweep count once)
        delay = min(max(delay * 2, RETRY_AFTER_FAILURE_SECONDS), MAX_RETRY_AFTER_FAILURE_SECONDS)
        self._retries[key] = (delay, loop.call_later(delay, self._retry, namespace, name))

    def observed(self, namespace: str, name: str) -> None:
        """The policy's sweep observed the pods (or the policy is gone): no retry."""
        entry = self._retries.pop((namespace, name), None)
        if entry is not None:
            entry[1].cancel()

    def _retry(self, namespace: str, name: str) -> None:
        watch, spec = self.watches.get(namespace), self.policies.get((namespace, name))
        if watch is None or spec is None:
            return
        now = watch.api_now()
        waiting = [
            pod
            for pod in watch.pods.values()
            if classify(pod_facts(pod), spec, now).state == "waiting"
        ]
        if waiting:
            log.info(
                "%d pod(s) in %s still wait for room after a failed sweep: waking policy %s",
                len(waiting),
                namespace,
                name,
            )
            self.wake(namespace, name)

    async def cached_pods(self, namespace: str) -> list[dict[str, Any]] | None:
        """The namespace's singleuser pods from its watch, if one runs there (waiting for its
        first listing, as a demand sweep does) and is in sync (``None`` otherwise: list them
        instead)."""
        watch = self.watches.get(namespace)
        if watch is None:
            return None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(watch.synced.wait(), SYNC_TIMEOUT_SECONDS)
        if not watch.synced.is_set() or watch.problem is not None:
            return None
        return list(watch.pods.values())

    def source(self, namespace: str, name: str) -> KubeDemandSource:
        """The engine's view of the namespace's waiting pods, for one policy's sweep."""
        return KubeDemandSource(self, namespace, name)

    def helped(self, source: KubeDemandSource) -> frozenset[str]:
        """Pods a server was stopped for within :data:`HELPED_SECONDS`, for this policy."""
        now = time.monotonic()
        for key in [k for k, t in self._freed.items() if now - t >= HELPED_SECONDS]:
            del self._freed[key]
        return frozenset(
            pod for ns, name, pod in self._freed if (ns, name) == (source.namespace, source.policy)
        )

    async def may_post_events(self, namespace: str) -> bool | None:
        """Whether RBAC lets the operator create Events in ``namespace`` (``None``: unknown).
        A yes is trusted for :data:`ACCESS_REVIEW_SECONDS`; anything else is asked again."""
        said_yes = self._allowed_at.get(namespace)
        now = time.monotonic()
        if said_yes is not None and now - said_yes < ACCESS_REVIEW_SECONDS:
            return True
        allowed = await self.kube.may(namespace, "create", "events")
        if allowed is True:
            self._allowed_at[namespace] = now
        else:
            self._allowed_at.pop(namespace, None)
        return allowed


def _forbidden(namespace: str, verb: str) -> PodsUnavailable:
    return PodsUnavailable(
        f"RBAC refused {verb} in namespace {namespace}, which spec.demand needs",
        reason="Forbidden",
        advice=FORBIDDEN_ADVICE,
    )


class KubeDemandSource:
    """:class:`~hubcull.engine.pods.DemandSource` on a namespace's pod watch: the pods from
    the watch's index (no request), the autoscaler's Events (two small lists) per sweep."""

    def __init__(self, hub: DemandHub, namespace: str, policy: str) -> None:
        self.hub = hub
        self.namespace = namespace
        self.policy = policy

    async def observe(self) -> DemandObservation:
        """The namespace's singleuser pods and the scale-up Events about pods. If they
        cannot be read, the policy is woken again later while a pod waits."""
        try:
            observation = await self._observe()
        except PodsUnavailable:
            self.hub.failed(self.namespace, self.policy)
            raise
        self.hub.observed(self.namespace, self.policy)
        return observation

    async def _observe(self) -> DemandObservation:
        watch = self.hub.watches.get(self.namespace)
        if watch is None:
            raise PodsUnavailable(f"no pod watch runs in namespace {self.namespace}")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(watch.synced.wait(), SYNC_TIMEOUT_SECONDS)
        if watch.problem is not None:
            raise _forbidden(self.namespace, watch.problem[0])
        if not watch.synced.is_set():
            raise PodsUnavailable(
                f"the pods of namespace {self.namespace} could not be listed within "
                f"{SYNC_TIMEOUT_SECONDS:g}s"
            )
        kube = self.hub.kube
        try:
            answers = await asyncio.gather(
                *(kube.list_events(self.namespace, f"reason={r}") for r in SCALE_UP_REASONS)
            )
        except KubeForbidden:
            raise _forbidden(self.namespace, "events list") from None
        except (KubeError, httpx.HTTPError, ValueError) as exc:
            detail = str(exc) or type(exc).__name__
            raise PodsUnavailable(f"listing the autoscaler's Events failed: {detail}") from None
        events: list[Mapping[str, Any]] = []
        for items, date in answers:
            watch.note_date(date)
            events += [e for e in items if e.get("reason") in SCALE_UP_REASONS]
        if await self.hub.may_post_events(self.namespace) is False:
            raise _forbidden(self.namespace, "events create")
        self.hub._unread.discard((self.namespace, self.policy))  # from now on, wake it
        return DemandObservation(
            list(watch.pods.values()), events, watch.api_now(), self.hub.helped(self)
        )

    def freed(self, pods: Sequence[str]) -> None:
        """Remember that servers were stopped for ``pods`` just now."""
        now = time.monotonic()
        for pod in pods:
            self.hub._freed[(self.namespace, self.policy, pod)] = now

    async def read_pod(self, name: str) -> Mapping[str, Any] | None:
        """The pod as the API server has it now."""
        try:
            return await self.hub.kube.read_pod(self.namespace, name)
        except (KubeError, httpx.HTTPError, ValueError) as exc:
            self.hub.failed(self.namespace, self.policy)
            if isinstance(exc, KubeForbidden):
                raise _forbidden(self.namespace, "pods get") from None
            raise PodsUnavailable(f"reading pod {name} failed: {exc}") from None
