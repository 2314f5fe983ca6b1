"""The ``hubcull`` command line: ``hubcull sweep`` (no Kubernetes) and ``hubcull run``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import __version__, logs
from .engine.durations import format_duration
from .engine.rules.policy import Policy, PolicyError, parse_spec
from .engine.sweep.connection import HubConnection
from .engine.sweep.memory import SweepMemory
from .engine.sweep.notify import WarnChannel
from .engine.sweep.runner import (
    NEEDS_OPERATOR,
    SweepOutcome,
    TokenError,
    clean_token,
    sweep_policy,
)
from .engine.sweep.sources import SweepSources
from .engine.sweep.status import describe_cull, isotime
from .engine.sweep.webhook import WebhookURLError, check_url

TOKEN_ENV = "JUPYTERHUB_API_TOKEN"
API_VERSION = "hubcull.io/v1alpha1"


class CLIError(Exception):
    """Problems reported on stderr, one line each; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Manifest:
    """One CullPolicy read from a file: its name, namespace, file and parsed spec, and the
    fields that options replaced (``(field, option)``, e.g. ``("spec.hub.url", "--hub-url")``),
    so that messages name the option the admin gave instead of the file's field."""

    name: str
    namespace: str | None
    path: str
    policy: Policy
    replaced: tuple[tuple[str, str], ...] = ()


