"""The Kubernetes emulator and the operator harness, proven with a toy kopf operator.

The toy operator lives in a registry local to each test (``kopf.OperatorRegistry()``), so
nothing leaks into kopf's global default registry or into other tests.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import kopf
import pytest

from tests.support.kube import (
    InProcessOperator,
    Kube,
    KubeApiError,
    OperatorCrashedError,
    httpx_client_for,
    kopf_run_command,
    run_operator,
    run_operator_process,
)

pytestmark = pytest.mark.k8s

NS = "toy"
CULLPOLICIES = "hubcull.io/v1alpha1/cullpolicies"
SECRET_TOKEN = "s3cr3t-hub-token"
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"


def cullpolicy(name: str = "toy", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "hubcull.io/v1alpha1",
        "kind": "CullPolicy",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"secretName": "hub-token", "message": "hello"} | spec,
    }


async def seed(kube: Kube) -> None:
    """The namespace and the Secret the toy operator reads."""
    await kube.create_namespace(NS)
    await kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "hub-token", "namespace": NS},
            "data": {"token": base64.b64encode(SECRET_TOKEN.encode()).decode()},
        }
    )


# --- the toy operator ----------------------------------------------------------------------


@dataclasses.dataclass
class LoginBox:
    """Where the login handler stashes kopf's ConnectionInfo for the operator's own calls.

    kopf gives every object a shallow copy of the operator's memo, so a mutable box in the
    memo is shared by all of them and sees re-authentications too.
    """

    info: kopf.ConnectionInfo | None = None


@dataclasses.dataclass
class Trace:
    """What the toy daemons did, for the test to check (written from the operator thread)."""

    started: list[str] = dataclasses.field(default_factory=list)
    stopped: list[tuple[str, kopf.DaemonStoppingReason | None]] = dataclasses.field(
        default_factory=list
    )


def toy_memo() -> kopf.Memo:
    return kopf.Memo(login=LoginBox(), trace=Trace())


def make_toy_registry() -> kopf.OperatorRegistry:
    """A CullPolicy daemon: reads a Secret, reports in .status and in Events, stops on delete."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
        info = kopf.login_with_kubeconfig(**kwargs)  # reads $KUBECONFIG
        memo.login.info = info
        return info

    # On deletion, kopf sets `stopped` and gives the daemon `cancellation_backoff` seconds to
    # return by itself before cancelling it. Without a backoff but with a timeout, kopf
    # cancels it at once (after a few zero-time loop cycles), e.g. in the middle of a request.
    @kopf.daemon(
        "hubcull.io",
        "v1alpha1",
        "cullpolicies",
        registry=registry,
        cancellation_backoff=2.0,
        cancellation_timeout=5.0,
    )
    async def toy_daemon(
        body: kopf.Body,
        spec: kopf.Spec,
        meta: kopf.Meta,
        name: str,
        namespace: str,
        memo: kopf.Memo,
        stopped: kopf.DaemonStopped,
        **_: Any,
    ) -> None:
        memo.trace.started.append(name)
        info: kopf.ConnectionInfo = memo.login.info
        reported: tuple[Any, ...] | None = None
        try:
            async with httpx_client_for(info, timeout=5.0) as client:
                while not stopped:
                    # `spec` and `meta` are live views: kopf updates them on every watch event.
                    response = await client.get(
                        f"/api/v1/namespaces/{namespace}/secrets/{spec['secretName']}"
                    )
                    token = base64.b64decode(response.raise_for_status().json()["data"]["token"])
                    state = (meta.get("generation"), spec.get("message"), len(token))
                    if state != reported:
                        generation, message, length = state
                        response = await client.patch(
                            f"/apis/hubcull.io/v1alpha1/namespaces/{namespace}/cullpolicies/"
                            f"{name}/status",
                            json={
                                "status": {
                                    "observedGeneration": generation,
                                    "message": message,
                                    "tokenLength": length,
                                }
                            },
                            headers={"Content-Type": "application/merge-patch+json"},
                        )
                        response.raise_for_status()
                        kopf.info(body, reason="Observed", message=f"{message} (gen {generation})")
                        reported = state
                    await stopped.wait(float(spec.get("intervalSeconds", 0.05)))
        finally:
            memo.trace.stopped.append((name, stopped.reason))

    return registry


