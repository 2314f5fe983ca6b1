"""`hubcull sweep` as an admin runs it: a manifest, a token, a real Hub."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.scenario import TOKEN_REF, populate

pytestmark = pytest.mark.hub

HOUR = 3600


def manifest(path: Path, url: str, **spec: object) -> Path:
    doc = {
        "apiVersion": "hubcull.io/v1alpha1",
        "kind": "CullPolicy",
        "metadata": {"name": "try", "namespace": "jhub"},
        "spec": {"hub": {"url": url, "tokenSecretRef": TOKEN_REF}, **spec},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


async def hubcull(*args: str, token: str | None = None) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JUPYTERHUB_API_TOKEN"}
    if token is not None:
        env["JUPYTERHUB_API_TOKEN"] = token
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hubcull.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_sweep_once_prints_each_decision_then_the_status(hub: Hub, tmp_path: Path) -> None:
    await populate(
        hub, {("idle", ""): 2 * HOUR + 330, ("idle", "gpu"): 3 * HOUR + 330, ("busy", ""): 60}
    )
    token = await hub.token(MINIMAL_SCOPES)
    path = manifest(tmp_path / "p.yaml", hub.api_url, idleTimeout="1h")
    code, out, err = await hubcull("sweep", "-f", str(path), "--dry-run", "--once", token=token)
    assert code == 0, err
    assert "WOULD    stop idle/gpu (idle 3h" in out and "WOULD    stop idle (idle 2h" in out
    assert len(await hub.running_servers()) == 3
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    code, out, err = await hubcull(
        "sweep", "-f", str(path), "--once", "--token-file", str(token_file)
    )
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split()[0] for line in lines[:2]] == ["CULLED", "CULLED"]
    status = yaml.safe_load("\n".join(lines[2:]))["status"]
    assert status["culledLastSweep"] == 2 and status["serversRunning"] == 3
    assert {c["user"] + "/" + c["server"] for c in status["recentCulls"]} == {"idle/", "idle/gpu"}
    assert await hub.running_servers() == {("busy", "")}
    assert token not in out + err


async def test_sweep_exits_non_zero_with_one_line_reasons(hub: Hub, tmp_path: Path) -> None:
    good = manifest(tmp_path / "good.yaml", hub.api_url)
    code, _, err = await hubcull("sweep", "-f", str(good), "--once", token="wrong")
    assert code == 1 and err.count("\n") == 1 and "Unauthorized" in err
    code, _, err = await hubcull("sweep", "-f", str(good), "--once")
    assert code == 2 and "JUPYTERHUB_API_TOKEN" in err
    down = manifest(
        tmp_path / "down.yaml",
        "http://127.0.0.1:9/hub/api",
        hub={
            "url": "http://127.0.0.1:9/hub/api",
            "tokenSecretRef": TOKEN_REF,
            "requestTimeout": "2s",
        },
    )
    code, _, err = await hubcull("sweep", "-f", str(down), "--once", token="x")
    assert code == 1 and err.count("\n") == 1 and "HubUnreachable" in err
    bad = manifest(tmp_path / "bad.yaml", hub.api_url, every="1s", idleTimeout="5w")
    code, _, err = await hubcull("sweep", "-f", str(bad), "--once", token="x")
    assert code == 2 and "spec.every" in err and "spec.idleTimeout" in err


async def test_sweep_without_once_keeps_sweeping_every_interval(hub: Hub, tmp_path: Path) -> None:
    await populate(hub, {("first", ""): 2 * HOUR, ("later", ""): 60})
    path = manifest(tmp_path / "p.yaml", hub.api_url, every="10s")
    env = {**os.environ, "JUPYTERHUB_API_TOKEN": await hub.token(MINIMAL_SCOPES)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hubcull.cli",
        "sweep",
        "-f",
        str(path),
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        seen = ""
        while "stopped first" not in seen:
            seen += (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        await hub.set_times("later", last_activity=None, started=None)
        await hub.set_times("later", last_activity="2000-01-01T00:00:00Z")
        while "stopped later" not in seen:
            seen += (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert "culledTotal: 2" in seen + (await asyncio.wait_for(_rest(proc), 30))
    finally:
        proc.terminate()
        await proc.wait()


async def _rest(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    text = ""
    while "culledTotal" not in text:
        text += (await proc.stdout.readline()).decode()
    return text


@pytest.mark.hub(spawner="local")
async def test_real_singleuser_server_is_culled(hub: Hub) -> None:
    await hub.create_users(["real"])
    await hub.spawn("real")
    await hub.set_times("real", last_activity="2000-01-01T00:00:00Z")
    from tests.support.scenario import sweep

    outcome = await sweep(hub, await hub.token(MINIMAL_SCOPES))
    assert outcome.result is not None and [c.label for c in outcome.result.culled] == ["real"]
    assert await hub.running_servers() == set()
