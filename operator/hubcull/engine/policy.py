"""The CullPolicy spec as typed objects, parsed and validated with clear errors.

:func:`parse_spec` applies the contract's defaults, so a spec that went through the CRD's
defaulting and one written by hand for ``hubcull sweep`` give the same :class:`Policy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .durations import DurationError, parse_duration

MIN_EVERY_SECONDS = 10.0
DEFAULT_EVERY_SECONDS = 600.0
MAX_CONCURRENCY = 100
MAX_PAGE_SIZE = 1000


class PolicyError(ValueError):
    """A spec that cannot be used; the message names every bad field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class SecretKeyRef:
    """A key of a Secret in the policy's own namespace."""

    name: str
    key: str


@dataclass(frozen=True)
class HubSpec:
    """Where the Hub's REST API is and how to authenticate to it."""

    url: str
    token_secret: SecretKeyRef
    ca_secret: SecretKeyRef | None = None
    request_timeout: float = 60.0


@dataclass(frozen=True)
class ServerScope:
    """Which kinds of server the policy stops, and whether named ones are removed."""

    default: bool = True
    named: bool = True
    remove_named: bool = False


@dataclass(frozen=True)
class UserCulling:
    """Whether idle users without running servers are deleted."""

    cull: bool = False
    include_admins: bool = False


@dataclass(frozen=True)
class Matcher:
    """Selector or exclude lists: glob users and servers, groups, profiles."""

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    servers: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()
    admins: bool = False


@dataclass(frozen=True)
class Safety:
    """Brakes against mass culling."""

    max_culls_per_sweep: int = 0
    max_cull_percent: int = 100


@dataclass(frozen=True)
class Capacity:
    """Capacity mode: keep at most ``max_active_servers`` running."""

    max_active_servers: int = 0
    min_idle: float = 600.0


@dataclass(frozen=True)
class Policy:
    """A parsed CullPolicy spec with every default applied."""

    hub: HubSpec
    every: float = 600.0
    idle_timeout: float = 3600.0
    max_age: float = 0.0
    servers: ServerScope = field(default_factory=ServerScope)
    users: UserCulling = field(default_factory=UserCulling)
    selector: Matcher = field(default_factory=Matcher)
    exclude: Matcher = field(default_factory=Matcher)
    safety: Safety = field(default_factory=Safety)
    capacity: Capacity = field(default_factory=Capacity)
    concurrency: int = 10
    page_size: int = 200
    dry_run: bool = False
    suspend: bool = False

    @property
    def needs_groups(self) -> bool:
        """True when deciding needs users' group membership (``read:users:groups``)."""
        return bool(self.selector.groups or self.exclude.groups)


