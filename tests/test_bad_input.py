"""Bad input: every kind gets a clear message, nothing crashes, other policies keep working.

* The invalid CullPolicies of tests/test_crd.py (``BAD_POLICIES``), as the operator and
  ``hubcull sweep`` see them when the API server did not stop them first (a CRD installed
  without its schema, CEL off, an old cluster): each is ``InvalidSpec`` naming the field, or,
  for the few rules only the CRD enforces, harmless (listed in ``CRD_ONLY`` with why).
* Secrets and tokens: no Secret, a Secret without the key, an empty token, a token with
  whitespace inside, a value that is not base64 or not text, a missing or broken CA bundle.
* Hub URLs: no scheme, and URLs that are not the REST API root (the Hub's root, ``/hub``,
  ``/hub/api/users``, a single-user server's ``/user/NAME/api``).
* The invalid Helm values are tests/test_helm.py's ``BAD_VALUES`` table
  (``test_schema_rejects_bad_values``); docs/reliability.md lists them.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from hubcull.cli import main
from hubcull.engine.rules.policy import PolicyError, parse_spec
from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.kube import Kube
from tests.support.operator_env import NS, condition, cullpolicy, hubcull_operator, secret
from tests.support.policies import BAD_POLICIES, Bad, patched
from tests.support.scenario import TOKEN_REF, populate

HOUR = 3600

#: Rows of the CRD table that only the API server refuses, and why the operator may accept
#: them: the value still means something harmless, or fails later with a clear reason.
CRD_ONLY = {
    "idleTimeout-too-long": "a valid duration (40s); maxLength only bounds the text",
    "tokenSecretRef-name-not-dns": "no Secret can have that name: TokenSecretMissing",
    "tokenSecretRef-key-with-slash": "no Secret key can have a slash: TokenSecretMissing",
    "selector-users-duplicate": "a duplicate pattern matches the same users",
    "exclude-users-empty-pattern": "'' matches no user name, so excludes nobody",
    "unknown-field-at-root": "outside spec: not read by the operator",
    "usage-ca-ref-bad-name": "no Secret can have that name: TokenSecretMissing",
    "usage-gpu-query-too-long": "sent as is: Prometheus answers it or UsageUnavailable says why",
}

ENGINE_REJECTS = [bad for bad in BAD_POLICIES if bad.id not in CRD_ONLY]


def field_of(bad: Bad) -> str:
    """The dotted field a message must name (``spec`` for rules on the whole spec)."""
    path = re.sub(r"\[\d+\]$", "", bad.path)
    return path or "spec"


def policy_name(bad: Bad) -> str:
    return re.sub(r"[^a-z0-9.-]", "-", bad.id.lower())


def test_crd_only_rows_exist() -> None:
    assert set(CRD_ONLY) <= {bad.id for bad in BAD_POLICIES}


@pytest.mark.parametrize("bad", ENGINE_REJECTS, ids=lambda bad: bad.id)
def test_engine_names_the_bad_field(bad: Bad) -> None:
    with pytest.raises(PolicyError) as error:
        parse_spec(patched(bad.patch).get("spec"))
    message = str(error.value)
    assert field_of(bad) in message, message
    assert "\n" not in message


@pytest.mark.parametrize("bad_id", CRD_ONLY)
def test_crd_only_rows_are_harmless_to_the_engine(bad_id: str) -> None:
    (bad,) = [b for b in BAD_POLICIES if b.id == bad_id]
    parse_spec(patched(bad.patch).get("spec"))


@pytest.mark.parametrize(
    "url",
    [
        "hub:8081/hub/api",  # no scheme
        "//hub:8081/hub/api",
        "http://[::1/hub/api",  # the CRD's pattern lets this one through
        "http://hub:99999/hub/api",
        "http://hub:8081/hub/api\n",  # a YAML block scalar keeps the newline
        "http://hub:8081/hub\tapi",
    ],
)
def test_engine_refuses_unusable_urls(url: str) -> None:
    with pytest.raises(PolicyError) as error:
        parse_spec({"hub": {"url": url, "tokenSecretRef": TOKEN_REF}})
    assert str(error.value).startswith("spec.hub.url: ")


def test_hubcull_sweep_refuses_each_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``hubcull sweep`` exits 2 with one line naming the field, never a traceback."""
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "x")
    for bad in ENGINE_REJECTS:
        manifest = tmp_path / f"{policy_name(bad)}.yaml"
        manifest.write_text(yaml.safe_dump(patched(bad.patch)))
        assert main(["sweep", "-f", str(manifest), "--once"]) == 2, bad.id
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and field_of(bad) in err, (bad.id, err)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ("", "JUPYTERHUB_API_TOKEN is empty"),
        (" \n", "JUPYTERHUB_API_TOKEN is empty"),
        ("abc def", "JUPYTERHUB_API_TOKEN has whitespace inside the token"),
        (None, "set JUPYTERHUB_API_TOKEN or pass --token-file"),
    ],
    ids=["empty", "blank", "space-inside", "unset"],
)
def test_hubcull_sweep_refuses_bad_tokens(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: str | None,
    says: str,
) -> None:
    manifest = tmp_path / "policy.yaml"
    manifest.write_text(yaml.safe_dump(cullpolicy("http://127.0.0.1:9/hub/api")))
    if env is None:
        monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    else:
        monkeypatch.setenv("JUPYTERHUB_API_TOKEN", env)
    assert main(["sweep", "-f", str(manifest), "--once"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hubcull: {says}") and err.count("\n") == 1, err


# --------------------------------------------------------------------------------------
# the operator: every bad policy at once, next to a good one
# --------------------------------------------------------------------------------------


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


@pytest.mark.k8s
async def test_operator_reports_every_invalid_policy_and_keeps_serving(
    kube: Kube, hub: Hub
) -> None:
    await populate(hub, {("idle", ""): 2 * HOUR, ("busy", ""): 60})
    # On shutdown the operator releases its finalizer from each of these ~80 policies: two
    # requests each, which the in-process emulator answers one at a time.
    async with hubcull_operator(kube, stop_timeout=40) as (operator, _):
        await kube.create(secret(await hub.token(MINIMAL_SCOPES)))
        for bad in ENGINE_REJECTS:
            obj = patched(bad.patch)
            obj["metadata"]["name"] = policy_name(bad)
            await kube.create(obj)
        await kube.create(cullpolicy(hub, name="good", every="10s"))

        async def all_reported() -> dict[str, dict]:
            found = {}
            for obj in await kube.list("hubcull.io/v1alpha1/cullpolicies", NS):
                found[obj["metadata"]["name"]] = obj.get("status") or {}
            for bad in ENGINE_REJECTS:
                ready = condition(found.get(policy_name(bad), {}), "Ready")
                assert ready.get("reason") == "InvalidSpec", (bad.id, ready)
            assert found["good"].get("culledTotal") == 1
            return found

        statuses = await kube.wait_for(all_reported, timeout=60)
        assert not operator.error_records
    for bad in ENGINE_REJECTS:
        message = condition(statuses[policy_name(bad)], "Ready")["message"]
        assert field_of(bad) in message and message.endswith("."), (bad.id, message)
    assert await hub.running_servers() == {("busy", "")}


#: name -> (Secret data or None, spec.hub overrides, Ready reason, text of the message)
SECRET_CASES: dict[str, tuple[dict[str, str] | None, dict[str, Any], str, str]] = {
    "no-secret": (
        None,
        {},
        "TokenSecretMissing",
        "Secret no-secret with key token is not in namespace jhub",
    ),
    "no-such-key": (
        {"other": b64(b"x")},
        {},
        "TokenSecretMissing",
        "Secret no-such-key with key token is not in namespace jhub",
    ),
    "empty-token": ({"token": ""}, {}, "TokenSecretMissing", "key token is empty"),
    "blank-token": ({"token": b64(b"  \n")}, {}, "TokenSecretMissing", "key token is empty"),
    "token-with-space": (
        {"token": b64(b"abc def")},
        {},
        "TokenSecretMissing",
        "has whitespace inside the token",
    ),
    "not-base64": ({"token": "abc"}, {}, "TokenSecretMissing", "is not valid base64"),
    "not-text": ({"token": b64(b"\xff\xfe")}, {}, "TokenSecretMissing", "is not valid base64"),
    "no-ca-secret": (
        {"token": "TOKEN"},
        {"caSecretRef": {"name": "nothing", "key": "ca.crt"}},
        "TokenSecretMissing",
        "CA Secret nothing with key ca.crt is not in",
    ),
    "ca-not-pem": (
        {"token": "TOKEN", "ca.crt": b64(b"hello")},
        {"caSecretRef": {"name": "ca-not-pem", "key": "ca.crt"}},
        "InvalidSpec",
        "not a valid PEM bundle",
    ),
    "url-no-scheme": (
        {"token": "TOKEN"},
        {"url": "hub:8081/hub/api"},
        "InvalidSpec",
        "spec.hub.url: 'hub:8081/hub/api' must be an http:// or https:// URL",
    ),
    "url-hub-root": (
        {"token": "TOKEN"},
        {"url": "PUBLIC"},
        "HubError",
        "is not the JupyterHub REST API root (it redirects to /hub/)",
    ),
    "url-hub-pages": (
        {"token": "TOKEN"},
        {"url": "PUBLIC/hub"},
        "HubError",
        "is not the JupyterHub REST API root (it redirects to /hub/login",
    ),
    "url-users": (
        {"token": "TOKEN"},
        {"url": "PUBLIC/hub/api/users"},
        "HubError",
        "is not the JupyterHub REST API root (it answers 404)",
    ),
    "url-singleuser": (
        {"token": "TOKEN"},
        {"url": "PUBLIC/user/admin/api"},
        "HubError",
        "is not the JupyterHub REST API root (it redirects to",
    ),
    "token-trailing-newline": ({"token": "TOKEN+NL"}, {}, "SweepSucceeded", "Swept"),
}


@pytest.mark.k8s
@pytest.mark.hub
async def test_bad_secrets_and_urls_each_get_a_clear_reason(kube: Kube, hub: Hub) -> None:
    await populate(hub, {("idle", ""): 2 * HOUR, ("busy", ""): 60})
    token = await hub.token(MINIMAL_SCOPES)
    values = {"TOKEN": b64(token.encode()), "TOKEN+NL": b64(token.encode() + b"\n")}
    async with hubcull_operator(kube) as (operator, _):
        for name, (data, hub_fields, _, _) in SECRET_CASES.items():
            if data is not None:
                data = {k: values.get(v, v) for k, v in data.items()}
                await kube.create(
                    {
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "metadata": {"name": name, "namespace": NS},
                        "data": data,
                    }
                )
            fields = dict(hub_fields)
            fields["tokenSecretRef"] = {"name": name, "key": "token"}
            url = fields.pop("url", hub.api_url).replace("PUBLIC", hub.public_url)
            policy = cullpolicy(url, name=name, every="10s", dryRun=True)
            policy["spec"]["hub"].update(fields)
            await kube.create(policy)

        async def all_reported() -> dict[str, dict]:
            found = {}
            for obj in await kube.list("hubcull.io/v1alpha1/cullpolicies", NS):
                found[obj["metadata"]["name"]] = condition(obj.get("status") or {}, "Ready")
            for name, (_, _, reason, _) in SECRET_CASES.items():
                assert found.get(name, {}).get("reason") == reason, (name, found.get(name))
            return found

        ready = await kube.wait_for(all_reported, timeout=60)
        assert not operator.error_records
    for name, (_, _, _, says) in SECRET_CASES.items():
        message = ready[name]["message"]
        print(f"{name}: {ready[name]['reason']}: {message}")  # docs/reliability.md (-s)
        assert says in message and message.endswith("."), (name, message)
        assert token not in message
    assert await hub.running_servers() == {("idle", ""), ("busy", "")}  # all dry runs


# --------------------------------------------------------------------------------------
# hubcull sweep: files that are not what they should be
# --------------------------------------------------------------------------------------


def test_hubcull_sweep_names_file_line_and_column_of_a_yaml_syntax_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "x")
    manifest = tmp_path / "broken.yaml"
    manifest.write_text(
        "apiVersion: hubcull.io/v1alpha1\n"
        "kind: CullPolicy\n"
        "metadata: {name: broken\n"  # the flow mapping is never closed
        "spec:\n"
        "  idleTimeout: 1h\n"
    )
    assert main(["sweep", "-f", str(manifest), "--once"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"hubcull: {manifest}:4:5: YAML syntax error: "), err
    assert "<unicode string>" not in err
    tab = tmp_path / "tab.yaml"
    tab.write_text("kind: CullPolicy\nspec:\n\thub: {}\n")
    assert main(["sweep", "-f", str(tab), "--once"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hubcull: {tab}:3:1: YAML syntax error: ") and err.count("\n") == 1


def _policy_doc(name: str) -> dict[str, Any]:
    return cullpolicy("http://127.0.0.1:9/hub/api", name=name)


@pytest.mark.parametrize(
    ("files", "says"),
    [
        ({"a.yaml": ["gpu", "everyone"], "b.yaml": ["gpu"]}, "CullPolicy gpu is in both "),
        ({"a.yaml": ["gpu", "gpu"]}, "CullPolicy gpu is twice in "),
        ({"a.yaml": ["gpu"], "b.yaml": []}, "b.yaml has no CullPolicy"),
    ],
    ids=["across-files", "in-one-file", "file-without-policy"],
)
def test_hubcull_sweep_refuses_duplicate_names_and_empty_files(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    files: dict[str, list[str]],
    says: str,
) -> None:
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "x")
    args = ["sweep", "--once"]
    for file, names in files.items():
        path = tmp_path / file
        docs = [_policy_doc(n) for n in names] or [secret("x")]
        path.write_text(yaml.safe_dump_all(docs))
        args += ["-f", str(path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "url", ["hub:8081/hub/api", "ftp://hub/hub/api", "http://hub:99999/hub/api", ""]
)
def test_hubcull_sweep_refuses_a_bad_hub_url_option(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    url: str,
) -> None:
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "x")
    manifest = tmp_path / "policy.yaml"
    manifest.write_text(yaml.safe_dump(_policy_doc("p")))
    assert main(["sweep", "-f", str(manifest), "--once", "--hub-url", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hubcull: --hub-url: ") and err.count("\n") == 1, err
    assert "spec.hub.url" not in err
