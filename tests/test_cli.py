"""`hubcull sweep` as an admin runs it: a manifest, a token, a real Hub."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest
import yaml

from tests.support.cli import HUBCULL, hubcull, manifest, readme_section, start_hubcull
from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.scenario import TOKEN_REF, populate
from tests.support.webhook import WebhookReceiver

pytestmark = pytest.mark.hub

HOUR = 3600
ROOT = Path(__file__).resolve().parent.parent


async def test_sweep_once_prints_each_decision_and_a_summary(hub: Hub, tmp_path: Path) -> None:
    await populate(
        hub, {("idle", ""): 2 * HOUR + 300, ("idle", "gpu"): 3 * HOUR + 300, ("busy", ""): 60}
    )
    token = await hub.token(MINIMAL_SCOPES)
    path = manifest(tmp_path / "p.yaml", hub.api_url, idleTimeout="1h")
    # -vv after the subcommand (it used to work only before it)
    code, out, err = await hubcull(
        "sweep", "-f", str(path), "--dry-run", "--once", "-vv", token=token
    )
    assert code == 0, err
    assert out.splitlines() == [
        "[try] WOULD    stop idle/gpu (idle 3h5m)",  # the Hub's clock has whole seconds:
        "[try] WOULD    stop idle (idle 2h5m)",  # 3h4m59.x s is rounded, no longer cut
        "[try] swept 3 running servers: 2 over a limit, would cull 2, 0 failed (dry run)",
    ]
    assert " DEBUG " in err
    assert len(await hub.running_servers()) == 3
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    code, out, err = await hubcull(
        "sweep", "-f", str(path), "--once", "--token-file", str(token_file), "--status"
    )
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines[:3]] == [
        ["[try]", "CULLED"],
        ["[try]", "CULLED"],
        ["[try]", "swept"],
    ]
    assert lines[2] == "[try] swept 3 running servers: 2 over a limit, culled 2, 0 failed"
    status = yaml.safe_load("\n".join(lines[3:]))["status"]
    assert status["culledLastSweep"] == 2 and status["serversRunning"] == 3
    assert {c["user"] + "/" + c["server"] for c in status["recentCulls"]} == {"idle/", "idle/gpu"}
    assert await hub.running_servers() == {("busy", "")}
    assert token not in out + err


async def test_a_sweep_of_twelve_culls_prints_thirteen_lines(hub: Hub, tmp_path: Path) -> None:
    """The decisions and one summary line by default; the status block, whose
    recentCulls alone repeat the 12 culls in 72 lines, only with --status."""
    idle = {(f"idle{i:02d}", ""): 2 * HOUR for i in range(12)}
    await populate(hub, {**idle, ("busy1", ""): 60, ("busy2", ""): 60})
    path = manifest(tmp_path / "p.yaml", hub.api_url, idleTimeout="1h")
    code, out, err = await hubcull(
        "sweep", "-f", str(path), "--once", "--dry-run", token=await hub.token(MINIMAL_SCOPES)
    )
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 13, out
    assert lines[-1] == (
        "[try] swept 14 running servers: 12 over a limit, would cull 12, 0 failed (dry run)"
    )
    assert "status:" not in out


async def test_o_yaml_prints_one_cullpolicy_document_per_policy(hub: Hub, tmp_path: Path) -> None:
    await populate(hub, {("idle", ""): 2 * HOUR, ("busy", ""): 60})
    path = manifest(tmp_path / "p.yaml", hub.api_url, idleTimeout="1h", dryRun=True)
    code, out, err = await hubcull(
        "sweep", "-f", str(path), "--once", "-o", "yaml", token=await hub.token(MINIMAL_SCOPES)
    )
    assert code == 0, err
    [doc] = list(yaml.safe_load_all(out))
    assert doc["kind"] == "CullPolicy"
    assert doc["metadata"] == {"name": "try", "namespace": "jhub"}
    assert doc["status"]["culledLastSweep"] == 1 and doc["status"]["serversRunning"] == 2


async def test_readmes_typical_setup_sweeps_every_policy_of_every_file(
    hub: Hub, tmp_path: Path
) -> None:
    """README's gpu + everyone pair (one file, URL of the cluster) and a policy in a second
    file, swept with --hub-url: each policy culls what it selects, lines say which."""
    await populate(
        hub,
        {
            ("gpu-idle", ""): 2 * HOUR,
            ("gpu-busy", ""): 5 * 60,
            ("day-idle", ""): 9 * HOUR,
            ("day-busy", ""): HOUR,
            ("research-idle", ""): 3 * HOUR,
        },
        options={("gpu-idle", ""): {"profile": "gpu"}, ("gpu-busy", ""): {"profile": "gpu"}},
    )
    [typical] = re.findall(r"```yaml\n(.*?)```", readme_section("The typical setup"), re.S)
    assert "url: http://hub:8081/hub/api" in typical
    (tmp_path / "typical.yaml").write_text(typical)
    research = manifest(
        tmp_path / "research.yaml",
        "http://hub:8081/hub/api",
        name="research",
        idleTimeout="2h",
        selector={"users": ["research-*"]},
    )
    code, out, err = await hubcull(
        "sweep",
        "-f",
        str(tmp_path / "typical.yaml"),
        "-f",
        str(research),
        "--once",
        "--hub-url",
        hub.api_url,
        token=await hub.token(MINIMAL_SCOPES),
    )
    assert code == 0, err
    lines = out.splitlines()
    assert "[gpu] CULLED   stopped gpu-idle (idle 2h)" in lines
    assert "[everyone] CULLED   stopped day-idle (idle 9h)" in lines  # not 8h59m
    assert "[research] CULLED   stopped research-idle (idle 3h)" in lines
    summaries = sorted(line.split()[0] for line in lines if " swept " in line)
    assert summaries == ["[everyone]", "[gpu]", "[research]"]  # in the order they finish
    assert await hub.running_servers() == {("gpu-busy", ""), ("day-busy", "")}


async def test_readmes_sweep_commands_run_as_written(hub: Hub, tmp_path: Path) -> None:
    """The commands of README's `hubcull sweep` section, with the Hub's port-forwarded URL
    replaced by the test Hub's (the loop one runs until its first sweep)."""
    await populate(
        hub,
        # 20 s more than an hour: the Hub's Date header has whole seconds, so an idle time
        # of exactly 1 h can read 59m59s
        {("gpu-idle", ""): HOUR + 20, ("other", ""): HOUR + 20},
        options={("gpu-idle", ""): {"profile": "gpu"}},
    )
    section = readme_section("Try a policy against your Hub")
    commands = [line.split("#")[0].split() for line in section.splitlines()]
    gpu = [".venv/bin/hubcull", "sweep", "-f", "examples/gpu-profile.yaml"]
    commands = [c for c in commands if c[:4] == gpu]  # examples/kernels.yaml: test_kernels_hub
    assert len(commands) == 2 and all("--hub-url" in c for c in commands)
    url = commands[0][commands[0].index("--hub-url") + 1]
    assert url == "http://127.0.0.1:8081/hub/api"  # where `kubectl port-forward` puts it
    env = {**os.environ, "JUPYTERHUB_API_TOKEN": await hub.token(MINIMAL_SCOPES)}
    for command in commands:
        argv = [HUBCULL if a == ".venv/bin/hubcull" else a for a in command]
        argv = [hub.api_url if a == url else a for a in argv]
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE
        )
        try:
            assert proc.stdout is not None
            seen = ""
            while "[gpu] swept" not in seen:
                line = await asyncio.wait_for(proc.stdout.readline(), 30)
                assert line, seen
                seen += line.decode()
        finally:
            if proc.returncode is None and "--once" not in command:
                proc.terminate()
            await proc.wait()
        verb = "WOULD    stop" if "--dry-run" in command else "CULLED   stopped"
        assert f"[gpu] {verb} gpu-idle (idle 1h)" in seen
        assert "other" not in seen  # not a gpu profile server
    assert await hub.running_servers() == {("other", "")}


