"""Secrets hygiene and least privilege.

* The Hub token never shows up in logs (DEBUG included, in-process and in ``hubcull run`` /
  ``hubcull sweep`` subprocesses), events, status, annotations, exception messages or metrics,
  even when the Hub (or something in front of it) echoes the request headers back.
* The RBAC of the chart and of ``deploy/rbac/`` grants exactly what the operator uses: the
  (apiGroup, resource, verb) triples are recorded from the requests a real ``hubcull run``
  makes to the Kubernetes API emulator while it exercises every code path that talks to
  Kubernetes (sweep: Secret get, status patch, events; policy deletion; shutdown: finalizer
  release; peering; all-namespaces scanning).
* Secrets are read with ``get`` only, in the policy's own namespace: a policy cannot read
  another namespace's Secret.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets as pysecrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import generate_latest

from tests.support.faultproxy import Fault, fault_proxy
from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.kube import KUBE_CONTEXT, Kube, run_operator_process
from tests.support.leaks import Capture, assert_absent
from tests.support.operator_env import (
    CULLPOLICIES,
    NS,
    condition,
    cullpolicy,
    hubcull_operator,
    policy_status,
    secret,
)
from tests.support.scenario import ago, populate
from tests.support.webhook import WebhookReceiver

HUBCULL = str(Path(sys.executable).with_name("hubcull"))
REPO = Path(__file__).resolve().parents[1]
HOUR = 3600


def distinctive_token() -> str:
    return "hubcull-canary-" + pysecrets.token_hex(16)


@pytest.fixture
def debug_logs() -> Iterator[Capture]:
    capture = Capture()
    root = logging.getLogger()
    names = ["", "kopf", "httpx", "httpcore", "hubcull", "aiohttp", "asyncio"]
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    root.addHandler(capture)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


# --------------------------------------------------------------------------------------
# the token never leaks
# --------------------------------------------------------------------------------------


@pytest.mark.k8s
@pytest.mark.hub
async def test_token_appears_nowhere(
    kube: Kube, hub: Hub, debug_logs: Capture, tmp_path: Path, unused_tcp_port: int
) -> None:
    await populate(hub, {("idle", ""): 2 * HOUR, ("busy", ""): 60})
    token = await hub.token(MINIMAL_SCOPES)
    canary = distinctive_token()  # not a Hub token: for the Secret with whitespace inside
    async with (
        fault_proxy(hub.public_url) as echo,
        fault_proxy(hub.public_url) as broken,
        hubcull_operator(kube, log_level=logging.DEBUG) as (operator, memo),
    ):
        # an upstream that echoes the request headers (Authorization included) in its error
        echo.inject(Fault("echo"))
        # and one that breaks connections mid-body (exceptions with httpx's messages)
        broken.inject(Fault("cut", r"^GET /hub/api/users"))
        memo["metrics"].serve(unused_tcp_port, addr="127.0.0.1")
        await kube.create(secret(token))
        await kube.create(secret(f"{canary} tail", name="spaced", key="token"))
        await kube.create(cullpolicy(hub, name="good", every="10s"))
        await kube.create(cullpolicy(echo.api_url, name="echo", every="10s"))
        await kube.create(
            cullpolicy(broken.api_url, name="broken", every="10s", hub={"requestTimeout": "1s"})
        )
        spaced = cullpolicy(hub, name="spaced", every="10s")
        spaced["spec"]["hub"]["tokenSecretRef"] = {"name": "spaced", "key": "token"}
        await kube.create(spaced)
        expected = {
            "good": "SweepSucceeded",
            "echo": "Unauthorized",
            "broken": "HubUnreachable",
            "spaced": "TokenSecretMissing",
        }

        async def all_reported() -> dict[str, dict]:
            statuses = {name: await policy_status(kube, name) for name in expected}
            for name, reason in expected.items():
                assert condition(statuses[name], "Ready").get("reason") == reason, statuses
            return statuses

        statuses = await kube.wait_for(all_reported, timeout=60)
        assert statuses["good"]["culledTotal"] == 1
        assert "whitespace inside the token" in condition(statuses["spaced"], "Ready")["message"]
        # the echo really sent the token back: hubcull masked it
        assert "authorization: token ***" in condition(statuses["echo"], "Ready")["message"]
        assert any(s.headers.get("authorization") == f"token {token}" for s in echo.seen)

        async def events_posted() -> list[dict]:
            events = await kube.list("v1/events", NS)
            reasons = {e["reason"] for e in events}
            assert {"Culled", "SweepFailed"} <= reasons, reasons
            return events

        events = await kube.wait_for(events_posted)
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"http://127.0.0.1:{unused_tcp_port}/metrics")).text
        policies = await kube.list(CULLPOLICIES, NS)
    assert "hubcull_sweeps_total" in metrics
    # every object the emulator holds, except the Secrets themselves (there it belongs)
    stored = [
        obj
        for resource in ("v1/events", CULLPOLICIES, "v1/namespaces")
        for obj in await kube.list(resource)
    ]
    logs = "\n".join(debug_logs.lines)
    assert len(debug_logs.lines) > 100 and "DEBUG kopf" in logs and "DEBUG httpcore" in logs
    for value in (token, canary):
        assert_absent(value, "the logs", logs)
        assert_absent(
            value,
            "the operator thread's records",
            "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in operator.records),
        )
        assert_absent(value, "events", yaml.safe_dump(events))
        assert_absent(value, "status and annotations", yaml.safe_dump(policies))
        assert_absent(value, "stored objects", yaml.safe_dump(stored))
        assert_absent(value, "metrics", metrics)


@pytest.mark.k8s
@pytest.mark.hub
async def test_token_not_in_debug_output_of_hubcull_run_and_sweep(
    kube: Kube, hub: Hub, tmp_path: Path
) -> None:
    await populate(hub, {("idle", ""): 2 * HOUR})
    token = await hub.token(MINIMAL_SCOPES)
    async with fault_proxy(hub.public_url) as echo:
        echo.inject(Fault("echo", r"^GET /hub/api/users"))
        await kube.create_namespace(NS)
        await kube.create(secret(token))
        await kube.create(cullpolicy(hub, name="good", every="10s"))
        await kube.create(cullpolicy(echo.api_url, name="echo", every="10s"))
        log = tmp_path / "run.log"
        async with run_operator_process(
            kube, [HUBCULL, "-vv", "run", "--namespace", NS], log_path=log
        ):

            async def both_swept() -> bool:
                good = await policy_status(kube, "good")
                bad = await policy_status(kube, "echo")
                return good.get("culledTotal") == 1 and (
                    condition(bad, "Ready").get("reason") == "Unauthorized"
                )

            await kube.wait_for(both_swept, timeout=60)
        output = log.read_text()
        assert " DEBUG " in output and "kopf" in output
        assert_absent(token, "hubcull run -vv output", output)

        # the default level (INFO: a line per sweep and action) as JSON, as Loki gets it
        await hub.spawn("idle")
        await hub.set_times("idle", "", last_activity=ago(2 * HOUR))
        log = tmp_path / "json.log"
        command = [HUBCULL, "run", "--namespace", NS, "--log-format", "json"]
        async with run_operator_process(kube, command, log_path=log) as op:

            async def culled_again() -> bool:
                return (await policy_status(kube, "good")).get("culledTotal") == 2

            await kube.wait_for(culled_again, timeout=60)
            await op.wait_for_output('"reason": "Unauthorized"', timeout=30)
        output = log.read_text()
        events = [json.loads(line) for line in output.splitlines() if line.strip()]
        assert any(e.get("event") == "stop" and e.get("user") == "idle" for e in events)
        assert any(e.get("reason") == "Unauthorized" for e in events), output
        assert_absent(token, "hubcull run --log-format json output", output)

        # hubcull sweep -vv, token from the environment and from a file
        manifest = tmp_path / "policy.yaml"
        manifest.write_text(yaml.safe_dump(cullpolicy(echo.api_url, name="echo")))
        token_file = tmp_path / "token"
        token_file.write_text(token + "\n")
        env = {**os.environ, "JUPYTERHUB_API_TOKEN": token}
        for extra in ([], ["--token-file", str(token_file)]):
            proc = await asyncio.create_subprocess_exec(
                HUBCULL,
                "-vv",
                "sweep",
                "-f",
                str(manifest),
                "--once",
                *extra,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 1, err.decode()
            text = out.decode() + err.decode()
            assert "Unauthorized" in text and "DEBUG" in text
            assert_absent(token, "hubcull sweep -vv output", text)


@pytest.mark.k8s
@pytest.mark.hub
async def test_webhook_url_appears_nowhere(
    kube: Kube, hub: Hub, webhook: WebhookReceiver, debug_logs: Capture, tmp_path: Path
) -> None:
    """spec.warn.webhook's URL (a credential) is in no log line (DEBUG included), event,
    status or metric, in the operator and in ``hubcull sweep -vv``, while its posts fail
    (500, then a redirect) and another policy's webhook Secret is missing."""
    await populate(hub, {("hooked", ""): 60, ("missing", ""): 60})
    token = await hub.token(MINIMAL_SCOPES)
    secret_part = pysecrets.token_hex(16)
    url = f"{webhook.url}/services/T0/B0/{secret_part}"
    webhook.respond(500)
    warn_spec = {"before": "5s", "webhook": {"urlSecretRef": {"name": "hook", "key": "url"}}}
    missing_spec = {**warn_spec, "webhook": {"urlSecretRef": {"name": "nohook", "key": "url"}}}
    common = {"every": "10s", "idleTimeout": "20s"}
    async with hubcull_operator(kube, log_level=logging.DEBUG) as (operator, memo):
        await kube.create(secret(token))
        await kube.create(secret(url, name="hook", key="url"))
        await kube.create(
            cullpolicy(hub, name="hooked", selector={"users": ["hooked"]}, warn=warn_spec, **common)
        )
        await kube.create(
            cullpolicy(
                hub, name="missing", selector={"users": ["missing"]}, warn=missing_spec, **common
            )
        )
        await webhook.wait_for(1)  # the warning, answered 500 three times
        webhook.redirect()  # and the cull's post gets a redirect

        async def both_culled() -> dict[str, dict]:
            statuses = {n: await policy_status(kube, n) for n in ("hooked", "missing")}
            assert all(s.get("culledTotal") == 1 for s in statuses.values()), statuses
            return statuses

        statuses = await kube.wait_for(both_culled, timeout=60)
        metrics = generate_latest(memo["metrics"].registry).decode()
        events = await kube.wait_for(lambda: _events_with(kube, "CullWarning", 2))
        stored = [
            obj
            for resource in ("v1/events", CULLPOLICIES, "v1/namespaces")
            for obj in await kube.list(resource)
        ]
    assert (
        "HTTP 302: redirects are not followed" in condition(statuses["hooked"], "Ready")["message"]
    )
    assert webhook.received(webhook.redirect_path) == []
    assert (
        "webhook Secret nohook key url is not in namespace jhub"
        in (condition(statuses["missing"], "Ready")["message"])
    )
    for name in ("hooked", "missing"):
        labels = f'namespace="jhub",policy="{name}"'
        assert f'hubcull_warnings_total{{{labels},result="failed"}}' in metrics
    # hubcull sweep -vv, the URL from a file, a receiver answering 500
    await populate(hub, {("late", ""): 60})
    webhook.respond(500)
    url_file = tmp_path / "url"
    url_file.write_text(url)
    manifest = tmp_path / "policy.yaml"
    manifest.write_text(
        yaml.safe_dump(
            cullpolicy(hub, name="cli", selector={"users": ["late"]}, warn=warn_spec, **common)
        )
    )
    proc = await asyncio.create_subprocess_exec(
        HUBCULL,
        "-vv",
        "sweep",
        "-f",
        str(manifest),
        "--once",
        "--webhook-url-file",
        str(url_file),
        env={**os.environ, "JUPYTERHUB_API_TOKEN": token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    cli_output = out.decode() + err.decode()
    assert proc.returncode == 0 and "FAILED   webhook warning post for late: HTTP 500" in cli_output
    assert "DEBUG" in cli_output
    logs = "\n".join(debug_logs.lines)
    records = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in operator.records)
    assert "DEBUG httpcore" in logs
    for value in (url, secret_part, token):
        assert_absent(value, "the logs", logs)
        assert_absent(value, "the operator thread's records", records)
        assert_absent(value, "events", yaml.safe_dump(events))
        assert_absent(value, "status and stored objects", yaml.safe_dump(stored))
        assert_absent(value, "metrics", metrics)
        assert_absent(value, "hubcull sweep -vv output", cli_output)


async def _events_with(kube: Kube, reason: str, count: int) -> list[dict]:
    events = await kube.list("v1/events", NS)
    assert len([e for e in events if e["reason"] == reason]) >= count
    return events


# --------------------------------------------------------------------------------------
# least privilege
# --------------------------------------------------------------------------------------

OPERATOR_TOKEN = "operator-identity-token"
Rule = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)


