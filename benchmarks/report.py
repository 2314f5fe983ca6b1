"""Markdown tables of the benchmark results (what ``docs/performance.md`` shows)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.kernels import IDLE_KINDS, KIND_TEXT, VARIANTS, Scenario4
from benchmarks.scenarios import Measured, OperatorRun, Scenario1, Scenario2, Scenario3

MIB = 1024 * 1024


@dataclass(frozen=True)
class Target:
    """One target of the issue, with what was measured."""

    name: str
    measured: str
    met: bool


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _requests(measured: Measured) -> str:
    parts = ", ".join(f"{n} {kind}" for kind, n in sorted(measured.requests.items()))
    return f"{measured.request_count} ({parts})"


def _load(measured: Measured) -> str:
    return f"{measured.other_load:.2f}"


def scenario1_table(s1: Scenario1) -> str:
    """Sweep time, ratios and Hub load of every run of the big cull."""
    reference = s1.runs[0]
    floor = s1.floor_seconds
    rows = []

    def row(label: str, m: Measured, seconds: float, exact: str) -> list[str]:
        return [
            label,
            f"{seconds:.1f} s",
            f"{m.hub_span:.1f} s",
            f"{reference.seconds / seconds:.1f}x",
            f"{seconds / floor:.2f}x" if floor else "-",
            f"{m.hub_cpu:.1f} s ({100 * m.hub_cpu / seconds:.0f} %)",
            f"{m.proxy_cpu:.1f} s",
            _requests(m),
            exact,
            _load(m),
        ]

    for run in s1.runs:
        rows.append(row(run.label, run, run.seconds, "yes" if run.exact else f"NO: {run.note}"))
    for in_flight, f, m in s1.floors:
        best = " **= the floor (its Hub-side span)**" if m.hub_span == floor else ""
        label = (
            f"direct: best listing {f.list_seconds:.2f} s, then {s1.idle} stops with "
            f"{in_flight} in flight {f.stop_seconds:.2f} s{best}"
        )
        rows.append(row(label, m, f.seconds, "yes" if m.exact else "NO"))
    header = [
        "run",
        "sweep time",
        "Hub-side span",
        "speed-up vs reference",
        "vs floor",
        "Hub CPU (busy %)",
        "proxy CPU",
        "requests",
        "stopped exactly the idle servers",
        "other load (cores)",
    ]
    return _table(header, rows)


def scenario2_table(s2: Scenario2) -> str:
    """Per-sweep Hub CPU, requests and wall time of each culler (medians)."""
    labels = list(s2.per_culler)
    reference = s2.median(labels[0], "hub_cpu")
    rows = []
    for label in labels:
        sweeps = s2.per_culler[label]
        hub_cpu = s2.median(label, "hub_cpu")
        rows.append(
            [
                label,
                f"{hub_cpu:.2f} s",
                f"{hub_cpu / reference:.2f}x",
                " / ".join(f"{m.hub_cpu:.2f}" for m in sweeps),
                _requests(sweeps[0]),
                f"{s2.median(label, 'seconds'):.2f} s",
                f"{s2.median(label, 'proxy_cpu'):.2f} s",
                f"{max(m.other_load for m in sweeps):.2f}",
            ]
        )
    header = [
        "culler",
        "Hub CPU per sweep (median)",
        "vs reference",
        "each sweep (s)",
        "requests per sweep",
        "sweep time",
        "proxy CPU per sweep",
        "other load (cores, max)",
    ]
    return _table(header, rows)


def request_cost_table(s2: Scenario2) -> str:
    """What single requests cost the Hub."""
    rows = [
        [c.label, f"{c.hub_cpu_ms:.1f} ms", f"{c.wall_ms:.1f} ms", str(c.repeats)]
        for c in s2.request_costs
    ]
    return _table(["request (one at a time)", "Hub CPU", "latency", "repeats"], rows)


def scenario3_table(s3: Scenario3) -> str:
    """Operator CPU share and memory."""
    runs = s3.runs
    lines: list[tuple[str, Callable[[OperatorRun], str]]] = [
        ("time until every policy had swept", lambda r: f"{r.first_sweeps_seconds:.1f} s"),
        ("measured window", lambda r: f"{r.window:.0f} s"),
        (
            "operator CPU",
            lambda r: f"{r.operator_cpu:.1f} s = **{100 * r.cpu_share:.1f} % of one core**",
        ),
        (
            "operator CPU per sweep",
            lambda r: f"{1000 * r.operator_cpu / max(r.sweeps_in_window, 1):.0f} ms",
        ),
        ("operator peak RSS (VmHWM)", lambda r: f"**{r.operator_peak_rss / MIB:.0f} MiB**"),
        ("operator RSS at the end", lambda r: f"{r.operator_rss_end / MIB:.0f} MiB"),
        (
            "sweeps in the window (Hub listings)",
            lambda r: f"{r.sweeps_in_window} of {s3.expected_sweeps(r):.0f} asked for",
        ),
        ("Hub requests in the window", lambda r: str(r.hub_requests)),
        ("Hub CPU", lambda r: f"{100 * r.hub_cpu / r.window:.1f} % of one core"),
        (
            "benchmark process (API server stand-in) CPU",
            lambda r: f"{100 * r.emulator_cpu / r.window:.1f} % of one core",
        ),
        ("other processes on the machine", lambda r: f"{r.other_load:.2f} cores"),
    ]
    header = [
        f"{s3.policies} CullPolicies every {s3.every:.0f} s, {s3.servers} servers",
        *(r.label for r in runs),
    ]
    return _table(header, [[name, *(cell(r) for r in runs)] for name, cell in lines])


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x" if reference else "-"


def scenario4_table(s4: Scenario4) -> str:
    """Per-sweep time, Hub requests and Hub CPU of each kernel variant (medians), as ratios to
    the plain sweep of the same run, and whether each decided as it should."""
    if not s4.of("a"):
        return "(no plain sweep was measured)"
    seconds_a = s4.median("a", "seconds")
    requests_a = s4.median("a", "hub_requests")
    cpu_a = s4.median("a", "hub_cpu")
    rows = []
    for variant in VARIANTS:
        sweeps = s4.of(variant.key)
        if not sweeps:
            continue
        seconds = s4.median(variant.key, "seconds")
        requests = s4.median(variant.key, "hub_requests")
        engine = s4.median(variant.key, "engine_requests")
        checks = s4.median(variant.key, "token_checks")
        hub_cpu = s4.median(variant.key, "hub_cpu")
        first = sweeps[0]
        problems = [p for s in sweeps for p in s.problems]
        rows.append(
            [
                variant.label,
                f"{seconds:.2f} s",
                f"**{_ratio(seconds, seconds_a)}**",
                f"{requests:.0f} = {engine:.0f} + {checks:.0f}",
                f"**{_ratio(requests, requests_a)}**",
                f"{hub_cpu:.2f} s",
                f"**{_ratio(hub_cpu, cpu_a)}**",
                f"{s4.median(variant.key, 'probed'):.0f}",
                f"{first.stops} / {first.protected}",
                "yes" if not problems else "NO: " + "; ".join(sorted(set(problems))[:3]),
            ]
        )
    header = [
        "sweep (dry run)",
        "sweep time",
        "vs (a)",
        "Hub requests = hubcull's + token checks",
        "vs (a)",
        "Hub CPU",
        "vs (a)",
        "servers probed",
        "would stop / kept busy",
        "as the contract says",
    ]
    return _table(header, rows)


def scenario4_details_table(s4: Scenario4) -> str:
    """Every sweep's numbers, the fake servers' CPU and the machine's other load."""
    rows = []
    for variant in VARIANTS:
        sweeps = s4.of(variant.key)
        if not sweeps:
            continue
        requests = statistics.median(sum(s.probe_requests.values()) for s in sweeps)
        rows.append(
            [
                variant.label.split(" ", 1)[0],
                " / ".join(f"{s.seconds:.2f}" for s in sweeps),
                " / ".join(f"{s.hub_cpu:.2f}" for s in sweeps),
                " / ".join(str(s.token_checks) for s in sweeps),
                f"{requests:.0f}",
                f"{s4.median(variant.key, 'fake_cpu'):.2f} s",
                f"{max(s.other_load for s in sweeps):.2f}",
            ]
        )
    header = [
        "sweep",
        "each sweep's time (s)",
        "each sweep's Hub CPU (s)",
        "each sweep's token checks",
        "probe requests (median)",
        "fake servers' CPU (median)",
        "other load (cores, max)",
    ]
    return _table(header, rows)