class _Reader:
    """Reads one mapping of the spec, remembering problems instead of stopping at the first."""

    def __init__(self, data: object, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            problems.append(f"{path}: must be an object, not {type(data).__name__}")
            data = {}
        self.data: Mapping[str, Any] = data
        self.seen: set[str] = set()

    def _get(self, key: str) -> tuple[bool, Any]:
        self.seen.add(key)
        if key in self.data and self.data[key] is not None:
            return True, self.data[key]
        return False, None

    def bool(self, key: str, default: bool) -> bool:
        present, value = self._get(key)
        if not present:
            return default
        if not isinstance(value, bool):
            self.problems.append(f"{self.path}.{key}: must be true or false, not {value!r}")
            return default
        return value

    def int(self, key: str, default: int, minimum: int, maximum: int | None = None) -> int:
        present, value = self._get(key)
        if not present:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.problems.append(f"{self.path}.{key}: must be a whole number, not {value!r}")
            return default
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"at least {minimum}" if maximum is None else f"{minimum} to {maximum}"
            self.problems.append(f"{self.path}.{key}: must be {bounds}, not {value}")
            return default
        return value

    def duration(self, key: str, default: float, minimum: float = 0.0) -> float:
        present, value = self._get(key)
        if not present:
            return default
        try:
            seconds = parse_duration(value)
        except DurationError as exc:
            self.problems.append(f"{self.path}.{key}: {exc}")
            return default
        if seconds < minimum:
            self.problems.append(f"{self.path}.{key}: must be at least {minimum:g}s, not {value!r}")
            return default
        return seconds

    def str(self, key: str, required: bool = False) -> str | None:
        present, value = self._get(key)
        if not present:
            if required:
                self.problems.append(f"{self.path}.{key}: is required")
            return None
        if not isinstance(value, str) or not value.strip():
            self.problems.append(f"{self.path}.{key}: must be a non-empty string, not {value!r}")
            return None
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        present, value = self._get(key)
        if not present:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problems.append(f"{self.path}.{key}: must be a list of strings, not {value!r}")
            return ()
        return tuple(value)

    def child(self, key: str) -> _Reader:
        _, value = self._get(key)
        return _Reader(value, f"{self.path}.{key}", self.problems)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            names = ", ".join(unknown)
            self.problems.append(f"{self.path}: unknown field(s) {names}")


def _secret_ref(reader: _Reader, key: str, required: bool) -> SecretKeyRef | None:
    present = reader.data.get(key) is not None
    if not present:
        if required:
            reader.problems.append(f"{reader.path}.{key}: is required (a Secret name and key)")
        reader.seen.add(key)
        return None
    ref = reader.child(key)
    name, secret_key = ref.str("name", required=True), ref.str("key", required=True)
    ref.finish()
    if name is None or secret_key is None:
        return None
    return SecretKeyRef(name=name, key=secret_key)


def _hub_url(reader: _Reader) -> str:
    url = reader.str("url", required=True)
    if url is None:
        return ""
    try:
        parts = urlsplit(url)
        bad = parts.scheme not in ("http", "https") or not parts.hostname
        bad = bad or parts.port == 0  # .port raises ValueError for a port out of range
    except ValueError:  # e.g. "http://[::1/hub/api": an unclosed IPv6 literal
        bad = True
    # whitespace or control characters: httpx refuses such a URL with an exception of its own
    if bad or any(ch.isspace() or not ch.isprintable() for ch in url):
        reader.problems.append(
            f"{reader.path}.url: {url!r} must be an http:// or https:// URL of the Hub API, "
            "like http://hub:8081/hub/api"
        )
    return url.rstrip("/")


def _matcher(reader: _Reader, with_admins: bool) -> Matcher:
    matcher = Matcher(
        users=reader.strings("users"),
        groups=reader.strings("groups"),
        servers=reader.strings("servers"),
        profiles=reader.strings("profiles"),
        admins=reader.bool("admins", False) if with_admins else False,
    )
    reader.finish()
    return matcher


def _check_cross_field(
    problems: list[str],
    servers: ServerScope,
    users: UserCulling,
    kwargs: dict[str, Any],
    capacity: Capacity,
) -> None:
    """The CRD's CEL rules, for ``hubcull sweep`` and clusters that skip them."""
    if users.include_admins and not users.cull:
        problems.append("spec.users.includeAdmins: only has a meaning with spec.users.cull: true")
    if servers.remove_named and not servers.named:
        problems.append("spec.servers.removeNamed: needs spec.servers.named: true")
    if not (servers.default or servers.named or users.cull):
        problems.append(
            "spec: the policy culls nothing: set servers.default, servers.named or users.cull"
        )
    if not (kwargs["idle_timeout"] or kwargs["max_age"] or capacity.max_active_servers):
        problems.append(
            "spec: the policy culls nothing: idleTimeout, maxAge and "
            "capacity.maxActiveServers are all 0"
        )


def parse_spec(spec: Mapping[str, Any] | None) -> Policy:
    """Parse a CullPolicy ``spec`` into a :class:`Policy`, applying the contract's defaults.

    Raises :class:`PolicyError` naming every field that is wrong.
    """
    problems: list[str] = []
    top = _Reader(spec, "spec", problems)

    hub_r = top.child("hub")
    url = _hub_url(hub_r)
    token = _secret_ref(hub_r, "tokenSecretRef", required=True)
    ca = _secret_ref(hub_r, "caSecretRef", required=False)
    timeout = hub_r.duration("requestTimeout", 60.0, minimum=1.0)
    hub_r.finish()

    servers_r = top.child("servers")
    servers = ServerScope(
        default=servers_r.bool("default", True),
        named=servers_r.bool("named", True),
        remove_named=servers_r.bool("removeNamed", False),
    )
    servers_r.finish()

    users_r = top.child("users")
    users = UserCulling(
        cull=users_r.bool("cull", False), include_admins=users_r.bool("includeAdmins", False)
    )
    users_r.finish()

    selector = _matcher(top.child("selector"), with_admins=False)
    exclude = _matcher(top.child("exclude"), with_admins=True)

    safety_r = top.child("safety")
    safety = Safety(
        max_culls_per_sweep=safety_r.int("maxCullsPerSweep", 0, minimum=0),
        max_cull_percent=safety_r.int("maxCullPercent", 100, minimum=0, maximum=100),
    )
    safety_r.finish()

    capacity_r = top.child("capacity")
    capacity = Capacity(
        max_active_servers=capacity_r.int("maxActiveServers", 0, minimum=0),
        min_idle=capacity_r.duration("minIdle", 600.0),
    )
    capacity_r.finish()

    policy_kwargs = dict(
        every=top.duration("every", 600.0, minimum=MIN_EVERY_SECONDS),
        idle_timeout=top.duration("idleTimeout", 3600.0),
        max_age=top.duration("maxAge", 0.0),
        concurrency=top.int("concurrency", 10, minimum=1, maximum=MAX_CONCURRENCY),
        page_size=top.int("pageSize", 200, minimum=1, maximum=MAX_PAGE_SIZE),
        dry_run=top.bool("dryRun", False),
        suspend=top.bool("suspend", False),
    )
    top.finish()
    _check_cross_field(problems, servers, users, policy_kwargs, capacity)
    if problems or token is None:
        raise PolicyError(problems or ["spec.hub.tokenSecretRef: is required"])
    return Policy(
        hub=HubSpec(url=url, token_secret=token, ca_secret=ca, request_timeout=timeout),
        servers=servers,
        users=users,
        selector=selector,
        exclude=exclude,
        safety=safety,
        capacity=capacity,
        **policy_kwargs,
    )