def yaml_error(path: str, exc: yaml.YAMLError) -> CLIError:
    """One line for a YAML syntax error: ``FILE:LINE:COLUMN: YAML syntax error: problem``."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
    if mark is not None and problem:
        where = f"{path}:{mark.line + 1}:{mark.column + 1}"
        return CLIError(f"{where}: YAML syntax error: {' '.join(str(problem).split())}")
    return CLIError(f"{path} is not valid YAML: {' '.join(str(exc).split())}")


def check_hub_url(url: str) -> str:
    """Validate ``--hub-url`` as the engine validates ``spec.hub.url``; return it."""
    try:
        parse_spec({"hub": {"url": url, "tokenSecretRef": {"name": "x", "key": "x"}}})
    except PolicyError as exc:
        problems = [p.removeprefix("spec.hub.url: ") for p in exc.problems]
        raise CLIError(f"--hub-url: {'; '.join(problems)}") from None
    return url


def check_proxy_url(url: str) -> str:
    """Validate ``--proxy-url`` as the engine validates ``spec.kernels.proxyURL``; return it."""
    hub = {"url": "http://hub:8081/hub/api", "tokenSecretRef": {"name": "x", "key": "x"}}
    kernels = {"protectBusy": True, "via": "proxy", "proxyURL": url}
    try:
        parse_spec({"hub": hub, "kernels": kernels})
    except PolicyError as exc:
        problems = [p.removeprefix("spec.kernels.proxyURL: ") for p in exc.problems]
        raise CLIError(f"--proxy-url: {'; '.join(problems)}") from None
    return url


def operator_only(policy: Policy) -> str | None:
    """Why ``hubcull sweep`` cannot sweep ``policy`` (``None``: it can), naming only the
    fields the policy has."""
    pods = policy.kernels is not None and policy.kernels.via == "pods"
    uses = (("spec.kernels.via: pods", pods), ("spec.usage", policy.usage is not None))
    fields = [name for name, used in uses if used]
    if not fields:
        # a field added later that needs pods, before this function names it
        return NEEDS_OPERATOR if policy.needs_pods else None
    what = " and ".join(fields) + (" need" if len(fields) > 1 else " needs")
    hints = []
    if pods:
        hints.append(
            "for spec.kernels, pass --proxy-url with the Hub's public URL (e.g. "
            "http://127.0.0.1:8000 with z2jh's proxy-public port-forwarded) to probe the servers "
            "through the proxy (via: proxy)"
        )
    if policy.usage is not None:
        hints.append("try spec.usage in the cluster with dryRun: true")
    return f"{what} the servers' pods, which only the operator (hubcull run) can list; " + (
        "; ".join(hints)
    )


def api_version_problem(doc: dict[str, Any]) -> str | None:
    """Why a ``kind: CullPolicy`` document is no hubcull CullPolicy (``None``: it is), as the
    API server would refuse it."""
    api_version = doc.get("apiVersion")
    if api_version == API_VERSION:
        return None
    if not api_version:
        return f"apiVersion is not set (hubcull serves only {API_VERSION})"
    return (
        f'no matches for kind "CullPolicy" in version "{api_version}" (hubcull serves only '
        f"{API_VERSION})"
    )


def _documents(path: str) -> list[Any]:
    name = "<stdin>" if path == "-" else path
    try:
        text = Path(path).read_text() if path != "-" else sys.stdin.read()
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CLIError(f"{path} is not a text file") from None
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise yaml_error(name, exc) from None
    found: list[Any] = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "List":
            found.extend(doc.get("items") or [])  # what `kubectl get -o yaml` writes
        elif doc:
            found.append(doc)
    return found


def _with_options(
    spec: Any, hub_url: str | None, proxy_url: str | None
) -> tuple[Any, tuple[tuple[str, str], ...]]:
    """``spec`` with the fields ``--hub-url`` and ``--proxy-url`` replace, and which."""
    if not isinstance(spec, dict):
        spec = {} if hub_url is not None else spec
    replaced: list[tuple[str, str]] = []
    if hub_url is not None:
        hub = spec.get("hub")
        spec = {**spec, "hub": {**(hub if isinstance(hub, dict) else {}), "url": hub_url}}
        replaced.append(("spec.hub.url", "--hub-url"))
    if proxy_url is not None and isinstance(spec, dict) and isinstance(spec.get("kernels"), dict):
        spec = {**spec, "kernels": {**spec["kernels"], "via": "proxy", "proxyURL": proxy_url}}
        replaced.append(("spec.kernels.proxyURL", "--proxy-url"))
    return spec, tuple(replaced)


def load_manifests(
    paths: Sequence[str], hub_url: str | None = None, proxy_url: str | None = None
) -> list[Manifest]:
    """Every CullPolicy in the files, in order; ``hub_url`` replaces each ``spec.hub.url``,
    ``proxy_url`` makes each ``spec.kernels`` probe through that proxy (``via: proxy``).

    Raises :class:`CLIError`, one line per problem of every file, for a file that cannot be
    read, a YAML syntax error, a file with no CullPolicy, a CullPolicy of another apiVersion,
    an invalid policy, a policy only the operator can sweep or a name used twice.
    """
    manifests: list[Manifest] = []
    problems: list[str] = []
    where: dict[str, str] = {}
    for path in paths:
        try:
            docs = _documents(path)
        except CLIError as exc:
            problems.append(str(exc))
            continue
        policies = [d for d in docs if isinstance(d, dict) and d.get("kind") == "CullPolicy"]
        if not policies:
            problems.append(f"{path} has no CullPolicy (kind: CullPolicy)")
        for doc in policies:
            metadata = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
            name = str(metadata.get("name") or "cullpolicy")
            namespace = metadata.get("namespace")
            refused = api_version_problem(doc)
            if refused:
                problems.append(f"{path}: CullPolicy {name}: {refused}")
                continue
            if name in where:
                other = where[name]
                place = f"twice in {path}" if other == path else f"in both {other} and {path}"
                problems.append(f"CullPolicy {name} is {place}: policy names must be unique")
                continue
            where[name] = path
            spec, replaced = _with_options(doc.get("spec"), hub_url, proxy_url)
            try:
                policy = parse_spec(spec)
            except PolicyError as exc:
                problems.append(f"{path}: invalid CullPolicy {name}: {exc}")
                continue
            why = operator_only(policy)
            if why:
                problems.append(f"{path}: CullPolicy {name}: {why}")
                continue
            namespace = str(namespace) if namespace else None
            manifests.append(Manifest(name, namespace, path, policy, replaced))
    if proxy_url is not None and not problems and not any(m.policy.kernels for m in manifests):
        names = ", ".join(m.name for m in manifests)
        problems.append(f"--proxy-url: CullPolicy {names} has no spec.kernels to probe with it")
    if problems:
        raise CLIError("\n".join(problems))
    return manifests


def as_given(manifest: Manifest, outcome: SweepOutcome) -> SweepOutcome:
    """``outcome`` with its failure message naming the options that replaced fields (say
    ``--hub-url``, not ``spec.hub.url``, when that is what the admin gave)."""
    if not manifest.replaced or outcome.message is None:
        return outcome

    def named(text: str) -> str:
        for field, option in manifest.replaced:
            text = text.replace(field, option)
        return text

    status = dict(outcome.status)
    if isinstance(status.get("conditions"), list):
        status["conditions"] = [
            {**c, "message": named(c["message"])}
            if c.get("type") == "Ready" and isinstance(c.get("message"), str)
            else c
            for c in status["conditions"]
        ]
    return dataclasses.replace(outcome, status=status, message=named(outcome.message))


def read_token(token_file: str | None) -> str:
    """The Hub token from ``--token-file`` or ``$JUPYTERHUB_API_TOKEN``."""
    try:
        if token_file:
            try:
                return clean_token(Path(token_file).read_text(), f"token file {token_file}")
            except OSError as exc:
                raise CLIError(f"cannot read token file {token_file}: {exc.strerror}") from None
        raw = os.environ.get(TOKEN_ENV)
        if raw is None:
            raise CLIError(f"set {TOKEN_ENV} or pass --token-file with the Hub API token")
        return clean_token(raw, TOKEN_ENV)
    except TokenError as exc:
        raise CLIError(str(exc)) from None


def read_webhook_url(path: str | None, manifests: Sequence[Manifest]) -> str | None:
    """The URL for ``spec.warn.webhook`` from ``--webhook-url-file`` (there are no Secrets);
    one-line errors when it is unreadable or not an http(s) URL, when no policy has a
    webhook to use it for, or when a policy needs one and none is given (dry runs post
    nothing and need none). The URL itself is never printed."""
    hooked = [m for m in manifests if m.policy.warn and m.policy.warn.webhook_url_secret]
    if path is None:
        needs = [m.name for m in hooked if not m.policy.dry_run]
        if needs:
            raise CLIError(
                f"CullPolicy {needs[0]}: spec.warn.webhook needs --webhook-url-file FILE with "
                "hubcull sweep (it reads no Secrets), or use --dry-run"
            )
        return None
    if not hooked:
        names = ", ".join(m.name for m in manifests)
        raise CLIError(f"--webhook-url-file: CullPolicy {names} has no spec.warn.webhook")
    try:
        return check_url(Path(path).read_text(), f"webhook URL file {path}")
    except OSError as exc:
        raise CLIError(f"cannot read webhook URL file {path}: {exc.strerror}") from None
    except (WebhookURLError, UnicodeDecodeError) as exc:
        raise CLIError(str(exc)) from None


def warn_channel(manifest: Manifest, url: str | None) -> WarnChannel | None:
    """Where a policy's webhook posts go (``None``: it has no webhook, or no URL)."""
    warn = manifest.policy.warn
    if url is None or warn is None or warn.webhook_url_secret is None:
        return None
    return WarnChannel(manifest.name, manifest.namespace or "", url=url)


