"""The service's aiohttp application, served from the operator's own event loop.

Routes (under ``JUPYTERHUB_SERVICE_PREFIX``): ``GET /`` the page, ``GET /api/servers`` the same
as JSON, ``POST /api/servers/{server}/keep`` (JSON) and ``POST /servers/{server}/keep`` (the
page's form), ``GET /oauth_callback``, ``POST /logout``, ``GET /static/style.css``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from ..engine.hub.model import server_label
from ..engine.rules.keeps import (
    KeepCounts,
    KeepRefused,
    check_keep,
    keeps_from_status,
    keeps_to_status,
    requested_until,
    set_keep,
)
from ..engine.rules.policy import PolicyError, parse_spec
from ..k8s.keepstatus import change_status
from ..k8s.kubeapi import KubeAPI, KubeError
from ..k8s.metrics import Metrics
from ..k8s.views import PolicyViews
from .auth import (
    SESSION_COOKIE,
    SESSION_SECONDS,
    STATE_COOKIE,
    STATE_SECONDS,
    HubUnavailable,
    HubUsers,
    Identity,
    NotAuthenticated,
    OAuthLogin,
    Signer,
)
from .config import ServiceConfig
from .page import render_message, render_page, server_title
from .servers import PolicyObject, ServerView, find_server, hub_policies, iso, running_servers

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
#: How long the list of CullPolicies is reused between requests (seconds).
POLICIES_SECONDS = 3.0

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@web.middleware
async def _headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Security headers on every answer; an unexpected error is one line, never a token."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    except Exception as exc:  # a bug must not take the operator down, nor leak in a page
        log.error("service error on %s %s: %s", request.method, request.path, type(exc).__name__)
        response = web.Response(status=500, text="Internal error; see the operator's log.\n")
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    if isinstance(response, web.HTTPException):
        raise response
    return response


@dataclass
class KeepService:
    """The service's state: where the Hub and the policies are, and how to log users in."""

    config: ServiceConfig
    kube: KubeAPI
    views: PolicyViews
    metrics: Metrics | None = None
    namespaces: list[str] = field(default_factory=list)
    clock: Clock = _utcnow

    def __post_init__(self) -> None:
        self.signer = Signer(self.config.api_token)
        self.oauth = OAuthLogin(self.config, self.signer)
        self.users = HubUsers(self.config)
        self._policies: tuple[float, list[PolicyObject]] | None = None

    # -------------------------------------------------------------------- plumbing

    def app(self) -> web.Application:
        """The aiohttp application."""
        p = self.config.prefix
        app = web.Application(middlewares=[_headers], client_max_size=64 * 1024)
        app.router.add_get(p, self.page)
        if p != "/":
            app.router.add_get(p.rstrip("/"), self.to_prefix)
        app.router.add_get(p + "static/style.css", self.style)
        app.router.add_get(p + "api/servers", self.api_servers)
        app.router.add_post(p + "api/servers/{server}/keep", self.api_keep)
        app.router.add_post(p + "servers/{server}/keep", self.form_keep)
        app.router.add_get(p + "oauth_callback", self.callback)
        app.router.add_post(p + "logout", self.logout)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _cleanup(self, _: web.Application) -> None:
        await self.users.aclose()

    def _secure(self, request: web.Request) -> bool:
        forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip()
        return self.config.https or request.secure or forwarded == "https"

    def _set_cookie(
        self, response: web.StreamResponse, request: web.Request, name: str, value: str, age: int
    ) -> None:
        response.set_cookie(
            name,
            value,
            max_age=age,
            path=self.config.prefix,
            httponly=True,
            secure=self._secure(request),
            samesite="Lax",
        )

    async def policies(self, fresh: bool = False) -> list[PolicyObject]:
        """This Hub's CullPolicies (a few seconds old at most)."""
        now = time.monotonic()
        if not fresh and self._policies is not None and self._policies[0] > now:
            return self._policies[1]
        bodies = await self.kube.list_policies(self.namespaces)
        found = hub_policies(bodies, self.config.api_url)
        self._policies = (now + POLICIES_SECONDS, found)
        return found

    # -------------------------------------------------------------------- who is asking

    def _header_token(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() in ("token", "bearer") and value.strip():
            return value.strip()
        return None

    async def identify(self, request: web.Request) -> Identity | None:
        """The user behind the request's token or login cookie; ``None`` when there is none
        or the Hub refuses it. Raises :class:`HubUnavailable`."""
        token = self._header_token(request)
        by_cookie = token is None
        if token is None:
            token = self.oauth.token_from(request.cookies.get(SESSION_COOKIE))
        if token is None:
            return None
        try:
            name = await self.users.whoami(token)
        except NotAuthenticated:
            return None
        return Identity(name, token, by_cookie)

    def _login(self, request: web.Request) -> web.StreamResponse:
        next_url = request.path if request.path.startswith(self.config.prefix) else "/"
        url, cookie = self.oauth.start(next_url if next_url != "/" else self.config.prefix)
        response = web.HTTPFound(url)
        self._set_cookie(response, request, STATE_COOKIE, cookie, STATE_SECONDS)
        return response

    def _message(self, status: int, title: str, message: str, retry: bool = True) -> web.Response:
        link = (self.config.prefix, "Try again") if retry else None
        return web.Response(
            status=status,
            text=render_message(title, message, self.config.prefix, link),
            content_type="text/html",
        )

    def _json(self, status: int, body: Mapping[str, Any]) -> web.Response:
        return web.json_response(body, status=status)

    # -------------------------------------------------------------------- routes

    async def to_prefix(self, request: web.Request) -> web.StreamResponse:
        """``/services/hubcull`` -> ``/services/hubcull/``."""
        raise web.HTTPFound(self.config.prefix)

    async def style(self, request: web.Request) -> web.StreamResponse:
        """The stylesheet."""
        return web.Response(
            text=(STATIC / "style.css").read_text(), content_type="text/css", charset="utf-8"
        )

    async def callback(self, request: web.Request) -> web.StreamResponse:
        """The end of the OAuth flow: check ``state``, exchange the code, set the cookie."""
        next_url = self.oauth.check_state(
            request.cookies.get(STATE_COOKIE), request.query.get("state")
        )
        code = request.query.get("code")
        if next_url is None or not code:
            return self._message(
                400,
                "Login failed",
                "The login link expired or was opened in another browser; start again.",
            )
        try:
            token = await self.oauth.finish(code)
            await self.users.whoami(token)
        except HubUnavailable as exc:
            log.warning("login failed: %s", exc)
            return self._message(
                503, "Login failed", f"Logging in failed because {exc}; try again in a minute."
            )
        except NotAuthenticated as exc:
            return self._message(403, "Login failed", f"Logging in failed: {exc}.")
        if not next_url.startswith(self.config.prefix):
            next_url = self.config.prefix
        response = web.HTTPFound(next_url)
        self._set_cookie(
            response, request, SESSION_COOKIE, self.oauth.session(token), SESSION_SECONDS
        )
        response.del_cookie(STATE_COOKIE, path=self.config.prefix)
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """Forget the login cookie (the Hub's own login stays)."""
        form = await request.post()
        token = self.oauth.token_from(request.cookies.get(SESSION_COOKIE))
        if token is not None and not self.signer.csrf_ok(token, str(form.get("_xsrf", ""))):
            return self._message(403, "Not logged out", "The form was not sent by this page.")
        response = self._message(200, "Logged out", "You are logged out of hubcull.")
        response.del_cookie(SESSION_COOKIE, path=self.config.prefix)
        return response

    async def _servers(self, identity: Identity) -> list[ServerView]:
        model = await self.users.user_model(identity.name, identity.token)
        return running_servers(model, await self.policies(), self.views, self.clock())

    async def page(self, request: web.Request) -> web.StreamResponse:
        """The page; a browser without a login is sent to the Hub to log in."""
        try:
            identity = await self.identify(request)
            if identity is None:
                return self._login(request)
            servers = await self._servers(identity)
        except HubUnavailable as exc:
            return self._message(503, "The Hub cannot be reached", f"Right now {exc}.")
        except KubeError as exc:
            log.warning("service: %s", exc)
            return self._message(503, "Policies unavailable", "The policies cannot be read now.")
        return self._render(identity, servers, notice=request.query.get("done"))

    def _render(
        self,
        identity: Identity,
        servers: list[ServerView],
        status: int = 200,
        notice: str | None = None,
        error: str | None = None,
    ) -> web.Response:
        if notice is not None:
            view = find_server(servers, notice)
            if view is None:
                notice = None
            elif view.kept_until is not None:
                notice = (
                    f"{server_title(view.server).capitalize()} is kept until "
                    f"{iso(view.kept_until)}."
                )
            else:
                notice = f"{server_title(view.server).capitalize()} is no longer kept."
        html = render_page(
            user=identity.name,
            servers=servers,
            prefix=self.config.prefix,
            hub_home=self.config.hub_home,
            csrf=self.signer.csrf(identity.token),
            notice=notice,
            error=error,
        )
        return web.Response(status=status, text=html, content_type="text/html")

    async def api_servers(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/servers``: the page as JSON."""
        try:
            identity = await self.identify(request)
            if identity is None:
                return self._json(401, {"error": "Log in or send your Hub token."})
            servers = await self._servers(identity)
        except HubUnavailable as exc:
            return self._json(503, {"error": f"The Hub cannot be reached: {exc}."})
        except KubeError:
            return self._json(503, {"error": "The policies cannot be read now."})
        return self._json(200, {"user": identity.name, "servers": [s.to_json() for s in servers]})

    async def api_keep(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/servers/{server}/keep`` with ``{"until": ...}`` or ``{"hours": n}``."""
        try:
            identity = await self.identify(request)
        except HubUnavailable as exc:
            return self._json(503, {"error": f"The Hub cannot be reached: {exc}."})
        if identity is None:
            return self._json(401, {"error": "Log in or send your Hub token."})
        if identity.by_cookie and not self.signer.csrf_ok(
            identity.token, request.headers.get("X-XSRF-Token")
        ):
            return self._json(403, {"error": "Send the page's CSRF token in X-XSRF-Token."})
        try:
            body = json.loads(await request.text() or "null")
        except ValueError:
            return self._json(400, {"error": "The request body is not JSON."})
        status, message, until = await self.keep(identity, request.match_info["server"], body)
        if status != 200:
            return self._json(status, {"error": message})
        server = request.match_info["server"]
        return self._json(200, {"server": "" if server == "~" else server, "until": until})

    async def form_keep(self, request: web.Request) -> web.StreamResponse:
        """The page's form: keep for ``hours`` (0 ends it), then back to the page."""
        try:
            identity = await self.identify(request)
        except HubUnavailable as exc:
            return self._message(503, "The Hub cannot be reached", f"Right now {exc}.")
        if identity is None:
            return self._login(request)
        form = await request.post()
        if not identity.by_cookie or not self.signer.csrf_ok(
            identity.token, str(form.get("_xsrf", ""))
        ):
            return self._message(
                403, "Not kept", "The form was not sent by this page (CSRF check failed)."
            )
        server = request.match_info["server"]
        status, message, _ = await self.keep(identity, server, {"hours": form.get("hours", "")})
        if status != 200:
            try:
                servers = await self._servers(identity)
            except (HubUnavailable, KubeError):
                servers = []
            return self._render(identity, servers, status=status, error=message)
        raise web.HTTPSeeOther(f"{self.config.prefix}?done={quote(server, safe='~')}")

    # -------------------------------------------------------------------- keeping

    async def keep(
        self, identity: Identity, server_name: str, body: Any
    ) -> tuple[int, str, str | None]:
        """Keep (or end the keep of) one of the user's servers in every policy with
        ``spec.keep`` that governs it: (HTTP status, one sentence, the new end or None)."""
        now = self.clock()
        try:
            model = await self.users.user_model(identity.name, identity.token)
            policies = await self.policies(fresh=True)
        except HubUnavailable as exc:
            return 503, f"The Hub cannot be reached: {exc}.", None
        except KubeError:
            return 503, "The policies cannot be read now; try again.", None
        servers = running_servers(model, policies, self.views, now)
        view = find_server(servers, server_name)
        if view is None:
            return 404, "You have no running server of that name.", None
        label = server_label(identity.name, view.server)
        keeping = [
            p
            for p in policies
            if p.policy.keep is not None
            and any(g.namespace == p.namespace and g.name == p.name for g in view.policies)
        ]
        if not keeping:
            return 400, "No policy that governs this server lets you keep it.", None
        try:
            until = requested_until(body, now)
            if until is not None:
                for p in keeping:
                    assert p.policy.keep is not None
                    made = KeepCounts.from_status(p.status.get("keepsToday")).made(
                        identity.name, now
                    )
                    check_keep(until, now, p.policy.keep.max, p.policy.keep.per_day, made)
            for p in keeping:
                await self._write(p, identity.name, view, until, now)
        except KeepRefused as exc:
            self._count(keeping, "refused")
            return exc.status, str(exc), None
        except KubeError as exc:
            log.warning("keeping %s failed: %s", label, exc)
            return 503, "The keep could not be saved; try again.", None
        finally:
            self._policies = None
        result = "kept" if until is not None else "ended"
        self._count(keeping, result)
        text = _kept_text(label, until)
        names = ", ".join(f"{p.namespace}/{p.name}" for p in keeping)
        log.info("%s (policies %s)", text, names)
        return 200, text, iso(until)

    def _count(self, keeping: list[PolicyObject], result: str) -> None:
        if self.metrics is None:
            return
        for p in keeping:
            self.metrics.keeps.labels(p.namespace, p.name, result).inc()

    async def _write(
        self, obj: PolicyObject, user: str, view: ServerView, until: datetime | None, now: datetime
    ) -> None:
        """Record the keep in one policy's status (re-checking ``perDay`` against what the
        status holds at that moment), then post the ``Kept`` event."""

        def change(body: Mapping[str, Any]) -> dict[str, Any] | None:
            status = body.get("status") or {}
            try:
                policy = parse_spec(body.get("spec"))
            except PolicyError:
                raise KeepRefused("The policy's spec is not valid now; try again later.") from None
            if policy.keep is None:
                raise KeepRefused("The policy no longer lets users keep servers.")
            counts = KeepCounts.from_status(status.get("keepsToday"))
            keeps = keeps_from_status(status.get("keeps"))
            fields: dict[str, Any] = {}
            if until is not None:
                check_keep(until, now, policy.keep.max, policy.keep.per_day, counts.made(user, now))
                fields["keepsToday"] = counts.add(user, now).to_status()
            fields["keeps"] = keeps_to_status(
                set_keep(keeps, user, view.server, until, started=view.started, made=now)
            )
            return fields

        written = await change_status(self.kube, obj.namespace, obj.name, change)
        if written is None:
            return
        message = _kept_text(server_label(user, view.server), until)
        body = {
            "apiVersion": "hubcull.io/v1alpha1",
            "kind": "CullPolicy",
            "metadata": {"name": obj.name, "namespace": obj.namespace},
        }
        try:
            live = await self.kube.read_policy(obj.namespace, obj.name)
            await self.kube.post_event(live or body, "Normal", "Kept", message, iso(now) or "")
        except KubeError as exc:
            log.warning("posting the Kept event of %s/%s failed: %s", obj.namespace, obj.name, exc)


def _kept_text(label: str, until: datetime | None) -> str:
    """``alice/gpu kept until ...`` or ``alice/gpu: keep ended by its user``."""
    return f"{label} kept until {iso(until)}" if until else f"{label}: keep ended by its user"


class ServiceRunner:
    """The service's web server on the running event loop."""

    def __init__(self, service: KeepService) -> None:
        self.service = service
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen on ``JUPYTERHUB_SERVICE_URL``'s host and port."""
        config = self.service.config
        self._runner = web.AppRunner(self.service.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, config.host, config.port)
        await site.start()
        log.info("serving the users' page on %s:%d%s", config.host, config.port, config.prefix)

    async def stop(self) -> None:
        """Stop listening and close the Hub client."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
