"""What README and docs/kind.md tell a user to run or apply is right.

* Every CullPolicy in README is valid for the CRD and parses in the engine, and one named
  like an example in examples/ is that example (README's gpu policy is examples/gpu-profile.yaml).
* The cluster section's two installs name the released chart at the chart's version, and
  for a build from source the chart's own image values; the upgrade and uninstall notes give
  the CRD commands; the links to the docs exist.
* Every kubectl command of docs/kind.md names its namespace (a kind cluster's default
  namespace is not jhub).
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
import yaml

from hubcull.engine.rules.policy import parse_spec
from tests.support.helm import CHART, REPO, chart_values, run_helm
from tests.support.helm_schema import CRD_FILE, crd_to_jsonschema, crd_version_schema

README = REPO / "README.md"
EXAMPLES = REPO / "examples"


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def _readme_policies() -> list[dict[str, Any]]:
    """The CullPolicy documents of README's yaml blocks."""
    found = []
    for block in re.findall(r"```yaml\n(.*?)```", _readme(), re.S):
        for doc in yaml.safe_load_all(block):
            if isinstance(doc, dict) and doc.get("kind") == "CullPolicy":
                found.append(doc)
    return found


def _examples_by_name() -> dict[str, dict[str, Any]]:
    examples = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        examples[doc["metadata"]["name"]] = doc
    return examples


def test_readme_policies_are_valid():
    """README's CullPolicies pass the CRD's schema and the engine's checks."""
    crd = yaml.safe_load(CRD_FILE.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(crd_to_jsonschema(crd_version_schema(crd, "v1alpha1")))
    policies = _readme_policies()
    assert {p["metadata"]["name"] for p in policies} >= {"gpu", "everyone"}
    for policy in policies:
        assert policy["apiVersion"] == "hubcull.io/v1alpha1"
        errors = [e.message for e in validator.iter_errors(policy)]
        assert not errors, f"{policy['metadata']['name']}: {errors}"
        parse_spec(policy["spec"])


def test_readme_policies_are_the_examples_of_the_same_name():
    """A README policy named like an example is that example, field for field."""
    examples = _examples_by_name()
    shared = [p for p in _readme_policies() if p["metadata"]["name"] in examples]
    assert [p["metadata"]["name"] for p in shared] == ["gpu"]
    for policy in shared:
        example = examples[policy["metadata"]["name"]]
        assert policy["spec"] == example["spec"], policy["metadata"]["name"]
        assert policy["metadata"] == example["metadata"]


def test_readme_installs_the_released_chart_at_the_charts_version():
    """`helm install hubcull oci://ghcr.io/hubcull/charts/hubcull --version X --namespace jhub`
    with X the chart's version: what the release workflow pushes for that tag."""
    version = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))["version"]
    command = (
        f"helm install hubcull oci://ghcr.io/hubcull/charts/hubcull --version {version} "
        "--namespace jhub"
    )
    assert command in _readme()
    workflow = (REPO / ".github" / "workflows" / "release.yml").read_text(encoding="utf-8")
    assert '"oci://ghcr.io/${OWNER}/charts"' in workflow
    assert chart_values()["image"]["repository"] == "ghcr.io/hubcull/hubcull"


def test_readme_from_source_sets_the_charts_image_values():
    """The from-source install builds, pushes and passes that image to the chart."""
    text = _readme()
    build = re.search(r"^\s*docker build -t (\S+):(\S+) \.$", text, re.M)
    assert build, "README builds no image"
    image, tag = build.groups()
    assert f"docker push {image}:{tag}" in text
    assert "helm install hubcull deploy/helm/hubcull --namespace jhub" in text
    assert f"--set image.repository={image} --set image.tag={tag}" in text
    values = chart_values()["image"]
    assert {"repository", "tag"} <= set(values)


def test_readme_upgrade_and_uninstall_notes():
    """CRDs first on upgrade; what uninstall leaves and how to remove the CRD."""
    text = _readme()
    assert "kubectl apply --server-side -f deploy/crds/" in text
    assert (REPO / "deploy" / "crds" / "cullpolicies.hubcull.io.yaml").is_file()
    assert "helm uninstall hubcull --namespace jhub" in text
    assert "kubectl delete crd cullpolicies.hubcull.io" in text


