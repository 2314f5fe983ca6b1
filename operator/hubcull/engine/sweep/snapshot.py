"""Reading a complete snapshot of the Hub for one policy, after checking that the token may
read (and do) everything the policy needs: a missing scope is named before anything is
stopped, and a hidden field never silently widens what a policy culls."""

from __future__ import annotations

from ..clock import Clock, utcnow
from ..hub.client import HubClient, HubError, HubForbidden
from ..hub.model import HubDataError, Snapshot, User, parse_user
from ..rules.policy import Policy


async def take_snapshot(policy: Policy, client: HubClient, clock: Clock = utcnow) -> Snapshot:
    """List every user the policy may act on and read the Hub's clock while doing so.

    Running servers come from ``state=ready``; users without running servers (for user
    culling and for removing stopped named servers) from ``state=inactive``.
    """
    client.start_clock()
    info = await client.info()
    check_scopes(policy, await client.token_scopes())
    include_stopped = policy.servers.remove_named
    models = await client.list_users("ready", include_stopped_servers=include_stopped)
    if policy.users.cull or policy.servers.remove_named:
        models += await client.list_users("inactive", include_stopped_servers=include_stopped)
    try:
        users = [parse_user(m) for m in models]
    except HubDataError as exc:
        raise HubError(f"the Hub sent a user model hubcull cannot read: {exc}") from None
    check_visibility(policy, models, users)
    hub_now = client.hub_now
    now, source = (hub_now, "hub") if hub_now is not None else (clock(), "local")
    version = info.get("version")
    return Snapshot.from_users(users, now, str(version) if version else None, source)


def required_scopes(policy: Policy) -> list[tuple[str, str]]:
    """(scope the token must hold, scope to name when it doesn't) for this policy."""
    needed = [("list:users", "list:users"), ("read:servers", "read:servers")]
    if not policy.dry_run:
        needed.append(("delete:servers", "delete:servers"))
    if policy.needs_groups:
        needed.append(("read:users:groups", "read:users:groups"))
    if policy.users.cull:
        needed.append(("read:users:activity", "read:users:activity"))
        if not policy.dry_run:
            needed.append(("delete:users", "admin:users"))
    if policy.kernels is not None:
        # the probes' per-server tokens are made for the servers' users (never the policy's)
        needed.append(("tokens", "tokens"))
    return needed


def check_scopes(policy: Policy, scopes: list[str] | None) -> None:
    """Raise :class:`HubForbidden` naming the first scope the policy needs that the token
    lacks (a filtered scope such as ``delete:servers!group=x`` counts as held)."""
    if scopes is None:
        return
    held = {s.split("!", 1)[0] for s in scopes}
    for scope, name in required_scopes(policy):
        if scope not in held:
            raise HubForbidden(f"the token lacks the scope {name}, which this policy needs", name)


def check_visibility(policy: Policy, models: list[dict], users: list[User]) -> None:
    """Raise :class:`HubForbidden` when the token hides a field the policy depends on.

    Without it a group exclude would silently match nobody and cull protected users.
    """
    if not models:
        return
    if any("servers" not in m for m in models):
        raise HubForbidden(
            "the token cannot read users' servers; grant read:servers", "read:servers"
        )
    if policy.needs_groups and any(u.groups is None for u in users):
        raise HubForbidden(
            "the policy selects or excludes by group but the token cannot read group "
            "membership; grant read:users:groups",
            "read:users:groups",
        )
    if (policy.exclude.admins or policy.users.cull) and any(u.admin is None for u in users):
        raise HubForbidden(
            "the policy needs to know which users are admins; grant list:users", "list:users"
        )
    if policy.users.cull and any(not u.has_activity_field for u in users):
        raise HubForbidden(
            "user culling needs users' last activity; grant read:users:activity",
            "read:users:activity",
        )
