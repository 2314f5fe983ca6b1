"""CullPolicies for CRD tests: the minimal valid one, patches of it, and the bad policies the
API server must refuse with the rule that refuses each (tests/test_crd.py checks them against
the CRD, tests/test_bad_input.py against the operator and ``hubcull sweep``)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

API_VERSION = "hubcull.io/v1alpha1"

CEL_MESSAGES = {
    "nothing": "the policy culls nothing: set servers.default, servers.named or users.cull to true",
    "no_gate": (
        "the policy culls nothing: idleTimeout, maxAge and capacity.maxActiveServers are all 0;"
        " set at least one of them"
    ),
    "every": "every must be at least 10s",
    "remove_named": "servers.removeNamed needs servers.named to be true",
    "include_admins": "users.includeAdmins needs users.cull to be true",
    "kernels_nothing": (
        "spec.kernels does nothing: set kernels.protectBusy to true or kernels.idleFrom to kernels"
    ),
    "max_busy": "kernels.maxBusy needs kernels.protectBusy to be true",
    "proxy_url": (
        "kernels.via proxy needs kernels.proxyURL, the Hub's public URL such as"
        " http://proxy-public.jhub.svc"
    ),
    "kernels_timeout": "kernels.timeout must be between 1s and 60s",
    "usage_nothing": (
        "spec.usage does nothing: set usage.busyCPU, usage.busyGPU or usage.cullIdleGPU"
    ),
    "window": "usage.window must be at least 1m",
    "idle_gpu": (
        "usage.cullIdleGPU needs idleTimeout: a GPU must stay idle that long before its server"
        " is stopped"
    ),
    "keep_max": "keep.max must be more than 0",
    "demand_min_idle": "demand.minIdle must be more than 0",
    "demand_after": "demand.after must be between 5s and 10m",
}


DELETE = object()  # marks a key to remove in a patch


def minimal_policy() -> dict[str, Any]:
    """The smallest valid CullPolicy: only the required fields."""
    return {
        "apiVersion": API_VERSION,
        "kind": "CullPolicy",
        "metadata": {"name": "test", "namespace": "jhub"},
        "spec": {
            "hub": {
                "url": "http://hub:8081/hub/api",
                "tokenSecretRef": {"name": "hub", "key": "hub.services.hubcull.apiToken"},
            }
        },
    }


def patched(patch: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Deep-merge ``patch`` into a copy of ``base`` (the minimal policy); DELETE removes."""
    out = copy.deepcopy(base if base is not None else minimal_policy())
    for key, value in patch.items():
        if value is DELETE:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = patched(value, out[key])
        else:
            out[key] = copy.deepcopy(value)
    return out


def spec(**fields: Any) -> dict[str, Any]:
    """A patch that sets top-level spec fields."""
    return {"spec": fields}


@dataclass(frozen=True)
class Bad:
    """A CullPolicy the API server must refuse, and the rule that refuses it.

    ``by`` is "schema" (``what`` = the OpenAPI keyword, as jsonschema names it) or "cel"
    (``what`` = the rule's message); ``path`` is the dotted path of the offending value.
    """

    id: str
    patch: dict[str, Any]
    by: str
    path: str
    what: str
    detail: str = ""