def status_reports(
    kube: Kube, message: str, generation: int, name: str = "toy"
) -> Callable[[], Awaitable[dict[str, Any]]]:
    """A wait_for predicate: the toy's status reports this message for this generation."""

    async def predicate() -> dict[str, Any]:
        obj = await kube.get(CULLPOLICIES, NS, name)
        assert obj is not None
        status = obj.get("status", {})
        assert (status.get("message"), status.get("observedGeneration")) == (message, generation)
        return obj

    return predicate


# --- the toy operator in-process --------------------------------------------------------


async def test_toy_daemon_lifecycle(kube: Kube) -> None:
    await seed(kube)
    memo = toy_memo()
    async with run_operator(kube, make_toy_registry(), namespaces=[NS], memo=memo):
        await kube.create(cullpolicy(message="hello"))
        obj = await kube.wait_for(status_reports(kube, "hello", generation=1))
        assert obj["status"]["tokenLength"] == len(SECRET_TOKEN)
        assert KOPF_FINALIZER in obj["metadata"]["finalizers"]  # daemons always add one
        assert obj["metadata"]["generation"] == 1  # status and finalizers do not bump it

        # kopf posts events asynchronously: poll for them.
        async def observed_event() -> list[dict[str, Any]]:
            events = await kube.events_for(NS, "toy", kind="CullPolicy")
            return [e for e in events if e["reason"] == "Observed" and "hello" in e["message"]]

        [event] = await kube.wait_for(observed_event)
        assert event["type"] == "Normal"
        assert event["involvedObject"]["uid"] == obj["metadata"]["uid"]

        # A spec change bumps the generation; the live `spec` in the daemon sees it.
        patched = await kube.patch(CULLPOLICIES, NS, "toy", {"spec": {"message": "world"}})
        assert patched["metadata"]["generation"] == 2
        await kube.wait_for(status_reports(kube, "world", generation=2))

        # Deletion: kopf stops the daemon, then removes its finalizer; then the object goes.
        deleted = await kube.delete(CULLPOLICIES, NS, "toy")
        assert deleted is not None and deleted["metadata"]["deletionTimestamp"]
        await kube.wait_for(lambda: memo.trace.stopped, message="the daemon to stop")
        await kube.wait_for(lambda: _absent(kube, "toy"), message="the object to be gone")
        assert memo.trace.started == ["toy"]
        [(name, reason)] = memo.trace.stopped
        assert name == "toy" and reason is not None
        assert reason & kopf.DaemonStoppingReason.RESOURCE_DELETED  # exited by itself:
        assert not reason & kopf.DaemonStoppingReason.DAEMON_CANCELLED  # not cancelled

    # The login handler's ConnectionInfo, as the daemon used it for its own API calls.
    assert memo.login.info is not None and memo.login.info.server == kube.url


async def _absent(kube: Kube, name: str) -> bool:
    return await kube.get(CULLPOLICIES, NS, name) is None


async def test_deletion_while_the_operator_is_down_waits_for_the_operator(kube: Kube) -> None:
    """Daemons need kopf's finalizer: without a running operator, deletion hangs."""
    await seed(kube)
    async with run_operator(kube, make_toy_registry(), namespaces=[NS], memo=toy_memo()):
        await kube.create(cullpolicy())
        await kube.wait_for(status_reports(kube, "hello", generation=1))

    # The operator has stopped; its finalizer stays (kopf does not remove it at exit).
    obj = await kube.get(CULLPOLICIES, NS, "toy")
    assert obj is not None and obj["metadata"]["finalizers"] == [KOPF_FINALIZER]
    await kube.delete(CULLPOLICIES, NS, "toy")
    terminating = await kube.get(CULLPOLICIES, NS, "toy")
    assert terminating is not None and terminating["metadata"]["deletionTimestamp"]

    # The next operator start releases it: no daemon is started for an object being deleted.
    memo = toy_memo()
    async with run_operator(kube, make_toy_registry(), namespaces=[NS], memo=memo):
        await kube.wait_for(lambda: _absent(kube, "toy"), message="the object to be deleted")
    assert memo.trace.started == []


