"""The CullPolicy spec as typed objects, parsed and validated with clear errors.

:func:`parse_spec` applies the contract's defaults, so a spec that went through the CRD's
defaulting and one written by hand for ``hubcull sweep`` give the same :class:`Policy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .specreader import SecretKeyRef, SpecReader, http_url, secret_ref

__all__ = ["SecretKeyRef"]

MIN_EVERY_SECONDS = 10.0
DEFAULT_EVERY_SECONDS = 600.0
MAX_CONCURRENCY = 100
MAX_PAGE_SIZE = 1000
MIN_USAGE_WINDOW_SECONDS = 60.0

#: The contract's default PromQL templates ({namespace} and {window} are substituted).
DEFAULT_CPU_QUERY = (
    'sum by (namespace, pod) (rate(container_cpu_usage_seconds_total{namespace="{namespace}", '
    'container!=""}[{window}]))'
)
DEFAULT_GPU_QUERY = (
    "max by (namespace, pod) "
    '(max_over_time(DCGM_FI_DEV_GPU_UTIL{namespace="{namespace}"}[{window}]))'
)


class PolicyError(ValueError):
    """A spec that cannot be used; the message names every bad field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


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
class KernelsSpec:
    """``spec.kernels``: judge idleness by each server's kernels and terminals."""

    protect_busy: bool = False
    max_busy: float = 0.0
    idle_from: Literal["hub", "kernels"] = "hub"
    via: Literal["pods", "proxy"] = "pods"
    proxy_url: str = ""
    timeout: float = 10.0
    pod_namespace: str = ""


@dataclass(frozen=True)
class PrometheusSpec:
    """Where the Prometheus HTTP API is and how to authenticate to it."""

    url: str
    token_secret: SecretKeyRef | None = None
    ca_secret: SecretKeyRef | None = None


@dataclass(frozen=True)
class UsageSpec:
    """``spec.usage``: CPU and GPU usage of each server's pod, from Prometheus."""

    prometheus: PrometheusSpec
    window: float = 600.0
    busy_cpu: float = 0.0
    busy_gpu: float = 0.0
    cull_idle_gpu: bool = False
    cpu_query: str = DEFAULT_CPU_QUERY
    gpu_query: str = DEFAULT_GPU_QUERY


@dataclass(frozen=True)
class WarnSpec:
    """``spec.warn``: warn before stopping for idleness or maxAge; optional webhook."""

    before: float = 0.0
    webhook_url_secret: SecretKeyRef | None = None


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
    kernels: KernelsSpec | None = None
    usage: UsageSpec | None = None
    warn: WarnSpec | None = None

    @property
    def needs_groups(self) -> bool:
        """True when deciding needs users' group membership (``read:users:groups``)."""
        return bool(self.selector.groups or self.exclude.groups)

    @property
    def pod_namespace(self) -> str:
        """Where the servers' pods are when not in the policy's namespace (``""``: there)."""
        return self.kernels.pod_namespace if self.kernels is not None else ""

    @property
    def needs_pods(self) -> bool:
        """True when the policy needs the servers' KubeSpawner pods (the operator)."""
        return self.usage is not None or (self.kernels is not None and self.kernels.via == "pods")


def _matcher(reader: SpecReader, with_admins: bool) -> Matcher:
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


def _kernels(top: SpecReader) -> KernelsSpec | None:
    if not top.present("kernels"):
        top.seen.add("kernels")
        return None
    r = top.child("kernels")
    kernels = KernelsSpec(
        protect_busy=r.bool("protectBusy", False),
        max_busy=r.duration("maxBusy", 0.0),
        idle_from=r.choice("idleFrom", ("hub", "kernels")),  # type: ignore[arg-type]
        via=r.choice("via", ("pods", "proxy")),  # type: ignore[arg-type]
        proxy_url=http_url(r, "proxyURL", "http://proxy-public.jhub.svc", required=False),
        timeout=r.duration("timeout", 10.0, minimum=1.0, maximum=60.0),
        pod_namespace=r.dns_label("podNamespace"),
    )
    r.finish()
    if not (kernels.protect_busy or kernels.idle_from == "kernels"):
        r.problems.append(
            "spec.kernels: does nothing: set kernels.protectBusy to true or kernels.idleFrom "
            "to kernels"
        )
    if kernels.max_busy and not kernels.protect_busy:
        r.problems.append("spec.kernels.maxBusy: needs kernels.protectBusy: true")
    if kernels.via == "proxy" and not kernels.proxy_url:
        r.problems.append(
            "spec.kernels.proxyURL: is required with via: proxy (the Hub's public URL, like "
            "http://proxy-public.jhub.svc)"
        )
    return kernels


