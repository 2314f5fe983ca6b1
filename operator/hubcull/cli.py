"""The ``hubcull`` command line: ``hubcull sweep`` (no Kubernetes) and ``hubcull run``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .engine.durations import format_duration
from .engine.memory import SweepMemory
from .engine.notify import WarnChannel
from .engine.policy import Policy, PolicyError, parse_spec
from .engine.runner import (
    NEEDS_OPERATOR,
    HubConnection,
    SweepOutcome,
    TokenError,
    clean_token,
    sweep_policy,
)
from .engine.status import describe_cull, isotime
from .engine.webhook import WebhookURLError, check_url

TOKEN_ENV = "JUPYTERHUB_API_TOKEN"


class CLIError(Exception):
    """A problem reported as one line on stderr; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def load_manifest(path: str) -> tuple[str, str, Policy]:
    """Read the first CullPolicy in a YAML file: its name, namespace (may be empty) and
    parsed spec."""
    try:
        text = Path(path).read_text() if path != "-" else sys.stdin.read()
        docs = [d for d in yaml.safe_load_all(text) if d]
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise CLIError(f"{path} is not valid YAML: {exc}") from None
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "CullPolicy":
            name = str((doc.get("metadata") or {}).get("name", "cullpolicy"))
            namespace = str((doc.get("metadata") or {}).get("namespace") or "")
            try:
                policy = parse_spec(doc.get("spec"))
            except PolicyError as exc:
                raise CLIError(f"{path}: invalid CullPolicy {name}: {exc}") from None
            if policy.needs_pods:
                raise CLIError(f"{path}: CullPolicy {name}: {NEEDS_OPERATOR}")
            return name, namespace, policy
    raise CLIError(f"{path} has no CullPolicy (kind: CullPolicy)")


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


def read_webhook_url(path: str | None, name: str, policy: Policy) -> str | None:
    """The URL for ``spec.warn.webhook`` from ``--webhook-url-file`` (there are no Secrets);
    one-line errors when it is unreadable or not an http(s) URL, when the policy has no
    webhook to use it for, or when the policy needs one and none is given (dry runs post
    nothing and need none). The URL itself is never printed."""
    webhook = policy.warn is not None and policy.warn.webhook_url_secret is not None
    if path is None:
        if webhook and not policy.dry_run:
            raise CLIError(
                f"CullPolicy {name}: spec.warn.webhook needs --webhook-url-file FILE with "
                "hubcull sweep (it reads no Secrets), or use --dry-run"
            )
        return None
    if not webhook:
        raise CLIError(f"--webhook-url-file: CullPolicy {name} has no spec.warn.webhook")
    try:
        return check_url(Path(path).read_text(), f"webhook URL file {path}")
    except OSError as exc:
        raise CLIError(f"cannot read webhook URL file {path}: {exc.strerror}") from None
    except (WebhookURLError, UnicodeDecodeError) as exc:
        raise CLIError(str(exc)) from None


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
    """One line per decision, as ``hubcull sweep`` prints them."""
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
    if not lines:
        lines.append(
            f"nothing to cull: {result.running} running servers in scope, none over a limit"
        )
    return lines


def print_outcome(name: str, outcome: SweepOutcome) -> None:
    """Print the decisions, then the status the operator would write, as YAML."""
    for line in decision_lines(outcome):
        print(line)
    if outcome.result is None:
        print(f"sweep of {name} did not run: {outcome.reason}: {outcome.message}")
    status = {k: v for k, v in outcome.status.items() if v is not None}
    print(yaml.safe_dump({"status": status}, sort_keys=False).rstrip())
    sys.stdout.flush()


def _read_ca(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise CLIError(f"cannot read CA file {path}: {exc.strerror}") from None


async def _sweep_loop(
    name: str,
    policy: Policy,
    token: str,
    ca_pem: str | None,
    once: bool,
    channel: WarnChannel | None = None,
) -> int:
    status: dict[str, Any] | None = None
    connection = HubConnection()
    memory = SweepMemory()
    try:
        while True:
            outcome = await sweep_policy(
                policy,
                token,
                previous=status,
                ca_pem=ca_pem,
                connection=connection,
                memory=memory,
                channel=channel,
            )
            print_outcome(name, outcome)
            status = outcome.status
            if once:
                if outcome.reason and outcome.reason != "Suspended":
                    raise CLIError(f"{outcome.reason}: {outcome.message}", code=1)
                return 0
            await asyncio.sleep(outcome.next_sweep_in(policy.every))
    finally:
        await connection.aclose()


def sweep_command(args: argparse.Namespace) -> int:
    """``hubcull sweep``: load the manifest and token, then sweep once or every ``spec.every``."""
    name, namespace, policy = load_manifest(args.file)
    if args.dry_run:
        policy = dataclasses.replace(policy, dry_run=True)
    url = read_webhook_url(args.webhook_url_file, name, policy)
    channel = WarnChannel(name, namespace, url=url) if url is not None else None
    token = read_token(args.token_file)
    ca_pem = _read_ca(args.ca_file)
    return asyncio.run(_sweep_loop(name, policy, token, ca_pem, args.once, channel))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubcull", description="Cull idle JupyterHub servers by CullPolicy resources."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    commands = parser.add_subparsers(dest="command", required=True)

    sweep = commands.add_parser(
        "sweep", help="sweep a Hub with a CullPolicy manifest, without Kubernetes"
    )
    sweep.add_argument("-f", "--file", required=True, help="a YAML file with a CullPolicy")
    sweep.add_argument("--once", action="store_true", help="sweep once and exit")
    sweep.add_argument("--dry-run", action="store_true", help="decide and report, cull nothing")
    sweep.add_argument("--token-file", help=f"file with the Hub token (default: ${TOKEN_ENV})")
    sweep.add_argument("--ca-file", help="PEM bundle to trust for an https Hub")
    sweep.add_argument(
        "--webhook-url-file",
        help="file with the URL of spec.warn.webhook (the operator reads it from the Secret)",
    )

    run = commands.add_parser("run", help="run the operator")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hubcull`` console script."""
    args = _parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "sweep":
            return sweep_command(args)
        # imported here: kopf (and the Kubernetes client it brings) takes seconds to import
        from .k8s.main import OperatorConfigError, run_operator

        try:
            return run_operator(args)
        except OperatorConfigError as exc:
            raise CLIError(str(exc)) from None
    except CLIError as exc:
        print(f"hubcull: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
