"""The page, rendered on the server: plain HTML and one stylesheet, no script. Every value
from the Hub, the user or a policy goes through :func:`html.escape`."""

from __future__ import annotations

from datetime import datetime
from html import escape
from urllib.parse import quote

from ..engine.durations import format_duration
from .servers import Governing, ServerView, iso


def e(value: object) -> str:
    """Escape for HTML text and attribute values."""
    return escape(str(value), quote=True)


def _time(when: datetime | None) -> str:
    if when is None:
        return "—"
    text = iso(when) or ""
    return f'<time datetime="{e(text)}">{e(text.replace("T", " ").replace("Z", " UTC"))}</time>'


def server_title(server: str) -> str:
    """How the page names a server."""
    return "your default server" if server == "" else f"server {server}"


def _stop_text(g: Governing) -> str:
    if g.kept_until is not None and g.stop_reason != "maxAge":
        return f"Kept until {_time(g.kept_until)}"
    if g.protection is not None and g.stop_reason != "maxAge":
        return f"Not while {e(g.protection)}"
    if g.stop_at is None:
        if g.swept_at is None:
            return "Not known yet: the policy has not been swept since the operator started"
        return "Not by this policy"
    why = {"idle": "if it stays idle", "maxAge": "its maximum age"}.get(g.stop_reason or "", "")
    prefix = "Would be reported (dry run) " if g.dry_run else ""
    return f"{prefix}{_time(g.stop_at)} ({e(why)})"


def _policy_row(g: Governing) -> str:
    idle = "—" if g.idle_seconds is None else e(format_duration(g.idle_seconds))
    if g.swept_at is not None and g.idle_seconds is not None:
        idle += f' <span class="note">at {_time(g.swept_at)}</span>'
    warned = "No"
    if g.warned_stop_after is not None:
        warned = f"Yes: not stopped before {_time(g.warned_stop_after)}"
    keeps = (
        "cannot keep (no spec.keep)"
        if g.keep_max is None
        else (
            f"up to {e(format_duration(g.keep_max))}"
            + (f", {g.keeps_used_today} of {g.keep_per_day} today" if g.keep_per_day else "")
        )
    )
    return (
        "<tr>"
        f'<th scope="row">{e(g.namespace)}/{e(g.name)}</th>'
        f"<td>{e(', '.join(g.judged_by))}</td>"
        f"<td>{idle}</td>"
        f"<td>{warned}</td>"
        f"<td>{_stop_text(g)}</td>"
        f"<td>{keeps}</td>"
        "</tr>"
    )


def _keep_forms(index: int, view: ServerView, prefix: str, csrf: str) -> str:
    if view.keep_max is None:
        return (
            '<p class="note">No policy that governs this server lets you keep it; ask your '
            "administrators.</p>"
        )
    action = f"{prefix}servers/{quote(view.server or '~', safe='')}/keep"
    max_hours = view.keep_max / 3600
    step = "0.25" if max_hours >= 0.25 else "any"
    default = min(2.0, max_hours)
    forms = (
        f'<form class="keep" method="post" action="{e(action)}">'
        f'<input type="hidden" name="_xsrf" value="{e(csrf)}">'
        f'<label for="hours-{index}">Keep {e(server_title(view.server))} running for '
        f"(hours, at most {e(format_duration(view.keep_max))})</label> "
        f'<input id="hours-{index}" name="hours" type="number" min="0" '
        f'max="{max_hours:g}" step="{step}" value="{default:g}" required> '
        f'<button type="submit">Keep</button>'
        "</form>"
    )
    if view.kept_until is not None:
        forms += (
            f'<form class="keep" method="post" action="{e(action)}">'
            f'<input type="hidden" name="_xsrf" value="{e(csrf)}">'
            '<input type="hidden" name="hours" value="0">'
            f'<button type="submit" class="secondary">End the keep of '
            f"{e(server_title(view.server))}</button>"
            "</form>"
        )
    return forms


def _server_section(index: int, view: ServerView, prefix: str, csrf: str) -> str:
    title = server_title(view.server)
    if view.kept_until is not None:
        state = f'<p class="state kept">Kept until {_time(view.kept_until)}.</p>'
    else:
        state = '<p class="state">Not kept.</p>'
    if view.policies:
        rows = "".join(_policy_row(g) for g in view.policies)
        table = (
            '<div class="scroll"><table>'
            f"<caption>Policies that govern {e(title)}</caption>"
            '<thead><tr><th scope="col">Policy</th><th scope="col">Judged by</th>'
            '<th scope="col">Idle for</th><th scope="col">Warned</th>'
            '<th scope="col">Would be stopped</th><th scope="col">Keeping</th></tr></thead>'
            f"<tbody>{rows}</tbody></table></div>"
        )
    else:
        table = '<p class="note">No culling policy governs this server.</p>'
    unkept = ""
    if view.unkept_by and view.keep_max is not None:
        names = ", ".join(f"{g.namespace}/{g.name}" for g in view.unkept_by)
        unkept = (
            f'<p class="warning">A keep does not hold against {e(names)}, which has no '
            "spec.keep: it may still stop this server.</p>"
        )
    started = f"Started {_time(view.started)}." if view.started else ""
    return (
        f'<section class="server" aria-labelledby="server-{index}">'
        f'<h2 id="server-{index}">{e(title[:1].upper() + title[1:])}</h2>'
        f'<p class="note">{started}</p>'
        f"{state}{table}{unkept}{_keep_forms(index, view, prefix, csrf)}"
        "</section>"
    )


def render_page(
    *,
    user: str,
    servers: list[ServerView],
    prefix: str,
    hub_home: str,
    csrf: str,
    notice: str | None = None,
    error: str | None = None,
) -> str:
    """The whole page for ``user``."""
    parts = []
    if error:
        parts.append(f'<p class="error" role="alert">{e(error)}</p>')
    if notice:
        parts.append(f'<p class="notice" role="status">{e(notice)}</p>')
    if not servers:
        parts.append("<p>You have no running servers.</p>")
    parts += [_server_section(i, s, prefix, csrf) for i, s in enumerate(servers, 1)]
    body = "".join(parts)
    return (
        "<!DOCTYPE html>"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>Your servers · hubcull</title>"
        f'<link rel="stylesheet" href="{e(prefix)}static/style.css">'
        "</head><body>"
        '<header class="top"><p class="brand">hubcull</p>'
        '<nav aria-label="Account">'
        f"<span>Signed in as <strong>{e(user)}</strong></span> "
        f'<a href="{e(hub_home)}">Back to the Hub</a> '
        f'<form class="inline" method="post" action="{e(prefix)}logout">'
        f'<input type="hidden" name="_xsrf" value="{e(csrf)}">'
        '<button type="submit" class="link">Log out</button></form>'
        "</nav></header>"
        "<main><h1>Your running servers</h1>"
        '<p class="intro">Idle servers are stopped to free resources for others. Here you can '
        "see when yours would be stopped and keep one running for a while.</p>"
        f"{body}</main></body></html>"
    )


def render_message(title: str, message: str, prefix: str, link: tuple[str, str] | None) -> str:
    """A page with one message (login failed, Hub unreachable)."""
    more = f'<p><a href="{e(link[0])}">{e(link[1])}</a></p>' if link else ""
    return (
        "<!DOCTYPE html>"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · hubcull</title>"
        f'<link rel="stylesheet" href="{e(prefix)}static/style.css">'
        "</head><body>"
        '<header class="top"><p class="brand">hubcull</p></header>'
        f'<main><h1>{e(title)}</h1><p role="alert">{e(message)}</p>{more}</main>'
        "</body></html>"
    )