async def test_a_stuck_object_can_be_released_by_removing_the_finalizer(kube: Kube) -> None:
    await seed(kube)
    async with run_operator(kube, make_toy_registry(), namespaces=[NS], memo=toy_memo()):
        await kube.create(cullpolicy())
        await kube.wait_for(status_reports(kube, "hello", generation=1))
    await kube.delete(CULLPOLICIES, NS, "toy")
    assert await kube.get(CULLPOLICIES, NS, "toy") is not None
    # What `kubectl patch cullpolicy toy --type=merge -p '{"metadata":{"finalizers":null}}'` does:
    await kube.patch(CULLPOLICIES, NS, "toy", {"metadata": {"finalizers": None}})
    assert await kube.get(CULLPOLICIES, NS, "toy") is None


@pytest.mark.parametrize(
    "login",
    [kopf.login_with_kubeconfig, kopf.login_via_client],
    ids=["login_with_kubeconfig", "login_via_client"],
)
async def test_kopf_logins_read_kubeconfig(kube: Kube, login: Any) -> None:
    """kopf's own login handlers find the emulator via $KUBECONFIG, also the client library's.

    ``kopf.login_via_client`` is the default login of ``kopf.get_default_registry()`` when
    the ``kubernetes`` package is installed.
    """
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(login)

    @kopf.on.create("hubcull.io", "v1alpha1", "cullpolicies", registry=registry)
    def created(spec: kopf.Spec, patch: kopf.Patch, **_: Any) -> None:
        patch.status["echo"] = spec["message"]  # kopf patches the status subresource

    await kube.create_namespace(NS)
    async with run_operator(kube, registry, namespaces=[NS]):
        await kube.create(cullpolicy(message="via kopf's patch"))

        async def echoed() -> bool:
            obj = await kube.get(CULLPOLICIES, NS, "toy")
            return obj is not None and obj.get("status", {}).get("echo") == "via kopf's patch"

        await kube.wait_for(echoed)


async def test_operator_errors_fail_the_test(kube: Kube) -> None:
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(kopf.login_with_kubeconfig)

    @kopf.on.create("hubcull.io", "v1alpha1", "cullpolicies", registry=registry, backoff=0.1)
    def failing(**_: Any) -> None:
        raise RuntimeError("boom")

    await kube.create_namespace(NS)
    with pytest.raises(OperatorCrashedError, match="boom"):
        async with run_operator(kube, registry, namespaces=[NS]):
            await kube.create(cullpolicy())
            await kube.wait_for(lambda: False, timeout=10, message="never")


async def test_a_registry_without_login_is_refused(kube: Kube) -> None:
    with pytest.raises(TypeError, match="no login handlers"):
        async with run_operator(kube, kopf.OperatorRegistry(), namespaces=[NS]):
            pass  # pragma: no cover


# --- peering: two operators with different priorities ---------------------------------------