async def test_sweep_exits_non_zero_with_one_line_reasons(hub: Hub, tmp_path: Path) -> None:
    good = manifest(tmp_path / "good.yaml", hub.api_url)
    code, _, err = await hubcull("sweep", "-f", str(good), "--once", token="wrong")
    assert code == 1 and err.count("\n") == 1 and "Unauthorized" in err
    code, _, err = await hubcull("sweep", "-f", str(good), "--once")
    assert code == 2 and "JUPYTERHUB_API_TOKEN" in err
    down = manifest(
        tmp_path / "down.yaml",
        "http://127.0.0.1:9/hub/api",
        name="down",
        hub={
            "url": "http://127.0.0.1:9/hub/api",
            "tokenSecretRef": TOKEN_REF,
            "requestTimeout": "2s",
        },
    )
    code, _, err = await hubcull("sweep", "-f", str(down), "--once", token="x")
    assert code == 1 and err.count("\n") == 1 and "HubUnreachable" in err
    # several policies: the worst exit status, one line per failed policy
    token = await hub.token(MINIMAL_SCOPES)
    code, out, err = await hubcull("sweep", "-f", str(good), "-f", str(down), "--once", token=token)
    assert code == 1, err
    # each failure once: on stderr, not repeated on stdout
    assert err.startswith("hubcull: [down] sweep failed, Ready False (HubUnreachable): ")
    assert err.count("\n") == 1 and "check spec.hub.url" in err
    assert "[try] swept 0 running servers" in out
    assert "[down]" not in out and "HubUnreachable" not in out
    bad = manifest(tmp_path / "bad.yaml", hub.api_url, every="1s", idleTimeout="5w")
    code, _, err = await hubcull("sweep", "-f", str(bad), "--once", token="x")
    assert code == 2 and "spec.every" in err and "spec.idleTimeout" in err