@pytest.mark.parametrize(
    "path", ["README.md", "docs/kind.md", "docs/z2jh.md", "docs/monitoring.md"]
)
def test_relative_links_exist(path):
    """Every relative link (and #anchor into a doc) of the page leads somewhere."""
    page = REPO / path
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\((?!https?://|#)([^)\s]+)\)", text):
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve()
        assert linked.exists(), f"{path}: {target}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
            assert anchor in slugs, f"{path}: {target}"


def test_soak_results_are_where_readme_says():
    """README sends readers to docs/reliability.md for the soak, which has it."""
    assert "[docs/reliability.md](docs/reliability.md#soak)" in _readme()
    assert re.search(r"^## Soak$", (REPO / "docs" / "reliability.md").read_text(), re.M)


def test_kind_doc_kubectl_commands_name_the_namespace():
    """Each kubectl command of docs/kind.md (code blocks and inline) has --namespace jhub,
    except cluster-scoped ones."""
    text = (REPO / "docs" / "kind.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        commands += [line for line in block.replace("\\\n", " ").splitlines() if "kubectl " in line]
    inline = re.findall(r"`(kubectl [^`]*)`", re.sub(r"```.*?```", "", text, flags=re.S))
    commands += [" ".join(c.split()) for c in inline]
    assert len(commands) >= 10
    for command in commands:
        if "kubectl cluster-info" in command:
            continue
        assert "--namespace jhub" in command, command


def test_readme_reads_the_sweep_token_from_the_z2jh_secret():
    """`hubcull sweep`'s token comes from the Secret and key the chart's policies use by
    default: z2jh's Secret `hub`, key `hub.services.hubcull.apiToken` (dots escaped for
    kubectl's jsonpath)."""
    ref = chart_values()["policyDefaults"]["hub"]["tokenSecretRef"]
    key = ref["key"].replace(".", "\\.")
    command = (
        f"export JUPYTERHUB_API_TOKEN=$(kubectl get secret {ref['name']} -n jhub "
        f"-o jsonpath='{{.data.{key}}}' | base64 -d)"
    )
    assert command in _readme()
    assert (ref["name"], ref["key"]) == ("hub", "hub.services.hubcull.apiToken")
    z2jh = (REPO / "docs" / "z2jh.md").read_text(encoding="utf-8")
    values = yaml.safe_load(re.search(r"```yaml\n(.*?)```", z2jh, re.S).group(1))
    assert "apiToken" in values["hub"]["services"]["hubcull"]  # the key's <name> is hubcull


def test_readme_states_the_supported_hub_versions_that_the_tests_use():
    """README's supported JupyterHub majors are the test extra's `jupyterhub>=A,<B`, and the
    version it says was tested is in that range, as is the JupyterHub the tests run."""
    import jupyterhub  # the Hub the suite starts

    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    low, high = map(int, re.search(r'"jupyterhub>=(\d+),<(\d+)"', pyproject).groups())
    text = " ".join(_readme().split())
    majors = " and ".join(str(m) for m in range(low, high))
    assert f"Supported Hubs: JupyterHub {majors}, that is z2jh 4.0.0 or newer" in text
    assert f"`jupyterhub>={low},<{high}`" in text
    tested = re.search(r"this release was tested with JupyterHub (\d+)\.\d+\.\d+", text)
    assert tested and low <= int(tested.group(1)) < high
    assert low <= int(jupyterhub.__version__.split(".")[0]) < high


def _monitoring_commands() -> list[str]:
    text = (REPO / "docs" / "monitoring.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        commands += [line.strip() for line in block.splitlines() if "kubectl " in line]
    commands += re.findall(r"`(kubectl [^`]*)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return commands


@pytest.mark.helm
def test_monitoring_runbooks_work_for_any_release_name_and_with_peering():
    """The runbooks find the operator by label, not by a name that another release name or
    peering (a StatefulSet instead of a Deployment) changes; the objects they look for carry
    that label in both layouts, and the scrape config keeps the metrics Service by it."""
    text = (REPO / "docs" / "monitoring.md").read_text(encoding="utf-8")
    assert "deploy/hubcull" not in text and 'job="hubcull-metrics"' not in text
    operator_commands = [
        c
        for c in _monitoring_commands()
        if re.search(r"kubectl (logs|rollout|describe pod|get pods|get service|get kopf)", c)
    ]
    assert len(operator_commands) >= 6, operator_commands
    for command in operator_commands:
        assert "-l app.kubernetes.io/name=hubcull" in command, command
    scrape = yaml.safe_load(re.search(r"```yaml\n(scrape_configs:.*?)```", text, re.S).group(1))
    [keep] = scrape["scrape_configs"][0]["relabel_configs"]
    for values in ({}, {"replicas": 2, "peering": {"enabled": True}}):
        result = run_helm(["template", "cull", str(CHART), "--namespace", "jhub"], values)
        assert result.returncode == 0, result.output
        objects = [d for d in yaml.safe_load_all(result.stdout) if d]
        kinds = {o["kind"]: o for o in objects}
        workload = kinds["StatefulSet" if values else "Deployment"]
        assert workload["metadata"]["name"] == "cull-hubcull"  # not hubcull
        for obj in [workload, kinds["Service"], *([kinds["KopfPeering"]] if values else [])]:
            assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "hubcull", obj["kind"]
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert pod_labels["app.kubernetes.io/name"] == "hubcull"
        service = kinds["Service"]
        [port] = service["spec"]["ports"]
        seen = ";".join([service["metadata"]["labels"]["app.kubernetes.io/name"], port["name"]])
        assert re.fullmatch(keep["regex"], seen), seen
