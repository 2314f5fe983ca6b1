"""The Helm chart (deploy/helm/hubcull) renders valid, minimal, z2jh-ready objects.

These tests run the real ``helm`` CLI (``helm lint --strict`` and ``helm template``) in every
mode the chart has, validate every rendered object (built-in kinds with kubernetes_validate
against Kubernetes 1.25, the chart's minimum, and the newest schemas it ships; CullPolicies
and kopf peerings against their CRDs with jsonschema), and check what matters: the args of
``hubcull run``, the exact RBAC rules, the pod's security context, probes and labels, the
NetworkPolicy, and that values.schema.json rejects bad values.

The tests that run helm are marked ``helm``. They need it at .tools/bin/helm
(``scripts/install_helm.py``) and skip without it, except under CI=true and scripts/test
where a missing helm fails them. The other tests (values.schema.json, values.yaml comments,
the CRD copies, the docs) need no helm. ``helm template`` takes ~0.1 s; renders are cached
per values.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support.helm import (
    CHART,
    NAMESPACE,
    RELEASE,
    REPO,
    chart_values,
    container,
    find,
    lint,
    one,
    render,
    run_helm,
    template,
    values_schema,
    workload,
)
from tests.support.helm_dockerfile import of, parse
from tests.support.helm_schema import crd_to_jsonschema, dump_schema, policy_spec_from_crd
from tests.support.helm_schema import crd_version_schema as crd_schema_of

FULLNAME = "hubcull"  # release "hubcull" + chart "hubcull" -> just "hubcull"
CRD_FILE = REPO / "deploy" / "crds" / "cullpolicies.hubcull.io.yaml"
CHART_CRDS = CHART / "crds"
CHART_YAML = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
#: Kubernetes versions every render is validated against: the chart's minimum and the newest.
K8S_VERSIONS = ("1.25.0", kubernetes_validate.utils.latest_version())

POLICIES = {
    "default": {"idleTimeout": "1h", "every": "10m"},
    "gpu": {
        "idleTimeout": "20m",
        "selector": {"profiles": ["gpu"]},
        "dryRun": False,
        "hub": {"requestTimeout": 30},
    },
}

#: Every mode of the chart: id -> values.
MODES: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaces-list": {"watch": {"namespaces": ["jhub", "jhub-staging"]}},
    "all-namespaces": {"watch": {"allNamespaces": True}},
    "metrics-servicemonitor": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}}
    },
    "metrics-off": {"metrics": {"enabled": False}},
    "network-policy": {"networkPolicy": {"enabled": True}},
    "network-policy-all-namespaces": {
        "watch": {"allNamespaces": True},
        "networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["172.18.0.2/32"]}},
    },
    "policies": {"policies": POLICIES, "policyDefaults": {"dryRun": True}},
    "peering-2-replicas": {"replicas": 2, "peering": {"enabled": True}},
    "peering-all-namespaces": {
        "replicas": 3,
        "peering": {"enabled": True, "name": "hubcull-ha"},
        "watch": {"allNamespaces": True},
    },
    "monitoring": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
        "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
        "grafanaDashboard": {"enabled": True},
    },
    "inspect-servers": {"inspectServers": True, "networkPolicy": {"enabled": True}},
    "inspect-servers-all-namespaces": {
        "inspectServers": True,
        "watch": {"allNamespaces": True},
        "networkPolicy": {"enabled": True},
    },
}

LIVENESS = ["--liveness", "http://0.0.0.0:8080/healthz"]
METRICS = ["--metrics-port", "9090"]
#: The exact `hubcull run` arguments of each mode.
EXPECTED_ARGS: dict[str, list[str]] = {
    "default": ["--namespace", "jhub", *METRICS, *LIVENESS, "--standalone"],
    "namespaces-list": [
        *["--namespace", "jhub", "--namespace", "jhub-staging"],
        *METRICS,
        *LIVENESS,
        "--standalone",
    ],
    "all-namespaces": ["--all-namespaces", *METRICS, *LIVENESS, "--standalone"],
    "metrics-servicemonitor": ["--namespace", "jhub", *METRICS, *LIVENESS, "--standalone"],
    "metrics-off": ["--namespace", "jhub", *LIVENESS, "--standalone"],
    "network-policy": ["--namespace", "jhub", *METRICS, *LIVENESS, "--standalone"],
    "network-policy-all-namespaces": ["--all-namespaces", *METRICS, *LIVENESS, "--standalone"],
    "policies": ["--namespace", "jhub", *METRICS, *LIVENESS, "--standalone"],
    "peering-2-replicas": [
        *["--namespace", "jhub", *METRICS, *LIVENESS],
        *["--peering", "hubcull", "--priority", "$(POD_INDEX)"],
    ],
    "peering-all-namespaces": [
        *["--all-namespaces", *METRICS, *LIVENESS],
        *["--peering", "hubcull-ha", "--priority", "$(POD_INDEX)"],
    ],
    "monitoring": ["--namespace", "jhub", *METRICS, *LIVENESS, "--standalone"],
    "inspect-servers": ["--namespace", "jhub", *METRICS, *LIVENESS, "--standalone"],
    "inspect-servers-all-namespaces": ["--all-namespaces", *METRICS, *LIVENESS, "--standalone"],
}

#: RBAC as (apiGroup, resource, verb) triples: what hubcull and kopf call, nothing else.
BASE_RULES = {
    ("hubcull.io", "cullpolicies", "get"),
    ("hubcull.io", "cullpolicies", "list"),
    ("hubcull.io", "cullpolicies", "watch"),
    ("hubcull.io", "cullpolicies", "patch"),
    ("hubcull.io", "cullpolicies/status", "patch"),
    ("", "secrets", "get"),
    ("", "events", "create"),
}
CRD_WATCH_RULES = {
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
}
#: inspectServers: read and watch the singleuser pods (spec.kernels via: pods, spec.usage,
#: spec.demand), and list the autoscaler's Events about waiting pods (spec.demand).
POD_RULES = {("", "pods", "get"), ("", "pods", "list"), ("", "pods", "watch")}
DEMAND_EVENT_RULES = {("", "events", "list")}


def _peering_rules(resource: str) -> set[tuple[str, str, str]]:
    return {("kopf.dev", resource, verb) for verb in ("list", "watch", "patch")}


CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}


def _is_peering(values: dict[str, Any]) -> bool:
    return bool(values.get("peering", {}).get("enabled"))


def _is_cluster(values: dict[str, Any]) -> bool:
    return bool(values.get("watch", {}).get("allNamespaces"))


def _watched(values: dict[str, Any]) -> list[str]:
    return values.get("watch", {}).get("namespaces") or [NAMESPACE]


def _inspects_servers(values: dict[str, Any]) -> bool:
    return bool(values.get("inspectServers"))


# --------------------------------------------------------------------------------------------
# Schemas of the CRD-backed kinds


def _load_yaml_docs(path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _chart_crds() -> dict[str, dict[str, Any]]:
    """The CRDs in the chart's crds/ folder, by kind."""
    crds: dict[str, dict[str, Any]] = {}
    for path in sorted(CHART_CRDS.glob("*.yaml")):
        for doc in _load_yaml_docs(path):
            assert doc["kind"] == "CustomResourceDefinition", path
            crds[doc["spec"]["names"]["kind"]] = doc
    return crds


@functools.cache
def _crd_validator(kind: str) -> jsonschema.Draft7Validator:
    crd = _chart_crds()[kind]
    served = [v["name"] for v in crd["spec"]["versions"] if v.get("storage")]
    schema = crd_to_jsonschema(crd_schema_of(crd, served[0]))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(autouse=True, scope="module")
