"""Who is asking: the user's own Hub token (``Authorization: token ...``) or the login cookie
that the Hub's OAuth flow (through Authlib) left. Tokens are never logged."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
import warnings
from dataclasses import dataclass
from typing import Any

import authlib.deprecate  # noqa: F401  (its warning filter first, then ours)
import httpx

with warnings.catch_warnings():  # Authlib prefers httpx2; plain httpx is what we ship
    warnings.simplefilter("ignore")
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

from .config import ServiceConfig

log = logging.getLogger(__name__)

SESSION_COOKIE = "hubcull-session"
STATE_COOKIE = "hubcull-oauth-state"
#: How long a login lasts (the Hub's OAuth tokens outlive it; a new login is one redirect).
SESSION_SECONDS = 8 * 3600
STATE_SECONDS = 600
#: How long who a token belongs to is remembered (saves a Hub request per page view).
IDENTITY_SECONDS = 30.0
HUB_TIMEOUT = 10.0


class HubUnavailable(Exception):
    """The Hub did not answer (or answered 5xx): nothing can be decided about the user."""


class NotAuthenticated(Exception):
    """No token, or one the Hub does not accept."""


@dataclass(frozen=True)
class Identity:
    """The user a request comes from, and the token it came with."""

    name: str
    token: str
    by_cookie: bool


class Signer:
    """HMAC-signed values (cookies, CSRF tokens) with a key derived from the service token,
    so that every replica (and a restarted operator) accepts them."""

    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"hubcull-service:" + secret.encode()).digest()

    def _mac(self, data: bytes) -> str:
        return base64.urlsafe_b64encode(hmac.new(self._key, data, "sha256").digest()).decode()

    def sign(self, value: dict[str, Any]) -> str:
        """``value`` as JSON, base64, and its signature."""
        data = base64.urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode())
        return f"{data.decode()}.{self._mac(data)}"

    def unsign(self, signed: str | None) -> dict[str, Any] | None:
        """The value if the signature holds and it has not expired (``exp``), else ``None``."""
        if not signed or "." not in signed:
            return None
        data, mac = signed.rsplit(".", 1)
        if not hmac.compare_digest(mac, self._mac(data.encode())):
            return None
        try:
            value = json.loads(base64.urlsafe_b64decode(data.encode()))
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(value, dict) or value.get("exp", 0) < time.time():
            return None
        return value

    def csrf(self, token: str) -> str:
        """The CSRF token of a login: bound to its Hub token, useless without the cookie."""
        return self._mac(b"csrf:" + hashlib.sha256(token.encode()).digest())[:32]

    def csrf_ok(self, token: str, offered: str | None) -> bool:
        """Whether ``offered`` is the CSRF token of this login."""
        return bool(offered) and hmac.compare_digest(self.csrf(token), offered or "")


class HubUsers:
    """Asks the Hub who a token belongs to and what servers that user has."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self._client = httpx.AsyncClient(timeout=HUB_TIMEOUT, trust_env=True)
        self._known: dict[str, tuple[float, str]] = {}

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def _get(self, path: str, token: str) -> httpx.Response:
        try:
            response = await self._client.get(
                self.config.api_url + path, headers={"Authorization": f"token {token}"}
            )
        except httpx.HTTPError as exc:
            raise HubUnavailable(f"the Hub did not answer ({type(exc).__name__})") from None
        if response.status_code >= 500:
            raise HubUnavailable(f"the Hub answered HTTP {response.status_code}")
        return response

    async def whoami(self, token: str) -> str:
        """The name of the user who owns ``token`` (``GET /user``); raises
        :class:`NotAuthenticated` or :class:`HubUnavailable`."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        known = self._known.get(digest)
        if known is not None and known[0] > time.monotonic():
            return known[1]
        response = await self._get("/user", token)
        if response.status_code in (401, 403):
            raise NotAuthenticated("the Hub does not accept this token")
        model = response.json() if response.status_code == 200 else None
        if not isinstance(model, dict) or model.get("kind", "user") != "user":
            raise NotAuthenticated("the token does not belong to a user")
        name = model.get("name")
        if not isinstance(name, str):
            raise NotAuthenticated("the Hub did not name the token's user")
        if len(self._known) > 10000:
            self._known.clear()
        self._known[digest] = (time.monotonic() + IDENTITY_SECONDS, name)
        return name

    async def user_model(self, name: str, token: str) -> dict[str, Any]:
        """The user's model with their active servers and groups, read with the service's
        token (the user's own token may not read servers); the user's own ``GET /user``
        when the service's token may not."""
        from urllib.parse import quote

        response = await self._get(f"/users/{quote(name, safe='')}", self.config.api_token)
        if response.status_code == 200 and "servers" in response.json():
            return response.json()
        response = await self._get("/user", token)
        if response.status_code != 200:
            raise NotAuthenticated("the Hub does not accept this token")
        return response.json()


class OAuthLogin:
    """The Hub's OAuth code flow, through Authlib: where to send the browser, and the code
    exchange at the end (``state`` is checked against a signed cookie)."""

    def __init__(self, config: ServiceConfig, signer: Signer) -> None:
        self.config = config
        self.signer = signer

    def _client(self) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=self.config.client_id,
            client_secret=self.config.api_token,
            redirect_uri=self.config.callback_url,
            token_endpoint_auth_method="client_secret_post",
            timeout=HUB_TIMEOUT,
        )

    def start(self, next_url: str) -> tuple[str, str]:
        """(the Hub URL to redirect to, the state cookie's value)."""
        state = secrets.token_urlsafe(24)
        client = self._client()
        url, _ = client.create_authorization_url(self.config.authorize_url, state=state)
        cookie = self.signer.sign(
            {"state": state, "next": next_url, "exp": time.time() + STATE_SECONDS}
        )
        return url, cookie

    def check_state(self, cookie: str | None, state: str | None) -> str | None:
        """The page to return to if ``state`` is the one this browser was given, else None."""
        value = self.signer.unsign(cookie)
        if value is None or not state or not hmac.compare_digest(str(value["state"]), state):
            return None
        return str(value.get("next") or self.config.prefix)

    async def finish(self, code: str) -> str:
        """Exchange the code for the user's token; raises :class:`HubUnavailable` or
        :class:`NotAuthenticated`."""
        async with self._client() as client:
            try:
                token = await client.fetch_token(self.config.token_url, code=code)
            except OAuthError as exc:
                raise NotAuthenticated(f"the Hub refused the login ({exc.error})") from None
            except (httpx.HTTPError, ValueError) as exc:  # unreachable, or not an OAuth answer
                raise HubUnavailable(f"the Hub did not answer ({type(exc).__name__})") from None
        access = token.get("access_token")
        if not isinstance(access, str) or not access:
            raise NotAuthenticated("the Hub sent no token")
        return access

    def session(self, token: str) -> str:
        """The login cookie's value for a user's token."""
        return self.signer.sign({"t": token, "exp": time.time() + SESSION_SECONDS})

    def token_from(self, cookie: str | None) -> str | None:
        """The token in a login cookie, if it is ours and current."""
        value = self.signer.unsign(cookie)
        token = value.get("t") if value else None
        return token if isinstance(token, str) else None
