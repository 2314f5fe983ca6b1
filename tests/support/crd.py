"""Load the CullPolicy CRD and mimic what the Kubernetes API server does with a CullPolicy.

The API server handles a create/update of a custom resource in this order, and so do the
helpers here (see :func:`admit`):

1. null values of non-nullable fields are dropped;
2. unknown fields are pruned (or, with ``fieldValidation=Strict`` / ``kubectl
   --validate=strict``, rejected: :func:`to_jsonschema` with ``strict=True`` mimics that with
   ``additionalProperties: false``);
3. defaults from the schema are applied (:func:`apply_defaults`);
4. the OpenAPI v3 schema is checked (here with :mod:`jsonschema`, after converting the
   Kubernetes dialect with :func:`to_jsonschema`);
5. unless step 4 found a "blocking" error (wrong type, missing required field, too long...),
   the CEL ``x-kubernetes-validations`` rules run, each with ``self`` bound to the value at
   the rule's level (here with :mod:`celpy`, see :func:`evaluate_rules`).

CEL in Kubernetes is cel-go: ``matches()`` is RE2 (celpy also uses RE2) and ``duration()`` is
Go's ``time.ParseDuration`` (units ns..h, no ``d``), which celpy does differently (it accepts
``d`` and refuses ``"0"``), so :func:`go_parse_duration` replaces celpy's ``duration()``.

:func:`structural_problems` checks the schema against the Kubernetes structural-schema rules
that matter for this CRD (the API server refuses a non-structural CRD).
"""

from __future__ import annotations

import copy
import datetime
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import re2
import yaml
from celpy import celtypes

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "deploy" / "crds" / "cullpolicies.hubcull.io.yaml"
EXAMPLES_DIR = REPO / "examples"
RBAC_DIR = REPO / "deploy" / "rbac"

#: The duration syntax of the contract; the engine parses durations with the same regex.
DURATION_PATTERN = r"^(0|([0-9]+(\.[0-9]+)?[smhd])+)$"

#: The only ``anyOf`` Kubernetes accepts (compared with reflect.DeepEqual) as int-or-string.
INT_OR_STRING_ANY_OF = [{"type": "integer"}, {"type": "string"}]

#: Schema keys that Kubernetes JSONSchemaProps knows (apiextensions.k8s.io/v1).
KNOWN_SCHEMA_KEYS = frozenset(
    {
        "$ref",
        "$schema",
        "additionalItems",
        "additionalProperties",
        "allOf",
        "anyOf",
        "default",
        "definitions",
        "dependencies",
        "description",
        "enum",
        "example",
        "exclusiveMaximum",
        "exclusiveMinimum",
        "externalDocs",
        "format",
        "id",
        "items",
        "maxItems",
        "maxLength",
        "maxProperties",
        "maximum",
        "minItems",
        "minLength",
        "minProperties",
        "minimum",
        "multipleOf",
        "not",
        "nullable",
        "oneOf",
        "pattern",
        "patternProperties",
        "properties",
        "required",
        "title",
        "type",
        "uniqueItems",
        "x-kubernetes-embedded-resource",
        "x-kubernetes-int-or-string",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-list-type",
        "x-kubernetes-map-type",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-validations",
    }
)

#: Keys that must not appear inside anyOf/allOf/oneOf/not for a schema to be structural.
FORBIDDEN_IN_QUANTIFIERS = frozenset(
    {
        "type",
        "default",
        "title",
        "description",
        "nullable",
        "additionalProperties",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-embedded-resource",
        "x-kubernetes-int-or-string",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-list-type",
        "x-kubernetes-map-type",
        "x-kubernetes-validations",
    }
)

#: jsonschema validator keywords whose failure makes the API server skip the CEL rules
#: (apiextensions-apiserver ``hasBlockingErr``: type, required, enum, too long, too many).
BLOCKING_KEYWORDS = frozenset(
    {"type", "anyOf", "required", "enum", "maxLength", "maxItems", "maxProperties"}
)

QUANTIFIERS = ("anyOf", "allOf", "oneOf")


# --------------------------------------------------------------------------- loading


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    """Return the non-empty YAML documents of ``path``."""
    with path.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc]


@cache
def _load_crd_cached() -> dict[str, Any]:
    (crd,) = load_yaml_documents(CRD_PATH)
    return crd


def load_crd() -> dict[str, Any]:
    """Return a fresh copy of the CullPolicy CRD manifest."""
    return copy.deepcopy(_load_crd_cached())


