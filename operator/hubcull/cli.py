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

from . import logs
from .engine.durations import format_duration
from .engine.rules.policy import Policy, PolicyError, parse_spec
from .engine.sweep.connection import HubConnection
from .engine.sweep.memory import SweepMemory
from .engine.sweep.notify import WarnChannel
from .engine.sweep.runner import NEEDS_OPERATOR, SweepOutcome, TokenError, clean_token, sweep_policy
from .engine.sweep.sources import SweepSources
from .engine.sweep.status import describe_cull, isotime
from .engine.sweep.webhook import WebhookURLError, check_url

TOKEN_ENV = "JUPYTERHUB_API_TOKEN"
API_VERSION = "hubcull.io/v1alpha1"


class CLIError(Exception):
    """A problem reported as one line on stderr; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Manifest:
    """One CullPolicy read from a file: its name, namespace, file and parsed spec."""

    name: str
    namespace: str | None
    path: str
    policy: Policy


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


def load_manifests(paths: Sequence[str], hub_url: str | None = None) -> list[Manifest]:
    """Every CullPolicy in the files, in order; ``hub_url`` replaces each ``spec.hub.url``.

    Raises :class:`CLIError` (one line) for a file that cannot be read, a YAML syntax
    error, a file with no CullPolicy, an invalid policy or a name used twice.
    """
    manifests: list[Manifest] = []
    where: dict[str, str] = {}
    for path in paths:
        before = len(manifests)
        for doc in _documents(path):
            if not isinstance(doc, dict) or doc.get("kind") != "CullPolicy":
                continue
            metadata = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
            name = str(metadata.get("name") or "cullpolicy")
            namespace = metadata.get("namespace")
            if name in where:
                other = where[name]
                place = f"twice in {path}" if other == path else f"in both {other} and {path}"
                raise CLIError(f"CullPolicy {name} is {place}: policy names must be unique")
            where[name] = path
            spec = doc.get("spec")
            if hub_url is not None:
                spec = dict(spec) if isinstance(spec, dict) else {}
                hub = spec.get("hub")
                spec["hub"] = {**(hub if isinstance(hub, dict) else {}), "url": hub_url}
            try:
                policy = parse_spec(spec)
            except PolicyError as exc:
                raise CLIError(f"{path}: invalid CullPolicy {name}: {exc}") from None
            if policy.needs_pods:
                raise CLIError(f"{path}: CullPolicy {name}: {NEEDS_OPERATOR}")
            manifests.append(Manifest(name, str(namespace) if namespace else None, path, policy))
        if len(manifests) == before:
            raise CLIError(f"{path} has no CullPolicy (kind: CullPolicy)")
    return manifests


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


def print_outcome(manifest: Manifest, outcome: SweepOutcome, output: str = "text") -> None:
    """Print one sweep of one policy.

    ``text``: each decision and a summary line, prefixed with ``[name]``; ``status``: the
    same, then the status block; ``yaml``: only a CullPolicy YAML document with the status.
    """
    if output == "yaml":
        metadata = {"name": manifest.name}
        if manifest.namespace:
            metadata["namespace"] = manifest.namespace
        doc = {"apiVersion": API_VERSION, "kind": "CullPolicy", "metadata": metadata}
        doc["status"] = {k: v for k, v in outcome.status.items() if v is not None}
        print(yaml.safe_dump(doc, sort_keys=False, explicit_start=True).rstrip())
    else:
        prefix = f"[{manifest.name}]"
        for line in decision_lines(outcome):
            print(f"{prefix} {line}")
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
    or once); with ``once``, return the exit status (1 and a line on stderr if the sweep
    failed)."""
    status: dict[str, Any] | None = None
    connection = HubConnection()
    memory = SweepMemory()
    try:
        while True:
            sources = SweepSources(
                token, ca_pem=ca_pem, connection=connection, memory=memory, channel=channel
            )
            outcome = await sweep_policy(manifest.policy, sources, previous=status)
            print_outcome(manifest, outcome, output)
            status = outcome.status
            if once:
                if outcome.reason and outcome.reason != "Suspended":
                    print(
                        f"hubcull: [{manifest.name}] {outcome.reason}: {outcome.message}",
                        file=sys.stderr,
                    )
                    return 1
                return 0
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
    manifests = load_manifests(args.file, hub_url)
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
        print(f"hubcull: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
