"""spec.keep tests: a real Hub with hubcull registered as a JupyterHub service (OAuth, users
allowed to access it), logins through the Hub's real OAuth flow, and the operator serving
the page."""

from __future__ import annotations

import re
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import kopf

from hubcull.k8s import handlers
from hubcull.k8s.metrics import Metrics
from hubcull.service.config import ServiceConfig
from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.kube import Kube, run_operator
from tests.support.operator_env import NS, policy_status

PREFIX = "/services/hubcull/"
PASSWORD = "keep-test-password"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class KeepService:
    """Where the operator serves the page, and the service's token (the policy's too, as
    z2jh's hub.services.hubcull.apiToken is)."""

    port: int
    token: str

    def hub_config(self) -> str:
        """extra_config for the test Hub: password logins, the hubcull service with OAuth,
        and users allowed to access it."""
        return "\n".join(
            [
                "c.JupyterHub.authenticator_class = 'dummy'",
                f"c.DummyAuthenticator.password = {PASSWORD!r}",
                "c.JupyterHub.services.append({",
                "    'name': 'hubcull',",
                f"    'url': 'http://127.0.0.1:{self.port}',",
                f"    'api_token': {self.token!r},",
                "    'oauth_no_confirm': True,",
                "})",
                "c.JupyterHub.load_roles.append({",
                "    'name': 'hubcull-service',",
                f"    'scopes': {[*MINIMAL_SCOPES, 'read:users:groups']!r},",
                "    'services': ['hubcull'],",
                "})",
                "c.JupyterHub.load_roles.append({",
                "    'name': 'user',",
                "    'scopes': ['self', 'access:services!service=hubcull'],",
                "})",
            ]
        )

    def config(self, hub: Hub, api_url: str | None = None) -> ServiceConfig:
        """The service's settings, as JupyterHub's environment variables would give them
        (``api_url``: the Hub API as the operator reaches it, when not the Hub's own)."""
        return ServiceConfig.from_env(
            {
                "JUPYTERHUB_API_URL": api_url or hub.api_url,
                "JUPYTERHUB_API_TOKEN": self.token,
                "JUPYTERHUB_SERVICE_PREFIX": PREFIX,
                "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{self.port}",
                "JUPYTERHUB_CLIENT_ID": "service-hubcull",
                "JUPYTERHUB_BASE_URL": "/",
            }
        )


def new_service() -> KeepService:
    """A port and a token for a hubcull service."""
    return KeepService(free_port(), secrets.token_hex(32))


def form_value(html: str, name: str) -> str:
    """The value of the first input named ``name`` in a page."""
    match = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', html)
    assert match, f"no input {name} in the page"
    return match.group(1)


async def login(hub: Hub, user: str) -> tuple[httpx.AsyncClient, httpx.Response]:
    """A browser-like client logged in to the page through the Hub's OAuth flow (the Hub's
    login form, then the redirects); returns it and the page it landed on."""
    client = httpx.AsyncClient(base_url=hub.public_url, follow_redirects=True, timeout=30)
    form = await client.get(PREFIX)
    assert form.url.path == "/hub/login", form.url
    page = await client.post(
        str(form.url),
        data={"username": user, "password": PASSWORD, "_xsrf": form_value(form.text, "_xsrf")},
    )
    assert page.status_code == 200 and page.url.path == PREFIX, (page.status_code, page.url)
    return client, page


@asynccontextmanager
async def operator_with_service(
    kube: Kube, hub: Hub, service: KeepService, api_url: str | None = None
) -> AsyncIterator[kopf.Memo]:
    """``hubcull run --service``: the handlers with the service configured, in-process."""
    await kube.create_namespace(NS)
    memo = kopf.Memo(
        metrics=Metrics(),
        controllers={},
        served=set(),
        service_config=service.config(hub, api_url),
        namespaces=[NS],
    )
    async with run_operator(kube, handlers, namespaces=(NS,), memo=memo):
        yield memo


async def swept_after(kube: Kube, previous: str | None) -> dict:
    """Wait for a sweep that ends after ``previous`` (its lastSweepTime); its status."""

    async def newer() -> dict:
        status = await policy_status(kube)
        assert status.get("lastSweepTime") and status["lastSweepTime"] != previous, status
        return status

    return await kube.wait_for(newer, timeout=40)


async def user_token(hub: Hub, user: str) -> str:
    """A token of ``user``'s own (the Hub gives it the user's permissions)."""
    response = await hub.request(
        "POST", f"/users/{user}/tokens", json_body={"note": "keep test"}, expected=(201,)
    )
    return response.json()["token"]
