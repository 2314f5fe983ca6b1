"""spec.keep with two `hubcull run --service` processes and kopf peering: a keep made through
the standby replica's page is merged into the status while the other replica sweeps, honoured
by its sweeps, and still honoured after that replica dies and the standby takes over."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from tests.support.jhub import start_hub
from tests.support.keep_env import PREFIX, free_port, new_service, swept_after, user_token
from tests.support.kube import Kube, run_operator_process
from tests.support.operator_env import NS, cullpolicy, policy_status, secret
from tests.support.scenario import ago

pytestmark = [pytest.mark.k8s, pytest.mark.hub]

HUBCULL = str(Path(sys.executable).with_name("hubcull"))
PEERING = "hubcull"
LIFETIME = 3


async def standing_by(kube: Kube, operator) -> None:
    """Wait until kopf paused ``operator`` in favour of a higher-priority peer."""

    async def paused() -> bool:
        out = operator.output()
        return "Pausing operations in favour of" in out or "(blockers: hubcull@" in out

    await kube.wait_for(paused, timeout=60)


async def test_a_keep_made_on_the_standby_is_honoured_before_and_after_failover(
    kube: Kube, tmp_path: Path
) -> None:
    service = new_service()
    async with start_hub(tmp_path / "hub", extra_config=service.hub_config()) as hub:
        await hub.create_users(["alice", "bob"])
        for user in ("alice", "bob"):
            await hub.spawn(user, "")
        await kube.create_namespace(NS)
        await kube.ensure_peering(PEERING, NS)
        await kube.create(secret(service.token))
        ports = {"a": service.port, "b": free_port()}

        def operator(name: str, priority: int):
            env = {
                "HUBCULL_PEERING_LIFETIME": str(LIFETIME),
                "JUPYTERHUB_API_URL": hub.api_url,
                "JUPYTERHUB_API_TOKEN": service.token,
                "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{ports[name]}",
            }
            command = [
                HUBCULL,
                "-vv",
                "run",
                "--namespace",
                NS,
                "--service",
                "--peering",
                PEERING,
                "--priority",
                str(priority),
            ]
            return run_operator_process(kube, command, log_path=tmp_path / f"{name}.log", env=env)

        async def keep(name: str, token: str, body: dict) -> httpx.Response:
            url = f"http://127.0.0.1:{ports[name]}{PREFIX}api/servers/~/keep"
            async with httpx.AsyncClient(timeout=30) as client:
                return await client.post(
                    url, json=body, headers={"Authorization": f"token {token}"}
                )

        async with operator("a", 100) as a:
            async with operator("b", 200) as b:
                await standing_by(kube, a)
                await kube.create(
                    cullpolicy(hub, idleTimeout="1h", every="10s", keep={"max": "2h"})
                )
                status = await swept_after(kube, None)
                alice = await user_token(hub, "alice")
                # the standby's page writes the keep while the other replica sweeps
                kept = await keep("a", alice, {"hours": 2})
                assert kept.status_code == 200, kept.text
                for user in ("alice", "bob"):
                    await hub.set_times(user, "", last_activity=ago(7200))
                status = await swept_after(kube, status["lastSweepTime"])
                if status["culledTotal"] == 0:  # that sweep began before the backdating
                    status = await swept_after(kube, status["lastSweepTime"])
                assert await hub.running_servers() == {("alice", "")}
                assert [k["user"] for k in status["keeps"]] == ["alice"]
                assert "Pausing operations" not in b.output()
                await b.kill()
            # a takes over: its sweeps honour the keep it never saw being made in memory
            # (its next sweeps come after the peering lifetime, the settle pause and the
            # rest of the interval: swept_after waits for them)
            status = await swept_after(kube, status["lastSweepTime"])
            status = await swept_after(kube, status["lastSweepTime"])
            assert await hub.running_servers() == {("alice", "")}
            assert [k["user"] for k in (await policy_status(kube))["keeps"]] == ["alice"]
            async with httpx.AsyncClient(timeout=30) as client:
                listing = await client.get(
                    f"http://127.0.0.1:{ports['a']}{PREFIX}api/servers",
                    headers={"Authorization": f"token {alice}"},
                )
            (server,) = listing.json()["servers"]
            assert server["policies"][0]["protectedBy"].startswith("kept until")
            assert service.token not in a.output() and alice not in a.output()
