"""The users' page when the Hub is down (a port nobody listens on: a real outage): logging in
fails with a clear page, the API answers 503, nothing crashes; and the webhook's keepURL."""

from __future__ import annotations

from datetime import datetime, timezone

from aiohttp.test_utils import TestClient, TestServer

from hubcull.engine.rules.warn import WarnDecision, Warned
from hubcull.engine.sweep.notify import WarnChannel, warning_payload
from hubcull.k8s.kubeapi import KubeAPI
from hubcull.k8s.views import PolicyViews
from hubcull.service.app import KeepService
from hubcull.service.auth import SESSION_COOKIE, STATE_COOKIE
from hubcull.service.config import ServiceConfig
from tests.support.keep_env import free_port

PREFIX = "/services/hubcull/"


def _service(**env: str) -> KeepService:
    config = ServiceConfig.from_env(
        {
            "JUPYTERHUB_API_URL": f"http://127.0.0.1:{free_port()}/hub/api",
            "JUPYTERHUB_API_TOKEN": "service-secret-token",
            **env,
        }
    )

    def no_kube() -> None:
        raise AssertionError("the Kubernetes API is not needed when the Hub is down")

    return KeepService(config, KubeAPI(no_kube), PolicyViews())


async def test_the_hub_down_fails_logins_clearly_and_crashes_nothing(caplog) -> None:
    service = _service()
    async with TestClient(TestServer(service.app())) as client:
        # no login yet: the browser is sent to the Hub, with a state cookie
        start = await client.get(PREFIX, allow_redirects=False)
        assert start.status == 302
        assert start.headers["Location"].startswith("/hub/api/oauth2/authorize?")
        assert "state=" in start.headers["Location"]
        cookie = start.cookies[STATE_COOKIE]
        assert cookie["httponly"] and cookie["samesite"] == "Lax" and not cookie["secure"]

        # the Hub redirects back, but cannot be reached for the code exchange
        state = start.headers["Location"].split("state=")[1].split("&")[0]
        back = await client.get(f"{PREFIX}oauth_callback?code=abc&state={state}")
        assert back.status == 503
        text = await back.text()
        assert "Logging in failed because the Hub did not answer" in text
        assert "try again in a minute" in text

        # a wrong state is refused before anything else
        forged = await client.get(f"{PREFIX}oauth_callback?code=abc&state=not-{state}")
        assert forged.status == 400 and "login link expired" in await forged.text()

        # a logged-in user while the Hub is down: a clear page and a clear 503
        client.session.cookie_jar.update_cookies(
            {SESSION_COOKIE: service.oauth.session("users-hub-token")}
        )
        page = await client.get(PREFIX)
        assert page.status == 503 and "The Hub cannot be reached" in await page.text()
        assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
        api = await client.get(f"{PREFIX}api/servers", headers={"Authorization": "token t0k3n"})
        assert api.status == 503 and "cannot be reached" in (await api.json())["error"]
    logged = caplog.text
    assert "users-hub-token" not in logged and "t0k3n" not in logged
    assert "service-secret-token" not in logged


async def test_cookies_are_secure_when_users_come_over_https() -> None:
    """z2jh terminates TLS at its proxy, so the service sees plain http: the state and
    session cookies are Secure when the proxy says the user came over https
    (``X-Forwarded-Proto``, which configurable-http-proxy sets) or when the Hub's public
    URL is https; plain http stays usable for a local Hub."""
    cases = [
        ({}, {}, False),
        ({}, {"X-Forwarded-Proto": "https"}, True),
        ({"JUPYTERHUB_PUBLIC_URL": "https://hub.example.org"}, {}, True),
        ({"JUPYTERHUB_HOST": "https://hub.example.org"}, {}, True),
    ]
    for env, headers, secure in cases:
        async with TestClient(TestServer(_service(**env).app())) as client:
            start = await client.get(PREFIX, headers=headers, allow_redirects=False)
            assert start.status == 302
            cookie = start.cookies[STATE_COOKIE]
            assert bool(cookie["secure"]) is secure, (env, headers)
            assert cookie["httponly"] and cookie["samesite"] == "Lax"
            assert cookie["path"] == PREFIX


def test_warning_posts_carry_the_keep_url_when_the_page_is_served() -> None:
    now = datetime(2026, 11, 22, 10, tzinfo=timezone.utc)
    warned = Warned("idle", now, now, None, None)
    warning = WarnDecision("alice", "gpu", "idle", 3000, 3600, warned, False)
    plain = WarnChannel("p", "jhub", url="http://hook")
    assert "keepURL" not in warning_payload(plain, warning)
    page = "https://hub.example.org/services/hubcull/"
    keeping = WarnChannel("p", "jhub", url="http://hook", keep_url=page)
    assert warning_payload(keeping, warning)["keepURL"] == page


def test_service_settings_come_from_jupyterhubs_variables() -> None:
    config = ServiceConfig.from_env(
        {
            "JUPYTERHUB_API_URL": "http://hub:8081/hub/api/",
            "JUPYTERHUB_API_TOKEN": "x" * 32,
            "JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:9000",
            "JUPYTERHUB_PUBLIC_URL": "https://hub.example.org",
        }
    )
    assert (config.host, config.port, config.prefix) == ("0.0.0.0", 9000, PREFIX)
    assert config.client_id == "service-hubcull"
    assert config.callback_url == PREFIX + "oauth_callback"
    assert config.token_url == "http://hub:8081/hub/api/oauth2/token"
    assert config.page_url == "https://hub.example.org/services/hubcull/"
    assert config.https


def test_hubcull_run_service_without_the_hubs_variables_exits_2(monkeypatch, capsys) -> None:
    from hubcull.cli import main

    for name in ("JUPYTERHUB_API_URL", "JUPYTERHUB_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert main(["run", "--service", "--namespace", "jhub"]) == 2
    err = capsys.readouterr().err
    assert "JUPYTERHUB_API_URL and JUPYTERHUB_API_TOKEN" in err
    assert err.count("\n") == 1