BAD_POLICIES: list[Bad] = [
    # durations
    Bad("every-negative-int", spec(every=-5), "schema", "spec.every", "minimum"),
    Bad("idleTimeout-negative-int", spec(idleTimeout=-1), "schema", "spec.idleTimeout", "minimum"),
    Bad(
        "idleTimeout-unknown-unit-5w",
        spec(idleTimeout="5w"),
        "schema",
        "spec.idleTimeout",
        "pattern",
    ),
    Bad(
        "idleTimeout-space-10-m", spec(idleTimeout="10 m"), "schema", "spec.idleTimeout", "pattern"
    ),
    Bad(
        "idleTimeout-negative-string",
        spec(idleTimeout="-10m"),
        "schema",
        "spec.idleTimeout",
        "pattern",
    ),
    Bad(
        "idleTimeout-uppercase-unit",
        spec(idleTimeout="10M"),
        "schema",
        "spec.idleTimeout",
        "pattern",
    ),
    Bad(
        "idleTimeout-go-only-unit-ms",
        spec(idleTimeout="500ms"),
        "schema",
        "spec.idleTimeout",
        "pattern",
    ),
    Bad("idleTimeout-empty-string", spec(idleTimeout=""), "schema", "spec.idleTimeout", "pattern"),
    Bad(
        "idleTimeout-bare-number-string",
        spec(idleTimeout="3600"),
        "schema",
        "spec.idleTimeout",
        "pattern",
    ),
    Bad("idleTimeout-boolean", spec(idleTimeout=True), "schema", "spec.idleTimeout", "anyOf"),
    Bad("maxAge-float-seconds", spec(maxAge=1.5), "schema", "spec.maxAge", "anyOf"),
    Bad(
        "minIdle-trailing-dot",
        spec(capacity={"minIdle": "1.h"}),
        "schema",
        "spec.capacity.minIdle",
        "pattern",
    ),
    Bad(
        "requestTimeout-iso8601",
        {"spec": {"hub": {"requestTimeout": "PT1M"}}},
        "schema",
        "spec.hub.requestTimeout",
        "pattern",
    ),
    Bad(
        "idleTimeout-too-long",
        spec(idleTimeout="1s" * 40),
        "schema",
        "spec.idleTimeout",
        "maxLength",
    ),
    # required fields and hub
    Bad("missing-spec", {"spec": DELETE}, "schema", "", "required", "'spec'"),
    Bad("missing-hub", {"spec": {"hub": DELETE}}, "schema", "spec", "required", "'hub'"),
    Bad(
        "missing-hub-url",
        {"spec": {"hub": {"url": DELETE}}},
        "schema",
        "spec.hub",
        "required",
        "'url'",
    ),
    Bad(
        "url-without-scheme",
        {"spec": {"hub": {"url": "hub:8081/hub/api"}}},
        "schema",
        "spec.hub.url",
        "pattern",
    ),
    Bad(
        "url-ftp-scheme",
        {"spec": {"hub": {"url": "ftp://hub/hub/api"}}},
        "schema",
        "spec.hub.url",
        "pattern",
    ),
    Bad(
        "url-without-host",
        {"spec": {"hub": {"url": "https://"}}},
        "schema",
        "spec.hub.url",
        "pattern",
    ),
    Bad(
        "url-with-space",
        {"spec": {"hub": {"url": "http://hub /hub/api"}}},
        "schema",
        "spec.hub.url",
        "pattern",
    ),
    Bad(
        "missing-tokenSecretRef",
        {"spec": {"hub": {"tokenSecretRef": DELETE}}},
        "schema",
        "spec.hub",
        "required",
        "'tokenSecretRef'",
    ),
    Bad(
        "missing-tokenSecretRef-key",
        {"spec": {"hub": {"tokenSecretRef": {"key": DELETE}}}},
        "schema",
        "spec.hub.tokenSecretRef",
        "required",
        "'key'",
    ),
    Bad(
        "empty-tokenSecretRef-name",
        {"spec": {"hub": {"tokenSecretRef": {"name": ""}}}},
        "schema",
        "spec.hub.tokenSecretRef.name",
        "minLength",
    ),
    Bad(
        "tokenSecretRef-name-not-dns",
        {"spec": {"hub": {"tokenSecretRef": {"name": "Hub_1"}}}},
        "schema",
        "spec.hub.tokenSecretRef.name",
        "pattern",
    ),
    Bad(
        "tokenSecretRef-key-with-slash",
        {"spec": {"hub": {"tokenSecretRef": {"key": "a/b"}}}},
        "schema",
        "spec.hub.tokenSecretRef.key",
        "pattern",
    ),
    Bad(
        "caSecretRef-without-key",
        {"spec": {"hub": {"url": "https://hub/hub/api", "caSecretRef": {"name": "ca"}}}},
        "schema",
        "spec.hub.caSecretRef",
        "required",
        "'key'",
    ),
    # numbers
    Bad(
        "maxCullPercent-101",
        spec(safety={"maxCullPercent": 101}),
        "schema",
        "spec.safety.maxCullPercent",
        "maximum",
    ),
    Bad(
        "maxCullPercent-negative",
        spec(safety={"maxCullPercent": -1}),
        "schema",
        "spec.safety.maxCullPercent",
        "minimum",
    ),
    Bad(
        "maxCullsPerSweep-negative",
        spec(safety={"maxCullsPerSweep": -1}),
        "schema",
        "spec.safety.maxCullsPerSweep",
        "minimum",
    ),
    Bad("concurrency-0", spec(concurrency=0), "schema", "spec.concurrency", "minimum"),
    Bad("concurrency-101", spec(concurrency=101), "schema", "spec.concurrency", "maximum"),
    Bad("pageSize-0", spec(pageSize=0), "schema", "spec.pageSize", "minimum"),
    Bad("pageSize-1001", spec(pageSize=1001), "schema", "spec.pageSize", "maximum"),
    Bad("pageSize-string", spec(pageSize="200"), "schema", "spec.pageSize", "type"),
    Bad(
        "maxActiveServers-negative",
        spec(capacity={"maxActiveServers": -1}),
        "schema",
        "spec.capacity.maxActiveServers",
        "minimum",
    ),
    # wrong types
    Bad(
        "servers-default-yes",
        spec(servers={"default": "yes"}),
        "schema",
        "spec.servers.default",
        "type",
    ),
    Bad("dryRun-string", spec(dryRun="true"), "schema", "spec.dryRun", "type"),
    Bad(
        "selector-users-not-a-list",
        spec(selector={"users": "alice"}),
        "schema",
        "spec.selector.users",
        "type",
    ),
    Bad(
        "selector-groups-ints",
        spec(selector={"groups": [1]}),
        "schema",
        "spec.selector.groups[0]",
        "type",
    ),
    Bad(
        "selector-users-duplicate",
        spec(selector={"users": ["alice", "alice"]}),
        "schema",
        "spec.selector.users",
        "uniqueItems",
    ),
    Bad(
        "exclude-users-empty-pattern",
        spec(exclude={"users": [""]}),
        "schema",
        "spec.exclude.users[0]",
        "minLength",
    ),
    Bad(
        "exclude-admins-string",
        spec(exclude={"admins": "true"}),
        "schema",
        "spec.exclude.admins",
        "type",
    ),
    Bad(
        "hub-not-an-object",
        {"spec": {"hub": "http://hub:8081/hub/api"}},
        "schema",
        "spec.hub",
        "type",
    ),
    # unknown fields (strict field validation; by default the API server prunes them instead)
    Bad(
        "unknown-field-typo",
        spec(idleTimeOut="2h"),
        "schema",
        "spec",
        "additionalProperties",
        "'idleTimeOut'",
    ),
    Bad(
        "unknown-field-in-hub",
        {"spec": {"hub": {"token": "secret"}}},
        "schema",
        "spec.hub",
        "additionalProperties",
        "'token'",
    ),
    Bad("unknown-field-at-root", {"specs": {}}, "schema", "", "additionalProperties", "'specs'"),
    # CEL
    Bad(
        "includeAdmins-without-cull",
        spec(users={"includeAdmins": True}),
        "cel",
        "spec.users",
        CEL_MESSAGES["include_admins"],
    ),
    Bad("every-5s", spec(every="5s"), "cel", "spec.every", CEL_MESSAGES["every"]),
    Bad("every-5-int", spec(every=5), "cel", "spec.every", CEL_MESSAGES["every"]),
    Bad("every-zero", spec(every=0), "cel", "spec.every", CEL_MESSAGES["every"]),
    Bad("every-0.1m", spec(every="0.1m"), "cel", "spec.every", CEL_MESSAGES["every"]),
    Bad("every-0d", spec(every="0d"), "cel", "spec.every", CEL_MESSAGES["every"]),
    Bad(
        "removeNamed-without-named",
        spec(servers={"named": False, "removeNamed": True}),
        "cel",
        "spec.servers",
        CEL_MESSAGES["remove_named"],
    ),
    Bad(
        "culls-nothing-all-kinds-off",
        spec(servers={"default": False, "named": False}),
        "cel",
        "spec",
        CEL_MESSAGES["nothing"],
    ),
    Bad(
        "culls-nothing-all-gates-zero", spec(idleTimeout=0), "cel", "spec", CEL_MESSAGES["no_gate"]
    ),
    Bad(
        "culls-nothing-zero-strings",
        spec(idleTimeout="0s", maxAge="0h0m"),
        "cel",
        "spec",
        CEL_MESSAGES["no_gate"],
    ),  # spec.kernels
    Bad(
        "kernels-does-nothing",
        spec(kernels={}),
        "cel",
        "spec.kernels",
        CEL_MESSAGES["kernels_nothing"],
    ),
    Bad(
        "kernels-maxBusy-without-protectBusy",
        spec(kernels={"idleFrom": "kernels", "maxBusy": "4h"}),
        "cel",
        "spec.kernels",
        CEL_MESSAGES["max_busy"],
    ),
    Bad(
        "kernels-proxy-without-proxyURL",
        spec(kernels={"protectBusy": True, "via": "proxy"}),
        "cel",
        "spec.kernels",
        CEL_MESSAGES["proxy_url"],
    ),
    Bad(
        "kernels-idleFrom-unknown",
        spec(kernels={"idleFrom": "cpu"}),
        "schema",
        "spec.kernels.idleFrom",
        "enum",
    ),
    Bad(
        "kernels-via-unknown",
        spec(kernels={"protectBusy": True, "via": "service"}),
        "schema",
        "spec.kernels.via",
        "enum",
    ),
    Bad(
        "kernels-proxyURL-no-scheme",
        spec(kernels={"protectBusy": True, "via": "proxy", "proxyURL": "proxy-public"}),
        "schema",
        "spec.kernels.proxyURL",
        "pattern",
    ),
    Bad(
        "kernels-podNamespace-not-a-name",
        spec(kernels={"protectBusy": True, "podNamespace": "Jhub_Users"}),
        "schema",
        "spec.kernels.podNamespace",
        "pattern",
    ),
    Bad(
        "kernels-timeout-too-long",
        spec(kernels={"protectBusy": True, "timeout": "2m"}),
        "cel",
        "spec.kernels.timeout",
        CEL_MESSAGES["kernels_timeout"],
    ),
    Bad(
        "kernels-timeout-zero",
        spec(kernels={"protectBusy": True, "timeout": 0}),
        "cel",
        "spec.kernels.timeout",
        CEL_MESSAGES["kernels_timeout"],
    ),
    Bad(
        "kernels-protectBusy-string",
        spec(kernels={"protectBusy": "yes"}),
        "schema",
        "spec.kernels.protectBusy",
        "type",
    ),
    # spec.usage
    Bad(
        "usage-without-prometheus",
        spec(usage={"busyCPU": 1}),
        "schema",
        "spec.usage",
        "required",
    ),
    Bad(
        "usage-does-nothing",
        spec(usage={"prometheus": {"url": "http://prometheus:9090"}}),
        "cel",
        "spec.usage",
        CEL_MESSAGES["usage_nothing"],
    ),
    Bad(
        "usage-window-under-a-minute",
        spec(usage={"prometheus": {"url": "http://p:9090"}, "busyCPU": 1, "window": "30s"}),
        "cel",
        "spec.usage.window",
        CEL_MESSAGES["window"],
    ),
    Bad(
        "usage-busyGPU-over-100",
        spec(usage={"prometheus": {"url": "http://p:9090"}, "busyGPU": 101}),
        "schema",
        "spec.usage.busyGPU",
        "maximum",
    ),
    Bad(
        "usage-busyCPU-negative",
        spec(usage={"prometheus": {"url": "http://p:9090"}, "busyCPU": -0.5}),
        "schema",
        "spec.usage.busyCPU",
        "minimum",
    ),
    Bad(
        "usage-busyCPU-quantity-string",
        spec(usage={"prometheus": {"url": "http://p:9090"}, "busyCPU": "500m"}),
        "schema",
        "spec.usage.busyCPU",
        "type",
    ),
    Bad(
        "usage-prometheus-url-no-scheme",
        spec(usage={"prometheus": {"url": "prometheus:9090"}, "busyCPU": 1}),
        "schema",
        "spec.usage.prometheus.url",
        "pattern",
    ),
    Bad(
        "usage-empty-query",
        spec(usage={"prometheus": {"url": "http://p:9090"}, "busyCPU": 1, "queries": {"cpu": ""}}),
        "schema",
        "spec.usage.queries.cpu",
        "minLength",
    ),
    Bad(
        "usage-cullIdleGPU-without-idleTimeout",
        spec(
            idleTimeout=0,
            maxAge="1d",
            usage={"prometheus": {"url": "http://p:9090"}, "cullIdleGPU": True},
        ),
        "cel",
        "spec",
        CEL_MESSAGES["idle_gpu"],
    ),
    Bad(
        "usage-busyGPU-negative",
        spec(usage={"prometheus": {"url": "http://p:9090"}, "busyGPU": -1}),
        "schema",
        "spec.usage.busyGPU",
        "minimum",
    ),
    Bad(
        "usage-window-59-seconds",
        spec(usage={"prometheus": {"url": "http://p:9090"}, "busyCPU": 1, "window": 59}),
        "cel",
        "spec.usage.window",
        CEL_MESSAGES["window"],
    ),
    Bad(
        "usage-window-zero-days",
        spec(usage={"prometheus": {"url": "http://p:9090"}, "busyCPU": 1, "window": "0d"}),
        "cel",
        "spec.usage.window",
        CEL_MESSAGES["window"],
    ),
    Bad(
        "usage-window-in-words",
        spec(usage={"prometheus": {"url": "http://p:9090"}, "busyCPU": 1, "window": "10 min"}),
        "schema",
        "spec.usage.window",
        "pattern",
    ),
    Bad(
        "usage-cullIdleGPU-string",
        spec(usage={"prometheus": {"url": "http://p:9090"}, "cullIdleGPU": "true"}),
        "schema",
        "spec.usage.cullIdleGPU",
        "type",
    ),
    Bad(
        "usage-prometheus-url-with-query",
        spec(usage={"prometheus": {"url": "http://p:9090/?x=1"}, "busyCPU": 1}),
        "schema",
        "spec.usage.prometheus.url",
        "pattern",
    ),
    Bad(
        "usage-token-ref-without-key",
        spec(
            usage={"prometheus": {"url": "http://p", "tokenSecretRef": {"name": "p"}}, "busyCPU": 1}
        ),
        "schema",
        "spec.usage.prometheus.tokenSecretRef",
        "required",
    ),
    Bad(
        "usage-ca-ref-bad-name",
        spec(
            usage={
                "prometheus": {"url": "https://p", "caSecretRef": {"name": "Prom_CA", "key": "ca"}},
                "busyCPU": 1,
            }
        ),
        "schema",
        "spec.usage.prometheus.caSecretRef.name",
        "pattern",
    ),
    Bad(
        "usage-gpu-query-too-long",
        spec(
            usage={"prometheus": {"url": "http://p"}, "busyGPU": 5, "queries": {"gpu": "x" * 4097}}
        ),
        "schema",
        "spec.usage.queries.gpu",
        "maxLength",
    ),
    # spec.warn
    Bad(
        "warn-before-negative",
        spec(warn={"before": -60}),
        "schema",
        "spec.warn.before",
        "minimum",
    ),
    Bad(
        "warn-webhook-without-secret",
        spec(warn={"before": "10m", "webhook": {}}),
        "schema",
        "spec.warn.webhook",
        "required",
    ),
    Bad(
        "warn-webhook-url-inline",
        spec(warn={"before": "10m", "webhook": {"url": "https://hooks.slack.com/x"}}),
        "schema",
        "spec.warn.webhook",
        "required",
    ),
    Bad(
        "demand-min-idle-zero",
        spec(demand={"minIdle": 0}),
        "cel",
        "spec.demand.minIdle",
        CEL_MESSAGES["demand_min_idle"],
    ),
    Bad(
        "demand-min-idle-zero-string",
        spec(demand={"minIdle": "0m0s"}),
        "cel",
        "spec.demand.minIdle",
        CEL_MESSAGES["demand_min_idle"],
    ),
    Bad(
        "demand-after-too-short",
        spec(demand={"minIdle": "15m", "after": "4s"}),
        "cel",
        "spec.demand.after",
        CEL_MESSAGES["demand_after"],
    ),
    Bad(
        "demand-after-too-long",
        spec(demand={"minIdle": "15m", "after": 601}),
        "cel",
        "spec.demand.after",
        CEL_MESSAGES["demand_after"],
    ),
    Bad(
        "demand-scale-up-wait-negative",
        spec(demand={"minIdle": "15m", "scaleUpWait": -1}),
        "schema",
        "spec.demand.scaleUpWait",
        "minimum",
    ),
]
