"""What ``kubectl logs deploy/hubcull`` shows: the real ``hubcull run`` process, on the
Kubernetes emulator, sweeping a real Hub whose servers are real ``jupyterhub-singleuser``
processes (one of them runs a busy kernel), at the default log level, as text and as JSON."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.jupyter import JupyterServer, ServerLocation, start_server
from tests.support.kube import Kube, run_operator_process
from tests.support.operator_env import NS, cullpolicy, policy_status, secret
from tests.support.pods import create_pod, singleuser_pod
from tests.support.scenario import ago

pytestmark = [pytest.mark.k8s, pytest.mark.hub]

HUBCULL = str(Path(sys.executable).with_name("hubcull"))
SILENT = "import time; time.sleep(1200)"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ann(jupyter_hub: Hub) -> ServerLocation:
    """ann's real server (each test runs a busy kernel in it)."""
    return await start_server(jupyter_hub, "ann")


async def setup(kube: Kube, hub: Hub, ann: ServerLocation) -> tuple[str, ServerLocation]:
    """ann (busy kernel) and bob, both idle 2 h by the Hub; their pods; the token Secret and a
    policy that warns 10 s before stopping and protects busy kernels."""
    bob = await start_server(hub, "bob")
    for user in ("ann", "bob"):
        await hub.set_times(user, "", last_activity=ago(7200))
    await kube.create_namespace(NS)
    for location in (ann, bob):
        pod = singleuser_pod(location.user, port=location.port)
        await create_pod(kube, pod, ip="127.0.0.1")
    token = await hub.token([*MINIMAL_SCOPES, "tokens"])
    await kube.create(secret(token))
    await kube.create(
        cullpolicy(
            hub,
            every="1h",
            idleTimeout="1h",
            kernels={"protectBusy": True},
            warn={"before": "10s"},
            selector={"users": ["ann", "bob"]},
        )
    )
    return token, bob


async def run_until_bob_is_culled(
    kube: Kube, hub: Hub, ann: ServerLocation, tmp_path: Path, *flags: str
) -> tuple[str, str]:
    """Run ``hubcull run`` until bob (warned at the first sweep) is culled at the second;
    its output and the token."""
    token, _ = await setup(kube, hub, ann)
    command = [HUBCULL, "run", "--namespace", NS, *flags]
    driver = await hub.token(["access:servers"], note="test driver")
    async with JupyterServer(ann.direct_url, driver) as lab:
        kernel = await lab.start_kernel()
        await lab.run_code(kernel["id"], SILENT, wait=False)
        await lab.wait_kernel(kernel["id"], "busy")
        output = await _run_operator(kube, hub, tmp_path, command)
    await hub.wait_stopped("bob", timeout=60)  # the next test spawns bob again
    return output, token


async def _run_operator(kube: Kube, hub: Hub, tmp_path: Path, command: list[str]) -> str:
    async with run_operator_process(kube, command, log_path=tmp_path / "op.log") as op:

        async def culled() -> bool:
            return (await policy_status(kube)).get("culledTotal") == 1

        await kube.wait_for(culled, timeout=90)
        await op.wait_for_output("stop", timeout=10)
    return op.output()


async def test_the_default_log_says_what_each_sweep_did_and_why(
    kube: Kube, jupyter_hub: Hub, ann: ServerLocation, tmp_path: Path
) -> None:
    output, token = await run_until_bob_is_culled(kube, jupyter_hub, ann, tmp_path)
    assert token not in output
    ours = [line for line in output.splitlines() if " hubcull." in line]
    lines = [re.sub(r"^\S+ \S+ ", "", line) for line in ours]  # without the time
    warned = [line for line in lines if ": warned bob: idle" in line]
    assert len(warned) == 1, lines
    assert re.fullmatch(
        r"INFO hubcull\.k8s\.controller: jhub/default: warned bob: idle \(idle 2h(\d+m)?, "
        r"idleTimeout 1h\); stop after \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ",
        warned[0],
    ), warned[0]
    stopped = [line for line in lines if ": stopped " in line]
    assert len(stopped) == 1, lines
    assert re.fullmatch(
        r"INFO hubcull\.k8s\.controller: jhub/default: stopped bob: idle "
        r"\(idle 2h(\d+m)?, idleTimeout 1h\)",
        stopped[0],
    ), stopped[0]
    sweeps = [line for line in lines if ": swept " in line]
    assert len(sweeps) >= 2, lines
    assert re.fullmatch(
        r"INFO hubcull\.k8s\.controller: jhub/default: swept 2 running servers: 1 idle, "
        r"culled 0, 1 protected, 0 failed in \d+\.\d\ds",
        sweeps[0],
    ), sweeps[0]
    assert any(
        re.fullmatch(
            r"INFO hubcull\.k8s\.controller: jhub/default: swept 2 running servers: 1 idle, "
            r"culled 1, 1 protected, 0 failed in \d+\.\d\ds",
            line,
        )
        for line in sweeps[1:]
    ), sweeps
    # nothing from the HTTP client or kopf's bookkeeping at the default level
    assert not [line for line in output.splitlines() if "HTTP Request:" in line]
    assert not [line for line in output.splitlines() if re.search(r" (DEBUG|INFO) kopf", line)]


async def test_json_lines_carry_the_same_facts_and_vv_adds_the_http_client(
    kube: Kube, jupyter_hub: Hub, ann: ServerLocation, tmp_path: Path
) -> None:
    output, token = await run_until_bob_is_culled(
        kube, jupyter_hub, ann, tmp_path, "--log-format", "json", "-vv"
    )
    assert token not in output
    docs = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= doc.keys() for doc in docs)
    stops = [d for d in docs if d.get("event") == "stop"]
    assert len(stops) == 1
    stop = stops[0]
    assert {k: stop[k] for k in ("namespace", "policy", "user", "server", "reason")} == {
        "namespace": NS,
        "policy": "default",
        "user": "bob",
        "server": "",
        "reason": "idle",
    }
    assert 7200 <= stop["idleSeconds"] < 7200 + 120 and stop["dryRun"] is False
    warnings = [d for d in docs if d.get("event") == "warning"]
    assert [(w["user"], w["reason"]) for w in warnings] == [("bob", "idle")]
    sweeps = [d for d in docs if d.get("event") == "sweep"]
    assert {(s["running"], s["protected"]) for s in sweeps} == {(2, 1)}
    assert sweeps[0]["culled"] == 0 and any(s["culled"] == 1 for s in sweeps[1:])
    assert any(d["logger"] == "httpx" and "HTTP Request:" in d["message"] for d in docs)