def scenario4_kinds_table(s4: Scenario4) -> str:
    """The servers of scenario 4 by kind."""
    rows = [
        [
            kind,
            "yes" if kind in IDLE_KINDS else "no",
            str(n),
            str(old),
            KIND_TEXT[kind],
        ]
        for kind, (n, old) in s4.kinds.items()
    ]
    header = [
        "kind",
        "idle by the Hub",
        "servers",
        "running >= idleTimeout",
        "its Jupyter API shows",
    ]
    return _table(header, rows)


def scenario4_probed_table(s4: Scenario4) -> str:
    """Which servers each variant probed, by kind (its first sweep)."""
    kinds = list(s4.kinds)
    rows = []
    for variant in VARIANTS:
        counts = s4.probed_kinds.get(variant.key)
        if not counts:
            continue
        rows.append(
            [variant.label, str(sum(counts.values())), *(str(counts.get(k, 0)) for k in kinds)]
        )
    return _table(["sweep", "probed", *kinds], rows)


def targets(
    s1: Scenario1 | None,
    s2: Scenario2 | None,
    s3: Scenario3 | None,
    s4: Scenario4 | None = None,
) -> list[Target]:
    """Every target of the issue, evaluated on this run's numbers."""
    result: list[Target] = []
    if s1 and s1.runs:
        reference = s1.runs[0]
        for run in s1.runs[1:]:
            speedup = reference.seconds / run.seconds
            result.append(Target(f"1: {run.label} >= 10x faster", f"{speedup:.1f}x", speedup >= 10))
            if s1.floor_seconds:
                ratio = run.seconds / s1.floor_seconds
                result.append(
                    Target(
                        f"1: {run.label} within 1.5x of the floor", f"{ratio:.2f}x", ratio <= 1.5
                    )
                )
        result.append(
            Target(
                "1: every culler stopped exactly the idle servers",
                ", ".join("yes" if r.exact else "NO" for r in s1.runs),
                all(r.exact for r in s1.runs),
            )
        )
    if s2 and s2.per_culler:
        labels = list(s2.per_culler)
        reference = s2.median(labels[0], "hub_cpu")
        ratio = s2.median("hubcull", "hub_cpu") / reference
        result.append(
            Target(
                "2: hubcull Hub busy time per sweep <= 0.5x reference",
                f"{ratio:.2f}x",
                ratio <= 0.5,
            )
        )
    if s3 and s3.runs:
        share = 100 * s3.runs[0].cpu_share
        peak = s3.runs[0].operator_peak_rss / MIB
        result.append(Target("3: operator CPU < 10 % of one core", f"{share:.1f} %", share < 10))
        result.append(Target("3: operator peak memory < 150 MiB", f"{peak:.0f} MiB", peak < 150))
    if s4 and s4.sweeps:
        bad = sum(1 for s in s4.sweeps if s.problems)
        result.append(
            Target(
                "4: every kernel-aware sweep decided as the contract says",
                f"{len(s4.sweeps) - bad} of {len(s4.sweeps)} sweeps",
                s4.correct,
            )
        )
    return result


def targets_table(items: list[Target]) -> str:
    """The targets as a table."""
    return _table(
        ["target", "measured", "met"],
        [[t.name, t.measured, "yes" if t.met else "no"] for t in items],
    )