async def test_peering_pauses_the_lower_priority_operator(kube: Kube) -> None:
    def make_registry(operator: str) -> kopf.OperatorRegistry:
        registry = kopf.OperatorRegistry()
        kopf.on.login(registry=registry)(kopf.login_with_kubeconfig)

        @kopf.on.create("hubcull.io", "v1alpha1", "cullpolicies", registry=registry)
        def created(patch: kopf.Patch, **_: Any) -> None:
            patch.status["handledBy"] = operator

        return registry

    async def handled_by(name: str) -> str | None:
        obj = await kube.get(CULLPOLICIES, NS, name)
        return (obj or {}).get("status", {}).get("handledBy")

    async def peers() -> dict[str, Any]:
        peering = await kube.get("kopf.dev/v1/kopfpeerings", NS, "toy-peering")
        return (peering or {}).get("status", {})

    await kube.create_namespace(NS)
    async with run_operator(
        kube,
        make_registry("low"),
        namespaces=[NS],
        peering="toy-peering",
        priority=10,
        name="low",
        log_level=logging.INFO,
    ) as low:
        async with run_operator(
            kube,
            make_registry("high"),
            namespaces=[NS],
            name="high",
            peering="toy-peering",
            priority=100,
        ):
            await kube.wait_for(lambda: _paused(low), message="the low operator to pause")
            assert sorted(p["priority"] for p in (await peers()).values()) == [10, 100]
            await kube.create(cullpolicy("first"))
            assert await kube.wait_for(lambda: handled_by("first")) == "high"
        # The high-priority operator has left the peering at exit; the low one resumes.
        await kube.wait_for(lambda: _resumed(low), message="the low operator to resume")
        await kube.create(cullpolicy("second"))
        assert await kube.wait_for(lambda: handled_by("second")) == "low"


def _paused(operator: InProcessOperator) -> bool:
    return any("Pausing operations" in r.getMessage() for r in operator.records)


def _resumed(operator: InProcessOperator) -> bool:
    return any("Resuming operations" in r.getMessage() for r in operator.records)


# --- a subprocess operator ----------------------------------------------------------------


TOY_OPERATOR_FILE = """
import kopf

@kopf.on.create("hubcull.io", "v1alpha1", "cullpolicies")
def created(spec, patch, **_):
    patch.status["echo"] = spec["message"]
"""


async def test_subprocess_operator(kube: Kube, tmp_path: Path) -> None:
    """``python -m kopf run`` with kopf's default login (the kubernetes client, $KUBECONFIG)."""
    script = tmp_path / "toy_operator.py"
    script.write_text(textwrap.dedent(TOY_OPERATOR_FILE))
    await kube.create_namespace(NS)
    command = kopf_run_command(script, namespaces=[NS])
    async with run_operator_process(kube, command, log_path=tmp_path / "operator.log") as op:
        await kube.create(cullpolicy(message="from a subprocess"))

        async def echoed() -> bool:
            obj = await kube.get(CULLPOLICIES, NS, "toy")
            return (obj or {}).get("status", {}).get("echo") == "from a subprocess"

        await kube.wait_for(echoed, timeout=30)
    assert "Handler 'created' succeeded" in op.output()
    assert op.returncode in (0, -15)


# --- the emulator's API-server semantics, without kopf ----------------------------------------


async def test_writes_set_uid_resource_version_and_generation(kube: Kube) -> None:
    await kube.create_namespace(NS)
    created = await kube.create(cullpolicy() | {"status": {"ignored": True}})
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1
    assert "status" not in created  # the status subresource ignores status on create
    rv0 = int(meta["resourceVersion"])

    # Main resource: spec changes bump the generation; status is ignored.
    main = await kube.patch(
        CULLPOLICIES, NS, "toy", {"spec": {"message": "x"}, "status": {"ignored": True}}
    )
    assert main["metadata"]["generation"] == 2 and "status" not in main
    # Status subresource: only status changes; no generation bump.
    status = await kube.patch(
        CULLPOLICIES,
        NS,
        "toy",
        {"status": {"phase": "Ok"}, "spec": {"message": "ignored"}},
        subresource="status",
    )
    assert status["status"] == {"phase": "Ok"} and status["spec"]["message"] == "x"
    assert status["metadata"]["generation"] == 2
    # Metadata-only changes do not bump the generation either.
    labelled = await kube.patch(CULLPOLICIES, NS, "toy", {"metadata": {"labels": {"a": "b"}}})
    assert labelled["metadata"]["generation"] == 2
    # No-op writes do not even change the resourceVersion.
    again = await kube.patch(CULLPOLICIES, NS, "toy", {"metadata": {"labels": {"a": "b"}}})
    assert again["metadata"]["resourceVersion"] == labelled["metadata"]["resourceVersion"]

    versions = [int(o["metadata"]["resourceVersion"]) for o in (main, status, labelled)]
    assert rv0 < versions[0] < versions[1] < versions[2]
    # generateName: a random 5-character suffix.
    secret = await kube.create(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"generateName": "s-", "namespace": NS}}
    )
    assert secret["metadata"]["name"].startswith("s-") and len(secret["metadata"]["name"]) == 7