def warn_lines(outcome: SweepOutcome) -> list[str]:
    """``spec.warn``'s lines: warnings given (``WARN``), warned servers that wait (``WAIT``)
    and webhook posts that failed."""
    result = outcome.result
    if result is None:
        return []
    lines = []
    for w in result.warnings:
        idle = format_duration(w.idle_seconds)
        head = "WOULD    warn: " if result.dry_run else "WARN     "
        lines.append(f"{head}{w.text} (idle {idle})")
    for p in result.pending:
        lines.append(
            f"WAIT     {p.label} ({p.reason}, idle {format_duration(p.idle_seconds)}): warned at "
            f"{isotime(p.warned.at)}, not stopped before {isotime(p.warned.stop_after)}"
        )
    for f in result.notify.failures:
        lines.append(f"FAILED   webhook {f.kind} post for {f.label}: {f.error}")
    return lines


def decision_lines(outcome: SweepOutcome) -> list[str]:
    """One line per decision, as ``hubcull sweep`` prints them (without the policy prefix)."""
    result = outcome.result
    if result is None:
        return []
    lines = []
    for c in result.culls:
        if c.error:
            lines.append(f"FAILED   {describe_cull(c)}: {c.error}")
        elif c.dry_run:
            lines.append(f"WOULD    stop {describe_cull(c)}" + (" and remove" if c.removed else ""))
        else:
            verb = "stopping" if c.outcome == "stopping" else "stopped"
            lines.append(f"CULLED   {verb} {describe_cull(c)}" + (", removed" if c.removed else ""))
    for d in result.held_back:
        lines.append(
            f"HELD     {d.label} ({d.reason}, idle {format_duration(d.idle_seconds)}): "
            "safety limit, waits for the next sweep"
        )
    lines += warn_lines(outcome)
    for c in result.removals:
        verb = "WOULD    remove" if c.dry_run else ("FAILED   remove" if c.error else "REMOVED ")
        tail = f": {c.error}" if c.error else ""
        lines.append(f"{verb} stopped {c.label} (idle {format_duration(c.idle_seconds)}){tail}")
    for u in result.user_culls:
        verb = "WOULD    delete" if u.dry_run else ("FAILED   delete" if u.error else "DELETED ")
        tail = f": {u.error}" if u.error else ""
        lines.append(f"{verb} user {u.user} (idle {format_duration(u.idle_seconds)}){tail}")
    for p in result.protected:
        lines.append(f"KEEP     {p.label}: {p.why}")
    for f in result.probe_failures:
        lines.append(f"UNKNOWN  {f.label}: probe failed ({f.result}: {f.detail}); the Hub decides")
    return lines