def operator_kubeconfig(kube: Kube, path: Path) -> Path:
    """A kubeconfig like the harness's, with a token of its own: the operator's requests
    are told from the test's by their Authorization header."""
    config = yaml.safe_load(kube.kubeconfig_path.read_text())
    for user in config["users"]:
        if user["name"] == KUBE_CONTEXT:
            user["user"]["token"] = OPERATOR_TOKEN
    path.write_text(yaml.safe_dump(config))
    return path


def verb_of(request: Any) -> str | None:
    method = request.method.upper()
    if method == "GET":
        if request.params.get("watch") in ("true", "1"):
            return "watch"
        return "get" if request.name else "list"
    if method == "DELETE":
        return "delete" if request.name else "deletecollection"
    return {"POST": "create", "PATCH": "patch", "PUT": "update"}.get(method)


def operator_requests(kube: Kube) -> set[Rule]:
    """(apiGroup, resource, verb) of every API request the operator made."""
    rules: set[Rule] = set()
    for request in list(kube.emulator):
        auth = {k.lower(): v for k, v in request.headers.items()}.get("authorization", "")
        if auth != f"Bearer {OPERATOR_TOKEN}" or request.resource is None:
            continue  # the test's own requests; /version
        if request.resource.plural is None:
            continue  # API discovery (/api/v1, /apis/GROUP/VERSION): readable by everyone
        resource = request.resource.plural
        if request.subresource:
            resource = f"{resource}/{request.subresource}"
        verb = verb_of(request)
        assert verb is not None, request
        rules.add((request.resource.group or "", resource, verb))
    return rules


