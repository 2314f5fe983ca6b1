"""OpenAPI v3 (CRD) schemas as JSON Schema, for the Helm chart's tests.

A CRD's ``openAPIV3Schema`` is almost JSON Schema. :func:`crd_to_jsonschema` turns it into a
JSON Schema that ``jsonschema`` can check rendered CullPolicies against: it maps
``x-kubernetes-int-or-string`` to ``anyOf: [integer, string]`` (when the CRD does not spell
the anyOf out), ``x-kubernetes-list-type: set`` to ``uniqueItems``, drops the Kubernetes-only
keys (CEL rules, defaults, ``format``) and, because the API server prunes unknown fields
silently, forbids unknown fields (``additionalProperties: false``) so a typo in a chart
template fails the test instead of vanishing.

:func:`crd_spec_to_values_schema` derives the ``policySpec`` definition of the chart's
values.schema.json from the CRD's ``spec``: the same fields, types, patterns and limits, but
nothing required (a policy in values is merged over ``policyDefaults`` first). After a CRD
change, refresh it with::

    .venv/bin/python -m tests.support.helm_schema
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "deploy" / "crds" / "cullpolicies.hubcull.io.yaml"
VALUES_SCHEMA = REPO / "deploy" / "helm" / "hubcull" / "values.schema.json"
POLICY_SPEC_DESCRIPTION = (
    "The spec of a CullPolicy, as in the CRD (generated from it by tests/support/helm_schema.py;"
    " tests/test_helm.py checks they agree). Nothing is required here: a policy is merged over"
    " policyDefaults first and the result is validated by the CRD."
)

#: OpenAPI keys that JSON Schema does not know or that would wrongly reject values here.
_DROPPED = {
    "default",
    "format",
    "nullable",
    "example",
    "externalDocs",
    "x-kubernetes-validations",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-preserve-unknown-fields",
}


def _convert(node: Any, *, keep_required: bool, keep_descriptions: bool) -> Any:
    """Convert one schema node (recursively)."""
    opts = {"keep_required": keep_required, "keep_descriptions": keep_descriptions}
    if isinstance(node, list):
        return [_convert(item, **opts) for item in node]
    if not isinstance(node, Mapping):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED or (key == "required" and not keep_required):
            continue
        if key == "description" and not keep_descriptions:
            continue
        if key == "x-kubernetes-int-or-string":
            if value and "anyOf" not in node:
                out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
            continue
        if key == "x-kubernetes-list-type":
            if value == "set":
                out["uniqueItems"] = True
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, **opts) for name, sub in value.items()}
            continue
        out[key] = _convert(value, **opts)
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in node and "additionalProperties" not in node and not preserve:
        out["additionalProperties"] = False
    return out


def crd_version_schema(crd: Mapping[str, Any], version: str) -> dict[str, Any]:
    """Return the ``openAPIV3Schema`` of one version of a CRD manifest."""
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            return copy.deepcopy(entry["schema"]["openAPIV3Schema"])
    raise KeyError(f"{crd['metadata']['name']} has no version {version}")


def crd_to_jsonschema(openapi: Mapping[str, Any]) -> dict[str, Any]:
    """JSON Schema (draft 7) for objects of a CRD version, from its ``openAPIV3Schema``.

    ``apiVersion``, ``kind`` and ``metadata`` are always allowed at the root (the API server
    adds them to every CRD's schema); ``metadata`` stays a free-form object, as the API
    server validates it, not the CRD.
    """
    schema = _convert(openapi, keep_required=True, keep_descriptions=False)
    properties = schema.setdefault("properties", {})
    properties.update(
        apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"}
    )
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    return schema


def crd_spec_to_values_schema(openapi: Mapping[str, Any]) -> dict[str, Any]:
    """The ``policySpec`` of values.schema.json: the CRD's ``spec``, with nothing required."""
    return _convert(openapi["properties"]["spec"], keep_required=False, keep_descriptions=True)


def policy_spec_from_crd(crd_file: Path = CRD_FILE) -> dict[str, Any]:
    """The ``policySpec`` definition values.schema.json should have for the CRD file."""
    crd = yaml.safe_load(crd_file.read_text(encoding="utf-8"))
    spec = crd_spec_to_values_schema(crd_version_schema(crd, "v1alpha1"))
    spec.pop("description", None)
    return {"type": spec.pop("type"), "description": POLICY_SPEC_DESCRIPTION, **spec}


def dump_schema(schema: Mapping[str, Any]) -> str:
    """values.schema.json's formatting: 2-space JSON with a final newline."""
    return json.dumps(schema, indent=2) + "\n"


def main() -> int:
    """Rewrite ``definitions.policySpec`` of the chart's values.schema.json from the CRD."""
    schema = json.loads(VALUES_SCHEMA.read_text(encoding="utf-8"))
    schema["definitions"]["policySpec"] = policy_spec_from_crd()
    VALUES_SCHEMA.write_text(dump_schema(schema), encoding="utf-8")
    print(f"updated definitions.policySpec of {VALUES_SCHEMA.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
