"""The service's settings, from JupyterHub's standard service environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit


class ServiceConfigError(ValueError):
    """The environment does not describe a usable service (one sentence)."""


def _with_slashes(path: str) -> str:
    return "/" + path.strip("/") + "/" if path.strip("/") else "/"


def same_api_url(a: str, b: str) -> bool:
    """Whether two Hub API URLs name the same API (a trailing slash does not matter)."""
    return a.rstrip("/") == b.rstrip("/")


@dataclass(frozen=True)
class ServiceConfig:
    """Where the service listens, where the Hub is, and its OAuth client."""

    api_url: str
    api_token: str
    prefix: str = "/services/hubcull/"
    host: str = "0.0.0.0"
    port: int = 8081
    client_id: str = "service-hubcull"
    callback_url: str = "/services/hubcull/oauth_callback"
    base_url: str = "/"
    hub_host: str = ""
    public_url: str = ""

    @property
    def authorize_url(self) -> str:
        """The Hub's OAuth authorize endpoint, as the browser reaches it."""
        return f"{self.hub_host}{self.base_url}hub/api/oauth2/authorize"

    @property
    def token_url(self) -> str:
        """The Hub's OAuth token endpoint, as the service reaches it."""
        return self.api_url.rstrip("/") + "/oauth2/token"

    @property
    def hub_home(self) -> str:
        """The Hub's home page, for links back."""
        return f"{self.hub_host}{self.base_url}hub/home"

    @property
    def page_url(self) -> str:
        """The page's absolute URL when known (the webhook's ``keepURL``), else its path."""
        origin = self.public_url.rstrip("/") or self.hub_host.rstrip("/")
        if not origin:
            parts = urlsplit(self.api_url)
            origin = f"{parts.scheme}://{parts.netloc}"
        return origin + self.prefix

    @property
    def https(self) -> bool:
        """True when users reach the service over https (cookies are then ``Secure``)."""
        return self.public_url.startswith("https://") or self.hub_host.startswith("https://")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServiceConfig:
        """Read ``JUPYTERHUB_*``; raise :class:`ServiceConfigError` naming what is missing."""
        env = os.environ if env is None else env
        api_url = env.get("JUPYTERHUB_API_URL", "").strip()
        token = env.get("JUPYTERHUB_API_TOKEN", "").strip()
        if not api_url or not token:
            missing = [
                n
                for n, v in (("JUPYTERHUB_API_URL", api_url), ("JUPYTERHUB_API_TOKEN", token))
                if not v
            ]
            raise ServiceConfigError(
                f"hubcull run --service needs {' and '.join(missing)} (the Hub's service "
                "environment variables)"
            )
        if urlsplit(api_url).scheme not in ("http", "https"):
            raise ServiceConfigError(f"JUPYTERHUB_API_URL must be an http(s) URL, not {api_url!r}")
        prefix = _with_slashes(env.get("JUPYTERHUB_SERVICE_PREFIX", "") or "/services/hubcull/")
        listen = urlsplit(env.get("JUPYTERHUB_SERVICE_URL", "") or "http://0.0.0.0:8081")
        try:
            port = listen.port or 8081
        except ValueError:
            raise ServiceConfigError("JUPYTERHUB_SERVICE_URL has an invalid port") from None
        return cls(
            api_url=api_url.rstrip("/"),
            api_token=token,
            prefix=prefix,
            host=listen.hostname or "0.0.0.0",
            port=port,
            client_id=env.get("JUPYTERHUB_CLIENT_ID", "") or "service-hubcull",
            callback_url=env.get("JUPYTERHUB_OAUTH_CALLBACK_URL", "") or prefix + "oauth_callback",
            base_url=_with_slashes(env.get("JUPYTERHUB_BASE_URL", "") or "/"),
            hub_host=env.get("JUPYTERHUB_HOST", "").rstrip("/"),
            public_url=env.get("JUPYTERHUB_PUBLIC_URL", "").rstrip("/"),
        )