async def test_json_patch_test_failure_is_422_and_stale_versions_409(kube: Kube) -> None:
    await kube.create_namespace(NS)
    obj = await kube.create(cullpolicy())
    rv = obj["metadata"]["resourceVersion"]
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]},
    ]
    patched = await kube.patch(CULLPOLICIES, NS, "toy", json_patch=ops)
    assert patched["metadata"]["finalizers"] == ["x/y"]
    with pytest.raises(KubeApiError) as e422:
        await kube.patch(CULLPOLICIES, NS, "toy", json_patch=ops)  # rv is stale now
    assert e422.value.status == 422
    with pytest.raises(KubeApiError) as e409:
        await kube.patch(CULLPOLICIES, NS, "toy", {"metadata": {"resourceVersion": rv}})
    assert e409.value.status == 409
    with pytest.raises(KubeApiError) as e409_create:
        await kube.create(cullpolicy())
    assert e409_create.value.status == 409


async def test_finalizers_block_deletion(kube: Kube) -> None:
    await kube.create_namespace(NS)
    await kube.create(
        cullpolicy() | {"metadata": {"name": "toy", "namespace": NS, "finalizers": ["a/b", "c/d"]}}
    )
    first = await kube.delete(CULLPOLICIES, NS, "toy")
    assert first is not None
    stamp = first["metadata"]["deletionTimestamp"]
    again = await kube.delete(CULLPOLICIES, NS, "toy")  # idempotent while terminating
    assert again is not None and again["metadata"]["deletionTimestamp"] == stamp
    with pytest.raises(KubeApiError) as no_new:
        await kube.patch(CULLPOLICIES, NS, "toy", {"metadata": {"finalizers": ["a/b", "e/f"]}})
    assert no_new.value.status == 422
    await kube.patch(CULLPOLICIES, NS, "toy", {"metadata": {"finalizers": ["c/d"]}})
    assert await kube.get(CULLPOLICIES, NS, "toy") is not None
    await kube.patch(
        CULLPOLICIES, NS, "toy", json_patch=[{"op": "remove", "path": "/metadata/finalizers/0"}]
    )
    assert await kube.get(CULLPOLICIES, NS, "toy") is None
    # kmock keeps the history: created, terminating, one finalizer, none, deleted.
    history = kube.emulator.objects[CULLPOLICIES, NS, "toy"].history
    assert len(history) == 5 and history[-1] is None


async def _watch(kube: Kube, path: str, params: dict[str, str], count: int) -> list[Any]:
    """Read ``count`` events from a watch stream."""
    events: list[Any] = []
    async with kube.client.stream("GET", path, params={"watch": "true"} | params) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.strip():
                events.append(json.loads(line))
            if len(events) >= count:
                break
    return events


async def test_watch_resumes_from_a_resource_version(kube: Kube) -> None:
    await kube.create_namespace(NS)
    path = kube.path(CULLPOLICIES, NS)
    listed = await kube.request("GET", path)
    since = listed["metadata"]["resourceVersion"]
    await kube.create(
        cullpolicy("a") | {"metadata": {"name": "a", "namespace": NS, "labels": {"team": "x"}}}
    )
    await kube.create(cullpolicy("b"))
    await kube.patch(CULLPOLICIES, NS, "a", {"spec": {"message": "changed"}})
    await kube.delete(CULLPOLICIES, NS, "b")

    replayed = await _watch(kube, path, {"resourceVersion": since}, count=4)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in replayed] == [
        ("ADDED", "a"),
        ("ADDED", "b"),
        ("MODIFIED", "a"),
        ("DELETED", "b"),
    ]
    # Closed streams are cleaned up server-side (aiohttp cancels the handler).
    await kube.wait_for(lambda: kube.emulator.watching(CULLPOLICIES, NS) == 0)
    # Without a resourceVersion: the current objects as ADDED, then live changes.
    watching = asyncio.create_task(_watch(kube, path, {"labelSelector": "team=x"}, count=2))
    await kube.wait_for(lambda: kube.emulator.watching(CULLPOLICIES, NS) > 0)
    await kube.patch(CULLPOLICIES, NS, "a", {"metadata": {"labels": {"team": "y"}}})
    initial, moved_out = await asyncio.wait_for(watching, timeout=5)
    assert (initial["type"], initial["object"]["metadata"]["name"]) == ("ADDED", "a")
    assert moved_out["type"] == "DELETED"  # modified out of the label selection
    # After compaction, old versions are gone: 410 as an ERROR event.
    kube.emulator.compact()
    [gone] = await _watch(kube, path, {"resourceVersion": since}, count=1)
    assert gone["type"] == "ERROR" and gone["object"]["code"] == 410