async def test_sweep_without_once_sweeps_each_policy_on_its_own_schedule(
    hub: Hub, tmp_path: Path
) -> None:
    await populate(hub, {("first", ""): 2 * HOUR, ("later", ""): 60})
    path = manifest(tmp_path / "p.yaml", hub.api_url, every="10s")
    slow = yaml.safe_load(path.read_text())
    slow["metadata"]["name"] = "slow"
    slow["spec"]["every"] = "1h"
    slow["spec"]["dryRun"] = True
    path.write_text(path.read_text() + "---\n" + yaml.safe_dump(slow))
    token = await hub.token(MINIMAL_SCOPES)
    proc = await start_hubcull("sweep", "-f", str(path), "--status", token=token)
    try:
        assert proc.stdout is not None
        seen = ""
        while "[try] CULLED   stopped first" not in seen:
            seen += (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        await hub.set_times("later", last_activity=None, started=None)
        await hub.set_times("later", last_activity="2000-01-01T00:00:00Z")
        while "[try] CULLED   stopped later" not in seen:
            seen += (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        seen += await asyncio.wait_for(_rest(proc), 30)
        assert "culledTotal: 2" in seen
        # "try" swept twice meanwhile, "slow" (every 1h) once
        assert seen.count("[try] swept ") == 2 and seen.count("[slow] swept ") == 1
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


async def test_hub_url_errors_name_the_option_and_a_404_hints_at_the_base_url(
    hub: Hub, webhook: WebhookReceiver, tmp_path: Path
) -> None:
    """A policy tried with --hub-url: errors say --hub-url, not spec.hub.url. A URL that
    already ends in /hub/api but is not the Hub's API (a 404 from whatever listens there,
    like z2jh's proxy-api port; a base_url prefix the Hub does not have) is not told to end
    in /hub/api but to check the host, port and base URL."""
    path = manifest(tmp_path / "p.yaml", "http://hub:8081/hub/api")
    token = await hub.token(MINIMAL_SCOPES)
    webhook.respond(404)  # an HTTP server that is not the Hub
    not_hub = f"{webhook.base_url}/hub/api"
    code, out, err = await hubcull(
        "sweep", "-f", str(path), "--once", "--hub-url", not_hub, token=token
    )
    assert code == 1 and out == "", (out, err)
    assert err.count("\n") == 1, err
    assert err.startswith(
        f"hubcull: [try] sweep failed, Ready False (HubError): --hub-url {not_hub} is not the "
        "JupyterHub REST API root (it answers 404): the path ends in /hub/api, so check the "
        "host and port"
    ), err
    assert "base URL" in err and "/jupyter/hub/api" in err
    assert "should end in /hub/api" not in err and "spec.hub.url" not in err
    # without the option, the file's field is named; the Hub redirects a wrong prefix
    wrong_base = f"{hub.public_url}/jupyter/hub/api"
    manifest(path, wrong_base)
    code, _, err = await hubcull("sweep", "-f", str(path), "--once", token=token)
    assert code == 1 and f"spec.hub.url {wrong_base} is not the JupyterHub" in err
    assert "the path ends in /hub/api" in err and "--hub-url" not in err
    # a URL that does not end in /hub/api is still told to
    code, _, err = await hubcull(
        "sweep", "-f", str(path), "--once", "--hub-url", f"{hub.public_url}/hub", token=token
    )
    assert code == 1 and "--hub-url" in err and "it should end in /hub/api" in err