def _usage(top: SpecReader) -> UsageSpec | None:
    if not top.present("usage"):
        top.seen.add("usage")
        return None
    r = top.child("usage")
    prom_r = r.child("prometheus")
    if not r.present("prometheus"):
        r.problems.append("spec.usage.prometheus: is required (at least its url)")
    prometheus = PrometheusSpec(
        url=http_url(prom_r, "url", "http://prometheus-operated.monitoring.svc:9090"),
        token_secret=secret_ref(prom_r, "tokenSecretRef", required=False),
        ca_secret=secret_ref(prom_r, "caSecretRef", required=False),
    )
    prom_r.finish()
    queries_r = r.child("queries")
    usage = UsageSpec(
        prometheus=prometheus,
        window=r.duration("window", 600.0, minimum=MIN_USAGE_WINDOW_SECONDS),
        busy_cpu=r.number("busyCPU", 0.0, minimum=0.0),
        busy_gpu=r.number("busyGPU", 0.0, minimum=0.0, maximum=100.0),
        cull_idle_gpu=r.bool("cullIdleGPU", False),
        cpu_query=queries_r.str("cpu") or DEFAULT_CPU_QUERY,
        gpu_query=queries_r.str("gpu") or DEFAULT_GPU_QUERY,
    )
    queries_r.finish()
    r.finish()
    if not (usage.busy_cpu or usage.busy_gpu or usage.cull_idle_gpu):
        r.problems.append(
            "spec.usage: does nothing: set usage.busyCPU, usage.busyGPU or usage.cullIdleGPU"
        )
    return usage


def _warn(top: SpecReader) -> WarnSpec | None:
    if not top.present("warn"):
        top.seen.add("warn")
        return None
    r = top.child("warn")
    webhook = None
    if r.present("webhook"):
        webhook_r = r.child("webhook")
        webhook = secret_ref(webhook_r, "urlSecretRef", required=True)
        webhook_r.finish()
    else:
        r.seen.add("webhook")
    warn = WarnSpec(before=r.duration("before", 0.0), webhook_url_secret=webhook)
    r.finish()
    return warn


def _check_features(problems: list[str], kwargs: dict[str, Any]) -> None:
    """Rules between spec.kernels, spec.usage, spec.warn and the limits they act on."""
    usage, warn = kwargs["usage"], kwargs["warn"]
    if usage is not None and usage.cull_idle_gpu and not kwargs["idle_timeout"]:
        problems.append(
            "spec.usage.cullIdleGPU: needs idleTimeout: a GPU must stay idle that long before "
            "its server is stopped"
        )
    if warn is not None and warn.before:
        limits = [kwargs["idle_timeout"], kwargs["max_age"]]
        if not any(limits):
            problems.append(
                "spec.warn.before: warns of stops for idleness or maxAge, but idleTimeout "
                "and maxAge are both 0"
            )
        elif any(0 < limit <= warn.before for limit in limits):
            problems.append(
                "spec.warn.before: must be shorter than idleTimeout and maxAge (a warning "
                "cannot come before the server has been idle at all)"
            )


def parse_spec(spec: Mapping[str, Any] | None) -> Policy:
    """Parse a CullPolicy ``spec`` into a :class:`Policy`, applying the contract's defaults.

    Raises :class:`PolicyError` naming every field that is wrong.
    """
    problems: list[str] = []
    top = SpecReader(spec, "spec", problems)

    hub_r = top.child("hub")
    url = http_url(hub_r, "url", "http://hub:8081/hub/api")
    token = secret_ref(hub_r, "tokenSecretRef", required=True)
    ca = secret_ref(hub_r, "caSecretRef", required=False)
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
        kernels=_kernels(top),
        usage=_usage(top),
        warn=_warn(top),
    )
    top.finish()
    _check_cross_field(problems, servers, users, policy_kwargs, capacity)
    _check_features(problems, policy_kwargs)
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