#: Counts of the status that the summary line shows only when they are not zero (they come
#: from spec.kernels, spec.usage and spec.warn).
_OPTIONAL_COUNTS = (
    ("serversProtected", "protected"),
    ("probeFailedLastSweep", "probes failed"),
    ("warnedLastSweep", "warned"),
)


def summary_line(outcome: SweepOutcome) -> str:
    """One line for a sweep: what it found and did, or why it did not run (``Ready``'s
    reason and message)."""
    status = outcome.status
    if outcome.result is None:
        if outcome.reason == "Suspended":
            return f"suspended: {outcome.message}"
        return f"sweep failed, Ready False ({outcome.reason}): {outcome.message}"
    dry_run = outcome.result.dry_run
    parts = [
        f"{status.get('serversIdle', 0)} over a limit",
        f"{'would cull' if dry_run else 'culled'} {status.get('culledLastSweep', 0)}",
        f"{status.get('failedLastSweep', 0)} failed",
    ]
    parts += [f"{status[key]} {label}" for key, label in _OPTIONAL_COUNTS if status.get(key)]
    running = status.get("serversRunning", 0)
    line = f"swept {running} running server{'' if running == 1 else 's'}: " + ", ".join(parts)
    return line + (" (dry run)" if dry_run else "")


def status_yaml(status: dict[str, Any]) -> str:
    """The status as the operator would write it, as a YAML ``status:`` block."""
    kept = {k: v for k, v in status.items() if v is not None}
    return yaml.safe_dump({"status": kept}, sort_keys=False).rstrip()


def failed_sweep(outcome: SweepOutcome) -> bool:
    """True when the sweep could not run (a suspended policy's sweep did not fail)."""
    return outcome.result is None and outcome.reason != "Suspended"