def crd_version(crd: dict[str, Any], name: str = "v1alpha1") -> dict[str, Any]:
    """Return the ``spec.versions`` entry called ``name``."""
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == name]
    return version


def openapi_schema(crd: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return the openAPIV3Schema of the v1alpha1 version."""
    crd = crd if crd is not None else load_crd()
    return crd_version(crd)["schema"]["openAPIV3Schema"]


def example_files() -> list[Path]:
    """Return every example manifest, sorted by name."""
    return sorted(EXAMPLES_DIR.glob("*.yaml"))


def rbac_files() -> list[Path]:
    """Return every RBAC manifest, sorted by name."""
    return sorted(RBAC_DIR.glob("*.yaml"))


# --------------------------------------------------------------------------- schema walking


def schema_at(schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    """Return the schema node of a dotted field path such as ``spec.hub.url``.

    ``[]`` as a path component steps into array items.
    """
    node = schema
    for part in dotted.split("."):
        if part == "[]":
            node = node["items"]
        else:
            node = node["properties"][part]
    return node


def iter_fields(schema: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(dotted path, node)`` for every property below ``schema`` (items as ``[]``)."""
    for name, prop in schema.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        yield path, prop
        yield from iter_fields(prop, path)
    if isinstance(schema.get("items"), dict):
        path = f"{prefix}.[]" if prefix else "[]"
        yield from iter_fields(schema["items"], path)


def is_int_or_string(node: dict[str, Any]) -> bool:
    """Whether the node is an ``x-kubernetes-int-or-string`` field."""
    return bool(node.get("x-kubernetes-int-or-string"))


# --------------------------------------------------------------------------- structural check


def structural_problems(schema: dict[str, Any]) -> list[str]:
    """Return the ways ``schema`` breaks the Kubernetes structural-schema rules (empty = fine).

    Checked: known keys only; a type (or int-or-string) on every node; items on arrays;
    nothing but value validations inside anyOf/allOf/oneOf/not, except the exact
    int-or-string ``anyOf``; no ``type`` next to int-or-string; no additionalProperties at the
    root or together with properties; root metadata restricts nothing; patterns are RE2;
    list types fit their items; no x-kubernetes-preserve-unknown-fields anywhere (this CRD
    prunes everything it does not know).
    """
    problems: list[str] = []
    _check_node(schema, "<root>", "root", problems)
    return problems


def _check_node(node: dict[str, Any], where: str, level: str, problems: list[str]) -> None:
    unknown = set(node) - KNOWN_SCHEMA_KEYS
    if unknown:
        problems.append(f"{where}: unknown schema keys {sorted(unknown)}")
    if node.get("x-kubernetes-preserve-unknown-fields"):
        problems.append(f"{where}: x-kubernetes-preserve-unknown-fields is not allowed here")
    if is_int_or_string(node):
        if "type" in node:
            problems.append(f"{where}: type must be empty with x-kubernetes-int-or-string")
        if "anyOf" in node and node["anyOf"] != INT_OR_STRING_ANY_OF:
            problems.append(
                f"{where}: an int-or-string anyOf must be exactly {INT_OR_STRING_ANY_OF}"
            )
    elif "type" not in node:
        problems.append(f"{where}: type must not be empty ({level})")
    if level == "root":
        if node.get("type") != "object":
            problems.append(f"{where}: the root must be type object")
        if "additionalProperties" in node:
            problems.append(f"{where}: additionalProperties must not be used at the root")
        metadata = node.get("properties", {}).get("metadata")
        if metadata is not None and set(metadata) - {"type", "description"}:
            problems.append(f"{where}: metadata must not be restricted beyond type object")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{where}: properties and additionalProperties are mutually exclusive")
    if node.get("type") == "array" and "items" not in node:
        problems.append(f"{where}: arrays need items")
    if (
        node.get("type") == "object"
        and level != "root"
        and not ("properties" in node or "additionalProperties" in node or where == "metadata")
    ):
        problems.append(f"{where}: object without properties would prune everything")
    if "pattern" in node:
        try:
            re2.compile(node["pattern"])
        except re2.error as exc:
            problems.append(f"{where}: pattern is not RE2: {exc}")
    list_type = node.get("x-kubernetes-list-type")
    if list_type is not None:
        items = node.get("items", {})
        scalar = ("string", "integer", "number", "boolean")
        if list_type == "set" and items.get("type") not in scalar:
            problems.append(f"{where}: list-type set needs scalar items")
        if list_type == "map":
            keys = node.get("x-kubernetes-list-map-keys") or []
            if not keys or items.get("type") != "object":
                problems.append(f"{where}: list-type map needs object items and map keys")
            for key in keys:
                if key not in items.get("required", []) and "default" not in items.get(
                    "properties", {}
                ).get(key, {}):
                    problems.append(f"{where}: map key {key!r} must be required or defaulted")
    for name, prop in node.get("properties", {}).items():
        _check_node(prop, f"{where}.{name}" if where != "<root>" else name, "field", problems)
    if isinstance(node.get("items"), dict):
        _check_node(node["items"], f"{where}[]", "item", problems)
    if isinstance(node.get("additionalProperties"), dict):
        _check_node(node["additionalProperties"], f"{where}{{}}", "field", problems)
    skip_any_of = is_int_or_string(node) and node.get("anyOf") == INT_OR_STRING_ANY_OF
    for quantifier in QUANTIFIERS:
        if quantifier == "anyOf" and skip_any_of:
            continue
        for index, branch in enumerate(node.get(quantifier, [])):
            _check_nested(branch, f"{where}.{quantifier}[{index}]", problems)
    if "not" in node:
        _check_nested(node["not"], f"{where}.not", problems)


def _check_nested(node: dict[str, Any], where: str, problems: list[str]) -> None:
    for key in sorted(FORBIDDEN_IN_QUANTIFIERS & set(node)):
        problems.append(f"{where}: {key} must not be set inside anyOf/allOf/oneOf/not")
    for name, prop in node.get("properties", {}).items():
        _check_nested(prop, f"{where}.{name}", problems)
    if isinstance(node.get("items"), dict):
        _check_nested(node["items"], f"{where}[]", problems)
    for quantifier in QUANTIFIERS:
        for index, branch in enumerate(node.get(quantifier, [])):
            _check_nested(branch, f"{where}.{quantifier}[{index}]", problems)


# --------------------------------------------------------------------------- OpenAPI -> jsonschema


def to_jsonschema(node: dict[str, Any], *, strict: bool = True) -> dict[str, Any]:
    """Convert a Kubernetes OpenAPI v3 schema node into a JSON Schema (draft 7) node.

    * ``x-kubernetes-int-or-string`` without anyOf becomes ``type: [integer, string]`` (with
      the exact anyOf, the anyOf already says so);
    * ``nullable: true`` adds ``"null"`` to the type;
    * ``x-kubernetes-list-type: set`` becomes ``uniqueItems: true`` (the API server rejects
      duplicates in a set);
    * ``strict=True`` adds ``additionalProperties: false`` to objects with properties, like
      server-side strict field validation; ``strict=False`` leaves unknown fields to
      :func:`prune_unknown_fields`, like the API server's default pruning;
    * ``default``, ``description`` and the other x-kubernetes-* keys are dropped.
    """
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: to_jsonschema(prop, strict=strict) for name, prop in value.items()}
        elif key == "items" and isinstance(value, dict):
            out[key] = to_jsonschema(value, strict=strict)
        elif key == "additionalProperties" and isinstance(value, dict):
            out[key] = to_jsonschema(value, strict=strict)
        elif key in QUANTIFIERS:
            out[key] = [to_jsonschema(branch, strict=strict) for branch in value]
        elif key == "not":
            out[key] = to_jsonschema(value, strict=strict)
        elif key.startswith("x-kubernetes-") or key in (
            "nullable",
            "default",
            "description",
            "example",
            "externalDocs",
            "title",
        ):
            continue
        else:
            out[key] = copy.deepcopy(value)
    if is_int_or_string(node) and "anyOf" not in node:
        out["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
    if node.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    if (
        strict
        and node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def make_validator(node: dict[str, Any], *, strict: bool = True) -> jsonschema.Draft7Validator:
    """Return a draft-7 validator (with format checks) for a Kubernetes schema node."""
    return jsonschema.Draft7Validator(
        to_jsonschema(node, strict=strict),
        format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER,
    )


# --------------------------------------------------------------------------- pruning & defaulting


def drop_nulls(value: Any, node: dict[str, Any]) -> Any:
    """Return ``value`` without the null fields the schema does not declare nullable."""
    if isinstance(value, dict):
        props = node.get("properties", {})
        return {
            key: drop_nulls(item, props.get(key, {}))
            for key, item in value.items()
            if not (item is None and not props.get(key, {}).get("nullable"))
        }
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [drop_nulls(item, node["items"]) for item in value]
    return value


def prune_unknown_fields(value: Any, node: dict[str, Any], path: str = "") -> tuple[Any, list[str]]:
    """Return ``(value without the fields the schema does not know, their dotted paths)``."""
    pruned: list[str] = []
    if isinstance(value, dict) and "properties" in node:
        if node.get("x-kubernetes-preserve-unknown-fields"):
            return value, pruned
        out = {}
        for key, item in value.items():
            child = f"{path}.{key}" if path else key
            if key not in node["properties"]:
                pruned.append(child)
                continue
            out[key], sub = prune_unknown_fields(item, node["properties"][key], child)
            pruned.extend(sub)
        return out, pruned
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        out_list = []
        for index, item in enumerate(value):
            new, sub = prune_unknown_fields(item, node["items"], f"{path}[{index}]")
            out_list.append(new)
            pruned.extend(sub)
        return out_list, pruned
    return value, pruned


def apply_defaults(value: Any, node: dict[str, Any]) -> Any:
    """Return a copy of ``value`` with the schema defaults applied like the API server does.

    For an object: every absent property that has a default gets a deep copy of it, THEN every
    property (including the ones just defaulted) is defaulted recursively. That is why an
    object property needs ``default: {}`` for its children's defaults to apply when the
    object itself is omitted.
    """
    if isinstance(value, dict) and node.get("type") == "object":
        props = node.get("properties", {})
        out = dict(value)
        for key, prop in props.items():
            if key not in out and "default" in prop:
                out[key] = copy.deepcopy(prop["default"])
        return {
            key: apply_defaults(item, props[key]) if key in props else copy.deepcopy(item)
            for key, item in out.items()
        }
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [apply_defaults(item, node["items"]) for item in value]
    return copy.deepcopy(value)


# --------------------------------------------------------------------------- CEL


_GO_UNITS = {
    "ns": Decimal("1e-9"),
    "us": Decimal("1e-6"),
    "\u00b5s": Decimal("1e-6"),  # Go accepts both micro signs
    "\u03bcs": Decimal("1e-6"),
    "ms": Decimal("1e-3"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}
_GO_COMPONENT = re.compile(r"([0-9]*(?:\.[0-9]*)?)([^0-9.]+)")
_GO_MAX_SECONDS = Decimal(2**63 - 1) / Decimal(10**9)


def go_parse_duration(text: str) -> Decimal:
    """Parse ``text`` like Go's ``time.ParseDuration`` (cel-go's ``duration()``); seconds.

    Raises :class:`ValueError` for anything Go refuses, notably the unit ``d``.
    """
    rest = text
    sign = Decimal(1)
    if rest[:1] in ("-", "+"):
        sign = Decimal(-1) if rest[0] == "-" else Decimal(1)
        rest = rest[1:]
    if rest == "0":
        return Decimal(0)
    if not rest:
        raise ValueError(f"time: invalid duration {text!r}")
    total = Decimal(0)
    pos = 0
    while pos < len(rest):
        match = _GO_COMPONENT.match(rest, pos)
        if match is None or match.group(1) in ("", "."):
            raise ValueError(f"time: invalid duration {text!r}")
        number, unit = match.groups()
        if unit not in _GO_UNITS:
            raise ValueError(f"time: unknown unit {unit!r} in duration {text!r}")
        try:
            total += Decimal(number) * _GO_UNITS[unit]
        except InvalidOperation as exc:
            raise ValueError(f"time: invalid duration {text!r}") from exc
        pos = match.end()
    if total > _GO_MAX_SECONDS:
        raise ValueError(f"time: invalid duration {text!r}")
    return sign * total


def _cel_duration(value: Any) -> Any:
    """cel-go's ``duration()``: a duration as is, a string parsed by Go's rules."""
    if isinstance(value, celtypes.DurationType):
        return value
    try:
        seconds = go_parse_duration(str(value))
    except ValueError as exc:
        return celpy.CELEvalError(str(exc), ValueError, (str(value),))
    return celtypes.DurationType(datetime.timedelta(seconds=float(seconds)))


_CEL_ENV = celpy.Environment()
_CEL_FUNCTIONS = {"duration": _cel_duration}


@cache
def compile_rule(rule: str) -> Any:
    """Compile a CEL rule once; raises celpy.CELParseError on a syntax error."""
    return _CEL_ENV.program(_CEL_ENV.compile(rule), functions=_CEL_FUNCTIONS)


@dataclass(frozen=True)
class RuleResult:
    """The outcome of one CEL rule on one value."""

    path: str
    rule: str
    message: str
    passed: bool
    error: str | None = None


def run_rule(rule: str, value: Any) -> tuple[bool, str | None]:
    """Evaluate ``rule`` with ``self`` = ``value``; ``(passed, evaluation error or None)``.

    Like the API server, an evaluation error (or a non-boolean result, which cel-go's type
    checker would not allow) counts as a failed rule.
    """
    program = compile_rule(rule)
    try:
        result = program.evaluate({"self": celpy.json_to_cel(value)})
    except celpy.CELEvalError as exc:
        return False, str(exc)
    if isinstance(result, celpy.CELEvalError):
        return False, str(result)
    if not isinstance(result, celtypes.BoolType):
        return False, f"no such overload: rule returned {type(result).__name__}, not bool"
    return bool(result), None


def iter_rules(
    node: dict[str, Any], path: str = ""
) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Yield ``(dotted path, schema node, rule)`` for every x-kubernetes-validations rule."""
    for rule in node.get("x-kubernetes-validations", []):
        yield path, node, rule
    for name, prop in node.get("properties", {}).items():
        yield from iter_rules(prop, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        yield from iter_rules(node["items"], f"{path}[]")


def evaluate_rules(value: Any, node: dict[str, Any], path: str = "") -> list[RuleResult]:
    """Run every CEL rule of ``node`` and below on the matching part of ``value``.

    A rule runs where its field is present, with ``self`` bound to that field's value
    (for a rule on array items: once per item).
    """
    results = [
        RuleResult(
            path,
            rule["rule"],
            rule.get("message", f"failed rule: {rule['rule']}"),
            *run_rule(rule["rule"], value),
        )
        for rule in node.get("x-kubernetes-validations", [])
    ]
    if isinstance(value, dict):
        props = node.get("properties", {})
        for key, item in value.items():
            if key in props:
                results.extend(evaluate_rules(item, props[key], f"{path}.{key}" if path else key))
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for index, item in enumerate(value):
            results.extend(evaluate_rules(item, node["items"], f"{path}[{index}]"))
    return results


# --------------------------------------------------------------------------- admission


@dataclass(frozen=True)
class SchemaError:
    """One OpenAPI schema violation: dotted path of the value, jsonschema keyword, message."""

    path: str
    keyword: str
    message: str


@dataclass
class Admission:
    """What the simulated API server did with an object."""

    obj: Any
    pruned: list[str] = field(default_factory=list)
    schema_errors: list[SchemaError] = field(default_factory=list)
    rule_results: list[RuleResult] = field(default_factory=list)
    cel_skipped: bool = False

    @property
    def cel_failures(self) -> list[RuleResult]:
        """The CEL rules that did not pass."""
        return [result for result in self.rule_results if not result.passed]

    @property
    def accepted(self) -> bool:
        """Whether the API server would store the object."""
        return not self.schema_errors and not self.cel_failures

    def explain(self) -> str:
        """A readable list of everything that went wrong (for assertion messages)."""
        lines = [
            f"schema {e.path or '<root>'}: {e.keyword}: {e.message}" for e in self.schema_errors
        ]
        lines += [f"cel {r.path}: {r.message} ({r.error or 'false'})" for r in self.cel_failures]
        if self.cel_skipped:
            lines.append("cel skipped because of blocking schema errors")
        return "\n".join(lines) or "accepted"


def _schema_path(error: jsonschema.ValidationError) -> str:
    text = ""
    for part in error.absolute_path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def admit(
    obj: dict[str, Any], *, strict: bool = True, crd: dict[str, Any] | None = None
) -> Admission:
    """Run ``obj`` through null dropping, pruning, defaulting, schema and CEL validation.

    ``strict=True`` rejects unknown fields (``kubectl apply --validate=strict``);
    ``strict=False`` prunes them silently, the API server's default.
    """
    schema = openapi_schema(crd)
    value = drop_nulls(copy.deepcopy(obj), schema)
    pruned: list[str] = []
    if not strict:
        value, pruned = prune_unknown_fields(value, schema)
    value = apply_defaults(value, schema)
    errors = [
        SchemaError(_schema_path(error), str(error.validator), error.message)
        for error in make_validator(schema, strict=strict).iter_errors(value)
    ]
    admission = Admission(obj=value, pruned=pruned, schema_errors=errors)
    if any(error.keyword in BLOCKING_KEYWORDS for error in errors):
        admission.cel_skipped = True
    else:
        admission.rule_results = evaluate_rules(value, schema)
    return admission
