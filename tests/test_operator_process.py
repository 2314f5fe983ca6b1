"""`hubcull run` as the container runs it: liveness that follows the API server, a clear
exit without credentials, and what uninstalling leaves behind."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx
import pytest

from hubcull.k8s.handlers import FINALIZER
from hubcull.k8s.health import GRACE_ENV, HEARTBEAT_SECONDS, WATCH_SECONDS
from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.kube import Kube, run_operator_process, write_kubeconfig
from tests.support.operator_env import (
    CULLPOLICIES,
    NS,
    condition,
    cullpolicy,
    hubcull_operator,
    policy_status,
    secret,
)
from tests.support.scenario import populate
from tests.support.tcprelay import tcp_relay

pytestmark = [pytest.mark.k8s, pytest.mark.hub]

HUBCULL = str(Path(sys.executable).with_name("hubcull"))
#: The liveness grace of the healthz test (seconds).
GRACE = 3.0
#: kopf caches a good probe for this long (kopf/_core/engines/probing.py, probing_max_age).
KOPF_PROBE_CACHE_SECONDS = 10.0
#: Polling (0.2 s) and a loaded machine's scheduling, on top of the operator's own timing.
SLACK = 2.0


async def test_hubcull_run_serves_liveness_metrics_and_culls(
    kube: Kube, hub: Hub, tmp_path: Path, unused_tcp_port_factory
) -> None:
    await populate(hub, {("idle", ""): 7200, ("busy", ""): 60})
    await kube.create_namespace(NS)
    await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
    await kube.create(cullpolicy(hub))
    health, metrics = unused_tcp_port_factory(), unused_tcp_port_factory()
    command = [
        HUBCULL,
        "run",
        "--namespace",
        NS,
        "--metrics-port",
        str(metrics),
        "--liveness",
        f"http://127.0.0.1:{health}/healthz",
    ]
    async with (
        run_operator_process(kube, command, log_path=tmp_path / "op.log"),
        httpx.AsyncClient() as client,
    ):

        async def culled() -> bool:
            return (await policy_status(kube)).get("culledTotal") == 1

        await kube.wait_for(culled, timeout=60)

        async def healthy() -> bool:
            return (await client.get(f"http://127.0.0.1:{health}/healthz")).status_code == 200

        await kube.wait_for(healthy, timeout=30)
        text = (await client.get(f"http://127.0.0.1:{metrics}/metrics")).text
        assert (
            'hubcull_servers_culled_total{namespace="jhub",policy="default",reason="idle"} 1.0'
            in text
        )
    assert await hub.running_servers() == {("busy", "")}


async def test_healthz_follows_the_api_server(
    kube: Kube, tmp_path: Path, unused_tcp_port_factory
) -> None:
    """/healthz: 200 with the API server up; not 200 while it answers 503 and while its port
    is closed, and 200 again once it is back, and the operator handles new policies again.
    The bounds come from the configured grace (HUBCULL_LIVENESS_GRACE=3): red within the
    grace, one heartbeat round (interval + its timeout) and kopf's 10 s cache of a good probe;
    green within one round, as the next round that works clears it."""
    await kube.create_namespace(NS)
    async with tcp_relay(int(kube.url.rsplit(":", 1)[1])) as relay:
        kubeconfig = write_kubeconfig(tmp_path / "relay" / "kubeconfig", relay.url)
        port = unused_tcp_port_factory()
        url = f"http://127.0.0.1:{port}/healthz"
        command = [HUBCULL, "run", "--namespace", NS, "--liveness", url]
        env = {"KUBECONFIG": str(kubeconfig), GRACE_ENV: str(GRACE)}
        # a heartbeat round every third of the grace (at most HEARTBEAT_SECONDS), each one
        # given half the grace (at least the watch's second and one more)
        interval = min(HEARTBEAT_SECONDS, GRACE / 3)
        round_timeout = max(WATCH_SECONDS + 1.0, min(HEARTBEAT_SECONDS, GRACE / 2))
        one_round = interval + round_timeout + SLACK
        red_within = GRACE + one_round + KOPF_PROBE_CACHE_SECONDS
        async with (
            run_operator_process(kube, command, log_path=tmp_path / "op.log", env=env) as op,
            httpx.AsyncClient(timeout=5) as client,
        ):

            async def code() -> int:
                try:
                    return (await client.get(url)).status_code
                except httpx.TransportError:
                    return 0  # not listening yet

            async def healthy() -> bool:
                return await code() == 200

            async def unhealthy() -> bool:
                return await code() not in (0, 200)

            async def serves(name: str) -> bool:
                """kopf saw the new policy and its sweep loop wrote the status."""
                ready = condition(await policy_status(kube, name), "Ready")
                return ready.get("reason") == "Suspended"

            await kube.wait_for(healthy, timeout=60, interval=0.2)
            body = (await client.get(url)).json()
            assert body["apiserver"]["graceSeconds"] == GRACE
            for fault, name in (
                (lambda: relay.answer(503), "after-503"),
                (relay.refuse, "after-down"),
            ):
                clock = asyncio.get_running_loop().time
                start = clock()
                fault()
                await kube.wait_for(unhealthy, timeout=2 * red_within, interval=0.2, message=name)
                red, start = clock() - start, clock()
                await relay.forward()
                await kube.wait_for(healthy, timeout=2 * red_within, interval=0.2, message=name)
                green, start = clock() - start, clock()
                await kube.create(cullpolicy("http://127.0.0.1:9/hub/api", name=name, suspend=True))
                await kube.wait_for(lambda name=name: serves(name), timeout=60, message=name)
                served = clock() - start
                # docs/reliability.md (-s)
                print(f"{name}: red {red:.1f}s, green {green:.1f}s, served {served:.1f}s")
                assert red <= red_within, f"{name}: red after {red:.1f}s, bound {red_within}s"
                assert green <= one_round, f"{name}: green after {green:.1f}s, bound {one_round}s"
        log = op.output()
    assert "failed permanently: no successful contact with the Kubernetes API server" in log
    assert "answered 503 to list cullpolicies in namespace jhub" in log
    assert "Error handling request" not in log  # no aiohttp traceback per failed probe


async def _run_until_exit(env: dict[str, str]) -> tuple[int | None, str]:
    proc = await asyncio.create_subprocess_exec(
        HUBCULL, "run", "--namespace", NS, env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, err.decode()


async def test_hubcull_run_without_usable_credentials_exits_with_one_line(
    kube: Kube, tmp_path: Path, unused_tcp_port: int
) -> None:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in {"KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"}
    }
    base["HOME"] = str(tmp_path)  # no ~/.kube/config
    nowhere = write_kubeconfig(tmp_path / "nowhere", f"http://127.0.0.1:{unused_tcp_port}")
    async with tcp_relay(int(kube.url.rsplit(":", 1)[1])) as relay:
        relay.answer(401)
        refused = write_kubeconfig(tmp_path / "refused", relay.url)
        cases = {
            "no kubeconfig": ({}, "no Kubernetes credentials: no in-cluster service account"),
            "points nowhere": (
                {"KUBECONFIG": str(nowhere)},
                f"cannot reach the Kubernetes API server at http://127.0.0.1:{unused_tcp_port}",
            ),
            "refused": ({"KUBECONFIG": str(refused)}, "refused the credentials (401"),
        }
        results = await asyncio.gather(
            *(_run_until_exit({**base, **env}) for env, _ in cases.values())
        )
    for (case, (_, says)), (code, err) in zip(cases.items(), results, strict=True):
        assert code == 1, (case, err)
        assert err.startswith("hubcull: ") and err.count("\n") == 1, (case, err)
        assert says in err, (case, err)


async def test_hubcull_run_without_a_namespace_says_what_to_do(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "POD_NAMESPACE"}
    proc = await asyncio.create_subprocess_exec(
        HUBCULL, "run", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "--namespace" in err.decode() and "--all-namespaces" in err.decode()


async def test_stopping_the_operator_leaves_no_policy_stuck_in_terminating(
    kube: Kube, hub: Hub
) -> None:
    async with hubcull_operator(kube):
        await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
        await kube.create(cullpolicy(hub))

        async def swept() -> bool:
            status = await policy_status(kube)
            return condition(status, "Ready").get("status") == "True"

        await kube.wait_for(swept)
        policy = await kube.get(CULLPOLICIES, NS, "default")
        assert policy is not None and FINALIZER in policy["metadata"]["finalizers"]
    policy = await kube.get(CULLPOLICIES, NS, "default")
    assert policy is not None and FINALIZER not in (policy["metadata"].get("finalizers") or [])
    await kube.delete(CULLPOLICIES, NS, "default")
    assert await kube.get(CULLPOLICIES, NS, "default") is None