def rules_of(objects: list[dict[str, Any]], kinds: tuple[str, ...]) -> set[Rule]:
    """The union of the rules of every Role/ClusterRole among ``objects``."""
    granted: set[Rule] = set()
    for obj in objects:
        if obj.get("kind") not in kinds:
            continue
        for rule in obj.get("rules") or []:
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    for verb in rule.get("verbs", []):
                        granted.add((group, resource, verb))
    return granted


def deploy_rules(name: str) -> set[Rule]:
    docs = [d for d in yaml.safe_load_all((REPO / "deploy/rbac" / name).read_text()) if d]
    return rules_of(docs, ("Role", "ClusterRole"))


def chart_rules(values: dict[str, Any]) -> set[Rule]:
    from tests.support.helm import render

    return rules_of(render(values), ("Role", "ClusterRole"))


async def exercise_operator(
    kube: Kube, tmp_path: Path, args: list[str], peering: bool
) -> set[Rule]:
    """Run ``hubcull run`` through everything that talks to Kubernetes; return its requests.

    Two policies: one reads a token and a CA Secret (not a PEM bundle: InvalidSpec), one
    reads a token (its Hub answers 401); each sweep patches the status and posts a SweepFailed
    event; one policy is deleted (kopf drops its finalizer); SIGTERM releases the other's.
    """
    await kube.create_namespace(NS)
    if peering:
        clusterwide = "--all-namespaces" in args
        await kube.ensure_peering("hubcull", None if clusterwide else NS)
        args = [*args, "--peering", "hubcull", "--priority", "1"]
    await kube.create(secret("not-a-real-token"))
    await kube.create(secret("not-a-pem-bundle", name="hub-ca", key="ca.crt"))
    with_ca = cullpolicy(
        "https://127.0.0.1:9/hub/api",
        name="with-ca",
        every="10s",
        hub={"caSecretRef": {"name": "hub-ca", "key": "ca.crt"}},
    )
    await kube.create(with_ca)  # InvalidSpec: the CA bundle is no PEM
    env = {"KUBECONFIG": str(operator_kubeconfig(kube, tmp_path / "operator-kubeconfig"))}
    async with (
        fault_proxy("http://127.0.0.1:9") as refusing,  # a "Hub" that answers 401 at once
        run_operator_process(kube, [HUBCULL, "run", *args], log_path=tmp_path / "op.log", env=env),
    ):
        refusing.inject(Fault("status", status=401))
        await kube.create(cullpolicy(refusing.api_url, name="plain", every="10s"))

        async def swept() -> bool:
            for name in ("with-ca", "plain"):
                if condition(await policy_status(kube, name), "Ready").get("status") != "False":
                    return False
            events = await kube.list("v1/events", NS)
            return {e["involvedObject"]["name"] for e in events} >= {"with-ca", "plain"}

        await kube.wait_for(swept, timeout=60)
        await kube.delete(CULLPOLICIES, NS, "plain")

        async def deleted() -> bool:
            return await kube.get(CULLPOLICIES, NS, "plain") is None

        await kube.wait_for(deleted, timeout=30)
    policy = await kube.get(CULLPOLICIES, NS, "with-ca")
    assert policy is not None and not policy["metadata"].get("finalizers")
    return operator_requests(kube)