def _cache_kubernetes_schemas() -> Iterator[None]:
    """kubernetes_validate re-reads its multi-megabyte JSON schemas on every call: cache them
    for this module (they are only read), which makes validation ~10x faster."""
    cached = functools.cache(kubernetes_validate.utils.schema_contents)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kubernetes_validate.utils, "schema_contents", cached)
        yield


def _validate_object(obj: dict[str, Any]) -> None:
    """Validate one rendered object; raise with a readable message when it is invalid."""
    kind = obj["kind"]
    where = f"{kind}/{obj['metadata']['name']}"
    if kind in {"CullPolicy", "KopfPeering", "ClusterKopfPeering"}:
        crd = _chart_crds()[kind]
        group, version = obj["apiVersion"].split("/")
        assert group == crd["spec"]["group"], where
        assert version in [v["name"] for v in crd["spec"]["versions"] if v["served"]], where
        scope = crd["spec"]["scope"]
        assert ("namespace" in obj["metadata"]) == (scope == "Namespaced"), where
        errors = sorted(_crd_validator(kind).iter_errors(obj), key=lambda e: list(e.path))
        assert not errors, f"{where}: " + "; ".join(
            f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors
        )
        return
    if kind == "ServiceMonitor":
        # The Prometheus Operator's CRD is not vendored here (it is huge and not ours):
        # check the fields a ServiceMonitor needs to select the Service and scrape it.
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        spec = obj["spec"]
        assert spec["selector"]["matchLabels"], where
        assert spec["endpoints"] and all("port" in e for e in spec["endpoints"]), where
        assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}, where
        return
    if kind == "PrometheusRule":
        # Its CRD is the Prometheus Operator's (not vendored): check the shape it defines;
        # test_prometheus_rule_* run promtool on the rules themselves.
        assert obj["apiVersion"] == "monitoring.coreos.com/v1", where
        assert set(obj["spec"]) == {"groups"}, where
        for group in obj["spec"]["groups"]:
            assert set(group) <= {"name", "interval", "rules"} and group["rules"], where
            for rule in group["rules"]:
                assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}
                assert isinstance(rule["expr"], str) and rule["alert"], where
                assert all(isinstance(v, str) for v in rule.get("labels", {}).values()), where
        return
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{where} is invalid for Kubernetes {version}: {exc}") from exc


def _rules(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    triples = set()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames, URLs
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), rule
                    triples.add((group, resource, verb))
    return triples


def _pod_spec(objects) -> dict[str, Any]:
    return workload(objects)["spec"]["template"]["spec"]


# --------------------------------------------------------------------------------------------
# lint and render in every mode


@pytest.mark.helm
@pytest.mark.parametrize("mode", MODES)
def test_lint_strict(mode):
    """`helm lint --strict` passes (no warnings) in every mode."""
    result = lint(MODES[mode])
    assert result.returncode == 0, result.output
    assert "[WARNING]" not in result.output and "[ERROR]" not in result.output


@pytest.mark.helm
@pytest.mark.parametrize("mode", MODES)
def test_every_object_is_valid(mode):
    """Every rendered object validates against the Kubernetes schemas or its CRD."""
    objects = render(MODES[mode])
    assert objects
    for obj in objects:
        _validate_object(obj)


@pytest.mark.helm
@pytest.mark.parametrize("mode", MODES)
def test_names_labels_and_namespaces(mode):
    """Standard labels everywhere; namespaced objects in a namespace; names are unique."""
    objects = render(MODES[mode])
    seen = set()
    for obj in objects:
        meta = obj["metadata"]
        key = (obj["kind"], meta.get("namespace"), meta["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "hubcull"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == f"hubcull-{CHART_YAML['version']}"
        assert labels["app.kubernetes.io/version"] == CHART_YAML["appVersion"]
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in meta, key
        else:
            assert meta["namespace"] in {NAMESPACE, *_watched(MODES[mode])}, key
    if not _is_cluster(MODES[mode]):
        assert not [o for o in objects if o["kind"] in CLUSTER_SCOPED], (
            "namespaced mode must not create cluster-scoped objects"
        )


@pytest.mark.helm
@pytest.mark.parametrize("mode", MODES)
def test_hubcull_run_args(mode):
    """The container runs `hubcull run` with exactly the arguments of its mode."""
    c = container(render(MODES[mode]))
    assert c["command"] == ["hubcull", "run"]
    assert c["args"] == EXPECTED_ARGS[mode]
    assert all(isinstance(a, str) for a in c["args"])


def test_every_mode_has_expected_args():
    """The two tables above cover the same modes."""
    assert set(MODES) == set(EXPECTED_ARGS)


@pytest.mark.helm
def test_command_is_the_image_entrypoint():
    """The chart's command is the Dockerfile's ENTRYPOINT (so a custom image works the same)."""
    (entrypoint,) = of(parse(), "ENTRYPOINT")
    assert container(render())["command"] == entrypoint.exec_form()


@pytest.mark.helm
@pytest.mark.parametrize("mode", MODES)
def test_rbac_rules_are_exactly_what_the_operator_uses(mode):
    """Role per watched namespace (or one ClusterRole) with exactly the operator's rules."""
    values = MODES[mode]
    objects = render(values)
    expected = set(BASE_RULES)
    if _is_cluster(values):
        expected |= CRD_WATCH_RULES
    if _is_peering(values):
        expected |= _peering_rules("clusterkopfpeerings" if _is_cluster(values) else "kopfpeerings")
    if _inspects_servers(values):
        expected |= POD_RULES | DEMAND_EVENT_RULES
    sa = one(objects, "ServiceAccount")["metadata"]
    if _is_cluster(values):
        assert not find(objects, "Role") and not find(objects, "RoleBinding")
        role = one(objects, "ClusterRole")
        binding = one(objects, "ClusterRoleBinding")
        assert _rules(role) == expected
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": role["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["name"], "namespace": NAMESPACE}
        ]
        assert role["metadata"]["name"] == f"{FULLNAME}-{NAMESPACE}"
        return
    roles = find(objects, "Role")
    bindings = find(objects, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(_watched(values))
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(_watched(values))
    for role in roles:
        assert _rules(role) == expected
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["roleRef"]["name"] == FULLNAME
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["name"], "namespace": NAMESPACE}
        ]
    assert _pod_spec(objects)["serviceAccountName"] == sa["name"]