async def test_namespaces_and_discovery(kube: Kube) -> None:
    await kube.create_namespace(NS)
    assert [ns["metadata"]["name"] for ns in await kube.list("v1/namespaces")] == [NS]
    namespace = await kube.get("v1/namespaces", None, NS)
    assert namespace is not None and namespace["kind"] == "Namespace"
    core = await kube.request("GET", "/api/v1")
    assert core["groupVersion"] == "v1"
    group = await kube.request("GET", "/apis/hubcull.io/v1alpha1")
    names = {r["name"]: r for r in group["resources"]}
    assert names["cullpolicies"]["shortNames"] == ["cullpol"]
    assert names["cullpolicies"]["namespaced"] is True
    assert "cullpolicies/status" in names
    peering = await kube.request("GET", "/apis/kopf.dev/v1")
    assert {r["name"] for r in peering["resources"]} == {"kopfpeerings", "clusterkopfpeerings"}


async def test_fault_injection_with_kmock_reactions(kube: Kube) -> None:
    """kmock's DSL still works: a reaction answers instead of the emulator (no state change)."""
    await kube.create_namespace(NS)
    kube.emulator["post", kube.emulator.resource(CULLPOLICIES)][:1] << 500
    with pytest.raises(KubeApiError) as e500:
        await kube.create(cullpolicy())
    assert e500.value.status == 500
    assert await kube.get(CULLPOLICIES, NS, "toy") is None
    await kube.create(cullpolicy())  # the reaction was for one request only
    assert await kube.get(CULLPOLICIES, NS, "toy") is not None


class CountingLog(list):
    """A request log that counts how often it is read through."""

    reads = 0

    def __iter__(self) -> Any:
        self.reads += 1
        return super().__iter__()


async def test_serving_does_not_replay_the_request_log(kube: Kube) -> None:
    """kmock tests a reaction by replaying every request served so far through its filters,
    so each request costs more than the last (a 2,000-pod benchmark slowed to a pod a
    second). Filter and fallback reactions are answered without reading the log; a sliced
    reaction, which depends on the earlier requests, still reads it and still works."""
    await kube.create_namespace(NS)
    emulator = kube.emulator
    log = CountingLog(emulator._requests)
    emulator._requests = log
    policies = emulator.resource(CULLPOLICIES)
    emulator["get", policies][lambda request: request.name == "broken"] << 503
    await kube.create(cullpolicy())
    for _ in range(20):
        assert await kube.get(CULLPOLICIES, NS, "toy") is not None
    with pytest.raises(KubeApiError) as e503:
        await kube.get(CULLPOLICIES, NS, "broken")
    assert e503.value.status == 503
    assert log.reads == 0
    emulator["delete", policies][:1] << 500
    with pytest.raises(KubeApiError) as e500:
        await kube.delete(CULLPOLICIES, NS, "toy")
    assert e500.value.status == 500 and log.reads > 0
    await kube.delete(CULLPOLICIES, NS, "toy")
    assert await kube.get(CULLPOLICIES, NS, "toy") is None


ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