#: What the operator must be able to do in every mode (hubcull's own calls in kubeapi.py and
#: what kopf does for the sweeper daemon). Each is also seen in the recorded requests.
CORE: set[Rule] = {
    ("hubcull.io", "cullpolicies", "list"),  # kopf: the watch stream's initial listing
    ("hubcull.io", "cullpolicies", "watch"),  # kopf: the watch stream
    ("hubcull.io", "cullpolicies", "patch"),  # kopf: finalizer, progress annotations
    ("hubcull.io", "cullpolicies", "get"),  # hubcull: reads a policy to drop its finalizer
    ("hubcull.io", "cullpolicies/status", "patch"),  # hubcull: the sweep's status
    ("", "secrets", "get"),  # hubcull: the token and CA Secrets, by name
    ("", "events", "create"),  # kopf.event(): Culled, SweepFailed, ...
}
PEERING = {("kopf.dev", "kopfpeerings", v) for v in ("list", "watch", "patch")}
CLUSTER_PEERING = {("kopf.dev", "clusterkopfpeerings", v) for v in ("list", "watch", "patch")}
CRD_SCAN = {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")}

MODES = {
    # id: (hubcull run args, peering, chart values, deploy/rbac file, expected rules)
    "namespaced": (["--namespace", NS], False, {}, "role.yaml", CORE),
    "namespaced-peering": (
        ["--namespace", NS],
        True,
        {"peering": {"enabled": True}},
        None,
        CORE | PEERING,
    ),
    "all-namespaces": (
        ["--all-namespaces"],
        False,
        {"watch": {"allNamespaces": True}},
        "clusterrole.yaml",
        CORE | CRD_SCAN,
    ),
    "all-namespaces-peering": (
        ["--all-namespaces"],
        True,
        {"watch": {"allNamespaces": True}, "peering": {"enabled": True}},
        None,
        CORE | CRD_SCAN | CLUSTER_PEERING,
    ),
}


@pytest.mark.k8s
@pytest.mark.helm
@pytest.mark.parametrize("mode", MODES)
async def test_rbac_grants_exactly_what_the_operator_uses(
    kube: Kube, tmp_path: Path, mode: str
) -> None:
    args, peering, values, deploy_file, expected = MODES[mode]
    used = await exercise_operator(kube, tmp_path, args, peering)
    assert used == expected, f"{mode}: used {sorted(used)}"
    assert {r for r in used if r[1] == "secrets"} == {("", "secrets", "get")}
    assert chart_rules(values) == used, f"chart, {mode}"
    if deploy_file is not None:
        granted = deploy_rules(deploy_file)
        assert used <= granted, f"deploy/rbac/{deploy_file} lacks {sorted(used - granted)}"


def test_deploy_rbac_grants_nothing_unused() -> None:
    assert deploy_rules("role.yaml") == CORE
    assert deploy_rules("clusterrole.yaml") == CORE | CRD_SCAN


@pytest.mark.k8s
async def test_a_policy_cannot_read_another_namespaces_secret(kube: Kube) -> None:
    """A policy in namespace a naming a Secret that exists only in namespace b gets
    TokenSecretMissing; the operator never even asks for b's Secret."""
    async with hubcull_operator(kube, namespaces=("team-a", "team-b")):
        await kube.create(secret("b-token", name="hub-b", key="token", namespace="team-b"))
        policy = cullpolicy("http://127.0.0.1:9/hub/api", namespace="team-a", every="10s")
        policy["spec"]["hub"]["tokenSecretRef"] = {"name": "hub-b", "key": "token"}
        await kube.create(policy)

        async def reported() -> dict:
            status = await policy_status(kube, namespace="team-a")
            assert condition(status, "Ready").get("reason") == "TokenSecretMissing", status
            return status

        status = await kube.wait_for(reported, timeout=30)
    assert "not in namespace team-a" in condition(status, "Ready")["message"]
    secret_reads = [
        (r.method, r.namespace, r.name)
        for r in list(kube.emulator)
        if r.resource is not None and r.resource.plural == "secrets" and r.method != "POST"
    ]
    assert secret_reads and set(secret_reads) == {("GET", "team-a", "hub-b")}
    assert base64.b64encode(b"b-token").decode() not in str(status)
