"""Which users and servers a policy governs: ``selector`` fields AND-ed, ``exclude`` OR-ed."""

from __future__ import annotations

from fnmatch import fnmatchcase

from ..hub.model import Server, User
from .policy import Matcher, Policy


def _any_glob(patterns: tuple[str, ...], value: str) -> bool:
    return any(fnmatchcase(value, pattern) for pattern in patterns)


def _in_groups(groups: tuple[str, ...], user: User) -> bool:
    return bool(set(groups) & set(user.groups or ()))


def _profile_listed(profiles: tuple[str, ...], server: Server) -> bool:
    # "" in the list stands for servers started without a profile.
    return (server.profile or "") in profiles


def user_selected(selector: Matcher, user: User) -> bool:
    """True when the user-level selector fields (users, groups) all match."""
    if selector.users and not _any_glob(selector.users, user.name):
        return False
    return not (selector.groups and not _in_groups(selector.groups, user))


def user_excluded(exclude: Matcher, user: User) -> bool:
    """True when any user-level exclude field (users, groups, admins) matches."""
    if exclude.users and _any_glob(exclude.users, user.name):
        return True
    if exclude.groups and _in_groups(exclude.groups, user):
        return True
    return bool(exclude.admins and user.admin)


def server_in_scope(policy: Policy, user: User, server: Server) -> bool:
    """True when the policy governs this server: kind allowed, selected, not excluded."""
    if server.name == "" and not policy.servers.default:
        return False
    if server.name != "" and not policy.servers.named:
        return False
    selector, exclude = policy.selector, policy.exclude
    if not user_selected(selector, user) or user_excluded(exclude, user):
        return False
    if selector.servers and not _any_glob(selector.servers, server.name):
        return False
    if selector.profiles and not _profile_listed(selector.profiles, server):
        return False
    if exclude.servers and _any_glob(exclude.servers, server.name):
        return False
    return not (exclude.profiles and _profile_listed(exclude.profiles, server))


def user_in_scope_for_deletion(policy: Policy, user: User) -> bool:
    """True when the policy may delete this user (it still has to be idle and serverless).

    Server-level selector fields (servers, profiles) say nothing about users and are ignored;
    admins are deleted only with ``users.includeAdmins`` and never with ``exclude.admins``.
    """
    if user.admin and not policy.users.include_admins:
        return False
    return user_selected(policy.selector, user) and not user_excluded(policy.exclude, user)
