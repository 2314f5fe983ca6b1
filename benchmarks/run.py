"""``python -m benchmarks.run``: hubcull vs jupyterhub-idle-culler on a real JupyterHub.

Starts the test suite's real Hub fixture (``tests/support/jhub.py``: JupyterHub,
configurable-http-proxy and the in-process FakeSpawner) on 127.0.0.1, builds the state, runs
each culler on identical state, checks that each stopped exactly the idle servers and prints
Markdown tables (see ``docs/performance.md``). ``--quick`` runs small sizes in about two
minutes to check that everything works. Nothing is asserted about timings.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
from tests.support.jhub import MINIMAL_SCOPES, launch_hub

from benchmarks import report
from benchmarks.harness import BenchHub
from benchmarks.kernels import Scenario4
from benchmarks.kernels import scenario4 as run_scenario4
from benchmarks.probetokens import Scenario5, scenario5_table
from benchmarks.probetokens import scenario5 as run_scenario5
from benchmarks.scenarios import Config, Scenario1, Scenario2, Scenario3, scenario1, scenario2
from benchmarks.scenarios import scenario3 as run_scenario3

QUICK = {
    "s1_servers": 100,
    "s1_idle": 20,
    "s1_concurrencies": (100, 400),
    "floor_concurrencies": (0,),
    "idle_sample": 2.0,
    "s2_servers": 300,
    "s2_sweeps": 2,
    "s3_policies": 10,
    "s3_servers": 5,
    "s3_warmup": 3.0,
    "s3_window": 12.0,
    "s4_servers": 100,
    "s4_idle": 20,
    "s4_rounds": 1,
    "s5_servers": 100,
}


def _concurrencies(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _scenarios(text: str) -> set[int]:
    chosen = {int(part) for part in text.split(",") if part.strip()}
    if not chosen <= {1, 2, 3, 4, 5}:
        raise argparse.ArgumentTypeError("scenarios are 1, 2, 3, 4 and 5")
    return chosen


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Config]:
    """The command line, and the :class:`Config` it makes (``--quick`` first, then flags)."""
    defaults = Config()
    parser = argparse.ArgumentParser(prog="benchmarks/run", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="small sizes (about 2 minutes), to check it works")
    add(
        "--scenarios",
        type=_scenarios,
        default={1, 2, 3, 4, 5},
        help="comma-separated, default 1,2,3,4,5",
    )
    add("--timeout", type=float, help=f"idle timeout in seconds ({defaults.timeout:.0f})")
    add("--concurrency", type=int, help=f"both cullers' concurrency ({defaults.concurrency})")
    add("--seed", type=int, help="seed of the activity times")
    add("--s1-servers", type=int, help=f"scenario 1 running servers ({defaults.s1_servers})")
    add("--s1-idle", type=int, help=f"scenario 1 idle servers ({defaults.s1_idle})")
    add("--stop-delay", type=float, help=f"seconds each stop takes ({defaults.stop_delay})")
    add(
        "--s1-concurrencies",
        type=_concurrencies,
        help="more hubcull runs in scenario 1 at these concurrencies; above 100 (the policy "
        "maximum) the engine runs with a client allowed that many requests in flight "
        f"(default {','.join(map(str, defaults.s1_concurrencies))}; '' for none)",
    )
    add(
        "--floor-concurrencies",
        type=_concurrencies,
        help="stops in flight of the floor measurements, 0 = all at once; the fastest is the "
        f"floor (default {','.join(map(str, defaults.floor_concurrencies))})",
    )
    add("--s2-servers", type=int, help=f"scenario 2 running servers ({defaults.s2_servers})")
    add("--s2-sweeps", type=int, help=f"measured sweeps per culler ({defaults.s2_sweeps})")
    add("--s2-warmup", type=int, help=f"warm-up sweeps per culler ({defaults.s2_warmup})")
    add(
        "--no-s2-wide-reference",
        dest="s2_wide_reference",
        action="store_false",
        default=None,
        help="skip the reference with --api-page-size=200 in scenario 2",
    )
    add("--s3-policies", type=int, help=f"scenario 3 CullPolicies ({defaults.s3_policies})")
    add("--s3-servers", type=int, help=f"scenario 3 running servers ({defaults.s3_servers})")
    add("--s3-every", type=float, help=f"scenario 3 sweep interval ({defaults.s3_every:.0f} s)")
    add("--s3-warmup", type=float, help=f"seconds before measuring ({defaults.s3_warmup:.0f})")
    add("--s3-window", type=float, help=f"seconds measured ({defaults.s3_window:.0f})")
    add("--s4-servers", type=int, help=f"scenario 4 running servers ({defaults.s4_servers})")
    add("--s4-idle", type=int, help=f"scenario 4 servers idle by the Hub ({defaults.s4_idle})")
    add("--s4-rounds", type=int, help=f"scenario 4 rounds of every variant ({defaults.s4_rounds})")
    add("--s5-servers", type=int, help=f"scenario 5 running servers ({defaults.s5_servers})")
    add("--s5-minutes", type=int, help=f"scenario 5 sweeps ({defaults.s5_minutes})")
    add(
        "--s5-every",
        type=float,
        help=f"scenario 5 simulated sweep interval ({defaults.s5_every:.0f} s)",
    )
    add("--workdir", type=Path, help="where Hubs and logs go (default: a new temporary directory)")
    add("--keep", action="store_true", help="keep the work directory (always kept on failure)")
    add("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    values: dict[str, Any] = dict(QUICK) if args.quick else {}
    for item in dataclasses.fields(Config):
        value = getattr(args, item.name, None)
        if value is not None:
            values[item.name] = value
    config = Config(**values)
    if config.s1_idle > config.s1_servers:
        parser.error("--s1-idle cannot exceed --s1-servers")
    if config.s4_idle > config.s4_servers:
        parser.error("--s4-idle cannot exceed --s4-servers")
    return args, config


def progress(message: str) -> None:
    """Progress on stderr, with the time."""
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def _git_revision() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} (with uncommitted changes)" if dirty else commit


def environment(hub_version: str) -> dict[str, str]:
    """Machine and versions, for the report."""
    return {
        "hubcull revision": _git_revision(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.system()} "
        f"{platform.release()}",
        "python": platform.python_version(),
        "jupyterhub": hub_version or _version("jupyterhub"),
        "jupyterhub-idle-culler": _version("jupyterhub-idle-culler"),
        "hubcull": _version("hubcull"),
        "kopf": _version("kopf"),
        "kmock": _version("kmock"),
    }


@dataclasses.dataclass
class Results:
    """Everything one run measured."""

    config: Config
    env: dict[str, str]
    command: str
    s1: Scenario1 | None = None
    s2: Scenario2 | None = None
    s3: Scenario3 | None = None
    s4: Scenario4 | None = None
    s5: Scenario5 | None = None
    seconds: float = 0.0


async def run(config: Config, scenarios: set[int], workdir: Path, command: str) -> Results:
    """Run the chosen scenarios; scenarios 1 and 2 share one Hub (2 adds servers to 1's)."""
    started = time.monotonic()
    results = Results(config, environment(""), command)
    if scenarios & {1, 2}:
        progress(
            "starting JupyterHub (FakeSpawner, stop delay "
            f"{config.stop_delay:g} s, JupyterHub's default slow_stop_timeout of 10 s)"
        )
        hub = await launch_hub(
            workdir / "hub",
            stop_delay=config.stop_delay,
            slow_stop_timeout=10.0,
            slow_spawn_timeout=10.0,
        )
        try:
            results.env = environment(hub.version)
            bench = BenchHub(hub, spawn_concurrency=config.spawn_concurrency)
            token = await hub.token(MINIMAL_SCOPES, note="bench-cullers")
            if 1 in scenarios:
                results.s1 = await scenario1(config, bench, token, workdir, progress)
                print(report.scenario1_table(results.s1) + "\n", flush=True)
            if 2 in scenarios:
                results.s2 = await scenario2(config, bench, token, workdir, progress)
                print(report.scenario2_table(results.s2) + "\n", flush=True)
        finally:
            await hub.shutdown()
    if 3 in scenarios:
        results.s3 = await run_scenario3(config, workdir, progress)
        print(report.scenario3_table(results.s3) + "\n", flush=True)
    if 4 in scenarios:
        results.s4 = await run_scenario4(config, workdir, progress)
        print(report.scenario4_table(results.s4) + "\n", flush=True)
    if 5 in scenarios:
        results.s5 = await run_scenario5(config, workdir, progress)
        print(scenario5_table(results.s5) + "\n", flush=True)
    results.seconds = time.monotonic() - started
    return results


def render(results: Results) -> str:
    """The whole report as Markdown."""
    parts = [f"Command: `{results.command}`", ""]
    parts += [f"- {key}: {value}" for key, value in results.env.items()]
    parts.append(f"- total run time: {results.seconds / 60:.1f} min")
    if results.s1:
        s1 = results.s1
        parts += [
            "",
            f"### 1. Big cull: {s1.servers} running servers, {s1.idle} idle, "
            f"each stop {s1.stop_delay:g} s",
            "",
            report.scenario1_table(s1),
            "",
            f"The idle Hub used {100 * s1.idle_hub_cpu:.1f} % of a core before the runs.",
        ]
    if results.s2:
        s2 = results.s2
        parts += [
            "",
            f"### 2. Steady state: {s2.servers} running servers, none idle "
            f"(medians of {s2.sweeps} sweeps each)",
            "",
            report.scenario2_table(s2),
            "",
            report.request_cost_table(s2),
        ]
    if results.s3:
        parts += ["", "### 3. The operator", "", report.scenario3_table(results.s3)]
    if results.s4:
        s4 = results.s4
        parts += [
            "",
            f"### 4. Kernel-aware culling: {s4.servers} running servers, {s4.idle} idle by the "
            f"Hub, dry runs (medians of {s4.rounds} rounds)",
            "",
            report.scenario4_table(s4),
            "",
            report.scenario4_details_table(s4),
            "",
            report.scenario4_kinds_table(s4),
            "",
            "Servers probed, by kind:",
            "",
            report.scenario4_probed_table(s4),
            "",
            f"The idle Hub used {100 * s4.idle_hub_cpu:.1f} % of a core before the sweeps.",
        ]
    if results.s5:
        s5 = results.s5
        parts += [
            "",
            f"### 5. Probe tokens: {s5.servers} servers probed at each of {s5.minutes} sweeps "
            f"every {s5.every:g} s (simulated), tokens of {s5.lifetime} s renewed "
            f"{s5.renew_before:g} s before expiry",
            "",
            scenario5_table(s5),
            "",
            f"The idle Hub used {100 * s5.idle_hub_cpu:.1f} % of a core before the phases.",
        ]
    parts += [
        "",
        "### Targets",
        "",
        report.targets_table(report.targets(results.s1, results.s2, results.s3, results.s4)),
    ]
    return "\n".join(parts)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args, config = parse_args(argv)
    shown = " ".join(sys.argv[1:] if argv is None else argv)
    entry = os.environ.get("HUBCULL_BENCH_ENTRY", "python -m benchmarks.run")
    command = f"{entry} {shown}".strip()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hubcull-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    progress(f"work directory {workdir}")
    try:
        results = asyncio.run(run(config, args.scenarios, workdir, command))
    except BaseException:
        progress(f"failed; logs are in {workdir}")
        raise
    text = render(results)
    print(text, flush=True)
    if args.json:
        args.json.write_text(json.dumps(_jsonable(results), indent=2) + "\n")
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
