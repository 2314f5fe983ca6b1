"""`hubcull sweep` with spec.warn: the WARN / WAIT lines, --webhook-url-file, and a loop with
a coarse `every` that sweeps again when a warned server's stop is due."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.support.cli import hubcull, manifest, start_hubcull
from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.scenario import populate
from tests.support.warn_env import secret_url, warn
from tests.support.webhook import WebhookReceiver

pytestmark = pytest.mark.hub


async def test_the_loop_warns_then_stops_at_the_stop_time_not_an_every_later(
    hub: Hub, webhook: WebhookReceiver, tmp_path: Path
) -> None:
    await populate(hub, {("ann", ""): 60, ("bob", ""): None})
    path = manifest(tmp_path / "p.yaml", hub.api_url, every="1h", idleTimeout="20s", warn=warn())
    url = secret_url(webhook)
    url_file = tmp_path / "webhook-url"
    url_file.write_text(url + "\n")
    token = await hub.token(MINIMAL_SCOPES)
    proc = await start_hubcull(
        "sweep", "-f", str(path), "--webhook-url-file", str(url_file), token=token
    )
    seen: dict[str, tuple[float, str]] = {}
    try:
        assert proc.stdout is not None
        while "CULLED" not in seen:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, "hubcull sweep exited"
            line = line.removeprefix("[try] ")  # every line names its policy
            word = line.split()[0] if line.strip() else ""
            seen.setdefault(word, (time.monotonic(), line.rstrip()))
    finally:
        proc.terminate()
        _, err = await proc.communicate()
    warned_at, warn_line = seen["WARN"]
    culled_at, cull_line = seen["CULLED"]
    assert warn_line.startswith("WARN     ann will be stopped in about 5s if it stays idle (idle ")
    assert cull_line.startswith("CULLED   stopped ann (idle ")
    assert 4 <= culled_at - warned_at < 15  # at the stop time, not an hour later
    assert [r.json["type"] for r in webhook.requests] == ["warning", "culled"]
    assert await hub.running_servers() == {("bob", "")}
    assert url not in err.decode() and url.rsplit("/", 1)[1] not in err.decode()


async def test_once_prints_warn_lines_and_dry_run_posts_nothing(
    hub: Hub, webhook: WebhookReceiver, tmp_path: Path
) -> None:
    await populate(hub, {("ann", ""): 60})
    token = await hub.token(MINIMAL_SCOPES)
    path = manifest(tmp_path / "p.yaml", hub.api_url, idleTimeout="20s", warn=warn("10s"))
    code, out, err = await hubcull("sweep", "-f", str(path), "--once", "--dry-run", token=token)
    assert code == 0, err  # a dry run needs no webhook URL
    lines = out.splitlines()
    assert lines[0].startswith(
        "[try] WOULD    warn: ann will be stopped in about 10s if it stays idle"
    )
    assert lines[-1].startswith("[try] swept 1 running server") and "1 warned" in lines[-1]
    assert webhook.requests == []
    url_file = tmp_path / "url"
    url_file.write_text(secret_url(webhook))
    code, out, err = await hubcull(
        "sweep", "-f", str(path), "--once", "--webhook-url-file", str(url_file), token=token
    )
    assert code == 0, err
    assert out.splitlines()[0].startswith("[try] WARN     ann will be stopped in about 10s")
    [request] = webhook.requests
    assert request.json["type"] == "warning" and request.json["namespace"] == "jhub"
    assert await hub.running_servers() == {("ann", "")}


async def test_webhook_url_file_errors_are_one_line_and_never_show_the_url(
    hub: Hub, tmp_path: Path
) -> None:
    with_hook = manifest(tmp_path / "hook.yaml", hub.api_url, idleTimeout="20s", warn=warn())
    without = manifest(tmp_path / "plain.yaml", hub.api_url, warn=warn(webhook=False))
    bad = tmp_path / "bad-url"
    bad.write_text("hooks.slack.com/services/T0/B0/SECRETPART\n")
    cases = [
        ([str(with_hook)], "spec.warn.webhook needs --webhook-url-file FILE"),
        (
            [str(with_hook), "--webhook-url-file", str(tmp_path / "missing")],
            "cannot read webhook URL file",
        ),
        ([str(with_hook), "--webhook-url-file", str(bad)], "does not hold an http or https URL"),
        ([str(without), "--webhook-url-file", str(bad)], "has no spec.warn.webhook"),
    ]
    for args, message in cases:
        code, out, err = await hubcull("sweep", "--once", "-f", *args, token="x")
        assert code == 2 and err.count("\n") == 1 and message in err, err
        assert "SECRETPART" not in out + err