def print_outcome(manifest: Manifest, outcome: SweepOutcome, output: str = "text") -> None:
    """Print one sweep of one policy.

    ``text``: each decision and a summary line, prefixed with ``[name]``; ``status``: the
    same, then the status block; ``yaml``: only a CullPolicy YAML document with the status.
    A sweep that failed is one line on stderr instead of the summary line, whatever the
    output.
    """
    prefix = f"[{manifest.name}]"
    if failed_sweep(outcome):
        print(f"hubcull: {prefix} {summary_line(outcome)}", file=sys.stderr)
        sys.stderr.flush()
    if output == "yaml":
        metadata = {"name": manifest.name}
        if manifest.namespace:
            metadata["namespace"] = manifest.namespace
        doc = {"apiVersion": API_VERSION, "kind": "CullPolicy", "metadata": metadata}
        doc["status"] = {k: v for k, v in outcome.status.items() if v is not None}
        print(yaml.safe_dump(doc, sort_keys=False, explicit_start=True).rstrip())
    else:
        for line in decision_lines(outcome):
            print(f"{prefix} {line}")
        if not failed_sweep(outcome):
            print(f"{prefix} {summary_line(outcome)}")
        if output == "status":
            print(status_yaml(outcome.status))
    sys.stdout.flush()


def _read_ca(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise CLIError(f"cannot read CA file {path}: {exc.strerror}") from None


async def _sweep_loop(
    manifest: Manifest,
    token: str,
    ca_pem: str | None,
    once: bool,
    output: str,
    channel: WarnChannel | None = None,
) -> int:
    """Sweep one policy every ``spec.every`` (or sooner when a warned server's stop is due,
    or once); with ``once``, return the exit status (1 if the sweep failed)."""
    status: dict[str, Any] | None = None
    connection = HubConnection()
    memory = SweepMemory()
    try:
        while True:
            sources = SweepSources(
                token, ca_pem=ca_pem, connection=connection, memory=memory, channel=channel
            )
            outcome = await sweep_policy(manifest.policy, sources, previous=status)
            outcome = as_given(manifest, outcome)
            print_outcome(manifest, outcome, output)
            status = outcome.status
            if once:
                return 1 if failed_sweep(outcome) else 0
            await asyncio.sleep(outcome.next_sweep_in(manifest.policy.every))
    finally:
        await connection.aclose()


async def sweep_all(
    manifests: Sequence[Manifest],
    token: str,
    ca_pem: str | None,
    once: bool,
    output: str,
    webhook_url: str | None = None,
) -> int:
    """Sweep every policy on its own schedule, concurrently; with ``once``, return the
    worst exit status of the policies' sweeps."""
    codes = await asyncio.gather(
        *(
            _sweep_loop(m, token, ca_pem, once, output, warn_channel(m, webhook_url))
            for m in manifests
        )
    )
    return max(codes, default=0)


def sweep_command(args: argparse.Namespace) -> int:
    """``hubcull sweep``: load the manifests and the token, then sweep every policy once or
    every ``spec.every``."""
    hub_url = check_hub_url(args.hub_url) if args.hub_url is not None else None
    proxy_url = check_proxy_url(args.proxy_url) if args.proxy_url is not None else None
    manifests = load_manifests(args.file, hub_url, proxy_url)
    if args.dry_run:
        manifests = [
            dataclasses.replace(m, policy=dataclasses.replace(m.policy, dry_run=True))
            for m in manifests
        ]
    webhook_url = read_webhook_url(args.webhook_url_file, manifests)
    token = read_token(args.token_file)
    ca_pem = _read_ca(args.ca_file)
    output = "status" if args.status and args.output == "text" else args.output
    return asyncio.run(sweep_all(manifests, token, ca_pem, args.once, output, webhook_url))


def _verbosity() -> argparse.ArgumentParser:
    """``-v``, accepted before and after the subcommand (counted into ``verbose_after``)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-v",
        "--verbose",
        dest="verbose_after",
        action="count",
        default=0,
        help="more logging: -v debug lines of hubcull, -vv also the HTTP client and kopf",
    )
    return parent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubcull", description="Cull idle JupyterHub servers by CullPolicy resources."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument(
        "--version", action="version", version=f"hubcull {__version__}", help="print the version"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    verbosity = _verbosity()

    sweep = commands.add_parser(
        "sweep",
        parents=[verbosity],
        help="sweep a Hub with CullPolicy manifests, without Kubernetes",
        description="Sweep a Hub with every CullPolicy in the files, each on its own "
        "spec.every, with no Kubernetes: the token comes from $" + TOKEN_ENV + ".",
    )
    sweep.add_argument(
        "-f",
        "--file",
        action="append",
        required=True,
        help="a YAML file with one or more CullPolicies ('-': stdin); repeatable",
    )
    sweep.add_argument("--once", action="store_true", help="sweep each policy once and exit")
    sweep.add_argument("--dry-run", action="store_true", help="decide and report, cull nothing")
    sweep.add_argument(
        "--hub-url",
        help="use this Hub API URL instead of spec.hub.url, e.g. a port-forwarded "
        "http://127.0.0.1:8081/hub/api",
    )
    sweep.add_argument(
        "--proxy-url",
        help="probe the servers of spec.kernels through the Hub's proxy at this URL (via: "
        "proxy, replacing spec.kernels.via and proxyURL), e.g. a port-forwarded proxy-public "
        "http://127.0.0.1:8000",
    )
    sweep.add_argument("--token-file", help=f"file with the Hub token (default: ${TOKEN_ENV})")
    sweep.add_argument("--ca-file", help="PEM bundle to trust for an https Hub")
    sweep.add_argument(
        "--status",
        action="store_true",
        help="after each sweep, print the status the operator would write",
    )
    sweep.add_argument(
        "-o",
        "--output",
        choices=("text", "yaml"),
        default="text",
        help="text: decisions and a summary line (default); yaml: a CullPolicy document with "
        "its status per sweep",
    )
    sweep.add_argument(
        "--webhook-url-file",
        help="file with the URL of spec.warn.webhook (the operator reads it from the Secret)",
    )

    run = commands.add_parser("run", parents=[verbosity], help="run the operator")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable; default: the pod's own)",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch all namespaces")
    run.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics here")
    run.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text lines (default) or one JSON object per line (Loki, Elasticsearch)",
    )
    run.add_argument("--liveness", help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    peering = run.add_mutually_exclusive_group()
    peering.add_argument(
        "--standalone",
        action="store_true",
        default=True,
        help="no peering (default; run one replica)",
    )
    peering.add_argument("--peering", help="kopf peering name, for several replicas")
    run.add_argument("--priority", type=int, default=0, help="peering priority of this replica")
    return parser


def _verbosity_of(args: argparse.Namespace) -> int:
    return args.verbose + args.verbose_after


def log_level(args: argparse.Namespace) -> int:
    """The level of hubcull's own lines: INFO for ``hubcull run`` (one line per sweep and per
    action), WARNING for ``hubcull sweep`` (it prints its decisions itself); one level more
    per ``-v``, counted on both sides of the subcommand."""
    return max(_default_level(args) - 10 * _verbosity_of(args), logging.DEBUG)


def _default_level(args: argparse.Namespace) -> int:
    return logging.INFO if args.command == "run" else logging.WARNING


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hubcull`` console script."""
    args = _parser().parse_args(argv)
    logs.configure(_verbosity_of(args), getattr(args, "log_format", "text"), _default_level(args))
    try:
        if args.command == "sweep":
            return sweep_command(args)
        # imported here: kopf (and the Kubernetes client it brings) takes seconds to import
        from .k8s.main import OperatorConfigError, run_operator

        try:
            return run_operator(args)
        except OperatorConfigError as exc:
            raise CLIError(str(exc), code=exc.code) from None
    except CLIError as exc:
        for line in str(exc).splitlines():
            print(f"hubcull: {line}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