def access_review(verb: str, resource: str, namespace: str = NS, group: str = "") -> dict:
    """What ``kubectl auth can-i VERB RESOURCE -n NAMESPACE`` posts."""
    attributes = {"namespace": namespace, "verb": verb, "group": group, "resource": resource}
    return {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attributes},
    }


async def test_rbac_refusals_answer_403_and_access_reviews(kube: Kube) -> None:
    """Everything is allowed until a test denies it; a refused request gets the API server's
    403 and a SelfSubjectAccessReview says the same; allow() undoes deny()."""
    await kube.create_namespace(NS)
    await kube.create_namespace("other")
    assert await kube.request("GET", f"/api/v1/namespaces/{NS}/events") is not None
    review = await kube.request("POST", ACCESS_REVIEWS, json=access_review("create", "events"))
    assert review["kind"] == "SelfSubjectAccessReview" and review["status"]["allowed"] is True
    assert review["spec"]["resourceAttributes"]["resource"] == "events"

    kube.emulator.deny("create", "events", NS)
    kube.emulator.deny("list", "pods")  # in every namespace
    event = {"metadata": {"generateName": "x."}, "reason": "Test", "message": "m"}
    with pytest.raises(KubeApiError) as refused:
        await kube.request("POST", f"/api/v1/namespaces/{NS}/events", json=event)
    assert refused.value.status == 403 and refused.value.body["reason"] == "Forbidden"
    assert refused.value.body["message"] == (
        'events is forbidden: User "system:serviceaccount:hubcull:hubcull" cannot create '
        f'resource "events" in API group "" in the namespace "{NS}"'
    )
    await kube.request("POST", "/api/v1/namespaces/other/events", json=event)  # not there
    with pytest.raises(KubeApiError) as listing:
        await kube.list("v1/pods", "other")
    assert listing.value.status == 403
    assert await kube.list("v1/events", NS) == []  # listing stays allowed; nothing created

    answers = {
        (verb, resource, namespace): (
            await kube.request(
                "POST", ACCESS_REVIEWS, json=access_review(verb, resource, namespace)
            )
        )["status"]
        for verb, resource, namespace in [
            ("create", "events", NS),
            ("create", "events", "other"),
            ("list", "events", NS),
            ("list", "pods", "other"),
            ("create", "events", ""),  # in every namespace: not if refused in one
        ]
    }
    assert answers == {
        ("create", "events", NS): {"allowed": False},
        ("create", "events", "other"): {"allowed": True, "reason": ANY_REASON},
        ("list", "events", NS): {"allowed": True, "reason": ANY_REASON},
        ("list", "pods", "other"): {"allowed": False},
        ("create", "events", ""): {"allowed": False},
    }
    apps = access_review("create", "events", group="events.k8s.io")
    assert (await kube.request("POST", ACCESS_REVIEWS, json=apps))["status"]["allowed"] is True

    kube.emulator.allow("create", "events", NS)
    review = await kube.request("POST", ACCESS_REVIEWS, json=access_review("create", "events"))
    assert review["status"]["allowed"] is True
    await kube.request("POST", f"/api/v1/namespaces/{NS}/events", json=event)

    with pytest.raises(KubeApiError) as invalid:
        await kube.request("POST", ACCESS_REVIEWS, json={"spec": {}})
    assert invalid.value.status == 422 and "exactly one of" in invalid.value.body["message"]
    discovery = await kube.request("GET", "/apis/authorization.k8s.io/v1")
    [declared] = discovery["resources"]
    assert (declared["name"], declared["verbs"], declared["namespaced"]) == (
        "selfsubjectaccessreviews",
        ["create"],
        False,
    )


class _AnyReason(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)

    __hash__ = str.__hash__


ANY_REASON = _AnyReason()


async def test_httpx_client_for_a_connection_info(kube: Kube) -> None:
    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    assert info is not None and info.server == kube.url and info.token
    async with httpx_client_for(info) as client:
        response = await client.get("/api/v1/namespaces")
    assert response.status_code == 200
    authorization = list(kube.emulator)[-1].headers["Authorization"]
    assert authorization == f"Bearer {info.token}"