@pytest.mark.helm
def test_rbac_can_be_left_out():
    """rbac.create=false and serviceAccount.create=false: bring your own."""
    objects = render(
        {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "culler"}}
    )
    kinds = {o["kind"] for o in objects}
    assert not kinds & {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    assert "ServiceAccount" not in kinds
    assert _pod_spec(objects)["serviceAccountName"] == "culler"


# --------------------------------------------------------------------------------------------
# the pod


@pytest.mark.helm
def test_default_is_one_pod_with_recreate():
    """By default: a Deployment of one pod, Recreate (never two operators at once)."""
    objects = render()
    assert not find(objects, "StatefulSet")
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for key, value in deployment["spec"]["selector"]["matchLabels"].items():
        assert pod_labels[key] == value


@pytest.mark.helm
@pytest.mark.parametrize("mode", MODES)
def test_pod_can_reach_the_z2jh_hub(mode):
    """The pod carries z2jh's hub.jupyter.org/network-access-hub label, and its
    network-access-singleuser label exactly when inspectServers is on."""
    labels = workload(render(MODES[mode]))["spec"]["template"]["metadata"]["labels"]
    assert labels["hub.jupyter.org/network-access-hub"] == "true"
    singleuser = labels.get("hub.jupyter.org/network-access-singleuser")
    assert singleuser == ("true" if _inspects_servers(MODES[mode]) else None)


@pytest.mark.helm
def test_pod_security():
    """Non-root 65532, read-only root, no privilege escalation, no capabilities, seccomp."""
    objects = render()
    pod = _pod_spec(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(objects)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # The read-only root still leaves Python a writable /tmp.
    mounts = {m["mountPath"]: m["name"] for m in container(objects)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.helm
def test_probes_use_kopfs_health_endpoint():
    """Liveness and readiness GET /healthz on the port passed to --liveness."""
    c = container(render())
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    liveness_url = c["args"][c["args"].index("--liveness") + 1]
    assert liveness_url == f"http://0.0.0.0:{ports['health']}/healthz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
        assert c[probe]["timeoutSeconds"] <= c[probe]["periodSeconds"]


@pytest.mark.helm
def test_resources_have_requests_and_limits():
    """CPU and memory requests and limits are set."""
    resources = container(render())["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) == {"cpu", "memory"}


@pytest.mark.helm
def test_pod_id_names_the_kopf_peer():
    """POD_ID (kopf's identity in peering and logs) is the pod name; POD_NAMESPACE is set."""
    env = {e["name"]: e for e in container(render())["env"]}
    assert env["POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


@pytest.mark.helm
def test_image_tag_defaults_to_app_version_and_digest_wins():
    """The released image by default, tag = appVersion; your own build by repository and
    tag (README's from-source install); a digest pins the image."""
    released = f"ghcr.io/hubcull/hubcull:{CHART_YAML['appVersion']}"
    assert container(render())["image"] == released
    own = {"image": {"repository": "registry.example/me/hubcull", "tag": "dev-1"}}
    assert container(render(own))["image"] == "registry.example/me/hubcull:dev-1"
    digest = "sha256:" + "a" * 64
    c = container(render({"image": {"repository": "r.example/hubcull", "digest": digest}}))
    assert c["image"] == f"r.example/hubcull@{digest}"


# --------------------------------------------------------------------------------------------
# peering


@pytest.mark.helm
@pytest.mark.parametrize("mode", ["peering-2-replicas", "peering-all-namespaces"])
def test_peering_runs_a_statefulset_with_distinct_priorities(mode):
    """Peering: a StatefulSet whose pods take their ordinal as kopf priority."""
    values = MODES[mode]
    objects = render(values)
    assert not find(objects, "Deployment")
    sts = one(objects, "StatefulSet")
    assert sts["spec"]["replicas"] == values["replicas"]
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    c = container(objects)
    env = [e["name"] for e in c["env"]]
    pod_index = next(e for e in c["env"] if e["name"] == "POD_INDEX")
    assert pod_index["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
    }
    # Kubernetes only expands $(POD_INDEX) in args when the variable is defined in env.
    assert c["args"][c["args"].index("--priority") + 1] == "$(POD_INDEX)"
    assert "POD_INDEX" in env and "--standalone" not in c["args"]


@pytest.mark.helm
def test_peering_objects_exist_for_every_served_namespace():
    """kopf only patches the peering object: the chart creates one per watched namespace."""
    values = {
        "replicas": 2,
        "peering": {"enabled": True},
        "watch": {"namespaces": ["jhub", "jhub-staging"]},
    }
    peerings = find(render(values), "KopfPeering")
    assert sorted((p["metadata"]["namespace"], p["metadata"]["name"]) for p in peerings) == [
        ("jhub", "hubcull"),
        ("jhub-staging", "hubcull"),
    ]
    cluster = render(MODES["peering-all-namespaces"])
    assert [p["metadata"]["name"] for p in find(cluster, "ClusterKopfPeering")] == ["hubcull-ha"]
    assert not find(cluster, "KopfPeering")
    assert not find(render(), "KopfPeering") and not find(render(), "ClusterKopfPeering")


@pytest.mark.helm
def test_peering_works_on_the_oldest_kubernetes_with_pod_index_labels():
    """Peering renders on 1.28 (the pod-index label) and refuses 1.27 with a reason."""
    values = MODES["peering-2-replicas"]
    assert template(values, extra=["--kube-version", "1.28.0"]).returncode == 0
    result = template(values, extra=["--kube-version", "1.27.9"])
    assert result.returncode != 0
    assert "peering.enabled needs Kubernetes >= 1.28" in result.output


@pytest.mark.helm
def test_default_renders_on_the_minimum_kubernetes():
    """Without peering the chart renders for Kubernetes 1.25 (Chart.yaml's kubeVersion)."""
    result = template({}, extra=["--kube-version", "1.25.0"])
    assert result.returncode == 0, result.output
    too_old = template({}, extra=["--kube-version", "1.24.0"])
    assert too_old.returncode != 0
    assert "kubeVersion" in too_old.output or ">=1.25.0-0" in too_old.output


# --------------------------------------------------------------------------------------------
# metrics, ServiceMonitor, NetworkPolicy


@pytest.mark.helm
def test_metrics_service_selects_the_pod_port():
    """The metrics Service selects the operator pods and targets the container's port."""
    objects = render()
    service = one(objects, "Service")
    pod_labels = workload(objects)["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in service["spec"]["selector"].items())
    (port,) = service["spec"]["ports"]
    ports = {p["name"]: p["containerPort"] for p in container(objects)["ports"]}
    assert port["name"] == "metrics" and port["targetPort"] == "metrics"
    assert port["port"] == ports["metrics"] == 9090


@pytest.mark.helm
def test_metrics_off_leaves_no_metrics_anywhere():
    """metrics.enabled=false: no Service, no port, no --metrics-port."""
    objects = render(MODES["metrics-off"])
    assert not find(objects, "Service") and not find(objects, "ServiceMonitor")
    assert "metrics" not in [p["name"] for p in container(objects)["ports"]]


@pytest.mark.helm
def test_servicemonitor_scrapes_the_service():
    """The ServiceMonitor selects the metrics Service and scrapes its named port."""
    objects = render(MODES["metrics-servicemonitor"])
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert all(service["metadata"]["labels"].get(k) == v for k, v in selector.items())
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    # hubcull's namespace label (the policy's) is kept over the target's
    assert endpoint["honorLabels"] is True
    assert not find(render(), "ServiceMonitor")


def _egress_ports(rule: dict[str, Any]) -> set[tuple[Any, str]]:
    return {(p["port"], p["protocol"]) for p in rule.get("ports", [])}


@pytest.mark.helm
def test_network_policy_allows_only_the_hub_dns_and_api_server():
    """Egress: Hub pods on 8081, DNS on 53 UDP/TCP, API server on 443/6443; ingress: metrics."""
    objects = render(MODES["network-policy"])
    policy = one(objects, "NetworkPolicy")["spec"]
    pod_labels = workload(objects)["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in policy["podSelector"]["matchLabels"].items())
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    assert policy["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    hub, dns, api = policy["egress"]
    assert hub["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
            "podSelector": {"matchLabels": {"component": "hub", "app": "jupyterhub"}},
        }
    ]
    assert _egress_ports(hub) == {(8081, "TCP")}
    assert "to" not in dns and _egress_ports(dns) == {(53, "UDP"), (53, "TCP")}
    assert api["to"] == [{"ipBlock": {"cidr": "0.0.0.0/0"}}]
    assert _egress_ports(api) == {(443, "TCP"), (6443, "TCP")}


@pytest.mark.helm
def test_network_policy_follows_the_watched_namespaces():
    """Hubs are where the policies are: every watched namespace, or any with allNamespaces."""
    values = {"networkPolicy": {"enabled": True}, "watch": {"namespaces": ["a", "b"]}}
    hub = one(render(values), "NetworkPolicy")["spec"]["egress"][0]
    names = [
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in hub["to"]
    ]
    assert names == ["a", "b"]
    cluster = one(render(MODES["network-policy-all-namespaces"]), "NetworkPolicy")["spec"]
    assert cluster["egress"][0]["to"][0]["namespaceSelector"] == {}
    assert cluster["egress"][2]["to"] == [{"ipBlock": {"cidr": "172.18.0.2/32"}}]
    no_metrics = {"networkPolicy": {"enabled": True}, "metrics": {"enabled": False}}
    assert one(render(no_metrics), "NetworkPolicy")["spec"]["ingress"] == []
    assert not find(render(), "NetworkPolicy")


def _egress_to(policy: dict[str, Any], port: int) -> list[dict[str, Any]]:
    """The egress rules of a NetworkPolicy spec that open a TCP port."""
    return [rule for rule in policy["egress"] if (port, "TCP") in _egress_ports(rule)]


@pytest.mark.helm
def test_inspect_servers_reaches_the_singleuser_pods():
    """inspectServers + NetworkPolicy: egress to component=singleuser-server pods on 8888 in
    the served namespaces; nothing of it without inspectServers."""
    policy = one(render(MODES["inspect-servers"]), "NetworkPolicy")["spec"]
    (rule,) = _egress_to(policy, 8888)
    assert rule["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
            "podSelector": {"matchLabels": {"component": "singleuser-server"}},
        }
    ]
    assert _egress_ports(rule) == {(8888, "TCP")}
    values = {
        "inspectServers": True,
        "networkPolicy": {"enabled": True, "singleuser": {"port": 9999}},
        "watch": {"namespaces": ["a", "b"]},
    }
    (rule,) = _egress_to(one(render(values), "NetworkPolicy")["spec"], 9999)
    assert [
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in rule["to"]
    ] == ["a", "b"]
    cluster = one(render(MODES["inspect-servers-all-namespaces"]), "NetworkPolicy")["spec"]
    (rule,) = _egress_to(cluster, 8888)
    assert rule["to"] == [
        {
            "namespaceSelector": {},
            "podSelector": {"matchLabels": {"component": "singleuser-server"}},
        }
    ]
    assert not _egress_to(one(render(MODES["network-policy"]), "NetworkPolicy")["spec"], 8888)
    assert not find(render({"inspectServers": True}), "NetworkPolicy")


@pytest.mark.helm
def test_inspect_servers_grants_pods_in_the_served_namespaces_only():
    """The pods rule goes to each served namespace's Role (ClusterRole in cluster mode),
    and is absent by default."""
    values = {"inspectServers": True, "watch": {"namespaces": ["a", "b"]}}
    roles = find(render(values), "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["a", "b"]
    for role in roles:
        assert POD_RULES | DEMAND_EVENT_RULES <= _rules(role)
        assert not {r for r in _rules(role) if r[1] == "pods"} - POD_RULES
    assert POD_RULES <= _rules(one(render(MODES["inspect-servers-all-namespaces"]), "ClusterRole"))
    assert not any(r[1] == "pods" for r in _rules(one(render(), "Role")))
    assert not DEMAND_EVENT_RULES & _rules(one(render(), "Role"))


@pytest.mark.helm
def test_pod_namespaces_get_the_pod_rules_and_egress():
    """spec.kernels.podNamespace: podNamespaces gives the operator the same pod permissions
    (and egress) in namespaces it does not serve; a served one is not granted twice."""
    values = {
        "inspectServers": True,
        "podNamespaces": ["users", "a"],
        "watch": {"namespaces": ["a"]},
        "networkPolicy": {"enabled": True},
    }
    objects = render(values)
    roles = {r["metadata"]["namespace"]: r for r in find(objects, "Role")}
    assert sorted(roles) == ["a", "users"]
    assert _rules(roles["users"]) == POD_RULES
    bindings = {b["metadata"]["namespace"]: b for b in find(objects, "RoleBinding")}
    assert bindings["users"]["roleRef"]["name"] == roles["users"]["metadata"]["name"]
    (rule,) = _egress_to(one(objects, "NetworkPolicy")["spec"], 8888)
    assert [
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in rule["to"]
    ] == ["a", "users"]
    without = find(render({"podNamespaces": ["users"]}), "Role")  # inspectServers off
    assert [r["metadata"]["namespace"] for r in without] == [NAMESPACE]


@pytest.mark.helm
def test_log_format_json_reaches_hubcull_run():
    args = container(render({"logFormat": "json"}))["args"]
    assert args[args.index("--log-format") + 1] == "json"
    assert "--log-format" not in container(render())["args"]  # text is hubcull's default


@pytest.mark.helm
def test_prometheus_egress_only_when_configured():
    """networkPolicy.prometheus: off by default; namespaces and/or pod labels select the
    Prometheus pods on its port."""
    assert not _egress_to(one(render(MODES["network-policy"]), "NetworkPolicy")["spec"], 9090)

    def rule_for(prometheus: dict[str, Any]) -> dict[str, Any]:
        values = {"networkPolicy": {"enabled": True, "prometheus": prometheus}}
        (rule,) = _egress_to(one(render(values), "NetworkPolicy")["spec"], prometheus["port"])
        return rule

    labels = {"app.kubernetes.io/name": "prometheus"}
    both = rule_for({"namespaces": ["monitoring"], "podLabels": labels, "port": 9090})
    assert both["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": labels},
        }
    ]
    anywhere = rule_for({"podLabels": labels, "port": 9091})
    assert anywhere["to"] == [{"namespaceSelector": {}, "podSelector": {"matchLabels": labels}}]
    namespace_only = rule_for({"namespaces": ["monitoring"], "port": 9092})
    assert namespace_only["to"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


@pytest.mark.helm
def test_notes_name_the_tokens_scope_with_inspect_servers():
    """NOTES.txt: inspectServers needs the Hub token's tokens scope (the probes' per-server
    tokens), no longer access:servers, and says the Secret is an admin credential."""

    def notes(values):
        result = run_helm(
            ["install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"], values
        )
        assert result.returncode == 0, result.output
        return result.stdout.split("NOTES:", 1)[1]

    with_kernels = notes({"inspectServers": True})
    assert "tokens (or a filtered one such as tokens!group=gpu)" in with_kernels
    assert "admin credential" in with_kernels
    assert "access:servers" not in with_kernels
    assert "tokens!group" not in notes({})


# --------------------------------------------------------------------------------------------
# PrometheusRule and Grafana dashboard

RULES_FILE = CHART / "files" / "prometheus-rules.yaml"
DASHBOARD_FILE = CHART / "files" / "grafana-dashboard.json"


def _rules_file_groups() -> list[dict[str, Any]]:
    return yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))["groups"]


def _promtool_check(groups: list[dict[str, Any]], tmp_path) -> None:
    """`promtool check rules` on the groups (skips without promtool, fails when tools are
    required: tests/support/tools.py)."""
    from tests.support.tools import promtool

    path = tmp_path / "rendered-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.helm
def test_monitoring_is_off_by_default():
    """No PrometheusRule, no dashboard ConfigMap unless asked for."""
    objects = render()
    assert not find(objects, "PrometheusRule") and not find(objects, "ConfigMap")


@pytest.mark.helm
def test_prometheus_rule_is_the_rule_file(tmp_path):
    """By default the PrometheusRule's groups are files/prometheus-rules.yaml as they are,
    with the labels Prometheus selects rules by; promtool accepts the rendered rules."""
    rule = one(render(MODES["monitoring"]), "PrometheusRule")
    assert rule["metadata"]["namespace"] == NAMESPACE
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert rule["spec"]["groups"] == _rules_file_groups()
    alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert alerts == ["HubcullSweepsFailing", "HubcullNoRecentSweep", "HubcullThrottled"]
    _promtool_check(rule["spec"]["groups"], tmp_path)


@pytest.mark.helm
def test_prometheus_rule_window_labels_and_runbook_are_configurable(tmp_path):
    """prometheusRule.window replaces every [30m]; alertLabels join (and may override) the
    rules' labels; runbookURL replaces the base of every runbook_url."""
    values = {
        "prometheusRule": {
            "enabled": True,
            "window": "2h",
            "alertLabels": {"team": "jupyter", "severity": "page"},
            "runbookURL": "https://wiki.example/hubcull",
        }
    }
    groups = one(render(values), "PrometheusRule")["spec"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    originals = {r["alert"]: r for g in _rules_file_groups() for r in g["rules"]}
    for rule in rules:
        original = originals[rule["alert"]]
        assert "[30m]" not in rule["expr"] and "[2h]" in rule["expr"]
        assert rule["expr"] == original["expr"].replace("[30m]", "[2h]")
        assert rule["labels"] == {"team": "jupyter", "severity": "page"}
        assert rule["annotations"]["runbook_url"] == (
            f"https://wiki.example/hubcull#{rule['alert'].lower()}"
        )
        assert rule["for"] == original["for"]
    _promtool_check(groups, tmp_path)
    keep = one(
        render({"prometheusRule": {"enabled": True, "alertLabels": {"team": "j"}}}),
        "PrometheusRule",
    )
    severities = {r["alert"]: r["labels"] for g in keep["spec"]["groups"] for r in g["rules"]}
    assert severities["HubcullThrottled"] == {"severity": "info", "team": "j"}


@pytest.mark.helm
def test_grafana_dashboard_configmap_for_the_sidecar():
    """The ConfigMap carries the sidecar's label and the dashboard JSON file verbatim."""
    config_map = one(render(MODES["monitoring"]), "ConfigMap")
    assert config_map["metadata"]["name"] == f"{FULLNAME}-dashboard"
    assert config_map["metadata"]["namespace"] == NAMESPACE
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (key,) = config_map["data"]
    assert key.endswith(".json")
    assert json.loads(config_map["data"][key]) == json.loads(
        DASHBOARD_FILE.read_text(encoding="utf-8")
    )
    values = {
        "grafanaDashboard": {
            "enabled": True,
            "label": "example.com/dashboard",
            "labelValue": "hubcull",
            "namespace": "monitoring",
            "annotations": {"grafana_folder": "JupyterHub"},
        }
    }
    custom = one(render(values), "ConfigMap")["metadata"]
    assert custom["labels"]["example.com/dashboard"] == "hubcull"
    assert "grafana_dashboard" not in custom["labels"]
    assert custom["namespace"] == "monitoring"
    assert custom["annotations"] == {"grafana_folder": "JupyterHub"}
    _validate_object(one(render(values), "ConfigMap"))


# --------------------------------------------------------------------------------------------
# CullPolicies from values


@pytest.mark.helm
def test_policies_from_values_are_merged_over_the_z2jh_defaults():
    """Each policy lands in the release namespace, with the z2jh Hub URL and token Secret."""
    policies = {p["metadata"]["name"]: p for p in find(render(MODES["policies"]), "CullPolicy")}
    assert sorted(policies) == ["default", "gpu"]
    for policy in policies.values():
        assert policy["apiVersion"] == "hubcull.io/v1alpha1"
        assert policy["metadata"]["namespace"] == NAMESPACE
        assert policy["spec"]["hub"]["url"] == "http://hub:8081/hub/api"
        assert policy["spec"]["hub"]["tokenSecretRef"] == {
            "name": "hub",
            "key": "hub.services.hubcull.apiToken",
        }
    assert policies["default"]["spec"]["dryRun"] is True  # from policyDefaults
    assert policies["gpu"]["spec"]["dryRun"] is False  # a policy's false beats the default
    assert policies["gpu"]["spec"]["hub"]["requestTimeout"] == 30
    assert policies["gpu"]["spec"]["selector"] == {"profiles": ["gpu"]}
    assert policies["default"]["spec"]["idleTimeout"] == "1h"
    assert not find(render(), "CullPolicy")


@pytest.mark.helm
def test_metrics_and_health_ports_differ():
    """The two endpoints cannot share a port; the chart says which values to change."""
    result = template({"metrics": {"port": 8080}})
    assert result.returncode != 0
    assert "metrics.port and health.port are both 8080" in result.output
    assert template({"metrics": {"enabled": False, "port": 8080}}).returncode == 0


@pytest.mark.helm
def test_policies_need_the_release_namespace_watched():
    """Policies go to the release namespace, so it must be served; the chart says so."""
    values = {"watch": {"namespaces": ["other"]}, "policies": {"default": {}}}
    result = template(values)
    assert result.returncode != 0
    assert 'policies are created in the release namespace "jhub"' in result.output


def _notes(values: dict[str, Any]) -> str:
    result = run_helm(
        ["install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"], values
    )
    assert result.returncode == 0, result.output
    return result.stdout.split("NOTES:", 1)[1]


EXTRA_EGRESS = {"to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}], "ports": [{"port": 443}]}


@pytest.mark.helm
@pytest.mark.parametrize(
    ("values", "opens"),
    [
        ({}, "the Hub on port 8081, DNS and the Kubernetes API server, nothing else."),
        (
            {
                "inspectServers": True,
                "networkPolicy": {
                    "singleuser": {"port": 8899},
                    "prometheus": {"namespaces": ["monitoring"], "port": 9091},
                    "extraEgress": [EXTRA_EGRESS],
                },
            },
            "the Hub on port 8081, DNS, the Kubernetes API server, the singleuser servers on "
            "port 8899 (inspectServers), Prometheus on port 9091 (networkPolicy.prometheus) and "
            "the 1 rule(s) of networkPolicy.extraEgress, nothing else.",
        ),
    ],
    ids=["default", "servers-prometheus-extra"],
)
def test_notes_say_what_the_network_policy_opens(values, opens):
    """NOTES.txt names every egress the rendered NetworkPolicy has, not only the Hub's."""
    values = {**values, "networkPolicy": {"enabled": True, **values.get("networkPolicy", {})}}
    notes = " ".join(_notes(values).split())
    assert f"The NetworkPolicy lets the operator reach {opens}" in notes, notes
    egress = one(render(values), "NetworkPolicy")["spec"]["egress"]
    dns = set(chart_values()["networkPolicy"]["dns"]["ports"])
    api = set(chart_values()["networkPolicy"]["apiServer"]["ports"])
    for rule in egress:
        ports = {p["port"] for p in rule["ports"]}
        if ports <= dns or ports <= api or rule == EXTRA_EGRESS:
            continue
        assert all(f"port {port}" in opens for port in ports), (rule, opens)


PROMETHEUS_USAGE = {"prometheus": {"url": "http://prometheus:9090"}, "busyCPU": 0.5}


@pytest.mark.helm
@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"policies": {"gpu": {"kernels": {"protectBusy": True}}}},
            "policies.gpu: spec.kernels with via: pods needs the servers' pods, which the "
            "operator may list only with inspectServers=true: set it (or kernels.via: proxy "
            "with kernels.proxyURL).",
        ),
        (
            {"policyDefaults": {"kernels": {"idleFrom": "kernels"}}, "policies": {"a": {}}},
            "policies.a: spec.kernels with via: pods needs",
        ),
        (
            {"policies": {"gpu": {"usage": PROMETHEUS_USAGE}}},
            "policies.gpu: spec.usage needs the servers' pods, which the operator may list "
            "only with inspectServers=true: set it.",
        ),
        (
            {"policies": {"gpu": {"usage": PROMETHEUS_USAGE, "kernels": {"protectBusy": True}}}},
            "policies.gpu: spec.kernels with via: pods and spec.usage need the servers' pods",
        ),
    ],
    ids=["kernels", "kernels-from-policy-defaults", "usage", "both"],
)
def test_policies_that_need_pods_fail_without_inspect_servers(values, message):
    """A policy from `policies` that needs the servers' pods fails the render with one line
    unless inspectServers is on; via: proxy needs no pods."""
    result = template(values)
    assert result.returncode != 0, "rendered"
    [line] = [line for line in result.stderr.splitlines() if "policies." in line]
    assert line.startswith("Error: execution error at (hubcull/templates/cullpolicies.yaml")
    assert message in line, line
    assert render({**values, "inspectServers": True})  # the same values with it: fine


@pytest.mark.helm
def test_kernels_via_proxy_need_no_inspect_servers():
    kernels = {"protectBusy": True, "via": "proxy", "proxyURL": "http://proxy-public"}
    [policy] = find(render({"policies": {"gpu": {"kernels": kernels}}}), "CullPolicy")
    assert policy["spec"]["kernels"] == kernels


@pytest.mark.helm
@pytest.mark.parametrize("mode", MODES)
def test_notes_render_in_every_mode(mode):
    """NOTES.txt renders (`helm install --dry-run=client`) and names the served namespaces."""
    result = run_helm(
        ["install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"],
        MODES[mode],
    )
    assert result.returncode == 0, result.output
    notes = result.stdout.split("NOTES:", 1)[1]
    if _is_cluster(MODES[mode]):
        assert "every namespace" in notes
    else:
        assert f"It serves CullPolicies in: {', '.join(_watched(MODES[mode]))}." in notes


@pytest.mark.helm
def test_notes_tell_the_next_step():
    """NOTES.txt names the z2jh values to set and how to watch the policies."""
    result = run_helm(
        ["install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"],
        {"policies": {"default": {}}},
    )
    assert result.returncode == 0, result.output
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "hub.services.hubcull.apiToken" in notes
    assert "cull:" in notes and "enabled: false" in notes
    assert "kubectl get cullpolicies --namespace jhub" in notes
    result = run_helm(
        ["install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"], {}
    )
    assert "kind: CullPolicy" in result.stdout.split("NOTES:", 1)[1]


# --------------------------------------------------------------------------------------------
# values.schema.json

#: Values the schema must refuse: id -> (values, text the error must contain).
BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown-top-level-key": ({"replica": 2}, "replica"),
    "replicas-2-without-peering": ({"replicas": 2}, "/peering/enabled"),
    "replicas-zero": ({"replicas": 0}, "/replicas"),
    "replicas-string": ({"replicas": "2"}, "/replicas"),
    "all-namespaces-not-bool": ({"watch": {"allNamespaces": "yes"}}, "/watch/allNamespaces"),
    "namespace-not-dns-label": ({"watch": {"namespaces": ["JHub_Prod"]}}, "/watch/namespaces/0"),
    "namespaces-duplicated": ({"watch": {"namespaces": ["jhub", "jhub"]}}, "/watch/namespaces"),
    "all-namespaces-and-a-list": (
        {"watch": {"allNamespaces": True, "namespaces": ["jhub"]}},
        "/watch/namespaces",
    ),
    "watch-key-typo": ({"watch": {"namespace": ["jhub"]}}, "namespace"),
    "metrics-port-out-of-range": ({"metrics": {"port": 70000}}, "/metrics/port"),
    "servicemonitor-without-metrics": (
        {"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}},
        "/metrics/enabled",
    ),
    "servicemonitor-interval": (
        {"metrics": {"serviceMonitor": {"interval": "30 seconds"}}},
        "/metrics/serviceMonitor/interval",
    ),
    "pull-policy-unknown": ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    "digest-not-sha256": ({"image": {"digest": "latest"}}, "/image/digest"),
    "netpol-hub-port-string": (
        {"networkPolicy": {"hub": {"port": "8081"}}},
        "/networkPolicy/hub/port",
    ),
    "netpol-cidr-not-a-cidr": (
        {"networkPolicy": {"apiServer": {"cidrs": ["kubernetes.default"]}}},
        "/networkPolicy/apiServer/cidrs/0",
    ),
    "security-context-typo": (
        {"containerSecurityContext": {"readOnlyRootFileSystem": True}},
        "readOnlyRootFileSystem",
    ),
    "pod-label-not-string": ({"podLabels": {"team": 1}}, "/podLabels/team"),
    "memory-not-a-quantity": ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits"),
    "extra-args-not-strings": ({"extraArgs": [1]}, "/extraArgs/0"),
    "extra-env-without-name": ({"extraEnv": [{"value": "x"}]}, "/extraEnv/0"),
    "policy-name-not-dns": ({"policies": {"Default": {}}}, "Default"),
    "policy-key-typo": ({"policies": {"default": {"idelTimeout": "1h"}}}, "idelTimeout"),
    "policy-duration-words": (
        {"policies": {"default": {"idleTimeout": "1 hour"}}},
        "/policies/default/idleTimeout",
    ),
    "policy-duration-negative": ({"policies": {"default": {"maxAge": -1}}}, "/policies/default"),
    "policy-hub-url-ftp": (
        {"policyDefaults": {"hub": {"url": "ftp://hub:8081/"}}},
        "/policyDefaults/hub/url",
    ),
    "policy-percent-over-100": (
        {"policies": {"default": {"safety": {"maxCullPercent": 150}}}},
        "/policies/default/safety/maxCullPercent",
    ),
    "policy-concurrency-zero": (
        {"policies": {"default": {"concurrency": 0}}},
        "/policies/default/concurrency",
    ),
    "inspect-servers-not-bool": ({"inspectServers": "yes"}, "/inspectServers"),
    "singleuser-port-string": (
        {"networkPolicy": {"singleuser": {"port": "notebook-port"}}},
        "/networkPolicy/singleuser/port",
    ),
    "singleuser-label-not-string": (
        {"networkPolicy": {"singleuser": {"podLabels": {"tier": 1}}}},
        "/networkPolicy/singleuser/podLabels/tier",
    ),
    "prometheus-namespace-not-dns": (
        {"networkPolicy": {"prometheus": {"namespaces": ["Monitoring"]}}},
        "/networkPolicy/prometheus/namespaces/0",
    ),
    "prometheus-rule-window-words": (
        {"prometheusRule": {"window": "30 minutes"}},
        "/prometheusRule/window",
    ),
    "prometheus-rule-runbook-not-url": (
        {"prometheusRule": {"runbookURL": "docs/monitoring.md"}},
        "/prometheusRule/runbookURL",
    ),
    "prometheus-rule-without-metrics": (
        {"metrics": {"enabled": False}, "prometheusRule": {"enabled": True}},
        "/metrics/enabled",
    ),
    "dashboard-label-with-space": (
        {"grafanaDashboard": {"label": "grafana dashboard"}},
        "/grafanaDashboard/label",
    ),
    "dashboard-key-typo": ({"grafanaDashboard": {"enable": True}}, "enable"),
}


@pytest.mark.helm
@pytest.mark.parametrize("values, fragment", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_schema_rejects_bad_values(values, fragment):
    """`helm template` stops with a schema error that points at the bad value."""
    result = template(values)
    assert result.returncode != 0, f"accepted {values}"
    assert "values don't meet the specifications of the schema" in result.output, result.output
    assert fragment in result.output, result.output


@pytest.mark.helm
def test_lint_rejects_bad_values_too():
    """`helm lint --strict` applies the same schema."""
    result = lint({"replicas": 2})
    assert result.returncode != 0
    assert "/peering/enabled" in result.output


@pytest.mark.helm
@pytest.mark.parametrize(
    "values, message",
    [
        ({"replicas": 2}, "two operators without kopf peering would both cull"),
        (
            {"watch": {"allNamespaces": True, "namespaces": ["a"]}},
            "leave watch.namespaces empty",
        ),
        (
            {"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}},
            "metrics.serviceMonitor.enabled needs metrics.enabled=true",
        ),
        (
            {"metrics": {"enabled": False}, "prometheusRule": {"enabled": True}},
            "prometheusRule.enabled needs metrics.enabled=true",
        ),
    ],
    ids=[
        "replicas-without-peering",
        "all-namespaces-and-list",
        "servicemonitor-without-metrics",
        "prometheus-rule-without-metrics",
    ],
)
def test_templates_refuse_bad_combinations_without_the_schema(values, message):
    """The templates `fail` too, for `helm template --skip-schema-validation` users."""
    result = template(values, extra=["--skip-schema-validation"])
    assert result.returncode != 0
    assert message in result.output, result.output


def _schema_nodes(node: Any, path: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _schema_nodes(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _schema_nodes(value, f"{path}/{i}")


#: Schema nodes that are free-form Kubernetes objects passed through to the pod spec.
PASSTHROUGH = re.compile(
    r"/(valueFrom|seLinuxOptions|windowsOptions|appArmorProfile|nodeAffinity|podAffinity"
    r"|podAntiAffinity|podSelector|namespaceSelector|sysctls/items)$"
)


def test_schema_forbids_unknown_keys_at_every_level():
    """Every object in values.schema.json lists its keys with additionalProperties: false,
    or is a typed map (labels, resource lists, policies) or a passthrough Kubernetes object."""
    schema = values_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    for path, node in _schema_nodes(schema):
        if path.startswith("#/allOf/"):
            continue  # the cross-field if/then rules constrain keys defined elsewhere
        if "properties" in node and not path.endswith("/properties"):
            assert node.get("additionalProperties") is False, path
        elif node.get("type") == "object" and not path.endswith("/properties"):
            typed_map = isinstance(node.get("additionalProperties"), dict)
            assert typed_map or PASSTHROUGH.search(path), f"{path} accepts any key"


def test_default_values_match_the_schema():
    """values.yaml itself validates (jsonschema agrees with helm)."""
    jsonschema.Draft7Validator(values_schema()).validate(chart_values())


def test_schema_policy_spec_is_the_crds():
    """The policySpec definition is the CRD's spec, generated by tests/support/helm_schema.py."""
    assert values_schema()["definitions"]["policySpec"] == policy_spec_from_crd(CRD_FILE), (
        "values.schema.json's policySpec is out of date with the CRD: run "
        "`.venv/bin/python -m tests.support.helm_schema`"
    )


def _commented_keys() -> Iterator[tuple[str, int, bool]]:
    """(dotted key, line, has a comment) for each chart-own key of values.yaml."""
    text = (CHART / "values.yaml").read_text(encoding="utf-8")
    lines = text.splitlines()
    schema = values_schema()

    def walk(node: yaml.Node, schema_node: dict[str, Any], prefix: str) -> Iterator:
        if not isinstance(node, yaml.MappingNode):
            return
        props = schema_node.get("properties", {})
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line
            above = lines[line - 1].strip() if line else ""
            commented = above.startswith("#") or " #" in lines[line]
            yield f"{prefix}{key}", line + 1, commented
            child = props.get(key, {})
            if "properties" in child:  # the chart's own structure; $refs are Kubernetes types
                yield from walk(value_node, child, f"{prefix}{key}.")

    yield from walk(yaml.compose(text), schema, "")


def test_every_value_has_a_comment():
    """Every key of the chart's own values has a comment right above it (or on its line)."""
    keys = list(_commented_keys())
    assert len(keys) > 40
    missing = [f"{key} (line {line})" for key, line, commented in keys if not commented]
    assert not missing, f"values.yaml keys without a comment: {missing}"


# --------------------------------------------------------------------------------------------
# Chart.yaml and the CRDs


def test_chart_metadata():
    """apiVersion v2, Kubernetes >= 1.25, appVersion = the package version."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["apiVersion"] == "v2"
    assert chart["kubeVersion"] == ">=1.25.0-0"
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    version = re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1)
    assert chart["appVersion"] == version


def test_chart_crd_is_the_projects_crd_byte_for_byte():
    """crds/cullpolicies.hubcull.io.yaml is an exact copy of deploy/crds/'s."""
    assert (CHART_CRDS / CRD_FILE.name).read_bytes() == CRD_FILE.read_bytes(), (
        f"copy {CRD_FILE.relative_to(REPO)} to {CHART_CRDS.relative_to(REPO)}/"
    )


def test_chart_crds_are_the_cullpolicy_and_kopf_peerings():
    """crds/ holds the CullPolicy CRD and kopf's two peering CRDs, nothing else."""
    crds = _chart_crds()
    assert sorted(crds) == ["ClusterKopfPeering", "CullPolicy", "KopfPeering"]
    assert crds["KopfPeering"]["spec"]["scope"] == "Namespaced"
    assert crds["ClusterKopfPeering"]["spec"]["scope"] == "Cluster"
    for kind in ("KopfPeering", "ClusterKopfPeering"):
        crd = crds[kind]
        assert crd["spec"]["group"] == "kopf.dev"
        assert crd["metadata"]["name"] == f"{crd['spec']['names']['plural']}.kopf.dev"
        (version,) = crd["spec"]["versions"]
        assert version["name"] == "v1"
        # kopf patches .status on the object itself: no status subresource.
        assert "subresources" not in version
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True
    for crd in crds.values():
        _validate_object(crd)


def test_values_schema_is_pretty_json():
    """values.schema.json is formatted as the generator writes it (2-space JSON)."""
    text = (CHART / "values.schema.json").read_text(encoding="utf-8")
    assert text == dump_schema(json.loads(text))


# --------------------------------------------------------------------------------------------
# docs/z2jh.md, docs/kind.md and kind-config.yaml

DOCS = REPO / "docs"
#: The token scopes every hubcull policy needs (docs/cullpolicy-api.md).
MINIMAL_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]
#: z2jh's `cull:` keys and their defaults (z2jh's values.yaml).
Z2JH_CULL_DEFAULTS = {
    "enabled": True,
    "users": False,
    "adminUsers": True,
    "removeNamedServers": False,
    "timeout": 3600,
    "every": 600,
    "concurrency": 10,
    "maxAge": 0,
}


def _yaml_blocks(path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]


def _heredoc(path, opener: str) -> str:
    text = path.read_text(encoding="utf-8")
    match = re.search(re.escape(opener) + r"\n(.*?)\nEOF\n", text, re.S)
    assert match, f"{path.name}: no heredoc after {opener!r}"
    return match.group(1)


def _check_z2jh_values(values: dict[str, Any]) -> None:
    """The z2jh values register the service the chart's token key names, with its role."""
    key = chart_values()["policyDefaults"]["hub"]["tokenSecretRef"]["key"]
    service = re.fullmatch(r"hub\.services\.([^.]+)\.apiToken", key).group(1)
    assert values["hub"]["services"][service]["apiToken"]
    role = values["hub"]["loadRoles"][service]
    assert role["services"] == [service]
    assert role["scopes"][: len(MINIMAL_SCOPES)] == MINIMAL_SCOPES
    assert set(role["scopes"]) <= {*MINIMAL_SCOPES, "read:users:groups", "admin:users"}
    assert values["cull"] == {"enabled": False}


def _check_policy(policy: dict[str, Any]) -> dict[str, Any]:
    errors = list(_crd_validator("CullPolicy").iter_errors(policy))
    assert not errors, [e.message for e in errors]
    spec = policy["spec"]
    defaults = chart_values()["policyDefaults"]["hub"]
    assert spec["hub"]["url"] == defaults["url"]
    assert spec["hub"]["tokenSecretRef"] == defaults["tokenSecretRef"]
    return spec


def test_z2jh_doc_values_and_policy():
    """docs/z2jh.md's values register hubcull; its CullPolicy is z2jh's default culler."""
    blocks = _yaml_blocks(DOCS / "z2jh.md")
    values = next(b for b in blocks if isinstance(b, dict) and "hub" in b)
    _check_z2jh_values(values)
    policies = [b for b in blocks if isinstance(b, dict) and b.get("kind") == "CullPolicy"]
    (policy,) = [p for p in policies if p["metadata"]["name"] == "default"]
    spec = _check_policy(policy)
    z2jh = Z2JH_CULL_DEFAULTS
    assert spec["every"] == z2jh["every"] and spec["idleTimeout"] == z2jh["timeout"]
    assert spec["maxAge"] == z2jh["maxAge"] and spec["concurrency"] == z2jh["concurrency"]
    assert spec["servers"]["removeNamed"] == z2jh["removeNamedServers"]
    assert spec["users"]["cull"] == z2jh["users"]


def test_z2jh_doc_kernel_aware_role_and_proxy_caveat():
    """docs/z2jh.md: the role for spec.kernels is the minimal one plus tokens (with the
    filtered form named; access:servers is no longer in any role), the threat model is
    there, and via: proxy comes with last_activity_interval = 0."""
    text = (DOCS / "z2jh.md").read_text(encoding="utf-8")
    blocks = [b for b in _yaml_blocks(DOCS / "z2jh.md") if isinstance(b, dict) and "hub" in b]
    roles = [
        b["hub"]["loadRoles"]["hubcull"]
        for b in blocks
        if "hubcull" in b["hub"].get("loadRoles", {})  # not spec.keep's block (the user role)
    ]
    kernels = [r for r in roles if "tokens" in r["scopes"]]
    assert len(kernels) == 1
    assert kernels[0]["scopes"] == [*MINIMAL_SCOPES, "tokens"]
    assert kernels[0]["services"] == ["hubcull"]
    assert not any("access:servers" in scope for r in roles for scope in r["scopes"])
    assert "tokens!group=gpu" in text
    assert "**Threat model.**" in text and "admin credential" in text
    configs = [b["hub"]["config"] for b in blocks if "config" in b["hub"]]
    assert {"JupyterHub": {"last_activity_interval": 0}} in configs
    assert "inspectServers: true" in text
    assert "hub.jupyter.org/network-access-singleuser" in text


def test_deploy_rbac_documents_the_optional_pods_rule():
    """deploy/rbac's commented pods rule is, uncommented, the chart's inspectServers rule."""
    for name in ("role.yaml", "clusterrole.yaml"):
        text = (REPO / "deploy" / "rbac" / name).read_text(encoding="utf-8")
        blocks = re.findall(
            r"^  # - apiGroups: (.*)\n  #   resources: (.*)\n  #   verbs: (.*)$", text, re.M
        )
        pods = [b for b in blocks if yaml.safe_load(b[1]) == ["pods"]]
        assert len(pods) == 1, f"{name}: no commented pods rule"
        groups, resources, verbs = (yaml.safe_load(part) for part in pods[0])
        rule = {"apiGroups": groups, "resources": resources, "verbs": verbs}
        assert _rules({"rules": [rule]}) == POD_RULES, name


def test_z2jh_doc_migration_table_maps_every_cull_key():
    """The migration table has a row for each z2jh `cull:` key, naming real spec fields."""
    text = (DOCS / "z2jh.md").read_text(encoding="utf-8")
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `(\w+)` \[[^\]]*\] \| ([^|]*) \|", text, re.M)
    }
    assert set(rows) == set(Z2JH_CULL_DEFAULTS)
    spec_schema = crd_schema_of(_load_yaml_docs(CRD_FILE)[0], "v1alpha1")["properties"]["spec"]
    for key, cell in rows.items():
        fields = re.findall(r"`spec\.([\w.]+)`", cell)
        assert fields, f"cull.{key}: no spec field named"
        for field in fields:
            node = spec_schema
            for part in field.split("."):
                node = node["properties"][part]


def test_kind_doc_commands():
    """docs/kind.md: cluster from kind-config.yaml, z2jh, image build + load, chart, policy."""
    doc = (DOCS / "kind.md").read_text(encoding="utf-8")
    config = yaml.safe_load((REPO / "kind-config.yaml").read_text(encoding="utf-8"))
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert [n["role"] for n in config["nodes"]] == ["control-plane"]
    cluster = config["name"]
    build = re.search(r"^docker build -t (\S+):(\S+) \.$", doc, re.M)
    assert build, "docs/kind.md builds no image"
    repository, tag = build.groups()
    for command in (
        "kind create cluster --config kind-config.yaml",
        "helm repo add jupyterhub https://hub.jupyter.org/helm-chart/",
        f"kind load docker-image {repository}:{tag} --name {cluster}",
        "helm install hubcull deploy/helm/hubcull --namespace jhub",
        f"--set image.repository={repository} --set image.tag={tag}",
        "get cullpolicies -o wide -w",
        f"kind delete cluster --name {cluster}",
    ):
        assert command in doc, command
    values = yaml.safe_load(_heredoc(DOCS / "kind.md", "cat > z2jh-values.yaml <<EOF"))
    _check_z2jh_values(values)
    node_port = values["proxy"]["service"]["nodePorts"]["http"]
    mapped = [m["containerPort"] for m in config["nodes"][0]["extraPortMappings"]]
    assert node_port in mapped
    policy = yaml.safe_load(_heredoc(DOCS / "kind.md", "apply -f - <<'EOF'"))
    policy["metadata"]["namespace"] = NAMESPACE
    _check_policy(policy)


@pytest.mark.helm
def test_hub_service_serves_the_users_page_behind_a_service():
    """hubService.enabled: `--service`, JupyterHub's service variables (the token from its
    Secret), a container port and a Service for z2jh's hub.services.hubcull.url, and the
    NetworkPolicy admits the Hub's proxy to it; off by default, nothing of it is there."""
    values = {"hubService": {"enabled": True, "publicURL": "https://hub.example.org"}}
    objects = render({**values, "networkPolicy": {"enabled": True}})
    main = container(objects)
    assert "--service" in main["args"]
    env = {e["name"]: e for e in main["env"]}
    assert env["JUPYTERHUB_API_URL"]["value"] == "http://hub:8081/hub/api"
    assert env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "hub",
        "key": "hub.services.hubcull.apiToken",
    }
    assert env["JUPYTERHUB_SERVICE_URL"]["value"] == "http://0.0.0.0:8081"
    assert env["JUPYTERHUB_SERVICE_PREFIX"]["value"] == "/services/hubcull/"
    assert env["JUPYTERHUB_PUBLIC_URL"]["value"] == "https://hub.example.org"
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports["hub-service"] == 8081
    page = next(
        s for s in find(objects, "Service") if not s["metadata"]["name"].endswith("metrics")
    )
    assert page["spec"]["ports"] == [
        {"name": "hub-service", "port": 8081, "targetPort": "hub-service", "protocol": "TCP"}
    ]
    ingress = one(objects, "NetworkPolicy")["spec"]["ingress"]
    to_page = [r for r in ingress if r["ports"][0]["port"] == "hub-service"]
    assert to_page and {"component": "proxy", "app": "jupyterhub"} in [
        peer["podSelector"]["matchLabels"] for peer in to_page[0]["from"]
    ]
    plain = render()
    assert "--service" not in container(plain)["args"]
    assert [s["metadata"]["name"] for s in find(plain, "Service")] == [
        s["metadata"]["name"]
        for s in find(plain, "Service")
        if s["metadata"]["name"].endswith("metrics")
    ]
